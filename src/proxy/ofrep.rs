//! The OpenFeature Remote Evaluation Protocol (OFREP) on the proxy's listener, with `[ofrep]
//! enabled = true`: `POST /ofrep/v1/evaluate/flags/{key}` evaluates one flag and `POST
//! /ofrep/v1/evaluate/flags` every flag, for the user the request's body names
//! (`{"context": {"targetingKey": "..."}}`) or else the request's own identity (its
//! `[identity] from` header, cookie or query, or the anonymous-id cookie), with the same code
//! that fills `x-switchyard-flags`: a browser or mobile OpenFeature SDK sees exactly the values
//! the proxy sends upstream for that user. The bulk answer has an `ETag`; `If-None-Match` with
//! it is answered `304`.
//!
//! Values: an on/off flag is a boolean (`variant` "on" or "off"); a flag with variants is the
//! variant's name, or "off" (a string). Reasons: `TARGETING_MATCH` (the user list),
//! `SPLIT` (a percentage between 0 and 100, or variants), `STATIC` (0% or 100% with no user
//! list), `DISABLED` (another environment, or outside the time window).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Method, Response, StatusCode};
use serde_json::{json, Value as Json};

use super::body::ProxyBody;
use std::collections::HashMap;

use crate::routing::context::Session;
use crate::routing::flags::{Flag, Reason, Value};
use crate::routing::identity::KeySource;
use crate::routing::unleash::{Context, Field};
use crate::routing::{RequestContext, RequestView};
use crate::runtime::Snapshot;
use crate::upstream::client::{BodyFault, RequestBody};

/// Where the endpoints are.
pub const PREFIX: &str = "/ofrep/v1/evaluate/flags";
/// The largest request body read: a context is a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

/// Whether `path` is one of OFREP's.
pub fn is_ofrep(path: &str) -> bool {
    path == PREFIX
        || path
            .strip_prefix(PREFIX)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn json_response(status: StatusCode, body: &Json, etag: Option<&str>) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    if let Some(tag) = etag.and_then(|t| header::HeaderValue::from_str(t).ok()) {
        h.insert(header::ETAG, tag);
    }
    r
}

fn error(status: StatusCode, key: Option<&str>, code: &str, details: &str) -> Response<ProxyBody> {
    let mut body = json!({ "errorCode": code, "errorDetails": details });
    if let Some(k) = key {
        body["key"] = k.into();
    }
    json_response(status, &body, None)
}

/// The evaluation context of an OFREP request: the body's fields (by Unleash's names, and
/// `targetingKey` as the userId), else what the request itself carries.
struct OfrepContext<'a> {
    request: RequestContext<'a>,
    given: HashMap<Field, String>,
}

impl Context for OfrepContext<'_> {
    fn get(&self, field: Field) -> Option<&str> {
        match self.given.get(&field) {
            Some(v) => Some(v),
            None => self.request.get(field),
        }
    }
    fn now_ms(&self) -> i64 {
        self.request.now_ms()
    }
    fn random(&self) -> u32 {
        self.request.random()
    }
    fn sticky_fallback(&self) -> Option<&str> {
        self.given
            .get(&Field::UserId)
            .map(String::as_str)
            .or_else(|| self.request.sticky_fallback())
    }
}

/// One flag's evaluation, as OFREP shows it.
fn evaluation<C: Context + ?Sized>(snap: &Snapshot, flag: &Flag, ctx: &C) -> Json {
    let (value, reason) = flag.evaluate(&snap.flags, ctx);
    let reason = if flag.toggle.is_static() {
        "STATIC"
    } else {
        match reason {
            Reason::Disabled | Reason::OtherEnvironment | Reason::OutsideWindow => "DISABLED",
            Reason::Strategy { bucket: Some(_), .. } => "SPLIT",
            Reason::NoStrategy if flag.percent.is_some() => "SPLIT",
            Reason::Strategy { .. } if matches!(value, Value::Variant(_)) => "SPLIT",
            Reason::Strategy { .. } => "TARGETING_MATCH",
            Reason::NoStrategies => "STATIC",
            Reason::NoStrategy | Reason::Dependency(_) => "DEFAULT",
        }
    };
    let variant = flag.token(value).to_owned();
    let json_value: Json = if flag.has_variants() {
        Json::String(variant.clone())
    } else {
        Json::Bool(value == Value::On)
    };
    let mut metadata = serde_json::Map::new();
    if let Some(p) = flag.payload(value) {
        metadata.insert("payload".into(), Json::String(p.value.clone()));
        metadata.insert("payloadType".into(), Json::String(p.kind.clone()));
    }
    json!({ "key": &*flag.name, "value": json_value, "reason": reason, "variant": variant, "metadata": metadata })
}

