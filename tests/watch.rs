//! Live SSE watch (SPEC §6): session creation, stream shapes, multiplexing across cores,
//! resume (client drop, Last-Event-ID, server restart), heartbeats, caught-up transitions,
//! tombstones, topic deletion, node filtering, batching options, strong consistency and a
//! slow reader.

mod common;

use std::time::{Duration, Instant};

use common::sse::{
    self, check_stream, decode_id, events, has_caught_up, is_caught_up, last_ids, range,
    records_of, seqs, start_map, Frame, Next,
};
use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

const ORDER1: &str = r#"{ "sku": "AEROPRESS-GO", "qty": 1, "total": 3499 }"#;
const ORDER2: &str = r#"{ "sku": "FELLOW-KETTLE", "qty": 1, "total": 16500 }"#;

fn quickstart_watch(shards: usize) {
    let s = Server::start(shards);
    let (st, v) = s.put(
        "/v0/topics/orders",
        &json!({ "durable": true, "cap_records": 0, "ttl_ms": 0 }),
    );
    assert_eq!(st, 201, "{v}");
    let body = format!(
        r#"{{ "records": [ {{ "data": {ORDER1}, "tag": "order-7731" }}, {{ "data": {ORDER2}, "tag": "order-7732" }} ] }}"#
    );
    let r = s.post_raw("/v0/topics/orders", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());

    // 1. Create the watch session.
    let r = s.post_raw(
        "/v0/watch",
        br#"{ "topics": { "orders": { "from_seq": 0 } } }"#,
    );
    assert_eq!(r.status, 200, "POST /v0/watch: {}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "{:?}",
        r.headers
    );
    let v = r.json();
    let wid = v["wid"].as_str().expect("wid").to_string();
    let suffix = wid
        .strip_prefix("wid_")
        .unwrap_or_else(|| panic!("wid {wid}"));
    assert_eq!(suffix.len(), 22, "wid_ + base64url(16 bytes): {wid}");
    assert!(
        suffix
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
        "wid {wid} is not base64url"
    );
    assert_eq!(sse::b64url_decode(suffix).unwrap().len(), 16, "{wid}");
    assert_eq!(v["stream_url"], json!(format!("/v0/watch/{wid}")), "{v}");
    assert_eq!(v["session_ttl_ms"], json!(300000), "{v}");
    assert_eq!(
        v["topics"],
        json!({"orders": {"from_seq": 0, "head_seq": 2, "earliest_seq": 1}}),
        "{v}"
    );
    assert_perf(&v);
    // Two sessions never share a wid.
    let (wid2, _) = sse::create(&s, json!({"topics": {"orders": {}}}));
    assert_ne!(wid, wid2);

    // 2. Open the stream (as curl -N does: Accept */*).
    let mut w = sse::open_with(&s, &wid, &[("Accept", "*/*")]);
    assert_eq!(w.status, 200);
    assert!(
        w.header("content-type")
            .unwrap_or_default()
            .starts_with("text/event-stream"),
        "content-type {:?}",
        w.headers
    );
    assert_eq!(
        w.header("cache-control"),
        Some("no-store"),
        "{:?}",
        w.headers
    );
    assert_eq!(w.header("x-accel-buffering"), Some("no"), "{:?}", w.headers);
    w.expect_retry();
    let frames = w.until(T, |fs| has_caught_up(fs, "orders"));
    check_stream(&frames, &["orders"], &start_map(&[("orders", 0)]));
    let recs = records_of(&frames, "orders");
    assert_eq!(
        seqs(&frames, "orders"),
        vec![1, 2],
        "{}",
        sse::summary(&frames)
    );
    let t = now_ms();
    for (rec, want) in recs.iter().zip([ORDER1, ORDER2]) {
        assert_eq!(
            keys(rec),
            vec!["$seq", "$ts", "data"],
            "no $tag by default: {rec}"
        );
        let ts = rec["$ts"].as_u64().unwrap();
        assert!(ts <= t && ts + 60_000 > t, "$ts {ts} vs now {t}");
        let want: Value = serde_json::from_str(want).unwrap();
        assert_eq!(rec["data"], want);
    }
    // Byte-exact data inside the frame.
    let first = sse::events(&frames, "record")[0].clone();
    let Frame::Event { data, .. } = &first else {
        unreachable!()
    };
    let raw = raw_records(data.as_bytes());
    assert_eq!(raw[0]["data"], ORDER1, "data byte-for-byte in the frame");
    for rf in sse::record_frames(&frames, "orders") {
        for k in ["topic", "records", "from_seq", "to_seq", "head_seq"] {
            assert!(rf.get(k).is_some(), "record frame lacks {k}: {rf}");
        }
        assert_eq!(rf["head_seq"], json!(2), "{rf}");
    }
    let last = frames.last().unwrap();
    assert_eq!(last.event(), Some("caught-up"));
    assert_eq!(last.json(), json!({"topic": "orders", "head_seq": 2}));
    assert_eq!(
        last.id(),
        Some("eyJvcmRlcnMiOjJ9"),
        "the Quickstart's id for {{\"orders\":2}}"
    );
    // The first record frame's id is the cursor map after it, e.g. `eyJvcmRlcnMiOjF9`.
    let rf = &events(&frames, "record")[0];
    let to = rf.json()["to_seq"].as_u64().unwrap();
    assert_eq!(rf.id(), Some(sse::event_id(&[("orders", to)]).as_str()));
    assert!(
        w.drain(Duration::from_millis(300)).is_empty(),
        "nothing after caught-up on an idle topic (heartbeat is 15 s)"
    );

    // include_tags adds $tag.
    let (_, mut w) = sse::watch(
        &s,
        json!({"topics": {"orders": {"from_seq": 0}}, "include_tags": true}),
    );
    let frames = w.until(T, |fs| has_caught_up(fs, "orders"));
    let recs = records_of(&frames, "orders");
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["$tag"], json!("order-7731"));
    assert_eq!(recs[1]["$tag"], json!("order-7732"));
}

