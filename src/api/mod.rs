//! The /v0 API: path -> handler table, request validation, and the translation between HTTP
//! requests and shard commands. No storage details here: handlers build a
//! [`shards::Command`], send it to the owning shard and shape its [`shards::Reply`].

pub mod auth;
mod errors;
#[cfg(test)]
mod fuzz_tests;
pub mod json;
mod metrics;
mod ops;
mod queues;
mod records;
mod routers;
pub mod streams;
mod topics;
mod watch;

use crate::http::{Handler, Request, Response};
use crate::runtime::Node;
pub use errors::ApiError;
use json::Obj;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;

pub struct Api {
    node: Rc<Node>,
}

pub type ApiResult = Result<Response, ApiError>;

/// Timing and storage figures for the `performance` block of a response.
#[derive(Default, Clone, Copy)]
pub struct Perf {
    pub wal_append_ms: Option<f64>,
    pub fsync_ms: Option<f64>,
    pub records_scanned: Option<u64>,
    pub throttle_wait_ms: Option<f64>,
}

impl From<shards::mesh::Timings> for Perf {
    fn from(t: shards::mesh::Timings) -> Self {
        Perf {
            wal_append_ms: Some(t.wal_append_ms),
            fsync_ms: Some(t.fsync_ms),
            records_scanned: None,
            throttle_wait_ms: (t.throttle_wait_ms > 0.0).then_some(t.throttle_wait_ms),
        }
    }
}

/// A shard answered with a reply of the wrong kind: a bug.
pub fn unexpected() -> ApiError {
    log::error!("unexpected reply kind from the storage engine");
    ApiError::new(500, "internal", "unexpected reply from the storage engine")
}

impl Perf {
    pub fn write(&self, o: &mut Obj<'_>, start: Instant) {
        let out = o.key("performance");
        let mut p = Obj::new(out);
        p.f64("server_total_ms", start.elapsed().as_secs_f64() * 1000.0);
        if let Some(v) = self.wal_append_ms {
            p.f64("wal_append_ms", v);
        }
        if let Some(v) = self.fsync_ms {
            p.f64("fsync_ms", v);
        }
        if let Some(v) = self.records_scanned {
            p.u64("records_scanned", v);
        }
        if let Some(v) = self.throttle_wait_ms {
            p.f64("throttle_wait_ms", v);
        }
        p.end();
    }
}

pub fn json_response(status: u16, body: Vec<u8>) -> Response {
    Response {
        status,
        content_type: "application/json",
        headers: Vec::new(),
        body,
        stream: None,
    }
}

/// `^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$`
pub fn valid_topic_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 255
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

pub fn check_topic_name(name: &str) -> Result<(), ApiError> {
    if valid_topic_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "invalid topic name {:?}: 1-255 bytes of [A-Za-z0-9._:-], starting with a letter or digit",
            truncate(name, 300)
        ))
        .detail(serde_json::json!({ "topic": truncate(name, 300) })))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn allow(req: &Request, methods: &'static str) -> Result<(), ApiError> {
    if methods.split(", ").any(|m| m == req.method) {
        Ok(())
    } else {
        Err(ApiError::new(
            405,
            "method_not_allowed",
            format!("{} is not allowed on {}", req.method, req.path),
        )
        .header("allow", methods.to_string()))
    }
}

/// A body must be declared JSON; an empty body stands for `{}`.
pub fn json_body(req: &Request) -> Result<&[u8], ApiError> {
    if req.body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(b"{}");
    }
    let ct = req.header("content-type").unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/json") {
        let msg = if ct.is_empty() {
            "request body needs Content-Type: application/json".to_string()
        } else {
            format!("Content-Type {ct:?} is not application/json")
        };
        return Err(ApiError::new(415, "unsupported_media_type", msg));
    }
    Ok(&req.body)
}

