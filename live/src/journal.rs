//! Original limits on disk: the promise that a crashed agent's quotas get put back.
//!
//! Before the agent first writes a group's quota, it records the group's original quota and
//! period here (written to a temporary file and renamed, so the journal is never half
//! written). After a clean restore the journal is removed. If the agent dies without
//! restoring (SIGKILL, OOM, a node reboot of the agent only), whoever finds the journal restores
//! from it: the agent's supervisor as soon as the worker dies, or the next agent at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::{Quota, Root, Version};
use crate::LiveError;

/// One group's original setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub version: Version,
    /// The group's directory (the `cpu` controller's on v1), absolute.
    pub dir: PathBuf,
    pub original: Quota,
    /// The quotas the agent wrote last (the one before and the one it was about to write):
    /// a group whose quota is neither was changed by someone else since, and a stale entry
    /// must not undo that. Empty in older journals (restored unconditionally).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<Quota>,
    /// The group's original CFS burst, microseconds (absent where the kernel has none, and
    /// in older journals: the burst is then left alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_burst_us: Option<u64>,
}

/// The journal file and what it holds.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
}

impl Journal {
    /// A journal at `path` (nothing is written until the first entry).
    pub fn new(path: &Path) -> Journal {
        Journal {
            path: path.to_path_buf(),
            entries: BTreeMap::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Records a group's original setting (first write wins: the original is the original).
    pub fn add(&mut self, name: &str, entry: Entry) -> Result<(), LiveError> {
        if self.entries.contains_key(name) {
            return Ok(());
        }
        self.entries.insert(name.to_string(), entry);
        self.save()
    }

    /// Notes that the agent is about to write `q` to `name`'s group, after `before`; saved
    /// with the next [`save`](Self::save), which must succeed before the write.
    pub fn note_write(&mut self, name: &str, before: Quota, q: Quota) {
        if let Some(e) = self.entries.get_mut(name) {
            e.recent = vec![before, q];
        }
    }

    /// Forgets a group (after it was restored, or it disappeared).
    pub fn remove(&mut self, name: &str) -> Result<(), LiveError> {
        if self.entries.remove(name).is_some() {
            self.save()?;
        }
        Ok(())
    }

    fn err(&self, reason: impl ToString) -> LiveError {
        LiveError::Journal {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// Writes the journal to disk (or removes it when it holds nothing).
    pub fn save(&self) -> Result<(), LiveError> {
        if self.entries.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(self.err(e)),
            };
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        }
        let tmp = self.path.with_extension("tmp");
        let text = serde_json::to_string_pretty(&self.entries).map_err(|e| self.err(e))?;
        std::fs::write(&tmp, text).map_err(|e| self.err(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.err(e))
    }

    /// Restores every group a journal at `path` lists (if there is one) and removes it.
    /// Groups that no longer exist are skipped (their container is gone; nothing is throttled).
    /// Only groups under `root` are written, and only files that exist: a journal is a file
    /// on disk, and a crafted one must not make the agent write anywhere else. Returns the
    /// names restored.
    pub fn restore_file(path: &Path, root: &Root) -> Result<Vec<String>, LiveError> {
        let err = |reason: String| LiveError::Journal {
            path: path.to_path_buf(),
            reason,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(err(e.to_string())),
        };
        let entries: BTreeMap<String, Entry> =
            serde_json::from_str(&text).map_err(|e| err(format!("not a journal: {e}")))?;
        let mut restored = Vec::new();
        let mut failed = Vec::new();
        let roots: Vec<&PathBuf> = std::iter::once(&root.cpu).chain(&root.cpuacct).collect();
        for (name, e) in &entries {
            if !e.dir.exists() {
                continue;
            }
            let inside = e
                .dir
                .canonicalize()
                .is_ok_and(|d| roots.iter().any(|r| d.starts_with(r) && d != **r));
            if !inside {
                failed.push(format!(
                    "{name}: {} is not a group under the cgroup root {}",
                    e.dir.display(),
                    root.cpu.display()
                ));
                continue;
            }
            if let Some(now) =
                current_quota(e).filter(|q| !e.recent.is_empty() && !e.recent.contains(q))
            {
                tracing::warn!(
                    container = %name,
                    quota = ?now,
                    "not restoring: the quota was changed by someone else after the agent last wrote it"
                );
                continue;
            }
            match write_original(e) {
                Ok(()) => restored.push(name.clone()),
                Err(x) => failed.push(format!("{name}: {x}")),
            }
        }
        if !failed.is_empty() {
            return Err(err(format!("could not restore: {}", failed.join("; "))));
        }
        std::fs::remove_file(path).map_err(|e| err(e.to_string()))?;
        Ok(restored)
    }
}

/// The group's quota as the kernel has it now, if it can be read.
fn current_quota(e: &Entry) -> Option<Quota> {
    let read = |f: &str| std::fs::read_to_string(e.dir.join(f)).ok();
    match e.version {
        Version::V1 => {
            let quota: i64 = read("cpu.cfs_quota_us")?.trim().parse().ok()?;
            let period_us: u64 = read("cpu.cfs_period_us")?.trim().parse().ok()?;
            Some(Quota {
                quota_us: u64::try_from(quota).ok(),
                period_us,
            })
        }
        Version::V2 => crate::cgroup::parse_cpu_max(read("cpu.max")?.trim()),
    }
}

fn write_original(e: &Entry) -> Result<(), LiveError> {
    // Never creates a file: a group's control files exist, anything else is not a group.
    let write = |file: &str, text: String| {
        let p = e.dir.join(file);
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&p)
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{text}\n").as_bytes()))
            .map_err(|x| LiveError::Cgroup {
                path: p,
                reason: x.to_string(),
            })
    };
    // The kernel refuses a burst above the quota: a smaller burst goes back before the quota,
    // a larger one after it (the burst in force is within the quota in force).
    let burst_file = match e.version {
        Version::V1 => "cpu.cfs_burst_us",
        Version::V2 => "cpu.max.burst",
    };
    let burst_now: Option<u64> = std::fs::read_to_string(e.dir.join(burst_file))
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let burst = e
        .original_burst_us
        .filter(|b| burst_now.is_some_and(|now| now != *b));
    if let Some(b) = burst.filter(|b| burst_now.is_some_and(|now| *b <= now)) {
        write(burst_file, b.to_string())?;
    }
    write_quota(e, &write)?;
    if let Some(b) = burst.filter(|b| burst_now.is_some_and(|now| *b > now)) {
        write(burst_file, b.to_string())?;
    }
    Ok(())
}

fn write_quota(
    e: &Entry,
    write: &dyn Fn(&str, String) -> Result<(), LiveError>,
) -> Result<(), LiveError> {
    match e.version {
        Version::V1 => {
            write("cpu.cfs_period_us", e.original.period_us.to_string())?;
            write(
                "cpu.cfs_quota_us",
                e.original.quota_us.map_or("-1".into(), |q| q.to_string()),
            )
        }
        Version::V2 => write(
            "cpu.max",
            match e.original.quota_us {
                Some(q) => format!("{q} {}", e.original.period_us),
                None => format!("max {}", e.original.period_us),
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2-like hierarchy in a temporary directory.
    fn fake_root() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu\n").unwrap();
        let root = Root::detect(dir.path()).unwrap();
        (dir, root)
    }

    #[test]
    fn journal_round_trip_and_restore() {
        let (dir, root) = fake_root();
        let g = dir.path().join("g");
        std::fs::create_dir(&g).unwrap();
        std::fs::write(g.join("cpu.max"), "5000 100000\n").unwrap();
        let path = dir.path().join("state/journal.json");
        let mut j = Journal::new(&path);
        let original = Quota {
            quota_us: None,
            period_us: 100_000,
        };
        j.add(
            "web",
            Entry {
                version: Version::V2,
                dir: g.clone(),
                original,
                recent: Vec::new(),
                original_burst_us: None,
            },
        )
        .unwrap();
        // A second add keeps the first original.
        j.add(
            "web",
            Entry {
                version: Version::V2,
                dir: g.clone(),
                original: Quota {
                    quota_us: Some(1),
                    period_us: 1,
                },
                recent: Vec::new(),
                original_burst_us: None,
            },
        )
        .unwrap();
        j.add(
            "gone",
            Entry {
                version: Version::V2,
                dir: dir.path().join("nope"),
                original,
                recent: Vec::new(),
                original_burst_us: None,
            },
        )
        .unwrap();
        assert!(path.exists());
        let restored = Journal::restore_file(&path, &root).unwrap();
        assert_eq!(restored, vec!["web".to_string()]);
        assert_eq!(
            std::fs::read_to_string(g.join("cpu.max")).unwrap(),
            "max 100000\n"
        );
        assert!(!path.exists(), "removed after restoring");
        assert!(
            Journal::restore_file(&path, &root).unwrap().is_empty(),
            "no journal: nothing to do"
        );
    }

    #[test]
    fn empty_journal_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.json");
        let mut j = Journal::new(&path);
        let e = Entry {
            version: Version::V1,
            dir: dir.path().to_path_buf(),
            original: Quota {
                quota_us: None,
                period_us: 100_000,
            },
            recent: Vec::new(),
            original_burst_us: None,
        };
        j.add("a", e).unwrap();
        assert!(path.exists());
        j.remove("a").unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_corrupt_journal_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.json");
        std::fs::write(&path, "{not json").unwrap();
        let (_d, root) = fake_root();
        let e = Journal::restore_file(&path, &root).unwrap_err();
        assert!(e.to_string().contains("not a journal"), "{e}");
    }

    #[test]
    fn a_stale_entry_does_not_undo_a_later_change() {
        let (dir, root) = fake_root();
        let g = dir.path().join("g");
        std::fs::create_dir(&g).unwrap();
        let path = dir.path().join("j.json");
        let q = |us: u64| Quota {
            quota_us: Some(us),
            period_us: 100_000,
        };
        let entry = |recent: Vec<Quota>| Entry {
            version: Version::V2,
            dir: g.clone(),
            original: q(20_000),
            recent,
            original_burst_us: None,
        };
        // The agent last wrote 30000 (after 40000); someone has set 70000 since.
        std::fs::write(g.join("cpu.max"), "70000 100000\n").unwrap();
        let mut j = Journal::new(&path);
        j.add("web", entry(vec![q(40_000), q(30_000)])).unwrap();
        assert!(Journal::restore_file(&path, &root).unwrap().is_empty());
        assert_eq!(
            std::fs::read_to_string(g.join("cpu.max")).unwrap(),
            "70000 100000\n"
        );
        // A crash between the note and the write, or after it: the original comes back.
        for now in ["40000 100000\n", "30000 100000\n"] {
            std::fs::write(g.join("cpu.max"), now).unwrap();
            let mut j = Journal::new(&path);
            j.add("web", entry(vec![q(40_000), q(30_000)])).unwrap();
            assert_eq!(Journal::restore_file(&path, &root).unwrap(), vec!["web"]);
            assert_eq!(
                std::fs::read_to_string(g.join("cpu.max")).unwrap(),
                "20000 100000\n"
            );
        }
    }

    #[test]
    fn a_crafted_journal_writes_nothing_outside_the_root() {
        let (_d, root) = fake_root();
        let elsewhere = tempfile::tempdir().unwrap();
        let path = elsewhere.path().join("j.json");
        let mut j = Journal::new(&path);
        j.add(
            "evil",
            Entry {
                version: Version::V1,
                dir: elsewhere.path().to_path_buf(),
                original: Quota {
                    quota_us: None,
                    period_us: 100_000,
                },
                recent: Vec::new(),
                original_burst_us: None,
            },
        )
        .unwrap();
        let e = Journal::restore_file(&path, &root).unwrap_err();
        assert!(
            e.to_string().contains("not a group under the cgroup root"),
            "{e}"
        );
        assert!(!elsewhere.path().join("cpu.cfs_quota_us").exists());
        assert!(path.exists(), "kept for a person to look at");
    }
}
