//! Durable Streams (`/v1/stream/{name}`): every acknowledged append is there, in order, after
//! `kill -9` under concurrent load (text and JSON streams, shared and single-writer), and
//! offsets are never reused after the restart. The other crash and restart paths are in
//! tests/streams.rs.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::ds::{self, expect, text, FLAGS, JSON, TEXT};
use common::*;
use serde_json::Value;

// ---- 3. acknowledged appends after kill -9 under load ---------------------------------------

/// One acknowledged append: the items it wrote (lines or JSON messages) and its answer's
/// `Stream-Next-Offset` (the tail after it: at or past its own last position).
#[derive(Debug, Clone)]
struct Ack {
    items: Vec<String>,
    next: u64,
}

struct WriterLog {
    stream: &'static str,
    acks: Vec<Ack>,
    /// The producer request whose answer never came: (seq, body, items).
    in_flight: Option<(u64, Vec<u8>, Vec<String>)>,
    /// Appends attempted (acknowledged or not).
    attempted: u64,
}

/// Writer `w` on `stream`: text lines or JSON batches (some a bare value, some arrays that
/// flatten to 1-3 messages), as producer `solo-{w}` when `producer`, until the connection
/// fails.
fn load_writer(
    port: u16,
    w: u64,
    stream: &'static str,
    json: bool,
    producer: bool,
    stop: Arc<AtomicBool>,
) -> WriterLog {
    let mut log = WriterLog {
        stream,
        acks: Vec::new(),
        in_flight: None,
        attempted: 0,
    };
    let Ok(mut c) = Client::try_connect(port) else {
        return log;
    };
    c.set_read_timeout(Duration::from_secs(15));
    let ct = if json { JSON } else { TEXT };
    let id = format!("solo-{w}");
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (items, body) = if json {
            let n = 1 + (i % 3) as usize;
            let items: Vec<String> = (0..n)
                .map(|k| format!(r#"{{"w":{w},"i":{i},"k":{k}}}"#))
                .collect();
            let body = if i % 4 == 3 {
                items[0].clone()
            } else {
                format!("[{}]", items.join(","))
            };
            let items = if i % 4 == 3 {
                vec![items[0].clone()]
            } else {
                items
            };
            (items, body)
        } else {
            let line = format!("w{w}-i{i}");
            (vec![line.clone()], format!("{line}\n"))
        };
        let seq = i.to_string();
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if producer {
            headers = vec![
                ("Producer-Id", &id),
                ("Producer-Epoch", "0"),
                ("Producer-Seq", &seq),
            ];
        }
        log.attempted = i + 1;
        let r = match ds::try_post(&mut c, stream, ct, &headers, body.as_bytes()) {
            Ok(r) => r,
            Err(_) => {
                if producer {
                    log.in_flight = Some((i, body.into_bytes(), items));
                }
                return log;
            }
        };
        match r.status {
            200 | 204 => {
                let want = if producer { 200 } else { 204 };
                assert_eq!(r.status, want, "{stream} w{w} i{i}: {:?}", r.headers);
                log.acks.push(Ack {
                    items,
                    next: ds::next_pos(&r),
                });
                i += 1;
            }
            // Shed: not written; the same append again.
            429 => std::thread::sleep(Duration::from_millis(5)),
            st if st >= 500 => return log,
            st => panic!("{stream} w{w} i{i}: unexpected {st} {}", r.text()),
        }
    }
    log
}

/// The stream's items in position order (position = index + 1): lines of a text stream,
/// messages of a JSON stream; each page's count matches its offsets.
fn stream_items(s: &Server, name: &str, json: bool) -> Vec<String> {
    if json {
        return ds::read_json_messages(s, name);
    }
    let mut out = Vec::new();
    for p in ds::read_pages(s, name) {
        let body = text(&p.body);
        let lines: Vec<String> = body.lines().map(str::to_string).collect();
        assert!(
            body.is_empty() || body.ends_with('\n'),
            "{name}: a page ends inside an append: {body:?}"
        );
        assert_eq!(
            lines.len() as u64,
            p.next - p.from,
            "{name}: page from {} to {} holds {} appends",
            p.from,
            p.next,
            lines.len()
        );
        out.extend(lines);
    }
    out
}

#[test]
fn acknowledged_appends_survive_kill9_under_load() {
    let mut s = Server::start_with(2, &FLAGS);
    // (stream, json, writers, producer): the solo streams have one writer, so each answer's
    // Stream-Next-Offset is exactly the append's own last position.
    let streams: [(&'static str, bool, &[u64], bool); 4] = [
        ("load/shared-text", false, &[0, 1, 2], false),
        ("load/solo-text", false, &[3], true),
        ("load/shared-json", true, &[4, 5], false),
        ("load/solo-json", true, &[6], true),
    ];
    for (name, json, _, _) in streams {
        ds::create(&s, name, if json { JSON } else { TEXT });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (name, json, writers, producer) in streams {
        for &w in writers {
            let (port, stop) = (s.port, stop.clone());
            threads.push(std::thread::spawn(move || {
                load_writer(port, w, name, json, producer, stop)
            }));
        }
    }
    std::thread::sleep(Duration::from_millis(900));
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    let logs: Vec<(u64, WriterLog)> = threads
        .into_iter()
        .enumerate()
        .map(|(w, t)| (w as u64, t.join().expect("writer thread")))
        .collect();
    let acked: usize = logs.iter().map(|(_, l)| l.acks.len()).sum();
    assert!(
        acked >= 40,
        "the load was too light to mean anything: {acked} acks"
    );
    eprintln!(
        "acks per writer: {:?}",
        logs.iter().map(|(_, l)| l.acks.len()).collect::<Vec<_>>()
    );
    s.spawn_again();

    for (name, json, writers, producer) in streams {
        let mut items = stream_items(&s, name, json);
        // Every item is one some writer of this stream sent, and it is there once.
        let mut at: HashMap<&str, u64> = HashMap::new();
        for (k, it) in items.iter().enumerate() {
            assert!(
                at.insert(it, k as u64 + 1).is_none(),
                "{name}: {it} is there twice"
            );
        }
        for it in &items {
            let (w, i) = if json {
                let v: Value = serde_json::from_str(it).expect("a message we sent");
                (v["w"].as_u64().unwrap(), v["i"].as_u64().unwrap())
            } else {
                let (w, i) = it
                    .strip_prefix('w')
                    .and_then(|r| r.split_once("-i"))
                    .unwrap_or_else(|| panic!("{name}: a line nobody wrote: {it:?}"));
                (w.parse().unwrap(), i.parse().unwrap())
            };
            let log = logs
                .iter()
                .find(|(lw, l)| *lw == w && l.stream == name)
                .map(|(_, l)| l)
                .unwrap_or_else(|| panic!("{name}: {it} from a writer of another stream"));
            assert!(i < log.attempted, "{name}: {it} was never sent");
        }
        let mut max_next = 0;
        for &w in writers {
            let log = &logs[w as usize].1;
            let mut prev = 0;
            for a in &log.acks {
                let first = at.get(a.items[0].as_str()).copied().unwrap_or_else(|| {
                    panic!(
                        "{name}: acknowledged {:?} (next offset {}) is lost",
                        a.items, a.next
                    )
                });
                for (k, it) in a.items.iter().enumerate() {
                    assert_eq!(
                        at.get(it.as_str()),
                        Some(&(first + k as u64)),
                        "{name}: the batch {:?} is not contiguous and in order",
                        a.items
                    );
                }
                let last = first + a.items.len() as u64 - 1;
                assert!(
                    last <= a.next,
                    "{name}: {:?} at {first}..={last}, past its answer's next offset {}",
                    a.items,
                    a.next
                );
                if producer {
                    assert_eq!(
                        last, a.next,
                        "{name}: a single writer's Stream-Next-Offset is its append's end"
                    );
                }
                assert!(first > prev, "{name}: w{w}'s appends out of order");
                prev = last;
                max_next = max_next.max(a.next);
            }
        }
        assert!(
            items.len() as u64 >= max_next,
            "{name}: the tail {} is below an acknowledged next offset {max_next}",
            items.len()
        );
        // The producer's unanswered request, retried: a duplicate if it was kept, new data
        // if it was not; there exactly once either way.
        if producer {
            let log = &logs[writers[0] as usize].1;
            if let Some((seq, body, its)) = &log.in_flight {
                let had = at.contains_key(its[0].as_str());
                let id = format!("solo-{}", writers[0]);
                let ct = if json { JSON } else { TEXT };
                let r = ds::producer_post(&mut s.client(), name, ct, (&id, 0, *seq), body);
                expect(&r, if had { 204 } else { 200 }, &format!("{name}: retry"));
                eprintln!("{name}: the unanswered append was kept: {had}");
                let again = stream_items(&s, name, json);
                let n = again.iter().filter(|x| **x == its[0]).count();
                assert_eq!(n, 1, "{name}: the retried append is there {n} times");
                items = again;
            }
        }
        // New appends after the restart take new positions: nothing acknowledged is reused.
        let before = items.len() as u64;
        let (body, item): (&[u8], &str) = if json {
            (br#"{"after":"restart"}"#, r#"{"after":"restart"}"#)
        } else {
            (b"after-restart\n", "after-restart")
        };
        let next = ds::append(&s, name, if json { JSON } else { TEXT }, body);
        assert_eq!(
            next,
            before + 1,
            "{name}: the first append after the restart"
        );
        assert!(next > max_next, "{name}: position {next} reused");
        let now = stream_items(&s, name, json);
        assert_eq!(
            &now[..items.len()],
            &items[..],
            "{name}: old positions changed"
        );
        assert_eq!(now.last().map(String::as_str), Some(item));
    }
}
