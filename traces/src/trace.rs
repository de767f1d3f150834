use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

/// Length of the warm-up ramp that precedes every trace in the evaluation protocol.
pub const RAMP_SECONDS: usize = 180;
/// The highest rate (requests, or users, per second) a trace may hold: far above any real
/// microservice benchmark, low enough that a typo cannot exhaust memory.
pub const MAX_RATE: u32 = 1_000_000;
/// The longest trace, seconds (31 days).
pub const MAX_SECONDS: usize = 31 * 86_400;
/// The largest trace file read, bytes (31 days of 7-digit rates, with room to spare).
const MAX_FILE_BYTES: u64 = 64 << 20;

/// Why a trace could not be read or written.
#[derive(Debug, Error)]
pub enum TraceError {
    #[error("{file}: cannot read: {cause}")]
    Read {
        file: PathBuf,
        cause: std::io::Error,
    },
    #[error("{file}: cannot write: {cause}")]
    Write {
        file: PathBuf,
        cause: std::io::Error,
    },
    #[error("{file}:{line}: {reason}")]
    BadLine {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{0}: the trace is empty (expected one requests-per-second integer per line)")]
    Empty(String),
    #[error(
        "unknown built-in trace '{0}' (built in: diurnal, noisy, bursty, diurnal-2, constant-N)"
    )]
    UnknownBuiltin(String),
    #[error("{0}: the rate is at most {MAX_RATE} per second")]
    TooHigh(String),
}

/// A request-rate trace: requests per second, one value per second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Where it came from (file path or built-in name); used in records and messages.
    pub name: String,
    pub rps: Vec<u32>,
}

/// Summary statistics of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub seconds: usize,
    pub min: u32,
    pub max: u32,
    pub mean: f64,
    pub stdev: f64,
    pub p50: u32,
    pub p95: u32,
    /// Mean absolute change from one second to the next (how jagged the trace is).
    pub mean_abs_step: f64,
}

impl Trace {
    pub fn new(name: impl Into<String>, rps: Vec<u32>) -> Self {
        Trace {
            name: name.into(),
            rps,
        }
    }

    /// A flat trace: `rps` for `seconds`.
    pub fn constant(rps: u32, seconds: usize) -> Self {
        Trace::new(format!("constant-{rps}"), vec![rps; seconds])
    }

