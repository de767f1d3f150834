//! Fitting a scenario's CPU costs to recorded runs (`sim calibrate`).
//!
//! Nobody can write down the CPU cost of every call of a real app, but every run record holds
//! what it takes to measure them: per second, how many requests of each type were sent
//! (`requests.csv`) and how much CPU each service used (`services.csv`). A service's usage in a
//! second is, up to noise, a background rate plus the sum over its calls of (how often the
//! call happened that second) x (its CPU per call). Those counts follow from the requests sent
//! and the call graph, so each call's CPU is a non-negative least-squares fit of the usage
//! against them.
//!
//! What is fitted: one scale per call definition of the topology (its `cpu` and `cpu_after`
//! means together, so their split and variability stay as written) and one background rate
//! per service. A call definition shared by several request types gets one cost: the scenario
//! can only say that. A service's collector (its runtime) keeps its settings: the usage it
//! adds is counted as its runtime says (`work` per `trigger_cpu` of the calls' CPU).
//!
//! The network delay per hop is fitted last, by re-simulating each record (its request log
//! replayed when it has one, as live records do, else its per-second request counts as the
//! workload; its scaler and limits) with the fitted costs and moving
//! the delay until the simulated median latency is the measured one: what a real hop costs
//! (HTTP, serialisation, the kernel's network path) is invisible to CPU counters but not to
//! latency.
//!
//! Each service's calls' variability comes last ([`fit_variability`]), again by
//! re-simulation: one factor per service on the cvs the topology wrote, moved until the
//! re-simulated usage scatters around the fit's prediction as much as the measured usage does.
//!
//! What is not fitted: the collectors' parameters. Per-second counters do not tell a collector
//! that is larger and rarer from calls that vary more: both raise the usage's scatter and the
//! throttle ratio. A search that moved both (scatter and throttle ratio as its two targets) on a
//! simulated demo whose gateway collections were 3 times and whose store's pauses were half the
//! topology's found the calls' cvs (2.1-2.5 for a true 2) but collections of 1.0 and 1.85 times
//! (docs/DESIGN.md). So a collector keeps the topology's settings (take them from the runtime's
//! own log: Go's `GODEBUG=gctrace=1`, the JVM's GC log), and the fitted cv absorbs whatever
//! lumpiness the topology's collector does not explain.

// The small dense linear algebra below reads as the textbook's index notation.
#![allow(clippy::needless_range_loop)]

use std::collections::BTreeMap;

use std::sync::Arc;

use controller::ScalerKind;
use record::{Record, RunPlan, Summary};
use scenarios::{DistSpec, Scenario, ScenarioFile};
use traces::Trace;

use crate::{Result, SimError};

/// Fewest seconds a fit accepts (and at least three per unknown).
pub const MIN_SECONDS: usize = 30;

/// The fitted cost of one call definition.
#[derive(Debug, Clone, PartialEq)]
pub struct CallFit {
    pub call: String,
    /// Mean CPU per call (before + after its children) in the topology, ms.
    pub old_ms: f64,
    /// The fitted mean (the topology's, for a call that never ran in the records), ms.
    pub fitted_ms: f64,
    /// Standard error of the fitted mean, ms (0 where the fit pinned it at zero or did not
    /// measure it): a cost is known to about twice this.
    pub stderr_ms: f64,
}

/// The fit of one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceFit {
    pub service: String,
    /// Background CPU, cores (the intercept), and its standard error.
    pub background: f64,
    pub background_stderr: f64,
    /// One per call definition of this service.
    pub calls: Vec<CallFit>,
    /// Share of the usage's variance the fit explains.
    pub r2: f64,
    /// Mean usage over the fitted seconds, measured and as the fit predicts it, cores.
    pub measured: f64,
    pub predicted: f64,
    /// Standard deviation of the per-second usage around the fit's prediction, cores: how
    /// lumpy the service's CPU is beyond what the request counts explain.
    pub residual_sd: f64,
    pub seconds: usize,
}

/// The whole fit, service by service (the topology's order).
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub services: Vec<ServiceFit>,
}

/// One second of observations: requests sent per type (topology order) and each service's
/// usage (`None` where the record has no row for it, e.g. a live gap).
#[derive(Debug, Clone, PartialEq)]
pub struct Second {
    pub sent: Vec<f64>,
    pub usage: Vec<Option<f64>>,
}

