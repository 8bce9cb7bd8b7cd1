//! Comparing a shadow's answer with the primary's: the status, the header fields not ignored,
//! and the body — JSON-aware when both are JSON (key order and whitespace do not matter, the
//! `ignore` paths are removed first), bytes otherwise.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use serde_json::Value as Json;

/// What the comparison looks at of one answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body went past the capture limit: only its first bytes are here.
    pub truncated: bool,
}

/// How two answers differ, in the order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Status,
    Header,
    Body,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Header => "header",
            Kind::Body => "body",
        }
    }
}

/// One step of a JSON path: `.key`, `[N]`, `[*]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
    Any,
}

/// Parses `$.a.b[*].c` / `$.items[0]` / `$['odd key']`.
pub fn parse_path(text: &str) -> Result<Vec<Step>, String> {
    let rest = text
        .strip_prefix('$')
        .ok_or_else(|| format!("`{text}` does not start with $"))?;
    let b = rest.as_bytes();
    let mut i = 0;
    let mut steps = Vec::new();
    while i < b.len() {
        match b[i] {
            b'.' => {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && b[end] != b'.' && b[end] != b'[' {
                    end += 1;
                }
                if end == start {
                    return Err(format!("`{text}`: an empty key"));
                }
                let key = &rest[start..end];
                steps.push(if key == "*" {
                    Step::Any
                } else {
                    Step::Key(key.to_owned())
                });
                i = end;
            }
            b'[' => {
                let close = rest[i..]
                    .find(']')
                    .ok_or_else(|| format!("`{text}`: a [ without ]"))?
                    + i;
                let inner = rest[i + 1..close].trim();
                let step = if inner == "*" {
                    Step::Any
                } else if let Some(q) = inner.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
                    Step::Key(q.to_owned())
                } else if let Some(q) = inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    Step::Key(q.to_owned())
                } else {
                    Step::Index(
                        inner
                            .parse()
                            .map_err(|_| format!("`{text}`: `[{inner}]` is not an index"))?,
                    )
                };
                steps.push(step);
                i = close + 1;
            }
            _ => return Err(format!("`{text}`: expected . or [ at `{}`", &rest[i..])),
        }
    }
    if steps.is_empty() {
        return Err(format!("`{text}` names the whole body"));
    }
    Ok(steps)
}

/// Removes what `path` names from `v`.
fn remove(v: &mut Json, path: &[Step]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match (first, v) {
        (Step::Key(k), Json::Object(m)) => {
            if rest.is_empty() {
                m.remove(k);
            } else if let Some(x) = m.get_mut(k) {
                remove(x, rest);
            }
        }
        (Step::Index(n), Json::Array(a)) => {
            if rest.is_empty() {
                if *n < a.len() {
                    a[*n] = Json::Null;
                }
            } else if let Some(x) = a.get_mut(*n) {
                remove(x, rest);
            }
        }
        (Step::Any, Json::Array(a)) => {
            if rest.is_empty() {
                a.iter_mut().for_each(|x| *x = Json::Null);
            } else {
                a.iter_mut().for_each(|x| remove(x, rest));
            }
        }
        (Step::Any, Json::Object(m)) => {
            if rest.is_empty() {
                m.clear();
            } else {
                m.values_mut().for_each(|x| remove(x, rest));
            }
        }
        _ => {}
    }
}

/// The first place `a` and `b` differ, as `$.path: a ≠ b` (values shortened).
fn first_difference(a: &Json, b: &Json, at: &mut String) -> Option<String> {
    let short = |v: &Json| {
        let s = v.to_string();
        if s.len() > 60 {
            let mut end = 60;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &s[..end])
        } else {
            s
        }
    };
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let len = at.len();
                at.push('.');
                at.push_str(k);
                let found = match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_difference(p, q, at),
                    (Some(p), None) => Some(format!("{at}: {} ≠ (absent)", short(p))),
                    (None, Some(q)) => Some(format!("{at}: (absent) ≠ {}", short(q))),
                    (None, None) => None,
                };
                if found.is_some() {
                    return found;
                }
                at.truncate(len);
            }
            None
        }
        (Json::Array(x), Json::Array(y)) => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                let len = at.len();
                at.push_str(&format!("[{i}]"));
                if let Some(f) = first_difference(p, q, at) {
                    return Some(f);
                }
                at.truncate(len);
            }
            (x.len() != y.len()).then(|| format!("{at}: {} items ≠ {} items", x.len(), y.len()))
        }
        _ => (a != b).then(|| format!("{at}: {} ≠ {}", short(a), short(b))),
    }
}

/// Header fields never compared: they differ between any two answers, or frame the message.
const ALWAYS_IGNORED: [&str; 8] = [
    "date",
    "x-request-id",
    "via",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "x-switchyard-error",
];

/// What to leave out of the comparison.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    pub headers: Vec<HeaderName>,
    pub paths: Vec<Vec<Step>>,
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            let t = t.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            t == "application/json" || t.ends_with("+json")
        })
}

