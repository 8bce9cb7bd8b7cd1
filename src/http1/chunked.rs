//! The chunked transfer coding (RFC 9112 §7.1), both ways: the decoder reads request bodies on
//! the server side and response bodies on the upstream side; the encoder's pieces write them.
//!
//! The decoder is strict where leniency has let requests be smuggled between two parsers: a
//! chunk size is hex digits from the start of its line (no leading whitespace, no sign, at most
//! 16 past any leading zeros), every line ends in CRLF (a bare LF or CR is an error), chunk data is followed by
//! exactly CRLF, and an extension holds no control byte but tab. Extensions are skipped.
//! Trailer fields are parsed as header fields are.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::head;

/// The longest chunk size line accepted, extensions included.
const MAX_SIZE_LINE: usize = 4096;
/// The most trailer fields, and the most bytes they may take.
const MAX_TRAILER_FIELDS: usize = 100;
pub const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// The last chunk with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Where the decoder is in a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decoder {
    #[default]
    Size,
    /// Bytes of chunk data still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
    Done,
}

/// A piece of a decoded body.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The body ended, with its trailer fields if it had any.
    End(Option<HeaderMap>),
}

/// Why a chunked body cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub &'static str);

impl Decoder {
    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Decodes what `buf` holds, taking what it uses off the front. `Ok(None)`: more bytes are
    /// needed. Data comes out as it arrives, as slices of `buf` (no copy).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, Invalid> {
        loop {
            match *self {
                Decoder::Size => {
                    let Some(size) = size_line(buf)? else {
                        return Ok(None);
                    };
                    *self = if size == 0 {
                        Decoder::Trailers
                    } else {
                        Decoder::Data(size)
                    };
                }
                Decoder::Data(rest) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = rest.min(buf.len() as u64) as usize;
                    *self = match rest - n as u64 {
                        0 => Decoder::DataEnd,
                        left => Decoder::Data(left),
                    };
                    return Ok(Some(Decoded::Data(buf.split_to(n).freeze())));
                }
                Decoder::DataEnd => {
                    match buf.get(..2) {
                        None if buf.first().is_none_or(|&b| b == b'\r') => return Ok(None),
                        Some(b"\r\n") => buf.advance(2),
                        _ => return Err(Invalid("chunk data not followed by CRLF")),
                    }
                    *self = Decoder::Size;
                }
                Decoder::Trailers => {
                    let trailers = match trailers(buf)? {
                        Some(t) => t,
                        None => return Ok(None),
                    };
                    *self = Decoder::Done;
                    return Ok(Some(Decoded::End(trailers)));
                }
                Decoder::Done => return Ok(None),
            }
        }
    }
}

