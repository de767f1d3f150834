//! CPU-demand and network-delay distributions.

use rand::Rng;
use rand_distr::{Distribution, Exp, Gamma, LogNormal};
use serde::{Deserialize, Serialize};

/// A distribution as written in a scenario file; all values in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DistSpec {
    /// Always `ms`.
    Const { ms: f64 },
    /// Exponential with mean `mean_ms`.
    Exp { mean_ms: f64 },
    /// Log-normal with mean `mean_ms` and coefficient of variation `cv` (stdev / mean).
    Lognormal { mean_ms: f64, cv: f64 },
    /// Gamma with mean `mean_ms` and coefficient of variation `cv`.
    Gamma { mean_ms: f64, cv: f64 },
    /// Uniform between `min_ms` and `max_ms`.
    Uniform { min_ms: f64, max_ms: f64 },
}

impl DistSpec {
    /// The mean, in ms.
    pub fn mean_ms(&self) -> f64 {
        match *self {
            DistSpec::Const { ms } => ms,
            DistSpec::Exp { mean_ms }
            | DistSpec::Lognormal { mean_ms, .. }
            | DistSpec::Gamma { mean_ms, .. } => mean_ms,
            DistSpec::Uniform { min_ms, max_ms } => (min_ms + max_ms) / 2.0,
        }
    }

    /// The same shape with every time multiplied by `k` (the mean scales by `k`, the cv
    /// stays).
    pub fn scaled(&self, k: f64) -> DistSpec {
        match *self {
            DistSpec::Const { ms } => DistSpec::Const { ms: ms * k },
            DistSpec::Exp { mean_ms } => DistSpec::Exp {
                mean_ms: mean_ms * k,
            },
            DistSpec::Lognormal { mean_ms, cv } => DistSpec::Lognormal {
                mean_ms: mean_ms * k,
                cv,
            },
            DistSpec::Gamma { mean_ms, cv } => DistSpec::Gamma {
                mean_ms: mean_ms * k,
                cv,
            },
            DistSpec::Uniform { min_ms, max_ms } => DistSpec::Uniform {
                min_ms: min_ms * k,
                max_ms: max_ms * k,
            },
        }
    }

