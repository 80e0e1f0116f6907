//! The Durable Streams Protocol under `/v1/stream/{name}` (`{name}` may contain `/`).
//!
//! A stream is a topic of the same engine named `/` + `{name}` (so it never collides with a
//! `/v0` topic), one record per binary append or per JSON message, bytes stored verbatim.
//! An offset is the position of the last record read, written `0000000000000000_` and the
//! position as 16 decimal digits (the shape other servers use), so offsets sort as strings
//! in stream order. Forks read the positions up to their fork base
//! from their source (see [`read`]). Producer checks, `Stream-Seq` and closing happen on the
//! stream's core (`shards::stream`), logged in the same WAL frame as the data they admit.

mod create;
mod read;

use super::{Api, ApiError};
use crate::http::{Request, Response};
use serde_json::value::RawValue;
use shards::mesh::{AppendCmd, Reply};
use shards::stream::{StreamAppend, StreamCmd, StreamError, StreamInfo, StreamReply};
use shards::{Command, Durability, NewRecord, ShardError};
use std::sync::Arc;
use std::time::Instant;

pub const PATH_PREFIX: &str = "/v1/stream/";

/// The `/v1` settings (from the command line).
#[derive(Debug, Clone)]
pub struct Settings {
    pub long_poll_ms: u64,
    pub sse_ms: u64,
    pub durability: Durability,
}

impl Settings {
    pub fn from_config(cfg: &crate::config::Config) -> Result<Settings, String> {
        let durability = match Durability::parse(&cfg.ds_durability) {
            Some(d @ (Durability::Fsync | Durability::Disk | Durability::Memory)) => d,
            _ => {
                return Err(format!(
                    "--ds-durability must be fsync, disk or memory, not {:?}",
                    cfg.ds_durability
                ))
            }
        };
        Ok(Settings {
            long_poll_ms: cfg.ds_long_poll_ms,
            sse_ms: cfg.ds_sse_ms,
            durability,
        })
    }
}

/// Headers every `/v1` answer carries (protocol §10.7, and CORS for browser clients).
const COMMON: [(&str, &str); 4] = [
    ("x-content-type-options", "nosniff"),
    ("cross-origin-resource-policy", "cross-origin"),
    ("access-control-allow-origin", "*"),
    (
        "access-control-expose-headers",
        "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, Stream-TTL, \
         Stream-Expires-At, Stream-SSE-Data-Encoding, ETag, Location, Content-Type, \
         Producer-Epoch, Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq",
    ),
];

/// A position as an offset token.
pub fn offset(pos: u64) -> String {
    format!("0000000000000000_{pos:016}")
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum From {
    /// After this position (`-1` is position 0).
    Pos(u64),
    /// The current tail (`now`).
    Now,
}

pub fn parse_offset(s: &str) -> Option<From> {
    match s {
        "-1" => Some(From::Pos(0)),
        "now" => Some(From::Now),
        _ => {
            let pos = s.strip_prefix("0000000000000000_")?;
            if pos.len() != 16 || !pos.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            pos.parse().ok().map(From::Pos)
        }
    }
}

/// Whether a content type is JSON mode (protocol §7.1).
pub fn is_json(ct: &str) -> bool {
    shards::stream::essence(ct) == "application/json"
}

/// Splits a JSON body into messages: an array is flattened one level, anything else is one
/// message. Each message is its exact bytes from the body. `None`: not valid JSON.
pub fn json_messages(body: &[u8]) -> Option<Vec<Arc<[u8]>>> {
    let text = std::str::from_utf8(body).ok()?;
    let first = text.trim_start().as_bytes().first().copied();
    if first == Some(b'[') {
        let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
        Some(
            items
                .iter()
                .map(|v| Arc::from(v.get().as_bytes()))
                .collect(),
        )
    } else {
        let v: &RawValue = serde_json::from_str(text).ok()?;
        Some(vec![Arc::from(v.get().as_bytes())])
    }
}

fn record(data: Arc<[u8]>) -> NewRecord {
    NewRecord {
        node: None,
        tag: None,
        data,
        meta: None,
        hops: 0,
    }
}

/// The records a body holds under content type `ct`; `allow_empty_array` for `PUT`.
fn body_records(
    ct: &str,
    body: &[u8],
    allow_empty_array: bool,
) -> Result<Vec<NewRecord>, ApiError> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    if !is_json(ct) {
        return Ok(vec![record(Arc::from(body))]);
    }
    let msgs = json_messages(body).ok_or_else(|| bad("the body is not valid JSON"))?;
    if msgs.is_empty() && !allow_empty_array {
        return Err(bad("an empty JSON array appends nothing"));
    }
    Ok(msgs.into_iter().map(record).collect())
}

