//! The `sim` binary: bad input gets a clear message and a non-zero exit, never a panic.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn sim(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn fails_with(args: &[&str], stdin: Option<&str>, needle: &str) {
    let out = sim(args, stdin);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    // 1: the command refused the input; 2: the argument parser did. Never 101 (a panic).
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "{args:?}: {:?} {err}",
        out.status.code()
    );
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

const HEADER: &str = "t,cpu_usage,nr_periods,nr_throttled,throttled_time\n";

#[test]
fn replay_scaler_writes_a_limit_per_row() {
    let mut input = String::from(HEADER);
    for i in 0..=20 {
        let t = i as f64 * 0.1;
        input.push_str(&format!("{t},{},{i},0,0\n", 1.0 * t));
    }
    let out = sim(
        &[
            "replay-scaler",
            "--scaler",
            "captain",
            "--target",
            "0.1",
            "--initial-limit",
            "32",
        ],
        Some(&input),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "t,limit");
    assert_eq!(lines.len(), 22);
    assert_eq!(lines[1], "0,32");
    // Two decisions at 1 core of steady usage, each at most halving: 32 -> 16 -> 8.
    assert_eq!(lines[11].split(',').nth(1), Some("16"));
    assert_eq!(lines[21].split(',').nth(1), Some("8"));
}

#[test]
fn replay_scaler_names_the_bad_line() {
    let input = format!("{HEADER}0,0,0,0,0\n0.1,abc,1,0,0\n");
    fails_with(
        &[
            "replay-scaler",
            "--scaler",
            "k8s-cpu",
            "--initial-limit",
            "4",
            "--target",
            "0.5",
        ],
        Some(&input),
        "stdin:3: field 2",
    );
    let input = format!("{HEADER}0,0,0,0\n");
    fails_with(
        &[
            "replay-scaler",
            "--scaler",
            "captain",
            "--initial-limit",
            "4",
        ],
        Some(&input),
        "stdin:2: expected 5 fields, got 4",
    );
    fails_with(
        &[
            "replay-scaler",
            "--scaler",
            "captain",
            "--initial-limit",
            "4",
        ],
        Some("a,b\n1,2\n"),
        "stdin:1: header must be",
    );
    let input = format!("{HEADER}0,0,-1,0,0\n");
    fails_with(
        &[
            "replay-scaler",
            "--scaler",
            "captain",
            "--initial-limit",
            "4",
        ],
        Some(&input),
        "stdin:2: field 3",
    );
    // Counters are cumulative: time, usage and counts going backwards are refused.
    let captain = [
        "replay-scaler",
        "--scaler",
        "captain",
        "--initial-limit",
        "4",
    ];
    for (rows, want) in [
        (
            "0,0,0,0,0\n0.1,0.1,1,0,0\n0.05,0.2,2,0,0\n",
            "stdin:4: t goes backwards",
        ),
        (
            "0,0,0,0,0\n0.1,0.1,1,0,0\n0.2,0.05,2,0,0\n",
            "stdin:4: cpu_usage goes backwards",
        ),
        (
            "0,0,5,0,0\n0.1,0.1,4,0,0\n",
            "stdin:3: nr_periods goes backwards",
        ),
        (
            "0,-0.5,0,0,0\n",
            "stdin:2: cpu_usage and throttled_time cannot be negative",
        ),
    ] {
        fails_with(&captain, Some(&format!("{HEADER}{rows}")), want);
    }
}

#[test]
fn run_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let o = out.to_str().unwrap();
    fails_with(
        &["run", "--scenario", "nope", "--out", o],
        None,
        "unknown scenario 'nope'",
    );
    fails_with(
        &["run", "--scenario", "/nonexistent/app.toml", "--out", o],
        None,
        "/nonexistent/app.toml: cannot read",
    );
    fails_with(
        &["run", "--trace", "/nonexistent/t.txt", "--out", o],
        None,
        "/nonexistent/t.txt: cannot read",
    );
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "10\n-3\n").unwrap();
    fails_with(
        &["run", "--trace", bad.to_str().unwrap(), "--out", o],
        None,
        "bad.txt:2: negative rate '-3'",
    );
    fails_with(
        &["run", "--targets", "0.1,1.5", "--out", o],
        None,
        "target 1.5 is outside 0..1",
    );
    fails_with(
        &["run", "--scaler", "k8s", "--out", o],
        None,
        "unknown scaler 'k8s'",
    );
    fails_with(
        &[
            "run", "--scaler", "k8s-cpu", "--tower", "bandit", "--out", o,
        ],
        None,
        "needs the captain scaler",
    );
    fails_with(
        &["run", "--tower", "smart", "--out", o],
        None,
        "invalid value 'smart' for '--tower <TOWER>'",
    );
    assert!(!out.join("run.json").exists(), "nothing ran");
}