/// The seconds of `records`, mapped onto `topology`'s request types and services. Every
/// record must come from an app with the same services and request types.
pub fn observations(topology: &Scenario, records: &[Record]) -> Result<Vec<Second>> {
    let bad = |r: &Record, why: String| SimError::Config(format!("{}: {why}", r.dir.display()));
    let mut out = Vec::new();
    for r in records {
        let services = r.services()?.ok_or_else(|| {
            bad(
                r,
                "no services.csv (the run was made without per-second rows)".into(),
            )
        })?;
        let requests = r.requests()?.ok_or_else(|| {
            bad(
                r,
                "no requests.csv (a record from before per-second request counts existed)".into(),
            )
        })?;
        let mut seconds: BTreeMap<u32, Second> = BTreeMap::new();
        let blank = || Second {
            sent: vec![0.0; topology.requests.len()],
            usage: vec![None; topology.services.len()],
        };
        for row in &requests {
            let i = topology
                .requests
                .iter()
                .position(|q| q.name == row.request)
                .ok_or_else(|| {
                    bad(
                        r,
                        format!(
                            "request type '{}' is not in {} (a record of another app?)",
                            row.request, topology.source
                        ),
                    )
                })?;
            seconds.entry(row.t).or_insert_with(blank).sent[i] += row.sent as f64;
        }
        for row in &services {
            let i = topology.service(&row.service).ok_or_else(|| {
                bad(
                    r,
                    format!(
                        "service '{}' is not in {} (a record of another app?)",
                        row.service, topology.source
                    ),
                )
            })?;
            if !(row.usage.is_finite() && row.usage >= 0.0) {
                return Err(bad(
                    r,
                    format!("services.csv: usage {} at t = {}", row.usage, row.t),
                ));
            }
            // A second without request counts has nothing to fit against.
            if let Some(s) = seconds.get_mut(&row.t) {
                *s.usage[i].get_or_insert(0.0) += row.usage;
            }
        }
        out.extend(seconds.into_values());
    }
    Ok(out)
}

/// Per request type, per call definition: how many times the definition runs per request
/// (counting call probabilities).
fn calls_per_request(topology: &Scenario) -> Vec<BTreeMap<String, f64>> {
    topology
        .requests
        .iter()
        .map(|r| {
            let mut per_def: BTreeMap<String, f64> = BTreeMap::new();
            for (n, reach) in r.nodes.iter().zip(r.reach()) {
                *per_def.entry(n.call.clone()).or_default() += reach;
            }
            per_def
        })
        .collect()
}

/// Fits every service of `topology` to `seconds`.
pub fn fit(topology: &Scenario, seconds: &[Second]) -> Result<Fit> {
    let per_request = calls_per_request(topology);
    for (i, r) in topology.requests.iter().enumerate() {
        if seconds.iter().all(|s| s.sent[i] == 0.0) {
            return Err(SimError::Config(format!(
                "request type '{}' was never sent in the records: its calls' costs cannot be told apart",
                r.name
            )));
        }
    }
    // Mean CPU per call of each definition (core-seconds), and its service.
    let mut defs: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for r in &topology.requests {
        for n in &r.nodes {
            defs.insert(n.call.clone(), (n.service, n.mean_cpu));
        }
    }
    let mut services = Vec::new();
    for (s, service) in topology.services.iter().enumerate() {
        // Collections add `work` per `trigger_cpu` of request CPU.
        let gc = service
            .runtime
            .as_ref()
            .map_or(0.0, |rt| rt.work / rt.trigger_cpu);
        let mine: Vec<(&String, f64)> = defs
            .iter()
            .filter(|(_, &(svc, _))| svc == s)
            .map(|(name, &(_, mean))| (name, mean))
            .collect();
        let rows: Vec<&Second> = seconds.iter().filter(|x| x.usage[s].is_some()).collect();
        let unknowns = mine.len() + 1;
        if rows.len() < MIN_SECONDS.max(3 * unknowns) {
            return Err(SimError::Config(format!(
                "service '{}': {} seconds of usage, at least {} needed to fit {} unknowns",
                service.name,
                rows.len(),
                MIN_SECONDS.max(3 * unknowns),
                unknowns
            )));
        }
        let y: Vec<f64> = rows.iter().map(|x| x.usage[s].expect("filtered")).collect();
        if y.iter().all(|&u| u == 0.0) {
            return Err(SimError::Config(format!(
                "service '{}' used no CPU in the records: nothing to fit",
                service.name
            )));
        }
        // Columns: each definition's expected CPU that second at its current cost (so the
        // fitted coefficient is a scale), then the background (ones).
        let columns: Vec<Vec<f64>> = mine
            .iter()
            .map(|(name, mean)| {
                rows.iter()
                    .map(|x| {
                        let calls: f64 = per_request
                            .iter()
                            .zip(&x.sent)
                            .map(|(defs, n)| n * defs.get(name.as_str()).copied().unwrap_or(0.0))
                            .sum();
                        calls * mean * (1.0 + gc)
                    })
                    .collect()
            })
            .chain(std::iter::once(vec![1.0; rows.len()]))
            .collect();
        let mut coef = nnls(&columns, &y);
        // A call that never ran in the records cannot be measured: it keeps its cost.
        for (k, c) in coef.iter_mut().zip(&columns).take(mine.len()) {
            if c.iter().all(|&v| v == 0.0) {
                *k = 1.0;
            }
        }
        let predict = |i: usize| -> f64 { columns.iter().zip(&coef).map(|(c, k)| c[i] * k).sum() };
        let n = y.len() as f64;
        let measured = y.iter().sum::<f64>() / n;
        let predicted = (0..y.len()).map(predict).sum::<f64>() / n;
        let ss_tot: f64 = y.iter().map(|v| (v - measured).powi(2)).sum();
        let ss_res: f64 = (0..y.len()).map(|i| (y[i] - predict(i)).powi(2)).sum();
        let free: Vec<bool> = coef
            .iter()
            .zip(&columns)
            .map(|(k, c)| *k > 0.0 && c.iter().any(|&v| v != 0.0))
            .collect();
        let dof = (n - free.iter().filter(|&&f| f).count() as f64).max(1.0);
        let stderr = standard_errors(&columns, &free, ss_res / dof);
        services.push(ServiceFit {
            service: service.name.clone(),
            background: coef[mine.len()],
            background_stderr: stderr[mine.len()],
            calls: mine
                .iter()
                .enumerate()
                .map(|(j, (name, mean))| CallFit {
                    call: (*name).clone(),
                    old_ms: mean * 1e3,
                    fitted_ms: mean * 1e3 * coef[j],
                    stderr_ms: mean * 1e3 * stderr[j],
                })
                .collect(),
            r2: if ss_tot > 0.0 {
                1.0 - ss_res / ss_tot
            } else {
                0.0
            },
            measured,
            predicted,
            residual_sd: (ss_res / dof).sqrt(),
            seconds: rows.len(),
        });
    }
    Ok(Fit { services })
}

