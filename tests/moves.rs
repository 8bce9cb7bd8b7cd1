//! Who moves when a guard trips or a rollout steps, with three and four pools and the baseline
//! in every position: every user of the tripped pool lands on the baseline and nobody else
//! moves; a rollout takes its users from the baseline and leaves the other pools' alone. Each
//! user's pool is read from the real proxy's answers (3,000 users).

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Request;
use support::*;

const USERS: usize = 3000;

/// The pool each user is sent to now, as the upstreams answer.
async fn pools_of_users(proxy: &Proxy) -> Vec<String> {
    let client = h1_client();
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let (client, url) = (client.clone(), proxy.url("/"));
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for u in (chunk..USERS).step_by(8) {
                let req = Request::get(&url)
                    .header("x-user-id", format!("user-{u}"))
                    .body(empty())
                    .unwrap();
                let (parts, _) = send(&client, req).await;
                out.push((u, parts.headers["x-upstream"].to_str().unwrap().to_owned()));
            }
            out
        }));
    }
    let mut all = vec![String::new(); USERS];
    for t in tasks {
        for (u, pool) in t.await.unwrap() {
            all[u] = pool;
        }
    }
    all
}

async fn route(proxy: &Proxy) -> serde_json::Value {
    let (_, body) = get(&h1_client(), &proxy.admin_url("/api/routes/web")).await;
    serde_json::from_slice(&body).unwrap()
}

/// A proxy with one route over `pools` (written in that order, with these weights), guarded
/// with `baseline`, and `extra` in the route.
async fn start(pools: &[(&'static str, u32)], baseline: &str, extra: &str) -> (Vec<Upstream>, Proxy) {
    let mut ups = Vec::new();
    let mut cfg = String::from("[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n[identity]\nfrom = [\"header:x-user-id\"]\n");
    for (name, _) in pools {
        let up = Upstream::start(name).await;
        cfg.push_str(&format!("[pools.{name}]\nendpoints = [\"{}\"]\n", up.addr));
        ups.push(up);
    }
    let split: Vec<String> = pools.iter().map(|(n, w)| format!("{n} = {w}")).collect();
    cfg.push_str(&format!(
        "[[routes]]\nname = \"web\"\nsplit = {{ {} }}\noverride = {{ header = \"x-switchyard-pool\" }}\n\
         [routes.guard]\nbaseline = \"{baseline}\"\nmax_error_rate = 0.05\nmin_requests = 5\nwindow = \"10s\"\n{extra}",
        split.join(", ")
    ));
    (ups, Proxy::start(&cfg).await)
}

/// Makes `victim` fail and sends it traffic until the guard trips it.
async fn trip(proxy: &Proxy, ups: &[Upstream], victim: &str) {
    let up = ups.iter().find(|u| u.name == victim).unwrap();
    up.seen.fail_every.store(1, Ordering::SeqCst);
    let client = h1_client();
    let started = Instant::now();
    while route(proxy).await["tripped"] != true {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{victim} did not trip"
        );
        for _ in 0..10 {
            let req = Request::get(proxy.url("/"))
                .header("x-switchyard-pool", victim)
                .body(empty())
                .unwrap();
            send(&client, req).await;
        }
    }
    up.seen.fail_every.store(0, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_moves_exactly_the_tripped_pools_users_to_the_baseline() {
    // (the split in written order, the baseline, the pool that fails)
    type Case<'a> = (&'a [(&'a str, u32)], &'a str, &'a str);
    let cases: &[Case<'static>] = &[
        (&[("blue", 45), ("green", 45), ("canary", 10)], "blue", "canary"),
        (&[("green", 45), ("canary", 10), ("blue", 45)], "blue", "canary"),
        (&[("canary", 10), ("green", 45), ("blue", 45)], "blue", "green"),
        (&[("green", 45), ("blue", 45), ("canary", 10)], "blue", "canary"),
        (&[("a", 25), ("b", 25), ("c", 25), ("d", 25)], "a", "c"),
        (&[("a", 25), ("b", 25), ("c", 25), ("d", 25)], "b", "d"),
        (&[("a", 25), ("b", 25), ("c", 25), ("d", 25)], "c", "a"),
        (&[("a", 10), ("b", 40), ("c", 30), ("d", 20)], "d", "b"),
    ];
    // Every case at once.
    let case = async |(pools, baseline, victim): Case<'static>| {
        let (ups, proxy) = start(pools, baseline, "").await;
        let before = pools_of_users(&proxy).await;
        let on_victim = before.iter().filter(|p| *p == victim).count();
        assert!(on_victim > USERS / 20, "{pools:?}: {on_victim} users on {victim}");
        trip(&proxy, &ups, victim).await;
        let after = pools_of_users(&proxy).await;
        let mut moved: HashMap<(String, String), usize> = HashMap::new();
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                *moved.entry((b.clone(), a.clone())).or_default() += 1;
            }
        }
        let want: HashMap<(String, String), usize> = [((victim.to_owned(), baseline.to_owned()), on_victim)]
            .into_iter()
            .collect();
        assert_eq!(moved, want, "{pools:?}, baseline {baseline}, {victim} tripped");
        proxy.shutdown().await;
    };
    futures_util::future::join_all(cases.iter().map(|&c| case(c))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_beside_two_pools_moves_no_bystander() {
    let rollout = "[routes.rollout]\npool = \"canary\"\nsteps = [10, 30, 50, 80, 100]\nevery = \"1h\"\n";
    let (_ups, proxy) = start(&[("blue", 50), ("green", 50), ("canary", 0)], "blue", rollout).await;
    let client = h1_client();
    let mut before = pools_of_users(&proxy).await;
    for step in 1..5 {
        let (parts, body) = send(
            &client,
            Request::post(proxy.admin_url("/api/routes/web/promote"))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(parts.status, 200, "{body:?}");
        let after = pools_of_users(&proxy).await;
        for (u, (b, a)) in before.iter().zip(&after).enumerate() {
            if b != a {
                assert_eq!(a, "canary", "step {step}: user-{u} moved from {b} to {a}");
            }
            // Up to 50%, the canary's share comes out of blue's range alone.
            if step <= 2 {
                assert!(
                    !(b == "green" && a != "green"),
                    "step {step}: green's user-{u} moved"
                );
            }
        }
        let share = after.iter().filter(|p| *p == "canary").count() as f64 / USERS as f64;
        let want = [0.1, 0.3, 0.5, 0.8, 1.0][step];
        assert!((share - want).abs() < 0.03, "step {step}: canary has {share}");
        before = after;
    }
    proxy.shutdown().await;
}
