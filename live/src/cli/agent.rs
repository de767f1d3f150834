//! `live agent` (the node agent, supervised) and `live restore`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use live::cgroup::{Driver, Root};
use live::discovery::Scope;
use live::journal::Journal;

#[derive(Args, Clone)]
pub struct AgentArgs {
    /// Address for the coordinator protocol.
    #[arg(long, default_value = "0.0.0.0:7070")]
    pub listen: SocketAddr,
    /// Address for Prometheus metrics (GET /metrics); none if omitted. They name the
    /// containers and their limits: bind to the pod's own address (or localhost), not 0.0.0.0.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// File holding a bearer token scrapers of the metrics must send (Prometheus'
    /// `authorization: {credentials_file: ...}`); no token required if omitted.
    #[arg(long)]
    pub metrics_token_file: Option<PathBuf>,
    /// File holding the shared token (else the AUTOTHROTTLE_TOKEN environment variable).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The agent's TLS certificate chain (PEM; `live tls-init` makes one). With --tls-key.
    #[arg(long, requires = "tls_key", conflicts_with = "plaintext")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept only coordinators with a client certificate this CA signed (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve the protocol over plain TCP on a non-loopback address: the token then crosses
    /// the network in clear text. (A loopback --listen needs neither this nor TLS.)
    #[arg(long)]
    pub plaintext: bool,
    /// The cgroup hierarchy (v1 or v2, detected).
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Where the original limits are recorded before the first write.
    #[arg(long, default_value = "/var/lib/autothrottle/journal.json")]
    pub journal: PathBuf,
    /// End control and restore limits when the coordinator is silent this long, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub coordinator_timeout: f64,
    /// Coordinator connections open at once; more are closed at once (and counted in the
    /// metrics).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_connections: u64,
    /// No scaler sets a limit above this many cores (default: the node's online CPUs).
    #[arg(long)]
    pub max_limit: Option<f64>,
    /// A container to control without Kubernetes: NAME=GROUP (GROUP relative to the root).
    #[arg(long = "cgroup", value_name = "NAME=GROUP")]
    pub cgroups: Vec<String>,
    /// Kubernetes namespace of the app (enables pod discovery).
    #[arg(long)]
    pub namespace: Option<String>,
    /// This node's name (Kubernetes discovery).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Label selector for the app's pods.
    #[arg(long)]
    pub selector: Option<String>,
    /// The kubelet's cgroup driver.
    #[arg(long, value_enum, default_value_t = Driver::Systemd)]
    pub cgroup_driver: Driver,
    /// Seconds between pod listings.
    #[arg(long, default_value_t = 10)]
    pub relist: u64,
    /// Run without a supervisor process (the journal still restores at the next start).
    #[arg(long)]
    pub no_supervisor: bool,
    /// Write the address the agent listens on to this file once it listens (useful with
    /// --listen 127.0.0.1:0).
    #[arg(long)]
    pub address_file: Option<PathBuf>,
    #[arg(long, hide = true)]
    pub worker: bool,
}

pub fn restore(journal: &Path, cgroup_root: &Path) -> Result<()> {
    let restored = Journal::restore_file(journal, &Root::detect(cgroup_root)?)?;
    if restored.is_empty() {
        println!("nothing to restore ({} holds no limits)", journal.display());
    } else {
        println!("restored: {}", restored.join(", "));
    }
    Ok(())
}

pub fn tls_init(out: &Path, names: &[String], days: u32) -> Result<()> {
    let files = live::tls::generate(names, days)?.write(out)?;
    println!(
        "agents:      --tls-cert {} --tls-key {} --tls-client-ca {}",
        files.agent_cert.display(),
        files.agent_key.display(),
        files.ca.display()
    );
    println!(
        "coordinator: --tls-ca {} --tls-name {} --tls-client-cert {} --tls-client-key {}",
        files.ca.display(),
        names[0],
        files.coordinator_cert.display(),
        files.coordinator_key.display()
    );
    println!(
        "keep {} offline: it signs certificates both sides trust",
        files.ca_key.display()
    );
    Ok(())
}

/// Runs the agent as a child and restores from the journal if the child dies without doing so
/// itself (SIGKILL, OOM kill, a crash). Signals are passed on to the child.
pub fn supervise(a: &AgentArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.push("--worker".into());
    let mut child = std::process::Command::new(exe)
        .args(&args)
        .spawn()
        .context("cannot start the agent worker")?;
    let pid = child.id();
    // Forward SIGTERM/SIGINT to the worker, which restores and exits cleanly. (The child is
    // not reaped before `wait` below, so its pid stays its own.)
    let forward = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
            let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("signal");
            loop {
                let sig = tokio::select! { _ = term.recv() => libc::SIGTERM, _ = int.recv() => libc::SIGINT };
                live::os::signal(pid, sig);
            }
        });
    });
    drop(forward);
    let status = child.wait().context("waiting for the agent worker")?;
    if !status.success() {
        eprintln!(
            "agent worker ended with {status}; restoring from {}",
            a.journal.display()
        );
        let restored = Journal::restore_file(&a.journal, &Root::detect(&a.cgroup_root)?)?;
        if !restored.is_empty() {
            eprintln!("restored: {}", restored.join(", "));
        }
        bail!("agent worker ended with {status}");
    }
    Ok(())
}

