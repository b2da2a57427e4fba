//! Semantics of merge, routing, conflicts and rendering, asserted on values.

mod common;
use common::*;
use mailtls::policy::{Kind, ResourceId};

const CA_HOST_BOUNCE: &str =
    "  requireCASigned: true\n  validateHostname: true\n  onFailure: Bounce";

#[test]
fn bounce_ca_signed_hostname_recipient_gets_verify_tls12_and_the_5xx_filter() {
    let c = render_yaml(
        &(list("l", &["alice@partner.example"]) + &policy("p", &["l"], CA_HOST_BOUNCE)),
    );
    let transport = lookup(&c, "transport", "alice@partner.example").expect("transport entry");
    assert_eq!(transport, "mailtls-verify-tls12-bounce:");
    let opts = service_options(&c, "mailtls-verify-tls12-bounce");
    assert!(
        opts.contains(&"smtp_tls_security_level=verify".to_string()),
        "{opts:?}"
    );
    assert!(opts.contains(&"smtp_tls_verify_cert_match=hostname".to_string()));
    assert!(opts.contains(&"smtp_tls_mandatory_protocols=>=TLSv1.2".to_string()));
    assert!(
        opts.contains(&"smtp_tls_policy_maps=".to_string()),
        "domain table must not override"
    );
    assert!(opts.contains(
        &"smtp_delivery_status_filter=pcre:/etc/postfix/mailtls/tls_bounce.pcre".to_string()
    ));
    let filter = &c.files["tls_bounce.pcre"];
    assert!(filter.contains("TLS is required, but") && filter.contains("5$1"));
    assert!(
        !filter.contains("said"),
        "the filter must not match remote replies"
    );
}

#[test]
fn domain_policy_goes_in_tls_policy_and_defer_keeps_the_default_transport() {
    let c = render_yaml(
        &(list("l", &["partner.example", ".partner.example"])
            + &policy(
                "p",
                &["l"],
                "  requireCASigned: true\n  validateHostname: true\n  minTlsVersion: \"1.3\"\n  onFailure: Defer",
            )),
    );
    assert_eq!(
        lookup(&c, "tls_policy", "partner.example").as_deref(),
        Some("verify match=hostname protocols=>=TLSv1.3")
    );
    assert_eq!(
        lookup(&c, "tls_policy", ".partner.example").as_deref(),
        Some("verify match=hostname protocols=>=TLSv1.3")
    );
    assert_eq!(
        lookup(&c, "transport", "partner.example"),
        None,
        "Defer needs no dedicated transport"
    );
    assert!(
        !c.files["master.cf"].contains(" unix "),
        "no services:\n{}",
        c.files["master.cf"]
    );
}

#[test]
fn bounce_domain_uses_the_bounce_service_and_keeps_its_table_level() {
    let c = render_yaml(&(list("l", &["partner.example"]) + &policy("p", &["l"], "")));
    assert_eq!(
        lookup(&c, "tls_policy", "partner.example").as_deref(),
        Some("encrypt protocols=>=TLSv1.2")
    );
    assert_eq!(
        lookup(&c, "transport", "partner.example").as_deref(),
        Some("mailtls-bounce:")
    );
    let opts = service_options(&c, "mailtls-bounce");
    assert_eq!(
        opts,
        vec!["smtp_delivery_status_filter=pcre:/etc/postfix/mailtls/tls_bounce.pcre".to_string()]
    );
}

#[test]
fn ca_signed_without_hostname_accepts_the_names_of_the_destination() {
    let c = render_yaml(
        &(list("l", &["partner.example"])
            + &policy("p", &["l"], "  requireCASigned: true\n  onFailure: Defer")),
    );
    assert_eq!(
        lookup(&c, "tls_policy", "partner.example").as_deref(),
        Some("verify match=hostname:nexthop:dot-nexthop protocols=>=TLSv1.2")
    );
}

