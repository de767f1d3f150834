//! Replaying a request log: the simulator sends exactly the logged requests, at their times,
//! of their types.

use std::sync::Arc;

use controller::{ScalerKind, Targets};
use record::arrivals::{Arrivals, ArrivalsWriter};
use record::{Record, RecordWriter, RunPlan};
use scenarios::Scenario;
use sim::run::run;
use traces::Trace;

/// A log of `seconds` seconds: bursts of gets in even seconds, a few puts in odd ones.
fn log(seconds: usize) -> Arrivals {
    let mut a = Arrivals {
        names: vec!["get".into(), "put".into()],
        ..Default::default()
    };
    for s in 0..seconds {
        let (n, kind) = if s % 2 == 0 { (40 + s % 7, 0) } else { (3, 1) };
        for i in 0..n {
            a.t.push(s as f64 + i as f64 / n as f64 * 0.2);
            a.kind.push(kind);
        }
    }
    a
}

fn plan(seconds: usize, ramp_s: usize, log: Arrivals) -> RunPlan {
    let scenario = Arc::new(Scenario::builtin("demo").unwrap());
    let counts = log.per_second();
    let mut p = RunPlan::new(
        scenario,
        Arc::new(Trace::new("replay", counts[ramp_s..seconds].to_vec())),
        ScalerKind::Const,
        Targets::new(0.1, 0.1),
    );
    p.ramp_s = ramp_s;
    p.multiplier = Some(1.0);
    p.services_csv = true;
    p.arrivals = Some(Arc::new(log));
    p
}

#[test]
fn every_logged_request_is_sent_at_its_second_with_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let log = log(60);
    let p = plan(60, 10, log.clone());
    let out = run(
        &p,
        Some(RecordWriter::create(dir.path(), false, true).unwrap()),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(out.stats.arrivals, log.len() as u64);
    let r = Record::read(dir.path()).unwrap();
    let rows = r.requests().unwrap().unwrap();
    for (name, kind) in [("get", 0u16), ("put", 1)] {
        let mut expected = vec![0u64; 60];
        for (t, k) in log.t.iter().zip(&log.kind) {
            if *k == kind {
                expected[t.floor() as usize] += 1;
            }
        }
        let got: Vec<u64> = rows
            .iter()
            .filter(|q| q.request == name)
            .map(|q| q.sent)
            .collect();
        assert_eq!(got, expected, "{name} per second");
    }
    // After the ramp, every request is judged.
    let after: usize = log.t.iter().filter(|&&t| t >= 10.0).count();
    assert_eq!(out.info.summary.requests as usize, after);

    // Without the log, the same plan draws other arrivals.
    let mut drawn = p.clone();
    drawn.arrivals = None;
    let other = run(&drawn, None, &mut |_, _| {}).unwrap();
    assert_ne!(other.stats.arrivals, out.stats.arrivals);
}

#[test]
fn a_log_that_does_not_fit_the_run_is_refused() {
    let mut bad = log(60);
    bad.names[1] = "delete".into();
    let e = run(&plan(60, 10, bad), None, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("'delete'"), "{e}");
    let mut p = plan(60, 10, log(60));
    p.trace = Arc::new(Trace::new("short", vec![5; 20]));
    let e = run(&p, None, &mut |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("past the run's 30 s"), "{e}");
}

#[test]
fn sim_run_replays_a_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("arrivals.csv.gz");
    let mut w = ArrivalsWriter::create(&path).unwrap();
    let l = log(40);
    for (t, k) in l.t.iter().zip(&l.kind) {
        w.write(*t, &l.names[*k as usize]).unwrap();
    }
    w.finish().unwrap();
    let out_dir = dir.path().join("run");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sim"))
        .args([
            "run",
            "--scenario",
            "demo",
            "--scaler",
            "const",
            "--ramp",
            "5",
        ])
        .args(["--arrivals", path.to_str().unwrap()])
        .args(["--out", out_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = Record::read(&out_dir).unwrap();
    let sent: u64 = r.requests().unwrap().unwrap().iter().map(|q| q.sent).sum();
    assert_eq!(sent, l.len() as u64);
    assert!(r.info.trace.starts_with("replay of"), "{}", r.info.trace);
    // A ramp longer than the log is refused with the reason.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["run", "--scenario", "demo", "--ramp", "180"])
        .args(["--arrivals", path.to_str().unwrap()])
        .args(["--out", dir.path().join("x").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("within the 180 s ramp"), "{err}");
}
