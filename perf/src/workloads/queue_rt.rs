//! `queue-rt`: claim + ack round trips (issue 6). A fresh queue (`{prefix}-qrt-{class}`) is
//! pre-filled with `--records` jobs in batches of 1000, then `--connections` workers (16),
//! each its own `node`, loop as fast as the server answers: `claim {"max": K}` (K =
//! `--claim-max`, 1), then one `ack` of every job claimed, with its `lease_id`. Reports round
//! trips (claim + ack pairs) and jobs acked per second, the latency of the claim, of the ack
//! and of the pair, what the server said it spent on each, and the queue's counts before and
//! after (what was acked must have left it). A claim that comes back empty means the
//! pre-fill ran dry: counted in `empty_claims`, the figures are then not a measurement.
//!
//! A large pre-fill outgrows the server's hot tail: its jobs are moved to segment files and
//! every claim reads them back from disk (`server_read_bytes_per_job`). `--refill N` measures
//! a queue that keeps up instead: N + 1000 jobs pre-filled, then a feeder connection appends
//! another 1000 whenever the `ready` count of the last claim answer fell below N, so the
//! backlog stays small and recent (the feeder's appends are part of the server's load).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use super::queue::{
    ack_request, claim_request, fresh_queue, insert_server_ms, prefill, queue_name, queue_state,
    scan_ack, scan_claimed, PREFILL_BATCH,
};
use super::{append_body, durability, params, topic_path};
use crate::client::{json_number, json_u64, Client, Target};
use crate::exec::Window;
use crate::procfs;
use crate::report::{Report, Run};
use crate::stats::{insert_percentiles, record_us, round, us_histogram, Recorder};
use crate::Args;

/// Pre-filled jobs when `--records` is not given: this many per claimed job (up to 8) per
/// second of warm-up + run, at least [`MIN_PREFILL`]: above the rates one server core
/// reached in development, and (at 256-byte jobs, `--claim-max 1`, 11 s) within the
/// server's default 64 MiB hot tail. Empty claims say when it was not enough.
const PREFILL_PER_SECOND: u64 = 20_000;
const MIN_PREFILL: u64 = 100_000;

/// One worker's figures (merged per executor, then over all).
struct Side {
    claim: Recorder,
    ack: Recorder,
    /// Claim sent → ack answered, µs, for pairs whose ack was answered in the window.
    pair: Histogram<u64>,
    pairs: u64,
    jobs: u64,
    /// Over the whole run, warm-up included: jobs claimed and acked.
    claimed_total: u64,
    acked_total: u64,
    empty_claims: u64,
    /// Claims whose `count` differs from the entries the scanner found.
    unreadable: u64,
    /// Jobs the server skipped in an ack (lease lost or not ours).
    ack_skipped: u64,
    /// Jobs delivered more than once (`deliveries` > 1).
    redelivered: u64,
}

impl Side {
    fn new() -> Side {
        Side {
            claim: Recorder::new(),
            ack: Recorder::new(),
            pair: us_histogram(),
            pairs: 0,
            jobs: 0,
            claimed_total: 0,
            acked_total: 0,
            empty_claims: 0,
            unreadable: 0,
            ack_skipped: 0,
            redelivered: 0,
        }
    }

    fn merge(&mut self, o: &Side) {
        self.claim.merge(&o.claim);
        self.ack.merge(&o.ack);
        self.pair.add(&o.pair).expect("same bounds");
        self.pairs += o.pairs;
        self.jobs += o.jobs;
        self.claimed_total += o.claimed_total;
        self.acked_total += o.acked_total;
        self.empty_claims += o.empty_claims;
        self.unreadable += o.unreadable;
        self.ack_skipped += o.ack_skipped;
        self.redelivered += o.redelivered;
    }
}

struct Plan {
    topic: String,
    workers: usize,
    claim_max: usize,
    record_bytes: usize,
    /// `--refill`: the `ready` count below which the feeder appends another batch.
    refill: Option<u64>,
    /// The `ready` count of the latest claim answer.
    ready: AtomicU64,
    /// Workers still running (the feeder stops with the last one).
    running: AtomicUsize,
}

/// What the feeder appended.
#[derive(Default)]
struct Fed {
    jobs: u64,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
}

