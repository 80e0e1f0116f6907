//! Queues (SPEC §7): claim / ack / nack / extend semantics — claim order, fencing, nack
//! delays, lease expiry and extension, long-poll claims, claim cohorts and dead letters
//! across cores. Errors: queue_errors.rs; `/work`: queue_work.rs; restarts:
//! queue_restart.rs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::queue::*;
use common::sse::{name_on_shard, shard_of};
use common::*;
use serde_json::{json, Value};

const LONG: u64 = 60_000;

#[test]
fn claim_ack_nack_extend_happy_path() {
    let s = Server::start(2);
    make_queue(&s, "jobs", json!({"lease_ms": LONG}));
    let body = br#"{"records":[
        {"data": { "to" : "a@x.io",  "n":1 }, "tag": "mail-1", "node": "api-1", "meta": { "try" : 0 }},
        {"data": [1, 2,3]},
        {"data": null, "tag": "t3"},
        {"data": "four"},
        {"data": 5.50}
    ]}"#;
    let r = s.post_raw("/v0/topics/jobs", body);
    assert_eq!(r.status, 200, "{}", r.text());

    let t0 = now_ms();
    let r = s.post_raw("/v0/topics/jobs/claim", br#"{"node":"w1","max":2}"#);
    let t1 = now_ms();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    check_claim_response("jobs", &v);
    assert_eq!(claimed_seqs(&v), vec![1, 2], "fresh jobs in seq order: {v}");
    assert_eq!(v["count"], json!(2), "{v}");
    assert_eq!(v["ready"], json!(3), "{v}");
    let raw = raw_claimed(&r.body);
    assert_eq!(
        raw[0]["data"], r#"{ "to" : "a@x.io",  "n":1 }"#,
        "data byte-exact"
    );
    assert_eq!(raw[0]["meta"], r#"{ "try" : 0 }"#, "meta byte-exact");
    assert_eq!(raw[0]["$tag"], r#""mail-1""#);
    assert_eq!(raw[0]["$node"], r#""api-1""#);
    assert_eq!(raw[1]["data"], "[1, 2,3]");
    for k in ["$tag", "$node", "meta"] {
        assert!(
            !raw[1].contains_key(k),
            "{k} present on a job without it: {:?}",
            raw[1]
        );
    }
    let e = entries(&v);
    for x in &e {
        assert_eq!(x["deliveries"], json!(1), "{x}");
        let d = x["deadline"].as_u64().unwrap();
        assert!(
            d >= t0 + LONG && d <= t1 + LONG,
            "deadline {d} is not now + the topic's lease_ms ({t0}..{t1}): {x}"
        );
    }
    let leases = lease_map(&v);
    assert_ne!(leases[&1], leases[&2], "two leases share an id");
    assert_eq!(
        state(&s, "jobs"),
        (5, 3, 2, 0),
        "(count, ready, in_flight, dead_lettered)"
    );

    // The next claim gets the next fresh jobs, nothing leased.
    let v2 = claim(&s, "jobs", json!({"node": "w2", "max": 10}));
    assert_eq!(claimed_seqs(&v2), vec![3, 4, 5], "{v2}");
    assert_eq!(v2["ready"], json!(0), "{v2}");
    let raw_null = &entries(&v2)[0];
    assert_eq!(
        raw_null["data"],
        Value::Null,
        "null data is present as null: {raw_null}"
    );
    assert_eq!(raw_null["$tag"], json!("t3"));
    let empty = claim(&s, "jobs", json!({"node": "w3", "max": 10}));
    assert_eq!(
        (empty["count"].clone(), empty["ready"].clone()),
        (json!(0), json!(0)),
        "{empty}"
    );
    assert_eq!(empty["claimed"], json!([]), "{empty}");

    // ack: the permanent delete.
    let a = ack(&s, "jobs", "w1", &[1], Some(&[leases[&1].clone()]));
    assert_eq!(a["acked"], json!(1), "{a}");
    assert_eq!(skipped(&a), Vec::<u64>::new(), "{a}");
    assert_eq!(
        (a["ready"].clone(), a["in_flight"].clone()),
        (json!(0), json!(4)),
        "{a}"
    );
    assert_eq!(state(&s, "jobs"), (4, 0, 4, 0));
    assert_eq!(
        seqs_of(&s.diff_all("jobs")),
        vec![2, 3, 4, 5],
        "ack deletes the record"
    );
    let again = ack(&s, "jobs", "w1", &[1], None);
    assert_eq!(
        (again["acked"].clone(), skipped(&again)),
        (json!(0), vec![1]),
        "{again}"
    );

    // ack of several, some not ours: partial.
    let a = ack(&s, "jobs", "w2", &[3, 2, 4, 99], None);
    assert_eq!(a["acked"], json!(2), "{a}");
    let mut sk = skipped(&a);
    sk.sort_unstable();
    assert_eq!(sk, vec![2, 99], "{a}");
    assert_eq!(state(&s, "jobs"), (2, 0, 2, 0));

    // nack: back to ready at once (delay 0), not leased any more.
    let n = nack(&s, "jobs", "w1", &[2], None, 0);
    assert_eq!(n["nacked"], json!(1), "{n}");
    assert_eq!(
        (n["ready"].clone(), n["in_flight"].clone()),
        (json!(1), json!(1)),
        "{n}"
    );
    let n = nack(&s, "jobs", "w1", &[2], None, 0);
    assert_eq!(
        (n["nacked"].clone(), skipped(&n)),
        (json!(0), vec![2]),
        "a second nack: {n}"
    );
    let r = s.post_raw(
        "/v0/topics/jobs/claim",
        format!(r#"{{"node":"w3","max":10,"lease_ms":{LONG}}}"#).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v3 = r.json();
    check_claim_response("jobs", &v3);
    assert_eq!(claimed_seqs(&v3), vec![2], "{v3}");
    assert_eq!(entries(&v3)[0]["deliveries"], json!(2), "{v3}");
    assert_eq!(
        raw_claimed(&r.body)[0]["data"],
        "[1, 2,3]",
        "redelivered data byte-exact"
    );

    // extend: our lease, and only ours.
    let t0 = now_ms();
    let x = extend(&s, "jobs", "w2", &[5, 2], None, 5000);
    let t1 = now_ms();
    assert_eq!(x["extended"], json!(1), "{x}");
    assert_eq!(skipped(&x), vec![2], "{x}");
    let d = x["deadlines"]["5"]
        .as_u64()
        .unwrap_or_else(|| panic!("deadlines.5 in {x}"));
    assert!(
        d >= t0 + 5000 && d <= t1 + 5000,
        "extend deadline {d} vs {t0}..{t1}"
    );
    assert!(x["deadlines"].get("2").is_none(), "{x}");
    let x = extend(&s, "jobs", "w2", &[3], None, 5000);
    assert_eq!(
        (x["extended"].clone(), skipped(&x)),
        (json!(0), vec![3]),
        "acked job: {x}"
    );
    assert_eq!(x["deadlines"], json!({}), "{x}");
    assert_eq!(state(&s, "jobs"), (2, 0, 2, 0));
}

#[test]
fn max_and_lease_ms_are_clamped() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({"lease_ms": 1234}));
    append_jobs(&s, "q", 0, 1006);

    let v = claim(&s, "q", json!({"node": "w", "max": 5000, "lease_ms": LONG}));
    assert_eq!(v["count"], json!(1000), "max is clamped to 1000");
    assert_eq!(claimed_seqs(&v), (1..=1000).collect::<Vec<u64>>());
    assert_eq!(v["ready"], json!(6), "{}", v["ready"]);
    let v = claim(&s, "q", json!({"node": "w", "max": 0, "lease_ms": LONG}));
    assert_eq!(claimed_seqs(&v), vec![1001], "max 0 is clamped up to 1");
    let v = claim(&s, "q", json!({"node": "w", "lease_ms": LONG}));
    assert_eq!(claimed_seqs(&v), vec![1002], "max defaults to 1");

    let deadline_of = |v: &Value| entries(v)[0]["deadline"].as_u64().unwrap();
    // Below the floor: 100 ms.
    let t0 = now_ms();
    let v = claim(&s, "q", json!({"node": "w", "lease_ms": 1}));
    let t1 = now_ms();
    let d = deadline_of(&v);
    assert!(
        d >= t0 + 100 && d <= t1 + 100,
        "lease_ms 1 -> deadline - now = {} (want 100)",
        d - t0
    );
    // Above the ceiling: 86400000 ms.
    let t0 = now_ms();
    let v = claim(
        &s,
        "q",
        json!({"node": "w", "lease_ms": 1_000_000_000_000u64}),
    );
    let t1 = now_ms();
    let d = deadline_of(&v);
    assert!(
        d >= t0 + 86_400_000 && d <= t1 + 86_400_000,
        "huge lease_ms -> deadline - now = {} (want 86400000)",
        d - t0
    );
    let seq_long = claimed_seqs(&v)[0];
    // Absent: the topic's lease_ms.
    let t0 = now_ms();
    let v = claim(&s, "q", json!({"node": "w"}));
    let t1 = now_ms();
    let d = deadline_of(&v);
    assert!(
        d >= t0 + 1234 && d <= t1 + 1234,
        "default lease: deadline - now = {}",
        d - t0
    );

    // extend clamps the same way.
    let t0 = now_ms();
    let x = extend(&s, "q", "w", &[seq_long], None, 1);
    let t1 = now_ms();
    let d = x["deadlines"][seq_long.to_string()]
        .as_u64()
        .expect("deadline");
    assert!(
        d >= t0 + 100 && d <= t1 + 100,
        "extend lease_ms 1 -> {}",
        d - t0
    );
    let t0 = now_ms();
    let x = extend(&s, "q", "w", &[seq_long], None, 1_000_000_000_000);
    let t1 = now_ms();
    let d = x["deadlines"][seq_long.to_string()]
        .as_u64()
        .expect("deadline");
    assert!(
        d >= t0 + 86_400_000 && d <= t1 + 86_400_000,
        "extend huge lease_ms -> {}",
        d - t0
    );
}

#[test]
fn redelivered_jobs_come_first_then_fresh_in_seq_order() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    append_jobs(&s, "q", 0, 10);
    let a = claim_n(&s, "q", "a", 3, 200);
    assert_eq!(claimed_seqs(&a), vec![1, 2, 3]);
    let b = claim_n(&s, "q", "b", 2, LONG);
    assert_eq!(claimed_seqs(&b), vec![4, 5]);
    let n = nack(&s, "q", "b", &[5], None, 0);
    assert_eq!(n["nacked"], json!(1), "{n}");
    std::thread::sleep(Duration::from_millis(350));
    // 1-3 expired, 5 nacked: served before the fresh 6, 7.
    let c = claim_n(&s, "q", "c", 6, LONG);
    let got = claimed_seqs(&c);
    assert_eq!(got.len(), 6, "{c}");
    let mut first: Vec<u64> = got[..4].to_vec();
    first.sort_unstable();
    assert_eq!(first, vec![1, 2, 3, 5], "redeliveries first: {got:?}");
    assert_eq!(&got[4..], &[6, 7], "then fresh jobs in seq order: {got:?}");
    let dv = deliveries_map(&c);
    for sq in [1, 2, 3, 5] {
        assert_eq!(dv[&sq], 2, "deliveries of {sq}: {c}");
    }
    assert_eq!((dv[&6], dv[&7]), (1, 1), "{c}");
    assert_eq!(c["ready"], json!(3), "{c}");
    assert_eq!(state(&s, "q"), (10, 3, 7, 0));
    let v = ack(&s, "q", "b", &[4], None);
    assert_eq!(v["acked"], json!(1), "{v}");
    assert_eq!(state(&s, "q"), (9, 3, 6, 0));
    // Nack 2 and 6 again: they come back before 8, 9, 10, with deliveries 3 and 2.
    let v = nack(&s, "q", "c", &[6, 2], None, 0);
    assert_eq!(v["nacked"], json!(2), "{v}");
    let d = claim_n(&s, "q", "d", 3, LONG);
    let got = claimed_seqs(&d);
    let mut first: Vec<u64> = got[..2].to_vec();
    first.sort_unstable();
    assert_eq!(first, vec![2, 6], "{d}");
    assert_eq!(got[2], 8, "{d}");
    let dv = deliveries_map(&d);
    assert_eq!((dv[&2], dv[&6], dv[&8]), (3, 2, 1), "{d}");
}

#[test]
fn fencing_a_late_ack_after_a_reclaim_is_skipped() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({"durable": true}));
    append_jobs(&s, "q", 0, 2);
    let a = claim_n(&s, "q", "a", 1, 200);
    assert_eq!(claimed_seqs(&a), vec![1]);
    let a_id = lease_map(&a)[&1].clone();
    std::thread::sleep(Duration::from_millis(300));
    let b = claim_n(&s, "q", "b", 1, LONG);
    assert_eq!(
        claimed_seqs(&b),
        vec![1],
        "the expired job is re-claimed: {b}"
    );
    assert_eq!(deliveries_map(&b)[&1], 2);
    let b_id = lease_map(&b)[&1].clone();
    assert_ne!(a_id, b_id, "a new claim gets a new lease id");

    // a's late ack, nack and extend change nothing.
    let v = ack(&s, "q", "a", &[1], None);
    assert_eq!(
        (v["acked"].clone(), skipped(&v)),
        (json!(0), vec![1]),
        "late ack: {v}"
    );
    let v = ack(&s, "q", "a", &[1], Some(std::slice::from_ref(&a_id)));
    assert_eq!(v["acked"], json!(0), "late ack with its lease id: {v}");
    let v = ack(&s, "q", "a", &[1], Some(std::slice::from_ref(&b_id)));
    assert_eq!(v["acked"], json!(0), "another node's lease id: {v}");
    let v = nack(&s, "q", "a", &[1], None, 0);
    assert_eq!(v["nacked"], json!(0), "late nack: {v}");
    let v = extend(&s, "q", "a", &[1], None, 5000);
    assert_eq!(v["extended"], json!(0), "late extend: {v}");
    // b with a's (stale) lease id: skipped too.
    let v = ack(&s, "q", "b", &[1], Some(std::slice::from_ref(&a_id)));
    assert_eq!(v["acked"], json!(0), "stale lease id: {v}");
    assert_eq!(state(&s, "q"), (2, 1, 1, 0), "still leased to b");
    let v = ack(&s, "q", "b", &[1], Some(std::slice::from_ref(&b_id)));
    assert_eq!(v["acked"], json!(1), "{v}");
    let v = ack(&s, "q", "b", &[1], Some(&[b_id]));
    assert_eq!(
        (v["acked"].clone(), skipped(&v)),
        (json!(0), vec![1]),
        "acked twice: {v}"
    );

    // The same node re-claiming after expiry: only the new lease id acks.
    let a1 = claim_n(&s, "q", "a", 1, 150);
    assert_eq!(claimed_seqs(&a1), vec![2]);
    let old = lease_map(&a1)[&2].clone();
    std::thread::sleep(Duration::from_millis(250));
    let a2 = claim_n(&s, "q", "a", 1, LONG);
    assert_eq!(claimed_seqs(&a2), vec![2]);
    let new = lease_map(&a2)[&2].clone();
    assert_ne!(old, new);
    let v = ack(&s, "q", "a", &[2], Some(&[old]));
    assert_eq!(
        (v["acked"].clone(), skipped(&v)),
        (json!(0), vec![2]),
        "{v}"
    );
    let v = ack(&s, "q", "a", &[2], Some(&[new]));
    assert_eq!(v["acked"], json!(1), "{v}");
    assert_eq!(state(&s, "q"), (0, 0, 0, 0));
    assert!(s.diff_all("q").is_empty());
}

