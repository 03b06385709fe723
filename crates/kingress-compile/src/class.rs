//! Which Ingresses belong to this controller.
//!
//! In order, as ingress-nginx decides it:
//! 1. `spec.ingressClassName: N`: when an IngressClass named N exists, the Ingress is ours
//!    if that class's `spec.controller` is our controller value; when no such class
//!    exists, it is ours if N is our class name (so a folder of manifests needs no
//!    IngressClass object).
//! 2. else the legacy annotation `kubernetes.io/ingress.class: N`: ours if N is our
//!    class name.
//! 3. else (no class at all): ours if one of our IngressClasses carries
//!    `ingressclass.kubernetes.io/is-default-class: "true"`, or if
//!    `--watch-ingress-without-class` is set.

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// `--ingress-class`, `--controller-class`, `--watch-ingress-without-class`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassOptions {
    pub ingress_class: String,
    pub controller_class: String,
    pub watch_ingress_without_class: bool,
}

impl Default for ClassOptions {
    fn default() -> Self {
        Self {
            ingress_class: "kingress".to_string(),
            controller_class: "kingress.dev/ingress-controller".to_string(),
            watch_ingress_without_class: false,
        }
    }
}

/// Decides class membership for many Ingresses against one set of IngressClasses.
pub struct ClassFilter<'a> {
    options: &'a ClassOptions,
    classes: &'a [IngressClass],
    default_is_ours: bool,
}

impl<'a> ClassFilter<'a> {
    pub fn new(options: &'a ClassOptions, classes: &'a [IngressClass]) -> Self {
        let default_is_ours = classes.iter().any(|c| {
            is_our_controller(c, options)
                && c.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                    .is_some_and(|v| v == "true")
        });
        Self {
            options,
            classes,
            default_is_ours,
        }
    }

    pub fn is_ours(&self, ingress: &Ingress) -> bool {
        let spec_class = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref())
            .filter(|c| !c.is_empty());
        if let Some(name) = spec_class {
            return match self.classes.iter().find(|c| c.metadata.name.as_deref() == Some(name)) {
                Some(class) => is_our_controller(class, self.options),
                None => name == self.options.ingress_class,
            };
        }
        let legacy = ingress
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
            .filter(|c| !c.is_empty());
        if let Some(name) = legacy {
            return *name == self.options.ingress_class;
        }
        self.default_is_ours || self.options.watch_ingress_without_class
    }
}

fn is_our_controller(class: &IngressClass, options: &ClassOptions) -> bool {
    class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(options.controller_class.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::{IngressClassSpec, IngressSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn class(name: &str, controller: &str, default: bool) -> IngressClass {
        let mut annotations = BTreeMap::new();
        if default {
            annotations.insert(DEFAULT_CLASS_ANNOTATION.to_string(), "true".to_string());
        }
        IngressClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(IngressClassSpec {
                controller: Some(controller.into()),
                ..Default::default()
            }),
        }
    }

    fn ingress(class_name: Option<&str>, legacy: Option<&str>) -> Ingress {
        let mut annotations = BTreeMap::new();
        if let Some(l) = legacy {
            annotations.insert(LEGACY_CLASS_ANNOTATION.to_string(), l.to_string());
        }
        Ingress {
            metadata: ObjectMeta {
                name: Some("i".into()),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(IngressSpec {
                ingress_class_name: class_name.map(str::to_string),
                ..Default::default()
            }),
            status: None,
        }
    }

    const OURS: &str = "kingress.dev/ingress-controller";

    #[test]
    fn class_name_resolves_through_ingress_class_objects() {
        let opts = ClassOptions::default();
        let classes = vec![
            class("kingress", OURS, false),
            class("nginx", "k8s.io/ingress-nginx", false),
            class("custom", OURS, false),
        ];
        let f = ClassFilter::new(&opts, &classes);
        assert!(f.is_ours(&ingress(Some("kingress"), None)));
        assert!(
            f.is_ours(&ingress(Some("custom"), None)),
            "any class with our controller value"
        );
        assert!(!f.is_ours(&ingress(Some("nginx"), None)));
        assert!(!f.is_ours(&ingress(Some("missing"), None)));
        // Without a class object, our own class name is enough.
        let f = ClassFilter::new(&opts, &[]);
        assert!(f.is_ours(&ingress(Some("kingress"), None)));
        // A class object with our name but another controller is not ours.
        let foreign = vec![class("kingress", "someone.else/controller", false)];
        let f = ClassFilter::new(&opts, &foreign);
        assert!(!f.is_ours(&ingress(Some("kingress"), None)));
    }

    #[test]
    fn legacy_annotation_and_spec_field() {
        let opts = ClassOptions::default();
        let f = ClassFilter::new(&opts, &[]);
        assert!(f.is_ours(&ingress(None, Some("kingress"))));
        assert!(!f.is_ours(&ingress(None, Some("nginx"))));
        // The field wins over the annotation.
        assert!(!f.is_ours(&ingress(Some("nginx"), Some("kingress"))));
    }

    #[test]
    fn ingresses_without_class() {
        let opts = ClassOptions::default();
        assert!(!ClassFilter::new(&opts, &[]).is_ours(&ingress(None, None)));
        let classes = vec![class("kingress", OURS, true)];
        assert!(ClassFilter::new(&opts, &classes).is_ours(&ingress(None, None)));
        let classes = vec![class("nginx", "k8s.io/ingress-nginx", true)];
        assert!(!ClassFilter::new(&opts, &classes).is_ours(&ingress(None, None)));
        let opts = ClassOptions {
            watch_ingress_without_class: true,
            ..ClassOptions::default()
        };
        assert!(ClassFilter::new(&opts, &[]).is_ours(&ingress(None, None)));
        assert!(ClassFilter::new(&opts, &[]).is_ours(&ingress(Some(""), None)));
    }

    #[test]
    fn custom_class_and_controller_names() {
        let opts = ClassOptions {
            ingress_class: "edge".into(),
            controller_class: "example.com/edge".into(),
            watch_ingress_without_class: false,
        };
        let classes = vec![class("kingress", OURS, true)];
        let f = ClassFilter::new(&opts, &classes);
        assert!(!f.is_ours(&ingress(Some("kingress"), None)));
        assert!(f.is_ours(&ingress(Some("edge"), None)));
        assert!(!f.is_ours(&ingress(None, None)));
    }
}
