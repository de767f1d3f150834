//! Seeded synthetic workloads, and the built-in one-hour traces made with them.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::{Trace, TraceError};

/// A workload shape with settable statistics. Every generator is deterministic per seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Generator {
    /// One day-like cycle per `period_s`: starts at `trough`, peaks at `peak` half a period
    /// later, with slowly drifting multiplicative noise of relative size `noise`.
    Diurnal {
        trough: f64,
        peak: f64,
        period_s: f64,
        noise: f64,
    },
    /// A wandering base load (relative wander `wander`) with `bursts` bursts per hour, each a
    /// smooth rise to `burst_peak` and back lasting `burst_s` seconds, at random times.
    Bursty {
        base: f64,
        wander: f64,
        bursts: f64,
        burst_peak: f64,
        burst_s: f64,
    },
    /// A linear trend from `start` to `end` with a saw-tooth jitter of `jitter` RPS per second
    /// that stays within `spread` of the trend: a noisy, jagged load.
    Noisy {
        start: f64,
        end: f64,
        jitter: f64,
        spread: f64,
    },
    /// Cycles through `levels`, each held for `step_s` seconds: for step-response studies.
    Step { levels: Vec<u32>, step_s: usize },
    /// A flat load.
    Constant { rps: u32 },
}

/// The built-in one-hour traces: (name, generator, seed). Their statistics are modelled on the
/// four traces of the original evaluation (their means are within 10% of the originals';
/// `tests/shared.rs` checks that where `../shared` is present); the files in `data/` are these
/// generators' output, kept in sync by a test.
pub const BUILTIN: [&str; 4] = ["diurnal", "noisy", "bursty", "diurnal-2"];

impl Generator {
    /// The generator and seed behind a built-in trace.
    pub fn builtin(name: &str) -> Option<(Generator, u64)> {
        Some(match name {
            "diurnal" => (
                Generator::Diurnal {
                    trough: 185.0,
                    peak: 365.0,
                    period_s: 3600.0,
                    noise: 0.04,
                },
                1,
            ),
            "noisy" => (
                Generator::Noisy {
                    start: 130.0,
                    end: 190.0,
                    jitter: 10.0,
                    spread: 30.0,
                },
                2,
            ),
            "bursty" => (
                Generator::Bursty {
                    base: 120.0,
                    wander: 0.15,
                    bursts: 1.0,
                    burst_peak: 385.0,
                    burst_s: 900.0,
                },
                3,
            ),
            "diurnal-2" => (
                Generator::Diurnal {
                    trough: 105.0,
                    peak: 385.0,
                    period_s: 3600.0,
                    noise: 0.04,
                },
                4,
            ),
            _ => return None,
        })
    }

