//! Storage lifecycle (issue 4; SPEC §2-§5): with a tiny hot tail (`--hot-tail-bytes`) and
//! frequent checkpoints (`--checkpoint-interval-ms`), records move out of memory into segment
//! files, snapshots replace the WAL, and compaction rewrites segments with dead space. None of
//! it may be visible over HTTP: reads return the exact bytes, seqs, tags, nodes and `$ts` that
//! were written; deletes, caps, TTL, topic re-creation, idempotency keys, router cursors and
//! watch sessions behave as before, also after kill -9 and graceful restarts.
//!
//! Every test keeps a model of what a user must see and compares whole topics against it.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::model::*;
use common::sse;
use common::storage::*;
use common::*;
use serde_json::{json, Value};

/// A payload budget of 4 KiB per core and a checkpoint every 100 ms: almost every record lives
/// in a segment file within a fraction of a second of being written.
const FLAGS: [&str; 4] = [
    "--hot-tail-bytes",
    "4096",
    "--checkpoint-interval-ms",
    "100",
];

// ---- 1, 2: records in segments, across restarts ----------------------------------------------

fn lifecycle_server(m: &mut Model, topics: &[String]) -> Server {
    let s = Server::start_with(2, &FLAGS);
    for (k, t) in topics.iter().enumerate() {
        // One `disk` topic; the rest `fsync`.
        let durability = if k == 0 { "disk" } else { "fsync" };
        create(&s, m, t, json!({ "durability": durability }));
    }
    s
}

#[test]
fn records_survive_being_moved_to_segments() {
    let mut m = Model::default();
    let topics = spread("seg", 5);
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let s = lifecycle_server(&mut m, &topics);
    let mut rng = Rng::from_time("records_survive_being_moved_to_segments");
    populate(&s, &mut m, &names, &mut rng, 5000);
    wait_for_checkpoint(&s);
    assert_has_segments(&s, "after 5,000 records and a checkpoint");
    verify(&s, &mut m, "after a checkpoint");
    // Reads and checkpoints interleave: read again after another checkpoint.
    let mut c = s.client();
    append(&mut c, &mut m, names[1], &[gen_rec(&mut rng, "x", 1)], None);
    append(&mut c, &mut m, names[2], &[gen_rec(&mut rng, "x", 2)], None);
    wait_for_checkpoint(&s);
    verify(&s, &mut m, "after a second checkpoint");
}

#[test]
fn segmented_state_survives_kill9_and_graceful_restarts() {
    let mut m = Model::default();
    let topics = spread("rs", 4);
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut s = lifecycle_server(&mut m, &topics);
    let mut rng = Rng::from_time("segmented_state_survives_kill9_and_graceful_restarts");
    populate(&s, &mut m, &names, &mut rng, 3000);
    wait_for_checkpoint(&s);
    verify(&s, &mut m, "before any restart");

    s.restart_kill9();
    adopt_disk_heads(&s, &mut m);
    verify(&s, &mut m, "after kill -9");
    s.restart_graceful();
    verify(&s, &mut m, "after kill -9 and a graceful restart");

    // A second round: the snapshot loaded at start-up is extended, checkpointed, restarted.
    populate(&s, &mut m, &names, &mut rng, 1500);
    wait_for_checkpoint(&s);
    verify(
        &s,
        &mut m,
        "after a second round of appends and a checkpoint",
    );
    s.restart_kill9();
    adopt_disk_heads(&s, &mut m);
    verify(&s, &mut m, "after the second round and kill -9");
    // New seqs continue above the old head on every topic (checked by `append`).
    let mut c = s.client();
    for t in &names {
        append(&mut c, &mut m, t, &[gen_rec(&mut rng, t, 0)], None);
    }
    s.restart_graceful();
    verify(&s, &mut m, "after the second round and a graceful restart");
}

// ---- 3: deletes ---------------------------------------------------------------------------------

