use std::path::PathBuf;

use thiserror::Error;

/// Why a scenario could not be loaded. Every variant names the file.
#[derive(Debug, Error)]
pub enum ScenarioError {
    #[error("{file}: cannot read: {cause}")]
    Read {
        file: PathBuf,
        cause: std::io::Error,
    },
    /// The TOML is malformed or a field has the wrong type or an unknown value.
    #[error("{file}:{line}:{column}: {path}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        path: String,
        message: String,
    },
    /// The TOML is well-formed but describes an impossible application.
    #[error("{file}: {path}: {reason}")]
    Invalid {
        file: String,
        path: String,
        reason: String,
    },
    #[error(
        "unknown scenario '{0}' (built in: hotel-reservation, social-network, train-ticket, demo; or a .toml path)"
    )]
    UnknownBuiltin(String),
    /// The workload could not be loaded.
    #[error(transparent)]
    Trace(#[from] traces::TraceError),
    /// `constant` was asked of a scenario that has no constant workload.
    #[error("scenario {0} has no constant_rps, so it has no `constant` workload")]
    NoConstant(String),
}
