//! The upstream HTTP/1.1 client against upstreams that misbehave on purpose: raw TCP servers
//! that write exactly the bytes each case needs ([`scripted`]), plus the streaming echo of the
//! test upstream. (Malformed and truncated answers are rows of the failure table, in
//! `failures.rs`.)

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_kept_alive_connection_the_upstream_closed_while_idle_is_not_reused() {
    // Answers one request per connection, as if keep-alive, then closes it soon after.
    let (addr, conns) = scripted(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let proxy = Proxy::start(&config(&[("blue", &[addr])], "")).await;
    let client = h1_client();
    for _ in 0..3 {
        let (parts, body) = get(&client, &proxy.url("/")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, "ok");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(conns.load(Ordering::SeqCst), 3, "a new connection each time");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_reused_connection_closed_under_a_request_is_retried_only_when_safe() {
    // The first request on a connection is answered; the second is read, then the connection
    // is closed without an answer: the race of an upstream's keep-alive timeout.
    let (addr, conns) = scripted(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            read_head(&mut s).await;
        }
    })
    .await;
    let proxy = Proxy::start(&config(&[("blue", &[addr])], "")).await;
    let client = h1_client();
    assert_eq!(get(&client, &proxy.url("/")).await.0.status, 200);
    let (parts, body) = get(&client, &proxy.url("/")).await;
    assert_eq!(parts.status, 200, "a GET goes again on a new connection");
    assert_eq!(body, "ok");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    // A POST may have been acted on: it is not sent twice.
    let post = Request::post(proxy.url("/")).body(empty()).unwrap();
    let (parts, _) = send(&client, post).await;
    assert_eq!(parts.status, 502);
    assert_eq!(parts.headers["x-switchyard-error"], "upstream_reset");
    proxy.shutdown().await;
}

#[tokio::test]
async fn bodies_framed_by_close_or_by_chunks_with_extensions_arrive_whole() {
    let (close_addr, _) = scripted(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")
                .await;
            for _ in 0..100 {
                let _ = s.write_all(&[b'x'; 1000]).await;
            }
        }
    })
    .await;
    let (chunk_addr, _) = scripted(|mut s| async move {
        while read_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n")
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = s.write_all(b"6\r\n world\r\n0\r\n\r\n").await;
        }
    })
    .await;
    // The second pool serves /chunks.
    let proxy = Proxy::start(&config(
        &[("close", &[close_addr]), ("chunks", &[chunk_addr])],
        "",
    ))
    .await;
    let client = h1_client();
    let (parts, body) = get(&client, &proxy.url("/")).await;
    assert_eq!(parts.status, 200);
    assert_eq!(body.len(), 100_000, "read until the upstream closed");
    for _ in 0..3 {
        let (parts, body) = get(&client, &proxy.url("/chunks")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, "hello world");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_answer_before_the_request_body_is_read_is_passed_on() {
    // Refuses a large upload after its head, without reading the body.
    let (addr, _) = scripted(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big\n")
                .await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
    .await;
    let proxy = Proxy::start(&config(&[("blue", &[addr])], "")).await;
    let mut c = TcpStream::connect(proxy.http.unwrap()).await.unwrap();
    let total = 64 << 20;
    c.write_all(format!("POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: {total}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (mut rd, mut wr) = c.into_split();
    tokio::spawn(async move {
        let chunk = vec![b'a'; 1 << 16];
        for _ in 0..total / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        while !got.ends_with(b"too big\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "no answer while the body was still coming");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_body_streams_back_while_it_is_still_being_sent() {
    // The upstream answers at once and echoes the body as it arrives: the request body must
    // keep flowing after the response head, or both sides wait for ever.
    let blue = Upstream::start("blue").await;
    let proxy = Proxy::start(&config(&[("blue", &[blue.addr])], "")).await;
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(1);
    let body = StreamBody::new(tokio_stream(rx)).boxed();
    let req = Request::post(proxy.url("/stream-echo")).body(body).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), h1_client().request(req))
        .await
        .expect("the head comes before the body ends")
        .unwrap();
    assert_eq!(resp.headers()["x-streamed"], "1");
    let mut body = resp.into_body();
    // Each piece goes up and comes back before the next is sent.
    for i in 0..50u32 {
        let piece = Bytes::from(format!("piece {i};").repeat(200));
        tx.send(Ok(Frame::data(piece.clone()))).await.unwrap();
        let mut back = Vec::new();
        while back.len() < piece.len() {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("the echo comes back while the upload goes on")
                .unwrap()
                .unwrap();
            back.extend_from_slice(frame.data_ref().unwrap());
        }
        assert_eq!(back, piece);
    }
    drop(tx);
    while let Some(f) = body.frame().await {
        assert!(f.unwrap().data_ref().is_none_or(|d| d.is_empty()));
    }
    proxy.shutdown().await;
}

/// A stream over an mpsc receiver.
fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Python's `http.server` serving `site` on a free port of loopback, once it accepts; its port.
async fn python_app(site: &std::path::Path) -> (u16, Killed) {
    let port = free_port();
    let app = std::process::Command::new("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
        .current_dir(site)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3");
    let app = Killed(app);
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "http.server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (port, app)
}

/// In front of a real app (Python's `http.server`), a health check says why it fails, where an
/// operator looks (`/api/pools`, `switchyard status`), and a redirect passes, as nginx's and
/// HAProxy's checks have it: before, a `301` failed silently and the pool answered
/// `503 no_healthy_endpoint` with nothing saying why.
#[tokio::test]
async fn health_checks_say_why_they_fail_and_a_redirect_passes() {
    let site = tempfile::tempdir().unwrap();
    std::fs::create_dir(site.path().join("status")).unwrap();
    std::fs::write(site.path().join("index.html"), "hello").unwrap();
    let (port, _app) = python_app(site.path()).await;
    let proxy = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n\
         [pools.missing]\nendpoints = [\"127.0.0.1:{port}\"]\n\
         [pools.missing.health]\npath = \"/healthz\"\ninterval = \"100ms\"\nfall = 2\nrise = 1\n\
         [pools.redirects]\nendpoints = [\"127.0.0.1:{port}\"]\n\
         [pools.redirects.health]\npath = \"/status\"\ninterval = \"100ms\"\nfall = 2\nrise = 1\n\
         [[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nsplit = {{ missing = 1 }}\n\
         [[routes]]\nname = \"b\"\nsplit = {{ redirects = 1 }}\n"
    ))
    .await;
    let client = h1_client();
    let pools = async || {
        let (_, body) = get(&client, &proxy.admin_url("/api/pools")).await;
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    let started = std::time::Instant::now();
    loop {
        let p = pools().await;
        let missing = p
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "missing")
            .unwrap();
        if missing["endpoints"][0]["available"] == false {
            assert_eq!(
                missing["endpoints"][0]["check_error"], "GET /healthz answered 404 Not Found",
                "{p:#}"
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{p:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (parts, _) = get(&client, &proxy.url("/a")).await;
    assert_eq!(parts.status, 503);
    // `/status` answers 301 (to `/status/`): passing.
    let p = pools().await;
    let redirects = p
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "redirects")
        .unwrap();
    assert_eq!(redirects["endpoints"][0]["available"], true, "{p:#}");
    assert!(redirects["endpoints"][0]["check_error"].is_null(), "{p:#}");
    let (parts, body) = get(&client, &proxy.url("/index.html")).await;
    assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"hello"[..]));
    // `switchyard status` says it too.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["status", "--admin", &proxy.admin_url("")])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("failing checks: GET /healthz answered 404 Not Found"),
        "{text}"
    );
    proxy.shutdown().await;
}

/// The sample config, as a new user starts from it: in front of a plain app on loopback
/// (Python's `http.server` on blue's address) it serves every request, with no rollout moving
/// anyone and no health check the app cannot pass.
#[tokio::test]
async fn the_sample_config_serves_a_plain_app() {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "plain app").unwrap();
    let (app_port, _app) = python_app(site.path()).await;
    let dead = dead_port().await;
    let (http, admin) = (free_port(), free_port());
    let text = std::fs::read_to_string("config/switchyard.toml")
        .unwrap()
        .replace("http = \"0.0.0.0:8080\"", &format!("http = \"127.0.0.1:{http}\""))
        .replace(
            "listen = \"127.0.0.1:9901\"",
            &format!("listen = \"127.0.0.1:{admin}\""),
        )
        .replace("127.0.0.1:9001", &format!("127.0.0.1:{app_port}"))
        .replace("127.0.0.1:9002", &dead.to_string())
        // Whatever health check the sample has runs fast here, so that it shows within the test.
        .replace("interval = \"5s\"", "interval = \"100ms\"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let client = h1_client();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..200 {
        let req = Request::get(proxy.url("/index.html"))
            .header("x-user-id", format!("user-{i}"))
            .body(empty())
            .unwrap();
        let (parts, body) = send(&client, req).await;
        *statuses.entry(parts.status.as_u16()).or_insert(0) += 1;
        if parts.status == 200 {
            assert_eq!(&body[..], b"plain app");
        }
    }
    // The second endpoint is down: at most the first request it got failed over to the app.
    assert_eq!(statuses.get(&200), Some(&200), "{statuses:?}");
    let (_, routes) = get(&client, &proxy.admin_url("/api/routes")).await;
    let routes: serde_json::Value = serde_json::from_slice(&routes).unwrap();
    assert!(
        routes.as_array().unwrap().iter().all(|r| r["rollout"].is_null()),
        "{routes:#}"
    );
    proxy.shutdown().await;
}
