use std::path::Path;

use crate::config::{load_str, LoadError};

const BASE: &str = "[listen]\nhttp = \"127.0.0.1:0\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.canary]\nendpoints = [\"127.0.0.1:2\"]\n[pools.other]\nendpoints = [\"127.0.0.1:3\"]\n[[routes]]\nname = \"web\"\nsplit = { blue = 100, canary = 0 }\n";

/// The errors a config with `extra` gets (after the route, so `[[routes.rules]]` is the
/// route's), or none.
fn errors(top: &str, extra: &str) -> Vec<String> {
    match load_str(&format!("{top}{BASE}{extra}"), Path::new("t.toml")) {
        Ok(_) => Vec::new(),
        Err(LoadError::Invalid(d)) => d.errors.iter().map(|e| e.to_string()).collect(),
        Err(e) => vec![e.to_string()],
    }
}

fn refused(top: &str, extra: &str, want: &str) {
    let e = errors(top, extra);
    assert!(e.iter().any(|m| m.contains(want)), "want `{want}` in {e:#?}");
}

#[test]
fn what_unleash_would_quietly_evaluate_as_false_is_an_error_in_the_toml() {
    let ok = "[context]\ncountry = \"header:x-country\"\n[[flags]]\nname = \"f\"\nstrategies = [{ name = \"default\", constraints = [{ contextName = \"country\", operator = \"IN\", values = [\"se\"] }] }]\n";
    assert_eq!(errors("", ok), Vec::<String>::new());
    let flag = |c: &str| {
        format!("[context]\ncountry = \"header:x-country\"\n[[flags]]\nname = \"f\"\nstrategies = [{{ name = \"default\", constraints = [{c}] }}]\n")
    };
    refused(
        "",
        &flag("{ contextName = \"plan\", operator = \"IN\", values = [\"pro\"] }"),
        "no request carries the context field `plan`",
    );
    refused(
        "",
        &flag("{ contextName = \"country\", operator = \"REGEX\", value = \"(\" }"),
        "REGEX constraint",
    );
    refused(
        "",
        &flag("{ contextName = \"country\", operator = \"LIKE\", values = [\"s%\"] }"),
        "`LIKE` is not an operator",
    );
    refused(
        "",
        &flag("{ contextName = \"country\", operator = \"NUM_GT\", value = \"ten\" }"),
        "is not a number",
    );
    refused(
        "",
        &flag("{ contextName = \"country\", operator = \"SEMVER_EQ\", value = \"v1.2.3\" }"),
        "is not a version",
    );
    refused(
        "",
        &flag("{ contextName = \"country\", operator = \"DATE_AFTER\", value = \"tomorrow\" }"),
        "is not a date",
    );
    refused(
        "",
        &flag("{ contextName = \"remoteAddress\", operator = \"IN_CIDR\", values = [\"10.0.0.0/40\"] }"),
        "is not an address range",
    );
    refused(
        "",
        &flag("{ operator = \"IN\", values = [\"se\"] }"),
        "missing field `contextName`",
    );
    refused(
        "",
        "[[flags]]\nname = \"f\"\nstrategies = [{ name = \"myCustom\" }]\n",
        "not a built-in strategy",
    );
    refused(
        "",
        "[[flags]]\nname = \"f\"\nstrategies = [{ name = \"default\", segments = [\"staff\"] }]\n",
        "segment `staff` does not exist",
    );
    refused(
        "",
        "[[flags]]\nname = \"f\"\npercent = 5\nstrategies = [{ name = \"default\" }]\n",
        "cannot be combined",
    );
    refused(
        "",
        "[[flags]]\nname = \"f\"\ndependencies = [{ feature = \"g\" }]\n",
        "there is no flag `g`",
    );
    refused(
        "",
        "[[flags]]\nname = \"Beta\"\n[[flags]]\nname = \"beta\"\n",
        "has the header key `beta`",
    );
    refused(
        "",
        "[[flags]]\nname = \"f\"\nvariants = [{ name = \"on\", weight = 1 }]\n",
        "cannot be",
    );
}

#[test]
fn context_rules_and_flags_from_are_checked() {
    refused(
        "",
        "[context]\ncountry = \"x-country\"\n",
        "is not a request attribute",
    );
    refused(
        "",
        "[context]\nuserId = \"header:x-user\"\n",
        "`userId` is built in",
    );
    refused(
        "",
        "[context]\nflags_from = \"f.json\"\n",
        "move flags_from above the first [table]",
    );
    refused(
        "",
        "[context]\ntrusted_proxies = [\"10.0.0.0/99\"]\n",
        "is not an address or range",
    );
    let rule = |pool: &str, c: &str| {
        format!("[context]\ncountry = \"header:x-country\"\n[[routes.rules]]\npool = \"{pool}\"\nconstraints = [{c}]\n")
    };
    assert_eq!(
        errors(
            "",
            &rule(
                "canary",
                "{ contextName = \"country\", operator = \"IN\", values = [\"se\"] }"
            )
        ),
        Vec::<String>::new()
    );
    refused(
        "",
        &rule(
            "other",
            "{ contextName = \"country\", operator = \"IN\", values = [\"se\"] }",
        ),
        "`other` is not a pool of this route",
    );
    refused("", &rule("canary", ""), "a rule needs constraints or segments");
    refused(
        "",
        &rule(
            "canary",
            "{ contextName = \"plan\", operator = \"IN\", values = [\"pro\"] }",
        ),
        "no request carries the context field `plan`",
    );
    refused("flags_from = \"missing.json\"\n", "", "cannot read");
    refused(
        "flags_from = { url = \"ftp://x\" }\n",
        "",
        "is not an http(s) URL",
    );
    refused(
        "flags_from = { url = \"http://unleash:4242/api/client/features\", interval = \"1ms\" }\n",
        "",
        "1s or more",
    );
    refused(
        "flags_from = { url = \"http://unleash:4242/api/client/features\", token = \"x\" }\n",
        "",
        "is not a setting of flags_from",
    );
    assert_eq!(errors("flags_from = { url = \"http://unleash:4242/api/client/features\", token_env = \"UNLEASH_TOKEN\" }\n", ""), Vec::<String>::new());
}

#[test]
fn a_feature_document_says_what_it_could_not_read_and_names_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let long = "n".repeat(100_000);
    std::fs::write(
        dir.path().join("features.json"),
        format!(
            r#"{{"features": [{{"name": "{long}", "enabled": true}}, {{"name": "odd", "variants": 7}}, {{"enabled": true}}]}}"#
        ),
    )
    .unwrap();
    let snap = load_str(
        &format!("flags_from = \"features.json\"\n{BASE}"),
        &dir.path().join("t.toml"),
    )
    .unwrap();
    let w = snap.warnings.join("\n");
    assert!(w.contains("has a name of 100000 bytes"), "{w}");
    assert!(w.contains("feature `odd` is not of Unleash's shape"), "{w}");
    assert!(w.contains("a feature without a name is left out"), "{w}");
    let odd = snap
        .flags
        .iter()
        .find(|f| &*f.name == "odd")
        .expect("kept, disabled");
    assert!(!odd.def.enabled);
}
