use std::path::PathBuf;

use thiserror::Error;

/// Everything the simulator library can fail with. None of these name a command-line flag:
/// the binary adds that context.
#[derive(Debug, Error)]
pub enum SimError {
    /// A run or sweep description that cannot run (the reason says which value).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Controller(#[from] controller::ControllerError),
    #[error(transparent)]
    Record(#[from] record::RecordError),
    #[error(transparent)]
    Scenario(#[from] scenarios::ScenarioError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    /// A run of a sweep failed; `run` is its record directory.
    #[error("run {run}: {source}")]
    Run { run: PathBuf, source: Box<SimError> },
    /// A unit of a sweep failed (the first to fail; the others were not started).
    #[error("unit {unit}: {source}")]
    Unit { unit: String, source: Box<SimError> },
    #[error("unit {0} did not run (an earlier unit failed)")]
    NotRun(String),
    #[error("run {0} appears in more than one shard")]
    DuplicateRun(String),
    #[error("cannot start worker threads: {0}")]
    Threads(String),
}

/// The simulator's result type.
pub type Result<T, E = SimError> = std::result::Result<T, E>;