#[test]
fn monitor_renders_nothing_mandatory_but_is_kept_for_tests() {
    let yaml = list("l", &["partner.example", "a@b.example"])
        + &policy(
            "p",
            &["l"],
            "  enforcement: Monitor\n  requireCASigned: true",
        );
    let e = eval(&yaml);
    let c = mailtls::render::render(&e.policy, &options_37());
    assert_eq!(lookup(&c, "tls_policy", "partner.example"), None);
    assert_eq!(lookup(&c, "transport", "a@b.example"), None);
    let rule = e
        .policy
        .outbound
        .values()
        .next()
        .expect("rule kept for tests");
    assert!(rule.enforced.is_none() && rule.monitored.is_some());
}

#[test]
fn monitor_never_weakens_enforce() {
    let yaml = list("l", &["partner.example"])
        + &policy("enforce", &["l"], "  onFailure: Defer")
        + &policy(
            "monitor",
            &["l"],
            "  enforcement: Monitor\n  requireCASigned: true\n  validateHostname: true",
        );
    let c = render_yaml(&yaml);
    assert_eq!(
        lookup(&c, "tls_policy", "partner.example").as_deref(),
        Some("encrypt protocols=>=TLSv1.2")
    );
}

#[test]
fn overlapping_policies_merge_strictest_per_field() {
    let yaml = list("a", &["partner.example"])
        + &list("b", &["partner.example"])
        + &policy("p1", &["a"], "  minTlsVersion: \"1.3\"\n  onFailure: Defer")
        + &policy(
            "p2",
            &["b"],
            "  requireCASigned: true\n  minTlsVersion: \"1.2\"\n  onFailure: Bounce",
        );
    let c = render_yaml(&yaml);
    assert_eq!(
        lookup(&c, "tls_policy", "partner.example").as_deref(),
        Some("verify match=hostname:nexthop:dot-nexthop protocols=>=TLSv1.3")
    );
    assert_eq!(
        lookup(&c, "transport", "partner.example").as_deref(),
        Some("mailtls-bounce:"),
        "Bounce is stricter than Defer"
    );
}

#[test]
fn an_address_inherits_its_domain_and_parent_policies() {
    let yaml = list("dom", &[".example.com"])
        + &list("addr", &["alice@sales.example.com"])
        + &policy(
            "parent",
            &["dom"],
            "  requireCASigned: true\n  validateHostname: true\n  onFailure: Defer",
        )
        + &policy(
            "address",
            &["addr"],
            "  minTlsVersion: \"1.3\"\n  onFailure: Defer",
        );
    let c = render_yaml(&yaml);
    assert_eq!(
        lookup(&c, "transport", "alice@sales.example.com").as_deref(),
        Some("mailtls-verify-tls13-defer:")
    );
    assert_eq!(
        lookup(&c, "tls_policy", ".example.com").as_deref(),
        Some("verify match=hostname protocols=>=TLSv1.2")
    );
    // `.example.com` is every subdomain, not example.com itself.
    assert_eq!(lookup(&c, "tls_policy", "example.com"), None);
}

#[test]
fn allmail_gateway_becomes_relayhost_with_and_without_mx_brackets() {
    let without = render_yaml(&gateway(
        "gw",
        "  host: smarthost.example.net\n  appliesTo: AllMail",
    ));
    assert_eq!(
        main_cf(&without, "relayhost").as_deref(),
        Some("[smarthost.example.net]")
    );
    assert_eq!(
        lookup(&without, "tls_policy", "[smarthost.example.net]").as_deref(),
        Some("may")
    );
    let with = render_yaml(&gateway(
        "gw",
        "  host: smarthost.example.net\n  port: 587\n  mxLookup: true\n  tls:\n    require: true",
    ));
    assert_eq!(
        main_cf(&with, "relayhost").as_deref(),
        Some("smarthost.example.net:587")
    );
    assert_eq!(
        lookup(&with, "tls_policy", "smarthost.example.net:587").as_deref(),
        Some("encrypt protocols=>=TLSv1.2")
    );
    let ip = render_yaml(&gateway("gw", "  host: \"2001:db8::25\"\n  mxLookup: true"));
    assert_eq!(
        main_cf(&ip, "relayhost").as_deref(),
        Some("[ipv6:2001:db8::25]"),
        "an IP is never MX-looked-up"
    );
    let none = render_yaml("");
    assert_eq!(
        main_cf(&none, "relayhost").as_deref(),
        Some(""),
        "mailtls owns relayhost: cleared when no gateway"
    );
}

