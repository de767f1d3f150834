//! Many runs: target sweeps, the Autothrottle warm-up protocol, the paper's evaluation grid,
//! sharding over machines and merging the shards back.
//!
//! Work is planned as [`Unit`]s. A unit is a sequence of runs that must happen in order (a
//! warm-up chain, or a descending target search that stops at the first target meeting the
//! SLO); units are independent, so they run in parallel and shard cleanly: a unit is never split,
//! and every run is seeded by its configuration alone, so results do not depend on the number
//! of threads, on sharding, or on what was resumed from disk. The one exception to "in order":
//! a warm-up chain's exploring runs, whose choices do not depend on what they observe, are all
//! made at once before the units (`explore_ahead`), with the same records as in order.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use controller::{ScalerKind, Targets, TowerMemory};
use record::{Record, RecordWriter, RunInfo};
use scenarios::Scenario;
use serde::{Deserialize, Serialize};
use traces::{Load, Trace};

use crate::run::{run, RunPlan, TowerKind};
use crate::{Result, SimError};

/// The utilisation targets the baselines are tuned over (design.md section 4).
pub const BASELINE_GRID: [f64; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
/// With a CFS burst the baselines are also tried at 0.95: quota saved in quiet periods covers
/// the peaks a limit this close to the window's peak usage leaves (on hotel-reservation
/// K8s-CPU-Fast with a burst meets the SLO there in every cell). Not 1.0: a limit equal to the
/// peak usage can never grow (usage cannot outlast the burst above the limit), so it ratchets
/// down and the app collapses (measured: every hotel cell, P99 47 to 90 s).
pub const BURST_GRID_TOP: f64 = 0.95;
/// Warm-up protocol: explore runs, then bandit runs with this exploration.
pub const EXPLORE_RUNS: usize = 6;
pub const BANDIT_RUNS: usize = 6;
pub const WARMUP_EXPLORE: f64 = 0.5;

/// A named workload: a trace and the name tables use for it.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub trace: Arc<Trace>,
}

/// Something to compare: a baseline tuned over a grid, Captains with fixed targets, or the
/// full Autothrottle protocol; each also with a CFS burst on every container (beyond the
/// paper: [`Settings::burst`] times the quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    K8sCpu,
    K8sCpuFast,
    /// Captains with one fixed target pair, swept over the Tower's grid diagonal.
    Captain,
    Autothrottle,
    K8sCpuBurst,
    K8sCpuFastBurst,
    CaptainBurst,
    AutothrottleBurst,
    /// The Autothrottle protocol with the artifact's learner as its Tower
    /// ([`controller::OriginalTower`]) instead of the project's.
    AutothrottleOriginal,
    /// The Autothrottle protocol with the load's variability in the Tower's context
    /// ([`controller::BanditConfig::with_variability`]).
    AutothrottleCv,
    /// The Autothrottle protocol over Captains that size their scale-downs from one-second
    /// means of usage ([`controller::Captain::smoothed`]).
    AutothrottleSmooth,
    AutothrottleSmoothBurst,
}

impl Contender {
    pub const ALL: [Contender; 12] = [
        Contender::K8sCpu,
        Contender::K8sCpuFast,
        Contender::Captain,
        Contender::Autothrottle,
        Contender::K8sCpuBurst,
        Contender::K8sCpuFastBurst,
        Contender::CaptainBurst,
        Contender::AutothrottleBurst,
        Contender::AutothrottleOriginal,
        Contender::AutothrottleCv,
        Contender::AutothrottleSmooth,
        Contender::AutothrottleSmoothBurst,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::K8sCpu => "k8s-cpu",
            Contender::K8sCpuFast => "k8s-cpu-fast",
            Contender::Captain => "captain",
            Contender::Autothrottle => "autothrottle",
            Contender::K8sCpuBurst => "k8s-cpu+burst",
            Contender::K8sCpuFastBurst => "k8s-cpu-fast+burst",
            Contender::CaptainBurst => "captain+burst",
            Contender::AutothrottleBurst => "autothrottle+burst",
            Contender::AutothrottleOriginal => "autothrottle-original",
            Contender::AutothrottleCv => "autothrottle+cv",
            Contender::AutothrottleSmooth => "autothrottle-smooth",
            Contender::AutothrottleSmoothBurst => "autothrottle-smooth+burst",
        }
    }

    /// The column title of the paper's table.
    pub fn title(self) -> &'static str {
        match self {
            Contender::K8sCpu => "K8s-CPU",
            Contender::K8sCpuFast => "K8s-CPU-Fast",
            Contender::Captain => "Captain (fixed)",
            Contender::Autothrottle => "Autothrottle",
            Contender::K8sCpuBurst => "K8s-CPU + burst",
            Contender::K8sCpuFastBurst => "K8s-CPU-Fast + burst",
            Contender::CaptainBurst => "Captain (fixed) + burst",
            Contender::AutothrottleBurst => "Autothrottle + burst",
            Contender::AutothrottleOriginal => "Autothrottle (original Tower)",
            Contender::AutothrottleCv => "Autothrottle + variability",
            Contender::AutothrottleSmooth => "Autothrottle, 1-s Captains",
            Contender::AutothrottleSmoothBurst => "Autothrottle, 1-s Captains + burst",
        }
    }

    /// The same contender without a burst.
    pub fn base(self) -> Contender {
        match self {
            Contender::K8sCpuBurst => Contender::K8sCpu,
            Contender::K8sCpuFastBurst => Contender::K8sCpuFast,
            Contender::CaptainBurst => Contender::Captain,
            Contender::AutothrottleBurst => Contender::Autothrottle,
            Contender::AutothrottleSmoothBurst => Contender::AutothrottleSmooth,
            c => c,
        }
    }

    /// Whether its containers have a CFS burst.
    pub fn has_burst(self) -> bool {
        self.base() != self
    }

    /// The same contender with a burst.
    pub fn with_burst(self) -> Contender {
        match self.base() {
            Contender::K8sCpu => Contender::K8sCpuBurst,
            Contender::K8sCpuFast => Contender::K8sCpuFastBurst,
            Contender::Captain => Contender::CaptainBurst,
            Contender::AutothrottleSmooth => Contender::AutothrottleSmoothBurst,
            _ => Contender::AutothrottleBurst,
        }
    }

    pub fn is_baseline(self) -> bool {
        matches!(self, Contender::K8sCpu | Contender::K8sCpuFast)
    }

    /// Whether it is the Autothrottle protocol (a warm-up chain, not a grid).
    pub fn is_autothrottle(self) -> bool {
        matches!(
            self.base(),
            Contender::Autothrottle
                | Contender::AutothrottleOriginal
                | Contender::AutothrottleCv
                | Contender::AutothrottleSmooth
        )
    }

    /// The Captains an Autothrottle contender runs.
    pub fn captain(self) -> ScalerKind {
        if self.base() == Contender::AutothrottleSmooth {
            ScalerKind::CaptainSmooth
        } else {
            ScalerKind::Captain
        }
    }
}

