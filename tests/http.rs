//! HTTP/1.1 behaviour (SPEC §1): keep-alive, pipelining, chunked bodies, Expect: 100-continue,
//! slow / half-sent requests, garbage input, Connection: close; health and ready (§9).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[test]
fn keep_alive_many_requests_on_one_connection() {
    let s = Server::start(2);
    let mut c = s.client();
    for i in 0..150u64 {
        let (st, v) = c.json_post("/v0/topics/ka", &json!({"records": [{"data": i}]}));
        assert!(st == 200 || st == 201, "{v}");
        assert_eq!(v["seqs"], json!([i + 1]));
        if i % 10 == 0 {
            let (st, v) = c.get("/v0/topics/ka");
            assert_eq!(st, 200, "{v}");
            let (st, _) = c.get("/v0/health");
            assert_eq!(st, 200);
        }
    }
    let r = c.request("GET", "/v0/topics/ka", &[], None);
    assert_eq!(r.status, 200);
    assert!(
        r.header("connection")
            .is_none_or(|v| !v.eq_ignore_ascii_case("close")),
        "keep-alive expected: {:?}",
        r.headers
    );
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "{:?}",
        r.headers
    );
    assert!(
        r.header("content-length").is_some() || r.header("transfer-encoding").is_some(),
        "{:?}",
        r.headers
    );
    assert_eq!(r.json()["head_seq"], json!(150));
}

fn chunked(body: &[u8], sizes: &[usize], upper: bool, ext: &str) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut rest = body;
    for &n in sizes.iter().chain(std::iter::repeat(&7)) {
        if rest.is_empty() {
            break;
        }
        let n = n.min(rest.len());
        let size = if upper {
            format!("{n:X}")
        } else {
            format!("{n:x}")
        };
        let mut p = format!("{size}{ext}\r\n").into_bytes();
        p.extend_from_slice(&rest[..n]);
        p.extend_from_slice(b"\r\n");
        parts.push(p);
        rest = &rest[n..];
    }
    parts.push(b"0\r\n\r\n".to_vec());
    parts
}

#[test]
fn chunked_request_bodies() {
    let s = Server::start(1);
    let mut c = s.client();
    let data = r#"{"a": 1,"b":"chunked body with some length to it, more than one chunk"}"#;
    let body = format!(r#"{{"records":[{{"data":{data}}}]}}"#);
    let head = "POST /v0/topics/ch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    c.send_raw(head.as_bytes()).unwrap();
    for p in chunked(body.as_bytes(), &[5, 1, 17, 30], false, "") {
        c.send_raw(&p).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["seqs"], json!([1]));

    // Again on the same connection, in one write, upper-case hex sizes and an extension.
    let mut all = head.as_bytes().to_vec();
    for p in chunked(body.as_bytes(), &[16, 16], true, ";ext=1") {
        all.extend_from_slice(&p);
    }
    c.send_raw(&all).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["seqs"], json!([2]));

    // A chunked diff on the same connection.
    let mut all = b"POST /v0/topics/ch/diff HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for p in chunked(br#"{"from_seq":0}"#, &[3], false, "") {
        all.extend_from_slice(&p);
    }
    c.send_raw(&all).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let raw = raw_records(&r.body);
    assert_eq!(raw.len(), 2);
    assert_eq!(raw[0]["data"], data);
    assert_eq!(raw[1]["data"], data);
}

