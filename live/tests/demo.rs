//! The demo app's services, in-process: requests walk the call tree over HTTP and burn the
//! CPU the scenario says.

use std::collections::BTreeMap;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use live::demo::{serve, Service};
use scenarios::Scenario;

use live::os::process_cpu_seconds as process_cpu;

/// One test at a time: the first measures this process's CPU.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every service of `scenario` in this process, each on its own loopback port.
async fn start(
    scenario: &Arc<Scenario>,
) -> (
    BTreeMap<String, std::net::SocketAddr>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for s in &scenario.services {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        peers.insert(s.name.clone(), l.local_addr().unwrap());
        listeners.push((s.name.clone(), l));
    }
    let mut tasks = Vec::new();
    for (name, l) in listeners {
        let svc = Service::new(scenario.clone(), &name, &peers).unwrap();
        tasks.push(tokio::spawn(serve(svc, l)));
    }
    (peers, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_walk_the_tree_and_burn_the_cpu_of_the_model() {
    let _one = ONE_AT_A_TIME.lock().await;
    let scenario = Arc::new(Scenario::builtin("demo").unwrap());
    let (peers, tasks) = start(&scenario).await;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let gateway = peers["gateway"];
    let get = |path: String| {
        let client = client.clone();
        async move {
            let resp = client
                .request(Request::get(path).body(Full::default()).unwrap())
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            status
        }
    };

    let n = 80;
    let before = process_cpu();
    for i in 0..n {
        assert_eq!(get(format!("http://{gateway}/get?key={i}")).await, 200);
    }
    let used = process_cpu() - before;
    // get = gateway 4 ms + auth 2 ms + store 6 ms of CPU on average (exponential draws).
    let expected = n as f64 * 0.012;
    eprintln!("{n} requests burned {used:.3} s of CPU (model mean {expected:.3} s)");
    assert!(
        used > 0.6 * expected && used < 1.6 * expected,
        "{used} vs {expected}"
    );

    assert_eq!(get(format!("http://{gateway}/nope")).await, 404);
    // A call of another service's is refused, not run.
    assert_eq!(get(format!("http://{gateway}/call/0/1")).await, 421);
    for t in tasks {
        t.abort();
    }
}

#[test]
fn scenarios_with_background_cpu_are_refused_rather_than_run_without_it() {
    let demo = Scenario::builtin("demo").unwrap();
    let mut file = demo.file.clone();
    file.services[1].background_cores = 0.1;
    let scenario = Arc::new(Scenario::compile("bg", file).unwrap());
    let peers: BTreeMap<String, std::net::SocketAddr> = scenario
        .services
        .iter()
        .map(|s| (s.name.clone(), "127.0.0.1:1".parse().unwrap()))
        .collect();
    assert!(Service::new(scenario.clone(), "gateway", &peers).is_ok());
    let e = Service::new(scenario, "auth", &peers)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("background_cores"), "{e}");
}

#[test]
fn unknown_services_and_missing_peers_are_refused() {
    let scenario = Arc::new(Scenario::builtin("demo").unwrap());
    let peers = BTreeMap::from([("gateway".to_string(), "127.0.0.1:1".parse().unwrap())]);
    assert!(Service::new(scenario.clone(), "nope", &peers).is_err());
    let e = Service::new(scenario, "gateway", &peers).err().unwrap();
    assert!(
        e.to_string().contains("no address for service 'auth'"),
        "{e}"
    );
}

/// train-ticket's flows (an init, a shared login, ids captured from answers) run against the
/// demo app as against the real one: the entry service routes by method and path template and
/// answers the values the load captures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_ticket_flows_run_against_the_demo() {
    let _one = ONE_AT_A_TIME.lock().await;
    let scenario = Arc::new(Scenario::builtin("train-ticket").unwrap());
    let (peers, tasks) = start(&scenario).await;
    let entry = peers["ts-ui-dashboard-service"];
    let url = format!("http://{entry}");

    // The answers carry what the flows capture.
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let send = |method: &str, path: &str| {
        let req = Request::builder()
            .method(method)
            .uri(format!("{url}{path}"))
            .body(Full::default())
            .unwrap();
        let client = client.clone();
        async move {
            let resp = client.request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }
    };
    let (status, body) = send("POST", "/api/v1/users/login").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(json.pointer("/data/token").unwrap().is_string(), "{json}");
    assert!(json.pointer("/data/userId").unwrap().is_string(), "{json}");
    let (status, body) = send("GET", "/api/v1/contactservice/contacts/account/u-1").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(json.pointer("/data/0/id").unwrap().is_string(), "{json}");
    assert_eq!(
        send("GET", "/api/v1/foodservice/foods/2026-01-01/x/y/z")
            .await
            .0,
        404
    );
    assert_eq!(
        send("DELETE", "/index.html").await.0,
        404,
        "the method counts"
    );
    assert_eq!(send("GET", "/index.html").await.0, 200);

    // The whole load: init, a login, tasks.
    let mut spec = live::coordinator::RunSpec::new(
        scenario.clone(),
        Arc::new(traces::Trace::constant(1, 1)),
        &url,
        "t",
    );
    spec.plan.load = traces::Load::Users { think_s: 0.2 };
    let mut config = spec.load_config().unwrap();
    config.rates = vec![3.0; 3];
    config.measure_from_s = 0;
    let mut gen = live::loadgen::LoadGen::new(config).unwrap();
    gen.init().await.unwrap();
    gen.run().await.unwrap();
    let stats = gen.stats();
    let s = stats.lock().unwrap();
    let kinds = |name: &str| -> u64 {
        let k = scenario
            .requests
            .iter()
            .position(|r| r.name == name)
            .unwrap();
        s.seconds.iter().map(|x| x.sent_by_kind[k]).sum()
    };
    let errors: u64 = s.seconds.iter().map(|x| x.errors + x.timeouts).sum();
    assert_eq!(errors, 0, "{:?}", s.last_error);
    assert_eq!(kinds("login"), 1, "the users share one login");
    assert!(kinds("home") >= 3 && kinds("search-return") >= 1);
    drop(s);
    for t in tasks {
        t.abort();
    }
}

