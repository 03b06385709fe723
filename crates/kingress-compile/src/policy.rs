//! Balancing and retry settings: the controller ConfigMap's defaults, then each
//! Ingress's `nginx.ingress.kubernetes.io/*` annotations over them.
//!
//! Precedence as in ingress-nginx: `affinity: cookie` wins over `upstream-hash-by`,
//! which wins over `load-balance`. A value that does not parse is reported and the
//! default is kept for that setting; the Ingress serves.

use std::collections::BTreeMap;

use kingress_model::{
    AffinityMode, BackendPolicy, BackendProtocol, Balance, CookieAffinity, Diagnostic, HashKey, ObjectRef, RetryPolicy,
    SameSite,
};

use crate::{Snapshot, namespace_of, object_ref};

/// The annotation prefix ingress-nginx uses by default.
pub const ANNOTATION_PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Controller-wide defaults that come from flags (the ConfigMap goes over them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyDefaults {
    /// `--proxy-next-upstream-tries`.
    pub tries: u32,
    /// `--use-proxy-protocol`, under the ConfigMap's `use-proxy-protocol`.
    pub use_proxy_protocol: bool,
}

impl Default for PolicyDefaults {
    fn default() -> Self {
        Self {
            tries: 3,
            use_proxy_protocol: false,
        }
    }
}

/// The controller-wide settings: the ConfigMap over the flags over ingress-nginx's
/// defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ControllerSettings {
    /// The policy every Ingress starts from.
    pub policy: BackendPolicy,
    /// `ssl-redirect` (default true): redirect plain HTTP for hosts with TLS.
    pub ssl_redirect: bool,
    /// `force-ssl-redirect` (default false): redirect even without TLS.
    pub force_ssl_redirect: bool,
    /// `hsts`, `hsts-max-age`, `hsts-include-subdomains`, `hsts-preload`, as a header value.
    pub hsts: Option<String>,
    /// `use-proxy-protocol`: the listeners expect a PROXY header.
    pub use_proxy_protocol: bool,
}

struct Hsts {
    enabled: bool,
    max_age: u64,
    include_subdomains: bool,
    preload: bool,
}

impl Hsts {
    fn header(&self) -> Option<String> {
        if !self.enabled {
            return None;
        }
        let mut v = format!("max-age={}", self.max_age);
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        Some(v)
    }
}

/// Reads the controller ConfigMap (`--configmap NAMESPACE/NAME`) into the settings every
/// Ingress starts from.
pub(crate) fn controller_defaults(
    snapshot: &Snapshot,
    config_map: Option<&(String, String)>,
    flags: &PolicyDefaults,
    diagnostics: &mut Vec<Diagnostic>,
) -> ControllerSettings {
    let mut settings = ControllerSettings {
        policy: BackendPolicy {
            balance: Balance::RoundRobin,
            retry: RetryPolicy {
                tries: flags.tries.max(1),
                ..RetryPolicy::default()
            },
            protocol: BackendProtocol::Http,
        },
        ssl_redirect: true,
        force_ssl_redirect: false,
        hsts: None,
        use_proxy_protocol: flags.use_proxy_protocol,
    };
    let mut hsts = Hsts {
        enabled: true,
        max_age: 31_536_000,
        include_subdomains: true,
        preload: false,
    };
    let Some((namespace, name)) = config_map else {
        settings.hsts = hsts.header();
        return settings;
    };
    let found = snapshot
        .config_maps
        .iter()
        .find(|cm| namespace_of(&cm.metadata) == namespace && cm.metadata.name.as_deref() == Some(name.as_str()));
    let Some(cm) = found else {
        diagnostics.push(Diagnostic::object(
            ObjectRef::new("ConfigMap", namespace.as_str(), name.as_str()),
            "the controller ConfigMap (--configmap) does not exist; built-in defaults apply",
        ));
        settings.hsts = hsts.header();
        return settings;
    };
    let mut obj = object_ref("ConfigMap", &cm.metadata);
    obj.namespace = namespace.clone();
    let empty = BTreeMap::new();
    let data = cm.data.as_ref().unwrap_or(&empty);
    let get = |key: &str| data.get(key).map(String::as_str);
    let mut problems = Vec::new();
    apply_settings(&mut settings.policy, get, &mut problems);
    for (key, slot) in [
        ("ssl-redirect", &mut settings.ssl_redirect),
        ("force-ssl-redirect", &mut settings.force_ssl_redirect),
        ("hsts", &mut hsts.enabled),
        ("hsts-include-subdomains", &mut hsts.include_subdomains),
        ("hsts-preload", &mut hsts.preload),
        ("use-proxy-protocol", &mut settings.use_proxy_protocol),
    ] {
        read_bool(get(key), key, slot, &mut problems);
    }
    if let Some(v) = get("hsts-max-age") {
        match v.trim().parse::<u64>() {
            Ok(n) => hsts.max_age = n,
            Err(_) => problems.push(format!("hsts-max-age: {v:?} is not a number of seconds; ignored")),
        }
    }
    settings.hsts = hsts.header();
    for p in problems {
        diagnostics.push(Diagnostic::object(obj.clone(), p));
    }
    settings
}

