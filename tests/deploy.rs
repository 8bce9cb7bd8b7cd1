//! What ships under `deploy/` and at the top of the repository for running switchyard: every
//! metric the Grafana dashboard and the alert rules name is one the proxy exports; the systemd
//! unit passes `systemd-analyze verify` (its man page reference included); the CLI's
//! completions and man pages generate. (The rules' own tests run under promtool in
//! tests/prometheus.rs; the Dockerfile is linted by hadolint in .ci/run.)

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// The `switchyard_*` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("switchyard_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn every_metric_the_dashboards_and_alerts_name_is_exported() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let cfg = config(
        &[("blue", &[blue.addr]), ("canary", &[canary.addr])],
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[flags]]\nname = \"f\"\npercent = 50\n",
    )
    .replacen(
        "split = { blue = 100 }",
        "split = { blue = 100, canary = 0 }\nguard = { baseline = \"blue\" }\nrollout = { pool = \"canary\", steps = [10, 100], every = \"1h\" }",
        1,
    );
    let proxy = Proxy::start(&cfg).await;
    get(&h1_client(), &proxy.url("/")).await;
    let (_, text) = get(&h1_client(), &proxy.admin_url("/metrics")).await;
    let exported: BTreeSet<String> = String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect();
    let mut named = BTreeSet::new();
    for file in [
        "deploy/grafana/switchyard.json",
        "deploy/prometheus/alerts.yml",
        "deploy/prometheus/alerts_test.yml",
    ] {
        named.extend(metric_names(&std::fs::read_to_string(file).unwrap()));
    }
    assert!(named.len() >= 12, "{named:?}");
    let missing: Vec<_> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported: {missing:?}\nexported: {exported:?}"
    );
    proxy.shutdown().await;
}

#[test]
fn completions_and_man_pages_generate() {
    for (shell, marker) in [
        ("bash", "_switchyard()"),
        ("zsh", "#compdef switchyard"),
        ("fish", "complete -c switchyard"),
    ] {
        let out = Command::new(BIN).args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(marker) && text.contains("rollback"),
            "{shell}: {text}"
        );
    }
    let out = Command::new(BIN).arg("man").output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH switchyard"),
        "{page}"
    );
    assert!(page.contains("switchyard\\-rollback(1)"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["man", "--out"])
        .arg(dir.path().join("man1"))
        .output()
        .unwrap();
    assert!(out.status.success());
    for cmd in [
        "",
        "-run",
        "-check",
        "-diff",
        "-explain",
        "-status",
        "-rollback",
        "-healthcheck",
        "-demo",
    ] {
        assert!(
            dir.path().join(format!("man1/switchyard{cmd}.1")).exists(),
            "switchyard{cmd}.1"
        );
    }
}

#[test]
#[ignore = "needs systemd-analyze: .ci/run runs it"]
fn the_systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man/man1");
    assert!(Command::new(BIN)
        .args(["man", "--out"])
        .arg(&man)
        .status()
        .unwrap()
        .success());
    // The unit as installed, with the binary where this build put it.
    let unit = std::fs::read_to_string("deploy/systemd/switchyard.service")
        .unwrap()
        .replace("/usr/local/bin/switchyard", BIN);
    let path = dir.path().join("switchyard.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .expect("systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
