//! One container's CPU under Linux CFS bandwidth control: the heart of the model.
//!
//! * Calls in service share the CPU by processor sharing, each getting at most one core (a call
//!   is one thread), and at most `threads` calls are in service; the rest wait in FIFO order.
//! * The node's cores are shared too: when the node's busy calls outnumber its cores, every call
//!   on the node slows down to `cores / busy` of a core (the engine sets that [`rate`]). Or, on a
//!   node scheduled per CPU ([`Container::with_cpus`], a scenario's `scheduler = "per-cpu"`),
//!   as the kernel's per-CPU run queues do: a thread that becomes runnable goes to the CPU with
//!   the fewest runnable threads and stays there until it stops, and each CPU is shared equally
//!   among its threads, so a CPU can idle while two threads share another. Measured on this
//!   machine's kernel (docs/RESULTS.md, "How the kernel shares two CPUs"), that costs the tail
//!   what processor sharing does not.
//! * Bandwidth control: every 100 ms period the container may use `limit * 100 ms` of CPU. Once
//!   it is spent, every call stalls until the period ends and the period counts as throttled:
//!   this burst-then-stall behaviour is why throttling predicts latency. Per CPU, as the kernel
//!   does, each CPU takes the quota from the period's pool in slices of up to 5 ms, throttles on
//!   its own when its slice and the pool are spent (while another CPU may still hold runtime),
//!   and, when it has nothing left to run, keeps 1 ms and gives the rest back, which the
//!   kernel's slack timer hands to throttled CPUs once the pool holds more than a slice; what
//!   a CPU holds carries over to the next period. Measured on this machine's kernel
//!   (docs/RESULTS.md, "A quota of one slice"): a service at 60% of a one-slice quota
//!   throttles twice as often on two CPUs as on one.
//! * Where a period begins is the engine's business (each container's periods on a grid of
//!   its own, as the kernel's per-cgroup timers run them); a limit written between two
//!   refills ([`Container::write_limit_on`]) refills the quota at once and ends a throttle,
//!   as writing `cpu.cfs_quota_us` does.
//! * Counters are kept exactly as `cpu.stat` / `cpuacct.usage` report them: `nr_periods` counts
//!   periods in which the container had work (per CPU also the idle one after work, which the
//!   kernel's period timer counts before it stops), `nr_throttled` those in which it ran out of
//!   quota, `throttled_time` the stalled time, `usage` the CPU consumed.
//!
//! Between events every call in service on one CPU (under processor sharing: on the node)
//! progresses at the same rate, so the container keeps one virtual clock `v` per such lane
//! (CPU-seconds each of its calls has received) and a call finishes when its lane's `v` reaches
//! its start value plus its demand: a min-heap on that finish value makes the next completion an
//! O(1) look-up and each completion O(log n).
//!
//! * Garbage collection (optional, [`scenarios::Runtime`]): the calls' CPU allocates memory,
//!   and every `trigger_cpu` core-seconds of it starts a collection of `work` core-seconds split
//!   over many threads at once (Go: every P the calls leave idle; a JVM: its GC threads, with
//!   every call stopped until it is done). The collection spends the same quota as the calls,
//!   so a collection on 32 threads can spend a period's quota in a few milliseconds and stall
//!   every call to the period's end: the sub-second burstiness of real containers.
//!
//! * CFS burst (optional, [`Container::with_burst`]; Linux 5.14+, `cpu.cfs_burst_us` on v1,
//!   `cpu.max.burst` on v2): quota a period leaves unused carries over to the next, up to the
//!   burst, so a period may spend up to `quota + burst`. This follows the kernel's refill
//!   (`__refill_cfs_bandwidth_runtime`): at each period's start the runtime becomes
//!   `min(left + quota, quota + burst)`, and a period that used more than its quota counts in
//!   `nr_bursts` and adds the excess to `burst_time`, as `cpu.stat` reports them.
//!
//! * Background work (optional, [`Container::with_background`]): CPU a container uses whatever
//!   its requests (a scenario's `background_cores`, which `sim calibrate` fits): that share of
//!   a period's work starts at every period, beside the calls, spending the same quota.
//!
//! * Periodic work (optional, [`Container::with_periodic`]): work on a timer (a scenario's
//!   `periodic`: a database's checkpoint, a diagnostics sample), started with a period every so
//!   many periods, beside the calls, spending the same quota: a burst that can throttle a
//!   container whose quota is sized to its calls.
//!
//! [`rate`]: Container::set_rate

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use controller::CpuSample;
use scenarios::{Periodic, Runtime};

/// CFS period length, seconds.
pub const PERIOD: f64 = 0.1;
/// CPU amounts (core-seconds) below this count as zero: absorbs floating-point rounding so that
/// an event scheduled for "the moment the quota runs out" really finds it spent.
const EPS: f64 = 1e-10;
/// Per CPU, the runtime a CPU takes from the cgroup's pool at a time: the kernel's
/// `sched_cfs_bandwidth_slice_us` (5000 by default), seconds.
const SLICE: f64 = 0.005;
/// Per CPU, the runtime a CPU keeps when it has nothing of the cgroup left to run (the
/// kernel's `min_cfs_rq_runtime`, 1 ms); the rest goes back to the pool.
const KEEP: f64 = 0.001;
/// Per CPU, how long after runtime comes back to the pool the kernel's slack timer hands it
/// to the throttled CPUs (`cfs_bandwidth_slack_period`, 5 ms), seconds.
const SLACK_DELAY: f64 = 0.005;
/// Per CPU, the slack timer neither starts nor acts this close to the period's refill
/// (`min_bandwidth_expiration`, 2 ms), seconds.
const SLACK_MARGIN: f64 = 0.002;
/// The `call` of a collector thread's segment: not a call, never reported as done.
const COLLECTOR: u32 = u32::MAX;
/// The `call` of the background work's segment ([`Container::with_background`]).
const BACKGROUND: u32 = u32::MAX - 1;

/// A piece of CPU work for one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    pub call: u32,
    /// CPU demand in core-seconds.
    pub work: f64,
}

#[derive(Debug, Clone, Copy)]
struct Running {
    finish_v: f64,
    seq: u64,
    call: u32,
}

impl PartialEq for Running {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Running {}
impl PartialOrd for Running {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Running {
    /// Reversed, so that `BinaryHeap` pops the earliest finisher first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .finish_v
            .total_cmp(&self.finish_v)
            .then(other.seq.cmp(&self.seq))
    }
}

/// The cumulative counters of a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub usage: f64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_time: f64,
    /// Periods that used more than their quota (only possible with a burst).
    pub nr_bursts: u64,
    /// CPU used above the quota in those periods, core-seconds.
    pub burst_time: f64,
}

impl Counters {
    pub fn sample(&self, t: f64) -> CpuSample {
        CpuSample {
            t,
            usage: self.usage,
            nr_periods: self.nr_periods,
            nr_throttled: self.nr_throttled,
            throttled_time: self.throttled_time,
        }
    }
}

/// The container's segments in service that progress at one rate: all of them under processor
/// sharing, those on one CPU under per-CPU scheduling.
#[derive(Debug, Clone, Default)]
struct Lane {
    running: BinaryHeap<Running>,
    /// Virtual time: CPU-seconds received by each segment in the lane.
    v: f64,
    /// Cores each segment in the lane gets now (0 while throttled).
    rate: f64,
    /// Calls among `running` (the rest are collector and background threads).
    calls: usize,
    /// Per CPU: runtime this CPU holds, taken from the pool a slice at a time (the kernel's
    /// `cfs_rq->runtime_remaining`; kept across periods, as since Linux 5.4).
    local: f64,
    /// Per CPU: this CPU found its runtime and the pool spent, and runs nothing of the
    /// container until the next period.
    throttled: bool,
    throttled_since: f64,
}

/// A container's lanes: the first kept inline, as it is the only one under processor sharing,
/// the common case (with it inline and the one-lane paths of `next_event` and `take_due_on`,
/// processor-sharing runs are as fast as before there were lanes; looping over a `Vec` of
/// lanes everywhere cost them 8-10%).
#[derive(Debug, Clone)]
struct Lanes {
    first: Lane,
    rest: Vec<Lane>,
}

