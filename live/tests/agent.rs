//! The agent's protocol handling and safety rules, on a directory laid out like a cgroup v2
//! hierarchy (no kernel needed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use controller::{CpuSample, ScalerConfig, ScalerKind};
use live::agent::Agent;
use live::cgroup::Root;
use live::journal::Journal;
use live::protocol::{self, Call, Code, Request, StatsReply, StopReply};

struct Fixture {
    dir: tempfile::TempDir,
    agent: Agent,
}

const TOKEN: &str = "s3cret";

fn write_stat(dir: &Path, name: &str, usage_us: u64, periods: u64, throttled: u64) {
    std::fs::write(
        dir.join(name).join("cpu.stat"),
        format!("usage_usec {usage_us}\nuser_usec 0\nsystem_usec 0\nnr_periods {periods}\nnr_throttled {throttled}\nthrottled_usec {}\n", throttled * 10_000),
    )
    .unwrap();
}

fn fixture(names: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cgroup.controllers"), "cpu\n").unwrap();
    let mut known = BTreeMap::new();
    for n in names {
        std::fs::create_dir(dir.path().join(n)).unwrap();
        std::fs::write(dir.path().join(n).join("cpu.max"), "max 100000\n").unwrap();
        write_stat(dir.path(), n, 0, 0, 0);
        known.insert(n.to_string(), PathBuf::from(n));
    }
    let root = Root::detect(dir.path()).unwrap();
    let journal = Journal::new(&dir.path().join("state/journal.json"));
    let mut agent = Agent::new("node-1", TOKEN, root, journal, 5.0);
    agent.set_known(known);
    Fixture { dir, agent }
}

fn req(call: Call) -> Request {
    Request {
        id: 1,
        token: TOKEN.into(),
        call,
    }
}

fn start(f: &mut Fixture, name: &str, config: ScalerConfig) -> protocol::Response {
    f.agent.handle(
        req(Call::Start {
            scalers: [(name.to_string(), config)].into(),
            bursts: Default::default(),
        }),
        0.0,
    )
}

fn cpu_max(f: &Fixture, name: &str) -> String {
    std::fs::read_to_string(f.dir.path().join(name).join("cpu.max")).unwrap()
}

/// Ten ticks (one second) of a container using `cores`, starting at `t0`.
fn run_second(f: &mut Fixture, name: &str, t0: f64, cores: f64) {
    for i in 1..=10 {
        let t = t0 + i as f64 * 0.1;
        write_stat(
            f.dir.path(),
            name,
            (t * cores * 1e6) as u64,
            (t * 10.0) as u64,
            0,
        );
        f.agent.tick(t);
    }
}

#[test]
fn captain_scales_down_and_stop_restores() {
    let mut f = fixture(&["web"]);
    let r = start(&mut f, "web", ScalerKind::Captain.config(0.1, 8.0));
    assert!(r.ok, "{r:?}");
    f.agent.tick(0.0);
    run_second(&mut f, "web", 0.0, 1.0);
    assert_eq!(
        cpu_max(&f, "web"),
        "400000 100000\n",
        "8 cores halved after one second of 1-core use"
    );
    assert!(
        f.dir.path().join("state/journal.json").exists(),
        "original recorded before the write"
    );
    let stats: StatsReply = f.agent.handle(req(Call::Stats), 1.0).result_as().unwrap();
    let web = &stats.containers["web"];
    assert_eq!(web.rows.len(), 1);
    assert!((web.rows[0].usage - 1.0).abs() < 0.05, "{web:?}");
    assert_eq!(web.target, Some(0.1));
    let stop: StopReply = f.agent.handle(req(Call::Stop), 1.1).result_as().unwrap();
    assert_eq!(stop.restored, ["web"]);
    assert_eq!(cpu_max(&f, "web"), "max 100000\n");
    assert!(!f.dir.path().join("state/journal.json").exists());
}

