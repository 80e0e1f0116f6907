//! Restarts (SPEC §3, §5, §9): after a graceful stop (SIGTERM, exit 0) and after kill -9, every
//! record, config, delete and idempotency key survives and new seqs continue above the old head.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Everything observable about a topic that must survive a restart.
#[derive(Debug, PartialEq)]
struct TopicState {
    head_seq: Value,
    earliest_seq: Value,
    next_seq: Value,
    count: Value,
    bytes: Value,
    config: Value,
    records: Vec<BTreeMap<String, String>>,
}

fn state(s: &Server, topic: &str) -> TopicState {
    let t = s.topic(topic);
    TopicState {
        head_seq: t["head_seq"].clone(),
        earliest_seq: t["earliest_seq"].clone(),
        next_seq: t["next_seq"].clone(),
        count: t["count"].clone(),
        bytes: t["bytes"].clone(),
        config: t["config"].clone(),
        records: s.diff_all_raw(topic),
    }
}

const TOPICS: [&str; 6] = ["cfg", "logA", "logB", "logC", "again", "tenant:x"];

/// Builds varied state: configs (created and changed), tagged / noded / meta records with odd
/// bytes, deletes by tag and by seq, an idempotency key, a deleted topic and a recreated one.
/// Returns the original answer of the idempotent write.
fn populate(s: &Server, durability: &str) -> Value {
    let (st, v) = s.put(
        "/v0/topics/cfg",
        &json!({"durability": durability, "ttl_ms": 86_400_000u64, "cap_records": 1000,
                "cap_bytes": 10_000_000, "idempotency_window_ms": 600_000, "dedupe_node": false,
                "priority": 7, "auto_create": false}),
    );
    assert_eq!(st, 201, "{v}");
    let (st, v) = s.put(
        "/v0/topics/cfg",
        &json!({"cap_records": 2000, "discard": "reject"}),
    );
    assert_eq!(st, 200, "{v}");
    for t in ["logA", "logB", "logC", "again", "gone", "tenant:x"] {
        let (st, v) = s.put(
            &format!("/v0/topics/{t}"),
            &json!({"durability": durability}),
        );
        assert_eq!(st, 201, "{v}");
    }
    let mut c = s.client();
    for round in 0..5 {
        for t in ["cfg", "logA", "logB", "logC", "tenant:x"] {
            let body = format!(
                r#"{{"node":"n{round}","records":[
                    {{"data": {{"r":{round}, "t":"{t}",  "f":1.50}}, "tag":"tag-{round}"}},
                    {{"data": "plain \u00e9 {round}", "meta": {{ "m" : [{round}] }} }},
                    {{"data": null, "node": "own", "tag": "keep-{round}"}}
                ]}}"#
            );
            let r = c.post_raw(&format!("/v0/topics/{t}"), body.as_bytes());
            assert!(r.status == 200, "{t}: {}", r.text());
        }
    }
    let (st, idem) = c.json_post(
        "/v0/topics/logA",
        &json!({"idempotency_key": "restart-key", "records": [{"data": "idem-1"}, {"data": "idem-2"}]}),
    );
    assert_eq!(st, 200, "{idem}");
    assert_eq!(idem["seqs"], json!([16, 17]));
    for t in ["logA", "logB"] {
        let (st, v) = c.json_post(
            &format!("/v0/topics/{t}/delete"),
            &json!({"match": "tag-1"}),
        );
        assert_eq!((st, &v["deleted"]), (200, &json!(1)), "{v}");
        let (st, v) = c.json_post(
            &format!("/v0/topics/{t}/delete"),
            &json!({"match": ["tag", "Glob", "keep-*"], "before_seq": 10}),
        );
        assert_eq!((st, &v["deleted"]), (200, &json!(3)), "{v}");
    }
    let (st, v) = c.json_post("/v0/topics/logC/delete", &json!({"before_seq": 7}));
    assert_eq!((st, &v["deleted"]), (200, &json!(6)), "{v}");
    // "gone" is deleted for good; "again" is deleted and recreated.
    s.append_n("gone", 3);
    assert_eq!(s.delete("/v0/topics/gone").1["deleted"], json!(true));
    s.append_n("again", 4);
    assert_eq!(s.delete("/v0/topics/again").1["deleted"], json!(true));
    let (st, v) = c.json_post(
        "/v0/topics/again",
        &json!({"records": [{"data": "second life"}], "config": {"durability": durability}}),
    );
    assert_eq!((st, &v["seqs"]), (201, &json!([1])), "{v}");
    idem
}

fn snapshot(s: &Server) -> BTreeMap<&'static str, TopicState> {
    TOPICS.iter().map(|t| (*t, state(s, t))).collect()
}

