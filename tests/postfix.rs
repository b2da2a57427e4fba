//! Rendered output on a real Postfix: installed into a private instance directory (its own
//! `config_directory`, never /etc/postfix), maps built with `postmap`, `postfix check` clean,
//! and `postmap -q` answering for sample keys. Needs Postfix (scripts/test.sh installs it).

mod common;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (is Postfix installed? scripts/test.sh installs it)")
    });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A private Postfix instance with mailtls's output installed by the relay agent
/// (`mailtls relay-agent --once`): main.cf lines through `postconf -e`, master.cf services
/// appended, maps postmapped, `postfix check` in a staging copy, then swapped in.
struct Instance {
    dir: tempfile::TempDir,
}

impl Instance {
    fn new(inputs: &[&Path], map_type: &str) -> Instance {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("etc");
        common::private_postfix_config(&cfg);
        let maps = cfg.join("mailtls");
        let rendered = dir.path().join("rendered");
        let mut render = Command::new(env!("CARGO_BIN_EXE_mailtls"));
        render
            .arg("render")
            .args(inputs)
            .arg("--output")
            .arg(&rendered)
            .arg("--config-dir")
            .arg(&maps)
            .args(["--map-type", map_type, "--postfix-version", "auto"]);
        let (ok, out) = run(&mut render);
        assert!(ok, "render failed:\n{out}");
        let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_mailtls"))
            .arg("relay-agent")
            .arg("--watch-dir")
            .arg(&rendered)
            .arg("--postfix-dir")
            .arg(&cfg)
            .arg("--maps-dir")
            .arg(&maps)
            .arg("--once"));
        assert!(ok, "relay-agent refused the configuration:\n{out}");
        Instance { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn check_clean(&self) {
        let (ok, out) = run(Command::new("postfix")
            .arg("-c")
            .arg(self.path())
            .arg("check"));
        assert!(ok, "postfix check failed:\n{out}");
        assert!(
            out.trim().is_empty(),
            "postfix check printed warnings:\n{out}"
        );
        let (ok, out) = run(Command::new("postconf")
            .arg("-c")
            .arg(self.path())
            .arg("-n"));
        assert!(ok, "postconf -n failed: {out}");
        assert!(!out.contains("warning"), "postconf -n warned:\n{out}");
        let (ok, out) = run(Command::new("postconf")
            .arg("-c")
            .arg(self.path())
            .arg("-M"));
        assert!(ok && !out.contains("warning"), "postconf -M: {out}");
    }

    fn query(&self, map_type: &str, map: &str, key: &str) -> Option<String> {
        let file = self.path().join("mailtls").join(map);
        let (ok, out) = run(Command::new("postmap")
            .arg("-c")
            .arg(self.path())
            .arg("-q")
            .arg(key)
            .arg(format!("{map_type}:{}", file.display())));
        ok.then(|| out.trim().to_string())
    }

    fn pcre_query(&self, key: &str) -> Option<String> {
        let file = self.path().join("mailtls").join("tls_bounce.pcre");
        let (ok, out) = run(Command::new("postmap")
            .arg("-q")
            .arg(key)
            .arg(format!("pcre:{}", file.display())));
        ok.then(|| out.trim().to_string())
    }
}

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
}

#[test]
fn examples_install_into_real_postfix_and_check_clean() {
    for map_type in ["lmdb", "cdb", "hash"] {
        let pf = Instance::new(&[examples()], map_type);
        pf.check_clean();
        assert_eq!(
            pf.query(map_type, "transport", "ceo@supplier.example")
                .as_deref(),
            Some("mailtls-verify-tls12-bounce:[tls-relay.example.net]:587")
        );
        assert_eq!(
            pf.query(map_type, "transport", ".partner.example")
                .as_deref(),
            Some("mailtls-verify-tls12-bounce:[tls-relay.example.net]:587")
        );
        assert_eq!(
            pf.query(map_type, "transport", "xn--bcher-kva.example")
                .as_deref(),
            Some("mailtls-verify-tls12-bounce:[tls-relay.example.net]:587")
        );
        assert_eq!(
            pf.query(map_type, "tls_policy", "[tls-relay.example.net]:587")
                .as_deref(),
            Some("verify match=hostname protocols=>=TLSv1.2")
        );
        assert_eq!(
            pf.query(map_type, "sender_access", "chair@board.example")
                .as_deref(),
            Some("mailtls_require_tls")
        );
        assert_eq!(
            pf.query(map_type, "transport", "nobody@unlisted.example"),
            None
        );
    }
}

