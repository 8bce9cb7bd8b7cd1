//! The targeting part of the config: `[context]` (request attributes by name), `[[segments]]`,
//! `[[flags]]` (the shorthand, or Unleash's strategies in TOML), `flags_from` (an Unleash feature
//! file) and routes' `[[routes.rules]]`. All of it compiles through [`crate::routing::unleash`].

use std::collections::HashMap;
use std::path::Path;

use http::HeaderName;
use toml::Spanned;

use super::errors::Errors;
use super::raw::{RawConfig, RawFlag, RawRule};
use crate::routing::flags::{self, Flag};
use crate::routing::unleash::model::{
    Constraint, Dependency, Feature, Segment, SegmentRef, Strategy, Variant,
};
use crate::routing::unleash::ops::Cidr;
use crate::routing::unleash::{self, Cond, Env, Schema, Toggle};
use crate::routing::{ContextSpec, Rule, Source};

mod source;
use source::flags_from;
pub use source::{combined_revision, parse_features, FlagsFrom, ServerSource};

/// Properties every request has, whatever `[context]` says.
pub const REQUEST_FIELDS: [(&str, Source); 3] = [
    ("host", Source::Host),
    ("path", Source::Path),
    ("method", Source::Method),
];

/// This machine's name, for Unleash's `applicationHostname` strategy.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

/// `[context]` and `[env] app_name`.
pub(super) fn context(errs: &mut Errors<'_>, raw: &RawConfig) -> ContextSpec {
    let mut spec = ContextSpec::default();
    let mut sources = Vec::new();
    if let Some(table) = &raw.context {
        for (name, v) in table.get_ref() {
            let path = format!("context.{name}");
            if name == "trusted_proxies" {
                let list = v
                    .get_ref()
                    .as_array()
                    .map(|a| a.iter().map(|x| x.as_str()).collect::<Vec<_>>());
                match list {
                    Some(l) if l.iter().all(Option::is_some) => {
                        for x in l.into_iter().flatten() {
                            match Cidr::parse(x) {
                                Some(c) => spec.trusted.push(c),
                                None => errs.at(
                                    v,
                                    &path,
                                    format!("`{x}` is not an address or range"),
                                    "write addresses such as \"10.0.0.0/8\" or \"127.0.0.1\"",
                                ),
                            }
                        }
                    }
                    _ => errs.at(
                        v,
                        &path,
                        "must be a list of addresses",
                        "write trusted_proxies = [\"10.0.0.0/8\"]",
                    ),
                }
                continue;
            }
            if name == "flags_from" {
                errs.at(
                    v,
                    &path,
                    "flags_from is a top-level key, but here it is read as part of [context]",
                    "move flags_from above the first [table] of the file",
                );
                continue;
            }
            if REQUEST_FIELDS.iter().any(|(n, _)| n == name) || unleash_builtin(name) {
                errs.at(
                    v,
                    &path,
                    format!("`{name}` is built in"),
                    "pick another name; built-in fields are filled by the proxy",
                );
                continue;
            }
            let source = v
                .get_ref()
                .as_str()
                .and_then(|s| s.split_once(':'))
                .and_then(|(kind, arg)| {
                    let arg = arg.trim();
                    if arg.is_empty() {
                        return None;
                    }
                    match kind.trim() {
                        "header" => HeaderName::from_bytes(arg.to_ascii_lowercase().as_bytes())
                            .ok()
                            .map(Source::Header),
                        "cookie" => Some(Source::Cookie(arg.to_owned())),
                        "query" => Some(Source::Query(arg.to_owned())),
                        _ => None,
                    }
                });
            match source {
                Some(s) => sources.push((name.clone(), s)),
                None => errs.at(
                    v,
                    &path,
                    "is not a request attribute",
                    "write \"header:NAME\", \"cookie:NAME\" or \"query:NAME\"",
                ),
            }
        }
    }
    for (name, s) in REQUEST_FIELDS
        .iter()
        .map(|(n, s)| (n.to_string(), s.clone()))
        .chain(sources)
    {
        spec.schema.field(&name);
        spec.sources.push(Some(s));
    }
    spec.app_name = raw
        .env
        .as_ref()
        .and_then(|e| e.get_ref().app_name.as_ref())
        .map(|a| a.get_ref().clone());
    spec
}

fn unleash_builtin(name: &str) -> bool {
    matches!(
        name,
        "userId" | "sessionId" | "remoteAddress" | "environment" | "appName" | "currentTime"
    )
}

