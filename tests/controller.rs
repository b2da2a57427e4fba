//! The controller (`mailtls run`) in-process against a real API server.
//!
//! Run with `scripts/test-cluster.sh -- cargo test --test controller -- --ignored`; without
//! `MAILTLS_TEST_KUBECONFIG` an ignored run fails. Each test has its own namespace and its
//! controller watches only that namespace; every wait is on a watched condition with a
//! timeout.

mod common;

use common::cluster::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use kube::{Client, Resource, ResourceExt};
use mailtls::api::{AddressList, Condition, OutboundGateway, TlsCompliance};
use mailtls::controller::{HASH_ANNOTATION, LeaseSettings, Settings};
use mailtls::policy::{Inputs, evaluate};
use mailtls::render::{RenderOptions, render};
use serde_json::json;
use std::collections::BTreeMap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const CM: &str = "mailtls-relay";

/// A controller running in this process.
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn start(client: &Client, ns: &str, lease_identity: Option<&str>) -> Running {
        let settings = Settings {
            namespaces: vec![ns.to_string()],
            config_map: CM.into(),
            render: RenderOptions::default(),
            metrics_addr: None,
            leader_election: lease_identity.map(|id| LeaseSettings {
                name: "mailtls-controller".into(),
                namespace: ns.into(),
                identity: id.into(),
                duration: 4,
                grace: 1,
            }),
            instance: Some(lease_identity.unwrap_or("solo").to_string()),
            tests: None,
            relays: None,
        };
        Running::start_with(client, settings)
    }

    fn start_with(client: &Client, settings: Settings) -> Running {
        // The controller's logs, shown for failing tests (RUST_LOG picks the level).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(mailtls::controller::run(client.clone(), settings, shutdown));
        Running { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        match tokio::time::timeout(TIMEOUT, self.task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("controller did not stop cleanly: {other:?}"),
        }
    }
}

/// Waits until `check` holds for the named object (or its absence), with the timeout.
async fn wait_for<K, F>(api: &Api<K>, name: &str, what: &str, check: F) -> Option<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(Option<&K>) -> bool + Send,
{
    match tokio::time::timeout(TIMEOUT, await_condition(api.clone(), name, check)).await {
        Ok(Ok(obj)) => obj,
        Ok(Err(e)) => panic!("watching {name}: {e}"),
        Err(_) => panic!(
            "{name}: not {what} after {TIMEOUT:?}; now: {:#?}",
            api.get_opt(name).await.ok().flatten()
        ),
    }
}

/// Waits until `check` holds (polled), with the timeout.
async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not {what} after {TIMEOUT:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn hash_of(cm: Option<&ConfigMap>) -> Option<String> {
    cm?.metadata
        .annotations
        .as_ref()?
        .get(HASH_ANNOTATION)
        .cloned()
}

async fn wait_for_hash(client: &Client, ns: &str, want: &str) -> ConfigMap {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    wait_for(&api, CM, &format!("at hash {want}"), |cm| {
        hash_of(cm).as_deref() == Some(want)
    })
    .await
    .expect("the ConfigMap")
}

fn conditions_of<K: serde::Serialize>(r: &K) -> Vec<Condition> {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.get("status")?.get("conditions").cloned())
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default()
}

fn observed_generation<K: serde::Serialize>(r: &K) -> Option<i64> {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.get("status")?.get("observedGeneration")?.as_i64())
}

/// The condition `type_` of `r` says `status` for `r`'s current generation.
fn has_condition<K: serde::Serialize + Resource>(r: Option<&K>, type_: &str, status: &str) -> bool {
    let Some(r) = r else { return false };
    let generation = r.meta().generation;
    observed_generation(r) == generation
        && conditions_of(r)
            .iter()
            .any(|c| c.type_ == type_ && c.status == status && c.observed_generation == generation)
}

async fn wait_condition<K>(client: &Client, ns: &str, name: &str, type_: &str, status: &str) -> K
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    wait_for(&api, name, &format!("{type_}={status}"), |r| {
        has_condition(r, type_, status)
    })
    .await
    .expect("the resource")
}

/// What the controller must render for these resources.
fn expected_hash(
    ns: &str,
    lists: &[AddressList],
    policies: &[TlsCompliance],
    gateways: &[OutboundGateway],
) -> String {
    let inputs = Inputs {
        namespace: ns.into(),
        address_lists: lists.to_vec(),
        policies: policies.to_vec(),
        gateways: gateways.to_vec(),
    };
    render(&evaluate(&inputs).policy, &RenderOptions::default()).hash
}

async fn events_in(client: &Client, ns: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("listing Events")
        .items
}

