//! Property-based fuzzing of every JSON request body the API parses (issue 7), and of the
//! other client-controlled text it reads: query parameters, `Last-Event-ID`, `Authorization`,
//! names.
//!
//! Each body goes through the same functions its handler calls before it talks to a shard
//! (`json_body`, `parse::<Body>`, and the per-field validators), fed with arbitrary bytes,
//! JSON-flavoured token soup, arbitrary JSON values, plausible bodies with every field
//! varied, and mutations of those. The outcome must be `Ok` or a 400-class [`ApiError`]
//! whose response body has the SPEC §1 error shape; never a panic. The handlers' inline
//! checks after parsing (batch size, required fields) are exercised end to end by
//! `tests/fuzz_http.rs`.
//!
//! Defaults keep `cargo test` fast; `PROPTEST_CASES=N` runs every property N times.

use super::auth::Keys;
use super::queues::{node_of, parse_lease_id, ClaimBody, SeqsBody};
use super::records::{parse_match, to_record, AppendBody, DeleteBody, DiffBody, RecordIn};
use super::routers::{check_router_name, parse_router};
use super::topics::parse_config;
use super::watch::{b64url, parse_event_id, WatchBody};
use super::{
    check_topic_name, decode_cursor, encode_cursor, json_body, page, parse, query_bool, ApiError,
};
use crate::http::Request;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::time::Instant;

mod generators;
use generators::*;

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- checking outcomes ---------------------------------------------------------------------

/// The error renders as exactly the SPEC §1 body: `{"error": {"code", "message",
/// "detail"?}, "performance": {...}}`.
fn assert_error_shape(e: ApiError) {
    let (status, code) = (e.status, e.code);
    let resp = e.into_response(Instant::now());
    assert_eq!(resp.status, status);
    assert_eq!(resp.content_type, "application/json");
    let v: Value = serde_json::from_slice(&resp.body).unwrap_or_else(|err| {
        panic!(
            "error body is not JSON ({err}): {:?}",
            String::from_utf8_lossy(&resp.body)
        )
    });
    let top = v.as_object().expect("an object");
    assert_eq!(top.len(), 2, "{v}");
    let err = top["error"].as_object().expect("error is an object");
    assert_eq!(err["code"], code);
    assert!(err["message"].is_string(), "{v}");
    assert!(err
        .keys()
        .all(|k| matches!(k.as_str(), "code" | "message" | "detail")));
    assert!(top["performance"]["server_total_ms"].is_number(), "{v}");
}

/// `Ok`, or a 400 with one of the 400 codes of SPEC §1.
fn ok_or_400<T>(r: Result<T, ApiError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            assert_eq!(e.status, 400, "{e:?}");
            assert!(
                matches!(
                    e.code,
                    "invalid_request" | "record_too_large" | "batch_too_large"
                ),
                "{e:?}"
            );
            assert_error_shape(e);
            None
        }
    }
}

/// The endpoints with a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Append,
    Diff,
    Delete,
    Watch,
    Router,
    TopicPut,
    Claim,
    Ack,
    Nack,
    Extend,
}

const ENDPOINTS: [Endpoint; 10] = [
    Endpoint::Append,
    Endpoint::Diff,
    Endpoint::Delete,
    Endpoint::Watch,
    Endpoint::Router,
    Endpoint::TopicPut,
    Endpoint::Claim,
    Endpoint::Ack,
    Endpoint::Nack,
    Endpoint::Extend,
];

/// The raw `records` of an append body, to replay the per-record validation on.
#[derive(Deserialize)]
struct RawRecords<'a> {
    #[serde(borrow, default)]
    records: Option<&'a RawValue>,
}

