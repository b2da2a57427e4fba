//! The Helm chart and the plain manifests in `deploy/`, against helm and the real API server
//! (server-side dry-run apply: every object must be valid for this Kubernetes version).
//! Run through `scripts/test-cluster.sh -- cargo test --test chart -- --ignored`.

mod common;

use common::cluster::{MANAGER, client, in_namespace};
use kube::Client;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{Scope, pinned_kind};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const NEEDS: &str = "needs helm and a real API server: scripts/test-cluster.sh -- cargo test --test chart -- --ignored";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn helm() -> PathBuf {
    let path = std::env::var_os("MAILTLS_HELM")
        .unwrap_or_else(|| panic!("MAILTLS_HELM is not set: {NEEDS}"));
    PathBuf::from(path)
}

/// Run helm; (success, stdout, stderr).
fn run_helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm())
        .args(args)
        .current_dir(root())
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn template(namespace: &str, sets: &[&str]) -> String {
    let mut args = vec![
        "template",
        "mailtls",
        "charts/mailtls",
        "--namespace",
        namespace,
        "--skip-crds",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let (ok, out, err) = run_helm(&args);
    assert!(ok, "helm template {sets:?} failed: {err}");
    out
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Server-side dry-run apply of every object; returns the kinds applied and the kinds the
/// server does not serve (e.g. ServiceMonitor without the Prometheus Operator).
async fn dry_run(client: &Client, yaml: &str, namespace: &str) -> (Vec<String>, Vec<String>) {
    let (mut applied, mut unserved) = (Vec::new(), Vec::new());
    for doc in documents(yaml) {
        let kind = doc["kind"].as_str().expect("kind").to_string();
        let api_version = doc["apiVersion"].as_str().expect("apiVersion");
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, &kind);
        let Ok((resource, caps)) = pinned_kind(client, &gvk).await else {
            unserved.push(kind);
            continue;
        };
        let mut object: DynamicObject = serde_json::from_value(doc.clone()).expect("object");
        let name = object.metadata.name.clone().expect("name");
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = object
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| namespace.to_string());
                object.metadata.namespace = Some(ns.clone());
                Api::namespaced_with(client.clone(), &ns, &resource)
            }
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).dry_run().force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("server rejected {kind}/{name}: {e}"));
        applied.push(kind);
    }
    (applied, unserved)
}

