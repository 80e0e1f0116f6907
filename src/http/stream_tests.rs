//! End to end: `serve_connection` on a glommio executor, std clients (and `curl -N` when
//! installed) on the test thread.

use super::super::{serve_connection, Handler, Limits, Request, Response};
use super::*;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Instant;

/// What the server side reports to the test: a label and when it happened.
type Report = (String, Instant);

struct TestHandler {
    reports: mpsc::Sender<Report>,
}

fn report(tx: &mpsc::Sender<Report>, label: impl Into<String>) {
    let _ = tx.send((label.into(), Instant::now()));
}

/// `retry`, then three `tick` events 50 ms apart, each sent while a `closed()` future is
/// pending.
async fn three_ticks(sink: &mut SseSink) -> io::Result<()> {
    let closed = sink.closed();
    let sends = async {
        sink.send(SSE_RETRY).await?;
        for i in 0..3 {
            if i > 0 {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            let mut frame = Vec::new();
            sse_event(
                &mut frame,
                Some(&i.to_string()),
                "tick",
                format!("{{\"n\":{i}}}").as_bytes(),
            );
            sink.send(&frame).await?;
        }
        Ok(())
    };
    future::or(sends, async {
        closed.await;
        Err(gone())
    })
    .await
}

/// Reports `"dropped"` when dropped.
struct DropReport(mpsc::Sender<Report>);

impl Drop for DropReport {
    fn drop(&mut self) {
        report(&self.0, "dropped");
    }
}

impl Handler for TestHandler {
    fn handle(&self, req: Request) -> Pin<Box<dyn Future<Output = Response> + '_>> {
        let tx = self.reports.clone();
        Box::pin(async move {
            match req.path.as_str() {
                "/plain" => Response {
                    status: 200,
                    content_type: "text/plain",
                    headers: Vec::new(),
                    body: b"ok".to_vec(),
                    stream: None,
                },
                // Three events, then the stream ends.
                "/three" => Response::sse(move |mut sink| async move {
                    report(&tx, "started");
                    let r = three_ticks(&mut sink).await;
                    report(&tx, format!("three done: {}", r.is_ok()));
                }),
                // Three events, then idle until the peer goes; then a late send must fail.
                "/idle" => Response::stream(
                    200,
                    SSE_CONTENT_TYPE,
                    vec![("x-session", "w1".into())],
                    move |mut sink| async move {
                        let r = three_ticks(&mut sink).await;
                        report(&tx, format!("sent: {}", r.is_ok()));
                        sink.closed().await;
                        report(&tx, "closed");
                        let late = sink.send(SSE_HEARTBEAT).await;
                        report(&tx, format!("late send failed: {}", late.is_err()));
                    },
                ),
                // Three events, then waits forever without watching `closed()`.
                "/stubborn" => Response::sse(move |mut sink| async move {
                    let _guard = DropReport(tx.clone());
                    let r = three_ticks(&mut sink).await;
                    report(&tx, format!("sent: {}", r.is_ok()));
                    futures_lite::future::pending::<()>().await;
                }),
                // Writes 64 KiB frames as fast as the peer takes them.
                "/flood" => Response::sse(move |mut sink| async move {
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut total = 0usize;
                    let err = loop {
                        match sink.send(&chunk).await {
                            Ok(()) => total += chunk.len(),
                            Err(e) => break e,
                        }
                    };
                    report(&tx, format!("flood {:?} {total}", err.kind()));
                }),
                "/nocontent" => Response::stream(204, "", Vec::new(), move |_| async move {
                    report(&tx, "nocontent ran");
                }),
                _ => Response {
                    status: 404,
                    content_type: "text/plain",
                    headers: Vec::new(),
                    body: Vec::new(),
                    stream: None,
                },
            }
        })
    }

    fn error(&self, status: u16, _code: &'static str, message: String) -> Response {
        Response {
            status,
            content_type: "text/plain",
            headers: Vec::new(),
            body: message.into_bytes(),
            stream: None,
        }
    }
}

/// Starts a server on its own executor thread (left running until the test process ends).
fn server(limits: Limits) -> (SocketAddr, mpsc::Receiver<Report>) {
    let (addr_tx, addr_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            addr_tx
                .send(listener.local_addr().expect("addr"))
                .expect("send addr");
            let handler = Rc::new(TestHandler { reports: tx });
            while let Ok(stream) = listener.accept().await {
                glommio::spawn_local(serve_connection(stream, handler.clone(), limits)).detach();
            }
        })
        .expect("executor");
    drop(handle);
    (addr_rx.recv().expect("server address"), rx)
}

fn connect(addr: SocketAddr, request: &[u8]) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    s
}

fn read_to_eof(s: &mut std::net::TcpStream) -> String {
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read to EOF");
    String::from_utf8(out).unwrap()
}

/// Reads until `buf` holds `n` SSE frames after the response head; returns when each frame
/// completed.
fn read_frames(s: &mut std::net::TcpStream, buf: &mut Vec<u8>, n: usize) -> Vec<Instant> {
    let mut times = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(buf);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let frames = body.matches("\n\n").count();
        while times.len() < frames {
            times.push(Instant::now());
        }
        if frames >= n {
            return times;
        }
        let got = s.read(&mut chunk).expect("read");
        assert!(got > 0, "EOF after {frames} frames: {text:?}");
        buf.extend_from_slice(&chunk[..got]);
    }
}