#[test]
fn tls_required_mail_through_the_relayhost_gets_a_mandatory_hop() {
    let yaml = list("l", &["partner.example"])
        + &policy("p", &["l"], "  onFailure: Defer")
        + &gateway("gw", "  host: smarthost.example.net");
    let c = render_yaml(&yaml);
    // Without this entry the relayhost's opportunistic policy would carry the mail: a leak.
    assert_eq!(
        lookup(&c, "transport", "partner.example").as_deref(),
        Some("mailtls-encrypt-tls12-defer:[smarthost.example.net]")
    );
    assert_eq!(lookup(&c, "tls_policy", "partner.example"), None);
    let opts = service_options(&c, "mailtls-encrypt-tls12-defer");
    assert!(
        opts.contains(&"smtp_tls_security_level=encrypt".to_string())
            && opts.contains(&"smtp_tls_policy_maps=".to_string())
    );
}

#[test]
fn secure_route_takes_only_tls_required_mail_over_a_mandatory_hop() {
    let yaml = list("l", &["partner.example"])
        + &policy("p", &["l"], CA_HOST_BOUNCE)
        + &gateway("all", "  host: smarthost.example.net")
        + &gateway(
            "secure",
            "  host: tls-relay.example.net\n  port: 465\n  appliesTo: SecureTransportRequired",
        );
    let c = render_yaml(&yaml);
    assert_eq!(
        main_cf(&c, "relayhost").as_deref(),
        Some("[smarthost.example.net]"),
        "other mail keeps the AllMail gateway"
    );
    assert_eq!(
        lookup(&c, "transport", "partner.example").as_deref(),
        Some("mailtls-verify-tls12-bounce:[tls-relay.example.net]:465")
    );
    assert_eq!(
        lookup(&c, "tls_policy", "[tls-relay.example.net]:465").as_deref(),
        Some("encrypt protocols=>=TLSv1.2"),
        "its own mandatory entry"
    );
    assert!(
        !c.files["main.cf"].contains("smtp_fallback_relay"),
        "never a fallback relay"
    );
}

#[test]
fn change_of_route_most_specific_wins_and_carries_tls() {
    let yaml = list("dom", &["example.com"])
        + &list("vip", &["boss@example.com"])
        + &policy("p", &["dom"], "  onFailure: Defer")
        + &gateway(
            "domain-route",
            "  host: gw1.example.net\n  appliesTo: Recipients\n  addressLists:\n    - name: dom",
        )
        + &gateway(
            "vip-route",
            "  host: gw2.example.net\n  port: 2525\n  appliesTo: Recipients\n  addressLists:\n    - name: vip\n  tls:\n    require: true\n    requireCASigned: true",
        );
    let c = render_yaml(&yaml);
    assert_eq!(
        lookup(&c, "transport", "example.com").as_deref(),
        Some("mailtls-encrypt-tls12-defer:[gw1.example.net]")
    );
    // The address has its own route; the domain's TLS requirement and the gateway's own
    // (CA-signed) both apply to that hop.
    assert_eq!(
        lookup(&c, "transport", "boss@example.com").as_deref(),
        Some("mailtls-ca-tls12-defer:[gw2.example.net]:2525")
    );
}

