//! `live run`: Autothrottle (or a baseline) on a live app.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use live::coordinator::{self, RunSpec};
use record::cli::{ControlArgs, OutputArgs};
use record::RunPlan;

use super::force_hint;

#[derive(Args, Clone)]
#[command(after_help = "Example, on one machine:\n  \
    live demo                                   # the demo app, prints the agent command\n  \
    AUTOTHROTTLE_TOKEN=t live agent --no-supervisor --listen 127.0.0.1:7070 --cgroup ...\n  \
    AUTOTHROTTLE_TOKEN=t live run --trace constant --duration 300 --tower bandit\n\n\
    The record (run.json, minutes.csv, services.csv, tower.json) reads like a simulated one: \
    `sim plot runs/live` draws it. Ctrl-C stops the run: the agents put the original limits \
    back and the partial record is kept, marked incomplete (exit code 130).")]
pub struct RunArgs {
    /// Application: a built-in scenario name or a .toml file (nodes need agent addresses,
    /// request types need http paths).
    #[arg(long, default_value = "demo")]
    pub scenario: String,
    /// Workload: a built-in trace, constant-N, `constant` (the scenario's constant
    /// workload) or a trace file (one RPS integer per line).
    #[arg(long, default_value = "diurnal")]
    pub trace: String,
    #[command(flatten)]
    pub control: ControlArgs,
    /// Override request-type weights: NAME=WEIGHT, comma separated (e.g. `put=1` makes puts as
    /// frequent as the default-weight-1 types). A measurement run for `sim calibrate` with
    /// another mix tells apart the costs of calls that the usual mix always sends together.
    #[arg(long, value_delimiter = ',', value_name = "NAME=WEIGHT")]
    pub mix: Vec<String>,
    /// Base URL of the app's entry service.
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    pub url: String,
    /// An agent address for a node: NODE=HOST:PORT (overrides the scenario's).
    #[arg(long = "agent", value_name = "NODE=HOST:PORT")]
    pub agents: Vec<String>,
    /// Find the agents through the Kubernetes API (a coordinator running in the cluster, or
    /// with a kubeconfig): the running pods --agents-selector picks in --agents-namespace, at
    /// their pod IPs, named by their nodes. --agent entries still win.
    #[arg(long)]
    pub agents_from_kube: bool,
    #[arg(long, default_value = "autothrottle", requires = "agents_from_kube")]
    pub agents_namespace: String,
    #[arg(
        long,
        default_value = "app=autothrottle-agent",
        requires = "agents_from_kube"
    )]
    pub agents_selector: String,
    /// File holding the agents' shared token (else the AUTOTHROTTLE_TOKEN environment variable).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Talk to the agents over TLS, trusting certificates this CA signed (PEM).
    #[arg(long, conflicts_with = "plaintext")]
    pub tls_ca: Option<PathBuf>,
    /// The name every agent's certificate must carry (default: the host of each agent's
    /// address). One name lets all agents share one certificate.
    #[arg(long, requires = "tls_ca")]
    pub tls_name: Option<String>,
    /// Client certificate (PEM) for agents that require one (--tls-client-ca). With
    /// --tls-client-key.
    #[arg(long, requires_all = ["tls_ca", "tls_client_key"])]
    pub tls_client_cert: Option<PathBuf>,
    /// The private key of --tls-client-cert (PEM).
    #[arg(long, requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
    /// Talk to agents that are not on this machine over plain TCP: the token then crosses the
    /// network in clear text. (Loopback agents need neither this nor TLS.)
    #[arg(long)]
    pub plaintext: bool,
    /// A request not answered within this many seconds counts as a miss.
    #[arg(long, default_value_t = 10.0)]
    pub request_timeout: f64,
    /// Requests in flight at most (the schedule falls behind beyond it, and says so).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Give up when the app has answered nothing for this many seconds (0: never).
    #[arg(long, default_value_t = 30)]
    pub give_up_after: usize,
    /// Run record directory.
    #[arg(long, default_value = "runs/live")]
    pub out: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `scenario` with the request weights `mix` gives (NAME=WEIGHT each).
fn with_mix(scenario: &scenarios::Scenario, mix: &[String]) -> Result<scenarios::Scenario> {
    let weights = mix
        .iter()
        .map(|m| {
            let (name, weight) = m
                .split_once('=')
                .with_context(|| format!("--mix takes NAME=WEIGHT, got '{m}'"))?;
            let weight: f64 = weight
                .trim()
                .parse()
                .with_context(|| format!("--mix {m}: the weight must be a number"))?;
            Ok((name.trim().to_string(), weight))
        })
        .collect::<Result<Vec<_>>>()?;
    scenario
        .with_weights(&weights)
        .with_context(|| format!("--mix {}", mix.join(",")))
}

