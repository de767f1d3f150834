//! The TOML schema of a scenario file. Every field is documented here; unknown fields are
//! refused so that a typo does not silently fall back to a default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::DistSpec;

/// A scenario file.
///
/// ```toml
/// name = "tiny"
/// slo_ms = 50              # P99 latency SLO
/// multiplier = 2.0         # traces are multiplied by this (default 1)
/// constant_rps = 300       # the "Constant" workload (optional)
/// aggregate_rps = 20       # the Tower's RPS bucket (default 20)
/// initial_limit = 8        # cores every container starts with (default: its node's cores)
/// network_delay = { kind = "const", ms = 0.1 }   # per hop and direction (default 0.1 ms)
/// cfs_periods = "aligned"  # every container's 100-ms periods at the same moments (default
///                          # "independent": each on its own, as the kernel runs them)
///
/// [[nodes]]
/// name = "node-1"
/// cores = 8
/// agent = "10.0.0.11:7070" # the node's live agent (live runs only)
/// scheduler = "per-cpu"    # how runnable threads share the CPUs (default "processor-sharing")
/// # smt_yield = 0.25       # cores are SMT threads, two to a core; what a core's second busy
///                          # thread adds (processor sharing only; default: whole cores)
///
/// [[services]]
/// name = "front"
/// node = "node-1"
/// threads = 8              # calls that may run on the CPU at once (default: node cores)
/// group = 1                # Tower target group: 1 = CPU-heavy, 2 = the rest (default 2)
/// # Optional language runtime whose collector makes the container's CPU bursty (see
/// # [`RuntimeDef`]): a Go concurrent collector or a JVM stop-the-world one.
/// runtime = { kind = "go", alloc_mb_per_cpu_s = 100, live_heap_mb = 40, mark_ms_per_mb = 2.0 }
///
/// [[requests]]
/// name = "get"
/// weight = 1.0             # relative frequency in the request mix
/// call = "front.get"       # the root call
/// http = { method = "GET", path = "/get?id={int:1..1000}" }   # live runs only; also
///                          # body = '{"id": {int:1..9}}' and content_type (default JSON)
///
/// [calls."front.get"]
/// service = "front"
/// cpu = { kind = "exp", mean_ms = 1.0 }     # CPU demand before the children
/// calls = [["db.get"], ["a", "b"]]          # stages run one after another; calls within a
///                                           # stage run in parallel
/// cpu_after = { kind = "const", ms = 0.2 }  # optional CPU after the children
/// probability = 1.0        # chance this call happens when its parent reaches it (default 1)
/// detached = false         # true: the parent does not wait for it (default false)
/// parallelism = 1          # threads the call's CPU runs on at once (default 1)
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// The application's name, used in records.
    pub name: String,
    /// What the scenario models and where its numbers come from.
    #[serde(default)]
    pub description: String,
    /// The P99 latency SLO, in milliseconds.
    pub slo_ms: f64,
    /// Trace multiplier: a trace value of N means N * multiplier requests per second.
    #[serde(default = "one")]
    pub multiplier: f64,
    /// Requests per second of the "Constant" workload.
    #[serde(default)]
    pub constant_rps: Option<u32>,
    /// The Tower's RPS bucket size.
    #[serde(default = "twenty")]
    pub aggregate_rps: f64,
    /// Cores every container starts with; defaults to the container's node size.
    #[serde(default)]
    pub initial_limit: Option<f64>,
    /// Network delay of one hop, each way.
    #[serde(default = "default_delay")]
    pub network_delay: DistSpec,
    /// How the containers' CFS periods lie against one another (default: independent).
    #[serde(default, skip_serializing_if = "CfsPeriods::is_default")]
    pub cfs_periods: CfsPeriods,
    pub nodes: Vec<NodeDef>,
    pub services: Vec<ServiceDef>,
    #[serde(default)]
    pub requests: Vec<RequestDef>,
    /// Call definitions by name; requests and other calls refer to them.
    #[serde(default)]
    pub calls: BTreeMap<String, CallDef>,
    /// How a live load drives the app beyond independent requests (see [`LiveDef`]); the
    /// simulator ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveDef>,
}

