//! Limits (SPEC §1): batch size, record / meta / tag / node sizes, --max-body-bytes (413),
//! request line + headers over 16 KiB (431). Each error leaves the server answering and data
//! intact.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Map, Value};

const MIB: usize = 1024 * 1024;

fn assert_keep(s: &Server, n: u64) {
    let (st, _) = s.get("/v0/health");
    assert_eq!(st, 200);
    let t = s.topic("keep");
    assert_eq!(t["head_seq"], json!(n), "{t}");
    assert_eq!(t["count"], json!(n), "{t}");
}

/// A JSON string value whose raw text is exactly `len` bytes (quotes included).
fn string_of_raw_len(len: usize) -> String {
    "x".repeat(len - 2)
}

#[test]
fn batch_over_10000_records_is_batch_too_large() {
    let s = Server::start(2);
    s.append_n("keep", 1);
    let recs: Vec<Value> = (0..10_001).map(|i| json!({"data": i})).collect();
    let r = s.json_post("/v0/topics/keep", &json!({"records": recs}));
    assert_error(&r, 400, "batch_too_large");
    let r = s.json_post("/v0/topics/fresh", &json!({"records": recs}));
    assert_error(&r, 400, "batch_too_large");
    assert_error(&s.get("/v0/topics/fresh"), 404, "topic_not_found");
    assert_keep(&s, 1);
}

#[test]
fn record_data_plus_meta_over_1_mib_is_record_too_large() {
    let s = Server::start(1);
    s.append_n("keep", 1);
    let cases = [
        // (data raw len, meta raw len or 0, ok?)
        (MIB + 1, 0, false),
        (MIB + 1000, 0, false),
        (MIB - 100, 0, true),
        (MIB - 100, 1000, false),
        (MIB - 2000, 1000, true),
    ];
    let mut n = 1;
    for (dlen, mlen, ok) in cases {
        let mut rec = json!({"data": string_of_raw_len(dlen)});
        if mlen > 0 {
            // {"m":"..."} : 8 bytes of overhead.
            rec["meta"] = json!({"m": "y".repeat(mlen - 8)});
            assert_eq!(serde_json::to_string(&rec["meta"]).unwrap().len(), mlen);
        }
        let r = s.json_post("/v0/topics/keep", &json!({"records": [rec]}));
        if ok {
            assert_eq!(
                r.0, 200,
                "data {dlen} + meta {mlen} is within 1 MiB: {}",
                r.1
            );
            n += 1;
        } else {
            assert_error(&r, 400, "record_too_large");
        }
    }
    // A too-large record anywhere in the batch fails the whole batch.
    let r = s.json_post(
        "/v0/topics/keep",
        &json!({"records": [{"data": 1}, {"data": string_of_raw_len(MIB + 10)}]}),
    );
    assert_error(&r, 400, "record_too_large");
    assert_keep(&s, n);
}

#[test]
fn meta_over_16_kib_or_64_keys_is_record_too_large() {
    let s = Server::start(1);
    s.append_n("keep", 1);
    let r = s.json_post(
        "/v0/topics/keep",
        &json!({"records": [{"data": 1, "meta": {"k": "x".repeat(17 * 1024)}}]}),
    );
    assert_error(&r, 400, "record_too_large");
    let (st, v) = s.json_post(
        "/v0/topics/keep",
        &json!({"records": [{"data": 1, "meta": {"k": "x".repeat(15 * 1024)}}]}),
    );
    assert_eq!(st, 200, "15 KiB meta is fine: {v}");

    let meta = |n: usize| -> Value {
        let m: Map<String, Value> = (0..n).map(|i| (format!("k{i}"), json!(i))).collect();
        Value::Object(m)
    };
    let r = s.json_post(
        "/v0/topics/keep",
        &json!({"records": [{"data": 1, "meta": meta(65)}]}),
    );
    assert_error(&r, 400, "record_too_large");
    let (st, v) = s.json_post(
        "/v0/topics/keep",
        &json!({"records": [{"data": 1, "meta": meta(64)}]}),
    );
    assert_eq!(st, 200, "64 meta keys are fine: {v}");
    assert_keep(&s, 3);
}

