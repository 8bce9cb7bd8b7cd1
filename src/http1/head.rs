//! The head parser: the status line and header fields of an upstream's answer, the fields of a
//! client's request, and the trailer fields after a chunked body (RFC 9112 §2–§5, §7.1.2).
//!
//! It accepts and rejects exactly what `httparse` does with its default configuration (the
//! parser hyper uses), and says "incomplete" at the same points: a property test holds the two
//! to that on random and mutated heads. It is its own code for what it does while parsing:
//! it tells the common field names apart, so the client needs no name lookup afterwards. The
//! parse alone is a little slower than httparse's; with each field's `HeaderName` made it is
//! a quarter to a third faster (`cargo bench --bench head`).
//!
//! What is accepted: empty lines before the status line; `HTTP/1.0` or `HTTP/1.1`, one space,
//! three digits, then a space and a reason phrase (tab, space, visible ASCII, obs-text), or the
//! end of the line at once; field names of token characters followed at once by `:`; optional
//! whitespace around a value of tab, space, visible ASCII and obs-text; lines ending in CRLF
//! or a bare LF. Anything else is malformed, including obsolete line folding.

use std::mem::MaybeUninit;
use std::ops::Range;

use http::header::{self, HeaderName};

/// Where one field lies in the parsed bytes, and which common name it has if any. A value has
/// no whitespace around it.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    name: [u32; 2],
    value: [u32; 2],
    /// An index into [`NAMES`], or [`UNKNOWN`].
    known: u8,
}

const UNKNOWN: u8 = u8::MAX;

impl Field {
    pub fn name_range(&self) -> Range<usize> {
        self.name[0] as usize..self.name[1] as usize
    }

    pub fn value_range(&self) -> Range<usize> {
        self.value[0] as usize..self.value[1] as usize
    }

    /// Whether the field's name is the common name `known` (one of [`CONTENT_LENGTH`] and
    /// the like), in any case.
    pub fn is(&self, known: Known) -> bool {
        self.known == known.0
    }

    /// The field's name, taken from the table of common ones when it is there.
    pub fn header_name(&self, buf: &[u8]) -> Option<HeaderName> {
        match KNOWN.get(self.known as usize) {
            Some(name) => Some(name.clone()),
            None => HeaderName::from_bytes(&buf[self.name_range()]).ok(),
        }
    }
}

/// What a complete response head is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Bytes up to and including the empty line that ends the head.
    pub len: usize,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor: u8,
    /// The status code as written: any three digits.
    pub code: u16,
}

/// Why a head cannot be parsed, however much more of it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// A byte where the grammar does not allow it.
    Malformed,
    /// More complete fields than there are spans for.
    TooManyFields,
}

/// `Ok(None)`: the bytes so far are a valid beginning; more are needed.
pub type Parsed<T> = Result<Option<T>, Invalid>;

/// A table of which bytes match a pattern, made at compile time.
macro_rules! byte_set {
    ($($pattern:tt)+) => {{
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            t[b] = matches!(b as u8, $($pattern)+);
            b += 1;
        }
        t
    }};
}
pub(crate) use byte_set;

/// Bytes allowed in a field name (RFC 9110 §5.6.2 `tchar`).
#[rustfmt::skip]
static TOKEN: [bool; 256] = byte_set!(
    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9'
    | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+'
    | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
);

/// Bytes allowed in a field value or a reason phrase: tab, space, visible ASCII, obs-text.
static TEXT: [bool; 256] = byte_set!(b'\t' | b' '..=0x7e | 0x80..=0xff);

/// The next byte, or "incomplete" from the enclosing function.
macro_rules! next {
    ($buf:ident, $i:ident) => {
        match $buf.get($i) {
            Some(&b) => {
                $i += 1;
                b
            }
            None => return Ok(None),
        }
    };
}

/// Ends a line whose `\r` or `\n` was just read as `$b`.
macro_rules! line_end {
    ($buf:ident, $i:ident, $b:ident) => {
        match $b {
            b'\n' => {}
            b'\r' => {
                if next!($buf, $i) != b'\n' {
                    return Err(Invalid::Malformed);
                }
            }
            _ => return Err(Invalid::Malformed),
        }
    };
}

