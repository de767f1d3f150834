//! Checks on the app under test: that it answers at all before the run, and that it still
//! does during it.

use std::net::ToSocketAddrs;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpStream;

use super::RunSpec;
use crate::loadgen::Stats;
use crate::LiveError;

fn host_port(url: &str) -> Result<String, LiveError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| LiveError::Config(format!("bad URL {url:?}: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| LiveError::Config(format!("URL {url:?} has no host")))?;
    Ok(format!("{host}:{}", uri.port_u16().unwrap_or(80)))
}

/// Checks that something accepts TCP connections at the app's URL.
pub async fn probe_app(url: &str, timeout: Duration) -> Result<(), LiveError> {
    let addr = host_port(url)?;
    let unreachable = |reason: String| LiveError::Unreachable {
        url: url.to_string(),
        reason,
    };
    let resolved: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| unreachable(format!("cannot resolve {addr}: {e}")))?
        .collect();
    let first = resolved
        .first()
        .ok_or_else(|| unreachable(format!("{addr} resolves to nothing")))?;
    tokio::time::timeout(timeout, TcpStream::connect(first))
        .await
        .map_err(|_| unreachable(format!("no answer within {:.0} s", timeout.as_secs_f64())))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(())
}

/// Why the run should give up on the app, if it should: no answer at all to the requests of
/// the last `dead_app_s` seconds whose outcome is known.
pub(super) fn dead_app(stats: &Mutex<Stats>, elapsed: f64, spec: &RunSpec) -> Option<String> {
    let settled = (elapsed - spec.request_timeout.as_secs_f64() - 1.0).floor();
    if settled < spec.dead_app_s as f64 || spec.dead_app_s == 0 {
        return None;
    }
    let s = stats.lock().expect("stats lock");
    let end = (settled as usize).min(s.seconds.len());
    let window = &s.seconds[end.saturating_sub(spec.dead_app_s)..end];
    let sent: u64 = window.iter().map(|x| x.sent).sum();
    let ok: u64 = window.iter().map(|x| x.ok).sum();
    (sent > 0 && ok == 0).then(|| {
        format!(
            "the app at {} answered none of the {sent} requests of the last {} s (last error: {})",
            spec.url,
            spec.dead_app_s,
            s.last_error.as_deref().unwrap_or("timeouts")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::spec::tests::spec;
    use crate::loadgen::LoadGen;

    #[test]
    fn a_run_gives_up_on_an_app_that_answers_nothing() {
        let mut s = spec();
        s.plan.ramp_s = 0;
        s.dead_app_s = 10;
        s.request_timeout = Duration::from_secs(2);
        let stats = LoadGen::new(s.load_config().unwrap()).unwrap().stats();
        {
            let mut st = stats.lock().unwrap();
            for sec in st.seconds.iter_mut().take(40) {
                sec.sent = 40;
                sec.ok = 40;
            }
        }
        assert_eq!(dead_app(&stats, 40.0, &s), None, "a healthy app");
        {
            let mut st = stats.lock().unwrap();
            for sec in st.seconds.iter_mut().skip(20).take(20) {
                sec.ok = 0;
                sec.errors = 40;
            }
            st.last_error = Some("connection refused".into());
        }
        // At 30 s, the seconds known (up to 27) still hold answers.
        assert_eq!(dead_app(&stats, 30.0, &s), None);
        let why = dead_app(&stats, 40.0, &s).expect("ten silent seconds");
        assert!(
            why.contains("answered none of the 400 requests of the last 10 s"),
            "{why}"
        );
        assert!(why.contains("connection refused"), "{why}");
        s.dead_app_s = 0;
        assert_eq!(dead_app(&stats, 40.0, &s), None, "0 means never give up");
    }

    #[tokio::test]
    async fn an_unreachable_app_is_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = probe_app(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot reach the app at http://127.0.0.1:"),
            "{e}"
        );
    }
}
