//! Experiments through the proxy: simulated users with known conversion rates per variant (10 %
//! and 12 % over 20,000 users) give counts within the sketch's error of the truth, and rates,
//! intervals and a p-value that agree with a reference computation on the same counts; a 60/40
//! assignment under 50/50 weights is flagged as a sample-ratio mismatch; two replicas' results
//! merged by `switchyard experiments --admin A --admin B` equal those of one proxy that saw all
//! the traffic; the counts survive a restart; metrics export them.

mod support;

use std::path::Path;

use http::Request;
use serde_json::Value;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn experiment_config(up: &Upstream, admin: u16) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\naccess = false\n\
         [identity]\nfrom = [\"header:x-user-id\"]\n[pools.app]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n\
         [[flags]]\nname = \"checkout_ab\"\nvariants = {{ control = 50, treatment = 50 }}\n\
         [[experiments]]\nname = \"checkout_ab\"\nflag = \"checkout_ab\"\n\
         goal = {{ path_prefix = \"/checkout/complete\", method = \"POST\", status = \"2xx\" }}\n",
        up.addr
    )
}

/// The variant a user is in, as the upstream saw it.
async fn visit(client: &Client, proxy: &Proxy, user: &str) -> String {
    let req = Request::get(proxy.url("/echo"))
        .header("x-user-id", user)
        .body(empty())
        .unwrap();
    let (_, body) = send(client, req).await;
    let seen: Value = serde_json::from_slice(&body).unwrap();
    seen["x-switchyard-flags"][0]
        .as_str()
        .unwrap()
        .trim_start_matches("checkout_ab=")
        .to_owned()
}

async fn convert(client: &Client, proxy: &Proxy, user: &str) {
    let req = Request::post(proxy.url("/checkout/complete"))
        .header("x-user-id", user)
        .body(full("{}"))
        .unwrap();
    assert_eq!(send(client, req).await.0.status, 200);
}

type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

/// A user's draw in [0, 1000), fixed by their index.
fn draw(i: usize) -> u32 {
    (i as u32).wrapping_mul(2_654_435_761) % 1000
}

