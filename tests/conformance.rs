//! The conformance suite of the engine's two backends: the same scenarios through
//! `mailtls standalone` (a directory) and the controller (a real API server) must give the
//! same statuses and the same relay files.
//!
//! Run with `scripts/test-cluster.sh -- cargo test --test conformance -- --ignored`. Each
//! scenario is a sequence of steps, each step the whole set of documents of one namespace;
//! after each step both backends must agree (polled until they do, with a timeout, since the
//! controller settles through several reconciles).

mod common;
mod support;

use common::cluster::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use mailtls::api::{AddressList, OutboundGateway, TlsCompliance};
use mailtls::controller::Settings;
use mailtls::probe::Prober;
use mailtls::render::{MANIFEST, RenderOptions};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const CM: &str = "mailtls-relay";
/// The version `RenderOptions::default()` (the controller's here) renders for.
const POSTFIX_VERSION: &str = "3.10";

/// What is compared of each resource.
#[derive(Clone, Copy, PartialEq)]
enum Compare {
    /// The whole status except transition times and where the relay files live.
    Status,
    /// Only each condition's type, status and reason (error messages name the backend),
    /// not the relay files (neither backend could write them).
    Reasons,
}

/// Status by `kind/name`, and the relay files, as one backend left them.
#[derive(Debug, PartialEq)]
struct Seen {
    statuses: BTreeMap<String, Value>,
    files: BTreeMap<String, String>,
}

fn normalise(kind: &str, name: &str, status: Option<&Value>, compare: Compare) -> (String, Value) {
    let mut s = status.cloned().unwrap_or(Value::Null);
    if let Some(conditions) = s.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conditions.iter_mut() {
            if let Some(c) = c.as_object_mut() {
                c.remove("lastTransitionTime");
                if compare == Compare::Reasons {
                    c.remove("message");
                }
            }
        }
    }
    if let Some(relay) = s.get_mut("relayConfig").and_then(Value::as_object_mut) {
        relay.remove("name");
    }
    // When a test ran, and so how many whole days a certificate had left then.
    if let Some(last) = s.get_mut("lastTest").and_then(Value::as_object_mut) {
        last.remove("time");
    }
    if let Some(results) = s.get_mut("results").and_then(Value::as_array_mut) {
        for r in results.iter_mut().filter_map(Value::as_object_mut) {
            r.remove("certDaysLeft");
        }
    }
    if compare == Compare::Reasons {
        s = json!({ "conditions": s.get("conditions").cloned().unwrap_or(Value::Null) });
    }
    (format!("{kind}/{name}"), s)
}

/// What `mailtls standalone` wrote for namespace `ns` under `out`.
fn standalone_seen(out: &Path, ns: &str, compare: Compare) -> Seen {
    let mut statuses = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(out.join(ns).join("resources")) {
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path()).expect("read a resource");
            let r: Value = serde_norway::from_str(&text).expect("a resource file");
            let kind = r["kind"].as_str().unwrap_or_default().to_string();
            let name = r["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let (k, v) = normalise(&kind, &name, r.get("status"), compare);
            statuses.insert(k, v);
        }
    }
    let mut files = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(out.join(ns).join("relay")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != MANIFEST {
                files.insert(name, std::fs::read_to_string(entry.path()).expect("a file"));
            }
        }
    }
    Seen { statuses, files }
}

/// What the controller wrote in namespace `ns`.
async fn cluster_seen(client: &Client, ns: &str, compare: Compare) -> Seen {
    async fn of<K>(client: &Client, ns: &str, compare: Compare, out: &mut BTreeMap<String, Value>)
    where
        K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        let list = api.list(&ListParams::default()).await.expect("list");
        for r in list.items {
            let v = serde_json::to_value(&r).expect("json");
            let (k, s) = normalise(&K::kind(&()), &r.name_any(), v.get("status"), compare);
            out.insert(k, s);
        }
    }
    let mut statuses = BTreeMap::new();
    of::<AddressList>(client, ns, compare, &mut statuses).await;
    of::<TlsCompliance>(client, ns, compare, &mut statuses).await;
    of::<OutboundGateway>(client, ns, compare, &mut statuses).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let files = cms
        .get_opt(CM)
        .await
        .expect("get the ConfigMap")
        .and_then(|cm| cm.data)
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, _)| name != MANIFEST)
        .collect();
    Seen { statuses, files }
}