impl Fit {
    /// The fit of call definition `name`, whichever service it is on.
    pub fn call(&self, name: &str) -> Option<&CallFit> {
        self.services
            .iter()
            .flat_map(|s| &s.calls)
            .find(|c| c.call == name)
    }

    /// The topology's file with every fitted call's CPU scaled to its fitted mean and each
    /// service's background CPU set to the fitted one (at most its node's cores). A call
    /// the fit set to zero keeps a thousandth of its old cost (a scenario's CPU must be
    /// positive) and is named in the report.
    pub fn apply(&self, file: &ScenarioFile) -> ScenarioFile {
        let mut out = file.clone();
        let cores: BTreeMap<&str, f64> = file
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.cores))
            .collect();
        for (svc, fit) in out.services.iter_mut().zip(&self.services) {
            debug_assert_eq!(svc.name, fit.service);
            let node = cores
                .get(svc.node.as_str())
                .copied()
                .unwrap_or(f64::INFINITY);
            svc.background_cores = fit.background.clamp(0.0, node);
        }
        for s in &self.services {
            for c in &s.calls {
                if let Some(def) = out.calls.get_mut(&c.call) {
                    let k = if c.old_ms > 0.0 {
                        (c.fitted_ms / c.old_ms).max(1e-3)
                    } else {
                        1.0
                    };
                    def.cpu = def.cpu.scaled(k);
                    def.cpu_after = def.cpu_after.as_ref().map(|d| d.scaled(k));
                }
            }
        }
        out
    }

    /// A plain-text report: per service, the background, each call's old and fitted CPU, R²
    /// and the mean usage measured against predicted.
    pub fn report(&self) -> String {
        let mut s = format!(
            "{:<28} {:>8} {:>10} {:>10} {:>7}   calls: old -> fitted CPU per call (ms, ± one standard error)\n",
            "service", "seconds", "usage", "predicted", "R²"
        );
        for f in &self.services {
            let calls: Vec<String> = f
                .calls
                .iter()
                .map(|c| {
                    format!(
                        "{} {:.3} -> {:.3} ± {:.3}",
                        c.call, c.old_ms, c.fitted_ms, c.stderr_ms
                    )
                })
                .collect();
            s.push_str(&format!(
                "{:<28} {:>8} {:>10.3} {:>10.3} {:>7.3}   {}; background {:.3} ± {:.3} cores\n",
                f.service,
                f.seconds,
                f.measured,
                f.predicted,
                f.r2,
                calls.join(", "),
                f.background,
                f.background_stderr
            ));
        }
        s
    }
}

