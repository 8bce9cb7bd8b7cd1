//! The one outbound HTTP(S) client for what switchyard asks of other services (webhooks,
//! Prometheus, Unleash), and [`exchange`], its bounded request: a whole answer within a time
//! and a size, or a [`RemoteError`] that says which bound was passed.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// The client [`client`] builds.
pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why an [`exchange`] brought no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    pub kind: RemoteFailure,
    pub message: String,
}

/// Kinds of [`RemoteError`], the `reason` of `switchyard_remote_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteFailure {
    /// No connection, or it broke before a whole answer.
    Unreachable,
    /// No whole answer within the timeout.
    Timeout,
    /// The answer is longer than the caller reads.
    TooLarge,
    /// An answer, but not a good one (a status, or a body that does not parse).
    Invalid,
}

impl RemoteFailure {
    pub const ALL: [RemoteFailure; 4] = [
        RemoteFailure::Unreachable,
        RemoteFailure::Timeout,
        RemoteFailure::TooLarge,
        RemoteFailure::Invalid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RemoteFailure::Unreachable => "unreachable",
            RemoteFailure::Timeout => "timeout",
            RemoteFailure::TooLarge => "too_large",
            RemoteFailure::Invalid => "invalid",
        }
    }
}

impl RemoteError {
    pub fn new(kind: RemoteFailure, message: impl Into<String>) -> RemoteError {
        RemoteError {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One request with `client`: the answer's head and whole body, or why not (a transport error,
/// no whole answer within `timeout`, or a body over `limit` bytes, said of `what`). The body is
/// never held past `limit`: a longer one is refused as soon as its length says so, or its
/// bytes pass the limit.
pub async fn exchange(
    client: &HttpsClient,
    req: http::Request<Full<Bytes>>,
    timeout: std::time::Duration,
    what: &str,
    limit: usize,
) -> Result<(http::response::Parts, Bytes), RemoteError> {
    use http_body_util::BodyExt;
    let too_large = || {
        RemoteError::new(
            RemoteFailure::TooLarge,
            format!("{what} answered more than {limit} bytes; the answer was not read"),
        )
    };
    let answer = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| RemoteError::new(RemoteFailure::Unreachable, format!("cannot reach {what}: {e}")))?;
        let (parts, mut body) = resp.into_parts();
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut out = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                RemoteError::new(
                    RemoteFailure::Unreachable,
                    format!("{what}: the answer broke off: {e}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > limit {
                    return Err(too_large());
                }
                out.extend_from_slice(&data);
            }
        }
        Ok((parts, out.freeze()))
    };
    tokio::time::timeout(timeout, answer).await.map_err(|_| {
        RemoteError::new(
            RemoteFailure::Timeout,
            format!("no answer from {what} in {timeout:?}"),
        )
    })?
}

/// The HTTP(S) client for webhooks, Prometheus and Unleash: Mozilla's roots, HTTP/1.1.
pub fn client() -> HttpsClient {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}
