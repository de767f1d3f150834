//! The application-level Tower: what it observes, what it answers, what it remembers.
//!
//! Every minute the Tower is told the last minute's RPS, P99 latency and CPU allocation
//! ([`MinuteObservation`]) and answers with the two throttle-ratio targets ([`Targets`]) for the
//! next minute: `group1` for the CPU-heavy services, `group2` for the rest. An [`Action`] is one
//! of the 9 x 9 pairs of [`TARGET_GRID`]. Every minute it sees becomes a [`TowerSample`] in its
//! [`TowerMemory`], which outlives a run.

use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::ControllerError;

/// The throttle-ratio targets the Tower chooses from (per group).
pub const TARGET_GRID: [f64; 9] = [0.0, 0.02, 0.04, 0.06, 0.1, 0.15, 0.2, 0.25, 0.3];

/// The two throttle-ratio targets in force: `group1` for the CPU-heavy services, `group2` for
/// the others.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    pub group1: f64,
    pub group2: f64,
}

impl Targets {
    pub fn new(group1: f64, group2: f64) -> Self {
        Targets { group1, group2 }
    }

    /// The target of a service in `group` (1 or 2).
    pub fn for_group(&self, group: u8) -> f64 {
        if group == 1 {
            self.group1
        } else {
            self.group2
        }
    }
}

impl std::fmt::Display for Targets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.group1, self.group2)
    }
}

impl std::str::FromStr for Targets {
    type Err = String;
    /// `"0.1,0.06"` (group 1, group 2) or `"0.1"` (both groups).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |x: &str| -> Result<f64, String> {
            let v: f64 = x
                .trim()
                .parse()
                .map_err(|_| format!("'{x}' is not a number"))?;
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(format!("target {v} is outside 0..1"))
            }
        };
        let parts: Vec<&str> = s.split(',').collect();
        match parts.as_slice() {
            [one] => {
                let v = parse(one)?;
                Ok(Targets::new(v, v))
            }
            [a, b] => Ok(Targets::new(parse(a)?, parse(b)?)),
            _ => Err(format!(
                "'{s}' is not one target or two separated by a comma (e.g. 0.1,0.06)"
            )),
        }
    }
}

/// One of the 81 target pairs of the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Action(u8);

impl Action {
    /// How many actions there are.
    pub const COUNT: usize = TARGET_GRID.len() * TARGET_GRID.len();

    /// The action with grid indices `i` (group 1) and `j` (group 2).
    pub fn new(i: usize, j: usize) -> Self {
        assert!(i < TARGET_GRID.len() && j < TARGET_GRID.len());
        Action((i * TARGET_GRID.len() + j) as u8)
    }

    /// All actions in index order.
    pub fn all() -> impl Iterator<Item = Action> {
        (0..Self::COUNT as u8).map(Action)
    }

    /// The action index, 0..81.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// An action from its index; `None` past 80.
    pub fn from_index(index: usize) -> Option<Self> {
        (index < Self::COUNT).then_some(Action(index as u8))
    }

    /// Grid indices (group 1, group 2).
    pub fn indices(self) -> (usize, usize) {
        (
            self.0 as usize / TARGET_GRID.len(),
            self.0 as usize % TARGET_GRID.len(),
        )
    }

    pub fn targets(self) -> Targets {
        let (i, j) = self.indices();
        Targets::new(TARGET_GRID[i], TARGET_GRID[j])
    }

    /// The action whose targets are exactly these grid values, if any.
    pub fn from_targets(t: Targets) -> Option<Self> {
        let find = |v: f64| TARGET_GRID.iter().position(|g| (g - v).abs() < 1e-9);
        Some(Action::new(find(t.group1)?, find(t.group2)?))
    }

    /// The up-to-4 grid neighbours (one step in one group's target).
    pub fn neighbours(self) -> Vec<Action> {
        let (i, j) = self.indices();
        let n = TARGET_GRID.len() as isize;
        [(-1, 0), (1, 0), (0, -1), (0, 1)]
            .into_iter()
            .map(|(di, dj)| (i as isize + di, j as isize + dj))
            .filter(|&(a, b)| (0..n).contains(&a) && (0..n).contains(&b))
            .map(|(a, b)| Action::new(a as usize, b as usize))
            .collect()
    }

    /// One grid step tighter in both groups (clamped at the grid's edge).
    pub fn tighter(self) -> Action {
        let (i, j) = self.indices();
        Action::new(i.saturating_sub(1), j.saturating_sub(1))
    }

