//! Queue crash test (issue 6, SPEC §7 "A restart never loses a job or resurrects an acked
//! one"): worker threads claim, ack and (randomly, some with a delay) nack jobs of an `fsync`
//! queue while the server is killed with SIGKILL again and again and restarted. At the end
//! every job was acked, none was lost, no seq was acknowledged as acked twice, and — with
//! `leases_durable: true` — no job's delivery count ever went backwards across restarts.
//!
//! The number of jobs is `QUEUE_CRASH_JOBS` (default 20000; the full run is
//! `QUEUE_CRASH_JOBS=100000 cargo test --test queue_crash`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::queue::*;
use common::*;
use serde_json::{json, Value};

const WORKERS: u64 = 4;
const KILLS: usize = 5;
const LEASE_MS: u64 = 3000;

fn jobs_wanted() -> u64 {
    std::env::var("QUEUE_CRASH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

struct Shared {
    port: u16,
    queue: String,
    stop: AtomicBool,
    /// Orders observations across workers (taken right after a claim response arrives).
    stamp: AtomicU64,
    acked: AtomicU64,
}

#[derive(Default)]
struct WorkerLog {
    /// Seqs that a 200 ack listed as acked (requested and not skipped).
    acked: Vec<u64>,
    /// Seqs of acks whose response never came (the server died): maybe applied.
    uncertain: BTreeSet<u64>,
    /// (stamp, seq, deliveries) of every claimed job.
    deliveries: Vec<(u64, u64, u64)>,
    /// (seq, data.job) of every claimed job.
    data: Vec<(u64, u64)>,
    claims: u64,
    nacks: u64,
    io_errors: u64,
}

/// One request; `None` when the connection failed (it is dropped, to reconnect next time).
fn call(conn: &mut Option<Client>, port: u16, path: &str, body: &Value) -> Option<(u16, Value)> {
    if conn.is_none() {
        let c = Client::try_connect(port).ok()?;
        c.set_read_timeout(Duration::from_secs(20));
        *conn = Some(c);
    }
    let bytes = serde_json::to_vec(body).unwrap();
    let r = conn.as_mut().unwrap().try_request(
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(&bytes),
    );
    match r {
        Ok(r) => Some((r.status, r.json())),
        Err(_) => {
            *conn = None;
            None
        }
    }
}

fn retryable(st: u16) -> bool {
    st == 429 || st == 503
}

fn worker(sh: Arc<Shared>, w: u64) -> WorkerLog {
    let node = format!("w{w}");
    let mut log = WorkerLog::default();
    let mut rng = Rng::new(1000 + w);
    let mut conn: Option<Client> = None;
    let claim_path = format!("/v0/topics/{}/claim", sh.queue);
    let ack_path = format!("/v0/topics/{}/ack", sh.queue);
    let nack_path = format!("/v0/topics/{}/nack", sh.queue);
    while !sh.stop.load(Ordering::SeqCst) {
        let max = 1 + rng.below(16);
        let body = json!({"node": node, "max": max, "lease_ms": LEASE_MS, "wait_ms": 200});
        let Some((st, v)) = call(&mut conn, sh.port, &claim_path, &body) else {
            log.io_errors += 1;
            std::thread::sleep(Duration::from_millis(30));
            continue;
        };
        if retryable(st) {
            std::thread::sleep(Duration::from_millis(30));
            continue;
        }
        assert_eq!(st, 200, "claim: {v}");
        let stamp = sh.stamp.fetch_add(1, Ordering::SeqCst);
        log.claims += 1;
        let jobs = entries(&v);
        if jobs.is_empty() {
            continue;
        }
        assert!(jobs.len() as u64 <= max, "claim over max {max}: {v}");
        let mut to_ack: Vec<(u64, String)> = Vec::new();
        let mut to_nack: Vec<(u64, String, u64)> = Vec::new();
        for j in &jobs {
            let seq = j["$seq"].as_u64().expect("$seq");
            let d = j["deliveries"].as_u64().expect("deliveries");
            let id = j["lease_id"].as_str().expect("lease_id").to_string();
            log.deliveries.push((stamp, seq, d));
            log.data
                .push((seq, j["data"]["job"].as_u64().expect("data.job")));
            match rng.below(100) {
                0..=5 => to_nack.push((seq, id, 0)),
                6..=9 => to_nack.push((seq, id, 1 + rng.below(200))),
                _ => to_ack.push((seq, id)),
            }
        }
        // Nacks: one try each; a lost nack only means the lease runs out instead.
        for (seq, id, delay) in to_nack {
            let body = json!({"node": node, "seqs": [seq], "lease_ids": [id], "delay_ms": delay});
            match call(&mut conn, sh.port, &nack_path, &body) {
                Some((200, v)) => log.nacks += v["nacked"].as_u64().unwrap_or(0),
                Some((st, v)) => assert!(retryable(st), "nack: {st} {v}"),
                None => log.io_errors += 1,
            }
        }
        if to_ack.is_empty() {
            continue;
        }
        // Acks: retried across restarts until answered (a durable lease still holds then).
        let seqs: Vec<u64> = to_ack.iter().map(|(s, _)| *s).collect();
        let ids: Vec<&String> = to_ack.iter().map(|(_, i)| i).collect();
        let body = json!({"node": node, "seqs": seqs, "lease_ids": ids});
        let mut lost_response = false;
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            match call(&mut conn, sh.port, &ack_path, &body) {
                Some((200, v)) => {
                    check_act_response(&sh.queue, "ack", &v);
                    let skipped: BTreeSet<u64> = skipped(&v).into_iter().collect();
                    let mut n = 0;
                    for s in &seqs {
                        if skipped.contains(s) {
                            if lost_response {
                                log.uncertain.insert(*s);
                            }
                        } else {
                            log.acked.push(*s);
                            log.uncertain.remove(s);
                            n += 1;
                        }
                    }
                    assert_eq!(v["acked"], json!(n), "acked count vs skipped list: {v}");
                    sh.acked.fetch_add(n, Ordering::SeqCst);
                    break;
                }
                Some((st, v)) => assert!(retryable(st), "ack: {st} {v}"),
                None => {
                    log.io_errors += 1;
                    lost_response = true;
                    log.uncertain.extend(seqs.iter().copied());
                }
            }
            if Instant::now() > give_up || sh.stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    log
}

fn queue_crash(leases_durable: bool) {
    let n = jobs_wanted();
    let mut s = Server::start(2);
    let q = "crashq".to_string();
    make_queue(
        &s,
        &q,
        json!({"durability": "fsync", "leases_durable": leases_durable}),
    );
    let mut k = 0;
    while k < n {
        let m = (n - k).min(5000);
        let seqs = append_jobs(&s, &q, k, m);
        assert_eq!(seqs, (k + 1..=k + m).collect::<Vec<u64>>());
        k += m;
    }
    let sh = Arc::new(Shared {
        port: s.port,
        queue: q.clone(),
        stop: AtomicBool::new(false),
        stamp: AtomicU64::new(0),
        acked: AtomicU64::new(0),
    });
    let threads: Vec<_> = (0..WORKERS)
        .map(|w| {
            let sh = sh.clone();
            std::thread::spawn(move || worker(sh, w))
        })
        .collect();

    // Kill -9 and restart every 1-2 s, or earlier when the workers have got through the next
    // 1/(KILLS+1) of the jobs, so that every kill lands while jobs are left on a fast machine.
    let start = Instant::now();
    let mut rng = Rng::new(if leases_durable { 7 } else { 8 });
    let mut kills_under_load = 0;
    for i in 0..KILLS {
        let up = Instant::now();
        let period = Duration::from_millis(1000 + rng.below(1000));
        let mark = n * (i as u64 + 1) / (KILLS as u64 + 1);
        while up.elapsed() < period && sh.acked.load(Ordering::SeqCst) < mark {
            std::thread::sleep(Duration::from_millis(5));
        }
        let before = sh.acked.load(Ordering::SeqCst);
        s.kill9();
        if before < n {
            kills_under_load += 1;
        }
        eprintln!(
            "kill -9 at {:?}: {before} of {n} jobs acked",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50 + rng.below(200)));
        s.spawn_again();
    }
    // Let the workers finish: the queue drains to empty.
    let drained = wait_for(Duration::from_secs(120), || {
        s.client().get(&format!("/v0/topics/{q}")).1["count"] == json!(0)
    });
    sh.stop.store(true, Ordering::SeqCst);
    let logs: Vec<WorkerLog> = threads
        .into_iter()
        .map(|t| t.join().expect("worker panicked"))
        .collect();
    assert!(
        drained.is_some(),
        "queue not empty 120 s after the last restart: {}",
        s.topic(&q)
    );
    eprintln!(
        "drained after {:?}; {kills_under_load} kills under load; claims {}, nacks {}, io errors {}",
        start.elapsed(),
        logs.iter().map(|l| l.claims).sum::<u64>(),
        logs.iter().map(|l| l.nacks).sum::<u64>(),
        logs.iter().map(|l| l.io_errors).sum::<u64>(),
    );
    assert!(
        kills_under_load >= 3,
        "only {kills_under_load} of {KILLS} kills happened while jobs were left; raise \
         QUEUE_CRASH_JOBS so the crash test tests crashes"
    );

    // The queue is empty, for good.
    assert_eq!(state(&s, &q), (0, 0, 0, 0));
    assert!(
        s.diff_all(&q).is_empty(),
        "records left in the drained queue"
    );

    // No seq acknowledged as acked twice; every job acked, or its ack's answer lost.
    let mut acked: BTreeMap<u64, u32> = BTreeMap::new();
    for l in &logs {
        for sq in &l.acked {
            *acked.entry(*sq).or_default() += 1;
        }
    }
    let twice: Vec<(&u64, &u32)> = acked.iter().filter(|(_, c)| **c > 1).take(20).collect();
    assert!(twice.is_empty(), "seqs acked twice (seq, times): {twice:?}");
    let uncertain: BTreeSet<u64> = logs
        .iter()
        .flat_map(|l| l.uncertain.iter().copied())
        .filter(|sq| !acked.contains_key(sq))
        .collect();
    let missing: Vec<u64> = (1..=n)
        .filter(|sq| !acked.contains_key(sq) && !uncertain.contains(sq))
        .take(20)
        .collect();
    assert!(
        missing.is_empty(),
        "jobs gone from the queue without a 200 ack (first 20): {missing:?}"
    );
    // An ack's answer is lost only when the server dies under it.
    assert!(
        uncertain.len() as u64 <= KILLS as u64 * WORKERS * 16,
        "{} jobs acked only by acks without an answer",
        uncertain.len()
    );
    eprintln!(
        "{} jobs acked by a 200, {} by an ack whose answer was lost in a kill",
        acked.len(),
        uncertain.len()
    );
    // Every delivery carried the job's own data.
    for l in &logs {
        for (sq, job) in &l.data {
            assert_eq!(*job + 1, *sq, "seq {sq} delivered job {job}'s data");
        }
    }

    if leases_durable {
        // Delivery counts only grow: observations of one job, in the order they were seen.
        let mut seen: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
        for l in &logs {
            for (stamp, sq, d) in &l.deliveries {
                seen.entry(*sq).or_default().push((*stamp, *d));
            }
        }
        let mut back = Vec::new();
        for (sq, obs) in &mut seen {
            obs.sort_unstable();
            for w in obs.windows(2) {
                if w[1].1 <= w[0].1 {
                    back.push((*sq, obs.iter().map(|o| o.1).collect::<Vec<_>>()));
                    break;
                }
            }
        }
        assert!(
            back.is_empty(),
            "delivery counts went backwards or repeated with leases_durable (seq, counts in \
             order seen; first 20): {:?}",
            &back[..back.len().min(20)]
        );
        let redelivered = seen.values().filter(|o| o.len() > 1).count();
        eprintln!("{redelivered} jobs delivered more than once");
    }

    // And a last restart resurrects nothing.
    s.restart_kill9();
    assert_eq!(state(&s, &q), (0, 0, 0, 0), "acked jobs came back");
    let v = claim(&s, &q, json!({"node": "late", "max": 1000}));
    assert_eq!(v["count"], json!(0), "{v}");
}

#[test]
fn queue_survives_repeated_kill9_with_durable_leases() {
    queue_crash(true);
}

#[test]
fn queue_survives_repeated_kill9_with_volatile_leases() {
    queue_crash(false);
}
