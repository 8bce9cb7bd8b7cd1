//! Distributed tracing (`[tracing]`): W3C Trace Context kept or started, passed upstream, and a
//! span per request exported over OTLP/HTTP.
//!
//! With `[tracing]`, each request gets a span of its own (kind SERVER): a valid `traceparent`
//! from the client makes it the client span's child, in the same trace, sampled as the client
//! said (parent-based); without one, a trace starts here, sampled at `sample`. The upstream
//! (and the shadow of a mirror, which also gets `x-switchyard-mirror: 1`) receives a
//! `traceparent` naming this span as its parent; `tracestate` passes as the client sent it.
//! Sampled spans carry the decision as attributes (route, pool, why, bucket, flags, the
//! endpoint, the status) and are exported in batches by a task of their own (`export`), never
//! on the request path: a full queue drops spans and counts them. Without `[tracing]` nothing
//! here runs and `traceparent` passes through untouched.

pub mod export;

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;

pub use export::{encode, Exporter};

/// `[tracing]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The OTLP/HTTP endpoint's base (`http://collector:4318`); spans go to `/v1/traces`.
    /// `None`: trace context is kept or started and passed on, nothing is exported.
    pub otlp: Option<http::Uri>,
    /// Share of traces started here that are recorded, 0..=1.
    pub sample: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

/// A parsed `traceparent` (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// Parses a `traceparent` value as W3C Trace Context level 1 says a receiver must: version
/// `00` exactly 55 characters; a later version at least that, its first four fields read; all
/// lower-case hex; neither id all zeros; version `ff` invalid.
pub fn parse(value: &[u8]) -> Option<Parent> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex::<1>(&value[0..2])?[0];
    if version == 0xff
        || (version == 0 && value.len() != 55)
        || (version > 0 && value.len() > 55 && value[55] != b'-')
    {
        return None;
    }
    let trace_id = hex::<16>(&value[3..35])?;
    let span_id = hex::<8>(&value[36..52])?;
    let flags = hex::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

fn hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
}

/// `00-<trace id>-<span id>-<flags>`.
pub fn format(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    let mut v = Vec::with_capacity(55);
    v.extend_from_slice(b"00-");
    write_hex(&mut v, trace_id);
    v.push(b'-');
    write_hex(&mut v, span_id);
    v.extend_from_slice(if sampled { b"-01" } else { b"-00" });
    HeaderValue::from_bytes(&v).expect("hex digits and dashes")
}

/// A request's span: its ids, what it sends upstream, and (sampled) what it records.
#[derive(Debug)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The client's span, when it sent a valid `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
    /// The `traceparent` upstream gets: this span as the parent.
    pub header: HeaderValue,
    pub start: SystemTime,
    /// The attributes found on the way (sampled spans only).
    pub attributes: Vec<(&'static str, Value)>,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(Arc<str>),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.into())
    }
}

impl From<Arc<str>> for Value {
    fn from(s: Arc<str>) -> Value {
        Value::Str(s)
    }
}

impl Span {
    /// The span of a request whose `traceparent` field is `header`: its child, or the root of
    /// a new trace sampled at `sample`.
    pub fn start(header: Option<&HeaderValue>, sample: f64) -> Span {
        let parent = header.and_then(|h| parse(h.as_bytes()));
        let (trace_id, parent_id, sampled) = match parent {
            Some(p) => (p.trace_id, Some(p.span_id), p.sampled),
            None => {
                let mut id = fastrand::u128(1..).to_be_bytes();
                // Version 00's ids: random, never all zeros.
                id[0] |= (id == [0; 16]) as u8;
                (
                    id,
                    None,
                    sample >= 1.0 || (sample > 0.0 && fastrand::f64() < sample),
                )
            }
        };
        let span_id = fastrand::u64(1..).to_be_bytes();
        Span {
            trace_id,
            span_id,
            parent: parent_id,
            sampled,
            header: format(&trace_id, &span_id, sampled),
            start: SystemTime::now(),
            attributes: Vec::new(),
        }
    }