impl std::str::FromStr for Contender {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Contender::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!("unknown scaler '{s}' (expected k8s-cpu, k8s-cpu-fast, captain, autothrottle or autothrottle-smooth, each also with +burst, autothrottle-original or autothrottle+cv)")
            })
    }
}

/// One row of `results.csv`: one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub app: String,
    pub workload: String,
    pub scaler: String,
    /// `grid` for a target sweep; `warmup-explore`, `warmup-bandit` or `eval` for Autothrottle.
    pub phase: String,
    /// The fixed targets of the run, or `tower` when a Tower chose them.
    pub target1: String,
    pub target2: String,
    /// Time-weighted mean of the targets in force after the ramp.
    pub mean_target1: f64,
    pub mean_target2: f64,
    pub seed: u64,
    pub allocation: f64,
    pub usage: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub slo_ms: f64,
    pub slo_met: bool,
    pub mean_rps: f64,
    pub throttle_ratio: f64,
    /// The run record, relative to the output directory.
    pub run: String,
    /// The simulated second at which the run stopped, its SLO certainly missed (every figure
    /// of the row then covers the run up to there); empty for a run that ran to its end.
    #[serde(default)]
    pub stopped_s: Option<f64>,
}

/// A sequence of runs that must happen in order.
#[derive(Debug, Clone)]
pub enum Unit {
    /// Tune `contender` over `targets`. With `descending`, `targets` are ordered from the
    /// cheapest (highest utilisation) to the most generous, and the search stops at the first
    /// one that meets the SLO: the cheapest target that meets it, without running the rest.
    Grid {
        app: Arc<Scenario>,
        workload: Workload,
        contender: Contender,
        targets: Vec<Targets>,
        descending: bool,
    },
    /// The warm-up protocol on `warmup`, then one evaluation run per workload, each starting
    /// from what the warm-up learnt.
    Autothrottle {
        app: Arc<Scenario>,
        warmup: Workload,
        evals: Vec<Workload>,
        /// [`Contender::Autothrottle`] or [`Contender::AutothrottleBurst`].
        contender: Contender,
    },
}

impl Unit {
    /// How many runs it may take with `draws` runs per grid target (for progress bars).
    pub fn max_runs(&self, draws: usize) -> usize {
        match self {
            Unit::Grid { targets, .. } => targets.len() * draws.max(1),
            Unit::Autothrottle { evals, .. } => EXPLORE_RUNS + BANDIT_RUNS + evals.len(),
        }
    }

    /// A stable label, for logs and for checking shards.
    pub fn label(&self) -> String {
        match self {
            Unit::Grid {
                app,
                workload,
                contender,
                targets,
                ..
            } => match targets.as_slice() {
                [one] => format!(
                    "{}/{}/{}-{}",
                    app.name,
                    workload.name,
                    contender.name(),
                    target_label(*one)
                ),
                _ => format!("{}/{}/{}", app.name, workload.name, contender.name()),
            },
            Unit::Autothrottle { app, contender, .. } => {
                format!("{}/{}", app.name, contender.name())
            }
        }
    }
}

