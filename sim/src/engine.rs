//! The discrete-event engine: requests arrive, walk their call trees across containers, and
//! leave; the engine keeps time, the node-level CPU sharing and the events.
//!
//! The engine knows nothing about controllers: the runner ([`crate::run`]) advances it one CFS
//! period at a time with [`Engine::run_until`], then closes the periods, asks the scalers for
//! new limits and opens the next periods ([`Engine::end_period`]).
//!
//! Randomness: arrivals and request types come from one seeded stream; everything about one
//! call (whether it happens, its CPU demands, its network delays) comes from a generator seeded
//! by (request seed, position in the call tree). So the workload a run sees does not depend on
//! the controller: two scalers are compared on exactly the same requests.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rand::distr::weighted::WeightedIndex;
use rand::{Rng, RngCore, SeedableRng};
use rand_distr::Distribution;
use rand_pcg::Pcg64Mcg;
use scenarios::Scenario;

use crate::cfs::{Container, Counters, Segment, PERIOD};
use crate::mintree::MinTree;

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Arrival,
    /// A call reaches its service.
    Deliver(u32),
    /// Every child of the call's current stage has answered.
    Resume(u32),
}

#[derive(Debug, Clone, Copy)]
struct Event {
    t: f64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    /// Reversed: the heap pops the earliest event, ties in scheduling order.
    fn cmp(&self, other: &Self) -> Ordering {
        other.t.total_cmp(&self.t).then(other.seq.cmp(&self.seq))
    }
}

#[derive(Debug, Clone, Copy)]
struct Call {
    rtype: u16,
    after_phase: bool,
    alive: bool,
    stage: u16,
    pending: u16,
    node: u32,
    parent: u32,
    seed: u64,
    /// Request arrival time (root calls only).
    arrival: f64,
    /// When the last awaited child's answer arrives.
    ready_at: f64,
    work: f64,
    cpu_after: f64,
    delay_back: f64,
}

/// A finished request, as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Completion {
    pub arrival: f64,
    /// When the response reached the client.
    pub done: f64,
}

/// Engine-wide counts, for benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineStats {
    pub events: u64,
    pub arrivals: u64,
    pub calls: u64,
}

/// The simulated application.
pub struct Engine<'a> {
    scenario: &'a Scenario,
    containers: Vec<Container>,
    node_cores: Vec<f64>,
    node_busy: Vec<usize>,
    node_rate: Vec<f64>,
    node_members: Vec<Vec<u32>>,
    calls: Vec<Call>,
    free: Vec<u32>,
    events: BinaryHeap<Event>,
    /// Each container's next completion or quota exhaustion.
    next: MinTree,
    seq: u64,
    now: f64,
    rates: Vec<f64>,
    arrivals_rng: Pcg64Mcg,
    mix: WeightedIndex<f64>,
    in_flight: u64,
    done: Vec<u32>,
    pub stats: EngineStats,
}

impl<'a> Engine<'a> {
    /// An idle application; `rates` is the request rate for each second; `limits` the initial
    /// limit of each service.
    pub fn new(scenario: &'a Scenario, rates: Vec<f64>, limits: &[f64], seed: u64) -> Self {
        let containers: Vec<Container> = scenario
            .services
            .iter()
            .zip(limits)
            .map(|(s, &l)| Container::new(s.node, s.threads, l))
            .collect();
        let mut node_members = vec![Vec::new(); scenario.nodes.len()];
        for (i, c) in containers.iter().enumerate() {
            node_members[c.node].push(i as u32);
        }
        let mix = WeightedIndex::new(scenario.requests.iter().map(|r| r.weight))
            .expect("validated: positive weights");
        let mut e = Engine {
            scenario,
            containers,
            node_cores: scenario.nodes.iter().map(|n| n.1).collect(),
            node_busy: vec![0; scenario.nodes.len()],
            node_rate: vec![1.0; scenario.nodes.len()],
            node_members,
            calls: Vec::new(),
            free: Vec::new(),
            events: BinaryHeap::new(),
            next: MinTree::new(scenario.services.len()),
            seq: 0,
            now: 0.0,
            rates,
            arrivals_rng: Pcg64Mcg::seed_from_u64(splitmix(seed ^ 0xA11_1A15)),
            mix,
            in_flight: 0,
            done: Vec::new(),
            stats: EngineStats::default(),
        };
        if let Some(t) = traces::next_arrival(&e.rates, 0.0, &mut e.arrivals_rng) {
            e.push(t, Kind::Arrival);
        }
        e
    }

