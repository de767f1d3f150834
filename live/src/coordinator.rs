//! The coordinator of a live run (`live run`): the Tower's side of Autothrottle on a real app.
//!
//! One run, in order:
//!
//! 1. Check everything that can be checked without touching the app: scenario, trace, targets,
//!    Tower, request mix, URL, that the app answers TCP at the URL, that every agent answers
//!    `hello` and together they hold a container for every service of the scenario. Nothing
//!    has been throttled yet, so any error here leaves the cluster exactly as it was.
//! 2. `start` the scalers on every agent (a container is matched to a service by name: `svc`,
//!    or `svc@pod` for replicas, on whichever agent has it).
//! 3. Replay ramp + trace as open-loop load ([`crate::loadgen`]). Every second: `stats` from
//!    every agent, rows placed on the run's clock. Every minute (a couple of seconds late, so
//!    that the minute's rows are in): RPS, P99 and allocation of the minute to the Tower, new
//!    targets to the agents, a row to `minutes.csv`.
//! 4. `stop` every agent (original limits back) and write `run.json`, whether the run ended,
//!    was interrupted (Ctrl-C) or gave up (the app stopped answering).
//!
//! An agent that stops answering mid-run is reported; the run goes on with the others, its
//! containers get a [`Gap`] in the record, and the coordinator reconnects every few seconds
//! (a restarted agent gets its scalers back and the gap closes).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::ToSocketAddrs;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controller::{MinuteObservation, ScalerKind, Targets, Tower, TowerKind, TowerMemory};
use record::latency::quantile_ms;
use record::{
    throttle_ratio, Gap, Latencies, MinuteRow, RecordWriter, RunInfo, RunPlan, ServiceRow, Summary,
};
use scenarios::Scenario;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;
use traces::Trace;

use crate::loadgen::{LoadConfig, LoadGen, RequestKind, Stats};
use crate::protocol::{encode, Call, HelloReply, Response, StatsReply, StopReply};
use crate::LiveError;

/// How long a minute's processing waits for the minute's last rows, seconds.
const MINUTE_GRACE_S: f64 = 2.5;
/// Allocation is averaged from this long after the ramp (as in the simulator).
const SETTLE_S: usize = 30;
/// Seconds between attempts to reach a lost agent again.
const RETRY_S: f64 = 5.0;

/// Everything a live run needs: the run itself ([`RunPlan`], as the simulator runs it) and
/// where the app and the agents are.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub plan: RunPlan,
    /// Where requests go: `http://host:port`.
    pub url: String,
    pub token: String,
    /// Agent address per node name (the scenario's `agent` fields, possibly overridden).
    pub agents: BTreeMap<String, String>,
    /// A request not answered within this counts as a miss at this latency.
    pub request_timeout: Duration,
    /// Timeout of one protocol call to an agent.
    pub agent_timeout: Duration,
    pub max_in_flight: usize,
    /// Give up when the app has answered none of the requests of this many seconds.
    pub dead_app_s: usize,
}

impl RunSpec {
    /// A run with the paper's defaults (180 s ramp, Captains at 0.1, no Tower, services.csv
    /// written) and the scenario's agent addresses.
    pub fn new(scenario: Arc<Scenario>, trace: Arc<Trace>, url: &str, token: &str) -> Self {
        let agents = scenario
            .file
            .nodes
            .iter()
            .filter_map(|n| n.agent.clone().map(|a| (n.name.clone(), a)))
            .collect();
        let mut plan = RunPlan::new(scenario, trace, ScalerKind::Captain, Targets::new(0.1, 0.1));
        plan.services_csv = true;
        RunSpec {
            plan,
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            agents,
            request_timeout: Duration::from_secs(10),
            agent_timeout: Duration::from_secs(2),
            max_in_flight: 4096,
            dead_app_s: 30,
        }
    }

