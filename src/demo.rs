//! `switchyard demo`: three built-in upstreams (blue, green, canary) on loopback, each
//! answering with its name and echoing the `x-switchyard-*` headers it received, and the proxy
//! in front of them on a built-in config. Needs nothing but the binary.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;

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
/// `x-switchyard-*` headers it received, one per line. Returns its address.
pub async fn start_upstream(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(answer(name, &req))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn answer(name: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut body = format!("{name}\n");
    for (k, v) in req.headers() {
        if k.as_str().starts_with(INTERNAL_PREFIX) {
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
pub fn config(listen: SocketAddr, ports: [u16; 3]) -> String {
    format!(
        r#"# The built-in demo config (switchyard demo).
[listen]
http = "{listen}"

[admin]
listen = "127.0.0.1:0"

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

/// The lines `switchyard demo` prints once it is up.
pub fn banner(proxy: SocketAddr, admin: Option<SocketAddr>, upstreams: &[(&str, SocketAddr)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "switchyard demo is running.\n");
    let _ = writeln!(s, "  proxy      http://{proxy}/");
    if let Some(a) = admin {
        let _ = writeln!(
            s,
            "  admin      http://{a}/api/routes   (metrics: http://{a}/metrics)"
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
    let admin_lines = admin.map(|a| {
        [
            (
                format!("switchyard status --admin http://{a}"),
                "routes and weights, live",
            ),
            (
                format!("curl -s http://{a}/metrics | grep switchyard_requests_total"),
                "Prometheus metrics",
            ),
        ]
    });
    let lines = lines.into_iter().chain(admin_lines.into_iter().flatten());
    let _ = writeln!(s, "\nTry:");
    for (cmd, what) in lines {
        let _ = writeln!(s, "  # {what}\n  {cmd}");
    }
    let _ = writeln!(s, "\nPress Ctrl-C to stop.");
    s
}
