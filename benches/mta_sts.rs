//! MTA-STS policy server benchmark: socketmap lookups answered from the cache, ours
//! (`mailtls mta-sts-server`) against postfix-mta-sts-resolver 1.5.1 (PyPI, in a venv under
//! ~/.cache/mailtls) on the same 100 cached `enforce` policies, same run.
//! Run: `sudo cargo bench --bench mta_sts`.
//!
//! Both need DNS on port 53 and HTTPS on 443 (the Python daemon takes them from
//! /etc/resolv.conf and the URL), so the bench runs itself again inside a private network
//! namespace with dnsmasq and an in-process HTTPS policy host (rcgen test CA). Clients: 8
//! connections, each sending one request and waiting for its reply, for 3 s per server;
//! the order alternates over four rounds, and the median of ours/theirs per round is the
//! result (the machine's speed drifts). Each server is measured over TCP and over a Unix
//! socket; ours also with DANE honoured first (`--dane`), over a Unix socket. A "floor"
//! server that does no lookup at all (a fixed reply, a thread per connection, a process of
//! its own) shows how fast this machine's kernel and scheduler let any server be.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const INSIDE: &str = "MAILTLS_STS_BENCH_NETNS";
const FLOOR_SOCKET: &str = "MAILTLS_STS_BENCH_FLOOR";
const DOMAINS: usize = 100;
const OURS: &str = "127.0.0.1:8461";
const THEIRS: &str = "127.0.0.1:8462";
const OURS_UNIX: &str = "/run/mailtls-sts-bench-ours.sock";
const OURS_DANE_UNIX: &str = "/run/mailtls-sts-bench-ours-dane.sock";
const THEIRS_UNIX: &str = "/run/mailtls-sts-bench-theirs.sock";
const FLOOR_UNIX: &str = "/run/mailtls-sts-bench-floor.sock";
const FLOOR: &str = "floor: a fixed reply, no lookup, Unix socket";
const CONNECTIONS: usize = 8;
const SECONDS: u64 = 3;
const ROUNDS: usize = 4;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` probes bench binaries; nothing to test here.
    }
    if let Some(path) = std::env::var_os(FLOOR_SOCKET) {
        return floor_server(Path::new(&path));
    }
    if std::env::var_os(INSIDE).is_some() {
        return inside();
    }
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        println!("skipped: needs root (a network namespace with ports 53 and 443)");
        return;
    }
    install_peer();
    let ns = format!("mailtls-sts-bench-{}", std::process::id());
    let run = |args: &[&str]| {
        let ok = Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip {args:?}");
    };
    run(&["netns", "add", &ns]);
    let etc = PathBuf::from(format!("/etc/netns/{ns}"));
    std::fs::create_dir_all(&etc).expect("/etc/netns");
    std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.53\n").expect("resolv.conf");
    run(&["-n", &ns, "link", "set", "lo", "up"]);
    for a in ["127.0.0.53/8", "127.0.0.41/8"] {
        run(&["-n", &ns, "addr", "add", a, "dev", "lo"]);
    }
    let status = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(std::env::current_exe().expect("own path"))
        .env(INSIDE, "1")
        .status();
    run(&["netns", "del", &ns]);
    let _ = std::fs::remove_dir_all(&etc);
    assert!(status.is_ok_and(|s| s.success()), "the run inside failed");
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn domain(i: usize) -> String {
    format!("d{i}.bench.test")
}

fn inside() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    // The test CA and one certificate for every policy host.
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL takes a leaf whose issuer equals its subject as self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mailtls bench CA");
    let ca_pem = ca_params.self_signed(&ca_key).expect("ca").pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let names: Vec<String> = (0..DOMAINS)
        .map(|i| format!("mta-sts.{}", domain(i)))
        .collect();
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let mut leaf_params = rcgen::CertificateParams::new(names.clone()).expect("params");
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mta-sts.bench.test");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    let ca_file = root.join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).expect("ca");

    let mut dns = Command::new("dnsmasq");
    dns.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        "--bind-interfaces",
        "--port=53",
        "--local=/test/",
        "--user=root",
        "--listen-address=127.0.0.53",
        "--conf-file=/dev/null",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (i, name) in names.iter().enumerate() {
        dns.arg(format!("--host-record={name},127.0.0.41"));
        dns.arg(format!("--txt-record=_mta-sts.{},v=STSv1; id=1", domain(i)));
    }
    let _dns = Kill(dns.spawn().expect("dnsmasq (scripts/install-test-deps.sh)"));
    wait_port("127.0.0.53:53");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    policy_host(&rt, leaf.pem(), leaf_key.serialize_pem());

    let log = |name: &str| std::fs::File::create(root.join(name)).expect("log");
    let start_ours = |listen: &str, name: &str, extra: &[&str]| {
        Kill(
            Command::new(env!("CARGO_BIN_EXE_mailtls"))
                .args(["mta-sts-server", "--mta-sts-listen", listen])
                .args(extra)
                .arg("--mta-sts-ca-file")
                .arg(&ca_file)
                .args(["--mta-sts-allow-address", "127.0.0.0/8"])
                .stdout(Stdio::null())
                .stderr(log(name))
                .spawn()
                .expect("mailtls"),
        )
    };
    let ours = start_ours(OURS, "ours.log", &[]);
    let ours_unix = start_ours(&format!("unix:{OURS_UNIX}"), "ours-unix.log", &[]);
    // DANE honoured first, as the relay does with DNSSEC on: the zones are unsigned, so each
    // lookup also takes the cached DANE verdict.
    let ours_dane = start_ours(
        &format!("unix:{OURS_DANE_UNIX}"),
        "ours-dane.log",
        &["--dane"],
    );
    let theirs = python_daemon(
        root,
        &ca_file,
        "host: 127.0.0.1\nport: 8462\nreuse_port: true\n",
    )
    .map(Kill);
    let theirs_unix = python_daemon(root, &ca_file, &format!("path: {THEIRS_UNIX}\n")).map(Kill);
    let mut servers: Vec<(&str, &str, u32)> = vec![
        ("mailtls, TCP", OURS, ours.0.id()),
        ("mailtls, Unix socket", OURS_UNIX, ours_unix.0.id()),
        (
            "mailtls --dane, Unix socket",
            OURS_DANE_UNIX,
            ours_dane.0.id(),
        ),
    ];
    if let (Some(t), Some(u)) = (&theirs, &theirs_unix) {
        servers.push(("postfix-mta-sts-resolver 1.5.1, TCP", THEIRS, t.0.id()));
        servers.push((
            "postfix-mta-sts-resolver 1.5.1, Unix socket",
            THEIRS_UNIX,
            u.0.id(),
        ));
    }
    let floor = Kill(
        Command::new(std::env::current_exe().expect("own path"))
            .env(FLOOR_SOCKET, FLOOR_UNIX)
            .env_remove(INSIDE)
            .spawn()
            .expect("the floor server"),
    );
    servers.push((FLOOR, FLOOR_UNIX, floor.0.id()));
    for (_, addr, _) in &servers {
        wait_port(addr);
    }
    // Cache every policy in each.
    for (name, addr, _) in &servers {
        let mut conn = Conn::open(addr);
        for i in 0..DOMAINS {
            let reply = conn.ask(&domain(i));
            assert!(
                reply.contains("OK secure match="),
                "{name}: {reply:?}\n{}",
                std::fs::read_to_string(root.join("theirs.log")).unwrap_or_default()
            );
        }
    }
    println!(
        "machine\t{} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut ratios: Vec<[f64; 3]> = Vec::new();
    for round in 0..ROUNDS {
        let order: Vec<&(&str, &str, u32)> = if round % 2 == 0 {
            servers.iter().collect()
        } else {
            servers.iter().rev().collect()
        };
        let mut rates = std::collections::HashMap::new();
        for (name, addr, pid) in order {
            let cpu_before = cpu_ticks(*pid);
            let (rate, p50, p99, n) = measure(addr);
            let cpu = (cpu_ticks(*pid) - cpu_before) as f64 / 100.0;
            rates.insert(*name, rate);
            println!(
                "round {round}\t{name}\t{rate:.0} lookups/s\tp50 {:.0} µs\tp99 {:.0} µs\tserver CPU {:.1} µs per lookup\t({CONNECTIONS} connections, cached)",
                p50.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6,
                cpu * 1e6 / n as f64,
            );
        }
        // Ours over theirs, same transport, same round (the goal is 10×).
        let ratio = |transport: &str| {
            let theirs =
                rates.get(format!("postfix-mta-sts-resolver 1.5.1, {transport}").as_str())?;
            Some(rates.get(format!("mailtls, {transport}").as_str())? / theirs)
        };
        let floor = rates
            .get(FLOOR)
            .zip(rates.get("postfix-mta-sts-resolver 1.5.1, Unix socket"));
        if let (Some(unix), Some(tcp), Some((floor, theirs))) =
            (ratio("Unix socket"), ratio("TCP"), floor)
        {
            let floor = floor / theirs;
            println!(
                "round {round}\tours/theirs\tUnix socket {unix:.1}×\tTCP {tcp:.1}×\t(floor/theirs, Unix socket: {floor:.1}×)"
            );
            ratios.push([unix, tcp, floor]);
        }
    }
    if !ratios.is_empty() {
        let median = |i: usize| {
            let mut v: Vec<f64> = ratios.iter().map(|r| r[i]).collect();
            v.sort_by(f64::total_cmp);
            let n = v.len();
            (v[(n - 1) / 2] + v[n / 2]) / 2.0
        };
        println!(
            "median\tours/theirs\tUnix socket {:.1}×\tTCP {:.1}×\t(floor/theirs, Unix socket: {:.1}×; {} rounds)",
            median(0),
            median(1),
            median(2),
            ratios.len()
        );
    }
}

/// A server that does no lookup at all, run as its own process until killed: a thread per
/// connection (as ours), one fixed reply per request. Requests hold no comma but the one
/// that ends them.
fn floor_server(path: &Path) {
    const REPLY: &[u8] =
        b"69:OK secure match=mx.floor.test servername=hostname protocols=>=TLSv1.2,";
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind the floor server");
    for mut conn in listener.incoming().flatten() {
        let thread = std::thread::Builder::new().name("floor-conn".into());
        let _ = thread.spawn(move || {
            let mut chunk = [0u8; 1024];
            while let Ok(n @ 1..) = conn.read(&mut chunk) {
                for _ in chunk[..n].iter().filter(|&&b| b == b',') {
                    if conn.write_all(REPLY).is_err() {
                        return;
                    }
                }
            }
        });
    }
}

/// The peer's daemon in its venv (made outside the namespace, where PyPI is reachable).
fn daemon_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    Some(home.join(".cache/mailtls/sts-bench-venv/bin/mta-sts-daemon"))
}

/// Make the venv with postfix-mta-sts-resolver once.
fn install_peer() {
    let Some(daemon) = daemon_path() else { return };
    if daemon.exists() {
        return;
    }
    let venv = daemon.parent().and_then(Path::parent).expect("venv");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "postfix-mta-sts-resolver==1.5.1"])
            .status()
            .is_ok_and(|s| s.success());
    if !made {
        let _ = std::fs::remove_dir_all(venv);
    }
}

/// The peer's daemon started on THEIRS, if it is installed.
fn python_daemon(root: &Path, ca_file: &Path, listen: &str) -> Option<Child> {
    let daemon = daemon_path().filter(|d| d.exists());
    let Some(daemon) = daemon else {
        println!("postfix-mta-sts-resolver could not be installed: measuring mailtls alone");
        return None;
    };
    let config = root.join(format!("mta-sts-daemon-{}.yml", listen.len()));
    std::fs::write(
        &config,
        format!("{listen}cache:\n  type: internal\n  options:\n    cache_size: 10000\ndefault_zone:\n  strict_testing: false\n  timeout: 4\n"),
    )
    .ok()?;
    Command::new(daemon)
        .arg("-c")
        .arg(&config)
        .args(["-v", "warn"])
        // Its HTTPS client trusts the test CA through OpenSSL's variable.
        .env("SSL_CERT_FILE", ca_file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("theirs.log")).ok()?)
        .spawn()
        .ok()
}

fn wait_port(addr: &str) {
    for _ in 0..100 {
        let up = if addr.starts_with('/') {
            UnixStream::connect(addr).is_ok()
        } else {
            TcpStream::connect(addr).is_ok()
        };
        if up {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on {addr}");
}

/// The HTTPS policy host on 127.0.0.41:443: the same `enforce` policy for every domain.
fn policy_host(rt: &tokio::runtime::Runtime, cert: String, key: String) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("tls"),
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.41:443"))
        .expect("bind 443");
    rt.spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let config = config.clone();
            tokio::spawn(async move {
                let Ok(mut s) = tokio_rustls::TlsAcceptor::from(config).accept(conn).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = "version: STSv1\nmode: enforce\nmx: mx.bench.test\nmx: *.mx.bench.test\nmax_age: 86400\n";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A socketmap client connection (TCP, or a Unix socket for a path).
struct Conn {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let stream: Box<dyn Stream> = if addr.starts_with('/') {
            let s = UnixStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            Box::new(s)
        } else {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            Box::new(s)
        };
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// One request, its reply's text. The request goes in one write, as Postfix's buffered
    /// stream sends it (`write!` on the bare socket would make a system call per piece).
    fn ask(&mut self, key: &str) -> String {
        let text = format!("postfix {key}");
        let request = format!("{}:{text},", text.len());
        self.stream.write_all(request.as_bytes()).expect("send");
        loop {
            if let Some(colon) = self.buf.iter().position(|&b| b == b':') {
                let len: usize = std::str::from_utf8(&self.buf[..colon])
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .expect("length");
                if self.buf.len() > colon + len {
                    let reply =
                        String::from_utf8_lossy(&self.buf[colon + 1..colon + 1 + len]).to_string();
                    self.buf.drain(..colon + len + 2);
                    return reply;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("reply");
            assert!(n > 0, "closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// CPU time a process used so far, in clock ticks (utime + stime, 1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name in parentheses; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Lookups per second, latency over [`CONNECTIONS`] connections for [`SECONDS`], and how
/// many lookups.
fn measure(addr: &str) -> (f64, Duration, Duration, usize) {
    let until = Instant::now() + Duration::from_secs(SECONDS);
    let started = Instant::now();
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr);
                let mut latencies = Vec::new();
                let mut i = c;
                while Instant::now() < until {
                    let t = Instant::now();
                    let reply = conn.ask(&domain(i % DOMAINS));
                    latencies.push(t.elapsed());
                    assert!(reply.starts_with("OK "), "{reply:?}");
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client"))
        .collect();
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (all.len() as f64 / secs, pct(0.5), pct(0.99), all.len())
}