fn expect_report(rx: &mpsc::Receiver<Report>, label: &str) -> Instant {
    let (got, at) = rx.recv_timeout(Duration::from_secs(5)).expect("report");
    assert_eq!(got, label);
    at
}

const TICKS: &str = "retry: 2000\n\n\
    id: 0\nevent: tick\ndata: {\"n\":0}\n\n\
    id: 1\nevent: tick\ndata: {\"n\":1}\n\n\
    id: 2\nevent: tick\ndata: {\"n\":2}\n\n";

#[test]
fn streams_events_as_they_come_then_closes() {
    let (addr, rx) = server(Limits::default());
    let mut s = connect(
        addr,
        b"GET /three HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n",
    );
    let mut buf = Vec::new();
    let times = read_frames(&mut s, &mut buf, 4);
    // The ticks arrived as they were sent, 50 ms apart (not all at the end): the first one
    // about 100 ms before the last (with slack for a loaded machine).
    let span = times[3] - times[1];
    assert!(span >= Duration::from_millis(60), "{span:?}");
    buf.extend_from_slice(read_to_eof(&mut s).as_bytes());
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let lines: Vec<&str> = head.split("\r\n").collect();
    assert_eq!(lines[0], "HTTP/1.1 200 OK");
    assert!(lines[1].starts_with("date: "));
    assert_eq!(
        lines[2..],
        [
            "content-type: text/event-stream",
            "cache-control: no-store",
            "x-accel-buffering: no",
            "connection: close",
        ]
    );
    assert_eq!(body, TICKS);
    expect_report(&rx, "started");
    expect_report(&rx, "three done: true");
}

#[test]
fn closed_fires_when_an_idle_stream_loses_its_peer() {
    let (addr, rx) = server(Limits::default());
    let mut s = connect(addr, b"GET /idle HTTP/1.1\r\n\r\n");
    let mut buf = Vec::new();
    read_frames(&mut s, &mut buf, 4);
    let text = String::from_utf8(buf).unwrap();
    assert!(
        text.contains("\r\nx-session: w1\r\nconnection: close\r\n\r\n"),
        "{text}"
    );
    assert!(text.ends_with(TICKS));
    expect_report(&rx, "sent: true");
    // The producer now waits on `closed()` only.
    std::thread::sleep(Duration::from_millis(100));
    let dropped = Instant::now();
    drop(s);
    let closed = expect_report(&rx, "closed");
    let delay = closed.saturating_duration_since(dropped);
    assert!(delay < Duration::from_secs(1), "closed() after {delay:?}");
    expect_report(&rx, "late send failed: true");
}

#[test]
fn a_stream_ignoring_its_peer_is_dropped_after_the_grace_period() {
    let (addr, rx) = server(Limits::default());
    let mut s = connect(addr, b"GET /stubborn HTTP/1.1\r\n\r\n");
    read_frames(&mut s, &mut Vec::new(), 4);
    expect_report(&rx, "sent: true");
    let dropped = Instant::now();
    drop(s);
    let at = expect_report(&rx, "dropped");
    let after = at.saturating_duration_since(dropped);
    assert!(after >= CLOSE_GRACE, "{after:?}");
    assert!(after < CLOSE_GRACE + Duration::from_secs(2), "{after:?}");
}

#[test]
fn pipelined_answers_come_first_and_nothing_after_the_stream() {
    let (addr, rx) = server(Limits::default());
    let mut s = connect(
        addr,
        b"GET /plain HTTP/1.1\r\n\r\nGET /three HTTP/1.1\r\n\r\nGET /plain HTTP/1.1\r\n\r\n",
    );
    let text = read_to_eof(&mut s);
    let (plain, rest) = text.split_once("\r\n\r\nok").expect("first answer");
    assert!(plain.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
    assert!(
        rest.ends_with(&format!("connection: close\r\n\r\n{TICKS}")),
        "{rest}"
    );
    expect_report(&rx, "started");
    expect_report(&rx, "three done: true");
}

#[test]
fn head_and_bodyless_statuses_never_start_the_stream() {
    let (addr, rx) = server(Limits::default());
    let mut s = connect(addr, b"HEAD /three HTTP/1.1\r\n\r\n");
    let text = read_to_eof(&mut s);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(text.contains("content-type: text/event-stream\r\n"));
    assert!(text.ends_with("connection: close\r\n\r\n"), "{text}");

    let mut s = connect(addr, b"GET /nocontent HTTP/1.1\r\n\r\n");
    let text = read_to_eof(&mut s);
    assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"));
    assert!(text.ends_with("connection: close\r\n\r\n"), "{text}");
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
}

#[test]
fn a_reader_that_stops_reading_times_out_without_unbounded_buffering() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (addr, rx) = server(limits);
    let s = connect(addr, b"GET /flood HTTP/1.1\r\n\r\n");
    let (label, _) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("flood ends");
    let total: usize = label
        .strip_prefix("flood TimedOut ")
        .unwrap_or_else(|| panic!("{label}"))
        .parse()
        .unwrap();
    // What the socket buffers hold, no more.
    assert!(total < 64 << 20, "{total}");
    drop(s);
}

#[test]
fn curl_reads_the_stream() {
    let (addr, _rx) = server(Limits::default());
    let out = match std::process::Command::new("curl")
        .args([
            "-sSN",
            "--max-time",
            "10",
            "-H",
            "Accept: text/event-stream",
        ])
        .arg(format!("http://{addr}/three"))
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("curl not run ({e}); skipped");
            return;
        }
    };
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), TICKS);
}
