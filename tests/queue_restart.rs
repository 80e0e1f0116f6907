//! Queues (SPEC §7): what survives a restart — leases and delivery counts with
//! `leases_durable` on and off, checkpoints, lease ids never reused.

mod common;

use std::collections::BTreeSet;

use common::queue::*;
use common::*;
use serde_json::{json, Value};

const LONG: u64 = 60_000;

fn restart_case(leases_durable: bool) {
    let mut s = Server::start(2);
    make_queue(
        &s,
        "q",
        json!({"durable": true, "leases_durable": leases_durable}),
    );
    append_jobs(&s, "q", 0, 7);
    let a = claim_n(&s, "q", "a", 4, LONG);
    assert_eq!(claimed_seqs(&a), vec![1, 2, 3, 4]);
    let a_ids = lease_map(&a);
    assert_eq!(ack(&s, "q", "a", &[1], None)["acked"], json!(1));
    assert_eq!(nack(&s, "q", "a", &[3], None, 0)["nacked"], json!(1));
    assert_eq!(nack(&s, "q", "a", &[4], None, LONG)["nacked"], json!(1));
    s.restart_kill9();

    let (count, ready, in_flight, _) = state(&s, "q");
    assert_eq!(count, 6, "acked job 1 came back (or a job was lost)");
    let b = claim_n(&s, "q", "b", 10, LONG);
    let got = claimed_seqs(&b);
    assert!(
        !got.contains(&1),
        "acked job 1 delivered after restart: {b}"
    );
    let dv = deliveries_map(&b);
    if leases_durable {
        assert_eq!(
            (ready, in_flight),
            (4, 1),
            "after restart: 2 leased, 4 delayed, 3 5 6 7 ready"
        );
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            vec![3, 5, 6, 7],
            "job 2 is still leased to a and job 4 still delayed: {b}"
        );
        assert_eq!(got[0], 3, "the nacked job first: {b}");
        assert_eq!(dv[&3], 2, "delivery count of 3 went back: {b}");
        // a still holds 2, by the same lease id.
        let v = ack(&s, "q", "a", &[2], Some(&[a_ids[&2].clone()]));
        assert_eq!(v["acked"], json!(1), "a's lease on 2 did not survive: {v}");
        // Counts keep growing after a graceful restart too.
        assert_eq!(nack(&s, "q", "b", &[3], None, 0)["nacked"], json!(1));
        s.restart_graceful();
        let c = claim_n(&s, "q", "c", 10, LONG);
        assert_eq!(claimed_seqs(&c), vec![3], "{c}");
        assert_eq!(deliveries_map(&c)[&3], 3, "{c}");
        assert_eq!(state(&s, "q"), (5, 0, 4, 0), "3 5 6 7 leased, 4 delayed");
    } else {
        assert_eq!(in_flight, 0, "leases_durable false: leases are forgotten");
        assert_eq!(ready, 6, "leases_durable false: nack delays are forgotten");
        assert_eq!(
            got,
            vec![2, 3, 4, 5, 6, 7],
            "every unacked job is claimable: {b}"
        );
        let v = ack(&s, "q", "a", &[2], Some(&[a_ids[&2].clone()]));
        assert_eq!(
            v["acked"],
            json!(0),
            "a forgotten lease acked a job now b's: {v}"
        );
        assert_eq!(ack(&s, "q", "b", &[2, 3], None)["acked"], json!(2));
        s.restart_graceful();
        let c = claim_n(&s, "q", "c", 10, LONG);
        let mut got = claimed_seqs(&c);
        got.sort_unstable();
        assert_eq!(got, vec![4, 5, 6, 7], "{c}");
    }
    // Acked jobs never come back.
    let left = seqs_of(&s.diff_all("q"));
    assert!(
        !left.contains(&1) && !left.contains(&2),
        "acked jobs present: {left:?}"
    );
}

#[test]
fn durable_leases_and_delivery_counts_survive_kill9() {
    restart_case(true);
}

#[test]
fn volatile_leases_are_forgotten_at_kill9_but_acks_are_not() {
    restart_case(false);
}

