//! The `live` binary refuses unsafe or meaningless flags with a clear error and a non-zero
//! exit, before touching anything.

use std::process::{Command, Output};

fn live(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_live"))
        .args(args)
        .env("AUTOTHROTTLE_TOKEN", "tok")
        .env("RUST_LOG", "off")
        .output()
        .unwrap()
}

/// Asserts a failure whose message contains `needle`.
fn refused(args: &[&str], needle: &str) {
    let out = live(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[test]
fn the_token_never_crosses_the_network_in_clear_text_unless_asked() {
    let agent = ["agent", "--no-supervisor", "--cgroup", "web=web"];
    refused(
        &[&agent[..], &["--listen", "0.0.0.0:7070"]].concat(),
        "--listen 0.0.0.0:7070 is reachable from the network",
    );
    refused(
        &[
            &agent[..],
            &["--listen", "0.0.0.0:7070", "--tls-cert", "c.pem"],
        ]
        .concat(),
        "--tls-key",
    );
    refused(
        &[
            &agent[..],
            &["--tls-cert", "c.pem", "--tls-key", "k.pem", "--plaintext"],
        ]
        .concat(),
        "cannot be used with",
    );
    refused(
        &["run", "--agent", "local=10.1.2.3:7070", "--duration", "60"],
        "the agents (10.1.2.3:7070) are reached over the network",
    );
    refused(
        &[
            "run",
            "--agent",
            "local=10.1.2.3:7070",
            "--tls-ca",
            "/nonexistent/ca.pem",
        ],
        "/nonexistent/ca.pem",
    );
}

#[test]
fn a_measurement_mix_names_real_request_types_and_sane_weights() {
    refused(
        &["run", "--mix", "post=1"],
        "--mix post=1: builtin:demo: requests: no request type 'post' (it has: get, put)",
    );
    refused(
        &["run", "--mix", "put=-1"],
        "requests[1].weight: must be a positive number, got -1",
    );
    refused(
        &["run", "--mix", "put=x"],
        "--mix put=x: the weight must be a number",
    );
    refused(&["run", "--mix", "put"], "--mix takes NAME=WEIGHT");
}

#[test]
fn a_demo_service_whose_port_is_taken_says_so_and_exits() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    refused(
        &[
            "demo-service",
            "--scenario",
            "demo",
            "--service",
            "store",
            "--listen",
            &addr,
            "--peer",
            "gateway=127.0.0.1:1",
            "--peer",
            "auth=127.0.0.1:1",
            "--peer",
            &format!("store={addr}"),
        ],
        &format!("cannot listen on {addr}: "),
    );
}

#[test]
fn durations_that_would_disable_the_safety_net_are_refused() {
    for bad in ["NaN", "inf", "-1", "0"] {
        let flag = format!("--coordinator-timeout={bad}");
        refused(
            &["agent", "--no-supervisor", "--cgroup", "web=web", &flag],
            "--coordinator-timeout must be within 1..86400 seconds",
        );
    }
}

#[test]
fn tls_init_writes_a_ca_and_both_identities_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    let args = [
        "tls-init",
        "--out",
        out.to_str().unwrap(),
        "--name",
        "autothrottle-agent",
    ];
    let first = live(&args);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(said.contains("--tls-name autothrottle-agent"), "{said}");
    for f in [
        "ca.pem",
        "ca-key.pem",
        "agent.pem",
        "agent-key.pem",
        "coordinator.pem",
        "coordinator-key.pem",
    ] {
        let text = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{f}: {text}");
    }
    // The certificates work together.
    live::tls::server(
        &out.join("agent.pem"),
        &out.join("agent-key.pem"),
        Some(&out.join("ca.pem")),
    )
    .unwrap();
    refused(&args, "will not overwrite");
}

/// CPU seconds (user + system) process `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ
}

/// An agent out of file descriptors backs off instead of spinning on `accept`, and keeps
/// serving the connection it already has (it burnt 2.5 CPU-seconds in 5 s before).
#[test]
fn an_agent_out_of_file_descriptors_does_not_spin_and_keeps_serving() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cgroup.controllers"), "cpu\n").unwrap();
    std::fs::create_dir(dir.path().join("web")).unwrap();
    std::fs::write(dir.path().join("web/cpu.max"), "max 100000\n").unwrap();
    std::fs::write(dir.path().join("web/cpu.stat"), "usage_usec 0\n").unwrap();
    let address = dir.path().join("address");
    let agent = format!(
        "ulimit -n 48 && exec {} agent --no-supervisor --listen 127.0.0.1:0 --max-connections 4096 \
         --cgroup web=web --cgroup-root {} --journal {} --address-file {}",
        env!("CARGO_BIN_EXE_live"),
        dir.path().display(),
        dir.path().join("journal.json").display(),
        address.display()
    );
    // Killed when dropped, so that a failed assertion leaves no agent behind.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Killed(
        Command::new("sh")
            .args(["-c", &agent])
            .env("AUTOTHROTTLE_TOKEN", "tok")
            .env("RUST_LOG", "off")
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&address) {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let hello = |s: &mut BufReader<std::net::TcpStream>, id: u64| {
        let line = live::protocol::encode(id, "tok", &live::protocol::Call::Hello);
        s.get_mut().write_all(line.as_bytes()).unwrap();
        let mut reply = String::new();
        s.read_line(&mut reply).unwrap();
        reply
    };
    let mut coordinator = BufReader::new(std::net::TcpStream::connect(&addr).unwrap());
    coordinator
        .get_ref()
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert!(hello(&mut coordinator, 1).contains("\"ok\":true"));

    // More connections than the agent has descriptors left: the rest wait in the backlog,
    // so the listener stays ready and `accept` keeps failing.
    let flood: Vec<_> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let open = std::fs::read_dir(format!("/proc/{}/fd", child.0.id()))
        .unwrap()
        .count();
    let before = cpu_seconds(child.0.id());
    std::thread::sleep(std::time::Duration::from_secs(3));
    let used = cpu_seconds(child.0.id()) - before;
    let reply = hello(&mut coordinator, 2);
    drop(flood);
    drop(child);
    assert!(
        open >= 46,
        "the agent has {open} of 48 descriptors open: not exhausted"
    );
    assert!(
        used < 0.5,
        "the agent used {used:.2} CPU-seconds in 3 s while out of descriptors"
    );
    assert!(
        reply.contains("\"id\":2") && reply.contains("\"ok\":true"),
        "{reply}"
    );
}