#[test]
fn plain_change_of_route_without_tls() {
    let yaml = list("vip", &["boss@example.com", ".example.org"])
        + &gateway(
            "vip-route",
            "  host: 192.0.2.10\n  port: 2525\n  appliesTo: Recipients\n  addressLists:\n    - name: vip",
        );
    let c = render_yaml(&yaml);
    assert_eq!(
        lookup(&c, "transport", "boss@example.com").as_deref(),
        Some("smtp:[192.0.2.10]:2525")
    );
    assert_eq!(
        lookup(&c, "transport", ".example.org").as_deref(),
        Some("smtp:[192.0.2.10]:2525")
    );
    assert_eq!(
        lookup(&c, "tls_policy", "[192.0.2.10]:2525").as_deref(),
        Some("may")
    );
}

#[test]
fn two_allmail_gateways_conflict_and_the_oldest_wins() {
    let yaml = "apiVersion: mailtls.io/v1alpha1\nkind: OutboundGateway\nmetadata:\n  name: newer\n  creationTimestamp: \"2026-02-01T00:00:00Z\"\nspec:\n  host: new.example.net\n---\n\
                apiVersion: mailtls.io/v1alpha1\nkind: OutboundGateway\nmetadata:\n  name: older\n  creationTimestamp: \"2026-01-01T00:00:00Z\"\nspec:\n  host: old.example.net\n";
    let e = eval(yaml);
    assert_eq!(e.policy.relayhost.as_deref(), Some("older"));
    for name in ["newer", "older"] {
        let f = e
            .findings
            .get(&ResourceId::new(Kind::OutboundGateway, name))
            .expect("findings");
        assert_eq!(f.conflicts.len(), 1, "{name}");
        assert_eq!(f.conflicts[0].winner.name, "older");
        assert_eq!(f.conflicts[0].involved.len(), 2);
    }
    let c = mailtls::render::render(&e.policy, &options_37());
    assert_eq!(
        main_cf(&c, "relayhost").as_deref(),
        Some("[old.example.net]")
    );
}

#[test]
fn recipient_route_conflict_names_both_and_does_not_stop_rendering() {
    let yaml = list("l", &["a@example.com", "b@example.com"])
        + &list("ok", &["partner.example"])
        + &policy("p", &["ok"], "")
        + &gateway(
            "aaa",
            "  host: gw1.example.net\n  appliesTo: Recipients\n  addressLists:\n    - name: l",
        )
        + &gateway(
            "bbb",
            "  host: gw2.example.net\n  appliesTo: Recipients\n  addressLists:\n    - name: l",
        );
    let e = eval(&yaml);
    let f = e
        .findings
        .get(&ResourceId::new(Kind::OutboundGateway, "bbb"))
        .expect("findings");
    assert_eq!(f.conflicts.len(), 1);
    assert!(
        f.conflicts[0].subject.contains("2 entries"),
        "{}",
        f.conflicts[0].subject
    );
    let c = mailtls::render::render(&e.policy, &options_37());
    assert_eq!(
        lookup(&c, "transport", "a@example.com").as_deref(),
        Some("smtp:[gw1.example.net]"),
        "name order decides without creation times"
    );
    assert_eq!(
        lookup(&c, "tls_policy", "partner.example").as_deref(),
        Some("encrypt protocols=>=TLSv1.2"),
        "the rest still renders"
    );
}

#[test]
fn missing_reference_is_reported_and_the_rest_renders() {
    let yaml = list("l", &["partner.example"]) + &policy("p", &["l", "nope"], "");
    let e = eval(&yaml);
    let f = e
        .findings
        .get(&ResourceId::new(Kind::TlsCompliance, "p"))
        .expect("findings");
    assert_eq!(f.errors.len(), 1);
    assert_eq!(f.errors[0].field, "spec.addressLists[1].name");
    assert!(f.errors[0].message.contains("'nope' does not exist"));
    assert!(f.rendered);
    let c = mailtls::render::render(&e.policy, &options_37());
    assert!(lookup(&c, "tls_policy", "partner.example").is_some());
}

