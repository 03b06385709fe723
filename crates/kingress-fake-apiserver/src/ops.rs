//! The verbs, with the real server's semantics: create, get, list (selectors, pagination,
//! resourceVersion matching), update with optimistic concurrency, patch, delete (finalizers and
//! preconditions), and the start of a watch.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::patch;
use crate::resources::{RESOURCES, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{Key, Store, WatchMsg, Watcher, event_line, meta_str, now, partial, remove_meta, set_meta};

/// The query parameters of a request, percent-decoded. Empty pairs (kube-rs starts its queries
/// with `?&`) are skipped.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: &str) -> Self {
        Self(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A boolean parameter, parsed as Go's `strconv.ParseBool`; absent or unparsable is `None`.
    pub fn flag(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
            _ => None,
        }
    }

    fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    fn selectors(&self, rt: &ResourceType) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let labels = LabelSelector::parse(self.get("labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
        let fields =
            FieldSelector::parse(self.get("fieldSelector").unwrap_or(""), rt).map_err(ApiError::bad_request)?;
        Ok((labels, fields))
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn key_of(rt: &ResourceType, namespace: Option<&str>, name: &str) -> Key {
    let ns = if rt.namespaced() { namespace.unwrap_or("") } else { "" };
    (ns.to_string(), name.to_string())
}

/// Checks `apiVersion` and `kind` against the endpoint, filling them in when absent.
fn type_meta(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    let Value::Object(map) = obj else {
        return Err(ApiError::bad_request("the request body is not a JSON object"));
    };
    let api_version = rt.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != api_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
        _ => {
            map.insert("apiVersion".into(), json!(api_version));
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if k != rt.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
        _ => {
            map.insert("kind".into(), json!(rt.kind));
        }
    }
    if !map.get("metadata").is_none_or(Value::is_object) {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    Ok(())
}

/// Checks the body's name and namespace against the URL's, filling them in when absent.
fn check_name(rt: &ResourceType, obj: &mut Value, namespace: Option<&str>, name: &str) -> Result<(), ApiError> {
    match meta_str(obj, "name") {
        Some(n) if n != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        _ => set_meta(obj, "name", json!(name)),
    }
    check_namespace(rt, obj, namespace)
}

fn check_namespace(rt: &ResourceType, obj: &mut Value, namespace: Option<&str>) -> Result<(), ApiError> {
    if !rt.namespaced() {
        remove_meta(obj, "namespace");
        return Ok(());
    }
    let ns = namespace.unwrap_or("");
    match meta_str(obj, "namespace") {
        Some(n) if n != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            set_meta(obj, "namespace", json!(ns));
            Ok(())
        }
    }
}

/// Everything but `metadata` and `status`: a change here bumps `metadata.generation`.
pub(crate) fn spec_of(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Value::Object(map) = &mut v {
        map.remove("metadata");
        map.remove("status");
    }
    v
}

fn copy_meta(to: &mut Value, from: &Value, field: &str) {
    match from.get("metadata").and_then(|m| m.get(field)) {
        Some(v) => set_meta(to, field, v.clone()),
        None => remove_meta(to, field),
    }
}

fn check_uid(rt: &ResourceType, obj: &Value, old: &Value, name: &str) -> Result<(), ApiError> {
    match (meta_str(obj, "uid"), meta_str(old, "uid")) {
        (Some(want), Some(have)) if want != have => Err(ApiError::precondition(rt, name, "UID", want, have)),
        _ => Ok(()),
    }
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// Stores a new object: server-owned metadata set, `.status` dropped for kinds with a status
/// subresource (as their create strategies do).
fn create_object(store: &mut Store, res: usize, key: Key, mut obj: Value, dry_run: bool) -> Value {
    let rt = &RESOURCES[res];
    set_meta(&mut obj, "uid", json!(crate::store::uid()));
    set_meta(&mut obj, "creationTimestamp", now());
    set_meta(&mut obj, "generation", json!(1));
    remove_meta(&mut obj, "deletionTimestamp");
    remove_meta(&mut obj, "deletionGracePeriodSeconds");
    if rt.has_status()
        && let Value::Object(map) = &mut obj
    {
        map.remove("status");
    }
    if dry_run {
        return obj;
    }
    store.commit(res, key, Some(obj)).unwrap_or(Value::Null)
}

/// POST on a collection.
pub(crate) fn create(
    store: &mut Store,
    res: usize,
    namespace: Option<&str>,
    mut obj: Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let rt = &RESOURCES[res];
    type_meta(rt, &mut obj)?;
    check_namespace(rt, &mut obj, namespace)?;
    let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
        (Some(name), _) => name.to_string(),
        (None, Some(prefix)) => crate::store::generated_name(prefix),
        (None, None) => {
            return Err(ApiError::invalid(
                "metadata.name: Required value: name or generateName is required",
            ));
        }
    };
    set_meta(&mut obj, "name", json!(name));
    if meta_str(&obj, "resourceVersion").is_some() {
        return Err(ApiError::new(
            500,
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let key = key_of(rt, namespace, &name);
    if store.objects[res].contains_key(&key) {
        return Err(ApiError::already_exists(rt, &name));
    }
    Ok(create_object(store, res, key, obj, dry_run))
}

/// GET on an object (or its `/status`).
pub(crate) fn get(store: &Store, res: usize, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
    let rt = &RESOURCES[res];
    store.objects[res]
        .get(&key_of(rt, namespace, name))
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))
}

/// Writes `candidate` over `old`: for `/status` only `.status` is taken, otherwise everything but
/// `.status` (kinds with a status subresource) and the server-owned metadata. A write that changes
/// nothing is not stored (no new resourceVersion, no event), as in the real server. Returns the
/// HTTP status and the object.
fn finish_write(
    store: &mut Store,
    res: usize,
    key: Key,
    old: &Value,
    candidate: Value,
    status_only: bool,
    dry_run: bool,
) -> Result<(u16, Value), ApiError> {
    let rt = &RESOURCES[res];
    let new = if status_only {
        let mut new = old.clone();
        if let Value::Object(map) = &mut new {
            match candidate.get("status") {
                Some(status) => map.insert("status".into(), status.clone()),
                None => map.remove("status"),
            };
        }
        new
    } else {
        let mut new = candidate;
        if rt.has_status()
            && let Value::Object(map) = &mut new
        {
            match old.get("status") {
                Some(status) => map.insert("status".into(), status.clone()),
                None => map.remove("status"),
            };
        }
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "generation",
        ] {
            copy_meta(&mut new, old, field);
        }
        if spec_of(&new) != spec_of(old) {
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            set_meta(&mut new, "generation", json!(generation + 1));
        }
        new
    };
    if new == *old {
        return Ok((200, new));
    }
    if dry_run {
        return Ok((200, new));
    }
    if meta_str(&new, "deletionTimestamp").is_some() && !has_finalizers(&new) {
        // The last finalizer is gone: the deletion completes.
        store.commit(res, key, None);
        return Ok((200, new));
    }
    Ok((200, store.commit(res, key, Some(new)).unwrap_or(Value::Null)))
}

/// PUT on an object or its `/status`.
pub(crate) fn update(
    store: &mut Store,
    res: usize,
    namespace: Option<&str>,
    name: &str,
    mut obj: Value,
    status_only: bool,
    dry_run: bool,
) -> Result<(u16, Value), ApiError> {
    let rt = &RESOURCES[res];
    type_meta(rt, &mut obj)?;
    check_name(rt, &mut obj, namespace, name)?;
    let key = key_of(rt, namespace, name);
    let Some(old) = store.objects[res].get(&key).cloned() else {
        if status_only || !rt.create_on_update() {
            return Err(ApiError::not_found(rt, name));
        }
        if meta_str(&obj, "resourceVersion").is_some() {
            // The client expected an object that is not there (any more).
            return Err(ApiError::conflict(rt, name));
        }
        return Ok((201, create_object(store, res, key, obj, dry_run)));
    };
    match meta_str(&obj, "resourceVersion") {
        Some(rv) if Some(rv) != meta_str(&old, "resourceVersion") => return Err(ApiError::conflict(rt, name)),
        None if !rt.unconditional_update() => return Err(ApiError::conflict(rt, name)),
        _ => {}
    }
    check_uid(rt, &obj, &old, name)?;
    finish_write(store, res, key, &old, obj, status_only, dry_run)
}

/// The patch types the server accepts.
const MERGE: &str = "application/merge-patch+json";
const STRATEGIC: &str = "application/strategic-merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";
const APPLY: &str = "application/apply-patch+yaml";

/// PATCH on an object or its `/status`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn patch(
    store: &mut Store,
    res: usize,
    namespace: Option<&str>,
    name: &str,
    content_type: &str,
    body: &[u8],
    status_only: bool,
    field_manager: Option<&str>,
    dry_run: bool,
) -> Result<(u16, Value), ApiError> {
    let rt = &RESOURCES[res];
    let content_type = content_type.split(';').next().unwrap_or("").trim();
    if ![MERGE, STRATEGIC, JSON_PATCH, APPLY].contains(&content_type) {
        return Err(ApiError::new(
            415,
            format!(
                "the body of the request was in an unknown format - accepted media types include: {JSON_PATCH}, {MERGE}, {STRATEGIC}, {APPLY}"
            ),
        ));
    }
    let apply = content_type == APPLY;
    let patch: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(if apply {
            format!("the fake API server accepts apply patches in their JSON form only: {e}")
        } else {
            format!("error decoding patch: {e}")
        })
    })?;
    if apply && field_manager.is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "PATCH requests with apply-patch+yaml require fieldManager",
        ));
    }
    if apply {
        // Server-side apply bodies must name their type.
        let named = |f: &str| patch.get(f).and_then(Value::as_str).is_some_and(|s| !s.is_empty());
        if !named("apiVersion") || !named("kind") {
            return Err(ApiError::bad_request(
                "apiVersion and kind must be set in an apply patch",
            ));
        }
    }
    let key = key_of(rt, namespace, name);
    let Some(old) = store.objects[res].get(&key).cloned() else {
        if !apply || status_only {
            return Err(ApiError::not_found(rt, name));
        }
        // Server-side apply creates.
        let mut obj = patch;
        type_meta(rt, &mut obj)?;
        check_name(rt, &mut obj, namespace, name)?;
        if meta_str(&obj, "resourceVersion").is_some() {
            return Err(ApiError::conflict(rt, name));
        }
        return Ok((201, create_object(store, res, key, obj, dry_run)));
    };
    let mut candidate = old.clone();
    if content_type == JSON_PATCH {
        patch::json_patch(&mut candidate, &patch).map_err(ApiError::invalid)?;
    } else {
        if !patch.is_object() {
            return Err(ApiError::bad_request("a merge patch must be a JSON object"));
        }
        patch::merge(&mut candidate, &patch);
    }
    // A resourceVersion in the patch is a precondition, as for an update.
    if let Some(rv) = meta_str(&candidate, "resourceVersion")
        && Some(rv) != meta_str(&old, "resourceVersion")
    {
        return Err(ApiError::conflict(rt, name));
    }
    type_meta(rt, &mut candidate)?;
    check_name(rt, &mut candidate, namespace, name)?;
    check_uid(rt, &candidate, &old, name)?;
    finish_write(store, res, key, &old, candidate, status_only, dry_run)
}

