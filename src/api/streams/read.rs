//! `GET /v1/stream/{name}`: catch-up reads, `live=long-poll` and `live=sse`.
//!
//! A fork's positions up to its fork base live in its source (and so on up a chain): the
//! fork's core answers a read there with `redirect`, and the read continues at the source,
//! cut at the fork base.

use super::{bad, is_json, offset, parse_offset, tail, From};
use crate::api::{Api, ApiError};
use crate::http::{sse_event_compact, Request, Response, SseSink, SSE_CONTENT_TYPE};
use shards::mesh::Reply;
use shards::stream::{StreamCmd, StreamInfo, StreamReply};
use shards::{Command, Record};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Most records, and bytes, in one read's answer.
pub const READ_RECORDS: usize = 1000;
pub const READ_BYTES: usize = 1 << 20;
/// An idle SSE stream sends a comment this often.
const SSE_HEARTBEAT_MS: u64 = 15_000;
/// The cursor epoch (2024-10-09T00:00:00Z, in s) and interval (s) of protocol §8.1.
const CURSOR_EPOCH_S: u64 = 1_728_432_000;
const CURSOR_INTERVAL_S: u64 = 20;

/// Records after `pos` (with their positions) from `topic` or, for inherited positions,
/// from its sources; at most `limit`, none past `upto`. Also the first level's info.
pub async fn read_level(
    api: &Api,
    topic: &str,
    pos: u64,
    upto: u64,
    limit: usize,
    internal: bool,
) -> Result<(Vec<(u64, Record)>, StreamInfo), ApiError> {
    read_at(api, topic, pos, upto, limit, 0, internal).await
}

async fn read_at(
    api: &Api,
    topic: &str,
    pos: u64,
    upto: u64,
    limit: usize,
    wait_ms: u64,
    internal: bool,
) -> Result<(Vec<(u64, Record)>, StreamInfo), ApiError> {
    let mut cur = topic.to_string();
    let mut upto = upto;
    let mut internal = internal;
    let mut wait_ms = wait_ms;
    let mut first: Option<StreamInfo> = None;
    // A chain is finite (each fork names an older stream); the bound only guards a bug.
    for _ in 0..1024 {
        let cmd = Command::Stream(StreamCmd::Read {
            topic: cur.clone(),
            from_pos: pos,
            limit,
            wait_ms,
            internal,
        });
        let Reply::Stream(StreamReply::Read {
            records,
            info,
            redirect,
        }) = api.stream_call(&cur, cmd).await?
        else {
            return Err(crate::api::unexpected());
        };
        if redirect {
            upto = upto.min(info.meta.fork_base);
            let source = info
                .meta
                .fork_source
                .clone()
                .ok_or_else(crate::api::unexpected)?;
            first.get_or_insert(info);
            cur = source;
            internal = true;
            wait_ms = 0;
            continue;
        }
        let base = info.meta.fork_base;
        let recs = records
            .into_iter()
            .map(|r| (base + r.seq, r))
            .take_while(|(p, _)| *p <= upto)
            .collect();
        return Ok((recs, first.unwrap_or(info)));
    }
    Err(ApiError::new(500, "internal", "fork chain too long"))
}

/// One read's answer.
struct Chunk {
    records: Vec<(u64, Record)>,
    info: StreamInfo,
    next: u64,
    up_to_date: bool,
}

