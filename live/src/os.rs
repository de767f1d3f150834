//! The few operating-system calls the live side needs that the standard library lacks, each
//! wrapped once, with why it is sound: CPU clocks, signals, the parent-death signal, and the
//! "stop" signals a process should end cleanly on.

/// CPU time this process has used (user + system), seconds.
pub fn process_cpu_seconds() -> f64 {
    // SAFETY: `rusage` is plain old data (all-zero is a valid value) and getrusage only
    // writes into the struct it is given; RUSAGE_SELF is always a valid target.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

pub use demo::thread_cpu_seconds;

/// The CPUs online on this machine (not this process's cgroup quota, which is what
/// `std::thread::available_parallelism` reports inside a limited container).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf reads a system setting and has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}

/// Raises the calling thread's CPU weight (nice -5) where permitted (root), so that time-critical
/// work (the agent's 100-ms control ticks) starts on time on a busy node; false otherwise.
pub fn prefer_this_thread() -> bool {
    // SAFETY: gettid has no memory effects; setpriority changes a scheduling attribute of the
    // calling thread only (on Linux, PRIO_PROCESS with a thread id names one thread).
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, -5) == 0
    }
}

/// Sends `sig` to process `pid`; false when there is no such process (or no permission).
/// The caller must know that `pid` is still the process it means (e.g. an unreaped child).
pub fn signal(pid: u32, sig: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory effects; a positive pid names one process, never a group.
    pid > 0 && unsafe { libc::kill(pid, sig) } == 0
}

/// Asks the kernel to send this process SIGTERM when its parent dies, so that a worker whose
/// supervisor was killed still ends through its clean (quota-restoring) path.
pub fn terminate_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of the calling process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
}

/// Resolves at the first SIGTERM or SIGINT (Ctrl-C): the signals on which the binaries end
/// cleanly. Needs a Tokio runtime with IO enabled.
pub async fn stop_requested() -> std::io::Result<()> {
    use tokio::signal::unix::{signal as on, SignalKind};
    let mut term = on(SignalKind::terminate())?;
    let mut int = on(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_clocks_advance_with_work() {
        let (p0, t0) = (process_cpu_seconds(), thread_cpu_seconds());
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_seconds() - t0 > 0.01);
        assert!(process_cpu_seconds() - p0 > 0.01);
    }

    #[test]
    fn online_cpus_are_counted() {
        let n = online_cpus();
        let listed = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        assert_eq!(n, listed);
    }

    #[test]
    fn signal_refuses_pids_that_are_not_one_process() {
        assert!(!signal(0, 0), "0 would signal our process group");
        assert!(!signal(u32::MAX, 0), "-1 would signal every process");
        assert!(signal(std::process::id(), 0), "signal 0 probes our own pid");
    }
}
