//! The config file, in the stages sozu uses: TOML text → raw structs ([`raw`], unknown keys
//! collected, not fatal) → validated and compiled into an immutable [`Snapshot`]
//! ([`compile`]). Every problem found on the way becomes a [`ConfigError`] that names its
//! line, column and field path and says how to fix the file; all of them are reported at once.
//!
//! [`Snapshot`]: crate::runtime::Snapshot

mod compile;
mod compile_checks;
mod compile_routes;
mod compile_session;
mod compile_settings;
mod compiled;
mod errors;
mod experiments;
mod mirror;
pub mod raw;
pub mod settings;
mod targeting;

use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub use compile::{compile, revision};
pub use compile_checks::check_env as analysis_env;
pub use compile_session::check_env as session_env;
pub use compiled::{Compiled, RouteExtras};
pub use settings::{AdminSettings, AnalysisSettings, FleetSettings, Listen};
pub use targeting::{combined_revision, parse_features, FlagsFrom, ServerSource};

/// One problem in a config file, with where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// Dotted field path, such as `routes[0].split.canary`; empty for the whole file.
    pub path: String,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)?;
        if !self.path.is_empty() {
            write!(f, " {}", self.path)?;
        }
        write!(f, ": {}", self.message)?;
        if !self.fix.is_empty() {
            write!(f, " — {}", self.fix)?;
        }
        Ok(())
    }
}

/// Every error of one file, printed one per line as `FILE:LINE:COL field.path: message — fix`.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{e}", self.file.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {error} — check the path given with --config", path.display())]
    Read {
        path: PathBuf,
        // Not a `source`: the message already says it, and error chains would repeat it.
        error: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Reads, validates and compiles a config file. `previous` is the snapshot being replaced, if
/// any: pools whose endpoints did not change keep their runtime state.
pub fn load(path: &Path) -> Result<Compiled, LoadError> {
    let src = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
        path: path.to_owned(),
        error,
    })?;
    load_str(&src, path)
}

/// Like [`load`], from text already read; `path` names the file in errors and anchors the
/// relative paths (TLS certificates) the file contains.
pub fn load_str(src: &str, path: &Path) -> Result<Compiled, LoadError> {
    let invalid = |errors| {
        LoadError::Invalid(Diagnostics {
            file: path.to_owned(),
            errors,
        })
    };
    let (raw, mut errors) = parse(src);
    let Some(raw) = raw else {
        return Err(invalid(errors));
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "switchyard.toml".into(), |n| n.to_string_lossy());
    match compile(src, &raw, base, &name) {
        Ok(snap) if errors.is_empty() => Ok(snap),
        Ok(_) => Err(invalid(errors)),
        Err(more) => {
            errors.extend(more);
            errors.sort_by_key(|e| (e.line, e.col));
            Err(invalid(errors))
        }
    }
}

/// Stage one: TOML text to raw structs, and the errors found on the way: syntax errors, a type
/// error, and every unknown key. Unknown keys do not stop the reading, so the raw config is
/// still returned with them and can be validated too: one run lists every error.
pub fn parse(src: &str) -> (Option<raw::RawConfig>, Vec<ConfigError>) {
    let (tree, syntax) = DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        let errors = syntax
            .iter()
            .map(|e| {
                let at = e.span().map_or(0, |s| s.start);
                error_at(src, at, String::new(), e.message().trim(), "fix the TOML syntax")
            })
            .collect();
        return (None, errors);
    }
    let mut unknown = Vec::new();
    let de = toml::de::Deserializer::from(tree.clone());
    let parsed: Result<raw::RawConfig, _> = serde_ignored::deserialize(de, |path| {
        unknown.push(segments(&path));
    });
    let mut errors: Vec<ConfigError> = unknown
        .iter()
        .map(|segs| {
            let at = key_offset(tree.get_ref(), segs).unwrap_or(0);
            let key = segs.last().map(Seg::to_string).unwrap_or_default();
            error_at(
                src,
                at,
                format_path(segs),
                format!("unknown key `{key}`"),
                "remove it or check its spelling against config/switchyard.toml",
            )
        })
        .collect();
    let mut e = match parsed {
        Ok(raw) => return (Some(raw), errors),
        Err(e) => e,
    };
    // Every shape error, not only the first: the value at fault is taken out of a copy of the
    // tree and the copy read again, until it reads (or nothing more can be taken out). A
    // missing field that a removal caused is not reported.
    let mut pruned = tree.clone();
    let mut removed: Vec<Vec<Seg>> = Vec::new();
    for _ in 0..MAX_SHAPE_ERRORS {
        let at = e.span().map_or(0, |s| s.start);
        let message = e.message().trim().to_owned();
        let missing = message.starts_with("missing field");
        let segs = find_in_table(pruned.get_ref(), at).filter(|s| !s.is_empty());
        // A missing field: the table that lacks it goes; else the value at fault.
        let target = match segs {
            Some(segs) if missing => container_of(pruned.get_ref(), &segs, e.span().unwrap_or(at..at)),
            Some(segs) => segs,
            None => Vec::new(),
        };
        let caused = missing && !target.is_empty() && removed.iter().any(|r| r.starts_with(&target));
        if !caused {
            let fix = if missing {
                "add the field"
            } else {
                "give the value the type this field takes (see config/switchyard.toml)"
            };
            errors.push(error_at(src, at, path_at(tree.get_ref(), at), message, fix));
        }
        if target.is_empty() || remove_at(pruned.get_mut(), &target).is_none() {
            break;
        }
        removed.push(target);
        let de = toml::de::Deserializer::from(pruned.clone());
        match <raw::RawConfig as serde::Deserialize>::deserialize(de) {
            Ok(_) => break,
            Err(next) => e = next,
        }
    }
    errors.sort_by_key(|e| (e.line, e.col));
    errors.dedup();
    (None, errors)
}

