//! Queues (SPEC §7): claim / ack / nack / extend / `/work`, their errors, clamps, claim
//! order, fencing, nack delays, lease expiry and extension, long-poll claims, claim cohorts,
//! dead letters across cores, the `/work` push stream, and what survives a restart
//! (`leases_durable` on and off, checkpoints).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::queue::*;
use common::sse::{name_on_shard, open_path, shard_of, Next};
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

#[test]
fn claim_ack_nack_extend_happy_path() {
    let s = Server::start(2);
    make_queue(&s, "jobs", json!({"lease_ms": LONG}));
    let body = br#"{"records":[
        {"data": { "to" : "a@x.io",  "n":1 }, "tag": "mail-1", "node": "api-1", "meta": { "try" : 0 }},
        {"data": [1, 2,3]},
        {"data": null, "tag": "t3"},
        {"data": "four"},
        {"data": 5.50}
    ]}"#;
    let r = s.post_raw("/v0/topics/jobs", body);
    assert_eq!(r.status, 200, "{}", r.text());

    let t0 = now_ms();
    let r = s.post_raw("/v0/topics/jobs/claim", br#"{"node":"w1","max":2}"#);
    let t1 = now_ms();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    check_claim_response("jobs", &v);
    assert_eq!(claimed_seqs(&v), vec![1, 2], "fresh jobs in seq order: {v}");
    assert_eq!(v["count"], json!(2), "{v}");
    assert_eq!(v["ready"], json!(3), "{v}");
    let raw = raw_claimed(&r.body);
    assert_eq!(
        raw[0]["data"], r#"{ "to" : "a@x.io",  "n":1 }"#,
        "data byte-exact"
    );
    assert_eq!(raw[0]["meta"], r#"{ "try" : 0 }"#, "meta byte-exact");
    assert_eq!(raw[0]["$tag"], r#""mail-1""#);
    assert_eq!(raw[0]["$node"], r#""api-1""#);
    assert_eq!(raw[1]["data"], "[1, 2,3]");
    for k in ["$tag", "$node", "meta"] {
        assert!(
            !raw[1].contains_key(k),
            "{k} present on a job without it: {:?}",
            raw[1]
        );
    }
    let e = entries(&v);
    for x in &e {
        assert_eq!(x["deliveries"], json!(1), "{x}");
        let d = x["deadline"].as_u64().unwrap();
        assert!(
            d >= t0 + LONG && d <= t1 + LONG,
            "deadline {d} is not now + the topic's lease_ms ({t0}..{t1}): {x}"
        );
    }
    let leases = lease_map(&v);
    assert_ne!(leases[&1], leases[&2], "two leases share an id");
    assert_eq!(
        state(&s, "jobs"),
        (5, 3, 2, 0),
        "(count, ready, in_flight, dead_lettered)"
    );

    // The next claim gets the next fresh jobs, nothing leased.
    let v2 = claim(&s, "jobs", json!({"node": "w2", "max": 10}));
    assert_eq!(claimed_seqs(&v2), vec![3, 4, 5], "{v2}");
    assert_eq!(v2["ready"], json!(0), "{v2}");
    let raw_null = &entries(&v2)[0];
    assert_eq!(
        raw_null["data"],
        Value::Null,
        "null data is present as null: {raw_null}"
    );
    assert_eq!(raw_null["$tag"], json!("t3"));
    let empty = claim(&s, "jobs", json!({"node": "w3", "max": 10}));
    assert_eq!(
        (empty["count"].clone(), empty["ready"].clone()),
        (json!(0), json!(0)),
        "{empty}"
    );
    assert_eq!(empty["claimed"], json!([]), "{empty}");

    // ack: the permanent delete.
    let a = ack(&s, "jobs", "w1", &[1], Some(&[leases[&1].clone()]));
    assert_eq!(a["acked"], json!(1), "{a}");
    assert_eq!(skipped(&a), Vec::<u64>::new(), "{a}");
    assert_eq!(
        (a["ready"].clone(), a["in_flight"].clone()),
        (json!(0), json!(4)),
        "{a}"
    );
    assert_eq!(state(&s, "jobs"), (4, 0, 4, 0));
    assert_eq!(
        seqs_of(&s.diff_all("jobs")),
        vec![2, 3, 4, 5],
        "ack deletes the record"
    );
    let again = ack(&s, "jobs", "w1", &[1], None);
    assert_eq!(
        (again["acked"].clone(), skipped(&again)),
        (json!(0), vec![1]),
        "{again}"
    );

    // ack of several, some not ours: partial.
    let a = ack(&s, "jobs", "w2", &[3, 2, 4, 99], None);
    assert_eq!(a["acked"], json!(2), "{a}");
    let mut sk = skipped(&a);
    sk.sort_unstable();
    assert_eq!(sk, vec![2, 99], "{a}");
    assert_eq!(state(&s, "jobs"), (2, 0, 2, 0));

    // nack: back to ready at once (delay 0), not leased any more.
    let n = nack(&s, "jobs", "w1", &[2], None, 0);
    assert_eq!(n["nacked"], json!(1), "{n}");
    assert_eq!(
        (n["ready"].clone(), n["in_flight"].clone()),
        (json!(1), json!(1)),
        "{n}"
    );
    let n = nack(&s, "jobs", "w1", &[2], None, 0);
    assert_eq!(
        (n["nacked"].clone(), skipped(&n)),
        (json!(0), vec![2]),
        "a second nack: {n}"
    );
    let r = s.post_raw(
        "/v0/topics/jobs/claim",
        format!(r#"{{"node":"w3","max":10,"lease_ms":{LONG}}}"#).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v3 = r.json();
    check_claim_response("jobs", &v3);
    assert_eq!(claimed_seqs(&v3), vec![2], "{v3}");
    assert_eq!(entries(&v3)[0]["deliveries"], json!(2), "{v3}");
    assert_eq!(
        raw_claimed(&r.body)[0]["data"],
        "[1, 2,3]",
        "redelivered data byte-exact"
    );

    // extend: our lease, and only ours.
    let t0 = now_ms();
    let x = extend(&s, "jobs", "w2", &[5, 2], None, 5000);
    let t1 = now_ms();
    assert_eq!(x["extended"], json!(1), "{x}");
    assert_eq!(skipped(&x), vec![2], "{x}");
    let d = x["deadlines"]["5"]
        .as_u64()
        .unwrap_or_else(|| panic!("deadlines.5 in {x}"));
    assert!(
        d >= t0 + 5000 && d <= t1 + 5000,
        "extend deadline {d} vs {t0}..{t1}"
    );
    assert!(x["deadlines"].get("2").is_none(), "{x}");
    let x = extend(&s, "jobs", "w2", &[3], None, 5000);
    assert_eq!(
        (x["extended"].clone(), skipped(&x)),
        (json!(0), vec![3]),
        "acked job: {x}"
    );
    assert_eq!(x["deadlines"], json!({}), "{x}");
    assert_eq!(state(&s, "jobs"), (2, 0, 2, 0));
}

#[test]
fn max_and_lease_ms_are_clamped() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({"lease_ms": 1234}));
    append_jobs(&s, "q", 0, 1006);

    let v = claim(&s, "q", json!({"node": "w", "max": 5000, "lease_ms": LONG}));
    assert_eq!(v["count"], json!(1000), "max is clamped to 1000");
    assert_eq!(claimed_seqs(&v), (1..=1000).collect::<Vec<u64>>());
    assert_eq!(v["ready"], json!(6), "{}", v["ready"]);
    let v = claim(&s, "q", json!({"node": "w", "max": 0, "lease_ms": LONG}));
    assert_eq!(claimed_seqs(&v), vec![1001], "max 0 is clamped up to 1");
    let v = claim(&s, "q", json!({"node": "w", "lease_ms": LONG}));
    assert_eq!(claimed_seqs(&v), vec![1002], "max defaults to 1");

    let deadline_of = |v: &Value| entries(v)[0]["deadline"].as_u64().unwrap();
    // Below the floor: 100 ms.
    let t0 = now_ms();
    let v = claim(&s, "q", json!({"node": "w", "lease_ms": 1}));
    let t1 = now_ms();
    let d = deadline_of(&v);
    assert!(
        d >= t0 + 100 && d <= t1 + 100,
        "lease_ms 1 -> deadline - now = {} (want 100)",
        d - t0
    );
    // Above the ceiling: 86400000 ms.
    let t0 = now_ms();
    let v = claim(
        &s,
        "q",
        json!({"node": "w", "lease_ms": 1_000_000_000_000u64}),
    );
    let t1 = now_ms();
    let d = deadline_of(&v);
    assert!(
        d >= t0 + 86_400_000 && d <= t1 + 86_400_000,
        "huge lease_ms -> deadline - now = {} (want 86400000)",
        d - t0
    );
    let seq_long = claimed_seqs(&v)[0];
    // Absent: the topic's lease_ms.
    let t0 = now_ms();
    let v = claim(&s, "q", json!({"node": "w"}));
    let t1 = now_ms();
    let d = deadline_of(&v);
    assert!(
        d >= t0 + 1234 && d <= t1 + 1234,
        "default lease: deadline - now = {}",
        d - t0
    );

    // extend clamps the same way.
    let t0 = now_ms();
    let x = extend(&s, "q", "w", &[seq_long], None, 1);
    let t1 = now_ms();
    let d = x["deadlines"][seq_long.to_string()]
        .as_u64()
        .expect("deadline");
    assert!(
        d >= t0 + 100 && d <= t1 + 100,
        "extend lease_ms 1 -> {}",
        d - t0
    );
    let t0 = now_ms();
    let x = extend(&s, "q", "w", &[seq_long], None, 1_000_000_000_000);
    let t1 = now_ms();
    let d = x["deadlines"][seq_long.to_string()]
        .as_u64()
        .expect("deadline");
    assert!(
        d >= t0 + 86_400_000 && d <= t1 + 86_400_000,
        "extend huge lease_ms -> {}",
        d - t0
    );
}

#[test]
fn redelivered_jobs_come_first_then_fresh_in_seq_order() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    append_jobs(&s, "q", 0, 10);
    let a = claim_n(&s, "q", "a", 3, 200);
    assert_eq!(claimed_seqs(&a), vec![1, 2, 3]);
    let b = claim_n(&s, "q", "b", 2, LONG);
    assert_eq!(claimed_seqs(&b), vec![4, 5]);
    let n = nack(&s, "q", "b", &[5], None, 0);
    assert_eq!(n["nacked"], json!(1), "{n}");
    std::thread::sleep(Duration::from_millis(350));
    // 1-3 expired, 5 nacked: served before the fresh 6, 7.
    let c = claim_n(&s, "q", "c", 6, LONG);
    let got = claimed_seqs(&c);
    assert_eq!(got.len(), 6, "{c}");
    let mut first: Vec<u64> = got[..4].to_vec();
    first.sort_unstable();
    assert_eq!(first, vec![1, 2, 3, 5], "redeliveries first: {got:?}");
    assert_eq!(&got[4..], &[6, 7], "then fresh jobs in seq order: {got:?}");
    let dv = deliveries_map(&c);
    for sq in [1, 2, 3, 5] {
        assert_eq!(dv[&sq], 2, "deliveries of {sq}: {c}");
    }
    assert_eq!((dv[&6], dv[&7]), (1, 1), "{c}");
    assert_eq!(c["ready"], json!(3), "{c}");
    assert_eq!(state(&s, "q"), (10, 3, 7, 0));
    let v = ack(&s, "q", "b", &[4], None);
    assert_eq!(v["acked"], json!(1), "{v}");
    assert_eq!(state(&s, "q"), (9, 3, 6, 0));
    // Nack 2 and 6 again: they come back before 8, 9, 10, with deliveries 3 and 2.
    let v = nack(&s, "q", "c", &[6, 2], None, 0);
    assert_eq!(v["nacked"], json!(2), "{v}");
    let d = claim_n(&s, "q", "d", 3, LONG);
    let got = claimed_seqs(&d);
    let mut first: Vec<u64> = got[..2].to_vec();
    first.sort_unstable();
    assert_eq!(first, vec![2, 6], "{d}");
    assert_eq!(got[2], 8, "{d}");
    let dv = deliveries_map(&d);
    assert_eq!((dv[&2], dv[&6], dv[&8]), (3, 2, 1), "{d}");
}

#[test]
fn fencing_a_late_ack_after_a_reclaim_is_skipped() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({"durable": true}));
    append_jobs(&s, "q", 0, 2);
    let a = claim_n(&s, "q", "a", 1, 200);
    assert_eq!(claimed_seqs(&a), vec![1]);
    let a_id = lease_map(&a)[&1].clone();
    std::thread::sleep(Duration::from_millis(300));
    let b = claim_n(&s, "q", "b", 1, LONG);
    assert_eq!(
        claimed_seqs(&b),
        vec![1],
        "the expired job is re-claimed: {b}"
    );
    assert_eq!(deliveries_map(&b)[&1], 2);
    let b_id = lease_map(&b)[&1].clone();
    assert_ne!(a_id, b_id, "a new claim gets a new lease id");

    // a's late ack, nack and extend change nothing.
    let v = ack(&s, "q", "a", &[1], None);
    assert_eq!(
        (v["acked"].clone(), skipped(&v)),
        (json!(0), vec![1]),
        "late ack: {v}"
    );
    let v = ack(&s, "q", "a", &[1], Some(std::slice::from_ref(&a_id)));
    assert_eq!(v["acked"], json!(0), "late ack with its lease id: {v}");
    let v = ack(&s, "q", "a", &[1], Some(std::slice::from_ref(&b_id)));
    assert_eq!(v["acked"], json!(0), "another node's lease id: {v}");
    let v = nack(&s, "q", "a", &[1], None, 0);
    assert_eq!(v["nacked"], json!(0), "late nack: {v}");
    let v = extend(&s, "q", "a", &[1], None, 5000);
    assert_eq!(v["extended"], json!(0), "late extend: {v}");
    // b with a's (stale) lease id: skipped too.
    let v = ack(&s, "q", "b", &[1], Some(std::slice::from_ref(&a_id)));
    assert_eq!(v["acked"], json!(0), "stale lease id: {v}");
    assert_eq!(state(&s, "q"), (2, 1, 1, 0), "still leased to b");
    let v = ack(&s, "q", "b", &[1], Some(std::slice::from_ref(&b_id)));
    assert_eq!(v["acked"], json!(1), "{v}");
    let v = ack(&s, "q", "b", &[1], Some(&[b_id]));
    assert_eq!(
        (v["acked"].clone(), skipped(&v)),
        (json!(0), vec![1]),
        "acked twice: {v}"
    );

    // The same node re-claiming after expiry: only the new lease id acks.
    let a1 = claim_n(&s, "q", "a", 1, 150);
    assert_eq!(claimed_seqs(&a1), vec![2]);
    let old = lease_map(&a1)[&2].clone();
    std::thread::sleep(Duration::from_millis(250));
    let a2 = claim_n(&s, "q", "a", 1, LONG);
    assert_eq!(claimed_seqs(&a2), vec![2]);
    let new = lease_map(&a2)[&2].clone();
    assert_ne!(old, new);
    let v = ack(&s, "q", "a", &[2], Some(&[old]));
    assert_eq!(
        (v["acked"].clone(), skipped(&v)),
        (json!(0), vec![2]),
        "{v}"
    );
    let v = ack(&s, "q", "a", &[2], Some(&[new]));
    assert_eq!(v["acked"], json!(1), "{v}");
    assert_eq!(state(&s, "q"), (0, 0, 0, 0));
    assert!(s.diff_all("q").is_empty());
}

