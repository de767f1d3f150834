//! An HTTP load generator that replays a trace, open loop or as closed-loop users.
//!
//! Open loop ([`Load::Poisson`]): requests are sent at Poisson arrival times whose rate follows
//! the trace second by second, whatever the target does: a slow target does not slow the
//! schedule down (that would hide exactly the latency being measured). Latency is measured
//! from the *scheduled* send time, so a send delayed by the in-flight bound counts its wait
//! too, and how far the sender fell behind is reported.
//!
//! Closed loop ([`Load::Users`], the paper's Locust load): the trace value of a second is the
//! number of users; each sends a request, waits for its answer, thinks an exponential time and
//! sends the next ([`traces::Load`] says exactly how users start and retire, the same rule
//! the simulator follows). Latency is measured from the moment the user sends.
//!
//! Either way, errors and timeouts are not dropped: they are counted, and recorded in the
//! latency histograms at the timeout, so they count as SLO misses.
//!
//! Requests are [templates](crate::template) filled per request. An app whose requests depend
//! on each other (a login token, an id from an earlier answer) is driven by the scenario's
//! `live` flows ([`scenarios::LiveDef`]): once, before the load, its `init` requests; then each
//! user sends its `setup` (or takes another user's recent one) and repeatedly a flow's steps
//! in order, keeping what each answer's `capture` names for the requests after it. A failed
//! step ends the user's flow there (the next flow starts after the usual think time).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::distr::weighted::WeightedIndex;
use rand::SeedableRng;
use rand_distr::Distribution;
use rand_pcg::Pcg64Mcg;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use scenarios::{HttpDef, LiveDef};
use traces::Load;

use record::arrivals::ArrivalsWriter;

use crate::template::{Template, Vars};
use crate::LiveError;

/// One kind of request of the mix: its name and weight, and how it is sent (method, path,
/// body, headers and captures, as a scenario's `http` says).
#[derive(Debug, Clone)]
pub struct RequestKind {
    pub name: String,
    pub weight: f64,
    pub http: HttpDef,
}

impl RequestKind {
    /// A request with no body: `method` and a `path` template.
    pub fn new(name: &str, weight: f64, method: &str, path: &str) -> Self {
        RequestKind {
            name: name.to_string(),
            weight,
            http: HttpDef {
                method: method.to_string(),
                path: path.to_string(),
                body: None,
                content_type: None,
                form: Vec::new(),
                headers: Default::default(),
                capture: Default::default(),
            },
        }
    }

    /// The same request with a body template and its content type.
    pub fn with_body(mut self, body: &str, content_type: &str) -> Self {
        self.http.body = Some(body.to_string());
        self.http.content_type = Some(content_type.to_string());
        self
    }
}

/// What to send, where, how fast.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// `http://host:port`, no trailing slash.
    pub base: String,
    /// Requests per second (or users, with a closed-loop `load`), one value per second.
    pub rates: Vec<f64>,
    /// Open-loop Poisson arrivals or closed-loop users.
    pub load: Load,
    pub mix: Vec<RequestKind>,
    /// Init requests, users' set-up and flows over the mix's request types (closed loop only).
    pub live: Option<LiveDef>,
    pub seed: u64,
    pub timeout: Duration,
    /// Requests in flight at most; the sender waits (and falls behind) beyond it.
    pub max_in_flight: usize,
    /// Requests scheduled from this second on go into [`Stats::overall`] (the ramp before it
    /// is not judged).
    pub measure_from_s: usize,
    /// Write every request's send time and type here (a record's `arrivals.csv.gz`, which
    /// `sim` replays).
    pub arrivals_log: Option<std::path::PathBuf>,
    /// A calibration load: change the mix every this many seconds, cycling through
    /// [`scenarios::mix_phases`] of the mix's weights (0: the mix's weights throughout).
    pub mix_cycle_s: usize,
}

use record::latency::{histogram, MAX_LATENCY_US as MAX_US};

