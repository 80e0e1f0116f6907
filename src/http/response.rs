//! Response serialisation: pure functions over an output buffer.

use super::sse::SSE_CONTENT_TYPE;
use super::Response;

/// The reason phrase for a status code (`"Unknown"` for codes without one).
pub fn status_reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        422 => "Unprocessable Entity",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// How the connection layer wants a response framed, beyond the response itself.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Framing<'a> {
    /// Keep the connection open after this response (otherwise `connection: close`).
    pub keep_alive: bool,
    /// The request was HTTP/1.0 and asked for keep-alive: say `connection: keep-alive`.
    pub http10: bool,
    /// A `HEAD` request: headers only, `content-length` still that of the body.
    pub head_only: bool,
    /// A preformatted `Date` value (IMF-fixdate).
    pub date: Option<&'a [u8]>,
    /// Leave the body out of `out` (the caller writes it separately); framing is unchanged.
    pub omit_body: bool,
}

/// Writes `HTTP/1.1 <status> <reason>`, `content-type`, `content-length`, the extra headers,
/// `connection: close` when not `keep_alive`, the blank line and the body.
#[allow(dead_code)] // API; the connection layer itself uses `write_framed`.
pub fn write_response(out: &mut Vec<u8>, resp: &Response, keep_alive: bool) {
    write_framed(
        out,
        resp,
        Framing {
            keep_alive,
            ..Framing::default()
        },
    );
}

/// Whether a response with this status carries a body (and a `content-length`): 1xx, 204
/// and 304 never do.
pub(crate) fn body_allowed(status: u16) -> bool {
    !(100..200).contains(&status) && status != 204 && status != 304
}

