//! The state of a live run between its seconds: which containers it controls on which agent,
//! the gaps in that control, and how the agents' per-second rows become the record's seconds
//! and minutes.

use std::collections::BTreeMap;
use std::sync::Mutex;

use controller::{MinuteObservation, Targets, Tower};
use record::latency::quantile_ms;
use record::{Gap, MinuteRow, RecordWriter, RequestRow, ServiceRow};
use serde_json::Value;
use tokio::time::Instant;

use super::connection::AgentConnection;
use super::{RunSpec, MINUTE_GRACE_S, RETRY_S};
use crate::cgroup::Burst;
use crate::loadgen::Stats;
use crate::protocol::{Call, HelloReply, StatsReply, StopReply};
use crate::LiveError;

/// One container the run controls.
pub(super) struct Container {
    pub(super) service: usize,
    pub(super) container: String,
    pub(super) agent: usize,
    /// First run second not yet filled by this container's rows.
    pub(super) next_second: u32,
    pub(super) last_limit: Option<f64>,
    /// Index of its open gap in `gaps`.
    pub(super) open_gap: Option<usize>,
}

impl Container {
    /// Under the run's control: no gap open.
    pub(super) fn controlled(&self) -> bool {
        self.open_gap.is_none()
    }
}

pub(super) struct AgentState {
    pub(super) node: String,
    pub(super) addr: String,
    pub(super) link: Option<AgentConnection>,
    /// Agent clock minus run clock, seconds (set by the first `stats` after a connect).
    pub(super) offset: Option<f64>,
    pub(super) retry_at: f64,
}

/// One second of one service, summed over its containers.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ServiceSecond {
    pub(super) mean_limit: f64,
    pub(super) limit: f64,
    pub(super) usage: f64,
    pub(super) periods: u64,
    pub(super) throttled: u64,
    pub(super) containers: u32,
}

/// One second of the whole app.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct AppSecond {
    /// Mean limits, cores: all services, group 1, group 2.
    pub(super) alloc: [f64; 3],
    pub(super) usage: f64,
    pub(super) periods: u64,
    pub(super) throttled: u64,
}

/// The state of a run between its seconds.
pub(super) struct RunState<'a> {
    pub(super) spec: &'a RunSpec,
    pub(super) agents: Vec<AgentState>,
    pub(super) containers: Vec<Container>,
    pub(super) gaps: Vec<Gap>,
    /// Per run second, per service.
    pub(super) seconds: Vec<Vec<ServiceSecond>>,
    /// Seconds already written and accounted.
    pub(super) flushed: usize,
    /// Per flushed second, over all services.
    pub(super) per_second: Vec<AppSecond>,
    pub(super) writer: RecordWriter,
    pub(super) targets: Targets,
    /// The targets in force in each minute written so far.
    pub(super) minute_targets: Vec<(u32, Targets)>,
    pub(super) minute: u32,
    pub(super) total_s: usize,
}

