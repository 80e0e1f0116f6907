//! One connection: read, parse, hand to the handler, write back, in order.

use std::io;
use std::net::Shutdown;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use log::debug;

use super::parse::{Parsed, Parser, Step};
use super::response::{
    body_allowed, http_date, wire_status, write_framed, write_stream_head, Framing,
};
use super::sse::{run_stream, StreamBody};
use super::{Handler, Limits, Response};

/// Initial size of the per-connection read buffer.
const INITIAL_READ_BUF: usize = 8 * 1024;
/// Smallest read worth issuing; the buffer is compacted or grown to offer at least this.
const MIN_READ: usize = 4 * 1024;
/// Room for body reads above the head limit; the read buffer never grows past
/// `max_head_bytes + READ_HEADROOM`.
const READ_HEADROOM: usize = 64 * 1024;
/// A batch of pipelined responses is flushed early once this big.
const FLUSH_AT: usize = 256 * 1024;
/// Bodies at least this big are written straight from the response, not copied.
const LARGE_BODY: usize = 64 * 1024;
/// A write buffer whose capacity grew past this is released after a flush.
const KEEP_WRITE_BUF: usize = 256 * 1024;
/// After answering and closing our side, how long and how much unread input is drained so
/// the peer sees the response instead of a reset.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 * 1024 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Serve one accepted connection until it closes. Never panics on any input.
///
/// Requests are answered strictly in order. Responses to requests that were already
/// buffered together (pipelining) are written with one write once no further complete
/// request is buffered. A request head must arrive within `idle_timeout` of the previous
/// response (or of the accept); while a body is arriving, each read must make progress
/// within `idle_timeout`. Protocol errors are answered through [`Handler::error`], then the
/// connection is closed; I/O errors just drop it.
///
/// A streaming response ([`Response::stream`]) is the connection's last: its head is
/// written at once, the stream runs until it ends or the peer goes away, then the
/// connection closes; requests pipelined after it are not answered.
pub async fn serve_connection<H: Handler>(stream: TcpStream, handler: Rc<H>, limits: Limits) {
    let mut conn = Conn {
        stream,
        limits,
        rbuf: ReadBuf::new(limits.max_head_bytes.saturating_add(READ_HEADROOM)),
        wbuf: Vec::with_capacity(INITIAL_READ_BUF),
        date: DateCache::default(),
    };
    if let Err(e) = conn.stream.set_nodelay(true) {
        debug!("http: set TCP_NODELAY: {e}");
    }
    if !limits.idle_timeout.is_zero() {
        if let Err(e) = conn.stream.set_write_timeout(Some(limits.idle_timeout)) {
            debug!("http: set write timeout: {e}");
        }
    }
    match conn.run(&*handler).await {
        Ok(Close::Linger) => conn.linger().await,
        Ok(Close::Now) => {}
        Ok(Close::Stream(body)) => {
            // Free the request buffers now: a stream may stay open for hours. (Destructuring
            // `conn` in place would only move the socket out and keep the rest of it, buffers
            // included, until this function returns.)
            let stream = conn.into_stream();
            run_stream(stream, body).await
        }
        Err(e) => {
            let peer = conn.stream.peer_addr().ok();
            debug!("http: connection from {peer:?} dropped: {e}");
        }
    }
}

/// How a connection ends when no I/O error ended it.
enum Close {
    /// The peer closed or timed out: nothing more to say.
    Now,
    /// We answered and close: shut our side and drain input for a moment.
    Linger,
    /// The head of a streaming response is out: run its body on the connection.
    Stream(StreamBody),
}

impl Conn {
    /// The socket; everything else of the connection is dropped here.
    fn into_stream(self) -> TcpStream {
        self.stream
    }
}

struct Conn {
    stream: TcpStream,
    limits: Limits,
    rbuf: ReadBuf,
    wbuf: Vec<u8>,
    date: DateCache,
}

