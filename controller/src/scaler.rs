//! The scaler interface and the configurations the CLI and the agent build scalers from.

use serde::{Deserialize, Serialize};

use crate::captain::SMOOTH_SAMPLES;
use crate::sample::{clamp_limit, CpuSample, MIN_LIMIT};
use crate::{Captain, ControllerError, K8sCpu};

/// A per-container CPU limit controller.
///
/// It is fed one [`CpuSample`] every 100 ms (cumulative counters) and returns the limit, in
/// cores, to apply from now on (`f64::INFINITY` means "no limit"). It never returns less than
/// [`MIN_LIMIT`].
pub trait Scaler: Send {
    /// Feeds one sample and returns the limit to apply now.
    fn sample(&mut self, sample: &CpuSample) -> f64;
    /// The limit the scaler currently wants.
    fn limit(&self) -> f64;
    /// The target the scaler holds (throttle ratio for the Captain, utilisation for K8s-CPU);
    /// `None` for a fixed limit, which has none.
    fn target(&self) -> Option<f64>;
    /// Changes the target from now on (the Tower does this every minute).
    fn set_target(&mut self, target: f64) -> Result<(), ControllerError>;
    /// A short name for records and logs.
    fn name(&self) -> &'static str;
}

/// A fixed limit: the "no controller" baseline.
#[derive(Debug, Clone)]
pub struct Const {
    limit: f64,
}

impl Const {
    /// A scaler that always answers `limit` (raised to [`MIN_LIMIT`]).
    pub fn new(limit: f64) -> Self {
        Const {
            limit: limit.max(MIN_LIMIT),
        }
    }
}

impl Scaler for Const {
    fn sample(&mut self, _: &CpuSample) -> f64 {
        self.limit
    }
    fn limit(&self) -> f64 {
        self.limit
    }
    fn target(&self) -> Option<f64> {
        None
    }
    /// A fixed limit ignores targets (a Tower may still send them to every container).
    fn set_target(&mut self, _: f64) -> Result<(), ControllerError> {
        Ok(())
    }
    fn name(&self) -> &'static str {
        "const"
    }
}

/// The scalers by name, as users type them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScalerKind {
    /// Autothrottle's Captain: `target` is a throttle ratio.
    Captain,
    /// Beyond the paper: a Captain that sizes its scale-downs from one-second means of usage
    /// ([`Captain::smoothed`]).
    CaptainSmooth,
    /// Kubernetes-style utilisation scaler, 15 s period, 300 s window.
    K8sCpu,
    /// Kubernetes-style utilisation scaler, 1 s period, 20 s window.
    K8sCpuFast,
    /// A fixed limit: `target` is ignored, the limit is the initial limit.
    Const,
}

impl ScalerKind {
    /// All kinds, in the order tables list them.
    pub const ALL: [ScalerKind; 5] = [
        ScalerKind::K8sCpu,
        ScalerKind::K8sCpuFast,
        ScalerKind::Captain,
        ScalerKind::CaptainSmooth,
        ScalerKind::Const,
    ];

    /// Whether its target is a throttle ratio (a Captain), which a Tower can set.
    pub fn is_captain(self) -> bool {
        matches!(self, ScalerKind::Captain | ScalerKind::CaptainSmooth)
    }

    /// The name users type.
    pub fn name(self) -> &'static str {
        match self {
            ScalerKind::Captain => "captain",
            ScalerKind::CaptainSmooth => "captain-smooth",
            ScalerKind::K8sCpu => "k8s-cpu",
            ScalerKind::K8sCpuFast => "k8s-cpu-fast",
            ScalerKind::Const => "const",
        }
    }

    /// The configuration of this kind for a target and an initial limit.
    pub fn config(self, target: f64, initial_limit: f64) -> ScalerConfig {
        match self {
            ScalerKind::Captain => ScalerConfig::Captain {
                target,
                initial_limit,
                usage_samples: 1,
            },
            ScalerKind::CaptainSmooth => ScalerConfig::Captain {
                target,
                initial_limit,
                usage_samples: SMOOTH_SAMPLES,
            },
            ScalerKind::K8sCpu => ScalerConfig::K8sCpu {
                target,
                period_s: 15.0,
                window_s: 300.0,
                initial_limit,
            },
            ScalerKind::K8sCpuFast => ScalerConfig::K8sCpu {
                target,
                period_s: 1.0,
                window_s: 20.0,
                initial_limit,
            },
            ScalerKind::Const => ScalerConfig::Const {
                limit: initial_limit,
            },
        }
    }
}

