//! Queues (SPEC §7): the errors of claim / ack / nack / extend / `/work` (missing topics,
//! log topics, validation, wrong methods), unknown fields, and the queue config fields.

mod common;

use common::queue::*;
use common::sse::open_path;
use common::*;
use serde_json::{json, Value};

const LONG: u64 = 60_000;

// ---- errors ---------------------------------------------------------------------------------

#[test]
fn queue_endpoints_on_a_missing_topic_are_404_and_create_nothing() {
    let s = Server::start(2);
    let mut ck = Checks::new();
    let cases = [
        ("claim", json!({"node": "w"})),
        ("claim", json!({"node": "w", "max": 5, "wait_ms": 300})),
        ("ack", json!({"node": "w", "seqs": [1]})),
        ("nack", json!({"node": "w", "seqs": [1], "delay_ms": 10})),
        (
            "extend",
            json!({"node": "w", "seqs": [1], "lease_ms": 1000}),
        ),
    ];
    for (verb, body) in &cases {
        let r = post(&s, "ghost", verb, body);
        ck.error(
            format!("{verb} on a missing topic"),
            &r,
            404,
            "topic_not_found",
        );
    }
    match open_path(s.port, "/v0/topics/ghost/work?node=w&max=2", &[]) {
        Ok(_) => ck.error(
            "/work on a missing topic",
            &(200, json!({"stream": "opened"})),
            404,
            "topic_not_found",
        ),
        Err(r) => ck.error_resp("/work on a missing topic", &r, 404, "topic_not_found"),
    }
    ck.finish();
    // Never auto-created, by any of them.
    assert_error(&s.get("/v0/topics/ghost"), 404, "topic_not_found");
    let (st, v) = s.get("/v0/topics");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["topics"], json!([]), "queue calls created a topic: {v}");
}

#[test]
fn queue_endpoints_on_a_log_topic_are_409_not_a_queue() {
    let s = Server::start(1);
    let (st, v) = s.put("/v0/topics/events", &json!({}));
    assert_eq!(st, 201, "{v}");
    s.append_n("events", 3);
    let mut ck = Checks::new();
    let cases = [
        ("claim", json!({"node": "w", "max": 3})),
        ("claim", json!({"node": "w", "wait_ms": 200})),
        ("ack", json!({"node": "w", "seqs": [1, 2]})),
        ("nack", json!({"node": "w", "seqs": [1]})),
        ("extend", json!({"node": "w", "seqs": [1], "lease_ms": 500})),
    ];
    for (verb, body) in &cases {
        let r = post(&s, "events", verb, body);
        ck.error(format!("{verb} on a log topic"), &r, 409, "not_a_queue");
    }
    match open_path(s.port, "/v0/topics/events/work?node=w", &[]) {
        Ok(_) => ck.error(
            "/work on a log topic",
            &(200, json!({"stream": "opened"})),
            409,
            "not_a_queue",
        ),
        Err(r) => ck.error_resp("/work on a log topic", &r, 409, "not_a_queue"),
    }
    ck.finish();
    // The log is untouched: an "ack" deleted nothing.
    let t = s.topic("events");
    assert_eq!(t["type"], json!("log"), "{t}");
    assert_eq!(t["count"], json!(3), "{t}");
    assert!(
        t.get("queue").is_none(),
        "a log topic has no queue block: {t}"
    );
    assert_eq!(seqs_of(&s.diff_all("events")), vec![1, 2, 3]);
}

