//! End-to-end on real Postfix: in a private network namespace, a Postfix relay configured by
//! `mailtls render` + `mailtls relay-agent --once`, a local DNS server (dnsmasq) with MX and A
//! records for the test domains, and in-process SMTP receivers (tokio + rustls) on
//! 127.0.0.x:25 with no STARTTLS, CA-signed, self-signed and wrong-name certificates. Mail is
//! sent into the relay with swaks and the test asserts where each message ended up and
//! whether it came over TLS.
//!
//! The test re-runs itself inside the namespace (`ip netns exec`), so every socket and every
//! process it starts lives there; traffic never leaves that namespace. Needs root and the
//! packages from scripts/install-test-deps.sh.

mod common;

use common::mail::{
    Certs, Kill, Msg, Posts, Store, dnsmasq_with, must, sh, start_https_sink, start_sink,
    tls_config, tls_config_with, wait_for,
};
use common::{gateway, list, policy};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

const INSIDE: &str = "MAILTLS_E2E_NETNS";
const TEST_NAME: &str = "relay_delivers_by_policy_on_real_postfix";
const DNS: &str = "127.0.0.53";
const RELAY: &str = "127.0.0.1";

/// Receivers: (name, address, TLS).
const PLAIN: (&str, &str) = ("plain", "127.0.0.10");
const SELF_SIGNED: (&str, &str) = ("self-signed", "127.0.0.11");
const WRONG_NAME: (&str, &str) = ("wrong-name", "127.0.0.12");
const GOOD: (&str, &str) = ("good", "127.0.0.13");
const TLS12_ONLY: (&str, &str) = ("tls12-only", "127.0.0.14");
const ROUTE_GW: (&str, &str) = ("route-gw", "127.0.0.20");
const SECURE_GW: (&str, &str) = ("secure-gw", "127.0.0.21");
const SMARTHOST: (&str, &str) = ("smarthost", "127.0.0.22");
const DIRECT_GW: (&str, &str) = ("direct-gw", "127.0.0.23");
const ORIGIN: (&str, &str) = ("origin", "127.0.0.30");
/// The HTTPS endpoint that takes TLS reports (reports.good.test:8443).
const REPORTS: &str = "127.0.0.40";
const ADDRESSES: &[&str] = &[
    REPORTS,
    DNS,
    PLAIN.1,
    SELF_SIGNED.1,
    WRONG_NAME.1,
    GOOD.1,
    TLS12_ONLY.1,
    ROUTE_GW.1,
    SECURE_GW.1,
    SMARTHOST.1,
    DIRECT_GW.1,
    ORIGIN.1,
];

const SENDER: &str = "sender@origin.test";

// ---------------------------------------------------------------------------------------
// Outside: make the namespace, run this test inside it, always delete it.

#[test]
fn relay_delivers_by_policy_on_real_postfix() {
    if std::env::var_os(INSIDE).is_some() {
        inside();
        return;
    }
    common::mail::run_in_netns(TEST_NAME, INSIDE, ADDRESSES, DNS);
}

// ---------------------------------------------------------------------------------------
// Inside the namespace.

/// The relay: a private Postfix instance (own config, queue and data directories).
struct Relay {
    root: PathBuf,
    etc: PathBuf,
    maps: PathBuf,
    /// The mounted "ConfigMap": versions under `..<n>`, `..data` swapped like kubelet does.
    cm: PathBuf,
    ca_file: PathBuf,
    version: u32,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.etc)
            .arg("stop")
            .output();
    }
}

impl Relay {
    fn new(root: &Path, certs: &Certs) -> Relay {
        let etc = root.join("etc");
        // The queue directory must exist (root-owned); `postfix check` makes the rest,
        // including data_directory with the right owner.
        std::fs::create_dir_all(root.join("spool")).expect("queue directory");
        common::private_postfix_config(&etc);
        let relay_cert = Certs::self_signed("relay.test");
        let ca_file = root.join("ca.pem");
        std::fs::write(&ca_file, &certs.ca).expect("ca file");
        std::fs::write(etc.join("smtpd.pem"), &relay_cert.cert).expect("smtpd cert");
        std::fs::write(etc.join("smtpd.key"), &relay_cert.key).expect("smtpd key");
        let p = |s: &Path| s.display().to_string();
        let settings = [
            format!("queue_directory={}", p(&root.join("spool"))),
            format!("data_directory={}", p(&root.join("data"))),
            format!("maillog_file={}", p(&root.join("maillog"))),
            format!("maillog_file_prefixes={}", p(root)),
            "syslog_name=mailtls-e2e".into(),
            "inet_interfaces=127.0.0.1".into(),
            "inet_protocols=ipv4".into(),
            "myhostname=relay.test".into(),
            "myorigin=relay.test".into(),
            "mydestination=".into(),
            "relay_domains=".into(),
            // Debian's "Local only" set-up (scripts/install-test-deps.sh) makes these `error`,
            // which would bounce the bounce notices; Postfix's own defaults deliver.
            "default_transport=smtp".into(),
            "relay_transport=relay".into(),
            "mynetworks=127.0.0.0/8".into(),
            "alias_maps=".into(),
            "alias_database=".into(),
            "smtp_host_lookup=dns".into(),
            "disable_dns_lookups=no".into(),
            "smtp_connect_timeout=5s".into(),
            "smtp_tls_security_level=may".into(),
            "smtpd_tls_security_level=may".into(),
            format!("smtpd_tls_cert_file={}", p(&etc.join("smtpd.pem"))),
            format!("smtpd_tls_key_file={}", p(&etc.join("smtpd.key"))),
            "compatibility_level=3.6".into(),
            "smtputf8_enable=no".into(),
        ];
        must(
            Command::new("postconf")
                .arg("-c")
                .arg(&etc)
                .arg("-e")
                .args(&settings),
        );
        // Debian's master.cf chroots smtp/smtpd; without resolver files in the queue
        // directory they cannot resolve. No chroot anywhere in the test relay.
        must(
            Command::new("postconf")
                .arg("-c")
                .arg(&etc)
                .args(["-F", "*/*/chroot = n"]),
        );
        let cm = root.join("configmap");
        std::fs::create_dir_all(&cm).expect("configmap dir");
        Relay {
            root: root.to_path_buf(),
            maps: etc.join("mailtls"),
            etc,
            cm,
            ca_file,
            version: 0,
        }
    }