/// The standard normal's upper tail by Simpson's rule on its density: a reference independent
/// of the proxy's incomplete-gamma code.
fn normal_sf(z: f64) -> f64 {
    let (a, b, n) = (0.0, z.abs(), 20_000);
    let h = (b - a) / n as f64;
    let f = |x: f64| (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let mut s = f(a) + f(b);
    for k in 1..n {
        s += f(a + k as f64 * h) * if k % 2 == 1 { 4.0 } else { 2.0 };
    }
    0.5 - s * h / 3.0
}

fn admin_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_rates_give_the_reference_statistics_and_replicas_merge_exactly() {
    let up = Upstream::start("app").await;
    let (pa, pb, pc) = (admin_port(), admin_port(), admin_port());
    let a = Proxy::start(&experiment_config(&up, pa)).await;
    let b = Proxy::start(&experiment_config(&up, pb)).await;
    let all = Proxy::start(&experiment_config(&up, pc)).await;
    let client = h1_client();
    // 20,000 users, eight at a time: each user's visits and conversion in order.
    let user = async |i: usize| -> (String, bool) {
        let user = format!("user-{i}");
        // Half the users reach replica a, half b; the third proxy sees everyone.
        let replica = if i.is_multiple_of(2) { &a } else { &b };
        let variant = visit(&client, replica, &user).await;
        assert_eq!(
            visit(&client, &all, &user).await,
            variant,
            "replicas agree on the variant"
        );
        let rate = if variant == "control" { 100 } else { 120 };
        let converted = draw(i) < rate;
        if converted {
            convert(&client, replica, &user).await;
            convert(&client, &all, &user).await;
        }
        (variant, converted)
    };
    let lanes = (0..8).map(|lane| async move {
        let mut seen = Vec::new();
        for i in (lane..20_000).step_by(8) {
            seen.push(user(i).await);
        }
        seen
    });
    let mut truth = std::collections::HashMap::<String, (u64, u64)>::new();
    for (variant, converted) in futures_util::future::join_all(lanes).await.into_iter().flatten() {
        let t = truth.entry(variant).or_default();
        t.0 += 1;
        t.1 += u64::from(converted);
    }
    let api: Value =
        serde_json::from_slice(&get(&client, &all.admin_url("/api/experiments")).await.1).unwrap();
    let arms = api[0]["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 2);
    for arm in arms {
        let (exposed, converted) = truth[arm["name"].as_str().unwrap()];
        let near = |got: &Value, want: u64| (got.as_f64().unwrap() - want as f64).abs() <= want as f64 * 0.02;
        assert!(near(&arm["exposed"], exposed), "{arm} vs {exposed}");
        assert!(near(&arm["converted"], converted), "{arm} vs {converted}");
    }
    // The statistics agree with a reference computation on the API's own counts.
    let (e0, c0) = (
        arms[0]["exposed"].as_f64().unwrap(),
        arms[0]["converted"].as_f64().unwrap(),
    );
    let (e1, c1) = (
        arms[1]["exposed"].as_f64().unwrap(),
        arms[1]["converted"].as_f64().unwrap(),
    );
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let z95 = 1.959963984540054;
    for (arm, e, c) in [(&arms[0], e0, c0), (&arms[1], e1, c1)] {
        let p = c / e;
        let d = 1.0 + z95 * z95 / e;
        let centre = (p + z95 * z95 / (2.0 * e)) / d;
        let half = z95 * (p * (1.0 - p) / e + z95 * z95 / (4.0 * e * e)).sqrt() / d;
        assert_eq!(r3(arm["rate"].as_f64().unwrap()), r3(p));
        assert_eq!(r3(arm["ci"][0].as_f64().unwrap()), r3(centre - half));
        assert_eq!(r3(arm["ci"][1].as_f64().unwrap()), r3(centre + half));
    }
    let pooled = (c0 + c1) / (e0 + e1);
    let z = (c1 / e1 - c0 / e0) / (pooled * (1.0 - pooled) * (1.0 / e0 + 1.0 / e1)).sqrt();
    assert_eq!(r3(arms[1]["z"].as_f64().unwrap()), r3(z));
    let p_value = 2.0 * normal_sf(z);
    assert!(
        (arms[1]["p_value"].as_f64().unwrap() - p_value).abs() < 1e-6,
        "{} vs {p_value}",
        arms[1]["p_value"]
    );
    assert!(
        p_value < 0.05,
        "10% against 12% over 20,000 users is significant: {p_value}"
    );
    assert_eq!(api[0]["srm"]["mismatch"], false, "{}", api[0]["srm"]);

    // Two replicas merged equal the proxy that saw everything.
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(BIN)
            .args(&args)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    let merged = run(vec![
        "experiments".into(),
        "--json".into(),
        "--admin".into(),
        url(pa),
        "--admin".into(),
        url(pb),
    ])
    .await;
    let single = run(vec![
        "experiments".into(),
        "--json".into(),
        "--admin".into(),
        url(pc),
    ])
    .await;
    assert_eq!(merged, single);
    let table = run(vec![
        "experiments".into(),
        "--admin".into(),
        url(pa),
        "--admin".into(),
        url(pb),
    ])
    .await;
    assert!(
        table.contains(
            "checkout_ab (flag checkout_ab; goal POST /checkout/complete* answered 2xx; 2 replicas merged)"
        ),
        "{table}"
    );
    assert!(table.contains("sample ratio: chi-square"), "{table}");
    let metrics = String::from_utf8(get(&client, &all.admin_url("/metrics")).await.1.to_vec()).unwrap();
    assert!(
        metrics.contains(
            "switchyard_experiment_users{experiment=\"checkout_ab\",kind=\"exposed\",variant=\"control\"}"
        ),
        "{metrics}"
    );
    for p in [a, b, all] {
        p.shutdown().await;
    }
}

/// `/api/config`, and what it says of the experiments' counts found at start.
async fn load_problem(client: &Client, proxy: &Proxy) -> (Value, String) {
    let config: Value =
        serde_json::from_slice(&get(client, &proxy.admin_url("/api/config")).await.1).unwrap();
    let problem = config["state"]["experiments_load_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (config, problem)
}

#[tokio::test]
async fn a_broken_assignment_is_a_sample_ratio_mismatch() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&experiment_config(&up, admin_port())).await;
    // Another proxy with the same flag tells which variant a user is in without exposing them.
    let oracle = Proxy::start(&experiment_config(&up, admin_port())).await;
    let client = h1_client();
    // Every control user reaches the proxy, two treatment users in three: 60/40 under 50/50.
    for i in 0..3_000 {
        let user = format!("user-{i}");
        if visit(&client, &oracle, &user).await == "treatment" && i % 3 == 0 {
            continue;
        }
        visit(&client, &proxy, &user).await;
    }
    let api: Value =
        serde_json::from_slice(&get(&client, &proxy.admin_url("/api/experiments")).await.1).unwrap();
    let srm = &api[0]["srm"];
    assert_eq!(srm["mismatch"], true, "{srm}");
    assert!(srm["p_value"].as_f64().unwrap() < 1e-6, "{srm}");
    // The oracle saw the real 50/50: no mismatch there.
    let fair: Value =
        serde_json::from_slice(&get(&client, &oracle.admin_url("/api/experiments")).await.1).unwrap();
    assert_eq!(fair[0]["srm"]["mismatch"], false, "{}", fair[0]["srm"]);
    proxy.shutdown().await;
    oracle.shutdown().await;
}

#[tokio::test]
async fn the_counts_survive_a_restart() {
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let port = admin_port();
    std::fs::write(&path, experiment_config(&up, port)).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let client = h1_client();
    for i in 0..200 {
        let user = format!("user-{i}");
        visit(&client, &proxy, &user).await;
        if i % 4 == 0 {
            convert(&client, &proxy, &user).await;
        }
    }
    let before = get(&client, &proxy.admin_url("/api/experiments")).await.1;
    // The counts are written every 2 s, and at a graceful shutdown: none is lost to it.
    proxy.shutdown().await;
    assert!(Path::new(&format!("{}.state.json.experiments.json", path.display())).exists());
    let proxy = Proxy::start_file(&path).await;
    let after = get(&client, &proxy.admin_url("/api/experiments")).await.1;
    assert_eq!(before, after);
    proxy.shutdown().await;
}

/// `route = "web"` compares the route's pools: each user's pool is their arm.
#[tokio::test]
async fn a_route_experiment_compares_its_pools() {
    let (blue, green) = (Upstream::start("blue").await, Upstream::start("green").await);
    let port = admin_port();
    let proxy = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:{port}\"\n[log]\naccess = false\n\
         [identity]\nfrom = [\"header:x-user-id\"]\n[pools.blue]\nendpoints = [\"{}\"]\n[pools.green]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ blue = 50, green = 50 }}\n\
         [[experiments]]\nname = \"green_checkout\"\nroute = \"web\"\ngoal = {{ path_prefix = \"/done\", status = \"200\" }}\n",
        blue.addr, green.addr
    ))
    .await;
    let client = h1_client();
    let mut truth = std::collections::HashMap::<String, (u64, u64)>::new();
    for i in 0..400 {
        let user = format!("user-{i}");
        let req = Request::get(proxy.url("/"))
            .header("x-user-id", &user)
            .body(empty())
            .unwrap();
        let (parts, _) = send(&client, req).await;
        let pool = parts.headers["x-upstream"].to_str().unwrap().to_owned();
        let t = truth.entry(pool).or_default();
        t.0 += 1;
        if i % 5 == 0 {
            let req = Request::get(proxy.url("/done"))
                .header("x-user-id", &user)
                .body(empty())
                .unwrap();
            assert_eq!(send(&client, req).await.0.status, 200);
            t.1 += 1;
        }
    }
    let api: Value =
        serde_json::from_slice(&get(&client, &proxy.admin_url("/api/experiments")).await.1).unwrap();
    assert_eq!(api[0]["subject"], "route web");
    for arm in api[0]["arms"].as_array().unwrap() {
        let (exposed, converted) = truth[arm["name"].as_str().unwrap()];
        // Small counts: the sketch is exact to a user or two there.
        assert!(
            (arm["exposed"].as_i64().unwrap() - exposed as i64).abs() <= 2,
            "{arm} vs {exposed}"
        );
        assert!(
            (arm["converted"].as_i64().unwrap() - converted as i64).abs() <= 2,
            "{arm} vs {converted}"
        );
    }
    proxy.shutdown().await;
}

