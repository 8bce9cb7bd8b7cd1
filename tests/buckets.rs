//! Properties of sticky decisions, over the public API and real config text: determinism,
//! shares, weight scaling, monotonic canary growth, monotonic flag rollout.

use std::path::Path;
use std::time::SystemTime;

use http::HeaderMap;
use proptest::prelude::*;
use switchyard::routing::{bucket, RequestView, Split};
use switchyard::runtime::Snapshot;

fn snapshot(split: &[(&str, u64)], flags: &str) -> Snapshot {
    let mut text = String::from("[listen]\nhttp = \"127.0.0.1:0\"\n");
    for (i, (p, _)) in split.iter().enumerate() {
        text.push_str(&format!(
            "[pools.{p}]\nendpoints = [\"127.0.0.1:{}\"]\n",
            1000 + i
        ));
    }
    let weights: Vec<String> = split.iter().map(|(p, w)| format!("{p} = {w}")).collect();
    text.push_str(&format!(
        "[[routes]]\nname = \"web\"\nsplit = {{ {} }}\n{flags}",
        weights.join(", ")
    ));
    switchyard::runtime::load_str(&text, Path::new("t.toml"), None).unwrap()
}

/// The pool and flags header the proxy's decision gives `key`.
fn decide(snap: &Snapshot, key: &str) -> (String, Option<String>) {
    let headers = HeaderMap::new();
    let view = RequestView {
        host: "h",
        path: "/",
        query: None,
        headers: &headers,
        method: &http::Method::GET,
        peer: None,
    };
    let d = snap.decide(&view, Some(key), SystemTime::now()).unwrap();
    (
        snap.pools[d.pool].name.to_string(),
        d.flags_header(snap, &mut false),
    )
}

const POOLS: [&str; 4] = ["a", "b", "c", "d"];

fn weights() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(0u64..1000, 2..=4).prop_filter("positive total", |w| w.iter().sum::<u64>() > 0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_same_key_always_gets_the_same_pool_and_flags(key in ".{0,40}", w in weights(), pct in 0u32..=100) {
        let split: Vec<(&str, u64)> = POOLS.iter().copied().zip(w).collect();
        let flags = format!("[[flags]]\nname = \"f\"\npercent = {pct}\n[[flags]]\nname = \"ab\"\nvariants = {{ x = 1, y = 2 }}\n");
        let (s1, s2) = (snapshot(&split, &flags), snapshot(&split, &flags));
        let first = decide(&s1, &key);
        prop_assert_eq!(&first, &decide(&s1, &key));
        prop_assert_eq!(&first, &decide(&s2, &key), "another snapshot of the same config agrees");
    }

    #[test]
    fn scaling_all_weights_changes_nothing(w in weights(), k in 1u64..50, key in "[a-z0-9-]{1,20}") {
        let ids: Vec<(usize, u64)> = w.iter().enumerate().map(|(i, &w)| (i, w)).collect();
        let scaled: Vec<(usize, u64)> = ids.iter().map(|&(i, w)| (i, w * k)).collect();
        let p = bucket::pool_point("switchyard", &key);
        prop_assert_eq!(Split::new(&ids).pick(p), Split::new(&scaled).pick(p));
    }

    #[test]
    fn with_two_pools_raising_one_never_moves_a_user_out_of_it(
        a in 0u64..1000, b in 1u64..1000, raise in 1u64..1000, keys in prop::collection::vec("[a-z0-9]{1,16}", 200),
    ) {
        // Raise the second pool (the canary): users only move into it.
        let before = Split::new(&[(0, a), (1, b)]);
        let after = Split::new(&[(0, a), (1, b + raise)]);
        for key in &keys {
            let p = bucket::pool_point("switchyard", key);
            if before.pick(p) == 1 {
                prop_assert_eq!(after.pick(p), 1);
            }
        }
        // And raising the first pool only moves users into the first.
        let after = Split::new(&[(0, a + raise), (1, b)]);
        for key in &keys {
            let p = bucket::pool_point("switchyard", key);
            if before.pick(p) == 0 {
                prop_assert_eq!(after.pick(p), 0);
            }
        }
    }

    #[test]
    fn raising_a_flag_percentage_never_turns_it_off(p in 0u32..100, raise in 1u32..=100, keys in prop::collection::vec("[a-z0-9]{1,16}", 200)) {
        let q = (p + raise).min(100);
        let low = snapshot(&[("a", 1)], &format!("[[flags]]\nname = \"f\"\npercent = {p}\n"));
        let high = snapshot(&[("a", 1)], &format!("[[flags]]\nname = \"f\"\npercent = {q}\n"));
        for key in &keys {
            if decide(&low, key).1.as_deref() == Some("f=on") {
                let after = decide(&high, key).1;
                prop_assert_eq!(after.as_deref(), Some("f=on"));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn shares_over_100k_keys_are_within_a_point_of_the_weights(w in weights()) {
        let ids: Vec<(usize, u64)> = w.iter().enumerate().map(|(i, &w)| (i, w)).collect();
        let split = Split::new(&ids);
        let mut counts = vec![0usize; w.len()];
        for i in 0..100_000 {
            counts[split.pick(bucket::pool_point("switchyard", &format!("user-{i}")))] += 1;
        }
        let total: u64 = w.iter().sum();
        for (i, &c) in counts.iter().enumerate() {
            let want = w[i] as f64 / total as f64;
            let got = c as f64 / 100_000.0;
            prop_assert!((got - want).abs() <= 0.01, "pool {} got {:.4}, weight share {:.4}", i, got, want);
        }
    }
}

#[test]
fn flag_shares_match_the_percentage() {
    let snap = snapshot(&[("a", 1)], "[[flags]]\nname = \"f\"\npercent = 30\n");
    let on = (0..100_000)
        .filter(|i| decide(&snap, &format!("user-{i}")).1.as_deref() == Some("f=on"))
        .count();
    assert!((on as f64 / 100_000.0 - 0.30).abs() <= 0.01, "{on}");
}
