//! The paper's own Tower, ported, so that the project's [`BanditTower`](crate::BanditTower) can
//! be measured against it on the same runs (`--tower original`).
//!
//! The artifact ran Vowpal Wabbit as `--cb_explore 81 --epsilon 0 -l 0.5 --nn 3` with the RPS
//! as the only feature. Each minute it turned every sample into the paper's cost, took the
//! median cost per (action, RPS bucket), drew 10,000 of those medians at random into a fresh
//! model, and chose the action with the lowest predicted cost at the current RPS. This module
//! does the same with the same model:
//!
//! * **One small network per action.** VW's `--cb` reduces to cost-sensitive one-against-all
//!   regression, with every action's regressor in its own slice of the weights, and `--nn 3`
//!   makes each regressor a network with three `tanh` hidden units (pre-activations clipped to
//!   [-3, 3], as VW clips them) and a linear output with a bias. The input is the RPS (scaled
//!   by the largest seen, which VW's normalised updates amount to) and a constant.
//! * **Doubly-robust labels.** VW's default `cb_type` is `dr`: the logged action is trained
//!   towards `prediction + (cost - prediction) / probability`, the others towards their own
//!   prediction (no change). A median of several minutes is not one logged draw, so it is
//!   labelled with probability 1 and each action learns its medians.
//! * **Learning** as VW's default: squared loss, per-weight adaptive steps (AdaGrad) at
//!   rate 0.5, one pass over the draws; the hidden units learn by backpropagation (VW steps each
//!   hidden unit towards `h - 0.5 * w * gradient * (1 - tanh^2)`). Weights start at zero except
//!   what VW sets at random to leave the saddle point (hidden biases, output weights).
//! * **Greedy** (`--epsilon 0`): the lowest predicted cost, ties to the first action. With
//!   `explore > 0` the warm-up's neighbour exploration of the project's protocol applies.
//! * **Samples are labelled with the RPS of the minute the decision was made at** (the minute
//!   before the action served), as the artifact did.
//!
//! What is not VW's to the bit: its hashing of features into a shared weight table
//! (collisions), the exact arithmetic of its normalised, importance-invariant updates, and its
//! random number generator. An action never tried predicts what its untrained network
//! predicts (near zero: the cheapest cost), so the original tries untried actions greedily;
//! that is the learner's behaviour, kept.

use std::collections::BTreeMap;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

use crate::tower::{explore_around, Recorder};
use crate::{
    Action, BanditConfig, ControllerError, MinuteObservation, Targets, Tower, TowerMemory,
};

/// Draws from the medians per model, as the artifact made.
const DRAWS: usize = 10_000;
/// Hidden units (`--nn 3`).
const HIDDEN: usize = 3;
/// Learning rate (`-l 0.5`).
const RATE: f64 = 0.5;
/// VW clips a hidden unit's pre-activation to this range.
const CLIP: f64 = 3.0;

/// One action's network: `y = v . tanh(clip(W x + b)) + c` on `x = (rps / max rps)`.
#[derive(Debug, Clone)]
struct Net {
    /// Per hidden unit: input weight, bias.
    w: [[f64; 2]; HIDDEN],
    /// Output weights, then the output bias.
    v: [f64; HIDDEN + 1],
    /// AdaGrad's sums of squared gradients, same layout.
    gw: [[f64; 2]; HIDDEN],
    gv: [f64; HIDDEN + 1],
}

impl Net {
    fn new(rng: &mut Pcg64Mcg) -> Self {
        // VW starts at zero and, to leave the saddle point, sets each hidden bias and output
        // weight from a uniform draw in [-0.5, 0.5) (the output weights divided by sqrt(k)).
        let mut w = [[0.0; 2]; HIDDEN];
        let mut v = [0.0; HIDDEN + 1];
        for i in 0..HIDDEN {
            w[i][1] = rng.random::<f64>() - 0.5;
            v[i] = (rng.random::<f64>() - 0.5) / (HIDDEN as f64).sqrt();
        }
        Net {
            w,
            v,
            gw: [[0.0; 2]; HIDDEN],
            gv: [0.0; HIDDEN + 1],
        }
    }

    fn hidden(&self, x: f64) -> [f64; HIDDEN] {
        let mut h = [0.0; HIDDEN];
        for (i, hi) in h.iter_mut().enumerate() {
            *hi = (self.w[i][0] * x + self.w[i][1]).clamp(-CLIP, CLIP).tanh();
        }
        h
    }