/// One second of the schedule: the requests scheduled in it and how they went.
#[derive(Debug, Clone)]
pub struct Second {
    pub sent: u64,
    /// Requests sent in this second, per kind of the mix.
    pub sent_by_kind: Vec<u64>,
    /// Successful answers received during this second (whenever they were sent), per kind.
    pub answered_by_kind: Vec<u64>,
    pub ok: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Latency in microseconds, from the scheduled send time, to two significant digits (an
    /// hour of seconds at three digits would take 700 MB; minutes and the whole run keep
    /// three, in [`Stats`]).
    pub latency: Histogram<u32>,
}

impl Second {
    fn new(kinds: usize) -> Self {
        Second {
            sent: 0,
            sent_by_kind: vec![0; kinds],
            answered_by_kind: vec![0; kinds],
            ok: 0,
            errors: 0,
            timeouts: 0,
            latency: Histogram::new_with_bounds(1, MAX_US, 2).expect("static bounds"),
        }
    }

    pub fn done(&self) -> u64 {
        self.ok + self.errors + self.timeouts
    }
}

/// Everything measured, shared with whoever reads it while the load runs.
#[derive(Debug, Clone)]
pub struct Stats {
    pub seconds: Vec<Second>,
    /// Latency of the requests scheduled in each minute, full precision.
    pub minutes: Vec<Histogram<u64>>,
    /// Latency of every request scheduled from `measure_from_s` on, full precision.
    pub overall: Histogram<u64>,
    /// The same per kind of the mix (its name, in the mix's order): which requests make the
    /// tail.
    pub by_kind: Vec<(String, Histogram<u64>)>,
    /// How late sends went out, in microseconds.
    pub lateness: Histogram<u64>,
    /// Last error message seen (for reports).
    pub last_error: Option<String>,
}

/// Poisson arrival times (seconds from the start) following `rates` second by second.
pub fn arrivals(rates: &[f64], seed: u64) -> impl Iterator<Item = f64> + '_ {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let mut t = 0.0f64;
    std::iter::from_fn(move || {
        t = traces::next_arrival(rates, t, &mut rng)?;
        Some(t)
    })
}

/// A request kind ready to send: its templates parsed.
#[derive(Debug)]
struct Kind {
    name: String,
    method: Method,
    path: Template,
    body: Option<(Template, String)>,
    form: Vec<(String, Template)>,
    headers: Vec<(HeaderName, Template)>,
    capture: Vec<(String, String)>,
}

