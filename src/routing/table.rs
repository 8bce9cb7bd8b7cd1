//! Route matching as one function over an index built at compile time: host (exact, then
//! `*.wildcard` with the longest suffix first, then routes without a host), and within a host
//! the longest `path_prefix`, with header-matching routes ahead of plain ones of the same
//! prefix. When no route of a more specific host matches the path, the less specific hosts are
//! tried, so a host-less catch-all route still catches what a host's routes leave out.

use std::collections::HashMap;

use http::HeaderMap;

use super::Route;

#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    exact: HashMap<String, Vec<usize>>,
    /// `(".example.com", routes)`, longest suffix first.
    wildcard: Vec<(String, Vec<usize>)>,
    any: Vec<usize>,
}

impl RouteTable {
    pub fn build(routes: &[Route]) -> RouteTable {
        let mut table = RouteTable::default();
        for (i, r) in routes.iter().enumerate() {
            match r.host.as_deref() {
                None => table.any.push(i),
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => match table.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, list)) => list.push(i),
                        None => table.wildcard.push((suffix.to_owned(), vec![i])),
                    },
                    None => table.exact.entry(h.to_owned()).or_default().push(i),
                },
            }
        }
        let order = |list: &mut Vec<usize>| {
            // Stable: among equals, config order decides.
            list.sort_by_key(|&i| {
                let r = &routes[i];
                (
                    std::cmp::Reverse(r.path_prefix.len()),
                    std::cmp::Reverse(r.headers.len()),
                )
            })
        };
        table.exact.values_mut().for_each(order);
        table.wildcard.iter_mut().for_each(|(_, l)| order(l));
        table.wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        order(&mut table.any);
        table
    }

    pub fn find<'r, R: std::borrow::Borrow<Route>>(
        &self,
        routes: &'r [R],
        host: &str,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<&'r Route> {
        let first = |list: &[usize]| {
            list.iter()
                .map(|&i| routes[i].borrow())
                .find(|r| r.matches(path, headers))
        };
        if let Some(r) = self.exact.get(host).and_then(|l| first(l)) {
            return Some(r);
        }
        for (suffix, list) in &self.wildcard {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(r) = first(list) {
                    return Some(r);
                }
            }
        }
        first(&self.any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Split;
    use http::{HeaderName, HeaderValue};

    fn route(name: &str, host: Option<&str>, prefix: &str, headers: &[(&str, &str)]) -> Route {
        Route {
            rules: std::sync::Arc::from([]),
            index: 0,
            name: name.into(),
            host: host.map(str::to_owned),
            path_prefix: prefix.to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    )
                })
                .collect(),
            split: Split::new(&[(0, 1)]),
            effective: Split::new(&[(0, 1)]),
            baseline: 0,
            runtime: Default::default(),
            overrides: Default::default(),
            flags: std::sync::Arc::from([]),
            uses_key: false,
            session: None,
        }
    }

    fn find<'r>(routes: &'r [Route], host: &str, path: &str, headers: &[(&str, &str)]) -> Option<&'r str> {
        let table = RouteTable::build(routes);
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        table.find(routes, host, path, &map).map(|r| &*r.name)
    }

    #[test]
    fn exact_host_then_wildcard_then_any() {
        let routes = vec![
            route("any", None, "/", &[]),
            route("wild", Some("*.example.com"), "/", &[]),
            route("deep", Some("*.eu.example.com"), "/", &[]),
            route("shop", Some("shop.example.com"), "/", &[]),
        ];
        assert_eq!(find(&routes, "shop.example.com", "/", &[]), Some("shop"));
        assert_eq!(find(&routes, "blog.example.com", "/", &[]), Some("wild"));
        assert_eq!(find(&routes, "a.eu.example.com", "/", &[]), Some("deep"));
        assert_eq!(find(&routes, "example.com", "/", &[]), Some("any"));
        assert_eq!(find(&routes, "other.org", "/x", &[]), Some("any"));
    }

    #[test]
    fn longest_prefix_wins_and_headers_refine() {
        let routes = vec![
            route("root", Some("h"), "/", &[]),
            route("api", Some("h"), "/api", &[]),
            route("api-acme", Some("h"), "/api", &[("x-tenant", "acme")]),
        ];
        assert_eq!(find(&routes, "h", "/api/v1", &[]), Some("api"));
        assert_eq!(
            find(&routes, "h", "/api/v1", &[("x-tenant", "acme")]),
            Some("api-acme")
        );
        assert_eq!(
            find(&routes, "h", "/api/v1", &[("x-tenant", "other")]),
            Some("api")
        );
        assert_eq!(find(&routes, "h", "/about", &[]), Some("root"));
    }

    #[test]
    fn a_host_without_a_matching_path_falls_back_to_less_specific_hosts() {
        let routes = vec![
            route("any", None, "/", &[]),
            route("shop-api", Some("shop"), "/api", &[]),
        ];
        assert_eq!(find(&routes, "shop", "/api", &[]), Some("shop-api"));
        assert_eq!(find(&routes, "shop", "/", &[]), Some("any"));
        assert_eq!(find(&routes[1..], "shop", "/", &[]), None);
    }
}
