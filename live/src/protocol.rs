//! The coordinator <-> agent protocol, version 1.
//!
//! JSON, one message per line, over TCP or TLS over TCP ([`crate::tls`]). Every request carries the protocol version, an id the
//! reply echoes, the shared token, a method and its parameters:
//!
//! ```json
//! {"v":1,"id":7,"token":"s3cret","method":"start","params":{"scalers":{"web":{"kind":"captain","target":0.1,"initial_limit":4.0}}}}
//! {"v":1,"id":7,"ok":true,"result":{"controlling":["web"]}}
//! ```
//!
//! | method | params | result |
//! |---|---|---|
//! | `hello` | none | [`HelloReply`] `{node, version, containers, controlling, fault, lost}`: what the agent can control, what it controls now, and why control last ended (if it did) |
//! | `start` | `{scalers: {container: ScalerConfig}, bursts?: {container: {"fraction": f} or {"micros": us}}}` | [`StartReply`] `{controlling: [names]}`; containers not named are left alone; a burst is refused where the kernel has none |
//! | `update_targets` | `{targets: {container: target}}` | [`UpdateReply`] `{updated: n}` |
//! | `stats` | none | [`StatsReply`] `{now, containers: {name: {limit, target, rows: [StatRow], dropped}}, fault, lost: {name: why}}`: per-second rows since the last `stats`; `now` and each row's `t` are seconds on the agent's clock; `target` is null for a fixed limit |
//! | `stop` | none | [`StopReply`] `{restored: [names]}`: original limits are back |
//!
//! Errors come back as `{"v":1,"id":7,"ok":false,"error":{"code":"...","message":"..."}}` with
//! codes `malformed`, `too_large`, `bad_version`, `bad_token`, `unknown_method`,
//! `unknown_container`, `bad_target`, `bad_config`, `fault`. A request that fails validation
//! changes nothing. A bad token or an oversized message also closes the connection.

use std::collections::BTreeMap;

use controller::ScalerConfig;

use crate::cgroup::Burst;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
/// Longest accepted message, bytes (a start for hundreds of containers fits easily).
pub const MAX_MESSAGE: usize = 1 << 20;

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    pub token: String,
    pub call: Call,
}

/// What the coordinator asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum Call {
    Hello,
    Start {
        scalers: BTreeMap<String, ScalerConfig>,
        /// CFS bursts, by container (each must be in `scalers`); a container left out keeps
        /// the burst it had when the agent opened it.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        bursts: BTreeMap<String, Burst>,
    },
    UpdateTargets {
        targets: BTreeMap<String, f64>,
    },
    Stats,
    Stop,
}

const METHODS: [&str; 5] = ["hello", "start", "update_targets", "stats", "stop"];

/// One second of one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatRow {
    /// Seconds since the agent started, at the end of the second.
    pub t: f64,
    /// Limit at the end of the second, cores.
    pub limit: f64,
    /// Time-weighted mean of the limits in force during the second, cores (what allocation
    /// is made of).
    #[serde(default)]
    pub mean_limit: f64,
    /// Cores used during the second.
    pub usage: f64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
}

/// The reply to `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloReply {
    pub node: String,
    pub version: u32,
    /// Every container the agent can control.
    pub containers: Vec<String>,
    /// Those it controls now.
    pub controlling: Vec<String>,
    /// Why control last ended, if it ended on a fault.
    #[serde(default)]
    pub fault: Option<String>,
    /// Containers whose control ended on their own fault (an unreadable or unwritable group,
    /// a limit the journal could not record), and why.
    #[serde(default)]
    pub lost: BTreeMap<String, String>,
}

/// The reply to `start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartReply {
    pub controlling: Vec<String>,
}

/// The reply to `update_targets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateReply {
    pub updated: usize,
}

/// One container in a `stats` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// The limit now, cores; `None` for no limit.
    pub limit: Option<f64>,
    /// The scaler's target; `None` for a fixed limit.
    pub target: Option<f64>,
    /// The seconds completed since the last `stats`.
    pub rows: Vec<StatRow>,
    /// Rows dropped since the last `stats` because nobody asked for them in time.
    pub dropped: u64,
}

