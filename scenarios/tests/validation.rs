//! Every built-in scenario loads; every kind of bad file gets its own error naming the field.

use scenarios::{Scenario, ScenarioError, BUILTIN};

#[test]
fn builtins_load_with_the_papers_shapes() {
    let expect = [
        ("hotel-reservation", 17, 100.0, 10.0, Some(2000)),
        ("social-network", 30, 200.0, 1.5, Some(500)),
        ("train-ticket", 68, 1000.0, 1.0, Some(200)),
        ("demo", 3, 80.0, 0.2, Some(40)),
    ];
    for (name, services, slo, mult, constant) in expect {
        let s = Scenario::builtin(name).unwrap();
        assert_eq!(s.services.len(), services, "{name}");
        assert_eq!(
            (s.slo_ms, s.multiplier, s.constant_rps),
            (slo, mult, constant),
            "{name}"
        );
        assert!(
            s.services.iter().any(|x| x.group == 1),
            "{name} has a CPU-heavy group"
        );
        assert!(
            s.services.iter().any(|x| x.group == 2),
            "{name} has a second group"
        );
    }
    assert_eq!(BUILTIN.len(), expect.len());
}

#[test]
fn request_mixes_are_the_originals() {
    let mix = |name: &str| -> Vec<(String, f64)> {
        Scenario::builtin(name)
            .unwrap()
            .requests
            .iter()
            .map(|r| (r.name.clone(), r.weight))
            .collect()
    };
    let s = |v: &[(&str, f64)]| {
        v.iter()
            .map(|(a, b)| (a.to_string(), *b))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        mix("hotel-reservation"),
        s(&[
            ("search", 600.0),
            ("recommend", 390.0),
            ("login", 5.0),
            ("reserve", 5.0)
        ])
    );
    // compose-post is one request type per media-filter replica, a third of the posts each.
    let social = mix("social-network");
    let compose: f64 = social
        .iter()
        .filter(|(n, _)| n.starts_with("compose-post-"))
        .map(|(_, w)| w)
        .sum();
    assert!((compose - 20.0).abs() < 1e-9, "{social:?}");
    assert_eq!(
        social[3..],
        s(&[("read-home-timeline", 65.0), ("read-user-timeline", 15.0)])
    );
    // train-ticket: the original script's task (home, two searches, one booking in ten) as
    // flows, and weights giving the same mix (the file is refused otherwise).
    let train = Scenario::builtin("train-ticket").unwrap();
    let live = train.file.live.as_ref().unwrap();
    assert_eq!(live.setup, vec!["login".to_string()]);
    assert_eq!(live.setup_reuse_s, 1800.0);
    let per_task: f64 = live
        .flows
        .iter()
        .map(|f| f.weight * f.steps.len() as f64)
        .sum::<f64>()
        / live.flows.iter().map(|f| f.weight).sum::<f64>();
    assert!((per_task - 3.4).abs() < 1e-9, "{per_task}");
    assert_eq!(
        mix("train-ticket"),
        s(&[
            ("home", 10.0),
            ("search-departure", 10.0),
            ("search-return", 10.0),
            ("assurance-types", 1.0),
            ("get-food", 1.0),
            ("contacts", 1.0),
            ("preserve", 1.0),
            ("login", 0.01)
        ])
    );
}

/// `GOOD` with a second request type and live flows over both.
fn with_flows(flows: &str) -> String {
    GOOD.replace(
        "[calls.\"a.x\"]",
        &format!(
            r#"http = {{ method = "GET", path = "/r", capture = {{ id = "/data/id" }} }}
[[requests]]
name = "q"
weight = 2
call = "a.x"
http = {{ method = "POST", path = "/q/{{$id}}", body = "{{}}", headers = {{ X-Token = "{{$id}}" }} }}
[live]
{flows}
[calls."a.x"]"#
        ),
    )
}

