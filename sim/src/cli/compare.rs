//! `--compare-targets`: the model's best baseline targets against ones measured on a real
//! cluster (`../shared/calibration/paper-best-targets.csv`), the check every calibration
//! change is judged by.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sim::sweep::Best;

/// Two targets this close are the same cell of the 0.1-spaced grid: "within 0.1".
const WITHIN: f64 = 0.1 + 1e-9;

/// One cell's best K8s-CPU and K8s-CPU-Fast targets, measured elsewhere.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Measured {
    pub app: String,
    pub workload: String,
    pub k8s_cpu: f64,
    pub k8s_cpu_fast: f64,
}

/// Reads `app,workload,k8s_cpu,k8s_cpu_fast` rows; refuses a file that has none, a target
/// outside (0, 1] or a cell twice.
pub fn read(path: &Path) -> Result<Vec<Measured>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut cells: Vec<Measured> = Vec::new();
    for (i, row) in reader.deserialize::<Measured>().enumerate() {
        // Line 1 is the header.
        let line = i + 2;
        let m = row.with_context(|| {
            format!(
                "{}: line {line}: expected app,workload,k8s_cpu,k8s_cpu_fast",
                path.display()
            )
        })?;
        for (name, t) in [("k8s_cpu", m.k8s_cpu), ("k8s_cpu_fast", m.k8s_cpu_fast)] {
            if !(t > 0.0 && t <= 1.0) {
                bail!(
                    "{}: line {line}: {name} must be a utilisation in (0, 1], got {t}",
                    path.display()
                );
            }
        }
        if cells
            .iter()
            .any(|c| c.app == m.app && c.workload == m.workload)
        {
            bail!(
                "{}: line {line}: {} / {} appears twice",
                path.display(),
                m.app,
                m.workload
            );
        }
        cells.push(m);
    }
    if cells.is_empty() {
        bail!("{}: no cells", path.display());
    }
    Ok(cells)
}

/// The model's best target of one baseline in one cell: `None` when no target met the SLO,
/// absent when the evaluation did not run that cell.
fn model_target(best: &[Best], app: &str, workload: &str, scaler: &str) -> Option<Option<f64>> {
    best.iter()
        .find(|b| b.app == app && b.workload == workload && b.scaler == scaler)
        .map(|b| b.target1.as_deref().and_then(|t| t.parse().ok()))
}