pub fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(400, "bad_request", msg)
}

fn not_found() -> ApiError {
    ApiError::new(404, "not_found", "stream not found")
}

/// `true` for a header set to `true` (any case).
fn header_true(req: &Request, name: &str) -> bool {
    req.header(name)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// A non-negative decimal integer without sign, leading zeros or exponent, up to 2^53-1.
pub fn strict_uint(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 16 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if b.len() > 1 && b[0] == b'0' {
        return None;
    }
    s.parse::<u64>().ok().filter(|v| *v < (1u64 << 53))
}

/// `Producer-Id`, `-Epoch`, `-Seq`: all or none.
fn producer(req: &Request) -> Result<Option<(String, u64, u64)>, ApiError> {
    let id = req.header("producer-id");
    let epoch = req.header("producer-epoch");
    let seq = req.header("producer-seq");
    match (id, epoch, seq) {
        (None, None, None) => Ok(None),
        (Some(id), Some(epoch), Some(seq)) => {
            if id.is_empty() {
                return Err(bad("Producer-Id must not be empty"));
            }
            let epoch = strict_uint(epoch.trim())
                .ok_or_else(|| bad("Producer-Epoch must be an integer from 0 to 2^53-1"))?;
            let seq = strict_uint(seq.trim())
                .ok_or_else(|| bad("Producer-Seq must be an integer from 0 to 2^53-1"))?;
            Ok(Some((id.to_string(), epoch, seq)))
        }
        _ => Err(bad(
            "Producer-Id, Producer-Epoch and Producer-Seq go together: all three or none",
        )),
    }
}

/// A shard refusal as the protocol's status and headers.
pub fn stream_error(e: ShardError, name: &str) -> ApiError {
    match e {
        ShardError::TopicNotFound | ShardError::Stream(StreamError::NotAStream) => not_found(),
        ShardError::Stream(e) => match e {
            StreamError::Gone => ApiError::new(410, "gone", "the stream was deleted"),
            StreamError::ConfigMismatch => ApiError::new(
                409,
                "conflict",
                "the stream exists with a different configuration",
            ),
            StreamError::Closed { next } => {
                ApiError::new(409, "stream_closed", "the stream is closed")
                    .header("stream-closed", "true".into())
                    .header("stream-next-offset", offset(next))
            }
            StreamError::ContentTypeMismatch => ApiError::new(
                409,
                "conflict",
                "Content-Type does not match the stream's content type",
            ),
            StreamError::SeqRegression => ApiError::new(
                409,
                "conflict",
                "Stream-Seq must be greater than the last one",
            ),
            StreamError::StaleEpoch { epoch } => {
                ApiError::new(403, "stale_epoch", "a newer producer epoch exists")
                    .header("producer-epoch", epoch.to_string())
            }
            StreamError::ProducerGap { expected, received } => {
                ApiError::new(409, "sequence_gap", "producer sequence gap")
                    .header("producer-expected-seq", expected.to_string())
                    .header("producer-received-seq", received.to_string())
            }
            StreamError::EpochNeedsSeqZero => bad("a new producer epoch must start at seq 0"),
            StreamError::BadForkOffset => bad("the fork offset is past the source's tail"),
            StreamError::NotAStream => not_found(),
        },
        e => ApiError::from_shard(e, name),
    }
}

/// The stream's topic name, after checking the path's name.
fn topic_of(name: &str) -> Result<String, ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 1024
        && !name.bytes().any(|b| b < 0x20 || b == 0x7f)
        && !name.split('/').any(|seg| seg == ".." || seg == ".");
    if !ok {
        return Err(bad(
            "a stream name is 1-1024 bytes, without control characters or . / .. segments",
        ));
    }
    Ok(format!("/{name}"))
}

impl Api {
    async fn stream_call(&self, topic: &str, cmd: Command) -> Result<Reply, ApiError> {
        match self.node.call_topic(topic, cmd).await {
            Reply::Err(e) => Err(stream_error(e, &topic[1..])),
            r => Ok(r),
        }
    }

    async fn stream_info(
        &self,
        topic: &str,
        touch: bool,
        internal: bool,
    ) -> Result<StreamInfo, ApiError> {
        let cmd = Command::Stream(StreamCmd::Head {
            topic: topic.to_string(),
            touch,
            internal,
        });
        match self.stream_call(topic, cmd).await? {
            Reply::Stream(StreamReply::Info(i)) => Ok(i),
            _ => Err(super::unexpected()),
        }
    }
}

