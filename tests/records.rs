//! Writing records (SPEC §3): lazy create, config on create, node/tag/meta, byte-exact data,
//! return_seqs, idempotency keys, atomic batches, seq/ts ordering, write performance fields.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[test]
fn append_lazily_creates_topic() {
    let s = Server::start(2);
    let (st, v) = s.json_post("/v0/topics/lazy", &json!({"records": [{"data": {"x": 1}}]}));
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["topic"], json!("lazy"), "{v}");
    assert_eq!(v["created"], json!(true), "{v}");
    assert_eq!(v["deduped"], json!(false), "{v}");
    assert_eq!(v["seqs"], json!([1]), "{v}");
    assert_eq!(v["first_seq"], json!(1), "{v}");
    assert_eq!(v["last_seq"], json!(1), "{v}");
    assert_eq!(v["head_seq"], json!(1), "{v}");
    assert_eq!(v["count"], json!(1), "{v}");
    assert_write_perf(&v);

    let (st, v) = s.json_post(
        "/v0/topics/lazy",
        &json!({"records": [{"data": 2}, {"data": 3}], "create": true}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["created"], json!(false), "{v}");
    assert_eq!(v["seqs"], json!([2, 3]), "{v}");
    assert_eq!(
        v["count"],
        json!(2),
        "count = records appended by this call: {v}"
    );
    assert_eq!(v["head_seq"], json!(3), "{v}");

    let t = s.topic("lazy");
    assert_eq!(
        t["config"]["durability"],
        json!("disk"),
        "lazy create uses defaults: {t}"
    );
}