/// Non-negative least squares (Lawson and Hanson's active-set method): the `x >= 0`
/// minimising `|A x - y|` for the matrix whose columns are `columns`. Columns are scaled to
/// unit length first, so costs of very different sizes are treated alike.
pub fn nnls(columns: &[Vec<f64>], y: &[f64]) -> Vec<f64> {
    let p = columns.len();
    let norms: Vec<f64> = columns
        .iter()
        .map(|c| c.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect();
    let unit = |j: usize, i: usize| {
        if norms[j] > 0.0 {
            columns[j][i] / norms[j]
        } else {
            0.0
        }
    };
    // Normal equations: G = AᵀA, b = Aᵀy.
    let mut g = vec![vec![0.0; p]; p];
    let mut b = vec![0.0; p];
    for (i, &yi) in y.iter().enumerate() {
        for j in 0..p {
            let aj = unit(j, i);
            b[j] += aj * yi;
            for k in j..p {
                g[j][k] += aj * unit(k, i);
            }
        }
    }
    for j in 0..p {
        for k in 0..j {
            g[j][k] = g[k][j];
        }
    }
    let tol = 1e-12 * b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let mut x = vec![0.0; p];
    let mut passive = vec![false; p];
    let gradient = |x: &[f64]| -> Vec<f64> {
        (0..p)
            .map(|j| b[j] - (0..p).map(|k| g[j][k] * x[k]).sum::<f64>())
            .collect()
    };
    for _ in 0..3 * p + 10 {
        let w = gradient(&x);
        let Some(j) = (0..p)
            .filter(|&j| !passive[j] && norms[j] > 0.0 && w[j] > tol)
            .max_by(|&a, &c| w[a].total_cmp(&w[c]))
        else {
            break;
        };
        passive[j] = true;
        loop {
            let z = solve_on(&g, &b, &passive);
            if (0..p).all(|k| !passive[k] || z[k] > 0.0) {
                x = z;
                break;
            }
            // Step towards z as far as keeps x >= 0; what reaches zero leaves the set.
            let alpha = (0..p)
                .filter(|&k| passive[k] && z[k] <= 0.0)
                .map(|k| x[k] / (x[k] - z[k]))
                .fold(f64::INFINITY, f64::min);
            for k in 0..p {
                x[k] += alpha * (z[k] - x[k]);
                if passive[k] && x[k] <= tol {
                    passive[k] = false;
                    x[k] = 0.0;
                }
            }
            if !passive.iter().any(|&q| q) {
                break;
            }
        }
    }
    x.iter()
        .zip(&norms)
        .map(|(v, n)| if *n > 0.0 { v / n } else { 0.0 })
        .collect()
}

/// Standard errors of least-squares coefficients with residual variance `var`: the square
/// roots of the diagonal of `var (AᵀA)⁻¹` over the `free` columns (0 for the others).
fn standard_errors(columns: &[Vec<f64>], free: &[bool], var: f64) -> Vec<f64> {
    let idx: Vec<usize> = (0..columns.len()).filter(|&j| free[j]).collect();
    let n = idx.len();
    // [AᵀA | I], reduced to [I | (AᵀA)⁻¹].
    let mut m: Vec<Vec<f64>> = idx
        .iter()
        .enumerate()
        .map(|(r, &a)| {
            let mut row: Vec<f64> = idx
                .iter()
                .map(|&b| columns[a].iter().zip(&columns[b]).map(|(x, y)| x * y).sum())
                .collect();
            row.extend((0..n).map(|c| if c == r { 1.0 } else { 0.0 }));
            row
        })
        .collect();
    if gauss_jordan(&mut m, n).iter().any(|&singular| singular) {
        return vec![f64::INFINITY; columns.len()];
    }
    let mut out = vec![0.0; columns.len()];
    for (i, &j) in idx.iter().enumerate() {
        out[j] = (var * m[i][n + i]).max(0.0).sqrt();
    }
    out
}

/// The least-squares solution with only the `active` unknowns free (the rest zero), from the
/// normal equations; an unknown whose column is a combination of the others' gets zero.
fn solve_on(g: &[Vec<f64>], b: &[f64], active: &[bool]) -> Vec<f64> {
    let idx: Vec<usize> = (0..b.len()).filter(|&k| active[k]).collect();
    let n = idx.len();
    let mut m: Vec<Vec<f64>> = idx
        .iter()
        .map(|&r| {
            let mut row: Vec<f64> = idx.iter().map(|&c| g[r][c]).collect();
            row.push(b[r]);
            row
        })
        .collect();
    let singular = gauss_jordan(&mut m, n);
    let mut out = vec![0.0; b.len()];
    for (i, &k) in idx.iter().enumerate() {
        out[k] = if singular[i] { 0.0 } else { m[i][n] };
    }
    out
}

/// Gauss-Jordan elimination with partial pivoting of the `n` x `n` block on the left of `m`
/// (its rows may carry more columns: right-hand sides), leaving the identity there where it
/// can. Says which pivots were (numerically) zero; those rows and columns are left alone.
fn gauss_jordan(m: &mut [Vec<f64>], n: usize) -> Vec<bool> {
    let mut singular = vec![false; n];
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&a, &c| m[a][col].abs().total_cmp(&m[c][col].abs()))
            .expect("non-empty");
        m.swap(col, pivot);
        let d = m[col][col];
        if d.abs() < 1e-300 {
            singular[col] = true;
            continue;
        }
        for v in m[col].iter_mut() {
            *v /= d;
        }
        let width = m[col].len();
        for r in 0..n {
            let f = m[r][col];
            if r != col && f != 0.0 {
                for c in col..width {
                    m[r][c] -= f * m[col][c];
                }
            }
        }
    }
    singular
}