pub fn cmd(a: RunArgs) -> Result<()> {
    // Everything read and checked before any agent is contacted.
    let mut plan = a.control.plan(&a.scenario, &a.trace)?;
    if !a.mix.is_empty() {
        plan.scenario = std::sync::Arc::new(with_mix(&plan.scenario, &a.mix)?);
    }
    let scenario = plan.scenario.clone();
    let token = live::agent::load_token(
        a.token_file.as_deref(),
        std::env::var("AUTOTHROTTLE_TOKEN").ok(),
    )
    .context("the agents' token (--token-file FILE or AUTOTHROTTLE_TOKEN)")?;
    if !(a.request_timeout > 0.0 && a.request_timeout <= 3600.0) {
        bail!("--request-timeout must be within (0, 3600] seconds");
    }
    let mut spec = RunSpec::new(scenario.clone(), plan.trace.clone(), &a.url, &token);
    spec.plan = RunPlan {
        services_csv: !a.output.no_services,
        ..plan
    };
    if a.agents_from_kube {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let found = rt.block_on(async {
            let client = kube::Client::try_default()
                .await
                .context("--agents-from-kube: cannot reach the Kubernetes API")?;
            live::discovery::agents(&client, &a.agents_namespace, &a.agents_selector)
                .await
                .context("--agents-from-kube")
        })?;
        spec.agents.extend(found);
    }
    for s in &a.agents {
        let (node, addr) = s
            .split_once('=')
            .with_context(|| format!("--agent takes NODE=HOST:PORT, got '{s}'"))?;
        if !scenario.nodes.iter().any(|(n, _)| n == node) {
            bail!(
                "--agent {s}: {} has no node '{node}' (nodes: {})",
                scenario.source,
                scenario
                    .nodes
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        spec.agents.insert(node.to_string(), addr.to_string());
    }
    spec.tls = match &a.tls_ca {
        Some(ca) => Some(live::tls::client(
            ca,
            a.tls_client_cert
                .as_deref()
                .zip(a.tls_client_key.as_deref()),
            a.tls_name.as_deref(),
        )?),
        None if a.plaintext
            || live::tls::all_loopback(spec.agents.values().map(String::as_str)) =>
        {
            None
        }
        None => bail!(
            "the agents ({}) are reached over the network: give --tls-ca (and the agents \
             --tls-cert/--tls-key), or --plaintext to send the token in clear text",
            spec.agents.values().cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    spec.request_timeout = Duration::from_secs_f64(a.request_timeout);
    spec.max_in_flight = a.max_in_flight.max(1);
    spec.dead_app_s = a.give_up_after;
    if spec.agents.is_empty() {
        bail!(
            "no agent addresses: give the nodes of {} `agent = \"host:port\"`, pass --agent NODE=HOST:PORT or --agents-from-kube",
            scenario.source
        );
    }
    spec.validate()?;
    let writer = record::RecordWriter::create(&a.out, a.output.force, spec.plan.services_csv)
        .map_err(force_hint)?;

    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = indicatif::ProgressBar::new(spec.plan.rates().len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "live run [{elapsed_precise}] {wide_bar} {pos}/{len} s (eta {eta})",
            )
            .expect("static template"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        let shutdown = async {
            live::os::stop_requested().await.expect("SIGTERM handler");
        };
        let bar = bar.clone();
        coordinator::run(&spec, writer, shutdown, &mut move |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await
    });
    bar.finish_and_clear();
    let out = out?;
    a.control.save_memory(&out.memory)?;
    let s = &out.info.summary;
    if a.output.json {
        println!("{}", serde_json::to_string_pretty(&out.info)?);
    } else {
        println!("{}", out.info.report());
        println!(
            "{} requests ({} unanswered), send lateness p99 {:.1} ms; record in {}",
            s.requests,
            s.incomplete,
            out.lateness_p99_ms,
            a.out.display()
        );
    }
    for g in &out.info.gaps {
        let until = g.to_s.map_or("the end".to_string(), |t| format!("{t} s"));
        eprintln!(
            "gap: {} on node {} from {} s to {until}: {}",
            g.container, g.node, g.from_s, g.reason
        );
    }
    if let Some(why) = &out.stopped {
        eprintln!(
            "run stopped early ({why}); limits restored; partial record in {} (complete: false)",
            a.out.display()
        );
        std::process::exit(if why == "interrupted" { 130 } else { 1 });
    }
    Ok(())
}
