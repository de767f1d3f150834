//! One protocol connection to an agent: a request out, its reply back, with a deadline.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::protocol::{encode, Call, Response};

/// Longest reply read from an agent, bytes: far above any `stats` (rows of a few hundred
/// containers for a few seconds), far below what would hurt the coordinator.
const MAX_REPLY: u64 = 16 << 20;

/// One protocol connection to an agent.
pub(super) struct AgentConnection {
    stream: BufReader<TcpStream>,
    next_id: u64,
}

impl AgentConnection {
    pub(super) async fn connect(addr: &str, timeout: Duration) -> Result<AgentConnection, String> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("no answer within {:.1} s", timeout.as_secs_f64()))?
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
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
            self.stream.get_mut().write_all(line.as_bytes()).await?;
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
