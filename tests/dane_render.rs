//! DANE in the engine and the renderer: Postfix's own `dane` level for unlisted
//! destinations, the policy server's `dane` rows for listed ones (whose table rows would
//! otherwise override it), and DNSSEC lookups switched on (pure; the delivery with real
//! Postfix and a validating resolver is in tests/dane_delivery.rs).

mod common;

use common::{eval, gateway, list, lookup, main_cf, policy, render_yaml, service_options};

const SOCKET: &str = mailtls::render::DEFAULT_MTA_STS_SOCKET;

fn unlisted(mechanisms: &str) -> String {
    format!(
        "apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata:\n  name: published\nspec:\n  direction: Outbound\n  scope: Unlisted\n  mechanisms: [{mechanisms}]\n---\n"
    )
}

#[test]
fn without_dane_no_dnssec_lookups_and_no_dane_file() {
    let c = render_yaml(&format!(
        "{}{}{}",
        list("l", &["a.example"]),
        policy("p", &["l"], ""),
        unlisted("MtaSts")
    ));
    assert_eq!(main_cf(&c, "smtp_dns_support_level"), None);
    assert_eq!(main_cf(&c, "smtp_tls_security_level"), None);
    assert!(!c.files.contains_key("dane"));
}

#[test]
fn unlisted_dane_alone_is_postfixs_own_dane_level() {
    let yaml = format!(
        "{}{}{}",
        list("routed", &["r.example"]),
        gateway(
            "gw",
            "  host: gw.example.net\n  appliesTo: Recipients\n  addressLists:\n    - name: routed"
        ),
        unlisted("Dane")
    );
    let e = eval(&yaml);
    assert!(e.policy.unlisted.dane && !e.policy.unlisted.mta_sts);
    let c = render_yaml(&yaml);
    assert_eq!(
        main_cf(&c, "smtp_dns_support_level").as_deref(),
        Some("dnssec")
    );
    assert_eq!(
        main_cf(&c, "smtp_tls_security_level").as_deref(),
        Some("dane")
    );
    // Nothing listed: no policy server is needed.
    assert_eq!(
        main_cf(&c, "smtp_tls_policy_maps").as_deref(),
        Some("lmdb:/etc/postfix/mailtls/tls_policy")
    );
    assert!(!c.files.contains_key("dane"));
    // The gateway's own row keeps the routed mail off the `dane` default.
    assert_eq!(
        lookup(&c, "tls_policy", "[gw.example.net]").as_deref(),
        Some("may")
    );
}

#[test]
fn listed_destinations_inherit_dane_through_the_policy_server() {
    let yaml = format!(
        "{}{}{}",
        list("l", &["a.example", ".sub.example", "x@b.example"]),
        policy("p", &["l"], "  minTlsVersion: \"1.3\"\n  onFailure: Defer"),
        unlisted("Dane")
    );
    let c = render_yaml(&yaml);
    assert_eq!(
        main_cf(&c, "smtp_tls_policy_maps"),
        Some(format!(
            "socketmap:unix:{SOCKET}:mailtls, lmdb:/etc/postfix/mailtls/tls_policy"
        ))
    );
    // The server is asked anyway, so it tries DANE first for unlisted ones too.
    assert_eq!(
        lookup(&c, "dane", "*").as_deref(),
        Some("protocols=>=TLSv1.2")
    );
    assert_eq!(
        lookup(&c, "dane", "a.example").as_deref(),
        Some("protocols=>=TLSv1.3")
    );
    assert_eq!(
        lookup(&c, "dane", ".sub.example").as_deref(),
        Some("protocols=>=TLSv1.3")
    );
    assert!(!c.files.contains_key("mta_sts"));
    // The listed row stays what decides where DANE does not apply.
    assert_eq!(
        lookup(&c, "tls_policy", "a.example").as_deref(),
        Some("encrypt protocols=>=TLSv1.3")
    );
    let service = "mailtls-encrypt-tls13-defer-dane";
    assert_eq!(
        lookup(&c, "transport", "x@b.example"),
        Some(format!("{service}:"))
    );
    assert!(service_options(&c, service).contains(&format!(
        "smtp_tls_policy_maps=socketmap:unix:{SOCKET}:{service}"
    )));
    assert_eq!(
        mailtls::render::service_scope(service).map(|(v, m)| (v, m.mta_sts, m.dane)),
        Some((mailtls::api::TlsVersion::V1_3, false, true))
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&c.files["manifest.json"]).expect("manifest");
    assert_eq!(manifest["options"]["mtaStsSocket"], SOCKET);
    assert_eq!(manifest["entries"]["dane"], 3);
}

#[test]
fn both_mechanisms_name_services_with_both() {
    let yaml = format!(
        "{}{}",
        list("l", &["x@b.example", "c.example"]),
        policy("p", &["l"], "  mechanisms: [Dane, MtaSts]"),
    );
    let c = render_yaml(&yaml);
    let service = "mailtls-encrypt-tls12-bounce-dane-sts";
    assert_eq!(
        lookup(&c, "transport", "x@b.example"),
        Some(format!("{service}:"))
    );
    assert_eq!(
        mailtls::render::service_scope(service).map(|(v, m)| (v, m.mta_sts, m.dane)),
        Some((mailtls::api::TlsVersion::V1_2, true, true))
    );
    assert_eq!(
        mailtls::render::service_scope("mailtls-encrypt-tls12-bounce"),
        None
    );
    // Listed only: no unlisted default, so no `*` rows and no `dane` main.cf level.
    assert_eq!(lookup(&c, "dane", "*"), None);
    assert_eq!(
        lookup(&c, "dane", "c.example").as_deref(),
        Some("protocols=>=TLSv1.2")
    );
    assert_eq!(
        lookup(&c, "mta_sts", "c.example").as_deref(),
        Some("protocols=>=TLSv1.2")
    );
    assert_eq!(main_cf(&c, "smtp_tls_security_level"), None);
    assert_eq!(
        main_cf(&c, "smtp_dns_support_level").as_deref(),
        Some("dnssec")
    );
}

/// What the renderer writes, the relay agent accepts (with its own policy server).
#[test]
fn the_agents_validator_accepts_dane_configurations() {
    let yaml = format!(
        "{}{}{}",
        list("l", &["a.example", "x@b.example"]),
        policy("p", &["l"], "  mechanisms: [Dane]"),
        unlisted("Dane, MtaSts")
    );
    let c = render_yaml(&yaml);
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_packed(dir.path(), &c.files);
    let bundle = mailtls::relay::bundle::read(dir.path()).expect("bundle");
    let checked = mailtls::relay::validate::check(&bundle, "/etc/postfix/mailtls", Some(SOCKET))
        .expect("valid");
    for want in [
        "smtp_dns_support_level=dnssec",
        "smtp_tls_security_level=dane",
    ] {
        assert!(
            checked.main_cf.iter().any(|l| l == want),
            "{:?}",
            checked.main_cf
        );
    }
    let err = mailtls::relay::validate::check(&bundle, "/etc/postfix/mailtls", None)
        .expect_err("no policy server");
    assert!(err.contains("runs no policy server"), "{err}");
}
