//! DNSSEC for the DANE tests: zones signed with fresh keys (ldns-keygen, ldns-signzone) and
//! served by an authoritative unbound, and a validating unbound in front of it that trusts
//! each signed zone's KSK. Neither asks anything beyond 127.0.0.0/8.

use crate::common::mail::{Kill, must};
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A signed zone served by an authoritative unbound, and a validating unbound in front of it
/// that trusts the zone's KSK.
pub struct SignedDns {
    // Fields drop in order: the servers end before their directory goes.
    _validator: Kill,
    _auth: Kill,
    dir: tempfile::TempDir,
    listen: String,
    /// Each signed zone's trust anchor (the KSK's `.key` file the validator trusts).
    anchors: Vec<(String, std::path::PathBuf)>,
}

/// One zone of a [`SignedDns`]. SOA and NS records (`ns.<name>`, at the authoritative
/// server's address) are added.
pub struct Zone {
    /// e.g. "dane.test"
    pub name: String,
    /// Zone-file lines, names relative to the zone or absolute: "mx 300 IN A 127.0.0.21",
    /// "@ 300 IN MX 10 mx.dane.test.", "_25._tcp.mx 300 IN TLSA 3 1 1 <hex>".
    pub records: Vec<String>,
    /// false: served unsigned (insecure delegation, no trust anchor): answers without AD.
    pub signed: bool,
    /// Signed, but the resolver's trust anchor is another key: answers are bogus (SERVFAIL).
    /// Implies `signed`.
    pub bogus: bool,
}

/// Every IPv4 network but 127.0.0.0/8: unbound would ask the real root servers (its built-in
/// hints) for any name outside the zones and the forward; with these it answers SERVFAIL at once.
const NOT_LOOPBACK: &[&str] = &[
    "0.0.0.0/2",
    "64.0.0.0/3",
    "96.0.0.0/4",
    "112.0.0.0/5",
    "120.0.0.0/6",
    "124.0.0.0/7",
    "126.0.0.0/8",
    "128.0.0.0/1",
];

impl SignedDns {
    /// `listen`: the address the validating resolver answers on, port 53 (e.g. "127.0.0.53"),
    /// for Postfix via resolv.conf. `auth_listen`: address:port for the authoritative server
    /// (e.g. "127.0.0.54:53" or "127.0.0.1:5353"). `forward_rest`: a server (address, port 53)
    /// for every other `.test` name, trusted as insecure. Names outside all of these get
    /// SERVFAIL.
    pub fn start(
        listen: &str,
        auth_listen: &str,
        zones: &[Zone],
        forward_rest: Option<&str>,
    ) -> SignedDns {
        let dir = tempfile::Builder::new()
            .prefix("mailtls-dnssec-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let (auth_addr, auth_port) = auth_listen
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("auth_listen {auth_listen:?} is not address:port"));
        let mut auth = server_conf(d, "auth", auth_addr, auth_port, "iterator");
        let mut validator = server_conf(d, "validator", listen, "53", "validator iterator");
        // Its only upstreams are on loopback, which unbound does not query by default.
        validator.push_str("  do-not-query-localhost: no\n");
        let (mut auth_zones, mut stubs) = (String::new(), String::new());
        let mut anchors = Vec::new();
        for zone in zones {
            let name = zone.name.trim_end_matches('.');
            let file = d.join(format!("{name}.zone"));
            std::fs::write(&file, zone_text(name, auth_addr, &zone.records)).expect("zone file");
            let served = if zone.signed || zone.bogus {
                let zsk = keygen(d, name, false);
                let ksk = keygen(d, name, true);
                must(
                    Command::new("ldns-signzone")
                        .arg(&file)
                        .arg(d.join(&zsk))
                        .arg(d.join(&ksk)),
                );
                let anchor = if zone.bogus {
                    keygen(d, name, true)
                } else {
                    ksk
                };
                let key = d.join(format!("{anchor}.key"));
                let _ = writeln!(validator, "  trust-anchor-file: \"{}\"", key.display());
                anchors.push((name.to_string(), key));
                d.join(format!("{name}.zone.signed"))
            } else {
                // Insecure even below a signed zone, which has no delegation to prove it so.
                let _ = writeln!(validator, "  domain-insecure: \"{name}\"");
                file
            };
            let _ = write!(
                auth_zones,
                "auth-zone:\n  name: \"{name}\"\n  zonefile: \"{}\"\n  for-downstream: yes\n  for-upstream: no\n",
                served.display()
            );
            let _ = write!(
                stubs,
                "stub-zone:\n  name: \"{name}\"\n  stub-addr: {auth_addr}@{auth_port}\n"
            );
        }
        if let Some(rest) = forward_rest {
            // A trust anchor below `test` still makes that zone secure.
            validator.push_str("  domain-insecure: \"test\"\n");
            let _ = write!(
                stubs,
                "forward-zone:\n  name: \"test\"\n  forward-addr: {rest}@53\n"
            );
        }
        auth.push_str(&auth_zones);
        validator.push_str(&stubs);

        let mut auth = spawn(d, "auth", &auth);
        let names: Vec<&str> = zones.iter().map(|z| z.name.as_str()).collect();
        wait_ready(d, "auth", &mut auth, auth_addr, auth_port, &names);
        let mut validator = spawn(d, "validator", &validator);
        wait_ready(d, "validator", &mut validator, listen, "53", &[]);
        SignedDns {
            _validator: validator,
            _auth: auth,
            dir,
            listen: listen.to_string(),
            anchors,
        }
    }

