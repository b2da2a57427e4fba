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

/// A cluster DNS address for the relay's validating resolver (`relay.dnssec`, on by default):
/// `helm template` cannot look it up, so every rendering here names one (`sets` may
/// override it).
const CLUSTER_DNS: &str = "relay.dnssec.clusterDns=10.96.0.10";

fn template(namespace: &str, sets: &[&str]) -> String {
    let mut args = vec![
        "template",
        "mailtls",
        "charts/mailtls",
        "--namespace",
        namespace,
        "--skip-crds",
        "--set",
        CLUSTER_DNS,
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
        "--set",
        CLUSTER_DNS,
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
        (
            "relay.enabled=true,relay.clientCIDRs={10.0.0.1}",
            "clientCIDRs",
        ),
        (
            "relay.enabled=true,relay.hostname=relay_1.example",
            "hostname",
        ),
        (
            "relay.enabled=true,relay.inbound.domains={corp.example}",
            "relay.inbound.nextHop",
        ),
        (
            "relay.enabled=true,relay.inbound.nextHop=mx.corp.example",
            "relay.inbound.domains",
        ),
        (
            "relay.enabled=true,relay.terminationGracePeriodSeconds=5",
            "terminationGracePeriodSeconds",
        ),
        ("relay.enabled=true,relay.persistence.size=lots", "size"),
        (
            "relay.enabled=true,relay.dnssec.enabled=true,relay.dnssec.clusterDns=kube-dns",
            "clusterDns",
        ),
        // On by default, and helm template cannot look the address up: the chart says
        // what to set rather than install a relay that skips DANE.
        (
            "relay.enabled=true,relay.dnssec.clusterDns=",
            "set relay.dnssec.enabled=false to send without DANE",
        ),
        (
            "relay.enabled=true,relay.tls.certManager.issuerRef.name=le",
            "relay.hostname",
        ),
        (
            "relay.enabled=true,relay.tlsReports.enabled=true,relay.tlsReports.contact=tls@example.com",
            "relay.tlsReports.organization",
        ),
        (
            "relay.enabled=true,relay.tlsReports.enabled=true,relay.tlsReports.organization=X",
            "relay.tlsReports.contact",
        ),
        (
            "relay.enabled=true,relay.tlsReports.enabled=true,relay.tlsReports.organization=X,relay.tlsReports.contact=tls@example.com,relay.mailLog.enabled=false",
            "relay.mailLog.enabled",
        ),
        (
            "relay.tlsReports.contact=https://example.com/tls",
            "contact",
        ),
        ("relay.tlsReports.at=24:00", "at"),
        ("relay.mtaSts.recheck=soon", "recheck"),
        ("relay.agentExtraArgs[0].x=1", "agentExtraArgs"),
        ("relay.nodeSelector.zone[0]=a", "nodeSelector"),
        ("extraArgs=--no-tests", "extraArgs"),
    ] {
        let (ok, _, err) = run_helm(&[
            "template",
            "mailtls",
            "charts/mailtls",
            "--set",
            CLUSTER_DNS,
            "--set",
            set,
        ]);
        assert!(!ok, "{set} was accepted");
        assert!(err.contains(expected), "{set}: {err}");
    }
}