/// The reply to `stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// The agent's clock, seconds since it started.
    pub now: f64,
    pub containers: BTreeMap<String, ContainerStats>,
    /// Set when control ended on a fault (the containers are then absent).
    #[serde(default)]
    pub fault: Option<String>,
    /// Containers no longer controlled because of their own fault, and why.
    #[serde(default)]
    pub lost: BTreeMap<String, String>,
}

/// The reply to `stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopReply {
    pub restored: Vec<String>,
}

/// Error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    Malformed,
    TooLarge,
    BadVersion,
    BadToken,
    UnknownMethod,
    UnknownContainer,
    BadTarget,
    BadConfig,
    Fault,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: Code,
    pub message: String,
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub id: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    /// A successful reply carrying one of the reply types above.
    pub fn ok(id: u64, result: impl Serialize) -> Self {
        Response {
            v: VERSION,
            id,
            ok: true,
            result: Some(serde_json::to_value(result).expect("reply types serialise")),
            error: None,
        }
    }

    /// The result as the reply type `T`, for the side that reads it.
    pub fn result_as<T: for<'de> Deserialize<'de>>(&self) -> Result<T, String> {
        let v = self.result.clone().ok_or("the reply has no result")?;
        serde_json::from_value(v).map_err(|e| format!("unexpected reply: {e}"))
    }

    pub fn err(id: u64, code: Code, message: impl Into<String>) -> Self {
        Response {
            v: VERSION,
            id,
            ok: false,
            result: None,
            error: Some(ErrorBody {
                code,
                message: message.into(),
            }),
        }
    }

    pub fn code(&self) -> Option<Code> {
        self.error.as_ref().map(|e| e.code)
    }
}