    /// Parses the text of a trace; `name` is used in error messages.
    pub fn parse(name: &str, text: &str) -> Result<Self, TraceError> {
        let mut rps = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let bad = |reason: String| TraceError::BadLine {
                file: name.to_string(),
                line: i + 1,
                reason,
            };
            let line = raw.trim();
            if line.is_empty() {
                return Err(bad(
                    "empty line (expected a requests-per-second integer)".into()
                ));
            }
            let value: u32 = match line.parse::<i128>() {
                Ok(v) if v < 0 => return Err(bad(format!("negative rate '{line}'"))),
                Ok(v) if v > MAX_RATE as i128 => {
                    return Err(bad(format!(
                        "rate '{line}' is over the limit of {MAX_RATE}"
                    )))
                }
                Ok(v) => v as u32,
                Err(_) => return Err(bad(format!("'{line}' is not a non-negative integer"))),
            };
            if rps.len() == MAX_SECONDS {
                return Err(bad(format!(
                    "the trace is longer than {MAX_SECONDS} seconds (31 days)"
                )));
            }
            rps.push(value);
        }
        if rps.is_empty() {
            return Err(TraceError::Empty(name.to_string()));
        }
        Ok(Trace::new(name, rps))
    }

    /// Reads a trace file.
    pub fn read(path: &Path) -> Result<Self, TraceError> {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if size > MAX_FILE_BYTES {
            return Err(TraceError::Read {
                file: path.to_path_buf(),
                cause: std::io::Error::other(format!(
                    "{size} bytes; a trace file holds at most {MAX_FILE_BYTES}"
                )),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|cause| TraceError::Read {
            file: path.to_path_buf(),
            cause,
        })?;
        Trace::parse(&path.display().to_string(), &text)
    }

    /// Writes the trace in the same format [`read`](Self::read) takes.
    pub fn write(&self, path: &Path) -> Result<(), TraceError> {
        std::fs::write(path, self.to_text()).map_err(|cause| TraceError::Write {
            file: path.to_path_buf(),
            cause,
        })
    }

    /// The file format as a string.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(self.rps.len() * 5);
        for v in &self.rps {
            let _ = writeln!(s, "{v}");
        }
        s
    }

    /// A built-in trace by name (`diurnal`, `noisy`, `bursty`, `diurnal-2`, or `constant-N`
    /// for N requests per second during one hour), or a trace file when `spec` is not one.
    pub fn load(spec: &str) -> Result<Self, TraceError> {
        match Trace::builtin(spec) {
            Ok(t) => Ok(t),
            Err(TraceError::UnknownBuiltin(_)) if Path::new(spec).exists() => {
                Trace::read(Path::new(spec))
            }
            Err(TraceError::UnknownBuiltin(_)) if spec.contains('/') || spec.ends_with(".txt") => {
                Trace::read(Path::new(spec))
            }
            Err(e) => Err(e),
        }
    }

    pub fn len(&self) -> usize {
        self.rps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rps.is_empty()
    }

    /// What a run replays: a ramp of `ramp_seconds` up to the first value, then the trace, all
    /// multiplied by `multiplier`, as requests per second per second.
    pub fn schedule(&self, multiplier: f64, ramp_seconds: usize) -> Vec<f64> {
        let first = self.rps.first().copied().unwrap_or(0) as f64 * multiplier;
        let mut rates = ramp(first, ramp_seconds);
        rates.extend(self.rps.iter().map(|&r| r as f64 * multiplier));
        rates
    }

    /// The trace truncated to its first `seconds` (for quick runs).
    pub fn truncated(mut self, seconds: usize) -> Self {
        self.rps.truncate(seconds);
        self
    }

    pub fn stats(&self) -> Stats {
        let n = self.rps.len().max(1) as f64;
        let mean = self.rps.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = self
            .rps
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let mut sorted = self.rps.clone();
        sorted.sort_unstable();
        let pct = |p: f64| {
            sorted
                .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        let steps = self
            .rps
            .windows(2)
            .map(|w| (w[1] as f64 - w[0] as f64).abs())
            .sum::<f64>();
        Stats {
            seconds: self.rps.len(),
            min: sorted.first().copied().unwrap_or(0),
            max: sorted.last().copied().unwrap_or(0),
            mean,
            stdev: var.sqrt(),
            p50: pct(0.5),
            p95: pct(0.95),
            mean_abs_step: steps / (self.rps.len().saturating_sub(1).max(1)) as f64,
        }
    }
}

/// The next arrival after `t` (seconds) of a Poisson process whose rate follows `rates`
/// second by second; `None` after the last second. Memorylessness lets the draw restart at
/// each second boundary. The simulator and the live load generator both schedule with this.
pub fn next_arrival<R: rand::Rng + ?Sized>(rates: &[f64], mut t: f64, rng: &mut R) -> Option<f64> {
    use rand_distr::{Distribution, Exp1};
    loop {
        let second = t.floor() as usize;
        let rate = *rates.get(second)?;
        let boundary = (second + 1) as f64;
        if rate > 0.0 {
            let gap: f64 = Exp1.sample(rng);
            let next = t + gap / rate;
            if next < boundary {
                return Some(next);
            }
        }
        t = boundary;
    }
}

/// The warm-up ramp of the evaluation protocol: `rate_i = first * 1.1^((i - seconds) / 5)`, at
/// least 1, for `i` in `0..seconds`, so that it ends just below `first`.
pub fn ramp(first: f64, seconds: usize) -> Vec<f64> {
    (0..seconds)
        .map(|i| (first * 1.1f64.powf((i as f64 - seconds as f64) / 5.0)).max(1.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Trace::parse("t.txt", text).unwrap_err().to_string()
    }

    #[test]
    fn parses_and_round_trips() {
        let t = Trace::parse("x", "1\n 2 \n3").unwrap();
        assert_eq!(t.rps, vec![1, 2, 3]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.txt");
        t.write(&p).unwrap();
        assert_eq!(Trace::read(&p).unwrap().rps, t.rps);
    }

    #[test]
    fn bad_lines_name_file_line_and_reason() {
        assert_eq!(
            err("1\n\n3\n"),
            "t.txt:2: empty line (expected a requests-per-second integer)"
        );
        assert_eq!(err("1\n2\n-5\n"), "t.txt:3: negative rate '-5'");
        assert_eq!(err("1.5\n"), "t.txt:1: '1.5' is not a non-negative integer");
        assert_eq!(err("abc\n"), "t.txt:1: 'abc' is not a non-negative integer");
        assert_eq!(
            err("4294967296\n"),
            "t.txt:1: rate '4294967296' is over the limit of 1000000"
        );
        assert!(err("").contains("the trace is empty"));
        assert!(Trace::parse("t", "1000000").is_ok());
        assert!(Trace::parse("t", "1000001").is_err());
    }

    #[test]
    fn missing_file_is_named() {
        let e = Trace::read(Path::new("/nonexistent/trace.txt")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/trace.txt: cannot read"),
            "{e}"
        );
        let e = Trace::load("/nonexistent/trace.txt").unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        assert!(matches!(
            Trace::load("diurnall"),
            Err(TraceError::UnknownBuiltin(_))
        ));
    }

    #[test]
    fn ramp_follows_the_protocol() {
        let r = ramp(1000.0, 180);
        assert_eq!(r.len(), 180);
        assert!((r[179] - 1000.0 * 1.1f64.powf(-0.2)).abs() < 1e-9);
        assert!((r[0] - 1000.0 * 1.1f64.powf(-36.0)).abs() < 1e-9);
        assert!(r.windows(2).all(|w| w[0] <= w[1]));
        assert!(ramp(10.0, 180).iter().all(|&x| x >= 1.0));
    }

    #[test]
    fn schedule_multiplies_and_prepends_ramp() {
        let t = Trace::new("t", vec![100, 200]);
        let s = t.schedule(10.0, 180);
        assert_eq!(s.len(), 182);
        assert_eq!(&s[180..], &[1000.0, 2000.0]);
        assert!(s[179] < 1000.0);
    }

    #[test]
    fn stats_are_right() {
        let s = Trace::new("t", vec![1, 2, 3, 4, 10]).stats();
        assert_eq!((s.min, s.max, s.p50), (1, 10, 3));
        assert_eq!(s.mean, 4.0);
        assert!((s.mean_abs_step - 2.25).abs() < 1e-12);
    }

    #[test]
    fn constant_and_truncated() {
        let t = Trace::constant(2000, 3600);
        assert_eq!(t.stats().mean, 2000.0);
        assert_eq!(t.clone().truncated(10).len(), 10);
        assert_eq!(Trace::load("constant-500").unwrap().rps[0], 500);
    }
}
