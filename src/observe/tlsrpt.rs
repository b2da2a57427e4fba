//! SMTP TLS Reporting (RFC 8460) aggregate reports (pure): the TLS sessions of one UTC day
//! per policy domain (a recipient domain), those that succeeded and those that failed grouped
//! by result type and receiving host; the `_smtp._tls` record that says where reports go; and
//! the report as the RFC's mail.
//!
//! Counts are messages as Postfix logs them: each delivery over TLS is one successful
//! session, each delivery attempt refused for TLS one failed session. The policy type is
//! `no-policy-found`: the requirement came from this relay's own policy, not from an MTA-STS
//! or DANE policy the domain published.

use super::parse::{Delivery, Sessions, timestamp};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Most policy domains kept for one day (the relay agent keeps two days in memory); more
/// are counted in [`Day::dropped`] and not reported.
pub const MAX_DOMAINS: usize = 100_000;

/// Most failure groups (result type, host, reason) kept per domain and day; later ones are
/// counted in one group per result type without host or reason.
const MAX_FAILURE_GROUPS: usize = 32;

/// Seconds in a UTC day.
pub const DAY: i64 = 86_400;

/// The RFC's report, serialised with its member names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub organization_name: String,
    pub date_range: DateRange,
    pub contact_info: String,
    pub report_id: String,
    pub policies: Vec<PolicyReport>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DateRange {
    pub start_datetime: String,
    pub end_datetime: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyReport {
    pub policy: Policy,
    pub summary: Summary,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failure_details: Vec<FailureDetail>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Policy {
    pub policy_type: &'static str,
    pub policy_domain: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Summary {
    pub total_successful_session_count: u64,
    pub total_failure_session_count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FailureDetail {
    pub result_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiving_mx_hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<String>,
    pub failed_session_count: u64,
    /// Postfix's own words.
    pub failure_reason_code: String,
}

/// The RFC 8460 result type of a Postfix TLS failure reason.
pub fn result_type(reason: &str) -> &'static str {
    if reason.starts_with("TLS is required, but ") {
        "starttls-not-supported"
    } else if reason.starts_with("Server certificate not trusted") {
        "certificate-not-trusted"
    } else if reason.starts_with("Server certificate not verified")
        || reason.starts_with("Server hostname verification failed")
    {
        "certificate-host-mismatch"
    } else {
        // "Cannot start TLS: handshake failure" and anything else.
        "validation-failure"
    }
}

/// Who sends the reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reporter {
    pub organization: String,
    /// An email address or URI where recipients reach the organisation.
    pub contact: String,
    /// Names this sender among several of the organisation (a relay pod), so report ids
    /// and file names stay unique.
    pub instance: Option<String>,
}

impl Reporter {
    /// The submitter's domain: the contact's, as RFC 8460 §5.3 names it.
    pub fn submitter(&self) -> &str {
        let c = self.contact.trim_start_matches("mailto:");
        let c = c.split_once("://").map_or(c, |(_, rest)| rest);
        let c = c.rsplit('@').next().unwrap_or(c);
        c.split(['/', ':', '?']).next().unwrap_or(c)
    }
}

/// One failure group: (result type, receiving host, receiving address, reason).
type FailureKey = (&'static str, Box<str>, Box<str>, Box<str>);

#[derive(Clone, Debug, Default)]
struct DomainDay {
    successful: u64,
    failures: BTreeMap<FailureKey, u64>,
}

/// One UTC day of TLS sessions, per policy domain.
#[derive(Clone, Debug)]
pub struct Day {
    start: i64,
    domains: HashMap<Box<str>, DomainDay>,
    dropped: u64,
}

impl Day {
    /// The day starting at `start` (Unix seconds, a UTC midnight).
    pub fn new(start: i64) -> Day {
        Day {
            start,
            domains: HashMap::new(),
            dropped: 0,
        }
    }

    /// The UTC midnight that starts the day holding `at`.
    pub fn start_of(at: i64) -> i64 {
        at - at.rem_euclid(DAY)
    }

    pub fn start(&self) -> i64 {
        self.start
    }

    /// Whether `at` falls in this day.
    pub fn holds(&self, at: i64) -> bool {
        (self.start..self.start + DAY).contains(&at)
    }

    /// Count a delivery of this day: a TLS session or a failed one; others are no TLS
    /// session and are left out.
    pub fn add(&mut self, delivery: &Delivery) {
        let (domain, failure) = match delivery {
            Delivery::Tls { domain, .. } => (domain, None),
            Delivery::TlsFailure {
                domain,
                hop,
                reason,
                ..
            } => (domain, Some((hop, reason))),
            Delivery::Plaintext { .. } => return,
        };
        if self.domains.len() >= MAX_DOMAINS && !self.domains.contains_key(domain.as_str()) {
            self.dropped += 1;
            return;
        }
        let d = self.domains.entry(domain.as_str().into()).or_default();
        let Some((hop, reason)) = failure else {
            d.successful += 1;
            return;
        };
        let kind = result_type(reason);
        let (host, ip) = split_hop(hop);
        let mut key: FailureKey = (kind, host.into(), ip.into(), (*reason).into());
        if d.failures.len() >= MAX_FAILURE_GROUPS && !d.failures.contains_key(&key) {
            key = (kind, "".into(), "".into(), "".into());
        }
        *d.failures.entry(key).or_default() += 1;
    }

    /// Policy domains with at least one session, sorted.
    pub fn domains(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.domains.keys().map(|d| &**d).collect();
        out.sort_unstable();
        out
    }

    /// Domains not kept because [`MAX_DOMAINS`] were already.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The report on `domain` (an empty one when it had no session), as `reporter` sends it.
    pub fn report(&self, domain: &str, reporter: &Reporter) -> Report {
        let stamp = crate::probe::rfc3339;
        let empty = DomainDay::default();
        let d = self.domains.get(domain).unwrap_or(&empty);
        let failed: u64 = d.failures.values().sum();
        let instance = reporter
            .instance
            .as_deref()
            .map(|i| format!("_{i}"))
            .unwrap_or_default();
        Report {
            organization_name: reporter.organization.clone(),
            date_range: DateRange {
                start_datetime: stamp(self.start),
                end_datetime: stamp(self.start + DAY - 1),
            },
            contact_info: reporter.contact.clone(),
            report_id: format!(
                "{}_{domain}{instance}@{}",
                stamp(self.start).get(..10).unwrap_or_default(),
                reporter.submitter()
            ),
            policies: vec![PolicyReport {
                policy: Policy {
                    policy_type: "no-policy-found",
                    policy_domain: domain.to_string(),
                },
                summary: Summary {
                    total_successful_session_count: d.successful,
                    total_failure_session_count: failed,
                },
                failure_details: d
                    .failures
                    .iter()
                    .map(|((kind, host, ip, reason), n)| FailureDetail {
                        result_type: kind,
                        receiving_mx_hostname: (!host.is_empty()).then(|| host.to_string()),
                        receiving_ip: (!ip.is_empty()).then(|| ip.to_string()),
                        failed_session_count: *n,
                        failure_reason_code: if reason.is_empty() {
                            "further failures (not listed one by one)".to_string()
                        } else {
                            reason.to_string()
                        },
                    })
                    .collect(),
            }],
        }
    }

    /// The file name RFC 8460 section 5.1 gives the gzip'd report on `domain`.
    pub fn file_name(&self, domain: &str, reporter: &Reporter) -> String {
        let unique = reporter
            .instance
            .as_deref()
            .map(|i| format!("!{i}"))
            .unwrap_or_default();
        format!(
            "{}!{domain}!{}!{}{unique}.json.gz",
            reporter.submitter(),
            self.start,
            self.start + DAY - 1
        )
    }
}

/// Collects one day from log lines (`mailtls report tls-rpt`).
#[derive(Debug)]
pub struct Collector {
    pub day: Day,
    sessions: Sessions,
}

impl Collector {
    /// `day` starts at `start` (Unix seconds, a UTC midnight).
    pub fn new(start: i64) -> Collector {
        Collector {
            day: Day::new(start),
            sessions: Sessions::default(),
        }
    }

    /// Take one line; `now` dates lines that carry no year.
    pub fn feed(&mut self, line: &str, now: i64) {
        // Every line goes through the sessions, so a TLS line just before midnight still
        // pairs with its delivery line.
        let Some(delivery) = self.sessions.classify(line) else {
            return;
        };
        if timestamp(line, now).is_some_and(|at| self.day.holds(at)) {
            self.day.add(&delivery);
        }
    }
}

/// `mx.example.com[192.0.2.1]:25` → (`mx.example.com`, `192.0.2.1`); `none` → empty.
fn split_hop(hop: &str) -> (&str, &str) {
    match hop.split_once('[') {
        Some((host, rest)) => (host, rest.split_once(']').map_or("", |(ip, _)| ip)),
        None => ("", ""),
    }
}

/// Where a policy domain wants its reports (a `rua` URI of its `_smtp._tls` record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rua {
    /// `mailto:`: the report mailed to this address.
    Mail(String),
    /// `https:`: the report POSTed to this URL.
    Https {
        host: String,
        port: u16,
        path: String,
    },
}

impl std::fmt::Display for Rua {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rua::Mail(a) => write!(f, "mailto:{a}"),
            Rua::Https {
                host,
                port: 443,
                path,
            } => write!(f, "https://{host}{path}"),
            Rua::Https { host, port, path } => write!(f, "https://{host}:{port}{path}"),
        }
    }
}

