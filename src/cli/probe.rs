//! `mailtls probe`: test the TLS of mail domains and hosts from the command line.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;

use crate::api::{TestSummary, TlsVersion};
use crate::probe::{
    AddressPolicy, DestinationReport, Expected, ProbeConfig, Prober, Target, Timeouts, rfc3339_now,
    summarize,
};

/// Exit code when a destination fails the policy.
const EXIT_FAILED: u8 = 1;
/// Exit code for usage errors (same as clap's).
const EXIT_USAGE: u8 = 2;

#[derive(Args, Debug, Clone)]
#[command(
    about = "Test the TLS of mail domains or hosts, like a \"Test TLS connection\" button",
    long_about = "Test the TLS of mail domains or hosts, like a \"Test TLS connection\" button.\n\n\
For a DOMAIN, finds its MX hosts (or the domain itself when it has none), its MTA-STS policy \
and TLSA records, and runs an SMTP session against every MX: greeting, EHLO, STARTTLS, TLS \
handshake, EHLO, QUIT. For HOST:PORT or [HOST]:PORT (a gateway), connects to that host \
without MX lookup. Each destination is judged against the requested policy; failures use the \
RFC 8460 (TLS-RPT) names such as starttls-not-supported, certificate-not-trusted, \
certificate-host-mismatch or certificate-expired.",
    after_help = "Exit status: 0 when every destination meets the policy, 1 when any fails, 2 on usage errors.\n\n\
Examples:\n  mailtls probe example.com\n  mailtls probe --require-ca-signed --validate-hostname example.com example.org\n  \
mailtls probe '[smtp.gateway.example]:587' --require-tls --format json\n  mailtls probe --file partners.txt --concurrency 32"
)]
pub struct ProbeArgs {
    /// Destinations: DOMAIN (MX lookup), HOST:PORT, [HOST] or [HOST]:PORT (this host only).
    #[arg(value_name = "DESTINATION")]
    pub destinations: Vec<String>,

    /// Read more destinations from a file, one per line (`#` starts a comment; `-` is stdin).
    #[arg(long, value_name = "LIST")]
    pub file: Option<PathBuf>,

    /// SMTP port for domains and for hosts given without a port.
    #[arg(long, default_value_t = 25, value_name = "PORT")]
    pub port: u16,

    /// Use this DNS server (IP:PORT) instead of the system resolver.
    #[arg(long, value_name = "IP:PORT")]
    pub resolver: Option<SocketAddr>,

    /// Also trust the CA certificates in this PEM file (besides the Mozilla roots).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// Require STARTTLS (Postfix `encrypt`).
    #[arg(long)]
    pub require_tls: bool,

    /// Require a certificate signed by a trusted CA and not expired (implies --require-tls).
    #[arg(long)]
    pub require_ca_signed: bool,

    /// Require the certificate to match the MX host name or the domain
    /// (implies --require-ca-signed; Postfix `verify`).
    #[arg(long)]
    pub validate_hostname: bool,

    /// Lowest acceptable TLS version when TLS is required.
    #[arg(long, value_name = "VERSION", default_value = "1.2", value_parser = parse_tls_version)]
    pub min_tls: TlsVersion,

    /// Most SMTP sessions in flight at once.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Time limit for each step (connect, each reply, the TLS handshake), e.g. 10s, 500ms, 1m.
    /// A host gets four times this in total.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Output format: a table, or JSON (docs/probe-json.md).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<Output>,

    /// Deprecated spelling of --format (elsewhere --output names a directory).
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        hide = true,
        conflicts_with = "format"
    )]
    pub output: Option<Output>,

    /// Name to send in EHLO (default: this machine's host name).
    #[arg(long, value_name = "NAME")]
    pub helo: Option<String>,

    /// Do not print progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,

    /// HTTPS port for MTA-STS policy fetches (testing only; always 443 in real use).
    #[arg(long, default_value_t = 443, hide = true)]
    pub sts_port: u16,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A human-readable table.
    Table,
    /// JSON (schema in docs/probe-json.md).
    Json,
}

