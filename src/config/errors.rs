//! Collecting a config's errors and warnings, each with its line, column, field path and fix.

use std::time::Duration;

use toml::Spanned;

use super::compile::MAX_DURATION;
use super::{error_at, ConfigError};

/// Collects errors against one source text.
pub(super) struct Errors<'a> {
    pub(super) src: &'a str,
    pub(super) list: Vec<ConfigError>,
    /// What `check` prints as warnings: the file is valid, but something will surprise.
    pub(super) warnings: Vec<String>,
}

impl Errors<'_> {
    pub(super) fn at<T>(
        &mut self,
        value: &Spanned<T>,
        path: impl Into<String>,
        message: impl Into<String>,
        fix: &str,
    ) {
        self.list
            .push(error_at(self.src, value.span().start, path.into(), message, fix));
    }

    /// A whole percentage, 0 to 100; out of range is an error at `path` (and 0).
    pub(super) fn percent(&mut self, value: &Spanned<i64>, path: String, example: &str) -> u32 {
        match u32::try_from(*value.get_ref()) {
            Ok(v) if v <= 100 => v,
            _ => {
                self.at(
                    value,
                    path,
                    "must be between 0 and 100",
                    &format!("write a whole percentage such as {example}"),
                );
                0
            }
        }
    }

    pub(super) fn top(&mut self, path: &str, message: &str, fix: &str) {
        self.list
            .push(error_at(self.src, 0, path.to_owned(), message, fix));
    }

    pub(super) fn duration(
        &mut self,
        value: Option<&Spanned<String>>,
        path: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = value else { return default };
        match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) if d > MAX_DURATION => {
                self.at(
                    v,
                    path,
                    "must be at most 365 days",
                    "use a duration such as \"30s\"; a year is more than any timer here needs",
                );
                default
            }
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.at(
                    v,
                    path,
                    "must be positive",
                    "use a duration such as \"250ms\", \"30s\" or \"5m\"",
                );
                default
            }
            Err(e) => {
                self.at(
                    v,
                    path,
                    format!("`{}` is not a duration ({e})", v.get_ref()),
                    "use a duration such as \"250ms\", \"30s\" or \"5m\"",
                );
                default
            }
        }
    }
}

/// Names that appear in URLs, headers and metric labels.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Whether `name` can be an environment variable's name.
pub(super) fn env_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
