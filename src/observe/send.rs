//! Sending TLS-RPT reports (edge): the policy domain's `_smtp._tls` TXT record says where
//! (RFC 8460 §3); each `rua` gets the gzip'd report, POSTed over HTTPS (§5.4) or mailed
//! through the relay (§5.3). Nothing is retried here: a failed delivery is reported to the
//! caller, and mail handed to the relay is retried by Postfix.

use super::tlsrpt::{self, Day, Reporter, Rua};
use crate::probe::dns::Dns;
use crate::probe::smtp::{SmtpConn, SmtpLimits};
use crate::probe::{AddressPolicy, tls};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How reports are sent.
#[derive(Clone, Debug)]
pub struct SendConfig {
    /// DNS server for the `_smtp._tls` and address lookups (default: the system's).
    pub resolver: Option<SocketAddr>,
    /// Trusted in addition to the webpki roots for HTTPS endpoints.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Where HTTPS endpoints may be: a record anyone publishes must not make the relay
    /// POST into the cluster.
    pub addresses: AddressPolicy,
    /// The SMTP server that takes mailed reports (the relay itself).
    pub smtp: SocketAddr,
    /// Time limit of each step (connect, each reply, the whole POST).
    pub timeout: Duration,
}

/// What happened to one domain's report.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// The domain publishes no reporting policy: nothing sent.
    NoPolicy,
    /// The record could not be read or used.
    Unusable(String),
    /// Each `rua` and how its delivery went.
    To(Vec<(String, Result<(), String>)>),
}

impl Sent {
    /// Whether every delivery tried went through.
    pub fn ok(&self) -> bool {
        match self {
            Sent::NoPolicy => true,
            Sent::Unusable(_) => false,
            Sent::To(to) => to.iter().all(|(_, r)| r.is_ok()),
        }
    }
}

impl std::fmt::Display for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sent::NoPolicy => write!(f, "no TLSRPT record, not sent"),
            Sent::Unusable(e) => write!(f, "not sent: {e}"),
            Sent::To(to) => {
                let parts: Vec<String> = to
                    .iter()
                    .map(|(rua, r)| match r {
                        Ok(()) => format!("sent to {rua}"),
                        Err(e) => format!("{rua} failed: {e}"),
                    })
                    .collect();
                write!(f, "{}", parts.join("; "))
            }
        }
    }
}

pub struct Sender {
    dns: Dns,
    tls: Arc<ClientConfig>,
    config: SendConfig,
}

/// Most bytes of an HTTPS endpoint's answer read (only its status line matters).
const MAX_RESPONSE_BYTES: usize = 16 * 1024;

impl Sender {
    pub fn new(config: SendConfig) -> Result<Sender, String> {
        let dns = Dns::new(config.resolver, config.timeout).map_err(|e| e.to_string())?;
        let tls = tls::validating_config_with(&config.extra_roots)?;
        Ok(Sender { dns, tls, config })
    }

    /// The `rua` URIs `domain` publishes (empty: none).
    pub async fn rua(&self, domain: &str) -> Result<Vec<Rua>, String> {
        let records = self
            .dns
            .txt(&format!("_smtp._tls.{domain}"))
            .await
            .map_err(|e| e.to_string())?;
        tlsrpt::parse_record(&records)
    }

    /// Send `day`'s report on `domain` wherever the domain asks; `now` dates the mail.
    pub async fn send(&self, day: &Day, domain: &str, reporter: &Reporter, now: i64) -> Sent {
        let ruas = match self.rua(domain).await {
            Ok(r) if r.is_empty() => return Sent::NoPolicy,
            Ok(r) => r,
            Err(e) => return Sent::Unusable(e),
        };
        let report = day.report(domain, reporter);
        let gz = tlsrpt::gzip(&report);
        let name = day.file_name(domain, reporter);
        let mut out = Vec::new();
        for rua in ruas {
            let result = match &rua {
                Rua::Https { host, port, path } => self.post(host, *port, path, &gz).await,
                Rua::Mail(to) => match from_address(&reporter.contact) {
                    Some(from) => {
                        let text = tlsrpt::mail(&report, &name, &gz, from, to, now);
                        self.mail(reporter.submitter(), from, to, &text).await
                    }
                    None => Err("the contact is no email address to mail from".to_string()),
                },
            };
            out.push((rua.to_string(), result));
        }
        Sent::To(out)
    }

    /// POST the report to `https://host:port/path`; any 2xx answer is success.
    async fn post(&self, host: &str, port: u16, path: &str, body: &[u8]) -> Result<(), String> {
        let limit = self.config.timeout * 2;
        tokio::time::timeout(limit, self.post_inner(host, port, path, body))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
    }

