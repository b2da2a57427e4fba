//! The MTA-STS policy server, asked by Postfix's own `postmap -q` through the socketmap
//! protocol, against a local DNS server (dnsmasq) with `_mta-sts` TXT records and
//! in-process HTTPS policy hosts (tokio + rustls, test CA), some of them hostile: a huge
//! policy, one that never answers, a malformed one, one inside the network.
//!
//! Runs itself again inside a private network namespace (needs root, like relay_e2e).

mod common;

use common::mail::{Certs, Kill, PolicyAnswer, dnsmasq_with, policy_host, tls_config, wait_for};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INSIDE: &str = "MAILTLS_STS_NETNS";
const TEST_NAME: &str = "postfix_gets_mta_sts_policies_through_socketmap";
const DNS: &str = "127.0.0.53";
const SERVER: &str = "127.0.0.1:8461";
const MAP: &str = "socketmap:inet:127.0.0.1:8461:postfix";

/// Policy hosts: (domain, address).
const HOSTS: &[(&str, &str)] = &[
    ("enforce.test", "127.0.0.41"),
    ("testing.test", "127.0.0.42"),
    ("huge.test", "127.0.0.43"),
    ("slow.test", "127.0.0.44"),
    ("malformed.test", "127.0.0.45"),
];

#[test]
fn postfix_gets_mta_sts_policies_through_socketmap() {
    if std::env::var_os(INSIDE).is_some() {
        inside();
        return;
    }
    let addresses: Vec<&str> = std::iter::once(DNS)
        .chain(HOSTS.iter().map(|(_, a)| *a))
        .collect();
    common::mail::run_in_netns(TEST_NAME, INSIDE, &addresses, DNS);
}

fn policy(mode: &str, mx: &[&str]) -> String {
    let mut p = format!("version: STSv1\nmode: {mode}\nmax_age: 86400\n");
    for m in mx {
        p.push_str(&format!("mx: {m}\n"));
    }
    p
}

/// dnsmasq with the policy hosts' addresses and these `_mta-sts` ids (no TXT: no entry).
fn dns(ids: &[(&str, &str)]) -> Kill {
    let mut records: Vec<(String, String)> = HOSTS
        .iter()
        .map(|(d, a)| (format!("mta-sts.{d}"), a.to_string()))
        .collect();
    // A policy host inside the network: never fetched from.
    records.push(("mta-sts.inside.test".into(), "10.1.2.3".into()));
    let txt: Vec<(String, String)> = ids
        .iter()
        .map(|(d, id)| (format!("_mta-sts.{d}"), format!("v=STSv1; id={id}")))
        .collect();
    let records: Vec<(&str, &str)> = records
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let txt: Vec<(&str, &str)> = txt.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    dnsmasq_with(DNS, &records, &[], &txt)
}