/// Parses a JSON object body into `T`; any syntax or type error is `400 invalid_request`.
/// The whole body must be UTF-8 (serde_json skips ignored fields without checking them) and
/// an object (serde's derived structs would also accept an array of the fields in order).
pub fn parse<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::invalid(format!("request body is not UTF-8: {e}")))?;
    if !text.trim_start().starts_with('{') {
        return Err(ApiError::invalid("request body must be a JSON object"));
    }
    serde_json::from_str(text).map_err(|e| {
        // serde quotes the offending value; keep the message (and the answer) small.
        let mut m = format!("invalid request body: {e}");
        if m.len() > MAX_ERROR_MESSAGE {
            let mut cut = MAX_ERROR_MESSAGE;
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m.truncate(cut);
            m.push('…');
        }
        ApiError::invalid(m)
    })
}

/// Longest message of a body-parsing error.
const MAX_ERROR_MESSAGE: usize = 300;

/// Opaque list cursor: hex of the last name returned.
pub fn encode_cursor(name: &str) -> String {
    let mut s = String::with_capacity(1 + name.len() * 2);
    s.push('c');
    for b in name.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn decode_cursor(c: &str) -> Option<String> {
    let hex = c.strip_prefix('c')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// `?page_size=` (default 100, clamped to 1000) and the decoded `?cursor=`.
pub fn page(req: &Request) -> Result<(usize, Option<String>), ApiError> {
    let page_size = match req.query_param("page_size") {
        None => 100,
        Some(p) => match p.parse::<usize>() {
            Ok(0) | Err(_) => {
                return Err(ApiError::invalid(
                    "page_size must be an integer from 1 to 1000",
                ))
            }
            Ok(n) => n.min(1000),
        },
    };
    let after = match req.query_param("cursor") {
        None => None,
        Some(c) if c.is_empty() => None,
        Some(c) => Some(decode_cursor(&c).ok_or_else(|| ApiError::invalid("invalid cursor"))?),
    };
    Ok((page_size, after))
}

/// Refuses one more SSE stream past `--max-sse-connections` (`429 throttled`).
pub fn sse_slot(g: &crate::runtime::Global) -> Result<(), ApiError> {
    let open = g.sse_connections.load(std::sync::atomic::Ordering::Relaxed);
    if g.max_sse_connections > 0 && open >= g.max_sse_connections {
        return Err(ApiError::resource_cap(
            "sse_connections",
            g.max_sse_connections,
        ));
    }
    Ok(())
}

pub fn query_bool(req: &Request, name: &str, default: bool) -> Result<bool, ApiError> {
    match req.query_param(name).as_deref() {
        None => Ok(default),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(v) => Err(ApiError::invalid(format!(
            "query parameter {name} must be true or false, not {v:?}"
        ))),
    }
}

impl Api {
    pub fn new(node: Rc<Node>) -> Self {
        Api { node }
    }

    /// Runs `cmd` on the shard owning `topic`; a shard error becomes its API error.
    pub async fn ask(&self, topic: &str, cmd: shards::Command) -> Result<shards::Reply, ApiError> {
        match self.node.call_topic(topic, cmd).await {
            shards::Reply::Err(e) => Err(ApiError::from_shard(e, topic)),
            r => Ok(r),
        }
    }

    fn require_ready(&self) -> Result<(), ApiError> {
        if self.node.global.draining() {
            Err(ApiError::shutting_down())
        } else if self.node.global.ready() {
            Ok(())
        } else {
            Err(ApiError::not_ready(self.node.global.replay_progress()))
        }
    }

    /// The caller's rights; `sse_get` allows `?token=`.
    fn principal(&self, req: &Request, sse_get: bool) -> Result<auth::Principal, ApiError> {
        self.node.global.keys.authenticate(req, sse_get)
    }

    async fn route(&self, req: Request, start: Instant) -> ApiResult {
        use auth::{ADMIN, DELETE, READ, WRITE};
        let path = req.path.as_str();
        let sse_get = req.method == "GET"
            && (path.starts_with("/v0/watch/")
                || path.ends_with("/work")
                || (path.starts_with(streams::PATH_PREFIX)
                    && req.query_param("live").as_deref() == Some("sse")));
        let probe = matches!(path, "/v0/health" | "/healthz" | "/v0/ready" | "/readyz");
        // A CORS preflight carries no credentials.
        let preflight = req.method == "OPTIONS" && path.starts_with(streams::PATH_PREFIX);
        let who = if (probe && !self.node.global.probe_auth) || preflight {
            auth::Principal::anyone()
        } else {
            self.principal(&req, sse_get)?
        };
        if let Some(name) = path.strip_prefix(streams::PATH_PREFIX) {
            // Durable Streams: names are checked against the key's prefixes without `/v1/stream/`.
            if req.method != "OPTIONS" {
                let need = match req.method.as_str() {
                    "GET" | "HEAD" => READ,
                    "DELETE" => DELETE,
                    _ => WRITE,
                };
                who.require(need, &[name])?;
                // A fork reads its source: the key must be allowed to read that too.
                if let Some(src) = req.header("stream-forked-from") {
                    let src = src.trim();
                    let src = src.strip_prefix(streams::PATH_PREFIX).unwrap_or(src);
                    who.require(READ, &[src.strip_prefix('/').unwrap_or(src)])?;
                }
                self.require_ready()?;
            }
            return Ok(streams::handle(self, &req, start).await);
        }
        match path {
            "/v0/health" | "/healthz" => {
                allow(&req, "GET")?;
                Ok(ops::health(&self.node))
            }
            "/v0/ready" | "/readyz" => {
                allow(&req, "GET")?;
                ops::ready(&self.node).await
            }
            "/v0/metrics" => {
                allow(&req, "GET")?;
                who.require(READ, &[])?;
                metrics::metrics(self, &req).await
            }
            "/v0/topics" => {
                allow(&req, "GET")?;
                who.require(READ, &[])?;
                self.require_ready()?;
                topics::list(self, &req, start, &who).await
            }
            "/v0/watch" => {
                allow(&req, "POST")?;
                who.require(READ, &[])?;
                // The watched topics must all be inside the key's prefixes.
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&req.body) {
                    if let Some(m) = v.get("topics").and_then(|t| t.as_object()) {
                        let names: Vec<&str> = m.keys().map(String::as_str).collect();
                        who.require(READ, &names)?;
                    }
                }
                self.require_ready()?;
                watch::create(self, &req, start, &who).await
            }
            _ if path.starts_with("/v0/watch/") => {
                let wid = &path["/v0/watch/".len()..];
                if wid.is_empty() || wid.contains('/') {
                    return Err(ApiError::route_not_found(path));
                }
                allow(&req, "GET")?;
                who.require(READ, &[])?;
                self.require_ready()?;
                watch::open(self, wid.to_string(), &req, &who).await
            }
            "/v0/routers" => {
                allow(&req, "GET")?;
                who.require(READ, &[])?;
                self.require_ready()?;
                routers::list(self, &req, start, &who).await
            }
            _ if path.starts_with("/v0/routers/") => {
                let name = &path["/v0/routers/".len()..];
                if name.is_empty() || name.contains('/') {
                    return Err(ApiError::route_not_found(path));
                }
                allow(&req, "GET, PUT, DELETE")?;
                match req.method.as_str() {
                    "GET" => who.require(READ, &[])?,
                    "PUT" => {
                        who.require(ADMIN, &[])?;
                        // Source and dest must be inside the key's prefixes.
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&req.body) {
                            let names: Vec<&str> = ["source", "dest"]
                                .iter()
                                .filter_map(|k| v.get(*k).and_then(|x| x.as_str()))
                                .collect();
                            who.require(ADMIN, &names)?;
                        }
                    }
                    _ => who.require(DELETE, &[])?,
                }
                self.require_ready()?;
                routers::check_router_name(name)?;
                let name = name.to_string();
                match req.method.as_str() {
                    "GET" => routers::get(self, name, start, &who).await,
                    "PUT" => routers::put(self, name, &req, start).await,
                    _ => routers::delete(self, name, start, &who).await,
                }
            }
            _ => {
                let Some(rest) = path.strip_prefix("/v0/topics/") else {
                    return Err(ApiError::route_not_found(path));
                };
                let (name, action) = match rest.split_once('/') {
                    Some((n, a)) => (n, Some(a)),
                    None => (rest, None),
                };
                if name.is_empty() {
                    return Err(ApiError::route_not_found(path));
                }
                match action {
                    None => allow(&req, "GET, PUT, POST, DELETE")?,
                    Some("diff") | Some("delete") | Some("claim") | Some("ack") | Some("nack")
                    | Some("extend") => allow(&req, "POST")?,
                    Some("work") => allow(&req, "GET")?,
                    Some(_) => return Err(ApiError::route_not_found(path)),
                }
                let need = match (action, req.method.as_str()) {
                    (None, "GET") | (Some("diff"), _) => READ,
                    (None, "PUT") => ADMIN,
                    (None, "DELETE") | (Some("delete"), _) => DELETE,
                    (Some("claim"), _) | (Some("work"), _) => READ | WRITE,
                    _ => WRITE,
                };
                who.require(need, &[name])?;
                self.require_ready()?;
                check_topic_name(name)?;
                let name = name.to_string();
                match (action, req.method.as_str()) {
                    (None, "GET") => topics::get(self, name, &req, start).await,
                    (None, "PUT") => topics::put(self, name, &req, start).await,
                    (None, "DELETE") => topics::delete(self, name, &req, start).await,
                    (None, _) => records::append(self, name, &req, start).await,
                    (Some("diff"), _) => records::diff(self, name, &req, start).await,
                    (Some("claim"), _) => queues::claim(self, name, &req, start).await,
                    (Some("ack"), _) => {
                        queues::act(self, name, queues::Verb::Ack, &req, start).await
                    }
                    (Some("nack"), _) => {
                        queues::act(self, name, queues::Verb::Nack, &req, start).await
                    }
                    (Some("extend"), _) => {
                        queues::act(self, name, queues::Verb::Extend, &req, start).await
                    }
                    (Some("work"), _) => queues::work(self, name, &req).await,
                    _ => records::delete(self, name, &req, start).await,
                }
            }
        }
    }
}