    /// The trust anchor file of a signed zone, for another validating resolver to use.
    pub fn anchor(&self, zone: &str) -> &Path {
        self.anchors
            .iter()
            .find(|(name, _)| name == zone)
            .map(|(_, key)| key.as_path())
            .unwrap_or_else(|| panic!("{zone} is not a signed zone here"))
    }

    /// resolv.conf text: glibc strips the AD bit Postfix needs unless `trust-ad` is set.
    pub fn resolv_conf(&self) -> String {
        format!("nameserver {}\noptions trust-ad\n", self.listen)
    }

    /// The validating resolver's log (`val-log-level: 2` says why an answer was bogus).
    pub fn log(&self) -> String {
        log(self.dir.path(), "validator")
    }
}

fn server_conf(dir: &Path, name: &str, addr: &str, port: &str, modules: &str) -> String {
    let d = dir.display();
    let mut conf = format!(
        "server:
  username: \"\"
  chroot: \"\"
  directory: \"{d}\"
  do-daemonize: no
  pidfile: \"\"
  use-syslog: no
  logfile: \"{d}/{name}.log\"
  val-log-level: 2
  log-queries: yes
  interface: {addr}
  port: {port}
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  module-config: \"{modules}\"
  local-zone: \"test.\" nodefault
"
    );
    // (`test.` above: unbound answers it NXDOMAIN itself, before auth-zones and stubs.)
    for net in NOT_LOOPBACK {
        let _ = writeln!(conf, "  do-not-query-address: {net}");
    }
    conf
}

fn zone_text(name: &str, ns_addr: &str, records: &[String]) -> String {
    let mut text = format!(
        "$ORIGIN {name}.\n$TTL 300\n@ IN SOA ns.{name}. hostmaster.{name}. 1 3600 600 86400 300\n@ IN NS ns\nns IN A {ns_addr}\n"
    );
    for record in records {
        let _ = writeln!(text, "{record}");
    }
    text
}

/// A fresh ECDSA P-256 key (`ksk`: with the SEP flag) in `dir`; its file name without suffix.
fn keygen(dir: &Path, zone: &str, ksk: bool) -> String {
    let mut cmd = Command::new("ldns-keygen");
    cmd.current_dir(dir).args(["-a", "ECDSAP256SHA256"]);
    if ksk {
        cmd.arg("-k");
    }
    must(cmd.arg(zone)).trim().to_string()
}

fn spawn(dir: &Path, name: &str, conf: &str) -> Kill {
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, conf).expect("unbound.conf");
    // Errors before unbound opens its logfile go to stderr: into that file too.
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .expect("unbound log");
    Kill(
        Command::new("unbound")
            .arg("-d")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start unbound (scripts/install-test-deps.sh)"),
    )
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// Wait up to 10 s until the server answers, with each of `zones` authoritatively if given.
fn wait_ready(dir: &Path, name: &str, server: &mut Kill, addr: &str, port: &str, zones: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let probes: Vec<&str> = if zones.is_empty() {
        vec!["."]
    } else {
        zones.to_vec()
    };
    let mut pending = probes.as_slice();
    while let Some((zone, rest)) = pending.split_first() {
        let out = Command::new("dig")
            .args(["+time=1", "+tries=1", "-p", port])
            .arg(format!("@{addr}"))
            .args([zone, "SOA"])
            .output()
            .expect("dig (scripts/install-test-deps.sh)");
        let text = String::from_utf8_lossy(&out.stdout);
        let ready = out.status.success()
            && (zones.is_empty() || (text.contains("status: NOERROR") && text.contains(" aa")));
        if ready {
            pending = rest;
            continue;
        }
        let running = matches!(server.0.try_wait(), Ok(None));
        assert!(
            running && Instant::now() < deadline,
            "unbound {name} on {addr}:{port} {} {zone}:\n{text}\nlog:\n{}",
            if running {
                "not ready after 10 s, asked for"
            } else {
                "exited, asked for"
            },
            log(dir, name)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