impl Kind {
    fn compile(name: &str, http: &HttpDef) -> Result<Kind, LiveError> {
        let bad = |e: String| LiveError::Config(format!("request type '{name}': {e}"));
        let method = http
            .method
            .parse()
            .map_err(|_| bad(format!("bad method {:?}", http.method)))?;
        let parse = |t: &str| Template::parse(t).map_err(|e| bad(e.to_string()));
        if http.body.is_some() && !http.form.is_empty() {
            return Err(bad("a form and a body: the form is the body".into()));
        }
        let body = match &http.body {
            Some(b) => Some((
                parse(b)?,
                http.content_type
                    .clone()
                    .unwrap_or_else(|| "application/json".into()),
            )),
            None => None,
        };
        let mut headers = Vec::new();
        for (h, v) in &http.headers {
            let h = HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| bad(format!("bad header name {h:?}")))?;
            headers.push((h, parse(v)?));
        }
        Ok(Kind {
            name: name.to_string(),
            method,
            path: parse(&http.path)?,
            body,
            form: http
                .form
                .iter()
                .map(|(k, v)| Ok((k.clone(), parse(v)?)))
                .collect::<Result<_, LiveError>>()?,
            headers,
            capture: http
                .capture
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    fn templates(&self) -> impl Iterator<Item = &Template> {
        // The order `build_in` fills them in.
        std::iter::once(&self.path)
            .chain(self.headers.iter().map(|h| &h.1))
            .chain(self.body.iter().map(|b| &b.0))
            .chain(self.form.iter().map(|f| &f.1))
    }

    /// The request with its templates filled from `vars` (plus what they bind themselves).
    fn build(
        &self,
        base: &str,
        rng: &mut Pcg64Mcg,
        vars: &Vars,
    ) -> Result<Request<Full<Bytes>>, LiveError> {
        let mut scope = vars.clone();
        self.build_in(base, rng, &mut scope)
    }

    /// [`Kind::build`], binding into `scope`.
    fn build_in(
        &self,
        base: &str,
        rng: &mut Pcg64Mcg,
        scope: &mut Vars,
    ) -> Result<Request<Full<Bytes>>, LiveError> {
        let fail =
            |e: demo::DemoError| LiveError::Config(format!("request type '{}': {e}", self.name));
        let uri = format!("{}{}", base, self.path.fill(rng, scope).map_err(fail)?);
        let mut builder = Request::builder().method(self.method.clone()).uri(uri);
        for (name, value) in &self.headers {
            let v = value.fill(rng, scope).map_err(fail)?;
            let v = HeaderValue::from_str(&v).map_err(|_| {
                fail(demo::DemoError::Config(format!(
                    "header {name} {v:?} is not a header value"
                )))
            })?;
            builder = builder.header(name, v);
        }
        let body = if let Some((template, content_type)) = &self.body {
            builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
            Bytes::from(template.fill(rng, scope).map_err(fail)?)
        } else if !self.form.is_empty() {
            builder = builder.header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
            let mut form = form_urlencoded::Serializer::new(String::new());
            for (name, value) in &self.form {
                form.append_pair(name, &value.fill(rng, scope).map_err(fail)?);
            }
            Bytes::from(form.finish())
        } else {
            Bytes::new()
        };
        builder
            .body(Full::new(body))
            .map_err(|e| fail(demo::DemoError::Config(format!("request: {e}"))))
    }

    /// The values this request's answer must give, read from its JSON body.
    fn captured(&self, body: &[u8]) -> Result<Vars, String> {
        let mut vars = Vars::default();
        if self.capture.is_empty() {
            return Ok(vars);
        }
        let json: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| format!("{}: the answer is not JSON ({e})", self.name))?;
        for (name, pointer) in &self.capture {
            let value = json.pointer(pointer).ok_or_else(|| {
                format!(
                    "{}: the answer has nothing at {pointer} (for {name})",
                    self.name
                )
            })?;
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => {
                    return Err(format!("{}: {pointer} is null (for {name})", self.name))
                }
                other => other.to_string(),
            };
            vars.set(name, text);
        }
        Ok(vars)
    }
}

/// The flows of a closed-loop load, over indices into the mix.
#[derive(Debug, Clone)]
struct Flows {
    setup: Vec<usize>,
    setup_reuse: Duration,
    weights: WeightedIndex<f64>,
    flows: Vec<Vec<usize>>,
}

/// The request log being written, and the first error writing it.
#[derive(Debug)]
struct RequestLog {
    writer: Option<ArrivalsWriter>,
    error: Option<String>,
}

impl RequestLog {
    fn write(&mut self, t: f64, name: &str) {
        if self.error.is_some() {
            return;
        }
        if let Some(w) = &mut self.writer {
            if let Err(e) = w.write(t, name) {
                self.error = Some(e.to_string());
            }
        }
    }
}

type SharedLog = Arc<Mutex<RequestLog>>;

/// The generator; `stats()` can be read while `run` goes on.
#[derive(Debug)]
pub struct LoadGen {
    config: LoadConfig,
    kinds: Arc<Vec<Kind>>,
    init: Vec<Kind>,
    flows: Option<Flows>,
    /// What the init requests captured: every user starts with these.
    base_vars: Vars,
    stats: Arc<Mutex<Stats>>,
}

