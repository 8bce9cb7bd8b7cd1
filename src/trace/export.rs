//! Spans to an OTLP/HTTP collector: `POST {otlp}/v1/traces` with an
//! `ExportTraceServiceRequest` in protobuf (`application/x-protobuf`), in batches of at most
//! [`BATCH`] spans or every [`EVERY`], by a task of its own. The request path only queues a
//! finished span ([`QUEUE`] at most; past it spans are dropped and counted); a collector that
//! is down or slow delays nothing but its own batches (one attempt each, [`TIMEOUT`]).
//!
//! The protobuf is written here, field by field, from the OTLP definitions
//! (opentelemetry/proto/trace/v1/trace.proto, common/v1, resource/v1): a few dozen lines
//! instead of a code generator; `tests/tracing.rs` decodes it with the generated types of the
//! official definitions.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::{Finished, TracingConfig, Value};

/// Spans waiting for the exporter at most.
pub const QUEUE: usize = 8192;
/// Spans per export at most.
pub const BATCH: usize = 512;
/// How long a span waits for its batch at most.
pub const EVERY: Duration = Duration::from_secs(1);
/// One export's time at most.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Where finished spans go.
pub struct Exporter {
    pub config: TracingConfig,
    tx: Option<mpsc::Sender<Finished>>,
    counters: Counters,
}

/// Spans by result: exported, failed (the collector refused or did not answer), dropped (the
/// queue was full).
#[derive(Clone)]
pub struct Counters {
    pub exported: IntCounter,
    pub failed: IntCounter,
    pub dropped: IntCounter,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").field("config", &self.config).finish()
    }
}

impl Exporter {
    /// An exporter for `config`, its task started when it has a collector to send to.
    pub fn new(config: TracingConfig, counters: Counters) -> Exporter {
        let tx = config.otlp.clone().map(|otlp| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(run(rx, otlp, config.service_name.clone(), counters.clone()));
            tx
        });
        Exporter { config, tx, counters }
    }

    /// Queues a finished span (sampled ones only reach here).
    pub fn send(&self, span: Finished) {
        if let Some(tx) = &self.tx {
            if tx.try_send(span).is_err() {
                self.counters.dropped.inc();
            }
        }
    }
}

async fn run(mut rx: mpsc::Receiver<Finished>, otlp: http::Uri, service: String, counters: Counters) {
    let url = {
        let base = otlp.to_string();
        format!("{}/v1/traces", base.trim_end_matches('/'))
    };
    let client = crate::egress::client();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // The first span of a batch, then what comes within EVERY, up to BATCH.
        match rx.recv().await {
            Some(s) => batch.push(s),
            None => return,
        }
        let deadline = tokio::time::Instant::now() + EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let body = encode(&service, &batch);
        let n = batch.len() as u64;
        batch.clear();
        let req = http::Request::post(url.as_str())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .header(
                http::header::USER_AGENT,
                concat!("switchyard/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)));
        let Ok(req) = req else {
            counters.failed.inc_by(n);
            continue;
        };
        match tokio::time::timeout(TIMEOUT, client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => counters.exported.inc_by(n),
            outcome => {
                counters.failed.inc_by(n);
                let why = match outcome {
                    Ok(Ok(resp)) => format!("answered {}", resp.status()),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {TIMEOUT:?}"),
                };
                tracing::warn!(collector = %crate::notify::redact_url(&otlp), "{n} span(s) not exported: {why}");
            }
        }
    }
}

/// Protobuf wire types.
const LEN: u8 = 2;
const VARINT: u8 = 0;
const I64: u8 = 1;
const I32: u8 = 5;

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field << 3 | u32::from(wire)));
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A length-delimited field written by `body`.
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    body(&mut inner);
    bytes_field(out, field, &inner);
}

/// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string_value = 1; bool_value = 2;
/// int_value = 3; double_value = 4 }`.
fn attribute(out: &mut Vec<u8>, field: u32, k: &str, v: &Value) {
    message(out, field, |kv| {
        bytes_field(kv, 1, k.as_bytes());
        message(kv, 2, |any| match v {
            Value::Str(s) => bytes_field(any, 1, s.as_bytes()),
            Value::Bool(b) => {
                key(any, 2, VARINT);
                varint(any, u64::from(*b));
            }
            Value::Int(i) => {
                key(any, 3, VARINT);
                varint(any, *i as u64);
            }
            Value::Float(f) => {
                key(any, 4, I64);
                any.extend_from_slice(&f.to_le_bytes());
            }
        });
    });
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// An `ExportTraceServiceRequest` of `spans`, from `service`: one `ResourceSpans` (resource
/// attribute `service.name`), one `ScopeSpans` (scope `switchyard` and its version).
pub fn encode(service: &str, spans: &[Finished]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + spans.len() * 256);
    // ExportTraceServiceRequest.resource_spans = 1
    message(&mut out, 1, |rs| {
        // ResourceSpans.resource = 1: Resource.attributes = 1
        message(rs, 1, |res| {
            attribute(res, 1, "service.name", &Value::Str(service.into()));
        });
        // ResourceSpans.scope_spans = 2
        message(rs, 2, |ss| {
            // ScopeSpans.scope = 1: InstrumentationScope { name = 1; version = 2 }
            message(ss, 1, |scope| {
                bytes_field(scope, 1, b"switchyard");
                bytes_field(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for f in spans {
                // ScopeSpans.spans = 2
                message(ss, 2, |sp| span(sp, f));
            }
        });
    });
    out
}

/// `Span { trace_id = 1; span_id = 2; parent_span_id = 4; name = 5; kind = 6;
/// start_time_unix_nano = 7 (fixed64); end_time_unix_nano = 8 (fixed64); attributes = 9;
/// status = 15; flags = 16 (fixed32) }`.
fn span(out: &mut Vec<u8>, f: &Finished) {
    let s = &f.span;
    bytes_field(out, 1, &s.trace_id);
    bytes_field(out, 2, &s.span_id);
    if let Some(parent) = &s.parent {
        bytes_field(out, 4, parent);
    }
    bytes_field(out, 5, f.name.as_bytes());
    // SPAN_KIND_SERVER
    key(out, 6, VARINT);
    varint(out, 2);
    key(out, 7, I64);
    out.extend_from_slice(&nanos(s.start).to_le_bytes());
    key(out, 8, I64);
    out.extend_from_slice(&nanos(f.end.max(s.start)).to_le_bytes());
    for (k, v) in &s.attributes {
        attribute(out, 9, k, v);
    }
    // Status { message = 2; code = 3 }: STATUS_CODE_ERROR (2) with its message, else unset.
    if let Some(e) = &f.error {
        message(out, 15, |st| {
            bytes_field(st, 2, e.as_bytes());
            key(st, 3, VARINT);
            varint(st, 2);
        });
    }
    // flags: the W3C trace flags (sampled) in the low byte, and "the parent is remote"
    // (SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK | SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK) when it has one.
    let flags: u32 = 1 | if s.parent.is_some() { 0x300 } else { 0x100 };
    key(out, 16, I32);
    out.extend_from_slice(&flags.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_keys_as_protobuf_writes_them() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        out.clear();
        key(&mut out, 16, I32);
        assert_eq!(out, [0x85, 0x01]);
        out.clear();
        attribute(&mut out, 9, "a", &Value::Int(-1));
        // KeyValue{key "a", value AnyValue{int_value -1}}: a negative int64 is ten bytes.
        assert_eq!(out.len(), 2 + 3 + 2 + 11);
    }
}