/// Parses the response head at the start of `buf`, recording its fields in `spans` (left
/// uninitialised by the caller: nothing is zeroed that the parse does not write) and returning
/// those it wrote.
pub fn response<'f>(buf: &[u8], spans: &'f mut [MaybeUninit<Field>]) -> Parsed<(Status, &'f [Field])> {
    // Offsets fit in a span's u32s; a head is never near that long.
    let buf = &buf[..buf.len().min(u32::MAX as usize)];
    let mut i = 0;
    loop {
        match next!(buf, i) {
            b'\n' => {}
            b'\r' => {
                if next!(buf, i) != b'\n' {
                    return Err(Invalid::Malformed);
                }
            }
            _ => {
                i -= 1;
                break;
            }
        }
    }
    let minor = match buf.get(i..i + 8) {
        Some(b"HTTP/1.1") => 1,
        Some(b"HTTP/1.0") => 0,
        Some(_) => return Err(Invalid::Malformed),
        None if b"HTTP/1.".starts_with(&buf[i..]) => return Ok(None),
        None => return Err(Invalid::Malformed),
    };
    i += 8;
    if next!(buf, i) != b' ' {
        return Err(Invalid::Malformed);
    }
    let mut code = 0u16;
    for _ in 0..3 {
        let d = next!(buf, i);
        if !d.is_ascii_digit() {
            return Err(Invalid::Malformed);
        }
        code = code * 10 + u16::from(d - b'0');
    }
    if buf.get(i) == Some(&b' ') {
        // The reason phrase is not kept.
        i = text_end(buf, i + 1);
    }
    let b = next!(buf, i);
    line_end!(buf, i, b);
    let Some((len, fields)) = fields(buf, i, spans)? else {
        return Ok(None);
    };
    Ok(Some((Status { len, minor, code }, fields)))
}

/// Parses header fields from `buf[i..]` up to and including the empty line after them,
/// recording them in `spans`. `Some((end, fields))`: the fields, which end at `buf[end]`.
#[allow(unsafe_code)]
pub fn fields<'f>(
    buf: &[u8],
    mut i: usize,
    spans: &'f mut [MaybeUninit<Field>],
) -> Parsed<(usize, &'f [Field])> {
    let buf = &buf[..buf.len().min(u32::MAX as usize)];
    let mut count = 0;
    loop {
        let b = next!(buf, i);
        if b == b'\r' || b == b'\n' {
            line_end!(buf, i, b);
            let written = &spans[..count];
            // SAFETY: the first `count` spans were written below, one by one, and
            // `MaybeUninit<Field>` has the layout of `Field`.
            let written = unsafe { &*(written as *const [MaybeUninit<Field>] as *const [Field]) };
            return Ok(Some((i, written)));
        }
        let name = i - 1;
        let Some(name_end) = name_end(buf, name) else {
            // No byte yet that could end the name: incomplete, unless a byte so far is not a
            // token byte.
            return match buf[name..].iter().all(|&b| TOKEN[b as usize]) {
                true => Ok(None),
                false => Err(Invalid::Malformed),
            };
        };
        // At least one byte, then the colon; the name's bytes are checked by matching a known
        // name, or one by one.
        if buf[name_end] != b':' || name_end == name {
            return Err(Invalid::Malformed);
        }
        let known = match known_name(&buf[name..name_end]) {
            Some(k) => k,
            None if buf[name..name_end].iter().all(|&b| TOKEN[b as usize]) => UNKNOWN,
            None => return Err(Invalid::Malformed),
        };
        i = name_end + 1;
        let Some(n) = buf[i..].iter().position(|&b| b != b' ' && b != b'\t') else {
            return Ok(None);
        };
        let value = i + n;
        i = text_end(buf, value);
        let mut value_end = i;
        while value_end > value && matches!(buf[value_end - 1], b' ' | b'\t') {
            value_end -= 1;
        }
        let b = next!(buf, i);
        line_end!(buf, i, b);
        let Some(span) = spans.get_mut(count) else {
            return Err(Invalid::TooManyFields);
        };
        span.write(Field {
            name: [name as u32, name_end as u32],
            value: [value as u32, value_end as u32],
            known,
        });
        count += 1;
    }
}

