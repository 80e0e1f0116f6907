//! Error handling (SPEC §1): content types, bad JSON, wrong types, unknown fields, 405 with
//! Allow, unknown routes; every error has exactly the error body shape with `performance`, and
//! the server keeps answering with earlier data intact.

mod common;

use common::*;
use serde_json::{json, Value};

const KEEP: &str = r#"{"keep": [1, 2.50]}"#;

/// A server with a topic "keep" holding one known record.
fn seeded(shards: usize) -> Server {
    let s = Server::start(shards);
    let body = format!(r#"{{"records":[{{"data":{KEEP},"tag":"k"}}]}}"#);
    assert_eq!(s.post_raw("/v0/topics/keep", body.as_bytes()).status, 201);
    s
}

/// The server still answers, and "keep" is exactly as written.
fn assert_intact(s: &Server) {
    let (st, v) = s.get("/v0/health");
    assert_eq!(st, 200, "{v}");
    let r = s.post_raw("/v0/topics/keep/diff", b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let raw = raw_records(&r.body);
    assert_eq!(raw.len(), 1, "{}", r.text());
    assert_eq!(raw[0]["data"], KEEP);
    assert_eq!(r.json()["head_seq"], json!(1), "nothing else was written");
}

/// The body endpoints: (method, path).
const BODY_ENDPOINTS: [(&str, &str); 4] = [
    ("PUT", "/v0/topics/keep"),
    ("POST", "/v0/topics/keep"),
    ("POST", "/v0/topics/keep/diff"),
    ("POST", "/v0/topics/keep/delete"),
];

fn valid_body(method: &str, path: &str) -> &'static [u8] {
    match (method, path) {
        ("PUT", _) => b"{}",
        (_, p) if p.ends_with("/diff") => br#"{"from_seq":0}"#,
        (_, p) if p.ends_with("/delete") => br#"{"match":"no-such-tag"}"#,
        _ => br#"{"records":[{"data":"x"}]}"#,
    }
}

#[test]
fn content_type_missing_or_wrong_is_415() {
    let s = seeded(2);
    let mut c = s.client();
    let mut checks = Checks::new();
    for (m, p) in BODY_ENDPOINTS {
        let body = valid_body(m, p);
        let r = c.request(m, p, &[], Some(body));
        checks.error_resp(
            format!("{m} {p} without content-type"),
            &r,
            415,
            "unsupported_media_type",
        );
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/xml",
            "json",
            "",
        ] {
            let r = c.request(m, p, &[("Content-Type", ct)], Some(body));
            checks.error_resp(format!("{m} {p} {ct:?}"), &r, 415, "unsupported_media_type");
        }
    }
    checks.finish();
    assert_intact(&s);
    // Parameters are allowed.
    for ct in [
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
    ] {
        for (m, p) in BODY_ENDPOINTS {
            if m == "POST" && p == "/v0/topics/keep" {
                continue; // keep "keep" unchanged
            }
            let r = c.request(m, p, &[("Content-Type", ct)], Some(valid_body(m, p)));
            assert_eq!(r.status, 200, "{m} {p} with {ct:?}: {}", r.text());
        }
        let r = c.request(
            "POST",
            "/v0/topics/other",
            &[("Content-Type", ct)],
            Some(br#"{"records":[{"data":1}]}"#),
        );
        assert!(r.status == 201 || r.status == 200, "{}", r.text());
    }
    assert_intact(&s);
}

#[test]
fn bad_json_is_400_invalid_request() {
    let s = seeded(1);
    let mut c = s.client();
    let bad: [&[u8]; 8] = [
        b"{\"records\": [",
        b"not json",
        b"{} trailing",
        b"{\"records\":[{\"data\":\"\xff\xfe\"}]}",
        b"{\"records\":[{\"data\": NaN}]}",
        b"{\"records\":[{\"data\": 01}]}",
        b"{'records': []}",
        b"{\"records\":[{\"data\":{\"a\":1,}}]}",
    ];
    let mut checks = Checks::new();
    for (m, p) in BODY_ENDPOINTS {
        for b in bad {
            let r = c.request(m, p, &[("Content-Type", "application/json")], Some(b));
            let ctx = format!("{m} {p} {:?}", String::from_utf8_lossy(b));
            checks.error_resp(ctx, &r, 400, "invalid_request");
        }
    }
    checks.finish();
    // Bad JSON on a missing topic creates nothing.
    let r = c.post_raw("/v0/topics/fresh", b"{\"records\": [{\"data\": }]}");
    assert_error_resp(&r, 400, "invalid_request");
    assert_error(&s.get("/v0/topics/fresh"), 404, "topic_not_found");
    assert_intact(&s);
}

#[test]
fn wrong_types_are_400_invalid_request() {
    let s = seeded(2);
    let append_bodies = [
        json!({"records": {}}),
        json!({"records": "x"}),
        json!({"records": null}),
        json!({"records": 5}),
        json!({"records": [1]}),
        json!({"records": [[{"data": 1}]]}),
        json!({"records": [{"data": 1, "tag": 5}]}),
        json!({"records": [{"data": 1, "node": 5}]}),
        json!({"records": [{"data": 1, "node": ["a"]}]}),
        json!({"records": [{"data": 1, "meta": []}]}),
        json!({"records": [{"data": 1, "meta": "m"}]}),
        json!({"records": [{"data": 1, "meta": 5}]}),
        json!({"records": [{"data": 1}], "node": 5}),
        json!({"records": [{"data": 1}], "create": "yes"}),
        json!({"records": [{"data": 1}], "idempotency_key": 5}),
        json!({"records": [{"data": 1}], "config": "fsync"}),
        json!({"records": [{"data": 1}], "config": {"ttl_ms": "x"}}),
        json!([{"data": 1}]),
        json!("records"),
    ];
    let mut checks = Checks::new();
    for b in &append_bodies {
        let r = s.json_post("/v0/topics/keep", b);
        checks.error(format!("append {b}"), &r, 400, "invalid_request");
        let r = s.json_post("/v0/topics/newt", b);
        checks.error(
            format!("append to new topic {b}"),
            &r,
            400,
            "invalid_request",
        );
    }
    let r = s.get("/v0/topics/newt");
    checks.error("rejected writes create nothing", &r, 404, "topic_not_found");

    let diff_bodies = [
        json!({"from_seq": "5"}),
        json!({"from_seq": -1}),
        json!({"from_seq": 1.5}),
        json!({"limit": "x"}),
        json!({"limit": -1}),
        json!({"node": 5}),
        json!({"node": [1]}),
        json!({"node": {"a": 1}}),
        json!({"include_tags": "yes"}),
        json!({"include_meta": 1}),
        json!({"wait_ms": -5}),
        json!({"wait_ms": "x"}),
        json!([]),
        json!(0),
    ];
    for b in &diff_bodies {
        let r = s.json_post("/v0/topics/keep/diff", b);
        checks.error(format!("diff {b}"), &r, 400, "invalid_request");
    }
    checks.finish();
    assert_intact(&s);
}

#[test]
fn empty_or_missing_records_is_400() {
    let s = seeded(1);
    for b in [
        json!({"records": []}),
        json!({}),
        json!({"record": [{"data": 1}]}),
    ] {
        assert_error(&s.json_post("/v0/topics/keep", &b), 400, "invalid_request");
        assert_error(&s.json_post("/v0/topics/nt", &b), 400, "invalid_request");
    }
    assert_error(&s.get("/v0/topics/nt"), 404, "topic_not_found");
    assert_intact(&s);
}

#[test]
fn unknown_fields_are_ignored() {
    let s = seeded(1);
    let (st, v) = s.json_post(
        "/v0/topics/uf",
        &json!({"records": [{"data": 1, "future": true, "$seq": 99}], "future": {"x": 1}}),
    );
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["seqs"], json!([1]), "$seq is the server's: {v}");
    let v = s.diff("uf", json!({"from_seq": 0, "future": [1]}));
    assert_eq!(v["records"][0]["$seq"], json!(1));
    assert!(v["records"][0].get("future").is_none(), "{v}");
    let (st, v) = s.json_post("/v0/topics/uf/delete", &json!({"before_seq": 1, "x": 1}));
    assert_eq!(st, 200, "{v}");
    assert_intact(&s);
}

