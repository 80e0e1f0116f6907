//! Start-up refusals: a second server may not share a data directory or a port with a
//! running one (the listener uses SO_REUSEPORT, which would otherwise split clients between
//! two independent logs), and a data directory keeps its shard count.

mod common;

use common::*;
use std::process::Command;

fn run_topics(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_topics"))
        .args(args)
        .output()
        .expect("run topics");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn second_server_on_the_same_data_dir_is_refused() {
    let s = Server::start(1);
    let other_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
        .to_string();
    let dir = s.data_dir().to_string_lossy().into_owned();
    let (ok, err) = run_topics(&["--port", &other_port, "--data-dir", &dir, "--shards", "1"]);
    assert!(!ok, "a second server started on the same data dir");
    assert!(err.contains("in use by another topics process"), "{err}");
    assert_eq!(s.get("/v0/health").0, 200, "the first server is unaffected");
}

#[test]
fn second_server_on_the_same_port_is_refused() {
    let s = Server::start(1);
    let dir = std::env::temp_dir().join(format!("topics-port-clash-{}", std::process::id()));
    let port = s.port.to_string();
    let (ok, err) = run_topics(&[
        "--port",
        &port,
        "--data-dir",
        &dir.to_string_lossy(),
        "--shards",
        "1",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "a second server started on the same port");
    assert!(err.contains("cannot bind"), "{err}");
    s.append("t", serde_json::json!([{"data": 1}]));
    assert_eq!(
        s.append("t", serde_json::json!([{"data": 2}]))["first_seq"],
        2
    );
}

#[test]
fn data_dir_keeps_its_shard_count() {
    let mut s = Server::start(2);
    s.kill9();
    let dir = s.data_dir().to_string_lossy().into_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
        .to_string();
    let (ok, err) = run_topics(&["--port", &port, "--data-dir", &dir, "--shards", "1"]);
    assert!(!ok, "started with a different shard count");
    assert!(err.contains("shards 2"), "{err}");
}
