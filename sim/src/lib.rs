//! # sim: Autothrottle without a cluster
//!
//! A trace-driven discrete-event model of a microservice application under Linux CFS bandwidth
//! control, driving the very controller code the live agent runs.
//!
//! * [`cfs`]: one container's CPU: processor sharing (or the kernel's per-CPU run queues, with
//!   the quota handed to each CPU in 5-ms slices), worker threads, 100 ms quota periods with
//!   burst-then-stall throttling, cgroup counters, and the garbage collectors that make real
//!   containers bursty (a Go-like collection on every idle P, a JVM-like stop-the-world pause).
//!   Start here to see what "throttled" means.
//! * [`engine`]: requests arrive (open-loop Poisson following the trace, or closed-loop users
//!   who think between requests, as the paper's Locust load), walk their call trees across
//!   containers and nodes (a call may run on several threads at once; a node's cores may be
//!   SMT threads, two to a core), and leave.
//! * [`sweep`]: target sweeps, the Autothrottle warm-up protocol and the paper's evaluation
//!   grid, in parallel, sharded and resumable.
//! * [`calibrate`]: fitting a scenario's CPU costs, network delay and each service's calls'
//!   variability to recorded runs (`sim calibrate`).
//! * [`run`](mod@run): one benchmark run: scalers sampled every 100 ms, the Tower every minute,
//!   the summary of the evaluation protocol and the run record.
//!
//! ```
//! use std::sync::Arc;
//! use controller::{ScalerKind, Targets};
//! use sim::run::{run, RunPlan};
//!
//! let scenario = Arc::new(scenarios::Scenario::builtin("demo").unwrap());
//! let trace = Arc::new(traces::Trace::constant(200, 120));
//! let mut cfg = RunPlan::new(scenario, trace, ScalerKind::Captain, Targets::new(0.1, 0.1));
//! cfg.ramp_s = 0;
//! let out = run(&cfg, None, &mut |_, _| {}).unwrap();
//! // 200 trace RPS x the demo's 0.2 multiplier.
//! assert!((out.info.summary.mean_rps - 40.0).abs() < 3.0);
//! assert!(out.info.summary.allocation < 6.0, "the Captain scaled down from 3 x 2 cores");
//!
//! // The same app as 40 Locust-like users who think 1 s between requests: a little under
//! // 40 requests per second, since each also waits for its answers (ten minutes, so that
//! // the think times' randomness averages out).
//! cfg.load = traces::Load::users();
//! cfg.trace = Arc::new(traces::Trace::constant(200, 600));
//! let users = run(&cfg, None, &mut |_, _| {}).unwrap();
//! assert!(users.info.summary.mean_rps < 40.0 && users.info.summary.mean_rps > 38.0);
//! ```

pub mod calibrate;
pub mod cfs;
mod earliest;
pub mod engine;
mod error;
mod queue;
pub mod run;
pub mod sweep;

pub use error::{Result, SimError};

/// The model's revision, kept in every simulated run's record: a resumed sweep or evaluation
/// reuses a run on disk only from the same revision. Bump it whenever the same scenario, plan
/// and seed give a different run on purpose.
///
/// 1: each container's CFS periods on a grid of its own, and limits written between refills
/// (session 15); 0: every run recorded before.
pub const MODEL_REVISION: u32 = 1;

/// The description of a simulated run of `cfg`, as its record keeps it.
pub fn run_info(cfg: &record::RunPlan) -> record::RunInfo {
    let mut info = cfg.info("sim");
    info.model_revision = MODEL_REVISION;
    info
}