impl LoadGen {
    pub fn new(config: LoadConfig) -> Result<Self, LiveError> {
        if config.mix.is_empty() {
            return Err(LiveError::Config("the request mix is empty".into()));
        }
        let base: Uri = config
            .base
            .parse()
            .map_err(|e| LiveError::Config(format!("bad URL {:?}: {e}", config.base)))?;
        if base.scheme_str() != Some("http") || base.host().is_none() {
            return Err(LiveError::Config(format!(
                "URL {:?} must be http://host[:port]",
                config.base
            )));
        }
        let kinds = config
            .mix
            .iter()
            .map(|k| Kind::compile(&k.name, &k.http))
            .collect::<Result<Vec<_>, _>>()?;
        let live = config.live.clone().unwrap_or_default();
        let init = live
            .init
            .iter()
            .map(|s| Kind::compile(&format!("init {}", s.name), &s.http))
            .collect::<Result<Vec<_>, _>>()?;
        let index = |name: &str| {
            kinds.iter().position(|k| k.name == name).ok_or_else(|| {
                LiveError::Config(format!(
                    "the flows name request type '{name}', which the mix lacks"
                ))
            })
        };
        let flows = if live.flows.is_empty() {
            None
        } else {
            if config.load == Load::Poisson {
                return Err(LiveError::Config(
                    "this app is driven by user flows (a login, ids from earlier answers): \
                     it needs closed-loop users (--load users), not open-loop arrivals"
                        .into(),
                ));
            }
            if config.mix_cycle_s > 0 {
                return Err(LiveError::Config(
                    "this app is driven by user flows, which fix the order of its request \
                     types: a mix cycle cannot change their shares"
                        .into(),
                ));
            }
            Some(Flows {
                setup: live
                    .setup
                    .iter()
                    .map(|n| index(n))
                    .collect::<Result<_, _>>()?,
                setup_reuse: Duration::from_secs_f64(live.setup_reuse_s),
                weights: WeightedIndex::new(live.flows.iter().map(|f| f.weight))
                    .map_err(|e| LiveError::Config(format!("flow weights: {e}")))?,
                flows: live
                    .flows
                    .iter()
                    .map(|f| f.steps.iter().map(|n| index(n)).collect::<Result<_, _>>())
                    .collect::<Result<_, _>>()?,
            })
        };
        // Every value a template reads must come from somewhere; then each template is
        // filled a few times with stand-in values, so that a bad range fails here.
        let init_bound: Vec<String> = init
            .iter()
            .flat_map(|k| {
                k.templates()
                    .flat_map(Template::bound_vars)
                    .collect::<Vec<_>>()
            })
            .collect();
        let captured: HashSet<&str> = init
            .iter()
            .chain(&kinds)
            .flat_map(|k| k.capture.iter().map(|c| c.0.as_str()))
            .chain(init_bound.iter().map(String::as_str))
            .collect();
        let mut probe = Pcg64Mcg::seed_from_u64(0);
        let mut stand_in = Vars::default();
        for name in &captured {
            stand_in.set(name, "1".into());
        }
        for k in init.iter().chain(&kinds) {
            // A request's templates share one scope, filled in this order.
            let mut bound_here: Vec<String> = Vec::new();
            for t in k.templates() {
                let unknown = t
                    .free_vars()
                    .into_iter()
                    .find(|v| !captured.contains(v.as_str()) && !bound_here.contains(v));
                if let Some(v) = unknown {
                    return Err(LiveError::Config(format!(
                        "request type '{}' reads {{${v}}}, which no request captures (nor an init request binds)",
                        k.name
                    )));
                }
                bound_here.extend(t.bound_vars());
            }
            for _ in 0..8 {
                let mut scope = stand_in.clone();
                for t in k.templates() {
                    t.fill(&mut probe, &mut scope).map_err(|e| {
                        LiveError::Config(format!("request type '{}': {e}", k.name))
                    })?;
                }
            }
        }
        let seconds = (0..config.rates.len())
            .map(|_| Second::new(config.mix.len()))
            .collect();
        let minutes = (0..config.rates.len().div_ceil(60))
            .map(|_| histogram())
            .collect();
        let by_kind = kinds
            .iter()
            .map(|k| (k.name.clone(), histogram()))
            .collect();
        Ok(LoadGen {
            kinds: Arc::new(kinds),
            init,
            flows,
            base_vars: Vars::default(),
            stats: Arc::new(Mutex::new(Stats {
                seconds,
                minutes,
                overall: histogram(),
                by_kind,
                lateness: histogram(),
                last_error: None,
            })),
            config,
        })
    }

