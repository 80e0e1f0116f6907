//! The harness of the black-box fuzz tests (tests/fuzz_http.rs, tests/fuzz_json.rs): a
//! server with data to keep, and reading and checking raw answers.

#![allow(unused_imports)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use super::*;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::TestRunner;
use serde_json::{json, Map, Value};

pub fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        // A failing case is re-run while shrinking; against a server that is slow, so
        // keep it bounded.
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

/// A topic written before the fuzzing and never named by it.
pub const KEEP: &str = "keep-7f3a9c51";

/// A server with a log topic, a queue, and the untouchable topic.
pub fn fixture() -> (Server, Vec<Value>) {
    let s = Server::start(2);
    let (st, v) = s.put("/v0/topics/fz-q", &json!({"type": "queue"}));
    assert_eq!(st, 201, "{v}");
    s.append("fz-q", json!([{"data": 1}, {"data": 2}, {"data": 3}]));
    s.append("fz-log", json!([{"data": {"a": 1}, "tag": "t1"}]));
    s.append(
        KEEP,
        json!([
            {"data": {"sku": "A", "qty": 1}, "tag": "k1", "meta": {"m": 1}},
            {"data": [1, 2, 3], "node": "n1"},
            {"data": null},
        ]),
    );
    let keep = s.diff_all(KEEP);
    assert_eq!(keep.len(), 3);
    (s, keep)
}

/// The server is up, the kept topic is intact, and nothing panicked.
pub fn assert_still_fine(s: &Server, keep: &[Value]) {
    let (st, v) = s.get("/v0/health");
    assert_eq!(st, 200, "health after fuzzing: {v}");
    assert_eq!(s.diff_all(KEEP), keep, "{KEEP} changed");
    let log = std::fs::read_to_string(s.log_path()).unwrap_or_default();
    assert!(!log.contains("panicked"), "{}", s.log_tail());
}

// ---- reading answers -------------------------------------------------------------------------

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits everything the server sent on one connection into responses. A response to
/// `HEAD` has a `content-length` but no body: recognised by the next status line.
pub fn split_answers(mut rest: &[u8]) -> Result<Vec<Answer>, String> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        if !rest.starts_with(b"HTTP/1.1 ") {
            return Err(format!(
                "not a status line: {:?}",
                String::from_utf8_lossy(&rest[..rest.len().min(80)])
            ));
        }
        let end = find(rest, b"\r\n\r\n").ok_or("a response head without its end")?;
        let head = std::str::from_utf8(&rest[..end]).map_err(|e| format!("head: {e}"))?;
        rest = &rest[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut headers = Vec::new();
        for line in lines {
            let (k, v) = line
                .split_once(": ")
                .ok_or_else(|| format!("bad header line {line:?}"))?;
            headers.push((k.to_ascii_lowercase(), v.to_string()));
        }
        let mut a = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
        if !bodiless {
            match a.header("content-length").map(str::parse::<usize>) {
                Some(Ok(n)) => {
                    if rest.len() >= n && (rest.len() == n || rest[n..].starts_with(b"HTTP/1.")) {
                        a.body = rest[..n].to_vec();
                        rest = &rest[n..];
                    } else if !(rest.is_empty() || rest.starts_with(b"HTTP/1.")) {
                        return Err(format!("{status} body shorter than its {n} bytes"));
                    }
                }
                Some(Err(e)) => return Err(format!("content-length: {e}")),
                // A stream: it runs to the close.
                None => {
                    a.body = rest.to_vec();
                    rest = &[];
                }
            }
        }
        out.push(a);
    }
    Ok(out)
}

pub const ERROR_STATUSES: &[u16] = &[400, 404, 405, 406, 409, 413, 415, 422, 429, 431];

