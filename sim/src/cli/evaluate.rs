//! `sim evaluate` (the paper's Table 1) and `sim merge` (the shards of a sharded run, back
//! together).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use scenarios::Scenario;
use sim::sweep::{self, Contender, Unit, Workload};
use traces::{Load, Trace};

use super::compare;
use super::sweep::{execute_with_progress, grid_for, ManyArgs};

#[derive(Args)]
pub struct EvaluateArgs {
    /// Comma-separated applications (built-in names or .toml files).
    #[arg(
        long,
        default_value = "hotel-reservation,social-network,train-ticket",
        value_delimiter = ','
    )]
    pub apps: Vec<String>,
    /// Comma-separated workloads: diurnal, constant, noisy, bursty (or any trace name).
    #[arg(
        long,
        default_value = "diurnal,constant,noisy,bursty",
        value_delimiter = ','
    )]
    pub workloads: Vec<String>,
    /// Read the workload traces (NAME.txt, and diurnal-2.txt for the warm-up) from this
    /// directory instead of the built-in generated ones (e.g. ../shared/traces).
    #[arg(long)]
    pub trace_dir: Option<PathBuf>,
    /// Run every baseline target instead of stopping at the cheapest that meets the SLO.
    #[arg(long)]
    pub full_grid: bool,
    /// Do not draw the comparison PNGs.
    #[arg(long)]
    pub no_plots: bool,
    /// Also run every contender with a CFS burst (K8s-CPU, K8s-CPU-Fast and Autothrottle,
    /// each container bursting up to --burst-fraction of its quota) and write table-burst.md
    /// beside the paper's table.
    #[arg(long)]
    pub with_burst: bool,
    /// Also run the Autothrottle protocol with the artifact's learner as its Tower
    /// (`autothrottle-original`), as a column of table-burst.md.
    #[arg(long)]
    pub with_original: bool,
    /// Also run the Autothrottle protocol with the load's variability in the Tower's context
    /// (`autothrottle+cv`), as a column of table-burst.md.
    #[arg(long)]
    pub with_variability: bool,
    /// Also run the Autothrottle protocol over Captains that size their scale-downs from
    /// one-second means of usage (`autothrottle-smooth`; with --with-burst also
    /// `autothrottle-smooth+burst`), as columns of table-burst.md.
    #[arg(long)]
    pub with_smooth: bool,
    /// Compare the best K8s-CPU and K8s-CPU-Fast targets with ones measured elsewhere: a CSV
    /// of `app,workload,k8s_cpu,k8s_cpu_fast` (../shared/calibration/paper-best-targets.csv);
    /// writes calibration.md.
    #[arg(long)]
    pub compare_targets: Option<PathBuf>,
    #[command(flatten)]
    pub many: ManyArgs,
    /// Output directory: results.csv, best.csv, table.csv, table.md, plots/ and run records.
    #[arg(long, default_value = "runs/evaluate")]
    pub out: PathBuf,
}