/// Serves one `/v1/stream/...` request; errors are answered here too, so every answer gets
/// the common headers.
pub async fn handle(api: &Api, req: &Request, start: Instant) -> Response {
    let mut resp = match route(api, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(start),
    };
    for (k, v) in COMMON {
        if !resp.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(k)) {
            resp.headers.push((k, v.to_string()));
        }
    }
    resp
}

async fn route(api: &Api, req: &Request) -> Result<Response, ApiError> {
    let name = req.path.get(PATH_PREFIX.len()..).unwrap_or("");
    if req.method == "OPTIONS" {
        return Ok(preflight(req));
    }
    let topic = topic_of(name)?;
    match req.method.as_str() {
        "PUT" => create::create(api, &topic, req).await,
        "POST" => append(api, &topic, req).await,
        "GET" => read::get(api, &topic, req).await,
        "HEAD" => head(api, &topic).await,
        "DELETE" => delete(api, &topic).await,
        _ => Err(ApiError::new(
            405,
            "method_not_allowed",
            format!("{} is not allowed on a stream", req.method),
        )
        .header("allow", "GET, HEAD, POST, PUT, DELETE, OPTIONS".into())),
    }
}

/// A CORS preflight.
fn preflight(req: &Request) -> Response {
    let asked = req
        .header("access-control-request-headers")
        .unwrap_or("")
        .to_string();
    let allow = if asked.is_empty() {
        "Content-Type, Authorization, If-None-Match, Stream-Seq, Stream-TTL, Stream-Expires-At, \
         Stream-Closed, Stream-Forked-From, Stream-Fork-Offset, Stream-Fork-Sub-Offset, \
         Producer-Id, Producer-Epoch, Producer-Seq"
            .to_string()
    } else {
        asked
    };
    Response {
        status: 204,
        content_type: "",
        headers: vec![
            (
                "access-control-allow-methods",
                "GET, HEAD, POST, PUT, DELETE, OPTIONS".into(),
            ),
            ("access-control-allow-headers", allow),
            ("access-control-max-age", "86400".into()),
        ],
        body: Vec::new(),
        stream: None,
    }
}

fn empty(status: u16) -> Response {
    Response {
        status,
        content_type: "",
        headers: Vec::new(),
        body: Vec::new(),
        stream: None,
    }
}

/// The tail position of a stream.
pub fn tail(info: &StreamInfo) -> u64 {
    info.meta.fork_base + info.head
}

/// Headers describing a stream (HEAD, PUT).
fn meta_headers(resp: &mut Response, info: &StreamInfo) {
    resp.headers
        .push(("content-type", info.meta.content_type.clone()));
    resp.headers
        .push(("stream-next-offset", offset(tail(info))));
    if let Some(ttl) = info.meta.ttl_secs {
        resp.headers.push(("stream-ttl", ttl.to_string()));
    }
    if let Some(at) = &info.meta.expires_at {
        resp.headers.push(("stream-expires-at", at.clone()));
    }
    if info.closed {
        resp.headers.push(("stream-closed", "true".into()));
    }
}

async fn head(api: &Api, topic: &str) -> Result<Response, ApiError> {
    let info = api.stream_info(topic, false, false).await?;
    let mut resp = empty(200);
    meta_headers(&mut resp, &info);
    resp.headers.push(("cache-control", "no-store".into()));
    Ok(resp)
}

async fn delete(api: &Api, topic: &str) -> Result<Response, ApiError> {
    let cmd = Command::Stream(StreamCmd::Delete {
        topic: topic.to_string(),
    });
    let Reply::Stream(StreamReply::Deleted { source, .. }) = api.stream_call(topic, cmd).await?
    else {
        return Err(super::unexpected());
    };
    if let Some(src) = source {
        // A fork gives back its reference on its source (which may now be collected).
        let cmd = Command::Stream(StreamCmd::Ref {
            topic: src.clone(),
            delta: -1,
        });
        if let Reply::Err(e) = api.node.call_topic(&src, cmd).await {
            log::warn!("v1: releasing a fork's source failed: {e:?}");
        }
    }
    Ok(empty(204))
}