#[test]
#[ignore = "needs helm: scripts/test-cluster.sh -- cargo test --test chart -- --ignored"]
fn helm_lint_is_clean() {
    let (ok, out, err) = run_helm(&["lint", "--strict", "charts/mailtls"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run_helm(&[
        "lint",
        "--strict",
        "charts/mailtls",
        "--set",
        "relay.enabled=true,replicas=3,leaderElection.enabled=true",
    ]);
    assert!(ok, "{out}{err}");
}

#[test]
#[ignore = "needs helm: scripts/test-cluster.sh -- cargo test --test chart -- --ignored"]
fn values_schema_and_chart_rules_reject_bad_values() {
    for (set, expected) in [
        ("logFormat=xml", "logFormat"),
        ("replicas=0", "replicas"),
        ("render.mapType=btree", "mapType"),
        ("render.configDir=relative/dir", "configDir"),
        ("metrics.port=70000", "port"),
        ("relay.service.type=Ingress", "type"),
        ("unknownKey=1", "unknownKey"),
        ("tests.allowCidrs={internal.example}", "allowCidrs"),
        ("replicas=2", "leaderElection.enabled"),
    ] {
        let (ok, _, err) = run_helm(&["template", "mailtls", "charts/mailtls", "--set", set]);
        assert!(!ok, "{set} was accepted");
        assert!(err.contains(expected), "{set}: {err}");
    }
}

#[tokio::test]
#[ignore = "needs helm and a real API server: scripts/test-cluster.sh -- cargo test --test chart -- --ignored"]
async fn chart_objects_are_accepted_by_the_api_server() {
    in_namespace("chart", |client, ns| async move {
        let (applied, unserved) = dry_run(&client, &template(&ns, &[]), &ns).await;
        for kind in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment"] {
            assert!(applied.iter().any(|k| k == kind), "{kind} missing from {applied:?}");
        }
        assert!(unserved.is_empty(), "{unserved:?}");

        let custom = template(&ns, &[
            "replicas=2,leaderElection.enabled=true,relay.enabled=true,relay.service.type=LoadBalancer",
            // Namespaces the API server makes itself: the Roles land there.
            "watchNamespaces={default,kube-public},metrics.serviceMonitor.enabled=true,render.caFile=/etc/ssl/ca.pem",
            "tests.allowCidrs={10.20.0.0/16},tests.denyCidrs={34.118.224.0/20}",
            "logFormat=text,extraEnv[0].name=RUST_LOG,extraEnv[0].value=debug",
        ]);
        let (applied, unserved) = dry_run(&client, &custom, &ns).await;
        assert_eq!(applied.iter().filter(|k| *k == "Deployment").count(), 2, "operator and relay");
        for kind in ["Role", "RoleBinding", "PodDisruptionBudget"] {
            assert!(applied.iter().any(|k| k == kind), "{kind} missing from {applied:?}");
        }
        assert_eq!(unserved, ["ServiceMonitor"], "only the Prometheus Operator's kind is not served here");
        assert!(!applied.iter().any(|k| k == "ClusterRole"), "with watchNamespaces nothing cluster-wide: {applied:?}");
        for arg in ["--leader-election", "--namespace=default", "--namespace=kube-public", "--ca-file=/etc/ssl/ca.pem", "--log-format=text", "--test-allow-cidr=10.20.0.0/16", "--test-deny-cidr=34.118.224.0/20"] {
            assert!(custom.contains(arg), "{arg}");
        }
    })
    .await;
}

/// The controller's default `--relay-selector` finds the chart's relay agents: the
/// headless relay-status Service carries those labels (its EndpointSlices copy them), selects
/// the relay pods and names its port `status`, as the agent's container port is named.
#[test]
#[ignore = "needs helm: scripts/test-cluster.sh -- cargo test --test chart -- --ignored"]
fn the_relay_status_service_matches_the_controllers_default_selector() {
    let docs = documents(&template("mail", &["relay.enabled=true"]));
    let service = docs
        .iter()
        .find(|d| {
            d["kind"] == "Service"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-relay-status"))
        })
        .expect("the relay-status Service");
    for pair in mailtls::controller::DEFAULT_RELAY_SELECTOR.split(',') {
        let (key, value) = pair.split_once('=').expect("key=value");
        assert_eq!(
            service["metadata"]["labels"][key].as_str(),
            Some(value),
            "label {key} of {service:#?}"
        );
    }
    assert_eq!(service["spec"]["clusterIP"], "None");
    let port = &service["spec"]["ports"][0];
    assert_eq!(
        (port["name"].as_str(), port["targetPort"].as_str()),
        (Some("status"), Some("status"))
    );
    let relay = docs
        .iter()
        .find(|d| {
            d["kind"] == "Deployment"
                && d["metadata"]["labels"]["app.kubernetes.io/component"] == "relay"
        })
        .expect("the relay Deployment");
    let pod_labels = &relay["spec"]["template"]["metadata"]["labels"];
    let selector = service["spec"]["selector"].as_object().expect("selector");
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(
            &pod_labels[key], value,
            "the Service selects the relay pods: {key}"
        );
    }
    let named_status = relay["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .any(|p| p["name"] == "status");
    assert!(named_status, "the agent's container port is named status");
}

#[tokio::test]
#[ignore = "needs helm and a real API server: scripts/test-cluster.sh -- cargo test --test chart -- --ignored"]
async fn deploy_manifests_match_the_chart_and_are_accepted() {
    let deploy = std::fs::read_to_string(root().join("deploy/20-mailtls.yaml"))
        .expect("deploy/20-mailtls.yaml");
    let fresh = template("mailtls", &["relay.enabled=true"]);
    assert!(
        deploy.ends_with(&fresh),
        "deploy/20-mailtls.yaml is out of date: run scripts/gen-deploy.sh"
    );
    let client = client().await;
    let namespace =
        std::fs::read_to_string(root().join("deploy/10-namespace.yaml")).expect("namespace");
    // The namespace itself for real (dry-run objects need it to exist), the rest dry-run.
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_norway::from_str(&namespace).expect("namespace");
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    api.patch(
        "mailtls",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&ns),
    )
    .await
    .expect("namespace mailtls");
    let crds = std::fs::read_to_string(root().join("deploy/00-crds.yaml")).expect("crds");
    let (applied, _) = dry_run(&client, &crds, "mailtls").await;
    assert_eq!(applied.len(), 3);
    let (applied, unserved) = dry_run(&client, &deploy, "mailtls").await;
    assert!(unserved.is_empty(), "{unserved:?}");
    assert_eq!(applied.iter().filter(|k| *k == "Deployment").count(), 2);
}