    /// Generates `seconds` of this workload.
    pub fn generate(&self, seconds: usize, seed: u64) -> Trace {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let rates: Vec<f64> = match self {
            Generator::Diurnal {
                trough,
                peak,
                period_s,
                noise,
            } => {
                let mut drift = Drift::new(*noise, 0.99);
                (0..seconds)
                    .map(|t| {
                        let phase = 2.0 * std::f64::consts::PI * t as f64 / period_s;
                        let base = trough + (peak - trough) * (1.0 - phase.cos()) / 2.0;
                        base * (1.0 + drift.next(&mut rng))
                    })
                    .collect()
            }
            Generator::Bursty {
                base,
                wander,
                bursts,
                burst_peak,
                burst_s,
            } => {
                let mut drift = Drift::new(*wander, 0.998);
                let count = (bursts * seconds as f64 / 3600.0).round() as usize;
                let starts: Vec<f64> = (0..count)
                    .map(|_| rng.random_range(0.0..(seconds as f64 - burst_s).max(1.0)))
                    .collect();
                (0..seconds)
                    .map(|t| {
                        let level = base * (1.0 + drift.next(&mut rng));
                        let burst: f64 = starts
                            .iter()
                            .map(|&s| {
                                let x = (t as f64 - s) / burst_s;
                                if (0.0..=1.0).contains(&x) {
                                    (burst_peak - base)
                                        * (1.0 - (2.0 * std::f64::consts::PI * x).cos())
                                        / 2.0
                                } else {
                                    0.0
                                }
                            })
                            .sum();
                        level + burst
                    })
                    .collect()
            }
            Generator::Noisy {
                start,
                end,
                jitter,
                spread,
            } => {
                let mut offset = 0.0f64;
                let mut dir = 1.0f64;
                (0..seconds)
                    .map(|t| {
                        let trend = start + (end - start) * t as f64 / seconds.max(1) as f64;
                        if offset.abs() >= *spread {
                            dir = -offset.signum();
                        } else if rng.random::<f64>() < 0.15 {
                            dir = -dir;
                        }
                        offset += dir * jitter * rng.random_range(0.5..1.0);
                        trend + offset
                    })
                    .collect()
            }
            Generator::Step { levels, step_s } => (0..seconds)
                .map(|t| {
                    levels
                        .get((t / (*step_s).max(1)) % levels.len().max(1))
                        .copied()
                        .unwrap_or(0) as f64
                })
                .collect(),
            Generator::Constant { rps } => vec![*rps as f64; seconds],
        };
        let rps = rates
            .into_iter()
            .map(|r| r.round().clamp(0.0, u32::MAX as f64) as u32)
            .collect();
        Trace::new(self.name(), rps)
    }

    fn name(&self) -> String {
        match self {
            Generator::Diurnal { .. } => "generated-diurnal".into(),
            Generator::Bursty { .. } => "generated-bursty".into(),
            Generator::Noisy { .. } => "generated-noisy".into(),
            Generator::Step { .. } => "generated-step".into(),
            Generator::Constant { rps } => format!("constant-{rps}"),
        }
    }
}

/// Slowly drifting relative noise: an AR(1) process with stationary deviation `size`.
struct Drift {
    value: f64,
    keep: f64,
    step: Option<Normal<f64>>,
}

impl Drift {
    fn new(size: f64, keep: f64) -> Self {
        let sd = size.abs() * (1.0 - keep * keep).sqrt();
        Drift {
            value: 0.0,
            keep,
            step: Normal::new(0.0, sd).ok().filter(|_| sd > 0.0),
        }
    }

    fn next(&mut self, rng: &mut Pcg64Mcg) -> f64 {
        if let Some(step) = &self.step {
            self.value = self.keep * self.value + step.sample(rng);
        }
        self.value
    }
}

impl Trace {
    /// A built-in trace: one of [`BUILTIN`] (embedded in the crate), or `constant-N`.
    pub fn builtin(name: &str) -> Result<Trace, TraceError> {
        let text = match name {
            "diurnal" => include_str!("../data/diurnal.txt"),
            "noisy" => include_str!("../data/noisy.txt"),
            "bursty" => include_str!("../data/bursty.txt"),
            "diurnal-2" => include_str!("../data/diurnal-2.txt"),
            _ => {
                if let Some(rps) = name
                    .strip_prefix("constant-")
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    if rps > u64::from(crate::MAX_RATE) {
                        return Err(TraceError::TooHigh(name.to_string()));
                    }
                    return Ok(Trace::constant(rps as u32, 3600));
                }
                return Err(TraceError::UnknownBuiltin(name.to_string()));
            }
        };
        let mut t = Trace::parse(name, text)?;
        t.name = name.to_string();
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever the text, parsing ends in a trace within the bounds or in an error.
        #[test]
        fn any_text_parses_within_bounds_or_is_refused(
            lines in proptest::collection::vec("-?[0-9]{0,12}|[a-z ]{0,3}", 0..50)
        ) {
            match Trace::parse("t", &lines.join("\n")) {
                Ok(t) => {
                    proptest::prop_assert!(!t.rps.is_empty());
                    proptest::prop_assert!(t.rps.iter().all(|&r| r <= crate::MAX_RATE));
                }
                Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn rates_and_lengths_are_bounded() {
        assert!(Trace::builtin("constant-1000000").is_ok());
        let e = Trace::builtin("constant-4000000000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 1000000"), "{e}");
        let e = Trace::parse("t", "100\n4000000000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t:2") && e.contains("over the limit"), "{e}");
        let long = "1\n".repeat(crate::MAX_SECONDS + 1);
        let e = Trace::parse("t", &long).unwrap_err().to_string();
        assert!(e.contains("longer than"), "{e}");
    }