#[test]
fn nack_delay_holds_the_job_back() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    append_jobs(&s, "q", 0, 1);
    let a = claim_n(&s, "q", "a", 1, LONG);
    let t_nack = Instant::now();
    let n = nack(&s, "q", "a", &[1], None, 800);
    assert_eq!(n["nacked"], json!(1), "{n}");
    assert_eq!(
        (n["ready"].clone(), n["in_flight"].clone()),
        (json!(0), json!(0)),
        "a delayed job is neither ready nor in flight: {n}"
    );
    assert_eq!(state(&s, "q"), (1, 0, 0, 0));
    let v = claim_n(&s, "q", "b", 5, LONG);
    assert_eq!(v["count"], json!(0), "claimable before its delay: {v}");
    // A waiting claim gets it once the delay has passed, not before.
    let v = claim(
        &s,
        "q",
        json!({"node": "b", "max": 5, "wait_ms": 5000, "lease_ms": 200}),
    );
    let waited = t_nack.elapsed();
    assert_eq!(claimed_seqs(&v), vec![1], "{v}");
    assert!(
        waited >= Duration::from_millis(780),
        "delivered {waited:?} after a nack with delay_ms 800"
    );
    assert!(waited < Duration::from_millis(3000), "took {waited:?}");
    assert_eq!(deliveries_map(&v)[&1], 2);
    assert_ne!(lease_map(&v)[&1], lease_map(&a)[&1]);
    // A short delay, claimed by polling after it.
    std::thread::sleep(Duration::from_millis(300));
    let v = claim_n(&s, "q", "c", 1, LONG);
    assert_eq!(claimed_seqs(&v), vec![1], "lease expired");
    let n = nack(&s, "q", "c", &[1], None, 300);
    assert_eq!(n["nacked"], json!(1));
    assert_eq!(claim_n(&s, "q", "d", 1, LONG)["count"], json!(0));
    std::thread::sleep(Duration::from_millis(400));
    let v = claim_n(&s, "q", "d", 1, LONG);
    assert_eq!(claimed_seqs(&v), vec![1]);
    assert_eq!(deliveries_map(&v)[&1], 4);
}

