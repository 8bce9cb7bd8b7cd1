//! What a mirror costs the client: the latency of GETs on a route without a mirror, and on
//! routes mirroring every request to a shadow that answers, to one that never answers (its
//! mirrors in flight fill up, then requests are not mirrored), and to one that is down.
//!
//! Starts the release binary (one worker) in front of in-process upstreams, sends
//! `MIRROR_REQUESTS` (default 20,000) sequential GETs per route on one kept-alive connection,
//! in rounds that alternate the routes, and prints each route's mean, p50 and p99 against the
//! unmirrored route's. `cargo bench --bench mirror`.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::*;

/// A shadow that reads requests and never answers.
async fn hanging() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// One GET on `s`, timed.
async fn get(s: &mut TcpStream, path: &str, user: usize) -> Duration {
    let started = Instant::now();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\nx-user-id: u{user}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"ok") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the proxy closed the connection");
        got.extend_from_slice(&buf[..n]);
    }
    started.elapsed()
}

fn main() {
    let n: usize = std::env::var("MIRROR_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (up, shadow, hang) = (upstream().await, upstream().await, hanging().await);
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let port = free_port();
        let mut cfg = tempfile::NamedTempFile::new().unwrap();
        let mut text = format!(
            "[listen]\nhttp = \"127.0.0.1:{port}\"\n[log]\naccess = false\n[identity]\nfrom = [\"header:x-user-id\"]\n\
             [pools.app]\nendpoints = [\"{up}\"]\n[pools.shadow]\nendpoints = [\"{shadow}\"]\n\
             [pools.hanging]\nendpoints = [\"{hang}\"]\ntimeout = \"600s\"\n[pools.dead]\nendpoints = [\"{dead}\"]\n\
             [[routes]]\nname = \"plain\"\npath_prefix = \"/plain\"\nsplit = {{ app = 1 }}\n"
        );
        for (name, pool) in [("answers", "shadow"), ("hangs", "hanging"), ("down", "dead")] {
            text.push_str(&format!(
                "[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nsplit = {{ app = 1 }}\n[routes.mirror]\npool = \"{pool}\"\n"
            ));
        }
        write!(cfg, "{text}").unwrap();
        let (mut proxy, addr) = start_proxy(cfg.path(), port).await;
        let routes = ["plain", "answers", "hangs", "down"];
        let mut conns = Vec::new();
        for _ in routes {
            conns.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(n); routes.len()];
        // Warm up, then rounds of 1,000 per route, alternating, so drift hits every route alike.
        for (i, r) in routes.iter().enumerate() {
            for u in 0..500 {
                get(&mut conns[i], &format!("/{r}/x"), u).await;
            }
        }
        for round in 0..n.div_ceil(1000) {
            for (i, r) in routes.iter().enumerate() {
                for u in 0..1000.min(n - round * 1000) {
                    let t = get(&mut conns[i], &format!("/{r}/x"), round * 1000 + u).await;
                    times[i].push(t);
                }
            }
        }
        let stats = |t: &mut Vec<Duration>| {
            t.sort();
            let mean = t.iter().sum::<Duration>() / t.len() as u32;
            (mean, t[t.len() / 2], t[t.len() * 99 / 100])
        };
        let base = stats(&mut times[0].clone());
        println!("{n} GETs per route, one connection each, mirroring every request:");
        for (i, r) in routes.iter().enumerate() {
            let (mean, p50, p99) = stats(&mut times[i]);
            println!(
                "  {r:<8} mean {:>7.1} µs ({:.2}x)  p50 {:>7.1} µs ({:.2}x)  p99 {:>7.1} µs ({:.2}x)",
                mean.as_secs_f64() * 1e6,
                mean.as_secs_f64() / base.0.as_secs_f64(),
                p50.as_secs_f64() * 1e6,
                p50.as_secs_f64() / base.1.as_secs_f64(),
                p99.as_secs_f64() * 1e6,
                p99.as_secs_f64() / base.2.as_secs_f64(),
            );
        }
        let _ = proxy.kill();
        let _ = proxy.wait();
    });
}
