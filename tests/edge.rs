//! The HTTP edge as an attacker tries it: requests crafted to be read one way by the proxy and
//! another by the upstream, hosts and paths that would route one way and arrive another, and
//! answers an upstream should not be able to pass on. Each test sends raw bytes through the
//! real proxy to a raw upstream that records every byte it receives ([`Recorder`]), which
//! parses them as a typical server would: a smuggled request shows up there as a request.

mod support;

use std::time::Duration;

use http::{Request, Version};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(2);

/// A proxy with one route, `/`, to `upstream`, plus `extra` config.
async fn proxy_to(upstream: std::net::SocketAddr, extra: &str) -> Proxy {
    Proxy::start(&config(&[("blue", &[upstream])], extra)).await
}

/// Sends `request` on a new connection and asserts it is refused with `status` and `reason`,
/// and the connection closed.
async fn refused(proxy: &Proxy, request: &[u8], status: u16, reason: &str) {
    let (answer, closed) = raw(proxy.http.unwrap(), request, WAIT).await;
    let what = String::from_utf8_lossy(request);
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{what:?}: {answer}"
    );
    assert!(
        answer.contains(&format!("x-switchyard-error: {reason}\r\n")),
        "{what:?}: {answer}"
    );
    assert!(closed, "{what:?}: the connection stays open");
}

/// Responses in `text`, as (status, head) pairs.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text[i + 9..i + 12].parse().ok())
        .collect()
}

#[tokio::test]
async fn connection_cannot_remove_content_length_to_smuggle_a_request() {
    let up = Recorder::start(ok_answer).await;
    let proxy = proxy_to(up.addr, "").await;
    // The reproduction: Connection names Content-Length; the body is a whole request.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\nx-switchyard-pool: canary\r\n\r\n";
    let raw_req = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let (answer, _) = raw(proxy.http.unwrap(), raw_req.as_bytes(), WAIT).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "one request reached the upstream: {}", up.text());
    assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("POST", "/"));
    assert_eq!(seen[0].body, smuggled.as_bytes(), "the body arrives as a body");
    assert_eq!(seen[0].get("content-length"), Some(&*smuggled.len().to_string()));
    // The same with Transfer-Encoding and Host named.
    let raw_req = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nConnection: transfer-encoding, host, close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    let (answer, _) = raw(proxy.http.unwrap(), raw_req.as_bytes(), WAIT).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = up.requests();
    assert_eq!(seen.len(), 2, "{}", up.text());
    assert_eq!(seen[1].body, smuggled.as_bytes());
    assert_eq!(seen[1].get("host"), Some("a"));
    assert!(seen.iter().all(|r| r.path == "/"), "{seen:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_h2c_upgrade_is_served_as_plain_http_and_an_unasked_101_opens_no_tunnel() {
    // The upstream switches protocols whatever it is asked, then records what comes.
    let up = Recorder::start(|_| {
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n".to_vec()
    })
    .await;
    let proxy = proxy_to(up.addr, "").await;
    let mut s = tokio::net::TcpStream::connect(proxy.http.unwrap()).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(
        answer.contains("x-switchyard-error: upstream_protocol"),
        "{answer}"
    );
    let first = &up.requests()[0];
    for hop in ["upgrade", "http2-settings", "connection"] {
        assert_eq!(first.get(hop), None, "{hop} reached the upstream: {first:?}");
    }
    // A second request on the same client connection still goes through the proxy.
    let _ = s
        .write_all(b"GET /second HTTP/1.1\r\nHost: a\r\nx-switchyard-pool: canary\r\n\r\n")
        .await;
    let _ = tokio::time::timeout(WAIT, s.read(&mut buf)).await;
    for r in up.requests().iter().skip(1) {
        assert_eq!(r.get("x-switchyard-pool"), Some("blue"), "{r:?}");
        assert!(r.get("x-forwarded-for").is_some(), "{r:?}");
    }
    assert!(!up.text().contains("canary"), "{}", up.text());
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_upstream_host_is_the_one_routing_used() {
    let (www, admin) = (Recorder::start(ok_answer).await, Recorder::start(ok_answer).await);
    let cfg = config(&[("www", &[www.addr]), ("admin", &[admin.addr])], "").replace(
        "path_prefix = \"/admin\"",
        "path_prefix = \"/\"\nhost = \"admin.example.com\"",
    );
    let proxy = Proxy::start(&cfg).await;
    let (answer, _) = raw(
        proxy.http.unwrap(),
        b"GET http://admin.example.com/a HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    assert!(www.requests().is_empty());
    let seen = &admin.requests()[0];
    assert_eq!(seen.all("host"), ["admin.example.com"]);
    assert_eq!(seen.path, "/a", "origin-form upstream");
    // HTTP/2: :authority wins over a host field that says otherwise.
    let req = Request::get("http://admin.example.com/h2")
        .header("host", "www.example.com")
        .body(empty())
        .unwrap();
    let client = h2c_client();
    // Send to the proxy's address while the URI names the admin host.
    let addr = proxy.http.unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    let seen = admin.requests();
    assert_eq!(seen.len(), 2, "routed by :authority");
    assert_eq!(seen[1].all("host"), ["admin.example.com"]);
    drop(client);
    proxy.shutdown().await;
}

#[tokio::test]
async fn missing_duplicate_and_invalid_hosts_are_refused() {
    let up = Recorder::start(ok_answer).await;
    let proxy = proxy_to(up.addr, "").await;
    for bad in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        refused(&proxy, bad, 400, "bad_request").await;
    }
    // HTTP/1.0 may leave Host out: the endpoint's address stands in.
    let (answer, _) = raw(proxy.http.unwrap(), b"GET / HTTP/1.0\r\n\r\n", WAIT).await;
    assert_eq!(&answer[..4], "HTTP");
    assert_eq!(&answer[8..13], " 200 ", "{answer}");
    assert_eq!(up.requests().len(), 1, "{}", up.text());
    assert_eq!(up.requests()[0].all("host"), [up.addr.to_string()]);
    proxy.shutdown().await;
}

#[tokio::test]
async fn request_codings_other_than_chunked_are_refused_and_never_forwarded() {
    let up = Recorder::start(ok_answer).await;
    let proxy = proxy_to(up.addr, "").await;
    refused(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        501,
        "not_implemented",
    )
    .await;
    for bad in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    ] {
        refused(&proxy, bad, 400, "bad_request").await;
    }
    assert!(up.requests().is_empty(), "{}", up.text());
    proxy.shutdown().await;
}

