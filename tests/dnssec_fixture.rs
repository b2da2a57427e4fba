//! The DNSSEC fixture (tests/common/dnssec.rs) works: through its validating resolver a
//! signed zone's answers carry the AD bit, an unsigned zone's do not (and are not bogus), a
//! zone signed with a key the resolver does not trust gives SERVFAIL, and other `.test` names
//! are forwarded to dnsmasq and answered without AD.
//!
//! Runs itself again inside a private network namespace (needs root for it and port 53).

mod common;

use common::dnssec::{SignedDns, Zone};
use std::process::Command;

const INSIDE: &str = "MAILTLS_DNSSEC_FIXTURE_NETNS";
const TEST_NAME: &str = "signed_insecure_bogus_and_forwarded_answers";
const DNS: &str = "127.0.0.53";
/// Not port 53, so the fixture is seen to use the port it is given.
const AUTH: &str = "127.0.0.54:5353";
const DNSMASQ: &str = "127.0.0.52";
const TLSA: &str = "3 1 1 0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF";

#[test]
fn signed_insecure_bogus_and_forwarded_answers() {
    if std::env::var_os(INSIDE).is_some() {
        inside();
        return;
    }
    common::mail::run_in_netns(TEST_NAME, INSIDE, &[DNS, "127.0.0.54", DNSMASQ], DNS);
}

fn zone(name: &str, records: &[&str], signed: bool, bogus: bool) -> Zone {
    Zone {
        name: name.into(),
        records: records.iter().map(|r| r.to_string()).collect(),
        signed,
        bogus,
    }
}

struct Reply {
    status: String,
    ad: bool,
    answer: String,
    text: String,
}

/// `dig +dnssec @DNS name type`.
fn dig(name: &str, rtype: &str) -> Reply {
    let text = common::mail::must(
        Command::new("dig")
            .args(["+dnssec", "+time=5", "+tries=1"])
            .arg(format!("@{DNS}"))
            .args([name, rtype]),
    );
    let status = text
        .split_once("status: ")
        .and_then(|(_, rest)| rest.split(',').next())
        .unwrap_or("")
        .to_string();
    let ad = text
        .lines()
        .find_map(|l| l.strip_prefix(";; flags:"))
        .and_then(|f| f.split(';').next())
        .is_some_and(|f| f.split_whitespace().any(|flag| flag == "ad"));
    let answer = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect::<Vec<_>>()
        .join("\n");
    Reply {
        status,
        ad,
        answer,
        text,
    }
}

fn inside() {
    let started = std::time::Instant::now();
    let _dnsmasq = common::mail::dnsmasq(DNSMASQ, &[("mx.other.test", "127.0.0.24")], &[]);
    let zones = [
        zone(
            "dane.test",
            &[
                "@ 300 IN MX 10 mx.dane.test.",
                "mx 300 IN A 127.0.0.21",
                &format!("_25._tcp.mx 300 IN TLSA {TLSA}"),
            ],
            true,
            false,
        ),
        zone(
            "plain.test",
            &["@ 300 IN MX 10 mx", "mx 300 IN A 127.0.0.22"],
            false,
            false,
        ),
        zone("bogus.test", &["mx 300 IN A 127.0.0.23"], true, true),
    ];
    let dns = SignedDns::start(DNS, AUTH, &zones, Some(DNSMASQ));
    eprintln!("fixture started in {:?}", started.elapsed());
    assert_eq!(
        dns.resolv_conf(),
        format!("nameserver {DNS}\noptions trust-ad\n")
    );
    let log = || dns.log();

    let r = dig("_25._tcp.mx.dane.test", "TLSA");
    assert_eq!(r.status, "NOERROR", "{}\n{}", r.text, log());
    assert!(r.ad, "signed TLSA without AD:\n{}\n{}", r.text, log());
    let tlsa = r.answer.replace(' ', "").to_uppercase();
    assert!(tlsa.contains(&TLSA.replace(' ', "")), "{}", r.text);
    assert!(r.answer.contains("RRSIG"), "{}", r.text);

    for (name, rtype, want) in [
        ("dane.test", "MX", "mx.dane.test."),
        ("mx.dane.test", "A", "127.0.0.21"),
    ] {
        let r = dig(name, rtype);
        assert!(
            r.status == "NOERROR" && r.ad,
            "{name} {rtype}:\n{}\n{}",
            r.text,
            log()
        );
        assert!(r.answer.contains(want), "{}", r.text);
    }

    let r = dig("mx.plain.test", "A");
    assert_eq!(r.status, "NOERROR", "unsigned zone:\n{}\n{}", r.text, log());
    assert!(!r.ad, "unsigned zone answered with AD:\n{}", r.text);
    assert!(r.answer.contains("127.0.0.22"), "{}", r.text);

    let r = dig("mx.bogus.test", "A");
    assert_eq!(r.status, "SERVFAIL", "bogus zone:\n{}\n{}", r.text, log());
    assert!(
        log().contains("validation failure <mx.bogus.test. A IN>"),
        "{}",
        log()
    );

    let r = dig("mx.other.test", "A");
    assert_eq!(r.status, "NOERROR", "forwarded:\n{}\n{}", r.text, log());
    assert!(!r.ad, "forwarded name answered with AD:\n{}", r.text);
    assert!(r.answer.contains("127.0.0.24"), "{}", r.text);

    // Outside every zone and the forward: nothing to ask (only loopback is), so SERVFAIL.
    let r = dig("example.com", "A");
    assert_eq!(r.status, "SERVFAIL", "{}", r.text);
    eprintln!("all checks done in {:?}", started.elapsed());
}
