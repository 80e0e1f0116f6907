//! Generators of the HTTP fuzz properties: garbage and token soup, cut points, mutations,
//! and valid request specs with their encodings.

use super::*;

/// Fragments that steer random input towards the interesting parts of the grammar.
pub(super) const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b":",
    b": ",
    b";",
    b",",
    b"0",
    b"1",
    b"7",
    b"a",
    b"F",
    b"ffffffffffffffff",
    b"10000000000000000",
    b"18446744073709551616",
    b"-1",
    b"+",
    b"GET ",
    b"POST ",
    b"PUT ",
    b"/",
    b"/v0/topics/t",
    b"?a=1",
    b"http://h",
    b"*",
    b" HTTP/1.1",
    b" HTTP/1.0",
    b"HTTP/2.0",
    b"Host: x",
    b"Content-Length: ",
    b"content-length:",
    b"Transfer-Encoding: ",
    b"chunked",
    b"identity",
    b"gzip",
    b"Connection: ",
    b"close",
    b"keep-alive",
    b"Expect: 100-continue",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n",
    b";ext=\"v\"",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"\xc3\xa9",
    b"%",
    b"%zz",
];

pub(super) fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => any::<u8>(),
        5 => select(b"\r\n \t:;,0123456789abcdefABCDEF-+/?%\"=GETPOSHxzk\x00\x7f\xff".to_vec()),
    ]
}

/// Mostly random bytes with an HTTP flavour.
pub(super) fn garbage() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        2 => prop::collection::vec(interesting_byte(), 0..512),
        4 => token_soup(),
    ]
}

/// Dictionary fragments and a few random bytes, concatenated.
pub(super) fn token_soup() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => select(TOKENS).prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(interesting_byte(), 1..6),
    ];
    prop::collection::vec(piece, 0..64).prop_map(|v| v.concat())
}

pub(super) fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..10)
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
pub(super) enum Mutation {
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Duplicate(Index, usize),
    Truncate(Index),
}

pub(super) fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => (any::<Index>(), select(TOKENS)).prop_map(|(i, t)| Mutation::Insert(i, t.to_vec())),
        2 => (any::<Index>(), prop::collection::vec(interesting_byte(), 1..4))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

pub(super) fn mutate(mut input: Vec<u8>, edits: &[Mutation]) -> Vec<u8> {
    for m in edits {
        let len = input.len();
        match m {
            Mutation::Set(i, b) if len > 0 => input[i.index(len)] = *b,
            Mutation::Set(..) => {}
            Mutation::Insert(i, bytes) => {
                let at = i.index(len + 1);
                input.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                input.drain(at..(at + n).min(len));
            }
            Mutation::Delete(..) => {}
            Mutation::Duplicate(i, n) if len > 0 => {
                let at = i.index(len);
                let part = input[at..(at + n).min(len)].to_vec();
                input.splice(at..at, part);
            }
            Mutation::Duplicate(..) => {}
            Mutation::Truncate(i) => input.truncate(i.index(len + 1)),
        }
    }
    input
}

/// How a generated request frames its body.
#[derive(Debug, Clone)]
pub(super) enum Framing {
    /// No framing header: no body.
    Bare,
    /// `Content-Length`, written as given (e.g. `"5"`, `"005"`, `"5, 5"`).
    Length(String),
    Chunked(ChunkStyle),
}

/// How a chunked body is written.
#[derive(Debug, Clone)]
pub(super) struct ChunkStyle {
    /// The `Transfer-Encoding` value.
    pub(super) coding: &'static str,
    /// Where the body is cut into chunks.
    pub(super) cuts: Vec<Index>,
    pub(super) upper: bool,
    pub(super) zeros: usize,
    /// Whitespace before the line end or extension.
    pub(super) ws: &'static str,
    /// An extension (without `;`) on every size line, if any.
    pub(super) ext: Option<Vec<u8>>,
    pub(super) bare_lf: bool,
    pub(super) trailers: Vec<(String, String)>,
}

/// A valid request, written out with [`Spec::bytes`] and expected back as [`Spec::parsed`].
#[derive(Debug, Clone)]
pub(super) struct Spec {
    pub(super) leading_blank_lines: usize,
    pub(super) method: String,
    pub(super) absolute: bool,
    pub(super) path: String,
    pub(super) query: Option<String>,
    pub(super) http10: bool,
    pub(super) bare_lf: bool,
    pub(super) connection: Option<&'static str>,
    pub(super) expect: bool,
    /// Extra headers: name as sent, value bytes.
    pub(super) headers: Vec<(String, Vec<u8>)>,
    pub(super) body: Vec<u8>,
    pub(super) framing: Framing,
}

