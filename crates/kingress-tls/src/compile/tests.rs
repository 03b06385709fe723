//! Table-driven: Ingresses and Secrets in, certificate table and diagnostics out.

use super::*;
use crate::test_support::*;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, IngressClassSpec};
use kingress_model::Subject;

const OURS: &str = "kingress";

fn fallback() -> Arc<CertifiedKey> {
    certified(&self_signed(&["fallback.test"]))
}

fn run(snapshot: &Snapshot, options: &TlsOptions) -> (CertTable, Vec<Diagnostic>, Arc<CertifiedKey>) {
    let fallback = fallback();
    let (table, diagnostics) = compile_certs(snapshot, options, &fallback, now());
    (table, diagnostics, fallback)
}

fn snapshot(ingresses: Vec<Ingress>, secrets: Vec<Secret>) -> Snapshot {
    Snapshot {
        ingresses,
        secrets,
        ..Default::default()
    }
}

fn serves(table: &CertTable, sni: &str, cert: &TestCert) -> bool {
    table.resolve(Some(sni)).cert.first() == Some(&cert.der)
}

fn diag(kind: &str, ns: &str, name: &str, reason: &str) -> Diagnostic {
    Diagnostic::object(ObjectRef::new(kind, ns, name), reason)
}

#[test]
fn hosts_get_their_secret_and_the_rest_the_default() {
    let a = self_signed(&["a.example.com"]);
    let wild = self_signed(&["*.example.com"]);
    let s = snapshot(
        vec![ingress(
            "web",
            "site",
            None,
            OURS,
            &[
                (&["A.Example.com"], Some("a-tls")),
                (&["*.example.com"], Some("wild-tls")),
            ],
        )],
        vec![secret_for("web", "a-tls", &a), secret_for("web", "wild-tls", &wild)],
    );
    let (table, diagnostics, fallback) = run(&s, &TlsOptions::default());
    assert_eq!(diagnostics, vec![]);
    assert!(serves(&table, "a.example.com", &a));
    assert!(serves(&table, "b.example.com", &wild));
    assert!(Arc::ptr_eq(&table.resolve(Some("other.test")), &fallback));
    assert!(Arc::ptr_eq(table.default_cert(), &fallback));
    assert_eq!(
        table.hosts(),
        vec![
            ("*.example.com".to_string(), "web/wild-tls".to_string()),
            ("a.example.com".to_string(), "web/a-tls".to_string()),
        ]
    );
}

#[test]
fn the_older_ingress_keeps_a_host() {
    let old = self_signed(&["shop.example.com"]);
    let new = self_signed(&["shop.example.com"]);
    let secrets = vec![secret_for("default", "old", &old), secret_for("default", "new", &new)];
    let ingresses = vec![
        ingress(
            "default",
            "b-new",
            Some(2_000),
            OURS,
            &[(&["shop.example.com"], Some("new"))],
        ),
        ingress(
            "default",
            "z-old",
            Some(1_000),
            OURS,
            &[(&["shop.example.com"], Some("old"))],
        ),
    ];
    let (table, diagnostics, _) = run(&snapshot(ingresses, secrets.clone()), &TlsOptions::default());
    assert!(serves(&table, "shop.example.com", &old));
    assert_eq!(
        diagnostics,
        vec![diag(
            "Ingress",
            "default",
            "b-new",
            "tls secret \"default/new\" is not used for host shop.example.com: an older Ingress already serves it \
             with secret \"default/old\""
        )]
    );

    // Without timestamps (a manifest folder), namespace/name decides; sharing one Secret is no conflict.
    let ingresses = vec![
        ingress("default", "b", None, OURS, &[(&["shop.example.com"], Some("new"))]),
        ingress("default", "a", None, OURS, &[(&["shop.example.com"], Some("old"))]),
        ingress("default", "c", None, OURS, &[(&["shop.example.com"], Some("old"))]),
    ];
    let (table, diagnostics, _) = run(&snapshot(ingresses, secrets), &TlsOptions::default());
    assert!(serves(&table, "shop.example.com", &old));
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert_eq!(diagnostics[0].subject, ingress_subject("default", "b"));
}

fn ingress_subject(ns: &str, name: &str) -> Subject {
    Subject::Object(ObjectRef::new("Ingress", ns, name))
}

#[test]
fn a_missing_secret_serves_the_default_with_a_diagnostic() {
    let s = snapshot(
        vec![ingress(
            "web",
            "site",
            None,
            OURS,
            &[(&["a.example.com"], Some("gone"))],
        )],
        vec![],
    );
    let (table, diagnostics, fallback) = run(&s, &TlsOptions::default());
    assert!(Arc::ptr_eq(&table.resolve(Some("a.example.com")), &fallback));
    assert!(table.hosts().is_empty());
    assert_eq!(
        diagnostics,
        vec![diag(
            "Ingress",
            "web",
            "site",
            "tls secret \"web/gone\" not found; host a.example.com is served with the default certificate"
        )]
    );
}

