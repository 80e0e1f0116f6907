//! Streaming responses (Server-Sent Events): the [`SseSink`] a stream writes through, the
//! driver that runs a stream on its connection, and SSE frame formatting.
//!
//! A streaming response is framed by the end of the connection (`connection: close`, no
//! `content-length`, no chunking), which is what `EventSource` and `curl -N` expect. While
//! the stream runs, the connection task polls two things: the stream's future, and a reader
//! that discards input and notices the peer closing (EOF or an error). The socket is shared
//! by the two through a `RefCell` borrowed only inside a single `poll_*` call, never across
//! an await, so a pending read never holds up a write; glommio keeps separate read and write
//! sources and timeouts per socket.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::future::{self, poll_fn};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use log::debug;

/// The media type of an event stream.
pub const SSE_CONTENT_TYPE: &str = "text/event-stream";
/// The first frame of a stream: reconnect after 2 s.
pub const SSE_RETRY: &[u8] = b"retry: 2000\n\n";
/// A heartbeat comment frame.
pub const SSE_HEARTBEAT: &[u8] = b": hb\n\n";

/// Once the peer has gone, how long a stream's future may still run (to release what it
/// holds, e.g. queue leases, which can take a call to another shard) before it is dropped.
#[cfg(not(test))]
const CLOSE_GRACE: Duration = Duration::from_secs(10);
#[cfg(test)]
const CLOSE_GRACE: Duration = Duration::from_millis(300);
/// Input after a streaming request is read and discarded; a peer sending more than this is
/// treated as gone.
const MAX_DISCARD: usize = 1024 * 1024;
/// Read size for discarded input: small, as it lives in every idle stream's task (peers
/// of a stream rarely send anything).
const DISCARD_BUF: usize = 128;

/// The body of a streaming response: called once with the connection's sink, after the
/// head is written; the connection closes when the returned future ends. Runs on the
/// connection's executor (not `Send`).
pub type StreamBody = Box<dyn FnOnce(SseSink) -> Pin<Box<dyn Future<Output = ()>>>>;

/// Where a streaming response writes its body.
///
/// [`send`](SseSink::send) writes straight to the socket (no buffering in between), so a
/// producer that awaits each send before preparing the next frame holds at most one frame,
/// however slowly the peer reads. A send that makes no progress for the connection's idle
/// timeout fails with `TimedOut`.
pub struct SseSink {
    shared: Rc<Shared>,
}

impl SseSink {
    /// Writes all of `bytes` (typically whole frames) and flushes them. Fails once the peer
    /// has gone (also while waiting for a slow reader) or the write timed out; after a
    /// failure the sink is closed and every later send fails at once.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let shared = &*self.shared;
        if shared.closed.get() {
            return Err(gone());
        }
        // While this send runs, a [`DirectWriter`] writes nothing (its bytes would land in
        // the middle of ours); reset however the send ends, also when it is dropped.
        let _sending = Sending::start(shared);
        let write = async {
            let mut rest = bytes;
            while !rest.is_empty() {
                let n = poll_fn(|cx| shared.poll_write(cx, rest)).await?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes"));
                }
                rest = rest.get(n..).unwrap_or_default();
            }
            poll_fn(|cx| shared.poll_flush(cx)).await
        };
        let peer_gone = async {
            poll_fn(|cx| shared.poll_closed(cx)).await;
            Err(gone())
        };
        let result = future::or(write, peer_gone).await;
        if let Err(e) = &result {
            debug!("http: stream send failed: {e}");
            shared.mark_closed();
        }
        result
    }

    /// A future that completes once the peer has closed the connection (or it failed, or a
    /// send failed). It borrows nothing, so it can be held while [`send`](Self::send)
    /// runs, raced against a producer's wait for new data, or moved to another task of the
    /// same executor.
    pub fn closed(&self) -> Closed {
        Closed {
            shared: self.shared.clone(),
        }
    }

    /// Whether the connection is known to be closed (see [`closed`](Self::closed)).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.get()
    }

    /// A handle that writes to this stream's socket without waiting, for another task of
    /// the same executor (e.g. one that hands the same frame to many streams).
    pub fn direct(&self) -> DirectWriter {
        DirectWriter {
            shared: self.shared.clone(),
        }
    }
}

/// Marks a [`SseSink::send`] in progress.
struct Sending<'a>(&'a Shared);

impl<'a> Sending<'a> {
    fn start(shared: &'a Shared) -> Self {
        shared.sending.set(true);
        Sending(shared)
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.sending.set(false);
    }
}

/// See [`SseSink::direct`]: writes what the socket takes at once, never waits.
pub struct DirectWriter {
    shared: Rc<Shared>,
}