/// Reads a TOML value as one of the Unleash model's types, reporting where it does not fit.
fn typed<T: serde::de::DeserializeOwned>(
    errs: &mut Errors<'_>,
    v: &Spanned<toml::Value>,
    path: &str,
    fix: &str,
) -> Option<T> {
    match v.get_ref().clone().try_into::<T>() {
        Ok(t) => Some(t),
        Err(e) => {
            errs.at(v, path, e.message().to_string(), fix);
            None
        }
    }
}

const CONSTRAINT_FIX: &str =
    "write constraints as Unleash does: { contextName = \"country\", operator = \"IN\", values = [\"se\"] }";

/// `[[segments]]`, by name.
pub(super) fn segments(errs: &mut Errors<'_>, raw: &RawConfig) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for (i, s) in raw.segments.iter().enumerate() {
        let s = s.get_ref();
        let name = s.name.get_ref();
        if out.iter().any(|o| o.name.as_deref() == Some(name)) {
            errs.at(
                &s.name,
                format!("segments[{i}].name"),
                format!("a segment named `{name}` is already defined"),
                "give every segment a unique name",
            );
        }
        let constraints: Vec<Constraint> = typed(
            errs,
            &s.constraints,
            &format!("segments[{i}].constraints"),
            CONSTRAINT_FIX,
        )
        .unwrap_or_default();
        out.push(Segment {
            id: i as i64,
            name: Some(name.clone()),
            constraints,
        });
    }
    out
}

/// Problems Unleash would evaluate as `false` are errors in the TOML: the author can fix them.
/// Names of context fields no request carries are too.
fn report(
    errs: &mut Errors<'_>,
    at: &Spanned<String>,
    path: &str,
    warnings: Vec<String>,
    schema: &Schema,
    known: usize,
) {
    for w in warnings {
        errs.at(
            at,
            path,
            w,
            "see the README's targeting section for operators and strategies",
        );
    }
    for unknown in &schema.names()[known.min(schema.names().len())..] {
        errs.at(
            at,
            path,
            format!("no request carries the context field `{unknown}`"),
            "define it in [context] (such as country = \"header:x-country\"), or use a built-in field",
        );
    }
}

/// What `[[flags]]` are compiled against: the config's directory (for `flags_from`'s file),
/// the environment, the routes and segments defined, and the config's name.
pub(super) struct FlagScope<'a> {
    pub base: &'a Path,
    pub env_name: Option<&'a str>,
    pub routes: &'a std::collections::HashSet<String>,
    pub segments: &'a [Segment],
    pub config_name: &'a str,
}

