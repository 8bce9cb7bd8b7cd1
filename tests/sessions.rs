//! `[routes.session]`: version-sticky sessions through the real proxy with real upstreams.
//! A blue/green switch under load from 200 users with cookie jars (nobody with a live pin
//! changes pool, every new user goes to green, blue's pins lapse after the idle time and its
//! traffic reaches zero); a guard trip moves the tripped pool's pinned users at once and they
//! stay on the baseline after a reset; forged, expired, other-route and removed-pool pins are
//! ignored and counted; an HTTP/2 client's pin holds; two replicas honour each other's pins;
//! `run` refuses a session without its secret.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::Value;
use support::*;

const SECRET_VAR: &str = "SY_SESSIONS_TEST_SECRET";
const SECRET: &str = "a-test-secret-of-32-bytes-length";

fn set_secret() {
    std::env::set_var(SECRET_VAR, SECRET);
}

fn key() -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes())
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// One user: a cookie jar and the pool of each answer.
#[derive(Default, Clone)]
struct User {
    jar: HashMap<String, String>,
    seen: Vec<String>,
}

impl User {
    fn cookie(&self) -> Option<String> {
        (!self.jar.is_empty()).then(|| {
            let mut c: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            c.sort();
            c.join("; ")
        })
    }

    /// One request; the pool that answered (the upstream's name).
    async fn get(&mut self, client: &Client<HttpConnector, Body>, url: &str) -> String {
        let mut req = Request::get(url);
        if let Some(c) = self.cookie() {
            req = req.header("cookie", c);
        }
        let (parts, body) = send(client, req.body(empty()).unwrap()).await;
        assert_eq!(parts.status, 200, "{:?}", String::from_utf8_lossy(&body));
        for c in parts.headers.get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.jar.remove(k);
            } else {
                self.jar.insert(k.to_owned(), v.to_owned());
            }
        }
        let pool = String::from_utf8(body.to_vec()).unwrap();
        self.seen.push(pool.clone());
        pool
    }
}

fn session_config(blue: &Upstream, green: &Upstream, split: &str, extra: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n\
         [pools.blue]\nendpoints = [\"{}\"]\n[pools.green]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ {split} }}\n\
         [routes.session]\nidle = \"3s\"\nmax_age = \"1h\"\nsecret_env = \"{SECRET_VAR}\"\n{extra}",
        blue.addr, green.addr
    )
}

async fn api(proxy: &Proxy, path: &str) -> Value {
    let (_, body) = get(&h1_client(), &proxy.admin_url(path)).await;
    serde_json::from_slice(&body).unwrap()
}

async fn post(proxy: &Proxy, path: &str) -> Value {
    let (parts, body) = send(
        &h1_client(),
        Request::post(proxy.admin_url(path)).body(empty()).unwrap(),
    )
    .await;
    assert!(
        parts.status.is_success(),
        "{path}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap()
}

fn pool_status<'a>(route: &'a Value, pool: &str) -> &'a Value {
    route["session"]["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == pool)
        .unwrap_or_else(|| panic!("no session status for {pool}: {route}"))
}

