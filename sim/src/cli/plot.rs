//! `sim plot`: run records as a PNG.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub struct PlotArgs {
    /// Run record directories (several overlay for comparison).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long, default_value = "run.png")]
    pub out: PathBuf,
    /// Stack one run's allocation by service (needs services.csv).
    #[arg(long)]
    pub per_service: bool,
    /// Draw each service's usage and throttle ratio second by second instead (needs
    /// services.csv; several runs overlay).
    #[arg(long, conflicts_with = "per_service")]
    pub per_second: bool,
    #[arg(long)]
    pub title: Option<String>,
    #[arg(long, default_value_t = 1400)]
    pub width: u32,
    #[arg(long, default_value_t = 1300)]
    pub height: u32,
}

pub fn cmd(a: PlotArgs) -> Result<()> {
    let runs = a
        .runs
        .iter()
        .map(|d| record::Record::read(d))
        .collect::<Result<Vec<_>, _>>()?;
    if a.per_second {
        let series = runs
            .iter()
            .map(|r| {
                Ok(plots::Series {
                    label: r.dir.display().to_string(),
                    rows: r.services()?.with_context(|| {
                        format!("{}: no services.csv to draw per second", r.dir.display())
                    })?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let title = a.title.clone().unwrap_or_else(|| {
            let i = &runs[0].info;
            format!("{} on {}: per second", i.scenario, i.trace)
        });
        plots::per_second(&series, &a.out, &title)?;
        println!("{}", a.out.display());
        return Ok(());
    }
    plots::plot(
        &runs,
        &a.out,
        &plots::Options {
            width: a.width,
            height: a.height,
            per_service: a.per_service,
            title: a.title,
        },
    )?;
    println!("{}", a.out.display());
    Ok(())
}
