//! The resource table: which kinds the fake serves, and how each behaves. Adding a kind is one line
//! in [`RESOURCES`].

/// The kind's objects live in namespaces (otherwise cluster-scoped).
pub(crate) const NAMESPACED: u8 = 1;
/// The kind has a `/status` subresource: the main resource ignores `.status` on create and update,
/// and `/status` changes only `.status`.
pub(crate) const STATUS: u8 = 2;
/// A PUT on a missing object creates it (the real registry's `AllowCreateOnUpdate`: Leases, Events).
pub(crate) const CREATE_ON_UPDATE: u8 = 4;
/// A PUT must carry `metadata.resourceVersion` (the real registry's `AllowUnconditionalUpdate` is
/// false: Leases, so that leader election cannot overwrite blindly).
pub(crate) const CONDITIONAL_UPDATE_ONLY: u8 = 8;
/// A DELETE answers with the deleted object (the real registry's `ReturnDeletedObject`:
/// Services); otherwise with a `Status` of success.
pub(crate) const RETURN_DELETED: u8 = 16;

/// One API resource: its group/version, kind, plural and behaviour.
#[derive(Debug)]
pub(crate) struct ResourceType {
    /// "" for the core group (served under `/api/v1`).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    flags: u8,
    /// Field selector labels beyond `metadata.name` and `metadata.namespace`, with the JSON
    /// pointer of the value each one compares.
    pub fields: &'static [(&'static str, &'static str)],
}

impl ResourceType {
    const fn new(
        group: &'static str,
        version: &'static str,
        kind: &'static str,
        plural: &'static str,
        flags: u8,
    ) -> Self {
        Self {
            group,
            version,
            kind,
            plural,
            flags,
            fields: &[],
        }
    }

    const fn fields(mut self, fields: &'static [(&'static str, &'static str)]) -> Self {
        self.fields = fields;
        self
    }

    pub fn namespaced(&self) -> bool {
        self.flags & NAMESPACED != 0
    }

    pub fn has_status(&self) -> bool {
        self.flags & STATUS != 0
    }

    pub fn create_on_update(&self) -> bool {
        self.flags & CREATE_ON_UPDATE != 0
    }

    pub fn unconditional_update(&self) -> bool {
        self.flags & CONDITIONAL_UPDATE_ONLY == 0
    }

    pub fn returns_deleted(&self) -> bool {
        self.flags & RETURN_DELETED != 0
    }

    /// `v1` or `networking.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `leases.coordination.k8s.io` or `services`, as the real server names a resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const CORE_EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject.kind", "/involvedObject/kind"),
    ("involvedObject.namespace", "/involvedObject/namespace"),
    ("involvedObject.name", "/involvedObject/name"),
    ("involvedObject.uid", "/involvedObject/uid"),
    ("involvedObject.apiVersion", "/involvedObject/apiVersion"),
    ("involvedObject.resourceVersion", "/involvedObject/resourceVersion"),
    ("involvedObject.fieldPath", "/involvedObject/fieldPath"),
    ("reason", "/reason"),
    ("reportingComponent", "/reportingComponent"),
    ("source", "/source/component"),
    ("type", "/type"),
];

const EVENTS_V1_FIELDS: &[(&str, &str)] = &[
    ("regarding.kind", "/regarding/kind"),
    ("regarding.namespace", "/regarding/namespace"),
    ("regarding.name", "/regarding/name"),
    ("regarding.uid", "/regarding/uid"),
    ("regarding.apiVersion", "/regarding/apiVersion"),
    ("regarding.resourceVersion", "/regarding/resourceVersion"),
    ("regarding.fieldPath", "/regarding/fieldPath"),
    ("reason", "/reason"),
    ("reportingController", "/reportingController"),
    ("type", "/type"),
];

/// Every kind the fake serves.
pub(crate) static RESOURCES: &[ResourceType] = &[
    ResourceType::new("networking.k8s.io", "v1", "IngressClass", "ingressclasses", 0),
    ResourceType::new("networking.k8s.io", "v1", "Ingress", "ingresses", NAMESPACED | STATUS),
    ResourceType::new("", "v1", "Service", "services", NAMESPACED | STATUS | RETURN_DELETED)
        .fields(&[("spec.clusterIP", "/spec/clusterIP"), ("spec.type", "/spec/type")]),
    ResourceType::new("", "v1", "Secret", "secrets", NAMESPACED).fields(&[("type", "/type")]),
    ResourceType::new("", "v1", "ConfigMap", "configmaps", NAMESPACED),
    ResourceType::new("", "v1", "Pod", "pods", NAMESPACED | STATUS)
        .fields(&[("spec.nodeName", "/spec/nodeName"), ("status.phase", "/status/phase")]),
    ResourceType::new("", "v1", "Node", "nodes", STATUS),
    ResourceType::new("", "v1", "Event", "events", NAMESPACED | CREATE_ON_UPDATE).fields(CORE_EVENT_FIELDS),
    ResourceType::new("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", NAMESPACED),
    ResourceType::new(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        NAMESPACED | CREATE_ON_UPDATE | CONDITIONAL_UPDATE_ONLY,
    ),
    ResourceType::new("events.k8s.io", "v1", "Event", "events", NAMESPACED | CREATE_ON_UPDATE).fields(EVENTS_V1_FIELDS),
];

