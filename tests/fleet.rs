//! `[fleet]` with a real Prometheus scraping three replicas of the same config on loopback,
//! each with its own state file: the fleet's numbers trip a canary that no replica sees enough
//! of alone; a trip on the one replica with traffic reaches the other two; a rollback on one
//! moves all; a replica restarted with no state file comes up tripped; with Prometheus stopped,
//! each replica says so and keeps judging its own traffic; a rollout across three replicas
//! keeps their steps within one of each other; another environment's replicas in the same
//! Prometheus never count; one incident sends one webhook; a config change that replaces a
//! pool's endpoints is not tripped again by the old ones' errors; a rollback reaches replicas
//! on another split; a replica that starts with no state while Prometheus is down serves its
//! baseline and says it is not ready; thin traffic on every replica steps a rollout on the
//! fleet's numbers. Needs the `prometheus` binary: `.ci/run`
//! installs it and runs these tests; `cargo test` alone skips them as ignored.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::Request;
use serde_json::Value;
use support::*;

struct Replica {
    _dir: tempfile::TempDir,
    path: PathBuf,
    proxy: Proxy,
}

impl Replica {
    async fn start(config: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, config).unwrap();
        let proxy = Proxy::start_file(&path).await;
        Replica {
            _dir: dir,
            path,
            proxy,
        }
    }

    async fn api(&self, path: &str) -> Value {
        let (_, body) = get(&h1_client(), &self.proxy.admin_url(path)).await;
        serde_json::from_slice(&body).unwrap()
    }

    async fn post(&self, path: &str) -> Value {
        let (parts, body) = send(
            &h1_client(),
            Request::post(self.proxy.admin_url(path)).body(empty()).unwrap(),
        )
        .await;
        assert!(
            parts.status.is_success(),
            "{path}: {:?}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).unwrap()
    }

    async fn web(&self) -> Value {
        self.api("/api/routes/web").await
    }

    /// `n` requests of new users, or forced to `pool` by the override header.
    async fn traffic(&self, n: usize, pool: Option<&str>) {
        let client = h1_client();
        for i in 0..n {
            let mut req = Request::get(self.proxy.url("/"))
                .header("x-user-id", format!("t{}", fastrand::u64(..) ^ i as u64));
            if let Some(p) = pool {
                req = req.header("x-switchyard-pool", p);
            }
            let _ = client
                .request(req.body(empty()).unwrap())
                .await
                .map(|r| drop(r.into_body()));
        }
    }
}

