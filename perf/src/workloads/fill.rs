//! `fill`: writes exactly `--records` records to `--topics` topics (`{prefix}-fill-t000000`,
//! ...; the records spread evenly, the first `records % topics` topics one more) in batches of
//! `--batch` from `--connections` connections, as fast as the server takes them: the fill of
//! the storage measurements (scripts/storage.sh). Batch `k` goes to topic `k % T`, so all
//! topics grow together and a topic's oldest records are the oldest on disk.
//!
//! Each record's `data` is a JSON string of exactly `--record-bytes` bytes, quotes included:
//! the record's id (topic << 32 | index in the topic) in 16 hex digits, `-`, then random
//! base64url characters, fresh for every record, so that the payload neither repeats nor
//! compresses below its 6 bits a byte. Every write carries `"config":{"durability":...}` (the
//! write that creates its topic applies it; `disk` unless `--durability`) and asks
//! `?return_seqs=false`.
//!
//! A batch answered with a non-2xx is retried (nothing of it was written); one whose
//! connection failed is retried too, which may write it twice, so at the end the heads of a
//! sample of topics are read back and compared with what was meant (`verified`). Reports the
//! rate, the payload written, and the server's RSS as the fill crosses each tenth of the
//! records, at the end, and its peak (VmHWM).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{diff::head_seq, params, topic_path, Names};
use crate::client::{json_number, Client, Target};
use crate::procfs;
use crate::report::{Report, Run};
use crate::stats::{round, Recorder};
use crate::Args;

/// Attempts per batch before it is given up (counted in `lost_records`).
const MAX_ATTEMPTS: u32 = 30;
/// How often the RSS sampler looks at the progress.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Topics whose heads are checked after the fill (evenly spread, the last one included).
const CHECKED_TOPICS: u64 = 16;

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

