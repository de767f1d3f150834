//! The validated, compiled form of a scenario: indices instead of names, call trees expanded
//! per request type, distributions ready to sample.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::{
    CfsPeriods, Dist, DistSpec, HttpDef, LiveDef, PeriodicDef, RuntimeDef, ScenarioError,
    ScenarioFile, Scheduler,
};

/// The built-in scenarios.
pub const BUILTIN: [&str; 4] = [
    "hotel-reservation",
    "social-network",
    "train-ticket",
    "demo",
];

/// Expanded call trees larger than this are refused (a call graph that fans out exponentially
/// is almost certainly a mistake, and would make every request enormous).
const MAX_TREE: usize = 10_000;
/// Deepest call tree a request may have (real ones are under 20 deep).
const MAX_DEPTH: usize = 100;
/// Most services a scenario may have (the paper's largest app has 68).
pub const MAX_SERVICES: usize = 10_000;
/// Most call definitions a scenario may have.
const MAX_CALL_DEFS: usize = 100_000;

/// A validated application model.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// Where it was loaded from (a path or `builtin:NAME`).
    pub source: String,
    pub slo_ms: f64,
    pub multiplier: f64,
    pub constant_rps: Option<u32>,
    pub aggregate_rps: f64,
    pub nodes: Vec<(String, f64)>,
    /// Per node: its CPUs if it is scheduled per CPU ([`Scheduler::PerCpu`]), else `None`.
    pub node_cpus: Vec<Option<usize>>,
    /// Per node: what a physical core's second busy hardware thread adds, if the node's
    /// cores are SMT threads ([`crate::schema::NodeDef::smt_yield`]).
    pub node_smt: Vec<Option<f64>>,
    /// Whether every container's CFS periods begin at the same moments
    /// ([`CfsPeriods::Aligned`]).
    pub aligned_periods: bool,
    pub services: Vec<Service>,
    pub requests: Vec<RequestType>,
    pub network_delay: Dist,
    /// The file as written, for run records.
    pub file: ScenarioFile,
}

/// A managed container.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// Index into [`Scenario::nodes`].
    pub node: usize,
    pub threads: u32,
    /// Tower target group (1 or 2).
    pub group: u8,
    /// The limit it starts with, in cores.
    pub initial_limit: f64,
    /// Its garbage collector, compiled for the simulator.
    pub runtime: Option<Runtime>,
    /// CPU it uses whatever its requests, cores.
    pub background: f64,
    /// Work it does on timers.
    pub periodic: Vec<Periodic>,
}

/// Work on a timer, as the simulator runs it: every `every` CFS periods, `work` core-seconds
/// on `threads` threads at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Periodic {
    pub every: u32,
    pub work: f64,
    pub threads: u32,
}

/// A collector as the simulator runs it: every `trigger_cpu` core-seconds of request CPU, a
/// collection of `work` core-seconds on up to `threads` threads (at least `min_threads` of
/// them even when the calls are busy: Go's dedicated mark workers). With `stop_the_world`,
/// no call runs until the collection is done. With `follows`, both scale with the load (a
/// heap that holds something per connection: [`crate::schema::RuntimeDef::Go`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Runtime {
    pub trigger_cpu: f64,
    pub work: f64,
    pub threads: u32,
    pub min_threads: u32,
    pub stop_the_world: bool,
    pub follows: Option<HeapFollows>,
}

/// A live heap that grows with the load up to its full size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeapFollows {
    /// The load (users, or requests a second) at and above which the heap is full.
    pub full_at: f64,
    /// The full live heap, MB.
    pub live_mb: f64,
    /// Go's GOGC, percent.
    pub gogc: f64,
}

impl HeapFollows {
    /// (trigger, work) as shares of the full heap's, at load `load`: the mark work follows
    /// the live heap, the allocation between cycles follows Go's pacer ([`go_cycle_mb`]).
    pub fn scale(&self, load: f64) -> (f64, f64) {
        let f = (load / self.full_at).clamp(0.0, 1.0);
        let trigger =
            go_cycle_mb(f * self.live_mb, self.gogc) / go_cycle_mb(self.live_mb, self.gogc);
        (trigger, f)
    }
}

/// MB a Go program allocates between two collections with `live_mb` MB live: GOGC percent of
/// the live heap, except that the heap goal (the live heap plus that) is never under 4 MB
/// (the Go GC guide: "the heap goal has a minimum of 4 MiB"), so a program with 1 MB live
/// collects every 3 MB. Measured here (Go 1.19, a gRPC server calling another at about 1,000
/// requests a second, `GODEBUG=gctrace=1`): 0.9 MB live, a cycle at every 3-4 MB of heap.
pub fn go_cycle_mb(live_mb: f64, gogc: f64) -> f64 {
    (live_mb * gogc / 100.0).max(GO_MIN_HEAP_MB - live_mb)
}