#[tokio::test]
async fn connect_is_refused() {
    let up = Recorder::start(ok_answer).await;
    let proxy = proxy_to(up.addr, "").await;
    let (answer, _) = raw(
        proxy.http.unwrap(),
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("\r\nallow: GET, HEAD, POST"), "{answer}");
    assert!(up.requests().is_empty());
    proxy.shutdown().await;
}

#[tokio::test]
async fn routing_and_the_upstream_see_the_normalized_path() {
    let (blue, evil) = (Recorder::start(ok_answer).await, Recorder::start(ok_answer).await);
    let proxy = Proxy::start(&config(&[("blue", &[blue.addr]), ("evil", &[evil.addr])], "")).await;
    for (target, want) in [
        ("/evil/", "/evil/"),
        ("/x/../evil/", "/evil/"),
        ("/%65vil/", "/evil/"),
        ("/%2e%2e/evil/a?q=/../x", "/evil/a?q=/../x"),
        ("/./evil", "/evil"),
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let (answer, _) = raw(proxy.http.unwrap(), req.as_bytes(), WAIT).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{target}: {answer}");
        assert_eq!(evil.requests().last().unwrap().path, want, "{target}");
    }
    assert_eq!(evil.requests().len(), 5);
    assert!(blue.requests().is_empty(), "{:?}", blue.requests());
    proxy.shutdown().await;
}