async fn append(api: &Api, topic: &str, req: &Request) -> Result<Response, ApiError> {
    let close = header_true(req, "stream-closed");
    let producer = producer(req)?;
    let stream_seq = req.header("stream-seq").map(str::to_string);
    let ct = req.header("content-type").map(|c| c.trim().to_string());
    if req.body.is_empty() {
        if !close {
            return Err(bad(
                "an append needs a body (or Stream-Closed: true to close)",
            ));
        }
        let cmd = Command::Stream(StreamCmd::Close {
            topic: topic.to_string(),
            req: StreamAppend {
                content_type: None,
                producer: producer.clone(),
                stream_seq,
                close: true,
            },
        });
        let Reply::Stream(StreamReply::Closed { info, ack }) = api.stream_call(topic, cmd).await?
        else {
            return Err(super::unexpected());
        };
        let mut resp = empty(204);
        resp.headers
            .push(("stream-next-offset", offset(tail(&info))));
        resp.headers.push(("stream-closed", "true".into()));
        if let Some((_, epoch, _)) = &producer {
            resp.headers.push(("producer-epoch", epoch.to_string()));
            if let Some(s) = ack.producer_seq {
                resp.headers.push(("producer-seq", s.to_string()));
            }
        }
        return Ok(resp);
    }
    let Some(ct) = ct.filter(|c| !c.is_empty()) else {
        return Err(bad("an append needs a Content-Type"));
    };
    let records = body_records(&ct, &req.body, false)?;
    let cmd = Command::Append(AppendCmd {
        topic: topic.to_string(),
        records,
        idempotency_key: None,
        create: Some(false),
        config: None,
        router_mark: None,
        disable_backpressure: false,
        stream: Some(StreamAppend {
            content_type: Some(ct),
            producer: producer.clone(),
            stream_seq,
            close,
        }),
    });
    let Reply::Appended(a) = api.stream_call(topic, cmd).await? else {
        return Err(super::unexpected());
    };
    let ack = a.stream.unwrap_or_default();
    let status = if producer.is_some() && !ack.duplicate {
        200
    } else {
        204
    };
    let mut resp = empty(status);
    resp.headers
        .push(("stream-next-offset", offset(ack.base + a.head_seq)));
    if ack.closed {
        resp.headers.push(("stream-closed", "true".into()));
    }
    if let Some((_, epoch, _)) = &producer {
        resp.headers.push(("producer-epoch", epoch.to_string()));
        if let Some(s) = ack.producer_seq {
            resp.headers.push(("producer-seq", s.to_string()));
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_sort_and_parse() {
        assert!(offset(9) < offset(10));
        assert!(offset(255) < offset(4096));
        assert_eq!(parse_offset(&offset(12345)), Some(From::Pos(12345)));
        assert_eq!(parse_offset("-1"), Some(From::Pos(0)));
        assert_eq!(parse_offset("now"), Some(From::Now));
        assert_eq!(
            parse_offset("0000000000000000_0000000000000000"),
            Some(From::Pos(0))
        );
        for bad in [
            "",
            "1,2",
            "abc",
            "0000000000000000_000000000000000a",
            "0000000000000000_00000000000000 1",
            "0000000000000001_0000000000000000",
            "-2",
        ] {
            assert_eq!(parse_offset(bad), None, "{bad}");
        }
    }

    #[test]
    fn json_flattening() {
        let m = |b: &str| {
            json_messages(b.as_bytes()).map(|v| {
                v.iter()
                    .map(|x| String::from_utf8_lossy(x).into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(m(r#"{"a": 1}"#), Some(vec![r#"{"a": 1}"#.to_string()]));
        assert_eq!(
            m("[1, [2,3], {\"x\":[4]}]"),
            Some(vec!["1".into(), "[2,3]".into(), "{\"x\":[4]}".into()])
        );
        assert_eq!(m("[[[1]]]"), Some(vec!["[[1]]".into()]));
        assert_eq!(m("[]"), Some(vec![]));
        assert_eq!(m(" \"s\" "), Some(vec!["\"s\"".into()]));
        assert_eq!(m("{bad"), None);
        assert_eq!(m("[1,]"), None);
    }

    #[test]
    fn strict_integers() {
        assert_eq!(strict_uint("0"), Some(0));
        assert_eq!(strict_uint("3600"), Some(3600));
        for bad in [
            "",
            "+1",
            "01",
            "1.0",
            "3.6e3",
            "-1",
            " 1",
            "9007199254740992",
        ] {
            assert_eq!(strict_uint(bad), None, "{bad}");
        }
        assert_eq!(strict_uint("9007199254740991"), Some(9007199254740991));
    }
}
