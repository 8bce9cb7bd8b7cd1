//! Live operations: reloads under load by every way a file gets replaced, bad files, the admin
//! API with its token, and the metrics.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use support::*;

/// The config of step `i`: web alternates blue/green; every fourth step adds a pool and route.
fn version(i: usize, blue: &Upstream, green: &Upstream, ws: std::net::SocketAddr) -> String {
    let (b, g) = if i.is_multiple_of(2) { (100, 0) } else { (0, 100) };
    let extra = if i % 4 == 1 {
        format!("[pools.spare]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"extra\"\npath_prefix = \"/extra\"\nsplit = {{ spare = 1 }}\n", green.addr)
    } else {
        String::new()
    };
    format!(
        "# step {i}\n[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n\
         [pools.blue]\nendpoints = [\"{}\"]\n[pools.green]\nendpoints = [\"{}\"]\n[pools.ws]\nendpoints = [\"{ws}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ blue = {b}, green = {g} }}\n\
         [[routes]]\nname = \"ws\"\npath_prefix = \"/ws\"\nsplit = {{ ws = 1 }}\n{extra}",
        blue.addr, green.addr
    )
}

/// Replaces `path` with `text` the way step `i` says: rename over it, write in place, or swap a
/// Kubernetes-style `..data` symlink.
fn replace(dir: &Path, path: &Path, text: &str, i: usize) {
    match i % 3 {
        0 => {
            let tmp = dir.join(".config.toml.tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        1 => {
            // In place: through the symlink if there is one (its target is a plain file).
            let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
            std::fs::write(target, text).unwrap();
            // Writing through a symlink is an event in the target's directory, which a real
            // ConfigMap never does; touch the link's directory so the change is seen.
            if std::fs::symlink_metadata(path).unwrap().file_type().is_symlink() {
                std::fs::write(dir.join(".touch"), i.to_string()).unwrap();
            }
        }
        _ => {
            let version = dir.join(format!("..v{i}"));
            std::fs::create_dir(&version).unwrap();
            std::fs::write(version.join("config.toml"), text).unwrap();
            let tmp = dir.join("..data_tmp");
            std::os::unix::fs::symlink(format!("..v{i}"), &tmp).unwrap();
            std::fs::rename(&tmp, dir.join("..data")).unwrap();
            if !std::fs::symlink_metadata(path).unwrap().file_type().is_symlink() {
                let link = dir.join(".config.link");
                std::os::unix::fs::symlink("..data/config.toml", &link).unwrap();
                std::fs::rename(&link, path).unwrap();
            }
        }
    }
}

/// Sends `text` on a WebSocket and returns the echo.
async fn echo<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>, text: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(text))
        .await
        .unwrap();
    socket
        .next()
        .await
        .unwrap()
        .unwrap()
        .into_text()
        .unwrap()
        .as_str()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_reloads_under_load_drop_nothing() {
    let (blue, green, ws) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
        ws_upstream().await,
    );
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("config.toml");
    std::fs::write(&path, version(0, &blue, &green, ws)).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let addr = proxy.http.unwrap();

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .unwrap();
    assert_eq!(echo(&mut socket, "before").await, "before");

    // Steady load: 4 clients, bounded by a stop flag, a 60 s limit and a request cap.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for c in 0..4 {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let client = h1_client();
            let started = Instant::now();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) && n < 200_000
            {
                let req = Request::get(format!("http://{addr}/"))
                    .header("x-user-id", format!("load-{c}-{n}"))
                    .body(empty())
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.into_body().collect().await;
                    }
                    other => {
                        eprintln!("failed: {:?}", other.map(|r| r.status()));
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                sent.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }

    let probe = h1_client();
    let mut slowest = Duration::ZERO;
    for i in 1..=30 {
        let written = Instant::now();
        replace(dir.path(), &path, &version(i, &blue, &green, ws), i);
        let want = if i % 2 == 0 { "blue" } else { "green" };
        let want_extra = i % 4 == 1;
        loop {
            let (parts, _) = get(&probe, &format!("http://{addr}/")).await;
            // Without route "extra", /extra falls to the "/" route.
            let (extra, _) = get(&probe, &format!("http://{addr}/extra")).await;
            let (route, _) = get(&probe, &proxy.admin_url("/api/routes/extra")).await;
            let extra_ok = if want_extra {
                route.status == 200 && extra.headers["x-upstream"] == "green"
            } else {
                route.status == 404 && extra.headers["x-upstream"] == want
            };
            if parts.headers["x-upstream"] == want && extra_ok {
                break;
            }
            if written.elapsed() > Duration::from_secs(1) {
                let status = admin_json(&proxy.admin_url("/api/config")).await;
                panic!("step {i}: the new config was not serving after 1 s; reloader says {status}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        slowest = slowest.max(written.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        echo(&mut socket, "after").await,
        "after",
        "the WebSocket outlived 30 reloads"
    );
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "30 reloads: {sent} requests under load, {failed} failed, slowest reload visible after {slowest:?}"
    );
    assert!(sent > 500, "the load ran ({sent} requests)");
    assert_eq!(failed, 0);
    // An open tunnel is in flight: a drain would wait for it, up to the drain deadline.
    drop(socket);
    proxy.shutdown().await;
}

async fn admin_json(url: &str) -> serde_json::Value {
    let (_, body) = get(&h1_client(), url).await;
    serde_json::from_slice(&body).unwrap()
}

async fn post(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut b = Request::post(url);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let (parts, body) = send(&h1_client(), b.body(empty()).unwrap()).await;
    (
        parts.status.as_u16(),
        serde_json::from_slice(&body).unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_broken_file_keeps_the_old_config_and_says_where() {
    let (blue, green) = (Upstream::start("blue").await, Upstream::start("green").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let good = config(
        &[("blue", &[blue.addr]), ("green", &[green.addr])],
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    std::fs::write(&path, &good).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let revision = admin_json(&proxy.admin_url("/api/config")).await["revision"].clone();

    // A syntax error, then an unknown pool, then a changed listen address.
    let broken = [
        (good.replace("[pools.green]", "[pools.green"), "unclosed table"),
        (
            good.replace("split = { green = 100 }", "split = { purple = 100 }"),
            "there is no pool `purple`",
        ),
        (
            good.replace("http = \"127.0.0.1:0\"", "http = \"127.0.0.1:1\""),
            "listen.http cannot change by reload",
        ),
    ];
    for (text, says) in broken {
        std::fs::write(&path, &text).unwrap();
        let started = Instant::now();
        let config = loop {
            let c = admin_json(&proxy.admin_url("/api/config")).await;
            if c["last_error"]["error"]
                .as_str()
                .is_some_and(|e| e.contains(says))
            {
                break c;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "no error reported for {says}: {c}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(config["revision"], revision, "the old config still serves");
        let error = config["last_error"]["error"].as_str().unwrap();
        assert!(
            error.contains("config.toml:"),
            "names the file and position: {error}"
        );
        let (parts, body) = get(&h1_client(), &proxy.url("/green")).await;
        assert_eq!((parts.status.as_u16(), body.as_ref()), (200, &b"green"[..]));
    }
    let text = proxy.state.metrics.render();
    assert!(
        text.contains("switchyard_config_reloads_total{result=\"error\"} 3"),
        "{text}"
    );
    // The syntax error's message carries its line.
    std::fs::write(&path, good.replace("[pools.green]", "[pools.green")).unwrap();
    let (status, report) = post(&proxy.admin_url("/api/reload"), None).await;
    assert_eq!(status, 422);
    let error = report["error"].as_str().unwrap().to_owned();
    let line = good.lines().position(|l| l == "[pools.green]").unwrap() + 1;
    assert!(error.contains(&format!("config.toml:{line}:")), "{error}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn admin_calls_without_the_token_get_401_and_change_nothing() {
    let blue = Upstream::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    // SAFETY: a variable only this test reads, set before anything reads it.
    unsafe { std::env::set_var("SY_TEST_ADMIN_TOKEN", "s3cret") };
    let text = config(
        &[("blue", &[blue.addr])],
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"SY_TEST_ADMIN_TOKEN\"\n",
    );
    std::fs::write(&path, &text).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let before = admin_json(&proxy.admin_url("/api/config")).await;

    // Change the file without a watcher event reaching the reloader first: SIGHUP and file
    // events are not involved; only the API call could reload it.
    for token in [None, Some("wrong"), Some("s3cret-not")] {
        let (status, body) = post(&proxy.admin_url("/api/reload"), token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains("Bearer"));
    }
    let after = admin_json(&proxy.admin_url("/api/config")).await;
    assert_eq!(
        before["last_reload"], after["last_reload"],
        "nothing was reloaded"
    );
    let (status, body) = post(&proxy.admin_url("/api/reload"), Some("s3cret")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "ok");
    // Reads need no token.
    assert!(admin_json(&proxy.admin_url("/api/routes")).await.is_array());
    let (status, body) = post(&proxy.admin_url("/api/nothing"), Some("s3cret")).await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_admin_api_off_loopback_needs_a_token() {
    let text = config(
        &[("blue", &[dead_port().await])],
        "[admin]\nlisten = \"0.0.0.0:0\"\n",
    );
    let err = switchyard::App::start(switchyard::Source::Text {
        text,
        name: "t.toml".into(),
    })
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("off loopback"), "{err}");
}

#[tokio::test]
async fn metrics_count_requests_by_route_pool_and_class() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let cfg = config(
        &[
            ("blue", &[blue.addr]),
            ("canary", &[canary.addr]),
            ("dead", &[dead_port().await]),
        ],
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[flags]]\nname = \"beta\"\npercent = 100\n",
    );
    let proxy = Proxy::start(&cfg).await;
    let client = h1_client();
    for _ in 0..5 {
        get(&client, &proxy.url("/")).await;
    }
    get(&client, &proxy.url("/canary/status/503")).await;
    get(&client, &proxy.url("/canary/status/404")).await;
    get(&client, &proxy.url("/dead")).await;
    let (parts, text) = get(&client, &proxy.admin_url("/metrics")).await;
    assert!(parts.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(text.to_vec()).unwrap();
    for want in [
        r#"switchyard_requests_total{class="2xx",pool="blue",route="blue"} 5"#,
        r#"switchyard_requests_total{class="5xx",pool="canary",route="canary"} 1"#,
        r#"switchyard_requests_total{class="4xx",pool="canary",route="canary"} 1"#,
        r#"switchyard_requests_total{class="error",pool="dead",route="dead"} 1"#,
        r#"switchyard_upstream_errors_total{kind="connect",pool="dead"} 1"#,
        r#"switchyard_upstream_errors_total{kind="status",pool="canary"} 1"#,
        r#"switchyard_request_duration_seconds_count{pool="blue",route="blue"} 5"#,
        r#"switchyard_route_weight{pool="blue",route="blue"} 1"#,
        r#"switchyard_flag_decisions_total{flag="beta",value="on"} 8"#,
        "switchyard_config_revision_info{revision=",
        "switchyard_connections_active",
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
    // What runs, and what the process costs.
    let build = format!(
        "switchyard_build_info{{target=\"{}-{}\",version=\"{}\"}} 1",
        std::env::consts::ARCH,
        std::env::consts::OS,
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&build), "missing {build} in\n{text}");
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    // (Whole seconds, as the prometheus crate counts them.)
    assert!(value("process_cpu_seconds_total") >= 0.0);
    assert!(value("process_start_time_seconds") > 1.7e9);
    proxy.shutdown().await;
}

/// Counts the times `path` is opened, as the kernel sees them (inotify's `IN_OPEN`).
fn count_opens(path: &Path) -> (notify::RecommendedWatcher, Arc<AtomicUsize>) {
    use notify::Watcher;
    let opens = Arc::new(AtomicUsize::new(0));
    let o = opens.clone();
    let mut w = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e {
            if matches!(
                e.kind,
                notify::EventKind::Access(notify::event::AccessKind::Open(_))
            ) {
                o.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .unwrap();
    w.watch(path, notify::RecursiveMode::NonRecursive).unwrap();
    (w, opens)
}

#[tokio::test]
async fn an_idle_proxy_reads_its_config_once_per_change_and_not_again() {
    let blue = Upstream::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let good = config(&[("blue", &[blue.addr])], "");
    std::fs::write(&path, &good).unwrap();
    let proxy = Proxy::start_file(&path).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_w, opens) = count_opens(&path);

    // After the reloader has acted on a change, a quiet spell longer than its longest
    // debounce shows that it does not act again.
    let quiet = switchyard::reload::DEBOUNCE_MAX + Duration::from_millis(300);

    // An unrelated file in its directory: one read to see the config did not change.
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    support::eventually("the config's read", Duration::from_secs(3), async || {
        opens.load(Ordering::SeqCst) >= 1
    })
    .await;
    tokio::time::sleep(quiet).await;
    assert_eq!(
        opens.load(Ordering::SeqCst),
        1,
        "reads of the config after one unrelated file"
    );

    // A broken config: read once, one error, and not again.
    std::fs::write(&path, good.replace("[pools.blue]", "[pools.blue")).unwrap();
    let errors = "switchyard_config_reloads_total{result=\"error\"} 1";
    support::eventually("the failed reload", Duration::from_secs(3), async || {
        proxy.state.metrics.render().contains(errors)
    })
    .await;
    tokio::time::sleep(quiet).await;
    // (One of the opens is this test's own write.)
    assert_eq!(
        opens.load(Ordering::SeqCst),
        3,
        "reads of the config after one bad write"
    );
    let text = proxy.state.metrics.render();
    assert!(text.contains(errors), "{text}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_config_linked_from_another_directory_is_followed_and_so_is_the_link() {
    let (blue, green) = (Upstream::start("blue").await, Upstream::start("green").await);
    let pools: &[(&str, &[std::net::SocketAddr])] = &[("blue", &[blue.addr]), ("green", &[green.addr])];
    let on = |pool: &str| {
        config(pools, "").replacen(
            "split = { blue = 100 }",
            &format!("split = {{ {pool} = 100 }}"),
            1,
        )
    };
    let (link_dir, v1, v2) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let path = link_dir.path().join("switchyard.toml");
    let (first, second) = (v1.path().join("real.toml"), v2.path().join("real.toml"));
    std::fs::write(&first, on("blue")).unwrap();
    std::os::unix::fs::symlink(&first, &path).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let serving = |pool: &'static str| {
        let url = proxy.url("/");
        async move || get(&h1_client(), &url).await.1 == pool.as_bytes()
    };
    assert!(serving("blue")().await);

    // The file the link points to changes in place, in its own directory.
    std::fs::write(&first, on("green")).unwrap();
    eventually(
        "the linked file's change",
        Duration::from_secs(5),
        serving("green"),
    )
    .await;

    // The link is pointed at another directory (swapped atomically), then that file changes.
    std::fs::write(&second, on("blue")).unwrap();
    let tmp = link_dir.path().join("switchyard.toml.new");
    std::os::unix::fs::symlink(&second, &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    eventually("the new link", Duration::from_secs(5), serving("blue")).await;
    std::fs::write(&second, on("green")).unwrap();
    eventually(
        "the new target's change",
        Duration::from_secs(5),
        serving("green"),
    )
    .await;
    proxy.shutdown().await;
}

/// A config with `routes` guarded routes over blue and canary and `flags` flags at `percent`.
fn large(blue: &Upstream, canary: &Upstream, routes: usize, flags: usize, percent: u32) -> String {
    use std::fmt::Write;
    let mut s = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n\
         [pools.blue]\nendpoints = [\"{}\"]\n[pools.canary]\nendpoints = [\"{}\"]\n",
        blue.addr, canary.addr
    );
    for i in 0..routes {
        let prefix = if i == 0 { "/".to_owned() } else { format!("/r{i}/") };
        let _ = write!(
            s,
            "[[routes]]\nname = \"r{i}\"\npath_prefix = \"{prefix}\"\nsplit = {{ blue = 50, canary = 50 }}\nguard = {{ baseline = \"blue\" }}\n"
        );
    }
    for i in 0..flags {
        let _ = write!(
            s,
            "[[flags]]\nname = \"f{i}\"\npercent = {percent}\nvariants = {{ a = 1, b = 1 }}\n"
        );
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_do_not_wait_for_a_large_reload_and_reloads_asked_meanwhile_become_one() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, large(&blue, &canary, 3_000, 300, 10)).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let reloads = || {
        let text = proxy.state.metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix("switchyard_config_reloads_total{result=\"ok\"} "))
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    // Every flag changes: the reload compiles 3,000 routes and samples 300 flags.
    std::fs::write(&path, large(&blue, &canary, 3_000, 300, 20)).unwrap();
    let started = Instant::now();
    let first = tokio::spawn(post(proxy.admin_url("/api/reload").leak(), None));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Four more reloads asked while it compiles, and a rollback.
    let more: Vec<_> = (0..4)
        .map(|_| tokio::spawn(post(proxy.admin_url("/api/reload").leak(), None)))
        .collect();
    let asked = Instant::now();
    let (status, body) = post(&proxy.admin_url("/api/routes/r1/rollback"), None).await;
    let rollback = asked.elapsed();
    assert_eq!(status, 200, "{body}");
    let (status, report) = first.await.unwrap();
    let reload = started.elapsed();
    assert_eq!((status, report["result"].as_str()), (200, Some("ok")), "{report}");
    assert!(
        rollback < Duration::from_secs(1),
        "the rollback took {rollback:?}"
    );
    assert!(
        rollback * 2 < reload,
        "the rollback ({rollback:?}) waited for the reload ({reload:?})"
    );
    for m in more {
        let (status, report) = m.await.unwrap();
        assert_eq!((status, report["result"].as_str()), (200, Some("ok")), "{report}");
    }
    assert_eq!(reloads(), 2, "the four reloads asked during the first became one");
    // The rollback holds in the config the reload published after it.
    let r1 = admin_json(&proxy.admin_url("/api/routes/r1")).await;
    assert_eq!(r1["tripped"], true, "{r1}");
    let (parts, _) = get(&h1_client(), &proxy.url("/r1/x")).await;
    assert_eq!(parts.headers["x-upstream"], "blue");
    eprintln!("rollback answered in {rollback:?} during a reload of {reload:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn removing_a_finished_rollout_reports_the_users_it_moves() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let rolled = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [pools.blue]\nendpoints = [\"{}\"]\n[pools.canary]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ blue = 100, canary = 0 }}\nguard = {{ baseline = \"blue\" }}\n\
         rollout = {{ pool = \"canary\", steps = [80], every = \"1h\" }}\n",
        blue.addr, canary.addr
    );
    std::fs::write(&path, &rolled).unwrap();
    let proxy = Proxy::start_file(&path).await;
    // The file still says canary = 0; the live split gives it 80 %. Removing the block
    // sends those users back, and the reload says so.
    let plain = rolled.replace(
        "rollout = { pool = \"canary\", steps = [80], every = \"1h\" }\n",
        "",
    );
    std::fs::write(&path, &plain).unwrap();
    let (status, report) = post(&proxy.admin_url("/api/reload"), None).await;
    assert_eq!(status, 200, "{report}");
    let changes = report["changes"].to_string();
    assert!(
        changes.contains("80.00% of its users move (80.00% canary→blue)"),
        "{changes}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_dashboard_page_and_its_history_and_flag_counts() {
    let blue = Upstream::start("blue").await;
    let cfg = config(
        &[("blue", &[blue.addr])],
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[flags]]\nname = \"beta\"\npercent = 100\n",
    );
    let proxy = Proxy::start(&cfg).await;
    let client = h1_client();
    // The page: one self-contained document that loads nothing from elsewhere.
    let (parts, page) = get(&client, &proxy.admin_url("/")).await;
    assert_eq!(parts.status, 200);
    assert!(parts.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = parts.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    // No inline script may run: the script is the API's own file.
    assert!(csp.contains("script-src 'self';"), "{csp}");
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("<script src=\"/dashboard.js\"></script>"), "{page}");
    assert!(!page.contains("https://") && !page.contains("src=\"http") && !page.contains("onsubmit="));
    assert_eq!(page.matches("<script").count(), 1, "no inline script");
    let (parts, script) = get(&client, &proxy.admin_url("/dashboard.js")).await;
    assert!(parts.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let script = String::from_utf8_lossy(&script);
    assert!(script.contains("/api/history") && !script.contains("https://"));

    for i in 0..20 {
        let path = if i % 4 == 0 { "/status/500" } else { "/" };
        get(&client, &proxy.url(path)).await;
    }
    // Within a sampling interval or two, the 20 requests show as one interval of history.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let series = loop {
        let (_, body) = get(&client, &proxy.admin_url("/api/history")).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["interval_s"], 2);
        assert_eq!(v["keep_s"], 900);
        // The requests may straddle a sample: wait for all 20.
        if let Some(s) = v["series"].as_array().and_then(|s| s.first()).filter(|s| {
            s["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["requests"].as_u64().unwrap())
                .sum::<u64>()
                >= 20
        }) {
            break s.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no history: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(series["route"], "blue");
    assert_eq!(series["pool"], "blue");
    let samples = series["samples"].as_array().unwrap();
    let sum = |k: &str| samples.iter().map(|s| s[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("requests"), sum("errors")), (20, 5), "{series}");
    let p99 = samples[0]["p99_ms"].as_f64().unwrap();
    assert!(p99 > 0.0 && p99 < 1000.0, "{p99}");
    // `since` leaves out what the page already has.
    let t = samples.last().unwrap()["t"].as_u64().unwrap();
    let (_, body) = get(&client, &proxy.admin_url(&format!("/api/history?since={t}"))).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["series"][0]["samples"].as_array().unwrap().is_empty(), "{v}");

    // What a page with a filter asks for: only that route's history, only matching routes.
    let (_, body) = get(&client, &proxy.admin_url("/api/history?routes=nothing,else")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["series"].as_array().unwrap().is_empty(), "{v}");
    let (_, body) = get(&client, &proxy.admin_url("/api/history?routes=blue")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["series"][0]["route"], "blue", "{v}");

    let (_, body) = get(&client, &proxy.admin_url("/api/flags")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v[0]["name"], "beta");
    assert_eq!(v[0]["decisions"], serde_json::json!([["off", 0], ["on", 20]]));
    proxy.shutdown().await;
}

#[tokio::test]
async fn routes_can_be_asked_for_by_filter_and_limit_tripped_first() {
    let up = Upstream::start("up").await;
    let mut extra = String::from("[admin]\nlisten = \"127.0.0.1:0\"\n");
    for i in 0..120 {
        extra.push_str(&format!(
            "[[routes]]\nname = \"shop-{i}\"\npath_prefix = \"/shop/{i}/\"\nsplit = {{ a = 50, b = 50 }}\n"
        ));
    }
    let cfg = config(&[("a", &[up.addr]), ("b", &[up.addr])], &extra);
    let proxy = Proxy::start(&cfg).await;
    let client = h1_client();
    // The last route rolled back: it comes first in a limited answer.
    let (parts, _) = send(
        &client,
        http::Request::post(proxy.admin_url("/api/routes/shop-119/rollback"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 200);
    let (parts, body) = get(&client, &proxy.admin_url("/api/routes?limit=50")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(parts.headers["x-switchyard-total"], "122");
    assert_eq!(v.as_array().unwrap().len(), 50);
    assert_eq!(v[0]["name"], "shop-119");
    assert_eq!(v[1]["name"], "a");
    // A filter on name, host or path, case-insensitive.
    let (parts, body) = get(&client, &proxy.admin_url("/api/routes?q=SHOP/11&limit=50")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(parts.headers["x-switchyard-total"], "11");
    assert_eq!(names[0], "shop-119");
    assert!(
        names.contains(&"shop-11") && names.contains(&"shop-110") && !names.contains(&"shop-1"),
        "{names:?}"
    );
    // Without parameters: every route, in written order.
    let (_, body) = get(&client, &proxy.admin_url("/api/routes")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 122);
    assert_eq!(v[0]["name"], "a");
    proxy.shutdown().await;
}

/// What the other replicas of a fleet read: an unguarded route's rollback, and its reset after,
/// are both exported with the time of the change (a reset that left no trace would never reach
/// them).
#[tokio::test]
async fn a_routes_changes_are_exported_for_the_fleet_even_without_a_guard() {
    let up = Upstream::start("up").await;
    let cfg = config(
        &[("a", &[up.addr]), ("b", &[up.addr])],
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .replacen("split = { a = 100 }", "split = { a = 50, b = 50 }", 1);
    let proxy = Proxy::start(&cfg).await;
    let client = h1_client();
    let metric = |text: &str, prefix: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let (_, text) = get(&client, &proxy.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &String::from_utf8_lossy(&text),
            "switchyard_route_changed_timestamp_seconds{fingerprint="
        ),
        None
    );
    let mut last = 0.0;
    for (action, tripped) in [("rollback", 2.0), ("reset", 0.0)] {
        let url = proxy.admin_url(&format!("/api/routes/a/{action}"));
        assert_eq!(
            send(&client, http::Request::post(url).body(empty()).unwrap())
                .await
                .0
                .status,
            200
        );
        let (_, text) = get(&client, &proxy.admin_url("/metrics")).await;
        let text = String::from_utf8_lossy(&text);
        let changed =
            metric(&text, "switchyard_route_changed_timestamp_seconds{fingerprint=").expect("exported");
        assert!(changed > 1.7e9 && changed >= last, "{changed}");
        last = changed;
        assert_eq!(
            metric(&text, r#"switchyard_pool_tripped{pool="b",route="a"}"#),
            Some(tripped),
            "{text}"
        );
    }
    proxy.shutdown().await;
}

/// The admin API refuses what a web page could make a browser send it: a Host that is not the
/// API's own (DNS rebinding) and a state-changing request from another site (CSRF), even with
/// no token configured; its own same-origin calls and command-line clients go through.
#[tokio::test]
async fn the_admin_api_refuses_foreign_hosts_and_cross_site_changes() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let proxy = Proxy::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\nhosts = [\"switchyard.internal\"]\n[log]\naccess = false\n\
         [pools.blue]\nendpoints = [\"{}\"]\n[pools.canary]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ blue = 50, canary = 50 }}\nguard = {{ baseline = \"blue\" }}\n",
        blue.addr, canary.addr
    ))
    .await;
    let admin = proxy.admin.unwrap();
    let port = admin.port();
    let ask = async |method: &str, host: &str, extra: &str| {
        let (text, _) = raw(
            admin,
            format!("{method} /api/routes/web/rollback HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        text
    };
    let tripped = async || admin_json(&proxy.admin_url("/api/routes/web")).await["tripped"] == true;
    // DNS rebinding: a name that is not the API's.
    let text = ask("POST", &format!("evil.example:{port}"), "").await;
    assert!(
        text.starts_with("HTTP/1.1 403") && text.contains("does not answer for host"),
        "{text}"
    );
    let (read, _) = raw(
        admin,
        format!("GET /api/routes HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(read.starts_with("HTTP/1.1 403"), "reads too: {read}");
    // CSRF: a text/plain POST from another origin, with or without Fetch Metadata.
    for extra in [
        "Origin: http://evil.example\r\n".to_owned(),
        format!("Origin: http://127.0.0.1:{}\r\n", port + 1),
        "Origin: null\r\n".to_owned(),
        "Sec-Fetch-Site: cross-site\r\n".to_owned(),
        "Sec-Fetch-Site: same-site\r\n".to_owned(),
    ] {
        let text = ask("POST", &format!("127.0.0.1:{port}"), &extra).await;
        assert!(
            text.starts_with("HTTP/1.1 403") && text.contains("cross-site"),
            "{extra}: {text}"
        );
    }
    assert!(!tripped().await, "nothing changed");
    // The dashboard's own call (same origin), a configured name, and curl (no Origin) go through.
    let text = ask(
        "POST",
        &format!("127.0.0.1:{port}"),
        &format!("Origin: http://127.0.0.1:{port}\r\nSec-Fetch-Site: same-origin\r\n"),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(tripped().await);
    let text = ask("POST", &format!("localhost:{port}"), "").await;
    assert!(
        text.starts_with("HTTP/1.1 409") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    let (read, _) = raw(
        admin,
        b"GET /api/routes HTTP/1.1\r\nHost: switchyard.internal\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(read.starts_with("HTTP/1.1 200"), "{read}");
    proxy.shutdown().await;
}
