//! `live run` end to end on this machine's real cgroups: the demo app's three services, each
//! in its own group, the agent, the coordinator with its load generator, Captains and the
//! BanditTower; then the faults (a bad trace, an unreachable app, an agent killed mid-run).
//! Ignored by a plain `cargo test`: they need root and writable cgroups (CI runs them with
//! `--ignored`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use live::cgroup::{Cgroup, Quota, Root};
use record::Record;

mod support;
use support::{cgroup_root, free_port, fresh_name, groups, http_get, serial, wait_for, Proc};

const SERVICES: [&str; 3] = ["gateway", "auth", "store"];
const TOKEN: &str = "e2e-token";

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_live")
}

/// The demo app in groups under `group`, and the root. `costs`: the scenario whose CPU costs
/// the app burns (a built-in name or a file).
fn demo(tag: &str, costs: &str) -> (Root, String, Proc, u16) {
    let root = cgroup_root();
    let group = fresh_name(tag);
    // Fail early, with the reason, where groups cannot be made.
    drop(groups(&format!("{tag}-probe"), 0));
    let port = free_port();
    let child = Command::new(exe())
        .args(["demo", "--scenario", costs, "--port", &port.to_string()])
        .args(["--group", &group])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let gateway = format!("127.0.0.1:{port}");
    wait_for(
        || http_get(&gateway, "/get?key=1") == Some(200),
        "the demo gateway",
    );
    (root, group, proc, port)
}

/// Starts an agent for `services` of the demo group; returns it and its address.
fn agent(
    dir: &Path,
    tag: &str,
    group: &str,
    services: &[&str],
    listen: &str,
    supervised: bool,
) -> (Proc, String) {
    let address = dir.join(format!("address-{tag}"));
    let _ = std::fs::remove_file(&address);
    let mut cmd = Command::new(exe());
    cmd.args(["agent", "--listen", listen])
        .args(["--address-file", address.to_str().unwrap()])
        .args([
            "--journal",
            dir.join(format!("journal-{tag}.json")).to_str().unwrap(),
        ])
        .env("AUTOTHROTTLE_TOKEN", TOKEN)
        .stderr(Stdio::null());
    if !supervised {
        cmd.arg("--no-supervisor");
    }
    for s in services {
        cmd.args(["--cgroup", &format!("{s}={group}/{s}")]);
    }
    let p = Proc(cmd.spawn().unwrap());
    wait_for(
        || {
            std::fs::read_to_string(&address)
                .map(|a| !a.trim().is_empty())
                .unwrap_or(false)
        },
        "the agent's address file",
    );
    let addr = std::fs::read_to_string(&address)
        .unwrap()
        .trim()
        .to_string();
    (p, addr)
}

fn quota(root: &Root, group: &str, service: &str) -> Quota {
    let rel = PathBuf::from(group).join(service);
    Cgroup::open(service, root, &rel)
        .unwrap()
        .read_quota()
        .unwrap()
}

fn quotas(root: &Root, group: &str) -> Vec<Quota> {
    SERVICES.iter().map(|s| quota(root, group, s)).collect()
}

