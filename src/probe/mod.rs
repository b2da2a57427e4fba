//! The TLS probe engine: "test TLS connection" for a mail domain or a gateway host.
//!
//! For a [`Target::Domain`] the probe looks up the MX hosts (RFC 5321 implicit MX, RFC 7505
//! null MX), the domain's MTA-STS policy (RFC 8461) and each host's TLSA records, then runs
//! an SMTP session against every MX host (greeting, EHLO, STARTTLS, TLS handshake, EHLO,
//! QUIT). A [`Target::Host`] (a gateway) is probed the same way without MTA-STS.
//! Every TLS session is recorded rather than aborted on a bad certificate, and the result is
//! judged against an [`Expected`] (what the destination must offer; `policy::Requirement` is
//! what the relay enforces) in the RFC 8460 vocabulary (see [`Outcome`]).
//!
//! Use: build one [`Prober`] from a [`ProbeConfig`] (it holds the resolver, the rustls
//! configurations and a global concurrency bound shared by every clone), then call
//! [`Prober::probe`], [`Prober::probe_many`] or [`Prober::probe_stream`].
//! The JSON form of [`DestinationReport`] is documented in `docs/probe-json.md`.

pub mod address;
pub mod dns;
pub mod dnssec;
mod session;
pub mod smtp;
pub mod sts;
pub mod tls;
pub mod verdict;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use crate::api::{DestinationResult, GatewayTls, TestSummary, TlsComplianceSpec, TlsVersion};
pub use address::{AddressPolicy, Cidr};
use dns::{Dns, DnsError, MxSet};
use k8s_openapi::jiff::Timestamp;
pub use smtp::SmtpLimits;
pub use sts::{StsMode, StsPolicy};
pub use tls::{CertInfo, ChainReport, install_crypto_provider};
use verdict::HostFailure;
pub use verdict::{EXPIRY_WARNING_DAYS, Outcome};

/// What a destination must offer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Expected {
    /// STARTTLS must be offered and work.
    pub require_tls: bool,
    /// The certificate must chain to a trusted CA and be within its validity period.
    pub require_ca_signed: bool,
    /// The certificate must match the MX host name or the domain.
    pub validate_hostname: bool,
    /// Lowest acceptable TLS version (checked when TLS is required).
    pub min_tls: TlsVersion,
}

impl Expected {
    /// The requirement of an outbound TlsCompliance (TLS is always required).
    pub fn for_compliance(spec: &TlsComplianceSpec) -> Expected {
        Expected {
            require_tls: true,
            require_ca_signed: spec.require_ca_signed,
            validate_hostname: spec.validate_hostname,
            min_tls: spec.min_tls_version,
        }
    }

    /// The requirement of the hop to an OutboundGateway.
    pub fn for_gateway(tls: &GatewayTls) -> Expected {
        Expected {
            require_tls: tls.require,
            require_ca_signed: tls.require_ca_signed,
            validate_hostname: tls.validate_hostname,
            min_tls: tls.min_tls_version,
        }
    }
}

/// What a policy requirement asks of a probe (TLS always required).
impl From<crate::policy::Requirement> for Expected {
    fn from(r: crate::policy::Requirement) -> Expected {
        use crate::policy::Level;
        Expected {
            require_tls: true,
            require_ca_signed: r.level >= Level::CaSigned,
            validate_hostname: r.level == Level::Hostname,
            min_tls: r.min_tls,
        }
    }
}

/// What to probe.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A mail domain: MX lookup, MTA-STS, port from [`ProbeConfig::smtp_port`].
    Domain(String),
    /// A host (gateway): `mx_lookup` false connects to the host itself, true to its MXs.
    Host {
        host: String,
        port: u16,
        mx_lookup: bool,
    },
}

/// Why a destination string is not usable.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TargetError {
    #[error("empty destination")]
    Empty,
    #[error("invalid port in {0:?}")]
    Port(String),
    #[error("invalid host or domain name {0:?}: {1}")]
    Name(String, String),
}

