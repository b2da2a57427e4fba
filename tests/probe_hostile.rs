//! Hostile servers: each probe ends within its limits with a clear error, memory stays
//! bounded, and the other destinations of the same run are unaffected.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use mailtls::api::TlsVersion;
use mailtls::probe::{Expected, ProbeConfig, Prober, Target, Timeouts};
use support::fixtures::*;

const STRICT: Expected = Expected {
    require_tls: true,
    require_ca_signed: true,
    validate_hostname: true,
    min_tls: TlsVersion::V1_2,
};

/// (domain, expected outcome, text the message must contain)
const CASES: &[(&str, &str, &str)] = &[
    ("silent.test", "timeout", "greeting"),
    ("endless.test", "smtp-error", "more than 128 lines"),
    ("huge.test", "smtp-error", "longer than 4096 bytes"),
    ("drip.test", "timeout", "greeting"),
    ("hangup.test", "validation-failure", "closed"),
    (
        "chain100.test",
        "certificate-not-trusted",
        "not signed by a trusted CA",
    ),
    ("good.test", "pass", "TLS 1.3"),
];

struct Hostile {
    dns: std::net::SocketAddr,
    port: u16,
    ca_file: std::path::PathBuf,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

async fn hostile_world() -> Hostile {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("hostile test CA");
    let zone = Zone::default();
    let behaviours = [
        Smtp::Silent,
        Smtp::EndlessMultiline,
        Smtp::HugeLine,
        Smtp::Drip,
        Smtp::CloseMidHandshake,
        Smtp::Good(server_config(&long_chain(&["mx.chain100.test"], 99), false)),
        Smtp::Good(server_config(&ca.leaf(&["mx.good.test"]), false)),
    ];
    let (listeners, port) = bind_group(CASES.len()).await;
    for (((domain, _, _), b), (ip, l)) in CASES.iter().zip(behaviours).zip(listeners) {
        let mx = format!("mx.{domain}");
        zone.mx(domain, 10, &mx);
        zone.a(&mx, ip);
        spawn_smtp(l, b);
    }
    Hostile {
        dns: spawn_dns(zone).await,
        port,
        ca_file: ca.write_pem(dir.path()),
        ca_der: ca.der.clone(),
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_servers_library() {
    let w = hostile_world().await;
    let prober = Prober::new(ProbeConfig {
        addresses: mailtls::probe::AddressPolicy::any(),
        resolver: Some(w.dns),
        extra_roots: vec![w.ca_der.clone()],
        smtp_port: w.port,
        timeouts: Timeouts::from_step(Duration::from_secs(2)),
        ..ProbeConfig::default()
    })
    .expect("prober");
    let before = rss_kib();
    let items = CASES
        .iter()
        .map(|(d, _, _)| (Target::Domain(d.to_string()), STRICT))
        .collect();
    // Generous outer bound: every host has 2 s per step and 8 s in total.
    let reports = tokio::time::timeout(Duration::from_secs(60), prober.probe_many(items))
        .await
        .expect("probe run ended");
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    let got: BTreeMap<&str, _> = reports
        .iter()
        .map(|r| (r.destination.as_str(), r))
        .collect();
    for (dest, outcome, text) in CASES {
        let r = got[dest];
        assert_eq!(r.outcome(), *outcome, "{dest}: {}", r.message);
        assert!(r.message.contains(text), "{dest}: {}", r.message);
        // Nothing the server sent is kept in bulk.
        assert!(
            r.message.len() < 600,
            "{dest}: message of {} bytes",
            r.message.len()
        );
        let json = serde_json::to_string(r).expect("json");
        assert!(
            json.len() < 64 * 1024,
            "{dest}: report of {} bytes",
            json.len()
        );
    }
    let chain = got["chain100.test"].hosts[0].tls.as_ref().expect("tls");
    assert_eq!(chain.chain.chain_length, 100);
    assert_eq!(chain.chain.chain.len(), prober.config().max_recorded_certs);
    assert!(got["drip.test"].hosts[0].greeting.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_servers_cli() {
    let w = hostile_world().await;
    let mut args = probe_args(w.dns, w.port, &w.ca_file, "2s");
    args.extend(["--validate-hostname", "--format", "json"].map(String::from));
    args.extend(CASES.iter().map(|(d, _, _)| d.to_string()));
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_mailtls"))
            .args(&args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("CLI ended")
    .expect("run mailtls");
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let dests = doc["destinations"].as_array().expect("destinations");
    assert_eq!(dests.len(), CASES.len());
    for (dest, outcome, text) in CASES {
        let d = dests
            .iter()
            .find(|d| d["destination"] == *dest)
            .expect("destination present");
        assert_eq!(d["outcome"], *outcome, "{dest}");
        assert!(
            d["message"].as_str().unwrap_or_default().contains(text),
            "{dest}"
        );
    }
    assert_eq!(doc["summary"]["passed"], 1);
    assert_eq!(doc["summary"]["failed"], 6);
}
