//! HTTP/1 framing, in one place for both sides of the proxy (shaped like pingora's
//! `protocols/http/v1`): the server path that reads clients' requests ([`crate::proxy::h1`])
//! and the upstream client ([`crate::upstream::client`]) share every piece of it.
//!
//! - [`head`]: the head parser (status line, request fields, header and trailer fields);
//! - [`tokens`]: the one reader of `Connection`, `Transfer-Encoding`, `TE` and `Trailer` lists;
//! - [`framing`]: how a body is delimited, decided once from the fields that frame it;
//! - [`chunked`]: the chunked coding, decoder and encoder.
//!
//! The framing of a message the proxy writes is never taken from fields it passes on: the
//! writer leaves out every `Content-Length` and `Transfer-Encoding` it is given and writes its
//! own from the body it is about to send, so no field filter elsewhere (a `Connection` option,
//! a header setting) can make the bytes and their framing disagree.

pub mod chunked;
pub mod framing;
pub mod head;
pub mod tokens;

pub use framing::{parse_length, Framer, Framing, Refusal};

/// Cases for the long property runs of the parsers: ignored tests, run by hand with
/// `cargo test --release -- --ignored long_run` (`LONG_CASES`, default a million).
#[cfg(test)]
pub(crate) fn long_cases() -> u32 {
    std::env::var("LONG_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// Whether a field name (lowercase, as written out) is one the writer of a message decides
/// itself: `content-length` or `transfer-encoding`.
#[inline]
pub fn is_framing(name: &[u8]) -> bool {
    name == b"content-length" || name == b"transfer-encoding"
}

/// Appends `name: value\r\n`, with one capacity check for the line.
#[inline]
#[allow(unsafe_code)]
pub fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let len = name.len() + value.len() + 4;
    out.reserve(len);
    let at = out.len();
    // SAFETY: `reserve` made room for `len` more bytes after `at`; the four copies below
    // write exactly those bytes, from slices that cannot overlap the vector's spare room.
    unsafe {
        let dst = out.as_mut_ptr().add(at);
        std::ptr::copy_nonoverlapping(name.as_ptr(), dst, name.len());
        std::ptr::copy_nonoverlapping(b": ".as_ptr(), dst.add(name.len()), 2);
        std::ptr::copy_nonoverlapping(value.as_ptr(), dst.add(name.len() + 2), value.len());
        std::ptr::copy_nonoverlapping(b"\r\n".as_ptr(), dst.add(len - 2), 2);
        out.set_len(at + len);
    }
}

/// A field value that [`head::fields`] accepted, as a `HeaderValue` without checking it again
/// (the request path's and the upstream client's parsers both take values this way).
#[allow(unsafe_code)]
pub fn accepted_value(bytes: bytes::Bytes) -> http::HeaderValue {
    debug_assert!(http::HeaderValue::from_maybe_shared(bytes.clone()).is_ok());
    // SAFETY: the parser accepted the value, and what it accepts in a value (HTAB, SP,
    // visible ASCII, obs-text) is what `HeaderValue` allows.
    unsafe { http::HeaderValue::from_maybe_shared_unchecked(bytes) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_written_as_lines() {
        let mut out = Vec::with_capacity(4);
        out.extend_from_slice(b"GET");
        put_field(&mut out, b"x-a", b"1");
        put_field(&mut out, b"x-empty", b"");
        let long = vec![b'v'; 5000];
        put_field(&mut out, b"x-long", &long);
        let mut want = b"GETx-a: 1\r\nx-empty: \r\nx-long: ".to_vec();
        want.extend_from_slice(&long);
        want.extend_from_slice(b"\r\n");
        assert_eq!(out, want);
    }
}
