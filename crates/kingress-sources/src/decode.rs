//! Decoding manifest files into typed Kubernetes objects.
//!
//! Two levels of failure, reported differently:
//! - the file does not parse (YAML or JSON syntax): one diagnostic with the file's path,
//!   line and column; the caller keeps the file's last good objects;
//! - a document parses but is not a valid object of a kind we read (a string where a
//!   number belongs, an unsupported apiVersion): a diagnostic naming kind and
//!   namespace/name; that object is skipped, the file's other objects serve.
//!
//! Kinds we do not read (Deployments, Pods, ...) are ignored silently: a folder of
//! real manifests holds many of them.

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kingress_compile::DEFAULT_NAMESPACE;
use kingress_model::{Diagnostic, ObjectRef};
use serde_json::Value;

/// One decoded object of a kind kingress reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    IngressClass(Box<IngressClass>),
    Ingress(Box<Ingress>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Secret(Box<Secret>),
    ConfigMap(Box<ConfigMap>),
}

impl Object {
    /// `Kind namespace/name`, the identity used to detect duplicates.
    pub fn object_ref(&self) -> ObjectRef {
        let (kind, meta) = match self {
            Object::IngressClass(o) => ("IngressClass", &o.metadata),
            Object::Ingress(o) => ("Ingress", &o.metadata),
            Object::Service(o) => ("Service", &o.metadata),
            Object::EndpointSlice(o) => ("EndpointSlice", &o.metadata),
            Object::Secret(o) => ("Secret", &o.metadata),
            Object::ConfigMap(o) => ("ConfigMap", &o.metadata),
        };
        ObjectRef::new(
            kind,
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

/// What one file decoded to.
#[derive(Debug, Default)]
pub struct Decoded {
    pub objects: Vec<Object>,
    /// Object-level problems (the file itself parsed).
    pub diagnostics: Vec<Diagnostic>,
}

/// The file did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub Diagnostic);

/// Decodes a file's text. `path` is only used in diagnostics; `json` picks the parser.
pub fn decode_file(path: &str, text: &str, json: bool) -> Result<Decoded, ParseError> {
    let documents: Vec<Value> = if json {
        // A JSON file holds one value (an object or a List); also accept several
        // concatenated values, as `kubectl get -o json` streams can be.
        let mut out = Vec::new();
        for v in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            match v {
                Ok(v) => out.push(v),
                Err(e) => {
                    return Err(ParseError(Diagnostic::file(
                        path,
                        Some(e.line() as u64),
                        Some(e.column() as u64),
                        format!("does not parse as JSON: {e}"),
                    )));
                }
            }
        }
        out
    } else {
        serde_saphyr::from_multiple::<Value>(text).map_err(|e| {
            let loc = e.location();
            let message = e.to_string();
            let first_line = message.lines().next().unwrap_or("").to_string();
            ParseError(Diagnostic::file(
                path,
                loc.as_ref().map(|l| l.line()),
                loc.as_ref().map(|l| l.column()),
                format!("does not parse as YAML: {first_line}"),
            ))
        })?
    };
    let mut decoded = Decoded::default();
    for (index, doc) in documents.into_iter().enumerate() {
        decode_value(path, index, doc, &mut decoded, 0);
    }
    Ok(decoded)
}

fn decode_value(path: &str, index: usize, doc: Value, out: &mut Decoded, depth: usize) {
    let Value::Object(map) = &doc else {
        if !doc.is_null() {
            out.diagnostics.push(Diagnostic::file(
                path,
                None,
                None,
                format!(
                    "document {} is not a Kubernetes object (not a mapping); ignored",
                    index + 1
                ),
            ));
        }
        return;
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("").to_string();
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
    if kind.ends_with("List") && map.get("items").is_some_and(Value::is_array) {
        if depth > 2 {
            out.diagnostics
                .push(Diagnostic::file(path, None, None, "Lists nested too deep; ignored"));
            return;
        }
        if let Some(Value::Array(items)) = map.get("items").cloned() {
            for item in items {
                decode_value(path, index, item, out, depth + 1);
            }
        }
        return;
    }
    let meta = map.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_string();
    if kind.is_empty() || api_version.is_empty() {
        out.diagnostics.push(Diagnostic::file(
            path,
            None,
            None,
            format!("document {} has no apiVersion or kind; ignored", index + 1),
        ));
        return;
    }
    let obj_ref = |kind: &str, namespaced: bool| {
        ObjectRef::new(
            kind,
            if namespaced { namespace.clone() } else { String::new() },
            name.clone(),
        )
    };
    let expected = match kind.as_str() {
        "Ingress" => "networking.k8s.io/v1",
        "IngressClass" => "networking.k8s.io/v1",
        "Service" => "v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        "Secret" => "v1",
        "ConfigMap" => "v1",
        _ => return, // a kind we do not read
    };
    let namespaced = kind != "IngressClass";
    if api_version != expected {
        out.diagnostics.push(Diagnostic::object(
            obj_ref(&kind, namespaced),
            format!("apiVersion {api_version:?} is not supported for {kind}; use {expected:?}; skipped"),
        ));
        return;
    }
    let mut doc = doc;
    if namespaced {
        set_default_namespace(&mut doc);
    }
    let result = match kind.as_str() {
        "Ingress" => serde_json::from_value(doc).map(|o| Object::Ingress(Box::new(o))),
        "IngressClass" => serde_json::from_value(doc).map(|o| Object::IngressClass(Box::new(o))),
        "Service" => serde_json::from_value(doc).map(|o| Object::Service(Box::new(o))),
        "EndpointSlice" => serde_json::from_value(doc).map(|o| Object::EndpointSlice(Box::new(o))),
        "ConfigMap" => serde_json::from_value(doc).map(|o| Object::ConfigMap(Box::new(o))),
        _ => serde_json::from_value(doc).map(|o| Object::Secret(Box::new(o))),
    };
    match result {
        Ok(o) => out.objects.push(o),
        Err(e) => out.diagnostics.push(Diagnostic::object(
            obj_ref(&kind, namespaced),
            format!("invalid, skipped: {e}"),
        )),
    }
}

fn set_default_namespace(doc: &mut Value) {
    let Some(map) = doc.as_object_mut() else { return };
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(meta) = meta.as_object_mut() {
        let missing = meta.get("namespace").and_then(Value::as_str).is_none_or(str::is_empty);
        if missing {
            meta.insert("namespace".into(), Value::String(DEFAULT_NAMESPACE.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_lists() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
# a kind we do not read
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
---
apiVersion: v1
kind: List
items:
- apiVersion: networking.k8s.io/v1
  kind: Ingress
  metadata: {name: a, namespace: prod}
  spec: {defaultBackend: {service: {name: web, port: {number: 80}}}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: kingress, namespace: ingress}
data: {load-balance: ewma}
"#;
        let d = decode_file("x.yaml", text, false).unwrap();
        assert!(d.diagnostics.is_empty(), "{:?}", d.diagnostics);
        let refs: Vec<String> = d.objects.iter().map(|o| o.object_ref().to_string()).collect();
        assert_eq!(
            refs,
            vec![
                "Service default/web",
                "Ingress prod/a",
                "EndpointSlice default/web-1",
                "ConfigMap ingress/kingress"
            ]
        );
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: [unclosed\n";
        let err = decode_file("bad.yaml", text, false).unwrap_err();
        let s = err.0.to_string();
        assert!(s.starts_with("bad.yaml:"), "{s}");
        assert!(
            matches!(err.0.subject, kingress_model::Subject::File { line: Some(_), .. }),
            "{s}"
        );
        let err = decode_file("bad.json", "{\n  \"kind\": \n}", true).unwrap_err();
        assert!(
            err.0.to_string().starts_with("bad.json:3:1: does not parse as JSON"),
            "{}",
            err.0
        );
    }

    #[test]
    fn invalid_objects_name_kind_namespace_and_name() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: ns1}
spec: {ports: [{port: "eighty"}]}
---
apiVersion: extensions/v1beta1
kind: Ingress
metadata: {name: old}
spec: {}
---
apiVersion: v1
kind: Service
metadata: {name: good}
spec: {ports: [{port: 80}]}
---
just a string
"#;
        let d = decode_file("x.yaml", text, false).unwrap();
        assert_eq!(d.objects.len(), 1);
        let diags: Vec<String> = d.diagnostics.iter().map(ToString::to_string).collect();
        assert!(diags[0].starts_with("Service ns1/bad: invalid, skipped:"), "{diags:?}");
        assert!(
            diags[1].starts_with("Ingress default/old: apiVersion \"extensions/v1beta1\""),
            "{diags:?}"
        );
        assert!(diags[2].contains("not a Kubernetes object"), "{diags:?}");
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        for text in [
            "",
            "---\n---\n",
            "[1, 2, 3]",
            "kind: List\napiVersion: v1\nitems: 3",
            "a: &a [*a]",
            "? [a, b]\n: c",
            "apiVersion: v1\nkind: Service\nmetadata: 5",
            "\u{0}\u{1}",
            &"[".repeat(10_000),
        ] {
            let _ = decode_file("h.yaml", text, false);
            let _ = decode_file("h.json", text, true);
        }
    }
}
