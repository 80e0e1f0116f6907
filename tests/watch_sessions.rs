//! Watch sessions across reconnects and restarts (SPEC §6): resume after a client drop,
//! `Last-Event-ID` rewinds, sessions surviving graceful and `kill -9` restarts.

mod common;

use std::time::{Duration, Instant};

use common::sse::{
    self, check_stream, decode_id, events, has_caught_up, last_id, range, seqs, start_map, Frame,
    Next,
};
use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(10);

#[test]
fn resume_after_client_drop_and_last_event_id() {
    let s = Server::start(1);
    s.append_n("t", 20);
    let (wid, v) = sse::create(&s, json!({"topics": {"t": {"from_seq": 0}}, "limit": 5}));
    assert_eq!(v["topics"]["t"]["from_seq"], json!(0));
    let mut w = sse::open(&s, &wid);
    w.expect_retry();
    let frames = w.until(T, |fs| has_caught_up(fs, "t"));
    assert_eq!(seqs(&frames, "t"), range(1, 20));
    drop(w);
    std::thread::sleep(Duration::from_millis(400));

    // Reconnect without Last-Event-ID: continues from the session's cursors.
    s.append_n("t", 10);
    let mut w = sse::open(&s, &wid);
    w.expect_retry();
    let frames = w.until(T, |fs| has_caught_up(fs, "t"));
    check_stream(&frames, &["t"], &start_map(&[("t", 20)]));
    assert_eq!(
        seqs(&frames, "t"),
        range(21, 30),
        "nothing lost or repeated: {}",
        sse::summary(&frames)
    );
    drop(w);
    std::thread::sleep(Duration::from_millis(400));

    // Drop in the middle of a backlog; the frames after the last one read may already have
    // left the server, so the client presents its last id to rewind.
    s.append_n("t", 40); // 31..70
    let mut w = sse::open(&s, &wid);
    w.expect_retry();
    let frames = w.until(T, |fs| events(fs, "record").len() >= 2);
    let id = last_id(&frames);
    assert_eq!(
        decode_id(&id),
        start_map(&[("t", 40)]),
        "{}",
        sse::summary(&frames)
    );
    drop(w);
    std::thread::sleep(Duration::from_millis(400));
    let mut w = sse::open_with(&s, &wid, &[("Last-Event-ID", &id)]);
    w.expect_retry();
    let frames = w.until(T, |fs| has_caught_up(fs, "t"));
    check_stream(&frames, &["t"], &start_map(&[("t", 40)]));
    assert_eq!(
        seqs(&frames, "t"),
        range(41, 70),
        "{}",
        sse::summary(&frames)
    );
    drop(w);
    std::thread::sleep(Duration::from_millis(400));

    // A Last-Event-ID ahead of the session never advances it.
    s.append_n("t", 5); // 71..75
    let ahead = sse::event_id(&[("t", 73)]);
    let mut w = sse::open_with(&s, &wid, &[("Last-Event-ID", &ahead)]);
    w.expect_retry();
    let frames = w.until(T, |fs| has_caught_up(fs, "t"));
    assert_eq!(
        seqs(&frames, "t"),
        range(71, 75),
        "{}",
        sse::summary(&frames)
    );
    drop(w);
    std::thread::sleep(Duration::from_millis(400));

    // ?last_event_id= rewinds like the header.
    let back = sse::event_id(&[("t", 60)]);
    let mut w = sse::open_path(
        s.port,
        &format!("/v0/watch/{wid}?last_event_id={}", urlencode(&back)),
        &[],
    )
    .unwrap_or_else(|r| panic!("{} {}", r.status, r.text()));
    w.expect_retry();
    let frames = w.until(T, |fs| has_caught_up(fs, "t"));
    assert_eq!(
        seqs(&frames, "t"),
        range(61, 75),
        "{}",
        sse::summary(&frames)
    );
}

