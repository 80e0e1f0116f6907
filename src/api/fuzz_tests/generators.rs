//! Generators of the API fuzz properties: JSON values, plausible and mutated request
//! bodies per endpoint, JSON token soup and text edits.

use super::*;

/// Every field name any body knows.
pub(super) const FIELDS: &[&str] = &[
    "records",
    "data",
    "meta",
    "tag",
    "node",
    "idempotency_key",
    "create",
    "config",
    "disable_backpressure",
    "from_seq",
    "limit",
    "include_tags",
    "include_meta",
    "include_data",
    "wait_ms",
    "before_seq",
    "match",
    "topics",
    "tail",
    "max_batch_bytes",
    "heartbeat_ms",
    "consistency",
    "source",
    "dest",
    "preserve_node",
    "preserve_tag",
    "create_dest",
    "filter",
    "allow_cycle",
    "guarantee",
    "type",
    "ttl_ms",
    "cap_records",
    "cap_bytes",
    "discard",
    "durability",
    "durable",
    "priority",
    "auto_priority",
    "auto_create",
    "idempotency_window_ms",
    "dedupe_node",
    "lease_ms",
    "claim_jitter_ms",
    "max_deliveries",
    "dead_letter",
    "leases_durable",
    "max",
    "seqs",
    "lease_ids",
    "delay_ms",
];

/// Strings with a meaning somewhere.
pub(super) const STRINGS: &[&str] = &[
    "",
    "t",
    "orders",
    "orders:tenantA",
    "a>b",
    ".bad",
    "bad name",
    "x*",
    "*x*",
    "*",
    "tag",
    "Eq",
    "Glob",
    "Regex",
    "log",
    "queue",
    "stream",
    "old",
    "reject",
    "fsync",
    "disk",
    "memory",
    "ephemeral",
    "eventual",
    "strong",
    "at_least_once",
    "exactly_once",
    "lease_0000000000000001",
    "lease_ffffffffffffffff",
    "lease_FFFFFFFFFFFFFFFF",
    "lease_",
    "lease_00000000000000001",
    "\u{0}",
    "\u{7f}",
    "é",
    "\u{feff}",
    "\u{10ffff}",
];

pub(super) fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(vec![
            0u64,
            1,
            2,
            99,
            100,
            256,
            1000,
            1001,
            5000,
            10_000,
            10_001,
            30_000,
            60_000,
            86_400_000,
            86_400_001,
            u64::from(u32::MAX),
            i64::MAX as u64,
            u64::MAX,
        ])
        .prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        select(vec![-1.0f64, -0.0, 0.5, 1.0, 1e-7, 1e300, -1e300]).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
    ]
}

pub(super) fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(STRINGS).prop_map(String::from),
        2 => "[A-Za-z0-9._:>*-]{1,12}",
        1 => ".{0,16}",
        1 => (select(vec!['x', 'é', '\u{7f}']), 120usize..140).prop_map(|(c, n)| c.to_string().repeat(n)),
        1 => (250usize..262).prop_map(|n| "x".repeat(n)),
    ]
}

pub(super) fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        string().prop_map(Value::from),
    ]
}

pub(super) fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(FIELDS).prop_map(String::from),
        1 => ".{0,8}",
    ]
}

pub(super) fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A field that is usually plausible and sometimes anything.
pub(super) fn field(plausible: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![4 => plausible, 1 => json_value()].boxed()
}

/// An object with each of `fields` present or not, plus maybe an unknown key.
pub(super) fn object(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    let parts: Vec<BoxedStrategy<Option<(String, Value)>>> = fields
        .into_iter()
        .map(|(k, s)| prop::option::weighted(0.6, s.prop_map(move |v| (k.to_string(), v))).boxed())
        .collect();
    (parts, prop::collection::vec((key(), json_value()), 0..2))
        .prop_map(|(parts, extra)| {
            let mut m = Map::new();
            for (k, v) in extra {
                m.insert(k, v);
            }
            for (k, v) in parts.into_iter().flatten() {
                m.insert(k, v);
            }
            Value::Object(m)
        })
        .boxed()
}

