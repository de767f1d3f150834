//! # record: one run, on disk, the same for the simulator and a live cluster
//!
//! A run record is a directory:
//!
//! | file | what |
//! |---|---|
//! | `run.json` | [`RunInfo`]: what ran (scenario, trace, scaler, targets, Tower, seed, SLO) and its [`Summary`] (allocation, usage, latencies and the SLO verdict, the same per request type) |
//! | `minutes.csv` | one [`MinuteRow`] per minute: RPS, latency percentiles, allocation, Tower targets |
//! | `services.csv` | one [`ServiceRow`] per second per service: limit, usage, CFS periods (optional) |
//! | `requests.csv` | one [`RequestRow`] per second per request type: sent and answered (with `services.csv`; what `sim calibrate` fits CPU costs against) |
//! | `arrivals.csv.gz` | every request's send time and type ([`arrivals`]; live runs write it, so a re-simulation replays exactly the requests the app saw) |
//! | `tower.json` | the Tower's memory after the run (when a learning Tower ran) |
//!
//! The writers stream rows as the run goes, so memory does not grow with the run's length, and
//! `run.json` is written last: a directory without it is a run that did not finish.
//!
//! ```
//! use record::{MinuteRow, Record, RecordWriter, RunInfo};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut w = RecordWriter::create(dir.path(), false, false).unwrap();
//! w.minute(&MinuteRow { minute: 0, rps: 10.0, allocation: 2.0, ..Default::default() }).unwrap();
//! w.finish(&RunInfo::example()).unwrap();
//! let r = Record::read(dir.path()).unwrap();
//! assert_eq!(r.minutes.len(), 1);
//! assert_eq!(r.info.scenario, "example");
//! ```

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use controller::{ScalerKind, Targets, TowerKind, TowerMemory};
use scenarios::Scenario;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use traces::Load;

pub mod arrivals;
#[cfg(feature = "cli")]
pub mod cli;
pub mod latency;
mod plan;
pub use latency::Latencies;
pub use plan::{RunPlan, MAX_RAMP_S};

/// Bumped when a field changes meaning; readers refuse newer formats.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum RecordError {
    #[error("{0}: already holds a run record (run.json); refusing to overwrite it")]
    Exists(PathBuf),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {cause}")]
    Csv { path: PathBuf, cause: csv::Error },
    #[error("{path}: {cause}")]
    Json {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("{path}: format version {found} is newer than this tool's ({FORMAT_VERSION})")]
    Version { path: PathBuf, found: u32 },
    #[error("{0}: not a run record (no run.json); was the run interrupted?")]
    NotARecord(PathBuf),
    /// A run description that cannot run.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Controller(#[from] controller::ControllerError),
}

/// What ran, and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub format_version: u32,
    /// `sim` or `live`.
    pub source: String,
    pub scenario: String,
    pub scenario_source: String,
    pub trace: String,
    pub multiplier: f64,
    pub ramp_s: usize,
    /// How the trace became requests (open-loop Poisson when absent: records from before
    /// closed-loop users existed).
    #[serde(default, skip_serializing_if = "Load::is_poisson")]
    pub load: Load,
    /// Fingerprint of the application model that ran ([`Scenario::digest`]); empty in older
    /// records.
    #[serde(default)]
    pub scenario_digest: String,
    /// Scaler kind (`captain`, `k8s-cpu`, `k8s-cpu-fast`, `const`).
    pub scaler: String,
    /// Targets at the start (per group); a Tower run's targets over time are in
    /// `minutes.csv` and their mean in the summary.
    pub targets: Targets,
    /// Each service's limit at the start, cores (scenario order; empty in older records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initial_limits: Vec<f64>,
    /// CFS burst of every container, as a fraction of its quota (0, and absent in older
    /// records: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub burst: f64,
    /// The load changed request mix every this many seconds, cycling through
    /// [`Scenario::mix_phases`] (a calibration load); 0, and absent: the scenario's mix always.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mix_cycle_s: usize,
    /// Tower kind (`none`, `explore`, `bandit`).
    pub tower: String,
    pub explore: f64,
    /// [`controller::TOWER_REVISION`] of a run with a Tower (0 without one, and in records
    /// older than it): a resumed sweep reuses a Tower's run only from the same revision.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tower_revision: u32,
    /// The simulator's model revision (`sim::MODEL_REVISION`) of a simulated run (0 in live
    /// records and in simulated ones older than it): a resumed sweep reuses a run only from
    /// the same revision, since the same scenario and seed give another run after a change
    /// to the model.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub model_revision: u32,
    pub seed: u64,
    pub slo_ms: f64,
    /// Service names and their target groups, in the order of `services.csv`.
    pub services: Vec<(String, u8)>,
    /// False when the run was stopped early (the record holds what was done).
    pub complete: bool,
    pub summary: Summary,
    /// Spans in which a container was not controlled by the run (live: its agent was lost,
    /// or ended control). Its rows are missing from `services.csv` there, and its limit is
    /// not in the allocation. Empty for simulated runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<Gap>,
}

