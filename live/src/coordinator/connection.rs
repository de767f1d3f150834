//! One protocol connection to an agent: a request out, its reply back, with a deadline.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::protocol::{encode, Call, Response};
use crate::tls::AgentTls;

/// A byte stream to an agent: plain TCP or TLS over it.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Longest reply read from an agent, bytes: far above any `stats` (rows of a few hundred
/// containers for a few seconds), far below what would hurt the coordinator.
const MAX_REPLY: u64 = 16 << 20;

/// One protocol connection to an agent.
pub(super) struct AgentConnection {
    stream: BufReader<Box<dyn Stream>>,
    next_id: u64,
}

impl AgentConnection {
    /// Connects to the agent at `addr`, over TLS when `tls` is given; the TCP connection and
    /// the handshake together take at most `timeout`.
    pub(super) async fn connect(
        addr: &str,
        tls: Option<&AgentTls>,
        timeout: Duration,
    ) -> Result<AgentConnection, String> {
        let connect = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            Ok::<Box<dyn Stream>, String>(match tls {
                Some(tls) => Box::new(tls.connect(addr, tcp).await?),
                None => Box::new(tcp),
            })
        };
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| format!("no answer within {:.1} s", timeout.as_secs_f64()))??;
        Ok(AgentConnection {
            stream: BufReader::new(stream),
            next_id: 1,
        })
    }

    pub(super) async fn call(
        &mut self,
        token: &str,
        call: &Call,
        timeout: Duration,
    ) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let line = encode(id, token, call);
        let reply = tokio::time::timeout(timeout, async {
            let out = self.stream.get_mut();
            out.write_all(line.as_bytes()).await?;
            out.flush().await?;
            let mut reply = String::new();
            let n = (&mut self.stream)
                .take(MAX_REPLY)
                .read_line(&mut reply)
                .await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the agent closed the connection",
                ));
            }
            if !reply.ends_with('\n') {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a reply over {MAX_REPLY} bytes"),
                ));
            }
            Ok(reply)
        })
        .await
        .map_err(|_| format!("no answer within {:.1} s", timeout.as_secs_f64()))?
        .map_err(|e| e.to_string())?;
        let r: Response = serde_json::from_str(&reply)
            .map_err(|e| format!("unreadable reply {:?}: {e}", reply.trim_end()))?;
        if r.id != id {
            return Err(format!("reply to request {} where {id} was expected", r.id));
        }
        match (r.ok, r.result, r.error) {
            (true, Some(v), _) => Ok(v),
            (_, _, Some(e)) => Err(format!("{:?}: {}", e.code, e.message)),
            _ => Err("reply without result or error".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::cgroup::Root;
    use crate::protocol::HelloReply;

    /// An in-process agent over TLS with one fake v2 container `web`; its address.
    async fn tls_agent(
        dir: &std::path::Path,
        files: &crate::tls::BundleFiles,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        std::fs::write(dir.join("cgroup.controllers"), "cpu\n").unwrap();
        std::fs::create_dir(dir.join("web")).unwrap();
        std::fs::write(dir.join("web/cpu.max"), "max 100000\n").unwrap();
        std::fs::write(dir.join("web/cpu.stat"), "usage_usec 0\n").unwrap();
        let config = crate::server::Config {
            node: "n1".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics: None,
            token: "tok".into(),
            root: Root::detect(dir).unwrap(),
            journal: dir.join("journal.json"),
            timeout_s: 30.0,
            statics: BTreeMap::from([("web".to_string(), PathBuf::from("web"))]),
            kube: None,
            relist: Duration::from_secs(10),
            ceiling: 4.0,
            connections: Default::default(),
            metrics_token: None,
            tls: Some(
                crate::tls::server(&files.agent_cert, &files.agent_key, Some(&files.ca)).unwrap(),
            ),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::server::run(config, tx, async move {
            let _ = stopped.await;
        }));
        (rx.await.unwrap(), stop)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_coordinator_checks_the_agents_name_and_shows_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let files = crate::tls::generate(&["autothrottle-agent".into(), "127.0.0.1".into()], 1)
            .unwrap()
            .write(&dir.path().join("tls"))
            .unwrap();
        let (addr, _stop) = tls_agent(dir.path(), &files).await;
        let addr = addr.to_string();
        let identity = Some((
            files.coordinator_cert.as_path(),
            files.coordinator_key.as_path(),
        ));
        let t = Duration::from_secs(3);

        // By the address's own host (an IP name in the certificate) and by one shared name.
        for name in [None, Some("autothrottle-agent")] {
            let tls = crate::tls::client(&files.ca, identity, name).unwrap();
            let mut link = AgentConnection::connect(&addr, Some(&tls), t)
                .await
                .unwrap();
            let hello: HelloReply =
                serde_json::from_value(link.call("tok", &Call::Hello, t).await.unwrap()).unwrap();
            assert!(hello.containers.iter().any(|c| c == "web"), "{hello:?}");
        }
        // A name the certificate does not carry is refused at connect.
        let tls = crate::tls::client(&files.ca, identity, Some("elsewhere")).unwrap();
        let e = AgentConnection::connect(&addr, Some(&tls), t)
            .await
            .err()
            .unwrap();
        assert!(e.contains("TLS") && e.contains("certificate"), "{e}");
        // Without the client certificate the agent answers nothing.
        let tls = crate::tls::client(&files.ca, None, Some("autothrottle-agent")).unwrap();
        let r = match AgentConnection::connect(&addr, Some(&tls), t).await {
            Ok(mut link) => link.call("tok", &Call::Hello, t).await,
            Err(e) => Err(e),
        };
        assert!(r.is_err(), "{r:?}");
        // Plain TCP to a TLS agent gets no protocol reply.
        let mut plain = AgentConnection::connect(&addr, None, t).await.unwrap();
        assert!(plain.call("tok", &Call::Hello, t).await.is_err());
    }
}