/// Field names common in requests and responses, lowercase, grouped by length: what
/// [`known_name`] finds without looking at one byte at a time. Letters and '-' only.
const NAMES: [&[u8]; 40] = [
    b"te",
    b"age",
    b"via",
    b"date",
    b"etag",
    b"vary",
    b"host",
    b"server",
    b"accept",
    b"cookie",
    b"origin",
    b"expect",
    b"expires",
    b"referer",
    b"upgrade",
    b"location",
    b"connection",
    b"keep-alive",
    b"set-cookie",
    b"user-agent",
    b"content-type",
    b"x-request-id",
    b"accept-ranges",
    b"cache-control",
    b"last-modified",
    b"authorization",
    b"if-none-match",
    b"content-length",
    b"x-frame-options",
    b"referrer-policy",
    b"accept-encoding",
    b"accept-language",
    b"x-forwarded-for",
    b"content-encoding",
    b"transfer-encoding",
    b"if-modified-since",
    b"x-content-type-options",
    b"content-security-policy",
    b"strict-transport-security",
    b"access-control-allow-origin",
];

/// The header name of each of [`NAMES`].
static KNOWN: [HeaderName; NAMES.len()] = [
    header::TE,
    header::AGE,
    header::VIA,
    header::DATE,
    header::ETAG,
    header::VARY,
    header::HOST,
    header::SERVER,
    header::ACCEPT,
    header::COOKIE,
    header::ORIGIN,
    header::EXPECT,
    header::EXPIRES,
    header::REFERER,
    header::UPGRADE,
    header::LOCATION,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::SET_COOKIE,
    header::USER_AGENT,
    header::CONTENT_TYPE,
    HeaderName::from_static("x-request-id"),
    header::ACCEPT_RANGES,
    header::CACHE_CONTROL,
    header::LAST_MODIFIED,
    header::AUTHORIZATION,
    header::IF_NONE_MATCH,
    header::CONTENT_LENGTH,
    header::X_FRAME_OPTIONS,
    header::REFERRER_POLICY,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
    HeaderName::from_static("x-forwarded-for"),
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::IF_MODIFIED_SINCE,
    header::X_CONTENT_TYPE_OPTIONS,
    header::CONTENT_SECURITY_POLICY,
    header::STRICT_TRANSPORT_SECURITY,
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
];

/// One of the common names, for [`Field::is`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known(u8);

pub const CONNECTION: Known = Known(index_of(b"connection"));
pub const EXPECT: Known = Known(index_of(b"expect"));
pub const CONTENT_LENGTH: Known = Known(index_of(b"content-length"));
pub const KEEP_ALIVE: Known = Known(index_of(b"keep-alive"));
pub const TRANSFER_ENCODING: Known = Known(index_of(b"transfer-encoding"));
pub const UPGRADE: Known = Known(index_of(b"upgrade"));

/// Where `name` is in [`NAMES`]; not building if it is not there.
const fn index_of(name: &[u8]) -> u8 {
    let mut i = 0;
    'names: while i < NAMES.len() {
        if NAMES[i].len() == name.len() {
            let mut k = 0;
            while k < name.len() {
                if NAMES[i][k] != name[k] {
                    i += 1;
                    continue 'names;
                }
                k += 1;
            }
            return i as u8;
        }
        i += 1;
    }
    panic!("not one of NAMES")
}

/// The longest of [`NAMES`].
const LONGEST: usize = {
    let (mut i, mut most) = (0, 0);
    while i < NAMES.len() {
        if NAMES[i].len() > most {
            most = NAMES[i].len();
        }
        i += 1;
    }
    most
};

