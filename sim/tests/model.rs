//! The simulator against queueing theory, against itself (determinism) and against the SLO.

use std::sync::Arc;

use controller::{ScalerKind, Targets};
use scenarios::Scenario;
use sim::run::{run, RunOutput, RunPlan};
use traces::Trace;

fn one_service(threads: u32, cores: u32, mean_ms: f64) -> Arc<Scenario> {
    serving("queue", 1000.0, cores, Some(threads), &[("r", mean_ms)])
}

/// One service `s` on one node of `cores` cores, serving each `(request type, mean CPU ms)`
/// (exponential CPU, equal weights) with no network delay.
fn serving(
    name: &str,
    slo_ms: f64,
    cores: u32,
    threads: Option<u32>,
    types: &[(&str, f64)],
) -> Arc<Scenario> {
    parse(name, &serving_toml(name, slo_ms, cores, threads, types))
}

fn parse(name: &str, text: &str) -> Arc<Scenario> {
    Arc::new(Scenario::parse(&format!("{name}.toml"), text).unwrap())
}

fn serving_toml(
    name: &str,
    slo_ms: f64,
    cores: u32,
    threads: Option<u32>,
    types: &[(&str, f64)],
) -> String {
    let mut text = format!(
        r#"
name = "{name}"
slo_ms = {slo_ms}
network_delay = {{ kind = "const", ms = 0 }}
[[nodes]]
name = "n"
cores = {cores}
[[services]]
name = "s"
node = "n"
"#
    );
    if let Some(threads) = threads {
        text += &format!("threads = {threads}\n");
    }
    for (request, _) in types {
        text +=
            &format!("[[requests]]\nname = \"{request}\"\nweight = 1\ncall = \"s.{request}\"\n");
    }
    for (request, mean_ms) in types {
        text += &format!(
            "[calls.\"s.{request}\"]\nservice = \"s\"\ncpu = {{ kind = \"exp\", mean_ms = {mean_ms} }}\n"
        );
    }
    text
}

/// A run of a constant load (`value` requests per second, or users) with no ramp, every
/// container held at its initial limit.
fn constant(scenario: Arc<Scenario>, value: u32, seconds: usize) -> RunPlan {
    let mut cfg = RunPlan::new(
        scenario,
        Arc::new(Trace::constant(value, seconds)),
        ScalerKind::Const,
        Targets::new(0.1, 0.1),
    );
    cfg.ramp_s = 0;
    cfg
}

fn run_constant(scenario: Arc<Scenario>, rps: u32, seconds: usize, seed: u64) -> RunOutput {
    let mut cfg = constant(scenario, rps, seconds);
    cfg.seed = seed;
    run(&cfg, None, &mut |_, _| {}).unwrap()
}

#[test]
fn mm1_matches_the_analytic_response_time() {
    // lambda = 50/s, mu = 100/s: the response time is exponential with mean 1/(mu - lambda).
    let out = run_constant(one_service(1, 4, 10.0), 50, 7200, 1);
    let s = &out.info.summary;
    let mean = 1000.0 / (100.0 - 50.0);
    eprintln!(
        "M/M/1: mean {:.2} ms (analytic {mean:.2}), P99 {:.1} ms (analytic {:.1})",
        s.mean_ms,
        s.p99_ms,
        mean * 100f64.ln()
    );
    assert!(
        (s.mean_ms - mean).abs() / mean < 0.05,
        "mean {} vs {mean} ms",
        s.mean_ms
    );
    let p99 = mean * 100f64.ln();
    assert!(
        (s.p99_ms - p99).abs() / p99 < 0.05,
        "P99 {} vs {p99} ms",
        s.p99_ms
    );
    assert!((s.usage - 0.5).abs() < 0.02, "utilisation {}", s.usage);
}

/// Erlang C: probability of waiting in an M/M/c queue.
fn erlang_c(c: u32, a: f64) -> f64 {
    let mut term = 1.0;
    let mut sum = 0.0;
    for k in 0..c {
        if k > 0 {
            term *= a / k as f64;
        }
        sum += term;
    }
    let last = term * a / c as f64;
    let rho = a / c as f64;
    let top = last / (1.0 - rho);
    top / (sum + top)
}

