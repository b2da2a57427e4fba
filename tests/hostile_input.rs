//! Hostile values in every string field: each is rejected with a clear error or safely
//! normalised, and none ever appears raw in a rendered file.

mod common;
use common::*;
use mailtls::cli::load::load_str;
use mailtls::policy::evaluate;
use mailtls::render::render;

fn hostile_values() -> Vec<String> {
    let mut v: Vec<String> = [
        "a\nb@x.example",
        "evil.example\nrelayhost = [attacker.example]",
        "a\r@x.example",
        "nul\0@x.example",
        "mail.example\0",
        "a,b@x.example",
        "a=b@x.example",
        "{a}@x.example",
        "x.example}",
        "a b@x.example",
        "\tx.example",
        "-o@x.example",
        "-x.example",
        "a@@x.example",
        "@x.example",
        "a@",
        "",
        ".",
        "...",
        "..",
        "pаypal.example",
        "ｅｘａｍｐｌｅ.com",
        "exa\u{200b}mple.com",
        "\u{202e}moc.example",
        "x.example;rm -rf /",
        "#comment@x.example",
        "$relayhost@x.example",
        "a..b@x.example",
        "1.2.3.4",
        "[192.0.2.1]",
        "a@x.example:25",
        "\"quoted\"@x.example",
        "x.example\u{85}",
        "\u{2028}x.example",
        "ＡＢＣ@x.example",
        "smtp:[evil.example]",
        "x.example encrypt",
        "-o smtp_tls_security_level=none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("{}.example", "a".repeat(300)));
    v.push(format!("{}@x.example", "l".repeat(65)));
    v.push(format!("{}.com", "b.".repeat(130)));
    v
}

/// Render-safe: no control characters, every table row exactly `key value`, nothing that
/// Postfix reads as syntax in a key.
fn assert_files_safe(files: &std::collections::BTreeMap<String, String>, raw: &str, context: &str) {
    for (name, text) in files {
        for line in text.lines() {
            assert!(
                !line.chars().any(|c| c.is_control()),
                "{context}: control character in {name}: {line:?}"
            );
            if ["tls_policy", "transport", "sender_access"].contains(&name.as_str())
                && !line.starts_with('#')
            {
                let (key, value) = line
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("{context}: bad row in {name}: {line:?}"));
                assert!(
                    !key.is_empty()
                        && !key.starts_with('-')
                        && !key.contains(['{', '}', '=', ',', '#', '$']),
                    "{context}: bad key {key:?}"
                );
                assert!(
                    !value.starts_with('-') && !value.contains(['{', '}']),
                    "{context}: bad value {value:?}"
                );
            }
        }
        // Plain spaces separate bulk entries by design; everything else here is never data.
        let dangerous =
            raw.chars().any(|c| c.is_control() || "=,{}#$;".contains(c)) || raw.starts_with('-');
        if dangerous && raw.len() > 2 && name != "manifest.json" {
            assert!(
                !text.contains(raw),
                "{context}: raw value appears in {name}"
            );
        }
    }
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("json string")
}

/// Each document template with `VALUE` where the hostile value goes.
fn templates() -> Vec<(&'static str, String)> {
    let base_list = list("l", &["partner.example"]);
    vec![
        ("AddressList spec.entries[]", "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: l\nspec:\n  entries:\n    - partner.example\n    - VALUE\n---\n".to_string() + &policy("p", &["l"], "")),
        ("AddressList spec.bulk", "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: l\nspec:\n  bulk: VALUE\n---\n".to_string() + &policy("p", &["l"], "").replace("direction: Outbound", "direction: Both")),
        ("AddressList metadata.name", "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: VALUE\nspec:\n  entries: [partner.example]\n".to_string()),
        ("TlsCompliance metadata.name", base_list.clone() + &policy("VALUE", &["l"], "")),
        ("TlsCompliance spec.addressLists[].name", base_list.clone() + &policy("p", &["VALUE"], "")),
        ("TlsCompliance spec.test.interval", base_list.clone() + &policy("p", &["l"], "  test:\n    interval: VALUE")),
        ("TlsCompliance metadata.namespace", base_list.clone() + &policy("p", &["l"], "").replace("  name: p\n", "  name: p\n  namespace: VALUE\n")),
        ("OutboundGateway spec.host", base_list.clone() + &policy("p", &["l"], "") + &gateway("g", "  host: VALUE")),
        ("OutboundGateway spec.host (route)", base_list.clone() + &gateway("g", "  host: VALUE\n  appliesTo: Recipients\n  addressLists:\n    - name: l")),
        ("OutboundGateway spec.addressLists[].name", base_list.clone() + &gateway("g", "  host: gw.example.net\n  appliesTo: Recipients\n  addressLists:\n    - name: VALUE")),
        ("OutboundGateway metadata.name", base_list + &gateway("VALUE", "  host: gw.example.net")),
    ]
}