impl std::fmt::Display for ScalerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ScalerKind {
    type Err = ControllerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ScalerKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| ControllerError::UnknownScaler(s.to_string()))
    }
}

/// Everything needed to build one scaler: what a run record stores and what the agent receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScalerConfig {
    /// See [`Captain`]; `usage_samples` per usage-history entry (1, the original's, when
    /// absent: [`Captain::with_usage_samples`]).
    Captain {
        target: f64,
        initial_limit: f64,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        usage_samples: usize,
    },
    /// See [`K8sCpu`].
    K8sCpu {
        target: f64,
        period_s: f64,
        window_s: f64,
        initial_limit: f64,
    },
    /// See [`Const`].
    Const { limit: f64 },
}

impl ScalerConfig {
    /// Checks the numbers, so that a bad configuration is refused before anything runs.
    pub fn validate(&self) -> Result<(), ControllerError> {
        match *self {
            ScalerConfig::Captain {
                target,
                initial_limit,
                usage_samples,
            } => {
                check_target(target, 0.0, 1.0)?;
                if !(1..=USAGE_SAMPLES_MAX).contains(&usage_samples) {
                    return Err(ControllerError::BadUsageSamples {
                        got: usage_samples,
                        max: USAGE_SAMPLES_MAX,
                    });
                }
                check_limit(initial_limit, true)
            }
            ScalerConfig::K8sCpu {
                target,
                period_s,
                window_s,
                initial_limit,
            } => {
                check_k8s_target(target)?;
                if !(period_s > 0.0 && period_s.is_finite() && window_s >= period_s) {
                    return Err(ControllerError::BadWindow {
                        period: period_s,
                        window: window_s,
                    });
                }
                check_limit(initial_limit, true)
            }
            ScalerConfig::Const { limit } => check_limit(limit, true),
        }
    }

    /// Builds the scaler (after [`validate`](Self::validate)), with no ceiling.
    pub fn build(&self) -> Result<Box<dyn Scaler>, ControllerError> {
        self.build_with_ceiling(f64::INFINITY)
    }

    /// Builds the scaler with its limit never above `ceiling` cores (the node's cores: a
    /// quota above them buys nothing, and a Captain throttled at every size would otherwise
    /// grow its limit without bound).
    pub fn build_with_ceiling(&self, ceiling: f64) -> Result<Box<dyn Scaler>, ControllerError> {
        self.validate()?;
        if ceiling.is_nan() || ceiling < MIN_LIMIT {
            return Err(ControllerError::BadLimit(ceiling));
        }
        Ok(match *self {
            ScalerConfig::Captain {
                target,
                initial_limit,
                usage_samples,
            } => Box::new(
                Captain::new(target, initial_limit)
                    .with_usage_samples(usage_samples)
                    .with_ceiling(ceiling),
            ),
            ScalerConfig::K8sCpu {
                target,
                period_s,
                window_s,
                initial_limit,
            } => Box::new(
                K8sCpu::new(target, period_s, window_s, initial_limit)?.with_ceiling(ceiling),
            ),
            ScalerConfig::Const { limit } => Box::new(Const::new(clamp_limit(limit, ceiling))),
        })
    }

    /// The target, if this kind has one.
    pub fn target(&self) -> Option<f64> {
        match *self {
            ScalerConfig::Captain { target, .. } | ScalerConfig::K8sCpu { target, .. } => {
                Some(target)
            }
            ScalerConfig::Const { .. } => None,
        }
    }
}

/// The most samples a Captain may average per usage-history entry (its whole 5-s history).
pub const USAGE_SAMPLES_MAX: usize = 50;

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

