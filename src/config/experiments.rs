//! `[[experiments]]`: a flag with variants (or a route's pools) and a goal.

use std::sync::Arc;

use http::Method;
use toml::Spanned;

use super::errors::Errors;
use super::raw::RawExperiment;
use crate::experiments::{Arm, ExperimentConfig, Goal, Results, StatusMatch, Subject};
use crate::routing::{Flag, Route};

pub(super) fn compile(
    errs: &mut Errors<'_>,
    raw: &[Spanned<RawExperiment>],
    flags: &[Flag],
    routes: &[Route],
    pools: &[Arc<crate::upstream::Pool>],
) -> Vec<ExperimentConfig> {
    let mut out: Vec<ExperimentConfig> = Vec::new();
    for (i, e) in raw.iter().enumerate() {
        let path = format!("experiments[{i}]");
        let before = errs.list.len();
        let e = e.get_ref();
        let name = e.name.get_ref();
        if name.is_empty() || out.iter().any(|o| &o.name == name) {
            errs.at(
                &e.name,
                format!("{path}.name"),
                format!("`{name}` is empty or already an experiment's name"),
                "give every experiment a unique name",
            );
        }
        let (subject, arms, weights) = match (&e.flag, &e.route) {
            (Some(f), None) => match flags.iter().position(|x| *x.name == **f.get_ref()) {
                Some(index) if !flags[index].variant_names.is_empty() => {
                    let flag = &flags[index];
                    // The weights the arms should get: the flag's own variants, else the first
                    // strategy's that has some.
                    let defined = if flag.def.variants.is_empty() {
                        flag.def
                            .strategies
                            .iter()
                            .map(|s| &s.variants)
                            .find(|v| !v.is_empty())
                    } else {
                        Some(&flag.def.variants)
                    };
                    let weights = flag
                        .variant_names
                        .iter()
                        .map(|n| {
                            defined
                                .and_then(|d| d.iter().find(|v| &v.name == n))
                                .map_or(0.0, |v| v.weight.max(0) as f64)
                        })
                        .collect();
                    (Subject::Flag(index), flag.variant_names.clone(), weights)
                }
                Some(_) => {
                    errs.at(
                        f,
                        format!("{path}.flag"),
                        format!("the flag `{}` has no variants to compare", f.get_ref()),
                        "give the flag variants, or compare a route's pools with route = \"...\"",
                    );
                    continue;
                }
                None => {
                    errs.at(
                        f,
                        format!("{path}.flag"),
                        format!("there is no flag `{}`", f.get_ref()),
                        "name a flag defined in [[flags]] or flags_from",
                    );
                    continue;
                }
            },
            (None, Some(r)) => match routes.iter().find(|x| *x.name == **r.get_ref()) {
                Some(route) if route.split.weights().count() > 1 => {
                    let split: Vec<(usize, u64)> = route.split.weights().collect();
                    let names = split.iter().map(|(p, _)| pools[*p].name.to_string()).collect();
                    (
                        Subject::Route(route.index),
                        names,
                        split.iter().map(|(_, w)| *w as f64).collect(),
                    )
                }
                Some(_) => {
                    errs.at(
                        r,
                        format!("{path}.route"),
                        format!("the route `{}` has one pool: nothing to compare", r.get_ref()),
                        "split the route over two pools or more",
                    );
                    continue;
                }
                None => {
                    errs.at(
                        r,
                        format!("{path}.route"),
                        format!("there is no route `{}`", r.get_ref()),
                        "name a route defined in [[routes]]",
                    );
                    continue;
                }
            },
            _ => {
                errs.at(
                    &e.name,
                    &path,
                    "an experiment compares a flag's variants or a route's pools",
                    "set either flag = \"...\" or route = \"...\"",
                );
                continue;
            }
        };
        let g = e.goal.get_ref();
        let method = match &g.method {
            None => None,
            Some(m) => match Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    errs.at(
                        m,
                        format!("{path}.goal.method"),
                        format!("`{}` is not a method", m.get_ref()),
                        "write a method such as \"POST\"",
                    );
                    None
                }
            },
        };
        let status = match &g.status {
            None => StatusMatch::Class(2),
            Some(s) => StatusMatch::parse(s.get_ref()).unwrap_or_else(|| {
                errs.at(
                    s,
                    format!("{path}.goal.status"),
                    format!("`{}` is not a status or a class", s.get_ref()),
                    "write \"2xx\" or a status such as \"201\"",
                );
                StatusMatch::Class(2)
            }),
        };
        if !g.path_prefix.get_ref().starts_with('/') {
            errs.at(
                &g.path_prefix,
                format!("{path}.goal.path_prefix"),
                "must start with /",
                "write a path such as \"/checkout/complete\"",
            );
        }
        if errs.list.len() != before {
            continue;
        }
        let text = format!(
            "{} {}* answered {}",
            method.as_ref().map_or("any", Method::as_str),
            g.path_prefix.get_ref(),
            g.status.as_ref().map_or("2xx", |s| s.get_ref().as_str())
        );
        // (Counts go on across a reload that keeps the arms: runtime::assemble.)
        let results = Arc::new(Results {
            arms: vec![Arm::default(); arms.len()],
        });
        out.push(ExperimentConfig {
            name: name.clone(),
            subject,
            goal: Goal {
                path_prefix: g.path_prefix.get_ref().clone(),
                method,
                status,
                text,
            },
            arms,
            weights,
            results,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::{load_str, LoadError};
    use std::path::Path;

    fn errors(extra: &str) -> Vec<String> {
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[pools.a]\nendpoints = [\"127.0.0.1:1\"]\n[pools.b]\nendpoints = [\"127.0.0.1:2\"]\n\
             [[routes]]\nname = \"web\"\nsplit = {{ a = 1, b = 1 }}\n[[routes]]\nname = \"one\"\npath_prefix = \"/one\"\nsplit = {{ a = 1 }}\n\
             [[flags]]\nname = \"ab\"\nvariants = {{ x = 1, y = 1 }}\n[[flags]]\nname = \"plain\"\n{extra}"
        );
        match load_str(&text, Path::new("t.toml")) {
            Ok(_) => Vec::new(),
            Err(LoadError::Invalid(d)) => d.errors.iter().map(|e| e.to_string()).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn experiments_are_checked() {
        let goal = "goal = { path_prefix = \"/done\" }";
        for ok in [
            format!("[[experiments]]\nname = \"e\"\nflag = \"ab\"\n{goal}\n"),
            format!("[[experiments]]\nname = \"e\"\nroute = \"web\"\n{goal}\n"),
        ] {
            assert_eq!(errors(&ok), Vec::<String>::new(), "{ok}");
        }
        for (extra, want) in [
            (format!("[[experiments]]\nname = \"e\"\nflag = \"plain\"\n{goal}\n"), "has no variants"),
            (format!("[[experiments]]\nname = \"e\"\nflag = \"zz\"\n{goal}\n"), "there is no flag `zz`"),
            (format!("[[experiments]]\nname = \"e\"\nroute = \"one\"\n{goal}\n"), "has one pool"),
            (format!("[[experiments]]\nname = \"e\"\n{goal}\n"), "set either flag"),
            ("[[experiments]]\nname = \"e\"\nflag = \"ab\"\ngoal = { path_prefix = \"/d\", status = \"7xx\" }\n".to_owned(), "is not a status"),
            ("[[experiments]]\nname = \"e\"\nflag = \"ab\"\ngoal = { path_prefix = \"d\" }\n".to_owned(), "must start with /"),
            (format!("[[experiments]]\nname = \"e\"\nflag = \"ab\"\n{goal}\n[[experiments]]\nname = \"e\"\nflag = \"ab\"\n{goal}\n"), "already an experiment's name"),
        ] {
            let e = errors(&extra);
            assert!(e.iter().any(|m| m.contains(want)), "{extra}: want `{want}` in {e:#?}");
        }
    }
}
