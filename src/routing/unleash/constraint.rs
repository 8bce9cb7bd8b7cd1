//! Constraints: one context field against one operator's values, as Unleash's SDKs evaluate
//! them; and the string sets the list operators and the user-list strategies look values up in.

use std::collections::HashSet;

use super::model::Constraint;
use super::ops::{self, Cidr, Version};
use super::{Context, Field, Schema};

/// A list of strings to look a value up in.
#[derive(Debug, Clone)]
pub(super) enum Set {
    Few(Box<[Box<str>]>),
    Many(HashSet<Box<str>>),
}

impl Set {
    pub(super) fn new(values: impl IntoIterator<Item = String>) -> Set {
        let v: Vec<Box<str>> = values.into_iter().map(Into::into).collect();
        if v.len() > 8 {
            Set::Many(v.into_iter().collect())
        } else {
            Set::Few(v.into())
        }
    }

    pub(super) fn contains(&self, s: &str) -> bool {
        match self {
            Set::Few(v) => v.iter().any(|x| &**x == s),
            Set::Many(h) => h.contains(s),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Cmp {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Cmp {
    pub(super) fn holds(self, o: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Cmp::Eq => o == Equal,
            Cmp::Gt => o == Greater,
            Cmp::Gte => o != Less,
            Cmp::Lt => o == Less,
            Cmp::Lte => o != Greater,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum StrOp {
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone)]
pub(super) enum Op {
    In(Set),
    NotIn(Set),
    Str(StrOp, Box<[Box<str>]>, bool),
    Num(Cmp, Option<f64>),
    /// `true`: DATE_AFTER.
    Date(bool, Option<i64>),
    Semver(Cmp, Option<Version>),
    Regex(Option<regex::bytes::Regex>),
    Cidr(Box<[Cidr]>),
    /// An operator this engine does not know: false, whatever `inverted` says (as Unleash).
    Unknown,
}

// `REGEX` constraints are bounded so that the worst request costs microseconds, not seconds
// (before these bounds, one pattern and a 60 KB header took 9.8 s of CPU): the engine is linear
// in pattern × text, so both are capped. Classes (`\w`, `\d`, `\s`, `\b`, `[[:alpha:]]`) are
// ASCII, as in JavaScript (Unleash's Node SDK and its admin UI): Unicode's `\w` alone compiles to
// 64 KiB, ASCII's to 1 KiB. Case-insensitive matching folds ASCII letters only.

/// The longest `REGEX` pattern compiled (longer: the constraint is an error, as an invalid one).
pub const MAX_REGEX_PATTERN: usize = 512;
/// The largest compiled `REGEX` program (and lazy DFA cache), in bytes.
pub const MAX_REGEX_PROGRAM: usize = 4 * 1024;
/// The longest value a `REGEX` constraint reads; a longer one does not match (so `inverted`
/// makes it hold).
pub const MAX_REGEX_TEXT: usize = 512;

/// One compiled constraint.
#[derive(Debug, Clone)]
pub struct Cond {
    field: Field,
    op: Op,
    inverted: bool,
}

impl Cond {
    pub fn compile(c: &Constraint, schema: &mut Schema, warn: &mut Vec<String>) -> Cond {
        let field = schema.field(&c.context_name);
        // Single-value operators read `value` alone, as the SDKs do (`values` is for the
        // list operators).
        let value = c.value.as_deref();
        let ci = c.case_insensitive;
        let cmp = |s: &str| -> Option<Cmp> {
            Some(match s {
                "EQ" => Cmp::Eq,
                "GT" => Cmp::Gt,
                "GTE" => Cmp::Gte,
                "LT" => Cmp::Lt,
                "LTE" => Cmp::Lte,
                _ => return None,
            })
        };
        let strs = |values: &[String]| -> Box<[Box<str>]> {
            values
                .iter()
                .map(|v| {
                    if ci {
                        v.to_lowercase().into()
                    } else {
                        v.as_str().into()
                    }
                })
                .collect()
        };
        let op = match c.operator.as_str() {
            "IN" => Op::In(Set::new(c.values.iter().cloned())),
            "NOT_IN" => Op::NotIn(Set::new(c.values.iter().cloned())),
            "STR_CONTAINS" => Op::Str(StrOp::Contains, strs(&c.values), ci),
            "STR_STARTS_WITH" => Op::Str(StrOp::StartsWith, strs(&c.values), ci),
            "STR_ENDS_WITH" => Op::Str(StrOp::EndsWith, strs(&c.values), ci),
            "DATE_AFTER" | "DATE_BEFORE" => {
                let at = value.and_then(ops::date_ms);
                if at.is_none() {
                    warn.push(format!(
                        "DATE constraint on `{}`: `{}` is not a date",
                        c.context_name,
                        value.unwrap_or("")
                    ));
                }
                Op::Date(c.operator == "DATE_AFTER", at)
            }
            "REGEX" => {
                let pattern = value.unwrap_or("");
                let built = if pattern.len() > MAX_REGEX_PATTERN {
                    Err(format!(
                        "the pattern is {} bytes; at most {MAX_REGEX_PATTERN} are compiled",
                        pattern.len()
                    ))
                } else {
                    regex::bytes::RegexBuilder::new(pattern)
                        .unicode(false)
                        .case_insensitive(ci)
                        .size_limit(MAX_REGEX_PROGRAM)
                        .dfa_size_limit(MAX_REGEX_PROGRAM)
                        .build()
                        .map_err(|e| e.to_string())
                };
                if let Err(e) = &built {
                    warn.push(format!("REGEX constraint on `{}`: {e}", c.context_name));
                }
                Op::Regex(built.ok())
            }
            "IN_CIDR" => {
                let list: Vec<Cidr> = c
                    .values
                    .iter()
                    .filter_map(|v| {
                        let r = Cidr::parse(v);
                        if r.is_none() {
                            warn.push(format!(
                                "IN_CIDR constraint on `{}`: `{v}` is not an address range",
                                c.context_name
                            ));
                        }
                        r
                    })
                    .collect();
                Op::Cidr(list.into())
            }
            other => match other.split_once('_') {
                Some(("NUM", k)) if cmp(k).is_some() => {
                    let v = value.and_then(ops::number);
                    if v.is_none() {
                        warn.push(format!(
                            "{other} constraint on `{}`: `{}` is not a number",
                            c.context_name,
                            value.unwrap_or("")
                        ));
                    }
                    Op::Num(cmp(k).unwrap_or(Cmp::Eq), v)
                }
                Some(("SEMVER", k)) if cmp(k).is_some() => {
                    let v = value.and_then(Version::parse);
                    if v.is_none() {
                        warn.push(format!(
                            "{other} constraint on `{}`: `{}` is not a version",
                            c.context_name,
                            value.unwrap_or("")
                        ));
                    }
                    Op::Semver(cmp(k).unwrap_or(Cmp::Eq), v)
                }
                _ => {
                    warn.push(format!("`{other}` is not an operator"));
                    Op::Unknown
                }
            },
        };
        Cond {
            field,
            op,
            inverted: c.inverted,
        }
    }

    pub fn holds<C: Context + ?Sized>(&self, ctx: &C) -> bool {
        let v = ctx.get(self.field);
        let r = match &self.op {
            Op::Unknown => return false,
            Op::In(set) => v.is_some_and(|v| set.contains(v)),
            Op::NotIn(set) => !v.is_some_and(|v| set.contains(v)),
            Op::Str(kind, list, ci) => v.is_some_and(|v| {
                let lower;
                let v = if *ci {
                    lower = v.to_lowercase();
                    lower.as_str()
                } else {
                    v
                };
                list.iter().any(|x| match kind {
                    StrOp::Contains => v.contains(&**x),
                    StrOp::StartsWith => v.starts_with(&**x),
                    StrOp::EndsWith => v.ends_with(&**x),
                })
            }),
            Op::Num(cmp, want) => match (v.and_then(ops::number), want) {
                // Equality within f64::EPSILON, as yggdrasil compares.
                (Some(a), Some(b)) => match cmp {
                    Cmp::Eq => (a - b).abs() < f64::EPSILON,
                    _ => a.partial_cmp(b).is_some_and(|o| cmp.holds(o)),
                },
                _ => false,
            },
            Op::Date(after, at) => {
                let now = match self.field {
                    // Unleash compares the context's currentTime, or now when it has none.
                    Field::CurrentTime => match v {
                        Some(t) => ops::date_ms(t),
                        None => Some(ctx.now_ms()),
                    },
                    _ => v.and_then(ops::date_ms),
                };
                match (now, at) {
                    (Some(n), Some(a)) => {
                        if *after {
                            n > *a
                        } else {
                            n < *a
                        }
                    }
                    _ => false,
                }
            }
            Op::Semver(cmp, want) => match (v.and_then(Version::parse), want) {
                (Some(a), Some(b)) => cmp.holds(a.cmp(b)),
                _ => false,
            },
            // A value past the bound does not match: the worst request costs microseconds.
            Op::Regex(re) => {
                matches!((v, re), (Some(v), Some(re)) if v.len() <= MAX_REGEX_TEXT && re.is_match(v.as_bytes()))
            }
            // The address as given (a padded one is no address, as for the SDKs).
            Op::Cidr(list) => v
                .and_then(|v| v.parse().ok())
                .is_some_and(|ip| list.iter().any(|c| c.contains_exact(ip))),
        };
        r != self.inverted
    }
}
