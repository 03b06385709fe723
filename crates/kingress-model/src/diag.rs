//! Diagnostics: how a bad object, a bad file or an unresolved reference is reported.
//!
//! A diagnostic never fails the table: the object it names is skipped (or served with
//! a degraded answer, such as 503 for a missing Service) and everything else serves.

use std::fmt;

/// A Kubernetes object, named the way `kubectl` users read it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// `Ingress`, `Service`, `EndpointSlice`, ...
    pub kind: String,
    /// Empty for cluster-scoped kinds (IngressClass).
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: impl Into<String>, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// What a diagnostic is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// An object that was decoded (at least far enough to know its kind and name).
    Object(ObjectRef),
    /// A file (or a document in it) that could not be read or parsed.
    File {
        path: String,
        /// 1-based line and column, when the parser knows them.
        line: Option<u64>,
        column: Option<u64>,
    },
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Object(o) => o.fmt(f),
            Subject::File { path, line, column } => {
                write!(f, "{path}")?;
                if let Some(line) = line {
                    write!(f, ":{line}")?;
                    if let Some(column) = column {
                        write!(f, ":{column}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// One problem found while reading or compiling the inputs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    pub subject: Subject,
    /// Human-readable, complete sentence fragment: "service \"api\" not found".
    pub reason: String,
}

impl Diagnostic {
    pub fn object(object: ObjectRef, reason: impl Into<String>) -> Self {
        Self {
            subject: Subject::Object(object),
            reason: reason.into(),
        }
    }

    pub fn file(path: impl Into<String>, line: Option<u64>, column: Option<u64>, reason: impl Into<String>) -> Self {
        Self {
            subject: Subject::File {
                path: path.into(),
                line,
                column,
            },
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_namespace_name_and_file_positions() {
        let d = Diagnostic::object(ObjectRef::new("Ingress", "default", "web"), "bad port");
        assert_eq!(d.to_string(), "Ingress default/web: bad port");
        let d = Diagnostic::object(ObjectRef::new("IngressClass", "", "kingress"), "x");
        assert_eq!(d.to_string(), "IngressClass kingress: x");
        let d = Diagnostic::file("a/b.yaml", Some(3), Some(7), "did not parse");
        assert_eq!(d.to_string(), "a/b.yaml:3:7: did not parse");
        let d = Diagnostic::file("a/b.yaml", None, None, "unreadable");
        assert_eq!(d.to_string(), "a/b.yaml: unreadable");
    }
}
