use super::*;

const HEAD: usize = 16384;
const BODY: usize = 1 << 20;

fn parser() -> Parser {
    Parser::new(HEAD, BODY)
}

/// Feeds `input` whole; expects exactly one complete request consuming all of it.
fn one(input: &[u8]) -> Parsed {
    let (n, step) = parser().advance(input);
    match step {
        Step::Request(p) => {
            assert_eq!(n, input.len(), "consumed");
            *p
        }
        other => panic!("expected a request, got {other:?}"),
    }
}

fn error(input: &[u8]) -> HttpError {
    match parser().advance(input).1 {
        Step::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Parses every request in `input`, feeding it in the given pieces (as reads would).
fn feed(pieces: &[&[u8]], p: &mut Parser) -> Result<(Vec<Parsed>, usize), HttpError> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut continues = 0;
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let (n, step) = p.advance(&buf);
            buf.drain(..n);
            match step {
                Step::Request(parsed) => out.push(*parsed),
                Step::NeedMore => break,
                Step::Continue => continues += 1,
                Step::Error(e) => return Err(e),
            }
        }
    }
    assert!(
        buf.is_empty() || !p.in_body(),
        "body bytes are always consumed"
    );
    Ok((out, continues))
}

#[test]
fn simple_get() {
    let p = one(
        b"GET /v0/topics/orders?touch=false&x=%20 HTTP/1.1\r\nHost: a\r\nX-Thing:  v  \r\n\r\n",
    );
    assert_eq!(p.req.method, "GET");
    assert_eq!(p.req.path, "/v0/topics/orders");
    assert_eq!(p.req.query, "touch=false&x=%20");
    assert_eq!(
        p.req.headers,
        vec![("host".into(), "a".into()), ("x-thing".into(), "v".into())]
    );
    assert!(p.req.body.is_empty());
    assert!(p.keep_alive);
    assert!(!p.http10);
}

#[test]
fn content_length_body_and_lossy_values() {
    let p = one(b"POST /t HTTP/1.1\r\nContent-Type: application/json\r\nX-Bin: a\xffb\r\nContent-Length: 7\r\n\r\n{\"a\":1}");
    assert_eq!(p.req.method, "POST");
    assert_eq!(p.req.body, b"{\"a\":1}");
    assert_eq!(p.req.header("content-type"), Some("application/json"));
    assert_eq!(p.req.header("x-bin"), Some("a\u{fffd}b"));
}

