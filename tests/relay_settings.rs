//! The relay's own settings and lifecycle on real Postfix, the way the chart's relay pod
//! runs them: `mailtls relay-init` seeds the live config from an "image" config directory
//! with the chart's values (who may relay, hostname, STARTTLS certificate, inbound domains),
//! Postfix starts on the base configuration before any policy exists, `relay-agent` applies
//! the policy when it is published (and only then is ready), reloads Postfix when the
//! certificate is renewed, and `relay-drain` stops the relay without losing deferred mail,
//! which the next "pod" (a re-seeded config over the same queue) delivers.
//!
//! Runs inside a private network namespace (re-executes itself with `ip netns exec`), with
//! clients and receivers on addresses of that namespace only. Needs root and the packages
//! from scripts/install-test-deps.sh.

mod common;

use common::mail::{
    Certs, Pem, Store, arrived, der, dnsmasq, http_get, must, offered_certificate, send, sh,
    start_sink, tls_config, wait_for,
};
use common::{gateway, list, policy};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

const INSIDE: &str = "MAILTLS_RELAY_SETTINGS_NETNS";
const TEST_NAME: &str = "relay_settings_and_lifecycle_on_real_postfix";
const DNS: &str = "127.0.0.53";
/// Outside 127.0.0.0/8, which is always allowed: the pod itself.
const RELAY: &str = "10.99.0.1";
const CLIENT: &str = "10.99.0.2";
const OUTSIDER: &str = "10.99.0.3";
/// The organisation's own mail server (relay.inbound.nextHop).
const CORP_MX: (&str, &str) = ("corp-mx", "10.99.0.50");
/// The AllMail gateway: verified TLS.
const GATEWAY: (&str, &str) = ("gateway", "10.99.0.60");
const STATUS: &str = "127.0.0.1:18090";
const HOSTNAME: &str = "relay.corp.test";

#[test]
fn relay_settings_and_lifecycle_on_real_postfix() {
    if std::env::var_os(INSIDE).is_some() {
        inside();
        return;
    }
    common::mail::run_in_netns(
        TEST_NAME,
        INSIDE,
        &[DNS, RELAY, CLIENT, OUTSIDER, CORP_MX.1, GATEWAY.1],
        DNS,
    );
}

fn mailtls() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailtls"))
}

/// One relay "pod": the image's config, the live config (an emptyDir), the mounted policy
/// and certificate, and the queue (the persistent volume) outside the live config.
struct Pod {
    root: PathBuf,
    image: PathBuf,
    live: PathBuf,
    cm: PathBuf,
    tls: PathBuf,
    agent: Option<Child>,
    version: u32,
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop_agent();
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.live)
            .arg("stop")
            .output();
    }
}