/// What reading the request body came to, when not a body.
enum Unread {
    /// Answered as OFREP answers (413).
    Answer(Box<Response<ProxyBody>>),
    /// The client broke it off, sent it malformed, or paused past `client_body_timeout`: the
    /// same 400 or 408 (and closed connection) as a proxied request's.
    Fault(BodyFault),
}

/// Reads the request body, at most [`MAX_BODY`] bytes, each wait for the client at most
/// `idle` (`listen.client_body_timeout`, as for a proxied request's upload).
async fn read_body(body: Option<RequestBody>, idle: Duration) -> Result<Vec<u8>, Unread> {
    let mut out = Vec::new();
    let Some(mut body) = body else { return Ok(out) };
    loop {
        let frame = tokio::time::timeout(idle, std::future::poll_fn(|cx| body.poll_frame(cx)))
            .await
            .map_err(|_| Unread::Fault(BodyFault::Timeout(idle)))?;
        match frame {
            None => return Ok(out),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > MAX_BODY {
                        return Err(Unread::Answer(Box::new(error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            None,
                            "PARSE_ERROR",
                            "the request body is over 64 KiB: an evaluation context is a few hundred bytes",
                        ))));
                    }
                    out.extend_from_slice(&data);
                }
            }
            Some(Err(fault)) => return Err(Unread::Fault(fault)),
        }
    }
}

/// Answers an OFREP request (its path passed [`is_ofrep`], its head the request filter). A
/// fault of the client's body is the caller's to answer, as for a proxied request.
pub async fn answer(
    snap: &Snapshot,
    parts: &http::request::Parts,
    body: Option<RequestBody>,
    client: std::net::IpAddr,
    idle: Duration,
) -> Result<Response<ProxyBody>, BodyFault> {
    if parts.method != Method::POST {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            "GENERAL",
            "OFREP evaluations are POST requests",
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return Ok(r);
    }
    match read_body(body, idle).await {
        Ok(raw) => Ok(evaluate(snap, parts, &raw, client)),
        Err(Unread::Answer(r)) => Ok(*r),
        Err(Unread::Fault(f)) => Err(f),
    }
}