    /// Render `yaml` and publish it in the watched directory the way kubelet updates a
    /// ConfigMap volume: a new `..<version>` directory, `..data` swapped by rename, and the
    /// visible names as links through `..data`.
    fn publish(&mut self, yaml: &str) {
        self.version += 1;
        let input = self.root.join(format!("policy-{}.yaml", self.version));
        std::fs::write(&input, yaml).expect("write policy");
        let version_dir = self.cm.join(format!("..v{}", self.version));
        must(
            Command::new(env!("CARGO_BIN_EXE_mailtls"))
                .arg("render")
                .arg(&input)
                .arg("--output")
                .arg(&version_dir)
                .arg("--config-dir")
                .arg(&self.maps)
                .arg("--ca-file")
                .arg(&self.ca_file)
                .args(["--postfix-version", "auto"]),
        );
        common::kubelet_swap(&self.cm, &format!("..v{}", self.version));
    }

    /// `mailtls relay-agent --once`: (applied?, output).
    fn agent_once(&self) -> (bool, String) {
        sh(Command::new(env!("CARGO_BIN_EXE_mailtls"))
            .arg("relay-agent")
            .arg("--watch-dir")
            .arg(&self.cm)
            .arg("--postfix-dir")
            .arg(&self.etc)
            .arg("--maps-dir")
            .arg(&self.maps)
            .arg("--once"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("maillog")).unwrap_or_default()
    }

    /// Apply with the agent and wait until the running Postfix has reloaded.
    fn apply(&mut self, yaml: &str) {
        self.publish(yaml);
        let reloads = self.log().matches(" reload ").count();
        let (ok, out) = self.agent_once();
        assert!(ok, "relay-agent refused a good configuration:\n{out}");
        if self.running() {
            wait_for(20, "postfix reload", || {
                (self.log().matches(" reload ").count() > reloads).then_some(())
            });
        }
    }

    fn running(&self) -> bool {
        sh(Command::new("postfix")
            .arg("-c")
            .arg(&self.etc)
            .arg("status"))
        .0
    }

    fn start(&self) {
        let (ok, out) = sh(Command::new("postfix")
            .arg("-c")
            .arg(&self.etc)
            .arg("start"));
        assert!(ok, "postfix start failed:\n{out}\nlog:\n{}", self.log());
        wait_for(20, "the relay to listen on 127.0.0.1:25", || {
            std::net::TcpStream::connect((RELAY, 25)).ok()
        });
    }

    fn installed_hash(&self) -> String {
        let text = std::fs::read_to_string(self.maps.join("manifest.json")).expect("manifest");
        let v: serde_json::Value = serde_json::from_str(&text).expect("manifest json");
        v["hash"].as_str().expect("hash").to_string()
    }

    fn queue(&self) -> String {
        sh(Command::new("postqueue").arg("-c").arg(&self.etc).arg("-p")).1
    }

    /// The log lines about one recipient's delivery attempts.
    fn attempts(&self, rcpt: &str) -> Vec<String> {
        let needle = format!("to=<{rcpt}>");
        self.log()
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("status="))
            .map(str::to_string)
            .collect()
    }

    /// Wait for the first final or deferred status line for `rcpt`.
    fn wait_status(&self, rcpt: &str) -> String {
        wait_for(30, &format!("a delivery status for {rcpt}"), || {
            self.attempts(rcpt).into_iter().next()
        })
    }
}

/// Send one message into the relay; returns (accepted, swaks transcript).
fn send(from: &str, to: &str, subject: &str, tls: bool) -> (bool, String) {
    let mut cmd = Command::new("swaks");
    cmd.args(["--server", RELAY, "--port", "25", "--helo", "client.test"])
        .args(["--from", from, "--to", to])
        .args(["--header", &format!("Subject: {subject}")])
        .args(["--body", "mailtls e2e test message", "--timeout", "20"]);
    if tls {
        cmd.arg("--tls");
    }
    sh(&mut cmd)
}

fn send_ok(to: &str, subject: &str) {
    let (ok, out) = send(SENDER, to, subject, false);
    assert!(ok, "the relay did not accept mail to {to}:\n{out}");
}

