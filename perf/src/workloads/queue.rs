//! What the queue workloads (`queue-rt`, `queue-latency`) share: a fresh queue, the claim and
//! ack requests, and byte scanners for their answers (SPEC §7). The scanners rely on the
//! server's compact JSON and on job `data` this generator wrote (no key of theirs collides
//! with the fields looked for).

use std::time::Instant;

use memchr::memmem;
use serde_json::{json, Map, Value};

use super::{append_body, topic_path};
use crate::client::{json_u64, Client, Target};
use crate::stats::round;
use crate::Durability;

/// Records per pre-fill append.
pub const PREFILL_BATCH: usize = 1000;

/// The queue a workload uses for a commit class: `{prefix}-{what}-{class}`.
pub fn queue_name(prefix: &str, what: &str, class: Durability) -> String {
    format!("{prefix}-{what}-{}", class.name())
}

async fn call(
    client: &mut Client,
    target: &Target,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>), String> {
    let req = target.request(method, path, body);
    let status = client
        .send(&req)
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    Ok((status, client.body().to_vec()))
}

fn http_error(method: &str, path: &str, status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    format!("{method} {path}: HTTP {status}: {text}")
}

/// Deletes the queue if it exists (jobs, leases and seqs of an earlier run go with it), then
/// creates it as a `type: "queue"` topic of `class`.
pub async fn fresh_queue(
    client: &mut Client,
    target: &Target,
    topic: &str,
    class: Durability,
) -> Result<(), String> {
    let path = topic_path(topic);
    let (status, body) = call(client, target, "DELETE", &path, None).await?;
    if !(200..300).contains(&status) && status != 404 {
        return Err(http_error("DELETE", &path, status, &body));
    }
    let config = format!(r#"{{"type":"queue","durability":"{}"}}"#, class.name());
    let (status, body) = call(client, target, "PUT", &path, Some(config.as_bytes())).await?;
    if !(200..300).contains(&status) {
        return Err(http_error("PUT", &path, status, &body));
    }
    let state = queue_state(client, target, topic).await?;
    if state.count != Some(0) {
        return Err(format!(
            "{topic} was deleted and re-created but holds {:?} records",
            state.count
        ));
    }
    Ok(())
}

/// Appends `jobs` jobs of `record_bytes` in batches of [`PREFILL_BATCH`]; returns the jobs
/// written and how long it took.
pub async fn prefill(
    client: &mut Client,
    target: &Target,
    topic: &str,
    jobs: u64,
    record_bytes: usize,
) -> Result<(u64, f64), String> {
    let path = format!("{}?return_seqs=false", topic_path(topic));
    let full = append_body(PREFILL_BATCH, record_bytes, 0);
    let started = Instant::now();
    let mut written = 0;
    while written < jobs {
        let n = (jobs - written).min(PREFILL_BATCH as u64);
        let partial;
        let body = if n == PREFILL_BATCH as u64 {
            &full
        } else {
            partial = append_body(n as usize, record_bytes, written);
            &partial
        };
        let (status, resp) = call(client, target, "POST", &path, Some(body)).await?;
        if !(200..300).contains(&status) {
            return Err(http_error("POST", &path, status, &resp));
        }
        written += n;
    }
    Ok((written, started.elapsed().as_secs_f64()))
}

/// What `GET /v0/topics/:q` says about the queue.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueState {
    pub count: Option<u64>,
    pub ready: Option<u64>,
    pub in_flight: Option<u64>,
    pub head_seq: Option<u64>,
}

impl QueueState {
    pub fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "ready": self.ready,
            "in_flight": self.in_flight,
            "head_seq": self.head_seq,
        })
    }
}

pub async fn queue_state(
    client: &mut Client,
    target: &Target,
    topic: &str,
) -> Result<QueueState, String> {
    let path = topic_path(topic);
    let (status, body) = call(client, target, "GET", &path, None).await?;
    if !(200..300).contains(&status) {
        return Err(http_error("GET", &path, status, &body));
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("GET {path}: the answer is not JSON: {e}"))?;
    let q = &v["queue"];
    Ok(QueueState {
        count: v["count"].as_u64(),
        ready: q["ready"].as_u64(),
        in_flight: q["in_flight"].as_u64(),
        head_seq: v["head_seq"].as_u64(),
    })
}