impl DirectWriter {
    /// Writes as much of `bytes` as the socket takes right now and returns how much that
    /// was: all of it normally, a prefix or 0 when the peer reads slowly (or while the
    /// stream's own [`SseSink::send`] is in progress, which then writes nothing). The rest
    /// is the caller's to send, through the sink, before anything else. Fails once the
    /// connection is gone (and marks the stream closed).
    pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        let shared = &*self.shared;
        if shared.closed.get() {
            return Err(gone());
        }
        if shared.sending.get() || bytes.is_empty() {
            return Ok(0);
        }
        // A write that would block registers interest with this no-op waker; the sink's
        // next send registers its own.
        let mut cx = Context::from_waker(Waker::noop());
        match shared.poll_write(&mut cx, bytes) {
            Poll::Ready(Ok(n)) => Ok(n),
            Poll::Ready(Err(e)) => {
                debug!("http: stream direct write failed: {e}");
                shared.mark_closed();
                Err(e)
            }
            Poll::Pending => Ok(0),
        }
    }

    /// Whether the connection is known to be closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.get()
    }
}

/// See [`SseSink::closed`].
#[must_use = "futures do nothing unless polled"]
pub struct Closed {
    shared: Rc<Shared>,
}

impl Future for Closed {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_closed(cx)
    }
}

/// The state of a streaming connection, shared by the sink, `Closed` futures and the
/// driver.
struct Shared {
    /// Taken (and so closed) when the stream ends.
    stream: RefCell<Option<TcpStream>>,
    closed: Cell<bool>,
    /// A [`SseSink::send`] is in progress.
    sending: Cell<bool>,
    /// Tasks waiting in `poll_closed`, one waker per task.
    waiters: RefCell<Vec<Waker>>,
}

impl Shared {
    fn mark_closed(&self) {
        if !self.closed.replace(true) {
            for waker in self.waiters.take() {
                waker.wake();
            }
        }
    }

    fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.closed.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    // The socket is borrowed for one poll call only; polls never re-enter one another.

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.stream.borrow_mut().as_mut() {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.borrow_mut().as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.stream.borrow_mut().as_mut() {
            Some(s) => Pin::new(s).poll_read(cx, buf),
            None => Poll::Ready(Ok(0)),
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the stream's connection is closed",
    )
}

/// Runs a streaming body on a connection whose response head is already written, then
/// closes the connection: when the body's future ends, or [`CLOSE_GRACE`] after the peer
/// went away if the future has not ended by then.
pub(crate) async fn run_stream(stream: TcpStream, body: StreamBody) {
    // A stream may be idle for long; only the peer closing ends it. Writes keep the
    // connection's write timeout.
    if let Err(e) = stream.set_read_timeout(None) {
        debug!("http: clear read timeout: {e}");
    }
    let shared = Rc::new(Shared {
        stream: RefCell::new(Some(stream)),
        closed: Cell::new(false),
        sending: Cell::new(false),
        waiters: RefCell::new(Vec::new()),
    });
    let mut producer = body(SseSink {
        shared: shared.clone(),
    });
    let ended = future::or(
        async {
            (&mut producer).await;
            true
        },
        async {
            future::or(watch_peer(&shared), shared_closed(&shared)).await;
            false
        },
    )
    .await;
    if !ended {
        let ended = future::or(
            async {
                (&mut producer).await;
                true
            },
            async {
                glommio::timer::sleep(CLOSE_GRACE).await;
                false
            },
        )
        .await;
        if !ended {
            debug!("http: stream still running {CLOSE_GRACE:?} after its peer left; dropped");
        }
    }
    drop(producer);
    shared.mark_closed();
    let stream = shared.stream.borrow_mut().take();
    if let Some(stream) = stream {
        // End of body; dropping the socket then closes it.
        if let Err(e) = stream.shutdown(Shutdown::Write).await {
            debug!("http: stream shutdown: {e}");
        }
    }
}

async fn shared_closed(shared: &Shared) {
    poll_fn(|cx| shared.poll_closed(cx)).await;
}

/// Reads and discards input until the peer closes or the connection fails, then marks the
/// stream closed. A half-close by the peer counts as closing (as `EventSource` and `curl`
/// never half-close).
async fn watch_peer(shared: &Shared) {
    let mut buf = [0u8; DISCARD_BUF];
    let mut discarded = 0usize;
    loop {
        match poll_fn(|cx| shared.poll_read(cx, &mut buf)).await {
            Ok(0) => {
                debug!("http: stream peer closed");
                break;
            }
            Ok(n) => {
                discarded = discarded.saturating_add(n);
                if discarded > MAX_DISCARD {
                    debug!("http: stream peer sent over {MAX_DISCARD} bytes; closing");
                    break;
                }
            }
            Err(e) => {
                debug!("http: stream read: {e}");
                break;
            }
        }
        glommio::yield_if_needed().await;
    }
    shared.mark_closed();
}

/// Appends one SSE frame to `out`: `id:` (if any), `event:` (unless `event` is empty, which
/// leaves the default type `message`), one `data:` line per line of `data` (a line break is
/// CRLF, LF or CR, as SSE parsers read them), then the blank line ending the frame. Line
/// breaks and NULs in `id` and `event` become spaces.
pub fn sse_event(out: &mut Vec<u8>, id: Option<&str>, event: &str, data: &[u8]) {
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        push_field(out, id);
        out.push(b'\n');
    }
    if !event.is_empty() {
        out.extend_from_slice(b"event: ");
        push_field(out, event);
        out.push(b'\n');
    }
    let mut rest = data;
    loop {
        out.extend_from_slice(b"data: ");
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            None => {
                out.extend_from_slice(rest);
                out.push(b'\n');
                break;
            }
            Some(i) => {
                out.extend_from_slice(&rest[..i]);
                out.push(b'\n');
                let crlf = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
                rest = rest.get(i + 1 + usize::from(crlf)..).unwrap_or_default();
            }
        }
    }
    out.push(b'\n');
}

