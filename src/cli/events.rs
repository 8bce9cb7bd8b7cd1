//! `switchyard events`: the audit trail of a running proxy (`GET /api/events`), one line per
//! event — when, what, which route and pool, who, and what it did. `--follow` prints new events
//! as they come.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use super::AdminTarget;

/// What to ask for.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub route: Option<String>,
    pub kinds: Vec<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<usize>,
}

impl Query {
    /// The API path and query string, events numbered above `after` only when given.
    pub fn path(&self, after: Option<u64>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(r) = &self.route {
            q.append_pair("route", r);
        }
        if !self.kinds.is_empty() {
            q.append_pair("kind", &self.kinds.join(","));
        }
        if let Some(s) = &self.since {
            q.append_pair("since", s);
        }
        if let Some(u) = &self.until {
            q.append_pair("until", u);
        }
        if let Some(l) = self.limit {
            q.append_pair("limit", &l.to_string());
        }
        if let Some(a) = after {
            q.append_pair("after", &a.to_string());
        }
        format!("/api/events?{}", q.finish())
    }
}

/// One line per event: `2026-12-07T16:40:01.250Z  rollback  web  every user goes to blue (by …)`.
pub fn render(answer: &Value) -> String {
    let mut s = String::new();
    for e in answer["events"].as_array().into_iter().flatten() {
        let route = e["route"].as_str().unwrap_or("-");
        let _ = writeln!(
            s,
            "{}  {:<17} {:<16} {}",
            e["at"].as_str().unwrap_or("-"),
            e["kind"].as_str().unwrap_or("-"),
            route,
            e["text"].as_str().unwrap_or("")
        );
    }
    s
}

/// What to say after the events: how many more matched, and a trail that is not on disk.
pub fn footer(answer: &Value) -> String {
    let mut s = String::new();
    let shown = answer["events"].as_array().map_or(0, Vec::len) as u64;
    let matched = answer["matched"].as_u64().unwrap_or(0);
    if matched == 0 {
        s.push_str("no events matched\n");
    } else if matched > shown {
        let _ = writeln!(
            s,
            "({} older event(s) matched: raise --limit to see them)",
            matched - shown
        );
    }
    if let Some(e) = answer["file"]["error"].as_str() {
        let _ = writeln!(
            s,
            "warning: the trail cannot be written to its file ({e}): it is in memory only"
        );
    }
    s
}

/// Prints the trail; with `follow`, then every new event until interrupted.
pub async fn run(admin: &AdminTarget, q: &Query, json: bool, follow: bool) -> anyhow::Result<()> {
    let answer = admin.get(&q.path(None)).await?;
    if json && !follow {
        super::print(&format!("{}\n", serde_json::to_string_pretty(&answer)?))?;
        return Ok(());
    }
    let print_events = |a: &Value| -> anyhow::Result<()> {
        if json {
            for e in a["events"].as_array().into_iter().flatten() {
                super::print(&format!("{e}\n"))?;
            }
            Ok(())
        } else {
            Ok(super::print(&render(a))?)
        }
    };
    print_events(&answer)?;
    if !follow {
        super::print(&footer(&answer))?;
        return Ok(());
    }
    let mut after = answer["next_seq"].as_u64().unwrap_or(0).checked_sub(1);
    let live = Query {
        limit: None,
        since: None,
        until: None,
        ..q.clone()
    };
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let a = admin.get(&live.path(after)).await?;
        print_events(&a)?;
        if let Some(next) = a["next_seq"].as_u64() {
            after = next.checked_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_encoded() {
        let q = Query {
            route: Some("a b&c".into()),
            kinds: vec!["trip".into(), "rollback".into()],
            since: Some("1h".into()),
            ..Query::default()
        };
        assert_eq!(
            q.path(Some(7)),
            "/api/events?route=a+b%26c&kind=trip%2Crollback&since=1h&after=7"
        );
    }

    #[test]
    fn lines_and_footer() {
        let a = serde_json::json!({
            "events": [
                { "seq": 3, "at": "2026-12-07T16:40:01.250Z", "kind": "rollback", "route": "web", "text": "every user goes to blue" },
                { "seq": 4, "at": "2026-12-07T16:41:00.000Z", "kind": "reload", "text": "config reloaded" },
            ],
            "matched": 5,
            "file": { "error": null },
        });
        assert_eq!(
            render(&a),
            "2026-12-07T16:40:01.250Z  rollback          web              every user goes to blue\n\
             2026-12-07T16:41:00.000Z  reload            -                config reloaded\n"
        );
        assert_eq!(
            footer(&a),
            "(3 older event(s) matched: raise --limit to see them)\n"
        );
    }
}