/// Messages with `subject` (bounce notices, which quote it, are not counted).
fn received(store: &Store, subject: &str) -> Vec<Msg> {
    let needle = format!("Subject: {subject}");
    store
        .lock()
        .map(|s| {
            s.iter()
                .filter(|m| !m.from.is_empty() && m.data.contains(&needle))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until `subject` arrived somewhere; assert where and with what TLS.
fn assert_delivered(store: &Store, subject: &str, sink: &str, tls: bool) {
    let msgs = wait_for(30, &format!("{subject} to arrive"), || {
        let m = received(store, subject);
        (!m.is_empty()).then_some(m)
    });
    assert_eq!(msgs.len(), 1, "{subject} arrived more than once: {msgs:?}");
    assert_eq!(
        msgs[0].sink, sink,
        "{subject} arrived at the wrong receiver"
    );
    assert_eq!(msgs[0].tls, tls, "{subject}: TLS was {} ", msgs[0].tls);
    assert_eq!(msgs[0].from, SENDER);
    assert_eq!(msgs[0].rcpts.len(), 1, "{:?}", msgs[0].rcpts);
}

/// The message bounced at its first attempt with 5.7.x, never reached a receiver, and the
/// sender got the bounce.
fn assert_bounced(relay: &Relay, store: &Store, rcpt: &str, subject: &str) {
    let line = relay.wait_status(rcpt);
    assert!(
        line.contains("status=bounced") && line.contains("dsn=5.7."),
        "{rcpt}: expected a 5.7.x bounce at the first attempt, got:\n{line}\n\nlog:\n{}",
        relay.log()
    );
    assert_eq!(
        relay.attempts(rcpt).len(),
        1,
        "more than one attempt for {rcpt}"
    );
    let notice = wait_for(30, &format!("the bounce notice for {rcpt}"), || {
        store.lock().ok().and_then(|s| {
            s.iter()
                .find(|m| m.from.is_empty() && m.sink == ORIGIN.0 && m.data.contains(rcpt))
                .cloned()
        })
    });
    assert!(notice.data.contains("5.7."), "{}", notice.data);
    assert!(
        received(store, subject).is_empty(),
        "{subject} was delivered"
    );
}

/// The first policy set: enforcement against the receivers, Monitor, a per-recipient
/// route and the inbound sender check.
fn policy_a() -> String {
    [
        list("bounce", &["nostarttls-bounce.test"]),
        list("defer", &["nostarttls-defer.test"]),
        list(
            "verified",
            &["selfsigned.test", "wrongname.test", "good.test"],
        ),
        list("monitored", &["monitored.test"]),
        list("routed", &["routed.test"]),
        list("one-address", &["alice@mixed.test"]),
        list("tls13", &["tls13.test"]),
        list("senders", &["secure-sender@partner-in.test"]),
        policy("bounce", &["bounce"], "  onFailure: Bounce"),
        policy("defer", &["defer"], "  onFailure: Defer"),
        policy("one-address", &["one-address"], "  onFailure: Bounce"),
        policy(
            "tls13",
            &["tls13"],
            "  minTlsVersion: \"1.3\"\n  onFailure: Bounce",
        ),
        policy(
            "verified",
            &["verified"],
            "  requireCASigned: true\n  validateHostname: true\n  onFailure: Bounce",
        ),
        policy(
            "monitor",
            &["monitored"],
            "  requireCASigned: true\n  validateHostname: true\n  enforcement: Monitor",
        ),
        policy("inbound", &["senders"], "").replace("direction: Outbound", "direction: Inbound"),
        gateway(
            "route",
            "  host: gw-route.test\n  appliesTo: Recipients\n  addressLists:\n    - name: routed",
        ),
    ]
    .concat()
}

/// The edit: `edit.test` becomes TLS-required, and an alternate secure route appears.
fn policy_b() -> String {
    policy_a()
        + &list("edited", &["edit.test"])
        + &policy("edited", &["edited"], "  onFailure: Defer")
        + &gateway(
            "secure",
            "  host: securegw.test\n  appliesTo: SecureTransportRequired\n  tls:\n    require: true\n    requireCASigned: true\n    validateHostname: true",
        )
}

fn inside() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    // Postfix's daemons run as the postfix user and must reach the queue inside.
    must(Command::new("chmod").arg("755").arg(root));
    let certs = Certs::new();

    let _dns = dnsmasq_with(
        DNS,
        &[
            ("reports.good.test", REPORTS),
            // A report endpoint inside the network: never posted to.
            ("internal.test", "10.1.2.3"),
            ("mx.plain.test", PLAIN.1),
            ("mx.selfsigned.test", SELF_SIGNED.1),
            ("mx.wrongname.test", WRONG_NAME.1),
            ("mx.good.test", GOOD.1),
            ("mx.tls12.test", TLS12_ONLY.1),
            ("gw-route.test", ROUTE_GW.1),
            ("securegw.test", SECURE_GW.1),
            ("mx.smarthost.test", SMARTHOST.1),
            // The smart host's own address is the plain receiver: mail there proves the MX
            // was not used.
            ("smarthost.test", PLAIN.1),
            ("gw-direct.test", DIRECT_GW.1),
            ("mx.origin.test", ORIGIN.1),
        ],
        &[
            ("nostarttls-bounce.test", "mx.plain.test"),
            ("nostarttls-defer.test", "mx.plain.test"),
            ("monitored.test", "mx.plain.test"),
            ("direct.test", "mx.plain.test"),
            ("edit.test", "mx.plain.test"),
            ("mixed.test", "mx.plain.test"),
            ("routed.test", "mx.plain.test"),
            ("selfsigned.test", "mx.selfsigned.test"),
            ("wrongname.test", "mx.wrongname.test"),
            ("good.test", "mx.good.test"),
            ("tls13.test", "mx.tls12.test"),
            ("smarthost.test", "mx.smarthost.test"),
            // The direct gateway's MX is the plain receiver: mail there would prove an MX
            // lookup that should not have happened.
            ("gw-direct.test", "mx.plain.test"),
            ("origin.test", "mx.origin.test"),
            ("reports.test", "mx.origin.test"),
        ],
        &[
            (
                "_smtp._tls.good.test",
                "v=TLSRPTv1; rua=https://reports.good.test:8443/tlsrpt",
            ),
            (
                "_smtp._tls.wrongname.test",
                "v=TLSRPTv1;rua=mailto:tlsrpt@reports.test",
            ),
            (
                "_smtp._tls.tls13.test",
                "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test, https://reports.good.test:8443/tls13",
            ),
            (
                "_smtp._tls.selfsigned.test",
                "v=TLSRPTv1; rua=https://internal.test:8443/x",
            ),
        ],
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store: Store = Arc::default();
    let ca_cfg = |name: &str| Some(tls_config(&certs.ca_signed(name)));
    start_sink(&rt, PLAIN, None, &store);
    start_sink(
        &rt,
        SELF_SIGNED,
        Some(tls_config(&Certs::self_signed("mx.selfsigned.test"))),
        &store,
    );
    start_sink(&rt, WRONG_NAME, ca_cfg("other-name.test"), &store);
    start_sink(&rt, GOOD, ca_cfg("mx.good.test"), &store);
    start_sink(
        &rt,
        TLS12_ONLY,
        Some(tls_config_with(
            &certs.ca_signed("mx.tls12.test"),
            &[&rustls::version::TLS12],
        )),
        &store,
    );
    start_sink(&rt, ROUTE_GW, ca_cfg("gw-route.test"), &store);
    start_sink(&rt, SECURE_GW, ca_cfg("securegw.test"), &store);
    start_sink(&rt, SMARTHOST, ca_cfg("mx.smarthost.test"), &store);
    start_sink(&rt, DIRECT_GW, ca_cfg("gw-direct.test"), &store);
    start_sink(&rt, ORIGIN, None, &store);
    let posts = start_https_sink(
        &rt,
        REPORTS,
        8443,
        ca_cfg("reports.good.test").expect("tls"),
    );

    let mut relay = Relay::new(&root.join("relay"), &certs);
    let started = Instant::now();
    let day_at_start = utc_day();

    // Phase A: configured by render + agent before Postfix starts.
    relay.apply(&policy_a());
    relay.start();
    let hash_a = relay.installed_hash();

    // TLS required, no STARTTLS: Bounce returns it after one attempt with 5.7.x.
    send_ok("u@nostarttls-bounce.test", "a-bounce");
    assert_bounced(&relay, &store, "u@nostarttls-bounce.test", "a-bounce");
    // ... and Defer keeps it queued, never delivered in plaintext.
    send_ok("u@nostarttls-defer.test", "a-defer");
    let line = relay.wait_status("u@nostarttls-defer.test");
    assert!(
        line.contains("status=deferred") && line.contains("dsn=4.7."),
        "{line}"
    );
    assert!(
        relay.queue().contains("u@nostarttls-defer.test"),
        "{}",
        relay.queue()
    );
    assert!(received(&store, "a-defer").is_empty());

    // One address of a domain: its own service bounces it; the rest of the domain is
    // delivered as before.
    send_ok("alice@mixed.test", "a-alice");
    assert_bounced(&relay, &store, "alice@mixed.test", "a-alice");
    send_ok("bob@mixed.test", "a-bob");
    assert_delivered(&store, "a-bob", PLAIN.0, false);

    // TLS 1.3 required, the server speaks only 1.2: the handshake fails ("Cannot start
    // TLS"), and that is bounced too.
    send_ok("u@tls13.test", "a-tls13");
    assert_bounced(&relay, &store, "u@tls13.test", "a-tls13");

    // CA-signed + host name: self-signed and wrong-name servers get nothing.
    for (rcpt, subject) in [
        ("u@selfsigned.test", "a-self-signed"),
        ("u@wrongname.test", "a-wrong-name"),
    ] {
        send_ok(rcpt, subject);
        assert_bounced(&relay, &store, rcpt, subject);
    }
    // ... and a correct certificate is delivered over TLS (verified).
    send_ok("u@good.test", "a-good");
    assert_delivered(&store, "a-good", GOOD.0, true);
    assert!(
        relay
            .log()
            .contains("Verified TLS connection established to mx.good.test"),
        "{}",
        relay.log()
    );

    // Monitor: nothing mandatory, delivered (in plaintext, the receiver offers no TLS)...
    send_ok("u@monitored.test", "a-monitor");
    assert_delivered(&store, "a-monitor", PLAIN.0, false);
    // ...and the reconcile loop's TLS test says it would have failed.
    monitor_status_says_it_would_fail(root);

    // Per-recipient change of route: the gateway gets it, not the domain's MX.
    send_ok("u@routed.test", "a-routed");
    assert_delivered(&store, "a-routed", ROUTE_GW.0, true);

    // Unlisted mail goes directly.
    send_ok("u@edit.test", "a-edit-before");
    assert_delivered(&store, "a-edit-before", PLAIN.0, false);

    // Inbound: a listed sender over plaintext is rejected with 550; over TLS accepted.
    let (ok, out) = send(
        "secure-sender@partner-in.test",
        "u@direct.test",
        "a-in-plain",
        false,
    );
    assert!(
        !ok && out.contains("<** 550"),
        "plaintext sender not rejected with 550:\n{out}"
    );
    let (ok, out) = send(
        "secure-sender@partner-in.test",
        "u@direct.test",
        "a-in-tls",
        true,
    );
    assert!(ok, "TLS sender not accepted:\n{out}");
    wait_for(30, "a-in-tls to arrive", || {
        (!received(&store, "a-in-tls").is_empty()).then_some(())
    });
    assert!(received(&store, "a-in-plain").is_empty());

    // Phase B: a policy edit, applied by the agent, takes effect for the next message:
    // edit.test now requires TLS and goes by the alternate secure route, over TLS; other
    // mail still goes directly.
    relay.apply(&policy_b());
    let hash_b = relay.installed_hash();
    assert_ne!(hash_a, hash_b);
    send_ok("u@edit.test", "b-edit-after");
    assert_delivered(&store, "b-edit-after", SECURE_GW.0, true);
    send_ok("u@direct.test", "b-direct");
    assert_delivered(&store, "b-direct", PLAIN.0, false);

    // Phase C: broken configurations are refused and mail keeps flowing with the last
    // good one.
    refused_configurations(&mut relay, &hash_b);
    send_ok("u@edit.test", "c-edit-still");
    assert_delivered(&store, "c-edit-still", SECURE_GW.0, true);

    // Phase D: the organisation's outbound gateway, with and without MX lookup.
    relay.apply(
        &(policy_a()
            + &gateway(
                "all",
                "  host: smarthost.test\n  mxLookup: true\n  appliesTo: AllMail",
            )),
    );
    send_ok("u@direct.test", "d-smarthost-mx");
    assert_delivered(&store, "d-smarthost-mx", SMARTHOST.0, true);
    relay.apply(&(policy_a() + &gateway("all", "  host: gw-direct.test\n  appliesTo: AllMail")));
    send_ok("u@direct.test", "d-gateway-direct");
    assert_delivered(&store, "d-gateway-direct", DIRECT_GW.0, true);

    // The deferred message is still queued and was never delivered in plaintext.
    assert!(
        relay.queue().contains("u@nostarttls-defer.test"),
        "{}",
        relay.queue()
    );
    assert!(received(&store, "a-defer").is_empty());

    observed_matches_what_was_sent(&relay);
    status_observed_matches_what_was_sent(root, &relay);
    tls_reports_follow_the_rfc(&relay, &day_at_start);
    tls_reports_are_sent_where_the_domains_ask(&relay, &store, &posts, &day_at_start);
    the_agent_sends_yesterdays_reports_once(root, &relay, &store, &posts);

    eprintln!("e2e scenarios took {:?}", started.elapsed());
    if std::env::var_os("MAILTLS_E2E_LOG").is_some() {
        eprintln!("relay log:\n{}", relay.log());
    }
    let _ = std::io::stderr().flush();
}

/// The UTC day now, YYYY-MM-DD.
fn utc_day() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
        .date()
        .to_string()
}

/// `mailtls report tls-rpt` for domains of the mix above: valid against RFC 8460's report
/// (docs/tls-rpt.schema.json) and counting exactly its sessions. Summed over the days the
/// test ran on, in case it crossed midnight.
fn tls_reports_follow_the_rfc(relay: &Relay, day_at_start: &str) {
    let validator = report_validator();
    let mut days = vec![day_at_start.to_string(), utc_day()];
    days.dedup();
    let report = |domain: &str, day: &str| -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_mailtls"))
            .args(["report", "tls-rpt"])
            .arg(relay.root.join("maillog"))
            .args(["--domain", domain, "--day", day])
            .args([
                "--organization",
                "mailtls e2e",
                "--contact",
                "tls@origin.test",
            ])
            .output()
            .expect("mailtls report");
        assert!(out.status.success(), "{out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let errors: Vec<String> = validator
            .iter_errors(&report)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{report:#}");
        report
    };
    // (successful, failed, result types)
    let totals = |domain: &str| {
        let mut sum = (0, 0, Vec::new());
        for day in &days {
            let r = report(domain, day);
            let policy = &r["policies"][0];
            sum.0 += policy["summary"]["total-successful-session-count"]
                .as_u64()
                .unwrap_or(0);
            sum.1 += policy["summary"]["total-failure-session-count"]
                .as_u64()
                .unwrap_or(0);
            for d in policy["failure-details"].as_array().into_iter().flatten() {
                sum.2
                    .push(d["result-type"].as_str().unwrap_or("").to_string());
            }
        }
        sum
    };
    assert_eq!(totals("good.test"), (1, 0, vec![]));
    assert_eq!(
        totals("nostarttls-bounce.test"),
        (0, 1, vec!["starttls-not-supported".to_string()])
    );
    assert_eq!(
        totals("tls13.test"),
        (0, 1, vec!["validation-failure".to_string()])
    );
    let (ok, failed, kinds) = totals("wrongname.test");
    assert_eq!((ok, failed), (0, 1));
    assert_eq!(kinds, ["certificate-host-mismatch"]);
    assert_eq!(totals("edit.test").0, 2, "TLS through the secure route");
    // The validator is not vacuous.
    let mut broken = report("good.test", &days[0]);
    broken["policies"][0]["policy"]["policy-type"] = "local".into();
    assert!(!validator.is_valid(&broken));
}

/// RFC 8460's report schema (docs/tls-rpt.schema.json), compiled.
fn report_validator() -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/tls-rpt.schema.json"),
        )
        .expect("schema"),
    )
    .expect("schema json");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles")
}

