//! The description of a run, shared by the simulator and the live coordinator.

use std::sync::Arc;

use controller::{ScalerKind, Targets, TowerKind, TowerMemory};
use scenarios::Scenario;
use traces::{Load, Trace};

use crate::{RecordError, RunInfo};

/// The longest warm-up ramp, seconds (a day).
pub const MAX_RAMP_S: usize = 86_400;

/// Everything a run needs, in either world: what app, what load, which controllers. The
/// simulator runs it as it is; the live coordinator adds where the app and the agents are.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub scenario: Arc<Scenario>,
    pub trace: Arc<Trace>,
    /// Use the scenario's multiplier unless set.
    pub multiplier: Option<f64>,
    pub ramp_s: usize,
    /// Open-loop Poisson arrivals or closed-loop users.
    pub load: Load,
    pub scaler: ScalerKind,
    /// Initial targets per group (throttle ratio for the Captain, utilisation for K8s-CPU).
    pub targets: Targets,
    /// Overrides every service's initial limit (the scenario's by default).
    pub initial_limit: Option<f64>,
    /// Overrides the initial limit per service (in scenario order); wins over `initial_limit`.
    pub initial_limits: Option<Vec<f64>>,
    pub tower: TowerKind,
    /// What the Tower knows at the start.
    pub memory: TowerMemory,
    pub seed: u64,
    /// Also write services.csv (one row per second per service).
    pub services_csv: bool,
    /// Replay this request log (send times and types, ramp included) instead of drawing
    /// arrivals from the trace: a re-simulation of a recorded run sees exactly its requests.
    /// The trace then only names the workload and gives the Tower its context.
    pub arrivals: Option<Arc<crate::arrivals::Arrivals>>,
    /// CFS burst of every container as a fraction of its quota (0: none, the paper's
    /// setting; at most 1, as the kernel requires `burst <= quota`).
    pub burst: f64,
    /// End the run as soon as its SLO verdict is certain to be a miss (the summary's
    /// `stopped_s` says when): a grid search needs no more of such a run. Open-loop arrivals
    /// (or a replayed request log), where the number of requests judged is known before the run.
    pub stop_when_missed: bool,
    /// Change the request mix every this many seconds, cycling through
    /// [`Scenario::mix_phases`] (0: the scenario's mix always). A calibration load: a record
    /// made under it tells apart the CPU of request types the usual mix sends together.
    pub mix_cycle_s: usize,
}

impl RunPlan {
    /// A run with the paper's defaults: 180 s ramp, no Tower, records without services.csv.
    pub fn new(
        scenario: Arc<Scenario>,
        trace: Arc<Trace>,
        scaler: ScalerKind,
        targets: Targets,
    ) -> Self {
        RunPlan {
            scenario,
            trace,
            multiplier: None,
            ramp_s: traces::RAMP_SECONDS,
            load: Load::Poisson,
            scaler,
            targets,
            initial_limit: None,
            initial_limits: None,
            tower: TowerKind::None,
            memory: TowerMemory::default(),
            seed: 1,
            services_csv: false,
            arrivals: None,
            burst: 0.0,
            stop_when_missed: false,
            mix_cycle_s: 0,
        }
    }

    /// The trace multiplier in force.
    pub fn multiplier(&self) -> f64 {
        self.multiplier.unwrap_or(self.scenario.multiplier)
    }

    /// Refuses what cannot run, before anything runs.
    pub fn validate(&self) -> Result<(), RecordError> {
        let bad = |m: String| Err(RecordError::Invalid(m));
        controller::check_setup(self.scaler, self.targets, self.tower)?;
        if let Some(log) = &self.arrivals {
            let names: Vec<&str> = self
                .scenario
                .requests
                .iter()
                .map(|r| r.name.as_str())
                .collect();
            log.kinds_in(&names)?;
            let seconds = self.rates().len();
            if log.t.last().is_some_and(|&t| t >= seconds as f64) {
                return bad(format!(
                    "the request log runs to {:.1} s, past the run's {seconds} s (ramp and trace)",
                    log.t.last().copied().unwrap_or(0.0)
                ));
            }
        }
        if self.mix_cycle_s > 0 && self.arrivals.is_some() {
            return bad(
                "a mix cycle changes the request types a run draws, but a replayed request log \
                 already says the type of every request"
                    .into(),
            );
        }
        if self.stop_when_missed && self.load != Load::Poisson && self.arrivals.is_none() {
            return bad(
                "a run can stop once its SLO is certainly missed only under open-loop arrivals: \
                 closed-loop users send more requests the faster they are answered, so how many \
                 requests will be judged is not known in advance"
                    .into(),
            );
        }
        if !(0.0..=1.0).contains(&self.burst) {
            return bad(format!(
                "burst must be a fraction of the quota from 0 to 1 (the kernel refuses a burst above the quota), got {}",
                self.burst
            ));
        }
        if let Some(l) = self.initial_limit {
            if !positive(l) {
                return bad(format!(
                    "initial limit must be a positive number of cores, got {l}"
                ));
            }
        }
        if let Some(ls) = &self.initial_limits {
            if ls.len() != self.scenario.services.len() {
                return bad(format!(
                    "{} initial limits given for {} services",
                    ls.len(),
                    self.scenario.services.len()
                ));
            }
            if let Some(l) = ls.iter().find(|l| !positive(**l)) {
                return bad(format!(
                    "initial limit must be a positive number of cores, got {l}"
                ));
            }
        }
        if !positive(self.multiplier()) {
            return bad(format!(
                "multiplier must be positive, got {}",
                self.multiplier()
            ));
        }
        // Checked before anything is allocated from them.
        if self.ramp_s > MAX_RAMP_S {
            return bad(format!(
                "a ramp of {} s is over the limit of {MAX_RAMP_S} s",
                self.ramp_s
            ));
        }
        let peak = self.trace.rps.iter().copied().max().unwrap_or(0) as f64 * self.multiplier();
        if peak > traces::MAX_RATE as f64 {
            return bad(format!(
                "the trace times the multiplier peaks at {peak:.0} per second, over the limit of {}",
                traces::MAX_RATE
            ));
        }
        Ok(())
    }

