//! The learning Tower: a contextual bandit over the 9 x 9 target grid with RPS as context.
//!
//! The original ran Vowpal Wabbit with a tiny neural network as the cost model. This one keeps
//! the interface and the cost definition (normalised allocation when the SLO is met, 2 + the
//! normalised latency when it is not) but uses a model built for the problem's structure:
//!
//! 1. samples are grouped by (action, RPS bucket) and each group is summarised by medians, which
//!    shrugs off the odd minute that straddled a target change;
//! 2. **allocation is multiplicative**: `ln alloc(a, rps) = theta_a + s(rps)`: the load sets how
//!    much CPU is needed (`s`, shared by all actions and smoothed over RPS with a Gaussian kernel
//!    of `bandwidth_buckets` buckets), the action sets the headroom kept over it (`theta_a`).
//!    Fitted by backfitting, this compares actions fairly even when each was tried at a
//!    different load, which a per-action average cannot do: an action seen only at low RPS
//!    would look cheap at any RPS;
//! 3. **SLO safety follows the grid's order**: looser targets (both at least as high) never
//!    allocate more and never have better latency. So `a` is *unsafe* at `rps` if it missed the
//!    SLO itself at a bucket at or below `rps`'s, or if an action it is at least as loose as did
//!    so in a group of at least two samples (one unlucky minute of a tight action must not rule
//!    out most of the grid); and it is *known safe* if an action at least as loose met the SLO
//!    at a bucket at or above (one bucket of slack);
//! 4. **this run's evidence wins**: for an (action, bucket) that this run has seen, only this
//!    run's samples count, and a miss seen in this run also rules out the actions one grid step
//!    tighter in both groups. Earlier runs (the warm-up) may have seen a gentler workload at the
//!    same RPS; without this, their samples outvote a fresh miss in the median and the greedy
//!    choice keeps missing the SLO minute after minute, one grid step at a time;
//! 5. the greedy choice is the known-safe, not-unsafe action with the lowest `theta`; when none
//!    is known safe (an RPS beyond everything seen) the configured `initial` action is used;
//!    with probability `explore` a random grid neighbour of the choice is taken instead;
//! 6. **start-up is held cautious**: the minutes a run does not learn from (`drop_samples`: the
//!    warm-up ramp's, and the first one after it) are run at the `initial` action, not at
//!    what the samples say is safe at their RPS. Those samples are of steady load; a ramp that
//!    triples the load every minute is not, and loose targets there leave the first judged
//!    minute with squeezed limits and a queue (P99 285-404 ms in it on the calibrated hotel's
//!    jagged workloads), whose misses then rule out (rule 4) the very targets that were
//!    recovering from them.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::tower::{check_probability, explore_around, Recorder};
use crate::{Action, ControllerError, MinuteObservation, Targets, Tower, TowerMemory};

/// Width of a variability bucket (coefficient of variation of per-second RPS over a minute):
/// the original traces' minutes span 0.004-0.2 (diurnal about 0.01, bursty 0.03-0.05, noisy
/// about 0.1), and Poisson arrivals add 1/sqrt(rps) (0.06 at 300 RPS).
pub const CV_BUCKET: f64 = 0.05;

/// Backfitting rounds; the fit settles in a handful.
const BACKFIT_ROUNDS: usize = 12;

/// How a [`BanditTower`] learns and explores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanditConfig {
    /// The latency SLO on P99, in ms.
    pub slo_ms: f64,
    /// RPS bucket size (20 in the paper; 200 for hotel-reservation).
    pub aggregate_rps: f64,
    /// Probability of moving to a random grid neighbour of the best action.
    pub explore: f64,
    /// Minutes at the start of each run that are not learnt from (the warm-up ramp).
    pub drop_samples: usize,
    /// Width of the RPS kernel, in buckets.
    pub bandwidth_buckets: f64,
    /// The action used before anything has been learnt.
    pub initial: Action,
    /// An action counts as known safe at a load only where an action at least as loose kept
    /// P99 within `safety_margin * slo_ms` (1: just meeting the SLO is enough).
    pub safety_margin: f64,
    /// Beyond the paper: the load's variability as a second context, in buckets of this width
    /// of the minute's per-second RPS coefficient of variation (`None`: RPS only, the paper's
    /// context). See [`BanditConfig::with_variability`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cv_bucket: Option<f64>,
}

