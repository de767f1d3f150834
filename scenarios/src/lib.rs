//! # scenarios: microservice applications as data
//!
//! A scenario describes an application the way the simulator and the live coordinator need it:
//! nodes and their cores, services (containers) with their node, worker threads, Tower target
//! group, garbage-collecting runtime (Go-like concurrent or JVM-like stop-the-world) and the
//! work they do whatever their requests (a steady share, or bursts on a timer), request
//! types with their weights and call trees (calls may run on several threads at once), the
//! per-hop network delay, the latency SLO, the trace multiplier and the Tower's RPS bucket. It is a TOML file; the schema is
//! documented field by field on [`ScenarioFile`].
//!
//! ```
//! use scenarios::Scenario;
//!
//! let hotel = Scenario::builtin("hotel-reservation").unwrap();
//! assert_eq!(hotel.services.len(), 17);
//! assert_eq!(hotel.slo_ms, 100.0);
//! // The request mix of the original load generator.
//! let search = hotel.requests.iter().find(|r| r.name == "search").unwrap();
//! assert_eq!(search.weight, 600.0);
//! ```
//!
//! Loading validates everything and says where a problem is:
//!
//! ```
//! let err = scenarios::Scenario::parse("bad.toml", r#"
//! name = "x"
//! slo_ms = 100
//! [[nodes]]
//! name = "n"
//! cores = 4
//! [[services]]
//! name = "a"
//! node = "m"
//! "#).unwrap_err();
//! assert_eq!(err.to_string(), "bad.toml: services[0].node: unknown node 'm'");
//! ```

mod dist;
mod error;
mod model;
mod schema;

pub use dist::{Dist, DistSpec};
pub use error::ScenarioError;
pub use model::{
    call_rng, go_cycle_mb, mix_phase, mix_phases, CallNode, HeapFollows, Periodic, RequestType,
    Runtime, Scenario, Service, BUILTIN,
};
pub use schema::{
    CallDef, CfsPeriods, FlowDef, HttpDef, InitStep, LiveDef, NodeDef, PeriodicDef, RequestDef,
    RuntimeDef, ScenarioFile, Scheduler, ServiceDef,
};
