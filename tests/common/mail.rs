//! Mail test kit for the real-Postfix tests: a private network namespace, a local DNS
//! server (dnsmasq), test certificates, and in-process SMTP receivers (tokio + rustls) that
//! record every message and whether it came over TLS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn sh(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (scripts/install-test-deps.sh)"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

pub fn must(cmd: &mut Command) -> String {
    let (ok, out) = sh(cmd);
    assert!(ok, "{cmd:?} failed:\n{out}");
    out
}

/// Poll `cond` until it returns `Some` or `secs` pass.
pub fn wait_for<T>(secs: u64, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run `test` (this test binary's own test of that name) again inside a fresh network
/// namespace with `addresses` on loopback and `dns` as its resolver, so every socket and
/// process it starts lives there; `inside_env` tells the run inside that it is there. Skips
/// (an error under `CI=true`) without root. The namespace goes when the run ends.
pub fn run_in_netns(test: &str, inside_env: &str, addresses: &[&str], dns: &str) {
    if sh(Command::new("id").arg("-u")).1.trim() != "0" {
        crate::common::skip::skip(&format!("{test} needs root (network namespaces, port 25)"));
        return;
    }
    let ns = Netns::create(
        &format!("mailtls-{test}-{}", std::process::id()),
        addresses,
        dns,
    );
    let started = Instant::now();
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(std::env::current_exe().expect("test binary path"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(inside_env, &ns.name)
        .status()
        .expect("run the test inside the namespace");
    eprintln!("{test} inside the namespace took {:?}", started.elapsed());
    assert!(status.success(), "the run inside {} failed", ns.name);
}

/// A network namespace with loopback up and the test addresses; deleted on drop, after
/// ending whatever this test left running in it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `addresses` are added to loopback; `dns` becomes the namespace's resolver.
    pub fn create(name: &str, addresses: &[&str], dns: &str) -> Netns {
        must(Command::new("ip").args(["netns", "add", name]));
        let ns = Netns { name: name.into() };
        // `ip netns exec` bind-mounts this over /etc/resolv.conf: Postfix asks our DNS.
        let etc = ns.etc();
        std::fs::create_dir_all(&etc).expect("create /etc/netns dir");
        // trust-ad: glibc passes the AD bit on to Postfix (the DANE tests; harmless elsewhere).
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {dns}\noptions trust-ad\n"),
        )
        .expect("write resolv.conf");
        must(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]));
        for addr in addresses {
            must(Command::new("ip").args([
                "-n",
                name,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "lo",
            ]));
        }
        ns
    }

    pub fn etc(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Only processes inside our own private namespace: the ones this test started.
        let (_, pids) = sh(Command::new("ip").args(["netns", "pids", &self.name]));
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

// ---------------------------------------------------------------------------------------
// Certificates.

pub struct Pem {
    pub cert: String,
    pub key: String,
}

pub struct Certs {
    pub ca: String,
    ca_issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Certs {
    pub fn new() -> Certs {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mailtls e2e test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = params.self_signed(&key).expect("CA cert").pem();
        Certs {
            ca,
            ca_issuer: rcgen::Issuer::new(params, key),
        }
    }

    pub fn leaf_params(name: &str) -> rcgen::CertificateParams {
        let mut params =
            rcgen::CertificateParams::new(vec![name.to_string()]).expect("leaf params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params
    }

    pub fn ca_signed(&self, name: &str) -> Pem {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = Self::leaf_params(name)
            .signed_by(&key, &self.ca_issuer)
            .expect("sign leaf");
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub fn self_signed(name: &str) -> Pem {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = Self::leaf_params(name)
            .self_signed(&key)
            .expect("self-sign");
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// The certificate the relay offers after STARTTLS (DER), fetched with a client that
/// accepts any certificate and keeps it. `hostname` is the name sent in SNI.
pub fn offered_certificate(relay: &str, hostname: &str) -> Vec<u8> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::io::{BufRead, BufReader, Write};
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Keep(Mutex<Vec<u8>>);
    impl ServerCertVerifier for Keep {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            if let Ok(mut kept) = self.0.lock() {
                *kept = end_entity.to_vec();
            }
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    let keep = Arc::new(Keep::default());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .dangerous()
    .with_custom_certificate_verifier(keep.clone())
    .with_no_client_auth();
    let mut tcp = std::net::TcpStream::connect((relay, 25)).expect("connect to the relay");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(tcp.try_clone().expect("clone"));
    let mut reply = || {
        let mut last = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read reply");
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return last + &line;
            }
            last.push_str(&line);
        }
    };
    let greeting = reply();
    assert!(greeting.starts_with("220 "), "{greeting}");
    write!(tcp, "EHLO client.test\r\n").expect("ehlo");
    let ehlo = reply();
    assert!(ehlo.contains("STARTTLS"), "no STARTTLS offered:\n{ehlo}");
    write!(tcp, "STARTTLS\r\n").expect("starttls");
    assert!(reply().starts_with("220"), "STARTTLS refused");
    let name = ServerName::try_from(hostname.to_string()).expect("name");
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp)
            .expect("TLS handshake with the relay");
    }
    keep.0.lock().map(|k| k.clone()).unwrap_or_default()
}

pub fn der(pem: &Pem) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.cert.as_bytes())
        .expect("cert")
        .to_vec()
}

// ---------------------------------------------------------------------------------------
// SMTP receivers: record every message and whether it came over TLS.

#[derive(Clone, Debug)]
pub struct Msg {
    pub sink: &'static str,
    pub from: String,
    pub rcpts: Vec<String>,
    pub tls: bool,
    pub data: String,
}

pub type Store = Arc<Mutex<Vec<Msg>>>;

pub fn tls_config(pem: &Pem) -> Arc<rustls::ServerConfig> {
    tls_config_with(pem, rustls::DEFAULT_VERSIONS)
}

pub fn tls_config_with(
    pem: &Pem,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
        .collect::<Result<_, _>>()
        .expect("parse cert");
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).expect("parse key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    Arc::new(config)
}

pub enum End<S> {
    Closed,
    StartTls(S),
}

pub async fn smtp_session<S>(
    io: S,
    sink: &'static str,
    store: &Store,
    tls: bool,
    offer_tls: bool,
) -> std::io::Result<End<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut io = BufReader::new(io);
    if !tls {
        io.get_mut()
            .write_all(format!("220 {sink}.sink.test ESMTP\r\n").as_bytes())
            .await?;
    }
    let (mut from, mut rcpts) = (String::new(), Vec::new());
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(End::Closed);
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let arg = |l: &str| {
            l.split_once(':')
                .map(|(_, a)| a.trim().trim_start_matches('<'))
                .and_then(|a| a.split('>').next())
                .unwrap_or("")
                .to_ascii_lowercase()
        };
        let reply = match verb.as_str() {
            "EHLO" => format!(
                "250-{sink}.sink.test\r\n{}250 8BITMIME\r\n",
                if offer_tls { "250-STARTTLS\r\n" } else { "" }
            ),
            "HELO" => format!("250 {sink}.sink.test\r\n"),
            "STAR" if offer_tls => {
                io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
                return Ok(End::StartTls(io.into_inner()));
            }
            "MAIL" => {
                from = arg(&line);
                rcpts.clear();
                "250 2.1.0 ok\r\n".into()
            }
            "RCPT" => {
                rcpts.push(arg(&line));
                "250 2.1.5 ok\r\n".into()
            }
            "DATA" => {
                io.get_mut().write_all(b"354 go ahead\r\n").await?;
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    if io.read_line(&mut l).await? == 0 {
                        return Ok(End::Closed);
                    }
                    if l == ".\r\n" || l == ".\n" {
                        break;
                    }
                    data.push_str(&l);
                }
                if let Ok(mut s) = store.lock() {
                    s.push(Msg {
                        sink,
                        from: std::mem::take(&mut from),
                        rcpts: std::mem::take(&mut rcpts),
                        tls,
                        data,
                    });
                }
                "250 2.0.0 queued\r\n".into()
            }
            "RSET" => {
                from.clear();
                rcpts.clear();
                "250 2.0.0 ok\r\n".into()
            }
            "NOOP" => "250 2.0.0 ok\r\n".into(),
            "QUIT" => {
                io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(End::Closed);
            }
            _ => "502 5.5.2 not implemented\r\n".into(),
        };
        io.get_mut().write_all(reply.as_bytes()).await?;
    }
}