#[test]
fn an_expired_lease_is_claimable_without_other_traffic() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    append_jobs(&s, "q", 0, 2);
    let a = claim_n(&s, "q", "a", 1, 250);
    assert_eq!(claimed_seqs(&a), vec![1]);
    // Nothing at all happens on the server for longer than the lease.
    std::thread::sleep(Duration::from_millis(400));
    let b = claim_n(&s, "q", "b", 1, LONG);
    assert_eq!(
        claimed_seqs(&b),
        vec![1],
        "expired lease not reclaimed: {b}"
    );
    assert_eq!(deliveries_map(&b)[&1], 2);
    assert_eq!(state(&s, "q"), (2, 1, 1, 0));

    // A claim already waiting is woken by the expiry.
    let t0 = Instant::now();
    let a = claim_n(&s, "q", "a", 1, 300);
    assert_eq!(claimed_seqs(&a), vec![2]);
    let v = claim(
        &s,
        "q",
        json!({"node": "c", "max": 5, "wait_ms": 5000, "lease_ms": LONG}),
    );
    let waited = t0.elapsed();
    assert_eq!(claimed_seqs(&v), vec![2], "{v}");
    assert!(
        waited >= Duration::from_millis(280) && waited < Duration::from_millis(2500),
        "waiting claim returned {waited:?} after a 300 ms lease was taken"
    );
    // In the meantime (before the expiry) the GET counted it in flight; now c holds both.
    assert_eq!(state(&s, "q"), (2, 0, 2, 0));
}