/// The run `record` made, as the simulator would make it with `scenario`: its requests per
/// second (after the ramp) as the workload at multiplier 1, its request mix (a measurement
/// run may have had another than the scenario's), the same ramp, load, scaler, targets,
/// initial limits and seed; with the record's request log (live records have one), exactly
/// its requests, each at its time with its type.
pub fn replan(scenario: &Scenario, record: &Record) -> Result<RunPlan> {
    let bad = |why: String| SimError::Config(format!("{}: {why}", record.dir.display()));
    let info = &record.info;
    let rows = record
        .requests()?
        .ok_or_else(|| bad("no requests.csv to re-simulate from".into()))?;
    let mut per_second: BTreeMap<u32, u64> = BTreeMap::new();
    for r in &rows {
        *per_second.entry(r.t).or_default() += r.sent;
    }
    let after_ramp: Vec<u32> = per_second
        .iter()
        .filter(|(&t, _)| t as usize > info.ramp_s)
        .map(|(_, &n)| n.min(u32::MAX as u64) as u32)
        .collect();
    if after_ramp.is_empty() {
        return Err(bad("no second after the ramp".into()));
    }
    let scaler: ScalerKind = info.scaler.parse()?;
    let mix: Vec<(String, f64)> = scenario
        .requests
        .iter()
        .map(|q| {
            let sent: u64 = rows
                .iter()
                .filter(|r| r.request == q.name)
                .map(|r| r.sent)
                .sum();
            // A type the record never sent stays (the call graph needs it) but is never drawn.
            (q.name.clone(), (sent as f64).max(1e-9))
        })
        .collect();
    let log = record.arrivals()?;
    // Without a request log, a calibration load's mixes are drawn again as they were: from
    // the topology's own weights, changing every cycle (the shares of the whole record would
    // smooth away the swings in usage that the variability fit reads).
    let cycle = if log.is_none() { info.mix_cycle_s } else { 0 };
    let app = if cycle > 0 {
        scenario.clone()
    } else {
        scenario.with_weights(&mix)?
    };
    let mut plan = RunPlan::new(
        Arc::new(app),
        Arc::new(Trace::new(
            format!("{} (re-simulated)", info.trace),
            after_ramp,
        )),
        scaler,
        info.targets,
    );
    plan.multiplier = Some(1.0);
    plan.ramp_s = info.ramp_s;
    plan.load = info.load;
    plan.seed = info.seed;
    plan.mix_cycle_s = cycle;
    // A live record's request log: the very requests the app saw, at their times.
    if let Some(log) = log {
        plan.arrivals = Some(Arc::new(log));
    }
    if !info.initial_limits.is_empty() {
        plan.initial_limits = Some(info.initial_limits.clone());
    }
    Ok(plan)
}

/// The summaries of re-simulating every record with `scenario`; with `out`, each
/// re-simulation is also written as a record (with `services.csv`) to `out/1`, `out/2`, ...
pub fn resimulate(
    scenario: &Scenario,
    records: &[Record],
    out: Option<&std::path::Path>,
) -> Result<Vec<Summary>> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut plan = replan(scenario, r)?;
            let writer = match out {
                Some(dir) => {
                    plan.services_csv = true;
                    Some(record::RecordWriter::create(
                        &dir.join((i + 1).to_string()),
                        true,
                        true,
                    )?)
                }
                None => None,
            };
            Ok(crate::run::run(&plan, writer, &mut |_, _| {})?.info.summary)
        })
        .collect()
}

