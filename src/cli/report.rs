use crate::observe::follow::for_each_line;
use crate::observe::tlsrpt::Collector;
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

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
    after_help = "Counts, from the mail log, the TLS sessions of one UTC day to one recipient \
domain (the policy domain): each delivery over TLS is a successful session, each delivery \
attempt refused for TLS a failed one, grouped by RFC 8460 result type and receiving host. The \
policy type is no-policy-found: the requirement is this relay's own policy. Lines without a \
year (Postfix's own log file) are taken as UTC and as the latest such date that is not in the \
future. Without --output-dir the JSON goes to standard output; with it, the gzip'd file named \
as RFC 8460 section 5.3 says.\n\nExample:\n  mailtls report tls-rpt /var/log/mail.log \
--domain partner.example --day 2026-12-01 \\\n    --organization \"Example Corp\" --contact \
tls-reports@corp.example --output-dir reports/"
)]
pub struct TlsRptArgs {
    /// Mail log files, read in order (include the one rotated after the day).
    #[arg(required = true, value_name = "LOG")]
    logs: Vec<PathBuf>,
    /// The policy domain: the recipient domain reported on.
    #[arg(long, value_name = "DOMAIN")]
    domain: String,
    /// The UTC day reported on, YYYY-MM-DD (default: yesterday).
    #[arg(long, value_name = "DATE")]
    day: Option<String>,
    /// The reporting organisation's name.
    #[arg(long, value_name = "NAME")]
    organization: String,
    /// Where the recipient can reach the reporting organisation (an email address or URI);
    /// its domain names the report file.
    #[arg(long, value_name = "CONTACT")]
    contact: String,
    /// Write the gzip'd report into this directory instead of printing it.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> ExitCode {
    match args.kind {
        ReportKind::TlsRpt(args) => tls_rpt(args),
    }
}

fn tls_rpt(args: TlsRptArgs) -> ExitCode {
    let now = crate::observe::follow::now();
    let start = match day_start(args.day.as_deref(), now) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: --day: {e}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let domain = match crate::policy::entry::normalize_domain(&args.domain, 2) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: --domain {:?}: {e}", args.domain);
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let mut collector = Collector::new(&domain, start);
    for log in &args.logs {
        let read = for_each_line(log, |line| collector.feed(line.trim_end(), now));
        if let Err(e) = read {
            eprintln!("error: cannot read {}: {e}", log.display());
            return ExitCode::from(super::EXIT_INVALID);
        }
    }
    let report = collector.report(&args.organization, &args.contact);
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    let Some(dir) = args.output_dir else {
        println!("{json}");
        return ExitCode::SUCCESS;
    };
    let sender = args
        .contact
        .rsplit('@')
        .next()
        .unwrap_or(&args.contact)
        .trim_start_matches("mailto:")
        .to_string();
    let path = dir.join(collector.file_name(&sender));
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path)?,
            flate2::Compression::default(),
        );
        gz.write_all(json.as_bytes())?;
        gz.finish().map(|_| ())
    });
    match written {
        Ok(()) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", path.display());
            ExitCode::FAILURE
        }
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
