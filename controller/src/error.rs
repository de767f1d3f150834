use thiserror::Error;

/// Everything the controller can refuse.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ControllerError {
    /// A throttle or utilisation target outside the range the scaler accepts.
    #[error("target {value} is outside {min}..={max}")]
    TargetOutOfRange { value: f64, min: f64, max: f64 },
    /// A limit that is not a finite positive number of cores.
    #[error("limit {0} is not a finite number of cores > 0")]
    BadLimit(f64),
    /// A K8s-CPU period or window that cannot work.
    #[error("k8s-cpu needs 0 < period <= window, got period {period} s, window {window} s")]
    BadWindow { period: f64, window: f64 },
    /// A Captain averaging a number of usage samples it cannot hold.
    #[error("a Captain averages 1 to {max} usage samples per history entry, got {got}")]
    BadUsageSamples { got: usize, max: usize },
    /// An unknown scaler name.
    #[error(
        "unknown scaler '{0}' (expected captain, captain-smooth, k8s-cpu, k8s-cpu-fast or const)"
    )]
    UnknownScaler(String),
    /// A Tower parameter that cannot work.
    #[error("bad tower setting: {0}")]
    BadTower(String),
    /// A scaler, targets and Tower that do not go together.
    #[error("{0}")]
    Setup(String),
}