impl ScenarioFile {
    /// The file as TOML text that [`crate::Scenario::parse`] reads back (comments are not
    /// kept).
    pub fn to_toml(&self) -> Result<String, crate::ScenarioError> {
        toml::to_string(self).map_err(|e| crate::ScenarioError::Invalid {
            file: self.name.clone(),
            path: String::new(),
            reason: format!("cannot be written as TOML: {e}"),
        })
    }
}

/// A machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDef {
    pub name: String,
    /// CPU cores; the node's containers together never use more.
    pub cores: f64,
    /// Where this node's `live agent` listens (`host:port`), for live runs.
    #[serde(default)]
    pub agent: Option<String>,
    /// How the node's CPUs are shared among runnable threads (default: processor sharing).
    #[serde(default, skip_serializing_if = "Scheduler::is_default")]
    pub scheduler: Scheduler,
    /// Simultaneous multithreading: `cores` are hardware threads, two to a physical core, and
    /// a core with both threads busy does `1 + smt_yield` times the work of one thread alone
    /// (0 to 1). Threads take a core of their own while there are idle ones, as Linux places
    /// them; past half the threads busy, each runs slower but the cgroup is charged its whole
    /// time on the thread, so a burst on many threads spends more quota for the same work.
    /// Unset: every one of `cores` is a whole core. Needs processor sharing and an even
    /// number of `cores`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt_yield: Option<f64>,
}

/// How a node's CPUs are shared among its containers' runnable threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// `"processor-sharing"`: every runnable thread gets `cores / runnable` of a core, at
    /// most one. Ideal sharing; close to the kernel's on a node that is seldom saturated.
    #[default]
    ProcessorSharing,
    /// `"per-cpu"`: Linux's per-CPU run queues. A thread that becomes runnable goes to the CPU
    /// with the fewest runnable threads and stays there until it stops; each CPU is shared
    /// equally among its threads, so one CPU can idle while two threads share another. On a
    /// saturated node this costs latency that processor sharing does not (measured on a
    /// 2-CPU machine: docs/RESULTS.md). `cores` must be a whole number.
    PerCpu,
}

impl Scheduler {
    fn is_default(&self) -> bool {
        *self == Scheduler::default()
    }
}

/// Where each container's 100-ms CFS periods begin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CfsPeriods {
    /// `"independent"`: each container's periods run on a grid of its own, offset from the
    /// others' by a phase drawn from the run's seed, as the kernel runs each cgroup's period
    /// timer (measured on this machine: four cgroups' refills at 30.2, 72.7, 90.4 and 96.2
    /// ms past the 100-ms mark, each within 0.1 ms over 30 periods, and a cgroup's phase kept
    /// across idle spells; docs/RESULTS.md). A limit the controller changes between two
    /// refills is written at once, and the write refills the quota and ends a throttle, as
    /// writing `cpu.cfs_quota_us` does.
    #[default]
    Independent,
    /// `"aligned"`: every container's periods begin at the same moments, the controller's
    /// sampling ticks, where new limits take effect (the model before session 15).
    Aligned,
}

impl CfsPeriods {
    fn is_default(&self) -> bool {
        *self == CfsPeriods::default()
    }
}

/// A container whose CPU limit is managed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Worker threads: at most this many calls use the CPU at once, the rest wait in FIFO
    /// order. Defaults to the node's cores.
    #[serde(default)]
    pub threads: Option<u32>,
    /// Tower target group: 1 for the CPU-heavy services, 2 for the rest.
    #[serde(default = "two")]
    pub group: u8,
    /// The language runtime's garbage collector, if it makes the container's CPU bursty.
    #[serde(default)]
    pub runtime: Option<RuntimeDef>,
    /// CPU the container uses whatever its requests, in cores (health checks, timers, a
    /// database's housekeeping): the simulator starts that share of a period's work at every
    /// period, beside the calls, spending the CFS quota like any other work. `sim calibrate`
    /// fits it (the intercept of the usage fit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub background_cores: f64,
    /// Work the container does on a timer, whatever its requests (a database's checkpoint every
    /// 60 s, a diagnostics sample every second): each spends the CFS quota like any other work
    /// and can be throttled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub periodic: Vec<PeriodicDef>,
}

