//! Validation parity, property-based, against a real API server: resources are derived
//! from the CRDs' own schemas (types, enums, patterns, bounds, plus hostile and near-boundary
//! values), sent as server-side dry-run creates, and whatever the server admits must pass
//! the engine's per-resource checks.
//!
//! Run with `scripts/test-cluster.sh -- cargo test --test crd_parity -- --ignored`.
//!
//! Rules the server cannot check, and the test therefore leaves out (the engine keeps such a
//! resource at its last valid generation instead of dropping it):
//! * references to AddressLists (another resource): every referenced list is supplied;
//! * IDNA validity of a domain with non-ASCII characters (UTS 46 mapping and punycode
//!   lengths have no CEL or pattern form): such entries are left out of the check;
//! * in `spec.bulk`, the top label and the lengths of each item (one pattern over up to 1 MB
//!   checks their syntax; lengths within items of one string need CEL per item, beyond the
//!   cost budget): such items are left out of the check;
//! * the namespace-wide entry cap and conflicts between resources (several resources).

mod common;

use common::cluster::*;
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use mailtls::api::{AddressList, AddressListSpec, OutboundGateway, TlsCompliance};
use mailtls::policy::{Inputs, Kind, ResourceId, entry, evaluate, parse_entry};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

/// Cases per kind: about a minute for the three kinds together.
const CASES: u32 = 2500;

/// Values that have broken parsers before, and values either side of every bound.
const HOSTILE: &[&str] = &[
    "",
    " ",
    "-x",
    "a\nb",
    "x\u{0}y",
    "x\u{85}y.example",
    "\u{a0}",
    "a..b",
    ".",
    "..",
    "30s",
    "59s",
    "60s",
    "1m",
    "0h",
    "1h30m",
    "719h59m60s",
    "720h",
    "720h1s",
    "721h",
    "30d",
    "99999999999999999999h",
    "1.2.3.4",
    "1.2.3",
    "999.1.1.1",
    "01.2.3.4",
    "1.2.3.4.",
    "::1",
    "::ffff:1.2.3.4",
    "fe80::1%eth0",
    "cafe.babe:25",
    "gw.123",
    "gw.example.",
    "abc..",
    "bücher.example",
    "ａ.example",
    "xn--bcher-kva.example",
    "a@b@c.example",
    "a.@b.example",
    "x.123",
    ".123",
    ".com",
    "com",
    "a@x.example,b@y.example",
];

/// [`HOSTILE`] and entries either side of each length limit of the engine.
fn hostile() -> Vec<String> {
    let mut all: Vec<String> = HOSTILE.iter().map(|s| s.to_string()).collect();
    for n in [63, 64] {
        all.push(format!("{}.example", "a".repeat(n)));
    }
    for n in [64, 65] {
        all.push(format!("{}@x.example", "a".repeat(n)));
    }
    for last in [61, 62] {
        let domain = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(last));
        all.push(domain.clone());
        all.push(format!("x@{domain}."));
        all.push(format!(".{domain}"));
    }
    all
}