#[test]
fn a_smoothed_captain_runs_here_and_a_bad_one_is_refused() {
    let mut f = fixture(&["web"]);
    let bad = ScalerConfig::Captain {
        target: 0.1,
        initial_limit: 8.0,
        usage_samples: 0,
    };
    let r = start(&mut f, "web", bad);
    assert!(!r.ok, "{r:?}");
    let e = format!("{:?}", r.error);
    assert!(e.contains("usage samples"), "{e}");
    assert_eq!(cpu_max(&f, "web"), "max 100000\n", "nothing written");
    let r = start(&mut f, "web", ScalerKind::CaptainSmooth.config(0.1, 8.0));
    assert!(r.ok, "{r:?}");
    f.agent.tick(0.0);
    run_second(&mut f, "web", 0.0, 1.0);
    // The first second's one-second means climb from 0.1 to 1 core: the scale-down is the
    // original's halving.
    assert_eq!(cpu_max(&f, "web"), "400000 100000\n");
    let stop: StopReply = f.agent.handle(req(Call::Stop), 1.1).result_as().unwrap();
    assert_eq!(stop.restored, ["web"]);
    assert_eq!(cpu_max(&f, "web"), "max 100000\n");
}

#[test]
fn bad_requests_change_nothing() {
    let mut f = fixture(&["web"]);
    assert!(start(&mut f, "web", ScalerKind::Const.config(0.0, 2.0)).ok);
    f.agent.tick(0.0);
    f.agent.tick(0.1);
    let before = cpu_max(&f, "web");
    assert_eq!(before, "200000 100000\n");

    let bad_token = f.agent.handle(
        Request {
            id: 2,
            token: "nope".into(),
            call: Call::Stop,
        },
        0.2,
    );
    assert_eq!(bad_token.code(), Some(Code::BadToken));
    let unknown = f.agent.handle(
        req(Call::Start {
            scalers: [("db".to_string(), ScalerKind::Const.config(0.0, 1.0))].into(),
            bursts: Default::default(),
        }),
        0.2,
    );
    assert_eq!(unknown.code(), Some(Code::UnknownContainer));
    let target = f.agent.handle(
        req(Call::UpdateTargets {
            targets: [("web".to_string(), 1.5)].into(),
        }),
        0.2,
    );
    assert_eq!(target.code(), Some(Code::BadTarget));
    let nan = f.agent.handle(
        req(Call::UpdateTargets {
            targets: [("web".to_string(), f64::NAN)].into(),
        }),
        0.2,
    );
    assert_eq!(nan.code(), Some(Code::BadTarget));
    let not_controlled = f.agent.handle(
        req(Call::UpdateTargets {
            targets: [("db".to_string(), 0.1)].into(),
        }),
        0.2,
    );
    assert_eq!(not_controlled.code(), Some(Code::UnknownContainer));
    let infinite = f.agent.handle(
        req(Call::Start {
            scalers: [("web".to_string(), ScalerConfig::Const { limit: f64::NAN })].into(),
            bursts: Default::default(),
        }),
        0.2,
    );
    assert_eq!(infinite.code(), Some(Code::BadConfig));
    for line in [
        &b"{bad json"[..],
        br#"{"v":1,"id":3,"token":"s3cret","method":"format_disk"}"#,
    ] {
        let e = protocol::parse(line, "s3cret").unwrap_err();
        assert!(matches!(
            e.code(),
            Some(Code::Malformed | Code::UnknownMethod)
        ));
    }
    f.agent.tick(0.3);
    assert_eq!(cpu_max(&f, "web"), before, "no request changed the limit");
    assert_eq!(f.agent.controlling(), vec!["web".to_string()]);
}