#[test]
fn the_secret_is_looked_up_in_the_ingress_namespace() {
    let c = self_signed(&["a.example.com"]);
    let s = snapshot(
        vec![ingress("web", "site", None, OURS, &[(&["a.example.com"], Some("tls"))])],
        vec![secret_for("other", "tls", &c)],
    );
    let (table, diagnostics, fallback) = run(&s, &TlsOptions::default());
    assert!(Arc::ptr_eq(&table.resolve(Some("a.example.com")), &fallback));
    assert_eq!(diagnostics.len(), 1);
    assert!(diagnostics[0].reason.starts_with("tls secret \"web/tls\" not found"));

    // An Ingress without a namespace is in "default", and so are Secrets without one.
    let mut secret = secret_for("x", "tls", &c);
    secret.metadata.namespace = None;
    let mut ing = ingress("x", "site", None, OURS, &[(&["a.example.com"], Some("tls"))]);
    ing.metadata.namespace = None;
    let (table, diagnostics, _) = run(&snapshot(vec![ing], vec![secret]), &TlsOptions::default());
    assert_eq!(diagnostics, vec![]);
    assert_eq!(
        table.hosts(),
        vec![("a.example.com".to_string(), "default/tls".to_string())]
    );
}

#[test]
fn a_younger_ingress_can_serve_a_host_the_older_could_not() {
    let c = self_signed(&["a.example.com"]);
    let s = snapshot(
        vec![
            ingress("web", "old", Some(1), OURS, &[(&["a.example.com"], Some("gone"))]),
            ingress("web", "new", Some(2), OURS, &[(&["a.example.com"], Some("tls"))]),
        ],
        vec![secret_for("web", "tls", &c)],
    );
    let (table, diagnostics, _) = run(&s, &TlsOptions::default());
    assert!(serves(&table, "a.example.com", &c));
    assert_eq!(
        diagnostics,
        vec![diag(
            "Ingress",
            "web",
            "old",
            "tls secret \"web/gone\" not found; host a.example.com is served with tls secret \"web/tls\""
        )]
    );
}

#[test]
fn a_certificate_that_does_not_cover_the_host_is_not_used_for_it() {
    let c = self_signed(&["a.example.com", "*.apps.example.com"]);
    let s = snapshot(
        vec![ingress(
            "web",
            "site",
            None,
            OURS,
            &[(&["a.example.com", "b.example.com", "x.apps.example.com"], Some("tls"))],
        )],
        vec![secret_for("web", "tls", &c)],
    );
    let (table, diagnostics, fallback) = run(&s, &TlsOptions::default());
    assert!(serves(&table, "a.example.com", &c));
    assert!(serves(&table, "x.apps.example.com", &c));
    assert!(Arc::ptr_eq(&table.resolve(Some("b.example.com")), &fallback));
    assert_eq!(
        diagnostics,
        vec![diag(
            "Ingress",
            "web",
            "site",
            "the certificate in tls secret \"web/tls\" does not cover host b.example.com (it covers *.apps.example.com, \
             a.example.com); host b.example.com is served with the default certificate"
        )]
    );
}

#[test]
fn an_invalid_secret_is_reported_once_on_the_secret() {
    let a = self_signed(&["a.example.com"]);
    let b = self_signed(&["b.example.com"]);
    let mismatched = tls_secret("web", "bad", &a.cert_pem, &b.key_pem);
    let s = snapshot(
        vec![
            ingress("web", "one", None, OURS, &[(&["a.example.com"], Some("bad"))]),
            ingress(
                "web",
                "two",
                None,
                OURS,
                &[(&["a.example.com", "c.example.com"], Some("bad"))],
            ),
        ],
        vec![mismatched],
    );
    let (table, diagnostics, fallback) = run(&s, &TlsOptions::default());
    assert!(Arc::ptr_eq(&table.resolve(Some("a.example.com")), &fallback));
    assert_eq!(
        diagnostics,
        vec![diag(
            "Secret",
            "web",
            "bad",
            "invalid TLS secret, not used: the private key in tls.key does not match the certificate in tls.crt"
        )]
    );

    let expired = self_signed_between(&["a.example.com"], 2020, 2021);
    let s = snapshot(
        vec![ingress("web", "one", None, OURS, &[(&["a.example.com"], Some("old"))])],
        vec![secret_for("web", "old", &expired)],
    );
    let (_, diagnostics, _) = run(&s, &TlsOptions::default());
    assert_eq!(
        diagnostics,
        vec![diag(
            "Secret",
            "web",
            "old",
            "invalid TLS secret, not used: the certificate expired on 2021-01-01T00:00:00Z"
        )]
    );
}

