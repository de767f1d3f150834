//! `sim`: run Autothrottle and its baselines on a simulated microservice application.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use controller::{CpuSample, ScalerKind, Targets, TowerMemory};
use indicatif::{ProgressBar, ProgressStyle};
use record::RecordWriter;
use scenarios::Scenario;
use sim::run::{run, RunPlan, TowerKind};
use sim::sweep::{self, Contender, Settings, Unit, Workload};
use traces::{Load, Trace};

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
    Run(RunArgs),
    /// Replay recorded cgroup samples (CSV on stdin) through a scaler; writes t,limit.
    ReplayScaler(ReplayArgs),
    /// Measure simulator speed: events per second and simulated time per wall time.
    Bench(BenchArgs),
    /// Show a trace's statistics, or generate one.
    #[command(subcommand)]
    Trace(TraceCmd),
    /// Check a scenario file and show its calibration (CPU per request per service).
    Scenario {
        /// Built-in name or .toml path.
        scenario: String,
    },
    /// Tune scalers over their target grids on one workload and report each one's best target
    /// (lowest allocation that meets the SLO); Autothrottle runs its warm-up protocol first.
    Sweep(SweepArgs),
    /// The paper's evaluation (Table 1): three apps x four workloads, K8s-CPU and K8s-CPU-Fast
    /// tuned per cell, Autothrottle after its warm-up; writes table.csv, table.md and plots.
    Evaluate(EvaluateArgs),
    /// Combine the outputs of `sweep --shard` or `evaluate --shard` runs into one result.
    Merge(MergeArgs),
    /// Draw run records as a PNG: allocation, RPS, P99 vs SLO and Tower targets over time.
    Plot(PlotArgs),
}

#[derive(Args, Clone)]
struct WorkloadArgs {
    /// Application model: a built-in name or a scenario .toml file.
    #[arg(long, default_value = "hotel-reservation")]
    scenario: String,
    /// Workload: a built-in trace name, constant-N, `constant` (the scenario's constant
    /// workload) or a trace file.
    #[arg(long, default_value = "diurnal")]
    trace: String,
    /// Multiply the trace by this instead of the scenario's multiplier.
    #[arg(long)]
    multiplier: Option<f64>,
    /// Warm-up ramp before the trace, seconds.
    #[arg(long, default_value_t = traces::RAMP_SECONDS)]
    ramp: usize,
    /// Only replay the first N seconds of the trace (for quick looks).
    #[arg(long)]
    duration: Option<usize>,
    /// users: the trace value is a number of Locust-like users, each thinking
    /// --think-time s (exponential) after every response (the paper's load); poisson: the
    /// value is a rate of open-loop Poisson arrivals (the stricter test).
    #[arg(long, default_value = "poisson")]
    load: Load,
    /// Mean think time of a user, seconds (--load users).
    #[arg(long, default_value_t = traces::THINK_S)]
    think_time: f64,
}

impl WorkloadArgs {
    fn load(&self) -> Result<(Arc<Scenario>, Arc<Trace>)> {
        let scenario = Scenario::load(&self.scenario)?;
        let trace = scenario.workload(&self.trace)?;
        let trace = match self.duration {
            Some(0) => bail!("--duration must be at least 1 second"),
            Some(d) => trace.truncated(d),
            None => trace,
        };
        Ok((Arc::new(scenario), Arc::new(trace)))
    }

    fn load_model(&self) -> Result<Load> {
        load_model(self.load, self.think_time)
    }
}

/// `--load` with `--think-time` applied (and checked).
fn load_model(load: Load, think_time: f64) -> Result<Load> {
    load.with_think(think_time)
        .map_err(|e| anyhow::anyhow!("--think-time: {e}"))
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// captain, k8s-cpu, k8s-cpu-fast or const.
    #[arg(long, default_value = "captain")]
    scaler: ScalerKind,
    /// Targets: "G1,G2" (CPU-heavy group, the rest) or one value for both. Throttle ratio for
    /// captain, CPU utilisation for k8s-cpu*.
    #[arg(long, default_value = "0.1,0.1")]
    targets: Targets,
    /// Starting limit of every container, cores (default: the scenario's).
    #[arg(long)]
    initial_limit: Option<f64>,
    /// Tower: none (fixed targets), explore (warm-up) or bandit.
    #[arg(long, default_value = "none")]
    tower: String,
    /// Bandit exploration probability.
    #[arg(long, default_value_t = 0.0)]
    explore: f64,
    /// Tower memory to start from (JSON, as written to tower.json); updated after the run.
    #[arg(long)]
    tower_memory: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run record directory.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Overwrite a run record already in --out.
    #[arg(long)]
    force: bool,
    /// Do not write services.csv (per second per service).
    #[arg(long)]
    no_services: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn progress_bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {{msg}} (eta {{eta}})"
        ))
        .expect("static template"),
    );
    bar
}

