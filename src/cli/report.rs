use super::probe::parse_duration;
use crate::observe::follow::for_each_line;
use crate::observe::send::{SendConfig, Sender};
use crate::observe::tlsrpt::{self, Collector, Reporter};
use crate::probe::{AddressPolicy, Cidr};
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(subcommand)]
    kind: ReportKind,
}

#[derive(Subcommand, Debug)]
enum ReportKind {
    /// An SMTP TLS Reporting (RFC 8460) aggregate report for one day and one recipient
    /// domain, from Postfix's mail log.
    TlsRpt(TlsRptArgs),
}

#[derive(Args, Debug)]
#[command(
    after_help = "Counts, from the mail log, the TLS sessions of one UTC day to a recipient \
domain (the policy domain): each delivery over TLS is a successful session, each delivery \
attempt refused for TLS a failed one, grouped by RFC 8460 result type and receiving host. The \
policy type is no-policy-found: the requirement is this relay's own policy. Lines without a \
year (Postfix's own log file) are taken as UTC and as the latest such date that is not in the \
future.\n\nWithout --output-dir or --send the JSON of the --domain's report goes to standard \
output. With --output-dir, each report is written gzip'd, named as RFC 8460 section 5.1 says. \
With --send, each report goes where its domain's _smtp._tls TXT record asks: POSTed to https \
URIs (only to public addresses unless --allow-address), mailed through --smtp (the relay) to \
mailto URIs, from the --contact address. Domains without such a record get nothing. Without \
--domain, every domain with a TLS session that day is reported.\n\nExamples:\n  mailtls report \
tls-rpt /var/log/mail.log --domain partner.example --day 2026-12-01 \\\n    --organization \
\"Example Corp\" --contact tls-reports@corp.example --output-dir reports/\n  mailtls report \
tls-rpt /var/log/mail.log.old /var/log/mail.log --send \\\n    --organization \"Example Corp\" \
--contact tls-reports@corp.example"
)]
pub struct TlsRptArgs {
    /// Mail log files, read in order (include the one rotated after the day).
    #[arg(required = true, value_name = "LOG")]
    logs: Vec<PathBuf>,
    /// A policy domain (recipient domain) to report on; repeat for more. Default with
    /// --output-dir or --send: every domain with a TLS session that day.
    #[arg(long, value_name = "DOMAIN")]
    domain: Vec<String>,
    /// The UTC day reported on, YYYY-MM-DD (default: yesterday).
    #[arg(long, value_name = "DATE")]
    day: Option<String>,
    /// The reporting organisation's name.
    #[arg(long, value_name = "NAME")]
    organization: String,
    /// Where the recipient can reach the reporting organisation (an email address or URI);
    /// its domain names the report file. Mailed reports come from it: with --send it must be
    /// an email address.
    #[arg(long, value_name = "CONTACT")]
    contact: String,
    /// Write the gzip'd reports into this directory instead of printing one.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Send each report to the rua of its domain's _smtp._tls TXT record.
    #[arg(long)]
    send: bool,
    #[command(flatten)]
    how: SendArgs,
}

/// How reports are sent (`report tls-rpt --send`).
#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// SMTP server that takes mailed reports: the relay.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:25")]
    smtp: SocketAddr,
    /// DNS server for the _smtp._tls and address lookups instead of the system resolver.
    #[arg(long, value_name = "IP:PORT")]
    resolver: Option<SocketAddr>,
    /// Extra trusted CA certificates (PEM) for HTTPS report endpoints.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Also POST to HTTPS endpoints in this range, though loopback, private or reserved.
    #[arg(long, value_name = "CIDR")]
    allow_address: Vec<Cidr>,
    /// Time limit of each step of a delivery.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    send_timeout: Duration,
}

impl SendArgs {
    pub fn config(&self) -> Result<SendConfig, String> {
        send_config(
            self.resolver,
            self.ca_file.as_deref(),
            &self.allow_address,
            self.smtp,
            self.send_timeout,
        )
    }
}

