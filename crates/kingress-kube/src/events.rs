//! Diagnostics as Kubernetes Events, where `kubectl describe` shows them: a new
//! diagnostic about an Ingress, Service, Secret or the ConfigMap becomes a Warning Event
//! (events.k8s.io/v1) on that object. Only the leader publishes, so several replicas do
//! not repeat each other; kube's Recorder folds repeats into an event series.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kingress_model::{Diagnostic, Subject};
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::election::Leadership;
use crate::source::Stores;

/// Where the controller sends new diagnostics. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Vec<Diagnostic>>,
}

impl EventSink {
    /// Queues diagnostics for publishing; drops them when the queue is full (an event
    /// storm must not slow the controller).
    pub fn send(&self, diagnostics: Vec<Diagnostic>) {
        if diagnostics.is_empty() {
            return;
        }
        if self.tx.try_send(diagnostics).is_err() {
            tracing::debug!("event queue full; diagnostics are still logged");
        }
    }
}

pub struct EventPublisher {
    task: JoinHandle<()>,
}

impl Drop for EventPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventPublisher {
    /// `controller` names the reporting controller (its `--controller-class`), `instance`
    /// this replica.
    pub fn start(
        client: Client,
        stores: Stores,
        leadership: Arc<Leadership>,
        controller: String,
        instance: String,
    ) -> (EventSink, Self) {
        let (tx, mut rx) = mpsc::channel::<Vec<Diagnostic>>(64);
        let recorder = Recorder::new(
            client,
            Reporter {
                controller,
                instance: Some(instance),
            },
        );
        let task = tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                if !leadership.is_leader() {
                    continue;
                }
                for d in batch {
                    let Some(reference) = reference(&stores, &d) else {
                        continue;
                    };
                    let event = Event {
                        type_: EventType::Warning,
                        reason: "Invalid".to_string(),
                        note: Some(truncate(&d.reason, 1024)),
                        action: "Sync".to_string(),
                        secondary: None,
                    };
                    if let Err(e) = recorder.publish(&event, &reference).await {
                        tracing::debug!(error = %e, subject = %d.subject, "cannot publish an Event");
                    }
                }
            }
        });
        (EventSink { tx }, Self { task })
    }
}

/// The object a diagnostic is about, with its uid when the store has it.
fn reference(stores: &Stores, d: &Diagnostic) -> Option<ObjectReference> {
    let Subject::Object(o) = &d.subject else {
        return None;
    };
    let (api_version, uid) = match o.kind.as_str() {
        "Ingress" => ("networking.k8s.io/v1", uid_of(&stores.ingresses, &o.namespace, &o.name)),
        "Service" => ("v1", uid_of(&stores.services, &o.namespace, &o.name)),
        "Secret" => ("v1", uid_of(&stores.secrets, &o.namespace, &o.name)),
        "ConfigMap" => (
            "v1",
            stores.config_maps.iter().find_map(|s| uid_of(s, &o.namespace, &o.name)),
        ),
        _ => return None,
    };
    Some(ObjectReference {
        api_version: Some(api_version.to_string()),
        kind: Some(o.kind.clone()),
        namespace: Some(o.namespace.clone()).filter(|n| !n.is_empty()),
        name: Some(o.name.clone()),
        uid,
        ..ObjectReference::default()
    })
}

fn uid_of<K>(store: &kube::runtime::reflector::Store<K>, namespace: &str, name: &str) -> Option<String>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let key = kube::runtime::reflector::ObjectRef::<K>::new(name).within(namespace);
    store.get(&key).and_then(|o| o.meta().uid.clone())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or_default())
}
