//! [`Update`]: the parts of a snapshot a watch-based source replaces.
//!
//! A folder rescan produces a whole [`Snapshot`] and the controller compares it with the
//! last one to find what changed. A source built on watches knows what changed: which
//! kinds, and within a kind which objects. At 10,000 Ingresses and 100,000 endpoints
//! cloning, sorting and comparing the unchanged objects costs more than compiling the
//! changed ones, so it sends only the changed objects ([`Change::Objects`]), or a whole
//! kind when it has to (the first list, a relist: [`Change::All`]).

use k8s_openapi::Metadata;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kingress_compile::{EndpointCache, ObjectKey, Snapshot};

/// What changed in one kind.
#[derive(Clone, Debug)]
pub enum Change<K> {
    /// Every object of the kind, replacing the ones before.
    All(Vec<K>),
    /// Only these objects: `Some` is the object as it is now, `None` that it is gone.
    Objects(Vec<(ObjectKey, Option<K>)>),
}

impl<K> Change<K> {
    pub fn is_all(&self) -> bool {
        matches!(self, Change::All(_))
    }
}

/// Each `Some` changes that kind in the current snapshot; `None` leaves it as it is.
#[derive(Clone, Debug, Default)]
pub struct Update {
    pub ingress_classes: Option<Change<IngressClass>>,
    pub ingresses: Option<Change<Ingress>>,
    pub services: Option<Change<Service>>,
    pub endpoint_slices: Option<Change<EndpointSlice>>,
    pub secrets: Option<Change<Secret>>,
    pub config_maps: Option<Change<ConfigMap>>,
}

/// Which compiled tables an update affects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affects {
    pub routes: bool,
    pub endpoints: bool,
    pub certificates: bool,
}

impl Update {
    /// Every kind, from a whole snapshot.
    pub fn all(s: Snapshot) -> Self {
        Self {
            ingress_classes: Some(Change::All(s.ingress_classes)),
            ingresses: Some(Change::All(s.ingresses)),
            services: Some(Change::All(s.services)),
            endpoint_slices: Some(Change::All(s.endpoint_slices)),
            secrets: Some(Change::All(s.secrets)),
            config_maps: Some(Change::All(s.config_maps)),
        }
    }

    pub fn affects(&self) -> Affects {
        let classes = self.ingress_classes.is_some();
        let ingresses = self.ingresses.is_some();
        let services = self.services.is_some();
        Affects {
            routes: classes || ingresses || services || self.config_maps.is_some(),
            endpoints: services || self.endpoint_slices.is_some(),
            certificates: classes || ingresses || self.secrets.is_some(),
        }
    }

    /// Feeds the changed Services and EndpointSlices to `cache`. Returns `false`, and
    /// feeds nothing, when one of the two kinds is replaced whole: the cache is then to
    /// be rebuilt from the snapshot this update is applied to.
    pub fn update_endpoints(&self, cache: &mut EndpointCache) -> bool {
        if self.services.as_ref().is_some_and(Change::is_all)
            || self.endpoint_slices.as_ref().is_some_and(Change::is_all)
        {
            return false;
        }
        if let Some(Change::Objects(objects)) = &self.services {
            for (key, svc) in objects {
                cache.set_service(key, svc.as_ref());
            }
        }
        if let Some(Change::Objects(objects)) = &self.endpoint_slices {
            for (key, slice) in objects {
                cache.set_slice(key, slice.as_ref());
            }
        }
        true
    }

    /// Changes the parts this update carries. The snapshot's lists are kept sorted by
    /// [`ObjectKey`] (a whole kind is sorted as it comes in), so a changed object is found
    /// by binary search.
    pub fn apply_to(self, s: &mut Snapshot) {
        if let Some(c) = self.ingress_classes {
            patch(&mut s.ingress_classes, c);
        }
        if let Some(c) = self.ingresses {
            patch(&mut s.ingresses, c);
        }
        if let Some(c) = self.services {
            patch(&mut s.services, c);
        }
        if let Some(c) = self.endpoint_slices {
            patch(&mut s.endpoint_slices, c);
        }
        if let Some(c) = self.secrets {
            patch(&mut s.secrets, c);
        }
        if let Some(c) = self.config_maps {
            patch(&mut s.config_maps, c);
        }
    }
}

