use super::*;
use crate::test_support::*;

fn exact(h: &str) -> HostPattern {
    HostPattern::parse(h).unwrap()
}

struct Keys {
    default: Arc<CertifiedKey>,
    exact: Arc<CertifiedKey>,
    wildcard: Arc<CertifiedKey>,
}

fn keys() -> Keys {
    Keys {
        default: certified(&self_signed(&["default.test"])),
        exact: certified(&self_signed(&["a.example.com"])),
        wildcard: certified(&self_signed(&["*.example.com"])),
    }
}

fn table(k: &Keys) -> CertTable {
    let mut t = CertTable::new(Arc::clone(&k.default));
    assert!(t.insert(&exact("a.example.com"), Arc::clone(&k.exact), "default/a"));
    assert!(t.insert(&exact("*.example.com"), Arc::clone(&k.wildcard), "default/wild"));
    t
}

#[test]
fn resolve_prefers_exact_then_wildcard_then_default() {
    let k = keys();
    let t = table(&k);
    let is = |sni: Option<&str>, want: &Arc<CertifiedKey>| {
        assert!(Arc::ptr_eq(&t.resolve(sni), want), "{sni:?}");
    };
    is(Some("a.example.com"), &k.exact);
    is(Some("b.example.com"), &k.wildcard);
    is(Some("a.b.example.com"), &k.default); // a wildcard covers one label
    is(Some("example.com"), &k.default); // nor its own suffix
    is(Some("other.test"), &k.default);
    is(Some("A.Example.COM"), &k.exact);
    is(Some("a.example.com."), &k.exact);
    is(Some("B.EXAMPLE.com."), &k.wildcard);
    is(None, &k.default);
    is(Some(""), &k.default);
    is(Some("."), &k.default);
    is(Some("10.0.0.1"), &k.default);
    is(Some("::1"), &k.default);
    is(Some("[::1]"), &k.default);
    assert!(Arc::ptr_eq(t.default_cert(), &k.default));
}

#[test]
fn an_ip_address_gets_the_default_even_under_a_wildcard() {
    let k = keys();
    let mut t = CertTable::new(Arc::clone(&k.default));
    // "*.0.0.1" would cover the label-wise suffix of 10.0.0.1 if IPs were looked up.
    t.insert(&HostPattern::Wildcard("0.0.1".into()), Arc::clone(&k.wildcard), "x/y");
    assert!(Arc::ptr_eq(&t.resolve(Some("10.0.0.1")), &k.default));
}

#[test]
fn first_insert_keeps_the_host_and_hosts_lists_sorted_sources() {
    let k = keys();
    let mut t = table(&k);
    assert!(!t.insert(&exact("a.example.com"), Arc::clone(&k.default), "default/late"));
    assert!(!t.insert(&exact("*.example.com"), Arc::clone(&k.default), "default/late"));
    assert!(t.insert(&exact("z.test"), Arc::clone(&k.default), "other/z"));
    assert!(Arc::ptr_eq(&t.resolve(Some("a.example.com")), &k.exact));
    assert_eq!(t.source(&exact("a.example.com")), Some("default/a"));
    assert_eq!(t.source(&exact("*.example.com")), Some("default/wild"));
    assert_eq!(t.source(&exact("b.example.com")), None);
    assert_eq!(
        t.hosts(),
        vec![
            ("*.example.com".to_string(), "default/wild".to_string()),
            ("a.example.com".to_string(), "default/a".to_string()),
            ("z.test".to_string(), "other/z".to_string()),
        ]
    );
    assert!(CertTable::new(Arc::clone(&k.default)).hosts().is_empty());
}

#[test]
fn publish_swaps_what_the_store_resolves() {
    let k = keys();
    let store = CertStore::new(CertTable::new(Arc::clone(&k.default)));
    assert!(Arc::ptr_eq(&store.load().resolve(Some("a.example.com")), &k.default));
    let before = store.load();
    store.publish(table(&k));
    assert!(Arc::ptr_eq(&store.load().resolve(Some("a.example.com")), &k.exact));
    // A table already loaded (a handshake in progress) keeps its generation.
    assert!(Arc::ptr_eq(&before.resolve(Some("a.example.com")), &k.default));
}

