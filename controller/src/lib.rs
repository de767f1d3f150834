//! # controller: Autothrottle's decisions, with no IO and no clock
//!
//! Autothrottle manages the CPU of a microservice application on two levels:
//!
//! * a **scaler** per container (the [`Captain`], or a baseline: [`K8sCpu`], [`Const`]) is fed the
//!   container's cumulative cgroup counters every 100 ms ([`CpuSample`]) and answers with the CPU
//!   limit (in cores) to apply now;
//! * one **Tower** per application ([`BanditTower`], [`ExploreTower`], [`NoTower`]) is fed the last
//!   minute's RPS, P99 latency and allocation ([`MinuteObservation`]) and answers with the two
//!   throttle-ratio [`Targets`] the Captains should hold during the next minute. [`TowerKind`]
//!   names one and builds it for a run, and [`check_setup`] refuses a scaler, targets and
//!   Tower that do not go together, the same way for the simulator and the live coordinator.
//!
//! Both the simulator (`sim`) and the node agent (`live`) call exactly this code with the same
//! samples, which is why nothing here reads a file, a clock or a global.
//!
//! ```
//! use controller::{Captain, CpuSample, Scaler};
//!
//! // A container that burns 2 cores and is never throttled, starting at a 4-core limit.
//! let mut captain = Captain::new(0.1, 4.0);
//! let mut limit = 4.0;
//! for i in 0..=60 {
//!     let t = i as f64 * 0.1;
//!     let sample = CpuSample { t, usage: 2.0 * t, nr_periods: i, nr_throttled: 0, throttled_time: 0.0 };
//!     limit = captain.sample(&sample);
//! }
//! // No throttling and a steady usage: once the start-up zeros have left its 5-s usage
//! // history, the Captain scales down towards the usage.
//! assert!(limit < 4.0 && limit >= 2.0);
//! ```
//!
//! The Tower learns from every minute it sees; its memory ([`TowerMemory`]) is plain data that
//! outlives a run, so that the warm-up protocol (explore, then learn, then evaluate) can chain runs:
//!
//! ```
//! use controller::{BanditTower, BanditConfig, MinuteObservation, Tower, TowerMemory};
//!
//! let mut tower = BanditTower::new(BanditConfig::new(100.0, 20.0), TowerMemory::default(), 7);
//! let targets = tower.observe(&MinuteObservation { rps: 250.0, rps_cv: 0.0, p99_ms: 40.0, allocation: 12.0 });
//! assert!(targets.is_some());
//! ```

mod bandit;
mod captain;
mod error;
mod k8s;
mod original;
mod sample;
mod scaler;
mod setup;
mod tower;

pub use bandit::{BanditConfig, BanditTower, CV_BUCKET};
pub use captain::{Captain, SMOOTH_SAMPLES};
pub use error::ControllerError;
pub use k8s::K8sCpu;
pub use original::OriginalTower;
pub use sample::{CpuSample, MIN_LIMIT};
pub use scaler::{Const, Scaler, ScalerConfig, ScalerKind, USAGE_SAMPLES_MAX};
pub use setup::{check_setup, TowerKind, TOWER_REVISION};
pub use tower::rps_cv;
pub use tower::{
    Action, ExploreTower, MinuteObservation, NoTower, Targets, Tower, TowerMemory, TowerSample,
    TARGET_GRID,
};
