//! MTA-STS enforced on real Postfix with real mail: in a private network namespace, a Postfix
//! relay configured by `mailtls render` and a running `mailtls relay-agent --mta-sts-listen
//! unix:PATH` (which applies each configuration published in its watched directory and
//! answers Postfix's socketmap lookups), a local DNS server (dnsmasq) with MX and
//! `_mta-sts` TXT records, in-process HTTPS policy hosts (test CA) and in-process SMTP
//! receivers whose certificates match the policies' MX patterns or do not.
//!
//! Proves: an unlisted `enforce` domain gets mail only over a verified connection to a
//! host its policy names (otherwise it stays queued), `testing` is report-only, a new policy
//! id is picked up, a listed policy's `onFailure: Bounce` bounces what MTA-STS refuses, and
//! without the `Unlisted` TlsCompliance the same destinations get opportunistic TLS again
//! (and the mail kept back goes out). Also: a restarted agent enforces at once, and an agent
//! without `--mta-sts-listen` refuses a configuration that honours MTA-STS.
//!
//! Runs itself again inside the namespace (needs root, like tests/relay_e2e.rs); traffic
//! never leaves it.

mod common;

use common::dnssec::{SignedDns, Zone};
use common::mail::{
    Certs, Kill, Msg, PolicyAnswer, Store, dnsmasq_with, http_get, must, policy_host, sh,
    start_sink, tls_config, wait_for,
};
use common::{list, policy};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const INSIDE: &str = "MAILTLS_STS_DELIVERY_NETNS";
const TEST_NAME: &str = "mta_sts_policies_decide_delivery_on_real_postfix";
/// The validating resolver (unbound) Postfix and the agent ask; it forwards every other
/// `.test` name to dnsmasq, and reaches the signed zones on the authoritative unbound.
const DNS: &str = "127.0.0.53";
const PLAIN_DNS: &str = "127.0.0.52";
const AUTH_DNS: (&str, &str) = ("127.0.0.54", "127.0.0.54:5353");
const RELAY: &str = "127.0.0.1";
/// The relay agent's `/status`.
const STATUS: &str = "127.0.0.1:8089";

/// Receivers: (name, address). `mx.wrong.test` presents a certificate from the test CA for
/// another name, `mx.untrusted.test` a self-signed one for its own name, `mx.good.test` a
/// test-CA one for its own name; `mx.origin.test` takes bounce notices (no TLS).
const WRONG: (&str, &str) = ("wrong-name", "127.0.0.12");
const UNTRUSTED: (&str, &str) = ("untrusted", "127.0.0.11");
const GOOD: (&str, &str) = ("good", "127.0.0.13");
const ORIGIN: (&str, &str) = ("origin", "127.0.0.30");

/// Domains publishing MTA-STS: (domain, its policy host's address, MX host, the policy's
/// `mx` pattern, mode at the start).
const STS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "enforce-wrong.test",
        "127.0.0.41",
        "mx.wrong.test",
        "mx.wrong.test",
        "enforce",
    ),
    (
        "enforce-untrusted.test",
        "127.0.0.42",
        "mx.untrusted.test",
        "mx.untrusted.test",
        "enforce",
    ),
    (
        "enforce-good.test",
        "127.0.0.43",
        "mx.good.test",
        "*.good.test",
        "enforce",
    ),
    (
        "testing-wrong.test",
        "127.0.0.44",
        "mx.wrong.test",
        "mx.wrong.test",
        "testing",
    ),
    (
        "switch.test",
        "127.0.0.45",
        "mx.wrong.test",
        "mx.wrong.test",
        "testing",
    ),
    (
        "listed-wrong.test",
        "127.0.0.46",
        "mx.wrong.test",
        "mx.wrong.test",
        "enforce",
    ),
    (
        "addr-wrong.test",
        "127.0.0.47",
        "mx.wrong.test",
        "mx.wrong.test",
        "enforce",
    ),
];

const SENDER: &str = "sender@origin.test";

/// What Postfix logs ("certificate verification failed for HOST: ...") for each kind of bad
/// certificate under `secure`.
const HOSTNAME_MISMATCH: &str = "num=62:hostname mismatch";
const SELF_SIGNED: &str = "self-signed certificate";

#[test]
fn mta_sts_policies_decide_delivery_on_real_postfix() {
    if std::env::var_os(INSIDE).is_some() {
        inside();
        return;
    }
    let addresses: Vec<&str> = [
        DNS,
        PLAIN_DNS,
        AUTH_DNS.0,
        WRONG.1,
        UNTRUSTED.1,
        GOOD.1,
        ORIGIN.1,
    ]
    .into_iter()
    .chain(STS.iter().map(|s| s.1))
    .collect();
    common::mail::run_in_netns(TEST_NAME, INSIDE, &addresses, DNS);
}

// ---------------------------------------------------------------------------------------
// Inside the namespace.

fn sts_policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\nmode: {mode}\nmax_age: 86400\nmx: {mx}\n")
}