impl BanditConfig {
    /// Defaults for an SLO and a bucket size: no exploration, 3 ramp minutes dropped, a 2-bucket
    /// kernel, and a cautious start at targets (0.06, 0.06).
    pub fn new(slo_ms: f64, aggregate_rps: f64) -> Self {
        BanditConfig {
            slo_ms,
            aggregate_rps,
            explore: 0.0,
            drop_samples: 3,
            bandwidth_buckets: 2.0,
            initial: Action::new(3, 3),
            safety_margin: 1.0,
            cv_bucket: None,
        }
    }

    /// The same, with the load's variability in the context: samples are grouped by RPS
    /// bucket and by variability bucket (`width` of coefficient of variation). A miss rules an
    /// action out only at loads at least as high *and* at least as jagged as the one it was
    /// seen at, and only a minute at least as jagged (one bucket of slack) vouches for an
    /// action, so a smooth warm-up neither vouches for a jagged minute nor is ruled out by one.
    pub fn with_variability(mut self, width: f64) -> Self {
        self.cv_bucket = Some(width);
        self
    }

    /// The same, with exploration probability `explore`.
    pub fn with_explore(mut self, explore: f64) -> Self {
        self.explore = explore;
        self
    }

    pub fn validate(&self) -> Result<(), ControllerError> {
        check_probability("explore", self.explore)?;
        let positive = |name: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(ControllerError::BadTower(format!(
                    "{name} must be a positive number, got {v}"
                )))
            }
        };
        positive("slo_ms", self.slo_ms)?;
        positive("aggregate_rps", self.aggregate_rps)?;
        positive("bandwidth_buckets", self.bandwidth_buckets)?;
        if let Some(w) = self.cv_bucket {
            positive("cv_bucket", w)?;
        }
        Ok(())
    }
}

/// A contextual bandit Tower (see the module documentation for the cost model).
#[derive(Debug, Clone)]
pub struct BanditTower {
    config: BanditConfig,
    recorder: Recorder,
    rng: Pcg64Mcg,
}

/// The fitted allocation model.
struct Fit {
    theta: Vec<Option<f64>>,
    buckets: Vec<i64>,
    load: Vec<f64>,
    bandwidth: f64,
}

impl Fit {
    /// The load term at a (fractional) bucket, smoothed like the fit.
    fn load_at(&self, bucket: f64) -> f64 {
        let (mut num, mut den) = (0.0, 0.0);
        for (b, l) in self.buckets.iter().zip(&self.load) {
            let w = (-0.5 * ((bucket - *b as f64) / self.bandwidth).powi(2)).exp();
            num += w * l;
            den += w;
        }
        if den > 1e-300 {
            num / den
        } else {
            // Far beyond every bucket seen: the nearest one.
            self.buckets
                .iter()
                .zip(&self.load)
                .min_by(|x, y| {
                    (bucket - *x.0 as f64)
                        .abs()
                        .total_cmp(&(bucket - *y.0 as f64).abs())
                })
                .map_or(0.0, |(_, l)| *l)
        }
    }
}

/// One (action, RPS bucket) group of samples, summarised by medians.
#[derive(Debug, Clone, Copy)]
struct Point {
    action: Action,
    bucket: i64,
    /// Log of the allocation, in cores.
    alloc: f64,
    /// The paper's cost (>= 2 for an SLO miss).
    cost: f64,
    /// Samples in the group.
    n: usize,
    /// P99 latency, ms.
    p99: f64,
    /// Summarises this run's samples (not inherited ones).
    fresh: bool,
    /// Variability bucket (always 0 without the variability context).
    cvb: i64,
}

impl BanditTower {
    /// A Tower that starts from `memory` (empty for a fresh one) and explores with `seed`.
    pub fn new(config: BanditConfig, memory: TowerMemory, seed: u64) -> Self {
        let recorder = Recorder::new(memory, config.drop_samples);
        BanditTower {
            recorder: if config.cv_bucket.is_some() {
                recorder.with_variability()
            } else {
                recorder
            },
            config,
            rng: Pcg64Mcg::seed_from_u64(seed),
        }
    }