#[test]
fn quickstart_watch_step_1_shard() {
    quickstart_watch(1);
}

#[test]
fn quickstart_watch_step_2_shards() {
    quickstart_watch(2);
}

#[test]
fn watch_open_errors_and_validation() {
    let s = Server::start(1);
    s.append_n("t", 3);
    let mut ck = Checks::new();
    let r = s.json_post("/v0/watch", &json!({"topics": {"nope": {}}}));
    ck.error("unknown topic", &r, 404, "topic_not_found");
    let r = s.json_post("/v0/watch", &json!({"topics": {"t": {}, "nope": {}}}));
    ck.error(
        "one unknown topic among known ones",
        &r,
        404,
        "topic_not_found",
    );
    for (what, body) in [
        ("no topics", json!({})),
        ("empty topics", json!({"topics": {}})),
        ("topics not an object", json!({"topics": ["t"]})),
        ("bad topic name", json!({"topics": {"-bad": {}}})),
        (
            "from_seq negative",
            json!({"topics": {"t": {"from_seq": -1}}}),
        ),
        (
            "from_seq string",
            json!({"topics": {"t": {"from_seq": "1"}}}),
        ),
        (
            "bad consistency",
            json!({"topics": {"t": {}}, "consistency": "linear"}),
        ),
        (
            "limit wrong type",
            json!({"topics": {"t": {}}, "limit": "x"}),
        ),
        (
            "heartbeat wrong type",
            json!({"topics": {"t": {}}, "heartbeat_ms": true}),
        ),
    ] {
        let r = s.json_post("/v0/watch", &body);
        ck.error(what, &r, 400, "invalid_request");
    }
    // Watching never creates a topic.
    ck.error(
        "no auto-create",
        &s.get("/v0/topics/nope"),
        404,
        "topic_not_found",
    );
    // Unsupported media type.
    let mut c = s.client();
    let r = c.request("POST", "/v0/watch", &[], Some(br#"{"topics":{"t":{}}}"#));
    ck.error_resp("no content-type", &r, 415, "unsupported_media_type");

    // GET of an unknown wid.
    for wid in ["wid_AAAAAAAAAAAAAAAAAAAAAA", "nope"] {
        match sse::open_path(s.port, &format!("/v0/watch/{wid}"), &[]) {
            Ok(_) => panic!("unknown wid {wid} opened a stream"),
            Err(r) => ck.error_resp(format!("unknown wid {wid}"), &r, 404, "not_found"),
        }
    }
    // Accept excluding text/event-stream.
    let (wid, _) = sse::create(&s, json!({"topics": {"t": {}}}));
    match sse::open_path(
        s.port,
        &format!("/v0/watch/{wid}"),
        &[("Accept", "application/json")],
    ) {
        Ok(_) => panic!("Accept: application/json opened a stream"),
        Err(r) => ck.error_resp("Accept: application/json", &r, 406, "not_acceptable"),
    }
    // text/event-stream among others, and text/*, are fine.
    for accept in ["application/json, text/event-stream;q=0.5", "text/*"] {
        match sse::open_path(s.port, &format!("/v0/watch/{wid}"), &[("Accept", accept)]) {
            Ok(mut w) => w.expect_retry(),
            Err(r) => panic!("Accept {accept:?}: {} {}", r.status, r.text()),
        }
    }
    ck.finish();
}

#[test]
fn watch_topic_count_limit() {
    let s = Server::start(1);
    let mut c = s.client();
    let mut topics = serde_json::Map::new();
    for i in 0..257 {
        let name = format!("many{i:03}");
        let (st, v) = c.put(&format!("/v0/topics/{name}"), &json!({}));
        assert_eq!(st, 201, "{v}");
        topics.insert(name, json!({}));
    }
    let r = s.json_post("/v0/watch", &json!({ "topics": topics }));
    assert_error(&r, 400, "invalid_request");
    topics.remove("many000");
    let (wid, v) = sse::create(&s, json!({ "topics": topics }));
    assert_eq!(v["topics"].as_object().unwrap().len(), 256, "{v}");
    // All 256 empty topics are caught up at once.
    let mut w = sse::open(&s, &wid);
    w.expect_retry();
    let frames = w.until(T, |fs| events(fs, "caught-up").len() == 256);
    let ids = last_ids(&frames);
    assert_eq!(ids.len(), 256);
    assert!(ids.values().all(|c| *c == 0));
}

#[test]
fn tail_and_live_records_after_caught_up() {
    let s = Server::start(1);
    s.append_n("t", 5);
    let (st, v) = s.put("/v0/topics/e", &json!({}));
    assert_eq!(st, 201, "{v}");
    let (wid, v) = sse::create(
        &s,
        json!({"topics": {"t": {"tail": true}, "e": {"from_seq": 0}}}),
    );
    assert_eq!(
        v["topics"]["t"]["from_seq"],
        json!(5),
        "tail starts at head: {v}"
    );
    assert_eq!(v["topics"]["t"]["head_seq"], json!(5), "{v}");
    assert_eq!(
        v["topics"]["e"],
        json!({"from_seq": 0, "head_seq": 0, "earliest_seq": 1})
    );
    let mut w = sse::open(&s, &wid);
    w.expect_retry();
    // Both caught up right away, with no record frames.
    let frames = w.until(T, |fs| has_caught_up(fs, "t") && has_caught_up(fs, "e"));
    assert!(
        events(&frames, "record").is_empty(),
        "{}",
        sse::summary(&frames)
    );
    for f in &frames {
        let v = f.json();
        let want = if v["topic"] == json!("t") { 5 } else { 0 };
        assert_eq!(v["head_seq"], json!(want), "{v}");
    }
    assert_eq!(last_ids(&frames), start_map(&[("e", 0), ("t", 5)]));
    // Live records after caught-up.
    let t0 = Instant::now();
    s.append(
        "t",
        json!([{"data": {"live": 1}}, {"data": {"live": 2}}, {"data": {"live": 3}}]),
    );
    let live = w.until_cursor("t", 8, T);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "live delivery took {:?}",
        t0.elapsed()
    );
    check_stream(&live, &["e", "t"], &start_map(&[("e", 0), ("t", 5)]));
    assert_eq!(seqs(&live, "t"), range(6, 8));
    let first = &sse::record_frames(&live, "t")[0];
    assert_eq!(first["from_seq"], json!(5), "{first}");
    assert_eq!(records_of(&live, "t")[0]["data"], json!({"live": 1}));
    s.append("e", json!([{"data": 1}]));
    let live = w.until_cursor("e", 1, T);
    assert_eq!(seqs(&live, "e"), vec![1]);
}

#[test]
fn watch_over_topics_on_different_cores() {
    let s = Server::start(2);
    let a = sse::name_on_shard("core-a-", 0, 2);
    let b = sse::name_on_shard("core-b-", 1, 2);
    s.append_n(&a, 10);
    s.append_n(&b, 7);
    let (_, mut w) = sse::watch(
        &s,
        json!({"topics": {a.clone(): {"from_seq": 0}, b.clone(): {"from_seq": 0}}, "limit": 4}),
    );
    let mut frames = w.until(T, |fs| has_caught_up(fs, &a) && has_caught_up(fs, &b));
    // Live: a writer alternates between the two topics.
    let port = s.port;
    let (a2, b2) = (a.clone(), b.clone());
    let writer = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        for i in 0..40 {
            for t in [&a2, &b2] {
                let (st, v) = c.json_post(
                    &format!("/v0/topics/{t}"),
                    &json!({"records": [{"data": {"w": i}}, {"data": {"w": i, "second": true}}]}),
                );
                assert_eq!(st, 200, "{v}");
            }
        }
    });
    frames.extend(w.until(Duration::from_secs(20), |fs| {
        let m = fs.iter().rev().find_map(|f| f.id().map(decode_id));
        m.is_some_and(|m| m.get(&a) == Some(&90) && m.get(&b) == Some(&87))
    }));
    writer.join().unwrap();
    check_stream(&frames, &[&a, &b], &start_map(&[(&a, 0), (&b, 0)]));
    assert_eq!(seqs(&frames, &a), range(1, 90));
    assert_eq!(seqs(&frames, &b), range(1, 87));
    for rf in sse::record_frames(&frames, &a) {
        assert!(
            rf["records"].as_array().unwrap().len() <= 4,
            "limit 4: {rf}"
        );
    }
    let recs = records_of(&frames, &b);
    assert_eq!(recs[7]["data"], json!({"w": 0}));
    assert_eq!(recs[86]["data"], json!({"w": 39, "second": true}));
}

