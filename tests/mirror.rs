//! Parallel runs through the proxy, with real upstreams: a shadow that answers differently in
//! status, in a header and in one JSON field gives those mismatch kinds; reordered keys and the
//! ignored fields do not; the shadow gets the same request with `x-switchyard-mirror: 1` and the
//! client gets the primary's answer; POSTs are not mirrored unless `methods` says so; a shadow
//! that hangs or is down costs the client nothing, and drops and errors are counted; a body over
//! `max_body` is not mirrored.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::TcpListener;

/// What a JSON upstream got: `(method, path, x-switchyard-mirror, body)` per request.
type Log = Arc<Mutex<Vec<(String, String, Option<String>, Bytes)>>>;

/// An upstream answering `status`, `x-v: version`, and a JSON body whose `total` is `total`,
/// with an id and a time that differ on every answer; `reorder` writes the keys in another
/// order and with other whitespace.
async fn json_upstream(
    status: u16,
    version: &'static str,
    total: u32,
    reorder: bool,
) -> (std::net::SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let counter = Arc::new(AtomicUsize::new(0));
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (l, counter) = (l.clone(), counter.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (l, counter) = (l.clone(), counter.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let mirror = parts
                            .headers
                            .get("x-switchyard-mirror")
                            .map(|v| v.to_str().unwrap().to_owned());
                        l.lock().unwrap().push((
                            parts.method.to_string(),
                            parts.uri.to_string(),
                            mirror,
                            body,
                        ));
                        let n = counter.fetch_add(1, Ordering::SeqCst) + 1000 * usize::from(reorder);
                        let text = if reorder {
                            format!("{{ \"items\" : [ {{\"n\":\"a\", \"id\": {n}}} ],\n  \"generated_at\": {n}, \"total\": {total} }}")
                        } else {
                            format!("{{\"total\":{total},\"generated_at\":{n},\"items\":[{{\"id\":{n},\"n\":\"a\"}}]}}")
                        };
                        let resp = http::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .header("x-v", version)
                            .header("x-request-seq", n.to_string())
                            .body(Full::new(Bytes::from(text)))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, log)
}

/// The mirror counts of `route`, by result.
fn counts(proxy: &Proxy, route: &str) -> Vec<(&'static str, u64)> {
    let snap = proxy.state.snapshot.load();
    let r = snap.route_by_name(route).unwrap();
    snap.mirror(r).unwrap().stats.counts()
}

fn count(proxy: &Proxy, route: &str, result: &str) -> u64 {
    counts(proxy, route)
        .into_iter()
        .find(|(r, _)| *r == result)
        .unwrap()
        .1
}

const IGNORE: &str = "ignore = [\"x-request-seq\", \"$.generated_at\", \"$.items[*].id\"]";

#[tokio::test]
async fn each_kind_of_difference_is_told_apart_and_ignored_fields_are_not_differences() {
    let (primary, primary_log) = json_upstream(200, "1", 2, false).await;
    let (status, _) = json_upstream(500, "1", 2, false).await;
    let (header, _) = json_upstream(200, "2", 2, false).await;
    let (body, _) = json_upstream(200, "1", 3, false).await;
    let (same, same_log) = json_upstream(200, "1", 2, true).await;
    let mut text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[log]\naccess = false\n[identity]\nfrom = [\"header:x-user-id\"]\n\
         [pools.primary]\nendpoints = [\"{primary}\"]\n[pools.status]\nendpoints = [\"{status}\"]\n\
         [pools.header]\nendpoints = [\"{header}\"]\n[pools.body]\nendpoints = [\"{body}\"]\n[pools.same]\nendpoints = [\"{same}\"]\n"
    );
    for shadow in ["status", "header", "body", "same"] {
        text.push_str(&format!(
            "[[routes]]\nname = \"{shadow}\"\npath_prefix = \"/{shadow}\"\nsplit = {{ primary = 1 }}\n\
             [routes.mirror]\npool = \"{shadow}\"\n{IGNORE}\n"
        ));
    }
    let proxy = Proxy::start(&text).await;
    let client = h1_client();
    for shadow in ["status", "header", "body", "same"] {
        for i in 0..10 {
            let req = Request::get(proxy.url(&format!("/{shadow}/cart?i={i}")))
                .header("x-user-id", format!("u{i}"))
                .body(empty())
                .unwrap();
            let (parts, body) = send(&client, req).await;
            // The client always gets the primary's answer.
            assert_eq!(parts.status, 200);
            assert_eq!(parts.headers["x-v"], "1");
            assert!(String::from_utf8_lossy(&body).contains("\"total\":2"));
        }
    }
    for (route, kind) in [
        ("status", "status"),
        ("header", "header"),
        ("body", "body"),
        ("same", "match"),
    ] {
        eventually(
            &format!("{route}: 10 × {kind}"),
            Duration::from_secs(10),
            async || count(&proxy, route, kind) == 10,
        )
        .await;
        let all: u64 = counts(&proxy, route).iter().map(|(_, n)| n).sum();
        assert_eq!(all, 10, "{route}: {:?}", counts(&proxy, route));
    }
    // The recent mismatches say what differed.
    let snap = proxy.state.snapshot.load();
    let recent = |route: &str| {
        snap.mirror(snap.route_by_name(route).unwrap())
            .unwrap()
            .stats
            .recent
            .lock()
            .unwrap()
            .back()
            .cloned()
            .unwrap()
    };
    assert_eq!(recent("status").diff, "status 200 ≠ 500");
    assert_eq!(recent("header").diff, "x-v: 1 ≠ 2");
    assert_eq!(recent("body").diff, "$.total: 2 ≠ 3");
    assert_eq!(recent("body").path, "/body/cart?i=9");
    assert!(recent("body").request_id.is_some());
    // The shadow got the same request, marked; the primary never sees the mark.
    let shadow_got = same_log.lock().unwrap().clone();
    assert_eq!(shadow_got.len(), 10);
    assert!(shadow_got
        .iter()
        .all(|(m, p, mark, _)| m == "GET" && p.starts_with("/same/cart?i=") && mark.as_deref() == Some("1")));
    assert!(primary_log
        .lock()
        .unwrap()
        .iter()
        .all(|(_, _, mark, _)| mark.is_none()));
    proxy.shutdown().await;
}

#[tokio::test]
async fn posts_are_mirrored_only_when_methods_says_so() {
    let (primary, _) = json_upstream(200, "1", 2, false).await;
    let (shadow, shadow_log) = json_upstream(200, "1", 2, false).await;
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[log]\naccess = false\n\
         [pools.primary]\nendpoints = [\"{primary}\"]\n[pools.shadow]\nendpoints = [\"{shadow}\"]\n\
         [[routes]]\nname = \"safe\"\npath_prefix = \"/safe\"\nsplit = {{ primary = 1 }}\n[routes.mirror]\npool = \"shadow\"\n\
         [[routes]]\nname = \"writes\"\npath_prefix = \"/writes\"\nsplit = {{ primary = 1 }}\n[routes.mirror]\npool = \"shadow\"\nmethods = [\"GET\", \"POST\"]\n{IGNORE}\n"
    );
    let proxy = Proxy::start(&text).await;
    let client = h1_client();
    let post = |path: &str| Request::post(proxy.url(path)).body(full("{\"qty\": 3}")).unwrap();
    assert_eq!(send(&client, post("/safe/order")).await.0.status, 200);
    assert_eq!(send(&client, post("/writes/order")).await.0.status, 200);
    eventually("the POST mirrored", Duration::from_secs(10), async || {
        count(&proxy, "writes", "match") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = shadow_log.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "only the route that lists POST mirrors it");
    assert_eq!(
        (got[0].0.as_str(), got[0].1.as_str(), &got[0].3[..]),
        ("POST", "/writes/order", &b"{\"qty\": 3}"[..])
    );
    assert_eq!(counts(&proxy, "safe").iter().map(|(_, n)| n).sum::<u64>(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_hanging_or_dead_shadow_costs_the_client_nothing() {
    let (primary, _) = json_upstream(200, "1", 2, false).await;
    // A shadow that reads requests and never answers.
    let (hanging, _) = scripted(|mut s| async move {
        while read_head(&mut s).await {}
        tokio::time::sleep(Duration::from_secs(3600)).await;
    })
    .await;
    let dead = dead_port().await;
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[log]\naccess = false\n[identity]\nfrom = [\"header:x-user-id\"]\n\
         [pools.primary]\nendpoints = [\"{primary}\"]\n\
         [pools.hanging]\nendpoints = [\"{hanging}\"]\ntimeout = \"60s\"\n[pools.dead]\nendpoints = [\"{dead}\"]\n\
         [[routes]]\nname = \"hang\"\npath_prefix = \"/hang\"\nsplit = {{ primary = 1 }}\n[routes.mirror]\npool = \"hanging\"\nmax_in_flight = 2\n\
         [[routes]]\nname = \"dead\"\npath_prefix = \"/dead\"\nsplit = {{ primary = 1 }}\n[routes.mirror]\npool = \"dead\"\n"
    );
    let proxy = Proxy::start(&text).await;
    let client = h1_client();
    for route in ["hang", "dead"] {
        for i in 0..6 {
            let started = Instant::now();
            let req = Request::get(proxy.url(&format!("/{route}/x")))
                .header("x-user-id", format!("u{i}"))
                .body(empty())
                .unwrap();
            let (parts, _) = send(&client, req).await;
            assert_eq!(parts.status, 200);
            // Generous: the shadow's 60 s timeout would show as a minute.
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{route}: {:?}",
                started.elapsed()
            );
        }
    }
    // Two hang (their slots held); the other four find no slot.
    assert_eq!(
        count(&proxy, "hang", "dropped"),
        4,
        "{:?}",
        counts(&proxy, "hang")
    );
    assert_eq!(
        proxy
            .state
            .snapshot
            .load()
            .mirror_of("hang")
            .unwrap()
            .stats
            .in_flight
            .load(Ordering::SeqCst),
        2
    );
    // The copies go through the upstream client: they count on the shadow endpoint as the
    // pool's own requests do (what least-loaded picks and the API show).
    let hanging_in_flight = proxy
        .state
        .snapshot
        .load()
        .pool_by_name("hanging")
        .unwrap()
        .endpoints[0]
        .in_flight();
    assert_eq!(hanging_in_flight, 2);
    eventually("six shadow errors", Duration::from_secs(10), async || {
        count(&proxy, "dead", "shadow_error") == 6
    })
    .await;
    let metrics = proxy.state.metrics.render();
    assert!(
        metrics.contains("switchyard_mirror_total{result=\"dropped\",route=\"hang\"} 4"),
        "{metrics}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_body_over_max_body_is_not_mirrored() {
    let (primary, primary_log) = json_upstream(200, "1", 2, false).await;
    let (shadow, shadow_log) = json_upstream(200, "1", 2, false).await;
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[log]\naccess = false\n\
         [pools.primary]\nendpoints = [\"{primary}\"]\n[pools.shadow]\nendpoints = [\"{shadow}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ primary = 1 }}\n[routes.mirror]\npool = \"shadow\"\nmethods = [\"PUT\"]\nmax_body = \"64KiB\"\n"
    );
    let proxy = Proxy::start(&text).await;
    let client = h1_client();
    // Streamed (chunked): the copy stops at 64 KiB; and one with a declared length.
    let req = Request::put(proxy.url("/big")).body(generated(8 << 20)).unwrap();
    assert_eq!(send(&client, req).await.0.status, 200);
    let req = Request::put(proxy.url("/big"))
        .header("content-length", "100000")
        .body(full(vec![b'y'; 100_000]))
        .unwrap();
    assert_eq!(send(&client, req).await.0.status, 200);
    eventually("two too_large", Duration::from_secs(10), async || {
        count(&proxy, "web", "too_large") == 2
    })
    .await;
    assert_eq!(
        primary_log.lock().unwrap()[0].3.len(),
        8 << 20,
        "the primary got the whole body"
    );
    assert!(shadow_log.lock().unwrap().is_empty());
    proxy.shutdown().await;
}

/// With `max_mismatch_rate`, the guard judges the mirror's comparisons for the shadow pool: a
/// rollout holds until `min_requests` answers were compared, advances while they agree, and a
/// shadow that disagrees too often is tripped, the mismatches its reason.
#[tokio::test]
async fn the_guard_holds_a_rollout_until_compared_and_trips_a_disagreeing_shadow() {
    let (blue, _) = json_upstream(200, "1", 2, false).await;
    let (agrees, _) = json_upstream(200, "1", 2, true).await;
    let (disagrees, _) = json_upstream(200, "1", 3, false).await;
    let route = |name: &str, shadow: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nsplit = {{ blue = 100, {shadow} = 0 }}\n\
             [routes.guard]\nbaseline = \"blue\"\nmax_mismatch_rate = 0.05\nmin_requests = 10\nwindow = \"30s\"\n\
             [routes.rollout]\npool = \"{shadow}\"\nsteps = [50, 100]\nevery = \"1s\"\n\
             [routes.mirror]\npool = \"{shadow}\"\n{IGNORE}\n"
        )
    };
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[log]\naccess = false\n[identity]\nfrom = [\"header:x-user-id\"]\n\
         [pools.blue]\nendpoints = [\"{blue}\"]\n[pools.agrees]\nendpoints = [\"{agrees}\"]\n[pools.disagrees]\nendpoints = [\"{disagrees}\"]\n{}{}",
        route("good", "agrees"),
        route("bad", "disagrees")
    );
    let proxy = Proxy::start(&text).await;
    let client = h1_client();
    let step = |name: &str| {
        proxy
            .state
            .snapshot
            .load()
            .route_by_name(name)
            .unwrap()
            .runtime
            .rollout_step
    };
    // POSTs are not mirrored: the canaries pass on their own numbers, but nothing is compared,
    // so past `every` the rollouts still hold at their first step.
    for i in 0..40 {
        for name in ["good", "bad"] {
            let req = Request::post(proxy.url(&format!("/{name}/x")))
                .header("x-user-id", format!("u{i}"))
                .body(full("{}"))
                .unwrap();
            assert_eq!(send(&client, req).await.0.status, 200);
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!((step("good"), step("bad")), (Some(0), Some(0)));
    for i in 0..40 {
        for name in ["good", "bad"] {
            let req = Request::get(proxy.url(&format!("/{name}/x")))
                .header("x-user-id", format!("u{i}"))
                .body(empty())
                .unwrap();
            assert_eq!(send(&client, req).await.0.status, 200);
        }
    }
    eventually(
        "the agreeing shadow's rollout steps on",
        Duration::from_secs(10),
        async || step("good") == Some(1),
    )
    .await;
    let tripped = || {
        let snap = proxy.state.snapshot.load();
        let r = snap.route_by_name("bad").unwrap();
        r.runtime
            .tripped
            .iter()
            .any(|&p| &*snap.pools[p].name == "disagrees")
    };
    eventually(
        "the disagreeing shadow tripped",
        Duration::from_secs(10),
        async || tripped(),
    )
    .await;
    assert_eq!(step("bad"), Some(0), "its rollout never stepped");
    proxy.shutdown().await;
}

/// A raw upstream answering every request with `set-cookie: session=VALUE`.
async fn cookie_upstream(value: &'static str) -> std::net::SocketAddr {
    scripted(move |mut s| async move {
        use tokio::io::AsyncWriteExt;
        while read_head(&mut s).await {
            let answer = format!(
                "HTTP/1.1 200 OK\r\nset-cookie: session={value}; HttpOnly\r\ncontent-length: 2\r\n\r\nok"
            );
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
    .0
}

/// Recent mismatches carry users' requests and answers: without the admin token, their query
/// strings and the values of credential headers are hidden (before, `GET /api/routes/{name}`
/// showed anyone `set-cookie: session=…` and `?reset_token=…`); with a token configured and
/// given, they are shown whole.
#[tokio::test]
async fn mismatches_hide_credentials_and_query_strings_without_the_token() {
    let (primary, shadow) = (
        cookie_upstream("PRIMARYSECRET").await,
        cookie_upstream("SHADOWSECRET").await,
    );
    // SAFETY: a variable only this test reads, set before the proxy starts.
    unsafe { std::env::set_var("SY_MIRROR_TEST_TOKEN", "t0ken") };
    for token in [false, true] {
        let admin = if token {
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"SY_MIRROR_TEST_TOKEN\"\n"
        } else {
            "[admin]\nlisten = \"127.0.0.1:0\"\n"
        };
        let proxy = Proxy::start(&format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[log]\naccess = false\n{admin}\
             [pools.primary]\nendpoints = [\"{primary}\"]\n[pools.shadow]\nendpoints = [\"{shadow}\"]\n\
             [[routes]]\nname = \"web\"\nsplit = {{ primary = 1 }}\n[routes.mirror]\npool = \"shadow\"\n"
        ))
        .await;
        let (parts, _) = get(&h1_client(), &proxy.url("/account/reset?reset_token=QUERYSECRET")).await;
        assert_eq!(parts.status, 200);
        eventually("the mismatch", Duration::from_secs(10), async || {
            count(&proxy, "web", "header") == 1
        })
        .await;
        let read = async |bearer: Option<&str>| {
            let mut req = Request::get(proxy.admin_url("/api/routes/web"));
            if let Some(b) = bearer {
                req = req.header("authorization", format!("Bearer {b}"));
            }
            let (_, body) = send(&h1_client(), req.body(empty()).unwrap()).await;
            String::from_utf8_lossy(&body).into_owned()
        };
        for shown in [read(None).await, read(Some("wrong")).await] {
            for secret in ["QUERYSECRET", "PRIMARYSECRET", "SHADOWSECRET"] {
                assert!(!shown.contains(secret), "{secret} shown: {shown}");
            }
            assert!(shown.contains("/account/reset?(query hidden)"), "{shown}");
            assert!(shown.contains("set-cookie: (values hidden)"), "{shown}");
        }
        let whole = read(Some("t0ken")).await;
        assert_eq!(
            token,
            whole.contains("reset_token=QUERYSECRET") && whole.contains("SHADOWSECRET"),
            "{whole}"
        );
        proxy.shutdown().await;
    }
}

/// A primary answer that streams on (an event stream, a long download) no longer holds the
/// route's mirror slot: the wait for it ends at the shadow pool's timeout (`incomplete`) and the
/// next request is mirrored again. A WebSocket upgrade is never mirrored: the shadow would have
/// opened a real second session (and it was counted a match).
#[tokio::test]
async fn streams_free_their_mirror_slot_and_upgrades_are_not_mirrored() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The primary: an event stream, one event every 200 ms for 8 s.
    let (primary, _) = scripted(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            for _ in 0..40 {
                if s.write_all(b"8\r\ndata: 1\n\r\n").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
    .await;
    let shadow = Recorder::start(ok_answer).await;
    let ws = ws_upstream().await;
    let ws_shadow_hits = Arc::new(AtomicUsize::new(0));
    let hits = ws_shadow_hits.clone();
    let (ws_shadow, _) = scripted(move |mut s| {
        hits.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
        }
    })
    .await;
    let proxy = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[log]\naccess = false\n\
         [pools.primary]\nendpoints = [\"{primary}\"]\n[pools.shadow]\nendpoints = [\"{}\"]\ntimeout = \"500ms\"\n\
         [pools.ws]\nendpoints = [\"{ws}\"]\n[pools.ws_shadow]\nendpoints = [\"{ws_shadow}\"]\n\
         [[routes]]\nname = \"events\"\npath_prefix = \"/events\"\nsplit = {{ primary = 1 }}\n[routes.mirror]\npool = \"shadow\"\nmax_in_flight = 1\n\
         [[routes]]\nname = \"chat\"\npath_prefix = \"/chat\"\nsplit = {{ ws = 1 }}\n[routes.mirror]\npool = \"ws_shadow\"\n",
        shadow.addr
    ))
    .await;
    let addr = proxy.http.unwrap();
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        streams.push(s);
        // Within the shadow's timeout and a little more, the slot is free again, while the
        // primary streams on.
        let asked = Instant::now();
        eventually(
            "the wait for the streaming primary ended",
            Duration::from_secs(10),
            async || {
                proxy
                    .state
                    .snapshot
                    .load()
                    .mirror_of("events")
                    .unwrap()
                    .stats
                    .in_flight
                    .load(Ordering::SeqCst)
                    == 0
            },
        )
        .await;
        assert!(asked.elapsed() < Duration::from_secs(3), "{:?}", asked.elapsed());
    }
    assert_eq!(
        count(&proxy, "events", "incomplete"),
        2,
        "{:?}",
        counts(&proxy, "events")
    );
    assert_eq!(
        count(&proxy, "events", "dropped"),
        0,
        "{:?}",
        counts(&proxy, "events")
    );
    assert_eq!(shadow.requests().len(), 2);

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut socket, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/chat"), stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    socket
        .send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    assert!(socket.next().await.unwrap().is_ok());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ws_shadow_hits.load(Ordering::SeqCst),
        0,
        "the upgrade was mirrored"
    );
    assert!(
        counts(&proxy, "chat").iter().all(|(_, n)| *n == 0),
        "{:?}",
        counts(&proxy, "chat")
    );
    drop(socket);
    drop(streams);
    proxy.shutdown().await;
}

/// Fixing an `ignore` shows at once: the counts since the mirror's settings last changed start
/// afresh at the reload that changes them, while the counts since start keep the history.
#[tokio::test]
async fn a_fixed_ignore_shows_at_once() {
    let (primary, _) = json_upstream(200, "1", 2, false).await;
    let (shadow, _) = json_upstream(200, "2", 2, false).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let text = |ignore: &str| {
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n\
             [pools.primary]\nendpoints = [\"{primary}\"]\n[pools.shadow]\nendpoints = [\"{shadow}\"]\n\
             [[routes]]\nname = \"web\"\nsplit = {{ primary = 1 }}\n[routes.mirror]\npool = \"shadow\"\n\
             ignore = [\"x-request-seq\", \"$.generated_at\", \"$.items[*].id\"{ignore}]\n"
        )
    };
    std::fs::write(&path, text("")).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let client = h1_client();
    for i in 0..10 {
        get(&client, &proxy.url(&format!("/cart?i={i}"))).await;
    }
    eventually("10 header mismatches", Duration::from_secs(10), async || {
        count(&proxy, "web", "header") == 10
    })
    .await;
    std::fs::write(&path, text(", \"x-v\"")).unwrap();
    let req = Request::post(proxy.admin_url("/api/reload"))
        .body(empty())
        .unwrap();
    assert_eq!(send(&client, req).await.0.status, 200);
    for i in 0..10 {
        get(&client, &proxy.url(&format!("/cart?i={i}"))).await;
    }
    eventually("10 matches", Duration::from_secs(10), async || {
        count(&proxy, "web", "match") == 10
    })
    .await;
    let (_, body) = get(&client, &proxy.admin_url("/api/routes/web")).await;
    let r: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let m = &r["mirror"];
    assert_eq!(m["current_mismatch_rate"], 0.0, "{m:#}");
    assert_eq!(m["mismatch_rate"], 0.5, "{m:#}");
    let current: Vec<(String, u64)> = serde_json::from_value(m["current_counts"].clone()).unwrap();
    assert!(
        current.contains(&("match".into(), 10)) && current.contains(&("header".into(), 0)),
        "{m:#}"
    );
    proxy.shutdown().await;
}

/// A mirrored POST and a health check, as the shadow's socket receives them: the upstream
/// client's framing (a declared length, the endpoint as `host` when the copy has none), the
/// primary's fields and the mirror's mark; the check's `GET` with its own user agent.
#[tokio::test]
async fn the_copy_and_the_check_are_the_upstream_clients_bytes() {
    let primary = Recorder::start(ok_answer).await;
    let shadow = Recorder::start(ok_answer).await;
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[log]\naccess = false\n[identity]\nfrom = [\"header:x-user-id\"]\n\
         [pools.primary]\nendpoints = [\"{}\"]\n\
         [pools.shadow]\nendpoints = [\"{}\"]\nhealth = {{ path = \"/healthz\", interval = \"1s\" }}\n\
         [[routes]]\nname = \"web\"\nsplit = {{ primary = 1 }}\n[routes.mirror]\npool = \"shadow\"\nmethods = [\"POST\"]\n",
        primary.addr, shadow.addr
    );
    let proxy = Proxy::start(&text).await;
    let req = Request::post(proxy.url("/orders?id=7"))
        .header("x-user-id", "u1")
        .header("content-type", "application/json")
        .body(full("{\"n\":1}"))
        .unwrap();
    assert_eq!(send(&h1_client(), req).await.0.status, 200);
    eventually("the copy and a check", Duration::from_secs(5), async || {
        let seen = shadow.requests();
        seen.iter().any(|r| r.path == "/orders?id=7") && seen.iter().any(|r| r.path == "/healthz")
    })
    .await;
    let seen = shadow.requests();
    let copy = seen.iter().find(|r| r.path == "/orders?id=7").unwrap();
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.get("x-switchyard-mirror"), Some("1"));
    assert_eq!(copy.get("content-type"), Some("application/json"));
    assert_eq!(copy.get("content-length"), Some("7"));
    assert_eq!(copy.all("transfer-encoding"), Vec::<&str>::new());
    assert_eq!(copy.body, b"{\"n\":1}");
    let sent = primary.requests();
    assert_eq!(copy.get("host"), sent[0].get("host"), "the primary's host");
    let check = seen.iter().find(|r| r.path == "/healthz").unwrap();
    assert_eq!(check.method, "GET");
    assert_eq!(check.get("user-agent"), Some("switchyard-health-check"));
    assert_eq!(check.get("host"), Some(shadow.addr.to_string().as_str()));
    assert!(check.body.is_empty());
    proxy.shutdown().await;
}