/// A Markdown table of the measured cells against the model's, and a summary line: how many
/// baseline cells are within 0.1, the mean difference and the mean absolute difference.
pub fn markdown(best: &[Best], measured: &[Measured]) -> String {
    let fmt = |t: Option<f64>| t.map_or("N/A".to_string(), |t| format!("{t}"));
    let mut out = String::from(
        "| App | Workload | measured K8s-CPU / Fast | model K8s-CPU / Fast | within 0.1 |\n|---|---|---|---|---:|\n",
    );
    let (mut cells, mut within, mut na) = (0, 0, 0);
    let mut diffs = Vec::new();
    let mut missing = Vec::new();
    for m in measured {
        let model = [
            model_target(best, &m.app, &m.workload, "k8s-cpu"),
            model_target(best, &m.app, &m.workload, "k8s-cpu-fast"),
        ];
        let [Some(k8s), Some(fast)] = model else {
            missing.push(format!("{} / {}", m.app, m.workload));
            continue;
        };
        let mut here = 0;
        for (model, measured) in [(k8s, m.k8s_cpu), (fast, m.k8s_cpu_fast)] {
            cells += 1;
            match model {
                Some(t) => {
                    diffs.push(t - measured);
                    if (t - measured).abs() <= WITHIN {
                        here += 1;
                    }
                }
                None => na += 1,
            }
        }
        within += here;
        let _ = writeln!(
            out,
            "| {} | {} | {} / {} | {} / {} | {here} of 2 |",
            m.app,
            m.workload,
            m.k8s_cpu,
            m.k8s_cpu_fast,
            fmt(k8s),
            fmt(fast)
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let abs: Vec<f64> = diffs.iter().map(|d| d.abs()).collect();
    let _ = write!(
        out,
        "\n{within} of {cells} baseline cells within 0.1 of the measured target; model minus \
         measured {:+.3} on the mean, {:.3} mean absolute",
        mean(&diffs),
        mean(&abs)
    );
    if na > 0 {
        let _ = write!(out, "; {na} with no target meeting the SLO (N/A)");
    }
    out.push_str(".\n");
    if !missing.is_empty() {
        let _ = writeln!(out, "Not in this evaluation: {}.", missing.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn best(app: &str, workload: &str, scaler: &str, target: Option<&str>) -> Best {
        Best {
            app: app.into(),
            workload: workload.into(),
            scaler: scaler.into(),
            target1: target.map(Into::into),
            target2: target.map(Into::into),
            allocation: target.map(|_| 10.0),
            p99_ms: target.map(|_| 50.0),
            slo_ms: 100.0,
            run: None,
        }
    }

    fn measured(app: &str, workload: &str, k8s: f64, fast: f64) -> Measured {
        Measured {
            app: app.into(),
            workload: workload.into(),
            k8s_cpu: k8s,
            k8s_cpu_fast: fast,
        }
    }

    #[test]
    fn counts_cells_within_a_grid_step_and_says_what_is_missing() {
        let model = [
            best("a", "diurnal", "k8s-cpu", Some("0.6")),
            best("a", "diurnal", "k8s-cpu-fast", Some("0.9")),
            best("a", "diurnal", "autothrottle", Some("tower")),
            best("a", "noisy", "k8s-cpu", None),
            best("a", "noisy", "k8s-cpu-fast", Some("0.4")),
        ];
        let cluster = [
            measured("a", "diurnal", 0.7, 0.7),
            measured("a", "noisy", 0.5, 0.4),
            measured("b", "diurnal", 0.5, 0.5),
        ];
        let md = markdown(&model, &cluster);
        // 0.6 against 0.7 is within (a float 0.1 apart), 0.9 against 0.7 is not, N/A never.
        assert!(
            md.contains("| a | diurnal | 0.7 / 0.7 | 0.6 / 0.9 | 1 of 2 |"),
            "{md}"
        );
        assert!(
            md.contains("| a | noisy | 0.5 / 0.4 | N/A / 0.4 | 1 of 2 |"),
            "{md}"
        );
        assert!(md.contains("2 of 4 baseline cells within 0.1"), "{md}");
        // Differences over the three cells with a target: -0.1, +0.2, 0.
        assert!(
            md.contains("+0.033 on the mean, 0.100 mean absolute"),
            "{md}"
        );
        assert!(md.contains("1 with no target meeting the SLO"), "{md}");
        assert!(md.contains("Not in this evaluation: b / diurnal."), "{md}");
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let check = |text: &str, needle: &str| {
            let path = dir.path().join("t.csv");
            std::fs::write(&path, text).unwrap();
            let err = format!("{:#}", read(&path).unwrap_err());
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        };
        check("app,workload,k8s_cpu,k8s_cpu_fast\n", "no cells");
        check(
            "app,workload,k8s_cpu,k8s_cpu_fast\nh,d,0.7,seven\n",
            "line 2: expected app,workload",
        );
        check(
            "app,workload,k8s_cpu,k8s_cpu_fast\nh,d,0.7,0.7\nh,n,1.5,0.7\n",
            "line 3: k8s_cpu must be a utilisation in (0, 1], got 1.5",
        );
        check(
            "app,workload,k8s_cpu,k8s_cpu_fast\nh,d,0.7,0.7\nh,d,0.6,0.7\n",
            "line 3: h / d appears twice",
        );
        let err = format!("{:#}", read(&dir.path().join("none.csv")).unwrap_err());
        assert!(err.contains("cannot read"), "{err}");
        let path = dir.path().join("ok.csv");
        std::fs::write(&path, "app,workload,k8s_cpu,k8s_cpu_fast\nh,d,0.7,0.8\n").unwrap();
        assert_eq!(read(&path).unwrap(), vec![measured("h", "d", 0.7, 0.8)]);
    }
}
