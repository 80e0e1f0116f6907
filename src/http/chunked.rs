//! Incremental `Transfer-Encoding: chunked` decoder (sans-IO).
//!
//! Chunk extensions are skipped, trailers are read and dropped. A bare LF is accepted as a
//! line end (RFC 9112 §2.2). Size lines are limited to [`MAX_LINE`] bytes and the trailer
//! section to the head limit, so a hostile client cannot make the decoder spin without end
//! or buffer anything beyond the body limit.

/// Longest accepted chunk-size line (size, whitespace and extensions).
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkError {
    /// Bad chunk syntax.
    Invalid(&'static str),
    /// The de-chunked body would exceed the limit.
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of the chunk size.
    Size,
    /// After the digits: optional whitespace, then `;ext` or the line end.
    SizeWs,
    /// Inside chunk extensions: skip to the line end.
    Ext,
    /// Saw CR on the size line; LF must follow.
    SizeLf,
    /// Copying chunk data; `remaining` bytes of this chunk are still to come.
    Data,
    /// After chunk data: CR (or bare LF) must follow.
    DataCr,
    /// After chunk data and CR: LF must follow.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Saw CR inside a trailer line; LF must follow.
    TrailerLf,
    /// Saw CR on the final empty line; LF must follow.
    EndLf,
    /// The whole chunked body has been read.
    Done,
}

#[derive(Debug, Clone)]
pub(crate) struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u32,
    remaining: u64,
    line_len: usize,
    trailer_len: usize,
    max_trailer: usize,
}

impl ChunkedDecoder {
    /// A decoder whose trailer section may be at most `max_trailer` bytes.
    pub(crate) fn new(max_trailer: usize) -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            remaining: 0,
            line_len: 0,
            trailer_len: 0,
            max_trailer,
        }
    }

    /// Decodes from `input`, appending data to `body` (never beyond `max_body` bytes in all).
    /// Returns how many input bytes were consumed and whether the body is complete; after
    /// completion nothing more is consumed (the rest belongs to the next request).
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        max_body: usize,
    ) -> Result<(usize, bool), ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Done {
                break;
            }
            if self.state == State::Data {
                let avail = (input.len() - i) as u64;
                let take = self.remaining.min(avail) as usize;
                body.extend_from_slice(&input[i..i + take]);
                i += take;
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.step(b, body.len(), max_body)?;
        }
        Ok((i, self.state == State::Done))
    }

    fn step(&mut self, b: u8, body_len: usize, max_body: usize) -> Result<(), ChunkError> {
        match self.state {
            State::Size | State::SizeWs | State::Ext | State::SizeLf => {
                self.line_len += 1;
                if self.line_len > MAX_LINE {
                    return Err(ChunkError::Invalid("chunk size line too long"));
                }
            }
            State::TrailerStart | State::TrailerLine | State::TrailerLf | State::EndLf => {
                self.trailer_len += 1;
                if self.trailer_len > self.max_trailer {
                    return Err(ChunkError::Invalid("chunked trailer section too long"));
                }
            }
            _ => {}
        }
        match (self.state, b) {
            (State::Size, _) if hex(b).is_some() => {
                if self.digits >= 16 {
                    return Err(ChunkError::Invalid("chunk size too large"));
                }
                self.size = self.size << 4 | u64::from(hex(b).unwrap_or(0));
                self.digits += 1;
            }
            (State::Size, _) if self.digits == 0 => {
                return Err(ChunkError::Invalid("missing chunk size"));
            }
            (State::Size | State::SizeWs, b' ' | b'\t') => self.state = State::SizeWs,
            (State::Size | State::SizeWs, b';') => self.state = State::Ext,
            (State::Size | State::SizeWs | State::Ext, b'\r') => self.state = State::SizeLf,
            (State::Size | State::SizeWs | State::Ext | State::SizeLf, b'\n') => {
                self.end_size_line(body_len, max_body)?;
            }
            (State::Ext, _) => {}
            (State::DataCr, b'\r') => self.state = State::DataLf,
            (State::DataCr | State::DataLf, b'\n') => self.state = State::Size,
            (State::TrailerStart, b'\r') => self.state = State::EndLf,
            (State::TrailerStart | State::EndLf, b'\n') => self.state = State::Done,
            (State::TrailerLine, b'\r') => self.state = State::TrailerLf,
            (State::TrailerLine | State::TrailerLf, b'\n') => {
                self.state = State::TrailerStart;
            }
            (State::TrailerStart | State::TrailerLine, _) => self.state = State::TrailerLine,
            (State::DataCr | State::DataLf, _) => {
                return Err(ChunkError::Invalid("missing CRLF after chunk data"));
            }
            (State::EndLf | State::TrailerLf | State::SizeLf, _) => {
                return Err(ChunkError::Invalid("CR without LF in chunked body"));
            }
            _ => return Err(ChunkError::Invalid("invalid chunk size line")),
        }
        Ok(())
    }

    fn end_size_line(&mut self, body_len: usize, max_body: usize) -> Result<(), ChunkError> {
        let allowed = max_body.saturating_sub(body_len) as u64;
        if self.size > allowed {
            return Err(ChunkError::TooLarge);
        }
        self.remaining = self.size;
        self.state = if self.size == 0 {
            State::TrailerStart
        } else {
            State::Data
        };
        self.size = 0;
        self.digits = 0;
        self.line_len = 0;
        Ok(())
    }
}

