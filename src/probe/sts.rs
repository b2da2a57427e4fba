//! MTA-STS (RFC 8461): the `_mta-sts` TXT record, the HTTPS policy fetch and the policy
//! parser. The fetch is a deliberately small HTTP/1.1 GET over tokio-rustls with size and
//! time limits; redirects are not followed (RFC 8461 §3.3).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest policy body accepted (RFC 8461 §3.2 suggests 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Longest max_age allowed by RFC 8461 §3.2 (about a year).
pub const MAX_MAX_AGE: u64 = 31_557_600;

/// Policy mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StsMode {
    Enforce,
    Testing,
    None,
}

/// A parsed policy file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StsPolicy {
    pub version: String,
    pub mode: StsMode,
    /// MX patterns (`mx.example.com`, `*.example.net`).
    pub mx: Vec<String>,
    pub max_age: u64,
}

/// Why a policy file is invalid.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PolicyError {
    #[error("policy is not UTF-8")]
    NotUtf8,
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("field `{0}` appears more than once")]
    Duplicate(&'static str),
    #[error("unsupported version {0:?} (want STSv1)")]
    Version(String),
    #[error("invalid mode {0:?}")]
    Mode(String),
    #[error("invalid max_age {0:?}")]
    MaxAge(String),
    #[error("invalid mx pattern {0:?}")]
    MxPattern(String),
    #[error("line without `key: value`: {0:?}")]
    Syntax(String),
}

/// Parse a policy (RFC 8461 §3.2): `key: value` lines separated by LF or CRLF; unknown
/// keys are ignored; `mx` may repeat; in mode `none` mx may be absent.
pub fn parse_policy(body: &[u8]) -> Result<StsPolicy, PolicyError> {
    let text = std::str::from_utf8(body).map_err(|_| PolicyError::NotUtf8)?;
    let (mut version, mut mode, mut max_age) = (None, None, None);
    let mut mx = Vec::new();
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(PolicyError::Syntax(line.chars().take(80).collect()));
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "version" => set_once(&mut version, value, "version")?,
            "mode" => set_once(&mut mode, value, "mode")?,
            "max_age" => set_once(&mut max_age, value, "max_age")?,
            "mx" => {
                if !valid_mx_pattern(value) {
                    return Err(PolicyError::MxPattern(value.chars().take(80).collect()));
                }
                mx.push(value.to_ascii_lowercase());
            }
            _ => {}
        }
    }
    let version = version.ok_or(PolicyError::Missing("version"))?;
    if version != "STSv1" {
        return Err(PolicyError::Version(version));
    }
    let mode = match mode.ok_or(PolicyError::Missing("mode"))?.as_str() {
        "enforce" => StsMode::Enforce,
        "testing" => StsMode::Testing,
        "none" => StsMode::None,
        other => return Err(PolicyError::Mode(other.to_string())),
    };
    let max_age_text = max_age.ok_or(PolicyError::Missing("max_age"))?;
    let max_age = if max_age_text.len() <= 10 && max_age_text.bytes().all(|b| b.is_ascii_digit()) {
        max_age_text.parse::<u64>().ok()
    } else {
        None
    }
    .filter(|v| *v <= MAX_MAX_AGE)
    .ok_or(PolicyError::MaxAge(max_age_text))?;
    if mx.is_empty() && mode != StsMode::None {
        return Err(PolicyError::Missing("mx"));
    }
    Ok(StsPolicy {
        version,
        mode,
        mx,
        max_age,
    })
}

fn set_once(slot: &mut Option<String>, value: &str, key: &'static str) -> Result<(), PolicyError> {
    if slot.is_some() {
        return Err(PolicyError::Duplicate(key));
    }
    *slot = Some(value.to_string());
    Ok(())
}

fn valid_mx_pattern(p: &str) -> bool {
    let name = p.strip_prefix("*.").unwrap_or(p);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Whether an MX host matches a policy pattern (RFC 8461 §4.1: `*.` matches exactly one
/// left-most label; comparison is case-insensitive).
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => host == pattern,
    }
}

/// Parse the `_mta-sts` TXT record (RFC 8461 §3.1): returns the policy id.
pub fn parse_txt(record: &str) -> Result<String, String> {
    let mut fields = record.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next() != Some("v=STSv1") {
        return Err(format!(
            "TXT record does not start with v=STSv1: {record:?}"
        ));
    }
    for f in fields {
        if let Some(id) = f.strip_prefix("id=") {
            if (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Ok(id.to_string());
            }
            return Err(format!("invalid id {id:?}"));
        }
    }
    Err("TXT record has no id".into())
}

/// Why a policy fetch failed: TLS certificate problems are reported separately
/// (`sts-webpki-invalid`) from everything else (`sts-policy-fetch-error`).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FetchError {
    #[error("policy host certificate invalid: {0}")]
    Webpki(String),
    #[error("{0}")]
    Fetch(String),
}

