//! Fixtures shared by the tests that run on this machine's kernel: real cgroups, real
//! processes, real time. Those tests are `#[ignore = "needs root and writable cgroup v1/v2"]`
//! (CI runs them with `--ignored` where it can); here they fail loudly, never skip, when the
//! machine cannot do what they need.
#![allow(dead_code)] // each test binary uses part of it

pub mod stubs;

use std::path::Path;
use std::process::Child;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use live::cgroup::Root;
use live::groups::Groups;

/// Tests that burn real CPU or time the kernel run one at a time within a binary.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `cond` every 50 ms until it holds; fails the test after 15 s.
pub fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// This machine's cgroup hierarchy.
pub fn cgroup_root() -> Root {
    Root::detect(Path::new("/sys/fs/cgroup"))
        .unwrap_or_else(|e| panic!("this test needs a cgroup hierarchy at /sys/fs/cgroup: {e}"))
}

/// A group name no other test or process uses: `autothrottle-test-<pid>-<tag>`.
pub fn fresh_name(tag: &str) -> String {
    format!("autothrottle-test-{}-{tag}", std::process::id())
}

/// `n` fresh groups (removed when dropped, even on failure).
pub fn groups(tag: &str, n: usize) -> (Root, Groups) {
    let root = cgroup_root();
    let g = Groups::create(&root, &fresh_name(tag), n)
        .unwrap_or_else(|e| panic!("this test needs root and writable cgroups: {e}"));
    (root, g)
}

/// A child process that is stopped (SIGTERM, then SIGKILL after 5 s) when dropped, so that a
/// failing assertion leaves no process, and so no group, behind.
pub struct Proc(pub Child);

impl Proc {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

// The child's own methods (`id`, `wait`, `kill`) on the wrapper.
impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // Not reaped yet (try_wait says it runs), so the pid is still this child's.
            live::os::signal(self.0.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A port for a demo app's first service; the two after it are free as well.
pub fn free_port() -> u16 {
    free_ports(3)
}

/// The first of `n` consecutive free ports (a demo app's services listen on them).
pub fn free_ports(n: u16) -> u16 {
    // Below the ephemeral range (32768-60999 here), whose ports any outgoing connection may
    // take between this check and the app's bind, and never a range handed out before in this
    // process: the paper-apps test starts three apps' demos at once, and two ranges found free
    // at the same moment overlapped (an app's stub then called another app's services).
    static NEXT: std::sync::Mutex<u16> = std::sync::Mutex::new(0);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    if *next == 0 {
        *next = 20_000 + (std::process::id() % 40) as u16 * 250;
    }
    loop {
        if *next as u32 + n as u32 >= 32_000 {
            *next = 20_000;
        }
        let p = *next;
        *next += n;
        if (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
}

/// One plain HTTP/1.1 GET (connection closed after it); the status code, or `None` when
/// nothing answered within 5 s. For waiting on test servers without an HTTP client.
pub fn http_get(addr: &str, path: &str) -> Option<u16> {
    use std::io::{BufRead, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}
