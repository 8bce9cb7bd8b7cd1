//! The state file keeps trips across restarts, and is never the reason a trip is lost: a file
//! that cannot be read is kept aside and its guarded routes held at their baselines until an
//! operator resets them; a file that cannot be written says so in the API, `status` and the
//! metrics; `[state] path` puts it on a writable volume beside a read-only config.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Request;
use support::*;

fn guarded(blue: std::net::SocketAddr, canary: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n{extra}\n\
         [pools.blue]\nendpoints = [\"{blue}\"]\n[pools.canary]\nendpoints = [\"{canary}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ blue = 50, canary = 50 }}\n\
         [routes.guard]\nbaseline = \"blue\"\nmin_requests = 10\nwindow = \"10s\"\n"
    )
}

async fn json(url: &str) -> serde_json::Value {
    let (_, body) = get(&h1_client(), url).await;
    serde_json::from_slice(&body).unwrap()
}

/// How many of 200 users the canary serves now.
async fn canary_users(proxy: &Proxy) -> usize {
    let client = h1_client();
    let mut n = 0;
    for i in 0..200 {
        let req = Request::get(proxy.url("/"))
            .header("x-user-id", format!("u{i}"))
            .body(empty())
            .unwrap();
        n += usize::from(send(&client, req).await.0.headers["x-upstream"] == "canary");
    }
    n
}

async fn metric(proxy: &Proxy, name: &str) -> f64 {
    let (_, body) = get(&h1_client(), &proxy.admin_url("/metrics")).await;
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// What `switchyard status` shows for `proxy`.
async fn shown_status(proxy: &Proxy, config: &serde_json::Value) -> String {
    let view = switchyard::cli::status::View {
        config: config.clone(),
        routes: json(&proxy.admin_url("/api/routes")).await,
        pools: json(&proxy.admin_url("/api/pools")).await,
        fleet: json(&proxy.admin_url("/api/fleet")).await,
    };
    switchyard::cli::status::render(&view, std::time::SystemTime::now())
}

/// Files beside `path` whose names start with `path`'s and `.corrupt-`.
fn kept_aside(path: &Path) -> Vec<PathBuf> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}.corrupt-"))
        })
        .collect()
}

#[tokio::test]
async fn an_unreadable_state_file_is_kept_aside_and_holds_its_routes_at_the_baseline() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let good = r#"{"routes": {"web": {"fingerprint": "x", "trips": [], "rollout": null}}}"#;
    for (what, content) in [
        ("truncated", &good[..good.len() / 2]),
        ("garbage", "\u{1}\u{2}not json at all"),
        ("another shape", r#"[1, 2, 3]"#),
        ("a renamed key", &good.replace("trips", "tripz")),
        ("a directory", ""),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, guarded(blue.addr, canary.addr, "")).unwrap();
        let state = dir.path().join("switchyard.toml.state.json");
        if what == "a directory" {
            std::fs::create_dir(&state).unwrap();
        } else {
            std::fs::write(&state, content).unwrap();
        }
        let proxy = Proxy::start_file(&path).await;
        assert_eq!(
            canary_users(&proxy).await,
            0,
            "{what}: every user on the baseline"
        );
        let aside = kept_aside(&state);
        assert_eq!(aside.len(), 1, "{what}: kept aside");
        if what != "a directory" {
            assert_eq!(
                std::fs::read_to_string(&aside[0]).unwrap(),
                content,
                "{what}: not changed"
            );
        }
        let config = json(&proxy.admin_url("/api/config")).await;
        let problem = &config["state"]["load_error"];
        assert_eq!(problem["held"], serde_json::json!(["web"]), "{what}: {config:#}");
        assert_eq!(problem["kept_aside"], aside[0].to_str().unwrap(), "{what}");
        assert_eq!(
            metric(&proxy, "switchyard_state_load_errors_total").await,
            1.0,
            "{what}"
        );
        let shown = shown_status(&proxy, &config).await;
        assert!(
            shown.contains("UNREADABLE at start") && shown.contains("until reset: web"),
            "{shown}"
        );
        proxy.shutdown().await;
        // Still held after another restart: the hold was saved.
        let proxy = Proxy::start_file(&path).await;
        assert_eq!(canary_users(&proxy).await, 0, "{what}: held after a restart");
        let (parts, _) = send(
            &h1_client(),
            Request::post(proxy.admin_url("/api/routes/web/reset"))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(parts.status, 200);
        assert!(
            canary_users(&proxy).await > 50,
            "{what}: the canary is back after reset"
        );
        proxy.shutdown().await;
    }
}

/// Trips the canary of a running proxy.
async fn trip(proxy: &Proxy, canary: &Upstream) {
    canary.seen.fail_every.store(1, Ordering::SeqCst);
    let client = h1_client();
    let started = Instant::now();
    while json(&proxy.admin_url("/api/routes/web")).await["tripped"] != true {
        assert!(started.elapsed() < Duration::from_secs(10), "no trip");
        for i in 0..20 {
            let req = Request::get(proxy.url("/"))
                .header("x-user-id", format!("t{i}"))
                .body(empty())
                .unwrap();
            send(&client, req).await;
        }
    }
    canary.seen.fail_every.store(0, Ordering::SeqCst);
}