#[test]
fn inbound_senders_are_rejected_in_plaintext_with_550() {
    let yaml = list("l", &["ceo@bank.example", "bank.example", ".corp.example"])
        + &policy("p", &["l"], "").replace("direction: Outbound", "direction: Inbound");
    let c = render_yaml(&yaml);
    for key in ["ceo@bank.example", "bank.example", "corp.example"] {
        assert_eq!(
            lookup(&c, "sender_access", key).as_deref(),
            Some("mailtls_require_tls"),
            "{key}"
        );
    }
    assert_eq!(
        main_cf(&c, "mailtls_require_tls").as_deref(),
        Some("reject_plaintext_session")
    );
    assert_eq!(main_cf(&c, "plaintext_reject_code").as_deref(), Some("550"));
    assert_eq!(
        lookup(&c, "tls_policy", "bank.example"),
        None,
        "inbound only"
    );
}

#[test]
fn tls_required_enable_only_for_postfix_that_has_it() {
    let e = eval("");
    let old = mailtls::render::render(&e.policy, &options_37());
    assert_eq!(main_cf(&old, "tls_required_enable"), None);
    let new = mailtls::render::render(&e.policy, &mailtls::render::RenderOptions::default());
    assert_eq!(main_cf(&new, "tls_required_enable").as_deref(), Some("no"));
}

#[test]
fn main_cf_sets_each_parameter_once_and_no_infrastructure() {
    let c = render_yaml(&(list("l", &["partner.example"]) + &policy("p", &["l"], "")));
    let names: Vec<&str> = c.files["main.cf"]
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(" = ").next())
        .collect();
    let unique: std::collections::BTreeSet<&&str> = names.iter().collect();
    assert_eq!(names.len(), unique.len(), "{names:?}");
    for infra in [
        "queue_directory",
        "inet_interfaces",
        "myhostname",
        "mydestination",
        "smtp_fallback_relay",
    ] {
        assert!(!names.contains(&infra), "{infra}");
    }
    assert!(names.contains(&"smtp_tls_loglevel"));
}

#[test]
fn master_cf_services_are_unique_and_not_chrooted() {
    let yaml = list("a", &["x@a.example", "y@a.example"])
        + &list("b", &["z@b.example"])
        + &policy("p", &["a"], "")
        + &policy("q", &["b"], "");
    let c = render_yaml(&yaml);
    let names: Vec<&str> = c.files["master.cf"]
        .lines()
        .filter(|l| l.contains(" unix "))
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    let unique: std::collections::BTreeSet<&&str> = names.iter().collect();
    assert_eq!(names.len(), unique.len());
    for l in c.files["master.cf"]
        .lines()
        .filter(|l| l.contains(" unix "))
    {
        let cols: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(cols[4], "n", "chroot must be n: {l}");
        assert_eq!(cols[7], "smtp");
    }
}

#[test]
fn identical_input_renders_identical_bytes_and_hash() {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/address-lists.yaml"
    ))
    .expect("example");
    let a = render_yaml(&yaml);
    let b = render_yaml(&yaml);
    assert_eq!(a, b);
    assert!(a.hash.starts_with("sha256:") && a.hash.len() == 71);
    assert!(a.files["manifest.json"].contains(&a.hash));
}

#[test]
fn config_dir_map_type_and_ca_file_options() {
    let e = eval(&(list("l", &["partner.example"]) + &policy("p", &["l"], "")));
    let opts = mailtls::render::RenderOptions {
        config_dir: "/srv/relay/maps".into(),
        map_type: mailtls::render::MapType::Cdb,
        ca_file: Some("/etc/ssl/private-ca.pem".into()),
        ..options_37()
    };
    let c = mailtls::render::render(&e.policy, &opts);
    assert_eq!(
        main_cf(&c, "smtp_tls_policy_maps").as_deref(),
        Some("cdb:/srv/relay/maps/tls_policy")
    );
    assert_eq!(
        main_cf(&c, "smtp_tls_CAfile").as_deref(),
        Some("/etc/ssl/private-ca.pem")
    );
    assert!(c.files["master.cf"].contains("pcre:/srv/relay/maps/tls_bounce.pcre"));
    for bad in [
        "relative/dir",
        "/with space",
        "/a,b",
        "/x=y",
        "/{x}",
        "/trailing/",
    ] {
        let o = mailtls::render::RenderOptions {
            config_dir: bad.into(),
            ..Default::default()
        };
        assert!(o.validate().is_err(), "{bad}");
    }
}

