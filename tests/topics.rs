//! The control plane (SPEC §2): PUT / GET / list / DELETE topics, and topic names (§1).

mod common;

use common::*;
use serde_json::{json, Value};

fn assert_default_config(cfg: &Value, durability: &str) {
    for (k, want) in [
        ("type", json!("log")),
        ("ttl_ms", json!(0)),
        ("cap_records", json!(0)),
        ("cap_bytes", json!(0)),
        ("discard", json!("old")),
        ("durability", json!(durability)),
        ("durable", json!(durability == "fsync")),
        ("priority", Value::Null),
        ("auto_priority", json!(true)),
        ("auto_create", json!(true)),
        ("idempotency_window_ms", json!(120000)),
        ("dedupe_node", json!(true)),
    ] {
        assert!(cfg.get(k).is_some(), "config.{k} missing in {cfg}");
        assert_eq!(cfg[k], want, "config.{k} in {cfg}");
    }
}

#[test]
fn put_creates_then_identical_is_noop_then_change_applies() {
    let s = Server::start(1);
    let (st, v) = s.put("/v0/topics/t", &json!({}));
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["topic"], json!("t"));
    assert_eq!(v["created"], json!(true));
    assert_default_config(&v["config"], "disk");
    assert_perf(&v);
    let created_cfg = v["config"].clone();

    let (st, v) = s.put("/v0/topics/t", &json!({}));
    assert_eq!(st, 200, "identical PUT: {v}");
    assert_eq!(v["created"], json!(false), "{v}");
    assert_eq!(v["config"], created_cfg, "{v}");
    assert_perf(&v);

    let (st, v) = s.put("/v0/topics/t", &json!({"ttl_ms": 60000, "cap_records": 10}));
    assert_eq!(st, 200, "changing PUT: {v}");
    assert_eq!(v["created"], json!(false), "{v}");
    assert_eq!(v["config"]["ttl_ms"], json!(60000), "{v}");
    assert_eq!(v["config"]["cap_records"], json!(10), "{v}");
    assert_eq!(v["config"]["discard"], json!("old"), "{v}");
    assert_eq!(v["config"]["durability"], json!("disk"), "{v}");

    // Absent fields keep their current values.
    let (st, v) = s.put("/v0/topics/t", &json!({"cap_bytes": 4096}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["config"]["ttl_ms"], json!(60000), "{v}");
    assert_eq!(v["config"]["cap_records"], json!(10), "{v}");
    assert_eq!(v["config"]["cap_bytes"], json!(4096), "{v}");

    let t = s.topic("t");
    assert_eq!(t["config"], v["config"], "GET shows the resolved config");

    // Unknown request fields are ignored.
    let (st, v) = s.put("/v0/topics/t", &json!({"some_future_field": [1, 2]}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["config"]["cap_bytes"], json!(4096), "{v}");
}

#[test]
fn put_changing_type_is_409_topic_exists_incompatible() {
    let s = Server::start(1);
    assert_eq!(s.put("/v0/topics/t", &json!({})).0, 201);
    s.append_n("t", 2);
    let (st, v) = s.put("/v0/topics/t", &json!({"type": "log"}));
    assert_eq!(st, 200, "same type is fine: {v}");
    let r = s.put("/v0/topics/t", &json!({"type": "queue", "ttl_ms": 5}));
    assert_error(&r, 409, "topic_exists_incompatible");
    let t = s.topic("t");
    assert_eq!(t["type"], json!("log"), "{t}");
    assert_eq!(
        t["config"]["ttl_ms"],
        json!(0),
        "a rejected PUT changes nothing: {t}"
    );
    assert_eq!(t["count"], json!(2), "{t}");
}

#[test]
fn put_durable_alias() {
    let s = Server::start(1);
    let (st, v) = s.put("/v0/topics/a", &json!({"durable": true}));
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["config"]["durability"], json!("fsync"), "{v}");
    assert_eq!(v["config"]["durable"], json!(true), "{v}");

    let (_, v) = s.put("/v0/topics/b", &json!({"durable": false}));
    assert_eq!(v["config"]["durability"], json!("disk"), "{v}");
    assert_eq!(v["config"]["durable"], json!(false), "{v}");

    // `durable` is used only when `durability` is absent.
    let (_, v) = s.put(
        "/v0/topics/c",
        &json!({"durability": "memory", "durable": true}),
    );
    assert_eq!(v["config"]["durability"], json!("memory"), "{v}");
    assert_eq!(v["config"]["durable"], json!(false), "{v}");

    // `durable` is always reported as durability == "fsync".
    let (_, v) = s.put("/v0/topics/d", &json!({"durability": "fsync"}));
    assert_eq!(v["config"]["durable"], json!(true), "{v}");
    let (_, v) = s.put("/v0/topics/e", &json!({"durability": "ephemeral"}));
    assert_eq!(v["config"]["durability"], json!("ephemeral"), "{v}");
    assert_eq!(v["config"]["durable"], json!(false), "{v}");

    let (st, v) = s.get("/v0/topics?prefix=d");
    assert_eq!(st, 200);
    assert_eq!(v["topics"][0]["durable"], json!(true), "{v}");
}