/// Shortest and longest timer of periodic work, in 100-ms CFS periods (0.1 s to a day).
const PERIODIC_EVERY: std::ops::RangeInclusive<u32> = 1..=864_000;

impl Periodic {
    /// Compiles a timer's work for a container on a node of `cores` cores.
    fn compile(def: &PeriodicDef, cores: f64) -> Result<Periodic, String> {
        let every = (def.every_s * 10.0).round();
        if !(def.every_s.is_finite()
            && (every - def.every_s * 10.0).abs() < 1e-6
            && every >= *PERIODIC_EVERY.start() as f64
            && every <= *PERIODIC_EVERY.end() as f64)
        {
            return Err(format!(
                "every_s must be a whole number of 0.1-s CFS periods from 0.1 s to a day, got {}",
                def.every_s
            ));
        }
        if !(def.cpu_ms.is_finite() && def.cpu_ms > 0.0) {
            return Err(format!(
                "cpu_ms must be a positive number, got {}",
                def.cpu_ms
            ));
        }
        let most = (cores.ceil() as u32).max(1);
        if !(1..=most).contains(&def.threads) {
            return Err(format!(
                "threads must be between 1 and the node's {most} cores, got {}",
                def.threads
            ));
        }
        Ok(Periodic {
            every: every as u32,
            work: def.cpu_ms / 1000.0,
            threads: def.threads,
        })
    }

    /// The share of a core it takes on the mean.
    pub fn cores(&self) -> f64 {
        self.work / (self.every as f64 * 0.1)
    }
}

impl Runtime {
    /// The share of the container's CPU its collections take, at any load: collection work
    /// over request CPU plus collection work.
    pub fn cpu_share(&self) -> f64 {
        self.work / (self.trigger_cpu + self.work)
    }

    /// Compiles a runtime definition for a container on a node of `cores` cores.
    fn compile(def: &RuntimeDef, cores: f64) -> Result<Runtime, (String, String)> {
        let positive = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err((
                    field.to_string(),
                    format!("must be a positive number, got {v}"),
                ))
            }
        };
        let threads = |field: &str, v: Option<u32>, default: u32| match v {
            Some(0) => Err((field.to_string(), "must be at least 1".to_string())),
            Some(n) if n > MAX_RUNTIME_THREADS => Err((
                field.to_string(),
                format!("must be at most {MAX_RUNTIME_THREADS}, got {n}"),
            )),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let node = (cores.ceil() as u32).clamp(1, MAX_RUNTIME_THREADS);
        match *def {
            RuntimeDef::Go {
                alloc_mb_per_cpu_s,
                live_heap_mb,
                gogc,
                mark_ms_per_mb,
                gomaxprocs,
                full_heap_users,
            } => {
                positive("alloc_mb_per_cpu_s", alloc_mb_per_cpu_s)?;
                if let Some(u) = full_heap_users {
                    positive("full_heap_users", u)?;
                }
                positive("live_heap_mb", live_heap_mb)?;
                positive("gogc", gogc)?;
                positive("mark_ms_per_mb", mark_ms_per_mb)?;
                let procs = threads("gomaxprocs", gomaxprocs, node)?;
                let cycle_mb = go_cycle_mb(live_heap_mb, gogc);
                Ok(Runtime {
                    trigger_cpu: cycle_mb / alloc_mb_per_cpu_s,
                    work: live_heap_mb * mark_ms_per_mb / 1000.0,
                    threads: procs,
                    // GC background utilisation goal: 25% of the Ps, rounded.
                    min_threads: ((procs as f64) * 0.25).round().max(1.0) as u32,
                    stop_the_world: false,
                    follows: full_heap_users.map(|full_at| HeapFollows {
                        full_at,
                        live_mb: live_heap_mb,
                        gogc,
                    }),
                })
            }
            RuntimeDef::Jvm {
                alloc_mb_per_cpu_s,
                young_mb,
                pause_cpu_ms,
                gc_threads,
            } => {
                positive("alloc_mb_per_cpu_s", alloc_mb_per_cpu_s)?;
                positive("young_mb", young_mb)?;
                positive("pause_cpu_ms", pause_cpu_ms)?;
                let ergonomic = if node <= 8 {
                    node
                } else {
                    8 + (node - 8) * 5 / 8
                };
                let n = threads("gc_threads", gc_threads, ergonomic)?;
                Ok(Runtime {
                    trigger_cpu: young_mb / alloc_mb_per_cpu_s,
                    work: pause_cpu_ms / 1000.0,
                    threads: n,
                    min_threads: n,
                    stop_the_world: true,
                    follows: None,
                })
            }
        }
    }
}

