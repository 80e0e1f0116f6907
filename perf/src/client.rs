//! The shared HTTP/1.1 client: keep-alive connections, requests serialized once by the caller,
//! responses parsed minimally — the status line and the framing headers (`Content-Length`,
//! `Transfer-Encoding: chunked`, `Connection: close`). Bodies are only looked at by the
//! workloads that need a figure from them, through the byte scanners at the end of this file.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

/// Initial size of a connection's read buffer.
const INITIAL_BUF: usize = 16 * 1024;
/// Smallest read worth issuing; the buffer is compacted or grown to offer at least this.
const MIN_READ: usize = 4 * 1024;
/// A response larger than this is refused rather than buffered.
const MAX_RESPONSE: usize = 256 << 20;

/// Where the server is: a resolved address and the `Host` header to send.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
}

impl Target {
    /// Parses `http://host[:port][/...]`; any path is ignored (the API paths are absolute).
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let has_port = match authority.rsplit_once(':') {
            Some((_, port)) => !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
            None => false,
        };
        let with_port = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{url}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: host resolves to nothing"))?;
        Ok(Target {
            addr,
            host: authority.to_string(),
        })
    }

    /// Serializes one request; bodies are always sent as `application/json`.
    pub fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
        let mut req = Vec::with_capacity(128 + body.map_or(0, |b| b.len()));
        req.extend_from_slice(method.as_bytes());
        req.push(b' ');
        req.extend_from_slice(path.as_bytes());
        req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        req.extend_from_slice(self.host.as_bytes());
        req.extend_from_slice(b"\r\n");
        if let Some(body) = body {
            req.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
            req.extend_from_slice(body.len().to_string().as_bytes());
            req.extend_from_slice(b"\r\n\r\n");
            req.extend_from_slice(body);
        } else {
            req.extend_from_slice(b"\r\n");
        }
        req
    }
}

/// A client that owns at most one connection, opened lazily and reopened after an error or
/// after the server asked to close it.
pub struct Client {
    target: Target,
    conn: Option<Conn>,
}

impl Client {
    pub fn new(target: Target) -> Client {
        Client { target, conn: None }
    }