/// DELETE on an object: answers a `Status` of success, or the object for kinds that return it.
/// With finalizers the object is only marked (`deletionTimestamp`) and answered; it goes when an
/// update removes the last finalizer.
pub(crate) fn delete(
    store: &mut Store,
    res: usize,
    namespace: Option<&str>,
    name: &str,
    options: &Value,
    dry_run: bool,
) -> Result<(u16, Value), ApiError> {
    let rt = &RESOURCES[res];
    let key = key_of(rt, namespace, name);
    let Some(old) = store.objects[res].get(&key).cloned() else {
        return Err(ApiError::not_found(rt, name));
    };
    for (field, what) in [("resourceVersion", "ResourceVersion"), ("uid", "UID")] {
        let want = options
            .get("preconditions")
            .and_then(|p| p.get(field))
            .and_then(Value::as_str);
        let have = meta_str(&old, field).unwrap_or("");
        if let Some(want) = want
            && want != have
        {
            return Err(ApiError::precondition(rt, name, what, want, have));
        }
    }
    if has_finalizers(&old) {
        // Not deleted yet: the object is the answer, 202 only for orphanDependents=false (as the
        // real handler does, for compatibility).
        let code = if options.get("orphanDependents") == Some(&json!(false)) {
            202
        } else {
            200
        };
        if meta_str(&old, "deletionTimestamp").is_some() {
            return Ok((code, old));
        }
        let mut marked = old;
        set_meta(&mut marked, "deletionTimestamp", now());
        set_meta(&mut marked, "deletionGracePeriodSeconds", json!(0));
        if dry_run {
            return Ok((code, marked));
        }
        return Ok((code, store.commit(res, key, Some(marked)).unwrap_or(Value::Null)));
    }
    if !dry_run {
        store.commit(res, key, None);
    }
    if rt.returns_deleted() {
        return Ok((200, old));
    }
    Ok((
        200,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": meta_str(&old, "uid")},
        }),
    ))
}