#[test]
fn a_silent_coordinator_gets_limits_restored() {
    let mut f = fixture(&["web"]);
    assert!(start(&mut f, "web", ScalerKind::Const.config(0.0, 1.0)).ok);
    f.agent.tick(0.1);
    assert_eq!(cpu_max(&f, "web"), "100000 100000\n");
    f.agent.tick(4.9);
    assert_eq!(f.agent.controlling().len(), 1, "within the 5 s timeout");
    f.agent.tick(5.2);
    assert!(f.agent.controlling().is_empty());
    assert_eq!(cpu_max(&f, "web"), "max 100000\n");
    assert!(f
        .agent
        .fault()
        .unwrap()
        .contains("no message from the coordinator"));
}

/// A scaler that panics after a few samples.
struct Faulty(u32);
impl controller::Scaler for Faulty {
    fn sample(&mut self, _: &CpuSample) -> f64 {
        self.0 += 1;
        if self.0 > 2 {
            panic!("scaler bug");
        }
        0.5
    }
    fn limit(&self) -> f64 {
        0.5
    }
    fn target(&self) -> Option<f64> {
        Some(0.1)
    }
    fn set_target(&mut self, _: f64) -> Result<(), controller::ControllerError> {
        Ok(())
    }
    fn name(&self) -> &'static str {
        "faulty"
    }
}

#[test]
fn a_panicking_scaler_gets_limits_restored() {
    let mut f = fixture(&["web", "db"]);
    assert!(start(&mut f, "db", ScalerKind::Const.config(0.0, 2.0)).ok);
    f.agent.control_with("web", Box::new(Faulty(0))).unwrap();
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..5 {
        f.agent.tick(i as f64 * 0.1);
    }
    std::panic::set_hook(quiet);
    assert!(f.agent.controlling().is_empty());
    assert_eq!(cpu_max(&f, "web"), "max 100000\n");
    assert_eq!(cpu_max(&f, "db"), "max 100000\n");
    assert!(f.agent.fault().unwrap().contains("panicked"));
}

#[test]
fn a_restarted_container_is_remapped() {
    let mut f = fixture(&["web-a", "web-b"]);
    let mut known = BTreeMap::new();
    known.insert("web".to_string(), PathBuf::from("web-a"));
    f.agent.set_known(known.clone());
    assert!(start(&mut f, "web", ScalerKind::Const.config(0.0, 1.0)).ok);
    f.agent.tick(0.1);
    assert_eq!(cpu_max(&f, "web-a"), "100000 100000\n");
    // The container restarted: same name, new cgroup. The old group is restored and dropped.
    known.insert("web".to_string(), PathBuf::from("web-b"));
    f.agent.set_known(known);
    assert_eq!(cpu_max(&f, "web-a"), "max 100000\n");
    assert!(
        f.agent.controlling().is_empty(),
        "the coordinator starts it again"
    );
    assert!(start(&mut f, "web", ScalerKind::Const.config(0.0, 1.0)).ok);
    f.agent.tick(0.2);
    assert_eq!(cpu_max(&f, "web-b"), "100000 100000\n");
}

#[test]
fn a_journal_that_cannot_be_written_is_a_fault_and_the_container_is_reported_lost() {
    let mut f = fixture(&["web", "db"]);
    assert!(start(&mut f, "web", ScalerKind::Const.config(0.0, 1.0)).ok);
    assert!(start(&mut f, "db", ScalerKind::Const.config(0.0, 0.5)).ok);
    f.agent.tick(0.1);
    assert_eq!(cpu_max(&f, "web"), "100000 100000\n");
    // The journal's directory becomes unusable mid-control (here: replaced by a file).
    let state = f.dir.path().join("state");
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, "not a directory").unwrap();
    // A new limit for web must be noted in the journal first: it cannot be, so it is not
    // written; web is restored and reported lost, with why.
    let r = f.agent.handle(
        req(Call::Start {
            scalers: [("web".to_string(), ScalerKind::Const.config(0.0, 1.5))].into(),
            bursts: Default::default(),
        }),
        0.15,
    );
    assert!(r.ok, "{r:?}");
    f.agent.tick(0.2);
    f.agent.tick(0.3);
    assert_eq!(
        cpu_max(&f, "web"),
        "max 100000\n",
        "restored, not left at a limit nobody journals"
    );
    assert_eq!(
        cpu_max(&f, "db"),
        "50000 100000\n",
        "db's limit did not change: it stays"
    );
    let stats: StatsReply = f.agent.handle(req(Call::Stats), 0.4).result_as().unwrap();
    assert!(!stats.containers.contains_key("web"));
    assert!(stats.lost["web"].contains("journal"), "{:?}", stats.lost);
    assert!(stats.fault.unwrap().starts_with("journal:"));
    assert!(f.agent.journal_faults() > 0);
}