/// Most `rua` URIs used from one record: a record listing more gets its first ones.
const MAX_RUA: usize = 4;

/// The `rua` URIs of a domain's `_smtp._tls` TXT records (RFC 8460 §3). Records not starting
/// with `v=TLSRPTv1` are discarded; unless exactly one is left the domain publishes no
/// reporting policy (`Ok(empty)`). URIs of other schemes are skipped; a record whose URIs
/// are all unusable is an error.
pub fn parse_record(records: &[String]) -> Result<Vec<Rua>, String> {
    let ours: Vec<&String> = records
        .iter()
        .filter(|r| {
            r.strip_prefix("v=TLSRPTv1").is_some_and(|rest| {
                rest.trim_start().is_empty() || rest.trim_start().starts_with(';')
            })
        })
        .collect();
    let [record] = ours.as_slice() else {
        return Ok(Vec::new());
    };
    let mut uris = Vec::new();
    let mut problems = Vec::new();
    for field in record.split(';').map(str::trim).skip(1) {
        let Some(list) = field.strip_prefix("rua=") else {
            continue;
        };
        for uri in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            match parse_uri(uri) {
                Ok(Some(r)) => uris.push(r),
                Ok(None) => {}
                Err(e) => problems.push(e),
            }
        }
    }
    uris.truncate(MAX_RUA);
    if uris.is_empty() {
        return Err(if problems.is_empty() {
            format!("no usable rua in {record:?}")
        } else {
            problems.join("; ")
        });
    }
    Ok(uris)
}