#[test]
fn nack_delay_holds_the_job_back() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    append_jobs(&s, "q", 0, 1);
    let a = claim_n(&s, "q", "a", 1, LONG);
    let t_nack = Instant::now();
    let n = nack(&s, "q", "a", &[1], None, 800);
    assert_eq!(n["nacked"], json!(1), "{n}");
    assert_eq!(
        (n["ready"].clone(), n["in_flight"].clone()),
        (json!(0), json!(0)),
        "a delayed job is neither ready nor in flight: {n}"
    );
    assert_eq!(state(&s, "q"), (1, 0, 0, 0));
    let v = claim_n(&s, "q", "b", 5, LONG);
    assert_eq!(v["count"], json!(0), "claimable before its delay: {v}");
    // A waiting claim gets it once the delay has passed, not before.
    let v = claim(
        &s,
        "q",
        json!({"node": "b", "max": 5, "wait_ms": 5000, "lease_ms": 200}),
    );
    let waited = t_nack.elapsed();
    assert_eq!(claimed_seqs(&v), vec![1], "{v}");
    assert!(
        waited >= Duration::from_millis(780),
        "delivered {waited:?} after a nack with delay_ms 800"
    );
    assert!(waited < Duration::from_millis(3000), "took {waited:?}");
    assert_eq!(deliveries_map(&v)[&1], 2);
    assert_ne!(lease_map(&v)[&1], lease_map(&a)[&1]);
    // A short delay, claimed by polling after it.
    std::thread::sleep(Duration::from_millis(300));
    let v = claim_n(&s, "q", "c", 1, LONG);
    assert_eq!(claimed_seqs(&v), vec![1], "lease expired");
    let n = nack(&s, "q", "c", &[1], None, 300);
    assert_eq!(n["nacked"], json!(1));
    assert_eq!(claim_n(&s, "q", "d", 1, LONG)["count"], json!(0));
    std::thread::sleep(Duration::from_millis(400));
    let v = claim_n(&s, "q", "d", 1, LONG);
    assert_eq!(claimed_seqs(&v), vec![1]);
    assert_eq!(deliveries_map(&v)[&1], 4);
}

