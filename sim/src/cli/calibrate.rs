//! `sim calibrate`: fit a scenario's CPU costs to recorded runs (sim or live).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use record::Record;
use scenarios::Scenario;
use sim::calibrate;

#[derive(Args)]
#[command(after_help = "Example (the demo app, live):\n  \
    live run --scenario demo --trace wave.txt --scaler const --initial-limit 2 --mix-cycle 10 --out runs/measured\n  \
    sim calibrate --record runs/measured --scenario demo --out demo-fitted.toml\n  \
    sim sweep --scenario demo-fitted.toml --trace diurnal\n\n\
    The topology (services, calls, request mix, nodes, collectors) comes from --scenario; the \
    CPU of every call and each service's background CPU are fitted to the records' \
    per-second usage (services.csv) against the requests sent (requests.csv), then the network \
    delay per hop to their median latency, then each service's calls' variability to the scatter \
    of its per-second usage. Measure under a load whose rate varies (a trace file) and whose mix \
    changes (--mix-cycle, or a second run with another --mix): under one mix the fit cannot tell \
    apart calls that the mix always sends together.")]
pub struct CalibrateArgs {
    /// A run record to fit (repeat for several; sim or live, with per-second rows).
    #[arg(long = "record", required = true)]
    pub records: Vec<PathBuf>,
    /// The app's topology: a built-in name or a scenario .toml file.
    #[arg(long)]
    pub scenario: String,
    /// Where to write the fitted scenario.
    #[arg(long)]
    pub out: PathBuf,
    /// Where to draw each service's measured and re-simulated usage and throttle ratio per
    /// second (default: beside --out, `NAME.fit.png`).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Replace --out (and the re-simulated records beside it, `NAME.resim/`) if they exist.
    #[arg(long)]
    pub force: bool,
    /// Keep the topology's variability: fit the costs and the delay only (the variability
    /// search re-simulates the records ten times).
    #[arg(long)]
    pub keep_variability: bool,
}

pub fn cmd(a: CalibrateArgs) -> Result<()> {
    let resim_dir = a.out.with_extension("resim");
    for path in [&a.out, &resim_dir] {
        if path.exists() && !a.force {
            bail!("{} exists (pass --force to replace it)", path.display());
        }
    }
    let topology = Scenario::load(&a.scenario)?;
    let records = a
        .records
        .iter()
        .map(|d| Record::read(d).with_context(|| format!("--record {}", d.display())))
        .collect::<Result<Vec<_>>>()?;
    let c = calibrate::calibrate(
        &topology,
        &records,
        (!a.keep_variability)
            .then(|| resim_dir.join("search"))
            .as_deref(),
    )?;
    print!("{}", c.costs.report());
    match c.delay_ms {
        Some(ms) => println!(
            "network delay per hop: {ms:.2} ms (was {:.2} ms in {}): the re-simulated median latency matches the measured one",
            topology.file.network_delay.mean_ms(),
            topology.source
        ),
        None => println!(
            "network delay per hop: kept at {:.2} ms (the CPU alone already gives a median as slow as measured)",
            topology.file.network_delay.mean_ms()
        ),
    }
    if let Some(fits) = &c.variability {
        println!("variability: each service's calls' cv, as a factor on the topology's");
        print!("{}", calibrate::variability_report(fits));
        if let Some(ms) = c.delay_after_variability_ms {
            println!("network delay per hop, with the fitted variability: {ms:.2} ms");
        }
    }
    let file = c.file;
    // What the fitted model says about each record, beside what was measured; the
    // re-simulations are kept as records.
    let fitted = Scenario::compile(&topology.source, file.clone())?;
    let again = calibrate::resimulate(&fitted, &records, Some(&resim_dir))?;
    println!(
        "{:<40} {:>22} {:>22} {:>18} {:>16}",
        "record (measured / re-simulated)", "usage, cores", "throttle ratio", "P50, ms", "P99, ms"
    );
    for (r, s) in records.iter().zip(&again) {
        let m = &r.info.summary;
        println!(
            "{:<40} {:>10.3} / {:<10.3} {:>10.3} / {:<10.3} {:>8.1} / {:<8.1} {:>7.1} / {:<7.1}",
            r.dir.display().to_string(),
            m.usage,
            s.usage,
            m.throttle_ratio,
            s.throttle_ratio,
            m.p50_ms,
            s.p50_ms,
            m.p99_ms,
            s.p99_ms
        );
    }
    let body = file.to_toml()?;
    let text = format!(
        "# Fitted by `sim calibrate` from {} with the topology of {}: every call's CPU, each\n\
         # service's background CPU, the network delay per hop{} were fitted; the rest is\n\
         # the topology's.\n{body}",
        a.records
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        topology.source,
        if a.keep_variability {
            ""
        } else {
            " and each service's calls' variability"
        }
    );
    let plot = a
        .plot
        .clone()
        .unwrap_or_else(|| a.out.with_extension("fit.png"));
    draw_fit(&records, &resim_dir, &plot)?;
    println!(
        "re-simulated records: {}  per-second plot: {}",
        resim_dir.display(),
        plot.display()
    );
    // Never write a scenario that does not load.
    Scenario::parse(&a.out.display().to_string(), &text)
        .context("the fitted scenario does not validate (a bug: please report it)")?;
    std::fs::write(&a.out, text).with_context(|| format!("cannot write {}", a.out.display()))?;
    println!("fitted scenario: {}", a.out.display());
    Ok(())
}

/// Measured against re-simulated, per service per second; several records follow one
/// another on the time axis.
fn draw_fit(records: &[Record], resim_dir: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let mut measured = Vec::new();
    let mut again = Vec::new();
    let mut offset = 0;
    for (i, r) in records.iter().enumerate() {
        let m = r.services()?.unwrap_or_default();
        let s = Record::read(&resim_dir.join((i + 1).to_string()))?
            .services()?
            .unwrap_or_default();
        let end = m.iter().chain(&s).map(|row| row.t).max().unwrap_or(0);
        let shift = |mut row: record::ServiceRow| {
            row.t += offset;
            row
        };
        measured.extend(m.into_iter().map(shift));
        again.extend(s.into_iter().map(shift));
        offset += end;
    }
    plots::per_second(
        &[
            plots::Series {
                label: "measured".into(),
                rows: measured,
            },
            plots::Series {
                label: "re-simulated (fitted)".into(),
                rows: again,
            },
        ],
        out,
        &format!(
            "sim calibrate: {}",
            records
                .iter()
                .map(|r| r.dir.display().to_string())
                .collect::<Vec<_>>()
                .join(" + ")
        ),
    )?;
    Ok(())
}