pub(super) fn uint() -> BoxedStrategy<Value> {
    field(number())
}

pub(super) fn boolean() -> BoxedStrategy<Value> {
    field(any::<bool>().prop_map(Value::from))
}

pub(super) fn text() -> BoxedStrategy<Value> {
    field(string().prop_map(Value::from))
}

pub(super) fn one_of(options: &'static [&'static str]) -> BoxedStrategy<Value> {
    field(select(options).prop_map(Value::from))
}

/// Node selectors of diff and watch: a string or an array of strings.
pub(super) fn node_sel() -> BoxedStrategy<Value> {
    field(prop_oneof![
        string().prop_map(Value::from),
        prop::collection::vec(string().prop_map(Value::from), 0..4).prop_map(Value::Array),
    ])
}

/// A `meta` object, sometimes with too many keys or bytes.
pub(super) fn meta() -> BoxedStrategy<Value> {
    field(prop_oneof![
        4 => prop::collection::btree_map("[a-z]{1,4}", leaf(), 0..8)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => (60usize..70).prop_map(|n| {
            Value::Object((0..n).map(|i| (format!("k{i}"), Value::from(i))).collect())
        }),
        1 => (16_370usize..16_400).prop_map(|n| serde_json::json!({ "big": "m".repeat(n) })),
    ])
}

pub(super) fn record() -> BoxedStrategy<Value> {
    field(object(vec![
        ("data", json_value().boxed()),
        ("meta", meta()),
        ("tag", text()),
        ("node", text()),
    ]))
}

pub(super) fn match_value() -> BoxedStrategy<Value> {
    field(prop_oneof![
        string().prop_map(Value::from),
        (
            select(vec!["tag", "node", "Tag"]),
            select(vec!["Eq", "Glob", "Regex", "eq"]),
            string()
        )
            .prop_map(|(a, b, c)| serde_json::json!([a, b, c])),
    ])
}

pub(super) fn topic_config() -> BoxedStrategy<Value> {
    object(vec![
        ("type", one_of(&["log", "queue", "stream"])),
        ("ttl_ms", uint()),
        ("cap_records", uint()),
        ("cap_bytes", uint()),
        ("discard", one_of(&["old", "reject", "new"])),
        (
            "durability",
            one_of(&["fsync", "disk", "memory", "ephemeral", "none"]),
        ),
        ("durable", boolean()),
        ("priority", uint()),
        ("auto_priority", boolean()),
        ("auto_create", boolean()),
        ("idempotency_window_ms", uint()),
        ("dedupe_node", boolean()),
        ("lease_ms", uint()),
        ("claim_jitter_ms", uint()),
        ("max_deliveries", uint()),
        ("dead_letter", text()),
        ("leases_durable", boolean()),
    ])
}

pub(super) fn seqs() -> BoxedStrategy<Value> {
    field(prop::collection::vec(number(), 0..8).prop_map(Value::Array))
}

pub(super) fn lease_ids() -> BoxedStrategy<Value> {
    field(
        prop::collection::vec(
            prop_oneof![
                any::<u64>().prop_map(|n| Value::from(format!("lease_{n:016x}"))),
                string().prop_map(Value::from),
            ],
            0..8,
        )
        .prop_map(Value::Array),
    )
}