impl Target {
    /// Parse `domain`, `host:port`, `[host]`, `[host]:port` or an IP literal (`[::1]:25`).
    /// Bracketed or ported forms connect to the host itself; a bare name is a mail domain.
    pub fn parse(s: &str, default_port: u16) -> Result<Target, TargetError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TargetError::Empty);
        }
        let port_of = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| TargetError::Port(s.to_string()))
        };
        if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| TargetError::Name(s.to_string(), "missing `]`".into()))?;
            let port = match after {
                "" => default_port,
                p => port_of(
                    p.strip_prefix(':')
                        .ok_or_else(|| TargetError::Port(s.to_string()))?,
                )?,
            };
            return Ok(Target::Host {
                host: normalize_host(host)?,
                port,
                mx_lookup: false,
            });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Target::Host {
                host: ip.to_string(),
                port: default_port,
                mx_lookup: false,
            });
        }
        if let Some((host, port)) = s.rsplit_once(':') {
            return Ok(Target::Host {
                host: normalize_host(host)?,
                port: port_of(port)?,
                mx_lookup: false,
            });
        }
        Ok(Target::Domain(normalize_host(s)?))
    }

    /// The destination as shown in reports: `example.com`, `[mx.example.com]:587`,
    /// `gw.example.com:2525` (MX lookup) — Postfix next-hop style.
    pub fn display(&self) -> String {
        match self {
            Target::Domain(d) => d.clone(),
            Target::Host {
                host,
                port,
                mx_lookup: false,
            } => format!("[{host}]:{port}"),
            Target::Host {
                host,
                port,
                mx_lookup: true,
            } => format!("{host}:{port}"),
        }
    }
}

/// Lower-case, strip the trailing dot, IDNA to punycode; IP literals pass through.
fn normalize_host(h: &str) -> Result<String, TargetError> {
    let h = h.trim().trim_end_matches('.');
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let bad = |why: &str| TargetError::Name(h.to_string(), why.to_string());
    if h.is_empty() {
        return Err(bad("empty name"));
    }
    let ascii = idna::domain_to_ascii(h).map_err(|e| bad(&e.to_string()))?;
    if ascii.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    for label in ascii.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("empty or over-long label"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("invalid character"));
        }
    }
    Ok(ascii)
}

/// Time limits of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to one address.
    pub connect: Duration,
    /// One SMTP reply (all its lines), one command write, or the TLS handshake.
    pub step: Duration,
    /// Everything for one host, from connect to QUIT.
    pub host_total: Duration,
    /// One DNS query.
    pub dns: Duration,
    /// The whole MTA-STS policy fetch.
    pub sts_fetch: Duration,
}

impl Timeouts {
    /// Derive all limits from the per-step timeout (the CLI's `--timeout`).
    pub fn from_step(step: Duration) -> Timeouts {
        Timeouts {
            connect: step,
            step,
            host_total: step * 4,
            dns: step.min(Duration::from_secs(5)),
            sts_fetch: step * 2,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::from_step(Duration::from_secs(10))
    }
}

/// Everything a [`Prober`] is built from.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// DNS server to use instead of the system resolver.
    pub resolver: Option<SocketAddr>,
    /// Roots trusted in addition to the webpki (Mozilla) roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Name sent in EHLO.
    pub helo: String,
    /// SMTP port for domains (MX hosts). Always 25 in real use.
    pub smtp_port: u16,
    /// HTTPS port of the MTA-STS policy host. Always 443 in real use; tests override it.
    pub sts_port: u16,
    pub timeouts: Timeouts,
    pub limits: SmtpLimits,
    /// Most SMTP sessions and policy fetches in flight at once, over all callers.
    pub concurrency: usize,
    /// Most MX hosts probed per domain.
    pub max_mx_hosts: usize,
    /// Most certificates of a chain recorded in detail.
    pub max_recorded_certs: usize,
    /// Look up and check MTA-STS for domains.
    pub check_sts: bool,
    /// Look up and check TLSA records.
    pub check_tlsa: bool,
    /// Addresses the probe may connect to, checked on each resolved address right before
    /// connecting. The default refuses internal ranges; `mailtls probe` allows any.
    pub addresses: AddressPolicy,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            resolver: None,
            extra_roots: Vec::new(),
            helo: default_helo(),
            smtp_port: 25,
            sts_port: 443,
            timeouts: Timeouts::default(),
            limits: SmtpLimits::default(),
            concurrency: 32,
            max_mx_hosts: 10,
            max_recorded_certs: 8,
            check_sts: true,
            check_tlsa: true,
            addresses: AddressPolicy::default(),
        }
    }
}