/// Counts a request as in flight until dropped (also when its connection goes away).
struct InFlight<'a>(&'a std::cell::Cell<usize>);

impl<'a> InFlight<'a> {
    fn enter(c: &'a std::cell::Cell<usize>) -> Self {
        c.set(c.get() + 1);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl Handler for Api {
    fn handle(&self, req: Request) -> Pin<Box<dyn Future<Output = Response> + '_>> {
        Box::pin(async move {
            let start = Instant::now();
            let _guard = InFlight::enter(&self.node.in_flight);
            let label = metrics::route_label(&req.method, &req.path);
            let resp = match self.route(req, start).await {
                Ok(r) => r,
                Err(e) => e.into_response(start),
            };
            if let Some(shard) = self.node.local() {
                let micros = start.elapsed().as_micros() as u64;
                shard
                    .requests
                    .borrow_mut()
                    .record(label, resp.status, micros);
            }
            resp
        })
    }

    fn error(&self, status: u16, code: &'static str, message: String) -> Response {
        ApiError::new(status, code, message).into_response(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip() {
        for n in ["a", "orders:tenantA", "z.z-_"] {
            assert_eq!(decode_cursor(&encode_cursor(n)).as_deref(), Some(n));
        }
        assert!(decode_cursor("zz").is_none());
        assert!(decode_cursor("c0").is_none());
        assert!(decode_cursor("cg0").is_none());
    }

    #[test]
    fn topic_names() {
        for ok in ["a", "orders", "orders:tenantA", "a.b_c-d", &"x".repeat(255)] {
            assert!(valid_topic_name(ok), "{ok}");
        }
        for bad in ["", ".a", "-a", "a b", "a/b", "é", &"x".repeat(256), "a>b"] {
            assert!(!valid_topic_name(bad), "{bad}");
        }
    }
}
