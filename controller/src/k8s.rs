//! The Kubernetes-style baselines: a vertical autoscaler driven by CPU utilisation.

use std::collections::VecDeque;

use crate::sample::{clamp_limit, CpuSample, MIN_LIMIT};
use crate::scaler::{check_k8s_target, Scaler};
use crate::ControllerError;

/// Slack for comparing sample times: as in the original, a period ends at the first sample at
/// least `period - 0.1 ms` after it began (sample clocks jitter on a real node).
const PERIOD_SLACK: f64 = 1e-4;
/// Slack for the window / period division (300 / 15 is 20 windows, not 19.999...).
const RATIO_EPS: f64 = 1e-9;

/// Every `period`, recommends `usage / target` (usage in cores averaged over the period) and
/// applies the maximum recommendation of the last `window`: the "K8s-CPU" (15 s / 300 s) and
/// "K8s-CPU-Fast" (1 s / 20 s) baselines of the paper.
#[derive(Debug, Clone)]
pub struct K8sCpu {
    target: f64,
    period: f64,
    keep: usize,
    limit: f64,
    recommendations: VecDeque<f64>,
    period_start: Option<CpuSample>,
    /// No limit above this (usage / a small target can ask for more cores than the node has).
    ceiling: f64,
}

impl K8sCpu {
    /// A scaler holding utilisation `target` (0 < target <= 1).
    pub fn new(
        target: f64,
        period_s: f64,
        window_s: f64,
        initial_limit: f64,
    ) -> Result<Self, ControllerError> {
        check_k8s_target(target)?;
        if !(period_s > 0.0 && period_s.is_finite() && window_s >= period_s) {
            return Err(ControllerError::BadWindow {
                period: period_s,
                window: window_s,
            });
        }
        Ok(K8sCpu {
            target,
            period: period_s,
            keep: ((window_s / period_s) + RATIO_EPS).floor().max(1.0) as usize,
            limit: initial_limit.max(MIN_LIMIT),
            recommendations: VecDeque::new(),
            period_start: None,
            ceiling: f64::INFINITY,
        })
    }

    /// The same scaler with its limit never above `ceiling` cores.
    pub fn with_ceiling(mut self, ceiling: f64) -> Self {
        self.ceiling = ceiling;
        self.limit = clamp_limit(self.limit, ceiling);
        self
    }
}

impl Scaler for K8sCpu {
    fn sample(&mut self, now: &CpuSample) -> f64 {
        let Some(start) = self.period_start else {
            self.period_start = Some(*now);
            return self.limit;
        };
        let elapsed = now.t - start.t;
        if elapsed + PERIOD_SLACK < self.period {
            return self.limit;
        }
        let usage = (now.usage - start.usage).max(0.0) / elapsed;
        if self.recommendations.len() == self.keep {
            self.recommendations.pop_front();
        }
        self.recommendations.push_back(usage / self.target);
        self.limit = clamp_limit(
            self.recommendations
                .iter()
                .copied()
                .fold(MIN_LIMIT, f64::max),
            self.ceiling,
        );
        self.period_start = Some(*now);
        self.limit
    }

    fn limit(&self) -> f64 {
        self.limit
    }

    fn target(&self) -> Option<f64> {
        Some(self.target)
    }

    fn set_target(&mut self, target: f64) -> Result<(), ControllerError> {
        check_k8s_target(target)?;
        self.target = target;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "k8s-cpu"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaler::test_support::Feed;

    fn run(k: &mut K8sCpu, feed: &mut Feed, cores: f64, samples: usize) -> Vec<f64> {
        (0..samples)
            .map(|_| k.sample(&feed.next(cores, false)))
            .collect()
    }

    #[test]
    fn holds_the_initial_limit_until_the_first_period_ends() {
        let mut k = K8sCpu::new(0.5, 1.0, 20.0, 32.0).unwrap();
        let mut feed = Feed::default();
        k.sample(&feed.start());
        let limits = run(&mut k, &mut feed, 2.0, 10);
        assert!(limits[..9].iter().all(|&l| l == 32.0));
        assert!(
            (limits[9] - 4.0).abs() < 1e-9,
            "usage 2 / target 0.5 = 4, got {}",
            limits[9]
        );
    }

    #[test]
    fn applies_the_window_maximum() {
        // Fast preset: 1 s period, 20 s window.
        let mut k = K8sCpu::new(0.5, 1.0, 20.0, 32.0).unwrap();
        let mut feed = Feed::default();
        k.sample(&feed.start());
        run(&mut k, &mut feed, 3.0, 10); // one period at 3 cores -> 6
        let limits = run(&mut k, &mut feed, 1.0, 190); // 19 periods at 1 core -> 2
        assert!(
            (limits.last().unwrap() - 6.0).abs() < 1e-9,
            "the peak is still in the window"
        );
        let limits = run(&mut k, &mut feed, 1.0, 10); // 20 more: the 3-core period leaves
        assert!(
            (limits.last().unwrap() - 2.0).abs() < 1e-9,
            "{:?}",
            limits.last()
        );
    }

    #[test]
    fn slow_preset_decides_every_fifteen_seconds() {
        let mut k = K8sCpu::new(0.8, 15.0, 300.0, 32.0).unwrap();
        let mut feed = Feed::default();
        k.sample(&feed.start());
        let limits = run(&mut k, &mut feed, 4.0, 150);
        assert!(limits[..149].iter().all(|&l| l == 32.0));
        assert!((limits[149] - 5.0).abs() < 1e-9);
    }

    #[test]
    fn floor_applies_to_idle_containers() {
        let mut k = K8sCpu::new(0.9, 1.0, 1.0, 32.0).unwrap();
        let mut feed = Feed::default();
        k.sample(&feed.start());
        let limits = run(&mut k, &mut feed, 0.0, 10);
        assert_eq!(*limits.last().unwrap(), MIN_LIMIT);
    }

    #[test]
    fn refuses_zero_target_and_bad_window() {
        assert!(K8sCpu::new(0.0, 1.0, 20.0, 1.0).is_err());
        assert!(K8sCpu::new(0.5, 0.0, 20.0, 1.0).is_err());
        assert!(K8sCpu::new(0.5, 30.0, 20.0, 1.0).is_err());
    }
}