#[test]
fn every_hostile_value_in_every_string_field_is_rejected_or_normalised() {
    let values = hostile_values();
    assert!(values.len() >= 30);
    let mut rejected = 0;
    let mut normalised = 0;
    for (field, template) in templates() {
        for raw in &values {
            let yaml = template.replace("VALUE", &yaml_str(raw));
            let context = format!("{field} = {raw:?}");
            let (loaded, load_errors) = load_str("hostile.yaml", &yaml, "default");
            let mut problems: Vec<String> = load_errors.iter().map(ToString::to_string).collect();
            for inputs in loaded.namespaces.values() {
                let e = evaluate(inputs);
                problems.extend(
                    e.findings
                        .problems()
                        .map(|(id, p)| format!("{id}: {}: {}", p.field, p.message)),
                );
                let config = render(&e.policy, &options_37());
                assert_files_safe(&config.files, raw, &context);
            }
            if problems.is_empty() {
                normalised += 1;
            } else {
                rejected += 1;
                for p in &problems {
                    assert!(
                        p.len() < 2000,
                        "{context}: error message is not bounded: {} chars",
                        p.len()
                    );
                    assert!(
                        !p.contains('\0') && !p.contains('\r'),
                        "{context}: error message carries raw control characters: {p:?}"
                    );
                }
            }
        }
    }
    assert!(
        rejected > 300 && normalised > 10,
        "rejected {rejected}, normalised {normalised}"
    );
}

#[test]
fn specific_hostile_entries_get_clear_reasons() {
    let cases = [
        ("a\nb@x.example", "control character"),
        ("a b@x.example", "white space"),
        ("a,b@x.example", "','"),
        ("a=b@x.example", "'='"),
        ("{a}@x.example", "'{'"),
        ("-x.example", "starts with '-'"),
        ("a@@x.example", "more than one '@'"),
        ("@x.example", "missing the part before '@'"),
        ("a@", "missing domain"),
        ("", "empty"),
        ("...", "subdomain entry needs a domain"),
        ("1.2.3.4", "IP address"),
        ("#c@x.example", "'#'"),
        ("a..b@x.example", "dots"),
        ("ＡＢＣ@x.example", "non-ASCII"),
        ("\u{202e}moc.example", "internationalised"),
    ];
    for (raw, reason) in cases {
        let err = mailtls::policy::parse_entry(raw).expect_err(raw);
        assert!(err.contains(reason), "{raw:?}: {err}");
    }
    let long_label = format!("{}.example", "a".repeat(64));
    assert!(
        mailtls::policy::parse_entry(&long_label)
            .expect_err("long")
            .contains("63")
    );
    let long_domain = format!("{}com", "b.".repeat(130));
    assert!(
        mailtls::policy::parse_entry(&long_domain)
            .expect_err("long")
            .contains("253")
    );
}

#[test]
fn lookalikes_and_case_are_normalised_not_rejected() {
    use mailtls::policy::{Entry, parse_entry};
    assert_eq!(
        parse_entry("PARTNER.Example.").unwrap(),
        Entry::from_canonical("partner.example")
    );
    assert_eq!(
        parse_entry("pаypal.example").unwrap(),
        Entry::from_canonical("xn--pypal-4ve.example"),
        "Cyrillic а is a different domain"
    );
    assert_eq!(
        parse_entry("ｅｘａｍｐｌｅ.com").unwrap(),
        Entry::from_canonical("example.com"),
        "full-width folds (UTS 46)"
    );
    assert_eq!(
        parse_entry("Ceo@Bücher.example").unwrap(),
        Entry::from_canonical("ceo@xn--bcher-kva.example")
    );
    assert_eq!(
        parse_entry(".Sub.Example.COM").unwrap(),
        Entry::from_canonical(".sub.example.com")
    );
}

#[test]
fn a_megabyte_of_bulk_text_is_refused_with_a_clear_error() {
    let bulk = "a@x.example ".repeat(90_000);
    assert!(bulk.len() > 1_000_000);
    let yaml = format!(
        "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: l\nspec:\n  bulk: {}\n",
        yaml_str(&bulk)
    );
    let e = eval(&yaml);
    let problems: Vec<String> = e
        .findings
        .problems()
        .map(|(_, p)| format!("{}: {}", p.field, p.message))
        .collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("spec.bulk: is longer than 1000000 characters"),
        "{}",
        problems[0]
    );
}

#[test]
fn duplicates_are_dropped_and_counted_and_invalid_entries_listed() {
    let yaml = "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: l\nspec:\n  entries: [a@x.example, A@X.EXAMPLE, x.example, 'bad entry']\n  bulk: \"x.example, x.example.;a@x.example\\n .x.example\"\n";
    let e = eval(yaml);
    let f = e
        .findings
        .get(&mailtls::policy::ResourceId::new(
            mailtls::policy::Kind::AddressList,
            "l",
        ))
        .expect("findings");
    let stats = f.list.as_ref().expect("stats");
    assert_eq!(
        (
            stats.addresses,
            stats.domains,
            stats.duplicates,
            stats.invalid_total
        ),
        (1, 2, 4, 1)
    );
    assert_eq!(stats.invalid[0].1.field, "spec.entries[3]");
}

#[test]
fn render_cli_refuses_hostile_input_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("bad.yaml");
    std::fs::write(
        &input,
        list(
            "l",
            &[
                "good.example",
                "evil.example\\nrelayhost = [attacker.example]",
                "a=b@x.example",
            ],
        ) + &policy("p", &["l", "missing"], "").replace("Outbound", "Sideways"),
    )
    .expect("write");
    let out = dir.path().join("out");
    let result = std::process::Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .arg("render")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .output()
        .expect("run");
    assert_eq!(result.status.code(), Some(1));
    assert!(!out.exists(), "nothing may be written on invalid input");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("bad.yaml:8: AddressList/l: spec.entries[1]"),
        "{stderr}"
    );
    assert!(stderr.contains("spec.entries[2]"), "{stderr}");
    assert!(
        !stderr.contains("\nrelayhost"),
        "the newline is shown escaped: {stderr}"
    );
    assert!(
        stderr.contains("TlsCompliance/p: spec.direction: unknown variant `Sideways`"),
        "{stderr}"
    );
}
