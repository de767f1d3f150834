//! The agent as a process: the control loop every 100 ms, the protocol server, Prometheus
//! metrics, pod discovery, and a clean restore when told to stop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::agent::Agent;
use crate::cgroup::Root;
use crate::discovery::{self, Backoff, Scope};
use crate::journal::Journal;
use crate::protocol::{self, Code, Response, MAX_MESSAGE};
use crate::LiveError;

/// Control period.
pub const TICK: Duration = Duration::from_millis(100);

/// Everything `live agent` runs with.
#[derive(Clone)]
pub struct Config {
    pub node: String,
    pub listen: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub token: String,
    pub root: Root,
    pub journal: PathBuf,
    pub timeout_s: f64,
    /// Containers given on the command line: name -> group relative to the root.
    pub statics: BTreeMap<String, PathBuf>,
    /// Kubernetes discovery, if any.
    pub kube: Option<(kube::Client, Scope)>,
    pub relist: Duration,
    /// No scaler sets a limit above this many cores.
    pub ceiling: f64,
    /// What a connection may cost before it has shown the token.
    pub connections: ConnectionLimits,
    /// The bearer token scrapers of the metrics must show, if any.
    pub metrics_token: Option<String>,
    /// TLS for the protocol ([`crate::tls::server`]); plain TCP if `None`.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Bounds on coordinator connections, so that peers without the token cannot use up the
/// agent's memory or file descriptors.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed at once (and counted).
    pub max: usize,
    /// Bytes a connection may send before its first authenticated request (a `start` for
    /// hundreds of containers comes after `hello`, so the first line is small).
    pub before_auth: usize,
    /// A connection that has not sent a complete first line by then is closed.
    pub first_line: Duration,
    /// An authenticated connection silent this long is closed (the coordinator asks every
    /// second; a lost one is restored by the coordinator timeout anyway).
    pub idle: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max: 64,
            before_auth: 4096,
            first_line: Duration::from_secs(5),
            idle: Duration::from_secs(300),
        }
    }
}

type Labels = Vec<(String, String)>;

#[derive(Clone, Default)]
struct Metrics {
    /// Connections closed at once: over the connection cap.
    rejected: Counter,
    /// Connections whose TLS handshake failed or did not finish in time.
    tls_failures: Counter,
    /// Times the journal could not be written.
    journal_faults: Gauge<f64, AtomicU64>,
    /// Per container: times its quota was found changed from outside and set back.
    drifts: Family<Labels, Gauge<f64, AtomicU64>>,
    /// P99 of how late the last minute's control ticks started, seconds.
    tick_lateness: Gauge<f64, AtomicU64>,
    limit: Family<Labels, Gauge<f64, AtomicU64>>,
    usage: Family<Labels, Gauge<f64, AtomicU64>>,
    throttle: Family<Labels, Gauge<f64, AtomicU64>>,
    target: Family<Labels, Gauge<f64, AtomicU64>>,
}