    /// Requests that arrived and have not been answered.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Arrival times of the requests still in flight.
    pub fn in_flight_arrivals(&self) -> Vec<f64> {
        self.calls
            .iter()
            .filter(|c| c.alive && c.parent == NONE)
            .map(|c| c.arrival)
            .collect()
    }

    pub fn counters(&self, service: usize) -> Counters {
        self.containers[service].counters()
    }

    /// Processes every event before `until`, reporting finished requests to `on_done`.
    pub fn run_until(&mut self, until: f64, on_done: &mut impl FnMut(Completion)) {
        loop {
            let (c, tc) = self.next.min();
            let te = self.events.peek().map_or(f64::INFINITY, |e| e.t);
            if tc.min(te) >= until {
                break;
            }
            self.stats.events += 1;
            if tc <= te {
                // Containers go first at equal times: work that finishes now is done before
                // new work arrives.
                self.now = tc;
                self.container_event(c, on_done);
                continue;
            }
            let ev = self.events.pop().expect("peeked");
            self.now = ev.t;
            match ev.kind {
                Kind::Arrival => self.arrive(),
                Kind::Deliver(call) => {
                    let c = &self.calls[call as usize];
                    let service = self.node_of(c).service;
                    let work = c.work;
                    self.submit(service, Segment { call, work });
                }
                Kind::Resume(call) => {
                    self.calls[call as usize].stage += 1;
                    self.dispatch(call, on_done);
                }
            }
        }
        self.now = until;
    }

    /// Closes the CFS period ending now, lets `limits` pick each container's next limit from
    /// its counters, and opens the next period.
    pub fn end_period(&mut self, mut limits: impl FnMut(usize, Counters) -> f64) {
        let now = self.now;
        for (i, c) in self.containers.iter_mut().enumerate() {
            c.advance(now);
            c.close_period(now);
            let limit = limits(i, c.counters());
            c.open_period(limit);
        }
        for node in 0..self.node_members.len() {
            self.refresh_node(node);
        }
    }

    fn node_of(&self, c: &Call) -> &scenarios::CallNode {
        &self.scenario.requests[c.rtype as usize].nodes[c.node as usize]
    }

    fn push(&mut self, t: f64, kind: Kind) {
        self.seq += 1;
        self.events.push(Event {
            t,
            seq: self.seq,
            kind,
        });
    }

    fn arrive(&mut self) {
        let now = self.now;
        let rtype = self.mix.sample(&mut self.arrivals_rng) as u16;
        let seed = self.arrivals_rng.next_u64();
        self.stats.arrivals += 1;
        self.in_flight += 1;
        let root = self
            .spawn(rtype, 0, NONE, seed, now, true)
            .expect("roots always happen");
        self.calls[root as usize].arrival = now;
        if let Some(t) = traces::next_arrival(&self.rates, now, &mut self.arrivals_rng) {
            self.push(t, Kind::Arrival);
        }
    }