fn cmd_run(a: RunArgs) -> Result<()> {
    let (scenario, trace) = a.workload.load()?;
    let tower = TowerKind::parse(&a.tower, a.explore)?;
    let memory = match &a.tower_memory {
        Some(p) if p.exists() => record::read_json::<TowerMemory>(p)?,
        _ => TowerMemory::default(),
    };
    let cfg = RunPlan {
        multiplier: a.workload.multiplier,
        ramp_s: a.workload.ramp,
        load: a.workload.load_model()?,
        initial_limit: a.initial_limit,
        tower,
        memory,
        seed: a.seed,
        services_csv: !a.no_services,
        ..RunPlan::new(scenario, trace, a.scaler, a.targets)
    };
    cfg.validate()?;
    let writer = RecordWriter::create(&a.out, a.force, cfg.services_csv).map_err(force_hint)?;
    let bar = progress_bar(0, "simulating");
    let start = Instant::now();
    let out = run(&cfg, Some(writer), &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    if let Some(p) = &a.tower_memory {
        record::write_json(p, &out.memory)?;
    }
    let s = &out.info.summary;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out.info)?);
    } else {
        println!("{}", out.info.report());
        println!(
            "{} requests ({} incomplete), {} events in {:.1} s; record in {}",
            s.requests,
            s.incomplete,
            out.stats.events,
            start.elapsed().as_secs_f64(),
            a.out.display()
        );
    }
    Ok(())
}

#[derive(Args)]
struct ReplayArgs {
    /// captain, k8s-cpu, k8s-cpu-fast or const.
    #[arg(long)]
    scaler: ScalerKind,
    /// Throttle ratio (captain) or utilisation (k8s-cpu*); ignored by const.
    #[arg(long, default_value_t = 0.1)]
    target: f64,
    /// Starting limit, cores (the const limit for const).
    #[arg(long)]
    initial_limit: f64,
}

/// One row of recorded samples: cumulative counters, as cgroups report them (seconds).
#[derive(serde::Deserialize)]
struct SampleRow {
    t: f64,
    cpu_usage: f64,
    nr_periods: u64,
    nr_throttled: u64,
    throttled_time: f64,
}

fn cmd_replay(a: ReplayArgs) -> Result<()> {
    let mut scaler = a.scaler.config(a.target, a.initial_limit).build()?;
    let stdin = std::io::stdin();
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(stdin.lock());
    let headers = reader
        .headers()
        .context("stdin: cannot read the CSV header")?
        .clone();
    let expected = [
        "t",
        "cpu_usage",
        "nr_periods",
        "nr_throttled",
        "throttled_time",
    ];
    if headers.iter().collect::<Vec<_>>() != expected {
        bail!(
            "stdin:1: header must be {}, got {}",
            expected.join(","),
            headers.iter().collect::<Vec<_>>().join(",")
        );
    }
    let mut out = csv::Writer::from_writer(std::io::stdout().lock());
    out.write_record(["t", "limit"])?;
    for (i, row) in reader.deserialize::<SampleRow>().enumerate() {
        let line = i + 2;
        let row = row.map_err(|e| anyhow::anyhow!("stdin:{line}: {}", csv_reason(&e)))?;
        if !row.t.is_finite() || !row.cpu_usage.is_finite() || !row.throttled_time.is_finite() {
            bail!("stdin:{line}: values must be finite numbers");
        }
        let limit = scaler.sample(&CpuSample {
            t: row.t,
            usage: row.cpu_usage,
            nr_periods: row.nr_periods,
            nr_throttled: row.nr_throttled,
            throttled_time: row.throttled_time,
        });
        out.write_record([row.t.to_string(), limit.to_string()])?;
    }
    out.flush()?;
    Ok(())
}

fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Deserialize { err, .. } => match err.field() {
            Some(f) => format!("field {}: {}", f + 1, err.kind()),
            None => err.kind().to_string(),
        },
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("expected {expected_len} fields, got {len}")
        }
        _ => e.to_string(),
    }
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Targets for the Captains.
    #[arg(long, default_value = "0.1,0.06")]
    targets: Targets,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    let (scenario, trace) = a.workload.load()?;
    let cfg = RunPlan {
        multiplier: a.workload.multiplier,
        ramp_s: a.workload.ramp,
        load: a.workload.load_model()?,
        seed: a.seed,
        ..RunPlan::new(scenario, trace, ScalerKind::Captain, a.targets)
    };
    let start = Instant::now();
    let out = run(&cfg, None, &mut |_, _| {})?;
    let wall = start.elapsed().as_secs_f64();
    let simulated = (cfg.trace.len() + cfg.ramp_s) as f64;
    let peak_rss = peak_rss_mb();
    println!(
        "scenario {} trace {} ({} s simulated)",
        out.info.scenario, out.info.trace, simulated
    );
    println!("wall time           {wall:.2} s");
    println!("simulated / wall    {:.0}x", simulated / wall);
    println!(
        "events              {} ({:.2} M/s)",
        out.stats.events,
        out.stats.events as f64 / wall / 1e6
    );
    println!(
        "requests            {} ({:.0} k/s)",
        out.stats.arrivals,
        out.stats.arrivals as f64 / wall / 1e3
    );
    println!("calls               {}", out.stats.calls);
    println!("peak in flight      {}", out.peak_in_flight);
    match peak_rss {
        Some(mb) => println!("peak memory (RSS)   {mb:.1} MB"),
        None => println!("peak memory (RSS)   unknown (no /proc/self/status)"),
    }
    println!(
        "summary             allocation {:.2} cores, P99 {:.1} ms, SLO {}",
        out.info.summary.allocation,
        out.info.summary.p99_ms,
        if out.info.summary.slo_met {
            "met"
        } else {
            "missed"
        }
    );
    Ok(())
}

