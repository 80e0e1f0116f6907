//! Black-box fuzzing of a running server (issue 7): garbled byte streams thrown at the real binary
//! (random JSON bodies: fuzz_json.rs). Every answer must be a well-formed HTTP response (an
//! error with the SPEC §1 body, never a 5xx), nothing may follow a `connection: close`
//! answer, the server must stay up (`/v0/health` 200), and data written before the fuzzing
//! must read back unchanged.
//!
//! The defaults keep `cargo test` quick; `PROPTEST_CASES=N` runs each property N times, and
//! `FUZZ_SHOW=1` (with `--nocapture`) prints every JSON call with its answer.
//! The in-process properties are in `src/http/fuzz_tests/` and `src/api/fuzz_tests/`.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::fuzz::*;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::TestRunner;

// ---- garbled streams ---------------------------------------------------------------------

/// Requests the mutations start from: every route, both framings, pipelining material.
fn corpus() -> Vec<Vec<u8>> {
    let req = |method: &str, path: &str, extra: &str, body: &str| -> Vec<u8> {
        let mut r = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}");
        if !body.is_empty() {
            r.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        r.push_str("\r\n");
        r.push_str(body);
        r.into_bytes()
    };
    let chunked = |path: &str, body: &str| -> Vec<u8> {
        let (a, b) = body.split_at(body.len() / 2);
        format!(
            "POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x};e=1\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\nT: 1\r\n\r\n",
            a.len(),
            b.len()
        )
        .into_bytes()
    };
    vec![
        req("GET", "/v0/health", "", ""),
        req("GET", "/v0/topics/fz-log?touch=false", "", ""),
        req("GET", "/v0/topics?page_size=2&cursor=c667a", "", ""),
        req(
            "POST",
            "/v0/topics/fz-log",
            "",
            r#"{"records":[{"data":{"a":1},"tag":"t","meta":{"m":2}}],"node":"n"}"#,
        ),
        chunked(
            "/v0/topics/fz-log/diff",
            r#"{"from_seq":0,"limit":5,"node":["x"]}"#,
        ),
        req(
            "PUT",
            "/v0/topics/fz-new",
            "Expect: 100-continue\r\n",
            r#"{"ttl_ms":0,"cap_records":10,"durability":"memory"}"#,
        ),
        req(
            "POST",
            "/v0/topics/fz-log/delete",
            "",
            r#"{"match":["tag","Glob","zz*"]}"#,
        ),
        req(
            "POST",
            "/v0/topics/fz-q/claim",
            "",
            r#"{"node":"w","max":2}"#,
        ),
        req(
            "POST",
            "/v0/topics/fz-q/nack",
            "",
            r#"{"node":"w","seqs":[1],"delay_ms":0}"#,
        ),
        req(
            "PUT",
            "/v0/routers/fz-r",
            "",
            r#"{"source":"fz-log","dest":"fz-copy","filter":"t"}"#,
        ),
        req("GET", "/v0/routers?prefix=fz", "", ""),
        req("DELETE", "/v0/topics/fz-tmp?if_empty=true", "", ""),
        chunked("/v0/watch", r#"{"topics":{"fz-log":{"from_seq":0}}}"#),
        b"GET /v0/topics/fz-q HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_vec(),
        b"OPTIONS * HTTP/1.1\r\n\r\n".to_vec(),
        b"GET /v0/ready HTTP/1.1\nHost: x\n\n".to_vec(),
    ]
}

/// What one garbled connection sends.
#[derive(Debug, Clone)]
struct Stream {
    bytes: Vec<u8>,
    /// Where the writes are cut.
    cuts: Vec<Index>,
    /// Pause a moment between writes so they arrive as separate reads.
    slow: bool,
}

fn stream() -> impl Strategy<Value = Stream> {
    let corpus = corpus();
    let pipelined = prop::collection::vec(select(corpus), 1..4).prop_map(|v| v.concat());
    let bytes = prop_oneof![
        1 => pipelined.clone(),
        6 => (pipelined, prop::collection::vec(edit(), 1..8)).prop_map(|(b, e)| apply(b, &e)),
        2 => prop::collection::vec(select(TOKENS), 0..40).prop_map(|v| v.concat().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..300),
    ];
    (
        bytes,
        prop::collection::vec(any::<Index>(), 0..6),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(bytes, cuts, slow)| Stream { bytes, cuts, slow })
}

/// Sends `s` on a fresh connection, half-closes, and reads everything until the server
/// closes.
fn exchange(port: u16, s: &Stream) -> Result<Vec<u8>, String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    conn.set_nodelay(true).ok();
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut at: Vec<usize> = s.cuts.iter().map(|i| i.index(s.bytes.len() + 1)).collect();
    at.push(s.bytes.len());
    at.sort_unstable();
    let mut from = 0;
    for to in at {
        // The server may answer an error and close before it has read everything.
        if conn.write_all(&s.bytes[from..to]).is_err() {
            break;
        }
        from = to;
        if s.slow {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset after our unread input: what arrived before it counts.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(got),
            Err(e) => return Err(format!("no close within 30 s ({e}); got {:?}", lossy(&got))),
        }
        if Instant::now() > deadline {
            return Err("the answer never ended".into());
        }
    }
}

#[test]
fn garbled_streams_get_well_formed_answers() {
    let (s, keep) = fixture();
    let tally = Tally::default();
    let mut runner = TestRunner::new(config(150));
    let result = runner.run(&stream(), |st| {
        let got = exchange(s.port, &st).map_err(TestCaseError::fail)?;
        let answers = split_answers(&got)
            .map_err(|e| TestCaseError::fail(format!("{e}; got {:?}", lossy(&got))))?;
        check_answers(&answers).map_err(TestCaseError::fail)?;
        tally.count(answers.iter().map(|a| a.status), got.is_empty());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\n{}", s.log_tail());
    }
    tally.print("garbled streams");
    assert_still_fine(&s, &keep);
}