/// Compiles `[[flags]]` and `flags_from`'s file. TOML flags come first; a file flag with the
/// name of a TOML flag is left out (the TOML wins), with a warning in `notes`.
pub(super) fn flags(
    errs: &mut Errors<'_>,
    raw: &RawConfig,
    scope: &FlagScope<'_>,
    ctx: &mut ContextSpec,
) -> (Vec<Flag>, Option<(FlagsFrom, String)>) {
    let FlagScope {
        base,
        env_name,
        routes,
        segments: segs,
        config_name,
    } = *scope;
    let host = hostname();
    let env = Env { hostname: &host };
    let lookup = |r: &SegmentRef| -> Option<Vec<Constraint>> {
        match r {
            SegmentRef::Name(n) => segs.iter().find(|s| s.name.as_deref() == Some(n.as_str())),
            SegmentRef::Id(_) => None,
        }
        .map(|s| s.constraints.clone())
    };
    // Segments are checked once, on their own.
    for (i, s) in segs.iter().enumerate() {
        let known = ctx.schema.names().len();
        let mut w = Vec::new();
        for c in &s.constraints {
            Cond::compile(c, &mut ctx.schema, &mut w);
        }
        report(
            errs,
            &raw.segments[i].get_ref().name,
            &format!("segments[{i}]"),
            w,
            &ctx.schema,
            known,
        );
    }
    let mut out: Vec<Flag> = Vec::new();
    for (i, f) in raw.flags.iter().enumerate() {
        let path = format!("flags[{i}]");
        let rf = f.get_ref();
        let name = rf.name.get_ref();
        if out.iter().any(|o| &*o.name == name) {
            errs.at(
                &rf.name,
                format!("{path}.name"),
                format!("a flag named `{name}` is already defined"),
                "give every flag a unique name",
            );
        }
        let Some((def, percent, group, window)) = definition(errs, &path, rf) else {
            continue;
        };
        let known = ctx.schema.names().len();
        let mut w = Vec::new();
        let mut toggle = Toggle::compile(&def, &lookup, &mut ctx.schema, &env, &mut w);
        report(errs, &rf.name, &path, w, &ctx.schema, known);
        if let Some(g) = &group {
            toggle.set_variant_group(g);
        }
        toggle.window = window;
        let env_enabled = match &rf.environments {
            None => true,
            Some(envs) => {
                if env_name.is_none() {
                    if let Some(first) = envs.first() {
                        errs.at(
                            first,
                            format!("{path}.environments"),
                            "environments are listed but this config has no [env] name",
                            "add [env] with name = \"production\" (or whatever this deployment is)",
                        );
                    }
                }
                envs.iter().any(|e| Some(e.get_ref().as_str()) == env_name)
            }
        };
        for (j, r) in rf.routes.iter().flatten().enumerate() {
            if !routes.contains(r.get_ref()) {
                errs.at(
                    r,
                    format!("{path}.routes[{j}]"),
                    format!("there is no route `{}`", r.get_ref()),
                    "name a route defined in [[routes]]",
                );
            }
        }
        let routes = rf
            .routes
            .as_ref()
            .map(|r| r.iter().map(|n| n.get_ref().clone()).collect());
        let mut flag = Flag::new(def, toggle, env_enabled, routes, false);
        flag.percent = percent;
        if out.iter().any(|o| o.key == flag.key) {
            errs.at(
                &rf.name,
                format!("{path}.name"),
                format!("`{name}` has the header key `{}`, as another flag does", flag.key),
                "rename one of them (header keys are lower-cased names; see the README)",
            );
        }
        out.push(flag);
    }
    // Dependencies of TOML flags must name flags.
    let toml_count = out.len();
    let from = raw
        .flags_from
        .as_ref()
        .and_then(|v| flags_from(errs, v, base, config_name));
    let mut file_revision = None;
    if let Some(src) = &from {
        match src.load() {
            Ok((doc, rev)) => {
                file_revision = Some(rev);
                let mut file = unleash::compile(&doc, &mut ctx.schema, &env);
                for p in &doc.problems {
                    file.warnings.push(p.clone());
                }
                for f in doc.features.iter().filter(|f| f.name.len() > MAX_QUIET_FLAG_NAME) {
                    file.warnings.push(format!(
                        "flag `{}…` has a name of {} bytes: it goes into the flags header of every request in its scope (until [headers] max_flag_bytes leaves it out)",
                        f.name.chars().take(40).collect::<String>(),
                        f.name.len()
                    ));
                }
                for (t, feature) in file.toggles.drain(..).zip(doc.features) {
                    if out[..toml_count].iter().any(|o| *o.name == feature.name) {
                        tracing::warn!(flag = %feature.name, "flags_from: a [[flags]] entry has this name; the TOML's is used");
                        continue;
                    }
                    out.push(Flag::new(feature, t, true, None, true));
                }
                for w in file.warnings {
                    tracing::warn!("flags_from: {w}");
                    errs.warnings.push(format!("flags_from: {w}"));
                }
            }
            Err(e) => errs.at(
                raw.flags_from.as_ref().expect("flags_from is set"),
                "flags_from",
                e,
                "fix the file, or point flags_from at an Unleash client API document",
            ),
        }
    }
    // Link every dependency across TOML and file flags.
    let index: HashMap<String, usize> = out
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.to_string(), i))
        .collect();
    for (i, f) in out.iter_mut().enumerate() {
        f.toggle.link(&|n| index.get(n).copied());
        if i < toml_count {
            for (d, found) in f.toggle.dependencies() {
                if !found {
                    let rf = raw.flags[i].get_ref();
                    errs.at(
                        &rf.name,
                        format!("flags[{i}].dependencies"),
                        format!("there is no flag `{d}`"),
                        "name a flag defined in [[flags]] or in flags_from's file",
                    );
                }
            }
        }
    }
    flags::unique_keys(&mut out);
    (out, from.zip(file_revision))
}

