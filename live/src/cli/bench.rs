//! `live bench` (the agent's own overhead) and `live load-bench` (the load generator's
//! throughput).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use live::cgroup::Root;
use live::journal::Journal;

#[derive(Args)]
pub struct BenchArgs {
    /// Containers to control.
    #[arg(long, default_value_t = 70)]
    pub containers: usize,
    /// How long to run, seconds.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// The cgroup v1 root to create the groups under (they are removed afterwards).
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
}

/// Creates N empty groups, controls them with Captains at 100 ms for a while, and reports the
/// agent's CPU use and how late its ticks were.
pub fn bench(b: BenchArgs) -> Result<()> {
    use controller::{ScalerConfig, ScalerKind};
    use live::protocol::{Call, Request};
    let root = Root::detect(&b.cgroup_root)?;
    let base = format!("autothrottle-bench-{}", std::process::id());
    let groups = live::groups::Groups::create(&root, &base, b.containers)?;
    let dir = tempfile_dir()?;
    let mut agent = live::agent::Agent::new(
        "bench",
        "t",
        root.clone(),
        Journal::new(&dir.join("journal.json")),
        1e9,
    );
    agent.set_known(groups.known());
    let scalers: BTreeMap<String, ScalerConfig> = groups
        .names()
        .into_iter()
        .map(|n| (n, ScalerKind::Captain.config(0.1, 1.0)))
        .collect();
    let r = agent.handle(
        Request {
            id: 1,
            token: "t".into(),
            call: Call::Start {
                scalers,
                bursts: Default::default(),
            },
        },
        0.0,
    );
    if !r.ok {
        bail!("start failed: {:?}", r.error);
    }
    let usage0 = live::os::process_cpu_seconds();
    let start = Instant::now();
    let mut lateness = Vec::new();
    let mut k = 1u64;
    while start.elapsed() < Duration::from_secs(b.seconds) {
        let due = start + Duration::from_millis(100 * k);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        lateness.push(Instant::now().saturating_duration_since(due).as_secs_f64() * 1000.0);
        agent.tick(start.elapsed().as_secs_f64());
        k += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = live::os::process_cpu_seconds() - usage0;
    agent.restore_all();
    drop(groups);
    lateness.sort_by(f64::total_cmp);
    let p = |q: f64| lateness[((lateness.len() - 1) as f64 * q).round() as usize];
    println!("containers          {}", b.containers);
    println!("ticks               {} over {wall:.1} s", lateness.len());
    println!(
        "agent CPU           {:.2}% of one core ({:.3} ms per tick)",
        100.0 * cpu / wall,
        1000.0 * cpu / lateness.len() as f64
    );
    println!(
        "tick lateness       p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        p(0.5),
        p(0.99),
        p(1.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("autothrottle-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Drives `rps` for `seconds` against an in-process trivial server and reports what got through.
pub fn load_bench(rps: f64, seconds: usize) -> Result<()> {
    use live::loadgen::{serve_ok, LoadConfig, LoadGen, RequestKind};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(serve_ok(listener, Duration::ZERO));
        let gen = LoadGen::new(LoadConfig {
            base,
            rates: vec![rps; seconds],
            load: traces::Load::Poisson,
            mix: vec![RequestKind::new("get", 1.0, "GET", "/x?id={int:1..1000}")],
            live: None,
            seed: 1,
            timeout: Duration::from_secs(2),
            max_in_flight: 512,
            measure_from_s: 0,
            arrivals_log: None,
            mix_cycle_s: 0,
        })?;
        let start = Instant::now();
        gen.run().await?;
        let wall = start.elapsed().as_secs_f64();
        server.abort();
        let stats = gen.stats();
        let s = stats.lock().expect("stats");
        let (mut sent, mut ok, mut bad) = (0u64, 0u64, 0u64);
        for sec in &s.seconds {
            sent += sec.sent;
            ok += sec.ok;
            bad += sec.errors + sec.timeouts;
        }
        let all = &s.overall;
        println!("target rate         {rps:.0} RPS for {seconds} s");
        println!(
            "sent / ok / failed  {sent} / {ok} / {bad} in {wall:.1} s ({:.0} ok per second)",
            ok as f64 / seconds as f64
        );
        println!(
            "latency             p50 {:.2} ms, p99 {:.2} ms",
            record::latency::quantile_ms(all, 0.5),
            record::latency::quantile_ms(all, 0.99)
        );
        println!(
            "send lateness       p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            record::latency::quantile_ms(&s.lateness, 0.5),
            record::latency::quantile_ms(&s.lateness, 0.99),
            s.lateness.max() as f64 / 1000.0
        );
        Ok(())
    })
}