// ---- behaviours mutation testing found unpinned ------------------------------------------------

fn recipients_gateway(name: &str, host: &str, list: &str) -> String {
    gateway(
        name,
        &format!("  host: {host}\n  appliesTo: Recipients\n  addressLists:\n    - name: {list}"),
    )
}

fn inbound(name: &str, lists: &[&str], extra: &str) -> String {
    policy(name, lists, extra).replace("direction: Outbound", "direction: Inbound")
}

#[test]
fn manifest_counts_every_row_each_resource_contributed() {
    let yaml = list("direct", &["a@partner.example", "bounce.example"])
        + &list("routed", &["r.example"])
        + &list("plain", &["plain.example"])
        + &list("senders", &["ceo@bank.example"])
        + &policy("p", &["direct"], "")
        + &policy("q", &["routed"], "  onFailure: Defer")
        + &inbound("s", &["senders"], "")
        + &recipients_gateway("rgw", "r-relay.example.net", "routed")
        + &recipients_gateway("pgw", "p-relay.example.net", "plain");
    let c = render_yaml(&yaml);
    let manifest: serde_json::Value =
        serde_json::from_str(&c.files["manifest.json"]).expect("manifest JSON");
    assert_eq!(
        manifest["resources"],
        serde_json::json!({
            // The address gets a service row; the Bounce domain a table level and the
            // bounce transport.
            "TlsCompliance/p": {"tls_policy": 1, "transport": 2},
            "TlsCompliance/q": {"transport": 1},
            "TlsCompliance/s": {"sender_access": 1},
            // Each gateway: its hop's TLS row and its route.
            "OutboundGateway/rgw": {"tls_policy": 1, "transport": 1},
            "OutboundGateway/pgw": {"tls_policy": 1, "transport": 1},
        })
    );
}