/// A plausible body for `endpoint`: its own fields, each usually of the right kind.
pub(super) fn body_for(endpoint: Endpoint) -> BoxedStrategy<Value> {
    match endpoint {
        Endpoint::Append => object(vec![
            (
                "records",
                field(prop::collection::vec(record(), 0..6).prop_map(Value::Array)),
            ),
            ("node", text()),
            ("idempotency_key", text()),
            ("create", boolean()),
            ("config", field(topic_config())),
            ("disable_backpressure", boolean()),
        ]),
        Endpoint::Diff => object(vec![
            ("from_seq", uint()),
            ("limit", uint()),
            ("node", node_sel()),
            ("include_tags", boolean()),
            ("include_meta", boolean()),
            ("wait_ms", uint()),
        ]),
        Endpoint::Delete => object(vec![("before_seq", uint()), ("match", match_value())]),
        Endpoint::Watch => object(vec![
            (
                "topics",
                field(
                    prop::collection::btree_map(
                        string(),
                        object(vec![("from_seq", uint()), ("tail", boolean())]),
                        0..4,
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ),
            ),
            ("node", node_sel()),
            ("limit", uint()),
            ("max_batch_bytes", uint()),
            ("heartbeat_ms", uint()),
            ("include_meta", boolean()),
            ("include_tags", boolean()),
            ("include_data", boolean()),
            ("consistency", one_of(&["eventual", "strong", "linear"])),
        ]),
        Endpoint::Router => object(vec![
            ("source", text()),
            ("dest", text()),
            ("preserve_node", boolean()),
            ("preserve_tag", boolean()),
            ("create_dest", boolean()),
            ("filter", match_value()),
            ("allow_cycle", boolean()),
            (
                "guarantee",
                one_of(&["at_least_once", "exactly_once", "maybe"]),
            ),
        ]),
        Endpoint::TopicPut => topic_config(),
        Endpoint::Claim => object(vec![
            ("node", text()),
            ("max", uint()),
            ("lease_ms", uint()),
            ("wait_ms", uint()),
        ]),
        Endpoint::Ack | Endpoint::Nack | Endpoint::Extend => object(vec![
            ("node", text()),
            ("seqs", seqs()),
            ("lease_ids", lease_ids()),
            ("delay_ms", uint()),
            ("lease_ms", uint()),
        ]),
    }
}

pub(super) fn endpoint_and_body() -> impl Strategy<Value = (Endpoint, Value)> {
    select(ENDPOINTS.to_vec()).prop_flat_map(|e| (Just(e), body_for(e)))
}

/// JSON text fragments: bodies that are nearly JSON, or JSON with edge cases a Value
/// cannot express (huge numbers, escapes, lone surrogates, duplicate keys).
pub(super) const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    " ",
    "\n",
    "\"",
    "\"records\"",
    "\"data\"",
    "\"meta\"",
    "\"tag\"",
    "\"node\"",
    "\"config\"",
    "\"topics\"",
    "\"match\"",
    "\"seqs\"",
    "\"lease_ids\"",
    "\"source\"",
    "\"dest\"",
    "\"from_seq\"",
    "\"type\"",
    "\"x\"",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"\\u0000\"",
    "\"\\\"",
    "\"\\x\"",
    "\"\u{7f}\"",
    "0",
    "-0",
    "1",
    "-1",
    "1.5",
    "1e400",
    "-1e400",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "0.0000000000000000000000001",
    "true",
    "false",
    "null",
    "nul",
    "NaN",
    "\u{feff}",
    "\u{0}",
    "\u{ff}",
];

pub(super) fn json_soup() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        5 => select(JSON_TOKENS).prop_map(|t| t.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 1..4),
    ];
    prop::collection::vec(piece, 0..48).prop_map(|v| v.concat())
}

#[derive(Debug, Clone)]
pub(super) enum Edit {
    Set(Index, u8),
    Insert(Index, &'static str),
    Delete(Index, usize),
    Truncate(Index),
}

pub(super) fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => (any::<Index>(), select(b"{}[]:,\"\\0 -eE.9xu\x00\x7f\xff".to_vec()))
            .prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<Index>(), select(JSON_TOKENS)).prop_map(|(i, t)| Edit::Insert(i, t)),
        2 => (any::<Index>(), 1usize..6).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

pub(super) fn apply(mut text: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = text.len();
        match e {
            Edit::Set(i, b) if len > 0 => text[i.index(len)] = *b,
            Edit::Insert(i, t) => {
                let at = i.index(len + 1);
                text.splice(at..at, t.bytes());
            }
            Edit::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                text.drain(at..(at + n).min(len));
            }
            Edit::Truncate(i) => text.truncate(i.index(len + 1)),
            _ => {}
        }
    }
    text
}
