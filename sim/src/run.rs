//! One benchmark run: scenario + trace (+ ramp) + a scaler per service (+ targets) + a Tower +
//! a seed, sampled exactly as on a real node (scalers every 100 ms, the Tower every minute),
//! summarised as design.md section 4 says and streamed to a run record.

pub use controller::TowerKind;
use controller::{MinuteObservation, Scaler, Targets, TowerMemory};
use hdrhistogram::Histogram;
use record::latency::{histogram, quantile_ms as ms};
pub use record::RunPlan;
use record::{throttle_ratio, Latencies, MinuteRow, RecordWriter, RunInfo, ServiceRow, Summary};

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
    let node_cores: Vec<f64> = scenario
        .services
        .iter()
        .map(|s| scenario.nodes[s.node].1)
        .collect();
    let cap = |i: usize, l: f64| l.min(node_cores[i]);
    let mut scalers: Vec<Box<dyn Scaler>> = Vec::with_capacity(scenario.services.len());
    let mut limits = Vec::with_capacity(scenario.services.len());
    let initials = cfg.initial_limits();
    for (i, s) in scenario.services.iter().enumerate() {
        let initial = initials[i];
        let scaler = cfg
            .scaler
            .config(cfg.targets.for_group(s.group), initial)
            .build()?;
        limits.push(cap(i, scaler.limit()));
        scalers.push(scaler);
    }
    let mut tower = cfg.tower.build(
        scenario.slo_ms,
        scenario.aggregate_rps,
        cfg.ramp_s,
        cfg.memory.clone(),
        cfg.seed,
    )?;
    let mut targets = cfg.targets;

    let mut engine = Engine::new(scenario, rates, cfg.load, &limits, cfg.seed);
    let n = scenario.services.len();
    let settle = (cfg.ramp_s + SETTLE_S) as f64;

    let mut overall = histogram();
    let mut minute_hist = histogram();
    let ramp_end = cfg.ramp_s as f64;
    let record_completion =
        |c: Completion, overall: &mut Histogram<u64>, minute: &mut Histogram<u64>| {
            let us = ((c.done - c.arrival) * 1e6).round().max(1.0) as u64;
            minute.saturating_record(us);
            if c.arrival >= ramp_end {
                overall.saturating_record(us);
            }
        };

    // Accumulators.
    // Core-seconds of limits and seconds: after settling, and over the whole run (the fallback
    // for runs too short to settle).
    let mut alloc_sum = 0.0;
    let mut alloc_time = 0.0;
    let mut alloc_all = 0.0;
    let mut time_all = 0.0;
    let mut minute_alloc = [0.0f64; 3]; // total, group 1, group 2 (core-seconds)
    let mut minute_start_arrivals = 0u64;
    let mut minute_start_usage = 0.0f64;
    let mut second_prev: Vec<Counters> = vec![Counters::default(); n];
    let mut minute_targets: Vec<(u32, Targets)> = Vec::new();
    let mut ramp_counters: Option<(f64, u64, u64, u64)> = None; // usage, periods, throttled, arrivals at ramp end
    let mut peak_in_flight = 0u64;
    let mut service_ramp = vec![0.0; n];
    let mut minute: u32 = 0;
    let groups: Vec<u8> = scenario.services.iter().map(|s| s.group).collect();

    let total_periods = seconds * PERIODS_PER_SECOND;
    for k in 1..=total_periods {
        let t = boundary(k);
        engine.run_until(t, &mut |c| {
            record_completion(c, &mut overall, &mut minute_hist)
        });
        peak_in_flight = peak_in_flight.max(engine.in_flight());
        // The limits in force during the period that just ended.
        for (i, &l) in limits.iter().enumerate() {
            let a = l * PERIOD;
            minute_alloc[0] += a;
            minute_alloc[groups[i] as usize] += a;
            alloc_all += a;
            if t - PERIOD >= settle - 1e-9 {
                alloc_sum += a;
            }
        }
        time_all += PERIOD;
        if t - PERIOD >= settle - 1e-9 {
            alloc_time += PERIOD;
        }
        engine.end_period(|i, counters| {
            let l = cap(i, scalers[i].sample(&counters.sample(t)));
            limits[i] = l;
            l
        });

        if k % PERIODS_PER_SECOND == 0 {
            let second = k / PERIODS_PER_SECOND;
            if second as usize == cfg.ramp_s {
                ramp_counters = Some(totals(&engine, n));
                service_ramp = (0..n).map(|i| engine.counters(i).usage).collect();
            }
            if let Some(w) = writer.as_mut().filter(|w| w.wants_services()) {
                for i in 0..n {
                    let now = engine.counters(i);
                    let prev = second_prev[i];
                    w.service(&ServiceRow::new(
                        second as u32,
                        &scenario.services[i].name,
                        limits[i],
                        now.usage - prev.usage,
                        now.nr_periods - prev.nr_periods,
                        now.nr_throttled - prev.nr_throttled,
                    ))?;
                    second_prev[i] = now;
                }
            }
            progress(second, seconds);
        }

        if k % PERIODS_PER_MINUTE == 0 {
            let (usage, _, _, arrivals) = totals(&engine, n);
            let arrived = arrivals - minute_start_arrivals;
            let rps = arrived as f64 / 60.0;
            let completed = minute_hist.len();
            let p99 = if completed == 0 && arrived > 0 {
                60_000.0
            } else {
                ms(&minute_hist, 0.99)
            };
            let row = MinuteRow {
                minute,
                rps,
                completed,
                p50_ms: ms(&minute_hist, 0.50),
                p90_ms: ms(&minute_hist, 0.90),
                p99_ms: p99,
                allocation: minute_alloc[0] / 60.0,
                allocation_group1: minute_alloc[1] / 60.0,
                allocation_group2: minute_alloc[2] / 60.0,
                usage: (usage - minute_start_usage) / 60.0,
                target1: targets.group1,
                target2: targets.group2,
            };
            minute_targets.push((minute, targets));
            if let Some(w) = writer.as_mut() {
                w.minute(&row)?;
            }
            if let Some(new) = tower.observe(&MinuteObservation {
                rps,
                p99_ms: p99,
                allocation: row.allocation,
            }) {
                targets = new;
                for (i, s) in scalers.iter_mut().enumerate() {
                    s.set_target(targets.for_group(groups[i]))?;
                }
            }
            minute += 1;
            minute_hist.reset();
            minute_alloc = [0.0; 3];
            minute_start_arrivals = arrivals;
            minute_start_usage = usage;
        }
    }

    // Let the requests still in flight finish (CFS and scalers keep running); the SLO rule
    // counts the rest as misses.
    let (usage_end, periods_end, throttled_end, arrivals_end) = totals(&engine, n);
    let service_end: Vec<f64> = (0..n).map(|i| engine.counters(i).usage).collect();
    let mut k = total_periods;
    while engine.in_flight() > 0 && k < total_periods + DRAIN_S * PERIODS_PER_SECOND {
        k += 1;
        let t = boundary(k);
        engine.run_until(t, &mut |c| {
            record_completion(c, &mut overall, &mut minute_hist)
        });
        engine.end_period(|i, counters| {
            let l = cap(i, scalers[i].sample(&counters.sample(t)));
            limits[i] = l;
            l
        });
    }
    let stuck = engine.in_flight_arrivals();
    let incomplete = stuck.iter().filter(|&&a| a >= ramp_end).count() as u64;

    let (usage0, periods0, throttled0, arrivals0) = ramp_counters.unwrap_or((0.0, 0, 0, 0));
    let trace_s = (seconds as usize).saturating_sub(cfg.ramp_s).max(1) as f64;
    let mut info = cfg.info("sim");
    info.summary = Summary::new(
        Latencies::judge(&overall, incomplete, scenario.slo_ms),
        if alloc_time > 0.0 {
            alloc_sum / alloc_time
        } else {
            alloc_all / time_all.max(PERIOD)
        },
        (usage_end - usage0) / trace_s,
        (arrivals_end - arrivals0) as f64 / trace_s,
        throttle_ratio(throttled_end - throttled0, periods_end - periods0),
    )
    .with_mean_targets(&minute_targets, cfg.ramp_s);
    let memory = tower.into_memory();
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
