//! OFREP on the proxy's listener: for the same user, single and bulk evaluations equal what the
//! proxy put in `x-switchyard-flags` upstream, over HTTP/1.1 and h2c; the request's own
//! identity stands in for a missing targetingKey; errors, ETags and limits as the protocol
//! says; without `[ofrep]` the paths are proxied like any other.

mod support;

use http::Request;
use serde_json::{json, Value};
use support::*;

const FLAGS: &str = "[identity]\nfrom = [\"header:x-user-id\"]\n\
    [[flags]]\nname = \"beta\"\npercent = 50\nusers = [\"vip\"]\n\
    [[flags]]\nname = \"checkout\"\nvariants = { control = 50, treatment = 50 }\n\
    [[flags]]\nname = \"everyone\"\npercent = 100\n\
    [[flags]]\nname = \"later\"\nstart = \"2999-01-01T00:00:00Z\"\n";

async fn post(
    client: &Client,
    proxy: &Proxy,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (http::response::Parts, Value) {
    let mut req = Request::post(proxy.url(path)).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (parts, body) = send(client, req.body(full(body.to_owned())).unwrap()).await;
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (parts, v)
}

type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

/// `name=token` pairs of the header the upstream got.
fn header_values(up: &Upstream) -> Vec<(String, String)> {
    let h = up.seen.last_headers.lock().unwrap().clone().unwrap();
    h["x-switchyard-flags"]
        .to_str()
        .unwrap()
        .split(", ")
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The token an OFREP evaluation stands for in the header.
fn token(e: &Value) -> String {
    match &e["value"] {
        Value::Bool(b) => (if *b { "on" } else { "off" }).to_owned(),
        Value::String(s) => s.clone(),
        v => panic!("unexpected value {v}"),
    }
}

#[tokio::test]
async fn evaluations_equal_the_header_for_the_same_user() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&config(
        &[("app", &[up.addr])],
        &format!("{FLAGS}[ofrep]\nenabled = true\n"),
    ))
    .await;
    for client in [h1_client(), h2c_client()] {
        for i in 0..40 {
            let user = format!("user-{i}");
            let req = Request::get(proxy.url("/"))
                .header("x-user-id", &user)
                .body(empty())
                .unwrap();
            assert_eq!(send(&client, req).await.0.status, 200);
            let header = header_values(&up);
            let ctx = json!({ "context": { "targetingKey": user } }).to_string();
            let (parts, bulk) = post(&client, &proxy, "/ofrep/v1/evaluate/flags", &ctx, &[]).await;
            assert_eq!(parts.status, 200, "{bulk}");
            assert_eq!(parts.headers["content-type"], "application/json");
            let from_ofrep: Vec<(String, String)> = bulk["flags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e["key"].as_str().unwrap().to_owned(), token(e)))
                .collect();
            assert_eq!(from_ofrep, header, "{user}");
            for (name, value) in &header {
                let (parts, one) = post(
                    &client,
                    &proxy,
                    &format!("/ofrep/v1/evaluate/flags/{name}"),
                    &ctx,
                    &[],
                )
                .await;
                assert_eq!(parts.status, 200, "{one}");
                assert_eq!(&token(&one), value);
                assert_eq!(one["key"], name.as_str());
            }
            // No body: the request's own identity, as the proxy reads it.
            let (_, own) = post(
                &client,
                &proxy,
                "/ofrep/v1/evaluate/flags",
                "",
                &[("x-user-id", &user)],
            )
            .await;
            assert_eq!(own["flags"], bulk["flags"]);
        }
    }
    // The upstream saw the page requests only.
    assert_eq!(up.hits(), 80);
    proxy.shutdown().await;
}

#[tokio::test]
async fn reasons_errors_etags_and_limits() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&config(
        &[("app", &[up.addr])],
        &format!("{FLAGS}[ofrep]\nenabled = true\n"),
    ))
    .await;
    let client = h1_client();
    let ctx = |k: &str| json!({ "context": { "targetingKey": k } }).to_string();
    let (_, v) = post(&client, &proxy, "/ofrep/v1/evaluate/flags/beta", &ctx("vip"), &[]).await;
    assert_eq!(
        (v["value"].clone(), v["reason"].clone(), v["variant"].clone()),
        (json!(true), json!("TARGETING_MATCH"), json!("on"))
    );
    let (_, v) = post(
        &client,
        &proxy,
        "/ofrep/v1/evaluate/flags/everyone",
        &ctx("x"),
        &[],
    )
    .await;
    assert_eq!(
        (v["value"].clone(), v["reason"].clone()),
        (json!(true), json!("STATIC"))
    );
    let (_, v) = post(&client, &proxy, "/ofrep/v1/evaluate/flags/later", &ctx("x"), &[]).await;
    assert_eq!(
        (v["value"].clone(), v["reason"].clone()),
        (json!(false), json!("DISABLED"))
    );
    let (_, v) = post(
        &client,
        &proxy,
        "/ofrep/v1/evaluate/flags/checkout",
        &ctx("x"),
        &[],
    )
    .await;
    assert!(v["value"] == "control" || v["value"] == "treatment", "{v}");
    assert_eq!(v["reason"], "SPLIT");

    // Errors, in OFREP's shape.
    let (parts, v) = post(&client, &proxy, "/ofrep/v1/evaluate/flags/nope", &ctx("x"), &[]).await;
    assert_eq!(
        (parts.status.as_u16(), v["errorCode"].clone(), v["key"].clone()),
        (404, json!("FLAG_NOT_FOUND"), json!("nope"))
    );
    let (parts, v) = post(&client, &proxy, "/ofrep/v1/evaluate/flags/beta", "{}", &[]).await;
    assert_eq!(
        (parts.status.as_u16(), v["errorCode"].clone()),
        (400, json!("TARGETING_KEY_MISSING"))
    );
    let (parts, v) = post(&client, &proxy, "/ofrep/v1/evaluate/flags/everyone", "{}", &[]).await;
    assert_eq!(
        (parts.status.as_u16(), v["value"].clone()),
        (200, json!(true)),
        "a flag the same for everyone needs no key"
    );
    let (parts, v) = post(&client, &proxy, "/ofrep/v1/evaluate/flags", "{}", &[]).await;
    assert_eq!(parts.status, 200);
    let missing: Vec<&str> = v["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["errorCode"] == "TARGETING_KEY_MISSING")
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(missing, ["beta", "checkout"]);
    let (parts, v) = post(&client, &proxy, "/ofrep/v1/evaluate/flags", "{not json", &[]).await;
    assert_eq!(
        (parts.status.as_u16(), v["errorCode"].clone()),
        (400, json!("PARSE_ERROR"))
    );
    let (parts, v) = post(
        &client,
        &proxy,
        "/ofrep/v1/evaluate/flags",
        r#"{"context": {"targetingKey": 7}}"#,
        &[],
    )
    .await;
    assert_eq!(
        (parts.status.as_u16(), v["errorCode"].clone()),
        (400, json!("INVALID_CONTEXT"))
    );
    let big = format!(r#"{{"context": {{"targetingKey": "{}"}}}}"#, "k".repeat(70_000));
    let (parts, _) = post(&client, &proxy, "/ofrep/v1/evaluate/flags", &big, &[]).await;
    assert_eq!(parts.status, 413);
    let (parts, _) = get(&client, &proxy.url("/ofrep/v1/evaluate/flags")).await;
    assert_eq!(
        (parts.status.as_u16(), parts.headers["allow"].to_str().unwrap()),
        (405, "POST")
    );

    // The bulk answer's ETag: the same answer again is 304; another user's is not.
    let (parts, first) = post(&client, &proxy, "/ofrep/v1/evaluate/flags", &ctx("u1"), &[]).await;
    let etag = parts.headers["etag"].to_str().unwrap().to_owned();
    let (parts, _) = post(
        &client,
        &proxy,
        "/ofrep/v1/evaluate/flags",
        &ctx("u1"),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(parts.status, 304);
    assert_eq!(parts.headers["etag"].to_str().unwrap(), etag);
    let mut other = None;
    for i in 0..50 {
        let (p, v) = post(
            &client,
            &proxy,
            "/ofrep/v1/evaluate/flags",
            &ctx(&format!("o{i}")),
            &[("if-none-match", &etag)],
        )
        .await;
        if v["flags"] != first["flags"] {
            other = Some(p.status);
            break;
        }
    }
    assert_eq!(
        other,
        Some(http::StatusCode::OK),
        "a different answer is sent in full"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn without_ofrep_its_paths_are_proxied() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&config(&[("app", &[up.addr])], FLAGS)).await;
    let (parts, body) = get(&h1_client(), &proxy.url("/ofrep/v1/evaluate/flags")).await;
    assert_eq!(parts.status, 200);
    assert_eq!(&body[..], b"app");
    assert_eq!(up.hits(), 1);
    proxy.shutdown().await;
}

/// The value of one series in the admin API's metrics, 0 when absent.
async fn metric(proxy: &Proxy, series: &str) -> u64 {
    let (_, body) = get(&h1_client(), &proxy.admin_url("/metrics")).await;
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// OFREP is answered by the proxy itself, but a stalled body is timed out as a proxied
/// upload's is: with every connection slot held by an OFREP request that sent 1 byte of 100,
/// each gets `408` after `client_body_timeout` and its slot frees, so a legitimate request
/// is served (before, the slots were held with no end and every other client waited). Over
/// HTTP/2 too. Host rules, metrics and the access log's record are a proxied request's.
#[tokio::test]
async fn ofrep_requests_get_the_edges_timeouts_and_rules() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("app").await;
    let cfg = config(&[("app", &[up.addr])], FLAGS).replace(
        "[listen]\n",
        "[listen]\nmax_connections = 4\nclient_body_timeout = \"700ms\"\n",
    ) + "[ofrep]\nenabled = true\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let proxy = Proxy::start(&cfg).await;
    let addr = proxy.http.unwrap();
    let started = std::time::Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /ofrep/v1/evaluate/flags HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        stalled.push(s);
    }
    // The fourth slot: an HTTP/2 connection whose OFREP stream stalls the same way.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://{addr}/ofrep/v1/evaluate/flags"))
        .header("content-length", "100")
        .body(())
        .unwrap();
    let (h2_response, mut h2_body) = h2.send_request(req, false).unwrap();
    h2_body.send_data(bytes::Bytes::from_static(b"{"), false).unwrap();
    for mut s in stalled {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a stalled OFREP body is timed out")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("x-switchyard-error: client_timeout"), "{text}");
        assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
    }
    let h2_status = tokio::time::timeout(std::time::Duration::from_secs(10), h2_response)
        .await
        .expect("a stalled OFREP stream is timed out")
        .unwrap()
        .status();
    assert_eq!(h2_status, 408);
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(600), "{took:?}");
    // The slots are free: a legitimate request is served.
    let client = h1_client();
    let body = json!({"context": {"targetingKey": "u1"}}).to_string();
    let (parts, v) = post(&client, &proxy, "/ofrep/v1/evaluate/flags", &body, &[]).await;
    assert_eq!(parts.status, 200, "{v}");
    // The request filter: a request with two Hosts is refused, as a proxied one is.
    let (text, _) = raw(
        addr,
        b"POST /ofrep/v1/evaluate/flags HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 2\r\n\r\n{}",
        std::time::Duration::from_secs(2),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // Metrics: every answer counted under the ofrep handler.
    let ok = metric(
        &proxy,
        "switchyard_local_requests_total{class=\"2xx\",handler=\"ofrep\"}",
    )
    .await;
    let timeouts = metric(
        &proxy,
        "switchyard_local_requests_total{class=\"4xx\",handler=\"ofrep\"}",
    )
    .await;
    assert_eq!((ok, timeouts), (1, 5), "1 answer, 4 timeouts and 1 refused");
    assert_eq!(up.hits(), 0);
    proxy.shutdown().await;
}
