//! One benchmark run: scenario + trace (+ ramp) + a scaler per service (+ targets) + a Tower +
//! a seed, sampled exactly as on a real node (scalers every 100 ms, the Tower every minute),
//! summarised as design.md section 4 says and streamed to a run record.

pub use controller::TowerKind;
use controller::{MinuteObservation, Scaler, Targets, Tower, TowerMemory};
use hdrhistogram::Histogram;
use record::latency::{histogram, quantile_ms as ms};
pub use record::RunPlan;
use record::{
    throttle_ratio, Latencies, MinuteRow, RecordWriter, RequestRow, RunInfo, ServiceRow, Summary,
};

use crate::cfs::{Counters, PERIOD};
use crate::engine::{boundary, Completion, Engine, EngineStats};
use crate::Result;

const PERIODS_PER_SECOND: u64 = 10;
const PERIODS_PER_MINUTE: u64 = 600;
/// How long a run goes on after the trace to let requests in flight finish.
const DRAIN_S: u64 = 60;
/// Allocation is averaged from this long after the ramp (210 s with the standard 180 s ramp).
const SETTLE_S: usize = 30;

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub info: RunInfo,
    /// The Tower's memory after the run (for the next run of a protocol).
    pub memory: TowerMemory,
    pub stats: EngineStats,
    /// Peak number of requests in flight.
    pub peak_in_flight: u64,
    /// Mean cores each service used after the ramp (scenario order).
    pub service_usage: Vec<f64>,
}

/// The run's Tower, as the runner builds it: from the plan's memory and seed.
pub(crate) fn tower_for(cfg: &RunPlan) -> Result<Box<dyn controller::Tower>> {
    let scenario = &cfg.scenario;
    Ok(cfg.tower.build(
        scenario.slo_ms,
        scenario.aggregate_rps,
        cfg.ramp_s,
        cfg.memory.clone(),
        cfg.seed,
    )?)
}

/// How many times a run asks its Tower: at the end of every whole minute.
pub(crate) fn tower_minutes(cfg: &RunPlan) -> usize {
    (cfg.rates().len() as u64 * PERIODS_PER_SECOND / PERIODS_PER_MINUTE) as usize
}

