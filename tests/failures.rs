//! Each row of the failure table (DESIGN §8) through the real proxy: what the client gets, and
//! that the proxy keeps serving afterwards.

mod support;

use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn connect_failure_is_retried_on_another_endpoint() {
    let blue = Upstream::start("blue").await;
    let dead = dead_port().await;
    let cfg = config(
        &[("blue", &[dead, blue.addr])],
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .replace("endpoints = [", "balance = \"round_robin\"\nendpoints = [");
    let proxy = Proxy::start(&cfg).await;
    // A client that sends no Host: the endpoint's address stands in. One of these two starts
    // on the dead endpoint (before it is ejected); its retry names the endpoint it goes to.
    for _ in 0..2 {
        let (answer, _) = raw(
            proxy.http.unwrap(),
            b"GET / HTTP/1.0\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        let host = blue.seen.last_headers.lock().unwrap().as_ref().unwrap()["host"].clone();
        assert_eq!(host, blue.addr.to_string().as_str());
    }
    let client = h1_client();
    for i in 0..10 {
        // Half of these start on the dead endpoint; all succeed, bodies included.
        let req = Request::post(proxy.url("/upload"))
            .body(full(vec![b'a'; 1000 + i]))
            .unwrap();
        let (parts, body) = send(&client, req).await;
        assert_eq!(parts.status, 200, "{body:?}");
        let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(got["len"], 1000 + i);
        let (parts, _) = get(&client, &proxy.url("/")).await;
        assert_eq!(parts.status, 200);
    }
    assert_eq!(blue.hits(), 22);
    // Every answer was good, but the dead endpoint failed at least once before it was ejected:
    // the pool's connect errors say so.
    let (_, text) = get(&client, &proxy.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&text);
    let connect: u64 = text
        .lines()
        .find(|l| l.starts_with(r#"switchyard_upstream_errors_total{kind="connect",pool="blue"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no connect errors counted:\n{text}"));
    assert!(connect >= 1, "{connect}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn connect_failure_everywhere_is_502() {
    let (a, b) = (dead_port().await, dead_port().await);
    let proxy = Proxy::start(&config(&[("blue", &[a, b])], "")).await;
    let (parts, body) = get(&h1_client(), &proxy.url("/")).await;
    assert_eq!(parts.status, 502);
    assert_eq!(parts.headers["x-switchyard-error"], "upstream_connect");
    assert!(String::from_utf8_lossy(&body).contains("could not connect to pool blue"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn dead_endpoints_answer_502_and_a_retry_into_an_ejected_one_is_no_crash() {
    let (a, b) = (dead_port().await, dead_port().await);
    let proxy = Proxy::start(&config(
        &[("blue", &[a, b])],
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    ))
    .await;
    let client = h1_client();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let (parts, _) = get(&client, &proxy.url("/")).await;
        *seen
            .entry((
                parts.status.as_u16(),
                parts.headers["x-switchyard-error"].to_str().unwrap().to_owned(),
            ))
            .or_insert(0) += 1;
    }
    // One endpoint is ejected; the other cannot be (passive ejection spares half the pool), so
    // its failures retry into the ejected one, find nothing, and answer with the connect error.
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec![((502, "upstream_connect".to_owned()), 30)]
    );
    // The gauge follows within a guard tick: exactly one endpoint ejected.
    let healthy = async || {
        let (_, metrics) = get(&client, &proxy.admin_url("/metrics")).await;
        let metrics = String::from_utf8_lossy(&metrics).into_owned();
        let mut states: Vec<String> = metrics
            .lines()
            .filter(|l| l.starts_with("switchyard_endpoint_healthy"))
            .map(|l| l[l.len() - 1..].to_owned())
            .collect();
        states.sort();
        (states, metrics)
    };
    support::eventually("one endpoint shown ejected", Duration::from_secs(5), async || {
        healthy().await.0 == ["0", "1"]
    })
    .await;
    let (states, metrics) = healthy().await;
    assert_eq!(states, ["0", "1"], "exactly one endpoint ejected: {metrics}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let blue = Upstream::start("blue").await;
    let cfg =
        config(&[("blue", &[blue.addr])], "").replace("endpoints = [", "timeout = \"300ms\"\nendpoints = [");
    let proxy = Proxy::start(&cfg).await;
    let client = h1_client();
    let timed_out = |parts: &http::response::Parts, started: Instant| {
        assert_eq!(parts.status, 504);
        assert_eq!(parts.headers["x-switchyard-error"], "upstream_timeout");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    };
    // On a new upstream connection.
    let started = Instant::now();
    let (parts, _) = get(&client, &proxy.url("/sleep/3000")).await;
    timed_out(&parts, started);
    let (parts, _) = get(&client, &proxy.url("/sleep/10")).await;
    assert_eq!(parts.status, 200, "a fast request still passes");
    // The connection's timer came due while it sat idle; its next requests get their own
    // deadlines, and the reused connection still times out a slow answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (parts, _) = get(&client, &proxy.url("/sleep/10")).await;
    assert_eq!(
        parts.status, 200,
        "a deadline that passed while idle is not the next one"
    );
    let started = Instant::now();
    let (parts, _) = get(&client, &proxy.url("/sleep/3000")).await;
    timed_out(&parts, started);
    for _ in 0..3 {
        let (parts, _) = get(&client, &proxy.url("/sleep/200")).await;
        assert_eq!(
            parts.status, 200,
            "requests within the timeout, one after another"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_that_hangs_up_or_answers_garbage_is_502() {
    // Reads the request, then closes without answering.
    let (hangs_up, _) = scripted(|mut s| async move {
        read_head(&mut s).await;
    })
    .await;
    let (garbage, _) = scripted(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s.write_all(b"HTTP/1.1 two hundred\r\n\r\n").await;
        }
    })
    .await;
    let (truncated, _) = scripted(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-le").await;
        }
    })
    .await;
    for (addr, reason) in [
        (hangs_up, "upstream_reset"),
        (garbage, "upstream_protocol"),
        (truncated, "upstream_protocol"),
    ] {
        let proxy = Proxy::start(&config(&[("blue", &[addr])], "")).await;
        let (parts, _) = get(&h1_client(), &proxy.url("/")).await;
        assert_eq!(parts.status, 502);
        assert_eq!(parts.headers["x-switchyard-error"], reason);
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_proxy_carries_on() {
    let blue = Upstream::start("blue").await;
    let proxy = Proxy::start(&config(&[("blue", &[blue.addr])], "")).await;
    let addr = proxy.http.unwrap();
    let wait = Duration::from_secs(2);
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: h\r\nx-nul: a\x00b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
    ] {
        let (answer, closed) = raw(addr, bad, wait).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(bad)
        );
        assert!(
            closed,
            "connection closed after {:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(blue.hits(), 0);
    assert_eq!(get(&h1_client(), &proxy.url("/")).await.0.status, 200);
    proxy.shutdown().await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_and_closes() {
    let blue = Upstream::start("blue").await;
    let proxy = Proxy::start(&config(&[("blue", &[blue.addr])], "")).await;
    // Read as Content-Length, the body would be "0\r\n\r\n" plus a hidden second request;
    // read as chunked, the hidden request is the next one. The proxy reads it neither way:
    // 400, and the connection closes, so the hidden request reaches nobody (DESIGN §8).
    for raw_req in [
        &b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 45\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 45\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        let (answer, closed) = raw(proxy.http.unwrap(), raw_req, Duration::from_secs(2)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("x-switchyard-error: bad_request"), "{answer}");
        assert!(closed, "the connection is closed after a CL+TE request");
        assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    }
    assert_eq!(blue.hits(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn oversized_head_is_431() {
    let blue = Upstream::start("blue").await;
    let cfg =
        config(&[("blue", &[blue.addr])], "").replace("[listen]\n", "[listen]\nmax_header_bytes = 16384\n");
    let proxy = Proxy::start(&cfg).await;
    let mut req = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 0..400 {
        req.extend_from_slice(format!("x-filler-{i}: {}\r\n", "y".repeat(60)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let (answer, closed) = raw(proxy.http.unwrap(), &req, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(closed);
    assert_eq!(blue.hits(), 0);
    proxy.shutdown().await;
}

/// An upstream, and a proxy in front of it whose header read (and idle) timeout is `t`.
async fn proxy_with_header_read_timeout(t: &str) -> (Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let cfg = config(&[("blue", &[blue.addr])], "").replace(
        "[listen]\n",
        &format!("[listen]\nheader_read_timeout = \"{t}\"\n"),
    );
    (blue, Proxy::start(&cfg).await)
}

/// Asserts that `closed` (a connection ending) resolves between 400 ms and 4 s from now, as it
/// should for a 500 ms idle timeout.
async fn closes_in_bounds<T>(what: &str, closed: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .unwrap_or_else(|_| panic!("the proxy never closed the idle {what} connection"));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(4),
        "{what}: closed after {took:?}"
    );
    out
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_read_timeout() {
    let (_blue, proxy) = proxy_with_header_read_timeout("500ms").await;
    let addr = proxy.http.unwrap();

    // HTTP/1.1: one request, then nothing.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"blue") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let n = closes_in_bounds("HTTP/1.1", s.read(&mut buf)).await;
    assert_eq!(n.unwrap_or(0), 0, "nothing more is sent before the close");

    // HTTP/2: one stream, then nothing; the proxy says GOAWAY and the connection ends.
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let resp = sender
        .send_request(Request::get(proxy.url("/")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let ended = closes_in_bounds("HTTP/2", driver).await;
    assert!(ended.unwrap().is_ok(), "a clean close");
    proxy.shutdown().await;
}

#[tokio::test]
async fn requests_and_slow_readers_outlast_the_header_read_timeout() {
    let (_blue, proxy) = proxy_with_header_read_timeout("300ms").await;

    // An upstream slower than the idle timeout, over HTTP/1.1 and HTTP/2; and (at the same
    // time) a slow reader.
    let slow = async |client| {
        let (parts, body) = get(&client, &proxy.url("/sleep/1200")).await;
        assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"blue"[..]));
    };
    tokio::join!(slow(h1_client()), slow(h2c_client()), slow_reader(&proxy));
    proxy.shutdown().await;
}

async fn slow_reader(proxy: &Proxy) {
    // A client with a small receive buffer that stops reading three times, each time for
    // three idle timeouts, and still gets every byte.
    const TOTAL: u64 = 16 << 20;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 << 10).unwrap();
    let io = TokioIo::new(sock.connect(proxy.http.unwrap()).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get(format!("/download/{TOTAL}"))
                .header("host", "h")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    let mut pauses = [TOTAL / 2, TOTAL * 3 / 4, TOTAL - (64 << 10)]
        .into_iter()
        .peekable();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|e| panic!("cut off after {got} bytes: {e}"));
        got += frame.data_ref().map_or(0, |d| d.len() as u64);
        if pauses.next_if(|&at| got >= at).is_some() {
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
    }
    assert_eq!(got, TOTAL);
}

#[tokio::test]
async fn slow_client_is_cut_off_after_the_header_read_timeout() {
    let (blue, proxy) = proxy_with_header_read_timeout("500ms").await;
    let mut s = tokio::net::TcpStream::connect(proxy.http.unwrap()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), async {
        // Trickle one header byte pair a while, never finishing the head.
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"x").await.is_err() {
                return 0;
            }
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
                return n;
            }
        }
    })
    .await
    .expect("the proxy closed the connection");
    let took = started.elapsed();
    assert!(
        n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
        "{:?}",
        &buf[..n]
    );
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    assert_eq!(blue.hits(), 0);
    proxy.shutdown().await;
}

/// Reads `s` to its end; the bytes read, and whether it ended cleanly.
async fn read_to_end(s: &mut tokio::net::TcpStream) -> (u64, bool) {
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0u64;
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (got, true),
            Ok(n) => got += n as u64,
            Err(_) => return (got, false),
        }
    }
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_closed_after_the_send_timeout() {
    const TOTAL: u64 = 64 << 20;
    let blue = Upstream::start("blue").await;
    // Both paths at once.
    let path = async |fast_path: bool| {
        let cfg = config(&[("blue", &[blue.addr])], "").replace(
            "[listen]\n",
            &format!(
                "[listen]\nheader_read_timeout = \"400ms\"\nsend_timeout = \"1s\"\nfast_path = {fast_path}\n"
            ),
        );
        let proxy = Proxy::start(&cfg).await;
        let request = format!("GET /download/{TOTAL} HTTP/1.1\r\nhost: h\r\n\r\n");
        // Reads nothing for 2.5 s: the proxy's writes block within a few MiB, and stay blocked.
        let mut s = tokio::net::TcpStream::connect(proxy.http.unwrap()).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (got, _) = tokio::time::timeout(Duration::from_secs(10), read_to_end(&mut s))
            .await
            .expect("closed");
        assert!(
            got < TOTAL / 2,
            "fast_path {fast_path}: read {got} of {TOTAL} bytes"
        );

        // One that pauses for less than the send timeout, again and again, gets it all.
        let mut s = tokio::net::TcpStream::connect(proxy.http.unwrap()).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        let mut pauses = 0;
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "fast_path {fast_path}: cut off after {got} bytes");
            got += n as u64;
            if got > TOTAL {
                break;
            }
            if pauses < 3 && got > (pauses + 1) * (TOTAL / 4) {
                pauses += 1;
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
        }
        assert_eq!(pauses, 3);
        proxy.shutdown().await;
    };
    tokio::join!(path(true), path(false));
}

#[tokio::test]
async fn connections_past_the_limit_wait_for_a_free_slot() {
    let blue = Upstream::start("blue").await;
    let cfg = config(&[("blue", &[blue.addr])], "").replace("[listen]\n", "[listen]\nmax_connections = 2\n");
    let proxy = Proxy::start(&cfg).await;
    let addr = proxy.http.unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s); // keep-alive: each holds a slot
    }
    let third = tokio::spawn(async move {
        raw(
            addr,
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "the third connection is not served while two are open"
    );
    drop(held.pop());
    let (answer, _) = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    proxy.shutdown().await;
}

/// The accept queue `ss` reports for a listening port (its Send-Q column).
fn backlog_of(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2), installed by .ci/run");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no listener on {port}: {text}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_listen_backlog_is_nginxs_default_or_the_configured_one() {
    let blue = Upstream::start("blue").await;
    let proxy = Proxy::start(&config(&[("blue", &[blue.addr])], "")).await;
    assert_eq!(backlog_of(proxy.http.unwrap().port()), 511);
    proxy.shutdown().await;
    let cfg = config(&[("blue", &[blue.addr])], "").replace("[listen]\n", "[listen]\nbacklog = 77\n");
    let proxy = Proxy::start(&cfg).await;
    assert_eq!(backlog_of(proxy.http.unwrap().port()), 77);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_that_breaks_off_its_answers_is_ejected() {
    use http_body_util::BodyExt;
    let good = Upstream::start("good").await;
    // Every answer promises 100 bytes, sends 7 and hangs up.
    let (bad, bad_conns) = scripted(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                .await;
        }
    })
    .await;
    let cfg = config(&[("app", &[good.addr, bad])], "")
        .replace("endpoints = [", "balance = \"round_robin\"\nendpoints = [");
    let proxy = Proxy::start(&cfg).await;
    let client = h1_client();
    let mut broken = 0;
    for _ in 0..100 {
        let resp = client
            .request(Request::get(proxy.url("/")).body(empty()).unwrap())
            .await
            .unwrap();
        broken += usize::from(resp.into_body().collect().await.is_err());
    }
    assert!(broken <= 6, "{broken} of 100 answers broken off");
    assert_eq!(
        bad_conns.load(std::sync::atomic::Ordering::SeqCst),
        broken,
        "then the endpoint was ejected"
    );
    proxy.shutdown().await;
}
