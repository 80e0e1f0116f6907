//! Resource caps of SPEC §1: topics, routers, watch sessions and open SSE streams answer
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

#[test]
fn topics_cap_answers_429_for_new_topics_only() {
    let s = Server::start_with(2, &["--max-topics", "3"]);
    for t in ["a", "b"] {
        s.append(t, json!([{"data": 1}]));
    }
    assert_eq!(s.put("/v0/topics/c", &json!({})).0, 201);
    // A fourth topic, by write or by PUT, is refused; nothing is created.
    let r = s.json_post("/v0/topics/d", &json!({"records": [{"data": 1}]}));
    assert_error(&r, 429, "throttled");
    assert_eq!(r.1["error"]["detail"], json!({"limit": "topics", "max": 3}));
    let r = s.put("/v0/topics/e", &json!({}));
    assert_error(&r, 429, "throttled");
    assert_eq!(s.get("/v0/topics/d").0, 404);
    // Existing topics still take writes and config changes.
    assert_eq!(s.append("a", json!([{"data": 2}]))["first_seq"], 2);
    assert_eq!(s.put("/v0/topics/c", &json!({"ttl_ms": 1000})).0, 200);
    // Deleting one makes room.
    assert_eq!(s.delete("/v0/topics/b").0, 200);
    assert_eq!(s.append("d", json!([{"data": 1}]))["first_seq"], 1);
}

#[test]
fn routers_cap_answers_429_for_new_routers_only() {
    let s = Server::start_with(2, &["--max-routers", "1"]);
    let r1 = json!({"source": "s1", "dest": "d1", "create_dest": true});
    s.append("s1", json!([{"data": 1}]));
    s.append("s2", json!([{"data": 1}]));
    assert_eq!(s.put("/v0/routers/r1", &r1).0, 201);
    let r = s.put(
        "/v0/routers/r2",
        &json!({"source": "s2", "dest": "d2", "create_dest": true}),
    );
    assert_error(&r, 429, "throttled");
    assert_eq!(
        r.1["error"]["detail"],
        json!({"limit": "routers", "max": 1})
    );
    // Updating the existing router is not a new one.
    assert_eq!(s.put("/v0/routers/r1", &r1).0, 200);
    assert_eq!(s.delete("/v0/routers/r1").0, 200);
    assert_eq!(
        s.put(
            "/v0/routers/r2",
            &json!({"source": "s2", "dest": "d2", "create_dest": true})
        )
        .0,
        201
    );
}

#[test]
fn retained_bytes_cap_answers_429_and_frees_with_deletes() {
    let s = Server::start_with(2, &["--max-retained-bytes", "100"]);
    // Each record's data is 10 bytes ("12345678" with its quotes): ten fit, over two topics.
    let rec = br#"{"records":[{"data":"12345678"}]}"#;
    for i in 0..10 {
        let t = if i % 2 == 0 { "a" } else { "b" };
        let r = s.post_raw(&format!("/v0/topics/{t}"), rec);
        assert!(r.status == 200 || r.status == 201, "{}", r.text());
    }
    let r = s.post_raw("/v0/topics/a", rec);
    assert_eq!(r.status, 429, "{}", r.text());
    let v: Value = r.json();
    assert_eq!(v["error"]["code"], json!("throttled"));
    assert_eq!(
        v["error"]["detail"],
        json!({"limit": "retained_bytes", "max": 100})
    );
    // A new topic is refused too, and not left behind.
    assert_eq!(s.post_raw("/v0/topics/c", rec).status, 429);
    assert_eq!(s.get("/v0/topics/c").0, 404);
    assert_eq!(s.topic("a")["count"], json!(5));
    // Deleting records makes room (the count is refreshed within a second).
    let (st, _) = s.json_post("/v0/topics/b/delete", &json!({"before_seq": 6}));
    assert_eq!(st, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = s.post_raw("/v0/topics/a", rec);
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(Instant::now() < deadline, "no room after deleting 50 bytes");
        std::thread::sleep(Duration::from_millis(100));
    }
}
