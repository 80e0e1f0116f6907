//! Sans-IO request parser: feed it the unconsumed bytes of the connection's read buffer,
//! get back how many it consumed and what happened.

use super::chunked::{ChunkError, ChunkedDecoder};
use super::Request;

/// Most header fields accepted in one request (more is 431).
pub(crate) const MAX_HEADERS: usize = 100;
/// Most body bytes preallocated from a declared `Content-Length` before they arrive.
const MAX_PREALLOC: usize = 1 << 20;

/// A protocol error the HTTP layer answers itself, then closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl HttpError {
    fn bad_request(message: impl Into<String>) -> Self {
        HttpError {
            status: 400,
            code: "invalid_request",
            message: message.into(),
        }
    }

    fn headers_too_large(message: impl Into<String>) -> Self {
        HttpError {
            status: 431,
            code: "headers_too_large",
            message: message.into(),
        }
    }

    fn payload_too_large(max_body: usize) -> Self {
        HttpError {
            status: 413,
            code: "payload_too_large",
            message: format!("request body is larger than the limit of {max_body} bytes"),
        }
    }
}

/// A complete request plus how the connection should treat it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub req: Request,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// The request was HTTP/1.0.
    pub http10: bool,
}

/// The outcome of one [`Parser::advance`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Everything usable was consumed; more input is needed.
    NeedMore,
    /// The head asked for `100-continue`, is acceptable, and the body is not all here yet:
    /// write `HTTP/1.1 100 Continue` now, then keep feeding the body. Emitted at most once.
    Continue,
    /// A whole request.
    Request(Box<Parsed>),
    /// Answer with this error and close.
    Error(HttpError),
}

#[derive(Debug)]
enum BodyState {
    Length(usize),
    Chunked(ChunkedDecoder),
}

/// A request whose head is parsed and whose body is still arriving.
#[derive(Debug)]
struct Pending {
    parsed: Parsed,
    expect_continue: bool,
    body: BodyState,
}

/// The request parser of one connection.
#[derive(Debug)]
pub(crate) struct Parser {
    max_head: usize,
    max_body: usize,
    pending: Option<Box<Pending>>,
}

impl Parser {
    pub(crate) fn new(max_head: usize, max_body: usize) -> Self {
        Parser {
            max_head,
            max_body,
            pending: None,
        }
    }

    /// Whether a request head has been parsed and its body is still incomplete.
    pub(crate) fn in_body(&self) -> bool {
        self.pending.is_some()
    }

    /// Consumes what it can from `input` (the unconsumed buffered bytes) and returns the
    /// count consumed with the outcome. Stops after one request so the caller can answer it;
    /// call again with the rest to parse pipelined requests. After [`Step::Error`] the
    /// parser is in an unspecified state: close the connection.
    pub(crate) fn advance(&mut self, input: &[u8]) -> (usize, Step) {
        let mut consumed = 0;
        let mut pending = match self.pending.take() {
            Some(p) => p,
            None => match parse_head(input, self.max_head, self.max_body) {
                Ok(None) => return (0, Step::NeedMore),
                Ok(Some((n, p))) => {
                    consumed = n;
                    p
                }
                Err(e) => return (0, Step::Error(e)),
            },
        };
        let rest = &input[consumed..];
        let done = match &mut pending.body {
            BodyState::Length(remaining) => {
                let take = (*remaining).min(rest.len());
                pending.parsed.req.body.extend_from_slice(&rest[..take]);
                consumed += take;
                *remaining -= take;
                *remaining == 0
            }
            BodyState::Chunked(decoder) => {
                match decoder.decode(rest, &mut pending.parsed.req.body, self.max_body) {
                    Ok((n, done)) => {
                        consumed += n;
                        done
                    }
                    Err(ChunkError::TooLarge) => {
                        return (
                            consumed,
                            Step::Error(HttpError::payload_too_large(self.max_body)),
                        )
                    }
                    Err(ChunkError::Invalid(why)) => {
                        return (consumed, Step::Error(HttpError::bad_request(why)))
                    }
                }
            }
        };
        if done {
            return (consumed, Step::Request(Box::new(pending.parsed)));
        }
        let step = if pending.expect_continue {
            pending.expect_continue = false;
            Step::Continue
        } else {
            Step::NeedMore
        };
        self.pending = Some(pending);
        (consumed, step)
    }
}