#[test]
fn expect_100_continue_is_answered() {
    let s = Server::start(1);
    let mut c = s.client();
    let body = br#"{"records":[{"data":"after continue"}]}"#;
    let head = format!(
        "POST /v0/topics/ex HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    c.send_raw(head.as_bytes()).unwrap();
    c.set_read_timeout(Duration::from_secs(5));
    let interim = c
        .read_any_response()
        .expect("the server must answer 100 Continue before the body is sent");
    assert_eq!(interim.status, 100, "{interim:?}");
    c.send_raw(body).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["seqs"], json!([1]));

    // The connection stays usable.
    let (st, v) = c.json_post("/v0/topics/ex/diff", &json!({}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["records"][0]["data"], json!("after continue"));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Server::start(2);
    let mut c = s.client();
    let j = [("Content-Type", "application/json")];
    let mut all = Vec::new();
    all.extend(c.request_bytes("PUT", "/v0/topics/pp", &j, Some(b"{}")));
    all.extend(c.request_bytes(
        "POST",
        "/v0/topics/pp",
        &j,
        Some(br#"{"records":[{"data":1},{"data":2}]}"#),
    ));
    all.extend(c.request_bytes("POST", "/v0/topics/pp/diff", &j, Some(br#"{"from_seq":0}"#)));
    all.extend(c.request_bytes("GET", "/v0/topics/pp", &[], None));
    all.extend(c.request_bytes("GET", "/v0/topics/missing", &[], None));
    all.extend(c.request_bytes("GET", "/v0/health", &[], None));
    c.send_raw(&all).unwrap();

    let r = c.read_response().unwrap();
    assert_eq!(r.status, 201, "PUT first: {}", r.text());
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["seqs"], json!([1, 2]));
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(seqs_of(r.json()["records"].as_array().unwrap()), vec![1, 2]);
    let r = c.read_response().unwrap();
    assert_eq!(r.json()["head_seq"], json!(2));
    let r = c.read_response().unwrap();
    assert_error_resp(&r, 404, "topic_not_found");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], json!("ok"));

    // 60 appends in one write: responses in order carry consecutive seqs.
    let mut all = Vec::new();
    for i in 0..60 {
        let b = format!(r#"{{"records":[{{"data":{i}}}]}}"#);
        all.extend(c.request_bytes("POST", "/v0/topics/pp", &j, Some(b.as_bytes())));
    }
    c.send_raw(&all).unwrap();
    for i in 0..60u64 {
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.json()["seqs"],
            json!([i + 3]),
            "response {i} out of order"
        );
    }
}

#[test]
fn pipelined_long_poll_keeps_response_order() {
    let s = Server::start(1);
    s.append_n("lp", 1);
    let mut c = s.client();
    let j = [("Content-Type", "application/json")];
    let mut all = c.request_bytes(
        "POST",
        "/v0/topics/lp/diff",
        &j,
        Some(br#"{"from_seq":1,"wait_ms":600}"#),
    );
    all.extend(c.request_bytes("GET", "/v0/topics/lp", &[], None));
    let start = Instant::now();
    c.send_raw(&all).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json().get("records").is_some(),
        "the diff answers first: {}",
        r.text()
    );
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["topic"], json!("lp"));
    assert!(r.json().get("records").is_none(), "{}", r.text());
}

fn assert_serves_normally(s: &Server, topic: &str, n: u64) {
    let start = Instant::now();
    let mut c = s.client();
    c.set_read_timeout(Duration::from_secs(10));
    for i in 0..n {
        let (st, v) = c.json_post(
            &format!("/v0/topics/{topic}"),
            &json!({"records": [{"data": i}]}),
        );
        assert!(st == 200 || st == 201, "{v}");
        let (st, v) = s.get(&format!("/v0/topics/{topic}"));
        assert_eq!(st, 200, "{v}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "other connections were held up: {:?}",
        start.elapsed()
    );
}

fn half_sent(shards: usize) {
    let s = Server::start(shards);
    let body = br#"{"records":[{"data":"slow writer"}]}"#;
    let head = format!(
        "POST /v0/topics/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // A: headers and half a body. B: half a request line. C: part of the headers.
    let mut a = s.client();
    a.send_raw(head.as_bytes()).unwrap();
    a.send_raw(&body[..10]).unwrap();
    let mut b = s.client();
    b.send_raw(b"GET /v0/hea").unwrap();
    let mut c = s.client();
    c.send_raw(b"GET /v0/topics/slow HTTP/1.1\r\nHost: x\r\nX-Partial: ye")
        .unwrap();

    assert_serves_normally(&s, "fast", 30);

    a.send_raw(&body[10..]).unwrap();
    let r = a.read_response().unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    b.send_raw(b"lth HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = b.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    c.send_raw(b"s\r\n\r\n").unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["head_seq"], json!(1));
    assert_eq!(s.topic("fast")["head_seq"], json!(30));
}

#[test]
fn half_sent_request_does_not_block_others_one_shard() {
    half_sent(1);
}

#[test]
fn half_sent_request_does_not_block_others_two_shards() {
    half_sent(2);
}

#[test]
fn garbage_bytes_close_the_connection() {
    let s = Server::start(1);
    s.append("keep", json!([{"data": "intact"}]));
    let garbage: Vec<Vec<u8>> = vec![
        vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0xde, 0xad, 0xbe,
            0xef, b'\r', b'\n', b'\r', b'\n',
        ],
        b"\x00\x01\x02\x03\xff\xfe\xfd\r\n\r\n".to_vec(),
        b"THIS IS NOT HTTP\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost x no colon\r\n\r\n".to_vec(),
        b"POST /v0/topics/keep HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: banana\r\n\r\n{}".to_vec(),
        b"POST /v0/topics/keep HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec(),
    ];
    for g in &garbage {
        let mut c = s.client();
        c.send_raw(g).unwrap();
        let (got, closed) = c.read_until_closed(Duration::from_secs(5));
        assert!(
            closed,
            "connection left open after garbage {:?}; got {:?}",
            String::from_utf8_lossy(g),
            String::from_utf8_lossy(&got)
        );
        if got.starts_with(b"HTTP/1.1 ") {
            let status = &got[9..12];
            assert!(
                status.starts_with(b"4"),
                "garbage answered with {:?}",
                String::from_utf8_lossy(&got)
            );
        }
        let (st, _) = s.get("/v0/health");
        assert_eq!(st, 200, "server still fine");
    }
    let recs = s.diff_all("keep");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["data"], json!("intact"));
}

#[test]
fn connection_close_is_honoured() {
    let s = Server::start(1);
    let mut c = s.client();
    let r = c.request("GET", "/v0/health", &[("Connection", "close")], None);
    assert_eq!(r.status, 200);
    let (_, closed) = c.read_until_closed(Duration::from_secs(5));
    assert!(closed, "server must close after Connection: close");
}

#[test]
fn large_bodies_round_trip() {
    let s = Server::start(2);
    let big = "x".repeat(700 * 1024);
    let v = s.append("large", json!([{"data": big}]));
    assert_eq!(v["seqs"], json!([1]));
    let recs: Vec<Value> = (0..1000)
        .map(|i| json!({"data": format!("{i:0>900}")}))
        .collect();
    s.append("large", Value::Array(recs));
    let all = s.diff_all("large");
    assert_eq!(all.len(), 1001);
    assert_eq!(all[0]["data"].as_str().unwrap().len(), big.len());
    assert_eq!(all[1000]["data"], json!(format!("{:0>900}", 999)));
}

#[test]
fn many_concurrent_connections() {
    let s = Server::start(2);
    let port = s.port;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..25 {
                    let mut c = Client::connect(port);
                    let (st, v) = c.json_post(
                        &format!("/v0/topics/cc-{}", i % 5),
                        &json!({"records": [{"data": [t, i]}]}),
                    );
                    assert!(st == 200 || st == 201, "{v}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total: u64 = (0..5)
        .map(|i| s.topic(&format!("cc-{i}"))["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 200);
}

#[test]
fn health_and_ready() {
    let s = Server::start(2);
    s.append_n("h1", 1);
    s.append_n("h2", 1);
    let mut first_uptime = 0;
    for path in ["/v0/health", "/healthz"] {
        let r = s.client().request("GET", path, &[], None);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(
            r.header("content-type")
                .unwrap_or_default()
                .starts_with("application/json"),
            "{path}"
        );
        let v = r.json();
        assert_eq!(v["status"], json!("ok"), "{path}: {v}");
        assert!(v["version"].is_string(), "{path}: {v}");
        let up = v["uptime_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("{path} uptime_ms: {v}"));
        assert!(up >= first_uptime, "uptime went back: {v}");
        first_uptime = up;
    }
    std::thread::sleep(Duration::from_millis(60));
    let (_, v) = s.get("/v0/health");
    assert!(v["uptime_ms"].as_u64().unwrap() >= first_uptime + 50, "{v}");

    for path in ["/v0/ready", "/readyz"] {
        let r = s.client().request("GET", path, &[], None);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let v = r.json();
        assert_eq!(v["status"], json!("ready"), "{path}: {v}");
        assert_eq!(v["wal_replay_complete"], json!(true), "{path}: {v}");
        assert!(v.get("topics").is_some(), "{path}: {v}");
    }
}
