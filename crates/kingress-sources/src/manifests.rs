//! A folder of manifests as a source: every `*.yaml`, `*.yml` and `*.json` file under
//! the root, recursively.
//!
//! [`ManifestFolder::rescan`] re-reads the folder and re-decodes only the files whose
//! bytes changed. A file that stops parsing keeps its last good objects (and reports
//! why); a deleted file takes its objects with it. [`FolderWatcher`] runs rescans on a
//! thread of its own when the filesystem says something changed, after a short quiet
//! period so an editor's write-rename-chmod burst costs one rescan.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use kingress_compile::Snapshot;
use kingress_model::Diagnostic;
use notify::{RecursiveMode, Watcher};

use crate::decode::{Object, decode_file};

/// Files above this size are reported and skipped: a manifest folder is not a data store.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug)]
struct FileState {
    bytes: Vec<u8>,
    /// The objects of the last version that parsed.
    objects: Vec<Object>,
    /// Diagnostics of the current version (parse error or object problems).
    diagnostics: Vec<Diagnostic>,
}

/// The result of a rescan.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub snapshot: Snapshot,
    /// Source-level problems: unparseable files, invalid or duplicate objects.
    pub diagnostics: Vec<Diagnostic>,
    /// Whether any file's bytes changed (or a file came or went) since the last scan.
    pub changed: bool,
}

/// A folder of manifests and what was last read from it.
#[derive(Debug)]
pub struct ManifestFolder {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

impl ManifestFolder {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            files: BTreeMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Re-reads the folder. Never fails: an unreadable root or file is a diagnostic.
    pub fn rescan(&mut self) -> Scan {
        let mut diagnostics = Vec::new();
        let mut found = Vec::new();
        let mut visited = HashSet::new();
        walk(&self.root, &mut found, &mut diagnostics, &mut visited, 0);
        found.sort();

        let mut changed = false;
        let present: HashSet<&PathBuf> = found.iter().collect();
        let before = self.files.len();
        self.files.retain(|p, _| present.contains(p));
        changed |= self.files.len() != before;

        for path in &found {
            let display = path.display().to_string();
            let bytes = match read_limited(path) {
                Ok(b) => b,
                Err(reason) => {
                    // Unreadable now (e.g. being replaced): keep what we had, say why.
                    diagnostics.push(Diagnostic::file(&display, None, None, reason));
                    continue;
                }
            };
            if self.files.get(path).is_some_and(|s| s.bytes == bytes) {
                continue;
            }
            changed = true;
            let json = path.extension().is_some_and(|e| e == "json");
            let text = String::from_utf8_lossy(&bytes);
            match decode_file(&display, &text, json) {
                Ok(decoded) => {
                    self.files.insert(
                        path.clone(),
                        FileState {
                            bytes,
                            objects: decoded.objects,
                            diagnostics: decoded.diagnostics,
                        },
                    );
                }
                Err(parse_error) => {
                    let objects = self.files.remove(path).map(|s| s.objects).unwrap_or_default();
                    let mut reason = parse_error.0;
                    if !objects.is_empty() {
                        reason.reason.push_str("; its last good version keeps serving");
                    }
                    self.files.insert(
                        path.clone(),
                        FileState {
                            bytes,
                            objects,
                            diagnostics: vec![reason],
                        },
                    );
                }
            }
        }

        let mut snapshot = Snapshot::default();
        let mut seen = HashSet::new();
        for (path, state) in &self.files {
            diagnostics.extend(state.diagnostics.iter().cloned());
            for obj in &state.objects {
                let r = obj.object_ref();
                if !seen.insert(r.clone()) {
                    diagnostics.push(Diagnostic::object(
                        r,
                        format!(
                            "defined again in {}; the first definition (by file path) is used",
                            path.display()
                        ),
                    ));
                    continue;
                }
                match obj.clone() {
                    Object::IngressClass(o) => snapshot.ingress_classes.push(*o),
                    Object::Ingress(o) => snapshot.ingresses.push(*o),
                    Object::Service(o) => snapshot.services.push(*o),
                    Object::EndpointSlice(o) => snapshot.endpoint_slices.push(*o),
                    Object::Secret(o) => snapshot.secrets.push(*o),
                    Object::ConfigMap(o) => snapshot.config_maps.push(*o),
                }
            }
        }
        Scan {
            snapshot,
            diagnostics,
            changed,
        }
    }
}

fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') || n.ends_with('~'));
    !hidden
        && path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
}

fn walk(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    diagnostics: &mut Vec<Diagnostic>,
    visited: &mut HashSet<PathBuf>,
    depth: usize,
) {
    if depth > 32 {
        diagnostics.push(Diagnostic::file(
            dir.display().to_string(),
            None,
            None,
            "folders nested too deep; not read",
        ));
        return;
    }
    // Symlinked folders are followed once (loops are cut by the canonical path).
    if let Ok(canonical) = dir.canonicalize()
        && !visited.insert(canonical)
    {
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            diagnostics.push(Diagnostic::file(
                dir.display().to_string(),
                None,
                None,
                format!("cannot read folder: {e}"),
            ));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = std::fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false);
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if is_dir {
            if !hidden {
                walk(&path, out, diagnostics, visited, depth + 1);
            }
        } else if is_manifest(&path) {
            out.push(path);
        }
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("file is larger than {MAX_FILE_BYTES} bytes; not read"));
    }
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

