//! The agent's state: which containers it may control, which it controls with which scaler,
//! and the safety rules. Plain synchronous code, driven by the server (or by tests) with
//! [`Agent::tick`] every 100 ms and [`Agent::handle`] for each request.
//!
//! Safety: whenever control ends, for whatever reason (a `stop`, a lost coordinator, a scaler
//! that panicked, the process being told to exit), every controlled container gets its original
//! quota and period back, and the journal entry goes. Only a SIGKILL skips this; the journal
//! covers that case (see [`crate::journal`]).

use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use controller::{CpuSample, Scaler, ScalerConfig};

use crate::cgroup::{Burst, Cgroup, Quota, Root};
use crate::journal::{Entry, Journal};
use crate::protocol::{
    token_matches, Call, Code, ContainerStats, HelloReply, Request, Response, StartReply, StatRow,
    StatsReply, StopReply, UpdateReply,
};
use crate::LiveError;

/// Per-second rows kept per container between two `stats` (an hour); older ones are dropped
/// and counted.
const MAX_ROWS: usize = 3600;
/// Samples per second (the agent ticks every 100 ms).
const TICKS_PER_SECOND: u64 = 10;

struct Controlled {
    cgroup: Cgroup,
    scaler: Box<dyn Scaler>,
    second_start: Option<CpuSample>,
    ticks: u64,
    rows: VecDeque<StatRow>,
    dropped: u64,
    last: Option<CpuSample>,
    /// Core-ticks of the limits in force since `second_start`, and how many ticks.
    limit_sum: f64,
    limit_ticks: u32,
    /// Times the quota was found changed by someone else (and set back).
    drifts: u64,
}

impl Controlled {
    fn new(cgroup: Cgroup, scaler: Box<dyn Scaler>) -> Self {
        Controlled {
            cgroup,
            scaler,
            second_start: None,
            ticks: 0,
            rows: VecDeque::new(),
            dropped: 0,
            last: None,
            limit_sum: 0.0,
            limit_ticks: 0,
            drifts: 0,
        }
    }
}

/// What the metrics endpoint shows per container.
#[derive(Debug, Clone, PartialEq)]
pub struct Gauge {
    pub name: String,
    pub limit: f64,
    pub usage: f64,
    pub throttle_ratio: f64,
    /// `None` for a fixed limit.
    pub target: Option<f64>,
    /// Times the quota was found changed from outside (and set back).
    pub drifts: u64,
}

/// The agent.
pub struct Agent {
    node: String,
    token: String,
    root: Root,
    journal: Journal,
    /// Containers this agent may control: name -> group path relative to the root.
    known: BTreeMap<String, PathBuf>,
    controlled: BTreeMap<String, Controlled>,
    /// Seconds since start of the last message from the coordinator.
    last_message: f64,
    /// Control ends when the coordinator is silent this long, seconds.
    timeout: f64,
    /// Why control last ended abnormally (reported to the next request).
    fault: Option<String>,
    gauges: Vec<Gauge>,
    /// No limit above this many cores (the node's CPUs; unbounded in tests).
    ceiling: f64,
    /// Containers whose control ended on a fault since the last `start`, and why.
    lost: BTreeMap<String, String>,
    /// Times the journal could not be written.
    journal_faults: u64,
}

impl Agent {
    pub fn new(node: &str, token: &str, root: Root, journal: Journal, timeout_s: f64) -> Self {
        Agent {
            node: node.to_string(),
            token: token.to_string(),
            root,
            journal,
            known: BTreeMap::new(),
            controlled: BTreeMap::new(),
            last_message: 0.0,
            timeout: timeout_s,
            fault: None,
            gauges: Vec::new(),
            ceiling: f64::INFINITY,
            lost: BTreeMap::new(),
            journal_faults: 0,
        }
    }

    /// No scaler of this agent sets a limit above `cores` (the node's CPUs).
    pub fn set_ceiling(&mut self, cores: f64) {
        self.ceiling = cores;
    }