#[tokio::test]
async fn a_state_file_that_cannot_be_written_says_so_and_state_path_puts_it_elsewhere() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    // The config's directory will not take the file (as a read-only ConfigMap mount would
    // not): its temporary file's name is taken by a directory.
    let config_dir = tempfile::tempdir().unwrap();
    let path = config_dir.path().join("switchyard.toml");
    std::fs::create_dir(config_dir.path().join(".switchyard.toml.state.json.tmp")).unwrap();
    std::fs::write(&path, guarded(blue.addr, canary.addr, "")).unwrap();
    let proxy = Proxy::start_file(&path).await;
    trip(&proxy, &canary).await;
    // The state file is written by its own task, soon after the trip.
    let started = Instant::now();
    let config = loop {
        let config = json(&proxy.admin_url("/api/config")).await;
        if !config["state"]["save_error"].is_null() || started.elapsed() > Duration::from_secs(5) {
            break config;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!config["state"]["save_error"].is_null(), "{config:#}");
    assert!(metric(&proxy, "switchyard_state_save_errors_total").await >= 1.0);
    let shown = shown_status(&proxy, &config).await;
    assert!(shown.contains("NOT SAVED since"), "{shown}");
    proxy.shutdown().await;

    // [state] path on a writable directory: the trip survives a restart.
    let volume = tempfile::tempdir().unwrap();
    let state = volume.path().join("state.json");
    let extra = format!("[state]\npath = {:?}\n", state.to_str().unwrap());
    std::fs::write(&path, guarded(blue.addr, canary.addr, &extra)).unwrap();
    let proxy = Proxy::start_file(&path).await;
    trip(&proxy, &canary).await;
    let config = json(&proxy.admin_url("/api/config")).await;
    assert!(config["state"]["save_error"].is_null(), "{config:#}");
    assert_eq!(config["state"]["path"], state.to_str().unwrap());
    proxy.shutdown().await;
    assert!(std::fs::read_to_string(&state)
        .unwrap()
        .contains("\"pool\": \"canary\""));
    let proxy = Proxy::start_file(&path).await;
    assert_eq!(json(&proxy.admin_url("/api/routes/web")).await["tripped"], true);
    assert_eq!(canary_users(&proxy).await, 0, "still tripped after the restart");
    proxy.shutdown().await;
}

/// A save that fails is tried again until it succeeds: with the state file's directory unable
/// to take it (a full disk, here a directory where its temporary file must go), an operator's
/// rollback is answered `200` with `persisted: false` and shown as not saved; once the room is
/// back, the retry writes it (no new command needed), and a restart keeps the rollback. Before,
/// the failed save was never tried again, and the restart gave the canary its users back.
#[tokio::test]
async fn a_failed_save_is_retried_until_it_is_written() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let blocker = dir.path().join(".switchyard.toml.state.json.tmp");
    std::fs::write(&path, guarded(blue.addr, canary.addr, "")).unwrap();
    let proxy = Proxy::start_file(&path).await;
    std::fs::create_dir(&blocker).unwrap();
    let req = Request::post(proxy.admin_url("/api/routes/web/rollback"))
        .body(empty())
        .unwrap();
    let (parts, body) = send(&h1_client(), req).await;
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(parts.status, 200, "{answer:#}");
    assert_eq!(answer["persisted"], false, "{answer:#}");
    assert!(answer["persist_error"].as_str().is_some(), "{answer:#}");
    let config = json(&proxy.admin_url("/api/config")).await;
    assert_eq!(config["state"]["save_error"]["retrying"], true, "{config:#}");
    let shown = shown_status(&proxy, &config).await;
    assert!(
        shown.contains("NOT SAVED since") && shown.contains("retrying"),
        "{shown}"
    );
    // Room again: the retry writes it by itself.
    std::fs::remove_dir(&blocker).unwrap();
    let started = Instant::now();
    while !json(&proxy.admin_url("/api/config")).await["state"]["save_error"].is_null() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not written within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let saved = std::fs::read_to_string(dir.path().join("switchyard.toml.state.json")).unwrap();
    assert!(saved.contains("canary"), "{saved}");
    proxy.shutdown().await;
    let proxy = Proxy::start_file(&path).await;
    assert_eq!(json(&proxy.admin_url("/api/routes/web")).await["tripped"], true);
    assert_eq!(
        canary_users(&proxy).await,
        0,
        "still rolled back after the restart"
    );
    // A command on a writable file says it is persisted.
    let req = Request::post(proxy.admin_url("/api/routes/web/reset"))
        .body(empty())
        .unwrap();
    let (_, body) = send(&h1_client(), req).await;
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["persisted"], true, "{answer:#}");
    proxy.shutdown().await;
}