#[test]
fn mmc_matches_erlang_c() {
    // c = 4 threads on 8 cores, lambda = 300/s, mu = 100/s per thread (rho = 0.75).
    let (c, lambda, mu) = (4, 300.0, 100.0);
    let out = run_constant(one_service(c, 8, 1000.0 / mu), lambda as u32, 7200, 2);
    let wait = erlang_c(c, lambda / mu) / (c as f64 * mu - lambda);
    let mean = 1000.0 * (wait + 1.0 / mu);
    let got = out.info.summary.mean_ms;
    eprintln!("M/M/4: mean {got:.3} ms (Erlang C {mean:.3})");
    assert!((got - mean).abs() / mean < 0.05, "mean {got} vs {mean} ms");
}

#[test]
fn node_capacity_is_shared() {
    // 8 threads but a 1-core node at 0.5 load: like M/M/1 with processor sharing, mean 20 ms.
    let out = run_constant(one_service(8, 1, 10.0), 50, 7200, 3);
    let got = out.info.summary.mean_ms;
    assert!((got - 20.0).abs() / 20.0 < 0.05, "mean {got} ms");
    assert!(out.info.summary.usage <= 1.0 + 1e-9);
}

#[test]
fn same_seed_same_records_byte_for_byte() {
    let scenario = Arc::new(Scenario::builtin("social-network").unwrap());
    let trace = Arc::new(Trace::builtin("bursty").unwrap().truncated(240));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for (i, dir) in dirs.iter().enumerate() {
        let mut cfg = RunPlan::new(
            scenario.clone(),
            trace.clone(),
            ScalerKind::Captain,
            Targets::new(0.1, 0.06),
        );
        cfg.seed = if i < 2 { 7 } else { 8 };
        cfg.services_csv = true;
        cfg.tower = sim::run::TowerKind::Bandit { explore: 0.5 };
        let w = record::RecordWriter::create(dir.path(), false, true).unwrap();
        run(&cfg, Some(w), &mut |_, _| {}).unwrap();
    }
    for file in ["run.json", "minutes.csv", "services.csv", "tower.json"] {
        let read = |i: usize| std::fs::read(dirs[i].path().join(file)).unwrap();
        assert_eq!(
            read(0),
            read(1),
            "{file} differs between two runs with seed 7"
        );
        if file != "run.json" {
            assert_ne!(read(0), read(2), "{file} is the same for seeds 7 and 8");
        }
    }
}

/// Per built-in app on its constant workload: 32 cores each meets the SLO with room to spare;
/// limits at the measured mean usage break it.
#[test]
fn the_slo_trade_off_is_real() {
    for name in ["hotel-reservation", "social-network", "train-ticket"] {
        let scenario = Arc::new(Scenario::builtin(name).unwrap());
        let rps = scenario.constant_rps.unwrap() as f64 / scenario.multiplier;
        let trace = Arc::new(Trace::constant(rps.round() as u32, 240));
        let mut cfg = RunPlan::new(
            scenario.clone(),
            trace,
            ScalerKind::Const,
            Targets::new(0.1, 0.1),
        );
        cfg.ramp_s = 60;
        let free = run(&cfg, None, &mut |_, _| {}).unwrap();
        let slo = scenario.slo_ms;
        assert!(
            free.info.summary.p99_ms < slo / 3.0,
            "{name}: P99 {} at 32 cores",
            free.info.summary.p99_ms
        );
        cfg.initial_limits = Some(free.service_usage.iter().map(|u| u.max(0.01)).collect());
        let tight = run(&cfg, None, &mut |_, _| {}).unwrap();
        eprintln!(
            "{name}: 32 cores each: P99 {:.1} ms, usage {:.2} cores; limits at mean usage: P99 {:.1} ms (SLO {slo} ms)",
            free.info.summary.p99_ms, free.info.summary.usage, tight.info.summary.p99_ms
        );
        assert!(
            tight.info.summary.p99_ms > slo,
            "{name}: P99 {} with limits at the mean usage ({:.2} cores in all)",
            tight.info.summary.p99_ms,
            free.info.summary.usage
        );
    }
}

fn run_users(scenario: Arc<Scenario>, users: u32, seconds: usize, limit: f64) -> RunOutput {
    let mut cfg = constant(scenario, users, seconds);
    cfg.initial_limit = Some(limit);
    cfg.load = traces::Load::users();
    run(&cfg, None, &mut |_, _| {}).unwrap()
}

