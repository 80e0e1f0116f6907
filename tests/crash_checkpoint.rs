//! Crash safety of the storage lifecycle (issue 4): kill -9 while checkpoints (segment writes,
//! snapshots, WAL and segment removal) and compactions run back to back under load. After
//! every restart: each acknowledged `fsync` record is present with its exact bytes, in order;
//! no seq is reused; each acknowledged delete is still in effect; nothing deleted comes back.
//!
//! The correctness checks run first; whether checkpoints actually happened during the load
//! (a new `snap-*.bin` file) is asserted at the end, so a server without checkpoints fails
//! only that last check.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sse::name_on_shard;
use common::storage::*;
use common::*;
use serde_json::{json, Value};

/// A checkpoint every 20 ms and an 8 KiB hot tail per core: under load the server is
/// checkpointing (and compacting) nearly all the time.
const FLAGS: [&str; 4] = ["--checkpoint-interval-ms", "20", "--hot-tail-bytes", "8192"];

/// The "writer" number of the one record appended to every topic after each restart.
const PROBE_WRITER: u64 = 99;

/// An acknowledged (or, after a restart, observed) record.
#[derive(Clone, Debug)]
struct Ack {
    topic: String,
    seq: u64,
    data: String,
    tag: Option<String>,
}

fn record_data(r: u64, w: u64, i: u64, k: u64) -> String {
    let pad = "p".repeat(((r * 17 + w * 31 + i * 7 + k * 13) % 300) as usize);
    format!(r#"{{"r":{r},"w":{w}, "i":{i},"k":{k},"pad":"{pad}"}}"#)
}

fn parse_data(data: &str) -> (u64, u64, u64, u64) {
    let v: Value = serde_json::from_str(data).expect("stored data is valid JSON");
    let f = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("stored data {data} lacks {k}"))
    };
    (f("r"), f("w"), f("i"), f("k"))
}

fn batch_tag(r: u64, w: u64, i: u64) -> String {
    format!("r{r}-w{w}-i{i:06}")
}

/// Everything established so far: records that must be there, records that must not.
#[derive(Default)]
struct Ledger {
    /// Acknowledged records, and records seen after a restart (they are durable too).
    acked: BTreeMap<(String, u64), Ack>,
    /// Records removed by an acknowledged delete.
    deleted: BTreeSet<(String, u64)>,
    /// Records matched by a delete whose answer never came (the kill): either fate is fine.
    maybe_deleted: BTreeSet<(String, u64)>,
}

impl Ledger {
    /// Records `(topic, seq)` of `topic` that are live in the ledger and whose tag passes `pred`.
    fn live_matching(&self, topic: &str, pred: impl Fn(&str) -> bool) -> Vec<u64> {
        self.acked
            .values()
            .filter(|a| a.topic == topic)
            .filter(|a| a.tag.as_deref().is_some_and(&pred))
            .filter(|a| !self.deleted.contains(&(a.topic.clone(), a.seq)))
            .map(|a| a.seq)
            .collect()
    }
}

