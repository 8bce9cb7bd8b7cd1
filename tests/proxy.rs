//! The proxy end to end: real upstreams on loopback, the proxy in-process on port 0, real
//! HTTP/1.1, h2c, HTTPS (h2 and http/1.1 by ALPN) and WebSocket clients.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;

#[tokio::test]
async fn http1_keep_alive_reuses_connections_both_sides() {
    let blue = Upstream::start("blue").await;
    let proxy = Proxy::start(&config(&[("blue", &[blue.addr])], "")).await;
    let client = h1_client();
    for _ in 0..20 {
        let (parts, body) = get(&client, &proxy.url("/")).await;
        assert_eq!(parts.status, 200);
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(body, "blue");
    }
    assert_eq!(blue.hits(), 20);
    assert_eq!(
        blue.seen.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one pooled upstream connection"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_on_the_plain_listener() {
    let blue = Upstream::start("blue").await;
    let proxy = Proxy::start(&config(&[("blue", &[blue.addr])], "")).await;
    let client = h2c_client();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (client, url) = (client.clone(), proxy.url("/echo"));
        tasks.push(tokio::spawn(async move { get(&client, &url).await }));
    }
    for t in tasks {
        let (parts, body) = t.await.unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(parts.version, Version::HTTP_2);
        let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
        // HTTP/2 has no Host header: the proxy sends the :authority upstream as Host.
        assert_eq!(seen["host"][0], proxy.http.unwrap().to_string());
        assert_eq!(seen["via"][0], "2.0 switchyard");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn routes_by_host_path_and_header() {
    let (blue, green, canary) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
        Upstream::start("canary").await,
    );
    let cfg = format!(
        r#"[listen]
http = "127.0.0.1:0"
[pools.blue]
endpoints = ["{}"]
[pools.green]
endpoints = ["{}"]
[pools.canary]
endpoints = ["{}"]
[[routes]]
name = "shop"
host = "shop.example.com"
split = {{ blue = 100 }}
[[routes]]
name = "shop-api"
host = "shop.example.com"
path_prefix = "/api"
split = {{ green = 100 }}
[[routes]]
name = "acme"
host = "*.example.com"
headers = {{ "x-tenant" = "acme" }}
split = {{ canary = 100 }}
"#,
        blue.addr, green.addr, canary.addr
    );
    let proxy = Proxy::start(&cfg).await;
    let client = h1_client();
    let ask = |host: &str, path: &str, tenant: Option<&str>| {
        let mut b = Request::get(proxy.url(path)).header("host", host);
        if let Some(t) = tenant {
            b = b.header("x-tenant", t);
        }
        send(&client, b.body(empty()).unwrap())
    };
    assert_eq!(ask("shop.example.com", "/", None).await.1, "blue");
    assert_eq!(ask("SHOP.example.com:8080", "/api/cart", None).await.1, "green");
    assert_eq!(ask("eu.example.com", "/", Some("acme")).await.1, "canary");
    let (parts, body) = ask("eu.example.com", "/", None).await;
    assert_eq!(parts.status, 404);
    assert_eq!(parts.headers["x-switchyard-error"], "no_route");
    assert!(String::from_utf8_lossy(&body).contains("no route matched"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn forwarding_headers_are_added_and_spoofed_ones_dropped() {
    let blue = Upstream::start("blue").await;
    let proxy = Proxy::start(&config(&[("blue", &[blue.addr])], "")).await;
    let client = h1_client();
    let req = Request::get(proxy.url("/echo"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-request-id", "req-42")
        .header("x-switchyard-pool", "canary")
        .header("X-Switchyard-Flags", "admin=on")
        .header("via", "1.1 edge")
        .body(empty())
        .unwrap();
    let (parts, body) = send(&client, req).await;
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["x-forwarded-for"][0], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"][0], "http");
    assert_eq!(seen["x-forwarded-host"][0], "shop.example.com");
    assert_eq!(seen["host"][0], "shop.example.com");
    assert_eq!(seen["via"][0], "1.1 edge, 1.1 switchyard");
    assert_eq!(seen["x-request-id"][0], "req-42");
    assert!(seen.get("x-switchyard-flags").is_none(), "{seen}");
    assert_eq!(parts.headers["x-request-id"], "req-42");
    assert_eq!(parts.headers["via"], "1.1 switchyard");

    // Without an id, one is generated and sent both ways.
    let (parts, body) = get(&client, &proxy.url("/echo")).await;
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let id = parts.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(seen["x-request-id"][0], id);
    proxy.shutdown().await;
}

#[tokio::test]
async fn headers_left_out_in_the_config_pass_as_the_client_sent_them() {
    let blue = Upstream::start("blue").await;
    let dead = dead_port().await;
    let lean = "[headers]\nflags = \"x-flags\"\npool = \"\"\nbucket = \"\"\nforwarded = false\nvia = false\nrequest_id = false\n\n[[flags]]\nname = \"beta\"\npercent = 100\n";
    let proxy = Proxy::start(&config(&[("blue", &[blue.addr]), ("dead", &[dead])], lean)).await;
    let client = h1_client();
    let req = Request::get(proxy.url("/echo"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "req-42")
        .header("x-switchyard-pool", "canary")
        .header("x-flags", "admin=on")
        .header("via", "1.1 edge")
        .body(empty())
        .unwrap();
    let (parts, body) = send(&client, req).await;
    assert_eq!(parts.status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["x-forwarded-for"], serde_json::json!(["203.0.113.7"]));
    assert_eq!(seen["x-forwarded-proto"], serde_json::json!(["https"]));
    assert!(seen.get("x-forwarded-host").is_none(), "{seen}");
    assert_eq!(seen["via"], serde_json::json!(["1.1 edge"]));
    assert_eq!(seen["x-request-id"], serde_json::json!(["req-42"]));
    // Still never passed from the client: the internal prefix and the flags header's name.
    assert!(seen.get("x-switchyard-pool").is_none(), "{seen}");
    assert!(seen.get("x-switchyard-bucket").is_none(), "{seen}");
    assert_eq!(seen["x-flags"], serde_json::json!(["beta=on"]));
    assert!(parts.headers.get("via").is_none());
    assert!(parts.headers.get("x-request-id").is_none());

    // A local error carries no generated id either.
    let (parts, _) = get(&client, &proxy.url("/dead")).await;
    assert_eq!(parts.status, 502);
    assert!(parts.headers.get("x-request-id").is_none());
    proxy.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let blue = Upstream::start("blue").await;
    let proxy = Proxy::start(&config(&[("blue", &[blue.addr])], "")).await;
    // Raw, so that nothing between the test and the proxy tidies the headers.
    let (answer, _) = raw(
        proxy.http.unwrap(),
        b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nUpgrade: h2c\r\nx-end-to-end: kept\r\n\r\n",
        std::time::Duration::from_millis(500),
    )
    .await;
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let seen: serde_json::Value = serde_json::from_str(body).unwrap();
    for h in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(seen.get(h).is_none(), "{h} reached the upstream: {seen}");
    }
    assert_eq!(seen["x-end-to-end"][0], "kept");

    let (answer, _) = raw(
        proxy.http.unwrap(),
        b"GET /hop HTTP/1.1\r\nHost: h\r\n\r\n",
        std::time::Duration::from_millis(500),
    )
    .await;
    let head = answer.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    for h in [
        "x-resp-hop:",
        "keep-alive:",
        "proxy-connection:",
        "upgrade:",
        "connection: x-resp-hop",
    ] {
        assert!(!head.contains(h), "{h} reached the client:\n{head}");
    }
    assert!(head.contains("x-end-to-end: kept"), "{head}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn chunked_bodies_and_trailers_pass_through_both_ways() {
    let blue = Upstream::start("blue").await;
    let proxy = Proxy::start(&config(&[("blue", &[blue.addr])], "")).await;
    let client = h1_client();

    let resp = client
        .request(
            Request::get(proxy.url("/trailers"))
                .header("te", "trailers")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(
        collected.trailers().expect("trailers arrive")["x-checksum"],
        "abc123"
    );
    assert_eq!(collected.to_bytes(), "part one;part two");

    let frames = vec![
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(b"hello "))),
        Ok(Frame::data(Bytes::from_static(b"world"))),
        Ok(Frame::trailers({
            let mut t = http::HeaderMap::new();
            t.insert("x-digest", "d1".parse().unwrap());
            t
        })),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let req = Request::post(proxy.url("/upload"))
        .header("trailer", "x-digest")
        .body(body)
        .unwrap();
    let (_, answer) = send(&client, req).await;
    let got: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(got["len"], 11);
    assert_eq!(got["trailers"]["x-digest"], "d1");
    proxy.shutdown().await;
}

/// One response per request, in order, from a raw HTTP/1.1 conversation: status and head
/// (lowercased) of each, and the bodies run together.
fn responses(text: &str) -> Vec<(u16, String)> {
    text.split("HTTP/1.1 ")
        .skip(1)
        .map(|r| (r[..3].parse().unwrap(), r.to_ascii_lowercase()))
        .collect()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_the_handoff() {
    let blue = Upstream::start("blue").await;
    let proxy = Proxy::start(&config(&[("blue", &[blue.addr])], "")).await;
    // In one write: the first request waits upstream while the others arrive behind it; the
    // POST (a body) is handed to hyper with the bytes after it.
    let conversation = b"GET /sleep/100 HTTP/1.1\r\nHost: h\r\n\r\n\
        GET /status/204 HTTP/1.1\r\nHost: h\r\n\r\n\
        GET /first HTTP/1.1\r\nHost: h\r\n\r\n\
        POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
        GET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let (answer, closed) = raw(
        proxy.http.unwrap(),
        conversation,
        std::time::Duration::from_secs(5),
    )
    .await;
    let got = responses(&answer);
    let statuses: Vec<u16> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200, 204, 200, 200, 200], "{answer}");
    for (_, r) in &got {
        assert!(r.contains("\r\ndate: "), "{r:?}");
        assert!(r.contains("\r\nx-request-id: "), "{r:?}");
    }
    assert!(
        got[0].1.contains("content-length: ") && got[0].1.ends_with("\r\n\r\nblue"),
        "{:?}",
        got[0]
    );
    assert!(
        !got[1].1.contains("content-length") && got[1].1.ends_with("\r\n\r\n"),
        "{:?}",
        got[1]
    );
    assert!(got[2].1.ends_with("\r\n\r\nblue"), "{:?}", got[2]);
    assert!(got[3].1.contains("\"len\":5"), "{:?}", got[3]);
    assert!(got[4].1.contains("\r\nconnection: close\r\n"), "{:?}", got[4]);
    assert!(closed, "the connection closes after the request that asked");
    assert_eq!(
        *blue.seen.paths.lock().unwrap(),
        ["/sleep/100", "/status/204", "/first", "/upload", "/after"]
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_plain_request_asking_to_close_is_answered_then_closed() {
    let blue = Upstream::start("blue").await;
    let proxy = Proxy::start(&config(&[("blue", &[blue.addr])], "")).await;
    let (answer, closed) = raw(
        proxy.http.unwrap(),
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\nHost: h\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    let got = responses(&answer);
    assert_eq!(got.len(), 1, "{answer}");
    assert!(got[0].1.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(got[0].1.ends_with("\r\n\r\nblue"), "{answer}");
    assert!(closed);
    assert_eq!(blue.hits(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_request_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that never answers, and reports when the proxy hangs up on it.
    let (hung_up_tx, mut hung_up) = tokio::sync::mpsc::unbounded_channel();
    let (upstream, _) = scripted(move |mut s| {
        let tx = hung_up_tx.clone();
        async move {
            read_head(&mut s).await;
            let mut b = [0u8; 1];
            let _ = tx.send(matches!(s.read(&mut b).await, Ok(0) | Err(_)));
        }
    })
    .await;
    let proxy = Proxy::start(&config(&[("blue", &[upstream])], "")).await;
    let mut client = tokio::net::TcpStream::connect(proxy.http.unwrap()).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(client);
    let hung = tokio::time::timeout(std::time::Duration::from_secs(3), hung_up.recv()).await;
    assert_eq!(
        hung,
        Ok(Some(true)),
        "the upstream request ends when its client leaves"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws = ws_upstream().await;
    // On the own HTTP/1 path and on hyper's.
    for fast_path in ["true", "false"] {
        let cfg = config(&[("ws", &[ws])], "")
            .replace("[listen]\n", &format!("[listen]\nfast_path = {fast_path}\n"));
        let proxy = Proxy::start(&cfg).await;
        let stream = tokio::net::TcpStream::connect(proxy.http.unwrap()).await.unwrap();
        let (mut socket, resp) =
            tokio_tungstenite::client_async(format!("ws://{}/chat", proxy.http.unwrap()), stream)
                .await
                .unwrap();
        assert_eq!(resp.status(), 101);
        for i in 0..5 {
            socket.send(Message::text(format!("hello {i}"))).await.unwrap();
            let echo = socket.next().await.unwrap().unwrap();
            assert_eq!(echo.into_text().unwrap().as_str(), format!("hello {i}"));
        }
        socket.close(None).await.unwrap();
        // An open tunnel is in flight: a drain would wait for it, up to the drain deadline.
        drop(socket);
        proxy.shutdown().await;
    }
}

mod tls {
    use super::*;
    use hyper_util::rt::TokioIo;
    use rustls_pki_types::ServerName;

    struct Certs {
        _dir: tempfile::TempDir,
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        der: rustls_pki_types::CertificateDer<'static>,
    }

    fn certs() -> Certs {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server.key");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        Certs {
            der: ck.cert.der().clone(),
            cert,
            key,
            _dir: dir,
        }
    }

    async fn connect(
        proxy: &Proxy,
        certs: &Certs,
        alpn: &[u8],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certs.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(proxy.https.unwrap())
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        tls
    }

    async fn proxy_with_tls(certs: &Certs, upstream: std::net::SocketAddr) -> Proxy {
        let cfg = config(&[("blue", &[upstream])], "").replace(
            "http = \"127.0.0.1:0\"",
            &format!(
                "http = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\ntls = {{ cert = {:?}, key = {:?} }}",
                certs.cert, certs.key
            ),
        );
        Proxy::start(&cfg).await
    }

    #[tokio::test]
    async fn alpn_decides_the_protocol() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let certs = certs();
        let blue = Upstream::start("blue").await;
        let proxy = proxy_with_tls(&certs, blue.addr).await;
        let read_all = |mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>| async move {
            let mut out = Vec::new();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), tls.read_to_end(&mut out)).await;
            out
        };
        // ALPN chose HTTP/1.1: an HTTP/2 preface is refused, not served.
        let mut tls = connect(&proxy, &certs, b"http/1.1").await;
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let out = read_all(tls).await;
        assert!(
            out.starts_with(b"HTTP/1.1 505"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        // ALPN chose h2: HTTP/1.1 bytes are a broken preface, and get no HTTP/1.1 answer.
        let mut tls = connect(&proxy, &certs, b"h2").await;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let out = read_all(tls).await;
        assert!(
            !out.windows(8).any(|w| w == b"HTTP/1.1"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(blue.hits(), 0);
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn https_with_h2_by_alpn() {
        let blue = Upstream::start("blue").await;
        let certs = certs();
        let proxy = proxy_with_tls(&certs, blue.addr).await;
        let tls = connect(&proxy, &certs, b"h2").await;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get("https://localhost/echo").body(empty()).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(seen["x-forwarded-proto"][0], "https");
        assert_eq!(seen["host"][0], "localhost");
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn https_with_http11_by_alpn() {
        let blue = Upstream::start("blue").await;
        let certs = certs();
        let proxy = proxy_with_tls(&certs, blue.addr).await;
        let tls = connect(&proxy, &certs, b"http/1.1").await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        for _ in 0..3 {
            let req = Request::get("/")
                .header("host", "localhost")
                .body(empty())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.version(), Version::HTTP_11);
            assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "blue");
        }
        proxy.shutdown().await;
    }
}