#[test]
fn heartbeats_only_while_idle() {
    let s = Server::start(1);
    s.append_n("hb", 1);
    let (_, mut w) = sse::watch(&s, json!({"topics": {"hb": {}}, "heartbeat_ms": 1000}));
    // heartbeat_ms is clamped to at least 1000.
    let (_, mut fast) = sse::watch(&s, json!({"topics": {"hb": {}}, "heartbeat_ms": 1}));
    let t0 = Instant::now();
    let frames = w.until(T, |fs| has_caught_up(fs, "hb"));
    assert!(!frames.iter().any(Frame::is_hb), "no hb before data");
    // Idle: one `: hb` about each second, with no id.
    let mut times = Vec::new();
    while t0.elapsed() < Duration::from_millis(3500) {
        match w.next(Duration::from_millis(3600).saturating_sub(t0.elapsed())) {
            Next::Frame(f) => {
                assert!(f.is_hb(), "only heartbeats while idle: {f:?}");
                times.push(t0.elapsed());
            }
            Next::Timeout => break,
            Next::Closed => panic!("stream closed"),
        }
    }
    assert!(
        (2..=4).contains(&times.len()),
        "expected ~3 heartbeats in 3.5 s at 1000 ms, got {times:?}"
    );
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(700) && gap <= Duration::from_millis(1600),
            "heartbeat gaps {times:?}"
        );
    }
    let fast_frames = fast.drain(Duration::from_millis(50));
    let fast_hb = fast_frames.iter().filter(|f| f.is_hb()).count();
    assert!(
        fast_hb <= 5,
        "heartbeat_ms 1 must clamp to 1000: {fast_hb} heartbeats in ~3.5 s"
    );
    // Busy: a record every 300 ms for 2.4 s, so no heartbeat is due.
    let port = s.port;
    let writer = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        for i in 0..8 {
            let (st, v) = c.json_post("/v0/topics/hb", &json!({"records": [{"data": i}]}));
            assert_eq!(st, 200, "{v}");
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let frames = w.until(T, |fs| {
        fs.iter()
            .rev()
            .find_map(|f| f.id().map(decode_id))
            .is_some_and(|m| m["hb"] == 9)
    });
    writer.join().unwrap();
    assert!(
        !frames.iter().any(Frame::is_hb),
        "heartbeat while records flow every 300 ms: {}",
        sse::summary(&frames)
    );
    // Idle again: heartbeats resume.
    let f = w.frame(Duration::from_millis(2000));
    assert!(f.is_hb(), "{f:?}");
    assert_eq!(f.id(), None);
}

