//! Targeting through the proxy, with real upstreams: request headers, cookies and the client's
//! address (behind a trusted proxy) as Unleash's context; a route rule sending a country to the
//! canary; variant payloads and dependency chains in the headers; a feature file reloaded when
//! it changes; a local fake Unleash server polled with ETag; OFREP answers equal to the
//! headers for the same user and request.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use http::Request;
use serde_json::{json, Value};
use support::*;

type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

const TARGETING: &str = r##"
[identity]
from = ["header:x-user-id"]

[context]
country = "header:x-country"
plan = "cookie:plan"
app_version = "query:v"
trusted_proxies = ["127.0.0.0/8"]

[[segments]]
name = "nordics"
constraints = [{ contextName = "country", operator = "IN", values = ["se", "no", "dk"] }]

[[flags]]
name = "nordic_banner"
strategies = [{ name = "default", segments = ["nordics"] }]

[[flags]]
name = "pro_tools"
strategies = [{ name = "default", constraints = [{ contextName = "plan", operator = "IN", values = ["pro"] }] }]

[[flags]]
name = "office"
strategies = [{ name = "default", constraints = [{ contextName = "remoteAddress", operator = "IN_CIDR", values = ["203.0.113.0/24"] }] }]

[[flags]]
name = "new_app"
strategies = [{ name = "default", constraints = [{ contextName = "app_version", operator = "SEMVER_GTE", value = "2.0.0" }] }]

[[flags]]
name = "Checkout.Theme"
strategies = [{ name = "flexibleRollout", parameters = { rollout = "100" }, segments = ["nordics"] }]
variants = [
  { name = "dark", weight = 500, payload = { type = "json", value = '{"bg":"#000"}' } },
  { name = "light", weight = 500, payload = { type = "string", value = "white" } },
]

[[flags]]
name = "theme_editor"
dependencies = [{ feature = "Checkout.Theme", variants = ["dark"] }]

[[flags]]
name = "editor_ai"
dependencies = [{ feature = "theme_editor" }]
"##;

/// The dictionary a header holds, as `key -> item` (items as written).
fn dict(v: Option<&Value>) -> Vec<(String, String)> {
    let Some(Value::Array(a)) = v else {
        return Vec::new();
    };
    let text = a[0].as_str().unwrap();
    split_items(text)
        .into_iter()
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Splits an RFC 8941 dictionary on the commas outside strings.
fn split_items(text: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut escaped) = (Vec::new(), String::new(), false, false);
    for c in text.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(cur.trim().to_owned());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

fn get_of(d: &[(String, String)], k: &str) -> Option<String> {
    d.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone())
}

