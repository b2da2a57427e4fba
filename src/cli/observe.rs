use crate::observe::Observed;
use crate::observe::follow::{now, read_all};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(
    after_help = "Reads Postfix mail log files (its maillog_file, or syslog's mail.log) and says \
what the relay did with real mail, per recipient domain: messages delivered over TLS by trust \
level (Verified, Trusted, Untrusted, Anonymous) and protocol, delivered in plaintext, and \
bounced or deferred because a TLS requirement was not met, with the most recent TLS failures. \
The TLS lines need smtp_tls_loglevel = 1 or more (mailtls renders it). Local parts of \
addresses are never printed.\n\nExamples:\n  mailtls observe /var/log/mail.log\n  mailtls \
observe /var/log/mail.log.1 /var/log/mail.log --json"
)]
pub struct ObserveArgs {
    /// Log files, read in order.
    #[arg(required = true, value_name = "LOG")]
    logs: Vec<PathBuf>,
    /// Print JSON (per domain, totals and recent failures) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ObserveArgs) -> ExitCode {
    let mut observed = Observed::default();
    let now = now();
    for log in &args.logs {
        if let Err(e) = read_all(log, &mut observed, now) {
            eprintln!("error: cannot read {}: {e}", log.display());
            return ExitCode::from(super::EXIT_INVALID);
        }
    }
    let domains = observed.between(i64::MIN, i64::MAX);
    if args.json {
        let body = serde_json::json!({
            "summary": observed.summary(),
            "perDomain": domains,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<40} {:>8} {:>8} {:>9} {:>9} {:>9} {:>11} {:>12}",
        "DOMAIN",
        "VERIFIED",
        "TRUSTED",
        "UNTRUSTED",
        "ANONYMOUS",
        "PLAINTEXT",
        "TLS-BOUNCED",
        "TLS-DEFERRED"
    );
    for d in &domains {
        let tls = d.counts.tls;
        println!(
            "{:<40} {:>8} {:>8} {:>9} {:>9} {:>9} {:>11} {:>12}",
            d.domain,
            tls.verified,
            tls.trusted,
            tls.untrusted,
            tls.anonymous,
            d.counts.plaintext,
            d.counts.tls_bounced,
            d.counts.tls_deferred
        );
    }
    let failures: Vec<_> = observed.recent_failures().collect();
    if !failures.is_empty() {
        println!("\nRecent TLS failures:");
        for f in failures {
            println!(
                "  {} {} {} via {}: {} ({})",
                crate::probe::rfc3339(f.at),
                f.queue_id,
                f.domain,
                f.hop,
                f.reason,
                if f.bounced { "bounced" } else { "deferred" }
            );
        }
    }
    eprintln!(
        "{} lines read, {} domains",
        observed.lines(),
        observed.domains()
    );
    ExitCode::SUCCESS
}
