//! The `switchyard` binary as users run it: `check` on files, graceful drain on SIGTERM, and
//! memory while a GiB streams through in each direction.

mod support;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "-c"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn check_passes_on_every_shipped_config() {
    let mut files = Vec::new();
    let examples = std::fs::read_dir("examples")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir());
    for dir in ["config".into(), "benches/peer".into()]
        .into_iter()
        .chain(examples)
    {
        let dir: std::path::PathBuf = dir;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 6, "{files:?}");
    for f in files {
        let out = check(&f);
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok (revision"));
    }
    // The summary says which headers the proxy adds and which the config leaves out.
    let out = String::from_utf8(check("benches/peer/switchyard.toml".as_ref()).stdout).unwrap();
    assert!(
        out.contains(
            "headers added: flags x-flags, flag payloads x-switchyard-flag-payloads (left out: pool, bucket, x-forwarded-*, via, x-request-id)\n"
        ),
        "{out}"
    );
    let out = String::from_utf8(check("config/switchyard.toml".as_ref()).stdout).unwrap();
    assert!(
        out.contains("headers added: pool x-switchyard-pool, bucket x-switchyard-bucket, flags x-switchyard-flags, flag payloads x-switchyard-flag-payloads, x-forwarded-*, via, x-request-id\n"),
        "{out}"
    );
}