    pub fn stats(&self) -> Arc<Mutex<Stats>> {
        self.stats.clone()
    }

    /// Sends the init requests, in order, once (before [`LoadGen::run`]; not measured), and
    /// keeps what they bind and capture for every user. A failure ends the run before it
    /// starts.
    pub async fn init(&mut self) -> Result<(), LiveError> {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let mut rng = Pcg64Mcg::seed_from_u64(self.config.seed ^ 0x1A17);
        for k in &self.init {
            let req = k.build_in(&self.config.base, &mut rng, &mut self.base_vars)?;
            let fail =
                |why: String| LiveError::Config(format!("{} before the load: {why}", k.name));
            let answer = tokio::time::timeout(self.config.timeout, fetch(&client, req))
                .await
                .map_err(|_| fail("no answer in time".into()))?
                .map_err(fail)?;
            let vars = k.captured(&answer).map_err(fail)?;
            self.base_vars.extend(&vars);
        }
        Ok(())
    }

    /// Sends the whole schedule and waits for the last answers (or their timeouts).
    pub async fn run(&self) -> Result<(), LiveError> {
        let c = &self.config;
        let log = match &c.arrivals_log {
            Some(path) => Some(Arc::new(Mutex::new(RequestLog {
                writer: Some(
                    ArrivalsWriter::create(path)
                        .map_err(|e| LiveError::Config(format!("request log: {e}")))?,
                ),
                error: None,
            }))),
            None => None,
        };
        let result = self.send_all(log.clone()).await;
        if let Some(log) = log {
            let mut l = log.lock().expect("log lock");
            if let Some(w) = l.writer.take() {
                if let Err(e) = w.finish() {
                    l.error.get_or_insert(e.to_string());
                }
            }
            if let Some(e) = &l.error {
                // The run itself went on; its log is incomplete and must not be replayed.
                return Err(LiveError::Config(format!("request log: {e}")));
            }
        }
        result
    }

    async fn send_all(&self, log: Option<SharedLog>) -> Result<(), LiveError> {
        let c = &self.config;
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(c.max_in_flight)
            .build_http();
        let weights = Mixes::new(c)?;
        match c.load {
            Load::Poisson => self.run_open(client, weights, log).await,
            Load::Users { think_s } => self.run_users(client, weights, think_s, log).await,
        }
    }

    async fn run_open(
        &self,
        client: HttpClient,
        weights: Mixes,
        log: Option<SharedLog>,
    ) -> Result<(), LiveError> {
        let c = &self.config;
        let start = Instant::now();
        let sender = Arc::new(self.sender(client, start, log));
        let mut rng = Pcg64Mcg::seed_from_u64(c.seed ^ 0x5EED);
        let permits = Arc::new(Semaphore::new(c.max_in_flight.max(1)));
        for at in arrivals(&c.rates, c.seed) {
            let scheduled = start + Duration::from_secs_f64(at);
            tokio::time::sleep_until(scheduled).await;
            let permit = permits.clone().acquire_owned().await.expect("never closed");
            let late = Instant::now().saturating_duration_since(scheduled);
            let kind = weights.at(at).sample(&mut rng);
            let req = self.kinds[kind].build(&c.base, &mut rng, &self.base_vars)?;
            self.stats
                .lock()
                .expect("stats lock")
                .lateness
                .saturating_record(late.as_micros().max(1) as u64);
            let sender = sender.clone();
            tokio::spawn(async move {
                sender.exchange(req, kind, scheduled, at as usize).await;
                drop(permit);
            });
        }
        // Wait for everything in flight: each ends by its timeout at the latest.
        let _all = permits
            .acquire_many(c.max_in_flight.max(1) as u32)
            .await
            .expect("never closed");
        Ok(())
    }

