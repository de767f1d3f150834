//! The demo app: a scenario's services as real HTTP servers that burn real CPU.
//!
//! Each service is one [`serve`] loop (one process per service in `live demo`, each in its own
//! cgroup, so that the agent controls them like containers). A request enters at the root
//! service through the method and path of its request type (`http` in the scenario: the path
//! template's part before the query, each placeholder standing for one path segment's worth
//! of text, so `/foods/{date:1..150}/D1345` routes); an answer carries a fresh value at every
//! JSON pointer the load captures from it, and the load's init requests are answered the same
//! way without burning CPU, so flows such as train-ticket's run against the demo as against
//! the real app. Every call of its tree then travels as `GET /call/<request type>/<call index>` with the
//! request's seed in `x-autothrottle-seed`. Each call burns the CPU the scenario's distribution
//! gives it (measured on the thread's own CPU clock, so a throttled service really takes
//! longer), calls its children stage by stage (parallel within a stage, detached ones not
//! awaited), burns its after-CPU and answers. Draws are seeded per (request seed, call) in the
//! same way and order as the simulator's engine, so the CPU a call costs does not depend on
//! timing.
//!
//! A service whose scenario entry has a `runtime` runs a real collector ([`Collector`]): the
//! request CPU it burns drives allocation, and every `trigger_cpu` core-seconds of it a
//! collection burns `work` core-seconds on several OS threads at once inside the service's
//! process (so inside its cgroup, spending its CFS quota) — concurrently with the calls
//! (Go-like), or with every call held until it is done (JVM-like stop the world). A call of
//! `parallelism` k burns its CPU on k threads at once. As in the model, at most the service's
//! `threads` burn call CPU at once; the rest wait for a worker in order of arrival (collector
//! threads do not wait).
//!
//! `live demo` runs it: one `live demo-service` process per service, each in its own cgroup.

pub mod template;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use scenarios::Scenario;

/// Why a demo service cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The scenario cannot run as asked (a service or an address missing, background CPU), or
    /// a request template does not parse or cannot be filled.
    #[error("{0}")]
    Config(String),
    /// The service could not start: its runtime or its listening socket.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// CPU time this thread has used, seconds: what a call's burn loop measures, so that a
/// throttled service really takes longer to burn its CPU.
#[allow(unsafe_code)] // the one call to libc here
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into memory we own; the clock id is a constant
    // every Linux kernel supports.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Header carrying the request's seed between services.
pub const SEED_HEADER: &str = "x-autothrottle-seed";

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// What an entry request is: a request type's root call, or one of the load's init requests
/// (answered at once, burning nothing).
#[derive(Debug, Clone, Copy)]
enum Entry {
    Request(usize),
    Init,
}

/// How the entry service recognises a request: method and path template, and the values its
/// answer must carry (JSON pointers the load captures).
struct Route {
    method: String,
    path: crate::template::Template,
    entry: Entry,
    capture: Vec<String>,
}

/// One service of a scenario and where its peers are.
pub struct Service {
    scenario: Arc<Scenario>,
    routes: Vec<Route>,
    answers: AtomicU64,
    index: usize,
    /// Address of every service, by scenario index.
    peers: Vec<SocketAddr>,
    client: HttpClient,
    collector: Arc<Collector>,
    /// The service's worker threads (the scenario's `threads`): a call's CPU waits for one,
    /// in order of arrival, as the model's calls queue for theirs.
    workers: Arc<tokio::sync::Semaphore>,
}

/// A real garbage collector's CPU pattern, driven by the request CPU the service burns.
#[derive(Debug)]
pub struct Collector {
    runtime: Option<scenarios::Runtime>,
    /// Request CPU since the last collection started, nanoseconds.
    since_last_ns: AtomicU64,
    /// Calls burning CPU now (Go's idle workers take the Ps they leave free).
    busy: AtomicUsize,
    collecting: AtomicBool,
    /// Stop the world: calls wait on this while a pause runs.
    paused: Mutex<bool>,
    resumed: Condvar,
    collections: AtomicU64,
}

