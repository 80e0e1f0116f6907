//! `GET /v0/metrics` (SPEC §9): Prometheus text and JSON reflect known traffic.

mod common;

use common::*;
use serde_json::{json, Value};

/// The value of a Prometheus sample line `name{labels} value`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_count_known_traffic() {
    let s = Server::start(2);
    for i in 0..5 {
        s.append(&format!("m{}", i % 2), json!([{"data": i}, {"data": "x"}]));
    }
    assert_eq!(
        s.put("/v0/topics/f", &json!({"durability": "fsync"})).0,
        201
    );
    s.append("f", json!([{"data": 1}]));
    assert_eq!(s.put("/v0/topics/q", &json!({"type": "queue"})).0, 201);
    s.append("q", json!([{"data": 1}, {"data": 2}]));
    let (st, v) = s.json_post("/v0/topics/q/claim", &json!({"node": "w"}));
    assert_eq!(st, 200, "{v}");
    let (st, _) = s.json_post("/v0/topics/missing/diff", &json!({}));
    assert_eq!(st, 404);
    for _ in 0..3 {
        s.diff("m0", json!({}));
    }

    let r = s.client().request("GET", "/v0/metrics", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    let text = r.text();
    let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
    assert_eq!(get("topics_topics{class=\"disk\"}"), 3.0);
    assert_eq!(get("topics_topics{class=\"fsync\"}"), 1.0);
    assert_eq!(get("topics_queues"), 1.0);
    assert_eq!(get("topics_queue_leases_in_flight"), 1.0);
    assert_eq!(get("topics_ready"), 1.0);
    let records: f64 = (0..2)
        .map(|i| get(&format!("topics_records{{shard=\"{i}\"}}")))
        .sum();
    assert_eq!(records, 13.0);
    assert_eq!(
        get("topics_requests_total{route=\"POST /v0/topics/:topic\",status=\"200\"}")
            + get("topics_requests_total{route=\"POST /v0/topics/:topic\",status=\"201\"}"),
        7.0
    );
    assert_eq!(
        get("topics_requests_total{route=\"POST /v0/topics/:topic/diff\",status=\"200\"}"),
        3.0
    );
    assert_eq!(
        get("topics_requests_total{route=\"POST /v0/topics/:topic/diff\",status=\"404\"}"),
        1.0
    );
    assert!(get("topics_wal_fsync_seconds_count") >= 1.0);
    assert!(get("topics_wal_fsync_seconds_bucket{le=\"+Inf\"}") >= 1.0);
    assert!(
        get("topics_request_duration_seconds_count{route=\"POST /v0/topics/:topic/diff\"}") >= 4.0
    );
    let frames: f64 = (0..2)
        .map(|i| get(&format!("topics_wal_frames_total{{shard=\"{i}\"}}")))
        .sum();
    assert!(frames >= 9.0, "{frames}");

    let r = s.client().request(
        "GET",
        "/v0/metrics",
        &[("Accept", "application/json")],
        None,
    );
    assert_eq!(r.status, 200);
    let v: Value = r.json();
    assert_eq!(v["topics"]["disk"], json!(3), "{v}");
    assert_eq!(v["records"], json!(13), "{v}");
    assert_eq!(v["queue_leases_in_flight"], json!(1), "{v}");
    assert_eq!(v["ready"], json!(true));
    assert!(v["wal"]["fsyncs"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert_eq!(v["cores"].as_array().map(Vec::len), Some(2));
    let diffs = v["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["route"] == json!("POST /v0/topics/:topic/diff") && r["status"] == json!(200))
        .map(|r| r["count"].clone());
    assert_eq!(diffs, Some(json!(3)), "{v}");
}
