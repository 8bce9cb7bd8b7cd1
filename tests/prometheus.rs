//! A real Prometheus server scrapes the admin API's `/metrics` on loopback, and a PromQL query
//! through Prometheus's HTTP API returns the request counter of the route and pool that were
//! hit. Needs the `prometheus` binary (Debian package `prometheus`): `.ci/run` installs it and
//! runs this test; `cargo test` alone skips it as ignored.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

#[tokio::test]
#[ignore = "needs the prometheus binary: .ci/run installs it and runs this test"]
async fn prometheus_scrapes_the_request_counter() {
    let blue = Upstream::start("blue").await;
    let proxy = Proxy::start(&config(
        &[("blue", &[blue.addr])],
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    ))
    .await;
    let client = h1_client();
    for _ in 0..7 {
        assert_eq!(get(&client, &proxy.url("/")).await.0.status, 200);
    }

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: ['{}']\n",
            std::fs::canonicalize("deploy/prometheus/alerts.yml").unwrap().display(),
            proxy.admin.unwrap()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the prometheus binary (apt-get install prometheus)");
    let _prometheus = Killed(child);

    let query = "switchyard_requests_total{route=\"blue\",pool=\"blue\",class=\"2xx\"}";
    let url = format!(
        "http://127.0.0.1:{port}/api/v1/query?query={}",
        form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>()
    );
    let started = Instant::now();
    loop {
        if let Ok(resp) = client
            .request(http::Request::get(&url).body(empty()).unwrap())
            .await
        {
            use http_body_util::BodyExt;
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if let Some(sample) = answer["data"]["result"].get(0) {
                assert_eq!(sample["metric"]["route"], "blue");
                assert_eq!(sample["metric"]["pool"], "blue");
                assert_eq!(sample["value"][1], "7", "{answer}");
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Prometheus never returned the counter"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Every query of the shipped Grafana dashboard runs on this Prometheus, and the request
    // panels find the route's series.
    let ask = |query: String| {
        let client = client.clone();
        async move {
            use http_body_util::BodyExt;
            let url = format!(
                "http://127.0.0.1:{port}/api/v1/query?query={}",
                form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>()
            );
            let resp = client
                .request(http::Request::get(&url).body(empty()).unwrap())
                .await
                .unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        }
    };
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/grafana/switchyard.json").unwrap()).unwrap();
    let mut exprs: Vec<(String, String)> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push((
                panel["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    for a in dashboard["annotations"]["list"].as_array().unwrap() {
        exprs.push((
            a["name"].as_str().unwrap().to_owned(),
            a["expr"].as_str().unwrap().to_owned(),
        ));
    }
    assert!(exprs.len() >= 15, "{exprs:?}");
    for (title, expr) in &exprs {
        let q = expr.replace("$job", ".*").replace("$route", ".*");
        // Rates need two scrapes: the panels that must find the route wait for them.
        let must_find = ["Requests/s", "p99 latency", "Effective split"].contains(&title.as_str());
        let started = Instant::now();
        loop {
            let answer = ask(q.clone()).await;
            assert_eq!(answer["status"], "success", "{title}: {expr}: {answer}");
            if !must_find || !answer["data"]["result"].as_array().unwrap().is_empty() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{title}: {expr}: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // The alert rules load and evaluate, every one of them.
    let written = std::fs::read_to_string("deploy/prometheus/alerts.yml")
        .unwrap()
        .matches("- alert: ")
        .count();
    assert!(written >= 7, "{written}");
    let started = Instant::now();
    loop {
        let answer = ask_path(&client, port, "/api/v1/rules").await;
        let rules: Vec<&serde_json::Value> = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        if rules.len() == written
            && rules
                .iter()
                .all(|r| r["health"] == "ok" && r["lastEvaluation"] != "0001-01-01T00:00:00Z")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "rules did not all evaluate: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    proxy.shutdown().await;
}

async fn ask_path(
    client: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    port: u16,
    path: &str,
) -> serde_json::Value {
    use http_body_util::BodyExt;
    let url = format!("http://127.0.0.1:{port}{path}");
    let resp = client
        .request(http::Request::get(&url).body(empty()).unwrap())
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// The shipped alert rules pass `promtool check rules` and their unit tests.
#[test]
#[ignore = "needs promtool (Debian's prometheus package): .ci/run installs it and runs this test"]
fn the_alert_rules_pass_promtool() {
    let check = Command::new("promtool")
        .args(["check", "rules", "deploy/prometheus/alerts.yml"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let test = Command::new("promtool")
        .args(["test", "rules", "deploy/prometheus/alerts_test.yml"])
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}