async fn read_chunk(api: &Api, topic: &str, pos: u64, wait_ms: u64) -> Result<Chunk, ApiError> {
    let (mut records, mut info) =
        read_at(api, topic, pos, u64::MAX, READ_RECORDS, wait_ms, false).await?;
    // What a fork inherited ends at its fork base: go on with the fork's own records.
    let mut at = records.last().map_or(pos, |(p, _)| *p);
    while pos < info.meta.fork_base && at <= info.meta.fork_base && records.len() < READ_RECORDS {
        let bytes: usize = records.iter().map(|(_, r)| r.data.len()).sum();
        if bytes >= READ_BYTES {
            break;
        }
        let from = if records.is_empty() {
            // The source holds nothing there (never expected): skip to the fork's own.
            info.meta.fork_base
        } else {
            at
        };
        let (more, i) = read_at(
            api,
            topic,
            from,
            u64::MAX,
            READ_RECORDS - records.len(),
            0,
            false,
        )
        .await?;
        info = i;
        let before = at;
        at = more.last().map_or(from, |(p, _)| *p);
        records.extend(more);
        if at == before {
            break;
        }
    }
    let mut bytes = 0usize;
    let mut keep = 0;
    for (_, r) in &records {
        bytes += r.data.len();
        if keep > 0 && bytes > READ_BYTES {
            break;
        }
        keep += 1;
    }
    records.truncate(keep);
    let tail = tail(&info);
    let next = records.last().map_or(pos, |(p, _)| *p);
    Ok(Chunk {
        up_to_date: next >= tail,
        records,
        info,
        next,
    })
}

/// The body of records under the stream's content type.
fn body(ct: &str, records: &[(u64, Record)]) -> Vec<u8> {
    let n: usize = records.iter().map(|(_, r)| r.data.len() + 1).sum();
    let mut out = Vec::with_capacity(n + 2);
    if is_json(ct) {
        out.push(b'[');
        for (i, (_, r)) in records.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&r.data);
        }
        out.push(b']');
    } else {
        for (_, r) in records {
            out.extend_from_slice(&r.data);
        }
    }
    out
}

/// Every value of query parameter `name`, percent-decoded.
fn query_all(req: &Request, name: &str) -> Vec<String> {
    req.query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k == name).then(|| {
                let probe = Request {
                    query: format!("x={v}"),
                    ..Default::default()
                };
                probe.query_param("x").unwrap_or_default()
            })
        })
        .collect()
}

/// The cursor of protocol §8.1: the current 20 s interval, or past the client's.
fn cursor(client: Option<&str>) -> String {
    let now_s = shards::now_ms() / 1000;
    let interval = now_s.saturating_sub(CURSOR_EPOCH_S) / CURSOR_INTERVAL_S;
    match client.and_then(|c| c.trim().parse::<u64>().ok()) {
        Some(c) if c >= interval => {
            // 1-3600 s of jitter, in whole intervals.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() as u64);
            let jitter_s = 1 + (nanos ^ (nanos >> 7)) % 3600;
            (c + jitter_s.div_ceil(CURSOR_INTERVAL_S).max(1)).to_string()
        }
        _ => interval.to_string(),
    }
}

fn base_response(status: u16, info: &StreamInfo) -> Response {
    Response {
        status,
        content_type: "",
        headers: vec![("content-type", info.meta.content_type.clone())],
        body: Vec::new(),
        stream: None,
    }
}

/// A `200` answer for `chunk` read from `pos`: its headers (without the body), and its ETag.
fn data_response(chunk: &Chunk, pos: u64) -> (Response, String) {
    let closed = chunk.info.closed && chunk.up_to_date;
    let etag = format!(
        "\"{}:{}:{}{}\"",
        chunk.info.created_ms,
        offset(pos),
        offset(chunk.next),
        if closed { ":c" } else { "" }
    );
    let mut resp = base_response(200, &chunk.info);
    resp.headers
        .push(("stream-next-offset", offset(chunk.next)));
    if chunk.up_to_date {
        resp.headers.push(("stream-up-to-date", "true".into()));
    }
    if closed {
        resp.headers.push(("stream-closed", "true".into()));
    }
    resp.headers.push((
        "cache-control",
        "public, max-age=60, stale-while-revalidate=300".into(),
    ));
    (resp, etag)
}

