//! Judging what a probe saw against a requirement, in the RFC 8460 (TLS-RPT) vocabulary
//! plus a few outcomes RFC 8460 has no name for (DNS, connection, timeout, SMTP errors,
//! a TLS version below the minimum, a domain that accepts no mail).

use serde::{Serialize, Serializer};

use super::sts::StsMode;
use super::{Expected, HostReport, StsReport};
use crate::api::TlsVersion;

/// Certificates expiring within this many days get a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 21;

/// The result of a destination or host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Pass,
    /// `MX 0 .` (RFC 7505): the domain accepts no mail; nothing to test. Not a failure.
    NullMx,
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
    /// The server negotiates (or only speaks) a TLS version below the required minimum.
    TlsVersionTooLow,
    DnsError,
    ConnectError,
    /// Every address of the host is one the prober may not connect to (internal ranges
    /// in the controller); no connection was made.
    AddressNotAllowed,
    Timeout,
    /// The SMTP dialogue failed: error replies, malformed or over-long replies.
    SmtpError,
    /// The probe itself failed (a bug); never a statement about the destination.
    InternalError,
}

impl Outcome {
    /// The stable string used in JSON, status and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::NullMx => "null-mx",
            Outcome::StarttlsNotSupported => "starttls-not-supported",
            Outcome::CertificateHostMismatch => "certificate-host-mismatch",
            Outcome::CertificateExpired => "certificate-expired",
            Outcome::CertificateNotTrusted => "certificate-not-trusted",
            Outcome::ValidationFailure => "validation-failure",
            Outcome::TlsaInvalid => "tlsa-invalid",
            Outcome::StsPolicyFetchError => "sts-policy-fetch-error",
            Outcome::StsPolicyInvalid => "sts-policy-invalid",
            Outcome::StsWebpkiInvalid => "sts-webpki-invalid",
            Outcome::TlsVersionTooLow => "tls-version-too-low",
            Outcome::DnsError => "dns-error",
            Outcome::ConnectError => "connect-error",
            Outcome::AddressNotAllowed => "address-not-allowed",
            Outcome::Timeout => "timeout",
            Outcome::SmtpError => "smtp-error",
            Outcome::InternalError => "internal-error",
        }
    }

    /// Whether this outcome meets the policy.
    pub fn is_pass(self) -> bool {
        matches!(self, Outcome::Pass | Outcome::NullMx)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Where a host probe stopped early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostFailure {
    Dns(String),
    Connect(String),
    /// No address of the host may be connected to.
    NotAllowed(String),
    Timeout(String),
    Smtp(String),
    /// EHLO was rejected or did not list STARTTLS.
    NoStarttls(String),
    /// The server answered STARTTLS with an error.
    StarttlsRefused(String),
    /// Only this legacy version ("1.0", "1.1", "1.0/1.1", "SSL 3.0").
    LegacyTls(String),
    Handshake(String),
}

/// A verdict: outcome, one-line explanation and warnings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Judgement {
    pub outcome: Outcome,
    pub message: String,
    pub warnings: Vec<String>,
}

impl Judgement {
    fn new(outcome: Outcome, message: impl Into<String>, warnings: Vec<String>) -> Self {
        Judgement {
            outcome,
            message: message.into(),
            warnings,
        }
    }
}

fn legacy_version(v: &str) -> Option<TlsVersion> {
    match v {
        "1.0" => Some(TlsVersion::V1_0),
        "1.1" | "1.0/1.1" => Some(TlsVersion::V1_1),
        _ => None,
    }
}