#[test]
fn extend_pushes_the_deadline() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    append_jobs(&s, "q", 0, 1);
    let t0 = Instant::now();
    let a = claim_n(&s, "q", "a", 1, 300);
    let id = lease_map(&a)[&1].clone();
    let before = now_ms();
    let x = extend(&s, "q", "a", &[1], Some(std::slice::from_ref(&id)), 1500);
    let after = now_ms();
    assert_eq!(x["extended"], json!(1), "{x}");
    let d = x["deadlines"]["1"].as_u64().expect("deadlines.1");
    assert!(d >= before + 1500 && d <= after + 1500, "deadline {d}");
    // Someone else, or a wrong lease id, cannot extend.
    let v = extend(&s, "q", "b", &[1], None, LONG);
    assert_eq!(
        (v["extended"].clone(), skipped(&v)),
        (json!(0), vec![1]),
        "{v}"
    );
    let v = extend(
        &s,
        "q",
        "a",
        &[1],
        Some(&["lease_00000000deadbeef".to_string()]),
        LONG,
    );
    assert_eq!(v["extended"], json!(0), "{v}");
    // Past the original 300 ms: still leased.
    std::thread::sleep(Duration::from_millis(600).saturating_sub(t0.elapsed()));
    let v = claim_n(&s, "q", "b", 1, LONG);
    assert_eq!(
        v["count"],
        json!(0),
        "re-claimed before the extended deadline: {v}"
    );
    assert_eq!(state(&s, "q"), (1, 0, 1, 0));
    // A waiting claim gets it at the new deadline.
    let v = claim(
        &s,
        "q",
        json!({"node": "b", "max": 1, "wait_ms": 5000, "lease_ms": LONG}),
    );
    let at = now_ms();
    assert_eq!(claimed_seqs(&v), vec![1], "{v}");
    assert!(at >= d, "claimed at {at}, before the extended deadline {d}");
    assert!(
        at < d + 2000,
        "claimed at {at}, long after the deadline {d}"
    );
    assert_eq!(deliveries_map(&v)[&1], 2, "{v}");
    // The extended lease id is the same lease: a's ack is now skipped (b holds it).
    let v = ack(&s, "q", "a", &[1], Some(&[id]));
    assert_eq!(v["acked"], json!(0), "{v}");
}