#[test]
fn an_expired_lease_is_claimable_without_other_traffic() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    append_jobs(&s, "q", 0, 2);
    let a = claim_n(&s, "q", "a", 1, 250);
    assert_eq!(claimed_seqs(&a), vec![1]);
    // Nothing at all happens on the server for longer than the lease.
    std::thread::sleep(Duration::from_millis(400));
    let b = claim_n(&s, "q", "b", 1, LONG);
    assert_eq!(
        claimed_seqs(&b),
        vec![1],
        "expired lease not reclaimed: {b}"
    );
    assert_eq!(deliveries_map(&b)[&1], 2);
    assert_eq!(state(&s, "q"), (2, 1, 1, 0));

    // A claim already waiting is woken by the expiry.
    let t0 = Instant::now();
    let a = claim_n(&s, "q", "a", 1, 300);
    assert_eq!(claimed_seqs(&a), vec![2]);
    let v = claim(
        &s,
        "q",
        json!({"node": "c", "max": 5, "wait_ms": 5000, "lease_ms": LONG}),
    );
    let waited = t0.elapsed();
    assert_eq!(claimed_seqs(&v), vec![2], "{v}");
    assert!(
        waited >= Duration::from_millis(280) && waited < Duration::from_millis(2500),
        "waiting claim returned {waited:?} after a 300 ms lease was taken"
    );
    // In the meantime (before the expiry) the GET counted it in flight; now c holds both.
    assert_eq!(state(&s, "q"), (2, 0, 2, 0));
}

