//! `mailtls probe` and DANE, against zones signed by the test (tests/common/dnssec.rs) and a
//! real TLS receiver, in a private network namespace: an authenticated TLSA record that
//! matches decides (`decidedBy: dane`), one that does not fails the host (`tlsa-invalid`),
//! and the same mismatch in an unsigned zone is only a warning (`tlsaAuthenticated: false`),
//! as a DANE sender ignores it. Needs root and unbound; skipped without root except under
//! CI=true.

mod common;

use common::dnssec::{SignedDns, Zone};
use common::mail::{Certs, Store, der, start_sink, tls_config};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::process::Command;
use std::sync::Arc;

const INSIDE: &str = "MAILTLS_PROBE_DANE_NETNS";
const TEST_NAME: &str = "the_probe_trusts_only_authenticated_tlsa_records";
const DNS: &str = "127.0.0.53";
const AUTH_DNS: (&str, &str) = ("127.0.0.54", "127.0.0.54:5353");
const MX: (&str, &str) = ("mx", "127.0.0.13");

#[test]
fn the_probe_trusts_only_authenticated_tlsa_records() {
    if std::env::var_os(INSIDE).is_some() {
        inside();
        return;
    }
    common::mail::run_in_netns(TEST_NAME, INSIDE, &[DNS, AUTH_DNS.0, MX.1], DNS);
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn inside() {
    let certs = Certs::new();
    let leaf = certs.ca_signed("mx.any.test");
    let matching = hex_sha256(&der(&leaf));
    let other = hex_sha256(b"another certificate");
    let zone = |name: &str, tlsa: &str, signed: bool| Zone {
        name: name.into(),
        records: vec![
            format!("@ 300 IN MX 10 mx.{name}."),
            format!("mx 300 IN A {}", MX.1),
            format!("_25._tcp.mx 300 IN TLSA 3 0 1 {tlsa}"),
        ],
        signed,
        bogus: false,
    };
    let _dns = SignedDns::start(
        DNS,
        AUTH_DNS.1,
        &[
            zone("dane-good.test", &matching, true),
            zone("dane-bad.test", &other, true),
            zone("plain-bad.test", &other, false),
            // Unsigned MX records naming a host whose TLSA records are signed.
            Zone {
                name: "plain-mx.test".into(),
                records: vec!["@ 300 IN MX 10 mx.dane-bad.test.".into()],
                signed: false,
                bogus: false,
            },
        ],
        None,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let store: Store = Arc::default();
    start_sink(&rt, MX, Some(tls_config(&leaf)), &store);
    let ca = tempfile::NamedTempFile::new().expect("ca file");
    std::fs::write(ca.path(), &certs.ca).expect("write ca");

    let out = Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .args(["probe", "--format", "json", "--resolver"])
        .arg(format!("{DNS}:53"))
        .arg("--ca-file")
        .arg(ca.path())
        .args(["--timeout", "5s", "--helo", "probe.test"])
        .args([
            "dane-good.test",
            "dane-bad.test",
            "plain-bad.test",
            "plain-mx.test",
        ])
        .output()
        .expect("mailtls probe");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "probe JSON: {e}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let get = |d: &str| -> Value {
        doc["destinations"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["destination"] == d).cloned())
            .unwrap_or_else(|| panic!("{d} not in {doc}"))
    };
    // One destination fails, so exit 1.
    assert_eq!(out.status.code(), Some(1), "{doc}");

    let good = get("dane-good.test");
    assert_eq!(good["outcome"], "pass", "{good}");
    assert_eq!(good["decidedBy"], "dane", "{good}");
    assert_eq!(good["hosts"][0]["tlsaAuthenticated"], true, "{good}");
    assert_eq!(good["hosts"][0]["tlsaMatch"], true, "{good}");

    let bad = get("dane-bad.test");
    assert_eq!(bad["outcome"], "tlsa-invalid", "{bad}");
    assert_eq!(bad["hosts"][0]["tlsaAuthenticated"], true, "{bad}");

    let plain = get("plain-bad.test");
    assert_eq!(plain["outcome"], "pass", "{plain}");
    assert_ne!(plain["decidedBy"], "dane", "{plain}");
    assert_eq!(plain["hosts"][0]["tlsaAuthenticated"], false, "{plain}");
    assert_eq!(plain["hosts"][0]["tlsaMatch"], false, "{plain}");
    let warnings = plain["hosts"][0]["warnings"].to_string();
    assert!(warnings.contains("not DNSSEC-authenticated"), "{plain}");
    assert_eq!(good["mxAuthenticated"], true, "{good}");

    // RFC 7672 §2.2: without authenticated MX records the MX host's signed TLSA records do
    // not count either.
    let plain_mx = get("plain-mx.test");
    assert_eq!(plain_mx["mxAuthenticated"], false, "{plain_mx}");
    assert_eq!(plain_mx["outcome"], "pass", "{plain_mx}");
    assert_ne!(plain_mx["decidedBy"], "dane", "{plain_mx}");
    assert_eq!(
        plain_mx["hosts"][0]["tlsaAuthenticated"], false,
        "{plain_mx}"
    );
    assert!(
        plain_mx["hosts"][0]["warnings"]
            .to_string()
            .contains("the MX records are not DNSSEC-authenticated"),
        "{plain_mx}"
    );

    // The table says what decided.
    let out = Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .args(["probe", "--resolver"])
        .arg(format!("{DNS}:53"))
        .arg("--ca-file")
        .arg(ca.path())
        .args(["--timeout", "5s", "--helo", "probe.test", "dane-good.test"])
        .env("NO_COLOR", "1")
        .output()
        .expect("mailtls probe");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.contains("decided by DANE (authenticated TLSA)"),
        "{table}"
    );
}
