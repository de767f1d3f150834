//! One container's CPU under Linux CFS bandwidth control: the heart of the model.
//!
//! * Calls in service share the CPU by processor sharing, each getting at most one core (a call
//!   is one thread), and at most `threads` calls are in service; the rest wait in FIFO order.
//! * The node's cores are shared too: when the node's busy calls outnumber its cores, every call
//!   on the node slows down to `cores / busy` of a core (the engine sets that [`rate`]).
//! * Bandwidth control: every 100 ms period the container may use `limit * 100 ms` of CPU. Once
//!   it is spent, every call stalls until the period ends and the period counts as throttled:
//!   this burst-then-stall behaviour is why throttling predicts latency.
//! * Counters are kept exactly as `cpu.stat` / `cpuacct.usage` report them: `nr_periods` counts
//!   periods in which the container had work, `nr_throttled` those in which it ran out of quota,
//!   `throttled_time` the stalled time, `usage` the CPU consumed.
//!
//! Between events every call in service progresses at the same rate, so the container keeps one
//! virtual clock `v` (CPU-seconds each call in service has received) and a call finishes when
//! `v` reaches its start value plus its demand: a min-heap on that finish value makes the next
//! completion an O(1) look-up and each completion O(log n).
//!
//! [`rate`]: Container::set_rate

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use controller::CpuSample;

/// CFS period length, seconds.
pub const PERIOD: f64 = 0.1;
/// CPU amounts (core-seconds) below this count as zero: absorbs floating-point rounding so that
/// an event scheduled for "the moment the quota runs out" really finds it spent.
const EPS: f64 = 1e-10;

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

/// One container (cgroup) on a node.
#[derive(Debug, Clone)]
pub struct Container {
    pub node: usize,
    threads: usize,
    running: BinaryHeap<Running>,
    waiting: VecDeque<Segment>,
    /// Virtual time: CPU-seconds received by each call in service.
    v: f64,
    /// When `v` and the counters were last brought up to date.
    last: f64,
    /// Cores each call in service gets now (0 while throttled).
    rate: f64,
    limit: f64,
    quota_left: f64,
    throttled: bool,
    throttled_since: f64,
    period_had_work: bool,
    period_throttled: bool,
    counters: Counters,
    /// Bumped on every change, so that stale scheduled events can be recognised.
    pub version: u64,
    seq: u64,
}

impl Container {
    /// A container with `threads` workers and an initial limit in cores (`INFINITY`: none).
    pub fn new(node: usize, threads: u32, limit: f64) -> Self {
        Container {
            node,
            threads: threads.max(1) as usize,
            running: BinaryHeap::new(),
            waiting: VecDeque::new(),
            v: 0.0,
            last: 0.0,
            rate: 1.0,
            limit,
            quota_left: quota(limit),
            throttled: false,
            throttled_since: 0.0,
            period_had_work: false,
            period_throttled: false,
            counters: Counters::default(),
            version: 0,
            seq: 0,
        }
    }

    /// Brings the virtual clock and the counters up to `now` at the current rate.
    #[inline]
    pub fn advance(&mut self, now: f64) {
        let dt = now - self.last;
        if dt > 0.0 && self.rate > 0.0 && !self.running.is_empty() {
            let per_call = self.rate * dt;
            let used = per_call * self.running.len() as f64;
            self.v += per_call;
            self.counters.usage += used;
            self.quota_left -= used;
        }
        self.last = self.last.max(now);
    }

    /// Calls that want the CPU now (0 while throttled): what the node's sharing counts.
    #[inline]
    pub fn busy(&self) -> usize {
        if self.throttled {
            0
        } else {
            self.running.len()
        }
    }

    /// Sets the per-call rate from the node's sharing (call [`advance`](Self::advance) first).
    #[inline]
    pub fn set_rate(&mut self, node_rate: f64) {
        self.rate = if self.throttled { 0.0 } else { node_rate };
        self.version += 1;
    }

    /// Adds work (the container must be advanced to now).
    pub fn submit(&mut self, seg: Segment) {
        self.period_had_work = true;
        if self.running.len() < self.threads {
            self.start(seg);
        } else {
            self.waiting.push_back(seg);
        }
        self.version += 1;
    }

    fn start(&mut self, seg: Segment) {
        self.seq += 1;
        self.running.push(Running {
            finish_v: self.v + seg.work,
            seq: self.seq,
            call: seg.call,
        });
    }

    /// After advancing to an event time: moves finished calls to `done` (starting waiting
    /// work in their place) and throttles the container if its quota is spent.
    pub fn take_due(&mut self, now: f64, done: &mut Vec<u32>) {
        while let Some(top) = self.running.peek() {
            if top.finish_v > self.v + EPS {
                break;
            }
            let call = self.running.pop().expect("peeked").call;
            done.push(call);
            if let Some(next) = self.waiting.pop_front() {
                self.start(next);
            }
        }
        if !self.throttled && self.quota_left <= EPS && !self.running.is_empty() {
            self.throttled = true;
            self.throttled_since = now;
            self.period_throttled = true;
            self.rate = 0.0;
        }
        self.version += 1;
    }

    /// When this container next needs attention (a completion or running out of quota), if
    /// anything is progressing.
    pub fn next_event(&self) -> Option<f64> {
        if self.rate <= 0.0 {
            return None;
        }
        let top = self.running.peek()?;
        let finish = self.last + ((top.finish_v - self.v).max(0.0) / self.rate);
        let spend = self.rate * self.running.len() as f64;
        let exhaust = self.last + self.quota_left.max(0.0) / spend;
        Some(finish.min(exhaust))
    }

    /// Ends the current period at `now` (after advancing): updates the cgroup counters.
    pub fn close_period(&mut self, now: f64) {
        if self.throttled {
            self.counters.throttled_time += now - self.throttled_since;
        }
        if self.period_had_work {
            self.counters.nr_periods += 1;
        }
        if self.period_throttled {
            self.counters.nr_throttled += 1;
        }
    }

    /// Starts a new period with a (possibly new) limit: refills the quota and unthrottles.
    pub fn open_period(&mut self, limit: f64) {
        self.limit = limit;
        self.quota_left = quota(limit);
        self.throttled = false;
        self.period_throttled = false;
        self.period_had_work = !self.running.is_empty();
        self.version += 1;
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

    #[test]
    fn idle_periods_are_not_counted() {
        let mut c = Container::new(0, 1, 1.0);
        run(&mut c, 0.0, 1.0 + 1e-9, 1.0);
        assert_eq!(c.counters().nr_periods, 0);
    }
}
