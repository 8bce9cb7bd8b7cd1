//! What a reload costs the requests and the commands around it.
//!
//! 1. The release binary on `--workers 1` (a current-thread runtime) serves a config with 100
//!    flags; 8 closed-loop clients measure each request's latency for 6 s without reloads, then
//!    for the 5 s in which 20 reloads come, one every 250 ms, each of which changes every flag's
//!    variant weights (so that the reload's diff samples every flag). Prints both p99s and
//!    their ratio.
//! 2. The same binary (default workers) with 10,000 routes and 1,000 flags: the file is
//!    rewritten (every flag changed) and a `rollback` is sent 50 ms later, while the reload
//!    runs. Prints how long the rollback took to answer and the reload to finish.
//!
//! `cargo bench --bench reload`

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::*;

/// A config with `routes` routes (the first on `/`, each over two pools) and `flags` flags
/// at `percent`, with variants weighted `weight` to 1.
fn config(
    port: u16,
    admin: u16,
    up: SocketAddr,
    routes: usize,
    flags: usize,
    percent: u32,
    weight: u32,
) -> String {
    let mut s = format!(
        "[listen]\nhttp = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\naccess = false\n\
         [pools.blue]\nendpoints = [\"{up}\"]\n[pools.green]\nendpoints = [\"{up}\"]\n"
    );
    for i in 0..routes {
        let prefix = if i == 0 { "/".to_owned() } else { format!("/r{i}/") };
        let _ = write!(
            s,
            "[[routes]]\nname = \"r{i}\"\npath_prefix = \"{prefix}\"\nsplit = {{ blue = 90, green = 10 }}\n\
             guard = {{ baseline = \"blue\" }}\n"
        );
    }
    for i in 0..flags {
        let _ = write!(
            s,
            "[[flags]]\nname = \"f{i}\"\npercent = {percent}\nvariants = {{ a = {weight}, b = 1 }}\n"
        );
    }
    s
}

/// Replaces the file as editors do (a new file renamed over it).
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn start(cfg: &std::path::Path, workers: Option<&str>) -> std::process::Child {
    let mut args = vec!["run", "-c", cfg.to_str().unwrap()];
    if let Some(w) = workers {
        args.extend(["--workers", w]);
    }
    std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_up(addr: SocketAddr) {
    let started = Instant::now();
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the proxy did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request on a kept connection; its latency.
async fn request(s: &mut TcpStream, path: &str, method: &str, buf: &mut Vec<u8>) -> Duration {
    let started = Instant::now();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: bench\r\nx-user-id: u{}\r\ncontent-length: 0\r\n\r\n",
        fastrand::u32(..)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the proxy closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            return started.elapsed();
        }
    }
}

/// Runs 8 closed-loop clients until `stop`; every latency.
async fn load(addr: SocketAddr, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let clients = (0..8).map(|_| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut buf = Vec::new();
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                out.push(request(&mut s, "/", "GET", &mut buf).await);
            }
            out
        })
    });
    let mut all = Vec::new();
    for c in futures_util::future::join_all(clients).await {
        all.extend(c.unwrap());
    }
    all.sort();
    all
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() * 99 / 100]
}

async fn post(admin: SocketAddr, path: &str) -> (Duration, String) {
    let mut s = TcpStream::connect(admin).await.unwrap();
    let started = Instant::now();
    let req =
        format!("POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    (started.elapsed(), String::from_utf8_lossy(&out).into_owned())
}

async fn reloads_under_load(up: SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let (port, admin) = (free_port(), free_port());
    std::fs::write(&path, config(port, admin, up, 1, 100, 50, 1)).unwrap();
    let mut proxy = start(&path, Some("1"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_up(addr).await;
    wait_up(admin).await;

    let stop = Arc::new(AtomicBool::new(false));
    let quiet = tokio::spawn(load(addr, stop.clone()));
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let quiet = quiet.await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let busy = tokio::spawn(load(addr, stop.clone()));
    let started = Instant::now();
    let mut longest = Duration::ZERO;
    for i in 0..20 {
        replace(&path, &config(port, admin.port(), up, 1, 100, 50, 2 + i));
        let (took, answer) = post(admin, "/api/reload").await;
        assert!(answer.contains("\"ok\""), "{answer}");
        longest = longest.max(took);
        tokio::time::sleep(Duration::from_millis(250).saturating_sub(took)).await;
    }
    let reloading = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let busy = busy.await.unwrap();
    println!(
        "100 flags, --workers 1: p99 {:.2} ms over {} requests without reloads; {:.2} ms over {} requests during 20 reloads ({:.2} s, the longest {:.0} ms); ratio {:.2}",
        p99(&quiet).as_secs_f64() * 1000.0,
        quiet.len(),
        p99(&busy).as_secs_f64() * 1000.0,
        busy.len(),
        reloading.as_secs_f64(),
        longest.as_secs_f64() * 1000.0,
        p99(&busy).as_secs_f64() / p99(&quiet).as_secs_f64()
    );
    let _ = proxy.kill();
    let _ = proxy.wait();
}

async fn rollback_during_a_large_reload(up: SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let (port, admin) = (free_port(), free_port());
    std::fs::write(&path, config(port, admin, up, 10_000, 1_000, 10, 1)).unwrap();
    let mut proxy = start(&path, None);
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_up(admin).await;
    for round in 0..3 {
        replace(
            &path,
            &config(port, admin.port(), up, 10_000, 1_000, 10, 2 + round),
        );
        let reload = tokio::spawn(post(admin, "/api/reload"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (rollback, answer) = post(admin, &format!("/api/routes/r{}/rollback", 1 + round)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let (reloaded, answer) = reload.await.unwrap();
        assert!(answer.contains("\"ok\""), "{answer}");
        println!(
            "10,000 routes, 1,000 flags: rollback answered in {:.1} ms during a reload that took {:.2} s",
            rollback.as_secs_f64() * 1000.0,
            reloaded.as_secs_f64()
        );
    }
    let _ = proxy.kill();
    let _ = proxy.wait();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let up = upstream().await;
        reloads_under_load(up).await;
        rollback_during_a_large_reload(up).await;
    });
}
