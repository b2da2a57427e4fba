//! MTA-STS in the engine and the renderer: the namespace's `Unlisted` default, listed
//! policies that ask for it, and strictest-wins between them (pure; the delivery with real
//! Postfix is in tests/mta_sts_delivery.rs).

mod common;

use common::{eval, gateway, list, lookup, main_cf, policy, render_yaml, service_options};
use mailtls::policy::{Kind, ResourceId};

const SOCKET: &str = mailtls::render::DEFAULT_MTA_STS_SOCKET;

fn unlisted(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata:\n  name: {name}\nspec:\n  direction: Outbound\n  scope: Unlisted\n{extra}\n---\n"
    )
}

fn errors(yaml: &str, name: &str) -> Vec<(String, String)> {
    eval(yaml)
        .findings
        .resources
        .get(&ResourceId::new(Kind::TlsCompliance, name))
        .expect("findings")
        .errors
        .iter()
        .map(|p| (p.field.clone(), p.message.clone()))
        .collect()
}

#[test]
fn without_mta_sts_nothing_changes() {
    let c = render_yaml(&format!(
        "{}{}",
        list("l", &["a.example", "x@b.example"]),
        policy("p", &["l"], "")
    ));
    assert_eq!(
        main_cf(&c, "smtp_tls_policy_maps").as_deref(),
        Some("lmdb:/etc/postfix/mailtls/tls_policy")
    );
    assert!(!c.files.contains_key("mta_sts"));
    assert!(!c.files["manifest.json"].contains("mtaSts"));
    assert!(
        service_options(&c, "mailtls-encrypt-tls12-bounce")
            .contains(&"smtp_tls_policy_maps=".into())
    );
}

#[test]
fn unlisted_mta_sts_covers_every_destination_and_the_listed_ones_keep_their_version() {
    let yaml = format!(
        "{}{}{}{}",
        list("l", &["a.example", ".sub.example", "x@b.example"]),
        policy("p", &["l"], "  minTlsVersion: \"1.3\"\n  onFailure: Defer"),
        list("routed", &["r.example"]),
        gateway(
            "gw",
            "  host: gw.example.net\n  appliesTo: Recipients\n  addressLists:\n    - name: routed"
        ),
    ) + &unlisted("published", "  mechanisms: [MtaSts]");
    let e = eval(&yaml);
    assert!(e.policy.unlisted.mta_sts);
    let c = render_yaml(&yaml);
    assert_eq!(
        main_cf(&c, "smtp_tls_policy_maps"),
        Some(format!(
            "socketmap:unix:{SOCKET}:mailtls, lmdb:/etc/postfix/mailtls/tls_policy"
        ))
    );
    // Every destination, and the listed ones with what their policy adds.
    assert_eq!(
        lookup(&c, "mta_sts", "*").as_deref(),
        Some("protocols=>=TLSv1.2")
    );
    assert_eq!(
        lookup(&c, "mta_sts", "a.example").as_deref(),
        Some("protocols=>=TLSv1.3")
    );
    assert_eq!(
        lookup(&c, "mta_sts", ".sub.example").as_deref(),
        Some("protocols=>=TLSv1.3")
    );
    // The listed table is unchanged: it decides where no enforce policy is published.
    assert_eq!(
        lookup(&c, "tls_policy", "a.example").as_deref(),
        Some("encrypt protocols=>=TLSv1.3")
    );
    // An address's own service asks the policy server under its name, nothing else.
    let service = "mailtls-encrypt-tls13-defer-sts";
    assert_eq!(
        lookup(&c, "transport", "x@b.example"),
        Some(format!("{service}:"))
    );
    assert!(service_options(&c, service).contains(&format!(
        "smtp_tls_policy_maps=socketmap:unix:{SOCKET}:{service}"
    )));
    assert_eq!(
        mailtls::render::service_scope(service).map(|(v, m)| (v, m.mta_sts, m.dane)),
        Some((mailtls::api::TlsVersion::V1_3, true, false))
    );
    // Through a gateway MTA-STS does not apply (the gateway is not the domain's MX).
    assert_eq!(lookup(&c, "mta_sts", "r.example"), None);
    let manifest: serde_json::Value =
        serde_json::from_str(&c.files["manifest.json"]).expect("manifest");
    assert_eq!(manifest["options"]["mtaStsSocket"], SOCKET);
    assert_eq!(manifest["entries"]["mta_sts"], 3);
    let findings = &e.findings.resources[&ResourceId::new(Kind::TlsCompliance, "published")];
    assert!(findings.errors.is_empty() && findings.rendered);
}