pub fn run(args: &Args, target: &Target) -> Result<Report, String> {
    let class = durability(args);
    let workers = args.connections.unwrap_or(16).max(1);
    let claim_max = args.claim_max.unwrap_or(1).clamp(1, 1000);
    let topic = queue_name(&args.topic_prefix, "qrt", class);
    let total_s = (args.warmup() + args.duration()).as_secs_f64();
    let jobs = match (args.records, args.refill) {
        (Some(n), _) => n.max(1),
        (None, Some(low)) => low + PREFILL_BATCH as u64,
        (None, None) => (((PREFILL_PER_SECOND * claim_max.min(8) as u64) as f64 * total_s.max(1.0))
            as u64)
            .max(MIN_PREFILL),
    };

    let cpus = args.cpus();
    let (t, q, bytes) = (target.clone(), topic.clone(), args.record_bytes);
    let (prefilled, fill_s, before) = cpus.run_one(move || async move {
        let mut client = Client::new(t.clone());
        fresh_queue(&mut client, &t, &q, class).await?;
        let (n, secs) = prefill(&mut client, &t, &q, jobs, bytes).await?;
        let state = queue_state(&mut client, &t, &q).await?;
        Ok::<_, String>((n, secs, state))
    })??;

    let pid = args
        .server_pid
        .or_else(|| procfs::listener_pid(target.addr.port()));
    let plan = Arc::new(Plan {
        topic: topic.clone(),
        workers,
        claim_max,
        record_bytes: args.record_bytes,
        refill: args.refill,
        ready: AtomicU64::new(before.ready.unwrap_or(prefilled)),
        running: AtomicUsize::new(workers),
    });
    let window = Window::new(args.warmup(), args.duration());
    let read_before = pid.and_then(procfs::io_read_bytes);
    let t = target.clone();
    let parts = cpus.run_all(move |index, count| {
        let (plan, target) = (plan.clone(), t.clone());
        async move {
            let feeder = (index == 0 && plan.refill.is_some())
                .then(|| glommio::spawn_local(feed(target.clone(), plan.clone())));
            let tasks: Vec<_> = (index..plan.workers)
                .step_by(count)
                .map(|i| glommio::spawn_local(worker(target.clone(), plan.clone(), i, window)))
                .collect();
            let mut side = Side::new();
            for task in tasks {
                side.merge(&task.await);
            }
            let fed = match feeder {
                Some(task) => task.await,
                None => Fed::default(),
            };
            (side, fed)
        }
    })?;
    let mut side = Side::new();
    let mut fed = Fed::default();
    for (part, f) in parts {
        side.merge(&part);
        fed.jobs += f.jobs;
        fed.requests += f.requests;
        fed.errors += f.errors;
        fed.first_error = fed.first_error.or(f.first_error);
    }
    let read_after = pid.and_then(procfs::io_read_bytes);
    let (t, q) = (target.clone(), topic.clone());
    let after = cpus.run_one(move || async move {
        let mut client = Client::new(t.clone());
        queue_state(&mut client, &t, &q).await
    })??;

    let elapsed = window.duration();
    let secs = elapsed.as_secs_f64();
    let mut f = serde_json::Map::new();
    f.insert(
        "round_trips_per_s".into(),
        json!(round(side.pairs as f64 / secs, 1)),
    );
    f.insert(
        "jobs_per_s".into(),
        json!(round(side.jobs as f64 / secs, 1)),
    );
    // The generic names the load.sh-style tables read.
    f.insert(
        "records_per_s".into(),
        json!(round(side.jobs as f64 / secs, 1)),
    );
    f.insert(
        "requests_per_s".into(),
        json!(round((side.claim.ok + side.ack.ok) as f64 / secs, 1)),
    );
    f.insert("elapsed_s".into(), json!(round(secs, 3)));
    f.insert("round_trips".into(), json!(side.pairs));
    f.insert("jobs".into(), json!(side.jobs));
    f.insert(
        "jobs_per_claim".into(),
        json!(round(
            side.claim.records as f64 / side.claim.ok.max(1) as f64,
            2
        )),
    );
    insert_percentiles(&mut f, "", &side.pair);
    insert_percentiles(&mut f, "claim_", &side.claim.latency);
    insert_percentiles(&mut f, "ack_", &side.ack.latency);
    insert_server_ms(&mut f, "claim_", &side.claim.server_total);
    insert_server_ms(&mut f, "ack_", &side.ack.server_total);
    if !side.ack.fsync.is_empty() {
        let h = &side.ack.fsync;
        f.insert(
            "ack_fsync_ms_p50".into(),
            json!(round(h.value_at_quantile(0.5) as f64 / 1e6, 4)),
        );
        f.insert(
            "ack_fsync_ms_p99".into(),
            json!(round(h.value_at_quantile(0.99) as f64 / 1e6, 4)),
        );
    }
    f.insert("claimed_total".into(), json!(side.claimed_total));
    f.insert("acked_total".into(), json!(side.acked_total));
    f.insert("empty_claims".into(), json!(side.empty_claims));
    f.insert("ack_skipped".into(), json!(side.ack_skipped));
    f.insert("redelivered".into(), json!(side.redelivered));
    f.insert("unreadable_claims".into(), json!(side.unreadable));
    // Storage reads of the server over warm-up + run: claims of jobs already flushed from
    // the hot tail to segment files read them back from disk.
    f.insert("server_pid".into(), json!(pid));
    let read = read_before
        .zip(read_after)
        .map(|(a, b)| b.saturating_sub(a));
    f.insert("server_read_bytes".into(), json!(read));
    f.insert(
        "server_read_bytes_per_job".into(),
        json!(read.map(|r| round(r as f64 / side.claimed_total.max(1) as f64, 0))),
    );
    f.insert("queue_before".into(), before.to_json());
    f.insert("queue_after".into(), after.to_json());
    let expected_left = (prefilled + fed.jobs).saturating_sub(side.acked_total);
    if args.refill.is_some() {
        f.insert("refilled_jobs".into(), json!(fed.jobs));
        f.insert("refill_appends".into(), json!(fed.requests));
        f.insert("refill_errors".into(), json!(fed.errors));
    }
    let consistent = after.count == Some(expected_left)
        && after.ready == Some(expected_left)
        && after.in_flight == Some(0);
    f.insert("expected_left".into(), json!(expected_left));
    f.insert("consistent".into(), json!(consistent));
    let errors = side.claim.errors() + side.ack.errors() + side.unreadable + fed.errors;
    f.insert("errors".into(), json!(errors));
    f.insert("claim_errors".into(), json!(side.claim.errors()));
    f.insert("ack_errors".into(), json!(side.ack.errors()));
    if let Some(e) = side
        .claim
        .first_error
        .or(side.ack.first_error)
        .or(fed.first_error)
    {
        f.insert("first_error".into(), json!(e));
    }
    if side.empty_claims > 0 {
        f.insert(
            "warning".into(),
            json!(format!(
                "{} claims came back empty: the {prefilled} pre-filled jobs ran out; pass a \
                 larger --records",
                side.empty_claims
            )),
        );
    }

    let mut p = params(args, workers);
    p.insert("topic".into(), json!(topic));
    p.insert("durability".into(), json!(class.name()));
    p.insert("workers".into(), json!(workers));
    p.insert("claim_max".into(), json!(claim_max));
    p.insert("prefilled".into(), json!(prefilled));
    p.insert("refill_below".into(), json!(args.refill));
    p.insert("prefill_s".into(), json!(round(fill_s, 3)));
    p.insert(
        "prefill_jobs_per_s".into(),
        json!(round(prefilled as f64 / fill_s.max(1e-9), 1)),
    );
    let mut name = class.name().to_string();
    if claim_max > 1 {
        name.push_str(&format!(" claim-max {claim_max}"));
    }
    if let Some(low) = args.refill {
        name.push_str(&format!(" refill {low}"));
    }
    Ok(Report::new(
        "queue-rt",
        &args.url,
        p,
        vec![Run::new(name, f)],
    ))
}