    /// The load generator's configuration (the scenario's request mix with its HTTP paths).
    pub fn load_config(&self) -> Result<LoadConfig, LiveError> {
        let plan = &self.plan;
        let mut mix = Vec::new();
        for r in &plan.scenario.file.requests {
            let http = r.http.as_ref().ok_or_else(|| {
                LiveError::Config(format!(
                    "{}: requests.{}: no `http` method and path, so it cannot be sent to a live app",
                    plan.scenario.source, r.name
                ))
            })?;
            let method = http.method.parse().map_err(|_| {
                LiveError::Config(format!(
                    "{}: requests.{}.http.method: bad method {:?}",
                    plan.scenario.source, r.name, http.method
                ))
            })?;
            mix.push(RequestKind {
                name: r.name.clone(),
                weight: r.weight,
                method,
                path: http.path.clone(),
                body: http.body.clone().map(|b| {
                    let ct = http.content_type.as_deref().unwrap_or("application/json");
                    (b, ct.to_string())
                }),
            });
        }
        Ok(LoadConfig {
            base: self.url.clone(),
            rates: plan.rates(),
            load: plan.load,
            mix,
            seed: plan.seed,
            timeout: self.request_timeout,
            max_in_flight: self.max_in_flight,
            measure_from_s: plan.ramp_s,
        })
    }

    /// Refuses what cannot run, before anything is touched.
    pub fn validate(&self) -> Result<(), LiveError> {
        self.plan.validate()?;
        if self.plan.initial_limits.is_some() {
            return Err(LiveError::Config(
                "per-service initial limits are a simulator setting; live runs take one for all"
                    .into(),
            ));
        }
        if self.agents.is_empty() {
            return Err(LiveError::Config(format!(
                "no agent addresses: give the scenario's nodes `agent = \"host:port\"` in {} or pass --agent NODE=HOST:PORT",
                self.plan.scenario.source
            )));
        }
        if self.plan.rates().is_empty() {
            return Err(LiveError::Config("the workload is empty".into()));
        }
        LoadGen::new(self.load_config()?)
            .map_err(|e| LiveError::Config(format!("{}: {e}", self.plan.scenario.source)))?;
        Ok(())
    }

    /// The run's static description.
    pub fn info(&self) -> RunInfo {
        self.plan.info("live")
    }
}

/// What a live run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub info: RunInfo,
    /// The Tower's memory after the run.
    pub memory: TowerMemory,
    /// Why the run ended early, if it did.
    pub stopped: Option<String>,
    /// Send lateness of the load generator, p99, ms.
    pub lateness_p99_ms: f64,
}

/// One protocol connection to an agent.
struct Link {
    stream: BufReader<TcpStream>,
    next_id: u64,
}

impl Link {
    async fn connect(addr: &str, timeout: Duration) -> Result<Link, String> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("no answer within {:.1} s", timeout.as_secs_f64()))?
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        Ok(Link {
            stream: BufReader::new(stream),
            next_id: 1,
        })
    }

    async fn call(&mut self, token: &str, call: &Call, timeout: Duration) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let line = encode(id, token, call);
        let reply = tokio::time::timeout(timeout, async {
            self.stream.get_mut().write_all(line.as_bytes()).await?;
            let mut reply = String::new();
            let n = self.stream.read_line(&mut reply).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the agent closed the connection",
                ));
            }
            Ok(reply)
        })
        .await
        .map_err(|_| format!("no answer within {:.1} s", timeout.as_secs_f64()))?
        .map_err(|e| e.to_string())?;
        let r: Response = serde_json::from_str(&reply)
            .map_err(|e| format!("unreadable reply {:?}: {e}", reply.trim_end()))?;
        if r.id != id {
            return Err(format!("reply to request {} where {id} was expected", r.id));
        }
        match (r.ok, r.result, r.error) {
            (true, Some(v), _) => Ok(v),
            (_, _, Some(e)) => Err(format!("{:?}: {}", e.code, e.message)),
            _ => Err("reply without result or error".into()),
        }
    }
}

/// One container the run controls.
struct Slot {
    service: usize,
    container: String,
    agent: usize,
    /// First run second not yet filled by this container's rows.
    next_second: u32,
    last_limit: Option<f64>,
    /// Index of its open gap in `gaps`.
    open_gap: Option<usize>,
}

impl Slot {
    /// Under the run's control: no gap open.
    fn controlled(&self) -> bool {
        self.open_gap.is_none()
    }
}

struct AgentState {
    node: String,
    addr: String,
    link: Option<Link>,
    /// Agent clock minus run clock, seconds (set by the first `stats` after a connect).
    offset: Option<f64>,
    retry_at: f64,
}

/// One second of one service, summed over its containers.
#[derive(Debug, Clone, Copy, Default)]
struct Agg {
    mean_limit: f64,
    limit: f64,
    usage: f64,
    periods: u64,
    throttled: u64,
    containers: u32,
}

