//! Reading and writing one container's CPU controller, on cgroup v1 or v2.
//!
//! | | v1 | v2 |
//! |---|---|---|
//! | counters | `cpu.stat` (nr_periods, nr_throttled, throttled_time ns) + `cpuacct.usage` (ns) | `cpu.stat` (usage_usec, nr_periods, nr_throttled, throttled_usec) |
//! | limit | `cpu.cfs_quota_us` (-1: none) with `cpu.cfs_period_us` | `cpu.max`: `QUOTA PERIOD` or `max PERIOD` |
//! | burst (Linux 5.14+, optional) | `cpu.cfs_burst_us` | `cpu.max.burst` |
//!
//! A burst lets a period spend quota earlier periods left unused, up to the burst above the
//! quota. The kernel refuses a burst above the quota, so when both change they are written
//! in the order that keeps `burst <= quota` at every step: a smaller burst before the quota,
//! a larger one after it.
//!
//! Files are opened once and re-read from offset 0 every sample (cgroup files regenerate their
//! content on every read at offset 0), limits are written only when they change, a quota is never
//! written below the kernel's 1 ms minimum, and nothing is ever written outside the configured
//! root: every group's real path is checked to lie under it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use controller::CpuSample;
use serde::{Deserialize, Serialize};

use crate::LiveError;

/// The kernel refuses quotas under 1 ms.
pub const MIN_QUOTA_US: u64 = 1000;

/// How big a container's CFS burst is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Burst {
    /// A fraction (0 to 1) of the quota in force, so that it follows the limit.
    Fraction(f64),
    /// Microseconds per period; held at the quota when the quota is smaller (the kernel
    /// refuses more).
    Micros(u64),
}

/// The longest burst accepted, microseconds (a second: ten periods of a whole core).
pub const MAX_BURST_US: u64 = 1_000_000;

impl Burst {
    /// Refuses what the kernel could not take, and bursts over the protocol's limit.
    pub fn validate(&self) -> Result<(), String> {
        self.check_fraction()?;
        match *self {
            Burst::Micros(us) if us > MAX_BURST_US => Err(format!(
                "a burst of {us} us is over the limit of {MAX_BURST_US} us"
            )),
            _ => Ok(()),
        }
    }

    /// Refuses a fraction outside 0 to 1, which would make the burst meaningless.
    fn check_fraction(&self) -> Result<(), String> {
        match *self {
            Burst::Fraction(f) if !(f.is_finite() && (0.0..=1.0).contains(&f)) => Err(format!(
                "a burst fraction must be from 0 to 1 (the kernel refuses a burst above the quota), got {f}"
            )),
            _ => Ok(()),
        }
    }

    /// The burst for a quota of `quota_us`, microseconds.
    pub fn for_quota(&self, quota_us: u64) -> u64 {
        match *self {
            Burst::Fraction(f) => ((quota_us as f64 * f).round() as u64).min(quota_us),
            Burst::Micros(us) => us.min(quota_us),
        }
    }
}

/// Which cgroup hierarchy a root is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

/// A CPU bandwidth setting as the kernel stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Microseconds per period; `None` is "no limit".
    pub quota_us: Option<u64>,
    pub period_us: u64,
}

impl Quota {
    /// The limit in cores (`INFINITY` when unlimited).
    pub fn cores(&self) -> f64 {
        match self.quota_us {
            Some(q) => q as f64 / self.period_us as f64,
            None => f64::INFINITY,
        }
    }

    /// The quota for `cores` at this period, never below the kernel's minimum.
    pub fn for_cores(cores: f64, period_us: u64) -> Quota {
        Quota {
            quota_us: cores
                .is_finite()
                .then(|| ((cores * period_us as f64).round() as u64).max(MIN_QUOTA_US)),
            period_us,
        }
    }
}

/// Where the hierarchy is mounted: `/sys/fs/cgroup` (v2), or the `cpu` and `cpuacct` mounts
/// of v1 (`/sys/fs/cgroup/cpu`, `/sys/fs/cgroup/cpuacct`, often the same directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub version: Version,
    /// v2: the unified root; v1: the `cpu` controller's root.
    pub cpu: PathBuf,
    /// v1 only: the `cpuacct` controller's root.
    pub cpuacct: Option<PathBuf>,
}