impl<'a> RunState<'a> {
    pub(super) fn new(
        spec: &'a RunSpec,
        agents: Vec<AgentState>,
        containers: Vec<Container>,
        writer: RecordWriter,
    ) -> RunState<'a> {
        let total_s = spec.plan.rates().len();
        let n = spec.plan.scenario.services.len();
        RunState {
            spec,
            agents,
            containers,
            gaps: Vec::new(),
            seconds: vec![vec![ServiceSecond::default(); n]; total_s + 1],
            flushed: 0,
            per_second: Vec::with_capacity(total_s),
            writer,
            targets: spec.plan.targets,
            minute_targets: Vec::new(),
            minute: 0,
            total_s,
        }
    }

    /// Starts the scalers on every agent, or on none: a failure stops those already started.
    pub(super) async fn start_everywhere(&mut self) -> Result<(), LiveError> {
        for a in 0..self.agents.len() {
            if let Err(e) = self.start(a, true).await {
                self.stop_all().await;
                return Err(LiveError::Agent {
                    node: self.agents[a].node.clone(),
                    addr: self.agents[a].addr.clone(),
                    reason: format!("start failed: {e}"),
                });
            }
        }
        Ok(())
    }

    pub(super) fn scaler_config(
        &self,
        slot: &Container,
        initial: Option<f64>,
    ) -> controller::ScalerConfig {
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
    pub(super) async fn call(
        &mut self,
        agent: usize,
        call: &Call,
    ) -> Option<Result<Value, String>> {
        let spec = self.spec;
        let link = self.agents[agent].link.as_mut()?;
        Some(link.call(&spec.token, call, spec.agent_timeout).await)
    }

    /// Starts the scalers of `agent`'s containers (those not controlled, or all).
    pub(super) async fn start(&mut self, agent: usize, all: bool) -> Result<Vec<usize>, String> {
        let picked: Vec<usize> = (0..self.containers.len())
            .filter(|&i| {
                self.containers[i].agent == agent && (all || !self.containers[i].controlled())
            })
            .collect();
        if picked.is_empty() {
            return Ok(picked);
        }
        let scalers = picked
            .iter()
            .map(|&i| {
                let s = &self.containers[i];
                let initial = if all { None } else { s.last_limit };
                (s.container.clone(), self.scaler_config(s, initial))
            })
            .collect();
        // The plan's burst, as a fraction of each container's quota (none: kernels without
        // CFS burst still run the paper's setting).
        let bursts = if self.spec.plan.burst > 0.0 {
            picked
                .iter()
                .map(|&i| {
                    (
                        self.containers[i].container.clone(),
                        Burst::Fraction(self.spec.plan.burst),
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        self.call(agent, &Call::Start { scalers, bursts })
            .await
            .ok_or_else(|| "not connected".to_string())??;
        Ok(picked)
    }

    pub(super) fn open_gap(&mut self, slot: usize, reason: &str) {
        let s = &self.containers[slot];
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
        let s = &mut self.containers[slot];
        s.open_gap = Some(self.gaps.len() - 1);
    }

    pub(super) fn close_gap(&mut self, slot: usize, now_s: u32) {
        let s = &mut self.containers[slot];
        if let Some(g) = s.open_gap.take() {
            self.gaps[g].to_s = Some(now_s.max(self.gaps[g].from_s));
        }
        s.next_second = s.next_second.max(now_s);
    }

    /// An agent stopped answering: report it once, mark its containers' gaps.
    pub(super) fn lose(&mut self, agent: usize, reason: String, elapsed: f64) {
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
        for i in 0..self.containers.len() {
            if self.containers[i].agent == agent {
                self.open_gap(i, &format!("agent lost: {reason}"));
            }
        }
    }

    /// Reconnects lost agents and restarts containers whose control ended.
    pub(super) async fn retry(&mut self, elapsed: f64) {
        let now_s = elapsed as u32;
        for a in 0..self.agents.len() {
            let needs = self
                .containers
                .iter()
                .any(|s| s.agent == a && !s.controlled());
            if !needs || elapsed < self.agents[a].retry_at {
                continue;
            }
            self.agents[a].retry_at = elapsed + RETRY_S;
            if self.agents[a].link.is_none() {
                match AgentConnection::connect(
                    &self.agents[a].addr,
                    self.spec.tls.as_ref(),
                    self.spec.agent_timeout,
                )
                .await
                {
                    Ok(link) => self.agents[a].link = Some(link),
                    Err(_) => continue,
                }
            }
            match self.start(a, false).await {
                Ok(started) => {
                    let names: Vec<String> = started
                        .iter()
                        .map(|&i| self.containers[i].container.clone())
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
    pub(super) async fn poll(&mut self, t0: Instant) {
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

    pub(super) fn ingest(&mut self, agent: usize, v: &Value, elapsed: f64) -> Result<(), String> {
        let reply: StatsReply = serde_json::from_value(v.clone())
            .map_err(|e| format!("bad stats reply (an agent of another version?): {e}"))?;
        let offset = *self.agents[agent].offset.get_or_insert(reply.now - elapsed);
        let StatsReply {
            mut containers,
            fault,
            lost,
            ..
        } = reply;
        for i in 0..self.containers.len() {
            if self.containers[i].agent != agent || !self.containers[i].controlled() {
                continue;
            }
            let Some(c) = containers.remove(&self.containers[i].container) else {
                let why = lost
                    .get(&self.containers[i].container)
                    .or(fault.as_ref())
                    .cloned()
                    .unwrap_or_else(|| "the agent no longer controls it".into());
                tracing::warn!(
                    "node {}: {} is no longer controlled at {elapsed:.0} s: {why}",
                    self.agents[agent].node,
                    self.containers[i].container
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
                let second = (computed as u32).max(self.containers[i].next_second);
                self.containers[i].next_second = second + 1;
                self.containers[i].last_limit = Some(row.limit);
                let Some(per) = self.seconds.get_mut(second as usize) else {
                    continue;
                };
                let agg = &mut per[self.containers[i].service];
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
    pub(super) fn flush(
        &mut self,
        elapsed: f64,
        lag: f64,
        load: &Mutex<Stats>,
    ) -> Result<(), LiveError> {
        let upto = ((elapsed - lag).floor().max(0.0) as usize).min(self.total_s);
        let n = self.spec.plan.scenario.services.len();
        while self.flushed < upto {
            let t = self.flushed;
            if self.writer.wants_services() {
                let requests: Vec<RequestRow> = {
                    let stats = load.lock().expect("stats lock");
                    let second = &stats.seconds[t];
                    self.spec
                        .plan
                        .scenario
                        .requests
                        .iter()
                        .enumerate()
                        .map(|(k, r)| RequestRow {
                            t: t as u32 + 1,
                            request: r.name.clone(),
                            sent: second.sent_by_kind.get(k).copied().unwrap_or(0),
                            completed: second.answered_by_kind.get(k).copied().unwrap_or(0),
                        })
                        .collect()
                };
                for row in &requests {
                    self.writer.request(row)?;
                }
            }
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
                        .containers
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
            self.per_second.push(AppSecond {
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
    pub(super) async fn minutes(
        &mut self,
        stats: &Mutex<Stats>,
        tower: &mut dyn Tower,
        elapsed: f64,
    ) -> Result<(), LiveError> {
        loop {
            let m = self.minute as usize;
            let end = (m + 1) * 60;
            if end > self.total_s || self.flushed < end || elapsed < end as f64 + MINUTE_GRACE_S {
                return Ok(());
            }
            let (row, rps_cv) = {
                let s = stats.lock().expect("stats lock");
                let secs = &s.seconds[m * 60..end];
                let sent: u64 = secs.iter().map(|x| x.sent).sum();
                let per_second: Vec<f64> = secs.iter().map(|x| x.sent as f64).collect();
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
                let sum = |f: &dyn Fn(&AppSecond) -> f64| per.iter().map(f).sum::<f64>() / 60.0;
                let row = MinuteRow {
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
                };
                (row, controller::rps_cv(&per_second))
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
                rps_cv,
                rps: row.rps,
                p99_ms: row.p99_ms,
                allocation: row.allocation,
            }) {
                self.set_targets(new, elapsed).await;
            }
            self.minute += 1;
        }
    }

    pub(super) async fn set_targets(&mut self, new: Targets, elapsed: f64) {
        self.targets = new;
        for a in 0..self.agents.len() {
            let targets: BTreeMap<String, f64> = self
                .containers
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
    pub(super) async fn stop_all(&mut self) {
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

/// Matches every service to its containers on the agents (`hello`).
pub(super) async fn discover(
    spec: &RunSpec,
) -> Result<(Vec<AgentState>, Vec<Container>), LiveError> {
    let mut agents = Vec::new();
    let mut slots = Vec::new();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, addr) in &spec.agents {
        let fail = |reason: String| LiveError::Agent {
            node: node.clone(),
            addr: addr.clone(),
            reason,
        };
        let mut link = AgentConnection::connect(addr, spec.tls.as_ref(), spec.agent_timeout)
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
                slots.push(Container {
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