/// dnsmasq with every MX and address, and an `_mta-sts` TXT record for each policy domain,
/// `switch.test`'s with `switch_id` (the others' id is 1).
fn dns(switch_id: &str) -> Kill {
    let mut records: Vec<(String, String)> = [
        ("mx.wrong.test", WRONG.1),
        ("mx.untrusted.test", UNTRUSTED.1),
        ("mx.good.test", GOOD.1),
        ("mx.origin.test", ORIGIN.1),
    ]
    .iter()
    .map(|(n, a)| (n.to_string(), a.to_string()))
    .collect();
    let mut mx: Vec<(String, String)> = vec![
        ("origin.test".into(), "mx.origin.test".into()),
        // Listed, publishes no MTA-STS policy, same receiver as the wrong-name domains.
        ("listed-nosts.test".into(), "mx.wrong.test".into()),
    ];
    let mut txt = Vec::new();
    for (domain, addr, host, _, _) in STS {
        records.push((format!("mta-sts.{domain}"), addr.to_string()));
        mx.push((domain.to_string(), host.to_string()));
        let id = if *domain == "switch.test" {
            switch_id
        } else {
            "1"
        };
        txt.push((format!("_mta-sts.{domain}"), format!("v=STSv1; id={id}")));
    }
    dnsmasq_with(PLAIN_DNS, &refs(&records), &refs(&mx), &refs(&txt))
}

fn refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

/// The relay: a private Postfix instance (own config, queue and data directories), its
/// configuration published in a kubelet-style watched directory for the running agent.
struct Relay {
    root: PathBuf,
    etc: PathBuf,
    maps: PathBuf,
    cm: PathBuf,
    ca_file: PathBuf,
    socket: PathBuf,
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
            "syslog_name=mailtls-sts".into(),
            "inet_interfaces=127.0.0.1".into(),
            "inet_protocols=ipv4".into(),
            "myhostname=relay.test".into(),
            "myorigin=relay.test".into(),
            "mydestination=".into(),
            "relay_domains=".into(),
            // Debian's "Local only" set-up makes these `error` (see tests/relay_e2e.rs).
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
            // Postfix's smtp processes (user postfix) reach it: `root` is 0755.
            socket: root.join("mta-sts.sock"),
            version: 0,
        }
    }

    /// Render `yaml` and publish it the way kubelet updates a ConfigMap volume; its hash.
    fn publish(&mut self, yaml: &str) -> String {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let input = self.root.join(format!("policy-{}.yaml", self.version));
        let hash = render(
            yaml,
            &input,
            &self.cm.join(&version),
            &self.maps,
            &self.socket,
            Some(&self.ca_file),
        );
        common::kubelet_swap(&self.cm, &version);
        hash
    }

    /// The running agent, its log in `agent.log`.
    fn start_agent(&self) -> Kill {
        let log = std::fs::File::create(self.root.join("agent.log")).expect("agent log");
        Kill(
            Command::new(env!("CARGO_BIN_EXE_mailtls"))
                .arg("relay-agent")
                .arg("--watch-dir")
                .arg(&self.cm)
                .arg("--postfix-dir")
                .arg(&self.etc)
                .arg("--maps-dir")
                .arg(&self.maps)
                .args(["--status-addr", STATUS])
                .arg("--mta-sts-listen")
                .arg(format!("unix:{}", self.socket.display()))
                .args(["--mta-sts-resolver", "127.0.0.53:53"])
                .arg("--mta-sts-ca-file")
                .arg(&self.ca_file)
                .args(["--mta-sts-allow-address", "127.0.0.0/8"])
                .args(["--mta-sts-recheck", "1s"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start relay-agent"),
        )
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.root.join("agent.log")).unwrap_or_default()
    }

    /// Publish `yaml` and wait until the agent has applied it and a running Postfix has
    /// reloaded.
    fn apply(&mut self, yaml: &str) {
        let reloads = self.log().matches(" reload ").count();
        let running = self.running();
        let hash = self.publish(yaml);
        self.wait_applied(&hash);
        if running {
            wait_for(30, "postfix reload", || {
                (self.log().matches(" reload ").count() > reloads).then_some(())
            });
        }
    }

    /// Wait until the agent's `/status` names `hash` as applied (it sets that after telling
    /// its policy server what the configuration covers); fail at once if it refused it.
    fn wait_applied(&self, hash: &str) {
        wait_for(30, &format!("the agent to apply {hash}"), || {
            let (_, body) = http_get(STATUS, "/status")?;
            let status: serde_json::Value = serde_json::from_str(&body).ok()?;
            if let Some(refused) = status["lastRefused"].as_object()
                && refused["hash"].as_str() == Some(hash)
            {
                panic!(
                    "the agent refused {hash}: {}\nagent log:\n{}",
                    refused["reason"],
                    self.agent_log()
                );
            }
            (status["appliedHash"].as_str() == Some(hash)).then_some(())
        });
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
        wait_for(30, "the relay to listen on 127.0.0.1:25", || {
            std::net::TcpStream::connect((RELAY, 25)).ok()
        });
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("maillog")).unwrap_or_default()
    }

    /// `postconf -h` of a main.cf parameter, or of a master.cf service's `-o` parameter
    /// given as `-P service/type/name`.
    fn postconf(&self, name: &str) -> String {
        let mut cmd = Command::new("postconf");
        cmd.arg("-c").arg(&self.etc).arg("-h");
        match name.strip_prefix("-P ") {
            Some(service_param) => cmd.args(["-P", service_param]),
            None => cmd.arg(name),
        };
        must(&mut cmd).trim().to_string()
    }

    /// `postmap -q key` in one of the installed maps.
    fn lookup(&self, map: &str, key: &str) -> Option<String> {
        let (ok, out) = sh(Command::new("postmap")
            .arg("-c")
            .arg(&self.etc)
            .args(["-q", key])
            .arg(format!("lmdb:{}", self.maps.join(map).display())));
        ok.then(|| out.trim().to_string())
    }

    /// The queued messages (`postqueue -j`, one JSON object a line).
    fn queue(&self) -> Vec<serde_json::Value> {
        must(Command::new("postqueue").arg("-c").arg(&self.etc).arg("-j"))
            .lines()
            .map(|l| serde_json::from_str(l).expect("postqueue -j line"))
            .collect()
    }

    /// The queue entry of `rcpt`: (queue name, delay reason).
    fn queued(&self, rcpt: &str) -> Option<(String, String)> {
        self.queue().iter().find_map(|m| {
            let r = m["recipients"]
                .as_array()?
                .iter()
                .find(|r| r["address"] == rcpt)?;
            Some((
                m["queue_name"].as_str()?.to_string(),
                r["delay_reason"].as_str().unwrap_or("").to_string(),
            ))
        })
    }

    /// `postqueue -f`: retry every queued message now.
    fn flush(&self) {
        must(Command::new("postqueue").arg("-c").arg(&self.etc).arg("-f"));
    }

    /// The status lines (`status=...`) of `rcpt`'s delivery attempts.
    fn attempts(&self, rcpt: &str) -> Vec<String> {
        let needle = format!("to=<{rcpt}>");
        self.log()
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("status="))
            .map(str::to_string)
            .collect()
    }

    /// Wait for `rcpt`'s `n`th status line (1-based).
    fn wait_attempt(&self, rcpt: &str, n: usize) -> String {
        wait_for(30, &format!("delivery attempt {n} for {rcpt}"), || {
            self.attempts(rcpt).into_iter().nth(n - 1)
        })
    }

    /// The log lines of the process that logged `status_line`, from its previous status
    /// line (an smtp process delivers one message after another) up to this one.
    fn attempt_lines(&self, status_line: &str) -> Vec<String> {
        let pid = process_of(status_line)
            .unwrap_or_else(|| panic!("no process id in {status_line}"))
            .to_string();
        let mut lines = Vec::new();
        for line in self.log().lines() {
            if process_of(line) != Some(pid.as_str()) {
                continue;
            }
            if line == status_line {
                lines.push(line.to_string());
                return lines;
            }
            if line.contains(" status=") {
                lines.clear();
            } else {
                lines.push(line.to_string());
            }
        }
        panic!("{status_line} is not in the mail log");
    }
}