/// A pattern for proptest's generator: without its `^`/`$` anchors, and `*`/`+` bounded
/// to a few repeats so that generated values mostly fit the length bounds.
fn generator(pattern: &str) -> String {
    let inner = pattern.trim_start_matches('^').trim_end_matches('$');
    let mut out = String::new();
    let (mut escaped, mut class) = (false, false);
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '[' if !class => {
                class = true;
                out.push(c);
                // A `]` first in a class (after an optional `^`) is literal.
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    out.push(']');
                    chars.next();
                }
                continue;
            }
            ']' if class => class = false,
            '*' if !class => {
                out.push_str("{0,3}");
                continue;
            }
            '+' if !class => {
                out.push_str("{1,3}");
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

fn strings(schema: &Value) -> BoxedStrategy<Value> {
    let max = schema["maxLength"].as_u64().map_or(64, |m| m as usize);
    let from_schema = schema["pattern"]
        .as_str()
        .and_then(|p| proptest::string::string_regex(&generator(p)).ok())
        .unwrap_or_else(|| proptest::string::string_regex("[a-z0-9.-]{1,12}").expect("regex"))
        .boxed();
    let hostile = proptest::sample::select(hostile());
    // Exactly at and just over the length bound (a long one where the bound is huge).
    let lengths = proptest::sample::select(vec![max.min(5000), max + 1])
        .prop_map(|n| n.min(5001))
        .prop_map(|n| format!("{}.example", "a".repeat(n.saturating_sub(8))));
    // A valid value with a hostile tail.
    let tails = (
        from_schema.clone(),
        proptest::sample::select(vec![".", "-", "..", "@", ":25", "\u{85}", "s", "0"]),
    )
        .prop_map(|(s, t)| s + t);
    prop_oneof![16 => from_schema, 2 => hostile, 1 => lengths, 1 => tails]
        .prop_map(Value::String)
        .boxed()
}

/// Values for `schema`, an OpenAPI v3 schema from a CRD.
fn values(schema: &Value) -> BoxedStrategy<Value> {
    if let Some(options) = schema["enum"].as_array() {
        let options = options.clone();
        return prop_oneof![
            19 => proptest::sample::select(options),
            1 => Just(json!("bogus")),
        ]
        .boxed();
    }
    match schema["type"].as_str() {
        Some("boolean") => any::<bool>().prop_map(Value::Bool).boxed(),
        Some("integer") => {
            // Bounds come as numbers that may be written as floats (`1.0`).
            let min = schema["minimum"].as_f64().map_or(0, |m| m as i64);
            let max = schema["maximum"].as_f64().map_or(100_000, |m| m as i64);
            prop_oneof![
                1 => Just(min),
                1 => Just(max),
                1 => Just(min - 1),
                1 => Just(max + 1),
                16 => min..=max,
            ]
            .prop_map(|n| json!(n))
            .boxed()
        }
        Some("string") => strings(schema),
        Some("array") => {
            let min = schema["minItems"].as_u64().unwrap_or(0) as usize;
            let max = schema["maxItems"]
                .as_u64()
                .map_or(3, |m| (m as usize).min(3));
            proptest::collection::vec(values(&schema["items"]), min.min(max)..=max)
                .prop_map(Value::Array)
                .boxed()
        }
        _ => objects(schema),
    }
}

fn objects(schema: &Value) -> BoxedStrategy<Value> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema["properties"].as_object() else {
        return Just(json!({})).boxed();
    };
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = properties
        .iter()
        .map(|(name, sub)| {
            let is_required = required.contains(&name.as_str());
            let name = name.clone();
            let value = values(sub).prop_map(move |v| (name.clone(), v));
            if is_required {
                value.prop_map(Some).boxed()
            } else {
                proptest::option::weighted(0.5, value).boxed()
            }
        })
        .collect();
    fields
        .prop_map(|fields| Value::Object(fields.into_iter().flatten().collect::<Map<_, _>>()))
        .boxed()
}

/// The `spec` schema of a kind, from the CRDs the cluster tests install.
fn spec_schema(kind: &str) -> Value {
    let crd = crds_to_install()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("openAPIV3Schema");
    serde_json::to_value(schema).expect("schema as JSON")["properties"]["spec"].clone()
}

/// Server-side dry-run create: the object as admitted (defaults filled in), or `None`
/// when the server refused it as invalid.
async fn admitted(api: &Api<DynamicObject>, object: Value) -> Option<Value> {
    let object: DynamicObject = serde_json::from_value(object).expect("a dynamic object");
    let params = PostParams {
        dry_run: true,
        field_manager: None,
    };
    match api.create(&params, &object).await {
        Ok(stored) => Some(serde_json::to_value(stored).expect("json")),
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => None,
        Err(e) => panic!("the server failed instead of deciding: {e}"),
    }
}

/// An empty AddressList of that name, so that a reference resolves.
fn stub(name: &str) -> AddressList {
    AddressList::new(name, AddressListSpec::default())
}

