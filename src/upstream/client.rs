//! The one HTTP client of the process, shared by every request and kept across reloads, so
//! keep-alive connections to upstreams are reused. Connections are pooled per endpoint by
//! hyper-util; this module adds the connector (per-pool connect timeouts read from the live
//! snapshot, `TCP_NODELAY`) and [`UpstreamBody`], which lets a request whose connect failed be
//! sent again to another endpoint without buffering its body.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Uri;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::routing::Snapshot;

/// The shared client type.
pub type UpstreamClient = Client<Connector, UpstreamBody>;

/// Connect timeout for addresses no snapshot knows (an endpoint removed by a reload while a
/// request to it was starting).
const FALLBACK_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds the shared client. Idle upstream connections are kept for 90 s.
pub fn build(snapshot: Arc<ArcSwap<Snapshot>>) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        // The proxy sets Host itself: the client's, not the endpoint's address.
        .set_host(false)
        .build(Connector { snapshot })
}

/// Opens TCP connections to endpoints, with the connect timeout of the endpoint's pool.
#[derive(Clone)]
pub struct Connector {
    snapshot: Arc<ArcSwap<Snapshot>>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let address = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let timeout = self
            .snapshot
            .load()
            .connect_timeout(&address)
            .unwrap_or(FALLBACK_CONNECT_TIMEOUT);
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(&address))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The body of a request sent upstream: the client's body, streamed. If the client drops the
/// request before reading any of it (the connect failed), the body is handed back through a
/// channel so the request can be retried on another endpoint.
pub struct UpstreamBody {
    inner: Option<Incoming>,
    touched: bool,
    give_back: Option<oneshot::Sender<Incoming>>,
}

impl UpstreamBody {
    /// A body that cannot be reclaimed (no retry possible, or nothing to retry).
    pub fn new(inner: Incoming) -> UpstreamBody {
        UpstreamBody {
            inner: Some(inner),
            touched: false,
            give_back: None,
        }
    }

    /// No body at all (the retry of a request that had none).
    pub fn empty() -> UpstreamBody {
        UpstreamBody {
            inner: None,
            touched: false,
            give_back: None,
        }
    }

    /// A body that comes back through the receiver if it is dropped unread.
    pub fn reclaimable(inner: Incoming) -> (UpstreamBody, oneshot::Receiver<Incoming>) {
        let (tx, rx) = oneshot::channel();
        let body = UpstreamBody {
            inner: Some(inner),
            touched: false,
            give_back: Some(tx),
        };
        (body, rx)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.touched = true;
        match self.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if !self.touched {
            if let (Some(tx), Some(body)) = (self.give_back.take(), self.inner.take()) {
                // The receiver may be gone (the request finished another way): nothing to do.
                let _ = tx.send(body);
            }
        }
    }
}