#[test]
fn append_with_create_false_on_missing_topic_is_404() {
    let s = Server::start(1);
    let r = s.json_post(
        "/v0/topics/absent",
        &json!({"records": [{"data": 1}], "create": false}),
    );
    assert_error(&r, 404, "topic_not_found");
    assert_error(&s.get("/v0/topics/absent"), 404, "topic_not_found");
    // On an existing topic create:false is just a write.
    assert_eq!(s.put("/v0/topics/there", &json!({})).0, 201);
    let (st, v) = s.json_post(
        "/v0/topics/there",
        &json!({"records": [{"data": 1}], "create": false}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["seqs"], json!([1]), "{v}");
}

#[test]
fn append_config_applies_only_when_the_write_creates() {
    let s = Server::start(2);
    let cfg = json!({"durability": "fsync", "cap_records": 5000, "ttl_ms": 3600000});
    let (st, v) = s.json_post(
        "/v0/topics/cfg",
        &json!({"records": [{"data": 1}], "config": cfg}),
    );
    assert_eq!(st, 201, "{v}");
    assert_write_perf(&v);
    let t = s.topic("cfg");
    assert_eq!(t["config"]["durability"], json!("fsync"), "{t}");
    assert_eq!(t["config"]["durable"], json!(true), "{t}");
    assert_eq!(t["config"]["cap_records"], json!(5000), "{t}");
    assert_eq!(t["config"]["ttl_ms"], json!(3600000), "{t}");

    let (st, v) = s.json_post(
        "/v0/topics/cfg",
        &json!({"records": [{"data": 2}], "config": {"cap_records": 7, "durability": "memory"}}),
    );
    assert_eq!(st, 200, "{v}");
    let t = s.topic("cfg");
    assert_eq!(
        t["config"]["cap_records"],
        json!(5000),
        "config ignored on existing: {t}"
    );
    assert_eq!(t["config"]["durability"], json!("fsync"), "{t}");
}

#[test]
fn append_node_tag_meta_round_trip() {
    let s = Server::start(1);
    let (st, v) = s.json_post(
        "/v0/topics/nt",
        &json!({
            "node": "batch-node",
            "records": [
                {"data": {"n": 1}},
                {"data": {"n": 2}, "node": "own-node", "tag": "t-2"},
                {"data": {"n": 3}, "tag": "t-3", "meta": {"trace": "abc", "n": 3}},
            ]
        }),
    );
    assert_eq!(st, 201, "{v}");
    let (st, v) = s.json_post("/v0/topics/nt", &json!({"records": [{"data": null}]}));
    assert_eq!(st, 200, "{v}");

    let recs = s.diff_all("nt");
    assert_eq!(recs.len(), 4);
    assert_eq!(
        keys(&recs[0]),
        vec!["$node", "$seq", "$ts", "data"],
        "{}",
        recs[0]
    );
    assert_eq!(recs[0]["$node"], json!("batch-node"), "batch default node");
    assert_eq!(recs[0]["data"], json!({"n": 1}));
    assert_eq!(keys(&recs[1]), vec!["$node", "$seq", "$tag", "$ts", "data"]);
    assert_eq!(
        recs[1]["$node"],
        json!("own-node"),
        "record node overrides batch node"
    );
    assert_eq!(recs[1]["$tag"], json!("t-2"));
    assert_eq!(
        keys(&recs[2]),
        vec!["$node", "$seq", "$tag", "$ts", "data", "meta"]
    );
    assert_eq!(recs[2]["meta"], json!({"trace": "abc", "n": 3}));
    // Absent means absent, not null; data is always present, even when null.
    assert_eq!(keys(&recs[3]), vec!["$seq", "$ts", "data"], "{}", recs[3]);
    assert!(recs[3]["data"].is_null());
}

#[test]
fn append_data_and_meta_are_byte_exact() {
    let s = Server::start(2);
    let data = r#"{"b":1,  "a":[1.50, 2e3]}"#;
    let meta = r#"{ "z" : true,"a":"\u00e9\n" }"#;
    let odd = [
        data,
        r#"  "padded string"  "#,
        r#"123456789012345678901234567890.000"#,
        r#"-0.0"#,
        r#"1E+2"#,
        r#""\ud83d\ude00 \/ \u0041""#,
        "[ ]",
        "{\n\t\"nested\" : { \"deep\" : [ null , false ] }\n}",
        r#""é日本""#,
        "null",
    ];
    let recs: Vec<String> = odd.iter().map(|d| format!(r#"{{"data":{d}}}"#)).collect();
    let body = format!(
        r#"{{"records":[{{"data": {data} ,"meta":  {meta}, "tag":"x"}},{}]}}"#,
        recs.join(",")
    );
    let r = s.post_raw("/v0/topics/raw", body.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());

    let r = s.post_raw("/v0/topics/raw/diff", br#"{"from_seq":0}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let body_text = r.text();
    assert!(
        body_text.contains(data),
        "response body must contain the data bytes exactly: {body_text}"
    );
    assert!(body_text.contains(meta), "meta bytes: {body_text}");
    let raw = raw_records(&r.body);
    assert_eq!(raw.len(), odd.len() + 1);
    assert_eq!(raw[0]["data"], data);
    assert_eq!(raw[0]["meta"], meta);
    for (i, d) in odd.iter().enumerate() {
        assert_eq!(raw[i + 1]["data"], d.trim(), "record {} data", i + 2);
    }

    // bytes = len(data) + len(meta), of the stored (as sent) text.
    let want: usize = data.len() + meta.len() + odd.iter().map(|d| d.trim().len()).sum::<usize>();
    assert_eq!(s.topic("raw")["bytes"], json!(want));
}

#[test]
fn append_return_seqs_false_omits_seqs() {
    let s = Server::start(1);
    s.append_n("rs", 2);
    let (st, v) = s.json_post(
        "/v0/topics/rs?return_seqs=false",
        &json!({"records": [{"data": 1}, {"data": 2}, {"data": 3}]}),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v.get("seqs").is_none(), "seqs must be omitted: {v}");
    assert_eq!(v["first_seq"], json!(3), "{v}");
    assert_eq!(v["last_seq"], json!(5), "{v}");
    assert_eq!(v["head_seq"], json!(5), "{v}");
    assert_eq!(v["count"], json!(3), "{v}");
    let (_, v) = s.json_post(
        "/v0/topics/rs?return_seqs=true",
        &json!({"records": [{"data": 1}]}),
    );
    assert_eq!(v["seqs"], json!([6]), "{v}");
}

#[test]
fn idempotency_key_in_body() {
    let s = Server::start(2);
    let w = json!({"idempotency_key": "k1", "records": [{"data": "a"}, {"data": "b"}]});
    let (st, first) = s.json_post("/v0/topics/idem", &w);
    assert_eq!(st, 201, "{first}");
    assert_eq!(first["seqs"], json!([1, 2]));
    assert_eq!(first["deduped"], json!(false));

    let (st, v) = s.json_post("/v0/topics/idem", &w);
    assert_eq!(st, 200, "a repeat is 200: {v}");
    assert_eq!(v["deduped"], json!(true), "{v}");
    assert_eq!(v["seqs"], json!([1, 2]), "{v}");
    assert_eq!(v["first_seq"], json!(1), "{v}");
    assert_eq!(v["last_seq"], json!(2), "{v}");
    assert_eq!(v["count"], json!(2), "{v}");
    assert_eq!(v["head_seq"], json!(2), "{v}");
    assert_perf(&v);
    assert_eq!(s.topic("idem")["count"], json!(2), "nothing appended");

    s.append("idem", json!([{"data": "c"}]));
    // Same key, even with other records: the original answer with the current head.
    let (st, v) = s.json_post(
        "/v0/topics/idem",
        &json!({"idempotency_key": "k1", "records": [{"data": "zzz"}]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["deduped"], json!(true), "{v}");
    assert_eq!(v["seqs"], json!([1, 2]), "{v}");
    assert_eq!(v["head_seq"], json!(3), "current head: {v}");
    let recs = s.diff_all("idem");
    assert_eq!(
        recs.iter().map(|r| r["data"].clone()).collect::<Vec<_>>(),
        vec![json!("a"), json!("b"), json!("c")]
    );

    // Keys are per topic.
    let (st, v) = s.json_post("/v0/topics/idem2", &w);
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["deduped"], json!(false), "{v}");

    let long_key = "k".repeat(257);
    let r = s.json_post(
        "/v0/topics/idem",
        &json!({"idempotency_key": long_key, "records": [{"data": 1}]}),
    );
    assert_error(&r, 400, "invalid_request");
    let (st, v) = s.json_post(
        "/v0/topics/idem",
        &json!({"idempotency_key": "k".repeat(256), "records": [{"data": 1}]}),
    );
    assert_eq!(st, 200, "a 256-byte key is fine: {v}");
}

#[test]
fn idempotency_key_header_and_body_wins() {
    let s = Server::start(1);
    let mut c = s.client();
    let post = |c: &mut Client, key: Option<&str>, body: &Value| -> (u16, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(k) = key {
            h.push(("Idempotency-Key", k));
        }
        c.request("POST", "/v0/topics/h", &h, Some(&bytes)).sv()
    };
    let (st, v) = post(&mut c, Some("hk"), &json!({"records": [{"data": 1}]}));
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["seqs"], json!([1]));
    let (st, v) = post(&mut c, Some("hk"), &json!({"records": [{"data": 1}]}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["deduped"], json!(true), "{v}");
    assert_eq!(v["seqs"], json!([1]), "{v}");

    let (_, v) = post(
        &mut c,
        None,
        &json!({"idempotency_key": "bk", "records": [{"data": 2}]}),
    );
    assert_eq!(v["seqs"], json!([2]), "{v}");
    // Body "bk" wins over header "other": deduped against bk.
    let (st, v) = post(
        &mut c,
        Some("other"),
        &json!({"idempotency_key": "bk", "records": [{"data": 3}]}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["deduped"], json!(true), "{v}");
    assert_eq!(v["seqs"], json!([2]), "{v}");
    // "other" was never used as a key, so this is a fresh write.
    let (st, v) = post(&mut c, Some("other"), &json!({"records": [{"data": 4}]}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["deduped"], json!(false), "{v}");
    assert_eq!(v["seqs"], json!([3]), "{v}");
    // Header "hk" still dedupes.
    let (_, v) = post(&mut c, Some("hk"), &json!({"records": [{"data": 9}]}));
    assert_eq!(v["deduped"], json!(true), "{v}");
    assert_eq!(v["head_seq"], json!(3), "{v}");
    assert_eq!(s.topic("h")["count"], json!(3));
}

#[test]
fn append_batch_is_atomic() {
    let s = Server::start(2);
    s.append_n("at", 3);
    let big_tag = "t".repeat(300);
    let r = s.json_post(
        "/v0/topics/at",
        &json!({"records": [{"data": 1}, {"data": 2}, {"data": 3, "tag": big_tag}]}),
    );
    assert_error(&r, 400, "record_too_large");
    let r = s.json_post(
        "/v0/topics/at",
        &json!({"records": [{"data": 1}, {"data": 2, "meta": "not an object"}]}),
    );
    assert_error(&r, 400, "invalid_request");
    let t = s.topic("at");
    assert_eq!(t["head_seq"], json!(3), "nothing written: {t}");
    assert_eq!(t["count"], json!(3), "{t}");
    let v = s.append("at", json!([{"data": 4}]));
    assert_eq!(
        v["seqs"],
        json!([4]),
        "no seq was consumed by the failed writes: {v}"
    );

    // A rejected write to a missing topic does not create it.
    let r = s.json_post(
        "/v0/topics/never",
        &json!({"records": [{"data": 1, "tag": "t".repeat(300)}]}),
    );
    assert_error(&r, 400, "record_too_large");
    assert_error(&s.get("/v0/topics/never"), 404, "topic_not_found");
}

#[test]
fn append_10000_records_in_one_batch() {
    let s = Server::start(2);
    let recs: Vec<Value> = (0..10_000).map(|i| json!({"data": i})).collect();
    let (st, v) = s.json_post("/v0/topics/big", &json!({"records": recs}));
    assert_eq!(
        st,
        201,
        "{}",
        v.to_string().chars().take(300).collect::<String>()
    );
    assert_eq!(v["first_seq"], json!(1));
    assert_eq!(v["last_seq"], json!(10_000));
    assert_eq!(v["count"], json!(10_000));
    let seqs: Vec<u64> = v["seqs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=10_000).collect::<Vec<u64>>());
    let all = s.diff_all("big");
    assert_eq!(all.len(), 10_000);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r["$seq"], json!(i + 1));
        assert_eq!(r["data"], json!(i));
    }
}

fn seqs_and_ts(shards: usize) {
    let s = Server::start(shards);
    let mut c = s.client();
    let topics = ["s-a", "s-b", "s-c", "s-d"];
    let mut expect = [0u64; 4];
    for round in 0..30 {
        for (i, t) in topics.iter().enumerate() {
            let n = 1 + (round + i) % 4;
            let recs: Vec<Value> = (0..n).map(|k| json!({"data": [round, k]})).collect();
            let (st, v) = c.json_post(&format!("/v0/topics/{t}"), &json!({"records": recs}));
            assert!(st == 200 || st == 201, "{v}");
            let want: Vec<u64> = (expect[i] + 1..=expect[i] + n as u64).collect();
            assert_eq!(v["seqs"], json!(want), "contiguous per-topic seqs: {v}");
            expect[i] += n as u64;
        }
    }
    for (i, t) in topics.iter().enumerate() {
        let recs = s.diff_all(t);
        assert_eq!(seqs_of(&recs), (1..=expect[i]).collect::<Vec<_>>());
        let ts: Vec<u64> = recs.iter().map(|r| r["$ts"].as_u64().unwrap()).collect();
        assert!(
            ts.windows(2).all(|w| w[0] <= w[1]),
            "$ts non-decreasing: {ts:?}"
        );
    }
}

#[test]
fn seqs_contiguous_and_ts_monotonic_one_shard() {
    seqs_and_ts(1);
}

#[test]
fn seqs_contiguous_and_ts_monotonic_two_shards() {
    seqs_and_ts(2);
}

#[test]
fn write_performance_fields_by_durability() {
    let s = Server::start(1);
    for (t, d) in [("f", "fsync"), ("d", "disk"), ("m", "memory")] {
        assert_eq!(
            s.put(&format!("/v0/topics/{t}"), &json!({"durability": d}))
                .0,
            201
        );
        let v = s.append(t, json!([{"data": 1}]));
        assert_write_perf(&v);
        if d != "fsync" {
            assert_eq!(
                v["performance"]["fsync_ms"].as_f64(),
                Some(0.0),
                "fsync_ms is 0 unless the ack waited for a sync ({d}): {v}"
            );
        }
    }
}

#[test]
fn idempotency_window_expires() {
    let s = Server::start(1);
    let (st, v) = s.put("/v0/topics/iw", &json!({"idempotency_window_ms": 300}));
    assert_eq!(st, 201, "{v}");
    let w = json!({"idempotency_key": "short", "records": [{"data": 1}]});
    assert_eq!(s.json_post("/v0/topics/iw", &w).1["seqs"], json!([1]));
    assert_eq!(s.json_post("/v0/topics/iw", &w).1["deduped"], json!(true));
    std::thread::sleep(Duration::from_millis(700));
    let (st, v) = s.json_post("/v0/topics/iw", &w);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["deduped"],
        json!(false),
        "the key was forgotten after the window: {v}"
    );
    assert_eq!(v["seqs"], json!([2]), "{v}");
}

#[test]
fn failed_write_does_not_consume_its_idempotency_key() {
    let s = Server::start(2);
    s.append_n("fk", 1);
    let bad = json!({"idempotency_key": "fk-1", "records": [{"data": 1, "tag": "t".repeat(300)}]});
    assert_error(&s.json_post("/v0/topics/fk", &bad), 400, "record_too_large");
    let good = json!({"idempotency_key": "fk-1", "records": [{"data": 2}]});
    let (st, v) = s.json_post("/v0/topics/fk", &good);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["deduped"], json!(false), "{v}");
    assert_eq!(v["seqs"], json!([2]), "{v}");
}