/// The chart's RBAC objects (ServiceAccount and roles) for `sets`, renamed for `release`,
/// applied for real; returns them and a client acting as the ServiceAccount.
async fn install_rbac(admin: &Client, ns: &str, release: &str, sets: &str) -> (String, Client) {
    let rendered = template(ns, &[sets]).replace("name: mailtls", &format!("name: {release}"));
    let rbac: String = documents(&rendered)
        .into_iter()
        .filter(|d| {
            [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
            ]
            .contains(&d["kind"].as_str().unwrap_or_default())
        })
        .map(|d| format!("---\n{}", serde_norway::to_string(&d).expect("yaml")))
        .collect();
    apply_for_real(admin, &rbac, ns).await;
    let account = documents(&rbac)
        .into_iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .expect("ServiceAccount");
    let account = account["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let mut config = common::cluster::config().await;
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:{account}"));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".into(),
    ]);
    (rbac, Client::try_from(config).expect("client"))
}

/// Deletes the cluster-scoped objects of `rbac` (namespaced ones go with their namespace).
async fn remove_cluster_objects(admin: &Client, rbac: &str) {
    for d in documents(rbac)
        .into_iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding")
    {
        let kind = d["kind"].as_str().unwrap_or_default().to_string();
        let name = d["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let gvk = GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", &kind);
        if let Ok((ar, _)) = pinned_kind(admin, &gvk).await {
            let _ = Api::<DynamicObject>::all_with(admin.clone(), &ar)
                .delete(&name, &Default::default())
                .await;
        }
    }
}

type ConfigMaps = Api<k8s_openapi::api::core::v1::ConfigMap>;

fn config_map(name: &str) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                       "data": {"key": "value"}})
}

/// A namespace beside the test's own (the caller deletes it).
async fn extra_namespace(admin: &Client, name: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("ns");
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&ns),
    )
    .await
    .expect("namespace");
}

async fn drop_namespace(admin: &Client, name: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    let _ = api.delete(name, &Default::default()).await;
}

/// What one real request as the operator's ServiceAccount got: Ok, or the HTTP code.
fn code<T>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(kube::Error::Api(e)) => e.code,
        Err(e) => panic!("not an API answer: {e}"),
    }
}

/// Real requests as the operator, each with the code expected: `(what, got, want)`.
async fn config_map_access(op: &Client, ns: &str, name: &str) -> Vec<(String, u16)> {
    let api: ConfigMaps = Api::namespaced(op.clone(), ns);
    let merge = Patch::Merge(serde_json::json!({"data": {"key": "changed"}}));
    let by_name = kube::api::ListParams::default().fields(&format!("metadata.name={name}"));
    vec![
        (format!("get {ns}/{name}"), code(api.get(name).await)),
        (
            format!("merge-patch {ns}/{name}"),
            code(api.patch(name, &PatchParams::default(), &merge).await),
        ),
        (
            format!("apply {ns}/{name}"),
            code(
                api.patch(
                    name,
                    &PatchParams::apply("mailtls").force(),
                    &Patch::Apply(config_map(name)),
                )
                .await,
            ),
        ),
        (
            format!("list {ns} by name {name}"),
            code(api.list(&by_name).await),
        ),
        (
            format!("list {ns}"),
            code(api.list(&Default::default()).await),
        ),
        (
            format!("create {ns}/{name}-new"),
            code(
                api.create(
                    &Default::default(),
                    &serde_json::from_value(config_map(&format!("{name}-new"))).expect("cm"),
                )
                .await,
            ),
        ),
    ]
}

