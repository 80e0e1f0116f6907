//! A busy-polling driver for closed-loop workloads (`--io busy-poll`): one OS thread per
//! `--cpu` drives its share of the connections through non-blocking sockets and never sleeps.
//!
//! With the default driver (glommio, io_uring) every response the server sends must wake the
//! load generator's parked socket wait: on loopback the sender pays for that wake-up, and on
//! this VM it is an inter-processor interrupt costing the server several microseconds per
//! request (`sock_def_readable` in a server profile). A client that polls its sockets
//! without ever waiting on them takes that cost out, as a low-latency client on a dedicated
//! core would. Both drivers send the same bytes and record the same figures.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::exec::{Pin, Window};
use crate::stats::Recorder;
use crate::workloads::ClosedLoop;
use crate::Args;

struct Conn {
    stream: TcpStream,
    /// Bytes received of the current response.
    buf: Vec<u8>,
    /// When the request in flight was sent (`None`: idle).
    sent: Option<Instant>,
    next: usize,
}

/// Parses one complete response off the front of `buf`: (status, its length), or `None` if
/// more bytes are needed.
fn complete(buf: &[u8]) -> io::Result<Option<(u16, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(head)) => {
            let status = resp.code.unwrap_or(0);
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .unwrap_or(0);
            Ok((buf.len() >= head + len).then_some((status, head + len)))
        }
        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
    }
}

fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn drive(
    target: std::net::SocketAddr,
    plan: &ClosedLoop,
    ids: Vec<usize>,
    window: Window,
) -> Recorder {
    let mut rec = Recorder::new();
    let n = plan.requests.len();
    let mut conns: Vec<Conn> = Vec::new();
    for i in ids {
        match TcpStream::connect(target).and_then(|s| {
            s.set_nodelay(true)?;
            s.set_nonblocking(true)?;
            Ok(s)
        }) {
            Ok(stream) => conns.push(Conn {
                stream,
                buf: Vec::with_capacity(4096),
                sent: None,
                next: i % n,
            }),
            Err(e) => rec.io_error(&e),
        }
    }
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        if window.over(now) && conns.iter().all(|c| c.sent.is_none()) {
            break;
        }
        let mut failed = Vec::new();
        for (idx, c) in conns.iter_mut().enumerate() {
            if c.sent.is_none() {
                if window.over(Instant::now()) {
                    continue;
                }
                let req = &plan.requests[c.next];
                c.next = (c.next + 1) % n;
                c.sent = Some(Instant::now());
                // Small requests fit the socket buffer; a blocking moment here is harmless.
                c.stream.set_nonblocking(false).ok();
                let w = c.stream.write_all(req);
                c.stream.set_nonblocking(true).ok();
                if let Err(e) = w {
                    rec.io_error(&e);
                    failed.push(idx);
                }
                continue;
            }
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    rec.io_error(&io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
                    failed.push(idx);
                }
                Ok(k) => {
                    c.buf.extend_from_slice(&chunk[..k]);
                    match complete(&c.buf) {
                        Ok(None) => {}
                        Ok(Some((status, used))) => {
                            let done = Instant::now();
                            let sent = c.sent.take().unwrap_or(done);
                            if window.measuring(done) && !window.over(done) {
                                rec.response(status, done - sent, plan.records_per_request);
                            }
                            c.buf.drain(..used);
                        }
                        Err(e) => {
                            rec.io_error(&e);
                            failed.push(idx);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    rec.io_error(&e);
                    failed.push(idx);
                }
            }
        }
        for idx in failed.into_iter().rev() {
            conns.swap_remove(idx);
        }
        if conns.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
            if window.over(Instant::now()) {
                break;
            }
        }
    }
    rec
}

/// [`crate::workloads::closed_loop`] with busy-polling threads instead of glommio executors.
pub fn closed_loop(
    args: &Args,
    target: std::net::SocketAddr,
    plan: ClosedLoop,
) -> Result<(Recorder, Duration), String> {
    let plan = Arc::new(plan);
    let window = Window::new(args.warmup(), args.duration());
    let cpus: Vec<Option<usize>> = match args.cpus().placement {
        Pin::Pinned(v) => v.into_iter().map(Some).collect(),
        Pin::Unbound(k) => vec![None; k.max(1)],
    };
    let count = cpus.len();
    let threads: Vec<_> = cpus
        .into_iter()
        .enumerate()
        .map(|(index, cpu)| {
            let plan = plan.clone();
            std::thread::spawn(move || {
                if let Some(c) = cpu {
                    pin_to(c);
                }
                let ids = (index..plan.connections).step_by(count).collect();
                drive(target, &plan, ids, window)
            })
        })
        .collect();
    let mut rec = Recorder::new();
    for t in threads {
        let part = t
            .join()
            .map_err(|_| "a busy-poll thread panicked".to_string())?;
        rec.merge(&part);
    }
    Ok((rec, window.duration()))
}

#[cfg(test)]
mod tests {
    use super::complete;

    #[test]
    fn responses_are_framed_by_content_length() {
        let r = b"HTTP/1.1 204 No Content\r\nstream-next-offset: x\r\n\r\nHTTP/1.1 200";
        assert_eq!(complete(r).unwrap(), Some((204, r.len() - 12)));
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nabc";
        assert_eq!(complete(r).unwrap(), None);
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nabcde";
        assert_eq!(complete(r).unwrap(), Some((200, r.len())));
        assert_eq!(complete(b"HTTP/1.1 2").unwrap(), None);
    }
}
