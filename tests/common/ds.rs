//! Durable Streams (`/v1/stream/{name}`) helpers for the black-box tests: offsets, create /
//! append / read calls on the raw client, and a paged catch-up reader.

use std::io;
use std::time::Duration;

use super::{Client, Resp, Server};

/// The offset token of position `pos`, as the server writes it.
pub fn offset(pos: u64) -> String {
    format!("0000000000000000_{pos:016}")
}

/// The position of an offset token; panics on anything else.
pub fn pos_of(offset: &str) -> u64 {
    offset
        .strip_prefix("0000000000000000_")
        .filter(|p| p.len() == 16)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not an offset token: {offset:?}"))
}

pub fn path(name: &str) -> String {
    format!("/v1/stream/{name}")
}

/// `Stream-Next-Offset` of a response, as a position; panics (with the response) without it.
pub fn next_pos(r: &Resp) -> u64 {
    pos_of(
        r.header("stream-next-offset")
            .unwrap_or_else(|| panic!("no Stream-Next-Offset in {} {:?}", r.status, r.headers)),
    )
}

/// A header's value parsed as an integer; panics (with the response) when it is missing.
pub fn header_u64(r: &Resp, name: &str) -> u64 {
    r.header(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no integer {name} in {} {:?} {}",
                r.status,
                r.headers,
                r.text()
            )
        })
}

/// `PUT` with a content type, extra headers and an optional body; the raw response.
pub fn put(c: &mut Client, name: &str, ct: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut h = vec![("Content-Type", ct)];
    h.extend_from_slice(headers);
    c.request("PUT", &path(name), &h, Some(body))
}

/// Creates an empty stream of content type `ct`; asserts 201.
pub fn create(s: &Server, name: &str, ct: &str) {
    let r = put(&mut s.client(), name, ct, &[], b"");
    assert_eq!(r.status, 201, "PUT {name}: {} {}", r.status, r.text());
}

/// `POST` of `body` with `ct` and extra headers; the raw response (panics on I/O errors).
pub fn post(c: &mut Client, name: &str, ct: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    try_post(c, name, ct, headers, body).unwrap_or_else(|e| panic!("POST {name}: {e}"))
}

pub fn try_post(
    c: &mut Client,
    name: &str,
    ct: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Resp> {
    let mut h = vec![("Content-Type", ct)];
    h.extend_from_slice(headers);
    c.try_request("POST", &path(name), &h, Some(body))
}

/// `POST` as idempotent producer `(id, epoch, seq)`.
pub fn producer_post(
    c: &mut Client,
    name: &str,
    ct: &str,
    (id, epoch, seq): (&str, u64, u64),
    body: &[u8],
) -> Resp {
    let (e, s) = (epoch.to_string(), seq.to_string());
    post(
        c,
        name,
        ct,
        &[
            ("Producer-Id", id),
            ("Producer-Epoch", &e),
            ("Producer-Seq", &s),
        ],
        body,
    )
}

/// Appends one plain append without producer headers; asserts 204 and returns the
/// `Stream-Next-Offset` position.
pub fn append(s: &Server, name: &str, ct: &str, body: &[u8]) -> u64 {
    let r = post(&mut s.client(), name, ct, &[], body);
    assert_eq!(
        r.status,
        204,
        "POST {name} {:?}: {} {}",
        String::from_utf8_lossy(body),
        r.status,
        r.text()
    );
    next_pos(&r)
}

pub fn get(s: &Server, path_and_query: &str) -> Resp {
    s.client().request("GET", path_and_query, &[], None)
}

/// `HEAD` on its own connection (`Connection: close`): the answer is read up to the close,
/// so a `Content-Length` without a body does not stall the read. Asserts no body follows.
pub fn head(s: &Server, name: &str) -> Resp {
    let mut c = s.client();
    let bytes = c.request_bytes("HEAD", &path(name), &[("Connection", "close")], None);
    c.send_raw(&bytes)
        .unwrap_or_else(|e| panic!("HEAD {name}: {e}"));
    let (got, closed) = c.read_until_closed(Duration::from_secs(10));
    assert!(
        closed,
        "HEAD {name}: the connection stayed open after Connection: close"
    );
    let raw = String::from_utf8_lossy(&got).into_owned();
    let (head, rest) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("HEAD {name}: no complete answer: {raw:?}"));
    assert!(
        rest.is_empty(),
        "HEAD {name}: a body followed the head: {rest:?}"
    );
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("HEAD {name}: bad status line {status_line:?}"));
    let reason = parts.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        reason,
        headers,
        body: Vec::new(),
    }
}

