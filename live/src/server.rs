//! The agent as a process: the control loop every 100 ms, the protocol server, Prometheus
//! metrics, pod discovery, and a clean restore when told to stop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

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
}

type Labels = Vec<(String, String)>;

#[derive(Clone, Default)]
struct Metrics {
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
    let restored = Journal::restore_file(&config.journal)?;
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
    tasks.spawn(control_loop(agent.clone(), metrics.clone(), start));
    tasks.spawn(accept_loop(listener, agent.clone(), start));
    if let Some(addr) = config.metrics {
        tasks.spawn(serve_metrics(
            TcpListener::bind(addr).await.map_err(|e| {
                LiveError::Config(format!("cannot listen on {addr} for metrics: {e}"))
            })?,
            &metrics,
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
    let restored = agent.lock().expect("agent lock").restore_all();
    tracing::info!(?restored, "stopped; original limits restored");
    Ok(())
}

/// Every 100 ms: the scalers' samples and decisions, then the metrics.
async fn control_loop(agent: Arc<Mutex<Agent>>, metrics: Metrics, start: Instant) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let now = start.elapsed().as_secs_f64();
        let mut a = agent.lock().expect("agent lock");
        a.tick(now);
        for g in a.gauges() {
            let l = vec![("container".to_string(), g.name.clone())];
            metrics
                .limit
                .get_or_create(&l)
                .set(if g.limit.is_finite() { g.limit } else { -1.0 });
            metrics.usage.get_or_create(&l).set(g.usage);
            metrics.throttle.get_or_create(&l).set(g.throttle_ratio);
            // A fixed limit has no target: no series rather than a made-up value.
            match g.target {
                Some(t) => {
                    metrics.target.get_or_create(&l).set(t);
                }
                None => {
                    metrics.target.remove(&l);
                }
            }
        }
    }
}

/// Coordinator connections, each served on its own task. When accepting fails (out of file
/// descriptors), it waits a little instead of spinning, and says so once per episode, so the
/// connections it already has keep being served.
async fn accept_loop(listener: TcpListener, agent: Arc<Mutex<Agent>>, start: Instant) {
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
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, agent, start).await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

/// `GET /metrics` in the Prometheus text format.
fn serve_metrics(
    listener: TcpListener,
    metrics: &Metrics,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut registry = Registry::default();
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
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                let _ = encode(&mut body, &registry);
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    body,
                )
            }
        }),
    );
    async move {
        let _ = axum::serve(listener, app).await;
    }
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

/// One coordinator connection: a JSON request per line, a JSON reply per line.
async fn serve(stream: TcpStream, agent: Arc<Mutex<Agent>>, start: Instant) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_MESSAGE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let complete = buf.last() == Some(&b'\n');
        if !complete && buf.len() > MAX_MESSAGE {
            let r = Response::err(
                0,
                Code::TooLarge,
                format!("message over {MAX_MESSAGE} bytes"),
            );
            reply(&mut w, &r).await?;
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
        let response = match protocol::parse(line) {
            Ok(req) => agent
                .lock()
                .expect("agent lock")
                .handle(req, start.elapsed().as_secs_f64()),
            Err(r) => r,
        };
        reply(&mut w, &response).await?;
        if matches!(response.code(), Some(Code::BadToken | Code::TooLarge)) {
            return Ok(());
        }
    }
}

async fn reply(w: &mut tokio::net::tcp::OwnedWriteHalf, r: &Response) -> std::io::Result<()> {
    let mut text = serde_json::to_string(r).expect("responses serialize");
    text.push('\n');
    w.write_all(text.as_bytes()).await
}