/// Writer `w` of round `r`: batches of 1-3 tagged records alternating between `topics.0` (even
/// batches) and `topics.1` (odd), on one keep-alive connection, until the connection fails.
fn writer(
    port: u16,
    r: u64,
    w: u64,
    topics: (String, String),
    pause: Duration,
    acks: Arc<Mutex<Vec<Ack>>>,
    total: Arc<AtomicU64>,
) {
    let Ok(mut c) = Client::try_connect(port) else {
        return;
    };
    c.set_read_timeout(Duration::from_secs(15));
    for i in 0.. {
        let topic = if i % 2 == 0 { &topics.0 } else { &topics.1 };
        let n = 1 + i % 3;
        let tag = batch_tag(r, w, i);
        let datas: Vec<String> = (0..n).map(|k| record_data(r, w, i, k)).collect();
        let recs: Vec<String> = datas
            .iter()
            .map(|d| format!(r#"{{"data":{d},"tag":"{tag}"}}"#))
            .collect();
        let body = format!(r#"{{"records":[{}]}}"#, recs.join(","));
        let resp = match c.try_request(
            "POST",
            &format!("/v0/topics/{topic}"),
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        ) {
            Ok(resp) => resp,
            Err(_) => return,
        };
        if resp.status == 429 {
            // Shed (SPEC §9): not written; this batch number is simply skipped.
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if resp.status != 200 {
            assert!(
                resp.status >= 500,
                "write failed: {} {}",
                resp.status,
                resp.text()
            );
            return;
        }
        let v = resp.json();
        let seqs = v["seqs"].as_array().expect("seqs");
        assert_eq!(seqs.len(), n as usize, "{v}");
        let mut list = acks.lock().unwrap();
        for (d, seq) in datas.into_iter().zip(seqs) {
            list.push(Ack {
                topic: topic.clone(),
                seq: seq.as_u64().unwrap(),
                data: d,
                tag: Some(tag.clone()),
            });
        }
        drop(list);
        total.fetch_add(n, Ordering::Relaxed);
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

/// One delete sent by the deleter: what it was expected to remove and whether it was answered.
struct DeleteDone {
    topic: String,
    seqs: Vec<u64>,
    acked: bool,
}

/// Deletes acknowledged batches of round `r` while the writers run: by exact tag, or by a Glob
/// over 10 consecutive batches of one writer once all of them are acknowledged. Each answer's
/// `deleted` must equal the number of acknowledged records it matches.
fn deleter(
    port: u16,
    r: u64,
    seed: u64,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
) -> Vec<DeleteDone> {
    let mut rng = Rng::new(seed);
    let mut done: Vec<DeleteDone> = Vec::new();
    let mut gone: BTreeSet<(String, u64)> = BTreeSet::new();
    let Ok(mut c) = Client::try_connect(port) else {
        return done;
    };
    c.set_read_timeout(Duration::from_secs(15));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(rng.range(10, 40)));
        let snapshot: Vec<Ack> = acks.lock().unwrap().clone();
        let live: Vec<&Ack> = snapshot
            .iter()
            .filter(|a| !gone.contains(&(a.topic.clone(), a.seq)))
            .collect();
        if live.len() < 10 {
            continue;
        }
        let pick = live[rng.range(0, live.len() as u64 - 1) as usize];
        let tag = pick.tag.clone().unwrap();
        let (body, prefix): (Value, Option<String>) = if rng.chance(1, 4) {
            // Glob over batches i0..i0+9 of this writer, if all are done.
            let (_, w, i, _) = parse_data(&pick.data);
            let i0 = i / 10 * 10;
            let writer_prefix = format!("r{r}-w{w}-i");
            let max_i = snapshot
                .iter()
                .filter_map(|a| a.tag.as_deref()?.strip_prefix(writer_prefix.as_str()))
                .map(|i| i.parse::<u64>().unwrap())
                .max()
                .unwrap();
            if max_i < i0 + 9 {
                continue;
            }
            let prefix = format!("r{r}-w{w}-i{:05}", i0 / 10);
            (
                json!({"match": ["tag", "Glob", format!("{prefix}*")]}),
                Some(prefix),
            )
        } else {
            (json!({"match": ["tag", "Eq", tag]}), None)
        };
        let topic = pick.topic.clone();
        let expected: Vec<u64> = snapshot
            .iter()
            .filter(|a| a.topic == topic && !gone.contains(&(a.topic.clone(), a.seq)))
            .filter(|a| {
                let t = a.tag.as_deref().unwrap();
                match &prefix {
                    Some(p) => t.starts_with(p.as_str()),
                    None => t == tag,
                }
            })
            .map(|a| a.seq)
            .collect();
        let resp = c.try_request(
            "POST",
            &format!("/v0/topics/{topic}/delete"),
            &[("Content-Type", "application/json")],
            Some(&serde_json::to_vec(&body).unwrap()),
        );
        match resp {
            Ok(resp) if resp.status == 200 => {
                let v = resp.json();
                assert_eq!(
                    v["deleted"],
                    json!(expected.len()),
                    "delete {topic} {body}: expected the {} acknowledged records {expected:?}: {v}",
                    expected.len()
                );
                for s in &expected {
                    gone.insert((topic.clone(), *s));
                }
                done.push(DeleteDone {
                    topic,
                    seqs: expected,
                    acked: true,
                });
            }
            Ok(resp) if resp.status == 429 => {}
            Ok(resp) => {
                assert!(
                    resp.status >= 500,
                    "delete {topic} {body}: {} {}",
                    resp.status,
                    resp.text()
                );
                done.push(DeleteDone {
                    topic,
                    seqs: expected,
                    acked: false,
                });
                return done;
            }
            Err(_) => {
                done.push(DeleteDone {
                    topic,
                    seqs: expected,
                    acked: false,
                });
                return done;
            }
        }
    }
    done
}

/// After a restart: checks every topic against the ledger, then appends one probe record to
/// each (its seq must be above every acknowledged one) and adds it and every record observed
/// to the ledger.
fn verify(s: &Server, ledger: &mut Ledger, topics: &[String], round: u64, ctx: &str) {
    for t in topics {
        let ctx = format!("{ctx}: topic {t}");
        let acked: Vec<&Ack> = ledger.acked.values().filter(|a| &a.topic == t).collect();
        let max_acked = acked.iter().map(|a| a.seq).max().unwrap_or(0);
        let state = s.topic(t);
        let head = state["head_seq"].as_u64().unwrap();
        assert!(
            head >= max_acked,
            "{ctx}: head_seq {head} went below acknowledged seq {max_acked}"
        );
        let (recs, page) = read_pages(s, t, 0, &json!({}));
        assert!(
            page["tombstone"].is_null(),
            "{ctx}: no record of an fsync topic may be lost: {page}"
        );
        let mut present: BTreeMap<u64, String> = BTreeMap::new();
        let mut last_key: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
        for r in &recs {
            let seq: u64 = r["$seq"].parse().unwrap();
            assert!(seq <= head, "{ctx}: record {seq} above head {head}");
            let data = r["data"].clone();
            let (rr, w, i, k) = parse_data(&data);
            assert_eq!(
                data,
                record_data(rr, w, i, k),
                "{ctx}: record {seq} corrupted"
            );
            if let Some(prev) = last_key.insert(w, (rr, i, k)) {
                assert!(
                    prev < (rr, i, k),
                    "{ctx}: writer {w}'s records out of order at seq {seq}: {prev:?} then {:?}",
                    (rr, i, k)
                );
            }
            let key = (t.clone(), seq);
            assert!(
                !ledger.deleted.contains(&key),
                "{ctx}: seq {seq} was deleted (acknowledged) and came back: {data}"
            );
            let want_tag = match ledger.acked.get(&key) {
                Some(a) => a.tag.clone(),
                None => (w != PROBE_WRITER).then(|| batch_tag(rr, w, i)),
            };
            assert_eq!(
                r.get("$tag"),
                want_tag.map(|t| format!("\"{t}\"")).as_ref(),
                "{ctx}: record {seq}: $tag"
            );
            present.insert(seq, data);
        }
        let mut lost = Vec::new();
        for a in &acked {
            let key = (t.clone(), a.seq);
            if ledger.deleted.contains(&key) || ledger.maybe_deleted.contains(&key) {
                continue;
            }
            match present.get(&a.seq) {
                Some(d) => assert_eq!(d, &a.data, "{ctx}: seq {} holds other data", a.seq),
                None => lost.push(a.seq),
            }
        }
        assert!(
            lost.is_empty(),
            "{ctx}: {} acknowledged records lost (first {:?}); head {head}, {} present",
            lost.len(),
            &lost[..lost.len().min(10)],
            present.len()
        );
        assert_eq!(
            state["count"],
            json!(present.len()),
            "{ctx}: count vs records read: {state}"
        );
        let earliest = present.keys().next().copied().unwrap_or(head + 1);
        assert_eq!(state["earliest_seq"], json!(earliest), "{ctx}: {state}");

        // Everything readable now is durable: it must stay (unless deleted later).
        for r in &recs {
            let seq: u64 = r["$seq"].parse().unwrap();
            ledger.acked.entry((t.clone(), seq)).or_insert_with(|| Ack {
                topic: t.clone(),
                seq,
                data: r["data"].clone(),
                tag: r.get("$tag").map(|t| serde_json::from_str(t).unwrap()),
            });
        }
        // Seqs are never reused: the next append goes above everything acknowledged.
        let data = record_data(round, PROBE_WRITER, 0, 0);
        let resp = s.post_raw(
            &format!("/v0/topics/{t}"),
            format!(r#"{{"records":[{{"data":{data}}}]}}"#).as_bytes(),
        );
        assert_eq!(resp.status, 200, "{ctx}: probe append: {}", resp.text());
        let seq = resp.json()["seqs"][0].as_u64().unwrap();
        assert!(
            seq > max_acked && seq == head + 1,
            "{ctx}: probe got seq {seq}; head was {head}, max acknowledged {max_acked}"
        );
        ledger.acked.insert(
            (t.clone(), seq),
            Ack {
                topic: t.clone(),
                seq,
                data,
                tag: None,
            },
        );
    }
}

fn create_fsync(s: &Server, topics: &[String]) {
    for t in topics {
        let (st, v) = s.put(&format!("/v0/topics/{t}"), &json!({"durability": "fsync"}));
        assert_eq!(st, 201, "{v}");
    }
}

/// Snapshot files that appeared between two listings.
fn new_snaps(before: &BTreeSet<String>, after: &BTreeSet<String>) -> usize {
    after.difference(before).count()
}

#[test]
fn kill9_during_checkpoints_loses_no_ack_and_no_delete() {
    const WRITERS: u64 = 3;
    const ROUNDS: u64 = 5;
    let mut s = Server::start_with(2, &FLAGS);
    let mut topics: Vec<String> = (0..WRITERS)
        .map(|w| name_on_shard(&format!("own{w}-"), (w % 2) as usize, 2))
        .collect();
    topics.push(name_on_shard("shared-", 1, 2));
    create_fsync(&s, &topics);
    let mut rng = Rng::from_time("kill9_during_checkpoints");
    let mut ledger = Ledger::default();
    let mut snaps_per_round = Vec::new();

    for round in 0..ROUNDS {
        let snaps_before = snapshot_files(&s);
        let acks = Arc::new(Mutex::new(Vec::new()));
        let total = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (port, acks, total) = (s.port, acks.clone(), total.clone());
                let pair = (topics[w as usize].clone(), topics[WRITERS as usize].clone());
                std::thread::spawn(move || {
                    writer(port, round, w, pair, Duration::ZERO, acks, total)
                })
            })
            .collect();
        let del = {
            let (port, acks, stop) = (s.port, acks.clone(), stop.clone());
            let seed = rng.next_u64();
            std::thread::spawn(move || deleter(port, round, seed, acks, stop))
        };
        let load = Duration::from_millis(rng.range(700, 1600));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5)
            && (start.elapsed() < load || total.load(Ordering::Relaxed) < 100)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let snaps_at_kill = snapshot_files(&s);
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        for h in writers {
            h.join().expect("writer panicked");
        }
        let deletes = del.join().expect("deleter panicked");
        let acked = std::mem::take(&mut *acks.lock().unwrap());
        assert!(
            acked.len() > 20,
            "round {round}: too few writes acknowledged before the kill: {}",
            acked.len()
        );
        let (n_del, n_maybe) = (
            deletes.iter().filter(|d| d.acked).count(),
            deletes.iter().filter(|d| !d.acked).count(),
        );
        eprintln!(
            "round {round}: killed after {:?}: {} records and {n_del} deletes acknowledged \
             ({n_maybe} unanswered), {} new snapshot files",
            start.elapsed(),
            acked.len(),
            new_snaps(&snaps_before, &snaps_at_kill)
        );
        snaps_per_round.push(new_snaps(&snaps_before, &snaps_at_kill));
        for a in acked {
            ledger.acked.insert((a.topic.clone(), a.seq), a);
        }
        for d in deletes {
            for seq in d.seqs {
                if d.acked {
                    ledger.deleted.insert((d.topic.clone(), seq));
                } else {
                    ledger.maybe_deleted.insert((d.topic.clone(), seq));
                }
            }
        }
        s.spawn_again();
        verify(
            &s,
            &mut ledger,
            &topics,
            round,
            &format!("after kill -9 #{round}"),
        );
    }
    // One graceful restart at the end: the same state.
    s.restart_graceful();
    verify(
        &s,
        &mut ledger,
        &topics,
        ROUNDS,
        "after the final graceful restart",
    );
    assert!(
        ledger.deleted.len() > 20,
        "the deleter got too few deletes acknowledged: {}",
        ledger.deleted.len()
    );
    assert!(
        snaps_per_round.iter().all(|n| *n > 0),
        "checkpoints did not run during the load (new snapshot files per round: \
         {snaps_per_round:?}; --checkpoint-interval-ms 20), so this test exercised no \
         checkpoint; data dir: {:#?}",
        listing(&s)
    );
}

#[test]
fn kill9_during_compaction_never_resurrects_deleted_records() {
    const W: u64 = 60;
    let mut s = Server::start_with(2, &FLAGS);
    let big = name_on_shard("big-", 0, 2);
    assert_eq!(shards_of(&s, &[&big]), vec![0]);
    let side = name_on_shard("side-", 1, 2);
    let topics = vec![big.clone(), side.clone()];
    create_fsync(&s, &topics);
    let mut rng = Rng::from_time("kill9_during_compaction");
    let mut ledger = Ledger::default();

    // 4,000 records in 8 interleaved tag groups, which segments will hold.
    let mut c = s.client();
    for b in 0..40u64 {
        let mut recs = Vec::new();
        let mut datas = Vec::new();
        for j in 0..100u64 {
            let i = b * 100 + j;
            let data = record_data(0, 50, i, 0);
            let tag = format!("g{}-{i:05}", i % 8);
            recs.push(format!(r#"{{"data":{data},"tag":"{tag}"}}"#));
            datas.push((data, tag));
        }
        let resp = c.post_raw(
            &format!("/v0/topics/{big}"),
            format!(r#"{{"records":[{}]}}"#, recs.join(",")).as_bytes(),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        let first = resp.json()["first_seq"].as_u64().unwrap();
        for (k, (data, tag)) in datas.into_iter().enumerate() {
            let seq = first + k as u64;
            ledger.acked.insert(
                (big.clone(), seq),
                Ack {
                    topic: big.clone(),
                    seq,
                    data,
                    tag: Some(tag),
                },
            );
        }
    }
    drop(c);
    // Let checkpoints move them into segments (checked at the end, not waited for here).
    let segmented = try_wait_for_checkpoint_on(&s, &[0], Duration::from_secs(3));

    let mut snaps_seen = 0;
    for round in 0..6u64 {
        // Acknowledged deletes, leaving dead space throughout the segments.
        let bodies: Vec<Value> = match round {
            0 => (0..4)
                .map(|g| json!({"match": ["tag", "Glob", format!("g{g}-*")]}))
                .collect(),
            1 => vec![json!({"match": ["tag", "Glob", "g4-*"]})],
            2 => {
                let head = s.topic(&big)["head_seq"].as_u64().unwrap();
                vec![json!({"before_seq": head / 2})]
            }
            3 => vec![
                json!({"match": ["tag", "Glob", "g5-*"]}),
                json!({"match": ["tag", "Glob", format!("r1-w{W}-*")]}),
            ],
            4 => vec![json!({"match": ["tag", "Glob", format!("r2-w{W}-*")]})],
            _ => vec![json!({"match": ["tag", "Glob", "g6-*"]})],
        };
        for body in bodies {
            let expected: Vec<u64> = match body["match"][2].as_str() {
                Some(glob) => {
                    let prefix = glob.trim_end_matches('*').to_string();
                    ledger.live_matching(&big, |t| t.starts_with(prefix.as_str()))
                }
                None => {
                    let before = body["before_seq"].as_u64().unwrap();
                    ledger
                        .acked
                        .values()
                        .filter(|a| a.topic == big && a.seq < before)
                        .filter(|a| !ledger.deleted.contains(&(big.clone(), a.seq)))
                        .map(|a| a.seq)
                        .collect()
                }
            };
            let (st, v) = s.json_post(&format!("/v0/topics/{big}/delete"), &body);
            assert_eq!(st, 200, "round {round}: delete {body}: {v}");
            assert_eq!(
                v["deleted"],
                json!(expected.len()),
                "round {round}: delete {body}: {v}"
            );
            for seq in expected {
                ledger.deleted.insert((big.clone(), seq));
            }
        }
        // A light write load while the checkpoints right after the deletes compact.
        let before = snapshot_files(&s);
        let acks = Arc::new(Mutex::new(Vec::new()));
        let total = Arc::new(AtomicU64::new(0));
        let h = {
            let (port, acks, total) = (s.port, acks.clone(), total.clone());
            let pair = (big.clone(), side.clone());
            std::thread::spawn(move || {
                writer(
                    port,
                    round + 1,
                    W,
                    pair,
                    Duration::from_millis(3),
                    acks,
                    total,
                )
            })
        };
        std::thread::sleep(Duration::from_millis(rng.range(0, 150)));
        snaps_seen += new_snaps(&before, &snapshot_files(&s));
        s.kill9();
        h.join().expect("writer panicked");
        for a in std::mem::take(&mut *acks.lock().unwrap()) {
            ledger.acked.insert((a.topic.clone(), a.seq), a);
        }
        s.spawn_again();
        verify(
            &s,
            &mut ledger,
            &topics,
            round + 1,
            &format!("round {round}: deletes, then kill -9"),
        );
    }
    s.restart_graceful();
    verify(
        &s,
        &mut ledger,
        &topics,
        7,
        "after a final graceful restart",
    );
    let live = ledger
        .acked
        .keys()
        .filter(|k| k.0 == big && !ledger.deleted.contains(k))
        .count();
    eprintln!(
        "{} records of {big} deleted, {live} left",
        ledger.deleted.len()
    );
    if let Err(e) = segmented {
        panic!("the 4,000 records never reached a checkpoint before the deletes: {e}");
    }
    assert!(
        snaps_seen > 0,
        "no snapshot was written in any round between the deletes and the kill, so no \
         compaction was interrupted; data dir: {:#?}",
        listing(&s)
    );
}