/// Judge one host against `req`, taking an MTA-STS policy in enforce mode into account
/// (it makes TLS, a trusted certificate and an MX-name match mandatory).
pub(crate) fn judge_host(h: &HostReport, req: &Expected, sts: Option<&StsReport>) -> Judgement {
    let sts_mode = sts.and_then(|s| s.policy.as_ref()).map(|p| p.mode);
    let sts_enforce = sts_mode == Some(StsMode::Enforce);
    let needs_tls =
        req.require_tls || req.require_ca_signed || req.validate_hostname || sts_enforce;
    let needs_ca = req.require_ca_signed || req.validate_hostname || sts_enforce;
    let needs_name = req.validate_hostname || sts_enforce;
    let mut warnings = Vec::new();
    let sts_note = if sts_enforce && !(req.require_ca_signed && req.validate_hostname) {
        " (required by the domain's MTA-STS policy in enforce mode)"
    } else {
        ""
    };

    if let (Some(StsMode::Enforce | StsMode::Testing), Some(false)) = (sts_mode, h.sts_mx_match) {
        let msg = format!("MX host {} is not listed in the MTA-STS policy", h.host);
        if sts_enforce {
            return Judgement::new(Outcome::ValidationFailure, msg, warnings);
        }
        warnings.push(format!("{msg} (mode testing)"));
    }

    let soft_fail = |outcome: Outcome, msg: String, mut warnings: Vec<String>| {
        if needs_tls {
            Judgement::new(outcome, msg, warnings)
        } else {
            warnings.push(format!("{msg} (TLS not required)"));
            Judgement::new(Outcome::Pass, "reachable; TLS not required", warnings)
        }
    };

    match h.failure.as_ref() {
        Some(HostFailure::Dns(m)) => return Judgement::new(Outcome::DnsError, m.clone(), warnings),
        Some(HostFailure::Connect(m)) => {
            return Judgement::new(Outcome::ConnectError, m.clone(), warnings);
        }
        Some(HostFailure::NotAllowed(m)) => {
            return Judgement::new(Outcome::AddressNotAllowed, m.clone(), warnings);
        }
        Some(HostFailure::Timeout(m)) => {
            return Judgement::new(Outcome::Timeout, m.clone(), warnings);
        }
        Some(HostFailure::Smtp(m)) => {
            return Judgement::new(Outcome::SmtpError, m.clone(), warnings);
        }
        Some(HostFailure::NoStarttls(m) | HostFailure::StarttlsRefused(m)) => {
            return soft_fail(
                Outcome::StarttlsNotSupported,
                format!("{m}{sts_note}"),
                warnings,
            );
        }
        Some(HostFailure::LegacyTls(v)) => {
            let msg = format!(
                "server speaks only TLS {v}, which is obsolete (this probe negotiates TLS 1.2 and 1.3)"
            );
            let legacy = legacy_version(v);
            if needs_tls && legacy.is_none_or(|l| l < req.min_tls) {
                return Judgement::new(
                    Outcome::TlsVersionTooLow,
                    format!("{msg}; the policy requires at least TLS {}", req.min_tls),
                    warnings,
                );
            }
            if needs_ca {
                return Judgement::new(
                    Outcome::ValidationFailure,
                    format!("{msg}; its certificate could not be checked"),
                    warnings,
                );
            }
            warnings.push(msg);
            return Judgement::new(
                Outcome::Pass,
                "TLS available (legacy version only)",
                warnings,
            );
        }
        Some(HostFailure::Handshake(m)) => {
            return soft_fail(
                Outcome::ValidationFailure,
                format!("TLS handshake failed: {m}"),
                warnings,
            );
        }
        None => {}
    }

    let Some(tls) = h.tls.as_ref() else {
        return soft_fail(
            Outcome::StarttlsNotSupported,
            "no TLS session was established".into(),
            warnings,
        );
    };
    let chain = &tls.chain;
    if let Some(days) = chain.days_left
        && (0..EXPIRY_WARNING_DAYS).contains(&days)
    {
        warnings.push(format!("certificate expires in {days} days"));
    }
    if let Some(v) = tls.negotiated()
        && v < req.min_tls
    {
        let msg = format!(
            "negotiated TLS {v} but the policy requires at least TLS {}",
            req.min_tls
        );
        if needs_tls {
            return Judgement::new(Outcome::TlsVersionTooLow, msg, warnings);
        }
        warnings.push(format!("{msg} (TLS not required)"));
    }
    if needs_ca {
        // Expired wins only when the chain is otherwise CA-signed.
        if chain.expired && chain.trusted_ignoring_expiry {
            return Judgement::new(
                Outcome::CertificateExpired,
                format!(
                    "certificate expired{}{sts_note}",
                    chain
                        .chain
                        .first()
                        .map(|c| format!(" at {}", c.not_after))
                        .unwrap_or_default()
                ),
                warnings,
            );
        }
        if !chain.trusted {
            let why = chain.trust_error.as_deref().unwrap_or("untrusted chain");
            return Judgement::new(
                Outcome::CertificateNotTrusted,
                format!("certificate not signed by a trusted CA: {why}{sts_note}"),
                warnings,
            );
        }
    } else if chain.expired {
        warnings.push("certificate expired (CA signature not required)".into());
    }
    if needs_name {
        // MTA-STS requires the MX name; Postfix `verify` also checks the MX name, while
        // `secure` checks the domain: a match on either satisfies validateHostname.
        let ok =
            chain.name_matches_host || (!sts_enforce && chain.name_matches_domain == Some(true));
        if !ok {
            let names = chain
                .chain
                .first()
                .map(|c| c.sans.join(", "))
                .unwrap_or_default();
            return Judgement::new(
                Outcome::CertificateHostMismatch,
                format!(
                    "certificate names [{names}] match neither {}{}{sts_note}",
                    h.host,
                    h.domain
                        .as_deref()
                        .map(|d| format!(" nor {d}"))
                        .unwrap_or_default()
                ),
                warnings,
            );
        }
    }
    if h.tlsa_authenticated == Some(false) {
        let matched = match h.tlsa_match {
            Some(true) => "; one matches the certificate chain",
            Some(false) => "; none matches the certificate chain",
            None => "",
        };
        warnings.push(format!(
            "the TLSA records at _{}._tcp.{} are not DNSSEC-authenticated (the resolver did not \
             set the AD bit, for them or for the MX records), so a DANE sender ignores \
             them{matched}",
            h.port, h.host
        ));
    } else if h.tlsa_match == Some(false) {
        return Judgement::new(
            Outcome::TlsaInvalid,
            format!(
                "none of the {} TLSA records at _{}._tcp.{} matches the certificate chain",
                h.tlsa.len(),
                h.port,
                h.host
            ),
            warnings,
        );
    }
    Judgement::new(
        Outcome::Pass,
        format!("TLS {} with {}", tls.version, tls.cipher),
        warnings,
    )
}

/// Judge the MTA-STS part of a domain (TXT, fetch, parse).
pub(crate) fn judge_sts(sts: &StsReport) -> Option<(Outcome, String)> {
    sts.failure
        .as_ref()
        .map(|(o, m)| (*o, format!("MTA-STS: {m}")))
}
