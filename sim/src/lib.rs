//! # sim: Autothrottle without a cluster
//!
//! A trace-driven discrete-event model of a microservice application under Linux CFS bandwidth
//! control, driving the very controller code the live agent runs.
//!
//! * [`cfs`]: one container's CPU: processor sharing, worker threads, 100 ms quota periods with
//!   burst-then-stall throttling, cgroup counters. Start here to see what "throttled" means.
//! * [`engine`]: requests arrive (Poisson, following the trace), walk their call trees across
//!   containers and nodes, and leave.
//! * [`run`](mod@run): one benchmark run: scalers sampled every 100 ms, the Tower every minute,
//!   the summary of the evaluation protocol and the run record.
//!
//! ```
//! use std::sync::Arc;
//! use controller::{ScalerKind, Targets};
//! use sim::run::{run, RunConfig};
//!
//! let scenario = Arc::new(scenarios::Scenario::builtin("demo").unwrap());
//! let trace = Arc::new(traces::Trace::constant(200, 120));
//! let mut cfg = RunConfig::new(scenario, trace, ScalerKind::Captain, Targets::new(0.1, 0.1));
//! cfg.ramp_s = 0;
//! let out = run(&cfg, None, &mut |_, _| {}).unwrap();
//! // 200 trace RPS x the demo's 0.2 multiplier.
//! assert!((out.info.summary.mean_rps - 40.0).abs() < 3.0);
//! assert!(out.info.summary.allocation < 6.0, "the Captain scaled down from 3 x 2 cores");
//! ```

pub mod cfs;
pub mod engine;
mod mintree;
pub mod run;
pub mod sweep;