/// A span of a run in which one container was not under the run's control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    pub service: String,
    /// The container's name on its agent (`service`, or `service@pod` for replicas).
    pub container: String,
    /// The node of the container's agent.
    pub node: String,
    /// First second without control.
    pub from_s: u32,
    /// First second under control again; `None` when control never came back.
    pub to_s: Option<u32>,
    pub reason: String,
}

impl Gap {
    /// Whether second `t` falls in the gap.
    pub fn covers(&self, t: u32) -> bool {
        t >= self.from_s && self.to_s.is_none_or(|end| t < end)
    }
}

impl RunInfo {
    /// The description of a run of `scenario` on `trace` from `source` (`sim` or `live`),
    /// with the paper's defaults (no ramp, Captains at 0.1, no Tower) until the `with_`
    /// methods say otherwise; the summary is filled in when the run ends.
    pub fn new(source: &str, scenario: &Scenario, trace: &str, seed: u64) -> RunInfo {
        RunInfo {
            format_version: FORMAT_VERSION,
            source: source.into(),
            scenario: scenario.name.clone(),
            scenario_source: scenario.source.clone(),
            scenario_digest: scenario.digest(),
            trace: trace.into(),
            load: Load::Poisson,
            multiplier: scenario.multiplier,
            ramp_s: 0,
            scaler: ScalerKind::Captain.name().into(),
            targets: Targets::new(0.1, 0.1),
            tower: TowerKind::None.name().into(),
            explore: 0.0,
            tower_revision: 0,
            model_revision: 0,
            seed,
            slo_ms: scenario.slo_ms,
            services: scenario
                .services
                .iter()
                .map(|s| (s.name.clone(), s.group))
                .collect(),
            complete: true,
            summary: Summary::default(),
            gaps: Vec::new(),
            initial_limits: scenario.services.iter().map(|s| s.initial_limit).collect(),
            burst: 0.0,
            mix_cycle_s: 0,
        }
    }

    /// The limits the services started from, cores (scenario order).
    pub fn with_initial_limits(mut self, limits: Vec<f64>) -> RunInfo {
        self.initial_limits = limits;
        self
    }

    /// The CFS burst every container had, as a fraction of its quota.
    pub fn with_burst(mut self, fraction: f64) -> RunInfo {
        self.burst = fraction;
        self
    }

    /// The load's mix cycle ([`RunInfo::mix_cycle_s`]).
    pub fn with_mix_cycle(mut self, cycle_s: usize) -> RunInfo {
        self.mix_cycle_s = cycle_s;
        self
    }

    /// How the trace was replayed.
    pub fn with_workload(mut self, multiplier: f64, ramp_s: usize) -> RunInfo {
        self.multiplier = multiplier;
        self.ramp_s = ramp_s;
        self
    }