impl Conn {
    async fn run<H: Handler>(&mut self, handler: &H) -> io::Result<Close> {
        let idle = self.limits.idle_timeout;
        let mut parser = Parser::new(self.limits.max_head_bytes, self.limits.max_body_bytes);
        let mut head_deadline = Instant::now().checked_add(idle);
        loop {
            // Answer every complete request already buffered, in order.
            loop {
                let (n, step) = parser.advance(self.rbuf.filled());
                self.rbuf.consume(n);
                match step {
                    Step::NeedMore => break,
                    Step::Continue => {
                        self.wbuf.extend_from_slice(CONTINUE);
                        break;
                    }
                    Step::Request(parsed) => {
                        let Parsed {
                            req,
                            keep_alive,
                            http10,
                        } = *parsed;
                        let head_only = req.method == "HEAD";
                        let mut resp = handler.handle(req).await;
                        if let Some(body) = resp.stream.take() {
                            return self.start_stream(&resp, body, head_only).await;
                        }
                        let framing = Framing {
                            keep_alive,
                            http10,
                            head_only,
                            ..Framing::default()
                        };
                        self.push_response(&resp, framing).await?;
                        if !keep_alive {
                            self.flush().await?;
                            return Ok(Close::Linger);
                        }
                        head_deadline = Instant::now().checked_add(idle);
                    }
                    Step::Error(e) => {
                        debug!("http: {} {}: {}", e.status, e.code, e.message);
                        let resp = handler.error(e.status, e.code, e.message);
                        self.push_response(&resp, Framing::default()).await?;
                        self.flush().await?;
                        return Ok(Close::Linger);
                    }
                }
            }
            // Nothing more can be answered without input: never hold responses back.
            self.flush().await?;

            // A zero timeout disables it; one too far out to represent is none too.
            let timeout = match head_deadline {
                _ if idle.is_zero() => None,
                _ if parser.in_body() => Some(idle),
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => {
                        debug!("http: idle timeout");
                        return Ok(Close::Now);
                    }
                },
            };
            match self.read(timeout).await {
                Ok(0) => return Ok(Close::Now),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    debug!("http: idle timeout");
                    return Ok(Close::Now);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads once into the read buffer, with an optional timeout.
    async fn read(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        self.stream.set_read_timeout(timeout)?;
        let spare = self.rbuf.spare();
        if spare.is_empty() {
            // Unreachable by the parser's limits; refuse rather than buffer without bound.
            return Err(io::Error::other("read buffer full"));
        }
        let n = self.stream.read(spare).await?;
        self.rbuf.commit(n);
        Ok(n)
    }

    /// Writes the head of a streaming response after anything still buffered. The body runs
    /// only if the status allows one and the request was not `HEAD`; otherwise this is an
    /// ordinary last response.
    async fn start_stream(
        &mut self,
        resp: &Response,
        body: StreamBody,
        head_only: bool,
    ) -> io::Result<Close> {
        if !body_allowed(wire_status(resp.status)) {
            self.push_response(resp, Framing::default()).await?;
            self.flush().await?;
            return Ok(Close::Linger);
        }
        let date = self.date.now();
        write_stream_head(&mut self.wbuf, resp, Some(&date));
        self.flush().await?;
        if head_only {
            return Ok(Close::Linger);
        }
        Ok(Close::Stream(body))
    }

    /// Appends a response to the write buffer; large bodies are written directly.
    async fn push_response(&mut self, resp: &Response, mut framing: Framing<'_>) -> io::Result<()> {
        let date = self.date.now();
        framing.date = Some(&date);
        let direct =
            resp.body.len() >= LARGE_BODY && !framing.head_only && body_allowed(resp.status);
        framing.omit_body = direct;
        write_framed(&mut self.wbuf, resp, framing);
        if direct {
            self.flush().await?;
            self.stream.write_all(&resp.body).await?;
        } else if self.wbuf.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        if self.wbuf.capacity() > KEEP_WRITE_BUF {
            self.wbuf = Vec::with_capacity(INITIAL_READ_BUF);
        }
        Ok(())
    }

    /// Closes our side, then discards input for a bounded time and size so that a peer
    /// still sending (a rejected upload, pipelined requests after `close`) reads our
    /// response rather than a connection reset.
    async fn linger(&mut self) {
        if self.stream.shutdown(Shutdown::Write).await.is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER_TIME;
        let mut drained = 0usize;
        while drained < LINGER_BYTES {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            if left.is_zero() {
                break;
            }
            self.rbuf.clear();
            match self.read(Some(left)).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    }
}

/// The reused per-connection read buffer: `data[start..end]` is received but unconsumed.
struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
}

impl ReadBuf {
    fn new(max: usize) -> Self {
        ReadBuf {
            data: vec![0; INITIAL_READ_BUF.min(max).max(MIN_READ)],
            start: 0,
            end: 0,
            max: max.max(MIN_READ),
        }
    }

    fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Free space after the unconsumed bytes, at least `MIN_READ` unless the buffer is at
    /// its maximum size and full.
    fn spare(&mut self) -> &mut [u8] {
        if self.data.len() - self.end < MIN_READ && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.data.len() - self.end < MIN_READ && self.data.len() < self.max {
            let grown = (self.data.len() * 2).max(self.end + MIN_READ).min(self.max);
            self.data.resize(grown, 0);
        }
        &mut self.data[self.end..]
    }

    fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.data.len());
    }
}

/// The `Date` header value, formatted once per second.
#[derive(Default)]
struct DateCache {
    secs: u64,
    text: [u8; 29],
}

impl DateCache {
    fn now(&mut self) -> [u8; 29] {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if secs != self.secs || self.text[0] == 0 {
            self.secs = secs;
            self.text = http_date(secs);
        }
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buf_compacts_and_grows_within_bounds() {
        let mut b = ReadBuf::new(20_000);
        assert_eq!(b.spare().len(), INITIAL_READ_BUF);
        b.spare()[..5].copy_from_slice(b"hello");
        b.commit(5);
        assert_eq!(b.filled(), b"hello");
        b.consume(2);
        assert_eq!(b.filled(), b"llo");
        b.consume(3);
        assert_eq!((b.start, b.end), (0, 0));

        // Fill most of the buffer, consume a bit: spare compacts first.
        let n = INITIAL_READ_BUF - 100;
        b.spare()[..n].fill(b'x');
        b.commit(n);
        b.consume(MIN_READ);
        let spare = b.spare().len();
        assert!(spare >= MIN_READ);
        assert_eq!(b.start, 0);
        assert_eq!(b.filled().len(), n - MIN_READ);

        // Grow to the maximum, never beyond.
        loop {
            let s = b.spare().len();
            if s == 0 {
                break;
            }
            b.commit(s);
        }
        assert_eq!(b.data.len(), 20_000);
        assert_eq!(b.filled().len(), 20_000);
        b.consume(usize::MAX);
        assert_eq!(b.filled(), b"");
    }

    #[test]
    fn date_cache_formats() {
        let mut d = DateCache::default();
        let text = d.now();
        assert!(text.ends_with(b" GMT"));
        assert_eq!(text[3], b',');
    }
}