/// One answer is well formed: a known status, errors with exactly the SPEC §1 body, and
/// JSON bodies that are JSON.
pub fn check_answer(a: &Answer) -> Result<(), String> {
    let ct = a.header("content-type").unwrap_or_default();
    let json = ct.starts_with("application/json");
    match a.status {
        100 | 200 | 201 => {
            if json {
                // `data` comes back verbatim, so a successful body may hold escapes only a
                // lenient parser takes (lone surrogates); check the syntax only.
                serde_json::from_slice::<serde::de::IgnoredAny>(&a.body).map_err(|e| {
                    format!("{} body is not JSON ({e}): {}", a.status, lossy(&a.body))
                })?;
            }
            Ok(())
        }
        s if ERROR_STATUSES.contains(&s) => {
            if !json {
                return Err(format!("{s} with content-type {ct:?}"));
            }
            let v: Value = serde_json::from_slice(&a.body)
                .map_err(|e| format!("{s} error body is not JSON ({e}): {}", lossy(&a.body)))?;
            let shape = v.as_object().is_some_and(|o| {
                o.len() == 2
                    && o["error"]["code"].is_string()
                    && o["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty())
                    && o["error"].as_object().is_some_and(|e| {
                        e.keys()
                            .all(|k| ["code", "message", "detail"].contains(&k.as_str()))
                    })
                    && o["performance"]["server_total_ms"].is_number()
            });
            if shape {
                Ok(())
            } else {
                Err(format!("{s} error body of the wrong shape: {v}"))
            }
        }
        s => Err(format!("status {s}: {}", lossy(&a.body))),
    }
}

pub fn lossy(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(600)]);
    s.into_owned()
}

/// Every answer on a connection is well formed and none follows a `connection: close`.
pub fn check_answers(answers: &[Answer]) -> Result<(), String> {
    for (i, a) in answers.iter().enumerate() {
        check_answer(a)?;
        if a.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            && i + 1 < answers.len()
        {
            return Err(format!(
                "{} more answers after a {} with connection: close",
                answers.len() - i - 1,
                a.status
            ));
        }
    }
    Ok(())
}

/// How the cases were answered, printed at the end (`--nocapture`) to show what the
/// fuzzing reached.
#[derive(Default)]
pub struct Tally {
    pub statuses: RefCell<BTreeMap<u16, usize>>,
    pub cases: Cell<usize>,
    pub silent: Cell<usize>,
}

impl Tally {
    pub fn count(&self, statuses: impl IntoIterator<Item = u16>, silent: bool) {
        self.cases.set(self.cases.get() + 1);
        self.silent.set(self.silent.get() + usize::from(silent));
        let mut m = self.statuses.borrow_mut();
        for st in statuses {
            *m.entry(st).or_default() += 1;
        }
    }

    pub fn print(&self, what: &str) {
        eprintln!(
            "{what}: {} cases ({} closed without an answer), answers by status {:?}",
            self.cases.get(),
            self.silent.get(),
            self.statuses.borrow()
        );
    }
}

pub const TOKENS: &[&str] = &[
    "\r\n",
    "\n",
    "\r\n\r\n",
    " ",
    ":",
    ";",
    ",",
    "0",
    "1",
    "9",
    "f",
    "ffffffffffffffff",
    "18446744073709551616",
    "-1",
    "GET ",
    "POST ",
    "/v0/topics/fz-log",
    "?",
    "%",
    " HTTP/1.1",
    " HTTP/1.0",
    "Content-Length: ",
    "Transfer-Encoding: chunked",
    "Connection: close",
    "Expect: 100-continue",
    "0\r\n\r\n",
    "{",
    "}",
    "\"",
    "\u{0}",
    "\u{7f}",
];

#[derive(Debug, Clone)]
pub enum Edit {
    Set(Index, u8),
    Insert(Index, &'static str),
    Delete(Index, usize),
    Duplicate(Index, usize),
    Truncate(Index),
}

pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        3 => (any::<Index>(), select(TOKENS)).prop_map(|(i, t)| Edit::Insert(i, t)),
        2 => (any::<Index>(), 1usize..8).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Edit::Duplicate(i, n)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

pub fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = b.len();
        match e {
            Edit::Set(i, x) if len > 0 => b[i.index(len)] = *x,
            Edit::Insert(i, t) => {
                let at = i.index(len + 1);
                b.splice(at..at, t.bytes());
            }
            Edit::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                b.drain(at..(at + n).min(len));
            }
            Edit::Duplicate(i, n) if len > 0 => {
                let at = i.index(len);
                let part = b[at..(at + n).min(len)].to_vec();
                b.splice(at..at, part);
            }
            Edit::Truncate(i) => b.truncate(i.index(len + 1)),
            _ => {}
        }
    }
    b
}