/// One service whose calls burn `ms` of CPU on at most `threads` workers.
fn workers_scenario(threads: u32, ms: f64) -> Arc<Scenario> {
    let text = format!(
        r#"
name = "workers"
slo_ms = 1000
[[nodes]]
name = "local"
cores = 2
[[services]]
name = "svc"
node = "local"
threads = {threads}
[[requests]]
name = "get"
weight = 1
call = "svc.get"
http = {{ method = "GET", path = "/get" }}
[calls."svc.get"]
service = "svc"
cpu = {{ kind = "const", ms = {ms} }}
"#
    );
    Arc::new(Scenario::parse("workers.toml", &text).unwrap())
}

/// When two calls sent at once are answered, ms after sending.
async fn two_at_once(scenario: &Arc<Scenario>) -> (f64, f64) {
    let (peers, tasks) = start(scenario).await;
    let url = format!("http://{}/get", peers["svc"]);
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let start = std::time::Instant::now();
    let one = || {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let resp = client
                .request(Request::get(url).body(Full::default()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            start.elapsed().as_secs_f64() * 1e3
        })
    };
    let (a, b) = (one(), one());
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    for t in tasks {
        t.abort();
    }
    (a.min(b), a.max(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_for_one_of_the_services_threads_as_in_the_model() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Two 60-ms calls at once on a 2-CPU machine: with one worker thread the second waits
    // for the first (about 60 and 120 ms), with two they run side by side (both about 60).
    let (first, second) = two_at_once(&workers_scenario(1, 60.0)).await;
    eprintln!("one worker: answered after {first:.1} and {second:.1} ms");
    assert!(
        first < 100.0 && second > 110.0,
        "one worker: {first:.1} and {second:.1} ms"
    );
    let (first, second) = two_at_once(&workers_scenario(2, 60.0)).await;
    eprintln!("two workers: answered after {first:.1} and {second:.1} ms");
    assert!(second < 105.0, "two workers: {first:.1} and {second:.1} ms");
}
