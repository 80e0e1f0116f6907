//! Retention (SPEC §2, §3, §4): cap_records / cap_bytes with discard old (tombstones) or
//! reject (422 topic_full), TTL expiry, tighter caps applying at once, and the tombstone shape.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn records(v: &Value) -> &Vec<Value> {
    v["records"]
        .as_array()
        .unwrap_or_else(|| panic!("records array in {v}"))
}

fn assert_tombstone(v: &Value, reason: &str, gap_from: u64, gap_to: u64) {
    let t = &v["tombstone"];
    assert!(t.is_object(), "expected a tombstone: {v}");
    assert_eq!(t["reason"], json!(reason), "{v}");
    assert_eq!(t["gap_from"], json!(gap_from), "{v}");
    assert_eq!(t["gap_to"], json!(gap_to), "{v}");
    assert_eq!(t["earliest_seq"], v["earliest_seq"], "{v}");
    assert_eq!(t["head_seq"], v["head_seq"], "{v}");
    assert!(t["missed_estimate"].is_u64(), "missed_estimate: {v}");
}

#[test]
fn cap_records_discard_old_evicts_with_tombstone() {
    let s = Server::start(2);
    let (st, v) = s.put("/v0/topics/c", &json!({"cap_records": 5}));
    assert_eq!(st, 201, "{v}");
    for i in 0..8 {
        s.append("c", json!([{ "data": i }]));
    }
    let t = s.topic("c");
    assert_eq!(t["count"], json!(5), "{t}");
    assert_eq!(t["earliest_seq"], json!(4), "{t}");
    assert_eq!(t["head_seq"], json!(8), "{t}");

    let v = s.diff("c", json!({"from_seq": 0}));
    assert_tombstone(&v, "cap", 1, 3);
    assert_eq!(v["tombstone"]["missed_estimate"], json!(3), "{v}");
    assert_eq!(seqs_of(records(&v)), vec![4, 5, 6, 7, 8], "{v}");
    assert_eq!(v["caught_up"], json!(true), "{v}");

    let v = s.diff("c", json!({"from_seq": 2}));
    assert_tombstone(&v, "cap", 3, 3);
    let v = s.diff("c", json!({"from_seq": 3}));
    assert!(
        v["tombstone"].is_null(),
        "cursor at the floor loses nothing: {v}"
    );
    assert_eq!(seqs_of(records(&v)), vec![4, 5, 6, 7, 8]);

    // A batch evicts as many as it needs.
    s.append("c", json!([{"data": "a"}, {"data": "b"}, {"data": "c"}]));
    let t = s.topic("c");
    assert_eq!(t["count"], json!(5), "{t}");
    assert_eq!(t["earliest_seq"], json!(7), "{t}");
}

