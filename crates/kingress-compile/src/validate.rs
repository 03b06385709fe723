//! Object validation: what the API server would reject (and what a folder of manifests
//! can still contain), turned into typed, checked values or a list of reasons.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use kingress_model::PathType;
use kingress_model::host::HostPattern;

/// A Service port as an Ingress names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PortRef {
    Number(u16),
    Name(String),
}

impl PortRef {
    pub(crate) fn as_key(&self) -> String {
        match self {
            PortRef::Number(n) => n.to_string(),
            PortRef::Name(n) => n.clone(),
        }
    }
}

/// `backend.service` of an Ingress path or default backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceRef {
    pub name: String,
    pub port: PortRef,
}

pub(crate) struct ValidPath {
    pub path: String,
    pub path_type: PathType,
    pub backend: ServiceRef,
}

pub(crate) struct ValidRule {
    /// `None`: the rule has no host and matches any host without a server of its own.
    pub host: Option<HostPattern>,
    pub paths: Vec<ValidPath>,
}

pub(crate) struct ValidIngress {
    pub default_backend: Option<ServiceRef>,
    pub rules: Vec<ValidRule>,
    /// Parts that are valid Kubernetes but that kingress does not serve (resource
    /// backends): reported, skipped, the rest of the Ingress serves.
    pub warnings: Vec<String>,
}

/// Checks an Ingress as the API server's validation would; any error rejects the
/// whole object (as `kubectl apply` would).
pub(crate) fn validate_ingress(ing: &Ingress) -> Result<ValidIngress, Vec<String>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    if ing.metadata.name.as_deref().unwrap_or("").is_empty() {
        errors.push("metadata.name is required".to_string());
    }
    let Some(spec) = ing.spec.as_ref() else {
        errors.push("spec is required".to_string());
        return Err(errors);
    };
    let default_backend = match &spec.default_backend {
        None => None,
        Some(b) => match backend(b, "spec.defaultBackend") {
            Ok(Some(s)) => Some(s),
            Ok(None) => {
                warnings.push("spec.defaultBackend: resource backends are not supported; ignored".to_string());
                None
            }
            Err(e) => {
                errors.push(e);
                None
            }
        },
    };
    let mut rules = Vec::new();
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        let host = match rule.host.as_deref().unwrap_or("") {
            "" => None,
            raw => match HostPattern::parse(raw) {
                Ok(h) => Some(h),
                Err(e) => {
                    errors.push(format!("spec.rules[{i}].host: {e}"));
                    None
                }
            },
        };
        let mut paths = Vec::new();
        for (j, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            let at = format!("spec.rules[{i}].http.paths[{j}]");
            let path_type = match PathType::parse(&p.path_type) {
                Some(t) => t,
                None if p.path_type.is_empty() => {
                    errors.push(format!(
                        "{at}.pathType is required (Exact, Prefix or ImplementationSpecific)"
                    ));
                    continue;
                }
                None => {
                    errors.push(format!(
                        "{at}.pathType {:?} is not one of Exact, Prefix, ImplementationSpecific",
                        p.path_type
                    ));
                    continue;
                }
            };
            let path = p.path.clone().unwrap_or_default();
            if path.is_empty() && path_type != PathType::ImplementationSpecific {
                errors.push(format!("{at}.path is required for pathType {}", path_type.as_str()));
                continue;
            }
            if !path.is_empty() && !path.starts_with('/') {
                errors.push(format!("{at}.path {path:?} must be an absolute path (start with '/')"));
                continue;
            }
            if path.chars().any(|c| c.is_control() || c.is_whitespace()) {
                errors.push(format!("{at}.path {path:?} contains whitespace or control characters"));
                continue;
            }
            match backend(&p.backend, &format!("{at}.backend")) {
                Ok(Some(service)) => paths.push(ValidPath {
                    path,
                    path_type,
                    backend: service,
                }),
                Ok(None) => warnings.push(format!(
                    "{at}.backend: resource backends are not supported; path skipped"
                )),
                Err(e) => errors.push(e),
            }
        }
        rules.push(ValidRule { host, paths });
    }
    if rules.is_empty() && spec.default_backend.is_none() {
        errors.push("spec: either defaultBackend or rules must be specified".to_string());
    }
    if errors.is_empty() {
        Ok(ValidIngress {
            default_backend,
            rules,
            warnings,
        })
    } else {
        Err(errors)
    }
}

