//! Webhook notifications end to end: a receiving server on loopback gets one signed
//! notification per trip, rollout step, abort, reset and rollback; a receiver that is down or
//! slow delays neither trips nor requests.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use support::*;

/// One notification as received: the event header, the signature header and the body.
#[derive(Debug, Clone)]
struct Received {
    event: String,
    signature: Option<String>,
    body: Bytes,
}

/// A webhook receiver that answers `status` after `delay`, keeping what it got.
async fn receiver(status: u16, delay: Duration) -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let kept = got.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let kept = kept.clone();
                    async move {
                        let header = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
                        let (event, signature) = (
                            header("x-switchyard-event").unwrap_or_default(),
                            header("x-switchyard-signature"),
                        );
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        tokio::time::sleep(delay).await;
                        kept.lock().unwrap().push(Received {
                            event,
                            signature,
                            body,
                        });
                        let mut r = http::Response::new(full(""));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

fn guarded(blue: SocketAddr, canary: SocketAddr, notify: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n{notify}\n\
         [pools.blue]\nendpoints = [\"{blue}\"]\n[pools.canary]\nendpoints = [\"{canary}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ blue = 100, canary = 0 }}\noverride = {{ header = \"x-switchyard-pool\" }}\n\
         [routes.guard]\nbaseline = \"blue\"\nmin_requests = 5\nwindow = \"10s\"\n\
         [routes.rollout]\npool = \"canary\"\nsteps = [10, 50, 100]\nevery = \"1h\"\n"
    )
}

async fn post(proxy: &Proxy, path: &str) {
    let (parts, body) = send(
        &h1_client(),
        Request::post(proxy.admin_url(path)).body(empty()).unwrap(),
    )
    .await;
    assert_eq!(parts.status, 200, "{path}: {body:?}");
}

/// Fails the canary until the route trips; returns how long it took.
async fn trip(proxy: &Proxy, canary: &Upstream) -> Duration {
    canary.seen.fail_every.store(1, Ordering::SeqCst);
    let client = h1_client();
    let started = Instant::now();
    loop {
        for _ in 0..10 {
            let req = Request::get(proxy.url("/"))
                .header("x-switchyard-pool", "canary")
                .body(empty())
                .unwrap();
            send(&client, req).await;
        }
        let (_, body) = get(&client, &proxy.admin_url("/api/routes/web")).await;
        if serde_json::from_slice::<serde_json::Value>(&body).unwrap()["tripped"] == true {
            canary.seen.fail_every.store(0, Ordering::SeqCst);
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no trip");
    }
}

/// Waits until `got` holds `n` notifications.
async fn wait_for(got: &Mutex<Vec<Received>>, n: usize) -> Vec<Received> {
    let started = Instant::now();
    loop {
        let now = got.lock().unwrap().clone();
        if now.len() >= n || started.elapsed() > Duration::from_secs(10) {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_event_is_one_signed_notification() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let (hook, got) = receiver(200, Duration::ZERO).await;
    // Another entry that wants trips only, unsigned.
    let (trips_only, got_trips) = receiver(204, Duration::ZERO).await;
    std::env::set_var("SY_TEST_WEBHOOK_SECRET", "s3cret");
    let notify = format!(
        "[[notify]]\nurl = \"http://{hook}/hook\"\nsecret_env = \"SY_TEST_WEBHOOK_SECRET\"\n\
         [[notify]]\nurl = \"http://{trips_only}/\"\nevents = [\"trip\"]\n"
    );
    let proxy = Proxy::start(&guarded(blue.addr, canary.addr, &notify)).await;
    post(&proxy, "/api/routes/web/promote").await;
    trip(&proxy, &canary).await;
    post(&proxy, "/api/routes/web/reset").await;
    post(&proxy, "/api/routes/web/rollback").await;
    let all = wait_for(&got, 5).await;
    let events: Vec<&str> = all.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(
        events,
        ["rollout_step", "trip", "rollout_aborted", "reset", "rollback"]
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
    for r in &all {
        let sig = r
            .signature
            .as_deref()
            .expect("signed")
            .strip_prefix("sha256=")
            .unwrap();
        let sig: Vec<u8> = (0..sig.len() / 2)
            .map(|i| u8::from_str_radix(&sig[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        ring::hmac::verify(&key, &r.body, &sig).expect("the signature is the body's HMAC-SHA256");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["event"], r.event);
        assert_eq!(body["route"], "web");
        assert!(
            body["text"]
                .as_str()
                .unwrap()
                .starts_with("switchyard: route web: "),
            "{body}"
        );
        assert!(body["at"].as_str().unwrap().ends_with('Z'), "{body}");
    }
    let body = |i: usize| serde_json::from_slice::<serde_json::Value>(&all[i].body).unwrap();
    assert_eq!(body(0)["percent"], 50);
    assert_eq!(body(1)["pool"], "canary");
    assert_eq!(body(1)["baseline"], "blue");
    assert!(
        body(1)["reason"].as_str().unwrap().contains("error rate"),
        "{}",
        body(1)
    );
    assert!(body(1)["errors"].as_u64().unwrap() >= 5, "{}", body(1));
    assert_eq!(
        body(1)["moved"][0]["from"],
        "canary",
        "the users it moved: {}",
        body(1)
    );
    assert!(
        (body(1)["moved"][0]["share"].as_f64().unwrap() - 0.5).abs() < 1e-9,
        "{}",
        body(1)
    );
    let trips = wait_for(&got_trips, 1).await;
    assert_eq!(trips.len(), 1);
    assert_eq!(trips[0].event, "trip");
    assert!(trips[0].signature.is_none());
    let (_, metrics) = get(&h1_client(), &proxy.admin_url("/metrics")).await;
    assert!(
        String::from_utf8_lossy(&metrics).contains("switchyard_notifications_total{result=\"delivered\"} 6")
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_receiver_that_is_down_or_slow_delays_nothing() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let (slow, got) = receiver(200, Duration::from_secs(30)).await;
    let down = dead_port().await;
    let notify = format!(
        "[[notify]]\nurl = \"http://{slow}/\"\ntimeout = \"1s\"\n[[notify]]\nurl = \"http://{down}/\"\n"
    );
    let proxy = Proxy::start(&guarded(blue.addr, canary.addr, &notify)).await;
    // A stream of events for the receivers to choke on.
    for _ in 0..2 {
        post(&proxy, "/api/routes/web/promote").await;
        post(&proxy, "/api/routes/web/reset").await;
    }
    let took = trip(&proxy, &canary).await;
    assert!(took < Duration::from_secs(3), "the trip waited: {took:?}");
    let client = h1_client();
    let started = Instant::now();
    for _ in 0..50 {
        assert_eq!(get(&client, &proxy.url("/")).await.0.status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "requests waited: {:?}",
        started.elapsed()
    );
    assert!(
        got.lock().unwrap().is_empty(),
        "the slow receiver has not answered yet"
    );
    proxy.shutdown().await;
}

/// A webhook URL is often its own credential (Slack's path, `user:password@`): `check` shows
/// only its scheme and host.
#[test]
fn check_does_not_print_webhook_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(
        &path,
        "[listen]\nhttp = \"127.0.0.1:0\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n\
         [[routes]]\nname = \"web\"\nsplit = { blue = 1 }\n\
         [[notify]]\nurl = \"https://hook-user:pa55word@hooks.example.com/services/T0/B0/s3cr3tpath?sig=abc\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("notify: https://hooks.example.com/…"), "{text}");
    for secret in ["pa55word", "hook-user", "s3cr3tpath", "sig=abc"] {
        assert!(!text.contains(secret), "{secret}: {text}");
    }
}