fn parse_tls_version(s: &str) -> Result<TlsVersion, String> {
    match s
        .trim()
        .trim_start_matches("TLSv")
        .trim_start_matches("tls")
    {
        "1.0" | "1" => Ok(TlsVersion::V1_0),
        "1.1" => Ok(TlsVersion::V1_1),
        "1.2" => Ok(TlsVersion::V1_2),
        "1.3" => Ok(TlsVersion::V1_3),
        _ => Err(format!("{s:?} is not one of 1.0, 1.1, 1.2, 1.3")),
    }
}

/// `10s`, `500ms`, `2m`, or plain seconds; between 1 ms and 10 minutes.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 1m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    if d.is_zero() || d > Duration::from_secs(600) {
        return Err(format!("{s:?}: must be between 1ms and 10m"));
    }
    Ok(d)
}

/// A usage error: message for stderr, exit 2.
pub(crate) struct UsageError(pub(crate) String);

impl ProbeArgs {
    fn requirement(&self) -> Expected {
        let ca = self.require_ca_signed || self.validate_hostname;
        Expected {
            require_tls: self.require_tls || ca,
            require_ca_signed: ca,
            validate_hostname: self.validate_hostname,
            min_tls: self.min_tls,
        }
    }

    fn targets(&self) -> Result<Vec<Target>, UsageError> {
        let mut raw: Vec<String> = self.destinations.clone();
        if let Some(path) = &self.file {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .map_err(|e| UsageError(format!("cannot read destinations from stdin: {e}")))?
            } else {
                std::fs::read_to_string(path).map_err(|e| {
                    UsageError(format!("cannot read --file {}: {e}", path.display()))
                })?
            };
            raw.extend(
                text.lines()
                    .map(|l| l.split('#').next().unwrap_or("").trim())
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
        }
        if raw.is_empty() {
            return Err(UsageError(
                "no destinations: give DOMAIN, HOST:PORT or [HOST]:PORT arguments or --file".into(),
            ));
        }
        let mut targets = Vec::with_capacity(raw.len());
        for d in &raw {
            let t = Target::parse(d, self.port)
                .map_err(|e| UsageError(format!("destination {d:?}: {e}")))?;
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        Ok(targets)
    }

    fn config(&self) -> Result<ProbeConfig, UsageError> {
        let mut config = ProbeConfig {
            resolver: self.resolver,
            smtp_port: self.port,
            sts_port: self.sts_port,
            timeouts: Timeouts::from_step(self.timeout),
            concurrency: usize::from(self.concurrency),
            // Its user names the destinations: any address, internal ones included.
            addresses: AddressPolicy::any(),
            ..ProbeConfig::default()
        };
        if let Some(helo) = &self.helo {
            config.helo = helo.clone();
        }
        if let Some(path) = &self.ca_file {
            config.extra_roots = read_pem_certs(path)?;
        }
        Ok(config)
    }
}

pub(crate) fn read_pem_certs(
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, UsageError> {
    let bad = |e: &dyn std::fmt::Display| UsageError(format!("--ca-file {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no CERTIFICATE blocks found"));
    }
    Ok(certs)
}

/// Build a runtime and run the probe.
pub fn main(args: ProbeArgs) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => {
            eprintln!("mailtls probe: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The JSON document printed by `--format json` (see docs/probe-json.md).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonOutput<'a> {
    schema: &'static str,
    time: String,
    summary: TestSummary,
    destinations: &'a [DestinationReport],
}

/// Run `mailtls probe`.
pub async fn run(args: ProbeArgs) -> ExitCode {
    if let Some(format) = args.output {
        let name = if format == Output::Json {
            "json"
        } else {
            "table"
        };
        eprintln!(
            "mailtls probe: warning: --output {name} is deprecated, use --format {name} \
             (--output names a directory in render and crds)"
        );
    }
    let (targets, config) = match args.targets().and_then(|t| Ok((t, args.config()?))) {
        Ok(v) => v,
        Err(UsageError(m)) => {
            eprintln!("mailtls probe: {m}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let prober = match Prober::new(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mailtls probe: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let req = args.requirement();
    let n = targets.len();
    let progress = n > 1 && !args.quiet;
    let mut rx = prober.probe_stream(targets.into_iter().map(|t| (t, req)).collect());
    let mut slots: Vec<Option<DestinationReport>> = vec![None; n];
    let mut done = 0;
    let mut stderr = std::io::stderr();
    while let Some((i, report)) = rx.recv().await {
        done += 1;
        if progress {
            // Progress is best effort: a closed stderr must not stop the probe.
            let _ = writeln!(
                stderr,
                "[{done}/{n}] {}: {} ({} ms)",
                report.destination, report.outcome, report.duration_ms
            );
        }
        if let Some(slot) = slots.get_mut(i) {
            *slot = Some(report);
        }
    }
    let reports: Vec<DestinationReport> = slots.into_iter().flatten().collect();
    let summary = summarize(&reports, &rfc3339_now());
    let text = match args.format.or(args.output).unwrap_or(Output::Table) {
        Output::Json => {
            let doc = JsonOutput {
                schema: "mailtls.io/probe/v1",
                time: summary.time.clone(),
                summary: summary.clone(),
                destinations: &reports,
            };
            match serde_json::to_string_pretty(&doc) {
                Ok(s) => s + "\n",
                Err(e) => {
                    eprintln!("mailtls probe: cannot encode JSON: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Output::Table => render_table(&reports, &summary, std::io::stdout().is_terminal()),
    };
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    if reports.iter().all(DestinationReport::passed) && reports.len() == n {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// The table: one row per destination, its hosts and warnings indented below.
pub fn render_table(reports: &[DestinationReport], summary: &TestSummary, color: bool) -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "DESTINATION".into(),
        "RESULT".into(),
        "HOST".into(),
        "TLS".into(),
        "CERT".into(),
    ]];
    let mut details: Vec<(String, Vec<String>)> = vec![("DETAIL".into(), Vec::new())];
    for r in reports {
        let host = r.main_host();
        let tls = host
            .and_then(|h| {
                h.tls
                    .as_ref()
                    .map(|t| t.version.clone())
                    .or(h.legacy_tls.clone())
            })
            .unwrap_or_else(|| "-".into());
        let cert = host
            .and_then(|h| h.tls.as_ref()?.chain.days_left)
            .map(|d| format!("{d}d"))
            .unwrap_or_else(|| "-".into());
        rows.push([
            r.destination.clone(),
            r.outcome.as_str().to_string(),
            host.map(|h| h.host.clone()).unwrap_or_else(|| "-".into()),
            tls,
            cert,
        ]);
        let mut extra: Vec<String> = r
            .hosts
            .iter()
            .filter(|h| Some(h.host.as_str()) != host.map(|m| m.host.as_str()))
            .map(|h| format!("{} {}: {}", h.host, h.outcome, h.message))
            .collect();
        if matches!(
            r.decided_by,
            crate::probe::DecidedBy::MtaSts | crate::probe::DecidedBy::Dane
        ) {
            extra.push(format!("decided by {}", r.decided_by.as_str()));
        }
        extra.extend(r.warnings.iter().map(|w| format!("warning: {w}")));
        details.push((r.message.clone(), extra));
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, (row, (detail, extra))) in rows.iter().zip(&details).enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let padded = format!("{cell:<w$}  ", w = widths[c]);
            if color && c == 1 && i > 0 {
                let code = if reports[i - 1].passed { "32" } else { "31" };
                out.push_str(&format!("\x1b[{code}m{padded}\x1b[0m"));
            } else {
                out.push_str(&padded);
            }
        }
        out.push_str(detail);
        out.push('\n');
        for e in extra {
            out.push_str("    ");
            out.push_str(e);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "\n{} destination(s): {} passed, {} failed, {} with warnings\n",
        summary.destinations, summary.passed, summary.failed, summary.warnings
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        for bad in ["", "0s", "s", "10h", "-1s", "11m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(parse_tls_version("1.3").unwrap(), TlsVersion::V1_3);
        assert_eq!(parse_tls_version("TLSv1.2").unwrap(), TlsVersion::V1_2);
        assert!(parse_tls_version("1.4").is_err());
    }
}