    /// True when both targets are at least this action's (so the allocation is at most as
    /// large and the latency at least as bad).
    pub fn at_least(self, other: Action) -> bool {
        let (i, j) = self.indices();
        let (a, b) = other.indices();
        i >= a && j >= b
    }
}

/// What the Tower is told at the end of each minute.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MinuteObservation {
    /// Requests per second over the minute.
    pub rps: f64,
    /// Coefficient of variation of the minute's per-second request counts ([`rps_cv`]): how
    /// jagged the load was at equal mean.
    #[serde(default)]
    pub rps_cv: f64,
    /// P99 end-to-end latency of the minute, in milliseconds.
    pub p99_ms: f64,
    /// Time-weighted mean of the summed CPU limits over the minute, in cores.
    pub allocation: f64,
}

/// One minute the Tower learnt from: the load, what it chose, what came of it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TowerSample {
    /// RPS of the minute the action was in force. (The original recorded the RPS of the minute
    /// before the decision; when load moves, that labels an outcome with a load it did not
    /// see, and a Tower deciding at a new load learns from mislabelled minutes.)
    pub rps: f64,
    pub action: Action,
    /// The probability with which the action was chosen.
    pub probability: f64,
    /// P99 of the minute the action was in force, in ms.
    pub p99_ms: f64,
    /// Allocation of the minute the action was in force, in cores.
    pub allocation: f64,
    /// The minute's [`MinuteObservation::rps_cv`], kept by Towers that use it (0 otherwise,
    /// and in older memories).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rps_cv: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// Coefficient of variation (population standard deviation over mean) of per-second request
/// counts; 0 for an empty or idle minute.
pub fn rps_cv(counts: &[f64]) -> f64 {
    let n = counts.len() as f64;
    let mean = counts.iter().sum::<f64>() / n.max(1.0);
    if mean <= 0.0 {
        return 0.0;
    }
    let var = counts.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / n;
    var.sqrt() / mean
}

/// Everything a Tower has learnt; kept across runs (the warm-up protocol chains runs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TowerMemory {
    pub samples: Vec<TowerSample>,
}

impl TowerMemory {
    /// The cost of every sample, normalised over all samples: allocation scaled to [0, 1] when
    /// the P99 met the SLO, else 2 + latency scaled to [0, 1] (every SLO miss costs more than any
    /// allocation).
    pub fn costs(&self, slo_ms: f64) -> Vec<f64> {
        let range = |f: fn(&TowerSample) -> f64| {
            self.samples
                .iter()
                .map(f)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                    (lo.min(x), hi.max(x))
                })
        };
        let scale = |x: f64, (lo, hi): (f64, f64)| {
            if hi > lo {
                (x - lo) / (hi - lo)
            } else {
                0.0
            }
        };
        let alloc = range(|s| s.allocation);
        let lat = range(|s| s.p99_ms);
        self.samples
            .iter()
            .map(|s| {
                if s.p99_ms <= slo_ms {
                    scale(s.allocation, alloc)
                } else {
                    2.0 + scale(s.p99_ms, lat)
                }
            })
            .collect()
    }

    /// How many samples each action has.
    pub fn counts(&self) -> [usize; Action::COUNT] {
        let mut counts = [0; Action::COUNT];
        for s in &self.samples {
            counts[s.action.index()] += 1;
        }
        counts
    }
}

/// An application-level target chooser.
pub trait Tower: Send {
    /// Called at the end of every minute; returns the targets for the next minute, or `None`
    /// to keep the current ones.
    fn observe(&mut self, minute: &MinuteObservation) -> Option<Targets>;
    /// What the Tower has learnt so far (including what it was given).
    fn memory(&self) -> &TowerMemory;
    /// Gives the memory back, for the next run.
    fn into_memory(self: Box<Self>) -> TowerMemory;
    /// A short name for records.
    fn name(&self) -> &'static str;
}

/// Targets stay as they were set: the Captains run with fixed targets.
#[derive(Debug, Default)]
pub struct NoTower {
    memory: TowerMemory,
}

impl Tower for NoTower {
    fn observe(&mut self, _: &MinuteObservation) -> Option<Targets> {
        None
    }
    fn memory(&self) -> &TowerMemory {
        &self.memory
    }
    fn into_memory(self: Box<Self>) -> TowerMemory {
        self.memory
    }
    fn name(&self) -> &'static str {
        "none"
    }
}