/// The chart's RBAC is enough for the controller and no more: the controller, running as the
/// chart's ServiceAccount (impersonated) with exactly the chart's roles, renders the examples
/// and reports Ready, while anything else is forbidden: with watchNamespaces, any other
/// ConfigMap of the watched namespace and every ConfigMap of an unwatched one (real requests).
#[tokio::test]
#[ignore = "needs helm and a real API server: scripts/test-cluster.sh -- cargo test --test chart -- --ignored"]
async fn the_controller_works_with_exactly_the_charts_rbac() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_test_writer()
        .try_init();
    in_namespace("rbac", |admin, ns| async move {
        let release = format!("r{}", &ns[ns.len() - 6..]);
        let (rbac, as_operator) = install_rbac(
            &admin,
            &ns,
            &release,
            &format!("leaderElection.enabled=true,watchNamespaces={{{ns}}}"),
        )
        .await;
        let unwatched = format!("{ns}-unwatched");
        extra_namespace(&admin, &unwatched).await;
        for (namespace, name) in [
            (&ns, "other"),
            (&unwatched, "other"),
            (&unwatched, "mailtls-relay"),
        ] {
            let api: ConfigMaps = Api::namespaced(admin.clone(), namespace);
            api.patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(config_map(name)),
            )
            .await
            .expect("a ConfigMap not the operator's");
        }

        let settings = mailtls::controller::Settings {
            namespaces: vec![ns.clone()],
            config_map: "mailtls-relay".into(),
            render: mailtls::render::RenderOptions::default(),
            metrics_addr: None,
            leader_election: Some(mailtls::controller::LeaseSettings {
                name: "mailtls-controller".into(),
                namespace: ns.clone(),
                identity: "rbac-test".into(),
                duration: 5,
                grace: 1,
            }),
            instance: Some("rbac-test".into()),
            tests: None,
            relays: Some(mailtls::controller::RelaySettings {
                selector: mailtls::controller::DEFAULT_RELAY_SELECTOR.into(),
                interval: std::time::Duration::from_secs(1),
            }),
        };
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let controller = tokio::spawn(mailtls::controller::run(
            as_operator.clone(),
            settings,
            shutdown,
        ));

        let examples: String = ["address-lists", "tls-compliance", "gateways"]
            .iter()
            .map(|f| {
                std::fs::read_to_string(root().join("examples").join(format!("{f}.yaml")))
                    .expect("example")
                    + "\n---\n"
            })
            .collect();
        apply_for_real(&admin, &examples, &ns).await;

        let configmaps: ConfigMaps = Api::namespaced(admin.clone(), &ns);
        let written = tokio::time::timeout(
            common::cluster::TIMEOUT,
            kube::runtime::wait::await_condition(
                configmaps.clone(),
                "mailtls-relay",
                |cm: Option<&k8s_openapi::api::core::v1::ConfigMap>| {
                    cm.and_then(|c| c.metadata.annotations.as_ref())
                        .is_some_and(|a| a.contains_key(mailtls::controller::HASH_ANNOTATION))
                },
            ),
        )
        .await;
        let policies: Api<mailtls::api::TlsCompliance> = Api::namespaced(admin.clone(), &ns);
        let ready = tokio::time::timeout(
            common::cluster::TIMEOUT,
            kube::runtime::wait::await_condition(
                policies,
                "partners",
                |p: Option<&mailtls::api::TlsCompliance>| {
                    p.and_then(|p| p.status.as_ref()).is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                },
            ),
        )
        .await;
        // Drift repair works under these roles too: a deleted ConfigMap comes back.
        let deleted = configmaps
            .delete("mailtls-relay", &Default::default())
            .await;
        let recreated = tokio::time::timeout(
            common::cluster::TIMEOUT,
            kube::runtime::wait::await_condition(
                configmaps.clone(),
                "mailtls-relay",
                |cm: Option<&k8s_openapi::api::core::v1::ConfigMap>| cm.is_some(),
            ),
        )
        .await;
        // What the roles do not grant stays forbidden.
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(as_operator.clone(), &ns);
        let forbidden = secrets.list(&Default::default()).await;
        let cms: ConfigMaps = Api::namespaced(as_operator.clone(), &ns);
        let delete = cms.delete("mailtls-relay", &Default::default()).await;
        // Relay EndpointSlices are read (to ask the agents what they applied); pods are not.
        let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
            Api::namespaced(as_operator.clone(), &ns);
        let list_slices = slices.list(&Default::default()).await;
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(as_operator.clone(), &ns);
        let list_pods = pods.list(&Default::default()).await;
        let mut access = config_map_access(&as_operator, &ns, "mailtls-relay").await;
        access.extend(config_map_access(&as_operator, &ns, "other").await);
        access.extend(config_map_access(&as_operator, &unwatched, "mailtls-relay").await);
        access.extend(config_map_access(&as_operator, &unwatched, "other").await);
        access.extend(config_map_access(&as_operator, "kube-system", "mailtls-relay").await);
        let untouched =
            Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(admin.clone(), &ns)
                .get("other")
                .await
                .map(|c| c.data);

        let _ = stop.send(true);
        let _ = tokio::time::timeout(common::cluster::TIMEOUT, controller).await;
        remove_cluster_objects(&admin, &rbac).await;
        drop_namespace(&admin, &unwatched).await;
        assert!(
            matches!(written, Ok(Ok(_))),
            "the ConfigMap was not written with the chart's RBAC: {written:?}"
        );
        assert!(
            matches!(ready, Ok(Ok(_))),
            "TlsCompliance/partners did not become Ready with the chart's RBAC: {ready:?}"
        );
        assert!(
            deleted.is_ok() && matches!(recreated, Ok(Ok(_))),
            "{deleted:?} {recreated:?}"
        );
        assert!(
            matches!(forbidden, Err(kube::Error::Api(ref e)) if e.code == 403),
            "secrets must be forbidden: {forbidden:?}"
        );
        assert!(
            matches!(delete, Err(kube::Error::Api(ref e)) if e.code == 403),
            "deleting ConfigMaps is not granted: {delete:?}"
        );
        assert!(
            list_slices.is_ok(),
            "listing EndpointSlices is granted: {list_slices:?}"
        );
        assert!(
            matches!(list_pods, Err(kube::Error::Api(ref e)) if e.code == 403),
            "pods are not readable: {list_pods:?}"
        );
        let own = |what: &str| {
            what.ends_with(&format!("{ns}/mailtls-relay"))
                || what.ends_with(&format!("{ns} by name mailtls-relay"))
        };
        for (what, got) in &access {
            let want = if own(what) { 200 } else { 403 };
            assert_eq!(*got, want, "{what}: {access:#?}");
        }
        assert_eq!(
            untouched
                .ok()
                .flatten()
                .and_then(|d| d.get("key").cloned())
                .as_deref(),
            Some("value")
        );
    })
    .await;
}