    /// Closed loop: one task per user; the count of each second decides who sends.
    async fn run_users(
        &self,
        client: HttpClient,
        weights: Mixes,
        think_s: f64,
        log: Option<SharedLog>,
    ) -> Result<(), LiveError> {
        let c = &self.config;
        let start = Instant::now();
        let ctx = Arc::new(UserContext {
            sender: self.sender(client, start, log),
            weights,
            flows: self.flows.clone(),
            base_vars: self.base_vars.clone(),
            shared_setup: Mutex::new(None),
            rates: c.rates.clone(),
            start,
            base: c.base.clone(),
        });
        let mut active: Vec<Option<tokio::task::JoinHandle<Result<(), LiveError>>>> = Vec::new();
        for (second, &rate) in c.rates.iter().enumerate() {
            tokio::time::sleep_until(start + Duration::from_secs(second as u64)).await;
            let n = traces::users_in(rate);
            if active.len() < n {
                active.resize_with(n, || None);
            }
            let starting: Vec<usize> = (0..n)
                .filter(|&u| active[u].as_ref().is_none_or(|h| h.is_finished()))
                .collect();
            for (i, &u) in starting.iter().enumerate() {
                if let Some(h) = active[u].take() {
                    h.await
                        .map_err(|e| LiveError::Config(format!("user task: {e}")))??;
                }
                let begin =
                    start + Duration::from_secs_f64(traces::spawn_time(second, i, starting.len()));
                let user = User {
                    id: u,
                    rng: Pcg64Mcg::seed_from_u64(
                        c.seed ^ 0x05E2 ^ (u as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    ),
                    think_s,
                    vars: ctx.base_vars.clone(),
                    set_up: false,
                };
                active[u] = Some(tokio::spawn(user.run(ctx.clone(), begin)));
            }
        }
        for h in active.into_iter().flatten() {
            h.await
                .map_err(|e| LiveError::Config(format!("user task: {e}")))??;
        }
        Ok(())
    }

    /// What sends and records the requests of a schedule that started at `start`.
    fn sender(&self, client: HttpClient, start: Instant, log: Option<SharedLog>) -> Sender {
        Sender {
            log,
            kinds: self.kinds.clone(),
            client,
            start,
            stats: self.stats.clone(),
            timeout: self.config.timeout,
            measure_from: self.config.measure_from_s,
        }
    }
}
type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Sends `req` and reads the whole answer; anything but a success status is an error.
async fn fetch(client: &HttpClient, req: Request<Full<Bytes>>) -> Result<Bytes, String> {
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// Sends requests and records how they went, for both loads.
struct Sender {
    log: Option<SharedLog>,
    kinds: Arc<Vec<Kind>>,
    client: HttpClient,
    /// When the schedule started (second 0).
    start: Instant,
    stats: Arc<Mutex<Stats>>,
    timeout: Duration,
    measure_from: usize,
}

impl Sender {
    /// Sends one request of mix entry `kind`, counted in second `second` (latency from `from`),
    /// and records the outcome; on success, the values the kind captures from the answer (an
    /// answer without them is a failure).
    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        kind: usize,
        from: Instant,
        second: usize,
    ) -> Option<Vars> {
        let (client, stats, timeout) = (&self.client, &self.stats, self.timeout);
        if let Some(log) = &self.log {
            let t = from.saturating_duration_since(self.start).as_secs_f64();
            log.lock()
                .expect("log lock")
                .write(t, &self.kinds[kind].name);
        }
        {
            let mut s = stats.lock().expect("stats lock");
            s.seconds[second].sent += 1;
            s.seconds[second].sent_by_kind[kind] += 1;
        }
        let outcome = tokio::time::timeout(timeout, async {
            self.kinds[kind].captured(&fetch(client, req).await?)
        })
        .await;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(from);
        let mut s = stats.lock().expect("stats lock");
        if let (Ok(Ok(_)), Some(answered)) = (
            &outcome,
            s.seconds
                .get_mut(now.saturating_duration_since(self.start).as_secs() as usize),
        ) {
            answered.answered_by_kind[kind] += 1;
        }
        let sec = &mut s.seconds[second];
        let us = match &outcome {
            Ok(Ok(_)) => {
                sec.ok += 1;
                elapsed.as_micros().max(1) as u64
            }
            Ok(Err(_)) => {
                sec.errors += 1;
                timeout.as_micros() as u64
            }
            Err(_) => {
                sec.timeouts += 1;
                timeout.as_micros() as u64
            }
        };
        sec.latency.saturating_record(us);
        s.minutes[second / 60].saturating_record(us);
        if second >= self.measure_from {
            s.overall.saturating_record(us);
            s.by_kind[kind].1.saturating_record(us);
        }
        match outcome {
            Ok(Ok(vars)) => Some(vars),
            Ok(Err(e)) => {
                s.last_error = Some(e);
                None
            }
            Err(_) => None,
        }
    }
}

/// What every closed-loop user shares.
struct UserContext {
    sender: Sender,
    weights: Mixes,
    flows: Option<Flows>,
    base_vars: Vars,
    /// The newest set-up's captures and when it ended, for users that reuse it.
    shared_setup: Mutex<Option<(Instant, Vars)>>,
    /// The user count of each second: a user whose number is not below the count of the
    /// second it would send in retires (read from the clock, not from a shared counter, so a
    /// user never races the second's start).
    rates: Vec<f64>,
    start: Instant,
    base: String,
}

/// One closed-loop user, with its own seeded generator (request types, templates, thinking).
struct User {
    id: usize,
    rng: Pcg64Mcg,
    think_s: f64,
    /// The init requests' captures, the set-up's and those of this user's answers.
    vars: Vars,
    set_up: bool,
}

/// The request mix of each phase of a calibration load's cycle (one without a cycle).
struct Mixes {
    phases: Vec<WeightedIndex<f64>>,
    cycle_s: usize,
}

impl Mixes {
    fn new(c: &LoadConfig) -> Result<Mixes, LiveError> {
        let weights: Vec<f64> = c.mix.iter().map(|k| k.weight).collect();
        let phases = if c.mix_cycle_s > 0 {
            scenarios::mix_phases(&weights)
        } else {
            vec![weights]
        };
        Ok(Mixes {
            phases: phases
                .into_iter()
                .map(WeightedIndex::new)
                .collect::<Result<_, _>>()
                .map_err(|e| LiveError::Config(format!("request weights: {e}")))?,
            cycle_s: c.mix_cycle_s,
        })
    }