pub async fn get(api: &Api, topic: &str, req: &Request) -> Result<Response, ApiError> {
    let offsets = query_all(req, "offset");
    if offsets.len() > 1 {
        return Err(bad("give offset once"));
    }
    let from = match offsets.first() {
        None => None,
        Some(o) => Some(parse_offset(o).ok_or_else(|| bad(format!("invalid offset {o:?}")))?),
    };
    let live = req.query_param("live");
    match live.as_deref() {
        None | Some("") | Some("false") => {
            catch_up(api, topic, req, from.unwrap_or(From::Pos(0))).await
        }
        Some("long-poll") => {
            let from = from.ok_or_else(|| bad("live=long-poll needs an offset"))?;
            long_poll(api, topic, req, from).await
        }
        Some("sse") => {
            let from = from.ok_or_else(|| bad("live=sse needs an offset"))?;
            sse(api, topic, req, from).await
        }
        Some(other) => Err(bad(format!("live must be long-poll or sse, not {other:?}"))),
    }
}

async fn catch_up(api: &Api, topic: &str, req: &Request, from: From) -> Result<Response, ApiError> {
    let pos = match from {
        From::Now => {
            let info = api.stream_info(topic, true, false).await?;
            let mut resp = base_response(200, &info);
            resp.body = if is_json(&info.meta.content_type) {
                b"[]".to_vec()
            } else {
                Vec::new()
            };
            resp.headers
                .push(("stream-next-offset", offset(tail(&info))));
            resp.headers.push(("stream-up-to-date", "true".into()));
            resp.headers.push(("cache-control", "no-store".into()));
            if info.closed {
                resp.headers.push(("stream-closed", "true".into()));
            }
            return Ok(resp);
        }
        From::Pos(p) => p,
    };
    let chunk = read_chunk(api, topic, pos, 0).await?;
    let (mut resp, etag) = data_response(&chunk, pos);
    if req
        .header("if-none-match")
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        resp.status = 304;
        resp.headers.retain(|(n, _)| *n != "content-type");
        resp.headers.push(("etag", etag));
        return Ok(resp);
    }
    resp.headers.push(("etag", etag));
    resp.body = body(&chunk.info.meta.content_type, &chunk.records);
    Ok(resp)
}