/// The `args` of the container `name` in a pod spec.
fn container_args<'a>(pod: &'a Value, name: &str) -> Vec<&'a str> {
    pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .and_then(|c| c["args"].as_array())
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[tokio::test]
#[ignore = "needs helm and a real API server: scripts/test-cluster.sh -- cargo test --test chart -- --ignored"]
async fn placement_and_extension_values_reach_both_pods_and_are_accepted() {
    in_namespace("chart-extras", |client, ns| async move {
        let yaml = template(&ns, &[
            // A parent chart's globals are allowed (and not read).
            "global.imageRegistry=registry.example",
            "extraArgs={--no-tests,--test-ca-file=/etc/mailtls-ca/ca.pem},podLabels.team=mail",
            "priorityClassName=system-cluster-critical",
            "extraVolumes[0].name=ca,extraVolumes[0].configMap.name=corp-ca",
            "extraVolumeMounts[0].name=ca,extraVolumeMounts[0].mountPath=/etc/mailtls-ca",
            "topologySpreadConstraints[0].maxSkew=1,topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname,topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
            "relay.enabled=true,relay.nodeSelector.egress=fixed-ip,relay.priorityClassName=system-node-critical",
            "relay.tolerations[0].key=egress,relay.tolerations[0].operator=Exists,relay.tolerations[0].effect=NoSchedule",
            "relay.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=egress,relay.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
            "relay.podAnnotations.backup=skip,relay.podLabels.team=mail",
            "relay.topologySpreadConstraints[0].maxSkew=1,relay.topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone,relay.topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
            "relay.topologySpreadConstraints[0].labelSelector.matchLabels.team=mail",
            "relay.agentExtraArgs={--mail-log-max-size=32MiB}",
        ]);
        let (applied, unserved) = dry_run(&client, &yaml, &ns).await;
        assert!(unserved.is_empty(), "{unserved:?}");
        for kind in ["Deployment", "StatefulSet"] {
            assert!(applied.iter().any(|k| k == kind), "{kind} missing from {applied:?}");
        }
        let docs = documents(&yaml);
        let template_of = |kind: &str| {
            docs.iter()
                .find(|d| d["kind"] == kind)
                .map(|d| d["spec"]["template"].clone())
                .unwrap_or_else(|| panic!("{kind}"))
        };
        let operator = template_of("Deployment");
        let pod = &operator["spec"];
        let args = container_args(pod, "operator");
        assert!(args.contains(&"--no-tests") && args.contains(&"--test-ca-file=/etc/mailtls-ca/ca.pem"), "{args:?}");
        assert_eq!(operator["metadata"]["labels"]["team"], "mail");
        assert_eq!(pod["priorityClassName"], "system-cluster-critical");
        assert_eq!(pod["volumes"][0]["configMap"]["name"], "corp-ca");
        assert_eq!(pod["containers"][0]["volumeMounts"][0]["mountPath"], "/etc/mailtls-ca");
        assert_eq!(pod["topologySpreadConstraints"][0]["topologyKey"], "kubernetes.io/hostname");

        let relay = template_of("StatefulSet");
        let pod = &relay["spec"];
        assert_eq!(pod["nodeSelector"]["egress"], "fixed-ip");
        assert_eq!(pod["tolerations"][0]["key"], "egress");
        assert_eq!(pod["priorityClassName"], "system-node-critical");
        assert!(pod["affinity"]["nodeAffinity"].is_object(), "{pod:#}");
        assert_eq!(pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]["team"], "mail");
        assert_eq!(relay["metadata"]["annotations"]["backup"], "skip");
        assert_eq!(relay["metadata"]["labels"]["team"], "mail");
        // The selector stays the chart's own.
        assert!(docs.iter().any(|d| d["kind"] == "StatefulSet" && d["spec"]["selector"]["matchLabels"]["team"].is_null()));
        assert!(container_args(pod, "relay-agent").contains(&"--mail-log-max-size=32MiB"));
        // Init containers are sized too (a ResourceQuota refuses pods without).
        assert!(pod["initContainers"][0]["resources"]["limits"]["memory"].is_string(), "{pod:#}");

        // Unset, none of it appears.
        let plain = template(&ns, &["relay.enabled=true"]);
        for absent in ["priorityClassName", "topologySpreadConstraints", "tolerations", "nodeSelector"] {
            assert!(!plain.contains(absent), "{absent} in the default chart");
        }
    })
    .await;
}