pub fn run(args: &Args, target: &Target) -> Result<Report, String> {
    let topics = args.topics.unwrap_or(1000).max(1);
    let plan = Plan {
        topics: topics as u64,
        records: args.records.unwrap_or(topics as u64 * 1000),
        batch: args.batch.clamp(1, 10_000) as u64,
    };
    let class = args.durability.unwrap_or(crate::Durability::Disk);
    let connections = args.connections.unwrap_or(32).max(1);
    let pid = args
        .server_pid
        .or_else(|| procfs::listener_pid(target.addr.port()));
    let shared = Arc::new(Shared {
        plan,
        names: Names::new(&format!("{}-fill", args.topic_prefix), topics),
        record_bytes: args.record_bytes,
        config: format!(r#","config":{{"durability":"{}"}}}}"#, class.name()),
        connections,
        next: AtomicU64::new(0),
        records_ok: AtomicU64::new(0),
        created: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        finished: AtomicUsize::new(0),
    });
    let before = rss_mib(pid, "VmRSS");

    let started = Instant::now();
    let (rec, curve) = drive(args, target, &shared, pid)?;
    let elapsed = started.elapsed();
    let after = rss_mib(pid, "VmRSS");
    let peak = rss_mib(pid, "VmHWM");

    let sample = check(args, target, &shared)?;
    let verified = sample
        .iter()
        .all(|s| s["head_seq"].as_u64() == s["expected_head_seq"].as_u64());

    let written = shared.records_ok.load(Relaxed);
    let payload = written * args.record_bytes as u64;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let mut f = rec.summary(elapsed);
    f.insert("records_written".into(), json!(written));
    f.insert("lost_records".into(), json!(shared.lost.load(Relaxed)));
    f.insert("created".into(), json!(shared.created.load(Relaxed)));
    f.insert("payload_bytes".into(), json!(payload));
    f.insert(
        "payload_mib_per_s".into(),
        json!(round(payload as f64 / secs / (1 << 20) as f64, 1)),
    );
    f.insert("server_pid".into(), json!(pid));
    f.insert("rss_before_mib".into(), json!(before));
    f.insert("rss_after_mib".into(), json!(after));
    f.insert("rss_peak_mib".into(), json!(peak));
    let curve: Vec<Value> = curve
        .iter()
        .map(|&(records, mib)| json!({"records": records, "rss_mib": mib}))
        .collect();
    f.insert("rss_curve".into(), Value::Array(curve));
    f.insert("verified".into(), json!(verified));
    f.insert("sample".into(), Value::Array(sample));

    let mut p = params(args, connections);
    p.insert("topics".into(), json!(plan.topics));
    p.insert("records".into(), json!(plan.records));
    p.insert("batch".into(), json!(plan.batch));
    p.insert("durability".into(), json!(class.name()));
    p.insert(
        "records_per_topic".into(),
        json!([plan.per_topic(plan.topics - 1), plan.per_topic(0)]),
    );
    p.insert(
        "topic_names".into(),
        json!(format!(
            "{}..{}",
            shared.names.name(0),
            shared.names.name(topics - 1)
        )),
    );
    p.insert(
        "data".into(),
        json!("a JSON string of random base64url characters, quotes included"),
    );
    Ok(Report::new("fill", &args.url, p, vec![Run::new("fill", f)]))
}

/// Which records go where: batch slot `k` is topic `k % topics`, records
/// `(k / topics) * batch ..` of it.
#[derive(Clone, Copy, Debug)]
struct Plan {
    topics: u64,
    records: u64,
    batch: u64,
}

impl Plan {
    fn per_topic(&self, t: u64) -> u64 {
        self.records / self.topics + u64::from(t < self.records % self.topics)
    }

    /// Slots to hand out (some of the last round's are empty when the counts differ).
    fn slots(&self) -> u64 {
        self.per_topic(0).div_ceil(self.batch) * self.topics
    }

    /// Slot `k`: (topic, index of its first record in the topic, records), or `None` when
    /// the topic has no records left for it.
    fn slot(&self, k: u64) -> Option<(u64, u64, u64)> {
        let t = k % self.topics;
        let first = (k / self.topics) * self.batch;
        let want = self.per_topic(t);
        (first < want).then(|| (t, first, self.batch.min(want - first)))
    }
}

/// What the connections share, across executors.
struct Shared {
    plan: Plan,
    names: Names,
    record_bytes: usize,
    /// The end of every body: `,"config":{...}}`.
    config: String,
    connections: usize,
    /// The next slot to write.
    next: AtomicU64,
    /// Records of 2xx answers; 201 answers (the write created its topic); records given up.
    records_ok: AtomicU64,
    created: AtomicU64,
    lost: AtomicU64,
    /// Connections done.
    finished: AtomicUsize,
}

fn rss_mib(pid: Option<u32>, key: &str) -> Option<f64> {
    let kib = procfs::status_kib(pid?, &[key]).pop()??;
    Some(round(kib as f64 / 1024.0, 1))
}

/// Runs the connections over every executor (the RSS sampler on the first); returns the
/// merged recorder and the samples (records written so far, RSS MiB).
fn drive(
    args: &Args,
    target: &Target,
    shared: &Arc<Shared>,
    pid: Option<u32>,
) -> Result<(Recorder, Vec<(u64, f64)>), String> {
    let (target, shared) = (target.clone(), shared.clone());
    let parts = args.cpus().run_all(move |index, count| {
        let (target, shared) = (target.clone(), shared.clone());
        async move {
            let sampler = (index == 0).then(|| glommio::spawn_local(sample(shared.clone(), pid)));
            let tasks: Vec<_> = (index..shared.connections)
                .step_by(count)
                .map(|i| glommio::spawn_local(connection(target.clone(), shared.clone(), i)))
                .collect();
            let mut rec = Recorder::new();
            for task in tasks {
                rec.merge(&task.await);
            }
            let samples = match sampler {
                Some(task) => task.await,
                None => Vec::new(),
            };
            (rec, samples)
        }
    })?;
    let mut rec = Recorder::new();
    let mut samples = Vec::new();
    for (part, s) in parts {
        rec.merge(&part);
        samples.extend(s);
    }
    Ok((rec, samples))
}

/// Samples the server's RSS each time the records written cross another tenth.
async fn sample(shared: Arc<Shared>, pid: Option<u32>) -> Vec<(u64, f64)> {
    let total = shared.plan.records;
    let marks: Vec<u64> = (1..10).map(|d| total * d / 10).filter(|&m| m > 0).collect();
    let mut samples = Vec::new();
    let mut next = 0;
    while pid.is_some() && shared.finished.load(Relaxed) < shared.connections {
        let done = shared.records_ok.load(Relaxed);
        if next < marks.len() && done >= marks[next] {
            if let Some(mib) = rss_mib(pid, "VmRSS") {
                samples.push((done, mib));
            }
            while next < marks.len() && done >= marks[next] {
                next += 1;
            }
        }
        glommio::timer::sleep(SAMPLE_EVERY).await;
    }
    samples
}

async fn connection(target: Target, shared: Arc<Shared>, i: usize) -> Recorder {
    let mut client = Client::new(target.clone());
    let mut rec = Recorder::new();
    let mut rng = Rng::new(i as u64);
    let mut body = Vec::new();
    let slots = shared.plan.slots();
    loop {
        let k = shared.next.fetch_add(1, Relaxed);
        if k >= slots {
            break;
        }
        let Some((t, first, n)) = shared.plan.slot(k) else {
            continue;
        };
        body.clear();
        body.extend_from_slice(br#"{"records":["#);
        for j in 0..n {
            if j > 0 {
                body.push(b',');
            }
            body.extend_from_slice(br#"{"data":"#);
            record_string(
                &mut body,
                shared.record_bytes,
                t << 32 | (first + j),
                &mut rng,
            );
            body.push(b'}');
        }
        body.push(b']');
        body.extend_from_slice(shared.config.as_bytes());
        let path = format!(
            "{}?return_seqs=false",
            topic_path(&shared.names.name(t as usize))
        );
        let req = target.request("POST", &path, Some(&body));
        let mut attempts = 0;
        loop {
            let sent = Instant::now();
            match client.send(&req).await {
                Ok(status) if (200..300).contains(&status) => {
                    rec.response(status, sent.elapsed(), n);
                    rec.server_perf(json_number(client.body(), "server_total_ms"), None);
                    shared.records_ok.fetch_add(n, Relaxed);
                    if status == 201 {
                        shared.created.fetch_add(1, Relaxed);
                    }
                    break;
                }
                Ok(status) => rec.error_response(status, sent.elapsed(), client.body()),
                Err(e) => rec.io_error(&e),
            }
            attempts += 1;
            if attempts >= MAX_ATTEMPTS {
                shared.lost.fetch_add(n, Relaxed);
                break;
            }
            let backoff = Duration::from_millis(10 << attempts.min(6));
            glommio::timer::sleep(backoff).await;
        }
    }
    shared.finished.fetch_add(1, Relaxed);
    rec
}

/// Reads the heads of a sample of topics: `[{topic, expected_head_seq, head_seq}]`.
fn check(args: &Args, target: &Target, shared: &Arc<Shared>) -> Result<Vec<Value>, String> {
    let (target, shared) = (target.clone(), shared.clone());
    args.cpus().run_one(move || async move {
        let n = shared.plan.topics;
        let mut picked: Vec<u64> = (0..CHECKED_TOPICS)
            .map(|i| i * n / CHECKED_TOPICS)
            .collect();
        picked.push(n - 1);
        picked.dedup();
        let mut client = Client::new(target.clone());
        let mut out = Vec::new();
        for t in picked {
            let topic = shared.names.name(t as usize);
            let head = head_seq(&mut client, &target, &topic).await.ok();
            out.push(json!({
                "topic": topic,
                "expected_head_seq": shared.plan.per_topic(t),
                "head_seq": head,
            }));
        }
        out
    })
}

/// Appends a JSON string of exactly `bytes` bytes (at least 19): `"`, `id` in 16 hex digits,
/// `-`, random base64url characters, `"`.
fn record_string(out: &mut Vec<u8>, bytes: usize, id: u64, rng: &mut Rng) {
    out.push(b'"');
    out.extend_from_slice(format!("{id:016x}-").as_bytes());
    let mut left = bytes.saturating_sub(19);
    while left > 0 {
        let mut r = rng.next();
        let take = left.min(10);
        for _ in 0..take {
            out.push(BASE64URL[(r & 63) as usize]);
            r >>= 6;
        }
        left -= take;
    }
    out.push(b'"');
}

/// xorshift64*: fast, and random enough that the payload does not compress.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_strings_of_the_exact_size() {
        let mut rng = Rng::new(3);
        for bytes in [64, 256, 1000] {
            let mut out = Vec::new();
            record_string(&mut out, bytes, 7 << 32 | 42, &mut rng);
            assert_eq!(out.len(), bytes);
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert!(v.as_str().unwrap().starts_with("000000070000002a-"));
        }
    }

    #[test]
    fn the_plan_writes_every_record_once() {
        for (topics, records, batch) in [(7, 1000, 30), (1000, 20_000, 500), (5, 3, 10)] {
            let plan = Plan {
                topics,
                records,
                batch,
            };
            let mut next = vec![0u64; topics as usize];
            let mut total = 0;
            for k in 0..plan.slots() {
                if let Some((t, first, n)) = plan.slot(k) {
                    assert_eq!(first, next[t as usize], "contiguous within a topic");
                    assert!(n > 0 && n <= batch);
                    next[t as usize] += n;
                    total += n;
                }
            }
            assert_eq!(total, records);
            for t in 0..topics {
                assert_eq!(next[t as usize], plan.per_topic(t));
            }
        }
    }
}
