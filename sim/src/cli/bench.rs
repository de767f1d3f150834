//! `sim bench`: how fast the simulator is, in events per second and simulated time per wall time.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use record::cli::ControlArgs;
use sim::run::run;

use super::AppArgs;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub app: AppArgs,
    #[command(flatten)]
    pub control: ControlArgs,
}

pub fn cmd(a: BenchArgs) -> Result<()> {
    let cfg = a.control.plan(&a.app.scenario, &a.app.trace)?;
    let start = Instant::now();
    let out = run(&cfg, None, &mut |_, _| {})?;
    let wall = start.elapsed().as_secs_f64();
    let simulated = (cfg.trace.len() + cfg.ramp_s) as f64;
    let peak_rss = peak_rss_mb();
    println!(
        "scenario {} trace {} ({} s simulated)",
        out.info.scenario, out.info.trace, simulated
    );
    println!("wall time           {wall:.2} s");
    println!("simulated / wall    {:.0}x", simulated / wall);
    println!(
        "events              {} ({:.2} M/s)",
        out.stats.events,
        out.stats.events as f64 / wall / 1e6
    );
    println!(
        "requests            {} ({:.0} k/s)",
        out.stats.arrivals,
        out.stats.arrivals as f64 / wall / 1e3
    );
    println!("calls               {}", out.stats.calls);
    println!("peak in flight      {}", out.peak_in_flight);
    match peak_rss {
        Some(mb) => println!("peak memory (RSS)   {mb:.1} MB"),
        None => println!("peak memory (RSS)   unknown (no /proc/self/status)"),
    }
    println!(
        "summary             allocation {:.2} cores, P99 {:.1} ms, SLO {}",
        out.info.summary.allocation,
        out.info.summary.p99_ms,
        if out.info.summary.slo_met {
            "met"
        } else {
            "missed"
        }
    );
    Ok(())
}

/// Peak resident set size from /proc (Linux), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