    /// Like [`new`](Self::new) but refuses a bad configuration.
    pub fn try_new(
        config: BanditConfig,
        memory: TowerMemory,
        seed: u64,
    ) -> Result<Self, ControllerError> {
        config.validate()?;
        Ok(Self::new(config, memory, seed))
    }

    fn points(&self) -> Vec<Point> {
        let memory = &self.recorder.memory;
        let slo = self.config.slo_ms;
        let costs = memory.costs(slo);
        // (alloc, cost, p99) of inherited samples, then of this run's.
        type Group = [(Vec<f64>, Vec<f64>, Vec<f64>); 2];
        let mut groups: BTreeMap<(Action, i64, i64), Group> = BTreeMap::new();
        for (k, (s, c)) in memory.samples.iter().zip(costs).enumerate() {
            let bucket = (s.rps / self.config.aggregate_rps).round() as i64;
            let cvb = self.cv_bucket_of(s.rps_cv);
            let alloc = s.allocation.max(1e-3).ln();
            let fresh = usize::from(k >= self.recorder.inherited);
            let g = &mut groups.entry((s.action, bucket, cvb)).or_default()[fresh];
            g.0.push(alloc);
            g.1.push(c);
            g.2.push(s.p99_ms);
        }
        groups
            .into_iter()
            .map(|((action, bucket, cvb), [old, new])| {
                // What this run saw of an action at a load replaces what earlier runs saw:
                // the deployment and workload of now are the ones that matter.
                let fresh = !new.1.is_empty();
                let (mut alloc, mut cost, mut p99) = if fresh { new } else { old };
                Point {
                    action,
                    bucket,
                    cvb,
                    n: cost.len(),
                    fresh,
                    alloc: median(&mut alloc),
                    cost: median(&mut cost),
                    p99: median(&mut p99),
                }
            })
            .collect()
    }

    /// Fits `theta_a` and the load curve (see the module documentation); `theta` is `None` for
    /// actions never tried.
    fn fit(&self, points: &[Point]) -> Fit {
        let mut theta = vec![0.0f64; Action::COUNT];
        let mut tried = vec![false; Action::COUNT];
        for p in points {
            tried[p.action.index()] = true;
        }
        let buckets: Vec<i64> = {
            let mut b: Vec<i64> = points.iter().map(|p| p.bucket).collect();
            b.sort_unstable();
            b.dedup();
            b
        };
        let slot = |b: i64| buckets.binary_search(&b).expect("bucket of a point");
        let h = self.config.bandwidth_buckets;
        let mut load = vec![0.0f64; buckets.len()];
        for _ in 0..BACKFIT_ROUNDS {
            // Load term: kernel-smoothed mean residual per bucket.
            let mut sum = vec![0.0f64; buckets.len()];
            let mut n = vec![0.0f64; buckets.len()];
            for p in points {
                let k = slot(p.bucket);
                sum[k] += p.alloc - theta[p.action.index()];
                n[k] += 1.0;
            }
            for (i, &bi) in buckets.iter().enumerate() {
                let (mut num, mut den) = (0.0, 0.0);
                for (j, &bj) in buckets.iter().enumerate() {
                    let w = (-0.5 * ((bi - bj) as f64 / h).powi(2)).exp();
                    num += w * sum[j];
                    den += w * n[j];
                }
                load[i] = if den > 0.0 { num / den } else { 0.0 };
            }
            // Action term: mean residual per action.
            let mut sum = vec![0.0f64; Action::COUNT];
            let mut n = vec![0.0f64; Action::COUNT];
            for p in points {
                sum[p.action.index()] += p.alloc - load[slot(p.bucket)];
                n[p.action.index()] += 1.0;
            }
            for a in 0..Action::COUNT {
                if n[a] > 0.0 {
                    theta[a] = sum[a] / n[a];
                }
            }
        }
        Fit {
            theta: theta
                .into_iter()
                .zip(tried)
                .map(|(t, tried)| tried.then_some(t))
                .collect(),
            buckets,
            load,
            bandwidth: h,
        }
    }