#[test]
fn caught_up_transitions() {
    let s = Server::start(1);
    s.put("/v0/topics/c", &json!({}));
    let (_, mut w) = sse::watch(&s, json!({"topics": {"c": {}}, "limit": 10}));
    let f = w.data_frame(T);
    assert!(
        is_caught_up(&f, "c"),
        "empty topic is caught up at once: {f:?}"
    );
    assert_eq!(f.json()["head_seq"], json!(0));
    assert_eq!(f.cursors(), start_map(&[("c", 0)]));
    let mut all = vec![f];
    for round in 1..=2u64 {
        // A backlog larger than `limit`: several record frames, then caught-up again.
        s.append_n("c", 50);
        let head = round * 50;
        let frames = w.until(T, |fs| {
            fs.last()
                .is_some_and(|f| is_caught_up(f, "c") && f.json()["head_seq"] == head)
        });
        let recs = sse::record_frames(&frames, "c");
        assert!(
            recs.len() >= 5,
            "limit 10 splits 50 records: {}",
            sse::summary(&frames)
        );
        let cu = events(&frames, "caught-up");
        assert_eq!(
            cu.len(),
            1,
            "one caught-up per backlog: {}",
            sse::summary(&frames)
        );
        assert_eq!(cu[0].cursors(), start_map(&[("c", head)]));
        all.extend(frames);
    }
    check_stream(&all, &["c"], &start_map(&[("c", 0)]));
    assert_eq!(seqs(&all, "c"), range(1, 100));
}