async fn long_poll(
    api: &Api,
    topic: &str,
    req: &Request,
    from: From,
) -> Result<Response, ApiError> {
    let pos = match from {
        From::Now => tail(&api.stream_info(topic, true, false).await?),
        From::Pos(p) => p,
    };
    let wait = api.node.global.ds.long_poll_ms;
    // A drain does not wait for long-polls: they end with 503 and the client polls again.
    let read = async { Some(read_chunk(api, topic, pos, wait).await) };
    let drain = async {
        api.node.draining().await;
        None
    };
    let Some(chunk) = futures_lite::future::or(read, drain).await else {
        return Err(ApiError::shutting_down());
    };
    let chunk = chunk?;
    let cur = cursor(req.query_param("cursor").as_deref());
    let closed = chunk.info.closed && chunk.up_to_date;
    if chunk.records.is_empty() {
        let mut resp = base_response(204, &chunk.info);
        resp.headers
            .push(("stream-next-offset", offset(chunk.next)));
        resp.headers.push(("stream-up-to-date", "true".into()));
        resp.headers.push(("stream-cursor", cur));
        resp.headers.push(("cache-control", "no-store".into()));
        if closed {
            resp.headers.push(("stream-closed", "true".into()));
        }
        return Ok(resp);
    }
    let (mut resp, etag) = data_response(&chunk, pos);
    resp.headers.push(("stream-cursor", cur));
    resp.headers.push(("etag", etag));
    resp.body = body(&chunk.info.meta.content_type, &chunk.records);
    Ok(resp)
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

async fn sse(api: &Api, topic: &str, req: &Request, from: From) -> Result<Response, ApiError> {
    crate::api::sse_slot(&api.node.global)?;
    let info = api.stream_info(topic, true, false).await?;
    let pos = match from {
        From::Now => tail(&info),
        From::Pos(p) => p,
    };
    let ct = info.meta.content_type.to_ascii_lowercase();
    let json = is_json(&ct);
    let binary = !json && !ct.trim_start().starts_with("text/");
    let mut headers = vec![("cache-control", "no-cache".to_string())];
    if binary {
        headers.push(("stream-sse-data-encoding", "base64".to_string()));
    }
    let node = api.node.clone();
    let topic = topic.to_string();
    let client_cursor = req.query_param("cursor");
    Ok(Response::stream(
        200,
        SSE_CONTENT_TYPE,
        headers,
        move |mut sink: SseSink| async move {
            let api = Api::new(node);
            let open = &api.node.global.sse_connections;
            open.fetch_add(1, Ordering::Relaxed);
            let mode = if json {
                Mode::Json
            } else if binary {
                Mode::Base64
            } else {
                Mode::Text
            };
            serve_sse(&api, &topic, pos, mode, client_cursor, &mut sink).await;
            api.node
                .global
                .sse_connections
                .fetch_sub(1, Ordering::Relaxed);
        },
    ))
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Json,
    Text,
    Base64,
}

async fn serve_sse(
    api: &Api,
    topic: &str,
    mut pos: u64,
    mode: Mode,
    mut client_cursor: Option<String>,
    sink: &mut SseSink,
) {
    let deadline = Instant::now() + Duration::from_millis(api.node.global.ds.sse_ms);
    let mut first = true;
    let mut out = Vec::with_capacity(4096);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let wait = if first {
            0
        } else {
            (deadline - now).as_millis().min(SSE_HEARTBEAT_MS as u128) as u64
        };
        let closed = sink.closed();
        let read = async { Some(read_chunk(api, topic, pos, wait).await) };
        // The peer going away, or a drain, ends the stream (clients reconnect from the last
        // control event's offset).
        let gone = async {
            futures_lite::future::or(closed, api.node.draining()).await;
            None
        };
        let chunk = match futures_lite::future::or(read, gone).await {
            None => return,
            Some(Err(e)) => {
                log::debug!("v1 sse: read ended: {}", e.message);
                return;
            }
            Some(Ok(c)) => c,
        };
        out.clear();
        let had_data = !chunk.records.is_empty();
        if had_data {
            let raw = body(&chunk.info.meta.content_type, &chunk.records);
            match mode {
                Mode::Base64 => sse_event_compact(&mut out, "data", base64(&raw).as_bytes()),
                Mode::Json | Mode::Text => sse_event_compact(&mut out, "data", &raw),
            }
            pos = chunk.next;
        }
        let closed = chunk.info.closed && chunk.up_to_date;
        if had_data || first || closed {
            let mut control = format!("{{\"streamNextOffset\":\"{}\"", offset(chunk.next));
            if !closed {
                let c = cursor(client_cursor.as_deref());
                control.push_str(&format!(",\"streamCursor\":\"{c}\""));
                client_cursor = Some(c);
            }
            if chunk.up_to_date {
                control.push_str(",\"upToDate\":true");
            }
            if closed {
                control.push_str(",\"streamClosed\":true");
            }
            control.push('}');
            sse_event_compact(&mut out, "control", control.as_bytes());
        } else {
            out.extend_from_slice(b": hb\n\n");
        }
        if sink.send(&out).await.is_err() {
            return;
        }
        if closed {
            return;
        }
        first = false;
        if chunk.next > pos {
            pos = chunk.next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0, 255, 254, 1]), "AP/+AQ==");
    }

    #[test]
    fn cursors_move_past_the_client() {
        let now = cursor(None).parse::<u64>().unwrap();
        let past = cursor(Some(&now.to_string())).parse::<u64>().unwrap();
        assert!(past > now);
        let old = cursor(Some("5")).parse::<u64>().unwrap();
        assert_eq!(old, now);
    }
}