fn parse_uri(uri: &str) -> Result<Option<Rua>, String> {
    let bad = |why: &str| Err(format!("rua {uri:?}: {why}"));
    let (scheme, rest) = uri.split_once(':').unwrap_or(("", uri));
    match scheme.to_ascii_lowercase().as_str() {
        "mailto" => {
            // Characters that would end or change an SMTP command or a header.
            if rest.contains(['?', '<', '>', ' ', '\r', '\n', '\t', '%', ','])
                || rest.matches('@').count() != 1
                || rest.len() > 254
            {
                return bad("not a plain email address");
            }
            Ok(Some(Rua::Mail(rest.to_string())))
        }
        "https" => {
            let Some(rest) = rest.strip_prefix("//") else {
                return bad("no authority");
            };
            let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
            if authority.contains('@') || authority.starts_with('[') {
                return bad("user info and IP literals are not used");
            }
            let (host, port) = match authority.split_once(':') {
                Some((h, p)) => match p.parse::<u16>() {
                    Ok(p) if p > 0 => (h, p),
                    _ => return bad("invalid port"),
                },
                None => (authority, 443),
            };
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            if host.is_empty()
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return bad("invalid host");
            }
            if path.bytes().any(|b| b <= b' ' || b == 0x7f) || path.len() > 2048 {
                return bad("invalid path");
            }
            let path = if path.is_empty() { "/" } else { path };
            let path = if path.starts_with('?') {
                format!("/{path}")
            } else {
                path.to_string()
            };
            Ok(Some(Rua::Https { host, port, path }))
        }
        _ => Ok(None),
    }
}