/// Fetch `https://mta-sts.<domain>/.well-known/mta-sts.txt` from `addr`, validating the
/// certificate for `mta-sts.<domain>`. The whole fetch must finish within `limit`.
pub(crate) async fn fetch_policy(
    config: Arc<ClientConfig>,
    policy_host: &str,
    addr: SocketAddr,
    limit: Duration,
) -> Result<Vec<u8>, FetchError> {
    match tokio::time::timeout(limit, fetch_inner(config, policy_host, addr)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Fetch(format!(
            "policy fetch from {addr} did not finish within {limit:?}"
        ))),
    }
}

async fn fetch_inner(
    config: Arc<ClientConfig>,
    policy_host: &str,
    addr: SocketAddr,
) -> Result<Vec<u8>, FetchError> {
    let fetch = |what: &str, e: &dyn std::fmt::Display| FetchError::Fetch(format!("{what}: {e}"));
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| fetch(&format!("connect to {addr}"), &e))?;
    let name = ServerName::try_from(policy_host.to_string())
        .map_err(|e| fetch("invalid policy host name", &e))?;
    let mut tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(
            |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(err @ rustls::Error::InvalidCertificate(_)) => {
                    FetchError::Webpki(super::tls::describe_cert_error(err))
                }
                _ => fetch("TLS handshake", &e),
            },
        )?;
    let request = format!(
        "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {policy_host}\r\nUser-Agent: mailtls\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| fetch("send request", &e))?;
    let cap = MAX_HEADER_BYTES + MAX_POLICY_BYTES + 4096;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match tls.read(&mut chunk).await {
            Ok(n) => n,
            // Many servers close without close_notify; what was read is still complete
            // when Content-Length / chunked framing says so.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(fetch("read response", &e)),
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > cap {
            return Err(FetchError::Fetch(format!(
                "response larger than {MAX_POLICY_BYTES} bytes"
            )));
        }
    }
    parse_http_response(&raw).map_err(FetchError::Fetch)
}

/// Parse an HTTP/1.x response: status must be 200; Content-Length or chunked framing.
pub fn parse_http_response(raw: &[u8]) -> Result<Vec<u8>, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("incomplete HTTP response header")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "non-UTF-8 HTTP header")?;
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with("HTTP/1.") || code != "200" {
        return Err(format!(
            "HTTP status {status:?} (redirects are not followed)"
        ));
    }
    let mut content_length = None;
    let mut chunked = false;
    let mut content_type = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => content_length = v.parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "content-type" => content_type = Some(v.to_ascii_lowercase()),
                _ => {}
            }
        }
    }
    if let Some(ct) = content_type
        && !ct.starts_with("text/plain")
    {
        return Err(format!("Content-Type {ct:?}, expected text/plain"));
    }
    let body = if chunked {
        decode_chunked(body)?
    } else if let Some(len) = content_length {
        body.get(..len)
            .ok_or_else(|| format!("body shorter than Content-Length {len}"))?
            .to_vec()
    } else {
        body.to_vec()
    };
    if body.len() > MAX_POLICY_BYTES {
        return Err(format!("policy larger than {MAX_POLICY_BYTES} bytes"));
    }
    Ok(body)
}

fn decode_chunked(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk header")?;
        let size_text = std::str::from_utf8(&b[..nl]).map_err(|_| "bad chunk header")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        b = &b[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        let data = b.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(data);
        if out.len() > MAX_POLICY_BYTES {
            return Err(format!("policy larger than {MAX_POLICY_BYTES} bytes"));
        }
        b = b.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policy() {
        let p = parse_policy(
            b"version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, StsMode::Enforce);
        assert_eq!(p.mx, vec!["mx1.example.com", "*.example.net"]);
        assert_eq!(p.max_age, 604800);
        assert!(parse_policy(b"version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n").is_err());
        assert!(parse_policy(b"version: STSv1\nmode: enforce\nmax_age: 1\n").is_err());
        assert!(parse_policy(b"version: STSv1\nmode: none\nmax_age: 1\n").is_ok());
        assert!(
            parse_policy(b"version: STSv1\nmode: testing\nmx: a\nmax_age: 99999999999\n").is_err()
        );
    }

    #[test]
    fn matches_mx() {
        assert!(mx_matches("*.example.net", "mx.example.net."));
        assert!(!mx_matches("*.example.net", "a.b.example.net"));
        assert!(!mx_matches("*.example.net", "example.net"));
        assert!(mx_matches("MX.example.com", "mx.EXAMPLE.com"));
    }

    #[test]
    fn parses_txt_and_http() {
        assert_eq!(parse_txt("v=STSv1; id=2024abc;").unwrap(), "2024abc");
        assert!(parse_txt("v=STSv1;").is_err());
        assert!(parse_txt("v=spf1 -all").is_err());
        let resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(resp).unwrap(), b"hello");
        assert!(parse_http_response(b"HTTP/1.1 301 Moved\r\n\r\n").is_err());
    }
}
