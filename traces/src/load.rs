//! How a trace becomes requests: an open-loop Poisson process, or Locust-like closed-loop
//! users.
//!
//! * [`Load::Poisson`]: the trace value of a second is the request rate; arrivals do not care
//!   how the application answers. The stricter test: when the application stalls, requests
//!   keep coming and queue up.
//! * [`Load::Users`]: the trace value of a second is the number of users (Locust, as in the
//!   paper's evaluation). Each user sends a request, waits for the response, thinks for an
//!   exponential time of mean `think_s`, and sends the next. New users start at evenly spread
//!   moments of the second in which the count grows, and send at once; when the count drops,
//!   the users with the highest numbers send nothing more (a request of theirs in flight
//!   still counts). A stalled application slows its own arrivals, which hides part of a
//!   stall's cost: with a 1 s think time, users send about one request per (1 s + latency).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The default think time of a Locust user in the paper's load (an exponential of mean 1 s).
pub const THINK_S: f64 = 1.0;
/// Think times outside this range (seconds) are refused: below it a "user" is a flood, above
/// it a trace value of a few users sends almost nothing.
pub const THINK_RANGE_S: (f64, f64) = (0.001, 3600.0);

/// How the trace's values turn into requests.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Load {
    /// Open loop: value = requests per second, Poisson arrivals.
    #[default]
    Poisson,
    /// Closed loop: value = users, each thinking an exponential `think_s` after each response.
    Users { think_s: f64 },
}

impl Load {
    /// Users with the paper's think time.
    pub fn users() -> Load {
        Load::Users { think_s: THINK_S }
    }

    /// The same kind with another think time (Poisson has none, and ignores it).
    pub fn with_think(self, think_s: f64) -> Result<Load, String> {
        match self {
            Load::Poisson => Ok(Load::Poisson),
            Load::Users { .. } => {
                if think_s.is_finite() && think_s >= THINK_RANGE_S.0 && think_s <= THINK_RANGE_S.1 {
                    Ok(Load::Users { think_s })
                } else {
                    Err(format!(
                        "think time must be within {}..{} s, got {think_s}",
                        THINK_RANGE_S.0, THINK_RANGE_S.1
                    ))
                }
            }
        }
    }

    pub fn is_poisson(&self) -> bool {
        matches!(self, Load::Poisson)
    }
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Load::Poisson => write!(f, "poisson"),
            Load::Users { think_s } => write!(f, "users (think {think_s} s)"),
        }
    }
}

impl FromStr for Load {
    type Err = String;
    fn from_str(s: &str) -> Result<Load, String> {
        match s {
            "poisson" => Ok(Load::Poisson),
            "users" => Ok(Load::users()),
            _ => Err(format!("unknown load '{s}' (expected users or poisson)")),
        }
    }
}

/// A user's think time: exponential with mean `think_s`.
pub fn think<R: rand::Rng + ?Sized>(think_s: f64, rng: &mut R) -> f64 {
    use rand_distr::{Distribution, Exp1};
    let e: f64 = Exp1.sample(rng);
    e * think_s
}

/// The moment within second `second` at which the `i`-th of `n` users started in it begins:
/// evenly spread, as Locust spawns at a steady rate.
pub fn spawn_time(second: usize, i: usize, n: usize) -> f64 {
    second as f64 + i as f64 / n.max(1) as f64
}

/// The number of users a trace value stands for (values are whole users already; rounding
/// only matters for multiplied traces).
pub fn users_in(rate: f64) -> usize {
    if rate.is_finite() && rate > 0.0 {
        rate.round() as usize
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!("poisson".parse::<Load>().unwrap(), Load::Poisson);
        assert_eq!(
            "users".parse::<Load>().unwrap(),
            Load::Users { think_s: 1.0 }
        );
        assert!("closed"
            .parse::<Load>()
            .unwrap_err()
            .contains("users or poisson"));
        assert_eq!(Load::users().to_string(), "users (think 1 s)");
    }

    #[test]
    fn think_time_is_validated() {
        assert!(Load::users().with_think(0.5).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e9] {
            assert!(Load::users().with_think(bad).is_err(), "{bad}");
        }
        assert_eq!(Load::Poisson.with_think(f64::NAN), Ok(Load::Poisson));
    }

    #[test]
    fn think_times_have_the_mean() {
        use rand::SeedableRng;
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(3);
        let n = 100_000;
        let mean = (0..n).map(|_| think(2.0, &mut rng)).sum::<f64>() / n as f64;
        assert!((mean - 2.0).abs() < 0.03, "{mean}");
    }

    #[test]
    fn spawns_spread_over_the_second() {
        assert_eq!(spawn_time(5, 0, 4), 5.0);
        assert_eq!(spawn_time(5, 2, 4), 5.5);
        assert_eq!(users_in(2.6), 3);
        assert_eq!(users_in(-1.0), 0);
        assert_eq!(users_in(f64::NAN), 0);
    }
}
