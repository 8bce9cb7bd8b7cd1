//! Traffic shifting through the real proxy: sticky split shares, stickiness across requests
//! and across two proxy processes, the anonymous cookie, overrides, spoofed decision headers,
//! and flags with windows, environments and variants.

mod support;

use std::collections::HashMap;

use http::Request;
use support::*;

fn split_config(blue: std::net::SocketAddr, canary: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"[listen]
http = "127.0.0.1:0"
[log]
access = false
[identity]
from = ["header:x-user-id", "cookie:session_user", "query:uid"]
[pools.blue]
endpoints = ["{blue}"]
[pools.canary]
endpoints = ["{canary}"]
[[routes]]
name = "web"
split = {{ blue = 80, canary = 20 }}
override = {{ header = "x-switchyard-pool", cookie = "sy_pool" }}
{extra}"#
    )
}

async fn ask(proxy_url: &str, headers: &[(&str, &str)]) -> (http::response::Parts, serde_json::Value) {
    let client = h1_client();
    let mut b = Request::get(format!("{proxy_url}/echo"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (parts, body) = send(&client, b.body(empty()).unwrap()).await;
    (parts, serde_json::from_slice(&body).unwrap())
}

fn header<'a>(seen: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    seen.get(name).and_then(|v| v[0].as_str())
}

#[tokio::test]
async fn the_split_is_sticky_and_shares_follow_the_weights() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let proxy = Proxy::start(&split_config(blue.addr, canary.addr, "")).await;
    let client = h1_client();
    let mut first = HashMap::new();
    for round in 0..2 {
        for i in 0..1000 {
            let user = format!("user-{i}");
            let req = Request::get(proxy.url("/"))
                .header("x-user-id", &user)
                .body(empty())
                .unwrap();
            let (parts, _) = send(&client, req).await;
            let pool = parts.headers["x-upstream"].to_str().unwrap().to_owned();
            if round == 0 {
                first.insert(user, pool);
            } else {
                assert_eq!(first[&user], pool, "{user} moved between requests");
            }
        }
    }
    let on_canary = first.values().filter(|p| *p == "canary").count();
    assert!(
        (150..=250).contains(&on_canary),
        "{on_canary} of 1000 users on a 20% canary"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn two_proxy_processes_agree_on_every_user() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let cfg = split_config(
        blue.addr,
        canary.addr,
        "[[flags]]\nname = \"ab\"\npercent = 50\nvariants = { x = 1, y = 1 }\n",
    );
    let (a, b) = (Running::start(&cfg), Running::start(&cfg));
    for i in 0..200 {
        let user = format!("u{i}");
        let (_, sa) = ask(&format!("http://{}", a.addr), &[("x-user-id", &user)]).await;
        let (_, sb) = ask(&format!("http://{}", b.addr), &[("x-user-id", &user)]).await;
        for h in ["x-switchyard-pool", "x-switchyard-bucket", "x-switchyard-flags"] {
            assert_eq!(header(&sa, h), header(&sb, h), "{user}: {h}");
        }
    }
}

#[tokio::test]
async fn pinned_buckets_and_flags_reach_the_upstream() {
    // The public contract: murmur3_x86_32("switchyard:alice") = 1597324748 → bucket 0.3719;
    // Unleash bucket of "new_checkout:alice" = 21, variant target (of 1000) = 175.
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let flags = "[[flags]]\nname = \"new_checkout\"\npercent = 21\nvariants = { control = 200, treatment = 800 }\n[[flags]]\nname = \"narrow\"\ngroup = \"new_checkout\"\npercent = 20\n";
    let proxy = Proxy::start(&split_config(blue.addr, canary.addr, flags)).await;
    let (_, seen) = ask(&proxy.url(""), &[("x-user-id", "alice")]).await;
    assert_eq!(header(&seen, "x-switchyard-bucket"), Some("0.3719"));
    assert_eq!(header(&seen, "x-switchyard-pool"), Some("blue"));
    assert_eq!(
        header(&seen, "x-switchyard-flags"),
        Some("new_checkout=control, narrow=off")
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn users_without_an_id_get_a_sticky_cookie() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let proxy = Proxy::start(&split_config(blue.addr, canary.addr, "")).await;
    let (parts, seen) = ask(&proxy.url(""), &[]).await;
    let cookie = parts.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("sy_uid="), "{cookie}");
    for attr in ["Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=31536000"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    let id = cookie.split(';').next().unwrap().to_owned();
    let bucket = header(&seen, "x-switchyard-bucket").unwrap().to_owned();
    for _ in 0..5 {
        let (parts, seen) = ask(&proxy.url(""), &[("cookie", &id)]).await;
        assert!(
            parts.headers.get("set-cookie").is_none(),
            "the known id is not reset"
        );
        assert_eq!(header(&seen, "x-switchyard-bucket"), Some(bucket.as_str()));
    }
    // The other sources of identity, in order.
    let (_, by_cookie) = ask(&proxy.url(""), &[("cookie", "session_user=alice")]).await;
    assert_eq!(header(&by_cookie, "x-switchyard-bucket"), Some("0.3719"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_rollout_from_weight_zero_sets_the_cookie_from_its_first_request() {
    // check's hint for a rollout: the new pool at weight 0 in the file. Users without an id
    // must get one before the first step, or they flip between pools on every request after it.
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let cfg = split_config(blue.addr, canary.addr, "").replace(
        "split = { blue = 80, canary = 20 }",
        "split = { blue = 100, canary = 0 }\nguard = { baseline = \"blue\" }\nrollout = { pool = \"canary\", steps = [50, 100], every = \"1h\" }",
    );
    let proxy = Proxy::start(&cfg).await;
    let (parts, _) = ask(&proxy.url(""), &[]).await;
    let cookie = parts
        .headers
        .get("set-cookie")
        .expect("an id for the rollout's first step");
    assert!(cookie.to_str().unwrap().starts_with("sy_uid="), "{cookie:?}");
    // Without a rollout, a one-pool route needs no id.
    let cfg =
        split_config(blue.addr, canary.addr, "").replace("blue = 80, canary = 20", "blue = 100, canary = 0");
    let plain = Proxy::start(&cfg).await;
    let (parts, _) = ask(&plain.url(""), &[]).await;
    assert!(parts.headers.get("set-cookie").is_none());
    proxy.shutdown().await;
    plain.shutdown().await;
}

#[tokio::test]
async fn a_query_parameter_identifies_the_user() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let proxy = Proxy::start(&split_config(blue.addr, canary.addr, "")).await;
    let client = h1_client();
    let (parts, body) = get(&client, &proxy.url("/echo?x=1&uid=alice")).await;
    assert!(parts.headers.get("set-cookie").is_none());
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(header(&seen, "x-switchyard-bucket"), Some("0.3719"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn overrides_force_a_pool_of_the_route_and_unknown_values_are_ignored() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let proxy = Proxy::start(&split_config(blue.addr, canary.addr, "")).await;
    // alice's bucket (0.3719) is in blue's range.
    let (parts, _) = ask(
        &proxy.url(""),
        &[("x-user-id", "alice"), ("x-switchyard-pool", "canary")],
    )
    .await;
    assert_eq!(parts.headers["x-upstream"], "canary");
    let (parts, _) = ask(
        &proxy.url(""),
        &[("x-user-id", "alice"), ("cookie", "sy_pool=canary")],
    )
    .await;
    assert_eq!(parts.headers["x-upstream"], "canary");
    let (parts, _) = ask(
        &proxy.url(""),
        &[("x-user-id", "alice"), ("x-switchyard-pool", "purple")],
    )
    .await;
    assert_eq!(parts.headers["x-upstream"], "blue", "an unknown pool is ignored");
    proxy.shutdown().await;
}

#[tokio::test]
async fn spoofed_decision_headers_are_replaced() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let flags = "[[flags]]\nname = \"beta\"\npercent = 0\n[headers]\nflags = \"x-flags\"\n";
    let proxy = Proxy::start(&split_config(blue.addr, canary.addr, flags)).await;
    let (_, seen) = ask(
        &proxy.url(""),
        &[
            ("x-user-id", "alice"),
            ("x-flags", "beta=on, admin=on"),
            ("x-switchyard-bucket", "0.9999"),
            ("x-switchyard-debug", "1"),
        ],
    )
    .await;
    assert_eq!(header(&seen, "x-flags"), Some("beta=off"));
    assert_eq!(seen["x-flags"].as_array().unwrap().len(), 1);
    assert_eq!(header(&seen, "x-switchyard-bucket"), Some("0.3719"));
    assert!(seen.get("x-switchyard-debug").is_none());
    assert!(
        seen.get("x-switchyard-flags").is_none(),
        "the flags header was renamed"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn flags_follow_windows_environments_users_and_routes() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let flags = r#"
[env]
name = "production"
[[flags]]
name = "always"
[[flags]]
name = "future"
start = "2099-01-01T00:00:00Z"
[[flags]]
name = "past"
start = "2020-01-01T00:00:00Z"
end = "2021-01-01T00:00:00Z"
[[flags]]
name = "current"
start = "2020-01-01T00:00:00Z"
end = "2099-01-01T00:00:00Z"
[[flags]]
name = "staging_only"
environments = ["staging"]
[[flags]]
name = "prod_only"
environments = ["staging", "production"]
[[flags]]
name = "listed"
users = ["alice"]
[[flags]]
name = "elsewhere"
routes = ["other"]
[[routes]]
name = "other"
path_prefix = "/other"
split = { blue = 100 }
"#;
    let proxy = Proxy::start(&split_config(blue.addr, canary.addr, flags)).await;
    let (_, seen) = ask(&proxy.url(""), &[("x-user-id", "alice")]).await;
    assert_eq!(
        header(&seen, "x-switchyard-flags"),
        Some("always=on, future=off, past=off, current=on, staging_only=off, prod_only=on, listed=on")
    );
    let (_, seen) = ask(&proxy.url(""), &[("x-user-id", "bob")]).await;
    assert!(header(&seen, "x-switchyard-flags")
        .unwrap()
        .ends_with("listed=off"));
    let (_, body) = get(&h1_client(), &format!("{}/echo", proxy.url("/other"))).await;
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        header(&seen, "x-switchyard-flags")
            .unwrap()
            .ends_with("elsewhere=on"),
        "{seen}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn variant_shares_follow_their_weights() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let flags = "[[flags]]\nname = \"search\"\npercent = 50\nvariants = { a = 1, b = 3 }\n";
    let proxy = Proxy::start(&split_config(blue.addr, canary.addr, flags)).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..1000 {
        let (_, seen) = ask(&proxy.url(""), &[("x-user-id", &format!("v{i}"))]).await;
        *counts
            .entry(header(&seen, "x-switchyard-flags").unwrap().to_owned())
            .or_default() += 1;
    }
    let (off, a, b) = (counts["search=off"], counts["search=a"], counts["search=b"]);
    assert!((430..=570).contains(&off), "{counts:?}");
    assert!((80..=170).contains(&a) && (300..=450).contains(&b), "{counts:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn explain_uses_the_same_decision_as_the_proxy() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let flags = "[[flags]]\nname = \"ab\"\npercent = 60\nvariants = { x = 1, y = 1 }\n";
    let cfg = split_config(blue.addr, canary.addr, flags);
    let proxy = Proxy::start(&cfg).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &cfg).unwrap();
    for i in 0..20 {
        let user = format!("e{i}");
        let (_, seen) = ask(&proxy.url(""), &[("x-user-id", &user)]).await;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["explain", "--json", "-c"])
            .arg(file.path())
            .args(["-H", &format!("x-user-id: {user}"), "http://h/echo"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let route = &answer["route"];
        assert_eq!(route["user_key_from"], "header x-user-id");
        let upstream: HashMap<String, String> = serde_json::from_value(route["upstream_headers"].clone())
            .map(|v: Vec<(String, String)>| v.into_iter().collect())
            .unwrap();
        for h in ["x-switchyard-pool", "x-switchyard-bucket", "x-switchyard-flags"] {
            assert_eq!(
                upstream.get(h).map(String::as_str),
                header(&seen, h),
                "{user}: {h}"
            );
        }
    }
    proxy.shutdown().await;
}

/// Overrides are a tester's tool: honoured from `[overrides] from` (after `trusted_proxies`)
/// or with a value signed by `switchyard override-token`, and never to a pool a guard tripped
/// or an operator rolled back unless `to_tripped = true`. Before, anyone could force any pool,
/// rolled-back ones included.
#[tokio::test]
async fn overrides_are_honoured_only_for_testers_and_never_to_a_rolled_back_pool() {
    const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
    const VAR: &str = "SY_SHIFTING_TEST_OVERRIDE_SECRET";
    // SAFETY: set before the proxy starts; no other test of this binary reads it.
    unsafe { std::env::set_var(VAR, "tester-secret") };
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let top = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[context]\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
         [overrides]\nfrom = [\"10.0.0.0/8\"]\nsecret_env = \"{VAR}\"\n"
    );
    let cfg = split_config(blue.addr, canary.addr, "").replace("[log]\n", &format!("{top}[log]\n"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, &cfg).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let url = proxy.url("");
    // alice's bucket (0.3719) is in blue's range.
    let pool_for = async |client: &str, value: &str| {
        let (parts, _) = ask(
            &url,
            &[
                ("x-user-id", "alice"),
                ("x-forwarded-for", client),
                ("x-switchyard-pool", value),
            ],
        )
        .await;
        parts.headers["x-upstream"].to_str().unwrap().to_owned()
    };
    assert_eq!(
        pool_for("203.0.113.9", "canary").await,
        "blue",
        "not a tester's address"
    );
    assert_eq!(
        pool_for("10.1.2.3", "canary").await,
        "canary",
        "a tester's address"
    );
    assert_eq!(
        pool_for("junk, 203.0.113.9, 10.1.2.3", "canary").await,
        "canary",
        "the last hop before the trusted proxy is the client"
    );
    let token = std::process::Command::new(BIN)
        .args(["override-token", "canary", "--ttl", "10m", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    assert_eq!(
        pool_for("203.0.113.9", &token).await,
        "canary",
        "a signed value, from anywhere"
    );
    let forged = token.replacen("canary.", "blue.", 1);
    assert_eq!(
        pool_for("10.1.2.3", &forged).await,
        "blue",
        "a forged signature is refused"
    );
    // An operator rolls the canary back: no override reaches it.
    let req = Request::post(proxy.admin_url("/api/routes/web/rollback"))
        .body(empty())
        .unwrap();
    assert_eq!(send(&h1_client(), req).await.0.status, 200);
    assert_eq!(pool_for("10.1.2.3", "canary").await, "blue");
    assert_eq!(pool_for("203.0.113.9", &token).await, "blue");
    let (_, metrics) = get(&h1_client(), &proxy.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("switchyard_overrides_ignored_total{route=\"web\"} 4"),
        "{metrics}"
    );
    proxy.shutdown().await;

    // to_tripped = true: the config says testers may reach it.
    std::fs::write(
        &path,
        cfg.replace("[overrides]\n", "[overrides]\nto_tripped = true\n"),
    )
    .unwrap();
    let proxy = Proxy::start_file(&path).await;
    let url = proxy.url("");
    let (parts, _) = ask(
        &url,
        &[
            ("x-user-id", "alice"),
            ("x-forwarded-for", "10.1.2.3"),
            ("x-switchyard-pool", "canary"),
        ],
    )
    .await;
    assert_eq!(parts.headers["x-upstream"], "canary");
    proxy.shutdown().await;
    // Without the secret, run refuses to start and check warns.
    unsafe { std::env::remove_var(VAR) };
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "overrides.secret_env names {VAR}, which is not set here"
        )),
        "{stderr}"
    );
    let err = switchyard::App::start(switchyard::Source::File(path.clone()))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("overrides.secret_env"), "{err}");
}