/// A gzip'd report, valid against the RFC's schema.
fn unzip_report(gz: &[u8]) -> serde_json::Value {
    use std::io::Read as _;
    let mut json = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut json)
        .expect("gzip");
    let report: serde_json::Value = serde_json::from_str(&json).expect("report json");
    let errors: Vec<String> = report_validator()
        .iter_errors(&report)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{report:#}");
    report
}

/// The reports mailed to `to` whose subject names `domain`, decoded from their attachment.
fn mailed_reports(store: &Store, domain: &str) -> Vec<serde_json::Value> {
    use base64::Engine as _;
    let needle = format!("Subject: Report Domain: {domain} ");
    let msgs: Vec<Msg> = store
        .lock()
        .expect("store")
        .iter()
        .filter(|m| m.data.contains(&needle))
        .cloned()
        .collect();
    msgs.iter()
        .map(|m| {
            assert_eq!(m.rcpts, ["tlsrpt@reports.test"], "{}", m.data);
            assert!(
                m.data.contains(&format!("TLS-Report-Domain: {domain}\r\n")),
                "{}",
                m.data
            );
            assert!(m.data.contains("report-type=\"tlsrpt\""), "{}", m.data);
            let part = m
                .data
                .split("Content-Type: application/tlsrpt+gzip")
                .nth(1)
                .expect("attachment");
            let b64: String = part
                .split("\r\n\r\n")
                .nth(1)
                .expect("attachment body")
                .lines()
                .take_while(|l| !l.starts_with("--"))
                .collect();
            unzip_report(
                &base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .expect("base64"),
            )
        })
        .collect()
}