/// Runs `body` (already past `json_body`) through what `endpoint`'s handler parses and
/// validates before it asks a shard.
fn check_body(endpoint: Endpoint, body: &[u8]) {
    // The auth pre-check of watch and router PUT parses every body as a Value first.
    let _ = serde_json::from_slice::<Value>(body);
    match endpoint {
        Endpoint::Append => {
            if ok_or_400(parse::<AppendBody<'_>>(body)).is_none() {
                return;
            }
            let Some(raw) = ok_or_400(parse::<RawRecords<'_>>(body)) else {
                return;
            };
            if let Some(records) = raw.records {
                if let Ok(records) = serde_json::from_str::<Vec<RecordIn<'_>>>(records.get()) {
                    for (i, r) in records.into_iter().enumerate() {
                        if let Some(rec) = ok_or_400(to_record(i, r, Some("batch-node"))) {
                            // data is kept byte for byte and is JSON on its own.
                            let data = std::str::from_utf8(&rec.data).expect("utf8");
                            assert!(serde_json::from_str::<&RawValue>(data).is_ok(), "{data}");
                        }
                    }
                }
            }
            if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
                if let Some(c) = m.get("config").filter(|c| !c.is_null()) {
                    ok_or_400(parse_config("t", c));
                }
            }
        }
        Endpoint::Diff => {
            ok_or_400(parse::<DiffBody>(body));
        }
        Endpoint::Delete => {
            if ok_or_400(parse::<DeleteBody>(body)).is_some() {
                if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
                    if let Some(v) = m.get("match").filter(|v| !v.is_null()) {
                        ok_or_400(parse_match(v));
                    }
                }
            }
        }
        Endpoint::Watch => {
            if ok_or_400(parse::<WatchBody>(body)).is_some() {
                if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
                    if let Some(Value::Object(t)) = m.get("topics") {
                        for name in t.keys() {
                            ok_or_400(check_topic_name(name));
                        }
                    }
                }
            }
        }
        Endpoint::Router => {
            if let Some(v) = ok_or_400(parse::<Value>(body)) {
                ok_or_400(parse_router(&v));
            }
        }
        Endpoint::TopicPut => {
            if let Some(v) = ok_or_400(parse::<Value>(body)) {
                ok_or_400(parse_config("orders", &v));
            }
        }
        Endpoint::Claim => {
            if ok_or_400(parse::<ClaimBody>(body)).is_some() {
                node_field(body);
            }
        }
        Endpoint::Ack | Endpoint::Nack | Endpoint::Extend => {
            if ok_or_400(parse::<SeqsBody>(body)).is_some() {
                node_field(body);
                if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
                    if let Some(Value::Array(ids)) = m.get("lease_ids") {
                        for id in ids.iter().filter_map(Value::as_str) {
                            if let Some(n) = parse_lease_id(id) {
                                assert_eq!(super::queues::lease_id_string(n), id);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The queue calls' `node` check, on the node the body carries.
fn node_field(body: &[u8]) {
    let node = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m.get("node").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    ok_or_400(node_of(node));
}

fn request(content_type: Option<&str>, body: &[u8]) -> Request {
    Request {
        method: "POST".into(),
        path: "/v0/topics/t".into(),
        headers: content_type
            .map(|ct| vec![("content-type".to_string(), ct.to_string())])
            .unwrap_or_default(),
        body: body.to_vec(),
        ..Request::default()
    }
}

/// The whole path: `json_body` with a JSON content type, then every endpoint.
fn check_all_endpoints(body: &[u8]) {
    let req = request(Some("application/json"), body);
    let bytes = json_body(&req).expect("declared JSON");
    if body.iter().all(u8::is_ascii_whitespace) {
        assert_eq!(bytes, b"{}");
    }
    for endpoint in ENDPOINTS {
        check_body(endpoint, bytes);
    }
}

// ---- bodies --------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(1000))]

    /// Plausible bodies for every endpoint, every field varied.
    #[test]
    fn plausible_bodies_parse_or_are_400((endpoint, body) in endpoint_and_body()) {
        let text = serde_json::to_vec(&body).expect("serialises");
        check_body(endpoint, &text);
        let pretty = serde_json::to_vec_pretty(&body).expect("serialises");
        check_body(endpoint, &pretty);
    }

    /// The same bodies with a few byte edits, through every endpoint.
    #[test]
    fn mutated_bodies_parse_or_are_400(
        (_, body) in endpoint_and_body(),
        edits in prop::collection::vec(edit(), 1..5),
    ) {
        let text = apply(serde_json::to_vec(&body).expect("serialises"), &edits);
        check_all_endpoints(&text);
    }

    /// Any JSON value at all, through every endpoint.
    #[test]
    fn arbitrary_json_parses_or_is_400(v in json_value()) {
        check_all_endpoints(&serde_json::to_vec(&v).expect("serialises"));
        let obj = serde_json::json!({ "records": [ { "data": v.clone(), "meta": v.clone() } ],
            "topics": { "t": v.clone() }, "match": v.clone(), "config": v.clone(),
            "source": v.clone(), "node": v.clone(), "seqs": v.clone(), "lease_ids": v });
        check_all_endpoints(&serde_json::to_vec(&obj).expect("serialises"));
    }

    /// Arbitrary bytes and JSON-ish token soup, through every endpoint.
    #[test]
    fn arbitrary_bytes_parse_or_are_400(
        body in prop_oneof![
            1 => prop::collection::vec(any::<u8>(), 0..256),
            3 => json_soup(),
            2 => json_soup().prop_map(|s| [b"{".to_vec(), s].concat()),
        ],
    ) {
        check_all_endpoints(&body);
    }

    /// The content-type gate: JSON media types pass (parameters and case are free), an
    /// empty body stands for `{}`, anything else is 415.
    #[test]
    fn content_type_gate(
        ct in prop::option::of(prop_oneof![
            select(vec![
                "application/json", "Application/JSON", "application/json; charset=utf-8",
                " application/json ;x", "application/json;", "text/plain", "application/jsonx",
                "application/json-seq", ";application/json", "", "application/ json",
            ]).prop_map(String::from),
            ".{0,30}",
        ]),
        body in prop_oneof![
            Just(Vec::new()),
            Just(b" \r\n\t ".to_vec()),
            json_soup(),
        ],
    ) {
        let req = request(ct.as_deref(), &body);
        let blank = body.iter().all(u8::is_ascii_whitespace);
        let media = ct.as_deref().unwrap_or("").split(';').next().unwrap_or("").trim();
        match json_body(&req) {
            Ok(b) if blank => prop_assert_eq!(b, b"{}"),
            Ok(b) => {
                prop_assert!(media.eq_ignore_ascii_case("application/json"));
                prop_assert_eq!(b, &body[..]);
            }
            Err(e) => {
                prop_assert!(!blank);
                prop_assert!(!media.eq_ignore_ascii_case("application/json"));
                prop_assert_eq!((e.status, e.code), (415, "unsupported_media_type"));
                assert_error_shape(e);
            }
        }
    }
}

// ---- other client-controlled text ------------------------------------------------------------

fn query_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        select(vec![
            "page_size=",
            "cursor=",
            "touch=",
            "if_empty=",
            "return_seqs=",
            "token=",
            "c",
            "&",
            "=",
            "%",
            "%2",
            "%zz",
            "%ff",
            "%c3%a9",
            "+",
            "0",
            "1",
            "1000",
            "1001",
            "18446744073709551616",
            "-1",
            "true",
            "false",
            "TRUE",
            "61",
            "6162",
        ])
        .prop_map(String::from),
        ".{0,4}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config(2000))]

    /// Query parameters: list paging and boolean flags are Ok or 400.
    #[test]
    fn query_parameters(query in query_text()) {
        let req = Request { query, ..Request::default() };
        if let Some((size, _)) = ok_or_400(page(&req)) {
            prop_assert!((1..=1000).contains(&size));
        }
        for name in ["touch", "if_empty", "return_seqs"] {
            ok_or_400(query_bool(&req, name, true));
        }
    }

    /// List cursors: decoding anything is safe, and names round-trip.
    #[test]
    fn cursors(junk in ".{0,40}", name in ".{0,40}") {
        let _ = decode_cursor(&junk);
        prop_assert_eq!(decode_cursor(&encode_cursor(&name)), Some(name));
    }

    /// `Last-Event-ID`: anything is safe, and ids the server writes parse back.
    #[test]
    fn last_event_ids(
        junk in prop_oneof![".{0,60}", "[A-Za-z0-9_=-]{0,60}"],
        cursors in prop::collection::btree_map(".{0,12}", any::<u64>(), 0..5),
    ) {
        let _ = parse_event_id(&junk);
        let id = b64url(serde_json::to_string(&cursors).expect("json").as_bytes());
        let want: Vec<(String, u64)> = cursors.into_iter().collect();
        prop_assert_eq!(parse_event_id(&id), Some(want));
    }

    /// Names: a topic or router name is valid or 400, with a well-formed error.
    #[test]
    fn names(name in prop_oneof![".{0,20}", "[A-Za-z0-9._:>-]{0,300}", string()]) {
        ok_or_400(check_topic_name(&name));
        ok_or_400(check_router_name(&name));
        if let Some(id) = parse_lease_id(&name) {
            prop_assert_eq!(super::queues::lease_id_string(id), name);
        }
    }

    /// `Authorization` and `?token=`: a known key or 401.
    #[test]
    fn authorization(
        header in prop::option::of(prop_oneof![
            ".{0,40}",
            "(Bearer|bearer|BEARER|Basic|) {0,3}(k1|k2|k3|wrong|) {0,2}",
        ]),
        query in query_text(),
        sse in any::<bool>(),
    ) {
        let keys = Keys::parse("k1:rw:orders|t,k2:a, k3:r+d").expect("keys");
        let req = Request {
            headers: header.iter().map(|h| ("authorization".to_string(), h.clone())).collect(),
            query,
            ..Request::default()
        };
        match keys.authenticate(&req, sse) {
            Ok(_) => {}
            Err(e) => {
                prop_assert_eq!((e.status, e.code), (401, "unauthorized"));
                assert_error_shape(e);
            }
        }
    }
}

// ---- fixed cases -----------------------------------------------------------------------------

/// Nesting far past serde_json's recursion limit is a 400, not a stack overflow.
#[test]
fn deep_nesting_is_400() {
    for depth in [127, 128, 129, 10_000, 200_000] {
        let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        for body in [
            format!("{{\"records\":[{{\"data\":{nested}}}]}}"),
            format!("{{\"records\":[{{\"meta\":{{\"a\":{nested}}}}}]}}"),
            format!("{{\"unknown\":{nested}}}"),
            format!("{{\"topics\":{{\"t\":{nested}}}}}"),
            format!("{{\"match\":{nested},\"config\":{nested}}}"),
        ] {
            check_all_endpoints(body.as_bytes());
        }
    }
    let objects = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    check_all_endpoints(objects.as_bytes());
}

/// Record limits: just under passes, just over is `record_too_large`.
#[test]
fn record_limits_at_the_edges() {
    let append = |records: Value| -> Vec<Result<(), (u16, &'static str)>> {
        let text = serde_json::to_string(&records).expect("json");
        let records: Vec<RecordIn<'_>> = serde_json::from_str(&text).expect("records");
        records
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                to_record(i, r, None)
                    .map(|_| ())
                    .map_err(|e| (e.status, e.code))
            })
            .collect()
    };
    let too_large = Err((400, "record_too_large"));
    let got = append(serde_json::json!([
        {"data": 1, "tag": "t".repeat(256)},
        {"data": 1, "tag": "t".repeat(257)},
        {"data": 1, "node": "n".repeat(128)},
        {"data": 1, "node": "n".repeat(129)},
        {"data": 1, "meta": (0..64).map(|i| (format!("k{i}"), Value::from(i))).collect::<Map<_, _>>()},
        {"data": 1, "meta": (0..65).map(|i| (format!("k{i}"), Value::from(i))).collect::<Map<_, _>>()},
        {"data": 1, "meta": {"a": "m".repeat(16 * 1024 - 8)}},
        {"data": 1, "meta": {"a": "m".repeat(16 * 1024 - 7)}},
        {"data": "d".repeat((1 << 20) - 2)},
        {"data": "d".repeat((1 << 20) - 1)},
        {"data": 1, "meta": [1]},
        {"data": null, "meta": null},
    ]));
    assert_eq!(
        got,
        vec![
            Ok(()),
            too_large,
            Ok(()),
            too_large,
            Ok(()),
            too_large,
            Ok(()),
            too_large,
            Ok(()),
            too_large,
            Err((400, "invalid_request")),
            Ok(()),
        ]
    );
}

/// The body of a watch or router PUT is parsed twice (once for the key's prefixes), so a
/// body that is JSON to one parser and not the other must still be answered cleanly.
#[test]
fn bodies_only_one_parser_accepts() {
    for body in [
        &br#"{"records":[{"data":"\ud800"}]}"#[..],
        br#"{"records":[{"data":1,"data":2}]}"#,
        br#"{"records":[],"records":[]}"#,
        br#"{"topics":{"t":{},"t":{"from_seq":1}}}"#,
        br#"{"from_seq":18446744073709551616}"#,
        br#"{"from_seq":1.0}"#,
        br#"{"from_seq":-0}"#,
        b"{\"x\":\"\xff\"}",
        b"\xef\xbb\xbf{}",
        b"{} {}",
        b"{}\x00",
        br#"{"source":"a","dest":"b","filter":["tag","Glob","*"]}"#,
    ] {
        check_all_endpoints(body);
    }
}

/// serde's messages quote the offending value whole (`invalid type: string "…"`), so an
/// error answer grows with the body: every DEL byte of a string sent where a number belongs
/// becomes `\u{7f}` in the message and `\\u{7f}` in the JSON, 7 bytes out per byte in (a
/// 64 MiB body, ~450 MiB of answer). Found by this fuzzing; `parse` now cuts the message
/// at 300 bytes.
#[test]
fn error_answers_are_bounded() {
    let n = 100_000;
    let body = format!("{{\"from_seq\":\"{}\"}}", "\u{7f}".repeat(n));
    let Err(e) = parse::<DiffBody>(body.as_bytes()) else {
        panic!("a string is not a u64");
    };
    let resp = e.into_response(Instant::now());
    assert!(
        resp.body.len() < 4096,
        "{} bytes of error for {} bytes of body",
        resp.body.len(),
        body.len()
    );
}