pub fn agent(a: AgentArgs) -> Result<()> {
    if a.worker {
        // If the supervisor dies, end this worker through its clean path.
        live::os::terminate_with_parent();
    }
    let token = live::agent::load_token(
        a.token_file.as_deref(),
        std::env::var("AUTOTHROTTLE_TOKEN").ok(),
    )
    .context("the agents' token (--token-file FILE or AUTOTHROTTLE_TOKEN)")?;
    // A silent coordinator must always end control: a timeout that never fires (NaN, inf) or
    // fires at once (<= 0) is refused.
    if !(a.coordinator_timeout.is_finite()
        && a.coordinator_timeout >= 1.0
        && a.coordinator_timeout <= 86_400.0)
    {
        bail!(
            "--coordinator-timeout must be within 1..86400 seconds, got {}",
            a.coordinator_timeout
        );
    }
    let ceiling = a.max_limit.unwrap_or(live::os::online_cpus() as f64);
    if !(ceiling.is_finite() && ceiling >= controller::MIN_LIMIT) {
        bail!(
            "--max-limit must be a number of cores of at least {}, got {ceiling}",
            controller::MIN_LIMIT
        );
    }
    let metrics_token = match &a.metrics_token_file {
        Some(f) => Some(live::agent::load_token(Some(f), None).context("--metrics-token-file")?),
        None => None,
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(live::tls::server(cert, key, a.tls_client_ca.as_deref())?),
        _ if a.plaintext || a.listen.ip().is_loopback() => None,
        _ => bail!(
            "--listen {} is reachable from the network: give --tls-cert and --tls-key \
             (`live tls-init` makes them), or --plaintext to send the token in clear text",
            a.listen
        ),
    };
    let root = Root::detect(&a.cgroup_root)?;
    let mut statics = BTreeMap::new();
    for spec in &a.cgroups {
        let (name, group) = spec
            .split_once('=')
            .with_context(|| format!("--cgroup takes NAME=GROUP, got '{spec}'"))?;
        if name.is_empty() || group.is_empty() {
            bail!("--cgroup takes NAME=GROUP, got '{spec}'");
        }
        statics.insert(
            name.to_string(),
            PathBuf::from(group.trim_start_matches('/')),
        );
    }
    let driver = a.cgroup_driver;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let kube = match &a.namespace {
            Some(ns) => {
                let node = a
                    .node_name
                    .clone()
                    .context("Kubernetes discovery needs --node-name (or NODE_NAME)")?;
                let client = kube::Client::try_default()
                    .await
                    .context("cannot reach the Kubernetes API")?;
                Some((
                    client,
                    Scope {
                        namespace: ns.clone(),
                        node,
                        selector: a.selector.clone(),
                        driver,
                    },
                ))
            }
            None => None,
        };
        if kube.is_none() && statics.is_empty() {
            bail!("nothing to control: give --namespace (Kubernetes) or --cgroup NAME=GROUP");
        }
        let node = a.node_name.clone().unwrap_or_else(hostname);
        let config = live::server::Config {
            node,
            listen: a.listen,
            metrics: a.metrics,
            token,
            root,
            journal: a.journal.clone(),
            timeout_s: a.coordinator_timeout,
            statics,
            kube,
            relist: Duration::from_secs(a.relist.max(1)),
            ceiling,
            metrics_token,
            tls,
            connections: live::server::ConnectionLimits {
                max: a.max_connections as usize,
                ..Default::default()
            },
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<SocketAddr>();
        if let Some(file) = a.address_file.clone() {
            tokio::spawn(async move {
                if let Ok(addr) = rx.await {
                    // Written whole, then renamed: a reader never sees half an address.
                    let tmp = file.with_extension("tmp");
                    if std::fs::write(&tmp, addr.to_string())
                        .and_then(|_| std::fs::rename(&tmp, &file))
                        .is_err()
                    {
                        tracing::error!(file = %file.display(), "cannot write the address file");
                    }
                }
            });
        }
        let shutdown = async {
            live::os::stop_requested().await.expect("SIGTERM handler");
        };
        live::server::run(config, tx, shutdown).await?;
        Ok(())
    })
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "node".into())
}
