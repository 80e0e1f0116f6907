//! Resource caps of SPEC §1 that exist so far: watch sessions and open SSE streams answer
//! `429 throttled` with `detail.limit`/`detail.max` and `Retry-After` past their maximum, and
//! room comes back when a stream closes.

mod common;

use common::sse;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[test]
fn watch_sessions_cap_answers_429() {
    let s = Server::start_with(2, &["--max-watch-sessions", "2"]);
    s.append("a", json!([{"data": 1}]));
    sse::create(&s, json!({"topics": {"a": {}}}));
    sse::create(&s, json!({"topics": {"a": {}}}));
    let r = s.json_post("/v0/watch", &json!({"topics": {"a": {}}}));
    assert_error(&r, 429, "throttled");
    assert_eq!(
        r.1["error"]["detail"],
        json!({"limit": "watch_sessions", "max": 2})
    );
    // Other requests are unaffected.
    assert_eq!(s.append("a", json!([{"data": 2}]))["first_seq"], 2);
}

#[test]
fn sse_connections_cap_answers_429_until_a_stream_closes() {
    let s = Server::start_with(1, &["--max-sse-connections", "1"]);
    s.append("a", json!([{"data": 1}]));
    let (w1, first) = sse::watch(&s, json!({"topics": {"a": {}}}));
    let (w2, _) = sse::create(&s, json!({"topics": {"a": {}}}));
    match sse::open_path(s.port, &format!("/v0/watch/{w2}"), &[]) {
        Ok(_) => panic!("a second stream opened past the cap"),
        Err(r) => {
            assert_eq!(r.status, 429, "{}", r.text());
            let v: Value = serde_json::from_slice(&r.body).expect("json");
            assert_eq!(v["error"]["code"], json!("throttled"));
            assert_eq!(
                v["error"]["detail"],
                json!({"limit": "sse_connections", "max": 1})
            );
            assert!(
                r.headers.iter().any(|(k, _)| k == "retry-after"),
                "{:?}",
                r.headers
            );
        }
    }
    drop(first);
    // The closed stream frees its slot (the server notices the disconnect at once).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match sse::open_path(s.port, &format!("/v0/watch/{w2}"), &[]) {
            Ok(_) => break,
            Err(r) if r.status == 429 && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(r) => panic!("stream did not open after the first closed: {}", r.text()),
        }
    }
    let _ = w1;
}
