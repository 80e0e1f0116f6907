//! Auth (SPEC §9): API keys with scopes and topic-prefix allowlists, 401/403, list filtering,
//! `?token=` on SSE GETs only, open probes (unless `--probe-auth`), and refusals at start.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KEYS: &str = "root-key,reader-key:r,writer-key:w,worker-key:rw,deleter-key:r+d,\
                    tenant-key:rw+d+a:tenant-a|shared,admin-only:a";

fn authed() -> Server {
    Server::start_with(2, &["--api-keys", KEYS])
}

/// A request with `Authorization: Bearer <key>` (no header when `key` is empty).
fn call(s: &Server, key: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let bearer = format!("Bearer {key}");
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if !key.is_empty() {
        headers.push(("Authorization", &bearer));
    }
    let bytes = body.map(|b| serde_json::to_vec(b).expect("json"));
    if bytes.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    s.client()
        .request(method, path, &headers, bytes.as_deref())
        .sv()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn missing_or_unknown_keys_are_401() {
    let s = authed();
    let (st, v) = call(&s, "", "GET", "/v0/topics", None);
    assert_eq!((st, code(&v)), (401, "unauthorized"), "{v}");
    let r = s.client().request("GET", "/v0/topics", &[], None);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let (st, v) = call(&s, "not-a-key", "GET", "/v0/topics", None);
    assert_eq!((st, code(&v)), (401, "unauthorized"), "{v}");
    let (st, v) = call(&s, "root-keyx", "GET", "/v0/topics", None);
    assert_eq!(st, 401, "{v}");
    // A key in the query string is not accepted outside SSE streams.
    let (st, v) = call(&s, "", "GET", "/v0/topics?token=root-key", None);
    assert_eq!(st, 401, "{v}");
    // Other schemes are not keys.
    let r = s.client().request(
        "GET",
        "/v0/topics",
        &[("Authorization", "Basic cm9vdC1rZXk=")],
        None,
    );
    assert_eq!(r.status, 401);
    let (st, _) = call(&s, "root-key", "GET", "/v0/topics", None);
    assert_eq!(st, 200);
    // Probes stay open.
    assert_eq!(call(&s, "", "GET", "/v0/health", None).0, 200);
    assert_eq!(call(&s, "", "GET", "/v0/ready", None).0, 200);
}

#[test]
fn scopes_follow_the_route_table() {
    let s = authed();
    let rec = json!({"records": [{"data": 1}]});
    // PUT needs admin.
    let (st, v) = call(&s, "worker-key", "PUT", "/v0/topics/t", Some(&json!({})));
    assert_eq!((st, code(&v)), (403, "forbidden"), "{v}");
    assert_eq!(
        call(&s, "admin-only", "PUT", "/v0/topics/t", Some(&json!({}))).0,
        201
    );
    // Writes need write.
    let (st, v) = call(&s, "reader-key", "POST", "/v0/topics/t", Some(&rec));
    assert_eq!((st, code(&v)), (403, "forbidden"), "{v}");
    assert_eq!(
        call(&s, "writer-key", "POST", "/v0/topics/t", Some(&rec)).0,
        200
    );
    // Reads need read.
    let (st, v) = call(
        &s,
        "writer-key",
        "POST",
        "/v0/topics/t/diff",
        Some(&json!({})),
    );
    assert_eq!((st, code(&v)), (403, "forbidden"), "{v}");
    assert_eq!(call(&s, "writer-key", "GET", "/v0/topics/t", None).0, 403);
    let (st, v) = call(
        &s,
        "reader-key",
        "POST",
        "/v0/topics/t/diff",
        Some(&json!({})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["records"].as_array().map(Vec::len), Some(1));
    // Record deletes need delete.
    let del = json!({"before_seq": 2});
    assert_eq!(
        call(&s, "worker-key", "POST", "/v0/topics/t/delete", Some(&del)).0,
        403
    );
    let (st, v) = call(&s, "deleter-key", "POST", "/v0/topics/t/delete", Some(&del));
    assert_eq!((st, v["deleted"].clone()), (200, json!(1)), "{v}");
    // Queues: claim needs read+write, ack write.
    assert_eq!(
        call(
            &s,
            "admin-only",
            "PUT",
            "/v0/topics/q",
            Some(&json!({"type": "queue"}))
        )
        .0,
        201
    );
    assert_eq!(
        call(&s, "writer-key", "POST", "/v0/topics/q", Some(&rec)).0,
        200
    );
    let claim = json!({"node": "w"});
    assert_eq!(
        call(&s, "writer-key", "POST", "/v0/topics/q/claim", Some(&claim)).0,
        403
    );
    assert_eq!(
        call(&s, "reader-key", "POST", "/v0/topics/q/claim", Some(&claim)).0,
        403
    );
    let (st, v) = call(&s, "worker-key", "POST", "/v0/topics/q/claim", Some(&claim));
    assert_eq!((st, v["count"].clone()), (200, json!(1)), "{v}");
    let ack = json!({"node": "w", "seqs": [1]});
    assert_eq!(
        call(&s, "reader-key", "POST", "/v0/topics/q/ack", Some(&ack)).0,
        403
    );
    assert_eq!(
        call(&s, "writer-key", "POST", "/v0/topics/q/ack", Some(&ack)).0,
        200
    );
    // Routers: PUT admin, GET read, DELETE delete.
    let r = json!({"source": "t", "dest": "t2"});
    assert_eq!(
        call(&s, "worker-key", "PUT", "/v0/routers/t->t2", Some(&r)).0,
        403
    );
    assert_eq!(
        call(&s, "admin-only", "PUT", "/v0/routers/t->t2", Some(&r)).0,
        201
    );
    assert_eq!(call(&s, "writer-key", "GET", "/v0/routers", None).0, 403);
    assert_eq!(
        call(&s, "reader-key", "GET", "/v0/routers/t->t2", None).0,
        200
    );
    assert_eq!(
        call(&s, "reader-key", "DELETE", "/v0/routers/t->t2", None).0,
        403
    );
    assert_eq!(
        call(&s, "deleter-key", "DELETE", "/v0/routers/t->t2", None).0,
        200
    );
    // Topic deletes need delete.
    assert_eq!(
        call(&s, "admin-only", "DELETE", "/v0/topics/t", None).0,
        403
    );
    let (st, v) = call(&s, "deleter-key", "DELETE", "/v0/topics/t", None);
    assert_eq!((st, v["deleted"].clone()), (200, json!(true)), "{v}");
    // Watch needs read.
    let w = json!({"topics": {"q": {}}});
    assert_eq!(call(&s, "writer-key", "POST", "/v0/watch", Some(&w)).0, 403);
    assert_eq!(call(&s, "reader-key", "POST", "/v0/watch", Some(&w)).0, 200);
    // The job was acked once, by the write key; the topic delete removed t.
    assert_eq!(
        call(&s, "root-key", "GET", "/v0/topics/q", None).1["count"],
        json!(0)
    );
    assert_eq!(call(&s, "root-key", "GET", "/v0/topics/t", None).0, 404);
}

#[test]
fn prefix_allowlists_apply_to_paths_bodies_and_lists() {
    let s = authed();
    for t in ["tenant-a:orders", "tenant-b:orders", "shared", "other"] {
        let (st, v) = call(
            &s,
            "root-key",
            "POST",
            &format!("/v0/topics/{t}"),
            Some(&json!({"records": [{"data": 1}]})),
        );
        assert_eq!(st, 201, "{v}");
    }
    let k = "tenant-key";
    assert_eq!(
        call(&s, k, "GET", "/v0/topics/tenant-a:orders", None).0,
        200
    );
    assert_eq!(call(&s, k, "GET", "/v0/topics/shared", None).0, 200);
    let (st, v) = call(&s, k, "GET", "/v0/topics/tenant-b:orders", None);
    assert_eq!((st, code(&v)), (403, "forbidden"), "{v}");
    assert_eq!(
        call(
            &s,
            k,
            "POST",
            "/v0/topics/other",
            Some(&json!({"records": [{"data": 2}]}))
        )
        .0,
        403
    );
    // Lists show only what the key may see, page by page.
    let (st, v) = call(&s, k, "GET", "/v0/topics?page_size=1", None);
    assert_eq!(st, 200, "{v}");
    let first = v["topics"][0]["topic"].clone();
    let cursor = v["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let (_, v2) = call(
        &s,
        k,
        "GET",
        &format!("/v0/topics?page_size=1&cursor={cursor}"),
        None,
    );
    let mut seen = vec![first, v2["topics"][0]["topic"].clone()];
    assert!(v2.get("next_cursor").is_none(), "{v2}");
    seen.sort_by_key(|x| x.to_string());
    assert_eq!(seen, vec![json!("shared"), json!("tenant-a:orders")]);
    let (_, all) = call(&s, "root-key", "GET", "/v0/topics", None);
    assert_eq!(all["topics"].as_array().map(Vec::len), Some(4));
    // Watch bodies.
    let w = json!({"topics": {"tenant-a:orders": {}, "other": {}}});
    let (st, v) = call(&s, k, "POST", "/v0/watch", Some(&w));
    assert_eq!((st, code(&v)), (403, "forbidden"), "{v}");
    let w = json!({"topics": {"tenant-a:orders": {}, "shared": {}}});
    assert_eq!(call(&s, k, "POST", "/v0/watch", Some(&w)).0, 200);
    // Router bodies and router lists.
    let r = json!({"source": "tenant-a:orders", "dest": "other"});
    let (st, v) = call(&s, k, "PUT", "/v0/routers/a-out", Some(&r));
    assert_eq!((st, code(&v)), (403, "forbidden"), "{v}");
    let r = json!({"source": "tenant-a:orders", "dest": "shared"});
    assert_eq!(call(&s, k, "PUT", "/v0/routers/a-in", Some(&r)).0, 201);
    let r = json!({"source": "other", "dest": "tenant-b:orders"});
    assert_eq!(
        call(&s, "root-key", "PUT", "/v0/routers/b", Some(&r)).0,
        201
    );
    let (_, v) = call(&s, k, "GET", "/v0/routers", None);
    let names: Vec<&str> = v["routers"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["router"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec!["a-in"], "{v}");
    assert_eq!(call(&s, k, "GET", "/v0/routers/b", None).0, 404);
    assert_eq!(call(&s, k, "DELETE", "/v0/routers/b", None).0, 403);
    assert_eq!(call(&s, "root-key", "GET", "/v0/routers/b", None).0, 200);
}

/// Reads an SSE response head (and a little of the body) with a raw socket.
fn sse_status(port: u16, path: &str, headers: &str) -> u16 {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{headers}\r\n"
    )
    .expect("write");
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn token_query_parameter_works_on_sse_gets_only() {
    let s = authed();
    assert_eq!(
        call(
            &s,
            "root-key",
            "PUT",
            "/v0/topics/q",
            Some(&json!({"type": "queue"}))
        )
        .0,
        201
    );
    let (_, v) = call(
        &s,
        "reader-key",
        "POST",
        "/v0/watch",
        Some(&json!({"topics": {"q": {}}})),
    );
    let wid = v["wid"].as_str().expect("wid").to_string();
    let path = format!("/v0/watch/{wid}");
    assert_eq!(sse_status(s.port, &path, ""), 401);
    assert_eq!(sse_status(s.port, &format!("{path}?token=nope"), ""), 401);
    assert_eq!(
        sse_status(s.port, &format!("{path}?token=reader-key"), ""),
        200
    );
    assert_eq!(
        sse_status(s.port, &path, "Authorization: Bearer reader-key\r\n"),
        200
    );
    let work = "/v0/topics/q/work?node=w";
    assert_eq!(sse_status(s.port, work, ""), 401);
    assert_eq!(
        sse_status(s.port, &format!("{work}&token=reader-key"), ""),
        403
    );
    assert_eq!(
        sse_status(s.port, &format!("{work}&token=worker-key"), ""),
        200
    );
}

#[test]
fn probe_auth_closes_health_and_ready() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = std::env::temp_dir().join(format!("topics-probe-auth-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_topics"))
        .args(["--port", &port.to_string(), "--data-dir"])
        .arg(&dir)
        .args(["--shards", "1", "--probe-auth"])
        .env("TOPICS_API_KEYS", "probe-key:r")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut statuses = (0, 0);
    while Instant::now() < deadline {
        if let Ok(mut c) = Client::try_connect(port) {
            let open = c.request("GET", "/v0/ready", &[], None).status;
            let with_key = c
                .request(
                    "GET",
                    "/v0/ready",
                    &[("Authorization", "Bearer probe-key")],
                    None,
                )
                .status;
            statuses = (open, with_key);
            if with_key == 200 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let health = Client::try_connect(port)
        .map(|mut c| c.request("GET", "/v0/health", &[], None).status)
        .unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        statuses,
        (401, 200),
        "ready without / with a key (keys from TOPICS_API_KEYS)"
    );
    assert_eq!(health, 401);
}

fn start_fails(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!(
        "topics-auth-start-{}-{}",
        std::process::id(),
        args.len()
    ));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
        .to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_topics"));
    cmd.args(["--port", &port, "--shards", "1", "--data-dir"])
        .arg(&dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    // A refusal exits at once; a server that starts is killed after a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut exited = None;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            exited = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if exited.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = std::fs::remove_dir_all(&dir);
    (exited.is_some_and(|s| !s.success()), err)
}

#[test]
fn insecure_or_malformed_configurations_refuse_to_start() {
    let (failed, err) = start_fails(&["--host", "0.0.0.0"], &[]);
    assert!(failed, "started on 0.0.0.0 without keys: {err}");
    assert!(err.contains("without API keys"), "{err}");
    let (failed, err) = start_fails(&["--host", "0.0.0.0", "--allow-insecure-no-auth"], &[]);
    assert!(!failed, "--allow-insecure-no-auth should start: {err}");
    let (failed, _) = start_fails(&["--host", "0.0.0.0", "--api-keys", "k1"], &[]);
    assert!(!failed, "with keys it starts");
    for bad in ["k1,,k2", "sekrit:bogus", "sekrit:r:a||b", ":r"] {
        let (failed, err) = start_fails(&[], &[("TOPICS_API_KEYS", bad)]);
        assert!(failed, "{bad:?} accepted");
        assert!(err.contains("malformed"), "{bad:?}: {err}");
        assert!(
            !err.contains("sekrit"),
            "the key leaked into the log: {err}"
        );
    }
}

#[test]
fn keys_never_reach_the_log() {
    let s = Server::start_with(1, &["--api-keys", "very-secret-key-123:rw"]);
    let _ = call(
        &s,
        "very-secret-key-123",
        "POST",
        "/v0/topics/t",
        Some(&json!({"records": [{"data": 1}]})),
    );
    let _ = call(&s, "wrong-secret-456", "GET", "/v0/topics/t", None);
    let log = std::fs::read_to_string(s.log_path()).unwrap_or_default();
    assert!(!log.contains("very-secret-key-123"), "{log}");
    assert!(!log.contains("wrong-secret-456"), "{log}");
    assert!(log.contains("auth on"), "{log}");
}

#[test]
fn a_watch_session_opens_only_with_the_key_that_created_it() {
    let s = authed();
    assert_eq!(
        call(
            &s,
            "root-key",
            "POST",
            "/v0/topics/w",
            Some(&json!({"records": [{"data": 1}]}))
        )
        .0,
        201
    );
    let (st, v) = call(
        &s,
        "reader-key",
        "POST",
        "/v0/watch",
        Some(&json!({"topics": {"w": {}}})),
    );
    assert_eq!(st, 200, "{v}");
    let path = format!("/v0/watch/{}", v["wid"].as_str().expect("wid"));
    assert_eq!(
        sse_status(s.port, &path, "Authorization: Bearer root-key\r\n"),
        403,
        "another key, even one with every right"
    );
    assert_eq!(
        sse_status(s.port, &format!("{path}?token=worker-key"), ""),
        403
    );
    assert_eq!(
        sse_status(s.port, &format!("{path}?token=reader-key"), ""),
        200
    );
    // The binding survives a restart (it is logged with the session).
    let mut s = s;
    s.restart_kill9();
    assert_eq!(
        sse_status(s.port, &format!("{path}?token=root-key"), ""),
        403
    );
    assert_eq!(
        sse_status(s.port, &format!("{path}?token=reader-key"), ""),
        200
    );
}

/// A raw `/v1` request: status only.
fn v1(
    s: &Server,
    key: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> u16 {
    let bearer = format!("Bearer {key}");
    let mut h: Vec<(&str, &str)> = headers.to_vec();
    if !key.is_empty() {
        h.push(("Authorization", &bearer));
    }
    let body = (method != "GET" && method != "DELETE" && method != "OPTIONS").then_some(body);
    s.client().request(method, path, &h, body).status
}

#[test]
fn durable_streams_follow_scopes_and_prefixes() {
    let s = authed();
    let text = [("Content-Type", "text/plain")];
    assert_eq!(
        v1(
            &s,
            "root-key",
            "PUT",
            "/v1/stream/tenant-b/secret",
            &text,
            b"s3cret"
        ),
        201
    );
    assert_eq!(
        v1(&s, "", "GET", "/v1/stream/tenant-b/secret", &[], b""),
        401
    );
    // Scopes: reading needs read, writing needs write, deleting needs delete.
    assert_eq!(
        v1(
            &s,
            "reader-key",
            "GET",
            "/v1/stream/tenant-b/secret",
            &[],
            b""
        ),
        200
    );
    assert_eq!(
        v1(
            &s,
            "reader-key",
            "POST",
            "/v1/stream/tenant-b/secret",
            &text,
            b"x"
        ),
        403
    );
    assert_eq!(
        v1(
            &s,
            "writer-key",
            "POST",
            "/v1/stream/tenant-b/secret",
            &text,
            b"x"
        ),
        204
    );
    assert_eq!(
        v1(
            &s,
            "writer-key",
            "DELETE",
            "/v1/stream/tenant-b/secret",
            &[],
            b""
        ),
        403
    );
    // Prefixes apply to the stream name.
    assert_eq!(
        v1(
            &s,
            "tenant-key",
            "PUT",
            "/v1/stream/tenant-a/mine",
            &text,
            b"ok"
        ),
        201
    );
    assert_eq!(
        v1(
            &s,
            "tenant-key",
            "GET",
            "/v1/stream/tenant-b/secret",
            &[],
            b""
        ),
        403
    );
    // A fork reads its source: a key that may not read the source may not fork it.
    let fork = [
        ("Content-Type", "text/plain"),
        ("Stream-Forked-From", "/v1/stream/tenant-b/secret"),
    ];
    assert_eq!(
        v1(
            &s,
            "tenant-key",
            "PUT",
            "/v1/stream/tenant-a/copy",
            &fork,
            b""
        ),
        403
    );
    assert_eq!(
        v1(
            &s,
            "tenant-key",
            "GET",
            "/v1/stream/tenant-a/copy",
            &[],
            b""
        ),
        404
    );
    let own = [
        ("Content-Type", "text/plain"),
        ("Stream-Forked-From", "/v1/stream/tenant-a/mine"),
    ];
    assert_eq!(
        v1(
            &s,
            "tenant-key",
            "PUT",
            "/v1/stream/tenant-a/copy",
            &own,
            b""
        ),
        201
    );
    // A CORS preflight carries no key and gets no data.
    assert_eq!(
        v1(&s, "", "OPTIONS", "/v1/stream/tenant-b/secret", &[], b""),
        204
    );
}