/// Errors starting a folder watch.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: String,
        #[source]
        source: notify::Error,
    },
}

/// Watches a folder and calls `on_scan` with every rescan that changed something.
///
/// The first scan is done by the caller (so it can wait for it); the watcher only
/// reports later changes. Dropping the watcher stops its thread.
pub struct FolderWatcher {
    _watcher: notify::RecommendedWatcher,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Option<mpsc::Sender<Option<notify::Event>>>,
}

/// How long the folder must be quiet before a rescan, and the longest a burst of
/// events can delay one. Small enough for a change to be live well within 100 ms.
pub const QUIET: Duration = Duration::from_millis(10);
pub const MAX_DELAY: Duration = Duration::from_millis(40);

impl FolderWatcher {
    pub fn start(
        mut folder: ManifestFolder,
        mut on_scan: impl FnMut(Scan) + Send + 'static,
    ) -> Result<FolderWatcher, WatchError> {
        let (tx, rx) = mpsc::channel::<Option<notify::Event>>();
        let event_tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev
                && !matches!(ev.kind, notify::EventKind::Access(_))
            {
                let _ = event_tx.send(Some(ev));
            }
        })
        .map_err(|source| WatchError::Watch {
            path: folder.root().display().to_string(),
            source,
        })?;
        watcher
            .watch(folder.root(), RecursiveMode::Recursive)
            .map_err(|source| WatchError::Watch {
                path: folder.root().display().to_string(),
                source,
            })?;
        let thread = std::thread::Builder::new()
            .name("kingress-manifests".into())
            .spawn(move || {
                // `None` is the stop signal.
                while let Ok(Some(_first)) = rx.recv() {
                    let burst_start = std::time::Instant::now();
                    loop {
                        let left = MAX_DELAY.saturating_sub(burst_start.elapsed());
                        if left.is_zero() {
                            break;
                        }
                        match rx.recv_timeout(QUIET.min(left)) {
                            Ok(Some(_)) => continue,
                            Ok(None) => return,
                            Err(mpsc::RecvTimeoutError::Timeout) => break,
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    let scan = folder.rescan();
                    if scan.changed {
                        on_scan(scan);
                    }
                }
            })
            .ok();
        Ok(FolderWatcher {
            _watcher: watcher,
            thread,
            stop: Some(tx),
        })
    }
}

impl Drop for FolderWatcher {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(None);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n";

    #[test]
    fn reads_recursively_keeps_last_good_and_forgets_deleted_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
        std::fs::write(dir.path().join("a.yaml"), SVC).unwrap();
        std::fs::write(
            dir.path().join("sub/deeper/b.json"),
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"api"},"spec":{"ports":[{"port":81}]}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("sub/notes.txt"), "not a manifest").unwrap();
        let mut folder = ManifestFolder::new(dir.path());
        let scan = folder.rescan();
        assert!(scan.changed);
        assert!(scan.diagnostics.is_empty(), "{:?}", scan.diagnostics);
        assert_eq!(scan.snapshot.services.len(), 2);

        // Unchanged: nothing to do.
        assert!(!folder.rescan().changed);

        // Broken: the last good version keeps serving, with a located diagnostic.
        std::fs::write(dir.path().join("a.yaml"), "apiVersion: v1\nkind: [\n").unwrap();
        let scan = folder.rescan();
        assert!(scan.changed);
        assert_eq!(scan.snapshot.services.len(), 2);
        assert_eq!(scan.diagnostics.len(), 1);
        let d = scan.diagnostics[0].to_string();
        assert!(d.contains("a.yaml:"), "{d}");
        assert!(d.contains("last good version keeps serving"), "{d}");

        // Deleted: its objects go.
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        let scan = folder.rescan();
        assert_eq!(scan.snapshot.services.len(), 1);
        assert!(scan.diagnostics.is_empty());
    }

    #[test]
    fn duplicates_keep_the_first_by_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.yaml"), SVC).unwrap();
        std::fs::write(dir.path().join("2.yml"), SVC.replace("80", "81")).unwrap();
        let scan = ManifestFolder::new(dir.path()).rescan();
        assert_eq!(scan.snapshot.services.len(), 1);
        let port = scan.snapshot.services[0].spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port;
        assert_eq!(port, 80);
        assert_eq!(scan.diagnostics.len(), 1);
        assert!(
            scan.diagnostics[0]
                .to_string()
                .starts_with("Service default/web: defined again in")
        );
    }

    #[test]
    fn a_missing_root_is_a_diagnostic() {
        let scan = ManifestFolder::new("/nonexistent/kingress/manifests").rescan();
        assert_eq!(scan.diagnostics.len(), 1);
        assert!(scan.snapshot.services.is_empty());
    }

    #[test]
    fn the_watcher_rescans_after_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut folder = ManifestFolder::new(dir.path());
        assert!(folder.rescan().snapshot.services.is_empty());
        let (tx, rx) = mpsc::channel();
        let _w = FolderWatcher::start(folder, move |scan| {
            let _ = tx.send(scan.snapshot.services.len());
        })
        .unwrap();
        std::fs::write(dir.path().join("a.yaml"), SVC).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(1) => break,
                Ok(_) => continue,
                Err(e) => panic!("no rescan with the new Service: {e}"),
            }
        }
    }
}