#[test]
fn run_writes_a_record_and_will_not_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("r");
    let o = o.to_str().unwrap();
    let args = [
        "run",
        "--scenario",
        "demo",
        "--trace",
        "constant-100",
        "--duration",
        "120",
        "--ramp",
        "0",
        "--out",
        o,
    ];
    let first = sim(&args, None);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(
        text.contains("allocation") && text.contains("P99"),
        "{text}"
    );
    for f in ["run.json", "minutes.csv", "services.csv"] {
        assert!(dir.path().join("r").join(f).exists(), "{f}");
    }
    fails_with(&args, None, "already holds a run record");
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(sim(&forced, None).status.success());
    if let Err(e) = plots::find_font() {
        eprintln!("skipping the plot check: {e}");
        return;
    }
    let png = dir.path().join("r.png");
    let plot = sim(
        &["plot", o, "--out", png.to_str().unwrap(), "--per-service"],
        None,
    );
    assert!(
        plot.status.success(),
        "{}",
        String::from_utf8_lossy(&plot.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
}

#[test]
fn plot_refuses_what_is_not_a_record() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(
        &["plot", dir.path().to_str().unwrap()],
        None,
        "not a run record",
    );
}

#[test]
fn bad_load_options_are_refused() {
    fails_with(
        &["run", "--load", "closed", "--duration", "5"],
        None,
        "unknown load 'closed' (expected users or poisson)",
    );
    fails_with(
        &[
            "run",
            "--load",
            "users",
            "--think-time=-1",
            "--duration",
            "5",
        ],
        None,
        "--think-time: think time must be within 0.001..3600 s, got -1",
    );
    fails_with(
        &[
            "sweep",
            "--load",
            "users",
            "--think-time=NaN",
            "--duration",
            "5",
        ],
        None,
        "--think-time: think time must be within",
    );
}

#[test]
fn bad_burst_and_tower_options_are_refused() {
    fails_with(
        &["run", "--burst", "1.5", "--duration", "5"],
        None,
        "burst must be a fraction of the quota from 0 to 1",
    );
    fails_with(
        &["run", "--burst=-0.1", "--duration", "5"],
        None,
        "burst must be a fraction of the quota from 0 to 1",
    );
    fails_with(
        &["sweep", "--burst-fraction", "0", "--duration", "5"],
        None,
        "--burst-fraction must be above 0 and at most 1",
    );
    fails_with(
        &["sweep", "--scalers", "k8s-cpu+bust", "--duration", "5"],
        None,
        "unknown scaler 'k8s-cpu+bust'",
    );
    fails_with(
        &["run", "--tower", "originl", "--duration", "5"],
        None,
        "invalid value 'originl' for '--tower",
    );
}