#[test]
fn users_send_one_request_per_think_time_and_back_off_when_the_app_stalls() {
    // 50 users thinking 1 s on a fast service: about 50 / (1 s + 10 ms) requests per second.
    let fast = run_users(one_service(4, 4, 10.0), 50, 600, 4.0);
    let s = &fast.info.summary;
    eprintln!(
        "50 users, fast service: {:.1} RPS, P99 {:.1} ms",
        s.mean_rps, s.p99_ms
    );
    assert!((s.mean_rps - 49.5).abs() < 2.0, "{}", s.mean_rps);
    // At 0.1 core the service can do 10 requests of 10 ms per second. Users wait for their
    // answers, so arrivals fall to what it can serve; open-loop Poisson at 50 RPS piles up.
    let slow = run_users(one_service(4, 4, 10.0), 50, 600, 0.1);
    let s = &slow.info.summary;
    eprintln!(
        "50 users, 0.1-core service: {:.1} RPS, P99 {:.0} ms",
        s.mean_rps, s.p99_ms
    );
    assert!(s.mean_rps < 10.5, "{}", s.mean_rps);
    assert!(slow.peak_in_flight <= 50, "{}", slow.peak_in_flight);
    let mut cfg = constant(one_service(4, 4, 10.0), 50, 600);
    cfg.initial_limit = Some(0.1);
    let open = run(&cfg, None, &mut |_, _| {}).unwrap();
    assert!(open.peak_in_flight > 1000, "{}", open.peak_in_flight);
}

#[test]
fn a_collector_adds_its_share_of_cpu_and_same_seed_same_run() {
    let with_gc = |text: &str| {
        let t = text.replace(
            "threads = 4\n",
            "threads = 4\nruntime = { kind = \"go\", alloc_mb_per_cpu_s = 100, live_heap_mb = 20, mark_ms_per_mb = 2 }\n",
        );
        Arc::new(Scenario::parse("gc.toml", &t).unwrap())
    };
    let base = toml::to_string(&one_service(4, 4, 10.0).file).unwrap();
    let gc = with_gc(&base);
    let share = gc.services[0].runtime.unwrap().cpu_share();
    let plain = run_constant(one_service(4, 4, 10.0), 50, 600, 1);
    let bursty = run_constant(gc.clone(), 50, 600, 1);
    let (u0, u1) = (plain.info.summary.usage, bursty.info.summary.usage);
    eprintln!("usage without / with a collector: {u0:.3} / {u1:.3} cores (share {share:.3})");
    assert!((u1 * (1.0 - share) - u0).abs() < 0.01, "{u0} {u1} {share}");
    let again = run_constant(gc, 50, 600, 1);
    assert_eq!(again.info, bursty.info);
}

/// The best (highest) K8s-CPU-Fast target that meets the SLO on a short constant load of
/// `rate` (the trace's value, before the app's multiplier).
fn best_fast_target(scenario: Arc<Scenario>, rate: u32) -> Option<f64> {
    [0.9, 0.8, 0.7, 0.6, 0.5].into_iter().find(|&t| {
        let mut cfg = constant(scenario.clone(), rate, 240);
        cfg.scaler = ScalerKind::K8sCpuFast;
        cfg.targets = Targets::new(t, t);
        cfg.ramp_s = 60;
        cfg.load = traces::Load::users();
        let s = run(&cfg, None, &mut |_, _| {}).unwrap().info.summary;
        eprintln!(
            "  target {t}: P99 {:.1} ms, throttle ratio {:.3}",
            s.p99_ms, s.throttle_ratio
        );
        s.slo_met
    })
}

#[test]
fn collectors_make_the_k8s_baseline_need_a_lower_target() {
    // The calibrated hotel-reservation (Go collectors), 3,900 users for 4 minutes (the
    // busiest trace's peak, where the frontend's heap is full), against the same app with its
    // collectors taken out.
    let bursty = Arc::new(Scenario::builtin("hotel-reservation").unwrap());
    let mut file = bursty.file.clone();
    for s in &mut file.services {
        s.runtime = None;
    }
    let smooth = Arc::new(Scenario::compile("smooth.toml", file).unwrap());
    eprintln!("with collectors:");
    let with = best_fast_target(bursty, 390);
    eprintln!("without:");
    let without = best_fast_target(smooth, 390);
    eprintln!("best K8s-CPU-Fast target: {with:?} with collectors, {without:?} without");
    let (Some(with), Some(without)) = (with, without) else {
        panic!("both should meet the SLO at some target: {with:?} {without:?}");
    };
    assert!(with < without, "{with} vs {without}");
}

