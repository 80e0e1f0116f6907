//! Hand-rolled HTTP/1.1 server layer.
//!
//! One connection is one glommio task: [`serve_connection`] reads requests with a sans-IO
//! parser ([`parse::Parser`]), hands each to the [`Handler`] strictly in order and writes the
//! responses back, batching the answers to pipelined requests into one write. Routing, JSON
//! and content-type checks belong to the handler; this layer only frames messages and answers
//! the protocol errors it detects itself (400, 413, 431) through [`Handler::error`].

mod chunked;
mod conn;
#[cfg(test)]
mod fuzz_tests;
mod parse;
mod response;
// Streaming is API for the handlers; allowed in case a build streams nothing.
#[allow(dead_code)]
mod sse;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use conn::serve_connection;
// Part of the module's API even where the binary does not call them.
#[allow(unused_imports)]
pub use response::{status_reason, write_response};
#[allow(unused_imports)]
pub use sse::{
    sse_event, sse_event_compact, Closed, DirectWriter, SseSink, StreamBody, SSE_CONTENT_TYPE,
    SSE_HEARTBEAT, SSE_RETRY,
};

/// One parsed request, body fully read and de-chunked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `"GET"`, `"POST"`, ... exactly as sent.
    pub method: String,
    /// Raw path without the query, e.g. `"/v0/topics/orders"` (not percent-decoded).
    pub path: String,
    /// Raw query string without the `'?'`; `""` if none.
    pub query: String,
    /// Header names lower-cased, values as sent (lossy UTF-8), in arrival order.
    pub headers: Vec<(String, String)>,
    /// The de-chunked body.
    pub body: Vec<u8>,
}

// The accessors are API for the handlers; allowed in case a build uses neither.
#[allow(dead_code)]
impl Request {
    /// The first header called `name` (give the name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter called `name`, percent-decoded (`'+'` is a space).
    /// A parameter without `=` has the value `""`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key) == name).then(|| percent_decode(value))
            })
    }
}

/// Decodes `%XX` escapes and `'+'`; malformed escapes are kept literally, invalid UTF-8 is
/// replaced.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return s.to_owned();
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|&b| hex_val(b));
                let lo = bytes.get(i + 2).and_then(|&b| hex_val(b));
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One response; the HTTP layer adds `content-length`, `date` and connection management.
///
/// With `stream` set it is a streaming response instead (Server-Sent Events): the status
/// line and headers go out at once, without `content-length` and with `connection: close`,
/// `body` is ignored, and the stream closure then writes the body through an [`SseSink`]
/// until its future ends or the peer goes away; then the connection is closed. See
/// [`Response::stream`].
pub struct Response {
    pub status: u16,
    /// e.g. `"application/json"`.
    pub content_type: &'static str,
    /// Extra headers, e.g. `("allow", "GET, PUT".into())` or `("retry-after", "1".into())`.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// A streaming body; `None` for an ordinary response.
    pub stream: Option<StreamBody>,
}

// Allowed in case a build constructs no streaming response.
#[allow(dead_code)]
impl Response {
    /// A streaming response: once the head is written the connection hands an [`SseSink`]
    /// to `f`, and closes when the future `f` returns ends (or, after a grace period, once
    /// the peer has gone; the future should watch [`SseSink::closed`]).
    ///
    /// The head carries `content_type` (`text/event-stream` if empty), `cache-control:
    /// no-store` and `x-accel-buffering: no` unless `headers` set them, then `headers`,
    /// then `connection: close`. A status that cannot carry a body (1xx, 204, 304) and a
    /// `HEAD` request get the head only, and `f` is never called.
    pub fn stream<F, Fut>(
        status: u16,
        content_type: &'static str,
        headers: Vec<(&'static str, String)>,
        f: F,
    ) -> Response
    where
        F: FnOnce(SseSink) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        Response {
            status,
            content_type,
            headers,
            body: Vec::new(),
            stream: Some(Box::new(move |sink| Box::pin(f(sink)))),
        }
    }

    /// `200 text/event-stream` streaming through `f`: [`Response::stream`] without extra
    /// headers.
    pub fn sse<F, Fut>(f: F) -> Response
    where
        F: FnOnce(SseSink) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        Response::stream(200, sse::SSE_CONTENT_TYPE, Vec::new(), f)
    }
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("stream", &self.stream.as_ref().map(|_| "<stream>"))
            .finish()
    }
}

/// The application: answers requests, and shapes the errors the HTTP layer detects.
pub trait Handler {
    /// Answer one request. Runs on the connection's executor.
    fn handle(&self, req: Request) -> Pin<Box<dyn Future<Output = Response> + '_>>;
    /// Build the JSON error response for errors the HTTP layer detects itself.
    fn error(&self, status: u16, code: &'static str, message: String) -> Response;
}

/// Per-connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line + headers, in bytes (431 above it).
    pub max_head_bytes: usize,
    /// Request body after de-chunking, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// How long a request may take to arrive (head: from the end of the previous request;
    /// body: between two reads). Zero disables the timeout.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(query: &str) -> Request {
        Request {
            method: "GET".into(),
            path: "/".into(),
            query: query.into(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-a".into(), "1".into()),
                ("x-a".into(), "2".into()),
            ],
            body: Vec::new(),
        }
    }

    #[test]
    fn header_lookup() {
        let r = req("");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.header("x-a"), Some("1"));
        assert_eq!(r.header("x-b"), None);
    }

    #[test]
    fn query_params() {
        let r = req("prefix=ord%2Fers&page_size=10&flag&touch=false&q=a+b%20c&bad=%zz%4&&x=");
        assert_eq!(r.query_param("prefix").as_deref(), Some("ord/ers"));
        assert_eq!(r.query_param("page_size").as_deref(), Some("10"));
        assert_eq!(r.query_param("flag").as_deref(), Some(""));
        assert_eq!(r.query_param("touch").as_deref(), Some("false"));
        assert_eq!(r.query_param("q").as_deref(), Some("a b c"));
        assert_eq!(r.query_param("bad").as_deref(), Some("%zz%4"));
        assert_eq!(r.query_param("x").as_deref(), Some(""));
        assert_eq!(r.query_param("missing"), None);
        assert_eq!(req("").query_param("a"), None);
        assert_eq!(req("a=1&a=2").query_param("a").as_deref(), Some("1"));
        assert_eq!(req("na%6De=v").query_param("name").as_deref(), Some("v"));
        assert_eq!(
            req("u=%C3%A9%FF").query_param("u").as_deref(),
            Some("é\u{fffd}")
        );
        assert_eq!(req("t=%").query_param("t").as_deref(), Some("%"));
    }

    #[test]
    fn default_limits() {
        let l = Limits::default();
        assert_eq!(l.max_head_bytes, 16384);
        assert_eq!(l.max_body_bytes, 64 << 20);
        assert_eq!(l.idle_timeout, Duration::from_secs(60));
    }
}
