//! What switchyard reads from the network is bounded, and its failures are shown. A raw fake
//! Unleash server and a raw fake Prometheus answer well, fail (`500`, garbage), hang, or send
//! an endless body; the proxy reads at most its limit of such an answer (counted in bytes the
//! server managed to send, and in the test process's memory), keeps the last good state, and
//! says so in `/api/config` (or `/api/fleet`) and the metrics. A hanging Unleash server with no
//! cached document delays the start by at most `flagsync::START_TIMEOUT`.

mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GOOD: u8 = 0;
const ERROR: u8 = 1;
const FLOOD: u8 = 2;
const HANG: u8 = 3;

const DOC: &str = r#"{"version": 2, "features": [{"name": "from_server", "enabled": true, "strategies": [{"name": "default"}]}]}"#;

/// A raw server that answers every request as `mode` says, and counts the body bytes it sent.
async fn fake(mode: Arc<AtomicUsize>, good: &'static str) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let sent = Arc::new(AtomicU64::new(0));
    let s = sent.clone();
    let (addr, _) = scripted(move |mut stream| {
        let (mode, sent) = (mode.clone(), s.clone());
        async move {
            loop {
                if !read_head(&mut stream).await {
                    return;
                }
                let answer = match mode.load(Ordering::SeqCst) as u8 {
                    GOOD => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{good}",
                        good.len()
                    ),
                    ERROR => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\n\r\noops!".to_owned(),
                    FLOOD => {
                        // 512 MiB of whitespace around nothing, chunked: the proxy must stop
                        // reading long before the end.
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                            .await;
                        let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
                        for _ in 0..8192 {
                            if stream.write_all(chunk.as_bytes()).await.is_err() {
                                return;
                            }
                            sent.fetch_add(0x10000, Ordering::SeqCst);
                        }
                        return;
                    }
                    _ => {
                        let mut b = [0u8; 1];
                        let _ = stream.read(&mut b).await;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                };
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, sent)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn json(url: &str) -> Value {
    let (_, body) = get(&h1_client(), url).await;
    serde_json::from_slice(&body).unwrap()
}

async fn metrics(proxy: &Proxy) -> String {
    let (_, body) = get(&h1_client(), &proxy.admin_url("/metrics")).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// A proxy in front of one app, its flags from the Unleash server at `server` polled every
/// second, with its config's directory.
async fn proxy_with_flags_from(server: std::net::SocketAddr, up: &Upstream) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(
        &path,
        format!(
            "flags_from = {{ url = \"http://{server}/api/client/features\", interval = \"1s\" }}\n{}",
            config(&[("app", &[up.addr])], "[admin]\nlisten = \"127.0.0.1:0\"\n")
        ),
    )
    .unwrap();
    (Proxy::start_file(&path).await, dir)
}

#[tokio::test]
async fn an_unleash_server_is_read_within_bounds_and_its_failures_shown() {
    let mode = Arc::new(AtomicUsize::new(HANG as usize));
    let (server, sent) = fake(mode.clone(), DOC).await;
    let up = Upstream::start("app").await;
    // A hanging server and no cache: the start waits for it, but not for long.
    let started = Instant::now();
    let (proxy, dir) = proxy_with_flags_from(server, &up).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(6),
        "{took:?}"
    );
    let cfg = json(&proxy.admin_url("/api/config")).await;
    assert_eq!(cfg["flags_source"]["up"], false, "{cfg:#}");
    assert!(
        cfg["flags_source"]["error"]
            .as_str()
            .unwrap()
            .contains("no answer"),
        "{cfg:#}"
    );
    assert!(
        cfg["flags_source"]["serving"]
            .as_str()
            .unwrap()
            .contains("none fetched yet"),
        "{cfg:#}"
    );

    // It answers: its flags are served, and it is shown answering.
    mode.store(GOOD as usize, Ordering::SeqCst);
    let cache = dir.path().join("switchyard.toml.flags.json");
    eventually("the server's document", Duration::from_secs(20), async || {
        json(&proxy.admin_url("/api/config")).await["flags_source"]["up"] == true && cache.exists()
    })
    .await;
    assert!(metrics(&proxy)
        .await
        .contains("switchyard_flags_source_up{source=\"unleash\"} 1"));

    // 512 MiB of whitespace: at most the limit is read (the server could send little more than
    // that before the proxy hung up), memory does not follow, the last good document stays.
    let before = rss_kib();
    mode.store(FLOOD as usize, Ordering::SeqCst);
    eventually("the flood refused", Duration::from_secs(20), async || {
        json(&proxy.admin_url("/api/config")).await["flags_source"]["up"] == false
    })
    .await;
    let cfg = json(&proxy.admin_url("/api/config")).await;
    let error = cfg["flags_source"]["error"].as_str().unwrap();
    assert!(error.contains("more than 16777216 bytes"), "{cfg:#}");
    assert!(
        cfg["flags_source"]["serving"]
            .as_str()
            .unwrap()
            .contains("last good document"),
        "{cfg:#}"
    );
    mode.store(ERROR as usize, Ordering::SeqCst);
    eventually("the 500 shown", Duration::from_secs(20), async || {
        json(&proxy.admin_url("/api/config")).await["flags_source"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("answered 500"))
    })
    .await;
    let flooded = sent.load(Ordering::SeqCst);
    assert!(
        flooded < 40 << 20,
        "the server sent {flooded} bytes before the proxy stopped reading"
    );
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 96 * 1024, "memory grew {grown} KiB");
    assert_eq!(
        std::fs::read_to_string(&cache).unwrap(),
        DOC,
        "the cache keeps the good document"
    );
    let m = metrics(&proxy).await;
    assert!(
        m.contains("switchyard_flags_source_up{source=\"unleash\"} 0"),
        "{m}"
    );
    assert!(
        !m.contains("switchyard_remote_errors_total{reason=\"too_large\",source=\"unleash\"} 0"),
        "{m}"
    );
    // The flag is still served from the last good document.
    let req = http::Request::get(proxy.url("/")).body(empty()).unwrap();
    let (parts, _) = send(&h1_client(), req).await;
    assert_eq!(parts.status, 200);
    assert!(
        up.seen.last_headers.lock().unwrap().as_ref().unwrap()["x-switchyard-flags"]
            .to_str()
            .unwrap()
            .contains("from_server=on")
    );
    proxy.shutdown().await;
}

/// One feature of another shape among good ones: that one is disabled, the rest served (as in
/// a file), not the whole update refused.
#[tokio::test]
async fn a_malformed_flag_in_a_polled_document_disables_that_flag_only() {
    const MIXED: &str = r#"{"version": 2, "features": [
        {"name": "good", "enabled": true, "strategies": [{"name": "default"}]},
        {"name": "bad", "enabled": true, "strategies": "not a list"},
        {"name": "also_good", "enabled": true, "strategies": [{"name": "default"}]}
    ]}"#;
    let mode = Arc::new(AtomicUsize::new(GOOD as usize));
    let (server, _) = fake(mode, MIXED).await;
    let up = Upstream::start("app").await;
    let (proxy, dir) = proxy_with_flags_from(server, &up).await;
    let path = dir.path().join("switchyard.toml");
    eventually("the server's document", Duration::from_secs(20), async || {
        json(&proxy.admin_url("/api/config")).await["flags_source"]["up"] == true
    })
    .await;
    let req = http::Request::get(proxy.url("/")).body(empty()).unwrap();
    let (parts, _) = send(&h1_client(), req).await;
    assert_eq!(parts.status, 200);
    let flags = up.seen.last_headers.lock().unwrap().as_ref().unwrap()["x-switchyard-flags"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        flags.contains("good=on") && flags.contains("also_good=on") && !flags.contains("bad=on"),
        "{flags}"
    );
    // `check` on the cached document says which flag was left disabled, and why.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("feature `bad` is not of Unleash's shape"), "{said}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_prometheus_answer_is_read_within_bounds() {
    let mode = Arc::new(AtomicUsize::new(FLOOD as usize));
    let (prometheus, sent) = fake(
        mode.clone(),
        r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
    )
    .await;
    let up = Upstream::start("app").await;
    let before = rss_kib();
    let proxy = Proxy::start(&config(
        &[("app", &[up.addr])],
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\n[fleet]\nname = \"t\"\nprometheus = \"http://{prometheus}\"\ninterval = \"500ms\"\n"),
    ))
    .await;
    eventually("the flood refused", Duration::from_secs(20), async || {
        json(&proxy.admin_url("/api/fleet")).await["up"] == false
    })
    .await;
    let fleet = json(&proxy.admin_url("/api/fleet")).await;
    assert!(
        fleet["error"]
            .as_str()
            .unwrap()
            .contains("more than 16777216 bytes"),
        "{fleet:#}"
    );
    mode.store(GOOD as usize, Ordering::SeqCst);
    eventually("Prometheus answers again", Duration::from_secs(20), async || {
        json(&proxy.admin_url("/api/fleet")).await["up"] == true
    })
    .await;
    let flooded = sent.load(Ordering::SeqCst);
    assert!(
        flooded < 40 << 20,
        "Prometheus sent {flooded} bytes before the proxy stopped reading"
    );
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 96 * 1024, "memory grew {grown} KiB");
    let m = metrics(&proxy).await;
    assert!(
        !m.contains("switchyard_remote_errors_total{reason=\"too_large\",source=\"prometheus\"} 0"),
        "{m}"
    );
    proxy.shutdown().await;
}
