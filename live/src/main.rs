//! `live`: the Autothrottle node agent and its tools. Each subcommand is a module of `cli`.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    Agent(Box<cli::agent::AgentArgs>),
    /// Run Autothrottle (or a baseline) on a live app: start the scalers on every agent,
    /// replay a trace as HTTP load, run the Tower each minute, write the run record.
    Run(Box<cli::run::RunArgs>),
    /// Put back the original limits recorded in a journal (what a crashed agent left).
    Restore {
        #[arg(long, default_value = "/var/lib/autothrottle/journal.json")]
        journal: PathBuf,
        /// Only groups under this hierarchy are restored.
        #[arg(long, default_value = "/sys/fs/cgroup")]
        cgroup_root: PathBuf,
    },
    /// Make a private CA, an agent certificate and a coordinator client certificate for TLS
    /// between `live run` and the agents (ca.pem, agent.pem, coordinator.pem and their keys).
    TlsInit {
        /// Directory to write them to (created; existing files are never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// A name the agent certificate is valid for (DNS name or IP address; repeat for
        /// more). `live run --tls-name NAME` checks every agent against one of them.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Measure the agent's own overhead: N containers controlled at 100 ms.
    Bench(cli::bench::BenchArgs),
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
                cli::agent::agent(*a)
            } else {
                cli::agent::supervise(&a)
            }
        }
        Command::Run(a) => cli::run::cmd(*a),
        Command::Restore {
            journal,
            cgroup_root,
        } => cli::agent::restore(&journal, &cgroup_root),
        Command::TlsInit { out, names, days } => cli::agent::tls_init(&out, &names, days),
        Command::Bench(b) => cli::bench::bench(b),
        Command::LoadBench { rps, seconds } => cli::bench::load_bench(rps, seconds),
        Command::Demo {
            scenario,
            port,
            cgroup_root,
            group,
        } => cli::demo::demo(&scenario, port, &cgroup_root, group),
        Command::DemoService {
            scenario,
            service,
            listen,
            peers,
        } => cli::demo::demo_service(&scenario, &service, listen, &peers),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