impl Root {
    /// Detects the hierarchy at `root`: v2 when it has `cgroup.controllers`, else v1 with `cpu`
    /// and `cpuacct` under it (or `root` itself being a v1 cpu,cpuacct mount).
    pub fn detect(root: &Path) -> Result<Root, LiveError> {
        let canon = canonical(root)?;
        if canon.join("cgroup.controllers").exists() {
            return Ok(Root {
                version: Version::V2,
                cpu: canon,
                cpuacct: None,
            });
        }
        let (cpu, acct) = (canon.join("cpu"), canon.join("cpuacct"));
        if cpu.join("cpu.cfs_quota_us").exists() {
            let acct = if acct.join("cpuacct.usage").exists() {
                acct
            } else {
                cpu.clone()
            };
            return Ok(Root {
                version: Version::V1,
                cpu: canonical(&cpu)?,
                cpuacct: Some(canonical(&acct)?),
            });
        }
        if canon.join("cpu.cfs_quota_us").exists() && canon.join("cpuacct.usage").exists() {
            return Ok(Root {
                version: Version::V1,
                cpu: canon.clone(),
                cpuacct: Some(canon),
            });
        }
        Err(LiveError::Cgroup {
            path: root.to_path_buf(),
            reason: "neither a cgroup v2 root (no cgroup.controllers) nor a v1 root (no cpu/cpu.cfs_quota_us)".into(),
        })
    }

    /// The directories of the group `rel` (relative to the root), checked to lie under it.
    fn dirs(&self, rel: &Path) -> Result<(PathBuf, Option<PathBuf>), LiveError> {
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(LiveError::Cgroup {
                path: rel.to_path_buf(),
                reason: "a group must be a relative path without '..'".into(),
            });
        }
        let inside = |root: &Path| -> Result<PathBuf, LiveError> {
            let dir = canonical(&root.join(rel))?;
            if !dir.starts_with(root) {
                return Err(LiveError::Cgroup {
                    path: dir,
                    reason: format!("resolves outside the cgroup root {}", root.display()),
                });
            }
            Ok(dir)
        };
        let cpu = inside(&self.cpu)?;
        let acct = match &self.cpuacct {
            Some(a) => Some(inside(a)?),
            None => None,
        };
        Ok((cpu, acct))
    }
}

fn canonical(p: &Path) -> Result<PathBuf, LiveError> {
    p.canonicalize().map_err(|e| LiveError::Cgroup {
        path: p.to_path_buf(),
        reason: e.to_string(),
    })
}

/// One container's CPU controller, opened.
#[derive(Debug)]
pub struct Cgroup {
    pub name: String,
    pub version: Version,
    pub dir: PathBuf,
    /// Where `cpuacct.usage` lives (v1: the cpuacct hierarchy, often not `dir`).
    acct_dir: PathBuf,
    stat: File,
    usage: Option<File>,
    quota: File,
    period: Option<File>,
    /// The burst file, where the kernel has one.
    burst_file: Option<File>,
    original: Quota,
    current: Quota,
    /// The burst found at open and the one in force, microseconds (`None`: no burst file).
    original_burst: Option<u64>,
    current_burst: Option<u64>,
    /// The burst to keep with every quota written (`None`: the burst is left alone).
    burst: Option<Burst>,
    buf: Vec<u8>,
}

