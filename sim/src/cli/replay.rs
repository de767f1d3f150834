//! `sim replay-scaler`: recorded cgroup samples through a scaler, limits out.

use anyhow::{bail, Context, Result};
use clap::Args;
use controller::{CpuSample, ScalerKind};

#[derive(Args)]
pub struct ReplayArgs {
    /// captain, captain-smooth (beyond the paper: scale-downs sized from one-second means of
    /// usage), k8s-cpu, k8s-cpu-fast or const.
    #[arg(long)]
    pub scaler: ScalerKind,
    /// Throttle ratio (captain) or utilisation (k8s-cpu*); ignored by const.
    #[arg(long, default_value_t = 0.1)]
    pub target: f64,
    /// Starting limit, cores (the const limit for const).
    #[arg(long)]
    pub initial_limit: f64,
}

/// One row of recorded samples: cumulative counters, as cgroups report them (seconds).
#[derive(serde::Deserialize)]
pub struct SampleRow {
    pub t: f64,
    pub cpu_usage: f64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_time: f64,
}

pub fn cmd(a: ReplayArgs) -> Result<()> {
    let mut scaler = a.scaler.config(a.target, a.initial_limit).build()?;
    let stdin = std::io::stdin();
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(stdin.lock());
    let headers = reader
        .headers()
        .context("stdin: cannot read the CSV header")?
        .clone();
    let expected = [
        "t",
        "cpu_usage",
        "nr_periods",
        "nr_throttled",
        "throttled_time",
    ];
    if headers.iter().collect::<Vec<_>>() != expected {
        bail!(
            "stdin:1: header must be {}, got {}",
            expected.join(","),
            headers.iter().collect::<Vec<_>>().join(",")
        );
    }
    let mut out = csv::Writer::from_writer(std::io::stdout().lock());
    out.write_record(["t", "limit"])?;
    let mut prev: Option<SampleRow> = None;
    for (i, row) in reader.deserialize::<SampleRow>().enumerate() {
        let line = i + 2;
        let row = row.map_err(|e| anyhow::anyhow!("stdin:{line}: {}", csv_reason(&e)))?;
        if !row.t.is_finite() || !row.cpu_usage.is_finite() || !row.throttled_time.is_finite() {
            bail!("stdin:{line}: values must be finite numbers");
        }
        if row.cpu_usage < 0.0 || row.throttled_time < 0.0 {
            bail!("stdin:{line}: cpu_usage and throttled_time cannot be negative");
        }
        // Cumulative counters of one container: time and every counter only go forward.
        if let Some(p) = &prev {
            let back = [
                ("t", row.t < p.t),
                ("cpu_usage", row.cpu_usage < p.cpu_usage),
                ("nr_periods", row.nr_periods < p.nr_periods),
                ("nr_throttled", row.nr_throttled < p.nr_throttled),
                ("throttled_time", row.throttled_time < p.throttled_time),
            ];
            if let Some((field, _)) = back.iter().find(|(_, b)| *b) {
                bail!("stdin:{line}: {field} goes backwards (the samples are cumulative counters)");
            }
        }
        let limit = scaler.sample(&CpuSample {
            t: row.t,
            usage: row.cpu_usage,
            nr_periods: row.nr_periods,
            nr_throttled: row.nr_throttled,
            throttled_time: row.throttled_time,
        });
        out.write_record([row.t.to_string(), limit.to_string()])?;
        prev = Some(row);
    }
    out.flush()?;
    Ok(())
}

fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Deserialize { err, .. } => match err.field() {
            Some(f) => format!("field {}: {}", f + 1, err.kind()),
            None => err.kind().to_string(),
        },
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("expected {expected_len} fields, got {len}")
        }
        _ => e.to_string(),
    }
}