/// A damaged counts file is kept aside, not overwritten by the next save; an experiment one of
/// whose arms' sketches does not decode is restored not at all (rather than with one arm at 0,
/// which would be a false sample-ratio alarm), and said; a directory that will not take the
/// file shows in the API and the metrics.
#[tokio::test]
async fn damaged_or_unwritable_counts_are_kept_and_shown() {
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let counts = std::path::PathBuf::from(format!("{}.state.json.experiments.json", path.display()));
    let port = admin_port();
    std::fs::write(&path, experiment_config(&up, port)).unwrap();
    let client = h1_client();
    let aside = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .contains("experiments.json.corrupt-")
            })
            .map(|e| e.path())
            .collect::<Vec<_>>()
    };

    // Not JSON at all.
    std::fs::write(&counts, b"{\"experiments\": {\"checkout_ab\": ").unwrap();
    let proxy = Proxy::start_file(&path).await;
    let (config, problem) = load_problem(&client, &proxy).await;
    assert!(
        problem.contains("is not the experiments' counts") && problem.contains("kept as"),
        "{config:#}"
    );
    for i in 0..20 {
        visit(&client, &proxy, &format!("user-{i}")).await;
    }
    // The running proxy saves its counts in place of the damaged file (kept aside).
    support::eventually(
        "the counts saved",
        std::time::Duration::from_secs(10),
        async || {
            std::fs::read(&counts)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v["experiments"]["checkout_ab"].is_object())
        },
    )
    .await;
    proxy.shutdown().await;
    let kept = aside();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        std::fs::read(&kept[0]).unwrap(),
        b"{\"experiments\": {\"checkout_ab\": "
    );

    // One arm's sketch damaged: the experiment starts from none, and no mismatch is shown.
    let saved: Value = serde_json::from_slice(&std::fs::read(&counts).unwrap()).unwrap();
    let mut broken = saved.clone();
    broken["experiments"]["checkout_ab"]["treatment"][0] = "not base64 at all!".into();
    std::fs::write(&counts, broken.to_string()).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let (config, problem) = load_problem(&client, &proxy).await;
    assert!(problem.contains("arm treatment does not decode"), "{config:#}");
    let results: Value =
        serde_json::from_slice(&get(&client, &proxy.admin_url("/api/experiments")).await.1).unwrap();
    let text = results.to_string();
    assert!(
        !text.contains("\"srm\":true") && !text.contains("mismatch\":true"),
        "{results:#}"
    );
    proxy.shutdown().await;
    assert_eq!(aside().len(), 2);

    // A directory where its temporary file goes (as a full or read-only disk would refuse
    // it): the save fails, and says so.
    std::fs::remove_file(&counts).unwrap();
    std::fs::create_dir(
        dir.path()
            .join(".switchyard.toml.state.json.experiments.json.tmp"),
    )
    .unwrap();
    let proxy = Proxy::start_file(&path).await;
    visit(&client, &proxy, "someone").await;
    let started = std::time::Instant::now();
    let config = loop {
        let config: Value =
            serde_json::from_slice(&get(&client, &proxy.admin_url("/api/config")).await.1).unwrap();
        if !config["state"]["experiments_error"].is_null() {
            break config;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{config:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(config["state"]["experiments_error"]["retrying"], true);
    let metrics = String::from_utf8_lossy(&get(&client, &proxy.admin_url("/metrics")).await.1).into_owned();
    assert!(
        !metrics.contains("switchyard_state_save_errors_total 0"),
        "{metrics}"
    );
    proxy.shutdown().await;
}
