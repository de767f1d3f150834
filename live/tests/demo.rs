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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_walk_the_tree_and_burn_the_cpu_of_the_model() {
    let scenario = Arc::new(Scenario::builtin("demo").unwrap());
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