/// Compares the shadow's answer with the primary's: `None` when they agree, else the first
/// kind of difference and a short description of it.
pub fn compare(primary: &Answer, shadow: &Answer, ignore: &Ignore) -> Option<(Kind, String)> {
    if primary.status != shadow.status {
        return Some((
            Kind::Status,
            format!("status {} ≠ {}", primary.status.as_u16(), shadow.status.as_u16()),
        ));
    }
    let skip = |n: &HeaderName| ALWAYS_IGNORED.contains(&n.as_str()) || ignore.headers.contains(n);
    let mut names: Vec<&HeaderName> = primary
        .headers
        .keys()
        .chain(shadow.headers.keys())
        .filter(|n| !skip(n))
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    for n in names {
        let a: Vec<&[u8]> = primary.headers.get_all(n).iter().map(|v| v.as_bytes()).collect();
        let b: Vec<&[u8]> = shadow.headers.get_all(n).iter().map(|v| v.as_bytes()).collect();
        if a != b {
            let show = |v: &[&[u8]]| {
                if v.is_empty() {
                    "(absent)".to_owned()
                } else {
                    v.iter()
                        .map(|x| String::from_utf8_lossy(x).into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            return Some((Kind::Header, format!("{n}: {} ≠ {}", show(&a), show(&b))));
        }
    }
    if primary.truncated != shadow.truncated {
        return Some((
            Kind::Body,
            "one body is longer than the compared limit, the other is not".into(),
        ));
    }
    if is_json(&primary.headers) && is_json(&shadow.headers) && !primary.truncated {
        if let (Ok(mut a), Ok(mut b)) = (
            serde_json::from_slice::<Json>(&primary.body),
            serde_json::from_slice::<Json>(&shadow.body),
        ) {
            for p in &ignore.paths {
                remove(&mut a, p);
                remove(&mut b, p);
            }
            let mut at = String::from("$");
            return first_difference(&a, &b, &mut at).map(|d| (Kind::Body, d));
        }
    }
    if primary.body != shadow.body {
        let at = primary
            .body
            .iter()
            .zip(shadow.body.iter())
            .position(|(x, y)| x != y)
            .unwrap_or(primary.body.len().min(shadow.body.len()));
        return Some((
            Kind::Body,
            format!(
                "bytes differ from offset {at} ({} bytes ≠ {} bytes)",
                primary.body.len(),
                shadow.body.len()
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any text: the path parser answers without a panic.
        #[test]
        fn any_path_parses_or_not_without_a_panic(t in "\\PC{0,40}") {
            let _ = parse_path(&t);
        }
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: h,
            body: Bytes::from(body.to_owned()),
            truncated: false,
        }
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn json_bodies_compare_by_value_without_ignored_paths() {
        let ignore = Ignore {
            headers: vec![HeaderName::from_static("x-build")],
            paths: ["$.generated_at", "$.items[*].id"]
                .iter()
                .map(|p| parse_path(p).unwrap())
                .collect(),
        };
        let a = answer(
            200,
            &[JSON, ("x-build", "1")],
            r#"{"total": 2, "generated_at": 1, "items": [{"id": 7, "n": "a"}]}"#,
        );
        let reordered = answer(
            200,
            &[JSON, ("x-build", "2")],
            r#"{ "items":[{"n":"a","id":9}], "total":2, "generated_at": 5 }"#,
        );
        assert_eq!(compare(&a, &reordered, &ignore), None);
        let other = answer(
            200,
            &[JSON],
            r#"{"total": 3, "generated_at": 1, "items": [{"id": 7, "n": "a"}]}"#,
        );
        assert_eq!(
            compare(&a, &other, &ignore),
            Some((Kind::Body, "$.total: 2 ≠ 3".into()))
        );
        let nested = answer(200, &[JSON], r#"{"total": 2, "items": [{"id": 1, "n": "b"}]}"#);
        assert_eq!(
            compare(&a, &nested, &ignore),
            Some((Kind::Body, "$.items[0].n: \"a\" ≠ \"b\"".into()))
        );
    }

    #[test]
    fn status_then_headers_then_bytes() {
        let ignore = Ignore::default();
        let a = answer(200, &[("x-v", "1"), ("date", "Mon")], "hello");
        assert_eq!(
            compare(&a, &answer(500, &[], "hello"), &ignore).unwrap().0,
            Kind::Status
        );
        assert_eq!(
            compare(
                &a,
                &answer(200, &[("x-v", "2"), ("date", "Tue")], "hello"),
                &ignore
            ),
            Some((Kind::Header, "x-v: 1 ≠ 2".into()))
        );
        assert_eq!(
            compare(&a, &answer(200, &[("x-v", "1")], "hellO"), &ignore)
                .unwrap()
                .0,
            Kind::Body
        );
        assert_eq!(
            compare(
                &a,
                &answer(200, &[("x-v", "1"), ("date", "Wed")], "hello"),
                &ignore
            ),
            None,
            "date is never compared"
        );
    }

    #[test]
    fn paths_parse() {
        assert_eq!(
            parse_path("$.a.b").unwrap(),
            vec![Step::Key("a".into()), Step::Key("b".into())]
        );
        assert_eq!(
            parse_path("$.items[*].id").unwrap(),
            vec![Step::Key("items".into()), Step::Any, Step::Key("id".into())]
        );
        assert_eq!(
            parse_path("$['odd key'][2]").unwrap(),
            vec![Step::Key("odd key".into()), Step::Index(2)]
        );
        for bad in ["a.b", "$", "$.", "$[x]", "$[1"] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
    }
}
