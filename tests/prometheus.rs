//! A real Prometheus server scrapes the admin API's `/metrics` on loopback, and a PromQL query
//! through Prometheus's HTTP API returns the request counter of the route and pool that were
//! hit. Needs the `prometheus` binary (Debian package `prometheus`): `.ci/run` installs it and
//! runs this test; `cargo test` alone skips it as ignored.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: ['{}']\n",
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
    proxy.shutdown().await;
}
