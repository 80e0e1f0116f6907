//! The model of tests/lifecycle.rs: what a user must see of each topic (records, floors,
//! tombstones, counters), and the checks that compare a whole topic against it over HTTP.

use std::collections::BTreeMap;

use super::sse::shard_of;
use super::storage::*;
use super::*;
use serde_json::{json, Value};

// ---- the model ------------------------------------------------------------------------------

/// A record as sent: raw JSON text of `data` and `meta`, plain tag and node.
#[derive(Clone, Debug)]
pub struct NewRec {
    pub data: String,
    pub meta: Option<String>,
    pub tag: Option<String>,
    pub node: Option<String>,
}

/// A stored record as a reader must see it.
#[derive(Clone, Debug)]
pub struct Rec {
    pub data: String,
    pub meta: Option<String>,
    pub tag: Option<String>,
    pub node: Option<String>,
    /// The wall clock just before the write was sent and just after its answer.
    pub ts_lo: u64,
    pub ts_hi: u64,
    /// `$ts` as first read back; must never change afterwards.
    pub ts: Option<u64>,
}

impl Rec {
    pub fn size(&self) -> u64 {
        (self.data.len() + self.meta.as_ref().map_or(0, |m| m.len())) as u64
    }
}

#[derive(Clone, Debug)]
pub struct TopicModel {
    pub durability: String,
    pub recs: BTreeMap<u64, Rec>,
    pub head: u64,
    /// First seq not lost to cap / TTL / restart (1 = nothing lost).
    pub evict_floor: u64,
    pub evict_reason: Option<&'static str>,
    pub cap_records: u64,
    pub cap_bytes: u64,
    /// `missed_estimate` must equal the gap size (no deletes inside evicted ranges).
    pub exact_missed: bool,
    /// `config` as first read back; must never change unless the test changes it.
    pub config: Option<Value>,
}

impl TopicModel {
    pub fn new(durability: &str) -> TopicModel {
        TopicModel {
            durability: durability.to_string(),
            recs: BTreeMap::new(),
            head: 0,
            evict_floor: 1,
            evict_reason: None,
            cap_records: 0,
            cap_bytes: 0,
            exact_missed: true,
            config: None,
        }
    }

    pub fn count(&self) -> u64 {
        self.recs.len() as u64
    }

    pub fn bytes(&self) -> u64 {
        self.recs.values().map(Rec::size).sum()
    }

    pub fn earliest(&self) -> u64 {
        self.recs.keys().next().copied().unwrap_or(self.head + 1)
    }

    pub fn lose_oldest(&mut self, reason: &'static str) {
        let (seq, _) = self.recs.pop_first().expect("a record to lose");
        self.evict_floor = self.evict_floor.max(seq + 1);
        self.evict_reason = Some(match self.evict_reason {
            None => reason,
            Some(r) if r == reason => reason,
            Some(_) => "mixed",
        });
    }

    /// `discard: old` eviction down to the caps.
    pub fn enforce_caps(&mut self) {
        while (self.cap_records > 0 && self.count() > self.cap_records)
            || (self.cap_bytes > 0 && self.bytes() > self.cap_bytes)
        {
            self.lose_oldest("cap");
        }
    }
}

#[derive(Default)]
pub struct Model {
    pub topics: BTreeMap<String, TopicModel>,
}

impl Model {
    pub fn tm(&mut self, topic: &str) -> &mut TopicModel {
        self.topics
            .get_mut(topic)
            .unwrap_or_else(|| panic!("topic {topic} not in the model"))
    }
}

/// `PUT /v0/topics/:topic` with `config` (201) and a fresh model entry.
pub fn create(s: &Server, m: &mut Model, topic: &str, config: Value) {
    let (st, v) = s.put(&format!("/v0/topics/{topic}"), &config);
    assert_eq!(st, 201, "create {topic} {config}: {v}");
    let mut tm = TopicModel::new(v["config"]["durability"].as_str().unwrap());
    tm.cap_records = config["cap_records"].as_u64().unwrap_or(0);
    tm.cap_bytes = config["cap_bytes"].as_u64().unwrap_or(0);
    m.topics.insert(topic.to_string(), tm);
}

