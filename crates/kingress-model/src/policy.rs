//! [`BackendPolicy`]: how a route's requests are spread over its endpoints and when a
//! failed attempt moves to another endpoint.
//!
//! Compile fills it from the Ingress annotations over the controller-wide defaults
//! (ConfigMap, then flags); the data plane reads it per request. ingress-nginx names:
//! `load-balance`, `upstream-hash-by`, `affinity`, `affinity-mode`, `session-cookie-*`,
//! `proxy-next-upstream`, `proxy-next-upstream-tries`.

use std::fmt;

/// The endpoint choice of a route.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Balance {
    /// `load-balance: round_robin`, the default.
    #[default]
    RoundRobin,
    /// `load-balance: ewma`: peak-EWMA of latency times in-flight, power of two choices.
    Ewma,
    /// `upstream-hash-by`: consistent hashing of a request key.
    Hash(HashKey),
    /// `affinity: cookie`: the endpoint is pinned by a cookie.
    Cookie(CookieAffinity),
}

impl Balance {
    pub fn name(&self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::Ewma => "ewma",
            Balance::Hash(_) => "consistent_hash",
            Balance::Cookie(_) => "cookie",
        }
    }
}

/// One piece of an `upstream-hash-by` template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashPart {
    Literal(String),
    /// `$remote_addr`: the client address.
    RemoteAddr,
    /// `$request_uri`: path and query as the client sent them.
    RequestUri,
    /// `$uri`: the path alone.
    Uri,
    /// `$host`: the request host, lowercased, without a port.
    Host,
    /// `$scheme`: http or https.
    Scheme,
    /// `$http_<name>`: a request header; the name is lowercase with `-` for `_`.
    Header(String),
    /// `$cookie_<name>`: a request cookie.
    Cookie(String),
    /// `$arg_<name>`: a query argument.
    Arg(String),
}

/// A parsed `upstream-hash-by` value, such as `$host$request_uri` or `$http_x_user`.
#[derive(Clone, PartialEq, Eq)]
pub struct HashKey {
    pub template: String,
    pub parts: Vec<HashPart>,
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.template, f)
    }
}

impl HashKey {
    /// Parses nginx variable syntax: `$name` or `${name}`, anything else literal.
    pub fn parse(template: &str) -> Result<Self, String> {
        let template = template.trim();
        if template.is_empty() {
            return Err("upstream-hash-by is empty".to_string());
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = template;
        while let Some(pos) = rest.find('$') {
            literal.push_str(rest.get(..pos).unwrap_or_default());
            let after = rest.get(pos + 1..).unwrap_or_default();
            let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
                let Some(end) = braced.find('}') else {
                    return Err(format!("unclosed ${{ in {template:?}"));
                };
                (
                    braced.get(..end).unwrap_or_default(),
                    braced.get(end + 1..).unwrap_or_default(),
                )
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (
                    after.get(..end).unwrap_or_default(),
                    after.get(end..).unwrap_or_default(),
                )
            };
            if name.is_empty() {
                return Err(format!("a lone $ in {template:?}"));
            }
            if !literal.is_empty() {
                parts.push(HashPart::Literal(std::mem::take(&mut literal)));
            }
            parts.push(variable(name).ok_or_else(|| {
                format!(
                    "${name} is not a supported variable (use $remote_addr, $request_uri, $uri, $host, \
                     $scheme, $http_<name>, $cookie_<name> or $arg_<name>)"
                )
            })?);
            rest = tail;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(HashPart::Literal(literal));
        }
        if !parts.iter().any(|p| !matches!(p, HashPart::Literal(_))) {
            return Err(format!(
                "upstream-hash-by {template:?} has no variable: every request would go to one endpoint"
            ));
        }
        Ok(Self {
            template: template.to_string(),
            parts,
        })
    }
}

