//! `switchyard demo`: three built-in upstreams (blue, green, canary) on loopback, each
//! answering with its name and echoing the `x-switchyard-*` headers it received, and the proxy
//! in front of them on a built-in config. Needs nothing but the binary.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::proxy::headers::INTERNAL_PREFIX;

/// The demo's pools, in the order they are started.
pub const POOLS: [&str; 3] = ["blue", "green", "canary"];

/// Starts an upstream on `127.0.0.1:0` that answers every request with `name` and the
/// `x-switchyard-*` headers it received, one per line (not `x-switchyard-mirror`, which marks a
/// mirrored copy: a shadow of the same name answers a copy as the primary answers the request). `POST /_demo/fail?percent=N` makes it
/// answer `500` to N% of the requests that follow (0 heals it). Returns its address.
pub async fn start_upstream(name: &'static str) -> std::io::Result<SocketAddr> {
    start_upstream_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// [`start_upstream`] on `addr` (`switchyard echo`).
pub async fn start_upstream_on(name: &'static str, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let failing = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let failing = failing.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let failing = failing.clone();
                    async move { Ok::<_, Infallible>(answer(name, &req, &failing)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn answer(name: &str, req: &Request<Incoming>, failing: &AtomicU32) -> Response<Full<Bytes>> {
    if req.uri().path() == "/_demo/fail" && req.method() == http::Method::POST {
        let percent = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "percent")
            .and_then(|(_, v)| v.parse::<u32>().ok())
            .unwrap_or(100)
            .min(100);
        failing.store(percent, Ordering::Relaxed);
        return Response::new(Full::new(Bytes::from(format!(
            "{name} now fails {percent}% of requests\n"
        ))));
    }
    let percent = failing.load(Ordering::Relaxed);
    if percent > 0 && fastrand::u32(0..100) < percent {
        return Response::builder()
            .status(500)
            .header("x-served-by", name)
            .body(Full::new(Bytes::from(format!(
                "{name} failed (POST /_demo/fail?percent=0 heals it)\n"
            ))))
            .expect("static response parts are valid");
    }
    let mut body = format!("{name}\n");
    for (k, v) in req.headers() {
        if k.as_str().starts_with(INTERNAL_PREFIX) && k.as_str() != "x-switchyard-mirror" {
            let _ = writeln!(body, "{k}: {}", v.to_str().unwrap_or("<binary>"));
        }
    }
    Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-served-by", name)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// The demo config, pointing at upstreams on `ports` (blue, green, canary).
pub fn config(listen: SocketAddr, admin: SocketAddr, ports: [u16; 3]) -> String {
    format!(
        r#"# The built-in demo config (switchyard demo).
[listen]
http = "{listen}"

[admin]
listen = "{admin}"

# The demo sends its own traffic: one log line per request would bury the lines above.
[log]
access = false

[pools.blue]
endpoints = ["127.0.0.1:{b}"]

[pools.green]
endpoints = ["127.0.0.1:{g}"]

[pools.canary]
endpoints = ["127.0.0.1:{c}"]

[identity]
from = ["header:x-user-id", "cookie:session_user", "query:uid"]
cookie = "sy_uid"                  # users without an id get one in this cookie

# 90% of users on blue, 10% on the canary, sticky per user. Testers can force a pool with
# the header x-switchyard-pool or the cookie sy_pool.
[[routes]]
name = "web"
split = {{ blue = 90, canary = 10 }}
override = {{ header = "x-switchyard-pool", cookie = "sy_pool" }}

# If the canary fails more than 5% of its requests (over at least 20 in 30s), its users go
# back to blue by themselves: see `switchyard status`.
[routes.guard]
baseline = "blue"
max_error_rate = 0.05
min_requests = 20
window = "30s"

# /beta is a blue/green switch: all of it on green.
[[routes]]
name = "beta"
path_prefix = "/beta"
split = {{ green = 100 }}

# An A/B test on half the users, split evenly between two variants.
[[flags]]
name = "checkout_ab"
percent = 50
variants = {{ control = 50, treatment = 50 }}

# On for a quarter of users, and always for alice.
[[flags]]
name = "dark_mode"
percent = 25
users = ["alice"]
"#,
        b = ports[0],
        g = ports[1],
        c = ports[2],
    )
}

/// The lines `switchyard demo` prints once it is up. `exe` is how to run this binary from
/// the current directory (under `cargo run` it is not on the PATH).
pub fn banner(
    proxy: SocketAddr,
    admin: Option<SocketAddr>,
    upstreams: &[(&str, SocketAddr)],
    exe: &str,
    traffic: u32,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "switchyard demo is running.\n");
    if let Some(a) = admin {
        let _ = writeln!(s, "  dashboard  http://{a}/   <- open this in a browser");
    }
    let _ = writeln!(s, "  proxy      http://{proxy}/");
    if let Some(a) = admin {
        let _ = writeln!(
            s,
            "  admin API  http://{a}/api/routes   (metrics: http://{a}/metrics)"
        );
    }
    if traffic > 0 {
        let _ = writeln!(
            s,
            "  traffic    {traffic} requests/s from 500 simulated users (--traffic 0 turns it off)"
        );
    }
    for (name, addr) in upstreams {
        let _ = writeln!(s, "  {name:<10} http://{addr}/   (upstream: answers with its name and the x-switchyard-* headers it got)");
    }
    let p = proxy;
    let lines = [
        (format!("curl -s -H 'x-user-id: alice' http://{p}/"), "sticky: alice always gets the same pool and flags"),
        (
            format!("for u in $(seq 1 100); do curl -s -H \"x-user-id: user-$u\" http://{p}/ | head -1; done | sort | uniq -c"),
            "about 90 blue, 10 canary",
        ),
        (format!("curl -si http://{p}/ | grep -i set-cookie"), "no id: an anonymous one, in a cookie"),
        (format!("curl -s -H 'x-switchyard-pool: canary' http://{p}/"), "a tester forces the canary"),
        (format!("curl -s http://{p}/beta"), "blue/green switch: all on green"),
        (format!("curl -s --http2-prior-knowledge -H 'x-user-id: bob' http://{p}/"), "the same over h2c"),
    ];
    let canary = upstreams.iter().find(|(n, _)| *n == "canary").map(|(_, a)| *a);
    let admin_lines = admin.map(|a| {
        [
            (
                format!("{exe} status --admin http://{a}"),
                "routes and weights, live",
            ),
            (
                canary.map_or_else(String::new, |c| format!("curl -s -X POST 'http://{c}/_demo/fail?percent=50'")),
                "make the canary fail half its requests: its guard trips within seconds (watch the dashboard); then reset the route there, or with:",
            ),
            (
                format!("curl -s -X POST 'http://{}/_demo/fail?percent=0'; {exe} reset web --admin http://{a}", canary.unwrap_or(a)),
                "heal the canary and give its users back",
            ),
            (
                format!("curl -s http://{a}/metrics | grep switchyard_requests_total"),
                "Prometheus metrics",
            ),
        ]
    });
    let lines = lines.into_iter().chain(admin_lines.into_iter().flatten());
    let _ = writeln!(s, "\nTry:");
    for (cmd, what) in lines.filter(|(cmd, _)| !cmd.is_empty()) {
        let _ = writeln!(s, "  # {what}\n  {cmd}");
    }
    let _ = writeln!(s, "\nPress Ctrl-C to stop.");
    s
}

/// Sends `per_second` requests a second through the proxy at `proxy`, from 500 users (the
/// header `x-user-id`), to `/` and `/beta`: the dashboard has something to show. Runs until
/// the runtime ends; a failed request is simply counted by the proxy.
pub async fn traffic(proxy: SocketAddr, per_second: u32) {
    if per_second == 0 {
        return;
    }
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let path = if fastrand::u8(0..10) == 0 { "/beta" } else { "/" };
        let Ok(req) = Request::get(format!("http://{proxy}{path}"))
            .header("x-user-id", format!("user-{}", fastrand::u32(1..=500)))
            .body(http_body_util::Empty::new())
        else {
            continue;
        };
        let call = client.request(req);
        tokio::spawn(async move {
            if let Ok(r) = call.await {
                let _ = http_body_util::BodyExt::collect(r.into_body()).await;
            }
        });
    }
}