    /// The request's method, as recorded at the start.
    pub fn method(&self) -> &str {
        match self.attributes.first() {
            Some(("http.request.method", Value::Str(m))) => m,
            _ => "HTTP",
        }
    }

    /// Records an attribute (sampled spans only: others record nothing).
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if self.sampled {
            self.attributes.push((key, value.into()));
        }
    }
}

/// A finished span, for the exporter.
#[derive(Debug)]
pub struct Finished {
    pub span: Span,
    pub name: String,
    pub end: SystemTime,
    /// An error status and its message (a 5xx, or a failure to answer).
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_as_the_spec_reads_it() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = parse(ok).unwrap();
        assert_eq!(p.trace_id[0], 0x4b);
        assert_eq!(p.span_id[7], 0xb7);
        assert!(p.sampled);
        assert_eq!(
            format(&p.trace_id, &p.span_id, true).as_bytes(),
            &ok[..],
            "written back as read"
        );
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!parse(unsampled).unwrap().sampled);
        // A later version: longer is fine when a dash follows; its first fields are read.
        assert!(parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        /// Whatever a client sends, the parser answers without panicking, and what it accepts
        /// is written back exactly as read (version 00).
        #[test]
        fn any_bytes_parse_or_not_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            if let Some(p) = parse(&bytes) {
                proptest::prop_assert!(p.trace_id != [0; 16] && p.span_id != [0; 8]);
                if bytes.len() == 55 && bytes.starts_with(b"00-") {
                    let flags = &bytes[53..55];
                    if flags == b"00" || flags == b"01" {
                        let written = format(&p.trace_id, &p.span_id, p.sampled);
                        proptest::prop_assert_eq!(written.as_bytes(), &bytes[..]);
                    }
                }
            }
        }

        /// Every id pair written is read back (a near miss, one character changed, never is
        /// read as the same ids).
        #[test]
        fn written_is_read_back(trace in 1u128.., span in 1u64.., sampled: bool, at in 0usize..55, to: u8) {
            let v = format(&trace.to_be_bytes(), &span.to_be_bytes(), sampled);
            let p = parse(v.as_bytes()).unwrap();
            proptest::prop_assert_eq!((p.trace_id, p.span_id, p.sampled), (trace.to_be_bytes(), span.to_be_bytes(), sampled));
            let mut bent = v.as_bytes().to_vec();
            bent[at] = to;
            if bent != v.as_bytes() && at < 53 {
                if let Some(q) = parse(&bent) {
                    proptest::prop_assert!(q.trace_id != p.trace_id || q.span_id != p.span_id || at < 2);
                }
            }
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_the_sampling_a_root_samples_at_the_rate() {
        let client = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let s = Span::start(Some(&client), 0.0);
        assert_eq!(s.trace_id, parse(client.as_bytes()).unwrap().trace_id);
        assert_eq!(s.parent, Some(parse(client.as_bytes()).unwrap().span_id));
        assert!(
            s.sampled,
            "the parent sampled it: so does the child, whatever the rate"
        );
        let sent = parse(s.header.as_bytes()).unwrap();
        assert_eq!(
            (sent.trace_id, sent.span_id, sent.sampled),
            (s.trace_id, s.span_id, true)
        );

        let never = Span::start(None, 0.0);
        assert!(!never.sampled && never.parent.is_none());
        assert!(Span::start(None, 1.0).sampled);
        let n = (0..10_000).filter(|_| Span::start(None, 0.1).sampled).count();
        assert!((700..1300).contains(&n), "{n} of 10,000 at 10%");
        // A malformed traceparent starts a new trace.
        let bad = HeaderValue::from_static("00-zz");
        assert!(Span::start(Some(&bad), 1.0).parent.is_none());
    }
}
