//! A request as Unleash's context sees it: the user and session ids, the client's address, the
//! environment, and the properties `[context]` names (headers, cookies, query parameters) beside
//! the request's host, path and method. Values are read on first use and kept for the request,
//! so a route whose flags read none of them pays nothing.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::net::IpAddr;

use http::HeaderName;

use super::identity;
use super::unleash::ops::Cidr;
use super::unleash::{Cond, Context, Field, Schema};
use super::RequestView;

/// Where a property's value comes from in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    Host,
    Path,
    Method,
}

/// The compiled `[context]`: property names and their sources.
#[derive(Debug, Clone, Default)]
pub struct ContextSpec {
    pub schema: Schema,
    /// By property index; `None` for names only an OFREP body can give (fields of a feature
    /// file that no `[context]` entry names).
    pub sources: Vec<Option<Source>>,
    /// Proxies whose `x-forwarded-for` is believed for `remoteAddress`.
    pub trusted: Vec<Cidr>,
    /// `[env] app_name`: Unleash's `appName`.
    pub app_name: Option<String>,
}

/// One `[[routes.rules]]` entry: when every constraint holds, the request goes to `pool`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub conds: Box<[Cond]>,
    pub pool: usize,
}

impl Rule {
    pub fn matches<C: Context + ?Sized>(&self, ctx: &C) -> bool {
        self.conds.iter().all(|c| c.holds(ctx))
    }
}

/// The client's address as nginx's realip module reads it (`real_ip_header X-Forwarded-For;
/// real_ip_recursive on;`): the socket's peer, unless it is a trusted proxy; then the entries of
/// `x-forwarded-for` (all its fields, in order) are walked from the right, each one the address
/// of whoever sent the hop to its right, until one is not a trusted proxy's. An entry that is no
/// address ends the walk at the last address read (the peer, if it is the rightmost entry), so
/// junk that a client wrote on the left of the list changes nothing. An entry may carry a port
/// (`192.0.2.1:443`, `[2001:db8::1]:443`), as nginx allows.
pub fn client_address(peer: Option<IpAddr>, headers: &http::HeaderMap, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut found = peer;
    if !is_trusted(found) {
        return Some(found);
    }
    let fields: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    for field in fields.iter().rev() {
        // nginx separates entries by commas and spaces, and skips runs of them.
        for entry in field.rsplit(|&b| b == b',' || b == b' ') {
            if entry.is_empty() {
                continue;
            }
            match forwarded_ip(entry) {
                Some(ip) => found = ip,
                None => return Some(found),
            }
            if !is_trusted(found) {
                return Some(found);
            }
        }
    }
    Some(found)
}

/// One `x-forwarded-for` entry: an address, with a port or not (an IPv6 one in brackets then).
fn forwarded_ip(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, port) = rest.split_once(']')?;
        if !(port.is_empty() || valid_port(port.strip_prefix(':')?)) {
            return None;
        }
        return ip.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (ip, port) = text.rsplit_once(':')?;
    valid_port(port).then_some(())?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn valid_port(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
}

/// A property's value, read on first use.
type Lazy<'a> = OnceCell<Option<Cow<'a, str>>>;

