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
use switchyard::routing::{bucket, RequestView, Snapshot};

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
    switchyard::config::load_str(&t, Path::new("bench.toml"), None).unwrap()
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
    switchyard::config::load_str(&t, Path::new("bench.toml"), None).unwrap()
}

fn decide_all(
    snap: &Snapshot,
    view: &RequestView<'_>,
    now: SystemTime,
) -> (HeaderValue, HeaderValue, HeaderValue) {
    let d = snap.decide(view, None, now).unwrap();
    let pool = snap.pool(d.pool).name_header.clone();
    let bucket = HeaderValue::from_bytes(&bucket::format_point(d.point)).unwrap();
    let flags = HeaderValue::try_from(d.flags_header(snap).unwrap()).unwrap();
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

criterion_group!(benches, bench, bench_constraints);
criterion_main!(benches);
