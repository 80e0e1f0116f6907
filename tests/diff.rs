//! Reading (SPEC §4): cursors, limit clamps, lag / caught_up, node filters, include flags,
//! silent deletes, and wait_ms long-polls.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn records(v: &Value) -> &Vec<Value> {
    v["records"]
        .as_array()
        .unwrap_or_else(|| panic!("records array in {v}"))
}

#[test]
fn diff_limit_defaults_and_clamps() {
    let s = Server::start(2);
    s.append_n("l", 1200);

    let v = s.diff("l", json!({}));
    assert_eq!(records(&v).len(), 256, "default limit 256");
    assert_eq!(seqs_of(records(&v)), (1..=256).collect::<Vec<_>>());
    assert_eq!(v["next_from_seq"], json!(256), "{}", v["next_from_seq"]);
    assert_eq!(v["head_seq"], json!(1200));
    assert_eq!(v["earliest_seq"], json!(1));
    assert_eq!(v["caught_up"], json!(false));
    assert_eq!(v["lag"], json!(1200 - 256));
    assert!(v["tombstone"].is_null());
    assert_perf(&v);
    assert!(
        v["performance"]["records_scanned"].is_number(),
        "records_scanned on reads: {}",
        v["performance"]
    );

    let v = s.diff("l", json!({"from_seq": 0, "limit": 0}));
    assert_eq!(records(&v).len(), 256, "limit 0 means the default");

    let v = s.diff("l", json!({"from_seq": 100, "limit": 5000}));
    assert_eq!(records(&v).len(), 1000, "limit clamped to 1000");
    assert_eq!(records(&v)[0]["$seq"], json!(101));
    assert_eq!(v["next_from_seq"], json!(1100));
    assert_eq!(v["lag"], json!(100));
    assert_eq!(v["caught_up"], json!(false));

    let v = s.diff("l", json!({"from_seq": 1195, "limit": 10}));
    assert_eq!(seqs_of(records(&v)), vec![1196, 1197, 1198, 1199, 1200]);
    assert_eq!(v["next_from_seq"], json!(1200));
    assert_eq!(v["caught_up"], json!(true));
    assert_eq!(v["lag"], json!(0));

    let v = s.diff("l", json!({"from_seq": 1200}));
    assert_eq!(records(&v).len(), 0);
    assert_eq!(v["next_from_seq"], json!(1200));
    assert_eq!(v["caught_up"], json!(true));

    let v = s.diff("l", json!({"from_seq": 7, "limit": 1}));
    assert_eq!(seqs_of(records(&v)), vec![8]);
    assert_eq!(v["next_from_seq"], json!(8));
    assert_eq!(v["lag"], json!(1192));
}

#[test]
fn diff_on_empty_topic() {
    let s = Server::start(1);
    assert_eq!(s.put("/v0/topics/e", &json!({})).0, 201);
    let v = s.diff("e", json!({"from_seq": 0}));
    assert_eq!(records(&v).len(), 0);
    assert_eq!(v["topic"], json!("e"));
    assert_eq!(v["next_from_seq"], json!(0));
    assert_eq!(v["head_seq"], json!(0));
    assert_eq!(v["earliest_seq"], json!(1));
    assert_eq!(v["caught_up"], json!(true));
    assert_eq!(v["lag"], json!(0));
    assert!(v.get("tombstone").is_some_and(|t| t.is_null()), "{v}");
}

/// Reads from 0 with `body` (plus from_seq / limit) until caught up; checks each page.
fn walk(s: &Server, topic: &str, body: Value, limit: u64) -> Vec<Value> {
    let mut from = 0u64;
    let mut out = Vec::new();
    for _ in 0..1000 {
        let mut b = body.clone();
        b["from_seq"] = json!(from);
        b["limit"] = json!(limit);
        let v = s.diff(topic, b);
        let recs = records(&v);
        assert!(recs.len() as u64 <= limit, "at most limit records: {v}");
        let next = v["next_from_seq"].as_u64().unwrap();
        for r in recs {
            let seq = r["$seq"].as_u64().unwrap();
            assert!(
                seq > from && seq <= next,
                "seq {seq} outside ({from}, {next}]: {v}"
            );
        }
        let head = v["head_seq"].as_u64().unwrap();
        assert_eq!(v["lag"], json!(head - next), "{v}");
        assert_eq!(v["caught_up"], json!(next == head), "{v}");
        out.extend(recs.iter().cloned());
        if next == head {
            return out;
        }
        assert!(next > from, "cursor must advance: {v}");
        from = next;
    }
    panic!("never caught up");
}