/// The report POSTed to `path`, if any.
fn posted_reports(posts: &Posts, path: &str) -> Vec<serde_json::Value> {
    let got: Vec<(String, Vec<u8>)> = posts.lock().expect("posts").clone();
    got.iter()
        .filter(|(head, _)| head.starts_with(&format!("POST {path} HTTP/1.1\r\n")))
        .map(|(head, body)| {
            assert!(
                head.to_ascii_lowercase()
                    .contains("content-type: application/tlsrpt+gzip"),
                "{head}"
            );
            unzip_report(body)
        })
        .collect()
}

/// `mailtls report tls-rpt --send`: each report goes where its domain's `_smtp._tls` record
/// says, POSTed over HTTPS or mailed through the relay itself; the same report `mailtls
/// report tls-rpt` prints. A domain without a record gets nothing; an endpoint inside the
/// network is refused.
fn tls_reports_are_sent_where_the_domains_ask(
    relay: &Relay,
    store: &Store,
    posts: &Posts,
    day: &str,
) {
    let ca = relay.root.join("ca.pem");
    let report_cmd = |domains: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailtls"));
        cmd.args(["report", "tls-rpt"])
            .arg(relay.root.join("maillog"))
            .args(["--day", day])
            .args([
                "--organization",
                "mailtls e2e",
                "--contact",
                "tls@origin.test",
            ]);
        for d in domains {
            cmd.args(["--domain", d]);
        }
        cmd
    };
    let printed = |domain: &str| -> serde_json::Value {
        let out = report_cmd(&[domain]).output().expect("mailtls report");
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let send = |domains: &[&str]| {
        sh(report_cmd(domains)
            .args([
                "--send",
                "--resolver",
                "127.0.0.53:53",
                "--smtp",
                "127.0.0.1:25",
            ])
            .arg("--ca-file")
            .arg(&ca)
            .args(["--allow-address", "127.0.0.0/8", "--send-timeout", "10s"]))
    };
    let (ok, out) = send(&["good.test", "wrongname.test", "tls13.test", "edit.test"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("good.test: sent to https://reports.good.test:8443/tlsrpt"),
        "{out}"
    );
    assert!(
        out.contains("wrongname.test: sent to mailto:tlsrpt@reports.test"),
        "{out}"
    );
    assert!(
        out.contains("tls13.test: sent to mailto:tlsrpt@reports.test; sent to https://reports.good.test:8443/tls13"),
        "{out}"
    );
    assert!(
        out.contains("edit.test: no TLSRPT record, not sent"),
        "{out}"
    );

    assert_eq!(posted_reports(posts, "/tlsrpt"), [printed("good.test")]);
    assert_eq!(posted_reports(posts, "/tls13"), [printed("tls13.test")]);
    // Mailed through the relay, which delivers them like any mail.
    for domain in ["wrongname.test", "tls13.test"] {
        let mailed = wait_for(60, &format!("the report on {domain} to arrive"), || {
            let m = mailed_reports(store, domain);
            (!m.is_empty()).then_some(m)
        });
        assert_eq!(mailed, [printed(domain)]);
    }
    let wrong = printed("wrongname.test");
    assert_eq!(
        wrong["policies"][0]["failure-details"][0]["result-type"], "certificate-host-mismatch",
        "{wrong:#}"
    );

    // The record points into the network: refused, nothing posted, and the exit says so.
    let before = posts.lock().expect("posts").len();
    let (ok, out) = send(&["selfsigned.test"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("https://internal.test:8443/x failed: internal.test has no address it may be sent to: refused 10.1.2.3 (private"),
        "{out}"
    );
    assert_eq!(posts.lock().expect("posts").len(), before);
}

/// `relay-agent --tls-rpt-organization`: once the day is over, its reports go by
/// themselves, from what the agent read of the log; a restarted agent does not send them
/// again.
fn the_agent_sends_yesterdays_reports_once(
    root: &Path,
    relay: &Relay,
    store: &Store,
    posts: &Posts,
) {
    let dir = root.join("reporting-agent");
    let etc = dir.join("etc");
    common::private_postfix_config(&etc);
    std::fs::create_dir_all(dir.join("configmap")).expect("watch dir");
    // The agent must see the same "yesterday" as this test: not across midnight.
    let into_day = k8s_openapi::jiff::Timestamp::now()
        .as_second()
        .rem_euclid(86_400);
    if into_day > 86_340 {
        std::thread::sleep(std::time::Duration::from_secs((86_405 - into_day) as u64));
    }
    let yesterday = k8s_openapi::jiff::Timestamp::now()
        .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
        .date()
        .yesterday()
        .expect("yesterday")
        .to_string();
    let today = utc_day();
    let t = |day: &str, time: &str| format!("{day}T{time}+00:00 relay postfix/smtp");
    std::fs::write(
        dir.join("maillog"),
        format!(
            "{y}[1]: Verified TLS connection established to mx.good.test[127.0.0.13]:25: TLSv1.3 with cipher X\n\
             {y}[1]: Q1: to=<u@good.test>, relay=mx.good.test[127.0.0.13]:25, dsn=2.0.0, status=sent (ok)\n\
             {y2}[2]: Q2: to=<u@wrongname.test>, relay=mx.wrongname.test[127.0.0.12]:25, dsn=5.7.5, status=bounced (Server certificate not verified)\n\
             {n}[3]: Verified TLS connection established to mx.good.test[127.0.0.13]:25: TLSv1.3 with cipher X\n\
             {n}[3]: Q3: to=<u@good.test>, relay=mx.good.test[127.0.0.13]:25, dsn=2.0.0, status=sent (ok)\n",
            y = t(&yesterday, "10:00:00"),
            y2 = t(&yesterday, "23:59:59"),
            n = t(&today, "00:00:00"),
        ),
    )
    .expect("mail log");
    let state = dir.join("tls-rpt-sent");
    let log_of = |n: usize| dir.join(format!("agent-{n}.log"));
    let start = |n: usize| {
        let log = std::fs::File::create(log_of(n)).expect("agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_mailtls"))
            .arg("relay-agent")
            .arg("--watch-dir")
            .arg(dir.join("configmap"))
            .arg("--postfix-dir")
            .arg(&etc)
            .arg("--maps-dir")
            .arg(etc.join("mailtls"))
            .arg("--mail-log")
            .arg(dir.join("maillog"))
            .args(["--tls-rpt-organization", "mailtls e2e"])
            .args(["--tls-rpt-contact", "tls@origin.test"])
            .arg("--tls-rpt-state")
            .arg(&state)
            .args(["--tls-rpt-at", "00:00", "--tls-rpt-instance", "relay-x"])
            .args(["--tls-rpt-resolver", "127.0.0.53:53"])
            .args(["--tls-rpt-smtp", "127.0.0.1:25"])
            .arg("--tls-rpt-ca-file")
            .arg(relay.root.join("ca.pem"))
            .args(["--tls-rpt-allow-address", "127.0.0.0/8"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start relay-agent");
        Kill(child)
    };
    let read_log = |n: usize| std::fs::read_to_string(log_of(n)).unwrap_or_default();
    let agent = start(0);
    let posted = wait_for(60, "the agent's report on good.test", || {
        posted_reports(posts, "/tlsrpt").into_iter().find(|r| {
            r["report-id"]
                .as_str()
                .is_some_and(|id| id.contains("_relay-x@"))
        })
    });
    assert_eq!(
        posted["date-range"]["start-datetime"],
        format!("{yesterday}T00:00:00Z")
    );
    assert_eq!(
        posted["report-id"],
        format!("{yesterday}_good.test_relay-x@origin.test")
    );
    let summary = &posted["policies"][0]["summary"];
    assert_eq!(
        (
            summary["total-successful-session-count"].as_u64(),
            summary["total-failure-session-count"].as_u64()
        ),
        (Some(1), Some(0)),
        "{posted:#}"
    );
    let mailed = wait_for(60, "the agent's report on wrongname.test", || {
        mailed_reports(store, "wrongname.test")
            .into_iter()
            .find(|r| {
                r["report-id"]
                    .as_str()
                    .is_some_and(|id| id.contains("_relay-x@"))
            })
    });
    assert_eq!(
        mailed["policies"][0]["summary"]["total-failure-session-count"],
        1
    );
    wait_for(30, "the agent to keep the day sent", || {
        std::fs::read_to_string(&state)
            .ok()
            .filter(|s| !s.trim().is_empty())
    });
    drop(agent);
    let first_log = read_log(0);
    assert!(first_log.contains("TLS reports done"), "{first_log}");

    // Restarted: the day is not sent again.
    let before = posts.lock().expect("posts").len();
    let again = start(1);
    wait_for(30, "the restarted agent to see the day sent", || {
        read_log(1)
            .contains("TLS reports already sent")
            .then_some(())
    });
    drop(again);
    assert_eq!(posts.lock().expect("posts").len(), before);
}

/// `mailtls observe` on the relay's log counts exactly the mail sent above, per domain:
/// delivered over TLS (verified where the policy asked for it), in plaintext, bounced or
/// deferred for TLS; and it names no local part.
fn observed_matches_what_was_sent(relay: &Relay) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .arg("observe")
        .arg(relay.root.join("maillog"))
        .arg("--json")
        .output()
        .expect("mailtls observe");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for local in ["alice", "bob", "sender@"] {
        assert!(!text.contains(local), "{local} in:\n{text}");
    }
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let domain = |d: &str| {
        v["perDomain"]
            .as_array()
            .expect("perDomain")
            .iter()
            .find(|x| x["domain"] == d)
            .cloned()
            .unwrap_or_else(|| panic!("{d} not observed:\n{text}"))
    };
    let n = |x: &serde_json::Value, k: &str| x[k].as_u64().unwrap_or(0);
    let tls = |x: &serde_json::Value| {
        x["tls"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum::<u64>())
    };
    for bounced in [
        "nostarttls-bounce.test",
        "tls13.test",
        "selfsigned.test",
        "wrongname.test",
    ] {
        let d = domain(bounced);
        assert_eq!(
            (n(&d, "tlsBounced"), tls(&d), n(&d, "plaintext")),
            (1, 0, 0),
            "{bounced}: {d}"
        );
    }
    let mixed = domain("mixed.test");
    assert_eq!(
        (n(&mixed, "tlsBounced"), n(&mixed, "plaintext")),
        (1, 1),
        "{mixed}"
    );
    // One attempt so far (Postfix's default backoff is minutes).
    let deferred = domain("nostarttls-defer.test");
    assert_eq!(
        (n(&deferred, "tlsDeferred"), tls(&deferred)),
        (1, 0),
        "{deferred}"
    );
    let good = domain("good.test");
    assert_eq!(good["tls"]["Verified"], 1, "{good}");
    assert_eq!(n(&domain("monitored.test"), "plaintext"), 1);
    assert_eq!(tls(&domain("routed.test")), 1);
    let edit = domain("edit.test");
    assert_eq!((n(&edit, "plaintext"), tls(&edit)), (1, 2), "{edit}");
    let direct = domain("direct.test");
    assert_eq!((n(&direct, "plaintext"), tls(&direct)), (2, 2), "{direct}");
    // The five bounce notices went back to the sender's domain.
    assert_eq!(n(&domain("origin.test"), "plaintext"), 5);
    let failures = v["summary"]["recentTlsFailures"]
        .as_array()
        .expect("failures");
    assert_eq!(failures.len(), 6, "{failures:?}");
}

/// `mailtls standalone --mail-log` on the relay's log: each policy's and gateway's
/// `status.observed` (the same engine code the controller runs on what relay pods report)
/// sums exactly the mail sent to its domains above.
fn status_observed_matches_what_was_sent(root: &Path, relay: &Relay) {
    let input = root.join("observed-in");
    let out = root.join("observed-out");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("policies.yaml"), policy_a()).expect("write");
    let (ok, output) = sh(Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .args(["standalone", "--postfix-version", "auto", "--mail-log"])
        .arg(relay.root.join("maillog"))
        .arg("--dir")
        .arg(&input)
        .arg("--out")
        .arg(&out));
    assert!(ok, "{output}");
    let observed = |file: &str| -> serde_json::Value {
        let path = out.join("default/resources").join(file);
        let r: serde_json::Value =
            serde_norway::from_str(&std::fs::read_to_string(&path).expect("status")).expect("yaml");
        r["status"]["observed"].clone()
    };
    let counts = |o: &serde_json::Value| {
        let n = |k: &str| o[k].as_u64().unwrap_or(0);
        (
            n("verified") + n("trusted") + n("untrusted"),
            n("plaintext"),
            n("tlsBounced"),
            n("tlsDeferred"),
        )
    };
    // (over TLS, plaintext, bounced for TLS, deferred for TLS)
    for (file, want) in [
        ("tlscompliance-bounce.yaml", (0, 0, 1, 0)),
        ("tlscompliance-defer.yaml", (0, 0, 0, 1)),
        ("tlscompliance-verified.yaml", (1, 0, 2, 0)),
        ("tlscompliance-tls13.yaml", (0, 0, 1, 0)),
        ("tlscompliance-monitor.yaml", (0, 1, 0, 0)),
        // Counts are per domain (no local part is kept): a one-address policy gets none.
        ("tlscompliance-one-address.yaml", (0, 0, 0, 0)),
        ("outboundgateway-route.yaml", (1, 0, 0, 0)),
    ] {
        let o = observed(file);
        assert_eq!(
            (o["window"].as_str(), o["relayPods"].as_u64()),
            (Some("24h"), Some(1)),
            "{file}: {o}"
        );
        assert_eq!(counts(&o), want, "{file}: {o}");
    }
    let verified = observed("tlscompliance-verified.yaml");
    assert_eq!(verified["verified"], 1, "{verified}");
    let last = &verified["lastTlsFailure"];
    assert!(
        ["selfsigned.test", "wrongname.test"].contains(&last["domain"].as_str().unwrap_or("")),
        "{verified}"
    );
    // The Monitor policy's plaintext message would have failed under Enforce.
    assert_eq!(observed("tlscompliance-monitor.yaml")["wouldFail"], 1);
    assert!(observed("tlscompliance-inbound.yaml").is_null());
}

/// Configurations the agent must refuse, each leaving `good_hash` installed.
/// `mailtls standalone --tests` on the same policies, against the same DNS and receivers:
/// the Monitor policy's status reports what enforcing it would do.
fn monitor_status_says_it_would_fail(root: &Path) {
    let input = root.join("standalone-in");
    let out = root.join("standalone-out");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("policies.yaml"), policy_a()).expect("write");
    let (ok, output) = sh(Command::new(env!("CARGO_BIN_EXE_mailtls"))
        .args([
            "standalone",
            "--tests",
            "--resolver",
            "127.0.0.53:53",
            "--test-timeout",
            "5s",
            "--postfix-version",
            "auto",
        ])
        .arg("--dir")
        .arg(&input)
        .arg("--out")
        .arg(&out));
    assert!(ok, "{output}");
    let file = out.join("default/resources/tlscompliance-monitor.yaml");
    let status: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(&file).expect("status")).expect("yaml");
    let compliant = status["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Compliant"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(compliant["status"], "False", "{}", status["status"]);
    assert_eq!(compliant["reason"], "WouldFail", "{}", status["status"]);
    assert_eq!(
        status["status"]["results"][0]["destination"],
        "monitored.test"
    );
    assert_eq!(
        status["status"]["results"][0]["outcome"],
        "starttls-not-supported"
    );
}

