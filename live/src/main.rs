//! `live`: the Autothrottle node agent and its tools.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use live::cgroup::{Driver, Root};
use live::discovery::Scope;
use live::journal::Journal;

#[derive(Parser)]
#[command(
    name = "live",
    version,
    about = "Autothrottle on a real node: the agent that runs the Captains on containers' cgroups",
    long_about = "Autothrottle on a real node.\n\n\
        `live agent` runs on every node: it finds the app's containers (Kubernetes pods on this \
        node, or groups named with --cgroup), samples their cgroups every 100 ms, runs the \
        scalers the coordinator starts, and writes their CPU quotas. Whenever control ends \
        (stop, SIGTERM/SIGINT, a silent coordinator, a scaler panic, the agent being killed) \
        the original quotas are put back."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent.
    Agent(Box<AgentArgs>),
    /// Run Autothrottle (or a baseline) on a live app: start the scalers on every agent,
    /// replay a trace as HTTP load, run the Tower each minute, write the run record.
    Run(Box<RunArgs>),
    /// Put back the original limits recorded in a journal (what a crashed agent left).
    Restore {
        #[arg(long, default_value = "/var/lib/autothrottle/journal.json")]
        journal: PathBuf,
    },
    /// Measure the agent's own overhead: N containers controlled at 100 ms.
    Bench(BenchArgs),
    /// Run a scenario's services as real HTTP processes, each in its own cgroup, on this
    /// machine (the demo app); prints where they listen and how to point an agent at them.
    Demo {
        /// Scenario whose services to run (every request type needs `http` paths).
        #[arg(long, default_value = "demo")]
        scenario: String,
        /// Port of the first service; the others follow.
        #[arg(long, default_value_t = 18080)]
        port: u16,
        #[arg(long, default_value = "/sys/fs/cgroup")]
        cgroup_root: PathBuf,
        /// Parent group of the services' groups (created, and removed on exit).
        #[arg(long)]
        group: Option<String>,
    },
    /// One service of the demo app (started by `live demo`).
    #[command(hide = true)]
    DemoService {
        #[arg(long)]
        scenario: String,
        #[arg(long)]
        service: String,
        #[arg(long)]
        listen: SocketAddr,
        /// NAME=ADDRESS for every service of the scenario.
        #[arg(long = "peer")]
        peers: Vec<String>,
    },
    /// Measure the load generator: a constant rate against a trivial local HTTP server.
    LoadBench {
        /// Requests per second to send.
        #[arg(long, default_value_t = 10_000.0)]
        rps: f64,
        #[arg(long, default_value_t = 10)]
        seconds: usize,
    },
}

#[derive(Args, Clone)]
#[command(after_help = "Example, on one machine:\n  \
    live demo                                   # the demo app, prints the agent command\n  \
    AUTOTHROTTLE_TOKEN=t live agent --no-supervisor --listen 127.0.0.1:7070 --cgroup ...\n  \
    AUTOTHROTTLE_TOKEN=t live run --trace constant --duration 300 --tower bandit\n\n\
    The record (run.json, minutes.csv, services.csv, tower.json) reads like a simulated one: \
    `sim plot runs/live` draws it. Ctrl-C stops the run: the agents put the original limits \
    back and the partial record is kept, marked incomplete (exit code 130).")]
