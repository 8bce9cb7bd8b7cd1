//! Canary analysis (`[[routes.guard.checks]]`) with a real Prometheus scraping stand-in
//! services that export their own business counters — a checkout service whose canary
//! completes 90% of checkouts against the baseline's 99%, while both answer 200:
//!
//! - the canary trips on the check alone (the guard's own numbers never have enough requests),
//!   soon after Prometheus has the data; the reason names the check, both values and the
//!   query; the audit trail and the metrics show it;
//! - the same failing check under `dry_run` reports and changes nothing;
//! - a rollout waits on a check that has no data yet, says so, and steps once data arrives and
//!   passes;
//! - a query that Prometheus refuses at run time is reported and holds its rollout, never a pass.
//!
//! That test needs the `prometheus` binary: `.ci/run` installs it and runs it; `cargo test`
//! alone skips it as ignored. The other runs everywhere: a stand-in Prometheus that fails in
//! every way it can (too large, endless, stalled, several series, NaN, HTML).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A stand-in checkout service's metrics: per pool, attempts at 100/s and completions at the
/// pool's success ratio, counted from when the exporter started (or, for a pool that starts
/// late, from when it was switched on).
async fn exporter(pools: Vec<(&'static str, f64, Option<Arc<AtomicBool>>)>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let started = Instant::now();
    let pools = Arc::new(pools);
    let since: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; pools.len()]));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (pools, since) = (pools.clone(), since.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let mut text = String::from(
                    "# TYPE checkout_attempts_total counter\n# TYPE checkout_completed_total counter\n",
                );
                for (i, (pool, ratio, on)) in pools.iter().enumerate() {
                    let from = {
                        let mut since = since.lock().unwrap();
                        match on {
                            None => Some(started),
                            Some(flag) if flag.load(Ordering::SeqCst) => {
                                Some(*since[i].get_or_insert_with(Instant::now))
                            }
                            Some(_) => None,
                        }
                    };
                    let Some(from) = from else { continue };
                    let attempts = (from.elapsed().as_secs_f64() * 100.0).floor();
                    let completed = (attempts * ratio).floor();
                    text.push_str(&format!(
                        "checkout_attempts_total{{pool=\"{pool}\"}} {attempts}\ncheckout_completed_total{{pool=\"{pool}\"}} {completed}\n"
                    ));
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    text.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(text.as_bytes()).await;
            });
        }
    });
    addr
}

async fn api(proxy: &Proxy, path: &str) -> Value {
    let (_, body) = get(&h1_client(), &proxy.admin_url(path)).await;
    serde_json::from_slice(&body).unwrap()
}

/// The guard's report of `pool` on `route`.
fn pool<'a>(route: &'a Value, pool: &str) -> &'a Value {
    route["guard"]["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == pool)
        .unwrap_or(&Value::Null)
}

/// `check`'s record of `pool` on `route`.
fn record<'a>(route: &'a Value, check: &str, pool: &str) -> &'a Value {
    route["guard"]["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == check)
        .flat_map(|c| c["pools"].as_array().unwrap())
        .find(|p| p["pool"] == pool)
        .unwrap_or(&Value::Null)
}