/// Splits every grid that runs all its targets (not a descending search) into one unit per
/// target, so that two workers share a grid instead of one running it alone beside a long
/// warm-up chain. Rows still come back in the same order, and every run is seeded by its
/// configuration alone, so the results are the same.
pub fn split_grids(units: Vec<Unit>) -> Vec<Unit> {
    units
        .into_iter()
        .flat_map(|u| match u {
            Unit::Grid {
                app,
                workload,
                contender,
                targets,
                descending: false,
            } => targets
                .into_iter()
                .map(|t| Unit::Grid {
                    app: app.clone(),
                    workload: workload.clone(),
                    contender,
                    targets: vec![t],
                    descending: false,
                })
                .collect(),
            u => vec![u],
        })
        .collect()
}

/// How runs are made and where they go.
#[derive(Debug, Clone)]
pub struct Settings {
    pub out: PathBuf,
    pub seed: u64,
    pub ramp_s: usize,
    /// Open-loop Poisson or closed-loop users.
    pub load: Load,
    /// Worker threads.
    pub jobs: usize,
    /// Write services.csv for every run.
    pub services_csv: bool,
    /// Reuse runs already on disk when their configuration matches.
    pub resume: bool,
    /// The CFS burst of the `+burst` contenders, as a fraction of each container's quota.
    pub burst: f64,
    /// Stop a grid run once its SLO is certain to be missed ([`RunPlan::stop_when_missed`]:
    /// open-loop arrivals only).
    pub stop_missed: bool,
    /// Runs per grid target, with arrivals drawn from seeds `seed`, `seed + 1`, ...: a target
    /// meets the SLO only when every draw does, and [`best`] takes the mean allocation and the
    /// median P99 of its draws. 1: one run, as the paper's protocol.
    pub draws: usize,
}

/// `app` judged against its SLO less `margin` of it (0 to 0.5): every run of a sweep on it,
/// its Tower's included, then counts a P99 above (1 - margin) x the SLO as a miss.
pub fn with_slo_margin(app: &Scenario, margin: f64) -> Result<Scenario> {
    if !(0.0..=0.5).contains(&margin) {
        return Err(SimError::Config(format!(
            "the SLO margin must be between 0 and 0.5 (a fraction of the SLO), got {margin}"
        )));
    }
    let mut file = app.file.clone();
    file.slo_ms *= 1.0 - margin;
    Ok(Scenario::compile(&app.source, file)?)
}

/// The targets of a contender's grid.
pub fn grid(contender: Contender) -> Vec<Targets> {
    match contender {
        c if c.base().is_baseline() => BASELINE_GRID
            .iter()
            .copied()
            .chain(c.has_burst().then_some(BURST_GRID_TOP))
            .map(|t| Targets::new(t, t))
            .collect(),
        c if c.base() == Contender::Captain => controller::TARGET_GRID
            .iter()
            .map(|&t| Targets::new(t, t))
            .collect(),
        _ => Vec::new(),
    }
}

/// Keeps the K-th of N slices of `units` (K from 0), by position: deterministic and disjoint.
pub fn shard(units: Vec<Unit>, k: usize, n: usize) -> Result<Vec<Unit>> {
    if n == 0 || k >= n {
        return Err(SimError::Config(format!(
            "shard K/N needs 0 <= K < N, got {k}/{n}"
        )));
    }
    Ok(units
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % n == k)
        .map(|(_, u)| u)
        .collect())
}

/// Parses "K/N" (shard K of N, from 0).
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad =
        |what: &str| SimError::Config(format!("shard: {what} in '{s}' (expected K/N, e.g. 0/4)"));
    let (k, n) = s.split_once('/').ok_or_else(|| bad("no '/'"))?;
    let k: usize = k.trim().parse().map_err(|_| bad("bad K"))?;
    let n: usize = n.trim().parse().map_err(|_| bad("bad N"))?;
    if n == 0 || k >= n {
        return Err(SimError::Config(format!(
            "shard K/N needs 0 <= K < N, got {k}/{n}"
        )));
    }
    Ok((k, n))
}

/// Runs every unit, `settings.jobs` at a time, calling `tick` after each run (with the number
/// of runs a unit skipped when it stopped early). Rows come back in unit order.
pub fn execute(
    units: &[Unit],
    settings: &Settings,
    tick: &(dyn Fn(usize) + Sync),
) -> Result<Vec<ResultRow>> {
    std::fs::create_dir_all(&settings.out).map_err(|source| SimError::Io {
        path: settings.out.clone(),
        source,
    })?;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Vec<ResultRow>>>>> =
        Mutex::new((0..units.len()).map(|_| None).collect());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(settings.jobs.max(1))
        .build()
        .map_err(|e| SimError::Threads(e.to_string()))?;
    let explored = explore_ahead(units, settings, tick, &pool)?;
    pool.scope(|s| {
        for _ in 0..settings.jobs.max(1) {
            s.spawn(|_| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= units.len() {
                    break;
                }
                let r = run_unit(&units[i], settings, tick, explored[i].as_ref());
                let failed = r.is_err();
                results.lock().expect("no panics hold this lock")[i] = Some(r);
                if failed {
                    // Stop handing out work; the error is reported below.
                    next.store(units.len(), Ordering::SeqCst);
                }
            });
        }
    });
    let mut rows = Vec::new();
    for (unit, r) in units
        .iter()
        .zip(results.into_inner().expect("workers are done"))
    {
        match r {
            Some(Ok(mut r)) => rows.append(&mut r),
            Some(Err(e)) => {
                return Err(SimError::Unit {
                    unit: unit.label(),
                    source: Box::new(e),
                })
            }
            None => return Err(SimError::NotRun(unit.label())),
        }
    }
    Ok(rows)
}