impl Pod {
    fn new(root: &Path, ca: &str, cert: &Pem) -> Pod {
        let image = root.join("image");
        common::private_postfix_config(&image);
        let p = |s: &Path| s.display().to_string();
        std::fs::create_dir_all(root.join("queue")).expect("queue");
        // What the relay image sets (deploy/docker/relay.Dockerfile), with this test's own
        // queue, log and addresses. No mynetworks, hostname or TLS: those are relay-init's.
        let image_settings = [
            format!("queue_directory={}", p(&root.join("queue"))),
            format!("data_directory={}", p(&root.join("data"))),
            format!("maillog_file_prefixes={}", p(root)),
            "syslog_name=mailtls-relay-settings".into(),
            format!("inet_interfaces={RELAY}"),
            "inet_protocols=ipv4".into(),
            "mydestination=".into(),
            "default_transport=smtp".into(),
            "relay_transport=relay".into(),
            "alias_maps=".into(),
            "alias_database=".into(),
            "smtp_host_lookup=dns".into(),
            "disable_dns_lookups=no".into(),
            "smtp_connect_timeout=5s".into(),
            "smtp_tls_security_level=may".into(),
            format!("smtp_tls_CAfile={}", p(&root.join("ca.pem"))),
            "compatibility_level=3.6".into(),
            "smtputf8_enable=no".into(),
            // Quick retries, so the test sees deferred mail delivered soon after a restart.
            "minimal_backoff_time=2s".into(),
            "maximal_backoff_time=4s".into(),
            "queue_run_delay=2s".into(),
        ];
        std::fs::write(root.join("ca.pem"), ca).expect("ca");
        must(
            Command::new("postconf")
                .arg("-c")
                .arg(&image)
                .arg("-e")
                .args(&image_settings),
        );
        must(
            Command::new("postconf")
                .arg("-c")
                .arg(&image)
                .args(["-F", "*/*/chroot = n"]),
        );
        let pod = Pod {
            root: root.to_path_buf(),
            live: root.join("live"),
            cm: root.join("configmap"),
            tls: root.join("tls"),
            image,
            agent: None,
            version: 0,
        };
        std::fs::create_dir_all(&pod.cm).expect("configmap mount");
        pod.publish_cert(cert, 1);
        pod
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("maillog")).unwrap_or_default()
    }

    /// The Secret's files, swapped in like kubelet does.
    fn publish_cert(&self, cert: &Pem, version: u32) {
        let dir = self.tls.join(format!("..v{version}"));
        std::fs::create_dir_all(&dir).expect("tls version dir");
        std::fs::write(dir.join("tls.crt"), &cert.cert).expect("cert");
        std::fs::write(dir.join("tls.key"), &cert.key).expect("key");
        common::kubelet_swap(&self.tls, &format!("..v{version}"));
    }

    fn publish(&mut self, yaml: &str) {
        self.version += 1;
        let input = self.root.join(format!("policy-{}.yaml", self.version));
        std::fs::write(&input, yaml).expect("policy");
        must(
            mailtls()
                .arg("render")
                .arg(&input)
                .arg("--output")
                .arg(self.cm.join(format!("..v{}", self.version)))
                .arg("--config-dir")
                .arg(self.live.join("mailtls"))
                .arg("--ca-file")
                .arg(self.root.join("ca.pem"))
                .args(["--postfix-version", "auto"]),
        );
        common::kubelet_swap(&self.cm, &format!("..v{}", self.version));
    }

    /// `mailtls COMMAND` with this pod's watch, config and maps directories.
    fn dirs(&self, command: &str) -> Command {
        let mut cmd = mailtls();
        cmd.arg(command)
            .arg("--watch-dir")
            .arg(&self.cm)
            .arg("--postfix-dir")
            .arg(&self.live)
            .arg("--maps-dir")
            .arg(self.live.join("mailtls"));
        cmd
    }

    /// The init container: `relay-init` with the chart's values.
    fn init(&self) -> String {
        let tls = |f: &str| self.tls.join(f).display().to_string();
        let (ok, out) = sh(self
            .dirs("relay-init")
            .arg("--image-config")
            .arg(&self.image)
            .arg(format!("--client-cidr={CLIENT}/32"))
            .arg(format!("--hostname={HOSTNAME}"))
            .arg(format!("--tls-cert={}", tls("tls.crt")))
            .arg(format!("--tls-key={}", tls("tls.key")))
            .arg("--inbound-domain=corp.test")
            .arg(format!("--inbound-next-hop={}:25", CORP_MX.1))
            .arg(format!(
                "--mail-log={}",
                self.root.join("maillog").display()
            )));
        assert!(ok, "relay-init failed:\n{out}");
        out
    }

    fn start(&mut self) {
        let (ok, out) = sh(Command::new("postfix")
            .arg("-c")
            .arg(&self.live)
            .arg("start"));
        assert!(ok, "postfix start failed:\n{out}\n{}", self.log());
        wait_for(20, "the relay to listen", || {
            std::net::TcpStream::connect((RELAY, 25)).ok()
        });
        let agent = self
            .dirs("relay-agent")
            .arg("--tls-dir")
            .arg(&self.tls)
            .arg(format!("--status-addr={STATUS}"))
            .arg("--mail-log")
            .arg(self.root.join("maillog"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start relay-agent");
        self.agent = Some(agent);
        wait_for(20, "the agent's /healthz", || {
            http_get(STATUS, "/healthz").filter(|(code, _)| *code == 200)
        });
    }

    fn stop_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }

    fn queue(&self) -> String {
        sh(Command::new("postqueue")
            .arg("-c")
            .arg(&self.live)
            .arg("-j"))
        .1
    }
}