/// metrics.prometheusRule and metrics.dashboard: the alerts and the dashboard are the
/// files the tests check (tests/alerts.rs), unchanged, and the dashboard's ConfigMap is
/// accepted by the API server.
#[tokio::test]
#[ignore = "needs helm and a real API server: scripts/test-cluster.sh -- cargo test --test chart -- --ignored"]
async fn alerts_and_dashboard_are_the_checked_files() {
    in_namespace("chart-alerts", |client, ns| async move {
        let yaml = template(&ns, &["metrics.prometheusRule.enabled=true,metrics.prometheusRule.labels.release=kube-prometheus,metrics.dashboard.enabled=true"]);
        let (applied, unserved) = dry_run(&client, &yaml, &ns).await;
        assert_eq!(unserved, ["PrometheusRule"], "only the Prometheus Operator's kind is not served here");
        assert!(applied.iter().any(|k| k == "ConfigMap"), "{applied:?}");
        let docs = documents(&yaml);
        let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").expect("PrometheusRule");
        assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus");
        let file: Value = serde_norway::from_str(&std::fs::read_to_string(root().join("charts/mailtls/files/rules.yaml")).expect("rules")).expect("YAML");
        assert_eq!(rule["spec"], file, "the PrometheusRule is not files/rules.yaml");
        let dashboard = docs.iter().find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1").expect("dashboard");
        let json: serde_json::Value = serde_json::from_str(dashboard["data"]["mailtls.json"].as_str().expect("json")).expect("JSON");
        let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root().join("charts/mailtls/files/dashboard.json")).expect("dashboard")).expect("JSON");
        assert_eq!(json, file);
        // Off by default.
        let plain = template(&ns, &[]);
        assert!(!plain.contains("PrometheusRule") && !plain.contains("grafana_dashboard"));
    })
    .await;
}

/// `helm install` and `upgrade` look the cluster DNS address up themselves
/// (kube-system/kube-dns), so relay.dnssec needs no value there; `--dry-run=server` renders
/// with the same lookups, here against the real API server.
#[tokio::test]
#[ignore = "needs helm and a real API server: scripts/test-cluster.sh -- cargo test --test chart -- --ignored"]
async fn helm_install_finds_the_cluster_dns_itself() {
    use k8s_openapi::api::core::v1::Service;
    let services: Api<Service> = Api::namespaced(client().await, "kube-system");
    let dns = match services.get_opt("kube-dns").await.expect("get kube-dns") {
        Some(s) => s,
        None => {
            let s: Service = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "kube-dns"},
                "spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}
            }))
            .expect("service");
            services
                .create(&Default::default(), &s)
                .await
                .expect("create kube-dns")
        }
    };
    let ip = dns.spec.and_then(|s| s.cluster_ip).expect("clusterIP");
    let kubeconfig = std::env::var("MAILTLS_TEST_KUBECONFIG").expect("MAILTLS_TEST_KUBECONFIG");
    let (ok, out, err) = run_helm(&[
        "template",
        "mailtls",
        "charts/mailtls",
        "--namespace",
        "mail",
        "--skip-crds",
        "--kubeconfig",
        &kubeconfig,
        "--dry-run=server",
        "--set",
        "relay.enabled=true",
    ]);
    assert!(ok, "{err}");
    let docs = documents(&out);
    let conf = docs
        .iter()
        .find_map(|d| d["data"]["unbound.conf"].as_str())
        .expect("unbound.conf");
    assert!(
        conf.contains(&format!("name: \"cluster.local\"\n  forward-addr: {ip}\n")),
        "{conf}"
    );
    assert_eq!(
        common::default_policy_mechanisms(&docs),
        &serde_json::json!(["MtaSts", "Dane"])
    );
}