/// A flag written in the TOML, in Unleash's form: the definition, the shorthand's percentage,
/// its hash group, and its time window.
#[allow(clippy::type_complexity)]
fn definition(
    errs: &mut Errors<'_>,
    path: &str,
    raw: &RawFlag,
) -> Option<(Feature, Option<u32>, Option<String>, (Option<i64>, Option<i64>))> {
    let before = errs.list.len();
    let name = raw.name.get_ref();
    if name.trim().is_empty() {
        errs.at(
            &raw.name,
            format!("{path}.name"),
            "a flag needs a name",
            "name it as your services will read it, such as new_checkout",
        );
    }
    let shorthand = raw.percent.is_some() || raw.users.is_some() || raw.group.is_some();
    let mut strategies: Vec<Strategy> = Vec::new();
    let mut percent_out = None;
    if let Some(s) = &raw.strategies {
        if shorthand {
            errs.at(
                s,
                format!("{path}.strategies"),
                "strategies cannot be combined with percent, users or group",
                "write the percentage as a flexibleRollout strategy, the users as userWithId",
            );
        }
        strategies = typed(errs, s, &format!("{path}.strategies"), "write strategies as Unleash does: { name = \"flexibleRollout\", parameters = { rollout = \"25\" }, constraints = [...] }").unwrap_or_default();
    } else {
        let users: Vec<String> = raw.users.iter().flatten().map(|u| u.get_ref().clone()).collect();
        for (i, u) in raw.users.iter().flatten().enumerate() {
            if u.get_ref().contains(',') || u.get_ref().trim() != u.get_ref() {
                errs.at(
                    u,
                    format!("{path}.users[{i}]"),
                    "user keys cannot contain commas or surrounding spaces",
                    "list the key as the identity header carries it",
                );
            }
        }
        let percent = match &raw.percent {
            // Without a percentage a flag is on for everyone, unless it lists users: then for them.
            None => {
                if users.is_empty() {
                    100
                } else {
                    0
                }
            }
            Some(p) => errs.percent(p, format!("{path}.percent"), "25"),
        };
        percent_out = Some(percent);
        let group = match &raw.group {
            Some(g) if g.get_ref().is_empty() => {
                errs.at(
                    g,
                    format!("{path}.group"),
                    "must not be empty",
                    "remove it to use the flag's name",
                );
                name.clone()
            }
            Some(g) => g.get_ref().clone(),
            None => name.clone(),
        };
        if !users.is_empty() {
            strategies.push(Strategy {
                name: "userWithId".into(),
                parameters: [("userIds".to_owned(), users.join(","))].into(),
                ..Strategy::default()
            });
        }
        if percent == 100 {
            strategies.push(Strategy {
                name: "default".into(),
                ..Strategy::default()
            });
        } else if percent > 0 || users.is_empty() {
            strategies.push(Strategy {
                name: "flexibleRollout".into(),
                parameters: [
                    ("rollout".to_owned(), percent.to_string()),
                    ("stickiness".to_owned(), "default".to_owned()),
                    ("groupId".to_owned(), group.clone()),
                ]
                .into(),
                ..Strategy::default()
            });
        }
    }
    let mut variants: Vec<Variant> = Vec::new();
    if let Some(v) = &raw.variants {
        match v.get_ref() {
            toml::Value::Table(t) => {
                for (vname, w) in t {
                    let p = format!("{path}.variants.{vname}");
                    if vname == "on" || vname == "off" || vname.is_empty() {
                        errs.at(
                            v,
                            &p,
                            format!("`{vname}` cannot be a variant name"),
                            "use a name other than on/off",
                        );
                    }
                    match w.as_integer().map(u32::try_from) {
                        Some(Ok(x)) if u64::from(x) <= crate::routing::split::MAX_WEIGHT => {
                            variants.push(Variant {
                                name: vname.clone(),
                                weight: i64::from(x),
                                stickiness: Some("default".into()),
                                ..Variant::default()
                            })
                        }
                        Some(Ok(_)) => errs.at(
                            v,
                            &p,
                            format!("weights are at most {}", crate::routing::split::MAX_WEIGHT),
                            "weights are relative: { a = 1, b = 1 } splits as { a = 500, b = 500 } does",
                        ),
                        Some(Err(_)) => errs.at(
                            v,
                            &p,
                            "weights cannot be negative",
                            "use 0 to turn the variant off",
                        ),
                        None => errs.at(
                            v,
                            &p,
                            "must be a whole number",
                            "write weights such as { control = 50, treatment = 50 }",
                        ),
                    }
                }
            }
            _ => {
                variants = typed(errs, v, &format!("{path}.variants"), "write { name = weight, ... }, or Unleash's [{ name = \"a\", weight = 500, payload = { type = \"json\", value = \"...\" } }]").unwrap_or_default();
                for x in &variants {
                    if x.weight < 0 || x.name == "on" || x.name == "off" || x.name.is_empty() {
                        errs.at(
                            v,
                            format!("{path}.variants"),
                            format!(
                                "variant `{}`: weights cannot be negative, names cannot be empty, on or off",
                                x.name
                            ),
                            "fix the variant",
                        );
                    }
                }
            }
        }
        if !variants.is_empty() && variants.iter().map(|x| x.weight).sum::<i64>() == 0 {
            errs.at(
                v,
                format!("{path}.variants"),
                "the variant weights add up to 0",
                "give at least one variant a positive weight",
            );
        }
    }
    let dependencies: Vec<Dependency> = raw
        .dependencies
        .as_ref()
        .and_then(|d| typed(errs, d, &format!("{path}.dependencies"), "write dependencies = [{ feature = \"parent\" }] (optionally enabled = false, or variants = [...])"))
        .unwrap_or_default();
    let mut time = |v: &Option<Spanned<String>>, field: &str| {
        v.as_ref()
            .and_then(|t| match humantime::parse_rfc3339_weak(t.get_ref()) {
                Ok(at) => Some(
                    at.duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64),
                ),
                Err(e) => {
                    errs.at(
                        t,
                        format!("{path}.{field}"),
                        format!("`{}` is not a time ({e})", t.get_ref()),
                        "write a UTC time such as \"2026-12-01T00:00:00Z\"",
                    );
                    None
                }
            })
    };
    let start = time(&raw.start, "start");
    let end = time(&raw.end, "end");
    if let (Some(s), Some(e), Some(spanned)) = (start, end, &raw.end) {
        if e <= s {
            errs.at(
                spanned,
                format!("{path}.end"),
                "ends before it starts",
                "make end later than start",
            );
        }
    }
    let group = raw.group.as_ref().map(|g| g.get_ref().clone());
    let def = Feature {
        name: name.clone(),
        enabled: raw.enabled.as_ref().is_none_or(|e| *e.get_ref()),
        strategies,
        variants,
        dependencies,
    };
    (errs.list.len() == before).then_some((def, percent_out, group, (start, end)))
}