/// The report mailed as RFC 8460 §5.3 says: a `multipart/report` message with the gzip'd
/// JSON attached. `date` is Unix seconds; CRLF line ends, nothing needing dot-stuffing.
pub fn mail(
    report: &Report,
    file_name: &str,
    gzipped: &[u8],
    from: &str,
    to: &str,
    date: i64,
) -> String {
    use base64::Engine as _;
    let domain = report
        .policies
        .first()
        .map_or("", |p| p.policy.policy_domain.as_str());
    let submitter = from.rsplit('@').next().unwrap_or(from);
    let date = k8s_openapi::jiff::Timestamp::from_second(date)
        .unwrap_or_default()
        .strftime("%a, %d %b %Y %H:%M:%S +0000");
    let boundary = format!("tlsrpt-{:016x}", fnv(report.report_id.as_bytes()));
    let encoded = base64::engine::general_purpose::STANDARD.encode(gzipped);
    let mut body = String::with_capacity(encoded.len() * 78 / 76 + 1024);
    let mut line = |l: &str| {
        body.push_str(l);
        body.push_str("\r\n");
    };
    line(&format!("From: <{from}>"));
    line(&format!("To: <{to}>"));
    line(&format!(
        "Subject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{}>",
        report.report_id
    ));
    line(&format!("Date: {date}"));
    line(&format!("Message-ID: <{}>", report.report_id));
    line(&format!("TLS-Report-Domain: {domain}"));
    line(&format!("TLS-Report-Submitter: {submitter}"));
    line("MIME-Version: 1.0");
    line(&format!(
        "Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\""
    ));
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: text/plain; charset=us-ascii");
    line("");
    line(&format!(
        "This is an aggregate TLS report from {} (RFC 8460), attached as {file_name}.",
        report
            .organization_name
            .chars()
            .map(|c| if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                ' '
            })
            .collect::<String>()
    ));
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: application/tlsrpt+gzip");
    line("Content-Transfer-Encoding: base64");
    line(&format!(
        "Content-Disposition: attachment; filename=\"{file_name}\""
    ));
    line("");
    for chunk in encoded.as_bytes().chunks(76) {
        line(std::str::from_utf8(chunk).unwrap_or_default());
    }
    line(&format!("--{boundary}--"));
    body
}