/// relay.dnssec (on by default): the validating resolver's container, ConfigMap and the
/// pod's DNS settings are accepted by the API server, and the default policy then honours
/// DANE too (the resolver itself runs in tests/chart_resolver.rs and tests/relay_pod.rs).
#[tokio::test]
#[ignore = "needs helm and a real API server: scripts/test-cluster.sh -- cargo test --test chart -- --ignored"]
async fn the_validating_resolver_is_accepted_and_dane_honoured() {
    in_namespace("chart-dnssec", |client, ns| async move {
        let yaml = template(
            &ns,
            &["relay.enabled=true,relay.dnssec.enabled=true,relay.dnssec.clusterDns=10.96.0.10,relay.dnssec.forwarders={192.0.2.53}"],
        );
        let (applied, unserved) = dry_run(&client, &yaml, &ns).await;
        assert!(unserved.is_empty(), "{unserved:?}");
        assert!(applied.iter().any(|k| k == "ConfigMap"), "{applied:?}");
        let docs = documents(&yaml);
        assert_eq!(
        common::default_policy_mechanisms(&docs),
        &serde_json::json!(["MtaSts", "Dane"])
    );
        let conf = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .and_then(|d| d["data"]["unbound.conf"].as_str())
            .expect("unbound.conf");
        assert!(
            conf.contains("name: \"cluster.local\"\n  forward-addr: 10.96.0.10\n")
                && conf.contains("name: \".\"\n  forward-addr: 192.0.2.53\n"),
            "{conf}"
        );
        let pod = &docs
            .iter()
            .find(|d| d["kind"] == "StatefulSet")
            .expect("relay")["spec"]["template"];
        assert_eq!(pod["spec"]["dnsPolicy"], "None");
        assert!(
            pod["metadata"]["annotations"]["checksum/unbound"].is_string(),
            "{}",
            pod["metadata"]
        );
        // On by default: only the address is needed.
        let default = documents(&template(&ns, &["relay.enabled=true"]));
        assert_eq!(
        common::default_policy_mechanisms(&default),
        &serde_json::json!(["MtaSts", "Dane"])
    );
        assert!(default.iter().any(|d| d["kind"] == "ConfigMap"
            && d["data"]["unbound.conf"].as_str().is_some_and(|c| c.contains("forward-addr: 10.96.0.10"))));
        // Off: no resolver, the cluster's DNS, MTA-STS only.
        let off = template(&ns, &["relay.enabled=true,relay.dnssec.enabled=false"]);
        let docs = documents(&off);
        assert!(!off.contains("dnsPolicy") && !off.contains("unbound"));
        assert_eq!(
        common::default_policy_mechanisms(&docs),
        &serde_json::json!(["MtaSts"])
    );
    })
    .await;
}

