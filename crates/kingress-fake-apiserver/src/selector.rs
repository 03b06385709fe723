//! Label and field selectors, as `labelSelector` and `fieldSelector` query parameters carry them.

use serde_json::Value;

use crate::resources::ResourceType;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`: every requirement must hold (an empty selector matches everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<LabelReq>);

impl LabelSelector {
    /// Parses equality-based (`a=b`, `a==b`, `a!=b`), set-based (`a in (x,y)`, `a notin (x)`) and
    /// existence (`a`, `!a`) requirements, comma-separated.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_label_req(part)?);
        }
        Ok(Self(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_label_req(part: &str) -> Result<LabelReq, String> {
    let bad = || format!("unable to parse requirement: {part:?}");
    if let Some(key) = part.strip_prefix('!') {
        return Ok(LabelReq::NotExists(check_key(key.trim()).ok_or_else(bad)?));
    }
    if let Some((key, rest)) = part.split_once(char::is_whitespace) {
        let rest = rest.trim_start();
        let (op, values) = if let Some(v) = rest.strip_prefix("notin") {
            ("notin", v)
        } else if let Some(v) = rest.strip_prefix("in") {
            ("in", v)
        } else {
            return parse_equality(part).ok_or_else(bad);
        };
        let values = values
            .trim()
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or_else(bad)?;
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        let key = check_key(key).ok_or_else(bad)?;
        return Ok(if op == "in" {
            LabelReq::In(key, values)
        } else {
            LabelReq::NotIn(key, values)
        });
    }
    if part.contains('=') {
        return parse_equality(part).ok_or_else(bad);
    }
    if part.contains(['<', '>']) {
        return Err(format!(
            "the fake API server does not support numeric label requirements: {part:?}"
        ));
    }
    Ok(LabelReq::Exists(check_key(part).ok_or_else(bad)?))
}

fn parse_equality(part: &str) -> Option<LabelReq> {
    if let Some((k, v)) = part.split_once("!=") {
        return Some(LabelReq::NotEq(check_key(k.trim())?, v.trim().to_string()));
    }
    let (k, v) = part.split_once("==").or_else(|| part.split_once('='))?;
    Some(LabelReq::Eq(check_key(k.trim())?, v.trim().to_string()))
}

fn check_key(key: &str) -> Option<String> {
    let ok = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    ok.then(|| key.to_string())
}

/// A parsed `fieldSelector`: `field=value`, `field==value` or `field!=value`, comma-separated, over
/// `metadata.name`, `metadata.namespace` and the kind's own field labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str, rt: &ResourceType) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{part}'"));
            };
            let field = field.trim();
            let pointer = match field {
                "metadata.name" => "/metadata/name",
                "metadata.namespace" => "/metadata/namespace",
                other => match rt.fields.iter().find(|(label, _)| *label == other) {
                    Some((_, pointer)) => pointer,
                    None => return Err(format!("field label not supported: {other}")),
                },
            };
            reqs.push((pointer.to_string(), equal, value.trim().to_string()));
        }
        Ok(Self(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(pointer, equal, value)| {
            let actual = obj.pointer(pointer).and_then(Value::as_str).unwrap_or("");
            (actual == value) == *equal
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resources::{RESOURCES, by_kind};

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "x", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_selectors() {
        let obj = labelled(json!({"app": "web", "tier": "front"}));
        let yes = [
            "",
            "app=web",
            "app==web",
            "app=web,tier!=db",
            "app",
            "!db",
            "app in (web, api)",
            "tier notin (db)",
            "nope!=x",
            "nope notin (x)",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&obj), "{s}");
        }
        let no = [
            "app=api",
            "app!=web",
            "db",
            "!app",
            "app in (api)",
            "tier notin (front,db)",
            "nope in (x)",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&obj), "{s}");
        }
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b c").is_err());
        assert!(LabelSelector::parse("x>1").is_err());
        assert!(
            LabelSelector::parse("!app")
                .unwrap()
                .matches(&json!({"metadata": {"name": "x"}}))
        );
    }

    #[test]
    fn field_selectors() {
        let secret = &RESOURCES[by_kind("v1", "Secret").unwrap()];
        let obj = json!({"metadata": {"name": "tls", "namespace": "web"}, "type": "kubernetes.io/tls"});
        for s in [
            "metadata.name=tls",
            "metadata.namespace==web,type=kubernetes.io/tls",
            "metadata.name!=other",
        ] {
            assert!(FieldSelector::parse(s, secret).unwrap().matches(&obj), "{s}");
        }
        for s in ["metadata.name=other", "type!=kubernetes.io/tls"] {
            assert!(!FieldSelector::parse(s, secret).unwrap().matches(&obj), "{s}");
        }
        let cm = &RESOURCES[by_kind("v1", "ConfigMap").unwrap()];
        assert_eq!(
            FieldSelector::parse("type=x", cm).unwrap_err(),
            "field label not supported: type"
        );
    }
}