#[test]
fn claim_wait_ms_long_polls() {
    let s = Server::start(2);
    make_queue(&s, "q", json!({}));
    // Nothing comes: empty after wait_ms.
    let t0 = Instant::now();
    let v = claim(&s, "q", json!({"node": "w", "max": 3, "wait_ms": 600}));
    let waited = t0.elapsed();
    assert_eq!(v["count"], json!(0), "{v}");
    assert_eq!(v["claimed"], json!([]), "{v}");
    assert!(
        waited >= Duration::from_millis(580) && waited < Duration::from_millis(3000),
        "an empty wait_ms 600 claim took {waited:?}"
    );
    // A job appended while a claim waits: returned at once, well before wait_ms.
    let port = s.port;
    let waiter = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        let t0 = Instant::now();
        let r = c.json_post(
            "/v0/topics/q/claim",
            &json!({"node": "w", "max": 3, "wait_ms": 10_000}),
        );
        (r, t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let t_append = Instant::now();
    append_jobs(&s, "q", 0, 1);
    let ((st, v), waited) = waiter.join().unwrap();
    let after_append = t_append.elapsed();
    assert_eq!(st, 200, "{v}");
    check_claim_response("q", &v);
    assert_eq!(claimed_seqs(&v), vec![1], "{v}");
    assert!(
        waited < Duration::from_millis(3000) && after_append < Duration::from_millis(1500),
        "the waiting claim answered {after_append:?} after the append ({waited:?} in all)"
    );
    assert_eq!(state(&s, "q"), (1, 0, 1, 0));
}

// ---- cohorts ----------------------------------------------------------------------------------

/// Claims concurrently, one thread per `max`, all released at once; returns each claim's seqs.
fn concurrent_claims(s: &Server, q: &str, maxes: &[u64]) -> Vec<Vec<u64>> {
    let barrier = Arc::new(Barrier::new(maxes.len()));
    let threads: Vec<_> = maxes
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let port = s.port;
            let q = q.to_string();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                barrier.wait();
                let (st, v) = c.json_post(
                    &format!("/v0/topics/{q}/claim"),
                    &json!({"node": format!("c{i}"), "max": m, "lease_ms": LONG}),
                );
                assert_eq!(st, 200, "{v}");
                check_claim_response(&q, &v);
                claimed_seqs(&v)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn check_shares(got: &[Vec<u64>], maxes: &[u64], available: u64) {
    let total: u64 = maxes.iter().sum();
    let mut all = BTreeSet::new();
    for (g, m) in got.iter().zip(maxes) {
        assert!(
            g.len() as u64 <= *m,
            "a claim got {} > its max {m}: {got:?}",
            g.len()
        );
        for s in g {
            assert!(all.insert(*s), "seq {s} given to two claims: {got:?}");
        }
        let fair = available as f64 * *m as f64 / total as f64;
        assert!(
            (g.len() as f64 - fair).abs() <= 1.0,
            "max {m} got {} jobs, its proportional share of {available} is {fair:.1}: {got:?}",
            g.len()
        );
    }
    assert_eq!(all.len() as u64, available.min(total), "{got:?}");
}

#[test]
fn claim_cohorts_share_jobs_in_proportion_to_max() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({"claim_jitter_ms": 300}));
    append_jobs(&s, "q", 0, 30);
    // First-come would give 20 + 10 (or 30 + 0); a cohort gives 10 + 20.
    let maxes = [20, 40];
    let got = concurrent_claims(&s, "q", &maxes);
    check_shares(&got, &maxes, 30);
    assert_eq!(state(&s, "q"), (30, 0, 30, 0));

    append_jobs(&s, "q", 30, 15);
    let maxes = [5, 10, 15];
    let got = concurrent_claims(&s, "q", &maxes);
    check_shares(&got, &maxes, 15);
    let new: BTreeSet<u64> = got.iter().flatten().copied().collect();
    assert_eq!(new, (31..=45).collect::<BTreeSet<u64>>(), "{got:?}");

    // More jobs than the cohort wants: everyone gets its max.
    append_jobs(&s, "q", 45, 40);
    let maxes = [4, 8];
    let got = concurrent_claims(&s, "q", &maxes);
    assert_eq!(
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![4, 8],
        "{got:?}"
    );
    let mut all: Vec<u64> = got.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (46..=57).collect::<Vec<u64>>(), "{got:?}");
}