#[test]
fn a_quota_changed_from_outside_is_set_back() {
    let mut f = fixture(&["web"]);
    assert!(start(&mut f, "web", ScalerKind::Const.config(0.0, 2.0)).ok);
    f.agent.tick(0.1);
    assert_eq!(cpu_max(&f, "web"), "200000 100000\n");
    std::fs::write(f.dir.path().join("web/cpu.max"), "90000 100000\n").unwrap();
    f.agent.tick(0.2);
    assert_eq!(cpu_max(&f, "web"), "200000 100000\n");
    assert_eq!(f.agent.gauges()[0].drifts, 1);
}

#[test]
fn token_sources() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("token");
    std::fs::write(&p, "  abc \n").unwrap();
    assert_eq!(live::agent::load_token(Some(&p), None).unwrap(), "abc");
    assert_eq!(
        live::agent::load_token(None, Some("x".into())).unwrap(),
        "x"
    );
    assert!(live::agent::load_token(None, None)
        .unwrap_err()
        .to_string()
        .contains("no token"));
    std::fs::write(&p, "\n").unwrap();
    assert!(live::agent::load_token(Some(&p), None).is_err());
}

#[test]
fn bursts_are_checked_before_anything_changes() {
    use live::cgroup::Burst;
    let mut f = fixture(&["web", "db"]);
    let start_with = |f: &mut Fixture, name: &str, burst: Burst| {
        f.agent.handle(
            req(Call::Start {
                scalers: [("web".to_string(), ScalerKind::Const.config(0.0, 0.5))].into(),
                bursts: [(name.to_string(), burst)].into(),
            }),
            0.0,
        )
    };
    // A burst for a container this start gives no scaler.
    let r = start_with(&mut f, "db", Burst::Fraction(0.5));
    assert_eq!(r.code(), Some(Code::BadConfig), "{r:?}");
    // Out of range.
    let r = start_with(&mut f, "web", Burst::Fraction(1.5));
    assert_eq!(r.code(), Some(Code::BadConfig), "{r:?}");
    let r = start_with(&mut f, "web", Burst::Micros(10_000_000));
    assert_eq!(r.code(), Some(Code::BadConfig), "{r:?}");
    // A kernel without CFS burst (no cpu.max.burst here).
    let r = start_with(&mut f, "web", Burst::Fraction(0.5));
    assert_eq!(r.code(), Some(Code::BadConfig), "{r:?}");
    assert!(format!("{r:?}").contains("5.14"), "{r:?}");
    assert!(f.agent.controlling().is_empty(), "nothing started");
    assert_eq!(cpu_max(&f, "web"), "max 100000\n", "nothing written");
    // With the file, the same start is taken and the burst follows the quota.
    std::fs::write(f.dir.path().join("web/cpu.max.burst"), "0\n").unwrap();
    let r = start_with(&mut f, "web", Burst::Fraction(0.5));
    assert!(r.ok, "{r:?}");
    f.agent.tick(0.1);
    assert_eq!(cpu_max(&f, "web"), "50000 100000\n");
    assert_eq!(
        std::fs::read_to_string(f.dir.path().join("web/cpu.max.burst")).unwrap(),
        "25000\n"
    );
}
