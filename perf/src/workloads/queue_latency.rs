//! `queue-latency`: end-to-end job latency at a steady rate (issue 6). A fresh queue
//! (`{prefix}-qlat-{class}`); one producer appends jobs on a fixed schedule (job `k` due at
//! `k / --rate`, 5000/s; one job per POST while it keeps up, the jobs that fell due during a
//! slow round trip together in the next POST), each job's `data` carrying its id and the time
//! its POST was sent (µs since an epoch shared with the workers); `--connections` workers (16),
//! each its own `node`, long-poll `claim {"max": --claim-max (16), "wait_ms": --wait-ms
//! (1000)}` and ack what they got (with its `lease_id`) before claiming again.
//!
//! Per job sent in the measured window: append sent → claim answer received (the headline
//! `p50_us`...), append acknowledged (as the producer's client saw it) → claim received
//! (`ack_to_claim_*`; a claim that beats the append's answer counts as 0 and is counted in
//! `claimed_before_append_ack`, by how much in `claim_lead_over_append_ack_*`), and append sent → the worker's ack answered
//! (`send_to_done_*`). After the producer stops the workers run until every job has been
//! claimed or `--drain-secs` passed; then every job the server acknowledged must have been
//! claimed exactly once (`lost`, `duplicates`) and acked exactly once by a worker (`acked_once`),
//! and the queue must be empty (`queue_after`).
//!
//! The producer has an executor of its own on the first CPU, so its pacing and timestamps do
//! not wait behind the workers' tasks.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use super::queue::{
    ack_request, claim_request, fresh_queue, queue_name, queue_state, scan_ack, scan_claimed,
};
use super::{durability, params, topic_path};
use crate::client::{json_u64, Client, Target};
use crate::exec::Window;
use crate::report::{Report, Run};
use crate::sse::watch_record;
use crate::stats::{insert_percentiles, record_us, round, us_histogram};
use crate::Args;

/// Most jobs per append when the producer has fallen behind its schedule.
const MAX_BATCH: u64 = 1000;
/// How long after the window and the drain time workers wait for a producer that never
/// says it is done.
const HANG_GUARD_US: u64 = 60_000_000;

/// What the producer and the workers share across executors.
struct Shared {
    epoch: Instant,
    /// Per job id: when the producer saw its append acknowledged (µs since `epoch`, plus 1;
    /// 0: not acknowledged), the seq the server gave it (plus 1; 0: unknown), how often a
    /// claim delivered it and how often a worker's ack of it counted.
    acks: Vec<AtomicU64>,
    seqs: Vec<AtomicU64>,
    received: Vec<AtomicU32>,
    acked: Vec<AtomicU32>,
    /// Distinct ids claimed so far.
    distinct: AtomicU64,
    /// The measured window in µs since `epoch`.
    win_start: u64,
    win_end: u64,
    /// Ids the producer sent (`0..sent`), once it is done; `u64::MAX` before.
    sent: AtomicU64,
    /// When the producer finished, µs since `epoch`.
    done_us: AtomicU64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn in_window(&self, t: u64) -> bool {
        t >= self.win_start && t < self.win_end
    }
}

