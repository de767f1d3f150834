//! Latency histograms and the SLO rule: one definition for the simulator and the live
//! coordinator, so that a verdict means the same in both worlds.
//!
//! ```
//! use record::latency::{self, Latencies};
//!
//! let mut h = latency::histogram();
//! for ms in 1..=99 {
//!     h.record(ms * 1000).unwrap();
//! }
//! // 99 fast requests and one that never finished: the P99 is still the 99th fastest...
//! let l = Latencies::judge(&h, 1, 100.0);
//! assert!(l.p99_ms <= 99.1 && l.slo_met);
//! // ...but with two unfinished, the 99th percentile is an unfinished request: a miss.
//! let l = Latencies::judge(&h, 2, 100.0);
//! assert!(!l.slo_met && l.p99_ms == latency::UNFINISHED_MS);
//! ```

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Upper bound of every latency histogram, microseconds (1 h).
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// The latency a request that never completed counts with: above any SLO and any latency a
/// histogram can hold, so it can only make a percentile worse.
pub const UNFINISHED_MS: f64 = MAX_LATENCY_US as f64 / 1000.0;

/// An empty latency histogram, microseconds, 1 us .. 1 h at three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static bounds are valid")
}

/// The `q` quantile of `h` in milliseconds, 0 for an empty histogram.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// The latency part of a run's summary, judged by the one SLO rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    /// Mean over the completed requests.
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    /// P99 over every request judged, the unfinished ones counted at [`UNFINISHED_MS`].
    pub p99_ms: f64,
    /// Completed requests judged.
    pub requests: u64,
    /// Requests judged that never completed.
    pub incomplete: u64,
    pub slo_met: bool,
}

impl Latencies {
    /// The SLO rule. Every request that arrived after the ramp is judged. One that never
    /// completed (still in flight when the run ended) is slower than any that did: it enters
    /// the percentiles at [`UNFINISHED_MS`]. The SLO holds when that P99 is at most `slo_ms`
    /// and at least one request was judged. Errors and timeouts are completed requests, at the
    /// latency they took to fail.
    pub fn judge(completed: &Histogram<u64>, incomplete: u64, slo_ms: f64) -> Latencies {
        let mut all;
        let h = if incomplete == 0 {
            completed
        } else {
            all = completed.clone();
            all.saturating_record_n(MAX_LATENCY_US, incomplete);
            &all
        };
        let p99_ms = quantile_ms(h, 0.99);
        let mean_ms = if completed.is_empty() {
            0.0
        } else {
            completed.mean() / 1000.0
        };
        Latencies {
            mean_ms,
            p50_ms: quantile_ms(h, 0.50),
            p90_ms: quantile_ms(h, 0.90),
            p99_ms: if p99_ms >= UNFINISHED_MS * 0.999 {
                UNFINISHED_MS
            } else {
                p99_ms
            },
            requests: completed.len(),
            incomplete,
            slo_met: !h.is_empty() && p99_ms <= slo_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Histogram<u64> {
        let mut h = histogram();
        for v in values {
            h.record(v * 1000).unwrap();
        }
        h
    }

    #[test]
    fn nothing_judged_is_not_a_met_slo() {
        let l = Latencies::judge(&histogram(), 0, 100.0);
        assert!(!l.slo_met);
        assert_eq!((l.requests, l.p99_ms), (0, 0.0));
    }

    #[test]
    fn all_unfinished_is_a_miss() {
        let l = Latencies::judge(&histogram(), 3, 100.0);
        assert!(!l.slo_met);
        assert_eq!(l.p99_ms, UNFINISHED_MS);
        assert_eq!((l.requests, l.incomplete), (0, 3));
    }

    #[test]
    fn unfinished_requests_push_the_percentile_up() {
        // 1000 requests at 10 ms and 5 at 150 ms: P99 10 ms, met.
        let mut values = vec![10; 1000];
        values.extend([150; 5]);
        let h = ms(&values);
        assert!(Latencies::judge(&h, 0, 100.0).slo_met);
        // Six unfinished on top: 11 of 1011 are slower than 10 ms, so P99 is now a slow one.
        let l = Latencies::judge(&h, 6, 100.0);
        assert!(!l.slo_met, "{l:?}");
        assert!(l.p99_ms > 100.0);
        // The mean is over completed requests only.
        assert!(
            (l.mean_ms - (10_000.0 + 750.0) / 1005.0).abs() < 0.05,
            "{}",
            l.mean_ms
        );
    }

    #[test]
    fn the_slo_is_judged_at_the_histograms_precision() {
        // Three significant digits: 99.9 ms is within a 100-ms SLO, 100.2 ms is not.
        let mut h = histogram();
        h.record_n(99_900, 10).unwrap();
        assert!(Latencies::judge(&h, 0, 100.0).slo_met);
        let mut h = histogram();
        h.record_n(100_200, 10).unwrap();
        assert!(!Latencies::judge(&h, 0, 100.0).slo_met);
    }
}
