//! Real cgroups this program creates for itself (`live demo`, `live bench`, the kernel tests):
//! created under a fresh name, removed on drop.
//!
//! Only groups this module created are ever touched; on drop every process in them is moved
//! back to the hierarchy's root (and killed if it is one of ours), then the groups are removed,
//! deepest first, even when a test fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::cgroup::{Root, Version};
use crate::LiveError;

/// A set of fresh groups `<base>/g0 .. g<n-1>` under a root.
pub struct Groups {
    root: Root,
    base: String,
    names: Vec<String>,
    children: Vec<Child>,
    /// Every directory this value created (hierarchy root, directory), in creation order: the
    /// only ones it ever removes, so that a name already in use is left alone.
    created: Vec<(PathBuf, PathBuf)>,
}

fn err(path: &Path, e: impl ToString) -> LiveError {
    LiveError::Cgroup {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl Groups {
    /// Creates `n` groups under `<root>/<base>`; fails (for the caller to skip) when the root
    /// is not writable.
    pub fn create(root: &Root, base: &str, n: usize) -> Result<Groups, LiveError> {
        let names: Vec<String> = (0..n).map(|i| format!("g{i}")).collect();
        Groups::create_named(root, base, &names)
    }

    /// Creates one group per name under `<root>/<base>`.
    pub fn create_named(root: &Root, base: &str, names: &[String]) -> Result<Groups, LiveError> {
        let mut g = Groups {
            root: root.clone(),
            base: base.to_string(),
            names: Vec::new(),
            children: Vec::new(),
            created: Vec::new(),
        };
        for dir in g.hierarchy_dirs() {
            let b = dir.join(base);
            std::fs::create_dir(&b).map_err(|e| err(&b, e))?;
            g.created.push((dir.clone(), b.clone()));
            if root.version == Version::V2 {
                // Let the children have a cpu controller.
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+cpu");
                let _ = std::fs::write(b.join("cgroup.subtree_control"), "+cpu");
            }
        }
        for name in names {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(err(Path::new(name), "not a usable group name"));
            }
            for dir in g.hierarchy_dirs() {
                let d = dir.join(base).join(name);
                std::fs::create_dir(&d).map_err(|e| err(&d, e))?;
                g.created.push((dir.clone(), d));
            }
            g.names.push(name.clone());
        }
        Ok(g)
    }

    fn hierarchy_dirs(&self) -> Vec<PathBuf> {
        let mut v = vec![self.root.cpu.clone()];
        if let Some(a) = &self.root.cpuacct {
            if a != &self.root.cpu {
                v.push(a.clone());
            }
        }
        v
    }

    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// `name -> group path relative to the root`, as the agent knows containers.
    pub fn known(&self) -> BTreeMap<String, PathBuf> {
        self.names
            .iter()
            .map(|n| (n.clone(), self.rel(n)))
            .collect()
    }

    pub fn rel(&self, name: &str) -> PathBuf {
        PathBuf::from(&self.base).join(name)
    }

    /// The group's directory in the `cpu` hierarchy.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.cpu.join(self.rel(name))
    }

    /// Starts `cmd` and moves it into group `name`; it is killed when the groups are dropped.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<u32, LiveError> {
        let child = cmd
            .spawn()
            .map_err(|e| err(Path::new(cmd.get_program()), e))?;
        let pid = child.id();
        self.children.push(child);
        for dir in self.hierarchy_dirs() {
            let procs = dir.join(self.rel(name)).join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(|e| err(&procs, e))?;
        }
        Ok(pid)
    }

    /// Starts a process that burns `threads` cores inside group `name`.
    pub fn burn(&mut self, name: &str, threads: usize) -> Result<u32, LiveError> {
        // The shell waits for a line on stdin, so that it is in the group before it forks.
        let script =
            format!("read go; for i in $(seq {threads}); do (while :; do :; done) & done; wait");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| err(Path::new("sh"), e))?;
        let pid = child.id();
        let mut stdin = child.stdin.take().expect("piped");
        self.children.push(child);
        for dir in self.hierarchy_dirs() {
            let procs = dir.join(self.rel(name)).join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(|e| err(&procs, e))?;
        }
        use std::io::Write;
        stdin
            .write_all(b"go\n")
            .map_err(|e| err(Path::new("sh"), e))?;
        Ok(pid)
    }

    fn tasks(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        for c in &mut self.children {
            // Kill the shell's whole process group of burners: they are our own processes.
            let _ = Command::new("pkill")
                .arg("-KILL")
                .arg("-P")
                .arg(c.id().to_string())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deepest first: children before their base.
        for (hierarchy, d) in self.created.iter().rev() {
            for pid in Groups::tasks(d) {
                let _ = std::fs::write(hierarchy.join("cgroup.procs"), &pid);
            }
            // A killed process can take a moment to leave its group.
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_in_use_is_refused_and_left_alone() {
        // A v1-like tree (one cpu,cpuacct hierarchy) with an empty group someone else made
        // (as removable as a real cgroup directory).
        let dir = tempfile::tempdir().unwrap();
        let cpu = dir.path().join("cpu");
        std::fs::create_dir_all(cpu.join("theirs")).unwrap();
        std::fs::write(cpu.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        let root = Root::detect(dir.path()).unwrap();
        assert!(Groups::create(&root, "theirs", 1).is_err());
        assert!(cpu.join("theirs").is_dir(), "not ours: not removed");
        // A fresh name is created and removed, deepest first.
        let g = Groups::create(&root, "ours", 2).unwrap();
        assert!(g.dir("g1").is_dir());
        drop(g);
        assert!(!cpu.join("ours").exists());
        assert!(cpu.join("theirs").is_dir());
    }
}