#[test]
fn tombstone_from_seq_too_old() {
    let s = Server::start(1);
    s.put("/v0/topics/capped", &json!({"cap_records": 5}));
    for _ in 0..4 {
        s.append_n("capped", 5);
    }
    let (wid, v) = sse::create(&s, json!({"topics": {"capped": {"from_seq": 3}}}));
    assert_eq!(
        v["topics"]["capped"],
        json!({"from_seq": 3, "head_seq": 20, "earliest_seq": 16})
    );
    let mut w = sse::open(&s, &wid);
    w.expect_retry();
    let frames = w.until(T, |fs| has_caught_up(fs, "capped"));
    let f = &frames[0];
    assert_eq!(f.event(), Some("tombstone"), "{}", sse::summary(&frames));
    assert_eq!(
        f.json(),
        json!({"topic": "capped", "reason": "from_seq_too_old", "gap_from": 4, "gap_to": 15,
               "earliest_seq": 16, "head_seq": 20})
    );
    assert_eq!(f.cursors(), start_map(&[("capped", 15)]));
    check_stream(&frames, &["capped"], &start_map(&[("capped", 3)]));
    assert_eq!(seqs(&frames, "capped"), range(16, 20));
    assert_eq!(events(&frames, "tombstone").len(), 1);

    // A cursor at the floor gets no tombstone.
    let (_, mut w) = sse::watch(&s, json!({"topics": {"capped": {"from_seq": 15}}}));
    let frames = w.until(T, |fs| has_caught_up(fs, "capped"));
    assert!(
        events(&frames, "tombstone").is_empty(),
        "{}",
        sse::summary(&frames)
    );
    assert_eq!(seqs(&frames, "capped"), range(16, 20));
}

#[test]
fn tombstone_recreated() {
    let s = Server::start(1);
    s.append_n("re", 5);
    let (st, v) = s.delete("/v0/topics/re");
    assert_eq!((st, &v["deleted"]), (200, &json!(true)), "{v}");
    s.append_n("re", 2);
    let (wid, v) = sse::create(&s, json!({"topics": {"re": {"from_seq": 5}}}));
    assert_eq!(v["topics"]["re"]["head_seq"], json!(2), "{v}");
    let mut w = sse::open(&s, &wid);
    w.expect_retry();
    let frames = w.until(T, |fs| has_caught_up(fs, "re"));
    let f = &frames[0];
    assert_eq!(f.event(), Some("tombstone"), "{}", sse::summary(&frames));
    assert_eq!(
        f.json(),
        json!({"topic": "re", "reason": "recreated", "gap_from": 1, "gap_to": 0,
               "earliest_seq": 1, "head_seq": 2})
    );
    assert_eq!(f.cursors(), start_map(&[("re", 0)]));
    check_stream(&frames, &["re"], &start_map(&[("re", 5)]));
    assert_eq!(seqs(&frames, "re"), vec![1, 2]);
}