/// [`write_response`] with the connection layer's extra framing choices.
pub(crate) fn write_framed(out: &mut Vec<u8>, resp: &Response, framing: Framing<'_>) {
    let status = wire_status(resp.status);
    let bodyless = !body_allowed(status);
    write_status_and_date(out, status, framing.date);
    if !bodyless {
        if !resp.content_type.is_empty() {
            out.extend_from_slice(b"content-type: ");
            push_sanitized(out, resp.content_type);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"content-length: ");
        push_u64(out, resp.body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &resp.headers {
        push_sanitized(out, name);
        out.extend_from_slice(b": ");
        push_sanitized(out, value);
        out.extend_from_slice(b"\r\n");
    }
    if !framing.keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if framing.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !bodyless && !framing.head_only && !framing.omit_body {
        out.extend_from_slice(&resp.body);
    }
}

/// The status written for `status`: itself if it has three digits, else 500.
pub(crate) fn wire_status(status: u16) -> u16 {
    if (100..=999).contains(&status) {
        status
    } else {
        500
    }
}

fn write_status_and_date(out: &mut Vec<u8>, status: u16, date: Option<&[u8]>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(status_reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(date) = date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
}

/// The head of a streaming response (the caller checked that its status allows a body):
/// status line, `date`, `content-type` (`text/event-stream` if empty), `cache-control:
/// no-store` and `x-accel-buffering: no` unless the response sets them, the response's
/// headers and `connection: close`: the body is delimited by the end of the connection, so
/// no `content-length` and no chunked framing.
pub(crate) fn write_stream_head(out: &mut Vec<u8>, resp: &Response, date: Option<&[u8]>) {
    write_status_and_date(out, wire_status(resp.status), date);
    let content_type = if resp.content_type.is_empty() {
        SSE_CONTENT_TYPE
    } else {
        resp.content_type
    };
    out.extend_from_slice(b"content-type: ");
    push_sanitized(out, content_type);
    out.extend_from_slice(b"\r\n");
    let has = |name: &str| {
        resp.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    if !has("cache-control") {
        out.extend_from_slice(b"cache-control: no-store\r\n");
    }
    if !has("x-accel-buffering") {
        out.extend_from_slice(b"x-accel-buffering: no\r\n");
    }
    for (name, value) in &resp.headers {
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("connection")
        {
            continue; // framing is ours
        }
        push_sanitized(out, name);
        out.extend_from_slice(b": ");
        push_sanitized(out, value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
}

/// Header text with CR and LF replaced by spaces, so no value can inject a header.
fn push_sanitized(out: &mut Vec<u8>, s: &str) {
    let start = out.len();
    out.extend_from_slice(s.as_bytes());
    for b in &mut out[start..] {
        if *b == b'\r' || *b == b'\n' {
            *b = b' ';
        }
    }
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) for a Unix time in seconds.
pub(crate) fn http_date(unix_secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let weekday = ((days + 4) % 7) as usize; // 1970-01-01 was a Thursday
    let (year, month, day) = civil_from_days(days);
    let mut out = [0u8; 29];
    out[..3].copy_from_slice(DAYS[weekday]);
    out[3..5].copy_from_slice(b", ");
    two_digits(&mut out[5..7], day);
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize % 12]);
    out[11] = b' ';
    let y = year % 10_000;
    two_digits(&mut out[12..14], y / 100);
    two_digits(&mut out[14..16], y % 100);
    out[16] = b' ';
    two_digits(&mut out[17..19], secs_of_day / 3600);
    out[19] = b':';
    two_digits(&mut out[20..22], secs_of_day / 60 % 60);
    out[22] = b':';
    two_digits(&mut out[23..25], secs_of_day % 60);
    out[25..].copy_from_slice(b" GMT");
    out
}

fn two_digits(out: &mut [u8], n: u64) {
    out[0] = b'0' + (n / 10 % 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), proleptic Gregorian.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &[u8]) -> Response {
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: body.to_vec(),
            stream: None,
        }
    }

    fn text(out: &[u8]) -> &str {
        std::str::from_utf8(out).unwrap()
    }

    #[test]
    fn serializes_keep_alive() {
        let mut out = Vec::new();
        write_response(&mut out, &resp(200, b"{\"a\":1}"), true);
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
        );
    }

    #[test]
    fn serializes_close_and_extra_headers() {
        let mut out = b"previous".to_vec();
        let mut r = resp(405, b"{}");
        r.headers.push(("allow", "GET, PUT".into()));
        r.headers.push(("retry-after", "1\r\nx-evil: 1".into()));
        write_response(&mut out, &r, false);
        assert_eq!(
            text(&out),
            "previousHTTP/1.1 405 Method Not Allowed\r\ncontent-type: application/json\r\n\
             content-length: 2\r\nallow: GET, PUT\r\nretry-after: 1  x-evil: 1\r\n\
             connection: close\r\n\r\n{}"
        );
    }

    #[test]
    fn serializes_empty_body_and_statuses() {
        let mut out = Vec::new();
        write_response(&mut out, &resp(431, b""), false);
        assert!(text(&out).starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text(&out).contains("content-length: 0\r\n"));
        assert!(text(&out).ends_with("connection: close\r\n\r\n"));

        out.clear();
        write_response(&mut out, &resp(204, b"ignored"), true);
        assert_eq!(text(&out), "HTTP/1.1 204 No Content\r\n\r\n");

        out.clear();
        write_response(&mut out, &resp(1000, b""), true);
        assert!(text(&out).starts_with("HTTP/1.1 500 Internal Server Error\r\n"));

        out.clear();
        write_response(&mut out, &resp(299, b""), true);
        assert!(text(&out).starts_with("HTTP/1.1 299 Unknown\r\n"));
    }

    #[test]
    fn framing_options() {
        let mut out = Vec::new();
        let date = http_date(784_111_777);
        let framing = Framing {
            keep_alive: true,
            http10: true,
            head_only: true,
            date: Some(&date),
            omit_body: false,
        };
        write_framed(&mut out, &resp(200, b"hello"), framing);
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             content-type: application/json\r\ncontent-length: 5\r\n\
             connection: keep-alive\r\n\r\n"
        );
        out.clear();
        let framing = Framing {
            keep_alive: true,
            omit_body: true,
            ..Framing::default()
        };
        write_framed(&mut out, &resp(200, b"hello"), framing);
        assert!(text(&out).ends_with("content-length: 5\r\n\r\n"));
    }

    #[test]
    fn stream_heads() {
        let mut out = Vec::new();
        let date = http_date(784_111_777);
        let r = Response::sse(|_| async {});
        write_stream_head(&mut out, &r, Some(&date));
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             content-type: text/event-stream\r\ncache-control: no-store\r\n\
             x-accel-buffering: no\r\nconnection: close\r\n\r\n"
        );

        // The handler's headers; its own cache-control wins; framing headers are ours.
        out.clear();
        let headers = vec![
            ("Cache-Control", "no-cache".to_string()),
            ("x-session", "w1\r\nx-evil: 1".to_string()),
            ("content-length", "5".to_string()),
            ("connection", "keep-alive".to_string()),
            ("transfer-encoding", "chunked".to_string()),
        ];
        let r = Response::stream(1000, "", headers, |_| async {});
        write_stream_head(&mut out, &r, None);
        assert_eq!(
            text(&out),
            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/event-stream\r\n\
             x-accel-buffering: no\r\nCache-Control: no-cache\r\n\
             x-session: w1  x-evil: 1\r\nconnection: close\r\n\r\n"
        );

        out.clear();
        let r = Response::stream(202, "text/plain", Vec::new(), |_| async {});
        write_stream_head(&mut out, &r, None);
        assert!(text(&out).starts_with("HTTP/1.1 202 Accepted\r\ncontent-type: text/plain\r\n"));
        assert!(!text(&out).contains("content-length"));
    }

    #[test]
    fn dates() {
        assert_eq!(&http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&http_date(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&http_date(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(&http_date(1_700_000_000), b"Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(&http_date(4_102_444_799), b"Thu, 31 Dec 2099 23:59:59 GMT");
    }

    #[test]
    fn reasons() {
        assert_eq!(status_reason(200), "OK");
        assert_eq!(status_reason(413), "Payload Too Large");
        assert_eq!(status_reason(507), "Insufficient Storage");
        assert_eq!(status_reason(42), "Unknown");
    }
}
