//! TLS side of a probe: a rustls verifier that records instead of aborting, evaluation of
//! the recorded chain (trust, names, expiry, TLSA), and recognition of servers that only
//! speak TLS 1.0/1.1 (which rustls cannot negotiate).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Serialize;
use sha2::{Digest, Sha256, Sha512};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::TlsaRecord;

/// Install ring as the process-wide rustls crypto provider; a provider that is already
/// installed (by us or by kube) is kept. Call once at start-up; calling again is harmless.
pub fn install_crypto_provider() {
    // Err only means "already installed", which is exactly the state we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The provider probes use: the installed default, else ring.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Accepts any certificate so the handshake completes and the chain can be examined, but
/// still checks the handshake signatures: the server must hold the key it presented.
#[derive(Debug)]
struct RecordingVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Trust is judged after the handshake from the peer chain (see `evaluate_chain`).
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Client configuration for SMTP probes: TLS 1.2 and 1.3, recording verifier, no session
/// resumption (every probe sees a full handshake and the server's current chain).
pub(crate) fn probe_client_config(
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let algs = provider.signature_verification_algorithms;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordingVerifier { algs }))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Client configuration that validates normally (MTA-STS policy fetch over HTTPS).
pub(crate) fn validating_client_config(
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// A validating client configuration trusting the webpki roots and `extra` (policy and
/// report endpoints over HTTPS); an extra root that cannot be used is an error.
pub(crate) fn validating_config_with(
    extra: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, String> {
    let (roots, rejected) = root_store(extra);
    if rejected > 0 {
        return Err(format!("{rejected} extra CA certificates cannot be used"));
    }
    validating_client_config(provider(), Arc::new(roots)).map_err(|e| e.to_string())
}

/// webpki roots plus the extra roots (e.g. `--ca-file`). Returns the store and how many
/// extra roots were rejected as unparsable.
pub(crate) fn root_store(extra: &[CertificateDer<'static>]) -> (RootCertStore, usize) {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let (_, rejected) = roots.add_parsable_certificates(extra.iter().cloned());
    (roots, rejected)
}

/// One certificate of the peer chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// DNS names and IP addresses from the subjectAltName extension.
    pub sans: Vec<String>,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// Whole days until notAfter (negative when expired).
    pub days_left: i64,
    /// notAfter in Unix seconds (for metrics).
    #[serde(skip)]
    pub not_after_unix: i64,
}

impl CertInfo {
    /// Parse the fields reported for a certificate; `None` when it is not valid X.509.
    pub fn parse(der: &[u8], now_unix: i64) -> Option<(CertInfo, i64, i64)> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(n) => sans.push(n.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => {
                        if let Some(ip) = ip_from_bytes(ip) {
                            sans.push(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        let info = CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            sans,
            not_before: super::rfc3339(not_before),
            not_after: super::rfc3339(not_after),
            // Truncating: expired yesterday is -1, expiring later today is 0.
            days_left: (not_after - now_unix) / 86_400,
            not_after_unix: not_after,
        };
        Some((info, not_before, not_after))
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// What the recorded chain says, judged after the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainReport {
    /// Certificates the server sent.
    pub chain_length: usize,
    /// Details of the first certificates (capped; leaf first).
    pub chain: Vec<CertInfo>,
    /// The chain leads to a trusted root (webpki roots or extra roots) and is valid now.
    pub trusted: bool,
    /// Why it is not trusted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_error: Option<String>,
    /// The leaf is outside its validity period.
    pub expired: bool,
    /// The chain would be trusted if it had not expired.
    pub trusted_ignoring_expiry: bool,
    /// The leaf is valid for the host name connected to (the MX name).
    pub name_matches_host: bool,
    /// The leaf is valid for the mail domain (`secure`-style match), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_matches_domain: Option<bool>,
    /// Days until the leaf expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days_left: Option<i64>,
}

/// Judge a peer chain: trust against `roots` at `now`, names, expiry.
pub(crate) fn evaluate_chain(
    chain: &[CertificateDer<'_>],
    host: &str,
    domain: Option<&str>,
    roots: &RootCertStore,
    algs: &WebPkiSupportedAlgorithms,
    now_unix: i64,
    max_recorded: usize,
) -> ChainReport {
    let mut report = ChainReport {
        chain_length: chain.len(),
        chain: Vec::new(),
        trusted: false,
        trust_error: None,
        expired: false,
        trusted_ignoring_expiry: false,
        name_matches_host: false,
        name_matches_domain: domain.map(|_| false),
        days_left: None,
    };
    let mut leaf_validity = None;
    for (i, der) in chain.iter().take(max_recorded).enumerate() {
        if let Some((info, nb, na)) = CertInfo::parse(der, now_unix) {
            if i == 0 {
                report.days_left = Some(info.days_left);
                leaf_validity = Some((nb, na));
            }
            report.chain.push(info);
        }
    }
    let Some(leaf) = chain.first() else {
        report.trust_error = Some("server sent no certificate".into());
        return report;
    };
    let parsed = match rustls::server::ParsedCertificate::try_from(leaf) {
        Ok(p) => p,
        Err(e) => {
            report.trust_error = Some(format!("unparsable leaf certificate: {e}"));
            return report;
        }
    };
    if let Some((nb, na)) = leaf_validity {
        report.expired = now_unix > na || now_unix < nb;
    }
    let at =
        |secs: i64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs.max(0) as u64));
    let intermediates = &chain[1..];
    match rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        at(now_unix),
        algs.all,
    ) {
        Ok(()) => {
            report.trusted = true;
            report.trusted_ignoring_expiry = true;
        }
        Err(e) => {
            report.trust_error = Some(describe_cert_error(&e));
            if let Some((nb, na)) = leaf_validity {
                // Re-check inside the leaf's validity window to tell "expired but CA-signed"
                // from "not CA-signed at all".
                let mid = nb + (na - nb) / 2;
                report.trusted_ignoring_expiry =
                    rustls::client::verify_server_cert_signed_by_trust_anchor(
                        &parsed,
                        roots,
                        intermediates,
                        at(mid),
                        algs.all,
                    )
                    .is_ok();
            }
            if matches!(
                e,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Expired
                        | rustls::CertificateError::ExpiredContext { .. }
                        | rustls::CertificateError::NotValidYet
                        | rustls::CertificateError::NotValidYetContext { .. }
                )
            ) {
                report.expired = true;
            }
        }
    }
    report.name_matches_host = name_matches(&parsed, host);
    if let Some(d) = domain {
        report.name_matches_domain = Some(name_matches(&parsed, d));
    }
    report
}

fn name_matches(cert: &rustls::server::ParsedCertificate<'_>, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    match ServerName::try_from(name) {
        Ok(sn) => rustls::client::verify_server_name(cert, &sn).is_ok(),
        Err(_) => false,
    }
}

pub(crate) fn describe_cert_error(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "issuer not trusted (self-signed or unknown CA)".into()
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "certificate expired".into()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "certificate not valid yet".into()
        }
        other => other.to_string(),
    }
}