/// Parses one line from a peer that should hold `token`, or the error reply it deserves. The
/// token is checked before anything else, so an unauthenticated peer learns nothing about the
/// protocol (every one of its lines gets `bad_token`, without an id). Ids are non-negative
/// integers, echoed in errors once the token has been checked.
pub fn parse(line: &[u8], token: &str) -> Result<Request, Response> {
    if line.len() > MAX_MESSAGE {
        return Err(Response::err(
            0,
            Code::TooLarge,
            format!("message over {MAX_MESSAGE} bytes"),
        ));
    }
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| Response::err(0, Code::Malformed, format!("not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| Response::err(0, Code::Malformed, "a request is a JSON object"))?;
    let given = obj.get("token").and_then(Value::as_str).unwrap_or("");
    if !token_matches(given, token) {
        return Err(Response::err(0, Code::BadToken, "bad or missing token"));
    }
    let id = match obj.get("id") {
        None => return Err(Response::err(0, Code::Malformed, "missing \"id\"")),
        Some(v) => v.as_u64().ok_or_else(|| {
            Response::err(
                0,
                Code::Malformed,
                format!("\"id\" must be a non-negative integer, got {v}"),
            )
        })?,
    };
    let v = obj
        .get("v")
        .and_then(Value::as_u64)
        .ok_or_else(|| Response::err(id, Code::Malformed, "missing protocol version \"v\""))?;
    if v != VERSION as u64 {
        return Err(Response::err(
            id,
            Code::BadVersion,
            format!("protocol version {v}; this agent speaks {VERSION}"),
        ));
    }
    let method = obj
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| Response::err(id, Code::Malformed, "missing \"method\""))?;
    if !METHODS.contains(&method) {
        return Err(Response::err(
            id,
            Code::UnknownMethod,
            format!("unknown method '{method}' (known: {})", METHODS.join(", ")),
        ));
    }
    let mut call_value = serde_json::Map::new();
    call_value.insert("method".into(), Value::String(method.to_string()));
    if let Some(p) = obj.get("params") {
        call_value.insert("params".into(), p.clone());
    }
    let call: Call = serde_json::from_value(Value::Object(call_value))
        .map_err(|e| Response::err(id, Code::Malformed, format!("bad params for {method}: {e}")))?;
    Ok(Request {
        id,
        token: given.to_string(),
        call,
    })
}

/// Whether a line is a JSON object carrying `token` (whatever else is wrong with it).
pub fn carries_token(line: &[u8], token: &str) -> bool {
    serde_json::from_slice::<Value>(line).is_ok_and(|v| {
        v.get("token")
            .and_then(Value::as_str)
            .is_some_and(|t| token_matches(t, token))
    })
}

/// A request line, as the coordinator sends it.
pub fn encode(id: u64, token: &str, call: &Call) -> String {
    let mut v = serde_json::to_value(call).expect("calls serialize");
    let obj = v.as_object_mut().expect("tagged enum is an object");
    obj.insert("v".into(), VERSION.into());
    obj.insert("id".into(), id.into());
    obj.insert("token".into(), token.into());
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// Compares tokens without stopping at the first difference.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0 && !expected.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let call = Call::UpdateTargets {
            targets: [("web".to_string(), 0.1)].into(),
        };
        let line = encode(3, "tok", &call);
        let r = parse(line.trim_end().as_bytes(), "tok").unwrap();
        assert_eq!(
            r,
            Request {
                id: 3,
                token: "tok".into(),
                call
            }
        );
        let hello = parse(br#"{"v":1,"id":1,"token":"t","method":"hello"}"#, "t").unwrap();
        assert_eq!(hello.call, Call::Hello);
    }

    #[test]
    fn errors_have_codes() {
        let code = |s: &[u8]| parse(s, "t").unwrap_err().code().unwrap();
        assert_eq!(code(b"{nope"), Code::Malformed);
        assert_eq!(code(b"[1,2]"), Code::Malformed);
        assert_eq!(
            code(br#"{"v":2,"id":1,"token":"t","method":"hello"}"#),
            Code::BadVersion
        );
        assert_eq!(code(br#"{"v":1,"id":1,"method":"hello"}"#), Code::BadToken);
        assert_eq!(
            code(br#"{"v":1,"id":1,"token":"t","method":"reboot"}"#),
            Code::UnknownMethod
        );
        assert_eq!(code(br#"{"v":1,"id":1,"token":"t","method":"start","params":{"scalers":{"a":{"kind":"magic"}}}}"#), Code::Malformed);
        assert_eq!(
            code(br#"{"v":1,"token":"t","method":"hello"}"#),
            Code::Malformed
        );
        let big = vec![b' '; MAX_MESSAGE + 1];
        assert_eq!(code(&big), Code::TooLarge);
        // The id is echoed when it could be read, once the token is right.
        assert_eq!(
            parse(br#"{"v":1,"id":9,"token":"t","method":"x"}"#, "t")
                .unwrap_err()
                .id,
            9
        );
    }

    #[test]
    fn the_token_comes_first() {
        // Without the token nothing else is looked at: no version, method or id is revealed.
        for line in [
            &br#"{"v":1,"id":1,"method":"hello"}"#[..],
            br#"{"v":2,"id":4,"token":"x","method":"hello"}"#,
            br#"{"v":1,"id":5,"token":"x","method":"reboot"}"#,
            br#"{"token":"x"}"#,
        ] {
            let e = parse(line, "t").unwrap_err();
            assert_eq!((e.code(), e.id), (Some(Code::BadToken), 0), "{line:?}");
        }
    }

    #[test]
    fn ids_are_non_negative_integers() {
        for id in ["\"7\"", "-3", "1.5", "null"] {
            let line = format!(r#"{{"v":1,"id":{id},"token":"t","method":"hello"}}"#);
            let e = parse(line.as_bytes(), "t").unwrap_err();
            assert_eq!(e.code(), Some(Code::Malformed), "{id}");
            assert!(
                e.error.unwrap().message.contains("non-negative integer"),
                "{id}"
            );
        }
    }

    #[test]
    fn tokens() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("", ""));
    }
}
