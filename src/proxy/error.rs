//! The errors a request can end in, who caused each, and the one place that turns them into
//! HTTP responses. Every locally generated response carries `x-switchyard-error: <reason>`.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::ProxyBody;
use super::headers::{X_REQUEST_ID, X_SWITCHYARD_ERROR};
use crate::upstream::client::BodyFault;

/// Who caused an error. Only upstream-caused errors count against a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Upstream,
    Downstream,
    Internal,
    /// The proxy's own resources ran out: counted in neither the pool's numbers nor its
    /// guard's, and no endpoint is ejected for it.
    Local,
}

/// Why the proxy answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matched host {host:?} and path {path:?}")]
    NoRoute { host: String, path: String },
    #[error("pool {pool} has no endpoint to send to: {why}")]
    NoEndpoint {
        pool: String,
        /// Why each endpoint is out, for the log (not for clients).
        why: String,
    },
    #[error("could not connect to {endpoint} of pool {pool}: {detail}")]
    Connect {
        pool: String,
        endpoint: String,
        detail: String,
    },
    #[error("{endpoint} of pool {pool} sent no response headers within {timeout:?}")]
    Timeout {
        pool: String,
        endpoint: String,
        timeout: std::time::Duration,
    },
    #[error("{endpoint} of pool {pool} failed the request: {detail}")]
    Reset {
        pool: String,
        endpoint: String,
        detail: String,
    },
    #[error("{endpoint} of pool {pool} sent an invalid response: {detail}")]
    UpstreamProtocol {
        pool: String,
        endpoint: String,
        detail: String,
    },
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("the request head is too large")]
    HeadTooLarge,
    #[error("only HTTP/1.0, HTTP/1.1 and HTTP/2 are served")]
    VersionNotSupported,
    /// A request transfer coding other than `chunked` (RFC 9112 §6.1).
    #[error("{0}")]
    NotImplemented(&'static str),
    #[error("the {0} method is not served by a reverse proxy")]
    MethodNotAllowed(http::Method),
    /// The client's request body broke off, was malformed, or paused too long.
    #[error("{0}")]
    ClientBody(crate::upstream::client::BodyFault),
    /// The proxy itself ran out of a resource (`resource`: file descriptors and the like)
    /// before it could reach the upstream: no fault of the pool's.
    #[error("switchyard ran out of {resource} connecting to pool {pool}: {detail}")]
    LocalResource {
        pool: String,
        resource: &'static str,
        detail: String,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoint { .. } | ProxyError::LocalResource { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Connect { .. } | ProxyError::Reset { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::VersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ClientBody(BodyFault::Timeout(_)) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The value of `x-switchyard-error`: a short, fixed token.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::NoEndpoint { .. } => "no_healthy_endpoint",
            ProxyError::LocalResource { .. } => "local_resources",
            ProxyError::Connect { .. } => "upstream_connect",
            ProxyError::Timeout { .. } => "upstream_timeout",
            ProxyError::Reset { .. } => "upstream_reset",
            ProxyError::UpstreamProtocol { .. } => "upstream_protocol",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::HeadTooLarge => "head_too_large",
            ProxyError::VersionNotSupported => "http_version",
            ProxyError::NotImplemented(_) => "not_implemented",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::ClientBody(BodyFault::Timeout(_)) => "client_timeout",
            ProxyError::ClientBody(_) => "client_body",
        }
    }

    pub fn cause(&self) -> Cause {
        match self {
            ProxyError::NoRoute { .. }
            | ProxyError::BadRequest(_)
            | ProxyError::HeadTooLarge
            | ProxyError::VersionNotSupported
            | ProxyError::NotImplemented(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::ClientBody(_) => Cause::Downstream,
            ProxyError::NoEndpoint { .. } => Cause::Internal,
            ProxyError::LocalResource { .. } => Cause::Local,
            ProxyError::Connect { .. }
            | ProxyError::Timeout { .. }
            | ProxyError::Reset { .. }
            | ProxyError::UpstreamProtocol { .. } => Cause::Upstream,
        }
    }

    /// The kind of upstream failure, for `switchyard_upstream_errors_total`.
    pub fn upstream_kind(&self) -> Option<crate::metrics::UpstreamError> {
        use crate::metrics::UpstreamError as K;
        match self {
            ProxyError::Connect { .. } => Some(K::Connect),
            ProxyError::Timeout { .. } => Some(K::Timeout),
            ProxyError::Reset { .. } => Some(K::Reset),
            ProxyError::UpstreamProtocol { .. } => Some(K::Protocol),
            _ => None,
        }
    }

    /// Whether the client's connection cannot serve another request after this answer: the
    /// request itself was broken, so what follows it on the connection cannot be trusted.
    pub fn closes(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_) | ProxyError::NotImplemented(_) | ProxyError::ClientBody(_)
        )
    }

    /// The response the client gets: the status, a one-line plain-text body, the reason header
    /// and the request id (unless `[headers]` leaves it out).
    pub fn to_response(&self, request_id: Option<&HeaderValue>) -> Response<ProxyBody> {
        let body = match self {
            // The upstream's address is for the logs, not for clients.
            ProxyError::Connect { pool, .. } => format!("switchyard: could not connect to pool {pool}\n"),
            ProxyError::Timeout { pool, .. } => format!("switchyard: pool {pool} did not answer in time\n"),
            ProxyError::Reset { pool, .. } => format!("switchyard: pool {pool} failed the request\n"),
            ProxyError::UpstreamProtocol { pool, .. } => {
                format!("switchyard: pool {pool} sent an invalid response\n")
            }
            ProxyError::NoEndpoint { pool, .. } => {
                format!("switchyard: pool {pool} has no endpoint to send to\n")
            }
            ProxyError::LocalResource { .. } => "switchyard: out of local resources; try again\n".into(),
            other => format!("switchyard: {other}\n"),
        };
        let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(
            X_SWITCHYARD_ERROR.clone(),
            HeaderValue::from_static(self.reason()),
        );
        if let ProxyError::MethodNotAllowed(_) = self {
            // RFC 9110 §15.5.6: a 405 says which methods are served.
            h.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"),
            );
        }
        if let Some(id) = request_id {
            h.insert(X_REQUEST_ID.clone(), id.clone());
        }
        resp
    }
}
