//! Stub HTTP servers of the paper's three apps: each checks every request against the real
//! app's API (method, path, parameters, body shape; for train-ticket, tokens and ids it issued
//! and the order they are used in), counts what it saw, and answers as the app would in shape.
//! These are written from the apps' APIs, not from this project's templates, so a template
//! that drifts from the API shows up as malformed requests.
//!
//! With a [`Forward`], every request also runs its request type's calls on a `live demo` of
//! the same scenario (its root service's `/call/<type>/0`), so the CPU it costs is burnt in
//! the demo's cgroups, where an agent controls it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    Hotel,
    Social,
    Train,
}

impl App {
    pub fn scenario(self) -> &'static str {
        match self {
            App::Hotel => "hotel-reservation",
            App::Social => "social-network",
            App::Train => "train-ticket",
        }
    }
}

/// Where the demo of the same scenario runs: its services listen on `base_port + index`.
#[derive(Clone)]
pub struct Forward {
    pub scenario: Arc<scenarios::Scenario>,
    pub base_port: u16,
}

/// What the stub saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Well-formed requests per request type (the scenario's names; `init:*` for set-up
    /// requests that are no request type).
    pub counts: BTreeMap<String, u64>,
    pub malformed: u64,
    /// The first few reasons a request was malformed.
    pub problems: Vec<String>,
}

impl Report {
    /// Well-formed requests of the load's request types (init requests left out).
    pub fn requests(&self) -> u64 {
        self.counts
            .iter()
            .filter(|(k, _)| !k.starts_with("init:"))
            .map(|(_, v)| v)
            .sum()
    }

    /// Share of each request type among the well-formed ones, init requests left out.
    pub fn shares(&self) -> BTreeMap<String, f64> {
        let total = self.requests();
        self.counts
            .iter()
            .filter(|(k, _)| !k.starts_with("init:"))
            .map(|(k, v)| (k.clone(), *v as f64 / total.max(1) as f64))
            .collect()
    }
}

/// train-ticket's state: what it issued.
#[derive(Default)]
struct Train {
    admin_tokens: HashSet<String>,
    /// username -> user id
    users: HashMap<String, String>,
    /// token -> user id
    tokens: HashMap<String, String>,
    /// user id -> contact id
    contacts: HashMap<String, String>,
    /// (token, contact id) pairs a contacts answer gave out
    contacts_seen: HashSet<(String, String)>,
    next: u64,
}