    /// The mix in force at `t` seconds into the run.
    fn at(&self, t: f64) -> &WeightedIndex<f64> {
        &self.phases[scenarios::mix_phase(t as usize, self.cycle_s, self.phases.len())]
    }
}

/// Why a user stopped sending.
enum Stop {
    /// Its number is above the second's user count.
    Retired,
    /// The request failed: the rest of its flow is skipped.
    Failed,
}

impl User {
    async fn run(mut self, ctx: Arc<UserContext>, begin: Instant) -> Result<(), LiveError> {
        let mut next = begin;
        loop {
            let Some(flows) = &ctx.flows else {
                let second = next.saturating_duration_since(ctx.start).as_secs_f64();
                let kind = ctx.weights.at(second).sample(&mut self.rng);
                if let Err(Stop::Retired) = self.send(&ctx, kind, &mut next).await? {
                    return Ok(());
                }
                continue;
            };
            if !self.set_up {
                if let Err(Stop::Retired) = self.set_up(&ctx, flows, &mut next).await? {
                    return Ok(());
                }
                continue;
            }
            let flow = &flows.flows[flows.weights.sample(&mut self.rng)];
            for &kind in flow {
                match self.send(&ctx, kind, &mut next).await? {
                    Ok(()) => {}
                    Err(Stop::Retired) => return Ok(()),
                    Err(Stop::Failed) => break,
                }
            }
        }
    }