/// `name[pid]` of a log line.
fn process_of(line: &str) -> Option<&str> {
    let end = line.find("]: ")?;
    let start = line[..end].rfind(' ')? + 1;
    Some(&line[start..=end])
}

/// Render `yaml` (written to `input`) into `out`, naming the policy server's `socket`; the
/// manifest's hash.
fn render(
    yaml: &str,
    input: &Path,
    out: &Path,
    maps: &Path,
    socket: &Path,
    ca_file: Option<&Path>,
) -> String {
    std::fs::write(input, yaml).expect("write policy");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailtls"));
    cmd.arg("render")
        .arg(input)
        .arg("--output")
        .arg(out)
        .arg("--config-dir")
        .arg(maps)
        .arg("--mta-sts-socket")
        .arg(socket)
        .args(["--postfix-version", "auto"]);
    if let Some(ca) = ca_file {
        cmd.arg("--ca-file").arg(ca);
    }
    must(&mut cmd);
    hash_of(out)
}

fn hash_of(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    let v: serde_json::Value = serde_json::from_str(&text).expect("manifest json");
    v["hash"].as_str().expect("hash").to_string()
}

/// What the agent's policy server answers for `key` asked under `name`, through Postfix's
/// own socketmap client (`postmap -q`); `None` for NOTFOUND.
fn sts_lookup(socket: &Path, name: &str, key: &str) -> Option<String> {
    let out = Command::new("postmap")
        .args(["-q", key])
        .arg(format!("socketmap:unix:{}:{name}", socket.display()))
        .output()
        .expect("postmap");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("fatal") && !stderr.contains("warning"),
        "postmap -q {key} through {}: {stderr}",
        socket.display()
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn send_ok(to: &str, subject: &str) {
    let (ok, out) = sh(Command::new("swaks")
        .args(["--server", RELAY, "--port", "25", "--helo", "client.test"])
        .args(["--from", SENDER, "--to", to])
        .args(["--header", &format!("Subject: {subject}")])
        .args(["--body", "mailtls MTA-STS test message", "--timeout", "20"]));
    assert!(ok, "the relay did not accept mail to {to}:\n{out}");
}

/// Messages with `subject` (bounce notices, which quote it, are not counted).
fn received(store: &Store, subject: &str) -> Vec<Msg> {
    let needle = format!("Subject: {subject}\r\n");
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

/// `subject` arrived once, at `sink`, over TLS.
fn assert_delivered(relay: &Relay, store: &Store, subject: &str, sink: &str) -> Msg {
    let msgs = wait_for(30, &format!("{subject} to arrive at {sink}"), || {
        let m = received(store, subject);
        (!m.is_empty()).then_some(m)
    });
    assert_eq!(
        msgs.len(),
        1,
        "{subject} arrived more than once: {msgs:?}\nlog:\n{}",
        relay.log()
    );
    assert_eq!(
        msgs[0].sink, sink,
        "{subject} arrived at the wrong receiver"
    );
    assert!(msgs[0].tls, "{subject} was delivered without TLS");
    assert_eq!(msgs[0].from, SENDER);
    msgs[0].clone()
}

/// `rcpt`'s `attempt`th delivery attempt was deferred (4.7.x) because the MX's certificate
/// did not verify, the mail log says `why`, the message waits in the deferred queue, and
/// nothing with `subject` reached any receiver.
fn assert_deferred(
    relay: &Relay,
    store: &Store,
    rcpt: &str,
    subject: &str,
    attempt: usize,
    why: &str,
) {
    let line = relay.wait_attempt(rcpt, attempt);
    assert!(
        line.contains("status=deferred")
            && line.contains("dsn=4.7.")
            && line.contains("Server certificate not verified"),
        "{rcpt}: attempt {attempt} should be deferred for an unverified certificate, got:\n\
         {line}\n\nlog:\n{}",
        relay.log()
    );
    assert_logged_why(relay, rcpt, &line, why);
    let (queue, reason) = wait_for(30, &format!("{rcpt} in the deferred queue"), || {
        relay.queued(rcpt).filter(|(q, _)| q == "deferred")
    });
    assert!(
        reason.contains("Server certificate not verified"),
        "{rcpt} is in the {queue} queue for another reason: {reason}"
    );
    assert!(
        received(store, subject).is_empty(),
        "{subject} was delivered although its domain's enforce policy failed"
    );
}

/// The smtp process's log lines for the attempt `status_line` reports say that the
/// certificate failed verification, and `why`.
fn assert_logged_why(relay: &Relay, rcpt: &str, status_line: &str, why: &str) {
    let lines = relay.attempt_lines(status_line);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("certificate verification failed for") && l.contains(why)),
        "{rcpt}: the mail log does not say the certificate failed verification ({why}):\n{}",
        lines.join("\n")
    );
}