fn run_unit(
    unit: &Unit,
    settings: &Settings,
    tick: &(dyn Fn(usize) + Sync),
    explored: Option<&Explored>,
) -> Result<Vec<ResultRow>> {
    let mut rows = Vec::new();
    match unit {
        Unit::Grid {
            app,
            workload,
            contender,
            targets,
            descending,
        } => {
            let scaler = match contender.base() {
                Contender::K8sCpu => ScalerKind::K8sCpu,
                Contender::K8sCpuFast => ScalerKind::K8sCpuFast,
                Contender::Captain => ScalerKind::Captain,
                _ => return Err(SimError::Config("autothrottle is not a grid".into())),
            };
            let draws = settings.draws.max(1);
            for (i, t) in targets.iter().enumerate() {
                let mut met = 0;
                for k in 0..draws {
                    let mut cfg = RunPlan::new(app.clone(), workload.trace.clone(), scaler, *t);
                    cfg.seed = settings.seed + k as u64;
                    cfg.ramp_s = settings.ramp_s;
                    cfg.load = settings.load;
                    cfg.services_csv = settings.services_csv;
                    cfg.burst = burst_of(*contender, settings);
                    cfg.stop_when_missed = settings.stop_missed;
                    let mut dir = format!(
                        "runs/{}/{}/{}-{}",
                        app.name,
                        workload.name,
                        contender.name(),
                        target_label(*t)
                    );
                    if k > 0 {
                        dir.push_str(&format!("-draw{}", k + 1));
                    }
                    let (info, _) = run_or_resume(&cfg, settings, &dir)?;
                    met += usize::from(info.summary.slo_met);
                    rows.push(row(&info, &workload.name, contender.name(), "grid", &dir));
                    tick(1);
                }
                if *descending && met == draws {
                    tick((targets.len() - i - 1) * draws);
                    break;
                }
            }
        }
        Unit::Autothrottle {
            app,
            warmup,
            evals,
            contender,
        } => {
            let name = contender.name();
            let learner = |explore: f64| match contender {
                Contender::AutothrottleOriginal => TowerKind::Original { explore },
                Contender::AutothrottleCv => TowerKind::BanditCv { explore },
                _ => TowerKind::Bandit { explore },
            };
            let explored = explored
                .expect("execute runs every Autothrottle unit's exploring runs ahead")
                .clone();
            for (i, info) in explored.runs.iter().enumerate() {
                let dir = warmup_dir(unit, "warmup-explore", i);
                rows.push(row(info, &warmup.name, name, "warmup-explore", &dir));
            }
            let mut memory = explored.memory;
            for i in 0..BANDIT_RUNS {
                let tower = learner(WARMUP_EXPLORE);
                let mut cfg = captain_config(
                    app,
                    &warmup.trace,
                    settings,
                    contender.captain(),
                    tower,
                    memory.clone(),
                );
                cfg.seed = settings.seed + 1 + (EXPLORE_RUNS + i) as u64;
                cfg.burst = burst_of(*contender, settings);
                let dir = warmup_dir(unit, "warmup-bandit", i);
                let (info, learnt) = run_or_resume(&cfg, settings, &dir)?;
                memory = learnt;
                tick(1);
                rows.push(row(&info, &warmup.name, name, "warmup-bandit", &dir));
            }
            for w in evals {
                let mut cfg = captain_config(
                    app,
                    &w.trace,
                    settings,
                    contender.captain(),
                    learner(0.0),
                    memory.clone(),
                );
                cfg.burst = burst_of(*contender, settings);
                let dir = format!("runs/{}/{name}/eval-{}", app.name, w.name);
                let (info, _) = run_or_resume(&cfg, settings, &dir)?;
                tick(1);
                rows.push(row(&info, &w.name, name, "eval", &dir));
            }
        }
    }
    Ok(rows)
}

/// What an Autothrottle unit's exploring warm-up runs gave: each run's record and the
/// memory the last one ended with.
#[derive(Debug, Clone)]
struct Explored {
    runs: Vec<RunInfo>,
    memory: TowerMemory,
}

/// Where warm-up run `i` (0-based) of `phase` goes.
fn warmup_dir(unit: &Unit, phase: &str, i: usize) -> String {
    let Unit::Autothrottle { app, contender, .. } = unit else {
        unreachable!("only Autothrottle units warm up")
    };
    format!("runs/{}/{}/{phase}-{}", app.name, contender.name(), i + 1)
}

/// Exploring warm-up run `i` (0-based) of an Autothrottle unit, starting from `memory`.
fn explore_plan(unit: &Unit, settings: &Settings, i: usize, memory: TowerMemory) -> RunPlan {
    let Unit::Autothrottle {
        app,
        warmup,
        contender,
        ..
    } = unit
    else {
        unreachable!("only Autothrottle units warm up")
    };
    let explorer = if *contender == Contender::AutothrottleCv {
        TowerKind::ExploreCv
    } else {
        TowerKind::Explore
    };
    let mut cfg = captain_config(
        app,
        &warmup.trace,
        settings,
        contender.captain(),
        explorer,
        memory,
    );
    cfg.seed = settings.seed + 1 + i as u64;
    cfg.burst = burst_of(*contender, settings);
    cfg
}