/// One second of the whole app.
#[derive(Debug, Clone, Copy, Default)]
struct SecondTotals {
    /// Mean limits, cores: all services, group 1, group 2.
    alloc: [f64; 3],
    usage: f64,
    periods: u64,
    throttled: u64,
}

/// The state of a run between its seconds.
struct Runner<'a> {
    spec: &'a RunSpec,
    agents: Vec<AgentState>,
    slots: Vec<Slot>,
    gaps: Vec<Gap>,
    /// Per run second, per service.
    seconds: Vec<Vec<Agg>>,
    /// Seconds already written and accounted.
    flushed: usize,
    /// Per flushed second, over all services.
    per_second: Vec<SecondTotals>,
    writer: RecordWriter,
    targets: Targets,
    /// The targets in force in each minute written so far.
    minute_targets: Vec<(u32, Targets)>,
    minute: u32,
    total_s: usize,
}

impl Runner<'_> {
    fn scaler_config(&self, slot: &Slot, initial: Option<f64>) -> controller::ScalerConfig {
        let s = &self.spec.plan.scenario.services[slot.service];
        let initial = initial
            .or(self.spec.plan.initial_limit)
            .unwrap_or(s.initial_limit);
        self.spec
            .plan
            .scaler
            .config(self.targets.for_group(s.group), initial)
    }

    /// One request to `agent`; `None` when it is not connected.
    async fn call(&mut self, agent: usize, call: &Call) -> Option<Result<Value, String>> {
        let spec = self.spec;
        let link = self.agents[agent].link.as_mut()?;
        Some(link.call(&spec.token, call, spec.agent_timeout).await)
    }

    /// Starts the scalers of `agent`'s containers (those not controlled, or all).
    async fn start(&mut self, agent: usize, all: bool) -> Result<Vec<usize>, String> {
        let picked: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].agent == agent && (all || !self.slots[i].controlled()))
            .collect();
        if picked.is_empty() {
            return Ok(picked);
        }
        let scalers = picked
            .iter()
            .map(|&i| {
                let s = &self.slots[i];
                let initial = if all { None } else { s.last_limit };
                (s.container.clone(), self.scaler_config(s, initial))
            })
            .collect();
        self.call(agent, &Call::Start { scalers })
            .await
            .ok_or_else(|| "not connected".to_string())??;
        Ok(picked)
    }

    fn open_gap(&mut self, slot: usize, reason: &str) {
        let s = &self.slots[slot];
        if s.open_gap.is_some() {
            return;
        }
        let gap = Gap {
            service: self.spec.plan.scenario.services[s.service].name.clone(),
            container: s.container.clone(),
            node: self.agents[s.agent].node.clone(),
            from_s: s.next_second,
            to_s: None,
            reason: reason.to_string(),
        };
        self.gaps.push(gap);
        let s = &mut self.slots[slot];
        s.open_gap = Some(self.gaps.len() - 1);
    }

    fn close_gap(&mut self, slot: usize, now_s: u32) {
        let s = &mut self.slots[slot];
        if let Some(g) = s.open_gap.take() {
            self.gaps[g].to_s = Some(now_s.max(self.gaps[g].from_s));
        }
        s.next_second = s.next_second.max(now_s);
    }

    /// An agent stopped answering: report it once, mark its containers' gaps.
    fn lose(&mut self, agent: usize, reason: String, elapsed: f64) {
        let a = &mut self.agents[agent];
        if a.link.take().is_none() {
            return;
        }
        a.offset = None;
        a.retry_at = elapsed + RETRY_S;
        tracing::warn!(
            "lost the agent of node {} at {} at {elapsed:.0} s: {reason}; its containers are out of this run's control (the agent restores them), the others go on",
            a.node, a.addr
        );
        for i in 0..self.slots.len() {
            if self.slots[i].agent == agent {
                self.open_gap(i, &format!("agent lost: {reason}"));
            }
        }
    }

    /// Reconnects lost agents and restarts containers whose control ended.
    async fn retry(&mut self, elapsed: f64) {
        let now_s = elapsed as u32;
        for a in 0..self.agents.len() {
            let needs = self.slots.iter().any(|s| s.agent == a && !s.controlled());
            if !needs || elapsed < self.agents[a].retry_at {
                continue;
            }
            self.agents[a].retry_at = elapsed + RETRY_S;
            if self.agents[a].link.is_none() {
                match Link::connect(&self.agents[a].addr, self.spec.agent_timeout).await {
                    Ok(link) => self.agents[a].link = Some(link),
                    Err(_) => continue,
                }
            }
            match self.start(a, false).await {
                Ok(started) => {
                    let names: Vec<String> = started
                        .iter()
                        .map(|&i| self.slots[i].container.clone())
                        .collect();
                    for i in started {
                        self.close_gap(i, now_s);
                    }
                    tracing::info!(
                        "node {}: control of {} is back at {elapsed:.0} s",
                        self.agents[a].node,
                        names.join(", ")
                    );
                }
                Err(e) => {
                    tracing::debug!(node = %self.agents[a].node, error = %e, "restart failed");
                }
            }
        }
    }

    /// Every agent's rows since the last poll, placed on the run's clock.
    async fn poll(&mut self, t0: Instant) {
        for a in 0..self.agents.len() {
            let Some(reply) = self.call(a, &Call::Stats).await else {
                continue;
            };
            let elapsed = t0.elapsed().as_secs_f64();
            match reply {
                Ok(v) => {
                    if let Err(e) = self.ingest(a, &v, elapsed) {
                        self.lose(a, e, elapsed);
                    }
                }
                Err(e) => self.lose(a, e, elapsed),
            }
        }
    }

    fn ingest(&mut self, agent: usize, v: &Value, elapsed: f64) -> Result<(), String> {
        let reply: StatsReply = serde_json::from_value(v.clone())
            .map_err(|e| format!("bad stats reply (an agent of another version?): {e}"))?;
        let offset = *self.agents[agent].offset.get_or_insert(reply.now - elapsed);
        let StatsReply {
            mut containers,
            fault,
            ..
        } = reply;
        for i in 0..self.slots.len() {
            if self.slots[i].agent != agent || !self.slots[i].controlled() {
                continue;
            }
            let Some(c) = containers.remove(&self.slots[i].container) else {
                let why = fault
                    .clone()
                    .unwrap_or_else(|| "the agent no longer controls it".into());
                tracing::warn!(
                    "node {}: {} is no longer controlled at {elapsed:.0} s: {why}",
                    self.agents[agent].node,
                    self.slots[i].container
                );
                self.open_gap(i, &why);
                continue;
            };
            let rows = c.rows;
            for row in rows {
                let end = row.t - offset;
                let computed = (end - 1.0).round();
                if computed < 0.0 {
                    continue;
                }
                // Clock jitter must not put two rows in one second.
                let second = (computed as u32).max(self.slots[i].next_second);
                self.slots[i].next_second = second + 1;
                self.slots[i].last_limit = Some(row.limit);
                let Some(per) = self.seconds.get_mut(second as usize) else {
                    continue;
                };
                let agg = &mut per[self.slots[i].service];
                agg.mean_limit += if row.mean_limit > 0.0 {
                    row.mean_limit
                } else {
                    row.limit
                };
                agg.limit += row.limit;
                agg.usage += row.usage;
                agg.periods += row.nr_periods;
                agg.throttled += row.nr_throttled;
                agg.containers += 1;
            }
        }
        Ok(())
    }

    /// Writes and accounts the seconds that ended at least `lag` seconds ago.
    fn flush(&mut self, elapsed: f64, lag: f64) -> Result<(), LiveError> {
        let upto = ((elapsed - lag).floor().max(0.0) as usize).min(self.total_s);
        let n = self.spec.plan.scenario.services.len();
        while self.flushed < upto {
            let t = self.flushed;
            let mut alloc = [0.0f64; 3];
            let (mut usage, mut periods, mut throttled) = (0.0, 0u64, 0u64);
            for svc in 0..n {
                let agg = self.seconds[t][svc];
                let group = self.spec.plan.scenario.services[svc].group as usize;
                if agg.containers > 0 {
                    alloc[0] += agg.mean_limit;
                    alloc[group] += agg.mean_limit;
                    usage += agg.usage;
                    periods += agg.periods;
                    throttled += agg.throttled;
                    if self.writer.wants_services() {
                        self.writer.service(&ServiceRow::new(
                            t as u32 + 1,
                            &self.spec.plan.scenario.services[svc].name,
                            agg.limit,
                            agg.usage,
                            agg.periods,
                            agg.throttled,
                        ))?;
                    }
                } else {
                    // A second without rows outside any gap (the agent was a little late at
                    // an edge): the limit stayed what it last was.
                    let carried: f64 = self
                        .slots
                        .iter()
                        .filter(|s| s.service == svc)
                        .filter(|s| {
                            !self
                                .gaps
                                .iter()
                                .any(|g| g.container == s.container && g.covers(t as u32))
                        })
                        .filter_map(|s| s.last_limit)
                        .sum();
                    alloc[0] += carried;
                    alloc[group] += carried;
                }
            }
            self.per_second.push(SecondTotals {
                alloc,
                usage,
                periods,
                throttled,
            });
            self.flushed += 1;
        }
        Ok(())
    }

    /// The minute's row, once its seconds are flushed; the Tower's answer goes to the agents.
    async fn minutes(
        &mut self,
        stats: &Mutex<Stats>,
        tower: &mut Box<dyn Tower>,
        elapsed: f64,
    ) -> Result<(), LiveError> {
        loop {
            let m = self.minute as usize;
            let end = (m + 1) * 60;
            if end > self.total_s || self.flushed < end || elapsed < end as f64 + MINUTE_GRACE_S {
                return Ok(());
            }
            let row = {
                let s = stats.lock().expect("stats lock");
                let secs = &s.seconds[m * 60..end];
                let sent: u64 = secs.iter().map(|x| x.sent).sum();
                let done: u64 = secs.iter().map(|x| x.done()).sum();
                let mut h = s.minutes[m].clone();
                // Requests still out count at their age so far: a stalled app shows as one.
                for (k, sec) in secs.iter().enumerate() {
                    let out = sec.sent - sec.done();
                    if out > 0 {
                        let age_us = ((elapsed - (m * 60 + k) as f64).max(0.0) * 1e6) as u64;
                        h.saturating_record_n(age_us.max(1), out);
                    }
                }
                let q = |q: f64| quantile_ms(&h, q);
                let per = &self.per_second[m * 60..end];
                let sum = |f: &dyn Fn(&SecondTotals) -> f64| per.iter().map(f).sum::<f64>() / 60.0;
                MinuteRow {
                    minute: self.minute,
                    rps: sent as f64 / 60.0,
                    completed: done,
                    p50_ms: q(0.5),
                    p90_ms: q(0.9),
                    p99_ms: q(0.99),
                    allocation: sum(&|p| p.alloc[0]),
                    allocation_group1: sum(&|p| p.alloc[1]),
                    allocation_group2: sum(&|p| p.alloc[2]),
                    usage: sum(&|p| p.usage),
                    target1: self.targets.group1,
                    target2: self.targets.group2,
                }
            };
            self.writer.minute(&row)?;
            self.minute_targets.push((row.minute, self.targets));
            tracing::info!(
                minute = row.minute,
                rps = format!("{:.1}", row.rps),
                p99_ms = format!("{:.1}", row.p99_ms),
                allocation = format!("{:.2}", row.allocation),
                targets = %self.targets,
                "minute"
            );
            if let Some(new) = tower.observe(&MinuteObservation {
                rps: row.rps,
                p99_ms: row.p99_ms,
                allocation: row.allocation,
            }) {
                self.set_targets(new, elapsed).await;
            }
            self.minute += 1;
        }
    }

    async fn set_targets(&mut self, new: Targets, elapsed: f64) {
        self.targets = new;
        for a in 0..self.agents.len() {
            let targets: BTreeMap<String, f64> = self
                .slots
                .iter()
                .filter(|s| s.agent == a && s.controlled())
                .map(|s| {
                    let group = self.spec.plan.scenario.services[s.service].group;
                    (s.container.clone(), new.for_group(group))
                })
                .collect();
            if targets.is_empty() {
                continue;
            }
            if let Some(Err(e)) = self.call(a, &Call::UpdateTargets { targets }).await {
                self.lose(a, format!("update_targets failed: {e}"), elapsed);
            }
        }
    }

    /// `stop` on every reachable agent (each puts its containers' original limits back).
    async fn stop_all(&mut self) {
        for a in 0..self.agents.len() {
            let Some(reply) = self.call(a, &Call::Stop).await else {
                continue;
            };
            match reply {
                Ok(v) => {
                    let restored = serde_json::from_value::<StopReply>(v)
                        .map(|r| r.restored.join(", "))
                        .unwrap_or_else(|e| format!("(unreadable reply: {e})"));
                    tracing::info!(node = %self.agents[a].node, %restored, "stopped")
                }
                Err(e) => {
                    tracing::warn!(
                        "node {}: stop failed ({e}); the agent restores on its own once the coordinator is silent",
                        self.agents[a].node
                    );
                }
            }
        }
    }
}

