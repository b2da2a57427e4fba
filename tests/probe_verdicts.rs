//! Every verdict of the probe, against real loopback servers, through the library and
//! through the `mailtls probe` binary.

#[path = "common/skip.rs"]
mod skip;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mailtls::api::TlsVersion;
use mailtls::probe::{
    DestinationReport, Expected, ProbeConfig, Prober, Target, Timeouts, summarize,
};
use sha2::{Digest, Sha256};
use support::fixtures::*;

struct World {
    dns: SocketAddr,
    port: u16,
    sts_port: u16,
    ca_file: PathBuf,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    openssl: bool,
    _dir: tempfile::TempDir,
    _children: Vec<tokio::process::Child>,
}

const STS_TXT: &str = "v=STSv1; id=20260101T000000;";

/// Build every scenario: DNS zone, SMTP servers (one loopback address each, shared port)
/// and MTA-STS policy servers (one loopback address each, shared port).
async fn world() -> World {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("mailtls test CA");
    let zone = Zone::default();
    let good = |names: &[&str]| Smtp::Good(server_config(&ca.leaf(names), false));

    let tlsa_leaf = ca.leaf(&["mx.tlsa-good.test"]);
    let tlsa_hash = Sha256::digest(tlsa_leaf.chain[0].as_ref()).to_vec();
    let mut children = Vec::new();
    let openssl_server =
        openssl_tls10_server(&self_signed(&["mx.openssl10.test"]), dir.path()).await;

    let mut mx_servers: Vec<(&str, Smtp)> = vec![
        ("good.test", good(&["mx.good.test"])),
        (
            "selfsigned.test",
            Smtp::Good(server_config(&self_signed(&["mx.selfsigned.test"]), false)),
        ),
        ("wrongname.test", good(&["other.example"])),
        (
            "expired.test",
            Smtp::Good(server_config(
                &ca.leaf_between(&["mx.expired.test"], -60, -1),
                false,
            )),
        ),
        (
            "expiring.test",
            Smtp::Good(server_config(
                &ca.leaf_between(&["mx.expiring.test"], -60, 10),
                false,
            )),
        ),
        (
            "tls12.test",
            Smtp::Good(server_config(&ca.leaf(&["mx.tls12.test"]), true)),
        ),
        ("nostarttls.test", Smtp::NoStarttls),
        ("rejecting.test", Smtp::RejectGreeting),
        ("noehlo.test", Smtp::RejectEhlo),
        ("refused.test", Smtp::StarttlsRefused),
        ("broken.test", Smtp::BrokenHandshake),
        ("injected.test", Smtp::DataAfterStarttls),
        ("legacy.test", Smtp::LegacyHello),
        ("tls11.test", Smtp::Tls11Only),
        ("domainname.test", good(&["domainname.test"])),
        (
            "tlsa-good.test",
            Smtp::Good(server_config(&tlsa_leaf, false)),
        ),
        ("tlsa-bad.test", good(&["mx.tlsa-bad.test"])),
        ("sts-enforce.test", good(&["mx.sts-enforce.test"])),
        ("sts-testing.test", good(&["mx.sts-testing.test"])),
        ("sts-mismatch.test", good(&["mx.sts-mismatch.test"])),
        ("sts-fetch.test", good(&["mx.sts-fetch.test"])),
        ("sts-invalid.test", good(&["mx.sts-invalid.test"])),
        ("sts-webpki.test", good(&["mx.sts-webpki.test"])),
    ];
    let openssl = openssl_server.is_some();
    if let Some((child, addr)) = openssl_server {
        mx_servers.push(("openssl10.test", Smtp::Proxy(addr)));
        children.push(child);
    }
    // Extra listeners: two MXs of multi.test and the implicit-MX domain.
    let (listeners, port) = bind_group(mx_servers.len() + 3).await;
    let mut listeners = listeners.into_iter();
    for (domain, behaviour) in mx_servers {
        let (ip, l) = listeners.next().expect("listener");
        let mx = format!("mx.{domain}");
        zone.mx(domain, 10, &mx);
        zone.a(&mx, ip);
        spawn_smtp(l, behaviour);
    }
    let (ip1, l1) = listeners.next().expect("listener");
    let (ip2, l2) = listeners.next().expect("listener");
    zone.mx("multi.test", 20, "mx2.multi.test");
    zone.mx("multi.test", 10, "mx1.multi.test");
    zone.a("mx1.multi.test", ip1);
    zone.a("mx2.multi.test", ip2);
    spawn_smtp(l1, good(&["mx1.multi.test"]));
    spawn_smtp(
        l2,
        Smtp::Good(server_config(&self_signed(&["mx2.multi.test"]), false)),
    );
    let (ip3, l3) = listeners.next().expect("listener");
    zone.a("implicit.test", ip3);
    spawn_smtp(l3, good(&["implicit.test"]));

    zone.tlsa(
        &format!("_{port}._tcp.mx.tlsa-good.test"),
        3,
        0,
        1,
        tlsa_hash,
    );
    zone.tlsa(
        &format!("_{port}._tcp.mx.tlsa-bad.test"),
        3,
        1,
        1,
        vec![0u8; 32],
    );
    zone.null_mx("nullmx.test");
    zone.mx("dead.test", 10, "mx.dead.test");
    zone.a("mx.dead.test", loopback_ip()); // nothing listens there

    // MTA-STS policies.
    let policy = |mode: &str, mx: &str| {
        format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
    };
    let sts: Vec<(&str, u16, String, bool)> = vec![
        (
            "sts-enforce.test",
            200,
            policy("enforce", "mx.sts-enforce.test"),
            true,
        ),
        (
            "sts-testing.test",
            200,
            policy("testing", "*.elsewhere.test"),
            true,
        ),
        (
            "sts-mismatch.test",
            200,
            policy("enforce", "*.elsewhere.test"),
            true,
        ),
        ("sts-fetch.test", 404, "not found".into(), true),
        (
            "sts-invalid.test",
            200,
            "version: STSv1\nmode: sometimes\nmx: a\nmax_age: 1\n".into(),
            true,
        ),
        (
            "sts-webpki.test",
            200,
            policy("enforce", "mx.sts-webpki.test"),
            false,
        ),
    ];
    let (https, sts_port) = bind_group(sts.len()).await;
    for ((domain, status, body, ca_signed), (ip, l)) in sts.into_iter().zip(https) {
        let host = format!("mta-sts.{domain}");
        let leaf = if ca_signed {
            ca.leaf(&[&host])
        } else {
            self_signed(&[&host])
        };
        zone.txt(&format!("_mta-sts.{domain}"), STS_TXT);
        zone.a(&host, ip);
        spawn_https(l, server_config(&leaf, false), status, body);
    }

    let dns = spawn_dns(zone).await;
    World {
        dns,
        port,
        sts_port,
        ca_file: ca.write_pem(dir.path()),
        ca_der: ca.der.clone(),
        openssl,
        _dir: dir,
        _children: children,
    }
}