pub(super) const PATH_CHARS: &[u8] = b"abcXYZ019._~-%:@!$&'()*+,;=/";

pub(super) fn path_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(select(PATH_CHARS), 0..40)
        .prop_map(|v| format!("/{}", String::from_utf8(v).expect("ascii")))
}

pub(super) fn query_strategy() -> impl Strategy<Value = Option<String>> {
    prop::option::of(
        prop::collection::vec(select(b"abc019=&%+?/:.-_".to_vec()), 0..40)
            .prop_map(|v| String::from_utf8(v).expect("ascii")),
    )
}

pub(super) fn header_strategy() -> impl Strategy<Value = (String, Vec<u8>)> {
    let name = "[A-Za-z][A-Za-z0-9-]{0,15}".prop_map(|n| format!("X-{n}"));
    let inner = prop_oneof![
        6 => b'!'..=b'~',
        1 => Just(b' '),
        1 => Just(b'\t'),
        1 => 0x80u8..=0xff,
    ];
    let value = (
        prop::collection::vec(inner, 0..40),
        prop::option::of(b'!'..=b'~'),
    )
        .prop_map(|(mut v, last)| {
            // No leading or trailing whitespace: httparse trims it.
            while v.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                v.remove(0);
            }
            while v.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
                v.pop();
            }
            v.extend(last);
            v
        });
    (name, value)
}

pub(super) fn chunk_style() -> impl Strategy<Value = ChunkStyle> {
    let ext = prop::option::of(prop::collection::vec(
        prop_oneof![
            4 => select(b"abc=\"; 019".to_vec()),
            1 => any::<u8>().prop_filter("no line end", |b| *b != b'\r' && *b != b'\n'),
        ],
        0..12,
    ));
    let trailer = ("[a-z][a-z0-9-]{0,8}", "[ -~]{0,20}");
    (
        select(vec!["chunked", "Chunked", "identity, chunked", "CHUNKED"]),
        prop::collection::vec(any::<Index>(), 0..6),
        any::<bool>(),
        0usize..3,
        select(vec!["", " ", "\t", " \t "]),
        ext,
        any::<bool>(),
        prop::collection::vec(trailer, 0..3),
    )
        .prop_map(
            |(coding, cuts, upper, zeros, ws, ext, bare_lf, trailers)| ChunkStyle {
                coding,
                cuts,
                upper,
                zeros,
                ws,
                ext,
                bare_lf,
                trailers,
            },
        )
}