/// The memory an exploring run ends with, its samples' figures left at zero: the exploring
/// Tower picks each action from how often every action has been tried (the memory's sample
/// counts), never from what one cost, so its choices are known without running the app.
fn explore_dry(cfg: &RunPlan) -> Result<TowerMemory> {
    let mut tower = crate::run::tower_for(cfg)?;
    let blank = controller::MinuteObservation {
        rps: 0.0,
        rps_cv: 0.0,
        p99_ms: 0.0,
        allocation: 0.0,
    };
    for _ in 0..crate::run::tower_minutes(cfg) {
        tower.observe(&blank);
    }
    Ok(tower.into_memory())
}

/// Runs the exploring warm-up runs of every Autothrottle unit at once, before the units.
///
/// In a sweep the warm-up chain (6 exploring runs, 6 learning runs, the evaluation) is the
/// longest sequence of runs there is. The exploring runs need not wait for one another: the
/// actions each one takes follow from the memory's counts alone ([`explore_dry`]), so each is
/// started from a stand-in memory with the same actions in the same order, and the real
/// memories are chained afterwards, each run's own samples added to what the runs before it
/// learnt. Exact: a stand-in is checked against the real memory it stood for (the same actions
/// in the same order), and from a run whose stand-in differed the runs are made again in
/// order. The records' `tower-in.json` and `tower.json` are rewritten with the real memories.
fn explore_ahead(
    units: &[Unit],
    settings: &Settings,
    tick: &(dyn Fn(usize) + Sync),
    pool: &rayon::ThreadPool,
) -> Result<Vec<Option<Explored>>> {
    use rayon::prelude::*;
    // Per unit: the runs reused from disk (with the real memory after them), then plans for
    // the rest, each from a stand-in memory.
    struct Ahead {
        unit: usize,
        reused: Vec<RunInfo>,
        /// The real memory after the reused runs.
        memory: TowerMemory,
        planned: Vec<RunPlan>,
    }
    let mut ahead = Vec::new();
    for (u, unit) in units.iter().enumerate() {
        if !matches!(unit, Unit::Autothrottle { .. }) {
            continue;
        }
        let mut memory = TowerMemory::default();
        let mut reused = Vec::new();
        if settings.resume {
            while reused.len() < EXPLORE_RUNS {
                let i = reused.len();
                let cfg = explore_plan(unit, settings, i, memory.clone());
                let path = settings.out.join(warmup_dir(unit, "warmup-explore", i));
                let Some((info, learnt)) = reusable(&cfg, &path, true)? else {
                    break;
                };
                tick(1);
                memory = learnt;
                reused.push(info);
            }
        }
        let mut planned = Vec::new();
        let mut stand_in = memory.clone();
        for i in reused.len()..EXPLORE_RUNS {
            let cfg = explore_plan(unit, settings, i, stand_in);
            stand_in = explore_dry(&cfg)?;
            planned.push(cfg);
        }
        ahead.push(Ahead {
            unit: u,
            reused,
            memory,
            planned,
        });
    }
    let jobs: Vec<(usize, usize)> = ahead
        .iter()
        .enumerate()
        .flat_map(|(a, x)| (0..x.planned.len()).map(move |j| (a, j)))
        .collect();
    let outs: Vec<Result<(RunInfo, TowerMemory)>> = pool.install(|| {
        jobs.par_iter()
            .map(|&(a, j)| {
                let x = &ahead[a];
                let i = x.reused.len() + j;
                let dir = warmup_dir(&units[x.unit], "warmup-explore", i);
                let out = run_fresh(&x.planned[j], settings, &dir);
                tick(1);
                out
            })
            .collect()
    });
    let mut outs = outs.into_iter();
    let mut explored: Vec<Option<Explored>> = vec![None; units.len()];
    for x in ahead {
        let unit = &units[x.unit];
        let mut memory = x.memory;
        let mut runs = x.reused;
        let mut stale = false;
        for cfg in x.planned {
            let out = outs.next().expect("one result per planned run")?;
            let i = runs.len();
            let dir = settings.out.join(warmup_dir(unit, "warmup-explore", i));
            let stood_in = cfg.memory.samples.len();
            let same = !stale
                && stood_in == memory.samples.len()
                && cfg
                    .memory
                    .samples
                    .iter()
                    .zip(&memory.samples)
                    .all(|(a, b)| a.action == b.action);
            let (info, learnt) = if same {
                let mut learnt = memory.clone();
                learnt.samples.extend_from_slice(&out.1.samples[stood_in..]);
                record::write_json(&dir.join("tower-in.json"), &memory)?;
                record::write_json(&dir.join("tower.json"), &learnt)?;
                (out.0, learnt)
            } else {
                // Not what the dry pass said: make this run and the rest again, in order.
                stale = true;
                let cfg = explore_plan(unit, settings, i, memory.clone());
                let again = run_fresh(&cfg, settings, &warmup_dir(unit, "warmup-explore", i))?;
                tick(1);
                again
            };
            memory = learnt;
            runs.push(info);
        }
        explored[x.unit] = Some(Explored { runs, memory });
    }
    Ok(explored)
}