/// Whether a TLSA record matches the chain (RFC 6698/7671: usage 0/2 any CA in the chain,
/// 1/3 the leaf; selector 0 full cert, 1 SPKI; matching 0 exact, 1 SHA-256, 2 SHA-512).
pub(crate) fn tlsa_matches(rec: &TlsaRecord, chain: &[CertificateDer<'_>]) -> bool {
    let candidates: Vec<&CertificateDer<'_>> = match rec.usage {
        1 | 3 => chain.first().into_iter().collect(),
        0 | 2 => chain.iter().skip(1).collect(),
        _ => return false,
    };
    let want = match hex_decode(&rec.data) {
        Some(w) => w,
        None => return false,
    };
    candidates.into_iter().any(|der| {
        let selected: Vec<u8> = match rec.selector {
            0 => der.as_ref().to_vec(),
            1 => match x509_parser::parse_x509_certificate(der.as_ref()) {
                Ok((_, c)) => c.public_key().raw.to_vec(),
                Err(_) => return false,
            },
            _ => return false,
        };
        let got = match rec.matching {
            0 => selected,
            1 => Sha256::digest(&selected).to_vec(),
            2 => Sha512::digest(&selected).to_vec(),
            _ => return false,
        };
        got == want
    })
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

pub(crate) fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// How a failed handshake is explained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// The server answered with a ServerHello for this legacy version ("1.0", "1.1", "SSL 3.0").
    LegacyOnly(&'static str),
    /// The server sent a protocol_version alert: it speaks neither TLS 1.2 nor 1.3.
    ProtocolVersionAlert,
    Other(String),
}

/// Explain a handshake error, using the first bytes the server sent after STARTTLS.
pub(crate) fn classify_handshake_error(err: &io::Error, first_bytes: &[u8]) -> HandshakeFailure {
    if let Some(v) = sniff_server_hello_version(first_bytes)
        && v < 0x0303
    {
        return HandshakeFailure::LegacyOnly(legacy_name(v));
    }
    if first_bytes.len() >= 7 && first_bytes[0] == 0x15 && first_bytes[6] == 70 {
        return HandshakeFailure::ProtocolVersionAlert;
    }
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::ServerDoesNotSupportTls12Or13
            | rustls::PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig,
        )) => HandshakeFailure::LegacyOnly("1.0/1.1"),
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion)) => {
            HandshakeFailure::ProtocolVersionAlert
        }
        Some(e) => HandshakeFailure::Other(e.to_string()),
        None if err.kind() == io::ErrorKind::UnexpectedEof => {
            HandshakeFailure::Other("connection closed by the server during the handshake".into())
        }
        None => HandshakeFailure::Other(err.to_string()),
    }
}