/// DELETE on a collection: deletes what the selectors match, answers the list of them.
pub(crate) fn delete_collection(
    store: &mut Store,
    res: usize,
    namespace: Option<&str>,
    query: &Query,
    options: &Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let rt = &RESOURCES[res];
    let (labels, fields) = query.selectors(rt)?;
    let names: Vec<Key> = store.objects[res]
        .iter()
        .filter(|(k, o)| namespace.is_none_or(|ns| k.0 == ns) && labels.matches(o) && fields.matches(o))
        .map(|(k, _)| k.clone())
        .collect();
    let mut items = Vec::new();
    for (ns, name) in names {
        let last = store.objects[res].get(&(ns.clone(), name.clone())).cloned();
        let ns = (!ns.is_empty()).then_some(ns);
        let (_, answer) = delete(store, res, ns.as_deref(), &name, options, dry_run)?;
        items.extend(if answer.get("kind") == Some(&json!("Status")) {
            last
        } else {
            Some(answer)
        });
    }
    Ok(list_object(rt, store.rv, None, None, items, false))
}

fn list_object(
    rt: &ResourceType,
    rv: u64,
    cont: Option<String>,
    remaining: Option<usize>,
    items: Vec<Value>,
    meta_only: bool,
) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let (Some(c), Value::Object(m)) = (cont, &mut meta) {
        m.insert("continue".into(), json!(c));
        if let Some(n) = remaining {
            m.insert("remainingItemCount".into(), json!(n));
        }
    }
    if meta_only {
        let items: Vec<Value> = items.iter().map(partial).collect();
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": meta, "items": items})
    } else {
        json!({"apiVersion": rt.api_version(), "kind": format!("{}List", rt.kind), "metadata": meta, "items": items})
    }
}

