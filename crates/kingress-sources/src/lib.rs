//! Where the Kubernetes objects come from.
//!
//! Sources only fetch and decode objects into a [`Snapshot`]; they never interpret
//! annotations or build routes (that is `kingress-compile`). Today there is one source,
//! a folder of manifests ([`manifests`]); the Kubernetes API watcher comes next and feeds
//! the same `Snapshot`.
//!
//! # Layout
//! - [`decode`]: YAML/JSON documents into typed objects, with file/line diagnostics.
//! - [`update`]: replaced parts of a snapshot, from a source that knows what changed.
//! - [`manifests`]: a folder of manifests, re-read on change, last good version kept
//!   per file; [`manifests::FolderWatcher`] turns filesystem events into rescans.

pub mod decode;
pub mod manifests;
pub mod update;

pub use decode::Object;
pub use kingress_compile::Snapshot;
pub use manifests::{FolderWatcher, ManifestFolder, Scan};
pub use update::{Change, Update};
