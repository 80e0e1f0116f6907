//! A slow SSE reader (SPEC §6): the server never buffers without bound for it, and other
//! clients keep being served.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::sse;
use common::*;
use serde_json::{json, Value};

fn rss_kib(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[test]
fn slow_reader_bounded_memory() {
    let s = Server::start(1);
    s.append_n("slow", 1);
    // Warm up the write path with a separate topic so allocator growth is not blamed on
    // the reader.
    let blob = "z".repeat(100_000);
    let batch: Vec<Value> = (0..10)
        .map(|i| json!({"data": {"i": i, "b": blob}}))
        .collect();
    let batch = serde_json::to_vec(&json!({ "records": batch })).unwrap();
    let mut c = s.client();
    for _ in 0..10 {
        let r = c.post_raw("/v0/topics/warm", &batch);
        assert_eq!(r.status / 100, 2, "{}", r.text());
    }
    // A stream that is never read.
    let (wid, _) = sse::create(&s, json!({"topics": {"slow": {}}}));
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        raw,
        "GET /v0/watch/{wid} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    // And a healthy reader alongside.
    let (_, mut fast) = sse::watch(&s, json!({"topics": {"slow": {}}, "include_data": false}));
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(s.pid());
    // ~20 MB through the topic.
    for i in 0..20 {
        let t0 = Instant::now();
        let r = c.post_raw("/v0/topics/slow", &batch);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "write {i} took {:?}",
            t0.elapsed()
        );
    }
    // Other clients are served promptly.
    let t0 = Instant::now();
    let (st, _) = s.get("/v0/health");
    assert_eq!(st, 200);
    let v = s.diff("slow", json!({"from_seq": 200, "limit": 1}));
    assert_eq!(v["head_seq"], json!(201));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    fast.until_cursor("slow", 201, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(s.pid());
    let grown = after.saturating_sub(before);
    eprintln!("slow reader: server RSS {before} KiB -> {after} KiB");
    assert!(
        grown < 64 * 1024,
        "server RSS grew by {grown} KiB ({before} -> {after}) with a slow reader"
    );
    drop(raw);
}