#[test]
fn put_rejects_bad_config_values_and_creates_nothing() {
    let s = Server::start(1);
    let mut checks = Checks::new();
    for body in [
        json!({"discard": "maybe"}),
        json!({"ttl_ms": -1}),
        json!({"ttl_ms": "1000"}),
        json!({"cap_records": 1.5}),
        json!({"cap_bytes": -3}),
        json!({"durability": "nope"}),
        json!({"durable": "yes"}),
        json!({"type": "stream"}),
        json!({"auto_create": "yes"}),
        json!({"dedupe_node": 1}),
        json!({"idempotency_window_ms": -5}),
        json!([]),
        json!("config"),
        json!(42),
    ] {
        let r = s.put("/v0/topics/bad", &body);
        checks.error(format!("PUT {body}"), &r, 400, "invalid_request");
        let r = s.get("/v0/topics/bad");
        checks.error(format!("after PUT {body}"), &r, 404, "topic_not_found");
        if r.0 == 200 {
            s.delete("/v0/topics/bad");
        }
    }
    checks.finish();
}

#[test]
fn put_priority_is_clamped() {
    let s = Server::start(1);
    let (st, v) = s.put("/v0/topics/hi", &json!({"priority": 5000}));
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["config"]["priority"], json!(1000), "{v}");
    let (st, v) = s.put("/v0/topics/lo", &json!({"priority": -5000}));
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["config"]["priority"], json!(-1000), "{v}");
    let (_, v) = s.put("/v0/topics/lo", &json!({"priority": 7}));
    assert_eq!(v["config"]["priority"], json!(7), "{v}");
}

#[test]
fn get_topic_reports_state() {
    let s = Server::start(2);
    let t0 = now_ms();
    assert_eq!(s.put("/v0/topics/st", &json!({})).0, 201);
    let v = s.topic("st");
    for k in [
        "topic",
        "type",
        "head_seq",
        "earliest_seq",
        "next_seq",
        "count",
        "bytes",
        "config",
        "effective_priority",
        "last_write_ts",
        "last_read_ts",
    ] {
        assert!(v.get(k).is_some(), "GET topic lacks {k}: {v}");
    }
    assert_eq!(v["topic"], json!("st"));
    assert_eq!(v["type"], json!("log"));
    assert_eq!(v["head_seq"], json!(0), "{v}");
    assert_eq!(v["earliest_seq"], json!(1), "{v}");
    assert_eq!(v["next_seq"], json!(1), "{v}");
    assert_eq!(v["count"], json!(0), "{v}");
    assert_eq!(v["bytes"], json!(0), "{v}");
    assert!(v["effective_priority"].is_number(), "{v}");
    assert_default_config(&v["config"], "disk");
    assert_perf(&v);

    let d1 = r#"{"k": "v"}"#;
    let d2 = "12345";
    let m2 = r#"{"m":1}"#;
    let body =
        format!(r#"{{"records":[{{"data":{d1}}},{{"data":{d2},"meta":{m2}}},{{"data":null}}]}}"#);
    let r = s.post_raw("/v0/topics/st", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = s.topic("st");
    assert_eq!(v["head_seq"], json!(3), "{v}");
    assert_eq!(v["earliest_seq"], json!(1), "{v}");
    assert_eq!(v["next_seq"], json!(4), "{v}");
    assert_eq!(v["count"], json!(3), "{v}");
    let bytes = d1.len() + d2.len() + m2.len() + "null".len();
    assert_eq!(
        v["bytes"],
        json!(bytes),
        "bytes = len(data) + len(meta): {v}"
    );
    let lw = v["last_write_ts"].as_u64().expect("last_write_ts integer");
    assert!(lw + 1000 >= t0 && lw <= now_ms() + 1000, "{v}");

    s.diff("st", json!({}));
    let v = s.topic("st?touch=false");
    let lr = v["last_read_ts"]
        .as_u64()
        .expect("last_read_ts after a diff");
    assert!(lr + 1000 >= t0 && lr <= now_ms() + 1000, "{v}");
}

#[test]
fn missing_topic_is_404_and_reads_never_create() {
    let s = Server::start(2);
    for _ in 0..2 {
        let r = s.get("/v0/topics/nope");
        assert_error(&r, 404, "topic_not_found");
        let r = s.json_post("/v0/topics/nope/diff", &json!({"from_seq": 0}));
        assert_error(&r, 404, "topic_not_found");
        let r = s.json_post(
            "/v0/topics/nope/diff",
            &json!({"from_seq": 0, "wait_ms": 50}),
        );
        assert_error(&r, 404, "topic_not_found");
        let r = s.json_post("/v0/topics/nope/delete", &json!({"before_seq": 10}));
        assert_error(&r, 404, "topic_not_found");
    }
    let (st, v) = s.get("/v0/topics");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["topics"], json!([]), "nothing was created: {v}");
}

fn list_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "a",
        "a-1",
        "a.1",
        "a0",
        "a:1",
        "aA",
        "a_1",
        "aa",
        "B",
        "b",
        "Z9",
        "0x",
        "9",
        "A.b",
        "orders",
        "orders:tenantA",
        "orders:tenantB",
        "orders-x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for i in 0..31 {
        names.push(format!("t-{i:03}"));
    }
    names
}