/// `rcpt`'s first attempt bounced with 5.7.x for an unverified certificate (the log says
/// `why`), it never reached a receiver, and the sender got the bounce notice.
fn assert_bounced(relay: &Relay, store: &Store, rcpt: &str, subject: &str, why: &str) {
    let line = relay.wait_attempt(rcpt, 1);
    assert!(
        line.contains("status=bounced")
            && line.contains("dsn=5.7.")
            && line.contains("Server certificate not verified"),
        "{rcpt}: expected a 5.7.x bounce for an unverified certificate at the first attempt, \
         got:\n{line}\n\nlog:\n{}",
        relay.log()
    );
    assert_logged_why(relay, rcpt, &line, why);
    let notice = wait_for(30, &format!("the bounce notice for {rcpt}"), || {
        store.lock().ok().and_then(|s| {
            s.iter()
                .find(|m| m.from.is_empty() && m.sink == ORIGIN.0 && m.data.contains(rcpt))
                .cloned()
        })
    });
    assert!(
        notice.data.contains("5.7."),
        "the bounce notice for {rcpt} gives no 5.7.x status:\n{}",
        notice.data
    );
    assert!(
        received(store, subject).is_empty(),
        "{subject} was delivered although MTA-STS refused the MX"
    );
    wait_for(30, &format!("{rcpt} to leave the queue"), || {
        relay.queued(rcpt).is_none().then_some(())
    });
}

/// The TLS line Postfix logged for the attempt `status_line` reports.
fn tls_line(relay: &Relay, status_line: &str) -> String {
    relay
        .attempt_lines(status_line)
        .into_iter()
        .find(|l| l.contains("TLS connection established to"))
        .unwrap_or_else(|| panic!("no TLS line for:\n{status_line}\nlog:\n{}", relay.log()))
}

/// Listed destinations: a domain and one address that require TLS (any certificate) and
/// bounce on failure, and a domain that publishes no MTA-STS policy.
fn listed() -> String {
    [
        list("domains", &["listed-wrong.test", "listed-nosts.test"]),
        list("one-address", &["alice@addr-wrong.test"]),
        policy(
            "encrypt-bounce",
            &["domains", "one-address"],
            "  onFailure: Bounce",
        ),
    ]
    .concat()
}

/// The namespace's default for every destination no policy lists: honour MTA-STS.
fn unlisted_mta_sts() -> &'static str {
    "apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata:\n  name: published-policies\nspec:\n  direction: Outbound\n  scope: Unlisted\n  mechanisms: [MtaSts]\n---\n"
}