/// The burst a contender's runs have.
fn burst_of(contender: Contender, settings: &Settings) -> f64 {
    if contender.has_burst() {
        settings.burst
    } else {
        0.0
    }
}

fn captain_config(
    app: &Arc<Scenario>,
    trace: &Arc<Trace>,
    settings: &Settings,
    captain: ScalerKind,
    tower: TowerKind,
    memory: TowerMemory,
) -> RunPlan {
    let initial = controller::BanditConfig::new(app.slo_ms, app.aggregate_rps)
        .initial
        .targets();
    let mut cfg = RunPlan::new(app.clone(), trace.clone(), captain, initial);
    cfg.seed = settings.seed;
    cfg.ramp_s = settings.ramp_s;
    cfg.load = settings.load;
    cfg.services_csv = settings.services_csv;
    cfg.tower = tower;
    cfg.memory = memory;
    cfg
}

fn target_label(t: Targets) -> String {
    if t.group1 == t.group2 {
        format!("{}", t.group1)
    } else {
        format!("{}-{}", t.group1, t.group2)
    }
}

/// Runs `cfg` into `out/dir`, or reuses the record there when it is a finished run of the same
/// configuration (the Tower memory that was fed in is part of "the same": it is stored as
/// `tower-in.json` beside the record and compared).
fn run_or_resume(cfg: &RunPlan, settings: &Settings, dir: &str) -> Result<(RunInfo, TowerMemory)> {
    if settings.resume {
        let learning = cfg.tower != TowerKind::None;
        if let Some(found) = reusable(cfg, &settings.out.join(dir), learning)? {
            return Ok(found);
        }
    }
    run_fresh(cfg, settings, dir)
}

/// Runs `cfg` into `out/dir`, whatever is there.
fn run_fresh(cfg: &RunPlan, settings: &Settings, dir: &str) -> Result<(RunInfo, TowerMemory)> {
    let path = settings.out.join(dir);
    let learning = cfg.tower != TowerKind::None;
    let writer = RecordWriter::create(&path, true, cfg.services_csv)?;
    if learning {
        record::write_json(&path.join("tower-in.json"), &cfg.memory)?;
    }
    let out = run(cfg, Some(writer), &mut |_, _| {}).map_err(|e| SimError::Run {
        run: path.clone(),
        source: Box::new(e),
    })?;
    Ok((out.info, out.memory))
}

fn reusable(cfg: &RunPlan, path: &Path, learning: bool) -> Result<Option<(RunInfo, TowerMemory)>> {
    let Ok(found) = Record::read(path) else {
        return Ok(None);
    };
    let mut want = crate::run_info(cfg);
    want.summary = found.info.summary.clone();
    // A run stopped at its certain miss serves only a search that would stop it too.
    let stopped = found.info.summary.stopped_s.is_some();
    if found.info != want || (stopped && !cfg.stop_when_missed) {
        return Ok(None);
    }
    if !learning {
        return Ok(Some((found.info, TowerMemory::default())));
    }
    let fed: Option<TowerMemory> = record::read_json(&path.join("tower-in.json")).ok();
    let learnt: Option<TowerMemory> = record::read_json(&path.join("tower.json")).ok();
    match (fed, learnt) {
        (Some(fed), Some(learnt)) if fed == cfg.memory => Ok(Some((found.info, learnt))),
        _ => Ok(None),
    }
}

fn row(info: &RunInfo, workload: &str, scaler: &str, phase: &str, dir: &str) -> ResultRow {
    let s = &info.summary;
    ResultRow {
        app: info.scenario.clone(),
        workload: workload.to_string(),
        scaler: scaler.to_string(),
        phase: phase.to_string(),
        target1: fixed_or_tower(info, info.targets.group1),
        target2: fixed_or_tower(info, info.targets.group2),
        mean_target1: s.mean_target1,
        mean_target2: s.mean_target2,
        seed: info.seed,
        allocation: s.allocation,
        usage: s.usage,
        p50_ms: s.p50_ms,
        p99_ms: s.p99_ms,
        slo_ms: info.slo_ms,
        slo_met: s.slo_met,
        mean_rps: s.mean_rps,
        throttle_ratio: s.throttle_ratio,
        run: dir.to_string(),
        stopped_s: s.stopped_s,
    }
}

/// What a target column says: the fixed target, or `tower` for a run whose Tower chose.
fn fixed_or_tower(info: &RunInfo, target: f64) -> String {
    if info.tower == TowerKind::None.name() {
        target.to_string()
    } else {
        "tower".into()
    }
}

/// The best run of one contender on one (app, workload): the lowest allocation that met the
/// SLO among grid runs, or the evaluation run for Autothrottle. `None` when nothing met it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub app: String,
    pub workload: String,
    pub scaler: String,
    pub target1: Option<String>,
    pub target2: Option<String>,
    pub allocation: Option<f64>,
    pub p99_ms: Option<f64>,
    pub slo_ms: f64,
    pub run: Option<String>,
}