// ---- dead letters -----------------------------------------------------------------------------

#[test]
fn dead_letters_move_across_cores_with_stamps() {
    let mut s = Server::start(2);
    let q = name_on_shard("jobs-", 0, 2);
    let dl = name_on_shard("dead-", 1, 2);
    assert_ne!(shard_of(&q, 2), shard_of(&dl, 2));
    make_queue(
        &s,
        &q,
        json!({"max_deliveries": 2, "dead_letter": dl, "durable": true}),
    );
    let body = br#"{"records":[
        {"data": { "id" : 1, "x":[1,2] }, "tag": "poison", "meta": { "origin" : "api" }},
        {"data": "plain"},
        {"data": 3}
    ]}"#;
    let r = s.post_raw(&format!("/v0/topics/{q}"), body);
    assert_eq!(r.status, 200, "{}", r.text());
    // Job 3 is acked at its first delivery and never moves.
    let v = claim_n(&s, &q, "w", 10, 200);
    assert_eq!(claimed_seqs(&v), vec![1, 2, 3]);
    assert_eq!(ack(&s, &q, "w", &[3], None)["acked"], json!(1));
    // Delivery 1 ends by a nack (1) and by expiry (2); so does delivery 2.
    assert_eq!(nack(&s, &q, "w", &[1], None, 0)["nacked"], json!(1));
    std::thread::sleep(Duration::from_millis(300));
    let v = claim_n(&s, &q, "w", 10, 200);
    assert_eq!(claimed_seqs(&v).len(), 2, "{v}");
    assert_eq!(deliveries_map(&v), BTreeMap::from([(1, 2), (2, 2)]), "{v}");
    assert_eq!(nack(&s, &q, "w", &[1], None, 0)["nacked"], json!(1));
    std::thread::sleep(Duration::from_millis(300));
    assert_error(&s.get(&format!("/v0/topics/{dl}")), 404, "topic_not_found");
    // The third delivery attempt moves both instead.
    let v = claim_n(&s, &q, "w", 10, LONG);
    assert_eq!(
        v["count"],
        json!(0),
        "a job delivered a 3rd time with max_deliveries 2: {v}"
    );
    let check = |s: &Server| {
        assert_eq!(state(s, &q), (0, 0, 0, 2), "queue after dead-lettering");
        assert!(
            s.diff_all(&q).is_empty(),
            "dead-lettered jobs still in the queue"
        );
        let recs = s.diff_all_raw(&dl);
        assert_eq!(recs.len(), 2, "dead-letter topic: {recs:?}");
        let by_src: BTreeMap<u64, &BTreeMap<String, String>> = recs
            .iter()
            .map(|r| {
                let m: Value = serde_json::from_str(&r["meta"]).expect("meta");
                (m["$dead_letter_src_seq"].as_u64().expect("src seq"), r)
            })
            .collect();
        assert_eq!(
            by_src.keys().copied().collect::<Vec<_>>(),
            vec![1, 2],
            "{recs:?}"
        );
        let one = by_src[&1];
        assert_eq!(one["data"], r#"{ "id" : 1, "x":[1,2] }"#, "data byte-exact");
        assert_eq!(one["$tag"], r#""poison""#);
        let m: Value = serde_json::from_str(&one["meta"]).unwrap();
        assert_eq!(
            m,
            json!({"origin": "api", "$dead_letter_from": q, "$dead_letter_deliveries": 2,
                   "$dead_letter_src_seq": 1}),
            "meta of the moved job"
        );
        let two = by_src[&2];
        assert_eq!(two["data"], r#""plain""#);
        assert!(!two.contains_key("$tag"), "{two:?}");
        let m: Value = serde_json::from_str(&two["meta"]).unwrap();
        assert_eq!(
            m,
            json!({"$dead_letter_from": q, "$dead_letter_deliveries": 2, "$dead_letter_src_seq": 2}),
        );
    };
    check(&s);
    // Moved once, for good: a restart neither duplicates nor resurrects.
    std::thread::sleep(Duration::from_millis(200));
    s.restart_kill9();
    check(&s);
    let v = claim_n(&s, &q, "w", 10, LONG);
    assert_eq!(v["count"], json!(0), "{v}");
}

// ---- /work ------------------------------------------------------------------------------------

/// A seq named twice in one call is one job: it is acked (nacked, extended) once, and the
/// counts say so.
#[test]
fn a_seq_repeated_in_one_call_counts_once() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    append_jobs(&s, "q", 0, 3);
    claim_n(&s, "q", "a", 3, LONG);
    let mut failures = Vec::new();
    // (Not the `extend` helper: it checks that `deadlines` has one entry per extended job.)
    let (st, x) = post(
        &s,
        "q",
        "extend",
        &json!({"node": "a", "seqs": [3, 3], "lease_ms": 5000}),
    );
    assert_eq!(st, 200, "{x}");
    if x["extended"] != json!(1) {
        failures.push(format!("extend [3, 3]: {x}"));
    }
    let n = nack(&s, "q", "a", &[2, 2], None, 0);
    if n["nacked"] != json!(1) {
        failures.push(format!("nack [2, 2]: {n}"));
    }
    let a = ack(&s, "q", "a", &[1, 1], None);
    if a["acked"] != json!(1) {
        failures.push(format!("ack [1, 1]: {a}"));
    }
    assert!(
        failures.is_empty(),
        "one job, counted twice:\n{}",
        failures.join("\n")
    );
    assert_eq!(state(&s, "q"), (2, 1, 1, 0));
}

/// Moving poison jobs to the dead-letter topic does not make a claim come back empty while
/// other jobs are claimable (same-core dead-letter topic, too).
#[test]
fn dead_lettering_does_not_starve_a_claim() {
    let s = Server::start(1);
    make_queue(
        &s,
        "q",
        json!({"max_deliveries": 1, "dead_letter": "q-dead"}),
    );
    append_jobs(&s, "q", 0, 4);
    assert_eq!(claimed_seqs(&claim_n(&s, "q", "a", 2, LONG)), vec![1, 2]);
    assert_eq!(nack(&s, "q", "a", &[1, 2], None, 0)["nacked"], json!(2));
    // 1 and 2 would be delivered a 2nd time: they move; 3 and 4 are there to be claimed.
    let v = claim_n(&s, "q", "a", 2, LONG);
    assert_eq!(s.diff_all("q-dead").len(), 2, "poison jobs moved");
    assert_eq!(state(&s, "q").3, 2, "dead_lettered");
    assert_eq!(
        claimed_seqs(&v),
        vec![3, 4],
        "a claim with max 2 came back with {} jobs while 2 were ready: {v}",
        v["count"]
    );
}
