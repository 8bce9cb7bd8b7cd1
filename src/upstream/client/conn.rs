//! Connections to upstreams: connecting, a connection's buffers and its one timer, and the idle
//! connections of each endpoint, kept in a lock-free queue and checked without a system call
//! before reuse.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use crossbeam_queue::ArrayQueue;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// An idle connection unused for this long is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint; more are closed when they come back.
pub const IDLE_PER_ENDPOINT: usize = 256;
/// Reads into at least this much free buffer; bodies known to be large read more at once.
pub(super) const READ_SIZE: usize = 16 * 1024;
pub(super) const READ_SIZE_LARGE: usize = 64 * 1024;

/// The idle connections of one endpoint. The queue is allocated when the first connection
/// comes back, so endpoints that never take traffic cost nothing.
#[derive(Default)]
pub struct IdleConns {
    queue: OnceLock<ArrayQueue<(Conn, Instant)>>,
}

impl std::fmt::Debug for IdleConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdleConns({})", self.len())
    }
}

impl IdleConns {
    /// A live idle connection, if there is one.
    pub(super) fn checkout(&self, now: Instant) -> Option<Conn> {
        let queue = self.queue.get()?;
        while let Some((conn, since)) = queue.pop() {
            if now.saturating_duration_since(since) < IDLE_TIMEOUT && conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    pub(super) fn put(&self, conn: Conn) {
        // A full queue closes the connection.
        let queue = self.queue.get_or_init(|| ArrayQueue::new(IDLE_PER_ENDPOINT));
        let _ = queue.push((conn, Instant::now()));
    }

    /// Closes idle connections the upstream has closed or that were idle too long, so they do
    /// not linger half-closed between bursts of traffic.
    pub fn sweep(&self, now: Instant) {
        let Some(queue) = self.queue.get() else {
            return;
        };
        for _ in 0..queue.len() {
            match queue.pop() {
                Some((conn, since)) => {
                    if now.saturating_duration_since(since) < IDLE_TIMEOUT && conn.is_open() {
                        let _ = queue.push((conn, since));
                    }
                }
                None => break,
            }
        }
    }

    /// Idle connections held.
    pub fn len(&self) -> usize {
        self.queue.get().map_or(0, ArrayQueue::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One connection to an upstream, with its buffers (kept across requests).
pub(super) struct Conn {
    pub(super) io: TcpStream,
    /// Bytes read and not yet used.
    pub(super) rbuf: BytesMut,
    /// The request head being written.
    pub(super) wbuf: Vec<u8>,
    /// The deadline of the current request's response head. One timer per connection, moved
    /// to each request's deadline: a later deadline only updates the timer's entry (tokio
    /// re-files it when the old one comes due), where a timer per request would be added to
    /// and taken off the timer wheel each time.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Connects to an upstream.
pub(super) async fn connect(address: &str, timeout: Duration) -> io::Result<TcpStream> {
    let io = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    io.set_nodelay(true)?;
    Ok(io)
}

impl Conn {
    /// A new connection, with a request head in `wbuf`.
    pub(super) fn new(io: TcpStream, wbuf: Vec<u8>) -> Conn {
        Conn {
            io,
            rbuf: BytesMut::with_capacity(READ_SIZE),
            wbuf,
            timer: None,
        }
    }

    /// Sets the deadline of the request about to be sent.
    pub(super) fn arm(&mut self, deadline: Instant) {
        match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
            }
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Whether the deadline set by [`Conn::arm`] has passed; wakes the task when it does.
    pub(super) fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.timer {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    /// Whether an idle connection can take a request: the upstream has not closed it, and
    /// has sent nothing since its last response. Costs a system call only when the socket
    /// became readable while idle.
    pub(super) fn is_open(&self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more bytes into `rbuf`, growing it by `want` when less than a quarter of that is
    /// free. (Responses are split off the front of the buffer, so a buffer is used for many
    /// small responses before a new one is needed.) `Ok(0)` is the end.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < want / 4 {
            self.rbuf.reserve(want);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }

    /// Writes all of `wbuf`.
    pub(super) fn poll_write_head(
        &mut self,
        cx: &mut Context<'_>,
        written: &mut usize,
    ) -> Poll<io::Result<()>> {
        while *written < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::net::TcpListener;

    async fn pair(listener: &TcpListener) -> (Conn, TcpStream) {
        let addr = listener.local_addr().unwrap().to_string();
        let conn = Conn::new(connect(&addr, Duration::from_secs(1)).await.unwrap(), Vec::new());
        (conn, listener.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn idle_connections_the_upstream_closed_or_wrote_to_are_not_handed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idle = IdleConns::default();
        let (a, server_a) = pair(&listener).await;
        let (b, mut server_b) = pair(&listener).await;
        let (c, _server_c) = pair(&listener).await;
        idle.put(a);
        idle.put(b);
        idle.put(c);
        drop(server_a);
        tokio::io::AsyncWriteExt::write_all(&mut server_b, b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        idle.sweep(Instant::now());
        assert_eq!(idle.len(), 1, "only the quiet connection is kept");
        assert!(idle.checkout(Instant::now()).is_some());
        assert!(idle.checkout(Instant::now()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_expire() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idle = IdleConns::default();
        let (a, _sa) = pair(&listener).await;
        let (b, _sb) = pair(&listener).await;
        idle.put(a);
        tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        idle.put(b);
        tokio::time::advance(Duration::from_secs(1)).await;
        idle.sweep(Instant::now());
        assert_eq!(idle.len(), 1, "the older one is closed");
        tokio::time::advance(IDLE_TIMEOUT).await;
        assert!(idle.checkout(Instant::now()).is_none());
    }
}
