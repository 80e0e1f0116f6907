//! An SSE reader for the black-box tests: opens `GET /v0/watch/:wid` on a raw TCP connection,
//! checks the response head, then parses the stream (framed by connection close) into
//! `retry:` / `: comment` / `id:`+`event:`+`data:` frames, with read timeouts.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::Resp;
use super::Server;

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    let mut s = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..=chunk.len() {
            s.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    s
}

/// Decodes base64url (padding tolerated); `None` on a character outside the alphabet.
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = B64.iter().position(|x| *x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// The event id for a cursor map, as the server builds it (base64url of compact JSON).
pub fn event_id(cursors: &[(&str, u64)]) -> String {
    let m: BTreeMap<&str, u64> = cursors.iter().cloned().collect();
    b64url(serde_json::to_string(&m).unwrap().as_bytes())
}

/// FNV-1a 64 of the name, modulo `shards`: the core that owns a topic.
pub fn shard_of(name: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

/// The first name `{prefix}{k}` (k = 0, 1, ...) that lives on `shard` of `shards`.
pub fn name_on_shard(prefix: &str, shard: usize, shards: usize) -> String {
    (0..10_000)
        .map(|k| format!("{prefix}{k}"))
        .find(|n| shard_of(n, shards) == shard)
        .expect("some name hashes to the shard")
}

/// One SSE frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `retry: N`
    Retry(u64),
    /// `: text` (a comment alone in its block, e.g. `: hb`)
    Comment(String),
    /// A data frame.
    Event {
        id: Option<String>,
        event: String,
        data: String,
    },
}

impl Frame {
    pub fn event(&self) -> Option<&str> {
        match self {
            Frame::Event { event, .. } => Some(event),
            _ => None,
        }
    }

    pub fn is_hb(&self) -> bool {
        matches!(self, Frame::Comment(c) if c == "hb")
    }

    /// The data as JSON; panics if it is not.
    pub fn json(&self) -> Value {
        match self {
            Frame::Event { data, .. } => serde_json::from_str(data)
                .unwrap_or_else(|e| panic!("frame data is not JSON ({e}): {data:?}")),
            other => panic!("not a data frame: {other:?}"),
        }
    }

    pub fn id(&self) -> Option<&str> {
        match self {
            Frame::Event { id, .. } => id.as_deref(),
            _ => None,
        }
    }

    /// The decoded `id:` cursor map; panics when the id is missing or malformed, or when
    /// its JSON is not compact.
    pub fn cursors(&self) -> BTreeMap<String, u64> {
        let id = self
            .id()
            .unwrap_or_else(|| panic!("frame has no id: {self:?}"));
        decode_id(id)
    }
}

/// Decodes an event id into its cursor map; asserts base64url of compact JSON.
pub fn decode_id(id: &str) -> BTreeMap<String, u64> {
    assert!(
        id.bytes().all(|c| B64.contains(&c)),
        "id {id:?} is not unpadded base64url"
    );
    let raw = b64url_decode(id).unwrap_or_else(|| panic!("id {id:?} is not base64url"));
    let text = String::from_utf8(raw).unwrap_or_else(|_| panic!("id {id:?} is not UTF-8"));
    let m: BTreeMap<String, u64> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("id {id:?} = {text:?} is not a cursor map: {e}"));
    let compact = serde_json::to_string(&serde_json::from_str::<Value>(&text).unwrap()).unwrap();
    assert_eq!(text.len(), compact.len(), "id JSON {text:?} is not compact");
    m
}

/// What `next` saw.
#[derive(Debug)]
pub enum Next {
    Frame(Frame),
    Timeout,
    Closed,
}