#[test]
fn a_listed_policy_can_ask_for_mta_sts_for_its_own_entries_only() {
    let yaml = format!(
        "{}{}{}{}",
        list("l", &["a.example", "x@b.example"]),
        policy("p", &["l"], "  mechanisms: [MtaSts]"),
        list("other", &["c.example"]),
        policy("q", &["other"], ""),
    );
    let c = render_yaml(&yaml);
    assert_eq!(lookup(&c, "mta_sts", "*"), None);
    assert_eq!(
        lookup(&c, "mta_sts", "a.example").as_deref(),
        Some("protocols=>=TLSv1.2")
    );
    assert_eq!(lookup(&c, "mta_sts", "c.example"), None);
    assert!(main_cf(&c, "smtp_tls_policy_maps").is_some_and(|m| m.starts_with("socketmap:")));
    assert_eq!(
        lookup(&c, "transport", "x@b.example").as_deref(),
        Some("mailtls-encrypt-tls12-bounce-sts:")
    );
}

#[test]
fn a_monitor_default_renders_nothing_and_custom_sockets_are_named() {
    let yaml = format!("{}{}", list("l", &["a.example"]), policy("p", &["l"], ""))
        + &unlisted(
            "published",
            "  mechanisms: [MtaSts]\n  enforcement: Monitor",
        );
    let c = render_yaml(&yaml);
    assert!(!c.files.contains_key("mta_sts"));
    let on = unlisted("published", "  mechanisms: [MtaSts]");
    let opts = mailtls::render::RenderOptions {
        mta_sts_socket: "/srv/sts.sock".into(),
        ..common::options_37()
    };
    let c = mailtls::render::render(&eval(&on).policy, &opts);
    assert!(
        main_cf(&c, "smtp_tls_policy_maps")
            .is_some_and(|m| m.starts_with("socketmap:unix:/srv/sts.sock:mailtls, "))
    );
    let bad = mailtls::render::RenderOptions {
        mta_sts_socket: "/srv/a:b.sock".into(),
        ..Default::default()
    };
    assert!(bad.validate().is_err());
}

/// The engine refuses what the API server's CEL rules refuse (files reach it without one).
#[test]
fn unlisted_and_inbound_misuse_is_refused_with_the_field() {
    let with_lists = format!(
        "{}{}",
        list("l", &["a.example"]),
        policy("p", &["l"], "  scope: Unlisted")
    );
    let e = errors(&with_lists, "p");
    assert_eq!(e[0].0, "spec.addressLists", "{e:?}");
    let strict = unlisted("u", "  requireCASigned: true");
    assert_eq!(errors(&strict, "u")[0].0, "spec.scope");
    let both = unlisted("u", "").replace("direction: Outbound", "direction: Both");
    assert_eq!(errors(&both, "u")[0].0, "spec.scope");
    let inbound = format!(
        "{}{}",
        list("l", &["a.example"]),
        policy("i", &["l"], "  mechanisms: [MtaSts]")
            .replace("direction: Outbound", "direction: Inbound")
    );
    let e = errors(&inbound, "i");
    assert_eq!(e[0].0, "spec.mechanisms", "{e:?}");
    // A Listed policy without lists is refused as before.
    let empty = unlisted("e", "").replace("  scope: Unlisted\n", "");
    assert_eq!(errors(&empty, "e")[0].0, "spec.addressLists");
    // A refused default honours nothing.
    assert!(!eval(&(strict + "")).policy.unlisted.mta_sts);
}