    /// Sends one pre-serialized request and reads its response; returns the status.
    /// On an I/O or protocol error the connection is dropped and the next call reconnects.
    pub async fn send(&mut self, req: &[u8]) -> io::Result<u16> {
        if self.conn.as_ref().is_none_or(|c| c.closed) {
            self.conn = Some(Conn::connect(&self.target).await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        match conn.round_trip(req).await {
            Ok(status) => Ok(status),
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    /// The body of the last response (empty after an error).
    pub fn body(&self) -> &[u8] {
        self.conn.as_ref().map_or(&[], |c| c.body())
    }

    /// The value of header `name` (any case) in the last response, if it has one.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let conn = self.conn.as_ref()?;
        header_value(&conn.buf[conn.head_start..conn.head_end], name)
    }
}

/// How the body of a response is delimited.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// What the head of a response says.
struct Head {
    status: u16,
    len: usize,
    framing: Framing,
    close: bool,
}

/// One keep-alive connection. `buf[start..end]` holds received, unconsumed bytes.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    body_start: usize,
    body_end: usize,
    /// The decoded body of a chunked response (`body_start == body_end == usize::MAX`).
    decoded: Vec<u8>,
    /// Where the head of the last response is in `buf` (valid until the next request).
    head_start: usize,
    head_end: usize,
    closed: bool,
}

impl Conn {
    async fn connect(target: &Target) -> io::Result<Conn> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: vec![0; INITIAL_BUF],
            start: 0,
            end: 0,
            body_start: 0,
            body_end: 0,
            decoded: Vec::new(),
            head_start: 0,
            head_end: 0,
            closed: false,
        })
    }

    fn body(&self) -> &[u8] {
        if self.body_start == usize::MAX {
            &self.decoded
        } else {
            &self.buf[self.body_start..self.body_end]
        }
    }

    async fn round_trip(&mut self, req: &[u8]) -> io::Result<u16> {
        self.head_start = 0;
        self.head_end = 0;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        self.stream.write_all(req).await?;
        self.read_response().await
    }

    /// Reads one complete response; offsets are kept relative to `start` because a read
    /// may compact the buffer.
    async fn read_response(&mut self) -> io::Result<u16> {
        let head = loop {
            match parse_head(&self.buf[self.start..self.end])? {
                Some(head) if (100..200).contains(&head.status) => self.start += head.len,
                Some(head) => break head,
                None => self.fill(0).await?,
            }
        };
        self.closed = head.close;
        let body_rel = head.len;
        match head.framing {
            Framing::Length(n) => {
                let total = body_rel + n;
                while self.end - self.start < total {
                    self.fill(total).await?;
                }
                self.body_start = self.start + body_rel;
                self.body_end = self.start + total;
                (self.head_start, self.head_end) = (self.start, self.start + body_rel);
                self.start += total;
            }
            Framing::Chunked => {
                let consumed = self.read_chunked(body_rel).await?;
                self.body_start = usize::MAX;
                (self.head_start, self.head_end) = (self.start, self.start + body_rel);
                self.start += consumed;
            }
            Framing::UntilClose => {
                while self.read_some(0).await? > 0 {}
                self.body_start = self.start + body_rel;
                self.body_end = self.end;
                (self.head_start, self.head_end) = (self.start, self.start + body_rel);
                self.start = self.end;
                self.closed = true;
            }
        }
        Ok(head.status)
    }

    /// Decodes a chunked body that starts `rel` bytes after `start`; returns the bytes the
    /// whole response took.
    async fn read_chunked(&mut self, mut rel: usize) -> io::Result<usize> {
        self.decoded.clear();
        loop {
            let avail = &self.buf[self.start + rel..self.end];
            match httparse::parse_chunk_size(avail) {
                Ok(httparse::Status::Complete((line, 0))) => {
                    // Trailers are not expected: skip header lines up to the empty one.
                    rel += line;
                    loop {
                        let avail = &self.buf[self.start + rel..self.end];
                        match avail.windows(2).position(|w| w == b"\r\n") {
                            Some(0) => return Ok(rel + 2),
                            Some(p) => rel += p + 2,
                            None => self.fill(0).await?,
                        }
                    }
                }
                Ok(httparse::Status::Complete((line, size))) => {
                    let size = usize::try_from(size).unwrap_or(usize::MAX);
                    if size > MAX_RESPONSE {
                        return Err(invalid("chunk too large"));
                    }
                    let need = rel + line + size + 2;
                    while self.end - self.start < need {
                        self.fill(need).await?;
                    }
                    let data = self.start + rel + line;
                    self.decoded.extend_from_slice(&self.buf[data..data + size]);
                    rel = need;
                }
                Ok(httparse::Status::Partial) => self.fill(0).await?,
                Err(_) => return Err(invalid("bad chunk size line")),
            }
        }
    }

    /// Reads at least one byte; end of stream is an error here.
    async fn fill(&mut self, want: usize) -> io::Result<()> {
        match self.read_some(want).await? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            )),
            _ => Ok(()),
        }
    }

    /// Reads once, first making room for at least `MIN_READ` bytes (or for `want` bytes
    /// counted from `start`, when the response size is known).
    async fn read_some(&mut self, want: usize) -> io::Result<usize> {
        let pending = self.end - self.start;
        let need = want.max(pending + MIN_READ);
        if need > MAX_RESPONSE {
            return Err(invalid("response too large"));
        }
        if self.buf.len() - self.start < need {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = pending;
            if self.buf.len() < need {
                self.buf.resize(need.next_power_of_two(), 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Parses a response head; `None` while it is incomplete.
fn parse_head(bytes: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(&format!("bad response head: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let mut framing = Framing::UntilClose;
    let mut close = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| invalid("bad Content-Length"))?;
            framing = Framing::Length(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if contains_ignore_case(h.value, b"chunked") {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = contains_ignore_case(h.value, b"close");
        }
    }
    if status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    Ok(Some(Head {
        status,
        len,
        framing,
        close,
    }))
}

/// The status and length of a complete response head at the start of `bytes` (`None` while
/// it is incomplete); for streams whose body is read by the caller.
pub fn response_head(bytes: &[u8]) -> io::Result<Option<(u16, usize)>> {
    Ok(parse_head(bytes)?.map(|h| (h.status, h.len)))
}

/// The value of header `name` in a complete response head.
fn header_value<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(head).ok()?;
    resp.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The number after the last occurrence of `"key":` in a JSON body (top-level fields such as
/// `performance` and `next_from_seq` come after the records, so the last one is theirs).
pub fn json_number(body: &[u8], key: &str) -> Option<f64> {
    let raw = json_raw_number(body, key)?;
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// Like [`json_number`] for unsigned integers.
pub fn json_u64(body: &[u8], key: &str) -> Option<u64> {
    let raw = json_raw_number(body, key)?;
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// The string value of the first `"key":` in a JSON body (no escapes expected: ids, names).
pub fn json_str<'a>(body: &'a [u8], key: &str) -> Option<&'a str> {
    let quoted = format!("\"{key}\"");
    let at = body
        .windows(quoted.len())
        .position(|w| w == quoted.as_bytes())?;
    let rest = body[at + quoted.len()..].trim_ascii_start();
    let rest = rest.strip_prefix(b":")?.trim_ascii_start();
    let rest = rest.strip_prefix(b"\"")?;
    let len = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    std::str::from_utf8(&rest[..len]).ok()
}

fn json_raw_number<'a>(body: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let mut quoted = Vec::with_capacity(key.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(key.as_bytes());
    quoted.push(b'"');
    let at = body.windows(quoted.len()).rposition(|w| w == quoted)?;
    let mut rest = &body[at + quoted.len()..];
    rest = rest.trim_ascii_start();
    rest = rest.strip_prefix(b":")?.trim_ascii_start();
    let len = rest
        .iter()
        .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        .unwrap_or(rest.len());
    (len > 0).then(|| &rest[..len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:4000").unwrap();
        assert_eq!(t.addr.port(), 4000);
        assert_eq!(t.host, "127.0.0.1:4000");
        let t = Target::parse("http://127.0.0.1/v0").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert!(Target::parse("https://x").is_err());
    }

    #[test]
    fn heads_and_framing() {
        let h = parse_head(b"HTTP/1.1 201 Created\r\ncontent-length: 12\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 201);
        assert!(matches!(h.framing, Framing::Length(12)));
        assert!(!h.close);
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(matches!(h.framing, Framing::Chunked));
        assert!(h.close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nconte").unwrap().is_none());
    }

    #[test]
    fn finds_header_values() {
        let head = b"HTTP/1.1 200 OK\r\nStream-Next-Offset: 0000000000000000_0000000000000042\r\n\
                     stream-up-to-date: true\r\n\r\n";
        assert_eq!(
            header_value(head, "stream-next-offset"),
            Some(&b"0000000000000000_0000000000000042"[..])
        );
        assert_eq!(header_value(head, "Stream-Up-To-Date"), Some(&b"true"[..]));
        assert_eq!(header_value(head, "etag"), None);
    }

    #[test]
    fn scans_numbers() {
        let body = br#"{"records":[{"data":{"fsync_ms":9}}],"next_from_seq": 42,"performance":{"server_total_ms":0.024,"fsync_ms":0}}"#;
        assert_eq!(json_u64(body, "next_from_seq"), Some(42));
        assert_eq!(json_number(body, "server_total_ms"), Some(0.024));
        assert_eq!(json_number(body, "fsync_ms"), Some(0.0));
        assert_eq!(json_number(body, "missing"), None);
        let body = br#"{"wid": "wid_abc-_1","stream_url":"/v0/watch/wid_abc-_1"}"#;
        assert_eq!(json_str(body, "wid"), Some("wid_abc-_1"));
        assert_eq!(json_str(body, "nope"), None);
    }

    /// A canned server: answers each request on one connection with the next response.
    fn canned(responses: Vec<&'static [u8]>) -> Target {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut responses = responses.into_iter();
            while let Ok((mut sock, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                while let Ok(n) = sock.read(&mut buf) {
                    let Some(resp) = responses.next().filter(|_| n > 0) else {
                        break;
                    };
                    // Split the response to exercise partial reads.
                    let (a, b) = resp.split_at(resp.len() / 2);
                    sock.write_all(a).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    sock.write_all(b).unwrap();
                    if resp.ends_with(b"bye") {
                        break;
                    }
                }
            }
        });
        Target::parse(&url).unwrap()
    }

    #[test]
    fn round_trips_over_a_socket() {
        let target = canned(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 201 Created\r\nConnection: close\r\n\r\nbye",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ]);
        let got = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let mut c = Client::new(target.clone());
                let req = target.request("GET", "/", None);
                let mut got = Vec::new();
                for _ in 0..5 {
                    let status = c.send(&req).await.unwrap();
                    got.push((status, String::from_utf8_lossy(c.body()).into_owned()));
                    if status == 404 {
                        assert_eq!(c.header("Content-Length"), Some(&b"2"[..]));
                    }
                }
                got
            })
            .unwrap()
            .join()
            .unwrap();
        let want = [
            (200, "hello"),
            (404, "{}"),
            (200, "abcde"),
            (201, "bye"),
            (200, "ok"),
        ];
        let want: Vec<_> = want.iter().map(|(s, b)| (*s, b.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn serializes_requests() {
        let t = Target::parse("http://127.0.0.1:4000").unwrap();
        let r = t.request("POST", "/v0/topics/a", Some(b"{}"));
        assert_eq!(
            r,
            b"POST /v0/topics/a HTTP/1.1\r\nHost: 127.0.0.1:4000\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }
}
