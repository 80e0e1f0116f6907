//! Property-based fuzzing of the request parser and the chunked decoder (issue 7).
//!
//! Every property runs a few hundred cases by default so `cargo test` stays fast; set
//! `PROPTEST_CASES` (e.g. `PROPTEST_CASES=200000`) to run them as long as you like. Inputs
//! that once broke a property are kept at the bottom as plain `#[test]`s.
//!
//! What is checked, for arbitrary bytes, token soup, valid requests and mutated valid
//! requests, each fed whole and split into arbitrary reads:
//! - no panic, and every step consumes at most what it was given;
//! - nothing is held beyond the limits: outside a body the unconsumed input never exceeds
//!   the head limit, inside a body every byte is consumed, a body never exceeds the body
//!   limit, and errors are only 400, 413 or 431 with short messages;
//! - the requests (and the final outcome) do not depend on how the input was split;
//! - valid requests parse to exactly what was sent, and a limit is hit exactly when the
//!   request is over it.

use super::chunked::{ChunkError, ChunkedDecoder};
use super::parse::{HttpError, Parsed, Parser, Step, MAX_HEADERS};
use super::{percent_decode, Request};
use proptest::prelude::*;
use proptest::sample::{select, Index};

mod generators;
use generators::*;

/// The configuration of every property here: `default_cases` unless `PROPTEST_CASES` says
/// otherwise, and no failure files written into the tree (crashers are kept as tests).
fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- driving the parser ----------------------------------------------------------------

/// How a fed input ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Waiting for more input, with this many unconsumed bytes buffered.
    NeedMore { in_body: bool, buffered: usize },
    /// Answered with this error (the connection then closes).
    Error { status: u16, code: &'static str },
}

#[derive(Debug, Clone)]
struct Run {
    requests: Vec<Parsed>,
    continues: usize,
    end: End,
}

/// Feeds `pieces` to a fresh parser the way the connection does (append each read to the
/// unconsumed buffer, advance until it needs more), checking the per-step invariants.
fn drive(pieces: &[&[u8]], max_head: usize, max_body: usize) -> Run {
    let mut p = Parser::new(max_head, max_body);
    let mut buf: Vec<u8> = Vec::new();
    let mut requests = Vec::new();
    let mut continues = 0;
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let was_in_body = p.in_body();
            let (n, step) = p.advance(&buf);
            assert!(n <= buf.len(), "consumed {n} of {} bytes", buf.len());
            buf.drain(..n);
            match step {
                Step::Request(parsed) => {
                    assert!(n > 0 || was_in_body, "a request consumes its head");
                    assert!(!p.in_body());
                    check_request(&parsed, max_body);
                    requests.push(*parsed);
                }
                Step::Continue => {
                    assert!(!was_in_body, "Continue comes with the head");
                    assert!(p.in_body());
                    assert!(buf.is_empty(), "an incomplete body consumes all input");
                    continues += 1;
                    break;
                }
                Step::NeedMore => {
                    if p.in_body() {
                        assert!(buf.is_empty(), "an incomplete body consumes all input");
                    } else {
                        assert_eq!(n, 0);
                        assert!(
                            buf.len() <= max_head,
                            "{} bytes of head buffered over the limit of {max_head}",
                            buf.len()
                        );
                    }
                    break;
                }
                Step::Error(e) => {
                    check_error(&e);
                    return Run {
                        requests,
                        continues,
                        end: End::Error {
                            status: e.status,
                            code: e.code,
                        },
                    };
                }
            }
        }
    }
    Run {
        requests,
        continues,
        end: End::NeedMore {
            in_body: p.in_body(),
            buffered: buf.len(),
        },
    }
}

fn check_request(p: &Parsed, max_body: usize) {
    let r = &p.req;
    assert!(r.body.len() <= max_body, "body of {} bytes", r.body.len());
    assert!(!r.method.is_empty());
    assert!(!r.path.contains('?'), "path {:?}", r.path);
    assert!(r.headers.len() <= MAX_HEADERS);
    for (name, _) in &r.headers {
        assert!(!name.is_empty());
        assert_eq!(name, &name.to_ascii_lowercase());
    }
    if p.http10 {
        // HTTP/1.0 is close unless keep-alive was asked for.
        let asked = r
            .headers
            .iter()
            .filter(|(n, _)| n == "connection")
            .any(|(_, v)| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
            });
        assert!(!p.keep_alive || asked);
    }
}

fn check_error(e: &HttpError) {
    let ok = matches!(
        (e.status, e.code),
        (400, "invalid_request") | (413, "payload_too_large") | (431, "headers_too_large")
    );
    assert!(ok, "unexpected error {e:?}");
    assert!(e.message.len() < 256, "long message {:?}", e.message);
}

/// Cuts `input` at the given points (any order, duplicates allowed).
fn split<'a>(input: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
    at.sort_unstable();
    let mut pieces = Vec::with_capacity(at.len() + 1);
    let mut from = 0;
    for a in at {
        pieces.push(&input[from..a]);
        from = a;
    }
    pieces.push(&input[from..]);
    pieces
}