    /// The set-up: another user's if it is recent enough, else this user's own requests.
    async fn set_up(
        &mut self,
        ctx: &UserContext,
        flows: &Flows,
        next: &mut Instant,
    ) -> Result<Result<(), Stop>, LiveError> {
        // Look for a set-up to reuse when this user starts, not when its task was spawned.
        tokio::time::sleep_until(*next).await;
        let reuse = ctx
            .shared_setup
            .lock()
            .expect("set-up lock")
            .as_ref()
            .filter(|(at, _)| at.elapsed() < flows.setup_reuse)
            .map(|(_, vars)| vars.clone());
        if let Some(vars) = reuse {
            self.vars.extend(&vars);
            self.set_up = true;
            return Ok(Ok(()));
        }
        for &kind in &flows.setup {
            if let Err(stop) = self.send(ctx, kind, next).await? {
                return Ok(Err(stop));
            }
        }
        // Share only what the set-up itself captured.
        let mut captured = Vars::default();
        for k in &flows.setup {
            for (name, _) in &ctx.sender.kinds[*k].capture {
                if let Some(v) = self.vars.get(name) {
                    captured.set(name, v.to_string());
                }
            }
        }
        if !flows.setup.is_empty() {
            *ctx.shared_setup.lock().expect("set-up lock") = Some((Instant::now(), captured));
        }
        self.set_up = true;
        Ok(Ok(()))
    }

    /// Waits until `next`, sends one request of `kind` unless the user has retired, keeps its
    /// captures, and sets `next` after a think time.
    async fn send(
        &mut self,
        ctx: &UserContext,
        kind: usize,
        next: &mut Instant,
    ) -> Result<Result<(), Stop>, LiveError> {
        tokio::time::sleep_until(*next).await;
        let now = Instant::now();
        let second = now.saturating_duration_since(ctx.start).as_secs() as usize;
        let wanted = ctx.rates.get(second).map_or(0, |&r| traces::users_in(r));
        if self.id >= wanted {
            return Ok(Err(Stop::Retired));
        }
        let req = ctx.sender.kinds[kind].build(&ctx.base, &mut self.rng, &self.vars)?;
        let answer = ctx.sender.exchange(req, kind, now, second).await;
        *next =
            Instant::now() + Duration::from_secs_f64(traces::think(self.think_s, &mut self.rng));
        Ok(match answer {
            Some(vars) => {
                self.vars.extend(&vars);
                Ok(())
            }
            None => Err(Stop::Failed),
        })
    }
}

/// A trivial HTTP server (answers 200 after `delay`) on `listener`: the far end for load
/// generator tests and benchmarks. Runs until the task is dropped.
pub async fn serve_ok(listener: tokio::net::TcpListener, delay: Duration) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(move |_req| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                    Bytes::from_static(b"ok"),
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_follow_the_rates() {
        let rates = vec![100.0, 0.0, 1000.0];
        let times: Vec<f64> = arrivals(&rates, 3).collect();
        let count = |s: usize| times.iter().filter(|t| t.floor() as usize == s).count() as f64;
        assert!((count(0) - 100.0).abs() < 40.0);
        assert_eq!(count(1), 0.0);
        assert!((count(2) - 1000.0).abs() < 120.0);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(times, arrivals(&rates, 3).collect::<Vec<_>>());
    }
}
