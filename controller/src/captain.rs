//! The Captain: one per container, keeps the CFS throttle ratio near a target.
//!
//! Semantics are those of the original Autothrottle evaluation (design.md section 3); the unit
//! tests below pin every rule on hand-made sample sequences.

use std::collections::VecDeque;

use crate::sample::{clamp_limit, CpuSample, Delta, MIN_LIMIT};
use crate::scaler::{check_target, Scaler};
use crate::ControllerError;

/// Samples per decision: the Captain samples every 100 ms and decides every second, so the
/// throttle ratio is "throttled periods out of 10".
const SAMPLES_PER_PERIOD: usize = 10;
/// Seconds between decisions, on the samples' own clock.
const DECISION_PERIOD: f64 = 1.0;
/// Slack when comparing sample times: the original decides at the first sample at least
/// `1 s - 0.1 ms` after the last decision, so a sample that arrives a little early still counts.
const DECISION_SLACK: f64 = 1e-4;
/// How many per-sample usage rates the scale-down estimate looks at (5 s).
const USAGE_HISTORY: usize = 50;
/// The margin (in standard deviations of usage) a fresh Captain keeps above peak usage.
const INITIAL_MARGIN: f64 = 3.0;
/// Samples a [`Captain::smoothed`] Captain averages into each usage-history entry: one
/// second, the decision period.
pub const SMOOTH_SAMPLES: usize = 10;

/// Throttle-ratio controller for one container.
///
/// Every 100 ms it records how many CFS periods were throttled and how many cores were used;
/// every second it scales the limit up when the throttle ratio is over three times the target,
/// or down towards `max(usage) + margin * stdev(usage)` when that is at most 90% of the limit.
/// A scale-down that immediately causes heavy throttling is rolled back at the next sample, and
/// the margin grows by how badly the target was missed, so that the Captain learns how much
/// headroom this container needs.
///
/// Start-up is the original's too: both histories start zero-filled (so the first seconds'
/// standard deviation includes those zeros and the first scale-downs are cautious), and a
/// decision falls on the first sample at least a second after the previous one, on the sample
/// clock, whatever number of samples that took.
///
/// Beyond the paper, [`smoothed`](Self::smoothed) makes each usage-history entry the mean of
/// the last second's samples instead of one 100-ms sample. A container whose bursts (a Go
/// collection on 32 threads, an inference) spend most of a period's quota shows a sample near
/// its limit every few seconds, and the original's scale-down estimate, the largest sample,
/// then never falls to 90% of the limit: any limit that carries the burst is a fixed point,
/// whatever the target (docs/RESULTS.md, "Why the Captains do not go lower"). Averaged over a
/// second, the burst weighs what it costs, and the throttle ratio decides as it should.
#[derive(Debug, Clone)]
pub struct Captain {
    target: f64,
    limit: f64,
    last_limit: f64,
    margin: f64,
    /// Last [`SAMPLES_PER_PERIOD`] throttled-period deltas; zero-filled after every decision.
    throttled: VecDeque<f64>,
    /// Last [`USAGE_HISTORY`] usage rates (cores), zero-filled at start.
    usage: VecDeque<f64>,
    /// The last per-sample usage rates that each usage-history entry averages, zero-filled at
    /// start; empty for the original, whose entries are single samples.
    recent: VecDeque<f64>,
    last_was_scale_down: bool,
    last_decision_t: f64,
    prev: Option<CpuSample>,
    /// No limit above this (a node has only so many cores; without it constant throttling
    /// grows the limit without bound).
    ceiling: f64,
}

impl Captain {
    /// A Captain holding `target` (throttle ratio, 0..=1), starting at `initial_limit` cores
    /// (`f64::INFINITY` for "no limit").
    pub fn new(target: f64, initial_limit: f64) -> Self {
        Captain {
            target,
            limit: initial_limit.max(MIN_LIMIT),
            last_limit: initial_limit.max(MIN_LIMIT),
            margin: INITIAL_MARGIN,
            throttled: zeros(SAMPLES_PER_PERIOD),
            usage: zeros(USAGE_HISTORY),
            recent: VecDeque::new(),
            last_was_scale_down: false,
            last_decision_t: f64::NAN,
            prev: None,
            ceiling: f64::INFINITY,
        }
    }

