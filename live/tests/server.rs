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
    // Below the limit the test asks for: the agent holds the container at the ceiling.
    let (dir, addr, metrics_port, stop_tx, agent) = agent_with(|c| c.ceiling = 0.2).await;
    let g = dir.path().join("web");

    let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let line = protocol::encode(
        1,
        "tok",
        &Call::Start {
            scalers: [("web".to_string(), ScalerKind::Const.config(0.0, 0.25))].into(),
            bursts: Default::default(),
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

    let body = scrape(metrics_port, "").await;
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

/// An agent (in-process, as `live agent` runs it) over one fake v2 group `web`, with the
/// settings `tune` changes: its directory, address, metrics port, a sender that stops it and
/// its task.
async fn agent_with(
    tune: impl FnOnce(&mut live::server::Config),
) -> (
    tempfile::TempDir,
    std::net::SocketAddr,
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), live::LiveError>>,
) {
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
    let mut config = live::server::Config {
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
        ceiling: 64.0,
        connections: Default::default(),
        metrics_token: None,
        tls: None,
    };
    tune(&mut config);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(live::server::run(config, tx, async move {
        let _ = stop_rx.await;
    }));
    (dir, rx.await.unwrap(), metrics_port, stop_tx, agent)
}

/// The whole answer to `GET /metrics` on a local port, with extra header lines.
async fn scrape(port: u16, headers: &str) -> String {
    let mut http = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
    http.write_all(request.as_bytes()).await.unwrap();
    let mut body = String::new();
    http.read_to_string(&mut body).await.unwrap();
    body
}

/// One line out, one line back.
async fn ask(s: &mut BufReader<TcpStream>, line: String) -> String {
    s.get_mut().write_all(line.as_bytes()).await.unwrap();
    let mut reply = String::new();
    s.read_line(&mut reply).await.unwrap();
    reply
}

/// Everything the peer sends back until it closes (or 3 s pass).
async fn until_closed(s: &mut TcpStream) -> (String, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
        .await
        .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_the_token_are_bounded_and_learn_nothing() {
    let limits = live::server::ConnectionLimits {
        max: 3,
        before_auth: 256,
        first_line: Duration::from_millis(400),
        idle: Duration::from_secs(30),
    };
    let (_dir, addr, metrics_port, _stop, _agent) = agent_with(|c| {
        c.connections = limits;
        c.metrics_token = Some("scrape".into());
    })
    .await;

    // A request without the token: one bad_token, no id, no hint of the protocol; closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"{\"v\":1,\"id\":7,\"method\":\"hello\"}\n")
        .await
        .unwrap();
    let (reply, closed) = until_closed(&mut s).await;
    assert!(closed, "{reply}");
    assert_eq!(reply.lines().count(), 1, "{reply}");
    assert!(
        reply.contains("\"bad_token\"") && reply.contains("\"id\":0"),
        "{reply}"
    );
    drop(s);
    // Garbage, and a line that never ends: the same, within the small first-line budget.
    // A huge first message still gets its reply: the agent drains the rest instead of
    // resetting the connection (which could destroy the reply before the peer reads it).
    let huge = vec![b'x'; protocol::MAX_MESSAGE + 10];
    for junk in [&b"GET / HTTP/1.1\r\n"[..], &[b' '; 1000][..], &huge[..]] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        let (reply, closed) = until_closed(&mut s).await;
        assert!(closed && reply.contains("\"bad_token\""), "{reply}");
    }
    // After its last reply the agent reads what the peer still sends until the peer closes
    // (so that a reset cannot destroy the reply; a second at most): only then is the slot
    // free again.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Three silent connections fill the cap: a fourth is closed at once, and counted.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    let (reply, closed) = until_closed(&mut fourth).await;
    assert!(closed && reply.is_empty(), "{reply}");
    // The silent ones are closed after the first-line timeout, which frees the slots.
    for s in &mut silent {
        let (reply, closed) = until_closed(s).await;
        assert!(closed && reply.is_empty(), "{reply}");
    }

    // Authenticated, a connection gets real errors and stays open.
    let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let hello = ask(&mut s, protocol::encode(1, "tok", &Call::Hello)).await;
    assert!(hello.contains("\"ok\":true"), "{hello}");
    let bad_id = ask(
        &mut s,
        "{\"v\":1,\"id\":\"2\",\"token\":\"tok\",\"method\":\"hello\"}\n".into(),
    )
    .await;
    assert!(bad_id.contains("non-negative integer"), "{bad_id}");
    let again = ask(&mut s, protocol::encode(3, "tok", &Call::Hello)).await;
    assert!(
        again.contains("\"id\":3") && again.contains("\"ok\":true"),
        "{again}"
    );

    let body = scrape(metrics_port, "").await;
    assert!(body.starts_with("HTTP/1.1 401"), "no bearer token: {body}");
    let body = scrape(metrics_port, "Authorization: Bearer scrape\r\n").await;
    assert!(
        body.contains("autothrottle_rejected_connections_total 1"),
        "{body}"
    );
    // A scraper that never finishes its headers is cut off.
    let mut slow = TcpStream::connect(("127.0.0.1", metrics_port))
        .await
        .unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(8), slow.read_to_end(&mut rest)).await;
    assert!(
        cut.is_ok(),
        "a half-sent request is closed within the header timeout"
    );
}