impl World {
    fn prober(&self) -> Prober {
        Prober::new(ProbeConfig {
            addresses: mailtls::probe::AddressPolicy::any(),
            resolver: Some(self.dns),
            extra_roots: vec![self.ca_der.clone()],
            helo: "probe.test".into(),
            smtp_port: self.port,
            sts_port: self.sts_port,
            timeouts: Timeouts::from_step(Duration::from_secs(5)),
            ..ProbeConfig::default()
        })
        .expect("prober")
    }

    fn cli_base(&self) -> Vec<String> {
        let mut args = probe_args(self.dns, self.port, &self.ca_file, "5s");
        args.extend(["--sts-port".into(), self.sts_port.to_string()]);
        args.extend(["--helo", "probe.test"].map(String::from));
        args
    }
}

const STRICT: Expected = Expected {
    require_tls: true,
    require_ca_signed: true,
    validate_hostname: true,
    min_tls: TlsVersion::V1_2,
};

/// Destination → expected outcome under STRICT.
const STRICT_CASES: &[(&str, &str)] = &[
    ("good.test", "pass"),
    ("selfsigned.test", "certificate-not-trusted"),
    ("wrongname.test", "certificate-host-mismatch"),
    ("expired.test", "certificate-expired"),
    ("expiring.test", "pass"),
    ("tls12.test", "pass"),
    ("nostarttls.test", "starttls-not-supported"),
    ("rejecting.test", "smtp-error"),
    ("noehlo.test", "starttls-not-supported"),
    ("refused.test", "starttls-not-supported"),
    ("broken.test", "validation-failure"),
    ("injected.test", "smtp-error"),
    ("legacy.test", "tls-version-too-low"),
    ("tls11.test", "tls-version-too-low"),
    ("domainname.test", "pass"),
    ("tlsa-good.test", "pass"),
    // Its TLSA record does not match, but this zone is unsigned: a DANE sender ignores it
    // (tests/dane_delivery.rs has the signed one, where it fails).
    ("tlsa-bad.test", "pass"),
    ("sts-enforce.test", "pass"),
    ("sts-testing.test", "pass"),
    ("sts-mismatch.test", "validation-failure"),
    ("sts-fetch.test", "sts-policy-fetch-error"),
    ("sts-invalid.test", "sts-policy-invalid"),
    ("sts-webpki.test", "sts-webpki-invalid"),
    ("multi.test", "certificate-not-trusted"),
    ("dead.test", "connect-error"),
    ("nullmx.test", "null-mx"),
    ("implicit.test", "pass"),
    ("missing.test", "dns-error"),
];

