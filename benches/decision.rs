//! The whole per-request decision — route match, user key, bucket, split, flags and the
//! decision header values — on the peer job's shape (1 route, 1 flag), on configs of 10 and
//! 1,000 routes with 10 flags, and with 10 flags of two constraints each on request headers
//! (Unleash's model: flexibleRollout, IN and SEMVER_GT, three with variants and payloads).
//! Inputs are built outside the timed loop.

use std::hint::black_box;
use std::path::Path;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use switchyard::routing::{bucket, RequestView};
use switchyard::runtime::Snapshot;

fn config(routes: usize, flags: usize) -> Snapshot {
    let mut t = String::from(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[identity]\nfrom = [\"header:x-user-id\", \"cookie:session_user\"]\n\
         [pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.canary]\nendpoints = [\"127.0.0.1:2\"]\n",
    );
    for i in 0..routes {
        // Hosts, wildcards and path prefixes, as a many-service gateway has them.
        let host = if i % 10 == 9 {
            format!("*.zone{i}.example.com")
        } else {
            format!("svc{i}.example.com")
        };
        let prefix = ["/", "/api", "/api/v2", "/static"][i % 4];
        t.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nhost = \"{host}\"\npath_prefix = \"{prefix}\"\nsplit = {{ blue = 90, canary = 10 }}\n"
        ));
    }
    for f in 0..flags {
        match f % 3 {
            0 => t.push_str(&format!("[[flags]]\nname = \"flag{f}\"\npercent = {}\n", 10 * f)),
            1 => t.push_str(&format!(
                "[[flags]]\nname = \"flag{f}\"\npercent = 50\nvariants = {{ control = 1, treatment = 1 }}\n"
            )),
            _ => t.push_str(&format!(
                "[[flags]]\nname = \"flag{f}\"\npercent = 5\nusers = [\"alice\", \"qa-1\", \"qa-2\"]\n"
            )),
        }
    }
    switchyard::runtime::load_str(&t, Path::new("bench.toml"), None).unwrap()
}

/// 10 flags, each a 50% flexibleRollout with two constraints (country IN, app version
/// SEMVER_GT) read from headers; every third has variants with payloads.
fn constrained() -> Snapshot {
    let mut t = String::from(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[context]\ncountry = \"header:x-country\"\napp_version = \"header:x-app-version\"\n\
         [pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.canary]\nendpoints = [\"127.0.0.1:2\"]\n\
         [[routes]]\nname = \"web\"\nsplit = { blue = 90, canary = 10 }\n",
    );
    for f in 0..10 {
        t.push_str(&format!(
            "[[flags]]\nname = \"flag{f}\"\nstrategies = [{{ name = \"flexibleRollout\", parameters = {{ rollout = \"50\" }}, constraints = [\
             {{ contextName = \"country\", operator = \"IN\", values = [\"se\", \"no\", \"dk\"] }}, \
             {{ contextName = \"app_version\", operator = \"SEMVER_GT\", value = \"1.2.0\" }}] }}]\n"
        ));
        if f % 3 == 0 {
            t.push_str("variants = [{ name = \"a\", weight = 500, payload = { type = \"string\", value = \"x\" } }, { name = \"b\", weight = 500 }]\n");
        }
    }
    switchyard::runtime::load_str(&t, Path::new("bench.toml"), None).unwrap()
}

fn decide_all(
    snap: &Snapshot,
    view: &RequestView<'_>,
    now: SystemTime,
) -> (HeaderValue, HeaderValue, HeaderValue) {
    let d = snap.decide(view, None, now).unwrap();
    let pool = snap.pool(d.pool).name_header.clone();
    let bucket = HeaderValue::from_bytes(&bucket::format_point(d.point)).unwrap();
    let flags = HeaderValue::try_from(d.flags_header(snap, &mut false).unwrap()).unwrap();
    (pool, bucket, flags)
}