    /// Open-loop Poisson or closed-loop users.
    pub fn with_load(mut self, load: Load) -> RunInfo {
        self.load = load;
        self
    }

    /// Which scalers ran, from which targets, under which Tower.
    pub fn with_control(
        mut self,
        scaler: ScalerKind,
        targets: Targets,
        tower: TowerKind,
    ) -> RunInfo {
        self.scaler = scaler.name().into();
        self.targets = targets;
        self.tower = tower.name().into();
        self.explore = tower.explore();
        self.tower_revision = if tower == TowerKind::None {
            0
        } else {
            controller::TOWER_REVISION
        };
        self
    }

    /// Two lines for people: what ran, and how it went.
    pub fn report(&self) -> String {
        let s = &self.summary;
        format!(
            "{} / {} / {} targets {} tower {}  seed {}  ({}{})\n\
             allocation {:.2} cores  usage {:.2} cores  P99 {:.1} ms (SLO {} ms: {})  P50 {:.1} ms  mean {:.1} RPS  throttle ratio {:.3}",
            self.scenario,
            self.trace,
            self.scaler,
            self.targets,
            self.tower,
            self.seed,
            self.source,
            if self.complete { "" } else { ", incomplete" },
            s.allocation,
            s.usage,
            s.p99_ms,
            self.slo_ms,
            match (s.slo_met, s.stopped_s) {
                (true, _) => "met".to_string(),
                (false, None) => "MISSED".to_string(),
                (false, Some(t)) => format!("MISSED, certain at {t:.0} s: stopped there"),
            },
            s.p50_ms,
            s.mean_rps,
            s.throttle_ratio
        ) + &self.report_by_request()
    }

    /// One line per request type (none for a single-type mix): where the tail comes from.
    fn report_by_request(&self) -> String {
        let types = &self.summary.by_request;
        if types.len() < 2 {
            return String::new();
        }
        let width = types.iter().map(|t| t.request.len()).max().unwrap_or(0);
        types
            .iter()
            .map(|t| {
                let l = &t.latencies;
                format!(
                    "\n  {:width$}  P50 {:7.1} ms  P99 {:7.1} ms  {} requests{}",
                    t.request,
                    l.p50_ms,
                    l.p99_ms,
                    l.requests,
                    if l.incomplete > 0 {
                        format!(" ({} unfinished)", l.incomplete)
                    } else {
                        String::new()
                    }
                )
            })
            .collect()
    }

    /// A small, valid example (for docs and tests).
    pub fn example() -> Self {
        RunInfo {
            format_version: FORMAT_VERSION,
            source: "sim".into(),
            scenario: "example".into(),
            scenario_source: "builtin:example".into(),
            scenario_digest: String::new(),
            trace: "constant-10".into(),
            load: Load::Poisson,
            multiplier: 1.0,
            ramp_s: 0,
            scaler: "captain".into(),
            targets: Targets::new(0.1, 0.1),
            tower: "none".into(),
            explore: 0.0,
            tower_revision: 0,
            model_revision: 0,
            seed: 1,
            slo_ms: 100.0,
            services: vec![("a".into(), 1)],
            complete: true,
            summary: Summary::default(),
            gaps: Vec::new(),
            initial_limits: vec![4.0],
            burst: 0.0,
            mix_cycle_s: 0,
        }
    }
}

