//! Every `examples/*/run.sh` runs as a user would run it (with `PACE=fast`, ports of its own,
//! and this build's binary) and finishes with its own checks passed.

mod support;

use std::process::Command;

use support::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Three consecutive free ports, for the upstreams.
fn free_run() -> u16 {
    loop {
        let base = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base < 65000 && (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
}

#[test]
fn every_example_runs_and_passes_its_checks() {
    let mut dirs: Vec<_> = std::fs::read_dir("examples")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("run.sh").exists())
        .collect();
    dirs.sort();
    // Each example on its own ports (none shared: an upstream's run of three is never another
    // example's port), all at once.
    let mut taken = std::collections::HashSet::new();
    let mut ports = Vec::new();
    while ports.len() < dirs.len() {
        let (proxy, admin, up) = (free_port(), free_port(), free_run());
        let all = [proxy, admin, up, up + 1, up + 2];
        if all.iter().all(|p| !taken.contains(p))
            && all.iter().collect::<std::collections::HashSet<_>>().len() == 5
        {
            taken.extend(all);
            ports.push((proxy, admin, up));
        }
    }
    let run = |dir: &std::path::PathBuf, (proxy, admin, up): (u16, u16, u16)| {
        for file in ["config.toml", "README.md"] {
            assert!(dir.join(file).exists(), "{} has no {file}", dir.display());
        }
        let out = Command::new("bash")
            .arg(dir.join("run.sh"))
            .env("PACE", "fast")
            .env("SWITCHYARD", BIN)
            .env("PROXY_PORT", proxy.to_string())
            .env("ADMIN_PORT", admin.to_string())
            .env("UPSTREAM_PORT", up.to_string())
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.contains("\ndone."),
            "{}:\n{said}",
            dir.display()
        );
        dir.file_name().unwrap().to_string_lossy().into_owned()
    };
    let ran: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = dirs
            .iter()
            .zip(ports)
            .map(|(d, p)| s.spawn(move || run(d, p)))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(
        ran,
        [
            "ab-experiment",
            "ab-flag",
            "blue-green",
            "canary-rollout",
            "feature-file",
            "parallel-run",
            "sessions",
            "targeting",
            "tenant-migration"
        ]
    );
}

/// `run.sh --hold` stays up after its checks with the dashboard answering, and SIGTERM (as
/// Ctrl-C) stops everything it started.
#[tokio::test]
async fn an_example_held_stays_up_until_interrupted() {
    use std::io::{BufRead, BufReader};
    let (proxy, admin, up) = (free_port(), free_port(), free_run());
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("bash")
        .arg("examples/blue-green/run.sh")
        .arg("--hold")
        .process_group(0)
        .env("PACE", "fast")
        .env("SWITCHYARD", BIN)
        .env("PROXY_PORT", proxy.to_string())
        .env("ADMIN_PORT", admin.to_string())
        .env("UPSTREAM_PORT", up.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while !said.contains("holding: ") {
        match lines.next() {
            Some(Ok(l)) => {
                said.push_str(&l);
                said.push('\n');
            }
            _ => panic!("the example ended without holding:\n{said}"),
        }
    }
    assert!(
        said.contains(&format!("dashboard http://127.0.0.1:{admin}/")),
        "{said}"
    );
    // Still up: the dashboard answers, and so does the proxy.
    let get = |port: u16, path: &str| -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(get(admin, "/").starts_with("HTTP/1.1 200"));
    assert!(get(proxy, "/").starts_with("HTTP/1.1 200"));
    // Interrupted: it exits, and takes the proxy with it.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    support::eventually(
        "the example to exit",
        std::time::Duration::from_secs(10),
        async || child.try_wait().unwrap().is_some(),
    )
    .await;
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    support::eventually(
        "the proxy to stop",
        std::time::Duration::from_secs(10),
        async || std::net::TcpStream::connect(("127.0.0.1", proxy)).is_err(),
    )
    .await;
}
