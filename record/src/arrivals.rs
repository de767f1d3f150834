//! The request log of a run: every request's send time and type, one per line
//! (`arrivals.csv.gz` in a live record). `sim run --arrivals` and `sim calibrate` replay it, so
//! a re-simulation of a live run sees exactly the requests the app saw, not new draws at the
//! same rates.
//!
//! ```
//! use record::arrivals::{Arrivals, ArrivalsWriter};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("arrivals.csv.gz");
//! let mut w = ArrivalsWriter::create(&path)?;
//! w.write(0.25, "get")?;
//! w.write(1.5, "put")?;
//! w.write(1.75, "get")?;
//! w.finish()?;
//! let log = Arrivals::read(&path)?;
//! assert_eq!(log.len(), 3);
//! assert_eq!(log.per_second(), vec![1, 2]);
//! assert_eq!(log.names[log.kind[1] as usize], "put");
//! # Ok::<(), record::RecordError>(())
//! ```

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::RecordError;

/// The file name in a record.
pub const FILE: &str = "arrivals.csv.gz";
const HEADER: &str = "t,request";

/// A request log: send times (seconds from the run's start, ramp included) and request types,
/// ordered by time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Arrivals {
    /// Request type names, in order of first appearance; `kind` indexes them.
    pub names: Vec<String>,
    pub t: Vec<f64>,
    pub kind: Vec<u16>,
}

fn invalid(path: &Path, line: usize, why: String) -> RecordError {
    RecordError::Invalid(format!("{}: line {line}: {why}", path.display()))
}

impl Arrivals {
    /// Reads a log (gzip-compressed if the name ends in `.gz`). Every line must be
    /// `SECONDS,TYPE` with a finite, non-negative time; lines are sorted by time.
    pub fn read(path: &Path) -> Result<Arrivals, RecordError> {
        let file = File::open(path).map_err(|cause| RecordError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut log = Arrivals::default();
        let mut rows: Vec<(f64, u16)> = Vec::new();
        let mut header = false;
        for (i, line) in BufReader::new(reader).lines().enumerate() {
            let n = i + 1;
            let line = line.map_err(|cause| RecordError::Io {
                path: path.to_path_buf(),
                cause,
            })?;
            let line = line.trim_end_matches('\r');
            if n == 1 {
                if line != HEADER {
                    return Err(invalid(path, n, format!("expected the header {HEADER:?}")));
                }
                header = true;
                continue;
            }
            let (t, name) = line
                .split_once(',')
                .ok_or_else(|| invalid(path, n, format!("expected SECONDS,TYPE, got {line:?}")))?;
            let t: f64 = t
                .parse()
                .map_err(|_| invalid(path, n, format!("bad time {t:?}")))?;
            if !(t.is_finite() && t >= 0.0) {
                return Err(invalid(path, n, format!("bad time {t}")));
            }
            if name.is_empty() {
                return Err(invalid(path, n, "no request type".into()));
            }
            let kind = match log.names.iter().position(|x| x == name) {
                Some(k) => k,
                None if log.names.len() < u16::MAX as usize => {
                    log.names.push(name.to_string());
                    log.names.len() - 1
                }
                None => return Err(invalid(path, n, "too many request types".into())),
            };
            rows.push((t, kind as u16));
        }
        // A file without even the header (an empty one, or a log cut before its first line)
        // is no log.
        if !header {
            return Err(invalid(path, 1, "empty file".into()));
        }
        // Senders race for the log's lock: a line may be a little out of order.
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        log.t = rows.iter().map(|r| r.0).collect();
        log.kind = rows.iter().map(|r| r.1).collect();
        Ok(log)
    }

    pub fn len(&self) -> usize {
        self.t.len()
    }

    pub fn is_empty(&self) -> bool {
        self.t.is_empty()
    }

    /// Requests per second, from second 0 to the last one with a request.
    pub fn per_second(&self) -> Vec<u32> {
        let Some(last) = self.t.last() else {
            return Vec::new();
        };
        let mut counts = vec![0u32; last.floor() as usize + 1];
        for t in &self.t {
            counts[t.floor() as usize] += 1;
        }
        counts
    }

    /// The log's types as indices into `request_names` (a scenario's request types, in
    /// order); a type the scenario lacks is an error.
    pub fn kinds_in(&self, request_names: &[&str]) -> Result<Vec<u16>, RecordError> {
        let map = self
            .names
            .iter()
            .map(|n| {
                request_names
                    .iter()
                    .position(|r| r == n)
                    .map(|i| i as u16)
                    .ok_or_else(|| {
                        RecordError::Invalid(format!(
                            "the request log has type '{n}', which the scenario lacks (it has: {})",
                            request_names.join(", ")
                        ))
                    })
            })
            .collect::<Result<Vec<u16>, _>>()?;
        Ok(self.kind.iter().map(|&k| map[k as usize]).collect())
    }
}

/// Writes a request log as requests are sent (gzip-compressed: an hour at 2,000 requests a
/// second is 7 million lines).
pub struct ArrivalsWriter {
    path: PathBuf,
    w: GzEncoder<BufWriter<File>>,
}

impl std::fmt::Debug for ArrivalsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArrivalsWriter")
            .field("path", &self.path)
            .finish()
    }
}

