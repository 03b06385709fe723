//! The stored objects, the ordered change log that watches replay from, and the open watches.
//!
//! Everything sits behind one mutex: a write stores the object, appends to the log and queues the
//! event on every matching watch before the lock is released, so each watch sees changes in
//! resourceVersion order and a watch started at version N misses nothing after N.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

use crate::resources::RESOURCES;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;

/// `(namespace, name)`; the namespace is "" for cluster-scoped kinds. Its order is the list order.
pub(crate) type Key = (String, String);

/// What a watch response body is sent.
#[derive(Debug)]
pub(crate) enum WatchMsg {
    /// One watch event, a JSON object and a newline.
    Line(Bytes),
    /// End the response abruptly: no final chunk, the connection is closed.
    Abort,
}

/// An open watch.
pub(crate) struct Watcher {
    pub id: u64,
    pub res: usize,
    /// Only this namespace (a namespaced collection path); `None` for all.
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// The client asked for `PartialObjectMetadata`.
    pub meta_only: bool,
    pub tx: UnboundedSender<WatchMsg>,
}

impl Watcher {
    pub fn selects(&self, key: &Key, obj: &Value) -> bool {
        self.namespace.as_ref().is_none_or(|ns| *ns == key.0) && self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The event this watch gets for a change, if any. As in the real watch cache, a change that
    /// moves an object out of the selection is a DELETED and one that moves it in is an ADDED.
    pub fn event_for(&self, entry: &LogEntry) -> Option<Bytes> {
        if entry.res != self.res {
            return None;
        }
        let prev = entry.prev.as_ref().filter(|o| self.selects(&entry.key, o));
        let cur = entry.cur.as_ref().filter(|o| self.selects(&entry.key, o));
        match (prev, cur) {
            (None, Some(cur)) => Some(event_line("ADDED", cur, self.meta_only)),
            (Some(_), Some(cur)) => Some(event_line("MODIFIED", cur, self.meta_only)),
            (Some(prev), None) => {
                // The last state, stamped with the version of the change that removed it.
                let mut gone = prev.clone();
                set_meta(&mut gone, "resourceVersion", json!(entry.rv.to_string()));
                Some(event_line("DELETED", &gone, self.meta_only))
            }
            (None, None) => None,
        }
    }

    /// A BOOKMARK line at `rv` (only `apiVersion`, `kind` and `metadata.resourceVersion`).
    pub fn bookmark_line(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let rt = &RESOURCES[self.res];
        let (api_version, kind) = if self.meta_only {
            ("meta.k8s.io/v1".to_string(), "PartialObjectMetadata")
        } else {
            (rt.api_version(), rt.kind)
        };
        let mut obj = json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv.to_string()}});
        if initial_events_end {
            set_meta(&mut obj, "annotations", json!({"k8s.io/initial-events-end": "true"}));
        }
        line(&json!({"type": "BOOKMARK", "object": obj}))
    }
}

/// One change: the object before and after (`None` when absent).
pub(crate) struct LogEntry {
    pub rv: u64,
    pub res: usize,
    pub key: Key,
    pub prev: Option<Value>,
    pub cur: Option<Value>,
}

pub(crate) struct Store {
    /// The last resourceVersion handed out (a global counter, as etcd's revision).
    pub rv: u64,
    /// Versions below this are "too old" (410 Gone): the log before it was thrown away.
    pub compacted: u64,
    /// Per kind (index in RESOURCES), the current objects in list order.
    pub objects: Vec<BTreeMap<Key, Value>>,
    /// Every change since `compacted`, in order.
    pub log: Vec<LogEntry>,
    pub watchers: Vec<Watcher>,
    pub next_watch: u64,
}

impl Store {
    pub fn new() -> Self {
        Self {
            rv: 1,
            compacted: 0,
            objects: RESOURCES.iter().map(|_| BTreeMap::new()).collect(),
            log: Vec::new(),
            watchers: Vec::new(),
            next_watch: 0,
        }
    }