/// Peak resident set size from /proc (Linux), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[derive(Subcommand)]
enum TraceCmd {
    /// Print a trace's statistics as JSON.
    Stats {
        /// Built-in name or file.
        trace: String,
    },
    /// Generate a trace from a generator spec (JSON, e.g. '{"kind":"diurnal","trough":100,
    /// "peak":300,"period_s":3600,"noise":0.04}'); kinds: diurnal, bursty, noisy, step, constant.
    Gen {
        /// The generator and its settings, as JSON.
        spec: String,
        #[arg(long, default_value_t = 3600)]
        seconds: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file (stdout if omitted).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn cmd_trace(c: TraceCmd) -> Result<()> {
    match c {
        TraceCmd::Stats { trace } => {
            let t = Trace::load(&trace)?;
            println!("{}", serde_json::to_string_pretty(&t.stats())?);
        }
        TraceCmd::Gen {
            spec,
            seconds,
            seed,
            out,
        } => {
            let g: traces::Generator = serde_json::from_str(&spec).context("generator spec")?;
            let t = g.generate(seconds, seed);
            match out {
                Some(p) => t.write(&p)?,
                None => std::io::stdout().write_all(t.to_text().as_bytes())?,
            }
        }
    }
    Ok(())
}

fn cmd_scenario(name: &str) -> Result<()> {
    let s = Scenario::load(name)?;
    let per = s.mean_cpu_per_request();
    let total: f64 = per.iter().sum();
    println!(
        "{} ({}): {} services on {} nodes, SLO {} ms, multiplier {}",
        s.name,
        s.source,
        s.services.len(),
        s.nodes.len(),
        s.slo_ms,
        s.multiplier
    );
    println!(
        "CPU per request on the mix: {:.2} ms of request CPU (collectors not included)",
        total * 1000.0
    );
    println!(
        "{:<32} {:>5} {:>7} {:>10} {:>6}  collector",
        "service", "group", "threads", "ms/request", "share"
    );
    for (svc, c) in s.services.iter().zip(&per) {
        // What the collector adds: its share of the container's CPU, and one collection's
        // work and width (the burst that can spend a period's quota at once).
        let gc = svc.runtime.map_or(String::new(), |r| {
            format!(
                "{} every {:.2} core-s of requests: {:.0} core-ms on {} threads, {:.0}% of CPU",
                if r.stop_the_world {
                    "pause"
                } else {
                    "concurrent mark"
                },
                r.trigger_cpu,
                r.work * 1000.0,
                r.threads,
                100.0 * r.cpu_share()
            )
        });
        let line = format!(
            "{:<32} {:>5} {:>7} {:>10.3} {:>5.1}%  {gc}",
            svc.name,
            svc.group,
            svc.threads,
            c * 1000.0,
            100.0 * c / total.max(1e-12)
        );
        println!("{}", line.trim_end());
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cmd_run(a),
        Command::ReplayScaler(a) => cmd_replay(a),
        Command::Bench(a) => cmd_bench(a),
        Command::Trace(c) => cmd_trace(c),
        Command::Scenario { scenario } => cmd_scenario(&scenario),
        Command::Sweep(a) => cmd_sweep(a),
        Command::Evaluate(a) => cmd_evaluate(a),
        Command::Merge(a) => cmd_merge(a),
        Command::Plot(a) => cmd_plot(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[derive(Args, Clone)]
struct ManyArgs {
    /// Base seed: every run's seed derives from it and its place in the protocol.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Warm-up ramp before each trace, seconds.
    #[arg(long, default_value_t = traces::RAMP_SECONDS)]
    ramp: usize,
    /// Only replay the first N seconds of each trace (for quick looks; not the protocol).
    #[arg(long)]
    duration: Option<usize>,
    /// Parallel runs (default: the machine's cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Run only the K-th of N disjoint slices of the work (K from 0, e.g. a Kubernetes Indexed
    /// Job's completion index); combine the slices with `sim merge`.
    #[arg(long)]
    shard: Option<String>,
    /// Re-run everything instead of reusing finished runs found in the output directory.
    #[arg(long)]
    no_resume: bool,
    /// Write services.csv (per second per service) for every run.
    #[arg(long)]
    services: bool,
    /// users (Locust-like closed loop, the paper's load) or poisson (open loop). Default:
    /// poisson for sweep, users for evaluate.
    #[arg(long)]
    load: Option<Load>,
    /// Mean think time of a user, seconds (users load).
    #[arg(long, default_value_t = traces::THINK_S)]
    think_time: f64,
}

impl ManyArgs {
    fn settings(&self, out: &std::path::Path, default_load: Load) -> Result<Settings> {
        let load = load_model(self.load.unwrap_or(default_load), self.think_time)?;
        Ok(Settings {
            load,
            out: out.to_path_buf(),
            seed: self.seed,
            ramp_s: self.ramp,
            jobs: self
                .jobs
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            services_csv: self.services,
            resume: !self.no_resume,
        })
    }

    fn trim(&self, t: Trace) -> Result<Arc<Trace>> {
        Ok(Arc::new(match self.duration {
            Some(0) => bail!("--duration must be at least 1 second"),
            Some(d) => t.truncated(d),
            None => t,
        }))
    }

    fn shard(&self, units: Vec<Unit>) -> Result<Vec<Unit>> {
        match &self.shard {
            Some(s) => {
                let (k, n) = sweep::parse_shard(s).context("--shard")?;
                Ok(sweep::shard(units, k, n)?)
            }
            None => Ok(units),
        }
    }
}

#[derive(Args)]
struct SweepArgs {
    /// Application model: a built-in name or a scenario .toml file.
    #[arg(long, default_value = "hotel-reservation")]
    scenario: String,
    /// Workload: built-in trace, constant-N, `constant` (the scenario's) or a trace file.
    #[arg(long, default_value = "diurnal")]
    trace: String,
    /// Comma-separated: k8s-cpu, k8s-cpu-fast, captain (fixed targets), autothrottle.
    #[arg(
        long,
        default_value = "k8s-cpu,k8s-cpu-fast,autothrottle",
        value_delimiter = ','
    )]
    scalers: Vec<Contender>,
    /// Trace of Autothrottle's warm-up runs.
    #[arg(long, default_value = "diurnal-2")]
    warmup_trace: String,
    /// Stop each grid at the cheapest target that meets the SLO instead of running all of it.
    #[arg(long)]
    descending: bool,
    #[command(flatten)]
    many: ManyArgs,
    /// Output directory: results.csv, best.csv and the run records.
    #[arg(long, default_value = "runs/sweep")]
    out: PathBuf,
}

/// Grid order for a descending search: cheapest first (high utilisation / high throttle target).
fn grid_for(c: Contender, descending: bool) -> Vec<Targets> {
    let mut g = sweep::grid(c);
    if descending {
        g.reverse();
    }
    g
}

fn cmd_sweep(a: SweepArgs) -> Result<()> {
    let app = Arc::new(Scenario::load(&a.scenario)?);
    let workload = Workload {
        name: workload_name(&a.trace),
        trace: a.many.trim(app.workload(&a.trace)?)?,
    };
    let mut units = Vec::new();
    for c in &a.scalers {
        if *c == Contender::Autothrottle {
            let warmup = Workload {
                name: workload_name(&a.warmup_trace),
                trace: a.many.trim(app.workload(&a.warmup_trace)?)?,
            };
            // The long sequential chain goes first so that it starts at once.
            units.insert(
                0,
                Unit::Autothrottle {
                    app: app.clone(),
                    warmup,
                    evals: vec![workload.clone()],
                },
            );
        } else {
            units.push(Unit::Grid {
                app: app.clone(),
                workload: workload.clone(),
                contender: *c,
                targets: grid_for(*c, a.descending),
                descending: a.descending,
            });
        }
    }
    let units = a.many.shard(units)?;
    let settings = a.many.settings(&a.out, Load::Poisson)?;
    let rows = execute_with_progress(&units, &settings)?;
    let best = sweep::best(&rows);
    sweep::write_csv(&a.out.join("results.csv"), &rows)?;
    sweep::write_csv(&a.out.join("best.csv"), &best)?;
    print!("{}", sweep::best_table(&best));
    println!(
        "results: {}  best: {}",
        a.out.join("results.csv").display(),
        a.out.join("best.csv").display()
    );
    Ok(())
}

fn workload_name(spec: &str) -> String {
    std::path::Path::new(spec)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.to_string())
}

fn execute_with_progress(units: &[Unit], settings: &Settings) -> Result<Vec<sweep::ResultRow>> {
    let total: usize = units.iter().map(Unit::max_runs).sum();
    let bar = progress_bar(total as u64, "runs");
    let start = Instant::now();
    let rows = sweep::execute(units, settings, &|n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    eprintln!(
        "{} runs ({} planned) in {:.1} s with {} worker(s)",
        rows.len(),
        total,
        start.elapsed().as_secs_f64(),
        settings.jobs
    );
    Ok(rows)
}

#[derive(Args)]
struct EvaluateArgs {
    /// Comma-separated applications (built-in names or .toml files).
    #[arg(
        long,
        default_value = "hotel-reservation,social-network,train-ticket",
        value_delimiter = ','
    )]
    apps: Vec<String>,
    /// Comma-separated workloads: diurnal, constant, noisy, bursty (or any trace name).
    #[arg(
        long,
        default_value = "diurnal,constant,noisy,bursty",
        value_delimiter = ','
    )]
    workloads: Vec<String>,
    /// Read the workload traces (NAME.txt, and diurnal-2.txt for the warm-up) from this
    /// directory instead of the built-in generated ones (e.g. ../shared/traces).
    #[arg(long)]
    trace_dir: Option<PathBuf>,
    /// Run every baseline target instead of stopping at the cheapest that meets the SLO.
    #[arg(long)]
    full_grid: bool,
    /// Do not draw the comparison PNGs.
    #[arg(long)]
    no_plots: bool,
    #[command(flatten)]
    many: ManyArgs,
    /// Output directory: results.csv, best.csv, table.csv, table.md, plots/ and run records.
    #[arg(long, default_value = "runs/evaluate")]
    out: PathBuf,
}