    /// Each service's limit at the start, cores (scenario order).
    pub fn initial_limits(&self) -> Vec<f64> {
        match &self.initial_limits {
            Some(ls) => ls.clone(),
            None => self
                .scenario
                .services
                .iter()
                .map(|s| self.initial_limit.unwrap_or(s.initial_limit))
                .collect(),
        }
    }

    /// Requests (or users) per second, second by second: the ramp, then the trace.
    pub fn rates(&self) -> Vec<f64> {
        self.trace.schedule(self.multiplier(), self.ramp_s)
    }

    /// The run's static description for a run record from `source` (`sim` or `live`); its
    /// summary is filled in at the end.
    pub fn info(&self, source: &str) -> RunInfo {
        RunInfo::new(source, &self.scenario, &self.trace.name, self.seed)
            .with_workload(self.multiplier(), self.ramp_s)
            .with_load(self.load)
            .with_control(self.scaler, self.targets, self.tower)
            .with_initial_limits(self.initial_limits())
            .with_burst(self.burst)
            .with_mix_cycle(self.mix_cycle_s)
    }
}

/// A finite number above zero (NaN is not).
fn positive(x: f64) -> bool {
    x > 0.0 && x.is_finite()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> RunPlan {
        RunPlan::new(
            Arc::new(Scenario::builtin("demo").unwrap()),
            Arc::new(Trace::constant(100, 60)),
            ScalerKind::Captain,
            Targets::new(0.1, 0.1),
        )
    }

    #[test]
    fn refuses_what_cannot_run() {
        assert!(plan().validate().is_ok());
        let mut p = plan();
        p.initial_limit = Some(f64::NAN);
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("initial limit"));
        for burst in [-0.1, 1.5, f64::NAN] {
            let mut p = plan();
            p.burst = burst;
            assert!(p.validate().unwrap_err().to_string().contains("burst"));
        }
        let mut p = plan();
        p.initial_limits = Some(vec![1.0]);
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("1 initial limits given for 3 services"));
        let mut p = plan();
        p.multiplier = Some(0.0);
        assert!(p.validate().unwrap_err().to_string().contains("multiplier"));
        let mut p = plan();
        p.multiplier = Some(1e9);
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("over the limit"));
        let mut p = plan();
        p.ramp_s = 1_000_000_000;
        assert!(p.validate().unwrap_err().to_string().contains("ramp"));
        let mut p = plan();
        p.tower = TowerKind::Bandit { explore: 0.1 };
        p.scaler = ScalerKind::K8sCpu;
        assert!(
            p.validate().is_err(),
            "a Tower sets throttle-ratio targets: Captains only"
        );
        let mut p = plan();
        p.stop_when_missed = true;
        assert!(p.validate().is_ok(), "open loop: the requests are known");
        p.load = traces::Load::users();
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("only under open-loop arrivals"));
        // A calibration load draws each request's type; a replayed log already has them.
        let mut p = plan();
        p.mix_cycle_s = 10;
        assert!(p.validate().is_ok());
        p.arrivals = Some(Arc::new(crate::arrivals::Arrivals {
            names: vec!["get".into()],
            t: vec![0.5, 1.5],
            kind: vec![0, 0],
        }));
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("a replayed request log already says the type of every request"));
        p.mix_cycle_s = 0;
        assert!(p.validate().is_ok());
    }

    #[test]
    fn initial_limits_per_service_win_over_one_for_all() {
        let mut p = plan();
        assert_eq!(p.initial_limits(), vec![2.0; 3]);
        p.initial_limit = Some(4.0);
        assert_eq!(p.initial_limits(), vec![4.0; 3]);
        p.initial_limits = Some(vec![1.0, 2.0, 3.0]);
        assert_eq!(p.initial_limits(), vec![1.0, 2.0, 3.0]);
        assert_eq!(p.info("sim").initial_limits, vec![1.0, 2.0, 3.0]);
    }
}