pub(super) fn spec_strategy(max_body: usize) -> impl Strategy<Value = Spec> {
    let method = prop_oneof![
        4 => select(vec!["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]).prop_map(String::from),
        1 => "[A-Z][A-Z_-]{0,9}",
    ];
    let framing_kind = 0u8..3;
    let length_style = select(vec!["plain", "zeros", "list"]);
    (
        (
            0usize..3,
            method,
            any::<bool>(),
            path_strategy(),
            query_strategy(),
        ),
        (
            prop_oneof![4 => Just(false), 1 => Just(true)],
            any::<bool>(),
            select(vec![
                None,
                Some("close"),
                Some("keep-alive"),
                Some("Keep-Alive, close"),
                Some("Upgrade"),
            ]),
            prop_oneof![4 => Just(false), 1 => Just(true)],
        ),
        prop::collection::vec(header_strategy(), 0..8),
        prop::collection::vec(any::<u8>(), 0..max_body),
        (framing_kind, length_style, chunk_style()),
    )
        .prop_map(
            |(
                (leading_blank_lines, method, absolute, path, query),
                (http10, bare_lf, connection, expect),
                headers,
                body,
                (kind, length_style, chunks),
            )| {
                let framing = match kind {
                    0 if body.is_empty() => Framing::Bare,
                    0 | 1 => Framing::Length(match length_style {
                        "zeros" => format!("00{}", body.len()),
                        "list" => format!("{0}, {0}", body.len()),
                        _ => body.len().to_string(),
                    }),
                    _ => Framing::Chunked(chunks),
                };
                Spec {
                    leading_blank_lines,
                    method,
                    absolute,
                    path,
                    query,
                    http10,
                    bare_lf,
                    connection,
                    expect,
                    headers,
                    body,
                    framing,
                }
            },
        )
}

impl Spec {
    /// The header fields in the order they are written: name as sent, value.
    fn fields(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = vec![("Host".to_string(), b"example.com:4000".to_vec())];
        out.extend(self.headers.iter().cloned());
        match &self.framing {
            Framing::Bare => {}
            Framing::Length(v) => out.push(("Content-Length".into(), v.clone().into_bytes())),
            Framing::Chunked(c) => {
                out.push(("Transfer-Encoding".into(), c.coding.as_bytes().to_vec()))
            }
        }
        if let Some(c) = self.connection {
            out.push(("Connection".into(), c.as_bytes().to_vec()));
        }
        if self.expect {
            out.push(("Expect".into(), b"100-continue".to_vec()));
        }
        out
    }

    pub(super) fn head(&self) -> Vec<u8> {
        let eol: &[u8] = if self.bare_lf { b"\n" } else { b"\r\n" };
        let mut out = Vec::new();
        for _ in 0..self.leading_blank_lines {
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        if self.absolute {
            out.extend_from_slice(b"http://example.com:4000");
        }
        out.extend_from_slice(self.path.as_bytes());
        if let Some(q) = &self.query {
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        out.extend_from_slice(if self.http10 {
            b" HTTP/1.0"
        } else {
            b" HTTP/1.1"
        });
        out.extend_from_slice(eol);
        for (name, value) in self.fields() {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&value);
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(eol);
        out
    }

    fn body_bytes(&self) -> Vec<u8> {
        match &self.framing {
            Framing::Bare | Framing::Length(_) => self.body.clone(),
            Framing::Chunked(c) => encode_chunked(&self.body, c),
        }
    }

    pub(super) fn bytes(&self) -> Vec<u8> {
        let mut out = self.head();
        out.extend(self.body_bytes());
        out
    }

    /// The bytes of a chunked body's trailer section (trailer lines and the final empty
    /// line), which is held to the head limit; 0 for other bodies.
    pub(super) fn trailer_len(&self) -> usize {
        match &self.framing {
            Framing::Chunked(c) => {
                let eol = if c.bare_lf { 1 } else { 2 };
                let lines: usize = c
                    .trailers
                    .iter()
                    .map(|(n, v)| n.len() + 2 + v.len() + eol)
                    .sum();
                lines + eol
            }
            _ => 0,
        }
    }

    pub(super) fn parsed(&self) -> Parsed {
        let closes = |t: &str| {
            self.connection
                .is_some_and(|c| c.split(',').any(|x| x.trim().eq_ignore_ascii_case(t)))
        };
        let keep_alive = if self.http10 {
            closes("keep-alive") && !closes("close")
        } else {
            !closes("close")
        };
        Parsed {
            req: Request {
                method: self.method.clone(),
                path: self.path.clone(),
                query: self.query.clone().unwrap_or_default(),
                headers: self
                    .fields()
                    .into_iter()
                    .map(|(n, v)| {
                        (
                            n.to_ascii_lowercase(),
                            String::from_utf8_lossy(&v).into_owned(),
                        )
                    })
                    .collect(),
                body: self.body.clone(),
            },
            keep_alive,
            http10: self.http10,
        }
    }
}

pub(super) fn encode_chunked(body: &[u8], c: &ChunkStyle) -> Vec<u8> {
    let eol: &[u8] = if c.bare_lf { b"\n" } else { b"\r\n" };
    let mut at: Vec<usize> = c.cuts.iter().map(|i| i.index(body.len() + 1)).collect();
    at.push(body.len());
    at.sort_unstable();
    at.dedup();
    let mut out = Vec::new();
    let size_line = |out: &mut Vec<u8>, n: usize| {
        let digits = if c.upper {
            format!("{n:X}")
        } else {
            format!("{n:x}")
        };
        out.extend(std::iter::repeat_n(b'0', c.zeros));
        out.extend_from_slice(digits.as_bytes());
        out.extend_from_slice(c.ws.as_bytes());
        if let Some(ext) = &c.ext {
            out.push(b';');
            out.extend_from_slice(ext);
        }
        out.extend_from_slice(eol);
    };
    let mut from = 0;
    for to in at {
        if to > from {
            size_line(&mut out, to - from);
            out.extend_from_slice(&body[from..to]);
            out.extend_from_slice(eol);
            from = to;
        }
    }
    size_line(&mut out, 0);
    for (name, value) in &c.trailers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(eol);
    out
}