pub fn cmd(a: EvaluateArgs) -> Result<()> {
    // Read first: a bad file should not wait for an hour of runs to be refused.
    let measured = a
        .compare_targets
        .as_deref()
        .map(compare::read)
        .transpose()?;
    let trace = |name: &str, app: &Scenario| -> Result<Arc<Trace>> {
        let t = match (&a.trace_dir, name) {
            (_, "constant") => app.workload("constant")?,
            (Some(dir), n) => Trace::read(&dir.join(format!("{n}.txt")))?,
            (None, n) => app.workload(n)?,
        };
        a.many.trim(t)
    };
    let mut chains = Vec::new();
    let mut grids = Vec::new();
    for spec in &a.apps {
        let app = Arc::new(Scenario::load(spec)?);
        let workloads = a
            .workloads
            .iter()
            .map(|w| {
                Ok(Workload {
                    name: w.clone(),
                    trace: trace(w, &app)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut contenders = vec![Contender::Autothrottle];
        if a.with_burst {
            contenders.push(Contender::AutothrottleBurst);
        }
        if a.with_original {
            contenders.push(Contender::AutothrottleOriginal);
        }
        if a.with_variability {
            contenders.push(Contender::AutothrottleCv);
        }
        if a.with_smooth {
            contenders.push(Contender::AutothrottleSmooth);
            if a.with_burst {
                contenders.push(Contender::AutothrottleSmoothBurst);
            }
        }
        for contender in contenders {
            chains.push(Unit::Autothrottle {
                app: app.clone(),
                warmup: Workload {
                    name: "diurnal-2".into(),
                    trace: trace("diurnal-2", &app)?,
                },
                evals: workloads.clone(),
                contender,
            });
        }
        let baselines: &[Contender] = if a.with_burst {
            &[
                Contender::K8sCpu,
                Contender::K8sCpuFast,
                Contender::K8sCpuBurst,
                Contender::K8sCpuFastBurst,
            ]
        } else {
            &[Contender::K8sCpu, Contender::K8sCpuFast]
        };
        for w in &workloads {
            for &c in baselines {
                grids.push(Unit::Grid {
                    app: app.clone(),
                    workload: w.clone(),
                    contender: c,
                    targets: grid_for(c, !a.full_grid),
                    descending: !a.full_grid,
                });
            }
        }
    }
    // Long chains first, so that they start at once.
    chains.extend(grids);
    let units = a.many.shard(sweep::split_grids(chains))?;
    let settings = a.many.settings(&a.out, Load::users())?;
    let rows = execute_with_progress(&units, &settings)?;
    finish_evaluation(&a.out, rows, !a.no_plots, measured.as_deref())
}

/// Writes results, best, the table (CSV and Markdown) and, optionally, the comparison plots.
fn finish_evaluation(
    out: &std::path::Path,
    rows: Vec<sweep::ResultRow>,
    plots: bool,
    measured: Option<&[compare::Measured]>,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let best = sweep::best(&rows);
    let table = sweep::table(&best);
    sweep::write_csv(&out.join("results.csv"), &rows)?;
    sweep::write_csv(&out.join("best.csv"), &best)?;
    sweep::write_csv(&out.join("table.csv"), &table)?;
    let md = sweep::table_markdown(&table);
    std::fs::write(out.join("table.md"), &md)
        .with_context(|| format!("{}: cannot write table.md", out.display()))?;
    print!("{md}");
    if best.iter().any(|b| {
        b.scaler != "autothrottle" && b.scaler.starts_with("autothrottle")
            || b.scaler.ends_with("+burst")
    }) {
        let md = sweep::burst_table_markdown(&best);
        std::fs::write(out.join("table-burst.md"), &md)
            .with_context(|| format!("{}: cannot write table-burst.md", out.display()))?;
        print!("\n{md}");
    }
    if let Some(measured) = measured {
        let md = compare::markdown(&best, measured);
        std::fs::write(out.join("calibration.md"), &md)
            .with_context(|| format!("{}: cannot write calibration.md", out.display()))?;
        print!("\n{md}");
    }
    if plots {
        let dir = out.join("plots");
        std::fs::create_dir_all(&dir)?;
        let mut cells: Vec<(String, String)> = best
            .iter()
            .map(|b| (b.app.clone(), b.workload.clone()))
            .collect();
        cells.dedup();
        for (app, workload) in cells {
            let runs: Vec<record::Record> = best
                .iter()
                .filter(|b| b.app == app && b.workload == workload)
                .filter_map(|b| b.run.as_ref())
                .map(|r| record::Record::read(&out.join(r)))
                .collect::<Result<_, _>>()?;
            if runs.is_empty() {
                continue;
            }
            let file = dir.join(format!("{app}-{workload}.png"));
            let opts = plots::Options {
                title: Some(format!(
                    "{app} on {workload}: best K8s-CPU, K8s-CPU-Fast and Autothrottle"
                )),
                ..Default::default()
            };
            if let Err(e) = plots::plot(&runs, &file, &opts) {
                eprintln!("warning: {}: not drawn: {e}", file.display());
            }
        }
        println!("plots: {}", dir.display());
    }
    println!(
        "table: {}  results: {}",
        out.join("table.md").display(),
        out.join("results.csv").display()
    );
    Ok(())
}

#[derive(Args)]
pub struct MergeArgs {
    /// Output directories of the shards.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Where the merged results go.
    #[arg(long)]
    pub out: PathBuf,
    /// Also draw the evaluation plots (needs the shards' run records under --out).
    #[arg(long)]
    pub plots: bool,
    /// As `sim evaluate --compare-targets`: the merged best targets against measured ones.
    #[arg(long)]
    pub compare_targets: Option<PathBuf>,
}

pub fn merge(a: MergeArgs) -> Result<()> {
    let measured = a
        .compare_targets
        .as_deref()
        .map(compare::read)
        .transpose()?;
    let parts = a
        .dirs
        .iter()
        .map(|d| sweep::read_results(&d.join("results.csv")))
        .collect::<sim::Result<Vec<_>>>()?;
    let rows = sweep::merge(parts)?;
    finish_evaluation(&a.out, rows, a.plots, measured.as_deref())
}
