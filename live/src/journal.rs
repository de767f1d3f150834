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

use crate::cgroup::{Quota, Version};
use crate::LiveError;

/// One group's original setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub version: Version,
    /// The group's directory (the `cpu` controller's on v1), absolute.
    pub dir: PathBuf,
    pub original: Quota,
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

    fn save(&self) -> Result<(), LiveError> {
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
    /// Returns the names restored.
    pub fn restore_file(path: &Path) -> Result<Vec<String>, LiveError> {
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
        for (name, e) in &entries {
            if !e.dir.exists() {
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

fn write_original(e: &Entry) -> Result<(), LiveError> {
    let write = |file: &str, text: String| {
        let p = e.dir.join(file);
        std::fs::write(&p, format!("{text}\n")).map_err(|x| LiveError::Cgroup {
            path: p,
            reason: x.to_string(),
        })
    };
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

    #[test]
    fn journal_round_trip_and_restore() {
        let dir = tempfile::tempdir().unwrap();
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
            },
        )
        .unwrap();
        j.add(
            "gone",
            Entry {
                version: Version::V2,
                dir: dir.path().join("nope"),
                original,
            },
        )
        .unwrap();
        assert!(path.exists());
        let restored = Journal::restore_file(&path).unwrap();
        assert_eq!(restored, vec!["web".to_string()]);
        assert_eq!(
            std::fs::read_to_string(g.join("cpu.max")).unwrap(),
            "max 100000\n"
        );
        assert!(!path.exists(), "removed after restoring");
        assert!(
            Journal::restore_file(&path).unwrap().is_empty(),
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
        let e = Journal::restore_file(&path).unwrap_err();
        assert!(e.to_string().contains("not a journal"), "{e}");
    }
}
