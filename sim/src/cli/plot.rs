//! `sim plot`: run records as a PNG.

use std::path::PathBuf;

use anyhow::Result;
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
