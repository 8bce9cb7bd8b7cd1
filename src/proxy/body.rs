//! The one body type of every response the proxy sends: an upstream body streamed through, or
//! a small locally generated one. Dropping it ends the request: the endpoint's in-flight count
//! goes down and the access-log line is written, with the time to the last byte.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::InFlight;

/// Response body: streamed from upstream or generated here.
pub struct ProxyBody {
    kind: Kind,
    _in_flight: Option<InFlight>,
    log: Option<Box<AccessLog>>,
}

enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

/// What the access-log line says about a request; written when the response body is dropped.
pub struct AccessLog {
    pub start: Instant,
    pub method: Method,
    pub uri: Uri,
    pub route: Option<Arc<str>>,
    pub pool: Option<Arc<str>>,
    pub status: StatusCode,
    pub error: Option<&'static str>,
    pub failed: bool,
}

impl ProxyBody {
    pub fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(Some(bytes)),
            _in_flight: None,
            log: None,
        }
    }

    pub fn empty() -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(None),
            _in_flight: None,
            log: None,
        }
    }

    pub fn upstream(body: Incoming, in_flight: InFlight) -> ProxyBody {
        ProxyBody {
            kind: Kind::Upstream(body),
            _in_flight: Some(in_flight),
            log: None,
        }
    }

    /// Writes `log` when this body is done.
    pub fn with_log(mut self, log: Option<Box<AccessLog>>) -> ProxyBody {
        self.log = log;
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match &mut this.kind {
            Kind::Upstream(b) => {
                let polled = Pin::new(b).poll_frame(cx);
                if let (Poll::Ready(Some(Err(_))), Some(log)) = (&polled, this.log.as_mut()) {
                    log.failed = true;
                }
                polled
            }
            Kind::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(b) => b.is_end_stream(),
            Kind::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(b) => b.size_hint(),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            log.write();
        }
    }
}

impl AccessLog {
    fn write(&self) {
        tracing::info!(
            target: "switchyard::access",
            method = %self.method,
            path = self.uri.path(),
            route = self.route.as_deref().unwrap_or("-"),
            pool = self.pool.as_deref().unwrap_or("-"),
            status = self.status.as_u16(),
            duration_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            error = self.error.unwrap_or("-"),
            body_failed = self.failed,
        );
    }
}
