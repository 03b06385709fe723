use super::*;
use crate::test_support::*;
use std::collections::BTreeMap;

fn parse(cert: &str, key: &str) -> Result<ParsedCert, String> {
    parse_pem(cert.as_bytes(), key.as_bytes(), now())
}

fn parsed_with_names(names: &[&str]) -> ParsedCert {
    let c = self_signed(names);
    parse(&c.cert_pem, &c.key_pem).unwrap()
}

#[test]
fn rsa_pkcs1_key_parses() {
    assert!(RSA_PKCS1_KEY.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let p = parse(RSA_CRT, RSA_PKCS1_KEY).unwrap();
    assert_eq!(p.names, vec!["*.rsa.example.test", "rsa.example.test"]);
    assert_eq!(p.key.cert.len(), 1);
}

#[test]
fn rsa_pkcs8_key_parses() {
    assert!(RSA_PKCS8_KEY.starts_with("-----BEGIN PRIVATE KEY-----"));
    parse(RSA_CRT, RSA_PKCS8_KEY).unwrap();
}

#[test]
fn ec_sec1_key_parses() {
    assert!(EC_SEC1_KEY.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    let p = parse(EC_CRT, EC_SEC1_KEY).unwrap();
    assert_eq!(p.names, vec!["ec.example.test"]);
    // `openssl ecparam -genkey` without -noout puts the curve first; it is skipped.
    let with_params =
        format!("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{EC_SEC1_KEY}");
    parse(EC_CRT, &with_params).unwrap();
    // Windows line endings.
    parse(&EC_CRT.replace('\n', "\r\n"), &EC_SEC1_KEY.replace('\n', "\r\n")).unwrap();
}

#[test]
fn ecdsa_and_ed25519_pkcs8_keys_parse() {
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let mut params = rcgen::CertificateParams::new(vec!["k.example.com".to_string()]).unwrap();
        params.not_before = year(2025);
        params.not_after = year(2125);
        let c = self_signed_with(params, alg);
        assert!(c.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let p = parse(&c.cert_pem, &c.key_pem).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(p.names, vec!["k.example.com"]);
    }
}

#[test]
fn key_of_another_certificate_is_rejected() {
    let a = self_signed(&["a.example.com"]);
    let b = self_signed(&["b.example.com"]);
    let err = parse(&a.cert_pem, &b.key_pem).unwrap_err();
    assert_eq!(
        err,
        "the private key in tls.key does not match the certificate in tls.crt"
    );
    // Another key type altogether.
    let err = parse(&a.cert_pem, RSA_PKCS1_KEY).unwrap_err();
    assert!(err.contains("does not match"), "{err}");
    let err = parse(RSA_CRT, EC_SEC1_KEY).unwrap_err();
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn expired_and_not_yet_valid_certificates_are_rejected() {
    let old = self_signed_between(&["old.example.com"], 2020, 2021);
    let err = parse(&old.cert_pem, &old.key_pem).unwrap_err();
    assert_eq!(err, "the certificate expired on 2021-01-01T00:00:00Z");

    let future = self_signed_between(&["future.example.com"], 2031, 2040);
    let err = parse(&future.cert_pem, &future.key_pem).unwrap_err();
    assert_eq!(err, "the certificate is not valid before 2031-01-01T00:00:00Z");

    // The same certificates, at times inside their validity.
    let in_2020 = UNIX_EPOCH + Duration::from_secs(1_600_000_000); // 2020-09-13
    assert!(parse_pem(old.cert_pem.as_bytes(), old.key_pem.as_bytes(), in_2020).is_ok());
    let in_2035 = UNIX_EPOCH + Duration::from_secs(2_051_222_400); // 2035-01-01
    assert!(parse_pem(future.cert_pem.as_bytes(), future.key_pem.as_bytes(), in_2035).is_ok());
}

#[test]
fn not_after_is_the_leaf_expiry() {
    let c = self_signed_between(&["a.example.com"], 2025, 2035);
    let p = parse(&c.cert_pem, &c.key_pem).unwrap();
    assert_eq!(p.not_after, UNIX_EPOCH + Duration::from_secs(2_051_222_400)); // 2035-01-01
}

#[test]
fn garbage_is_rejected_with_a_reason() {
    let good = self_signed(&["a.example.com"]);
    let cases: Vec<(String, String, &str)> = vec![
        (
            "not a certificate".into(),
            good.key_pem.clone(),
            "tls.crt holds no PEM CERTIFICATE block",
        ),
        (
            String::new(),
            good.key_pem.clone(),
            "tls.crt holds no PEM CERTIFICATE block",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n".into(),
            good.key_pem.clone(),
            "tls.crt is not valid PEM",
        ),
        (
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".into(),
            good.key_pem.clone(),
            "tls.crt is not valid PEM",
        ),
        (
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n".into(),
            good.key_pem.clone(),
            "the first certificate in tls.crt is not a valid X.509 certificate",
        ),
        (
            format!(
                "{}-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
                good.cert_pem
            ),
            good.key_pem.clone(),
            "certificate 2 in tls.crt is not a valid X.509 certificate",
        ),
        (
            good.cert_pem.clone(),
            "garbage".into(),
            "tls.key holds no PEM private key",
        ),
        (
            good.cert_pem.clone(),
            good.cert_pem.clone(),
            "tls.key holds no PEM private key",
        ),
        (
            good.cert_pem.clone(),
            "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n".into(),
            "tls.key is not a usable RSA, ECDSA or Ed25519 private key",
        ),
    ];
    for (cert, key, want) in cases {
        let err = parse(&cert, &key).unwrap_err();
        assert!(err.starts_with(want), "{cert:?} / {key:?}: {err}");
    }
    // Arbitrary bytes, not even UTF-8.
    let err = parse_pem(&[0xff, 0x00, 0x2d, 0x2d], &[0xfe], now()).unwrap_err();
    assert!(err.starts_with("tls.crt"), "{err}");
}

#[test]
fn chain_with_intermediate_is_accepted_leaf_first() {
    let root = TestCa::root("Test Root");
    let intermediate = root.intermediate("Test Intermediate");
    let leaf = intermediate.leaf(&["chain.example.com"]);
    let chain = format!("{}{}", leaf.cert_pem, intermediate.pem);
    let p = parse(&chain, &leaf.key_pem).unwrap();
    assert_eq!(p.key.cert.len(), 2);
    assert_eq!(p.key.cert[0], leaf.der);
    assert_eq!(p.key.cert[1], intermediate.der);
    assert_eq!(p.names, vec!["chain.example.com"]);

    // Intermediate first: the "leaf" is then the intermediate, which the key does not match.
    let wrong_order = format!("{}{}", intermediate.pem, leaf.cert_pem);
    let err = parse(&wrong_order, &leaf.key_pem).unwrap_err();
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn names_are_lowercased_sans_or_else_the_common_name() {
    let p = parsed_with_names(&["WWW.Example.COM", "api.example.com", "10.0.0.1"]);
    assert_eq!(
        p.names,
        vec!["api.example.com", "www.example.com"],
        "IP SANs are not DNS names"
    );

    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Legacy.Example.com");
    params.not_before = year(2025);
    params.not_after = year(2125);
    let c = self_signed_with(params, &rcgen::PKCS_ECDSA_P256_SHA256);
    let p = parse(&c.cert_pem, &c.key_pem).unwrap();
    assert_eq!(p.names, vec!["legacy.example.com"]);
    assert!(p.covers("legacy.example.com"));
}

#[test]
fn covers_exact_and_single_label_wildcards_case_insensitively() {
    let p = parsed_with_names(&["example.com", "*.apps.example.com"]);
    assert!(p.covers("example.com"));
    assert!(p.covers("EXAMPLE.com"));
    assert!(p.covers("example.com."));
    assert!(p.covers("a.apps.example.com"));
    assert!(p.covers("A.Apps.Example.Com"));
    assert!(
        p.covers("*.apps.example.com"),
        "a wildcard host is covered by the same wildcard"
    );
    assert!(!p.covers("apps.example.com"), "a wildcard does not cover its suffix");
    assert!(!p.covers("a.b.apps.example.com"), "a wildcard covers a single label");
    assert!(!p.covers("www.example.com"));
    assert!(!p.covers("*.example.com"));
    assert!(!p.covers(""));
    assert!(!p.covers("."));
}

#[test]
fn secret_type_and_keys() {
    let c = self_signed(&["a.example.com"]);
    let mut secret = secret_for("default", "s", &c);
    assert!(parse_secret(&secret, now()).is_ok());

    secret.type_ = Some("Opaque".into());
    assert!(parse_secret(&secret, now()).is_ok(), "ingress-nginx accepts Opaque");
    secret.type_ = None;
    assert!(parse_secret(&secret, now()).is_ok(), "no type is Opaque");
    secret.type_ = Some("kubernetes.io/dockerconfigjson".into());
    assert_eq!(
        parse_secret(&secret, now()).unwrap_err(),
        "secret type \"kubernetes.io/dockerconfigjson\" is not \"kubernetes.io/tls\""
    );

    let mut secret = secret_for("default", "s", &c);
    secret.data.as_mut().unwrap().remove("tls.key");
    assert_eq!(parse_secret(&secret, now()).unwrap_err(), "the secret has no tls.key");
    secret.data = None;
    assert_eq!(parse_secret(&secret, now()).unwrap_err(), "the secret has no tls.crt");
}

#[test]
fn string_data_is_read_and_wins_over_data() {
    let good = self_signed(&["a.example.com"]);
    let mut secret = tls_secret("default", "s", "garbage", "garbage");
    let mut string_data = BTreeMap::new();
    string_data.insert("tls.crt".to_string(), good.cert_pem.clone());
    string_data.insert("tls.key".to_string(), good.key_pem.clone());
    secret.string_data = Some(string_data);
    let p = parse_secret(&secret, now()).unwrap();
    assert_eq!(p.key.cert[0], good.der);
    secret.data = None;
    assert!(parse_secret(&secret, now()).is_ok());
}

#[test]
fn fake_certificate_is_ingress_nginx_s() {
    let key = fake_certificate(now()).unwrap();
    key.keys_match().unwrap();
    assert_eq!(key.cert.len(), 1);
    let (_, cert) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).unwrap();
    let cn: Vec<_> = cert.subject().iter_common_name().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(cn, vec![FAKE_CERTIFICATE_CN]);
    let o: Vec<_> = cert
        .subject()
        .iter_organization()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(o, vec![FAKE_CERTIFICATE_ORG]);
    assert_eq!(cert.subject(), cert.issuer(), "self-signed");
    assert_eq!(dns_names(&cert).unwrap(), vec![FAKE_CERTIFICATE_HOST]);
    assert_eq!(cert.validity().not_before.timestamp(), 1_893_456_000);
    assert_eq!(cert.validity().not_after.timestamp(), 1_893_456_000 + 365 * 86_400);
}
