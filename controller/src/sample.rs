use serde::{Deserialize, Serialize};

/// The smallest limit any scaler returns, in cores: the kernel's minimum quota is 1 ms per
/// 100 ms period.
pub const MIN_LIMIT: f64 = 0.01;

/// One reading of a container's cgroup CPU counters, all cumulative since the container started,
/// exactly as `cpu.stat` / `cpuacct.usage` report them (converted to seconds). The default is
/// a container that has just started: every counter zero at time 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuSample {
    /// When the sample was taken, in seconds (any origin; only differences matter).
    pub t: f64,
    /// CPU time used, in core-seconds.
    pub usage: f64,
    /// CFS periods in which the container had runnable work.
    pub nr_periods: u64,
    /// Periods in which the container exhausted its quota.
    pub nr_throttled: u64,
    /// Total time the container spent throttled, in seconds.
    pub throttled_time: f64,
}

/// A limit held between the kernel's minimum and a ceiling (the node's cores, say).
pub(crate) fn clamp_limit(limit: f64, ceiling: f64) -> f64 {
    limit.max(MIN_LIMIT).min(ceiling)
}

/// The delta between two samples, clamped so that a counter reset (container restart) reads as
/// "nothing happened" instead of a negative usage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Delta {
    pub dt: f64,
    pub usage: f64,
    pub throttled: u64,
}

impl Delta {
    pub(crate) fn between(prev: &CpuSample, now: &CpuSample) -> Option<Delta> {
        let dt = now.t - prev.t;
        if !(dt > 0.0 && dt.is_finite()) {
            return None;
        }
        Some(Delta {
            dt,
            usage: (now.usage - prev.usage).max(0.0),
            throttled: now.nr_throttled.saturating_sub(prev.nr_throttled),
        })
    }
}