fn host_port(url: &str) -> Result<String, LiveError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| LiveError::Config(format!("bad URL {url:?}: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| LiveError::Config(format!("URL {url:?} has no host")))?;
    Ok(format!("{host}:{}", uri.port_u16().unwrap_or(80)))
}

/// Checks that something accepts TCP connections at the app's URL.
pub async fn probe_app(url: &str, timeout: Duration) -> Result<(), LiveError> {
    let addr = host_port(url)?;
    let unreachable = |reason: String| LiveError::Unreachable {
        url: url.to_string(),
        reason,
    };
    let resolved: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| unreachable(format!("cannot resolve {addr}: {e}")))?
        .collect();
    let first = resolved
        .first()
        .ok_or_else(|| unreachable(format!("{addr} resolves to nothing")))?;
    tokio::time::timeout(timeout, TcpStream::connect(first))
        .await
        .map_err(|_| unreachable(format!("no answer within {:.0} s", timeout.as_secs_f64())))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(())
}

/// Matches every service to its containers on the agents (`hello`).
async fn discover(spec: &RunSpec) -> Result<(Vec<AgentState>, Vec<Slot>), LiveError> {
    let mut agents = Vec::new();
    let mut slots = Vec::new();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, addr) in &spec.agents {
        let fail = |reason: String| LiveError::Agent {
            node: node.clone(),
            addr: addr.clone(),
            reason,
        };
        let mut link = Link::connect(addr, spec.agent_timeout)
            .await
            .map_err(fail)?;
        let hello = link
            .call(&spec.token, &Call::Hello, spec.agent_timeout)
            .await
            .map_err(fail)?;
        let containers = serde_json::from_value::<HelloReply>(hello)
            .map_err(|e| fail(format!("bad hello reply: {e}")))?
            .containers;
        let index = agents.len();
        for c in &containers {
            let service = c.split('@').next().unwrap_or(c);
            if let Some(i) = spec
                .plan
                .scenario
                .services
                .iter()
                .position(|s| s.name == service)
            {
                slots.push(Slot {
                    service: i,
                    container: c.clone(),
                    agent: index,
                    next_second: 0,
                    last_limit: None,
                    open_gap: None,
                });
            }
        }
        seen.insert(node.clone(), containers);
        agents.push(AgentState {
            node: node.clone(),
            addr: addr.clone(),
            link: Some(link),
            offset: None,
            retry_at: 0.0,
        });
    }
    let missing: Vec<&str> = spec
        .plan
        .scenario
        .services
        .iter()
        .enumerate()
        .filter(|(i, _)| !slots.iter().any(|s| s.service == *i))
        .map(|(_, s)| s.name.as_str())
        .collect();
    if !missing.is_empty() {
        let known: Vec<String> = seen
            .iter()
            .map(|(n, c)| format!("{n}: [{}]", c.join(", ")))
            .collect();
        return Err(LiveError::Config(format!(
            "no agent has a container for {} (agents know {})",
            missing.join(", "),
            known.join("; ")
        )));
    }
    Ok((agents, slots))
}