const SUCCESS: &str = r#"sum(rate(checkout_completed_total{pool="{{pool}}"}[{{window}}])) / sum(rate(checkout_attempts_total{pool="{{pool}}"}[{{window}}]))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the prometheus binary (.ci/run installs it)"]
async fn checks_trip_hold_and_step_on_the_applications_own_metrics() {
    let late_on = Arc::new(AtomicBool::new(false));
    let metrics = exporter(vec![
        ("blue", 0.99, None),
        ("green", 0.90, None),
        ("late", 0.995, Some(late_on.clone())),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _prom = prometheus(port, dir.path(), &[metrics]);
    let up = Upstream::start("app").await;
    let a = up.addr;
    let check = |extra: &str| {
        format!(
            "[[routes.guard.checks]]\nname = \"checkout_success\"\nquery = '{SUCCESS}'\nmin_ratio = 0.97\ninterval = \"1s\"\n{extra}\n"
        )
    };
    let config = format!(
        r#"[listen]
http = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[log]
access = false
[analysis]
prometheus = "http://127.0.0.1:{port}"
[pools.blue]
endpoints = ["{a}"]
[pools.green]
endpoints = ["{a}"]
[pools.late]
endpoints = ["{a}"]

[[routes]]
name = "web"
path_prefix = "/"
split = {{ blue = 90, green = 10 }}
[routes.guard]
baseline = "blue"
min_requests = 1000000000
window = "5s"
{web_check}
[[routes]]
name = "dry"
path_prefix = "/dry"
split = {{ blue = 90, green = 10 }}
[routes.guard]
baseline = "blue"
dry_run = true
min_requests = 1000000000
window = "5s"
{dry_check}
[[routes]]
name = "roll"
path_prefix = "/roll"
split = {{ blue = 100, late = 0 }}
rollout = {{ pool = "late", steps = [10, 50, 100], every = "2s" }}
[routes.guard]
baseline = "blue"
min_requests = 1
window = "5s"
{roll_check}
[[routes]]
name = "broken"
path_prefix = "/broken"
split = {{ blue = 100, late = 0 }}
rollout = {{ pool = "late", steps = [10, 50, 100], every = "2s" }}
[routes.guard]
baseline = "blue"
min_requests = 1
window = "5s"
[[routes.guard.checks]]
name = "typo"
query = 'nosuchfunction(checkout_attempts_total{{pool="{{{{pool}}}}"}})'
min = 0
interval = "1s"
"#,
        web_check = check("failure_limit = 2"),
        dry_check = check(""),
        roll_check = check(""),
    );
    let proxy = Proxy::start(&config).await;
    // Users on the rollouts' routes, so their guards have a window verdict to step on.
    let base = proxy.url("");
    let load = tokio::spawn(async move {
        let client = h1_client();
        for i in 0u64.. {
            for path in ["/roll", "/broken"] {
                let req = Request::get(format!("{base}{path}"))
                    .header("x-user-id", format!("u{}", i % 500))
                    .body(empty())
                    .unwrap();
                if let Ok(r) = client.request(req).await {
                    drop(r.into_body());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    // The canary trips on the check alone, both pools answering 200 all along.
    let started = Instant::now();
    let first_data = eventually(
        "Prometheus to have the checkout series",
        Duration::from_secs(60),
        async || {
            let r = api(&proxy, "/api/routes/web").await;
            record(&r, "checkout_success", "green")["value"].is_number()
        },
    )
    .await;
    let tripped = eventually(
        "green to trip on the check",
        Duration::from_secs(30),
        async || pool(&api(&proxy, "/api/routes/web").await, "green")["tripped"] == true,
    )
    .await;
    eprintln!("first value after {first_data:?}; tripped {tripped:?} after that");
    // Two scrape intervals (1 s) plus the failures in a row (2 × 1 s), with room to spare.
    assert!(tripped < Duration::from_secs(8), "{tripped:?}");
    let web = api(&proxy, "/api/routes/web").await;
    let reason = pool(&web, "green")["verdict"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    for part in [
        "check checkout_success",
        "failed 2 time(s) in a row",
        "min_ratio 0.97",
        "green 0.9,",
        "baseline blue 0.99",
        "query: sum(rate(checkout_completed_total{pool=\"green\"}[5s]))",
    ] {
        assert!(reason.contains(part), "{part:?} not in {reason}");
    }
    let (parts, _) = get(&h1_client(), &proxy.url("/")).await;
    assert_eq!(parts.status, 200, "the baseline serves everyone");
    let events = api(&proxy, "/api/events?route=web").await;
    let kinds: Vec<(&str, &str)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["pool"].as_str().unwrap_or("")))
        .collect();
    assert!(kinds.contains(&("check", "green")), "{kinds:?}");
    assert!(kinds.contains(&("trip", "green")), "{kinds:?}");
    let (_, text) = get(&h1_client(), &proxy.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&text);
    let value = text
        .lines()
        .find(|l| {
            l.starts_with("switchyard_check_value{check=\"checkout_success\",pool=\"green\",route=\"web\"}")
        })
        .unwrap_or_else(|| panic!("no check value for green:\n{text}"));
    let v: f64 = value.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((0.85..0.95).contains(&v), "{value}");
    assert!(text.contains("switchyard_check_verdicts_total{check=\"checkout_success\",pool=\"green\",route=\"web\",verdict=\"fail\"}"));
    assert!(
        text.contains("switchyard_guard_trips_total{pool=\"green\",route=\"web\"} 1"),
        "{text}"
    );

    // A reset starts the count again: the failures that caused the trip do not trip it at
    // once (the guard would within 100 ms), two new ones do.
    let (parts, body) = send(
        &h1_client(),
        Request::post(proxy.admin_url("/api/routes/web/reset"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert!(parts.status.is_success(), "{:?}", String::from_utf8_lossy(&body));
    assert_eq!(api(&proxy, "/api/routes/web").await["tripped"], false);
    let again = eventually(
        "green to trip again after the reset",
        Duration::from_secs(30),
        async || api(&proxy, "/api/routes/web").await["tripped"] == true,
    )
    .await;
    assert!(
        again > Duration::from_millis(700),
        "tripped again {again:?} after the reset: {}",
        api(&proxy, "/api/routes/web").await
    );
    eprintln!("tripped again {again:?} after the reset");

    // Dry run: the same failing check is shown, and changes nothing.
    let dry = api(&proxy, "/api/routes/dry").await;
    assert_eq!(
        record(&dry, "checkout_success", "green")["verdict"],
        "fail",
        "{dry}"
    );
    assert_eq!(pool(&dry, "green")["tripped"], false);
    assert_eq!(pool(&dry, "green")["verdict"]["verdict"], "fail");
    assert_eq!(dry["tripped"], false, "{dry}");

    // The rollout waits on no data, and says so.
    let roll = api(&proxy, "/api/routes/roll").await;
    assert_eq!(roll["rollout"]["step"], 0, "{roll}");
    let waits = roll["guard"]["rollout_waits"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        waits.contains("check checkout_success is inconclusive: no data for the pool"),
        "{roll}"
    );
    assert!(
        started.elapsed() > Duration::from_secs(4),
        "more than a step's time has passed"
    );
    // Data arrives and passes: the rollout steps.
    late_on.store(true, Ordering::SeqCst);
    let stepped = eventually(
        "the rollout to step once the check passes",
        Duration::from_secs(40),
        async || api(&proxy, "/api/routes/roll").await["rollout"]["step"].as_u64() >= Some(1),
    )
    .await;
    eprintln!("stepped {stepped:?} after the data came");
    let roll = api(&proxy, "/api/routes/roll").await;
    assert_eq!(
        record(&roll, "checkout_success", "late")["verdict"],
        "pass",
        "{roll}"
    );

    // A query Prometheus refuses: reported, the rollout held, never a pass.
    let broken = api(&proxy, "/api/routes/broken").await;
    let r = record(&broken, "typo", "late");
    assert_eq!(r["verdict"], "error", "{broken}");
    assert!(r["reason"].as_str().unwrap().contains("bad_data"), "{r}");
    assert_eq!(broken["rollout"]["step"], 0, "{broken}");
    assert!(
        broken["guard"]["rollout_waits"]
            .as_str()
            .is_some_and(|w| w.contains("check typo is error")),
        "{broken}"
    );
    assert!(r["history"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["verdict"] == "error"));
    load.abort();
    proxy.shutdown().await;
}

/// A stand-in Prometheus that answers each pool's query as a broken or hostile one would.
fn lying_prometheus(req: &Recorded) -> Vec<u8> {
    let query: String = req
        .path
        .split_once("query=")
        .map(|(_, q)| {
            form_urlencoded::parse(format!("q={q}").as_bytes())
                .next()
                .unwrap()
                .1
                .into_owned()
        })
        .unwrap_or_default();
    let json = |body: String| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let vector = |values: &[&str]| {
        let series: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!(r#"{{"metric":{{"i":"{i}"}},"value":[1,"{v}"]}}"#))
            .collect();
        json(format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            series.join(",")
        ))
    };
    if query.contains("\"big\"") {
        // 2 MiB of chunks, no length given: read up to the limit, then refused.
        let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..32 {
            out.extend_from_slice(format!("{:x}\r\n", 65536).as_bytes());
            out.extend(std::iter::repeat_n(b' ', 65536));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    } else if query.contains("\"huge\"") {
        b"HTTP/1.1 200 OK\r\ncontent-length: 314572800\r\n\r\n{".to_vec()
    } else if query.contains("\"stall\"") {
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"status\"".to_vec()
    } else if query.contains("\"many\"") {
        vector(&["1", "2"])
    } else if query.contains("\"nan\"") {
        vector(&["NaN"])
    } else if query.contains("\"liar\"") {
        b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n<html>hi!".to_vec()
    } else {
        vector(&["1"])
    }
}

/// Every way a Prometheus can fail a check is an error or no data — shown, counted, never a
/// pass, never a trip — and the proxy serves on: an answer past the size limit (announced, or
/// endless), one that stalls, several series, NaN, HTML. The token goes with every query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_that_fails_every_way_is_reported_and_never_passes() {
    let prom = Recorder::start(lying_prometheus).await;
    std::env::set_var("SY_ANALYSIS_TEST_TOKEN", "s3cret");
    let up = Upstream::start("app").await;
    let a = up.addr;
    let pools: Vec<&str> = vec!["blue", "big", "huge", "stall", "many", "nan", "liar"];
    let mut config = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n\
         [analysis]\nprometheus = \"http://{}\"\nquery_timeout = \"300ms\"\ntoken_env = \"SY_ANALYSIS_TEST_TOKEN\"\n",
        prom.addr
    );
    for p in &pools {
        config.push_str(&format!("[pools.{p}]\nendpoints = [\"{a}\"]\n"));
    }
    let split: Vec<String> = pools.iter().map(|p| format!("{p} = 10")).collect();
    config.push_str(&format!(
        "[[routes]]\nname = \"web\"\nsplit = {{ {} }}\n[routes.guard]\nbaseline = \"blue\"\n\
         [[routes.guard.checks]]\nname = \"up\"\nquery = 'q{{pool=\"{{{{pool}}}}\"}}'\nmin = 0\nmax_ratio = 10\ninterval = \"1s\"\n",
        split.join(", ")
    ));
    let proxy = Proxy::start(&config).await;
    eventually("every pool measured twice", Duration::from_secs(20), async || {
        let r = api(&proxy, "/api/routes/web").await;
        pools.iter().all(|p| {
            record(&r, "up", p)["history"]
                .as_array()
                .is_some_and(|h| h.len() >= 2)
        })
    })
    .await;
    let r = api(&proxy, "/api/routes/web").await;
    let said = |pool: &str| {
        let rec = record(&r, "up", pool);
        (
            rec["verdict"].as_str().unwrap_or("").to_owned(),
            rec["reason"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert_eq!(said("blue").0, "pass");
    for (pool, verdict, reason) in [
        ("big", "error", "more than 1048576 bytes"),
        ("huge", "error", "more than 1048576 bytes"),
        ("stall", "error", "300ms"),
        ("many", "error", "gives 2 series"),
        ("nan", "inconclusive", "no data for the pool"),
        ("liar", "error", "not Prometheus's JSON"),
    ] {
        let (v, why) = said(pool);
        assert_eq!(v, verdict, "{pool}: {why}");
        assert!(why.contains(reason), "{pool}: {why}");
    }
    assert_eq!(r["tripped"], false, "{r}");
    let (_, text) = get(&h1_client(), &proxy.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&text);
    for reason in ["too_large", "timeout", "invalid"] {
        assert!(
            text.contains(&format!(
                "switchyard_remote_errors_total{{reason=\"{reason}\",source=\"prometheus\"}}"
            )),
            "{reason}"
        );
    }
    assert!(
        !text.contains("switchyard_check_value{check=\"up\",pool=\"nan\""),
        "no data, no value"
    );
    let (parts, _) = get(&h1_client(), &proxy.url("/")).await;
    assert_eq!(parts.status, 200, "the proxy serves on");
    let asked = prom.requests();
    assert!(asked.len() >= 14);
    assert!(asked
        .iter()
        .all(|q| q.get("authorization") == Some("Bearer s3cret")));
    proxy.shutdown().await;
}
