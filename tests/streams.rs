//! Durable Streams (`/v1/stream/{name}`) across crashes and restarts, the paths the public
//! conformance suite (scripts/ds-conformance.sh) does not reach: producer state, `Stream-Seq`
//! and the closed flag after `kill -9` (from the WAL alone, and from a snapshot); open
//! long-polls when the server dies or drains; forks and soft deletes across restarts; `/v0`
//! topics and `/v1` streams of the same name kept apart. Acknowledged appends after `kill -9`
//! under load are in tests/streams_load.rs.

mod common;

use std::io;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::ds::{self, expect, flags_with, offset, text, FLAGS, JSON, TEXT};
use common::sse::name_on_shard;
use common::storage::wait_for_checkpoint_of;
use common::*;
use serde_json::{json, Value};

// ---- 1. producer state, Stream-Seq and the closed flag after kill -9 ------------------------

/// Idempotent-producer state, the last `Stream-Seq` and the closed flag are set, the server
/// is killed with `kill -9` and restarted on the same data dir; each is still enforced.
/// With `checkpoint`, a checkpoint writes a snapshot first (so the state comes back from the
/// snapshot, plus one append logged after it), otherwise from WAL replay alone.
fn producer_state_survives_kill9(checkpoint: bool) {
    let flags = if checkpoint {
        flags_with(&["--checkpoint-interval-ms", "200"])
    } else {
        FLAGS.to_vec()
    };
    let mut s = Server::start_with(2, &flags);
    let mut c = s.client();
    let (prod, seqs, closed, by_producer) = (
        "prod/text",
        "prod/seq",
        "prod/closed",
        "prod/closed-by-producer",
    );
    ds::create(&s, prod, TEXT);
    let mut expected = String::new();
    // Producer "w", epoch 0, seqs 0..=4; one request per batch, one position each.
    for seq in 0..5u64 {
        let data = format!("w{seq};");
        let r = ds::producer_post(&mut c, prod, TEXT, ("w", 0, seq), data.as_bytes());
        expect(&r, 200, &format!("w seq {seq}"));
        assert_eq!(ds::header_u64(&r, "producer-seq"), seq);
        expected.push_str(&data);
        assert_eq!(ds::next_pos(&r), seq + 1);
    }
    // Producer "x": epoch 0, then a new epoch 1 (seqs 0 and 1).
    for (epoch, seq) in [(0, 0), (1, 0), (1, 1)] {
        let data = format!("x{epoch}-{seq};");
        let r = ds::producer_post(&mut c, prod, TEXT, ("x", epoch, seq), data.as_bytes());
        expect(&r, 200, &format!("x epoch {epoch} seq {seq}"));
        assert_eq!(ds::header_u64(&r, "producer-epoch"), epoch);
        expected.push_str(&data);
    }
    ds::create(&s, seqs, TEXT);
    let r = ds::post(&mut c, seqs, TEXT, &[("Stream-Seq", "b")], b"seq-b;");
    expect(&r, 204, "append with Stream-Seq b");
    // Closed by a close without data (a whole-state frame) ...
    ds::create(&s, closed, TEXT);
    ds::append(&s, closed, TEXT, b"last");
    let r = ds::post(&mut c, closed, TEXT, &[("Stream-Closed", "true")], b"");
    expect(&r, 204, "close");
    assert_eq!(r.header("stream-closed"), Some("true"));
    // ... and by a producer's final append with data (the append's own frame).
    ds::create(&s, by_producer, JSON);
    let r = ds::producer_post(&mut c, by_producer, JSON, ("z", 0, 0), b"[1,2]");
    expect(&r, 200, "z seq 0");
    let (e, q) = ("0".to_string(), "1".to_string());
    let closing: [(&str, &str); 4] = [
        ("Producer-Id", "z"),
        ("Producer-Epoch", &e),
        ("Producer-Seq", &q),
        ("Stream-Closed", "true"),
    ];
    let r = ds::post(&mut c, by_producer, JSON, &closing, b"3");
    expect(&r, 200, "z seq 1 closing");
    assert_eq!(r.header("stream-closed"), Some("true"));

    let mut last_w = 4;
    if checkpoint {
        // Twice: the second snapshot certainly started after every write above.
        let topics: Vec<String> = [prod, seqs, closed, by_producer]
            .iter()
            .map(|n| format!("/{n}"))
            .collect();
        wait_for_checkpoint_of(&s, &topics);
        wait_for_checkpoint_of(&s, &topics);
        // One more append after the snapshot: replayed from the WAL on top of it.
        let r = ds::producer_post(&mut c, prod, TEXT, ("w", 0, 5), b"w5;");
        expect(&r, 200, "w seq 5 after the checkpoint");
        expected.push_str("w5;");
        last_w = 5;
    }
    let tail = expected.matches(';').count() as u64;
    drop(c);
    s.kill9();
    s.spawn_again();
    let mut c = s.client();

    assert_eq!(
        text(&ds::read_all(&s, prod)),
        expected,
        "the stream after the restart"
    );
    // A retry of the last acknowledged (epoch, seq) is a duplicate: 204, nothing written.
    let r = ds::producer_post(&mut c, prod, TEXT, ("w", 0, last_w), b"w-retry;");
    expect(
        &r,
        204,
        "retry of the last acknowledged seq after the restart",
    );
    assert_eq!(ds::header_u64(&r, "producer-epoch"), 0);
    assert_eq!(ds::header_u64(&r, "producer-seq"), last_w);
    assert_eq!(ds::next_pos(&r), tail);
    // An older one too, answering with the highest accepted seq.
    let r = ds::producer_post(&mut c, prod, TEXT, ("w", 0, 2), b"w-retry;");
    expect(&r, 204, "retry of an older seq after the restart");
    assert_eq!(ds::header_u64(&r, "producer-seq"), last_w);
    assert_eq!(
        text(&ds::read_all(&s, prod)),
        expected,
        "a retry wrote data"
    );
    // The next seq is new data.
    let next = last_w + 1;
    let data = format!("w{next};");
    let r = ds::producer_post(&mut c, prod, TEXT, ("w", 0, next), data.as_bytes());
    expect(&r, 200, "the next seq after the restart");
    assert_eq!(ds::header_u64(&r, "producer-seq"), next);
    assert_eq!(ds::next_pos(&r), tail + 1);
    expected.push_str(&data);
    // A gap names the expected seq.
    let r = ds::producer_post(&mut c, prod, TEXT, ("w", 0, next + 2), b"gap;");
    expect(&r, 409, "a seq gap after the restart");
    assert_eq!(ds::header_u64(&r, "producer-expected-seq"), next + 1);
    assert_eq!(ds::header_u64(&r, "producer-received-seq"), next + 2);
    // "x" moved to epoch 1: epoch 0 is fenced, epoch 1 continues at seq 2.
    let r = ds::producer_post(&mut c, prod, TEXT, ("x", 0, 1), b"zombie;");
    expect(&r, 403, "a stale epoch after the restart");
    assert_eq!(ds::header_u64(&r, "producer-epoch"), 1);
    let r = ds::producer_post(&mut c, prod, TEXT, ("x", 1, 5), b"gap;");
    expect(&r, 409, "x: a seq gap after the restart");
    assert_eq!(ds::header_u64(&r, "producer-expected-seq"), 2);
    let r = ds::producer_post(&mut c, prod, TEXT, ("x", 1, 1), b"x-retry;");
    expect(&r, 204, "x: retry of its last seq");
    let r = ds::producer_post(&mut c, prod, TEXT, ("x", 1, 2), b"x1-2;");
    expect(&r, 200, "x: the next seq");
    expected.push_str("x1-2;");
    assert_eq!(text(&ds::read_all(&s, prod)), expected);

    // Stream-Seq: "b" was the last one.
    for (v, status) in [("a", 409), ("b", 409), ("c", 204)] {
        let r = ds::post(&mut c, seqs, TEXT, &[("Stream-Seq", v)], b"seq;");
        expect(&r, status, &format!("Stream-Seq {v} after the restart"));
    }
    assert_eq!(text(&ds::read_all(&s, seqs)), "seq-b;seq;");

    // The closed stream stays closed.
    let h = ds::head(&s, closed);
    expect(&h, 200, "HEAD of the closed stream");
    assert_eq!(h.header("stream-closed"), Some("true"), "{:?}", h.headers);
    let r = ds::post(&mut c, closed, TEXT, &[], b"more");
    expect(&r, 409, "an append to a closed stream after the restart");
    assert_eq!(r.header("stream-closed"), Some("true"), "{:?}", r.headers);
    assert_eq!(ds::next_pos(&r), 1);
    let g = ds::get(&s, &format!("{}?offset=-1", ds::path(closed)));
    expect(&g, 200, "read of the closed stream");
    assert_eq!(g.body, b"last");
    assert_eq!(g.header("stream-closed"), Some("true"), "{:?}", g.headers);
    let r = ds::post(&mut c, closed, TEXT, &[("Stream-Closed", "true")], b"");
    expect(&r, 204, "closing a closed stream again");

    // Closed by a producer: a retry of the closing append is still a duplicate; the next
    // seq finds the stream closed.
    let r = ds::post(&mut c, by_producer, JSON, &closing, b"3");
    expect(&r, 204, "retry of the closing append after the restart");
    assert_eq!(r.header("stream-closed"), Some("true"), "{:?}", r.headers);
    let r = ds::producer_post(&mut c, by_producer, JSON, ("z", 0, 2), b"4");
    expect(&r, 409, "an append after the close, after the restart");
    assert_eq!(r.header("stream-closed"), Some("true"), "{:?}", r.headers);
    assert_eq!(ds::read_json_messages(&s, by_producer), ["1", "2", "3"]);
}