/// Opens a control file for reading and writing if the kernel has it.
fn open_if_exists(path: &Path) -> Result<Option<File>, LiveError> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LiveError::Cgroup {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

fn open(path: &Path, write: bool) -> Result<File, LiveError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| LiveError::Cgroup {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

impl Cgroup {
    /// Opens group `rel` under `root` and remembers its current limit as the original.
    pub fn open(name: &str, root: &Root, rel: &Path) -> Result<Cgroup, LiveError> {
        let (dir, acct) = root.dirs(rel)?;
        let acct_dir = acct.unwrap_or_else(|| dir.clone());
        let mut g = match root.version {
            Version::V1 => Cgroup {
                name: name.to_string(),
                version: Version::V1,
                stat: open(&dir.join("cpu.stat"), false)?,
                usage: Some(open(&acct_dir.join("cpuacct.usage"), false)?),
                acct_dir,
                quota: open(&dir.join("cpu.cfs_quota_us"), true)?,
                period: Some(open(&dir.join("cpu.cfs_period_us"), true)?),
                burst_file: open_if_exists(&dir.join("cpu.cfs_burst_us"))?,
                dir,
                original: Quota {
                    quota_us: None,
                    period_us: 100_000,
                },
                current: Quota {
                    quota_us: None,
                    period_us: 100_000,
                },
                original_burst: None,
                current_burst: None,
                burst: None,
                buf: Vec::with_capacity(512),
            },
            Version::V2 => Cgroup {
                name: name.to_string(),
                version: Version::V2,
                stat: open(&dir.join("cpu.stat"), false)?,
                usage: None,
                acct_dir,
                quota: open(&dir.join("cpu.max"), true)?,
                period: None,
                burst_file: open_if_exists(&dir.join("cpu.max.burst"))?,
                dir,
                original: Quota {
                    quota_us: None,
                    period_us: 100_000,
                },
                current: Quota {
                    quota_us: None,
                    period_us: 100_000,
                },
                original_burst: None,
                current_burst: None,
                burst: None,
                buf: Vec::with_capacity(512),
            },
        };
        g.original = g.read_quota()?;
        g.current = g.original;
        g.original_burst = g.read_burst()?;
        g.current_burst = g.original_burst;
        Ok(g)
    }

    /// The file's path, for errors: `cpuacct.usage` is in the cpuacct hierarchy on v1.
    fn path(&self, which: CgroupFile) -> PathBuf {
        match which {
            CgroupFile::Usage => self.acct_dir.join(which.file(self.version)),
            _ => self.dir.join(which.file(self.version)),
        }
    }

    fn read(&mut self, which: CgroupFile) -> Result<&str, LiveError> {
        let file = match which {
            CgroupFile::Stat => &self.stat,
            CgroupFile::Usage => self.usage.as_ref().expect("v1 has cpuacct.usage"),
            CgroupFile::Quota => &self.quota,
            CgroupFile::Period => self.period.as_ref().expect("v1 has cpu.cfs_period_us"),
            CgroupFile::Burst => self.burst_file.as_ref().expect("checked by the caller"),
        };
        self.buf.clear();
        self.buf.resize(4096, 0);
        let mut filled = 0;
        loop {
            let n = file
                .read_at(&mut self.buf[filled..], filled as u64)
                .map_err(|e| LiveError::Cgroup {
                    path: self.path(which),
                    reason: e.to_string(),
                })?;
            if n == 0 {
                break;
            }
            filled += n;
            if filled == self.buf.len() {
                self.buf.resize(filled * 2, 0);
            }
        }
        self.buf.truncate(filled);
        std::str::from_utf8(&self.buf).map_err(|_| LiveError::Cgroup {
            path: self.path(which),
            reason: "not text".into(),
        })
    }

    fn bad(&self, which: CgroupFile, text: &str) -> LiveError {
        LiveError::Cgroup {
            path: self.path(which),
            reason: format!("unexpected content {text:?}"),
        }
    }

    /// The limit the kernel has now.
    pub fn read_quota(&mut self) -> Result<Quota, LiveError> {
        match self.version {
            Version::V1 => {
                let q = self.read(CgroupFile::Quota)?.trim().to_string();
                let p = self.read(CgroupFile::Period)?.trim().to_string();
                let period_us: u64 = p.parse().map_err(|_| self.bad(CgroupFile::Period, &p))?;
                let quota: i64 = q.parse().map_err(|_| self.bad(CgroupFile::Quota, &q))?;
                Ok(Quota {
                    quota_us: (quota >= 0).then_some(quota as u64),
                    period_us,
                })
            }
            Version::V2 => {
                let text = self.read(CgroupFile::Quota)?.trim().to_string();
                parse_cpu_max(&text).ok_or_else(|| self.bad(CgroupFile::Quota, &text))
            }
        }
    }

    /// The burst the kernel has now, microseconds (`None`: this kernel has no CFS burst).
    pub fn read_burst(&mut self) -> Result<Option<u64>, LiveError> {
        if self.burst_file.is_none() {
            return Ok(None);
        }
        let text = self.read(CgroupFile::Burst)?.trim().to_string();
        text.parse()
            .map(Some)
            .map_err(|_| self.bad(CgroupFile::Burst, &text))
    }

    /// Keeps `burst` with every quota written from now on (`None`: leaves the burst alone).
    /// Refused where the kernel has no burst file (Linux before 5.14).
    pub fn set_burst(&mut self, burst: Option<Burst>) -> Result<(), LiveError> {
        if let Some(b) = burst {
            // Only what would make the burst meaningless; the protocol's own limit on
            // microseconds is checked where bursts come in ([`Burst::validate`]), not here,
            // where a group's original burst (any size the kernel took) is put back.
            b.check_fraction().map_err(|reason| LiveError::Cgroup {
                path: self.dir.clone(),
                reason,
            })?;
            if self.burst_file.is_none() {
                return Err(LiveError::Cgroup {
                    path: self.path(CgroupFile::Burst),
                    reason: "this kernel has no CFS burst (it needs Linux 5.14 or later); run without a burst".into(),
                });
            }
        }
        self.burst = burst;
        Ok(())
    }

    /// Whether the kernel has a CFS burst for this group.
    pub fn supports_burst(&self) -> bool {
        self.burst_file.is_some()
    }

    /// The burst that goes with quota `q`, microseconds (`None`: left as it is).
    fn burst_for(&self, q: Quota) -> Option<u64> {
        match (self.burst, q.quota_us) {
            (Some(b), Some(us)) => Some(b.for_quota(us)),
            // No limit: the burst means nothing, so it stays as it is.
            _ => None,
        }
    }

    /// Whether writing `q` would change anything: the quota, or the burst that goes with it.
    pub fn needs_write(&self, q: Quota) -> bool {
        q != self.current
            || self
                .burst_for(q)
                .is_some_and(|b| Some(b) != self.current_burst)
    }

    /// The burst in force, microseconds (`None`: no burst file).
    pub fn current_burst(&self) -> Option<u64> {
        self.current_burst
    }

    /// The cumulative counters now, stamped `t`.
    pub fn sample(&mut self, t: f64) -> Result<CpuSample, LiveError> {
        let stat = self.read(CgroupFile::Stat)?.to_string();
        let field = |name: &str| -> Option<u64> {
            stat.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
                .and_then(|v| v.trim().parse().ok())
        };
        let missing = |f: &str| LiveError::Cgroup {
            path: self.dir.join(CgroupFile::Stat.file(self.version)),
            reason: format!("no {f} in cpu.stat"),
        };
        let nr_periods = field("nr_periods").ok_or_else(|| missing("nr_periods"))?;
        let nr_throttled = field("nr_throttled").ok_or_else(|| missing("nr_throttled"))?;
        match self.version {
            Version::V1 => {
                let throttled_ns =
                    field("throttled_time").ok_or_else(|| missing("throttled_time"))?;
                let u = self.read(CgroupFile::Usage)?.trim().to_string();
                let usage_ns: u64 = u.parse().map_err(|_| self.bad(CgroupFile::Usage, &u))?;
                Ok(CpuSample {
                    t,
                    usage: usage_ns as f64 / 1e9,
                    nr_periods,
                    nr_throttled,
                    throttled_time: throttled_ns as f64 / 1e9,
                })
            }
            Version::V2 => {
                let usage_us = field("usage_usec").ok_or_else(|| missing("usage_usec"))?;
                let throttled_us =
                    field("throttled_usec").ok_or_else(|| missing("throttled_usec"))?;
                Ok(CpuSample {
                    t,
                    usage: usage_us as f64 / 1e6,
                    nr_periods,
                    nr_throttled,
                    throttled_time: throttled_us as f64 / 1e6,
                })
            }
        }
    }

    /// Applies `cores` (at the original period); writes only if the quota changes. Returns
    /// whether it wrote.
    pub fn set_limit(&mut self, cores: f64) -> Result<bool, LiveError> {
        let want = self.quota_for(cores)?;
        if !self.needs_write(want) {
            return Ok(false);
        }
        self.write_quota(want)?;
        Ok(true)
    }

    /// The quota a limit of `cores` is, at this group's period.
    pub fn quota_for(&self, cores: f64) -> Result<Quota, LiveError> {
        if cores.is_nan() || cores <= 0.0 {
            return Err(LiveError::Cgroup {
                path: self.dir.clone(),
                reason: format!("refusing to set a limit of {cores} cores"),
            });
        }
        Ok(Quota::for_cores(cores, self.original.period_us))
    }

    /// Reads the kernel's quota; when it is not the one last written here (someone else
    /// changed it), takes it as current and returns true, so the next write corrects it.
    pub fn check_drift(&mut self) -> Result<bool, LiveError> {
        let actual = self.read_quota()?;
        let burst = if self.burst.is_some() {
            self.read_burst()?
        } else {
            self.current_burst
        };
        if actual == self.current && burst == self.current_burst {
            return Ok(false);
        }
        self.current = actual;
        self.current_burst = burst;
        Ok(true)
    }

    /// Writes `q` (a value from [`quota_for`](Self::quota_for)) and the burst that goes with
    /// it.
    pub fn write_quota(&mut self, q: Quota) -> Result<(), LiveError> {
        let burst = self.burst_for(q);
        self.write_bandwidth(q, burst)
    }

    /// Writes quota `q` and, unless `None` or unchanged, burst `burst`, in the order that
    /// keeps the burst within the quota at every step (the kernel refuses it otherwise).
    fn write_bandwidth(&mut self, q: Quota, burst: Option<u64>) -> Result<(), LiveError> {
        // A burst left alone must still fit under a smaller quota, or the kernel refuses the
        // quota (the original burst is put back with the original quota).
        let burst = burst.or(match (q.quota_us, self.current_burst) {
            (Some(quota), Some(b)) if b > quota => Some(quota),
            _ => None,
        });
        let Some(b) = burst.filter(|b| Some(*b) != self.current_burst) else {
            return self.write_quota_only(q);
        };
        if b <= self.current_burst.unwrap_or(0) {
            self.write_burst(b)?;
            self.write_quota_only(q)
        } else {
            self.write_quota_only(q)?;
            self.write_burst(b)
        }
    }

    fn write_burst(&mut self, us: u64) -> Result<(), LiveError> {
        let file = self.burst_file.as_ref().ok_or_else(|| LiveError::Cgroup {
            path: self.path(CgroupFile::Burst),
            reason: "this kernel has no CFS burst".into(),
        })?;
        write_all(file, &self.path(CgroupFile::Burst), &us.to_string())?;
        self.current_burst = Some(us);
        Ok(())
    }

    fn write_quota_only(&mut self, q: Quota) -> Result<(), LiveError> {
        let (file, text) = match self.version {
            Version::V1 => {
                if q.period_us != self.current.period_us {
                    let p = q.period_us.to_string();
                    write_all(
                        self.period.as_ref().expect("v1"),
                        &self.dir.join("cpu.cfs_period_us"),
                        &p,
                    )?;
                }
                let text = match q.quota_us {
                    Some(v) => v.to_string(),
                    None => "-1".into(),
                };
                (&self.quota, text)
            }
            Version::V2 => {
                let text = match q.quota_us {
                    Some(v) => format!("{v} {}", q.period_us),
                    None => format!("max {}", q.period_us),
                };
                (&self.quota, text)
            }
        };
        write_all(
            file,
            &self.dir.join(CgroupFile::Quota.file(self.version)),
            &text,
        )?;
        self.current = q;
        Ok(())
    }

    /// Puts back the limit (and burst) found when the group was opened.
    pub fn restore(&mut self) -> Result<(), LiveError> {
        let original = self.original;
        // The burst as the kernel has it now (someone else may have changed it), so that the
        // order of the two writes is right; the quota is written unconditionally.
        if let Ok(now) = self.read_burst() {
            self.current_burst = now;
        }
        self.write_bandwidth(original, self.original_burst)
    }

    pub fn original(&self) -> Quota {
        self.original
    }

    /// The burst found when the group was opened, microseconds (`None`: no burst file).
    pub fn original_burst(&self) -> Option<u64> {
        self.original_burst
    }

    pub fn current(&self) -> Quota {
        self.current
    }
}

/// Writes a whole control value at offset 0 (and trims a regular file, for test layouts).
fn write_all(file: &File, path: &Path, text: &str) -> Result<(), LiveError> {
    let err = |e: std::io::Error| LiveError::Cgroup {
        path: path.to_path_buf(),
        reason: format!("cannot write {text:?}: {e}"),
    };
    let bytes = format!("{text}\n");
    file.write_all_at(bytes.as_bytes(), 0).map_err(err)?;
    // cgroupfs ignores the length; a plain file (a test hierarchy) must not keep a longer tail.
    if file
        .metadata()
        .map(|m| m.len() > bytes.len() as u64)
        .unwrap_or(false)
    {
        file.set_len(bytes.len() as u64).map_err(err)?;
    }
    Ok(())
}

/// Parses v2 `cpu.max`.
pub fn parse_cpu_max(text: &str) -> Option<Quota> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period_us: u64 = parts.next().map_or(Some(100_000), |p| p.parse().ok())?;
    if parts.next().is_some() || period_us == 0 {
        return None;
    }
    let quota_us = if quota == "max" {
        None
    } else {
        Some(quota.parse().ok()?)
    };
    Some(Quota {
        quota_us,
        period_us,
    })
}

/// The files of a group the agent reads and writes.
#[derive(Debug, Clone, Copy)]
enum CgroupFile {
    Stat,
    Usage,
    Quota,
    Period,
    Burst,
}

impl CgroupFile {
    fn file(self, v: Version) -> &'static str {
        match (self, v) {
            (CgroupFile::Stat, _) => "cpu.stat",
            (CgroupFile::Usage, _) => "cpuacct.usage",
            (CgroupFile::Quota, Version::V1) => "cpu.cfs_quota_us",
            (CgroupFile::Quota, Version::V2) => "cpu.max",
            (CgroupFile::Period, _) => "cpu.cfs_period_us",
            (CgroupFile::Burst, Version::V1) => "cpu.cfs_burst_us",
            (CgroupFile::Burst, Version::V2) => "cpu.max.burst",
        }
    }
}

