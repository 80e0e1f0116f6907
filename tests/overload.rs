//! Overload (SPEC §9): past the per-core bound, requests on the lowest-priority topics get
//! `429 throttled` with `retry_after_ms` first, a high-priority topic keeps being served, and
//! `disable_backpressure` makes a write wait instead of failing.

mod common;

use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn a_flood_sheds_low_priority_first_and_waits_when_asked() {
    let s = Server::start_with(1, &["--max-queue-per-core", "2"]);
    let cfg = |p: i64| json!({"durability": "fsync", "priority": p});
    assert_eq!(s.put("/v0/topics/low", &cfg(-1000)).0, 201);
    assert_eq!(s.put("/v0/topics/high", &cfg(1000)).0, 201);
    let low_429 = Arc::new(AtomicU64::new(0));
    let high_429 = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_millis(2500);
    let mut threads = Vec::new();
    for i in 0..24 {
        let port = s.port;
        let (low_429, high_429, ok, other) =
            (low_429.clone(), high_429.clone(), ok.clone(), other.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(port);
            let topic = if i % 4 == 0 { "high" } else { "low" };
            while Instant::now() < deadline {
                let body = json!({"records": [{"data": i}]});
                let (st, v) = c.json_post(&format!("/v0/topics/{topic}"), &body);
                match st {
                    200 | 201 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    429 => {
                        assert_eq!(v["error"]["code"], json!("throttled"), "{v}");
                        assert!(
                            v["error"]["detail"]["retry_after_ms"].as_u64().unwrap_or(0) > 0,
                            "{v}"
                        );
                        if topic == "high" {
                            high_429.fetch_add(1, Ordering::Relaxed);
                        } else {
                            low_429.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Meanwhile a low-priority write that asks to wait is never refused.
    let mut waited = 0;
    let mut c = s.client();
    while Instant::now() < deadline {
        let body = json!({"records": [{"data": "patient"}], "disable_backpressure": true});
        let (st, v) = c.json_post("/v0/topics/low", &body);
        assert_eq!(st, 200, "{v}");
        if v["performance"]["throttle_wait_ms"].as_f64().unwrap_or(0.0) > 0.0 {
            waited += 1;
        }
    }
    for t in threads {
        t.join().expect("writer");
    }
    let (low, high) = (
        low_429.load(Ordering::Relaxed),
        high_429.load(Ordering::Relaxed),
    );
    eprintln!(
        "ok {}, low 429 {low}, high 429 {high}, patient writes that waited {waited}",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(other.load(Ordering::Relaxed), 0, "unexpected statuses");
    assert!(low > 0, "the flood never shed the low-priority topic");
    assert_eq!(high, 0, "priority 1000 is never shed");
    // Nothing refused was written: every record present was acknowledged.
    let acked = ok.load(Ordering::Relaxed);
    let total = s.topic("low")["count"].as_u64().unwrap_or(0)
        + s.topic("high")["count"].as_u64().unwrap_or(0);
    assert!(total >= acked, "{total} records for {acked} acks");
    // The server answers normally once the flood is over.
    assert_eq!(
        s.append("low", json!([{"data": "after"}]))["count"],
        json!(1)
    );
}