#[test]
fn ingresses_of_another_class_are_ignored() {
    let c = self_signed(&["a.example.com"]);
    let s = snapshot(
        vec![
            ingress(
                "web",
                "nginx",
                Some(1),
                "nginx",
                &[(&["a.example.com"], Some("garbage"))],
            ),
            ingress(
                "web",
                "nginx-2",
                Some(1),
                "nginx",
                &[(&["b.example.com"], Some("missing"))],
            ),
            ingress("web", "ours", Some(2), OURS, &[(&["a.example.com"], Some("tls"))]),
        ],
        vec![secret_for("web", "tls", &c), tls_secret("web", "garbage", "x", "y")],
    );
    let (table, diagnostics, _) = run(&s, &TlsOptions::default());
    assert_eq!(diagnostics, vec![], "a foreign Ingress's Secrets are not even read");
    assert!(serves(&table, "a.example.com", &c));

    // A class object with our controller value makes its Ingresses ours.
    let mut s = s;
    s.ingress_classes.push(IngressClass {
        metadata: ObjectMeta {
            name: Some("nginx".into()),
            ..Default::default()
        },
        spec: Some(IngressClassSpec {
            controller: Some(ClassOptions::default().controller_class),
            ..Default::default()
        }),
    });
    let (_, diagnostics, _) = run(&s, &TlsOptions::default());
    assert_eq!(diagnostics.len(), 2, "{diagnostics:?}");
}

#[test]
fn entries_without_secret_name_or_hosts_and_invalid_hosts() {
    let c = self_signed(&["a.example.com"]);
    let mut ing = ingress(
        "web",
        "site",
        None,
        OURS,
        &[
            (&["nosecret.example.com"], None),
            (&["empty.example.com"], Some("")),
            (&[], Some("tls")),
            (&["bad_host.example.com", "a.example.com"], Some("tls")),
        ],
    );
    // An entry with no `hosts` field at all applies to nothing either.
    if let Some(tls) = ing.spec.as_mut().and_then(|s| s.tls.as_mut()) {
        tls.push(k8s_openapi::api::networking::v1::IngressTLS {
            hosts: None,
            secret_name: Some("tls".into()),
        });
    }
    let s = snapshot(vec![ing], vec![secret_for("web", "tls", &c)]);
    let (table, diagnostics, fallback) = run(&s, &TlsOptions::default());
    assert!(serves(&table, "a.example.com", &c));
    assert!(Arc::ptr_eq(&table.resolve(Some("nosecret.example.com")), &fallback));
    assert_eq!(
        table.hosts(),
        vec![("a.example.com".to_string(), "web/tls".to_string())]
    );
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert_eq!(diagnostics[0].subject, ingress_subject("web", "site"));
    assert!(
        diagnostics[0]
            .reason
            .starts_with("tls host skipped: host \"bad_host.example.com\""),
        "{}",
        diagnostics[0].reason
    );
}

#[test]
fn default_ssl_certificate_when_valid_else_the_fallback_with_a_diagnostic() {
    let d = self_signed(&["default.example.com"]);
    let options = TlsOptions {
        default_certificate: Some(("ingress".into(), "default-cert".into())),
        ..Default::default()
    };
    let s = snapshot(vec![], vec![secret_for("ingress", "default-cert", &d)]);
    let (table, diagnostics, _) = run(&s, &options);
    assert_eq!(diagnostics, vec![]);
    assert_eq!(table.default_cert().cert.first(), Some(&d.der));
    assert!(serves(&table, "anything.test", &d));

    // Missing.
    let (table, diagnostics, fallback) = run(&snapshot(vec![], vec![]), &options);
    assert!(Arc::ptr_eq(table.default_cert(), &fallback));
    assert_eq!(
        diagnostics,
        vec![diag(
            "Secret",
            "ingress",
            "default-cert",
            "--default-ssl-certificate: not found; the self-signed fake certificate is the default"
        )]
    );

    // Invalid, and also used by an Ingress: still one diagnostic.
    let s = snapshot(
        vec![ingress(
            "ingress",
            "site",
            None,
            OURS,
            &[(&["default.example.com"], Some("default-cert"))],
        )],
        vec![tls_secret("ingress", "default-cert", "garbage", &d.key_pem)],
    );
    let (table, diagnostics, fallback) = run(&s, &options);
    assert!(Arc::ptr_eq(table.default_cert(), &fallback));
    assert!(Arc::ptr_eq(&table.resolve(Some("default.example.com")), &fallback));
    assert_eq!(
        diagnostics,
        vec![diag(
            "Secret",
            "ingress",
            "default-cert",
            "--default-ssl-certificate: tls.crt holds no PEM CERTIFICATE block; the self-signed fake certificate \
             is the default"
        )]
    );
}

#[test]
fn the_fake_certificate_as_fallback() {
    let fake = crate::fake_certificate(now()).unwrap();
    let (table, diagnostics) = compile_certs(&Snapshot::default(), &TlsOptions::default(), &fake, now());
    assert!(diagnostics.is_empty());
    assert!(Arc::ptr_eq(&table.resolve(Some("example.com")), &fake));
}