/// Runs `spec` against the live app, writing the record with `writer`. `shutdown` ends the run
/// early (Ctrl-C); `progress` gets (seconds done, seconds in total).
pub async fn run(
    spec: &RunSpec,
    writer: RecordWriter,
    shutdown: impl Future<Output = ()>,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<Outcome, LiveError> {
    spec.validate()?;
    let load = LoadGen::new(spec.load_config()?)?;
    let mut tower = spec.plan.tower.build(
        spec.plan.scenario.slo_ms,
        spec.plan.scenario.aggregate_rps,
        spec.plan.ramp_s,
        spec.plan.memory.clone(),
        spec.plan.seed,
    )?;
    probe_app(&spec.url, spec.agent_timeout.max(Duration::from_secs(3))).await?;
    let (agents, slots) = discover(spec).await?;
    let total_s = spec.plan.rates().len();
    let n = spec.plan.scenario.services.len();
    let mut r = Runner {
        spec,
        agents,
        slots,
        gaps: Vec::new(),
        seconds: vec![vec![Agg::default(); n]; total_s + 1],
        flushed: 0,
        per_second: Vec::with_capacity(total_s),
        writer,
        targets: spec.plan.targets,
        minute_targets: Vec::new(),
        minute: 0,
        total_s,
    };
    // Start everywhere, or nowhere.
    for a in 0..r.agents.len() {
        if let Err(e) = r.start(a, true).await {
            r.stop_all().await;
            return Err(LiveError::Agent {
                node: r.agents[a].node.clone(),
                addr: r.agents[a].addr.clone(),
                reason: format!("start failed: {e}"),
            });
        }
    }
    tracing::info!(
        containers = r.slots.len(),
        agents = r.agents.len(),
        seconds = total_s,
        "scalers started; replaying the workload"
    );

    let load = Arc::new(load);
    let stats = load.stats();
    let t0 = Instant::now();
    let sender = {
        let load = load.clone();
        tokio::spawn(async move { load.run().await })
    };
    let mut tick =
        tokio::time::interval_at(t0 + Duration::from_millis(250), Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut stopped: Option<String> = None;
    let mut failure: Option<LiveError> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                stopped = Some("interrupted".into());
                break;
            }
            _ = tick.tick() => {}
        }
        r.poll(t0).await;
        let elapsed = t0.elapsed().as_secs_f64();
        r.retry(elapsed).await;
        if let Err(e) = r.flush(elapsed, 2.0) {
            failure = Some(e);
            break;
        }
        if let Err(e) = r.minutes(&stats, &mut tower, elapsed).await {
            failure = Some(e);
            break;
        }
        progress((elapsed as u64).min(total_s as u64), total_s as u64);
        if let Some(why) = dead_app(&stats, elapsed, spec) {
            stopped = Some(why);
            break;
        }
        if sender.is_finished() && elapsed >= total_s as f64 + MINUTE_GRACE_S {
            break;
        }
    }
    if stopped.is_some() || failure.is_some() {
        sender.abort();
    } else {
        match sender.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(LiveError::Internal(format!("load generator task: {e}"))),
        }
    }
    // The last rows, then the limits back, whatever happened.
    r.poll(t0).await;
    r.stop_all().await;
    let elapsed = t0.elapsed().as_secs_f64();
    if let Some(e) = failure {
        return Err(e);
    }
    let lag = if stopped.is_some() { 1.0 } else { 0.0 };
    r.flush(elapsed, lag)?;
    if stopped.is_none() {
        r.minutes(&stats, &mut tower, f64::INFINITY).await?;
    }

    let mut info = spec.info();
    info.complete = stopped.is_none();
    info.summary = summary(spec, &r, &stats.lock().expect("stats lock"))
        .with_mean_targets(&r.minute_targets, spec.plan.ramp_s);
    info.gaps = r.gaps.clone();
    if let Some(why) = &stopped {
        tracing::warn!("run ended early at {elapsed:.0} s: {why}");
    }
    let memory = tower.into_memory();
    if spec.plan.tower != TowerKind::None {
        r.writer.tower(&memory)?;
    }
    let lateness_p99_ms = quantile_ms(&stats.lock().expect("stats lock").lateness, 0.99);
    let Runner { writer, .. } = r;
    writer.finish(&info)?;
    Ok(Outcome {
        info,
        memory,
        stopped,
        lateness_p99_ms,
    })
}