async fn worker(target: Target, plan: Arc<Plan>, i: usize, window: Window) -> Side {
    let mut client = Client::new(target.clone());
    let mut side = Side::new();
    let node = format!("w{i}");
    let claim = claim_request(&target, &plan.topic, &node, plan.claim_max, 0);
    let ack_path = format!("{}/ack", topic_path(&plan.topic));
    let counted = |t: Instant| window.measuring(t) && !window.over(t);
    loop {
        let sent = Instant::now();
        if window.over(sent) {
            break;
        }
        let jobs: Vec<(u64, String)> = match client.send(&claim).await {
            Ok(status) if (200..300).contains(&status) => {
                let done = Instant::now();
                let body = client.body();
                let claimed = scan_claimed(body);
                let jobs: Vec<(u64, String)> = claimed
                    .iter()
                    .map(|c| (c.seq, c.lease_id.to_string()))
                    .collect();
                side.redelivered += claimed
                    .iter()
                    .filter(|c| c.deliveries.is_some_and(|d| d > 1))
                    .count() as u64;
                side.claimed_total += jobs.len() as u64;
                if let Some(ready) = json_u64(body, "ready") {
                    plan.ready.store(ready, Relaxed);
                }
                if json_u64(body, "count") != Some(jobs.len() as u64) {
                    side.unreadable += 1;
                    side.claim.first_error.get_or_insert_with(|| {
                        format!(
                            "a claim answer the scanner misread: {}",
                            String::from_utf8_lossy(&body[..body.len().min(300)])
                        )
                    });
                }
                if counted(done) {
                    side.claim.response(status, done - sent, jobs.len() as u64);
                    side.claim
                        .server_perf(json_number(body, "server_total_ms"), None);
                }
                jobs
            }
            Ok(status) => {
                let done = Instant::now();
                side.claim
                    .error_response(status, done - sent, client.body());
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => {
                side.claim.io_error(&e);
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if jobs.is_empty() {
            side.empty_claims += 1;
            glommio::timer::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let req = ack_request(&target, &ack_path, &node, &jobs);
        let ack_sent = Instant::now();
        match client.send(&req).await {
            Ok(status) if (200..300).contains(&status) => {
                let done = Instant::now();
                let body = client.body();
                let (acked, skipped) = scan_ack(body);
                let acked = acked.unwrap_or(0);
                side.acked_total += acked;
                side.ack_skipped += skipped.len() as u64;
                if counted(done) {
                    side.ack.response(status, done - ack_sent, acked);
                    side.ack.server_perf(
                        json_number(body, "server_total_ms"),
                        json_number(body, "fsync_ms"),
                    );
                    record_us(&mut side.pair, (done - sent).as_micros() as u64);
                    side.pairs += 1;
                    side.jobs += acked;
                }
            }
            Ok(status) => {
                let done = Instant::now();
                side.ack
                    .error_response(status, done - ack_sent, client.body());
            }
            Err(e) => side.ack.io_error(&e),
        }
    }
    plan.running.fetch_sub(1, Relaxed);
    side
}

/// The feeder of `--refill`: appends a batch whenever the last claim saw fewer than the
/// low-water mark ready, until the last worker stops.
async fn feed(target: Target, plan: Arc<Plan>) -> Fed {
    let mut fed = Fed::default();
    let Some(low) = plan.refill else {
        return fed;
    };
    let mut client = Client::new(target.clone());
    let path = format!("{}?return_seqs=false", topic_path(&plan.topic));
    let mut next_id = 0u64;
    while plan.running.load(Relaxed) > 0 {
        if plan.ready.load(Relaxed) >= low {
            glommio::timer::sleep(Duration::from_micros(500)).await;
            continue;
        }
        let body = append_body(PREFILL_BATCH, plan.record_bytes, next_id);
        next_id += PREFILL_BATCH as u64;
        let req = target.request("POST", &path, Some(&body));
        fed.requests += 1;
        match client.send(&req).await {
            Ok(status) if (200..300).contains(&status) => {
                fed.jobs += PREFILL_BATCH as u64;
                // Counted as ready until a claim answer says otherwise.
                plan.ready.fetch_add(PREFILL_BATCH as u64, Relaxed);
            }
            Ok(status) => {
                fed.errors += 1;
                let b = client.body();
                let text = String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned();
                fed.first_error
                    .get_or_insert(format!("refill append: HTTP {status}: {text}"));
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => {
                fed.errors += 1;
                fed.first_error.get_or_insert(format!("refill append: {e}"));
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    fed
}