#[test]
fn producer_state_survives_kill9_from_wal_replay() {
    producer_state_survives_kill9(false);
}

#[test]
fn producer_state_survives_kill9_from_snapshot() {
    producer_state_survives_kill9(true);
}

// ---- 2. open long-polls when the server dies or drains --------------------------------------

type PollResult = (String, io::Result<Resp>, Duration);

/// Starts a long-poll per `(name, offset)` on its own thread; each sends its outcome.
fn start_polls(
    port: u16,
    polls: &[(&str, String)],
    timeout: Duration,
) -> mpsc::Receiver<PollResult> {
    let (tx, rx) = mpsc::channel();
    for (name, off) in polls {
        let (tx, name, off) = (tx.clone(), name.to_string(), off.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let r = ds::long_poll(port, &name, &off, timeout);
            let _ = tx.send((name, r, t0.elapsed()));
        });
    }
    rx
}

/// Collects `n` poll outcomes, failing if one does not come within `within`.
fn collect_polls(rx: &mpsc::Receiver<PollResult>, n: usize, within: Duration) -> Vec<PollResult> {
    let deadline = Instant::now() + within;
    (0..n)
        .map(|i| {
            let left = deadline.saturating_duration_since(Instant::now());
            rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!("long-poll {i} of {n} neither answered nor failed within {within:?}")
            })
        })
        .collect()
}

