//! SMTP TLS Reporting (RFC 8460) aggregate reports from the mail log (pure): for one UTC day
//! and one policy domain (a recipient domain), the TLS sessions that succeeded and those
//! that failed, grouped by result type and receiving host.
//!
//! Counts are messages as Postfix logs them: each delivery over TLS is one successful
//! session, each delivery attempt refused for TLS one failed session. The policy type is
//! `no-policy-found`: the requirement came from this relay's own policy, not from an MTA-STS
//! or DANE policy the domain published.

use super::parse::{Delivery, Sessions, timestamp};
use serde::Serialize;
use std::collections::BTreeMap;

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

/// Collects one day of one policy domain from log lines.
#[derive(Debug)]
pub struct Collector {
    domain: String,
    start: i64,
    /// Exclusive.
    end: i64,
    sessions: Sessions,
    successful: u64,
    /// (result type, host, address, reason) → failed sessions.
    failures: BTreeMap<(&'static str, String, String, String), u64>,
}

impl Collector {
    /// `day` starts at `start` (Unix seconds, a UTC midnight).
    pub fn new(policy_domain: &str, start: i64) -> Collector {
        Collector {
            domain: policy_domain.trim_end_matches('.').to_ascii_lowercase(),
            start,
            end: start + 86_400,
            sessions: Sessions::default(),
            successful: 0,
            failures: BTreeMap::new(),
        }
    }

    /// Take one line; `now` dates lines that carry no year.
    pub fn feed(&mut self, line: &str, now: i64) {
        // Every line goes through the sessions, so a TLS line just before midnight still
        // pairs with its delivery line.
        let Some(delivery) = self.sessions.classify(line) else {
            return;
        };
        let Some(at) = timestamp(line, now) else {
            return;
        };
        if !(self.start..self.end).contains(&at) {
            return;
        }
        match delivery {
            Delivery::Tls { domain, .. } if domain == self.domain => self.successful += 1,
            Delivery::TlsFailure {
                domain,
                hop,
                reason,
                ..
            } if domain == self.domain => {
                let (host, ip) = split_hop(hop);
                *self
                    .failures
                    .entry((result_type(reason), host, ip, reason.to_string()))
                    .or_default() += 1;
            }
            _ => {}
        }
    }

    /// The report, as `organization` (reachable at `contact`) sends it.
    pub fn report(&self, organization: &str, contact: &str) -> Report {
        let stamp = |t: i64| crate::probe::rfc3339(t);
        let failed: u64 = self.failures.values().sum();
        Report {
            organization_name: organization.to_string(),
            date_range: DateRange {
                start_datetime: stamp(self.start),
                end_datetime: stamp(self.end - 1),
            },
            contact_info: contact.to_string(),
            report_id: format!(
                "{}_{}@{}",
                stamp(self.start).get(..10).unwrap_or_default(),
                self.domain,
                contact.rsplit('@').next().unwrap_or(contact)
            ),
            policies: vec![PolicyReport {
                policy: Policy {
                    policy_type: "no-policy-found",
                    policy_domain: self.domain.clone(),
                },
                summary: Summary {
                    total_successful_session_count: self.successful,
                    total_failure_session_count: failed,
                },
                failure_details: self
                    .failures
                    .iter()
                    .map(|((kind, host, ip, reason), n)| FailureDetail {
                        result_type: kind,
                        receiving_mx_hostname: (!host.is_empty()).then(|| host.clone()),
                        receiving_ip: (!ip.is_empty()).then(|| ip.clone()),
                        failed_session_count: *n,
                        failure_reason_code: reason.clone(),
                    })
                    .collect(),
            }],
        }
    }

    /// The file name RFC 8460 section 5.3 gives the gzip'd report.
    pub fn file_name(&self, sender_domain: &str) -> String {
        format!(
            "{sender_domain}!{}!{}!{}.json.gz",
            self.domain,
            self.start,
            self.end - 1
        )
    }
}

/// `mx.example.com[192.0.2.1]:25` → (`mx.example.com`, `192.0.2.1`); `none` → empty.
fn split_hop(hop: &str) -> (String, String) {
    match hop.split_once('[') {
        Some((host, rest)) => (
            host.to_string(),
            rest.split_once(']').map_or("", |(ip, _)| ip).to_string(),
        ),
        None => (String::new(), String::new()),
    }
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
        let mut c = Collector::new("b.test.", DAY);
        for l in &lines {
            c.feed(l, NOW);
        }
        let report = c.report("Example Corp", "tls-reports@corp.example");
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
            c.file_name("corp.example"),
            format!("corp.example!b.test!{DAY}!{}.json.gz", DAY + 86_399)
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