    async fn post_inner(
        &self,
        host: &str,
        port: u16,
        path: &str,
        body: &[u8],
    ) -> Result<(), String> {
        let addresses = self.dns.addresses(host).await.map_err(|e| e.to_string())?;
        // Only addresses the policy allows, so a record cannot point the relay inward.
        let mut refused = Vec::new();
        let allowed: Vec<_> = addresses
            .into_iter()
            .filter(|ip| match self.config.addresses.check(*ip) {
                Ok(()) => true,
                Err(r) => {
                    refused.push(format!("{} ({})", r.address, r.class));
                    false
                }
            })
            .collect();
        let Some(ip) = allowed.first() else {
            return Err(if refused.is_empty() {
                format!("{host} has no address")
            } else {
                format!(
                    "{host} has no address it may be sent to: refused {}",
                    refused.join(", ")
                )
            });
        };
        let addr = SocketAddr::new(*ip, port);
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {addr}: {e}"))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mailtls\r\nContent-Type: application/tlsrpt+gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes())
            .await
            .and(tls.write_all(body).await)
            .and(tls.flush().await)
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 2048];
        while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < MAX_RESPONSE_BYTES {
            match tls.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(e) if answer.is_empty() => return Err(format!("read from {addr}: {e}")),
                Err(_) => break,
            }
        }
        let status = String::from_utf8_lossy(&answer);
        let status = status.lines().next().unwrap_or("").trim();
        match status.split_whitespace().nth(1) {
            Some(code) if status.starts_with("HTTP/1.") && code.starts_with('2') => Ok(()),
            _ => Err(format!("answered {status:?}")),
        }
    }

    /// Mail `text` from `from` to `to` through the SMTP server of the configuration.
    async fn mail(&self, helo: &str, from: &str, to: &str, text: &str) -> Result<(), String> {
        let smtp = self.config.smtp;
        let step = self.config.timeout;
        let tcp = tokio::time::timeout(step, TcpStream::connect(smtp))
            .await
            .map_err(|_| format!("connect to {smtp}: no answer within {step:?}"))?
            .map_err(|e| format!("connect to {smtp}: {e}"))?;
        let mut conn = SmtpConn::new(tcp, SmtpLimits::default());
        let expect = |what: &str, want: u16, r: Result<crate::probe::smtp::Reply, _>| match r {
            Ok(reply) if reply.code == want || (want == 250 && reply.is_positive()) => Ok(()),
            Ok(reply) => Err(format!("{what} at {smtp}: {}", reply.summary())),
            Err(e) => Err(format!("{what} at {smtp}: {e}")),
        };
        expect("greeting", 220, conn.read_reply(step).await)?;
        expect(
            "EHLO",
            250,
            conn.command(&format!("EHLO {helo}"), step).await,
        )?;
        expect(
            "MAIL FROM",
            250,
            conn.command(&format!("MAIL FROM:<{from}>"), step).await,
        )?;
        expect(
            "RCPT TO",
            250,
            conn.command(&format!("RCPT TO:<{to}>"), step).await,
        )?;
        expect("DATA", 354, conn.command("DATA", step).await)?;
        // CRLF line ends already; a line starting with a dot gets another (RFC 5321 §4.5.2).
        let stuffed = text.replace("\r\n.", "\r\n..");
        let mut stream = conn.into_inner();
        tokio::time::timeout(step, async {
            if stuffed.starts_with('.') {
                stream.write_all(b".").await?;
            }
            stream.write_all(stuffed.as_bytes()).await?;
            stream.write_all(b".\r\n").await?;
            stream.flush().await
        })
        .await
        .map_err(|_| format!("send to {smtp}: timed out"))?
        .map_err(|e| format!("send to {smtp}: {e}"))?;
        let mut conn = SmtpConn::new(stream, SmtpLimits::default());
        expect("end of data", 250, conn.read_reply(step).await)?;
        let _ = conn.command("QUIT", step).await;
        Ok(())
    }
}

/// The address in `mailto:a@b` or `a@b`.
pub fn from_address(contact: &str) -> Option<&str> {
    let a = contact.trim_start_matches("mailto:");
    (a.matches('@').count() == 1 && !a.contains(['<', '>', ' ', '\r', '\n', ':', '/'])).then_some(a)
}

/// The day whose reports are due at `now`: yesterday's, once `after` seconds of today have
/// passed, unless it was sent already (`last_sent`: the start of the last day sent).
pub fn due(now: i64, after: i64, last_sent: Option<i64>) -> Option<i64> {
    let today = Day::start_of(now);
    let yesterday = today - tlsrpt::DAY;
    (now >= today + after && last_sent.is_none_or(|l| l < yesterday)).then_some(yesterday)
}

/// Seconds from `now` until reports may next fall due.
pub fn until_next(now: i64, after: i64) -> i64 {
    let today = Day::start_of(now) + after;
    if now < today {
        today - now
    } else {
        today + tlsrpt::DAY - now
    }
}