/// The bookkeeping every learning Tower shares: counting minutes, remembering what was chosen
/// in which context, and turning the next observation into a sample.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    pub memory: TowerMemory,
    /// How many samples came from earlier runs (the rest are this run's).
    pub inherited: usize,
    minutes: usize,
    drop_samples: usize,
    /// The pending decision: action, probability, and the RPS it was made at.
    pending: Option<(Action, f64, f64)>,
    /// Label samples with the RPS the decision was made at (the original's way) instead of
    /// the RPS the action served.
    at_decision: bool,
    /// Keep each minute's RPS variability in its sample.
    variability: bool,
}

impl Recorder {
    pub fn new(memory: TowerMemory, drop_samples: usize) -> Self {
        Recorder {
            inherited: memory.samples.len(),
            memory,
            minutes: 0,
            drop_samples,
            pending: None,
            at_decision: false,
            variability: false,
        }
    }

    /// Keeps each minute's [`MinuteObservation::rps_cv`] in its sample.
    pub fn with_variability(mut self) -> Self {
        self.variability = true;
        self
    }

    /// Labels samples as the original did: with the RPS of the minute the decision was made
    /// at (see [`TowerSample::rps`] for why this project does not).
    pub fn labelled_at_decision(mut self) -> Self {
        self.at_decision = true;
        self
    }

    /// Records the outcome of the pending decision; returns the minute number (1-based).
    pub fn record(&mut self, minute: &MinuteObservation) -> usize {
        self.minutes += 1;
        if let Some((action, probability, decided_rps)) = self.pending.take() {
            if self.minutes > self.drop_samples {
                self.memory.samples.push(TowerSample {
                    rps: if self.at_decision {
                        decided_rps
                    } else {
                        minute.rps
                    },
                    action,
                    probability,
                    p99_ms: minute.p99_ms,
                    allocation: minute.allocation,
                    rps_cv: if self.variability { minute.rps_cv } else { 0.0 },
                });
            }
        }
        self.minutes
    }

    pub fn decided(&mut self, action: Action, probability: f64) {
        self.pending = Some((action, probability, f64::NAN));
    }

    /// A decision made at a minute of `rps`.
    pub fn decided_at(&mut self, action: Action, probability: f64, rps: f64) {
        self.pending = Some((action, probability, rps));
    }
}

/// The learning Towers' exploration: with probability `explore` a random grid neighbour of
/// the greedy choice, else the choice itself; with the probability it was taken at.
pub(crate) fn explore_around(greedy: Action, explore: f64, rng: &mut Pcg64Mcg) -> (Action, f64) {
    if explore > 0.0 && rand::Rng::random::<f64>(rng) < explore {
        let neighbours = greedy.neighbours();
        let a = *neighbours.choose(rng).expect("every action has neighbours");
        (a, explore / neighbours.len() as f64)
    } else {
        (greedy, 1.0 - explore)
    }
}

pub(crate) fn check_probability(name: &str, p: f64) -> Result<(), ControllerError> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(ControllerError::BadTower(format!(
            "{name} must be within 0..1, got {p}"
        )))
    }
}

/// The warm-up Tower: every second minute it moves to one of the least-explored actions
/// (uniformly), so that a few runs cover the whole grid.
#[derive(Debug, Clone)]
pub struct ExploreTower {
    recorder: Recorder,
    rng: Pcg64Mcg,
    current: Option<Action>,
}

impl ExploreTower {
    /// `drop_samples`: how many minutes at the start of a run are not learnt from (the ramp).
    pub fn new(memory: TowerMemory, drop_samples: usize, seed: u64) -> Self {
        ExploreTower {
            recorder: Recorder::new(memory, drop_samples),
            rng: Pcg64Mcg::seed_from_u64(seed),
            current: None,
        }
    }

    /// The same, keeping each minute's RPS variability in its samples (for a warm-up that a
    /// Tower with the variability context learns from).
    pub fn with_variability(mut self) -> Self {
        self.recorder.variability = true;
        self
    }
}