/// Picks the best per (app, workload, contender), in a stable order.
pub fn best(rows: &[ResultRow]) -> Vec<Best> {
    let mut keys: Vec<(String, String, String)> = rows
        .iter()
        .filter(|r| r.phase == "grid" || r.phase == "eval")
        .map(|r| (r.app.clone(), r.workload.clone(), r.scaler.clone()))
        .collect();
    keys.sort_by(|a, b| (&a.0, &a.1, order(&a.2)).cmp(&(&b.0, &b.1, order(&b.2))));
    keys.dedup();
    keys.into_iter()
        .map(|(app, workload, scaler)| {
            let candidates = rows.iter().filter(|r| {
                r.app == app
                    && r.workload == workload
                    && r.scaler == scaler
                    && (r.phase == "grid" || r.phase == "eval")
            });
            let slo_ms = rows.iter().find(|r| r.app == app).map_or(0.0, |r| r.slo_ms);
            let winner = settings_of(candidates)
                .into_iter()
                .filter(|d| d.met)
                .min_by(|a, b| a.allocation.total_cmp(&b.allocation));
            Best {
                app,
                workload,
                scaler,
                target1: winner.as_ref().map(|d| d.rows[0].target1.clone()),
                target2: winner.as_ref().map(|d| d.rows[0].target2.clone()),
                allocation: winner.as_ref().map(|d| d.allocation),
                p99_ms: winner.as_ref().map(|d| d.p99_ms),
                slo_ms,
                run: winner.as_ref().map(|d| d.rows[0].run.clone()),
            }
        })
        .collect()
}

/// One setting of a contender (a grid target, or an evaluation run) over its draws.
#[derive(Debug)]
pub struct Draws<'a> {
    /// In the order they ran: the first is the one seeded as a single-draw sweep seeds it.
    pub rows: Vec<&'a ResultRow>,
    /// The mean over the draws.
    pub allocation: f64,
    /// The median over the draws (a run stopped at its certain miss counts as above any
    /// other: its P99 so far is not the run's).
    pub p99_ms: f64,
    /// Every draw met the SLO.
    pub met: bool,
}

/// Groups one contender's rows into its settings: the draws of each grid target together, each
/// evaluation run on its own; in the order they first appear.
pub fn settings_of<'a>(rows: impl Iterator<Item = &'a ResultRow>) -> Vec<Draws<'a>> {
    let mut groups: Vec<Vec<&ResultRow>> = Vec::new();
    for r in rows {
        let same = |g: &Vec<&ResultRow>| {
            r.phase == "grid"
                && g[0].phase == "grid"
                && g[0].target1 == r.target1
                && g[0].target2 == r.target2
        };
        match groups.iter_mut().find(|g| same(g)) {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
        .into_iter()
        .map(|rows| {
            let n = rows.len();
            let mut p99: Vec<f64> = rows
                .iter()
                .map(|r| {
                    if r.stopped_s.is_some() {
                        f64::INFINITY
                    } else {
                        r.p99_ms
                    }
                })
                .collect();
            p99.sort_by(f64::total_cmp);
            let p99_ms = if n == 1 {
                rows[0].p99_ms
            } else if n % 2 == 1 {
                p99[n / 2]
            } else {
                (p99[n / 2 - 1] + p99[n / 2]) / 2.0
            };
            Draws {
                allocation: rows.iter().map(|r| r.allocation).sum::<f64>() / n as f64,
                p99_ms,
                met: rows.iter().all(|r| r.slo_met),
                rows,
            }
        })
        .collect()
}

fn order(scaler: &str) -> usize {
    Contender::ALL
        .iter()
        .position(|c| c.name() == scaler)
        .unwrap_or(usize::MAX)
}

/// Writes rows as CSV.
pub fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let csv_err = |source| SimError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let mut w = csv::Writer::from_path(path).map_err(csv_err)?;
    for r in rows {
        w.serialize(r).map_err(csv_err)?;
    }
    w.flush().map_err(|source| SimError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `results.csv` rows, naming the file and line on error.
pub fn read_results(path: &Path) -> Result<Vec<ResultRow>> {
    let csv_err = |source| SimError::Csv {
        path: path.to_path_buf(),
        source,
    };
    // The csv crate's errors carry the line of a bad row.
    let mut r = csv::Reader::from_path(path).map_err(csv_err)?;
    r.deserialize().map(|row| row.map_err(csv_err)).collect()
}

/// Combines shard outputs: concatenates their results (in the unsharded order, given each
/// shard's unit order) and checks that no run appears twice.
pub fn merge(parts: Vec<Vec<ResultRow>>) -> Result<Vec<ResultRow>> {
    let mut rows: Vec<ResultRow> = parts.into_iter().flatten().collect();
    rows.sort_by(|a, b| {
        (&a.app, &a.workload, order(&a.scaler), &a.run).cmp(&(
            &b.app,
            &b.workload,
            order(&b.scaler),
            &b.run,
        ))
    });
    for w in rows.windows(2) {
        if w[0].run == w[1].run {
            return Err(SimError::DuplicateRun(w[0].run.clone()));
        }
    }
    Ok(rows)
}

/// Sorts rows the way [`merge`] does, so unsharded and merged outputs compare equal.
pub fn canonical(rows: Vec<ResultRow>) -> Vec<ResultRow> {
    merge(vec![rows]).expect("one shard has no duplicate runs")
}

/// A plain-text table of best results.
pub fn best_table(best: &[Best]) -> String {
    let mut s = format!(
        "{:<20} {:<12} {:<22} {:>11} {:>12} {:>10} {:>8}\n",
        "app", "workload", "scaler", "targets", "allocation", "P99 ms", "SLO ms"
    );
    for b in best {
        let targets = match (&b.target1, &b.target2) {
            (Some(a), Some(c)) if a == c => a.clone(),
            (Some(a), Some(c)) => format!("{a},{c}"),
            _ => "-".into(),
        };
        let alloc = b.allocation.map_or("N/A".into(), |a| format!("{a:.2}"));
        let p99 = b.p99_ms.map_or("-".into(), |p| format!("{p:.1}"));
        s.push_str(&format!(
            "{:<20} {:<12} {:<22} {:>11} {:>12} {:>10} {:>8}\n",
            b.app, b.workload, b.scaler, targets, alloc, p99, b.slo_ms
        ));
    }
    s
}

/// One row of the paper's Table 1: an (app, workload) and each contender's best allocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableRow {
    pub app: String,
    pub workload: String,
    pub k8s_cpu: Option<f64>,
    pub k8s_cpu_fast: Option<f64>,
    pub autothrottle: Option<f64>,
    /// Autothrottle's saving over the best baseline that met the SLO, in %.
    pub saving_pct: Option<f64>,
}

/// Builds the Table-1 grid from the best results.
pub fn table(best: &[Best]) -> Vec<TableRow> {
    let mut cells: Vec<(String, String)> = best
        .iter()
        .map(|b| (b.app.clone(), b.workload.clone()))
        .collect();
    cells.dedup();
    cells
        .into_iter()
        .map(|(app, workload)| {
            let get = |c: Contender| {
                best.iter()
                    .find(|b| b.app == app && b.workload == workload && b.scaler == c.name())
                    .and_then(|b| b.allocation)
            };
            let (k, f, a) = (
                get(Contender::K8sCpu),
                get(Contender::K8sCpuFast),
                get(Contender::Autothrottle),
            );
            let baseline = [k, f].into_iter().flatten().reduce(f64::min);
            TableRow {
                saving_pct: match (baseline, a) {
                    (Some(b), Some(a)) if b > 0.0 => Some(100.0 * (b - a) / b),
                    _ => None,
                },
                app,
                workload,
                k8s_cpu: k,
                k8s_cpu_fast: f,
                autothrottle: a,
            }
        })
        .collect()
}

/// The table as Markdown, cells in cores (N/A: the SLO was never met).
pub fn table_markdown(rows: &[TableRow]) -> String {
    let cell = |v: Option<f64>| v.map_or("N/A".to_string(), |v| format!("{v:.2}"));
    let mut s = String::from(
        "| App | Workload | K8s-CPU | K8s-CPU-Fast | Autothrottle | Saving vs best baseline |\n|---|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.app,
            r.workload,
            cell(r.k8s_cpu),
            cell(r.k8s_cpu_fast),
            cell(r.autothrottle),
            r.saving_pct.map_or("-".into(), |p| format!("{p:.1}%"))
        ));
    }
    s
}