fn push_field(out: &mut Vec<u8>, s: &str) {
    let start = out.len();
    out.extend_from_slice(s.as_bytes());
    for b in &mut out[start..] {
        if matches!(*b, b'\r' | b'\n' | 0) {
            *b = b' ';
        }
    }
}

/// One SSE event in the Durable Streams style, `data:<line>` without a space (what that
/// protocol's clients expect) and no `id:`: every line break of
/// `data` (CR, LF or CRLF) starts a new `data:` line, so a payload cannot end the event or
/// start another; a line starting with a space gets one more (the parser strips one).
pub fn sse_event_compact(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    let mut rest = data;
    loop {
        let end = line_break(rest).unwrap_or(rest.len());
        out.extend_from_slice(b"data:");
        if rest.first() == Some(&b' ') {
            out.push(b' ');
        }
        out.extend_from_slice(&rest[..end]);
        out.push(b'\n');
        if end == rest.len() {
            break;
        }
        let crlf = rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n');
        rest = &rest[end + 1 + usize::from(crlf)..];
    }
    out.push(b'\n');
}

/// The first CR or LF in `s`. Every subscriber of an SSE read scans every event it sends,
/// so blocks without a line break (all of a JSON record normally) are skipped 32 bytes at a
/// time, in a form the compiler vectorises.
fn line_break(s: &[u8]) -> Option<usize> {
    const BLOCK: usize = 32;
    let mut at = 0;
    for block in s.chunks_exact(BLOCK) {
        if block
            .iter()
            .fold(false, |hit, &b| hit | (b == b'\n') | (b == b'\r'))
        {
            break;
        }
        at += BLOCK;
    }
    s[at..]
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .map(|p| at + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_lines_and_keep_leading_spaces() {
        let mut out = Vec::new();
        sse_event_compact(&mut out, "data", b"a\r\n\r\nevent: x\r b\nc");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "event: data\ndata:a\ndata:\ndata:event: x\ndata:  b\ndata:c\n\n"
        );
    }

    #[test]
    fn line_breaks_are_found_in_any_block() {
        for len in [0, 1, 31, 32, 33, 64, 100] {
            let clean = vec![b'x'; len];
            assert_eq!(line_break(&clean), None, "{len}");
            for at in 0..len {
                for br in [b'\n', b'\r'] {
                    let mut s = clean.clone();
                    s[at] = br;
                    if at + 1 < len {
                        s[len - 1] = b'\n';
                    }
                    assert_eq!(line_break(&s), Some(at), "{len} {at}");
                }
            }
        }
    }

    fn frame(id: Option<&str>, event: &str, data: &[u8]) -> String {
        let mut out = Vec::new();
        sse_event(&mut out, id, event, data);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn frames() {
        assert_eq!(
            frame(Some("eyJhIjoxfQ"), "record", br#"{"topic":"a"}"#),
            "id: eyJhIjoxfQ\nevent: record\ndata: {\"topic\":\"a\"}\n\n"
        );
        assert_eq!(
            frame(None, "caught-up", b"{}"),
            "event: caught-up\ndata: {}\n\n"
        );
        assert_eq!(frame(None, "", b"x"), "data: x\n\n");
        assert_eq!(frame(None, "e", b""), "event: e\ndata: \n\n");
        // A leading space survives: parsers strip exactly one after the colon.
        assert_eq!(frame(None, "e", b" x"), "event: e\ndata:  x\n\n");
    }

    #[test]
    fn multi_line_data() {
        assert_eq!(
            frame(Some("7"), "job", b"a\nb"),
            "id: 7\nevent: job\ndata: a\ndata: b\n\n"
        );
        assert_eq!(
            frame(None, "e", b"a\r\nb\rc\n\nd"),
            "event: e\ndata: a\ndata: b\ndata: c\ndata: \ndata: d\n\n"
        );
        assert_eq!(frame(None, "e", b"a\n"), "event: e\ndata: a\ndata: \n\n");
        assert_eq!(frame(None, "e", b"\r"), "event: e\ndata: \ndata: \n\n");
    }

    #[test]
    fn fields_cannot_inject_lines() {
        assert_eq!(
            frame(Some("1\ndata: x"), "a\r\nb\0", b"d"),
            "id: 1 data: x\nevent: a  b \ndata: d\n\n"
        );
    }

    #[test]
    fn constants() {
        assert_eq!(SSE_RETRY, b"retry: 2000\n\n");
        assert_eq!(SSE_HEARTBEAT, b": hb\n\n");
        assert_eq!(SSE_CONTENT_TYPE, "text/event-stream");
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod stream_tests;