#[test]
fn topic_deleted_mid_stream() {
    let s = Server::start(2);
    let a = sse::name_on_shard("del-a-", 0, 2);
    let b = sse::name_on_shard("del-b-", 1, 2);
    s.append_n(&a, 4);
    s.append_n(&b, 2);
    let (_, mut w) = sse::watch(&s, json!({"topics": {a.clone(): {}, b.clone(): {}}}));
    w.until(T, |fs| has_caught_up(fs, &a) && has_caught_up(fs, &b));
    let (st, v) = s.delete(&format!("/v0/topics/{a}"));
    assert_eq!(st, 200, "{v}");
    let f = w.data_frame(T);
    assert_eq!(f.event(), Some("topic-deleted"), "{f:?}");
    assert_eq!(
        f.json(),
        json!({"topic": a, "head_seq": 4, "reason": "deleted"})
    );
    let ids = f.cursors();
    assert_eq!(ids.get(&b), Some(&2), "{ids:?}");
    assert!(ids.contains_key(&a), "{ids:?}");
    // The other topic goes on; the deleted one is over for this stream.
    s.append_n(&b, 3);
    s.append_n(&a, 3); // a new instance of `a`
    let frames = w.until_cursor(&b, 5, T);
    assert_eq!(seqs(&frames, &b), range(3, 5));
    let more = w.drain(Duration::from_millis(500));
    let mut all = frames;
    all.extend(more);
    assert!(
        records_of(&all, &a).is_empty() && events(&all, "topic-deleted").is_empty(),
        "nothing more about the deleted topic: {}",
        sse::summary(&all)
    );
}

#[test]
fn node_filter_on_watch() {
    let s = Server::start(1);
    s.append(
        "n",
        json!([
            {"data": 1, "node": "me"},
            {"data": 2, "node": "other"},
            {"data": 3},
            {"data": 4, "node": "Me"},
            {"data": 5, "node": "me"}
        ]),
    );
    let (st, v) = s.json_post(
        "/v0/topics/n",
        &json!({"node": "me", "records": [{"data": 6}, {"data": 7}]}),
    );
    assert_eq!(st, 200, "{v}");
    s.append("n", json!([{"data": 8, "node": "you"}]));
    // String form.
    let (_, mut w) = sse::watch(&s, json!({"topics": {"n": {}}, "node": "me"}));
    let frames = w.until(T, |fs| has_caught_up(fs, "n"));
    let data: Vec<Value> = records_of(&frames, "n")
        .iter()
        .map(|r| r["data"].clone())
        .collect();
    assert_eq!(data, vec![json!(2), json!(3), json!(4), json!(8)]);
    assert_eq!(last_ids(&frames), start_map(&[("n", 8)]));
    let recs = records_of(&frames, "n");
    assert_eq!(recs[0]["$node"], json!("other"));
    assert!(recs[1].get("$node").is_none(), "{}", recs[1]);
    // Live: own records are skipped silently; the cursor still advances.
    s.append(
        "n",
        json!([{"data": 9, "node": "me"}, {"data": 10, "node": "me"}]),
    );
    s.append("n", json!([{"data": 11, "node": "me"}, {"data": 12}]));
    let frames = w.until_cursor("n", 12, T);
    assert_eq!(
        seqs(&frames, "n"),
        vec![12],
        "own records must not arrive: {}",
        sse::summary(&frames)
    );

    // Array form.
    let (_, mut w) = sse::watch(&s, json!({"topics": {"n": {}}, "node": ["me", "you"]}));
    let frames = w.until(T, |fs| has_caught_up(fs, "n"));
    let data: Vec<Value> = records_of(&frames, "n")
        .iter()
        .map(|r| r["data"].clone())
        .collect();
    assert_eq!(data, vec![json!(2), json!(3), json!(4), json!(12)]);

    // dedupe_node: false ignores the filter.
    s.put("/v0/topics/nd", &json!({"dedupe_node": false}));
    s.append("nd", json!([{"data": 1, "node": "me"}, {"data": 2}]));
    let (_, mut w) = sse::watch(&s, json!({"topics": {"nd": {}}, "node": "me"}));
    let frames = w.until(T, |fs| has_caught_up(fs, "nd"));
    assert_eq!(seqs(&frames, "nd"), vec![1, 2]);
}