/// Runs `live run` with `args`, killing it if it takes longer than `limit`.
fn live_run(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(exe())
        .arg("run")
        .args(args)
        .env("AUTOTHROTTLE_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "live run hung for {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn service_rows(r: &Record) -> BTreeMap<String, Vec<record::ServiceRow>> {
    let mut by: BTreeMap<String, Vec<record::ServiceRow>> = BTreeMap::new();
    for row in r.services().unwrap().expect("services.csv") {
        by.entry(row.service.clone()).or_default().push(row);
    }
    by
}

#[test]
#[ignore = "needs root and writable cgroup v1/v2"]
fn captains_and_the_bandit_tower_run_the_demo_app_on_real_cgroups() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    // The app burns other costs than the `demo` scenario the run is driven by says: what a
    // calibration from the run's record must find: `demo-other-costs`', with the gateway's put
    // at 8 ms instead of 4 (one 150-s record fits a call to about 0.25-0.35 ms either way, one
    // standard error: 6% of a 4-ms call, too near 15% for a test).
    let app_costs = dir.path().join("demo-true-costs.toml");
    let mut text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/demo-other-costs.toml"),
    )
    .unwrap();
    let put =
        "[calls.\"gateway.put\"]\nservice = \"gateway\"\ncpu = { kind = \"exp\", mean_ms = 4.0 }";
    assert!(text.contains(put), "demo-other-costs.toml's gateway.put");
    text = text.replace(put, &put.replace("4.0", "8.0"));
    std::fs::write(&app_costs, text).unwrap();
    let (root, group, demo_proc, port) = demo("e2e", app_costs.to_str().unwrap());
    // A wave of 20 to 60 RPS (trace x 0.2), two periods in the run: with a constant rate a
    // service's background CPU could not be told from its calls'.
    let wave = dir.path().join("wave.txt");
    let rps: String = (0..150)
        .map(|t| format!("{}\n", (200.0 + 100.0 * (t as f64 / 20.0).sin()) as u32))
        .collect();
    std::fs::write(&wave, rps).unwrap();
    let before = quotas(&root, &group);
    let (agent_proc, addr) = agent(dir.path(), "local", &group, &SERVICES, "127.0.0.1:0", true);
    let out_dir = dir.path().join("run");
    let memory = dir.path().join("tower-memory.json");
    let url = format!("http://127.0.0.1:{port}");
    let agent_arg = format!("local={addr}");
    // 30 s ramp + 150 s of the wave: three minutes, of which the Tower learns from the last
    // (the ramp's minute and the one after it are not learnt from). A calibration load: the
    // mix changes every 10 s between the demo's 9:1 and half puts.
    let out = live_run(
        &[
            "--scenario",
            "demo",
            "--trace",
            wave.to_str().unwrap(),
            "--ramp",
            "30",
            "--duration",
            "150",
            "--mix-cycle",
            "10",
            "--tower",
            "bandit",
            "--url",
            &url,
            "--agent",
            &agent_arg,
            "--out",
            out_dir.to_str().unwrap(),
            "--tower-memory",
            memory.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "live run failed:\n{stderr}");

    // The record is complete and reads like a simulated one.
    let r = Record::read(&out_dir).unwrap();
    let s = &r.info.summary;
    assert_eq!(r.info.source, "live");
    assert!(r.info.complete);
    assert!(r.info.gaps.is_empty(), "{:?}", r.info.gaps);
    assert_eq!(r.minutes.len(), 3);
    assert_eq!(r.info.mix_cycle_s, 10);
    assert!(
        (30.0..50.0).contains(&s.mean_rps),
        "the wave averages about 40 RPS: {}",
        s.mean_rps
    );
    assert!(s.requests > 4_500 && s.incomplete == 0, "{s:?}");
    assert!(s.p50_ms > 0.0 && s.p99_ms >= s.p50_ms);
    // Each request type judged on its own; together they are the run's requests, and the
    // run's P99 lies between theirs.
    let by = &s.by_request;
    assert_eq!(
        by.iter().map(|t| t.request.as_str()).collect::<Vec<_>>(),
        ["get", "put"]
    );
    assert_eq!(
        by.iter().map(|t| t.latencies.requests).sum::<u64>(),
        s.requests
    );
    assert_eq!(
        by.iter().map(|t| t.latencies.incomplete).sum::<u64>(),
        s.incomplete
    );
    let p99 = |t: &record::RequestLatencies| t.latencies.p99_ms;
    assert!(
        by.iter().map(p99).fold(f64::INFINITY, f64::min) <= s.p99_ms
            && s.p99_ms <= by.iter().map(p99).fold(0.0, f64::max),
        "{by:?}"
    );

    // The Captains took the limits well below the initial 2 cores per service.
    let initial = 2.0 * SERVICES.len() as f64;
    assert!(
        s.allocation < 0.5 * initial,
        "allocation {:.2} cores, initial {initial}",
        s.allocation
    );
    assert!(s.allocation > s.usage, "limits stay above use: {s:?}");

    // Per second, the requests of each type sent and answered (what `sim calibrate` fits
    // against): every second of the run, the demo's 9:1 mix and half and half in turn, and
    // nearly all answered.
    let requests = r.requests().unwrap().expect("requests.csv");
    let seconds = r.info.ramp_s + 150;
    assert_eq!(
        requests.len(),
        2 * seconds,
        "a row per second per request type"
    );
    let total = |name: &str, phase: Option<u32>, f: fn(&record::RequestRow) -> u64| -> u64 {
        requests
            .iter()
            .filter(|q| q.request == name && phase.is_none_or(|p| (q.t - 1) / 10 % 2 == p))
            .map(f)
            .sum()
    };
    for (phase, share) in [(0, 0.1), (1, 0.5)] {
        let (g, p) = (
            total("get", Some(phase), |q| q.sent),
            total("put", Some(phase), |q| q.sent),
        );
        let got = p as f64 / (g + p) as f64;
        assert!(
            (got - share).abs() < 0.06,
            "phase {phase}: puts {got:.3} of {} requests, the mix says {share}",
            g + p
        );
    }
    let (gets, puts) = (
        total("get", None, |q| q.sent),
        total("put", None, |q| q.sent),
    );
    let answered = total("get", None, |q| q.completed) + total("put", None, |q| q.completed);
    assert!(
        answered as f64 > 0.98 * (gets + puts) as f64,
        "{answered} of {}",
        gets + puts
    );

    // The live record calibrates: the costs the app burns, which the `demo` scenario the fit
    // starts from does not know, come out near the truth for every call (the calibration load
    // is what tells apart the calls the usual mix sends together). Within the 15%: the
    // fit adds each service's HTTP handling per request to its calls (about 0.3-0.4 ms on the
    // gateway and 0.1 ms on auth and the store), which this test build now costs what a release
    // build does (`demo::run`).
    let demo = scenarios::Scenario::builtin("demo").unwrap();
    let truth = scenarios::Scenario::load(app_costs.to_str().unwrap()).unwrap();
    // All of `sim calibrate`: the costs, the delay per hop, each service's variability.
    let calibration = sim::calibrate::calibrate(
        &demo,
        std::slice::from_ref(&r),
        Some(&dir.path().join("cv-search")),
    )
    .unwrap();
    let fit = &calibration.costs;
    eprintln!("{}", fit.report());
    for (call, def) in &truth.file.calls {
        let true_ms = def.cpu.mean_ms();
        let c = fit.call(call).unwrap();
        assert!(
            (c.fitted_ms / true_ms - 1.0).abs() < 0.15,
            "{call}: fitted {:.2} ms, the app burns {true_ms:.2} ms (the demo scenario says {:.2})\n{}",
            c.fitted_ms,
            c.old_ms,
            fit.report()
        );
    }

    // Each service's calls' variability, fitted by re-simulating the record: the demo's
    // services draw exponential costs, as the scenario says, so each factor on the scenario's
    // cvs comes out near 1. One 150-s record on this shared 2-core machine (the other live
    // tests run beside it) gives each factor loosely: measured 1.12 / 1.00 / 1.17 and 1.00 /
    // 1.13 / 1.46 (gateway / auth / store) in two CI runs. So each within 0.6..1.6, their
    // geometric mean within 0.8..1.25; a broken search ends at its bounds, 1/8 or 8.
    let cvs = calibration.variability.as_ref().unwrap();
    eprintln!("{}", sim::calibrate::variability_report(cvs));
    let mut log_sum = 0.0;
    for f in cvs {
        let k = f.factor.expect("the demo's calls vary");
        assert!(
            (0.6..1.6).contains(&k),
            "{}: cv x{k:.2}\n{}",
            f.service,
            sim::calibrate::variability_report(cvs)
        );
        log_sum += k.ln();
    }
    let mean = (log_sum / cvs.len() as f64).exp();
    assert!(
        (0.8..1.25).contains(&mean),
        "geometric mean cv x{mean:.2}\n{}",
        sim::calibrate::variability_report(cvs)
    );

    // The request log holds every request sent, and a re-simulation of the record replays
    // exactly those: the same requests of each type in every second.
    let log = r.arrivals().unwrap().expect("arrivals.csv.gz");
    assert_eq!(log.len() as u64, gets + puts);
    let plan = sim::calibrate::replan(&demo, &r).unwrap();
    assert!(plan.arrivals.is_some(), "the re-simulation replays the log");
    let resim_dir = dir.path().join("resim");
    let mut plan = plan;
    plan.services_csv = true;
    sim::run::run(
        &plan,
        Some(record::RecordWriter::create(&resim_dir, false, true).unwrap()),
        &mut |_, _| {},
    )
    .unwrap();
    let resim = Record::read(&resim_dir)
        .unwrap()
        .requests()
        .unwrap()
        .unwrap();
    let sent = |rows: &[record::RequestRow]| -> Vec<(u32, String, u64)> {
        rows.iter()
            .map(|q| (q.t, q.request.clone(), q.sent))
            .collect()
    };
    assert_eq!(sent(&resim), sent(&requests), "per second, per type");

    // Every second of every service is in services.csv, and each service's throttle ratio
    // tracks the target in force (after the first minute, once the Captains have settled).
    let rows = service_rows(&r);
    let target_at = |t: u32, service: &str| {
        let m = &r.minutes[((t as usize - 1) / 60).min(r.minutes.len() - 1)];
        let group = r
            .info
            .services
            .iter()
            .find(|(n, _)| n == service)
            .unwrap()
            .1;
        if group == 1 {
            m.target1
        } else {
            m.target2
        }
    };
    // The Captain keeps the ratio a little under its target (it scales down only with a
    // margin); 0.045 either way still tells "tracks 0.06" from "never throttled" (0).
    const TOLERANCE: f64 = 0.045;
    for svc in SERVICES {
        let rs = &rows[svc];
        assert!(rs.len() >= 178, "{svc}: {} rows for 180 s", rs.len());
        let late: Vec<_> = rs.iter().filter(|x| x.t > 60).collect();
        let periods: u64 = late.iter().map(|x| x.nr_periods).sum();
        let throttled: u64 = late.iter().map(|x| x.nr_throttled).sum();
        let ratio = throttled as f64 / periods as f64;
        let target = late
            .iter()
            .map(|x| target_at(x.t, svc) * x.nr_periods as f64)
            .sum::<f64>()
            / periods as f64;
        eprintln!("{svc}: throttle ratio {ratio:.3}, target {target:.3}");
        assert!(
            (ratio - target).abs() <= TOLERANCE,
            "{svc}: throttle ratio {ratio:.3} against target {target:.3} (tolerance {TOLERANCE})"
        );
    }

    // The Tower learnt, and its memory carries over to the next run.
    let mem: controller::TowerMemory = record::read_json(&memory).unwrap();
    assert_eq!(mem.samples.len(), 1, "the third minute");
    assert!(out_dir.join("tower.json").exists());

    // Plottable as it is.
    let png = dir.path().join("run.png");
    plots::plot(std::slice::from_ref(&r), &png, &plots::Options::default()).unwrap();
    assert!(std::fs::metadata(&png).unwrap().len() > 10_000);

    // The loop closes: the fitted scenario, swept offline, recommends targets that hold live.
    the_fitted_model_predicts_live_runs_at_the_targets_it_recommends(
        dir.path(),
        &calibration.file,
        &url,
        &agent_arg,
    );

    // Every group is back at its original quota, then removed with the app.
    assert_eq!(quotas(&root, &group), before, "original quotas restored");
    drop(agent_proc);
    drop(demo_proc);
    assert!(!root.cpu.join(&group).exists(), "groups removed");
}

/// `sim sweep` on a scenario fitted to a live record (the loop, after measuring and
/// calibrating): K8s-CPU-Fast and Captains searched from their cheapest target down, each
/// target judged on eight draws of the arrivals against the SLO less 15% (`--draws 8
/// --slo-margin 0.15`: every draw must meet it); then `live run` with each recommended target
/// on the same trace, whose allocation must be within 10% of the model's (the mean of its
/// draws) and whose SLO verdict must be theirs.
///
/// The SLO is 120 ms, not the demo's 80: at this load the app's P99 is 71-76 ms with any
/// target that never throttles (K8s-CPU-Fast 0.1-0.4, Captain 0-0.02, in the model and live),
/// so at 80 ms every target meets the SLO or misses it by a few milliseconds, and what decides
/// is the model's P99 error (0-12% low on the live demo, docs/RESULTS.md), not the targets. At
/// 120 ms the targets decide: each step of either grid moves the P99 by 15-40 ms there. The
/// margin is the room a user leaves for the model's error and for one short run's spread
/// (live, Captains at 0.06 gave a P99 of 97.5 and 117.8 ms in two runs, against the model's
/// median 104-107).
fn the_fitted_model_predicts_live_runs_at_the_targets_it_recommends(
    dir: &Path,
    fitted: &scenarios::ScenarioFile,
    url: &str,
    agent_arg: &str,
) {
    use sim::sweep::{self, Contender, Settings, Unit, Workload};
    use std::sync::Arc;
    const SLO_MS: f64 = 120.0;
    const MARGIN: f64 = 0.15;
    const DRAWS: usize = 8;
    const RAMP: usize = 15;
    // Most of a period of the measurement's wave (126 s): its peak (at 31 s) and its trough
    // (at 94 s).
    const SECONDS: usize = 105;
    let trace_file = dir.join("loop-wave.txt");
    let rps: String = (0..SECONDS)
        .map(|t| format!("{}\n", (200.0 + 100.0 * (t as f64 / 20.0).sin()) as u32))
        .collect();
    std::fs::write(&trace_file, rps).unwrap();
    let mut fitted = fitted.clone();
    fitted.slo_ms = SLO_MS;
    let app = scenarios::Scenario::compile("fitted", fitted).unwrap();
    let slo = SLO_MS;
    let judged = Arc::new(sweep::with_slo_margin(&app, MARGIN).unwrap());
    let workload = Workload {
        name: "wave".into(),
        trace: Arc::new(judged.workload(trace_file.to_str().unwrap()).unwrap()),
    };
    let units: Vec<Unit> = [Contender::K8sCpuFast, Contender::Captain]
        .into_iter()
        .map(|contender| Unit::Grid {
            app: judged.clone(),
            workload: workload.clone(),
            contender,
            targets: sweep::grid(contender).into_iter().rev().collect(),
            descending: true,
        })
        .collect();
    let settings = Settings {
        out: dir.join("sweep"),
        seed: 1,
        ramp_s: RAMP,
        load: traces::Load::Poisson,
        jobs: 2,
        services_csv: false,
        resume: false,
        burst: 1.0,
        stop_missed: true,
        draws: DRAWS,
    };
    let rows = sweep::execute(&units, &settings, &|_| {}).unwrap();
    let best = sweep::best(&rows);
    eprintln!("{}", sweep::best_table(&best));
    assert_eq!(best.len(), 2, "{best:?}");
    let mut lines = Vec::new();
    for b in &best {
        let Some(target) = &b.target1 else {
            panic!(
                "{}: no target meets {:.1} ms in the sweep",
                b.scaler, b.slo_ms
            );
        };
        let scaler = if b.scaler == "captain" {
            "captain"
        } else {
            "k8s-cpu-fast"
        };
        // What the model predicts for this target: its DRAWS runs, each with its own draw of
        // the arrivals. One two-minute run's P99 varies by 10-20% and its allocation by up to 4%
        // either way from one draw to the next (under Captains, where their first scale-downs
        // land holds for a minute); the live run is one more draw.
        let draws = sweep::settings_of(rows.iter().filter(|r| r.scaler == b.scaler))
            .into_iter()
            .find(|d| d.rows[0].target1 == *target)
            .unwrap();
        assert_eq!(draws.rows.len(), DRAWS);
        let (predicted, p99) = (draws.allocation, draws.p99_ms);
        let allocations: Vec<f64> = draws.rows.iter().map(|r| r.allocation).collect();
        let p99s: Vec<f64> = draws.rows.iter().map(|r| r.p99_ms).collect();
        let (lo, hi) = (
            allocations.iter().copied().fold(f64::INFINITY, f64::min),
            allocations.iter().copied().fold(0.0, f64::max),
        );
        let out_dir = dir.join(format!("loop-{scaler}"));
        let out = live_run(
            &[
                "--scenario",
                "demo",
                "--trace",
                trace_file.to_str().unwrap(),
                "--ramp",
                &RAMP.to_string(),
                "--scaler",
                scaler,
                "--targets",
                target,
                "--url",
                url,
                "--agent",
                agent_arg,
                "--out",
                out_dir.to_str().unwrap(),
            ],
            Duration::from_secs(240),
        );
        assert!(
            out.status.success(),
            "live run at {scaler} {target} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let live = Record::read(&out_dir).unwrap().info.summary;
        let line = format!(
            "{scaler} {target}: allocation live {:.2} / sim {predicted:.2} cores ({:+.1}%; draws {lo:.2}-{hi:.2}), P99 live {:.1} / sim {p99:.1} ms (draws {:.1}-{:.1}), SLO {slo} ms",
            live.allocation,
            100.0 * (live.allocation / predicted - 1.0),
            live.p99_ms,
            p99s.iter().copied().fold(f64::INFINITY, f64::min),
            p99s.iter().copied().fold(0.0, f64::max),
        );
        eprintln!("{line}");
        let within = (live.allocation / predicted - 1.0).abs() <= 0.10;
        // The sweep judged the draws against the SLO less the margin; the verdict is at the SLO.
        let sim_met = p99s.iter().all(|&p| p <= slo);
        lines.push((line, within, live.p99_ms <= slo, sim_met));
    }
    let all = lines
        .iter()
        .map(|l| l.0.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for (line, within, live_met, sim_met) in &lines {
        // Within 10% of what the model predicts (its draws' mean, what `sim sweep` reports).
        // Since the demo's services cost what a release build's do (`demo::run`), live came
        // out -2.2% to +6.0% under K8s-CPU-Fast, -6.3% to -0.1% under Captains in four runs
        // (docs/RESULTS.md); the draws themselves spread 5-7% either way of their mean.
        assert!(
            within,
            "allocation more than 10% off the model's: {line}\n{all}"
        );
        assert_eq!(live_met, sim_met, "SLO verdicts differ: {line}\n{all}");
    }
}

#[test]
#[ignore = "needs root and writable cgroup v1/v2"]
fn bad_input_and_lost_agents_are_handled() {
    let _one = serial();
    let (root, group, demo_proc, port) = demo("faults", "demo");
    let dir = tempfile::tempdir().unwrap();
    let before = quotas(&root, &group);
    // Two nodes: the gateway's agent, and the agent of auth and store (supervised).
    let (agent_a, addr_a) = agent(dir.path(), "a", &group, &["gateway"], "127.0.0.1:0", false);
    let (agent_b, addr_b) = agent(
        dir.path(),
        "b",
        &group,
        &["auth", "store"],
        "127.0.0.1:0",
        true,
    );
    let demo_toml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/demo.toml"),
    )
    .unwrap()
    .replace(
        "[[nodes]]\nname = \"local\"\ncores = 2\nagent = \"127.0.0.1:7070\"",
        "[[nodes]]\nname = \"a\"\ncores = 2\n[[nodes]]\nname = \"b\"\ncores = 2",
    )
    .replacen("node = \"local\"", "node = \"a\"", 1)
    .replace("node = \"local\"", "node = \"b\"");
    let scenario = dir.path().join("two-nodes.toml");
    std::fs::write(&scenario, demo_toml).unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let (arg_a, arg_b) = (format!("a={addr_a}"), format!("b={addr_b}"));
    let common = |out: &Path| -> Vec<String> {
        [
            "--scenario",
            scenario.to_str().unwrap(),
            "--agent",
            &arg_a,
            "--agent",
            &arg_b,
            "--ramp",
            "0",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = |extra: &[&str], out: &Path| -> Vec<String> {
        let mut v = common(out);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    // A bad trace: a clear error naming the file and line, before any limit is touched.
    let bad = dir.path().join("bad-trace.txt");
    std::fs::write(&bad, "40\n41\nforty-two\n").unwrap();
    let out_bad = dir.path().join("bad");
    let a = args(&["--trace", bad.to_str().unwrap(), "--url", &url], &out_bad);
    let out = live_run(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad-trace.txt:3"),
        "names file and line: {err}"
    );
    assert!(!out_bad.exists(), "no record for a run that never started");
    assert_eq!(quotas(&root, &group), before);

    // The app unreachable: a clear error, quickly, nothing touched.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead_url = format!("http://127.0.0.1:{closed}");
    let a = args(
        &[
            "--trace",
            "constant",
            "--duration",
            "30",
            "--url",
            &dead_url,
        ],
        &dir.path().join("dead"),
    );
    let started = Instant::now();
    let out = live_run(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot reach the app at"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "no hang");
    assert_eq!(quotas(&root, &group), before);

    // Ctrl-C: the agents put the limits back, the partial record is kept, marked incomplete.
    let out_int = dir.path().join("interrupted");
    let a = args(
        &["--trace", "constant", "--duration", "60", "--url", &url],
        &out_int,
    );
    let mut run = Proc(
        Command::new(exe())
            .arg("run")
            .args(&a)
            .env("AUTOTHROTTLE_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for(
        || quota(&root, &group, "store").quota_us.is_some(),
        "control of store",
    );
    std::thread::sleep(Duration::from_secs(5));
    live::os::signal(run.0.id(), libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = run.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "live run did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(130));
    assert_eq!(quotas(&root, &group), before, "limits restored on Ctrl-C");
    let r = Record::read(&out_int).unwrap();
    assert!(!r.info.complete);
    let rows = service_rows(&r);
    assert!(
        rows["store"].len() >= 3,
        "the seconds before the interrupt are kept"
    );

    // Node b's agent dies mid-run (its worker is killed; the supervisor puts the limits
    // back), then comes back on the same address: the run goes on with node a, reports the
    // loss, marks the gap, and takes auth and store back.
    let out_dir = dir.path().join("faults");
    let a = args(
        &["--trace", "constant", "--duration", "50", "--url", &url],
        &out_dir,
    );
    let mut run = Proc(
        Command::new(exe())
            .arg("run")
            .args(&a)
            .env("AUTOTHROTTLE_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for(
        || quota(&root, &group, "auth").quota_us.is_some(),
        "control of auth",
    );
    std::thread::sleep(Duration::from_secs(10));
    let worker =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", agent_b.0.id())).unwrap();
    let worker: u32 = worker.split_whitespace().next().unwrap().parse().unwrap();
    live::os::signal(worker, libc::SIGKILL);
    wait_for(
        || quota(&root, &group, "auth").quota_us.is_none(),
        "the supervisor to restore auth",
    );
    assert!(
        quota(&root, &group, "gateway").quota_us.is_some(),
        "node a still controls the gateway"
    );
    drop(agent_b);
    std::thread::sleep(Duration::from_secs(6));
    let (_agent_b2, addr_b2) = agent(dir.path(), "b2", &group, &["auth", "store"], &addr_b, true);
    assert_eq!(addr_b2, addr_b);
    let deadline = Instant::now() + Duration::from_secs(120);
    while run.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "live run hung");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(run.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(run.0.wait().unwrap().success(), "{stderr}");
    assert!(stderr.contains("lost the agent of node b"), "{stderr}");

    let r = Record::read(&out_dir).unwrap();
    assert!(r.info.complete);
    let gaps = &r.info.gaps;
    eprintln!("gaps: {gaps:?}");
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    let rows = service_rows(&r);
    for g in gaps {
        assert!(g.service == "auth" || g.service == "store");
        assert_eq!(g.node, "b");
        assert!(g.reason.contains("agent lost"), "{}", g.reason);
        assert!((5..30).contains(&g.from_s), "{g:?}");
        let end = g.to_s.expect("control came back");
        assert!(end > g.from_s + 3 && end < 50, "{g:?}");
        let rs = &rows[&g.service];
        assert!(
            rs.iter().all(|x| !(x.t > g.from_s + 1 && x.t < end)),
            "no rows inside the gap of {}",
            g.service
        );
        assert!(rs.iter().any(|x| x.t > end + 2), "rows again after the gap");
    }
    assert!(rows["gateway"].len() >= 48, "node a never stopped");

    // Everything restored, and removed with the app.
    assert_eq!(quotas(&root, &group), before);
    drop(agent_a);
    drop(demo_proc);
    assert!(!root.cpu.join(&group).exists(), "groups removed");
}

/// One of the paper's apps live: its scenario's services as a demo (each in its own group,
/// under an agent), a stub of its API in front that checks every request and runs its calls
/// on the demo, and `live run` with the app's own request definitions and flows.
fn app_live(app: support::stubs::App, dir: &Path, users: u32) -> support::stubs::Report {
    use support::stubs::{self, Forward};
    let scenario = std::sync::Arc::new(scenarios::Scenario::builtin(app.scenario()).unwrap());
    let names: Vec<String> = scenario.services.iter().map(|s| s.name.clone()).collect();
    let root = cgroup_root();
    let group = fresh_name(app.scenario());
    let port = support::free_ports(names.len() as u16);
    let demo = Proc(
        Command::new(exe())
            .args([
                "demo",
                "--scenario",
                app.scenario(),
                "--port",
                &port.to_string(),
            ])
            .args(["--group", &group])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let last = format!("127.0.0.1:{}", port + names.len() as u16 - 1);
    wait_for(
        || std::net::TcpStream::connect(&last).is_ok(),
        "the demo's last service",
    );
    let stub = stubs::start(
        app,
        Some(Forward {
            scenario: scenario.clone(),
            base_port: port,
        }),
    );
    let services: Vec<&str> = names.iter().map(String::as_str).collect();
    let before: Vec<Quota> = names.iter().map(|s| quota(&root, &group, s)).collect();
    let tag = app.scenario();
    let (agent_proc, addr) = agent(dir, tag, &group, &services, "127.0.0.1:0", true);
    let trace = dir.join(format!("{tag}.trace"));
    std::fs::write(&trace, format!("{users}\n").repeat(30)).unwrap();
    let out_dir = dir.join(format!("{tag}-run"));
    let agent_arg = format!("{}={addr}", scenario.file.nodes[0].name);
    let out = live_run(
        &[
            "--scenario",
            tag,
            "--trace",
            trace.to_str().unwrap(),
            "--multiplier",
            "1",
            "--load",
            "users",
            "--ramp",
            "5",
            "--url",
            &stub.url(),
            "--agent",
            &agent_arg,
            "--out",
            out_dir.to_str().unwrap(),
        ],
        Duration::from_secs(180),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{tag}: live run failed:\n{stderr}");
    let r = Record::read(&out_dir).unwrap();
    assert!(r.info.complete, "{tag}");
    assert!(r.info.gaps.is_empty(), "{tag}: {:?}", r.info.gaps);
    let rows = service_rows(&r);
    assert_eq!(
        rows.len(),
        names.len(),
        "{tag}: every service in services.csv"
    );
    let requests = r.requests().unwrap().expect("requests.csv");
    assert_eq!(requests.len(), 35 * scenario.requests.len(), "{tag}");
    let sent: u64 = requests.iter().map(|q| q.sent).sum();
    let answered: u64 = requests.iter().map(|q| q.completed).sum();
    // Every request answered but those the run's end caught in flight: a closed-loop user has
    // at most one out (a 98% floor failed once on social-network, 235 of 240 answered with 8
    // users, in a CI dry run where 115 demo processes shared two cores).
    assert!(
        sent > 0 && sent - answered <= u64::from(users),
        "{tag}: {answered} of {sent} answered, {users} users ({stderr})"
    );
    assert_eq!(
        names
            .iter()
            .map(|s| quota(&root, &group, s))
            .collect::<Vec<_>>(),
        before,
        "{tag}: original quotas restored"
    );
    drop(agent_proc);
    drop(demo);
    let report = stub.report();
    assert_eq!(report.malformed, 0, "{tag}: {:?}", report.problems);
    let seen = report.requests();
    // Answers that come after the run's last second are not in the record.
    assert!(
        (answered..=sent).contains(&seen),
        "{tag}: the stub saw {seen}, the record counts {answered} answered of {sent}"
    );
    eprintln!("{tag}: {report:?}");
    report
}

#[test]
#[ignore = "needs root and writable cgroup v1/v2"]
fn the_papers_three_apps_run_live_against_stubs_of_their_apis() {
    use support::stubs::App;
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    // All three at once (115 demo processes): 35 s each, about 40 requests a second in
    // all, a third of a core of request CPU.
    let (hotel, social, train) = std::thread::scope(|s| {
        let d = dir.path();
        let h = s.spawn(move || app_live(App::Hotel, d, 16));
        let so = s.spawn(move || app_live(App::Social, d, 8));
        let t = s.spawn(move || app_live(App::Train, d, 12));
        (h.join(), so.join(), t.join())
    });
    let (hotel, social, train) = (hotel.unwrap(), social.unwrap(), train.unwrap());
    // Every request type of each mix was sent; the exact mix is checked on many more
    // requests by the stub tests without root (tests/apps.rs).
    for (report, kinds) in [
        (&hotel, &["search", "recommend"][..]),
        (
            &social,
            &["compose-post", "read-home-timeline", "read-user-timeline"][..],
        ),
        (
            &train,
            &["login", "home", "search-departure", "search-return"][..],
        ),
    ] {
        for k in kinds {
            assert!(
                report.counts.get(*k).copied().unwrap_or(0) > 0,
                "no {k}: {report:?}"
            );
        }
    }
    assert_eq!(train.counts.get("init:create-user"), Some(&1));
    assert!(train.counts["login"] <= 2, "users share a login: {train:?}");
    let shares = hotel.shares();
    assert!((shares["search"] - 0.6).abs() < 0.08, "{shares:?}");
    let shares = train.shares();
    assert!((shares["home"] - 10.0 / 34.0).abs() < 0.08, "{shares:?}");
}
