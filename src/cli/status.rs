//! `switchyard status`: the live view of a running proxy, from its admin API — the config's
//! revision and reloads, the state file, each route's configured and effective split, trips,
//! rollout steps with the time to the next one, guard figures, and each pool's endpoints.
//! `--watch` redraws it in place every two seconds.

use std::fmt::Write;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::AdminTarget;

/// What `status` shows, as read from the admin API.
pub struct View {
    pub config: Value,
    pub routes: Value,
    pub pools: Value,
    /// `GET /api/fleet`.
    pub fleet: Value,
}

impl View {
    pub async fn fetch(admin: &AdminTarget) -> anyhow::Result<View> {
        Ok(View {
            config: admin.get("/api/config").await?,
            routes: admin.get("/api/routes").await?,
            pools: admin.get("/api/pools").await?,
            fleet: admin.get("/api/fleet").await?,
        })
    }

    pub fn json(&self) -> Value {
        serde_json::json!({ "config": self.config, "routes": self.routes, "pools": self.pools, "fleet": self.fleet })
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_owned()
}

/// A duration as people read it: `4m 12s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// When a rollout's next step comes: `since` plus `every`, if the guard passes then.
fn next_step(rollout: &Value, now: SystemTime) -> Option<String> {
    let steps = rollout["steps"].as_array()?.len();
    let step = rollout["step"].as_u64()? as usize;
    if step + 1 >= steps {
        return Some("at its last step: the rollout is done".to_owned());
    }
    let since = humantime::parse_rfc3339_weak(rollout["since"].as_str()?).ok()?;
    let due = since + Duration::from_secs_f64(rollout["every_s"].as_f64()?);
    Some(match due.duration_since(now) {
        Ok(left) => format!(
            "next step ({}%) in {} if the guard passes",
            rollout["steps"][step + 1],
            human(left)
        ),
        Err(_) => format!(
            "next step ({}%) due now, once the guard has a passing verdict",
            rollout["steps"][step + 1]
        ),
    })
}

/// The `status` table at `now`.
/// A guard's checks, a line per check and pool: the value, the baseline's, the verdict and
/// failures in a row; then why the rollout waits, if it does.
/// A route's sessions: per pool, requests by pin and by split and whether a pin on it may
/// still be honoured; then the pins ended, by reason.
fn sessions(session: &Value, now_ms: u64) -> String {
    let mut s = String::new();
    if session.is_null() {
        return s;
    }
    let _ = writeln!(
        s,
        "{:<16}   session cookie {} (idle {}, max_age {})",
        "",
        text(&session["cookie"]),
        human(Duration::from_secs(session["idle_s"].as_u64().unwrap_or(0))),
        human(Duration::from_secs(session["max_age_s"].as_u64().unwrap_or(0)))
    );
    let mut ended: Vec<String> = Vec::new();
    for p in session["pools"].as_array().into_iter().flatten() {
        let until = p["pins_valid_until_ms"].as_u64().unwrap_or(0);
        let drain = if p["drained"].as_bool() == Some(true) {
            "no session left".to_owned()
        } else {
            format!(
                "pins may last {} more",
                human(Duration::from_millis(until.saturating_sub(now_ms)).max(Duration::from_secs(1)))
            )
        };
        let _ = writeln!(
            s,
            "{:<16}   session {:<10} {:>8} by pin {:>8} by split  {drain}",
            "",
            text(&p["pool"]),
            p["by_pin"].as_u64().unwrap_or(0),
            p["by_split"].as_u64().unwrap_or(0),
        );
        for (reason, n) in p["ended"].as_object().into_iter().flatten() {
            if let Some(n) = n.as_u64().filter(|&n| n > 0) {
                ended.push(format!("{} {reason} {n}", text(&p["pool"])));
            }
        }
    }
    for (key, label) in [("ended_removed", "removed"), ("ended_forged", "forged")] {
        if let Some(n) = session[key].as_u64().filter(|&n| n > 0) {
            ended.push(format!("{label} {n}"));
        }
    }
    if !ended.is_empty() {
        let _ = writeln!(s, "{:<16}   session pins ended: {}", "", ended.join(", "));
    }
    s
}

fn checks(guard: &Value) -> String {
    let mut s = String::new();
    let num = |v: &Value| v.as_f64().map_or("no data".to_owned(), |v| format!("{v:.4}"));
    for c in guard["checks"].as_array().into_iter().flatten() {
        for p in c["pools"].as_array().into_iter().flatten() {
            let verdict = match p["verdict"].as_str() {
                None => "not run yet".to_owned(),
                Some("fail") => format!(
                    "fail {}/{}: {}",
                    p["failures"].as_u64().unwrap_or(0),
                    p["failure_limit"].as_u64().unwrap_or(0),
                    text(&p["reason"])
                ),
                Some(v) if p["reason"].is_string() => format!("{v}: {}", text(&p["reason"])),
                Some(v) => v.to_owned(),
            };
            let compared = if p["baseline"].as_bool() == Some(true) {
                "(baseline)".to_owned()
            } else {
                format!("vs {}", num(&p["baseline_value"]))
            };
            let _ = writeln!(
                s,
                "{:<16}   check {:<16} {:<10} {:>10} {:<14} {verdict}",
                "",
                text(&c["name"]),
                text(&p["pool"]),
                num(&p["value"]),
                compared
            );
        }
    }
    if let Some(w) = guard["rollout_waits"].as_str() {
        let _ = writeln!(s, "{:<16}   {w}", "");
    }
    s
}

pub fn render(view: &View, now: SystemTime) -> String {
    let (config, routes) = (&view.config, &view.routes);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "config    revision {}  loaded {}",
        text(&config["revision"]),
        text(&config["loaded_at"])
    );
    if let Some(last) = config.get("last_reload").filter(|v| !v.is_null()) {
        let _ = writeln!(
            s,
            "          last reload: {} at {}",
            text(&last["result"]),
            text(&last["at"])
        );
    }
    if let Some(err) = config.get("last_error").filter(|v| !v.is_null()) {
        let first = text(&err["error"]).lines().next().unwrap_or_default().to_owned();
        let _ = writeln!(s, "          last failed reload at {}: {first}", text(&err["at"]));
    }
    let state = &config["state"];
    if let Some(path) = state["path"].as_str() {
        let _ = writeln!(s, "state     {path}");
    }
    if let Some(err) = state.get("load_error").filter(|v| !v.is_null()) {
        let held: Vec<String> = err["held"].as_array().into_iter().flatten().map(text).collect();
        let _ = writeln!(
            s,
            "          UNREADABLE at start ({}): {}; held at their baselines until reset: {}",
            text(&err["error"]),
            err["kept_aside"]
                .as_str()
                .map_or("left in place, not written".to_owned(), |a| format!(
                    "kept as {a}"
                )),
            if held.is_empty() {
                "none".to_owned()
            } else {
                held.join(", ")
            }
        );
    }
    if let Some(err) = state.get("save_error").filter(|v| !v.is_null()) {
        let _ = writeln!(
            s,
            "          NOT SAVED since {}: {} (trips and rollout steps will not survive a restart{})",
            text(&err["at"]),
            text(&err["error"]),
            if err["retrying"] == true { "; retrying" } else { "" }
        );
    }
    if let Some(err) = state.get("experiments_error").filter(|v| !v.is_null()) {
        let _ = writeln!(
            s,
            "          experiments' counts NOT SAVED since {}: {}; retrying",
            text(&err["at"]),
            text(&err["error"])
        );
    }
    if let Some(err) = state.get("experiments_load_error").filter(|v| !v.is_null()) {
        let _ = writeln!(s, "          experiments' counts DAMAGED at start: {}", text(err));
    }
    if let Some(src) = config.get("flags_source").filter(|v| !v.is_null()) {
        let line = if src["up"].as_bool() == Some(true) {
            format!(
                "{}: answering (last {})",
                text(&src["url"]),
                text(&src["last_answer"])
            )
        } else {
            format!(
                "{}: FAILING since {}: {}; serving {}",
                text(&src["url"]),
                text(&src["failing_since"]),
                text(&src["error"]),
                text(&src["serving"])
            )
        };
        let _ = writeln!(s, "flags     {line}");
    }
    let fleet = &view.fleet;
    if let Some(prometheus) = fleet["prometheus"].as_str() {
        let line = match fleet["up"].as_bool() {
            Some(true) => format!(
                "{prometheus}: {} replicas; judging fleet and local numbers; this is {}{}",
                fleet["replicas"],
                text(&fleet["replica"]),
                match fleet["notifier"].as_str() {
                    Some(n) if Some(n) == fleet["replica"].as_str() =>
                        ", which sends the fleet's webhooks".to_owned(),
                    Some(n) => format!(" ({n} sends the fleet's webhooks)"),
                    None => String::new(),
                }
            ),
            Some(false) => format!(
                "{prometheus} DOES NOT ANSWER ({}); judging local numbers only",
                text(&fleet["error"])
            ),
            None => format!("{prometheus}: not asked yet"),
        };
        let _ = writeln!(s, "fleet     {line}");
        if fleet["held"].as_bool() == Some(true) {
            let _ = writeln!(
                s,
                "          GUARDED ROUTES HELD AT THEIR BASELINES until the fleet answers (this replica has not heard its state since start)"
            );
        }
    }
    let _ = writeln!(
        s,
        "\n{:<16} {:<12} {:>7} {:>11} {:>10}",
        "ROUTE", "POOL", "WEIGHT", "CONFIGURED", "EFFECTIVE"
    );
    for r in routes.as_array().into_iter().flatten() {
        let name = text(&r["name"]);
        if r["tripped"].as_bool() == Some(true) {
            for t in r["trips"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    s,
                    "{name}: TRIPPED {} at {}: {}",
                    text(&t["pool"]),
                    text(&t["at"]),
                    text(&t["reason"])
                );
            }
        }
        if let Some(ro) = r.get("rollout").filter(|v| !v.is_null()) {
            let _ = writeln!(
                s,
                "{name}: rollout of {} at step {} of {} ({}%){}",
                text(&ro["pool"]),
                ro["step"].as_u64().unwrap_or(0) + 1,
                ro["steps"].as_array().map_or(0, Vec::len),
                ro["percent"].as_u64().unwrap_or(0),
                match (r["tripped"].as_bool(), next_step(ro, now)) {
                    (Some(true), _) => "; aborted by the trip until reset".to_owned(),
                    (_, Some(next)) => format!("; {next}"),
                    _ => String::new(),
                }
            );
        }
        if let Some(m) = r.get("mirror").filter(|v| !v.is_null()) {
            let counts: Vec<String> = m["counts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c[1].as_u64().unwrap_or(0) > 0)
                .map(|c| format!("{} {}", text(&c[0]), c[1]))
                .collect();
            let _ = writeln!(
                s,
                "{name}: mirrors {}% to {}{}: {}",
                m["percent"],
                text(&m["pool"]),
                match (m["mismatch_rate"].as_f64(), m["current_mismatch_rate"].as_f64()) {
                    (Some(all), Some(now)) if all != now => format!(
                        " (mismatch rate {:.2}% since its settings changed, {:.2}% since start)",
                        now * 100.0,
                        all * 100.0
                    ),
                    (Some(rate), _) => format!(" (mismatch rate {:.2}%)", rate * 100.0),
                    _ => String::new(),
                },
                if counts.is_empty() {
                    "nothing mirrored yet".to_owned()
                } else {
                    counts.join(", ")
                }
            );
            for x in m["recent"].as_array().into_iter().flatten().rev().take(3) {
                let _ = writeln!(
                    s,
                    "    {} {} {} {}: {}",
                    text(&x["at"]),
                    text(&x["kind"]),
                    text(&x["method"]),
                    text(&x["path"]),
                    text(&x["diff"])
                );
            }
        }
        let effective = r["effective"].as_array().cloned().unwrap_or_default();
        for (i, p) in r["configured"].as_array().into_iter().flatten().enumerate() {
            // The effective split lists the same pools; matched by name, not position.
            let eff = effective
                .iter()
                .find(|e| e["pool"] == p["pool"])
                .and_then(|e| e["share"].as_f64())
                .unwrap_or(0.0);
            let _ = writeln!(
                s,
                "{:<16} {:<12} {:>7} {:>10.1}% {:>9.1}%",
                if i == 0 { name.as_str() } else { "" },
                text(&p["pool"]),
                p["weight"].as_u64().unwrap_or(0),
                p["share"].as_f64().unwrap_or(0.0) * 100.0,
                eff * 100.0
            );
        }
        for p in r["guard"]["pools"].as_array().into_iter().flatten() {
            let f = &p["figures"];
            let verdict = if p["baseline"].as_bool() == Some(true) {
                "baseline".to_owned()
            } else if p["tripped"].as_bool() == Some(true) {
                format!("out since: {} (figures from then)", text(&p["verdict"]["reason"]))
            } else {
                text(&p["verdict"]["verdict"])
            };
            let _ = writeln!(
                s,
                "{:<16}   guard {:<10} {:>6} req {:>5} err  p99 {}  {verdict}",
                "",
                text(&p["pool"]),
                f["requests"].as_u64().unwrap_or(0),
                f["errors"].as_u64().unwrap_or(0),
                f["p99"].as_f64().map_or("-".to_owned(), |v| if v < 10.0 {
                    format!("{v:.2}ms")
                } else {
                    format!("{v:.0}ms")
                }),
            );
        }
        s.push_str(&checks(&r["guard"]));
        s.push_str(&sessions(&r["session"], crate::clock::unix_ms_of(now)));
    }
    if let Some(pools) = view.pools.as_array().filter(|p| !p.is_empty()) {
        let _ = writeln!(
            s,
            "\n{:<16} {:<24} {:<12} {:>9}",
            "POOL", "ENDPOINT", "HEALTH", "IN FLIGHT"
        );
        for p in pools {
            for (i, e) in p["endpoints"].as_array().into_iter().flatten().enumerate() {
                let health = if e["available"].as_bool() == Some(true) {
                    "up".to_owned()
                } else if let Some(left) = e["ejected_for_s"].as_f64() {
                    format!("ejected {}", human(Duration::from_secs_f64(left.ceil())))
                } else {
                    match e["check_error"].as_str() {
                        Some(why) => format!("failing checks: {why}"),
                        None => "failing checks".to_owned(),
                    }
                };
                let _ = writeln!(
                    s,
                    "{:<16} {:<24} {:<12} {:>9}",
                    if i == 0 { text(&p["name"]) } else { String::new() },
                    text(&e["address"]),
                    health,
                    e["in_flight"].as_u64().unwrap_or(0)
                );
            }
        }
    }
    s
}

