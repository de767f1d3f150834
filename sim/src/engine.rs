//! The discrete-event engine: requests arrive, walk their call trees across containers, and
//! leave; the engine keeps time, the node-level CPU sharing and the events.
//!
//! The engine knows nothing about controllers: the runner ([`crate::run`]) advances it 100 ms
//! at a time with [`Engine::run_until`], then asks the scalers for new limits
//! ([`Engine::end_period`]). Each container's CFS periods end on a grid of its own (a phase
//! drawn from the run's seed, as the kernel runs one period timer per cgroup): those ends are
//! events of the engine, and a new limit is written at once, refilling the quota as a write
//! to `cpu.cfs_quota_us` does. A scenario with `cfs_periods = "aligned"` has every period end
//! at the runner's ticks instead, where the new limits then take effect.
//!
//! Randomness: arrivals and request types come from one seeded stream; everything about one
//! call (whether it happens, its CPU demands, its network delays) comes from a generator seeded
//! by (request seed, position in the call tree). So the workload a run sees does not depend on
//! the controller: two scalers are compared on exactly the same requests. With closed-loop
//! users ([`Load::Users`]) it does not hold: a request's send time depends on when the user's
//! previous one was answered, and the users' think times are drawn from the same stream as the
//! types and seeds, in the order the answers come, so two scalers' runs part ways in their
//! requests' contents too from the first answer that comes at another moment (measured on the
//! demo app, 20 users, limits of 4 and 0.3 cores: the 36th request's type already differs).

use rand::distr::weighted::WeightedIndex;
use rand::{Rng, RngCore, SeedableRng};
use rand_distr::Distribution;
use rand_pcg::Pcg64Mcg;
use scenarios::Scenario;
use traces::Load;

use crate::cfs::{Container, Counters, Segment, PERIOD};
use crate::earliest::Earliest;
use crate::queue::EventQueue;

const NONE: u32 = u32::MAX;
/// The `rtype` of a finished call.
const DEAD: u16 = u16::MAX;

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// The next Poisson arrival.
    Arrival,
    /// A user sends its next request (or retires, if the user count fell below it).
    UserSend(u32),
    /// A new second: users start or retire to follow the trace.
    Second(u32),
    /// A call reaches its service.
    Deliver(u32),
    /// Every child of the call's last stage has answered: its CPU after them, or (a root's)
    /// its answer. A call inside the tree with no CPU after its children needs no event: it
    /// completes as its last answer arrives ([`Engine::complete`]).
    Resume(u32),
    /// A container's CFS period ends (periods not aligned: the container's own grid).
    Period(u32),
}

#[derive(Debug, Clone, Copy)]
/// 64 bytes: one cache line (the hot loop reads calls all the time).
struct Call {
    /// The request type; `DEAD` once the call is done (its slot is free).
    rtype: u16,
    after_phase: bool,
    /// CPU segments of the current phase not yet done (a parallel call has several).
    parts: u8,
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
    /// The request type (index into the scenario's requests).
    pub rtype: u16,
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
    /// Per node scheduled per CPU: the runnable threads on each of its CPUs (empty under
    /// processor sharing).
    node_cpus: Vec<Vec<u32>>,
    /// Per CPU: the touched node's counts before the change at hand, to find the CPUs whose
    /// sharing it moved.
    cpus_before: Vec<u32>,
    /// Scratch: the CPUs whose counts that change moved.
    cpus_moved: Vec<usize>,
    /// Each container's period phase: its periods end at `k * PERIOD + phase` (0: at the
    /// controller's ticks, where [`Engine::end_period`] closes them).
    phases: Vec<f64>,
    /// Each container's periods ended so far on its own grid.
    periods_done: Vec<u32>,
    calls: Vec<Call>,
    free: Vec<u32>,
    events: EventQueue<Kind>,
    /// Each container's next completion or quota exhaustion.
    next: Earliest,
    now: f64,
    rates: Vec<f64>,
    arrivals_rng: Pcg64Mcg,
    /// The run's seed (to draw the arrivals again: [`Engine::sends_from`]).
    seed: u64,
    /// The request mix of each phase of the load's mix cycle ([`Engine::with_mix_cycle`]);
    /// one phase without a cycle.
    mixes: Vec<WeightedIndex<f64>>,
    /// Seconds per phase (0: no cycle).
    mix_cycle_s: usize,
    in_flight: u64,
    done: Vec<u32>,
    load: Load,
    /// Closed loop: whether each user is active (thinking or waiting for a response).
    users_active: Vec<bool>,
    /// Closed loop: the user of each root call, by call slot (kept out of `Call` so that a
    /// call stays one cache line).
    user_of: Vec<u32>,
    /// Closed loop: the number of users the trace asks for this second.
    users_wanted: usize,
    /// Requests sent so far, per request type.
    sent: Vec<u64>,
    /// A request log being replayed instead of drawn arrivals.
    replay: Option<Replay>,
    pub stats: EngineStats,
}