/// The per-hop network delay (ms, constant) with which re-simulating `records` with `file`
/// gives their measured median latency (mean over records); `None` when even no delay gives
/// a slower median than measured (the CPU alone explains the latency).
pub fn fit_network_delay(file: &ScenarioFile, records: &[Record]) -> Result<Option<f64>> {
    let measured: f64 =
        records.iter().map(|r| r.info.summary.p50_ms).sum::<f64>() / records.len().max(1) as f64;
    let p50_with = |ms: f64| -> Result<f64> {
        let mut f = file.clone();
        f.network_delay = DistSpec::Const { ms };
        let scenario = Scenario::compile("fit", f)?;
        let s = resimulate(&scenario, records, None)?;
        Ok(s.iter().map(|s| s.p50_ms).sum::<f64>() / s.len().max(1) as f64)
    };
    if p50_with(0.0)? >= measured {
        return Ok(None);
    }
    // The median grows with the delay: bisect to a hundredth of a millisecond.
    let (mut lo, mut hi) = (0.0, 1.0);
    while p50_with(hi)? < measured {
        hi *= 2.0;
        if hi > 1000.0 {
            return Err(SimError::Config(format!(
                "the measured median latency ({measured:.1} ms) is not reached with a second of \
                 delay per hop: the records' latency does not come from CPU and network"
            )));
        }
    }
    while hi - lo > 0.01 {
        let mid = (lo + hi) / 2.0;
        if p50_with(mid)? < measured {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some((lo + hi) / 2.0))
}

/// How far a fitted cv factor may go each way (a ratio), and how many halvings of that
/// range (in log terms) the search makes: 2^-9 of ln(64) is under 1%.
const CV_RANGE: f64 = 8.0;
const CV_STEPS: usize = 9;

/// The fitted variability of one service.
#[derive(Debug, Clone, PartialEq)]
pub struct VariabilityFit {
    pub service: String,
    /// The factor on its calls' cvs (`None`: every call of the service is constant, or its
    /// usage has no scatter at all). `at_bound` when the search ended at the edge of its
    /// range (the records ask for more, or less, than it allows).
    pub factor: Option<f64>,
    pub at_bound: bool,
    /// Residual sd of per-second usage around the fit's prediction (cores), measured and
    /// re-simulated with the factor.
    pub measured_sd: f64,
    pub resimulated_sd: f64,
    /// Throttled share of its periods, measured and re-simulated: not fitted, so where the
    /// records were throttled it is a check of the model's lumpiness.
    pub measured_throttle: f64,
    pub resimulated_throttle: f64,
}

/// Each service's residual sd (the costs fitted to `records` anew) and throttle ratio.
fn scatter(topology: &Scenario, records: &[Record]) -> Result<(Vec<f64>, Vec<f64>)> {
    let fit = fit(topology, &observations(topology, records)?)?;
    let n = topology.services.len();
    let (mut periods, mut throttled) = (vec![0u64; n], vec![0u64; n]);
    for r in records {
        for row in r.services()?.unwrap_or_default() {
            if let Some(i) = topology.service(&row.service) {
                periods[i] += row.nr_periods;
                throttled[i] += row.nr_throttled;
            }
        }
    }
    Ok((
        fit.services.iter().map(|s| s.residual_sd).collect(),
        (0..n)
            .map(|i| record::throttle_ratio(throttled[i], periods[i]))
            .collect(),
    ))
}

/// `file` with the calls of each service `i` given `factor[i]` times their variability.
pub fn with_variability(file: &ScenarioFile, topology: &Scenario, factor: &[f64]) -> ScenarioFile {
    let mut out = file.clone();
    for def in out.calls.values_mut() {
        if let Some(i) = topology.service(&def.service) {
            def.cpu = def.cpu.with_cv_scaled(factor[i]);
            def.cpu_after = def.cpu_after.as_ref().map(|d| d.with_cv_scaled(factor[i]));
        }
    }
    out
}

/// Fits each service's calls' variability (module doc) by re-simulating `records` with
/// `file` (costs already fitted) until the re-simulated usage scatters around the fit's
/// prediction as much as the measured usage does. Each step of the search re-simulates every
/// record once, into `work` (replaced each time, removed at the end), and moves every
/// service's factor at once: a service's scatter depends on its own calls' variability, not
/// on the others'. Returns the fits and `file` with them.
pub fn fit_variability(
    file: &ScenarioFile,
    records: &[Record],
    work: &std::path::Path,
) -> Result<(Vec<VariabilityFit>, ScenarioFile)> {
    let topology = Scenario::compile("fit", file.clone())?;
    let n = topology.services.len();
    let (measured_sd, measured_throttle) = scatter(&topology, records)?;
    let varies: Vec<bool> = (0..n)
        .map(|i| {
            measured_sd[i] > 0.0
                && file.calls.values().any(|d| {
                    topology.service(&d.service) == Some(i)
                        && (d.cpu.cv() > 0.0 || d.cpu_after.as_ref().is_some_and(|a| a.cv() > 0.0))
                })
        })
        .collect();
    let clear = || -> Result<()> {
        if work.exists() {
            std::fs::remove_dir_all(work)
                .map_err(|e| SimError::Config(format!("cannot remove {}: {e}", work.display())))?;
        }
        Ok(())
    };
    let measure = |factor: &[f64]| -> Result<(Vec<f64>, Vec<f64>)> {
        let scenario = Scenario::compile("fit", with_variability(file, &topology, factor))?;
        clear()?;
        resimulate(&scenario, records, Some(work))?;
        let again = (1..=records.len())
            .map(|i| Record::read(&work.join(i.to_string())))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        scatter(&scenario, &again)
    };
    // Bisection on the factor's logarithm, every service in step.
    let (mut lo, mut hi) = (vec![-CV_RANGE.ln(); n], vec![CV_RANGE.ln(); n]);
    let mid = |lo: &[f64], hi: &[f64]| -> Vec<f64> {
        (0..n)
            .map(|i| {
                if varies[i] {
                    ((lo[i] + hi[i]) / 2.0).exp()
                } else {
                    1.0
                }
            })
            .collect()
    };
    for _ in 0..CV_STEPS {
        let (sd, _) = measure(&mid(&lo, &hi))?;
        for i in (0..n).filter(|&i| varies[i]) {
            let m = (lo[i] + hi[i]) / 2.0;
            if sd[i] < measured_sd[i] {
                lo[i] = m;
            } else {
                hi[i] = m;
            }
        }
    }
    let factor = mid(&lo, &hi);
    let (sd, throttle) = measure(&factor)?;
    clear()?;
    let edge = CV_RANGE.ln() * (1.0 - 4.0 / (1u64 << CV_STEPS) as f64);
    let fits = (0..n)
        .map(|i| VariabilityFit {
            service: topology.services[i].name.clone(),
            factor: varies[i].then_some(factor[i]),
            at_bound: varies[i] && (lo[i] >= edge || hi[i] <= -edge),
            measured_sd: measured_sd[i],
            resimulated_sd: sd[i],
            measured_throttle: measured_throttle[i],
            resimulated_throttle: throttle[i],
        })
        .collect();
    Ok((fits, with_variability(file, &topology, &factor)))
}

/// Everything `sim calibrate` fits, in the order it fits it.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// Every call's CPU and each service's background CPU.
    pub costs: Fit,
    /// The network delay per hop (ms) fitted with the topology's variability; `None` when the
    /// CPU alone already makes the median as slow as measured (the topology's delay is kept).
    pub delay_ms: Option<f64>,
    /// Each service's calls' variability, when it was fitted.
    pub variability: Option<Vec<VariabilityFit>>,
    /// The delay again with the fitted variability (a log-normal's median falls as its cv
    /// grows at the same mean).
    pub delay_after_variability_ms: Option<f64>,
    /// The topology's file with everything fitted written in.
    pub file: ScenarioFile,
}

