//! The harness for tests against a real Kubernetes API server (see `tests/cluster.rs`):
//! a client from `MAILTLS_TEST_KUBECONFIG`, a fresh namespace per test, the CRDs installed
//! and Established, and typed server-side apply.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, Resource, ResourceExt};
use mailtls::api::LocalRef;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Field manager of everything these tests apply.
pub const MANAGER: &str = "mailtls-cluster-tests";
/// Upper bound for any single wait on the server.
pub const TIMEOUT: Duration = Duration::from_secs(60);
pub const KINDS: [&str; 3] = ["AddressList", "OutboundGateway", "TlsCompliance"];

// ---- harness ---------------------------------------------------------------------------------

/// A client for the test API server named by `MAILTLS_TEST_KUBECONFIG`; panics without it.
pub async fn client() -> Client {
    Client::try_from(config().await).expect("building the kube client")
}

/// The admin configuration for the test API server; panics without `MAILTLS_TEST_KUBECONFIG`.
pub async fn config() -> Config {
    // rustls needs exactly one process-wide crypto provider; a second install only fails.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = std::env::var_os("MAILTLS_TEST_KUBECONFIG").unwrap_or_else(|| {
        panic!(
            "MAILTLS_TEST_KUBECONFIG is not set: these tests need a real API server; run them \
             with `scripts/test-cluster.sh -- cargo test --test <name> -- --ignored`"
        )
    });
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("reading kubeconfig {}: {e}", path.to_string_lossy()));
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.to_string_lossy()))
}

/// Runs `body` in a fresh namespace `mailtls-<prefix>-<suffix>` with the CRDs installed,
/// deletes the namespace afterwards (also when `body` panics), then re-raises the panic.
pub async fn in_namespace<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let client = client().await;
    install_crds(&client).await;
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
        ^ std::process::id();
    let ns = format!("mailtls-{prefix}-{:06x}", suffix & 0xff_ffff);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let object: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    namespaces
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {ns}: {e}"));

    let outcome = tokio::spawn(body(client.clone(), ns.clone())).await;

    if let Err(e) = namespaces.delete(&ns, &DeleteParams::default()).await {
        eprintln!("warning: deleting namespace {ns}: {e}");
    }
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test body in {ns} did not finish: {e}"),
        }
    }
}

/// Every YAML document in `<repo>/<dir>/*.yaml` (sorted by file), with the file it came
/// from; `None` when the directory does not exist.
pub fn yaml_documents(dir: &str) -> Option<Vec<(String, Value)>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let entries = std::fs::read_dir(&dir).ok()?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
            if !value.is_null() {
                docs.push((file.display().to_string(), value));
            }
        }
    }
    assert!(!docs.is_empty(), "{} holds no YAML document", dir.display());
    Some(docs)
}

/// The CRDs to install: `crds/*.yaml` when the repository has them, else the generated ones.
pub fn crds_to_install() -> Vec<CustomResourceDefinition> {
    let Some(docs) = yaml_documents("crds") else {
        return mailtls::api::crds();
    };
    docs.into_iter()
        .map(|(file, value)| {
            serde_json::from_value(value).unwrap_or_else(|e| panic!("{file} is not a CRD: {e}"))
        })
        .collect()
}

/// Server-side-applies the CRDs and waits until each is Established. Idempotent, so every
/// test calls it (tests run in parallel and in any order).
pub async fn install_crds(client: &Client) -> Vec<CustomResourceDefinition> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut applied = Vec::new();
    for crd in crds_to_install() {
        let name = crd.name_any();
        let result = api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await;
        match result {
            Ok(crd) => applied.push(crd),
            Err(e) => panic!("the API server rejected CRD {name}: {e}"),
        }
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        match tokio::time::timeout(TIMEOUT, established).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("watching CRD {name}: {e}"),
            Err(_) => {
                let now = api.get(&name).await.ok().and_then(|c| c.status);
                panic!("CRD {name} not Established after {TIMEOUT:?}; status: {now:?}")
            }
        }
    }
    wait_for_discovery(client).await;
    applied
}

/// Waits (bounded) until discovery, plain and aggregated, lists all three kinds: it is
/// updated asynchronously after a CRD becomes Established.
pub async fn wait_for_discovery(client: &Client) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let plain = client
            .list_api_group_resources("mailtls.io/v1alpha1")
            .await
            .map(|list| {
                list.resources
                    .iter()
                    .filter(|r| !r.name.contains('/'))
                    .count()
            })
            .unwrap_or(0);
        let aggregated = client
            .list_api_groups_aggregated()
            .await
            .ok()
            .and_then(|list| {
                list.items.into_iter().find(|g| {
                    g.metadata.as_ref().and_then(|m| m.name.as_deref()) == Some("mailtls.io")
                })
            })
            .map(|g| g.versions.iter().map(|v| v.resources.len()).sum::<usize>())
            .unwrap_or(0);
        if plain == KINDS.len() && aggregated == KINDS.len() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "discovery lists {plain} (aggregated: {aggregated}) mailtls kinds after {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn dynamic_api<K>(client: &Client, ns: &str) -> Api<DynamicObject>
where
    K: Resource<DynamicType = ()>,
{
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<K>(&()))
}

/// An untyped Api for one of the three kinds, by its name.
pub fn kind_api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    match kind {
        "AddressList" => dynamic_api::<mailtls::api::AddressList>(client, ns),
        "TlsCompliance" => dynamic_api::<mailtls::api::TlsCompliance>(client, ns),
        "OutboundGateway" => dynamic_api::<mailtls::api::OutboundGateway>(client, ns),
        other => panic!("unexpected kind {other}"),
    }
}

/// Server-side-applies one mailtls document (any kind) into `ns`; returns its kind and name.
pub async fn apply_doc(client: &Client, ns: &str, doc: &Value) -> (String, String) {
    let mut doc = doc.clone();
    doc["metadata"]["namespace"] = json!(ns);
    let kind = doc["kind"].as_str().unwrap_or_default().to_string();
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    kind_api(client, ns, &kind)
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&doc),
        )
        .await
        .unwrap_or_else(|e| panic!("{kind}/{name}: {e}"));
    (kind, name)
}

/// Server-side-applies a typed object and returns what the server stored.
pub async fn apply<K>(api: &Api<K>, object: &K) -> K
where
    K: Resource + Clone + std::fmt::Debug + serde::Serialize + DeserializeOwned,
{
    let name = object.meta().name.clone().expect("object has a name");
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("the server rejected {name}: {e}\n{object:#?}"))
}

/// `apiVersion`, `kind`, `metadata.name` and the given `spec`, as JSON.
pub fn manifest<K: Resource<DynamicType = ()>>(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": name},
        "spec": spec,
    })
}

pub fn refs(names: &[&str]) -> Vec<LocalRef> {
    names
        .iter()
        .map(|n| LocalRef {
            name: n.to_string(),
        })
        .collect()
}
