//! The request side of balancing: the values a [`BackendPolicy`] needs from a request
//! (hash key, affinity cookie), the `Set-Cookie` it answers with, and which failed
//! attempts may move to another endpoint.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use kingress_balance::hash64;
use kingress_model::host::normalize_request_host;
use kingress_model::{CookieAffinity, HashPart, RetryPolicy};
use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;
use rand::SeedableRng;
use rand::rngs::SmallRng;

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_entropy());
}

/// Runs `f` with this thread's random source (P2C draws, new session keys).
pub(crate) fn with_rng<T>(f: impl FnOnce(&mut SmallRng) -> T) -> T {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

/// What the hash-key variables read from a request.
pub(crate) struct RequestFacts<'a> {
    pub req: &'a RequestHeader,
    pub host: Option<&'a str>,
    pub client: Option<IpAddr>,
    pub tls: bool,
}

/// Evaluates an `upstream-hash-by` template and hashes it. A variable with no value
/// (a missing header or cookie) reads as empty, as in nginx.
pub(crate) fn hash_key(parts: &[HashPart], facts: &RequestFacts<'_>) -> u64 {
    let mut key = String::with_capacity(64);
    for part in parts {
        match part {
            HashPart::Literal(s) => key.push_str(s),
            HashPart::RemoteAddr => {
                if let Some(ip) = facts.client {
                    let _ = write!(key, "{ip}");
                }
            }
            HashPart::RequestUri => {
                key.push_str(facts.req.uri.path_and_query().map_or("/", |p| p.as_str()));
            }
            HashPart::Uri => key.push_str(facts.req.uri.path()),
            HashPart::Host => {
                if let Some(h) = facts.host.and_then(normalize_request_host) {
                    key.push_str(&h);
                }
            }
            HashPart::Scheme => key.push_str(if facts.tls { "https" } else { "http" }),
            HashPart::Header(name) => {
                let mut first = true;
                for v in facts.req.headers.get_all(name.as_str()) {
                    if !first {
                        key.push_str(", ");
                    }
                    first = false;
                    key.push_str(v.to_str().unwrap_or_default());
                }
            }
            HashPart::Cookie(name) => key.push_str(cookie(facts.req, name).unwrap_or_default()),
            HashPart::Arg(name) => key.push_str(query_arg(facts.req, name).unwrap_or_default()),
        }
    }
    hash64(key.as_bytes())
}

/// The value of cookie `name` in the request's Cookie headers.
pub(crate) fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

fn query_arg<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.uri
        .query()?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value for an affinity session, as ingress-nginx writes it (HttpOnly;
/// Secure over HTTPS or when configured). `rule_path` is the path of the Ingress rule,
/// the default cookie path.
pub(crate) fn set_cookie(c: &CookieAffinity, value: &str, rule_path: &str, tls: bool, now: SystemTime) -> String {
    let path = c
        .path
        .as_deref()
        .unwrap_or(if rule_path.is_empty() { "/" } else { rule_path });
    let mut out = format!("{}={value}; Path={path}", c.name);
    if let Some(secs) = c.expires {
        let at = now.checked_add(Duration::from_secs(secs)).unwrap_or(now);
        let _ = write!(out, "; Expires={}", httpdate::fmt_http_date(at));
    }
    if let Some(secs) = c.max_age {
        let _ = write!(out, "; Max-Age={secs}");
    }
    if c.secure || tls {
        out.push_str("; Secure");
    }
    out.push_str("; HttpOnly");
    if let Some(s) = c.samesite {
        let _ = write!(out, "; SameSite={}", s.as_str());
    }
    out
}

/// The kind of a failed attempt, as `proxy-next-upstream` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    Error,
    Timeout,
    InvalidHeader,
}

pub(crate) fn classify(e: &Error) -> Failure {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => Failure::Timeout,
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::InvalidH2 | ErrorType::H2Error => {
            Failure::InvalidHeader
        }
        _ => Failure::Error,
    }
}

pub(crate) fn policy_covers(policy: &RetryPolicy, failure: Failure) -> bool {
    match failure {
        Failure::Error => policy.on_error,
        Failure::Timeout => policy.on_timeout,
        Failure::InvalidHeader => policy.on_invalid_header,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kingress_model::{HashKey, SameSite};

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn key(template: &str, r: &RequestHeader, host: Option<&str>, client: &str) -> u64 {
        let k = HashKey::parse(template).unwrap();
        hash_key(
            &k.parts,
            &RequestFacts {
                req: r,
                host,
                client: client.parse().ok(),
                tls: false,
            },
        )
    }

    #[test]
    fn hash_keys_read_the_request() {
        let a = req("/p?u=1&x=2", &[("x-user", "alice"), ("cookie", "a=1; sid=abc")]);
        let b = req("/p?u=2", &[("x-user", "bob"), ("cookie", "sid=xyz")]);
        for t in ["$http_x_user", "$cookie_sid", "$arg_u", "$request_uri"] {
            assert_ne!(key(t, &a, None, "1.1.1.1"), key(t, &b, None, "1.1.1.1"), "{t}");
        }
        assert_eq!(key("$uri", &a, None, "1.1.1.1"), key("$uri", &b, None, "2.2.2.2"));
        assert_ne!(
            key("$remote_addr", &a, None, "1.1.1.1"),
            key("$remote_addr", &a, None, "2.2.2.2")
        );
        assert_eq!(
            key("$host", &a, Some("Foo.COM:8080"), "1.1.1.1"),
            key("$host", &b, Some("foo.com"), "1.1.1.1")
        );
        assert_eq!(hash64(b"alice"), key("$http_x_user", &a, None, ""));
    }

    #[test]
    fn cookies_are_found_among_several_headers() {
        let r = req("/", &[("cookie", "a=1"), ("cookie", " INGRESSCOOKIE=\"v1\" ; b=2")]);
        assert_eq!(cookie(&r, "INGRESSCOOKIE"), Some("v1"));
        assert_eq!(cookie(&r, "b"), Some("2"));
        assert_eq!(cookie(&r, "ingresscookie"), None);
    }

    #[test]
    fn set_cookie_has_the_configured_attributes() {
        let mut c = CookieAffinity::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            set_cookie(&c, "k", "/api", false, t),
            "INGRESSCOOKIE=k; Path=/api; HttpOnly"
        );
        c.name = "route".into();
        c.path = Some("/".into());
        c.max_age = Some(3600);
        c.expires = Some(60);
        c.samesite = Some(SameSite::Strict);
        assert_eq!(
            set_cookie(&c, "k", "/api", true, t),
            "route=k; Path=/; Expires=Tue, 14 Nov 2023 22:14:20 GMT; Max-Age=3600; Secure; HttpOnly; SameSite=Strict"
        );
    }
}