#[test]
fn queue_request_validation() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    append_jobs(&s, "q", 0, 2);
    let held = claim_n(&s, "q", "w", 1, LONG);
    assert_eq!(claimed_seqs(&held), vec![1]);

    let mut ck = Checks::new();
    let json_cases: Vec<(&str, Value)> = vec![
        ("claim", json!({})),
        ("claim", json!({"node": ""})),
        ("claim", json!({"node": 5})),
        ("claim", json!({"node": null})),
        ("claim", json!({"node": "w", "max": -1})),
        ("claim", json!({"node": "w", "max": "3"})),
        ("claim", json!({"node": "w", "max": 1.5})),
        ("claim", json!({"node": "w", "lease_ms": -5})),
        ("claim", json!({"node": "w", "lease_ms": "1000"})),
        ("claim", json!({"node": "w", "wait_ms": "x"})),
        ("ack", json!({"seqs": [1]})),
        ("ack", json!({"node": "", "seqs": [1]})),
        ("ack", json!({"node": "w"})),
        ("ack", json!({"node": "w", "seqs": "1"})),
        ("ack", json!({"node": "w", "seqs": [-1]})),
        ("ack", json!({"node": "w", "seqs": ["1"]})),
        (
            "ack",
            json!({"node": "w", "seqs": (1..=1001).collect::<Vec<u64>>()}),
        ),
        (
            "nack",
            json!({"node": "w", "seqs": (1..=1001).collect::<Vec<u64>>()}),
        ),
        (
            "extend",
            json!({"node": "w", "seqs": (1..=1001).collect::<Vec<u64>>(), "lease_ms": 1000}),
        ),
        // lease_ids: one per seq, each "lease_<hex>".
        ("ack", json!({"node": "w", "seqs": [1], "lease_ids": []})),
        (
            "ack",
            json!({"node": "w", "seqs": [1], "lease_ids": ["lease_0000000000000001", "lease_0000000000000002"]}),
        ),
        (
            "nack",
            json!({"node": "w", "seqs": [1, 2], "lease_ids": ["lease_0000000000000001"]}),
        ),
        (
            "ack",
            json!({"node": "w", "seqs": [1], "lease_ids": ["nope"]}),
        ),
        (
            "ack",
            json!({"node": "w", "seqs": [1], "lease_ids": ["lease_zzzzzzzzzzzzzzzz"]}),
        ),
        (
            "ack",
            json!({"node": "w", "seqs": [1], "lease_ids": ["lease_"]}),
        ),
        (
            "ack",
            json!({"node": "w", "seqs": [1], "lease_ids": ["lease_1ffffffffffffffff0"]}),
        ),
        (
            "ack",
            json!({"node": "w", "seqs": [1], "lease_ids": ["0000000000000001"]}),
        ),
        ("ack", json!({"node": "w", "seqs": [1], "lease_ids": [1]})),
        (
            "ack",
            json!({"node": "w", "seqs": [1], "lease_ids": "lease_0000000000000001"}),
        ),
        (
            "extend",
            json!({"node": "w", "seqs": [1], "lease_ids": ["lease_xyz"], "lease_ms": 500}),
        ),
        // nack delay_ms in [0, 86400000].
        (
            "nack",
            json!({"node": "w", "seqs": [1], "delay_ms": 86_400_001u64}),
        ),
        ("nack", json!({"node": "w", "seqs": [1], "delay_ms": -1})),
        ("nack", json!({"node": "w", "seqs": [1], "delay_ms": "10"})),
        // extend needs lease_ms.
        ("extend", json!({"node": "w", "seqs": [1]})),
        (
            "extend",
            json!({"node": "w", "seqs": [1], "lease_ms": null}),
        ),
        ("extend", json!({"node": "w", "seqs": [1], "lease_ms": -1})),
        ("extend", json!({"seqs": [1], "lease_ms": 1000})),
    ];
    for (verb, body) in &json_cases {
        let r = post(&s, "q", verb, body);
        ck.error(format!("{verb} {body}"), &r, 400, "invalid_request");
    }
    // Bodies that are not JSON objects, and bodies not declared JSON (SPEC §1).
    for verb in ["claim", "ack", "nack", "extend"] {
        let path = format!("/v0/topics/q/{verb}");
        for bad in [
            &b"{\"node\":"[..],
            b"[\"w\"]",
            b"\"w\"",
            b"{\"node\":\"w\",}",
            b"\xff\xfe",
        ] {
            let r = raw(
                &s,
                "POST",
                &path,
                &[("Content-Type", "application/json")],
                Some(bad),
            );
            ck.error_resp(
                format!("{verb} body {:?}", String::from_utf8_lossy(bad)),
                &r,
                400,
                "invalid_request",
            );
        }
        let good = br#"{"node":"w","seqs":[1],"lease_ms":1000}"#;
        for ct in ["text/plain", "application/x-www-form-urlencoded"] {
            let r = raw(&s, "POST", &path, &[("Content-Type", ct)], Some(good));
            ck.error_resp(format!("{verb} as {ct}"), &r, 415, "unsupported_media_type");
        }
        let r = raw(&s, "POST", &path, &[], Some(good));
        ck.error_resp(
            format!("{verb} without content-type"),
            &r,
            415,
            "unsupported_media_type",
        );
    }
    // /work takes its parameters from the query.
    for (query, status, code) in [
        ("max=2", 400, "invalid_request"),
        ("node=&max=2", 400, "invalid_request"),
        ("node=w&max=abc", 400, "invalid_request"),
        ("node=w&max=-1", 400, "invalid_request"),
        ("node=w&lease_ms=soon", 400, "invalid_request"),
    ] {
        match open_path(s.port, &format!("/v0/topics/q/work?{query}"), &[]) {
            Ok(_) => ck.error(
                format!("/work?{query}"),
                &(200, json!({"stream": "opened"})),
                status,
                code,
            ),
            Err(r) => ck.error_resp(format!("/work?{query}"), &r, status, code),
        }
    }
    match open_path(
        s.port,
        "/v0/topics/q/work?node=w",
        &[("Accept", "application/json")],
    ) {
        Ok(_) => ck.error(
            "/work with Accept: application/json",
            &(200, json!({"stream": "opened"})),
            406,
            "not_acceptable",
        ),
        Err(r) => ck.error_resp(
            "/work with Accept: application/json",
            &r,
            406,
            "not_acceptable",
        ),
    }
    ck.finish();

    // The limits' edges are accepted: 1000 seqs, delay_ms 86400000.
    let v = ack(&s, "q", "w", &(1000..2000).collect::<Vec<u64>>(), None);
    assert_eq!(v["acked"], json!(0), "{v}");
    assert_eq!(skipped(&v).len(), 1000, "{v}");
    let v = nack(&s, "q", "other", &[1], None, 86_400_000);
    assert_eq!(v["nacked"], json!(0), "{v}");
    assert_eq!(skipped(&v), vec![1], "{v}");
    // None of the rejected requests changed anything.
    let (count, ready, in_flight, _) = state(&s, "q");
    assert_eq!((count, ready, in_flight), (2, 1, 1));
    let ids: Vec<String> = lease_map(&held).into_values().collect();
    let v = ack(&s, "q", "w", &[1], Some(&ids));
    assert_eq!(
        v["acked"],
        json!(1),
        "the held lease survived the bad requests: {v}"
    );
}