/// Reads a chunk size line off the front of `buf`: its size, or `None` if the line is not all
/// there yet.
fn size_line(buf: &mut BytesMut) -> Result<Option<u64>, Invalid> {
    let mut size: u64 = 0;
    let mut i = 0;
    // Leading zeros are digits like any other (`1*HEXDIG`); past them, a size of more than
    // 16 digits is one no body can have.
    let mut significant = 0;
    while let Some(&b) = buf.get(i) {
        let Some(d) = (b as char).to_digit(16) else {
            break;
        };
        if significant > 0 || d > 0 {
            if significant == 16 {
                return Err(Invalid("chunk size too large"));
            }
            significant += 1;
        }
        size = size << 4 | u64::from(d);
        i += 1;
    }
    if i == buf.len() {
        return Ok(None);
    }
    if i == 0 {
        return Err(Invalid("invalid chunk size"));
    }
    // Whitespace, then an extension or the end of the line.
    while matches!(buf.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    match buf.get(i) {
        None => return more(buf),
        Some(b';') => {
            while let Some(&b) = buf.get(i) {
                if b == b'\r' {
                    break;
                }
                if b != b'\t' && (b < 0x20 || b == 0x7f) {
                    return Err(Invalid("invalid byte in a chunk extension"));
                }
                i += 1;
            }
        }
        Some(b'\r') => {}
        Some(_) => return Err(Invalid("invalid chunk size line")),
    }
    match buf.get(i..i + 2) {
        Some(b"\r\n") => {}
        None if i + 1 >= buf.len() => return more(buf),
        _ => return Err(Invalid("chunk size line not ended by CRLF")),
    }
    buf.advance(i + 2);
    Ok(Some(size))
}

/// "More bytes needed", unless the line is already longer than any size line may be.
fn more<T>(buf: &[u8]) -> Result<Option<T>, Invalid> {
    match buf.len() > MAX_SIZE_LINE {
        true => Err(Invalid("chunk size line too long")),
        false => Ok(None),
    }
}

/// Reads the trailer section (fields, then an empty line) off the front of `buf`.
#[allow(clippy::option_option)]
fn trailers(buf: &mut BytesMut) -> Result<Option<Option<HeaderMap>>, Invalid> {
    let mut spans = [const { MaybeUninit::uninit() }; MAX_TRAILER_FIELDS];
    let (len, fields) = match head::fields(buf, 0, &mut spans) {
        Ok(Some(parsed)) => parsed,
        Ok(None) if buf.len() > MAX_TRAILER_BYTES => return Err(Invalid("trailers too large")),
        Ok(None) => return Ok(None),
        Err(head::Invalid::TooManyFields) => return Err(Invalid("too many trailer fields")),
        Err(head::Invalid::Malformed) => return Err(Invalid("malformed trailers")),
    };
    if len > MAX_TRAILER_BYTES {
        return Err(Invalid("trailers too large"));
    }
    let map = (!fields.is_empty()).then(|| {
        let mut map = HeaderMap::with_capacity(fields.len());
        for field in fields {
            if let (Some(n), Ok(v)) = (
                field.header_name(buf),
                HeaderValue::from_bytes(&buf[field.value_range()]),
            ) {
                map.append(n, v);
            }
        }
        map
    });
    buf.advance(len);
    Ok(Some(map))
}

/// A chunk's size line, `{len:X}\r\n` (upper case, as hyper writes it), written into `buf`.
pub fn size_line_of(buf: &mut [u8; 18], mut len: usize) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut at = 16;
    buf[16..].copy_from_slice(b"\r\n");
    loop {
        at -= 1;
        buf[at] = HEX[len & 0xf];
        len >>= 4;
        if len == 0 {
            break;
        }
    }
    &buf[at..]
}