/// The index in [`RESOURCES`] of a kind named by `apiVersion` and `kind`.
pub(crate) fn by_kind(api_version: &str, kind: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.kind == kind && r.api_version() == api_version)
}

/// The index in [`RESOURCES`] of a resource named by its group, version and plural.
pub(crate) fn by_plural(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Version,
    Health,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/api/v1`, `/apis/{group}/{version}`
    Resources {
        group: String,
        version: String,
    },
    Object(Target),
    NotFound,
}

/// A collection, an object or a subresource of one kind.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub res: usize,
    /// The namespace in the path; `None` for cluster-scoped kinds and all-namespace collections.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parses a request path (without the query).
pub(crate) fn route(path: &str) -> Route {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return if path == "/" { Route::NotFound } else { trailing(path) };
    }
    let (group, version, rest) = match segments.as_slice() {
        ["version"] => return Route::Version,
        ["healthz" | "readyz" | "livez"] => return Route::Health,
        ["api"] => return Route::CoreVersions,
        ["apis"] => return Route::Groups,
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Route::NotFound,
    };
    let (namespace, plural, name, subresource) = match rest {
        [] => {
            return Route::Resources {
                group: group.to_string(),
                version: version.to_string(),
            };
        }
        ["namespaces", ns, plural, tail @ ..] if tail.len() <= 2 => (Some(*ns), *plural, tail.first(), tail.get(1)),
        [plural, tail @ ..] if tail.len() <= 2 => (None, *plural, tail.first(), tail.get(1)),
        _ => return Route::NotFound,
    };
    let Some(res) = by_plural(group, version, plural) else {
        return Route::NotFound;
    };
    let rt = &RESOURCES[res];
    // A namespaced kind has no cluster-level object paths, only its all-namespace collection;
    // a cluster-scoped kind has no paths under a namespace.
    if rt.namespaced() && namespace.is_none() && name.is_some() || !rt.namespaced() && namespace.is_some() {
        return Route::NotFound;
    }
    Route::Object(Target {
        res,
        namespace: namespace.map(|s| s.to_string()),
        name: name.map(|s| s.to_string()),
        subresource: subresource.map(|s| s.to_string()),
    })
}

/// `/apis/` and friends: a trailing slash is tolerated, other empty segments are not.
fn trailing(path: &str) -> Route {
    match path.strip_suffix('/') {
        Some(p) if !p.is_empty() && !p.ends_with('/') => route(p),
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Target {
        match route(path) {
            Route::Object(t) => t,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn paths() {
        let ing = by_kind("networking.k8s.io/v1", "Ingress").unwrap();
        let t = target("/apis/networking.k8s.io/v1/namespaces/default/ingresses/web/status");
        assert_eq!(t.res, ing);
        assert_eq!(t.namespace.as_deref(), Some("default"));
        assert_eq!(t.name.as_deref(), Some("web"));
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let t = target("/apis/networking.k8s.io/v1/ingresses");
        assert_eq!((t.namespace, t.name), (None, None));
        let t = target("/apis/networking.k8s.io/v1/ingressclasses/kingress");
        assert_eq!(t.name.as_deref(), Some("kingress"));
        let t = target("/api/v1/namespaces/kube-system/secrets");
        assert_eq!(RESOURCES[t.res].kind, "Secret");
        assert_eq!(route("/apis/networking.k8s.io/v1/ingresses/web"), Route::NotFound);
        assert_eq!(
            route("/apis/networking.k8s.io/v1/namespaces/a/ingressclasses"),
            Route::NotFound
        );
        assert_eq!(route("/api/v1/namespaces/default"), Route::NotFound);
        assert_eq!(route("/api/v1/replicationcontrollers"), Route::NotFound);
        // Pods and Nodes are served (ServiceLB status finds the nodes kingress runs on).
        assert_eq!(RESOURCES[target("/api/v1/pods").res].kind, "Pod");
        assert_eq!(RESOURCES[target("/api/v1/nodes/n1").res].kind, "Node");
        assert_eq!(route("/version"), Route::Version);
        assert_eq!(route("/apis/"), Route::Groups);
        let ev = by_kind("events.k8s.io/v1", "Event").unwrap();
        assert_eq!(target("/apis/events.k8s.io/v1/namespaces/x/events").res, ev);
        assert_ne!(target("/api/v1/namespaces/x/events").res, ev);
    }
}