/// FNV-1a: a stable boundary from the report id (not secret, only unlikely in the body).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The report as JSON, gzip'd (RFC 8460 §5.3).
pub fn gzip(report: &Report) -> Vec<u8> {
    use std::io::Write as _;
    let json = serde_json::to_vec(report).unwrap_or_default();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(&json);
    gz.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 1_795_996_800; // 2026-11-30T00:00:00Z
    const NOW: i64 = DAY + 2 * 86_400;

    fn line(time: &str, pid: u32, rest: &str) -> String {
        format!("2026-{time}+00:00 relay postfix/smtp[{pid}]: {rest}")
    }

    #[test]
    fn one_day_of_one_domain() {
        let mx = "mx.b.test[192.0.2.2]:25";
        let lines = [
            // The day before: not counted.
            line(
                "11-29T23:59:59",
                1,
                &format!(
                    "Q0: to=<u@b.test>, relay={mx}, dsn=5.7.5, status=bounced (Server certificate not trusted)"
                ),
            ),
            line(
                "11-30T00:00:00",
                2,
                &format!("Verified TLS connection established to {mx}: TLSv1.3 with cipher X"),
            ),
            line(
                "11-30T00:00:01",
                2,
                &format!("Q1: to=<u@B.test>, relay={mx}, dsn=2.0.0, status=sent (ok)"),
            ),
            line(
                "11-30T08:00:00",
                3,
                &format!(
                    "Q2: to=<u@b.test>, relay={mx}, dsn=4.7.5, status=deferred (Server certificate not trusted)"
                ),
            ),
            line(
                "11-30T09:00:00",
                3,
                &format!(
                    "Q2: to=<u@b.test>, relay={mx}, dsn=4.7.5, status=deferred (Server certificate not trusted)"
                ),
            ),
            line(
                "11-30T10:00:00",
                4,
                "Q3: to=<u@b.test>, relay=mx2.b.test[192.0.2.3]:25, dsn=5.7.4, status=bounced (TLS is required, but was not offered by host mx2.b.test[192.0.2.3])",
            ),
            line(
                "11-30T11:00:00",
                5,
                &format!(
                    "Q4: to=<u@other.test>, relay={mx}, dsn=5.7.5, status=bounced (Server certificate not trusted)"
                ),
            ),
            // Plaintext and non-TLS failures are no TLS sessions.
            line(
                "11-30T12:00:00",
                6,
                &format!("Q5: to=<u@b.test>, relay={mx}, dsn=2.0.0, status=sent (ok)"),
            ),
            line(
                "12-01T00:00:00",
                7,
                &format!(
                    "Q6: to=<u@b.test>, relay={mx}, dsn=5.7.5, status=bounced (Server certificate not trusted)"
                ),
            ),
        ];
        let mut c = Collector::new(DAY);
        for l in &lines {
            c.feed(l, NOW);
        }
        assert_eq!(c.day.domains(), ["b.test", "other.test"]);
        let reporter = Reporter {
            organization: "Example Corp".into(),
            contact: "tls-reports@corp.example".into(),
            instance: None,
        };
        let report = c.day.report("b.test", &reporter);
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "organization-name": "Example Corp",
                "date-range": {
                    "start-datetime": "2026-11-30T00:00:00Z",
                    "end-datetime": "2026-11-30T23:59:59Z"
                },
                "contact-info": "tls-reports@corp.example",
                "report-id": "2026-11-30_b.test@corp.example",
                "policies": [{
                    "policy": {"policy-type": "no-policy-found", "policy-domain": "b.test"},
                    "summary": {
                        "total-successful-session-count": 1,
                        "total-failure-session-count": 3
                    },
                    "failure-details": [
                        {
                            "result-type": "certificate-not-trusted",
                            "receiving-mx-hostname": "mx.b.test",
                            "receiving-ip": "192.0.2.2",
                            "failed-session-count": 2,
                            "failure-reason-code": "Server certificate not trusted"
                        },
                        {
                            "result-type": "starttls-not-supported",
                            "receiving-mx-hostname": "mx2.b.test",
                            "receiving-ip": "192.0.2.3",
                            "failed-session-count": 1,
                            "failure-reason-code": "TLS is required, but was not offered by host mx2.b.test[192.0.2.3]"
                        }
                    ]
                }]
            })
        );
        assert_eq!(
            c.day.file_name("b.test", &reporter),
            format!("corp.example!b.test!{DAY}!{}.json.gz", DAY + 86_399)
        );
        let pod = Reporter {
            instance: Some("relay-0".into()),
            ..reporter
        };
        assert_eq!(
            c.day.report("b.test", &pod).report_id,
            "2026-11-30_b.test_relay-0@corp.example"
        );
        assert!(
            c.day
                .file_name("b.test", &pod)
                .ends_with("!relay-0.json.gz")
        );
    }

    fn failure(domain: &str, host: &str, reason: &str) -> String {
        format!(
            "2026-11-30T10:00:00+00:00 relay postfix/smtp[1]: Q: to=<u@{domain}>, relay={host}[192.0.2.1]:25, dsn=4.7.5, status=deferred ({reason})"
        )
    }

    #[test]
    fn failure_groups_and_domains_are_bounded() {
        let mut c = Collector::new(DAY);
        for i in 0..MAX_FAILURE_GROUPS + 5 {
            c.feed(
                &failure(
                    "b.test",
                    &format!("mx{i}.b.test"),
                    "Server certificate not trusted",
                ),
                NOW,
            );
        }
        let report = c.day.report(
            "b.test",
            &Reporter {
                organization: "o".into(),
                contact: "c@d.example".into(),
                instance: None,
            },
        );
        let details = &report.policies[0].failure_details;
        assert_eq!(details.len(), MAX_FAILURE_GROUPS + 1);
        let rest = details
            .iter()
            .find(|d| d.receiving_mx_hostname.is_none())
            .expect("rest");
        assert_eq!(
            (rest.failed_session_count, rest.result_type),
            (5, "certificate-not-trusted")
        );
        assert_eq!(report.policies[0].summary.total_failure_session_count, 37);

        let mut day = Day::new(DAY);
        for i in 0..MAX_DOMAINS + 3 {
            day.add(&Delivery::Plaintext {
                domain: format!("p{i}.test"),
            });
            day.add(&Delivery::Tls {
                domain: format!("d{i}.test"),
                trust: crate::observe::parse::Trust::Verified,
                protocol: crate::observe::parse::Protocol::Tls13,
            });
        }
        assert_eq!((day.domains().len(), day.dropped()), (MAX_DOMAINS, 3));
    }

    #[test]
    fn day_boundaries() {
        assert_eq!(Day::start_of(DAY + 86_399), DAY);
        assert_eq!(Day::start_of(DAY + 86_400), DAY + 86_400);
        assert_eq!(Day::start_of(-1), -86_400);
        assert!(Day::new(DAY).holds(DAY) && !Day::new(DAY).holds(DAY + 86_400));
    }

    #[test]
    fn reporting_records() {
        let rec = |r: &[&str]| parse_record(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            rec(&[
                "v=TLSRPTv1; rua=mailto:reports@a.example, https://rpt.a.example:8443/v1?x=1;ext=1",
                "v=spf1 -all"
            ]),
            Ok(vec![
                Rua::Mail("reports@a.example".into()),
                Rua::Https {
                    host: "rpt.a.example".into(),
                    port: 8443,
                    path: "/v1?x=1".into()
                },
            ])
        );
        assert_eq!(
            rec(&["v=TLSRPTv1;rua=https://R.example."]),
            Ok(vec![Rua::Https {
                host: "r.example".into(),
                port: 443,
                path: "/".into()
            }])
        );
        // None, or two: no reporting policy.
        assert_eq!(rec(&[]), Ok(vec![]));
        assert_eq!(rec(&["v=TLSRPTv10; rua=mailto:a@b"]), Ok(vec![]));
        assert_eq!(
            rec(&["v=TLSRPTv1; rua=mailto:a@b", "v=TLSRPTv1; rua=mailto:c@d"]),
            Ok(vec![])
        );
        // Unknown schemes are skipped; nothing usable is an error that says why.
        assert_eq!(
            rec(&["v=TLSRPTv1; rua=ftp://x, mailto:a@b"]),
            Ok(vec![Rua::Mail("a@b".into())])
        );
        for bad in [
            "v=TLSRPTv1; rua=mailto:a@b?subject=x",
            "v=TLSRPTv1; rua=mailto:a@b%0d%0aRCPT",
            "v=TLSRPTv1; rua=mailto:<a@b>",
            "v=TLSRPTv1; rua=https://user@h/",
            "v=TLSRPTv1; rua=https://h:0/",
            "v=TLSRPTv1; rua=https://[::1]/",
            "v=TLSRPTv1; rua=https://h_x/",
            "v=TLSRPTv1; rua=https:h",
            "v=TLSRPTv1",
        ] {
            assert!(rec(&[bad]).is_err(), "{bad}");
        }
        let many = format!("v=TLSRPTv1; rua={}", ["mailto:a@b"; 9].join(","));
        assert_eq!(rec(&[&many]).map(|r| r.len()), Ok(MAX_RUA));
        assert_eq!(
            Rua::Https {
                host: "h".into(),
                port: 8443,
                path: "/p".into()
            }
            .to_string(),
            "https://h:8443/p"
        );
    }

    #[test]
    fn the_mail_is_a_tlsrpt_multipart_report() {
        use base64::Engine as _;
        use std::io::Read as _;
        let mut c = Collector::new(DAY);
        c.feed(
            &failure("b.test", "mx.b.test", "Server certificate not trusted"),
            NOW,
        );
        let reporter = Reporter {
            organization: "Example\r\nCorp".into(),
            contact: "tls-reports@corp.example".into(),
            instance: None,
        };
        let report = c.day.report("b.test", &reporter);
        let gz = gzip(&report);
        let name = c.day.file_name("b.test", &reporter);
        let text = mail(
            &report,
            &name,
            &gz,
            "tls-reports@corp.example",
            "rpt@b.test",
            DAY + 3600,
        );
        assert!(text.lines().all(|l| l.len() <= 998 && !l.starts_with('.')));
        assert!(text.split("\r\n").all(|l| !l.contains('\n')), "CRLF only");
        for header in [
            "From: <tls-reports@corp.example>\r\n",
            "To: <rpt@b.test>\r\n",
            "Subject: Report Domain: b.test Submitter: corp.example Report-ID: <2026-11-30_b.test@corp.example>\r\n",
            "Date: Mon, 30 Nov 2026 01:00:00 +0000\r\n",
            "TLS-Report-Domain: b.test\r\n",
            "TLS-Report-Submitter: corp.example\r\n",
            "Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=",
            "Content-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\n",
        ] {
            assert!(text.contains(header), "{header} in\n{text}");
        }
        assert!(text.contains(&format!("filename=\"{name}\"")));
        // The attachment is the report.
        let b64: String = text
            .split("\r\n\r\n")
            .nth(4)
            .expect("attachment")
            .lines()
            .take_while(|l| !l.starts_with("--"))
            .collect();
        let zipped = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        let mut json = String::new();
        flate2::read::GzDecoder::new(&zipped[..])
            .read_to_string(&mut json)
            .expect("gunzip");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).ok(),
            serde_json::to_value(&report).ok()
        );
    }

    #[test]
    fn result_types() {
        assert_eq!(
            result_type("Cannot start TLS: handshake failure"),
            "validation-failure"
        );
        assert_eq!(
            result_type("Server certificate not verified"),
            "certificate-host-mismatch"
        );
        assert_eq!(
            result_type("TLS is required, but host h[192.0.2.1] refused to start TLS: 454 no"),
            "starttls-not-supported"
        );
    }
}