/// Requests of random users to `r`, one after another with `pause` between, until aborted.
fn load(r: &Replica, pause: Duration) -> tokio::task::JoinHandle<()> {
    let url = r.proxy.url("/");
    tokio::spawn(async move {
        let client = h1_client();
        loop {
            let req = Request::get(&url)
                .header("x-user-id", format!("u{}", fastrand::u32(..)))
                .body(empty())
                .unwrap();
            let _ = client.request(req).await.map(|r| drop(r.into_body()));
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    })
}

/// Waits up to `within` for `check` on each replica; how long each took.
async fn until_all<F, Fut>(replicas: &[&Replica], within: Duration, what: &str, check: F) -> Vec<Duration>
where
    F: Fn(Value) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut took = vec![None; replicas.len()];
    while took.iter().any(Option::is_none) {
        for (i, r) in replicas.iter().enumerate() {
            if took[i].is_none() && check(r.web().await).await {
                took[i] = Some(start.elapsed());
            }
        }
        if start.elapsed() > within {
            let mut shown = Vec::new();
            for r in replicas {
                shown.push(r.web().await);
            }
            panic!("{what}: not on every replica within {within:?}: {took:?}\n{shown:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    took.into_iter().map(Option::unwrap).collect()
}

fn config(prometheus: u16, blue: SocketAddr, canary: SocketAddr, route_extra: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n\
         [identity]\nfrom = [\"header:x-user-id\"]\n\
         [fleet]\nname = \"shop\"\nprometheus = \"http://127.0.0.1:{prometheus}\"\nselector = 'job=\"fleet\"'\ninterval = \"500ms\"\n\
         [pools.blue]\nendpoints = [\"{blue}\"]\n[pools.canary]\nendpoints = [\"{canary}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ blue = 50, canary = 50 }}\noverride = {{ header = \"x-switchyard-pool\" }}\n{route_extra}"
    )
}

/// Upstreams for blue and a canary that fails on demand, a port for Prometheus, and the
/// replicas' config with `route_extra` on its route: (canary, Prometheus's port, config).
async fn setup(route_extra: &str) -> (SocketAddr, u16, String) {
    let blue = switchyard::demo::start_upstream("blue").await.unwrap();
    let canary = switchyard::demo::start_upstream("canary").await.unwrap();
    let port = free_port();
    (canary, port, config(port, blue, canary, route_extra))
}

/// Three replicas on `text`, and Prometheus on `port` scraping them.
async fn three(text: &str, port: u16, dir: &std::path::Path) -> ([Replica; 3], Killed) {
    let replicas = [
        Replica::start(text).await,
        Replica::start(text).await,
        Replica::start(text).await,
    ];
    let targets: Vec<SocketAddr> = replicas.iter().map(|r| r.proxy.admin.unwrap()).collect();
    (replicas, prometheus(port, dir, &targets))
}

async fn fail(canary: SocketAddr, percent: u32) {
    let url = format!("http://{canary}/_demo/fail?percent={percent}");
    assert_eq!(
        send(&h1_client(), Request::post(url).body(empty()).unwrap())
            .await
            .0
            .status,
        200
    );
}

fn tripped(v: &Value) -> bool {
    v["tripped"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the prometheus binary: .ci/run installs it and runs this test"]
async fn three_replicas_trip_together_through_prometheus() {
    let (canary, port, text) = setup("guard = { baseline = \"blue\", min_requests = 20 }\n").await;
    let dir = tempfile::tempdir().unwrap();
    let ([a, b, c], prom) = three(&text, port, dir.path()).await;
    let mut prom = Some(prom);
    let all = [&a, &b, &c];
    // Every replica sees the fleet of three.
    let deadline = Instant::now() + Duration::from_secs(60);
    for r in all {
        loop {
            let f = r.api("/api/fleet").await;
            if f["up"] == true && f["replicas"] == 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the fleet never showed three replicas: {f}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // 1. The fleet's numbers: 12 failing canary requests on each replica are under each one's
    //    min_requests (20), but 36 for the fleet: the fleet trips the canary.
    fail(canary, 100).await;
    for r in all {
        r.traffic(12, Some("canary")).await;
    }
    until_all(
        &all,
        Duration::from_secs(15),
        "a trip on the fleet's numbers",
        |v| async move { tripped(&v) },
    )
    .await;
    let reasons: Vec<String> = {
        let mut v = Vec::new();
        for r in all {
            v.push(r.web().await["trips"][0]["reason"].as_str().unwrap().to_owned());
        }
        v
    };
    assert!(
        reasons.iter().any(|r| r.starts_with("fleet numbers (3 replicas")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .all(|r| r.starts_with("fleet numbers") || r.contains("tripped on replica")),
        "{reasons:?}"
    );
    eprintln!("fleet numbers: {reasons:?}");

    // 2. Reset on one replica resets all.
    fail(canary, 0).await;
    a.post("/api/routes/web/reset").await;
    until_all(&all, Duration::from_secs(10), "a reset", |v| async move {
        !tripped(&v)
    })
    .await;
    // Nothing trips again on the errors that caused the trip.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for r in all {
        assert!(!tripped(&r.web().await), "tripped again after the reset");
    }

    // 3. Only replica A has traffic; the canary fails; A trips on its own numbers and the others
    //    follow within two scrape intervals and a judgement.
    fail(canary, 50).await;
    let busy = load(&a, Duration::ZERO);
    until_all(
        &[&a],
        Duration::from_secs(15),
        "a local trip on A",
        |v| async move { tripped(&v) },
    )
    .await;
    let took = until_all(
        &[&b, &c],
        Duration::from_secs(10),
        "B and C following A",
        |v| async move { tripped(&v) },
    )
    .await;
    eprintln!("A tripped on its own numbers; B and C followed {took:?} later");
    assert!(took.iter().all(|t| *t < Duration::from_secs(4)), "{took:?}");
    // The audit trails: A's own trip; B and C took it from A, and say so.
    let from = a.proxy.state.replica().to_owned();
    assert!(a.api("/api/events?kind=trip").await["matched"].as_u64().unwrap() >= 1);
    for r in [&b, &c] {
        let v = r.api("/api/events?kind=adopt").await;
        let last = v["events"].as_array().unwrap().last().cloned().unwrap();
        assert_eq!(last["details"]["replica"], from.as_str(), "{last}");
        assert!(
            last["details"]["tripped"].to_string().contains("canary"),
            "{last}"
        );
        assert!(last["text"].as_str().unwrap().contains(&from), "{last}");
    }
    let reason = a.web().await["trips"][0]["reason"].as_str().unwrap().to_owned();
    assert!(reason.starts_with("local numbers: "), "{reason}");
    // B took A's trip, or judged the fleet's numbers (A's among them) first: either way, the
    //    reason says which.
    let reason = b.web().await["trips"][0]["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("tripped on replica") || reason.starts_with("fleet numbers (3 replicas"),
        "{reason}"
    );
    busy.abort();
    fail(canary, 0).await;

    // 4. A rollback on B moves every replica; reset it first everywhere.
    c.post("/api/routes/web/reset").await;
    until_all(&all, Duration::from_secs(10), "a reset", |v| async move {
        !tripped(&v)
    })
    .await;
    b.post("/api/routes/web/rollback").await;
    until_all(&all, Duration::from_secs(10), "a rollback", |v| async move {
        tripped(&v) && v["trips"][0]["manual"] == true && v["effective"][0]["share"] == 1.0
    })
    .await;

    // 5. C restarts with an empty state volume: it comes up rolled back, as the fleet is.
    let config_path = c.path.clone();
    let state_file = config_path.with_file_name("switchyard.toml.state.json");
    c.proxy.shutdown().await;
    std::fs::remove_file(&state_file).unwrap();
    let c2 = Replica {
        proxy: Proxy::start_file(&config_path).await,
        path: config_path,
        _dir: c._dir,
    };
    let took = until_all(
        &[&c2],
        Duration::from_secs(10),
        "the restarted replica joining in",
        |v| async move { tripped(&v) },
    )
    .await;
    eprintln!("a replica restarted with no state file came up rolled back {took:?} after start");

    // 6. Prometheus stops: every replica says so, in the API, the metric and status, and keeps
    //    judging its own traffic.
    drop(prom.take());
    for r in [&a, &b, &c2] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let f = r.api("/api/fleet").await;
            if f["up"] == false {
                assert!(
                    f["judging"].as_str().unwrap().starts_with("local numbers only"),
                    "{f}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus stopped and the replica did not say so: {f}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, metrics) = get(&h1_client(), &r.proxy.admin_url("/metrics")).await;
        let metrics = String::from_utf8_lossy(&metrics);
        assert!(
            metrics.contains(&format!(
                "switchyard_fleet_up{{prometheus=\"http://127.0.0.1:{port}\"}} 0"
            )),
            "{metrics}"
        );
    }
    let view = switchyard::cli::status::View {
        config: a.api("/api/config").await,
        routes: a.api("/api/routes").await,
        pools: a.api("/api/pools").await,
        fleet: a.api("/api/fleet").await,
    };
    let shown = switchyard::cli::status::render(&view, std::time::SystemTime::now());
    assert!(
        shown.contains("DOES NOT ANSWER") && shown.contains("judging local numbers only"),
        "{shown}"
    );
    a.post("/api/routes/web/reset").await;
    assert!(!tripped(&a.web().await));
    fail(canary, 50).await;
    let busy = load(&a, Duration::ZERO);
    until_all(
        &[&a],
        Duration::from_secs(15),
        "a local trip without Prometheus",
        |v| async move {
            tripped(&v)
                && v["trips"][0]["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("local numbers: ")
        },
    )
    .await;
    busy.abort();
    a.proxy.shutdown().await;
    b.proxy.shutdown().await;
    c2.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the prometheus binary: .ci/run installs it and runs this test"]
async fn a_rollout_across_three_replicas_keeps_their_steps_within_one() {
    let (_, port, text) = setup(
        "guard = { baseline = \"blue\", min_requests = 5 }\nrollout = { pool = \"canary\", steps = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100], every = \"3s\" }\n",
    )
    .await;
    let text = text.replace("blue = 50, canary = 50", "blue = 100, canary = 0");
    let dir = tempfile::tempdir().unwrap();
    let ([a, b, c], _prom) = three(&text, port, dir.path()).await;
    // Traffic on A and B, whose guards pass the canary and step the rollout; C has none, so
    //    its own guard would hold it at the first step forever: it follows the fleet.
    let mut busy = Vec::new();
    for r in [&a, &b] {
        busy.push(load(r, Duration::from_millis(5)));
    }
    let start = Instant::now();
    let mut widest = 0;
    let mut seen = Vec::new();
    loop {
        let mut steps = Vec::new();
        for r in [&a, &b, &c] {
            steps.push(r.web().await["rollout"]["step"].as_u64().unwrap());
        }
        let spread = steps.iter().max().unwrap() - steps.iter().min().unwrap();
        widest = widest.max(spread);
        assert!(
            spread <= 1,
            "replicas' steps {steps:?} after {:?}",
            start.elapsed()
        );
        if seen.last() != Some(&steps) {
            seen.push(steps.clone());
        }
        if steps.iter().all(|&s| s == 9) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the rollout did not finish: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "rollout done in {:?}; widest spread {widest}; states {seen:?}",
        start.elapsed()
    );
    for l in busy {
        l.abort();
    }
    for r in [a, b, c] {
        r.proxy.shutdown().await;
    }
}

/// Who served a request of a new user on `r`: the upstream's `x-served-by`.
async fn served_by(r: &Replica, user: &str) -> String {
    let req = Request::get(r.proxy.url("/"))
        .header("x-user-id", user)
        .body(empty())
        .unwrap();
    let (parts, _) = send(&h1_client(), req).await;
    parts
        .headers
        .get("x-served-by")
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
}

/// Writes `text` as `r`'s config and reloads it.
async fn reload(r: &Replica, text: &str) {
    std::fs::write(&r.path, text).unwrap();
    let v = r.post("/api/reload").await;
    assert_eq!(v["result"], "ok", "{v}");
}

/// The operator trials, each as it was found: another environment in the same
/// Prometheus, one webhook per incident, endpoints replaced by a config change, a rollback
/// during a config rollout, and a replica that starts with no state while Prometheus is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the prometheus binary: .ci/run installs it and runs this test"]
async fn a_fleet_keeps_to_its_own_replicas_splits_and_incidents() {
    let hooks = Recorder::start(ok_answer).await;
    let (canary, port, text) = setup(&format!(
        "guard = {{ baseline = \"blue\", min_requests = 20 }}\n[[notify]]\nurl = \"http://{}/hook\"\nevents = [\"trip\"]\n",
        hooks.addr
    ))
    .await;
    let healthy = switchyard::demo::start_upstream("canary2").await.unwrap();
    let staging_text = text
        .replace("name = \"shop\"", "name = \"shop-staging\"")
        .replace(
            &format!(
                "[[notify]]\nurl = \"http://{}/hook\"\nevents = [\"trip\"]\n",
                hooks.addr
            ),
            "",
        );
    let dir = tempfile::tempdir().unwrap();
    let (a, b, s) = (
        Replica::start(&text).await,
        Replica::start(&text).await,
        Replica::start(&staging_text).await,
    );
    let mut targets: Vec<SocketAddr> = [&a, &b, &s].iter().map(|r| r.proxy.admin.unwrap()).collect();
    let mut prom = Some(prometheus(port, dir.path(), &targets));
    for r in [&a, &b] {
        eventually("the fleet of two", Duration::from_secs(60), async || {
            let f = r.api("/api/fleet").await;
            f["up"] == true && f["replicas"] == 2
        })
        .await;
    }
    let notifiers = (
        a.api("/api/fleet").await["notifier"].clone(),
        b.api("/api/fleet").await["notifier"].clone(),
    );
    assert_eq!(notifiers.0, notifiers.1, "one notifier for the fleet");
    assert!(notifiers.0.is_string());

    // 1. Staging's canary fails in the same Prometheus (same job, route and pool names):
    //    production's replicas never count its series.
    fail(canary, 100).await;
    s.traffic(60, Some("canary")).await;
    until_all(
        &[&s],
        Duration::from_secs(15),
        "staging's own trip",
        |v| async move { tripped(&v) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    for r in [&a, &b] {
        assert!(!tripped(&r.web().await), "staging's errors tripped production");
    }
    assert_eq!(s.api("/api/fleet").await["replicas"], 1);

    // 2. One incident, one webhook: 12 failing canary requests on each production replica
    //    are under min_requests alone and over it together; both trip, one webhook is sent.
    a.traffic(12, Some("canary")).await;
    b.traffic(12, Some("canary")).await;
    until_all(
        &[&a, &b],
        Duration::from_secs(15),
        "the fleet's trip",
        |v| async move { tripped(&v) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let trips: Vec<Recorded> = hooks
        .requests()
        .into_iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("\"trip\""))
        .collect();
    assert_eq!(trips.len(), 1, "one webhook per incident: {:?}", hooks.text());
    let reason = a.web().await["trips"][0]["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.starts_with("fleet numbers (2 replicas on this split)") && reason.contains("over the last "),
        "the reason states the replicas and the range judged: {reason}"
    );

    // 3. The canary's endpoints are replaced by a config change on both: the trip ends, and
    //    the old endpoints' errors (still within the guard's window) never trip it again.
    let replaced = text.replace(&canary.to_string(), &healthy.to_string());
    reload(&a, &replaced).await;
    reload(&b, &replaced).await;
    for r in [&a, &b] {
        assert!(!tripped(&r.web().await));
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    for r in [&a, &b] {
        let v = r.web().await;
        assert!(!tripped(&v), "tripped again by the old endpoints' errors: {v}");
    }

    // 4. A config rollout under way: B is on another split. An operator's rollback on A
    //    reaches B (a rollback is always safe).
    let other_split = replaced.replace("blue = 50, canary = 50", "blue = 60, canary = 40");
    reload(&b, &other_split).await;
    a.post("/api/routes/web/rollback").await;
    until_all(
        &[&a, &b],
        Duration::from_secs(10),
        "the rollback",
        |v| async move { tripped(&v) && v["trips"][0]["manual"] == true },
    )
    .await;
    let reason = b.web().await["trips"][0]["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("rolled back by an operator on replica"),
        "{reason}"
    );

    // 5. Prometheus is down; a new replica starts with no state: it serves every user from
    //    its baseline from the first request, and says it is not ready.
    drop(prom.take());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = Replica::start(&replaced).await;
    let mut served = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..300 {
        *served
            .entry(served_by(&c, &format!("new-{i}")).await)
            .or_default() += 1;
    }
    assert_eq!(served.keys().collect::<Vec<_>>(), ["blue"], "{served:?}");
    let (parts, body) = get(&h1_client(), &c.proxy.admin_url("/readyz")).await;
    assert_eq!(parts.status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("waiting for the fleet"));
    assert_eq!(c.web().await["held"], true);
    // Prometheus is back (scraping C too): C takes the fleet's rollback, is ready, and
    //    its route is no longer held.
    targets.push(c.proxy.admin.unwrap());
    let _prom = prometheus(port, dir.path(), &targets);
    eventually(
        "C ready with the fleet's state",
        Duration::from_secs(30),
        async || {
            let v = c.web().await;
            v["held"] == false && tripped(&v)
        },
    )
    .await;
    let (parts, _) = get(&h1_client(), &c.proxy.admin_url("/readyz")).await;
    assert_eq!(parts.status, 200);
    for r in [a, b, c, s] {
        r.proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the prometheus binary: .ci/run installs it and runs this test"]
async fn a_rollout_steps_on_the_fleets_numbers_when_each_replica_sees_too_few() {
    let (_, port, text) = setup(
        "guard = { baseline = \"blue\", min_requests = 20, window = \"5s\" }\nrollout = { pool = \"canary\", steps = [10, 50, 100], every = \"4s\" }\n",
    )
    .await;
    let text = text.replace("blue = 50, canary = 50", "blue = 100, canary = 0");
    let dir = tempfile::tempdir().unwrap();
    let ([a, b, c], _prom) = three(&text, port, dir.path()).await;
    // Each replica: a canary request every 300 ms, about 16 in a 5 s window (under 20); the
    //    fleet's 3 × that is over.
    let thin: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|r| {
            let url = r.proxy.url("/");
            tokio::spawn(async move {
                let client = h1_client();
                loop {
                    let req = Request::get(&url)
                        .header("x-switchyard-pool", "canary")
                        .body(empty())
                        .unwrap();
                    let _ = client.request(req).await.map(|r| drop(r.into_body()));
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            })
        })
        .collect();
    until_all(
        &[&a, &b, &c],
        Duration::from_secs(90),
        "the last step on the fleet's numbers",
        |v| async move { v["rollout"]["step"] == 2 },
    )
    .await;
    for t in thin {
        t.abort();
    }
    for r in [a, b, c] {
        r.proxy.shutdown().await;
    }
}