/// Without watchNamespaces the roles are cluster-wide, and ConfigMaps are still reachable
/// by name only: the relay ConfigMap (and its state) in any namespace, nothing else. The
/// controller runs cluster-wide as the ServiceAccount and repairs a deleted ConfigMap.
#[tokio::test]
#[ignore = "needs helm and a real API server: scripts/test-cluster.sh -- cargo test --test chart -- --ignored"]
async fn cluster_wide_rbac_reaches_the_relay_config_maps_by_name_only() {
    in_namespace("rbac-all", |admin, ns| async move {
        let release = format!("c{}", &ns[ns.len() - 6..]);
        let (rbac, as_operator) = install_rbac(&admin, &ns, &release, "leaderElection.enabled=false").await;
        let cms: ConfigMaps = Api::namespaced(admin.clone(), &ns);
        cms.patch("other", &PatchParams::apply(MANAGER).force(), &Patch::Apply(config_map("other")))
            .await
            .expect("other");
        let settings = mailtls::controller::Settings {
            namespaces: vec![],
            config_map: "mailtls-relay".into(),
            render: mailtls::render::RenderOptions::default(),
            metrics_addr: None,
            leader_election: None,
            instance: Some("rbac-all".into()),
            tests: None,
            relays: None,
        };
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let controller = tokio::spawn(mailtls::controller::run(as_operator.clone(), settings, shutdown));
        let list = serde_json::json!({"apiVersion": "mailtls.io/v1alpha1", "kind": "AddressList",
            "metadata": {"name": "partners"}, "spec": {"entries": ["partner.example"]}});
        let policy = serde_json::json!({"apiVersion": "mailtls.io/v1alpha1", "kind": "TlsCompliance",
            "metadata": {"name": "partners"}, "spec": {"direction": "Outbound", "addressLists": [{"name": "partners"}]}});
        apply_for_real(&admin, &format!("---\n{}\n---\n{}\n", serde_norway::to_string(&list).expect("yaml"), serde_norway::to_string(&policy).expect("yaml")), &ns).await;
        let exists = |cm: Option<&k8s_openapi::api::core::v1::ConfigMap>| cm.is_some();
        let written = tokio::time::timeout(
            common::cluster::TIMEOUT,
            kube::runtime::wait::await_condition(cms.clone(), "mailtls-relay", exists),
        )
        .await;
        let deleted = cms.delete("mailtls-relay", &Default::default()).await;
        let recreated = tokio::time::timeout(
            common::cluster::TIMEOUT,
            kube::runtime::wait::await_condition(cms.clone(), "mailtls-relay", exists),
        )
        .await;
        let mut access = config_map_access(&as_operator, &ns, "other").await;
        access.extend(config_map_access(&as_operator, "kube-system", "extension-apiserver-authentication").await);
        let all: ConfigMaps = Api::all(as_operator.clone());
        let list_all = code(all.list(&Default::default()).await);
        let list_by_name = code(all.list(&kube::api::ListParams::default().fields("metadata.name=mailtls-relay")).await);
        let state = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(as_operator.clone(), &ns)
            .patch("mailtls-relay-state", &PatchParams::apply("mailtls").force(), &Patch::Apply(config_map("mailtls-relay-state")))
            .await;

        let _ = stop.send(true);
        let _ = tokio::time::timeout(common::cluster::TIMEOUT, controller).await;
        remove_cluster_objects(&admin, &rbac).await;
        assert!(matches!(written, Ok(Ok(_))), "{written:?}");
        assert!(deleted.is_ok() && matches!(recreated, Ok(Ok(_))), "{deleted:?} {recreated:?}");
        for (what, got) in &access {
            assert_eq!(*got, 403, "{what}: {access:#?}");
        }
        assert_eq!((list_all, list_by_name), (403, 200), "listing every ConfigMap vs by name");
        assert!(state.is_ok(), "the state ConfigMap is written by apply: {state:?}");
    })
    .await;
}

/// Server-side apply for real (not dry-run), namespaced objects into `namespace`.
async fn apply_for_real(client: &Client, yaml: &str, namespace: &str) {
    for doc in documents(yaml) {
        let kind = doc["kind"].as_str().expect("kind").to_string();
        let api_version = doc["apiVersion"].as_str().expect("apiVersion");
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let (resource, caps) = pinned_kind(client, &GroupVersionKind::gvk(group, version, &kind))
            .await
            .expect("served kind");
        let mut object: DynamicObject = serde_json::from_value(doc.clone()).expect("object");
        let name = object.metadata.name.clone().expect("name");
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                object.metadata.namespace = Some(namespace.to_string());
                Api::namespaced_with(client.clone(), namespace, &resource)
            }
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {kind}/{name}: {e}"));
    }
}
