//! The load generator against local servers: counts, latencies, errors and timeouts.

use std::time::Duration;

use live::loadgen::{serve_ok, LoadConfig, LoadGen, RequestKind};
use traces::Load;

fn config(base: String, rate: f64, seconds: usize, timeout_ms: u64) -> LoadConfig {
    LoadConfig {
        base,
        rates: vec![rate; seconds],
        load: Load::Poisson,
        mix: vec![
            RequestKind::new("search", 3.0, "GET", "/search?n={int:1..9}"),
            RequestKind::new("post", 1.0, "POST", "/post").with_body(
                r#"{"item": {int:1..5}, "kind": "{choice:a|b}"}"#,
                "application/json",
            ),
        ],
        live: None,
        seed: 5,
        timeout: Duration::from_millis(timeout_ms),
        max_in_flight: 256,
        measure_from_s: 0,
        arrivals_log: None,
        mix_cycle_s: 0,
    }
}

async fn server(delay: Duration) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (base, tokio::spawn(serve_ok(listener, delay)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_the_schedule_and_records_latency() {
    let (base, srv) = server(Duration::from_millis(2)).await;
    let mut c = config(base, 300.0, 2, 1000);
    c.measure_from_s = 1;
    let g = LoadGen::new(c).unwrap();
    g.run().await.unwrap();
    srv.abort();
    let s = g.stats();
    let s = s.lock().unwrap();
    let sent: u64 = s.seconds.iter().map(|x| x.sent).sum();
    let ok: u64 = s.seconds.iter().map(|x| x.ok).sum();
    assert!(
        (sent as f64 - 600.0).abs() < 100.0,
        "Poisson at 300/s for 2 s: {sent}"
    );
    assert_eq!(ok, sent, "every request answered: {:?}", s.last_error);
    let p50 = s.seconds[0].latency.value_at_quantile(0.5);
    assert!(
        (2_000..50_000).contains(&p50),
        "p50 {p50} us includes the 2 ms of service"
    );
    assert_eq!(s.minutes.len(), 1);
    assert_eq!(s.minutes[0].len(), sent, "the minute holds every request");
    assert_eq!(
        s.overall.len(),
        s.seconds[1].sent,
        "only requests from measure_from_s on are judged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calibration_load_cycles_the_mix_second_by_second() {
    // search 3 : post 1, then half and half, every second: 4 s at 300/s.
    let (base, srv) = server(Duration::from_millis(1)).await;
    let mut c = config(base, 300.0, 4, 1000);
    c.mix_cycle_s = 1;
    let g = LoadGen::new(c).unwrap();
    g.run().await.unwrap();
    srv.abort();
    let s = g.stats();
    let s = s.lock().unwrap();
    let post_share = |sec: usize| {
        let k = &s.seconds[sec].sent_by_kind;
        k[1] as f64 / (k[0] + k[1]) as f64
    };
    // About 300 requests a second: a share is within 0.1 of its mix's (over 3.5 SE).
    for (sec, want) in [(0, 0.25), (1, 0.5), (2, 0.25), (3, 0.5)] {
        let got = post_share(sec);
        assert!(
            (got - want).abs() < 0.1,
            "second {sec}: posts {got:.3} of the requests, the mix says {want}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_targets_time_out_and_count_as_misses() {
    let (base, srv) = server(Duration::from_millis(300)).await;
    let g = LoadGen::new(config(base, 50.0, 1, 100)).unwrap();
    let start = std::time::Instant::now();
    g.run().await.unwrap();
    srv.abort();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "no hang on a slow target"
    );
    let s = g.stats();
    let s = s.lock().unwrap();
    let sec = &s.seconds[0];
    assert!(sec.sent > 20);
    assert_eq!(sec.timeouts, sec.sent);
    assert_eq!(
        sec.latency.len(),
        sec.sent,
        "timeouts are recorded, at the timeout"
    );
    assert!(sec.latency.min() >= sec.latency.lowest_equivalent(100_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_is_errors_not_a_hang() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let g = LoadGen::new(config(format!("http://127.0.0.1:{port}"), 50.0, 1, 500)).unwrap();
    let start = std::time::Instant::now();
    g.run().await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(3));
    let s = g.stats();
    let s = s.lock().unwrap();
    assert!(s.seconds[0].errors > 20 && s.seconds[0].ok == 0);
    assert!(s.last_error.is_some());
}

/// What a recording server saw: method, content type, body.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

async fn recording_server() -> (String, Seen, tokio::task::JoinHandle<()>) {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Default::default();
    let log = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let method = req.method().to_string();
                        let ct = req
                            .headers()
                            .get(hyper::header::CONTENT_TYPE)
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        log.lock().unwrap().push((
                            method,
                            ct,
                            String::from_utf8(body.to_vec()).unwrap(),
                        ));
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (base, seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_filled_in_and_typed() {
    let (base, seen, srv) = recording_server().await;
    let g = LoadGen::new(config(base, 200.0, 1, 1000)).unwrap();
    g.run().await.unwrap();
    srv.abort();
    let seen = seen.lock().unwrap();
    let posts: Vec<_> = seen.iter().filter(|(m, _, _)| m == "POST").collect();
    assert!(posts.len() > 20, "about a quarter of 200: {}", posts.len());
    for (_, ct, body) in &posts {
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!((1..=5).contains(&v["item"].as_i64().unwrap()), "{body}");
        assert!(v["kind"] == "a" || v["kind"] == "b", "{body}");
    }
    assert!(seen
        .iter()
        .filter(|(m, _, _)| m == "GET")
        .all(|(_, ct, body)| ct.is_empty() && body.is_empty()));
}

#[test]
fn bad_configs_are_refused() {
    let mut c = config("http://127.0.0.1:1".into(), 1.0, 1, 100);
    c.base = "ftp://x".into();
    assert!(LoadGen::new(c.clone()).is_err());
    c.base = "http://127.0.0.1:1".into();
    c.mix[0].http.path = "/x{int:9..1}".into();
    assert!(LoadGen::new(c.clone())
        .unwrap_err()
        .to_string()
        .contains("{int:9..1}: empty range"));
    c.mix[0].http.path = "/x".into();
    c.mix[1].http.body = Some("{\"a\": {int:1..}}".into());
    let e = LoadGen::new(c.clone()).unwrap_err().to_string();
    assert!(
        e.contains("request type 'post'") && e.contains("{int:1..}"),
        "{e}"
    );
    c.mix.clear();
    assert!(LoadGen::new(c).is_err());
}

/// Requests each second of a closed-loop run: (sent, all answered).
async fn users_run(delay_ms: u64, users: &[f64], think_s: f64) -> Vec<u64> {
    let (base, srv) = server(Duration::from_millis(delay_ms)).await;
    let mut c = config(base, 0.0, 0, 2000);
    c.rates = users.to_vec();
    c.load = Load::Users { think_s };
    let g = LoadGen::new(c).unwrap();
    g.run().await.unwrap();
    srv.abort();
    let s = g.stats();
    let s = s.lock().unwrap();
    for sec in &s.seconds {
        assert_eq!(
            sec.ok, sec.sent,
            "every request answered: {:?}",
            s.last_error
        );
    }
    s.seconds.iter().map(|x| x.sent).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_wait_for_answers_and_follow_the_count() {
    // 20 users thinking 0.2 s: each loops in about 0.2 s + the answer time.
    let fast = users_run(5, &[20.0, 20.0, 20.0, 0.0, 0.0], 0.2).await;
    let slow = users_run(300, &[20.0, 20.0, 20.0, 0.0, 0.0], 0.2).await;
    let (f, s): (u64, u64) = (fast[..3].iter().sum(), slow[..3].iter().sum());
    eprintln!("closed loop, 20 users x 3 s: {f} requests at 5 ms, {s} at 300 ms");
    // About 20 / 0.205 = 98 per second against about 20 / 0.5 = 40: a slow app slows its load.
    assert!((200..=360).contains(&f), "{fast:?}");
    assert!((80..=160).contains(&s), "{slow:?}");
    // Nobody sends once the count is 0.
    assert_eq!(&fast[3..], &[0, 0]);
    assert_eq!(&slow[3..], &[0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_retire_and_come_back() {
    // 10 users, then 2, then 10 again: the middle second sends far less.
    let sent = users_run(2, &[10.0, 2.0, 10.0], 0.1).await;
    eprintln!("users 10/2/10: {sent:?}");
    assert!(sent[1] * 2 < sent[0], "{sent:?}");
    assert!(sent[1] * 2 < sent[2], "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_sent_is_in_the_request_log() {
    let (base, srv) = server(Duration::from_millis(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(record::arrivals::FILE);
    let mut c = config(base, 200.0, 2, 1000);
    c.arrivals_log = Some(path.clone());
    let g = LoadGen::new(c).unwrap();
    g.run().await.unwrap();
    srv.abort();
    let log = record::arrivals::Arrivals::read(&path).unwrap();
    let s = g.stats();
    let s = s.lock().unwrap();
    let sent: u64 = s.seconds.iter().map(|x| x.sent).sum();
    assert_eq!(log.len() as u64, sent);
    for (k, name) in ["search", "post"].iter().enumerate() {
        let logged = log
            .kind
            .iter()
            .filter(|&&i| log.names[i as usize] == *name)
            .count() as u64;
        let counted: u64 = s.seconds.iter().map(|x| x.sent_by_kind[k]).sum();
        assert_eq!(logged, counted, "{name}");
    }
    // Each logged request in the second its send was counted in.
    let per_second = log.per_second();
    for (i, second) in s.seconds.iter().enumerate() {
        assert_eq!(per_second.get(i).copied().unwrap_or(0) as u64, second.sent);
    }
}