struct State {
    app: App,
    report: Mutex<Report>,
    train: Mutex<Train>,
    forward: Option<Forward>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// A running stub; stops with the test process.
pub struct Stub {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Stub {
    pub fn report(&self) -> Report {
        self.state.report.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts a stub of `app` on a free loopback port, on its own thread.
pub fn start(app: App, forward: Option<Forward>) -> Stub {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State {
        app,
        report: Mutex::new(Report::default()),
        train: Mutex::new(Train::default()),
        forward,
        client: Client::builder(TokioExecutor::new()).build_http(),
    });
    let served = state.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = served.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.serve(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    Stub { addr, state }
}

/// A request as the checks see it.
struct Seen {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    authorization: Option<String>,
    body: Bytes,
}

type Answer = Result<(String, Value), String>;

impl State {
    async fn serve(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let seen = Seen {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
            content_type: header("content-type").unwrap_or_default(),
            authorization: header("authorization"),
            body,
        };
        let answer = match self.app {
            App::Hotel => hotel(&seen),
            App::Social => social(&seen),
            App::Train => self.train(&seen),
        };
        match answer {
            Ok((kind, value)) => {
                *self
                    .report
                    .lock()
                    .unwrap()
                    .counts
                    .entry(kind.clone())
                    .or_default() += 1;
                if let Err(e) = self.forward(&kind).await {
                    return reply(StatusCode::BAD_GATEWAY, json!({ "error": e }));
                }
                reply(StatusCode::OK, value)
            }
            Err(problem) => {
                let mut r = self.report.lock().unwrap();
                r.malformed += 1;
                if r.problems.len() < 20 {
                    r.problems
                        .push(format!("{} {}: {problem}", seen.method, seen.path));
                }
                reply(
                    StatusCode::BAD_REQUEST,
                    json!({ "status": 0, "msg": problem }),
                )
            }
        }
    }

    /// Runs the request type's calls on the demo, if there is one.
    async fn forward(&self, kind: &str) -> Result<(), String> {
        let Some(f) = &self.forward else {
            return Ok(());
        };
        // A post goes to one of the three media-filter replicas, at random (as a Service does).
        let kind = if kind == "compose-post" {
            format!("compose-post-{}", rand::random_range(1..=3))
        } else {
            kind.to_string()
        };
        let Some(r) = f.scenario.requests.iter().position(|r| r.name == kind) else {
            return Ok(()); // init requests burn nothing
        };
        let port = f.base_port + f.scenario.requests[r].nodes[0].service as u16;
        let req = Request::get(format!("http://127.0.0.1:{port}/call/{r}/0"))
            .header(live::demo::SEED_HEADER, rand::random::<u64>().to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("demo answered {status}"))
        }
    }

    fn train(&self, s: &Seen) -> Answer {
        let mut t = self.train.lock().unwrap();
        let ok =
            |kind: &str, data: Value| Ok((kind.to_string(), json!({ "status": 1, "data": data })));
        let body = || -> Result<Value, String> {
            if !s.content_type.starts_with("application/json") {
                return Err(format!("content type {:?}, not JSON", s.content_type));
            }
            serde_json::from_slice(&s.body).map_err(|e| format!("body is not JSON: {e}"))
        };
        let bearer = |s: &Seen| {
            s.authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(str::to_string)
                .ok_or_else(|| "no bearer token".to_string())
        };
        // The user a request is made for: its token must be one a login issued.
        let user = |t: &Train| -> Result<(String, String), String> {
            let token = bearer(s)?;
            let id = t
                .tokens
                .get(&token)
                .cloned()
                .ok_or_else(|| format!("token {token:?} was never issued by a login"))?;
            Ok((token, id))
        };
        match (s.method.as_str(), s.path.as_str()) {
            ("POST", "/api/v1/users/login") => {
                let b = body()?;
                keys(&b, &["username", "password"])?;
                let (name, pw) = (str_of(&b, "username")?, str_of(&b, "password")?);
                if name == "admin" && pw == "222222" {
                    t.next += 1;
                    let token = format!("admin-{}", t.next);
                    t.admin_tokens.insert(token.clone());
                    return ok(
                        "init:admin-login",
                        json!({ "token": token, "userId": "admin" }),
                    );
                }
                let id = t
                    .users
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("login of {name:?}, a user nobody created"))?;
                if pw != "12345678" {
                    return Err("wrong password".into());
                }
                t.next += 1;
                let token = format!("user-{}", t.next);
                t.tokens.insert(token.clone(), id.clone());
                ok(
                    "login",
                    json!({ "token": token, "userId": id, "username": name }),
                )
            }
            ("POST", "/api/v1/adminuserservice/users") => {
                if !t.admin_tokens.contains(&bearer(s)?) {
                    return Err("creating a user without the admin's token".into());
                }
                let b = body()?;
                keys(
                    &b,
                    &[
                        "documentNum",
                        "documentType",
                        "email",
                        "gender",
                        "password",
                        "userName",
                    ],
                )?;
                let name = str_of(&b, "userName")?.to_string();
                if name.len() != 36 {
                    return Err(format!("user name {name:?} is not a UUID"));
                }
                t.next += 1;
                let id = format!("4d2a46c7-71cb-4cf1-b5bb-{:012}", t.next);
                t.users.insert(name, id.clone());
                ok("init:create-user", json!({ "userId": id }))
            }
            ("POST", "/api/v1/contactservice/contacts/admin") => {
                if !t.admin_tokens.contains(&bearer(s)?) {
                    return Err("creating a contact without the admin's token".into());
                }
                let b = body()?;
                keys(
                    &b,
                    &[
                        "accountId",
                        "name",
                        "documentType",
                        "documentNumber",
                        "phoneNumber",
                    ],
                )?;
                let account = str_of(&b, "accountId")?.to_string();
                let name = str_of(&b, "name")?;
                if t.users.get(name) != Some(&account) {
                    return Err("a contact for an account that is not that user's".into());
                }
                t.next += 1;
                let id = format!("contact-{}", t.next);
                t.contacts.insert(account, id.clone());
                ok("init:create-contact", json!({ "id": id }))
            }
            ("GET", "/index.html") => {
                user(&t)?;
                Ok(("home".into(), json!("<html></html>")))
            }
            ("POST", "/api/v1/travelservice/trips/left") => {
                user(&t)?;
                let b = body()?;
                keys(&b, &["startingPlace", "endPlace", "departureTime"])?;
                future_date(str_of(&b, "departureTime")?)?;
                match (str_of(&b, "startingPlace")?, str_of(&b, "endPlace")?) {
                    ("Shang Hai", "Su Zhou") => ok("search-departure", json!([])),
                    ("Su Zhou", "Shang Hai") => ok("search-return", json!([])),
                    other => Err(format!("a trip {other:?}")),
                }
            }
            ("GET", "/api/v1/assuranceservice/assurances/types") => {
                user(&t)?;
                ok(
                    "assurance-types",
                    json!([{ "index": 1, "name": "Traffic Accident Assurance", "price": 3.0 }]),
                )
            }
            ("GET", p) if p.starts_with("/api/v1/foodservice/foods/") => {
                user(&t)?;
                let rest = &p["/api/v1/foodservice/foods/".len()..];
                let (date, route) = rest.split_once('/').ok_or("no date")?;
                future_date(date)?;
                if route != "Shang%20Hai/Su%20Zhou/D1345" {
                    return Err(format!("food for route {route:?}"));
                }
                ok("get-food", json!({ "trainFoodList": [] }))
            }
            ("GET", p) if p.starts_with("/api/v1/contactservice/contacts/account/") => {
                let (token, id) = user(&t)?;
                let account = &p["/api/v1/contactservice/contacts/account/".len()..];
                if account != id {
                    return Err(format!("contacts of {account:?} with the token of {id:?}"));
                }
                let contact = t
                    .contacts
                    .get(&id)
                    .cloned()
                    .ok_or("a user without contacts")?;
                t.contacts_seen.insert((token, contact.clone()));
                ok("contacts", json!([{ "id": contact, "accountId": id }]))
            }
            ("POST", "/api/v1/preserveservice/preserve") => {
                let (token, id) = user(&t)?;
                let b = body()?;
                keys(
                    &b,
                    &[
                        "accountId",
                        "contactsId",
                        "tripId",
                        "seatType",
                        "date",
                        "from",
                        "to",
                        "assurance",
                        "foodType",
                        "foodName",
                        "foodPrice",
                        "stationName",
                        "storeName",
                    ],
                )?;
                if str_of(&b, "accountId")? != id {
                    return Err("booking for another account than the token's".into());
                }
                let contact = str_of(&b, "contactsId")?.to_string();
                if !t.contacts_seen.contains(&(token, contact.clone())) {
                    return Err(format!(
                        "contact {contact:?} was not given to this user by a contacts answer first"
                    ));
                }
                future_date(str_of(&b, "date")?)?;
                if str_of(&b, "tripId")? != "D1345" || b["foodPrice"] != json!(2.5) {
                    return Err("not the trip or the food the script books".into());
                }
                ok("preserve", json!("Success"))
            }
            (m, p) => Err(format!("no such endpoint {m} {p}")),
        }
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The JSON object has exactly these keys.
fn keys(v: &Value, expected: &[&str]) -> Result<(), String> {
    let obj = v.as_object().ok_or("body is not a JSON object")?;
    exactly(obj.keys(), expected, "body keys")
}

/// The names given are exactly `expected`, in any order.
fn exactly<'a>(
    got: impl Iterator<Item = &'a String>,
    expected: &[&str],
    what: &str,
) -> Result<(), String> {
    let got: HashSet<&str> = got.map(String::as_str).collect();
    let want: HashSet<&str> = expected.iter().copied().collect();
    if got != want {
        return Err(format!("{what} {got:?}, expected {want:?}"));
    }
    Ok(())
}

fn str_of<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
    v[key]
        .as_str()
        .ok_or_else(|| format!("{key} is not a string"))
}

/// `YYYY-MM-DD`, 1 to 150 days from today (a day of slack each side for midnight).
fn future_date(d: &str) -> Result<(), String> {
    let bad = || format!("bad date {d:?}");
    let parts: Vec<&str> = d.split('-').collect();
    let [y, m, day] = parts[..] else {
        return Err(bad());
    };
    if (y.len(), m.len(), day.len()) != (4, 2, 2) {
        return Err(bad());
    }
    let month = m
        .parse::<u8>()
        .ok()
        .and_then(|m| time::Month::try_from(m).ok());
    let date = match (y.parse::<i32>(), month, day.parse::<u8>()) {
        (Ok(y), Some(m), Ok(day)) => {
            time::Date::from_calendar_date(y, m, day).map_err(|_| bad())?
        }
        _ => return Err(bad()),
    };
    let days = (date - time::OffsetDateTime::now_utc().date()).whole_days();
    if !(0..=151).contains(&days) {
        return Err(format!("date {d} is {days} days away"));
    }
    Ok(())
}

/// The query has exactly these parameters.
fn params(s: &Seen, expected: &[&str]) -> Result<(), String> {
    exactly(s.query.keys(), expected, "parameters")
}

fn int_in(s: &str, lo: i64, hi: i64, what: &str) -> Result<i64, String> {
    let v: i64 = s
        .parse()
        .map_err(|_| format!("{what} {s:?} is not an integer"))?;
    if !(lo..=hi).contains(&v) {
        return Err(format!("{what} {v} not in {lo}..={hi}"));
    }
    Ok(v)
}

fn float_in(s: &str, lo: f64, hi: f64, what: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{what} {s:?} is not a number"))?;
    if !(lo..=hi).contains(&v) {
        return Err(format!("{what} {v} not in {lo}..{hi}"));
    }
    Ok(v)
}

/// A day of April 2015, as the hotel app's data has them.
fn april(s: &str) -> Result<i64, String> {
    let day = s
        .strip_prefix("2015-04-")
        .filter(|d| d.len() == 2)
        .ok_or_else(|| format!("date {s:?} is not 2015-04-DD"))?;
    int_in(day, 1, 30, "day")
}

/// A user of the hotel app's database: Cornell_N with N ten times as the password.
fn hotel_user(name: &str, password: &str) -> Result<(), String> {
    let n = name
        .strip_prefix("Cornell_")
        .ok_or_else(|| format!("user {name:?}"))?;
    int_in(n, 0, 500, "user number")?;
    if password != n.repeat(10) {
        return Err(format!("password {password:?} of {name}"));
    }
    Ok(())
}

fn hotel(s: &Seen) -> Answer {
    let q = |k: &str| s.query.get(k).map(String::as_str).unwrap_or("");
    let place = || -> Result<(), String> {
        float_in(q("lat"), 37.78, 38.27, "lat")?;
        float_in(q("lon"), -122.26, -121.92, "lon")?;
        Ok(())
    };
    let ok = |kind: &str| {
        Ok((
            kind.to_string(),
            json!({ "type": "FeatureCollection", "features": [] }),
        ))
    };
    match (s.method.as_str(), s.path.as_str()) {
        ("GET", "/hotels") => {
            params(s, &["inDate", "outDate", "lat", "lon"])?;
            let (i, o) = (april(q("inDate"))?, april(q("outDate"))?);
            if !(9..=23).contains(&i) || o <= i || o > 24 {
                return Err(format!("stay {i}..{o}"));
            }
            place()?;
            ok("search")
        }
        ("GET", "/recommendations") => {
            params(s, &["require", "lat", "lon"])?;
            if !["dis", "rate", "price"].contains(&q("require")) {
                return Err(format!("require={}", q("require")));
            }
            place()?;
            ok("recommend")
        }
        ("GET", "/user") => {
            params(s, &["username", "password"])?;
            hotel_user(q("username"), q("password"))?;
            Ok(("login".into(), json!({ "message": "Login successfully!" })))
        }
        ("POST", "/reservation") => {
            params(
                s,
                &[
                    "inDate",
                    "outDate",
                    "lat",
                    "lon",
                    "hotelId",
                    "customerName",
                    "username",
                    "password",
                    "number",
                ],
            )?;
            let (i, o) = (april(q("inDate"))?, april(q("outDate"))?);
            if !(9..=23).contains(&i) || o <= i || o > i + 5 {
                return Err(format!("stay {i}..{o}"));
            }
            place()?;
            int_in(q("hotelId"), 1, 80, "hotel")?;
            hotel_user(q("username"), q("password"))?;
            if q("customerName") != q("username") || q("number") != "1" {
                return Err("customer or room count".into());
            }
            Ok((
                "reserve".into(),
                json!({ "message": "Reserve successfully!" }),
            ))
        }
        (m, p) => Err(format!("no such endpoint {m} {p}")),
    }
}

fn social(s: &Seen) -> Answer {
    match (s.method.as_str(), s.path.as_str()) {
        ("POST", "/wrk2-api/post/compose") => {
            if s.content_type != "application/x-www-form-urlencoded" {
                return Err(format!("content type {:?}, not a form", s.content_type));
            }
            let form: BTreeMap<String, String> =
                form_urlencoded::parse(&s.body).into_owned().collect();
            exactly(
                form.keys(),
                &[
                    "username",
                    "user_id",
                    "text",
                    "medium",
                    "media_types",
                    "post_type",
                ],
                "form fields",
            )?;
            let id = int_in(&form["user_id"], 1, 962, "user_id")?;
            if form["username"] != format!("username_{id}") || form["post_type"] != "0" {
                return Err("username or post type".into());
            }
            let text = &form["text"];
            let mentions: Vec<&str> = text.split("@username_").skip(1).collect();
            if mentions.len() != 5 {
                return Err(format!("{} mentions", mentions.len()));
            }
            for m in mentions {
                let n = m.split(' ').next().unwrap_or("");
                int_in(n, 1, 962, "mentioned user")?;
            }
            let medium: Vec<String> = serde_json::from_str(&form["medium"])
                .map_err(|e| format!("medium is not a JSON list of strings: {e}"))?;
            let types: Vec<String> = serde_json::from_str(&form["media_types"])
                .map_err(|e| format!("media_types is not a JSON list of strings: {e}"))?;
            if medium.len() != 1 || types != ["png"] {
                return Err("one PNG image expected".into());
            }
            let image = base64::engine::general_purpose::STANDARD
                .decode(&medium[0])
                .map_err(|e| format!("medium is not base64: {e}"))?;
            if !image.starts_with(b"\x89PNG\r\n\x1a\n") {
                return Err("medium is not a PNG".into());
            }
            Ok(("compose-post".into(), json!("Success")))
        }
        ("GET", p @ ("/wrk2-api/home-timeline/read" | "/wrk2-api/user-timeline/read")) => {
            params(s, &["user_id", "start", "stop"])?;
            int_in(&s.query["user_id"], 1, 962, "user_id")?;
            let start = int_in(&s.query["start"], 0, 100, "start")?;
            if int_in(&s.query["stop"], 0, 200, "stop")? != start + 10 {
                return Err("stop is not start + 10".into());
            }
            let kind = if p.contains("home") {
                "read-home-timeline"
            } else {
                "read-user-timeline"
            };
            Ok((kind.into(), json!([])))
        }
        (m, p) => Err(format!("no such endpoint {m} {p}")),
    }
}