impl Lanes {
    fn new(n: usize, rate: f64) -> Lanes {
        let lane = Lane {
            rate,
            ..Lane::default()
        };
        Lanes {
            rest: vec![lane.clone(); n - 1],
            first: lane,
        }
    }

    fn len(&self) -> usize {
        1 + self.rest.len()
    }

    fn get(&self, k: usize) -> Option<&Lane> {
        if k == 0 {
            Some(&self.first)
        } else {
            self.rest.get(k - 1)
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Lane> {
        std::iter::once(&self.first).chain(self.rest.iter())
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Lane> {
        std::iter::once(&mut self.first).chain(self.rest.iter_mut())
    }

    /// Takes the lanes' threads off the node's per-CPU counts (they stay in their lanes, to
    /// come back to the same CPUs). Nothing to do under processor sharing (`cpus` empty).
    fn leave_cpus(&self, cpus: &mut [u32]) {
        for (n, lane) in cpus.iter_mut().zip(self.iter()) {
            if !lane.throttled {
                *n -= lane.running.len() as u32;
            }
        }
    }

    /// Puts the lanes' threads back on the per-CPU counts of the CPUs they were on.
    fn rejoin_cpus(&self, cpus: &mut [u32]) {
        for (n, lane) in cpus.iter_mut().zip(self.iter()) {
            if !lane.throttled {
                *n += lane.running.len() as u32;
            }
        }
    }
}

impl std::ops::Index<usize> for Lanes {
    type Output = Lane;
    fn index(&self, k: usize) -> &Lane {
        if k == 0 {
            &self.first
        } else {
            &self.rest[k - 1]
        }
    }
}

impl std::ops::IndexMut<usize> for Lanes {
    fn index_mut(&mut self, k: usize) -> &mut Lane {
        if k == 0 {
            &mut self.first
        } else {
            &mut self.rest[k - 1]
        }
    }
}

/// One container (cgroup) on a node.
#[derive(Debug, Clone)]
pub struct Container {
    pub node: usize,
    threads: usize,
    /// One lane (processor sharing) or one per CPU of the node (per-CPU scheduling).
    lanes: Lanes,
    waiting: VecDeque<Segment>,
    /// When the lanes' `v` and the counters were last brought up to date.
    last: f64,
    limit: f64,
    quota_left: f64,
    /// What `quota_left` was when the period opened: the period's runtime.
    period_runtime: f64,
    /// Carry-over allowed, as a fraction of the quota (0: no CFS burst).
    burst: f64,
    /// Per CPU: the quota is handed to the CPUs in slices and each CPU throttles on its own
    /// (`quota_left` is then the pool the slices come from, and `throttled` stays false).
    slices: bool,
    /// Per CPU: where the search for the least loaded CPU starts next.
    next_cpu: usize,
    /// Per CPU: when the slack timer fires (`INFINITY`: not started).
    slack_at: f64,
    /// When the current period ends (the slack timer's margin is from it).
    period_end: f64,
    throttled: bool,
    throttled_since: f64,
    period_had_work: bool,
    /// Per CPU ([`Container::with_cpus`]), `nr_periods` counts as the kernel's period timer
    /// does: it runs on through one idle period after the last work, and counts it.
    timer_counts_idle_period: bool,
    last_period_had_work: bool,
    period_throttled: bool,
    counters: Counters,
    seq: u64,
    /// Calls in service, over all lanes (what `threads` bounds).
    calls_running: usize,
    /// Boxed: most containers have none, and the hot loop walks containers.
    gc: Option<Box<Collector>>,
    /// CPU time charged per unit of work done, under processor sharing: 1, or more on an SMT
    /// node whose busy threads share physical cores (each is charged its whole time on a
    /// hardware thread, at a fraction of a core's speed).
    charge: f64,
    /// CPU used whatever the requests, cores: a share of it starts at every period.
    background: f64,
    /// Work on timers (empty for most containers: no allocation, nothing to walk).
    timers: Vec<Timer>,
}

/// A timer's work ([`Container::with_periodic`]) and the periods until it next starts.
#[derive(Debug, Clone, Copy)]
struct Timer {
    work: Periodic,
    left: u32,
}

/// The state of a container's garbage collector.
#[derive(Debug, Clone)]
struct Collector {
    /// The runtime as compiled: at its full heap when it follows the load.
    full: Runtime,
    runtime: Runtime,
    /// Request CPU since the last collection started (what drives allocation).
    since_last: f64,
    /// Collector threads still working on the current collection (0: none running).
    active: usize,
    /// Calls stopped by a stop-the-world collection: (remaining work, seq, call).
    frozen: Vec<(f64, u64, u32)>,
    collections: u64,
}

impl Container {
    /// A container with `threads` workers and an initial limit in cores (`INFINITY`: none).
    pub fn new(node: usize, threads: u32, limit: f64) -> Self {
        Container {
            charge: 1.0,
            node,
            threads: threads.max(1) as usize,
            lanes: Lanes::new(1, 1.0),
            waiting: VecDeque::new(),
            last: 0.0,
            limit,
            quota_left: quota(limit),
            period_runtime: quota(limit),
            burst: 0.0,
            slices: false,
            next_cpu: 0,
            slack_at: f64::INFINITY,
            period_end: PERIOD,
            throttled: false,
            throttled_since: 0.0,
            period_had_work: false,
            timer_counts_idle_period: false,
            last_period_had_work: false,
            period_throttled: false,
            counters: Counters::default(),
            seq: 0,
            calls_running: 0,
            gc: None,
            background: 0.0,
            timers: Vec::new(),
        }
    }

    /// The same container doing `work` on timers: each starts when `first` more periods have
    /// opened (1: with the next), then every `every` periods, `work` core-seconds on `threads`
    /// threads at once, as background work (never a call, counted in `cpu.stat`).
    pub fn with_periodic(mut self, timers: impl IntoIterator<Item = (Periodic, u32)>) -> Self {
        self.timers = timers
            .into_iter()
            .map(|(work, first)| Timer {
                work,
                left: first.max(1),
            })
            .collect();
        self
    }

    fn start_timers(&mut self, cpus: &mut [u32]) {
        for i in 0..self.timers.len() {
            let t = &mut self.timers[i];
            t.left -= 1;
            if t.left > 0 {
                continue;
            }
            t.left = t.work.every;
            let (work, threads) = (t.work.work, t.work.threads);
            self.start_unattended(work, threads, cpus);
        }
    }

    /// Starts `work` core-seconds that are no call's (background or a timer's) on `threads`
    /// threads at once.
    fn start_unattended(&mut self, work: f64, threads: u32, cpus: &mut [u32]) {
        for _ in 0..threads {
            self.push(work / threads as f64, BACKGROUND, cpus);
        }
        self.period_had_work = true;
    }

    /// A collector whose heap follows the load sizes its next collections to `load` (the
    /// trace's value now): a collection already running keeps its work. The caller
    /// reschedules the container, whose next trigger time this moves.
    pub fn follow_load(&mut self, load: f64) {
        let Some(gc) = &mut self.gc else { return };
        let Some(follows) = gc.full.follows else {
            return;
        };
        let (trigger, work) = follows.scale(load);
        gc.runtime.trigger_cpu = gc.full.trigger_cpu * trigger;
        gc.runtime.work = gc.full.work * work;
    }

    /// The same container with a garbage-collecting runtime.
    pub fn with_runtime(mut self, runtime: Option<Runtime>) -> Self {
        self.gc = runtime.map(|runtime| {
            Box::new(Collector {
                full: runtime,
                runtime,
                since_last: 0.0,
                active: 0,
                frozen: Vec::new(),
                collections: 0,
            })
        });
        self
    }

    /// The same container with a CFS burst of `fraction` times its quota (the kernel allows
    /// 0 to 1: `cfs_burst_us` may not exceed `cfs_quota_us`).
    pub fn with_burst(mut self, fraction: f64) -> Self {
        debug_assert!((0.0..=1.0).contains(&fraction));
        self.burst = fraction;
        self
    }

    /// The same container on a node scheduled per CPU, with `cpus` CPUs (call it first, on an
    /// idle container): each segment runs on one CPU, chosen when it starts, and progresses at
    /// `1 / n` of a core with `n` the runnable threads on that CPU. The `cpus` slice that the
    /// `*_on` methods take holds those counts for the whole node; the engine keeps it, and sets
    /// the rates from it ([`Container::set_cpu_rates`]).
    ///
    /// Its `nr_periods` then also counts the idle period after work, as the kernel's does.
    pub fn with_cpus(mut self, cpus: usize) -> Self {
        debug_assert!(cpus >= 1 && self.lanes.iter().all(|l| l.running.is_empty()));
        self.lanes = Lanes::new(cpus, 0.0);
        self.timer_counts_idle_period = true;
        self.slices = true;
        self
    }

    /// The same container using `cores` of CPU whatever its requests: each period starts with
    /// that much of a period's work, on one thread per core or part of one, beside the calls.
    pub fn with_background(self, cores: f64) -> Self {
        self.with_background_on(cores, &mut [])
    }

    /// [`with_background`](Self::with_background) on a node scheduled per CPU.
    pub fn with_background_on(mut self, cores: f64, cpus: &mut [u32]) -> Self {
        self.background = cores;
        self.start_background(cpus);
        self
    }

    fn start_background(&mut self, cpus: &mut [u32]) {
        if self.background > 0.0 {
            let threads = self.background.ceil() as u32;
            self.start_unattended(self.background * PERIOD, threads, cpus);
        }
    }

    /// Garbage collections started so far.
    pub fn collections(&self) -> u64 {
        self.gc.as_ref().map_or(0, |g| g.collections)
    }

    /// Brings the virtual clocks and the counters up to `now` at the current rates.
    #[inline]
    pub fn advance(&mut self, now: f64) {
        let dt = now - self.last;
        if dt > 0.0 {
            for lane in self.lanes.iter_mut() {
                if lane.rate > 0.0 && !lane.running.is_empty() {
                    let per_call = lane.rate * dt;
                    let used = per_call * lane.running.len() as f64 * self.charge;
                    lane.v += per_call;
                    self.counters.usage += used;
                    if self.slices {
                        lane.local -= used;
                    } else {
                        self.quota_left -= used;
                    }
                    if let Some(gc) = &mut self.gc {
                        gc.since_last += per_call * lane.calls as f64;
                    }
                }
            }
        }
        self.last = self.last.max(now);
    }

    /// Segments in service, runnable or not.
    fn in_service(&self) -> usize {
        self.lanes.iter().map(|l| l.running.len()).sum()
    }

    /// Calls that want the CPU now (0 while throttled): what the node's sharing counts.
    #[inline]
    pub fn busy(&self) -> usize {
        if self.throttled {
            0
        } else {
            self.in_service()
        }
    }

    /// Sets the per-call rate from the node's sharing (call [`advance`](Self::advance) first).
    #[inline]
    pub fn set_rate(&mut self, node_rate: f64) {
        self.set_rates(node_rate, 1.0);
    }

    /// [`set_rate`](Self::set_rate), each thread charged `charge` CPU-seconds per second of
    /// work done (more than 1 where SMT threads share a core).
    #[inline]
    pub fn set_rates(&mut self, node_rate: f64, charge: f64) {
        self.lanes[0].rate = if self.throttled { 0.0 } else { node_rate };
        self.charge = charge;
    }

    /// This container's runnable threads on CPU `k` (per-CPU scheduling): what the node's
    /// counts must add up to.
    pub fn runnable_on(&self, k: usize) -> u32 {
        match self.lanes.get(k) {
            Some(l) if !self.throttled && !l.throttled => l.running.len() as u32,
            _ => 0,
        }
    }

    /// Sets each lane's rate from the runnable threads on its CPU (per-CPU scheduling; call
    /// [`advance`](Self::advance) first).
    pub fn set_cpu_rates(&mut self, cpus: &[u32]) {
        for (lane, &n) in self.lanes.iter_mut().zip(cpus) {
            lane.rate = if self.throttled || lane.throttled || n == 0 {
                0.0
            } else {
                1.0 / n as f64
            };
        }
    }

    /// Whether every lane's rate is what [`set_cpu_rates`](Self::set_cpu_rates) would set from
    /// `cpus` now (for the engine's checks that skipping a container left nothing stale).
    pub fn cpu_rates_match(&self, cpus: &[u32]) -> bool {
        self.lanes.iter().zip(cpus).all(|(lane, &n)| {
            let want = if self.throttled || lane.throttled || n == 0 {
                0.0
            } else {
                1.0 / n as f64
            };
            lane.rate == want || lane.running.is_empty()
        })
    }

    /// Adds work (the container must be advanced to now).
    pub fn submit(&mut self, seg: Segment) {
        self.submit_on(seg, &mut []);
    }

    /// [`submit`](Self::submit) on a node scheduled per CPU.
    pub fn submit_on(&mut self, seg: Segment, cpus: &mut [u32]) {
        self.period_had_work = true;
        if self.calls_running < self.threads && !self.stopped() {
            self.start(seg, cpus);
            if self.slices {
                self.settle_slices(self.last, cpus);
            }
        } else {
            self.waiting.push_back(seg);
        }
    }

    /// Per CPU, after a change at `now`: a CPU with work and no runtime takes a slice from the
    /// pool (`assign_cfs_rq_runtime`: up to `SLICE`, what the pool has) or, with the pool
    /// spent, is throttled to the period's end; a CPU left with nothing to run gives back all
    /// but `KEEP` of its runtime (`return_cfs_rq_runtime`); if that leaves more than a slice
    /// in the pool while a CPU is throttled, the slack timer starts (`start_cfs_slack_bandwidth`:
    /// it fires `SLACK_DELAY` later, unless the period ends within `SLACK_MARGIN`).
    fn settle_slices(&mut self, now: f64, cpus: &mut [u32]) {
        if !self.limit.is_finite() {
            return;
        }
        let mut returned = false;
        let mut any_throttled = false;
        for k in 0..self.lanes.len() {
            let lane = &mut self.lanes[k];
            if lane.throttled {
                any_throttled = true;
                continue;
            }
            if lane.running.is_empty() {
                if lane.local > KEEP {
                    self.quota_left += lane.local - KEEP;
                    lane.local = KEEP;
                    returned = true;
                }
                continue;
            }
            if lane.local > EPS {
                continue;
            }
            let take = self.quota_left.max(0.0).min(SLICE - lane.local);
            self.quota_left -= take;
            lane.local += take;
            if lane.local > EPS {
                continue;
            }
            lane.throttled = true;
            lane.throttled_since = now;
            lane.rate = 0.0;
            if !cpus.is_empty() {
                cpus[k] -= lane.running.len() as u32;
            }
            self.period_throttled = true;
            any_throttled = true;
        }
        if returned
            && any_throttled
            && self.quota_left > SLICE
            && self.slack_at == f64::INFINITY
            && self.period_end - now > SLACK_MARGIN
        {
            self.slack_at = now + SLACK_DELAY;
        }
    }

    /// Per CPU, the slack timer (`do_sched_cfs_slack_timer`): if the pool holds more than a
    /// slice and the period does not end within `SLACK_MARGIN`, every throttled CPU runs again
    /// (`distribute_cfs_runtime` gives each only its deficit, so each then takes a slice from
    /// the pool, in CPU order, and those that find it spent throttle again).
    fn slack_timer(&mut self, now: f64, cpus: &mut [u32]) {
        self.slack_at = f64::INFINITY;
        if self.quota_left <= SLICE || self.period_end - now <= SLACK_MARGIN {
            return;
        }
        self.end_throttles(Some(now), cpus);
    }

    /// Ends every throttle, the container's and each CPU's, and puts their threads back on
    /// the CPUs. With `now`, adds the time stalled until then to `throttled_time` (a period's
    /// close has already added it).
    fn end_throttles(&mut self, now: Option<f64>, cpus: &mut [u32]) {
        if self.throttled {
            if let Some(now) = now {
                self.counters.throttled_time += now - self.throttled_since;
            }
            self.lanes.rejoin_cpus(cpus);
            self.throttled = false;
        }
        for (k, lane) in self.lanes.iter_mut().enumerate() {
            if lane.throttled {
                lane.throttled = false;
                if let Some(now) = now {
                    self.counters.throttled_time += now - lane.throttled_since;
                }
                if let Some(n) = cpus.get_mut(k) {
                    *n += lane.running.len() as u32;
                }
            }
        }
    }

    fn start(&mut self, seg: Segment, cpus: &mut [u32]) {
        self.calls_running += 1;
        let lane = self.push(seg.work, seg.call, cpus);
        self.lanes[lane].calls += 1;
    }

    fn push(&mut self, work: f64, call: u32, cpus: &mut [u32]) -> usize {
        self.seq += 1;
        let seq = self.seq;
        self.push_seq(work, seq, call, cpus)
    }

    /// Puts a segment in service on the CPU with the fewest runnable threads (the first such;
    /// under processor sharing, the one lane); returns its lane.
    fn push_seq(&mut self, work: f64, seq: u64, call: u32, cpus: &mut [u32]) -> usize {
        let k = if cpus.is_empty() {
            0
        } else {
            // Among the least loaded CPUs, the next after the last one chosen: the kernel
            // wakes a thread on its previous CPU or the waker's when idle, which spreads a
            // pool of workers over the idle CPUs rather than packing them on the first.
            let n = cpus.len();
            let least = *cpus.iter().min().expect("a CPU");
            let k = (0..n)
                .map(|i| (self.next_cpu + i) % n)
                .find(|&k| cpus[k] == least)
                .expect("a least loaded CPU");
            self.next_cpu = (k + 1) % n;
            // A throttled container's (or CPU's) threads are off the run queues until it is
            // refilled.
            if !self.throttled && !self.lanes[k].throttled {
                cpus[k] += 1;
            }
            k
        };
        let lane = &mut self.lanes[k];
        lane.running.push(Running {
            finish_v: lane.v + work,
            seq,
            call,
        });
        k
    }

    /// A stop-the-world collection is running: no call may run.
    fn stopped(&self) -> bool {
        self.gc
            .as_ref()
            .is_some_and(|g| g.active > 0 && g.runtime.stop_the_world)
    }

    /// Starts the calls that wait, while threads are free.
    #[inline]
    fn start_waiting(&mut self, cpus: &mut [u32]) {
        while self.calls_running < self.threads && !self.stopped() {
            let Some(next) = self.waiting.pop_front() else {
                break;
            };
            self.start(next, cpus);
        }
    }

    /// Starts a collection if the calls have allocated enough since the last one.
    #[inline]
    fn maybe_collect(&mut self, cpus: &mut [u32]) {
        let Some(gc) = &mut self.gc else { return };
        if gc.active > 0 || gc.since_last < gc.runtime.trigger_cpu - EPS {
            return;
        }
        let rt = gc.runtime;
        gc.since_last = 0.0;
        gc.collections += 1;
        let threads = if rt.stop_the_world {
            // Every call stops where it is; it resumes with what it had left.
            if !self.throttled {
                self.lanes.leave_cpus(cpus);
            }
            for lane in self.lanes.iter_mut() {
                let v = lane.v;
                gc.frozen.extend(
                    lane.running
                        .drain()
                        .map(|r| (r.finish_v - v, r.seq, r.call)),
                );
                lane.calls = 0;
            }
            self.calls_running = 0;
            rt.threads as usize
        } else {
            // Go: dedicated workers on a quarter of the Ps, idle workers on every P the
            // calls leave free.
            (rt.threads as usize)
                .saturating_sub(self.calls_running)
                .max(rt.min_threads as usize)
        };
        gc.active = threads;
        let each = rt.work / threads as f64;
        for _ in 0..threads {
            self.push(each, COLLECTOR, cpus);
        }
        self.period_had_work = true;
    }

    /// One collector thread finished; the last one ends the collection.
    fn collector_done(&mut self, cpus: &mut [u32]) {
        let gc = self
            .gc
            .as_mut()
            .expect("collector segments need a collector");
        gc.active -= 1;
        if gc.active > 0 {
            return;
        }
        if gc.runtime.stop_the_world {
            // The heaps order by (finish, seq), so the order they go back in does not matter
            // under processor sharing; per CPU, each call takes the least loaded CPU in turn.
            let frozen = std::mem::take(&mut gc.frozen);
            for (left, seq, call) in frozen {
                let lane = self.push_seq(left, seq, call, cpus);
                if call != BACKGROUND {
                    self.calls_running += 1;
                    self.lanes[lane].calls += 1;
                }
            }
        }
        self.start_waiting(cpus);
    }

    /// After advancing to an event time: moves finished calls to `done` (starting waiting
    /// work in their place) and throttles the container if its quota is spent.
    pub fn take_due(&mut self, now: f64, done: &mut Vec<u32>) {
        self.take_due_on(now, done, &mut []);
    }

    /// [`take_due`](Self::take_due) on a node scheduled per CPU.
    pub fn take_due_on(&mut self, now: f64, done: &mut Vec<u32>, cpus: &mut [u32]) {
        // Lane 0 on its own: with a constant index the hot, one-lane case needs no lookup.
        self.take_due_in(0, done, cpus);
        for k in 1..self.lanes.len() {
            self.take_due_in(k, done, cpus);
        }
        self.maybe_collect(cpus);
        if self.slices {
            if now >= self.slack_at - EPS {
                self.slack_timer(now, cpus);
            }
            self.settle_slices(now, cpus);
            return;
        }
        if !self.throttled && self.quota_left <= EPS && self.in_service() > 0 {
            self.throttled = true;
            self.throttled_since = now;
            self.period_throttled = true;
            self.lanes.leave_cpus(cpus);
            for lane in self.lanes.iter_mut() {
                lane.rate = 0.0;
            }
        }
    }

    /// Takes lane `k`'s finished segments.
    #[inline(always)]
    fn take_due_in(&mut self, k: usize, done: &mut Vec<u32>, cpus: &mut [u32]) {
        loop {
            let lane = &mut self.lanes[k];
            let Some(top) = lane.running.peek() else {
                break;
            };
            if top.finish_v > lane.v + EPS {
                break;
            }
            let call = lane.running.pop().expect("peeked").call;
            if !self.throttled && !lane.throttled && !cpus.is_empty() {
                cpus[k] -= 1;
            }
            if call == COLLECTOR {
                self.collector_done(cpus);
                continue;
            }
            if call == BACKGROUND {
                continue;
            }
            lane.calls -= 1;
            self.calls_running -= 1;
            done.push(call);
            self.start_waiting(cpus);
        }
    }

    /// When this container next needs attention (a completion or running out of quota), if
    /// anything is progressing.
    #[inline]
    pub fn next_event(&self) -> Option<f64> {
        if self.lanes.rest.is_empty() {
            return self.next_event_one_lane();
        }
        let mut finish = f64::INFINITY;
        let mut spend = 0.0;
        let mut alloc = 0.0;
        // Per CPU with a limit: when the first CPU spends the runtime it holds.
        let mut lane_exhaust = f64::INFINITY;
        let per_lane = self.slices && self.limit.is_finite();
        for lane in self.lanes.iter() {
            if lane.rate <= 0.0 {
                continue;
            }
            let Some(top) = lane.running.peek() else {
                continue;
            };
            finish = finish.min(self.last + ((top.finish_v - lane.v).max(0.0) / lane.rate));
            let lane_spend = lane.rate * lane.running.len() as f64 * self.charge;
            spend += lane_spend;
            alloc += lane.rate * lane.calls as f64;
            if per_lane {
                lane_exhaust = lane_exhaust.min(self.last + lane.local.max(0.0) / lane_spend);
            }
        }
        if spend <= 0.0 {
            return (self.slack_at < f64::INFINITY).then_some(self.slack_at);
        }
        let exhaust = if self.slices {
            lane_exhaust
        } else {
            self.last + self.quota_left.max(0.0) / spend
        };
        let mut next = finish.min(exhaust);
        if let Some(gc) = &self.gc {
            if gc.active == 0 && self.calls_running > 0 {
                let trigger = self.last + (gc.runtime.trigger_cpu - gc.since_last).max(0.0) / alloc;
                next = next.min(trigger);
            }
        }
        Some(next.min(self.slack_at))
    }

    /// [`next_event`](Self::next_event) under processor sharing: the hot loop's case, kept
    /// free of the lanes' loop.
    #[inline]
    fn next_event_one_lane(&self) -> Option<f64> {
        let lane = &self.lanes.first;
        if lane.rate <= 0.0 {
            return None;
        }
        let top = lane.running.peek()?;
        let finish = self.last + ((top.finish_v - lane.v).max(0.0) / lane.rate);
        let spend = lane.rate * lane.running.len() as f64 * self.charge;
        let left = if self.slices && self.limit.is_finite() {
            lane.local
        } else if self.slices {
            f64::INFINITY
        } else {
            self.quota_left
        };
        let exhaust = self.last + left.max(0.0) / spend;
        let mut next = finish.min(exhaust);
        if let Some(gc) = &self.gc {
            if gc.active == 0 && self.calls_running > 0 {
                let alloc = lane.rate * self.calls_running as f64;
                let trigger = self.last + (gc.runtime.trigger_cpu - gc.since_last).max(0.0) / alloc;
                next = next.min(trigger);
            }
        }
        Some(next)
    }

    /// Ends the current period at `now` (after advancing): updates the cgroup counters.
    pub fn close_period(&mut self, now: f64) {
        if self.throttled {
            self.counters.throttled_time += now - self.throttled_since;
        }
        for lane in self.lanes.iter() {
            if lane.throttled {
                self.counters.throttled_time += now - lane.throttled_since;
            }
        }
        // `do_sched_cfs_period_timer` counts every run of the timer, and the timer stops only
        // at the end of a period without work: that idle period is counted too.
        if self.period_had_work || (self.timer_counts_idle_period && self.last_period_had_work) {
            self.counters.nr_periods += 1;
        }
        self.last_period_had_work = self.period_had_work;
        if self.period_throttled {
            self.counters.nr_throttled += 1;
        }
        self.count_burst();
    }

    /// At a refill: a container that used more than its quota since the last one spent burst
    /// (`__refill_cfs_bandwidth_runtime` counts it then).
    fn count_burst(&mut self) {
        if self.burst > 0.0 && self.limit.is_finite() {
            let over = (self.period_runtime - self.quota_left) - quota(self.limit);
            if over > EPS {
                self.counters.nr_bursts += 1;
                self.counters.burst_time += over;
            }
        }
    }

    /// Sets a new limit between two refills, as writing `cpu.cfs_quota_us` does
    /// (`tg_set_cfs_bandwidth`, measured on this machine: a throttled group runs again within
    /// the millisecond): the pool is refilled at once with the new quota (with a burst, what
    /// is left is kept, up to the burst), every throttle ends, and per CPU the runtime each
    /// CPU holds is dropped (each takes a fresh slice). The periods keep their grid: the next
    /// refill comes at the period's end, which then counts as throttled only if it finds the
    /// container throttled again, as the kernel's period timer counts. Call
    /// [`advance`](Self::advance) first.
    pub fn write_limit_on(&mut self, limit: f64, cpus: &mut [u32]) {
        let now = self.last;
        self.count_burst();
        self.refill(limit);
        self.end_throttles(Some(now), cpus);
        for lane in self.lanes.iter_mut() {
            lane.local = 0.0;
        }
        self.period_throttled = false;
        if self.slices {
            self.settle_slices(now, cpus);
        }
    }

    /// Refills the pool at `limit` (`__refill_cfs_bandwidth_runtime`) and makes it the limit.
    fn refill(&mut self, limit: f64) {
        let q = quota(limit);
        self.quota_left = if self.burst > 0.0 && limit.is_finite() && self.limit.is_finite() {
            (self.quota_left.max(0.0) + q).min(q * (1.0 + self.burst))
        } else {
            // Without a burst, or leaving or entering "no limit" (the kernel does not refill
            // an unlimited group, so its runtime starts over).
            q
        };
        self.period_runtime = self.quota_left;
        self.limit = limit;
    }

    /// Starts a new period with a (possibly new) limit: refills the quota and unthrottles.
    /// With a burst, what the last period left over is kept, up to the burst.
    pub fn open_period(&mut self, limit: f64) {
        self.open_period_on(limit, &mut []);
    }

    /// [`open_period`](Self::open_period) on a node scheduled per CPU.
    pub fn open_period_on(&mut self, limit: f64, cpus: &mut [u32]) {
        self.refill(limit);
        self.period_end = self.last + PERIOD;
        self.slack_at = f64::INFINITY;
        // Per CPU (`distribute_cfs_runtime`): every throttled CPU runs again, and takes its
        // slice from the refilled pool, in CPU order.
        self.end_throttles(None, cpus);
        self.period_throttled = false;
        self.period_had_work = self.in_service() > 0;
        self.start_background(cpus);
        self.start_timers(cpus);
        if self.slices {
            let now = self.last;
            self.settle_slices(now, cpus);
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn limit(&self) -> f64 {
        self.limit
    }
}

fn quota(limit: f64) -> f64 {
    if limit.is_finite() {
        limit * PERIOD
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives one container alone on a big node to `until`, returning (completion time, call).
    fn run(c: &mut Container, mut now: f64, until: f64, limit: f64) -> Vec<(f64, u32)> {
        let mut out = Vec::new();
        let mut next_boundary = ((now / PERIOD).floor() + 1.0) * PERIOD;
        let mut done = Vec::new();
        loop {
            let ev = c.next_event().unwrap_or(f64::INFINITY);
            if ev.min(next_boundary) > until {
                break;
            }
            if ev < next_boundary {
                now = ev;
                c.advance(now);
                c.take_due(now, &mut done);
                out.extend(done.drain(..).map(|x| (now, x)));
            } else {
                now = next_boundary;
                c.advance(now);
                c.close_period(now);
                c.open_period(limit);
                c.set_rate(1.0);
                next_boundary = ((now / PERIOD).round() + 1.0) * PERIOD;
            }
        }
        c.advance(until);
        out
    }

    #[test]
    fn a_timers_work_spends_the_quota_every_so_often_and_stalls_the_calls_it_meets() {
        // 30 ms on one thread every second, on a 0.1-core quota: the work spends three
        // periods' quota, the first two to their end.
        let every_s = scenarios::Periodic {
            every: 10,
            work: 0.030,
            threads: 1,
        };
        let mut c = Container::new(0, 4, 0.1).with_periodic([(every_s, 3)]);
        run(&mut c, 0.0, 2.0 + 1e-9, 0.1);
        let k = c.counters();
        assert!((k.usage - 0.060).abs() < 1e-6, "two runs of 30 ms: {k:?}");
        assert_eq!((k.nr_periods, k.nr_throttled), (6, 4), "{k:?}");
        // A 2-ms call that arrives once a run (started at 0.1 s) has spent the period's quota
        // waits for the next period, and shares that one with the run's rest: it would take
        // 2 ms alone.
        let mut c = Container::new(0, 4, 0.1).with_periodic([(every_s, 1)]);
        run(&mut c, 0.0, 0.115, 0.1);
        assert!(c.throttled, "10 ms of the run spent the quota at 0.11 s");
        c.submit(Segment {
            call: 7,
            work: 0.002,
        });
        let done = run(&mut c, 0.115, 0.5, 0.1);
        assert_eq!(done.len(), 1, "only the call is reported: {done:?}");
        assert!(
            (0.2..0.21).contains(&done[0].0),
            "the call ends early in the next period: {done:?}"
        );
        // Two threads at once take half the time each.
        let two = scenarios::Periodic {
            threads: 2,
            ..every_s
        };
        let mut c = Container::new(0, 4, 1.0).with_periodic([(two, 1)]);
        run(&mut c, 0.0, 0.1 + 0.015 + 1e-9, 1.0);
        assert!(
            (c.counters().usage - 0.030).abs() < 1e-6,
            "{:?}",
            c.counters()
        );
    }

    #[test]
    fn background_work_uses_its_share_of_every_period_and_is_never_a_call() {
        // 0.05 cores of background beside one call of 30 ms, on a 0.1-core quota: the
        // background's 5 ms leave the call 5 ms a period, so the call takes six periods.
        let mut c = Container::new(0, 4, 0.1).with_background(0.05);
        c.submit(Segment {
            call: 7,
            work: 0.030,
        });
        let done = run(&mut c, 0.0, 1.0 + 1e-9, 0.1);
        assert_eq!(done.len(), 1, "only the call is reported: {done:?}");
        assert!(
            (0.5..0.6).contains(&done[0].0),
            "the call ends in its sixth period: {done:?}"
        );
        let k = c.counters();
        // 1 s: 50 ms of background and the call's 30 ms.
        assert!((k.usage - 0.080).abs() < 1e-6, "{k:?}");
        assert_eq!(k.nr_periods, 10, "every period had work");
        // The first five run out of quota with the call still running; in the sixth the
        // call's last 5 ms end as the quota does, so nothing is left to throttle.
        assert_eq!(k.nr_throttled, 5, "{k:?}");
        // More than a core of background runs on as many threads as it needs.
        let mut c = Container::new(0, 4, 4.0).with_background(2.5);
        run(&mut c, 0.0, 1.0, 4.0);
        assert!((c.counters().usage - 2.5).abs() < 1e-6);
    }

    #[test]
    fn quota_below_demand_throttles_every_period_and_usage_equals_quota() {
        // One thread, a call needing 10 s of CPU, limit 0.5 core.
        let mut c = Container::new(0, 1, 0.5);
        c.submit(Segment {
            call: 1,
            work: 10.0,
        });
        run(&mut c, 0.0, 2.0 + 1e-9, 0.5);
        let k = c.counters();
        assert_eq!(k.nr_periods, 20);
        assert_eq!(k.nr_throttled, 20);
        assert!(
            (k.usage - 1.0).abs() < 1e-8,
            "usage {} = 0.5 core x 2 s",
            k.usage
        );
        assert!(
            (k.throttled_time - 1.0).abs() < 1e-8,
            "stalled half of each period"
        );
    }

    /// A 4-thread container at a 1-core limit, idle until 1 s, then handed `work` core-seconds
    /// on 4 threads at once: when it is all done, and the counters at 2 s.
    fn burst_after_idle(burst: f64, work: f64) -> (f64, Counters) {
        let mut c = Container::new(0, 4, 1.0).with_burst(burst);
        run(&mut c, 0.0, 1.0, 1.0);
        for call in 0..4 {
            c.submit(Segment {
                call,
                work: work / 4.0,
            });
        }
        let done = run(&mut c, 1.0, 2.0, 1.0);
        assert_eq!(done.len(), 4);
        (done[3].0, c.counters())
    }

    #[test]
    fn a_burst_spends_quota_saved_while_idle() {
        // 150 ms of work on 4 threads: without a burst the 100-ms quota is gone after 25 ms
        // and the rest waits for the next period; with a burst of half the quota, the 50 ms
        // saved while idle let it all run in 37.5 ms.
        let (end, k) = burst_after_idle(0.0, 0.15);
        assert!((end - 1.1125).abs() < 1e-9, "ends at {end}");
        assert_eq!((k.nr_throttled, k.nr_bursts), (1, 0));
        let (end, k) = burst_after_idle(0.5, 0.15);
        assert!((end - 1.0375).abs() < 1e-9, "ends at {end}");
        assert_eq!((k.nr_throttled, k.nr_bursts), (0, 1));
        assert!((k.burst_time - 0.05).abs() < 1e-9, "{}", k.burst_time);
        // The saving is capped at the burst: 250 ms of work with a full-quota burst gets
        // 200 ms in the first period, not the 1 s of quota the idle second left.
        let (end, k) = burst_after_idle(1.0, 0.25);
        assert!((end - 1.1125).abs() < 1e-9, "ends at {end}");
        assert_eq!((k.nr_throttled, k.nr_bursts), (1, 1));
        assert!((k.burst_time - 0.1).abs() < 1e-9, "{}", k.burst_time);
    }

    #[test]
    fn a_burst_lends_nothing_to_a_container_always_over_its_quota() {
        // Demand above the quota in every period: nothing is left over to carry, so a burst
        // changes neither usage nor throttling.
        for burst in [0.0, 0.5, 1.0] {
            let mut c = Container::new(0, 1, 0.5).with_burst(burst);
            c.submit(Segment {
                call: 1,
                work: 10.0,
            });
            run(&mut c, 0.0, 2.0 + 1e-9, 0.5);
            let k = c.counters();
            assert!((k.usage - 1.0).abs() < 1e-8, "burst {burst}: {}", k.usage);
            assert_eq!((k.nr_throttled, k.nr_bursts), (20, 0), "burst {burst}");
        }
    }

    #[test]
    fn quota_above_demand_never_throttles() {
        let mut c = Container::new(0, 1, 1.5);
        c.submit(Segment {
            call: 1,
            work: 10.0,
        });
        run(&mut c, 0.0, 2.0 + 1e-9, 1.5);
        let k = c.counters();
        assert_eq!((k.nr_periods, k.nr_throttled), (20, 0));
        assert!(
            (k.usage - 2.0).abs() < 1e-8,
            "one thread uses one core: {}",
            k.usage
        );
    }

    #[test]
    fn parallel_burst_exhausts_quota_after_l_times_period_over_n() {
        // N = 4 calls at once, limit L = 1 core: the 100 ms quota lasts 1 * 100 ms / 4 = 25 ms.
        let mut c = Container::new(0, 4, 1.0);
        for i in 0..4 {
            c.submit(Segment {
                call: i,
                work: 0.030,
            });
        }
        assert!((c.next_event().unwrap() - 0.025).abs() < 1e-12);
        let done = run(&mut c, 0.0, 0.3, 1.0);
        // Each call got 25 ms in period 1, stalls until 100 ms, needs 5 ms more: done at 105 ms.
        assert_eq!(done.len(), 4);
        for (t, _) in &done {
            assert!((t - 0.105).abs() < 1e-9, "{t}");
        }
        let k = c.counters();
        assert_eq!(k.nr_throttled, 1);
        assert!((k.throttled_time - 0.075).abs() < 1e-9);
        assert!((k.usage - 0.120).abs() < 1e-9);
    }

    #[test]
    fn threads_bound_concurrency_fifo() {
        let mut c = Container::new(0, 1, f64::INFINITY);
        c.submit(Segment {
            call: 1,
            work: 0.01,
        });
        c.submit(Segment {
            call: 2,
            work: 0.01,
        });
        c.submit(Segment {
            call: 3,
            work: 0.01,
        });
        let done = run(&mut c, 0.0, 1.0, f64::INFINITY);
        let order: Vec<u32> = done.iter().map(|d| d.1).collect();
        assert_eq!(order, vec![1, 2, 3]);
        assert!((done[2].0 - 0.03).abs() < 1e-9);
    }

    #[test]
    fn processor_sharing_on_a_saturated_node() {
        // Two calls on a node that only gives half a core each.
        let mut c = Container::new(0, 8, f64::INFINITY);
        c.set_rate(0.5);
        c.submit(Segment {
            call: 1,
            work: 0.01,
        });
        c.submit(Segment {
            call: 2,
            work: 0.02,
        });
        assert!((c.next_event().unwrap() - 0.02).abs() < 1e-12);
    }

    /// Drives one container alone on a node of `cpus.len()` CPUs scheduled per CPU, without
    /// a limit, to `until`: (completion time, call).
    fn run_per_cpu(c: &mut Container, cpus: &mut [u32], until: f64) -> Vec<(f64, u32)> {
        let mut out = Vec::new();
        let mut done = Vec::new();
        c.set_cpu_rates(cpus);
        while let Some(now) = c.next_event().filter(|&t| t <= until) {
            c.advance(now);
            c.take_due_on(now, &mut done, cpus);
            c.set_cpu_rates(cpus);
            out.extend(done.drain(..).map(|x| (now, x)));
        }
        out
    }

    #[test]
    fn per_cpu_threads_keep_their_cpu_while_another_idles() {
        // Three 10-ms calls on two CPUs: the third shares the first one's CPU and they stay
        // there, so the second CPU idles from 10 ms on and the pair ends at 20 ms. Processor
        // sharing would give each two thirds of a core and end all three at 15 ms.
        let calls = |c: &mut Container, cpus: &mut [u32]| {
            for call in 1..=3 {
                c.submit_on(Segment { call, work: 0.010 }, cpus);
            }
        };
        let mut cpus = [0u32; 2];
        let mut c = Container::new(0, 8, f64::INFINITY).with_cpus(2);
        calls(&mut c, &mut cpus);
        assert_eq!(
            cpus,
            [2, 1],
            "the least loaded CPU; on a tie, the next after the last chosen"
        );
        let done = run_per_cpu(&mut c, &mut cpus, 1.0);
        let at: Vec<(u32, f64)> = done.iter().map(|&(t, k)| (k, (t * 1e3).round())).collect();
        assert_eq!(at, vec![(2, 10.0), (1, 20.0), (3, 20.0)]);
        assert_eq!(cpus, [0, 0]);
        assert!((c.counters().usage - 0.030).abs() < 1e-9);

        let mut ps = Container::new(0, 8, f64::INFINITY);
        calls(&mut ps, &mut []);
        ps.set_rate(2.0 / 3.0);
        assert!((ps.next_event().unwrap() - 0.015).abs() < 1e-12);
    }

    #[test]
    fn a_stop_the_world_pause_puts_calls_back_on_the_cpus() {
        // Two 20-ms calls on two CPUs; every 15 ms of call CPU a collection of 20 ms on two
        // threads stops both calls; then they go on where they were, on their own CPUs.
        let mut cpus = [0u32; 2];
        let mut c = Container::new(0, 8, f64::INFINITY)
            .with_cpus(2)
            .with_runtime(Some(runtime(0.015, 0.020, 2, true)));
        for call in 1..=2 {
            c.submit_on(Segment { call, work: 0.020 }, &mut cpus);
        }
        let done = run_per_cpu(&mut c, &mut cpus, 1.0);
        let at: Vec<f64> = done.iter().map(|&(t, _)| (t * 1e3).round()).collect();
        // 7.5 ms of calls, 10 ms of collection, 7.5 ms of calls, 10 ms of collection, the
        // calls' last 5 ms: 40 ms.
        assert_eq!(at, vec![40.0, 40.0]);
        assert_eq!(cpus, [0, 0]);
        assert_eq!(c.collections(), 2);
    }

    #[test]
    fn a_throttled_container_leaves_its_cpus_until_the_next_period() {
        // Two calls on two CPUs under a 0.1-core quota: 10 ms of runtime, spent by 5 ms.
        let mut cpus = [0u32; 2];
        let mut c = Container::new(0, 8, 0.1).with_cpus(2);
        for call in 1..=2 {
            c.submit_on(Segment { call, work: 0.050 }, &mut cpus);
        }
        assert_eq!(cpus, [1, 1]);
        assert!(run_per_cpu(&mut c, &mut cpus, 1.0).is_empty());
        assert_eq!(cpus, [0, 0], "off the run queues while throttled");
        assert!((c.counters().usage - 0.010).abs() < 1e-9);
        c.advance(PERIOD);
        c.close_period(PERIOD);
        c.open_period_on(0.1, &mut cpus);
        assert_eq!(cpus, [1, 1], "back on the CPUs they were on");
        c.set_cpu_rates(&cpus);
        assert!((c.next_event().unwrap() - (PERIOD + 0.005)).abs() < 1e-12);
    }

    #[test]
    fn per_cpu_a_cpu_is_throttled_while_another_holds_the_quota() {
        // A 0.05-core quota is 5 ms a period, one slice: the first CPU to run takes it all.
        let mut cpus = [0u32; 2];
        let mut c = Container::new(0, 8, 0.05).with_cpus(2);
        c.submit_on(
            Segment {
                call: 1,
                work: 0.001,
            },
            &mut cpus,
        );
        c.set_cpu_rates(&cpus);
        // Half a millisecond later a second call wakes on the idle CPU and finds the pool
        // empty: that CPU is throttled, its thread off the run queue.
        c.advance(0.0005);
        c.submit_on(
            Segment {
                call: 2,
                work: 0.001,
            },
            &mut cpus,
        );
        assert_eq!(cpus, [1, 0]);
        let done = run_per_cpu(&mut c, &mut cpus, PERIOD - 1e-9);
        assert_eq!(done.len(), 1, "the second call waits: {done:?}");
        assert!((done[0].0 - 0.001).abs() < 1e-12);
        // The first CPU, idle, kept 1 ms and gave 3 back: returned runtime reaches a
        // throttled CPU only through the kernel's slack timer, which needs more than a
        // slice in the pool, so the second CPU waits for the period's end with 4 ms unused.
        assert!((c.quota_left - 0.003).abs() < 1e-12, "{}", c.quota_left);
        c.advance(PERIOD);
        c.close_period(PERIOD);
        c.open_period_on(0.05, &mut cpus);
        assert_eq!(cpus, [0, 1], "unthrottled by the refill");
        let done = run_per_cpu(&mut c, &mut cpus, 2.0 * PERIOD);
        assert!((done[0].0 - (PERIOD + 0.001)).abs() < 1e-12);
        let k = c.counters();
        assert_eq!(k.nr_throttled, 1);
        assert!((k.throttled_time - (PERIOD - 0.0005)).abs() < 1e-12);
        // The first CPU's kept millisecond is still its own: the second period may spend
        // 6 ms, a carry-over the single pool of processor sharing does not have.
        assert!((c.lanes[0].local - KEEP).abs() < 1e-12);
        assert!((c.lanes[1].local - KEEP).abs() < 1e-12);
    }

    #[test]
    fn per_cpu_the_slack_timer_hands_returned_runtime_to_a_throttled_cpu() {
        // 10 ms a period, two slices: two calls on two CPUs take both, a third call's CPU
        // finds the pool empty and throttles.
        let mut cpus = [0u32; 3];
        let mut c = Container::new(0, 8, 0.1).with_cpus(3);
        for call in 1..=3 {
            let work = if call == 3 { 0.002 } else { 0.001 };
            c.submit_on(Segment { call, work }, &mut cpus);
        }
        assert_eq!(cpus, [1, 1, 0], "the third CPU is throttled");
        let done = run_per_cpu(&mut c, &mut cpus, PERIOD - 1e-9);
        // At 1 ms both CPUs go idle and give back 3 ms each: 6 ms, more than a slice, so the
        // slack timer fires 5 ms later and the third CPU takes a slice and runs its 2 ms.
        let times: Vec<_> = done.iter().map(|&(t, call)| (call, t)).collect();
        assert_eq!(times.len(), 3, "{times:?}");
        assert!((times[2].1 - 0.008).abs() < 1e-12, "{times:?}");
        assert_eq!(times[2].0, 3);
        let k = c.counters();
        assert!(
            (k.throttled_time - 0.006).abs() < 1e-12,
            "{}",
            k.throttled_time
        );

        // Returned runtime that leaves a slice or less in the pool starts no timer: the
        // throttled CPU waits for the refill (as in the test above).
        let mut cpus = [0u32; 3];
        let mut c = Container::new(0, 8, 0.1).with_cpus(3);
        for (call, work) in [(1, 0.001), (2, 0.02), (3, 0.002)] {
            c.submit_on(Segment { call, work }, &mut cpus);
        }
        let done = run_per_cpu(&mut c, &mut cpus, PERIOD - 1e-9);
        assert!(done.iter().all(|&(_, call)| call != 3), "{done:?}");
    }

    #[test]
    fn writing_a_limit_mid_period_refills_the_quota_and_ends_the_throttle() {
        // 0.1 cores: 10 ms a period, spent by 35 ms of work at 10 ms; then a new limit is
        // written at 50 ms, between two refills.
        let mut c = Container::new(0, 8, 0.1);
        c.submit(Segment {
            call: 1,
            work: 0.035,
        });
        assert!(run(&mut c, 0.0, 0.05, 0.1).is_empty());
        assert!(c.throttled);
        c.advance(0.05);
        c.write_limit_on(0.2, &mut []);
        c.set_rate(1.0);
        assert!(!c.throttled, "the write ends the throttle at once");
        assert!(
            (c.quota_left - 0.02).abs() < 1e-12,
            "a fresh quota of the new limit"
        );
        assert!((c.counters().throttled_time - 0.04).abs() < 1e-12);
        // 20 ms more run at once (to 70 ms), then the call waits for the refill at 100 ms
        // and finishes 5 ms into the next period.
        let done = run(&mut c, 0.05, PERIOD - 1e-9, 0.2);
        assert!(done.is_empty());
        assert!(c.throttled);
        c.advance(PERIOD);
        c.close_period(PERIOD);
        // Throttled when the period ended: counted once, as the kernel's timer counts.
        assert_eq!(c.counters().nr_throttled, 1);
        c.open_period(0.2);
        c.set_rate(1.0);
        let done = run(&mut c, PERIOD, 2.0 * PERIOD, 0.2);
        assert_eq!(done.len(), 1);
        assert!((done[0].0 - 0.105).abs() < 1e-12, "{done:?}");

        // A throttle the write ends, with nothing throttled at the period's end, is not a
        // throttled period.
        let mut c = Container::new(0, 8, 0.1);
        c.submit(Segment {
            call: 1,
            work: 0.015,
        });
        assert!(run(&mut c, 0.0, 0.05, 0.1).is_empty());
        c.advance(0.05);
        c.write_limit_on(0.1, &mut []);
        c.set_rate(1.0);
        assert_eq!(run(&mut c, 0.05, PERIOD - 1e-9, 0.1).len(), 1);
        c.advance(PERIOD);
        c.close_period(PERIOD);
        assert_eq!(c.counters().nr_throttled, 0);
        assert_eq!(c.counters().nr_periods, 1);
    }

    #[test]
    fn per_cpu_the_idle_period_after_work_is_counted_as_the_kernels_timer_counts_it() {
        let mut cpus = [0u32; 2];
        let mut c = Container::new(0, 8, 0.1).with_cpus(2);
        c.submit_on(
            Segment {
                call: 1,
                work: 0.005,
            },
            &mut cpus,
        );
        assert_eq!(run_per_cpu(&mut c, &mut cpus, PERIOD).len(), 1);
        for k in 1..=3 {
            c.advance(k as f64 * PERIOD);
            c.close_period(k as f64 * PERIOD);
            c.open_period_on(0.1, &mut cpus);
        }
        // Work in the first period only: it and the idle one after it.
        assert_eq!(c.counters().nr_periods, 2);

        let mut ps = Container::new(0, 8, 0.1);
        ps.submit(Segment {
            call: 1,
            work: 0.005,
        });
        run(&mut ps, 0.0, 3.0 * PERIOD, 0.1);
        assert_eq!(ps.counters().nr_periods, 1);
    }

    fn runtime(trigger_cpu: f64, work: f64, threads: u32, stop_the_world: bool) -> Runtime {
        Runtime {
            trigger_cpu,
            work,
            threads,
            min_threads: threads / 4,
            stop_the_world,
            follows: None,
        }
    }

    #[test]
    fn a_wide_collection_spends_the_quota_and_stalls_the_call() {
        // Limit 1.5 cores (150 ms per period), one call that would use one core all along.
        // Without a collector it is never throttled.
        let mut smooth = Container::new(0, 1, 1.5);
        smooth.submit(Segment { call: 1, work: 1.0 });
        run(&mut smooth, 0.0, 0.1 + 1e-9, 1.5);
        assert_eq!(smooth.counters().nr_throttled, 0);

        // Go-like: after 50 ms of request CPU, 93 ms of marking on the 31 idle Ps of 32
        // (3 ms each). By 53 ms the container used 53 + 93 = 146 ms: 4 ms of quota are left,
        // the call spends them by 57 ms and stalls to the period's end.
        let mut c = Container::new(0, 1, 1.5).with_runtime(Some(runtime(0.05, 0.093, 32, false)));
        c.submit(Segment { call: 1, work: 1.0 });
        assert!(
            (c.next_event().unwrap() - 0.05).abs() < 1e-12,
            "the trigger"
        );
        run(&mut c, 0.0, 0.1 + 1e-9, 1.5);
        let k = c.counters();
        assert_eq!(c.collections(), 1);
        assert_eq!((k.nr_periods, k.nr_throttled), (1, 1));
        assert!((k.usage - 0.15).abs() < 1e-8, "{}", k.usage);
        assert!(
            (k.throttled_time - 0.043).abs() < 1e-9,
            "{}",
            k.throttled_time
        );
    }

    #[test]
    fn go_marks_on_at_least_a_quarter_of_the_ps() {
        // 32 calls keep every P busy: the collection still gets its 8 dedicated workers.
        let mut c =
            Container::new(0, 32, f64::INFINITY).with_runtime(Some(runtime(0.32, 0.08, 32, false)));
        for i in 0..32 {
            c.submit(Segment { call: i, work: 1.0 });
        }
        // 32 calls allocate 0.32 core-s by 10 ms; then 8 workers x 10 ms run beside them.
        let done = run(&mut c, 0.0, 0.0199, f64::INFINITY);
        assert!(done.is_empty());
        assert_eq!(c.collections(), 1);
        assert_eq!(c.busy(), 40);
        // 32 calls for 19.9 ms and 8 workers for 9.9 ms.
        let want = 32.0 * 0.0199 + 8.0 * 0.0099;
        assert!(
            (c.counters().usage - want).abs() < 1e-9,
            "{}",
            c.counters().usage
        );
    }

    #[test]
    fn a_heap_that_follows_the_load_collects_smaller_and_more_often() {
        // One call of 210 ms of CPU; at full heap a 40-ms mark every 100 ms of request CPU.
        let full = runtime(0.1, 0.04, 4, false);
        let follows = |load: f64| {
            let mut c = Container::new(0, 1, f64::INFINITY).with_runtime(Some(Runtime {
                // 40 MB live at full load: a cycle every 40 MB, never under Go's 4 MB goal.
                follows: Some(scenarios::HeapFollows {
                    full_at: 100.0,
                    live_mb: 40.0,
                    gogc: 100.0,
                }),
                ..full
            }));
            c.follow_load(load);
            c.submit(Segment {
                call: 1,
                work: 0.21,
            });
            let done = run(&mut c, 0.0, 1.0, f64::INFINITY);
            assert_eq!(done.len(), 1);
            (c.collections(), c.counters().usage)
        };
        // At full load as without the field: two collections, 80 ms of marking.
        let (n, usage) = follows(100.0);
        assert_eq!(n, 2);
        assert!((usage - 0.29).abs() < 1e-9, "{usage}");
        // At a quarter of it, a quarter of the heap: a 10-ms mark every 25 ms of requests,
        // the same share of the CPU in eight smaller collections.
        let (n, usage) = follows(25.0);
        assert_eq!(n, 8);
        assert!((usage - 0.29).abs() < 1e-9, "{usage}");
        // Near Go's 4 MB heap goal collections come no more often, only smaller: at 1% of the
        // load 0.4 MB live, a cycle every 3.6 MB (0.09 of the full spacing), 0.4 ms each.
        let (n, usage) = follows(1.0);
        assert_eq!(n, 23);
        assert!((usage - (0.21 + 23.0 * 0.0004)).abs() < 1e-9, "{usage}");
    }

    #[test]
    fn a_stop_the_world_pause_holds_every_call() {
        // JVM-like: every 50 ms of request CPU, 40 ms of collection on 4 threads (10 ms of
        // wall time) while the call waits. The call's 200 ms of CPU end at 230 ms: three pauses.
        let mut c =
            Container::new(0, 1, f64::INFINITY).with_runtime(Some(runtime(0.05, 0.04, 4, true)));
        c.submit(Segment { call: 7, work: 0.2 });
        let done = run(&mut c, 0.0, 1.0, f64::INFINITY);
        assert_eq!(done.len(), 1);
        assert!((done[0].0 - 0.23).abs() < 1e-9, "{:?}", done);
        let n = c.collections();
        assert!(n == 3 || n == 4, "{n}");
        assert!((c.counters().usage - (0.2 + 0.04 * n as f64)).abs() < 1e-9);
    }

    #[test]
    fn calls_arriving_during_a_pause_wait_for_it() {
        let mut c =
            Container::new(0, 4, f64::INFINITY).with_runtime(Some(runtime(0.01, 0.04, 4, true)));
        c.submit(Segment {
            call: 1,
            work: 0.01,
        });
        // At 10 ms call 1 is done and a 10 ms pause starts; call 2 comes in at 12 ms, waits
        // for the pause to end at 20 ms and is done 1 ms later.
        let first = run(&mut c, 0.0, 0.012, f64::INFINITY);
        assert_eq!(first.len(), 1);
        assert!((first[0].0 - 0.01).abs() < 1e-12);
        assert_eq!(c.collections(), 1);
        c.submit(Segment {
            call: 2,
            work: 0.001,
        });
        let rest = run(&mut c, 0.012, 0.05, f64::INFINITY);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1, 2);
        assert!((rest[0].0 - 0.021).abs() < 1e-9, "{rest:?}");
    }

    #[test]
    fn idle_periods_are_not_counted() {
        let mut c = Container::new(0, 1, 1.0);
        run(&mut c, 0.0, 1.0 + 1e-9, 1.0);
        assert_eq!(c.counters().nr_periods, 0);
    }
}
