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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::distr::weighted::WeightedIndex;
use rand::{Rng, SeedableRng};
use rand_distr::Distribution;
use rand_pcg::Pcg64Mcg;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use traces::Load;

use crate::LiveError;

/// One kind of request of the mix.
#[derive(Debug, Clone)]
pub struct RequestKind {
    pub name: String,
    pub weight: f64,
    pub method: Method,
    /// Path and query, with placeholders filled per request: `{int:LO..HI}`,
    /// `{float:LO..HI}`, `{choice:a|b|c}`.
    pub path: String,
    /// Body template (same placeholders) and its content type; none by default.
    pub body: Option<(String, String)>,
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
    pub seed: u64,
    pub timeout: Duration,
    /// Requests in flight at most; the sender waits (and falls behind) beyond it.
    pub max_in_flight: usize,
    /// Requests scheduled from this second on go into [`Stats::overall`] (the ramp before it
    /// is not judged).
    pub measure_from_s: usize,
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
    /// How late sends went out, in microseconds.
    pub lateness: Histogram<u64>,
    /// Last error message seen (for reports).
    pub last_error: Option<String>,
}

/// Fills a path or body template. A `{` followed by a letter starts a placeholder
/// (`{int:LO..HI}`, `{float:LO..HI}`, `{choice:a|b}`); any other brace is text, so JSON bodies
/// need no escaping.
pub fn expand(template: &str, rng: &mut impl Rng) -> Result<String, LiveError> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        if !rest[open + 1..].starts_with(|c: char| c.is_ascii_alphabetic()) {
            out.push('{');
            rest = &rest[open + 1..];
            continue;
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| LiveError::Config(format!("unclosed '{{' in template {template:?}")))?
            + open;
        let spec = &rest[open + 1..close];
        let bad = || {
            LiveError::Config(format!(
                "bad placeholder {{{spec}}} in {template:?} (int:LO..HI, float:LO..HI, choice:a|b)"
            ))
        };
        let (kind, arg) = spec.split_once(':').ok_or_else(bad)?;
        match kind {
            "int" => {
                let (lo, hi) = arg.split_once("..").ok_or_else(bad)?;
                let (lo, hi): (i64, i64) = (
                    lo.parse().map_err(|_| bad())?,
                    hi.parse().map_err(|_| bad())?,
                );
                if hi < lo {
                    return Err(bad());
                }
                out.push_str(&rng.random_range(lo..=hi).to_string());
            }
            "float" => {
                let (lo, hi) = arg.split_once("..").ok_or_else(bad)?;
                let (lo, hi): (f64, f64) = (
                    lo.parse().map_err(|_| bad())?,
                    hi.parse().map_err(|_| bad())?,
                );
                if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
                    return Err(bad());
                }
                out.push_str(&format!("{:.4}", rng.random_range(lo..hi)));
            }
            "choice" => {
                let options: Vec<&str> = arg.split('|').collect();
                out.push_str(options[rng.random_range(0..options.len())]);
            }
            _ => return Err(bad()),
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
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