/// `rps` requests per second, second by second, on the one-thread 10-ms service (SLO 1 s,
/// no ramp), its container held at one core.
fn stepped(rps: Vec<u32>, stop: bool) -> RunOutput {
    let mut cfg = RunPlan::new(
        one_service(1, 4, 10.0),
        Arc::new(Trace::new("steps", rps)),
        ScalerKind::Const,
        Targets::new(0.1, 0.1),
    );
    cfg.ramp_s = 0;
    cfg.initial_limit = Some(1.0);
    cfg.stop_when_missed = stop;
    run(&cfg, None, &mut |_, _| {}).unwrap()
}

fn seconds(parts: &[(u32, usize)]) -> Vec<u32> {
    parts
        .iter()
        .flat_map(|&(rps, n)| std::iter::repeat_n(rps, n))
        .collect()
}

#[test]
fn a_run_stops_once_its_slo_is_certainly_missed_and_not_before() {
    // Half load for a minute, then twice what the service can do: the queue grows without
    // bound, so the SLO is lost a few seconds into the overload.
    let rps = seconds(&[(50, 60), (200, 120)]);
    let full = stepped(rps.clone(), false);
    let stopped = stepped(rps, true);
    let (f, s) = (&full.info.summary, &stopped.info.summary);
    eprintln!(
        "full: P99 {:.0} ms, {} + {} requests; stopped at {:?} s",
        f.p99_ms, f.requests, f.incomplete, s.stopped_s
    );
    assert!(!f.slo_met && f.stopped_s.is_none());
    assert!(!s.slo_met);
    let at = s.stopped_s.expect("a certain miss stops the run");
    // Not before the overload has made more than 1% of all requests late, and long before the
    // trace's end.
    assert!(at > 62.0 && at < 120.0, "stopped at {at} s");
    // It ran only that far: fewer requests, no draining.
    assert!(stopped.stats.arrivals < full.stats.arrivals / 2);
    assert!(stopped.stats.events < full.stats.events / 2);
    // What it did run is the same run.
    assert!(
        (s.allocation - f.allocation).abs() < 1e-9,
        "a constant limit"
    );
}

#[test]
fn a_run_that_meets_its_slo_never_stops_even_after_a_bad_moment() {
    // Two seconds of overload early on make more than 1% of the requests sent by then late
    // (so the watch draws the run's total), but under 1% of the whole run's: the SLO holds.
    let rps = seconds(&[(50, 20), (200, 2), (50, 1200)]);
    let full = stepped(rps.clone(), false);
    let stopped = stepped(rps, true);
    assert!(full.info.summary.slo_met, "{}", full.info.report());
    assert_eq!(stopped.info.summary, full.info.summary);
    assert_eq!(stopped.stats.events, full.stats.events);
}

#[test]
fn the_requests_judged_are_known_before_an_open_loop_run() {
    use sim::engine::Engine;
    let mut cfg = constant(one_service(2, 4, 10.0), 80, 200);
    cfg.ramp_s = 30;
    let out = run(&cfg, None, &mut |_, _| {}).unwrap();
    let s = &out.info.summary;
    let scenario = cfg.scenario.clone();
    let engine = Engine::new(&scenario, cfg.rates(), cfg.load, &[1.0], cfg.seed);
    assert_eq!(engine.sends_from(30.0), Some(s.requests + s.incomplete));
    assert_eq!(engine.sends_from(0.0), Some(out.stats.arrivals));
    let users = Engine::new(&scenario, cfg.rates(), traces::Load::users(), &[1.0], 1);
    assert_eq!(users.sends_from(0.0), None);
}

