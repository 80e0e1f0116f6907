//! `PUT /v1/stream/{name}`: create a stream (or confirm it), optionally as a fork.

use super::read::read_level;
use super::{
    bad, body_records, header_true, parse_offset, record, strict_uint, tail, topic_of, From,
    PATH_PREFIX,
};
use crate::api::{Api, ApiError};
use crate::http::{Request, Response};
use shards::mesh::Reply;
use shards::stream::{essence, StreamCmd, StreamMeta, StreamReply};
use shards::{Command, NewRecord, TopicConfig};
use std::sync::Arc;

/// Parses an RFC 3339 timestamp into ms since the epoch (`Z` or a numeric offset, optional
/// fraction).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &s[start..i.min(start + 3)];
        frac_ms = digits.parse::<i64>().ok()? * 10i64.pow(3 - digits.len() as u32);
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if b.len() == i + 6 && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            if *c == b'+' {
                m
            } else {
                -m
            }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    let ms = secs.checked_mul(1000)? + frac_ms;
    u64::try_from(ms).ok()
}

pub async fn create(api: &Api, topic: &str, req: &Request) -> Result<Response, ApiError> {
    let ttl = match req.header("stream-ttl") {
        None => None,
        Some(v) => Some(
            strict_uint(v.trim())
                .ok_or_else(|| bad("Stream-TTL must be a non-negative integer of seconds"))?,
        ),
    };
    let expires_at = req
        .header("stream-expires-at")
        .map(|v| v.trim().to_string());
    let expires_at_ms = match &expires_at {
        None => None,
        Some(v) => Some(
            parse_rfc3339(v)
                .ok_or_else(|| bad("Stream-Expires-At must be an RFC 3339 timestamp"))?,
        ),
    };
    if ttl.is_some() && expires_at.is_some() {
        return Err(bad("give Stream-TTL or Stream-Expires-At, not both"));
    }
    let closed = header_true(req, "stream-closed");
    let given_ct = req
        .header("content-type")
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    let forked_from = req.header("stream-forked-from").map(str::trim);
    let fork_offset = req.header("stream-fork-offset").map(str::trim);
    let sub = match req.header("stream-fork-sub-offset") {
        None => None,
        Some(v) => Some(
            strict_uint(v.trim())
                .ok_or_else(|| bad("Stream-Fork-Sub-Offset must be a non-negative integer"))?,
        ),
    };
    let mut meta = StreamMeta {
        content_type: given_ct
            .clone()
            .unwrap_or_else(|| "application/octet-stream".to_string()),
        ttl_secs: ttl,
        expires_at,
        expires_at_ms,
        ..Default::default()
    };
    let mut prefix: Option<NewRecord> = None;
    let mut source_ref: Option<String> = None;
    match forked_from {
        None => {
            if sub.is_some() || fork_offset.is_some() {
                return Err(bad(
                    "Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From",
                ));
            }
        }
        Some(from) => {
            let src_name = from.strip_prefix(PATH_PREFIX).unwrap_or(from);
            let src_name = src_name.strip_prefix('/').unwrap_or(src_name);
            let source = topic_of(src_name)?;
            let src = match api.stream_info(&source, false, false).await {
                Ok(i) => i,
                // A deleted source that forks still read cannot be forked again.
                Err(e) if e.status == 410 => {
                    return Err(ApiError::new(
                        409,
                        "conflict",
                        "the source stream was deleted",
                    ))
                }
                Err(e) => return Err(e),
            };
            match &given_ct {
                Some(ct) if essence(ct) != essence(&src.meta.content_type) => {
                    return Err(ApiError::new(
                        409,
                        "conflict",
                        "a fork keeps its source's content type",
                    ))
                }
                Some(_) => {}
                None => meta.content_type = src.meta.content_type.clone(),
            }
            if ttl.is_none() && meta.expires_at.is_none() {
                meta.ttl_secs = src.meta.ttl_secs;
                meta.expires_at = src.meta.expires_at.clone();
                meta.expires_at_ms = src.meta.expires_at_ms;
            }
            let src_tail = tail(&src);
            let mut base = match fork_offset {
                None => src_tail,
                Some(o) => match parse_offset(o) {
                    Some(From::Pos(p)) => p,
                    _ => return Err(bad("Stream-Fork-Offset is not an offset of the source")),
                },
            };
            if base > src_tail {
                return Err(bad("Stream-Fork-Offset is past the source's tail"));
            }
            let sub = sub.unwrap_or(0);
            if sub > 0 {
                if fork_offset.is_none() {
                    return Err(bad("Stream-Fork-Sub-Offset > 0 needs Stream-Fork-Offset"));
                }
                if super::is_json(&meta.content_type) {
                    // One record per JSON message: the sub-offset counts records.
                    if base + sub > src_tail {
                        return Err(bad("Stream-Fork-Sub-Offset is past the source's messages"));
                    }
                    base += sub;
                } else {
                    let (records, _) = read_level(api, &source, base, u64::MAX, 1, true).await?;
                    let Some((_, first)) = records.first() else {
                        return Err(bad("Stream-Fork-Sub-Offset is past the source's data"));
                    };
                    let n = sub as usize;
                    if n > first.data.len() {
                        return Err(bad("Stream-Fork-Sub-Offset is past the append's bytes"));
                    }
                    prefix = Some(record(Arc::from(&first.data[..n])));
                }
            }
            meta.fork_source = Some(source.clone());
            meta.fork_base = base;
            meta.fork_sub = sub;
            source_ref = Some(source);
        }
    }
    let mut records = body_records(&meta.content_type, &req.body, true)?;
    if let Some(p) = prefix {
        records.insert(0, p);
    }
    let mut config = TopicConfig::defaults(false);
    config.durability = api.node.global.ds.durability;
    // Take the fork's reference on its source first, so the source cannot be collected
    // between the check above and the fork's creation.
    if let Some(src) = &source_ref {
        let cmd = Command::Stream(StreamCmd::Ref {
            topic: src.clone(),
            delta: 1,
        });
        api.stream_call(src, cmd).await?;
    }
    let cmd = Command::Stream(StreamCmd::Create {
        topic: topic.to_string(),
        config,
        meta,
        closed,
        records,
    });
    let result = api.stream_call(topic, cmd).await;
    let created = matches!(&result, Ok(Reply::Stream(StreamReply::Info(i))) if i.created);
    if let (Some(src), false) = (&source_ref, created) {
        let cmd = Command::Stream(StreamCmd::Ref {
            topic: src.clone(),
            delta: -1,
        });
        if let shards::Reply::Err(e) = api.node.call_topic(src, cmd).await {
            // The source keeps an extra reference: it outlives its last fork.
            log::warn!("v1: giving back a fork's reference on its source failed: {e:?}");
        }
    }
    let Reply::Stream(StreamReply::Info(info)) = result? else {
        return Err(crate::api::unexpected());
    };
    let mut resp = Response {
        status: if info.created { 201 } else { 200 },
        content_type: "",
        headers: Vec::new(),
        body: Vec::new(),
        stream: None,
    };
    if info.created {
        let host = req.header("host").unwrap_or("localhost");
        resp.headers
            .push(("location", format!("http://{host}{}", req.path)));
    }
    super::meta_headers(&mut resp, &info);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-10-09T00:00:00Z"),
            Some(1_728_432_000_000)
        );
        assert_eq!(
            parse_rfc3339("2024-10-09T02:00:00.5+02:00"),
            Some(1_728_432_000_500)
        );
        for bad in [
            "",
            "2024-10-09",
            "2024-10-09 00:00:00Z",
            "not-a-date",
            "2024-13-01T00:00:00Z",
            "2024-10-09T00:00:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
