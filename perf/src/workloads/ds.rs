//! What the Durable Streams workloads (`ds-append`, `ds-fanout`, `ds-catchup`) share: stream
//! paths, requests with an explicit `Content-Type`, creating streams with `PUT`, offsets, and
//! a scanner that finds this generator's records in a JSON body or an SSE `data` event
//! without parsing JSON.
//!
//! A stream is `/v1/stream/{name}`; an offset is `0000000000000000_` and the position as 16
//! digits (the server's shape), position `n` meaning "after the first `n` records". Every
//! stream these workloads create is `application/json`, so a POST of a JSON array appends one
//! record per element and a read answers a JSON array of records.

use std::sync::LazyLock;

use memchr::memmem;

use crate::client::{Client, Target};
use crate::exec::Cpus;

/// The content type of every stream the workloads create.
pub const JSON: &str = "application/json";

/// The request path of stream `name`.
pub fn stream_path(name: &str) -> String {
    format!("/v1/stream/{name}")
}

/// The offset token of position `pos`.
pub fn offset(pos: u64) -> String {
    format!("0000000000000000_{pos:016}")
}

/// The position of an offset token (`Stream-Next-Offset`, `streamNextOffset`).
pub fn parse_offset(token: &[u8]) -> Option<u64> {
    let digits = token.trim_ascii().strip_prefix(b"0000000000000000_")?;
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Serializes a request with an optional `Content-Type` (a `PUT` that creates a stream has
/// one and no body; [`Target::request`] only sends it with a body).
pub fn request(
    target: &Target,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut req = Vec::with_capacity(160 + body.len());
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(path.as_bytes());
    req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    req.extend_from_slice(target.host.as_bytes());
    req.extend_from_slice(b"\r\n");
    if let Some(ct) = content_type {
        req.extend_from_slice(b"Content-Type: ");
        req.extend_from_slice(ct.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || method == "PUT" || method == "POST" {
        req.extend_from_slice(b"Content-Length: ");
        req.extend_from_slice(body.len().to_string().as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    req
}

/// Creates (or confirms) a JSON stream: `201` or `200` are fine.
pub async fn put_stream(client: &mut Client, target: &Target, name: &str) -> Result<(), String> {
    let req = request(target, "PUT", &stream_path(name), Some(JSON), b"");
    let status = client
        .send(&req)
        .await
        .map_err(|e| format!("PUT {name}: {e}"))?;
    if !(200..300).contains(&status) {
        let body = String::from_utf8_lossy(client.body());
        return Err(format!("PUT {name}: HTTP {status}: {body}"));
    }
    Ok(())
}

/// Creates every stream of `names` over one connection, on the first executor.
pub fn create_streams(cpus: &Cpus, target: &Target, names: Vec<String>) -> Result<(), String> {
    let target = target.clone();
    cpus.run_one(move || async move {
        let mut client = Client::new(target.clone());
        for name in &names {
            put_stream(&mut client, &target, name).await?;
        }
        Ok(())
    })?
}

/// The stream's tail position (`GET ?offset=now`, its `Stream-Next-Offset`).
pub async fn tail(client: &mut Client, target: &Target, name: &str) -> Result<u64, String> {
    let path = format!("{}?offset=now", stream_path(name));
    let req = request(target, "GET", &path, None, b"");
    let status = client
        .send(&req)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    if status != 200 {
        return Err(format!("GET {path}: HTTP {status}"));
    }
    client
        .header("stream-next-offset")
        .and_then(parse_offset)
        .ok_or_else(|| format!("GET {path}: no Stream-Next-Offset"))
}

/// A body of `records` JSON values appended as one POST: the value itself for one record, a
/// JSON array (flattened one level by the server: one record per element) for several.
pub fn json_body<I: IntoIterator<Item = String>>(records: I) -> Vec<u8> {
    let mut items = records.into_iter();
    let Some(first) = items.next() else {
        return b"[]".to_vec();
    };
    let Some(second) = items.next() else {
        return first.into_bytes();
    };
    let mut body = String::with_capacity(2 + 3 * (first.len() + 1));
    body.push('[');
    body.push_str(&first);
    for item in std::iter::once(second).chain(items) {
        body.push(',');
        body.push_str(&item);
    }
    body.push(']');
    body.into_bytes()
}

/// Where one of the fan-out's records starts: `{"f":<id>,"t":<send µs>,...}`
/// ([`crate::sse::watch_record`]); its padding is letters only, so the marker cannot occur
/// inside a record.
const RECORD_MARKER: &[u8] = br#"{"f":"#;
const SEND_KEY: &[u8] = br#","t":"#;
static RECORD_FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(RECORD_MARKER));
static OFFSET_FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(br#""streamNextOffset":""#));

/// Calls `found(id, send_us)` for each fan-out record in `bytes`, in order.
pub fn scan_records(bytes: &[u8], mut found: impl FnMut(u64, u64)) {
    for at in RECORD_FINDER.find_iter(bytes) {
        let rest = &bytes[at + RECORD_MARKER.len()..];
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

/// The position of the last `control` event's `streamNextOffset` in `frames`.
pub fn last_control_offset(frames: &[u8]) -> Option<u64> {
    let at = OFFSET_FINDER.find_iter(frames).last()?;
    let rest = &frames[at + 20..];
    let end = memchr::memchr(b'"', rest)?;
    parse_offset(&rest[..end])
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
    use crate::sse::watch_record;

    #[test]
    fn offsets_round_trip() {
        assert_eq!(offset(42), "0000000000000000_0000000000000042");
        assert_eq!(parse_offset(offset(1_000_000).as_bytes()), Some(1_000_000));
        assert_eq!(
            parse_offset(b" 0000000000000000_0000000000000007 "),
            Some(7)
        );
        assert_eq!(parse_offset(b"-1"), None);
        assert_eq!(parse_offset(b"0000000000000000_"), None);
        assert_eq!(parse_offset(b"0000000000000000_12a"), None);
    }

    #[test]
    fn requests_carry_the_content_type() {
        let t = Target::parse("http://127.0.0.1:4000").unwrap();
        let r = request(&t, "PUT", "/v1/stream/a", Some(JSON), b"");
        assert_eq!(
            r,
            b"PUT /v1/stream/a HTTP/1.1\r\nHost: 127.0.0.1:4000\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n"
        );
        let r = request(&t, "GET", "/v1/stream/a?offset=-1", None, b"");
        assert_eq!(
            r,
            b"GET /v1/stream/a?offset=-1 HTTP/1.1\r\nHost: 127.0.0.1:4000\r\n\r\n"
        );
    }

    #[test]
    fn bodies_are_one_value_or_an_array() {
        assert_eq!(json_body(vec!["{}".to_string()]), b"{}");
        assert_eq!(
            json_body(vec!["1".into(), "2".into(), "3".into()]),
            b"[1,2,3]"
        );
        assert_eq!(json_body(Vec::<String>::new()), b"[]");
    }

    #[test]
    fn finds_records_and_offsets_in_sse_events() {
        let a = watch_record(17, 123_456, 256);
        let b = watch_record(18, 9, 64);
        let frames = format!(
            "event: data\ndata:[{a},{b}]\n\nevent: control\n\
             data:{{\"streamNextOffset\":\"{}\",\"streamCursor\":\"1\",\"upToDate\":true}}\n\n",
            offset(19)
        );
        let mut got = Vec::new();
        scan_records(frames.as_bytes(), |id, t| got.push((id, t)));
        assert_eq!(got, vec![(17, 123_456), (18, 9)]);
        assert_eq!(last_control_offset(frames.as_bytes()), Some(19));
        assert_eq!(last_control_offset(b"event: data\ndata:[]\n\n"), None);
    }
}