fn by_destination(reports: &[DestinationReport]) -> BTreeMap<String, &DestinationReport> {
    reports.iter().map(|r| (r.destination.clone(), r)).collect()
}

async fn probe_all(prober: &Prober, names: &[&str], req: Expected) -> Vec<DestinationReport> {
    prober
        .probe_many(
            names
                .iter()
                .map(|d| {
                    (
                        Target::parse(d, prober.config().smtp_port).expect("target"),
                        req,
                    )
                })
                .collect(),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_strict_verdicts() {
    let w = world().await;
    let prober = w.prober();
    let mut names: Vec<&str> = STRICT_CASES.iter().map(|(d, _)| *d).collect();
    // Where openssl is installed, the real TLS 1.0-only server must be part of the run.
    let has_openssl = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok();
    assert_eq!(w.openssl, has_openssl, "openssl s_server -tls1 fixture");
    if w.openssl {
        names.push("openssl10.test");
    }
    let reports = probe_all(&prober, &names, STRICT).await;
    assert_eq!(reports.len(), names.len());
    let got = by_destination(&reports);
    for (dest, want) in STRICT_CASES {
        let r = got[*dest];
        assert_eq!(r.outcome(), *want, "{dest}: {}", r.message);
        assert_eq!(r.passed(), *want == "pass" || *want == "null-mx", "{dest}");
        let res = r.to_result();
        assert_eq!(res.outcome, *want);
        assert_eq!(res.destination, *dest);
    }

    // Details behind the verdicts.
    let good = got["good.test"];
    let tls = good.hosts[0].tls.as_ref().expect("tls");
    assert_eq!(tls.version, "1.3");
    assert!(tls.chain.trusted && tls.chain.name_matches_host && tls.ehlo_after_tls);
    assert_eq!(tls.chain.chain[0].sans, vec!["mx.good.test"]);
    assert!(tls.chain.days_left.expect("days") >= 363);
    assert_eq!(good.to_result().tls_version.as_deref(), Some("1.3"));
    assert_eq!(good.hosts[0].starttls_offered, Some(true));

    assert_eq!(
        got["tls12.test"].hosts[0]
            .tls
            .as_ref()
            .expect("tls")
            .version,
        "1.2"
    );
    assert!(
        got["injected.test"]
            .message
            .contains("after the STARTTLS reply")
    );
    assert!(got["rejecting.test"].message.contains("554"));
    assert!(got["noehlo.test"].message.contains("EHLO rejected"));
    let expiring = got["expiring.test"];
    assert!(
        expiring.warnings.iter().any(|w| w.contains("expires in")),
        "{:?}",
        expiring.warnings
    );
    assert!(expiring.to_result().cert_days_left.expect("days") < 21);

    let expired = got["expired.test"].hosts[0].tls.as_ref().expect("tls");
    assert!(expired.chain.expired && expired.chain.trusted_ignoring_expiry);
    let ss = got["selfsigned.test"].hosts[0].tls.as_ref().expect("tls");
    assert!(!ss.chain.trusted && ss.chain.name_matches_host);

    assert_eq!(
        got["legacy.test"].hosts[0].legacy_tls.as_deref(),
        Some("1.0")
    );
    assert!(
        got["legacy.test"].message.contains("TLS 1.0"),
        "{}",
        got["legacy.test"].message
    );
    assert_eq!(
        got["tls11.test"].hosts[0].legacy_tls.as_deref(),
        Some("1.1")
    );
    if w.openssl {
        let r = got["openssl10.test"];
        assert_eq!(r.outcome(), "tls-version-too-low", "{}", r.message);
        assert_eq!(r.hosts[0].legacy_tls.as_deref(), Some("1.0"));
    }
    assert_eq!(
        got["domainname.test"].hosts[0]
            .tls
            .as_ref()
            .expect("tls")
            .chain
            .name_matches_domain,
        Some(true)
    );
    use mailtls::probe::DecidedBy;
    assert_eq!(got["tlsa-good.test"].hosts[0].tlsa_match, Some(true));
    assert_eq!(got["tlsa-bad.test"].hosts[0].tlsa.len(), 1);
    assert_eq!(
        got["tlsa-bad.test"].hosts[0].tlsa_authenticated,
        Some(false)
    );
    assert!(
        got["tlsa-bad.test"].hosts[0]
            .warnings
            .iter()
            .any(|w| w.contains("not DNSSEC-authenticated") && w.contains("none matches")),
        "{:?}",
        got["tlsa-bad.test"].hosts[0].warnings
    );
    assert_ne!(got["tlsa-good.test"].decided_by, DecidedBy::Dane);

    let enforce = got["sts-enforce.test"].sts.as_ref().expect("sts");
    assert_eq!(
        enforce.policy.as_ref().expect("policy").mode,
        mailtls::probe::StsMode::Enforce
    );
    assert_eq!(enforce.mx_match, Some(true));
    assert_eq!(enforce.id.as_deref(), Some("20260101T000000"));
    // Which mechanism decided: the enforce policy; a testing one or a broken one does not.
    assert_eq!(got["sts-enforce.test"].decided_by, DecidedBy::MtaSts);
    assert_ne!(got["sts-testing.test"].decided_by, DecidedBy::MtaSts);
    assert_ne!(got["sts-webpki.test"].decided_by, DecidedBy::MtaSts);
    assert_eq!(got["good.test"].decided_by, DecidedBy::Requirement);
    assert!(
        got["sts-testing.test"]
            .warnings
            .iter()
            .any(|w| w.contains("not listed"))
    );
    assert_eq!(
        got["sts-mismatch.test"].sts.as_ref().expect("sts").mx_match,
        Some(false)
    );
    assert!(
        got["sts-webpki.test"]
            .sts
            .as_ref()
            .expect("sts")
            .error
            .is_some()
    );

    let multi = got["multi.test"];
    let hosts: Vec<&str> = multi.hosts.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(hosts, vec!["mx1.multi.test", "mx2.multi.test"]);
    assert!(multi.hosts[0].passed && !multi.hosts[1].passed);
    assert_eq!(multi.to_result().host.as_deref(), Some("mx2.multi.test"));
    assert_eq!(
        got["implicit.test"].mx_kind,
        mailtls::probe::MxKind::Implicit
    );
    assert_eq!(got["nullmx.test"].mx_kind, mailtls::probe::MxKind::Null);

    let summary = summarize(&reports, "2026-01-01T00:00:00Z");
    assert_eq!(summary.destinations as usize, reports.len());
    assert_eq!(summary.passed + summary.failed, summary.destinations);
    assert_eq!(summary.by_outcome["pass"], 9);
    assert!(summary.warnings >= 3);
    let results = mailtls::probe::results_for_status(&reports, 5);
    assert_eq!(results.len(), 5);
    assert!(results.iter().all(|r| !r.passed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_weaker_requirements() {
    let w = world().await;
    let prober = w.prober();
    let tls_only = Expected {
        require_tls: true,
        ..Expected::default()
    };
    let reports = probe_all(
        &prober,
        &[
            "selfsigned.test",
            "wrongname.test",
            "expired.test",
            "nostarttls.test",
            "broken.test",
        ],
        tls_only,
    )
    .await;
    let got = by_destination(&reports);
    assert_eq!(got["selfsigned.test"].outcome(), "pass");
    assert_eq!(got["wrongname.test"].outcome(), "pass");
    assert_eq!(got["expired.test"].outcome(), "pass");
    assert!(
        got["expired.test"]
            .warnings
            .iter()
            .any(|w| w.contains("expired"))
    );
    assert_eq!(got["nostarttls.test"].outcome(), "starttls-not-supported");
    assert_eq!(got["broken.test"].outcome(), "validation-failure");

    // Nothing required: plaintext is reported, not failed.
    let r = prober
        .probe(
            &Target::Domain("nostarttls.test".into()),
            &Expected::default(),
        )
        .await;
    assert_eq!(r.outcome(), "pass");
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("STARTTLS not offered"))
    );

    // Minimum version.
    let v13 = Expected {
        min_tls: TlsVersion::V1_3,
        ..STRICT
    };
    let reports = probe_all(&prober, &["tls12.test", "good.test"], v13).await;
    let got = by_destination(&reports);
    assert_eq!(got["tls12.test"].outcome(), "tls-version-too-low");
    assert_eq!(got["good.test"].outcome(), "pass");

    // A TLS 1.0-only server allowed by min 1.0: TLS passes, a CA check cannot be done.
    let v10 = Expected {
        require_tls: true,
        min_tls: TlsVersion::V1_0,
        ..Expected::default()
    };
    let r = prober
        .probe(&Target::Domain("legacy.test".into()), &v10)
        .await;
    assert_eq!(r.outcome(), "pass", "{}", r.message);
    assert!(r.warnings.iter().any(|w| w.contains("TLS 1.0")));
    let r = prober
        .probe(
            &Target::Domain("legacy.test".into()),
            &Expected {
                require_ca_signed: true,
                ..v10
            },
        )
        .await;
    assert_eq!(r.outcome(), "validation-failure");

    // A gateway host target (no MX lookup, no MTA-STS).
    let gw = Target::parse(&format!("[mx.good.test]:{}", w.port), 25).expect("target");
    let r = prober.probe(&gw, &STRICT).await;
    assert_eq!(r.outcome(), "pass", "{}", r.message);
    assert_eq!(r.destination, format!("[mx.good.test]:{}", w.port));
    assert_eq!(r.mx_kind, mailtls::probe::MxKind::Host);
    let r = prober
        .probe(
            &Target::parse(&format!("[mx.selfsigned.test]:{}", w.port), 25).expect("t"),
            &STRICT,
        )
        .await;
    assert_eq!(r.outcome(), "certificate-not-trusted");

    // A gateway with mxLookup: its MX hosts are probed, its own name also counts for the
    // certificate, and MTA-STS is not consulted.
    let gw = Target::Host {
        host: "sts-mismatch.test".into(),
        port: w.port,
        mx_lookup: true,
    };
    let r = prober.probe(&gw, &STRICT).await;
    assert_eq!(r.outcome(), "pass", "{}", r.message);
    assert_eq!(r.destination, format!("sts-mismatch.test:{}", w.port));
    assert_eq!(r.mx_kind, mailtls::probe::MxKind::Mx);
    assert!(r.sts.is_none());
    assert_eq!(r.hosts[0].host, "mx.sts-mismatch.test");
}

async fn cli(args: &[String]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .args(args)
        .output()
        .await
        .expect("run mailtls");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_outcomes(stdout: &str) -> (serde_json::Value, BTreeMap<String, String>) {
    let doc: serde_json::Value = serde_json::from_str(stdout).expect("JSON output");
    let map = doc["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| {
            (
                d["destination"].as_str().unwrap_or_default().to_string(),
                d["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    (doc, map)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_strict_verdicts() {
    let w = world().await;
    let mut args = w.cli_base();
    args.extend(
        [
            "--require-tls",
            "--require-ca-signed",
            "--validate-hostname",
            "--format",
            "json",
        ]
        .map(String::from),
    );
    args.extend(STRICT_CASES.iter().map(|(d, _)| d.to_string()));
    if w.openssl {
        args.push("openssl10.test".into());
    }
    let (code, stdout, stderr) = cli(&args).await;
    assert_eq!(code, 1, "{stderr}");
    let (doc, got) = json_outcomes(&stdout);
    for (dest, want) in STRICT_CASES {
        assert_eq!(got.get(*dest).map(String::as_str), Some(*want), "{dest}");
    }
    if w.openssl {
        assert_eq!(got["openssl10.test"], "tls-version-too-low");
    }
    assert_eq!(doc["schema"], "mailtls.io/probe/v1");
    assert_eq!(
        doc["summary"]["destinations"].as_u64(),
        Some(got.len() as u64)
    );
    assert!(
        stderr.contains(&format!("[{n}/{n}]", n = got.len())),
        "progress: {stderr}"
    );
    let good = doc["destinations"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["destination"] == "good.test"))
        .expect("good.test");
    assert_eq!(good["passed"], true);
    assert_eq!(good["requirement"]["validateHostname"], true);
    assert_eq!(good["hosts"][0]["tls"]["version"], "1.3");
    assert_eq!(good["hosts"][0]["tls"]["trusted"], true);
    assert_eq!(
        good["hosts"][0]["tls"]["chain"][0]["sans"][0],
        "mx.good.test"
    );
    // The documented schema (docs/probe-json.md), key by key where it matters to scripts.
    assert_eq!(good["mxKind"], "mx");
    assert!(good["hosts"][0]["tls"]["daysLeft"].as_i64().is_some());
    assert_eq!(good["hosts"][0]["tls"]["trustedIgnoringExpiry"], true);
    assert_eq!(
        good["hosts"][0]["tls"]["chain"][0]["notAfter"]
            .as_str()
            .map(str::len),
        Some(20)
    );
    assert_eq!(good["hosts"][0]["starttlsOffered"], true);
    let sts = doc["destinations"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["destination"] == "sts-enforce.test"))
        .expect("sts-enforce.test");
    assert_eq!(sts["sts"]["policy"]["maxAge"], 86400);
    assert_eq!(sts["sts"]["policy"]["mode"], "enforce");
    assert_eq!(sts["sts"]["mxMatch"], true);
    assert_eq!(sts["decidedBy"], "mta-sts");
    assert_eq!(doc["summary"]["byOutcome"]["pass"].as_u64(), Some(9));

    // All passing → exit 0, table output.
    let mut args = w.cli_base();
    args.extend(
        [
            "--require-ca-signed",
            "--validate-hostname",
            "good.test",
            "tls12.test",
            "sts-enforce.test",
        ]
        .map(String::from),
    );
    args.push(format!("[mx.good.test]:{}", w.port));
    let (code, stdout, stderr) = cli(&args).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.starts_with("DESTINATION"), "{stdout}");
    assert!(stdout.contains("good.test") && stdout.contains("pass"));
    assert!(
        stdout.contains("4 destination(s): 4 passed, 0 failed"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_weaker_requirements_and_usage() {
    let w = world().await;
    // --require-tls only: self-signed passes, no STARTTLS fails.
    let mut args = w.cli_base();
    args.extend(
        [
            "--require-tls",
            "--format",
            "json",
            "selfsigned.test",
            "nostarttls.test",
        ]
        .map(String::from),
    );
    let (code, stdout, _) = cli(&args).await;
    assert_eq!(code, 1);
    let (_, got) = json_outcomes(&stdout);
    assert_eq!(got["selfsigned.test"], "pass");
    assert_eq!(got["nostarttls.test"], "starttls-not-supported");

    // --min-tls 1.3 against a TLS 1.2-only server; destinations from --file.
    let list = w._dir.path().join("list.txt");
    std::fs::write(&list, "# partners\ntls12.test\n\nlegacy.test  # old\n").expect("write list");
    let mut args = w.cli_base();
    args.extend(
        [
            "--require-tls",
            "--min-tls",
            "1.3",
            "--format",
            "json",
            "--file",
        ]
        .map(String::from),
    );
    args.push(list.display().to_string());
    let (code, stdout, _) = cli(&args).await;
    assert_eq!(code, 1);
    let (_, got) = json_outcomes(&stdout);
    assert_eq!(got["tls12.test"], "tls-version-too-low");
    assert_eq!(got["legacy.test"], "tls-version-too-low");

    // --min-tls 1.0 with CA signatures required: a TLS 1.0 server cannot be checked.
    let mut args = w.cli_base();
    args.extend(
        [
            "--require-ca-signed",
            "--min-tls",
            "1.0",
            "--format",
            "json",
            "legacy.test",
        ]
        .map(String::from),
    );
    let (code, stdout, _) = cli(&args).await;
    assert_eq!(code, 1);
    assert_eq!(
        json_outcomes(&stdout).1["legacy.test"],
        "validation-failure"
    );

    // Nothing required: exit 0 even without STARTTLS, with a warning in the table.
    let mut args = w.cli_base();
    args.push("nostarttls.test".into());
    let (code, stdout, _) = cli(&args).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("warning:"), "{stdout}");

    // Usage errors exit 2.
    for bad in [
        vec!["probe".to_string()],
        vec![
            "probe".into(),
            "--min-tls".into(),
            "1.4".into(),
            "good.test".into(),
        ],
        vec![
            "probe".into(),
            "--timeout".into(),
            "forever".into(),
            "good.test".into(),
        ],
        vec!["probe".into(), "bad name.test".into()],
        vec![
            "probe".into(),
            "--ca-file".into(),
            "/nonexistent/ca.pem".into(),
            "good.test".into(),
        ],
        vec!["probe".into(), "--file".into(), "/nonexistent/list".into()],
        vec![
            "probe".into(),
            "--format".into(),
            "xml".into(),
            "good.test".into(),
        ],
    ] {
        let (code, _, stderr) = cli(&bad).await;
        assert_eq!(code, 2, "{bad:?}: {stderr}");
        assert!(!stderr.is_empty());
    }
    let (code, stdout, _) = cli(&["probe".into(), "--help".into()]).await;
    assert_eq!(code, 0);
    for flag in [
        "--file",
        "--port",
        "--resolver",
        "--ca-file",
        "--require-tls",
        "--require-ca-signed",
        "--validate-hostname",
        "--min-tls",
        "--concurrency",
        "--timeout",
        "--format",
        "--helo",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_gateway_library_and_cli() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ipv6 test CA");
    let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
        skip::skip("no IPv6 loopback ([::1] cannot be bound)");
        return;
    };
    let port = listener.local_addr().expect("addr").port();
    spawn_smtp(
        listener,
        Smtp::Good(server_config(&ca.leaf(&["::1"]), false)),
    );
    let dest = format!("[::1]:{port}");

    let prober = Prober::new(ProbeConfig {
        addresses: mailtls::probe::AddressPolicy::any(),
        extra_roots: vec![ca.der.clone()],
        check_sts: false,
        ..ProbeConfig::default()
    })
    .expect("prober");
    let r = prober
        .probe(&Target::parse(&dest, 25).expect("target"), &STRICT)
        .await;
    assert_eq!(r.outcome(), "pass", "{}", r.message);
    assert_eq!(r.destination, dest);
    let tls = r.hosts[0].tls.as_ref().expect("tls");
    assert!(tls.chain.name_matches_host);
    assert_eq!(r.hosts[0].connected.as_deref(), Some(dest.as_str()));

    let ca_file = ca.write_pem(dir.path());
    let (code, stdout, stderr) = cli(&[
        "probe".into(),
        "--ca-file".into(),
        ca_file.display().to_string(),
        "--validate-hostname".into(),
        // The old spelling still works, with a notice.
        "--output".into(),
        "json".into(),
        dest.clone(),
    ])
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(json_outcomes(&stdout).1[&dest], "pass");
    assert!(
        stderr.contains("--output json is deprecated, use --format json"),
        "{stderr}"
    );
}
