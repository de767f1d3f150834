//! The `live` subcommands, one module each.

pub mod agent;
pub mod bench;
pub mod demo;
pub mod run;

/// The record library refuses to overwrite a finished run; here the user can say so.
pub fn force_hint(e: record::RecordError) -> anyhow::Error {
    match e {
        record::RecordError::Exists(_) => anyhow::anyhow!("{e} (pass --force to replace it)"),
        e => e.into(),
    }
}