pub fn start_sink(
    rt: &tokio::runtime::Runtime,
    sink: (&'static str, &str),
    tls: Option<Arc<rustls::ServerConfig>>,
    store: &Store,
) {
    start_sink_on(rt, sink, 25, tls, store);
}

/// [`start_sink`] on another port than 25.
pub fn start_sink_on(
    rt: &tokio::runtime::Runtime,
    (sink, addr): (&'static str, &str),
    port: u16,
    tls: Option<Arc<rustls::ServerConfig>>,
    store: &Store,
) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind((addr, port)))
        .unwrap_or_else(|e| panic!("bind {addr}:{port}: {e}"));
    let store = store.clone();
    rt.spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let (store, tls) = (store.clone(), tls.clone());
            tokio::spawn(async move {
                let offer = tls.is_some();
                if let Ok(End::StartTls(conn)) =
                    smtp_session(conn, sink, &store, false, offer).await
                    && let Some(config) = tls
                    && let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(conn).await
                {
                    let _ = smtp_session(stream, sink, &store, true, false).await;
                }
            });
        }
    });
}

/// A child process ended on drop (dnsmasq).
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// dnsmasq answering for `.test` on `dns`:53 with these A and MX records.
pub fn dnsmasq(dns: &str, records: &[(&str, &str)], mx: &[(&str, &str)]) -> Kill {
    dnsmasq_with(dns, records, mx, &[])
}

