//! Listeners and connections: HTTP/1.x and prior-knowledge HTTP/2 (h2c) on the plain listener,
//! the protocol ALPN chose on the TLS one (`h2`: HTTP/2 only; `http/1.1` or none: HTTP/1.x
//! only, so HTTP/1 bytes after `h2` are a broken preface, as RFC 9113 §3.3 wants). HTTP/1 is
//! served by switchyard's own path ([`super::h1`]) and HTTP/2 by hyper; with `[listen]
//! fast_path = false`, hyper serves HTTP/1 too. Connections are capped by a semaphore (past
//! the cap, accepting pauses and the listen backlog holds new clients), slow clients and idle
//! connections are cut off by the [`watchdog`] after the header read timeout, and shutdown
//! drains: stop accepting, let in-flight requests finish up to the drain deadline, then
//! return.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::task::AbortOnDropHandle;

use super::h1;
use super::watchdog::{self, Busy, Connections, Counted};
use super::{Peer, Proxy};
use crate::runtime::state::State;

/// Bound listeners and the proxy behind them.
pub struct Server {
    proxy: Arc<Proxy>,
    http: Option<TcpListener>,
    https: Option<TcpListener>,
}

impl Server {
    /// Binds the snapshot's listen addresses (port 0 picks a free port; see
    /// [`Server::http_addr`]).
    pub async fn bind(state: Arc<State>) -> io::Result<Server> {
        let listen = state.snapshot.load().listen.clone();
        let http = match listen.http {
            Some(a) => Some(bind(a, listen.backlog)?),
            None => None,
        };
        let https = match listen.https {
            Some(a) => Some(bind(a, listen.backlog)?),
            None => None,
        };
        Ok(Server {
            proxy: Arc::new(Proxy::new(state)),
            http,
            https,
        })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> io::Result<()> {
        let snapshot = self.proxy.state().snapshot.load_full();
        let listen = &snapshot.listen;
        let builders = Builders::new(listen.max_header_bytes);
        let limit = Arc::new(Semaphore::new(listen.max_connections));
        let connections = Arc::new(Connections::new(listen.header_read_timeout, listen.send_timeout));
        let watchdog = AbortOnDropHandle::new(tokio::spawn(connections.clone().watch()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let ctx = Arc::new(Accepting {
            proxy: self.proxy.clone(),
            builders,
            limit: limit.clone(),
            connections,
            handshake_timeout: listen.header_read_timeout,
            max_head: listen.max_header_bytes,
        });

        let mut loops = Vec::new();
        for (listener, tls) in [(self.http, false), (self.https, true)] {
            if let Some(listener) = listener {
                let addr = listener.local_addr()?;
                tracing::info!(%addr, tls, "listening");
                loops.push(tokio::spawn(accept_loop(
                    listener,
                    tls,
                    ctx.clone(),
                    stop_rx.clone(),
                )));
            }
        }
        shutdown.await;
        tracing::info!("shutting down: no new connections; draining in-flight requests");
        let _ = stop_tx.send(true);
        for l in loops {
            let _ = l.await;
        }
        let open = ctx.connections.drain();
        // Every connection holds a permit until it is closed.
        let all = u32::try_from(listen.max_connections).unwrap_or(u32::MAX);
        match tokio::time::timeout(listen.drain_timeout, limit.acquire_many(all)).await {
            Ok(_) => tracing::info!(connections = open, "drained"),
            Err(_) => tracing::warn!(
                "drain deadline ({:?}) passed with requests still in flight; closing them",
                listen.drain_timeout
            ),
        }
        drop(watchdog);
        Ok(())
    }
}

/// Binds a listener with an accept queue of `backlog` (the kernel caps it at
/// `net.core.somaxconn`).
fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let bound = (|| {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(backlog)
    })();
    bound.map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// hyper's connection builders: any protocol by its first bytes (the plain listener), and one
/// protocol only (the TLS listener, by ALPN).
struct Builders {
    auto: auto::Builder<TokioExecutor>,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(max_header_bytes: usize) -> Builders {
        let header_list = u32::try_from(max_header_bytes).unwrap_or(u32::MAX);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        // No timer for HTTP/1: the watchdog's scans stand in for hyper's header-read timer,
        // which would be re-armed on every request.
        auto.http1().max_buf_size(max_header_bytes).writev(false);
        auto.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(header_list);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1.max_buf_size(max_header_bytes).writev(false);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new()).max_header_list_size(header_list);
        Builders { auto, http1, http2 }
    }
}

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Told by its first bytes (the plain listener).
    Any,
    /// HTTP/1.x only (ALPN `http/1.1`, or none).
    Http1,
    /// HTTP/2 only (ALPN `h2`).
    Http2,
}

/// What every accepted connection needs.
struct Accepting {
    proxy: Arc<Proxy>,
    builders: Builders,
    limit: Arc<Semaphore>,
    connections: Arc<Connections>,
    handshake_timeout: Duration,
    /// `listen.max_header_bytes`: past this, a head is not complete, hyper answers 431.
    max_head: usize,
}

async fn accept_loop(listener: TcpListener, tls: bool, ctx: Arc<Accepting>, mut stop: watch::Receiver<bool>) {
    // Doubles while accepting fails (from 10 ms to 1 s), so a process out of descriptors
    // neither spins nor logs a line per try; reset by the next accepted connection.
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            p = ctx.limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => {
                    backoff = Duration::from_millis(10);
                    pair
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    let resource = crate::upstream::client::local_resource(&e).unwrap_or("other");
                    ctx.proxy.state().metrics.resource_exhausted("accept", resource);
                    if backoff == Duration::from_millis(10) {
                        tracing::error!("accept failed: {e}; backing off (up to 1 s) until it succeeds");
                    }
                    drop(permit);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let peer = Peer::new(addr, tls);
            let open = &ctx.proxy.state().metrics.connections;
            open.inc();
            if tls {
                // Boxed: a TLS connection's state is large, and the task's future would be as
                // large for every plain connection too.
                Box::pin(serve_tls(stream, peer, &ctx)).await;
            } else {
                serve(stream, peer, &ctx, Protocol::Any).await;
            }
            open.dec();
            drop(permit);
        });
    }
}