/// `postmap -q` for each key through the socketmap, one connection: (key, value) found.
fn lookup(keys: &[&str]) -> Vec<(String, String)> {
    use std::io::Write as _;
    let mut child = Command::new("postmap")
        .args(["-q", "-", MAP])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("postmap");
    let mut stdin = child.stdin.take().expect("stdin");
    for k in keys {
        writeln!(stdin, "{k}").expect("write key");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("postmap");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("fatal"),
        "{out:?}"
    );
    text.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn one(key: &str) -> Option<String> {
    lookup(&[key]).into_iter().next().map(|(_, v)| v)
}

fn inside() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = Certs::new();
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, &certs.ca).expect("ca");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let answers: Vec<Arc<Mutex<PolicyAnswer>>> = HOSTS
        .iter()
        .map(|(domain, addr)| {
            let answer = Arc::new(Mutex::new(match *domain {
                "enforce.test" => PolicyAnswer::Policy(policy(
                    "enforce",
                    &["mx.enforce.test", "*.backup.enforce.test"],
                )),
                "testing.test" => PolicyAnswer::Policy(policy("testing", &["mx.testing.test"])),
                "huge.test" => PolicyAnswer::Huge,
                "slow.test" => PolicyAnswer::Silent,
                _ => PolicyAnswer::Policy("this is not a policy\n".into()),
            }));
            let tls = tls_config(&certs.ca_signed(&format!("mta-sts.{domain}")));
            policy_host(&rt, addr, tls, answer.clone());
            answer
        })
        .collect();
    let enforce = answers[0].clone();
    let ids = |enforce_id: &'static str| {
        let mut ids = vec![("enforce.test", enforce_id)];
        for d in [
            "testing.test",
            "huge.test",
            "slow.test",
            "malformed.test",
            "inside.test",
        ] {
            ids.push((d, "1"));
        }
        ids
    };
    let mut dns_server = dns(&ids("1"));

    let log = std::fs::File::create(tmp.path().join("server.log")).expect("log");
    let _server = Kill(
        Command::new(env!("CARGO_BIN_EXE_mailtls"))
            .args(["mta-sts-server", "--mta-sts-listen", SERVER])
            .args(["--mta-sts-resolver", "127.0.0.53:53"])
            .arg("--mta-sts-ca-file")
            .arg(&ca)
            .args(["--mta-sts-allow-address", "127.0.0.0/8"])
            .args(["--mta-sts-timeout", "2s", "--mta-sts-recheck", "1s"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the policy server"),
    );
    wait_for(10, "the policy server", || {
        std::net::TcpStream::connect(SERVER).ok()
    });
    let server_log = || std::fs::read_to_string(tmp.path().join("server.log")).unwrap_or_default();

    // enforce: verified TLS to a host matching the policy's MX patterns.
    let enforced = "secure match=.backup.enforce.test:mx.enforce.test servername=hostname";
    assert_eq!(
        one("enforce.test").as_deref(),
        Some(enforced),
        "{}",
        server_log()
    );
    // The same over a Unix socket (socketmap:unix:PATH:postfix), with DANE honoured first:
    // these zones are unsigned, so MTA-STS decides.
    let socket = tmp.path().join("mta-sts.sock");
    let _unix_server = Kill(
        Command::new(env!("CARGO_BIN_EXE_mailtls"))
            .args(["mta-sts-server", "--dane", "--mta-sts-listen"])
            .arg(format!("unix:{}", socket.display()))
            .args(["--mta-sts-resolver", "127.0.0.53:53"])
            .arg("--mta-sts-ca-file")
            .arg(&ca)
            .args(["--mta-sts-allow-address", "127.0.0.0/8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the policy server on a Unix socket"),
    );
    wait_for(10, "the Unix socket", || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    });
    let out = Command::new("postmap")
        .args(["-q", "enforce.test"])
        .arg(format!("socketmap:unix:{}:postfix", socket.display()))
        .output()
        .expect("postmap");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        enforced,
        "{out:?}"
    );
    // testing, no TXT record, and next hops that are not domains: nothing.
    for key in [
        "testing.test",
        "nosts.test",
        "[192.0.2.1]:25",
        "192.0.2.1",
        ".enforce.test",
    ] {
        assert_eq!(one(key), None, "{key}");
    }

    // Hostile policy hosts: each refused within the time limit, nothing enforced, and the
    // server goes on answering the others, several requests on one connection.
    let started = Instant::now();
    let found = lookup(&[
        "huge.test",
        "slow.test",
        "malformed.test",
        "inside.test",
        "enforce.test",
    ]);
    assert_eq!(found, [("enforce.test".to_string(), enforced.to_string())]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let said = server_log();
    for why in [
        "domain=\"huge.test\"",
        "domain=\"slow.test\"",
        "domain=\"malformed.test\"",
        "mta-sts.inside.test has no address a policy may be fetched from",
    ] {
        assert!(said.contains(why), "{why} not in:\n{said}");
    }

    // The id changes but the new policy cannot be fetched: the cached one still holds.
    *enforce.lock().expect("answer") = PolicyAnswer::Silent;
    drop(dns_server);
    dns_server = dns(&ids("2"));
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        one("enforce.test").as_deref(),
        Some(enforced),
        "{}",
        server_log()
    );

    // A new id with a fetchable policy: picked up.
    *enforce.lock().expect("answer") =
        PolicyAnswer::Policy(policy("enforce", &["mx2.enforce.test"]));
    drop(dns_server);
    let _dns = dns(&ids("3"));
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        one("enforce.test").as_deref(),
        Some("secure match=mx2.enforce.test servername=hostname"),
        "{}",
        server_log()
    );

    // A broken request gets a PERM reply and a closed connection, not a crash.
    {
        use std::io::{Read as _, Write as _};
        let mut conn = std::net::TcpStream::connect(SERVER).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        conn.write_all(b"x:bad,").expect("write");
        let mut reply = String::new();
        conn.read_to_string(&mut reply).expect("read until closed");
        assert!(reply.contains(":PERM "), "{reply:?}");
    }
    assert_eq!(
        one("enforce.test").as_deref(),
        Some("secure match=mx2.enforce.test servername=hostname")
    );
}