/// Lease ids are `lease_` + 16 hex digits (the form the server hands out); any other form
/// is malformed and rejected, never silently matched against a lease.
#[test]
fn lease_ids_of_the_wrong_length_or_form_are_400() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    append_jobs(&s, "q", 0, 1);
    let v = claim_n(&s, "q", "w", 1, LONG);
    let id = lease_map(&v)[&1].clone();
    let hex = id.strip_prefix("lease_").unwrap();
    let short = format!("lease_{}", hex.trim_start_matches('0'));
    let long = format!("lease_0{hex}");
    let signed = format!("lease_+{}", &hex[1..]);
    let mut ck = Checks::new();
    for bad in [&short, &long, &signed] {
        if bad == &id {
            continue;
        }
        let r = post(
            &s,
            "q",
            "ack",
            &json!({"node": "w", "seqs": [1], "lease_ids": [bad]}),
        );
        ck.error(
            format!("ack with lease id {bad:?} (issued {id:?})"),
            &r,
            400,
            "invalid_request",
        );
    }
    ck.finish();
    let (count, _, in_flight, _) = state(&s, "q");
    assert_eq!(
        (count, in_flight),
        (1, 1),
        "a malformed lease id acked the job"
    );
}

#[test]
fn wrong_method_on_queue_routes_is_405_with_allow() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    let mut ck = Checks::new();
    let mut cases: Vec<(&str, String, &str)> = Vec::new();
    for verb in ["claim", "ack", "nack", "extend"] {
        for m in ["GET", "PUT", "DELETE"] {
            cases.push((m, format!("/v0/topics/q/{verb}"), "POST"));
        }
    }
    for m in ["POST", "PUT", "DELETE"] {
        cases.push((m, "/v0/topics/q/work?node=w".to_string(), "GET"));
    }
    for (m, path, allowed) in &cases {
        let body: Option<&[u8]> = (*m != "GET" && *m != "DELETE").then_some(br#"{"node":"w"}"#);
        let hdrs: &[(&str, &str)] = if body.is_some() {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        let r = raw(&s, m, path, hdrs, body);
        ck.error_resp(format!("{m} {path}"), &r, 405, "method_not_allowed");
        let allow = r.header("allow").unwrap_or_default().to_string();
        let methods: Vec<&str> = allow.split(',').map(str::trim).collect();
        if !methods.contains(allowed) || methods.contains(m) {
            ck.error(
                format!("{m} {path}: Allow header {allow:?} should list {allowed}"),
                &(0, json!({})),
                405,
                "method_not_allowed",
            );
        }
    }
    ck.finish();
}

/// SPEC §1: unknown request fields are ignored (forward compatibility).
#[test]
fn unknown_request_fields_are_ignored() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    append_jobs(&s, "q", 0, 3);
    let cases = [
        (
            "claim",
            json!({"node": "w", "max": 3, "lease_ms": LONG, "client_version": "2.1"}),
        ),
        (
            "extend",
            json!({"node": "w", "seqs": [1], "lease_ms": LONG, "reason": "slow"}),
        ),
        (
            "nack",
            json!({"node": "w", "seqs": [2], "delay_ms": 0, "error": {"msg": "x"}}),
        ),
        ("ack", json!({"node": "w", "seqs": [1], "trace_id": "abc"})),
    ];
    let mut failures = Vec::new();
    for (verb, body) in &cases {
        let (st, v) = post(&s, "q", verb, body);
        if st != 200 {
            failures.push(format!("{verb} {body}: {st} {v}"));
        }
    }
    assert!(
        failures.is_empty(),
        "unknown request fields must be ignored (SPEC §1):\n{}",
        failures.join("\n")
    );
    assert_eq!(state(&s, "q"), (2, 1, 1, 0), "3 claimed, 1 acked, 2 nacked");
}