/// Kubernetes' QoS classes, which decide where a pod's cgroup lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn parse(s: &str) -> Option<QosClass> {
        match s {
            "Guaranteed" => Some(QosClass::Guaranteed),
            "Burstable" => Some(QosClass::Burstable),
            "BestEffort" => Some(QosClass::BestEffort),
            _ => None,
        }
    }
}

/// The kubelet's cgroup driver, which decides how the path is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

/// The container's cgroup, relative to the hierarchy root, as the kubelet lays it out:
///
/// * cgroupfs: `kubepods/[burstable|besteffort/]pod<uid>/<container id>`
/// * systemd: `kubepods.slice/[kubepods-burstable.slice/]kubepods[-burstable]-pod<uid with _>.slice/<runtime>-<container id>.scope`
///
/// `container_id` is the status' `containerID` (`containerd://abc...`); the runtime prefix
/// picks the scope name (`cri-containerd-`, `crio-`, `docker-`).
pub fn kubepods_path(
    driver: Driver,
    qos: QosClass,
    pod_uid: &str,
    container_id: &str,
) -> Result<PathBuf, LiveError> {
    let (runtime, id) = container_id
        .split_once("://")
        .unwrap_or(("containerd", container_id));
    if id.is_empty() || id.contains('/') || pod_uid.is_empty() || pod_uid.contains('/') {
        return Err(LiveError::Cgroup {
            path: PathBuf::from(container_id),
            reason: format!("not a container id / pod uid pair: {container_id:?} / {pod_uid:?}"),
        });
    }
    Ok(match driver {
        Driver::Cgroupfs => {
            let mut p = PathBuf::from("kubepods");
            match qos {
                QosClass::Guaranteed => {}
                QosClass::Burstable => p.push("burstable"),
                QosClass::BestEffort => p.push("besteffort"),
            }
            p.push(format!("pod{pod_uid}"));
            p.push(id);
            p
        }
        Driver::Systemd => {
            let uid = pod_uid.replace('-', "_");
            let mut p = PathBuf::from("kubepods.slice");
            let pod = match qos {
                QosClass::Guaranteed => format!("kubepods-pod{uid}.slice"),
                QosClass::Burstable => {
                    p.push("kubepods-burstable.slice");
                    format!("kubepods-burstable-pod{uid}.slice")
                }
                QosClass::BestEffort => {
                    p.push("kubepods-besteffort.slice");
                    format!("kubepods-besteffort-pod{uid}.slice")
                }
            };
            p.push(pod);
            let prefix = match runtime {
                "containerd" => "cri-containerd",
                "cri-o" => "crio",
                "docker" => "docker",
                other => other,
            };
            p.push(format!("{prefix}-{id}.scope"));
            p
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like a v2 hierarchy with one group.
    fn v2_fixture() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu io memory\n").unwrap();
        let g = dir.path().join("app/web");
        std::fs::create_dir_all(&g).unwrap();
        std::fs::write(g.join("cpu.max"), "max 100000\n").unwrap();
        std::fs::write(
            g.join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 40\nnr_throttled 7\nthrottled_usec 350000\nnr_bursts 0\nburst_usec 0\n",
        )
        .unwrap();
        let root = Root::detect(dir.path()).unwrap();
        (dir, root)
    }

    #[test]
    fn v2_reads_counters() {
        let (_d, root) = v2_fixture();
        assert_eq!(root.version, Version::V2);
        let mut g = Cgroup::open("web", &root, Path::new("app/web")).unwrap();
        let s = g.sample(1.5).unwrap();
        assert_eq!(
            (s.t, s.usage, s.nr_periods, s.nr_throttled),
            (1.5, 2.5, 40, 7)
        );
        assert!((s.throttled_time - 0.35).abs() < 1e-12);
        assert_eq!(
            g.original(),
            Quota {
                quota_us: None,
                period_us: 100_000
            }
        );
    }

    #[test]
    fn v2_writes_only_changes_and_restores() {
        let (d, root) = v2_fixture();
        let file = d.path().join("app/web/cpu.max");
        let mut g = Cgroup::open("web", &root, Path::new("app/web")).unwrap();
        assert!(g.set_limit(2.5).unwrap());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "250000 100000\n");
        assert!(!g.set_limit(2.5).unwrap(), "unchanged: not written");
        // Under the kernel's minimum: 1 ms.
        g.set_limit(0.001).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1000 100000\n");
        assert_eq!(
            g.read_quota().unwrap(),
            Quota {
                quota_us: Some(1000),
                period_us: 100_000
            }
        );
        g.restore().unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "max 100000\n");
        assert!(g.set_limit(f64::NAN).is_err());
        assert!(g.set_limit(0.0).is_err());
    }

    #[test]
    fn a_burst_follows_the_quota_and_is_restored() {
        let (d, root) = v2_fixture();
        let mut g = Cgroup::open("web", &root, Path::new("app/web")).unwrap();
        let err = g.set_burst(Some(Burst::Fraction(0.5))).unwrap_err();
        assert!(
            err.to_string().contains("cpu.max.burst") && err.to_string().contains("5.14"),
            "{err}"
        );
        g.set_burst(None).unwrap();

        let burst = d.path().join("app/web/cpu.max.burst");
        std::fs::write(&burst, "0\n").unwrap();
        let mut g = Cgroup::open("web", &root, Path::new("app/web")).unwrap();
        assert_eq!(g.original_burst(), Some(0));
        assert!(g.set_burst(Some(Burst::Fraction(1.5))).is_err());
        // A group's original burst goes back whatever its size (only the protocol caps it).
        assert!(Burst::Micros(5 * MAX_BURST_US).validate().is_err());
        g.set_burst(Some(Burst::Micros(5 * MAX_BURST_US))).unwrap();
        g.set_burst(Some(Burst::Fraction(0.5))).unwrap();
        assert!(g.set_limit(0.4).unwrap());
        assert_eq!(std::fs::read_to_string(&burst).unwrap(), "20000\n");
        // An absolute burst is held at the quota.
        g.set_burst(Some(Burst::Micros(30_000))).unwrap();
        assert!(g.set_limit(0.4).unwrap(), "the burst changed: written");
        assert_eq!(std::fs::read_to_string(&burst).unwrap(), "30000\n");
        g.set_limit(0.2).unwrap();
        assert_eq!(std::fs::read_to_string(&burst).unwrap(), "20000\n");
        // Changed from outside: seen as drift and set back at the next write.
        std::fs::write(&burst, "5000\n").unwrap();
        assert!(g.check_drift().unwrap());
        assert!(g.set_limit(0.2).unwrap());
        assert_eq!(std::fs::read_to_string(&burst).unwrap(), "20000\n");
        g.restore().unwrap();
        assert_eq!(std::fs::read_to_string(&burst).unwrap(), "0\n");

        // A burst nobody manages is lowered with a quota below it, and comes back.
        std::fs::write(&burst, "50000\n").unwrap();
        let mut g = Cgroup::open("web", &root, Path::new("app/web")).unwrap();
        g.set_limit(0.2).unwrap();
        assert_eq!(std::fs::read_to_string(&burst).unwrap(), "20000\n");
        g.set_limit(0.8).unwrap();
        assert_eq!(
            std::fs::read_to_string(&burst).unwrap(),
            "20000\n",
            "left alone"
        );
        g.restore().unwrap();
        assert_eq!(std::fs::read_to_string(&burst).unwrap(), "50000\n");
        assert_eq!(
            std::fs::read_to_string(d.path().join("app/web/cpu.max")).unwrap(),
            "max 100000\n"
        );
    }

    #[test]
    fn refuses_paths_outside_the_root() {
        let (d, root) = v2_fixture();
        assert!(Cgroup::open("x", &root, Path::new("../etc")).is_err());
        assert!(Cgroup::open("x", &root, Path::new("/etc")).is_err());
        // A symlink that leads out of the root.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("sneaky")).unwrap();
        let e = Cgroup::open("x", &root, Path::new("sneaky")).unwrap_err();
        assert!(e.to_string().contains("outside the cgroup root"), "{e}");
    }

    #[test]
    fn bad_content_is_named() {
        let (d, root) = v2_fixture();
        std::fs::write(d.path().join("app/web/cpu.max"), "lots\n").unwrap();
        let e = Cgroup::open("web", &root, Path::new("app/web")).unwrap_err();
        assert!(
            e.to_string().contains("cpu.max") && e.to_string().contains("lots"),
            "{e}"
        );
        std::fs::write(d.path().join("app/web/cpu.max"), "max 100000\n").unwrap();
        std::fs::write(d.path().join("app/web/cpu.stat"), "usage_usec 5\n").unwrap();
        let mut g = Cgroup::open("web", &root, Path::new("app/web")).unwrap();
        let e = g.sample(0.0).unwrap_err();
        assert!(e.to_string().contains("no nr_periods"), "{e}");
    }

    #[test]
    fn v1_errors_name_the_cpuacct_file_where_it_is() {
        // Separate cpu and cpuacct mounts, as on most v1 hosts.
        let dir = tempfile::tempdir().unwrap();
        let (cpu, acct) = (dir.path().join("cpu/app"), dir.path().join("cpuacct/app"));
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::create_dir_all(&acct).unwrap();
        std::fs::write(cpu.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(cpu.join("cpu.cfs_period_us"), "100000\n").unwrap();
        std::fs::write(
            cpu.join("cpu.stat"),
            "nr_periods 1\nnr_throttled 0\nthrottled_time 0\n",
        )
        .unwrap();
        std::fs::write(acct.join("cpuacct.usage"), "many\n").unwrap();
        std::fs::write(dir.path().join("cpuacct/cpuacct.usage"), "0\n").unwrap();
        std::fs::write(dir.path().join("cpu/cpu.cfs_quota_us"), "-1\n").unwrap();
        let root = Root::detect(dir.path()).unwrap();
        assert_eq!(root.version, Version::V1);
        let mut g = Cgroup::open("web", &root, Path::new("app")).unwrap();
        let e = g.sample(0.0).unwrap_err().to_string();
        let want = acct.canonicalize().unwrap().join("cpuacct.usage");
        assert!(e.contains(&want.display().to_string()), "{e}");
    }

    #[test]
    fn cpu_max_parsing() {
        assert_eq!(
            parse_cpu_max("max 100000"),
            Some(Quota {
                quota_us: None,
                period_us: 100_000
            })
        );
        assert_eq!(
            parse_cpu_max("50000 100000"),
            Some(Quota {
                quota_us: Some(50_000),
                period_us: 100_000
            })
        );
        assert_eq!(
            parse_cpu_max("max"),
            Some(Quota {
                quota_us: None,
                period_us: 100_000
            })
        );
        assert_eq!(parse_cpu_max("x 1"), None);
        assert_eq!(parse_cpu_max("1 0"), None);
        assert_eq!(Quota::for_cores(1.5, 100_000).cores(), 1.5);
    }

    #[test]
    fn kubelet_layouts() {
        let uid = "1a2b-3c";
        let p = |d, q| kubepods_path(d, q, uid, "containerd://abc123").unwrap();
        assert_eq!(
            p(Driver::Cgroupfs, QosClass::Guaranteed),
            PathBuf::from("kubepods/pod1a2b-3c/abc123")
        );
        assert_eq!(
            p(Driver::Cgroupfs, QosClass::Burstable),
            PathBuf::from("kubepods/burstable/pod1a2b-3c/abc123")
        );
        assert_eq!(
            p(Driver::Cgroupfs, QosClass::BestEffort),
            PathBuf::from("kubepods/besteffort/pod1a2b-3c/abc123")
        );
        assert_eq!(
            p(Driver::Systemd, QosClass::Guaranteed),
            PathBuf::from("kubepods.slice/kubepods-pod1a2b_3c.slice/cri-containerd-abc123.scope")
        );
        assert_eq!(
            p(Driver::Systemd, QosClass::Burstable),
            PathBuf::from("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b_3c.slice/cri-containerd-abc123.scope")
        );
        assert_eq!(
            kubepods_path(Driver::Systemd, QosClass::BestEffort, uid, "cri-o://ff").unwrap(),
            PathBuf::from("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b_3c.slice/crio-ff.scope")
        );
        assert!(kubepods_path(Driver::Systemd, QosClass::Burstable, uid, "containerd://").is_err());
        assert!(kubepods_path(
            Driver::Systemd,
            QosClass::Burstable,
            "../x",
            "containerd://a"
        )
        .is_err());
    }
}
