//! The chart's alerts (charts/mailtls/files/rules.yaml) and dashboard (files/dashboard.json)
//! refer only to metrics mailtls exposes, and a real rule checker accepts the alerts:
//! Prometheus's own `promtool` checks them and fires each one on series shaped like ours
//! (and leaves them quiet on healthy ones). promtool is built from source by
//! `scripts/test-cluster.sh build`, like helm.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rules_file() -> PathBuf {
    root().join("charts/mailtls/files/rules.yaml")
}

/// Every sample name the controller and a relay agent put on /metrics. A family shows only
/// once it has a series, so the controller's are given one each by real events: a failed
/// reconcile and a real probe (of a closed port on loopback).
fn exposed() -> BTreeSet<String> {
    use mailtls::probe::{AddressPolicy, Expected, ProbeConfig, Prober, Target};
    let metrics = mailtls::controller::Metrics::default();
    metrics.observe("mail", std::time::Duration::from_millis(3), false);
    let prober = Prober::new(ProbeConfig {
        addresses: AddressPolicy::public_only(vec!["127.0.0.0/8".parse().expect("cidr")], vec![]),
        ..ProbeConfig::default()
    })
    .expect("prober");
    let target = Target::parse("[127.0.0.1]:9", 25).expect("target");
    let report = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(prober.probe(&target, &Expected::default()));
    let id = mailtls::policy::ResourceId::new(mailtls::policy::Kind::TlsCompliance, "partners");
    metrics.tested("mail", &id, &[report]);
    let controller = metrics.encode();
    let status = mailtls::relay::AgentStatus {
        applied_hash: Some("sha256:0".into()),
        ..Default::default()
    };
    let agent = mailtls::observe::metrics::render(
        &status,
        &mailtls::observe::Observed::default(),
        Some([0; 5]),
    );
    let mut names = BTreeSet::new();
    for line in controller.lines().chain(agent.lines()) {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// The `mailtls_…` names an expression refers to.
fn referenced(expr: &str) -> Vec<String> {
    expr.match_indices("mailtls_")
        .map(|(i, _)| {
            expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn rules() -> Vec<serde_norway::Value> {
    let text = std::fs::read_to_string(rules_file()).expect("rules.yaml");
    let doc: serde_norway::Value = serde_norway::from_str(&text).expect("YAML");
    doc["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .clone()
}

#[test]
fn alerts_and_dashboard_name_only_metrics_that_exist() {
    let exposed = exposed();
    for name in [
        "mailtls_certificate_expiration_timestamp_seconds",
        "mailtls_resource_ready",
        "mailtls_resource_compliant",
        "mailtls_relay_queue_messages",
        "mailtls_reconcile_duration_seconds_bucket",
    ] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed:?}");
    }
    let mut exprs: Vec<(String, String)> = rules()
        .iter()
        .map(|r| {
            (
                r["alert"].as_str().expect("alert").to_string(),
                r["expr"].as_str().expect("expr").to_string(),
            )
        })
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("charts/mailtls/files/dashboard.json"))
            .expect("dashboard.json"),
    )
    .expect("JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push((
                format!("panel {}", panel["title"]),
                target["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if variable["type"] == "query"
            && let Some(q) = variable["query"].as_str()
        {
            exprs.push((format!("variable {}", variable["name"]), q.to_string()));
        }
    }
    let mut unknown = Vec::new();
    for (what, expr) in &exprs {
        let names = referenced(expr);
        assert!(
            !names.is_empty(),
            "{what} refers to no mailtls metric: {expr}"
        );
        unknown.extend(
            names
                .into_iter()
                .filter(|n| !exposed.contains(n))
                .map(|n| format!("{what}: {n}")),
        );
    }
    assert!(unknown.is_empty(), "not exposed by mailtls: {unknown:?}");
}

fn promtool() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MAILTLS_PROMTOOL") {
        return Some(PathBuf::from(path));
    }
    let out = Command::new(root().join("scripts/test-cluster.sh"))
        .arg("bin-dir")
        .output()
        .ok()?;
    let tool = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("promtool");
    (out.status.success() && tool.is_file()).then_some(tool)
}

/// Input series and the alerts they must raise, for `promtool test rules`.
const UNIT_TESTS: &str = r#"
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # Expires 10 days after the epoch (promtool's clock starts there), and in 100 days.
      - series: 'mailtls_certificate_expiration_timestamp_seconds{namespace="mail",kind="TlsCompliance",name="partners",destination="soon.example"}'
        values: '864000x120'
      - series: 'mailtls_certificate_expiration_timestamp_seconds{namespace="mail",kind="TlsCompliance",name="partners",destination="later.example"}'
        values: '8640000x120'
      - series: 'mailtls_certificate_expiration_timestamp_seconds{namespace="mail",kind="OutboundGateway",name="gw",destination="[gw.example]:587"}'
        values: '0x120'
      - series: 'mailtls_resource_compliant{namespace="mail",kind="TlsCompliance",name="partners"}'
        values: '0x120'
      - series: 'mailtls_resource_compliant{namespace="mail",kind="TlsCompliance",name="banks"}'
        values: '1x120'
      - series: 'mailtls_resource_ready{namespace="mail",kind="AddressList",name="partners"}'
        values: '0x120'
      - series: 'mailtls_resource_ready{namespace="mail",kind="TlsCompliance",name="banks"}'
        values: '1x120'
      - series: 'mailtls_reconcile_errors_total{namespace="mail"}'
        values: '0x50 1+1x70'
      - series: 'mailtls_relay_refused_total{pod="relay-0"}'
        values: '0x50 1x70'
      - series: 'mailtls_relay_refused_total{pod="relay-1"}'
        values: '0x120'
      - series: 'mailtls_relay_reload_failures_total{pod="relay-0"}'
        values: '0x50 1x70'
      - series: 'mailtls_relay_configuration_applied{pod="relay-0"}'
        values: '1x120'
      - series: 'mailtls_relay_configuration_applied{pod="relay-2"}'
        values: '0x120'
      - series: 'mailtls_relay_tls_failures_total{pod="relay-0",result="bounced"}'
        values: '0x50 3x70'
      - series: 'mailtls_relay_tls_failures_total{pod="relay-0",result="deferred"}'
        values: '0x50 9x70'
      - series: 'mailtls_relay_queue_messages{pod="relay-0",queue="deferred"}'
        values: '150x120'
      - series: 'mailtls_relay_queue_messages{pod="relay-1",queue="deferred"}'
        values: '50x120'
      - series: 'mailtls_relay_queue_messages{pod="relay-0",queue="active"}'
        values: '500x120'
    alert_rule_test:
      - eval_time: 61m
        alertname: MailtlsCertificateExpiresSoon
        exp_alerts:
          - exp_labels: {severity: warning, namespace: mail, kind: TlsCompliance, name: partners, destination: soon.example}
            exp_annotations:
              summary: "Certificate of soon.example expires within 14 days"
              description: "TlsCompliance mail/partners: the TLS certificate of soon.example expires in 9d 22h 59m 0s; once expired, mail that requires a CA-signed certificate stops going there."
      - eval_time: 30m
        alertname: MailtlsCertificateExpiresSoon
      - eval_time: 5m
        alertname: MailtlsCertificateExpired
        exp_alerts:
          - exp_labels: {severity: critical, namespace: mail, kind: OutboundGateway, name: gw, destination: "[gw.example]:587"}
      - eval_time: 20m
        alertname: MailtlsNotCompliant
        exp_alerts:
          - exp_labels: {severity: warning, namespace: mail, kind: TlsCompliance, name: partners}
      - eval_time: 10m
        alertname: MailtlsNotCompliant
      - eval_time: 20m
        alertname: MailtlsResourceNotReady
        exp_alerts:
          - exp_labels: {severity: warning, namespace: mail, kind: AddressList, name: partners}
      - eval_time: 55m
        alertname: MailtlsReconcileErrors
        exp_alerts:
          - exp_labels: {severity: warning, namespace: mail}
      - eval_time: 40m
        alertname: MailtlsReconcileErrors
      - eval_time: 55m
        alertname: MailtlsRelayConfigurationRefused
        exp_alerts:
          - exp_labels: {severity: critical, pod: relay-0}
      - eval_time: 55m
        alertname: MailtlsRelayReloadFailing
        exp_alerts:
          - exp_labels: {severity: critical, pod: relay-0}
      - eval_time: 15m
        alertname: MailtlsRelayWithoutConfiguration
        exp_alerts:
          - exp_labels: {severity: critical, pod: relay-2}
      - eval_time: 55m
        alertname: MailtlsTlsBounces
        exp_alerts:
          - exp_labels: {severity: warning, pod: relay-0, result: bounced}
      - eval_time: 40m
        alertname: MailtlsTlsBounces
      - eval_time: 35m
        alertname: MailtlsRelayDeferredQueue
        exp_alerts:
          - exp_labels: {severity: warning, pod: relay-0, queue: deferred}
"#;

#[test]
fn promtool_checks_the_alerts_and_fires_each_one() {
    let Some(promtool) = promtool() else {
        common::skip::skip("no promtool: run scripts/test-cluster.sh build");
        return;
    };
    let check = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(rules_file())
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // promtool compares annotations too: the certificate alert above checks its texts; for
    // the others the unit test runs on a copy without them (their templates were checked).
    let dir = tempfile::tempdir().expect("tempdir");
    let mut doc: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(rules_file()).expect("rules"))
            .expect("YAML");
    for rule in doc["groups"][0]["rules"].as_sequence_mut().expect("rules") {
        if rule["alert"].as_str() != Some("MailtlsCertificateExpiresSoon")
            && let Some(map) = rule.as_mapping_mut()
        {
            map.remove("annotations");
        }
    }
    let copy = dir.path().join("rules.yaml");
    std::fs::write(&copy, serde_norway::to_string(&doc).expect("YAML")).expect("write");
    let tests = dir.path().join("tests.yaml");
    std::fs::write(&tests, format!("rule_files: [rules.yaml]\n{UNIT_TESTS}")).expect("write");
    let run = Command::new(&promtool)
        .args(["test", "rules"])
        .arg(&tests)
        .current_dir(dir.path())
        .output()
        .expect("promtool");
    assert!(
        run.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    // Every alert of the file is exercised above.
    let names: BTreeSet<String> = rules()
        .iter()
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect();
    for name in &names {
        assert!(
            UNIT_TESTS.contains(&format!("alertname: {name}\n")),
            "{name} is never fired in the unit test"
        );
    }
}