fn policies() -> String {
    [
        list("partners", &["partner.test"]),
        policy("inbound-partners", &["partners"], "")
            .replace("direction: Outbound", "direction: Inbound"),
        gateway(
            "all-mail",
            "  host: gateway.test\n  appliesTo: AllMail\n  tls:\n    require: true\n    requireCASigned: true\n    validateHostname: true",
        ),
    ]
    .concat()
}

fn inside() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    must(Command::new("chmod").arg("755").arg(root));
    let certs = Certs::new();
    let _dns = dnsmasq(DNS, &[("gateway.test", GATEWAY.1)], &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store: Store = Arc::default();
    start_sink(&rt, CORP_MX, None, &store);
    start_sink(
        &rt,
        GATEWAY,
        Some(tls_config(&certs.ca_signed("gateway.test"))),
        &store,
    );
    let first_cert = certs.ca_signed(HOSTNAME);
    let mut pod = Pod::new(root, &certs.ca, &first_cert);

    // A fresh install: no policy published. relay-init still succeeds, Postfix starts on
    // the base configuration, and the agent is not ready.
    let out = pod.init();
    assert!(
        out.contains("no relay configuration published yet"),
        "{out}"
    );
    assert!(out.contains("delivery held"), "{out}");
    pod.start();
    let (code, body) = http_get(STATUS, "/readyz").expect("/readyz");
    assert_eq!(code, 503, "ready before any policy was applied: {body}");

    // Mail a client gives the relay now is queued, never sent: the base configuration
    // requires no TLS, so without the hold it would go straight to gateway.test.
    let (ok, out) = send(
        RELAY,
        CLIENT,
        "a@corp.test",
        "early@gateway.test",
        "held",
        false,
    );
    assert!(ok, "{out}");
    wait_for(30, "the message to be held", || {
        pod.queue().contains("deferred transport").then_some(())
    });
    // The pod is replaced before any policy appears: the drain flushes nothing (a flush
    // would override the hold), and the next pod holds the queue it inherits.
    let (ok, out) = sh(mailtls()
        .arg("relay-drain")
        .arg("--postfix-dir")
        .arg(&pod.live)
        .arg("--within=5s"));
    assert!(ok, "relay-drain failed:\n{out}");
    assert!(
        out.contains("held=true") && out.contains("deferred=1"),
        "{out}"
    );
    pod.stop_agent();
    must(Command::new("postfix").arg("-c").arg(&pod.live).arg("stop"));
    let holds = |pod: &Pod| pod.log().matches("(deferred transport)").count();
    let before = holds(&pod);
    pod.init();
    pod.start();
    wait_for(30, "the next pod to hold the message again", || {
        (holds(&pod) > before).then_some(())
    });
    let sent = store.lock().map(|s| s.len()).unwrap_or_default();
    assert_eq!(sent, 0, "mail sent before a policy was in force");
    assert!(
        pod.queue().contains("\"queue_name\": \"deferred\""),
        "the held message left the queue"
    );

    // The policy appears: applied by the running agent, which becomes ready and releases
    // the held message, sent over verified TLS as the policy requires.
    pod.publish(&policies());
    wait_for(30, "the agent to apply the policy", || {
        http_get(STATUS, "/readyz").filter(|(code, _)| *code == 200)
    });
    assert!(arrived(&store, GATEWAY.0, "held"), "not over TLS");

    // The greeting names relay.hostname.
    let (_, out) = send(
        RELAY,
        OUTSIDER,
        "a@elsewhere.test",
        "nobody@corp.test",
        "greeting",
        false,
    );
    assert!(out.contains(&format!("220 {HOSTNAME} ESMTP")), "{out}");

    // A client outside clientCIDRs may not relay: 554, not Debian's 4xx that would make it
    // retry for days.
    let (ok, out) = send(
        RELAY,
        OUTSIDER,
        "a@corp.test",
        "x@elsewhere.test",
        "outsider",
        false,
    );
    assert!(!ok && out.contains("554 5.7.1"), "outsider relayed:\n{out}");
    // A client inside them may, and the policy routes it through the verified gateway.
    let (ok, out) = send(
        RELAY,
        CLIENT,
        "a@corp.test",
        "x@elsewhere.test",
        "relayed",
        false,
    );
    assert!(ok, "allowed client refused:\n{out}");
    assert!(arrived(&store, GATEWAY.0, "relayed"), "not over TLS");

    // Inbound: anyone may send to the organisation's domains; a listed sender only over
    // TLS (550 in plaintext), with the Secret's certificate.
    let (ok, out) = send(
        RELAY,
        OUTSIDER,
        "someone@other.test",
        "boss@corp.test",
        "inbound",
        false,
    );
    assert!(ok, "inbound mail refused:\n{out}");
    let tls = arrived(&store, CORP_MX.0, "inbound");
    assert!(!tls, "the organisation's server offers no TLS");
    let (ok, out) = send(
        RELAY,
        OUTSIDER,
        "a@partner.test",
        "boss@corp.test",
        "partner-plain",
        false,
    );
    assert!(
        !ok && out.contains("550"),
        "listed sender accepted in plaintext:\n{out}"
    );
    let (ok, out) = send(
        RELAY,
        OUTSIDER,
        "a@partner.test",
        "boss@corp.test",
        "partner-tls",
        true,
    );
    assert!(ok, "listed sender refused over STARTTLS:\n{out}");
    arrived(&store, CORP_MX.0, "partner-tls");
    assert_eq!(offered_certificate(RELAY, HOSTNAME), der(&first_cert));

    // What the relay did, read from Postfix's log by the agent: the held message and the
    // relayed one went out over verified TLS, the three inbound ones in plaintext to the
    // organisation's server (greeting, inbound, partner-tls).
    let observed = wait_for(30, "the agent to count every delivery", || {
        let (_, body) = http_get(STATUS, "/observed")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let count = |domain: &str, key: &str| {
            v["domains"]
                .as_array()?
                .iter()
                .find(|d| d["domain"] == domain)
                .map(|d| {
                    let c = &d[key];
                    c.as_u64()
                        .unwrap_or_else(|| c["Verified"].as_u64().unwrap_or(0))
                })
        };
        let seen = (
            count("gateway.test", "tls")?,
            count("elsewhere.test", "tls")?,
            count("corp.test", "plaintext")?,
        );
        (seen == (1, 1, 3)).then_some(body)
    });
    assert!(
        !observed.contains("early") && !observed.contains("boss"),
        "{observed}"
    );

    // The Secret is renewed: the agent reloads Postfix and the new certificate is offered,
    // with no restart.
    let second_cert = certs.ca_signed(HOSTNAME);
    pod.publish_cert(&second_cert, 2);
    wait_for(30, "the renewed certificate to be offered", || {
        (offered_certificate(RELAY, HOSTNAME) == der(&second_cert)).then_some(())
    });

    // Mail that cannot be delivered now: the gateway goes away.
    drop(rt);
    let (ok, out) = send(
        RELAY,
        CLIENT,
        "a@corp.test",
        "y@elsewhere.test",
        "kept",
        false,
    );
    assert!(ok, "{out}");
    wait_for(30, "the message to be deferred", || {
        pod.queue()
            .contains("\"queue_name\": \"deferred\"")
            .then_some(())
    });

    // The pod stops: relay-drain refuses new connections and leaves the deferred mail.
    let (ok, out) = sh(mailtls()
        .arg("relay-drain")
        .arg("--postfix-dir")
        .arg(&pod.live)
        .arg("--within=5s"));
    assert!(ok, "relay-drain failed:\n{out}");
    assert!(out.contains("deferred=1"), "{out}");
    wait_for(20, "port 25 to close", || {
        std::net::TcpStream::connect((RELAY, 25)).err()
    });
    pod.stop_agent();
    must(Command::new("postfix").arg("-c").arg(&pod.live).arg("stop"));

    // The next pod: a fresh live config from the image over the same queue. The gateway is
    // back; the message kept in the queue is delivered, once.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store: Store = Arc::default();
    start_sink(
        &rt,
        GATEWAY,
        Some(tls_config(&certs.ca_signed("gateway.test"))),
        &store,
    );
    let out = pod.init();
    assert!(out.contains("configuration applied"), "{out}");
    pod.start();
    assert_eq!(http_get(STATUS, "/readyz").map(|(c, _)| c), Some(200));
    must(Command::new("postqueue").arg("-c").arg(&pod.live).arg("-f"));
    assert!(arrived(&store, GATEWAY.0, "kept"), "not over TLS");
    let count = store.lock().map(|s| s.len()).unwrap_or_default();
    assert_eq!(count, 1, "delivered more than once");
}
