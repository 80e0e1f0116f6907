//! Graceful drain under load (SPEC §9): SIGTERM while writers are busy — the server exits 0,
//! every acknowledged write is there after the restart, in order, and nothing unacknowledged
//! shows up with data it did not send.

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn sigterm_under_write_load_exits_zero_and_keeps_every_ack() {
    let mut s = Server::start_with(
        2,
        &[
            "--checkpoint-interval-ms",
            "200",
            "--hot-tail-bytes",
            "65536",
        ],
    );
    for t in 0..4 {
        let class = if t % 2 == 0 { "fsync" } else { "disk" };
        assert_eq!(
            s.put(&format!("/v0/topics/d{t}"), &json!({"durability": class}))
                .0,
            201
        );
    }
    let acked: Arc<Mutex<BTreeMap<(u64, u64), String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..8u64 {
        let (port, acked, stop) = (s.port, acked.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let Ok(mut c) = Client::try_connect(port) else {
                return;
            };
            let topic = w % 4;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let data = format!("w{w}-{i}");
                let body = serde_json::to_vec(&json!({"records": [{"data": data}]})).unwrap();
                let Ok(r) = c.try_request(
                    "POST",
                    &format!("/v0/topics/d{topic}"),
                    &[("Content-Type", "application/json")],
                    Some(&body),
                ) else {
                    return;
                };
                match r.status {
                    200 | 201 => {
                        let v = r.json();
                        let seq = v["first_seq"].as_u64().expect("first_seq");
                        acked.lock().unwrap().insert((topic, seq), data);
                    }
                    503 => return,
                    other => panic!("unexpected status {other}: {}", r.text()),
                }
                i += 1;
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(1200));
    s.send_signal("TERM");
    let st = s.wait_exit();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("writer");
    }
    assert!(
        st.success(),
        "SIGTERM under load must exit 0, got {st}\n{}",
        s.log_tail()
    );
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.len() > 50,
        "the load was too light to mean anything: {}",
        acked.len()
    );
    s.spawn_again();
    for t in 0..4u64 {
        let got = s.diff_all(&format!("d{t}"));
        let by_seq: BTreeMap<u64, String> = got
            .iter()
            .map(|r| {
                (
                    r["$seq"].as_u64().expect("$seq"),
                    r["data"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let mut last = 0;
        for seq in by_seq.keys() {
            assert!(*seq > last, "d{t}: seqs out of order");
            last = *seq;
        }
        for ((topic, seq), data) in acked.range((t, 0)..(t + 1, 0)) {
            assert_eq!(
                by_seq.get(seq),
                Some(data),
                "d{topic}: acknowledged seq {seq} lost or changed after the drain"
            );
        }
        // A clean drain leaves no seq gap: the head resumes right after the last record.
        let head = s.topic(&format!("d{t}"))["head_seq"].as_u64().unwrap_or(0);
        assert_eq!(
            head, last,
            "d{t}: head {head} after a clean stop, last record {last}"
        );
    }
}