fn bench(c: &mut Criterion) {
    let now = SystemTime::now();
    // (routes, flags): the peer job's shape (1, 1), then 10 and 1,000 routes with 10 flags.
    for (routes, flags) in [(1usize, 1usize), (10, 10), (1000, 10)] {
        let snap = config(routes, flags);
        let mut headers = HeaderMap::new();
        headers.insert("x-user-id", HeaderValue::from_static("user-123456"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
        let host = format!("svc{}.example.com", routes / 2 + usize::from(routes > 1));
        let view = RequestView {
            host: &host,
            path: "/api/v2/cart",
            query: None,
            headers: &headers,
            method: &http::Method::GET,
            peer: None,
        };
        assert!(snap.decide(&view, None, now).is_some());
        c.bench_function(&format!("decision/{routes}_routes_{flags}_flags"), |b| {
            b.iter(|| decide_all(black_box(&snap), black_box(&view), now))
        });
    }
}

fn bench_constraints(c: &mut Criterion) {
    let now = SystemTime::now();
    let snap = constrained();
    let mut headers = HeaderMap::new();
    headers.insert("x-user-id", HeaderValue::from_static("user-123456"));
    headers.insert("x-country", HeaderValue::from_static("se"));
    headers.insert("x-app-version", HeaderValue::from_static("1.3.0"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    let view = RequestView {
        host: "shop.example.com",
        path: "/api/v2/cart",
        query: None,
        headers: &headers,
        method: &http::Method::GET,
        peer: None,
    };
    let d = snap.decide(&view, None, now).unwrap();
    assert_eq!(d.flags.len(), 10);
    c.bench_function("decision/10_flags_2_constraints", |b| {
        b.iter(|| decide_all(black_box(&snap), black_box(&view), now))
    });
}

/// The worst REGEX constraint found within the bounds (of several families of patterns that
/// defeat the lazy DFA, the largest program that compiles, on a header of the longest value
/// read, which it does not match): what one
/// hostile request can cost per such constraint. Before the bounds, a 60 KB header took 9.8 s.
fn bench_regex_worst(c: &mut Criterion) {
    let now = SystemTime::now();
    let mut n = 200;
    let snap = loop {
        let t = format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[context]\nua = \"header:user-agent\"\n\
             [pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"web\"\nsplit = {{ blue = 100 }}\n\
             [[flags]]\nname = \"f\"\nstrategies = [{{ name = \"default\", constraints = [\
             {{ contextName = \"ua\", operator = \"REGEX\", value = '(?:[a-z0-9]*1[a-z0-9]{{{n}}}){{3}}x' }}] }}]\n"
        );
        match switchyard::runtime::load_str(&t, Path::new("bench.toml"), None) {
            Ok(s) => break s,
            Err(_) => n -= 1,
        }
    };
    // Random letters and digits, never the final `x`.
    let mut rng = fastrand::Rng::with_seed(7);
    let ua: String = (0..switchyard::routing::unleash::MAX_REGEX_TEXT)
        .map(|_| b"0123456789abcdefghijklmnopqrstuvwyz"[rng.usize(..35)] as char)
        .collect();
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", HeaderValue::try_from(ua).unwrap());
    let view = RequestView {
        host: "shop.example.com",
        path: "/",
        query: None,
        headers: &headers,
        method: &http::Method::GET,
        peer: None,
    };
    c.bench_function(&format!("decision/regex_worst_{n}"), |b| {
        b.iter(|| decide_all(black_box(&snap), black_box(&view), now))
    });
}

/// `[routes.session]` on the peer job's shape (1 route, 1 flag): the same decision without a
/// session, with one and a returning user's valid pin (an HMAC-SHA256 check), and with one and
/// a new user (a pin signed and its `Set-Cookie` made). The pin's cookie sits among others, as
/// a browser sends them.
fn bench_sessions(c: &mut Criterion) {
    std::env::set_var("SY_BENCH_SESSION_SECRET", "a-bench-secret-of-32-bytes-long!");
    let now = SystemTime::now();
    let text = |session: &str| {
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[identity]\nfrom = [\"header:x-user-id\"]\n\
             [pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.canary]\nendpoints = [\"127.0.0.1:2\"]\n\
             [[routes]]\nname = \"web\"\nsplit = {{ blue = 90, canary = 10 }}\n{session}\
             [[flags]]\nname = \"flag0\"\npercent = 50\n"
        )
    };
    let plain = switchyard::runtime::load_str(&text(""), Path::new("bench.toml"), None).unwrap();
    let sessions = switchyard::runtime::load_str(
        &text("[routes.session]\nsecret_env = \"SY_BENCH_SESSION_SECRET\"\n"),
        Path::new("bench.toml"),
        None,
    )
    .unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"a-bench-secret-of-32-bytes-long!");
    let now_s = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let pin = switchyard::routing::session::Session::sign(&key, "web", "blue", now_s, now_s);
    let with_cookies = |pin: Option<&str>| {
        let mut headers = HeaderMap::new();
        headers.insert("x-user-id", HeaderValue::from_static("user-123456"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
        let mut cookie = String::from("_ga=GA1.2.1234567890.1234567890; theme=dark");
        if let Some(p) = pin {
            cookie.push_str("; sy_ver=");
            cookie.push_str(p);
        }
        cookie.push_str("; lang=en");
        headers.insert("cookie", HeaderValue::try_from(cookie).unwrap());
        headers
    };
    let returning = with_cookies(Some(&pin));
    // The parts a session adds: finding the pin among the cookies (the scan, and the `cookie`
    // crate's parse it replaced), and reading the pin (its HMAC-SHA256, and the per-thread
    // table of values already verified).
    c.bench_function("session/cookie_scan", |b| {
        b.iter(|| switchyard::routing::identity::cookie_bytes(black_box(&returning), b"sy_ver"))
    });
    c.bench_function("session/cookie_crate_parse", |b| {
        b.iter(|| {
            returning
                .get_all("cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(cookie::Cookie::split_parse)
                .filter_map(Result::ok)
                .find(|c| c.name() == black_box("sy_ver"))
                .and_then(|c| c.value_raw())
        })
    });
    c.bench_function("session/pin_verify", |b| {
        b.iter(|| switchyard::routing::session::Session::verify(&key, "web", black_box(&pin)))
    });
    let session = sessions.routes[0].session.clone().unwrap();
    c.bench_function("session/pin_verify_cached", |b| {
        b.iter(|| session.verify_cached("web", black_box(pin.as_bytes())))
    });
    let new = with_cookies(None);
    for (name, snap, headers, pinned) in [
        ("no_session", &plain, &returning, false),
        ("session_valid_pin", &sessions, &returning, true),
        ("session_new_pin", &sessions, &new, false),
    ] {
        let view = RequestView {
            host: "shop.example.com",
            path: "/",
            query: None,
            headers,
            method: &http::Method::GET,
            peer: None,
        };
        let d = snap.decide(&view, None, now).unwrap();
        assert_eq!(d.why == switchyard::routing::Why::Pin, pinned, "{name}");
        assert_eq!(
            d.pin_cookie(snap, now).is_some(),
            name == "session_new_pin",
            "{name}"
        );
        c.bench_function(&format!("decision/{name}"), |b| {
            b.iter(|| {
                let d = black_box(snap).decide(black_box(&view), None, now).unwrap();
                let pin = d.pin_cookie(snap, now);
                let pool = snap.pool(d.pool).name_header.clone();
                let flags = HeaderValue::try_from(d.flags_header(snap, &mut false).unwrap()).unwrap();
                (pool, flags, pin)
            })
        });
    }
}

criterion_group!(
    benches,
    bench,
    bench_constraints,
    bench_regex_worst,
    bench_sessions
);
criterion_main!(benches);