/// Whole, split at `cuts`, and (for short inputs) byte by byte: the same requests and the
/// same outcome every time.
fn assert_split_invariant(input: &[u8], cuts: &[Index], max_head: usize, max_body: usize) {
    let whole = drive(&[input], max_head, max_body);
    let mut splits = vec![split(input, cuts)];
    if input.len() <= 512 {
        splits.push(input.chunks(1).collect());
    }
    for pieces in splits {
        let run = drive(&pieces, max_head, max_body);
        assert_eq!(
            run.requests,
            whole.requests,
            "requests differ when split into {} pieces",
            pieces.len()
        );
        assert_eq!(
            run.end,
            whole.end,
            "outcome differs when split into {} pieces",
            pieces.len()
        );
        assert!(run.continues <= run.requests.len() + 1);
    }
    assert!(whole.continues <= whole.requests.len() + 1);
}

// ---- the parser ------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(1000))]

    /// Random bytes: invariants hold and the outcome does not depend on the reads.
    #[test]
    fn garbage_is_rejected_consistently(
        input in garbage(),
        cuts in cuts(),
        max_head in prop_oneof![16usize..300, Just(16384)],
        max_body in prop_oneof![0usize..64, Just(1 << 20)],
    ) {
        assert_split_invariant(&input, &cuts, max_head, max_body);
    }

    /// Valid requests with a few random edits.
    #[test]
    fn mutated_requests_are_handled_consistently(
        specs in prop::collection::vec(spec_strategy(200), 1..4),
        edits in prop::collection::vec(mutation(), 1..6),
        cuts in cuts(),
        max_head in prop_oneof![32usize..400, Just(16384)],
        max_body in prop_oneof![0usize..200, Just(1 << 20)],
    ) {
        let input: Vec<u8> = specs.iter().flat_map(Spec::bytes).collect();
        let input = mutate(input, &edits);
        assert_split_invariant(&input, &cuts, max_head, max_body);
    }

    /// Valid pipelined requests parse back to exactly what was sent, however they arrive.
    #[test]
    fn valid_requests_round_trip(
        specs in prop::collection::vec(spec_strategy(300), 1..5),
        tail in prop::collection::vec(interesting_byte(), 0..8),
        cuts in cuts(),
    ) {
        let mut input: Vec<u8> = specs.iter().flat_map(Spec::bytes).collect();
        let want: Vec<Parsed> = specs.iter().map(Spec::parsed).collect();
        // A partial next request (or garbage) after them changes nothing before it.
        let whole_len = input.len();
        let tail: Vec<u8> = tail.into_iter().filter(|b| *b != b'\r' && *b != b'\n').collect();
        input.extend_from_slice(&tail);
        for pieces in [vec![&input[..]], split(&input, &cuts)] {
            let mut p = Parser::new(16384, 1 << 20);
            let mut buf = Vec::new();
            let mut got = Vec::new();
            let mut consumed = 0;
            'feed: for piece in pieces {
                buf.extend_from_slice(piece);
                loop {
                    let (n, step) = p.advance(&buf);
                    buf.drain(..n);
                    consumed += n;
                    match step {
                        Step::Request(r) => got.push(*r),
                        Step::Continue => {}
                        Step::NeedMore => break,
                        Step::Error(e) => {
                            // Only the trailing garbage may be refused.
                            prop_assert!(consumed >= whole_len, "{e:?}");
                            break 'feed;
                        }
                    }
                }
            }
            prop_assert_eq!(&got, &want);
            prop_assert!(consumed >= whole_len);
        }
    }

    /// Valid requests against small limits: the first one over a limit gets exactly that
    /// limit's error, and every request before it comes through unchanged.
    #[test]
    fn limits_are_hit_exactly_when_exceeded(
        specs in prop::collection::vec(spec_strategy(120), 1..4),
        cuts in cuts(),
        max_head in 40usize..400,
        max_body in 0usize..100,
    ) {
        let input: Vec<u8> = specs.iter().flat_map(Spec::bytes).collect();
        let mut want = Vec::new();
        let mut want_end = None;
        for s in &specs {
            if s.head().len() > max_head {
                want_end = Some(End::Error { status: 431, code: "headers_too_large" });
                break;
            }
            if s.body.len() > max_body {
                want_end = Some(End::Error { status: 413, code: "payload_too_large" });
                break;
            }
            if s.trailer_len() > max_head {
                want_end = Some(End::Error { status: 400, code: "invalid_request" });
                break;
            }
            want.push(s.parsed());
        }
        let want_end = want_end.unwrap_or(End::NeedMore { in_body: false, buffered: 0 });
        for pieces in [vec![&input[..]], split(&input, &cuts)] {
            let run = drive(&pieces, max_head, max_body);
            prop_assert_eq!(&run.requests, &want);
            prop_assert_eq!(&run.end, &want_end);
        }
    }
}

// ---- the chunked decoder ---------------------------------------------------------------