/// `status --watch`: the view redrawn in place every two seconds until interrupted; an admin
/// API that stops answering is said on the screen, and the watch goes on.
pub async fn watch(admin: &AdminTarget) -> anyhow::Result<()> {
    // The first fetch must work: a wrong address is an error, not an empty screen.
    let mut view = Some(View::fetch(admin).await?);
    loop {
        let now = SystemTime::now();
        let body = match &view {
            Some(v) => render(v, now),
            None => String::new(),
        };
        // Home, then each line cleared to its end, then the rest of the screen cleared.
        let mut frame = String::from("\x1b[H");
        let _ = writeln!(
            frame,
            "switchyard status — {} — {} (every 2s; Ctrl-C to stop)\x1b[K",
            admin.base,
            humantime::format_rfc3339_seconds(now)
        );
        for line in body.lines() {
            let _ = writeln!(frame, "{line}\x1b[K");
        }
        frame.push_str("\x1b[J");
        super::print(&frame)?;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        view = match View::fetch(admin).await {
            Ok(v) => Some(v),
            Err(e) => {
                super::print(&format!("\x1b[H\x1b[2J{:#}\n(retrying)\n", e))?;
                None
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_show_each_pools_pins_and_drain() {
        let session = serde_json::json!({
            "cookie": "sy_ver", "idle_s": 1800, "max_age_s": 43200, "ended_removed": 0, "ended_forged": 3,
            "pools": [
                {"pool": "blue", "by_pin": 1200, "by_split": 40, "drained": false, "pins_valid_until_ms": 1_000_000 + 720_000,
                 "ended": {"idle": 5, "max_age": 0, "tripped": 0, "rolled_back": 0}},
                {"pool": "green", "by_pin": 10, "by_split": 900, "drained": true, "pins_valid_until_ms": 0,
                 "ended": {"idle": 0, "max_age": 0, "tripped": 0, "rolled_back": 0}}
            ]
        });
        let s = sessions(&session, 1_000_000);
        assert!(
            s.contains("session cookie sy_ver (idle 30m 00s, max_age 12h 00m)"),
            "{s}"
        );
        assert!(
            s.contains("session blue           1200 by pin       40 by split  pins may last 12m 00s more"),
            "{s}"
        );
        assert!(
            s.contains("session green            10 by pin      900 by split  no session left"),
            "{s}"
        );
        assert!(s.contains("session pins ended: blue idle 5, forged 3"), "{s}");
        assert_eq!(sessions(&Value::Null, 0), "");
    }

    #[test]
    fn checks_show_each_pools_value_against_the_baselines() {
        let guard = serde_json::json!({
            "checks": [{"name": "checkout_success", "pools": [
                {"pool": "blue", "baseline": true, "verdict": "pass", "value": 0.99},
                {"pool": "green", "baseline": false, "verdict": "fail", "reason": "low", "failures": 1, "failure_limit": 2, "value": 0.9, "baseline_value": 0.99},
                {"pool": "late", "baseline": false, "verdict": "inconclusive", "reason": "no data for the pool", "value": null, "baseline_value": 0.99}
            ]}],
            "rollout_waits": "the rollout waits: check checkout_success is inconclusive: no data for the pool"
        });
        let out = checks(&guard);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert_eq!(
            lines[0],
            "check checkout_success blue           0.9900 (baseline)     pass"
        );
        assert_eq!(
            lines[1],
            "check checkout_success green          0.9000 vs 0.9900      fail 1/2: low"
        );
        assert_eq!(
            lines[2],
            "check checkout_success late          no data vs 0.9900      inconclusive: no data for the pool"
        );
        assert!(lines[3].starts_with("the rollout waits: check checkout_success"));
    }

    #[test]
    fn the_next_rollout_step_counts_down_from_since_plus_every() {
        let since = humantime::parse_rfc3339("2026-11-30T10:00:00Z").unwrap();
        let ro = serde_json::json!({
            "pool": "canary", "steps": [5, 25, 100], "step": 0, "percent": 5,
            "since": "2026-11-30T10:00:00Z", "every_s": 300.0
        });
        let at = |s| since + Duration::from_secs(s);
        assert_eq!(
            next_step(&ro, at(48)).unwrap(),
            "next step (25%) in 4m 12s if the guard passes"
        );
        assert!(next_step(&ro, at(301))
            .unwrap()
            .starts_with("next step (25%) due now"));
        let last = serde_json::json!({ "steps": [5, 100], "step": 1, "since": "2026-11-30T10:00:00Z", "every_s": 1.0 });
        assert_eq!(
            next_step(&last, at(0)).unwrap(),
            "at its last step: the rollout is done"
        );
    }
}