/// Sends a request to `/echo...` and returns the upstream that answered and the headers it saw.
async fn echo(client: &Client, proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> (String, Value) {
    let mut req = Request::get(proxy.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (parts, body) = send(client, req.body(empty()).unwrap()).await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    let upstream = parts.headers["x-upstream"].to_str().unwrap().to_owned();
    (upstream, serde_json::from_slice(&body).unwrap())
}

fn web_config(blue: &Upstream, canary: &Upstream, extra: &str) -> String {
    web_config_with(blue, canary, "", extra)
}

/// With `top` as top-level keys (before any table).
fn web_config_with(blue: &Upstream, canary: &Upstream, top: &str, extra: &str) -> String {
    format!(
        "{top}[listen]\nhttp = \"127.0.0.1:0\"\n[log]\naccess = false\n\
         [pools.blue]\nendpoints = [\"{}\"]\n[pools.canary]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ blue = 100, canary = 0 }}\n\
         [[routes.rules]]\nname = \"sweden first\"\nconstraints = [{{ contextName = \"country\", operator = \"IN\", values = [\"se\"] }}]\npool = \"canary\"\n\
         {extra}",
        blue.addr, canary.addr
    )
}

#[tokio::test]
async fn headers_cookies_and_the_client_address_are_the_context() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let proxy = Proxy::start(&web_config(&blue, &canary, TARGETING)).await;
    let client = h1_client();

    // A Swedish pro user on app 2.1, through a trusted proxy that saw 203.0.113.7.
    let (up, seen) = echo(
        &client,
        &proxy,
        "/echo?v=2.1.0",
        &[
            ("x-user-id", "u1"),
            ("x-country", "se"),
            ("cookie", "plan=pro"),
            ("x-forwarded-for", "203.0.113.7"),
        ],
    )
    .await;
    assert_eq!(up, "canary", "the rule sends Sweden to the canary");
    let flags = dict(seen.get("x-switchyard-flags"));
    assert_eq!(
        get_of(&flags, "nordic_banner").as_deref(),
        Some("on"),
        "{flags:?}"
    );
    assert_eq!(get_of(&flags, "pro_tools").as_deref(), Some("on"));
    assert_eq!(
        get_of(&flags, "office").as_deref(),
        Some("on"),
        "x-forwarded-for from a trusted proxy"
    );
    assert_eq!(get_of(&flags, "new_app").as_deref(), Some("on"));
    // A name that is not an RFC 8941 key gets the documented key.
    let theme = get_of(&flags, "checkout.theme").expect("Checkout.Theme as checkout.theme");
    assert!(theme == "dark" || theme == "light");

    // Denmark: a Nordic country the rule does not name; no cookie; an old app; a direct client.
    let (up, seen) = echo(
        &client,
        &proxy,
        "/echo?v=1.9.9",
        &[("x-user-id", "u1"), ("x-country", "dk")],
    )
    .await;
    assert_eq!(up, "blue");
    let flags = dict(seen.get("x-switchyard-flags"));
    assert_eq!(get_of(&flags, "nordic_banner").as_deref(), Some("on"));
    assert_eq!(get_of(&flags, "pro_tools").as_deref(), Some("off"));
    assert_eq!(get_of(&flags, "office").as_deref(), Some("off"));
    assert_eq!(get_of(&flags, "new_app").as_deref(), Some("off"));

    // The United States: no segment, no theme, no dependent flags, no payloads at all.
    let (up, seen) = echo(
        &client,
        &proxy,
        "/echo",
        &[("x-user-id", "u1"), ("x-country", "us")],
    )
    .await;
    assert_eq!(up, "blue");
    let flags = dict(seen.get("x-switchyard-flags"));
    assert_eq!(get_of(&flags, "checkout.theme").as_deref(), Some("off"));
    assert_eq!(get_of(&flags, "theme_editor").as_deref(), Some("off"));
    assert!(seen.get("x-switchyard-flag-payloads").is_none(), "{seen}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn payloads_and_dependency_chains_travel_in_the_headers() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let proxy = Proxy::start(&web_config(&blue, &canary, TARGETING)).await;
    let client = h1_client();
    let (mut dark, mut light) = (0, 0);
    for i in 0..60 {
        let user = format!("user-{i}");
        let (_, seen) = echo(
            &client,
            &proxy,
            "/echo",
            &[("x-user-id", &user), ("x-country", "no")],
        )
        .await;
        let flags = dict(seen.get("x-switchyard-flags"));
        let payloads = dict(seen.get("x-switchyard-flag-payloads"));
        let theme = get_of(&flags, "checkout.theme").unwrap();
        let editor = get_of(&flags, "theme_editor").unwrap();
        let ai = get_of(&flags, "editor_ai").unwrap();
        match theme.as_str() {
            "dark" => {
                dark += 1;
                assert_eq!(
                    get_of(&payloads, "checkout.theme").as_deref(),
                    Some(r##""{\"bg\":\"#000\"}";type=json"##)
                );
                assert_eq!(editor, "on", "theme_editor needs Checkout.Theme's variant dark");
            }
            "light" => {
                light += 1;
                assert_eq!(
                    get_of(&payloads, "checkout.theme").as_deref(),
                    Some(r#""white";type=string"#)
                );
                assert_eq!(editor, "off");
            }
            other => panic!("variant {other}"),
        }
        // Unleash follows one level of dependencies: a flag whose parent has a parent is off.
        assert_eq!(ai, "off");
        assert_eq!(payloads.len(), 1, "only flags with a payload: {payloads:?}");
    }
    assert!(dark > 15 && light > 15, "{dark} dark, {light} light");
    proxy.shutdown().await;
}

const FILE_V1: &str = r#"{"version": 2, "features": [
  {"name": "from_file", "enabled": true, "strategies": [{"name": "default", "constraints": [
    {"contextName": "country", "operator": "IN", "values": ["se"]}]}]}
]}"#;

const FILE_V2: &str = r#"{"version": 2, "features": [
  {"name": "from_file", "enabled": true, "strategies": [{"name": "default", "constraints": [
    {"contextName": "country", "operator": "IN", "values": ["se", "us"]}]}],
   "variants": [{"name": "blue_button", "weight": 1000, "payload": {"type": "string", "value": "b"}}]}
]}"#;

