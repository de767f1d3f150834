//! A live run's summary, by the same rules as the simulator's ([`record::Summary`]).

use record::{throttle_ratio, Latencies, Summary};

use super::state::RunState;
use super::RunSpec;
use crate::loadgen::Stats;

/// Allocation is averaged from this long after the ramp (as in the simulator).
const SETTLE_S: usize = 30;

/// The run's numbers, as design.md section 4 defines them, over the seconds it ran.
pub(super) fn summary(spec: &RunSpec, r: &RunState<'_>, s: &Stats) -> Summary {
    let end = r.flushed;
    let ramp = spec.plan.ramp_s.min(end);
    let settle = (spec.plan.ramp_s + SETTLE_S).min(end);
    let mean = |from: usize| {
        let span = &r.per_second[from..end];
        span.iter().map(|p| p.alloc[0]).sum::<f64>() / span.len().max(1) as f64
    };
    let allocation = if settle < end { mean(settle) } else { mean(0) };
    let trace_s = (end - ramp).max(1) as f64;
    let after = &r.per_second[ramp..end];
    let periods: u64 = after.iter().map(|p| p.periods).sum();
    let throttled: u64 = after.iter().map(|p| p.throttled).sum();
    let sent: u64 = s.seconds[ramp.min(s.seconds.len())..end.min(s.seconds.len())]
        .iter()
        .map(|x| x.sent)
        .sum();
    let incomplete: u64 = s.seconds[ramp.min(s.seconds.len())..]
        .iter()
        .map(|x| x.sent - x.done())
        .sum();
    let judged = &s.seconds[ramp.min(s.seconds.len())..];
    let by_kind = s.by_kind.iter().enumerate().map(|(k, (name, h))| {
        let sent: u64 = judged.iter().map(|x| x.sent_by_kind[k]).sum();
        (name.as_str(), h, sent.saturating_sub(h.len()))
    });
    Summary::new(
        Latencies::judge(&s.overall, incomplete, spec.plan.scenario.slo_ms),
        allocation,
        after.iter().map(|p| p.usage).sum::<f64>() / trace_s,
        sent as f64 / trace_s,
        throttle_ratio(throttled, periods),
    )
    .with_by_request(by_kind, spec.plan.scenario.slo_ms)
}