/// `BY_LENGTH[n]`: the range of [`NAMES`] that are `n` bytes long.
static BY_LENGTH: [(u8, u8); LONGEST + 1] = {
    let mut by = [(0u8, 0u8); LONGEST + 1];
    let mut i = 0;
    while i < NAMES.len() {
        let n = NAMES[i].len();
        if by[n].1 == 0 {
            by[n] = (i as u8, i as u8);
        }
        assert!(by[n].1 as usize == i, "NAMES must be grouped by length");
        by[n].1 += 1;
        let mut k = 0;
        while k < n {
            assert!(
                matches!(NAMES[i][k], b'a'..=b'z' | b'-'),
                "NAMES are lowercase letters and '-'"
            );
            k += 1;
        }
        i += 1;
    }
    by
};

/// Which of [`NAMES`] `raw` is, in any case.
#[inline]
fn known_name(raw: &[u8]) -> Option<u8> {
    let (from, to) = *BY_LENGTH.get(raw.len())?;
    (from..to).find(|&k| same_name(raw, NAMES[k as usize]))
}

/// Whether `raw` is `name` (lowercase letters and '-') in any case. A letter of `name` matches
/// `raw`'s byte with the case bit (0x20) set, which only the same letter in either case does;
/// a '-' (no 0x40 bit) must match exactly. Eight or four bytes at a time, the last load
/// overlapping the one before.
fn same_name(raw: &[u8], name: &[u8]) -> bool {
    debug_assert_eq!(raw.len(), name.len());
    let len = name.len();
    if len >= 8 {
        let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("eight bytes"));
        let eq = |at: usize| {
            let n = word(name, at);
            word(raw, at) | ((n & u64::from_ne_bytes([0x40; 8])) >> 1) == n
        };
        let mut at = 0;
        while at + 8 < len {
            if !eq(at) {
                return false;
            }
            at += 8;
        }
        eq(len - 8)
    } else if len >= 4 {
        let word = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("four bytes"));
        let eq = |at: usize| {
            let n = word(name, at);
            word(raw, at) | ((n & u32::from_ne_bytes([0x40; 4])) >> 1) == n
        };
        eq(0) && eq(len - 4)
    } else {
        raw.iter().zip(name).all(|(&r, &n)| r | ((n & 0x40) >> 1) == n)
    }
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);

/// The high bit of each of the eight bytes of `x` (little-endian) that is below `n` (at most
/// 0x80). Only the lowest mark is exact: a borrow carries only into bytes above one already
/// marked, so `trailing_zeros() / 8` finds the first such byte.
fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH
}

/// The high bit of each byte of `x` equal to `b`, exact for the lowest, as with [`below`].
fn equal(x: u64, b: u8) -> u64 {
    below(x ^ (ONES * u64::from(b)), 1)
}

/// Where the field name that starts at `buf[at]` ends: the first byte at or after `at` that is
/// a colon, a control byte or a space, which end a name, rightly or not. The other bytes a name
/// may not have (delimiters like `(`, DEL, bytes from 0x80) are left for the caller to find.
/// `None`: there is no such byte yet.
fn name_end(buf: &[u8], mut i: usize) -> Option<usize> {
    while let Some(chunk) = buf.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let stop = below(x, 0x21) | equal(x, b':');
        if stop != 0 {
            return Some(i + (stop.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    buf[i..]
        .iter()
        .position(|&b| b == b':' || b < 0x21)
        .map(|n| i + n)
}

/// Where the run of [`TEXT`] bytes from `buf[i]` ends: the index of the first other byte, or
/// `buf.len()`. Eight bytes at a time, as the bytes to stop at are all below 0x20 or 0x7f.
fn text_end(buf: &[u8], mut i: usize) -> usize {
    loop {
        while let Some(chunk) = buf.get(i..i + 8) {
            let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            let stop = below(x, 0x20) | equal(x, 0x7f);
            if stop != 0 {
                i += (stop.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        // A tab (the one control byte allowed), or the last few bytes one by one.
        match buf.get(i) {
            Some(&b) if TEXT[b as usize] => i += 1,
            _ => return i,
        }
    }
}

#[cfg(test)]
mod tests;