#[test]
fn a_sweep_with_an_slo_margin_judges_every_run_against_the_lower_slo() {
    fails_with(
        &["sweep", "--slo-margin", "0.6", "--duration", "5"],
        None,
        "the SLO margin must be between 0 and 0.5",
    );
    fails_with(
        &["sweep", "--draws", "0", "--duration", "5"],
        None,
        "--draws must be at least 1",
    );
    let dir = tempfile::tempdir().unwrap();
    let sweep = |margin: &str, out: &str| -> Vec<Vec<String>> {
        let out = dir.path().join(out);
        let done = sim(
            &[
                "sweep",
                "--scenario",
                "demo",
                "--trace",
                "constant",
                "--duration",
                "30",
                "--ramp",
                "5",
                "--scalers",
                "k8s-cpu-fast",
                "--full-grid",
                "--full-runs",
                "--slo-margin",
                margin,
                "--out",
                out.to_str().unwrap(),
            ],
            None,
        );
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        std::fs::read_to_string(out.join("results.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').map(String::from).collect())
            .collect()
    };
    let (plain, judged) = (sweep("0", "plain"), sweep("0.5", "judged"));
    let col = |rows: &[Vec<String>], name: &str| -> Vec<String> {
        let i = rows[0].iter().position(|h| h == name).unwrap();
        rows[1..].iter().map(|r| r[i].clone()).collect()
    };
    // The demo's SLO is 80 ms: judged against 40. The same runs (a fixed target's run does not
    // depend on the SLO), each verdict taken against its own SLO.
    assert!(col(&plain, "slo_ms")
        .iter()
        .all(|v| v.parse::<f64>().unwrap() == 80.0));
    assert!(col(&judged, "slo_ms")
        .iter()
        .all(|v| v.parse::<f64>().unwrap() == 40.0));
    assert_eq!(col(&plain, "allocation"), col(&judged, "allocation"));
    let p99: Vec<f64> = col(&plain, "p99_ms")
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    let met = |rows: &[Vec<String>]| -> Vec<bool> {
        col(rows, "slo_met").iter().map(|v| v == "true").collect()
    };
    assert_eq!(
        met(&plain),
        p99.iter().map(|&p| p <= 80.0).collect::<Vec<_>>()
    );
    assert_eq!(
        met(&judged),
        p99.iter().map(|&p| p <= 40.0).collect::<Vec<_>>()
    );
    assert_ne!(
        met(&plain),
        met(&judged),
        "the grid must straddle 40-80 ms: {p99:?}"
    );
}

/// `sim run` of the demo without a ramp into `out`, with `args`; it must succeed.
fn demo_run(out: &std::path::Path, args: &[&str]) {
    let mut all = vec![
        "run",
        "--scenario",
        "demo",
        "--ramp",
        "0",
        "--out",
        out.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let done = sim(&all, None);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
}

#[test]
fn calibrate_writes_a_scenario_that_loads_and_refuses_what_it_cannot_fit() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    demo_run(
        &run,
        &[
            "--trace",
            "diurnal",
            "--duration",
            "300",
            "--scaler",
            "const",
            "--initial-limit",
            "2",
        ],
    );
    let fitted = dir.path().join("fitted.toml");
    let args = [
        "calibrate",
        "--record",
        run.to_str().unwrap(),
        "--scenario",
        "demo",
        "--out",
        fitted.to_str().unwrap(),
    ];
    let out = sim(&args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("gateway.get 4.000 -> ") && report.contains("R²"),
        "{report}"
    );
    assert!(report.contains("network delay per hop"), "{report}");
    // The demo's calls draw what the topology says, so each service's cv factor is near 1;
    // the search's own re-simulations are not left behind.
    for service in ["gateway", "auth", "store"] {
        let line = report
            .lines()
            .skip_while(|l| !l.starts_with("variability:"))
            .find(|l| l.starts_with(service))
            .unwrap_or_else(|| panic!("no variability line for {service}:\n{report}"));
        let factor: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!((0.8..1.25).contains(&factor), "{line}");
    }
    assert!(!dir.path().join("fitted.resim/search").exists());
    // The re-simulation is kept as a record, and drawn against the measurement.
    assert!(dir.path().join("fitted.resim/1/run.json").exists());
    let png = std::fs::read(dir.path().join("fitted.fit.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    let per_second = dir.path().join("per-second.png");
    let out = sim(
        &[
            "plot",
            "--per-second",
            run.to_str().unwrap(),
            "--out",
            per_second.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success() && per_second.exists(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The fitted scenario is a scenario, on the topology's node, scheduled as it is.
    let check = sim(&["scenario", fitted.to_str().unwrap()], None);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let listing = String::from_utf8_lossy(&check.stdout);
    assert!(
        listing.contains("scheduled per CPU: local (2 CPUs)"),
        "{listing}"
    );
    fails_with(&args, None, "exists (pass --force");
    // The record of one app does not fit another's topology.
    let other = dir.path().join("other.toml");
    fails_with(
        &[
            "calibrate",
            "--record",
            run.to_str().unwrap(),
            "--scenario",
            "hotel-reservation",
            "--out",
            other.to_str().unwrap(),
        ],
        None,
        "is not in",
    );
    assert!(!other.exists());
    fails_with(
        &[
            "calibrate",
            "--record",
            dir.path().to_str().unwrap(),
            "--scenario",
            "demo",
            "--out",
            other.to_str().unwrap(),
        ],
        None,
        "not a run record",
    );
}

#[test]
fn a_per_second_plot_needs_per_second_rows() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    demo_run(
        &run,
        &["--trace", "constant", "--duration", "60", "--no-services"],
    );
    fails_with(
        &[
            "plot",
            "--per-second",
            run.to_str().unwrap(),
            "--out",
            dir.path().join("x.png").to_str().unwrap(),
        ],
        None,
        "no services.csv to draw per second",
    );
}

#[test]
fn scenario_placement_lists_every_service_on_its_node() {
    let out = sim(&["scenario", "train-ticket", "--placement"], None);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let s = scenarios::Scenario::builtin("train-ticket").unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), s.services.len());
    for (line, svc) in lines.iter().zip(&s.file.services) {
        assert_eq!(*line, format!("{} {}", svc.name, svc.node));
    }
    assert!(lines.iter().all(|l| l.ends_with(" worker-1")
        || l.ends_with(" worker-2")
        || l.ends_with(" worker-3")
        || l.ends_with(" worker-4")));
}

#[test]
fn scenario_listing_says_which_nodes_are_smt_threads() {
    let listing = |name: &str| {
        let out = sim(&["scenario", name], None);
        assert!(out.status.success(), "{name}");
        String::from_utf8(out.stdout).unwrap()
    };
    let hotel = listing("hotel-reservation");
    assert!(
        hotel.contains("SMT threads, two to a core: worker-1 (yield 0.36), worker-2 (yield 0.36)"),
        "{hotel}"
    );
    // The demo's node is this machine's two CPUs: whole cores, nothing to say.
    assert!(!listing("demo").contains("SMT"));
}

#[test]
fn an_evaluation_is_compared_with_measured_targets_and_a_bad_file_refused_first() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // A shard's results: the two baselines' grids on one cell, one target each met.
    let shard = dir.path().join("shard");
    std::fs::create_dir(&shard).unwrap();
    let row = |scaler: &str, t: &str, met: bool| {
        format!("hotel-reservation,diurnal,{scaler},grid,{t},{t},{t},{t},1,20.0,10.0,5.0,80.0,100.0,{met},2000.0,0.05,runs/x-{scaler}-{t},\n")
    };
    std::fs::write(
        shard.join("results.csv"),
        "app,workload,scaler,phase,target1,target2,mean_target1,mean_target2,seed,allocation,usage,p50_ms,p99_ms,slo_ms,slo_met,mean_rps,throttle_ratio,run,stopped_s\n"
            .to_string()
            + &row("k8s-cpu", "0.7", false)
            + &row("k8s-cpu", "0.6", true)
            + &row("k8s-cpu-fast", "0.9", true),
    )
    .unwrap();
    let measured = p("measured.csv");
    std::fs::write(
        &measured,
        "app,workload,k8s_cpu,k8s_cpu_fast\nhotel-reservation,diurnal,0.7,0.7\n",
    )
    .unwrap();
    let out = p("merged");
    let merged = sim(
        &[
            "merge",
            shard.to_str().unwrap(),
            "--out",
            &out,
            "--compare-targets",
            &measured,
        ],
        None,
    );
    assert!(
        merged.status.success(),
        "{}",
        String::from_utf8_lossy(&merged.stderr)
    );
    let md = std::fs::read_to_string(dir.path().join("merged/calibration.md")).unwrap();
    assert!(
        md.contains("| hotel-reservation | diurnal | 0.7 / 0.7 | 0.6 / 0.9 | 1 of 2 |"),
        "{md}"
    );
    assert!(md.contains("1 of 2 baseline cells within 0.1"), "{md}");
    // A bad file is refused before a single run starts.
    std::fs::write(&measured, "app,workload,k8s_cpu\nh,d,0.7\n").unwrap();
    fails_with(
        &[
            "evaluate",
            "--compare-targets",
            &measured,
            "--out",
            &p("eval"),
        ],
        None,
        "line 2: expected app,workload,k8s_cpu,k8s_cpu_fast",
    );
    assert!(!dir.path().join("eval").exists());
}