/// Events are sent after the writes they describe: poll (bounded by TIMEOUT) until `enough`
/// holds for them, then return them, so a test can also check that no more arrived.
async fn events_when(client: &Client, ns: &str, enough: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let events = events_in(client, ns).await;
        if enough(&events) || tokio::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

// ---- tests -----------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test controller -- --ignored"]
async fn examples_render_into_the_config_map_and_every_resource_becomes_ready() {
    in_namespace("ctl-examples", |client, ns| async move {
        let docs = yaml_documents("examples").expect("examples/");
        let (loaded, errors) = mailtls::cli::load::load(
            &[std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")],
            "default",
        );
        assert!(errors.is_empty(), "examples/ load errors");
        let mut inputs = loaded.namespaces.get("default").cloned().expect("examples");
        inputs.namespace = ns.clone();
        let config = render(&evaluate(&inputs).policy, &RenderOptions::default());

        let controller = Running::start(&client, &ns, None);
        let mut names = Vec::new();
        for (_, doc) in docs {
            names.push(apply_doc(&client, &ns, &doc).await);
        }

        let cm = wait_for_hash(&client, &ns, &config.hash).await;
        let data = cm.data.clone().unwrap_or_default();
        for (file, content) in &config.files {
            if file != mailtls::render::MANIFEST {
                assert_eq!(
                    data.get(file),
                    Some(content),
                    "{file} differs from `mailtls render`"
                );
            }
        }
        assert_eq!(
            cm.labels()
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("mailtls")
        );
        let managers: Vec<_> = cm
            .managed_fields()
            .iter()
            .filter_map(|m| m.manager.clone())
            .collect();
        assert_eq!(managers, ["mailtls"]);

        for (kind, name) in &names {
            match kind.as_str() {
                "AddressList" => {
                    wait_condition::<AddressList>(&client, &ns, name, "Ready", "True").await;
                }
                "TlsCompliance" => {
                    let p =
                        wait_condition::<TlsCompliance>(&client, &ns, name, "Ready", "True").await;
                    let relay = p.status.and_then(|s| s.relay_config).expect("relayConfig");
                    assert_eq!(
                        (relay.name.as_str(), relay.hash.as_str()),
                        (CM, config.hash.as_str())
                    );
                }
                _ => {
                    wait_condition::<OutboundGateway>(&client, &ns, name, "Ready", "True").await;
                }
            }
        }
        let has = |reason: &'static str| {
            move |e: &[Event]| e.iter().any(|e| e.reason.as_deref() == Some(reason))
        };
        let rendered: Vec<Event> = events_when(&client, &ns, has("Rendered"))
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Rendered"))
            .collect();
        assert_eq!(
            rendered.len(),
            1,
            "one Rendered event per configuration change"
        );
        controller.stop().await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test controller -- --ignored"]
async fn editing_an_address_list_re_renders_with_a_new_hash() {
    in_namespace("ctl-edit", |client, ns| async move {
        let lists: Api<AddressList> = Api::namespaced(client.clone(), &ns);
        let policies: Api<TlsCompliance> = Api::namespaced(client.clone(), &ns);
        let controller = Running::start(&client, &ns, None);
        let partners = AddressList::with_entries("partners", &["example.com"]);
        let p = TlsCompliance::outbound_verified("partners", &["partners"]);
        apply(&lists, &partners).await;
        apply(&policies, &p).await;
        let first = expected_hash(&ns, &[partners], std::slice::from_ref(&p), &[]);
        wait_for_hash(&client, &ns, &first).await;

        let edited = AddressList::with_entries("partners", &["example.com", "new-partner.example"]);
        apply(&lists, &edited).await;
        let second = expected_hash(&ns, &[edited], &[p], &[]);
        assert_ne!(first, second);
        let cm = wait_for_hash(&client, &ns, &second).await;
        let tls_policy = cm
            .data
            .unwrap_or_default()
            .remove("tls_policy")
            .unwrap_or_default();
        assert!(tls_policy.contains("new-partner.example"), "{tls_policy}");
        let l = wait_condition::<AddressList>(&client, &ns, "partners", "Ready", "True").await;
        assert_eq!(l.status.map(|s| s.domains), Some(2));
        let p = wait_for(
            &policies,
            "partners",
            "pointing at the new hash",
            |p: Option<&TlsCompliance>| {
                p.and_then(|p| p.status.as_ref()?.relay_config.as_ref())
                    .is_some_and(|r| r.hash == second)
            },
        )
        .await
        .expect("policy");
        assert_eq!(observed_generation(&p), Some(1));
        controller.stop().await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test controller -- --ignored"]
async fn two_all_mail_gateways_get_a_conflict_condition() {
    in_namespace("ctl-conflict", |client, ns| async move {
        let gateways: Api<OutboundGateway> = Api::namespaced(client.clone(), &ns);
        apply(
            &gateways,
            &OutboundGateway::all_mail("gw-a", "a.example.net"),
        )
        .await;
        apply(
            &gateways,
            &OutboundGateway::all_mail("gw-b", "b.example.net"),
        )
        .await;
        let controller = Running::start(&client, &ns, None);

        let a = wait_condition::<OutboundGateway>(&client, &ns, "gw-a", "Conflict", "True").await;
        let b = wait_condition::<OutboundGateway>(&client, &ns, "gw-b", "Conflict", "True").await;
        let message = |g: &OutboundGateway| {
            conditions_of(g)
                .into_iter()
                .find(|c| c.type_ == "Conflict")
                .map(|c| c.message)
                .unwrap_or_default()
        };
        assert!(
            message(&a).contains("OutboundGateway/gw-b"),
            "{}",
            message(&a)
        );
        assert!(
            message(&b).contains("OutboundGateway/gw-a"),
            "{}",
            message(&b)
        );
        // Same creation second is possible: then the name decides, and gw-a wins either way.
        assert!(has_condition(Some(&a), "Ready", "True"));
        let b = wait_condition::<OutboundGateway>(&client, &ns, "gw-b", "Ready", "False").await;
        let ready = conditions_of(&b).into_iter().find(|c| c.type_ == "Ready");
        assert_eq!(ready.map(|c| c.reason).as_deref(), Some("ConflictLost"));

        let cm = wait_for(
            &Api::<ConfigMap>::namespaced(client.clone(), &ns),
            CM,
            "rendered",
            |cm| hash_of(cm).is_some(),
        )
        .await
        .expect("ConfigMap");
        let main_cf = cm
            .data
            .unwrap_or_default()
            .remove("main.cf")
            .unwrap_or_default();
        assert!(main_cf.contains("relayhost = [a.example.net]"), "{main_cf}");
        let warnings: BTreeMap<String, usize> = events_when(&client, &ns, |e| {
            e.iter()
                .filter(|e| e.reason.as_deref() == Some("Conflict"))
                .count()
                >= 2
        })
        .await
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Conflict"))
        .fold(BTreeMap::new(), |mut m, e| {
            let name = e
                .regarding
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_default();
            *m.entry(name).or_default() += 1;
            m
        });
        assert_eq!(
            warnings,
            BTreeMap::from([("gw-a".to_string(), 1), ("gw-b".to_string(), 1)])
        );
        controller.stop().await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test controller -- --ignored"]
async fn deleting_everything_empties_the_config_map() {
    in_namespace("ctl-delete", |client, ns| async move {
        let lists: Api<AddressList> = Api::namespaced(client.clone(), &ns);
        let policies: Api<TlsCompliance> = Api::namespaced(client.clone(), &ns);
        let controller = Running::start(&client, &ns, None);
        let l = AddressList::with_entries("partners", &["example.com"]);
        let p = TlsCompliance::outbound_verified("partners", &["partners"]);
        apply(&lists, &l).await;
        apply(&policies, &p).await;
        wait_for_hash(&client, &ns, &expected_hash(&ns, &[l], &[p], &[])).await;

        lists
            .delete("partners", &DeleteParams::default())
            .await
            .expect("delete");
        policies
            .delete("partners", &DeleteParams::default())
            .await
            .expect("delete");
        let cm = wait_for_hash(&client, &ns, &expected_hash(&ns, &[], &[], &[])).await;
        let data = cm.data.unwrap_or_default();
        for table in ["tls_policy", "transport", "sender_access"] {
            let text = data.get(table).map(String::as_str).unwrap_or_default();
            assert!(
                text.lines().all(|l| l.is_empty() || l.starts_with('#')),
                "{table} still has entries:\n{text}"
            );
        }
        controller.stop().await;
    })
    .await;
}

/// `prefix/name` → resourceVersion of every object of one kind in `ns`.
async fn versions_of<K>(client: &Client, ns: &str, prefix: &str, out: &mut BTreeMap<String, String>)
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let items = Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("listing {prefix}: {e}"));
    for o in items {
        out.insert(
            format!("{prefix}/{}", o.name_any()),
            o.resource_version().unwrap_or_default(),
        );
    }
}

/// resourceVersion of every object the controller writes.
async fn versions(client: &Client, ns: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    versions_of::<AddressList>(client, ns, "al", &mut out).await;
    versions_of::<TlsCompliance>(client, ns, "tlsc", &mut out).await;
    versions_of::<OutboundGateway>(client, ns, "ogw", &mut out).await;
    if let Some(cm) = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(CM)
        .await
        .expect("cm")
    {
        out.insert("cm".into(), cm.resource_version().unwrap_or_default());
    }
    out
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test controller -- --ignored"]
async fn status_survives_a_restart_without_rewriting_unchanged_objects() {
    in_namespace("ctl-restart", |client, ns| async move {
        let lists: Api<AddressList> = Api::namespaced(client.clone(), &ns);
        let policies: Api<TlsCompliance> = Api::namespaced(client.clone(), &ns);
        let gateways: Api<OutboundGateway> = Api::namespaced(client.clone(), &ns);
        apply(
            &lists,
            &AddressList::with_entries("partners", &["example.com", "alice@example.org"]),
        )
        .await;
        apply(
            &policies,
            &TlsCompliance::outbound_verified("partners", &["partners"]),
        )
        .await;
        apply(
            &gateways,
            &OutboundGateway::all_mail("smarthost", "relay.example.net"),
        )
        .await;
        let first = Running::start(&client, &ns, None);
        wait_condition::<AddressList>(&client, &ns, "partners", "Ready", "True").await;
        let before_policy =
            wait_condition::<TlsCompliance>(&client, &ns, "partners", "Ready", "True").await;
        wait_condition::<OutboundGateway>(&client, &ns, "smarthost", "Ready", "True").await;
        first.stop().await;
        let before = versions(&client, &ns).await;

        let second = Running::start(&client, &ns, None);
        // A new, unreferenced list: once it is Ready the namespace was reconciled after the
        // restart (the startup pass or this change), with every other object in view.
        apply(
            &lists,
            &AddressList::with_entries("unused", &["unused.example"]),
        )
        .await;
        wait_condition::<AddressList>(&client, &ns, "unused", "Ready", "True").await;
        let mut after = versions(&client, &ns).await;
        after.remove("al/unused");
        assert_eq!(
            before, after,
            "unchanged objects were rewritten after a restart"
        );
        let after_policy = policies.get("partners").await.expect("policy");
        assert_eq!(
            conditions_of(&before_policy),
            conditions_of(&after_policy),
            "conditions (and their transition times) survive the restart"
        );
        second.stop().await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test controller -- --ignored"]
async fn with_leader_election_only_the_leader_writes() {
    in_namespace("ctl-leader", |client, ns| async move {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let holder = |want: &'static str| {
            move |l: Option<&Lease>| {
                l.and_then(|l| l.spec.as_ref()?.holder_identity.as_deref()) == Some(want)
            }
        };
        let a = Running::start(&client, &ns, Some("instance-a"));
        wait_for(
            &leases,
            "mailtls-controller",
            "held by instance-a",
            holder("instance-a"),
        )
        .await;
        let b = Running::start(&client, &ns, Some("instance-b"));

        let lists: Api<AddressList> = Api::namespaced(client.clone(), &ns);
        let policies: Api<TlsCompliance> = Api::namespaced(client.clone(), &ns);
        let l = AddressList::with_entries("partners", &["example.com"]);
        let p = TlsCompliance::outbound_verified("partners", &["partners"]);
        apply(&lists, &l).await;
        apply(&policies, &p).await;
        wait_for_hash(
            &client,
            &ns,
            &expected_hash(&ns, &[l], std::slice::from_ref(&p), &[]),
        )
        .await;
        wait_condition::<TlsCompliance>(&client, &ns, "partners", "Ready", "True").await;
        let instances = |events: Vec<Event>| {
            events
                .into_iter()
                .filter_map(|e| e.reporting_instance)
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert_eq!(
            instances(events_when(&client, &ns, |e| !e.is_empty()).await),
            ["instance-a".to_string()].into()
        );
        let lease = leases.get("mailtls-controller").await.expect("lease");
        assert_eq!(
            lease.spec.and_then(|s| s.holder_identity).as_deref(),
            Some("instance-a")
        );

        // The leader steps down (releasing the lease); the standby takes over and writes.
        a.stop().await;
        wait_for(
            &leases,
            "mailtls-controller",
            "held by instance-b",
            holder("instance-b"),
        )
        .await;
        let edited = AddressList::with_entries("partners", &["example.com", "other.example"]);
        apply(&lists, &edited).await;
        wait_for_hash(&client, &ns, &expected_hash(&ns, &[edited], &[p], &[])).await;
        let by_b = events_when(&client, &ns, |e| {
            e.iter()
                .any(|e| e.reporting_instance.as_deref() == Some("instance-b"))
        })
        .await
        .into_iter()
        .filter(|e| e.reporting_instance.as_deref() == Some("instance-b"))
        .count();
        assert_eq!(by_b, 1, "the new leader recorded the re-render");
        b.stop().await;
    })
    .await;
}

/// One plain HTTP/1.0 GET against the metrics server: (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test controller -- --ignored"]
async fn metrics_health_and_readiness_are_served() {
    in_namespace("ctl-metrics", |client, ns| async move {
        // A free port: bind, read it, release it for the controller.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let lists: Api<AddressList> = Api::namespaced(client.clone(), &ns);
        let l = AddressList::with_entries("partners", &["example.com"]);
        apply(&lists, &l).await;
        let settings = Settings {
            namespaces: vec![ns.clone()],
            config_map: CM.into(),
            render: RenderOptions::default(),
            metrics_addr: Some(addr),
            leader_election: None,
            instance: None,
            tests: None,
            relays: None,
        };
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(mailtls::controller::run(client.clone(), settings, shutdown));
        wait_condition::<AddressList>(&client, &ns, "partners", "Ready", "True").await;

        assert_eq!(http_get(addr, "/healthz").await.expect("healthz").0, 200);
        assert_eq!(http_get(addr, "/readyz").await.expect("readyz").0, 200);
        let wanted = [
            format!("mailtls_reconciles_total{{namespace=\"{ns}\"}}"),
            "mailtls_reconcile_duration_seconds_bucket".to_string(),
            format!("mailtls_render_size_bytes{{namespace=\"{ns}\"}}"),
            "mailtls_api_writes_total{object=\"configmap\"} 1".to_string(),
            "mailtls_api_writes_total{object=\"state\"} 1".to_string(),
            format!("mailtls_resource_ready{{namespace=\"{ns}\",kind=\"AddressList\",name=\"partners\"}} 1"),
        ];
        // The statuses are written inside the reconcile and its count only after it
        // returns: Ready can be seen a moment before the counter moves.
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let (code, metrics) = http_get(addr, "/metrics").await.expect("metrics");
            assert_eq!(code, 200);
            let missing: Vec<&String> = wanted.iter().filter(|w| !metrics.contains(*w)).collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {missing:?} in:\n{metrics}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }

        let _ = stop.send(true);
        tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("stopped in time")
            .expect("task")
            .expect("clean shutdown");
        assert!(
            http_get(addr, "/healthz").await.is_err(),
            "the server is gone after shutdown"
        );
    })
    .await;
}

/// A relay agent process (real Postfix tools, a private config directory).
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A network namespace of this test, joined to this one by a veth pair with a /30 from
/// 198.18.0.0/15 (RFC 2544 benchmarking, never routed) that this machine does not use:
/// `.1` here, `.2` inside. EndpointSlices refuse loopback addresses, so the relay agents
/// listen in there; deleted on drop.
struct PeerNamespace {
    name: String,
    link: String,
    /// The address inside.
    there: String,
}

impl PeerNamespace {
    /// `None` without root (network namespaces need it).
    fn create() -> Option<PeerNamespace> {
        if !is_root() {
            return None;
        }
        let used = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let taken = used(&["-4", "addr"]) + &used(&["-4", "route", "show", "table", "all"]);
        let net = (0..=255)
            .map(|n| format!("198.18.{n}."))
            .find(|prefix| !taken.contains(prefix.as_str()))
            .expect("a free /24 in 198.18.0.0/16");
        let id = std::process::id() % 100_000;
        let ns = PeerNamespace {
            name: format!("mailtls-ctl-{id}"),
            link: format!("mtls{id}"),
            there: format!("{net}2"),
        };
        let peer = format!("{}p", ns.link);
        let here = format!("{net}1/30");
        let there = format!("{net}2/30");
        for args in [
            vec!["netns", "add", &ns.name],
            vec![
                "link", "add", &ns.link, "type", "veth", "peer", "name", &peer,
            ],
            vec!["link", "set", &peer, "netns", &ns.name],
            vec!["addr", "add", &here, "dev", &ns.link],
            vec!["link", "set", &ns.link, "up"],
            vec!["-n", &ns.name, "addr", "add", &there, "dev", &peer],
            vec!["-n", &ns.name, "link", "set", &peer, "up"],
            vec!["-n", &ns.name, "link", "set", "lo", "up"],
        ] {
            let out = std::process::Command::new("ip")
                .args(&args)
                .output()
                .expect("ip");
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        }
        Some(ns)
    }
}

impl Drop for PeerNamespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes the peer, and with it the pair.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The ConfigMap's keys written into `cm/<version>` and published as kubelet does.
fn mount(cm: &ConfigMap, dir: &std::path::Path, version: &str) {
    let target = dir.join(version);
    std::fs::create_dir_all(&target).expect("version dir");
    for (name, text) in cm.data.iter().flatten() {
        std::fs::write(target.join(name), text).expect("data key");
    }
    for (name, bytes) in cm.binary_data.iter().flatten() {
        std::fs::write(target.join(name), &bytes.0).expect("binaryData key");
    }
    common::kubelet_swap(dir, version);
}

/// An EndpointSlice of the relay-status Service, as the EndpointSlice controller would
/// write it (none runs here). Relay pods normally share one slice and one port; here every
/// agent has a port of its own, so each pod gets its own slice.
fn relay_slice(
    name: &str,
    address: &str,
    port: u16,
) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": format!("relay-status-{name}"),
                     "labels": {"app": "relay-status-under-test"}},
        "addressType": "IPv4",
        "ports": [{"name": "status", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "name": name}}],
    }))
    .expect("endpoint slice")
}

/// A policy large enough that its maps go into the ConfigMap compressed; the controller's
/// ConfigMap, mounted as kubelet would, is applied by a real relay agent, and the policy's
/// status counts the relay pods at its hash (one agent answers, one pod has none).
#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test controller -- --ignored"]
async fn a_compressed_configuration_reaches_the_relay_agent_and_its_pod_is_counted() {
    let Some(peer) = PeerNamespace::create() else {
        common::skip::skip("needs root (a network namespace for the relay agents)");
        return;
    };
    let (peer_name, there) = (peer.name.clone(), peer.there.clone());
    in_namespace("ctl-relays", |client, ns| async move {
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        let tmp = tempfile::tempdir().expect("tempdir");
        let etc = tmp.path().join("etc");
        common::private_postfix_config(&etc);
        let maps = etc.join("mailtls");
        let cm_dir = tmp.path().join("configmap");
        std::fs::create_dir_all(&cm_dir).expect("configmap dir");

        // The relay pods: relay-a's agent runs below, relay-b's port has nobody behind it.
        let (port_a, port_b) = (9090, 9091);
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        for (name, port) in [("relay-a", port_a), ("relay-b", port_b)] {
            apply(&slices, &relay_slice(name, &there, port)).await;
        }
        let mut agent = Agent(
            std::process::Command::new("ip")
                .args(["netns", "exec", &peer_name, env!("CARGO_BIN_EXE_mailtls")])
                .arg("relay-agent")
                .arg("--watch-dir")
                .arg(&cm_dir)
                .arg("--postfix-dir")
                .arg(&etc)
                .arg("--maps-dir")
                .arg(&maps)
                .args(["--status-addr", &format!("{there}:{port_a}")])
                .arg("--mail-log")
                .arg(tmp.path().join("maillog"))
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("start relay-agent"),
        );

        let entries: Vec<String> = (0..3000).map(|i| format!("partner{i}.test")).collect();
        let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
        let partners = AddressList::with_entries("partners", &refs);
        let p = TlsCompliance::outbound_verified("partners", &["partners"]);
        let render_options = RenderOptions {
            config_dir: maps.to_string_lossy().into_owned(),
            // Debian's Postfix here (scripts/install-test-deps.sh).
            postfix_version: "3.7".parse().expect("version"),
            ..Default::default()
        };
        let settings = Settings {
            namespaces: vec![ns.clone()],
            config_map: CM.into(),
            render: render_options.clone(),
            metrics_addr: None,
            leader_election: None,
            instance: Some("relays".into()),
            tests: None,
            relays: Some(mailtls::controller::RelaySettings {
                selector: "app=relay-status-under-test".into(),
                interval: std::time::Duration::from_millis(300),
                observed_interval: std::time::Duration::from_millis(500),
            }),
        };
        let controller = Running::start_with(&client, settings);

        // Relay pods and no policy yet: they get the empty policy (nothing mandatory), so
        // they can become Ready.
        let no_policies = Inputs {
            namespace: ns.clone(),
            ..Default::default()
        };
        let empty = render(&evaluate(&no_policies).policy, &render_options);
        let cm = wait_for_hash(&client, &ns, &empty.hash).await;
        mount(&cm, &cm_dir, "..v0");
        wait_until("the agent to apply the empty policy", || {
            std::fs::read_to_string(maps.join("manifest.json"))
                .is_ok_and(|m| m.contains(&empty.hash))
        })
        .await;

        let lists: Api<AddressList> = Api::namespaced(client.clone(), &ns);
        let policies: Api<TlsCompliance> = Api::namespaced(client.clone(), &ns);
        apply(&lists, &partners).await;
        apply(&policies, &p).await;
        let inputs = Inputs {
            namespace: ns.clone(),
            address_lists: vec![partners],
            policies: vec![p],
            gateways: vec![],
        };
        let expected = render(&evaluate(&inputs).policy, &render_options);
        let cm = wait_for_hash(&client, &ns, &expected.hash).await;

        // Large maps in binaryData, compressed; small files readable in data.
        let data = cm.data.clone().unwrap_or_default();
        let binary = cm.binary_data.clone().unwrap_or_default();
        assert!(binary.contains_key("tls_policy.gz"), "{:?}", binary.keys());
        assert!(!data.contains_key("tls_policy"));
        assert!(data.contains_key("main.cf") && data.contains_key("manifest.json"));
        let stored: usize = binary.values().map(|b| b.0.len()).sum();
        assert!(
            stored * 5 < expected.files["tls_policy"].len(),
            "{stored} bytes compressed"
        );

        // Not yet mounted: both pods known, none at the hash.
        let counted_at = |hash: &str, applied: u32, total: u32| {
            let hash = hash.to_string();
            move |p: Option<&TlsCompliance>| {
                p.and_then(|p| p.status.as_ref()?.relay_config.as_ref())
                    .is_some_and(|r| {
                        r.hash == hash
                            && r.applied_pods == Some(applied)
                            && r.total_pods == Some(total)
                    })
            }
        };
        let counted = |applied: u32, total: u32| counted_at(&expected.hash, applied, total);
        wait_for(&policies, "partners", "0 of 2 pods", counted(0, 2)).await;
        let applied = |status: &'static str, reason: &'static str| {
            move |p: Option<&TlsCompliance>| {
                p.is_some_and(|p| {
                    conditions_of(p)
                        .iter()
                        .any(|c| c.type_ == "Applied" && c.status == status && c.reason == reason)
                })
            }
        };
        wait_for(
            &policies,
            "partners",
            "Applied False",
            applied("False", "Propagating"),
        )
        .await;

        // kubelet publishes the ConfigMap; the agent applies it, the controller sees it.
        mount(&cm, &cm_dir, "..v1");
        wait_for(&policies, "partners", "1 of 2 pods", counted(1, 2)).await;
        let installed = std::fs::read_to_string(maps.join("tls_policy")).expect("installed map");
        assert_eq!(installed, expected.files["tls_policy"]);

        // A relay pod goes away (its endpoint with it): counted out.
        slices
            .delete("relay-status-relay-b", &DeleteParams::default())
            .await
            .expect("delete slice");
        wait_for(&policies, "partners", "1 of 1 pods", counted(1, 1)).await;
        let p = wait_for(
            &policies,
            "partners",
            "Applied True",
            applied("True", "Applied"),
        )
        .await
        .expect("policy");
        let stalled = conditions_of(&p).into_iter().find(|c| c.type_ == "Stalled");
        assert_eq!(stalled.map(|c| c.status), Some("False".to_string()));

        // What the relay did with real mail, from the agent's mail log, lands in the
        // policy's status; a bounce for TLS is an Event, once.
        let t = "Dec  2 16:35:01 relay postfix/smtp";
        std::fs::write(
            tmp.path().join("maillog"),
            format!(
                "{t}[7]: Verified TLS connection established to mx.partner1.test[192.0.2.1]:25: TLSv1.3 with cipher X\n\
                 {t}[7]: A1: to=<someone@partner1.test>, relay=mx.partner1.test[192.0.2.1]:25, dsn=2.0.0, status=sent (250 ok)\n\
                 {t}[8]: B2: to=<someone@partner5.test>, relay=mx.partner5.test[192.0.2.5]:25, dsn=5.7.5, status=bounced (Server certificate not verified)\n\
                 {t}[9]: C3: to=<someone@unlisted.test>, relay=mx.unlisted.test[192.0.2.9]:25, dsn=2.0.0, status=sent (250 ok)\n"
            ),
        )
        .expect("mail log");
        let p = wait_for(&policies, "partners", "observed mail", |p| {
            p.and_then(|p| p.status.as_ref()?.observed.as_ref())
                .is_some_and(|o| o.verified == 1 && o.tls_bounced == 1)
        })
        .await
        .expect("policy");
        let observed = p.status.and_then(|s| s.observed).expect("observed");
        assert_eq!(
            (observed.window.as_str(), observed.relay_pods, observed.plaintext),
            ("24h", 1, 0),
            "{observed:?}"
        );
        let failure = observed.last_tls_failure.expect("last failure");
        assert_eq!(
            (failure.domain.as_str(), failure.bounced),
            ("partner5.test", true)
        );
        let bounced = |e: &[Event]| {
            e.iter()
                .filter(|e| e.reason.as_deref() == Some("TLSBounced"))
                .count()
        };
        let events = events_when(&client, &ns, |e| bounced(e) >= 1).await;
        assert_eq!(bounced(&events), 1, "{events:?}");
        let note = events
            .iter()
            .find(|e| e.reason.as_deref() == Some("TLSBounced"))
            .and_then(|e| e.note.clone())
            .unwrap_or_default();
        assert!(note.contains("mail to partner5.test bounced for TLS"), "{note}");
        assert!(!note.contains("someone"), "{note}");

        // The next configuration reaches the relay damaged (a key that does not match the
        // manifest): the agent refuses it and keeps the last one; the policy says so, with
        // the agent's reason, and is Stalled (waiting will not fix it).
        let mut edited = AddressList::with_entries("partners", &refs[..2000]);
        edited.metadata.resource_version = None;
        apply(&lists, &edited).await;
        let inputs_2 = Inputs {
            address_lists: vec![edited],
            ..inputs.clone()
        };
        let expected_2 = render(&evaluate(&inputs_2).policy, &render_options);
        let mut damaged = wait_for_hash(&client, &ns, &expected_2.hash).await;
        if let Some(main_cf) = damaged.data.as_mut().and_then(|d| d.get_mut("main.cf")) {
            main_cf.push_str("# edited on the way\n");
        }
        mount(&damaged, &cm_dir, "..v2");
        let p = wait_for(
            &policies,
            "partners",
            "Applied False Refused",
            applied("False", "Refused"),
        )
        .await
        .expect("policy");
        let conditions = conditions_of(&p);
        let refused = conditions
            .iter()
            .find(|c| c.type_ == "Applied")
            .expect("Applied");
        assert!(
            refused.message.contains("does not match the manifest"),
            "{}",
            refused.message
        );
        let stalled = conditions
            .iter()
            .find(|c| c.type_ == "Stalled")
            .expect("Stalled");
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "Refused")
        );
        let relay = p.status.and_then(|s| s.relay_config).expect("relayConfig");
        assert_eq!((relay.applied_pods, relay.refused_pods), (Some(0), Some(1)));
        // The intact ConfigMap arrives: applied, no longer stalled.
        let intact = wait_for_hash(&client, &ns, &expected_2.hash).await;
        mount(&intact, &cm_dir, "..v3");
        wait_for(
            &policies,
            "partners",
            "Applied True again",
            applied("True", "Applied"),
        )
        .await;
        // Its agent stops answering: still a relay pod, no longer at the hash.
        let _ = agent.0.kill();
        let _ = agent.0.wait();
        wait_for(
            &policies,
            "partners",
            "0 of 1 pods",
            counted_at(&expected_2.hash, 0, 1),
        )
        .await;
        controller.stop().await;
    })
    .await;
}

/// The Ready condition of `r` (any generation).
fn ready_of<K: serde::Serialize>(r: &K) -> Option<Condition> {
    conditions_of(r).into_iter().find(|c| c.type_ == "Ready")
}

/// A hand edit of the relay ConfigMap as `kubectl edit` makes it: its own field manager, a
/// weakened `tls_policy` row, an extra key, and the hash annotation recomputed to match.
async fn edit_by_hand(cms: &Api<ConfigMap>, forge_hash: bool) {
    let mut patch = json!({"data": {
        "tls_policy": "partner.example may\n",
        "extra.cf": "smtp_tls_security_level = none\n",
    }});
    if forge_hash {
        patch["metadata"] = json!({"annotations": {HASH_ANNOTATION: "sha256:0000000000000000000000000000000000000000000000000000000000000000"}});
    }
    let params = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    cms.patch(CM, &params, &Patch::Merge(&patch))
        .await
        .expect("hand edit");
}

fn repairs(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("RelayConfigRepaired"))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("ConfigMap"))
        .map(|e| e.note.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test controller -- --ignored"]
async fn a_bad_edit_keeps_the_last_valid_generation_across_a_restart() {
    in_namespace("ctl-last-valid", |client, ns| async move {
        let lists: Api<AddressList> = Api::namespaced(client.clone(), &ns);
        let policies: Api<TlsCompliance> = Api::namespaced(client.clone(), &ns);
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let partners =
            AddressList::with_entries("partners", &["partner.example", "alice@example.org"]);
        let p = TlsCompliance::outbound_verified("partners", &["partners"]);
        apply(&lists, &partners).await;
        apply(&policies, &p).await;
        let first = Running::start(&client, &ns, None);
        let good = expected_hash(&ns, &[partners], std::slice::from_ref(&p), &[]);
        let before = wait_for_hash(&client, &ns, &good).await;
        wait_condition::<TlsCompliance>(&client, &ns, "partners", "Ready", "True").await;
        let state = cms
            .get("mailtls-relay-state")
            .await
            .expect("state ConfigMap");
        assert_eq!(
            state
                .labels()
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("mailtls")
        );
        let text = state
            .data
            .as_ref()
            .and_then(|d| d.get("last-valid.json"))
            .expect("data[last-valid.json]");
        let kept = mailtls::policy::LastValid::from_json(text).expect("snapshot");
        assert_eq!(kept.address_lists["partners"].generation, 1);
        assert!(kept.policies["partners"].uid.is_some(), "the uid is kept");

        // A bad edit the API server accepts (it cannot check the lengths and the numeric
        // top label inside bulk items): the list's entries replaced by a typo.
        let mut typo = AddressList::with_entries("partners", &[]);
        typo.spec.bulk = Some("partner.123".into());
        apply(&lists, &typo).await;
        let l = wait_for(&lists, "partners", "refused at generation 2", |l| {
            l.and_then(|l| l.status.as_ref())
                .is_some_and(|s| s.observed_generation == Some(2))
        })
        .await
        .expect("list");
        let ready = ready_of(&l).expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidEntries")
        );
        assert!(
            ready.message.ends_with("generation 1 is still enforced"),
            "{}",
            ready.message
        );
        assert_eq!(
            l.status.as_ref().and_then(|s| s.enforced_generation),
            Some(1)
        );
        let now = cms.get(CM).await.expect("relay ConfigMap");
        assert_eq!(
            (hash_of(Some(&now)), now.data),
            (hash_of(Some(&before)), before.data.clone())
        );
        first.stop().await;

        // While no controller runs, the list is deleted: after the restart the policy's
        // reference is missing, and the kept copy of the list still applies.
        lists
            .delete("partners", &DeleteParams::default())
            .await
            .expect("delete list");
        let second = Running::start(&client, &ns, None);
        let p = wait_for(&policies, "partners", "reported with a missing list", |p| {
            p.and_then(ready_of)
                .is_some_and(|c| c.reason == "MissingReference")
        })
        .await
        .expect("policy");
        let ready = ready_of(&p).expect("Ready");
        assert_eq!(ready.status, "False");
        assert!(
            ready.message.contains("'partners' does not exist")
                && ready.message.ends_with("generation 1 is still enforced"),
            "{}",
            ready.message
        );
        assert_eq!(
            p.status.as_ref().and_then(|s| s.enforced_generation),
            Some(1)
        );
        let now = cms.get(CM).await.expect("relay ConfigMap");
        assert_eq!(
            (hash_of(Some(&now)), now.data),
            (hash_of(Some(&before)), before.data)
        );

        // Deleting the policy is what lets its TLS go.
        policies
            .delete("partners", &DeleteParams::default())
            .await
            .expect("delete policy");
        wait_for_hash(&client, &ns, &expected_hash(&ns, &[], &[], &[])).await;
        let state = wait_for(&cms, "mailtls-relay-state", "emptied", |cm| {
            cm.and_then(|cm| cm.data.as_ref()?.get("last-valid.json").cloned())
                .and_then(|t| mailtls::policy::LastValid::from_json(&t).ok())
                .is_some_and(|l| l.is_empty())
        })
        .await;
        assert!(state.is_some());
        second.stop().await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test controller -- --ignored"]
async fn a_hand_edited_or_deleted_config_map_is_restored_with_an_event() {
    in_namespace("ctl-drift", |client, ns| async move {
        let lists: Api<AddressList> = Api::namespaced(client.clone(), &ns);
        let policies: Api<TlsCompliance> = Api::namespaced(client.clone(), &ns);
        apply(
            &lists,
            &AddressList::with_entries("partners", &["partner.example"]),
        )
        .await;
        apply(
            &policies,
            &TlsCompliance::outbound_verified("partners", &["partners"]),
        )
        .await;
        let running = Running::start(&client, &ns, None);
        wait_condition::<TlsCompliance>(&client, &ns, "partners", "Ready", "True").await;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let original = cms.get(CM).await.expect("the ConfigMap");
        let hash = hash_of(Some(&original)).expect("hash");
        let restored = |cm: Option<&ConfigMap>| {
            cm.is_some_and(|c| {
                c.data == original.data && hash_of(Some(c)).as_deref() == Some(hash.as_str())
            })
        };

        // A hand edit with the hash recomputed: restored, extra key gone, and an Event.
        edit_by_hand(&cms, true).await;
        wait_for(&cms, CM, "restored after a hand edit", restored).await;
        let events = events_when(&client, &ns, |e| !repairs(e).is_empty()).await;
        let notes = repairs(&events);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("kubectl-edit"), "{notes:?}");

        // The controller's own write came back on the watch without another write: after a
        // later reconcile (a new, unrelated list became Ready) the ConfigMap is unchanged.
        let version = cms.get(CM).await.expect("cm").resource_version();
        apply(
            &lists,
            &AddressList::with_entries("unused", &["unused.example"]),
        )
        .await;
        wait_condition::<AddressList>(&client, &ns, "unused", "Ready", "True").await;
        assert_eq!(
            cms.get(CM).await.expect("cm").resource_version(),
            version,
            "no write loop"
        );

        // Deleted: recreated, and said so.
        cms.delete(CM, &DeleteParams::default())
            .await
            .expect("delete");
        wait_for(&cms, CM, "recreated after a deletion", restored).await;
        let events = events_when(&client, &ns, |e| repairs(e).len() >= 2).await;
        let notes = repairs(&events);
        assert!(notes.iter().any(|n| n.contains("deleted")), "{notes:?}");
        running.stop().await;

        // Edited while no controller runs (hash kept this time): repaired after a restart.
        edit_by_hand(&cms, false).await;
        assert!(!restored(cms.get_opt(CM).await.expect("cm").as_ref()));
        let again = Running::start(&client, &ns, None);
        wait_for(&cms, CM, "restored after a restart", restored).await;
        let events = events_when(&client, &ns, |e| repairs(e).len() >= 3).await;
        assert_eq!(repairs(&events).len(), 3, "{:?}", repairs(&events));
        again.stop().await;
    })
    .await;
}

const STATE: &str = "mailtls-relay-state";

/// The last valid generations the state ConfigMap holds (as text).
fn snapshot_of(cm: Option<&ConfigMap>) -> Option<mailtls::policy::LastValid> {
    let text = cm?.data.as_ref()?.get("last-valid.json")?;
    mailtls::policy::LastValid::from_json(text).ok()
}

fn state_repairs(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("StateRepaired"))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(STATE))
        .map(|e| e.note.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test controller -- --ignored"]
async fn a_deleted_or_edited_state_is_restored_and_still_enforced_after_a_restart() {
    in_namespace("ctl-state-drift", |client, ns| async move {
        let lists: Api<AddressList> = Api::namespaced(client.clone(), &ns);
        let policies: Api<TlsCompliance> = Api::namespaced(client.clone(), &ns);
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let partners =
            AddressList::with_entries("partners", &["partner.example", "alice@example.org"]);
        let p = TlsCompliance::outbound_verified("partners", &["partners"]);
        apply(&lists, &partners).await;
        apply(&policies, &p).await;
        let running = Running::start(&client, &ns, None);
        let good = expected_hash(&ns, &[partners], std::slice::from_ref(&p), &[]);
        let before = wait_for_hash(&client, &ns, &good).await;
        wait_condition::<TlsCompliance>(&client, &ns, "partners", "Ready", "True").await;
        let kept = snapshot_of(cms.get_opt(STATE).await.expect("state").as_ref())
            .expect("the state ConfigMap with a snapshot");
        assert_eq!(kept.address_lists["partners"].generation, 1);
        let same = |cm: Option<&ConfigMap>| {
            snapshot_of(cm).as_ref() == Some(&kept)
                && cm.is_some_and(|c| c.data.as_ref().is_some_and(|d| d.len() == 1))
        };

        // Deleted while running: written again from memory, and said so.
        cms.delete(STATE, &DeleteParams::default())
            .await
            .expect("delete the state");
        wait_for(&cms, STATE, "written again after a deletion", same).await;
        let events = events_when(&client, &ns, |e| !state_repairs(e).is_empty()).await;
        let notes = state_repairs(&events);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("it had been deleted"), "{notes:?}");

        // Edited by hand (every generation forgotten, a key added): restored, named.
        let forged = serde_json::to_string(&mailtls::policy::LastValid::default()).expect("json");
        let params = PatchParams {
            field_manager: Some("kubectl-edit".into()),
            ..PatchParams::default()
        };
        let edit = json!({"data": {"last-valid.json": forged, "note": "cleaned up"}});
        cms.patch(STATE, &params, &Patch::Merge(&edit))
            .await
            .expect("hand edit");
        wait_for(&cms, STATE, "restored after a hand edit", same).await;
        let events = events_when(&client, &ns, |e| state_repairs(e).len() >= 2).await;
        let notes = state_repairs(&events);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes.iter().any(|n| n.contains("edited by kubectl-edit")),
            "{notes:?}"
        );

        // Its own write came back on the watch without another write: after a later
        // reconcile (a list that was never valid, so nothing new is kept) it is unchanged.
        let version = cms.get(STATE).await.expect("state").resource_version();
        let mut broken = AddressList::with_entries("broken", &[]);
        broken.spec.bulk = Some("partner.123".into());
        apply(&lists, &broken).await;
        wait_condition::<AddressList>(&client, &ns, "broken", "Ready", "False").await;
        assert_eq!(
            cms.get(STATE).await.expect("state").resource_version(),
            version,
            "no write loop"
        );
        running.stop().await;

        // While stopped, a bad edit of the list. After the restart the state read back is
        // the restored one, so generation 1 stays enforced and the relay is unchanged.
        let mut typo = AddressList::with_entries("partners", &[]);
        typo.spec.bulk = Some("partner.123".into());
        apply(&lists, &typo).await;
        let again = Running::start(&client, &ns, None);
        let l = wait_for(&lists, "partners", "refused at generation 2", |l| {
            l.and_then(|l| l.status.as_ref())
                .is_some_and(|s| s.observed_generation == Some(2))
        })
        .await
        .expect("list");
        let ready = ready_of(&l).expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidEntries")
        );
        assert!(
            ready.message.ends_with("generation 1 is still enforced"),
            "{}",
            ready.message
        );
        assert_eq!(
            l.status.as_ref().and_then(|s| s.enforced_generation),
            Some(1)
        );
        let now = cms.get(CM).await.expect("relay ConfigMap");
        assert_eq!(
            (hash_of(Some(&now)), now.data),
            (hash_of(Some(&before)), before.data)
        );
        again.stop().await;
    })
    .await;
}

/// A second policy over the same list renders the same files (same hash); only the
/// manifest's attribution changes. That is the controller's own update, not a hand edit:
/// no RelayConfigRepaired Event.
#[tokio::test]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test controller -- --ignored"]
async fn a_second_policy_with_the_same_files_is_no_repair() {
    in_namespace("ctl-same-hash", |client, ns| async move {
        let controller = Running::start(&client, &ns, None);
        let l = AddressList::with_entries("partners", &["example.com"]);
        let (p1, p2) = (
            TlsCompliance::outbound_verified("first", &["partners"]),
            TlsCompliance::outbound_verified("second", &["partners"]),
        );
        let lists: Api<AddressList> = Api::namespaced(client.clone(), &ns);
        let policies: Api<TlsCompliance> = Api::namespaced(client.clone(), &ns);
        apply(&lists, &l).await;
        apply(&policies, &p1).await;
        let h1 = expected_hash(
            &ns,
            std::slice::from_ref(&l),
            std::slice::from_ref(&p1),
            &[],
        );
        wait_for_hash(&client, &ns, &h1).await;
        wait_condition::<TlsCompliance>(&client, &ns, "first", "Ready", "True").await;
        apply(&policies, &p2).await;
        let h2 = expected_hash(&ns, &[l], &[p1, p2], &[]);
        assert_eq!(h1, h2, "the same files");
        wait_condition::<TlsCompliance>(&client, &ns, "second", "Ready", "True").await;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        wait_for(&cms, CM, "attributing both policies", |cm| {
            cm.and_then(|cm| cm.data.as_ref()?.get(mailtls::render::MANIFEST).cloned())
                .is_some_and(|m| m.contains("second"))
        })
        .await;
        // Events trail their writes: give a wrong repair Event time to show.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        assert_eq!(
            repairs(&events_in(&client, &ns).await),
            Vec::<String>::new()
        );
        controller.stop().await;
    })
    .await;
}