/// Runs one configuration, streaming the record to `writer` if given; `progress` is called
/// every simulated second with (seconds done, seconds in total).
pub fn run(
    cfg: &RunPlan,
    mut writer: Option<RecordWriter>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RunOutput> {
    cfg.validate()?;
    let scenario = &*cfg.scenario;
    let rates = cfg.rates();
    let seconds = rates.len() as u64;
    let n = scenario.services.len();
    let mut control = Control::new(cfg)?;
    let mut engine = Engine::new(scenario, rates, cfg.load, &control.limits, cfg.seed);
    if let Some(log) = &cfg.arrivals {
        let names: Vec<&str> = scenario.requests.iter().map(|r| r.name.as_str()).collect();
        engine = engine.with_arrivals(log.t.clone(), log.kinds_in(&names)?);
    }
    if cfg.burst > 0.0 {
        engine = engine.with_burst(cfg.burst);
    }
    if cfg.mix_cycle_s > 0 {
        engine = engine.with_mix_cycle(cfg.mix_cycle_s);
    }
    let mut latency = Latency::new(cfg.ramp_s as f64, scenario.requests.len(), scenario.slo_ms);
    let mut watch = cfg
        .stop_when_missed
        .then(|| MissWatch::new(cfg.ramp_s, scenario.slo_ms));
    let mut stopped_s = None;
    let mut requests_prev = (
        vec![0u64; scenario.requests.len()],
        vec![0u64; scenario.requests.len()],
    );
    let mut alloc = Allocation::new((cfg.ramp_s + SETTLE_S) as f64);
    let mut minutes = Minutes::default();
    let mut second_prev: Vec<Counters> = vec![Counters::default(); n];
    // usage, periods, throttled, arrivals at the end of the ramp; each service's usage then.
    let mut ramp_counters: Option<(f64, u64, u64, u64)> = None;
    let mut service_ramp = vec![0.0; n];
    let mut peak_in_flight = 0u64;

    let total_periods = seconds * PERIODS_PER_SECOND;
    for k in 1..=total_periods {
        let t = boundary(k);
        engine.run_until(t, &mut |c| latency.record(c));
        peak_in_flight = peak_in_flight.max(engine.in_flight());
        alloc.period(t, &control.limits, &control.groups);
        engine.end_period(|i, counters| control.sample(i, &counters.sample(t)));

        if k % PERIODS_PER_SECOND == 0 {
            minutes.second(engine.stats.arrivals);
            let second = k / PERIODS_PER_SECOND;
            if let Some(w) = watch.as_mut() {
                if w.missed(&engine, &latency) {
                    stopped_s = Some(second as f64);
                }
            }
            if second as usize == cfg.ramp_s {
                ramp_counters = Some(totals(&engine, n));
                service_ramp = (0..n).map(|i| engine.counters(i).usage).collect();
            }
            if let Some(w) = writer.as_mut().filter(|w| w.wants_services()) {
                for (i, prev) in second_prev.iter_mut().enumerate() {
                    let now = engine.counters(i);
                    w.service(&ServiceRow::new(
                        second as u32,
                        &scenario.services[i].name,
                        control.limits[i],
                        now.usage - prev.usage,
                        now.nr_periods - prev.nr_periods,
                        now.nr_throttled - prev.nr_throttled,
                    ))?;
                    *prev = now;
                }
                let (sent_prev, done_prev) = &mut requests_prev;
                for (r, def) in scenario.requests.iter().enumerate() {
                    let (sent, done) = (engine.sent()[r], latency.answered[r]);
                    w.request(&RequestRow {
                        t: second as u32,
                        request: def.name.clone(),
                        sent: sent - sent_prev[r],
                        completed: done - done_prev[r],
                    })?;
                    (sent_prev[r], done_prev[r]) = (sent, done);
                }
            }
            progress(second, seconds);
        }
        if k % PERIODS_PER_MINUTE == 0 {
            minutes.end(
                &engine,
                &mut latency,
                &mut alloc,
                &mut control,
                writer.as_mut(),
            )?;
        }
        if stopped_s.is_some() {
            break;
        }
    }

    // Let the requests still in flight finish (CFS and scalers keep running); the SLO rule
    // counts the rest as misses. A run stopped early judges what was sent by then.
    let (usage_end, periods_end, throttled_end, arrivals_end) = totals(&engine, n);
    let service_end: Vec<f64> = (0..n).map(|i| engine.counters(i).usage).collect();
    let mut k = total_periods;
    while stopped_s.is_none()
        && engine.in_flight() > 0
        && k < total_periods + DRAIN_S * PERIODS_PER_SECOND
    {
        k += 1;
        let t = boundary(k);
        engine.run_until(t, &mut |c| latency.record(c));
        engine.end_period(|i, counters| control.sample(i, &counters.sample(t)));
    }
    let mut incomplete_by_type = vec![0u64; scenario.requests.len()];
    for (arrival, rtype) in engine.in_flight_requests() {
        if arrival >= latency.ramp_end {
            incomplete_by_type[rtype as usize] += 1;
        }
    }
    let incomplete = incomplete_by_type.iter().sum();

    let (usage0, periods0, throttled0, arrivals0) = ramp_counters.unwrap_or((0.0, 0, 0, 0));
    if stopped_s.is_some() {
        // The minute it stopped in ran under the targets in force too.
        minutes.targets.push((minutes.minute, control.targets));
    }
    let ran_s = stopped_s.map_or(seconds, |s| s as u64);
    let trace_s = (ran_s as usize).saturating_sub(cfg.ramp_s).max(1) as f64;
    let mut info = crate::run_info(cfg);
    let mut latencies = Latencies::judge(&latency.overall, incomplete, scenario.slo_ms);
    // Certain, whatever the requests sent by then say on their own.
    latencies.slo_met &= stopped_s.is_none();
    info.summary = Summary {
        stopped_s,
        ..Summary::new(
            latencies,
            alloc.mean(),
            (usage_end - usage0) / trace_s,
            (arrivals_end - arrivals0) as f64 / trace_s,
            throttle_ratio(throttled_end - throttled0, periods_end - periods0),
        )
    }
    .with_mean_targets(&minutes.targets, cfg.ramp_s)
    .with_by_request(
        scenario
            .requests
            .iter()
            .zip(&latency.by_type)
            .zip(&incomplete_by_type)
            .map(|((r, h), &n)| (r.name.as_str(), h, n)),
        scenario.slo_ms,
    );
    let memory = control.tower.into_memory();
    if let Some(w) = writer {
        if cfg.tower != TowerKind::None {
            w.tower(&memory)?;
        }
        w.finish(&info)?;
    }
    Ok(RunOutput {
        info,
        memory,
        stats: engine.stats,
        peak_in_flight,
        service_usage: service_end
            .iter()
            .zip(&service_ramp)
            .map(|(e, r)| (e - r) / trace_s)
            .collect(),
    })
}

/// The controllers of a run: a scaler per container (its limit never above the node's cores)
/// and the Tower above them.
struct Control {
    scalers: Vec<Box<dyn Scaler>>,
    /// The limit in force per container, cores.
    limits: Vec<f64>,
    groups: Vec<u8>,
    tower: Box<dyn Tower>,
    targets: Targets,
}

impl Control {
    fn new(cfg: &RunPlan) -> Result<Control> {
        let scenario = &*cfg.scenario;
        let node_cores: Vec<f64> = scenario
            .services
            .iter()
            .map(|s| scenario.nodes[s.node].1)
            .collect();
        let mut scalers: Vec<Box<dyn Scaler>> = Vec::with_capacity(scenario.services.len());
        let mut limits = Vec::with_capacity(scenario.services.len());
        for ((s, initial), cores) in scenario
            .services
            .iter()
            .zip(cfg.initial_limits())
            .zip(&node_cores)
        {
            let scaler = cfg
                .scaler
                .config(cfg.targets.for_group(s.group), initial)
                .build_with_ceiling(*cores)?;
            limits.push(scaler.limit());
            scalers.push(scaler);
        }
        let tower = tower_for(cfg)?;
        Ok(Control {
            scalers,
            limits,
            groups: scenario.services.iter().map(|s| s.group).collect(),
            tower,
            targets: cfg.targets,
        })
    }

    /// Feeds container `i`'s counters to its scaler; the new limit.
    fn sample(&mut self, i: usize, sample: &controller::CpuSample) -> f64 {
        let l = self.scalers[i].sample(sample);
        self.limits[i] = l;
        l
    }

    /// The Tower's minute: new targets to every scaler, if it chose any.
    fn observe(&mut self, minute: &MinuteObservation) -> Result<()> {
        if let Some(new) = self.tower.observe(minute) {
            self.targets = new;
            for (s, group) in self.scalers.iter_mut().zip(&self.groups) {
                s.set_target(new.for_group(*group))?;
            }
        }
        Ok(())
    }
}

/// Latency histograms: the run's (requests that arrived after the ramp) and the minute's.
struct Latency {
    ramp_end: f64,
    overall: Histogram<u64>,
    minute: Histogram<u64>,
    /// Requests answered so far, per request type.
    answered: Vec<u64>,
    slo_us: u64,
    /// Judged requests answered within the SLO so far.
    within_slo: u64,
    /// The judged requests' latencies per request type.
    by_type: Vec<Histogram<u64>>,
}

impl Latency {
    fn new(ramp_end: f64, request_types: usize, slo_ms: f64) -> Latency {
        Latency {
            ramp_end,
            overall: histogram(),
            minute: histogram(),
            answered: vec![0; request_types],
            slo_us: (slo_ms * 1000.0) as u64,
            within_slo: 0,
            by_type: (0..request_types).map(|_| histogram()).collect(),
        }
    }

    fn record(&mut self, c: Completion) {
        self.answered[c.rtype as usize] += 1;
        let us = ((c.done - c.arrival) * 1e6).round().max(1.0) as u64;
        self.minute.saturating_record(us);
        if c.arrival >= self.ramp_end {
            self.overall.saturating_record(us);
            self.within_slo += u64::from(us <= self.slo_us);
            self.by_type[c.rtype as usize].saturating_record(us);
        }
    }
}

/// Watches a run for the moment its SLO verdict is certain to be a miss
/// ([`RunPlan::stop_when_missed`]).
///
/// With open-loop arrivals the number of requests judged, `n`, is fixed before the run, and
/// the P99 is the `ceil(0.99 n)`-th smallest of their latencies (the histogram's rule,
/// [`Latencies::judge`]); once more than `n - ceil(0.99 n)` of them are certain to exceed the
/// SLO, nothing later can bring the P99 back under it. A request sent more than the SLO (and
/// a margin) before now and not answered within the SLO is such a request, so at least the
/// judged requests sent before then, less every judged answer within the SLO so far, are
/// (a lower bound: a few of those answers are of later requests). That needs only counts,
/// at each second's end.
struct MissWatch {
    ramp_s: usize,
    /// Whole seconds, at least the SLO and a millisecond (rounding to microseconds).
    lag: usize,
    /// Requests sent before each second boundary so far.
    sent: Vec<u64>,
    /// Requests the run judges, once the misses make it worth drawing them.
    judged: Option<u64>,
}

impl MissWatch {
    fn new(ramp_s: usize, slo_ms: f64) -> MissWatch {
        MissWatch {
            ramp_s,
            lag: (slo_ms / 1000.0 + 1e-3).ceil() as usize,
            sent: vec![0],
            judged: None,
        }
    }

    /// At a second's end: whether the run has certainly missed its SLO.
    fn missed(&mut self, engine: &Engine<'_>, latency: &Latency) -> bool {
        self.sent.push(engine.stats.arrivals);
        let now = self.sent.len() - 1;
        let Some(old) = now.checked_sub(self.lag).filter(|&s| s > self.ramp_s) else {
            return false;
        };
        let base = self.sent[self.ramp_s];
        let missed = (self.sent[old] - base).saturating_sub(latency.within_slo);
        // Too few even against the requests sent so far: not worth drawing them all.
        if missed * 100 <= self.sent[now] - base {
            return false;
        }
        let Some(n) = self
            .judged
            .or_else(|| engine.sends_from(self.ramp_s as f64))
        else {
            return false;
        };
        self.judged = Some(n);
        missed > n - (0.99 * n as f64).ceil() as u64
    }
}

/// Core-seconds of limits: after settling, over the whole run (the fallback for runs too short
/// to settle), and in the current minute (total, group 1, group 2).
struct Allocation {
    settle: f64,
    sum: f64,
    time: f64,
    all: f64,
    time_all: f64,
    minute: [f64; 3],
}

impl Allocation {
    fn new(settle: f64) -> Allocation {
        Allocation {
            settle,
            sum: 0.0,
            time: 0.0,
            all: 0.0,
            time_all: 0.0,
            minute: [0.0; 3],
        }
    }

    /// The limits in force during the period that ends at `t`.
    fn period(&mut self, t: f64, limits: &[f64], groups: &[u8]) {
        let settled = t - PERIOD >= self.settle - 1e-9;
        for (&l, &g) in limits.iter().zip(groups) {
            let a = l * PERIOD;
            self.minute[0] += a;
            self.minute[g as usize] += a;
            self.all += a;
            if settled {
                self.sum += a;
            }
        }
        self.time_all += PERIOD;
        if settled {
            self.time += PERIOD;
        }
    }

    /// Time-weighted mean of the summed limits (design.md section 4), cores.
    fn mean(&self) -> f64 {
        if self.time > 0.0 {
            self.sum / self.time
        } else {
            self.all / self.time_all.max(PERIOD)
        }
    }
}

/// The minute rows: where the last minute started, and the targets each minute had.
#[derive(Default)]
struct Minutes {
    minute: u32,
    start_arrivals: u64,
    /// Arrivals so far at the last second's end, and each second's arrivals this minute.
    second_arrivals: u64,
    per_second: Vec<f64>,
    start_usage: f64,
    targets: Vec<(u32, Targets)>,
}

impl Minutes {
    /// Closes a second, given the arrivals so far.
    fn second(&mut self, arrivals: u64) {
        self.per_second
            .push(arrivals.saturating_sub(self.second_arrivals) as f64);
        self.second_arrivals = arrivals;
    }

    /// Closes a minute: its row, then the Tower's decision for the next.
    fn end(
        &mut self,
        engine: &Engine<'_>,
        latency: &mut Latency,
        alloc: &mut Allocation,
        control: &mut Control,
        writer: Option<&mut RecordWriter>,
    ) -> Result<()> {
        let (usage, _, _, arrivals) = totals(engine, control.limits.len());
        let arrived = arrivals - self.start_arrivals;
        let rps = arrived as f64 / 60.0;
        let h = &latency.minute;
        let completed = h.len();
        // A minute in which nothing completed is as bad as a minute can be.
        let p99 = if completed == 0 && arrived > 0 {
            60_000.0
        } else {
            ms(h, 0.99)
        };
        let targets = control.targets;
        let row = MinuteRow {
            minute: self.minute,
            rps,
            completed,
            p50_ms: ms(h, 0.50),
            p90_ms: ms(h, 0.90),
            p99_ms: p99,
            allocation: alloc.minute[0] / 60.0,
            allocation_group1: alloc.minute[1] / 60.0,
            allocation_group2: alloc.minute[2] / 60.0,
            usage: (usage - self.start_usage) / 60.0,
            target1: targets.group1,
            target2: targets.group2,
        };
        self.targets.push((self.minute, targets));
        if let Some(w) = writer {
            w.minute(&row)?;
        }
        control.observe(&MinuteObservation {
            rps_cv: controller::rps_cv(&self.per_second),
            rps,
            p99_ms: p99,
            allocation: row.allocation,
        })?;
        self.minute += 1;
        latency.minute.reset();
        alloc.minute = [0.0; 3];
        self.start_arrivals = arrivals;
        self.start_usage = usage;
        self.per_second.clear();
        Ok(())
    }
}

/// (usage, nr_periods, nr_throttled) summed over services, and arrivals so far.
fn totals(engine: &Engine<'_>, n: usize) -> (f64, u64, u64, u64) {
    let mut usage = 0.0;
    let mut periods = 0;
    let mut throttled = 0;
    for i in 0..n {
        let c = engine.counters(i);
        usage += c.usage;
        periods += c.nr_periods;
        throttled += c.nr_throttled;
    }
    (usage, periods, throttled, engine.stats.arrivals)
}