fn list_in_byte_order(shards: usize) {
    let s = Server::start(shards);
    let names = list_names();
    assert_eq!(names.len(), 49);
    for (i, n) in names.iter().enumerate() {
        if i % 2 == 0 {
            let (st, v) = s.put(&format!("/v0/topics/{n}"), &json!({}));
            assert_eq!(st, 201, "{n}: {v}");
        } else {
            s.append_n(n, 1 + i % 3);
        }
    }
    let mut sorted = names.clone();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));

    let pages = list_pages(&s, "page_size=7");
    assert_eq!(pages.len(), 7, "49 topics in pages of 7: {pages:?}");
    assert!(pages.iter().all(|p| p.len() == 7), "{pages:?}");
    let all: Vec<String> = pages.concat();
    assert_eq!(all, sorted, "byte order across all shards");

    let pages = list_pages(&s, "page_size=10");
    assert_eq!(
        pages.iter().map(|p| p.len()).collect::<Vec<_>>(),
        vec![10, 10, 10, 10, 9]
    );
    assert_eq!(pages.concat(), sorted);

    // Entry shape.
    let (st, v) = s.get("/v0/topics?prefix=a-1");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["topics"].as_array().unwrap().len(), 1, "{v}");
    let e = &v["topics"][0];
    for k in [
        "topic",
        "head_seq",
        "earliest_seq",
        "count",
        "bytes",
        "durable",
        "effective_priority",
    ] {
        assert!(e.get(k).is_some(), "list entry lacks {k}: {e}");
    }
    // "a-1" is names[1]: appended 2 records of {"i":0},{"i":1}.
    assert_eq!(e["head_seq"], json!(2), "{e}");
    assert_eq!(e["earliest_seq"], json!(1), "{e}");
    assert_eq!(e["count"], json!(2), "{e}");
    assert_eq!(e["bytes"], json!(14), "{e}");
    assert_eq!(e["durable"], json!(false), "{e}");
    assert!(v.get("next_cursor").is_none_or(|c| c.is_null()), "{v}");
    assert_perf(&v);

    // Prefix, with pagination.
    let pages = list_pages(&s, "prefix=orders&page_size=2");
    assert_eq!(
        pages.concat(),
        vec!["orders", "orders-x", "orders:tenantA", "orders:tenantB"]
    );
    let pages = list_pages(&s, "prefix=t-0&page_size=4");
    let want: Vec<String> = (0..31).map(|i| format!("t-{i:03}")).collect();
    assert_eq!(pages.concat(), want);
    let pages = list_pages(&s, "prefix=zzz");
    assert_eq!(pages, vec![Vec::<String>::new()]);
}

#[test]
fn list_topics_in_byte_order_one_shard() {
    list_in_byte_order(1);
}

#[test]
fn list_topics_in_byte_order_two_shards() {
    list_in_byte_order(2);
}

