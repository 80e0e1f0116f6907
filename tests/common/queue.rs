//! Helpers of the queue tests (SPEC §7): create a queue, claim / ack / nack / extend, open a
//! `/work` stream, check the shape of a claimed job, and a small deterministic PRNG.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::sse::{open_path, Sse};
use super::{assert_perf, keys, now_ms, Client, Server};

/// `PUT /v0/topics/:q` with `{"type": "queue", ...config}`; asserts 201 and returns the body.
pub fn make_queue(s: &Server, q: &str, config: Value) -> Value {
    let mut body = json!({"type": "queue"});
    for (k, v) in config.as_object().expect("config is an object") {
        body[k] = v.clone();
    }
    let (st, v) = s.put(&format!("/v0/topics/{q}"), &body);
    assert_eq!(st, 201, "PUT queue {q} {body}: {v}");
    assert_eq!(v["config"]["type"], json!("queue"), "{v}");
    v
}

/// `POST /v0/topics/:q/{verb}` with a JSON body on a fresh connection.
pub fn post(s: &Server, q: &str, verb: &str, body: &Value) -> (u16, Value) {
    s.json_post(&format!("/v0/topics/{q}/{verb}"), body)
}

/// A claim that must answer 200; checks the response and every entry's shape.
pub fn claim(s: &Server, q: &str, body: Value) -> Value {
    let (st, v) = post(s, q, "claim", &body);
    assert_eq!(st, 200, "claim {q} {body}: {v}");
    check_claim_response(q, &v);
    v
}

/// `claim` with `{"node", "max", "lease_ms"}`.
pub fn claim_n(s: &Server, q: &str, node: &str, max: u64, lease_ms: u64) -> Value {
    claim(
        s,
        q,
        json!({"node": node, "max": max, "lease_ms": lease_ms}),
    )
}

/// The `$seq`s of a claim response, in response order.
pub fn claimed_seqs(v: &Value) -> Vec<u64> {
    entries(v)
        .iter()
        .map(|e| e["$seq"].as_u64().expect("$seq"))
        .collect()
}

/// The claimed entries of a claim response.
pub fn entries(v: &Value) -> Vec<Value> {
    v["claimed"]
        .as_array()
        .unwrap_or_else(|| panic!("no claimed array in {v}"))
        .clone()
}

/// seq -> lease id of a claim response.
pub fn lease_map(v: &Value) -> BTreeMap<u64, String> {
    entries(v)
        .iter()
        .map(|e| {
            (
                e["$seq"].as_u64().expect("$seq"),
                e["lease_id"].as_str().expect("lease_id").to_string(),
            )
        })
        .collect()
}

/// seq -> deliveries of a claim response.
pub fn deliveries_map(v: &Value) -> BTreeMap<u64, u64> {
    entries(v)
        .iter()
        .map(|e| {
            (
                e["$seq"].as_u64().expect("$seq"),
                e["deliveries"].as_u64().expect("deliveries"),
            )
        })
        .collect()
}

