//! Memory an idle keep-alive connection holds in the proxy.
//!
//! Starts the release binary in front of an in-process upstream, opens `IDLE_CONNECTIONS`
//! (default 10,000) client connections that each send one request and read its answer, then
//! keeps them open and idle until the proxy has let go of idle connections' buffers (one
//! watchdog tick: a quarter of `header_read_timeout`, here 20 s), and reads the proxy's
//! resident memory before and after. Prints the growth per connection.
//!
//! `cargo bench --bench idle` (the file-descriptor limit must allow twice the connections).

use std::io::Write;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::*;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the proxy runs");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One connection, one request answered; the connection is kept.
async fn open(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nx-user-id: u\r\n\r\n")
        .await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"ok") {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(s)
}

fn main() {
    let n: usize = std::env::var("IDLE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let up = upstream().await;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cfg = tempfile::NamedTempFile::new().unwrap();
        write!(
            cfg,
            "[listen]\nhttp = \"127.0.0.1:{port}\"\nheader_read_timeout = \"80s\"\nmax_connections = {}\n\
             [log]\naccess = false\n[pools.app]\nendpoints = [\"{up}\"]\n\
             [[routes]]\nname = \"app\"\nsplit = {{ app = 100 }}\n",
            n + 100
        )
        .unwrap();
        let (mut proxy, addr) = start_proxy(cfg.path(), port).await;
        // Warm up: the allocator's and the runtime's first arenas.
        let warm: Vec<TcpStream> = futures_util::future::join_all((0..100).map(|_| open(addr)))
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        drop(warm);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(proxy.id());
        let mut conns = Vec::with_capacity(n);
        for batch in 0..n.div_ceil(500) {
            let size = 500.min(n - batch * 500);
            let opened = futures_util::future::join_all((0..size).map(|_| open(addr))).await;
            for c in opened {
                conns.push(c.expect("a connection"));
            }
        }
        let busy = rss_kib(proxy.id());
        // A watchdog tick is a quarter of the header read timeout (20 s): idle connections let
        // go of their buffers at the first tick they are idle through.
        tokio::time::sleep(Duration::from_secs(45)).await;
        let idle = rss_kib(proxy.id());

        println!(
            "{n} idle keep-alive connections: proxy RSS {before} KiB before, {busy} KiB just after their requests, {idle} KiB once idle"
        );
        println!(
            "per connection: {:.2} KiB just after the request, {:.2} KiB idle",
            (busy.saturating_sub(before)) as f64 / n as f64,
            (idle.saturating_sub(before)) as f64 / n as f64
        );
        drop(conns);
        let _ = proxy.kill();
        let _ = proxy.wait();
    });
}