impl Collector {
    fn new(runtime: Option<scenarios::Runtime>) -> Self {
        Collector {
            runtime,
            since_last_ns: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            collecting: AtomicBool::new(false),
            paused: Mutex::new(false),
            resumed: Condvar::new(),
            collections: AtomicU64::new(0),
        }
    }

    /// Collections started so far.
    pub fn collections(&self) -> u64 {
        self.collections.load(Ordering::SeqCst)
    }

    /// Blocks while a stop-the-world pause runs.
    fn wait_world(&self) {
        let mut paused = self.paused.lock().expect("pause lock");
        while *paused {
            paused = self.resumed.wait(paused).expect("pause lock");
        }
    }

    /// Counts `seconds` of request CPU; starts a collection when enough was allocated.
    fn allocated(self: &Arc<Self>, seconds: f64) {
        let Some(rt) = self.runtime else { return };
        let ns = (seconds * 1e9) as u64;
        let total = self.since_last_ns.fetch_add(ns, Ordering::SeqCst) + ns;
        if (total as f64) < rt.trigger_cpu * 1e9 {
            return;
        }
        if self
            .collecting
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        self.since_last_ns.store(0, Ordering::SeqCst);
        self.collections.fetch_add(1, Ordering::SeqCst);
        let threads = if rt.stop_the_world {
            *self.paused.lock().expect("pause lock") = true;
            rt.threads as usize
        } else {
            (rt.threads as usize)
                .saturating_sub(self.busy.load(Ordering::SeqCst))
                .max(rt.min_threads as usize)
        };
        let each = rt.work / threads as f64;
        let this = self.clone();
        // Plain OS threads, not the blocking pool: the collector must not wait for call
        // threads to free up, and its threads are in the process's cgroup like the calls'.
        std::thread::spawn(move || {
            let workers: Vec<_> = (0..threads)
                .map(|_| std::thread::spawn(move || spin(each, None)))
                .collect();
            for w in workers {
                let _ = w.join();
            }
            *this.paused.lock().expect("pause lock") = false;
            this.resumed.notify_all();
            this.collecting.store(false, Ordering::SeqCst);
        });
    }
}