#[test]
fn connection_semantics() {
    assert!(!one(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!one(b"GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n").keep_alive);
    assert!(one(b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    let p = one(b"GET / HTTP/1.0\r\n\r\n");
    assert!(!p.keep_alive);
    assert!(p.http10);
    let p = one(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert!(p.keep_alive);
    assert!(p.http10);
    assert!(!one(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
}

#[test]
fn targets() {
    let p = one(b"GET http://example.com:4000/v0/x?a=1 HTTP/1.1\r\n\r\n");
    assert_eq!(
        (p.req.path.as_str(), p.req.query.as_str()),
        ("/v0/x", "a=1")
    );
    let p = one(b"GET HTTP://example.com HTTP/1.1\r\n\r\n");
    assert_eq!((p.req.path.as_str(), p.req.query.as_str()), ("/", ""));
    let p = one(b"GET http://h?q=2 HTTP/1.1\r\n\r\n");
    assert_eq!((p.req.path.as_str(), p.req.query.as_str()), ("/", "q=2"));
    let p = one(b"OPTIONS * HTTP/1.1\r\n\r\n");
    assert_eq!(p.req.path, "*");
    let p = one(b"GET /a?b?c HTTP/1.1\r\n\r\n");
    assert_eq!((p.req.path.as_str(), p.req.query.as_str()), ("/a", "b?c"));
    let p = one(b"GET /\xc3\xa9? HTTP/1.1\r\n\r\n");
    assert_eq!((p.req.path.as_str(), p.req.query.as_str()), ("/\u{e9}", ""));
    let p = one("GET htt\u{e9}p://x HTTP/1.1\r\n\r\n".as_bytes());
    assert_eq!(p.req.path, "htt\u{e9}p://x");
}

#[test]
fn head_split_at_every_byte() {
    let input: &[u8] = b"PUT /v0/topics/a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let want = one(input);
    for cut in 0..=input.len() {
        let mut p = parser();
        let (reqs, _) = feed(&[&input[..cut], &input[cut..]], &mut p).unwrap();
        assert_eq!(reqs, vec![want.clone()], "cut at {cut}");
    }
    let pieces: Vec<&[u8]> = input.chunks(1).collect();
    let (reqs, _) = feed(&pieces, &mut parser()).unwrap();
    assert_eq!(reqs, vec![want]);
}

#[test]
fn pipelined_requests_in_one_buffer() {
    let input: &[u8] = b"GET /a HTTP/1.1\r\n\r\n\
        POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
        POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n\
        GET /d HTTP/1.1\r\nConnection: close\r\n\r\n\
        GET /e HT";
    let mut p = parser();
    let mut rest = input;
    let mut got = Vec::new();
    loop {
        let (n, step) = p.advance(rest);
        rest = &rest[n..];
        match step {
            Step::Request(parsed) => got.push(*parsed),
            Step::NeedMore => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(rest, b"GET /e HT", "the partial request stays buffered");
    let paths: Vec<_> = got.iter().map(|p| p.req.path.as_str()).collect();
    assert_eq!(paths, ["/a", "/b", "/c", "/d"]);
    assert_eq!(got[1].req.body, b"abc");
    assert_eq!(got[2].req.body, b"xy");
    assert!(got[2].keep_alive);
    assert!(!got[3].keep_alive);

    // The same stream split at every byte gives the same requests.
    let full = &input[..input.len() - 9];
    for cut in 0..=full.len() {
        let (reqs, _) = feed(&[&full[..cut], &full[cut..]], &mut parser()).unwrap();
        assert_eq!(reqs, got, "cut at {cut}");
    }
}

#[test]
fn chunked_request_split_at_every_byte() {
    let input: &[u8] = b"POST /t HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\n";
    let want = one(input);
    assert_eq!(want.req.body, b"Wikipedia in\r\n\r\nchunks.");
    for cut in 0..=input.len() {
        let (reqs, _) = feed(&[&input[..cut], &input[cut..]], &mut parser()).unwrap();
        assert_eq!(reqs, vec![want.clone()], "cut at {cut}");
    }
}

#[test]
fn transfer_encoding_variants() {
    assert_eq!(
        one(b"POST / HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n")
            .req
            .body,
        b""
    );
    for bad in [
        &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: \r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let e = error(bad);
        assert_eq!(
            (e.status, e.code),
            (400, "invalid_request"),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn content_length_validation() {
    assert_eq!(
        one(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab")
            .req
            .body,
        b"ab"
    );
    assert_eq!(
        one(b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nab")
            .req
            .body,
        b"ab"
    );
    assert_eq!(
        one(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .req
            .body,
        b""
    );
    for bad in [
        &b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1,2\r\n\r\n",
    ] {
        let e = error(bad);
        assert_eq!(
            (e.status, e.code),
            (400, "invalid_request"),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn error_messages_quote_at_most_64_chars() {
    let mut input = b"POST / HTTP/1.1\r\nContent-Length: 1".to_vec();
    input.extend(std::iter::repeat_n(b'x', 5000));
    input.extend_from_slice(b"\r\n\r\n");
    let e = error(&input);
    assert_eq!(e.status, 400);
    assert!(e.message.len() < 120, "{}", e.message);
}

#[test]
fn malformed_heads_are_400() {
    for bad in [
        &b"GET\r\n\r\n"[..],
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / FOO/1.1\r\n\r\n",
        b"G@T / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n: x\r\n\r\n",
        b"GET /a\x7fb HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        let e = error(bad);
        assert_eq!(
            (e.status, e.code),
            (400, "invalid_request"),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn head_limit_is_431() {
    // Exactly at the limit is accepted.
    let mut ok = b"GET / HTTP/1.1\r\nX: ".to_vec();
    ok.resize(HEAD - 4, b'a');
    ok.extend_from_slice(b"\r\n\r\n");
    assert_eq!(ok.len(), HEAD);
    one(&ok);
    // One byte more is 431, complete or not.
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.resize(HEAD - 3, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    let e = error(&big);
    assert_eq!((e.status, e.code), (431, "headers_too_large"));
    let mut partial = big[..HEAD - 3].to_vec();
    partial.resize(HEAD, b'a');
    assert!(matches!(parser().advance(&partial).1, Step::NeedMore));
    partial.push(b'a');
    let e = error(&partial);
    assert_eq!((e.status, e.code), (431, "headers_too_large"));
    // A huge request line is caught too, however it is fed.
    let mut p = parser();
    let line = vec![b'a'; 1000];
    let mut pieces: Vec<&[u8]> = vec![b"GET /"];
    pieces.extend(std::iter::repeat_n(&line[..], 20));
    let e = feed(&pieces, &mut p).unwrap_err();
    assert_eq!(e.status, 431);
}

#[test]
fn too_many_headers_is_431() {
    let mut input = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..MAX_HEADERS {
        input.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    let mut ok = input.clone();
    ok.extend_from_slice(b"\r\n");
    assert_eq!(one(&ok).req.headers.len(), MAX_HEADERS);
    input.extend_from_slice(b"x-last: v\r\n\r\n");
    let e = error(&input);
    assert_eq!((e.status, e.code), (431, "headers_too_large"));
}

#[test]
fn body_limit_is_413_before_the_body() {
    let mut p = Parser::new(HEAD, 10);
    assert!(matches!(
        p.advance(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789")
            .1,
        Step::Request(_)
    ));
    let (_, step) = Parser::new(HEAD, 10).advance(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n");
    match step {
        Step::Error(e) => assert_eq!((e.status, e.code), (413, "payload_too_large")),
        other => panic!("{other:?}"),
    }
    // A chunked body that grows past the limit.
    let mut p = Parser::new(HEAD, 10);
    let e = feed(
        &[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"6\r\nabcdef\r\n",
            b"5\r\n",
        ],
        &mut p,
    )
    .unwrap_err();
    assert_eq!((e.status, e.code), (413, "payload_too_large"));
    // Bad chunk syntax is 400.
    let e = feed(
        &[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
        &mut parser(),
    )
    .unwrap_err();
    assert_eq!((e.status, e.code), (400, "invalid_request"));
}

#[test]
fn expect_continue() {
    // Body not yet here: Continue once, then the request.
    let mut p = parser();
    let head: &[u8] = b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n";
    let (n, step) = p.advance(head);
    assert_eq!((n, step), (head.len(), Step::Continue));
    assert!(p.in_body());
    assert_eq!(p.advance(b"ab"), (2, Step::NeedMore));
    let (n, step) = p.advance(b"cdGET");
    assert_eq!(n, 2);
    assert!(matches!(step, Step::Request(r) if r.req.body == b"abcd"));
    assert!(!p.in_body());
    // Body already buffered: no Continue.
    let mut input = head.to_vec();
    input.extend_from_slice(b"abcd");
    assert_eq!(one(&input).req.body, b"abcd");
    // Over the limit: 413, no Continue.
    let (_, step) = Parser::new(HEAD, 3).advance(head);
    assert!(matches!(step, Step::Error(HttpError { status: 413, .. })));
    // Chunked with expect.
    let (reqs, continues) = feed(
        &[
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"1\r\na\r\n0\r\n\r\n",
        ],
        &mut parser(),
    )
    .unwrap();
    assert_eq!((reqs.len(), continues), (1, 1));
    // HTTP/1.0 never gets a Continue.
    let (_, continues) = feed(
        &[
            b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"a",
        ],
        &mut parser(),
    )
    .unwrap();
    assert_eq!(continues, 0);
}

#[test]
fn empty_lines_before_a_request_are_tolerated() {
    let p = one(b"\r\nGET / HTTP/1.1\r\n\r\n");
    assert_eq!(p.req.path, "/");
}

#[test]
fn bare_lf_heads() {
    let p = one(b"GET /x HTTP/1.1\nHost: a\n\n");
    assert_eq!(p.req.path, "/x");
    assert_eq!(p.req.header("host"), Some("a"));
}

#[test]
fn mutated_inputs_never_panic() {
    // A deterministic xorshift so the test needs no dependency.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let samples: [&[u8]; 4] = [
        b"POST /t?a=1 HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
        b"POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\nT: 1\r\n\r\n",
        b"GET http://h/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\nx",
    ];
    let alphabet = b"\r\n :;,0123456789abcdefABCDEF-+\xff\x00GET/?%chunked";
    for round in 0..20_000 {
        let mut input = samples[round % samples.len()].to_vec();
        for _ in 0..(rand() % 4 + 1) {
            let pos = (rand() as usize) % (input.len() + 1);
            let byte = alphabet[(rand() as usize) % alphabet.len()];
            match rand() % 3 {
                0 if pos < input.len() => input[pos] = byte,
                1 if pos < input.len() => {
                    input.remove(pos);
                }
                _ => input.insert(pos, byte),
            }
        }
        let mut p = Parser::new(64, 16);
        let cut = (rand() as usize) % (input.len() + 1);
        let mut buf = input[..cut].to_vec();
        let mut fed = cut;
        loop {
            let (n, step) = p.advance(&buf);
            assert!(n <= buf.len());
            buf.drain(..n);
            match step {
                Step::Error(_) => break,
                Step::Request(_) | Step::Continue => {}
                Step::NeedMore if fed < input.len() => {
                    buf.extend_from_slice(&input[fed..]);
                    fed = input.len();
                }
                Step::NeedMore => break,
            }
        }
    }
}