/// Queue records and state move through checkpoints (segments + snapshot) and come back.
#[test]
fn queue_state_survives_checkpoints_and_restart() {
    let mut s = Server::start_with(
        1,
        &[
            "--checkpoint-interval-ms",
            "100",
            "--hot-tail-bytes",
            "4096",
        ],
    );
    make_queue(&s, "cq", json!({"durable": true, "leases_durable": true}));
    let pad = "x".repeat(150);
    let recs: Vec<Value> = (0..300u64)
        .map(|k| json!({"data": {"job": k, "pad": pad}, "tag": format!("j{k}")}))
        .collect();
    s.append("cq", Value::Array(recs));
    // Deliveries and acks spread over segment-resident and hot jobs.
    let a = claim_n(&s, "cq", "a", 60, LONG);
    assert_eq!(claimed_seqs(&a), (1..=60).collect::<Vec<u64>>());
    let odd: Vec<u64> = (1..=60).filter(|x| x % 2 == 1).collect();
    assert_eq!(ack(&s, "cq", "a", &odd, None)["acked"], json!(30));
    let nacked: Vec<u64> = (2..=20).step_by(2).collect();
    assert_eq!(nack(&s, "cq", "a", &nacked, None, 0)["nacked"], json!(10));
    // A checkpoint with leases, delays and acks in it; the jobs are in segments by then.
    storage::wait_for_checkpoint_of(&s, &["cq"]);
    storage::assert_has_segments(&s, "300 jobs of 170 bytes, --hot-tail-bytes 4096");
    // Work after the checkpoints: redeliver the nacked ones, ack some of the tail.
    let b = claim_n(&s, "cq", "b", 10, LONG);
    let mut got = claimed_seqs(&b);
    got.sort_unstable();
    assert_eq!(got, nacked, "{b}");
    assert!(deliveries_map(&b).values().all(|d| *d == 2), "{b}");
    let c = claim_n(&s, "cq", "c", 40, LONG);
    assert_eq!(claimed_seqs(&c), (61..=100).collect::<Vec<u64>>());
    let tail_acked: Vec<u64> = (61..=100).filter(|x| x % 3 == 0).collect();
    assert_eq!(
        ack(&s, "cq", "c", &tail_acked, None)["acked"],
        json!(tail_acked.len())
    );
    // No wait here: what follows the checkpoint comes back by WAL replay over the snapshot
    // (or from a later checkpoint).
    let acked: BTreeSet<u64> = odd.iter().chain(&tail_acked).copied().collect();
    let want_count = 300 - acked.len() as u64;
    let before = state(&s, "cq");
    assert_eq!(before.0, want_count);

    s.restart_kill9();
    assert_eq!(state(&s, "cq"), before, "queue state after restart");
    let live = seqs_of(&s.diff_all("cq"));
    let want: Vec<u64> = (1..=300).filter(|x| !acked.contains(x)).collect();
    assert_eq!(live, want, "records after restart");
    // a's leases (22..=60 even) and b's, c's survive; everything else is claimable.
    let d = claim_n(&s, "cq", "d", 1000, LONG);
    let got = claimed_seqs(&d);
    assert_eq!(
        got,
        (101..=300).collect::<Vec<u64>>(),
        "only fresh jobs are claimable"
    );
    let raw = s.diff_all("cq");
    for r in raw.iter().filter(|r| r["$seq"].as_u64().unwrap() > 100) {
        let k = r["$seq"].as_u64().unwrap() - 1;
        assert_eq!(r["data"], json!({"job": k, "pad": pad}));
        assert_eq!(r["$tag"], json!(format!("j{k}")));
    }
    // Ack every held job by its holder with its pre-restart lease ids.
    let a_left: Vec<u64> = (22..=60).step_by(2).collect();
    let ids_a: Vec<String> = a_left.iter().map(|x| lease_map(&a)[x].clone()).collect();
    assert_eq!(
        ack(&s, "cq", "a", &a_left, Some(&ids_a))["acked"],
        json!(a_left.len())
    );
    assert_eq!(ack(&s, "cq", "b", &nacked, None)["acked"], json!(10));
    let c_left: Vec<u64> = (61..=100).filter(|x| x % 3 != 0).collect();
    assert_eq!(
        ack(&s, "cq", "c", &c_left, None)["acked"],
        json!(c_left.len())
    );
    let v = ack(&s, "cq", "d", &got, None);
    assert_eq!(v["acked"], json!(200), "{v}");
    assert_eq!(state(&s, "cq"), (0, 0, 0, 0));
    storage::wait_for_checkpoint_of(&s, &["cq"]);
    s.restart_kill9();
    assert_eq!(
        state(&s, "cq"),
        (0, 0, 0, 0),
        "acked jobs came back after a checkpoint"
    );
    assert!(s.diff_all("cq").is_empty());
    assert_eq!(claim_n(&s, "cq", "e", 1000, LONG)["count"], json!(0));
}

// ---- found while testing ----------------------------------------------------------------------

/// Lease ids are fencing tokens: one handed out before a crash never matches a lease handed
/// out after it, even with `leases_durable: false` and the same node re-claiming.
#[test]
fn lease_ids_are_not_reused_after_kill9() {
    let mut s = Server::start(1);
    make_queue(&s, "q", json!({"durable": true}));
    append_jobs(&s, "q", 0, 1);
    let before = claim_n(&s, "q", "host-1", 1, LONG);
    let old = lease_map(&before)[&1].clone();
    s.restart_kill9();
    let after = claim_n(&s, "q", "host-1", 1, LONG);
    assert_eq!(claimed_seqs(&after), vec![1], "volatile lease forgotten");
    let new = lease_map(&after)[&1].clone();
    // The worker that claimed before the crash acks late, with its old lease id.
    let v = ack(&s, "q", "host-1", &[1], Some(std::slice::from_ref(&old)));
    assert_eq!(
        v["acked"],
        json!(0),
        "a pre-crash lease id ({old}) acked the job re-leased after the restart as {new}: {v}"
    );
    assert_ne!(old, new, "lease id handed out again after a restart");
}