/// Work on a timer: every `every_s` seconds (a whole number of 100-ms CFS periods), `cpu_ms`
/// core-milliseconds of CPU on `threads` threads at once, starting with a period. Each timer's
/// phase is drawn from the run's seed.
///
/// ```toml
/// periodic = [{ every_s = 60, cpu_ms = 400 }, { every_s = 1, cpu_ms = 5, threads = 2 }]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodicDef {
    pub every_s: f64,
    pub cpu_ms: f64,
    #[serde(default = "one_thread")]
    pub threads: u32,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// A garbage-collecting runtime inside a container. Both kinds are driven by allocation, and
/// allocation by the CPU the container's calls use (`alloc_mb_per_cpu_s` MB per core-second of
/// request CPU), so collections come more often as load grows. The collector's CPU is the
/// container's: it counts in `cpu.stat`, spends the CFS quota and can be throttled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RuntimeDef {
    /// Go's concurrent mark-and-sweep collector. A cycle starts once the calls have allocated
    /// `live_heap_mb * gogc / 100` MB since the last one, or more where that would leave the
    /// heap goal (the live heap plus this) under Go's 4 MB minimum: with 1 MB live, every 3 MB.
    /// Its mark work, `live_heap_mb * mark_ms_per_mb` core-milliseconds, runs beside the calls
    /// on every P they leave idle: a quarter of `gomaxprocs` as dedicated workers, and idle
    /// workers on the rest, up to `gomaxprocs` threads in all. `gomaxprocs` defaults to the
    /// node's cores, as Go sizes it from the host, not from the CFS quota. With
    /// `full_heap_users`, the live heap holds something per client connection: it is
    /// `live_heap_mb` from that many users (requests a second under open-loop load) up and
    /// proportionally less below (the load's value each 100-ms tick; the heap goal never
    /// under Go's 4 MB), so collections during a ramp are small and frequent. Unset: fixed.
    Go {
        alloc_mb_per_cpu_s: f64,
        live_heap_mb: f64,
        #[serde(default = "hundred")]
        gogc: f64,
        mark_ms_per_mb: f64,
        #[serde(default)]
        gomaxprocs: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        full_heap_users: Option<f64>,
    },
    /// A JVM with the throughput (Parallel) collector, Java 8's server-class default: every
    /// `young_mb` MB allocated, a young collection stops every application thread while
    /// `pause_cpu_ms` core-milliseconds of collection work run on `gc_threads` threads
    /// (default: HotSpot's ergonomics for the node's cores, N for N <= 8, else 8 + 5(N-8)/8).
    Jvm {
        alloc_mb_per_cpu_s: f64,
        young_mb: f64,
        pause_cpu_ms: f64,
        #[serde(default)]
        gc_threads: Option<u32>,
    },
}

/// A request type of the load's mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestDef {
    pub name: String,
    /// Relative frequency; the mix is normalised over all request types.
    pub weight: f64,
    /// The root call.
    pub call: String,
    /// How a live load generator sends it (the simulator ignores this).
    #[serde(default)]
    pub http: Option<HttpDef>,
}

