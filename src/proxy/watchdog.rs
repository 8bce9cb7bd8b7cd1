//! Client connections' idle watchdog and drain.
//!
//! One task per server scans every open connection four times per `header_read_timeout`
//! (`T`). A connection is *active* while it has a request in flight (from the moment its head
//! is parsed until its response body is done or the request is dropped), while a write to it
//! waits for the client to read, and when something was written to it since the last scan. A
//! connection that is not active for `T` is closed:
//!
//! - an idle keep-alive connection (HTTP/1.1 or HTTP/2) is closed `T` to `1.5 T` after its
//!   last activity (the scans see activity to within a tick);
//! - a client that sends a partial request head and trickles the rest is not active (bytes it
//!   sends do not count), so it is cut off as an idle one;
//! - a slow reader is not cut off while it reads, whether its response is still streaming or
//!   only its last bytes wait to be flushed; one that reads nothing for `send_timeout` (a write
//!   to it blocked, and no write done since) is closed hard, as nginx's `send_timeout` does.
//!
//! Closing is graceful first (HTTP/2 `GOAWAY`; HTTP/1.1 closes if between requests) and hard
//! one tick later if the connection is still there (a partial HTTP/1.1 head). Draining on
//! shutdown asks every connection for the graceful close.
//!
//! This replaces hyper's HTTP/1 header-read timer, which is re-armed on every request; here a
//! request costs a counter update and a reference count at each end, and the timer is the
//! scanning task's alone.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Scans per `header_read_timeout`.
const TICKS: u8 = 4;

const OPEN: u8 = 0;
const GRACEFUL: u8 = 1;
const HARD: u8 = 2;

/// What the watchdog knows of one connection, shared with the connection's task.
#[derive(Default)]
pub struct Conn {
    /// Requests whose response is not done yet.
    in_flight: AtomicU32,
    /// Bumped by every successful write to the client.
    written: AtomicU64,
    /// The last write to the client waits for it to read.
    write_blocked: AtomicBool,
    /// `OPEN`, `GRACEFUL` or `HARD`; only ever raised.
    close: AtomicU8,
    /// Idle for a whole tick: the connection may let go of its buffers.
    shrink: AtomicBool,
    waker: AtomicWaker,
}

impl Conn {
    /// Whether the connection is asked to close (after its request, or at once).
    pub fn closing(&self) -> bool {
        self.close.load(Relaxed) != OPEN
    }

    /// Whether the connection is to close at once, whatever it is doing (the close wakes the
    /// task that last registered in [`Conn::close_asked`]).
    pub fn closed_hard(&self) -> bool {
        self.close.load(Relaxed) == HARD
    }

    /// [`Conn::closing`], and if not, wakes the task of `cx` when it is asked.
    pub fn close_asked(&self, cx: &Context<'_>) -> bool {
        // Registered before the flag is read, so a close asked in between still wakes it.
        self.waker.register(cx.waker());
        self.closing()
    }

    /// Whether the connection has been idle long enough to let go of its buffers (asked once
    /// per idle spell).
    pub fn shrink_asked(&self) -> bool {
        self.shrink.load(Relaxed) && self.shrink.swap(false, Relaxed)
    }

    fn ask_shrink(&self) {
        self.shrink.store(true, Relaxed);
        self.waker.wake();
    }

    fn ask_close(&self, how: u8) {
        if self.close.fetch_max(how, Relaxed) < how {
            self.waker.wake();
        }
    }
}

/// Marks one request in flight on its connection until dropped. Held by the response body
/// (or by the request's future if it never gets one).
pub struct Busy(Arc<Conn>);

