//! The coordinator of a live run (`live run`): the Tower's side of Autothrottle on a real app.
//!
//! One run, in order:
//!
//! 1. Check everything that can be checked without touching the app: scenario, trace, targets,
//!    Tower, request mix, URL, that the app answers TCP at the URL, that every agent answers
//!    `hello` and together they hold a container for every service of the scenario. Nothing
//!    has been throttled yet, so any error here leaves the cluster exactly as it was.
//! 2. `start` the scalers on every agent (a container is matched to a service by name: `svc`,
//!    or `svc@pod` for replicas, on whichever agent has it).
//! 3. Replay ramp + trace as load, open-loop Poisson or closed-loop users ([`crate::loadgen`]). Every second: `stats` from
//!    every agent, rows placed on the run's clock. Every minute (a couple of seconds late, so
//!    that the minute's rows are in): RPS, P99 and allocation of the minute to the Tower, new
//!    targets to the agents, a row to `minutes.csv`.
//! 4. `stop` every agent (original limits back) and write `run.json`, whether the run ended,
//!    was interrupted (Ctrl-C) or gave up (the app stopped answering).
//!
//! An agent that stops answering mid-run is reported; the run goes on with the others, its
//! containers get a [`Gap`](record::Gap) in the record, and the coordinator reconnects every few seconds
//! (a restarted agent gets its scalers back and the gap closes).

//!
//! The parts: [`RunSpec`] (what to run and where, checked before anything is touched), the
//! connection to one agent (`connection`), the run's state between seconds and how agents'
//! rows become the record's seconds and minutes (`state`), the app-side checks (`app`) and
//! the summary (`summary`); this file holds the run's loop.

mod app;
mod connection;
mod spec;
mod state;
mod summary;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use controller::{Tower, TowerKind, TowerMemory};
use record::latency::quantile_ms;
use record::{RecordWriter, RunInfo};
use tokio::time::Instant;

pub use app::probe_app;
pub use spec::RunSpec;

use crate::loadgen::{LoadGen, Stats};
use crate::LiveError;
use app::dead_app;
use state::{discover, RunState};
use summary::summary;

/// How long a minute's processing waits for the minute's last rows, seconds.
const MINUTE_GRACE_S: f64 = 2.5;
/// Seconds between attempts to reach a lost agent again.
const RETRY_S: f64 = 5.0;

/// What a live run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub info: RunInfo,
    /// The Tower's memory after the run.
    pub memory: TowerMemory,
    /// Why the run ended early, if it did.
    pub stopped: Option<String>,
    /// Send lateness of the load generator, p99, ms.
    pub lateness_p99_ms: f64,
}

/// Runs `spec` against the live app, writing the record with `writer`. `shutdown` ends the run
/// early (Ctrl-C); `progress` gets (seconds done, seconds in total).
pub async fn run(
    spec: &RunSpec,
    writer: RecordWriter,
    shutdown: impl Future<Output = ()>,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<Outcome, LiveError> {
    // Everything that can fail before a quota is written, first.
    spec.validate()?;
    let mut config = spec.load_config()?;
    config.arrivals_log = Some(writer.dir().join(record::arrivals::FILE));
    let mut load = LoadGen::new(config)?;
    let mut tower = spec.plan.tower.build(
        spec.plan.scenario.slo_ms,
        spec.plan.scenario.aggregate_rps,
        spec.plan.ramp_s,
        spec.plan.memory.clone(),
        spec.plan.seed,
    )?;
    probe_app(&spec.url, spec.agent_timeout.max(Duration::from_secs(3))).await?;
    load.init().await?;
    let load = Arc::new(load);
    let (agents, containers) = discover(spec).await?;
    let mut r = RunState::new(spec, agents, containers, writer);
    r.start_everywhere().await?;
    tracing::info!(
        containers = r.containers.len(),
        agents = r.agents.len(),
        seconds = r.total_s,
        "scalers started; replaying the workload"
    );

    let t0 = Instant::now();
    let ending = replay(&mut r, &mut *tower, &load, t0, shutdown, progress).await;
    // The last rows, then the limits back, whatever happened.
    r.poll(t0).await;
    r.stop_all().await;
    let stopped = ending?;
    let elapsed = t0.elapsed().as_secs_f64();
    let stats = load.stats();
    r.flush(elapsed, if stopped.is_some() { 1.0 } else { 0.0 }, &stats)?;
    if stopped.is_none() {
        r.minutes(&stats, &mut *tower, f64::INFINITY).await?;
    }
    if let Some(why) = &stopped {
        tracing::warn!("run ended early at {elapsed:.0} s: {why}");
    }
    let stats = stats.lock().expect("stats lock");
    write_record(r, tower, &stats, stopped)
}

/// Replays the workload while following the agents every second and the Tower every minute,
/// until the trace is done (`Ok(None)`), the run is stopped early (`Ok(Some(why))`) or fails.
async fn replay(
    r: &mut RunState<'_>,
    tower: &mut dyn Tower,
    load: &Arc<LoadGen>,
    t0: Instant,
    shutdown: impl Future<Output = ()>,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<Option<String>, LiveError> {
    let stats = load.stats();
    let total_s = r.total_s;
    let sender = {
        let load = load.clone();
        tokio::spawn(async move { load.run().await })
    };
    let mut tick =
        tokio::time::interval_at(t0 + Duration::from_millis(250), Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let stopped = loop {
        tokio::select! {
            _ = &mut shutdown => break Some("interrupted".to_string()),
            _ = tick.tick() => {}
        }
        r.poll(t0).await;
        let elapsed = t0.elapsed().as_secs_f64();
        r.retry(elapsed).await;
        let step = match r.flush(elapsed, 2.0, &stats) {
            Ok(()) => r.minutes(&stats, tower, elapsed).await,
            Err(e) => Err(e),
        };
        if let Err(e) = step {
            sender.abort();
            return Err(e);
        }
        progress((elapsed as u64).min(total_s as u64), total_s as u64);
        if let Some(why) = dead_app(&stats, elapsed, r.spec) {
            break Some(why);
        }
        if sender.is_finished() && elapsed >= total_s as f64 + MINUTE_GRACE_S {
            break None;
        }
    };
    if stopped.is_some() {
        sender.abort();
        return Ok(stopped);
    }
    match sender.await {
        Ok(Ok(())) => Ok(None),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(LiveError::Internal(format!("load generator task: {e}"))),
    }
}

/// Writes the summary, the Tower's memory and `run.json`.
fn write_record(
    r: RunState<'_>,
    tower: Box<dyn Tower>,
    stats: &Stats,
    stopped: Option<String>,
) -> Result<Outcome, LiveError> {
    let spec = r.spec;
    let mut info = spec.info();
    info.complete = stopped.is_none();
    info.summary = summary(spec, &r, stats).with_mean_targets(&r.minute_targets, spec.plan.ramp_s);
    info.gaps = r.gaps.clone();
    let memory = tower.into_memory();
    let RunState { writer, .. } = r;
    if spec.plan.tower != TowerKind::None {
        writer.tower(&memory)?;
    }
    writer.finish(&info)?;
    Ok(Outcome {
        info,
        memory,
        stopped,
        lateness_p99_ms: quantile_ms(&stats.lateness, 0.99),
    })
}
