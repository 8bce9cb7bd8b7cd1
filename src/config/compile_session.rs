//! Compiling `[routes.session]` (version-sticky sessions), and the checks across routes and
//! the environment that the session cookies and secrets need.

use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::errors::{env_name, Errors};
use super::raw::RawSession;
use crate::routing::flags::is_token;
use crate::routing::session::{self, Session};
use crate::routing::Route;

/// A route's `[routes.session]`; errors at `path.session.*`.
pub(super) fn compile_session(
    errs: &mut Errors<'_>,
    path: &str,
    raw: &Spanned<RawSession>,
) -> Option<Arc<Session>> {
    let r = raw.get_ref();
    let before = errs.list.len();
    let cookie = match &r.cookie {
        None => session::DEFAULT_COOKIE.to_owned(),
        Some(c) if is_token(c.get_ref()) => c.get_ref().clone(),
        Some(c) => {
            errs.at(
                c,
                format!("{path}.session.cookie"),
                format!("`{}` is not a valid cookie name", c.get_ref()),
                "use letters, digits, `_` and `-`, such as \"sy_ver\"",
            );
            String::new()
        }
    };
    let idle = errs.duration(
        r.idle.as_ref(),
        &format!("{path}.session.idle"),
        session::DEFAULT_IDLE,
    );
    let max_age = errs.duration(
        r.max_age.as_ref(),
        &format!("{path}.session.max_age"),
        session::DEFAULT_MAX_AGE,
    );
    // Pins carry whole seconds.
    for (value, d, key) in [(&r.idle, idle, "idle"), (&r.max_age, max_age, "max_age")] {
        if let Some(v) = value.as_ref().filter(|_| d < Duration::from_secs(1)) {
            errs.at(
                v,
                format!("{path}.session.{key}"),
                "must be at least 1s",
                "a pin's times are whole seconds: use a duration such as \"30m\"",
            );
        }
    }
    if let Some(v) = r.max_age.as_ref().filter(|_| max_age < idle) {
        errs.at(
            v,
            format!("{path}.session.max_age"),
            format!(
                "is shorter than idle ({}): every session would end by max_age first",
                humantime::format_duration(idle)
            ),
            "make max_age at least idle, such as idle = \"30m\" and max_age = \"12h\"",
        );
    }
    let secret_env = match &r.secret_env {
        None => session::DEFAULT_SECRET_ENV.to_owned(),
        Some(v) if env_name(v.get_ref()) => v.get_ref().clone(),
        Some(v) => {
            errs.at(
                v,
                format!("{path}.session.secret_env"),
                format!("`{}` is not an environment variable's name", v.get_ref()),
                "use letters, digits and _, such as SWITCHYARD_SESSION_SECRET",
            );
            String::new()
        }
    };
    let key = std::env::var(&secret_env)
        .ok()
        .filter(|s| s.len() >= session::MIN_SECRET_BYTES)
        .map(|s| Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes())));
    (errs.list.len() == before).then(|| {
        Arc::new(Session {
            cookie,
            idle,
            max_age,
            secret_env,
            key,
            id: session::next_id(),
        })
    })
}

/// Session cookies that would collide: with the identity cookie, with the route's override
/// cookie, or with another route's session cookie where a browser would send both routes the
/// same cookie (their hosts may be the same). Errors at the routes' `session`.
pub(super) fn check_cookies(
    errs: &mut Errors<'_>,
    routes: &[Route],
    raw: &[Spanned<super::raw::RawRoute>],
    identity_cookie: &str,
) {
    let at = |r: &Route| raw.iter().position(|x| *x.get_ref().name.get_ref() == *r.name);
    for (i, r) in routes.iter().enumerate() {
        let Some(s) = &r.session else { continue };
        let Some(ri) = at(r) else { continue };
        let Some(span) = raw[ri].get_ref().session.as_ref() else {
            continue;
        };
        let clash = if s.cookie == identity_cookie {
            Some(format!(
                "is the anonymous-id cookie ([identity] cookie = \"{identity_cookie}\")"
            ))
        } else if r.overrides.cookie.as_deref() == Some(&*s.cookie) {
            Some("is the route's override cookie".to_owned())
        } else {
            routes[..i]
                .iter()
                .find(|o| {
                    o.session.as_ref().is_some_and(|os| os.cookie == s.cookie) && hosts_may_meet(&o.host, &r.host)
                })
                .map(|o| {
                    format!(
                        "is also route {}'s session cookie, and a browser sends one cookie of a name to both routes",
                        o.name
                    )
                })
        };
        if let Some(clash) = clash {
            errs.at(
                span,
                format!("routes[{ri}].session.cookie"),
                format!("`{}` {clash}", s.cookie),
                "give this route's session its own cookie, such as cookie = \"sy_ver_<route>\"",
            );
        }
    }
}