/// A CA-signed exact certificate, a CA-signed wildcard and a default, behind a store.
struct Served {
    ca: TestCa,
    exact: TestCert,
    wildcard: TestCert,
    store: Arc<CertStore>,
}

fn served() -> Served {
    let ca = TestCa::root("Handshake Test CA");
    let exact = ca.leaf(&["a.example.com"]);
    let wildcard = ca.leaf(&["*.example.com"]);
    let default = ca.leaf(&["default.test"]);
    let mut t = CertTable::new(certified(&default));
    t.insert(
        &HostPattern::parse("a.example.com").unwrap(),
        certified(&exact),
        "default/a",
    );
    t.insert(
        &HostPattern::parse("*.example.com").unwrap(),
        certified(&wildcard),
        "default/w",
    );
    Served {
        ca,
        exact,
        wildcard,
        store: Arc::new(CertStore::new(t)),
    }
}

#[test]
fn rustls_handshake_presents_the_certificate_chosen_by_sni() {
    let s = served();
    let roots = [s.ca.der.clone()];
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let chain = handshake(s.store.clone(), &roots, "a.example.com", version).unwrap();
        assert_eq!(chain, vec![s.exact.der.clone()], "{version:?}");
        let chain = handshake(s.store.clone(), &roots, "b.example.com", version).unwrap();
        assert_eq!(chain, vec![s.wildcard.der.clone()], "{version:?}");
        // No certificate covers c.b.example.com: the default is presented, which the client rejects.
        let err = handshake(s.store.clone(), &roots, "c.b.example.com", version).unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err:?}");
    }
}

#[test]
fn rustls_handshake_sees_a_published_table_at_once() {
    let s = served();
    let roots = [s.ca.der.clone()];
    let other = s.ca.leaf(&["a.example.com"]);
    let mut t = CertTable::new(certified(&other));
    t.insert(
        &HostPattern::parse("a.example.com").unwrap(),
        certified(&other),
        "default/other",
    );
    s.store.publish(t);
    let chain = handshake(s.store.clone(), &roots, "a.example.com", &rustls::version::TLS13).unwrap();
    assert_eq!(chain, vec![other.der.clone()]);
}

#[test]
fn rustls_handshake_with_a_chain_and_the_fake_default() {
    // A leaf + intermediate chain: the client trusts only the root.
    let root = TestCa::root("Chain Root");
    let intermediate = root.intermediate("Chain Intermediate");
    let leaf = intermediate.leaf(&["chain.example.com"]);
    let chain_pem = format!("{}{}", leaf.cert_pem, intermediate.pem);
    let parsed = crate::parse_pem(chain_pem.as_bytes(), leaf.key_pem.as_bytes(), now()).unwrap();
    let fake = crate::fake_certificate(now()).unwrap();
    let mut t = CertTable::new(Arc::clone(&fake));
    t.insert(
        &HostPattern::parse("chain.example.com").unwrap(),
        parsed.key,
        "default/chain",
    );
    let store = Arc::new(CertStore::new(t));
    let chain = handshake(
        store.clone(),
        std::slice::from_ref(&root.der),
        "chain.example.com",
        &rustls::version::TLS13,
    )
    .unwrap();
    assert_eq!(chain, vec![leaf.der.clone(), intermediate.der.clone()]);

    // The fake certificate is presented for unknown names: a client that trusts it sees it.
    let fake_der = fake.cert[0].clone();
    let chain = handshake(
        store,
        std::slice::from_ref(&fake_der),
        "ingress.local",
        &rustls::version::TLS13,
    )
    .unwrap();
    assert_eq!(chain, vec![fake_der]);
}

#[test]
fn rustls_handshake_with_rsa_and_ecdsa_fixture_keys() {
    for (crt, key, host) in [
        (RSA_CRT, RSA_PKCS1_KEY, "rsa.example.test"),
        (EC_CRT, EC_SEC1_KEY, "ec.example.test"),
    ] {
        let parsed = crate::parse_pem(crt.as_bytes(), key.as_bytes(), now()).unwrap();
        let leaf = parsed.key.cert[0].clone();
        let store = Arc::new(CertStore::new(CertTable::new(parsed.key)));
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let chain = handshake(store.clone(), std::slice::from_ref(&leaf), host, version).unwrap();
            assert_eq!(chain, vec![leaf.clone()], "{host} {version:?}");
        }
    }
}