/// Whether `id` is `lease_` followed by 16 lower-case hex digits.
pub fn is_lease_id(id: &str) -> bool {
    id.strip_prefix("lease_").is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// One claimed entry (`with_topic` for `/work` frames): exactly the documented keys, with
/// the documented types.
pub fn check_entry(e: &Value, with_topic: Option<&str>) {
    let allowed = [
        "topic",
        "$seq",
        "lease_id",
        "deadline",
        "$ts",
        "$node",
        "$tag",
        "deliveries",
        "data",
        "meta",
    ];
    for k in keys(e) {
        assert!(allowed.contains(&k.as_str()), "unexpected key {k} in {e}");
    }
    for k in ["$seq", "lease_id", "deadline", "$ts", "deliveries", "data"] {
        assert!(e.get(k).is_some(), "claimed entry lacks {k}: {e}");
    }
    match with_topic {
        Some(t) => assert_eq!(e["topic"], json!(t), "{e}"),
        None => assert!(e.get("topic").is_none(), "claimed entry has topic: {e}"),
    }
    assert!(e["$seq"].as_u64().is_some_and(|s| s >= 1), "{e}");
    let id = e["lease_id"].as_str().expect("lease_id is a string");
    assert!(is_lease_id(id), "lease_id {id:?} is not lease_<16 hex>");
    let now = now_ms();
    let deadline = e["deadline"].as_u64().expect("deadline is an integer");
    assert!(
        deadline > now.saturating_sub(60_000),
        "deadline {deadline} in the past: {e}"
    );
    let ts = e["$ts"].as_u64().expect("$ts is an integer");
    assert!(ts <= now + 1000 && ts > now - 86_400_000, "$ts {ts}: {e}");
    assert!(e["deliveries"].as_u64().is_some_and(|d| d >= 1), "{e}");
    for k in ["$node", "$tag"] {
        if let Some(x) = e.get(k) {
            assert!(x.is_string(), "{k} not a string (absent, never null): {e}");
        }
    }
    if let Some(m) = e.get("meta") {
        assert!(
            m.is_object(),
            "meta not an object (absent, never null): {e}"
        );
    }
}

/// A claim response: `{"topic", "claimed", "count", "ready", "performance"}`.
pub fn check_claim_response(q: &str, v: &Value) {
    assert_eq!(
        keys(v),
        ["claimed", "count", "performance", "ready", "topic"],
        "claim response keys: {v}"
    );
    assert_eq!(v["topic"], json!(q), "{v}");
    let list = entries(v);
    assert_eq!(v["count"], json!(list.len()), "count != claimed.len(): {v}");
    assert!(v["ready"].is_u64(), "ready: {v}");
    assert_perf(v);
    for e in &list {
        check_entry(e, None);
    }
    let mut seqs = claimed_seqs(v);
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        list.len(),
        "a seq claimed twice in one response: {v}"
    );
}

/// ack / nack: `{node, seqs, lease_ids?}` (+ `extra` fields); asserts 200 and the shape.
pub fn act(
    s: &Server,
    q: &str,
    verb: &str,
    node: &str,
    seqs: &[u64],
    lease_ids: Option<&[String]>,
    extra: Value,
) -> Value {
    let mut body = json!({"node": node, "seqs": seqs});
    if let Some(ids) = lease_ids {
        body["lease_ids"] = json!(ids);
    }
    if let Some(o) = extra.as_object() {
        for (k, v) in o {
            body[k] = v.clone();
        }
    }
    let (st, v) = post(s, q, verb, &body);
    assert_eq!(st, 200, "{verb} {q} {body}: {v}");
    check_act_response(q, verb, &v);
    v
}

pub fn ack(s: &Server, q: &str, node: &str, seqs: &[u64], lease_ids: Option<&[String]>) -> Value {
    act(s, q, "ack", node, seqs, lease_ids, json!({}))
}

pub fn nack(
    s: &Server,
    q: &str,
    node: &str,
    seqs: &[u64],
    lease_ids: Option<&[String]>,
    delay_ms: u64,
) -> Value {
    act(
        s,
        q,
        "nack",
        node,
        seqs,
        lease_ids,
        json!({"delay_ms": delay_ms}),
    )
}

pub fn extend(
    s: &Server,
    q: &str,
    node: &str,
    seqs: &[u64],
    lease_ids: Option<&[String]>,
    lease_ms: u64,
) -> Value {
    act(
        s,
        q,
        "extend",
        node,
        seqs,
        lease_ids,
        json!({"lease_ms": lease_ms}),
    )
}

/// The shape of an ack / nack / extend response.
pub fn check_act_response(q: &str, verb: &str, v: &Value) {
    let done = match verb {
        "ack" => "acked",
        "nack" => "nacked",
        "extend" => "extended",
        other => panic!("unknown verb {other}"),
    };
    let mut want = vec![done, "performance", "skipped", "topic"];
    if verb == "extend" {
        want.push("deadlines");
    } else {
        want.extend(["in_flight", "ready"]);
    }
    want.sort_unstable();
    assert_eq!(keys(v), want, "{verb} response keys: {v}");
    assert_eq!(v["topic"], json!(q), "{v}");
    assert!(v[done].is_u64(), "{done}: {v}");
    assert!(
        v["skipped"]
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_u64)),
        "skipped: {v}"
    );
    if verb == "extend" {
        let d = v["deadlines"].as_object().expect("deadlines object");
        assert_eq!(d.len() as u64, v["extended"].as_u64().unwrap(), "{v}");
        for (k, x) in d {
            assert!(k.parse::<u64>().is_ok(), "deadlines key {k:?}: {v}");
            assert!(x.is_u64(), "deadline {x}: {v}");
        }
    } else {
        assert!(v["ready"].is_u64() && v["in_flight"].is_u64(), "{v}");
    }
    assert_perf(v);
}

