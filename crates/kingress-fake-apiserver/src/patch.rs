//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902).
//!
//! Strategic merge patch and server-side apply are served as merge patches: lists are replaced
//! whole, not merged by key, and no field ownership is tracked.

use serde_json::{Map, Value};

/// Applies an RFC 7386 merge patch: objects merge key by key, `null` removes, anything else replaces.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (k, v) in patch {
            if v.is_null() {
                target.remove(k);
            } else {
                merge(target.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Applies an RFC 6902 JSON patch (`add`, `remove`, `replace`, `move`, `copy`, `test`).
pub(crate) fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch must be an array of operations")?;
    // All or nothing: work on a copy.
    let mut work = doc.clone();
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).ok_or("operation without \"op\"")?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("operation without \"path\"")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or(format!("{name} {path}: missing \"value\""))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or(format!("{name} {path}: missing \"from\""))
        };
        match name {
            "add" => add(&mut work, path, value()?)?,
            "remove" => {
                remove(&mut work, path)?;
            }
            "replace" => {
                remove(&mut work, path)?;
                add(&mut work, path, value()?)?;
            }
            "move" => {
                let v = remove(&mut work, from()?)?;
                add(&mut work, path, v)?;
            }
            "copy" => {
                let v = work
                    .pointer(from()?)
                    .cloned()
                    .ok_or(format!("copy: {path} not found"))?;
                add(&mut work, path, v)?;
            }
            "test" => {
                if work.pointer(path) != Some(&value()?) {
                    return Err(format!("test failed: {path} does not hold the expected value"));
                }
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    *doc = work;
    Ok(())
}

/// Splits a JSON pointer into its parent pointer and its unescaped last token.
fn split(path: &str) -> Result<(&str, String), String> {
    let i = path.rfind('/').ok_or(format!("invalid JSON pointer {path:?}"))?;
    let token = path[i + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..i], token))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, token) = split(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(token, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let i = if token == "-" {
                items.len()
            } else {
                token
                    .parse::<usize>()
                    .map_err(|_| format!("invalid array index in {path:?}"))?
            };
            if i > items.len() {
                return Err(format!("array index out of range in {path:?}"));
            }
            items.insert(i, value);
            Ok(())
        }
        _ => Err(format!("add: the parent of {path:?} does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, token) = split(path)?;
    let missing = || format!("{path:?} does not exist");
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&token).ok_or_else(missing),
        Some(Value::Array(items)) => {
            let i = token.parse::<usize>().map_err(|_| missing())?;
            (i < items.len()).then(|| items.remove(i)).ok_or_else(missing)
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch() {
        let mut doc = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        merge(
            &mut doc,
            &json!({"a": {"b": null, "c": [3], "e": {"f": true}}, "d": null}),
        );
        assert_eq!(doc, json!({"a": {"c": [3], "e": {"f": true}}}));
    }

    #[test]
    fn json_patch_ops() {
        let mut doc = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x/y": "1"}}});
        json_patch(
            &mut doc,
            &json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": "a"},
                {"op": "remove", "path": "/metadata/finalizers/0"},
                {"op": "add", "path": "/metadata/finalizers/-", "value": "c"},
                {"op": "replace", "path": "/metadata/labels/x~1y", "value": "2"},
                {"op": "copy", "from": "/metadata/labels", "path": "/metadata/annotations"},
                {"op": "move", "from": "/metadata/labels/x~1y", "path": "/metadata/labels/z"},
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"finalizers": ["b", "c"], "labels": {"z": "2"}, "annotations": {"x/y": "2"}}})
        );
        let before = doc.clone();
        let failed = json!([{"op": "remove", "path": "/metadata/labels"}, {"op": "test", "path": "/x", "value": 1}]);
        assert!(json_patch(&mut doc, &failed).is_err());
        assert_eq!(doc, before, "a failed patch changes nothing");
    }
}
