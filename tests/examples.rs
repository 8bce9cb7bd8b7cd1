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
    let mut ran = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir("examples")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("run.sh").exists())
        .collect();
    dirs.sort();
    for dir in dirs {
        for file in ["config.toml", "README.md"] {
            assert!(dir.join(file).exists(), "{} has no {file}", dir.display());
        }
        let out = Command::new("bash")
            .arg(dir.join("run.sh"))
            .env("PACE", "fast")
            .env("SWITCHYARD", BIN)
            .env("PROXY_PORT", free_port().to_string())
            .env("ADMIN_PORT", free_port().to_string())
            .env("UPSTREAM_PORT", free_run().to_string())
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
        ran.push(dir.file_name().unwrap().to_string_lossy().into_owned());
    }
    assert_eq!(
        ran,
        ["ab-flag", "blue-green", "canary-rollout", "tenant-migration"]
    );
}
