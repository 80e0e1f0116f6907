//! Queues (SPEC §7): the `/work` SSE push stream.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::queue::*;
use common::sse::Next;
use common::*;
use serde_json::{json, Value};

const LONG: u64 = 60_000;

#[test]
fn work_stream_keeps_max_leased_refills_on_ack_and_releases_on_disconnect() {
    let s = Server::start(2);
    make_queue(&s, "wq", json!({}));
    append_jobs(&s, "wq", 0, 5);
    let t = Duration::from_secs(5);
    let mut w = open_work(&s, "wq", &format!("node=w1&max=2&lease_ms={LONG}"));
    let j1 = next_job(&mut w, "wq", t);
    let j2 = next_job(&mut w, "wq", t);
    assert_eq!(
        (j1["$seq"].clone(), j2["$seq"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(
        (j1["deliveries"].clone(), j2["deliveries"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(j1["data"], json!({"job": 0}));
    // max=2: no third job while both are held.
    match w.next(Duration::from_millis(800)) {
        Next::Timeout => {}
        Next::Frame(f) if f.is_hb() => {}
        other => panic!("a third frame while 2 jobs are held with max=2: {other:?}"),
    }
    assert_eq!(state(&s, "wq"), (5, 3, 2, 0));
    // Acking one makes the next arrive.
    let id1 = j1["lease_id"].as_str().unwrap().to_string();
    let t_ack = Instant::now();
    assert_eq!(ack(&s, "wq", "w1", &[1], Some(&[id1]))["acked"], json!(1));
    let j3 = next_job(&mut w, "wq", t);
    assert!(
        t_ack.elapsed() < Duration::from_millis(1500),
        "refill took {:?}",
        t_ack.elapsed()
    );
    assert_eq!(j3["$seq"], json!(3));
    // A nack gives the slot back too, and the nacked job is delivered again (first).
    assert_eq!(nack(&s, "wq", "w1", &[2], None, 0)["nacked"], json!(1));
    let j2b = next_job(&mut w, "wq", t);
    assert_eq!(
        (j2b["$seq"].clone(), j2b["deliveries"].clone()),
        (json!(2), json!(2))
    );
    match w.next(Duration::from_millis(300)) {
        Next::Timeout => {}
        Next::Frame(f) if f.is_hb() => {}
        other => panic!("over max: {other:?}"),
    }
    assert_eq!(state(&s, "wq"), (4, 2, 2, 0));

    // Dropping the connection releases its two leases at once (they had 60 s left).
    drop(w);
    let took = wait_for(Duration::from_secs(3), || state(&s, "wq").2 == 0)
        .expect("leases of a closed /work stream still held after 3 s");
    assert!(
        took < Duration::from_millis(1500),
        "released after {took:?}"
    );
    let v = claim_n(&s, "wq", "other", 10, LONG);
    let got = claimed_seqs(&v);
    let mut first = got[..2].to_vec();
    first.sort_unstable();
    assert_eq!(first, vec![2, 3], "released jobs first: {v}");
    assert_eq!(&got[2..], &[4, 5], "{v}");
    assert_eq!(
        deliveries_map(&v),
        BTreeMap::from([(2, 3), (3, 2), (4, 1), (5, 1)]),
        "{v}"
    );
}

#[test]
fn work_stream_pushes_new_jobs_and_frames_have_the_entry_shape() {
    let s = Server::start(1);
    let body = json!({"type": "queue", "lease_ms": LONG});
    let (st, v) = s.put("/v0/topics/push", &body);
    assert_eq!(st, 201, "{v}");
    let mut w = open_work(&s, "push", "node=w&max=5");
    match w.next(Duration::from_millis(400)) {
        Next::Timeout => {}
        other => panic!("frame on an empty queue: {other:?}"),
    }
    let t0 = Instant::now();
    let r = s.post_raw(
        "/v0/topics/push",
        br#"{"records":[{"data":{"a":1},"tag":"t","node":"n","meta":{"m":true}},{"data":2}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let a = next_job(&mut w, "push", Duration::from_secs(5));
    let b = next_job(&mut w, "push", Duration::from_secs(5));
    assert!(
        t0.elapsed() < Duration::from_millis(2000),
        "push took {:?}",
        t0.elapsed()
    );
    assert_eq!(a["$seq"], json!(1));
    assert_eq!(a["$tag"], json!("t"));
    assert_eq!(a["$node"], json!("n"));
    assert_eq!(a["meta"], json!({"m": true}));
    assert_eq!(a["data"], json!({"a": 1}));
    assert_eq!(b["$seq"], json!(2));
    assert!(b.get("meta").is_none() && b.get("$tag").is_none(), "{b}");
    // The pushed jobs are leased to the stream's node with the topic's lease_ms.
    let d = a["deadline"].as_u64().unwrap();
    assert!(d > now_ms() + LONG - 5000, "deadline {d}");
    let ids = [
        a["lease_id"].as_str().unwrap().to_string(),
        b["lease_id"].as_str().unwrap().to_string(),
    ];
    let v = ack(&s, "push", "w", &[1, 2], Some(&ids));
    assert_eq!(v["acked"], json!(2), "{v}");
    assert_eq!(state(&s, "push"), (0, 0, 0, 0));
}

// ---- restarts ---------------------------------------------------------------------------------

/// Deleting a `/work` stream's queue ends the stream with an `event: error` frame whose data
/// is a JSON `{"code", "message"}` object (as on watch streams, SPEC §6).
#[test]
fn work_stream_ends_with_a_json_error_when_its_queue_is_deleted() {
    let s = Server::start(1);
    make_queue(&s, "q", json!({}));
    append_jobs(&s, "q", 0, 1);
    let mut w = open_work(&s, "q", "node=w&max=2");
    next_job(&mut w, "q", Duration::from_secs(5));
    let (st, v) = s.delete("/v0/topics/q");
    assert_eq!((st, &v["deleted"]), (200, &json!(true)), "{v}");
    let f = w.data_frame(Duration::from_secs(5));
    assert_eq!(f.event(), Some("error"), "{f:?}");
    let data = match &f {
        common::sse::Frame::Event { data, .. } => data.clone(),
        _ => unreachable!(),
    };
    let e: Value = serde_json::from_str(&data)
        .unwrap_or_else(|_| panic!("error frame data is not JSON: {data:?}"));
    assert_eq!(e["code"], json!("topic_not_found"), "{e}");
    assert!(e["message"].is_string(), "{e}");
    match w.next(Duration::from_secs(5)) {
        Next::Closed => {}
        other => panic!("stream still open after its error frame: {other:?}"),
    }
}