/// (body, consumed, done) or the error, feeding `pieces` one after the other.
fn decode(
    pieces: &[&[u8]],
    max_trailer: usize,
    max_body: usize,
) -> Result<(Vec<u8>, usize, bool), ChunkError> {
    let mut dec = ChunkedDecoder::new(max_trailer);
    let mut body = Vec::new();
    let mut consumed = 0;
    for piece in pieces {
        let before = body.len();
        let (n, done) = dec.decode(piece, &mut body, max_body)?;
        assert!(n <= piece.len());
        assert!(body.len() <= max_body, "body of {} bytes", body.len());
        assert!(body.len() - before <= n, "more body than input");
        consumed += n;
        if done {
            return Ok((body, consumed, true));
        }
        assert_eq!(n, piece.len(), "an incomplete body consumes all input");
    }
    Ok((body, consumed, false))
}

fn chunk_soup() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => select(vec![
            &b"\r\n"[..], b"\n", b"\r", b"0", b"1", b"5", b"a", b"F", b"10", b" ", b"\t", b";",
            b";x=\"y\"", b"hello", b"x: y", b"0\r\n\r\n", b"ffffffffffffffff", b"fffffffffffffffff",
        ])
        .prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(interesting_byte(), 1..6),
    ];
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        4 => prop::collection::vec(piece, 0..48).prop_map(|v| v.concat()),
    ]
}

proptest! {
    #![proptest_config(config(2000))]

    /// Random chunked input: bounded, and the same result however it is split.
    #[test]
    fn chunked_garbage_is_split_invariant(
        input in chunk_soup(),
        cuts in cuts(),
        max_trailer in 0usize..64,
        max_body in prop_oneof![0usize..32, Just(1 << 20)],
    ) {
        let whole = decode(&[&input], max_trailer, max_body);
        let pieces = split(&input, &cuts);
        prop_assert_eq!(&decode(&pieces, max_trailer, max_body), &whole);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(&decode(&bytes, max_trailer, max_body), &whole);
    }

    /// Every valid encoding of a body decodes to it, stopping exactly at its end.
    #[test]
    fn chunked_encodings_round_trip(
        body in prop::collection::vec(any::<u8>(), 0..400),
        style in chunk_style(),
        next in prop::collection::vec(any::<u8>(), 0..16),
        cuts in cuts(),
        slack in 0usize..3,
    ) {
        let encoded = encode_chunked(&body, &style);
        let mut input = encoded.clone();
        input.extend_from_slice(&next);
        let want = Ok((body.clone(), encoded.len(), true));
        prop_assert_eq!(&decode(&[&input], 1024, body.len() + slack), &want);
        prop_assert_eq!(&decode(&split(&input, &cuts), 1024, body.len()), &want);
        if !body.is_empty() {
            // One byte under the limit is refused before the data is read.
            prop_assert_eq!(
                decode(&[&input], 1024, body.len() - 1),
                Err(ChunkError::TooLarge)
            );
        }
    }
}

// ---- query strings -----------------------------------------------------------------------

proptest! {
    #![proptest_config(config(2000))]

    /// `%XX` decoding never panics, and decodes what was percent-encoded.
    #[test]
    fn percent_decoding(
        raw in prop::collection::vec(any::<u8>(), 0..64),
        junk in "[%+a-f0-9&=\u{e9}]{0,32}",
    ) {
        let encoded: String = raw.iter().map(|b| format!("%{b:02X}")).collect();
        prop_assert_eq!(percent_decode(&encoded), String::from_utf8_lossy(&raw).into_owned());
        let _ = percent_decode(&junk);
        let req = Request { query: junk.clone(), ..Request::default() };
        for name in ["a", "", "%", "+"] {
            let _ = req.query_param(name);
        }
    }
}

// ---- regressions -------------------------------------------------------------------------

/// Found by `garbage_is_rejected_consistently`: an oversized head with a bad byte past the
/// limit was 400 when it arrived in one read (httparse saw the bad byte) and 431 when it
/// arrived in pieces (the limit tripped first). The parser now never looks past the limit,
/// so it is 431 either way.
#[test]
fn oversized_head_verdict_does_not_depend_on_the_reads() {
    let input: &[u8] = b"0 !!!!:!\x80:!!!!!!:!!\r";
    let whole = drive(&[input], 16, 0);
    assert_eq!(
        whole.end,
        End::Error {
            status: 431,
            code: "headers_too_large"
        }
    );
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(drive(&bytes, 16, 0).end, whole.end);
    // The same with a real request: a bad header byte after the limit.
    let mut input = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    input.extend(std::iter::repeat_n(b'a', 100));
    input.extend_from_slice(b"\x01\r\n\r\n");
    for pieces in [vec![&input[..]], input.chunks(7).collect()] {
        assert_eq!(
            drive(&pieces, 64, 0).end,
            End::Error {
                status: 431,
                code: "headers_too_large"
            }
        );
    }
    // Within the limit a bad byte is still a 400.
    assert_eq!(
        drive(&[&input], 16384, 0).end,
        End::Error {
            status: 400,
            code: "invalid_request"
        }
    );
}
