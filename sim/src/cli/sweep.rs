//! `sim sweep`: each scaler tuned over its target grid on one workload (Autothrottle after its
//! warm-up), and the settings every many-run command shares.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use controller::Targets;
use scenarios::Scenario;
use sim::sweep::{self, Contender, Settings, Unit, Workload};
use traces::{Load, Trace};

use super::{progress_bar, workload_name};

#[derive(Args, Clone)]
pub struct ManyArgs {
    /// Base seed: every run's seed derives from it and its place in the protocol.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Warm-up ramp before each trace, seconds.
    #[arg(long, default_value_t = traces::RAMP_SECONDS)]
    pub ramp: usize,
    /// Only replay the first N seconds of each trace (for quick looks; not the protocol).
    #[arg(long)]
    pub duration: Option<usize>,
    /// Parallel runs (default: the machine's cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Run only the K-th of N disjoint slices of the work (K from 0, e.g. a Kubernetes Indexed
    /// Job's completion index); combine the slices with `sim merge`.
    #[arg(long)]
    pub shard: Option<String>,
    /// Re-run everything instead of reusing finished runs found in the output directory.
    #[arg(long)]
    pub no_resume: bool,
    /// Write services.csv (per second per service) for every run.
    #[arg(long)]
    pub services: bool,
    /// users (Locust-like closed loop, the paper's load) or poisson (open loop). Default:
    /// poisson for sweep, users for evaluate.
    #[arg(long)]
    pub load: Option<Load>,
    /// Mean think time of a user, seconds (users load).
    #[arg(long, default_value_t = traces::THINK_S)]
    pub think_time: f64,
    /// CFS burst of the `+burst` contenders, as a fraction of each container's quota (0 to 1;
    /// the kernel refuses a burst above the quota).
    #[arg(long, default_value_t = 1.0)]
    pub burst_fraction: f64,
    /// Run every grid run to its end. By default a grid run under open-loop arrivals stops as
    /// soon as its SLO is certain to be missed (the search needs no more of it; its row says
    /// when, in `stopped_s`). Runs under closed-loop users, and Autothrottle's, always run in
    /// full.
    #[arg(long)]
    pub full_runs: bool,
    /// Run each grid target N times, the arrivals drawn from seeds SEED, SEED+1, ...: a target
    /// meets the SLO only when every draw does, and the best setting is reported with their
    /// mean allocation and median P99. For short workloads, where one run's P99 depends on its
    /// draw.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub draws: usize,
}

impl ManyArgs {
    pub fn settings(&self, out: &std::path::Path, default_load: Load) -> Result<Settings> {
        let load = self
            .load
            .unwrap_or(default_load)
            .with_think(self.think_time)
            .map_err(|e| anyhow::anyhow!("--think-time: {e}"))?;
        if self.draws == 0 {
            bail!("--draws must be at least 1");
        }
        if !(self.burst_fraction > 0.0 && self.burst_fraction <= 1.0) {
            bail!(
                "--burst-fraction must be above 0 and at most 1 (the kernel refuses a burst above the quota), got {}",
                self.burst_fraction
            );
        }
        Ok(Settings {
            burst: self.burst_fraction,
            load,
            out: out.to_path_buf(),
            seed: self.seed,
            ramp_s: self.ramp,
            jobs: self
                .jobs
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            services_csv: self.services,
            resume: !self.no_resume,
            stop_missed: !self.full_runs && load == Load::Poisson,
            draws: self.draws,
        })
    }

    pub fn trim(&self, t: Trace) -> Result<Arc<Trace>> {
        Ok(Arc::new(match self.duration {
            Some(0) => bail!("--duration must be at least 1 second"),
            Some(d) => t.truncated(d),
            None => t,
        }))
    }

    pub fn shard(&self, units: Vec<Unit>) -> Result<Vec<Unit>> {
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
pub struct SweepArgs {
    /// Application model: a built-in name or a scenario .toml file.
    #[arg(long, default_value = "hotel-reservation")]
    pub scenario: String,
    /// Workload: built-in trace, constant-N, `constant` (the scenario's) or a trace file.
    #[arg(long, default_value = "diurnal")]
    pub trace: String,
    /// Comma-separated: k8s-cpu, k8s-cpu-fast, captain (fixed targets), autothrottle,
    /// autothrottle-smooth (over Captains on one-second usage); each also as NAME+burst (every
    /// container with a CFS burst of --burst-fraction times its quota); autothrottle-original
    /// and autothrottle+cv.
    #[arg(
        long,
        default_value = "k8s-cpu,k8s-cpu-fast,autothrottle",
        value_delimiter = ','
    )]
    pub scalers: Vec<Contender>,
    /// Trace of Autothrottle's warm-up runs.
    #[arg(long, default_value = "diurnal-2")]
    pub warmup_trace: String,
    /// Run every target of each grid. By default a grid is searched from its cheapest target
    /// (the highest utilisation or throttle target) down and stops at the first that meets
    /// the SLO, as the paper's evaluation did: the same best setting wherever allocation grows
    /// as the target falls, without the runs below it.
    #[arg(long)]
    pub full_grid: bool,
    /// Judge every run against the SLO less this fraction of it (0 to 0.5): a run meets the
    /// SLO only with a P99 of at most (1 - F) x the scenario's slo_ms, so that the targets
    /// recommended leave room for what the model does not capture. On the live demo the
    /// model's P99 ran up to 12% below the real one (docs/RESULTS.md); 0.1 covers most of that.
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub slo_margin: f64,
    #[command(flatten)]
    pub many: ManyArgs,
    /// Output directory: results.csv, best.csv and the run records.
    #[arg(long, default_value = "runs/sweep")]
    pub out: PathBuf,
}

/// Grid order for a descending search: cheapest first (high utilisation / high throttle target).
pub fn grid_for(c: Contender, descending: bool) -> Vec<Targets> {
    let mut g = sweep::grid(c);
    if descending {
        g.reverse();
    }
    g
}

pub fn cmd(a: SweepArgs) -> Result<()> {
    let app = Scenario::load(&a.scenario)?;
    let app = Arc::new(if a.slo_margin == 0.0 {
        app
    } else {
        let slo = app.slo_ms;
        let judged = sweep::with_slo_margin(&app, a.slo_margin)?;
        eprintln!(
            "every run is judged against an SLO of {:.1} ms: {slo} ms less a margin of {}",
            judged.slo_ms, a.slo_margin
        );
        judged
    });
    let workload = Workload {
        name: workload_name(&a.trace),
        trace: a.many.trim(app.workload(&a.trace)?)?,
    };
    let mut units = Vec::new();
    for c in &a.scalers {
        if c.is_autothrottle() {
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
                    contender: *c,
                },
            );
        } else {
            units.push(Unit::Grid {
                app: app.clone(),
                workload: workload.clone(),
                contender: *c,
                targets: grid_for(*c, !a.full_grid),
                descending: !a.full_grid,
            });
        }
    }
    let units = a.many.shard(sweep::split_grids(units))?;
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

/// Runs the units with a progress bar and reports how long they took.
pub fn execute_with_progress(units: &[Unit], settings: &Settings) -> Result<Vec<sweep::ResultRow>> {
    let total: usize = units.iter().map(|u| u.max_runs(settings.draws)).sum();
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
