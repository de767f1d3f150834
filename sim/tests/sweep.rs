//! Sweeps: the same results whatever the thread count, and sharded + merged = unsharded.

use std::sync::Arc;

use controller::{ScalerKind, TowerKind};
use record::RunPlan;
use scenarios::Scenario;
use sim::sweep::{self, Contender, ResultRow, Settings, Unit, Workload};
use traces::Trace;

fn units() -> Vec<Unit> {
    let app = Arc::new(Scenario::builtin("demo").unwrap());
    let w = |name: &str, t: Trace| Workload {
        name: name.into(),
        trace: Arc::new(t.truncated(180)),
    };
    let diurnal = w("diurnal", Trace::builtin("diurnal").unwrap());
    let bursty = w("bursty", Trace::builtin("bursty").unwrap());
    let mut units: Vec<Unit> = [
        Contender::Autothrottle,
        Contender::AutothrottleOriginal,
        Contender::AutothrottleCv,
    ]
    .into_iter()
    .map(|contender| Unit::Autothrottle {
        app: app.clone(),
        warmup: w("diurnal-2", Trace::builtin("diurnal-2").unwrap()),
        evals: vec![diurnal.clone(), bursty.clone()],
        contender,
    })
    .collect();
    for workload in [diurnal, bursty] {
        for (contender, descending) in [
            (Contender::K8sCpu, false),
            (Contender::K8sCpuFast, true),
            (Contender::K8sCpuFastBurst, true),
        ] {
            let mut targets = sweep::grid(contender);
            if descending {
                targets.reverse();
            }
            units.push(Unit::Grid {
                app: app.clone(),
                workload: workload.clone(),
                contender,
                targets,
                descending,
            });
        }
    }
    units
}

fn settings(dir: &std::path::Path, jobs: usize) -> Settings {
    Settings {
        out: dir.to_path_buf(),
        seed: 3,
        ramp_s: 30,
        load: traces::Load::users(),
        jobs,
        services_csv: false,
        resume: true,
        burst: 0.5,
        stop_missed: false,
        draws: 1,
    }
}

#[test]
fn extra_contenders_run_as_they_say_and_get_their_own_columns() {
    let dir = tempfile::tempdir().unwrap();
    let mut units = units();
    let Unit::Autothrottle {
        app, warmup, evals, ..
    } = units[0].clone()
    else {
        unreachable!("units() starts with Autothrottle")
    };
    units.push(Unit::Autothrottle {
        app,
        warmup,
        evals,
        contender: Contender::AutothrottleSmooth,
    });
    let rows = sweep::execute(&units, &settings(dir.path(), 2), &|_| {}).unwrap();
    let bursting: Vec<&ResultRow> = rows
        .iter()
        .filter(|r| r.scaler == "k8s-cpu-fast+burst")
        .collect();
    assert!(!bursting.is_empty());
    for r in &rows {
        let info = record::Record::read(&dir.path().join(&r.run)).unwrap().info;
        let want = if r.scaler.ends_with("+burst") {
            0.5
        } else {
            0.0
        };
        assert_eq!(info.burst, want, "{}", r.run);
        if let Some(base) = r.scaler.strip_suffix("+burst") {
            assert_eq!(info.scaler, base, "a burst contender runs its base scaler");
        }
        if r.scaler.starts_with("autothrottle") {
            let captain = if r.scaler == "autothrottle-smooth" {
                "captain-smooth"
            } else {
                "captain"
            };
            assert_eq!(info.scaler, captain, "{}", r.run);
        }
        let tower = match (r.scaler.as_str(), r.phase.as_str()) {
            ("autothrottle+cv", "warmup-explore") => "explore-cv",
            ("autothrottle+cv", _) => "bandit-cv",
            (_, "warmup-explore") => "explore",
            ("autothrottle-original", _) => "original",
            ("autothrottle" | "autothrottle-smooth", _) => "bandit",
            _ => "none",
        };
        assert_eq!(info.tower, tower, "{}", r.run);
    }
    let best = sweep::best(&rows);
    let md = sweep::burst_table_markdown(&best);
    assert!(
        md.starts_with(
            "| App | Workload | best baseline | K8s-CPU-Fast + burst | Autothrottle (original Tower) | Autothrottle | Autothrottle + variability |"
        ),
        "{md}"
    );
    assert!(
        md.lines()
            .next()
            .unwrap()
            .contains("| Autothrottle, 1-s Captains |"),
        "{md}"
    );
    assert_eq!(md.lines().count(), 2 + 2, "two cells: {md}");
    // The paper's table is the same with or without the burst contenders.
    let plain: Vec<_> = best
        .iter()
        .filter(|b| !b.scaler.ends_with("+burst"))
        .cloned()
        .collect();
    assert_eq!(sweep::table(&best), sweep::table(&plain));
}