    /// Stores `new` (or deletes the object when `None`) under a fresh resourceVersion, logs the
    /// change and sends it to the watches. Returns the stored object, or the deleted one.
    pub fn commit(&mut self, res: usize, key: Key, new: Option<Value>) -> Option<Value> {
        self.rv += 1;
        let rv = self.rv;
        let (prev, cur) = match new {
            Some(mut obj) => {
                set_meta(&mut obj, "resourceVersion", json!(rv.to_string()));
                (self.objects[res].insert(key.clone(), obj.clone()), Some(obj))
            }
            None => (self.objects[res].remove(&key), None),
        };
        let entry = LogEntry {
            rv,
            res,
            key,
            prev,
            cur,
        };
        self.watchers.retain(|w| match w.event_for(&entry) {
            Some(line) => w.tx.send(WatchMsg::Line(line)).is_ok(),
            None => !w.tx.is_closed(),
        });
        let out = entry.cur.clone().or_else(|| entry.prev.clone());
        self.log.push(entry);
        out
    }

    /// The objects of one kind as they were at `rv` (which must not be compacted away).
    pub fn snapshot(&self, res: usize, rv: u64) -> Result<BTreeMap<Key, Value>, ApiError> {
        if rv < self.compacted {
            return Err(ApiError::too_old(rv, self.compacted));
        }
        if rv > self.rv {
            return Err(ApiError::too_large(rv, self.rv));
        }
        let mut objects = self.objects[res].clone();
        for entry in self.log.iter().rev().take_while(|e| e.rv > rv) {
            if entry.res != res {
                continue;
            }
            match &entry.prev {
                Some(prev) => objects.insert(entry.key.clone(), prev.clone()),
                None => objects.remove(&entry.key),
            };
        }
        Ok(objects)
    }

    pub fn remove_watcher(&mut self, id: u64) -> Option<Watcher> {
        let i = self.watchers.iter().position(|w| w.id == id)?;
        Some(self.watchers.remove(i))
    }

    /// Throws the log away: every version older than the current one becomes too old. The open
    /// watches end cleanly (after what is already queued for them).
    pub fn compact(&mut self) {
        self.compacted = self.rv;
        self.log.clear();
        self.watchers.clear();
    }

    /// Ends every open watch abruptly.
    pub fn abort_watches(&mut self) {
        for w in self.watchers.drain(..) {
            let _ = w.tx.send(WatchMsg::Abort);
        }
    }

    /// Sends a BOOKMARK at the current version on every watch that allows them.
    pub fn bookmark(&mut self) {
        let rv = self.rv;
        self.watchers
            .retain(|w| !w.bookmarks || w.tx.send(WatchMsg::Line(w.bookmark_line(rv, false))).is_ok());
    }

    pub fn open_watches(&mut self) -> usize {
        self.watchers.retain(|w| !w.tx.is_closed());
        self.watchers.len()
    }
}

/// One watch event as a line.
pub(crate) fn event_line(kind: &str, obj: &Value, meta_only: bool) -> Bytes {
    let obj = if meta_only { partial(obj) } else { obj.clone() };
    line(&json!({"type": kind, "object": obj}))
}

fn line(v: &Value) -> Bytes {
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    Bytes::from(out)
}

/// The object as `PartialObjectMetadata` (what `Accept: ...;as=PartialObjectMetadata` asks for).
pub(crate) fn partial(obj: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// Sets `metadata.<field>`, creating `metadata` when missing.
pub(crate) fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if let Value::Object(map) = obj {
        let meta = map.entry("metadata").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        if let Value::Object(meta) = meta {
            meta.insert(field.to_string(), value);
        }
    }
}

/// `metadata.<field>` as a string, when set and non-empty.
pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str().filter(|s| !s.is_empty())
}

/// Removes `metadata.<field>`.
pub(crate) fn remove_meta(obj: &mut Value, field: &str) {
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        meta.remove(field);
    }
}

/// Now, as Kubernetes writes timestamps (RFC 3339, seconds, UTC).
pub(crate) fn now() -> Value {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap_or(Value::Null)
}

/// A random UUID (version 4), as the server gives `metadata.uid`.
pub(crate) fn uid() -> String {
    let mut n: u128 = rand::random();
    n = (n & !(0xf << 76)) | (0x4 << 76); // version 4
    n = (n & !(0x3 << 62)) | (0x2 << 62); // RFC 4122 variant
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `generateName` + five random characters from the alphabet the real server uses.
pub(crate) fn generated_name(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}