    /// The same Captain with its limit never above `ceiling` cores.
    pub fn with_ceiling(mut self, ceiling: f64) -> Self {
        self.ceiling = ceiling;
        self.limit = clamp_limit(self.limit, ceiling);
        self.last_limit = clamp_limit(self.last_limit, ceiling);
        self
    }

    /// The same Captain with each usage-history entry the mean of the last `samples` samples
    /// (zero-filled at start like the histories); 1 is the original.
    pub fn with_usage_samples(mut self, samples: usize) -> Self {
        self.recent = if samples > 1 {
            zeros(samples)
        } else {
            VecDeque::new()
        };
        self
    }

    /// The same Captain sizing its scale-downs from one-second means of usage
    /// ([`SMOOTH_SAMPLES`] samples each).
    pub fn smoothed(self) -> Self {
        self.with_usage_samples(SMOOTH_SAMPLES)
    }

    /// The current safety margin, in standard deviations of usage.
    pub fn margin(&self) -> f64 {
        self.margin
    }

    fn throttle_ratio(&self) -> f64 {
        self.throttled.iter().sum::<f64>() / SAMPLES_PER_PERIOD as f64
    }

    fn decide(&mut self) {
        self.last_limit = self.limit;
        let ratio = self.throttle_ratio();
        self.margin = (self.margin + ratio - self.target).max(0.0);
        self.last_was_scale_down = false;
        if ratio > 3.0 * self.target {
            self.limit *= 1.0 + (ratio - 3.0 * self.target);
        } else {
            let (max, sd) = max_and_stdev(&self.usage);
            let wanted = max + sd * self.margin;
            if wanted <= 0.9 * self.limit {
                // An unlimited container cannot be halved; it goes straight to the estimate.
                self.limit = if self.limit.is_finite() {
                    (0.5 * self.limit).max(wanted)
                } else {
                    wanted
                };
                self.last_was_scale_down = true;
            }
        }
        self.throttled = zeros(SAMPLES_PER_PERIOD);
        self.limit = clamp_limit(self.limit, self.ceiling);
    }
}

impl Scaler for Captain {
    fn sample(&mut self, now: &CpuSample) -> f64 {
        let Some(prev) = self.prev else {
            self.prev = Some(*now);
            self.last_decision_t = now.t;
            return self.limit;
        };
        // A sample that does not move the clock forward carries no rate; the original would
        // divide by zero on it.
        let Some(d) = Delta::between(&prev, now) else {
            return self.limit;
        };
        self.prev = Some(*now);
        self.throttled.pop_front();
        self.throttled.push_back(d.throttled as f64);
        let rate = d.usage / d.dt;
        let entry = if self.recent.is_empty() {
            rate
        } else {
            self.recent.pop_front();
            self.recent.push_back(rate);
            self.recent.iter().sum::<f64>() / self.recent.len() as f64
        };
        self.usage.pop_front();
        self.usage.push_back(entry);

        let ratio = self.throttle_ratio();
        if self.last_was_scale_down && ratio > 3.0 * self.target {
            // The last scale-down hurt: undo it with interest and remember to keep more headroom.
            self.limit = 2.0 * self.last_limit - self.limit;
            self.margin += ratio - self.target;
            self.throttled = zeros(SAMPLES_PER_PERIOD);
            self.last_was_scale_down = false;
        }
        if now.t >= self.last_decision_t + DECISION_PERIOD - DECISION_SLACK {
            self.last_decision_t = now.t;
            self.decide();
        }
        self.limit = clamp_limit(self.limit, self.ceiling);
        self.limit
    }

    fn limit(&self) -> f64 {
        self.limit
    }

    fn target(&self) -> Option<f64> {
        Some(self.target)
    }

    fn set_target(&mut self, target: f64) -> Result<(), ControllerError> {
        check_target(target, 0.0, 1.0)?;
        self.target = target;
        Ok(())
    }