    #[test]
    fn embedded_builtins_match_their_generators() {
        for name in BUILTIN {
            let (g, seed) = Generator::builtin(name).unwrap();
            let fresh = g.generate(3600, seed);
            let embedded = Trace::builtin(name).unwrap();
            assert_eq!(
                fresh.rps, embedded.rps,
                "traces/data/{name}.txt is stale: run `cargo run -p traces --example regenerate`"
            );
        }
    }

    #[test]
    fn builtins_look_like_the_original_workloads() {
        // (name, mean range, min at most, max at least): the originals are diurnal 262.6 mean
        // (177..387), noisy 157.5 (81..245), bursty 163.3 (81..397), diurnal-2 228.4 (90..394).
        let expect = [
            ("diurnal", 240.0..290.0, 200, 350),
            ("noisy", 140.0..175.0, 120, 200),
            ("bursty", 140.0..190.0, 110, 350),
            ("diurnal-2", 210.0..260.0, 130, 350),
        ];
        for (name, mean, min, max) in expect {
            let s = Trace::builtin(name).unwrap().stats();
            assert!(mean.contains(&s.mean), "{name}: mean {}", s.mean);
            assert!(s.min <= min && s.max >= max, "{name}: {s:?}");
            assert_eq!(s.seconds, 3600);
        }
        let noisy = Trace::builtin("noisy").unwrap().stats();
        let diurnal = Trace::builtin("diurnal").unwrap().stats();
        assert!(noisy.mean_abs_step > 4.0 * diurnal.mean_abs_step);
    }

    #[test]
    fn generators_are_seeded() {
        let g = Generator::builtin("bursty").unwrap().0;
        assert_eq!(g.generate(600, 1), g.generate(600, 1));
        assert_ne!(g.generate(3600, 1), g.generate(3600, 2));
    }

    #[test]
    fn statistics_follow_the_settings() {
        let d = Generator::Diurnal {
            trough: 100.0,
            peak: 500.0,
            period_s: 3600.0,
            noise: 0.0,
        }
        .generate(3600, 1)
        .stats();
        assert_eq!((d.min, d.max), (100, 500));
        assert!((d.mean - 300.0).abs() < 1.0);
        let b = Generator::Bursty {
            base: 100.0,
            wander: 0.0,
            bursts: 2.0,
            burst_peak: 400.0,
            burst_s: 300.0,
        }
        .generate(3600, 9)
        .stats();
        assert_eq!(b.min, 100);
        assert!(b.max >= 399, "{b:?}");
        let n = Generator::Noisy {
            start: 200.0,
            end: 200.0,
            jitter: 10.0,
            spread: 30.0,
        }
        .generate(3600, 3)
        .stats();
        // The saw-tooth turns back once it is `spread` away, so it overshoots by one step at most.
        assert!(n.min >= 160 && n.max <= 240, "{n:?}");
        assert!(n.mean_abs_step > 5.0);
        let s = Generator::Step {
            levels: vec![10, 20, 30],
            step_s: 10,
        }
        .generate(40, 0);
        assert_eq!(
            (s.rps[0], s.rps[10], s.rps[25], s.rps[35]),
            (10, 20, 30, 10)
        );
    }
}