#[test]
fn session_survives_graceful_restart() {
    let mut s = Server::start(2);
    let a = sse::name_on_shard("gr-a-", 0, 2);
    let b = sse::name_on_shard("gr-b-", 1, 2);
    s.append_n(&a, 10);
    s.append_n(&b, 3);
    let (wid, mut w) = sse::watch(&s, json!({"topics": {a.clone(): {}, b.clone(): {}}}));
    let frames = w.until(T, |fs| has_caught_up(fs, &a) && has_caught_up(fs, &b));
    assert_eq!(seqs(&frames, &a), range(1, 10));
    s.send_signal("TERM");
    // The stream ends with the shutdown (an `error` frame may precede the close).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match w.next(deadline.saturating_duration_since(Instant::now())) {
            Next::Closed => break,
            Next::Frame(f) => {
                if let Some(e) = f.event() {
                    assert_eq!(e, "error", "unexpected frame at shutdown: {f:?}");
                    let v = f.json();
                    assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
                }
            }
            Next::Timeout => panic!("SSE stream still open 15 s after SIGTERM"),
        }
    }
    let st = s.wait_exit();
    assert!(st.success(), "exit status {st}");
    s.spawn_again();
    s.append_n(&a, 5);
    let mut w = sse::open(&s, &wid);
    w.expect_retry();
    let frames = w.until(T, |fs| has_caught_up(fs, &a) && has_caught_up(fs, &b));
    assert_eq!(
        seqs(&frames, &a),
        range(11, 15),
        "the session's cursors after a graceful restart (stream open at SIGTERM): {}",
        sse::summary(&frames)
    );
    assert!(seqs(&frames, &b).is_empty(), "{}", sse::summary(&frames));
    check_stream(&frames, &[&a, &b], &start_map(&[(&a, 10), (&b, 3)]));
}

#[test]
fn session_survives_kill9_with_last_event_id() {
    let mut s = Server::start(1);
    s.put("/v0/topics/k", &json!({"durability": "fsync"}));
    s.append_n("k", 10);
    let (wid, mut w) = sse::watch(&s, json!({"topics": {"k": {}}, "heartbeat_ms": 1000}));
    let frames = w.until(T, |fs| has_caught_up(fs, "k"));
    let early = last_id(&frames);
    assert_eq!(decode_id(&early), start_map(&[("k", 10)]));
    s.append_n("k", 5);
    let frames = w.until_cursor("k", 15, T);
    let id = last_id(&frames);
    // Idle for a while (a heartbeat passes), then crash.
    w.until(Duration::from_secs(3), |fs| fs.iter().any(Frame::is_hb));
    std::thread::sleep(Duration::from_millis(500));
    s.restart_kill9();
    s.append_n("k", 5); // 16..20
    let mut w = sse::open_with(&s, &wid, &[("Last-Event-ID", &id)]);
    w.expect_retry();
    let frames = w.until(T, |fs| has_caught_up(fs, "k"));
    check_stream(&frames, &["k"], &start_map(&[("k", 15)]));
    assert_eq!(
        seqs(&frames, "k"),
        range(16, 20),
        "{}",
        sse::summary(&frames)
    );
    drop(w);
    std::thread::sleep(Duration::from_millis(400));
    // And an older id rewinds further.
    let mut w = sse::open_with(&s, &wid, &[("Last-Event-ID", &early)]);
    w.expect_retry();
    let frames = w.until(T, |fs| has_caught_up(fs, "k"));
    assert_eq!(
        seqs(&frames, "k"),
        range(11, 20),
        "{}",
        sse::summary(&frames)
    );
}

/// The session's cursors must not fall behind what the stream delivered by more than the
/// sync interval: 1 s after the last frame (default 15 s heartbeat, so no heartbeat in
/// between), a crash and a reconnect with the last id continue right after it.
#[test]
fn kill9_soon_after_frames_keeps_session_cursor() {
    let mut s = Server::start(1);
    s.put("/v0/topics/k", &json!({"durability": "fsync"}));
    s.append_n("k", 10);
    let (wid, mut w) = sse::watch(&s, json!({"topics": {"k": {}}}));
    let frames = w.until(T, |fs| has_caught_up(fs, "k"));
    s.append_n("k", 5);
    let mut frames2 = w.until_cursor("k", 15, T);
    frames2.splice(0..0, frames);
    let id = last_id(&frames2);
    std::thread::sleep(Duration::from_millis(1000));
    s.restart_kill9();
    let mut w = sse::open_with(&s, &wid, &[("Last-Event-ID", &id)]);
    w.expect_retry();
    let frames = w.until(T, |fs| has_caught_up(fs, "k"));
    assert!(
        seqs(&frames, "k").is_empty(),
        "records repeated after a crash 1 s after they were delivered (Last-Event-ID {:?}): {}",
        decode_id(&id),
        sse::summary(&frames)
    );
}