#[test]
fn max_batch_bytes_and_limit_split_frames() {
    let s = Server::start(1);
    let big = "x".repeat(1000);
    let recs: Vec<Value> = (0..20)
        .map(|i| json!({"data": {"i": i, "s": big}}))
        .collect();
    s.append("mb", Value::Array(recs));
    let (_, mut w) = sse::watch(&s, json!({"topics": {"mb": {}}, "max_batch_bytes": 4096}));
    let frames = w.until(T, |fs| has_caught_up(fs, "mb"));
    check_stream(&frames, &["mb"], &start_map(&[("mb", 0)]));
    assert_eq!(seqs(&frames, "mb"), range(1, 20));
    let rfs = sse::record_frames(&frames, "mb");
    assert!(
        rfs.len() >= 5,
        "20 records of ~1 KB in 4 KiB batches: {} frames",
        rfs.len()
    );
    for rf in &rfs {
        let recs = rf["records"].as_array().unwrap();
        let bytes: usize = recs.iter().map(|r| r["data"].to_string().len()).sum();
        assert!(
            recs.len() == 1 || bytes <= 4096,
            "frame of {} records, {bytes} data bytes over max_batch_bytes",
            recs.len()
        );
    }
    // One record bigger than max_batch_bytes still goes out, alone.
    let huge = "y".repeat(10_000);
    s.append("mb", json!([{"data": huge}, {"data": 1}]));
    let frames = w.until_cursor("mb", 22, T);
    assert_eq!(seqs(&frames, "mb"), vec![21, 22]);
    assert_eq!(records_of(&frames, "mb")[0]["data"], json!(huge));

    // limit caps records per frame.
    let (_, mut w) = sse::watch(&s, json!({"topics": {"mb": {}}, "limit": 3}));
    let frames = w.until(T, |fs| has_caught_up(fs, "mb"));
    assert_eq!(seqs(&frames, "mb"), range(1, 22));
    for rf in sse::record_frames(&frames, "mb") {
        assert!(
            rf["records"].as_array().unwrap().len() <= 3,
            "limit 3: {rf}"
        );
    }
}

#[test]
fn include_flags() {
    let s = Server::start(1);
    s.append(
        "inc",
        json!([{"data": {"a": 1}, "tag": "t1", "node": "n1", "meta": {"m": true}}]),
    );
    let get = |body: Value| {
        let (_, mut w) = sse::watch(&s, body);
        let frames = w.until(T, |fs| has_caught_up(fs, "inc"));
        let recs = records_of(&frames, "inc");
        assert_eq!(recs.len(), 1);
        recs[0].clone()
    };
    let r = get(json!({"topics": {"inc": {}}}));
    assert_eq!(
        keys(&r),
        vec!["$node", "$seq", "$ts", "data", "meta"],
        "defaults: {r}"
    );
    assert_eq!(r["meta"], json!({"m": true}));
    let r = get(json!({"topics": {"inc": {}}, "include_tags": true}));
    assert_eq!(r["$tag"], json!("t1"));
    let r = get(json!({"topics": {"inc": {}}, "include_meta": false}));
    assert!(r.get("meta").is_none(), "include_meta false: {r}");
    let r = get(json!({"topics": {"inc": {}}, "include_data": false}));
    assert!(r.get("data").is_none(), "include_data false: {r}");
    assert_eq!(r["$seq"], json!(1));
}

#[test]
fn consistency_strong_delivers() {
    let s = Server::start(2);
    let f = sse::name_on_shard("strong-f-", 0, 2);
    let d = sse::name_on_shard("strong-d-", 1, 2);
    s.put(&format!("/v0/topics/{f}"), &json!({"durability": "fsync"}));
    s.put(&format!("/v0/topics/{d}"), &json!({"durability": "disk"}));
    s.append_n(&f, 3);
    let (_, mut w) = sse::watch(
        &s,
        json!({"topics": {f.clone(): {}, d.clone(): {}}, "consistency": "strong"}),
    );
    let frames = w.until(T, |fs| has_caught_up(fs, &f) && has_caught_up(fs, &d));
    assert_eq!(seqs(&frames, &f), range(1, 3));
    let t0 = Instant::now();
    for i in 0..5 {
        s.append(&f, json!([{"data": i}]));
        s.append(&d, json!([{"data": i}]));
    }
    let frames = w.until(Duration::from_secs(5), |fs| {
        let m = fs.iter().rev().find_map(|f| f.id().map(decode_id));
        m.is_some_and(|m| m[&f] == 8 && m[&d] == 5)
    });
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(seqs(&frames, &f), range(4, 8));
    assert_eq!(seqs(&frames, &d), range(1, 5));
}
