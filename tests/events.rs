//! The audit trail as an operator reads it: every command (who, from where, with which token),
//! reload (what it changed), trip and start is an event, served by `GET /api/events` with its
//! filters, printed by `switchyard events`, sent to the webhooks that ask for it, and kept
//! across a restart.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const TOKEN_VAR: &str = "SY_EVENTS_TEST_TOKEN";

fn config(blue: &Upstream, canary: &Upstream, admin: u16, hook: &Recorder, split: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken_env = \"{TOKEN_VAR}\"\n\
         [log]\naccess = false\n[identity]\nfrom = [\"header:x-user-id\"]\n\
         [pools.blue]\nendpoints = [\"{}\"]\n[pools.canary]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {split}\n\
         guard = {{ baseline = \"blue\", min_requests = 10, window = \"10s\" }}\n\
         [[routes]]\nname = \"other\"\npath_prefix = \"/other\"\nsplit = {{ blue = 100 }}\n\
         [[notify]]\nurl = \"http://{}/hook\"\nevents = [\"reload\", \"rollback\", \"trip\"]\n",
        blue.addr, canary.addr, hook.addr
    )
}

async fn events(proxy: &Proxy, query: &str) -> serde_json::Value {
    let url = proxy.admin_url(&format!("/api/events{query}"));
    let (parts, body) = get(&h1_client(), &url).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(parts.status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn kinds(v: &serde_json::Value) -> Vec<String> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// Runs `switchyard ARGS` with the token; stdout, after asserting success.
async fn cli(args: &[&str]) -> String {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .env(TOKEN_VAR, "t0ken")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{args:?}: {stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_an_event_with_who_made_it_and_the_trail_survives_a_restart() {
    // SAFETY: set before any proxy of this test binary reads it; nothing else writes it.
    unsafe { std::env::set_var(TOKEN_VAR, "t0ken") };
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let hook = Recorder::start(ok_answer).await;
    let admin = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(
        &path,
        config(&blue, &canary, admin, &hook, "{ blue = 50, canary = 50 }"),
    )
    .unwrap();
    let proxy = Proxy::start_file(&path).await;

    // The start is the first event.
    let v = events(&proxy, "").await;
    assert_eq!(kinds(&v), ["start"], "{v:#}");
    assert!(v["file"]["path"]
        .as_str()
        .unwrap()
        .ends_with("switchyard.toml.state.json.events.jsonl"));

    // An operator's rollback, through the command: who, from where, with which token.
    let out = cli(&["rollback", "web", "-c", path.to_str().unwrap()]).await;
    assert!(out.contains("every user goes to blue"), "{out}");
    let v = events(&proxy, "?kind=rollback").await;
    let e = &v["events"][0];
    assert_eq!(e["route"], "web", "{e}");
    assert_eq!(e["by"]["via"], "api", "{e}");
    assert!(e["by"]["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{e}");
    assert_eq!(e["by"]["token"], TOKEN_VAR, "{e}");
    assert!(
        e["by"]["agent"].as_str().unwrap().starts_with("switchyard/"),
        "{e}"
    );
    assert_eq!(e["details"]["moved"][0]["from"], "canary", "{e}");
    assert_eq!(e["details"]["moved"][0]["to"], "blue", "{e}");
    let reset = cli(&["reset", "web", "-c", path.to_str().unwrap()]).await;
    assert!(reset.contains("1 trip(s) cleared"), "{reset}");

    // A reload from the file: what it changed.
    std::fs::write(
        &path,
        config(&blue, &canary, admin, &hook, "{ blue = 80, canary = 20 }"),
    )
    .unwrap();
    eventually("the reload's event", Duration::from_secs(10), async || {
        events(&proxy, "?kind=reload").await["matched"] == 1
    })
    .await;
    let v = events(&proxy, "?kind=reload").await;
    let e = &v["events"][0];
    assert_eq!(e["by"]["via"], "file", "{e}");
    let changes = e["details"]["changes"].to_string();
    assert!(changes.contains("web") && changes.contains("canary"), "{e}");

    // A trip: the proxy's own, no operator.
    canary.seen.fail_every.store(1, Ordering::SeqCst);
    let client = h1_client();
    for i in 0..150 {
        let req = Request::get(proxy.url("/"))
            .header("x-user-id", format!("u{i}"))
            .body(empty())
            .unwrap();
        send(&client, req).await;
    }
    eventually("the trip's event", Duration::from_secs(10), async || {
        events(&proxy, "?kind=trip").await["matched"] == 1
    })
    .await;
    let v = events(&proxy, "?kind=trip").await;
    let e = &v["events"][0];
    assert_eq!(
        (&e["route"], &e["pool"]),
        (&"web".into(), &"canary".into()),
        "{e}"
    );
    assert!(e.get("by").is_none(), "{e}");
    assert!(e["details"]["errors"].as_u64().unwrap() >= 1, "{e}");

    // Filters: by route (the other route has none), by time, by number.
    assert_eq!(events(&proxy, "?route=other").await["matched"], 0);
    let all = events(&proxy, "").await;
    assert_eq!(
        kinds(&all),
        ["start", "rollback", "reset", "reload", "trip"],
        "{all:#}"
    );
    let seqs: Vec<u64> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);
    let reload_ms = all["events"][3]["at_ms"].as_u64().unwrap();
    assert_eq!(
        kinds(&events(&proxy, &format!("?since={reload_ms}")).await),
        ["reload", "trip"]
    );
    assert_eq!(
        kinds(&events(&proxy, &format!("?until={reload_ms}")).await),
        ["start", "rollback", "reset"]
    );
    assert_eq!(kinds(&events(&proxy, "?after=3").await), ["trip"]);
    assert_eq!(kinds(&events(&proxy, "?limit=2").await), ["reload", "trip"]);
    assert_eq!(events(&proxy, "?since=1h").await["matched"], 5);
    let (parts, body) = get(&client, &proxy.admin_url("/api/events?kind=tripped")).await;
    assert_eq!(parts.status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("the kinds are"),
        "{body:?}"
    );
    let (parts, body) = get(&client, &proxy.admin_url("/api/events?since=yesterday")).await;
    assert_eq!(parts.status, 400);
    assert!(String::from_utf8_lossy(&body).contains("not a time"), "{body:?}");

    // The command prints them.
    let out = cli(&["events", "-c", path.to_str().unwrap(), "--route", "web"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "rollback, reset, trip (a reload has no route):\n{out}"
    );
    assert!(lines[0].contains("rollback") && lines[0].contains("web"), "{out}");
    assert!(lines[0].contains(&format!("token {TOKEN_VAR}")), "{out}");
    assert!(
        lines[1].contains("reset by an operator: 1 trip(s) cleared"),
        "{out}"
    );
    assert!(
        lines[2].contains("trip") && lines[2].contains("canary tripped"),
        "{out}"
    );
    let out = cli(&[
        "events",
        "-c",
        path.to_str().unwrap(),
        "--kind",
        "reload",
        "--json",
    ])
    .await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["matched"], 1);

    // The webhooks that asked for reloads, rollbacks and trips got them, with who.
    eventually("three webhooks", Duration::from_secs(10), async || {
        hook.requests.lock().unwrap().len() >= 3
    })
    .await;
    let got: Vec<serde_json::Value> = hook
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let sent: Vec<&str> = got.iter().map(|b| b["event"].as_str().unwrap()).collect();
    assert_eq!(
        sent,
        ["rollback", "reload", "trip"],
        "the reset was not asked for"
    );
    assert_eq!(got[0]["by"]["token"], TOKEN_VAR, "{}", got[0]);
    assert_eq!(got[1]["by"]["via"], "file", "{}", got[1]);

    // A restart: the trail is read back, and numbering goes on after it.
    proxy.shutdown().await;
    let proxy = Proxy::start_file(&path).await;
    let all = events(&proxy, "").await;
    assert_eq!(
        kinds(&all),
        ["start", "rollback", "reset", "reload", "trip", "start"],
        "{all:#}"
    );
    let last = &all["events"][5];
    assert_eq!(last["seq"], 5);
    assert!(
        last["text"].as_str().unwrap().contains("1 pool(s) still tripped"),
        "{last}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_reload_asked_through_the_api_is_recorded_even_when_nothing_changed_and_a_failed_one_too() {
    // SAFETY: as above.
    unsafe { std::env::set_var(TOKEN_VAR, "t0ken") };
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let hook = Recorder::start(ok_answer).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let text = config(&blue, &canary, free_port(), &hook, "{ blue = 50, canary = 50 }");
    std::fs::write(&path, &text).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let client = h1_client();
    let reload = || {
        Request::post(proxy.admin_url("/api/reload"))
            .header("authorization", "Bearer t0ken")
            .header("user-agent", "curl/8.5.0")
            .body(empty())
            .unwrap()
    };
    assert_eq!(send(&client, reload()).await.0.status, 200);
    let v = events(&proxy, "?kind=reload").await;
    let e = &v["events"][0];
    assert_eq!(e["details"]["result"], "unchanged", "{e}");
    assert_eq!(e["by"]["agent"], "curl/8.5.0", "{e}");

    std::fs::write(
        &path,
        text.replace("{ blue = 50, canary = 50 }", "{ blue = 50, nope = 50 }"),
    )
    .unwrap();
    eventually("the failed reload's event", Duration::from_secs(10), async || {
        events(&proxy, "?kind=reload_failed").await["matched"] == 1
    })
    .await;
    let v = events(&proxy, "?kind=reload_failed").await;
    assert!(
        v["events"][0]["details"]["error"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{v:#}"
    );
    proxy.shutdown().await;
}

/// `switchyard events --follow` prints the trail, then each new event as it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_prints_new_events_as_they_come() {
    use tokio::io::AsyncBufReadExt;
    // SAFETY: as above.
    unsafe { std::env::set_var(TOKEN_VAR, "t0ken") };
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let hook = Recorder::start(ok_answer).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(
        &path,
        config(&blue, &canary, free_port(), &hook, "{ blue = 50, canary = 50 }"),
    )
    .unwrap();
    let proxy = Proxy::start_file(&path).await;
    let mut child = tokio::process::Command::new(BIN)
        .args(["events", "--follow", "-c", path.to_str().unwrap()])
        .env(TOKEN_VAR, "t0ken")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.contains("start"), "{first}");
    cli(&["rollback", "web", "-c", path.to_str().unwrap()]).await;
    let next = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the rollback printed within 10 s")
        .unwrap()
        .unwrap();
    assert!(next.contains("rollback") && next.contains("web"), "{next}");
    child.kill().await.unwrap();
    proxy.shutdown().await;
}