/// How many shape errors one reading reports at most.
const MAX_SHAPE_ERRORS: usize = 100;

/// The longest prefix of `segs` whose value's span covers `span` (the table a missing field
/// belongs in).
fn container_of(table: &DeTable<'_>, segs: &[Seg], span: std::ops::Range<usize>) -> Vec<Seg> {
    let mut best = segs.to_vec();
    for n in (1..=segs.len()).rev() {
        if value_span(table, &segs[..n]).is_some_and(|s| s.start <= span.start && span.end <= s.end) {
            best = segs[..n].to_vec();
            break;
        }
    }
    best
}

fn value_span(table: &DeTable<'_>, segs: &[Seg]) -> Option<std::ops::Range<usize>> {
    let (Seg::Key(k), rest) = segs.split_first()? else {
        return None;
    };
    let (_, value) = table.iter().find(|(key, _)| key.get_ref() == k)?;
    let mut v = value;
    for s in rest {
        v = match (v.get_ref(), s) {
            (DeValue::Table(t), Seg::Key(k)) => t.iter().find(|(key, _)| key.get_ref() == k)?.1,
            (DeValue::Array(items), Seg::Index(i)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(v.span())
}

/// Takes the value `segs` names out of `table`; its span.
fn remove_at(table: &mut DeTable<'_>, segs: &[Seg]) -> Option<std::ops::Range<usize>> {
    let (Seg::Key(k), rest) = segs.split_first()? else {
        return None;
    };
    if rest.is_empty() {
        let mut span = None;
        for (key, value) in std::mem::take(table) {
            if span.is_none() && key.get_ref() == k {
                span = Some(value.span());
            } else {
                table.insert(key, value);
            }
        }
        return span;
    }
    let (_, value) = table.iter_mut().find(|(key, _)| key.get_ref() == k)?;
    remove_in(value.get_mut(), rest)
}

fn remove_in(value: &mut DeValue<'_>, segs: &[Seg]) -> Option<std::ops::Range<usize>> {
    match (value, segs.first()?) {
        (DeValue::Table(t), Seg::Key(_)) => remove_at(t, segs),
        (DeValue::Array(items), Seg::Index(i)) => {
            if segs.len() == 1 {
                if *i >= items.len() {
                    return None;
                }
                let mut span = None;
                let old = std::mem::replace(items, std::iter::empty().collect());
                let kept: Vec<_> = old
                    .into_iter()
                    .enumerate()
                    .filter_map(|(n, v)| {
                        if n == *i {
                            span = Some(v.span());
                            None
                        } else {
                            Some(v)
                        }
                    })
                    .collect();
                *items = kept.into_iter().collect();
                span
            } else {
                remove_in(items.get_mut(*i)?.get_mut(), &segs[1..])
            }
        }
        _ => None,
    }
}

/// A [`ConfigError`] at byte offset `at` of `src`.
pub(crate) fn error_at(
    src: &str,
    at: usize,
    path: String,
    message: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    let (line, col) = position(src, at);
    ConfigError {
        line,
        col,
        path,
        message: message.into(),
        fix: fix.into(),
    }
}

/// 1-based line and character column of a byte offset.
pub(crate) fn position(src: &str, at: usize) -> (usize, usize) {
    let at = at.min(src.len());
    let before = &src[..src.floor_char_boundary_compat(at)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, at: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut at: usize) -> usize {
        while !self.is_char_boundary(at) {
            at -= 1;
        }
        at
    }
}

/// One step of a field path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

impl fmt::Display for Seg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seg::Key(k) => f.write_str(k),
            Seg::Index(i) => write!(f, "{i}"),
        }
    }
}