/// Parses a request head. `Ok(None)`: incomplete (and still within the limit).
fn parse_head(
    input: &[u8],
    max_head: usize,
    max_body: usize,
) -> Result<Option<(usize, Box<Pending>)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    // Never look past the limit, so the verdict on an oversized head (431) does not depend
    // on whether a bad byte beyond the limit happened to arrive in the same read (400).
    let head_len = match req.parse(&input[..input.len().min(max_head.saturating_add(1))]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if input.len() > max_head {
                return Err(head_too_large(max_head));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::headers_too_large(format!(
                "more than {MAX_HEADERS} header fields"
            )))
        }
        Err(e) => return Err(HttpError::bad_request(format!("malformed request: {e}"))),
    };
    if head_len > max_head {
        return Err(head_too_large(max_head));
    }
    // httparse only yields Complete with method, path and version all set.
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or_default();
    let http10 = req.version.unwrap_or(1) == 0;

    let mut out_headers = Vec::with_capacity(req.headers.len());
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut has_te = false;
    let mut expect_continue = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(h.value).into_owned();
        match name.as_str() {
            "content-length" => {
                for part in value.split(',') {
                    let n = parse_content_length(part.trim())?;
                    if content_length.is_some_and(|prev| prev != n) {
                        return Err(HttpError::bad_request("conflicting Content-Length values"));
                    }
                    content_length = Some(n);
                }
            }
            "transfer-encoding" => {
                has_te = true;
                // Only `chunked` is supported, and it must be the final coding; an
                // `identity` coding (obsolete) is harmless. Anything else: 400.
                for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    if chunked {
                        return Err(HttpError::bad_request(
                            "chunked must be the final transfer coding",
                        ));
                    }
                    if coding.eq_ignore_ascii_case("chunked") {
                        chunked = true;
                    } else if !coding.eq_ignore_ascii_case("identity") {
                        return Err(HttpError::bad_request(format!(
                            "unsupported transfer coding {:?}",
                            short(coding)
                        )));
                    }
                }
            }
            "connection" => {
                for token in value.split(',').map(str::trim) {
                    conn_close |= token.eq_ignore_ascii_case("close");
                    conn_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                }
            }
            "expect" => {
                expect_continue |= value.trim().eq_ignore_ascii_case("100-continue");
            }
            _ => {}
        }
        out_headers.push((name, value));
    }
    if has_te && content_length.is_some() {
        return Err(HttpError::bad_request(
            "both Transfer-Encoding and Content-Length are present",
        ));
    }
    if has_te && !chunked {
        return Err(HttpError::bad_request("Transfer-Encoding without chunked"));
    }
    let body = if chunked {
        BodyState::Chunked(ChunkedDecoder::new(max_head))
    } else {
        let len = content_length.unwrap_or(0);
        if len > max_body {
            return Err(HttpError::payload_too_large(max_body));
        }
        BodyState::Length(len)
    };
    let (path, query) = split_target(target);
    let body_capacity = match body {
        BodyState::Length(len) => len.min(MAX_PREALLOC),
        BodyState::Chunked(_) => 0,
    };
    let keep_alive = if http10 {
        conn_keep_alive && !conn_close
    } else {
        !conn_close
    };
    Ok(Some((
        head_len,
        Box::new(Pending {
            parsed: Parsed {
                req: Request {
                    method,
                    path: path.to_owned(),
                    query: query.to_owned(),
                    headers: out_headers,
                    body: Vec::with_capacity(body_capacity),
                },
                keep_alive,
                http10,
            },
            // An HTTP/1.0 client does not understand 100 Continue.
            expect_continue: expect_continue && !http10,
            body,
        }),
    )))
}

fn head_too_large(max_head: usize) -> HttpError {
    HttpError::headers_too_large(format!(
        "request line and headers are larger than {max_head} bytes"
    ))
}

/// A `Content-Length` value: ASCII digits only, no sign, no overflow.
fn parse_content_length(s: &str) -> Result<usize, HttpError> {
    let invalid = || HttpError::bad_request(format!("invalid Content-Length {:?}", short(s)));
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    s.parse::<usize>().map_err(|_| invalid())
}

/// At most 64 characters of a client-sent value, for error messages.
fn short(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Splits a request target into (path, query). The absolute form
/// (`http://host/path?q`) is reduced to its path.
fn split_target(target: &str) -> (&str, &str) {
    let mut target = target;
    for scheme in ["http://", "https://"] {
        let prefix = target.as_bytes().get(..scheme.len());
        if prefix.is_some_and(|p| p.eq_ignore_ascii_case(scheme.as_bytes())) {
            let rest = &target[scheme.len()..];
            target = match rest.find(['/', '?']) {
                Some(i) => &rest[i..],
                None => "/",
            };
            if let Some(query) = target.strip_prefix('?') {
                return ("/", query);
            }
            break;
        }
    }
    match target.split_once('?') {
        Some((path, query)) => (path, query),
        None => (target, ""),
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