#[test]
fn extend_pushes_the_deadline() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    append_jobs(&s, "q", 0, 1);
    let t0 = Instant::now();
    let a = claim_n(&s, "q", "a", 1, 300);
    let id = lease_map(&a)[&1].clone();
    let before = now_ms();
    let x = extend(&s, "q", "a", &[1], Some(std::slice::from_ref(&id)), 1500);
    let after = now_ms();
    assert_eq!(x["extended"], json!(1), "{x}");
    let d = x["deadlines"]["1"].as_u64().expect("deadlines.1");
    assert!(d >= before + 1500 && d <= after + 1500, "deadline {d}");
    // Someone else, or a wrong lease id, cannot extend.
    let v = extend(&s, "q", "b", &[1], None, LONG);
    assert_eq!(
        (v["extended"].clone(), skipped(&v)),
        (json!(0), vec![1]),
        "{v}"
    );
    let v = extend(
        &s,
        "q",
        "a",
        &[1],
        Some(&["lease_00000000deadbeef".to_string()]),
        LONG,
    );
    assert_eq!(v["extended"], json!(0), "{v}");
    // Past the original 300 ms: still leased.
    std::thread::sleep(Duration::from_millis(600).saturating_sub(t0.elapsed()));
    let v = claim_n(&s, "q", "b", 1, LONG);
    assert_eq!(
        v["count"],
        json!(0),
        "re-claimed before the extended deadline: {v}"
    );
    assert_eq!(state(&s, "q"), (1, 0, 1, 0));
    // A waiting claim gets it at the new deadline.
    let v = claim(
        &s,
        "q",
        json!({"node": "b", "max": 1, "wait_ms": 5000, "lease_ms": LONG}),
    );
    let at = now_ms();
    assert_eq!(claimed_seqs(&v), vec![1], "{v}");
    assert!(at >= d, "claimed at {at}, before the extended deadline {d}");
    assert!(
        at < d + 2000,
        "claimed at {at}, long after the deadline {d}"
    );
    assert_eq!(deliveries_map(&v)[&1], 2, "{v}");
    // The extended lease id is the same lease: a's ack is now skipped (b holds it).
    let v = ack(&s, "q", "a", &[1], Some(&[id]));
    assert_eq!(v["acked"], json!(0), "{v}");
}

#[test]
fn claim_wait_ms_long_polls() {
    let s = Server::start(2);
    make_queue(&s, "q", json!({}));
    // Nothing comes: empty after wait_ms.
    let t0 = Instant::now();
    let v = claim(&s, "q", json!({"node": "w", "max": 3, "wait_ms": 600}));
    let waited = t0.elapsed();
    assert_eq!(v["count"], json!(0), "{v}");
    assert_eq!(v["claimed"], json!([]), "{v}");
    assert!(
        waited >= Duration::from_millis(580) && waited < Duration::from_millis(3000),
        "an empty wait_ms 600 claim took {waited:?}"
    );
    // A job appended while a claim waits: returned at once, well before wait_ms.
    let port = s.port;
    let waiter = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        let t0 = Instant::now();
        let r = c.json_post(
            "/v0/topics/q/claim",
            &json!({"node": "w", "max": 3, "wait_ms": 10_000}),
        );
        (r, t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let t_append = Instant::now();
    append_jobs(&s, "q", 0, 1);
    let ((st, v), waited) = waiter.join().unwrap();
    let after_append = t_append.elapsed();
    assert_eq!(st, 200, "{v}");
    check_claim_response("q", &v);
    assert_eq!(claimed_seqs(&v), vec![1], "{v}");
    assert!(
        waited < Duration::from_millis(3000) && after_append < Duration::from_millis(1500),
        "the waiting claim answered {after_append:?} after the append ({waited:?} in all)"
    );
    assert_eq!(state(&s, "q"), (1, 0, 1, 0));
}

// ---- cohorts ----------------------------------------------------------------------------------

/// Claims concurrently, one thread per `max`, all released at once; returns each claim's seqs.
fn concurrent_claims(s: &Server, q: &str, maxes: &[u64]) -> Vec<Vec<u64>> {
    let barrier = Arc::new(Barrier::new(maxes.len()));
    let threads: Vec<_> = maxes
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let port = s.port;
            let q = q.to_string();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                barrier.wait();
                let (st, v) = c.json_post(
                    &format!("/v0/topics/{q}/claim"),
                    &json!({"node": format!("c{i}"), "max": m, "lease_ms": LONG}),
                );
                assert_eq!(st, 200, "{v}");
                check_claim_response(&q, &v);
                claimed_seqs(&v)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn check_shares(got: &[Vec<u64>], maxes: &[u64], available: u64) {
    let total: u64 = maxes.iter().sum();
    let mut all = BTreeSet::new();
    for (g, m) in got.iter().zip(maxes) {
        assert!(
            g.len() as u64 <= *m,
            "a claim got {} > its max {m}: {got:?}",
            g.len()
        );
        for s in g {
            assert!(all.insert(*s), "seq {s} given to two claims: {got:?}");
        }
        let fair = available as f64 * *m as f64 / total as f64;
        assert!(
            (g.len() as f64 - fair).abs() <= 1.0,
            "max {m} got {} jobs, its proportional share of {available} is {fair:.1}: {got:?}",
            g.len()
        );
    }
    assert_eq!(all.len() as u64, available.min(total), "{got:?}");
}

#[test]
fn claim_cohorts_share_jobs_in_proportion_to_max() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({"claim_jitter_ms": 300}));
    append_jobs(&s, "q", 0, 30);
    // First-come would give 20 + 10 (or 30 + 0); a cohort gives 10 + 20.
    let maxes = [20, 40];
    let got = concurrent_claims(&s, "q", &maxes);
    check_shares(&got, &maxes, 30);
    assert_eq!(state(&s, "q"), (30, 0, 30, 0));

    append_jobs(&s, "q", 30, 15);
    let maxes = [5, 10, 15];
    let got = concurrent_claims(&s, "q", &maxes);
    check_shares(&got, &maxes, 15);
    let new: BTreeSet<u64> = got.iter().flatten().copied().collect();
    assert_eq!(new, (31..=45).collect::<BTreeSet<u64>>(), "{got:?}");

    // More jobs than the cohort wants: everyone gets its max.
    append_jobs(&s, "q", 45, 40);
    let maxes = [4, 8];
    let got = concurrent_claims(&s, "q", &maxes);
    assert_eq!(
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![4, 8],
        "{got:?}"
    );
    let mut all: Vec<u64> = got.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (46..=57).collect::<Vec<u64>>(), "{got:?}");
}