#[test]
fn live_flows_must_send_the_weights_mix() {
    let ok = with_flows(r#"flows = [{ name = "f", weight = 1, steps = ["r", "q", "q"] }]"#);
    let s = Scenario::parse("flows.toml", &ok).unwrap();
    assert_eq!(s.file.live.as_ref().unwrap().flows[0].steps.len(), 3);
    for (flows, expected) in [
        (
            r#"flows = [{ name = "f", weight = 1, steps = ["r", "q"] }]"#,
            "'r' is 50.00% of the requests the flows send but 33.33% of the weights",
        ),
        (
            r#"flows = [{ name = "f", weight = 1, steps = ["q", "q"] }]"#,
            "'r' is in no flow and not in the set-up",
        ),
        (
            r#"flows = [{ name = "f", weight = 1, steps = ["r", "nope"] }]"#,
            "live.flows[0].steps[1]: unknown request type 'nope'",
        ),
        (
            r#"flows = [{ name = "f", weight = 0, steps = ["r", "q", "q"] }]"#,
            "live.flows[0].weight",
        ),
        (
            r#"flows = [{ name = "f", weight = 1, steps = [] }]"#,
            "live.flows[0].steps: no steps",
        ),
        (r#"setup = ["r"]"#, "a set-up without flows"),
        (
            r#"setup_reuse_s = -1
flows = [{ name = "f", weight = 1, steps = ["r", "q", "q"] }]"#,
            "live.setup_reuse_s",
        ),
    ] {
        let e = err(&with_flows(flows));
        assert!(e.contains(expected), "{flows}: {e}");
    }
    // A set-up type needs no flow; an http-less type cannot be a step.
    let setup = with_flows(
        r#"setup = ["r"]
flows = [{ name = "f", weight = 1, steps = ["q"] }]"#,
    );
    Scenario::parse("setup.toml", &setup).unwrap();
    let no_http = with_flows(r#"flows = [{ name = "f", weight = 1, steps = ["r", "q", "q"] }]"#)
        .replace(
            r#"http = { method = "GET", path = "/r", capture = { id = "/data/id" } }"#,
            "",
        );
    assert!(err(&no_http).contains("has no `http`"), "{}", err(&no_http));
}

#[test]
fn http_definitions_are_checked() {
    let base = with_flows("");
    for (from, to, expected) in [
        (
            r#"capture = { id = "/data/id" }"#,
            r#"capture = { id = "data.id" }"#,
            "is not a JSON pointer",
        ),
        (
            r#"body = "{}","#,
            r#"body = "{}", form = [["a", "b"]],"#,
            "a form and a body",
        ),
        ("X-Token", r#""X Token""#, "bad header name"),
        (r#"method = "GET""#, r#"method = "FETCH""#, "is not one of"),
    ] {
        assert!(base.contains(from), "{from}");
        let e = err(&base.replace(from, to));
        assert!(e.contains(expected), "{to}: {e}");
    }
}

/// The calibration the scenario descriptions state: CPU per request on the mix, in ms.
#[test]
fn calibration_matches_the_documented_costs() {
    for (name, lo, hi) in [
        ("hotel-reservation", 4.5, 6.5),
        // The ML variant: every post's image costs 100 ms of classification.
        ("social-network", 30.0, 50.0),
        ("train-ticket", 45.0, 65.0),
    ] {
        let s = Scenario::builtin(name).unwrap();
        let ms: f64 = s.mean_cpu_per_request().iter().sum::<f64>() * 1000.0;
        assert!(ms > lo && ms < hi, "{name}: {ms:.2} ms of CPU per request");
        // Group 1 is the CPU-heavy group the artifact chose: it holds at least half the CPU.
        let per = s.mean_cpu_per_request();
        let g1: f64 = s
            .services
            .iter()
            .zip(&per)
            .filter(|(x, _)| x.group == 1)
            .map(|(_, c)| c)
            .sum();
        assert!(
            g1 / per.iter().sum::<f64>() > 0.5,
            "{name}: group 1 has {g1}"
        );
    }
}

const GOOD: &str = r#"
name = "t"
slo_ms = 50
[[nodes]]
name = "n1"
cores = 4
[[services]]
name = "a"
node = "n1"
[[services]]
name = "b"
node = "n1"
[[requests]]
name = "r"
weight = 1
call = "a.x"
[calls."a.x"]
service = "a"
cpu = { kind = "exp", mean_ms = 1.0 }
calls = [["b.y"]]
[calls."b.y"]
service = "b"
cpu = { kind = "const", ms = 0.5 }
"#;

fn err(text: &str) -> String {
    Scenario::parse("bad.toml", text).unwrap_err().to_string()
}

#[test]
fn the_good_file_is_good() {
    let s = Scenario::parse("good.toml", GOOD).unwrap();
    assert_eq!(s.requests[0].nodes.len(), 2);
    assert_eq!(s.services[0].threads, 4, "threads default to node cores");
    assert_eq!(
        s.services[0].initial_limit, 4.0,
        "initial limit defaults to node cores"
    );
    let demo = Scenario::builtin("demo").unwrap();
    assert_eq!(demo.file.nodes[0].agent.as_deref(), Some("127.0.0.1:7070"));
    assert_eq!(demo.file.requests[1].http.as_ref().unwrap().method, "POST");
}

#[test]
fn each_bad_file_gets_its_own_error() {
    let cases: &[(&str, &str, &str)] = &[
        // (what to replace, with what, the expected message)
        (
            r#"node = "n1"
[[services]]
name = "b""#,
            r#"node = "n9"
[[services]]
name = "b""#,
            "bad.toml: services[0].node: unknown node 'n9'",
        ),
        (
            r#"service = "b""#,
            r#"service = "zz""#,
            "bad.toml: calls.\"b.y\".service: unknown service 'zz'",
        ),
        (
            r#"calls = [["b.y"]]"#,
            r#"calls = [["b.q"]]"#,
            "bad.toml: calls.\"a.x\".calls[0][0]: unknown call 'b.q'",
        ),
        (
            r#"ms = 0.5 }"#,
            r#"ms = 0.5 }
calls = [["a.x"]]"#,
            "bad.toml: calls.\"b.y\".calls: call cycle: a.x -> b.y -> a.x",
        ),
        (
            r#"ms = 0.5"#,
            r#"ms = -0.5"#,
            "bad.toml: calls.\"b.y\".cpu: ms must be > 0, got -0.5",
        ),
        (
            r#"mean_ms = 1.0"#,
            r#"mean_ms = 0.0"#,
            "bad.toml: calls.\"a.x\".cpu: mean_ms must be > 0, got 0",
        ),
        (
            r#"weight = 1"#,
            r#"weight = 0"#,
            "bad.toml: requests[0].weight: must be a positive number, got 0",
        ),
        (
            r#"name = "b""#,
            r#"name = "a""#,
            "bad.toml: services[1].name: duplicate service 'a'",
        ),
        (
            r#"call = "a.x""#,
            r#"call = "nope""#,
            "bad.toml: requests[0].call: unknown call 'nope'",
        ),
        (
            r#"cores = 4"#,
            r#"cores = 0"#,
            "bad.toml: nodes[0].cores: must be a positive number, got 0",
        ),
        (
            r#"cores = 4"#,
            r#"cores = 2.5
scheduler = "per-cpu""#,
            "bad.toml: nodes[0].cores: 2.5: a node scheduled per CPU needs a whole number of CPUs, 1 to 1024",
        ),
        (
            r#"cores = 4"#,
            r#"cores = 4
smt_yield = 1.5"#,
            "bad.toml: nodes[0].smt_yield: 1.5: must be from 0 to 1",
        ),
        (
            r#"cores = 4"#,
            r#"cores = 5
smt_yield = 0.25"#,
            "bad.toml: nodes[0].smt_yield: needs an even whole number of cores (two threads a core), got 5",
        ),
        (
            r#"cores = 4"#,
            r#"cores = 4
smt_yield = 0.25
scheduler = "per-cpu""#,
            "bad.toml: nodes[0].smt_yield: needs processor sharing: per-CPU nodes have no SMT model",
        ),
        (
            r#"cores = 4"#,
            r#"cores = 4
scheduler = "fifo""#,
            "bad.toml:7:13: nodes[0].scheduler: unknown variant `fifo`, expected `processor-sharing` or `per-cpu`",
        ),
        (
            r#"slo_ms = 50"#,
            r#"slo_ms = -1"#,
            "bad.toml: slo_ms: must be a positive number, got -1",
        ),
        (
            r#"slo_ms = 50"#,
            r#"slo_ms = 50
cfs_periods = "staggered""#,
            "bad.toml:4:15: cfs_periods: unknown variant `staggered`, expected `independent` or `aligned`",
        ),
        (
            r#"cores = 4"#,
            r#"cores = 4
agent = "10.0.0.1""#,
            "bad.toml: nodes[0].agent: '10.0.0.1' is not host:port",
        ),
        (
            r#"call = "a.x""#,
            r#"call = "a.x"
http = { method = "FETCH", path = "/x" }"#,
            "bad.toml: requests[0].http.method: 'FETCH' is not one of GET, POST, PUT, DELETE, PATCH",
        ),
        (
            r#"call = "a.x""#,
            r#"call = "a.x"
http = { path = "x" }"#,
            "bad.toml: requests[0].http.path: 'x' must start with '/'",
        ),
        (
            r#"call = "a.x""#,
            r#"call = "a.x"
http = { method = "POST", path = "/x", content_type = "text/plain" }"#,
            "bad.toml: requests[0].http.content_type: a content type without a body",
        ),
        (
            r#"node = "n1"
[[services]]
name = "b""#,
            r#"node = "n1"
group = 3
[[services]]
name = "b""#,
            "bad.toml: services[0].group: must be 1 (CPU-heavy) or 2, got 3",
        ),
        (
            r#"node = "n1"
[[services]]
name = "b""#,
            r#"node = "n1"
runtime = { kind = "go", alloc_mb_per_cpu_s = 100, live_heap_mb = 10, mark_ms_per_mb = 0 }
[[services]]
name = "b""#,
            "bad.toml: services[0].runtime.mark_ms_per_mb: must be a positive number, got 0",
        ),
        (
            r#"node = "n1"
[[services]]
name = "b""#,
            r#"node = "n1"
runtime = { kind = "go", alloc_mb_per_cpu_s = 100, live_heap_mb = 10, mark_ms_per_mb = 2, gomaxprocs = 0 }
[[services]]
name = "b""#,
            "bad.toml: services[0].runtime.gomaxprocs: must be at least 1",
        ),
        (
            r#"node = "n1"
[[services]]
name = "b""#,
            r#"node = "n1"
runtime = { kind = "go", alloc_mb_per_cpu_s = 100, live_heap_mb = 10, mark_ms_per_mb = 2, full_heap_users = 0 }
[[services]]
name = "b""#,
            "bad.toml: services[0].runtime.full_heap_users: must be a positive number, got 0",
        ),
        (
            r#"node = "n1"
[[services]]
name = "b""#,
            r#"node = "n1"
runtime = { kind = "jvm", alloc_mb_per_cpu_s = 100, young_mb = 300, pause_cpu_ms = 10, gc_threads = 5000 }
[[services]]
name = "b""#,
            "bad.toml: services[0].runtime.gc_threads: must be at most 1024, got 5000",
        ),
        (
            r#"calls = [["b.y"]]"#,
            r#"calls = [["b.y"]]
parallelism = 0"#,
            "bad.toml: calls.\"a.x\".parallelism: must be within 1..=255, got 0",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(GOOD.contains(from), "fixture lacks {from}");
        let text = GOOD.replacen(from, to, 1);
        assert_eq!(&err(&text), expected);
    }
}

#[test]
fn empty_mix_and_duplicates() {
    let no_requests = GOOD
        .replace(
            "[[requests]]\nname = \"r\"\nweight = 1\ncall = \"a.x\"\n",
            "",
        )
        .replace("slo_ms = 50", "slo_ms = 50\nrequests = []");
    assert_eq!(
        err(&no_requests),
        "bad.toml: requests: the request mix is empty"
    );
    let dup = GOOD.replace(
        "[[requests]]",
        "[[requests]]\nname = \"r\"\nweight = 1\ncall = \"a.x\"\n[[requests]]",
    );
    assert_eq!(
        err(&dup),
        "bad.toml: requests[1].name: duplicate request 'r'"
    );
    let dup_node = GOOD.replace(
        "[[services]]\nname = \"a\"",
        "[[nodes]]\nname = \"n1\"\ncores = 2\n[[services]]\nname = \"a\"",
    );
    assert_eq!(
        err(&dup_node),
        "bad.toml: nodes[1].name: duplicate node 'n1'"
    );
}

#[test]
fn syntax_errors_name_line_and_field() {
    let unknown_kind = GOOD.replace(r#"kind = "exp""#, r#"kind = "weibull""#);
    let e = err(&unknown_kind);
    assert!(e.starts_with("bad.toml:19:"), "{e}");
    assert!(
        e.contains("calls.a.x.cpu") && e.contains("unknown variant `weibull`"),
        "{e}"
    );

    let typo = GOOD.replace("slo_ms = 50", "slo_ms = 50\nslo_msx = 3");
    let e = err(&typo);
    assert!(
        e.starts_with("bad.toml:4:") && e.contains("unknown field `slo_msx`"),
        "{e}"
    );

    let wrong_type = GOOD.replace("cores = 4", "cores = \"four\"");
    let e = err(&wrong_type);
    assert!(
        e.starts_with("bad.toml:6:") && e.contains("nodes[0].cores"),
        "{e}"
    );

    let e = err("name = ");
    assert!(e.starts_with("bad.toml:1:"), "{e}");
}

#[test]
fn missing_files_and_unknown_builtins() {
    let e = Scenario::load("/nonexistent/app.toml").unwrap_err();
    assert!(matches!(e, ScenarioError::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/app.toml: cannot read"),
        "{e}"
    );
    assert!(matches!(
        Scenario::load("hotel"),
        Err(ScenarioError::UnknownBuiltin(_))
    ));
}

#[test]
fn exponential_fan_out_is_refused() {
    // Each level calls the next ten times: 10^5 calls per request.
    let mut text = String::from(
        "name = \"x\"\nslo_ms = 1\n[[nodes]]\nname = \"n\"\ncores = 1\n[[services]]\nname = \"s\"\nnode = \"n\"\n[[requests]]\nname = \"r\"\nweight = 1\ncall = \"l0\"\n",
    );
    for level in 0..5 {
        let child = format!("\"l{}\"", level + 1);
        text.push_str(&format!(
            "[calls.l{level}]\nservice = \"s\"\ncpu = {{ kind = \"const\", ms = 1 }}\ncalls = [[{}]]\n",
            vec![child; 10].join(", ")
        ));
    }
    text.push_str("[calls.l5]\nservice = \"s\"\ncpu = { kind = \"const\", ms = 1 }\n");
    let e = err(&text);
    assert!(e.contains("more than 10000 calls"), "{e}");
}

const ONE_SERVICE: &str = "name = \"x\"\nslo_ms = 1\n[[nodes]]\nname = \"n\"\ncores = 1\n[[services]]\nname = \"s\"\nnode = \"n\"\n[[requests]]\nname = \"r\"\nweight = 1\ncall = \"l0\"\n";

#[test]
fn a_very_deep_chain_is_refused_without_overflowing_the_stack() {
    // 50,000 calls each calling the next (a recursive check used to overflow on such files).
    let n = 50_000;
    let e = check_on_a_small_stack(chain(n, |i| i + 1));
    assert!(e.contains("more than 100 calls deep"), "{e}");
    // And a cycle at the end of a long chain is still found.
    let e = check_on_a_small_stack(chain(n, |i| (i + 1) % n));
    assert!(e.contains("call cycle"), "{e}");
}

/// A scenario whose calls `l0 .. l(n-1)` each call `l{next(i)}` (and a last call `l{n}` that
/// calls nothing, when the chain leads to it).
fn chain(n: usize, next: impl Fn(usize) -> usize) -> String {
    let call = |i: usize, calls: String| {
        format!("[calls.l{i}]\nservice = \"s\"\ncpu = {{ kind = \"const\", ms = 1 }}\n{calls}")
    };
    let mut text = String::from(ONE_SERVICE);
    for i in 0..n {
        text.push_str(&call(i, format!("calls = [[\"l{}\"]]\n", next(i))));
    }
    if next(n - 1) == n {
        text.push_str(&call(n, String::new()));
    }
    text
}

/// The scenario's error, checked on a thread with a small stack, as a sweep's workers have.
fn check_on_a_small_stack(text: String) -> String {
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || err(&text))
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn too_many_services_are_refused() {
    let mut text = String::from(ONE_SERVICE);
    for i in 0..10_001 {
        text.push_str(&format!("[[services]]\nname = \"s{i}\"\nnode = \"n\"\n"));
    }
    text.push_str("[calls.l0]\nservice = \"s\"\ncpu = { kind = \"const\", ms = 1 }\n");
    let e = err(&text);
    assert!(e.contains("at most 10000"), "{e}");
}

#[test]
fn runtimes_compile_with_the_runtimes_defaults() {
    let go = GOOD.replacen(
        "node = \"n1\"",
        "node = \"n1\"\nruntime = { kind = \"go\", alloc_mb_per_cpu_s = 100, live_heap_mb = 50, mark_ms_per_mb = 2 }",
        1,
    );
    let rt = Scenario::parse("go.toml", &go).unwrap().services[0]
        .runtime
        .unwrap();
    // GOGC 100: a cycle per 50 MB allocated = 0.5 core-s of requests; 100 ms of marking on
    // GOMAXPROCS = the node's 4 cores, at least one dedicated worker.
    assert!((rt.trigger_cpu - 0.5).abs() < 1e-12);
    assert!((rt.work - 0.1).abs() < 1e-12);
    assert_eq!(
        (rt.threads, rt.min_threads, rt.stop_the_world),
        (4, 1, false)
    );
    // Go's minimum heap goal of 4 MB: with 1 MB live a cycle comes every 3 MB allocated (not
    // every 1 MB, as GOGC alone would have it), with the 1 MB's mark work.
    let tiny = go.replace("live_heap_mb = 50", "live_heap_mb = 1");
    let rt = Scenario::parse("go.toml", &tiny).unwrap().services[0]
        .runtime
        .unwrap();
    assert!((rt.trigger_cpu - 0.03).abs() < 1e-12, "{}", rt.trigger_cpu);
    assert!((rt.work - 0.002).abs() < 1e-12);
    // From 2 MB live up GOGC rules: 3 MB live, a cycle every 3 MB.
    let small = go.replace("live_heap_mb = 50", "live_heap_mb = 3");
    let rt = Scenario::parse("go.toml", &small).unwrap().services[0]
        .runtime
        .unwrap();
    assert!((rt.trigger_cpu - 0.03).abs() < 1e-12, "{}", rt.trigger_cpu);
    let jvm = GOOD.replacen(
        "cores = 4",
        "cores = 32",
        1,
    )
    .replacen(
        "node = \"n1\"",
        "node = \"n1\"\nruntime = { kind = \"jvm\", alloc_mb_per_cpu_s = 150, young_mb = 540, pause_cpu_ms = 300 }",
        1,
    );
    let rt = Scenario::parse("jvm.toml", &jvm).unwrap().services[0]
        .runtime
        .unwrap();
    // HotSpot's ParallelGCThreads on 32 CPUs: 8 + (32 - 8) * 5 / 8 = 23.
    assert_eq!((rt.threads, rt.stop_the_world), (23, true));
    assert!((rt.trigger_cpu - 3.6).abs() < 1e-12);
    assert!((rt.cpu_share() - 0.3 / 3.9).abs() < 1e-12);
}

#[test]
fn digests_tell_models_apart_and_ignore_layout() {
    let digests: Vec<String> = BUILTIN
        .iter()
        .map(|n| Scenario::builtin(n).unwrap().digest())
        .collect();
    for (i, d) in digests.iter().enumerate() {
        assert_eq!(d.len(), 16, "{d}");
        assert!(!digests[..i].contains(d), "{} shares a digest", BUILTIN[i]);
    }
    let good = Scenario::parse("a.toml", GOOD).unwrap().digest();
    let spaced = GOOD.replace("slo_ms = 50", "# a comment\nslo_ms   =   50");
    assert_eq!(Scenario::parse("b.toml", &spaced).unwrap().digest(), good);
    let changed = GOOD.replace("slo_ms = 50", "slo_ms = 51");
    assert_ne!(Scenario::parse("c.toml", &changed).unwrap().digest(), good);
    // How a live load sends the requests is not the model.
    let sent = GOOD.replace(
        "call = \"a.x\"\n",
        "call = \"a.x\"\nhttp = { method = \"GET\", path = \"/r\" }\n",
    );
    assert_ne!(sent, GOOD);
    assert_eq!(Scenario::parse("d.toml", &sent).unwrap().digest(), good);
}

#[test]
fn every_builtin_survives_being_written_back_as_toml() {
    for name in BUILTIN {
        let s = Scenario::builtin(name).unwrap();
        let text = s.file.to_toml().unwrap();
        let again = Scenario::parse("again.toml", &text).unwrap();
        assert_eq!(again.file, s.file, "{name}");
        assert_eq!(
            again.mean_cpu_per_request(),
            s.mean_cpu_per_request(),
            "{name}"
        );
    }
}

#[test]
fn background_cpu_is_checked_and_written_only_when_set() {
    let with = |v: &str| {
        GOOD.replacen(
            "node = \"n1\"",
            &format!("node = \"n1\"\nbackground_cores = {v}"),
            1,
        )
    };
    let s = Scenario::parse("bg.toml", &with("0.25")).unwrap();
    assert_eq!(s.services[0].background, 0.25);
    assert_eq!(s.services[1].background, 0.0, "none unless set");
    for (v, why) in [
        (
            "-0.1",
            "services[0].background_cores: must be between 0 and the node's 4 cores, got -0.1",
        ),
        (
            "5",
            "services[0].background_cores: must be between 0 and the node's 4 cores, got 5",
        ),
        (
            "nan",
            "services[0].background_cores: must be between 0 and the node's 4 cores, got NaN",
        ),
    ] {
        let e = err(&with(v));
        assert!(e.contains(why), "{v}: {e}");
    }
    // A scenario without it writes none (its digest, and so every record's, stays the same).
    let good = Scenario::parse("good.toml", GOOD).unwrap();
    assert!(!good.file.to_toml().unwrap().contains("background"));
    assert!(s
        .file
        .to_toml()
        .unwrap()
        .contains("background_cores = 0.25"));
}

#[test]
fn periodic_work_is_checked_and_written_only_when_set() {
    let with = |v: &str| {
        GOOD.replacen(
            "node = \"n1\"",
            &format!("node = \"n1\"\nperiodic = [{v}]"),
            1,
        )
    };
    let s = Scenario::parse(
        "timer.toml",
        &with("{ every_s = 60, cpu_ms = 400 }, { every_s = 0.5, cpu_ms = 4, threads = 2 }"),
    )
    .unwrap();
    let p = &s.services[0].periodic;
    assert_eq!((p[0].every, p[0].work, p[0].threads), (600, 0.4, 1));
    assert_eq!((p[1].every, p[1].work, p[1].threads), (5, 0.004, 2));
    assert!(
        (p[1].cores() - 0.008).abs() < 1e-12,
        "4 ms every half second"
    );
    assert!(s.services[1].periodic.is_empty(), "none unless set");
    for (v, why) in [
        (
            "{ every_s = 0.25, cpu_ms = 1 }",
            "services[0].periodic[0]: every_s must be a whole number of 0.1-s CFS periods from 0.1 s to a day, got 0.25",
        ),
        (
            "{ every_s = 0, cpu_ms = 1 }",
            "periodic[0]: every_s must be a whole number",
        ),
        (
            "{ every_s = nan, cpu_ms = 1 }",
            "periodic[0]: every_s must be a whole number",
        ),
        (
            "{ every_s = 1, cpu_ms = -1 }",
            "services[0].periodic[0]: cpu_ms must be a positive number, got -1",
        ),
        (
            "{ every_s = 1, cpu_ms = 1, threads = 0 }",
            "services[0].periodic[0]: threads must be between 1 and the node's 4 cores, got 0",
        ),
        (
            "{ every_s = 1, cpu_ms = 1, threads = 5 }",
            "threads must be between 1 and the node's 4 cores, got 5",
        ),
        ("{ every_s = 1 }", "missing field `cpu_ms`"),
        ("{ every_s = 1, cpu_ms = 1, when = 3 }", "unknown field `when`"),
    ] {
        let e = err(&with(v));
        assert!(e.contains(why), "{v}: {e}");
    }
    let good = Scenario::parse("good.toml", GOOD).unwrap();
    assert!(!good.file.to_toml().unwrap().contains("periodic"));
    assert!(s.file.to_toml().unwrap().contains("every_s = 60"));
}

#[test]
fn a_calibration_load_gives_each_request_type_half_of_the_requests_in_turn() {
    let share = |w: &[f64]| -> Vec<f64> {
        let t: f64 = w.iter().sum();
        w.iter()
            .map(|x| (x / t * 1000.0).round() / 1000.0)
            .collect()
    };
    // Three types, 60:30:10: the usual mix, then each one at half, the others keeping their
    // proportions in the other half.
    let phases = scenarios::mix_phases(&[6.0, 3.0, 1.0]);
    let shares: Vec<Vec<f64>> = phases.iter().map(|p| share(p)).collect();
    assert_eq!(
        shares,
        vec![
            vec![0.6, 0.3, 0.1],
            vec![0.5, 0.375, 0.125],
            vec![0.429, 0.5, 0.071],
            vec![0.333, 0.167, 0.5],
        ]
    );
    // Two types: both "half" mixes are half and half, kept once.
    assert_eq!(scenarios::mix_phases(&[9.0, 1.0]).len(), 2);
    // One type: nothing to vary.
    assert_eq!(scenarios::mix_phases(&[2.0]), vec![vec![2.0]]);
    // The built-in apps: every phase is a valid mix (positive weights) and no two are alike.
    for name in BUILTIN {
        let s = Scenario::builtin(name).unwrap();
        let phases = s.mix_phases();
        // Two types have one "half" mix; more have one each.
        let n = s.requests.len();
        assert_eq!(phases.len(), if n == 2 { 2 } else { n + 1 }, "{name}");
        assert!(phases.iter().flatten().all(|w| *w > 0.0), "{name}");
        for (i, p) in phases.iter().enumerate() {
            for q in &phases[..i] {
                assert_ne!(share(p), share(q), "{name}");
            }
        }
    }
}

#[test]
fn a_heap_that_follows_the_load_scales_its_collections_down_to_gos_minimum() {
    let go = GOOD.replacen(
        "node = \"n1\"",
        "node = \"n1\"\nruntime = { kind = \"go\", alloc_mb_per_cpu_s = 100, live_heap_mb = 50, mark_ms_per_mb = 2, full_heap_users = 1000 }",
        1,
    );
    let rt = Scenario::parse("go.toml", &go).unwrap().services[0]
        .runtime
        .unwrap();
    // Compiled at the full heap, as without the field.
    assert!((rt.trigger_cpu - 0.5).abs() < 1e-12 && (rt.work - 0.1).abs() < 1e-12);
    let follows = rt.follows.expect("follows the load");
    // Half the users: half the heap, so half the trigger and half the mark work.
    assert_eq!(follows.scale(500.0), (0.5, 0.5));
    // Full from 1,000 users up.
    assert_eq!(follows.scale(4000.0), (1.0, 1.0));
    // Ten users: a 0.5 MB heap marks a hundredth of the work, but Go's heap goal never drops
    // under 4 MB, so a cycle waits for 3.5 MB of allocation (3.5 / 50 of the full trigger).
    let (trigger, work) = follows.scale(10.0);
    assert!((trigger - 0.07).abs() < 1e-12 && (work - 0.01).abs() < 1e-12);
    // Without the field the heap is fixed.
    let fixed = go.replace(", full_heap_users = 1000", "");
    let rt = Scenario::parse("go.toml", &fixed).unwrap().services[0]
        .runtime
        .unwrap();
    assert!(rt.follows.is_none());
}