#[test]
fn tag_over_256_and_node_over_128_bytes_are_record_too_large() {
    let s = Server::start(2);
    s.append_n("keep", 1);
    let mut n = 1;
    let ok_cases = [
        json!({"records": [{"data": 1, "tag": "t".repeat(256)}]}),
        json!({"records": [{"data": 1, "tag": "é".repeat(128)}]}),
        json!({"records": [{"data": 1, "node": "n".repeat(128)}]}),
        json!({"records": [{"data": 1}], "node": "n".repeat(128)}),
    ];
    for b in &ok_cases {
        let (st, v) = s.json_post("/v0/topics/keep", b);
        assert_eq!(st, 200, "at the limit is fine: {v}");
        n += 1;
    }
    let bad_cases = [
        json!({"records": [{"data": 1, "tag": "t".repeat(257)}]}),
        json!({"records": [{"data": 1, "tag": "é".repeat(129)}]}),
        json!({"records": [{"data": 1, "node": "n".repeat(129)}]}),
        json!({"records": [{"data": 1, "node": "é".repeat(65)}]}),
        json!({"records": [{"data": 1}], "node": "n".repeat(129)}),
    ];
    for b in &bad_cases {
        assert_error(&s.json_post("/v0/topics/keep", b), 400, "record_too_large");
    }
    // The stored tag of 128 two-byte characters reads back intact.
    let recs = s.diff_all("keep");
    assert_eq!(recs[2]["$tag"], json!("é".repeat(128)));
    assert_keep(&s, n);
}

#[test]
fn body_over_max_body_bytes_is_413() {
    let s = Server::start_with(1, &["--max-body-bytes", "1024"]);
    s.append_n("keep", 1);

    // Under the limit: fine.
    let data = "a".repeat(900);
    let body = format!(r#"{{"records":[{{"data":"{data}"}}]}}"#);
    assert!(body.len() < 1024);
    assert_eq!(s.post_raw("/v0/topics/keep", body.as_bytes()).status, 200);

    // Over the limit, with Content-Length: rejected before parsing (even invalid JSON).
    let big = format!(r#"{{"records":[{{"data":"{}"}}]}}"#, "b".repeat(2000));
    let r = s.client().post_raw("/v0/topics/keep", big.as_bytes());
    assert_error_resp(&r, 413, "payload_too_large");
    let r = s.client().post_raw("/v0/topics/keep", &vec![b'{'; 3000]);
    assert_error_resp(&r, 413, "payload_too_large");
    let r = s.client().post_raw("/v0/topics/keep/diff", big.as_bytes());
    assert_error_resp(&r, 413, "payload_too_large");

    // A huge declared length is refused without waiting for the body.
    let mut c = s.client();
    c.set_read_timeout(Duration::from_secs(5));
    c.send_raw(
        b"POST /v0/topics/keep HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{\"records\":",
    )
    .unwrap();
    let r = c
        .read_response()
        .expect("413 must come without the body being sent");
    assert_error_resp(&r, 413, "payload_too_large");

    // Chunked, over the limit in total.
    let mut c = s.client();
    let mut req = b"POST /v0/topics/keep HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in big.as_bytes().chunks(500) {
        req.extend(format!("{:x}\r\n", part.len()).into_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let _ = c.send_raw(&req);
    let r = c.read_response().expect("a response to the chunked body");
    assert_error_resp(&r, 413, "payload_too_large");

    assert_keep(&s, 2);
}

#[test]
fn headers_over_16_kib_are_431() {
    let s = Server::start(1);
    s.append_n("keep", 1);

    let big = "h".repeat(17 * 1024);
    let mut c = s.client();
    let r = c
        .try_request("GET", "/v0/topics/keep", &[("X-Big", &big)], None)
        .expect("a 431 response");
    assert_error_resp(&r, 431, "headers_too_large");

    let many: Vec<(String, String)> = (0..200)
        .map(|i| (format!("X-H{i}"), "v".repeat(100)))
        .collect();
    let hdrs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = s
        .client()
        .try_request("GET", "/v0/topics/keep", &hdrs, None)
        .expect("a 431 response");
    assert_error_resp(&r, 431, "headers_too_large");

    let long_path = format!("/v0/topics/keep?x={}", "q".repeat(17 * 1024));
    let r = s
        .client()
        .try_request("GET", &long_path, &[], None)
        .expect("a 431 response");
    assert_error_resp(&r, 431, "headers_too_large");

    // Under the limit: fine.
    let ok = "h".repeat(12 * 1024);
    let (st, v) = s
        .client()
        .request("GET", "/v0/topics/keep", &[("X-Big", &ok)], None)
        .sv();
    assert_eq!(st, 200, "{v}");
    assert_keep(&s, 1);
}
