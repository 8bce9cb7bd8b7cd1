//! `[routes.mirror]`: the shadow pool, the share of users, the limits, and what the comparison
//! leaves out.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, Method};
use toml::Spanned;

use super::errors::Errors;
use super::raw::RawMirror;
use crate::mirror::compare::{parse_path, Ignore};
use crate::mirror::{MirrorConfig, SAFE_METHODS};

pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
pub const DEFAULT_MAX_RESPONSE: usize = 1024 * 1024;
/// Twice the peer job's 64 connections: with every request mirrored to a shadow as fast as the
/// primary, a copy's slot is often still held (its answer being read and compared) when the
/// client's next request comes, and at 64, 4–7% of copies were dropped; at 128 and 256, none
/// (`benches/peer/switchyard-mirror.toml`). Each slot holds at most `max_body` and two
/// `max_response`s, and only what has arrived.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 128;
/// Larger copies would be a second request buffer per mirrored request.
const MAX_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// `64KiB`, `1 MiB`, `512`, `2MB` as bytes.
pub fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: usize = t[..digits].parse().ok()?;
    let unit = match t[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(unit)
}

pub(super) fn compile(
    errs: &mut Errors<'_>,
    path: &str,
    raw: &Spanned<RawMirror>,
    pool_index: &HashMap<String, usize>,
) -> Option<Arc<MirrorConfig>> {
    let before = errs.list.len();
    let m = raw.get_ref();
    let path = format!("{path}.mirror");
    let pool = pool_index.get(m.pool.get_ref()).copied();
    if pool.is_none() {
        errs.at(
            &m.pool,
            format!("{path}.pool"),
            format!("there is no pool `{}`", m.pool.get_ref()),
            "name a pool defined in [pools]",
        );
    }
    let percent = match &m.percent {
        None => 100,
        Some(p) => errs.percent(p, format!("{path}.percent"), "10"),
    };
    let mut size = |v: &Option<Spanned<String>>, key: &str, default: usize| match v {
        None => default,
        Some(s) => match parse_size(s.get_ref()) {
            Some(n) if n <= MAX_BODY_LIMIT => n,
            _ => {
                errs.at(
                    s,
                    format!("{path}.{key}"),
                    format!("`{}` is not a size of at most 64MiB", s.get_ref()),
                    "write a size such as \"64KiB\" or \"1MiB\"",
                );
                default
            }
        },
    };
    let max_body = size(&m.max_body, "max_body", DEFAULT_MAX_BODY);
    let max_response = size(&m.max_response, "max_response", DEFAULT_MAX_RESPONSE);
    let max_in_flight = match &m.max_in_flight {
        None => DEFAULT_MAX_IN_FLIGHT,
        Some(n) => match usize::try_from(*n.get_ref()) {
            Ok(v) if (1..=100_000).contains(&v) => v,
            _ => {
                errs.at(
                    n,
                    format!("{path}.max_in_flight"),
                    "must be between 1 and 100000",
                    "write a count such as 64",
                );
                DEFAULT_MAX_IN_FLIGHT
            }
        },
    };
    let mut ignore = Ignore::default();
    let mut ignore_text = Vec::new();
    for (i, x) in m.ignore.iter().flatten().enumerate() {
        let t = x.get_ref();
        ignore_text.push(t.clone());
        if t.starts_with('$') {
            match parse_path(t) {
                Ok(p) => ignore.paths.push(p),
                Err(e) => errs.at(
                    x,
                    format!("{path}.ignore[{i}]"),
                    e,
                    "write a JSON path such as \"$.items[*].id\"",
                ),
            }
        } else {
            match HeaderName::from_bytes(t.to_ascii_lowercase().as_bytes()) {
                Ok(h) => ignore.headers.push(h),
                Err(_) => errs.at(
                    x,
                    format!("{path}.ignore[{i}]"),
                    format!("`{t}` is neither a header name nor a JSON path"),
                    "write a header name (\"date\") or a JSON path (\"$.generated_at\")",
                ),
            }
        }
    }
    let methods = match &m.methods {
        None => SAFE_METHODS.to_vec(),
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, x)| {
                let t = x.get_ref().to_ascii_uppercase();
                match Method::from_bytes(t.as_bytes()) {
                    Ok(me) if me != Method::CONNECT => Some(me),
                    _ => {
                        errs.at(
                            x,
                            format!("{path}.methods[{i}]"),
                            format!("`{}` is not a method", x.get_ref()),
                            "write methods such as [\"GET\", \"POST\"]",
                        );
                        None
                    }
                }
            })
            .collect(),
    };
    (errs.list.len() == before).then(|| {
        Arc::new(MirrorConfig {
            pool: pool.unwrap_or(0),
            percent,
            max_body,
            max_response,
            compare: m.compare.as_ref().is_none_or(|c| *c.get_ref()),
            ignore,
            ignore_text,
            methods,
            max_in_flight,
            stats: Default::default(),
            current: Default::default(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::parse_size;
    use crate::config::{load_str, LoadError};
    use std::path::Path;

    fn errors(route_extra: &str) -> Vec<String> {
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.green]\nendpoints = [\"127.0.0.1:2\"]\n\
             [[routes]]\nname = \"web\"\nsplit = {{ blue = 1 }}\n{route_extra}"
        );
        match load_str(&text, Path::new("t.toml")) {
            Ok(_) => Vec::new(),
            Err(LoadError::Invalid(d)) => d.errors.iter().map(|e| e.to_string()).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn mirrors_are_checked() {
        assert_eq!(
            errors(
                "[routes.mirror]\npool = \"green\"\npercent = 10\nignore = [\"date\", \"$.items[*].id\"]\n"
            ),
            Vec::<String>::new()
        );
        for (extra, want) in [
            ("[routes.mirror]\npool = \"teal\"\n", "there is no pool `teal`"),
            ("[routes.mirror]\npool = \"green\"\npercent = 101\n", "between 0 and 100"),
            ("[routes.mirror]\npool = \"green\"\nmax_body = \"1TB\"\n", "at most 64MiB"),
            ("[routes.mirror]\npool = \"green\"\nignore = [\"$.a[\"]\n", "a [ without ]"),
            ("[routes.mirror]\npool = \"green\"\nignore = [\"not a header\"]\n", "neither a header name nor a JSON path"),
            ("[routes.mirror]\npool = \"green\"\nmethods = [\"CONNECT\"]\n", "is not a method"),
            ("[routes.mirror]\npool = \"green\"\nmax_in_flight = 0\n", "between 1 and 100000"),
            ("[routes.guard]\nbaseline = \"blue\"\nmax_mismatch_rate = 0.01\n", "compares none"),
            ("[routes.guard]\nbaseline = \"blue\"\nmax_mismatch_rate = 0.01\n[routes.mirror]\npool = \"green\"\ncompare = false\n", "compares none"),
        ] {
            let e = errors(extra);
            assert!(e.iter().any(|m| m.contains(want)), "{extra}: want `{want}` in {e:#?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1 MiB"), Some(1 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("2MB"), Some(2_000_000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("-1"), None);
    }
}