/// The machine's host name, else `localhost`.
pub fn default_helo() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "localhost".into())
}

/// Why a [`Prober`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0} of the extra CA certificates could not be parsed")]
    BadRoots(usize),
    #[error("invalid EHLO name {0:?}")]
    Helo(String),
}

/// One MX host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MxHost {
    pub preference: u16,
    pub host: String,
}

/// A TLSA record (RFC 6698), data in hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsaRecord {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: String,
}

/// The negotiated TLS session of a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsReport {
    /// "1.2" or "1.3".
    pub version: String,
    /// IANA cipher suite name.
    pub cipher: String,
    #[serde(flatten)]
    pub chain: ChainReport,
    /// The server answered EHLO inside TLS.
    pub ehlo_after_tls: bool,
}

impl TlsReport {
    /// The negotiated version as the API type.
    pub fn negotiated(&self) -> Option<TlsVersion> {
        match self.version.as_str() {
            "1.2" => Some(TlsVersion::V1_2),
            "1.3" => Some(TlsVersion::V1_3),
            _ => None,
        }
    }
}

/// What was found on one host.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostReport {
    pub host: String,
    pub port: u16,
    /// MX preference (absent for a host target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preference: Option<u16>,
    /// The mail domain whose MX this is (name checks use it too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// A/AAAA addresses found.
    pub addresses: Vec<String>,
    /// The address the SMTP session ran against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected: Option<String>,
    pub tlsa: Vec<TlsaRecord>,
    /// Whether the resolver authenticated the TLSA records with DNSSEC (the AD bit; absent
    /// without TLSA records). Unauthenticated records are reported, never enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tlsa_authenticated: Option<bool>,
    /// Whether any TLSA record matched the chain (absent without TLSA or TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tlsa_match: Option<bool>,
    /// Whether this MX matches the MTA-STS policy's mx patterns (absent without a policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sts_mx_match: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub greeting: Option<String>,
    /// EHLO keywords before TLS.
    pub extensions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starttls_offered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsReport>,
    /// A server that only speaks an old TLS version: which one ("1.0", "1.1", "1.0/1.1").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legacy_tls: Option<String>,
    pub outcome: Outcome,
    pub passed: bool,
    pub message: String,
    pub warnings: Vec<String>,
    pub duration_ms: u64,
    #[serde(skip)]
    pub(crate) failure: Option<HostFailure>,
}

impl HostReport {
    fn new(host: &str, port: u16, preference: Option<u16>, domain: Option<&str>) -> HostReport {
        HostReport {
            host: host.to_string(),
            port,
            preference,
            domain: domain.map(str::to_string),
            addresses: Vec::new(),
            connected: None,
            tlsa: Vec::new(),
            tlsa_authenticated: None,
            tlsa_match: None,
            sts_mx_match: None,
            greeting: None,
            extensions: Vec::new(),
            starttls_offered: None,
            tls: None,
            legacy_tls: None,
            outcome: Outcome::Pass,
            passed: true,
            message: String::new(),
            warnings: Vec::new(),
            duration_ms: 0,
            failure: None,
        }
    }
}

/// The MTA-STS findings of a domain.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StsReport {
    /// The `_mta-sts` TXT record.
    pub txt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<StsPolicy>,
    /// Whether every MX host matches the policy's mx patterns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mx_match: Option<bool>,
    /// What went wrong (`sts-policy-fetch-error`, `sts-policy-invalid`, `sts-webpki-invalid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    pub(crate) failure: Option<(Outcome, String)>,
}

/// How the domain routes mail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MxKind {
    /// MX records.
    Mx,
    /// No MX: the domain itself (RFC 5321 §5.1).
    Implicit,
    /// `MX 0 .` (RFC 7505).
    Null,
    /// A host target without MX lookup.
    Host,
    /// The lookup failed.
    Unknown,
}