/// Daily sending by the relay agent.
pub struct Daily {
    pub sender: Sender,
    pub reporter: Reporter,
    /// Seconds after UTC midnight when the previous day's reports go.
    pub after: i64,
    /// Keeps the start of the last day sent, so a restart does not send it again.
    pub state: std::path::PathBuf,
}

/// Domains whose reports are sent at once.
const SENDING_AT_ONCE: usize = 8;

impl Daily {
    /// Forever: when a day's reports fall due, send them (every domain with a TLS session
    /// that day) and remember the day.
    pub async fn run(self, observed: super::Shared) {
        // A day's counts are complete once the log present at start has been read.
        for waited in 0.. {
            if observed.lock().is_ok_and(|o| o.caught_up()) {
                break;
            }
            if waited == 300 {
                tracing::warn!(
                    "the mail log is still being read after 5 minutes; TLS reports may count too little"
                );
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut first = true;
        loop {
            let now = super::follow::now();
            let last = std::fs::read_to_string(&self.state)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok());
            if let Some(start) = due(now, self.after, last) {
                let day = observed.lock().ok().and_then(|o| o.day(start).cloned());
                let day = day.unwrap_or_else(|| Day::new(start));
                self.send_day(&day, now).await;
                if let Err(e) = std::fs::write(&self.state, format!("{start}\n")) {
                    tracing::error!(state = %self.state.display(), "cannot keep the last day of TLS reports sent: {e}");
                }
            } else if first && let Some(last) = last {
                let day = crate::probe::rfc3339(last);
                tracing::info!(
                    day = day.get(..10).unwrap_or_default(),
                    "TLS reports already sent"
                );
            }
            first = false;
            // Woken at least hourly, so a changed clock is noticed.
            let wait = until_next(super::follow::now(), self.after).clamp(1, 3600);
            tokio::time::sleep(Duration::from_secs(wait.unsigned_abs())).await;
        }
    }

    async fn send_day(&self, day: &Day, now: i64) {
        use futures::StreamExt as _;
        let date = crate::probe::rfc3339(day.start());
        let date = date.get(..10).unwrap_or_default();
        let domains: Vec<String> = day.domains().into_iter().map(str::to_string).collect();
        tracing::info!(
            day = date,
            domains = domains.len(),
            dropped = day.dropped(),
            "sending TLS reports"
        );
        let results: Vec<(String, Sent)> = futures::stream::iter(domains)
            .map(|domain| async move {
                let sent = self.sender.send(day, &domain, &self.reporter, now).await;
                (domain, sent)
            })
            .buffer_unordered(SENDING_AT_ONCE)
            .collect()
            .await;
        let (mut sent, mut failed) = (0, 0);
        for (domain, result) in results {
            match &result {
                Sent::NoPolicy => {}
                r if r.ok() => {
                    sent += 1;
                    tracing::info!(day = date, domain, "TLS report: {result}");
                }
                _ => {
                    failed += 1;
                    tracing::warn!(day = date, domain, "TLS report: {result}");
                }
            }
        }
        tracing::info!(day = date, sent, failed, "TLS reports done");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY0: i64 = 1_795_996_800; // 2026-11-30T00:00:00Z

    #[test]
    fn yesterday_is_due_once_after_the_hour() {
        let hour = 3600;
        assert_eq!(due(DAY0 + 10, hour, None), None);
        assert_eq!(due(DAY0 + hour, hour, None), Some(DAY0 - 86_400));
        assert_eq!(
            due(DAY0 + hour, hour, Some(DAY0 - 2 * 86_400)),
            Some(DAY0 - 86_400)
        );
        assert_eq!(due(DAY0 + hour, hour, Some(DAY0 - 86_400)), None);
        assert_eq!(due(DAY0 + 86_399, 0, Some(DAY0 - 86_400)), None);
        assert_eq!(due(DAY0 + 86_400, 0, Some(DAY0 - 86_400)), Some(DAY0));
        assert_eq!(until_next(DAY0 + 10, hour), hour - 10);
        assert_eq!(until_next(DAY0 + hour, hour), 86_400);
        assert_eq!(until_next(DAY0 + hour + 1, hour), 86_399);
    }

    #[test]
    fn contacts_to_mail_from() {
        assert_eq!(
            from_address("mailto:tls@corp.example"),
            Some("tls@corp.example")
        );
        assert_eq!(from_address("tls@corp.example"), Some("tls@corp.example"));
        for bad in [
            "https://corp.example/tls",
            "a@b@c",
            "<a@b>",
            "a b@c",
            "corp",
        ] {
            assert_eq!(from_address(bad), None, "{bad}");
        }
    }
}