#[test]
fn diff_node_filter_string_and_array() {
    let s = Server::start(2);
    let nodes = ["A", "B", "", "A", "B", "C", "a", "A", "A"];
    let recs: Vec<Value> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if n.is_empty() {
                json!({"data": i + 1})
            } else {
                json!({"data": i + 1, "node": n})
            }
        })
        .collect();
    s.append("nf", Value::Array(recs));

    // Filter "A": the last two records are filtered, yet the cursor reaches the head.
    let v = s.diff("nf", json!({"from_seq": 0, "node": "A"}));
    assert_eq!(seqs_of(records(&v)), vec![2, 3, 5, 6, 7], "{v}");
    assert_eq!(
        v["next_from_seq"],
        json!(9),
        "filtered records still advance: {v}"
    );
    assert_eq!(v["caught_up"], json!(true), "{v}");
    assert_eq!(v["lag"], json!(0), "{v}");
    assert!(v["tombstone"].is_null(), "node filtering is silent: {v}");
    assert_eq!(
        records(&v)[4]["$node"],
        json!("a"),
        "byte-exact: 'a' is not 'A'"
    );

    let v = s.diff("nf", json!({"from_seq": 0, "node": ["A", "B"]}));
    assert_eq!(seqs_of(records(&v)), vec![3, 6, 7], "{v}");
    assert_eq!(v["next_from_seq"], json!(9));
    assert_eq!(v["caught_up"], json!(true));

    let v = s.diff("nf", json!({"from_seq": 7, "node": "A"}));
    assert_eq!(records(&v).len(), 0, "{v}");
    assert_eq!(v["next_from_seq"], json!(9), "{v}");
    assert_eq!(v["caught_up"], json!(true), "{v}");

    // Small pages: the union of pages is the filtered set.
    let got = walk(&s, "nf", json!({"node": "A"}), 2);
    assert_eq!(seqs_of(&got), vec![2, 3, 5, 6, 7]);
    let got = walk(&s, "nf", json!({"node": ["A", "B", "C"]}), 1);
    assert_eq!(seqs_of(&got), vec![3, 7]);

    let v = s.diff("nf", json!({"from_seq": 0, "node": []}));
    assert_eq!(
        records(&v).len(),
        9,
        "an empty node list filters nothing: {v}"
    );
}

#[test]
fn diff_node_filter_ignored_when_dedupe_node_false() {
    let s = Server::start(1);
    assert_eq!(
        s.put("/v0/topics/nd", &json!({"dedupe_node": false})).0,
        201
    );
    s.append(
        "nd",
        json!([{"data": 1, "node": "A"}, {"data": 2, "node": "B"}]),
    );
    let v = s.diff("nd", json!({"from_seq": 0, "node": "A"}));
    assert_eq!(seqs_of(records(&v)), vec![1, 2], "{v}");
}

#[test]
fn diff_include_tags_and_meta() {
    let s = Server::start(1);
    s.append(
        "inc",
        json!([{"data": 1, "tag": "t1", "node": "n1", "meta": {"m": 1}}]),
    );
    let v = s.diff("inc", json!({}));
    assert_eq!(
        keys(&records(&v)[0]),
        vec!["$node", "$seq", "$tag", "$ts", "data", "meta"]
    );
    let v = s.diff("inc", json!({"include_tags": false}));
    assert_eq!(
        keys(&records(&v)[0]),
        vec!["$node", "$seq", "$ts", "data", "meta"]
    );
    let v = s.diff("inc", json!({"include_meta": false}));
    assert_eq!(
        keys(&records(&v)[0]),
        vec!["$node", "$seq", "$tag", "$ts", "data"]
    );
    let v = s.diff(
        "inc",
        json!({"include_meta": false, "include_tags": false, "future_flag": 1}),
    );
    assert_eq!(keys(&records(&v)[0]), vec!["$node", "$seq", "$ts", "data"]);
}

