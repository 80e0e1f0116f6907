//! Deleting records (SPEC §5): before_seq, tag Eq / Glob / bare string, AND, untagged records,
//! point-in-time semantics, response shape, bad requests.

mod common;

use common::*;
use serde_json::{json, Value};

/// Writes records with the given tags ("" = untagged), data = seq.
fn seed(s: &Server, topic: &str, tags: &[&str]) {
    let recs: Vec<Value> = tags
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.is_empty() {
                json!({"data": i + 1})
            } else {
                json!({"data": i + 1, "tag": t})
            }
        })
        .collect();
    s.append(topic, Value::Array(recs));
}

fn del(s: &Server, topic: &str, body: Value) -> Value {
    let (st, v) = s.json_post(&format!("/v0/topics/{topic}/delete"), &body);
    assert_eq!(st, 200, "delete {body}: {v}");
    assert_eq!(v["topic"], json!(topic), "{v}");
    for k in ["deleted", "earliest_seq", "head_seq", "count", "bytes"] {
        assert!(v[k].is_u64(), "delete response {k}: {v}");
    }
    assert_perf(&v);
    v
}

fn live(s: &Server, topic: &str) -> Vec<u64> {
    seqs_of(&s.diff_all(topic))
}

#[test]
fn delete_before_seq() {
    let s = Server::start(2);
    s.append_n("b", 10);
    let v = del(&s, "b", json!({"before_seq": 4}));
    assert_eq!(v["deleted"], json!(3), "{v}");
    assert_eq!(v["earliest_seq"], json!(4), "{v}");
    assert_eq!(v["head_seq"], json!(10), "{v}");
    assert_eq!(v["count"], json!(7), "{v}");
    assert_eq!(v["bytes"], json!(7 * r#"{"i":0}"#.len()), "{v}");
    assert_eq!(live(&s, "b"), (4..=10).collect::<Vec<_>>());
    let d = s.diff("b", json!({"from_seq": 0}));
    assert!(d["tombstone"].is_null(), "deletes are silent: {d}");
    assert_eq!(d["earliest_seq"], json!(4), "{d}");

    let v = del(&s, "b", json!({"before_seq": 4}));
    assert_eq!(v["deleted"], json!(0), "{v}");
    let v = del(&s, "b", json!({"before_seq": 0}));
    assert_eq!(v["deleted"], json!(0), "{v}");
    let v = del(&s, "b", json!({"before_seq": 1000}));
    assert_eq!(v["deleted"], json!(7), "{v}");
    assert_eq!(v["count"], json!(0), "{v}");
    assert_eq!(v["bytes"], json!(0), "{v}");
    assert_eq!(v["head_seq"], json!(10), "head never moves back: {v}");
    assert_eq!(v["earliest_seq"], json!(11), "empty: head + 1: {v}");
    let t = s.topic("b");
    assert_eq!(t["earliest_seq"], json!(11), "{t}");
    assert_eq!(t["next_seq"], json!(11), "{t}");
    let w = s.append("b", json!([{"data": "after"}]));
    assert_eq!(w["seqs"], json!([11]), "seqs are never reused: {w}");
    assert_eq!(live(&s, "b"), vec![11]);
}

#[test]
fn delete_match_eq_and_bare_string() {
    let s = Server::start(1);
    seed(&s, "e", &["x", "xy", "X", "", "x", "y", "x*"]);
    let v = del(&s, "e", json!({"match": ["tag", "Eq", "x"]}));
    assert_eq!(v["deleted"], json!(2), "exact, case-sensitive: {v}");
    assert_eq!(live(&s, "e"), vec![2, 3, 4, 6, 7]);
    let v = del(&s, "e", json!({"match": "y"}));
    assert_eq!(v["deleted"], json!(1), "bare string means Eq: {v}");
    let v = del(&s, "e", json!({"match": "x*"}));
    assert_eq!(v["deleted"], json!(1), "Eq does not glob: {v}");
    assert_eq!(live(&s, "e"), vec![2, 3, 4]);
    let v = del(&s, "e", json!({"match": ["tag", "Eq", "nope"]}));
    assert_eq!(v["deleted"], json!(0), "{v}");
    assert_eq!(v["count"], json!(3), "{v}");
    assert_eq!(v["earliest_seq"], json!(2), "{v}");
}

#[test]
fn delete_match_glob_prefix() {
    let s = Server::start(2);
    seed(
        &s,
        "g",
        &[
            "order-1",
            "order-22",
            "order",
            "Order-3",
            "",
            "orders",
            "x-order-4",
            "order-",
        ],
    );
    let v = del(&s, "g", json!({"match": ["tag", "Glob", "order-*"]}));
    assert_eq!(v["deleted"], json!(3), "{v}");
    assert_eq!(live(&s, "g"), vec![3, 4, 5, 6, 7]);
    let v = del(&s, "g", json!({"match": ["tag", "Glob", "order*"]}));
    assert_eq!(v["deleted"], json!(2), "{v}");
    assert_eq!(live(&s, "g"), vec![4, 5, 7]);
}

#[test]
fn delete_untagged_never_match() {
    let s = Server::start(1);
    seed(&s, "u", &["", "a", "", "b", ""]);
    let v = del(&s, "u", json!({"match": ["tag", "Glob", "*"]}));
    assert_eq!(
        v["deleted"],
        json!(2),
        "'*' matches every tagged record only: {v}"
    );
    assert_eq!(live(&s, "u"), vec![1, 3, 5]);
    // An empty tag may be rejected, but it never matches an untagged record.
    for m in [json!(["tag", "Eq", ""]), json!("")] {
        let r = s.json_post("/v0/topics/u/delete", &json!({ "match": m }));
        if r.0 == 200 {
            assert_eq!(
                r.1["deleted"],
                json!(0),
                "untagged records never match: {}",
                r.1
            );
        } else {
            assert_error(&r, 400, "invalid_request");
        }
    }
    assert_eq!(live(&s, "u"), vec![1, 3, 5]);
}

#[test]
fn delete_before_seq_and_match_are_anded() {
    let s = Server::start(2);
    seed(&s, "and", &["x", "y", "x", "", "x", "x", "y"]);
    let v = del(&s, "and", json!({"before_seq": 5, "match": "x"}));
    assert_eq!(v["deleted"], json!(2), "{v}");
    assert_eq!(live(&s, "and"), vec![2, 4, 5, 6, 7]);
    assert_eq!(v["earliest_seq"], json!(2), "{v}");
    let v = del(
        &s,
        "and",
        json!({"before_seq": 7, "match": ["tag", "Glob", "y*"]}),
    );
    assert_eq!(v["deleted"], json!(1), "{v}");
    assert_eq!(live(&s, "and"), vec![4, 5, 6, 7]);
    assert_eq!(v["earliest_seq"], json!(4), "{v}");
}

#[test]
fn delete_requires_a_criterion_and_valid_match() {
    let s = Server::start(1);
    seed(&s, "r", &["a", "b"]);
    let mut checks = Checks::new();
    for body in [
        json!({}),
        json!({"unrelated": 1}),
        json!({"before_seq": "3"}),
        json!({"before_seq": -1}),
        json!({"match": 5}),
        json!({"match": ["tag", "Regex", "a.*"]}),
        json!({"match": ["seq", "Eq", "a"]}),
        json!({"match": ["tag", "Eq"]}),
        json!({"match": ["tag", "Eq", 5]}),
        json!({"match": ["tag", "Glob", "a*b*"]}),
        json!({"match": ["tag", "Glob", "*a"]}),
        json!({"match": {"tag": "a"}}),
        json!([1]),
    ] {
        let r = s.json_post("/v0/topics/r/delete", &body);
        checks.error(&body, &r, 400, "invalid_request");
    }
    checks.finish();
    assert_eq!(live(&s, "r"), vec![1, 2], "bad deletes delete nothing");
}

#[test]
fn delete_is_point_in_time() {
    let s = Server::start(2);
    seed(&s, "p", &["job", "job", "other"]);
    let v = del(&s, "p", json!({"match": "job"}));
    assert_eq!(v["deleted"], json!(2));
    s.append("p", json!([{"data": "later", "tag": "job"}]));
    let recs = s.diff_all("p");
    assert_eq!(
        seqs_of(&recs),
        vec![3, 4],
        "a later record with the same tag stays"
    );
    assert_eq!(recs[1]["$tag"], json!("job"));
    assert_eq!(recs[1]["data"], json!("later"));

    let v = del(&s, "p", json!({"before_seq": 4}));
    assert_eq!(v["deleted"], json!(1));
    s.append_n("p", 2);
    assert_eq!(live(&s, "p"), vec![4, 5, 6]);
    let t = s.topic("p");
    assert_eq!(t["count"], json!(3), "{t}");
    assert_eq!(t["earliest_seq"], json!(4), "{t}");
}

#[test]
fn delete_reports_bytes_of_what_is_left() {
    let s = Server::start(1);
    let body = br#"{"records":[{"data":"aaaa","tag":"a"},{"data":[1, 2],"meta":{"k":"v"},"tag":"b"},{"data":{ }}]}"#;
    assert_eq!(s.post_raw("/v0/topics/by", body).status, 201);
    let v = del(&s, "by", json!({"match": "a"}));
    let want = "[1, 2]".len() + r#"{"k":"v"}"#.len() + "{ }".len();
    assert_eq!(v["bytes"], json!(want), "{v}");
    assert_eq!(s.topic("by")["bytes"], json!(want));
}