/// The value of the feature file's flag for a user in the United States.
async fn from_file_for_us(client: &Client, proxy: &Proxy) -> Option<String> {
    let (_, seen) = echo(
        client,
        proxy,
        "/echo",
        &[("x-user-id", "u1"), ("x-country", "us")],
    )
    .await;
    get_of(&dict(seen.get("x-switchyard-flags")), "from_file")
}

#[tokio::test]
async fn a_feature_file_is_reloaded_when_it_changes_and_a_bad_one_changes_nothing() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("features.json"), FILE_V1).unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(
        &path,
        web_config_with(
            &blue,
            &canary,
            "flags_from = \"features.json\"\n",
            "[context]\ncountry = \"header:x-country\"\n",
        ),
    )
    .unwrap();
    let proxy = Proxy::start_file(&path).await;
    let client = h1_client();
    let us = async |client: &Client| from_file_for_us(client, &proxy).await;
    assert_eq!(us(&client).await.as_deref(), Some("off"));
    std::fs::write(dir.path().join("features.json"), FILE_V2).unwrap();
    eventually("the new file's value", Duration::from_secs(10), async || {
        us(&client).await.as_deref() == Some("blue_button")
    })
    .await;
    // A broken file: the last good flags stay.
    let revision = proxy.state.snapshot.load().revision.clone();
    std::fs::write(
        dir.path().join("features.json"),
        "{\"features\": [{\"name\": 5}]}",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(us(&client).await.as_deref(), Some("blue_button"));
    assert_eq!(
        proxy.state.snapshot.load().revision,
        revision,
        "a bad file changes nothing"
    );
    proxy.shutdown().await;
}