fn inside() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    // Postfix's daemons (user postfix) reach the queue and the agent's socket inside.
    must(Command::new("chmod").arg("755").arg(root));
    let certs = Certs::new();
    let started = Instant::now();

    let mut dns_server = dns("1");
    let good = certs.ca_signed("mx.good.test");
    let signed = signed_dns(&good, &certs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store: Store = Arc::default();
    start_sink(
        &rt,
        WRONG,
        Some(tls_config(&certs.ca_signed("other-name.test"))),
        &store,
    );
    start_sink(
        &rt,
        UNTRUSTED,
        Some(tls_config(&Certs::self_signed("mx.untrusted.test"))),
        &store,
    );
    start_sink(&rt, GOOD, Some(tls_config(&good)), &store);
    start_sink(&rt, ORIGIN, None, &store);
    let mut bodies = std::collections::BTreeMap::new();
    for (domain, addr, _, pattern, mode) in STS {
        let body = Arc::new(Mutex::new(PolicyAnswer::Policy(sts_policy(mode, pattern))));
        let tls = tls_config(&certs.ca_signed(&format!("mta-sts.{domain}")));
        policy_host(&rt, addr, tls, body.clone());
        bodies.insert(*domain, body);
    }

    let mut relay = Relay::new(&root.join("relay"), &certs);
    let with_sts = listed() + unlisted_mta_sts();
    let first = relay.publish(&with_sts);
    let mut agent = relay.start_agent();
    relay.wait_applied(&first);
    wait_for(30, "the agent's MTA-STS socket", || {
        std::os::unix::net::UnixStream::connect(&relay.socket).ok()
    });
    assert!(
        relay.postconf("smtp_tls_policy_maps").starts_with(&format!(
            "socketmap:unix:{}:mailtls, ",
            relay.socket.display()
        )),
        "main.cf does not ask the agent's policy server first: {}",
        relay.postconf("smtp_tls_policy_maps")
    );
    relay.start();
    let wrong_answer = "secure match=mx.wrong.test servername=hostname protocols=>=TLSv1.2";

    // Phase A: the Unlisted policy honours MTA-STS. Everything sent at once, then checked.
    let phase_a = [
        ("u@enforce-wrong.test", "a-enforce-wrong"),
        ("u@enforce-untrusted.test", "a-enforce-untrusted"),
        ("u@enforce-good.test", "a-enforce-good"),
        ("u@testing-wrong.test", "a-testing-wrong"),
        ("u@switch.test", "a-switch-testing"),
        ("u@listed-wrong.test", "a-listed-wrong"),
        ("u@listed-nosts.test", "a-listed-nosts"),
        ("alice@addr-wrong.test", "a-alice"),
        ("bob@addr-wrong.test", "a-bob"),
    ];
    for (rcpt, subject) in phase_a {
        send_ok(rcpt, subject);
    }

    // 1. Unlisted, enforce, the MX's certificate does not match the policy's `mx` (trusted
    // CA, other name) or is not trusted (self-signed): deferred, queued, never delivered.
    assert_deferred(
        &relay,
        &store,
        "u@enforce-wrong.test",
        "a-enforce-wrong",
        1,
        HOSTNAME_MISMATCH,
    );
    assert_deferred(
        &relay,
        &store,
        "u@enforce-untrusted.test",
        "a-enforce-untrusted",
        1,
        SELF_SIGNED,
    );
    assert_eq!(
        sts_lookup(&relay.socket, "mailtls", "enforce-wrong.test").as_deref(),
        Some(wrong_answer),
        "the policy server's answer for enforce-wrong.test"
    );

    // 2. Unlisted, enforce (mx: *.good.test), the MX presents a matching test-CA
    // certificate: delivered over a verified connection.
    assert_delivered(&relay, &store, "a-enforce-good", GOOD.0);
    let line = relay.wait_attempt("u@enforce-good.test", 1);
    assert!(line.contains("status=sent"), "{line}");
    let tls = tls_line(&relay, &line);
    assert!(
        tls.contains("Verified TLS connection established to mx.good.test"),
        "enforce-good.test was delivered, but not over a verified connection: {tls}"
    );
    assert_eq!(
        sts_lookup(&relay.socket, "mailtls", "enforce-good.test").as_deref(),
        Some("secure match=.good.test servername=hostname protocols=>=TLSv1.2"),
        "the policy server's answer for enforce-good.test"
    );

    // 3. Unlisted, testing, wrong certificate: report-only, delivered (opportunistic TLS:
    // the CA is trusted, the name is not checked).
    assert_delivered(&relay, &store, "a-testing-wrong", WRONG.0);
    let line = relay.wait_attempt("u@testing-wrong.test", 1);
    assert!(
        tls_line(&relay, &line).contains("Trusted TLS connection established to mx.wrong.test"),
        "{}",
        tls_line(&relay, &line)
    );
    assert_eq!(
        sts_lookup(&relay.socket, "mailtls", "testing-wrong.test"),
        None,
        "a testing policy must not be enforced"
    );
    // switch.test starts as testing: delivered too.
    assert_delivered(&relay, &store, "a-switch-testing", WRONG.0);

    // 5. Strictest wins: listed-wrong.test is listed as "TLS required, bounce", which any
    // certificate satisfies, but its published enforce policy (inherited from the Unlisted
    // policy) refuses the MX: bounced, as the listed policy says. Without a published policy
    // the same listed requirement delivers to the same receiver.
    assert_bounced(
        &relay,
        &store,
        "u@listed-wrong.test",
        "a-listed-wrong",
        HOSTNAME_MISMATCH,
    );
    assert_delivered(&relay, &store, "a-listed-nosts", WRONG.0);
    // An address listed by itself goes through its own `-sts` service, which asks the
    // policy server under its own name (and gets the enforce answer): bounced too...
    let service = "mailtls-encrypt-tls12-bounce-sts";
    assert_eq!(
        relay.lookup("transport", "alice@addr-wrong.test"),
        Some(format!("{service}:")),
        "alice@addr-wrong.test is not routed to its own -sts service"
    );
    assert_eq!(
        relay.postconf(&format!("-P {service}/unix/smtp_tls_policy_maps")),
        format!("socketmap:unix:{}:{service}", relay.socket.display()),
        "{service} does not ask the policy server under its own name"
    );
    assert_eq!(
        sts_lookup(&relay.socket, service, "addr-wrong.test").as_deref(),
        Some(wrong_answer),
        "the policy server's answer to {service} for addr-wrong.test"
    );
    assert_bounced(
        &relay,
        &store,
        "alice@addr-wrong.test",
        "a-alice",
        HOSTNAME_MISMATCH,
    );
    // ... while the rest of its domain is unlisted: deferred.
    assert_deferred(
        &relay,
        &store,
        "bob@addr-wrong.test",
        "a-bob",
        1,
        HOSTNAME_MISMATCH,
    );

    // 1 (again). Retried while the policy holds: deferred again, still not delivered.
    relay.flush();
    for (rcpt, subject, why) in [
        ("u@enforce-wrong.test", "a-enforce-wrong", HOSTNAME_MISMATCH),
        (
            "u@enforce-untrusted.test",
            "a-enforce-untrusted",
            SELF_SIGNED,
        ),
        ("bob@addr-wrong.test", "a-bob", HOSTNAME_MISMATCH),
    ] {
        assert_deferred(&relay, &store, rcpt, subject, 2, why);
    }

    // 4. switch.test publishes a new id with an enforce policy: once the recheck interval
    // (1s) has passed, the policy server fetches it, and new mail is no longer delivered to
    // the wrong-name MX.
    assert_eq!(sts_lookup(&relay.socket, "mailtls", "switch.test"), None);
    *bodies["switch.test"].lock().expect("policy") =
        PolicyAnswer::Policy(sts_policy("enforce", "mx.wrong.test"));
    drop(dns_server);
    dns_server = dns("2");
    let switched = Instant::now();
    wait_for(
        30,
        "the policy server to pick up switch.test's new id",
        || {
            (sts_lookup(&relay.socket, "mailtls", "switch.test").as_deref() == Some(wrong_answer))
                .then_some(())
        },
    );
    eprintln!(
        "switch.test enforced {:?} after the id changed",
        switched.elapsed()
    );
    send_ok("u@switch.test", "d-switch-enforce");
    assert_deferred(
        &relay,
        &store,
        "u@switch.test",
        "d-switch-enforce",
        2,
        HOSTNAME_MISMATCH,
    );

    // A restarted agent answers from the installed configuration at once: enforced as
    // before (neither delivered nor failing on a lookup error).
    drop(agent);
    agent = relay.start_agent();
    wait_for(30, "the restarted agent's MTA-STS socket", || {
        std::os::unix::net::UnixStream::connect(&relay.socket).ok()
    });
    send_ok("u@enforce-wrong.test", "r-enforce-wrong");
    assert_deferred(
        &relay,
        &store,
        "u@enforce-wrong.test",
        "r-enforce-wrong",
        3,
        HOSTNAME_MISMATCH,
    );
    send_ok("u@enforce-good.test", "r-enforce-good");
    assert_delivered(&relay, &store, "r-enforce-good", GOOD.0);

    // 6. The same relay and agent without the Unlisted policy: the same destinations get
    // opportunistic TLS (listed ones: TLS required, any certificate), so the policy was what
    // kept the mail back.
    relay.apply(&listed());
    assert_eq!(
        relay.postconf("smtp_tls_policy_maps"),
        format!("lmdb:{}", relay.maps.join("tls_policy").display()),
        "without MTA-STS main.cf must not ask the policy server"
    );
    for (rcpt, subject) in [
        ("u@enforce-wrong.test", "f-enforce-wrong"),
        ("u@listed-wrong.test", "f-listed-wrong"),
        ("alice@addr-wrong.test", "f-alice"),
        ("u@switch.test", "f-switch"),
    ] {
        send_ok(rcpt, subject);
        assert_delivered(&relay, &store, subject, WRONG.0);
    }
    send_ok("u@enforce-untrusted.test", "f-enforce-untrusted");
    assert_delivered(&relay, &store, "f-enforce-untrusted", UNTRUSTED.0);
    // The mail kept back is delivered at its next attempt, and the queue empties.
    relay.flush();
    for (subject, sink) in [
        ("a-enforce-wrong", WRONG.0),
        ("a-enforce-untrusted", UNTRUSTED.0),
        ("a-bob", WRONG.0),
        ("d-switch-enforce", WRONG.0),
        ("r-enforce-wrong", WRONG.0),
    ] {
        assert_delivered(&relay, &store, subject, sink);
    }
    wait_for(30, "the queue to empty", || {
        relay.queue().is_empty().then_some(())
    });

    // 7. An agent without --mta-sts-listen refuses a configuration that honours MTA-STS,
    // and keeps the last good one.
    an_agent_without_a_policy_server_refuses_mta_sts(&root.join("no-server"), &relay);

    // 8. DANE, on the same relay and agent.
    dane(&mut relay, &store, &signed);

    drop((agent, dns_server, signed));
    eprintln!(
        "MTA-STS and DANE delivery scenarios took {:?}",
        started.elapsed()
    );
    if std::env::var_os("MAILTLS_E2E_LOG").is_some() {
        eprintln!(
            "relay log:\n{}\nagent log:\n{}",
            relay.log(),
            relay.agent_log()
        );
    }
}