/// Two services on one node, a request calling `a` then `b` (2 ms of CPU each, exponential,
/// no network delay); `top` and `node` are extra TOML lines for the file and the node.
/// An app named `name`: `services` on one node of `cores` cores, the request `r` starting
/// at `a.x` with the call tree `calls`; `top` and `node` add lines to the app's and the
/// node's tables.
fn app(
    name: &str,
    delay_ms: f64,
    top: &str,
    cores: u32,
    node: &str,
    services: &[&str],
    calls: &str,
) -> Arc<Scenario> {
    let mut text = format!(
        r#"
name = "{name}"
slo_ms = 1000
network_delay = {{ kind = "const", ms = {delay_ms} }}
{top}
[[nodes]]
name = "n"
cores = {cores}
{node}
"#
    );
    for service in services {
        text += &format!("[[services]]\nname = \"{service}\"\nnode = \"n\"\n");
    }
    text += "[[requests]]\nname = \"r\"\nweight = 1\ncall = \"a.x\"\n";
    text += calls;
    parse(name, &text)
}

/// `a` calls `b`, each 2 ms of CPU on average, no network delay.
fn chain(top: &str, cores: u32, node: &str) -> Arc<Scenario> {
    let calls = r#"
[calls."a.x"]
service = "a"
cpu = { kind = "exp", mean_ms = 2 }
calls = [["b.y"]]
[calls."b.y"]
service = "b"
cpu = { kind = "exp", mean_ms = 2 }
"#;
    app("chain", 0.0, top, cores, node, &["a", "b"], calls)
}

#[test]
fn a_node_scheduled_per_cpu_serves_what_processor_sharing_serves() {
    // Two services on one 4-CPU node, calls of 2 ms at 600 requests per second (a request
    // calls both: 2.4 cores, so threads often share a CPU), ample limits: per CPU each change
    // re-rates only the containers with threads on the CPUs it moved (the debug build checks
    // every container's rates and the node's counts after each change), and the work done
    // must be processor sharing's.
    let go = |scheduler: &str| {
        let scenario = chain("", 4, &format!("scheduler = \"{scheduler}\""));
        let mut cfg = constant(scenario, 600, 120);
        cfg.initial_limit = Some(4.0);
        cfg.seed = 3;
        run(&cfg, None, &mut |_, _| {}).unwrap().info.summary
    };
    let (ps, per_cpu) = (go("processor-sharing"), go("per-cpu"));
    eprintln!(
        "usage {:.4} / {:.4} cores, P50 {:.2} / {:.2} ms (processor sharing / per CPU)",
        ps.usage, per_cpu.usage, ps.p50_ms, per_cpu.p50_ms
    );
    assert!((ps.usage - per_cpu.usage).abs() < 1e-3 * ps.usage);
    // A CPU can idle while two threads share another: per CPU is slower, not faster.
    assert!(per_cpu.p50_ms >= ps.p50_ms);
}

#[test]
fn independent_periods_decorrelate_the_stalls_of_a_chain() {
    // A request calls a, then b; both at 0.25 cores against 0.2 cores of work each, so
    // both throttle in about 40% of their periods. With every period aligned (the model
    // before session 15) both refill at the same moment, so the requests a releases at a
    // refill all reach b as it is spending its own fresh quota; with each container's
    // periods on a grid of its own, as the kernel runs them, they reach b mid-period.
    let go = |periods: &str, seed: u64| {
        let scenario = chain(&format!("cfs_periods = \"{periods}\""), 8, "");
        let mut cfg = constant(scenario, 100, 300);
        cfg.initial_limit = Some(0.25);
        cfg.seed = seed;
        run(&cfg, None, &mut |_, _| {}).unwrap().info.summary
    };
    for seed in 1..=3 {
        let (aligned, own) = (go("aligned", seed), go("independent", seed));
        eprintln!(
            "seed {seed}: P99 {:.1} / {:.1} ms, throttle ratio {:.3} / {:.3} (aligned / own grids)",
            aligned.p99_ms, own.p99_ms, aligned.throttle_ratio, own.throttle_ratio
        );
        // The same requests and the same work either way.
        assert_eq!(aligned.requests, own.requests);
        assert!((aligned.usage - own.usage).abs() < 0.01 * aligned.usage);
        assert!(own.p99_ms < 0.95 * aligned.p99_ms);
    }
}