/// The numbers a run is judged by (design.md section 4).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Time-weighted mean of the summed limits from 210 s on, in cores.
    pub allocation: f64,
    /// Mean CPU actually used over the same span, in cores.
    pub usage: f64,
    /// Mean latency of the requests after the ramp.
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    /// P99 over all requests that arrived after the ramp, by the one SLO rule
    /// ([`Latencies::judge`]: unfinished requests count as slower than any).
    pub p99_ms: f64,
    pub mean_rps: f64,
    /// Requests judged (arrived after the ramp) that completed.
    pub requests: u64,
    /// Requests judged that had not completed when the run ended.
    pub incomplete: u64,
    pub slo_met: bool,
    /// Fraction of CFS periods (with work) that were throttled, over all services.
    pub throttle_ratio: f64,
    /// Time-weighted mean of the targets in force over the judged minutes (those after the
    /// ramp): the fixed targets of a run without a Tower, what the Tower held otherwise.
    /// 0 in older records.
    #[serde(default)]
    pub mean_target1: f64,
    #[serde(default)]
    pub mean_target2: f64,
    /// Set when the run ended early, at this simulated second, because its SLO verdict was
    /// already certain to be a miss ([`RunPlan::stop_when_missed`]): every other figure then
    /// covers the run up to that second, and the P99 only the requests sent by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_s: Option<f64>,
    /// The same latencies per request type of the mix, in the scenario's order, judged by the
    /// same rule: which requests make the tail. Empty in older records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_request: Vec<RequestLatencies>,
}

/// One request type's latencies over a run ([`Summary::by_request`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestLatencies {
    pub request: String,
    #[serde(flatten)]
    pub latencies: Latencies,
}

impl Summary {
    /// A summary whose latency fields come from the SLO rule's verdict.
    pub fn new(
        latencies: Latencies,
        allocation: f64,
        usage: f64,
        mean_rps: f64,
        throttle_ratio: f64,
    ) -> Summary {
        Summary {
            allocation,
            usage,
            mean_ms: latencies.mean_ms,
            p50_ms: latencies.p50_ms,
            p90_ms: latencies.p90_ms,
            p99_ms: latencies.p99_ms,
            mean_rps,
            requests: latencies.requests,
            incomplete: latencies.incomplete,
            slo_met: latencies.slo_met,
            throttle_ratio,
            mean_target1: 0.0,
            mean_target2: 0.0,
            stopped_s: None,
            by_request: Vec::new(),
        }
    }

    /// Sets the per-request-type latencies: each type's judged latencies (`completed`, its
    /// requests that arrived after the ramp and completed) and how many of its judged
    /// requests never completed, judged against `slo_ms` as the run is.
    pub fn with_by_request<'a>(
        mut self,
        types: impl IntoIterator<Item = (&'a str, &'a hdrhistogram::Histogram<u64>, u64)>,
        slo_ms: f64,
    ) -> Summary {
        self.by_request = types
            .into_iter()
            .map(|(request, completed, incomplete)| RequestLatencies {
                request: request.to_string(),
                latencies: Latencies::judge(completed, incomplete, slo_ms),
            })
            .collect();
        self
    }

    /// Sets the mean targets from the run's minutes: those that start at or after `ramp_s`
    /// (all of them when none does).
    pub fn with_mean_targets(mut self, minutes: &[(u32, Targets)], ramp_s: usize) -> Summary {
        let judged = |m: &&(u32, Targets)| m.0 as usize * 60 >= ramp_s;
        let mut picked: Vec<&(u32, Targets)> = minutes.iter().filter(judged).collect();
        if picked.is_empty() {
            picked = minutes.iter().collect();
        }
        if let Some(first) = picked.first() {
            // A target held throughout is reported exactly, not as a sum divided back.
            let mean = |f: fn(&Targets) -> f64| {
                if picked.iter().all(|m| f(&m.1) == f(&first.1)) {
                    f(&first.1)
                } else {
                    picked.iter().map(|m| f(&m.1)).sum::<f64>() / picked.len() as f64
                }
            };
            self.mean_target1 = mean(|t| t.group1);
            self.mean_target2 = mean(|t| t.group2);
        }
        self
    }
}

/// Throttled periods out of periods with work, 0 when there were none.
pub fn throttle_ratio(throttled: u64, periods: u64) -> f64 {
    if periods > 0 {
        throttled as f64 / periods as f64
    } else {
        0.0
    }
}