    /// Creates call `node` of a request, if it happens; schedules its delivery.
    fn spawn(
        &mut self,
        rtype: u16,
        node: u32,
        parent: u32,
        seed: u64,
        now: f64,
        root: bool,
    ) -> Option<u32> {
        let def = &self.scenario.requests[rtype as usize].nodes[node as usize];
        let mut rng = scenarios::call_rng(seed, node);
        if !root && def.probability < 1.0 && rng.random::<f64>() >= def.probability {
            return None;
        }
        let work = def.cpu.sample(&mut rng);
        let cpu_after = def.cpu_after.as_ref().map_or(0.0, |d| d.sample(&mut rng));
        let delay_to = self.scenario.network_delay.sample(&mut rng);
        let delay_back = self.scenario.network_delay.sample(&mut rng);
        let call = Call {
            rtype,
            after_phase: false,
            alive: true,
            stage: 0,
            pending: 0,
            node,
            parent,
            seed,
            arrival: now,
            ready_at: now,
            work,
            cpu_after,
            delay_back,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.calls[id as usize] = call;
                id
            }
            None => {
                self.calls.push(call);
                (self.calls.len() - 1) as u32
            }
        };
        self.stats.calls += 1;
        self.push(now + delay_to, Kind::Deliver(id));
        Some(id)
    }

    fn submit(&mut self, service: usize, seg: Segment) {
        let c = &mut self.containers[service];
        c.advance(self.now);
        let before = c.busy();
        c.submit(seg);
        self.touch(service, before);
    }

    fn container_event(&mut self, c: usize, on_done: &mut impl FnMut(Completion)) {
        let now = self.now;
        let mut done = std::mem::take(&mut self.done);
        let container = &mut self.containers[c];
        container.advance(now);
        let before = container.busy();
        container.take_due(now, &mut done);
        self.touch(c, before);
        for &call in &done {
            let k = &mut self.calls[call as usize];
            if k.after_phase {
                self.complete(call, on_done);
            } else {
                k.stage = 0;
                self.dispatch(call, on_done);
            }
        }
        done.clear();
        self.done = done;
    }

    /// Starts the call's current stage (skipping stages with nothing to wait for); when no
    /// stage is left, runs the after-CPU or completes the call.
    fn dispatch(&mut self, call: u32, on_done: &mut impl FnMut(Completion)) {
        let now = self.now;
        let scenario = self.scenario;
        loop {
            let k = self.calls[call as usize];
            let def = &scenario.requests[k.rtype as usize].nodes[k.node as usize];
            let Some(stage) = def.stages.get(k.stage as usize) else {
                break;
            };
            let mut pending = 0u16;
            for &child in stage {
                let spawned = self.spawn(k.rtype, child, call, k.seed, now, false);
                let detached = scenario.requests[k.rtype as usize].nodes[child as usize].detached;
                if spawned.is_some() && !detached {
                    pending += 1;
                }
            }
            let k = &mut self.calls[call as usize];
            if pending > 0 {
                k.pending = pending;
                k.ready_at = now;
                return;
            }
            k.stage += 1;
        }
        let k = &mut self.calls[call as usize];
        if k.cpu_after > 0.0 {
            k.after_phase = true;
            let work = k.cpu_after;
            let service = self.node_of(&self.calls[call as usize]).service;
            self.submit(service, Segment { call, work });
        } else {
            self.complete(call, on_done);
        }
    }

    fn complete(&mut self, call: u32, on_done: &mut impl FnMut(Completion)) {
        let now = self.now;
        let k = self.calls[call as usize];
        let back = now + k.delay_back;
        self.calls[call as usize].alive = false;
        self.free.push(call);
        if k.parent == NONE {
            self.in_flight -= 1;
            on_done(Completion {
                arrival: k.arrival,
                done: back,
            });
            return;
        }
        if self.node_of(&k).detached {
            return;
        }
        let p = &mut self.calls[k.parent as usize];
        p.pending -= 1;
        p.ready_at = p.ready_at.max(back);
        if p.pending == 0 {
            let t = p.ready_at;
            self.push(t, Kind::Resume(k.parent));
        }
    }

    /// After container `c` changed (already advanced to now; it had `before` busy calls):
    /// keeps the node's sharing right and reschedules what needs it.
    fn touch(&mut self, c: usize, before: usize) {
        let node = self.containers[c].node;
        let busy = self.node_busy[node] + self.containers[c].busy() - before;
        self.node_busy[node] = busy;
        let rate = node_rate(self.node_cores[node], busy);
        if rate != self.node_rate[node] {
            self.refresh_node(node);
        } else {
            self.containers[c].set_rate(rate);
            self.schedule(c);
        }
    }

    /// Recomputes a node's sharing and reschedules all its containers.
    fn refresh_node(&mut self, node: usize) {
        let now = self.now;
        for &m in &self.node_members[node] {
            self.containers[m as usize].advance(now);
        }
        let busy: usize = self.node_members[node]
            .iter()
            .map(|&m| self.containers[m as usize].busy())
            .sum();
        let rate = node_rate(self.node_cores[node], busy);
        self.node_busy[node] = busy;
        self.node_rate[node] = rate;
        let members = std::mem::take(&mut self.node_members[node]);
        for &m in &members {
            self.containers[m as usize].set_rate(rate);
            self.schedule(m as usize);
        }
        self.node_members[node] = members;
    }

    fn schedule(&mut self, c: usize) {
        let t = self.containers[c]
            .next_event()
            .map_or(f64::INFINITY, |t| t.max(self.now));
        self.next.set(c, t);
    }
}

/// Cores each busy call on a node gets: one, unless the node is oversubscribed.
#[inline]
fn node_rate(cores: f64, busy: usize) -> f64 {
    if (busy as f64) <= cores {
        1.0
    } else {
        cores / busy as f64
    }
}

/// SplitMix64: turns related seeds into unrelated ones.
#[inline]
pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The period boundaries of a run: `k * PERIOD` computed without accumulating rounding.
pub fn boundary(k: u64) -> f64 {
    k as f64 * PERIOD
}