/// relay.mtaSts: the agent serves MTA-STS policies on a socket Postfix shares, relay-init
/// and the operator name the same socket, and the namespace's default TlsCompliance
/// (every destination honours MTA-STS) is created and accepted by the API server.
#[tokio::test]
#[ignore = "needs helm and a real API server: scripts/test-cluster.sh -- cargo test --test chart -- --ignored"]
async fn mta_sts_is_served_to_postfix_and_honoured_by_default() {
    in_namespace("chart-mta-sts", |client, ns| async move {
        let yaml = template(&ns, &["relay.enabled=true,relay.mtaSts.recheck=5m"]);
        let (applied, unserved) = dry_run(&client, &yaml, &ns).await;
        assert!(unserved.is_empty(), "{unserved:?}");
        assert!(applied.iter().any(|k| k == "TlsCompliance"), "{applied:?}");
        let docs = documents(&yaml);
        let policy = docs
            .iter()
            .find(|d| d["kind"] == "TlsCompliance")
            .expect("default policy");
        assert_eq!(policy["metadata"]["namespace"], ns.as_str());
        assert_eq!(policy["spec"]["scope"], "Unlisted");
        assert_eq!(policy["spec"]["mechanisms"][0], "MtaSts");
        let socket = "/run/mailtls-sts/mta-sts.sock";
        let relay = docs
            .iter()
            .find(|d| d["kind"] == "StatefulSet")
            .expect("relay");
        let pod = &relay["spec"]["template"]["spec"];
        let agent = container_args(pod, "relay-agent");
        assert!(
            agent.contains(&format!("--mta-sts-listen=unix:{socket}").as_str()),
            "{agent:?}"
        );
        assert!(agent.contains(&"--mta-sts-recheck=5m"), "{agent:?}");
        let init = pod["initContainers"][0]["args"]
            .as_array()
            .expect("init args");
        assert!(
            init.iter()
                .any(|a| a == format!("--mta-sts-socket={socket}").as_str()),
            "{init:?}"
        );
        let operator = docs
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("operator");
        let op_args = container_args(&operator["spec"]["template"]["spec"], "operator");
        assert!(
            op_args.contains(&format!("--mta-sts-socket={socket}").as_str()),
            "{op_args:?}"
        );
        // Postfix and the agent share the socket's directory.
        for c in ["postfix", "relay-agent"] {
            let container = pod["containers"]
                .as_array()
                .expect("containers")
                .iter()
                .find(|x| x["name"] == c)
                .expect(c);
            let mounts = container["volumeMounts"].as_array().expect("mounts");
            assert!(
                mounts
                    .iter()
                    .any(|m| m["name"] == "mta-sts" && m["mountPath"] == "/run/mailtls-sts"),
                "{c}: {mounts:?}"
            );
        }
        assert!(
            pod["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .any(|v| v["name"] == "mta-sts" && v["emptyDir"].is_object())
        );

        // Declared by the user instead: the server stays, the policy goes.
        let own = template(
            &ns,
            &["relay.enabled=true,relay.mtaSts.defaultPolicy=false"],
        );
        assert!(!documents(&own).iter().any(|d| d["kind"] == "TlsCompliance"));
        assert!(own.contains("--mta-sts-listen="));
        // Off: neither (a configuration honouring MTA-STS is then refused by the agent).
        let off = template(&ns, &["relay.enabled=true,relay.mtaSts.enabled=false"]);
        assert!(!documents(&off).iter().any(|d| d["kind"] == "TlsCompliance"));
        assert!(!off.contains("--mta-sts-listen=") && !off.contains("name: mta-sts"));
    })
    .await;
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
        assert_eq!(applied.iter().filter(|k| *k == "Deployment").count(), 1, "the operator");
        assert_eq!(applied.iter().filter(|k| *k == "StatefulSet").count(), 1, "the relay");
        for kind in ["Role", "RoleBinding", "PodDisruptionBudget"] {
            assert!(applied.iter().any(|k| k == kind), "{kind} missing from {applied:?}");
        }
        assert_eq!(unserved, ["ServiceMonitor", "ServiceMonitor"], "only the Prometheus Operator's kind is not served here (the operator's and the relays')");
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
    // Pods that are not Ready (no configuration applied, or one refused) are asked too.
    assert_eq!(service["spec"]["publishNotReadyAddresses"], true);
    let port = &service["spec"]["ports"][0];
    assert_eq!(
        (port["name"].as_str(), port["targetPort"].as_str()),
        (Some("status"), Some("status"))
    );
    let relay = docs
        .iter()
        .find(|d| {
            d["kind"] == "StatefulSet"
                && d["metadata"]["labels"]["app.kubernetes.io/component"] == "relay"
        })
        .expect("the relay StatefulSet");
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

/// The relay's own settings become relay-init flags, the queue a PVC per pod, the
/// certificate a mounted Secret (and a cert-manager Certificate), and the NetworkPolicy
/// admits port 25 only from the allowed clients; accepted by the API server.
#[tokio::test]
#[ignore = "needs helm and a real API server: scripts/test-cluster.sh -- cargo test --test chart -- --ignored"]
async fn relay_values_reach_the_pod_and_are_accepted() {
    in_namespace("chart-relay", |client, ns| async move {
        let yaml = template(&ns, &[
            "relay.enabled=true,relay.clientCIDRs={10.244.0.0/16,fd00:10::/64},relay.hostname=relay.example.com",
            "relay.tls.certManager.issuerRef.name=letsencrypt,relay.tls.certManager.issuerRef.kind=ClusterIssuer",
            "relay.inbound.domains={example.com,example.org},relay.inbound.nextHop=mx.corp.internal:2525",
            "relay.inbound.from={198.51.100.0/24},relay.networkPolicy.enabled=true",
            "relay.persistence.size=5Gi,relay.persistence.storageClass=fast,relay.terminationGracePeriodSeconds=120",
            "relay.tlsReports.enabled=true,relay.tlsReports.organization=Example Corp,relay.tlsReports.contact=tls@example.com,relay.tlsReports.at=02:30",
        ]);
        let (applied, unserved) = dry_run(&client, &yaml, &ns).await;
        assert_eq!(unserved, ["Certificate"], "only cert-manager's kind is not served here");
        for kind in ["StatefulSet", "NetworkPolicy", "Service"] {
            assert!(applied.iter().any(|k| k == kind), "{kind} missing from {applied:?}");
        }
        let docs = documents(&yaml);
        let find = |kind: &str| {
            docs.iter()
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == "mailtls-relay")
                .unwrap_or_else(|| panic!("{kind} mailtls-relay"))
        };
        let sts = find("StatefulSet");
        let pod = &sts["spec"]["template"]["spec"];
        let init = &pod["initContainers"][0];
        assert_eq!(init["name"], "relay-init");
        let args: Vec<&str> = init["args"].as_array().expect("args").iter().filter_map(|a| a.as_str()).collect();
        for want in [
            "--client-cidr=10.244.0.0/16",
            "--client-cidr=fd00:10::/64",
            "--hostname=relay.example.com",
            "--tls-cert=/etc/mailtls/tls/tls.crt",
            "--tls-key=/etc/mailtls/tls/tls.key",
            "--inbound-domain=example.com",
            "--inbound-domain=example.org",
            "--inbound-next-hop=mx.corp.internal:2525",
        ] {
            assert!(args.contains(&want), "{want} missing from {args:?}");
        }
        // The queue: a claim per pod; the grace period leaves the drain 10 s to spare.
        let claim = &sts["spec"]["volumeClaimTemplates"][0];
        assert_eq!(claim["metadata"]["name"], "queue");
        assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "5Gi");
        assert_eq!(claim["spec"]["storageClassName"], "fast");
        assert_eq!(pod["terminationGracePeriodSeconds"], 120);
        let postfix = &pod["containers"][0];
        assert_eq!(
            postfix["lifecycle"]["preStop"]["exec"]["command"][3],
            "--within=110s"
        );
        // The agent: ready only once a policy is applied; reloads on a renewed certificate.
        let agent = pod["containers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "relay-agent"))
            .expect("relay-agent");
        assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
        let agent_args: Vec<&str> = agent["args"].as_array().expect("args").iter().filter_map(|a| a.as_str()).collect();
        for want in [
            "--tls-dir=/etc/mailtls/tls",
            "--tls-rpt-organization=Example Corp",
            "--tls-rpt-contact=tls@example.com",
            "--tls-rpt-at=02:30",
            "--tls-rpt-state=/var/spool/postfix/mailtls-tls-rpt-sent",
        ] {
            assert!(agent_args.contains(&want), "{want} missing from {agent_args:?}");
        }
        // Two days of TLS sessions kept for the reports: room for them.
        assert_eq!(agent["resources"]["limits"]["memory"], "192Mi");
        let tls_volume = pod["volumes"].as_array().expect("volumes").iter()
            .find(|v| v["name"] == "tls").expect("tls volume");
        assert_eq!(tls_volume["secret"]["secretName"], "mailtls-relay-tls");
        let cert = find("Certificate");
        assert_eq!(cert["spec"]["secretName"], "mailtls-relay-tls");
        assert_eq!(cert["spec"]["dnsNames"][0], "relay.example.com");
        assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
        // Port 25 from the clients and the inbound senders only; status from the operator.
        let policy = find("NetworkPolicy");
        let rules = policy["spec"]["ingress"].as_array().expect("ingress");
        let smtp_from: Vec<&str> = rules[0]["from"].as_array().expect("from").iter()
            .filter_map(|f| f["ipBlock"]["cidr"].as_str()).collect();
        assert_eq!(smtp_from, ["10.244.0.0/16", "fd00:10::/64", "198.51.100.0/24"]);
        assert_eq!(rules[0]["ports"][0]["port"], "smtp");
        assert_eq!(rules[1]["ports"][0]["port"], "status");
        assert_eq!(rules[1]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"], "operator");

        // Defaults: nobody but the pod relays, no STARTTLS, and no port 25 rule at all.
        let yaml = template(&ns, &["relay.enabled=true,relay.networkPolicy.enabled=true,relay.persistence.enabled=false"]);
        let docs = documents(&yaml);
        let policy = docs.iter().find(|d| d["kind"] == "NetworkPolicy").expect("NetworkPolicy");
        let rules = policy["spec"]["ingress"].as_array().expect("ingress");
        assert_eq!(rules.len(), 1, "only the status port: {rules:?}");
        let sts = docs.iter().find(|d| d["kind"] == "StatefulSet").expect("StatefulSet");
        assert!(sts["spec"]["volumeClaimTemplates"].is_null());
        assert!(yaml.contains("emptyDir"));
        assert!(!yaml.contains("--tls-cert"));
        assert!(!yaml.contains("--tls-rpt"), "TLS reports are opt-in");
        let (_, unserved) = dry_run(&client, &yaml, &ns).await;
        assert!(unserved.is_empty(), "{unserved:?}");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs helm and a real API server: scripts/test-cluster.sh -- cargo test --test chart -- --ignored"]
async fn deploy_manifests_match_the_chart_and_are_accepted() {
    let deploy = std::fs::read_to_string(root().join("deploy/20-mailtls.yaml"))
        .expect("deploy/20-mailtls.yaml");
    // As scripts/gen-deploy.sh renders it.
    let fresh = template(
        "mailtls",
        &["relay.enabled=true,relay.dnssec.enabled=false"],
    );
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
    assert_eq!(applied.iter().filter(|k| *k == "Deployment").count(), 1);
    assert_eq!(applied.iter().filter(|k| *k == "StatefulSet").count(), 1);
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
                observed_interval: std::time::Duration::from_secs(60),
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

/// The relay agent with exactly the chart's relay RBAC and no mounted copy at all: it
/// follows the controller's ConfigMap through the API after every edit, and its credentials
/// read nothing else. Prints the edit → applied latencies (BENCHMARKS.md; set
/// MAILTLS_PROPAGATION_EDITS for more samples); no timing is asserted.
#[tokio::test]
#[ignore = "needs helm and a real API server: scripts/test-cluster.sh -- cargo test --test chart -- --ignored"]
async fn the_relay_agent_follows_its_config_map_with_the_charts_relay_rbac() {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use mailtls::api::{AddressList, TlsCompliance};
    in_namespace("relay-api", |admin, ns| async move {
        let rendered = template(&ns, &["relay.enabled=true"]);
        let relay_rbac: Vec<Value> = documents(&rendered)
            .into_iter()
            .filter(|d| {
                ["ServiceAccount", "Role", "RoleBinding"]
                    .contains(&d["kind"].as_str().unwrap_or_default())
                    && d["metadata"]["labels"]["app.kubernetes.io/component"] == "relay"
            })
            .collect();
        assert_eq!(relay_rbac.len(), 3, "{relay_rbac:#?}");
        let relay_rbac: String = relay_rbac
            .iter()
            .map(|d| format!("---\n{}", serde_norway::to_string(d).expect("yaml")))
            .collect();
        apply_for_real(&admin, &relay_rbac, &ns).await;
        let account = format!("system:serviceaccount:{ns}:mailtls-relay");
        let groups = vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".to_string(),
        ];

        // What the relay's credentials reach: its ConfigMap, read only; nothing else.
        let mut config = common::cluster::config().await;
        config.auth_info.impersonate = Some(account.clone());
        config.auth_info.impersonate_groups = Some(groups.clone());
        let as_relay = Client::try_from(config).expect("client");
        let admin_cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
        for name in ["mailtls-relay", "other"] {
            admin_cms
                .patch(
                    name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(config_map(name)),
                )
                .await
                .expect("ConfigMap");
        }
        let cms: Api<ConfigMap> = Api::namespaced(as_relay.clone(), &ns);
        assert!(cms.get("mailtls-relay").await.is_ok(), "its own ConfigMap");
        assert_eq!(code(cms.get("other").await), 403);
        assert_eq!(code(cms.list(&Default::default()).await), 403);
        assert_eq!(
            code(
                cms.patch(
                    "mailtls-relay",
                    &PatchParams::apply("x"),
                    &Patch::Apply(config_map("mailtls-relay"))
                )
                .await
            ),
            403
        );
        let secrets: Api<Secret> = Api::namespaced(as_relay.clone(), &ns);
        assert_eq!(code(secrets.list(&Default::default()).await), 403);
        admin_cms
            .delete("mailtls-relay", &Default::default())
            .await
            .expect("delete");

        // A kubeconfig that acts as the relay's ServiceAccount, for the agent process.
        let admin_path = std::env::var("MAILTLS_TEST_KUBECONFIG").expect("kubeconfig");
        let mut kubeconfig: Value =
            serde_norway::from_str(&std::fs::read_to_string(&admin_path).expect("read kubeconfig"))
                .expect("kubeconfig yaml");
        for user in kubeconfig["users"].as_array_mut().expect("users") {
            user["user"]["as"] = Value::from(account.clone());
            user["user"]["as-groups"] = Value::from(groups.clone());
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let kubeconfig_path = tmp.path().join("relay.kubeconfig");
        std::fs::write(
            &kubeconfig_path,
            serde_norway::to_string(&kubeconfig).expect("yaml"),
        )
        .expect("write");

        let etc = tmp.path().join("etc");
        common::private_postfix_config(&etc);
        let maps = etc.join("mailtls");
        let volume = tmp.path().join("volume");
        std::fs::create_dir_all(&volume).expect("volume");
        let render = mailtls::render::RenderOptions {
            config_dir: maps.to_string_lossy().into_owned(),
            postfix_version: "3.7".parse().expect("version"),
            ..Default::default()
        };
        let settings = mailtls::controller::Settings {
            namespaces: vec![ns.clone()],
            config_map: "mailtls-relay".into(),
            render: render.clone(),
            metrics_addr: None,
            leader_election: None,
            instance: Some("relay-api".into()),
            tests: None,
            relays: None,
        };
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let controller = tokio::spawn(mailtls::controller::run(admin.clone(), settings, shutdown));
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _agent = Kill(
            Command::new(env!("CARGO_BIN_EXE_mailtls"))
                .arg("relay-agent")
                .arg("--watch-dir")
                .arg(&volume)
                .arg("--postfix-dir")
                .arg(&etc)
                .arg("--maps-dir")
                .arg(&maps)
                .args(["--configmap", "mailtls-relay", "--namespace", &ns])
                .arg("--api-dir")
                .arg(tmp.path().join("api"))
                .env("KUBECONFIG", &kubeconfig_path)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("relay-agent"),
        );
        let installed = || {
            std::fs::read_to_string(maps.join("manifest.json"))
                .ok()
                .and_then(|m| serde_json::from_str::<Value>(&m).ok())
                .and_then(|m| m["hash"].as_str().map(str::to_string))
        };

        let lists: Api<AddressList> = Api::namespaced(admin.clone(), &ns);
        let policies: Api<TlsCompliance> = Api::namespaced(admin.clone(), &ns);
        common::cluster::apply(
            &policies,
            &TlsCompliance::outbound_verified("partners", &["partners"]),
        )
        .await;
        let edits: usize = std::env::var("MAILTLS_PROPAGATION_EDITS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(5);
        let mut latencies = Vec::new();
        for i in 0..=edits {
            let entries: Vec<String> = (0..=i).map(|n| format!("partner{n}.example")).collect();
            let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
            let list = AddressList::with_entries("partners", &refs);
            let inputs = mailtls::policy::Inputs {
                namespace: ns.clone(),
                address_lists: vec![list.clone()],
                policies: vec![TlsCompliance::outbound_verified("partners", &["partners"])],
                gateways: vec![],
            };
            let want =
                mailtls::render::render(&mailtls::policy::evaluate(&inputs).policy, &render).hash;
            let started = std::time::Instant::now();
            common::cluster::apply(&lists, &list).await;
            let deadline = started + common::cluster::TIMEOUT;
            while installed().as_deref() != Some(want.as_str()) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "edit {i} not applied by the agent; installed {:?}",
                    installed()
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            // The first one includes the agent's start.
            if i > 0 {
                latencies.push(started.elapsed());
            }
        }
        assert!(
            std::fs::read_dir(&volume).expect("volume").next().is_none(),
            "applied through the API, not the volume"
        );
        latencies.sort();
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)];
        eprintln!(
            "propagation edit -> relay applied over {} edits: p50 {:?}, p99 {:?}, max {:?}",
            latencies.len(),
            at(0.5),
            at(0.99),
            latencies.last().expect("samples")
        );
        let _ = stop.send(true);
        let _ = tokio::time::timeout(common::cluster::TIMEOUT, controller).await;
    })
    .await;
}
