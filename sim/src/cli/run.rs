//! `sim run`: one scenario, one trace, one scaler; the run record and its summary.

use std::path::PathBuf;
use std::time::Instant;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
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
    /// Replay a request log instead of drawing arrivals from the trace: a file of
    /// `t,request` lines (`.gz` or plain), or a live run record (its arrivals.csv.gz). Every
    /// request is sent at its time with its type, the ramp included (give the recorded run's
    /// --ramp); the trace is then the log's per-second counts.
    #[arg(long, value_name = "FILE|RECORD")]
    pub arrivals: Option<PathBuf>,
    /// Run record directory.
    #[arg(long, default_value = "runs/latest")]
    pub out: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn cmd(a: RunArgs) -> Result<()> {
    let mut cfg = a.control.plan(&a.app.scenario, &a.app.trace)?;
    cfg.services_csv = !a.output.no_services;
    if let Some(path) = &a.arrivals {
        replay(&mut cfg, path)?;
    }
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

/// Makes `cfg` replay the request log at `path` (a file or a record directory).
fn replay(cfg: &mut record::RunPlan, path: &Path) -> Result<()> {
    let file = if path.is_dir() {
        path.join(record::arrivals::FILE)
    } else {
        path.to_path_buf()
    };
    let log = record::arrivals::Arrivals::read(&file)
        .with_context(|| format!("--arrivals {}", path.display()))?;
    if log.is_empty() {
        bail!("--arrivals {}: the log holds no request", file.display());
    }
    let counts = log.per_second();
    if counts.len() <= cfg.ramp_s {
        bail!(
            "--arrivals {}: the log ends at {} s, within the {} s ramp (give the recorded run's --ramp)",
            file.display(),
            counts.len(),
            cfg.ramp_s
        );
    }
    cfg.trace = Arc::new(traces::Trace::new(
        format!("replay of {}", file.display()),
        counts[cfg.ramp_s..].to_vec(),
    ));
    cfg.multiplier = Some(1.0);
    cfg.load = traces::Load::Poisson;
    cfg.arrivals = Some(Arc::new(log));
    Ok(())
}
