//! Unleash's client specification (`@unleash/client-specification` from npm, pinned in
//! `.ci/run`), every file, through `flags_from`: each file's `state` is written to disk and
//! loaded by a config's `flags_from`, exactly as `switchyard run` loads it, and each `tests`
//! and `variantTests` case is evaluated by the code the proxy runs (`Flag::evaluate` on the
//! snapshot's flags). Reports agreed / disagreed /
//! skipped per file; every case must agree.
//!
//! Ignored by plain `cargo test` (it needs the package); `.ci/run` downloads it and runs it.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value as Json;
use switchyard::routing::flags::Value;
use switchyard::routing::unleash::{Context, Field, Schema};
use switchyard::runtime::Snapshot;

fn spec_dir() -> PathBuf {
    let d = std::env::var_os("UNLEASH_SPEC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ci-npm/6.1.0/package/specifications")
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
        // The file's state as a feature file, loaded by a config's flags_from.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("features.json"), doc["state"].to_string()).unwrap();
        let config = tmp.path().join("switchyard.toml");
        std::fs::write(
            &config,
            "flags_from = \"features.json\"\n[listen]\nhttp = \"127.0.0.1:0\"\n[pools.app]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"web\"\nsplit = { app = 1 }\n",
        )
        .unwrap();
        let snap: Snapshot =
            switchyard::runtime::load(&config, None).unwrap_or_else(|e| panic!("{file}: {e}"));
        let schema = &snap.context.schema;
        let flags = &snap.flags[..];
        let find = |n: &str| flags.iter().find(|f| &*f.name == n);
        let (mut ok, mut bad) = (0, 0);
        for case in doc["tests"].as_array().into_iter().flatten() {
            let ctx = context(&case["context"], schema);
            let name = case["toggleName"].as_str().unwrap();
            let got = find(name).is_some_and(|f| f.evaluate(flags, &ctx).0 != Value::Off);
            if Json::Bool(got) == case["expectedResult"] {
                ok += 1;
            } else {
                bad += 1;
                failures.push(format!("{file}: {}: got {got}", case["description"]));
            }
        }
        for case in doc["variantTests"].as_array().into_iter().flatten() {
            let ctx = context(&case["context"], schema);
            let name = case["toggleName"].as_str().unwrap();
            let got = match find(name) {
                Some(f) => {
                    let (value, _) = f.evaluate(flags, &ctx);
                    let mut v = serde_json::json!({
                        "name": if matches!(value, Value::Variant(_)) { f.token(value) } else { "disabled" },
                        "enabled": matches!(value, Value::Variant(_)),
                        "feature_enabled": value != Value::Off,
                    });
                    if let Some(p) = f.payload(value) {
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