/// One minute of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MinuteRow {
    pub minute: u32,
    /// Requests per second arriving during the minute.
    pub rps: f64,
    /// Requests that completed during the minute.
    pub completed: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Time-weighted mean of the summed limits, in cores.
    pub allocation: f64,
    pub allocation_group1: f64,
    pub allocation_group2: f64,
    /// CPU used, in cores.
    pub usage: f64,
    /// Targets in force during the minute.
    pub target1: f64,
    pub target2: f64,
}

/// One second of one service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRow {
    /// End of the second.
    pub t: u32,
    pub service: String,
    /// Limit at the end of the second, in cores.
    pub limit: f64,
    /// Cores used during the second.
    pub usage: f64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    /// nr_throttled / nr_periods over the second (0 when idle).
    pub throttle_ratio: f64,
}

impl ServiceRow {
    /// A row with its throttle ratio computed from the counts.
    pub fn new(
        t: u32,
        service: &str,
        limit: f64,
        usage: f64,
        nr_periods: u64,
        nr_throttled: u64,
    ) -> ServiceRow {
        ServiceRow {
            t,
            service: service.to_string(),
            limit,
            usage,
            nr_periods,
            nr_throttled,
            throttle_ratio: throttle_ratio(nr_throttled, nr_periods),
        }
    }
}

/// One second of one request type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestRow {
    /// End of the second.
    pub t: u32,
    pub request: String,
    /// Requests of this type sent during the second.
    pub sent: u64,
    /// Answers (successful ones, live) received during the second.
    pub completed: u64,
}

/// Streams a record to a directory.
pub struct RecordWriter {
    dir: PathBuf,
    minutes: csv::Writer<BufWriter<File>>,
    services: Option<csv::Writer<BufWriter<File>>>,
    requests: Option<csv::Writer<BufWriter<File>>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RecordError + '_ {
    move |cause| RecordError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

impl RecordWriter {
    /// Creates (or, with `force`, reuses) `dir`; `services` also writes `services.csv` and
    /// `requests.csv`.
    pub fn create(dir: &Path, force: bool, services: bool) -> Result<Self, RecordError> {
        let info = dir.join("run.json");
        if info.exists() {
            if !force {
                return Err(RecordError::Exists(dir.to_path_buf()));
            }
            std::fs::remove_file(&info).map_err(io(&info))?;
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let open = |name: &str| -> Result<csv::Writer<BufWriter<File>>, RecordError> {
            let path = dir.join(name);
            let f = File::create(&path).map_err(io(&path))?;
            Ok(csv::Writer::from_writer(BufWriter::new(f)))
        };
        let minutes = open("minutes.csv")?;
        let per_second = |name: &str| {
            if services {
                open(name).map(Some)
            } else {
                let stale = dir.join(name);
                if stale.exists() {
                    std::fs::remove_file(&stale).map_err(io(&stale))?;
                }
                Ok(None)
            }
        };
        Ok(RecordWriter {
            dir: dir.to_path_buf(),
            minutes,
            services: per_second("services.csv")?,
            requests: per_second("requests.csv")?,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn wants_services(&self) -> bool {
        self.services.is_some()
    }

    pub fn minute(&mut self, row: &MinuteRow) -> Result<(), RecordError> {
        let path = self.dir.join("minutes.csv");
        self.minutes
            .serialize(row)
            .map_err(|cause| RecordError::Csv { path, cause })
    }

    pub fn service(&mut self, row: &ServiceRow) -> Result<(), RecordError> {
        if let Some(w) = &mut self.services {
            w.serialize(row).map_err(|cause| RecordError::Csv {
                path: self.dir.join("services.csv"),
                cause,
            })?;
        }
        Ok(())
    }

    pub fn request(&mut self, row: &RequestRow) -> Result<(), RecordError> {
        if let Some(w) = &mut self.requests {
            w.serialize(row).map_err(|cause| RecordError::Csv {
                path: self.dir.join("requests.csv"),
                cause,
            })?;
        }
        Ok(())
    }

    /// Saves the Tower's memory next to the record.
    pub fn tower(&self, memory: &TowerMemory) -> Result<(), RecordError> {
        write_json(&self.dir.join("tower.json"), memory)
    }

    /// Flushes the CSVs and writes `run.json`: the record is complete.
    pub fn finish(mut self, info: &RunInfo) -> Result<(), RecordError> {
        let flush = |w: &mut csv::Writer<BufWriter<File>>, name: &str| {
            let path = self.dir.join(name);
            w.flush().map_err(io(&path))
        };
        flush(&mut self.minutes, "minutes.csv")?;
        if let Some(w) = &mut self.services {
            flush(w, "services.csv")?;
        }
        if let Some(w) = &mut self.requests {
            flush(w, "requests.csv")?;
        }
        write_json(&self.dir.join("run.json"), info)
    }
}

/// Writes pretty JSON (with a trailing newline) to `path`.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RecordError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|cause| RecordError::Json {
        path: path.to_path_buf(),
        cause,
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(io(path))
}

/// Reads JSON from `path`, naming the file (and line) on error.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, RecordError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|cause| RecordError::Json {
        path: path.to_path_buf(),
        cause,
    })
}

/// A record read back from disk.
#[derive(Debug, Clone)]
pub struct Record {
    pub dir: PathBuf,
    pub info: RunInfo,
    pub minutes: Vec<MinuteRow>,
}

impl Record {
    /// Reads `run.json` and `minutes.csv` (services.csv is read on demand: it can be large).
    pub fn read(dir: &Path) -> Result<Record, RecordError> {
        let info_path = dir.join("run.json");
        if !info_path.exists() {
            return Err(RecordError::NotARecord(dir.to_path_buf()));
        }
        let info: RunInfo = read_json(&info_path)?;
        if info.format_version > FORMAT_VERSION {
            return Err(RecordError::Version {
                path: info_path,
                found: info.format_version,
            });
        }
        let minutes = read_csv(&dir.join("minutes.csv"))?;
        Ok(Record {
            dir: dir.to_path_buf(),
            info,
            minutes,
        })
    }