/// The workers' figures of one executor.
struct Side {
    send_lat: Histogram<u64>,
    ack_lat: Histogram<u64>,
    done_lat: Histogram<u64>,
    claim_rtt: Histogram<u64>,
    ack_rtt: Histogram<u64>,
    /// Claims received before the producer saw the append's answer: (id, received µs).
    pending: Vec<(u64, u64)>,
    claims: u64,
    empty_claims: u64,
    jobs_claimed: u64,
    /// Jobs claimed in the window (by claim time), for the consumption rate.
    claimed_in_window: u64,
    duplicates: u64,
    foreign: u64,
    seq_mismatches: u64,
    unreadable: u64,
    ack_skipped: u64,
    acks: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Side {
    fn new() -> Side {
        Side {
            send_lat: us_histogram(),
            ack_lat: us_histogram(),
            done_lat: us_histogram(),
            claim_rtt: us_histogram(),
            ack_rtt: us_histogram(),
            pending: Vec::new(),
            claims: 0,
            empty_claims: 0,
            jobs_claimed: 0,
            claimed_in_window: 0,
            duplicates: 0,
            foreign: 0,
            seq_mismatches: 0,
            unreadable: 0,
            ack_skipped: 0,
            acks: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }

    /// Accounts for one job a claim answered at `t1` (µs since the epoch).
    fn claimed(&mut self, shared: &Shared, job: &Held, t1: u64) {
        self.jobs_claimed += 1;
        if shared.in_window(t1) {
            self.claimed_in_window += 1;
        }
        let (Some(id), Some(sent_us)) = (job.id, job.sent_us) else {
            self.foreign += 1;
            return;
        };
        let Some(received) = shared.received.get(id as usize) else {
            self.foreign += 1;
            return;
        };
        if received.fetch_add(1, SeqCst) == 0 {
            shared.distinct.fetch_add(1, SeqCst);
        } else {
            self.duplicates += 1;
        }
        let seq = shared.seqs[id as usize].load(SeqCst);
        if seq > 0 && seq - 1 != job.seq {
            self.seq_mismatches += 1;
        }
        if !shared.in_window(sent_us) {
            return;
        }
        record_us(&mut self.send_lat, t1.saturating_sub(sent_us));
        match shared.acks[id as usize].load(SeqCst) {
            0 => self.pending.push((id, t1)),
            ack => record_us(&mut self.ack_lat, t1.saturating_sub(ack - 1)),
        }
    }

    fn merge(&mut self, o: Side) {
        for (a, b) in [
            (&mut self.send_lat, &o.send_lat),
            (&mut self.ack_lat, &o.ack_lat),
            (&mut self.done_lat, &o.done_lat),
            (&mut self.claim_rtt, &o.claim_rtt),
            (&mut self.ack_rtt, &o.ack_rtt),
        ] {
            a.add(b).expect("same bounds");
        }
        self.pending.extend(o.pending);
        self.claims += o.claims;
        self.empty_claims += o.empty_claims;
        self.jobs_claimed += o.jobs_claimed;
        self.claimed_in_window += o.claimed_in_window;
        self.duplicates += o.duplicates;
        self.foreign += o.foreign;
        self.seq_mismatches += o.seq_mismatches;
        self.unreadable += o.unreadable;
        self.ack_skipped += o.ack_skipped;
        self.acks += o.acks;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// The producer's figures.
struct Producer {
    rtt: Histogram<u64>,
    /// Due time → POST sent, µs: how far the producer fell behind its schedule.
    lag: Histogram<u64>,
    acked: u64,
    acked_in_window: u64,
    requests: u64,
    max_batch: u64,
    seqs_unknown: u64,
    errors: u64,
    first_error: Option<String>,
}

struct Plan {
    topic: String,
    workers: usize,
    claim_max: usize,
    wait_ms: u64,
    drain_us: u64,
}

pub fn run(args: &Args, target: &Target) -> Result<Report, String> {
    let class = durability(args);
    let workers = args.connections.unwrap_or(16).max(1);
    let claim_max = args.claim_max.unwrap_or(16).clamp(1, 1000);
    let topic = queue_name(&args.topic_prefix, "qlat", class);
    let cpus = args.cpus();
    let (t, q) = (target.clone(), topic.clone());
    cpus.run_one(move || async move {
        let mut client = Client::new(t.clone());
        fresh_queue(&mut client, &t, &q, class).await
    })??;

    let total = args.warmup() + args.duration();
    let cap = (args.rate * total.as_secs_f64()).ceil() as usize + 2;
    let epoch = Instant::now();
    // The schedule starts a little after the workers' first claims are out.
    let window = Window::new(args.warmup() + Duration::from_millis(100), args.duration());
    let us = |t: Instant| (t - epoch).as_micros() as u64;
    let shared = Arc::new(Shared {
        epoch,
        acks: (0..cap).map(|_| AtomicU64::new(0)).collect(),
        seqs: (0..cap).map(|_| AtomicU64::new(0)).collect(),
        received: (0..cap).map(|_| AtomicU32::new(0)).collect(),
        acked: (0..cap).map(|_| AtomicU32::new(0)).collect(),
        distinct: AtomicU64::new(0),
        win_start: us(window.start),
        win_end: us(window.end),
        sent: AtomicU64::new(u64::MAX),
        done_us: AtomicU64::new(0),
    });
    let plan = Arc::new(Plan {
        topic: topic.clone(),
        workers,
        claim_max,
        wait_ms: args.wait_ms,
        drain_us: args.drain().as_micros() as u64,
    });

    let producer = {
        let (cpus, target, shared) = (cpus.clone(), target.clone(), shared.clone());
        let (path, rate, bytes) = (
            format!("{}?return_seqs=false", topic_path(&topic)),
            args.rate,
            args.record_bytes,
        );
        let start = window.start - args.warmup();
        std::thread::spawn(move || {
            cpus.run_one(move || produce(target, path, rate, bytes, start, window, shared))
        })
    };
    let (t, s, p) = (target.clone(), shared.clone(), plan.clone());
    let parts = cpus.run_all(move |index, count| {
        let (target, shared, plan) = (t.clone(), s.clone(), p.clone());
        async move {
            let tasks: Vec<_> = (index..plan.workers)
                .step_by(count)
                .map(|i| {
                    glommio::spawn_local(worker(target.clone(), plan.clone(), shared.clone(), i))
                })
                .collect();
            let mut side = Side::new();
            for task in tasks {
                side.merge(task.await);
            }
            side
        }
    });
    let producer = producer
        .join()
        .map_err(|_| "producer thread panicked".to_string())??;
    let mut side = Side::new();
    for part in parts? {
        side.merge(part);
    }
    let (t, q) = (target.clone(), topic.clone());
    let after = cpus.run_one(move || async move {
        let mut client = Client::new(t.clone());
        queue_state(&mut client, &t, &q).await
    })??;

    // Claims that beat the append's answer: measured from the answer all the same (as 0).
    // How far ahead they were says whether a claim can see a job before its append is
    // answered (for `fsync`: before it is durable) or only beat the answer on the wire.
    let mut before_ack = 0u64;
    let mut lead = us_histogram();
    for &(id, received) in &side.pending {
        if let Some(ack) = shared.acks.get(id as usize).map(|a| a.load(SeqCst)) {
            if ack > 0 {
                if received < ack - 1 {
                    before_ack += 1;
                    record_us(&mut lead, ack - 1 - received);
                }
                record_us(&mut side.ack_lat, received.saturating_sub(ack - 1));
            }
        }
    }
    // Every job the server acknowledged: claimed once, acked once by a worker?
    let sent = shared.sent.load(SeqCst).min(cap as u64);
    let (mut lost, mut acked_once, mut acked_twice, mut not_acked, mut unacked_claimed) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for id in 0..sent as usize {
        let produced = shared.acks[id].load(SeqCst) > 0;
        let received = shared.received[id].load(SeqCst);
        let acked = shared.acked[id].load(SeqCst);
        if produced {
            lost += u64::from(received == 0);
            acked_once += u64::from(acked == 1);
            acked_twice += u64::from(acked > 1);
            not_acked += u64::from(received > 0 && acked == 0);
        } else if received > 0 {
            unacked_claimed += 1;
        }
    }
    let secs = window.duration().as_secs_f64();
    let mut f = serde_json::Map::new();
    f.insert("rate_target".into(), json!(args.rate));
    f.insert(
        "records_per_s".into(),
        json!(round(producer.acked_in_window as f64 / secs, 1)),
    );
    f.insert(
        "claimed_per_s".into(),
        json!(round(side.claimed_in_window as f64 / secs, 1)),
    );
    f.insert("jobs_produced".into(), json!(producer.acked));
    f.insert("append_requests".into(), json!(producer.requests));
    f.insert("max_batch".into(), json!(producer.max_batch));
    f.insert("latency_samples".into(), json!(side.send_lat.len()));
    insert_percentiles(&mut f, "", &side.send_lat);
    insert_percentiles(&mut f, "ack_to_claim_", &side.ack_lat);
    f.insert("claimed_before_append_ack".into(), json!(before_ack));
    insert_percentiles(&mut f, "claim_lead_over_append_ack_", &lead);
    insert_percentiles(&mut f, "send_to_done_", &side.done_lat);
    insert_percentiles(&mut f, "append_rtt_", &producer.rtt);
    insert_percentiles(&mut f, "producer_lag_", &producer.lag);
    insert_percentiles(&mut f, "claim_rtt_", &side.claim_rtt);
    insert_percentiles(&mut f, "ack_rtt_", &side.ack_rtt);
    f.insert("claims".into(), json!(side.claims));
    f.insert("empty_claims".into(), json!(side.empty_claims));
    f.insert(
        "jobs_per_claim".into(),
        json!(round(
            side.jobs_claimed as f64 / (side.claims - side.empty_claims).max(1) as f64,
            2
        )),
    );
    f.insert("jobs_claimed".into(), json!(side.jobs_claimed));
    f.insert("lost".into(), json!(lost));
    f.insert("duplicates".into(), json!(side.duplicates));
    f.insert("acked_once".into(), json!(acked_once));
    f.insert("acked_more_than_once".into(), json!(acked_twice));
    f.insert("claimed_not_acked".into(), json!(not_acked));
    f.insert("ack_skipped".into(), json!(side.ack_skipped));
    f.insert("claimed_but_append_failed".into(), json!(unacked_claimed));
    f.insert("foreign_jobs".into(), json!(side.foreign));
    f.insert("seq_mismatches".into(), json!(side.seq_mismatches));
    f.insert("seqs_unknown".into(), json!(producer.seqs_unknown));
    f.insert("queue_after".into(), after.to_json());
    let exactly_once = lost == 0
        && side.duplicates == 0
        && acked_once == producer.acked
        && side.foreign == 0
        && after.count == Some(0)
        && after.in_flight == Some(0);
    f.insert("exactly_once".into(), json!(exactly_once));
    let errors = side.errors + producer.errors + side.unreadable;
    f.insert("errors".into(), json!(errors));
    f.insert("append_errors".into(), json!(producer.errors));
    if let Some(e) = producer.first_error.or(side.first_error) {
        f.insert("first_error".into(), json!(e));
    }

    let mut p = params(args, workers);
    p.insert("topic".into(), json!(topic));
    p.insert("durability".into(), json!(class.name()));
    p.insert("rate".into(), json!(args.rate));
    p.insert("workers".into(), json!(workers));
    p.insert("claim_max".into(), json!(claim_max));
    p.insert("wait_ms".into(), json!(args.wait_ms));
    p.insert("drain_s".into(), json!(args.drain_secs));
    Ok(Report::new(
        "queue-latency",
        &args.url,
        p,
        vec![Run::new(class.name(), f)],
    ))
}

/// The producer: appends on a fixed schedule from `start` to the end of the window.
async fn produce(
    target: Target,
    path: String,
    rate: f64,
    record_bytes: usize,
    start: Instant,
    window: Window,
    shared: Arc<Shared>,
) -> Producer {
    let mut w = Producer {
        rtt: us_histogram(),
        lag: us_histogram(),
        acked: 0,
        acked_in_window: 0,
        requests: 0,
        max_batch: 0,
        seqs_unknown: 0,
        errors: 0,
        first_error: None,
    };
    let mut client = Client::new(target.clone());
    let total = (window.end - start).as_secs_f64();
    let last = ((total * rate).ceil() as u64).min(shared.acks.len() as u64);
    let due_at = |k: u64| start + Duration::from_secs_f64(k as f64 / rate);
    let mut k = 0u64;
    let mut body = String::new();
    while k < last {
        let now = Instant::now();
        if due_at(k) > now {
            glommio::timer::sleep(due_at(k) - now).await;
            continue;
        }
        let due = (((now - start).as_secs_f64() * rate) as u64 + 1).min(last);
        let end = due.max(k + 1).min(k + MAX_BATCH);
        let t = shared.now_us();
        record_us(
            &mut w.lag,
            now.saturating_duration_since(due_at(k)).as_micros() as u64,
        );
        body.clear();
        body.push_str(r#"{"records":["#);
        for id in k..end {
            if id > k {
                body.push(',');
            }
            body.push_str(r#"{"data":"#);
            body.push_str(&watch_record(id, t, record_bytes));
            body.push('}');
        }
        body.push_str("]}");
        let req = target.request("POST", &path, Some(body.as_bytes()));
        w.requests += 1;
        w.max_batch = w.max_batch.max(end - k);
        match client.send(&req).await {
            Ok(status) if (200..300).contains(&status) => {
                let ack = shared.now_us();
                let resp = client.body();
                let first = json_u64(resp, "first_seq");
                let last_seq = json_u64(resp, "last_seq");
                let contiguous = matches!((first, last_seq),
                    (Some(a), Some(b)) if b >= a && b - a + 1 == end - k);
                for id in k..end {
                    shared.acks[id as usize].store(ack + 1, SeqCst);
                    if let (true, Some(a)) = (contiguous, first) {
                        shared.seqs[id as usize].store(a + (id - k) + 1, SeqCst);
                    }
                }
                if !contiguous {
                    w.seqs_unknown += end - k;
                }
                record_us(&mut w.rtt, ack - t);
                w.acked += end - k;
                if shared.in_window(t) {
                    w.acked_in_window += end - k;
                }
            }
            Ok(status) => {
                w.errors += 1;
                let resp = client.body();
                let text = String::from_utf8_lossy(&resp[..resp.len().min(300)]).into_owned();
                w.first_error
                    .get_or_insert(format!("append: HTTP {status}: {text}"));
            }
            Err(e) => {
                w.errors += 1;
                w.first_error.get_or_insert(format!("append: {e}"));
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
        k = end;
    }
    shared.done_us.store(shared.now_us(), SeqCst);
    shared.sent.store(k, SeqCst);
    w
}

/// A job as a worker holds it between its claim and its ack.
struct Held {
    seq: u64,
    lease_id: String,
    id: Option<u64>,
    sent_us: Option<u64>,
}

/// One worker: long-poll claims and acks until every job sent has been claimed (or the
/// drain time after the producer stopped has passed).
async fn worker(target: Target, plan: Arc<Plan>, shared: Arc<Shared>, i: usize) -> Side {
    let mut s = Side::new();
    let mut client = Client::new(target.clone());
    let node = format!("w{i}");
    let claim = claim_request(&target, &plan.topic, &node, plan.claim_max, plan.wait_ms);
    let ack_path = format!("{}/ack", topic_path(&plan.topic));
    // Should the producer never report (its executor failed), stop all the same.
    let hard_stop = shared.win_end + plan.drain_us + HANG_GUARD_US;
    loop {
        let sent = shared.sent.load(SeqCst);
        if sent == u64::MAX && shared.now_us() > hard_stop {
            s.error("the producer never finished; workers gave up".to_string());
            break;
        }
        if sent != u64::MAX {
            let done = shared.distinct.load(SeqCst) >= sent;
            let late = shared.now_us() > shared.done_us.load(SeqCst) + plan.drain_us;
            if done || late {
                break;
            }
        }
        let t0 = shared.now_us();
        let status = client.send(&claim).await;
        let t1 = shared.now_us();
        let jobs: Vec<Held> = match status {
            Ok(status) if (200..300).contains(&status) => {
                let body = client.body();
                let claimed = scan_claimed(body);
                s.claims += 1;
                record_us(&mut s.claim_rtt, t1 - t0);
                if json_u64(body, "count") != Some(claimed.len() as u64) {
                    s.unreadable += 1;
                    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                    s.first_error
                        .get_or_insert(format!("a claim answer the scanner misread: {text}"));
                }
                if claimed.is_empty() {
                    s.empty_claims += 1;
                }
                let jobs: Vec<Held> = claimed
                    .iter()
                    .map(|c| Held {
                        seq: c.seq,
                        lease_id: c.lease_id.to_string(),
                        id: c.id,
                        sent_us: c.sent_us,
                    })
                    .collect();
                for job in &jobs {
                    s.claimed(&shared, job, t1);
                }
                jobs
            }
            Ok(status) => {
                let body = client.body();
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                s.error(format!("claim: HTTP {status}: {text}"));
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => {
                s.error(format!("claim: {e}"));
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if jobs.is_empty() {
            continue;
        }
        let pairs: Vec<(u64, String)> = jobs.iter().map(|j| (j.seq, j.lease_id.clone())).collect();
        let req = ack_request(&target, &ack_path, &node, &pairs);
        let t2 = shared.now_us();
        let status = client.send(&req).await;
        let t3 = shared.now_us();
        match status {
            Ok(status) if (200..300).contains(&status) => {
                record_us(&mut s.ack_rtt, t3 - t2);
                s.acks += 1;
                let (_, skipped) = scan_ack(client.body());
                s.ack_skipped += skipped.len() as u64;
                for job in jobs.iter().filter(|j| !skipped.contains(&j.seq)) {
                    let Some(id) = job.id else { continue };
                    if let Some(a) = shared.acked.get(id as usize) {
                        a.fetch_add(1, SeqCst);
                    }
                    if let Some(sent_us) = job.sent_us.filter(|&t| shared.in_window(t)) {
                        record_us(&mut s.done_lat, t3.saturating_sub(sent_us));
                    }
                }
            }
            Ok(status) => {
                let body = client.body();
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                s.error(format!("ack: HTTP {status}: {text}"));
            }
            Err(e) => s.error(format!("ack: {e}")),
        }
    }
    s
}