#[test]
fn wrong_method_is_405_with_allow() {
    let s = seeded(2);
    let cases: [(&str, &str, &[&str]); 9] = [
        (
            "PATCH",
            "/v0/topics/keep",
            &["GET", "PUT", "POST", "DELETE"],
        ),
        ("GET", "/v0/topics/keep/diff", &["POST"]),
        ("PUT", "/v0/topics/keep/diff", &["POST"]),
        ("DELETE", "/v0/topics/keep/delete", &["POST"]),
        ("GET", "/v0/topics/keep/delete", &["POST"]),
        ("POST", "/v0/topics", &["GET"]),
        ("DELETE", "/v0/topics", &["GET"]),
        ("POST", "/v0/health", &["GET"]),
        ("PUT", "/v0/ready", &["GET"]),
    ];
    let mut c = s.client();
    for (m, p, allowed) in cases {
        let body: Option<&[u8]> = if m == "GET" || m == "DELETE" {
            None
        } else {
            Some(b"{}")
        };
        let hdrs: &[(&str, &str)] = if body.is_some() {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        let r = c.request(m, p, hdrs, body);
        assert_error_resp(&r, 405, "method_not_allowed");
        let allow = r
            .header("allow")
            .unwrap_or_else(|| panic!("{m} {p}: 405 without Allow header: {:?}", r.headers));
        let listed: Vec<String> = allow
            .split(',')
            .map(|x| x.trim().to_ascii_uppercase())
            .collect();
        for a in allowed {
            assert!(
                listed.iter().any(|l| l == a),
                "{m} {p}: Allow {allow:?} lacks {a}"
            );
        }
        assert!(
            !listed.iter().any(|l| l == m),
            "{m} {p}: Allow {allow:?} lists the refused method"
        );
    }
    assert_intact(&s);
}

#[test]
fn unknown_routes_are_404_not_found() {
    let s = seeded(1);
    let mut c = s.client();
    for (m, p) in [
        ("GET", "/"),
        ("GET", "/v0"),
        ("GET", "/v0/nope"),
        ("GET", "/v1/topics"),
        ("GET", "/v0/topicsx"),
        ("POST", "/v0/topics/keep/bogus"),
        ("GET", "/v0/topics/keep/diff/extra"),
        ("GET", "/favicon.ico"),
    ] {
        let body: Option<&[u8]> = if m == "POST" { Some(b"{}") } else { None };
        let hdrs: &[(&str, &str)] = if body.is_some() {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        let r = c.request(m, p, hdrs, body);
        assert_error_resp(&r, 404, "not_found");
    }
    assert_intact(&s);
}

#[test]
fn performance_on_api_responses() {
    let s = seeded(2);
    let (_, v) = s.put("/v0/topics/perf", &json!({}));
    assert_perf(&v);
    let v = s.append("perf", json!([{"data": 1}]));
    assert_write_perf(&v);
    let v = s.diff("perf", json!({}));
    assert_perf(&v);
    assert!(v["performance"]["records_scanned"].is_number(), "{v}");
    let v = s.topic("perf");
    assert_perf(&v);
    let (_, v) = s.get("/v0/topics");
    assert_perf(&v);
    let (_, v) = s.json_post("/v0/topics/perf/delete", &json!({"before_seq": 1}));
    assert_perf(&v);
    let (_, v) = s.delete("/v0/topics/perf");
    assert_perf(&v);
    let (_, v): (u16, Value) = s.get("/v0/topics/perf");
    assert_error_shape(&v);
    assert_intact(&s);
}
