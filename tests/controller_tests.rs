//! The controller's periodic TLS tests against a real API server and real loopback SMTP
//! servers: results land in status (Tested, Compliant, lastTest, results failures first),
//! and a new mailtls.io/test-now value asks for another test.
//! Run with `scripts/test-cluster.sh -- cargo test --test controller_tests -- --ignored`.

mod common;
mod support;

use common::cluster::*;
use kube::api::{Api, Patch, PatchParams};
use mailtls::api::TlsCompliance;
use mailtls::probe::{ProbeConfig, Prober, Timeouts};
use serde_json::json;
use std::time::Duration;
use support::fixtures::*;

async fn wait_status(
    api: &Api<TlsCompliance>,
    name: &str,
    check: impl Fn(&serde_json::Value) -> bool + Send + 'static,
) -> serde_json::Value {
    let done = tokio::time::timeout(
        Duration::from_secs(90),
        kube::runtime::wait::await_condition(
            api.clone(),
            name,
            move |p: Option<&TlsCompliance>| {
                p.and_then(|p| serde_json::to_value(p).ok())
                    .is_some_and(|v| check(&v["status"]))
            },
        ),
    )
    .await;
    match done {
        Ok(Ok(Some(p))) => serde_json::to_value(p).expect("json")["status"].clone(),
        other => panic!(
            "{name}: status not reached: {other:?}; now {:?}",
            api.get_opt(name).await
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test controller_tests -- --ignored"]
async fn periodic_tests_write_results_into_status() {
    init();
    let ca = Ca::new("mailtls controller test CA");
    let zone = Zone::default();
    let (listeners, port) = bind_group(2).await;
    let mut listeners = listeners.into_iter();
    let (good_ip, good) = listeners.next().expect("listener");
    let (plain_ip, plain) = listeners.next().expect("listener");
    zone.mx("good.test", 10, "mx.good.test");
    zone.a("mx.good.test", good_ip);
    zone.mx("plain.test", 10, "mx.plain.test");
    zone.a("mx.plain.test", plain_ip);
    spawn_smtp(
        good,
        Smtp::Good(server_config(&ca.leaf(&["mx.good.test"]), false)),
    );
    spawn_smtp(plain, Smtp::NoStarttls);
    let dns = spawn_dns(zone).await;
    let prober = Prober::new(ProbeConfig {
        resolver: Some(dns),
        extra_roots: vec![ca.der.clone()],
        smtp_port: port,
        timeouts: Timeouts::from_step(Duration::from_secs(3)),
        ..ProbeConfig::default()
    })
    .expect("prober");

    in_namespace("tests", move |client, ns| async move {
        let settings = mailtls::controller::Settings {
            namespaces: vec![ns.clone()],
            config_map: "mailtls-relay".into(),
            render: mailtls::render::RenderOptions::default(),
            metrics_addr: None,
            leader_election: None,
            instance: Some("tests".into()),
            tests: Some(prober),
            relays: None,
        };
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let controller = tokio::spawn(mailtls::controller::run(client.clone(), settings, shutdown));

        let lists: Api<mailtls::api::AddressList> = Api::namespaced(client.clone(), &ns);
        let list = json!({"apiVersion": "mailtls.io/v1alpha1", "kind": "AddressList", "metadata": {"name": "partners"},
            "spec": {"entries": ["good.test", "someone@plain.test", ".wild.test"]}});
        lists.patch("partners", &PatchParams::apply(MANAGER), &Patch::Apply(&list)).await.expect("list");
        let policies: Api<TlsCompliance> = Api::namespaced(client.clone(), &ns);
        let policy = |test_now: Option<&str>| {
            let mut p = json!({"apiVersion": "mailtls.io/v1alpha1", "kind": "TlsCompliance", "metadata": {"name": "partners"},
                "spec": {"direction": "Outbound", "addressLists": [{"name": "partners"}], "requireCASigned": true, "validateHostname": true}});
            if let Some(v) = test_now {
                p["metadata"]["annotations"] = json!({"mailtls.io/test-now": v});
            }
            p
        };
        policies.patch("partners", &PatchParams::apply(MANAGER), &Patch::Apply(&policy(None))).await.expect("policy");

        let status = wait_status(&policies, "partners", |s| !s["lastTest"].is_null()).await;
        assert_eq!(status["lastTest"]["destinations"], 2, "{status}");
        assert_eq!(status["lastTest"]["failed"], 1, "{status}");
        assert_eq!(status["lastTest"]["untestable"], 1, "{status}");
        assert_eq!(status["results"][0]["destination"], "plain.test", "failures first: {status}");
        assert_eq!(status["results"][0]["outcome"], "starttls-not-supported");
        let compliant = status["conditions"].as_array().expect("conditions").iter().find(|c| c["type"] == "Compliant").cloned().expect("Compliant");
        assert_eq!((compliant["status"].as_str(), compliant["reason"].as_str()), (Some("False"), Some("NotCompliant")), "{status}");
        let ready = status["conditions"].as_array().expect("conditions").iter().find(|c| c["type"] == "Ready").cloned().expect("Ready");
        assert_eq!(ready["status"], "True", "the reconcile's conditions are kept: {status}");

        // A new test-now value: tested again, and the answer records it.
        policies.patch("partners", &PatchParams::apply(MANAGER), &Patch::Apply(&policy(Some("again")))).await.expect("annotate");
        let status = wait_status(&policies, "partners", |s| s["lastTest"]["trigger"] == "again").await;
        assert_eq!(status["lastTest"]["destinations"], 2);

        let _ = stop.send(true);
        let _ = tokio::time::timeout(TIMEOUT, controller).await;
    })
    .await;
}