#[test]
fn check_lists_every_error_with_file_line_column_field_and_fix() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    write!(
        f,
        "[listen]\nhttp = \"0.0.0.0:80\"\nhttps = \"0.0.0.0:443\"\n\n[pools.blue]\nendpoints = [\"10.0.0.1\"]\nbalanse = \"x\"\n\n[[routes]]\nname = \"web\"\nsplit = {{ bleu = 100 }}\n"
    )
    .unwrap();
    let out = check(f.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let name = f.path().display().to_string();
    for want in [
        format!("{name}:3:9 listen.https: https needs a certificate — add tls = "),
        format!("{name}:6:14 pools.blue.endpoints[0]: `10.0.0.1` is not HOST:PORT — "),
        format!("{name}:7:1 pools.blue.balanse: unknown key `balanse` — remove it"),
        format!("{name}:11:18 routes[0].split.bleu: there is no pool `bleu` — define [pools.bleu] or use one of: blue"),
        format!("{name}: 4 errors"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let blue = Upstream::start("blue").await;
    let mut proxy = Running::start(&config(&[("blue", &[blue.addr])], ""));
    let client = h1_client();
    let url = format!("http://{}/sleep/1500", proxy.addr);
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { get(&client, &url).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "no new connections once draining"
    );
    let (parts, body) = in_flight.await.unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(body, "blue");
    assert_eq!(
        parts.headers["connection"], "close",
        "a draining server tells a keep-alive client it closes"
    );
    let started = Instant::now();
    let status = loop {
        if let Some(s) = proxy.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the proxy did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn access_log_lines_are_json_with_the_decision_and_the_request_id() {
    let blue = Upstream::start("blue").await;
    let dead = dead_port().await;
    let logs = tempfile::NamedTempFile::new().unwrap();
    let cfg = config(
        &[("blue", &[blue.addr]), ("dead", &[dead])],
        "[context]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    )
    .replace("access = false", "access = true");
    let mut proxy = Running::start_with(&cfg, &["--log-format", "json"], logs.reopen().unwrap().into());
    let client = h1_client();
    let req = Request::get(format!("http://{}/a?q=1", proxy.addr))
        .header("x-request-id", "req-7")
        .header("x-forwarded-for", "198.51.100.7")
        .body(empty())
        .unwrap();
    assert_eq!(send(&client, req).await.0.status, 200);
    // A body both ways: 10,000 bytes up, the length the upstream read ("10000") down.
    let req = Request::post(format!("http://{}/upload", proxy.addr))
        .body(full(vec![b'x'; 10_000]))
        .unwrap();
    let (parts, answer) = send(&client, req).await;
    assert_eq!(parts.status, 200);
    let (parts, _) = get(&client, &format!("http://{}/b", proxy.addr)).await;
    let generated = parts.headers["x-request-id"].to_str().unwrap().to_owned();
    // A response the proxy made itself is logged with the status it sent.
    let (parts, _) = get(&client, &format!("http://{}/dead", proxy.addr)).await;
    assert_eq!(parts.status, 502);
    proxy.signal(libc::SIGTERM);
    assert!(proxy.child.wait().unwrap().success());

    let text = std::fs::read_to_string(logs.path()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "switchyard::access")
        .collect();
    assert_eq!(lines.len(), 4, "one line per request:\n{text}");
    let failed = &lines[3];
    assert_eq!(failed["status"], 502, "{failed}");
    assert_eq!(failed["error"], "upstream_connect", "{failed}");
    // The endpoint that failed, and how long it took to.
    assert_eq!(failed["upstream"], dead.to_string(), "{failed}");
    assert!(failed["upstream_ms"].as_f64().is_some(), "{failed}");
    // The client: the peer, or whom a trusted proxy's x-forwarded-for names.
    assert_eq!(lines[0]["client"], "198.51.100.7", "{}", lines[0]);
    assert_eq!(lines[2]["client"], "127.0.0.1", "{}", lines[2]);
    assert!(
        lines[0]["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{}",
        lines[0]
    );
    let upload = &lines[1];
    assert_eq!(upload["bytes_received"], 10_000, "{upload}");
    assert_eq!(upload["bytes_sent"], answer.len() as u64, "{upload}");
    assert_eq!(lines[0]["bytes_received"], 0, "{}", lines[0]);
    assert_eq!(lines[0]["bytes_sent"], 4, "blue: {}", lines[0]);
    for (line, path, id) in [(&lines[0], "/a", "req-7"), (&lines[2], "/b", generated.as_str())] {
        assert_eq!(line["upstream"], blue.addr.to_string(), "{line}");
        let upstream_ms = line["upstream_ms"].as_f64().unwrap();
        assert!(
            upstream_ms >= 0.0 && upstream_ms <= line["duration_ms"].as_f64().unwrap(),
            "{line}"
        );
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["path"], path, "{line}");
        assert_eq!(line["route"], "blue", "{line}");
        assert_eq!(line["pool"], "blue", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert!(line["duration_ms"].as_f64().unwrap() >= 0.0, "{line}");
        assert_eq!(line["request_id"], id, "{line}");
    }
}

const GIB: u64 = 1 << 30;

/// Polls the proxy's RSS while `work` runs; returns the highest reading.
async fn peak_rss_during<F: std::future::Future>(proxy: &Running, work: F) -> (F::Output, u64) {
    let pid = proxy.child.id();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let mut peak = 0u64;
        loop {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(v) = s.lines().find(|l| l.starts_with("VmRSS:")) {
                    peak = peak.max(v.split_whitespace().nth(1).unwrap().parse().unwrap());
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = &mut stop_rx => return peak,
            }
        }
    });
    let out = work.await;
    let _ = stop_tx.send(());
    (out, sampler.await.unwrap())
}

/// Uploads `len` generated bytes to the test upstream's `/upload` through `proxy`; the length
/// the upstream read.
async fn upload(
    client: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    proxy: &Running,
    len: u64,
) -> u64 {
    let req = Request::post(format!("http://{}/upload", proxy.addr))
        .body(generated(len))
        .unwrap();
    let (parts, body) = send(client, req).await;
    assert_eq!(parts.status, 200);
    serde_json::from_slice::<serde_json::Value>(&body).unwrap()["len"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gib_streams_each_way_without_growing_memory() {
    let blue = Upstream::start("blue").await;
    let proxy = Running::start(&config(&[("blue", &[blue.addr])], ""));
    let client = h1_client();
    // Warm up: first connections, buffers and the allocator's arenas.
    upload(&client, &proxy, 64 << 20).await;
    let base = proxy.rss_kib();

    let upload = upload(&client, &proxy, GIB);
    let (len, peak_up) = peak_rss_during(&proxy, upload).await;
    assert_eq!(len, GIB);

    let download = async {
        let resp = client
            .request(
                Request::get(format!("http://{}/download/{GIB}", proxy.addr))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            n += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
        }
        n
    };
    let (len, peak_down) = peak_rss_during(&proxy, download).await;
    assert_eq!(len, GIB);
    let grew = peak_up.max(peak_down).saturating_sub(base);
    eprintln!("proxy RSS: base {base} KiB, peak upload {peak_up} KiB, peak download {peak_down} KiB");
    assert!(
        grew < 8 * 1024,
        "the proxy's memory grew by {grew} KiB while streaming a GiB"
    );
}

/// A GiB uploaded on a route that mirrors POSTs with `max_body = "64KiB"`: the copy stops at
/// 64 KiB and is let go, the primary gets every byte, and the proxy's memory stays within the
/// same few MiB as an unmirrored upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_gib_upload_is_not_buffered() {
    let (blue, shadow) = (Upstream::start("blue").await, Upstream::start("shadow").await);
    let cfg = format!(
        "{}[pools.shadow]\nendpoints = [\"{}\"]\n\
         [routes.mirror]\npool = \"shadow\"\nmethods = [\"POST\"]\nmax_body = \"64KiB\"\n",
        config(&[("blue", &[blue.addr])], ""),
        shadow.addr
    );
    let proxy = Running::start(&cfg);
    let client = h1_client();
    // Warm up: first connections, buffers and the allocator's arenas.
    upload(&client, &proxy, 64 << 20).await;
    let base = proxy.rss_kib();
    let upload = upload(&client, &proxy, GIB);
    let (len, peak) = peak_rss_during(&proxy, upload).await;
    assert_eq!(len, GIB);
    let grew = peak.saturating_sub(base);
    eprintln!("proxy RSS: base {base} KiB, peak mirrored upload {peak} KiB");
    assert!(
        grew < 64 + 8 * 1024,
        "the proxy's memory grew by {grew} KiB during a mirrored GiB upload"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(shadow.hits(), 0, "a body over max_body is not mirrored");
}

#[tokio::test]
async fn sighup_reloads_and_status_shows_the_routes() {
    let blue = Upstream::start("blue").await;
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(
        &[("blue", &[blue.addr])],
        &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"),
    );
    let proxy = Running::start(&cfg);
    let admin = format!("http://127.0.0.1:{admin_port}");
    let client = h1_client();
    let started = Instant::now();
    while get_status(&client, &format!("{admin}/readyz")).await != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the admin API did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let config_now = || async {
        let (_, body) = get(&h1_client(), &format!("{admin}/api/config")).await;
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    assert!(config_now().await["last_reload"].is_null());
    // SIGHUP reloads even an unchanged file (that is what it is for).
    proxy.signal(libc::SIGHUP);
    let started = Instant::now();
    loop {
        let c = config_now().await;
        if c["last_reload"]["result"] == "ok" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGHUP did not reload: {c}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = Command::new(BIN)
        .args(["status", "--admin", &admin])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("revision") && text.contains("last reload: ok"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("blue"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("100.0%"), "{text}");
    let out = Command::new(BIN)
        .args(["status", "--admin", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));
}

async fn get_status(
    client: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    url: &str,
) -> Option<u16> {
    client
        .request(Request::get(url).body(empty()).unwrap())
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// `switchyard demo` as the README's first command runs it: it prints where the dashboard is,
/// sends its own traffic, prints commands that run as printed, and its canary, told to fail,
/// trips the guard.
#[tokio::test]
async fn the_demo_serves_the_dashboard_drives_traffic_and_its_canary_trips() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--traffic",
            "100",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    let url_after = |label: &str| -> String {
        let line = banner
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("{banner}"));
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .trim_end_matches('/')
            .to_owned()
    };
    let admin = url_after("dashboard");
    let client = h1_client();
    let (parts, page) = get(&client, &format!("{admin}/")).await;
    assert_eq!(parts.status, 200);
    assert!(String::from_utf8_lossy(&page).contains("<title>switchyard</title>"));
    // The printed status line names this binary by a path that runs, not a bare `switchyard`.
    let status = banner
        .lines()
        .find(|l| l.contains(" status --admin "))
        .unwrap()
        .trim()
        .to_owned();
    let exe = status.split_whitespace().next().unwrap();
    let runs = Command::new(exe)
        .args(status.split_whitespace().skip(1))
        .output()
        .unwrap();
    assert!(
        runs.status.success(),
        "{status}: {}",
        String::from_utf8_lossy(&runs.stderr)
    );
    assert!(String::from_utf8_lossy(&runs.stdout).contains("web"));
    // The container health check's command.
    let ready = Command::new(BIN)
        .args(["healthcheck", "--admin", &admin])
        .output()
        .unwrap();
    assert!(
        ready.status.success(),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "ready\n");

    // Its own traffic reaches the canary; then the canary fails and the guard trips.
    let fail = banner.lines().find(|l| l.contains("percent=50")).unwrap();
    let fail = fail
        .split('\'')
        .nth(1)
        .unwrap()
        .replace("percent=50", "percent=100");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = get(&client, &format!("{admin}/api/routes/web")).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let canary = v["guard"]["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pool"] == "canary")
            .cloned();
        if canary.is_some_and(|c| c["figures"]["requests"].as_u64().unwrap() >= 20) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no demo traffic reached the canary: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (parts, said) = send(&client, Request::post(&fail).body(empty()).unwrap()).await;
    assert_eq!(parts.status, 200, "{said:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = get(&client, &format!("{admin}/api/routes/web")).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if v["tripped"] == true {
            assert_eq!(v["trips"][0]["pool"], "canary");
            break;
        }
        assert!(Instant::now() < deadline, "the demo's canary never tripped: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    child.kill().await.unwrap();
}

/// `check` passes a valid file, and warns of each variable it names that is not set where it
/// runs (`run` would refuse to start without them).
#[test]
fn check_warns_of_variables_run_would_need() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(
        &path,
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"SY_CHECK_TOKEN\"\n\
         [fleet]\nname = \"t\"\nprometheus = \"http://p:9090\"\ntoken_env = \"SY_CHECK_PROM\"\n\
         [analysis]\nprometheus = \"http://q:9090\"\ntoken_env = \"SY_CHECK_ANALYSIS\"\n\
         [pools.a]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"a\"\nsplit = { a = 100 }\n\
         guard = { baseline = \"a\", checks = [{ name = \"c\", query = 'up', min = 1 }] }\n\
         [routes.session]\nsecret_env = \"SY_CHECK_SESSION\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .env_remove("SY_CHECK_TOKEN")
        .env_remove("SY_CHECK_PROM")
        .env_remove("SY_CHECK_ANALYSIS")
        .env_remove("SY_CHECK_SESSION")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("analysis.token_env names SY_CHECK_ANALYSIS, which is not set here"),
        "{err}"
    );
    assert!(
        err.contains("admin.token_env names SY_CHECK_TOKEN, which is not set here"),
        "{err}"
    );
    assert!(
        err.contains("fleet.token_env names SY_CHECK_PROM, which is not set here"),
        "{err}"
    );
    assert!(
        err.contains("routes.session secret_env names SY_CHECK_SESSION, which is not set here"),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("session: cookie sy_ver, idle 30m, max_age 12h, signed with SY_CHECK_SESSION"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Set, but too short to sign with: `run` would refuse it too.
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .env("SY_CHECK_SESSION", "short")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && err.contains(
                "names SY_CHECK_SESSION, which holds 5 bytes here: `run` refuses a session secret under 16"
            ),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .env("SY_CHECK_TOKEN", "t")
        .env("SY_CHECK_PROM", "p")
        .env("SY_CHECK_ANALYSIS", "q")
        .env("SY_CHECK_SESSION", "a-session-secret-long-enough")
        .output()
        .unwrap();
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("warning"));
}