pub fn rec_json(r: &NewRec) -> String {
    let mut out = format!(r#"{{"data":{}"#, r.data);
    if let Some(t) = &r.tag {
        out.push_str(&format!(r#","tag":{}"#, serde_json::to_string(t).unwrap()));
    }
    if let Some(n) = &r.node {
        out.push_str(&format!(r#","node":{}"#, serde_json::to_string(n).unwrap()));
    }
    if let Some(meta) = &r.meta {
        out.push_str(&format!(r#","meta":{meta}"#));
    }
    out.push('}');
    out
}

/// Appends `recs` (with an optional batch-default `node`) as exact raw bytes; checks the answer
/// (seqs contiguous right after the model's head) and records them in the model.
pub fn append(
    c: &mut Client,
    m: &mut Model,
    topic: &str,
    recs: &[NewRec],
    batch_node: Option<&str>,
) -> Value {
    let mut body = String::from(r#"{"records":["#);
    body.push_str(&recs.iter().map(rec_json).collect::<Vec<_>>().join(","));
    body.push(']');
    if let Some(n) = batch_node {
        body.push_str(&format!(r#","node":"{n}""#));
    }
    body.push('}');
    let ts_lo = now_ms();
    let r = c.post_raw(&format!("/v0/topics/{topic}"), body.as_bytes());
    let ts_hi = now_ms();
    assert_eq!(r.status, 200, "append to {topic}: {}", r.text());
    let v = r.json();
    let tm = m.tm(topic);
    let first = tm.head + 1;
    let n = recs.len() as u64;
    let want: Vec<u64> = (first..first + n).collect();
    assert_eq!(
        v["seqs"],
        json!(want),
        "{topic}: seqs must follow the head {}: {v}",
        tm.head
    );
    assert_eq!(v["first_seq"], json!(first), "{topic}: {v}");
    assert_eq!(v["last_seq"], json!(first + n - 1), "{topic}: {v}");
    assert_eq!(v["count"], json!(n), "{topic}: {v}");
    assert_eq!(v["deduped"], json!(false), "{topic}: {v}");
    for (i, r) in recs.iter().enumerate() {
        tm.recs.insert(
            first + i as u64,
            Rec {
                data: r.data.clone(),
                meta: r.meta.clone(),
                tag: r.tag.clone(),
                node: r.node.clone().or(batch_node.map(str::to_string)),
                ts_lo,
                ts_hi,
                ts: None,
            },
        );
    }
    tm.head = first + n - 1;
    tm.enforce_caps();
    v
}

/// A varied record: JSON of every kind with odd spacing, unicode, sizes from a few bytes to
/// several KiB; tags from a few families; nodes from a few writers; meta on some.
pub fn gen_rec(rng: &mut Rng, topic: &str, i: u64) -> NewRec {
    let pad = |rng: &mut Rng| {
        let len = if rng.chance(1, 40) {
            rng.range(2000, 5000)
        } else {
            rng.range(0, 300)
        };
        (0..len)
            .map(|k| (b'a' + ((i + k) % 26) as u8) as char)
            .collect::<String>()
    };
    let data = match rng.range(0, 6) {
        0 | 1 => format!(r#"{{"t":"{topic}","i":{i},"pad":"{}"}}"#, pad(rng)),
        2 => format!(r#"{{ "i" : {i} , "f" : 1.50, "e": 2E-3, "arr" : [ 1 , 2 ,3 ] }}"#),
        3 => format!(r#""caf\u00e9 \ud83d\ude00 {i} grüße {}""#, pad(rng)),
        4 => format!("{i}"),
        5 => "null".to_string(),
        _ => format!(r#"[true,false,null,{{"k":"{i}"}},"{}"]"#, pad(rng)),
    };
    let meta = match rng.range(0, 5) {
        0 => Some(format!(r#"{{ "src" : "gen", "i" : [ {i} ] }}"#)),
        1 => Some(format!(r#"{{"trace":"abc-{i}"}}"#)),
        _ => None,
    };
    let tag = match rng.range(0, 5) {
        0 | 1 => Some(format!("user-{}", i % 13)),
        2 => Some(format!("tmp-{i}")),
        3 => Some(format!("order-{}-x", i % 5)),
        _ => None,
    };
    let node = match rng.range(0, 5) {
        0 | 1 => Some("n-a".to_string()),
        2 => Some("n-b".to_string()),
        _ => None,
    };
    NewRec {
        data,
        meta,
        tag,
        node,
    }
}

/// Appends about `total` generated records over `topics` in batches of 1-40.
pub fn populate(s: &Server, m: &mut Model, topics: &[&str], rng: &mut Rng, total: u64) {
    let mut c = s.client();
    let mut written = 0;
    let mut i = 0;
    while written < total {
        let topic = topics[rng.range(0, topics.len() as u64 - 1) as usize];
        let n = if rng.chance(1, 5) {
            1
        } else {
            rng.range(2, 40)
        };
        let recs: Vec<NewRec> = (0..n)
            .map(|k| gen_rec(rng, topic, i + k))
            .collect::<Vec<_>>();
        i += n;
        let batch_node = rng.chance(1, 5).then_some("n-c");
        append(&mut c, m, topic, &recs, batch_node);
        written += n;
    }
}

// ---- checking -------------------------------------------------------------------------------

pub fn raw_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Compares records read back to the model's, field by field, raw bytes included.
pub fn compare(ctx: &str, got: &[BTreeMap<String, String>], want: &[(u64, &Rec)]) {
    let got_seqs: Vec<String> = got.iter().map(|r| r["$seq"].clone()).collect();
    let want_seqs: Vec<String> = want.iter().map(|(s, _)| s.to_string()).collect();
    if got_seqs != want_seqs {
        let missing: Vec<&String> = want_seqs
            .iter()
            .filter(|s| !got_seqs.contains(s))
            .take(20)
            .collect();
        let extra: Vec<&String> = got_seqs
            .iter()
            .filter(|s| !want_seqs.contains(s))
            .take(20)
            .collect();
        panic!(
            "{ctx}: read {} records, expected {}; missing seqs (first 20) {missing:?}, \
             unexpected seqs (first 20) {extra:?}",
            got.len(),
            want.len()
        );
    }
    for (g, (seq, w)) in got.iter().zip(want) {
        let mut keys: Vec<&str> = vec!["$seq", "$ts", "data"];
        assert_eq!(g["data"], w.data, "{ctx}: seq {seq}: data bytes differ");
        match &w.meta {
            Some(meta) => {
                keys.push("meta");
                assert_eq!(
                    g.get("meta"),
                    Some(meta),
                    "{ctx}: seq {seq}: meta bytes differ"
                );
            }
            None => assert!(!g.contains_key("meta"), "{ctx}: seq {seq}: meta {g:?}"),
        }
        match &w.tag {
            Some(t) => {
                keys.push("$tag");
                assert_eq!(g.get("$tag"), Some(&raw_str(t)), "{ctx}: seq {seq}: $tag");
            }
            None => assert!(!g.contains_key("$tag"), "{ctx}: seq {seq}: $tag {g:?}"),
        }
        match &w.node {
            Some(n) => {
                keys.push("$node");
                assert_eq!(g.get("$node"), Some(&raw_str(n)), "{ctx}: seq {seq}: $node");
            }
            None => assert!(!g.contains_key("$node"), "{ctx}: seq {seq}: $node {g:?}"),
        }
        if let Some(ts) = w.ts {
            assert_eq!(g["$ts"], ts.to_string(), "{ctx}: seq {seq}: $ts changed");
        }
        let mut gk: Vec<&str> = g.keys().map(String::as_str).collect();
        gk.sort();
        keys.sort();
        assert_eq!(gk, keys, "{ctx}: seq {seq}: fields of {g:?}");
    }
}

/// Checks the tombstone of a diff page read from `from` against the model.
pub fn check_tombstone(ctx: &str, page: &Value, from: u64, tm: &TopicModel) {
    let earliest = tm.earliest();
    let t = &page["tombstone"];
    if from + 1 < tm.evict_floor {
        assert!(
            t.is_object(),
            "{ctx}: diff from {from} must carry a tombstone (eviction floor {}): {page}",
            tm.evict_floor
        );
        assert_eq!(
            t["reason"],
            json!(tm.evict_reason.unwrap()),
            "{ctx}: {page}"
        );
        assert_eq!(t["gap_from"], json!(from + 1), "{ctx}: {page}");
        assert_eq!(t["gap_to"], json!(earliest - 1), "{ctx}: {page}");
        assert_eq!(t["earliest_seq"], json!(earliest), "{ctx}: {page}");
        assert_eq!(t["head_seq"], json!(tm.head), "{ctx}: {page}");
        assert!(t["missed_estimate"].is_u64(), "{ctx}: {page}");
        if tm.exact_missed {
            assert_eq!(
                t["missed_estimate"],
                json!(earliest - 1 - from),
                "{ctx}: missed_estimate: {page}"
            );
        }
    } else {
        assert!(
            t.is_null(),
            "{ctx}: diff from {from} must not carry a tombstone: {page}"
        );
    }
    assert_eq!(page["earliest_seq"], json!(earliest), "{ctx}: {page}");
    assert_eq!(page["head_seq"], json!(tm.head), "{ctx}: {page}");
}

/// Everything a user sees of `topic`, against the model: the topic's counters and config,
/// the whole log from 0, a read from the middle, and node-filtered reads.
pub fn verify_topic(s: &Server, topic: &str, tm: &mut TopicModel, ctx: &str) {
    let ctx = format!("{ctx}: topic {topic}");
    let t = s.topic(topic);
    let earliest = tm.earliest();
    assert_eq!(t["head_seq"], json!(tm.head), "{ctx}: head_seq: {t}");
    assert_eq!(t["next_seq"], json!(tm.head + 1), "{ctx}: next_seq: {t}");
    assert_eq!(
        t["earliest_seq"],
        json!(earliest),
        "{ctx}: earliest_seq: {t}"
    );
    assert_eq!(t["count"], json!(tm.count()), "{ctx}: count: {t}");
    assert_eq!(t["bytes"], json!(tm.bytes()), "{ctx}: bytes: {t}");
    match &tm.config {
        Some(cfg) => assert_eq!(&t["config"], cfg, "{ctx}: config changed: {t}"),
        None => tm.config = Some(t["config"].clone()),
    }

    // The whole log; the first read of a record learns its `$ts`.
    let (got, page) = read_pages(s, topic, 0, &json!({}));
    let mut last_ts = 0;
    for g in &got {
        let seq: u64 = g["$seq"].parse().unwrap();
        let ts: u64 = g["$ts"]
            .parse()
            .unwrap_or_else(|_| panic!("{ctx}: seq {seq}: $ts {g:?}"));
        assert!(ts >= last_ts, "{ctx}: $ts went backwards at seq {seq}");
        last_ts = ts;
        if let Some(r) = tm.recs.get_mut(&seq) {
            if r.ts.is_none() {
                assert!(
                    r.ts_lo <= ts && ts <= r.ts_hi,
                    "{ctx}: seq {seq}: $ts {ts} outside the write's window {}..={}",
                    r.ts_lo,
                    r.ts_hi
                );
                r.ts = Some(ts);
            }
        }
    }
    let all: Vec<(u64, &Rec)> = tm.recs.iter().map(|(s, r)| (*s, r)).collect();
    compare(&format!("{ctx}: diff from 0"), &got, &all);
    check_tombstone(&format!("{ctx}: diff from 0"), &page, 0, tm);

    // From the middle: a live seq, and the seq before it (possibly deleted).
    if all.len() >= 3 {
        for from in [all[all.len() / 3].0, all[all.len() / 2].0 - 1] {
            let (got, page) = read_pages(s, topic, from, &json!({}));
            let want: Vec<(u64, &Rec)> = all.iter().filter(|(s, _)| *s > from).cloned().collect();
            compare(&format!("{ctx}: diff from {from}"), &got, &want);
            check_tombstone(&format!("{ctx}: diff from {from}"), &page, from, tm);
        }
    }

    // Node filters skip exactly the records written by those nodes.
    for nodes in [json!("n-a"), json!(["n-b", "n-c"])] {
        let skip: Vec<String> = match &nodes {
            Value::String(n) => vec![n.clone()],
            v => v
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_string())
                .collect(),
        };
        let (got, _) = read_pages(s, topic, 0, &json!({ "node": nodes }));
        let want: Vec<(u64, &Rec)> = all
            .iter()
            .filter(|(_, r)| !r.node.as_ref().is_some_and(|n| skip.contains(n)))
            .cloned()
            .collect();
        compare(&format!("{ctx}: diff node {nodes}"), &got, &want);
    }
}

pub fn verify(s: &Server, m: &mut Model, ctx: &str) {
    for (topic, tm) in m.topics.iter_mut() {
        verify_topic(s, topic, tm, ctx);
    }
}

/// After a kill -9, a `disk` topic's head may have jumped over reserved seqs (README: a silent
/// gap); it may not go back. Adopts the new head into the model.
pub fn adopt_disk_heads(s: &Server, m: &mut Model) {
    for (topic, tm) in m.topics.iter_mut() {
        if tm.durability == "disk" {
            let head = s.topic(topic)["head_seq"].as_u64().unwrap();
            assert!(
                head >= tm.head,
                "{topic}: head_seq {head} went below {} after kill -9",
                tm.head
            );
            tm.head = head;
        }
    }
}

/// Applies a delete to the model, sends it, and checks the answer against the model.
pub fn delete(s: &Server, m: &mut Model, topic: &str, body: Value) -> u64 {
    let tm = m.tm(topic);
    let before = body["before_seq"].as_u64();
    let (op, pat) = match &body["match"] {
        Value::Null => (None, String::new()),
        Value::String(p) => (Some("Eq"), p.clone()),
        Value::Array(a) => (
            Some(if a[1] == json!("Glob") { "Glob" } else { "Eq" }),
            a[2].as_str().unwrap().to_string(),
        ),
        other => panic!("bad match in test: {other}"),
    };
    let matches = |seq: u64, r: &Rec| {
        before.is_none_or(|b| seq < b)
            && match op {
                None => true,
                Some(op) => r.tag.as_ref().is_some_and(|t| match op {
                    "Glob" => match pat.strip_suffix('*') {
                        Some(prefix) => t.starts_with(prefix),
                        None => *t == pat,
                    },
                    _ => *t == pat,
                }),
            }
    };
    let doomed: Vec<u64> = tm
        .recs
        .iter()
        .filter(|(s, r)| matches(**s, r))
        .map(|(s, _)| *s)
        .collect();
    for seq in &doomed {
        tm.recs.remove(seq);
    }
    let (st, v) = s.json_post(&format!("/v0/topics/{topic}/delete"), &body);
    assert_eq!(st, 200, "delete {topic} {body}: {v}");
    let ctx = format!("delete {topic} {body}");
    assert_eq!(v["deleted"], json!(doomed.len()), "{ctx}: deleted: {v}");
    assert_eq!(v["count"], json!(tm.count()), "{ctx}: count: {v}");
    assert_eq!(v["bytes"], json!(tm.bytes()), "{ctx}: bytes: {v}");
    assert_eq!(
        v["earliest_seq"],
        json!(tm.earliest()),
        "{ctx}: earliest: {v}"
    );
    assert_eq!(v["head_seq"], json!(tm.head), "{ctx}: head: {v}");
    doomed.len() as u64
}

/// Topic names covering every shard of a 2-shard server.
pub fn spread(prefix: &str, n: usize) -> Vec<String> {
    let names: Vec<String> = (0..n)
        .map(|k| sse::name_on_shard(&format!("{prefix}{k}-"), k % 2, 2))
        .collect();
    assert!(names.iter().any(|t| shard_of(t, 2) == 0));
    assert!(names.iter().any(|t| shard_of(t, 2) == 1));
    names
}