    /// Replaces the set of containers this agent may control (from discovery or flags).
    /// Controlled containers that are gone stop being controlled; one whose group moved (a
    /// restarted container has a new id) is restored where it was and dropped.
    pub fn set_known(&mut self, known: BTreeMap<String, PathBuf>) {
        let gone: Vec<String> = self
            .controlled
            .iter()
            .filter(|(name, c)| match known.get(*name) {
                None => true,
                Some(rel) => {
                    self.root.cpu.join(rel).canonicalize().ok().as_ref() != Some(&c.cgroup.dir)
                }
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if let Some(mut c) = self.controlled.remove(&name) {
                let _ = c.cgroup.restore();
                tracing::info!(container = %name, "no longer present here; control ended");
            }
            let _ = self.journal.remove(&name);
        }
        self.known = known;
    }

    pub fn known(&self) -> Vec<String> {
        self.known.keys().cloned().collect()
    }

    pub fn controlling(&self) -> Vec<String> {
        self.controlled.keys().cloned().collect()
    }

    pub fn gauges(&self) -> &[Gauge] {
        &self.gauges
    }

    pub fn fault(&self) -> Option<&str> {
        self.fault.as_deref()
    }

    /// One control step at `now` (seconds since start): sample every controlled container,
    /// run its scaler, and write the limits that changed, after the journal says so. Ends
    /// control if the coordinator has been silent too long or a scaler panicked; a container
    /// whose group cannot be read or written, or whose new limit the journal cannot record,
    /// is restored and reported as lost (with why) to the next `stats` and `hello`.
    pub fn tick(&mut self, now: f64) {
        if !self.controlled.is_empty() && now - self.last_message > self.timeout {
            let silent = now - self.last_message;
            self.end_control(&format!(
                "no message from the coordinator for {silent:.1} s"
            ));
            return;
        }
        let mut failed: Vec<(String, String)> = Vec::new();
        let mut panicked: Option<String> = None;
        // Phase 1: samples, decisions, drift, and the journal's notes of what will be written.
        let mut planned: Vec<(String, CpuSample, Option<Quota>)> = Vec::new();
        for (name, c) in self.controlled.iter_mut() {
            let sample = match c.cgroup.sample(now) {
                Ok(s) => s,
                Err(e) => {
                    failed.push((name.clone(), e.to_string()));
                    continue;
                }
            };
            let limit = match catch_unwind(AssertUnwindSafe(|| c.scaler.sample(&sample))) {
                Ok(l) => l,
                Err(_) => {
                    panicked = Some(name.clone());
                    break;
                }
            };
            match c.cgroup.check_drift() {
                Ok(false) => {}
                Ok(true) => {
                    c.drifts += 1;
                    tracing::warn!(container = %name, quota = ?c.cgroup.current(), "the quota was changed from outside; setting it back");
                }
                Err(e) => {
                    failed.push((name.clone(), e.to_string()));
                    continue;
                }
            }
            if !self.journal.contains(name) {
                let entry = Entry {
                    version: c.cgroup.version,
                    dir: c.cgroup.dir.clone(),
                    original: c.cgroup.original(),
                    recent: Vec::new(),
                    original_burst_us: c.cgroup.original_burst(),
                };
                if let Err(e) = self.journal.add(name, entry) {
                    // Without a journal entry a crash could strand this quota: do not write it.
                    failed.push((name.clone(), e.to_string()));
                    continue;
                }
            }
            if c.second_start.is_some() {
                // The limit in force during the 100 ms this sample closes.
                c.limit_sum += c.cgroup.current().cores();
                c.limit_ticks += 1;
            }
            let want = match c.cgroup.quota_for(limit) {
                Ok(q) => q,
                Err(e) => {
                    failed.push((name.clone(), e.to_string()));
                    continue;
                }
            };
            let write = c.cgroup.needs_write(want).then_some(want);
            if let Some(q) = write {
                self.journal.note_write(name, c.cgroup.current(), q);
            }
            planned.push((name.clone(), sample, write));
        }
        if let Some(name) = panicked {
            self.end_control(&format!("the scaler of {name} panicked"));
            return;
        }
        // Phase 2: the journal on disk first; only then the quotas.
        if planned.iter().any(|(_, _, w)| w.is_some()) {
            if let Err(e) = self.journal.save() {
                self.journal_fault(&e.to_string());
                for (name, _, w) in &planned {
                    if w.is_some() {
                        failed.push((
                            name.clone(),
                            format!("the journal cannot record its new limit: {e}"),
                        ));
                    }
                }
            }
        }
        self.gauges.clear();
        for (name, sample, write) in planned {
            if failed.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let c = self
                .controlled
                .get_mut(&name)
                .expect("planned from controlled");
            if let Some(q) = write {
                if let Err(e) = c.cgroup.write_quota(q) {
                    failed.push((name, e.to_string()));
                    continue;
                }
            }
            record_second(c, &sample);
            let (usage, ratio) = match c.last {
                Some(prev) if sample.t > prev.t => {
                    let periods = sample.nr_periods.saturating_sub(prev.nr_periods);
                    let thr = sample.nr_throttled.saturating_sub(prev.nr_throttled);
                    (
                        (sample.usage - prev.usage).max(0.0) / (sample.t - prev.t),
                        if periods > 0 {
                            thr as f64 / periods as f64
                        } else {
                            0.0
                        },
                    )
                }
                _ => (0.0, 0.0),
            };
            c.last = Some(sample);
            self.gauges.push(Gauge {
                name: name.clone(),
                limit: c.cgroup.current().cores(),
                usage,
                throttle_ratio: ratio,
                target: c.scaler.target(),
                drifts: c.drifts,
            });
        }
        for (name, reason) in failed {
            tracing::warn!(container = %name, %reason, "control of this container ended");
            if let Some(mut c) = self.controlled.remove(&name) {
                let _ = c.cgroup.restore();
            }
            if let Err(e) = self.journal.remove(&name) {
                self.journal_fault(&e.to_string());
            }
            self.lost.insert(name, reason);
        }
    }

    /// A journal that cannot be written is a fault: a crash now could strand a quota, or
    /// leave an entry that no longer matches the group.
    fn journal_fault(&mut self, why: &str) {
        tracing::error!(
            reason = why,
            "the journal of original limits cannot be written"
        );
        self.journal_faults += 1;
        self.fault = Some(format!("journal: {why}"));
    }

    /// Times the journal could not be written since the agent started.
    pub fn journal_faults(&self) -> u64 {
        self.journal_faults
    }

    /// Restores every controlled container and stops controlling; `why` is kept as the fault
    /// reported to the next request. Returns the names restored.
    pub fn end_control(&mut self, why: &str) -> Vec<String> {
        if !why.is_empty() {
            tracing::warn!(reason = why, "restoring original limits");
            self.fault = Some(why.to_string());
        }
        self.restore_all()
    }

    /// Restores every controlled container (used on stop and on exit).
    pub fn restore_all(&mut self) -> Vec<String> {
        let mut restored = Vec::new();
        for (name, mut c) in std::mem::take(&mut self.controlled) {
            match c.cgroup.restore() {
                Ok(()) => {
                    if let Err(e) = self.journal.remove(&name) {
                        self.journal_fault(&e.to_string());
                    }
                    restored.push(name);
                }
                Err(e) => {
                    tracing::error!(container = %name, error = %e, "could not restore; the journal keeps it")
                }
            }
        }
        self.gauges.clear();
        restored
    }

    /// Handles one request at `now`. Nothing changes unless the whole request is valid.
    pub fn handle(&mut self, req: Request, now: f64) -> Response {
        if !token_matches(&req.token, &self.token) {
            return Response::err(req.id, Code::BadToken, "bad token");
        }
        self.last_message = now;
        match req.call {
            Call::Hello => Response::ok(
                req.id,
                HelloReply {
                    node: self.node.clone(),
                    version: crate::protocol::VERSION,
                    containers: self.known(),
                    controlling: self.controlling(),
                    fault: self.fault.clone(),
                    lost: self.lost.clone(),
                },
            ),
            Call::Start { scalers, bursts } => self.start(req.id, scalers, bursts),
            Call::UpdateTargets { targets } => {
                for (name, t) in &targets {
                    if !self.controlled.contains_key(name) {
                        return Response::err(
                            req.id,
                            Code::UnknownContainer,
                            format!("not controlling '{name}'"),
                        );
                    }
                    if !(t.is_finite() && (0.0..=1.0).contains(t)) {
                        return Response::err(
                            req.id,
                            Code::BadTarget,
                            format!("target {t} for '{name}' is outside 0..1"),
                        );
                    }
                }
                // A scaler may refuse a target in range (K8s-CPU refuses 0): undo what was set.
                let mut done: Vec<(&String, Option<f64>)> = Vec::new();
                for (name, t) in &targets {
                    let c = self.controlled.get_mut(name).expect("checked");
                    let before = c.scaler.target();
                    if let Err(e) = c.scaler.set_target(*t) {
                        for (n, b) in done {
                            let Some(b) = b else { continue };
                            let _ = self
                                .controlled
                                .get_mut(n)
                                .expect("checked")
                                .scaler
                                .set_target(b);
                        }
                        return Response::err(req.id, Code::BadTarget, format!("'{name}': {e}"));
                    }
                    done.push((name, before));
                }
                Response::ok(
                    req.id,
                    UpdateReply {
                        updated: targets.len(),
                    },
                )
            }
            Call::Stats => {
                let mut containers = BTreeMap::new();
                for (name, c) in self.controlled.iter_mut() {
                    containers.insert(
                        name.clone(),
                        ContainerStats {
                            limit: Some(c.cgroup.current().cores()).filter(|l| l.is_finite()),
                            target: c.scaler.target(),
                            rows: c.rows.drain(..).collect(),
                            dropped: std::mem::take(&mut c.dropped),
                        },
                    );
                }
                Response::ok(
                    req.id,
                    StatsReply {
                        now,
                        containers,
                        fault: self.fault.clone(),
                        lost: self.lost.clone(),
                    },
                )
            }
            Call::Stop => {
                let restored = self.end_control("");
                Response::ok(req.id, StopReply { restored })
            }
        }
    }

    /// Controls a known container with a scaler built elsewhere (tests inject faulty ones).
    #[doc(hidden)]
    pub fn control_with(&mut self, name: &str, scaler: Box<dyn Scaler>) -> Result<(), LiveError> {
        let rel = self
            .known
            .get(name)
            .ok_or_else(|| LiveError::Config(format!("unknown container '{name}'")))?;
        let cgroup = Cgroup::open(name, &self.root, rel)?;
        self.controlled
            .insert(name.to_string(), Controlled::new(cgroup, scaler));
        Ok(())
    }

    fn start(
        &mut self,
        id: u64,
        scalers: BTreeMap<String, ScalerConfig>,
        bursts: BTreeMap<String, Burst>,
    ) -> Response {
        // Validate everything before touching anything.
        if let Some(name) = bursts.keys().find(|n| !scalers.contains_key(*n)) {
            return Response::err(
                id,
                Code::BadConfig,
                format!("a burst for '{name}', which this start gives no scaler"),
            );
        }
        for (name, b) in &bursts {
            if let Err(e) = b.validate() {
                return Response::err(id, Code::BadConfig, format!("'{name}': {e}"));
            }
        }
        for (name, config) in &scalers {
            if !self.known.contains_key(name) {
                return Response::err(
                    id,
                    Code::UnknownContainer,
                    format!(
                        "no container '{name}' on this node (known: {})",
                        self.known().join(", ")
                    ),
                );
            }
            if let Err(e) = config.validate() {
                return Response::err(id, Code::BadConfig, format!("'{name}': {e}"));
            }
        }
        let mut opened = Vec::new();
        for name in scalers.keys() {
            if self.controlled.contains_key(name) {
                continue;
            }
            match Cgroup::open(name, &self.root, &self.known[name]) {
                Ok(g) => opened.push((name.clone(), g)),
                Err(e) => return Response::err(id, Code::BadConfig, format!("'{name}': {e}")),
            }
        }
        for name in bursts.keys() {
            let supported = match self.controlled.get(name) {
                Some(c) => c.cgroup.supports_burst(),
                None => opened.iter().any(|(n, g)| n == name && g.supports_burst()),
            };
            if !supported {
                return Response::err(
                    id,
                    Code::BadConfig,
                    format!("'{name}': this kernel has no CFS burst (cpu.cfs_burst_us / cpu.max.burst, Linux 5.14+); start it without a burst"),
                );
            }
        }
        for (name, cgroup) in opened {
            let scaler = scalers[&name]
                .build_with_ceiling(self.ceiling)
                .expect("validated");
            self.controlled
                .insert(name, Controlled::new(cgroup, scaler));
        }
        // A container already controlled gets the new scaler (its cgroup and journal entry stay).
        for (name, config) in &scalers {
            let c = self
                .controlled
                .get_mut(name)
                .expect("opened above or before");
            if c.ticks > 0 {
                c.scaler = config.build_with_ceiling(self.ceiling).expect("validated");
            }
            // Without a burst in this start, a container that had one gets its own back.
            let burst = match bursts.get(name) {
                Some(b) => Some(*b),
                None => c.cgroup.original_burst().map(Burst::Micros),
            };
            c.cgroup
                .set_burst(burst)
                .expect("validated, and the kernel has the file");
        }
        self.fault = None;
        for name in scalers.keys() {
            self.lost.remove(name);
        }
        Response::ok(
            id,
            StartReply {
                controlling: self.controlling(),
            },
        )
    }
}

fn record_second(c: &mut Controlled, sample: &CpuSample) {
    c.ticks += 1;
    let start = *c.second_start.get_or_insert(*sample);
    if c.ticks.is_multiple_of(TICKS_PER_SECOND) && sample.t > start.t {
        if c.rows.len() == MAX_ROWS {
            c.rows.pop_front();
            c.dropped += 1;
        }
        c.rows.push_back(StatRow {
            t: sample.t,
            limit: c.cgroup.current().cores(),
            mean_limit: if c.limit_ticks > 0 {
                c.limit_sum / c.limit_ticks as f64
            } else {
                c.cgroup.current().cores()
            },
            usage: (sample.usage - start.usage).max(0.0) / (sample.t - start.t),
            nr_periods: sample.nr_periods.saturating_sub(start.nr_periods),
            nr_throttled: sample.nr_throttled.saturating_sub(start.nr_throttled),
        });
        c.second_start = Some(*sample);
        c.limit_sum = 0.0;
        c.limit_ticks = 0;
    }
}

/// Reads the token from a file (trimmed) or takes it as given; refuses an empty one.
pub fn load_token(
    file: Option<&std::path::Path>,
    value: Option<String>,
) -> Result<String, LiveError> {
    let token = match (file, value) {
        (Some(f), _) => std::fs::read_to_string(f)
            .map_err(|e| LiveError::Config(format!("{}: cannot read the token: {e}", f.display())))?
            .trim()
            .to_string(),
        (None, Some(v)) => v.trim().to_string(),
        (None, None) => {
            return Err(LiveError::Config(
                "no token: no token file given and AUTOTHROTTLE_TOKEN is not set".into(),
            ))
        }
    };
    if token.is_empty() {
        return Err(LiveError::Config("the token is empty".into()));
    }
    Ok(token)
}