fn hex(b: u8) -> Option<u8> {
    super::hex_val(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    /// Decodes `input` fed in the given pieces; returns (body, bytes consumed) or the error.
    fn decode_split(
        pieces: &[&[u8]],
        max_body: usize,
    ) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut dec = ChunkedDecoder::new(1024);
        let mut body = Vec::new();
        let mut total = 0;
        let mut done = false;
        for piece in pieces {
            let (n, d) = dec.decode(piece, &mut body, max_body)?;
            total += n;
            done = d;
            if d {
                break;
            }
            assert_eq!(n, piece.len(), "an incomplete body consumes all input");
        }
        Ok((body, total, done))
    }

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        decode_split(&[input], MAX)
    }

    const SAMPLE: &[u8] = b"5\r\nhello\r\n7;name=\"v;x\";q\r\n, world\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0;end\r\nx-trailer: 1\r\nother: 2\r\n\r\nNEXT";

    #[test]
    fn decodes_with_extensions_and_trailers() {
        let (body, n, done) = decode_all(SAMPLE).unwrap();
        assert!(done);
        assert_eq!(body, b"hello, worldabcdefghijklmnopqrstuvwxyz");
        assert_eq!(&SAMPLE[n..], b"NEXT");
    }

    #[test]
    fn every_split_point_gives_the_same_result() {
        let (want, want_n, _) = decode_all(SAMPLE).unwrap();
        for cut in 0..=SAMPLE.len() {
            let (body, n, done) = decode_split(&[&SAMPLE[..cut], &SAMPLE[cut..]], MAX).unwrap();
            assert!(done, "cut at {cut}");
            assert_eq!(body, want, "cut at {cut}");
            assert_eq!(n, want_n, "cut at {cut}");
        }
        // And byte by byte.
        let pieces: Vec<&[u8]> = SAMPLE.chunks(1).collect();
        let (body, n, done) = decode_split(&pieces, MAX).unwrap();
        assert!(done);
        assert_eq!((body, n), (want, want_n));
    }

    #[test]
    fn minimal_and_lenient_forms() {
        assert_eq!(decode_all(b"0\r\n\r\n").unwrap(), (vec![], 5, true));
        assert_eq!(decode_all(b"0\n\n").unwrap(), (vec![], 3, true));
        assert_eq!(
            decode_all(b"3\nabc\n0\n\n").unwrap(),
            (b"abc".to_vec(), 9, true)
        );
        assert_eq!(
            decode_all(b"3 \t;a=b\r\nabc\r\n0  \r\n\r\n").unwrap().0,
            b"abc"
        );
        assert_eq!(
            decode_all(b"00000003\r\nabc\r\n0\r\n\r\n").unwrap().0,
            b"abc"
        );
        assert_eq!(
            decode_all(b"a\r\n0123456789\r\n0\r\n\r\n").unwrap().0,
            b"0123456789"
        );
    }

    #[test]
    fn incomplete_is_not_done() {
        for input in [
            &b""[..],
            b"5",
            b"5\r\n",
            b"5\r\nhel",
            b"5\r\nhello\r\n",
            b"0\r\n",
            b"0\r\nx: y\r\n",
        ] {
            let (_, n, done) = decode_all(input).unwrap();
            assert!(!done, "{input:?}");
            assert_eq!(n, input.len());
        }
    }

    #[test]
    fn rejects_bad_syntax() {
        let bad: &[&[u8]] = &[
            b"\r\n",
            b"x\r\n",
            b";ext\r\n",
            b" 5\r\n",
            b"-5\r\n",
            b"5 5\r\n",
            b"5\rX",
            b"5\r\nhelloX",
            b"5\r\nhello\rX",
            b"0\r\n\rX",
            b"0\r\nx: 1\rX",
            b"12345678901234567\r\n",
        ];
        for input in bad {
            match decode_all(input) {
                Err(ChunkError::Invalid(_)) => {}
                other => panic!("{input:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn size_line_and_trailer_are_bounded() {
        let mut long = b"5;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE));
        assert!(matches!(decode_all(&long), Err(ChunkError::Invalid(_))));
        let mut trailer = b"0\r\n".to_vec();
        trailer.extend(std::iter::repeat_n(b'a', 2000));
        assert!(matches!(decode_all(&trailer), Err(ChunkError::Invalid(_))));
    }

    #[test]
    fn enforces_body_limit_before_reading_data() {
        assert_eq!(decode_split(&[b"a\r\n"], 9), Err(ChunkError::TooLarge));
        assert_eq!(
            decode_split(&[b"5\r\nhello\r\n5\r\n"], 9),
            Err(ChunkError::TooLarge)
        );
        assert!(
            decode_split(&[b"5\r\nhello\r\n4\r\nabcd\r\n0\r\n\r\n"], 9)
                .unwrap()
                .2
        );
        assert_eq!(
            decode_split(&[b"ffffffffffffffff\r\n"], MAX),
            Err(ChunkError::TooLarge)
        );
    }
}