/// Whether one browser may send a request to both host patterns (no host: any host).
fn hosts_may_meet(a: &Option<String>, b: &Option<String>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return true;
    };
    let covers = |pattern: &str, host: &str| match pattern.strip_prefix("*.") {
        Some(domain) => host.ends_with(domain),
        None => pattern == host,
    };
    a == b || covers(a, b) || covers(b, a)
}

/// `Err` when a route's session has no usable secret here: `run` refuses to start and a
/// reload is refused, rather than serving sessions that pin nobody.
pub fn check_env(routes: &[Arc<Route>]) -> Result<(), String> {
    for r in routes {
        let Some(s) = &r.session else { continue };
        match std::env::var(&s.secret_env) {
            Ok(v) if v.len() >= session::MIN_SECRET_BYTES => {}
            Ok(v) if !v.is_empty() => {
                return Err(format!(
                    "route {}'s session secret {} holds {} bytes: pins need at least {} — export a random one, such as `openssl rand -base64 32`",
                    r.name,
                    s.secret_env,
                    v.len(),
                    session::MIN_SECRET_BYTES
                ))
            }
            _ => {
                return Err(format!(
                    "route {}'s session signs pins with {}, which is not set — export it (the same on every replica), or set [routes.session] secret_env",
                    r.name, s.secret_env
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    fn errors(src: &str) -> Vec<String> {
        let raw = crate::config::parse(src).0.expect("parses");
        match crate::config::compile(src, &raw, std::path::Path::new("."), "t.toml") {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    const HEAD: &str = "[listen]\nhttp = \"127.0.0.1:1\"\n[pools.blue]\nendpoints = [\"127.0.0.1:2\"]\n[pools.green]\nendpoints = [\"127.0.0.1:3\"]\n";

    fn route(name: &str, host: &str, session: &str) -> String {
        format!("[[routes]]\nname = \"{name}\"\n{host}path_prefix = \"/{name}\"\nsplit = {{ blue = 0, green = 100 }}\noverride = {{ cookie = \"sy_pool\" }}\n[routes.session]\n{session}\n")
    }

    #[test]
    fn every_mistake_in_a_session_is_pointed_at() {
        let src = format!(
            "{HEAD}{}{}",
            route(
                "a",
                "",
                "cookie = \"a b\"\nidle = \"500ms\"\nmax_age = \"0s\"\nsecret_env = \"NOT-A-VAR\""
            ),
            route("b", "", "idle = \"2h\"\nmax_age = \"1h\"")
        );
        let shown = errors(&src);
        for (at, says) in [
            ("routes[0].session.cookie", "`a b` is not a valid cookie name"),
            ("routes[0].session.idle", "must be at least 1s"),
            ("routes[0].session.max_age", "must be positive"),
            (
                "routes[0].session.secret_env",
                "`NOT-A-VAR` is not an environment variable's name",
            ),
            ("routes[1].session.max_age", "is shorter than idle (2h)"),
        ] {
            assert!(
                shown.iter().any(|e| e.contains(at) && e.contains(says)),
                "{at}: {says}\n{shown:#?}"
            );
        }
    }

    #[test]
    fn session_cookies_that_a_browser_would_mix_up_are_refused() {
        let clash =
            |a: &str, b: &str, bs: &str| errors(&format!("{HEAD}{}{}", route("a", a, ""), route("b", b, bs)));
        // Same host, or a route for any host, or a wildcard covering the other: one cookie jar.
        for (a, b) in [
            ("", ""),
            ("host = \"shop.example.com\"\n", ""),
            ("host = \"*.example.com\"\n", "host = \"shop.example.com\"\n"),
        ] {
            let e = clash(a, b, "");
            assert!(
                e.iter().any(|e| e.contains("routes[1].session.cookie")
                    && e.contains("is also route a's session cookie")),
                "{a} {b}: {e:#?}"
            );
        }
        assert_eq!(
            clash("host = \"a.example.com\"\n", "host = \"b.example.com\"\n", ""),
            Vec::<String>::new()
        );
        assert_eq!(clash("", "", "cookie = \"sy_ver_b\""), Vec::<String>::new());
        let e = clash("", "", "cookie = \"sy_uid\"");
        assert!(
            e.iter().any(|e| e.contains("is the anonymous-id cookie")),
            "{e:#?}"
        );
        let e = clash("", "", "cookie = \"sy_pool\"");
        assert!(
            e.iter().any(|e| e.contains("is the route's override cookie")),
            "{e:#?}"
        );
    }
}