/// Appends the last chunk with these trailer fields.
pub fn put_last_chunk<'a>(
    out: &mut Vec<u8>,
    trailers: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        super::put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn size_lines_are_written_in_hex() {
        let mut buf = [0u8; 18];
        assert_eq!(size_line_of(&mut buf, 0), b"0\r\n");
        assert_eq!(size_line_of(&mut buf, 255), b"FF\r\n");
        assert_eq!(size_line_of(&mut buf, 0x10000), b"10000\r\n");
        assert_eq!(size_line_of(&mut buf, usize::MAX), b"FFFFFFFFFFFFFFFF\r\n");
    }

    /// A decoded body, its trailers, and the bytes left after it.
    type Whole = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

    /// Decodes `wire` fed `step` bytes at a time.
    fn decode(wire: &[u8], step: usize) -> Result<Whole, Invalid> {
        let mut d = Decoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Some(Decoded::Data(data)) => {
                    assert!(!data.is_empty());
                    body.extend_from_slice(&data)
                }
                Some(Decoded::End(t)) => {
                    let rest = buf.iter().copied().chain(wire[fed..].iter().copied()).collect();
                    return Ok((body, t, rest));
                }
                None if fed == wire.len() => return Err(Invalid("incomplete")),
                None => {
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunks_decode_across_reads_with_extensions_and_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n6 ; a=\"b c\"\r\n world\r\n000\r\nx-sum: 42\r\n\r\nNEXT";
        for step in [1, 3, wire.len()] {
            let (body, trailers, rest) = decode(wire, step).unwrap();
            assert_eq!(body, b"hello world", "step {step}");
            assert_eq!(trailers.unwrap()["x-sum"], "42");
            assert_eq!(rest, b"NEXT", "the next message is left alone");
        }
        let (body, trailers, rest) = decode(b"0\r\n\r\n", 1).unwrap();
        assert!(body.is_empty() && trailers.is_none() && rest.is_empty());
    }

    #[test]
    fn lenient_framings_are_errors() {
        for wire in [
            &b"zz\r\n"[..],
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"0\r\nbad field\r\n\r\n",
        ] {
            for step in [1, wire.len()] {
                assert!(
                    matches!(decode(wire, step), Err(e) if e.0 != "incomplete"),
                    "{:?} step {step}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
        let long = format!("5;{}\r\n", "x".repeat(MAX_SIZE_LINE));
        assert!(decode(long.as_bytes(), 64).is_err());
        // Leading zeros are allowed, however many (HTTPWookiee's truncation test).
        let zeros = format!("{}5\r\nhello\r\n0\r\n\r\n", "0".repeat(40));
        assert_eq!(decode(zeros.as_bytes(), 7).unwrap().0, b"hello");
    }

    /// A body as chunks of the given sizes, with trailers when asked.
    fn encode(body: &[u8], sizes: &[usize], trailer: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        for &n in sizes {
            let n = n.min(body.len() - at);
            if n == 0 {
                continue;
            }
            let mut line = [0u8; 18];
            out.extend_from_slice(size_line_of(&mut line, n));
            out.extend_from_slice(&body[at..at + n]);
            out.extend_from_slice(b"\r\n");
            at += n;
        }
        if at < body.len() {
            let mut line = [0u8; 18];
            out.extend_from_slice(size_line_of(&mut line, body.len() - at));
            out.extend_from_slice(&body[at..]);
            out.extend_from_slice(b"\r\n");
        }
        let mut t = HeaderMap::new();
        if trailer {
            t.insert("x-t", HeaderValue::from_static("v"));
        }
        put_last_chunk(&mut out, &t);
        out
    }

    /// httparse's reading of a chunk size line, which hyper does not use but many servers'
    /// parsers resemble: `Some(size, length of the line)`.
    fn httparse_size(line: &[u8]) -> Option<(u64, usize)> {
        match httparse::parse_chunk_size(line) {
            Ok(httparse::Status::Complete((len, size))) => Some((size, len)),
            _ => None,
        }
    }

    /// A size line this decoder takes, httparse takes alike (httparse refuses more than 16
    /// digits even when they are leading zeros, which RFC 9112's `1*HEXDIG` allows).
    fn agrees_on_size_line(line: &[u8]) -> Result<(), TestCaseError> {
        let mut buf = BytesMut::from(line);
        if let Ok(Some(size)) = size_line(&mut buf) {
            let used = line.len() - buf.len();
            let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            if digits <= 16 {
                prop_assert_eq!(httparse_size(line), Some((size, used)));
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn what_is_encoded_decodes_whole_however_it_arrives(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            sizes in proptest::collection::vec(1usize..200, 0..8),
            trailer in any::<bool>(),
            step in 1usize..64,
        ) {
            let wire = encode(&body, &sizes, trailer);
            let (got, trailers, rest) = decode(&wire, step).unwrap();
            prop_assert_eq!(got, body);
            prop_assert_eq!(trailers.is_some(), trailer);
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn a_size_line_taken_is_one_httparse_takes_alike(
            line in proptest::collection::vec(
                proptest::sample::select(b"0123456789abcdefABCDEFxz; \t\r\n=\"\x00".to_vec()), 0..24),
        ) {
            agrees_on_size_line(&line)?;
        }

        #[test]
        fn mutated_bodies_never_panic_and_agree_however_they_arrive(
            body in proptest::collection::vec(any::<u8>(), 0..100),
            sizes in proptest::collection::vec(1usize..40, 0..4),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            step in 1usize..16,
        ) {
            let mut wire = encode(&body, &sizes, true);
            let at = at.index(wire.len());
            wire[at] = byte;
            let whole = decode(&wire, wire.len());
            let stepped = decode(&wire, step);
            match (whole, stepped) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::http1::long_cases()))]

        #[test]
        #[ignore = "a long run, by hand"]
        fn long_run_chunked_bodies(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            sizes in proptest::collection::vec(1usize..100, 0..6),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            step in 1usize..32,
            line in proptest::collection::vec(
                proptest::sample::select(b"0123456789abcdefABCDEFxz; \t\r\n=\"\x00".to_vec()), 0..24),
        ) {
            let wire = encode(&body, &sizes, true);
            let (got, _, rest) = decode(&wire, step).unwrap();
            prop_assert_eq!(got, body);
            prop_assert!(rest.is_empty());
            let mut mutated = wire;
            let at = at.index(mutated.len());
            mutated[at] = byte;
            match (decode(&mutated, mutated.len()), decode(&mutated, step)) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
            }
            agrees_on_size_line(&line)?;
        }
    }
}