/// Runs the agent until `shutdown` resolves, then restores every controlled container.
/// Reports the address it listens on through `bound` (useful with port 0).
pub async fn run(
    config: Config,
    bound: tokio::sync::oneshot::Sender<SocketAddr>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), LiveError> {
    // A journal left behind means an agent died holding quotas: put them back first.
    let restored = Journal::restore_file(&config.journal, &config.root)?;
    if !restored.is_empty() {
        tracing::warn!(
            ?restored,
            "restored limits left by an agent that did not stop cleanly"
        );
    }
    let agent = Arc::new(Mutex::new(Agent::new(
        &config.node,
        &config.token,
        config.root.clone(),
        Journal::new(&config.journal),
        config.timeout_s,
    )));
    agent
        .lock()
        .expect("agent lock")
        .set_ceiling(config.ceiling);
    if !config.statics.is_empty() {
        agent
            .lock()
            .expect("agent lock")
            .set_known(config.statics.clone());
    }
    let start = Instant::now();
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| LiveError::Config(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| LiveError::Config(e.to_string()))?;
    let _ = bound.send(addr);
    tracing::info!(%addr, node = %config.node, "agent listening");

    let metrics = Metrics::default();
    let mut tasks = tokio::task::JoinSet::new();
    // The control loop has a thread of its own: however busy the connections keep the
    // runtime, the 100-ms ticks start on time.
    let stop_control = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let control = {
        let (agent, metrics, stop) = (agent.clone(), metrics.clone(), stop_control.clone());
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || control_loop(&agent, &metrics, start, &stop))
            .map_err(|e| LiveError::Internal(format!("cannot start the control thread: {e}")))?
    };
    tasks.spawn(accept_loop(
        listener,
        Connection {
            agent: agent.clone(),
            start,
            token: config.token.clone().into(),
            limits: config.connections,
            tls: config.tls.clone(),
        },
        metrics.clone(),
    ));
    if let Some(addr) = config.metrics {
        tasks.spawn(serve_metrics(
            TcpListener::bind(addr).await.map_err(|e| {
                LiveError::Config(format!("cannot listen on {addr} for metrics: {e}"))
            })?,
            &metrics,
            config.metrics_token.clone().map(Arc::from),
        ));
    }
    if let Some((client, scope)) = config.kube.clone() {
        tasks.spawn(discovery_loop(
            client,
            scope,
            config.statics.clone(),
            config.relist,
            agent.clone(),
        ));
    }

    shutdown.await;
    tasks.abort_all();
    stop_control.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = control.join();
    let restored = agent.lock().expect("agent lock").restore_all();
    tracing::info!(?restored, "stopped; original limits restored");
    Ok(())
}

/// Every 100 ms: the scalers' samples and decisions, then the metrics.
fn control_loop(
    agent: &Mutex<Agent>,
    metrics: &Metrics,
    start: Instant,
    stop: &std::sync::atomic::AtomicBool,
) {
    if !crate::os::prefer_this_thread() {
        tracing::debug!("cannot raise the control thread's priority (not root?)");
    }
    let mut lateness = Lateness::default();
    let mut due = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let started = Instant::now();
        lateness.add((started - due).as_secs_f64());
        // A tick more than a period late does not make the next ones bunch up.
        due = if due + TICK < started {
            started + TICK
        } else {
            due + TICK
        };
        metrics.tick_lateness.set(lateness.p99());
        let now = start.elapsed().as_secs_f64();
        let mut a = agent.lock().expect("agent lock");
        a.tick(now);
        metrics.journal_faults.set(a.journal_faults() as f64);
        // Only what is controlled now has series: nothing stale after control ends.
        metrics.limit.clear();
        metrics.usage.clear();
        metrics.throttle.clear();
        metrics.target.clear();
        metrics.drifts.clear();
        for g in a.gauges() {
            let l = vec![("container".to_string(), g.name.clone())];
            metrics
                .limit
                .get_or_create(&l)
                .set(if g.limit.is_finite() { g.limit } else { -1.0 });
            metrics.usage.get_or_create(&l).set(g.usage);
            metrics.throttle.get_or_create(&l).set(g.throttle_ratio);
            metrics.drifts.get_or_create(&l).set(g.drifts as f64);
            // A fixed limit has no target: no series rather than a made-up value.
            if let Some(t) = g.target {
                metrics.target.get_or_create(&l).set(t);
            }
        }
    }
}

/// What every connection's task shares.
#[derive(Clone)]
struct Connection {
    agent: Arc<Mutex<Agent>>,
    start: Instant,
    token: Arc<str>,
    limits: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// How late the last 600 ticks (a minute) started.
#[derive(Default)]
struct Lateness {
    recent: std::collections::VecDeque<f64>,
}

impl Lateness {
    const KEEP: usize = 600;

    fn add(&mut self, late_s: f64) {
        if self.recent.len() == Self::KEEP {
            self.recent.pop_front();
        }
        self.recent.push_back(late_s);
    }