/// The generator; `stats()` can be read while `run` goes on.
#[derive(Debug)]
pub struct LoadGen {
    config: LoadConfig,
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
        let mut probe = Pcg64Mcg::seed_from_u64(0);
        for k in &config.mix {
            let templates = std::iter::once(&k.path).chain(k.body.as_ref().map(|b| &b.0));
            for t in templates {
                expand(t, &mut probe)
                    .map_err(|e| LiveError::Config(format!("request type '{}': {e}", k.name)))?;
            }
        }
        let seconds = (0..config.rates.len())
            .map(|_| Second::new(config.mix.len()))
            .collect();
        let minutes = (0..config.rates.len().div_ceil(60))
            .map(|_| histogram())
            .collect();
        Ok(LoadGen {
            stats: Arc::new(Mutex::new(Stats {
                seconds,
                minutes,
                overall: histogram(),
                lateness: histogram(),
                last_error: None,
            })),
            config,
        })
    }

    pub fn stats(&self) -> Arc<Mutex<Stats>> {
        self.stats.clone()
    }

    /// Sends the whole schedule and waits for the last answers (or their timeouts).
    pub async fn run(&self) -> Result<(), LiveError> {
        let c = &self.config;
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(c.max_in_flight)
            .build_http();
        let weights = WeightedIndex::new(c.mix.iter().map(|k| k.weight))
            .map_err(|e| LiveError::Config(format!("request weights: {e}")))?;
        match c.load {
            Load::Poisson => self.run_open(client, weights).await,
            Load::Users { think_s } => self.run_users(client, weights, think_s).await,
        }
    }

    async fn run_open(
        &self,
        client: HttpClient,
        weights: WeightedIndex<f64>,
    ) -> Result<(), LiveError> {
        let c = &self.config;
        let start = Instant::now();
        let sender = Arc::new(self.sender(client, start));
        let mut rng = Pcg64Mcg::seed_from_u64(c.seed ^ 0x5EED);
        let permits = Arc::new(Semaphore::new(c.max_in_flight.max(1)));
        for at in arrivals(&c.rates, c.seed) {
            let scheduled = start + Duration::from_secs_f64(at);
            tokio::time::sleep_until(scheduled).await;
            let permit = permits.clone().acquire_owned().await.expect("never closed");
            let late = Instant::now().saturating_duration_since(scheduled);
            let kind = weights.sample(&mut rng);
            let req = build_request(&c.base, &c.mix[kind], &mut rng)?;
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
        weights: WeightedIndex<f64>,
        think_s: f64,
    ) -> Result<(), LiveError> {
        let c = &self.config;
        let start = Instant::now();
        let ctx = Arc::new(UserContext {
            sender: self.sender(client, start),
            mix: c.mix.clone(),
            weights,
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

    fn sender(&self, client: HttpClient, start: Instant) -> Sender {
        Sender {
            client,
            start,
            stats: self.stats.clone(),
            timeout: self.config.timeout,
            measure_from: self.config.measure_from_s,
        }
    }
}
type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// A request of `kind` with its templates filled.
fn build_request(
    base: &str,
    kind: &RequestKind,
    rng: &mut Pcg64Mcg,
) -> Result<Request<Full<Bytes>>, LiveError> {
    let uri = format!("{}{}", base, expand(&kind.path, rng)?);
    let builder = Request::builder().method(kind.method.clone()).uri(uri);
    let (builder, body) = match &kind.body {
        Some((template, content_type)) => (
            builder.header(hyper::header::CONTENT_TYPE, content_type),
            Bytes::from(expand(template, rng)?),
        ),
        None => (builder, Bytes::new()),
    };
    builder
        .body(Full::new(body))
        .map_err(|e| LiveError::Config(format!("request: {e}")))
}

/// Sends requests and records how they went, for both loads.
struct Sender {
    client: HttpClient,
    /// When the schedule started (second 0).
    start: Instant,
    stats: Arc<Mutex<Stats>>,
    timeout: Duration,
    measure_from: usize,
}

impl Sender {
    /// Sends one request of mix entry `kind`, counted in second `second` (latency from `from`),
    /// and records the outcome.
    async fn exchange(&self, req: Request<Full<Bytes>>, kind: usize, from: Instant, second: usize) {
        let (client, stats, timeout) = (&self.client, &self.stats, self.timeout);
        {
            let mut s = stats.lock().expect("stats lock");
            s.seconds[second].sent += 1;
            s.seconds[second].sent_by_kind[kind] += 1;
        }
        let outcome = tokio::time::timeout(timeout, async {
            let resp = client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            resp.into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {status}"))
            }
        })
        .await;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(from);
        let mut s = stats.lock().expect("stats lock");
        if let (Ok(Ok(())), Some(answered)) = (
            &outcome,
            s.seconds
                .get_mut(now.saturating_duration_since(self.start).as_secs() as usize),
        ) {
            answered.answered_by_kind[kind] += 1;
        }
        let sec = &mut s.seconds[second];
        let us = match &outcome {
            Ok(Ok(())) => {
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
        }
        if let Ok(Err(e)) = outcome {
            s.last_error = Some(e);
        }
    }
}

/// What every closed-loop user shares.
struct UserContext {
    sender: Sender,
    mix: Vec<RequestKind>,
    weights: WeightedIndex<f64>,
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
}

impl User {
    async fn run(mut self, ctx: Arc<UserContext>, begin: Instant) -> Result<(), LiveError> {
        let mut next = begin;
        loop {
            tokio::time::sleep_until(next).await;
            let now = Instant::now();
            let second = now.saturating_duration_since(ctx.start).as_secs() as usize;
            let wanted = ctx.rates.get(second).map_or(0, |&r| traces::users_in(r));
            if self.id >= wanted {
                return Ok(());
            }
            let kind = ctx.weights.sample(&mut self.rng);
            let req = build_request(&ctx.base, &ctx.mix[kind], &mut self.rng)?;
            ctx.sender.exchange(req, kind, now, second).await;
            next = Instant::now()
                + Duration::from_secs_f64(traces::think(self.think_s, &mut self.rng));
        }
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
    fn templates_expand() {
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        let p = expand(
            "/hotels?lat={float:37.7..37.8}&n={int:1..3}&k={choice:a|b}",
            &mut rng,
        )
        .unwrap();
        assert!(p.starts_with("/hotels?lat=37.7"), "{p}");
        assert!(
            p.contains("&n=") && (p.ends_with("k=a") || p.ends_with("k=b")),
            "{p}"
        );
        assert_eq!(expand("/plain", &mut rng).unwrap(), "/plain");
        let body = expand(r#"{"n": {int:7..7}, "o": {}, "k": "{choice:x}"}"#, &mut rng).unwrap();
        assert_eq!(
            body, r#"{"n": 7, "o": {}, "k": "x"}"#,
            "JSON braces are text"
        );
        for bad in [
            "/x{int:3..1}",
            "/x{int:a..b}",
            "/x{nope:1}",
            "/x{int:1..2",
            "/x{float:2..1}",
        ] {
            assert!(expand(bad, &mut rng).is_err(), "{bad}");
        }
    }

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