/// What the engine refuses in this one resource, rules the server cannot check left out.
fn engine_refuses(kind: &str, stored: Value) -> Vec<String> {
    let namespace = "parity".to_string();
    let mut inputs = Inputs {
        namespace,
        ..Default::default()
    };
    let mut left_out = 0;
    let mut refused = Vec::new();
    let id = match kind {
        "AddressList" => {
            let list: AddressList = serde_json::from_value(stored).expect("typed AddressList");
            let bulk = list.spec.bulk.as_deref().unwrap_or_default();
            for raw in list.spec.entries.iter() {
                match parse_entry(raw) {
                    Err(_) if !raw.is_ascii() => left_out += 1,
                    Err(e) => refused.push(format!("entry {raw:?}: {e}")),
                    Ok(_) => {}
                }
            }
            for raw in entry::split_bulk(bulk) {
                if parse_entry(raw).is_err() {
                    left_out += 1;
                }
            }
            inputs.address_lists.push(list);
            ResourceId::new(Kind::AddressList, "parity")
        }
        "TlsCompliance" => {
            let policy: TlsCompliance = serde_json::from_value(stored).expect("typed");
            for r in &policy.spec.address_lists {
                inputs.address_lists.push(stub(&r.name));
            }
            inputs.policies.push(policy);
            ResourceId::new(Kind::TlsCompliance, "parity")
        }
        _ => {
            let gateway: OutboundGateway = serde_json::from_value(stored).expect("typed");
            for r in &gateway.spec.address_lists {
                inputs.address_lists.push(stub(&r.name));
            }
            inputs.gateways.push(gateway);
            ResourceId::new(Kind::OutboundGateway, "parity")
        }
    };
    let evaluation = evaluate(&inputs);
    let findings = evaluation.findings.get(&id).cloned().unwrap_or_default();
    refused.extend(
        findings
            .errors
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message)),
    );
    let invalid = findings.list.map_or(0, |l| l.invalid_total);
    if invalid != left_out + refused.iter().filter(|r| r.starts_with("entry ")).count() as u64 {
        refused.push(format!(
            "{invalid} invalid entries, {left_out} of them left out of the check"
        ));
    }
    refused
}

fn check_kind(client: &Client, ns: &str, kind: &'static str) {
    let api = match kind {
        "AddressList" => dynamic_api::<AddressList>(client, ns),
        "TlsCompliance" => dynamic_api::<TlsCompliance>(client, ns),
        _ => dynamic_api::<OutboundGateway>(client, ns),
    };
    let schema = spec_schema(kind);
    let runtime = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 300,
        ..Config::default()
    });
    let accepted = std::cell::Cell::new(0u32);
    let result = runner.run(&values(&schema), |spec| {
        let object = json!({
            "apiVersion": "mailtls.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": "parity", "namespace": ns},
            "spec": spec,
        });
        let Some(stored) = runtime.block_on(admitted(&api, object)) else {
            return Ok(());
        };
        accepted.set(accepted.get() + 1);
        let refused = engine_refuses(kind, stored.clone());
        if refused.is_empty() {
            Ok(())
        } else {
            Err(TestCaseError::fail(format!(
                "the server admitted this {kind} but the engine refuses it: {refused:?}\nspec as admitted: {}",
                stored["spec"]
            )))
        }
    });
    if let Err(e) = result {
        panic!("{kind}: {e}");
    }
    // The generator must reach the interesting side too, or the property says nothing.
    let accepted = accepted.get();
    eprintln!("{kind}: the server admitted {accepted} of {CASES} generated resources");
    assert!(
        accepted >= CASES / 10,
        "{kind}: only {accepted} of {CASES} generated resources were admitted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test crd_parity -- --ignored"]
async fn whatever_the_server_admits_the_engine_accepts() {
    in_namespace("parity", |client, ns| async move {
        tokio::task::spawn_blocking(move || {
            for kind in ["TlsCompliance", "OutboundGateway", "AddressList"] {
                check_kind(&client, &ns, kind);
            }
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    })
    .await;
}