/// A request log: send times and request types, and the next one to send.
struct Replay {
    times: Vec<f64>,
    kinds: Vec<u16>,
    next: usize,
}

impl<'a> Engine<'a> {
    /// An idle application; `rates` is the trace value for each second (requests per second,
    /// or users with a closed-loop `load`); `limits` the initial limit of each service.
    pub fn new(
        scenario: &'a Scenario,
        rates: Vec<f64>,
        load: Load,
        limits: &[f64],
        seed: u64,
    ) -> Self {
        let mut node_cpus: Vec<Vec<u32>> = scenario
            .node_cpus
            .iter()
            .map(|c| vec![0; c.unwrap_or(0)])
            .collect();
        // Each timer of periodic work first fires at a period drawn from the run's seed, as
        // the process that runs it started whenever it did.
        let mut timers_rng = Pcg64Mcg::seed_from_u64(splitmix(seed ^ 0x0071_313E_550F_F5E7));
        let containers: Vec<Container> = scenario
            .services
            .iter()
            .zip(limits)
            .map(|(s, &l)| {
                let mut c = Container::new(s.node, s.threads, l);
                if let Some(cpus) = scenario.node_cpus[s.node] {
                    c = c.with_cpus(cpus);
                }
                let timers: Vec<_> = s
                    .periodic
                    .iter()
                    .map(|&p| (p, timers_rng.random_range(1..=p.every)))
                    .collect();
                c.with_runtime(s.runtime)
                    .with_background_on(s.background, &mut node_cpus[s.node])
                    .with_periodic(timers)
            })
            .collect();
        let mut node_members = vec![Vec::new(); scenario.nodes.len()];
        for (i, c) in containers.iter().enumerate() {
            node_members[c.node].push(i as u32);
        }
        let mixes = vec![mix_of(
            &scenario
                .requests
                .iter()
                .map(|r| r.weight)
                .collect::<Vec<_>>(),
        )];
        let mut e = Engine {
            scenario,
            containers,
            node_cores: scenario.nodes.iter().map(|n| n.1).collect(),
            node_busy: vec![0; scenario.nodes.len()],
            node_rate: vec![1.0; scenario.nodes.len()],
            node_members,
            node_cpus,
            cpus_before: Vec::new(),
            cpus_moved: Vec::new(),
            phases: vec![0.0; scenario.services.len()],
            periods_done: vec![0; scenario.services.len()],
            calls: Vec::new(),
            free: Vec::new(),
            events: EventQueue::new(),
            next: Earliest::new(scenario.services.len()),
            now: 0.0,
            rates,
            arrivals_rng: arrivals_rng(seed),
            seed,
            mixes,
            mix_cycle_s: 0,
            in_flight: 0,
            done: Vec::new(),
            load,
            users_active: Vec::new(),
            user_of: Vec::new(),
            users_wanted: 0,
            sent: vec![0; scenario.requests.len()],
            replay: None,
            stats: EngineStats::default(),
        };
        // Containers with background work start with it running: count it on their nodes.
        for node in 0..e.node_members.len() {
            e.refresh_node(node);
        }
        if !scenario.aligned_periods {
            // Each cgroup's period timer keeps the phase it started with; here each
            // container's is drawn from the run's seed, the same for every scaler.
            let mut rng = Pcg64Mcg::seed_from_u64(splitmix(seed ^ 0xC0F5_9E21_0D5E));
            for c in 0..e.containers.len() {
                let phase = rng.random::<f64>() * PERIOD;
                e.phases[c] = phase;
                if phase > 0.0 {
                    e.push(phase, Kind::Period(c as u32));
                }
            }
        }
        match load {
            Load::Poisson => {
                if let Some(t) = traces::next_arrival(&e.rates, 0.0, &mut e.arrivals_rng) {
                    e.push(t, Kind::Arrival);
                }
            }
            Load::Users { .. } => {
                if !e.rates.is_empty() {
                    e.push(0.0, Kind::Second(0));
                }
            }
        }
        e
    }