    /// The coefficient of variation (stdev / mean; 0 for a constant or a zero mean).
    pub fn cv(&self) -> f64 {
        match *self {
            DistSpec::Const { .. } => 0.0,
            DistSpec::Exp { mean_ms } => {
                if mean_ms > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            DistSpec::Lognormal { cv, .. } | DistSpec::Gamma { cv, .. } => cv,
            DistSpec::Uniform { min_ms, max_ms } => {
                let mean = (min_ms + max_ms) / 2.0;
                if mean > 0.0 {
                    (max_ms - min_ms) / (2.0 * 3f64.sqrt() * mean)
                } else {
                    0.0
                }
            }
        }
    }

    /// The same mean with the variability multiplied by `k` (what `sim calibrate` fits): a
    /// log-normal's or a gamma's cv times `k`; an exponential becomes the gamma of cv `k`
    /// (the exponential is the gamma of cv 1); a uniform's spread around its mean times `k`,
    /// its low end kept at a hundredth of the mean at least (a CPU cost is positive); a constant stays constant (the scenario says it does not vary).
    pub fn with_cv_scaled(&self, k: f64) -> DistSpec {
        match *self {
            DistSpec::Const { .. } => self.clone(),
            DistSpec::Exp { mean_ms } => {
                if k == 1.0 || mean_ms == 0.0 {
                    self.clone()
                } else {
                    DistSpec::Gamma { mean_ms, cv: k }
                }
            }
            DistSpec::Lognormal { mean_ms, cv } => DistSpec::Lognormal {
                mean_ms,
                cv: cv * k,
            },
            DistSpec::Gamma { mean_ms, cv } => DistSpec::Gamma {
                mean_ms,
                cv: cv * k,
            },
            DistSpec::Uniform { min_ms, max_ms } => {
                let mean = (min_ms + max_ms) / 2.0;
                let half = ((max_ms - min_ms) / 2.0 * k).min(0.99 * mean);
                DistSpec::Uniform {
                    min_ms: mean - half,
                    max_ms: mean + half,
                }
            }
        }
    }

    /// Checks the parameters; `allow_zero` is for delays (a CPU cost must be positive).
    pub(crate) fn check(&self, allow_zero: bool) -> Result<(), String> {
        let ok = |name: &str, v: f64| {
            if v.is_finite() && (v > 0.0 || (allow_zero && v == 0.0)) {
                Ok(())
            } else if allow_zero {
                Err(format!("{name} must be >= 0, got {v}"))
            } else {
                Err(format!("{name} must be > 0, got {v}"))
            }
        };
        match *self {
            DistSpec::Const { ms } => ok("ms", ms),
            DistSpec::Exp { mean_ms } => ok("mean_ms", mean_ms),
            DistSpec::Lognormal { mean_ms, cv } | DistSpec::Gamma { mean_ms, cv } => {
                ok("mean_ms", mean_ms)?;
                if cv.is_finite() && cv > 0.0 {
                    Ok(())
                } else {
                    Err(format!("cv must be > 0, got {cv}"))
                }
            }
            DistSpec::Uniform { min_ms, max_ms } => {
                ok("min_ms", min_ms)?;
                ok("max_ms", max_ms)?;
                if max_ms >= min_ms {
                    Ok(())
                } else {
                    Err(format!("max_ms ({max_ms}) is below min_ms ({min_ms})"))
                }
            }
        }
    }

    /// The sampler (after [`check`](Self::check)).
    pub(crate) fn build(&self) -> Dist {
        let s = |ms: f64| ms / 1000.0;
        match *self {
            DistSpec::Const { ms } => Dist::Const(s(ms)),
            DistSpec::Exp { mean_ms } if mean_ms > 0.0 => {
                Dist::Exp(Exp::new(1.0 / s(mean_ms)).expect("checked"))
            }
            DistSpec::Exp { .. } => Dist::Const(0.0),
            DistSpec::Lognormal { mean_ms, cv } => {
                // For a log-normal, cv^2 = exp(sigma^2) - 1 and mean = exp(mu + sigma^2 / 2).
                let sigma2 = (1.0 + cv * cv).ln();
                let mu = s(mean_ms).ln() - sigma2 / 2.0;
                Dist::LogNormal(LogNormal::new(mu, sigma2.sqrt()).expect("checked"))
            }
            DistSpec::Gamma { mean_ms, cv } => {
                let shape = 1.0 / (cv * cv);
                Dist::Gamma(Gamma::new(shape, s(mean_ms) / shape).expect("checked"))
            }
            DistSpec::Uniform { min_ms, max_ms } => Dist::Uniform(s(min_ms), s(max_ms)),
        }
    }
}

/// A ready-to-sample distribution, in seconds.
#[derive(Debug, Clone)]
pub enum Dist {
    Const(f64),
    Exp(Exp<f64>),
    LogNormal(LogNormal<f64>),
    Gamma(Gamma<f64>),
    Uniform(f64, f64),
}

impl Dist {
    /// One value, in seconds.
    #[inline]
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match self {
            Dist::Const(v) => *v,
            Dist::Exp(d) => d.sample(rng),
            Dist::LogNormal(d) => d.sample(rng),
            Dist::Gamma(d) => d.sample(rng),
            Dist::Uniform(a, b) => {
                if b > a {
                    rng.random_range(*a..*b)
                } else {
                    *a
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn means_match_the_spec() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for spec in [
            DistSpec::Const { ms: 2.0 },
            DistSpec::Exp { mean_ms: 2.0 },
            DistSpec::Lognormal {
                mean_ms: 2.0,
                cv: 1.5,
            },
            DistSpec::Gamma {
                mean_ms: 2.0,
                cv: 0.5,
            },
            DistSpec::Uniform {
                min_ms: 1.0,
                max_ms: 3.0,
            },
        ] {
            spec.check(false).unwrap();
            let d = spec.build();
            let n = 200_000;
            let mean = (0..n).map(|_| d.sample(&mut rng)).sum::<f64>() / n as f64;
            assert!((mean * 1000.0 - 2.0).abs() < 0.05, "{spec:?}: {mean}");
        }
    }

    #[test]
    fn variability_scales_and_the_mean_stays() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for (spec, k, cv) in [
            (DistSpec::Exp { mean_ms: 2.0 }, 2.0, 2.0),
            (DistSpec::Exp { mean_ms: 2.0 }, 1.0, 1.0),
            (
                DistSpec::Lognormal {
                    mean_ms: 2.0,
                    cv: 1.5,
                },
                0.5,
                0.75,
            ),
            (
                DistSpec::Gamma {
                    mean_ms: 2.0,
                    cv: 0.5,
                },
                3.0,
                1.5,
            ),
            (
                DistSpec::Uniform {
                    min_ms: 1.5,
                    max_ms: 2.5,
                },
                2.0,
                1.0 / (2.0 * 3f64.sqrt()),
            ),
            // Clipped: the low end stays at a hundredth of the mean.
            (
                DistSpec::Uniform {
                    min_ms: 1.0,
                    max_ms: 3.0,
                },
                4.0,
                0.99 / 3f64.sqrt(),
            ),
            (DistSpec::Const { ms: 2.0 }, 4.0, 0.0),
        ] {
            let scaled = spec.with_cv_scaled(k);
            assert!((scaled.mean_ms() - 2.0).abs() < 1e-12, "{scaled:?}");
            assert!(
                (scaled.cv() - cv).abs() < 1e-12,
                "{spec:?} x {k}: {scaled:?}"
            );
            // The sampler agrees with what the spec says.
            scaled.check(false).unwrap();
            let d = scaled.build();
            let n = 400_000;
            let xs: Vec<f64> = (0..n).map(|_| d.sample(&mut rng) * 1000.0).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
            assert!((mean - 2.0).abs() < 0.05, "{scaled:?}: mean {mean}");
            assert!(
                (sd / mean - cv).abs() < 0.05 * cv.max(0.2),
                "{scaled:?}: cv {}",
                sd / mean
            );
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(DistSpec::Exp { mean_ms: 0.0 }.check(false).is_err());
        assert!(DistSpec::Exp { mean_ms: 0.0 }.check(true).is_ok());
        assert!(DistSpec::Const { ms: -1.0 }.check(true).is_err());
        assert!(DistSpec::Lognormal {
            mean_ms: 1.0,
            cv: 0.0
        }
        .check(false)
        .is_err());
        assert!(DistSpec::Uniform {
            min_ms: 2.0,
            max_ms: 1.0
        }
        .check(false)
        .is_err());
        assert!(DistSpec::Const { ms: f64::NAN }.check(false).is_err());
    }
}