/// A flag name longer than this, from a feature document, is said by `check` and the log.
const MAX_QUIET_FLAG_NAME: usize = 256;

/// A route's `[[routes.rules]]`.
pub(super) fn rules(
    errs: &mut Errors<'_>,
    path: &str,
    raw: &[Spanned<RawRule>],
    pools: &dyn Fn(&str) -> Option<usize>,
    ctx: &mut ContextSpec,
    segs: &[Segment],
) -> Vec<Rule> {
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let p = format!("{path}.rules[{i}]");
        let r = r.get_ref();
        let pool = pools(r.pool.get_ref());
        if pool.is_none() {
            errs.at(
                &r.pool,
                format!("{p}.pool"),
                format!("`{}` is not a pool of this route", r.pool.get_ref()),
                "name a pool of the route's split",
            );
        }
        let mut constraints: Vec<Constraint> = r
            .constraints
            .as_ref()
            .and_then(|c| typed(errs, c, &format!("{p}.constraints"), CONSTRAINT_FIX))
            .unwrap_or_default();
        for s in r.segments.iter().flatten() {
            match segs
                .iter()
                .find(|x| x.name.as_deref() == Some(s.get_ref().as_str()))
            {
                Some(seg) => constraints.extend(seg.constraints.iter().cloned()),
                None => errs.at(
                    s,
                    format!("{p}.segments"),
                    format!("there is no segment `{}`", s.get_ref()),
                    "name a segment defined in [[segments]]",
                ),
            }
        }
        if constraints.is_empty() {
            errs.at(
                &r.pool,
                &p,
                "a rule needs constraints or segments",
                "add constraints = [...], or remove the rule",
            );
        }
        let known = ctx.schema.names().len();
        let mut w = Vec::new();
        let conds: Vec<Cond> = constraints
            .iter()
            .map(|c| Cond::compile(c, &mut ctx.schema, &mut w))
            .collect();
        report(errs, &r.pool, &p, w, &ctx.schema, known);
        let name = r
            .name
            .as_ref()
            .map_or_else(|| format!("rule {}", i + 1), |n| n.get_ref().clone());
        if let Some(pool) = pool {
            out.push(Rule {
                name,
                conds: conds.into(),
                pool,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