/// Where a request's Unleash sessionId is.
#[derive(Debug, Clone, Copy)]
pub enum Session<'a> {
    /// Known already (the anonymous id the user key came from).
    Id(&'a str),
    /// In this cookie, read only if a flag asks for it.
    Cookie(&'a str),
    None,
}

/// The [`Context`] of one request.
pub struct RequestContext<'a> {
    spec: &'a ContextSpec,
    view: RequestView<'a>,
    user_id: Option<&'a str>,
    session: Session<'a>,
    session_id: OnceCell<Option<&'a str>>,
    /// The request's user key, whatever its source: stickiness `default`'s last resort.
    key: Option<&'a str>,
    environment: Option<&'a str>,
    now_ms: i64,
    props: OnceCell<Box<[Lazy<'a>]>>,
    remote: OnceCell<Option<String>>,
}

impl<'a> RequestContext<'a> {
    pub fn new(
        spec: &'a ContextSpec,
        view: RequestView<'a>,
        user_id: Option<&'a str>,
        session: Session<'a>,
        environment: Option<&'a str>,
        now: std::time::SystemTime,
    ) -> RequestContext<'a> {
        RequestContext {
            spec,
            view,
            user_id,
            key: user_id.or(match session {
                Session::Id(id) => Some(id),
                _ => None,
            }),
            session,
            session_id: OnceCell::new(),
            environment,
            now_ms: now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            props: OnceCell::new(),
            remote: OnceCell::new(),
        }
    }

    fn prop(&self, i: usize) -> Option<&str> {
        let cells = self
            .props
            .get_or_init(|| (0..self.spec.sources.len()).map(|_| OnceCell::new()).collect());
        let cell = cells.get(i)?;
        cell.get_or_init(|| {
            let v = self.view;
            match self.spec.sources.get(i)?.as_ref()? {
                Source::Header(h) => super::header(v.headers, h)
                    .and_then(|x| x.to_str().ok())
                    .map(Cow::Borrowed),
                Source::Cookie(c) => identity::cookie(v.headers, c).map(Cow::Borrowed),
                Source::Query(q) => v.query.and_then(|query| identity::query_param(query, q)),
                Source::Host => Some(Cow::Borrowed(v.host)),
                Source::Path => Some(Cow::Borrowed(v.path)),
                Source::Method => Some(Cow::Borrowed(v.method.as_str())),
            }
        })
        .as_deref()
    }
}

impl Context for RequestContext<'_> {
    fn get(&self, field: Field) -> Option<&str> {
        match field {
            Field::UserId => self.user_id,
            Field::SessionId => *self.session_id.get_or_init(|| match self.session {
                Session::Id(id) => Some(id),
                Session::Cookie(name) => identity::cookie(self.view.headers, name),
                Session::None => None,
            }),
            Field::Environment => self.environment,
            Field::AppName => self.spec.app_name.as_deref(),
            // Date constraints then compare the request's time.
            Field::CurrentTime => None,
            Field::RemoteAddress => self
                .remote
                .get_or_init(|| {
                    // An IPv4 client on a dual-stack listener is the IPv4 address it is (the
                    // SDKs compare IN_CIDR ranges by address family, without mapping).
                    client_address(self.view.peer, self.view.headers, &self.spec.trusted)
                        .map(|ip| ip.to_canonical().to_string())
                })
                .as_deref(),
            Field::Prop(i) => self.prop(i as usize),
        }
    }

    fn now_ms(&self) -> i64 {
        self.now_ms
    }

    fn random(&self) -> u32 {
        fastrand::u32(..)
    }

    fn sticky_fallback(&self) -> Option<&str> {
        self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let trusted = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7, 10.1.1.1".parse().unwrap(),
        );
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // A trusted peer: the last hop that is not a trusted proxy.
        assert_eq!(client_address(ip("10.0.0.2"), &h, &trusted), ip("198.51.100.7"));
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(client_address(ip("192.0.2.1"), &h, &trusted), ip("192.0.2.1"));
        // No trusted proxies: the socket.
        assert_eq!(client_address(ip("10.0.0.2"), &h, &[]), ip("10.0.0.2"));
        // Junk where the trusted hops end stops the walk at the last address read.
        h.insert("x-forwarded-for", "203.0.113.9, junk".parse().unwrap());
        assert_eq!(client_address(ip("10.0.0.2"), &h, &trusted), ip("10.0.0.2"));
        h.insert("x-forwarded-for", "203.0.113.9, junk, 10.9.9.9".parse().unwrap());
        assert_eq!(client_address(ip("10.0.0.2"), &h, &trusted), ip("10.9.9.9"));
        // Junk a client wrote on the left, before the hops that matter, changes nothing: the
        // load balancer's view of the client stands (it was a hole: the peer was taken).
        h.insert("x-forwarded-for", "junk, 198.51.100.7".parse().unwrap());
        assert_eq!(client_address(ip("10.0.0.2"), &h, &trusted), ip("198.51.100.7"));
        // Fields are one list, in order; ports are allowed.
        h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        h.append("x-forwarded-for", "198.51.100.7:443, 10.1.1.1".parse().unwrap());
        assert_eq!(client_address(ip("10.0.0.2"), &h, &trusted), ip("198.51.100.7"));
        h.insert("x-forwarded-for", "[2001:db8::7]:443".parse().unwrap());
        assert_eq!(client_address(ip("10.0.0.2"), &h, &trusted), ip("2001:db8::7"));
    }
}