    /// The same idle application, sent exactly the requests of a log (open loop: each at its
    /// time, of its type) instead of arrivals drawn from the rates. `times` are sorted;
    /// `kinds` index the scenario's request types. What each request does inside the app is
    /// still drawn from the run's seed.
    pub fn with_arrivals(mut self, times: Vec<f64>, kinds: Vec<u16>) -> Self {
        debug_assert_eq!(times.len(), kinds.len());
        // The drawn load's first event goes; the containers' period timers stay.
        self.events
            .retain(|k| !matches!(k, Kind::Arrival | Kind::Second(_)));
        self.load = Load::Poisson;
        if let Some(&t) = times.first() {
            self.push(t, Kind::Arrival);
        }
        self.replay = Some(Replay {
            times,
            kinds,
            next: 0,
        });
        self
    }

    /// The same idle application with CFS burst on every container: each may carry up to
    /// `fraction` of its quota over from a period to the next (0 to 1, as the kernel allows).
    pub fn with_burst(mut self, fraction: f64) -> Self {
        self.containers = self
            .containers
            .into_iter()
            .map(|c| c.with_burst(fraction))
            .collect();
        self
    }

    /// The same idle application under a calibration load: the request mix changes every
    /// `cycle_s` seconds, through [`Scenario::mix_phases`] (0: no change). A type is still one
    /// draw from the arrivals' stream, so the arrival times and seeds are those of the
    /// scenario's own mix; only which type each request is changes.
    pub fn with_mix_cycle(mut self, cycle_s: usize) -> Self {
        if cycle_s > 0 {
            self.mixes = self
                .scenario
                .mix_phases()
                .iter()
                .map(|w| mix_of(w))
                .collect();
            self.mix_cycle_s = cycle_s;
        }
        self
    }

    /// Which of `mixes` is in force at `t`.
    fn mix_index(&self, t: f64) -> usize {
        scenarios::mix_phase(t as usize, self.mix_cycle_s, self.mixes.len())
    }

    /// Requests that arrived and have not been answered.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Arrival time and request type (index into the scenario's requests) of each request
    /// still in flight.
    pub fn in_flight_requests(&self) -> Vec<(f64, u16)> {
        self.calls
            .iter()
            .filter(|c| c.rtype != DEAD && c.parent == NONE)
            .map(|c| (c.arrival, c.rtype))
            .collect()
    }

    /// How many requests the whole run sends at or after `t`, known before they are sent: the
    /// open-loop arrivals (and what each one is) come from their own stream, so they are the
    /// same whatever the app does; drawing them again costs a few percent of a run. `None`
    /// under closed-loop users, whose sends wait for their answers.
    pub fn sends_from(&self, t: f64) -> Option<u64> {
        if let Some(r) = &self.replay {
            return Some(r.times.iter().filter(|&&x| x >= t).count() as u64);
        }
        if self.load != Load::Poisson {
            return None;
        }
        // The draws of `Engine::new` and `arrive`, in their order.
        let mut rng = arrivals_rng(self.seed);
        let mut count = 0;
        let mut at = 0.0;
        while let Some(next) = traces::next_arrival(&self.rates, at, &mut rng) {
            at = next;
            count += u64::from(at >= t);
            self.mixes[self.mix_index(at)].sample(&mut rng);
            rng.next_u64();
        }
        Some(count)
    }

    /// Requests sent so far, per request type (scenario order).
    pub fn sent(&self) -> &[u64] {
        &self.sent
    }