    fn p99(&self) -> f64 {
        let mut v: Vec<f64> = self.recent.iter().copied().collect();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
    }
}

/// Coordinator connections, each served on its own task, at most `limits.max` at once. When
/// accepting fails (out of file descriptors), it waits a little instead of spinning, and says
/// so once per episode, so the connections it already has keep being served.
async fn accept_loop(listener: TcpListener, conn: Connection, metrics: Metrics) {
    let slots = Arc::new(tokio::sync::Semaphore::new(conn.limits.max));
    let mut failing = false;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                if failing {
                    tracing::info!("accepting connections again");
                    failing = false;
                }
                accepted
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot accept connections; retrying every 100 ms");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.rejected.inc();
            tracing::debug!(%peer, "connection refused: {} open already", conn.limits.max);
            drop(stream);
            continue;
        };
        let conn = conn.clone();
        let tls_failures = metrics.tls_failures.clone();
        tokio::spawn(async move {
            let served = match conn.tls.clone() {
                None => serve(stream, &conn).await,
                // The handshake is part of the first line's time budget: a peer that opens
                // TLS and stalls holds its slot no longer than one that sends nothing.
                Some(tls) => {
                    match tokio::time::timeout(conn.limits.first_line, tls.accept(stream)).await {
                        Ok(Ok(stream)) => serve(stream, &conn).await,
                        Ok(Err(e)) => {
                            tls_failures.inc();
                            Err(e)
                        }
                        Err(_) => {
                            tls_failures.inc();
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
            drop(slot);
        });
    }
}

/// Bounds of the metrics endpoint: it answers scrapers, never holds on to a slow client.
const METRICS_CONNECTIONS: usize = 16;
/// A scraper that has not sent its request headers by then is cut off.
const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection is kept longer than this, whatever it sends.
const METRICS_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET /metrics` in the Prometheus text format, with a bearer token when `token` is set
/// (Prometheus' `authorization` / `bearer_token_file`), at most [`METRICS_CONNECTIONS`] at
/// once, each cut off after [`METRICS_HEADER_TIMEOUT`] without headers.
fn serve_metrics(
    listener: TcpListener,
    metrics: &Metrics,
    token: Option<Arc<str>>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut registry = Registry::default();
    registry.register(
        "autothrottle_rejected_connections",
        "Coordinator connections closed at once because too many were open",
        metrics.rejected.clone(),
    );
    registry.register(
        "autothrottle_tls_handshake_failures",
        "Coordinator connections whose TLS handshake failed or did not finish within 5 s",
        metrics.tls_failures.clone(),
    );
    registry.register(
        "autothrottle_tick_lateness_p99_seconds",
        "P99 of how late the last minute's 100-ms control ticks started",
        metrics.tick_lateness.clone(),
    );
    registry.register(
        "autothrottle_journal_faults",
        "Times the journal of original limits could not be written",
        metrics.journal_faults.clone(),
    );
    registry.register(
        "autothrottle_quota_drifts",
        "Times a container's quota was found changed from outside (and set back)",
        metrics.drifts.clone(),
    );
    registry.register(
        "autothrottle_limit_cores",
        "CPU limit in cores (-1: none)",
        metrics.limit.clone(),
    );
    registry.register(
        "autothrottle_usage_cores",
        "CPU used over the last 100 ms, cores",
        metrics.usage.clone(),
    );
    registry.register(
        "autothrottle_throttle_ratio",
        "Throttled CFS periods / periods over the last 100 ms",
        metrics.throttle.clone(),
    );
    registry.register(
        "autothrottle_target",
        "The scaler's target (absent for a fixed limit)",
        metrics.target.clone(),
    );
    let registry = Arc::new(registry);
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let (registry, token) = (registry.clone(), token.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let reply = metrics_reply(&req, &registry, token.as_deref());
                    async move { Ok::<_, std::convert::Infallible>(reply) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(METRICS_HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, conn).await;
                drop(slot);
            });
        }
    }
}

/// The answer to one metrics request.
fn metrics_reply(
    req: &hyper::Request<hyper::body::Incoming>,
    registry: &Registry,
    token: Option<&str>,
) -> hyper::Response<String> {
    let status = |code: u16, body: &str| {
        hyper::Response::builder()
            .status(code)
            .body(body.to_string())
            .expect("static response")
    };
    if req.uri().path() != "/metrics" {
        return status(404, "not found: the metrics are at /metrics\n");
    }
    if let Some(token) = token {
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !protocol::token_matches(given, token) {
            return status(401, "a bearer token is required\n");
        }
    }
    let mut body = String::new();
    let _ = encode(&mut body, registry);
    hyper::Response::builder()
        .header(hyper::header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(body)
        .expect("static response")
}

/// Every `relist`: the app's pods on this node, mapped to their cgroups; on an API error the
/// containers known so far stay, and the next try backs off.
async fn discovery_loop(
    client: kube::Client,
    scope: discovery::Scope,
    statics: BTreeMap<String, PathBuf>,
    relist: Duration,
    agent: Arc<Mutex<Agent>>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(60));
    loop {
        match discovery::refresh(&client, &scope, &statics, &agent).await {
            Ok(_) => {
                backoff.reset();
                tokio::time::sleep(relist).await;
            }
            Err(e) => {
                let wait = backoff.fail();
                tracing::warn!(error = %e, retry_in = ?wait, "pod listing failed; keeping the containers known so far");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// One coordinator connection: a JSON request per line, a JSON reply per line. Until a
/// request carries the token the connection may send only a small first line, within a few
/// seconds, and anything it sends gets one `bad_token` and the connection closes.
async fn serve<S>(stream: S, conn: &Connection) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (r, mut w) = tokio::io::split(stream);
    let mut reader = BufReader::new(r);
    let mut buf = Vec::with_capacity(4096);
    let mut authenticated = false;
    loop {
        buf.clear();
        let (cap, wait) = if authenticated {
            (MAX_MESSAGE, conn.limits.idle)
        } else {
            (conn.limits.before_auth, conn.limits.first_line)
        };
        let mut limited = (&mut reader).take(cap as u64 + 1);
        let read = limited.read_until(b'\n', &mut buf);
        let n = match tokio::time::timeout(wait, read).await {
            Ok(n) => n?,
            // Silent too long (or a line that never ends): close.
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let complete = buf.last() == Some(&b'\n');
        if !complete && buf.len() > cap {
            let r = if authenticated {
                Response::err(0, Code::TooLarge, format!("message over {cap} bytes"))
            } else {
                unauthenticated()
            };
            reply(&mut w, &r).await?;
            linger(&mut w, &mut reader).await;
            return Ok(());
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            if !complete {
                return Ok(());
            }
            continue;
        }
        let response = match protocol::parse(line, &conn.token) {
            Ok(req) => {
                authenticated = true;
                conn.agent
                    .lock()
                    .expect("agent lock")
                    .handle(req, conn.start.elapsed().as_secs_f64())
            }
            // A request with the right token that fails otherwise still authenticates.
            Err(r) if authenticated || protocol::carries_token(line, &conn.token) => {
                authenticated = true;
                r
            }
            Err(_) => unauthenticated(),
        };
        reply(&mut w, &response).await?;
        if matches!(response.code(), Some(Code::BadToken | Code::TooLarge)) {
            linger(&mut w, &mut reader).await;
            return Ok(());
        }
    }
}

/// After the last reply of a connection the agent closes: ends the agent's side and reads and
/// discards what the peer still sends (at most twice the largest message, for at most a
/// second). Closing a socket with unread input resets the connection, and the reset can
/// destroy the reply before the peer reads it (a peer still writing a huge first message would
/// never learn why it was cut off).
async fn linger(
    w: &mut (impl AsyncWriteExt + Unpin),
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) {
    use tokio::io::AsyncReadExt;
    let _ = w.shutdown().await;
    let mut sink = [0u8; 8192];
    let mut left = 2 * MAX_MESSAGE;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match reader.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// The one reply a peer gets before it has shown the token.
fn unauthenticated() -> Response {
    Response::err(0, Code::BadToken, "bad or missing token")
}

async fn reply(w: &mut (impl AsyncWriteExt + Unpin), r: &Response) -> std::io::Result<()> {
    let mut text = serde_json::to_string(r).expect("responses serialize");
    text.push('\n');
    w.write_all(text.as_bytes()).await?;
    // A TLS stream holds the record until flushed.
    w.flush().await
}
