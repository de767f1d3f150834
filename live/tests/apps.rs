//! The paper's three apps' live loads against stubs of their APIs (no cluster, no root): every
//! request well formed, the mix the scenario's weights say, train-ticket's flows in order.

use std::sync::Arc;
use std::time::Duration;

use live::coordinator::RunSpec;
use live::loadgen::{LoadConfig, LoadGen};
use scenarios::Scenario;
use traces::{Load, Trace};

mod support;
use support::stubs::{self, App, Report};

/// The load `live run --scenario APP --load users` would send to `url`, but `users` users
/// thinking `think_s` for `seconds`, measured from the start.
fn load(app: App, url: &str, users: f64, seconds: usize, think_s: f64) -> LoadConfig {
    let scenario = Arc::new(Scenario::builtin(app.scenario()).unwrap());
    let mut spec = RunSpec::new(scenario, Arc::new(Trace::constant(1, 1)), url, "t");
    spec.plan.load = Load::Users { think_s };
    let mut c = spec.load_config().unwrap();
    c.rates = vec![users; seconds];
    c.measure_from_s = 0;
    c.timeout = Duration::from_secs(5);
    c
}

/// Runs the load to its end (init requests first) and returns what the stub saw.
fn drive(app: App, users: f64, seconds: usize, think_s: f64, reuse_s: Option<f64>) -> Report {
    let stub = stubs::start(app, None);
    let mut config = load(app, &stub.url(), users, seconds, think_s);
    if let (Some(r), Some(live)) = (reuse_s, config.live.as_mut()) {
        live.setup_reuse_s = r;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let stats = rt.block_on(async {
        let mut gen = LoadGen::new(config).unwrap();
        gen.init().await.unwrap();
        gen.run().await.unwrap();
        gen.stats()
    });
    let report = stub.report();
    let s = stats.lock().unwrap();
    let (ok, errors): (u64, u64) = s
        .seconds
        .iter()
        .fold((0, 0), |(o, e), x| (o + x.ok, e + x.errors + x.timeouts));
    assert_eq!(
        report.malformed,
        0,
        "{}: {:?}",
        app.scenario(),
        report.problems
    );
    assert_eq!(errors, 0, "{}: {:?}", app.scenario(), s.last_error);
    let seen = report.requests();
    assert_eq!(seen, ok, "every answered request reached the stub once");
    eprintln!("{}: {:?}", app.scenario(), report.counts);
    report
}

/// The scenario's weights as shares, compose-post's three types as one.
fn weights(app: App) -> Vec<(String, f64)> {
    let s = Scenario::builtin(app.scenario()).unwrap();
    let total: f64 = s.requests.iter().map(|r| r.weight).sum();
    let mut out: Vec<(String, f64)> = Vec::new();
    for r in &s.requests {
        let name = if r.name.starts_with("compose-post-") {
            "compose-post".to_string()
        } else {
            r.name.clone()
        };
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 += r.weight / total,
            None => out.push((name, r.weight / total)),
        }
    }
    out
}

fn assert_mix(app: App, report: &Report, skip: &[&str]) {
    let shares = report.shares();
    for (name, want) in weights(app) {
        if skip.contains(&name.as_str()) {
            continue;
        }
        let got = shares.get(&name).copied().unwrap_or(0.0);
        assert!(
            (got - want).abs() < 0.02,
            "{}: {name} is {:.2}% of the requests, the weights say {:.2}% ({:?})",
            app.scenario(),
            100.0 * got,
            100.0 * want,
            report.counts
        );
    }
}

#[test]
fn hotel_reservation_requests_match_its_api_and_mix() {
    let report = drive(App::Hotel, 20.0, 5, 0.01, None);
    let total: u64 = report.counts.values().sum();
    assert!(total > 2000, "{total} requests");
    for kind in ["search", "recommend", "login", "reserve"] {
        assert!(
            report.counts.get(kind).copied().unwrap_or(0) > 0,
            "no {kind}: {report:?}"
        );
    }
    assert_mix(App::Hotel, &report, &[]);
}

#[test]
fn social_network_requests_match_its_api_and_mix() {
    let report = drive(App::Social, 20.0, 5, 0.01, None);
    let total: u64 = report.counts.values().sum();
    assert!(total > 1500, "{total} requests");
    assert_mix(App::Social, &report, &[]);
}

#[test]
fn train_ticket_users_log_in_once_and_book_with_what_answers_gave_them() {
    let users = 20.0;
    let report = drive(App::Train, users, 6, 0.01, None);
    for init in [
        "init:admin-login",
        "init:create-user",
        "init:create-contact",
    ] {
        assert_eq!(report.counts.get(init), Some(&1), "{report:?}");
    }
    // All users share a login younger than 30 minutes: only those that started before the
    // first one was answered log in themselves (users start 50 ms apart here).
    let logins = report.counts["login"];
    assert!((1..=2).contains(&logins), "{logins} logins");
    assert!(report.counts["preserve"] > 0, "{report:?}");
    assert!(report.counts["preserve"] <= report.counts["contacts"]);
    assert_mix(App::Train, &report, &["login"]);

    // Without reuse, each user logs in itself, once.
    let report = drive(App::Train, users, 3, 0.01, Some(0.0));
    assert_eq!(report.counts["login"], users as u64, "{report:?}");
}

#[test]
fn flows_need_closed_loop_users() {
    let mut c = load(App::Train, "http://127.0.0.1:1", 1.0, 1, 1.0);
    c.load = Load::Poisson;
    let e = LoadGen::new(c).unwrap_err().to_string();
    assert!(e.contains("--load users"), "{e}");
    // Flows fix the order of the request types: a calibration load's mix cycle cannot apply.
    let mut c = load(App::Train, "http://127.0.0.1:1", 1.0, 1, 1.0);
    c.mix_cycle_s = 10;
    let e = LoadGen::new(c).unwrap_err().to_string();
    assert!(e.contains("a mix cycle cannot change their shares"), "{e}");
    // A template reading a value nothing captures is refused before anything is sent.
    let mut c = load(App::Train, "http://127.0.0.1:1", 1.0, 1, 1.0);
    c.mix[0].http.path = "/index.html?x={$nothing}".into();
    let e = LoadGen::new(c).unwrap_err().to_string();
    assert!(e.contains("{$nothing}") && e.contains("'home'"), "{e}");
}

#[test]
fn a_failed_init_request_stops_the_load_before_it_starts() {
    // The hotel stub knows no admin: train-ticket's init fails there, with the reason.
    let stub = stubs::start(App::Hotel, None);
    let c = load(App::Train, &stub.url(), 1.0, 1, 1.0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(async { LoadGen::new(c).unwrap().init().await })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("init admin-login") && e.contains("HTTP 400"),
        "{e}"
    );
}