    pub fn counters(&self, service: usize) -> Counters {
        self.containers[service].counters()
    }

    /// Processes every event before `until`, reporting finished requests to `on_done`.
    pub fn run_until(&mut self, until: f64, on_done: &mut impl FnMut(Completion)) {
        loop {
            let (c, tc) = self.next.min();
            let te = self.events.peek_time();
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
            let (t, kind) = self.events.pop().expect("peeked");
            self.now = t;
            match kind {
                Kind::Arrival => self.arrive(),
                Kind::UserSend(user) => self.user_send(user),
                Kind::Second(second) => self.second(second as usize),
                Kind::Deliver(call) => {
                    let work = self.calls[call as usize].work;
                    self.submit_call(call, work);
                }
                Kind::Resume(call) => self.finish(call, on_done),
                Kind::Period(c) => self.period_timer(c as usize),
            }
        }
        self.now = until;
    }

    /// Container `c`'s period ends on its own grid: counts it and refills the quota at the
    /// limit in force (the controller's new limits were written as they came).
    fn period_timer(&mut self, c: usize) {
        let now = self.now;
        let container = &mut self.containers[c];
        container.advance(now);
        let before = container.busy();
        let cpus = &mut self.node_cpus[container.node];
        self.cpus_before.clone_from(cpus);
        container.close_period(now);
        let limit = container.limit();
        container.open_period_on(limit, cpus);
        self.touch(c, before);
        self.periods_done[c] += 1;
        let next = boundary(u64::from(self.periods_done[c])) + self.phases[c];
        self.push(next, Kind::Period(c as u32));
    }

    /// The controller's tick, every `PERIOD`: lets `limits` pick each container's next limit
    /// from its counters. With aligned periods each container's period ends now and the next
    /// opens with the new limit; otherwise a changed limit is written at once
    /// ([`Container::write_limit_on`]) and the periods end on their own grids.
    pub fn end_period(&mut self, mut limits: impl FnMut(usize, Counters) -> f64) {
        let now = self.now;
        // The load's value this second (users, or requests a second), for heaps that follow it.
        let load = self.rates.get(now as usize).copied().unwrap_or(0.0);
        for (i, c) in self.containers.iter_mut().enumerate() {
            c.advance(now);
            c.follow_load(load);
            if self.phases[i] > 0.0 {
                let limit = limits(i, c.counters());
                if limit != c.limit() {
                    c.write_limit_on(limit, &mut self.node_cpus[c.node]);
                }
                continue;
            }
            c.close_period(now);
            let limit = limits(i, c.counters());
            c.open_period_on(limit, &mut self.node_cpus[c.node]);
        }
        for node in 0..self.node_members.len() {
            self.refresh_node(node);
        }
    }

    fn node_of(&self, c: &Call) -> &scenarios::CallNode {
        &self.scenario.requests[c.rtype as usize].nodes[c.node as usize]
    }

    fn push(&mut self, t: f64, kind: Kind) {
        self.events.push(t, kind);
    }

    fn arrive(&mut self) {
        if let Some(r) = &mut self.replay {
            let kind = r.kinds[r.next];
            r.next += 1;
            let next = r.times.get(r.next).copied();
            self.send_kind(NONE, kind);
            if let Some(t) = next {
                self.push(t, Kind::Arrival);
            }
            return;
        }
        self.send(NONE);
        if let Some(t) = traces::next_arrival(&self.rates, self.now, &mut self.arrivals_rng) {
            self.push(t, Kind::Arrival);
        }
    }

    /// A request leaves the client now (on behalf of `user`, or `NONE` for open loop).
    fn send(&mut self, user: u32) {
        let mix = self.mix_index(self.now);
        let rtype = self.mixes[mix].sample(&mut self.arrivals_rng) as u16;
        self.send_kind(user, rtype);
    }

    /// A request of type `rtype` leaves the client now.
    fn send_kind(&mut self, user: u32, rtype: u16) {
        let now = self.now;
        let seed = self.arrivals_rng.next_u64();
        self.stats.arrivals += 1;
        self.sent[rtype as usize] += 1;
        self.in_flight += 1;
        let root = self
            .spawn(rtype, 0, NONE, seed, now, true)
            .expect("roots always happen");
        self.calls[root as usize].arrival = now;
        if user != NONE {
            if self.user_of.len() <= root as usize {
                self.user_of.resize(self.calls.len(), NONE);
            }
            self.user_of[root as usize] = user;
        }
    }

