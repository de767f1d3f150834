//! The command-line flags that describe a run, shared by `sim run` and `live run` so that the
//! two worlds take the same flags with the same meaning and the same checks (feature `cli`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use controller::{ScalerKind, Targets, TowerKind, TowerMemory};
use scenarios::Scenario;
use traces::Load;

use crate::{RecordError, RunPlan};

/// Which Tower a run uses, as a closed set for the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TowerChoice {
    /// Fixed targets.
    None,
    /// The warm-up explorer.
    Explore,
    /// The contextual bandit.
    Bandit,
    /// The artifact's learner (Vowpal Wabbit's `--cb_explore 81 --nn 3`, ported), to compare.
    Original,
    /// The warm-up explorer, keeping each minute's RPS variability for `bandit-cv`.
    ExploreCv,
    /// The contextual bandit with the load's variability as a second context.
    BanditCv,
}

/// How the run replays its workload and which controllers it runs: everything of a
/// [`RunPlan`] but the application and the trace, whose defaults differ per binary.
#[derive(Args, Debug, Clone)]
pub struct ControlArgs {
    /// Multiply the trace by this instead of the scenario's multiplier.
    #[arg(long)]
    pub multiplier: Option<f64>,
    /// Warm-up ramp before the trace, seconds.
    #[arg(long, default_value_t = traces::RAMP_SECONDS)]
    pub ramp: usize,
    /// Only replay the first N seconds of the trace (for quick looks).
    #[arg(long)]
    pub duration: Option<usize>,
    /// poisson: the trace value is a rate of open-loop Poisson arrivals (the stricter test);
    /// users: a number of Locust-like users, each thinking --think-time s (exponential) after
    /// every response (the paper's load).
    #[arg(long, default_value = "poisson")]
    pub load: Load,
    /// Mean think time of a user, seconds (--load users).
    #[arg(long, default_value_t = traces::THINK_S)]
    pub think_time: f64,
    /// captain, captain-smooth (beyond the paper: scale-downs sized from one-second means of
    /// usage), k8s-cpu, k8s-cpu-fast or const.
    #[arg(long, default_value = "captain")]
    pub scaler: ScalerKind,
    /// Targets: "G1,G2" (CPU-heavy group, the rest) or one value for both. Throttle ratio for
    /// captain, CPU utilisation for k8s-cpu*.
    #[arg(long, default_value = "0.1,0.1")]
    pub targets: Targets,
    /// Starting limit of every container, cores (default: the scenario's).
    #[arg(long)]
    pub initial_limit: Option<f64>,
    /// The Tower that sets the targets every minute.
    #[arg(long, value_enum, default_value_t = TowerChoice::None)]
    pub tower: TowerChoice,
    /// Bandit exploration probability.
    #[arg(long, default_value_t = 0.0)]
    pub explore: f64,
    /// Tower memory (JSON, as in tower.json): read at the start if it exists, written at the
    /// end, so that runs learn from each other.
    #[arg(long)]
    pub tower_memory: Option<PathBuf>,
    /// CFS burst of every container, as a fraction of its quota (0 to 1): quota a period
    /// leaves unused may be spent in later periods, up to this much above the quota
    /// (`cpu.cfs_burst_us` / `cpu.max.burst`, Linux 5.14+). 0: none, as in the paper.
    #[arg(long, default_value_t = 0.0)]
    pub burst: f64,
    /// Seed of the arrivals, the request mix and the Tower.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A calibration load: change the request mix every N seconds, cycling through the
    /// scenario's own mix and each request type in turn taking half of the requests, so that
    /// `sim calibrate` can tell apart the CPU of request types the usual mix always sends
    /// together (0: the scenario's mix throughout).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub mix_cycle: usize,
}

