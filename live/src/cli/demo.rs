//! `live demo`: a scenario's services as real HTTP processes, each in its own cgroup.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use live::cgroup::Root;

pub fn demo(spec: &str, port: u16, cgroup_root: &Path, group: Option<String>) -> Result<()> {
    let scenario = scenarios::Scenario::load(spec)?;
    if let Some(r) = scenario.file.requests.iter().find(|r| r.http.is_none()) {
        bail!(
            "request type '{}' of {} has no http path: the demo cannot send it",
            r.name,
            scenario.name
        );
    }
    let root = Root::detect(cgroup_root)?;
    let base = group.unwrap_or_else(|| format!("autothrottle-demo-{}", std::process::id()));
    let names: Vec<String> = scenario.services.iter().map(|s| s.name.clone()).collect();
    let mut groups = live::groups::Groups::create_named(&root, &base, &names)?;
    let addrs: Vec<(String, SocketAddr)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.clone(),
                SocketAddr::from(([127, 0, 0, 1], port + i as u16)),
            )
        })
        .collect();
    let exe = std::env::current_exe()?;
    for (name, addr) in &addrs {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args([
            "demo-service",
            "--scenario",
            spec,
            "--service",
            name,
            "--listen",
            &addr.to_string(),
        ]);
        for (n, a) in &addrs {
            cmd.args(["--peer", &format!("{n}={a}")]);
        }
        groups.spawn(name, &mut cmd)?;
    }
    println!(
        "{} services of {} running (Ctrl-C stops them and removes their groups):",
        names.len(),
        scenario.name
    );
    for (name, addr) in &addrs {
        println!(
            "  {name:<24} http://{addr}  group {}",
            groups.rel(name).display()
        );
    }
    let entry = &addrs[scenario.requests[0].nodes[0].service].1;
    println!("requests enter at http://{entry}");
    let agent: Vec<String> = names
        .iter()
        .map(|n| format!("--cgroup {n}={}", groups.rel(n).display()))
        .collect();
    println!("agent: live agent --no-supervisor {}", agent.join(" "));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        live::os::stop_requested().await?;
        anyhow::Ok(())
    })?;
    drop(groups);
    println!("stopped; groups removed");
    Ok(())
}

pub fn demo_service(spec: &str, service: &str, listen: SocketAddr, peers: &[String]) -> Result<()> {
    let scenario = std::sync::Arc::new(scenarios::Scenario::load(spec)?);
    let mut map = BTreeMap::new();
    for p in peers {
        let (n, a) = p
            .split_once('=')
            .with_context(|| format!("--peer takes NAME=ADDRESS, got '{p}'"))?;
        map.insert(
            n.to_string(),
            a.parse::<SocketAddr>()
                .with_context(|| format!("--peer {p}: bad address"))?,
        );
    }
    let svc = live::demo::Service::new(scenario, service, &map)?;
    live::demo::run(svc, listen)?;
    Ok(())
}
