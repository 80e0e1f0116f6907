//! Watch streams (SPEC §6) as the load generator sees them: a session created with
//! `POST /v0/watch`, a raw `GET /v0/watch/:wid` socket whose body is framed by the end of
//! the connection, and a scanner that finds this generator's own records in the frames
//! without parsing JSON. Frames are `id:` / `event:` / `data:` lines ended by a blank line;
//! JSON on a `data:` line has no raw newline, so `\n\n` only ever ends a frame.

use std::io;
use std::sync::LazyLock;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use memchr::memmem;

use crate::client::{json_str, response_head, Client, Target};

/// Where a watch record of this generator starts inside an `event: record` frame: the
/// record's `data` value, `{"f":<id>,"t":<send µs>,...}`.
const RECORD_MARKER: &[u8] = br#""data":{"f":"#;
const SEND_KEY: &[u8] = br#","t":"#;
static RECORD_FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(RECORD_MARKER));
/// A stream's read buffer never grows beyond this (a reader that far behind is broken).
const MAX_BUF: usize = 64 << 20;

/// One record's `data` for the watch workloads: its id, the time it was sent (µs since the
/// run's epoch) and padding up to `bytes` bytes.
pub fn watch_record(id: u64, send_us: u64, bytes: usize) -> String {
    let head = format!(r#"{{"f":{id},"t":{send_us},"p":""#);
    let pad = bytes.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(bytes.max(head.len() + 2));
    s.push_str(&head);
    s.extend((0..pad).map(|i| char::from(b'a' + (i % 26) as u8)));
    s.push_str("\"}");
    s
}

/// Creates a watch session; returns its `wid`.
pub async fn create_session(
    client: &mut Client,
    target: &Target,
    body: &[u8],
) -> Result<String, String> {
    let req = target.request("POST", "/v0/watch", Some(body));
    let status = client
        .send(&req)
        .await
        .map_err(|e| format!("POST /v0/watch: {e}"))?;
    let resp = client.body();
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(&resp[..resp.len().min(300)]);
        return Err(format!("POST /v0/watch: HTTP {status}: {text}"));
    }
    json_str(resp, "wid")
        .map(str::to_string)
        .ok_or_else(|| "POST /v0/watch: no wid in the answer".to_string())
}

/// An open `GET /v0/watch/:wid`. `buf[..end]` holds body bytes not yet consumed.
pub struct WatchStream {
    stream: TcpStream,
    buf: Vec<u8>,
    end: usize,
}

impl WatchStream {
    /// Opens the stream and reads the response head; anything but `200` is an error.
    pub async fn connect(target: &Target, wid: &str, buf_size: usize) -> io::Result<WatchStream> {
        Self::open(target, &format!("/v0/watch/{wid}"), buf_size).await
    }

    /// Opens any SSE resource (`GET path`, e.g. a `/v1/stream/...?live=sse` read) and reads
    /// the response head; anything but `200` is an error.
    pub async fn open(target: &Target, path: &str, buf_size: usize) -> io::Result<WatchStream> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            target.host
        );
        let mut s = WatchStream {
            stream,
            buf: vec![0; buf_size.max(1024)],
            end: 0,
        };
        s.stream.write_all(req.as_bytes()).await?;
        loop {
            if let Some((status, len)) = response_head(&s.buf[..s.end])? {
                if status != 200 {
                    let text = String::from_utf8_lossy(&s.buf[len..s.end]).into_owned();
                    return Err(io::Error::other(format!(
                        "GET {path}: HTTP {status}: {text}"
                    )));
                }
                s.consume(len);
                return Ok(s);
            }
            if s.read().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the watch stream before its head",
                ));
            }
        }
    }

    /// Reads once, growing the buffer when it is full; `Ok(0)` when the server closed.
    pub async fn read(&mut self) -> io::Result<usize> {
        if self.end == self.buf.len() {
            if self.buf.len() >= MAX_BUF {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "watch frame too large",
                ));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// The complete frames received and not yet consumed (up to the last blank line).
    pub fn frames(&self) -> &[u8] {
        let pending = &self.buf[..self.end];
        memmem::rfind(pending, b"\n\n").map_or(&[], |at| &pending[..at + 2])
    }

    /// Drops the first `n` bytes of what was received.
    pub fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.end, 0);
        self.end -= n;
    }

    /// Reads until a complete frame contains `needle` (e.g. `event: caught-up`) and
    /// consumes everything up to the end of that frame; fails on an `event: error`.
    pub async fn wait_for(&mut self, needle: &[u8]) -> io::Result<()> {
        loop {
            let frames = self.frames();
            if let Some(at) = memmem::find(frames, needle) {
                let end = memmem::find(&frames[at..], b"\n\n").map_or(frames.len(), |e| at + e + 2);
                self.consume(end);
                return Ok(());
            }
            if let Some(at) = memmem::find(frames, b"event: error") {
                let text = String::from_utf8_lossy(&frames[at..]).into_owned();
                return Err(io::Error::other(text));
            }
            if self.read().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the watch stream",
                ));
            }
        }
    }

    /// Releases the read buffer of a stream that will not be read any more.
    pub fn shrink(&mut self) {
        self.buf = Vec::new();
        self.end = 0;
    }
}

/// Calls `found(id, send_us)` for each record of this generator in `frames`, in order.
pub fn scan_records(frames: &[u8], mut found: impl FnMut(u64, u64)) {
    for at in RECORD_FINDER.find_iter(frames) {
        let rest = &frames[at + RECORD_MARKER.len()..];
        let (id, used) = leading_u64(rest);
        let rest = &rest[used..];
        if used == 0 || !rest.starts_with(SEND_KEY) {
            continue;
        }
        let (t, used) = leading_u64(&rest[SEND_KEY.len()..]);
        if used > 0 {
            found(id, t);
        }
    }
}

fn leading_u64(b: &[u8]) -> (u64, usize) {
    let mut n = 0u64;
    let mut used = 0;
    for &c in b.iter().take(20) {
        if !c.is_ascii_digit() {
            break;
        }
        n = n.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
        used += 1;
    }
    (n, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_padded_and_found() {
        let data = watch_record(17, 123_456, 256);
        assert_eq!(data.len(), 256);
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["f"], 17);
        let frames = format!(
            "retry: 2000\n\nid: x\nevent: record\ndata: {{\"topic\":\"t\",\"records\":[\
             {{\"$seq\":1,\"$ts\":5,\"data\":{data}}},{{\"$seq\":2,\"$ts\":5,\"data\":{}}}],\
             \"from_seq\":0,\"to_seq\":2,\"head_seq\":2}}\n\nid: y\nevent: caught-up\n\
             data: {{\"topic\":\"t\",\"head_seq\":2}}\n\n",
            watch_record(18, 9, 64)
        );
        let mut got = Vec::new();
        scan_records(frames.as_bytes(), |id, t| got.push((id, t)));
        assert_eq!(got, vec![(17, 123_456), (18, 9)]);
    }
}