    /// Closed loop, at the start of a second: users the trace adds start at evenly spread
    /// moments of the second; users above the new count retire at their next send.
    fn second(&mut self, second: usize) {
        let wanted = self.rates.get(second).map_or(0, |&r| traces::users_in(r));
        self.users_wanted = wanted;
        if self.users_active.len() < wanted {
            self.users_active.resize(wanted, false);
        }
        let starting: Vec<u32> = (0..wanted as u32)
            .filter(|&u| !self.users_active[u as usize])
            .collect();
        for (i, &u) in starting.iter().enumerate() {
            self.users_active[u as usize] = true;
            self.push(
                traces::spawn_time(second, i, starting.len()),
                Kind::UserSend(u),
            );
        }
        if second + 1 < self.rates.len() {
            self.push((second + 1) as f64, Kind::Second(second as u32 + 1));
        }
    }

    fn user_send(&mut self, user: u32) {
        // The trace is over (the run is draining): nobody sends any more.
        if user as usize >= self.users_wanted || self.now >= self.rates.len() as f64 {
            self.users_active[user as usize] = false;
            return;
        }
        self.send(user);
    }

    /// A closed-loop user got its response at `t`: it thinks, then sends again.
    fn user_answered(&mut self, user: u32, t: f64) {
        let Load::Users { think_s } = self.load else {
            return;
        };
        let next = t + traces::think(think_s, &mut self.arrivals_rng);
        self.push(next, Kind::UserSend(user));
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
            parts: 0,
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

    /// Puts a phase of a call's CPU on its container: one segment, or one per thread for a
    /// parallel call (the phase ends when the last is done).
    fn submit_call(&mut self, call: u32, work: f64) {
        let def = self.node_of(&self.calls[call as usize]);
        let (service, parts) = (def.service, def.parallelism.max(1));
        self.calls[call as usize].parts = parts as u8;
        let c = &mut self.containers[service];
        c.advance(self.now);
        let before = c.busy();
        let each = work / parts as f64;
        let cpus = &mut self.node_cpus[c.node];
        self.cpus_before.clone_from(cpus);
        for _ in 0..parts {
            c.submit_on(Segment { call, work: each }, cpus);
        }
        self.touch(service, before);
    }

    fn container_event(&mut self, c: usize, on_done: &mut impl FnMut(Completion)) {
        let now = self.now;
        let mut done = std::mem::take(&mut self.done);
        let container = &mut self.containers[c];
        container.advance(now);
        let before = container.busy();
        let cpus = &mut self.node_cpus[container.node];
        self.cpus_before.clone_from(cpus);
        container.take_due_on(now, &mut done, cpus);
        self.touch(c, before);
        for &call in &done {
            let k = &mut self.calls[call as usize];
            k.parts = k.parts.saturating_sub(1);
            if k.parts > 0 {
                continue;
            }
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

    /// The call's CPU before its children is done: starts its first stage, or, with no
    /// stage to wait for, runs the after-CPU or completes the call.
    fn dispatch(&mut self, call: u32, on_done: &mut impl FnMut(Completion)) {
        if !self.start_stages(call, self.now) {
            self.finish(call, on_done);
        }
    }

    /// Starts the call's stages from its current one on, at `t` (stages none of whose
    /// children happen are skipped); whether one started (the call now waits for it).
    ///
    /// `t` may be later than now: when a stage's last child answers, the next stage's
    /// children are created at once, to be delivered at `t` plus their network delay.
    /// Nothing about a call depends on when it is created (everything is drawn from the
    /// request's seed and the call's position), so this saves the event at `t` that
    /// would only have created them.
    fn start_stages(&mut self, call: u32, t: f64) -> bool {
        let scenario = self.scenario;
        loop {
            let k = self.calls[call as usize];
            let def = &scenario.requests[k.rtype as usize].nodes[k.node as usize];
            let Some(stage) = def.stages.get(k.stage as usize) else {
                return false;
            };
            let mut pending = 0u16;
            for &child in stage {
                let spawned = self.spawn(k.rtype, child, call, k.seed, t, false);
                let detached = scenario.requests[k.rtype as usize].nodes[child as usize].detached;
                if spawned.is_some() && !detached {
                    pending += 1;
                }
            }
            let k = &mut self.calls[call as usize];
            if pending > 0 {
                k.pending = pending;
                k.ready_at = t;
                return true;
            }
            k.stage += 1;
        }
    }

    /// Every stage is done (now): the call's CPU after its children, or its answer.
    fn finish(&mut self, call: u32, on_done: &mut impl FnMut(Completion)) {
        let k = &mut self.calls[call as usize];
        if k.cpu_after > 0.0 {
            k.after_phase = true;
            let work = k.cpu_after;
            self.submit_call(call, work);
        } else {
            self.complete(call, on_done);
        }
    }

    /// The call is done now: its answer leaves for its parent (or the client).
    ///
    /// Then up the tree while the call that finished has a parent waiting on it: a parent
    /// inside the tree with no CPU after its children is done when its last answer arrives,
    /// at a time known now, and nothing can happen to it before then, so it completes here,
    /// at that time, instead of at an event of its own. A root completes only at an event
    /// (now): the client's answer and the run's counts happen in time order.
    fn complete(&mut self, mut call: u32, on_done: &mut impl FnMut(Completion)) {
        let mut t = self.now;
        loop {
            let k = self.calls[call as usize];
            self.calls[call as usize].rtype = DEAD;
            self.free.push(call);
            let back = t + k.delay_back;
            if k.parent == NONE {
                debug_assert_eq!(t, self.now, "a root completed ahead of its time");
                self.in_flight -= 1;
                on_done(Completion {
                    arrival: k.arrival,
                    done: back,
                    rtype: k.rtype,
                });
                if let Some(slot) = self.user_of.get_mut(call as usize) {
                    let user = std::mem::replace(slot, NONE);
                    if user != NONE {
                        self.user_answered(user, back);
                    }
                }
                return;
            }
            if self.node_of(&k).detached {
                return;
            }
            let p = &mut self.calls[k.parent as usize];
            p.pending -= 1;
            p.ready_at = p.ready_at.max(back);
            if p.pending > 0 {
                return;
            }
            t = p.ready_at;
            p.stage += 1;
            if self.start_stages(k.parent, t) {
                return;
            }
            let p = &self.calls[k.parent as usize];
            if p.parent == NONE || p.cpu_after > 0.0 {
                self.push(t, Kind::Resume(k.parent));
                return;
            }
            call = k.parent;
        }
    }

    /// After container `c` changed (already advanced to now; it had `before` busy calls):
    /// keeps the node's sharing right and reschedules what needs it.
    fn touch(&mut self, c: usize, before: usize) {
        let node = self.containers[c].node;
        if !self.node_cpus[node].is_empty() {
            self.touch_cpus(c, node);
            return;
        }
        let busy = self.node_busy[node] + self.containers[c].busy() - before;
        self.node_busy[node] = busy;
        let (rate, charge) = sharing(self.node_cores[node], self.scenario.node_smt[node], busy);
        if rate != self.node_rate[node] {
            self.refresh_node(node);
        } else {
            self.containers[c].set_rates(rate, charge);
            self.schedule(c);
        }
    }

    /// Per CPU, after container `c` changed: only the threads on a CPU whose count moved
    /// change speed, so only `c` and the containers with threads there are brought up to
    /// now and rescheduled (the others' clocks run on at unchanged rates). On a 32-CPU node
    /// most changes move one CPU with no other thread on it, so refreshing the whole node at
    /// each change, as before, cost 85% of a run.
    fn touch_cpus(&mut self, c: usize, node: usize) {
        let now = self.now;
        let cpus = &self.node_cpus[node];
        debug_assert_eq!(cpus.len(), self.cpus_before.len());
        let mut moved = std::mem::take(&mut self.cpus_moved);
        moved.clear();
        moved.extend((0..cpus.len()).filter(|&k| cpus[k] != self.cpus_before[k]));
        if !moved.is_empty() {
            for &m in &self.node_members[node] {
                let m = m as usize;
                if m != c && moved.iter().any(|&k| self.containers[m].runnable_on(k) > 0) {
                    let container = &mut self.containers[m];
                    container.advance(now);
                    container.set_cpu_rates(cpus);
                    let t = container.next_event().map_or(f64::INFINITY, |t| t.max(now));
                    self.next.set(m, t);
                }
            }
        }
        self.cpus_moved = moved;
        debug_assert!(
            self.cpu_counts_add_up(node),
            "node {node}'s per-CPU counts drifted"
        );
        self.containers[c].set_cpu_rates(&self.node_cpus[node]);
        debug_assert!(
            self.node_members[node]
                .iter()
                .all(|&m| self.containers[m as usize].cpu_rates_match(&self.node_cpus[node])),
            "a container on node {node} was left running at a stale rate"
        );
        self.schedule(c);
    }

    /// Per CPU: whether each of the node's CPU counts is what its containers have there.
    fn cpu_counts_add_up(&self, node: usize) -> bool {
        let cpus = &self.node_cpus[node];
        (0..cpus.len()).all(|k| {
            cpus[k]
                == self.node_members[node]
                    .iter()
                    .map(|&m| self.containers[m as usize].runnable_on(k))
                    .sum::<u32>()
        })
    }

    /// Recomputes a node's sharing and reschedules all its containers.
    fn refresh_node(&mut self, node: usize) {
        let now = self.now;
        for &m in &self.node_members[node] {
            self.containers[m as usize].advance(now);
        }
        if !self.node_cpus[node].is_empty() {
            debug_assert!(
                self.cpu_counts_add_up(node),
                "node {node}'s per-CPU counts drifted"
            );
            let members = std::mem::take(&mut self.node_members[node]);
            for &m in &members {
                self.containers[m as usize].set_cpu_rates(&self.node_cpus[node]);
                self.schedule(m as usize);
            }
            self.node_members[node] = members;
            return;
        }
        let busy: usize = self.node_members[node]
            .iter()
            .map(|&m| self.containers[m as usize].busy())
            .sum();
        let (rate, charge) = sharing(self.node_cores[node], self.scenario.node_smt[node], busy);
        self.node_busy[node] = busy;
        self.node_rate[node] = rate;
        let members = std::mem::take(&mut self.node_members[node]);
        for &m in &members {
            self.containers[m as usize].set_rates(rate, charge);
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

/// How fast each busy thread on a node runs, in cores, and the CPU time its cgroup is charged
/// per unit of that work: one core and 1, unless the node is oversubscribed (each gets its
/// share) or, on an SMT node (`smt`: what a core's second busy thread adds), more than half
/// its hardware threads are busy. Linux puts a woken thread on an idle core first, so the
/// first `cores / 2` threads have a core each; past them, threads pair up on cores, each pair
/// doing `1 + smt` threads' work, and each thread is charged its whole time on its hardware
/// thread.
#[inline]
fn sharing(cores: f64, smt: Option<f64>, busy: usize) -> (f64, f64) {
    let b = busy as f64;
    match smt {
        None if b <= cores => (1.0, 1.0),
        None => (cores / b, 1.0),
        Some(y) => {
            let physical = cores / 2.0;
            if b <= physical {
                (1.0, 1.0)
            } else {
                // Work done by the node's cores, and the share of time each thread holds a
                // hardware thread.
                let work = physical + y * (b.min(cores) - physical);
                let rate = work / b;
                let on_cpu = (cores / b).min(1.0);
                (rate, on_cpu / rate)
            }
        }
    }
}

/// A request mix to draw types from (weights validated positive).
fn mix_of(weights: &[f64]) -> WeightedIndex<f64> {
    WeightedIndex::new(weights.iter().copied()).expect("validated: positive weights")
}

/// The stream of arrival times, request types and request seeds.
fn arrivals_rng(seed: u64) -> Pcg64Mcg {
    Pcg64Mcg::seed_from_u64(splitmix(seed ^ 0xA11_1A15))
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
