//! Bounded input: the entries of a namespace are counted before any is normalised, and a
//! YAML/JSON file is checked for size and nesting depth before it is parsed.

mod common;
use common::*;
use mailtls::cli::load::load_str;
use mailtls::policy::{Kind, MAX_NAMESPACE_ENTRIES, ResourceId};

/// An AddressList whose bulk text holds `count` items (all the same entry: cheap to parse).
fn bulk_list(name: &str, count: usize) -> String {
    format!(
        "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: {name}\nspec:\n  bulk: \"{}\"\n---\n",
        "x.example ".repeat(count)
    )
}

fn render_cli(files: &[(&str, String)]) -> (Option<i32>, String, bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir(&input).expect("input dir");
    for (name, text) in files {
        std::fs::write(input.join(name), text).expect("write");
    }
    let out = dir.path().join("out");
    let result = std::process::Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .arg("render")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    (result.status.code(), stderr, out.exists())
}

#[test]
fn a_namespace_over_the_entry_cap_refuses_the_lists_that_do_not_fit() {
    assert_eq!(MAX_NAMESPACE_ENTRIES, 100_000);
    let yaml = bulk_list("a", 60_000)
        + &bulk_list("b", 50_000)
        + &list("c", &["c@partner.example"])
        + &policy("p", &["a", "b", "c"], "");
    let e = eval(&yaml);
    let errors = |name: &str| {
        e.findings
            .get(&ResourceId::new(Kind::AddressList, name))
            .map(|f| f.errors.clone())
            .unwrap_or_default()
    };
    assert!(errors("a").is_empty(), "{:?}", errors("a"));
    let b = errors("b");
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0].field, "spec");
    assert_eq!(
        b[0].message,
        "the AddressLists of one namespace may hold at most 100000 entries together; older \
         lists hold 60000 and this one 50000, so this list is not used"
    );
    // Lists are taken oldest first (files: by name): `c` still fits after `b` was refused.
    assert!(errors("c").is_empty(), "{:?}", errors("c"));
    assert!(
        e.policy
            .outbound
            .contains_key(&mailtls::policy::parse_entry("c@partner.example").expect("entry"))
    );

    let (code, stderr, written) = render_cli(&[("lists.yaml", yaml)]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!written, "nothing may be written");
    assert!(
        stderr.contains("lists.yaml:") && stderr.contains("AddressList/b: spec: the AddressLists of one namespace may hold at most 100000 entries together"),
        "{stderr}"
    );
}

/// An AddressList with `entries` items and `bulk` items, all the same entry.
fn mixed_list(entries: usize, bulk: usize) -> String {
    format!(
        "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: l\nspec:\n  entries: [{}]\n  bulk: \"{}\"\n",
        vec!["x.example"; entries].join(", "),
        "x.example ".repeat(bulk)
    )
}

#[test]
fn a_list_counts_its_entries_and_bulk_items_as_written_duplicates_included() {
    let e = eval(&mixed_list(50_001, 50_000));
    let problems: Vec<String> = e
        .findings
        .problems()
        .map(|(id, p)| format!("{id}: {}: {}", p.field, p.message))
        .collect();
    assert_eq!(
        problems,
        [
            "AddressList/l: spec.entries: at most 100000 entries per AddressList (entries and \
             bulk items together); this one has 100001"
        ]
    );
    assert!(
        eval(&mixed_list(50_000, 50_000))
            .findings
            .problems()
            .next()
            .is_none()
    );
}

/// Each limit admits exactly its size: a bulk text of 1,000,000 characters holding 100,000
/// items, and a namespace of exactly 100,000 entries; one character more is refused.
#[test]
fn limits_admit_exactly_their_size() {
    let problems = |yaml: &str| -> Vec<String> {
        eval(yaml)
            .findings
            .problems()
            .map(|(id, p)| format!("{id}: {}", p.field))
            .collect()
    };
    let full = bulk_list("a", 100_000);
    assert!(full.contains(&"x.example ".repeat(100_000)));
    assert_eq!(problems(&full), Vec::<String>::new());
    assert_eq!(
        problems(&(bulk_list("a", 60_000) + &bulk_list("b", 40_000))),
        Vec::<String>::new()
    );
    let one_more = full.replacen("bulk: \"", "bulk: \"y", 1);
    assert_eq!(problems(&one_more), ["AddressList/a: spec.bulk"]);
}

#[test]
fn deeply_nested_yaml_is_refused_before_parsing_with_file_and_line() {
    let text = format!(
        "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: l\nspec:\n  entries: {}\n",
        "[".repeat(100_000)
    );
    let (loaded, errors) = load_str("deep.yaml", &text, "default");
    assert!(loaded.namespaces.is_empty());
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "deep.yaml:6: nested deeper than 64 levels; mailtls resources need far less (refused before parsing)"
        ]
    );

    let json = format!("{{\"kind\": {}", "[".repeat(200_000));
    let (code, stderr, written) = render_cli(&[
        ("deep.json", json),
        ("ok.yaml", list("l", &["a@x.example"])),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!written);
    assert!(
        stderr.contains("deep.json:1: nested deeper than 64 levels"),
        "{stderr}"
    );
}

#[test]
/// The line is the field's own (the document starts at line 9).
fn ordinary_errors_keep_their_file_line_and_field() {
    let text = list("ok", &["a@x.example"]) + &policy("p", &["ok"], "  minTlsVersion: \"2.0\"");
    let (_, errors) = load_str("mixed.yaml", &text, "default");
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(
        shown[0].starts_with(
            "mixed.yaml:17: TlsCompliance/p: spec.minTlsVersion: unknown variant `2.0`"
        ),
        "{shown:?}"
    );
}
