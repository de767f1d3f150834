//! `sim scenario`: check a scenario and show where its CPU goes.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::Result;
use scenarios::Scenario;

pub fn cmd(name: &str, placement: bool) -> Result<()> {
    let s = Scenario::load(name)?;
    // Written at once, so that a reader that stops early (`| head`) ends the command quietly.
    let mut out = String::new();
    if placement {
        for svc in &s.file.services {
            writeln!(out, "{} {}", svc.name, svc.node)?;
        }
        std::io::stdout().write_all(out.as_bytes())?;
        return Ok(());
    }
    let per = s.mean_cpu_per_request();
    let total: f64 = per.iter().sum();
    writeln!(
        out,
        "{} ({}): {} services on {} nodes, SLO {} ms, multiplier {}",
        s.name,
        s.source,
        s.services.len(),
        s.nodes.len(),
        s.slo_ms,
        s.multiplier
    )?;
    // Nodes that are not plain processor-shared whole cores: a quota buys something else there.
    let special = [
        (
            "scheduled per CPU",
            nodes_with(&s, &s.node_cpus, |n| format!("{n} CPUs")),
        ),
        (
            "SMT threads, two to a core",
            nodes_with(&s, &s.node_smt, |y| format!("yield {y}")),
        ),
    ];
    for (what, nodes) in special {
        if !nodes.is_empty() {
            writeln!(out, "{what}: {nodes}")?;
        }
    }
    writeln!(
        out,
        "CPU per request on the mix: {:.2} ms of request CPU (collectors not included)",
        total * 1000.0
    )?;
    writeln!(
        out,
        "{:<32} {:>5} {:>7} {:>10} {:>6}  collector, background and periodic CPU",
        "service", "group", "threads", "ms/request", "share"
    )?;
    for (svc, c) in s.services.iter().zip(&per) {
        // What the collector adds: its share of the container's CPU, and one collection's
        // work and width (the burst that can spend a period's quota at once).
        let gc = svc.runtime.map(|r| {
            format!(
                "{} every {:.2} core-s of requests: {:.0} core-ms on {} threads, {:.0}% of CPU",
                if r.stop_the_world {
                    "pause"
                } else {
                    "concurrent mark"
                },
                r.trigger_cpu,
                r.work * 1000.0,
                r.threads,
                100.0 * r.cpu_share()
            )
        });
        let background =
            (svc.background > 0.0).then(|| format!("background {:.3} cores", svc.background));
        let timers = svc.periodic.iter().map(|p| {
            format!(
                "every {:.1} s {:.0} core-ms on {} thread{} ({:.3} cores)",
                p.every as f64 * 0.1,
                p.work * 1000.0,
                p.threads,
                if p.threads == 1 { "" } else { "s" },
                p.cores()
            )
        });
        let extra = gc
            .into_iter()
            .chain(background)
            .chain(timers)
            .collect::<Vec<_>>()
            .join("; ");
        let line = format!(
            "{:<32} {:>5} {:>7} {:>10.3} {:>5.1}%  {extra}",
            svc.name,
            svc.group,
            svc.threads,
            c * 1000.0,
            100.0 * c / total.max(1e-12)
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

/// "name (detail), ..." for the nodes where `per_node` has a value.
fn nodes_with<T: Copy>(
    s: &Scenario,
    per_node: &[Option<T>],
    detail: impl Fn(T) -> String,
) -> String {
    s.nodes
        .iter()
        .zip(per_node)
        .filter_map(|((name, _), v)| v.map(|v| format!("{name} ({})", detail(v))))
        .collect::<Vec<_>>()
        .join(", ")
}