/// The documents of a step as one YAML stream in namespace `ns`.
fn yaml_stream(docs: &[Value], ns: &str) -> String {
    docs.iter()
        .map(|d| {
            let mut d = d.clone();
            d["metadata"]["namespace"] = json!(ns);
            serde_norway::to_string(&d).expect("yaml")
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Make the cluster hold exactly `docs`: apply each, delete the rest.
async fn apply_step(client: &Client, ns: &str, docs: &[Value]) {
    let mut wanted = Vec::new();
    for doc in docs {
        wanted.push(apply_doc(client, ns, doc).await);
    }
    for kind in KINDS {
        let api = kind_api(client, ns, kind);
        for r in api.list(&ListParams::default()).await.expect("list").items {
            if !wanted.contains(&(kind.to_string(), r.name_any())) {
                api.delete(&r.name_any(), &DeleteParams::default())
                    .await
                    .expect("delete");
            }
        }
    }
}

/// Run `mailtls standalone` once on `input` (one file) into `out`; its exit code.
async fn standalone(input: &Path, out: &Path, extra: &[String]) -> Option<i32> {
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .args(["standalone", "--postfix-version", POSTFIX_VERSION])
        .args(extra)
        .arg("--dir")
        .arg(input)
        .arg("--out")
        .arg(out)
        .output()
        .await
        .expect("run mailtls standalone");
    o.status.code()
}

/// TLS tests for both backends: `standalone`'s flags and the controller's prober, both
/// pointed at the same loopback servers.
struct Tests {
    flags: Vec<String>,
    prober: Prober,
}

/// Run the steps against both backends in a fresh namespace; after each step both must
/// agree. With `fail_writes`, neither backend can write the relay configuration.
async fn conform(prefix: &str, steps: Vec<Vec<Value>>, compare: Compare, fail_writes: bool) {
    conform_with(prefix, steps, compare, fail_writes, None).await;
}

async fn conform_with(
    prefix: &str,
    steps: Vec<Vec<Value>>,
    compare: Compare,
    fail_writes: bool,
    tests: Option<Tests>,
) {
    in_namespace(prefix, move |client, ns| async move {
        let (flags, prober) = match tests {
            Some(t) => (t.flags, Some(t.prober)),
            None => (Vec::new(), None),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let (input, out) = (dir.path().join("in"), dir.path().join("out"));
        std::fs::create_dir_all(&input).expect("mkdir");
        if fail_writes {
            // Writes fail: the relay ConfigMap exists and is immutable (the API server
            // refuses every change), and a file stands where the relay directory belongs.
            let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": CM},
                "data": {"placed": "by hand"},
                "immutable": true
            }))
            .expect("ConfigMap");
            cms.create(&PostParams::default(), &cm)
                .await
                .expect("create the ConfigMap");
            std::fs::create_dir_all(out.join(&ns)).expect("mkdir");
            std::fs::write(out.join(&ns).join("relay"), "in the way").expect("write");
        }
        let settings = Settings {
            namespaces: vec![ns.clone()],
            config_map: CM.into(),
            render: RenderOptions::default(),
            metrics_addr: None,
            leader_election: None,
            instance: Some("conformance".into()),
            tests: prober,
            relays: None,
        };
        let (stop, shutdown) = watch::channel(false);
        let controller = tokio::spawn(mailtls::controller::run(client.clone(), settings, shutdown));
        for (i, docs) in steps.iter().enumerate() {
            std::fs::write(input.join("step.yaml"), yaml_stream(docs, &ns)).expect("write");
            let code = standalone(&input, &out, &flags).await;
            assert_eq!(
                code,
                Some(if fail_writes { 1 } else { 0 }),
                "step {i}: standalone"
            );
            apply_step(&client, &ns, docs).await;
            let mut want = standalone_seen(&out, &ns, compare);
            if compare == Compare::Reasons {
                want.files.clear();
            }
            assert_eq!(
                want.statuses.len(),
                docs.len(),
                "step {i}: standalone's statuses"
            );
            let deadline = Instant::now() + TIMEOUT;
            loop {
                let mut got = cluster_seen(&client, &ns, compare).await;
                if compare == Compare::Reasons {
                    got.files.clear();
                }
                if got == want {
                    break;
                }
                if Instant::now() > deadline {
                    assert_eq!(
                        got, want,
                        "step {i}: the controller (left) and standalone (right) differ"
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Creation times order conflicts: the next step's objects are strictly younger.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let _ = stop.send(true);
        let _ = tokio::time::timeout(TIMEOUT, controller).await;
    })
    .await;
}

fn examples() -> Vec<Value> {
    yaml_documents("examples")
        .expect("examples/")
        .into_iter()
        .map(|(_, doc)| doc)
        .collect()
}

/// A resource as the YAML/JSON document a user would apply.
fn doc<K: serde::Serialize>(r: &K) -> Value {
    let mut v = serde_json::to_value(r).expect("json");
    if let Some(v) = v.as_object_mut() {
        v.remove("status");
    }
    v
}

fn list(name: &str, entries: &[&str]) -> Value {
    doc(&AddressList::with_entries(name, entries))
}

fn policy(name: &str, lists: &[&str]) -> Value {
    doc(&TlsCompliance::outbound_verified(name, lists))
}

fn all_mail(name: &str, host: &str) -> Value {
    doc(&OutboundGateway::all_mail(name, host))
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test conformance -- --ignored"]
async fn the_examples_then_deleting_everything() {
    conform(
        "conf-examples",
        vec![examples(), Vec::new()],
        Compare::Status,
        false,
    )
    .await;
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test conformance -- --ignored"]
async fn a_conflict_goes_to_the_older_gateway() {
    let first = all_mail("a-first", "gw1.example.net");
    let second = all_mail("b-second", "gw2.example.net");
    let steps = vec![
        vec![first.clone()],
        vec![first, second.clone()],
        vec![second],
    ];
    conform("conf-conflict", steps, Compare::Status, false).await;
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test conformance -- --ignored"]
async fn a_missing_list_and_an_invalid_edit_keep_the_last_valid_generation() {
    let partners = list("partners", &["example.com", "bob@example.org"]);
    let valid = vec![partners.clone(), policy("partners", &["partners"])];
    // The list goes missing: generation 1 of the policy stays enforced.
    let missing = vec![policy("partners", &["partners"])];
    // An edit naming a list that does not exist: the last valid generation stays.
    let invalid = vec![partners, policy("partners", &["partners", "nobody"])];
    let never_valid = vec![policy("orphan", &["nobody"])];
    let steps = vec![valid, missing, invalid, never_valid];
    conform("conf-last-valid", steps, Compare::Status, false).await;
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test conformance -- --ignored"]
async fn a_failing_write_is_reported_alike() {
    let steps = vec![vec![
        list("partners", &["example.com"]),
        policy("partners", &["partners"]),
    ]];
    conform("conf-failing-write", steps, Compare::Reasons, true).await;
}

/// A TLS test falls due at once for a new policy: both backends test the same loopback
/// servers (one with a good certificate, one without STARTTLS) and record the same results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test conformance -- --ignored"]
async fn due_tests_record_the_same_results() {
    let servers = support::fixtures::GoodAndPlain::start("mailtls conformance test CA").await;
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let ca_file = servers.ca.write_pem(ca_dir.path());
    let (dns, port) = (servers.dns, servers.port);
    let prober = servers.prober(Duration::from_secs(3));
    let flags = [
        "--tests",
        "--resolver",
        &dns.to_string(),
        "--test-smtp-port",
        &port.to_string(),
        "--test-ca-file",
        &ca_file.display().to_string(),
        "--test-timeout",
        "3s",
    ]
    .map(String::from)
    .to_vec();
    let mut strict = policy("partners", &["partners"]);
    strict["spec"]["requireCASigned"] = json!(true);
    strict["spec"]["validateHostname"] = json!(true);
    let steps = vec![vec![
        list(
            "partners",
            &["good.test", "someone@plain.test", ".wild.test"],
        ),
        strict,
    ]];
    let tests = Tests { flags, prober };
    conform_with("conf-tests", steps, Compare::Status, false, Some(tests)).await;
}