/// `Ok(None)` for a resource backend (valid, unsupported).
fn backend(b: &IngressBackend, at: &str) -> Result<Option<ServiceRef>, String> {
    match (&b.service, &b.resource) {
        (Some(_), Some(_)) => Err(format!("{at}: service and resource are mutually exclusive")),
        (None, Some(_)) => Ok(None),
        (None, None) => Err(format!("{at}: service is required")),
        (Some(s), None) => {
            if s.name.is_empty() {
                return Err(format!("{at}.service.name is required"));
            }
            let Some(port) = &s.port else {
                return Err(format!("{at}.service.port is required"));
            };
            let port = match (port.number, port.name.as_deref().filter(|n| !n.is_empty())) {
                (Some(_), Some(_)) => return Err(format!("{at}.service.port: number and name are mutually exclusive")),
                (None, None) => return Err(format!("{at}.service.port: number or name is required")),
                (Some(n), None) => match u16::try_from(n) {
                    Ok(n) if n > 0 => PortRef::Number(n),
                    _ => return Err(format!("{at}.service.port.number {n} is not between 1 and 65535")),
                },
                (None, Some(name)) => PortRef::Name(name.to_string()),
            };
            Ok(Some(ServiceRef {
                name: s.name.clone(),
                port,
            }))
        }
    }
}

/// L4 protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    pub(crate) fn parse(raw: Option<&str>) -> Option<Self> {
        match raw.unwrap_or("TCP") {
            "TCP" | "" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// A checked Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ValidServicePort {
    /// Empty for the single unnamed port.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug)]
pub(crate) struct ValidService {
    pub ports: Vec<ValidServicePort>,
    /// `spec.type: ExternalName`: no endpoints of its own.
    pub external_name: Option<String>,
}

pub(crate) fn validate_service(svc: &Service) -> Result<ValidService, Vec<String>> {
    let mut errors = Vec::new();
    if svc.metadata.name.as_deref().unwrap_or("").is_empty() {
        errors.push("metadata.name is required".to_string());
    }
    let spec = svc.spec.as_ref();
    let external_name = spec
        .filter(|s| s.type_.as_deref() == Some("ExternalName"))
        .map(|s| s.external_name.clone().unwrap_or_default());
    let mut ports = Vec::new();
    let raw_ports = spec.and_then(|s| s.ports.as_ref()).map(|p| p.as_slice()).unwrap_or(&[]);
    for (i, p) in raw_ports.iter().enumerate() {
        let name = p.name.clone().unwrap_or_default();
        let port = match u16::try_from(p.port) {
            Ok(n) if n > 0 => n,
            _ => {
                errors.push(format!("spec.ports[{i}].port {} is not between 1 and 65535", p.port));
                continue;
            }
        };
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
            errors.push(format!(
                "spec.ports[{i}].protocol {:?} is not one of TCP, UDP, SCTP",
                p.protocol.as_deref().unwrap_or("")
            ));
            continue;
        };
        if raw_ports.len() > 1 && name.is_empty() {
            errors.push(format!(
                "spec.ports[{i}].name is required when a Service has several ports"
            ));
            continue;
        }
        if ports
            .iter()
            .any(|q: &ValidServicePort| !name.is_empty() && q.name == name)
        {
            errors.push(format!("spec.ports[{i}].name {name:?} is used twice"));
            continue;
        }
        ports.push(ValidServicePort { name, port, protocol });
    }
    if errors.is_empty() {
        Ok(ValidService { ports, external_name })
    } else {
        Err(errors)
    }
}