impl Busy {
    pub fn start(conn: &Arc<Conn>) -> Busy {
        conn.in_flight.fetch_add(1, Relaxed);
        Busy(conn.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

struct Entry {
    conn: Weak<Conn>,
    last_written: u64,
    idle_ticks: u8,
    /// Scans that found a write blocked with none done since the last.
    stuck_ticks: u32,
}

#[derive(Default)]
struct Registry {
    entries: Vec<Entry>,
    draining: bool,
}

/// The server's open connections.
pub struct Connections {
    registry: Mutex<Registry>,
    tick: Duration,
    /// Scans a blocked write may go without progress before the connection is closed.
    stuck_limit: u32,
}

impl Connections {
    /// `idle_timeout` is the listen section's `header_read_timeout`, `send_timeout` its
    /// `send_timeout` (kept to within one scan: `idle_timeout / 4`).
    pub fn new(idle_timeout: Duration, send_timeout: Duration) -> Connections {
        let tick = (idle_timeout / u32::from(TICKS)).max(Duration::from_millis(1));
        let stuck_limit = send_timeout
            .as_nanos()
            .div_ceil(tick.as_nanos())
            .clamp(1, u32::MAX.into());
        Connections {
            registry: Mutex::default(),
            tick,
            stuck_limit: stuck_limit as u32,
        }
    }

    /// A new connection, watched from now on (and closed at once when draining).
    pub fn register(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn::default());
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if reg.draining {
            conn.ask_close(GRACEFUL);
        }
        reg.entries.push(Entry {
            conn: Arc::downgrade(&conn),
            last_written: 0,
            idle_ticks: 0,
            stuck_ticks: 0,
        });
        conn
    }

    /// Asks every connection to close once its requests are done; connections registered
    /// from now on close at once. Returns how many were open.
    pub fn drain(&self) -> usize {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.draining = true;
        let mut open = 0;
        for c in reg.entries.iter().filter_map(|e| e.conn.upgrade()) {
            c.ask_close(GRACEFUL);
            open += 1;
        }
        open
    }

    /// Scans for ever, every `header_read_timeout / 4`.
    pub async fn watch(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            self.scan();
        }
    }

    fn scan(&self) {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.entries.retain_mut(|e| {
            let Some(c) = e.conn.upgrade() else {
                return false;
            };
            let written = c.written.load(Relaxed);
            let blocked = c.write_blocked.load(Relaxed);
            if blocked && written == e.last_written {
                // The client reads nothing: it has `send_timeout` to start again.
                e.stuck_ticks += 1;
                if e.stuck_ticks >= self.stuck_limit {
                    tracing::debug!("closing a connection whose client has read nothing for send_timeout");
                    c.ask_close(HARD);
                }
            } else {
                e.stuck_ticks = 0;
            }
            let busy = c.in_flight.load(Relaxed) != 0 || blocked;
            if busy || written != e.last_written {
                e.last_written = written;
                e.idle_ticks = 0;
                return true;
            }
            // Idle for at least `idle_ticks` whole ticks.
            e.idle_ticks = e.idle_ticks.saturating_add(1);
            if e.idle_ticks == 1 {
                c.ask_shrink();
            }
            if e.idle_ticks > TICKS {
                c.ask_close(if e.idle_ticks == TICKS + 1 { GRACEFUL } else { HARD });
            }
            true
        });
    }
}

/// Drives a hyper connection until it ends or the watchdog closes it (a hard close ends it
/// with `Ok`).
pub async fn serve<C, E>(
    mut conn: Pin<&mut C>,
    watched: &Conn,
    graceful_shutdown: impl Fn(Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut asked_graceful = false;
    std::future::poll_fn(|cx| {
        // Registered before the flag is read, so a close asked in between still wakes us.
        watched.waker.register(cx.waker());
        match watched.close.load(Relaxed) {
            OPEN => {}
            GRACEFUL if asked_graceful => {}
            GRACEFUL => {
                asked_graceful = true;
                graceful_shutdown(conn.as_mut());
            }
            _ => return Poll::Ready(Ok(())),
        }
        conn.as_mut().poll(cx)
    })
    .await
}

/// A client connection's stream, counting writes for the watchdog.
pub struct Counted<I> {
    io: I,
    conn: Arc<Conn>,
}

impl<I> Counted<I> {
    pub fn new(io: I, conn: Arc<Conn>) -> Counted<I> {
        Counted { io, conn }
    }

    fn wrote<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        // One task writes at a time, so plain stores do (no read-modify-write).
        match r {
            Poll::Ready(Ok(_)) => {
                let w = &self.conn.written;
                w.store(w.load(Relaxed).wrapping_add(1), Relaxed);
                self.conn.write_blocked.store(false, Relaxed);
            }
            Poll::Ready(Err(_)) => self.conn.write_blocked.store(false, Relaxed),
            Poll::Pending => self.conn.write_blocked.store(true, Relaxed),
        }
        r
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Not a write: hyper flushes whenever it wakes, even for bytes a client trickles in.
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.conn.write_blocked.store(r.is_pending(), Relaxed);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const T: Duration = Duration::from_millis(400);

    /// A watchdog scanning on the paused clock.
    fn watching() -> (Arc<Connections>, tokio::task::JoinHandle<()>) {
        let conns = Arc::new(Connections::new(T, T * 10));
        let task = tokio::spawn(conns.clone().watch());
        (conns, task)
    }

    async fn after(d: Duration) {
        tokio::time::sleep(d).await;
    }

    fn state(c: &Conn) -> u8 {
        c.close.load(Relaxed)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_gracefully_after_t_then_hard() {
        let (conns, _task) = watching();
        let c = conns.register();
        after(T - Duration::from_millis(5)).await;
        assert_eq!(state(&c), OPEN, "idle for less than T");
        after(T / 4 + Duration::from_millis(10)).await;
        assert_eq!(state(&c), GRACEFUL, "idle for T to 1.25 T");
        after(T / 4).await;
        assert_eq!(state(&c), HARD, "still there a tick later");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_its_connection_however_long() {
        let (conns, _task) = watching();
        let c = conns.register();
        let busy = Busy::start(&c);
        after(T * 20 + T / 8).await;
        assert_eq!(state(&c), OPEN);
        drop(busy);
        after(T - Duration::from_millis(5)).await;
        assert_eq!(state(&c), OPEN, "idle time counts from the end of the request");
        after(T / 4).await;
        assert_eq!(state(&c), GRACEFUL);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_and_blocked_writes_keep_a_connection_open() {
        let (conns, _task) = watching();
        let c = conns.register();
        // A write every half tick.
        for i in 0..40u64 {
            c.written.store(i, Relaxed);
            after(T / 8).await;
        }
        assert_eq!(state(&c), OPEN);
        // A write that waits for the client to read, while the client reads (slowly).
        c.write_blocked.store(true, Relaxed);
        for i in 0..80u64 {
            c.written.store(100 + i, Relaxed);
            after(T / 4).await;
        }
        assert_eq!(state(&c), OPEN);
        c.write_blocked.store(false, Relaxed);
        after(T * 2).await;
        assert_eq!(state(&c), HARD);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_for_send_timeout_is_closed_hard() {
        let (conns, _task) = watching();
        let c = conns.register();
        let _request = Busy::start(&c);
        c.written.store(1, Relaxed);
        c.write_blocked.store(true, Relaxed);
        // send_timeout is 10 T: the first scan sees the write, the next 40 see nothing move.
        after(T * 10).await;
        assert_eq!(state(&c), OPEN, "before send_timeout");
        after(T / 2).await;
        assert_eq!(state(&c), HARD, "send_timeout passed, to within a scan");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_asks_open_and_new_connections_to_close() {
        let (conns, _task) = watching();
        let open = conns.register();
        let busy = conns.register();
        let _request = Busy::start(&busy);
        assert_eq!(conns.drain(), 2);
        assert_eq!((state(&open), state(&busy)), (GRACEFUL, GRACEFUL));
        assert_eq!(state(&conns.register()), GRACEFUL);
        // Closed connections leave the registry at the next scan.
        drop(open);
        after(T / 4 + Duration::from_millis(1)).await;
        assert_eq!(conns.registry.lock().unwrap().entries.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn serve_shuts_down_gracefully_once_then_ends_on_a_hard_close() {
        let (conns, _task) = watching();
        let c = conns.register();
        let calls = AtomicUsize::new(0);
        let mut never = std::pin::pin!(std::future::pending::<Result<(), ()>>());
        let served = serve(never.as_mut(), &c, |_| {
            calls.fetch_add(1, Relaxed);
        });
        let r = tokio::time::timeout(T * 3, served).await;
        assert_eq!(r, Ok(Ok(())), "ended by the hard close");
        assert_eq!(calls.load(Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn serve_returns_what_the_connection_returns() {
        let (conns, _task) = watching();
        let c = conns.register();
        let mut done = std::pin::pin!(async { Err::<(), _>("reset") });
        assert_eq!(serve(done.as_mut(), &c, |_| {}).await, Err("reset"));
    }
}