fn variable(name: &str) -> Option<HashPart> {
    let lower = name.to_ascii_lowercase();
    let field = |prefix: &str| {
        lower
            .strip_prefix(prefix)
            .filter(|n| !n.is_empty())
            .map(|n| n.to_string())
    };
    Some(match lower.as_str() {
        "remote_addr" | "binary_remote_addr" => HashPart::RemoteAddr,
        "request_uri" => HashPart::RequestUri,
        "uri" | "document_uri" => HashPart::Uri,
        "host" | "http_host" => HashPart::Host,
        "scheme" => HashPart::Scheme,
        _ => {
            if let Some(h) = field("http_") {
                HashPart::Header(h.replace('_', "-"))
            } else if let Some(c) = field("cookie_") {
                // Cookie names are case-sensitive: keep the original spelling.
                HashPart::Cookie(name.get("cookie_".len()..).unwrap_or(&c).to_string())
            } else if let Some(a) = field("arg_") {
                HashPart::Arg(name.get("arg_".len()..).unwrap_or(&a).to_string())
            } else {
                return None;
            }
        }
    })
}

/// `affinity-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AffinityMode {
    /// The cookie holds a hash key: when endpoints are added, about 1/N of the sessions
    /// move to the new ones, so scale-up relieves the old endpoints.
    #[default]
    Balanced,
    /// The cookie names the endpoint: a session stays on it for as long as it exists.
    Persistent,
}

/// `session-cookie-samesite`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameSite {
    None,
    Lax,
    Strict,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::None => "None",
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
        }
    }
}

/// `affinity: cookie` and its `session-cookie-*` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieAffinity {
    /// `session-cookie-name`, default `INGRESSCOOKIE`.
    pub name: String,
    /// `session-cookie-path`; `None`: the path of the Ingress rule (as ingress-nginx).
    pub path: Option<String>,
    /// `session-cookie-max-age`, seconds.
    pub max_age: Option<u64>,
    /// `session-cookie-expires`, seconds from now.
    pub expires: Option<u64>,
    /// `session-cookie-samesite`.
    pub samesite: Option<SameSite>,
    /// `session-cookie-secure`: the Secure attribute (always set over HTTPS).
    pub secure: bool,
    /// `session-cookie-change-on-failure`: when the pinned endpoint fails and the request
    /// moves, point the cookie at the new endpoint.
    pub change_on_failure: bool,
    pub mode: AffinityMode,
}

impl Default for CookieAffinity {
    fn default() -> Self {
        Self {
            name: "INGRESSCOOKIE".to_string(),
            path: None,
            max_age: None,
            expires: None,
            samesite: None,
            secure: false,
            change_on_failure: false,
            mode: AffinityMode::Balanced,
        }
    }
}

/// `proxy-next-upstream` and `proxy-next-upstream-tries`: when a failed attempt moves
/// to another endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// `error`: connect failures, resets and other errors before a response header.
    pub on_error: bool,
    /// `timeout`: connect, send and read timeouts before a response header.
    pub on_timeout: bool,
    /// `invalid_header`: the upstream sent something that is not HTTP.
    pub on_invalid_header: bool,
    /// `non_idempotent`: retry POST, PATCH and LOCK even when the request was sent.
    pub non_idempotent: bool,
    /// Attempts in all, the first one included (at least 1).
    pub tries: u32,
}

impl Default for RetryPolicy {
    /// ingress-nginx: `error timeout`, 3 tries.
    fn default() -> Self {
        Self {
            on_error: true,
            on_timeout: true,
            on_invalid_header: false,
            non_idempotent: false,
            tries: 3,
        }
    }
}

impl RetryPolicy {
    /// `off`: one attempt only.
    pub fn off(tries: u32) -> Self {
        Self {
            on_error: false,
            on_timeout: false,
            on_invalid_header: false,
            non_idempotent: false,
            tries: tries.max(1),
        }
    }

