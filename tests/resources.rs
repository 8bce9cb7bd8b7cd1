//! The proxy's own faults are not the upstreams': the binary runs with `ulimit -n 64` and 150
//! clients connect at once, so it runs out of file descriptors both accepting and connecting
//! upstream. Before, that was counted as upstream connect failures: healthy endpoints ejected
//! and a healthy canary tripped at "100% errors". Now it answers `503 local_resources`,
//! backs its accept loop off, counts it in `switchyard_resource_exhausted_total`, and neither
//! a pool's numbers, its guard nor its endpoints' health hear of it.

mod support;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use support::*;

fn metric_sum(metrics: &str, prefix: &str, filter: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// One request on a new connection; the answer's head.
fn get_head(addr: std::net::SocketAddr, path: &str, user: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: a\r\nx-user-id: {user}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split("\r\n\r\n").next().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_the_proxys_fault_not_the_pools() {
    let (blue1, blue2, canary) = (
        Upstream::start("blue").await,
        Upstream::start("blue").await,
        Upstream::start("canary").await,
    );
    let port = free_port();
    let admin = free_port();
    let cfg = format!(
        "[listen]\nhttp = \"127.0.0.1:{port}\"\nmax_connections = 10000\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\naccess = false\n\
         [identity]\nfrom = [\"header:x-user-id\"]\n\
         [pools.blue]\nendpoints = [\"{}\", \"{}\"]\n[pools.canary]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ blue = 50, canary = 50 }}\n\
         [routes.guard]\nbaseline = \"blue\"\nmax_error_rate = 0.05\nmin_requests = 20\nwindow = \"30s\"\n",
        blue1.addr, blue2.addr, canary.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(["run", "--workers", "1", "-c"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setrlimit(2) between fork and exec, on the child only; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _child = Killed(cmd.spawn().unwrap());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(admin).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the proxy did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // 150 clients at once, each holding its connection open with a request sent.
    let mut held = Vec::new();
    for i in 0..150 {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = write!(s, "GET / HTTP/1.1\r\nHost: a\r\nx-user-id: u{i}\r\n\r\n");
            held.push(s);
        }
    }
    // Read what each got, if anything, within a second and a half for them all.
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    let deadline = Instant::now() + Duration::from_millis(1500);
    for s in &mut held {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 512];
        let text = match s.read(&mut buf) {
            Ok(n) if n > 0 => String::from_utf8_lossy(&buf[..n]).into_owned(),
            _ => String::new(),
        };
        let key = if text.starts_with("HTTP/1.1 503") && text.contains("x-switchyard-error: local_resources")
        {
            "503 local_resources".to_owned()
        } else {
            text.get(..12).unwrap_or("no answer").to_owned()
        };
        *statuses.entry(key).or_default() += 1;
    }
    drop(held);
    assert!(
        statuses.get("503 local_resources").copied().unwrap_or(0) > 0,
        "the proxy ran out of descriptors connecting upstream: {statuses:?}"
    );
    assert!(
        !statuses.keys().any(|k| k.starts_with("HTTP/1.1 502")),
        "no 502 upstream_connect for the proxy's own fault: {statuses:?}"
    );

    // Descriptors free again: the admin API answers, and nothing was held against the pools.
    let started = Instant::now();
    let metrics = loop {
        let text = (|| {
            let mut s = std::net::TcpStream::connect(admin).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            out.starts_with("HTTP/1.1 200").then_some(out)
        })();
        if let Some(t) = text {
            break t;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the admin API did not come back"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metric_sum(&metrics, "switchyard_resource_exhausted_total", "op=\"connect\"") > 0,
        "{metrics}"
    );
    assert!(
        metric_sum(&metrics, "switchyard_resource_exhausted_total", "op=\"accept\"") > 0,
        "{metrics}"
    );
    assert!(
        metric_sum(
            &metrics,
            "switchyard_local_requests_total",
            "handler=\"resources\""
        ) > 0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "switchyard_upstream_errors_total", ""),
        0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "switchyard_requests_total", "class=\"5xx\"")
            + metric_sum(&metrics, "switchyard_requests_total", "class=\"error\""),
        0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "switchyard_endpoint_healthy", " 0"),
        0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "switchyard_pool_tripped", ""),
        0,
        "{metrics}"
    );
    // Every endpoint serves at once: none was ejected, the canary was not tripped.
    // (The proxy notices the closed clients' connections as it reads them: until then it may
    // still be short of descriptors, and says so with 503 local_resources.)
    let started = Instant::now();
    while !get_head(addr, "/", "first").starts_with("HTTP/1.1 200") {
        assert!(started.elapsed() < Duration::from_secs(10), "no 200 within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        let head = get_head(addr, "/", &format!("after-{i}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    for up in [&blue1, &blue2, &canary] {
        if up.hits() > 0 {
            seen.insert(up.addr);
        }
    }
    assert_eq!(seen.len(), 3, "all three endpoints answered");
}