fn format_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// serde_ignored's path, without the private keys `Spanned` uses to carry positions.
fn segments(path: &serde_ignored::Path<'_>) -> Vec<Seg> {
    use serde_ignored::Path;
    let mut out = match path {
        Path::Root => return Vec::new(),
        Path::Seq { parent, .. }
        | Path::Map { parent, .. }
        | Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => segments(parent),
    };
    match path {
        Path::Seq { index, .. } => out.push(Seg::Index(*index)),
        Path::Map { key, .. } if !key.starts_with("$__serde_spanned") => out.push(Seg::Key(key.clone())),
        _ => {}
    }
    out
}

/// Byte offset of the key (or array item) that `segs` names.
fn key_offset(table: &DeTable<'_>, segs: &[Seg]) -> Option<usize> {
    let (first, rest) = segs.split_first()?;
    let Seg::Key(k) = first else { return None };
    let (key, value) = table.iter().find(|(key, _)| key.get_ref() == k)?;
    if rest.is_empty() {
        return Some(key.span().start);
    }
    value_offset(value, rest).or(Some(key.span().start))
}

fn value_offset(value: &Spanned<DeValue<'_>>, segs: &[Seg]) -> Option<usize> {
    match (value.get_ref(), segs.first()?) {
        (DeValue::Table(t), Seg::Key(_)) => key_offset(t, segs),
        (DeValue::Array(items), Seg::Index(i)) => {
            let item = items.get(*i)?;
            if segs.len() == 1 {
                Some(item.span().start)
            } else {
                value_offset(item, &segs[1..]).or(Some(item.span().start))
            }
        }
        _ => None,
    }
}

/// The field path of the innermost key whose key or value covers byte offset `at`. Containers
/// are searched whatever their own span says: an array of tables (`[[routes]]`) does not span
/// its items.
fn path_at(table: &DeTable<'_>, at: usize) -> String {
    format_path(&find_in_table(table, at).unwrap_or_default())
}

fn find_in_table(table: &DeTable<'_>, at: usize) -> Option<Vec<Seg>> {
    table.iter().find_map(|(key, value)| {
        let here = key.span().contains(&at) || value.span().contains(&at);
        let inner = find_in_value(value, at);
        (here || inner.is_some()).then(|| {
            let mut segs = vec![Seg::Key(key.get_ref().to_string())];
            segs.extend(inner.unwrap_or_default());
            segs
        })
    })
}