/// An open SSE response.
pub struct Sse {
    stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `GET path` with `Accept: text/event-stream` plus `headers` on a new connection.
/// Returns the open stream on 200, else the whole (JSON) error response.
pub fn open_path(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<Sse, Resp> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("accept"))
    {
        req.push_str("Accept: text/event-stream\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("send GET");
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut tmp).expect("read SSE response head");
        assert!(
            n > 0,
            "closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut sse = Sse {
        stream,
        buf,
        closed: false,
        status,
        headers,
    };
    if status == 200 {
        return Ok(sse);
    }
    let len: usize = sse
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while sse.buf.len() < len {
        let n = sse.stream.read(&mut tmp).expect("read error body");
        if n == 0 {
            break;
        }
        sse.buf.extend_from_slice(&tmp[..n]);
    }
    Err(Resp {
        status,
        reason: String::new(),
        headers: sse.headers.clone(),
        body: sse.buf[..len.min(sse.buf.len())].to_vec(),
    })
}

/// Opens `/v0/watch/{wid}`, panicking unless the answer is 200.
pub fn open(s: &Server, wid: &str) -> Sse {
    open_with(s, wid, &[])
}

pub fn open_with(s: &Server, wid: &str, headers: &[(&str, &str)]) -> Sse {
    match open_path(s.port, &format!("/v0/watch/{wid}"), headers) {
        Ok(sse) => sse,
        Err(r) => panic!("open watch {wid}: {} {}", r.status, r.text()),
    }
}

/// `POST /v0/watch`; asserts 200 and returns `(wid, body)`.
pub fn create(s: &Server, body: Value) -> (String, Value) {
    let (st, v) = s.json_post("/v0/watch", &body);
    assert_eq!(st, 200, "POST /v0/watch {body}: {v}");
    let wid = v["wid"]
        .as_str()
        .unwrap_or_else(|| panic!("no wid in {v}"))
        .to_string();
    (wid, v)
}

/// Creates a session and opens it; asserts `retry: 2000` comes first.
pub fn watch(s: &Server, body: Value) -> (String, Sse) {
    let (wid, _) = create(s, body);
    let mut sse = open(s, &wid);
    sse.expect_retry();
    (wid, sse)
}

impl Sse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Parses one complete frame out of the buffer, if there is one. Blocks of only
    /// comment lines become `Comment`s; a block with only `retry:` becomes `Retry`.
    fn parse_one(&mut self) -> Option<Frame> {
        loop {
            // Normalise CRLF lazily: find the first blank line.
            let text = &self.buf;
            let (end, sep) = match (find(text, b"\n\n"), find(text, b"\r\n\r\n")) {
                (Some(a), Some(b)) if b < a => (b, 4),
                (Some(a), _) => (a, 2),
                (None, Some(b)) => (b, 4),
                (None, None) => return None,
            };
            let block = String::from_utf8(self.buf[..end].to_vec()).expect("frame is UTF-8");
            self.buf.drain(..end + sep);
            let mut id = None;
            let mut event = String::new();
            let mut data: Option<String> = None;
            let mut comment = None;
            let mut retry = None;
            for line in block.split('\n') {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.is_empty() {
                    continue;
                }
                if let Some(c) = line.strip_prefix(':') {
                    comment = Some(c.strip_prefix(' ').unwrap_or(c).to_string());
                    continue;
                }
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match field {
                    "id" => id = Some(value.to_string()),
                    "event" => event = value.to_string(),
                    "data" => {
                        data = Some(match data {
                            Some(d) => format!("{d}\n{value}"),
                            None => value.to_string(),
                        })
                    }
                    "retry" => {
                        retry = Some(value.parse().unwrap_or_else(|_| {
                            panic!("bad retry line {line:?}");
                        }))
                    }
                    other => panic!("unknown SSE field {other:?} in {block:?}"),
                }
            }
            if let Some(data) = data {
                return Some(Frame::Event {
                    id,
                    event: if event.is_empty() {
                        "message".into()
                    } else {
                        event
                    },
                    data,
                });
            }
            assert!(
                id.is_none() && event.is_empty(),
                "frame with id/event but no data: {block:?}"
            );
            if let Some(r) = retry {
                return Some(Frame::Retry(r));
            }
            if let Some(c) = comment {
                return Some(Frame::Comment(c));
            }
        }
    }

    /// The next frame, waiting at most `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Next {
        let deadline = Instant::now() + timeout;
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            if let Some(f) = self.parse_one() {
                return Next::Frame(f);
            }
            if self.closed {
                return Next::Closed;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::Timeout;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.stream.read(&mut tmp) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Next::Timeout
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
    }

    /// The next frame; panics on timeout or close.
    pub fn frame(&mut self, timeout: Duration) -> Frame {
        match self.next(timeout) {
            Next::Frame(f) => f,
            other => panic!("expected an SSE frame within {timeout:?}, got {other:?}"),
        }
    }

    /// The next frame that is not a heartbeat.
    pub fn data_frame(&mut self, timeout: Duration) -> Frame {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self.frame(left);
            if !f.is_hb() {
                return f;
            }
        }
    }

    pub fn expect_retry(&mut self) {
        let f = self.frame(Duration::from_secs(5));
        assert_eq!(f, Frame::Retry(2000), "first frame must be `retry: 2000`");
    }

    /// Every frame until `timeout` passes with nothing new (or the stream closes).
    pub fn drain(&mut self, quiet: Duration) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Next::Frame(f) = self.next(quiet) {
            out.push(f);
        }
        out
    }

    /// Reads frames until `done` returns true for the collected list; panics after
    /// `timeout`. Returns every frame read (heartbeats included).
    pub fn until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[Frame]) -> bool,
    ) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            if done(&out) {
                return out;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Next::Frame(f) => out.push(f),
                other => panic!(
                    "condition not met within {timeout:?} ({other:?}); frames so far:\n{}",
                    summary(&out)
                ),
            }
        }
    }

    /// Reads until the stream has delivered `topic` up to `seq` (its `id` cursor ≥ seq).
    pub fn until_cursor(&mut self, topic: &str, seq: u64, timeout: Duration) -> Vec<Frame> {
        self.until(timeout, |fs| {
            fs.iter()
                .rev()
                .find_map(|f| f.id().map(decode_id))
                .is_some_and(|m| m.get(topic).copied().unwrap_or(0) >= seq)
        })
    }
}