impl Tower for ExploreTower {
    fn observe(&mut self, minute: &MinuteObservation) -> Option<Targets> {
        let n = self.recorder.record(minute);
        let (action, probability) = match self.current {
            Some(a) if n.is_multiple_of(2) => (a, 1.0),
            _ => {
                let mut counts = self.recorder.memory.counts();
                if let Some(a) = self.current {
                    counts[a.index()] += 1;
                }
                let least = *counts.iter().min().expect("81 actions");
                let candidates: Vec<Action> = Action::all()
                    .filter(|a| counts[a.index()] == least)
                    .collect();
                let a = *candidates.choose(&mut self.rng).expect("at least one");
                (a, 1.0 / candidates.len() as f64)
            }
        };
        self.current = Some(action);
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
        "explore"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(rps: f64, p99_ms: f64, allocation: f64) -> MinuteObservation {
        MinuteObservation {
            rps_cv: 0.0,
            rps,
            p99_ms,
            allocation,
        }
    }

    #[test]
    fn grid_and_actions() {
        assert_eq!(Action::COUNT, 81);
        let a = Action::new(4, 3);
        assert_eq!(a.targets(), Targets::new(0.1, 0.06));
        assert_eq!(Action::from_targets(Targets::new(0.1, 0.06)), Some(a));
        assert_eq!(Action::from_targets(Targets::new(0.11, 0.06)), None);
        assert_eq!(a.neighbours().len(), 4);
        assert_eq!(Action::new(0, 0).neighbours().len(), 2);
        assert_eq!(Action::new(8, 4).neighbours().len(), 3);
        assert!(Action::new(5, 5).at_least(Action::new(5, 2)));
        assert!(!Action::new(5, 1).at_least(Action::new(5, 2)));
        assert_eq!(Action::from_index(81), None);
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            "0.1,0.06".parse::<Targets>().unwrap(),
            Targets::new(0.1, 0.06)
        );
        assert_eq!("0.2".parse::<Targets>().unwrap(), Targets::new(0.2, 0.2));
        assert!("0.1,2"
            .parse::<Targets>()
            .unwrap_err()
            .contains("outside 0..1"));
        assert!("a".parse::<Targets>().unwrap_err().contains("not a number"));
        assert!("0.1,0.1,0.1".parse::<Targets>().is_err());
    }

    #[test]
    fn costs_normalise_allocation_and_penalise_slo_misses() {
        let s = |p99, alloc| TowerSample {
            rps_cv: 0.0,
            rps: 100.0,
            action: Action::new(0, 0),
            probability: 1.0,
            p99_ms: p99,
            allocation: alloc,
        };
        let m = TowerMemory {
            samples: vec![s(50.0, 10.0), s(60.0, 20.0), s(150.0, 15.0), s(250.0, 12.0)],
        };
        let c = m.costs(100.0);
        assert_eq!(c[0], 0.0);
        assert_eq!(c[1], 1.0);
        assert!((c[2] - (2.0 + 0.5)).abs() < 1e-12);
        assert_eq!(c[3], 3.0);
    }

    #[test]
    fn recorder_drops_ramp_minutes_and_records_the_load_served() {
        let mut r = Recorder::new(TowerMemory::default(), 2);
        r.record(&obs(10.0, 1.0, 1.0));
        r.decided(Action::new(1, 1), 1.0);
        r.record(&obs(20.0, 2.0, 2.0)); // minute 2: dropped
        r.decided(Action::new(2, 2), 0.5);
        r.record(&obs(30.0, 3.0, 3.0)); // minute 3: the action served 30 RPS
        assert_eq!(r.memory.samples.len(), 1);
        let s = r.memory.samples[0];
        assert_eq!(
            (s.rps, s.action, s.probability, s.p99_ms),
            (30.0, Action::new(2, 2), 0.5, 3.0)
        );
    }

    #[test]
    fn explore_covers_the_grid_evenly() {
        let mut t = ExploreTower::new(TowerMemory::default(), 0, 3);
        let mut last = None;
        for m in 0..(2 * 81 + 1) {
            let targets = t.observe(&obs(100.0, 10.0, 5.0)).unwrap();
            if m % 2 == 1 {
                assert_eq!(Some(targets), last, "holds every second minute");
            }
            last = Some(targets);
        }
        let counts = t.memory().counts();
        assert!(counts.iter().all(|&c| c == 2), "{counts:?}");
    }

    #[test]
    fn explore_is_deterministic_per_seed() {
        let run = |seed| {
            let mut t = ExploreTower::new(TowerMemory::default(), 0, seed);
            (0..20)
                .map(|_| t.observe(&obs(100.0, 10.0, 5.0)).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn no_tower_never_changes_targets() {
        let mut t = NoTower::default();
        assert_eq!(t.observe(&obs(1.0, 1.0, 1.0)), None);
    }
}