/// `POST .../claim {"node","max"[,"wait_ms"]}`.
pub fn claim_request(
    target: &Target,
    topic: &str,
    node: &str,
    max: usize,
    wait_ms: u64,
) -> Vec<u8> {
    let body = if wait_ms > 0 {
        format!(r#"{{"node":"{node}","max":{max},"wait_ms":{wait_ms}}}"#)
    } else {
        format!(r#"{{"node":"{node}","max":{max}}}"#)
    };
    target.request(
        "POST",
        &format!("{}/claim", topic_path(topic)),
        Some(body.as_bytes()),
    )
}

/// `POST .../ack {"node","seqs","lease_ids"}` for `jobs` (seq, lease id).
pub fn ack_request(target: &Target, path: &str, node: &str, jobs: &[(u64, String)]) -> Vec<u8> {
    let mut body = String::with_capacity(64 + jobs.len() * 36);
    body.push_str(r#"{"node":""#);
    body.push_str(node);
    body.push_str(r#"","seqs":["#);
    for (i, (seq, _)) in jobs.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&seq.to_string());
    }
    body.push_str(r#"],"lease_ids":["#);
    for (i, (_, lease)) in jobs.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push('"');
        body.push_str(lease);
        body.push('"');
    }
    body.push_str("]}");
    target.request("POST", path, Some(body.as_bytes()))
}

/// One entry of a claim answer's `claimed` array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed<'a> {
    pub seq: u64,
    pub lease_id: &'a str,
    pub deliveries: Option<u64>,
    /// `data.f` and `data.t` of a job written by `queue-latency` (see `sse::watch_record`).
    pub id: Option<u64>,
    pub sent_us: Option<u64>,
}

/// The entries of a claim answer, in order. An entry without a readable `$seq` or
/// `lease_id` is skipped (the caller compares with `count`).
pub fn scan_claimed(body: &[u8]) -> Vec<Claimed<'_>> {
    const SEQ: &[u8] = br#""$seq":"#;
    let starts: Vec<usize> = memmem::find_iter(body, SEQ).collect();
    let mut out = Vec::with_capacity(starts.len());
    for (i, &at) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(body.len());
        let entry = &body[at..end];
        let (seq, used) = leading_u64(&entry[SEQ.len()..]);
        if used == 0 {
            continue;
        }
        let Some(lease_id) = str_after(entry, br#""lease_id":""#) else {
            continue;
        };
        let data = memmem::find(entry, br#""data":"#).map_or(&entry[..0], |d| &entry[d..]);
        out.push(Claimed {
            seq,
            lease_id,
            deliveries: u64_after(entry, br#""deliveries":"#),
            id: u64_after(data, br#"{"f":"#),
            sent_us: u64_after(data, br#","t":"#),
        });
    }
    out
}

/// `acked` and `skipped` of an ack answer.
pub fn scan_ack(body: &[u8]) -> (Option<u64>, Vec<u64>) {
    let acked = json_u64(body, "acked");
    let mut skipped = Vec::new();
    if let Some(at) = memmem::find(body, br#""skipped":["#) {
        let mut rest = &body[at + br#""skipped":["#.len()..];
        loop {
            let (n, used) = leading_u64(rest);
            if used == 0 {
                break;
            }
            skipped.push(n);
            rest = &rest[used..];
            match rest.first() {
                Some(b',') => rest = &rest[1..],
                _ => break,
            }
        }
    }
    (acked, skipped)
}

fn u64_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = memmem::find(hay, key)?;
    let (n, used) = leading_u64(&hay[at + key.len()..]);
    (used > 0).then_some(n)
}

fn str_after<'a>(hay: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let at = memmem::find(hay, key)?;
    let rest = &hay[at + key.len()..];
    let len = memchr::memchr(b'"', rest)?;
    std::str::from_utf8(&rest[..len]).ok()
}

fn leading_u64(b: &[u8]) -> (u64, usize) {
    let mut n = 0u64;
    let mut used = 0;
    for &c in b.iter().take(20) {
        if !c.is_ascii_digit() {
            break;
        }
        n = n.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
        used += 1;
    }
    (n, used)
}

/// `{prefix}{name}` for `server_total_ms` p50/p99 of a histogram in ns.
pub fn insert_server_ms(
    m: &mut Map<String, Value>,
    prefix: &str,
    h: &hdrhistogram::Histogram<u64>,
) {
    if h.is_empty() {
        return;
    }
    let ms = |q: f64| round(h.value_at_quantile(q) as f64 / 1e6, 4);
    m.insert(format!("{prefix}server_total_ms_p50"), json!(ms(0.5)));
    m.insert(format!("{prefix}server_total_ms_p99"), json!(ms(0.99)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::watch_record;

    #[test]
    fn claim_answers_are_scanned() {
        let d1 = watch_record(7, 123_456, 64);
        let body = format!(
            r#"{{"topic":"q","claimed":[{{"$seq":11,"lease_id":"lease_000000000000000a","deadline":5,"$ts":4,"deliveries":1,"data":{d1}}},{{"$seq":12,"lease_id":"lease_000000000000000b","deadline":5,"$ts":4,"$tag":"x","deliveries":2,"data":{{"id":3,"kind":"load"}},"meta":{{"a":1}}}}],"count":2,"ready":9,"performance":{{"server_total_ms":0.05}}}}"#
        );
        let jobs = scan_claimed(body.as_bytes());
        assert_eq!(
            jobs,
            vec![
                Claimed {
                    seq: 11,
                    lease_id: "lease_000000000000000a",
                    deliveries: Some(1),
                    id: Some(7),
                    sent_us: Some(123_456),
                },
                Claimed {
                    seq: 12,
                    lease_id: "lease_000000000000000b",
                    deliveries: Some(2),
                    id: None,
                    sent_us: None,
                },
            ]
        );
        assert_eq!(json_u64(body.as_bytes(), "count"), Some(2));
        assert_eq!(json_u64(body.as_bytes(), "ready"), Some(9));
        let empty = br#"{"topic":"q","claimed":[],"count":0,"ready":0}"#;
        assert!(scan_claimed(empty).is_empty());
    }

    #[test]
    fn ack_answers_are_scanned() {
        let body = br#"{"topic":"q","acked":1,"skipped":[4,19],"ready":0,"in_flight":1}"#;
        assert_eq!(scan_ack(body), (Some(1), vec![4, 19]));
        let body = br#"{"topic":"q","acked":2,"skipped":[],"ready":0,"in_flight":0}"#;
        assert_eq!(scan_ack(body), (Some(2), vec![]));
    }

    #[test]
    fn ack_bodies_are_json() {
        let t = Target::parse("http://127.0.0.1:1").unwrap();
        let req = ack_request(
            &t,
            "/v0/topics/q/ack",
            "w1",
            &[(3, "lease_01".into()), (4, "lease_02".into())],
        );
        let text = String::from_utf8(req).unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["seqs"], json!([3, 4]));
        assert_eq!(v["lease_ids"], json!(["lease_01", "lease_02"]));
    }
}