/// One page of a catch-up read.
#[derive(Debug, Clone)]
pub struct Page {
    pub from: u64,
    pub next: u64,
    pub body: Vec<u8>,
}

/// Reads the whole stream with catch-up `GET`s from `offset=-1`, following
/// `Stream-Next-Offset` until `Stream-Up-To-Date`. Asserts each page is a 200 whose next
/// offset does not go backwards (and moves unless the page is the last).
pub fn read_pages(s: &Server, name: &str) -> Vec<Page> {
    let mut c = s.client();
    let mut pages = Vec::new();
    let mut from: Option<u64> = None;
    for _ in 0..100_000 {
        let off = from.map_or_else(|| "-1".to_string(), offset);
        let r = c.request("GET", &format!("{}?offset={off}", path(name)), &[], None);
        assert_eq!(
            r.status,
            200,
            "GET {name} at {off}: {} {}",
            r.status,
            r.text()
        );
        let next = next_pos(&r);
        let at = from.unwrap_or(0);
        assert!(next >= at, "{name}: next offset {next} went back from {at}");
        let done = r.header("stream-up-to-date") == Some("true");
        pages.push(Page {
            from: at,
            next,
            body: r.body,
        });
        if done {
            return pages;
        }
        assert!(
            next > at,
            "{name}: a read at {at} that is not up to date did not advance"
        );
        from = Some(next);
    }
    panic!("{name}: the read never got up to date");
}

/// The whole stream's bytes (a JSON stream's pages are each an array).
pub fn read_all(s: &Server, name: &str) -> Vec<u8> {
    read_pages(s, name)
        .into_iter()
        .flat_map(|p| p.body)
        .collect()
}

/// Every message of a JSON stream, in order, as the exact JSON text stored.
pub fn read_json_messages(s: &Server, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in read_pages(s, name) {
        let items: Vec<Box<serde_json::value::RawValue>> = serde_json::from_slice(&p.body)
            .unwrap_or_else(|e| {
                panic!(
                    "{name}: a JSON page is not an array ({e}): {:?}",
                    String::from_utf8_lossy(&p.body)
                )
            });
        assert_eq!(
            items.len() as u64,
            p.next - p.from,
            "{name}: a page from {} to {} holds {} messages",
            p.from,
            p.next,
            items.len()
        );
        out.extend(items.into_iter().map(|v| v.get().to_string()));
    }
    out
}

/// A `live=long-poll` read from `off` on a new connection that gives up after `timeout`.
pub fn long_poll(port: u16, name: &str, off: &str, timeout: Duration) -> io::Result<Resp> {
    let mut c = Client::try_connect(port)?;
    c.set_read_timeout(timeout);
    c.try_request(
        "GET",
        &format!("{}?offset={off}&live=long-poll", path(name)),
        &[],
        None,
    )
}

pub const TEXT: &str = "text/plain";
pub const JSON: &str = "application/json";

/// Short long-polls, so that nothing here waits long for a poll to time out.
pub const FLAGS: [&str; 2] = ["--ds-long-poll-ms", "500"];

pub fn flags_with<'a>(more: &[&'a str]) -> Vec<&'a str> {
    let mut f = FLAGS.to_vec();
    f.extend_from_slice(more);
    f
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts a response's status, with the response in the message.
#[track_caller]
pub fn expect(r: &Resp, status: u16, what: &str) {
    assert_eq!(
        r.status,
        status,
        "{what}: expected {status}, got {} {:?} {}",
        r.status,
        r.headers,
        r.text()
    );
}