/// The skipped seqs of an ack / nack / extend response.
pub fn skipped(v: &Value) -> Vec<u64> {
    v["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// `(count, ready, in_flight, dead_lettered)` of a queue (GET topic).
pub fn state(s: &Server, q: &str) -> (u64, u64, u64, u64) {
    let v = s.topic(q);
    assert_eq!(v["type"], json!("queue"), "{v}");
    let qi = &v["queue"];
    assert_eq!(
        keys(qi),
        ["dead_lettered", "in_flight", "ready"],
        "queue block of {v}"
    );
    (
        v["count"].as_u64().expect("count"),
        qi["ready"].as_u64().expect("ready"),
        qi["in_flight"].as_u64().expect("in_flight"),
        qi["dead_lettered"].as_u64().expect("dead_lettered"),
    )
}

/// Appends `n` jobs `{"job": k}` for k in `from..from+n`; returns their seqs.
pub fn append_jobs(s: &Server, q: &str, from: u64, n: u64) -> Vec<u64> {
    let recs: Vec<Value> = (from..from + n)
        .map(|k| json!({"data": {"job": k}}))
        .collect();
    let v = s.append(q, Value::Array(recs));
    v["seqs"]
        .as_array()
        .expect("seqs")
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// Opens `GET /v0/topics/:q/work?{query}`; asserts 200, SSE headers and `retry: 2000` first.
pub fn open_work(s: &Server, q: &str, query: &str) -> Sse {
    let mut sse = match open_path(s.port, &format!("/v0/topics/{q}/work?{query}"), &[]) {
        Ok(sse) => sse,
        Err(r) => panic!("open /work {q}?{query}: {} {}", r.status, r.text()),
    };
    let ct = sse.header("content-type").unwrap_or_default().to_string();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct:?}");
    sse.expect_retry();
    sse
}

/// The next `event: job` frame of a `/work` stream (heartbeats skipped); checks its shape
/// and that its `id` is the seq. Panics after `timeout`.
pub fn next_job(sse: &mut Sse, q: &str, timeout: Duration) -> Value {
    let f = sse.data_frame(timeout);
    assert_eq!(f.event(), Some("job"), "expected a job frame: {f:?}");
    let v = f.json();
    check_entry(&v, Some(q));
    let seq = v["$seq"].as_u64().unwrap();
    assert_eq!(
        f.id(),
        Some(seq.to_string().as_str()),
        "job frame id: {f:?}"
    );
    v
}

/// Sends a raw request (for content-type and method cases) on a fresh connection.
pub fn raw(
    s: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> super::Resp {
    let mut c: Client = s.client();
    c.request(method, path, headers, body)
}

/// xorshift64*: a small deterministic PRNG (the tests have no `rand`).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The claimed entries of a raw claim response body, each as field -> exact raw JSON text.
pub fn raw_claimed(body: &[u8]) -> Vec<BTreeMap<String, String>> {
    use serde_json::value::RawValue;
    let top: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(body).expect("response is a JSON object");
    let list: Vec<BTreeMap<String, Box<RawValue>>> =
        serde_json::from_str(top.get("claimed").expect("claimed").get())
            .expect("claimed is an array of objects");
    list.into_iter()
        .map(|m| {
            m.into_iter()
                .map(|(k, v)| (k, v.get().to_string()))
                .collect()
        })
        .collect()
}

/// Polls `cond` every 20 ms until it holds; returns how long it took, or `None` after
/// `timeout`.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = std::time::Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