async fn serve_tls(stream: TcpStream, peer: Peer, ctx: &Accepting) {
    // The live snapshot's certificate: a reload with a new certificate applies to new
    // connections.
    let Some(config) = ctx.proxy.state().snapshot.load().tls.clone() else {
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(ctx.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let protocol = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            serve(tls, peer, ctx, protocol).await
        }
        Ok(Err(e)) => tracing::debug!(peer = %peer.addr, "TLS handshake failed: {e}"),
        Err(_) => tracing::debug!(peer = %peer.addr, "TLS handshake timed out"),
    }
}

/// Serves one connection.
async fn serve<I>(io: I, peer: Peer, ctx: &Accepting, protocol: Protocol)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let watched = ctx.connections.register();
    let proxy = ctx.proxy.clone();
    let busy_conn = watched.clone();
    // The connection counts as busy from the moment hyper hands over a request, so a request
    // dropped early still ends; the phases up to the upstream request run now, before hyper
    // reads on.
    let service = service_fn(move |req| proxy.handle(req, peer, Busy::start(&busy_conn)));
    let mut io = Counted::new(io, watched.clone());
    // HTTP/1 is served here (unless the live config says otherwise); hyper takes HTTP/2, from
    // the preface the own path read.
    let fast_path = ctx.proxy.state().snapshot.load().listen.fast_path;
    let (read, protocol) = match protocol {
        Protocol::Http2 => (bytes::BytesMut::new(), Protocol::Http2),
        _ if !fast_path => (bytes::BytesMut::new(), protocol),
        _ => {
            // Only the plain listener's connections may turn out to be HTTP/2 here: on TLS,
            // ALPN said HTTP/1, and the preface is refused as a version not served.
            let h2 = protocol == Protocol::Any;
            match h1::serve(&mut io, peer, &ctx.proxy, &watched, ctx.max_head, h2).await {
                h1::Served::Closed => return,
                h1::Served::Handoff(read) => (read, Protocol::Http2),
            }
        }
    };
    let io = TokioIo::new(h1::Rewind::new(io, read));
    // hyper-util's automatic builder reads the protocol from the first bytes whatever it is
    // told when it serves upgrades, so a protocol fixed by ALPN gets hyper's own builder.
    // Boxed: a connection's future is as large as its largest await, and most connections
    // never get here.
    let ended = match protocol {
        Protocol::Any => {
            let mut conn = Box::pin(ctx.builders.auto.serve_connection_with_upgrades(io, service));
            watchdog::serve(conn.as_mut(), &watched, |c| c.graceful_shutdown()).await
        }
        Protocol::Http1 => {
            let mut conn = Box::pin(ctx.builders.http1.serve_connection(io, service).with_upgrades());
            watchdog::serve(conn.as_mut(), &watched, |c| c.graceful_shutdown())
                .await
                .map_err(Into::into)
        }
        Protocol::Http2 => {
            let mut conn = Box::pin(ctx.builders.http2.serve_connection(io, service));
            watchdog::serve(conn.as_mut(), &watched, |c| c.graceful_shutdown())
                .await
                .map_err(Into::into)
        }
    };
    if let Err(e) = ended {
        tracing::debug!(peer = %peer.addr, "connection ended with an error: {e}");
    }
}