/// A "true"/"false" setting; anything else is a problem and keeps `slot`.
pub(crate) fn read_bool(value: Option<&str>, key: &str, slot: &mut bool, problems: &mut Vec<String>) {
    match value.map(str::trim) {
        None => {}
        Some("true") => *slot = true,
        Some("false") => *slot = false,
        Some(other) => problems.push(format!("{key}: {other:?} is not \"true\" or \"false\"; ignored")),
    }
}

/// The policy of one Ingress: its annotations over `defaults`. Problems are returned as
/// reasons for a diagnostic on the Ingress.
pub(crate) fn ingress_policy(
    annotations: Option<&BTreeMap<String, String>>,
    defaults: &BackendPolicy,
) -> (BackendPolicy, Vec<String>) {
    let mut policy = defaults.clone();
    let mut problems = Vec::new();
    // Most Ingresses carry no annotation of ours: skip every lookup then.
    let Some(annotations) = annotations.filter(|a| a.keys().any(|k| k.starts_with(ANNOTATION_PREFIX))) else {
        return (policy, problems);
    };
    let get = |key: &str| {
        annotations
            .get(&format!("{ANNOTATION_PREFIX}{key}"))
            .map(String::as_str)
    };
    apply_settings(&mut policy, get, &mut problems);
    for p in &mut problems {
        *p = format!("annotation {ANNOTATION_PREFIX}{p}");
    }

    if let Some(v) = get("backend-protocol").filter(|v| !v.trim().is_empty()) {
        match BackendProtocol::parse(v) {
            Ok(p) => policy.protocol = p,
            Err(e) => problems.push(format!("annotation {ANNOTATION_PREFIX}{e}")),
        }
    }
    match get("affinity").map(str::trim) {
        None | Some("") => {}
        Some("cookie") => {
            let mut cookie = CookieAffinity::default();
            let mut cookie_problems = Vec::new();
            read_cookie(&get, &mut cookie, &mut cookie_problems);
            problems.extend(
                cookie_problems
                    .into_iter()
                    .map(|p| format!("annotation {ANNOTATION_PREFIX}{p}")),
            );
            policy.balance = Balance::Cookie(cookie);
        }
        Some(other) => problems.push(format!(
            "annotation {ANNOTATION_PREFIX}affinity: {other:?} is not supported (only \"cookie\"); ignored"
        )),
    }
    (policy, problems)
}

