//! # live: the Autothrottle controller on a real node
//!
//! * [`cgroup`]: one container's CPU controller on cgroup v1 or v2: counters in, quota out.
//! * [`journal`]: the original limits of every group the agent has touched, on disk before the
//!   first write, so that a crashed agent's quotas are put back (by its supervisor at once, or
//!   by the next agent at start).
//! * [`discovery`]: the app's pods on this node, from the Kubernetes API, mapped to their
//!   containers' cgroups by pod UID and QoS class.
//! * [`protocol`]: the versioned JSON-lines messages between the coordinator and an agent.
//! * [`agent`]: the agent's state machine: scalers every 100 ms, protocol requests, and the
//!   safety rules (restore on stop, on a lost coordinator, on a scaler panic).
//! * [`server`]: the agent as a process: TCP server, control loop, Prometheus metrics, signals.
//! * [`tls`]: TLS for the agent protocol (server and client configurations, and a small
//!   private CA for `live tls-init`).
//! * [`coordinator`]: `live run`: starts the scalers on every agent, replays the workload,
//!   runs the Tower each minute and writes the same run record as the simulator.
//! * [`loadgen`]: an HTTP load generator that replays a trace as open-loop Poisson arrivals or
//!   closed-loop Locust-like users (request mix or user flows with captured values, bounded
//!   in-flight, latency from the scheduled send time, a log of every request sent).
//! * [`template`] (the `demo` crate's, re-exported): the request templates the load fills per
//!   request (ranges, choices, dates, images, values bound and captured).
//! * [`demo`] (the `demo` crate, re-exported): the small real app `live demo` builds from a
//!   scenario: one HTTP server per service, each in its own cgroup, burning the CPU the
//!   scenario's calls and collectors say. Its own crate so that test builds optimise it: the
//!   live tests measure its CPU.
//! * [`os`]: the operating-system calls the std library lacks (CPU clocks, signals), each
//!   wrapped once.
//! * [`groups`]: real cgroups this program creates for itself (the demo app, the benchmark,
//!   the kernel tests), under a fresh name, removed on drop.
//!
//! The controller code is the simulator's: `controller::Captain` and friends are fed the same
//! `CpuSample`s, read here from `cpu.stat` instead of the model.

pub mod agent;
pub mod cgroup;
pub mod coordinator;
pub use demo;
pub mod discovery;
pub mod groups;
pub mod journal;
pub mod loadgen;
#[allow(unsafe_code)] // the one module that talks to libc directly
pub mod os;
pub mod protocol;
pub mod server;
pub use demo::template;
pub mod tls;

use std::path::PathBuf;

use thiserror::Error;

/// Everything the live side can fail with.
#[derive(Debug, Error)]
pub enum LiveError {
    /// A cgroup file could not be read, parsed or written.
    #[error("{path}: {reason}")]
    Cgroup { path: PathBuf, reason: String },
    /// The journal of original limits could not be read or written.
    #[error("journal {path}: {reason}")]
    Journal { path: PathBuf, reason: String },
    /// The Kubernetes API failed.
    #[error("kubernetes: {0}")]
    Kube(String),
    /// A bad configuration (flags, token file, scenario settings).
    #[error("{0}")]
    Config(String),
    /// An agent could not be reached or refused a request (before or at the start of a run).
    #[error("agent of node {node} at {addr}: {reason}")]
    Agent {
        node: String,
        addr: String,
        reason: String,
    },
    /// Nothing accepts connections at the app's URL.
    #[error("cannot reach the app at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// A task of the run (the load generator) panicked or was cancelled: a bug, not a
    /// setting the user can change.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Record(#[from] record::RecordError),
    /// A request template or the demo app's set-up.
    #[error(transparent)]
    Demo(#[from] demo::DemoError),
    #[error(transparent)]
    Controller(#[from] controller::ControllerError),
}