/// The sending configuration; the CA file read now.
pub fn send_config(
    resolver: Option<SocketAddr>,
    ca_file: Option<&Path>,
    allow: &[Cidr],
    smtp: SocketAddr,
    timeout: Duration,
) -> Result<SendConfig, String> {
    let extra_roots = match ca_file {
        Some(path) => super::probe::read_pem_certs(path).map_err(|e| e.0)?,
        None => Vec::new(),
    };
    Ok(SendConfig {
        resolver,
        extra_roots,
        addresses: AddressPolicy::public_only(allow.to_vec(), Vec::new()),
        smtp,
        timeout,
    })
}

pub fn run(args: ReportArgs) -> ExitCode {
    match args.kind {
        ReportKind::TlsRpt(args) => tls_rpt(args),
    }
}

fn tls_rpt(args: TlsRptArgs) -> ExitCode {
    let usage = |e: String| {
        eprintln!("error: {e}");
        ExitCode::from(super::EXIT_USAGE)
    };
    let now = crate::observe::follow::now();
    let start = match day_start(args.day.as_deref(), now) {
        Ok(s) => s,
        Err(e) => return usage(format!("--day: {e}")),
    };
    let mut domains = Vec::new();
    for d in &args.domain {
        match crate::policy::entry::normalize_domain(d, 2) {
            Ok(d) => domains.push(d),
            Err(e) => return usage(format!("--domain {d:?}: {e}")),
        }
    }
    let to_stdout = args.output_dir.is_none() && !args.send;
    if to_stdout && domains.len() != 1 {
        return usage(
            "name one --domain to print its report, or use --output-dir or --send".into(),
        );
    }
    if args.send && crate::observe::send::from_address(&args.contact).is_none() {
        return usage(format!(
            "--contact {:?}: --send mails reports from it, so it must be an email address",
            args.contact
        ));
    }
    let sender = match args.send.then(|| args.how.config()).transpose() {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    let mut collector = Collector::new(start);
    for log in &args.logs {
        let read = for_each_line(log, |line| collector.feed(line.trim_end(), now));
        if let Err(e) = read {
            eprintln!("error: cannot read {}: {e}", log.display());
            return ExitCode::from(super::EXIT_INVALID);
        }
    }
    let day = collector.day;
    if domains.is_empty() {
        domains = day.domains().into_iter().map(str::to_string).collect();
    }
    let reporter = Reporter {
        organization: args.organization,
        contact: args.contact,
        instance: None,
    };
    if to_stdout {
        let report = day.report(&domains[0], &reporter);
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let mut failed = false;
    if let Some(dir) = &args.output_dir {
        for domain in &domains {
            let path = dir.join(day.file_name(domain, &reporter));
            let written = std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&path, tlsrpt::gzip(&day.report(domain, &reporter))));
            match written {
                Ok(()) => println!("{}", path.display()),
                Err(e) => {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    failed = true;
                }
            }
        }
    }
    if let Some(config) = sender {
        crate::probe::tls::install_crypto_provider();
        let sent = super::runtime().map(|rt| {
            rt.block_on(async {
                let sender = Sender::new(config)?;
                let mut all_ok = true;
                for domain in &domains {
                    let sent = sender.send(&day, domain, &reporter, now).await;
                    all_ok &= sent.ok();
                    println!("{domain}: {sent}");
                }
                Ok::<bool, String>(all_ok)
            })
        });
        match sent {
            Ok(Ok(all_ok)) => failed |= !all_ok,
            Ok(Err(e)) => return usage(e),
            Err(code) => return code,
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Unix seconds of the UTC midnight starting `day` (default: yesterday's).
fn day_start(day: Option<&str>, now: i64) -> Result<i64, String> {
    use k8s_openapi::jiff::{civil::Date, tz::TimeZone};
    let date = match day {
        Some(d) => d.parse::<Date>().map_err(|e| format!("{d:?}: {e}"))?,
        None => k8s_openapi::jiff::Timestamp::from_second(now - 86_400)
            .map_err(|e| e.to_string())?
            .to_zoned(TimeZone::UTC)
            .date(),
    };
    date.to_zoned(TimeZone::UTC)
        .map(|z| z.timestamp().as_second())
        .map_err(|e| e.to_string())
}
