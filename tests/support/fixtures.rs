//! Fixture servers. All of them run on the test's tokio runtime and stop with it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, MX, SOA, TLSA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_rustls::TlsAcceptor;

pub fn init() {
    mailtls::probe::install_crypto_provider();
}

/// Resident set size of this process in KiB (0 when unknown).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `mailtls probe` arguments pointing at the fixtures.
pub fn probe_args(
    dns: SocketAddr,
    port: u16,
    ca_file: &std::path::Path,
    timeout: &str,
) -> Vec<String> {
    vec![
        "probe".into(),
        "--resolver".into(),
        dns.to_string(),
        "--port".into(),
        port.to_string(),
        "--ca-file".into(),
        ca_file.display().to_string(),
        "--timeout".into(),
        timeout.into(),
    ]
}

// ---------------------------------------------------------------- loopback addresses

static NEXT_ADDR: AtomicU32 = AtomicU32::new(0);

/// A fresh loopback address for this test process (127.x.y.z, never outside 127/8).
pub fn loopback_ip() -> Ipv4Addr {
    let n = NEXT_ADDR.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    Ipv4Addr::new(
        127,
        20 + (pid % 200) as u8,
        (n / 250 % 250) as u8,
        (n % 250 + 2) as u8,
    )
}

/// `n` listeners on fresh loopback addresses, all on the same port (domains share one
/// SMTP port per probe run, as they share port 25 in real life).
pub async fn bind_group(n: usize) -> (Vec<(Ipv4Addr, TcpListener)>, u16) {
    'retry: for _ in 0..20 {
        let first_ip = loopback_ip();
        let Ok(first) = TcpListener::bind((first_ip, 0)).await else {
            continue;
        };
        let port = first.local_addr().expect("local addr").port();
        let mut out = vec![(first_ip, first)];
        for _ in 1..n {
            let ip = loopback_ip();
            match TcpListener::bind((ip, port)).await {
                Ok(l) => out.push((ip, l)),
                Err(_) => continue 'retry,
            }
        }
        return (out, port);
    }
    panic!("could not bind a group of loopback listeners");
}

// ---------------------------------------------------------------- certificates

/// A certificate chain and its key.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The leaf certificate and key as PEM (for openssl).
    pub cert_pem: String,
    pub key_pem: String,
}

