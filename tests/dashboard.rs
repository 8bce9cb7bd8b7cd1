//! The dashboard in a real browser (Debian's `chromium`, driven through `chromedriver` over the
//! WebDriver protocol): the page loads with no console error, shows the live numbers of a
//! route under load, shows a trip within 2 s of the guard's decision, and its rollback button
//! is refused without the token and works with it. Needs `chromium` and `chromium-driver`:
//! `.ci/run` installs them and runs this test; `cargo test` alone skips it as ignored.

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use serde_json::{json, Value};
use support::*;

const TOKEN_VAR: &str = "SY_DASHBOARD_TEST_TOKEN";
const TOKEN: &str = "s3cret-dashboard-token";

/// A WebDriver session on a headless Chromium.
struct Browser {
    base: String,
    session: String,
    _driver: Killed,
}

impl Browser {
    async fn start() -> Browser {
        Browser::start_with(&[]).await
    }

    /// A browser with more command-line switches.
    async fn start_with(extra: &[&str]) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian: apt-get install chromium chromium-driver)");
        let driver = Killed(driver);
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while call(&base, "GET", "/status", None).await.is_none() {
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1440,1000",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ];
        args.extend_from_slice(extra);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": args
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let v = call(&base, "POST", "/session", Some(caps))
            .await
            .expect("a session");
        let session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        Browser {
            base,
            session,
            _driver: driver,
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        call(&self.base, method, &path, body)
            .await
            .unwrap_or_else(|| panic!("{method} {path} failed"))
    }

    async fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// Runs `script` in the page; its return value.
    async fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    /// Clicks the element `css` finds. The page redraws every second: an element found just
    /// before a redraw is gone when the click comes ("stale element reference"), and is found
    /// again.
    async fn click(&self, css: &str) {
        for _ in 0..10 {
            let e = self.element(css).await;
            let path = format!("/session/{}/element/{e}/click", self.session);
            let (ok, v) = call_status(&self.base, "POST", &path, Some(json!({})))
                .await
                .unwrap_or_else(|| panic!("POST {path} failed"));
            if ok {
                return;
            }
            assert_eq!(v["error"], "stale element reference", "{path}: {v}");
        }
        panic!("{css} went stale ten times in a row");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn accept_alert(&self) {
        self.cmd("POST", "/alert/accept", Some(json!({}))).await;
    }

    async fn dismiss_alert(&self) {
        self.cmd("POST", "/alert/dismiss", Some(json!({}))).await;
    }

    /// The browser's console entries at level SEVERE (errors, failed loads) since the last call.
    async fn console_errors(&self) -> Vec<String> {
        let v = self
            .cmd("POST", "/se/log", Some(json!({ "type": "browser" })))
            .await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].to_string())
            .collect()
    }

    /// Waits up to `within` for `script` to return true; how long it took.
    async fn until(&self, script: &str, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.js(script).await == Value::Bool(true) {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver is killed with it; ask it to close the browser first, best effort.
        let _ = std::process::Command::new("curl")
            .args([
                "-s",
                "-X",
                "DELETE",
                &format!("{}/session/{}", self.base, self.session),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn chromium() -> &'static str {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .unwrap_or("/usr/bin/chromium")
}

/// One WebDriver call; its `value`, or `None` if the driver did not answer.
async fn call(base: &str, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
    let (ok, v) = call_status(base, method, path, body).await?;
    assert!(ok, "WebDriver {method} {path}: {v}");
    Some(v)
}

/// One WebDriver call: whether it succeeded, and its `value`; `None` if the driver did not
/// answer.
async fn call_status(base: &str, method: &str, path: &str, body: Option<Value>) -> Option<(bool, Value)> {
    let req = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.map_or_else(empty, |b| full(b.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(60), h1_client().request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()?
        .to_bytes();
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some((status.is_success(), v["value"].clone()))
}

/// Four clients sending requests from `users` users in turn (every 5 ms each); with `checkout`,
/// one request in three is followed by the user's `POST /checkout`.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, users: usize, checkout: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..4)
            .map(|c| {
                let (stop, url) = (stop.clone(), url.clone());
                tokio::spawn(async move {
                    let client = h1_client();
                    let mut i = c;
                    while !stop.load(Ordering::Relaxed) {
                        i += 4;
                        let user = format!("u{}", i % users);
                        let req = Request::get(&url)
                            .header("x-user-id", &user)
                            .body(empty())
                            .unwrap();
                        let _ = client.request(req).await.map(|r| drop(r.into_body()));
                        if checkout && i % 3 == 0 {
                            let req = Request::post(format!("{url}checkout"))
                                .header("x-user-id", &user)
                                .body(empty())
                                .unwrap();
                            let _ = client.request(req).await.map(|r| drop(r.into_body()));
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

async fn tripped(proxy: &Proxy) -> bool {
    let (_, body) = get(&h1_client(), &proxy.admin_url("/api/routes/web")).await;
    serde_json::from_slice::<Value>(&body).unwrap()["tripped"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver (.ci/run installs them)"]
async fn the_dashboard_shows_live_numbers_and_trips_and_its_buttons_need_the_token() {
    // Upstreams that fail on demand (the demo's).
    let blue = switchyard::demo::start_upstream("blue").await.unwrap();
    let canary = switchyard::demo::start_upstream("canary").await.unwrap();
    // The token the admin API wants, from the environment, as in production. (The only test in
    // this binary: nothing else reads the environment meanwhile.)
    std::env::set_var(TOKEN_VAR, TOKEN);
    let cfg = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"{TOKEN_VAR}\"\n[log]\naccess = false\n\
         [identity]\nfrom = [\"header:x-user-id\"]\n\
         [pools.blue]\nendpoints = [\"{blue}\"]\n[pools.canary]\nendpoints = [\"{canary}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ blue = 50, canary = 50 }}\n\
         guard = {{ baseline = \"blue\", min_requests = 20 }}\n\
         [[flags]]\nname = \"new_checkout\"\npercent = 30\n"
    );
    let proxy = Proxy::start(&cfg).await;

    // Steady load from 4 clients over 1,000 users.
    let load = Load::start(proxy.url("/"), 1000, false);

    let browser = Browser::start().await;
    browser.go(&proxy.admin_url("/")).await;
    // The route's pools show live requests per second (from the 2 s history), the guard's
    // window, and the flag's decisions.
    let rps = |pool: &str| {
        format!(
            "const e = document.querySelector('.card[data-route=\"web\"] .pool[data-pool=\"{pool}\"] .rps'); return !!e && parseFloat(e.textContent) > 5;"
        )
    };
    assert!(
        browser
            .until(&rps("blue"), Duration::from_secs(15))
            .await
            .is_some(),
        "no live numbers for blue"
    );
    assert!(
        browser
            .until(&rps("canary"), Duration::from_secs(5))
            .await
            .is_some(),
        "no live numbers for canary"
    );
    let text = browser.js("return document.body.innerText").await;
    let text = text.as_str().unwrap();
    assert!(text.contains("guard window 30s:"), "{text}");
    assert!(text.contains("new_checkout"), "{text}");
    assert!(
        text.contains("GUARDED → BLUE") || text.contains("guarded → blue"),
        "{text}"
    );
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors on load: {errors:?}");

    // The canary starts failing: the guard trips it; the page shows it within 2 s.
    let (parts, _) = send(
        &h1_client(),
        Request::post(format!("http://{canary}/_demo/fail?percent=100"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !tripped(&proxy).await {
        assert!(Instant::now() < deadline, "the guard did not trip");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shown = browser
        .until(
            "const c = document.querySelector('.card[data-route=\"web\"]'); return !!c && c.classList.contains('tripped') && c.innerText.includes('canary tripped');",
            Duration::from_secs(5),
        )
        .await;
    let shown = shown.expect("the trip never showed");
    eprintln!("the trip showed {shown:?} after the admin API had it");
    assert!(shown < Duration::from_secs(2), "{shown:?}");

    // The filter asks the admin API for matching routes only.
    browser.type_into("#filter", "zzz").await;
    assert!(browser
        .until("return !document.querySelector('.card[data-route=\"web\"]') && document.querySelector('#count').textContent === '0 routes';", Duration::from_secs(5))
        .await
        .is_some());
    let e = browser.element("#filter").await;
    browser
        .cmd("POST", &format!("/element/{e}/clear"), Some(json!({})))
        .await;
    browser.type_into("#filter", "WE").await;
    assert!(browser
        .until("return !!document.querySelector('.card[data-route=\"web\"]') && document.querySelector('#count').textContent === '1 route';", Duration::from_secs(5))
        .await
        .is_some());

    // Heal, and reset through the API with the token.
    send(
        &h1_client(),
        Request::post(format!("http://{canary}/_demo/fail?percent=0"))
            .body(empty())
            .unwrap(),
    )
    .await;
    let reset = Request::post(proxy.admin_url("/api/routes/web/reset"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(empty())
        .unwrap();
    assert_eq!(send(&h1_client(), reset).await.0.status, 200);
    assert!(browser
        .until("const c = document.querySelector('.card[data-route=\"web\"]'); return !!c && !c.classList.contains('tripped');", Duration::from_secs(5))
        .await
        .is_some());

    // Rollback without the token: refused, and the page says why; nothing changed.
    browser
        .click(".card[data-route=\"web\"] button[data-action=\"rollback\"]")
        .await;
    browser.accept_alert().await;
    assert!(browser
        .until("const m = document.querySelector('#message [data-status]'); return !!m && m.dataset.status === '401';", Duration::from_secs(5))
        .await
        .is_some());
    let said = browser
        .js("return document.querySelector('#message').innerText")
        .await;
    assert!(said.as_str().unwrap().contains(TOKEN_VAR), "{said}");
    assert!(!tripped(&proxy).await);

    // With the token: done.
    browser.type_into("#token", TOKEN).await;
    browser
        .click(".card[data-route=\"web\"] button[data-action=\"rollback\"]")
        .await;
    browser.accept_alert().await;
    assert!(browser
        .until("const m = document.querySelector('#message [data-status]'); return !!m && m.dataset.status === '200';", Duration::from_secs(5))
        .await
        .is_some());
    assert!(tripped(&proxy).await);
    assert!(browser
        .until("const c = document.querySelector('.card[data-route=\"web\"]'); return !!c && c.innerText.includes('canary rolled back');", Duration::from_secs(5))
        .await
        .is_some());

    // Reset asks first: dismissed, nothing changes; accepted, the trip is cleared and the page
    // says so once ("web: 1 trip(s) cleared", not "web: web: …").
    browser
        .click(".card[data-route=\"web\"] button[data-action=\"reset\"]")
        .await;
    browser.dismiss_alert().await;
    assert!(tripped(&proxy).await, "a dismissed reset changes nothing");
    browser
        .click(".card[data-route=\"web\"] button[data-action=\"reset\"]")
        .await;
    browser.accept_alert().await;
    assert!(browser
        .until("const m = document.querySelector('#message [data-status]'); return !!m && m.innerText.includes('cleared');", Duration::from_secs(5))
        .await
        .is_some());
    let said = browser
        .js("return document.querySelector('#message').innerText")
        .await;
    assert_eq!(said.as_str().unwrap().trim(), "web: 1 trip(s) cleared", "{said}");
    assert!(!tripped(&proxy).await);

    load.stop().await;
    drop(browser);
    proxy.shutdown().await;
}

/// A page on another origin that the operator visits cannot change the proxy through its admin
/// API (which, without a token, trusts loopback, where the browser is too): a `text/plain`
/// `fetch` in `no-cors` mode and a form post are refused as cross-site, and under DNS rebinding
/// (the browser resolves `evil.test` to 127.0.0.1) the API does not answer for that name. Before,
/// both rolled the route back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver (.ci/run installs them)"]
async fn a_page_on_another_origin_cannot_change_the_proxy() {
    let (blue, canary) = (Upstream::start("blue").await, Upstream::start("canary").await);
    let cfg = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n\
         [pools.blue]\nendpoints = [\"{}\"]\n[pools.canary]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ blue = 50, canary = 50 }}\n\
         guard = {{ baseline = \"blue\", min_requests = 20 }}\n",
        blue.addr, canary.addr
    );
    let proxy = Proxy::start(&cfg).await;
    let admin = proxy.admin.unwrap();
    let target = format!("http://127.0.0.1:{}/api/routes/web/rollback", admin.port());
    let page: &'static str = Box::leak(
        format!(
            "<!doctype html><title>attacker</title><body>\
             <form id=f method=POST action=\"{target}\" enctype=\"text/plain\"><input name=a value=b></form>\
             <script>fetch(\"{target}\", {{method: \"POST\", mode: \"no-cors\", headers: {{\"content-type\": \"text/plain\"}}, body: \"{{}}\"}})\
             .then(() => document.title = \"sent\", () => document.title = \"sent\");</script>"
        )
        .into_boxed_str(),
    );
    let (attacker, _) = scripted(move |mut s| async move {
        use tokio::io::AsyncWriteExt;
        if read_head(&mut s).await {
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                        page.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    })
    .await;
    let browser = Browser::start_with(&["--host-resolver-rules=MAP evil.test 127.0.0.1"]).await;
    browser.go(&format!("http://{attacker}/")).await;
    assert!(browser
        .until("return document.title === 'sent';", Duration::from_secs(10))
        .await
        .is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!tripped(&proxy).await, "a cross-site fetch rolled the route back");
    browser
        .js("document.getElementById('f').submit(); return true;")
        .await;
    assert!(browser
        .until(
            "return document.body.innerText.includes('cross-site');",
            Duration::from_secs(10)
        )
        .await
        .is_some());
    assert!(!tripped(&proxy).await, "a cross-site form rolled the route back");

    // DNS rebinding: the admin API under a name the attacker controls.
    browser
        .go(&format!("http://evil.test:{}/api/routes", admin.port()))
        .await;
    let text = browser.js("return document.body.innerText").await;
    assert!(
        text.as_str()
            .unwrap()
            .contains("does not answer for host `evil.test`"),
        "{text}"
    );
    let status = browser
        .js("const r = new XMLHttpRequest(); r.open('POST', '/api/routes/web/rollback', false); r.send('x'); return r.status;")
        .await;
    assert_eq!(status, 403);
    assert!(!tripped(&proxy).await, "a rebound page rolled the route back");

    // The dashboard itself, same origin, may: its Roll back button works without a token here.
    // (What the refused requests logged is read first: only the dashboard's own load counts.)
    browser.console_errors().await;
    browser.go(&proxy.admin_url("/")).await;
    assert!(browser
        .until(
            "return !!document.querySelector('.card[data-route=\"web\"] button[data-action=\"rollback\"]');",
            Duration::from_secs(10)
        )
        .await
        .is_some());
    let errors = browser.console_errors().await;
    assert!(
        errors.is_empty(),
        "console errors (the CSP refusing a script?): {errors:?}"
    );
    browser
        .click(".card[data-route=\"web\"] button[data-action=\"rollback\"]")
        .await;
    browser.accept_alert().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tripped(&proxy).await {
        assert!(
            Instant::now() < deadline,
            "the dashboard's own rollback was refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(browser);
    proxy.shutdown().await;
}

/// The cockpit with live data from every capability at once: a parallel run (the shadow's
/// copies, its match rate, the last mismatches), an A/B experiment on the route's pools, the
/// fleet through a real Prometheus scraping the proxy, and the events timeline showing a reload,
/// a trip and a rollback made with the dashboard's own button (named by its address and user
/// agent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromedriver and prometheus (.ci/run installs them)"]
async fn the_cockpit_shows_the_mirror_the_experiments_the_fleet_and_the_events() {
    let blue = switchyard::demo::start_upstream("blue").await.unwrap();
    let canary = switchyard::demo::start_upstream("canary").await.unwrap();
    // The shadow answers as blue does: blue's users match, the canary's do not.
    let shadow = switchyard::demo::start_upstream("blue").await.unwrap();
    std::env::set_var(TOKEN_VAR, TOKEN);
    let (admin, prom_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken_env = \"{TOKEN_VAR}\"\n[log]\naccess = false\n\
         [identity]\nfrom = [\"header:x-user-id\"]\n\
         [fleet]\nname = \"cockpit\"\nprometheus = \"http://127.0.0.1:{prom_port}\"\nselector = 'job=\"fleet\"'\ninterval = \"500ms\"\n\
         [pools.blue]\nendpoints = [\"{blue}\"]\n[pools.canary]\nendpoints = [\"{canary}\"]\n[pools.green]\nendpoints = [\"{shadow}\"]\n\
         [[routes]]\nname = \"web\"\nsplit = {{ blue = 50, canary = 50 }}\n\
         guard = {{ baseline = \"blue\", min_requests = 20, checks = [{{ name = \"served\", min = 0, interval = \"1s\",\
         query = 'sum(rate(switchyard_requests_total{{route=\"{{{{route}}}}\", pool=\"{{{{pool}}}}\", job=\"fleet\"}}[10s]))' }}] }}\n\
         mirror = {{ pool = \"green\", percent = 100, compare = true }}\n\
         [[flags]]\nname = \"new_checkout\"\npercent = 30\n\
         [[experiments]]\nname = \"canary_checkout\"\nroute = \"web\"\n\
         goal = {{ path_prefix = \"/checkout\", method = \"POST\", status = \"2xx\" }}\n"
    );
    std::fs::write(&path, &text).unwrap();
    let _prometheus = prometheus(
        prom_port,
        dir.path(),
        &[format!("127.0.0.1:{admin}").parse().unwrap()],
    );
    let proxy = Proxy::start_file(&path).await;

    // Users browse, and one in three checks out.
    let load = Load::start(proxy.url("/"), 600, true);

    let browser = Browser::start().await;
    browser.go(&proxy.admin_url("/")).await;
    // The fleet: Prometheus answers, and shows this replica.
    let replica = proxy.state.replica().to_owned();
    let fleet_shown = format!(
        "const p = document.querySelector('#fleet [data-prometheus]'); const r = document.querySelector('#fleet [data-replicas]');\
         return !!p && p.textContent === 'answers' && !!r && r.textContent.startsWith('1: ') && r.textContent.includes({replica:?});"
    );
    assert!(
        browser
            .until(&fleet_shown, Duration::from_secs(30))
            .await
            .is_some(),
        "the fleet panel: {}",
        browser
            .js("return document.querySelector('#fleet').innerText")
            .await
    );
    // The parallel run: copies sent, a match rate over the last minute and since start, and
    // the canary's mismatches with their first difference.
    let mirror = "const m = document.querySelector('.card[data-route=\"web\"] [data-mirror]'); if (!m) return false;\
         const sent = parseInt(m.querySelector('[data-sent]').textContent);\
         const recent = m.querySelector('[data-match-recent]').textContent, start = m.querySelector('[data-match-start]').textContent;\
         return sent > 50 && recent.includes('% of') && start.endsWith('%') && !!m.querySelector('[data-mismatch]');";
    assert!(
        browser.until(mirror, Duration::from_secs(20)).await.is_some(),
        "the mirror panel: {}",
        browser
            .js("const m = document.querySelector('[data-mirror]'); return m ? m.innerText : 'none'")
            .await
    );
    let panel = browser
        .js("return document.querySelector('[data-mirror]').innerText")
        .await;
    let panel = panel.as_str().unwrap();
    assert!(panel.contains("parallel run → green"), "{panel}");
    assert!(panel.contains("canary ≠ blue"), "the first difference: {panel}");
    // The experiment: both arms with users and conversions, rates and intervals.
    let arms = "const e = document.querySelector('[data-experiment=\"canary_checkout\"]'); if (!e) return false;\
         const rows = [...e.querySelectorAll('tr[data-arm]')]; return rows.length === 2 &&\
         rows.every((r) => parseInt(r.children[2].textContent) > 20 && parseInt(r.children[3].textContent) > 5 && r.children[5].textContent.includes('–'));";
    assert!(
        browser.until(arms, Duration::from_secs(20)).await.is_some(),
        "the experiments panel: {}",
        browser
            .js("return document.querySelector('#experiments').innerText")
            .await
    );

    // The guard's check, from Prometheus: each pool's rate against the baseline's, passing.
    let checks = "const rows = [...document.querySelectorAll('.card[data-route=\"web\"] tr[data-check=\"served\"]')];\
         return rows.length === 2 && rows.every((r) => r.querySelector('[data-check-verdict]').textContent === 'pass'\
           && parseFloat(r.querySelector('[data-check-value]').textContent) > 0) && !!document.querySelector('[data-checks] svg path');";
    assert!(
        browser.until(checks, Duration::from_secs(30)).await.is_some(),
        "the checks panel: {}",
        browser
            .js("const c = document.querySelector('[data-checks]'); return c ? c.innerText : 'none'")
            .await
    );
    // A reload: the timeline shows what it changed.
    std::fs::write(&path, text.replace("percent = 30", "percent = 40")).unwrap();
    let reload = "const e = document.querySelector('#events tr[data-kind=\"reload\"]'); return !!e && e.innerText.includes('config reloaded');";
    assert!(
        browser.until(reload, Duration::from_secs(10)).await.is_some(),
        "{}",
        browser
            .js("return document.querySelector('#events').innerText")
            .await
    );
    // A trip.
    let (parts, _) = send(
        &h1_client(),
        Request::post(format!("http://{canary}/_demo/fail?percent=100"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 200);
    let trip = "const e = document.querySelector('#events tr[data-kind=\"trip\"]'); return !!e && e.innerText.includes('canary tripped');";
    assert!(
        browser.until(trip, Duration::from_secs(20)).await.is_some(),
        "no trip in the timeline"
    );
    send(
        &h1_client(),
        Request::post(format!("http://{canary}/_demo/fail?percent=0"))
            .body(empty())
            .unwrap(),
    )
    .await;
    // Reset and roll back with the dashboard's buttons: the timeline says who.
    browser.type_into("#token", TOKEN).await;
    browser
        .click(".card[data-route=\"web\"] button[data-action=\"reset\"]")
        .await;
    browser.accept_alert().await;
    let reset = "return !!document.querySelector('#events tr[data-kind=\"reset\"]');";
    assert!(browser.until(reset, Duration::from_secs(10)).await.is_some());
    browser
        .click(".card[data-route=\"web\"] button[data-action=\"rollback\"]")
        .await;
    browser.accept_alert().await;
    let rollback = "const e = document.querySelector('#events tr[data-kind=\"rollback\"]');\
         return !!e && e.innerText.includes('by 127.0.0.1:') && e.innerText.includes('HeadlessChrome');";
    assert!(
        browser.until(rollback, Duration::from_secs(10)).await.is_some(),
        "{}",
        browser
            .js("return document.querySelector('#events').innerText")
            .await
    );
    // Newest first: rollback, reset, trip, ..., reload, ..., start.
    let kinds = browser
        .js("return [...document.querySelectorAll('#events tr[data-kind]')].map((e) => e.dataset.kind)")
        .await;
    let kinds: Vec<&str> = kinds
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(&kinds[..3], ["rollback", "reset", "trip"], "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"start"), "{kinds:?}");
    assert!(kinds.contains(&"reload"), "{kinds:?}");
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");

    load.stop().await;
    drop(browser);
    proxy.shutdown().await;
}

/// A blue/green switch with sessions, in the browser: blue's row counts the requests its pins
/// keep sending it after the switch and says its pins may last; once the users go quiet past the
/// idle time, it says no session is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver (.ci/run installs them)"]
async fn the_sessions_panel_shows_a_pool_draining_by_sessions() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    std::env::set_var("SY_DASHBOARD_SESSION_SECRET", "a-dashboard-secret-32-bytes-long");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let text = |split: &str| {
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n\
             [pools.blue]\nendpoints = [\"{}\"]\n[pools.green]\nendpoints = [\"{}\"]\n\
             [[routes]]\nname = \"web\"\nsplit = {{ {split} }}\n\
             [routes.session]\nidle = \"2s\"\nsecret_env = \"SY_DASHBOARD_SESSION_SECRET\"\n",
            blue.addr, green.addr
        )
    };
    std::fs::write(&path, text("blue = 100, green = 0")).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let client = h1_client();
    // Ten users, each with its pin: one request each every 100 ms.
    let mut pins: Vec<Option<String>> = vec![None; 10];
    let round = async |pins: &mut Vec<Option<String>>| {
        for pin in pins.iter_mut() {
            let mut req = Request::get(proxy.url("/"));
            if let Some(p) = pin.as_deref() {
                req = req.header("cookie", p);
            }
            let (parts, _) = send(&client, req.body(empty()).unwrap()).await;
            if let Some(c) = parts.headers.get("set-cookie") {
                *pin = Some(c.to_str().unwrap().split(';').next().unwrap().to_owned());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    round(&mut pins).await;
    std::fs::write(&path, text("blue = 0, green = 100")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(&h1_client(), &proxy.admin_url("/api/routes/web")).await;
        if serde_json::from_slice::<Value>(&body).unwrap()["effective"][1]["share"] == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the switch was not served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let browser = Browser::start().await;
    browser.go(&proxy.admin_url("/")).await;
    let row = |pool: &str| {
        format!("document.querySelector('.card[data-route=\"web\"] [data-sessions] [data-session-pool=\"{pool}\"]')")
    };
    let pinned = format!(
        "const r = {}; return !!r && parseInt(r.querySelector('[data-by-pin]').textContent) >= 50 && r.querySelector('[data-drain]').textContent.startsWith('pins may last');",
        row("blue")
    );
    let mut shown = None;
    for _ in 0..60 {
        round(&mut pins).await;
        if browser.js(&pinned).await == true {
            shown = Some(());
            break;
        }
    }
    assert!(
        shown.is_some(),
        "blue's pins in the panel: {}",
        browser
            .js("const s = document.querySelector('[data-sessions]'); return s ? s.innerText : 'none'")
            .await
    );
    assert_eq!(green.hits(), 0, "the pinned users stayed on blue");
    // The users go quiet: blue's pins lapse (2 s idle + 1 s slack) and the panel says so.
    let drained = format!(
        "const r = {}; return !!r && !!r.querySelector('[data-drained]');",
        row("blue")
    );
    assert!(
        browser.until(&drained, Duration::from_secs(10)).await.is_some(),
        "blue drained: {}",
        browser
            .js("const s = document.querySelector('[data-sessions]'); return s ? s.innerText : 'none'")
            .await
    );
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    drop(browser);
    proxy.shutdown().await;
}