// ---- dead letters -----------------------------------------------------------------------------

#[test]
fn dead_letters_move_across_cores_with_stamps() {
    let mut s = Server::start(2);
    let q = name_on_shard("jobs-", 0, 2);
    let dl = name_on_shard("dead-", 1, 2);
    assert_ne!(shard_of(&q, 2), shard_of(&dl, 2));
    make_queue(
        &s,
        &q,
        json!({"max_deliveries": 2, "dead_letter": dl, "durable": true}),
    );
    let body = br#"{"records":[
        {"data": { "id" : 1, "x":[1,2] }, "tag": "poison", "meta": { "origin" : "api" }},
        {"data": "plain"},
        {"data": 3}
    ]}"#;
    let r = s.post_raw(&format!("/v0/topics/{q}"), body);
    assert_eq!(r.status, 200, "{}", r.text());
    // Job 3 is acked at its first delivery and never moves.
    let v = claim_n(&s, &q, "w", 10, 200);
    assert_eq!(claimed_seqs(&v), vec![1, 2, 3]);
    assert_eq!(ack(&s, &q, "w", &[3], None)["acked"], json!(1));
    // Delivery 1 ends by a nack (1) and by expiry (2); so does delivery 2.
    assert_eq!(nack(&s, &q, "w", &[1], None, 0)["nacked"], json!(1));
    std::thread::sleep(Duration::from_millis(300));
    let v = claim_n(&s, &q, "w", 10, 200);
    assert_eq!(claimed_seqs(&v).len(), 2, "{v}");
    assert_eq!(deliveries_map(&v), BTreeMap::from([(1, 2), (2, 2)]), "{v}");
    assert_eq!(nack(&s, &q, "w", &[1], None, 0)["nacked"], json!(1));
    std::thread::sleep(Duration::from_millis(300));
    assert_error(&s.get(&format!("/v0/topics/{dl}")), 404, "topic_not_found");
    // The third delivery attempt moves both instead.
    let v = claim_n(&s, &q, "w", 10, LONG);
    assert_eq!(
        v["count"],
        json!(0),
        "a job delivered a 3rd time with max_deliveries 2: {v}"
    );
    let check = |s: &Server| {
        assert_eq!(state(s, &q), (0, 0, 0, 2), "queue after dead-lettering");
        assert!(
            s.diff_all(&q).is_empty(),
            "dead-lettered jobs still in the queue"
        );
        let recs = s.diff_all_raw(&dl);
        assert_eq!(recs.len(), 2, "dead-letter topic: {recs:?}");
        let by_src: BTreeMap<u64, &BTreeMap<String, String>> = recs
            .iter()
            .map(|r| {
                let m: Value = serde_json::from_str(&r["meta"]).expect("meta");
                (m["$dead_letter_src_seq"].as_u64().expect("src seq"), r)
            })
            .collect();
        assert_eq!(
            by_src.keys().copied().collect::<Vec<_>>(),
            vec![1, 2],
            "{recs:?}"
        );
        let one = by_src[&1];
        assert_eq!(one["data"], r#"{ "id" : 1, "x":[1,2] }"#, "data byte-exact");
        assert_eq!(one["$tag"], r#""poison""#);
        let m: Value = serde_json::from_str(&one["meta"]).unwrap();
        assert_eq!(
            m,
            json!({"origin": "api", "$dead_letter_from": q, "$dead_letter_deliveries": 2,
                   "$dead_letter_src_seq": 1}),
            "meta of the moved job"
        );
        let two = by_src[&2];
        assert_eq!(two["data"], r#""plain""#);
        assert!(!two.contains_key("$tag"), "{two:?}");
        let m: Value = serde_json::from_str(&two["meta"]).unwrap();
        assert_eq!(
            m,
            json!({"$dead_letter_from": q, "$dead_letter_deliveries": 2, "$dead_letter_src_seq": 2}),
        );
    };
    check(&s);
    // Moved once, for good: a restart neither duplicates nor resurrects.
    std::thread::sleep(Duration::from_millis(200));
    s.restart_kill9();
    check(&s);
    let v = claim_n(&s, &q, "w", 10, LONG);
    assert_eq!(v["count"], json!(0), "{v}");
}

// ---- /work ------------------------------------------------------------------------------------

#[test]
fn work_stream_keeps_max_leased_refills_on_ack_and_releases_on_disconnect() {
    let s = Server::start(2);
    make_queue(&s, "wq", json!({}));
    append_jobs(&s, "wq", 0, 5);
    let t = Duration::from_secs(5);
    let mut w = open_work(&s, "wq", &format!("node=w1&max=2&lease_ms={LONG}"));
    let j1 = next_job(&mut w, "wq", t);
    let j2 = next_job(&mut w, "wq", t);
    assert_eq!(
        (j1["$seq"].clone(), j2["$seq"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(
        (j1["deliveries"].clone(), j2["deliveries"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(j1["data"], json!({"job": 0}));
    // max=2: no third job while both are held.
    match w.next(Duration::from_millis(800)) {
        Next::Timeout => {}
        Next::Frame(f) if f.is_hb() => {}
        other => panic!("a third frame while 2 jobs are held with max=2: {other:?}"),
    }
    assert_eq!(state(&s, "wq"), (5, 3, 2, 0));
    // Acking one makes the next arrive.
    let id1 = j1["lease_id"].as_str().unwrap().to_string();
    let t_ack = Instant::now();
    assert_eq!(ack(&s, "wq", "w1", &[1], Some(&[id1]))["acked"], json!(1));
    let j3 = next_job(&mut w, "wq", t);
    assert!(
        t_ack.elapsed() < Duration::from_millis(1500),
        "refill took {:?}",
        t_ack.elapsed()
    );
    assert_eq!(j3["$seq"], json!(3));
    // A nack gives the slot back too, and the nacked job is delivered again (first).
    assert_eq!(nack(&s, "wq", "w1", &[2], None, 0)["nacked"], json!(1));
    let j2b = next_job(&mut w, "wq", t);
    assert_eq!(
        (j2b["$seq"].clone(), j2b["deliveries"].clone()),
        (json!(2), json!(2))
    );
    match w.next(Duration::from_millis(300)) {
        Next::Timeout => {}
        Next::Frame(f) if f.is_hb() => {}
        other => panic!("over max: {other:?}"),
    }
    assert_eq!(state(&s, "wq"), (4, 2, 2, 0));

    // Dropping the connection releases its two leases at once (they had 60 s left).
    drop(w);
    let took = wait_for(Duration::from_secs(3), || state(&s, "wq").2 == 0)
        .expect("leases of a closed /work stream still held after 3 s");
    assert!(
        took < Duration::from_millis(1500),
        "released after {took:?}"
    );
    let v = claim_n(&s, "wq", "other", 10, LONG);
    let got = claimed_seqs(&v);
    let mut first = got[..2].to_vec();
    first.sort_unstable();
    assert_eq!(first, vec![2, 3], "released jobs first: {v}");
    assert_eq!(&got[2..], &[4, 5], "{v}");
    assert_eq!(
        deliveries_map(&v),
        BTreeMap::from([(2, 3), (3, 2), (4, 1), (5, 1)]),
        "{v}"
    );
}

#[test]
fn work_stream_pushes_new_jobs_and_frames_have_the_entry_shape() {
    let s = Server::start(1);
    let body = json!({"type": "queue", "lease_ms": LONG});
    let (st, v) = s.put("/v0/topics/push", &body);
    assert_eq!(st, 201, "{v}");
    let mut w = open_work(&s, "push", "node=w&max=5");
    match w.next(Duration::from_millis(400)) {
        Next::Timeout => {}
        other => panic!("frame on an empty queue: {other:?}"),
    }
    let t0 = Instant::now();
    let r = s.post_raw(
        "/v0/topics/push",
        br#"{"records":[{"data":{"a":1},"tag":"t","node":"n","meta":{"m":true}},{"data":2}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let a = next_job(&mut w, "push", Duration::from_secs(5));
    let b = next_job(&mut w, "push", Duration::from_secs(5));
    assert!(
        t0.elapsed() < Duration::from_millis(2000),
        "push took {:?}",
        t0.elapsed()
    );
    assert_eq!(a["$seq"], json!(1));
    assert_eq!(a["$tag"], json!("t"));
    assert_eq!(a["$node"], json!("n"));
    assert_eq!(a["meta"], json!({"m": true}));
    assert_eq!(a["data"], json!({"a": 1}));
    assert_eq!(b["$seq"], json!(2));
    assert!(b.get("meta").is_none() && b.get("$tag").is_none(), "{b}");
    // The pushed jobs are leased to the stream's node with the topic's lease_ms.
    let d = a["deadline"].as_u64().unwrap();
    assert!(d > now_ms() + LONG - 5000, "deadline {d}");
    let ids = [
        a["lease_id"].as_str().unwrap().to_string(),
        b["lease_id"].as_str().unwrap().to_string(),
    ];
    let v = ack(&s, "push", "w", &[1, 2], Some(&ids));
    assert_eq!(v["acked"], json!(2), "{v}");
    assert_eq!(state(&s, "push"), (0, 0, 0, 0));
}

// ---- restarts ---------------------------------------------------------------------------------

fn restart_case(leases_durable: bool) {
    let mut s = Server::start(2);
    make_queue(
        &s,
        "q",
        json!({"durable": true, "leases_durable": leases_durable}),
    );
    append_jobs(&s, "q", 0, 7);
    let a = claim_n(&s, "q", "a", 4, LONG);
    assert_eq!(claimed_seqs(&a), vec![1, 2, 3, 4]);
    let a_ids = lease_map(&a);
    assert_eq!(ack(&s, "q", "a", &[1], None)["acked"], json!(1));
    assert_eq!(nack(&s, "q", "a", &[3], None, 0)["nacked"], json!(1));
    assert_eq!(nack(&s, "q", "a", &[4], None, LONG)["nacked"], json!(1));
    s.restart_kill9();

    let (count, ready, in_flight, _) = state(&s, "q");
    assert_eq!(count, 6, "acked job 1 came back (or a job was lost)");
    let b = claim_n(&s, "q", "b", 10, LONG);
    let got = claimed_seqs(&b);
    assert!(
        !got.contains(&1),
        "acked job 1 delivered after restart: {b}"
    );
    let dv = deliveries_map(&b);
    if leases_durable {
        assert_eq!(
            (ready, in_flight),
            (4, 1),
            "after restart: 2 leased, 4 delayed, 3 5 6 7 ready"
        );
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            vec![3, 5, 6, 7],
            "job 2 is still leased to a and job 4 still delayed: {b}"
        );
        assert_eq!(got[0], 3, "the nacked job first: {b}");
        assert_eq!(dv[&3], 2, "delivery count of 3 went back: {b}");
        // a still holds 2, by the same lease id.
        let v = ack(&s, "q", "a", &[2], Some(&[a_ids[&2].clone()]));
        assert_eq!(v["acked"], json!(1), "a's lease on 2 did not survive: {v}");
        // Counts keep growing after a graceful restart too.
        assert_eq!(nack(&s, "q", "b", &[3], None, 0)["nacked"], json!(1));
        s.restart_graceful();
        let c = claim_n(&s, "q", "c", 10, LONG);
        assert_eq!(claimed_seqs(&c), vec![3], "{c}");
        assert_eq!(deliveries_map(&c)[&3], 3, "{c}");
        assert_eq!(state(&s, "q"), (5, 0, 4, 0), "3 5 6 7 leased, 4 delayed");
    } else {
        assert_eq!(in_flight, 0, "leases_durable false: leases are forgotten");
        assert_eq!(ready, 6, "leases_durable false: nack delays are forgotten");
        assert_eq!(
            got,
            vec![2, 3, 4, 5, 6, 7],
            "every unacked job is claimable: {b}"
        );
        let v = ack(&s, "q", "a", &[2], Some(&[a_ids[&2].clone()]));
        assert_eq!(
            v["acked"],
            json!(0),
            "a forgotten lease acked a job now b's: {v}"
        );
        assert_eq!(ack(&s, "q", "b", &[2, 3], None)["acked"], json!(2));
        s.restart_graceful();
        let c = claim_n(&s, "q", "c", 10, LONG);
        let mut got = claimed_seqs(&c);
        got.sort_unstable();
        assert_eq!(got, vec![4, 5, 6, 7], "{c}");
    }
    // Acked jobs never come back.
    let left = seqs_of(&s.diff_all("q"));
    assert!(
        !left.contains(&1) && !left.contains(&2),
        "acked jobs present: {left:?}"
    );
}

#[test]
fn durable_leases_and_delivery_counts_survive_kill9() {
    restart_case(true);
}

#[test]
fn volatile_leases_are_forgotten_at_kill9_but_acks_are_not() {
    restart_case(false);
}

/// Queue records and state move through checkpoints (segments + snapshot) and come back.
#[test]
fn queue_state_survives_checkpoints_and_restart() {
    let mut s = Server::start_with(
        1,
        &[
            "--checkpoint-interval-ms",
            "100",
            "--hot-tail-bytes",
            "4096",
        ],
    );
    make_queue(&s, "cq", json!({"durable": true, "leases_durable": true}));
    let pad = "x".repeat(150);
    let recs: Vec<Value> = (0..300u64)
        .map(|k| json!({"data": {"job": k, "pad": pad}, "tag": format!("j{k}")}))
        .collect();
    s.append("cq", Value::Array(recs));
    // Deliveries and acks spread over segment-resident and hot jobs.
    let a = claim_n(&s, "cq", "a", 60, LONG);
    assert_eq!(claimed_seqs(&a), (1..=60).collect::<Vec<u64>>());
    let odd: Vec<u64> = (1..=60).filter(|x| x % 2 == 1).collect();
    assert_eq!(ack(&s, "cq", "a", &odd, None)["acked"], json!(30));
    let nacked: Vec<u64> = (2..=20).step_by(2).collect();
    assert_eq!(nack(&s, "cq", "a", &nacked, None, 0)["nacked"], json!(10));
    // A checkpoint with leases, delays and acks in it; the jobs are in segments by then.
    storage::wait_for_checkpoint_of(&s, &["cq"]);
    storage::assert_has_segments(&s, "300 jobs of 170 bytes, --hot-tail-bytes 4096");
    // Work after the checkpoints: redeliver the nacked ones, ack some of the tail.
    let b = claim_n(&s, "cq", "b", 10, LONG);
    let mut got = claimed_seqs(&b);
    got.sort_unstable();
    assert_eq!(got, nacked, "{b}");
    assert!(deliveries_map(&b).values().all(|d| *d == 2), "{b}");
    let c = claim_n(&s, "cq", "c", 40, LONG);
    assert_eq!(claimed_seqs(&c), (61..=100).collect::<Vec<u64>>());
    let tail_acked: Vec<u64> = (61..=100).filter(|x| x % 3 == 0).collect();
    assert_eq!(
        ack(&s, "cq", "c", &tail_acked, None)["acked"],
        json!(tail_acked.len())
    );
    // No wait here: what follows the checkpoint comes back by WAL replay over the snapshot
    // (or from a later checkpoint).
    let acked: BTreeSet<u64> = odd.iter().chain(&tail_acked).copied().collect();
    let want_count = 300 - acked.len() as u64;
    let before = state(&s, "cq");
    assert_eq!(before.0, want_count);

    s.restart_kill9();
    assert_eq!(state(&s, "cq"), before, "queue state after restart");
    let live = seqs_of(&s.diff_all("cq"));
    let want: Vec<u64> = (1..=300).filter(|x| !acked.contains(x)).collect();
    assert_eq!(live, want, "records after restart");
    // a's leases (22..=60 even) and b's, c's survive; everything else is claimable.
    let d = claim_n(&s, "cq", "d", 1000, LONG);
    let got = claimed_seqs(&d);
    assert_eq!(
        got,
        (101..=300).collect::<Vec<u64>>(),
        "only fresh jobs are claimable"
    );
    let raw = s.diff_all("cq");
    for r in raw.iter().filter(|r| r["$seq"].as_u64().unwrap() > 100) {
        let k = r["$seq"].as_u64().unwrap() - 1;
        assert_eq!(r["data"], json!({"job": k, "pad": pad}));
        assert_eq!(r["$tag"], json!(format!("j{k}")));
    }
    // Ack every held job by its holder with its pre-restart lease ids.
    let a_left: Vec<u64> = (22..=60).step_by(2).collect();
    let ids_a: Vec<String> = a_left.iter().map(|x| lease_map(&a)[x].clone()).collect();
    assert_eq!(
        ack(&s, "cq", "a", &a_left, Some(&ids_a))["acked"],
        json!(a_left.len())
    );
    assert_eq!(ack(&s, "cq", "b", &nacked, None)["acked"], json!(10));
    let c_left: Vec<u64> = (61..=100).filter(|x| x % 3 != 0).collect();
    assert_eq!(
        ack(&s, "cq", "c", &c_left, None)["acked"],
        json!(c_left.len())
    );
    let v = ack(&s, "cq", "d", &got, None);
    assert_eq!(v["acked"], json!(200), "{v}");
    assert_eq!(state(&s, "cq"), (0, 0, 0, 0));
    storage::wait_for_checkpoint_of(&s, &["cq"]);
    s.restart_kill9();
    assert_eq!(
        state(&s, "cq"),
        (0, 0, 0, 0),
        "acked jobs came back after a checkpoint"
    );
    assert!(s.diff_all("cq").is_empty());
    assert_eq!(claim_n(&s, "cq", "e", 1000, LONG)["count"], json!(0));
}

// ---- found while testing ----------------------------------------------------------------------

/// A seq named twice in one call is one job: it is acked (nacked, extended) once, and the
/// counts say so.
#[test]
fn a_seq_repeated_in_one_call_counts_once() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    append_jobs(&s, "q", 0, 3);
    claim_n(&s, "q", "a", 3, LONG);
    let mut failures = Vec::new();
    // (Not the `extend` helper: it checks that `deadlines` has one entry per extended job.)
    let (st, x) = post(
        &s,
        "q",
        "extend",
        &json!({"node": "a", "seqs": [3, 3], "lease_ms": 5000}),
    );
    assert_eq!(st, 200, "{x}");
    if x["extended"] != json!(1) {
        failures.push(format!("extend [3, 3]: {x}"));
    }
    let n = nack(&s, "q", "a", &[2, 2], None, 0);
    if n["nacked"] != json!(1) {
        failures.push(format!("nack [2, 2]: {n}"));
    }
    let a = ack(&s, "q", "a", &[1, 1], None);
    if a["acked"] != json!(1) {
        failures.push(format!("ack [1, 1]: {a}"));
    }
    assert!(
        failures.is_empty(),
        "one job, counted twice:\n{}",
        failures.join("\n")
    );
    assert_eq!(state(&s, "q"), (2, 1, 1, 0));
}

/// Moving poison jobs to the dead-letter topic does not make a claim come back empty while
/// other jobs are claimable (same-core dead-letter topic, too).
#[test]
fn dead_lettering_does_not_starve_a_claim() {
    let s = Server::start(1);
    make_queue(
        &s,
        "q",
        json!({"max_deliveries": 1, "dead_letter": "q-dead"}),
    );
    append_jobs(&s, "q", 0, 4);
    assert_eq!(claimed_seqs(&claim_n(&s, "q", "a", 2, LONG)), vec![1, 2]);
    assert_eq!(nack(&s, "q", "a", &[1, 2], None, 0)["nacked"], json!(2));
    // 1 and 2 would be delivered a 2nd time: they move; 3 and 4 are there to be claimed.
    let v = claim_n(&s, "q", "a", 2, LONG);
    assert_eq!(s.diff_all("q-dead").len(), 2, "poison jobs moved");
    assert_eq!(state(&s, "q").3, 2, "dead_lettered");
    assert_eq!(
        claimed_seqs(&v),
        vec![3, 4],
        "a claim with max 2 came back with {} jobs while 2 were ready: {v}",
        v["count"]
    );
}

/// Lease ids are fencing tokens: one handed out before a crash never matches a lease handed
/// out after it, even with `leases_durable: false` and the same node re-claiming.
#[test]
fn lease_ids_are_not_reused_after_kill9() {
    let mut s = Server::start(1);
    make_queue(&s, "q", json!({"durable": true}));
    append_jobs(&s, "q", 0, 1);
    let before = claim_n(&s, "q", "host-1", 1, LONG);
    let old = lease_map(&before)[&1].clone();
    s.restart_kill9();
    let after = claim_n(&s, "q", "host-1", 1, LONG);
    assert_eq!(claimed_seqs(&after), vec![1], "volatile lease forgotten");
    let new = lease_map(&after)[&1].clone();
    // The worker that claimed before the crash acks late, with its old lease id.
    let v = ack(&s, "q", "host-1", &[1], Some(std::slice::from_ref(&old)));
    assert_eq!(
        v["acked"],
        json!(0),
        "a pre-crash lease id ({old}) acked the job re-leased after the restart as {new}: {v}"
    );
    assert_ne!(old, new, "lease id handed out again after a restart");
}

/// Deleting a `/work` stream's queue ends the stream with an `event: error` frame whose data
/// is a JSON `{"code", "message"}` object (as on watch streams, SPEC §6).
#[test]
fn work_stream_ends_with_a_json_error_when_its_queue_is_deleted() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    append_jobs(&s, "q", 0, 1);
    let mut w = open_work(&s, "q", "node=w&max=2");
    next_job(&mut w, "q", Duration::from_secs(5));
    let (st, v) = s.delete("/v0/topics/q");
    assert_eq!((st, &v["deleted"]), (200, &json!(true)), "{v}");
    let f = w.data_frame(Duration::from_secs(5));
    assert_eq!(f.event(), Some("error"), "{f:?}");
    let data = match &f {
        common::sse::Frame::Event { data, .. } => data.clone(),
        _ => unreachable!(),
    };
    let e: Value = serde_json::from_str(&data)
        .unwrap_or_else(|_| panic!("error frame data is not JSON: {data:?}"));
    assert_eq!(e["code"], json!("topic_not_found"), "{e}");
    assert!(e["message"].is_string(), "{e}");
    match w.next(Duration::from_secs(5)) {
        Next::Closed => {}
        other => panic!("stream still open after its error frame: {other:?}"),
    }
}