    fn predict(&self, x: f64) -> f64 {
        let h = self.hidden(x);
        h.iter().zip(&self.v).map(|(h, v)| h * v).sum::<f64>() + self.v[HIDDEN]
    }

    /// One squared-loss step towards `label`.
    fn learn(&mut self, x: f64, label: f64) {
        let h = self.hidden(x);
        let y = h.iter().zip(&self.v).map(|(h, v)| h * v).sum::<f64>() + self.v[HIDDEN];
        let g = 2.0 * (y - label);
        if g == 0.0 {
            return;
        }
        let step = |w: &mut f64, acc: &mut f64, grad: f64| {
            *acc += grad * grad;
            if *acc > 0.0 {
                *w -= RATE * grad / acc.sqrt();
            }
        };
        for (i, hi) in h.iter().enumerate() {
            // Backpropagated before the output weight moves, as VW orders it.
            let back = self.v[i] * g * (1.0 - hi * hi);
            step(&mut self.v[i], &mut self.gv[i], g * hi);
            step(&mut self.w[i][0], &mut self.gw[i][0], back * x);
            step(&mut self.w[i][1], &mut self.gw[i][1], back);
        }
        step(&mut self.v[HIDDEN], &mut self.gv[HIDDEN], g);
    }
}

/// The artifact's Tower: a VW-style contextual bandit (see the module documentation).
#[derive(Debug, Clone)]
pub struct OriginalTower {
    config: BanditConfig,
    recorder: Recorder,
    rng: Pcg64Mcg,
    seed: u64,
    minute: u64,
}

impl OriginalTower {
    /// A Tower that starts from `memory` and draws with `seed`; refuses a bad configuration.
    pub fn try_new(
        config: BanditConfig,
        memory: TowerMemory,
        seed: u64,
    ) -> Result<Self, ControllerError> {
        config.validate()?;
        Ok(OriginalTower {
            recorder: Recorder::new(memory, config.drop_samples).labelled_at_decision(),
            config,
            rng: Pcg64Mcg::seed_from_u64(seed),
            seed,
            minute: 0,
        })
    }

    /// The (action, RPS, median cost) points the model learns from.
    fn points(&self) -> Vec<(Action, f64, f64)> {
        let memory = &self.recorder.memory;
        let costs = memory.costs(self.config.slo_ms);
        let mut groups: BTreeMap<(Action, i64), Vec<f64>> = BTreeMap::new();
        for (s, c) in memory.samples.iter().zip(costs) {
            let bucket = (s.rps / self.config.aggregate_rps).round() as i64;
            groups.entry((s.action, bucket)).or_default().push(c);
        }
        groups
            .into_iter()
            .map(|((a, b), mut c)| {
                c.sort_by(f64::total_cmp);
                let n = c.len();
                let median = if n % 2 == 1 {
                    c[n / 2]
                } else {
                    (c[n / 2 - 1] + c[n / 2]) / 2.0
                };
                (a, b as f64 * self.config.aggregate_rps, median)
            })
            .collect()
    }

    /// Predicted cost of every action at `rps` from a model freshly trained on 10,000
    /// draws of the medians (drawn with `seed`).
    pub fn predict(&self, rps: f64, seed: u64) -> Vec<f64> {
        let points = self.points();
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let mut nets: Vec<Net> = (0..Action::COUNT).map(|_| Net::new(&mut rng)).collect();
        let scale = points
            .iter()
            .map(|p| p.1.abs())
            .fold(rps.abs(), f64::max)
            .max(1.0);
        if !points.is_empty() {
            for _ in 0..DRAWS {
                let (a, x, cost) = *points.choose(&mut rng).expect("not empty");
                nets[a.index()].learn(x / scale, cost);
            }
        }
        nets.iter().map(|n| n.predict(rps / scale)).collect()
    }

    /// The greedy choice at `rps`.
    pub fn best(&self, rps: f64, seed: u64) -> Action {
        let predicted = self.predict(rps, seed);
        let mut best = 0;
        for (i, c) in predicted.iter().enumerate() {
            if *c < predicted[best] {
                best = i;
            }
        }
        Action::from_index(best).expect("an index of the grid")
    }
}