/// Everything about one destination, with its verdict.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationReport {
    /// The destination as tested (`example.com`, `[gw.example.net]:587`).
    pub destination: String,
    /// The gateway hop tested for this destination, when its mail goes through one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    pub requirement: Expected,
    pub outcome: Outcome,
    pub passed: bool,
    pub message: String,
    pub warnings: Vec<String>,
    pub mx_kind: MxKind,
    pub mx: Vec<MxHost>,
    /// Whether the resolver authenticated the MX records (or their absence) with DNSSEC; DANE
    /// uses the MX hosts' TLSA records only then (RFC 7672 §2.2). Absent for a host target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mx_authenticated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sts: Option<StsReport>,
    pub hosts: Vec<HostReport>,
    /// What the hosts were judged by.
    pub decided_by: DecidedBy,
    pub duration_ms: u64,
}

/// What decides the TLS a destination must meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecidedBy {
    /// DANE (RFC 7672): an MX host has DNSSEC-authenticated TLSA records of usage 2 or 3.
    Dane,
    /// The domain's MTA-STS policy in `enforce` mode (with the requirement asked for, the
    /// stricter of both).
    MtaSts,
    /// The requirement asked for (a TlsCompliance's, or the probe's flags).
    Requirement,
    /// Nothing mandatory: opportunistic TLS.
    Opportunistic,
}

impl DecidedBy {
    fn of(req: &Expected, sts: Option<&StsReport>, hosts: &[HostReport]) -> DecidedBy {
        let enforce = sts
            .filter(|s| s.error.is_none())
            .and_then(|s| s.policy.as_ref())
            .is_some_and(|p| p.mode == StsMode::Enforce);
        let dane = hosts.iter().any(|h| {
            h.tlsa_authenticated == Some(true) && h.tlsa.iter().any(dnssec::usable_for_smtp)
        });
        if dane {
            DecidedBy::Dane
        } else if enforce {
            DecidedBy::MtaSts
        } else if req.require_tls || req.require_ca_signed || req.validate_hostname {
            DecidedBy::Requirement
        } else {
            DecidedBy::Opportunistic
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Dane => "DANE (authenticated TLSA)",
            DecidedBy::MtaSts => "MTA-STS (enforce)",
            DecidedBy::Requirement => "the requirement",
            DecidedBy::Opportunistic => "nothing (opportunistic)",
        }
    }
}

impl DestinationReport {
    /// An empty passing report, filled in by the probe.
    pub(crate) fn new(target: &Target, req: &Expected) -> DestinationReport {
        DestinationReport {
            destination: target.display(),
            via: None,
            requirement: *req,
            outcome: Outcome::Pass,
            passed: true,
            message: String::new(),
            warnings: Vec::new(),
            mx_kind: MxKind::Unknown,
            mx_authenticated: None,
            mx: Vec::new(),
            sts: None,
            hosts: Vec::new(),
            decided_by: DecidedBy::of(req, None, &[]),
            duration_ms: 0,
        }
    }

    fn internal_error(target: &Target, req: &Expected, why: &str) -> DestinationReport {
        DestinationReport {
            outcome: Outcome::InternalError,
            passed: false,
            message: format!("probe failed internally: {why}"),
            ..DestinationReport::new(target, req)
        }
    }

    /// Whether the destination met the requirement.
    pub fn passed(&self) -> bool {
        self.passed
    }

    /// `pass` or the failure reason.
    pub fn outcome(&self) -> &str {
        self.outcome.as_str()
    }

    /// The host the verdict is about: the first failing one, else the first connected.
    pub fn main_host(&self) -> Option<&HostReport> {
        self.hosts
            .iter()
            .find(|h| !h.passed)
            .or_else(|| self.hosts.first())
    }

    /// The status form (`status.results[]`).
    /// When the soonest-expiring leaf certificate of its hosts expires (Unix seconds).
    pub fn leaf_not_after(&self) -> Option<i64> {
        self.hosts
            .iter()
            .filter_map(|h| Some(h.tls.as_ref()?.chain.chain.first()?.not_after_unix))
            .min()
    }