fn verify(s: &Server, before: &BTreeMap<&'static str, TopicState>, idem: &Value) {
    for (t, want) in before {
        let got = state(s, t);
        assert_eq!(&got, want, "topic {t} changed across the restart");
    }
    assert_error(&s.get("/v0/topics/gone"), 404, "topic_not_found");
    let (_, v) = s.get("/v0/topics?page_size=1000");
    let names: Vec<&str> = v["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = TOPICS.to_vec();
    want.sort();
    assert_eq!(names, want, "{v}");

    // The idempotency key survives: the original seqs, nothing appended.
    let head = before["logA"].head_seq.as_u64().unwrap();
    let (st, v) = s.json_post(
        "/v0/topics/logA",
        &json!({"idempotency_key": "restart-key", "records": [{"data": "again?"}]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["deduped"], json!(true), "idempotency key lost: {v}");
    assert_eq!(v["seqs"], idem["seqs"], "{v}");
    assert_eq!(v["head_seq"], json!(head), "{v}");

    // The recreated topic's old cursor still gets a `recreated` tombstone.
    let d = s.diff("again", json!({"from_seq": 4}));
    assert_eq!(d["tombstone"]["reason"], json!("recreated"), "{d}");

    // The changed config still applies (auto_create false is only about creation).
    assert_eq!(before["cfg"].config["cap_records"], json!(2000));
    assert_eq!(before["cfg"].config["discard"], json!("reject"));
}

/// Appends one record to every topic; its seq must be head + 1. Updates `before`.
fn append_everywhere(s: &Server, before: &mut BTreeMap<&'static str, TopicState>) {
    for t in TOPICS {
        let head = before[t].head_seq.as_u64().unwrap();
        let v = s.append(t, json!([{"data": {"after": "restart"}, "tag": "new"}]));
        assert_eq!(
            v["seqs"],
            json!([head + 1]),
            "{t}: seqs continue above the old head: {v}"
        );
        before.insert(t, state(s, t));
    }
}

fn restart_cycle(shards: usize, durability: &str, graceful: bool) {
    let mut s = Server::start(shards);
    let idem = populate(&s, durability);
    let mut before = snapshot(&s);
    assert_eq!(before["logA"].head_seq, json!(17));
    assert_eq!(before["cfg"].config["durability"], json!(durability));

    for _ in 0..2 {
        if graceful {
            s.restart_graceful();
        } else {
            s.restart_kill9();
        }
        verify(&s, &before, &idem);
        append_everywhere(&s, &mut before);
    }
    // A third restart after the new appends.
    if graceful {
        s.restart_graceful();
    } else {
        s.restart_kill9();
    }
    verify(&s, &before, &idem);
}

#[test]
fn graceful_restart_keeps_everything_disk_two_shards() {
    restart_cycle(2, "disk", true);
}

#[test]
fn graceful_restart_keeps_everything_fsync_one_shard() {
    restart_cycle(1, "fsync", true);
}

#[test]
fn kill9_restart_keeps_everything_fsync_two_shards() {
    restart_cycle(2, "fsync", false);
}

#[test]
fn kill9_restart_keeps_everything_fsync_one_shard() {
    restart_cycle(1, "fsync", false);
}

#[test]
fn graceful_stop_exits_zero() {
    let mut s = Server::start(2);
    s.append_n("x", 3);
    let st = s.stop_graceful();
    assert!(
        st.success(),
        "SIGTERM must exit 0, got {st}\n{}",
        s.log_tail()
    );
    s.spawn_again();
    assert_eq!(s.topic("x")["count"], json!(3));
    s.append_n("x", 1);
    s.send_signal("INT");
    let st = s.wait_exit();
    assert!(
        st.success(),
        "SIGINT must exit 0, got {st}\n{}",
        s.log_tail()
    );
    s.spawn_again();
    assert_eq!(s.topic("x")["count"], json!(4));
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let mut s = Server::start(1);
    s.append_n("lp", 1);
    let mut c = s.client();
    let req = c.request_bytes(
        "POST",
        "/v0/topics/lp/diff",
        &[("Content-Type", "application/json")],
        Some(br#"{"from_seq":1,"wait_ms":2000}"#),
    );
    c.send_raw(&req).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.send_signal("TERM");
    let r = c
        .read_response()
        .expect("a parked request gets an answer, not a dropped connection");
    assert!(
        r.status == 200 || r.status == 503,
        "{} {}",
        r.status,
        r.text()
    );
    if r.status == 503 {
        assert_error_resp(&r, 503, "shutting_down");
    }
    let st = s.wait_exit();
    assert!(st.success(), "exit 0 after SIGTERM, got {st}");
}

#[test]
fn ephemeral_topic_keeps_config_and_head_not_records() {
    let mut s = Server::start(2);
    let (st, v) = s.put(
        "/v0/topics/eph",
        &json!({"durability": "ephemeral", "ttl_ms": 5000}),
    );
    assert_eq!(st, 201, "{v}");
    s.append_n("eph", 4);
    s.append_n("dur", 2);
    s.restart_graceful();

    let t = s.topic("eph");
    assert_eq!(t["config"]["durability"], json!("ephemeral"), "{t}");
    assert_eq!(t["config"]["ttl_ms"], json!(5000), "{t}");
    assert_eq!(t["head_seq"], json!(4), "the head persists: {t}");
    assert_eq!(
        t["count"],
        json!(0),
        "records are empty after a restart: {t}"
    );
    assert_eq!(t["earliest_seq"], json!(5), "{t}");
    let d = s.diff("eph", json!({"from_seq": 0}));
    assert_eq!(d["records"], json!([]), "{d}");
    assert_eq!(d["next_from_seq"], json!(4), "{d}");
    let tomb = &d["tombstone"];
    assert_eq!(tomb["reason"], json!("restart"), "{d}");
    assert_eq!(tomb["gap_from"], json!(1), "{d}");
    assert_eq!(tomb["gap_to"], json!(4), "{d}");
    let v = s.append("eph", json!([{"data": 1}]));
    assert_eq!(v["seqs"], json!([5]), "seqs are not reused: {v}");
    assert_eq!(s.topic("dur")["count"], json!(2));
}