    /// Predicted cost of every action at `rps`: the action term for known-safe actions, at
    /// least 2 for unsafe ones, `None` where the action was never tried or its safety at this
    /// load is unknown.
    pub fn predict(&self, rps: f64) -> Vec<Option<f64>> {
        self.predict_at(rps, 0.0)
    }

    /// The variability bucket of a coefficient of variation (0 without that context).
    fn cv_bucket_of(&self, cv: f64) -> i64 {
        self.config.cv_bucket.map_or(0, |w| (cv / w).round() as i64)
    }

    /// [`predict`](Self::predict) at a minute of RPS variability `cv` (the same as `predict`
    /// without the variability context).
    pub fn predict_at(&self, rps: f64, cv: f64) -> Vec<Option<f64>> {
        let here_cv = self.cv_bucket_of(cv);
        let points = self.points();
        let fit = self.fit(&points);
        let here = (rps / self.config.aggregate_rps).round() as i64;
        // Express predictions as the paper's cost: allocation scaled over what was seen.
        let (lo, hi) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p.alloc.exp()), hi.max(p.alloc.exp()))
            });
        let load = fit.load_at(rps / self.config.aggregate_rps);
        let safe_ms = self.config.safety_margin * self.config.slo_ms;
        Action::all()
            .map(|a| {
                let theta = fit.theta[a.index()]?;
                let alloc = (theta + load).exp();
                let t = if hi > lo {
                    ((alloc - lo) / (hi - lo)).clamp(0.0, 1.99)
                } else {
                    0.0
                };
                let miss = points
                    .iter()
                    .filter(|p| {
                        p.cost >= 2.0
                            && p.bucket <= here
                            && p.cvb <= here_cv
                            && (p.action == a
                                || (p.n >= 2 && a.at_least(p.action))
                                || (p.fresh && a.at_least(p.action.tighter())))
                    })
                    .map(|p| p.cost)
                    .fold(None, |m: Option<f64>, c| Some(m.map_or(c, |m| m.max(c))));
                if let Some(c) = miss {
                    return Some(c.max(2.0 + t.max(0.0)));
                }
                let known_safe = points.iter().any(|p| {
                    p.cost < 2.0
                        && p.p99 <= safe_ms
                        && p.bucket >= here - 1
                        && p.cvb >= here_cv - 1
                        && p.action.at_least(a)
                });
                known_safe.then_some(t)
            })
            .collect()
    }

    /// The greedy choice at `rps`: the cheapest known-safe action (the initial action when no
    /// action is known safe at this load).
    pub fn best(&self, rps: f64) -> Action {
        self.best_at(rps, 0.0)
    }

    /// [`best`](Self::best) at a minute of RPS variability `cv`.
    pub fn best_at(&self, rps: f64, cv: f64) -> Action {
        let predicted = self.predict_at(rps, cv);
        let mut best: Option<(Action, f64)> = None;
        for (a, c) in Action::all().zip(predicted) {
            if let Some(c) = c.filter(|c| *c < 2.0) {
                // Ties go to the lower targets: cheaper is only worth it when it is cheaper.
                if best.is_none_or(|(_, b)| c < b - 1e-12) {
                    best = Some((a, c));
                }
            }
        }
        best.map(|(a, _)| a).unwrap_or(self.config.initial)
    }

    /// The configuration in force.
    pub fn config(&self) -> &BanditConfig {
        &self.config
    }
}

impl Tower for BanditTower {
    fn observe(&mut self, minute: &MinuteObservation) -> Option<Targets> {
        let minutes = self.recorder.record(minute);
        let (action, probability) = if minutes < self.config.drop_samples {
            (self.config.initial, 1.0)
        } else {
            let greedy = self.best_at(minute.rps, minute.rps_cv);
            explore_around(greedy, self.config.explore, &mut self.rng)
        };
        self.recorder.decided(action, probability);
        Some(action.targets())
    }

    fn memory(&self) -> &TowerMemory {
        &self.recorder.memory
    }

    fn into_memory(self: Box<Self>) -> TowerMemory {
        self.recorder.memory
    }