#[test]
fn deletes_stay_deleted_across_checkpoint_compaction_and_restart() {
    let mut m = Model::default();
    let topics = spread("del", 2);
    let (a, b) = (topics[0].as_str(), topics[1].as_str());
    let mut s = Server::start_with(2, &FLAGS);
    create(&s, &mut m, a, json!({"durability": "fsync"}));
    create(&s, &mut m, b, json!({"durability": "fsync"}));
    let mut rng = Rng::from_time("deletes_stay_deleted");
    populate(&s, &mut m, &[a], &mut rng, 2000);
    populate(&s, &mut m, &[b], &mut rng, 2000);
    wait_for_checkpoint(&s);
    assert_has_segments(&s, "before the deletes");

    // Deletes of records that live in segments: Eq, Glob, bare string, before_seq, AND.
    assert!(delete(&s, &mut m, a, json!({"match": ["tag", "Eq", "user-3"]})) > 0);
    assert!(delete(&s, &mut m, a, json!({"match": ["tag", "Glob", "tmp-1*"]})) > 0);
    assert!(delete(&s, &mut m, a, json!({"before_seq": 200})) > 0);
    assert!(
        delete(
            &s,
            &mut m,
            a,
            json!({"before_seq": 900, "match": ["tag", "Glob", "order-*"]})
        ) > 0
    );
    assert!(delete(&s, &mut m, b, json!({"match": ["tag", "Glob", "user-*"]})) > 0);
    assert!(delete(&s, &mut m, b, json!({"match": "order-2-x"})) > 0);
    assert!(delete(&s, &mut m, b, json!({"before_seq": 100})) > 0);
    verify(&s, &mut m, "right after the deletes");

    // More writes, so checkpoints keep coming; they compact the segments with dead space.
    populate(&s, &mut m, &[a, b], &mut rng, 300);
    wait_for_checkpoint(&s);
    populate(&s, &mut m, &[a, b], &mut rng, 50);
    wait_for_checkpoint(&s);
    verify(&s, &mut m, "after checkpoints following the deletes");

    s.restart_kill9();
    verify(&s, &mut m, "deletes, then kill -9");

    // Deletes of records loaded from a snapshot / segments at start-up.
    assert!(delete(&s, &mut m, a, json!({"match": ["tag", "Glob", "tmp-*"]})) > 0);
    let n = m.tm(b).recs.len();
    let mid = m.tm(b).recs.keys().nth(n / 2).copied().unwrap();
    assert!(delete(&s, &mut m, b, json!({"before_seq": mid})) > 0);
    verify(&s, &mut m, "deletes after a restart");
    populate(&s, &mut m, &[a, b], &mut rng, 50);
    wait_for_checkpoint(&s);
    s.restart_graceful();
    verify(
        &s,
        &mut m,
        "deletes after a restart, checkpoint, graceful restart",
    );
    s.restart_kill9();
    verify(&s, &mut m, "and one more kill -9");
}

