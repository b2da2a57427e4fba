//! The chart's validating resolver (`relay.dnssec`), run for real: the `unbound.conf` from
//! `helm template` is checked with `unbound-checkconf` and started with the resolver
//! container's own command, in a private network namespace, in front of a signed test zone
//! (tests/common/dnssec.rs) that plays the cluster DNS. It answers for signed records with
//! the AD bit, SERVFAIL for a bogus zone, and asks nobody but its forwarder. Needs root,
//! unbound and helm (scripts/test-cluster.sh build); skipped without them except under
//! CI=true.

mod common;

use common::dnssec::{SignedDns, Zone};
use common::mail::{Kill, must, sh, wait_for};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};

const INSIDE: &str = "MAILTLS_CHART_RESOLVER_NETNS";
const TEST_NAME: &str = "the_charts_resolver_validates_for_real";
/// The fixture's validating resolver, which plays the cluster DNS here.
const CLUSTER_DNS: &str = "127.0.0.53";
const AUTH_DNS: (&str, &str) = ("127.0.0.54", "127.0.0.54:5353");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn template(helm: &Path, sets: &[String]) -> (bool, String) {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "t", "charts/mailtls", "--namespace", "mail"])
        .current_dir(root());
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    sh(&mut cmd)
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

#[test]
fn the_charts_resolver_validates_for_real() {
    let Some(helm) = common::helm() else {
        common::skip::skip("helm is not built (scripts/test-cluster.sh build)");
        return;
    };
    if std::env::var_os(INSIDE).is_some() {
        inside(&helm);
        return;
    }
    // Without the cluster DNS address (helm template cannot look it up) the chart says so.
    // It is on by default.
    let (ok, out) = template(&helm, &["relay.enabled=true".into()]);
    assert!(
        !ok && out
            .contains("relay.dnssec.enabled (DANE, on by default) needs relay.dnssec.clusterDns"),
        "{out}"
    );
    common::mail::run_in_netns(
        TEST_NAME,
        INSIDE,
        &[CLUSTER_DNS, AUTH_DNS.0, "127.0.0.1"],
        CLUSTER_DNS,
    );
}

fn dig(args: &[&str]) -> String {
    must(
        Command::new("dig")
            .args(["@127.0.0.1", "+tries=1", "+time=5"])
            .args(args),
    )
}

fn inside(helm: &Path) {
    let zone = |name: &str, bogus: bool| Zone {
        name: name.into(),
        records: vec![
            format!("@ 300 IN MX 10 mx.{name}."),
            "mx 300 IN A 127.0.0.13".into(),
            format!("_25._tcp.mx 300 IN TLSA 3 0 1 {}", "ab".repeat(32)),
        ],
        signed: true,
        bogus,
    };
    let cluster = SignedDns::start(
        CLUSTER_DNS,
        AUTH_DNS.1,
        &[zone("dane.test", false), zone("bogus.test", true)],
        None,
    );
    let anchor = cluster.anchor("dane.test").display().to_string();
    let (ok, yaml) = template(
        helm,
        &[
            "relay.enabled=true".into(),
            "relay.dnssec.enabled=true".into(),
            format!("relay.dnssec.clusterDns={CLUSTER_DNS}"),
            // The test zone's key, as an admin would add one for a private signed zone.
            format!("relay.dnssec.extraConfig[0]=trust-anchor-file: \"{anchor}\""),
            // unbound answers the RFC 6761 name `test.` itself unless told not to.
            "relay.dnssec.extraConfig[1]=local-zone: \"test.\" nodefault".into(),
        ],
    );
    assert!(ok, "helm template: {yaml}");
    let docs = documents(&yaml);
    let conf = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "t-mailtls-relay-resolver")
        .and_then(|d| d["data"]["unbound.conf"].as_str())
        .expect("the resolver's ConfigMap")
        .to_string();
    let relay = docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("relay");
    let pod = &relay["spec"]["template"]["spec"];
    assert_eq!(pod["dnsPolicy"], "None");
    assert_eq!(pod["dnsConfig"]["nameservers"][0], "127.0.0.1");
    assert!(
        pod["dnsConfig"]["options"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| x["name"] == "trust-ad")),
        "{}",
        pod["dnsConfig"]
    );
    let container = pod["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "resolver"))
        .expect("the resolver container");
    let command: Vec<String> = container["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|a| a.as_str().expect("arg").to_string())
        .collect();
    let mount = container["volumeMounts"][0]["mountPath"]
        .as_str()
        .expect("mount");
    let conf_path = format!("{mount}/unbound.conf");
    assert_eq!(command.last(), Some(&conf_path), "{command:?}");
    assert_eq!(
        common::default_policy_mechanisms(&docs),
        &serde_json::json!(["MtaSts", "Dane"])
    );

    // The container's command, on the ConfigMap's file at a path of our own.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("unbound.conf");
    std::fs::write(&file, &conf).expect("write unbound.conf");
    must(Command::new("unbound-checkconf").arg(&file));
    let args: Vec<String> = command[1..command.len() - 1].to_vec();
    let log = dir.path().join("unbound.log");
    let _resolver = Kill(
        Command::new(&command[0])
            .args(&args)
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start unbound"),
    );
    wait_for(10, "the chart's resolver", || {
        std::net::TcpStream::connect(("127.0.0.1", 53)).ok()
    });

    // Signed and valid: the AD bit (from this resolver's own validation: unbound never passes
    // an upstream's on), which Postfix sees through trust-ad.
    let tlsa = dig(&["_25._tcp.mx.dane.test", "TLSA"]);
    let flags = tlsa
        .lines()
        .find(|l| l.contains(";; flags:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        tlsa.contains("status: NOERROR") && flags.contains(" ad"),
        "{tlsa}\nresolver log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Signed with a key nobody trusts: SERVFAIL, never an answer.
    let bogus = dig(&["mx.bogus.test", "A"]);
    assert!(bogus.contains("status: SERVFAIL"), "{bogus}");
    drop(cluster);
}