/// Go's minimum heap goal, MB.
const GO_MIN_HEAP_MB: f64 = 4.0;
/// More CPUs than this on a node scheduled per CPU is a typo, not a machine.
const MAX_CPUS: u32 = 1024;
/// More collector threads than this is a typo, not a machine.
const MAX_RUNTIME_THREADS: u32 = 1024;
/// Calls split over more threads than this are refused (the simulator counts a call's
/// segments in a byte).
const MAX_PARALLELISM: u32 = 255;

/// A request type with its call tree expanded: `nodes[0]` is the root.
#[derive(Debug, Clone)]
pub struct RequestType {
    pub name: String,
    pub weight: f64,
    pub nodes: Vec<CallNode>,
}

impl RequestType {
    /// Per node of the expanded tree, how often it runs per request: the product of the call
    /// probabilities on its path from the root (parents come before their children).
    pub fn reach(&self) -> Vec<f64> {
        let mut reach = vec![0.0; self.nodes.len()];
        reach[0] = self.nodes[0].probability;
        for (i, n) in self.nodes.iter().enumerate() {
            for &c in n.stages.iter().flatten() {
                reach[c as usize] = reach[i] * self.nodes[c as usize].probability;
            }
        }
        reach
    }
}

/// One call in an expanded tree.
#[derive(Debug, Clone)]
pub struct CallNode {
    /// The call definition's name.
    pub call: String,
    /// Index into [`Scenario::services`].
    pub service: usize,
    pub cpu: Dist,
    pub cpu_after: Option<Dist>,
    /// Children by index into the request's `nodes`, as sequential stages of parallel calls.
    pub stages: Vec<Vec<u32>>,
    pub probability: f64,
    /// The parent does not wait for this call.
    pub detached: bool,
    /// Threads its CPU runs on at once.
    pub parallelism: u32,
    /// Mean CPU (before + after), in seconds: for calibration reports.
    pub mean_cpu: f64,
}

impl Scenario {
    /// A built-in scenario by name.
    pub fn builtin(name: &str) -> Result<Scenario, ScenarioError> {
        let text = match name {
            "hotel-reservation" => include_str!("../hotel-reservation.toml"),
            "social-network" => include_str!("../social-network.toml"),
            "train-ticket" => include_str!("../train-ticket.toml"),
            "demo" => include_str!("../demo.toml"),
            _ => return Err(ScenarioError::UnknownBuiltin(name.to_string())),
        };
        let mut s = Scenario::parse(&format!("builtin:{name}"), text)?;
        s.source = format!("builtin:{name}");
        Ok(s)
    }

    /// A built-in name or a path to a TOML file.
    pub fn load(spec: &str) -> Result<Scenario, ScenarioError> {
        match Scenario::builtin(spec) {
            Err(ScenarioError::UnknownBuiltin(_))
                if spec.ends_with(".toml") || spec.contains('/') || Path::new(spec).exists() =>
            {
                Scenario::read(Path::new(spec))
            }
            other => other,
        }
    }

    /// The workload `spec` names for this app: a trace [`traces::Trace::load`] knows, or
    /// `constant`, the app's constant workload (its `constant_rps` is in requests per second
    /// of the app, so the multiplier is undone here and reapplied when the trace is
    /// scheduled).
    pub fn workload(&self, spec: &str) -> Result<traces::Trace, ScenarioError> {
        if spec == "constant" {
            let rps = self
                .constant_rps
                .ok_or_else(|| ScenarioError::NoConstant(self.name.clone()))?;
            let per = (rps as f64 / self.multiplier).round() as u32;
            let mut t = traces::Trace::constant(per, 3600);
            t.name = "constant".into();
            return Ok(t);
        }
        Ok(traces::Trace::load(spec)?)
    }

