//! Host names as requests carry them and as Ingress rules name them.

/// The host part of a `Host` header or `:authority`, lower-cased, without port and
/// without a trailing dot. Returns `None` for an empty host.
///
/// `Example.COM:8080` -> `example.com`; `[::1]:80` -> `[::1]`; `example.com.` -> `example.com`.
pub fn normalize_request_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port after them.
        match raw.find(']') {
            Some(end) => raw.get(..=end).unwrap_or(raw),
            None => raw,
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        None
    } else {
        Some(host.to_ascii_lowercase())
    }
}

/// A host as an Ingress rule names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostPattern {
    /// `foo.example.com`
    Exact(String),
    /// `*.example.com`, stored as the suffix `example.com`: matches exactly one extra label.
    Wildcard(String),
}

/// Why a rule's host was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    #[error(
        "host {0:?} is not a valid DNS name (lower-case letters, digits, '-' and '.', labels of 1 to 63 characters)"
    )]
    Invalid(String),
    #[error("host {0:?}: a wildcard is only allowed as the whole first label (\"*.example.com\")")]
    BadWildcard(String),
    #[error("host {0:?} is an IP address; Ingress hosts must be DNS names")]
    IpAddress(String),
}

impl HostPattern {
    /// Parses a rule host the way the Kubernetes API validates it (a DNS-1123 subdomain,
    /// optionally with `*.` in front). Upper case is accepted and folded, as requests are
    /// matched case-insensitively anyway.
    pub fn parse(raw: &str) -> Result<Self, HostError> {
        let lower = raw.to_ascii_lowercase();
        if let Some(suffix) = lower.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(HostError::BadWildcard(raw.to_string()));
            }
            check_dns_name(suffix).map_err(|()| HostError::Invalid(raw.to_string()))?;
            return Ok(HostPattern::Wildcard(suffix.to_string()));
        }
        if lower.contains('*') {
            return Err(HostError::BadWildcard(raw.to_string()));
        }
        if lower.parse::<std::net::IpAddr>().is_ok() {
            return Err(HostError::IpAddress(raw.to_string()));
        }
        check_dns_name(&lower).map_err(|()| HostError::Invalid(raw.to_string()))?;
        Ok(HostPattern::Exact(lower))
    }

    /// The pattern as written in a rule (`*.example.com` for wildcards).
    pub fn as_rule(&self) -> String {
        match self {
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Wildcard(s) => format!("*.{s}"),
        }
    }
}

fn check_dns_name(name: &str) -> Result<(), ()> {
    if name.is_empty() || name.len() > 253 {
        return Err(());
    }
    for label in name.split('.') {
        let bytes = label.as_bytes();
        let ok_len = !bytes.is_empty() && bytes.len() <= 63;
        let ok_chars = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        let ok_ends = bytes.first() != Some(&b'-') && bytes.last() != Some(&b'-');
        if !(ok_len && ok_chars && ok_ends) {
            return Err(());
        }
    }
    Ok(())
}

/// For a normalised request host, the suffix a single-label wildcard would be stored
/// under: `foo.example.com` -> `example.com`. `None` when the host has a single label.
pub fn wildcard_suffix(host: &str) -> Option<&str> {
    let (first, rest) = host.split_once('.')?;
    if first.is_empty() || rest.is_empty() {
        None
    } else {
        Some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_hosts_are_lowercased_and_lose_port_and_trailing_dot() {
        assert_eq!(
            normalize_request_host("Example.COM:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_request_host("example.com.").as_deref(), Some("example.com"));
        assert_eq!(normalize_request_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize_request_host("[::1]").as_deref(), Some("[::1]"));
        assert_eq!(normalize_request_host("10.0.0.1:80").as_deref(), Some("10.0.0.1"));
        assert_eq!(normalize_request_host(""), None);
        assert_eq!(normalize_request_host(":80"), None);
    }

    #[test]
    fn rule_hosts_follow_the_api_validation() {
        assert_eq!(
            HostPattern::parse("Foo.Example.com"),
            Ok(HostPattern::Exact("foo.example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("*.example.com"),
            Ok(HostPattern::Wildcard("example.com".into()))
        );
        assert!(matches!(
            HostPattern::parse("foo.*.com"),
            Err(HostError::BadWildcard(_))
        ));
        assert!(matches!(HostPattern::parse("*"), Err(HostError::BadWildcard(_))));
        assert!(matches!(HostPattern::parse("*.*.com"), Err(HostError::BadWildcard(_))));
        assert!(matches!(HostPattern::parse("10.1.2.3"), Err(HostError::IpAddress(_))));
        assert!(matches!(
            HostPattern::parse("under_score.com"),
            Err(HostError::Invalid(_))
        ));
        assert!(matches!(HostPattern::parse("-lead.com"), Err(HostError::Invalid(_))));
        assert!(matches!(HostPattern::parse("a..b"), Err(HostError::Invalid(_))));
        assert!(HostPattern::parse(&"a".repeat(64)).is_err());
    }

    #[test]
    fn wildcard_suffix_takes_off_exactly_one_label() {
        assert_eq!(wildcard_suffix("foo.example.com"), Some("example.com"));
        assert_eq!(wildcard_suffix("a.b.example.com"), Some("b.example.com"));
        assert_eq!(wildcard_suffix("localhost"), None);
        assert_eq!(wildcard_suffix(".example.com"), None);
    }
}
