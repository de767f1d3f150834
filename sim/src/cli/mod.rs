//! The `sim` subcommands, one module each, and what they share.

pub mod bench;
pub mod calibrate;
pub mod compare;
pub mod evaluate;
pub mod plot;
pub mod replay;
pub mod run;
pub mod scenario;
pub mod sweep;
pub mod trace;

use std::io::IsTerminal;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

/// The application and the workload of one run.
#[derive(Args, Debug, Clone)]
pub struct AppArgs {
    /// Application model: a built-in name or a scenario .toml file.
    #[arg(long, default_value = "hotel-reservation")]
    pub scenario: String,
    /// Workload: a built-in trace name, constant-N, `constant` (the scenario's constant
    /// workload) or a trace file.
    #[arg(long, default_value = "diurnal")]
    pub trace: String,
}

/// A progress bar on a terminal, nothing otherwise (logs stay clean).
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {{msg}} (eta {{eta}})"
        ))
        .expect("static template"),
    );
    bar
}

/// The record library refuses to overwrite a finished run; here the user can say so.
pub fn force_hint(e: record::RecordError) -> anyhow::Error {
    match e {
        record::RecordError::Exists(_) => anyhow::anyhow!("{e} (pass --force to replace it)"),
        e => e.into(),
    }
}

/// A workload's name for tables: a trace file's stem, or the name as given.
pub fn workload_name(spec: &str) -> String {
    std::path::Path::new(spec)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.to_string())
}
