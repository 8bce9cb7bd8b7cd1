use super::*;

fn sample(name: &str, instance: &str, route: &str, extra: &[(&str, &str)], value: f64) -> Sample {
    let mut labels: BTreeMap<String, String> = [
        ("__name__", name),
        ("instance", instance),
        ("route", route),
        ("job", "sy"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        labels.insert((*k).to_owned(), (*v).to_owned());
    }
    Sample { labels, value }
}

fn snapshot() -> Snapshot {
    let text = "[listen]\nhttp = \"127.0.0.1:0\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.canary]\nendpoints = [\"127.0.0.1:2\"]\n\
                [[routes]]\nname = \"web\"\nsplit = { blue = 90, canary = 10 }\nguard = { baseline = \"blue\" }\n";
    crate::runtime::load_str(text, std::path::Path::new("t.toml"), None).unwrap()
}

/// The fleet_info series that names `instance`'s replica.
fn info(instance: &str, replica: &str) -> Sample {
    let mut s = sample(
        "switchyard_fleet_info",
        instance,
        "",
        &[("replica", replica), ("fleet", "shop")],
        1.0,
    );
    s.labels.remove("route");
    s
}

#[test]
fn the_latest_change_on_the_same_split_wins() {
    let snap = snapshot();
    let fp = fingerprint_label(&fingerprint(&snap, &snap.routes[0]));
    let state = vec![
        info("a:1", "ra"),
        info("b:1", "rb"),
        info("c:1", "rc"),
        sample(
            "switchyard_route_changed_timestamp_seconds",
            "a:1",
            "web",
            &[("fingerprint", &fp), ("origin", "")],
            1000.5,
        ),
        sample(
            "switchyard_pool_tripped",
            "a:1",
            "web",
            &[("pool", "canary")],
            1.0,
        ),
        // b adopted its state from rz, which is named as where it happened.
        sample(
            "switchyard_route_changed_timestamp_seconds",
            "b:1",
            "web",
            &[("fingerprint", &fp), ("origin", "rz")],
            1001.25,
        ),
        sample(
            "switchyard_pool_tripped",
            "b:1",
            "web",
            &[("pool", "canary")],
            1.0,
        ),
        // Later, but another split, and nothing rolled back there: not ours to take.
        sample(
            "switchyard_route_changed_timestamp_seconds",
            "c:1",
            "web",
            &[("fingerprint", "0000beef"), ("origin", "")],
            2000.0,
        ),
        sample(
            "switchyard_pool_tripped",
            "c:1",
            "web",
            &[("pool", "canary")],
            1.0,
        ),
    ];
    let view = View::new(state);
    let adopt = newer_states(&snap, &view, "me");
    assert_eq!(
        adopt,
        [Adopt {
            route: "web".into(),
            fingerprint: fp.clone(),
            changed_ms: 1_001_250,
            tripped: vec![("canary".into(), false)],
            step: None,
            from: "rz".into(),
            rollback_only: false,
        }]
    );
    // This replica's own series are never taken.
    assert!(newer_states(&snap, &view, "rb")[0].from == "ra");
    // Once this replica has it, nothing more to take.
    let mut snap = snap;
    std::sync::Arc::make_mut(&mut snap.routes[0]).runtime.changed_ms = 1_001_250;
    assert!(newer_states(&snap, &view, "me").is_empty());
    // A reset there (nothing tripped, later) is taken too.
    let view = View::new(vec![
        info("a:1", "ra"),
        sample(
            "switchyard_route_changed_timestamp_seconds",
            "a:1",
            "web",
            &[("fingerprint", &fp)],
            1002.0,
        ),
    ]);
    let adopt = newer_states(&snap, &view, "me");
    assert_eq!(adopt.len(), 1);
    assert!(adopt[0].tripped.is_empty());
}

#[test]
fn an_operators_rollback_on_another_split_is_taken_and_nothing_else_from_there() {
    let snap = snapshot();
    let fp = fingerprint_label(&fingerprint(&snap, &snap.routes[0]));
    let other = |tripped: f64, ms: f64| {
        View::new(vec![
            info("c:1", "rc"),
            sample(
                "switchyard_route_changed_timestamp_seconds",
                "c:1",
                "web",
                &[("fingerprint", "0000beef"), ("origin", "")],
                ms,
            ),
            sample(
                "switchyard_pool_tripped",
                "c:1",
                "web",
                &[("pool", "canary")],
                tripped,
            ),
            sample("switchyard_rollout_step_index", "c:1", "web", &[], 1.0),
        ])
    };
    let adopt = newer_states(&snap, &other(2.0, 2000.0), "me");
    assert_eq!(
        adopt,
        [Adopt {
            route: "web".into(),
            fingerprint: fp,
            changed_ms: 2_000_000,
            tripped: vec![("canary".into(), true)],
            step: None,
            from: "rc".into(),
            rollback_only: true,
        }]
    );
    // A guard's trip there, or an older rollback, is not taken.
    assert!(newer_states(&snap, &other(1.0, 2000.0), "me").is_empty());
    let mut taken = snap.clone();
    std::sync::Arc::make_mut(&mut taken.routes[0]).runtime.changed_ms = 2_000_000;
    assert!(newer_states(&taken, &other(2.0, 2000.0), "me").is_empty());
}

#[test]
fn quantiles_are_read_as_prometheus_reads_them() {
    let mut h = vec![(0.1, 50.0), (0.5, 90.0), (f64::INFINITY, 100.0), (0.25, 80.0)];
    // The 50th of 100 is at the top of the first bucket.
    assert_eq!(quantile(0.5, &mut h), Some(0.1));
    // The 85th: halfway through (0.25, 0.5].
    assert!((quantile(0.85, &mut h).unwrap() - 0.375).abs() < 1e-9);
    // In +Inf: the highest finite bound.
    assert_eq!(quantile(0.99, &mut h), Some(0.5));
    assert_eq!(quantile(0.5, &mut [(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
    assert_eq!(quantile(0.5, &mut [(0.1, 3.0)]), None);
    // A count that falls with the bound is taken as the one before.
    assert_eq!(
        quantile(0.5, &mut [(0.1, 4.0), (0.2, 3.0), (f64::INFINITY, 4.0)]),
        Some(0.05)
    );
}

#[test]
fn every_query_reads_this_fleets_replicas_only() {
    let s = FleetSettings {
        name: "shop-prod".into(),
        prometheus: "http://p:9090".into(),
        selector: "namespace=\"shop\"".into(),
        interval: Duration::from_secs(5),
        query_timeout: Duration::from_secs(2),
        token_env: None,
    };
    assert_eq!(
        of_fleet(&s),
        " and on(instance, job) switchyard_fleet_info{fleet=\"shop-prod\", namespace=\"shop\"}"
    );
}

#[test]
fn selectors_go_inside_the_braces() {
    let mut s = FleetSettings {
        name: "t".into(),
        prometheus: "http://p:9090".into(),
        selector: String::new(),
        interval: Duration::from_secs(5),
        query_timeout: Duration::from_secs(2),
        token_env: None,
    };
    assert_eq!(select(&s, ""), "");
    assert_eq!(select(&s, "class=\"5xx\""), "{class=\"5xx\"}");
    s.selector = "job=\"sy\"".into();
    assert_eq!(select(&s, ""), "{job=\"sy\"}");
    assert_eq!(select(&s, "class=\"5xx\""), "{class=\"5xx\", job=\"sy\"}");
}

#[test]
fn a_token_variable_that_is_not_set_is_refused() {
    let mut f = FleetSettings {
        name: "t".into(),
        prometheus: "http://p:9090".into(),
        selector: String::new(),
        interval: Duration::from_secs(5),
        query_timeout: Duration::from_secs(2),
        token_env: None,
    };
    assert_eq!(check_env(None), Ok(()));
    assert_eq!(check_env(Some(&f)), Ok(()));
    f.token_env = Some("SWITCHYARD_TEST_NEVER_SET_7F3A".into());
    assert!(check_env(Some(&f))
        .unwrap_err()
        .contains("SWITCHYARD_TEST_NEVER_SET_7F3A is not set"));
    // PATH is set wherever tests run.
    f.token_env = Some("PATH".into());
    assert_eq!(check_env(Some(&f)), Ok(()));
}
