//! The commands an operator runs against a live proxy, as the binary: `explain` and `diff` on
//! the live state (admin API, else state file, else saying so), `status` (and `--watch`), and
//! `rollback`/`reset` refusing to guess a proxy from a config that does not validate, naming
//! the token's variable on a 401, and doing nothing twice without failing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::io::AsyncReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Runs `switchyard ARGS` with `env` set; exit success, stdout, stderr.
async fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = tokio::process::Command::new(BIN);
    c.args(args)
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .env_remove("SY_CLI_TEST_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A guarded route over blue and canary (50/50) with an admin API on a port of its own, and
/// `extra` at the end of the route.
fn guarded(blue: &Upstream, canary: &Upstream, admin: u16, route_extra: &str, top: &str) -> String {
    format!(
        "{top}[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\naccess = false\n\
         [identity]\nfrom = [\"header:x-user-id\"]\n\
         [pools.blue]\nendpoints = [\"{}\"]\n[pools.canary]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ blue = 50, canary = 50 }}\nguard = {{ baseline = \"blue\" }}\n{route_extra}",
        blue.addr, canary.addr
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    path: PathBuf,
    proxy: Proxy,
}

async fn start(text: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    let proxy = Proxy::start_file(&path).await;
    Setup {
        _dir: dir,
        path,
        proxy,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A user the configured split sends to the canary.
async fn canary_user(setup: &Setup) -> String {
    for i in 0..100 {
        let user = format!("u{i}");
        let (ok, out, err) = run(
            &[
                "explain",
                "--offline",
                "--json",
                "-c",
                s(&setup.path),
                "-H",
                &format!("x-user-id: {user}"),
                "http://h/",
            ],
            &[],
        )
        .await;
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        if v["route"]["pool"] == "canary" {
            return user;
        }
    }
    panic!("no canary user among 100")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_on_a_tripped_proxy_names_the_pool_it_really_uses() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let setup = start(&guarded(&blue, &canary, free_port(), "", "")).await;
    let user = canary_user(&setup).await;
    let explain = |extra: &'static [&'static str]| {
        let (path, user) = (setup.path.clone(), user.clone());
        async move {
            let mut args = vec!["explain", "-c", s(&path), "-H"];
            let h = format!("x-user-id: {user}");
            args.push(&h);
            args.extend(extra);
            args.push("http://h/");
            let (ok, out, err) = run(&args, &[]).await;
            assert!(ok, "{err}");
            out
        }
    };
    let out = explain(&[]).await;
    assert!(out.contains("pool:     canary — sticky split"), "{out}");
    assert!(
        out.contains("live:     live state from the admin API at"),
        "{out}"
    );

    // The operator rolls the route back: the proxy sends the user to blue, and explain says so.
    let (ok, said, err) = run(&["rollback", "web", "-c", s(&setup.path)], &[]).await;
    assert!(ok, "{err}");
    assert!(said.contains("every user goes to blue"), "{said}");
    let req = http::Request::get(setup.proxy.url("/"))
        .header("x-user-id", &user)
        .body(empty())
        .unwrap();
    assert_eq!(send(&h1_client(), req).await.0.headers["x-upstream"], "blue");
    let out = explain(&[]).await;
    assert!(out.contains("pool:     blue — guard trip:"), "{out}");
    assert!(out.contains("canary is tripped at"), "{out}");
    assert!(
        out.contains("rolled back by an operator; its users go to blue"),
        "{out}"
    );
    assert!(
        out.contains("live split (trips and rollout step applied)"),
        "{out}"
    );
    // --offline: the file alone.
    let out = explain(&["--offline"]).await;
    assert!(out.contains("pool:     canary — sticky split"), "{out}");
    assert!(out.contains("live:     offline"), "{out}");

    // The proxy stopped: its state file still knows.
    setup.proxy.shutdown().await;
    let out = explain(&[]).await;
    assert!(out.contains("pool:     blue — guard trip:"), "{out}");
    assert!(out.contains("did not answer"), "{out}");
    assert!(out.contains("live state from the state file"), "{out}");
    // Neither: says so, and answers from the file.
    std::fs::remove_file(setup.path.with_file_name("switchyard.toml.state.json")).unwrap();
    let out = explain(&[]).await;
    assert!(out.contains("pool:     canary — sticky split"), "{out}");
    assert!(out.contains("no state file at"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_diff_see_the_rollout_step() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let rollout = "rollout = { pool = \"canary\", steps = [80, 100], every = \"1h\" }\n";
    let text = guarded(&blue, &canary, free_port(), rollout, "")
        .replace("blue = 50, canary = 50", "blue = 100, canary = 0");
    let setup = start(&text).await;
    // A user of the rollout pool, from the live split.
    let mut found = None;
    for i in 0..50 {
        let h = format!("x-user-id: r{i}");
        let (ok, out, err) = run(&["explain", "-c", s(&setup.path), "-H", &h, "http://h/"], &[]).await;
        assert!(ok, "{err}");
        if out.contains("pool:     canary") {
            found = Some(out);
            break;
        }
    }
    let out = found.expect("80% of users on the canary");
    assert!(out.contains("rollout step 1 of 2 (canary at 80%)"), "{out}");

    // Removing the finished rollout's block: diff counts from the live split.
    let plain = setup.path.with_file_name("plain.toml");
    std::fs::write(&plain, text.replace(rollout, "")).unwrap();
    let (ok, out, err) = run(&["diff", s(&setup.path), s(&plain)], &[]).await;
    assert!(ok, "{err}");
    assert!(out.contains("80.00% of its users move"), "{out}");
    assert!(out.contains("80.00%  canary → blue"), "{out}");
    let (ok, out, _) = run(&["diff", "--offline", s(&setup.path), s(&plain)], &[]).await;
    assert!(ok);
    assert!(
        out.contains("0.00% of its users move") && !out.contains("-0.00%"),
        "{out}"
    );

    // diff --json into a reader that stops after a line: no panic, success.
    let mut child = tokio::process::Command::new(BIN)
        .args(["diff", "--json", s(&setup.path), s(&plain)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .await
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));

    // status shows the step, when the next one comes, and the endpoints.
    let (ok, out, err) = run(&["status", "-c", s(&setup.path)], &[]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("web: rollout of canary at step 1 of 2 (80%); next step (100%) in 59m"),
        "{out}"
    );
    assert!(
        out.contains(&format!("canary           {:<24} up", canary.addr.to_string())),
        "{out}"
    );

    // The README's way to finish a rollout: at its last step, write the split it reached and
    // remove the block; diff, counted from the live split, says nobody moves.
    let (ok, _, err) = run(&["promote", "web", "-c", s(&setup.path)], &[]).await;
    assert!(ok, "{err}");
    let finished = setup.path.with_file_name("finished.toml");
    std::fs::write(
        &finished,
        text.replace(rollout, "")
            .replace("blue = 100, canary = 0", "blue = 0, canary = 100"),
    )
    .unwrap();
    let (ok, out, err) = run(&["diff", s(&setup.path), s(&finished)], &[]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("0.00% of its users move") && !out.contains("canary → blue"),
        "{out}"
    );
    setup.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_redraws_in_place() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let setup = start(&guarded(&blue, &canary, free_port(), "", "")).await;
    let mut child = tokio::process::Command::new(BIN)
        .args(["status", "--watch", "-c", s(&setup.path)])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = Vec::new();
    let mut stdout = child.stdout.take().unwrap();
    // Read until the second frame has begun and been drawn (or 10 s have passed).
    let frames = |out: &[u8]| {
        String::from_utf8_lossy(out)
            .split("\x1b[H")
            .filter(|f| f.contains("ROUTE"))
            .count()
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while frames(&out) < 2 {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    child.kill().await.unwrap();
    let out = String::from_utf8_lossy(&out);
    let frames = out.matches("\x1b[H").count();
    assert!(frames >= 2, "{frames} frames: {out:?}");
    assert!(out.contains("switchyard status — http://127.0.0.1:"), "{out}");
    assert!(out.contains("ROUTE"), "{out}");
    setup.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_refuse_a_config_that_does_not_validate_and_name_the_tokens_variable() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let setup = start(&guarded(&blue, &canary, free_port(), "", "")).await;
    // A broken file that names this proxy's admin address: nothing is guessed, nothing done.
    let broken = setup.path.with_file_name("broken.toml");
    let text = std::fs::read_to_string(&setup.path).unwrap();
    std::fs::write(
        &broken,
        text.replace(
            "split = { blue = 50, canary = 50 }",
            "split = { blue = 50, canray = 50 }",
        ),
    )
    .unwrap();
    for cmd in [
        &["rollback", "web"][..],
        &["reset", "web"],
        &["promote", "web"],
        &["status"],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["-c", s(&broken)]);
        let (ok, _, err) = run(&args, &[]).await;
        assert!(!ok, "{cmd:?} succeeded");
        assert!(
            err.contains("does not validate") && err.contains("there is no pool `canray`"),
            "{err}"
        );
    }
    let r = setup.proxy.state.snapshot.load();
    assert!(r.routes[0].runtime.tripped.is_empty(), "nothing was rolled back");
    // A config without [admin]: its proxy has no admin API.
    let bare = setup.path.with_file_name("bare.toml");
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| *l == "[admin]").unwrap();
    let no_admin = [&lines[..at], &lines[at + 2..]].concat().join("\n");
    std::fs::write(&bare, no_admin).unwrap();
    let (ok, _, err) = run(&["status", "-c", s(&bare)], &[]).await;
    assert!(!ok);
    assert!(err.contains("has no [admin] table"), "{err}");
    setup.proxy.shutdown().await;

    // A token: the 401 says which variable to set; with it, it works; twice is no failure.
    let guarded_token = guarded(&blue, &canary, free_port(), "", "")
        .replace("[log]", "token_env = \"SY_CLI_TEST_TOKEN\"\n[log]");
    std::env::set_var("SY_CLI_TEST_TOKEN", "s3cret");
    let setup = start(&guarded_token).await;
    let (ok, _, err) = run(&["rollback", "web", "-c", s(&setup.path)], &[]).await;
    assert!(!ok);
    assert!(
        err.contains("401") && err.contains("set SY_CLI_TEST_TOKEN"),
        "{err}"
    );
    let (ok, _, err) = run(
        &["rollback", "web", "-c", s(&setup.path)],
        &[("SY_CLI_TEST_TOKEN", "wrong")],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("the token in SY_CLI_TEST_TOKEN is not the proxy's"),
        "{err}"
    );
    let token = [("SY_CLI_TEST_TOKEN", "s3cret")];
    for _ in 0..2 {
        let (ok, _, err) = run(&["rollback", "web", "-c", s(&setup.path)], &token).await;
        assert!(ok, "{err}");
    }
    for _ in 0..2 {
        let (ok, _, err) = run(&["reset", "web", "-c", s(&setup.path)], &token).await;
        assert!(ok, "{err}");
    }
    setup.proxy.shutdown().await;
}

/// `explain` names the rule that picked the pool (or that its pool is tripped), the strategy
/// that admitted a flag, and shows the payloads header; `--client-ip` is the request's peer.
#[tokio::test]
async fn explain_names_rules_strategies_and_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(
        &path,
        "[listen]\nhttp = \"127.0.0.1:0\"\n[context]\ncountry = \"header:x-country\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
         [pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.canary]\nendpoints = [\"127.0.0.1:2\"]\n\
         [[routes]]\nname = \"web\"\nsplit = { blue = 100, canary = 0 }\n\
         [[routes.rules]]\nname = \"employees\"\npool = \"canary\"\n\
         constraints = [{ contextName = \"remoteAddress\", operator = \"IN_CIDR\", values = [\"192.0.2.0/24\"] }]\n\
         [[flags]]\nname = \"Nordic.Banner\"\nstrategies = [{ name = \"default\", constraints = [{ contextName = \"country\", operator = \"IN\", values = [\"se\"] }] }]\n\
         variants = [{ name = \"big banner\", weight = 1, payload = { type = \"json\", value = '{\"size\":3}' } }]\n",
    )
    .unwrap();
    let explain = |ip: &'static str| {
        let path = path.clone();
        async move {
            run(
                &[
                    "explain",
                    "--offline",
                    "-c",
                    s(&path),
                    "--client-ip",
                    ip,
                    "-H",
                    "x-forwarded-for: 192.0.2.44",
                    "-H",
                    "x-country: se",
                    "http://shop/",
                ],
                &[],
            )
            .await
        }
    };
    // Behind a trusted proxy, the forwarded address is the client's: the rule holds.
    let (ok, out, err) = explain("10.1.1.1").await;
    assert!(ok, "{err}");
    assert!(
        out.contains("pool:     canary — employees: its constraints hold"),
        "{out}"
    );
    assert!(
        out.contains("Nordic.Banner        = big banner   (strategy 1 (default with 1 constraint) admits it"),
        "{out}"
    );
    assert!(
        out.contains("x-switchyard-flags: nordic.banner=\"big banner\""),
        "{out}"
    );
    assert!(
        out.contains("x-switchyard-flag-payloads: nordic.banner=\"{\\\"size\\\":3}\";type=json"),
        "{out}"
    );
    // From an untrusted peer, x-forwarded-for is not believed.
    let (ok, out, _) = explain("198.51.100.1").await;
    assert!(ok);
    assert!(out.contains("pool:     blue — "), "{out}");
}