fn find_in_value(value: &Spanned<DeValue<'_>>, at: usize) -> Option<Vec<Seg>> {
    match value.get_ref() {
        DeValue::Table(t) => find_in_table(t, at),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let inner = find_in_value(item, at);
            (item.span().contains(&at) || inner.is_some()).then(|| {
                let mut segs = vec![Seg::Index(i)];
                segs.extend(inner.unwrap_or_default());
                segs
            })
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_a_fleet_a_rollout_step_outlasts_four_fleet_intervals() {
        let src = |every: &str| {
            format!(
                "[listen]\nhttp = \"127.0.0.1:0\"\n[fleet]\nname = \"t\"\nprometheus = \"http://p:9090\"\ninterval = \"5s\"\n\
                 [pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.canary]\nendpoints = [\"127.0.0.1:2\"]\n\
                 [[routes]]\nname = \"web\"\nsplit = {{ blue = 100, canary = 0 }}\nguard = {{ baseline = \"blue\" }}\n\
                 rollout = {{ pool = \"canary\", steps = [10, 100], every = \"{every}\" }}\n"
            )
        };
        let Err(LoadError::Invalid(Diagnostics { errors, .. })) = load_str(&src("19s"), Path::new("t.toml"))
        else {
            panic!("19 s steps with a 5 s fleet interval were accepted");
        };
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "routes[0].rollout.every");
        assert!(
            errors[0].message.contains("4 × fleet.interval (20s)"),
            "{errors:?}"
        );
        assert!(load_str(&src("20s"), Path::new("t.toml")).is_ok());
        // Without [fleet], any step length.
        let alone = src("1s").replace(
            "[fleet]\nname = \"t\"\nprometheus = \"http://p:9090\"\ninterval = \"5s\"\n",
            "",
        );
        assert!(load_str(&alone, Path::new("t.toml")).is_ok());
    }

    #[test]
    fn a_fleet_needs_a_name_and_a_sane_interval() {
        let src = |fleet: &str| {
            format!("[listen]\nhttp = \"127.0.0.1:0\"\n[pools.a]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"a\"\nsplit = {{ a = 100 }}\n[fleet]\nprometheus = \"http://p:9090\"\n{fleet}")
        };
        let errors = |fleet: &str| match load_str(&src(fleet), Path::new("t.toml")) {
            Err(LoadError::Invalid(Diagnostics { errors, .. })) => errors
                .iter()
                .map(|e| format!("{} {}", e.path, e.message))
                .collect::<Vec<_>>(),
            Ok(_) => Vec::new(),
            Err(e) => vec![e.to_string()],
        };
        assert_eq!(errors(""), ["fleet.name a fleet needs a name"]);
        assert_eq!(
            errors("name = \"shop prod\"\n"),
            ["fleet.name `shop prod` is not a fleet name"]
        );
        assert!(errors("name = \"shop-prod\"\n").is_empty());
        assert_eq!(
            errors("name = \"p\"\ninterval = \"1ms\"\n"),
            ["fleet.interval must be between 500ms and 5m"]
        );
        assert_eq!(
            errors("name = \"p\"\ninterval = \"1h\"\n"),
            ["fleet.interval must be between 500ms and 5m"]
        );
        assert_eq!(
            errors("name = \"p\"\nquery_timeout = \"1ms\"\n"),
            ["fleet.query_timeout must be between 100ms and 60s"]
        );
    }

    #[test]
    fn positions_are_one_based_lines_and_char_columns() {
        let src = "a = 1\nb = \"é\" x\n";
        assert_eq!(position(src, 0), (1, 1));
        assert_eq!(position(src, 6), (2, 1));
        assert_eq!(position(src, src.find('x').unwrap()), (2, 9));
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_path_and_line() {
        let src = "[listen]\nhttp = \"127.0.0.1:0\"\nhtp = 1\n\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\nbalanse = \"x\"\n";
        let errs = parse(src).1;
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 2, "{shown:?}");
        assert!(
            shown[0].starts_with("3:1 listen.htp: unknown key `htp`"),
            "{shown:?}"
        );
        assert!(
            shown[1].starts_with("7:1 pools.blue.balanse: unknown key"),
            "{shown:?}"
        );
    }

    #[test]
    fn type_errors_name_the_field() {
        let src =
            "[listen]\nhttp = \"127.0.0.1:0\"\n\n[[routes]]\nname = \"web\"\nsplit = { blue = \"x\" }\n";
        let (raw, errs) = parse(src);
        assert!(raw.is_none());
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].line, 6);
        assert!(errs[0].path.starts_with("routes[0].split"), "{:?}", errs[0]);
    }

    #[test]
    fn every_type_error_is_reported_at_once_and_none_that_a_report_caused() {
        let src = "[listen]\nhttp = 8080\n[pools.blue]\nendpoints = \"127.0.0.1:1\"\n\
                   [[routes]]\nname = \"web\"\nsplit = { blue = \"fifty\" }\n\
                   [[routes]]\nsplit = { blue = 100 }\n";
        let (raw, errs) = parse(src);
        assert!(raw.is_none());
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 4, "{shown:?}");
        assert!(shown[0].starts_with("2:8 listen.http: invalid type"), "{shown:?}");
        assert!(
            shown[1].starts_with("4:13 pools.blue.endpoints: invalid type"),
            "{shown:?}"
        );
        assert!(
            shown[2].starts_with("7:18 routes[0].split.blue: invalid type"),
            "{shown:?}"
        );
        assert!(
            shown[3].starts_with("8:1 routes[1]: missing field `name`"),
            "{shown:?}"
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let errs = parse("[listen\nhttp = 1\n").1;
        assert_eq!(errs[0].line, 1);
        assert!(errs[0].fix.contains("syntax"));
    }
}