    pub fn to_result(&self) -> DestinationResult {
        let host = self.main_host();
        let mut message = self.message.clone();
        for w in &self.warnings {
            message.push_str("; warning: ");
            message.push_str(w);
        }
        DestinationResult {
            destination: self.destination.clone(),
            via: self.via.clone(),
            host: host.map(|h| h.host.clone()),
            outcome: self.outcome.as_str().to_string(),
            passed: self.passed,
            message,
            tls_version: host.and_then(|h| h.tls.as_ref()).map(|t| t.version.clone()),
            cert_days_left: self
                .hosts
                .iter()
                .filter_map(|h| h.tls.as_ref()?.chain.days_left)
                .min(),
        }
    }
}

/// Counts for `status.lastTest`; `now` is the RFC 3339 finish time.
pub fn summarize(reports: &[DestinationReport], now: &str) -> TestSummary {
    let mut summary = TestSummary {
        time: now.to_string(),
        ..TestSummary::default()
    };
    for r in reports {
        summary.destinations += 1;
        if r.passed {
            summary.passed += 1;
            if !r.warnings.is_empty() {
                summary.warnings += 1;
            }
        } else {
            summary.failed += 1;
        }
        *summary
            .by_outcome
            .entry(r.outcome.as_str().to_string())
            .or_insert(0) += 1;
    }
    summary
}

/// Status results ordered failures first, then by destination, capped at `cap`.
pub fn results_for_status(reports: &[DestinationReport], cap: usize) -> Vec<DestinationResult> {
    let mut results: Vec<DestinationResult> = reports.iter().map(|r| r.to_result()).collect();
    results.sort_by(|a, b| {
        a.passed
            .cmp(&b.passed)
            .then_with(|| a.destination.cmp(&b.destination))
    });
    results.truncate(cap);
    results
}

pub(crate) struct Inner {
    pub(crate) config: ProbeConfig,
    pub(crate) dns: Dns,
    /// The same resolver, asked for the AD bit (TLSA records).
    pub(crate) validated: dnssec::Validated,
    pub(crate) smtp_tls: Arc<rustls::ClientConfig>,
    pub(crate) https_tls: Arc<rustls::ClientConfig>,
    pub(crate) roots: rustls::RootCertStore,
    pub(crate) algs: rustls::crypto::WebPkiSupportedAlgorithms,
    pub(crate) permits: Arc<Semaphore>,
    /// Destinations started but not finished, across every caller: twice the session bound
    /// keeps every session slot busy (DNS of the next overlaps sessions of the current)
    /// without holding thousands of half-done probes in memory, however many resources are
    /// tested at once. Waiters are served in turn, so large plans do not starve small ones.
    pub(crate) window: Arc<Semaphore>,
}

/// The probe engine. Cheap to clone; clones share the resolver, TLS configurations and the
/// concurrency bound.
#[derive(Clone)]
pub struct Prober {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Prober {
    /// Build from a configuration (reads the system resolver configuration unless
    /// [`ProbeConfig::resolver`] is set). Installs the crypto provider if none is.
    pub fn new(config: ProbeConfig) -> Result<Prober, SetupError> {
        install_crypto_provider();
        if config.helo.is_empty()
            || config.helo.len() > 255
            || !config.helo.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(SetupError::Helo(config.helo.clone()));
        }
        let provider = tls::provider();
        let (roots, rejected) = tls::root_store(&config.extra_roots);
        if rejected > 0 {
            return Err(SetupError::BadRoots(rejected));
        }
        let smtp_tls = tls::probe_client_config(provider.clone())?;
        let https_tls = tls::validating_client_config(provider.clone(), Arc::new(roots.clone()))?;
        let dns = Dns::new(config.resolver, config.timeouts.dns)?;
        let validated = dnssec::Validated::new(config.resolver, config.timeouts.dns)?;
        let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
        Ok(Prober {
            inner: Arc::new(Inner {
                window: Arc::new(Semaphore::new(config.concurrency.max(1) * 2)),
                algs: provider.signature_verification_algorithms,
                config,
                dns,
                validated,
                smtp_tls,
                https_tls,
                roots,
                permits,
            }),
        })
    }