async fn metrics(proxy: &Proxy) -> String {
    let (_, body) = get(&h1_client(), &proxy.admin_url("/metrics")).await;
    String::from_utf8(body.to_vec()).unwrap()
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("no {series} in\n{text}")) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blue_green_switch_moves_new_sessions_only_and_blue_drains_by_idle() {
    set_secret();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("switchyard.toml");
    std::fs::write(&path, session_config(&blue, &green, "blue = 100, green = 0", "")).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let url = proxy.url("/app");
    let client = h1_client();

    // 100 users start on blue and keep going, a request every 250 ms, through the switch.
    let switched = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut early = Vec::new();
    for _ in 0..100 {
        let (client, url, stop, switched) = (client.clone(), url.clone(), stop.clone(), switched.clone());
        early.push(tokio::spawn(async move {
            let mut u = User::default();
            let mut after_switch = 0;
            while !stop.load(Ordering::SeqCst) {
                let pool = u.get(&client, &url).await;
                assert_eq!(pool, "blue", "a user with a live pin changed pool: {:?}", u.seen);
                if switched.load(Ordering::SeqCst) {
                    after_switch += 1;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (u, after_switch)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The switch: green takes every new user; blue stays in the split at weight 0.
    std::fs::write(&path, session_config(&blue, &green, "blue = 0, green = 100", "")).unwrap();
    eventually("the switch is served", Duration::from_secs(10), async || {
        let r = api(&proxy, "/api/routes/web").await;
        r["effective"][1]["share"] == 1.0
    })
    .await;
    switched.store(true, Ordering::SeqCst);

    // 100 new users, each several requests over time: all green.
    let mut late = Vec::new();
    for _ in 0..100 {
        let (client, url) = (client.clone(), url.clone());
        late.push(tokio::spawn(async move {
            let mut u = User::default();
            for _ in 0..5 {
                assert_eq!(
                    u.get(&client, &url).await,
                    "green",
                    "a new user after the switch: {:?}",
                    u.seen
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            u
        }));
    }
    for l in late {
        let u = l.await.unwrap();
        assert!(u.jar.get("sy_ver").unwrap().starts_with("green."), "{:?}", u.jar);
    }
    // Keep the early users going well past the idle time: their pins are refreshed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    let mut users = Vec::new();
    for e in early {
        let (u, after) = e.await.unwrap();
        assert!(
            after >= 10,
            "each early user kept going after the switch ({after} requests)"
        );
        users.push(u);
    }
    let route = api(&proxy, "/api/routes/web").await;
    let b = pool_status(&route, "blue");
    assert!(b["by_pin"].as_u64().unwrap() >= 100 * 20, "{b}");
    assert_eq!(b["drained"], false, "blue has live pins: {b}");
    let blue_hits = blue.hits();

    // The early users go quiet for longer than idle + its slack (3 s + 1 s): their pins lapse.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let route = api(&proxy, "/api/routes/web").await;
    assert_eq!(pool_status(&route, "blue")["drained"], true, "{route}");
    for u in &mut users {
        assert_eq!(u.get(&client, &url).await, "green", "a lapsed pin moves the user");
        assert_eq!(u.get(&client, &url).await, "green");
    }
    assert_eq!(blue.hits(), blue_hits, "blue's traffic reached zero");
    let text = metrics(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "switchyard_session_pins_ended_total{pool=\"blue\",reason=\"idle\",route=\"web\"}"
        ),
        100,
        "every early user's pin lapsed once"
    );
    assert!(
        metric(
            &text,
            "switchyard_session_requests_total{by=\"pin\",pool=\"blue\",route=\"web\"}"
        ) >= 2000
    );
    assert_eq!(
        metric(
            &text,
            "switchyard_session_requests_total{by=\"split\",pool=\"blue\",route=\"web\"}"
        ),
        100,
        "blue got new sessions only before the switch"
    );
    assert_eq!(
        metric(
            &text,
            "switchyard_session_pins_ended_total{pool=\"\",reason=\"forged\",route=\"web\"}"
        ),
        0
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trip_moves_the_pinned_users_at_once_and_a_reset_leaves_them_on_the_baseline() {
    set_secret();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let guard =
        "[routes.guard]\nbaseline = \"blue\"\nmax_error_rate = 0.2\nmin_requests = 20\nwindow = \"10s\"\n";
    let proxy = Proxy::start(&session_config(&blue, &green, "blue = 50, green = 50", guard)).await;
    let url = proxy.url("/");
    let client = h1_client();
    let mut users = vec![User::default(); 60];
    for u in &mut users {
        u.get(&client, &url).await;
    }
    let on_green: Vec<usize> = (0..users.len())
        .filter(|&i| users[i].seen[0] == "green")
        .collect();
    assert!(
        on_green.len() >= 15 && on_green.len() <= 45,
        "{} of 60 on green",
        on_green.len()
    );
    // Green starts failing; its pinned users keep coming until the guard trips it.
    green.seen.fail_every.store(1, Ordering::SeqCst);
    let mut i = 0;
    eventually("the guard trips green", Duration::from_secs(15), async || {
        let u = &mut users[on_green[i % on_green.len()]];
        i += 1;
        let mut req = Request::get(&url);
        if let Some(c) = u.cookie() {
            req = req.header("cookie", c);
        }
        send(&client, req.body(empty()).unwrap()).await;
        api(&proxy, "/api/routes/web").await["tripped"] == true
    })
    .await;
    // Every pinned user's next request goes to the baseline, with a new pin there.
    for &g in &on_green {
        let u = &mut users[g];
        assert_eq!(
            u.get(&client, &url).await,
            "blue",
            "a pin never holds a user on a tripped pool"
        );
        assert!(
            u.jar["sy_ver"].starts_with("blue."),
            "the cookie is rewritten: {:?}",
            u.jar
        );
    }
    // (A request of the loop above that came after the trip ended its pin too.)
    let text = metrics(&proxy).await;
    let ended = metric(
        &text,
        "switchyard_session_pins_ended_total{pool=\"green\",reason=\"tripped\",route=\"web\"}",
    );
    assert!(
        ended >= on_green.len() as u64 && ended <= on_green.len() as u64 + 3,
        "{ended}"
    );
    // After a reset, they stay on the version their session is on now.
    green.seen.fail_every.store(0, Ordering::SeqCst);
    post(&proxy, "/api/routes/web/reset").await;
    for &g in &on_green {
        assert_eq!(
            users[g].get(&client, &url).await,
            "blue",
            "a reset moves no live session"
        );
    }
    // A rollback ends pins too, with its own reason.
    let mut fresh = Vec::new();
    while fresh.len() < 5 {
        let mut u = User::default();
        if u.get(&client, &url).await == "green" {
            fresh.push(u);
        }
    }
    post(&proxy, "/api/routes/web/rollback").await;
    for u in &mut fresh {
        assert_eq!(u.get(&client, &url).await, "blue");
    }
    let text = metrics(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "switchyard_session_pins_ended_total{pool=\"green\",reason=\"rolled_back\",route=\"web\"}"
        ),
        5
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_foreign_pins_are_ignored_and_counted() {
    set_secret();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let other = Upstream::start("other").await;
    let text = session_config(&blue, &green, "blue = 0, green = 100", "").replace(
        "[[routes]]",
        &format!("[pools.other]\nendpoints = [\"{}\"]\n[[routes]]", other.addr),
    );
    let proxy = Proxy::start(&text).await;
    let url = proxy.url("/");
    let client = h1_client();
    let k = key();
    let sign = |route: &str, pool: &str, issued: u64, seen: u64| {
        switchyard::routing::session::Session::sign(&k, route, pool, issued, seen)
    };
    let now = now_s();
    let good = sign("web", "blue", now, now);
    let cases = [
        (good.clone(), "blue", None),
        (good.replacen("blue", "green", 1), "green", Some("forged")),
        (format!("{}x", &good[..good.len() - 1]), "green", Some("forged")),
        ("blue".to_owned(), "green", Some("forged")),
        (sign("api", "blue", now, now), "green", Some("forged")),
        (sign("web", "blue", now - 7200, now), "green", Some("max_age")),
        (sign("web", "blue", now - 60, now - 10), "green", Some("idle")),
        (sign("web", "other", now, now), "green", Some("removed")),
    ];
    for (value, pool, ended) in cases {
        let mut u = User::default();
        u.jar.insert("sy_ver".into(), value.clone());
        assert_eq!(u.get(&client, &url).await, pool, "{value}: {ended:?}");
        if ended.is_some() {
            assert!(
                u.jar["sy_ver"].starts_with("green."),
                "a new pin replaces {value}"
            );
        }
    }
    // HTTP/2, with the cookie split over two fields as h2 clients send it.
    let h2 = h2c_client();
    let req = Request::get(&url)
        .header("cookie", "a=1")
        .header("cookie", format!("sy_ver={good}"))
        .body(empty())
        .unwrap();
    let (parts, body) = send(&h2, req).await;
    assert_eq!(&body[..], b"blue", "{parts:?}");
    let text = metrics(&proxy).await;
    for (pool, reason, n) in [
        ("", "forged", 4),
        ("blue", "max_age", 1),
        ("blue", "idle", 1),
        ("", "removed", 1),
    ] {
        assert_eq!(
            metric(&text, &format!("switchyard_session_pins_ended_total{{pool=\"{pool}\",reason=\"{reason}\",route=\"web\"}}")),
            n,
            "{reason}"
        );
    }
    let route = api(&proxy, "/api/routes/web").await;
    assert_eq!(route["session"]["ended_forged"], 4, "{route}");
    assert_eq!(route["session"]["cookie"], "sy_ver");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_honour_each_others_pins_and_not_another_secrets() {
    set_secret();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    // Replica a has not switched yet; replica b has.
    let a = Proxy::start(&session_config(&blue, &green, "blue = 100, green = 0", "")).await;
    let b = Proxy::start(&session_config(&blue, &green, "blue = 0, green = 100", "")).await;
    let client = h1_client();
    let mut users = vec![User::default(); 20];
    for u in &mut users {
        assert_eq!(u.get(&client, &a.url("/")).await, "blue");
    }
    for round in 0..3 {
        for u in &mut users {
            let r = if round % 2 == 0 { &b } else { &a };
            assert_eq!(
                u.get(&client, &r.url("/")).await,
                "blue",
                "replica b honours replica a's pin"
            );
        }
    }
    let mut fresh = User::default();
    assert_eq!(fresh.get(&client, &b.url("/")).await, "green");
    assert_eq!(
        fresh.get(&client, &a.url("/")).await,
        "green",
        "and a honours b's"
    );
    // A replica with another secret cannot read them: they are forged there.
    std::env::set_var("SY_SESSIONS_OTHER_SECRET", "another-secret-of-enough-length");
    let c = Proxy::start(
        &session_config(&blue, &green, "blue = 0, green = 100", "")
            .replace(SECRET_VAR, "SY_SESSIONS_OTHER_SECRET"),
    )
    .await;
    assert_eq!(users[0].get(&client, &c.url("/")).await, "green");
    assert!(metrics(&c)
        .await
        .contains("switchyard_session_pins_ended_total{pool=\"\",reason=\"forged\",route=\"web\"} 1"));
    for p in [a, b, c] {
        p.shutdown().await;
    }
}

#[tokio::test]
async fn run_refuses_a_session_without_its_secret() {
    let text = "[listen]\nhttp = \"127.0.0.1:0\"\n[pools.blue]\nendpoints = [\"127.0.0.1:9\"]\n\
                [[routes]]\nname = \"web\"\nsplit = { blue = 100 }\n[routes.session]\nsecret_env = \"SY_SESSIONS_NEVER_SET\"\n";
    let err = match switchyard::App::start(switchyard::Source::Text {
        text: text.into(),
        name: "t.toml".into(),
    })
    .await
    {
        Ok(_) => panic!("started without the session secret"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("SY_SESSIONS_NEVER_SET, which is not set"), "{err}");
    std::env::set_var("SY_SESSIONS_SHORT_SECRET", "short");
    let err = match switchyard::App::start(switchyard::Source::Text {
        text: text.replace("SY_SESSIONS_NEVER_SET", "SY_SESSIONS_SHORT_SECRET"),
        name: "t.toml".into(),
    })
    .await
    {
        Ok(_) => panic!("started with a 5-byte secret"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("holds 5 bytes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_step_moves_new_sessions_only() {
    set_secret();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let extra = "[routes.guard]\nbaseline = \"blue\"\nmin_requests = 5\nwindow = \"5s\"\n\
                 [routes.rollout]\npool = \"green\"\nsteps = [10, 100]\nevery = \"1s\"\n";
    let proxy = Proxy::start(&session_config(&blue, &green, "blue = 100, green = 0", extra)).await;
    let url = proxy.url("/");
    let client = h1_client();
    // Users who started at the first step (10%): most on blue.
    let mut users = vec![User::default(); 40];
    for u in &mut users {
        u.get(&client, &url).await;
    }
    // New users keep the guard's sample coming; the old ones keep their sessions alive.
    eventually("the rollout reaches 100%", Duration::from_secs(20), async || {
        let mut fresh = User::default();
        fresh.get(&client, &url).await;
        for u in users.iter_mut() {
            u.get(&client, &url).await;
        }
        api(&proxy, "/api/routes/web").await["rollout"]["percent"] == 100
    })
    .await;
    for u in &mut users {
        let first = u.seen[0].clone();
        u.get(&client, &url).await;
        assert!(
            u.seen.iter().all(|p| *p == first),
            "a pinned user moved with a rollout step: {:?}",
            u.seen
        );
    }
    assert!(
        users.iter().filter(|u| u.seen[0] == "blue").count() >= 25,
        "most began on blue"
    );
    for _ in 0..10 {
        assert_eq!(
            User::default().get(&client, &url).await,
            "green",
            "new sessions follow the step"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_survive_a_restart_and_a_restarted_replica_does_not_claim_a_drain() {
    set_secret();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let before = Proxy::start(&session_config(&blue, &green, "blue = 100, green = 0", "")).await;
    let client = h1_client();
    let mut u = User::default();
    assert_eq!(u.get(&client, &before.url("/")).await, "blue");
    before.shutdown().await;
    // Restarted, switched: the pin from before the restart holds.
    let after = Proxy::start(&session_config(&blue, &green, "blue = 0, green = 100", "")).await;
    let route = api(&after, "/api/routes/web").await;
    assert_eq!(
        pool_status(&route, "blue")["drained"],
        false,
        "pins from before the start are not known: {route}"
    );
    assert_eq!(u.get(&client, &after.url("/")).await, "blue");
    after.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_a_session_without_its_secret_changes_nothing() {
    set_secret();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, session_config(&blue, &green, "blue = 100, green = 0", "")).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let before = api(&proxy, "/api/config").await["revision"].clone();
    // The switch, but signed with a variable this process does not have.
    let text = session_config(&blue, &green, "blue = 0, green = 100", "")
        .replace(SECRET_VAR, "SY_SESSIONS_NEVER_SET");
    std::fs::write(&path, text).unwrap();
    eventually("the reload is refused", Duration::from_secs(10), async || {
        let c = api(&proxy, "/api/config").await;
        c["last_error"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("SY_SESSIONS_NEVER_SET, which is not set"))
    })
    .await;
    assert_eq!(api(&proxy, "/api/config").await["revision"], before);
    assert_eq!(
        User::default().get(&h1_client(), &proxy.url("/")).await,
        "blue",
        "the last good config serves"
    );
    proxy.shutdown().await;
}
