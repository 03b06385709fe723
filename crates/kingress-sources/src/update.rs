//! [`Update`]: the parts of a snapshot a watch-based source replaces.
//!
//! A folder rescan produces a whole [`Snapshot`] and the controller compares it with the
//! last one to find what changed. A source built on watches knows which kinds changed,
//! and at 10,000 Ingresses and 100,000 endpoints cloning and comparing the unchanged
//! kinds costs more than compiling the changed one: it sends only the replaced parts.

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kingress_compile::Snapshot;

/// Each `Some` replaces that kind in the current snapshot; `None` leaves it as it is.
#[derive(Clone, Debug, Default)]
pub struct Update {
    pub ingress_classes: Option<Vec<IngressClass>>,
    pub ingresses: Option<Vec<Ingress>>,
    pub services: Option<Vec<Service>>,
    pub endpoint_slices: Option<Vec<EndpointSlice>>,
    pub secrets: Option<Vec<Secret>>,
    pub config_maps: Option<Vec<ConfigMap>>,
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
            ingress_classes: Some(s.ingress_classes),
            ingresses: Some(s.ingresses),
            services: Some(s.services),
            endpoint_slices: Some(s.endpoint_slices),
            secrets: Some(s.secrets),
            config_maps: Some(s.config_maps),
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

    /// Replaces the parts this update carries.
    pub fn apply_to(self, s: &mut Snapshot) {
        if let Some(v) = self.ingress_classes {
            s.ingress_classes = v;
        }
        if let Some(v) = self.ingresses {
            s.ingresses = v;
        }
        if let Some(v) = self.services {
            s.services = v;
        }
        if let Some(v) = self.endpoint_slices {
            s.endpoint_slices = v;
        }
        if let Some(v) = self.secrets {
            s.secrets = v;
        }
        if let Some(v) = self.config_maps {
            s.config_maps = v;
        }
    }
}
