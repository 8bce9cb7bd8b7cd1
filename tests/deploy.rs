//! What ships under `deploy/` and at the top of the repository for running switchyard: every
//! metric the Grafana dashboard and the alert rules name is one the proxy exports; the systemd
//! unit passes `systemd-analyze verify` (its man page reference included); the CLI's
//! completions and man pages generate. (The rules' own tests run under promtool in
//! tests/prometheus.rs; the Dockerfile is linted by hadolint and its build stage replayed by .ci/image-build-stage, both in .ci/run.)

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
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[flags]]\nname = \"f\"\npercent = 50\n[fleet]\nname = \"t\"\nprometheus = \"http://{}\"\n",
            dead_port().await
        ),
    )
    .replacen(
        "split = { blue = 100 }",
        "split = { blue = 100, canary = 0 }\nguard = { baseline = \"blue\", checks = [{ name = \"c\", query = 'up', min = 0, interval = \"1s\" }] }\nrollout = { pool = \"canary\", steps = [10, 100], every = \"1h\" }",
        1,
    );
    let proxy = Proxy::start(&cfg).await;
    get(&h1_client(), &proxy.url("/")).await;
    // The fleet's gauges and the checks' counts appear once its (absent) Prometheus has been
    // asked.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let (_, text) = get(&h1_client(), &proxy.admin_url("/metrics")).await;
        let t = String::from_utf8_lossy(&text);
        if t.contains("switchyard_fleet_up{") && t.contains("switchyard_check_verdicts_total{") {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no switchyard_fleet_up");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
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

/// The switchyard.toml inside the ConfigMap (a `|` block, indented).
fn configmap_toml() -> String {
    let yaml = std::fs::read_to_string("deploy/kubernetes/configmap.yaml").unwrap();
    let start =
        yaml.find("switchyard.toml: |\n").expect("a switchyard.toml key") + "switchyard.toml: |\n".len();
    yaml[start..]
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l.trim()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_kubernetes_manifests_agree_with_each_other_and_the_config_checks() {
    let dir = std::path::Path::new("deploy/kubernetes");
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    files.sort();
    for f in &files {
        assert!(
            kustomization.contains(&format!("  - {f}\n")),
            "kustomization.yaml does not list {f}"
        );
    }
    // The ConfigMap's config is one `check` accepts (its token variable set, as the Deployment
    // sets it from the Secret).
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("switchyard.toml");
    let toml = configmap_toml();
    std::fs::write(&path, &toml).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .env("SWITCHYARD_ADMIN_TOKEN", "t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{toml}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("fleet: http://prometheus-operated.monitoring.svc:9090"),
        "{summary}"
    );
    // What the manifests name, the config and each other have.
    let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
    assert!(toml.contains("listen = \"0.0.0.0:9901\"") && deployment.contains("containerPort: 9901"));
    assert!(toml.contains("http = \"0.0.0.0:8080\"") && deployment.contains("containerPort: 8080"));
    assert!(
        toml.contains("token_env = \"SWITCHYARD_ADMIN_TOKEN\"")
            && deployment.contains("- name: SWITCHYARD_ADMIN_TOKEN")
    );
    assert!(
        toml.contains("path = \"/var/lib/switchyard/state.json\"")
            && deployment.contains("mountPath: /var/lib/switchyard")
    );
    assert!(
        deployment.contains("mountPath: /etc/switchyard") && deployment.contains("name: switchyard-config")
    );
    assert!(deployment.contains("path: /readyz") && deployment.contains("path: /healthz"));
    // The PodMonitor is optional (not every cluster has the Prometheus Operator's CRD): a
    // component the base leaves out and deploy/kubernetes-podmonitor adds, in the base's
    // namespace and with its labels.
    assert!(!kustomization.contains("  - podmonitor"), "{kustomization}");
    let podmonitor = std::fs::read_to_string(dir.join("podmonitor/podmonitor.yaml")).unwrap();
    assert!(podmonitor.contains("kind: PodMonitor") && podmonitor.contains("port: admin"));
    assert!(podmonitor.contains("name: switchyard\n"));
    let component = std::fs::read_to_string(dir.join("podmonitor/kustomization.yaml")).unwrap();
    assert!(component.contains("kind: Component") && component.contains("  - podmonitor.yaml\n"));
    let overlay = std::fs::read_to_string("deploy/kubernetes-podmonitor/kustomization.yaml").unwrap();
    assert!(overlay.contains("  - ../kubernetes\n") && overlay.contains("  - ../kubernetes/podmonitor\n"));
    let from = |text: &str, key: &str| -> String {
        let start = text.find(key).unwrap_or_else(|| panic!("no {key} in {text}"));
        text[start..].split("\nresources:").next().unwrap().to_owned()
    };
    assert_eq!(from(&overlay, "namespace:"), from(&kustomization, "namespace:"));
    // The PodMonitor's job label is namespace/name, which the fleet selector names.
    assert!(
        overlay.contains("namespace: switchyard")
            && toml.contains("selector = 'job=\"switchyard/switchyard\"'")
    );
    // The drain fits the grace period: the preStop wait plus drain_timeout.
    assert!(
        deployment.contains("terminationGracePeriodSeconds: 45")
            && deployment.contains("command: [\"sleep\", \"10\"]")
    );
    assert!(toml.contains("drain_timeout = \"30s\""));
}

#[test]
#[ignore = "needs kubernetes-validate from PyPI (in target/ci-venv): .ci/run installs it and runs this test"]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let validator = std::env::var("KUBERNETES_VALIDATE")
        .unwrap_or_else(|_| "target/ci-venv/bin/kubernetes-validate".into());
    let mut files: Vec<std::path::PathBuf> = ["deploy/kubernetes", "deploy/kubernetes/podmonitor"]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let out = Command::new(&validator)
        .args(["--strict", "-k", "1.33.0"])
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("{validator}: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    // Every built-in kind passed against its schema; only the custom kinds (the PodMonitor,
    // the two kustomizations and the component) have none here.
    assert_eq!(
        said.matches(" passed for resource ").count(),
        files.len() - 3,
        "{said}"
    );
    assert!(
        said.contains("PodMonitor") && said.contains("Kustomization") && said.contains("Component"),
        "{said}"
    );
}
