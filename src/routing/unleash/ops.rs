//! The value types of Unleash's constraint operators, parsed the way Unleash's Node SDK (the
//! reference the client specification is written against) parses them: numbers as JavaScript's
//! `Number()`, dates as `new Date()` on ISO 8601 text, versions as node-semver (strict), and
//! addresses as IPv4/IPv6 with an optional prefix length.

use std::cmp::Ordering;
use std::net::IpAddr;

/// A number as Unleash's Node and Python SDKs read one: surrounding white space ignored
/// (`" 5"` is 5, as `Number()` and `float()` read it), decimal and exponent syntax, and
/// `inf`/`infinity` (any case, signed) as Python's `float()` reads them. Empty (or blank) text
/// is not a number (for `Number()` it is 0: an empty header matching `NUM_EQ 0` would surprise),
/// and neither is NaN, which no comparison holds for. Not read: JavaScript's hex/binary/octal
/// literals and Python's digit underscores, which the two SDKs disagree on.
pub fn number(text: &str) -> Option<f64> {
    let t = text.trim();
    if t.is_empty() || t.contains('_') {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| !v.is_nan())
}

/// An ISO 8601 date-time (`2024-01-31T12:00:00.000Z`, an offset such as `+02:00`, or a date
/// alone, which JavaScript reads as UTC midnight) as milliseconds since the Unix epoch.
pub fn date_ms(text: &str) -> Option<i64> {
    let t = text.trim().as_bytes();
    let num = |s: &[u8]| -> Option<i64> {
        (!s.is_empty() && s.iter().all(u8::is_ascii_digit))
            .then(|| s.iter().fold(0i64, |a, &d| a * 10 + i64::from(d - b'0')))
    };
    if t.len() < 10 || t[4] != b'-' || t[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(&t[0..4])?, num(&t[5..7])?, num(&t[8..10])?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    let mut ms = days_from_civil(y, mo, d) * 86_400_000;
    let rest = &t[10..];
    if rest.is_empty() {
        return Some(ms);
    }
    if rest[0] != b'T' && rest[0] != b't' && rest[0] != b' ' {
        return None;
    }
    let rest = &rest[1..];
    if rest.len() < 5 || rest[2] != b':' {
        return None;
    }
    let (h, mi) = (num(&rest[0..2])?, num(&rest[3..5])?);
    let mut i = 5;
    let mut s = 0;
    if rest.get(i) == Some(&b':') {
        s = num(rest.get(i + 1..i + 3)?)?;
        i += 3;
    }
    let mut frac = 0;
    if rest.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while rest.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        let digits = &rest[start..end];
        if digits.is_empty() {
            return None;
        }
        let mut f = num(&digits[..digits.len().min(3)])?;
        for _ in digits.len()..3 {
            f *= 10;
        }
        frac = f;
        i = end;
    }
    if h > 24 || mi > 59 || s > 59 || (h == 24 && (mi, s, frac) != (0, 0, 0)) {
        return None;
    }
    ms += ((h * 60 + mi) * 60 + s) * 1000 + frac;
    let zone = &rest[i..];
    let offset_min = match zone {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), hh @ ..] => {
            let (oh, om) = match hh {
                [a, b, b':', c, d] | [a, b, c, d] => (num(&[*a, *b])?, num(&[*c, *d])?),
                [a, b] => (num(&[*a, *b])?, 0),
                _ => return None,
            };
            let m = oh * 60 + om;
            if *sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    Some(ms - offset_min * 60_000)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A semantic version, read strictly (no `v` prefix, as the client specification requires;
/// build metadata ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    core: [u64; 3],
    pre: Vec<Ident>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ident {
    Num(u64),
    Alpha(String),
}

/// node-semver's MAX_SAFE_INTEGER bound on each number.
const MAX_SAFE: u64 = (1 << 53) - 1;

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let t = text.trim();
        let (t, _build) = match t.split_once('+') {
            Some((a, b)) => {
                if b.is_empty()
                    || !b
                        .split('.')
                        .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'))
                {
                    return None;
                }
                (a, Some(b))
            }
            None => (t, None),
        };
        let (main, pre) = match t.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (t, None),
        };
        let numeric = |p: &str| -> Option<u64> {
            if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) || (p.len() > 1 && p.starts_with('0')) {
                return None;
            }
            p.parse().ok().filter(|&v| v <= MAX_SAFE)
        };
        let mut parts = main.split('.');
        let core = [
            numeric(parts.next()?)?,
            numeric(parts.next()?)?,
            numeric(parts.next()?)?,
        ];
        if parts.next().is_some() {
            return None;
        }
        let mut idents = Vec::new();
        if let Some(pre) = pre {
            for p in pre.split('.') {
                if p.is_empty() || !p.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
                    return None;
                }
                if p.bytes().all(|c| c.is_ascii_digit()) {
                    idents.push(Ident::Num(numeric(p)?));
                } else {
                    idents.push(Ident::Alpha(p.to_owned()));
                }
            }
        }
        Some(Version { core, pre: idents })
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Version) -> Ordering {
        self.core
            .cmp(&other.core)
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    for (a, b) in self.pre.iter().zip(&other.pre) {
                        let o = match (a, b) {
                            (Ident::Num(x), Ident::Num(y)) => x.cmp(y),
                            (Ident::Num(_), Ident::Alpha(_)) => Ordering::Less,
                            (Ident::Alpha(_), Ident::Num(_)) => Ordering::Greater,
                            (Ident::Alpha(x), Ident::Alpha(y)) => x.cmp(y),
                        };
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                    self.pre.len().cmp(&other.pre.len())
                }
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// An address range: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let t = text.trim();
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (t.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { net: addr, prefix })
    }

    /// Whether `ip` is in the range, by address family as Unleash's SDKs compare (an
    /// IPv4-mapped IPv6 address is not in an IPv4 range): for `IN_CIDR` and the
    /// remoteAddress strategy.
    pub fn contains_exact(&self, ip: IpAddr) -> bool {
        self.family_contains(ip)
    }

    /// Whether `ip` is in the range, an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, a socket
    /// peer on a dual-stack listener) read as the IPv4 address: for `trusted_proxies` and
    /// `[overrides] from`, as nginx's `set_real_ip_from` reads it.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.net, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (_, ip) => ip,
        };
        self.family_contains(ip)
    }

    fn family_contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 100_000, ..Default::default() })]

        /// Any text: the parsers answer without a panic.
        #[test]
        fn any_text_parses_or_not_without_a_panic(t in "\\PC{0,40}") {
            let _ = number(&t);
            let _ = date_ms(&t);
            let _ = Version::parse(&t);
            let _ = Cidr::parse(&t);
        }

        /// A time written as RFC 3339 reads back as itself, with or without an offset.
        #[test]
        fn dates_read_back(ms in 0i64..32_503_680_000_000, offset_min in -720i64..=840) {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
            let text = humantime::format_rfc3339_millis(t).to_string();
            proptest::prop_assert_eq!(date_ms(&text), Some(ms));
            // The same instant written in another zone.
            let local = ms + offset_min * 60_000;
            if local >= 0 {
                let lt = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(local as u64)).to_string();
                let sign = if offset_min < 0 { '-' } else { '+' };
                let zoned = format!("{}{sign}{:02}:{:02}", lt.trim_end_matches('Z'), offset_min.abs() / 60, offset_min.abs() % 60);
                proptest::prop_assert_eq!(date_ms(&zoned), Some(ms), "{}", zoned);
            }
        }

        /// Plain versions order as their numbers do; a pre-release comes before its release.
        #[test]
        fn versions_order_by_their_numbers(a in proptest::array::uniform3(0u64..1000), b in proptest::array::uniform3(0u64..1000), pre in "[a-z]{1,5}(\\.[1-9][0-9]{0,2})?") {
            let v = |x: [u64; 3]| Version::parse(&format!("{}.{}.{}", x[0], x[1], x[2])).unwrap();
            proptest::prop_assert_eq!(v(a).cmp(&v(b)), a.cmp(&b));
            let p = Version::parse(&format!("{}.{}.{}-{pre}", a[0], a[1], a[2])).unwrap();
            proptest::prop_assert!(p < v(a));
        }
    }

    #[test]
    fn numbers_read_as_the_sdks_do() {
        assert_eq!(number("12.5"), Some(12.5));
        assert_eq!(number("-3e2"), Some(-300.0));
        // Number(" 5") and float(" 5") are 5; float("inf") is infinite.
        assert_eq!(number(" 5"), Some(5.0));
        assert_eq!(number("5\t"), Some(5.0));
        assert_eq!(number("inf"), Some(f64::INFINITY));
        assert_eq!(number("-Infinity"), Some(f64::NEG_INFINITY));
        for nan in ["", "  ", "0x10", "12a", "1,5", "--1", "1_000", "NaN"] {
            assert_eq!(number(nan), None, "{nan}");
        }
    }

    #[test]
    fn unleash_ranges_hold_addresses_of_their_family_only() {
        let v4 = Cidr::parse("10.0.0.0/8").unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert!(!v4.contains_exact(mapped), "as the SDKs compare");
        assert!(v4.contains_exact("10.1.2.3".parse().unwrap()));
        assert!(
            v4.contains(mapped),
            "a dual-stack socket's peer, for trusted_proxies"
        );
    }

    #[test]
    fn dates_are_iso_8601_with_offsets() {
        assert_eq!(date_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(date_ms("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(date_ms("1970-01-02"), Some(86_400_000));
        assert_eq!(date_ms("2024-02-29T12:00:00.5Z"), Some(1_709_208_000_500));
        assert_eq!(date_ms("2023-02-29T12:00:00Z"), None);
        assert_eq!(date_ms("yesterday"), None);
    }

    #[test]
    fn versions_order_as_semver() {
        let v = |s| Version::parse(s).unwrap_or_else(|| panic!("{s}"));
        assert!(v("1.0.0-alpha") < v("1.0.0-alpha.1"));
        assert!(v("1.0.0-alpha.1") < v("1.0.0-alpha.beta"));
        assert!(v("1.0.0-beta.2") < v("1.0.0-beta.11"));
        assert!(v("1.0.0-rc.1") < v("1.0.0"));
        assert_eq!(v("1.2.3+build.5"), v("1.2.3"));
        for bad in [
            "v1.2.3", "1.2", "01.2.3", "1.2.3-", "1.2.3.4", "a.b.c", "1.2.3-01",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn cidrs_contain_their_addresses() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.200.3.4".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
    }
}