/// Sorts a kind by [`ObjectKey`], the order [`Update::apply_to`] keeps.
pub fn sort_by_key<K: Metadata<Ty = ObjectMeta>>(objects: &mut [K]) {
    // Stable, and linear on a list that is already sorted (a source's full list).
    objects.sort_by(|a, b| ObjectKey::cmp_meta(a.metadata(), b.metadata()));
}

fn patch<K: Metadata<Ty = ObjectMeta>>(objects: &mut Vec<K>, change: Change<K>) {
    match change {
        Change::All(mut all) => {
            sort_by_key(&mut all);
            *objects = all;
        }
        Change::Objects(changed) => {
            for (key, object) in changed {
                let at = objects.binary_search_by(|o| key.cmp_to(o.metadata()).reverse());
                match (at, object) {
                    (Ok(i), Some(o)) => {
                        if let Some(slot) = objects.get_mut(i) {
                            *slot = o;
                        }
                    }
                    (Ok(i), None) => {
                        objects.remove(i);
                    }
                    (Err(i), Some(o)) => objects.insert(i, o),
                    (Err(_), None) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, port: i32) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some(ns.to_string());
        s.metadata.name = Some(name.to_string());
        s.spec = Some(k8s_openapi::api::core::v1::ServiceSpec {
            ports: Some(vec![k8s_openapi::api::core::v1::ServicePort {
                port,
                ..Default::default()
            }]),
            ..Default::default()
        });
        s
    }

    fn names(s: &Snapshot) -> Vec<(String, i32)> {
        s.services
            .iter()
            .map(|s| {
                let port = s.spec.as_ref().and_then(|p| p.ports.as_ref()?.first().map(|p| p.port));
                (ObjectKey::of(&s.metadata).name, port.unwrap_or(0))
            })
            .collect()
    }

    #[test]
    fn objects_are_inserted_replaced_and_removed_in_key_order() {
        let mut s = Snapshot::default();
        Update {
            services: Some(Change::All(vec![svc("b", "x", 1), svc("a", "y", 1), svc("a", "x", 1)])),
            ..Default::default()
        }
        .apply_to(&mut s);
        assert_eq!(names(&s), [("x".into(), 1), ("y".into(), 1), ("x".into(), 1)]);
        let objects = vec![
            (ObjectKey::new("a", "y"), Some(svc("a", "y", 2))),
            (ObjectKey::new("a", "z"), Some(svc("a", "z", 1))),
            (ObjectKey::new("a", "x"), None),
            (ObjectKey::new("c", "gone-already"), None),
            (ObjectKey::new("0", "first"), Some(svc("0", "first", 1))),
        ];
        let update = Update {
            services: Some(Change::Objects(objects)),
            ..Default::default()
        };
        assert!(update.affects().routes);
        update.apply_to(&mut s);
        assert_eq!(
            names(&s),
            [("first".into(), 1), ("y".into(), 2), ("z".into(), 1), ("x".into(), 1)]
        );
        let keys: Vec<ObjectKey> = s.services.iter().map(|o| ObjectKey::of(&o.metadata)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn a_whole_kind_asks_for_an_endpoint_rebuild() {
        let mut cache = EndpointCache::new();
        let whole = Update {
            endpoint_slices: Some(Change::All(Vec::new())),
            services: Some(Change::Objects(vec![(
                ObjectKey::new("a", "x"),
                Some(svc("a", "x", 80)),
            )])),
            ..Default::default()
        };
        assert!(!whole.update_endpoints(&mut cache));
        assert!(cache.table().is_empty(), "nothing fed");
        let objects = Update {
            services: Some(Change::Objects(vec![(
                ObjectKey::new("a", "x"),
                Some(svc("a", "x", 80)),
            )])),
            ..Default::default()
        };
        assert!(objects.update_endpoints(&mut cache));
        assert_eq!(cache.table().len(), 1);
    }
}