// ---- config ---------------------------------------------------------------------------------

#[test]
fn queue_config_fields_clamps_and_validation() {
    let s = Server::start(1);
    let v = make_queue(
        &s,
        "q",
        json!({"lease_ms": 5, "claim_jitter_ms": 99_999, "max_deliveries": 3, "dead_letter": "q-dead", "leases_durable": true}),
    );
    let c = &v["config"];
    assert_eq!(c["lease_ms"], json!(100), "lease_ms clamped up to 100: {v}");
    assert_eq!(
        c["claim_jitter_ms"],
        json!(5000),
        "claim_jitter_ms clamped to 5000: {v}"
    );
    assert_eq!(c["max_deliveries"], json!(3), "{v}");
    assert_eq!(c["dead_letter"], json!("q-dead"), "{v}");
    assert_eq!(c["leases_durable"], json!(true), "{v}");
    let (st, v) = s.put("/v0/topics/q", &json!({"lease_ms": 100_000_000_000u64}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["config"]["lease_ms"],
        json!(86_400_000),
        "lease_ms clamped down: {v}"
    );
    assert_eq!(v["config"]["type"], json!("queue"), "{v}");

    // Defaults of a fresh queue.
    let v = make_queue(&s, "plain", json!({}));
    let c = &v["config"];
    assert_eq!(
        (
            &c["lease_ms"],
            &c["claim_jitter_ms"],
            &c["max_deliveries"],
            &c["dead_letter"],
            &c["leases_durable"]
        ),
        (
            &json!(30000),
            &json!(0),
            &json!(0),
            &Value::Null,
            &json!(false)
        ),
        "{v}"
    );
    let t = s.topic("plain");
    assert_eq!(t["type"], json!("queue"), "{t}");
    assert_eq!(state(&s, "plain"), (0, 0, 0, 0));

    // dead_letter must differ from the queue; type is immutable.
    assert_error(
        &s.put("/v0/topics/q", &json!({"dead_letter": "q"})),
        400,
        "invalid_request",
    );
    assert_error(
        &s.put(
            "/v0/topics/new-q",
            &json!({"type": "queue", "dead_letter": "new-q"}),
        ),
        400,
        "invalid_request",
    );
    assert_error(&s.get("/v0/topics/new-q"), 404, "topic_not_found");
    assert_error(
        &s.put("/v0/topics/q", &json!({"type": "log"})),
        409,
        "topic_exists_incompatible",
    );
    let (st, v) = s.put("/v0/topics/log1", &json!({}));
    assert_eq!(st, 201, "{v}");
    assert_error(
        &s.put("/v0/topics/log1", &json!({"type": "queue"})),
        409,
        "topic_exists_incompatible",
    );
    assert_error(
        &s.put("/v0/topics/q", &json!({"type": "fifo"})),
        400,
        "invalid_request",
    );
}

// ---- claim / ack / nack / extend --------------------------------------------------------------