    fn name(&self) -> &'static str {
        "bandit"
    }
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// The sum of both targets' grid values: a proxy for how little CPU an action allocates.
#[cfg(test)]
fn looseness(a: Action) -> f64 {
    let t = a.targets();
    t.group1 + t.group2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TowerSample;

    const SLO: f64 = 100.0;
    const LOW: f64 = 100.0;
    const HIGH: f64 = 400.0;

    /// The synthetic world of the issue: targets above 0.1 break the SLO at high RPS, every
    /// target is fine at low RPS, and looser targets allocate less.
    fn world(rps: f64, a: Action) -> (f64, f64) {
        let t = a.targets();
        let p99 = if rps >= 300.0 && (t.group1 > 0.1 || t.group2 > 0.1) {
            180.0
        } else {
            40.0 + rps / 20.0
        };
        let allocation = rps / 20.0 * (1.5 - looseness(a));
        (p99, allocation)
    }

    fn memory_of_every_action() -> TowerMemory {
        let mut samples = Vec::new();
        for rps in [LOW, HIGH] {
            for a in Action::all() {
                let (p99_ms, allocation) = world(rps, a);
                samples.push(TowerSample {
                    rps_cv: 0.0,
                    rps,
                    action: a,
                    probability: 1.0,
                    p99_ms,
                    allocation,
                });
            }
        }
        TowerMemory { samples }
    }

    #[test]
    fn picks_safe_targets_at_high_rps_and_cheap_ones_at_low_rps() {
        let tower = BanditTower::new(BanditConfig::new(SLO, 20.0), memory_of_every_action(), 1);
        let high = tower.best(HIGH).targets();
        assert!(high.group1 <= 0.1 && high.group2 <= 0.1, "{high:?}");
        assert_eq!(high, Targets::new(0.1, 0.1), "the cheapest safe action");
        assert_eq!(tower.best(LOW).targets(), Targets::new(0.3, 0.3));
    }

    /// Every action at `rps` at two variabilities: smooth minutes (cv 0.01) where everything
    /// meets the SLO, jagged ones (cv 0.2) where the targets above 0.1 miss it.
    fn smooth_and_jagged() -> TowerMemory {
        let mut samples = Vec::new();
        for (cv, jagged) in [(0.01, false), (0.2, true)] {
            for a in Action::all() {
                let t = a.targets();
                let miss = jagged && (t.group1 > 0.1 || t.group2 > 0.1);
                samples.push(TowerSample {
                    rps_cv: cv,
                    rps: LOW,
                    action: a,
                    probability: 1.0,
                    p99_ms: if miss { 150.0 } else { 50.0 },
                    allocation: LOW / 20.0 * (1.5 - looseness(a)),
                });
            }
        }
        TowerMemory { samples }
    }

    #[test]
    fn variability_in_the_context_keeps_jagged_misses_to_jagged_minutes() {
        let config = BanditConfig::new(SLO, 20.0).with_variability(CV_BUCKET);
        let tower = BanditTower::new(config, smooth_and_jagged(), 1);
        assert_eq!(tower.best_at(LOW, 0.01).targets(), Targets::new(0.3, 0.3));
        assert_eq!(tower.best_at(LOW, 0.2).targets(), Targets::new(0.1, 0.1));
        // A minute more jagged than anything seen: nothing vouches for it.
        assert_eq!(tower.best_at(LOW, 0.5), config_initial());
        // Without the context the two kinds of minute share a group, whose medians hide the
        // misses: the RPS-only Tower picks the loosest targets, which miss on jagged minutes.
        let blind = BanditTower::new(BanditConfig::new(SLO, 20.0), smooth_and_jagged(), 1);
        assert_eq!(blind.best(LOW).targets(), Targets::new(0.3, 0.3));
        // And the context changes nothing for memories without variability.
        let config = BanditConfig::new(SLO, 20.0).with_variability(CV_BUCKET);
        let tower = BanditTower::new(config, memory_of_every_action(), 1);
        let plain = BanditTower::new(BanditConfig::new(SLO, 20.0), memory_of_every_action(), 1);
        for rps in [LOW, HIGH, 5000.0] {
            assert_eq!(tower.best_at(rps, 0.0), plain.best(rps));
        }
    }

    fn config_initial() -> Action {
        BanditConfig::new(SLO, 20.0).initial
    }

    #[test]
    fn the_coefficient_of_variation_of_a_minute() {
        assert_eq!(crate::rps_cv(&[]), 0.0);
        assert_eq!(crate::rps_cv(&[0.0, 0.0]), 0.0);
        assert_eq!(crate::rps_cv(&[5.0; 60]), 0.0);
        assert!((crate::rps_cv(&[1.0, 3.0]) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn untrusted_far_away_rps_falls_back_to_initial() {
        let tower = BanditTower::new(BanditConfig::new(SLO, 20.0), memory_of_every_action(), 1);
        assert_eq!(tower.best(5000.0), BanditConfig::new(SLO, 20.0).initial);
        // Nothing is known safe that far beyond what was seen; what missed lower down is unsafe.
        assert!(tower
            .predict(5000.0)
            .iter()
            .all(|c| c.is_none_or(|c| c >= 2.0)));
        assert!(tower.predict(5000.0)[Action::new(8, 8).index()].unwrap() >= 2.0);
    }

    #[test]
    fn misses_propagate_to_looser_actions_at_higher_rps() {
        // Only (0.15, 0.1) was tried at 400 RPS, and it missed; (0.3, 0.3) only at 100 RPS.
        let s = |rps, a, p99_ms, allocation| TowerSample {
            rps_cv: 0.0,
            rps,
            action: a,
            probability: 1.0,
            p99_ms,
            allocation,
        };
        let loose = Action::new(8, 8);
        let memory = TowerMemory {
            samples: vec![
                s(400.0, Action::new(5, 4), 300.0, 10.0),
                s(405.0, Action::new(5, 4), 280.0, 10.0),
                s(400.0, Action::new(8, 8), 50.0, 5.0),
                s(100.0, loose, 50.0, 2.0),
            ],
        };
        let tower = BanditTower::new(BanditConfig::new(SLO, 20.0), memory.clone(), 1);
        let p = tower.predict(420.0);
        assert!(p[loose.index()].unwrap() >= 2.0, "{:?}", p[loose.index()]);

        // A single unlucky minute marks only its own action.
        let mut one = memory;
        one.samples.remove(1);
        let tower = BanditTower::new(BanditConfig::new(SLO, 20.0), one, 1);
        let p = tower.predict(420.0);
        assert!(p[Action::new(5, 4).index()].unwrap() >= 2.0);
        assert!(p[loose.index()].unwrap() < 2.0, "{:?}", p[loose.index()]);
    }

    #[test]
    fn this_runs_misses_outweigh_the_warm_up() {
        // The warm-up saw every action meet the SLO at 400 RPS, twice each.
        let mut samples = Vec::new();
        for a in Action::all() {
            for _ in 0..2 {
                let (_, allocation) = world(LOW, a);
                samples.push(TowerSample {
                    rps_cv: 0.0,
                    rps: HIGH,
                    action: a,
                    probability: 1.0,
                    p99_ms: 40.0,
                    allocation,
                });
            }
        }
        let config = BanditConfig {
            drop_samples: 0,
            ..BanditConfig::new(SLO, 20.0)
        };
        let mut tower = BanditTower::new(config, TowerMemory { samples }, 1);
        let first = tower.best(HIGH);
        assert_eq!(first, Action::new(8, 8));
        // Now, at the same load, the loosest action misses once.
        tower.observe(&MinuteObservation {
            rps_cv: 0.0,
            rps: HIGH,
            p99_ms: 40.0,
            allocation: 5.0,
        });
        tower.recorder.decided(first, 1.0);
        tower.observe(&MinuteObservation {
            rps_cv: 0.0,
            rps: HIGH,
            p99_ms: 500.0,
            allocation: 5.0,
        });
        let next = tower.best(HIGH);
        let (i, j) = next.indices();
        assert!(
            i < 7 || j < 7,
            "one miss rules out the step below too: {:?}",
            next.targets()
        );
    }

    #[test]
    fn deterministic_per_seed_and_explores_neighbours() {
        let run = |seed| {
            // At LOW every action meets the SLO and the world answers as the memory says, so
            // what is learnt keeps the greedy choice where it is: the loosest targets.
            let config = BanditConfig {
                drop_samples: 0,
                ..BanditConfig::new(SLO, 20.0).with_explore(0.5)
            };
            let mut t = BanditTower::new(config, memory_of_every_action(), seed);
            let mut action = Action::new(8, 8);
            (0..40)
                .map(|_| {
                    let (p99_ms, allocation) = world(LOW, action);
                    let picked = t
                        .observe(&MinuteObservation {
                            rps_cv: 0.0,
                            rps: LOW,
                            p99_ms,
                            allocation,
                        })
                        .unwrap();
                    action = Action::from_targets(picked).unwrap();
                    picked
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let picks = run(7);
        let loosest = Targets::new(0.3, 0.3);
        let off_greedy = picks.iter().filter(|t| **t != loosest).count();
        assert!(
            off_greedy > 5 && off_greedy < 35,
            "explore 0.5 moved {off_greedy} of 40"
        );
        let neighbours = [Targets::new(0.25, 0.3), Targets::new(0.3, 0.25)];
        assert!(picks
            .iter()
            .all(|t| *t == loosest || neighbours.contains(t)));
    }

    #[test]
    fn start_up_minutes_are_held_at_the_initial_action() {
        let config = BanditConfig::new(SLO, 20.0).with_explore(0.5);
        let mut tower = BanditTower::new(config.clone(), memory_of_every_action(), 3);
        let minute = MinuteObservation {
            rps_cv: 0.0,
            rps: LOW,
            p99_ms: 50.0,
            allocation: 10.0,
        };
        let picks: Vec<Targets> = (0..3).map(|_| tower.observe(&minute).unwrap()).collect();
        let initial = config.initial.targets();
        assert_eq!(
            picks[..2],
            [initial, initial],
            "not learnt from, not gambled on"
        );
        assert_ne!(picks[2], initial, "the first judged minute is the Tower's");
    }

    #[test]
    fn learns_online_from_its_own_minutes() {
        // Start from nothing, explore against the synthetic world, then act greedily.
        let mut tower = BanditTower::new(
            BanditConfig {
                drop_samples: 0,
                ..BanditConfig::new(SLO, 20.0).with_explore(0.5)
            },
            TowerMemory::default(),
            11,
        );
        let mut explore = crate::ExploreTower::new(TowerMemory::default(), 0, 5);
        let mut action = Action::new(3, 3);
        // Warm-up: the explore tower covers the grid at both loads.
        for minute in 0..(4 * 81) {
            let rps = if (minute / 2) % 2 == 0 { LOW } else { HIGH };
            let (p99_ms, allocation) = world(rps, action);
            let t = explore
                .observe(&MinuteObservation {
                    rps_cv: 0.0,
                    rps,
                    p99_ms,
                    allocation,
                })
                .unwrap();
            action = Action::from_targets(t).unwrap();
        }
        tower.recorder.memory = Box::new(explore).into_memory();
        for minute in 0..200 {
            let rps = if (minute / 10) % 2 == 0 { LOW } else { HIGH };
            let (p99_ms, allocation) = world(rps, action);
            let t = tower
                .observe(&MinuteObservation {
                    rps_cv: 0.0,
                    rps,
                    p99_ms,
                    allocation,
                })
                .unwrap();
            action = Action::from_targets(t).unwrap();
        }
        let high = tower.best(HIGH).targets();
        assert!(high.group1 <= 0.1 && high.group2 <= 0.1, "{high:?}");
        let low = tower.best(LOW);
        assert!(looseness(low) >= 0.5, "{:?}", low.targets());
    }

    #[test]
    fn bad_config_is_refused() {
        assert!(BanditTower::try_new(
            BanditConfig::new(SLO, 20.0).with_explore(1.5),
            TowerMemory::default(),
            1
        )
        .is_err());
        assert!(
            BanditTower::try_new(BanditConfig::new(0.0, 20.0), TowerMemory::default(), 1).is_err()
        );
    }
}