/// A raw upstream answering every request with `answer`.
async fn answering(answer: &'static [u8]) -> std::net::SocketAddr {
    scripted(move |mut s| async move {
        while read_head(&mut s).await {
            if s.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await
    .0
}

#[tokio::test]
async fn upstream_answers_that_cannot_pass_on_honestly_are_502() {
    let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
    while big.len() < 70 * 1024 {
        big.extend_from_slice(format!("x-filler-{}: {}\r\n", big.len(), "y".repeat(100)).as_bytes());
    }
    big.extend_from_slice(b"content-length: 2\r\n\r\nok");
    let big: &'static [u8] = Box::leak(big.into_boxed_slice());
    for answer in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nabc"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
        big,
    ] {
        let proxy = proxy_to(answering(answer).await, "").await;
        for client in [h1_client(), h2c_client()] {
            let (parts, _) = get(&client, &proxy.url("/")).await;
            assert_eq!(parts.status, 502, "{:?}", String::from_utf8_lossy(&answer[..60]));
            assert_eq!(parts.headers["x-switchyard-error"], "upstream_protocol");
        }
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn upstream_answers_are_cleaned_on_the_way_out() {
    let addr = answering(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nContent-Length: 2\r\nx-switchyard-error: spoofed\r\n\r\nok",
    )
    .await;
    let proxy = proxy_to(addr, "").await;
    let (text, _) = raw(
        proxy.http.unwrap(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert_eq!(
        text.to_ascii_lowercase().matches("content-length").count(),
        1,
        "{text}"
    );
    assert!(!text.contains("spoofed"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
    for client in [h1_client(), h2c_client()] {
        let (parts, body) = get(&client, &proxy.url("/")).await;
        assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"ok"[..]));
        assert!(parts.headers.get("x-switchyard-error").is_none());
        assert!(parts.headers.get_all("content-length").iter().count() <= 1);
    }
    proxy.shutdown().await;
    // A status with no standard reason gets an empty one, on both server paths.
    let proxy = proxy_to(
        answering(b"HTTP/1.1 599 Whatever\r\ncontent-length: 0\r\n\r\n").await,
        "",
    )
    .await;
    for req in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    ] {
        let (text, _) = raw(proxy.http.unwrap(), req, WAIT).await;
        assert!(text.starts_with("HTTP/1.1 599 \r\n"), "{text:?}");
    }
    proxy.shutdown().await;
}

/// Reads from `s` into `buf` until `buf` holds a whole request head; where the head ends (the
/// blank line's start), or `None` at the end of the connection.
async fn head_end(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end);
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A raw upstream that reads a whole request (head and `Content-Length` body), then writes
/// `answer`.
async fn answering_after_body(answer: &'static [u8]) -> std::net::SocketAddr {
    scripted(move |mut s| async move {
        let mut buf = Vec::new();
        loop {
            let Some(end) = head_end(&mut s, &mut buf).await else {
                return;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            let mut chunk = [0u8; 4096];
            while buf.len() < end + 4 + len {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..end + 4 + len);
            if s.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await
    .0
}

#[tokio::test]
async fn informational_answers_reach_the_client_before_the_final_one() {
    let addr = answering(
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\nconnection: x-hop\r\nx-hop: 1\r\n\r\n\
          HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let proxy = proxy_to(addr, "").await;
    let (text, _) = raw(
        proxy.http.unwrap(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(
        text.starts_with(
            "HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"
        ),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
    // Never to an HTTP/1.0 client (RFC 9110 §15.2).
    let (text, _) = raw(proxy.http.unwrap(), b"GET / HTTP/1.0\r\n\r\n", WAIT).await;
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn expect_100_continue_is_answered_only_when_the_body_is_wanted() {
    let up = Recorder::start(ok_answer).await;
    let proxy = Proxy::start(
        &config(&[("blue", &[up.addr])], "").replace("path_prefix = \"/\"", "path_prefix = \"/up\""),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.http.unwrap()).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(up.requests()[0].body, b"hello");
    assert_eq!(up.requests()[0].get("expect"), None, "the proxy answered it");
    // No route: answered at once, no 100, and the unread body closes the connection.
    let (text, closed) = raw(
        proxy.http.unwrap(),
        b"POST /nowhere HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(closed);
    proxy.shutdown().await;
}

#[tokio::test]
async fn head_http10_and_pipelined_bodies_on_the_own_path() {
    let up = Recorder::start(|r| match r.method.as_str() {
        "HEAD" => b"HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n".to_vec(),
        _ => format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}",
            r.body.len(),
            String::from_utf8_lossy(&r.body)
        )
        .into_bytes(),
    })
    .await;
    let proxy = proxy_to(up.addr, "").await;
    let (text, _) = raw(
        proxy.http.unwrap(),
        b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(text.contains("content-length: 42\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body: {text:?}");
    // HTTP/1.0 with keep-alive: two requests on one connection.
    let (text, closed) = raw(
        proxy.http.unwrap(),
        b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(text.matches("HTTP/1.0 200 OK\r\n").count(), 2, "{text}");
    assert_eq!(text.matches("connection: keep-alive\r\n").count(), 1, "{text}");
    assert!(closed);
    // Pipelined requests with bodies, both framings, answered in order.
    let (text, _) = raw(
        proxy.http.unwrap(),
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nonePOST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nthree",
        WAIT,
    )
    .await;
    assert_eq!(statuses(&text), [200, 200, 200], "{text}");
    let bodies: Vec<String> = up
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies, ["one", "two", "three"]);
    let one = text.find("\r\n\r\none").unwrap();
    let two = text.find("\r\n\r\ntwo").unwrap();
    assert!(one < two && two < text.find("\r\n\r\nthree").unwrap(), "{text}");
    proxy.shutdown().await;
}

/// The upstream error counters of `pool`, summed, from the admin API's metrics.
async fn upstream_errors(proxy: &Proxy, pool: &str) -> u64 {
    let (_, body) = get(&h1_client(), &proxy.admin_url("/metrics")).await;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.starts_with("switchyard_upstream_errors_total") && l.contains(&format!("pool=\"{pool}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_clients_broken_upload_is_the_clients_fault() {
    let addr = answering_after_body(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let extra = "[admin]\nlisten = \"127.0.0.1:0\"\n\n[listen]\nclient_body_timeout = \"600ms\"\n";
    let cfg = config(&[("blue", &[addr])], "")
        .replace("[listen]\n", "[listen]\nclient_body_timeout = \"600ms\"\n")
        .replace("[pools.blue]\n", "[pools.blue]\ntimeout = \"300ms\"\n")
        + &extra[..extra.find("\n\n[listen]").unwrap() + 1];
    // A malformed chunk: 400 at once, not after the pool's timeout (10 s here, so that
    // "at once" has room on a loaded machine), and closed.
    let patient = Proxy::start(&cfg.replace("timeout = \"300ms\"", "timeout = \"10s\"")).await;
    let started = std::time::Instant::now();
    let (text, closed) = raw(
        patient.http.unwrap(),
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        Duration::from_secs(12),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("x-switchyard-error: client_body"), "{text}");
    assert!(
        closed && started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    patient.shutdown().await;
    let proxy = Proxy::start(&cfg).await;
    let addr = proxy.http.unwrap();
    // A stalled upload: 408 after the body timeout.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhalf!")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("x-switchyard-error: client_timeout"), "{text}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // A slow upload that never pauses long: served, though it takes longer than the pool's
    // timeout (which counts from the request being written).
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for b in b"slowly" {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(&[*b]).await.unwrap();
    }
    let mut text = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut text)).await;
    assert!(
        text.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    // A client that goes away mid-upload.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\npart")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        upstream_errors(&proxy, "blue").await,
        0,
        "none of it is the upstream's"
    );
    proxy.shutdown().await;
}

/// An upstream whose answer depends on the path: what the writer differential test sends.
async fn catalogue() -> std::net::SocketAddr {
    scripted(|mut s| async move {
        let mut buf = Vec::new();
        loop {
            let Some(end) = head_end(&mut s, &mut buf).await else {
                return;
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
            let big = "x".repeat(100_000);
            let answer = match path.as_str() {
                "/length" => "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nset-cookie: a=1\r\nset-cookie: b=2\r\ncontent-length: 5\r\n\r\nhello".to_owned(),
                "/chunked" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_owned(),
                "/trailers" => "HTTP/1.1 200 OK\r\ntrailer: x-sum\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 1\r\nx-other: 2\r\n\r\n".to_owned(),
                "/empty" => "HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n".to_owned(),
                "/not-modified" => "HTTP/1.1 304 Not Modified\r\netag: \"e\"\r\ncontent-length: 12\r\n\r\n".to_owned(),
                "/unknown" => "HTTP/1.1 599 Whatever\r\ncontent-length: 2\r\n\r\nhm".to_owned(),
                "/big" => format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{big}", big.len()),
                "/to-close" => {
                    let _ = s.write_all(b"HTTP/1.0 200 OK\r\nx-old: 1\r\n\r\nuntil the end").await;
                    return;
                }
                _ => "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_owned(),
            };
            if head.starts_with("HEAD ") {
                let cut = answer.find("\r\n\r\n").unwrap() + 4;
                if s.write_all(&answer.as_bytes()[..cut]).await.is_err() {
                    return;
                }
            } else if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
    .0
}

/// A raw answer with the fields that differ on every request (`date`, `x-request-id`) blanked.
fn comparable(text: &str) -> String {
    text.split("\r\n")
        .map(|l| {
            let lower = l.to_ascii_lowercase();
            if lower.starts_with("date: ") {
                "date: *"
            } else if lower.starts_with("x-request-id: ") {
                "x-request-id: *"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test]
async fn the_own_path_writes_answers_as_hyper_does() {
    let up = catalogue().await;
    let dead = dead_port().await;
    let cfg = config(&[("blue", &[up]), ("dead", &[dead])], "");
    let (own, hyper) = (
        Proxy::start(&cfg).await,
        Proxy::start(&cfg.replace("[listen]\n", "[listen]\nfast_path = false\n")).await,
    );
    for req in [
        "GET /length HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /trailers HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
        "GET /empty HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /not-modified HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /unknown HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /big HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /to-close HTTP/1.1\r\nHost: a\r\n\r\n",
        "HEAD /length HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST /length HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        "POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "GET /length HTTP/1.0\r\n\r\n",
        "GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "GET /dead HTTP/1.1\r\nHost: a\r\n\r\n",
        "HEAD /dead HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /length HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ] {
        // Each request on its own connection, then a GET that asks to close, so the read ends.
        let both = format!("{req}GET /length HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let (a, _) = raw(own.http.unwrap(), both.as_bytes(), WAIT).await;
        let (b, _) = raw(hyper.http.unwrap(), both.as_bytes(), WAIT).await;
        assert_eq!(comparable(&a), comparable(&b), "for {req:?}");
    }
    own.shutdown().await;
    hyper.shutdown().await;
}

#[tokio::test]
async fn trailers_lose_framing_and_internal_fields_on_http1_and_http2_alike() {
    use http_body_util::BodyExt;
    let addr = answering(
        b"HTTP/1.1 200 OK\r\ntrailer: x-checksum, content-length, x-switchyard-error\r\ntransfer-encoding: chunked\r\n\r\n\
          2\r\nok\r\n0\r\nx-checksum: abc\r\ncontent-length: 5\r\nx-switchyard-error: spoofed\r\nhost: evil\r\n\r\n",
    )
    .await;
    let proxy = proxy_to(addr, "").await;
    for client in [h1_client(), h2c_client()] {
        let req = Request::get(proxy.url("/"))
            .header("te", "trailers")
            .body(empty())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let version = resp.version();
        let collected = resp.into_body().collect().await.expect("the stream is not reset");
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let mut names: Vec<&str> = trailers.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["x-checksum"], "{version:?}");
        assert_eq!(collected.to_bytes(), "ok");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_body_broken_from_its_first_bytes_never_reaches_the_upstream() {
    let up = Recorder::start(ok_answer).await;
    let proxy = proxy_to(up.addr, "").await;
    for bad in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n\r\nGET /x HTTP/1.1\r\n\r\n",
    ] {
        refused(&proxy, bad, 400, "client_body").await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.text(), "", "not even the head went up");
    proxy.shutdown().await;
}