#[test]
fn open_long_polls_fail_on_kill9_and_resume_after_restart() {
    // Long enough that the polls are certainly still open when the server is killed.
    let mut s = Server::start_with(2, &["--ds-long-poll-ms", "3000"]);
    let (t, j) = ("lp/text", "lp/json");
    ds::create(&s, t, TEXT);
    ds::create(&s, j, JSON);
    ds::append(&s, t, TEXT, b"a;");
    assert_eq!(ds::append(&s, t, TEXT, b"b;"), 2);
    assert_eq!(ds::append(&s, j, JSON, b"[1,2]"), 2);
    let polls = [
        (t, offset(2)),
        (t, offset(2)),
        (j, offset(2)),
        (j, offset(2)),
    ];
    let rx = start_polls(s.port, &polls, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        rx.try_recv().is_err(),
        "a long-poll at the tail answered before any data came"
    );
    s.kill9();
    let killed = Instant::now();
    for (name, r, _) in collect_polls(&rx, polls.len(), Duration::from_secs(5)) {
        match r {
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "{name}: the long-poll timed out instead of seeing the connection fail: {e}"
            ),
            Ok(r) => panic!(
                "{name}: a long-poll got an answer from a killed server: {} {:?}",
                r.status, r.headers
            ),
        }
    }
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "the long-polls took {:?} to notice the kill",
        killed.elapsed()
    );

    s.spawn_again();
    // The same polls, reissued from the same offset, get exactly what is appended now.
    let rx = start_polls(s.port, &polls, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let appended = Instant::now();
    assert_eq!(ds::append(&s, t, TEXT, b"c;"), 3);
    assert_eq!(ds::append(&s, j, JSON, br#"[3,{"k":4}]"#), 4);
    for (name, r, _) in collect_polls(&rx, polls.len(), Duration::from_secs(10)) {
        let r = r.unwrap_or_else(|e| panic!("{name}: long-poll after the restart: {e}"));
        expect(&r, 200, &format!("{name}: long-poll after the restart"));
        if name == t {
            assert_eq!(
                text(&r.body),
                "c;",
                "{name}: data of the reissued long-poll"
            );
            assert_eq!(ds::next_pos(&r), 3);
        } else {
            assert_eq!(
                text(&r.body),
                r#"[3,{"k":4}]"#,
                "{name}: data of the reissued long-poll"
            );
            assert_eq!(ds::next_pos(&r), 4);
        }
        assert_eq!(r.header("stream-up-to-date"), Some("true"));
    }
    // Woken by the appends, not by the poll's timeout.
    assert!(
        appended.elapsed() < Duration::from_millis(2500),
        "long-polls after the restart were answered {:?} after the appends",
        appended.elapsed()
    );
    assert_eq!(text(&ds::read_all(&s, t)), "a;b;c;");
    assert_eq!(ds::read_json_messages(&s, j), ["1", "2", "3", r#"{"k":4}"#]);
}

/// SIGTERM while long-polls wait at the tail: the drain ends them at once with `503
/// shutting_down` (and `Retry-After`), rather than holding the exit for the poll window or
/// the drain timeout, and the server exits 0 within a few seconds.
#[test]
fn sigterm_with_open_long_polls_exits_zero() {
    // A poll window far longer than the drain may take.
    let mut s = Server::start_with(2, &["--ds-long-poll-ms", "20000"]);
    let names = ["drain/a", "drain/b", "drain/c"];
    for n in names {
        ds::create(&s, n, TEXT);
        assert_eq!(ds::append(&s, n, TEXT, b"before;"), 1);
    }
    let polls: Vec<(&str, String)> = names.iter().map(|n| (*n, offset(1))).collect();
    let rx = start_polls(s.port, &polls, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx.try_recv().is_err(), "a long-poll answered too early");
    let t0 = Instant::now();
    s.send_signal("TERM");
    for (name, r, _) in collect_polls(&rx, polls.len(), Duration::from_secs(10)) {
        let r = r.unwrap_or_else(|e| panic!("{name}: no answer to a long-poll at the drain: {e}"));
        expect(&r, 503, &format!("{name}: long-poll at the drain"));
        assert_eq!(r.json()["error"]["code"], json!("shutting_down"), "{name}");
        assert!(r.header("retry-after").is_some(), "{name}: {:?}", r.headers);
    }
    let answered = t0.elapsed();
    let st = s.wait_exit();
    let took = t0.elapsed();
    assert!(
        st.success(),
        "SIGTERM with open long-polls must exit 0, got {st}\n{}",
        s.log_tail()
    );
    assert!(
        answered < Duration::from_secs(2),
        "open long-polls were answered {answered:?} after SIGTERM"
    );
    assert!(
        took < Duration::from_secs(5),
        "the drain took {took:?} with long-polls open"
    );
    s.spawn_again();
    let rx = start_polls(s.port, &polls, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    for n in names {
        assert_eq!(ds::append(&s, n, TEXT, b"after;"), 2);
    }
    for (name, r, _) in collect_polls(&rx, polls.len(), Duration::from_secs(10)) {
        let r = r.unwrap_or_else(|e| panic!("{name}: long-poll after the restart: {e}"));
        expect(&r, 200, &format!("{name}: long-poll after the restart"));
        assert_eq!(text(&r.body), "after;");
    }
    for n in names {
        assert_eq!(text(&ds::read_all(&s, n)), "before;after;");
    }
}

// ---- 4. forks and soft deletes across restarts ----------------------------------------------

#[test]
fn forks_and_soft_deleted_sources_survive_kill9() {
    let mut s = Server::start_with(2, &flags_with(&["--checkpoint-interval-ms", "200"]));
    // Source and fork on different cores: the fork's reference crosses the mesh.
    let src_topic = name_on_shard("/fk-src-", 0, 2);
    let fork_topic = name_on_shard("/fk-fork-", 1, 2);
    let (src, fork) = (&src_topic[1..], &fork_topic[1..]);
    let mut c = s.client();
    ds::create(&s, src, TEXT);
    for d in ["a;", "b;", "c;"] {
        ds::append(&s, src, TEXT, d.as_bytes());
    }
    let from = ds::path(src);
    let at = offset(2);
    let r = ds::put(
        &mut c,
        fork,
        TEXT,
        &[("Stream-Forked-From", &from), ("Stream-Fork-Offset", &at)],
        b"",
    );
    expect(&r, 201, "fork at offset 2");
    assert_eq!(ds::next_pos(&r), 2);
    assert_eq!(ds::append(&s, fork, TEXT, b"x;"), 3);
    assert_eq!(ds::append(&s, src, TEXT, b"d;"), 4);
    assert_eq!(text(&ds::read_all(&s, fork)), "a;b;x;");
    assert_eq!(text(&ds::read_all(&s, src)), "a;b;c;d;");

    let r = c.request("DELETE", &ds::path(src), &[], None);
    expect(&r, 204, "DELETE of a source with a fork");
    let gone = |s: &Server, when: &str| {
        let r = ds::get(s, &format!("{}?offset=-1", ds::path(src)));
        expect(&r, 410, &format!("GET of the deleted source {when}"));
        expect(
            &ds::head(s, src),
            410,
            &format!("HEAD of the deleted source {when}"),
        );
        let r = ds::post(&mut s.client(), src, TEXT, &[], b"e;");
        expect(&r, 410, &format!("POST to the deleted source {when}"));
    };
    gone(&s, "before the restart");
    assert_eq!(text(&ds::read_all(&s, fork)), "a;b;x;");
    // The soft delete and the fork count go into a snapshot; kill -9 after it.
    wait_for_checkpoint_of(&s, &[&src_topic, &fork_topic]);
    drop(c);
    s.kill9();
    s.spawn_again();
    let mut c = s.client();

    gone(&s, "after the restart");
    let r = ds::put(&mut c, src, TEXT, &[], b"");
    expect(&r, 409, "re-creating the soft-deleted source");
    let r = ds::put(
        &mut c,
        "fk-other",
        TEXT,
        &[("Stream-Forked-From", &from)],
        b"",
    );
    expect(&r, 409, "forking the soft-deleted source");
    assert_eq!(text(&ds::read_all(&s, fork)), "a;b;x;");
    let r = ds::get(&s, &format!("{}?offset={}", ds::path(fork), offset(1)));
    expect(&r, 200, "fork read from inside what it inherited");
    assert_eq!(text(&r.body), "b;x;");
    assert_eq!(ds::append(&s, fork, TEXT, b"y;"), 4);
    assert_eq!(text(&ds::read_all(&s, fork)), "a;b;x;y;");

    // Deleting the last fork collects the deleted source.
    let r = c.request("DELETE", &ds::path(fork), &[], None);
    expect(&r, 204, "DELETE of the fork");
    let not_found = |s: &Server, when: &str| {
        for name in [src, fork] {
            let r = ds::get(s, &format!("{}?offset=-1", ds::path(name)));
            expect(&r, 404, &format!("GET {name} {when}"));
        }
    };
    not_found(&s, "after the fork's delete");
    drop(c);
    s.kill9();
    s.spawn_again();
    not_found(&s, "after the second restart");
    // The name is free again, and nothing of the old stream comes back.
    let r = ds::put(&mut s.client(), src, TEXT, &[], b"");
    expect(&r, 201, "re-creating the collected source");
    assert_eq!(ds::next_pos(&r), 0);
    assert_eq!(text(&ds::read_all(&s, src)), "");
}

// ---- 5. /v0 topics and /v1 streams of the same name -----------------------------------------

#[test]
fn v0_topics_and_v1_streams_of_the_same_name_are_apart() {
    let mut s = Server::start_with(2, &FLAGS);
    assert_eq!(s.put("/v0/topics/same", &json!({})).0, 201);
    assert_eq!(s.put("/v0/topics/only-v0", &json!({})).0, 201);
    s.append("same", json!([{"data": "v0-a"}, {"data": "v0-b"}]));
    // The stream of the same name is new, not the topic.
    ds::create(&s, "same", TEXT);
    ds::create(&s, "only-stream", TEXT);
    ds::create(&s, "nested/same", JSON);
    assert_eq!(ds::append(&s, "same", TEXT, b"v1-a;"), 1);
    ds::append(&s, "nested/same", JSON, b"[1]");

    let check = |s: &Server, when: &str| {
        let v0: Vec<Value> = s
            .diff_all("same")
            .iter()
            .map(|r| r["data"].clone())
            .collect();
        assert_eq!(v0, [json!("v0-a"), json!("v0-b")], "/v0 topic {when}");
        assert_eq!(text(&ds::read_all(s, "same")), "v1-a;", "/v1 stream {when}");
        // The list holds exactly the /v0 topics, on every page.
        let listed: Vec<String> = list_pages(s, "page_size=1").concat();
        assert_eq!(listed, ["only-v0", "same"], "/v0/topics {when}");
        let (st, v) = s.get("/v0/topics?prefix=only");
        assert_eq!(st, 200);
        let names: Vec<&str> = v["topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["topic"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["only-v0"], "/v0/topics?prefix=only {when}");
        // Neither API reaches the other's names.
        assert_eq!(s.get("/v0/topics/only-stream").0, 404, "{when}");
        let r = ds::get(s, "/v1/stream/only-v0?offset=-1");
        expect(&r, 404, &format!("GET /v1 of a /v0 topic {when}"));
        let r = ds::post(&mut s.client(), "only-v0", TEXT, &[], b"x");
        expect(&r, 404, &format!("POST /v1 to a /v0 topic {when}"));
    };
    check(&s, "before the restart");
    s.kill9();
    s.spawn_again();
    check(&s, "after the restart");

    // Deleting one leaves the other.
    let (st, v) = s.delete("/v0/topics/same");
    assert!(st == 200 || st == 204, "DELETE /v0/topics/same: {st} {v}");
    assert_eq!(text(&ds::read_all(&s, "same")), "v1-a;");
    let r = s
        .client()
        .request("DELETE", "/v1/stream/only-stream", &[], None);
    expect(&r, 204, "DELETE of a stream");
    assert_eq!(s.put("/v0/topics/same", &json!({})).0, 201);
    s.append("same", json!([{"data": "v0-c"}]));
    assert_eq!(text(&ds::read_all(&s, "same")), "v1-a;");
    let r = s.client().request("DELETE", "/v1/stream/same", &[], None);
    expect(&r, 204, "DELETE of the stream");
    let v0: Vec<Value> = s
        .diff_all("same")
        .iter()
        .map(|r| r["data"].clone())
        .collect();
    assert_eq!(
        v0,
        [json!("v0-c")],
        "the /v0 topic after the stream's delete"
    );
    let listed: Vec<String> = list_pages(&s, "page_size=1").concat();
    assert_eq!(listed, ["only-v0", "same"]);
}