/// One service serving a light and a heavy request type (1:1), on `cores` cores; the heavy
/// one alone misses the 50-ms SLO (an exponential 20 ms has its P99 at 92 ms).
fn two_types(cores: u32) -> Arc<Scenario> {
    serving(
        "two-types",
        50.0,
        cores,
        None,
        &[("light", 1.0), ("heavy", 20.0)],
    )
}

#[test]
fn each_request_type_is_judged_on_its_own_and_together_they_are_the_run() {
    // 40 RPS of each half on 4 cores: about 0.4 cores busy, no queue to speak of.
    let out = run_constant(two_types(4), 40, 600, 1);
    let s = &out.info.summary;
    let by = &s.by_request;
    assert_eq!(
        by.iter().map(|t| t.request.as_str()).collect::<Vec<_>>(),
        ["light", "heavy"]
    );
    let (light, heavy) = (&by[0].latencies, &by[1].latencies);
    assert_eq!(light.requests + heavy.requests, s.requests);
    assert_eq!(light.incomplete + heavy.incomplete, s.incomplete);
    assert!(
        heavy.p50_ms > 5.0 * light.p50_ms,
        "20 ms against 1 ms of CPU: {heavy:?} {light:?}"
    );
    assert!(light.slo_met && !heavy.slo_met, "{light:?} {heavy:?}");
    // A mixture's percentile lies between its parts'.
    assert!(
        light.p99_ms <= s.p99_ms && s.p99_ms <= heavy.p99_ms,
        "{s:?}"
    );
    assert!(
        out.info.report().contains("\n  heavy  P50"),
        "{}",
        out.info.report()
    );

    // Overloaded (about 0.4 cores of work a second on a tenth of a core): requests are left
    // unfinished at the end, and each type owns its share of them.
    let mut cfg = constant(two_types(4), 40, 120);
    cfg.initial_limit = Some(0.1);
    let out = run(&cfg, None, &mut |_, _| {}).unwrap();
    let s = &out.info.summary;
    let unfinished: u64 = s.by_request.iter().map(|t| t.latencies.incomplete).sum();
    assert!(s.incomplete > 0 && unfinished == s.incomplete, "{s:?}");
    assert!(s
        .by_request
        .iter()
        .all(|t| t.latencies.incomplete > 0 && !t.latencies.slo_met));
}

#[test]
fn a_services_timer_work_runs_beside_its_calls_and_throttles_them() {
    // 40 ms every second on one thread, beside 20 RPS of 5 ms calls (0.1 cores), under a
    // quarter-core limit (25 ms a period): the timer's work spends the quota of the periods
    // it starts in, and the calls caught there wait.
    let plain = serving_toml("timer", 1000.0, 4, None, &[("r", 5.0)]);
    let timed = plain.replacen(
        "node = \"n\"",
        "node = \"n\"\nperiodic = [{ every_s = 1, cpu_ms = 40 }]",
        1,
    );
    let run_at = |text: &str| {
        let mut cfg = constant(parse("timer", text), 20, 600);
        cfg.initial_limit = Some(0.25);
        run(&cfg, None, &mut |_, _| {}).unwrap().info.summary
    };
    let (without, with) = (run_at(&plain), run_at(&timed));
    assert_eq!(without.requests, with.requests, "the same requests");
    assert!(
        (with.usage - without.usage - 0.04).abs() < 0.002,
        "40 ms a second more: {} against {}",
        with.usage,
        without.usage
    );
    assert!(
        with.throttle_ratio > without.throttle_ratio + 0.05,
        "{} against {}",
        with.throttle_ratio,
        without.throttle_ratio
    );
    assert!(with.p99_ms > 2.0 * without.p99_ms, "{with:?} {without:?}");
}

/// A request through three services, `a` -> `b` -> `c`, each call 2 ms of CPU and every hop
/// 1 ms of network; `a` has 2 ms of CPU after its child, `b` has `b_after` (none if 0).
fn three_deep(b_after: f64) -> Arc<Scenario> {
    let after = if b_after > 0.0 {
        format!("cpu_after = {{ kind = \"const\", ms = {b_after} }}")
    } else {
        String::new()
    };
    let calls = format!(
        r#"
[calls."a.x"]
service = "a"
cpu = {{ kind = "const", ms = 2 }}
calls = [["b.y"]]
cpu_after = {{ kind = "const", ms = 2 }}
[calls."b.y"]
service = "b"
cpu = {{ kind = "const", ms = 2 }}
calls = [["c.z"]]
{after}
[calls."c.z"]
service = "c"
cpu = {{ kind = "const", ms = 2 }}
"#
    );
    app("three-deep", 1.0, "", 32, "", &["a", "b", "c"], &calls)
}