/// An HTTP request of the live load: method, path template and optionally headers, a body
/// and values to capture from the answer. Templates are filled per request: `{int:LO..HI}`,
/// `{float:LO..HI}`, `{choice:a|b}`, values bound and read by name (`{in=int:9..23}`,
/// `{$in}`) and more (the `live` crate's `template` module lists them).
///
/// ```toml
/// http = { method = "POST", path = "/api/login", body = '{"user": "{$username}"}',
///          capture = { token = "/data/token" } }
/// http = { method = "GET", path = "/orders", headers = { Authorization = "Bearer {$token}" } }
/// http = { method = "POST", path = "/post", form = [["text", "hi @user_{int:1..962}"]] }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpDef {
    #[serde(default = "get")]
    pub method: String,
    pub path: String,
    /// Sent as the request body, e.g. `'{"key": {int:1..1000}}'`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Content type of the body (default `application/json` when there is a body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// A form body (`application/x-www-form-urlencoded`): `[name, value template]` pairs in
    /// order, each value percent-encoded after it is filled. Not with `body`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub form: Vec<(String, String)>,
    /// Header templates, e.g. `Authorization = "Bearer {$token}"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Values the user keeps from the JSON answer for its later requests: name -> JSON pointer
    /// (`/data/token`, `/data/0/id`). An answer without one of them is a failed request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capture: BTreeMap<String, String>,
}

/// How a live load drives an app whose requests depend on each other (a login whose token
/// later requests carry, a booking that needs a contact id from an earlier answer). With
/// `flows`, each closed-loop user repeatedly picks a flow by weight and sends its steps in
/// order, thinking after every request; the values a step captures stay with the user. The
/// simulator does not run flows: the request weights must give the same mix as the flows
/// (checked, within 2%).
///
/// ```toml
/// [live]
/// init = [{ name = "admin", http = { method = "POST", path = "/login", body = "...", capture = { admin = "/token" } } }]
/// setup = ["login"]          # request types each user sends before its first flow
/// setup_reuse_s = 1800       # users share the newest set-up's captures this long
/// flows = [{ name = "browse", weight = 9, steps = ["home", "search", "search"] },
///          { name = "book", weight = 1, steps = ["home", "search", "search", "preserve"] }]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveDef {
    /// Requests the coordinator sends once, in order, before the load starts (not measured):
    /// creating the account the users log in with, say. Their captures are every user's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init: Vec<InitStep>,
    /// Request types a user sends, in order, before its first flow (a login), unless another
    /// user's set-up is younger than `setup_reuse_s`; then it takes that one's captures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<String>,
    #[serde(default = "no_reuse")]
    pub setup_reuse_s: f64,
    /// The tasks users pick from, by weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flows: Vec<FlowDef>,
}

fn no_reuse() -> f64 {
    0.0
}

/// A request sent once before a live run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitStep {
    pub name: String,
    pub http: HttpDef,
}

/// One task of a live user: request types sent in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowDef {
    pub name: String,
    pub weight: f64,
    pub steps: Vec<String>,
}

fn get() -> String {
    "GET".into()
}

/// One call to a service, and what it calls in turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallDef {
    pub service: String,
    /// CPU demand before the children are called.
    pub cpu: DistSpec,
    /// CPU demand after the last child returned, if any.
    #[serde(default)]
    pub cpu_after: Option<DistSpec>,
    /// Children, as stages: stages run one after another, the calls of a stage in parallel.
    #[serde(default)]
    pub calls: Vec<Vec<String>>,
    /// The chance that this call happens when a parent reaches it (a cache miss, say).
    #[serde(default = "one")]
    pub probability: f64,
    /// The parent does not wait for this call (a message-queue hand-off): its latency does not
    /// count in the request's, its CPU does count.
    #[serde(default)]
    pub detached: bool,
    /// Threads the call's CPU (before and after its children) is split over, all running at
    /// once: an inference with intra-op threads, a parallel sort. 1 is an ordinary call.
    #[serde(default = "one_thread")]
    pub parallelism: u32,
}

fn one() -> f64 {
    1.0
}
fn one_thread() -> u32 {
    1
}
fn hundred() -> f64 {
    100.0
}
fn two() -> u8 {
    2
}
fn twenty() -> f64 {
    20.0
}
fn default_delay() -> DistSpec {
    DistSpec::Const { ms: 0.1 }
}