#[test]
fn diff_skips_deleted_records_silently() {
    let s = Server::start(2);
    let recs: Vec<Value> = (1..=10)
        .map(|i| json!({"data": i, "tag": if i % 3 == 0 { "three" } else { "other" }}))
        .collect();
    s.append("del", Value::Array(recs));
    let (st, v) = s.json_post("/v0/topics/del/delete", &json!({"match": "three"}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["deleted"], json!(3));

    let v = s.diff("del", json!({"from_seq": 0}));
    assert_eq!(seqs_of(records(&v)), vec![1, 2, 4, 5, 7, 8, 10]);
    assert!(v["tombstone"].is_null(), "{v}");
    let v = s.diff("del", json!({"from_seq": 2, "limit": 1}));
    assert_eq!(seqs_of(records(&v)), vec![4], "{v}");
    assert!(v["tombstone"].is_null(), "{v}");
    let v = s.diff("del", json!({"from_seq": 8, "limit": 1}));
    assert_eq!(seqs_of(records(&v)), vec![10], "{v}");
    assert_eq!(v["next_from_seq"], json!(10), "{v}");
    assert_eq!(v["caught_up"], json!(true), "{v}");

    let got = walk(&s, "del", json!({}), 2);
    assert_eq!(seqs_of(&got), vec![1, 2, 4, 5, 7, 8, 10]);
}

fn wait_wakes(shards: usize) {
    let s = Server::start(shards);
    s.append("w", json!([{"data": 0}]));
    let port = s.port;
    let reader = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        let start = Instant::now();
        let (st, v) = c.json_post(
            "/v0/topics/w/diff",
            &json!({"from_seq": 1, "wait_ms": 10000}),
        );
        (st, v, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(400));
    let v = s.append("w", json!([{"data": "woke"}]));
    assert_eq!(v["seqs"], json!([2]));
    let (st, v, took) = reader.join().unwrap();
    assert_eq!(st, 200, "{v}");
    assert_eq!(seqs_of(records(&v)), vec![2], "{v}");
    assert_eq!(records(&v)[0]["data"], json!("woke"));
    assert_eq!(v["next_from_seq"], json!(2));
    assert_eq!(v["caught_up"], json!(true));
    assert!(
        took >= Duration::from_millis(300),
        "the read was parked until the write ({took:?})"
    );
    assert!(
        took < Duration::from_secs(5),
        "answered as soon as a record arrived, took {took:?}"
    );
}

#[test]
fn diff_wait_ms_wakes_on_append_one_shard() {
    wait_wakes(1);
}

#[test]
fn diff_wait_ms_wakes_on_append_two_shards() {
    wait_wakes(2);
}

#[test]
fn diff_wait_ms_returns_after_wait_when_nothing_arrives() {
    let s = Server::start(1);
    s.append_n("idle", 2);
    s.append_n("busy", 1);
    let start = Instant::now();
    let v = s.diff("idle", json!({"from_seq": 2, "wait_ms": 600}));
    let took = start.elapsed();
    assert_eq!(records(&v).len(), 0, "{v}");
    assert_eq!(v["caught_up"], json!(true));
    assert_eq!(v["next_from_seq"], json!(2));
    assert!(took >= Duration::from_millis(550), "waited only {took:?}");
    assert!(took < Duration::from_secs(5), "waited {took:?}");

    // A write to another topic does not wake it early with nothing.
    let port = s.port;
    let t = std::thread::spawn(move || {
        let start = Instant::now();
        let (st, v) = Client::connect(port).json_post(
            "/v0/topics/idle/diff",
            &json!({"from_seq": 2, "wait_ms": 800}),
        );
        (st, v, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    s.append_n("busy", 1);
    let (st, v, took) = t.join().unwrap();
    assert_eq!(st, 200, "{v}");
    assert_eq!(records(&v).len(), 0, "{v}");
    assert!(
        took >= Duration::from_millis(700),
        "returned after {took:?}"
    );
}

#[test]
fn diff_wait_ms_not_caught_up_answers_at_once() {
    let s = Server::start(1);
    s.append_n("nc", 3);
    let start = Instant::now();
    let v = s.diff("nc", json!({"from_seq": 1, "wait_ms": 20000}));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(seqs_of(records(&v)), vec![2, 3]);
}

#[test]
fn diff_wait_ms_is_clamped_not_rejected() {
    let s = Server::start(1);
    s.append_n("cl", 1);
    let port = s.port;
    let t = std::thread::spawn(move || {
        Client::connect(port).json_post(
            "/v0/topics/cl/diff",
            &json!({"from_seq": 1, "wait_ms": 99_999_999u64}),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    s.append_n("cl", 1);
    let (st, v) = t.join().unwrap();
    assert_eq!(st, 200, "wait_ms is clamped to 30000, not rejected: {v}");
    assert_eq!(seqs_of(records(&v)), vec![2], "{v}");
}

#[test]
fn diff_sees_every_append_in_order_while_writing() {
    let s = Server::start(2);
    let port = s.port;
    let writer = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        for i in 0..200 {
            let (st, v) = c.json_post("/v0/topics/live", &json!({"records": [{"data": i}]}));
            assert!(st == 200 || st == 201, "{v}");
        }
    });
    let mut c = s.client();
    let mut from = 0u64;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 200 {
        assert!(Instant::now() < deadline, "reader stalled at {from}");
        let (st, v) = c.json_post(
            "/v0/topics/live/diff",
            &json!({"from_seq": from, "wait_ms": 1000, "limit": 7}),
        );
        if st == 404 {
            continue; // not created yet
        }
        assert_eq!(st, 200, "{v}");
        for r in records(&v) {
            got.push(r["data"].as_u64().unwrap());
        }
        from = v["next_from_seq"].as_u64().unwrap();
    }
    writer.join().unwrap();
    assert_eq!(got, (0..200).collect::<Vec<u64>>());
}

#[test]
fn one_append_wakes_every_parked_reader() {
    let s = Server::start(2);
    s.append_n("fan", 1);
    let port = s.port;
    let readers: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let body = if i % 2 == 0 {
                    json!({"from_seq": 1, "wait_ms": 10000})
                } else {
                    json!({"from_seq": 1, "wait_ms": 10000, "node": "someone-else"})
                };
                let start = Instant::now();
                let (st, v) = Client::connect(port).json_post("/v0/topics/fan/diff", &body);
                (st, v, start.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    s.append("fan", json!([{"data": "all", "node": "writer"}]));
    for r in readers {
        let (st, v, took) = r.join().unwrap();
        assert_eq!(st, 200, "{v}");
        assert_eq!(seqs_of(records(&v)), vec![2], "{v}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}

#[test]
fn parked_reader_filtered_by_node_never_gets_its_echo() {
    let s = Server::start(1);
    s.append_n("own", 1);
    let port = s.port;
    let t = std::thread::spawn(move || {
        let start = Instant::now();
        let (st, v) = Client::connect(port).json_post(
            "/v0/topics/own/diff",
            &json!({"from_seq": 1, "wait_ms": 1500, "node": "me"}),
        );
        (st, v, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    s.append("own", json!([{"data": "echo", "node": "me"}]));
    std::thread::sleep(Duration::from_millis(300));
    s.append("own", json!([{"data": "other", "node": "you"}]));
    let (st, v, took) = t.join().unwrap();
    assert_eq!(st, 200, "{v}");
    // Answered on the echo with no records (the cursor advanced), or on the other record.
    let got = seqs_of(records(&v));
    assert!(got.is_empty() || got == vec![3], "{v}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn batches_become_visible_together() {
    let s = Server::start(2);
    assert_eq!(s.put("/v0/topics/bt", &json!({})).0, 201);
    let port = s.port;
    let writer = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        for b in 0..60 {
            let recs: Vec<Value> = (0..50).map(|k| json!({"data": [b, k]})).collect();
            let (st, v) = c.json_post("/v0/topics/bt", &json!({"records": recs}));
            assert_eq!(st, 200, "{v}");
        }
    });
    let mut c = s.client();
    let mut from = 0u64;
    while from < 3000 {
        let (st, v) = c.json_post(
            "/v0/topics/bt/diff",
            &json!({"from_seq": from, "limit": 1000, "wait_ms": 2000}),
        );
        assert_eq!(st, 200, "{v}");
        let head = v["head_seq"].as_u64().unwrap();
        let next = v["next_from_seq"].as_u64().unwrap();
        assert_eq!(head % 50, 0, "a partial batch is visible: head {head}");
        assert_eq!(next % 50, 0, "a partial batch was read: next {next}");
        assert_eq!(records(&v).len() as u64, next - from, "{from}..{next}");
        from = next;
    }
    writer.join().unwrap();
}