impl ArrivalsWriter {
    pub fn create(path: &Path) -> Result<Self, RecordError> {
        let f = File::create(path).map_err(|cause| RecordError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        let mut w = GzEncoder::new(BufWriter::new(f), flate2::Compression::fast());
        writeln!(w, "{HEADER}").map_err(|cause| RecordError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        Ok(ArrivalsWriter {
            path: path.to_path_buf(),
            w,
        })
    }

    /// One request sent `t` seconds after the run's start.
    pub fn write(&mut self, t: f64, request: &str) -> Result<(), RecordError> {
        writeln!(self.w, "{t:.6},{request}").map_err(|cause| RecordError::Io {
            path: self.path.clone(),
            cause,
        })
    }

    /// Completes the file (a log not finished is cut short, not corrupt: gzip readers stop
    /// at the last complete block).
    pub fn finish(self) -> Result<(), RecordError> {
        let path = self.path;
        self.w
            .finish()
            .and_then(|mut b| b.flush())
            .map_err(|cause| RecordError::Io { path, cause })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn plain_logs_read_sorted_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.csv", "t,request\n2.5,b\n0.5,a\n2.25,a\n");
        let log = Arrivals::read(&p).unwrap();
        assert_eq!(log.t, vec![0.5, 2.25, 2.5]);
        assert_eq!(log.names, vec!["b", "a"]);
        assert_eq!(log.kind, vec![1, 1, 0]);
        assert_eq!(log.per_second(), vec![1, 0, 2]);
        assert_eq!(log.kinds_in(&["a", "b"]).unwrap(), vec![0, 0, 1]);
        let e = log.kinds_in(&["a"]).unwrap_err().to_string();
        assert!(e.contains("type 'b'"), "{e}");
        for (text, expected) in [
            ("x,y\n", "line 1: expected the header"),
            ("t,request\n1.0\n", "line 2: expected SECONDS,TYPE"),
            ("t,request\n1.0,a\nabc,a\n", "line 3: bad time \"abc\""),
            ("t,request\n-1,a\n", "line 2: bad time -1"),
            ("t,request\nNaN,a\n", "line 2: bad time NaN"),
            ("t,request\n1,\n", "line 2: no request type"),
            ("", "empty file"),
        ] {
            let p = write(dir.path(), "bad.csv", text);
            let e = Arrivals::read(&p).unwrap_err().to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
        // A compressed log with no line at all (not even the header) is empty too, though
        // its file is not.
        let p = dir.path().join("empty.csv.gz");
        GzEncoder::new(File::create(&p).unwrap(), flate2::Compression::fast())
            .finish()
            .unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() > 0);
        let e = Arrivals::read(&p).unwrap_err().to_string();
        assert!(e.contains("empty file"), "{e}");
    }

    #[test]
    fn a_written_log_reads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE);
        let mut w = ArrivalsWriter::create(&p).unwrap();
        let sent: Vec<(f64, &str)> = (0..10_000)
            .map(|i| (i as f64 * 0.000_37, if i % 7 == 0 { "put" } else { "get" }))
            .collect();
        for (t, k) in &sent {
            w.write(*t, k).unwrap();
        }
        w.finish().unwrap();
        let log = Arrivals::read(&p).unwrap();
        assert_eq!(log.len(), sent.len());
        for (i, (t, k)) in sent.iter().enumerate() {
            assert!((log.t[i] - t).abs() < 1e-6);
            assert_eq!(log.names[log.kind[i] as usize], *k);
        }
        // Compressed: far smaller than the text.
        assert!(std::fs::metadata(&p).unwrap().len() < 60_000);
    }
}