#[test]
fn deterministic_across_threads_and_shards() {
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let serial = sweep::execute(&units(), &settings(one.path(), 1), &|_| {}).unwrap();
    let parallel = sweep::execute(&units(), &settings(two.path(), 2), &|_| {}).unwrap();
    assert_eq!(serial, parallel, "1 vs 2 worker threads");
    assert!(serial.iter().any(|r| r.phase == "eval") && serial.iter().any(|r| r.phase == "grid"));
    // Every run record is byte-identical too.
    for r in &serial {
        let a = std::fs::read(one.path().join(&r.run).join("minutes.csv")).unwrap();
        let b = std::fs::read(two.path().join(&r.run).join("minutes.csv")).unwrap();
        assert_eq!(a, b, "{}", r.run);
    }

    // Two shards in separate directories, merged.
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let parts: Vec<Vec<ResultRow>> = (0..2)
        .map(|k| {
            let mine = sweep::shard(units(), k, 2).unwrap();
            let rows = sweep::execute(&mine, &settings(dirs[k].path(), 1), &|_| {}).unwrap();
            sweep::write_csv(&dirs[k].path().join("results.csv"), &rows).unwrap();
            sweep::read_results(&dirs[k].path().join("results.csv")).unwrap()
        })
        .collect();
    assert!(!parts[0].is_empty() && !parts[1].is_empty());
    let merged = sweep::merge(parts).unwrap();
    assert_eq!(merged, sweep::canonical(serial.clone()));
    assert_eq!(
        sweep::table(&sweep::best(&merged)),
        sweep::table(&sweep::best(&serial))
    );
}

#[test]
fn resume_reuses_finished_runs_and_reruns_changed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let first = sweep::execute(&units()[3..4], &settings(dir.path(), 1), &|_| {}).unwrap();
    let marker = dir.path().join(&first[0].run).join("minutes.csv");
    let before = std::fs::metadata(&marker).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = sweep::execute(&units()[3..4], &settings(dir.path(), 1), &|_| {}).unwrap();
    assert_eq!(first, again);
    assert_eq!(
        std::fs::metadata(&marker).unwrap().modified().unwrap(),
        before,
        "reused, not re-run"
    );
    // A different seed is a different run: it is redone in place.
    let mut other = settings(dir.path(), 1);
    other.seed = 4;
    let changed = sweep::execute(&units()[3..4], &other, &|_| {}).unwrap();
    assert!(changed.iter().all(|r| r.seed == 4));
    let after_seed = std::fs::metadata(&marker).unwrap().modified().unwrap();
    assert_ne!(after_seed, before);
    // The same app name with another model (a built-in recalibrated, say) is re-run too.
    let mut units = units()[3..4].to_vec();
    let Unit::Grid { app, .. } = &mut units[0] else {
        panic!("a grid unit")
    };
    let text = toml::to_string(&app.file)
        .unwrap()
        .replace("mean_ms = 6.0", "mean_ms = 6.5");
    *app = Arc::new(Scenario::parse("builtin:demo", &text).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(20));
    sweep::execute(&units, &other, &|_| {}).unwrap();
    assert_ne!(
        std::fs::metadata(&marker).unwrap().modified().unwrap(),
        after_seed,
        "a changed model is not reused"
    );
}