/// What to do with the run record besides writing it to `--out` (whose default each binary
/// sets).
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Overwrite a run record already in --out.
    #[arg(long)]
    pub force: bool,
    /// Do not write services.csv (one row per second per service).
    #[arg(long)]
    pub no_services: bool,
    /// Print the run's description and summary (run.json) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl ControlArgs {
    /// The Tower the flags describe.
    pub fn tower(&self) -> Result<TowerKind, RecordError> {
        let kind = match self.tower {
            TowerChoice::None => TowerKind::None,
            TowerChoice::Explore => TowerKind::Explore,
            TowerChoice::Bandit => TowerKind::Bandit {
                explore: self.explore,
            },
            TowerChoice::Original => TowerKind::Original {
                explore: self.explore,
            },
            TowerChoice::ExploreCv => TowerKind::ExploreCv,
            TowerChoice::BanditCv => TowerKind::BanditCv {
                explore: self.explore,
            },
        };
        kind.validate()?;
        Ok(kind)
    }

    /// Loads the scenario and the workload `trace` names, and builds the checked plan of a run
    /// of them under these flags.
    pub fn plan(&self, scenario: &str, trace: &str) -> Result<RunPlan, RecordError> {
        let flag =
            |name: &str, e: &dyn std::fmt::Display| RecordError::Invalid(format!("{name}: {e}"));
        let scenario = Scenario::load(scenario).map_err(|e| RecordError::Invalid(e.to_string()))?;
        let trace = scenario
            .workload(trace)
            .map_err(|e| RecordError::Invalid(e.to_string()))?;
        let trace = match self.duration {
            Some(0) => return Err(flag("--duration", &"must be at least 1 second")),
            Some(d) => trace.truncated(d),
            None => trace,
        };
        let memory = match &self.tower_memory {
            Some(p) if p.exists() => crate::read_json::<TowerMemory>(p)?,
            _ => TowerMemory::default(),
        };
        let plan = RunPlan {
            multiplier: self.multiplier,
            ramp_s: self.ramp,
            load: self
                .load
                .with_think(self.think_time)
                .map_err(|e| flag("--think-time", &e))?,
            initial_limit: self.initial_limit,
            tower: self.tower()?,
            memory,
            seed: self.seed,
            burst: self.burst,
            mix_cycle_s: self.mix_cycle,
            ..RunPlan::new(
                Arc::new(scenario),
                Arc::new(trace),
                self.scaler,
                self.targets,
            )
        };
        plan.validate()?;
        Ok(plan)
    }

    /// Writes the Tower's memory back where `--tower-memory` said, if it did.
    pub fn save_memory(&self, memory: &TowerMemory) -> Result<(), RecordError> {
        match &self.tower_memory {
            Some(p) => crate::write_json(p, memory),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        control: ControlArgs,
    }

    fn parse(args: &[&str]) -> ControlArgs {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .unwrap()
            .control
    }

    #[test]
    fn flags_become_a_checked_plan() {
        let c = parse(&[
            "--tower",
            "bandit",
            "--explore",
            "0.2",
            "--load",
            "users",
            "--think-time",
            "2",
            "--duration",
            "60",
        ]);
        let plan = c.plan("demo", "constant").unwrap();
        assert_eq!(plan.tower, TowerKind::Bandit { explore: 0.2 });
        assert_eq!(plan.load, Load::users().with_think(2.0).unwrap());
        assert_eq!(plan.trace.rps.len(), 60);
    }

    #[test]
    fn bad_flags_are_refused_with_their_name() {
        assert!(Cli::try_parse_from(["x", "--tower", "oracle"]).is_err());
        let e = parse(&["--think-time=-1", "--load", "users"])
            .plan("demo", "constant")
            .unwrap_err();
        assert!(e.to_string().contains("--think-time"), "{e}");
        let e = parse(&["--duration", "0"])
            .plan("demo", "constant")
            .unwrap_err();
        assert!(e.to_string().contains("--duration"), "{e}");
        let e = parse(&["--tower", "bandit", "--explore", "2"])
            .plan("demo", "constant")
            .unwrap_err();
        assert!(e.to_string().contains("explore"), "{e}");
        let e = parse(&[
            "--tower",
            "bandit",
            "--scaler",
            "k8s-cpu",
            "--targets",
            "0.5",
        ])
        .plan("demo", "constant")
        .unwrap_err();
        assert!(e.to_string().contains("captain"), "{e}");
        assert!(parse(&[]).plan("no-such-app", "constant").is_err());
    }
}
