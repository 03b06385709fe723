//! [`Config`]: the immutable routing table, and the one question the data plane asks of
//! it, [`Config::lookup`].
//!
//! Servers follow ingress-nginx's model (one nginx `server` block per host):
//! 1. a request picks exactly one server: the exact host, else the single-label wildcard
//!    host (`*.example.com`), else the default server (rules without a host);
//! 2. within that server the path table picks the route;
//! 3. when no path matches, the server's default backend answers (an Ingress's
//!    `spec.defaultBackend` for its own hosts; for the default server, the catch-all
//!    Ingress that has a defaultBackend and no rules), else nothing: the controller's
//!    404. A host with its own server never falls through to another server's paths.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::diag::ObjectRef;
use crate::host::{HostPattern, normalize_request_host, wildcard_suffix};
use crate::path::{PathTable, PathType};
use crate::policy::BackendPolicy;

/// The backend a route sends to: one port of one Service, `namespace/service:port`.
///
/// The port is the Service port number once the Service is known, else the port as the
/// Ingress names it (a number or a port name). The same key indexes the
/// [`crate::EndpointTable`], so a route and its endpoints meet without any other lookup.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(Arc<str>);

impl BackendId {
    pub fn new(namespace: &str, service: &str, port: &str) -> Self {
        BackendId(Arc::from(format!("{namespace}/{service}:{port}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a route came from, for logs, diagnostics and /debug/config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSource {
    pub ingress: ObjectRef,
    /// The rule's host as written (`*.example.com`), empty for "any host".
    pub host: String,
    /// The path as written in the rule; empty for a default backend.
    pub path: String,
    /// `None` for a default backend.
    pub path_type: Option<PathType>,
}

/// One routing decision: where the request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub backend: BackendId,
    pub source: RouteSource,
    /// Balancing and retries; shared by the routes of one Ingress.
    pub policy: Arc<BackendPolicy>,
    /// Plain-HTTP requests get a 308 to https (the host has TLS and `ssl-redirect` is not
    /// "false", or `force-ssl-redirect` is "true").
    pub https_redirect: bool,
}

/// One host's paths and default backend (an nginx `server` block).
#[derive(Clone, Debug, Default)]
pub struct Server {
    pub paths: PathTable<Arc<Route>>,
    pub default_backend: Option<Arc<Route>>,
}

impl Server {
    fn lookup(&self, path: &str) -> Option<&Arc<Route>> {
        self.paths.lookup(path).or(self.default_backend.as_ref())
    }
}

/// The routing table. Immutable once built; published with one atomic swap.
#[derive(Clone, Debug, Default)]
pub struct Config {
    exact: HashMap<String, Server>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Server>,
    /// Rules without a host, and the catch-all default backend.
    default_server: Server,
    /// The Strict-Transport-Security value for HTTPS responses (`None`: not sent).
    hsts: Option<Arc<str>>,
    /// `use-proxy-protocol` (controller ConfigMap): the HTTP and HTTPS listeners expect a
    /// PROXY protocol header (v1 or v2) before each connection's first byte.
    use_proxy_protocol: bool,
}

impl Config {
    /// The route for a request, or `None` when the controller's default backend (404)
    /// should answer. `host` is the raw Host header / `:authority` (port and case are
    /// ignored); `path` is the request path without the query string.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.server_for(host).lookup(path)
    }

    /// The server a request host selects.
    pub fn server_for(&self, host: Option<&str>) -> &Server {
        let Some(host) = host.and_then(normalize_request_host) else {
            return &self.default_server;
        };
        if let Some(server) = self.exact.get(&host) {
            return server;
        }
        if let Some(server) = wildcard_suffix(&host).and_then(|s| self.wildcard.get(s)) {
            return server;
        }
        &self.default_server
    }

    /// Every server with its host as written in rules (`""` for the default server),
    /// sorted by host, for display.
    pub fn servers(&self) -> Vec<(String, &Server)> {
        let mut out: Vec<(String, &Server)> = self
            .exact
            .iter()
            .map(|(h, s)| (h.clone(), s))
            .chain(self.wildcard.iter().map(|(h, s)| (format!("*.{h}"), s)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.insert(0, (String::new(), &self.default_server));
        out
    }

    /// The Strict-Transport-Security header value for HTTPS responses.
    pub fn hsts(&self) -> Option<&Arc<str>> {
        self.hsts.as_ref()
    }

    /// Whether new connections on the HTTP and HTTPS listeners start with a PROXY header.
    pub fn use_proxy_protocol(&self) -> bool {
        self.use_proxy_protocol
    }

    /// Number of path routes in all servers.
    pub fn route_count(&self) -> usize {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .map(|s| s.paths.len())
            .sum::<usize>()
            + self.default_server.paths.len()
    }
}

/// Builds a [`Config`]. Callers insert in precedence order (oldest Ingress first): the
/// first insert of a path or default backend wins and later ones get their value back.
#[derive(Debug, Default)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn server_mut(&mut self, host: Option<&HostPattern>) -> &mut Server {
        match host {
            None => &mut self.config.default_server,
            Some(HostPattern::Exact(h)) => self.config.exact.entry(h.clone()).or_default(),
            Some(HostPattern::Wildcard(s)) => self.config.wildcard.entry(s.clone()).or_default(),
        }
    }

    /// Makes sure a server exists for `host`, even with no paths: an Ingress rule with a
    /// host and no `http` section still claims the host (its requests then get the
    /// default backend, never another server's routes).
    pub fn ensure_server(&mut self, host: Option<&HostPattern>) {
        let _ = self.server_mut(host);
    }

    /// Adds a path route. `Err(route)` when that (host, path, type) is already taken.
    pub fn add_path(
        &mut self,
        host: Option<&HostPattern>,
        path: &str,
        path_type: PathType,
        route: Arc<Route>,
    ) -> Result<(), Arc<Route>> {
        self.server_mut(host).paths.insert(path, path_type, route)
    }

    /// The route already holding (host, path, type), for conflict reports.
    pub fn path_owner(&self, host: Option<&HostPattern>, path: &str, path_type: PathType) -> Option<&Arc<Route>> {
        let server = match host {
            None => Some(&self.config.default_server),
            Some(HostPattern::Exact(h)) => self.config.exact.get(h),
            Some(HostPattern::Wildcard(s)) => self.config.wildcard.get(s),
        }?;
        server.paths.get(path, path_type)
    }

    /// Sets a server's default backend. `Err(route)` when it already has one.
    pub fn set_default_backend(&mut self, host: Option<&HostPattern>, route: Arc<Route>) -> Result<(), Arc<Route>> {
        let server = self.server_mut(host);
        match &server.default_backend {
            Some(_) => Err(route),
            None => {
                server.default_backend = Some(route);
                Ok(())
            }
        }
    }

    /// The current default backend of a server, for conflict reports.
    pub fn default_backend(&self, host: Option<&HostPattern>) -> Option<&Arc<Route>> {
        match host {
            None => self.config.default_server.default_backend.as_ref(),
            Some(HostPattern::Exact(h)) => self.config.exact.get(h)?.default_backend.as_ref(),
            Some(HostPattern::Wildcard(s)) => self.config.wildcard.get(s)?.default_backend.as_ref(),
        }
    }

    pub fn set_use_proxy_protocol(&mut self, on: bool) {
        self.config.use_proxy_protocol = on;
    }

    pub fn set_hsts(&mut self, value: Option<String>) {
        self.config.hsts = value.map(Arc::from);
    }

    pub fn build(self) -> Config {
        self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(ing: &str, backend: &str) -> Arc<Route> {
        Arc::new(Route {
            backend: BackendId::new("default", backend, "80"),
            source: RouteSource {
                ingress: ObjectRef::new("Ingress", "default", ing),
                host: String::new(),
                path: String::new(),
                path_type: None,
            },
            policy: Arc::default(),
            https_redirect: false,
        })
    }

    fn backend_of<'a>(c: &'a Config, host: Option<&str>, path: &str) -> Option<&'a str> {
        c.lookup(host, path).map(|r| r.backend.as_str())
    }

    fn pat(h: &str) -> HostPattern {
        HostPattern::parse(h).unwrap()
    }

    #[test]
    fn exact_beats_wildcard_beats_any_host() {
        let mut b = ConfigBuilder::new();
        b.add_path(
            Some(&pat("foo.example.com")),
            "/",
            PathType::Prefix,
            route("a", "exact"),
        )
        .unwrap();
        b.add_path(Some(&pat("*.example.com")), "/", PathType::Prefix, route("a", "wild"))
            .unwrap();
        b.add_path(None, "/", PathType::Prefix, route("a", "any")).unwrap();
        let c = b.build();
        assert_eq!(backend_of(&c, Some("foo.example.com"), "/"), Some("default/exact:80"));
        assert_eq!(
            backend_of(&c, Some("FOO.Example.com:8080"), "/x"),
            Some("default/exact:80")
        );
        assert_eq!(backend_of(&c, Some("bar.example.com"), "/"), Some("default/wild:80"));
        // Wildcards cover exactly one label.
        assert_eq!(backend_of(&c, Some("example.com"), "/"), Some("default/any:80"));
        assert_eq!(backend_of(&c, Some("a.b.example.com"), "/"), Some("default/any:80"));
        assert_eq!(backend_of(&c, Some("other.org"), "/"), Some("default/any:80"));
        assert_eq!(backend_of(&c, None, "/"), Some("default/any:80"));
    }

    #[test]
    fn a_host_with_its_own_server_does_not_fall_through() {
        let mut b = ConfigBuilder::new();
        b.add_path(Some(&pat("foo.com")), "/api", PathType::Prefix, route("a", "api"))
            .unwrap();
        b.add_path(None, "/", PathType::Prefix, route("b", "any")).unwrap();
        let c = b.build();
        assert_eq!(backend_of(&c, Some("foo.com"), "/api/x"), Some("default/api:80"));
        assert_eq!(
            backend_of(&c, Some("foo.com"), "/other"),
            None,
            "404 from the controller default"
        );
        assert_eq!(backend_of(&c, Some("bar.com"), "/other"), Some("default/any:80"));
    }

    #[test]
    fn default_backends_answer_unmatched_paths_of_their_server() {
        let mut b = ConfigBuilder::new();
        b.add_path(Some(&pat("foo.com")), "/api", PathType::Prefix, route("a", "api"))
            .unwrap();
        b.set_default_backend(Some(&pat("foo.com")), route("a", "foo-default"))
            .unwrap();
        assert!(
            b.set_default_backend(Some(&pat("foo.com")), route("z", "later"))
                .is_err()
        );
        b.set_default_backend(None, route("c", "catch-all")).unwrap();
        b.ensure_server(Some(&pat("bare.com")));
        let c = b.build();
        assert_eq!(
            backend_of(&c, Some("foo.com"), "/nothing"),
            Some("default/foo-default:80")
        );
        assert_eq!(backend_of(&c, Some("foo.com"), "/api"), Some("default/api:80"));
        assert_eq!(backend_of(&c, Some("unknown.com"), "/x"), Some("default/catch-all:80"));
        assert_eq!(backend_of(&c, Some("bare.com"), "/x"), None);
        assert_eq!(c.route_count(), 1);
        assert_eq!(c.servers().len(), 3);
    }

    #[test]
    fn path_owner_reports_the_holder_of_a_conflict() {
        let mut b = ConfigBuilder::new();
        let h = pat("foo.com");
        b.add_path(Some(&h), "/x/", PathType::Prefix, route("first", "one"))
            .unwrap();
        let owner = b.path_owner(Some(&h), "/x", PathType::Prefix).unwrap();
        assert_eq!(owner.source.ingress.name, "first");
        assert!(b.path_owner(Some(&h), "/x", PathType::Exact).is_none());
        assert!(b.path_owner(None, "/x", PathType::Prefix).is_none());
    }
}