/// A TLS client of the agent at `addr` that trusts `ca` and shows `identity`, checking the
/// agent's certificate for `name`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert).unwrap()],
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("agent.test").unwrap(), tcp)
        .await
}

/// `hello` over an established stream; the reply line, or the error that ended it.
async fn hello_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: S,
) -> Result<String, String> {
    let mut s = BufReader::new(s);
    let io = async {
        s.get_mut()
            .write_all(protocol::encode(1, "tok", &Call::Hello).as_bytes())
            .await?;
        s.get_mut().flush().await?;
        let mut reply = String::new();
        s.read_line(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    match tokio::time::timeout(Duration::from_secs(3), io).await {
        Ok(Ok(reply)) if !reply.is_empty() => Ok(reply),
        Ok(Ok(_)) => Err("closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no reply within 3 s".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_only_a_coordinator_with_a_certificate_from_the_ca_is_served() {
    let certs = tempfile::tempdir().unwrap();
    let files = live::tls::generate(&["agent.test".into()], 1)
        .unwrap()
        .write(certs.path())
        .unwrap();
    let other = tempfile::tempdir().unwrap();
    let stranger = live::tls::generate(&["agent.test".into()], 1)
        .unwrap()
        .write(other.path())
        .unwrap();
    let acceptor = live::tls::server(&files.agent_cert, &files.agent_key, Some(&files.ca)).unwrap();
    let (_dir, addr, metrics_port, _stop, _agent) = agent_with(|c| {
        c.tls = Some(acceptor);
        c.connections.first_line = Duration::from_millis(500);
    })
    .await;
    let me = Some((
        files.coordinator_cert.as_path(),
        files.coordinator_key.as_path(),
    ));

    // The coordinator with its certificate is served.
    let s = tls_connect(addr, &files.ca, me).await.unwrap();
    let reply = hello_over(s).await.unwrap();
    assert!(
        reply.contains("\"ok\":true") && reply.contains("web"),
        "{reply}"
    );

    // Without a client certificate, or with one another CA signed: no reply.
    let mut refused = 0;
    for identity in [
        None,
        Some((
            stranger.coordinator_cert.as_path(),
            stranger.coordinator_key.as_path(),
        )),
    ] {
        if let Ok(s) = tls_connect(addr, &files.ca, identity).await {
            let r = hello_over(s).await;
            assert!(r.is_err(), "{r:?}");
        }
        refused += 1;
    }
    // A coordinator that trusts another CA does not accept the agent.
    let e = tls_connect(addr, &stranger.ca, me).await.err().unwrap();
    assert!(e.to_string().contains("certificate"), "{e}");
    // Plain TCP with the right token gets no protocol reply either.
    let plain = TcpStream::connect(addr).await.unwrap();
    let r = hello_over(plain).await;
    assert!(!r.as_deref().unwrap_or("").contains("\"ok\""), "{r:?}");
    // A peer that opens a connection and never starts the handshake is closed in time.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    let (reply, closed) = until_closed(&mut stalled).await;
    assert!(closed && reply.is_empty(), "{reply}");

    let body = scrape(metrics_port, "").await;
    let failures: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("autothrottle_tls_handshake_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no handshake failure count: {body}"));
    // The two refused clients, the plain one and the stalled one (the stranger-CA client
    // aborts its own handshake, so the agent sees a failure there too).
    assert!(failures >= refused + 2, "{failures}: {body}");
}