/// One line per frame, for failure messages.
pub fn summary(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|f| match f {
            Frame::Event { id, event, data } => {
                let d = if data.len() > 300 { &data[..300] } else { data };
                format!("  [{event}] id={id:?} {d}")
            }
            other => format!("  {other:?}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The record frames of `topic`, in order.
pub fn record_frames(frames: &[Frame], topic: &str) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| f.event() == Some("record"))
        .map(Frame::json)
        .filter(|v| v["topic"] == json!(topic))
        .collect()
}

/// The records (frame `records` entries) of `topic`, concatenated in order.
pub fn records_of(frames: &[Frame], topic: &str) -> Vec<Value> {
    record_frames(frames, topic)
        .into_iter()
        .flat_map(|v| v["records"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The `$seq`s delivered for `topic`, in order.
pub fn seqs(frames: &[Frame], topic: &str) -> Vec<u64> {
    records_of(frames, topic)
        .iter()
        .map(|r| r["$seq"].as_u64().expect("$seq"))
        .collect()
}

/// Frames with the given event name.
pub fn events<'a>(frames: &'a [Frame], event: &str) -> Vec<&'a Frame> {
    frames.iter().filter(|f| f.event() == Some(event)).collect()
}

/// Checks the invariants every stream keeps: data frames carry ids whose cursor map names
/// every topic in `topics`; per topic, record frames never go back (`from_seq` ≥ cursor)
/// and their records are ascending inside `(from_seq, to_seq]`; the id after a record frame
/// puts the topic at `to_seq`; heartbeats carry no id.
pub fn check_stream(frames: &[Frame], topics: &[&str], start: &BTreeMap<String, u64>) {
    let mut cur = start.clone();
    for f in frames {
        let Frame::Event { event, .. } = f else {
            continue;
        };
        if event == "error" {
            continue;
        }
        let ids = f.cursors();
        for t in topics {
            assert!(ids.contains_key(*t), "id of {f:?} lacks topic {t}: {ids:?}");
        }
        let v = f.json();
        let topic = v["topic"].as_str().expect("frame topic").to_string();
        if event == "record" {
            let from = v["from_seq"].as_u64().expect("from_seq");
            let to = v["to_seq"].as_u64().expect("to_seq");
            let head = v["head_seq"].as_u64().expect("head_seq");
            // `from_seq` is the topic's cursor before the frame (it may be past the last
            // id when node-filtered records were skipped silently).
            if let Some(c) = cur.get(&topic) {
                assert!(
                    from >= *c,
                    "record frame goes back before the cursor {c}: {f:?}"
                );
            }
            let recs = v["records"].as_array().expect("records");
            assert!(!recs.is_empty(), "empty record frame {f:?}");
            let mut last = from;
            for r in recs {
                let s = r["$seq"].as_u64().expect("$seq");
                assert!(
                    s > last && s <= to,
                    "seq {s} out of ({last}, {to}] in {f:?}"
                );
                last = s;
            }
            assert!(to <= head, "to_seq above head_seq in {f:?}");
            assert_eq!(ids[&topic], to, "id cursor after {f:?}");
        }
        if event == "tombstone" {
            assert_eq!(
                ids[&topic],
                v["gap_to"].as_u64().expect("gap_to"),
                "a tombstone's id moves the cursor to gap_to: {f:?}"
            );
        }
        for (t, c) in &ids {
            cur.insert(t.clone(), *c);
        }
    }
}

// Helpers shared by the watch test files.

pub fn range(a: u64, b: u64) -> Vec<u64> {
    (a..=b).collect()
}

pub fn start_map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

pub fn is_caught_up(f: &Frame, topic: &str) -> bool {
    f.event() == Some("caught-up") && f.json()["topic"] == serde_json::json!(topic)
}

pub fn has_caught_up(fs: &[Frame], topic: &str) -> bool {
    fs.iter().any(|f| is_caught_up(f, topic))
}

/// The last cursor map in `frames`.
pub fn last_ids(frames: &[Frame]) -> BTreeMap<String, u64> {
    frames
        .iter()
        .rev()
        .find_map(|f| f.id().map(decode_id))
        .expect("some frame with an id")
}

pub fn last_id(frames: &[Frame]) -> String {
    frames
        .iter()
        .rev()
        .find_map(|f| f.id().map(str::to_string))
        .expect("some frame with an id")
}
