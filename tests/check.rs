//! `check` is the truth: for generated configs, every one that `check` accepts starts with
//! `run` and serves a request on every route. Most generated configs turn one knob to an edge:
//! durations of a nanosecond and of three hundred billion years, counts of zero, one, the bound
//! and past it, weights past the maximum, clashing listeners, admin APIs without a token.

mod support;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use support::*;

const DURATION_EDGES: &[&str] = &["1ns", "365days", "366days", "1y", "300000000000y", "0s", "-1s"];
const COUNT_EDGES: &[i64] = &[
    -1,
    0,
    1,
    1000,
    1001,
    65_535,
    65_536,
    1_000_000,
    1_000_001,
    1_000_000_000,
    1_000_000_001,
    i64::MAX,
];

fn one_of<T: Clone + std::fmt::Debug + 'static>(from: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(from)
}

fn duration() -> impl Strategy<Value = &'static str> {
    one_of(&["1ms", "250ms", "1s", "30s", "2h"])
}

fn maybe<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    proptest::option::weighted(0.4, s)
}

#[derive(Debug, Clone)]
struct Pool {
    timeout: Option<&'static str>,
    connect_timeout: Option<&'static str>,
    health: Option<(&'static str, i64, i64)>,
    balance: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct Route {
    weights: Vec<Option<i64>>,
    guard: Option<(usize, i64, &'static str, Option<f64>)>,
    rollout: Option<(usize, Vec<i64>, &'static str)>,
}

#[derive(Debug, Clone)]
struct Gen {
    max_connections: Option<i64>,
    max_header_bytes: Option<i64>,
    backlog: Option<i64>,
    listen_timeouts: [Option<&'static str>; 4],
    fast_path: bool,
    https_same_port: bool,
    admin: Option<(&'static str, bool)>,
    pools: Vec<Pool>,
    routes: Vec<Route>,
    flags: Vec<(i64, Vec<i64>)>,
}

fn pool() -> impl Strategy<Value = Pool> {
    (
        maybe(duration()),
        maybe(duration()),
        maybe((duration(), 1..=5i64, 1..=5i64)),
        maybe(one_of(&["round_robin", "least_request"])),
    )
        .prop_map(|(timeout, connect_timeout, health, balance)| Pool {
            timeout,
            connect_timeout,
            health,
            balance,
        })
}

fn route() -> impl Strategy<Value = Route> {
    (
        (
            1..=100i64,
            proptest::collection::vec(proptest::option::weighted(0.7, 0..=100i64), 2),
        ),
        maybe((1..=100i64, duration(), maybe(one_of(&[0.05, 0.5, 1.0])))),
        maybe((proptest::collection::btree_set(1..=100i64, 1..4), duration())),
    )
        .prop_map(|((first, rest), guard, rollout)| {
            let mut weights = vec![Some(first)];
            weights.extend(rest);
            Route {
                weights,
                guard: guard.map(|(min, window, rate)| (0, min, window, rate)),
                // (A rollout needs a guard: the unit tests show that error.)
                rollout: rollout
                    .filter(|_| guard.is_some())
                    .map(|(steps, every)| (1, steps.into_iter().collect(), every)),
            }
        })
}

/// A config `check` should accept.
fn good() -> impl Strategy<Value = Gen> {
    (
        (
            maybe(one_of(&[1i64, 100, 10_000])),
            maybe(one_of(&[8192i64, 65_536])),
            maybe(one_of(&[1i64, 511, 4096])),
            [
                maybe(one_of(&["1s", "30s"])),
                maybe(one_of(&["1s", "30s"])),
                maybe(one_of(&["1s", "30s"])),
                maybe(one_of(&["1s", "30s"])),
            ],
            any::<bool>(),
        ),
        maybe(one_of(&[("127.0.0.1:0", false), ("127.0.0.1:0", true)])),
        proptest::collection::vec(pool(), 2..=3),
        proptest::collection::vec(route(), 1..=3),
        proptest::collection::vec((0..=100i64, proptest::collection::vec(1..=100i64, 0..3)), 0..3),
    )
        .prop_map(
            |(
                (max_connections, max_header_bytes, backlog, listen_timeouts, fast_path),
                admin,
                pools,
                routes,
                flags,
            )| Gen {
                max_connections,
                max_header_bytes,
                backlog,
                listen_timeouts,
                fast_path,
                https_same_port: false,
                admin,
                pools,
                routes,
                flags,
            },
        )
}

/// Knobs an edge can turn.
const KNOBS: usize = 21;

/// Sets knob `knob` of `g` to its `choice`th edge value: at the bounds of what `check` takes,
/// just past them, and far past them.
fn turn(g: &mut Gen, knob: usize, choice: usize) {
    let d = DURATION_EDGES[choice % DURATION_EDGES.len()];
    let n = COUNT_EDGES[choice % COUNT_EDGES.len()];
    let health = |p: &mut Pool| p.health.get_or_insert(("1s", 2, 2)).to_owned();
    let r = &mut g.routes[0];
    match knob {
        0 => g.pools[0].timeout = Some(d),
        1 => g.pools[0].connect_timeout = Some(d),
        2 => g.pools[0].health = Some((d, 2, 2)),
        3 => g.pools[0].health = Some((health(&mut g.pools[0]).0, n, 2)),
        4 => g.pools[0].health = Some((health(&mut g.pools[0]).0, 2, n)),
        5 => g.pools[0].balance = Some(["fastest", "", "ROUND_ROBIN"][choice % 3]),
        6 => g.max_connections = Some(n),
        7 => g.max_header_bytes = Some([0, 8191, 16 << 20, (16 << 20) + 1, i64::MAX][choice % 5]),
        8 => g.backlog = Some(n),
        9 => g.listen_timeouts[choice % 4] = Some(d),
        10 => g.https_same_port = true,
        11 => g.admin = Some([("192.0.2.1:9901", false), ("SAME", true), ("127.0.0.2:0", false)][choice % 3]),
        12 => r.weights[choice % 3] = Some([-1, 0, 1_000_000, 1_000_001, i64::MAX][choice % 5]),
        13 => r.guard.get_or_insert((0, 10, "1s", None)).1 = n,
        14 => r.guard.get_or_insert((0, 10, "1s", None)).2 = d,
        15 => {
            r.guard.get_or_insert((0, 10, "1s", None)).3 =
                Some([0.0, -0.5, 1.5, 1e300, f64::MIN_POSITIVE][choice % 5])
        }
        16 => r.guard.get_or_insert((0, 10, "1s", None)).0 = choice % 3,
        17 => {
            r.guard.get_or_insert((0, 10, "1s", None));
            r.rollout.get_or_insert((1, vec![10], "1s")).2 = d;
        }
        18 => {
            r.guard.get_or_insert((0, 10, "1s", None));
            r.rollout.get_or_insert((1, vec![10], "1s")).1 =
                [vec![0], vec![101], vec![50, 50], vec![], vec![100]][choice % 5].clone();
        }
        19 => g.flags.push((n, Vec::new())),
        _ => g
            .flags
            .push((100, vec![1, [-1, 0, 1_000_000, 1_000_001, i64::MAX][choice % 5]])),
    }
}

/// A good config, or one with a single edge: each edge then meets otherwise good configs.
fn generated() -> impl Strategy<Value = Gen> {
    (good(), proptest::option::weighted(0.6, (0..KNOBS, 0..1000usize))).prop_map(|(mut g, edge)| {
        if let Some((knob, choice)) = edge {
            turn(&mut g, knob, choice);
        }
        g
    })
}

/// The config text, with the pools' endpoints at `upstream` and `http` the listener (port 0
/// unless a clash is wanted).
fn text(g: &Gen, upstream: SocketAddr, http: SocketAddr) -> String {
    use std::fmt::Write;
    let mut s = format!("[listen]\nhttp = \"{http}\"\nfast_path = {}\n", g.fast_path);
    if g.https_same_port {
        // (No certificate either: check must say both.)
        let _ = writeln!(s, "https = \"{http}\"");
    }
    for (k, v) in [
        ("max_connections", g.max_connections),
        ("max_header_bytes", g.max_header_bytes),
        ("backlog", g.backlog),
    ] {
        if let Some(v) = v {
            let _ = writeln!(s, "{k} = {v}");
        }
    }
    let keys = [
        "header_read_timeout",
        "drain_timeout",
        "client_body_timeout",
        "send_timeout",
    ];
    for (k, v) in keys.iter().zip(g.listen_timeouts) {
        if let Some(v) = v {
            let _ = writeln!(s, "{k} = \"{v}\"");
        }
    }
    s.push_str("[log]\naccess = false\n");
    if let Some((listen, token)) = g.admin {
        let listen = if listen == "SAME" {
            http.to_string()
        } else {
            listen.to_owned()
        };
        let _ = writeln!(s, "[admin]\nlisten = \"{listen}\"");
        if token {
            s.push_str("token_env = \"SWITCHYARD_PROPTEST_TOKEN\"\n");
        }
    }
    for (i, p) in g.pools.iter().enumerate() {
        let _ = writeln!(s, "[pools.p{i}]\nendpoints = [\"{upstream}\"]");
        for (k, v) in [
            ("timeout", p.timeout),
            ("connect_timeout", p.connect_timeout),
            ("balance", p.balance),
        ] {
            if let Some(v) = v {
                let _ = writeln!(s, "{k} = \"{v}\"");
            }
        }
        if let Some((interval, fall, rise)) = p.health {
            let _ = writeln!(
                s,
                "health = {{ path = \"/healthz\", interval = \"{interval}\", fall = {fall}, rise = {rise} }}"
            );
        }
    }
    for (i, r) in g.routes.iter().enumerate() {
        let weights: Vec<String> = r
            .weights
            .iter()
            .enumerate()
            .filter(|(p, _)| *p < g.pools.len())
            .filter_map(|(p, w)| w.map(|w| format!("p{p} = {w}")))
            .collect();
        let _ = writeln!(
            s,
            "[[routes]]\nname = \"r{i}\"\npath_prefix = \"/r{i}\"\nsplit = {{ {} }}",
            weights.join(", ")
        );
        if let Some((baseline, min, window, rate)) = r.guard {
            let rate = rate.map_or(String::new(), |r| format!(", max_error_rate = {r:?}"));
            let _ = writeln!(
                s,
                "guard = {{ baseline = \"p{baseline}\", min_requests = {min}, window = \"{window}\"{rate} }}"
            );
        }
        if let Some((pool, steps, every)) = &r.rollout {
            let steps: Vec<String> = steps.iter().map(i64::to_string).collect();
            let _ = writeln!(
                s,
                "rollout = {{ pool = \"p{pool}\", steps = [{}], every = \"{every}\" }}",
                steps.join(", ")
            );
        }
    }
    for (i, (percent, variants)) in g.flags.iter().enumerate() {
        let _ = writeln!(s, "[[flags]]\nname = \"f{i}\"\npercent = {percent}");
        if !variants.is_empty() {
            let v: Vec<String> = variants
                .iter()
                .enumerate()
                .map(|(j, w)| format!("v{j} = {w}"))
                .collect();
            let _ = writeln!(s, "variants = {{ {} }}", v.join(", "));
        }
    }
    s
}

struct World {
    rt: tokio::runtime::Runtime,
    upstream: SocketAddr,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        std::env::set_var("SWITCHYARD_PROPTEST_TOKEN", "t0ken");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let upstream = rt.block_on(async {
            let u = Upstream::start("up").await;
            let addr = u.addr;
            std::mem::forget(u);
            addr
        });
        World { rt, upstream }
    })
}

/// The shortest timeout a request to route `i` meets; below a second the upstream on loopback
/// may lose the race, so a 504 is a fair answer.
fn tight(g: &Gen, route: &Route) -> bool {
    let short = |d: Option<&str>| d.is_some_and(|d| matches!(d, "1ns" | "1ms" | "250ms"));
    route.weights.iter().enumerate().any(|(p, _)| {
        g.pools
            .get(p)
            .is_some_and(|p| short(p.timeout) || short(p.connect_timeout))
    })
}

/// One generated config: `Some(true)` if `check` accepted it (and run served it).
fn try_one(g: &Gen) -> bool {
    let w = world();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let clash = taken.local_addr().unwrap();
    let wants_clash = g.https_same_port || g.admin.is_some_and(|(l, _)| l == "SAME");
    let http = if wants_clash {
        clash
    } else {
        "127.0.0.1:0".parse().unwrap()
    };
    let src = text(g, w.upstream, http);
    if switchyard::runtime::load_str(&src, std::path::Path::new("gen.toml"), None).is_err() {
        return false;
    }
    assert!(!wants_clash, "check passed a clash:\n{src}");
    drop(taken);
    w.rt.block_on(async {
        let app = switchyard::App::start(switchyard::Source::Text {
            text: src.clone(),
            name: "gen.toml".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("check passed it, run refused it: {e}\n{src}"));
        let addr = app.http_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        for (i, r) in g.routes.iter().enumerate() {
            let req = format!("GET /r{i}/x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
            let (answer, _) = raw(addr, req.as_bytes(), Duration::from_secs(5)).await;
            let status = answer.get(9..12).unwrap_or("");
            let fine = status == "200" || (tight(g, r) && matches!(status, "502" | "504"));
            assert!(fine, "route r{i} answered {answer:?}\n{src}");
        }
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(30), done)
            .await
            .expect("drained")
            .unwrap()
            .unwrap();
    });
    true
}

#[test]
fn what_check_accepts_run_serves() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let cases = 600;
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    // Every edge value of every knob, each on a generated config of its own.
    let (mut edged, mut edged_ok) = (0, 0);
    for knob in 0..KNOBS {
        for choice in 0..COUNT_EDGES.len() {
            let mut g = good().new_tree(&mut runner).unwrap().current();
            turn(&mut g, knob, choice);
            edged += 1;
            edged_ok += u32::from(try_one(&g));
        }
    }
    // Then configs with an edge or none, shrunk to the smallest when one fails.
    let accepted = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&generated(), |g| {
            if try_one(&g) {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    // Not a vacuous property: a fair share of the configs pass check and are served.
    let accepted = accepted.into_inner();
    assert!(
        accepted >= cases / 4,
        "only {accepted} of {cases} configs passed check"
    );
    assert!(
        edged_ok >= edged / 5,
        "only {edged_ok} of {edged} edges passed check"
    );
    eprintln!(
        "{edged_ok} of {edged} configs with an edge, {accepted} of {cases} generated ones passed check and were served"
    );
}
