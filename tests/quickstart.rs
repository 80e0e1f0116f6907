//! The Quickstart (seeds/000) end to end, with the exact shapes and numbers it shows.

mod common;

use common::*;
use serde_json::json;

const ORDER1: &str = r#"{ "sku": "AEROPRESS-GO", "qty": 1, "total": 3499 }"#;
const ORDER2: &str = r#"{ "sku": "FELLOW-KETTLE", "qty": 1, "total": 16500 }"#;

fn quickstart(shards: usize) {
    let s = Server::start(shards);
    let mut c = s.client();
    let t0 = now_ms();

    // Create a topic.
    let r = c.request(
        "PUT",
        "/v0/topics/orders",
        &[("content-type", "application/json")],
        Some(br#"{ "durable": true, "cap_records": 0, "ttl_ms": 0 }"#),
    );
    assert_eq!(r.status, 201, "create orders: {}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "content-type {:?}",
        r.header("content-type")
    );
    let v = r.json();
    assert_eq!(v["topic"], json!("orders"), "{v}");
    assert_eq!(v["created"], json!(true), "{v}");
    let cfg = &v["config"];
    for (k, want) in [
        ("ttl_ms", json!(0)),
        ("cap_records", json!(0)),
        ("cap_bytes", json!(0)),
        ("discard", json!("old")),
        ("durable", json!(true)),
        ("durability", json!("fsync")),
        ("auto_create", json!(true)),
        ("idempotency_window_ms", json!(120000)),
        ("dedupe_node", json!(true)),
    ] {
        assert_eq!(cfg[k], want, "config.{k} in {v}");
    }
    assert_perf(&v);

    // Write records.
    let body = format!(
        "{{ \"records\": [\n{{ \"data\": {ORDER1}, \"tag\": \"order-7731\" }},\n{{ \"data\": {ORDER2}, \"tag\": \"order-7732\" }}\n] }}"
    );
    let r = c.post_raw("/v0/topics/orders", body.as_bytes());
    assert_eq!(r.status, 200, "write: {}", r.text());
    let v = r.json();
    assert_eq!(v["topic"], json!("orders"), "{v}");
    assert_eq!(v["first_seq"], json!(1), "{v}");
    assert_eq!(v["last_seq"], json!(2), "{v}");
    assert_eq!(v["seqs"], json!([1, 2]), "{v}");
    assert_eq!(v["head_seq"], json!(2), "{v}");
    assert_eq!(v["count"], json!(2), "{v}");
    assert_eq!(v["created"], json!(false), "{v}");
    assert_eq!(v["deduped"], json!(false), "{v}");
    assert_write_perf(&v);

    // Read from a cursor.
    let r = c.post_raw(
        "/v0/topics/orders/diff",
        br#"{ "from_seq": 0, "limit": 500 }"#,
    );
    assert_eq!(r.status, 200, "diff: {}", r.text());
    let v = r.json();
    assert_eq!(v["topic"], json!("orders"), "{v}");
    let recs = v["records"].as_array().expect("records array");
    assert_eq!(recs.len(), 2, "{v}");
    let t1 = now_ms();
    let mut last_ts = 0;
    for (i, (rec, tag)) in recs.iter().zip(["order-7731", "order-7732"]).enumerate() {
        assert_eq!(keys(rec), vec!["$seq", "$tag", "$ts", "data"], "{rec}");
        assert_eq!(rec["$seq"], json!(i as u64 + 1), "{rec}");
        assert_eq!(rec["$tag"], json!(tag), "{rec}");
        let ts = rec["$ts"].as_u64().expect("$ts is an integer");
        assert!(
            ts + 1000 >= t0 && ts <= t1 + 1000,
            "$ts {ts} not within [{t0}, {t1}]"
        );
        assert!(ts >= last_ts, "$ts decreased");
        last_ts = ts;
    }
    let raw = raw_records(&r.body);
    assert_eq!(raw[0]["data"], ORDER1, "data not byte-exact");
    assert_eq!(raw[1]["data"], ORDER2, "data not byte-exact");
    assert_eq!(v["next_from_seq"], json!(2), "{v}");
    assert_eq!(v["head_seq"], json!(2), "{v}");
    assert_eq!(v["earliest_seq"], json!(1), "{v}");
    assert_eq!(v["caught_up"], json!(true), "{v}");
    assert!(
        v.get("tombstone").is_some_and(|t| t.is_null()),
        "tombstone must be present and null: {v}"
    );
    assert_eq!(v["lag"], json!(0), "{v}");
    assert_perf(&v);

    // Delete records by tag.
    let r = c.post_raw(
        "/v0/topics/orders/delete",
        br#"{ "match": ["tag", "Eq", "order-7731"] }"#,
    );
    assert_eq!(r.status, 200, "delete: {}", r.text());
    let v = r.json();
    assert_eq!(v["topic"], json!("orders"), "{v}");
    assert_eq!(v["deleted"], json!(1), "{v}");
    assert_eq!(v["earliest_seq"], json!(2), "{v}");
    assert_eq!(v["head_seq"], json!(2), "{v}");
    assert_eq!(v["count"], json!(1), "{v}");
    assert_eq!(
        v["bytes"],
        json!(ORDER2.len()),
        "bytes = len(data) of the survivor: {v}"
    );
    assert_perf(&v);

    // The delete is immediate and silent.
    let r = c.post_raw(
        "/v0/topics/orders/diff",
        br#"{ "from_seq": 0, "limit": 500 }"#,
    );
    let v = r.json();
    assert_eq!(seqs_of(v["records"].as_array().unwrap()), vec![2], "{v}");
    assert_eq!(raw_records(&r.body)[0]["data"], ORDER2);
    assert_eq!(v["earliest_seq"], json!(2), "{v}");
    assert_eq!(v["next_from_seq"], json!(2), "{v}");
    assert_eq!(v["caught_up"], json!(true), "{v}");
    assert!(v["tombstone"].is_null(), "deletes are silent: {v}");

    let (st, v) = c.get("/v0/topics/orders");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["head_seq"], json!(2), "{v}");
    assert_eq!(v["earliest_seq"], json!(2), "{v}");
    assert_eq!(v["next_seq"], json!(3), "{v}");
    assert_eq!(v["count"], json!(1), "{v}");
    assert_eq!(v["bytes"], json!(ORDER2.len()), "{v}");
    assert_eq!(v["config"]["durability"], json!("fsync"), "{v}");
}

#[test]
fn quickstart_one_shard() {
    quickstart(1);
}

#[test]
fn quickstart_two_shards() {
    quickstart(2);
}