/// Settings shared by the ConfigMap and the annotations (same key names).
fn apply_settings<'a>(policy: &mut BackendPolicy, get: impl Fn(&str) -> Option<&'a str>, problems: &mut Vec<String>) {
    match get("load-balance").map(str::trim) {
        None | Some("") => {}
        Some("round_robin") => policy.balance = Balance::RoundRobin,
        Some("ewma") => policy.balance = Balance::Ewma,
        Some(other) => problems.push(format!(
            "load-balance: {other:?} is not an algorithm (round_robin or ewma); keeping {}",
            policy.balance.name()
        )),
    }
    if let Some(template) = get("upstream-hash-by").filter(|t| !t.trim().is_empty()) {
        match HashKey::parse(template) {
            Ok(key) => policy.balance = Balance::Hash(key),
            Err(e) => problems.push(format!("upstream-hash-by: {e}; keeping {}", policy.balance.name())),
        }
    }
    if let Some(v) = get("proxy-next-upstream-tries") {
        match v.trim().parse::<u32>() {
            // nginx: 0 means "no limit"; the endpoint count bounds it anyway.
            Ok(0) => policy.retry.tries = u32::MAX,
            Ok(n) => policy.retry.tries = n,
            Err(_) => problems.push(format!("proxy-next-upstream-tries: {v:?} is not a number; ignored")),
        }
    }
    if let Some(v) = get("proxy-next-upstream") {
        match RetryPolicy::parse_conditions(v, policy.retry.tries) {
            Ok((retry, warnings)) => {
                policy.retry = retry;
                problems.extend(warnings);
            }
            Err(e) => problems.push(format!("{e}; ignored")),
        }
    }
}

fn read_cookie<'a>(get: &impl Fn(&str) -> Option<&'a str>, cookie: &mut CookieAffinity, problems: &mut Vec<String>) {
    if let Some(name) = get("session-cookie-name").map(str::trim).filter(|n| !n.is_empty()) {
        if is_cookie_token(name) {
            cookie.name = name.to_string();
        } else {
            problems.push(format!(
                "session-cookie-name: {name:?} is not a valid cookie name; using {}",
                cookie.name
            ));
        }
    }
    if let Some(path) = get("session-cookie-path").map(str::trim).filter(|p| !p.is_empty()) {
        if path.starts_with('/') && path.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b';') {
            cookie.path = Some(path.to_string());
        } else {
            problems.push(format!(
                "session-cookie-path: {path:?} is not a path; using the rule's path"
            ));
        }
    }
    for (key, slot) in [
        ("session-cookie-max-age", &mut cookie.max_age),
        ("session-cookie-expires", &mut cookie.expires),
    ] {
        if let Some(v) = get(key) {
            match v.trim().parse::<u64>() {
                Ok(n) => *slot = Some(n),
                Err(_) => problems.push(format!("{key}: {v:?} is not a number of seconds; ignored")),
            }
        }
    }
    if let Some(v) = get("session-cookie-samesite").map(str::trim).filter(|v| !v.is_empty()) {
        match v.to_ascii_lowercase().as_str() {
            "none" => cookie.samesite = Some(SameSite::None),
            "lax" => cookie.samesite = Some(SameSite::Lax),
            "strict" => cookie.samesite = Some(SameSite::Strict),
            _ => problems.push(format!(
                "session-cookie-samesite: {v:?} is not None, Lax or Strict; ignored"
            )),
        }
    }
    for (key, slot) in [
        ("session-cookie-secure", &mut cookie.secure),
        ("session-cookie-change-on-failure", &mut cookie.change_on_failure),
    ] {
        read_bool(get(key), key, slot, problems);
    }
    match get("affinity-mode").map(str::trim) {
        None | Some("") | Some("balanced") => cookie.mode = AffinityMode::Balanced,
        Some("persistent") => cookie.mode = AffinityMode::Persistent,
        Some(other) => problems.push(format!(
            "affinity-mode: {other:?} is not balanced or persistent; using balanced"
        )),
    }
}

/// RFC 6265 cookie-name: an RFC 7230 token.
fn is_cookie_token(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses `--configmap NAMESPACE/NAME`.
pub fn parse_config_map_ref(value: &str) -> Result<(String, String), String> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{value:?} is not NAMESPACE/NAME")),
    }
}