pub(crate) fn legacy_name(v: u16) -> &'static str {
    match v {
        0x0301 => "1.0",
        0x0302 => "1.1",
        0x0300 => "SSL 3.0",
        _ => "pre-1.2",
    }
}

/// A TLS 1.1 ClientHello in the pre-1.3 format (no supported_versions), offering the
/// ECDHE/RSA CBC suites that TLS 1.0/1.1 servers have. Only used to read the ServerHello's
/// version; the handshake is never completed.
pub(crate) fn legacy_client_hello(host: &str, random: [u8; 32]) -> Vec<u8> {
    const SUITES: [u16; 9] = [
        0xc009, 0xc013, 0xc00a, 0xc014, 0x0033, 0x0039, 0x002f, 0x0035, 0x000a,
    ];
    let mut ext = Vec::new();
    let push_ext = |ext: &mut Vec<u8>, typ: u16, body: &[u8]| {
        ext.extend_from_slice(&typ.to_be_bytes());
        ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
        ext.extend_from_slice(body);
    };
    if host.parse::<std::net::IpAddr>().is_err() && host.len() < 256 {
        let name = host.as_bytes();
        let mut sni = Vec::new();
        sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sni.push(0); // host_name
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name);
        push_ext(&mut ext, 0x0000, &sni);
    }
    // supported_groups: x25519, secp256r1, secp384r1; ec_point_formats: uncompressed.
    push_ext(
        &mut ext,
        0x000a,
        &[0x00, 0x06, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18],
    );
    push_ext(&mut ext, 0x000b, &[0x01, 0x00]);

    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&random);
    body.push(0); // no session id
    body.extend_from_slice(&((SUITES.len() * 2) as u16).to_be_bytes());
    for s in SUITES {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);

    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// The `server_version` of a ServerHello at the start of `b`, if that is what `b` holds.
pub(crate) fn sniff_server_hello_version(b: &[u8]) -> Option<u16> {
    // record: type(1)=22 version(2) length(2); handshake: type(1)=2 length(3) version(2)
    if b.len() < 11 || b[0] != 0x16 || b[5] != 0x02 {
        return None;
    }
    Some(u16::from_be_bytes([b[9], b[10]]))
}

/// A stream wrapper that caps the bytes read from the peer and keeps the first bytes read
/// after `start_capture` (to recognise legacy ServerHellos and alerts).
pub(crate) struct LimitedStream<S> {
    inner: S,
    pub(crate) read: u64,
    limit: u64,
    capture: Option<Vec<u8>>,
}

const CAPTURE_LEN: usize = 16;

impl<S> LimitedStream<S> {
    pub(crate) fn new(inner: S, limit: u64) -> Self {
        LimitedStream {
            inner,
            read: 0,
            limit,
            capture: None,
        }
    }

    pub(crate) fn start_capture(&mut self) {
        self.capture = Some(Vec::with_capacity(CAPTURE_LEN));
    }

    pub(crate) fn captured(&self) -> &[u8] {
        self.capture.as_deref().unwrap_or(&[])
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LimitedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read >= this.limit {
            return Poll::Ready(Err(io::Error::other(format!(
                "server sent more than {} bytes",
                this.limit
            ))));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let new = &buf.filled()[before..];
            this.read += new.len() as u64;
            if let Some(cap) = this.capture.as_mut() {
                let room = CAPTURE_LEN.saturating_sub(cap.len());
                cap.extend_from_slice(&new[..room.min(new.len())]);
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LimitedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_legacy_server_hello() {
        let hello = [
            0x16, 0x03, 0x01, 0x00, 0x31, 0x02, 0x00, 0x00, 0x2d, 0x03, 0x01,
        ];
        assert_eq!(sniff_server_hello_version(&hello), Some(0x0301));
        let err = io::Error::other("x");
        assert_eq!(
            classify_handshake_error(&err, &hello),
            HandshakeFailure::LegacyOnly("1.0")
        );
        let alert = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 70];
        assert_eq!(
            classify_handshake_error(&err, &alert),
            HandshakeFailure::ProtocolVersionAlert
        );
    }

    #[test]
    fn hex_roundtrip() {
        assert_eq!(
            hex_decode(&hex_encode(&[0, 255, 16])),
            Some(vec![0, 255, 16])
        );
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }
}