impl Tower for OriginalTower {
    fn observe(&mut self, minute: &MinuteObservation) -> Option<Targets> {
        self.recorder.record(minute);
        self.minute += 1;
        let seed = self.seed ^ self.minute.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let greedy = self.best(minute.rps, seed);
        let (action, probability) = explore_around(greedy, self.config.explore, &mut self.rng);
        self.recorder.decided_at(action, probability, minute.rps);
        Some(action.targets())
    }

    fn memory(&self) -> &TowerMemory {
        &self.recorder.memory
    }

    fn into_memory(self: Box<Self>) -> TowerMemory {
        self.recorder.memory
    }

    fn name(&self) -> &'static str {
        "original"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TowerSample;

    #[test]
    fn a_network_fits_a_cost_curve() {
        let mut rng = Pcg64Mcg::seed_from_u64(7);
        let mut net = Net::new(&mut rng);
        let f = |x: f64| 0.2 + 0.6 * x;
        for k in 0..DRAWS {
            let x = (k % 10) as f64 / 10.0;
            net.learn(x, f(x));
        }
        for x in [0.0, 0.35, 0.9] {
            assert!(
                (net.predict(x) - f(x)).abs() < 0.05,
                "at {x}: {} against {}",
                net.predict(x),
                f(x)
            );
        }
    }

    fn tower(samples: Vec<TowerSample>) -> OriginalTower {
        OriginalTower::try_new(BanditConfig::new(100.0, 100.0), TowerMemory { samples }, 1).unwrap()
    }

    #[test]
    fn picks_the_cheap_action_that_met_the_slo_and_avoids_misses() {
        // Every action seen at low and high load: the loosest misses the SLO at high load,
        // a middle one is safe everywhere, the tightest is safe and expensive.
        let (tight, middle, loose) = (Action::new(0, 0), Action::new(4, 4), Action::new(8, 8));
        let mut samples = Vec::new();
        for rep in 0..3 {
            let wiggle = rep as f64 * 0.1;
            for (rps, a, p99, alloc) in [
                (100.0, tight, 40.0, 30.0),
                (100.0, middle, 50.0, 20.0),
                (100.0, loose, 60.0, 10.0),
                (1000.0, tight, 50.0, 60.0),
                (1000.0, middle, 80.0, 40.0),
                (1000.0, loose, 400.0, 25.0),
            ] {
                samples.push(TowerSample {
                    rps_cv: 0.0,
                    rps,
                    action: a,
                    probability: 1.0,
                    p99_ms: p99,
                    allocation: alloc + wiggle,
                });
            }
        }
        let mut t = tower(samples);
        // Untried actions predict near zero (the cheapest cost): the original tries them.
        // Restricted to the three it knows, it must rank them by cost at each load.
        let at = |t: &OriginalTower, rps: f64| {
            let p = t.predict(rps, 3);
            (p[tight.index()], p[middle.index()], p[loose.index()])
        };
        let (ct, cm, cl) = at(&t, 1000.0);
        assert!(
            cl > 2.0 && cm < ct,
            "high load: tight {ct:.2} middle {cm:.2} loose {cl:.2}"
        );
        let (ct, cm, cl) = at(&t, 100.0);
        assert!(
            cl < cm && cm < ct,
            "low load: tight {ct:.2} middle {cm:.2} loose {cl:.2}"
        );
        // Same memory, same seed: the same choice.
        let a = t.observe(&MinuteObservation {
            rps_cv: 0.0,
            rps: 1000.0,
            p99_ms: 50.0,
            allocation: 40.0,
        });
        let mut u = tower(t.memory().samples.clone());
        u.minute = 0;
        assert_eq!(
            a,
            u.observe(&MinuteObservation {
                rps_cv: 0.0,
                rps: 1000.0,
                p99_ms: 50.0,
                allocation: 40.0
            })
        );
    }

    #[test]
    fn samples_carry_the_rps_the_decision_was_made_at() {
        let mut t = tower(Vec::new());
        let obs = |rps| MinuteObservation {
            rps_cv: 0.0,
            rps,
            p99_ms: 10.0,
            allocation: 5.0,
        };
        for rps in [100.0, 200.0, 300.0, 400.0, 500.0] {
            t.observe(&obs(rps));
        }
        // Minutes 1-3 are not learnt from (drop_samples 3); the decision made at minute 3
        // (300 RPS) served minute 4 (400 RPS), the one made at 400 served minute 5.
        let rps: Vec<f64> = t.memory().samples.iter().map(|s| s.rps).collect();
        assert_eq!(rps, vec![300.0, 400.0]);
    }
}