/// Rewrites a record's `run.json` without `field`, as a program older than it wrote records.
fn forget_field(info_path: &std::path::Path, field: &str) {
    let text = std::fs::read_to_string(info_path).unwrap();
    let older: String = text
        .lines()
        .filter(|l| !l.contains(field))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(info_path, older).unwrap();
}

/// Runs `units`, checks that the first run's record keeps `field` at `value`, then makes that
/// record look as a program from before the field wrote it: a second sweep must redo the run
/// (its record has the field again), not reuse it, and give the same results.
fn a_record_without_the_field_is_redone(units: &[Unit], field: &str, value: u32) {
    let dir = tempfile::tempdir().unwrap();
    let first = sweep::execute(units, &settings(dir.path(), 1), &|_| {}).unwrap();
    let info_path = dir.path().join(&first[0].run).join("run.json");
    let text = std::fs::read_to_string(&info_path).unwrap();
    let tag = format!("\"{field}\": {value}");
    assert!(text.contains(&tag), "the record keeps its {field}: {text}");
    forget_field(&info_path, field);
    let again = sweep::execute(units, &settings(dir.path(), 1), &|_| {}).unwrap();
    assert_eq!(first, again, "re-run, the same runs");
    assert!(
        std::fs::read_to_string(&info_path).unwrap().contains(&tag),
        "the run was redone, not reused"
    );
}

#[test]
fn runs_of_an_older_tower_are_not_reused() {
    // A learning chain's first run, written before Towers had revisions.
    a_record_without_the_field_is_redone(
        &units()[0..1],
        "tower_revision",
        controller::TOWER_REVISION,
    );
}

#[test]
fn runs_of_an_older_model_are_not_reused() {
    // A grid's run, written before the model had revisions.
    a_record_without_the_field_is_redone(&units()[3..4], "model_revision", sim::MODEL_REVISION);
}

#[test]
fn grid_runs_stop_at_a_certain_miss_with_the_verdict_of_a_full_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut open = settings(dir.path(), 2);
    open.load = traces::Load::Poisson;
    open.stop_missed = true;
    let grid = &units()[3..4];
    let stopping = sweep::execute(grid, &open, &|_| {}).unwrap();
    let stopped: Vec<&ResultRow> = stopping.iter().filter(|r| r.stopped_s.is_some()).collect();
    assert!(
        !stopped.is_empty(),
        "the hottest targets miss: {stopping:?}"
    );
    assert!(stopped.len() < stopping.len());
    // A full run is not served by a stopped one: every stopped run is redone in full.
    open.stop_missed = false;
    let full = sweep::execute(grid, &open, &|_| {}).unwrap();
    assert!(full.iter().all(|r| r.stopped_s.is_none()));
    for (s, f) in stopping.iter().zip(&full) {
        assert_eq!(s.slo_met, f.slo_met, "{} {}", s.target1, f.target1);
        match s.stopped_s {
            None => assert_eq!(s, f, "a run that was not stopped is the same run"),
            Some(at) => {
                assert!(at < 180.0 + 30.0, "{s:?}");
                assert_eq!(s.mean_target1, f.mean_target1, "the fixed targets");
            }
        }
    }
    assert_eq!(sweep::best(&stopping), sweep::best(&full));
}