    fn name(&self) -> &'static str {
        if self.recent.is_empty() {
            "captain"
        } else {
            "captain-smooth"
        }
    }
}

fn zeros(n: usize) -> VecDeque<f64> {
    VecDeque::from(vec![0.0; n])
}

/// Maximum and sample standard deviation (0 for fewer than two values).
fn max_and_stdev(xs: &VecDeque<f64>) -> (f64, f64) {
    let n = xs.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if n < 2 {
        return (max, 0.0);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (max, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaler::test_support::Feed;

    /// A second of usage at 1 core with one 100-ms burst of 3.8 cores: the demand each sample
    /// brings, served up to the limit (throttled above it). Returns the limit at the end and
    /// the share of the last 20 s's samples that were throttled.
    fn bursty_minute(mut c: Captain) -> (f64, f64) {
        let mut feed = Feed::default();
        c.sample(&feed.start());
        let (mut throttled, mut counted) = (0, 0);
        for i in 0..600 {
            let demand = if i % 10 == 9 { 3.8 } else { 1.0 };
            let limit = c.limit();
            let hit = demand > limit;
            c.sample(&feed.next(demand.min(limit), hit));
            if i >= 400 {
                counted += 1;
                throttled += usize::from(hit);
            }
        }
        (c.limit(), throttled as f64 / counted as f64)
    }

    #[test]
    fn a_burst_near_the_limit_pins_the_original_but_not_the_smoothed_captain() {
        // The original's estimate is the largest sample, the burst: within 90% of a 4-core
        // limit, so it never scales down and never throttles, far below its target.
        let (limit, ratio) = bursty_minute(Captain::new(0.1, 4.0));
        assert_eq!(limit, 4.0);
        assert_eq!(ratio, 0.0);
        // One-second means weigh the burst at what it costs (1.28 cores a second): the limit
        // comes down until the bursts are throttled, and no further than the steady 1 core.
        let (limit, ratio) = bursty_minute(Captain::new(0.1, 4.0).smoothed());
        assert!((1.0..2.0).contains(&limit), "limit {limit}");
        assert!(ratio > 0.0 && ratio <= 0.3, "throttled {ratio}");
        // Averaging one sample is the original.
        assert_eq!(
            bursty_minute(Captain::new(0.1, 4.0).with_usage_samples(1)),
            bursty_minute(Captain::new(0.1, 4.0))
        );
    }

    #[test]
    fn first_sample_only_sets_the_baseline() {
        let mut c = Captain::new(0.1, 8.0);
        let mut feed = Feed::default();
        assert_eq!(c.sample(&feed.next(5.0, false)), 8.0);
    }

    #[test]
    fn scales_down_to_max_usage_plus_margin_times_stdev() {
        let mut c = Captain::new(0.1, 10.0);
        let mut feed = Feed::default();
        c.sample(&feed.start());
        // Usage alternates 1 and 3 cores for a second; the other 40 of the 50 remembered rates
        // are the start-up zeros: mean 0.4, sum of squares 50, so the sample variance is
        // (50 - 50 * 0.4^2) / 49 = 42/49.
        let mut limit = 0.0;
        for i in 0..10 {
            limit = c.sample(&feed.next(if i % 2 == 0 { 1.0 } else { 3.0 }, false));
        }
        let sd = (42.0f64 / 49.0).sqrt();
        // Margin after the decision: 3 + 0 - 0.1 = 2.9.
        let expected = 3.0 + sd * 2.9;
        assert!((limit - expected).abs() < 1e-9, "{limit} vs {expected}");
        assert!((c.margin() - 2.9).abs() < 1e-12);
    }

    #[test]
    fn start_up_history_is_zero_filled_as_in_the_original() {
        // Hand-computed on the original's rules. Target 0.3, 16 cores, a steady 4 cores.
        let mut c = Captain::new(0.3, 16.0);
        let mut feed = Feed::default();
        c.sample(&feed.start());
        let mut limit = 0.0;
        for _ in 0..10 {
            limit = c.sample(&feed.next(4.0, false));
        }
        // t = 1 s: rates [0 x40, 4 x10], mean 0.8, variance (160 - 32) / 49; margin 2.7.
        // An empty-start history would have had stdev 0 and gone to max(8, 4) = 8.
        let first = 4.0 + (128.0f64 / 49.0).sqrt() * 2.7;
        assert!((limit - first).abs() < 1e-9, "{limit} vs {first}");
        for _ in 0..10 {
            limit = c.sample(&feed.next(4.0, false));
        }
        // t = 2 s: [0 x30, 4 x20], variance (320 - 128) / 49, margin 2.4: the estimate 8.75 is
        // above 90% of the limit, so the limit holds.
        let second = 4.0 + (192.0f64 / 49.0).sqrt() * 2.4;
        assert!(second > 0.9 * first);
        assert!((limit - first).abs() < 1e-9, "{limit} vs {first}");
        // Once the zeros have left the history (5 s), a steady load has no spread at all.
        for _ in 0..40 {
            limit = c.sample(&feed.next(4.0, false));
        }
        assert_eq!(limit, 4.0);
    }

    #[test]
    fn decides_on_the_sample_clock_not_by_counting_samples() {
        // A late sample (one 200 ms step): the decision is at the first sample at least 1 s
        // after the start, the 9th, not the 10th.
        let mut c = Captain::new(0.1, 32.0);
        let mut s = CpuSample::default();
        c.sample(&s);
        let mut step = |c: &mut Captain, dt: f64| {
            s.t += dt;
            s.usage += dt * 0.5;
            c.sample(&s)
        };
        assert_eq!(step(&mut c, 0.2), 32.0);
        for _ in 0..7 {
            assert_eq!(step(&mut c, 0.1), 32.0);
        }
        // t = 1.0 - 0.05 ms: within the original's 0.1 ms slack, so this one decides.
        assert_eq!(step(&mut c, 0.09995), 16.0);
        // Samples twice as fast: the next decision takes 20 of them.
        for _ in 0..19 {
            assert_eq!(step(&mut c, 0.05), 16.0);
        }
        assert_eq!(step(&mut c, 0.05), 8.0);
    }

    #[test]
    fn scale_down_is_at_most_half_per_decision() {
        let mut c = Captain::new(0.1, 32.0);
        let mut feed = Feed::default();
        c.sample(&feed.start());
        let mut limit = 0.0;
        for _ in 0..10 {
            limit = c.sample(&feed.next(0.5, false));
        }
        assert_eq!(limit, 16.0);
        for _ in 0..10 {
            limit = c.sample(&feed.next(0.5, false));
        }
        assert_eq!(limit, 8.0);
    }

    #[test]
    fn no_scale_down_when_estimate_is_above_ninety_percent() {
        let mut c = Captain::new(0.1, 2.0);
        let mut feed = Feed::default();
        c.sample(&feed.start());
        let mut limit = 0.0;
        for _ in 0..10 {
            limit = c.sample(&feed.next(1.85, false));
        }
        assert_eq!(limit, 2.0);
    }

    #[test]
    fn scales_up_by_excess_throttle_ratio() {
        let mut c = Captain::new(0.1, 2.0);
        let mut feed = Feed::default();
        c.sample(&feed.start());
        let mut limit = 0.0;
        // 6 of 10 periods throttled: ratio 0.6 > 0.3, so limit *= 1 + 0.3.
        for i in 0..10 {
            limit = c.sample(&feed.next(2.0, i < 6));
        }
        assert!((limit - 2.6).abs() < 1e-9, "{limit}");
    }

    #[test]
    fn throttled_periods_needed_to_scale_up_per_target() {
        // design.md: with 10 samples, targets 0..0.3 need 1,1,2,2,4,5,7,8,9 throttled periods.
        let needed = [1, 1, 2, 2, 4, 5, 7, 8, 9];
        for (target, need) in crate::TARGET_GRID.iter().zip(needed) {
            for k in 0..=10 {
                let mut c = Captain::new(*target, 4.0);
                let mut feed = Feed::default();
                c.sample(&feed.start());
                let mut limit = 0.0;
                // Low usage: a decision that does not scale up scales down, so the two are
                // told apart even where the scale-up factor rounds to 1 (ratio 0.9, target 0.3).
                for i in 0..10 {
                    limit = c.sample(&feed.next(1.0, i < k));
                }
                assert_eq!(
                    limit >= 4.0,
                    k >= need,
                    "target {target}, {k} throttled periods"
                );
            }
        }
    }

    #[test]
    fn rolls_back_a_scale_down_that_throttles() {
        let mut c = Captain::new(0.1, 32.0);
        let mut feed = Feed::default();
        c.sample(&feed.start());
        for _ in 0..10 {
            c.sample(&feed.next(1.0, false));
        }
        assert_eq!(c.limit(), 16.0);
        let margin = c.margin();
        // Four throttled samples in a row: the ratio (0.4) passes 3 * 0.1 at the fourth.
        for _ in 0..3 {
            assert_eq!(c.sample(&feed.next(1.0, true)), 16.0);
        }
        let limit = c.sample(&feed.next(1.0, true));
        assert_eq!(limit, 2.0 * 32.0 - 16.0);
        assert!((c.margin() - (margin + 0.4 - 0.1)).abs() < 1e-12);
        // The throttled history was cleared and the flag too: more throttling now does not
        // roll back again before the next decision.
        for _ in 0..4 {
            assert_eq!(c.sample(&feed.next(1.0, true)), 48.0);
        }
    }

    #[test]
    fn margin_never_goes_below_zero() {
        let mut c = Captain::new(0.3, 32.0);
        let mut feed = Feed::default();
        c.sample(&feed.start());
        for _ in 0..200 {
            c.sample(&feed.next(1.0, false));
        }
        assert_eq!(c.margin(), 0.0);
    }

    #[test]
    fn constant_throttling_stops_at_the_ceiling() {
        // Throttled in every period at any size: without a ceiling the limit grows without
        // bound (beyond 1e100 cores within 1,300 s); with one it stays at the node's cores.
        let mut free = Captain::new(0.1, 4.0);
        let mut capped = Captain::new(0.1, 4.0).with_ceiling(32.0);
        let mut feed = Feed::default();
        let s = feed.start();
        free.sample(&s);
        capped.sample(&s);
        for _ in 0..13_000 {
            let s = feed.next(1.0, true);
            free.sample(&s);
            assert!(capped.sample(&s) <= 32.0);
        }
        assert!(free.limit() > 1e100, "{}", free.limit());
        assert_eq!(capped.limit(), 32.0);
    }

    #[test]
    fn limit_never_below_floor() {
        let mut c = Captain::new(0.1, 1.0);
        let mut feed = Feed::default();
        c.sample(&feed.start());
        let mut limit = 1.0;
        for _ in 0..300 {
            limit = c.sample(&feed.next(0.0, false));
        }
        assert_eq!(limit, MIN_LIMIT);
    }

    #[test]
    fn unlimited_start_goes_to_the_estimate() {
        let mut c = Captain::new(0.1, f64::INFINITY);
        let mut feed = Feed::default();
        c.sample(&feed.start());
        let mut limit = f64::INFINITY;
        for _ in 0..10 {
            limit = c.sample(&feed.next(2.0, false));
        }
        // [0 x40, 2 x10]: variance (40 - 8) / 49; margin 2.9.
        let expected = 2.0 + (32.0f64 / 49.0).sqrt() * 2.9;
        assert!((limit - expected).abs() < 1e-9, "{limit} vs {expected}");
    }

    #[test]
    fn non_advancing_time_is_ignored() {
        let mut c = Captain::new(0.1, 4.0);
        let s = CpuSample {
            t: 1.0,
            usage: 1.0,
            nr_periods: 1,
            nr_throttled: 0,
            throttled_time: 0.0,
        };
        c.sample(&s);
        for _ in 0..100 {
            assert_eq!(c.sample(&s), 4.0);
        }
    }
}