fn cmd_evaluate(a: EvaluateArgs) -> Result<()> {
    let trace = |name: &str, app: &Scenario| -> Result<Arc<Trace>> {
        let t = match (&a.trace_dir, name) {
            (_, "constant") => app.workload("constant")?,
            (Some(dir), n) => Trace::read(&dir.join(format!("{n}.txt")))?,
            (None, n) => app.workload(n)?,
        };
        a.many.trim(t)
    };
    let mut chains = Vec::new();
    let mut grids = Vec::new();
    for spec in &a.apps {
        let app = Arc::new(Scenario::load(spec)?);
        let workloads = a
            .workloads
            .iter()
            .map(|w| {
                Ok(Workload {
                    name: w.clone(),
                    trace: trace(w, &app)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        chains.push(Unit::Autothrottle {
            app: app.clone(),
            warmup: Workload {
                name: "diurnal-2".into(),
                trace: trace("diurnal-2", &app)?,
            },
            evals: workloads.clone(),
        });
        for w in &workloads {
            for c in [Contender::K8sCpu, Contender::K8sCpuFast] {
                grids.push(Unit::Grid {
                    app: app.clone(),
                    workload: w.clone(),
                    contender: c,
                    targets: grid_for(c, !a.full_grid),
                    descending: !a.full_grid,
                });
            }
        }
    }
    // Long chains first, so that they start at once.
    chains.extend(grids);
    let units = a.many.shard(chains)?;
    let settings = a.many.settings(&a.out, Load::users())?;
    let rows = execute_with_progress(&units, &settings)?;
    finish_evaluation(&a.out, rows, !a.no_plots)
}

/// Writes results, best, the table (CSV and Markdown) and, optionally, the comparison plots.
fn finish_evaluation(
    out: &std::path::Path,
    rows: Vec<sweep::ResultRow>,
    plots: bool,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let best = sweep::best(&rows);
    let table = sweep::table(&best);
    sweep::write_csv(&out.join("results.csv"), &rows)?;
    sweep::write_csv(&out.join("best.csv"), &best)?;
    sweep::write_csv(&out.join("table.csv"), &table)?;
    let md = sweep::table_markdown(&table);
    std::fs::write(out.join("table.md"), &md)
        .with_context(|| format!("{}: cannot write table.md", out.display()))?;
    print!("{md}");
    if plots {
        let dir = out.join("plots");
        std::fs::create_dir_all(&dir)?;
        let mut cells: Vec<(String, String)> = best
            .iter()
            .map(|b| (b.app.clone(), b.workload.clone()))
            .collect();
        cells.dedup();
        for (app, workload) in cells {
            let runs: Vec<record::Record> = best
                .iter()
                .filter(|b| b.app == app && b.workload == workload)
                .filter_map(|b| b.run.as_ref())
                .map(|r| record::Record::read(&out.join(r)))
                .collect::<Result<_, _>>()?;
            if runs.is_empty() {
                continue;
            }
            let file = dir.join(format!("{app}-{workload}.png"));
            let opts = plots::Options {
                title: Some(format!(
                    "{app} on {workload}: best K8s-CPU, K8s-CPU-Fast and Autothrottle"
                )),
                ..Default::default()
            };
            if let Err(e) = plots::plot(&runs, &file, &opts) {
                eprintln!("warning: {}: not drawn: {e}", file.display());
            }
        }
        println!("plots: {}", dir.display());
    }
    println!(
        "table: {}  results: {}",
        out.join("table.md").display(),
        out.join("results.csv").display()
    );
    Ok(())
}

#[derive(Args)]
struct MergeArgs {
    /// Output directories of the shards.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Where the merged results go.
    #[arg(long)]
    out: PathBuf,
    /// Also draw the evaluation plots (needs the shards' run records under --out).
    #[arg(long)]
    plots: bool,
}

fn cmd_merge(a: MergeArgs) -> Result<()> {
    let parts = a
        .dirs
        .iter()
        .map(|d| sweep::read_results(&d.join("results.csv")))
        .collect::<sim::Result<Vec<_>>>()?;
    let rows = sweep::merge(parts)?;
    finish_evaluation(&a.out, rows, a.plots)
}

#[derive(Args)]
struct PlotArgs {
    /// Run record directories (several overlay for comparison).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long, default_value = "run.png")]
    out: PathBuf,
    /// Stack one run's allocation by service (needs services.csv).
    #[arg(long)]
    per_service: bool,
    #[arg(long)]
    title: Option<String>,
    #[arg(long, default_value_t = 1400)]
    width: u32,
    #[arg(long, default_value_t = 1300)]
    height: u32,
}

fn cmd_plot(a: PlotArgs) -> Result<()> {
    let runs = a
        .runs
        .iter()
        .map(|d| record::Record::read(d))
        .collect::<Result<Vec<_>, _>>()?;
    plots::plot(
        &runs,
        &a.out,
        &plots::Options {
            width: a.width,
            height: a.height,
            per_service: a.per_service,
            title: a.title,
        },
    )?;
    println!("{}", a.out.display());
    Ok(())
}

/// The record library refuses to overwrite a finished run; here the user can say so.
fn force_hint(e: record::RecordError) -> anyhow::Error {
    match e {
        record::RecordError::Exists(_) => anyhow::anyhow!("{e} (pass --force to replace it)"),
        e => e.into(),
    }
}