#[test]
fn list_topics_default_and_max_page_size() {
    let s = Server::start(2);
    let mut c = s.client();
    for i in 0..130 {
        let (st, v) = c.put(&format!("/v0/topics/p-{i:03}"), &json!({}));
        assert_eq!(st, 201, "{v}");
    }
    let pages = list_pages(&s, "prefix=p-");
    assert_eq!(
        pages.iter().map(|p| p.len()).collect::<Vec<_>>(),
        vec![100, 30],
        "default page_size is 100"
    );
    let pages = list_pages(&s, "page_size=1000");
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0].len(), 130);

    // "max 1000": either clamped or rejected as out of range.
    let r = s.get("/v0/topics?page_size=1001");
    if r.0 == 200 {
        assert!(r.1["topics"].as_array().unwrap().len() <= 1000, "{}", r.1);
    } else {
        assert_error(&r, 400, "invalid_request");
    }
    assert_error(&s.get("/v0/topics?page_size=abc"), 400, "invalid_request");
    assert_error(&s.get("/v0/topics?page_size=-1"), 400, "invalid_request");
}

#[test]
fn delete_topic_if_empty_and_absent() {
    let s = Server::start(1);
    s.append_n("full", 3);
    let r = s.delete("/v0/topics/full?if_empty=true");
    assert_error(&r, 409, "topic_not_empty");
    assert_eq!(s.topic("full")["count"], json!(3));

    let (st, v) = s.delete("/v0/topics/full");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["topic"], json!("full"), "{v}");
    assert_eq!(v["deleted"], json!(true), "{v}");
    assert_eq!(v["routers_removed"], json!([]), "{v}");
    assert_perf(&v);
    assert_error(&s.get("/v0/topics/full"), 404, "topic_not_found");
    assert_error(
        &s.json_post("/v0/topics/full/diff", &json!({})),
        404,
        "topic_not_found",
    );
    let (_, v) = s.get("/v0/topics");
    assert_eq!(v["topics"], json!([]), "{v}");

    let (st, v) = s.delete("/v0/topics/full");
    assert_eq!(st, 200, "deleting an absent topic: {v}");
    assert_eq!(v["deleted"], json!(false), "{v}");

    // if_empty succeeds on a topic never written and on one whose records were all deleted.
    assert_eq!(s.put("/v0/topics/fresh", &json!({})).0, 201);
    let (st, v) = s.delete("/v0/topics/fresh?if_empty=true");
    assert_eq!((st, &v["deleted"]), (200, &json!(true)), "{v}");
    s.append_n("emptied", 2);
    let (st, v) = s.json_post("/v0/topics/emptied/delete", &json!({"before_seq": 3}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["count"], json!(0), "{v}");
    let (st, v) = s.delete("/v0/topics/emptied?if_empty=true");
    assert_eq!((st, &v["deleted"]), (200, &json!(true)), "{v}");
}

