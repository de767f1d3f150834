//! `sim trace`: a trace's statistics, or a generated one.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use traces::Trace;

#[derive(Subcommand)]
pub enum TraceCmd {
    /// Print a trace's statistics as JSON.
    Stats {
        /// Built-in name or file.
        trace: String,
    },
    /// Generate a trace from a generator spec (JSON, e.g. '{"kind":"diurnal","trough":100,
    /// "peak":300,"period_s":3600,"noise":0.04}'); kinds: diurnal, bursty, noisy, step, constant.
    Gen {
        /// The generator and its settings, as JSON.
        spec: String,
        #[arg(long, default_value_t = 3600)]
        seconds: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file (stdout if omitted).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn cmd(c: TraceCmd) -> Result<()> {
    match c {
        TraceCmd::Stats { trace } => {
            let t = Trace::load(&trace)?;
            println!("{}", serde_json::to_string_pretty(&t.stats())?);
        }
        TraceCmd::Gen {
            spec,
            seconds,
            seed,
            out,
        } => {
            let g: traces::Generator = serde_json::from_str(&spec).context("generator spec")?;
            let t = g.generate(seconds, seed);
            match out {
                Some(p) => t.write(&p)?,
                None => std::io::stdout().write_all(t.to_text().as_bytes())?,
            }
        }
    }
    Ok(())
}