    pub fn config(&self) -> &ProbeConfig {
        &self.inner.config
    }

    /// Probe one destination.
    pub async fn probe(&self, target: &Target, req: &Expected) -> DestinationReport {
        session::probe_destination(&self.inner, target, req).await
    }

    /// Probe many destinations concurrently; reports arrive on the channel as each
    /// finishes (with its index in the input), so one slow host never delays the others.
    pub fn probe_stream(
        &self,
        items: Vec<(Target, Expected)>,
    ) -> mpsc::Receiver<(usize, DestinationReport)> {
        let (tx, rx) = mpsc::channel(items.len().max(1));
        let window = self.inner.window.clone();
        let prober = self.clone();
        tokio::spawn(async move {
            for (i, (target, req)) in items.into_iter().enumerate() {
                let Ok(slot) = window.clone().acquire_owned().await else {
                    return;
                };
                let prober = prober.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    // A nested task turns a panic (a bug) into a report, not a lost result.
                    let (t, r) = (target.clone(), req);
                    let report = match tokio::spawn(async move { prober.probe(&t, &r).await }).await
                    {
                        Ok(report) => report,
                        Err(e) => DestinationReport::internal_error(&target, &req, &e.to_string()),
                    };
                    drop(slot);
                    // The receiver may be gone (caller lost interest); nothing to do then.
                    let _ = tx.send((i, report)).await;
                });
            }
        });
        rx
    }

    /// Probe many destinations concurrently; reports in input order.
    pub async fn probe_many(&self, items: Vec<(Target, Expected)>) -> Vec<DestinationReport> {
        let n = items.len();
        let mut rx = self.probe_stream(items);
        let mut out: Vec<Option<DestinationReport>> = vec![None; n];
        while let Some((i, report)) = rx.recv().await {
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(report);
            }
        }
        out.into_iter().flatten().collect()
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 (UTC, seconds) for a Unix time; out-of-range times (certificates can claim
/// anything) are clamped to jiff's range.
pub fn rfc3339(secs: i64) -> String {
    let secs = secs.clamp(Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
    Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The current time in RFC 3339.
pub fn rfc3339_now() -> String {
    rfc3339(now_unix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(
            Target::parse("Example.COM.", 25).unwrap(),
            Target::Domain("example.com".into())
        );
        assert_eq!(
            Target::parse("[mx.example.com]:587", 25).unwrap(),
            Target::Host {
                host: "mx.example.com".into(),
                port: 587,
                mx_lookup: false
            }
        );
        assert_eq!(
            Target::parse("[::1]", 2525).unwrap().display(),
            "[::1]:2525"
        );
        assert_eq!(
            Target::parse("127.0.0.1", 25).unwrap().display(),
            "[127.0.0.1]:25"
        );
        assert_eq!(
            Target::parse("mx.example.com:26", 25).unwrap().display(),
            "[mx.example.com]:26"
        );
        assert_eq!(
            Target::parse("bücher.example", 25).unwrap(),
            Target::Domain("xn--bcher-kva.example".into())
        );
        for bad in ["", "a b", "[x", "x:0", "x:99999", "a..b", "[x]y"] {
            assert!(Target::parse(bad, 25).is_err(), "{bad}");
        }
    }

    #[test]
    fn requirements_from_resources() {
        let tls = GatewayTls {
            require: true,
            require_ca_signed: true,
            min_tls_version: TlsVersion::V1_3,
            ..GatewayTls::default()
        };
        let req = Expected::for_gateway(&tls);
        assert!(req.require_tls && req.require_ca_signed && !req.validate_hostname);
        assert_eq!(req.min_tls, TlsVersion::V1_3);
        let mut spec: TlsComplianceSpec = serde_json::from_value(serde_json::json!({
            "direction": "Outbound", "addressLists": [{"name": "partners"}]
        }))
        .expect("compliance spec");
        spec.require_ca_signed = true;
        spec.validate_hostname = true;
        let req = Expected::for_compliance(&spec);
        assert!(req.require_tls && req.require_ca_signed && req.validate_hostname);
        assert_eq!(req.min_tls, TlsVersion::V1_2);
    }

    #[test]
    fn formats_time() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }
}