/// Beyond the paper: the contenders with a CFS burst and the original Tower beside the
/// project's Autothrottle, in cores, each with its saving over the best baseline without a
/// burst (the paper's reference) in brackets.
pub fn burst_table_markdown(best: &[Best]) -> String {
    const COLUMNS: [Contender; 9] = [
        Contender::K8sCpuBurst,
        Contender::K8sCpuFastBurst,
        Contender::AutothrottleOriginal,
        Contender::Autothrottle,
        Contender::AutothrottleCv,
        Contender::AutothrottleBurst,
        Contender::AutothrottleSmooth,
        Contender::AutothrottleSmoothBurst,
        Contender::CaptainBurst,
    ];
    let present: Vec<Contender> = COLUMNS
        .into_iter()
        .filter(|c| best.iter().any(|b| b.scaler == c.name()))
        .collect();
    let mut s = String::from("| App | Workload | best baseline |");
    for c in &present {
        s.push_str(&format!(" {} |", c.title()));
    }
    s.push_str("\n|---|---|---:|");
    for _ in &present {
        s.push_str("---:|");
    }
    s.push('\n');
    for r in table(best) {
        let get = |c: Contender| {
            best.iter()
                .find(|b| b.app == r.app && b.workload == r.workload && b.scaler == c.name())
                .and_then(|b| b.allocation)
        };
        let baseline = [r.k8s_cpu, r.k8s_cpu_fast]
            .into_iter()
            .flatten()
            .reduce(f64::min);
        let cell = |v: Option<f64>| match (v, baseline) {
            (Some(v), Some(b)) if b > 0.0 => format!("{v:.2} ({:+.1}%)", 100.0 * (b - v) / b),
            (Some(v), _) => format!("{v:.2}"),
            (None, _) => "N/A".into(),
        };
        s.push_str(&format!(
            "| {} | {} | {} |",
            r.app,
            r.workload,
            baseline.map_or("N/A".into(), |b| format!("{b:.2}"))
        ));
        for &c in &present {
            s.push_str(&format!(" {} |", cell(get(c))));
        }
        s.push('\n');
    }
    s
}