/// A continue token: the list's resourceVersion and the last key served, hex-encoded JSON
/// (opaque to clients, as the real server's base64 tokens are).
fn encode_continue(rv: u64, key: &Key) -> String {
    let raw = json!({"rv": rv, "ns": key.0, "name": key.1}).to_string();
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Option<(u64, Key)> {
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16).ok())
        .collect();
    let v: Value = serde_json::from_slice(&bytes?).ok()?;
    Some((
        v.get("rv")?.as_u64()?,
        (v.get("ns")?.as_str()?.to_string(), v.get("name")?.as_str()?.to_string()),
    ))
}

fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

/// GET on a collection (not a watch).
pub(crate) fn list(
    store: &Store,
    res: usize,
    namespace: Option<&str>,
    query: &Query,
    meta_only: bool,
) -> Result<Value, ApiError> {
    let rt = &RESOURCES[res];
    let (labels, fields) = query.selectors(rt)?;
    let limit = match query.non_empty("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit: {l:?}")))?,
        None => 0,
    };
    let rv = query.non_empty("resourceVersion");
    let rv_match = query.non_empty("resourceVersionMatch");
    let (at, after) = if let Some(token) = query.non_empty("continue") {
        if rv_match.is_some() {
            return Err(ApiError::invalid(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if rv.is_some_and(|rv| rv != "0") {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let (at, key) = decode_continue(token).ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
        if at < store.compacted {
            let mut e = ApiError::new(
                410,
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
            );
            e.metadata = Some(json!({"continue": encode_continue(store.rv, &key)}));
            return Err(e);
        }
        (at, Some(key))
    } else {
        let at = match (rv, rv_match) {
            (None, None) | (Some("0"), None | Some("NotOlderThan")) => store.rv,
            (None, Some(_)) => {
                return Err(ApiError::invalid(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            (Some("0"), Some("Exact")) => {
                return Err(ApiError::invalid(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
            (Some(rv), None | Some("NotOlderThan")) => {
                let rv = parse_rv(rv)?;
                if rv > store.rv {
                    return Err(ApiError::too_large(rv, store.rv));
                }
                store.rv
            }
            (Some(rv), Some("Exact")) => parse_rv(rv)?,
            (Some(_), Some(other)) => {
                return Err(ApiError::invalid(format!(
                    "resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
        };
        (at, None)
    };
    let snapshot: BTreeMap<Key, Value> = store.snapshot(res, at)?;
    let matching: Vec<(&Key, &Value)> = snapshot
        .iter()
        .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
        .filter(|(k, o)| namespace.is_none_or(|ns| k.0 == ns) && labels.matches(o) && fields.matches(o))
        .collect();
    let take = if limit > 0 {
        limit.min(matching.len())
    } else {
        matching.len()
    };
    let items: Vec<Value> = matching[..take].iter().map(|(_, o)| (*o).clone()).collect();
    let (cont, remaining) = match take.checked_sub(1).map(|i| matching[i].0) {
        Some(last) if take < matching.len() => {
            // As the real server, remainingItemCount only when no selector filters the list.
            let remaining = (labels.is_empty() && fields.is_empty()).then(|| matching.len() - take);
            (Some(encode_continue(at, last)), remaining)
        }
        _ => (None, None),
    };
    Ok(list_object(rt, at, cont, remaining, items, meta_only))
}

/// How a watch request starts.
pub(crate) enum WatchStart {
    /// The watch is registered; its events (the initial ones first) arrive on `rx`.
    Open {
        id: u64,
        rx: mpsc::UnboundedReceiver<WatchMsg>,
    },
    /// The requested version is compacted away: one ERROR event (410 Expired), then the end.
    Expired(bytes::Bytes),
}

/// GET on a collection with `watch=true`.
pub(crate) fn start_watch(
    store: &mut Store,
    res: usize,
    namespace: Option<&str>,
    query: &Query,
    meta_only: bool,
) -> Result<WatchStart, ApiError> {
    let rt = &RESOURCES[res];
    let (labels, fields) = query.selectors(rt)?;
    let bookmarks = query.flag("allowWatchBookmarks") == Some(true);
    let send_initial = query.flag("sendInitialEvents");
    match (send_initial, query.non_empty("resourceVersionMatch")) {
        (Some(true), Some("NotOlderThan")) => {}
        (Some(true), _) => {
            return Err(ApiError::invalid(
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        _ => {}
    }
    if send_initial == Some(true) && !bookmarks {
        return Err(ApiError::invalid(
            "allowWatchBookmarks: Forbidden: sendInitialEvents requires allowWatchBookmarks=true",
        ));
    }
    let rv = match query.non_empty("resourceVersion") {
        None | Some("0") => None,
        Some(rv) => Some(parse_rv(rv)?),
    };
    if let Some(rv) = rv
        && rv > store.rv
    {
        return Err(ApiError::too_large(rv, store.rv));
    }
    // "0" or unset: synthetic ADDED events for the current state first (unless
    // sendInitialEvents=false says otherwise).
    let initial = send_initial.unwrap_or(rv.is_none());
    let since = rv.unwrap_or(store.rv);
    if !initial && since < store.compacted {
        let status = ApiError::too_old(since, store.compacted).to_status();
        let mut line = json!({"type": "ERROR", "object": status}).to_string().into_bytes();
        line.push(b'\n');
        return Ok(WatchStart::Expired(line.into()));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    store.next_watch += 1;
    let watcher = Watcher {
        id: store.next_watch,
        res,
        namespace: namespace.map(str::to_string),
        labels,
        fields,
        bookmarks,
        meta_only,
        tx,
    };
    let mut queue = Vec::new();
    if initial {
        for (key, obj) in &store.objects[res] {
            if watcher.selects(key, obj) {
                queue.push(event_line("ADDED", obj, meta_only));
            }
        }
        if send_initial == Some(true) {
            queue.push(watcher.bookmark_line(store.rv, true));
        }
    } else {
        for entry in store.log.iter().filter(|e| e.rv > since) {
            queue.extend(watcher.event_for(entry));
        }
    }
    for line in queue {
        let _ = watcher.tx.send(WatchMsg::Line(line));
    }
    let id = watcher.id;
    store.watchers.push(watcher);
    Ok(WatchStart::Open { id, rx })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = Query::parse(
            "&labelSelector=app%3Dweb%2Ctier%21%3Ddb&fieldSelector=metadata.name%3Dx&watch=1&a+b=c+d&bad=%zz%4",
        );
        assert_eq!(q.get("labelSelector"), Some("app=web,tier!=db"));
        assert_eq!(q.get("fieldSelector"), Some("metadata.name=x"));
        assert_eq!(q.flag("watch"), Some(true));
        assert_eq!(q.get("a b"), Some("c d"));
        assert_eq!(q.get("bad"), Some("%zz%4"));
        assert_eq!(q.get("nope"), None);
    }

    #[test]
    fn continue_tokens_round_trip() {
        let key = ("default".to_string(), "web-1".to_string());
        let token = encode_continue(42, &key);
        assert_eq!(decode_continue(&token), Some((42, key)));
        assert_eq!(decode_continue("zz"), None);
        assert_eq!(decode_continue("abc"), None);
    }
}
