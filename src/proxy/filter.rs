//! The first phase: a request that is no good is refused before any route is looked up.

use super::*;

/// What request_filter made of a request: the host routing uses (and the upstream gets),
/// and the normalized path and query when normalizing changed them.
pub(super) struct Filtered {
    pub(super) host: Option<HeaderValue>,
    pub(super) path: Option<PathAndQuery>,
}

/// Phase request_filter: refuses what cannot be served (DESIGN §8 "HTTP rules").
pub(super) fn filter(parts: &http::request::Parts) -> Result<Filtered, ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed(Method::CONNECT));
    }
    // hyper reads a request whose codings end in chunked; only chunked alone is served.
    if find(&parts.headers, &header::TRANSFER_ENCODING).is_some() {
        let mut codings = Codings::default();
        for v in parts.headers.get_all(header::TRANSFER_ENCODING) {
            codings.add(v.as_bytes());
        }
        match codings.verdict() {
            Some(Coding::Unsupported) => {
                return Err(ProxyError::NotImplemented("a transfer coding other than chunked"))
            }
            Some(Coding::Invalid) => return Err(ProxyError::BadRequest("an invalid transfer-encoding")),
            _ => {}
        }
    }
    let host = target::host(&parts.uri, &parts.headers, parts.version).map_err(|e| {
        ProxyError::BadRequest(match e {
            target::HostError::Missing => "the request has no Host",
            target::HostError::Duplicate => "the request has more than one Host",
            target::HostError::Invalid => "the request's host is not a valid host",
        })
    })?;
    Ok(Filtered {
        host,
        path: target::normalized(&parts.uri),
    })
}