struct RunArgs {
    /// Application: a built-in scenario name or a .toml file (nodes need agent addresses,
    /// request types need http paths).
    #[arg(long, default_value = "demo")]
    scenario: String,
    /// Workload: a built-in trace, constant-N, `constant` (the scenario's constant
    /// workload) or a trace file (one RPS integer per line).
    #[arg(long, default_value = "diurnal")]
    trace: String,
    /// Multiply the trace by this instead of the scenario's multiplier.
    #[arg(long)]
    multiplier: Option<f64>,
    /// Warm-up ramp before the trace, seconds.
    #[arg(long, default_value_t = traces::RAMP_SECONDS)]
    ramp: usize,
    /// poisson: the trace value is a rate of open-loop Poisson arrivals; users: a number of
    /// Locust-like users, each thinking --think-time s (exponential) after every response.
    #[arg(long, default_value = "poisson")]
    load: traces::Load,
    /// Mean think time of a user, seconds (--load users).
    #[arg(long, default_value_t = traces::THINK_S)]
    think_time: f64,
    /// Only replay the first N seconds of the trace.
    #[arg(long)]
    duration: Option<usize>,
    /// Base URL of the app's entry service.
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    url: String,
    /// captain, k8s-cpu, k8s-cpu-fast or const.
    #[arg(long, default_value = "captain")]
    scaler: controller::ScalerKind,
    /// Targets "G1,G2" (or one value for both): throttle ratio for captain, utilisation for
    /// k8s-cpu*.
    #[arg(long, default_value = "0.1,0.1")]
    targets: controller::Targets,
    /// Starting limit of every container, cores (default: the scenario's).
    #[arg(long)]
    initial_limit: Option<f64>,
    /// Tower: none (fixed targets), explore (warm-up) or bandit.
    #[arg(long, default_value = "none")]
    tower: String,
    /// Bandit exploration probability.
    #[arg(long, default_value_t = 0.0)]
    explore: f64,
    /// Tower memory (JSON, as in tower.json): read at the start if it exists, written at the
    /// end, so that runs learn from each other (design.md section 4 warm-up).
    #[arg(long)]
    tower_memory: Option<PathBuf>,
    /// Seed of the arrivals, the request mix and the Tower.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// An agent address for a node: NODE=HOST:PORT (overrides the scenario's).
    #[arg(long = "agent", value_name = "NODE=HOST:PORT")]
    agents: Vec<String>,
    /// File holding the agents' shared token (else the AUTOTHROTTLE_TOKEN environment variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A request not answered within this many seconds counts as a miss.
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
    /// Requests in flight at most (the schedule falls behind beyond it, and says so).
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Give up when the app has answered nothing for this many seconds (0: never).
    #[arg(long, default_value_t = 30)]
    give_up_after: usize,
    /// Run record directory.
    #[arg(long, default_value = "runs/live")]
    out: PathBuf,
    /// Overwrite a run record already in --out.
    #[arg(long)]
    force: bool,
    /// Do not write services.csv.
    #[arg(long)]
    no_services: bool,
    /// Print run.json on stdout at the end.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct AgentArgs {
    /// Address for the coordinator protocol.
    #[arg(long, default_value = "0.0.0.0:7070")]
    listen: SocketAddr,
    /// Address for Prometheus metrics (GET /metrics); none if omitted.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// File holding the shared token (else the AUTOTHROTTLE_TOKEN environment variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The cgroup hierarchy (v1 or v2, detected).
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// Where the original limits are recorded before the first write.
    #[arg(long, default_value = "/var/lib/autothrottle/journal.json")]
    journal: PathBuf,
    /// End control and restore limits when the coordinator is silent this long, seconds.
    #[arg(long, default_value_t = 30.0)]
    coordinator_timeout: f64,
    /// A container to control without Kubernetes: NAME=GROUP (GROUP relative to the root).
    #[arg(long = "cgroup", value_name = "NAME=GROUP")]
    cgroups: Vec<String>,
    /// Kubernetes namespace of the app (enables pod discovery).
    #[arg(long)]
    namespace: Option<String>,
    /// This node's name (Kubernetes discovery).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Label selector for the app's pods.
    #[arg(long)]
    selector: Option<String>,
    /// The kubelet's cgroup driver.
    #[arg(long, default_value = "systemd", value_parser = ["systemd", "cgroupfs"])]
    cgroup_driver: String,
    /// Seconds between pod listings.
    #[arg(long, default_value_t = 10)]
    relist: u64,
    /// Run without a supervisor process (the journal still restores at the next start).
    #[arg(long)]
    no_supervisor: bool,
    /// Write the address the agent listens on to this file once it listens (useful with
    /// --listen 127.0.0.1:0).
    #[arg(long)]
    address_file: Option<PathBuf>,
    #[arg(long, hide = true)]
    worker: bool,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(a) => {
            if a.no_supervisor || a.worker {
                agent(*a)
            } else {
                supervise(&a)
            }
        }
        Command::Run(a) => run(*a),
        Command::Restore { journal } => restore(&journal),
        Command::Bench(b) => bench(b),
        Command::LoadBench { rps, seconds } => load_bench(rps, seconds),
        Command::Demo {
            scenario,
            port,
            cgroup_root,
            group,
        } => demo(&scenario, port, &cgroup_root, group),
        Command::DemoService {
            scenario,
            service,
            listen,
            peers,
        } => demo_service(&scenario, &service, listen, &peers),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(a: RunArgs) -> Result<()> {
    use live::coordinator::{self, RunSpec};
    // Everything read and checked before any agent is contacted.
    let scenario = std::sync::Arc::new(scenarios::Scenario::load(&a.scenario)?);
    let trace = scenario.workload(&a.trace)?;
    let trace = match a.duration {
        Some(0) => bail!("--duration must be at least 1 second"),
        Some(d) => trace.truncated(d),
        None => trace,
    };
    let token = live::agent::load_token(
        a.token_file.as_deref(),
        std::env::var("AUTOTHROTTLE_TOKEN").ok(),
    )?;
    let memory = match &a.tower_memory {
        Some(p) if p.exists() => record::read_json::<controller::TowerMemory>(p)?,
        _ => controller::TowerMemory::default(),
    };
    if !(a.request_timeout > 0.0 && a.request_timeout <= 3600.0) {
        bail!("--request-timeout must be within (0, 3600] seconds");
    }
    let mut spec = RunSpec::new(scenario.clone(), std::sync::Arc::new(trace), &a.url, &token);
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
    spec.plan.multiplier = a.multiplier;
    spec.plan.ramp_s = a.ramp;
    spec.plan.load = a
        .load
        .with_think(a.think_time)
        .map_err(|e| anyhow::anyhow!("--think-time: {e}"))?;
    spec.plan.scaler = a.scaler;
    spec.plan.targets = a.targets;
    spec.plan.initial_limit = a.initial_limit;
    spec.plan.tower = controller::TowerKind::parse(&a.tower, a.explore)?;
    spec.plan.memory = memory;
    spec.plan.seed = a.seed;
    spec.request_timeout = Duration::from_secs_f64(a.request_timeout);
    spec.max_in_flight = a.max_in_flight.max(1);
    spec.dead_app_s = a.give_up_after;
    spec.plan.services_csv = !a.no_services;
    spec.validate()?;
    let writer = record::RecordWriter::create(&a.out, a.force, spec.plan.services_csv)
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
    if let Some(p) = &a.tower_memory {
        record::write_json(p, &out.memory)?;
    }
    let s = &out.info.summary;
    if a.json {
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

fn restore(journal: &Path) -> Result<()> {
    let restored = Journal::restore_file(journal)?;
    if restored.is_empty() {
        println!("nothing to restore ({} holds no limits)", journal.display());
    } else {
        println!("restored: {}", restored.join(", "));
    }
    Ok(())
}

/// Runs the agent as a child and restores from the journal if the child dies without doing so
/// itself (SIGKILL, OOM kill, a crash). Signals are passed on to the child.
fn supervise(a: &AgentArgs) -> Result<()> {
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
        let restored = Journal::restore_file(&a.journal)?;
        if !restored.is_empty() {
            eprintln!("restored: {}", restored.join(", "));
        }
        bail!("agent worker ended with {status}");
    }
    Ok(())
}

fn agent(a: AgentArgs) -> Result<()> {
    if a.worker {
        // If the supervisor dies, end this worker through its clean path.
        live::os::terminate_with_parent();
    }
    let token = live::agent::load_token(
        a.token_file.as_deref(),
        std::env::var("AUTOTHROTTLE_TOKEN").ok(),
    )?;
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
    let driver = if a.cgroup_driver == "cgroupfs" {
        Driver::Cgroupfs
    } else {
        Driver::Systemd
    };
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "node".into())
}

#[derive(Args)]
struct BenchArgs {
    /// Containers to control.
    #[arg(long, default_value_t = 70)]
    containers: usize,
    /// How long to run, seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// The cgroup v1 root to create the groups under (they are removed afterwards).
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
}

/// Creates N empty groups, controls them with Captains at 100 ms for a while, and reports the
/// agent's CPU use and how late its ticks were.
fn bench(b: BenchArgs) -> Result<()> {
    use controller::{ScalerConfig, ScalerKind};
    use live::protocol::{Call, Request};
    let root = Root::detect(&b.cgroup_root)?;
    let base = format!("autothrottle-bench-{}", std::process::id());
    let groups = live::testing::Groups::create(&root, &base, b.containers)?;
    let dir = tempfile_dir()?;
    let mut agent = live::agent::Agent::new(
        "bench",
        "t",
        root.clone(),
        Journal::new(&dir.join("journal.json")),
        1e9,
    );
    agent.set_known(groups.known());
    let scalers: BTreeMap<String, ScalerConfig> = groups
        .names()
        .into_iter()
        .map(|n| (n, ScalerKind::Captain.config(0.1, 1.0)))
        .collect();
    let r = agent.handle(
        Request {
            id: 1,
            token: "t".into(),
            call: Call::Start { scalers },
        },
        0.0,
    );
    if !r.ok {
        bail!("start failed: {:?}", r.error);
    }
    let usage0 = live::os::process_cpu_seconds();
    let start = Instant::now();
    let mut lateness = Vec::new();
    let mut k = 1u64;
    while start.elapsed() < Duration::from_secs(b.seconds) {
        let due = start + Duration::from_millis(100 * k);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        lateness.push(Instant::now().saturating_duration_since(due).as_secs_f64() * 1000.0);
        agent.tick(start.elapsed().as_secs_f64());
        k += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = live::os::process_cpu_seconds() - usage0;
    agent.restore_all();
    drop(groups);
    lateness.sort_by(f64::total_cmp);
    let p = |q: f64| lateness[((lateness.len() - 1) as f64 * q).round() as usize];
    println!("containers          {}", b.containers);
    println!("ticks               {} over {wall:.1} s", lateness.len());
    println!(
        "agent CPU           {:.2}% of one core ({:.3} ms per tick)",
        100.0 * cpu / wall,
        1000.0 * cpu / lateness.len() as f64
    );
    println!(
        "tick lateness       p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        p(0.5),
        p(0.99),
        p(1.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("autothrottle-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Drives `rps` for `seconds` against an in-process trivial server and reports what got through.
fn load_bench(rps: f64, seconds: usize) -> Result<()> {
    use live::loadgen::{serve_ok, LoadConfig, LoadGen, RequestKind};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(serve_ok(listener, Duration::ZERO));
        let gen = LoadGen::new(LoadConfig {
            base,
            rates: vec![rps; seconds],
            load: traces::Load::Poisson,
            mix: vec![RequestKind {
                name: "get".into(),
                weight: 1.0,
                method: hyper::Method::GET,
                path: "/x?id={int:1..1000}".into(),
                body: None,
            }],
            seed: 1,
            timeout: Duration::from_secs(2),
            max_in_flight: 512,
            measure_from_s: 0,
        })?;
        let start = Instant::now();
        gen.run().await?;
        let wall = start.elapsed().as_secs_f64();
        server.abort();
        let stats = gen.stats();
        let s = stats.lock().expect("stats");
        let (mut sent, mut ok, mut bad) = (0u64, 0u64, 0u64);
        for sec in &s.seconds {
            sent += sec.sent;
            ok += sec.ok;
            bad += sec.errors + sec.timeouts;
        }
        let all = &s.overall;
        println!("target rate         {rps:.0} RPS for {seconds} s");
        println!(
            "sent / ok / failed  {sent} / {ok} / {bad} in {wall:.1} s ({:.0} ok per second)",
            ok as f64 / seconds as f64
        );
        println!(
            "latency             p50 {:.2} ms, p99 {:.2} ms",
            record::latency::quantile_ms(all, 0.5),
            record::latency::quantile_ms(all, 0.99)
        );
        println!(
            "send lateness       p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            record::latency::quantile_ms(&s.lateness, 0.5),
            record::latency::quantile_ms(&s.lateness, 0.99),
            s.lateness.max() as f64 / 1000.0
        );
        Ok(())
    })
}

fn demo(spec: &str, port: u16, cgroup_root: &Path, group: Option<String>) -> Result<()> {
    let scenario = scenarios::Scenario::load(spec)?;
    if let Some(r) = scenario.file.requests.iter().find(|r| r.http.is_none()) {
        bail!(
            "request type '{}' of {} has no http path: the demo cannot send it",
            r.name,
            scenario.name
        );
    }
    let root = Root::detect(cgroup_root)?;
    let base = group.unwrap_or_else(|| format!("autothrottle-demo-{}", std::process::id()));
    let names: Vec<String> = scenario.services.iter().map(|s| s.name.clone()).collect();
    let mut groups = live::testing::Groups::create_named(&root, &base, &names)?;
    let addrs: Vec<(String, SocketAddr)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.clone(),
                SocketAddr::from(([127, 0, 0, 1], port + i as u16)),
            )
        })
        .collect();
    let exe = std::env::current_exe()?;
    for (name, addr) in &addrs {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args([
            "demo-service",
            "--scenario",
            spec,
            "--service",
            name,
            "--listen",
            &addr.to_string(),
        ]);
        for (n, a) in &addrs {
            cmd.args(["--peer", &format!("{n}={a}")]);
        }
        groups.spawn(name, &mut cmd)?;
    }
    println!(
        "{} services of {} running (Ctrl-C stops them and removes their groups):",
        names.len(),
        scenario.name
    );
    for (name, addr) in &addrs {
        println!(
            "  {name:<24} http://{addr}  group {}",
            groups.rel(name).display()
        );
    }
    let entry = &addrs[scenario.requests[0].nodes[0].service].1;
    println!("requests enter at http://{entry}");
    let agent: Vec<String> = names
        .iter()
        .map(|n| format!("--cgroup {n}={}", groups.rel(n).display()))
        .collect();
    println!("agent: live agent --no-supervisor {}", agent.join(" "));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        live::os::stop_requested().await?;
        anyhow::Ok(())
    })?;
    drop(groups);
    println!("stopped; groups removed");
    Ok(())
}

fn demo_service(spec: &str, service: &str, listen: SocketAddr, peers: &[String]) -> Result<()> {
    let scenario = std::sync::Arc::new(scenarios::Scenario::load(spec)?);
    let mut map = BTreeMap::new();
    for p in peers {
        let (n, a) = p
            .split_once('=')
            .with_context(|| format!("--peer takes NAME=ADDRESS, got '{p}'"))?;
        map.insert(
            n.to_string(),
            a.parse::<SocketAddr>()
                .with_context(|| format!("--peer {p}: bad address"))?,
        );
    }
    let svc = live::demo::Service::new(scenario, service, &map)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        live::demo::serve(svc, listener).await;
        anyhow::Ok(())
    })
}

/// The record library refuses to overwrite a finished run; here the user can say so.
fn force_hint(e: record::RecordError) -> anyhow::Error {
    match e {
        record::RecordError::Exists(_) => anyhow::anyhow!("{e} (pass --force to replace it)"),
        e => e.into(),
    }
}