/// Fits `topology`'s costs to `records`, then the network delay per hop, then (with `work`, a
/// scratch directory for [`fit_variability`]'s re-simulations) each service's calls'
/// variability and the delay once more: the whole of `sim calibrate`.
pub fn calibrate(
    topology: &Scenario,
    records: &[Record],
    work: Option<&std::path::Path>,
) -> Result<Calibration> {
    let costs = fit(topology, &observations(topology, records)?)?;
    let mut file = costs.apply(&topology.file);
    let delay_ms = fit_network_delay(&file, records)?;
    if let Some(ms) = delay_ms {
        file.network_delay = DistSpec::Const { ms };
    }
    let (mut variability, mut delay_after_variability_ms) = (None, None);
    if let Some(work) = work {
        let (fits, varied) = fit_variability(&file, records, work)?;
        variability = Some(fits);
        file = varied;
        delay_after_variability_ms = fit_network_delay(&file, records)?;
        if let Some(ms) = delay_after_variability_ms {
            file.network_delay = DistSpec::Const { ms };
        }
    }
    Ok(Calibration {
        costs,
        delay_ms,
        variability,
        delay_after_variability_ms,
        file,
    })
}

/// A plain-text report of [`fit_variability`].
pub fn variability_report(fits: &[VariabilityFit]) -> String {
    let mut s = format!(
        "{:<28} {:>9} {:>26} {:>26}\n",
        "service", "cv x", "usage sd, cores (meas/sim)", "throttle ratio (meas/sim)"
    );
    for f in fits {
        s.push_str(&format!(
            "{:<28} {:>9} {:>12.4} / {:<11.4} {:>12.3} / {:<11.3}{}\n",
            f.service,
            f.factor.map_or("kept".to_string(), |v| format!("{v:.2}")),
            f.measured_sd,
            f.resimulated_sd,
            f.measured_throttle,
            f.resimulated_throttle,
            if f.at_bound {
                "  (at the end of the range searched)"
            } else {
                ""
            }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Two request types over three services; `db` is shared by both, `api` has a background.
    const TOPOLOGY: &str = r#"
name = "t"
description = "synthetic"
slo_ms = 100
aggregate_rps = 100
[[nodes]]
name = "n"
cores = 8
[[services]]
name = "api"
node = "n"
threads = 8
[[services]]
name = "db"
node = "n"
threads = 8
[[services]]
name = "img"
node = "n"
threads = 8
[[requests]]
name = "read"
weight = 3
call = "api.read"
[[requests]]
name = "write"
weight = 1
call = "api.write"
[calls."api.read"]
service = "api"
cpu = { kind = "exp", mean_ms = 1.0 }
calls = [["db.get"]]
[calls."api.write"]
service = "api"
cpu = { kind = "exp", mean_ms = 1.0 }
cpu_after = { kind = "exp", mean_ms = 1.0 }
calls = [["db.get"], ["img.resize"]]
[calls."db.get"]
service = "db"
cpu = { kind = "lognormal", mean_ms = 1.0, cv = 2.0 }
[calls."img.resize"]
service = "img"
cpu = { kind = "exp", mean_ms = 1.0 }
probability = 0.5
"#;

    #[test]
    fn recovers_known_costs_a_shared_service_and_a_background() {
        let topology = Scenario::parse("t.toml", TOPOLOGY).unwrap();
        // True costs, ms per call: api.read 2, api.write 5 (before and after its children),
        // db.get 0.8 (from both types), img.resize 30 (half the writes); api also burns 0.3
        // cores in the background.
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(3);
        let seconds: Vec<Second> = (0..600)
            .map(|t| {
                let level = 50.0 + 40.0 * (t as f64 / 60.0).sin();
                let read = (level * 0.75 + rng.random_range(-8.0..8.0))
                    .round()
                    .max(0.0);
                let write = (level * 0.25 + rng.random_range(-5.0..5.0))
                    .round()
                    .max(0.0);
                let noise = |rng: &mut rand_pcg::Pcg64Mcg, v: f64| {
                    v * (1.0 + rng.random_range(-0.05..0.05))
                };
                let api = 0.3 + (read * 2.0 + write * 5.0) / 1e3;
                let db = (read + write) * 0.8 / 1e3;
                let img = write * 0.5 * 30.0 / 1e3;
                Second {
                    sent: vec![read, write],
                    usage: vec![
                        Some(noise(&mut rng, api)),
                        Some(noise(&mut rng, db)),
                        Some(noise(&mut rng, img)),
                    ],
                }
            })
            .collect();
        let fit = fit(&topology, &seconds).unwrap();
        let cost = |service: usize, call: &str| {
            let c = fit.services[service]
                .calls
                .iter()
                .find(|c| c.call == call)
                .unwrap();
            (c.fitted_ms, c.stderr_ms)
        };
        let api = &fit.services[0];
        for ((got, se), want) in [
            (cost(0, "api.read"), 2.0),
            (cost(0, "api.write"), 5.0),
            (cost(1, "db.get"), 0.8),
            (cost(2, "img.resize"), 30.0),
            ((api.background, api.background_stderr), 0.3),
        ] {
            // Within 6% and within three standard errors, which are small but not zero.
            assert!(
                (got / want - 1.0).abs() < 0.06,
                "{got} vs {want}\n{}",
                fit.report()
            );
            assert!(
                (got - want).abs() < 3.0 * se && se < 0.05 * want,
                "{got} ± {se} vs {want}\n{}",
                fit.report()
            );
        }
        assert!(fit.services.iter().all(|s| s.r2 > 0.9), "{}", fit.report());

        // Written back: the fitted means, the split before/after and the cv kept.
        let file = fit.apply(&topology.file);
        let w = &file.calls["api.write"];
        let written = w.cpu.mean_ms() + w.cpu_after.as_ref().unwrap().mean_ms();
        assert!((written - cost(0, "api.write").0).abs() < 1e-9);
        assert!((w.cpu.mean_ms() - w.cpu_after.as_ref().unwrap().mean_ms()).abs() < 1e-9);
        assert_eq!(
            file.calls["db.get"].cpu,
            scenarios::DistSpec::Lognormal {
                mean_ms: cost(1, "db.get").0,
                cv: 2.0
            }
        );
        let text = file.to_toml().unwrap();
        Scenario::parse("fitted.toml", &text).unwrap();
    }

    #[test]
    fn what_cannot_be_fitted_is_refused() {
        let topology = Scenario::parse("t.toml", TOPOLOGY).unwrap();
        let second = |write: f64| Second {
            sent: vec![10.0, write],
            usage: vec![Some(0.1), Some(0.1), Some(0.0)],
        };
        let never_written: Vec<Second> = (0..100).map(|_| second(0.0)).collect();
        let e = fit(&topology, &never_written).unwrap_err().to_string();
        assert!(e.contains("'write' was never sent"), "{e}");
        let short: Vec<Second> = (0..10).map(|i| second(i as f64)).collect();
        let e = fit(&topology, &short).unwrap_err().to_string();
        assert!(e.contains("10 seconds of usage, at least 30"), "{e}");
        let idle: Vec<Second> = (0..100).map(|i| second(i as f64)).collect();
        let e = fit(&topology, &idle).unwrap_err().to_string();
        assert!(e.contains("'img' used no CPU"), "{e}");
    }

    #[test]
    fn nnls_recovers_known_coefficients_and_clips_negative_ones() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(1);
        let n = 400;
        let a: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..10.0)).collect();
        let c: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..100.0)).collect();
        let ones = vec![1.0; n];
        // y = 3a + 0.02c + 5, a little noise.
        let y: Vec<f64> = (0..n)
            .map(|i| 3.0 * a[i] + 0.02 * c[i] + 5.0 + rng.random_range(-0.1..0.1))
            .collect();
        let x = nnls(&[a.clone(), c.clone(), ones.clone()], &y);
        assert!(
            (x[0] - 3.0).abs() < 0.01 && (x[1] - 0.02).abs() < 0.001,
            "{x:?}"
        );
        assert!((x[2] - 5.0).abs() < 0.05, "{x:?}");
        // A truly negative effect is clipped to zero, the rest refit without it.
        let y: Vec<f64> = (0..n).map(|i| 2.0 * a[i] - 0.05 * c[i] + 8.0).collect();
        let x = nnls(&[a, c, ones], &y);
        assert_eq!(x[1], 0.0, "{x:?}");
        assert!(x[0] > 0.0 && x[2] > 0.0, "{x:?}");
    }
}