fn recreate(shards: usize) {
    let s = Server::start(shards);
    s.append_n("rc", 3);
    let (st, v) = s.json_post(
        "/v0/topics/rc",
        &json!({"idempotency_key": "old-key", "records": [{"data": "old"}]}),
    );
    assert_eq!((st, &v["seqs"]), (200, &json!([4])), "{v}");
    s.append_n("other", 2);
    assert_eq!(s.delete("/v0/topics/rc").0, 200);
    let (st, v) = s.json_post(
        "/v0/topics/rc",
        &json!({"records": [{"data": "new-1"}, {"data": "new-2"}]}),
    );
    assert_eq!(st, 201, "the write re-creates the topic: {v}");
    assert_eq!(v["created"], json!(true), "{v}");
    assert_eq!(v["seqs"], json!([1, 2]), "seqs restart at 1: {v}");
    // Dedupe state went with the old instance.
    let (st, v) = s.json_post(
        "/v0/topics/rc",
        &json!({"idempotency_key": "old-key", "records": [{"data": "new-3"}]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["deduped"],
        json!(false),
        "old instance's key must be gone: {v}"
    );
    assert_eq!(v["seqs"], json!([3]), "{v}");

    let v = s.diff("rc", json!({"from_seq": 4}));
    let t = &v["tombstone"];
    assert_eq!(t["reason"], json!("recreated"), "{v}");
    assert_eq!(t["gap_from"], json!(1), "{v}");
    assert_eq!(t["gap_to"], json!(0), "{v}");
    assert_eq!(t["earliest_seq"], json!(1), "{v}");
    assert_eq!(t["head_seq"], json!(3), "{v}");
    assert_eq!(
        seqs_of(v["records"].as_array().unwrap()),
        vec![1, 2, 3],
        "{v}"
    );
    assert_eq!(v["records"][0]["data"], json!("new-1"));
    assert_eq!(v["next_from_seq"], json!(3), "{v}");
    assert_eq!(v["caught_up"], json!(true), "{v}");

    let v = s.diff("rc", json!({"from_seq": 0}));
    assert!(v["tombstone"].is_null(), "{v}");
    assert_eq!(
        s.topic("other")["count"],
        json!(2),
        "other topics untouched"
    );
}

#[test]
fn recreated_by_put_old_cursor_gets_tombstone_and_nothing() {
    let s = Server::start(2);
    s.append_n("rp", 5);
    assert_eq!(s.delete("/v0/topics/rp").0, 200);
    let (st, v) = s.put("/v0/topics/rp", &json!({}));
    assert_eq!(st, 201, "{v}");
    let t = s.topic("rp");
    assert_eq!(t["head_seq"], json!(0), "{t}");
    let v = s.diff("rp", json!({"from_seq": 5}));
    assert_eq!(v["tombstone"]["reason"], json!("recreated"), "{v}");
    assert_eq!(v["tombstone"]["gap_from"], json!(1), "{v}");
    assert_eq!(v["tombstone"]["gap_to"], json!(0), "{v}");
    assert_eq!(v["records"], json!([]), "{v}");
    assert_eq!(v["next_from_seq"], json!(0), "{v}");
    assert_eq!(v["caught_up"], json!(true), "{v}");
}

#[test]
fn recreated_topic_restarts_seqs_one_shard() {
    recreate(1);
}

#[test]
fn recreated_topic_restarts_seqs_two_shards() {
    recreate(2);
}

#[test]
fn topic_names_valid_and_invalid() {
    let s = Server::start(2);
    let long_ok = "x".repeat(255);
    let valid = [
        "a",
        "Z",
        "0",
        "orders:tenantA",
        "a.b_c-d:e",
        "A-",
        "a..b",
        long_ok.as_str(),
    ];
    for n in valid {
        let (st, v) = s.put(&format!("/v0/topics/{n}"), &json!({}));
        assert_eq!(st, 201, "valid name {n:?}: {v}");
        assert_eq!(v["topic"], json!(n));
        let v = s.append(n, json!([{"data": 1}]));
        assert_eq!(v["topic"], json!(n));
        assert_eq!(s.topic(n)["topic"], json!(n));
    }

    let long_bad = "y".repeat(256);
    let invalid = [
        long_bad.as_str(),
        ".x",
        "-x",
        "_x",
        ":x",
        "a%20b",
        "a%2Fb",
        "%C3%A9",
        "a*b",
        "a@b",
        "a,b",
        "a%00b",
        "%2E%2E",
    ];
    let mut checks = Checks::new();
    for n in invalid {
        let path = format!("/v0/topics/{n}");
        let bad = "invalid_request";
        checks.error(format!("PUT {path}"), &s.put(&path, &json!({})), 400, bad);
        checks.error(format!("GET {path}"), &s.get(&path), 400, bad);
        let r = s.json_post(&path, &json!({"records": [{"data": 1}]}));
        checks.error(format!("POST {path}"), &r, 400, bad);
        let r = s.json_post(&format!("{path}/diff"), &json!({}));
        checks.error(format!("POST {path}/diff"), &r, 400, bad);
        let r = s.json_post(&format!("{path}/delete"), &json!({"before_seq": 1}));
        checks.error(format!("POST {path}/delete"), &r, 400, bad);
        checks.error(format!("DELETE {path}"), &s.delete(&path), 400, bad);
    }
    checks.finish();
    // An empty name: a bad name or no such route, but never a success.
    let (st, v) = s.put("/v0/topics/", &json!({}));
    assert!(
        st == 400 || st == 404 || st == 405,
        "PUT /v0/topics/: {st} {v}"
    );
    assert_error_shape(&v);

    let pages = list_pages(&s, "page_size=1000");
    assert_eq!(
        pages.concat().len(),
        valid.len(),
        "only valid names exist: {pages:?}"
    );
}

#[test]
fn topic_names_are_case_sensitive() {
    let s = Server::start(2);
    s.append_n("Orders", 1);
    s.append_n("orders", 2);
    assert_eq!(s.topic("Orders")["count"], json!(1));
    assert_eq!(s.topic("orders")["count"], json!(2));
    assert_error(&s.get("/v0/topics/ORDERS"), 404, "topic_not_found");
}