    /// The per-second service rows, if the run wrote them.
    pub fn services(&self) -> Result<Option<Vec<ServiceRow>>, RecordError> {
        let path = self.dir.join("services.csv");
        if !path.exists() {
            return Ok(None);
        }
        read_csv(&path).map(Some)
    }

    /// The request log (every request's send time and type), if the run wrote one (live
    /// runs do).
    pub fn arrivals(&self) -> Result<Option<arrivals::Arrivals>, RecordError> {
        let path = self.dir.join(arrivals::FILE);
        if !path.exists() {
            return Ok(None);
        }
        arrivals::Arrivals::read(&path).map(Some)
    }

    /// The per-second request rows, if the run wrote them (records from before they existed
    /// have none).
    pub fn requests(&self) -> Result<Option<Vec<RequestRow>>, RecordError> {
        let path = self.dir.join("requests.csv");
        if !path.exists() {
            return Ok(None);
        }
        read_csv(&path).map(Some)
    }
}

fn read_csv<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, RecordError> {
    let mut r = csv::Reader::from_path(path).map_err(|cause| RecordError::Csv {
        path: path.to_path_buf(),
        cause,
    })?;
    r.deserialize()
        .collect::<Result<Vec<T>, _>>()
        .map_err(|cause| RecordError::Csv {
            path: path.to_path_buf(),
            cause,
        })
}

/// For `skip_serializing_if`: a field at its default of zero is left out of `run.json`, so
/// records without the feature stay as they were.
fn is_zero<T: Default + PartialEq>(x: &T) -> bool {
    *x == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `info` as a finished record on disk gives it back.
    fn written_and_read(info: &RunInfo) -> RunInfo {
        let dir = tempfile::tempdir().unwrap();
        RecordWriter::create(dir.path(), false, false)
            .unwrap()
            .finish(info)
            .unwrap();
        Record::read(dir.path()).unwrap().info
    }

    #[test]
    fn gaps_are_optional_and_round_trip() {
        let mut info = RunInfo::example();
        let text = serde_json::to_string(&info).unwrap();
        assert!(!text.contains("gaps"), "no gaps, no field: {text}");
        info.gaps.push(Gap {
            service: "a".into(),
            container: "a".into(),
            node: "n1".into(),
            from_s: 10,
            to_s: None,
            reason: "agent lost".into(),
        });
        let back = written_and_read(&info);
        assert_eq!(back, info);
        assert!(!back.gaps[0].covers(9) && back.gaps[0].covers(10) && back.gaps[0].covers(99));
        let closed = Gap {
            to_s: Some(12),
            ..back.gaps[0].clone()
        };
        assert!(closed.covers(11) && !closed.covers(12));
    }

    #[test]
    fn latencies_per_request_type_round_trip_and_older_records_have_none() {
        let mut info = RunInfo::example();
        let text = serde_json::to_string(&info).unwrap();
        assert!(!text.contains("by_request"), "none, no field: {text}");
        // A fast type, and a slow one with a request that never finished.
        let (mut fast, mut slow) = (latency::histogram(), latency::histogram());
        for ms in 1..=100u64 {
            fast.record(ms * 100).unwrap();
            slow.record(ms * 10_000).unwrap();
        }
        info.summary = info
            .summary
            .with_by_request([("fast", &fast, 0), ("slow", &slow, 1)], 500.0);
        let by = &info.summary.by_request;
        assert!(by[0].latencies.slo_met && by[0].latencies.p99_ms < 10.0);
        assert!(
            !by[1].latencies.slo_met,
            "the unfinished request is the P99: {by:?}"
        );
        assert_eq!(
            (by[1].latencies.requests, by[1].latencies.incomplete),
            (100, 1)
        );
        let report = info.report();
        assert!(
            report.contains("\n  fast  P50") && report.contains("100 requests (1 unfinished)"),
            "{report}"
        );
        assert_eq!(written_and_read(&info), info);
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        RecordWriter::create(dir.path(), false, true)
            .unwrap()
            .finish(&RunInfo::example())
            .unwrap();
        let e = RecordWriter::create(dir.path(), false, true).err().unwrap();
        assert!(matches!(e, RecordError::Exists(_)), "{e}");
        assert!(e.to_string().contains("refusing to overwrite"), "{e}");
        assert!(RecordWriter::create(dir.path(), true, false).is_ok());
        assert!(
            !dir.path().join("services.csv").exists(),
            "stale services.csv removed"
        );
    }

    #[test]
    fn unfinished_runs_are_not_records() {
        let dir = tempfile::tempdir().unwrap();
        let _w = RecordWriter::create(dir.path(), false, false).unwrap();
        let e = Record::read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a run record"), "{e}");
    }

    #[test]
    fn round_trips_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RecordWriter::create(dir.path(), false, true).unwrap();
        let s = ServiceRow {
            t: 1,
            service: "a".into(),
            limit: 2.5,
            usage: 1.25,
            nr_periods: 10,
            nr_throttled: 3,
            throttle_ratio: 0.3,
        };
        w.service(&s).unwrap();
        w.finish(&RunInfo::example()).unwrap();
        let r = Record::read(dir.path()).unwrap();
        assert_eq!(r.services().unwrap().unwrap(), vec![s]);
        assert_eq!(r.info, RunInfo::example());
    }

    #[test]
    fn corrupt_csv_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        RecordWriter::create(dir.path(), false, false)
            .unwrap()
            .finish(&RunInfo::example())
            .unwrap();
        std::fs::write(dir.path().join("minutes.csv"), "minute,rps\nx,1\n").unwrap();
        let e = Record::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("minutes.csv"), "{e}");
    }
}
