//! # traces: request-rate traces for Autothrottle runs
//!
//! A trace is one non-negative integer per line: the requests per second for that second. This
//! crate reads and writes them (with errors that name the file, line and reason), builds what a
//! run actually replays (the warm-up ramp followed by the trace times the app's multiplier), and
//! generates seeded synthetic workloads whose statistics can be set.
//!
//! ```
//! use traces::{Trace, Generator};
//!
//! let t = Trace::parse("example", "100\n120\n140\n").unwrap();
//! assert_eq!(t.stats().mean, 120.0);
//! // What a run replays: 180 s of ramp up to the first value, then the trace, both times 1.5.
//! let rates = t.schedule(1.5, traces::RAMP_SECONDS);
//! assert_eq!(rates.len(), 183);
//! assert_eq!(rates[180], 150.0);
//!
//! // The built-in one-hour workloads ship with the crate.
//! let d = Trace::builtin("diurnal").unwrap();
//! assert_eq!(d.len(), 3600);
//!
//! // And new ones can be generated, reproducibly.
//! let g = Generator::Step { levels: vec![100, 300], step_s: 60 };
//! assert_eq!(g.generate(120, 7).stats().max, 300);
//! ```

mod generate;
mod load;
mod trace;

pub use generate::{Generator, BUILTIN};
pub use load::{spawn_time, think, users_in, Load, THINK_S};
pub use trace::{
    next_arrival, ramp, Stats, Trace, TraceError, MAX_RATE, MAX_SECONDS, RAMP_SECONDS,
};
