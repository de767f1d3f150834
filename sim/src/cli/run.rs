//! `sim run`: one scenario, one trace, one scaler; the run record and its summary.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use record::cli::{ControlArgs, OutputArgs};
use record::RecordWriter;
use sim::run::run;

use super::{force_hint, progress_bar, AppArgs};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub app: AppArgs,
    #[command(flatten)]
    pub control: ControlArgs,
    /// Run record directory.
    #[arg(long, default_value = "runs/latest")]
    pub out: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn cmd(a: RunArgs) -> Result<()> {
    let mut cfg = a.control.plan(&a.app.scenario, &a.app.trace)?;
    cfg.services_csv = !a.output.no_services;
    let writer =
        RecordWriter::create(&a.out, a.output.force, cfg.services_csv).map_err(force_hint)?;
    let bar = progress_bar(0, "simulating");
    let start = Instant::now();
    let out = run(&cfg, Some(writer), &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    a.control.save_memory(&out.memory)?;
    let s = &out.info.summary;
    if a.output.json {
        println!("{}", serde_json::to_string_pretty(&out.info)?);
    } else {
        println!("{}", out.info.report());
        println!(
            "{} requests ({} incomplete), {} events in {:.1} s; record in {}",
            s.requests,
            s.incomplete,
            out.stats.events,
            start.elapsed().as_secs_f64(),
            a.out.display()
        );
    }
    Ok(())
}
