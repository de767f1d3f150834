//! The agent process in-process: protocol over TCP, Prometheus metrics, restore on shutdown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use controller::ScalerKind;
use live::cgroup::Root;
use live::protocol::{self, Call};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_protocol_and_metrics_and_restores_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cgroup.controllers"), "cpu\n").unwrap();
    let g = dir.path().join("web");
    std::fs::create_dir(&g).unwrap();
    std::fs::write(g.join("cpu.max"), "max 100000\n").unwrap();
    std::fs::write(
        g.join("cpu.stat"),
        "usage_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
    )
    .unwrap();
    let metrics_port = free_port();
    let config = live::server::Config {
        node: "n1".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics: Some(format!("127.0.0.1:{metrics_port}").parse().unwrap()),
        token: "tok".into(),
        root: Root::detect(dir.path()).unwrap(),
        journal: dir.path().join("journal.json"),
        timeout_s: 30.0,
        statics: BTreeMap::from([("web".to_string(), PathBuf::from("web"))]),
        kube: None,
        relist: Duration::from_secs(10),
        // Below the limit asked for: the agent holds the container at the ceiling.
        ceiling: 0.2,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(live::server::run(config, tx, async move {
        let _ = stop_rx.await;
    }));
    let addr = rx.await.unwrap();

    let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let line = protocol::encode(
        1,
        "tok",
        &Call::Start {
            scalers: [("web".to_string(), ScalerKind::Const.config(0.0, 0.25))].into(),
        },
    );
    s.get_mut().write_all(line.as_bytes()).await.unwrap();
    let mut reply = String::new();
    s.read_line(&mut reply).await.unwrap();
    assert!(reply.contains("\"ok\":true"), "{reply}");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        std::fs::read_to_string(g.join("cpu.max")).unwrap(),
        "20000 100000\n",
        "0.25 cores asked, 0.2 the ceiling"
    );

    let mut http = TcpStream::connect(("127.0.0.1", metrics_port))
        .await
        .unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    http.read_to_string(&mut body).await.unwrap();
    assert!(body.contains("200 OK"), "{body}");
    assert!(
        body.contains("autothrottle_limit_cores{container=\"web\"} 0.2"),
        "{body}"
    );
    assert!(
        !body.contains("autothrottle_target{"),
        "a fixed limit has no target: {body}"
    );
    assert!(
        body.contains("autothrottle_throttle_ratio{container=\"web\"}"),
        "{body}"
    );

    stop_tx.send(()).unwrap();
    agent.await.unwrap().unwrap();
    assert_eq!(
        std::fs::read_to_string(g.join("cpu.max")).unwrap(),
        "max 100000\n",
        "restored on shutdown"
    );
    assert!(!dir.path().join("journal.json").exists());
}