/// The fake Unleash server's document, and how many answers were 304s.
static DOC: Mutex<String> = Mutex::new(String::new());
static NOT_MODIFIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn unleash_answer(r: &Recorded) -> Vec<u8> {
    if r.get("authorization") != Some("client-token-1") {
        return b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n".to_vec();
    }
    let doc = DOC.lock().unwrap().clone();
    let etag = format!(
        "\"{:x}\"",
        doc.len() * 31 + doc.bytes().map(usize::from).sum::<usize>()
    );
    if r.get("if-none-match") == Some(etag.as_str()) {
        NOT_MODIFIED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        return format!("HTTP/1.1 304 Not Modified\r\netag: {etag}\r\ncontent-length: 0\r\n\r\n")
            .into_bytes();
    }
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\netag: {etag}\r\ncontent-length: {}\r\n\r\n{doc}",
        doc.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn an_unleash_server_is_polled_with_etag() {
    *DOC.lock().unwrap() = FILE_V1.to_owned();
    let server = Recorder::start(unleash_answer).await;
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    // SAFETY: set before the proxy starts; no other thread of this test binary reads it.
    unsafe { std::env::set_var("SY_TARGETING_TEST_UNLEASH_TOKEN", "client-token-1") };
    std::fs::write(
        &path,
        web_config_with(
            &blue,
            &canary,
            &format!(
                "flags_from = {{ url = \"http://{}/api/client/features\", token_env = \"SY_TARGETING_TEST_UNLEASH_TOKEN\", interval = \"1s\" }}\n",
                server.addr
            ),
            "[context]\ncountry = \"header:x-country\"\n",
        ),
    )
    .unwrap();
    let proxy = Proxy::start_file(&path).await;
    let client = h1_client();
    let se = async |client: &Client| from_file_for_us(client, &proxy).await;
    // Asked before serving: the first request already has the server's flag.
    assert_eq!(se(&client).await.as_deref(), Some("off"));
    eventually(
        "a 304 to a conditional poll",
        Duration::from_secs(10),
        async || NOT_MODIFIED.load(std::sync::atomic::Ordering::SeqCst) >= 2,
    )
    .await;
    let requests = server.requests();
    assert!(requests
        .iter()
        .all(|r| r.path == "/api/client/features" && r.get("unleash-appname").is_some()));
    assert!(
        requests.iter().skip(1).all(|r| r.get("if-none-match").is_some()),
        "every poll after the first is conditional"
    );
    *DOC.lock().unwrap() = FILE_V2.to_owned();
    eventually("the server's new document", Duration::from_secs(10), async || {
        se(&client).await.as_deref() == Some("blue_button")
    })
    .await;
    assert!(
        dir.path().join("switchyard.toml.flags.json").exists(),
        "the last document is cached beside the config"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn ofrep_answers_equal_the_headers_for_the_same_user_and_request() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let proxy = Proxy::start(&web_config(
        &blue,
        &canary,
        &format!("{TARGETING}\n[ofrep]\nenabled = true\n"),
    ))
    .await;
    let client = h1_client();
    for (i, country) in ["se", "no", "us", "dk"].iter().cycle().take(24).enumerate() {
        let user = format!("user-{i}");
        let (_, seen) = echo(
            &client,
            &proxy,
            "/echo?v=2.0.0",
            &[
                ("x-user-id", &user),
                ("x-country", country),
                ("cookie", "plan=pro"),
            ],
        )
        .await;
        let header = dict(seen.get("x-switchyard-flags"));
        // The browser SDK sends its own context: the user, and the attributes by name.
        let body = json!({ "context": { "targetingKey": user, "country": country, "plan": "pro", "app_version": "2.0.0" } }).to_string();
        let req = Request::post(proxy.url("/ofrep/v1/evaluate/flags"))
            .header("content-type", "application/json")
            .body(full(body.clone()))
            .unwrap();
        let (parts, raw) = send(&client, req).await;
        assert_eq!(parts.status, 200);
        let bulk: Value = serde_json::from_slice(&raw).unwrap();
        for e in bulk["flags"].as_array().unwrap() {
            let name = e["key"].as_str().unwrap();
            let key = switchyard::routing::flags::header_key(name);
            // `office` reads the client's address, which differs between the two requests.
            if key == "office" {
                continue;
            }
            let value = match &e["value"] {
                Value::Bool(b) => (if *b { "on" } else { "off" }).to_owned(),
                Value::String(s) => s.clone(),
                v => panic!("{v}"),
            };
            assert_eq!(
                get_of(&header, &key),
                Some(value.clone()),
                "{name} for {user} in {country}"
            );
            if name == "Checkout.Theme" && value == "dark" {
                assert_eq!(e["metadata"]["payload"], "{\"bg\":\"#000\"}");
                assert_eq!(e["metadata"]["payloadType"], "json");
            }
        }
        // The single evaluation agrees with the bulk one.
        let req = Request::post(proxy.url("/ofrep/v1/evaluate/flags/Checkout.Theme"))
            .header("content-type", "application/json")
            .body(full(body))
            .unwrap();
        let (_, raw) = send(&client, req).await;
        let one: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(
            Some(one["variant"].as_str().unwrap().to_owned()),
            get_of(&header, "checkout.theme")
        );
    }
    proxy.shutdown().await;
}

/// 100 flags with 150-byte payloads: before, 21 KB of headers went upstream and a stock nginx
/// answered 400 to every request. Now `check` warns of the route whose flags headers can pass
/// `[headers] max_flag_bytes` (and refuses past the hard cap), and the proxy never sends a
/// header past it: the flags past it are left out whole, and counted.
#[tokio::test]
async fn flags_headers_never_pass_their_limit() {
    const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
    let up = Recorder::start(ok_answer).await;
    let mut flags =
        String::from("[identity]\nfrom = [\"header:x-user-id\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let payload = "p".repeat(150);
    for i in 0..100 {
        flags.push_str(&format!(
            "[[flags]]\nname = \"flag{i}\"\nstrategies = [{{ name = \"default\", variants = [{{ name = \"on\", weight = 1000, payload = {{ type = \"string\", value = \"{payload}\" }} }}] }}]\n"
        ));
    }
    let cfg = config(&[("app", &[up.addr])], &flags);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.toml");
    // `check` on `text`: what it warns, once it has passed.
    let checked = |text: &str| -> String {
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(BIN)
            .arg("check")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let stderr = checked(&cfg);
    assert!(
        stderr.contains("warning: route `app`: its payloads header can be")
            && stderr.contains("over [headers] max_flag_bytes (4096)"),
        "{stderr}"
    );
    // Five routes sharing those flags: one warning that names them, not five.
    let addrs = [up.addr];
    let five: Vec<(&str, &[std::net::SocketAddr])> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| (*n, &addrs[..]))
        .collect();
    let stderr = checked(&config(&five, &flags));
    assert_eq!(
        stderr.matches("over [headers] max_flag_bytes").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: routes `a`, `b`, `c` and 2 more: their payloads header can be"),
        "{stderr}"
    );

    let proxy = Proxy::start(&cfg).await;
    let req = Request::get(proxy.url("/"))
        .header("x-user-id", "u1")
        .body(empty())
        .unwrap();
    let (parts, _) = send(&h1_client(), req).await;
    assert_eq!(parts.status, 200);
    let seen = up.requests().pop().unwrap();
    let flags_header = seen.get("x-switchyard-flags").unwrap();
    let payloads = seen.get("x-switchyard-flag-payloads").unwrap();
    assert!(
        flags_header.len() <= 4096 && flags_header.contains("flag99=on"),
        "{}",
        flags_header.len()
    );
    assert!(
        payloads.len() <= 4096 && payloads.len() > 3500,
        "{}",
        payloads.len()
    );
    // Whole items only: every one parses, and the first flags are there.
    assert!(payloads.starts_with("flag0=\"ppp"), "{payloads}");
    assert!(
        payloads.split(", ").all(|i| i.ends_with(";type=string")),
        "{payloads}"
    );
    let (_, metrics) = get(&h1_client(), &proxy.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("switchyard_flag_headers_truncated_total{route=\"app\"} 1"),
        "{metrics}"
    );
    proxy.shutdown().await;

    // A limit of its own is kept; past the cap, or a route that could pass it, is refused.
    let small = cfg.replace("[admin]\n", "[headers]\nmax_flag_bytes = 1024\n[admin]\n");
    let proxy = Proxy::start(&small).await;
    let req = Request::get(proxy.url("/"))
        .header("x-user-id", "u1")
        .body(empty())
        .unwrap();
    send(&h1_client(), req).await;
    let seen = up.requests().pop().unwrap();
    assert!(seen.get("x-switchyard-flag-payloads").unwrap().len() <= 1024);
    assert!(seen.get("x-switchyard-flags").unwrap().len() <= 1024);
    proxy.shutdown().await;
    let wrong = cfg.replace("[admin]\n", "[headers]\nmax_flag_bytes = 100000\n[admin]\n");
    let err = switchyard::runtime::load_str(&wrong, std::path::Path::new("t.toml"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("headers.max_flag_bytes: must be between 64 and 32768"),
        "{err}"
    );
    let huge = cfg.replace(&payload, &"p".repeat(400));
    let err = switchyard::runtime::load_str(&huge, std::path::Path::new("t.toml"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("route `app`: its payloads header can be"), "{err}");
    assert!(err.contains("over the cap of 32768"), "{err}");

    // `check -c BIG | head -1` reads one line and closes the pipe: no panic, success.
    let mut big = config(&[("app", &[up.addr])], "");
    for i in 0..3000 {
        big.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\npath_prefix = \"/r{i}\"\nsplit = {{ app = 100 }}\n"
        ));
    }
    let big_path = dir.path().join("big.toml");
    std::fs::write(&big_path, &big).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "'{BIN}' check -c '{}' | head -1; echo \"status ${{PIPESTATUS[0]}}\"",
            big_path.display()
        ))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.ends_with("status 0\n") && !stderr.contains("panicked"),
        "{stdout}{stderr}"
    );
}