/// [`dnsmasq`] with TXT records too (one string each).
pub fn dnsmasq_with(
    dns: &str,
    records: &[(&str, &str)],
    mx: &[(&str, &str)],
    txt: &[(&str, &str)],
) -> Kill {
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-daemon",
        "--pid-file=",
        "--bind-interfaces",
        "--port=53",
        "--local=/test/",
        "--user=root",
    ])
    .arg(format!("--listen-address={dns}"))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (name, ip) in records {
        cmd.arg(format!("--host-record={name},{ip}"));
    }
    for (domain, host) in mx {
        cmd.arg(format!("--mx-host={domain},{host},10"));
    }
    if !txt.is_empty() {
        // In a configuration file, where quotes keep a comma in one string (on the command
        // line they would be taken literally).
        let conf =
            std::env::temp_dir().join(format!("mailtls-dnsmasq-{}-{dns}.conf", std::process::id()));
        let lines: String = txt
            .iter()
            .map(|(name, text)| format!("txt-record={name},\"{text}\"\n"))
            .collect();
        std::fs::write(&conf, lines).expect("dnsmasq configuration");
        cmd.arg(format!("--conf-file={}", conf.display()));
    } else {
        cmd.arg("--conf-file=/dev/null");
    }
    let child = Kill(
        cmd.spawn()
            .expect("start dnsmasq (scripts/install-test-deps.sh)"),
    );
    wait_for(10, "dnsmasq", || {
        std::net::TcpStream::connect((dns, 53)).ok()
    });
    child
}

/// Requests an HTTPS receiver got: (request head, body).
pub type Posts = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An HTTPS server on `addr`:`port` that records every request and answers 200 (TLS
/// report endpoints).
pub fn start_https_sink(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    port: u16,
    tls: Arc<rustls::ServerConfig>,
) -> Posts {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind((addr, port)))
        .unwrap_or_else(|e| panic!("bind {addr}:{port}: {e}"));
    let posts: Posts = Arc::default();
    let store = posts.clone();
    rt.spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let (store, tls) = (store.clone(), tls.clone());
            tokio::spawn(async move {
                let Ok(mut s) = tokio_rustls::TlsAcceptor::from(tls).accept(conn).await else {
                    return;
                };
                let mut raw = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    raw.extend_from_slice(&chunk[..n]);
                    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&raw[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if raw.len() >= end + 4 + len {
                        break (head, raw[end + 4..end + 4 + len].to_vec());
                    }
                };
                store.lock().expect("posts").push((head, body));
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    posts
}

/// `GET path` on an agent's status port at `addr`: (status code, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Send one message with swaks to `server`:25 from the local address `client`;
/// (accepted, transcript).
pub fn send(
    server: &str,
    client: &str,
    from: &str,
    to: &str,
    subject: &str,
    tls: bool,
) -> (bool, String) {
    let mut cmd = Command::new("swaks");
    cmd.args([
        "--server",
        server,
        "--port",
        "25",
        "--local-interface",
        client,
    ])
    .args(["--helo", "client.test", "--from", from, "--to", to])
    .args(["--header", &format!("Subject: {subject}")])
    .args(["--body", "mailtls relay test", "--timeout", "30"]);
    if tls {
        cmd.arg("--tls");
    }
    sh(&mut cmd)
}

/// Wait until a message with `subject` arrived; assert it reached `sink`; whether it came
/// over TLS.
pub fn arrived(store: &Store, sink: &str, subject: &str) -> bool {
    let needle = format!("Subject: {subject}");
    let (at, tls) = wait_for(60, &format!("{subject} at {sink}"), || {
        store.lock().ok().and_then(|s| {
            s.iter()
                .find(|m| m.data.contains(&needle))
                .map(|m| (m.sink, m.tls))
        })
    });
    assert_eq!(at, sink, "{subject} arrived at the wrong receiver");
    tls
}

/// What an MTA-STS policy host answers.
#[derive(Clone)]
pub enum PolicyAnswer {
    Policy(String),
    /// 8 MiB of policy-looking lines.
    Huge,
    /// Accepts the request and never answers.
    Silent,
}

/// An HTTPS MTA-STS policy host on `addr`:443 answering `/.well-known/mta-sts.txt` with
/// whatever `answer` holds at the time (any other path: 404).
pub fn policy_host(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    tls: Arc<rustls::ServerConfig>,
    answer: Arc<Mutex<PolicyAnswer>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind((addr, 443)))
        .unwrap_or_else(|e| panic!("bind {addr}:443: {e}"));
    rt.spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let (tls, answer) = (tls.clone(), answer.clone());
            tokio::spawn(async move {
                let Ok(mut s) = tokio_rustls::TlsAcceptor::from(tls).accept(conn).await else {
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
                let reply = if head.starts_with(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\n") {
                    let answer = answer.lock().ok().map(|a| a.clone());
                    let body = match answer {
                        Some(PolicyAnswer::Policy(p)) => p,
                        Some(PolicyAnswer::Huge) => "mx: mx.huge.test\n".repeat(8 << 20 >> 4),
                        Some(PolicyAnswer::Silent) | None => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                    };
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
}