    /// Parses a `proxy-next-upstream` value ("error timeout http_502 ..."), keeping `tries`.
    /// Conditions kingress cannot honour (retrying on a response status) are returned
    /// as warnings; unknown words are errors.
    pub fn parse_conditions(value: &str, tries: u32) -> Result<(Self, Vec<String>), String> {
        let mut policy = RetryPolicy::off(tries);
        let mut warnings = Vec::new();
        for word in value.split_whitespace() {
            match word {
                "error" => policy.on_error = true,
                "timeout" => policy.on_timeout = true,
                "invalid_header" => policy.on_invalid_header = true,
                "non_idempotent" => policy.non_idempotent = true,
                "off" => return Ok((RetryPolicy::off(tries), warnings)),
                "http_500" | "http_502" | "http_503" | "http_504" | "http_403" | "http_404" | "http_429" => {
                    warnings.push(format!(
                        "proxy-next-upstream {word}: retrying on a response status is not supported; ignored"
                    ));
                }
                other => return Err(format!("proxy-next-upstream: unknown condition {other:?}")),
            }
        }
        Ok((policy, warnings))
    }
}

/// `backend-protocol`: how kingress speaks to the endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendProtocol {
    /// HTTP/1.1 over TCP, the default.
    #[default]
    Http,
    /// HTTP/1.1 over TLS (the backend's certificate is not verified, as ingress-nginx's
    /// default `proxy-ssl-verify: off`).
    Https,
    /// HTTP/2 over TCP (h2c with prior knowledge), for gRPC.
    Grpc,
    /// HTTP/2 over TLS, for gRPC.
    Grpcs,
}

impl BackendProtocol {
    /// Parses the annotation value (case-insensitive).
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_uppercase().as_str() {
            "HTTP" => Ok(Self::Http),
            "HTTPS" => Ok(Self::Https),
            "GRPC" => Ok(Self::Grpc),
            "GRPCS" => Ok(Self::Grpcs),
            other => Err(format!(
                "backend-protocol {other:?} is not supported (HTTP, HTTPS, GRPC or GRPCS); using HTTP"
            )),
        }
    }

    pub fn tls(self) -> bool {
        matches!(self, Self::Https | Self::Grpcs)
    }

    pub fn h2(self) -> bool {
        matches!(self, Self::Grpc | Self::Grpcs)
    }
}

/// Everything the data plane needs to choose, reach and retry endpoints for one route.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BackendPolicy {
    pub balance: Balance,
    pub retry: RetryPolicy,
    pub protocol: BackendProtocol,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_templates_parse_nginx_variables() {
        let k = HashKey::parse("$host$request_uri").unwrap();
        assert_eq!(k.parts, vec![HashPart::Host, HashPart::RequestUri]);
        let k = HashKey::parse("$remote_addr-${http_x_user_id}:$cookie_Session").unwrap();
        assert_eq!(
            k.parts,
            vec![
                HashPart::RemoteAddr,
                HashPart::Literal("-".into()),
                HashPart::Header("x-user-id".into()),
                HashPart::Literal(":".into()),
                HashPart::Cookie("Session".into()),
            ]
        );
        assert_eq!(HashKey::parse("$arg_u").unwrap().parts, vec![HashPart::Arg("u".into())]);
    }

    #[test]
    fn bad_hash_templates_are_errors() {
        for bad in ["", "  ", "$", "${host", "$nope", "static", "$http_"] {
            assert!(HashKey::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn next_upstream_conditions() {
        let (p, w) = RetryPolicy::parse_conditions("error timeout", 3).unwrap();
        assert_eq!(p, RetryPolicy::default());
        assert!(w.is_empty());
        let (p, w) = RetryPolicy::parse_conditions("error non_idempotent http_502", 5).unwrap();
        assert!(p.on_error && p.non_idempotent && !p.on_timeout);
        assert_eq!(p.tries, 5);
        assert_eq!(w.len(), 1);
        let (p, _) = RetryPolicy::parse_conditions("off", 0).unwrap();
        assert_eq!(p, RetryPolicy::off(1));
        assert!(RetryPolicy::parse_conditions("error sometimes", 3).is_err());
    }
}