impl Clone for Leaf {
    fn clone(&self) -> Self {
        Leaf {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

/// A test certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
    pub pem: String,
}

pub fn days(n: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::days(n)
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = days(-30);
        params.not_after = days(3650);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names`, valid from `from` to `until` (days relative to now).
    pub fn leaf_between(&self, names: &[&str], from: i64, until: i64) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = days(from);
        params.not_after = days(until);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        leaf_of(&cert, &key)
    }

    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_between(names, -1, 365)
    }

    /// Write the CA certificate as PEM (for `--ca-file`).
    pub fn write_pem(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, &self.pem).expect("write CA PEM");
        path
    }
}

fn leaf_of(cert: &rcgen::Certificate, key: &KeyPair) -> Leaf {
    Leaf {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

pub fn self_signed(names: &[&str]) -> Leaf {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("self"));
    params.not_before = days(-1);
    params.not_after = days(365);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-sign");
    leaf_of(&cert, &key)
}

/// A leaf followed by `extra` unrelated certificates (a huge, useless chain).
pub fn long_chain(names: &[&str], extra: usize) -> Leaf {
    let mut leaf = self_signed(names);
    for i in 0..extra {
        let filler = self_signed(&[&format!("filler{i}.invalid")]);
        leaf.chain.extend(filler.chain);
    }
    leaf
}

/// A TLS server configuration; `tls12_only` limits it to TLS 1.2.
pub fn server_config(leaf: &Leaf, tls12_only: bool) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
        .expect("server cert");
    Arc::new(config)
}

// ---------------------------------------------------------------- DNS

/// A mutable zone served by [`spawn_dns`].
#[derive(Clone, Default)]
pub struct Zone(Arc<Mutex<Records>>);

type Records = HashMap<(String, RecordType), Vec<RData>>;

fn key(name: &str) -> String {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    format!("{n}.")
}

fn name(s: &str) -> Name {
    Name::from_ascii(key(s)).expect("fixture name")
}

impl Zone {
    fn add(&self, owner: &str, rtype: RecordType, data: RData) {
        self.0
            .lock()
            .expect("zone lock")
            .entry((key(owner), rtype))
            .or_default()
            .push(data);
    }

    pub fn mx(&self, domain: &str, preference: u16, host: &str) {
        self.add(
            domain,
            RecordType::MX,
            RData::MX(MX::new(preference, name(host))),
        );
    }

    pub fn null_mx(&self, domain: &str) {
        self.add(domain, RecordType::MX, RData::MX(MX::new(0, Name::root())));
    }

    pub fn a(&self, host: &str, ip: Ipv4Addr) {
        self.add(host, RecordType::A, RData::A(A(ip)));
    }

    pub fn txt(&self, owner: &str, text: &str) {
        self.add(
            owner,
            RecordType::TXT,
            RData::TXT(TXT::new(vec![text.to_string()])),
        );
    }

    pub fn tlsa(&self, owner: &str, usage: u8, selector: u8, matching: u8, data: Vec<u8>) {
        self.add(
            owner,
            RecordType::TLSA,
            RData::TLSA(TLSA::new(
                usage.into(),
                selector.into(),
                matching.into(),
                data,
            )),
        );
    }

    fn answer(&self, qname: &str, qtype: RecordType) -> (ResponseCode, Vec<RData>) {
        let zone = self.0.lock().expect("zone lock");
        let k = key(qname);
        if let Some(data) = zone.get(&(k.clone(), qtype)) {
            return (ResponseCode::NoError, data.clone());
        }
        // The name exists with other types (or has children): NODATA, else NXDOMAIN.
        let exists = zone
            .keys()
            .any(|(n, _)| *n == k || n.ends_with(&format!(".{k}")));
        if exists {
            (ResponseCode::NoError, Vec::new())
        } else {
            (ResponseCode::NXDomain, Vec::new())
        }
    }
}

/// Serve `zone` over UDP on 127.0.0.1 (random port).
pub async fn spawn_dns(zone: Zone) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS");
    let addr = socket.local_addr().expect("DNS addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            resp.metadata.authoritative = true;
            resp.metadata.recursion_desired = query.metadata.recursion_desired;
            resp.metadata.recursion_available = true;
            if let Some(q) = query.queries.first() {
                let (code, data) = zone.answer(&q.name().to_ascii(), q.query_type());
                resp.metadata.response_code = code;
                if data.is_empty() {
                    // An SOA in the authority section makes the answer cacheable
                    // (RFC 2308), as a real server's would be.
                    let soa = SOA::new(
                        name("ns.test"),
                        name("hostmaster.test"),
                        1,
                        3600,
                        600,
                        86400,
                        60,
                    );
                    resp.add_authority(Record::from_rdata(Name::root(), 60, RData::SOA(soa)));
                }
                for d in data {
                    resp.add_answer(Record::from_rdata(q.name().clone(), 60, d));
                }
                resp.add_query(q.clone());
            }
            if let Ok(bytes) = resp.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}

// ---------------------------------------------------------------- SMTP

/// How a fixture SMTP server behaves.
#[derive(Clone)]
pub enum Smtp {
    /// A normal server with STARTTLS.
    Good(Arc<ServerConfig>),
    /// EHLO without STARTTLS.
    NoStarttls,
    /// STARTTLS advertised but answered with 454.
    StarttlsRefused,
    /// STARTTLS accepted, then garbage instead of a ServerHello.
    BrokenHandshake,
    /// Data right behind the STARTTLS 220, before any handshake (CVE-2011-0411 style).
    DataAfterStarttls,
    /// STARTTLS accepted, then a TLS 1.0 ServerHello (what a TLS 1.0-only server sends).
    LegacyHello,
    /// Like a TLS 1.1-only server: a protocol_version alert for a hello that lists TLS 1.3
    /// (supported_versions), a TLS 1.1 ServerHello for an old-style hello.
    Tls11Only,
    /// STARTTLS accepted, then the connection is piped to a TLS server (e.g. openssl -tls1).
    Proxy(SocketAddr),
    /// Greets with 554 (no service).
    RejectGreeting,
    /// Answers EHLO with 502 (an SMTP-only server).
    RejectEhlo,
    /// Accepts and never says anything.
    Silent,
    /// A greeting of endless `220-` lines.
    EndlessMultiline,
    /// 10 MB without a newline.
    HugeLine,
    /// The greeting one byte per second.
    Drip,
    /// STARTTLS accepted, reads the ClientHello, closes.
    CloseMidHandshake,
}

/// Accept connections on `listener` and serve each with `behaviour`.
pub fn spawn_smtp(listener: TcpListener, behaviour: Smtp) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let b = behaviour.clone();
            // Replies are single small writes; Nagle would hold them behind delayed ACKs.
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = serve_smtp(stream, b).await;
            });
        }
    });
}

const HELLO_TLS10: [u8; 47] = {
    let mut m = [0u8; 47];
    // record header: handshake, TLS 1.0, length 42
    m[0] = 0x16;
    m[1] = 0x03;
    m[2] = 0x01;
    m[4] = 42;
    // ServerHello, length 38, version 3.1, 32 random bytes, no session id,
    // TLS_RSA_WITH_AES_128_CBC_SHA, null compression
    m[5] = 0x02;
    m[8] = 38;
    m[9] = 0x03;
    m[10] = 0x01;
    m[44] = 0x2f;
    m
};

async fn serve_smtp(mut stream: TcpStream, b: Smtp) -> std::io::Result<()> {
    match b {
        Smtp::Silent => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Ok(());
        }
        Smtp::EndlessMultiline => loop {
            stream.write_all(b"220-still greeting you\r\n").await?;
        },
        Smtp::HugeLine => {
            let chunk = vec![b'x'; 64 * 1024];
            stream.write_all(b"220 ").await?;
            for _ in 0..160 {
                stream.write_all(&chunk).await?;
            }
            return Ok(());
        }
        Smtp::Drip => {
            for byte in b"220 slow.example ESMTP\r\n" {
                stream.write_all(&[*byte]).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            return Ok(());
        }
        _ => {}
    }
    let starttls = !matches!(b, Smtp::NoStarttls);
    let mut reader = BufReader::new(stream);
    if matches!(b, Smtp::RejectGreeting) {
        reader
            .get_mut()
            .write_all(b"554 5.3.2 no service here\r\n")
            .await?;
    } else {
        reader.get_mut().write_all(b"220 fixture ESMTP\r\n").await?;
    }
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim().to_ascii_uppercase();
        let w = reader.get_mut();
        if cmd.starts_with("EHLO") && matches!(b, Smtp::RejectEhlo) {
            w.write_all(b"502 5.5.2 EHLO not implemented\r\n").await?;
        } else if cmd.starts_with("EHLO") {
            let ext = if starttls {
                "250-SIZE 10240000\r\n250 STARTTLS\r\n"
            } else {
                "250 SIZE 10240000\r\n"
            };
            w.write_all(format!("250-fixture hello\r\n{ext}").as_bytes())
                .await?;
        } else if cmd == "STARTTLS" && starttls {
            if matches!(b, Smtp::StarttlsRefused) {
                w.write_all(b"454 4.7.0 TLS not available due to local problem\r\n")
                    .await?;
                continue;
            }
            if matches!(b, Smtp::DataAfterStarttls) {
                w.write_all(b"220 2.0.0 Ready to start TLS\r\n250 injected\r\n")
                    .await?;
            } else {
                w.write_all(b"220 2.0.0 Ready to start TLS\r\n").await?;
            }
            break;
        } else if cmd == "QUIT" {
            w.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else {
            w.write_all(b"502 5.5.2 Error: command not recognized\r\n")
                .await?;
        }
    }
    let mut stream = reader.into_inner();
    match b {
        Smtp::Good(config) => {
            let tls = TlsAcceptor::from(config).accept(stream).await?;
            let mut reader = BufReader::new(tls);
            loop {
                line.clear();
                if reader.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                let cmd = line.trim().to_ascii_uppercase();
                if cmd.starts_with("EHLO") {
                    reader
                        .get_mut()
                        .write_all(b"250-fixture hello\r\n250 SIZE 10240000\r\n")
                        .await?;
                } else if cmd == "QUIT" {
                    reader.get_mut().write_all(b"221 2.0.0 Bye\r\n").await?;
                    reader.get_mut().shutdown().await?;
                    return Ok(());
                } else {
                    reader.get_mut().write_all(b"502 5.5.2 no\r\n").await?;
                }
            }
        }
        Smtp::BrokenHandshake => {
            read_record(&mut stream).await?;
            stream.write_all(b"this is not TLS at all\r\n").await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Smtp::LegacyHello => {
            read_record(&mut stream).await?;
            stream.write_all(&HELLO_TLS10).await?;
            // Wait for the client to give up.
            let mut sink = [0u8; 512];
            while stream.read(&mut sink).await? > 0 {}
        }
        Smtp::Tls11Only => {
            let hello = read_record(&mut stream).await?;
            // supported_versions (0x002b) appears as bytes 00 2b in the extensions.
            let modern = hello.windows(2).any(|w| w == [0x00, 0x2b]);
            if modern {
                stream
                    .write_all(&[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 70])
                    .await?;
            } else {
                let mut reply = HELLO_TLS10;
                reply[10] = 0x02;
                stream.write_all(&reply).await?;
            }
        }
        Smtp::CloseMidHandshake => {
            read_record(&mut stream).await?;
            // Half a TLS 1.2 ServerHello, then close.
            let mut half = HELLO_TLS10;
            half[10] = 0x03;
            stream.write_all(&half[..20]).await?;
        }
        Smtp::Proxy(to) => {
            let mut upstream = TcpStream::connect(to).await?;
            tokio::io::copy_bidirectional(&mut stream, &mut upstream).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Read one TLS record (the ClientHello).
async fn read_record(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await?;
    let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(body)
}

// ---------------------------------------------------------------- HTTPS (MTA-STS)

/// Serve `status` + `body` for every request, over TLS with `config`.
pub fn spawn_https(listener: TcpListener, config: Arc<ServerConfig>, status: u16, body: String) {
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16384 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
}

/// Start `openssl s_server` speaking only TLS 1.0 on a loopback port, if openssl exists.
/// Returns the child (killed on drop) and its address.
pub async fn openssl_tls10_server(
    leaf: &Leaf,
    dir: &std::path::Path,
) -> Option<(tokio::process::Child, SocketAddr)> {
    let cert = dir.join("legacy.crt");
    let keyf = dir.join("legacy.key");
    std::fs::write(&cert, &leaf.cert_pem).ok()?;
    std::fs::write(&keyf, &leaf.key_pem).ok()?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        l.local_addr().ok()?.port()
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let child = tokio::process::Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-tls1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ])
        .arg("-accept")
        .arg(addr.to_string())
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&keyf)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    for _ in 0..50 {
        if TcpStream::connect(addr).await.is_ok() {
            return Some((child, addr));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// `good.test` (MX `mx.good.test`, a certificate from `ca`) and `plain.test` (MX
/// `mx.plain.test`, no STARTTLS) on one loopback port, behind a loopback DNS server.
pub struct GoodAndPlain {
    pub ca: Ca,
    pub dns: SocketAddr,
    pub port: u16,
}

impl GoodAndPlain {
    pub async fn start(ca_name: &str) -> GoodAndPlain {
        init();
        let ca = Ca::new(ca_name);
        let zone = Zone::default();
        let (listeners, port) = bind_group(2).await;
        let mut listeners = listeners.into_iter();
        let (good_ip, good) = listeners.next().expect("listener");
        let (plain_ip, plain) = listeners.next().expect("listener");
        zone.mx("good.test", 10, "mx.good.test");
        zone.a("mx.good.test", good_ip);
        zone.mx("plain.test", 10, "mx.plain.test");
        zone.a("mx.plain.test", plain_ip);
        spawn_smtp(
            good,
            Smtp::Good(server_config(&ca.leaf(&["mx.good.test"]), false)),
        );
        spawn_smtp(plain, Smtp::NoStarttls);
        let dns = spawn_dns(zone).await;
        GoodAndPlain { ca, dns, port }
    }

    /// A prober for these servers, allowed to connect to loopback (which controller-run
    /// tests refuse by default).
    pub fn prober(&self, step: Duration) -> mailtls::probe::Prober {
        use mailtls::probe::{AddressPolicy, ProbeConfig, Prober, Timeouts};
        Prober::new(ProbeConfig {
            resolver: Some(self.dns),
            extra_roots: vec![self.ca.der.clone()],
            smtp_port: self.port,
            timeouts: Timeouts::from_step(step),
            addresses: AddressPolicy::public_only(
                vec!["127.0.0.0/8".parse().expect("cidr")],
                vec![],
            ),
            ..ProbeConfig::default()
        })
        .expect("prober")
    }
}