/// The answer for a request whose body is read.
fn evaluate(
    snap: &Snapshot,
    parts: &http::request::Parts,
    raw: &[u8],
    client: std::net::IpAddr,
) -> Response<ProxyBody> {
    let context: Json = if raw.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice::<Json>(raw) {
            Ok(v) if v.is_object() => v["context"].clone(),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    None,
                    "PARSE_ERROR",
                    "the body is not a JSON object such as {\"context\": {\"targetingKey\": \"user-1\"}}",
                )
            }
        }
    };
    if !(context.is_null() || context.is_object()) {
        return error(
            StatusCode::BAD_REQUEST,
            None,
            "INVALID_CONTEXT",
            "context must be an object",
        );
    }
    // The context's targetingKey, else the request's own identity.
    let mut given: HashMap<Field, String> = HashMap::new();
    let text = |v: &Json| match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    for (k, v) in context.as_object().into_iter().flatten() {
        let fields = if k == "properties" { v.as_object() } else { None };
        for (k, v) in fields
            .into_iter()
            .flatten()
            .chain(std::iter::once((k, v)).filter(|_| fields.is_none()))
        {
            if k == "targetingKey" {
                continue;
            }
            if let (Some(f), Some(t)) = (snap.context.schema.lookup(k), text(v)) {
                given.insert(f, t);
            }
        }
    }
    match &context["targetingKey"] {
        Json::String(k) if !k.is_empty() => {
            given.insert(Field::UserId, k.clone());
        }
        Json::Null | Json::String(_) => {}
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                None,
                "INVALID_CONTEXT",
                "targetingKey must be a string",
            )
        }
    }
    let (key, source) = snap.identity.key(&parts.headers, parts.uri.query());
    let (user_id, session) = match source {
        KeySource::New => (None, Session::None),
        KeySource::AnonymousCookie => (None, Session::Id(&key)),
        _ => (Some(&*key), Session::Cookie(&snap.identity.cookie)),
    };
    let host = crate::routing::normalize_host(
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    );
    let view = RequestView {
        host: &host,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        method: &parts.method,
        peer: Some(client),
    };
    let ctx = OfrepContext {
        request: RequestContext::new(
            &snap.context,
            view,
            user_id,
            session,
            snap.env.as_deref(),
            SystemTime::now(),
        ),
        given,
    };
    let keyed = ctx.get(Field::UserId).is_some() || ctx.get(Field::SessionId).is_some();
    let one = parts
        .uri
        .path()
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('/'));
    match one {
        Some(name) => {
            let name = percent_decode(name);
            let Some(flag) = snap.flags.iter().find(|f| *f.name == *name) else {
                return error(
                    StatusCode::NOT_FOUND,
                    Some(&name),
                    "FLAG_NOT_FOUND",
                    "no flag of this name",
                );
            };
            match keyed || !flag.toggle.sticky() {
                true => json_response(StatusCode::OK, &evaluation(snap, flag, &ctx), None),
                false => error(
                    StatusCode::BAD_REQUEST,
                    Some(&name),
                    "TARGETING_KEY_MISSING",
                    "this flag differs by user: give context.targetingKey, or send the user's identity as the proxy reads it",
                ),
            }
        }
        None => {
            let flags: Vec<Json> = snap
                .flags
                .iter()
                .map(|f| match keyed || !f.toggle.sticky() {
                    true => evaluation(snap, f, &ctx),
                    false => json!({ "key": &*f.name, "errorCode": "TARGETING_KEY_MISSING", "errorDetails": "this flag differs by user" }),
                })
                .collect();
            let body = json!({ "flags": flags });
            // The same on every replica for the same config and answer.
            let text = format!("{}\n{body}", snap.revision);
            let etag = format!(
                "\"{:08x}{:08x}\"",
                crate::routing::bucket::murmur3_32(text.as_bytes(), 0),
                crate::routing::bucket::murmur3_32(text.as_bytes(), 1)
            );
            let matches = parts
                .headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim() == etag || t.trim() == "*");
            if matches {
                let mut r = Response::new(ProxyBody::empty());
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                if let Ok(v) = header::HeaderValue::from_str(&etag) {
                    r.headers_mut().insert(header::ETAG, v);
                }
                return r;
            }
            json_response(StatusCode::OK, &body, Some(&etag))
        }
    }
}

/// `%XX` escapes decoded (flag names are RFC 8941 keys: nothing else needs it).
fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("k={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map_or_else(|| s.to_owned(), |(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any path is decided without a panic, and a flag name percent-encoded as an SDK
        /// sends it decodes to itself.
        #[test]
        fn paths_and_names_decode(path in "\\PC{0,80}", name in "[a-z*][a-z0-9_.*-]{0,30}") {
            let _ = is_ofrep(&path);
            let _ = percent_decode(&path);
            let encoded: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
            proptest::prop_assert_eq!(percent_decode(&encoded), name.clone());
            let path = format!("{}/{}", PREFIX, encoded);
            proptest::prop_assert!(is_ofrep(&path));
        }
    }

    #[test]
    fn only_ofreps_paths_are_taken() {
        assert!(is_ofrep("/ofrep/v1/evaluate/flags"));
        assert!(is_ofrep("/ofrep/v1/evaluate/flags/new_checkout"));
        assert!(!is_ofrep("/ofrep/v1/evaluate/flagsx"));
        assert!(!is_ofrep("/ofrep/v1/evaluate"));
        assert!(!is_ofrep("/"));
    }
}