/// `execute` makes an Autothrottle unit's exploring runs all at once, from stand-in memories;
/// each must come out exactly as if it had waited for the runs before it.
#[test]
fn exploring_runs_made_at_once_equal_runs_made_one_after_the_other() {
    let app = Arc::new(Scenario::builtin("demo").unwrap());
    // Ten minutes, so that every exploring run covers several actions and the later runs must
    // pick among those the earlier ones left least tried.
    let warmup = Arc::new(Trace::builtin("diurnal-2").unwrap().truncated(600));
    let eval = Workload {
        name: "diurnal".into(),
        trace: Arc::new(Trace::builtin("diurnal").unwrap().truncated(120)),
    };
    let unit = Unit::Autothrottle {
        app: app.clone(),
        warmup: Workload {
            name: "diurnal-2".into(),
            trace: warmup.clone(),
        },
        evals: vec![eval],
        contender: Contender::Autothrottle,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut set = settings(dir.path(), 2);
    set.load = traces::Load::Poisson;
    let rows = sweep::execute(&[unit], &set, &|_| {}).unwrap();

    // The same runs, one after the other, each from the memory the one before left.
    let reference = tempfile::tempdir().unwrap();
    let initial = controller::BanditConfig::new(app.slo_ms, app.aggregate_rps)
        .initial
        .targets();
    let mut memory = controller::TowerMemory::default();
    let mut tried = std::collections::BTreeSet::new();
    for (i, row) in rows.iter().take(sweep::EXPLORE_RUNS).enumerate() {
        let mut cfg = RunPlan::new(app.clone(), warmup.clone(), ScalerKind::Captain, initial);
        cfg.seed = set.seed + 1 + i as u64;
        cfg.ramp_s = set.ramp_s;
        cfg.tower = TowerKind::Explore;
        cfg.memory = memory.clone();
        let out_dir = reference.path().join(i.to_string());
        let writer = record::RecordWriter::create(&out_dir, true, false).unwrap();
        let out = sim::run::run(&cfg, Some(writer), &mut |_, _| {}).unwrap();

        let run = dir
            .path()
            .join(format!("runs/demo/autothrottle/warmup-explore-{}", i + 1));
        let fed: controller::TowerMemory = record::read_json(&run.join("tower-in.json")).unwrap();
        let learnt: controller::TowerMemory = record::read_json(&run.join("tower.json")).unwrap();
        assert_eq!(fed, memory, "run {}: the memory it was fed", i + 1);
        assert_eq!(learnt, out.memory, "run {}: the memory it left", i + 1);
        for f in ["minutes.csv", "run.json"] {
            assert_eq!(
                std::fs::read(run.join(f)).unwrap(),
                std::fs::read(out_dir.join(f)).unwrap(),
                "run {}: {f}",
                i + 1
            );
        }
        assert_eq!(row.phase, "warmup-explore");
        assert_eq!(row.allocation, out.info.summary.allocation);
        tried.extend(out.memory.samples.iter().map(|s| s.action));
        memory = out.memory;
    }
    // The later runs went where the earlier ones had not: more actions than one run takes.
    let per_run = memory.samples.len() / sweep::EXPLORE_RUNS;
    assert!(
        tried.len() > per_run + 2,
        "{} actions tried, {per_run} samples per run",
        tried.len()
    );
}

#[test]
fn shard_arguments_are_checked() {
    assert!(sweep::parse_shard("1/4").is_ok());
    assert!(sweep::parse_shard("4/4").is_err());
    assert!(sweep::parse_shard("x/4").is_err());
    assert!(sweep::parse_shard("3").is_err());
    assert!(sweep::shard(units(), 0, 0).is_err());
}

#[test]
fn merge_refuses_the_same_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    let rows = sweep::execute(&units()[3..4], &settings(dir.path(), 1), &|_| {}).unwrap();
    let e = sweep::merge(vec![rows.clone(), rows]).unwrap_err();
    assert!(e.to_string().contains("more than one shard"), "{e}");
}