#[test]
fn compaction_reclaims_the_space_of_deleted_records() {
    let mut m = Model::default();
    let s = Server::start_with(1, &FLAGS);
    create(&s, &mut m, "comp", json!({"durability": "fsync"}));
    let mut c = s.client();
    for b in 0..30u64 {
        let recs: Vec<NewRec> = (0..100u64)
            .map(|k| NewRec {
                data: format!(r#"{{"b":{b},"k":{k},"pad":"{}"}}"#, "z".repeat(500)),
                meta: None,
                tag: Some(format!("g{}", k % 10)),
                node: None,
            })
            .collect();
        append(&mut c, &mut m, "comp", &recs, None);
    }
    wait_for_checkpoint(&s);
    append(
        &mut c,
        &mut m,
        "comp",
        &[gen_rec(&mut Rng::new(1), "comp", 0)],
        None,
    );
    wait_for_checkpoint(&s);
    assert_has_segments(&s, "after 3,000 records of ~520 bytes");
    let full = segment_allocated_bytes(&s);

    // Delete 90% of the records, scattered over every segment (tags g1..g9 of g0..g9).
    for g in 1..10 {
        let n = delete(&s, &mut m, "comp", json!({"match": format!("g{g}")}));
        assert_eq!(n, 300, "g{g}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rng = Rng::new(7);
    loop {
        let now = segment_allocated_bytes(&s);
        if now * 2 <= full {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "segment files still occupy {now} B on disk 10 s after deleting 90% of the records \
             they held ({full} B; compaction should rewrite segments with dead space): {:?}",
            segment_files(&s)
        );
        // Keep something changing so checkpoints keep running.
        append(
            &mut c,
            &mut m,
            "comp",
            &[gen_rec(&mut rng, "comp", 1)],
            None,
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    verify(&s, &mut m, "after compaction");
}

// ---- 4: retention ---------------------------------------------------------------------------

fn plain(i: u64, size: usize) -> NewRec {
    let head = format!(r#"{{"i":{i},"p":""#);
    let pad = size - head.len() - 2;
    NewRec {
        data: format!(r#"{head}{}"}}"#, "q".repeat(pad)),
        meta: None,
        tag: None,
        node: None,
    }
}

fn append_plain(s: &Server, m: &mut Model, topic: &str, n: u64, size: usize) {
    let mut c = s.client();
    let base = m.tm(topic).head;
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let recs: Vec<NewRec> = chunk.iter().map(|k| plain(base + k, size)).collect();
        append(&mut c, m, topic, &recs, None);
    }
}

/// A PUT that changes a topic's config; the model takes the new caps and evicts.
fn put_caps(s: &Server, m: &mut Model, topic: &str, body: Value) {
    let (st, v) = s.put(&format!("/v0/topics/{topic}"), &body);
    assert_eq!(st, 200, "PUT {topic} {body}: {v}");
    let tm = m.tm(topic);
    if let Some(c) = body["cap_records"].as_u64() {
        tm.cap_records = c;
    }
    if let Some(c) = body["cap_bytes"].as_u64() {
        tm.cap_bytes = c;
    }
    tm.config = Some(v["config"].clone());
    tm.enforce_caps();
}

fn assert_rejected(s: &Server, m: &mut Model, topic: &str, ctx: &str) {
    for recs in [
        json!([{"data": "no room"}]),
        json!([{"data": 1}, {"data": 2}]),
    ] {
        let r = s.json_post(&format!("/v0/topics/{topic}"), &json!({ "records": recs }));
        assert_error(&r, 422, "topic_full");
    }
    let tm = m.tm(topic);
    let t = s.topic(topic);
    assert_eq!(t["count"], json!(tm.count()), "{ctx}: nothing written: {t}");
    assert_eq!(t["head_seq"], json!(tm.head), "{ctx}: nothing written: {t}");
}

#[test]
fn retention_caps_on_segmented_records() {
    let mut m = Model::default();
    let mut s = Server::start_with(2, &FLAGS);
    let [cap_r, cap_b, tight, rej]: [String; 4] = spread("ret", 4).try_into().unwrap();
    let fsync = |extra: Value| {
        let mut c = json!({"durability": "fsync"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    create(&s, &mut m, &cap_r, fsync(json!({"cap_records": 500})));
    create(&s, &mut m, &cap_b, fsync(json!({"cap_bytes": 20_000})));
    create(&s, &mut m, &tight, fsync(json!({})));
    create(
        &s,
        &mut m,
        &rej,
        fsync(json!({"cap_records": 300, "discard": "reject"})),
    );
    // Fill below the caps; checkpoint so the oldest records are in segments.
    append_plain(&s, &mut m, &cap_r, 400, 120);
    append_plain(&s, &mut m, &cap_b, 150, 100);
    append_plain(&s, &mut m, &tight, 1000, 100);
    append_plain(&s, &mut m, &rej, 300, 100);
    wait_for_checkpoint(&s);
    assert_has_segments(&s, "before hitting the caps");

    // Past the caps: the oldest (segmented) records are evicted with a `cap` tombstone.
    append_plain(&s, &mut m, &cap_r, 300, 120);
    append_plain(&s, &mut m, &cap_b, 100, 100);
    assert_eq!(m.tm(&cap_r).earliest(), 201);
    assert_eq!(m.tm(&cap_b).earliest(), 51);
    assert_rejected(&s, &mut m, &rej, "reject at the cap");

    // Tightening a cap applies at once, before any new write.
    put_caps(&s, &mut m, &tight, json!({"cap_records": 100}));
    let t = s.topic(&tight);
    assert_eq!(t["count"], json!(100), "tighter cap_records at once: {t}");
    assert_eq!(
        t["earliest_seq"],
        json!(901),
        "tighter cap_records at once: {t}"
    );
    let d = s.diff(&tight, json!({"from_seq": 0}));
    assert_eq!(d["tombstone"]["reason"], json!("cap"), "{d}");
    assert_eq!(d["tombstone"]["gap_to"], json!(900), "{d}");
    put_caps(&s, &mut m, &tight, json!({"cap_bytes": 5_000}));
    let t = s.topic(&tight);
    assert_eq!(t["count"], json!(50), "tighter cap_bytes at once: {t}");
    assert_eq!(
        t["earliest_seq"],
        json!(951),
        "tighter cap_bytes at once: {t}"
    );
    verify(&s, &mut m, "after eviction");

    wait_for_checkpoint_of(&s, &[&cap_r, &cap_b, &tight]);
    verify(&s, &mut m, "after eviction and a checkpoint");

    s.restart_kill9();
    verify(&s, &mut m, "after eviction and kill -9");
    assert_rejected(&s, &mut m, &rej, "reject after kill -9");
    // More evictions after the restart, of records loaded from segments.
    append_plain(&s, &mut m, &cap_r, 100, 120);
    assert_eq!(m.tm(&cap_r).earliest(), 301);
    // A delete makes room in the reject topic; exactly that much fits again.
    delete(&s, &mut m, &rej, json!({"before_seq": 11}));
    append_plain(&s, &mut m, &rej, 10, 100);
    assert_rejected(&s, &mut m, &rej, "reject after a delete made room for 10");
    s.restart_graceful();
    verify(&s, &mut m, "after a graceful restart");
    assert_rejected(&s, &mut m, &rej, "reject after a graceful restart");
}

#[test]
fn ttl_expires_segmented_records_without_new_writes() {
    const TTL: u64 = 2000;
    let mut m = Model::default();
    let mut s = Server::start_with(2, &FLAGS);
    let [ta, tb, keep]: [String; 3] = spread("ttl", 3).try_into().unwrap();
    for t in [&ta, &tb] {
        create(&s, &mut m, t, json!({"durability": "fsync", "ttl_ms": TTL}));
    }
    create(&s, &mut m, &keep, json!({"durability": "fsync"}));
    let start = now_ms();
    for t in [&ta, &tb, &keep] {
        append_plain(&s, &mut m, t, 300, 100);
    }
    let written = now_ms();
    wait_for_checkpoint(&s);
    assert_has_segments(&s, "before expiry");
    if now_ms() + 1000 < start + TTL {
        verify(&s, &mut m, "before expiry");
    }

    // No more writes: expiry must happen by the sweep alone (once a second).
    let until = written + TTL + 1500;
    std::thread::sleep(Duration::from_millis(until.saturating_sub(now_ms())));
    for t in [&ta, &tb] {
        let tm = m.tm(t);
        while !tm.recs.is_empty() {
            tm.lose_oldest("ttl");
        }
        let v = s.topic(t);
        assert_eq!(v["count"], json!(0), "{t}: every record expired: {v}");
        assert_eq!(v["bytes"], json!(0), "{t}: {v}");
        assert_eq!(
            v["earliest_seq"],
            json!(301),
            "{t}: earliest = head + 1: {v}"
        );
    }
    verify(&s, &mut m, "after expiry");
    s.restart_kill9();
    verify(&s, &mut m, "after expiry and kill -9");
    s.restart_graceful();
    verify(&s, &mut m, "after expiry and a graceful restart");
}

// ---- 5: delete and re-create a topic ------------------------------------------------------------

fn check_recreated(s: &Server, m: &mut Model, topic: &str, old_head: u64, ctx: &str) {
    let ctx = format!("{ctx}: {topic}: diff with the old instance's cursor {old_head}");
    let tm = m.tm(topic);
    let r = s.post_raw(
        &format!("/v0/topics/{topic}/diff"),
        format!(r#"{{"from_seq":{old_head},"limit":1000}}"#).as_bytes(),
    );
    assert_eq!(r.status, 200, "{ctx}: {}", r.text());
    let d = r.json();
    let t = &d["tombstone"];
    assert_eq!(t["reason"], json!("recreated"), "{ctx}: {d}");
    assert_eq!(t["gap_from"], json!(1), "{ctx}: {d}");
    assert_eq!(t["gap_to"], json!(tm.earliest() - 1), "{ctx}: {d}");
    assert_eq!(d["head_seq"], json!(tm.head), "{ctx}: {d}");
    let want: Vec<(u64, &Rec)> = tm.recs.iter().map(|(s, r)| (*s, r)).collect();
    compare(&ctx, &raw_records(&r.body), &want);
    verify_topic(s, topic, tm, &ctx);
}

#[test]
fn recreated_topic_never_shows_its_old_segmented_records() {
    let mut m = Model::default();
    let mut s = Server::start_with(2, &FLAGS);
    let [ra, rb, gone]: [String; 3] = spread("re", 3).try_into().unwrap();
    for t in [&ra, &rb, &gone] {
        create(&s, &mut m, t, json!({"durability": "fsync"}));
        append_plain(&s, &mut m, t, 800, 150);
    }
    wait_for_checkpoint(&s);
    assert_has_segments(&s, "before the topic deletes");

    let recreate = |s: &Server, m: &mut Model, t: &str| {
        let body = br#"{"records":[{"data":"new 1","tag":"x"},{"data":"new 2"},{"data":"new 3"}],"config":{"durability":"fsync"}}"#;
        let ts_lo = now_ms();
        let r = s.post_raw(&format!("/v0/topics/{t}"), body);
        let ts_hi = now_ms();
        assert_eq!(r.status, 201, "re-create {t}: {}", r.text());
        assert_eq!(
            r.json()["seqs"],
            json!([1, 2, 3]),
            "a new instance starts at 1"
        );
        let mut tm = TopicModel::new("fsync");
        for (i, d) in ["new 1", "new 2", "new 3"].iter().enumerate() {
            tm.recs.insert(
                i as u64 + 1,
                Rec {
                    data: raw_str(d),
                    meta: None,
                    tag: (i == 0).then(|| "x".to_string()),
                    node: None,
                    ts_lo,
                    ts_hi,
                    ts: None,
                },
            );
        }
        tm.head = 3;
        m.topics.insert(t.to_string(), tm);
    };
    let del_topic = |s: &Server, t: &str| {
        let (st, v) = s.delete(&format!("/v0/topics/{t}"));
        assert_eq!((st, &v["deleted"]), (200, &json!(true)), "DELETE {t}: {v}");
    };
    // `ra`: deleted and re-created at once (the old segments and the new instance meet in
    // the next checkpoint); `rb`: a checkpoint runs while it is gone; `gone` stays gone.
    del_topic(&s, &ra);
    recreate(&s, &mut m, &ra);
    del_topic(&s, &rb);
    del_topic(&s, &gone);
    m.topics.remove(&gone);
    wait_for_checkpoint_of(&s, &[&rb, &gone]);
    recreate(&s, &mut m, &rb);
    for t in [&ra, &rb] {
        check_recreated(&s, &mut m, t, 800, "re-created");
    }
    assert_error(
        &s.get(&format!("/v0/topics/{gone}")),
        404,
        "topic_not_found",
    );
    // More writes to the re-created instances, then a checkpoint of them.
    let mut c = s.client();
    append(&mut c, &mut m, &ra, &[plain(100, 80)], None);
    append(&mut c, &mut m, &rb, &[plain(101, 80)], None);
    wait_for_checkpoint(&s);

    for (k, restart) in ["kill -9", "graceful", "kill -9 again"].iter().enumerate() {
        if k == 1 {
            s.restart_graceful();
        } else {
            s.restart_kill9();
        }
        let ctx = format!("re-created, checkpoint, {restart} restart");
        for t in [&ra, &rb] {
            check_recreated(&s, &mut m, t, 800, &ctx);
        }
        assert_error(
            &s.get(&format!("/v0/topics/{gone}")),
            404,
            "topic_not_found",
        );
        let r = s.json_post(&format!("/v0/topics/{gone}/diff"), &json!({"from_seq": 0}));
        assert_error(&r, 404, "topic_not_found");
        let mut c = s.client();
        append(&mut c, &mut m, &ra, &[plain(k as u64, 80)], None);
        wait_for_checkpoint_of(&s, &[&ra]);
    }
}

// ---- 6: idempotency keys, router cursors, watch sessions ----------------------------------------

#[test]
fn idempotency_keys_router_cursors_and_sessions_survive_checkpoints() {
    let mut m = Model::default();
    let mut s = Server::start_with(2, &FLAGS);
    let [idem, src, dst]: [String; 3] = spread("ex", 3).try_into().unwrap();
    create(
        &s,
        &mut m,
        &idem,
        json!({"durability": "fsync", "idempotency_window_ms": 600_000}),
    );
    create(&s, &mut m, &src, json!({"durability": "fsync"}));
    let (st, v) = s.put(
        &format!("/v0/topics/{dst}"),
        &json!({"durability": "fsync"}),
    );
    assert_eq!(st, 201, "{v}");
    let (st, v) = s.put(
        "/v0/routers/ex-fwd",
        &json!({"source": src, "dest": dst, "guarantee": "exactly_once"}),
    );
    assert_eq!(st, 201, "{v}");
    let (wid, _) = sse::create(&s, json!({"topics": {idem.as_str(): {"from_seq": 0}}}));

    // 40 keyed writes (every 4th key in the header), each 20 records, into segments.
    let mut c = s.client();
    let mut originals: Vec<(String, bool, Value)> = Vec::new();
    for k in 0..40u64 {
        let key = format!("key-{k}");
        let header = k % 4 == 0;
        let recs: Vec<String> = (0..20)
            .map(|j| {
                format!(
                    r#"{{"data":{{"k":{k},"j":{j},"pad":"{}"}}}}"#,
                    "i".repeat(100)
                )
            })
            .collect();
        let body = if header {
            format!(r#"{{"records":[{}]}}"#, recs.join(","))
        } else {
            format!(
                r#"{{"idempotency_key":"{key}","records":[{}]}}"#,
                recs.join(",")
            )
        };
        let mut headers = vec![("Content-Type", "application/json")];
        if header {
            headers.push(("Idempotency-Key", key.as_str()));
        }
        let r = c.request(
            "POST",
            &format!("/v0/topics/{idem}"),
            &headers,
            Some(body.as_bytes()),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["deduped"], json!(false), "{v}");
        assert_eq!(v["first_seq"], json!(k * 20 + 1), "{v}");
        originals.push((key, header, v));
    }
    let head = 800;
    append_plain(&s, &mut m, &src, 500, 120);
    let wait_dst = |s: &Server, n: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (st, v) = s.get(&format!("/v0/topics/{dst}"));
            if st == 200 && v["count"] == json!(n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "router did not forward {n} records within 10 s: {st} {v}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_dst(&s, 500);
    // Two checkpoints: the WAL frames carrying the keys and cursors can be gone.
    wait_for_checkpoint(&s);
    append_plain(&s, &mut m, &src, 10, 120);
    wait_dst(&s, 510);
    wait_for_checkpoint(&s);
    assert_has_segments(&s, "after the keyed writes");

    let check = |s: &Server, m: &mut Model, ctx: &str, dst_n: u64| {
        let mut c = s.client();
        for (key, header, orig) in &originals {
            let body = format!(r#"{{"idempotency_key":"{key}","records":[{{"data":"dup"}}]}}"#);
            let body_hdr = r#"{"records":[{"data":"dup"}]}"#.to_string();
            let mut headers = vec![("Content-Type", "application/json")];
            if *header {
                headers.push(("Idempotency-Key", key.as_str()));
            }
            let r = c.request(
                "POST",
                &format!("/v0/topics/{idem}"),
                &headers,
                Some(if *header { &body_hdr } else { &body }.as_bytes()),
            );
            assert_eq!(r.status, 200, "{ctx}: repeat of {key}: {}", r.text());
            let v = r.json();
            assert_eq!(v["deduped"], json!(true), "{ctx}: key {key} forgotten: {v}");
            for f in ["seqs", "first_seq", "last_seq", "count"] {
                assert_eq!(v[f], orig[f], "{ctx}: key {key}: {f}: {v} vs {orig}");
            }
            assert_eq!(v["head_seq"], json!(head), "{ctx}: key {key}: {v}");
        }
        let t = s.topic(&idem);
        assert_eq!(t["count"], json!(head), "{ctx}: nothing appended: {t}");
        // The router: each source record exactly once in dest, in order, nothing more.
        std::thread::sleep(Duration::from_millis(300));
        let src_recs = s.diff_all_raw(&src);
        let dst_recs = s.diff_all_raw(&dst);
        assert_eq!(dst_recs.len() as u64, dst_n, "{ctx}: dest record count");
        let sd: Vec<&String> = src_recs.iter().map(|r| &r["data"]).collect();
        let dd: Vec<&String> = dst_recs.iter().map(|r| &r["data"]).collect();
        assert_eq!(
            sd, dd,
            "{ctx}: dest must hold each source record once, in order"
        );
        // The watch session still exists and streams from its cursor.
        let mut w = sse::open(s, &wid);
        w.expect_retry();
        let f = w.data_frame(Duration::from_secs(5));
        assert!(
            matches!(f.event(), Some("record" | "caught-up")),
            "{ctx}: watch session: {f:?}"
        );
        verify_topic(s, &src, m.tm(&src), ctx);
    };
    check(&s, &mut m, "before any restart", 510);
    s.restart_kill9();
    check(&s, &mut m, "after kill -9", 510);
    append_plain(&s, &mut m, &src, 100, 120);
    wait_dst(&s, 610);
    wait_for_checkpoint_of(&s, &[&src, &dst]);
    s.restart_graceful();
    check(&s, &mut m, "after a graceful restart", 610);
    s.restart_kill9();
    check(&s, &mut m, "after another kill -9", 610);
}

// ---- 7: memory and ephemeral topics -------------------------------------------------------------

/// A `memory` topic promises nothing about a restart: each acknowledged record either comes
/// back exactly or is gone with a `restart` tombstone covering it; seqs are never reused.
fn check_memory_topic(s: &Server, m: &mut Model, topic: &str, ctx: &str) {
    let tm = m.tm(topic);
    let old_head = tm.head;
    let t = s.topic(topic);
    let head = t["head_seq"].as_u64().unwrap();
    assert!(
        head >= old_head,
        "{ctx}: {topic}: head {head} < {old_head}: {t}"
    );
    let (got, page) = read_pages(s, topic, 0, &json!({}));
    let present: BTreeMap<u64, &BTreeMap<String, String>> = got
        .iter()
        .map(|r| (r["$seq"].parse().unwrap(), r))
        .collect();
    let earliest = t["earliest_seq"].as_u64().unwrap();
    let lost: Vec<u64> = tm
        .recs
        .keys()
        .filter(|s| !present.contains_key(s))
        .copied()
        .collect();
    for (seq, g) in &present {
        let r = tm
            .recs
            .get(seq)
            .unwrap_or_else(|| panic!("{ctx}: {topic}: seq {seq} was never written: {g:?}"));
        assert_eq!(g["data"], r.data, "{ctx}: {topic}: seq {seq} data");
    }
    eprintln!(
        "{ctx}: memory topic {topic}: {} of {} records back",
        present.len(),
        tm.recs.len()
    );
    if !lost.is_empty() {
        let tomb = &page["tombstone"];
        assert_eq!(
            tomb["reason"],
            json!("restart"),
            "{ctx}: {topic}: {} acknowledged records lost without a restart tombstone \
             (first lost {:?}): {page}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        let gap_to = tomb["gap_to"].as_u64().unwrap();
        assert_eq!(gap_to, earliest - 1, "{ctx}: {topic}: {page}");
        assert!(
            lost.iter().all(|s| *s <= gap_to),
            "{ctx}: {topic}: lost seqs {lost:?} not covered by the tombstone: {page}"
        );
        tm.recs.retain(|s, _| present.contains_key(s));
        tm.evict_floor = earliest;
        tm.evict_reason = Some("restart");
    }
    tm.head = head;
    // Seqs are not reused.
    let v = s.append(topic, json!([{"data": "after restart"}]));
    assert_eq!(v["seqs"], json!([head + 1]), "{ctx}: {topic}: {v}");
    tm.head = head + 1;
    let ts = now_ms();
    tm.recs.insert(
        head + 1,
        Rec {
            data: raw_str("after restart"),
            meta: None,
            tag: None,
            node: None,
            ts_lo: ts.saturating_sub(60_000),
            ts_hi: ts,
            ts: None,
        },
    );
}

/// An `ephemeral` topic keeps its config and head but no records: a `restart` tombstone.
fn check_ephemeral_topic(s: &Server, m: &mut Model, topic: &str, ctx: &str) {
    let tm = m.tm(topic);
    let t = s.topic(topic);
    let head = t["head_seq"].as_u64().unwrap();
    assert!(
        head >= tm.head,
        "{ctx}: {topic}: head {head} < {}: {t}",
        tm.head
    );
    assert_eq!(
        t["count"],
        json!(0),
        "{ctx}: {topic}: no records after a restart: {t}"
    );
    assert_eq!(t["bytes"], json!(0), "{ctx}: {topic}: {t}");
    assert_eq!(t["earliest_seq"], json!(head + 1), "{ctx}: {topic}: {t}");
    assert_eq!(t["config"]["durability"], json!("ephemeral"), "{ctx}: {t}");
    let d = s.diff(topic, json!({"from_seq": 0}));
    assert_eq!(d["records"], json!([]), "{ctx}: {topic}: {d}");
    assert_eq!(
        d["tombstone"]["reason"],
        json!("restart"),
        "{ctx}: {topic}: {d}"
    );
    assert_eq!(d["tombstone"]["gap_from"], json!(1), "{ctx}: {topic}: {d}");
    assert_eq!(d["tombstone"]["gap_to"], json!(head), "{ctx}: {topic}: {d}");
    let v = s.append(topic, json!([{"data": "after restart"}]));
    assert_eq!(
        v["seqs"],
        json!([head + 1]),
        "{ctx}: {topic}: seqs not reused: {v}"
    );
    tm.recs.clear();
    tm.head = head + 1;
}

#[test]
fn memory_and_ephemeral_topics_across_checkpoints_and_restarts() {
    let mut m = Model::default();
    let mut s = Server::start_with(2, &FLAGS);
    let [mem, eph, dur]: [String; 3] = spread("vol", 3).try_into().unwrap();
    create(&s, &mut m, &mem, json!({"durability": "memory"}));
    create(&s, &mut m, &eph, json!({"durability": "ephemeral"}));
    create(&s, &mut m, &dur, json!({"durability": "fsync"}));
    for t in [&mem, &eph, &dur] {
        append_plain(&s, &mut m, t, 400, 100);
    }
    wait_for_checkpoint(&s);
    // Before a restart, every class reads back everything, however little memory it has.
    verify(&s, &mut m, "memory / ephemeral before a restart");

    for (k, how) in ["kill -9", "graceful"].iter().enumerate() {
        if k == 0 {
            s.restart_kill9();
        } else {
            s.restart_graceful();
        }
        let ctx = format!("after a {how} restart");
        check_memory_topic(&s, &mut m, &mem, &ctx);
        check_ephemeral_topic(&s, &mut m, &eph, &ctx);
        verify_topic(&s, &dur, m.tm(&dur), &ctx);
        append_plain(&s, &mut m, &mem, 100, 100);
        append_plain(&s, &mut m, &eph, 100, 100);
        wait_for_checkpoint_of(&s, &[&mem, &eph]);
    }
}