#[test]
fn postfix_sees_what_mailtls_owns() {
    let pf = Instance::new(&[examples()], "lmdb");
    let (_, out) = run(Command::new("postconf").arg("-c").arg(pf.path()).args([
        "-h",
        "relayhost",
        "plaintext_reject_code",
        "smtpd_sender_restrictions",
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "smarthost.example.net");
    assert_eq!(lines[1], "550");
    assert!(
        lines[2].starts_with("check_sender_access lmdb:"),
        "{}",
        lines[2]
    );
    let (_, services) = run(Command::new("postconf")
        .arg("-c")
        .arg(pf.path())
        .args(["-M", "mailtls-verify-tls12-bounce/unix"]));
    assert!(
        services.contains("smtp_tls_security_level=verify"),
        "{services}"
    );
    assert!(
        services.contains("smtp_delivery_status_filter=pcre:"),
        "{services}"
    );
}

#[test]
fn bounce_filter_turns_only_our_own_tls_failures_permanent() {
    let pf = Instance::new(&[examples()], "lmdb");
    let own = [
        "4.7.4 TLS is required, but was not offered by host mx.partner.example[192.0.2.1]",
        "4.7.5 TLS is required, but host mx.partner.example[192.0.2.1] refused to start TLS: 454 4.7.0 TLS not available",
        "4.7.5 Cannot start TLS: handshake failure",
        "4.7.5 Server certificate not verified",
        "4.7.5 Server certificate not trusted",
    ];
    for status in own {
        let out = pf
            .pcre_query(status)
            .unwrap_or_else(|| panic!("not matched: {status}"));
        assert!(out.starts_with("5.7."), "{status} -> {out}");
        assert_eq!(&out[1..], &status[1..], "only the class changes");
    }
    let remote = [
        "4.7.0 host mx.partner.example[192.0.2.1] said: 454 4.7.0 TLS not available due to local problem (in reply to STARTTLS command)",
        "4.7.1 host mx.partner.example[192.0.2.1] said: 450 4.7.1 Cannot start TLS: try later (in reply to RCPT TO command)",
        "4.4.1 connect to mx.partner.example[192.0.2.1]:25: Connection refused",
        "5.7.1 host mx said: 550 5.7.1 rejected",
    ];
    for status in remote {
        assert_eq!(pf.pcre_query(status), None, "must not match: {status}");
    }
}

/// A large generated input: 12 lists × 1000 entries of every kind, 24 policies with every
/// option, gateways of every kind.
fn large_input(dir: &Path) {
    let mut yaml = String::new();
    for l in 0..12 {
        let _ = writeln!(
            yaml,
            "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata:\n  name: list-{l}\nspec:\n  entries:"
        );
        for i in 0..1000 {
            let entry = match i % 4 {
                0 => format!("user{i}@dom{}.example", i % 97),
                1 => format!("dom{}-{l}.example", i),
                2 => format!(".sub{}.example", i % 301),
                _ => format!("x{i}.Ünïcode{}.example", l),
            };
            let _ = writeln!(yaml, "    - \"{entry}\"");
        }
        yaml.push_str("---\n");
    }
    for p in 0..24 {
        // Inbound policies carry no outbound options (the schema refuses them).
        let inbound = p % 3 == 1;
        let _ = writeln!(
            yaml,
            "apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata:\n  name: policy-{p}\nspec:\n  direction: {}\n  addressLists:\n    - name: list-{}\n    - name: list-{}\n  requireCASigned: {}\n  validateHostname: {}\n  minTlsVersion: \"1.{}\"\n  onFailure: {}\n  enforcement: {}\n---",
            ["Outbound", "Inbound", "Both"][p % 3],
            p % 12,
            (p + 5) % 12,
            p % 2 == 0 && !inbound,
            p % 4 == 0 && !inbound,
            if inbound { 2 } else { p % 4 },
            ["Bounce", "Defer"][p % 2],
            if p % 5 == 0 { "Monitor" } else { "Enforce" },
        );
    }
    yaml.push_str(
        "apiVersion: mailtls.io/v1alpha1\nkind: OutboundGateway\nmetadata:\n  name: all\nspec:\n  host: smarthost.example.net\n  mxLookup: true\n---\n\
         apiVersion: mailtls.io/v1alpha1\nkind: OutboundGateway\nmetadata:\n  name: secure\nspec:\n  host: 198.51.100.7\n  port: 465\n  appliesTo: SecureTransportRequired\n---\n\
         apiVersion: mailtls.io/v1alpha1\nkind: OutboundGateway\nmetadata:\n  name: route\nspec:\n  host: archive.example.net\n  port: 2525\n  appliesTo: Recipients\n  addressLists:\n    - name: list-3\n  tls:\n    require: true\n    requireCASigned: true\n    validateHostname: true\n",
    );
    std::fs::write(dir.join("large.yaml"), yaml).expect("write input");
}

#[test]
fn large_generated_input_checks_clean_on_real_postfix() {
    let input = tempfile::tempdir().expect("tempdir");
    large_input(input.path());
    let pf = Instance::new(&[input.path()], "lmdb");
    pf.check_clean();
    let transport =
        std::fs::read_to_string(pf.path().join("mailtls/transport")).expect("transport");
    let rows: Vec<&str> = transport.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(rows.len() > 5000, "{} transport rows", rows.len());
    // Every row answers through the built map exactly as written.
    for row in rows.iter().step_by(997) {
        let (key, value) = row.split_once(' ').expect("key value");
        assert_eq!(
            pf.query("lmdb", "transport", key).as_deref(),
            Some(value),
            "{key}"
        );
    }
    let services: Vec<String> = std::fs::read_to_string(pf.path().join("mailtls/master.cf"))
        .expect("master.cf")
        .lines()
        .filter(|l| l.contains(" unix "))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    // Every service a transport entry names exists in master.cf.
    for row in &rows {
        let service = row
            .split_once(' ')
            .map(|(_, v)| v.split(':').next().unwrap_or_default())
            .unwrap_or_default();
        assert!(
            service == "smtp" || services.iter().any(|s| s == service),
            "{row}"
        );
    }
}

/// Instances set up at the same moment, each from a fresh state where no queue directory
/// exists yet: every `postfix check` (the agent's in staging, then ours) creates the queue
/// and data directories of its own instance, never a shared /var/spool/postfix, so
/// concurrent checks cannot race on one `mkdir` ("unable to create missing queue
/// directories", seen once on a fresh machine).
#[test]
fn concurrent_instances_have_queue_directories_of_their_own() {
    let instances: Vec<Instance> = std::thread::scope(|s| {
        let started: Vec<_> = (0..6)
            .map(|_| s.spawn(|| Instance::new(&[examples()], "lmdb")))
            .collect();
        started
            .into_iter()
            .map(|h| h.join().expect("instance set up"))
            .collect()
    });
    let mut queues = std::collections::BTreeSet::new();
    for pf in &instances {
        pf.check_clean();
        for (param, made) in [("queue_directory", "active"), ("data_directory", "")] {
            let (ok, dir) = run(Command::new("postconf")
                .arg("-c")
                .arg(pf.path())
                .args(["-h", param]));
            let dir = PathBuf::from(dir.trim());
            assert!(
                ok && dir.starts_with(pf.dir.path()),
                "{param} = {}",
                dir.display()
            );
            assert!(
                dir.join(made).is_dir(),
                "{} was not created",
                dir.join(made).display()
            );
            queues.insert(dir);
        }
    }
    assert_eq!(queues.len(), 2 * instances.len());
}