/// Why the run should give up on the app, if it should: no answer at all to the requests of
/// the last `dead_app_s` seconds whose outcome is known.
fn dead_app(stats: &Mutex<Stats>, elapsed: f64, spec: &RunSpec) -> Option<String> {
    let settled = (elapsed - spec.request_timeout.as_secs_f64() - 1.0).floor();
    if settled < spec.dead_app_s as f64 || spec.dead_app_s == 0 {
        return None;
    }
    let s = stats.lock().expect("stats lock");
    let end = (settled as usize).min(s.seconds.len());
    let window = &s.seconds[end.saturating_sub(spec.dead_app_s)..end];
    let sent: u64 = window.iter().map(|x| x.sent).sum();
    let ok: u64 = window.iter().map(|x| x.ok).sum();
    (sent > 0 && ok == 0).then(|| {
        format!(
            "the app at {} answered none of the {sent} requests of the last {} s (last error: {})",
            spec.url,
            spec.dead_app_s,
            s.last_error.as_deref().unwrap_or("timeouts")
        )
    })
}

/// The run's numbers, as design.md section 4 defines them, over the seconds it ran.
fn summary(spec: &RunSpec, r: &Runner<'_>, s: &Stats) -> Summary {
    let end = r.flushed;
    let ramp = spec.plan.ramp_s.min(end);
    let settle = (spec.plan.ramp_s + SETTLE_S).min(end);
    let mean = |from: usize| {
        let span = &r.per_second[from..end];
        span.iter().map(|p| p.alloc[0]).sum::<f64>() / span.len().max(1) as f64
    };
    let allocation = if settle < end { mean(settle) } else { mean(0) };
    let trace_s = (end - ramp).max(1) as f64;
    let after = &r.per_second[ramp..end];
    let periods: u64 = after.iter().map(|p| p.periods).sum();
    let throttled: u64 = after.iter().map(|p| p.throttled).sum();
    let sent: u64 = s.seconds[ramp.min(s.seconds.len())..end.min(s.seconds.len())]
        .iter()
        .map(|x| x.sent)
        .sum();
    let incomplete: u64 = s.seconds[ramp.min(s.seconds.len())..]
        .iter()
        .map(|x| x.sent - x.done())
        .sum();
    Summary::new(
        Latencies::judge(&s.overall, incomplete, spec.plan.scenario.slo_ms),
        allocation,
        after.iter().map(|p| p.usage).sum::<f64>() / trace_s,
        sent as f64 / trace_s,
        throttle_ratio(throttled, periods),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        let scenario = Arc::new(Scenario::builtin("demo").unwrap());
        let trace = Arc::new(Trace::constant(100, 60));
        RunSpec::new(scenario, trace, "http://127.0.0.1:1/", "tok")
    }

    #[test]
    fn agents_come_from_the_scenario_and_the_mix_from_its_http_paths() {
        let s = spec();
        assert_eq!(s.url, "http://127.0.0.1:1");
        assert_eq!(s.agents["local"], "127.0.0.1:7070");
        let lc = s.load_config().unwrap();
        assert_eq!(lc.mix.len(), 2);
        assert_eq!(lc.mix[1].method, hyper::Method::POST);
        let (body, content_type) = lc.mix[1].body.clone().unwrap();
        assert!(body.contains("{int:1..64}") && content_type == "application/json");
        assert_eq!(lc.mix[0].body, None);
        assert_eq!(lc.rates.len(), 180 + 60);
        assert_eq!(lc.measure_from_s, 180);
        s.validate().unwrap();
    }

    #[test]
    fn bad_settings_are_refused_before_anything_runs() {
        let mut s = spec();
        s.plan.tower = TowerKind::Bandit { explore: 0.0 };
        s.plan.scaler = ScalerKind::K8sCpu;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("needs --scaler captain"));
        let mut s = spec();
        s.agents.clear();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no agent addresses"));
        let mut s = spec();
        s.url = "ftp://x".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.plan.targets = Targets::new(1.5, 0.1);
        assert!(s.validate().unwrap_err().to_string().contains("group 1"));
        let mut s = spec();
        s.plan.initial_limit = Some(-1.0);
        assert!(s.validate().is_err());
    }

    #[test]
    fn a_run_gives_up_on_an_app_that_answers_nothing() {
        let mut s = spec();
        s.plan.ramp_s = 0;
        s.dead_app_s = 10;
        s.request_timeout = Duration::from_secs(2);
        let stats = LoadGen::new(s.load_config().unwrap()).unwrap().stats();
        {
            let mut st = stats.lock().unwrap();
            for sec in st.seconds.iter_mut().take(40) {
                sec.sent = 40;
                sec.ok = 40;
            }
        }
        assert_eq!(dead_app(&stats, 40.0, &s), None, "a healthy app");
        {
            let mut st = stats.lock().unwrap();
            for sec in st.seconds.iter_mut().skip(20).take(20) {
                sec.ok = 0;
                sec.errors = 40;
            }
            st.last_error = Some("connection refused".into());
        }
        // At 30 s, the seconds known (up to 27) still hold answers.
        assert_eq!(dead_app(&stats, 30.0, &s), None);
        let why = dead_app(&stats, 40.0, &s).expect("ten silent seconds");
        assert!(
            why.contains("answered none of the 400 requests of the last 10 s"),
            "{why}"
        );
        assert!(why.contains("connection refused"), "{why}");
        s.dead_app_s = 0;
        assert_eq!(dead_app(&stats, 40.0, &s), None, "0 means never give up");
    }

    #[tokio::test]
    async fn an_unreachable_app_is_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = probe_app(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot reach the app at http://127.0.0.1:"),
            "{e}"
        );
    }
}