#[test]
fn rendered_header_names_the_namespace_with_only_name_characters() {
    let header = |namespace: &str| {
        let policy = mailtls::policy::EffectivePolicy {
            namespace: namespace.into(),
            ..Default::default()
        };
        let c = mailtls::render::render(&policy, &options_37());
        c.files["main.cf"]
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let expected = |shown: &str| {
        format!(
            "# Generated by mailtls for namespace \"{shown}\". Do not edit: every change is overwritten."
        )
    };
    assert_eq!(header("Team-1.mail"), expected("Team-1.mail"));
    assert_eq!(header("a\"b\nc_d e/f\u{e9}-.9"), expected("abcdef-.9"));
}

#[test]
fn gateways_record_the_policies_they_carry_and_policies_are_named_once() {
    let yaml = list("l", &["partner.example", "x@partner.example"])
        + &list("again", &["partner.example"])
        + &list("routed", &["r.example"])
        + &list("senders", &["bank.example"])
        + &policy("p", &["l", "again"], "")
        + &policy("p2", &["again"], "")
        + &policy("q", &["routed"], "")
        + &inbound("s", &["senders"], "")
        + &inbound("s2", &["senders"], "")
        + &gateway("gw", "  host: smarthost.example.net")
        + &recipients_gateway("rgw", "r-relay.example.net", "routed");
    let e = eval(&yaml);
    let findings = |kind, name: &str| {
        e.findings
            .get(&ResourceId::new(kind, name))
            .cloned()
            .unwrap_or_default()
    };
    let policies = |names: &[&str]| -> std::collections::BTreeSet<ResourceId> {
        names
            .iter()
            .map(|n| ResourceId::new(Kind::TlsCompliance, *n))
            .collect()
    };
    let gw = findings(Kind::OutboundGateway, "gw");
    assert_eq!(gw.used_by, policies(&["p", "p2"]));
    assert!(gw.rendered);
    let rgw = findings(Kind::OutboundGateway, "rgw");
    assert_eq!(rgw.used_by, policies(&["q"]));
    assert!(rgw.rendered);

    let names = |key: &str| -> Vec<String> {
        let entry = mailtls::policy::parse_entry(key).expect("entry");
        e.policy.outbound[&entry]
            .policies
            .iter()
            .map(|n| n.to_string())
            .collect()
    };
    // p lists partner.example twice (two lists): named once; p2 adds its own name.
    assert_eq!(names("partner.example"), ["p", "p2"]);
    // The address inherits its domain's policies.
    assert_eq!(names("x@partner.example"), ["p", "p2"]);
    let sender = mailtls::policy::parse_entry("bank.example").expect("entry");
    let inbound_names: Vec<String> = e.policy.inbound[&sender]
        .policies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(inbound_names, ["s", "s2"]);
}

#[test]
fn a_single_gateway_of_a_kind_wins_without_a_conflict() {
    let yaml = gateway("gw", "  host: smarthost.example.net")
        + &gateway(
            "secure",
            "  host: secure.example.net\n  appliesTo: SecureTransportRequired",
        );
    let e = eval(&yaml);
    assert_eq!(e.policy.relayhost.as_deref(), Some("gw"));
    assert_eq!(e.policy.secure_route.as_deref(), Some("secure"));
    for name in ["gw", "secure"] {
        let f = e
            .findings
            .get(&ResourceId::new(Kind::OutboundGateway, name))
            .expect("findings");
        assert!(f.conflicts.is_empty(), "{name}: {:?}", f.conflicts);
    }
}

/// `.example.com` is written as `example.com`, so the wildcards' rows move among the
/// others: the table stays sorted, and a domain listed both ways is one row.
#[test]
fn sender_access_rows_are_sorted_and_unique() {
    let entries = [
        ".b.example",
        ".z.example",
        "a.example",
        "b.example",
        "c@b.example",
        "y.example",
    ];
    let yaml = list("l", &entries)
        + &policy("p", &["l"], "").replace("direction: Outbound", "direction: Inbound");
    let c = render_yaml(&yaml);
    let keys: Vec<&str> = c.files["sender_access"]
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert_eq!(
        keys,
        [
            "a.example",
            "b.example",
            "c@b.example",
            "y.example",
            "z.example"
        ]
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&c.files["manifest.json"]).expect("manifest");
    assert_eq!(manifest["entries"]["sender_access"], 5);
}

#[test]
fn inbound_monitor_is_flagged_and_never_rendered() {
    let rule = |yaml: &str| {
        let e = eval(yaml);
        let key = mailtls::policy::parse_entry("bank.example").expect("entry");
        let r = e.policy.inbound.get(&key).cloned().expect("inbound rule");
        let c = mailtls::render::render(&e.policy, &options_37());
        (
            r.enforced,
            r.monitored,
            lookup(&c, "sender_access", "bank.example"),
        )
    };
    let senders = list("senders", &["bank.example"]);
    let monitor = inbound("m", &["senders"], "  enforcement: Monitor");
    let enforce = inbound("e", &["senders"], "");
    assert_eq!(rule(&(senders.clone() + &monitor)), (false, true, None));
    assert_eq!(
        rule(&(senders.clone() + &enforce)),
        (true, false, Some("mailtls_require_tls".into()))
    );
    assert_eq!(
        rule(&(senders + &enforce + &monitor)),
        (true, true, Some("mailtls_require_tls".into()))
    );
}