#[test]
fn split_grids_give_the_same_rows_in_the_same_order() {
    let units = units();
    let split = sweep::split_grids(units.clone());
    // Each full grid (K8s-CPU, 9 targets, on two workloads) becomes nine units; the
    // descending searches and the chain stay whole.
    assert_eq!(split.len(), units.len() + 2 * 8);
    assert!(split
        .iter()
        .any(|u| u.label() == "demo/diurnal/k8s-cpu-0.3"));
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let whole = sweep::execute(&units[3..], &settings(a.path(), 1), &|_| {}).unwrap();
    let parts = sweep::execute(
        &sweep::split_grids(units[3..].to_vec()),
        &settings(b.path(), 2),
        &|_| {},
    )
    .unwrap();
    assert_eq!(whole, parts);
}

#[test]
fn burst_baselines_are_also_tried_just_below_full_utilisation() {
    let top = |c| sweep::grid(c).last().unwrap().group1;
    assert_eq!(top(Contender::K8sCpu), 0.9);
    assert_eq!(top(Contender::K8sCpuFast), 0.9);
    assert_eq!(top(Contender::K8sCpuBurst), 0.95);
    assert_eq!(top(Contender::K8sCpuFastBurst), 0.95);
    assert_eq!(sweep::grid(Contender::K8sCpuFastBurst).len(), 10);
}

/// With several draws per grid target, each target runs once per seed, the first draw is the
/// single-draw sweep's run, a descending search stops at the first target every draw meets, and
/// the best is reported with the draws' mean allocation and median P99.
#[test]
fn draws_judge_each_target_on_all_of_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let grid = &units()[4..5]; // K8s-CPU-Fast on diurnal, from 0.9 down
    let mut one = settings(dir.path().join("one").as_path(), 2);
    one.load = traces::Load::Poisson;
    let single = sweep::execute(grid, &one, &|_| {}).unwrap();
    let mut three = one.clone();
    three.out = dir.path().join("three");
    three.draws = 3;
    let ticks = std::sync::atomic::AtomicUsize::new(0);
    let rows = sweep::execute(grid, &three, &|n| {
        ticks.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    })
    .unwrap();
    // The progress bar counts runs, not targets: every draw made, and every draw of the
    // targets the search skipped, add up to the plan.
    assert_eq!(ticks.into_inner(), grid[0].max_runs(3));
    assert_eq!(grid[0].max_runs(3), 3 * grid[0].max_runs(1));
    let draws = sweep::settings_of(rows.iter());
    assert!(
        draws.len() >= 2,
        "the search goes past its first target: {rows:?}"
    );
    for d in &draws {
        let seeds: Vec<u64> = d.rows.iter().map(|r| r.seed).collect();
        assert_eq!(seeds, vec![3, 4, 5]);
        let first = single.iter().find(|r| r.target1 == d.rows[0].target1);
        if let Some(first) = first {
            assert_eq!(
                first.allocation, d.rows[0].allocation,
                "the first draw is the run"
            );
            assert_eq!(first.p99_ms, d.rows[0].p99_ms);
        }
        let mean = d.rows.iter().map(|r| r.allocation).sum::<f64>() / 3.0;
        assert!((d.allocation - mean).abs() < 1e-12);
        let mut p99: Vec<f64> = d.rows.iter().map(|r| r.p99_ms).collect();
        p99.sort_by(f64::total_cmp);
        if d.rows.iter().all(|r| r.stopped_s.is_none()) {
            assert_eq!(d.p99_ms, p99[1], "the median");
        }
        assert_eq!(d.met, d.rows.iter().all(|r| r.slo_met));
    }
    // Every target but the last missed on some draw; the last met on all.
    let (last, before) = draws.split_last().unwrap();
    assert!(last.met && before.iter().all(|d| !d.met));
    let best = &sweep::best(&rows)[0];
    assert_eq!(best.target1.as_deref(), Some(last.rows[0].target1.as_str()));
    assert_eq!(best.allocation, Some(last.allocation));
    assert_eq!(best.p99_ms, Some(last.p99_ms));
}
