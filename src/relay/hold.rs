//! Holding delivery until a policy is in force (edge). A relay pod that starts without a
//! policy it can apply (none published yet, or the published one refused) runs on the base
//! configuration, which makes no TLS mandatory. It may still accept mail (direct clients,
//! the queue volume of the previous pod), so `relay-init` sets `defer_transports` to every
//! SMTP/LMTP delivery service: mail is queued, never sent. Every apply clears it (the agent
//! owns the parameter) and flushes the queue under the new policy.

use super::Paths;
use super::install::run_checked;
use super::seed::set_params;
use std::process::Command;

/// The Postfix parameter that holds delivery through the named master.cf services.
pub const PARAM: &str = "defer_transports";

/// The delivery services of a `postconf -M` listing: `unix` services running the SMTP or
/// LMTP client (Debian's `smtp` and `relay`, or whatever the image defines).
pub fn delivery_services(postconf_m: &str) -> Vec<String> {
    let mut out: Vec<String> = postconf_m
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [name, "unix", _, _, _, _, _, "smtp" | "lmtp", ..] => Some(name.to_string()),
                _ => None,
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Hold delivery through every delivery service of the live configuration; returns them.
pub fn hold(paths: &Paths) -> Result<Vec<String>, String> {
    let services = delivery_services(&run_checked(
        Command::new("postconf")
            .arg("-c")
            .arg(&paths.postfix_dir)
            .arg("-M"),
        false,
    )?);
    if services.is_empty() {
        return Err(format!(
            "{}/master.cf defines no SMTP or LMTP delivery service to hold",
            paths.postfix_dir.display()
        ));
    }
    set_params(paths, &[format!("{PARAM}={}", services.join(" "))])?;
    Ok(services)
}

/// Whether the live configuration holds delivery. An unreadable configuration counts as
/// held, so a caller that would release mail does not.
pub fn is_held(paths: &Paths) -> bool {
    run_checked(
        Command::new("postconf")
            .arg("-c")
            .arg(&paths.postfix_dir)
            .args(["-h", PARAM]),
        false,
    )
    .map_or(true, |value| !value.trim().is_empty())
}

/// Try every queued message now (`postqueue -f`): mail held before the first apply should
/// not wait for its next retry time.
pub fn flush(paths: &Paths) -> Result<(), String> {
    run_checked(
        Command::new("postqueue")
            .arg("-c")
            .arg(&paths.postfix_dir)
            .arg("-f"),
        true,
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unix_smtp_and_lmtp_clients_are_delivery_services() {
        let listing = "\
smtp       inet  n       -       y       -       -       smtpd
pickup     unix  n       -       y       60      1       pickup
smtp       unix  -       -       y       -       -       smtp
relay      unix  -       -       y       -       -       smtp -o syslog_name=postfix/$service_name
lmtp       unix  -       -       y       -       -       lmtp
local      unix  -       n       n       -       -       local
mailtls-gw unix  -       -       n       -       -       smtp -o smtp_tls_security_level=secure
";
        assert_eq!(
            delivery_services(listing),
            ["lmtp", "mailtls-gw", "relay", "smtp"]
        );
        assert!(delivery_services("").is_empty());
    }
}