impl Service {
    /// Service `name` of `scenario`; `peers` gives every service's address by name.
    pub fn new(
        scenario: Arc<Scenario>,
        name: &str,
        peers: &BTreeMap<String, SocketAddr>,
    ) -> Result<Self, DemoError> {
        let index = scenario.service(name).ok_or_else(|| {
            DemoError::Config(format!(
                "scenario {} has no service '{name}'",
                scenario.name
            ))
        })?;
        if scenario.services[index].background > 0.0 {
            return Err(DemoError::Config(format!(
                "service '{name}' of {} has background_cores: the demo burns only its calls' and \
                 collectors' CPU, so it would not run what the scenario says (a fitted \
                 scenario is for the simulator; run the demo with the scenario it was fitted to)",
                scenario.name
            )));
        }
        let peers = scenario
            .services
            .iter()
            .map(|s| {
                peers.get(&s.name).copied().ok_or_else(|| {
                    DemoError::Config(format!("no address for service '{}'", s.name))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut routes = Vec::new();
        let init = scenario.file.live.iter().flat_map(|l| &l.init);
        let sources = scenario
            .file
            .requests
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.http.as_ref().map(|h| (Entry::Request(i), h)))
            .chain(init.map(|i| (Entry::Init, &i.http)));
        for (entry, h) in sources {
            routes.push(Route {
                method: h.method.clone(),
                path: crate::template::Template::parse(&h.path)?,
                entry,
                capture: h.capture.values().cloned().collect(),
            });
        }
        Ok(Service {
            routes,
            answers: AtomicU64::new(0),
            index,
            peers,
            client: Client::builder(TokioExecutor::new()).build_http(),
            collector: Arc::new(Collector::new(scenario.services[index].runtime)),
            workers: Arc::new(tokio::sync::Semaphore::new(
                scenario.services[index].threads as usize,
            )),
            scenario,
        })
    }

    /// This service's collector (for tests and reports).
    pub fn collector(&self) -> Arc<Collector> {
        self.collector.clone()
    }

    /// Burns a call's CPU on `parallelism` threads at once, then lets it drive the collector.
    async fn burn_call(&self, seconds: f64, parallelism: u32) {
        if seconds <= 0.0 {
            return;
        }
        let k = parallelism.max(1) as usize;
        let mut parts = Vec::with_capacity(k);
        for _ in 0..k {
            // Tokio's semaphore is fair: the first to ask gets the next free worker.
            let worker = self
                .workers
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let gc = self.collector.clone();
            parts.push(tokio::task::spawn_blocking(move || {
                let _worker = worker;
                gc.busy.fetch_add(1, Ordering::SeqCst);
                spin(seconds / k as f64, Some(&gc));
                gc.busy.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for p in parts {
            let _ = p.await;
        }
        self.collector.allocated(seconds);
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let method = req.method().to_string();
        let seed = req
            .headers()
            .get(SEED_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // The demo has no use for a body, but reading it keeps the connection reusable.
        if req.into_body().collect().await.is_err() {
            return reply(StatusCode::BAD_REQUEST, "unreadable body".into());
        }
        // The call to run and what to answer once it has run.
        let (target, answer) = if let Some(rest) = path.strip_prefix("/call/") {
            let mut parts = rest.split('/');
            let target = match (
                parts.next().and_then(|r| r.parse::<usize>().ok()),
                parts.next().and_then(|n| n.parse::<u32>().ok()),
            ) {
                (Some(r), Some(n)) => Some((r, n)),
                _ => None,
            };
            (target, "ok".to_string())
        } else {
            // An entry request: the request type (or init request) whose method and path
            // template this is.
            let Some(route) = self
                .routes
                .iter()
                .find(|r| r.method == method && r.path.path_matches(&path))
            else {
                return reply(StatusCode::NOT_FOUND, format!("no call at {method} {path}"));
            };
            let answer = self.answer(&route.capture);
            let Entry::Request(rtype) = route.entry else {
                return reply(StatusCode::OK, answer);
            };
            (Some((rtype, 0)), answer)
        };
        let Some((rtype, node)) = target else {
            return reply(StatusCode::NOT_FOUND, format!("no call at {path}"));
        };
        let Some(call) = self
            .scenario
            .requests
            .get(rtype)
            .and_then(|r| r.nodes.get(node as usize))
        else {
            return reply(StatusCode::NOT_FOUND, format!("no call {rtype}/{node}"));
        };
        if call.service != self.index {
            return reply(
                StatusCode::MISDIRECTED_REQUEST,
                format!("call {rtype}/{node} is not served here"),
            );
        }
        let seed = seed.unwrap_or_else(|| rand::rng().random());
        match self.clone().call(rtype, node, seed).await {
            Ok(()) => reply(StatusCode::OK, answer),
            Err(e) => reply(StatusCode::BAD_GATEWAY, e),
        }
    }

    /// An entry request's answer: "ok", or, when the load captures values from it, a JSON
    /// document holding a fresh value at each pointer (a token, an id), so that flows can run
    /// against the demo as against the real app.
    fn answer(&self, pointers: &[String]) -> String {
        if pointers.is_empty() {
            return "ok".into();
        }
        let n = self.answers.fetch_add(1, Ordering::Relaxed);
        let mut doc = serde_json::Value::Null;
        for p in pointers {
            let value = format!("demo-{n}-{}", p.rsplit('/').next().unwrap_or(""));
            set_pointer(&mut doc, p, serde_json::Value::String(value));
        }
        doc.to_string()
    }

    /// Runs call `node` of a request of type `rtype`: CPU, children, CPU after.
    async fn call(self: Arc<Self>, rtype: usize, node: u32, seed: u64) -> Result<(), String> {
        let def = &self.scenario.requests[rtype].nodes[node as usize];
        let mut rng = scenarios::call_rng(seed, node);
        if node != 0 && def.probability < 1.0 {
            // The parent drew this to decide that the call happens.
            let _: f64 = rng.random();
        }
        let work = def.cpu.sample(&mut rng);
        let after = def.cpu_after.as_ref().map_or(0.0, |d| d.sample(&mut rng));
        self.burn_call(work, def.parallelism).await;
        for stage in &def.stages {
            let mut waits = Vec::new();
            for &child in stage {
                let cdef = &self.scenario.requests[rtype].nodes[child as usize];
                let mut crng = scenarios::call_rng(seed, child);
                if cdef.probability < 1.0 && crng.random::<f64>() >= cdef.probability {
                    continue;
                }
                let this = self.clone();
                let addr = self.peers[cdef.service];
                let task = tokio::spawn(async move { this.send(addr, rtype, child, seed).await });
                if !cdef.detached {
                    waits.push(task);
                }
            }
            for w in waits {
                w.await.map_err(|e| e.to_string())??;
            }
        }
        self.burn_call(after, def.parallelism).await;
        Ok(())
    }

    async fn send(
        &self,
        addr: SocketAddr,
        rtype: usize,
        node: u32,
        seed: u64,
    ) -> Result<(), String> {
        let req = Request::get(format!("http://{addr}/call/{rtype}/{node}"))
            .header(SEED_HEADER, seed.to_string())
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{addr}: HTTP {status}"))
        }
    }
}

/// Puts `value` at JSON `pointer` in `doc`, making the objects and arrays on the way (a
/// numeric token makes an array long enough).
fn set_pointer(doc: &mut serde_json::Value, pointer: &str, value: serde_json::Value) {
    use serde_json::Value;
    let mut at = doc;
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        at = match token.parse::<usize>() {
            Ok(i) if i < 1 << 16 => {
                if !at.is_array() {
                    *at = Value::Array(Vec::new());
                }
                let arr = at.as_array_mut().expect("made an array");
                if arr.len() <= i {
                    arr.resize(i + 1, Value::Null);
                }
                &mut arr[i]
            }
            _ => {
                if !at.is_object() {
                    *at = Value::Object(Default::default());
                }
                at.as_object_mut()
                    .expect("made an object")
                    .entry(token)
                    .or_insert(Value::Null)
            }
        };
    }
    *at = value;
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// Burns `seconds` of this thread's CPU time; with a collector, holds still whenever a
/// stop-the-world pause runs (checked every few microseconds of work).
fn spin(seconds: f64, gc: Option<&Collector>) {
    // Waiting for a pause costs no CPU, so the thread clock still measures the work done.
    let start = thread_cpu_seconds();
    let mut x = 0u64;
    while thread_cpu_seconds() - start < seconds {
        if let Some(gc) = gc {
            gc.wait_world();
        }
        for i in 0..1000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
}

/// Runs `service` on `listen` in a runtime of its own until the process ends (what each
/// `live demo-service` process does).
///
/// Blocking and not generic on purpose: an async fn's state machine and every task it spawns
/// are compiled in the crate that polls them, so a caller's own `block_on(serve(..))` would
/// compile the whole request path (hyper's and tokio's generic code included) in the caller.
/// In a test build of `live` (unoptimised) that cost the gateway 0.64 ms of CPU per request
/// against 0.38 ms in a release build; compiled here, with this crate's optimisation, 0.38.
pub fn run(service: Service, listen: SocketAddr) -> Result<(), DemoError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| DemoError::Io {
            what: "cannot start a runtime".into(),
            source,
        })?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| DemoError::Io {
                what: format!("cannot listen on {listen}"),
                source,
            })?;
        serve(service, listener).await;
        Ok(())
    })
}

/// Serves `service` on `listener` until the task is dropped.
pub async fn serve(service: Service, listener: tokio::net::TcpListener) {
    let service = Arc::new(service);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(service.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