    /// Reads and validates a scenario file.
    pub fn read(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ScenarioError::Read {
            file: path.to_path_buf(),
            cause,
        })?;
        Scenario::parse(&path.display().to_string(), &text)
    }

    /// Parses and validates scenario text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let de = toml::Deserializer::new(text);
        let parsed: ScenarioFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let (line, column) = inner
                .span()
                .map(|s| line_col(text, s.start))
                .unwrap_or((0, 0));
            ScenarioError::Syntax {
                file: file.to_string(),
                line,
                column,
                path: if path == "." {
                    "(top level)".into()
                } else {
                    path
                },
                message: inner.message().trim().to_string(),
            }
        })?;
        Scenario::compile(file, parsed)
    }

    /// Validates an already-parsed file (`source` names it in errors) and compiles it into
    /// the model the simulator runs.
    pub fn compile(source: &str, f: ScenarioFile) -> Result<Scenario, ScenarioError> {
        let check = Check { source };
        check.globals(&f)?;
        let node_index = check.nodes(&f)?;
        let (service_index, services) = check.services(&f, &node_index)?;
        check.calls(&f, &service_index)?;
        let requests = check.requests(&f, &service_index)?;
        if let Some(live) = &f.live {
            check.live(&f, live)?;
        }
        Ok(Scenario {
            name: f.name.clone(),
            description: f.description.clone(),
            source: source.to_string(),
            slo_ms: f.slo_ms,
            multiplier: f.multiplier,
            constant_rps: f.constant_rps,
            aggregate_rps: f.aggregate_rps,
            nodes: f.nodes.iter().map(|n| (n.name.clone(), n.cores)).collect(),
            node_cpus: f
                .nodes
                .iter()
                .map(|n| (n.scheduler == Scheduler::PerCpu).then_some(n.cores as usize))
                .collect(),
            node_smt: f.nodes.iter().map(|n| n.smt_yield).collect(),
            aligned_periods: f.cfs_periods == CfsPeriods::Aligned,
            services,
            requests,
            network_delay: f.network_delay.build(),
            file: f,
        })
    }

    /// A fingerprint of the model (every field as validated, not the file's comments or
    /// layout): two runs with the same digest ran the same application, so a resumed sweep
    /// can tell a run of an older version of a built-in scenario from a current one.
    pub fn digest(&self) -> String {
        // How a live load sends requests is not part of the model.
        let mut model = self.file.clone();
        model.live = None;
        for r in &mut model.requests {
            r.http = None;
        }
        let text = toml::to_string(&model).unwrap_or_default();
        // FNV-1a, 64 bits: stable across Rust versions, unlike `DefaultHasher`.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    /// The same app with other request weights (the types not named keep theirs): a
    /// measurement run's mix, or the mix a record saw. Weights must be positive, as in a file.
    pub fn with_weights(&self, weights: &[(String, f64)]) -> Result<Scenario, ScenarioError> {
        let mut file = self.file.clone();
        for (name, weight) in weights {
            let Some(r) = file.requests.iter_mut().find(|r| &r.name == name) else {
                return Err(ScenarioError::Invalid {
                    file: self.source.clone(),
                    path: "requests".into(),
                    reason: format!(
                        "no request type '{name}' (it has: {})",
                        self.requests
                            .iter()
                            .map(|r| r.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            };
            r.weight = *weight;
        }
        Scenario::compile(&self.source, file)
    }

    /// The request mixes a calibration load cycles through ([`mix_phase`]): the scenario's own
    /// weights, then each request type in turn taking half of the requests (the others keep
    /// their proportions in the other half); a mix equal to an earlier one is left out.
    ///
    /// Why: under one fixed mix every request type's count rises and falls with the load in
    /// the same proportions, so a fit of each service's CPU against the counts of each type
    /// (`sim calibrate`) can split the CPU between types only by the counts' random noise. A
    /// load that moves each type's share on its own makes every type's cost show.
    ///
    /// ```
    /// let demo = scenarios::Scenario::builtin("demo").unwrap();
    /// // get 9, put 1: the usual mix, then half and half (what either type taking half gives).
    /// assert_eq!(demo.mix_phases(), vec![vec![9.0, 1.0], vec![1.0, 1.0]]);
    /// ```
    pub fn mix_phases(&self) -> Vec<Vec<f64>> {
        mix_phases(&self.requests.iter().map(|r| r.weight).collect::<Vec<_>>())
    }

    /// Index of a service by name.
    pub fn service(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.name == name)
    }

    /// Expected CPU per request, in core-seconds, for each service (averaged over the request
    /// mix, counting call probabilities): what the calibration notes in the files reason about.
    pub fn mean_cpu_per_request(&self) -> Vec<f64> {
        let total: f64 = self.requests.iter().map(|r| r.weight).sum();
        let mut per_service = vec![0.0; self.services.len()];
        for r in &self.requests {
            let share = r.weight / total;
            for (n, reach) in r.nodes.iter().zip(r.reach()) {
                per_service[n.service] += share * reach * n.mean_cpu;
            }
        }
        per_service
    }
}

/// The checks of [`Scenario::compile`], one method per part of the file; every error names the
/// file and the field.
struct Check<'a> {
    source: &'a str,
}

impl Check<'_> {
    fn invalid(&self, path: String, reason: String) -> ScenarioError {
        ScenarioError::Invalid {
            file: self.source.to_string(),
            path,
            reason,
        }
    }

    fn positive(&self, path: &str, v: f64) -> Result<(), ScenarioError> {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(self.invalid(path.into(), format!("must be a positive number, got {v}")))
        }
    }

    fn globals(&self, f: &ScenarioFile) -> Result<(), ScenarioError> {
        self.positive("slo_ms", f.slo_ms)?;
        self.positive("multiplier", f.multiplier)?;
        self.positive("aggregate_rps", f.aggregate_rps)?;
        if let Some(l) = f.initial_limit {
            self.positive("initial_limit", l)?;
        }
        f.network_delay
            .check(true)
            .map_err(|r| self.invalid("network_delay".into(), r))
    }

    /// Node name -> index.
    fn nodes<'f>(&self, f: &'f ScenarioFile) -> Result<HashMap<&'f str, usize>, ScenarioError> {
        if f.nodes.is_empty() {
            return Err(self.invalid("nodes".into(), "no nodes".into()));
        }
        let mut node_index = HashMap::new();
        for (i, n) in f.nodes.iter().enumerate() {
            if node_index.insert(n.name.as_str(), i).is_some() {
                return Err(self.invalid(
                    format!("nodes[{i}].name"),
                    format!("duplicate node '{}'", n.name),
                ));
            }
            self.positive(&format!("nodes[{i}].cores"), n.cores)?;
            if n.scheduler == Scheduler::PerCpu
                && !(n.cores.fract() == 0.0 && (1.0..=MAX_CPUS as f64).contains(&n.cores))
            {
                return Err(self.invalid(
                    format!("nodes[{i}].cores"),
                    format!(
                        "{}: a node scheduled per CPU needs a whole number of CPUs, 1 to {MAX_CPUS}",
                        n.cores
                    ),
                ));
            }
            if let Some(y) = n.smt_yield {
                let reason = if !(0.0..=1.0).contains(&y) {
                    Some(format!("{y}: must be from 0 to 1"))
                } else if n.scheduler == Scheduler::PerCpu {
                    Some("needs processor sharing: per-CPU nodes have no SMT model".into())
                } else if n.cores.fract() != 0.0 || n.cores % 2.0 != 0.0 {
                    Some(format!(
                        "needs an even whole number of cores (two threads a core), got {}",
                        n.cores
                    ))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Err(self.invalid(format!("nodes[{i}].smt_yield"), reason));
                }
            }
            if let Some(a) = &n.agent {
                let ok = a
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !ok {
                    return Err(self.invalid(
                        format!("nodes[{i}].agent"),
                        format!("'{a}' is not host:port"),
                    ));
                }
            }
        }
        Ok(node_index)
    }

    /// Service name -> index, and the compiled services.
    #[allow(clippy::type_complexity)]
    fn services<'f>(
        &self,
        f: &'f ScenarioFile,
        node_index: &HashMap<&str, usize>,
    ) -> Result<(HashMap<&'f str, usize>, Vec<Service>), ScenarioError> {
        if f.services.is_empty() {
            return Err(self.invalid("services".into(), "no services".into()));
        }
        if f.services.len() > MAX_SERVICES {
            return Err(self.invalid(
                "services".into(),
                format!("{} services; at most {MAX_SERVICES}", f.services.len()),
            ));
        }
        let mut service_index = HashMap::new();
        let mut services = Vec::new();
        for (i, s) in f.services.iter().enumerate() {
            if service_index.insert(s.name.as_str(), i).is_some() {
                return Err(self.invalid(
                    format!("services[{i}].name"),
                    format!("duplicate service '{}'", s.name),
                ));
            }
            let node = *node_index.get(s.node.as_str()).ok_or_else(|| {
                self.invalid(
                    format!("services[{i}].node"),
                    format!("unknown node '{}'", s.node),
                )
            })?;
            let cores = f.nodes[node].cores;
            let threads = s.threads.unwrap_or(cores.ceil() as u32);
            if threads == 0 {
                return Err(self.invalid(
                    format!("services[{i}].threads"),
                    "must be at least 1".into(),
                ));
            }
            if s.group != 1 && s.group != 2 {
                return Err(self.invalid(
                    format!("services[{i}].group"),
                    format!("must be 1 (CPU-heavy) or 2, got {}", s.group),
                ));
            }
            let runtime = s
                .runtime
                .as_ref()
                .map(|r| Runtime::compile(r, cores))
                .transpose()
                .map_err(|(field, reason)| {
                    self.invalid(format!("services[{i}].runtime.{field}"), reason)
                })?;
            if !(s.background_cores.is_finite() && (0.0..=cores).contains(&s.background_cores)) {
                return Err(self.invalid(
                    format!("services[{i}].background_cores"),
                    format!(
                        "must be between 0 and the node's {cores} cores, got {}",
                        s.background_cores
                    ),
                ));
            }
            let periodic = s
                .periodic
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    Periodic::compile(p, cores)
                        .map_err(|e| self.invalid(format!("services[{i}].periodic[{k}]"), e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            services.push(Service {
                name: s.name.clone(),
                node,
                threads,
                group: s.group,
                initial_limit: f.initial_limit.unwrap_or(cores),
                runtime,
                background: s.background_cores,
                periodic,
            });
        }
        Ok((service_index, services))
    }

    fn calls(
        &self,
        f: &ScenarioFile,
        service_index: &HashMap<&str, usize>,
    ) -> Result<(), ScenarioError> {
        if f.calls.len() > MAX_CALL_DEFS {
            return Err(self.invalid(
                "calls".into(),
                format!("{} calls; at most {MAX_CALL_DEFS}", f.calls.len()),
            ));
        }
        for (name, c) in &f.calls {
            let at = format!("calls.\"{name}\"");
            if !service_index.contains_key(c.service.as_str()) {
                return Err(self.invalid(
                    format!("{at}.service"),
                    format!("unknown service '{}'", c.service),
                ));
            }
            c.cpu
                .check(false)
                .map_err(|r| self.invalid(format!("{at}.cpu"), r))?;
            if let Some(after) = &c.cpu_after {
                after
                    .check(false)
                    .map_err(|r| self.invalid(format!("{at}.cpu_after"), r))?;
            }
            if !(c.probability > 0.0 && c.probability <= 1.0) {
                return Err(self.invalid(
                    format!("{at}.probability"),
                    format!("must be within (0, 1], got {}", c.probability),
                ));
            }
            if c.parallelism == 0 || c.parallelism > MAX_PARALLELISM {
                return Err(self.invalid(
                    format!("{at}.parallelism"),
                    format!(
                        "must be within 1..={MAX_PARALLELISM}, got {}",
                        c.parallelism
                    ),
                ));
            }
            for (si, stage) in c.calls.iter().enumerate() {
                if stage.is_empty() {
                    return Err(self.invalid(format!("{at}.calls[{si}]"), "empty stage".into()));
                }
                for (ci, child) in stage.iter().enumerate() {
                    if !f.calls.contains_key(child) {
                        return Err(self.invalid(
                            format!("{at}.calls[{si}][{ci}]"),
                            format!("unknown call '{child}'"),
                        ));
                    }
                }
            }
        }
        find_cycle(f).map_err(|(path, reason)| self.invalid(path, reason))
    }

    fn requests(
        &self,
        f: &ScenarioFile,
        service_index: &HashMap<&str, usize>,
    ) -> Result<Vec<RequestType>, ScenarioError> {
        if f.requests.is_empty() {
            return Err(self.invalid("requests".into(), "the request mix is empty".into()));
        }
        let mut names = HashSet::new();
        let mut requests = Vec::new();
        for (i, r) in f.requests.iter().enumerate() {
            if !names.insert(r.name.as_str()) {
                return Err(self.invalid(
                    format!("requests[{i}].name"),
                    format!("duplicate request '{}'", r.name),
                ));
            }
            self.positive(&format!("requests[{i}].weight"), r.weight)?;
            if let Some(h) = &r.http {
                self.http(&format!("requests[{i}].http"), h)?;
            }
            if !f.calls.contains_key(&r.call) {
                return Err(self.invalid(
                    format!("requests[{i}].call"),
                    format!("unknown call '{}'", r.call),
                ));
            }
            let mut nodes = Vec::new();
            expand(f, service_index, &r.call, 1, &mut nodes)
                .map_err(|reason| self.invalid(format!("requests[{i}].call"), reason))?;
            requests.push(RequestType {
                name: r.name.clone(),
                weight: r.weight,
                nodes,
            });
        }
        Ok(requests)
    }
}

impl Check<'_> {
    fn http(&self, at: &str, h: &HttpDef) -> Result<(), ScenarioError> {
        const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];
        if !METHODS.contains(&h.method.as_str()) {
            return Err(self.invalid(
                format!("{at}.method"),
                format!("'{}' is not one of {}", h.method, METHODS.join(", ")),
            ));
        }
        if !h.path.starts_with('/') {
            return Err(self.invalid(
                format!("{at}.path"),
                format!("'{}' must start with '/'", h.path),
            ));
        }
        if h.body.is_some() && !h.form.is_empty() {
            return Err(self.invalid(
                format!("{at}.form"),
                "a form and a body: the form is the body".to_string(),
            ));
        }
        if h.content_type.is_some() && h.body.is_none() {
            return Err(self.invalid(
                format!("{at}.content_type"),
                "a content type without a body".to_string(),
            ));
        }
        for (name, pointer) in &h.capture {
            if !(pointer.is_empty() || pointer.starts_with('/')) {
                return Err(self.invalid(
                    format!("{at}.capture.{name}"),
                    format!("'{pointer}' is not a JSON pointer (\"/data/token\", \"/items/0/id\")"),
                ));
            }
        }
        for name in h.headers.keys() {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(
                    self.invalid(format!("{at}.headers"), format!("bad header name '{name}'"))
                );
            }
        }
        Ok(())
    }

    /// The live load's flows: known request types with `http`, and the same mix as the weights.
    fn live(&self, f: &ScenarioFile, live: &LiveDef) -> Result<(), ScenarioError> {
        for (i, step) in live.init.iter().enumerate() {
            self.http(&format!("live.init[{i}].http"), &step.http)?;
        }
        if !(live.setup_reuse_s.is_finite() && live.setup_reuse_s >= 0.0) {
            return Err(self.invalid(
                "live.setup_reuse_s".into(),
                format!(
                    "must be a non-negative number of seconds, got {}",
                    live.setup_reuse_s
                ),
            ));
        }
        let known = |at: String, name: &str| -> Result<(), ScenarioError> {
            match f.requests.iter().find(|r| r.name == name) {
                None => Err(self.invalid(at, format!("unknown request type '{name}'"))),
                Some(r) if r.http.is_none() => Err(self.invalid(
                    at,
                    format!("request type '{name}' has no `http`, so it cannot be sent"),
                )),
                Some(_) => Ok(()),
            }
        };
        for (i, name) in live.setup.iter().enumerate() {
            known(format!("live.setup[{i}]"), name)?;
        }
        if live.flows.is_empty() {
            if !live.setup.is_empty() {
                return Err(self.invalid(
                    "live.setup".into(),
                    "a set-up without flows: users would send the mix regardless".into(),
                ));
            }
            return Ok(());
        }
        let mut counts: HashMap<&str, f64> = HashMap::new();
        let total_weight: f64 = live.flows.iter().map(|fl| fl.weight).sum();
        for (i, flow) in live.flows.iter().enumerate() {
            self.positive(&format!("live.flows[{i}].weight"), flow.weight)?;
            if flow.steps.is_empty() {
                return Err(self.invalid(format!("live.flows[{i}].steps"), "no steps".into()));
            }
            for (j, name) in flow.steps.iter().enumerate() {
                known(format!("live.flows[{i}].steps[{j}]"), name)?;
                *counts.entry(name.as_str()).or_default() += flow.weight / total_weight;
            }
        }
        // The simulator sends the weights' mix; the flows must send the same one.
        let in_flows: f64 = counts.values().sum();
        let weights: f64 = f
            .requests
            .iter()
            .filter(|r| counts.contains_key(r.name.as_str()))
            .map(|r| r.weight)
            .sum();
        for (i, r) in f.requests.iter().enumerate() {
            match counts.get(r.name.as_str()) {
                Some(c) => {
                    let (flow_share, weight_share) = (c / in_flows, r.weight / weights);
                    if (flow_share - weight_share).abs() > 0.02 * flow_share {
                        return Err(self.invalid(
                            format!("requests[{i}].weight"),
                            format!(
                                "'{}' is {:.2}% of the requests the flows send but {:.2}% of the weights \
                                 among the flows' request types (they must agree within 2%)",
                                r.name,
                                100.0 * flow_share,
                                100.0 * weight_share
                            ),
                        ));
                    }
                }
                None if live.setup.contains(&r.name) => {}
                None => {
                    return Err(self.invalid(
                        format!("requests[{i}]"),
                        format!(
                            "'{}' is in no flow and not in the set-up: a live load never sends it",
                            r.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
    (line, column)
}

/// Depth-first search over call names; reports the first cycle with its path.
/// Depth-first search for a call cycle, with an explicit stack (a chain of calls as deep as
/// the file likes cannot overflow the thread's stack).
fn find_cycle(f: &ScenarioFile) -> Result<(), (String, String)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    let mut marks: HashMap<&str, Mark> = HashMap::new();
    for root in f.calls.keys() {
        if marks.contains_key(root.as_str()) {
            continue;
        }
        // (call, how many of its children have been looked at)
        let mut stack: Vec<(&str, usize)> = vec![(root.as_str(), 0)];
        marks.insert(root.as_str(), Mark::Open);
        while let Some(&mut (name, ref mut next)) = stack.last_mut() {
            let child = f.calls[name].calls.iter().flatten().nth(*next);
            *next += 1;
            match child {
                None => {
                    marks.insert(name, Mark::Done);
                    stack.pop();
                }
                Some(child) => match marks.get(child.as_str()) {
                    Some(Mark::Done) => {}
                    Some(Mark::Open) => {
                        let start = stack.iter().position(|(s, _)| *s == child).unwrap_or(0);
                        let mut cycle: Vec<&str> = stack[start..].iter().map(|(s, _)| *s).collect();
                        cycle.push(child);
                        return Err((
                            format!("calls.\"{name}\".calls"),
                            format!("call cycle: {}", cycle.join(" -> ")),
                        ));
                    }
                    None => {
                        marks.insert(child.as_str(), Mark::Open);
                        stack.push((child.as_str(), 0));
                    }
                },
            }
        }
    }
    Ok(())
}

/// Expands the call tree rooted at `name` into `nodes` (pre-order); returns the root's index.
fn expand(
    f: &ScenarioFile,
    services: &HashMap<&str, usize>,
    name: &str,
    depth: usize,
    nodes: &mut Vec<CallNode>,
) -> Result<u32, String> {
    if nodes.len() >= MAX_TREE {
        return Err(format!(
            "the call tree expands to more than {MAX_TREE} calls"
        ));
    }
    if depth > MAX_DEPTH {
        return Err(format!(
            "the call tree is more than {MAX_DEPTH} calls deep (at '{name}')"
        ));
    }
    let def = &f.calls[name];
    let index = nodes.len();
    let mean = |d: &DistSpec| d.mean_ms() / 1000.0;
    nodes.push(CallNode {
        call: name.to_string(),
        service: services[def.service.as_str()],
        cpu: def.cpu.build(),
        cpu_after: def.cpu_after.as_ref().map(DistSpec::build),
        stages: Vec::new(),
        probability: def.probability,
        detached: def.detached,
        parallelism: def.parallelism,
        mean_cpu: mean(&def.cpu) + def.cpu_after.as_ref().map_or(0.0, mean),
    });
    let mut stages = Vec::with_capacity(def.calls.len());
    for stage in &def.calls {
        let mut children = Vec::with_capacity(stage.len());
        for child in stage {
            children.push(expand(f, services, child, depth + 1, nodes)?);
        }
        stages.push(children);
    }
    nodes[index].stages = stages;
    Ok(index as u32)
}

/// [`Scenario::mix_phases`] for any weights (the load generator's).
pub fn mix_phases(own: &[f64]) -> Vec<Vec<f64>> {
    let mut phases = vec![own.to_vec()];
    let share = |w: &[f64]| -> Vec<f64> {
        let total: f64 = w.iter().sum();
        w.iter().map(|x| x / total).collect()
    };
    for k in 0..own.len() {
        let others: f64 = own
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != k)
            .map(|(_, w)| w)
            .sum();
        if others <= 0.0 {
            continue;
        }
        let mut w = own.to_vec();
        w[k] = others;
        let new = share(&w);
        let same = phases.iter().any(|p| {
            share(p)
                .iter()
                .zip(&new)
                .all(|(a, b)| (a - b).abs() < 1e-12)
        });
        if !same {
            // Scaled so that the smallest weight is the scenario's smallest: readable numbers.
            let min_own = own.iter().copied().fold(f64::INFINITY, f64::min);
            let min_w = w.iter().copied().fold(f64::INFINITY, f64::min);
            phases.push(w.iter().map(|x| x * min_own / min_w).collect());
        }
    }
    phases
}

/// Which of `phases` request mixes ([`Scenario::mix_phases`]) is in force in second `second`
/// of a run whose load changes mix every `cycle_s` seconds (0: never, the first mix always).
///
/// ```
/// assert_eq!(scenarios::mix_phase(25, 10, 2), 0); // seconds 20-29: the third block
/// assert_eq!(scenarios::mix_phase(15, 10, 2), 1);
/// assert_eq!(scenarios::mix_phase(15, 0, 2), 0);
/// ```
pub fn mix_phase(second: usize, cycle_s: usize, phases: usize) -> usize {
    if cycle_s == 0 || phases == 0 {
        0
    } else {
        (second / cycle_s) % phases
    }
}

/// The random generator of one call of one request: everything about the call (whether it
/// happens, its CPU demands, its network delays) is drawn from it, in that order. Seeded by
/// (request seed, position in the call tree) only, so a call costs the same whatever the
/// timing; the simulator and the live demo app both draw from it.
pub fn call_rng(request_seed: u64, node: u32) -> rand_pcg::Pcg32 {
    let mut x = request_seed ^ (node as u64).wrapping_mul(0x9E37_79B9);
    // SplitMix64: related seeds become unrelated streams.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    rand_pcg::Pcg32::new(x ^ (x >> 31), 0xCA11)
}