#[test]
fn cap_bytes_discard_old() {
    let s = Server::start(1);
    assert_eq!(s.put("/v0/topics/b", &json!({"cap_bytes": 30})).0, 201);
    // Each data is exactly 10 bytes: "12345678" with quotes.
    for _ in 0..5 {
        assert_eq!(
            s.post_raw("/v0/topics/b", br#"{"records":[{"data":"12345678"}]}"#)
                .status,
            200
        );
    }
    let t = s.topic("b");
    assert_eq!(t["count"], json!(3), "{t}");
    assert_eq!(t["bytes"], json!(30), "{t}");
    assert_eq!(t["earliest_seq"], json!(3), "{t}");
    let v = s.diff("b", json!({}));
    assert_tombstone(&v, "cap", 1, 2);
}

#[test]
fn discard_reject_answers_422_topic_full() {
    let s = Server::start(2);
    let (st, v) = s.put(
        "/v0/topics/r",
        &json!({"cap_records": 3, "discard": "reject"}),
    );
    assert_eq!(st, 201, "{v}");
    s.append("r", json!([{"data": 1}, {"data": 2}]));
    // A batch that does not fit is refused whole.
    let r = s.json_post(
        "/v0/topics/r",
        &json!({"records": [{"data": 3}, {"data": 4}]}),
    );
    assert_error(&r, 422, "topic_full");
    s.append("r", json!([{"data": 3}]));
    let r = s.json_post("/v0/topics/r", &json!({"records": [{"data": 4}]}));
    assert_error(&r, 422, "topic_full");
    let t = s.topic("r");
    assert_eq!(t["count"], json!(3), "nothing written: {t}");
    assert_eq!(t["head_seq"], json!(3), "{t}");
    let v = s.diff("r", json!({}));
    assert!(v["tombstone"].is_null(), "{v}");
    assert_eq!(seqs_of(records(&v)), vec![1, 2, 3]);

    // Room made by a delete lets writes in again, with the next seq.
    let (st, v) = s.json_post("/v0/topics/r/delete", &json!({"before_seq": 2}));
    assert_eq!(st, 200, "{v}");
    let v = s.append("r", json!([{"data": 4}]));
    assert_eq!(v["seqs"], json!([4]), "{v}");
}

#[test]
fn tighter_cap_applies_at_once() {
    let s = Server::start(1);
    s.append_n("tc", 10);
    let (st, v) = s.put("/v0/topics/tc", &json!({"cap_records": 4}));
    assert_eq!(st, 200, "{v}");
    let t = s.topic("tc");
    assert_eq!(t["count"], json!(4), "{t}");
    assert_eq!(t["earliest_seq"], json!(7), "{t}");
    let v = s.diff("tc", json!({"from_seq": 0}));
    assert_tombstone(&v, "cap", 1, 6);
    assert_eq!(seqs_of(records(&v)), vec![7, 8, 9, 10]);
}

#[test]
fn ttl_expires_old_records_with_tombstone() {
    let s = Server::start(2);
    assert_eq!(s.put("/v0/topics/ttl", &json!({"ttl_ms": 400})).0, 201);
    s.append_n("ttl", 3);
    std::thread::sleep(Duration::from_millis(800));
    s.append("ttl", json!([{"data": "fresh"}]));
    let v = s.diff("ttl", json!({"from_seq": 0}));
    assert_eq!(seqs_of(records(&v)), vec![4], "{v}");
    assert_tombstone(&v, "ttl", 1, 3);
    let t = s.topic("ttl");
    assert_eq!(t["earliest_seq"], json!(4), "{t}");
    assert_eq!(t["count"], json!(1), "{t}");
}

#[test]
fn tighter_ttl_applies_at_once() {
    let s = Server::start(1);
    s.append_n("tt", 3);
    std::thread::sleep(Duration::from_millis(500));
    let (st, v) = s.put("/v0/topics/tt", &json!({"ttl_ms": 200}));
    assert_eq!(st, 200, "{v}");
    let v = s.diff("tt", json!({"from_seq": 0}));
    assert_eq!(records(&v).len(), 0, "{v}");
    assert_tombstone(&v, "ttl", 1, 3);
    assert_eq!(v["caught_up"], json!(true), "{v}");
}

#[test]
fn cap_and_ttl_losses_are_mixed() {
    let s = Server::start(1);
    assert_eq!(
        s.put("/v0/topics/mx", &json!({"cap_records": 3, "ttl_ms": 400}))
            .0,
        201
    );
    s.append_n("mx", 5); // cap evicts 1..2
    std::thread::sleep(Duration::from_millis(800)); // ttl expires 3..5
    s.append("mx", json!([{"data": "new"}]));
    let v = s.diff("mx", json!({"from_seq": 0}));
    assert_tombstone(&v, "mixed", 1, 5);
    assert_eq!(seqs_of(records(&v)), vec![6]);
}

#[test]
fn deletes_move_earliest_but_never_make_tombstones() {
    let s = Server::start(1);
    assert_eq!(s.put("/v0/topics/dt", &json!({"cap_records": 100})).0, 201);
    s.append_n("dt", 6);
    let (st, _) = s.json_post("/v0/topics/dt/delete", &json!({"before_seq": 5}));
    assert_eq!(st, 200);
    let v = s.diff("dt", json!({"from_seq": 0}));
    assert!(v["tombstone"].is_null(), "{v}");
    assert_eq!(v["earliest_seq"], json!(5), "{v}");
    assert_eq!(seqs_of(records(&v)), vec![5, 6]);
}

#[test]
fn recreated_tombstone_counts_loss_in_the_new_instance() {
    let s = Server::start(2);
    s.append_n("rn", 10);
    assert_eq!(s.delete("/v0/topics/rn").1["deleted"], json!(true));
    let (st, v) = s.json_post(
        "/v0/topics/rn",
        &json!({"records": [{"data": 1}], "config": {"cap_records": 2}}),
    );
    assert_eq!(st, 201, "{v}");
    s.append_n("rn", 4); // seqs 2..5; cap keeps 4..5
    let v = s.diff("rn", json!({"from_seq": 10}));
    assert_eq!(v["tombstone"]["reason"], json!("recreated"), "{v}");
    assert_eq!(v["tombstone"]["gap_from"], json!(1), "{v}");
    assert_eq!(
        v["tombstone"]["gap_to"],
        json!(3),
        "gap_to = earliest_seq - 1: {v}"
    );
    assert_eq!(seqs_of(records(&v)), vec![4, 5], "{v}");
}