pub(crate) fn check_target(value: f64, min: f64, max: f64) -> Result<(), ControllerError> {
    if value >= min && value <= max {
        Ok(())
    } else {
        Err(ControllerError::TargetOutOfRange { value, min, max })
    }
}

/// K8s-CPU divides by its target, so zero is refused.
pub(crate) fn check_k8s_target(value: f64) -> Result<(), ControllerError> {
    if value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(ControllerError::TargetOutOfRange {
            value,
            min: f64::MIN_POSITIVE,
            max: 1.0,
        })
    }
}

fn check_limit(limit: f64, allow_infinite: bool) -> Result<(), ControllerError> {
    if limit > 0.0 && (limit.is_finite() || (allow_infinite && limit == f64::INFINITY)) {
        Ok(())
    } else {
        Err(ControllerError::BadLimit(limit))
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::CpuSample;

    /// Builds cumulative samples 100 ms apart from per-sample usage and throttling.
    #[derive(Default)]
    pub struct Feed {
        s: Option<CpuSample>,
    }

    impl Feed {
        pub fn start(&mut self) -> CpuSample {
            let s = CpuSample::default();
            self.s = Some(s);
            s
        }

        /// The next sample: `cores` used over the last 100 ms, throttled or not.
        pub fn next(&mut self, cores: f64, throttled: bool) -> CpuSample {
            let mut s = self.s.unwrap_or_else(|| self.start());
            s.t += 0.1;
            s.usage += cores * 0.1;
            s.nr_periods += 1;
            if throttled {
                s.nr_throttled += 1;
                s.throttled_time += 0.05;
            }
            self.s = Some(s);
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::Feed;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn const_is_constant_and_floored() {
        let mut c = Const::new(0.001);
        let mut feed = Feed::default();
        for _ in 0..5 {
            assert_eq!(c.sample(&feed.next(3.0, true)), MIN_LIMIT);
        }
        assert_eq!(Const::new(2.5).limit(), 2.5);
    }

    #[test]
    fn the_smoothed_captain_travels_in_the_config_and_older_configs_still_read() {
        let smooth = ScalerKind::CaptainSmooth.config(0.1, 4.0);
        let json = serde_json::to_string(&smooth).unwrap();
        assert!(json.contains("\"usage_samples\":10"), "{json}");
        assert_eq!(serde_json::from_str::<ScalerConfig>(&json).unwrap(), smooth);
        assert_eq!(smooth.build().unwrap().name(), "captain-smooth");
        // The original's config is written as before (records and agents of earlier
        // versions read it) and reads back as one sample per entry.
        let original = ScalerKind::Captain.config(0.1, 4.0);
        let json = serde_json::to_string(&original).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"captain","target":0.1,"initial_limit":4.0}"#
        );
        assert_eq!(
            serde_json::from_str::<ScalerConfig>(&json).unwrap(),
            original
        );
        for bad in [0, USAGE_SAMPLES_MAX + 1] {
            let c = ScalerConfig::Captain {
                target: 0.1,
                initial_limit: 4.0,
                usage_samples: bad,
            };
            let e = c.validate().unwrap_err();
            assert!(e.to_string().contains("1 to 50 usage samples"), "{e}");
        }
        assert!(ScalerKind::CaptainSmooth.is_captain() && !ScalerKind::K8sCpu.is_captain());
    }

    #[test]
    fn kinds_parse_and_print() {
        for k in ScalerKind::ALL {
            assert_eq!(k.name().parse::<ScalerKind>().unwrap(), k);
        }
        let err = "k8s".parse::<ScalerKind>().unwrap_err();
        assert!(err.to_string().contains("unknown scaler 'k8s'"));
    }

    #[test]
    fn presets_match_the_paper() {
        assert_eq!(
            ScalerKind::K8sCpuFast.config(0.5, 32.0),
            ScalerConfig::K8sCpu {
                target: 0.5,
                period_s: 1.0,
                window_s: 20.0,
                initial_limit: 32.0
            }
        );
        match ScalerKind::K8sCpu.config(0.5, 32.0) {
            ScalerConfig::K8sCpu {
                period_s, window_s, ..
            } => assert_eq!((period_s, window_s), (15.0, 300.0)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validation_refuses_bad_numbers() {
        assert!(ScalerKind::Captain.config(1.5, 32.0).validate().is_err());
        assert!(ScalerKind::Captain.config(-0.1, 32.0).validate().is_err());
        assert!(ScalerKind::Captain
            .config(f64::NAN, 32.0)
            .validate()
            .is_err());
        assert!(ScalerKind::K8sCpu.config(0.0, 32.0).validate().is_err());
        assert!(ScalerKind::Captain.config(0.1, 0.0).validate().is_err());
        assert!(ScalerKind::Const.config(0.1, f64::NAN).validate().is_err());
        assert!(ScalerKind::Captain.config(0.0, 32.0).validate().is_ok());
        let bad = ScalerConfig::K8sCpu {
            target: 0.5,
            period_s: 10.0,
            window_s: 5.0,
            initial_limit: 1.0,
        };
        assert!(matches!(
            bad.validate(),
            Err(ControllerError::BadWindow { .. })
        ));
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = ScalerKind::K8sCpuFast.config(0.7, 8.0);
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"kind\":\"k8s-cpu\""));
        assert_eq!(serde_json::from_str::<ScalerConfig>(&json).unwrap(), c);
    }

    #[test]
    fn set_target_is_validated() {
        let mut c = ScalerKind::Captain.config(0.1, 4.0).build().unwrap();
        assert!(c.set_target(0.2).is_ok());
        assert_eq!(c.target(), Some(0.2));
        assert!(c.set_target(2.0).is_err());
        assert_eq!(c.target(), Some(0.2));
        let mut k = ScalerKind::K8sCpu.config(0.5, 4.0).build().unwrap();
        assert!(k.set_target(0.0).is_err());
    }

    /// Arbitrary monotone counters: per-sample increments that any cgroup could report.
    fn steps() -> impl Strategy<Value = Vec<(f64, f64, u64, bool)>> {
        prop::collection::vec(
            (0.001f64..2.0, 0.0f64..64.0, 0u64..3, any::<bool>()),
            1..400,
        )
    }

    /// The cumulative counters those increments add up to, one sample per step.
    fn cumulative(steps: &[(f64, f64, u64, bool)]) -> Vec<CpuSample> {
        let mut s = CpuSample::default();
        steps
            .iter()
            .map(|&(dt, cores, throttled, counted)| {
                s.t += dt;
                s.usage += cores * dt;
                s.nr_periods += u64::from(counted);
                s.nr_throttled += throttled;
                s.throttled_time += dt * throttled as f64 / 10.0;
                s
            })
            .collect()
    }

    proptest! {
        #[test]
        fn limits_stay_under_the_ceiling(
            steps in steps(),
            kind in prop::sample::select(vec![ScalerKind::Captain, ScalerKind::K8sCpu, ScalerKind::K8sCpuFast, ScalerKind::Const]),
            target in 0.01f64..1.0,
            initial in 0.01f64..64.0,
            ceiling in 0.01f64..64.0,
        ) {
            let mut scaler = kind.config(target, initial).build_with_ceiling(ceiling).unwrap();
            prop_assert!(scaler.limit() <= ceiling);
            for s in cumulative(&steps) {
                let limit = scaler.sample(&s);
                prop_assert!(limit <= ceiling && limit >= MIN_LIMIT.min(ceiling), "{} gave {} over {}", kind, limit, ceiling);
                prop_assert!(scaler.limit() <= ceiling);
            }
        }

        #[test]
        fn limits_stay_finite_and_floored(
            steps in steps(),
            kind in prop::sample::select(vec![ScalerKind::Captain, ScalerKind::K8sCpu, ScalerKind::K8sCpuFast, ScalerKind::Const]),
            target in 0.01f64..1.0,
            initial in 0.01f64..64.0,
        ) {
            let mut scaler = kind.config(target, initial).build().unwrap();
            for s in cumulative(&steps) {
                let limit = scaler.sample(&s);
                prop_assert!(limit.is_finite(), "{} gave {}", kind, limit);
                prop_assert!(limit >= MIN_LIMIT, "{} gave {}", kind, limit);
            }
        }
    }
}