fn refused_configurations(relay: &mut Relay, good_hash: &str) {
    let data = relay.cm.join("..data");
    let current = std::fs::canonicalize(&data).expect("..data target");
    let read = |name: &str| std::fs::read_to_string(current.join(name)).expect("read file");
    let originals: BTreeMap<&str, String> =
        ["tls_policy", "master.cf", "transport", "manifest.json"]
            .into_iter()
            .map(|n| (n, read(n)))
            .collect();
    let restore = || {
        for (name, text) in &originals {
            std::fs::write(current.join(name), text).expect("restore");
        }
    };

    // A hand-corrupted map: the manifest hash no longer matches.
    std::fs::write(
        current.join("tls_policy"),
        originals["tls_policy"].clone() + "edit.test none\n",
    )
    .expect("corrupt");
    let (ok, out) = relay.agent_once();
    assert!(!ok && out.contains("does not match the manifest"), "{out}");
    assert_eq!(relay.installed_hash(), good_hash);
    restore();

    // Data that would become configuration, with a manifest that matches it: refused by
    // validation before Postfix ever sees it.
    rehash(&current, "master.cf", |m| {
        m + "evil unix - n n - - pipe\n  flags=F user=nobody argv=/bin/sh -c id\n"
    });
    let (ok, out) = relay.agent_once();
    assert!(
        !ok && out.contains("only mailtls-* smtp client services"),
        "{out}"
    );
    assert_eq!(relay.installed_hash(), good_hash);
    restore();

    // Syntactically fine but inconsistent: a transport naming a service that does not
    // exist (postfix check would not notice; mail would just fail).
    rehash(&current, "transport", |t| t + "broken.test mailtls-nope:\n");
    let (ok, out) = relay.agent_once();
    assert!(!ok && out.contains("does not define"), "{out}");
    assert_eq!(relay.installed_hash(), good_hash);
    restore();

    // Restored: the good configuration is recognised as already applied.
    let (ok, out) = relay.agent_once();
    assert!(ok, "{out}");
    assert_eq!(relay.installed_hash(), good_hash);
}

/// Change one file and rewrite the manifest so its hashes match the change.
fn rehash(dir: &Path, name: &str, change: impl FnOnce(String) -> String) {
    let text = change(std::fs::read_to_string(dir.join(name)).expect("read"));
    std::fs::write(dir.join(name), &text).expect("write");
    let manifest_path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).expect("manifest"))
            .expect("manifest json");
    manifest["files"][name] =
        serde_json::Value::String(format!("sha256:{}", mailtls::render::sha256_hex(&text)));
    let digests: BTreeMap<String, String> = manifest["files"]
        .as_object()
        .expect("files")
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str()
                    .unwrap_or_default()
                    .trim_start_matches("sha256:")
                    .to_string(),
            )
        })
        .collect();
    manifest["hash"] = serde_json::Value::String(mailtls::render::content_hash(&digests));
    std::fs::write(&manifest_path, manifest.to_string()).expect("write manifest");
}
