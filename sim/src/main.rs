//! `sim`: run Autothrottle and its baselines on a simulated microservice application. Each
//! subcommand is a module of `cli`.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sim",
    version,
    about = "Autothrottle on a simulated microservice app: runs, sweeps, the paper's evaluation, plots",
    long_about = "Autothrottle on a simulated microservice application.\n\n\
        The simulator models each container under Linux CFS bandwidth control (100 ms periods, \
        burst-then-stall throttling), requests walking their call trees, and runs the same \
        controller code (Captains, Tower, K8s-CPU baselines) as the live agent.\n\n\
        Scenarios: hotel-reservation, social-network, train-ticket, demo, or a .toml file.\n\
        Traces: diurnal, noisy, bursty, diurnal-2 (built in, one hour), constant-N, or a file with \
        one requests-per-second integer per line."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario on one trace with one scaler, write the run record, print the summary.
    Run(cli::run::RunArgs),
    /// Replay recorded cgroup samples (CSV on stdin) through a scaler; writes t,limit.
    ReplayScaler(cli::replay::ReplayArgs),
    /// Measure simulator speed: events per second and simulated time per wall time.
    Bench(cli::bench::BenchArgs),
    /// Show a trace's statistics, or generate one.
    #[command(subcommand)]
    Trace(cli::trace::TraceCmd),
    /// Check a scenario file and show its calibration (CPU per request per service).
    Scenario {
        /// Built-in name or .toml path.
        scenario: String,
        /// Print only where each service runs, `SERVICE NODE` per line (the placement to give
        /// a real deployment, e.g. as nodeSelectors).
        #[arg(long)]
        placement: bool,
    },
    /// Tune scalers over their target grids on one workload and report each one's best target
    /// (lowest allocation that meets the SLO); Autothrottle runs its warm-up protocol first.
    Sweep(cli::sweep::SweepArgs),
    /// The paper's evaluation (Table 1): three apps x four workloads, K8s-CPU and K8s-CPU-Fast
    /// tuned per cell, Autothrottle after its warm-up; writes table.csv, table.md and plots.
    Evaluate(cli::evaluate::EvaluateArgs),
    /// Combine the outputs of `sweep --shard` or `evaluate --shard` runs into one result.
    Merge(cli::evaluate::MergeArgs),
    /// Fit a scenario's CPU costs (per call, and each service's background), network delay and
    /// calls' variability to recorded runs, sim or live, and write the fitted scenario.
    Calibrate(cli::calibrate::CalibrateArgs),
    /// Draw run records as a PNG: allocation, RPS, P99 vs SLO and Tower targets over time.
    Plot(cli::plot::PlotArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cli::run::cmd(a),
        Command::ReplayScaler(a) => cli::replay::cmd(a),
        Command::Bench(a) => cli::bench::cmd(a),
        Command::Trace(c) => cli::trace::cmd(c),
        Command::Scenario {
            scenario,
            placement,
        } => cli::scenario::cmd(&scenario, placement),
        Command::Sweep(a) => cli::sweep::cmd(a),
        Command::Evaluate(a) => cli::evaluate::cmd(a),
        Command::Merge(a) => cli::evaluate::merge(a),
        Command::Plot(a) => cli::plot::cmd(a),
        Command::Calibrate(a) => cli::calibrate::cmd(a),
    };
    if let Err(e) = result {
        // A reader that went away (`sim scenario x | head`) is not an error.
        if e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            return;
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