#[test]
fn a_call_with_nothing_after_its_children_answers_as_its_last_answer_arrives() {
    // Six hops of 1 ms and four CPU phases of 2 ms: 14 ms, whoever answers when, on a node
    // with a core for every call.
    let plain = run_constant(three_deep(0.0), 20, 60, 1);
    let s = &plain.info.summary;
    assert!(s.requests > 1000, "{} requests", s.requests);
    for (what, got) in [("P50", s.p50_ms), ("P99", s.p99_ms), ("mean", s.mean_ms)] {
        assert!((got - 14.0).abs() < 0.01, "{what} {got} ms, not 14 ms");
    }
    // `b`'s answer passes up as `c`'s arrives: no event of its own. With CPU after its child
    // it needs two (the answer that starts that CPU and the CPU's end), on the same arrivals.
    let with_after = run_constant(three_deep(1.0), 20, 60, 1);
    assert_eq!(with_after.stats.arrivals, plain.stats.arrivals);
    assert!((with_after.info.summary.p99_ms - 15.0).abs() < 0.01);
    assert_eq!(
        with_after.stats.events - plain.stats.events,
        2 * plain.stats.arrivals,
        "events beyond b's after-CPU phase"
    );
}

/// `n` requests of 10 ms of CPU each, all sent at 1 ms to one service of 8 threads, on
/// a node of 4 hardware threads (`smt`: two to a core, or 4 whole cores) and a quota of
/// `limit` cores that is never refilled (aligned periods, nobody ends one): when each is
/// answered (`None`: not within 90 ms) and the CPU the cgroup was charged.
fn burst_on(smt: bool, n: usize, limit: f64) -> (Vec<Option<f64>>, f64) {
    use sim::engine::Engine;
    let node = if smt { "smt_yield = 0.25" } else { "" };
    // A thread for every request, more than the node's hardware threads.
    let calls = r#"
[[services]]
name = "a"
node = "n"
threads = 8
[calls."a.x"]
service = "a"
cpu = { kind = "const", ms = 10 }
"#;
    let scenario = app("smt", 0.0, "cfs_periods = \"aligned\"", 4, node, &[], calls);
    let mut engine = Engine::new(&scenario, vec![0.0], traces::Load::Poisson, &[limit], 1)
        .with_arrivals(vec![0.001; n], vec![0; n]);
    let mut done = vec![None; 0];
    engine.run_until(0.09, &mut |c| done.push(Some(c.done)));
    done.resize(n, None);
    (done, engine.counters(0).usage)
}

#[test]
fn smt_threads_past_half_the_node_run_slower_and_are_charged_their_whole_time() {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    // Every request answered at `at` (`None`: none within 90 ms), `charged` s of CPU.
    let check = |smt: bool, n: usize, limit: f64, at: Option<f64>, charged: f64| {
        let (done, usage) = burst_on(smt, n, limit);
        let answered = done.iter().all(|d| match (d, at) {
            (Some(d), Some(at)) => close(*d, at),
            (None, None) => true,
            _ => false,
        });
        assert!(
            answered && close(usage, charged),
            "SMT {smt}, {n} threads, limit {limit}: answered {done:?}, charged {usage}"
        );
    };
    // Two threads: a core each, as without SMT.
    check(true, 2, 100.0, Some(0.011), 0.020);
    // Four on two cores: each pair does 1.25 threads' work, so 10 ms of work takes 16 ms,
    // and each thread is charged those 16 ms.
    check(true, 4, 100.0, Some(0.017), 0.064);
    check(false, 4, 100.0, Some(0.011), 0.040);
    // Eight threads on four hardware threads: half the time on one, at 0.3125 of a core.
    check(true, 8, 100.0, Some(0.033), 0.128);
    // The same 40 ms of work spends a 50-ms quota on SMT threads (64 ms would be charged)
    // and stalls to the period's end; on whole cores it fits.
    check(true, 4, 0.5, None, 0.050);
    check(false, 4, 0.5, Some(0.011), 0.040);
}