/// `relay-agent --once` on a private Postfix config directory: a configuration without
/// MTA-STS is applied; one that honours it is refused without `--mta-sts-listen` (the
/// reason names the flag) and with another socket, and the first stays installed; with the
/// matching socket it is applied.
fn an_agent_without_a_policy_server_refuses_mta_sts(dir: &Path, relay: &Relay) {
    let etc = dir.join("etc");
    common::private_postfix_config(&etc);
    let maps = etc.join("mailtls");
    let once = |config: &Path, listen: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailtls"));
        cmd.arg("relay-agent")
            .arg("--watch-dir")
            .arg(config)
            .arg("--postfix-dir")
            .arg(&etc)
            .arg("--maps-dir")
            .arg(&maps)
            .arg("--once");
        if let Some(listen) = listen {
            cmd.args(["--mta-sts-listen", listen]);
        }
        sh(&mut cmd)
    };
    let render = |yaml: &str, name: &str| {
        let out = dir.join(name);
        let hash = render(
            yaml,
            &dir.join(format!("{name}.yaml")),
            &out,
            &maps,
            &relay.socket,
            None,
        );
        (out, hash)
    };
    let installed = || {
        std::fs::read_to_string(maps.join("manifest.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["hash"].as_str().map(str::to_string))
    };
    let policy_maps = || {
        must(
            Command::new("postconf")
                .arg("-c")
                .arg(&etc)
                .args(["-h", "smtp_tls_policy_maps"]),
        )
    };

    let (plain, good) = render(&listed(), "plain");
    let (ok, out) = once(&plain, None);
    assert!(ok, "a configuration without MTA-STS was refused:\n{out}");
    assert_eq!(installed().as_deref(), Some(good.as_str()));

    let (sts, sts_hash) = render(&(listed() + unlisted_mta_sts()), "sts");
    let (ok, out) = once(&sts, None);
    assert!(
        !ok && out.contains("--mta-sts-listen") && out.contains(&sts_hash),
        "an agent without --mta-sts-listen should refuse {sts_hash}, naming the flag; it said:\n{out}"
    );
    assert_eq!(
        installed().as_deref(),
        Some(good.as_str()),
        "the refused configuration replaced the last good one"
    );
    assert!(
        !policy_maps().contains("socketmap"),
        "the refused configuration reached main.cf: {}",
        policy_maps()
    );

    // Another socket than the one the configuration names: refused too.
    let elsewhere = format!("unix:{}", dir.join("other.sock").display());
    let (ok, out) = once(&sts, Some(&elsewhere));
    assert!(
        !ok && out.contains("must equal relay-agent --mta-sts-listen"),
        "an agent serving MTA-STS on another socket should refuse {sts_hash}; it said:\n{out}"
    );
    assert_eq!(installed().as_deref(), Some(good.as_str()));

    // The socket it names: applied.
    let ours = format!("unix:{}", relay.socket.display());
    let (ok, out) = once(&sts, Some(&ours));
    assert!(ok, "an agent with --mta-sts-listen {ours} refused:\n{out}");
    assert_eq!(installed().as_deref(), Some(sts_hash.as_str()));
    assert!(
        policy_maps().starts_with("socketmap:unix:"),
        "{}",
        policy_maps()
    );
}

// ---------------------------------------------------------------------------------------
// DANE.

/// Signed zones whose MX host is the `GOOD` receiver: `dane-good.test` publishes a TLSA
/// record of its certificate, `dane-bad.test` and `listed-dane.test` one of another
/// certificate; `dane-bogus.test` is signed with a key the resolver does not trust.
fn signed_dns(good: &common::mail::Pem, certs: &Certs) -> SignedDns {
    use sha2::{Digest, Sha256};
    let hash = |pem: &common::mail::Pem| {
        Sha256::digest(common::mail::der(pem))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let other = hash(&certs.ca_signed("mx.good.test"));
    let zone = |name: &str, tlsa: &str, bogus: bool| Zone {
        name: name.into(),
        records: vec![
            format!("@ 300 IN MX 10 mx.{name}."),
            format!("mx 300 IN A {}", GOOD.1),
            format!("_25._tcp.mx 300 IN TLSA 3 0 1 {tlsa}"),
        ],
        signed: true,
        bogus,
    };
    SignedDns::start(
        DNS,
        AUTH_DNS.1,
        &[
            zone("dane-good.test", &hash(good), false),
            zone("dane-bad.test", &other, false),
            zone("listed-dane.test", &other, false),
            zone("dane-bogus.test", &hash(good), true),
        ],
        Some(PLAIN_DNS),
    )
}

/// Listed: the domains of [`listed`], and two signed ones that require TLS (any certificate)
/// and defer on failure.
fn listed_dane() -> String {
    listed()
        + &list("dane-domains", &["listed-dane.test", "dane-bogus.test"])
        + &policy("encrypt-defer", &["dane-domains"], "  onFailure: Defer")
}

fn unlisted_dane() -> &'static str {
    "apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata:\n  name: published-policies\nspec:\n  direction: Outbound\n  scope: Unlisted\n  mechanisms: [MtaSts, Dane]\n---\n"
}

/// The policy server's raw answer (TEMP included, which postmap only warns about).
fn raw_lookup(socket: &Path, name: &str, key: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(socket).expect("policy server");
    let request = format!("{name} {key}");
    write!(conn, "{}:{request},", request.len()).expect("send");
    let mut reply = [0u8; 512];
    let n = conn.read(&mut reply).expect("reply");
    let text = String::from_utf8_lossy(&reply[..n]).into_owned();
    text.split_once(':')
        .map(|(_, rest)| rest.trim_end_matches(',').to_string())
        .unwrap_or(text)
}

/// `rcpt`'s first attempt was deferred for its TLS (4.7.x), it waits in the queue, and
/// nothing with `subject` arrived.
fn assert_held(relay: &Relay, store: &Store, rcpt: &str, subject: &str) {
    let line = relay.wait_attempt(rcpt, 1);
    assert!(
        line.contains("status=deferred") && line.contains("dsn=4.7."),
        "{rcpt} should be deferred for its TLS, got:\n{line}\n\nlog:\n{}",
        relay.log()
    );
    wait_for(30, &format!("{rcpt} in the deferred queue"), || {
        relay.queued(rcpt).filter(|(q, _)| q == "deferred")
    });
    assert!(
        received(store, subject).is_empty(),
        "{subject} was delivered although its TLSA records do not match"
    );
}

fn dane(relay: &mut Relay, store: &Store, signed: &SignedDns) {
    relay.apply(&(listed_dane() + unlisted_dane()));
    assert_eq!(relay.postconf("smtp_dns_support_level"), "dnssec");
    assert_eq!(relay.postconf("smtp_tls_security_level"), "dane");
    // The policy server: dane-only where authenticated TLSA records exist (listed or not),
    // nothing for an unsigned zone, TEMP for a bogus one.
    let dane_only = "dane-only protocols=>=TLSv1.2";
    for domain in ["listed-dane.test", "dane-good.test", "dane-bad.test"] {
        assert_eq!(
            sts_lookup(&relay.socket, "mailtls", domain).as_deref(),
            Some(dane_only),
            "the policy server's answer for {domain}; resolver log:\n{}",
            signed.log()
        );
    }
    // Asked again, the verdict comes from the policy server's cache (within the records'
    // TTL): the resolver gets no new question.
    let asked = || signed.log().matches("dane-good.test. MX IN").count();
    let before = asked();
    assert!(
        before >= 1,
        "the resolver logs its questions:\n{}",
        signed.log()
    );
    assert_eq!(
        sts_lookup(&relay.socket, "mailtls", "dane-good.test").as_deref(),
        Some(dane_only)
    );
    assert_eq!(asked(), before, "the DANE verdict was looked up again");
    assert_eq!(
        sts_lookup(&relay.socket, "mailtls", "listed-nosts.test"),
        None
    );
    let bogus = raw_lookup(&relay.socket, "mailtls", "dane-bogus.test");
    assert!(bogus.starts_with("TEMP "), "{bogus}");

    for (rcpt, subject) in [
        ("u@dane-good.test", "h-dane-good"),
        ("u@dane-bad.test", "h-dane-bad"),
        ("u@listed-dane.test", "h-listed-dane"),
        ("u@listed-nosts.test", "h-listed-nosts"),
    ] {
        send_ok(rcpt, subject);
    }
    // A matching TLSA record: delivered, DANE-verified.
    assert_delivered(relay, store, "h-dane-good", GOOD.0);
    let line = relay.wait_attempt("u@dane-good.test", 1);
    let tls = tls_line(relay, &line);
    assert!(
        tls.contains("Verified TLS connection established to mx.dane-good.test"),
        "dane-good.test was delivered, but not DANE-verified: {tls}"
    );
    // A mismatching one: held back, whether the destination is listed (its own
    // requirement, any certificate, would accept the MX) or not.
    assert_held(relay, store, "u@dane-bad.test", "h-dane-bad");
    assert_held(relay, store, "u@listed-dane.test", "h-listed-dane");
    // An unsigned zone: the listed requirement decides as before.
    assert_delivered(relay, store, "h-listed-nosts", WRONG.0);

    // Without DANE the same mail goes out: DANE was what held it back.
    relay.apply(&listed_dane());
    assert_ne!(relay.postconf("smtp_tls_security_level"), "dane");
    relay.flush();
    assert_delivered(relay, store, "h-dane-bad", GOOD.0);
    assert_delivered(relay, store, "h-listed-dane", GOOD.0);
}
