//! The controller's periodic TLS tests against a real API server and real loopback SMTP
//! servers: results land in status (Tested, Compliant, lastTest, results failures first),
//! and a new mailtls.io/test-now value asks for another test.
//! Run with `scripts/test-cluster.sh -- cargo test --test controller_tls_tests -- --ignored`.

mod common;
mod support;

use common::cluster::*;
use kube::api::{Api, Patch, PatchParams};
use mailtls::api::{OutboundGateway, TlsCompliance};
use mailtls::probe::{AddressPolicy, ProbeConfig, Prober, Timeouts};
use serde_json::json;
use std::time::Duration;
use support::fixtures::*;

async fn wait_status<K>(
    api: &Api<K>,
    name: &str,
    check: impl Fn(&serde_json::Value) -> bool + Send + 'static,
) -> serde_json::Value
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize
        + Send
        + 'static,
{
    let done = tokio::time::timeout(
        Duration::from_secs(90),
        kube::runtime::wait::await_condition(api.clone(), name, move |r: Option<&K>| {
            r.and_then(|r| serde_json::to_value(r).ok())
                .is_some_and(|v| check(&v["status"]))
        }),
    )
    .await;
    match done {
        Ok(Ok(Some(r))) => serde_json::to_value(r).expect("json")["status"].clone(),
        other => panic!(
            "{name}: status not reached: {other:?}; now {:?}",
            api.get_opt(name).await
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test controller_tls_tests -- --ignored"]
async fn periodic_tests_write_results_into_status() {
    let servers = GoodAndPlain::start("mailtls controller test CA").await;
    let prober = servers.prober(Duration::from_secs(3));

    in_namespace("tests", move |client, ns| async move {
        let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let settings = mailtls::controller::Settings {
            namespaces: vec![ns.clone()],
            config_map: "mailtls-relay".into(),
            render: mailtls::render::RenderOptions::default(),
            metrics_addr: Some(metrics_addr),
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

        // The same on /metrics, per resource; the certificate's expiry as a timestamp.
        let resource = format!("namespace=\"{ns}\",kind=\"TlsCompliance\",name=\"partners\"");
        let metrics = scrape(metrics_addr, &format!("mailtls_resource_compliant{{{resource}}} 0")).await;
        for line in [
            format!("mailtls_resource_ready{{{resource}}} 1"),
            format!("mailtls_resource_ready{{namespace=\"{ns}\",kind=\"AddressList\",name=\"partners\"}} 1"),
            format!("mailtls_tls_tests_total{{{resource},outcome=\"starttls-not-supported\"}} 1"),
            format!("mailtls_tls_tests_total{{{resource},outcome=\"pass\"}} 1"),
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} missing:\n{metrics}");
        }
        let expiry = format!("mailtls_certificate_expiration_timestamp_seconds{{{resource},destination=\"good.test\"}} ");
        let at: i64 = metrics.lines().find_map(|l| l.strip_prefix(&expiry)).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {expiry}in {metrics}"));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
        assert!(at > now && at < now + 4 * 366 * 86_400, "expiry {at} vs now {now}");
        assert!(!metrics.contains("destination=\"plain.test\""), "no certificate, no series: {metrics}");

        // A new test-now value: tested again, and the answer records it.
        policies.patch("partners", &PatchParams::apply(MANAGER), &Patch::Apply(&policy(Some("again")))).await.expect("annotate");
        let status = wait_status(&policies, "partners", |s| s["lastTest"]["trigger"] == "again").await;
        assert_eq!(status["lastTest"]["destinations"], 2);

        // good.test leaves the list: its certificate's series goes at once, not at the next
        // test.
        let fewer = json!({"apiVersion": "mailtls.io/v1alpha1", "kind": "AddressList", "metadata": {"name": "partners"},
            "spec": {"entries": ["someone@plain.test", ".wild.test"]}});
        lists.patch("partners", &PatchParams::apply(MANAGER), &Patch::Apply(&fewer)).await.expect("list");
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while scrape(metrics_addr, "mailtls_resource_ready").await.contains(&expiry) {
            assert!(tokio::time::Instant::now() < deadline, "the series of a destination taken out of the list remains");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Deleted: its series go with it, none kept stale.
        policies.delete("partners", &Default::default()).await.expect("delete");
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let metrics = scrape(metrics_addr, "mailtls_resource_ready").await;
            // Counters keep their totals; the gauges of the resource go.
            let left: Vec<&str> = metrics
                .lines()
                .filter(|l| l.contains(&resource) && !l.starts_with("mailtls_tls_tests_total"))
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "series of a deleted resource remain: {left:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let _ = stop.send(true);
        let _ = tokio::time::timeout(TIMEOUT, controller).await;
    })
    .await;
}

/// The controller's /metrics once it contains `wanted`.
async fn scrape(addr: std::net::SocketAddr, wanted: &str) -> String {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let got = tokio::task::spawn_blocking(move || {
            common::mail::http_get(&addr.to_string(), "/metrics")
        })
        .await
        .expect("scrape");
        if let Some((200, body)) = got
            && body.lines().any(|l| l.starts_with(wanted))
        {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/metrics never showed {wanted}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A listener that counts the connections it accepts and greets each with `banner`.
fn spawn_counting(
    listener: tokio::net::TcpListener,
    banner: &'static str,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use tokio::io::AsyncWriteExt;
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = stream.write_all(banner.as_bytes()).await;
                // Hold the line open like a server waiting for the client's banner.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    accepted
}

/// Controller-run tests do not connect to internal addresses unless allowed: a loopback
/// gateway, by literal or by a name that resolves to loopback, is refused
/// (`address-not-allowed`) and its listener never sees a connection; an allowed address
/// that answers with an SSH banner is reported as not an SMTP server, without its text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real API server: scripts/test-cluster.sh -- cargo test --test controller_tls_tests -- --ignored"]
async fn controller_tls_tests_refuse_internal_addresses_and_never_echo_a_banner() {
    init();
    let (listeners, port) = bind_group(2).await;
    let mut listeners = listeners.into_iter();
    let (internal_ip, internal) = listeners.next().expect("listener");
    let (ssh_ip, ssh) = listeners.next().expect("listener");
    let internal_hits = spawn_counting(internal, "220 internal.test ESMTP\r\n");
    let ssh_hits = spawn_counting(ssh, "SSH-2.0-OpenSSH_9.6\r\n");
    let zone = Zone::default();
    zone.a("rebind.test", internal_ip);
    let dns = spawn_dns(zone).await;
    let prober = Prober::new(ProbeConfig {
        resolver: Some(dns),
        timeouts: Timeouts::from_step(Duration::from_secs(3)),
        // The default policy, plus the one address of the SSH fixture.
        addresses: AddressPolicy::public_only(
            vec![ssh_ip.to_string().parse().expect("cidr")],
            vec![],
        ),
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
        let gateways: Api<OutboundGateway> = Api::namespaced(client.clone(), &ns);
        for (name, host) in [("literal", internal_ip.to_string()), ("rebind", "rebind.test".into()), ("ssh", ssh_ip.to_string())] {
            let gw = json!({"apiVersion": "mailtls.io/v1alpha1", "kind": "OutboundGateway", "metadata": {"name": name},
                "spec": {"host": host, "port": port, "appliesTo": "Recipients", "addressLists": [{"name": "none"}], "tls": {"require": true}}});
            gateways.patch(name, &PatchParams::apply(MANAGER), &Patch::Apply(&gw)).await.expect("gateway");
        }
        let mut results = Vec::new();
        for name in ["literal", "rebind", "ssh"] {
            let status = wait_status(&gateways, name, |s| !s["lastTest"].is_null()).await;
            results.push(status["results"][0].clone());
        }
        let _ = stop.send(true);
        let _ = tokio::time::timeout(TIMEOUT, controller).await;

        for r in &results[..2] {
            assert_eq!(r["outcome"], "address-not-allowed", "{r}");
            assert!(r["message"].as_str().unwrap_or_default().contains("loopback"), "{r}");
        }
        assert_eq!(internal_hits.load(std::sync::atomic::Ordering::SeqCst), 0, "no connection to a refused address");
        assert_eq!(results[2]["outcome"], "smtp-error", "{}", results[2]);
        let message = results[2]["message"].as_str().unwrap_or_default();
        assert!(message.contains("not an SMTP server"), "{message}");
        assert!(!message.contains("SSH") && !message.contains("OpenSSH"), "the banner is not echoed: {message}");
        assert!(ssh_hits.load(std::sync::atomic::Ordering::SeqCst) > 0, "the allowed address was tested");
    })
    .await;
}
