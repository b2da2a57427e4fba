//! Postfix's mail log lines (pure): the SMTP client's TLS connection lines and its delivery
//! status lines, the two it writes per delivery with `smtp_tls_loglevel = 1`. Everything
//! else is ignored. Local parts of addresses are never kept: only the recipient's domain.

/// How far a server's certificate was checked, as Postfix words it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Trust {
    Anonymous,
    Untrusted,
    Trusted,
    Verified,
}

impl Trust {
    pub const ALL: [Trust; 4] = [
        Trust::Anonymous,
        Trust::Untrusted,
        Trust::Trusted,
        Trust::Verified,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Anonymous => "Anonymous",
            Trust::Untrusted => "Untrusted",
            Trust::Trusted => "Trusted",
            Trust::Verified => "Verified",
        }
    }
}

/// The negotiated protocol, from a fixed set (labels stay bounded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
    Other,
}

impl Protocol {
    pub const ALL: [Protocol; 5] = [
        Protocol::Tls10,
        Protocol::Tls11,
        Protocol::Tls12,
        Protocol::Tls13,
        Protocol::Other,
    ];

    fn parse(s: &str) -> Protocol {
        match s {
            "TLSv1" => Protocol::Tls10,
            "TLSv1.1" => Protocol::Tls11,
            "TLSv1.2" => Protocol::Tls12,
            "TLSv1.3" => Protocol::Tls13,
            _ => Protocol::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tls10 => "TLSv1",
            Protocol::Tls11 => "TLSv1.1",
            Protocol::Tls12 => "TLSv1.2",
            Protocol::Tls13 => "TLSv1.3",
            Protocol::Other => "other",
        }
    }
}

/// A delivery attempt's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Sent,
    Deferred,
    Bounced,
}

/// One line that matters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// `Verified TLS connection established to mx.example.com[192.0.2.1]:25: TLSv1.3 …`
    Tls {
        pid: u32,
        /// `host[address]:port`, as the delivery line's `relay=` names it.
        peer: &'a str,
        trust: Trust,
        protocol: Protocol,
    },
    /// `3F2A1C0: to=<bob@example.com>, relay=…, dsn=2.0.0, status=sent (…)`
    Delivery {
        pid: u32,
        queue_id: &'a str,
        /// The recipient's domain, as written (case is the caller's business).
        domain: &'a str,
        /// `host[address]:port`, or `none`.
        relay: &'a str,
        status: Status,
        /// The text in parentheses after the status.
        reason: &'a str,
    },
}

/// What Postfix's SMTP client says when a mandatory TLS requirement was not met (the
/// delivery status filter turns the same texts into bounces; see render::BOUNCE_FILTER).
pub const TLS_FAILURES: &[&str] = &[
    "TLS is required, but ",
    "Cannot start TLS: ",
    "Server certificate not ",
    "Server hostname verification failed",
];

/// Whether a deferral or bounce reason is a TLS requirement that was not met. Anchored at
/// the start: a remote server's reply reads "host X said: …" and never counts.
pub fn is_tls_failure(reason: &str) -> bool {
    TLS_FAILURES.iter().any(|t| reason.starts_with(t))
}

/// What one delivery line says, with the TLS session it went over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery<'a> {
    Tls {
        domain: String,
        trust: Trust,
        protocol: Protocol,
    },
    Plaintext {
        domain: String,
    },
    /// Bounced or deferred because a TLS requirement was not met.
    TlsFailure {
        domain: String,
        queue_id: &'a str,
        /// `host[address]:port`, or `none`.
        hop: &'a str,
        reason: &'a str,
        bounced: bool,
    },
}

/// SMTP client processes remembered between their TLS line and their delivery lines.
const MAX_SESSIONS: usize = 10_000;

/// Pairs each delivery line with the TLS session its process opened just before.
#[derive(Debug, Default)]
pub struct Sessions {
    /// pid → (peer, trust, protocol).
    open: std::collections::HashMap<u32, (String, Trust, Protocol)>,
}

impl Sessions {
    /// The delivery a line reports, if it reports one that counts: sent, or failed for
    /// TLS. Other failures (a refused connection, a full mailbox) are not about TLS.
    pub fn classify<'a>(&mut self, line: &'a str) -> Option<Delivery<'a>> {
        match parse(line)? {
            Line::Tls {
                pid,
                peer,
                trust,
                protocol,
            } => {
                if self.open.len() >= MAX_SESSIONS {
                    self.open.clear();
                }
                self.open.insert(pid, (peer.to_string(), trust, protocol));
                None
            }
            Line::Delivery {
                pid,
                queue_id,
                domain,
                relay,
                status,
                reason,
            } => {
                let domain = domain.trim_end_matches('.').to_ascii_lowercase();
                if domain.is_empty() {
                    return None;
                }
                match status {
                    Status::Sent => Some(match self.open.get(&pid) {
                        // The session this process opened to the same peer: no TLS session
                        // is passed between processes (smtp_tls_connection_reuse is off).
                        Some((peer, trust, protocol)) if peer == relay => Delivery::Tls {
                            domain,
                            trust: *trust,
                            protocol: *protocol,
                        },
                        _ => Delivery::Plaintext { domain },
                    }),
                    Status::Deferred | Status::Bounced if is_tls_failure(reason) => {
                        Some(Delivery::TlsFailure {
                            domain,
                            queue_id,
                            hop: relay,
                            reason,
                            bounced: status == Status::Bounced,
                        })
                    }
                    Status::Deferred | Status::Bounced => None,
                }
            }
        }
    }
}

/// When a line was written, in Unix seconds (UTC): an RFC 3339 stamp (rsyslog's high
/// precision format), or the traditional `Dec 02 17:07:39` of Postfix's own log file, which
/// has no year: the latest one not after `now` is taken.
pub fn timestamp(line: &str, now: i64) -> Option<i64> {
    let first = line.split(' ').next()?;
    if first.len() > 10 && first.as_bytes()[4] == b'-' {
        return first
            .parse::<k8s_openapi::jiff::Timestamp>()
            .ok()
            .map(|t| t.as_second());
    }
    let mut words = line.split_whitespace();
    let month = match words.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let day: i8 = words.next()?.parse().ok()?;
    let time: Vec<i8> = words
        .next()?
        .split(':')
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = time.as_slice() else {
        return None;
    };
    let year = k8s_openapi::jiff::Timestamp::from_second(now)
        .ok()?
        .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
        .year();
    let time = k8s_openapi::jiff::civil::Time::new(*h, *m, *sec, 0).ok()?;
    let at = |year: i16| {
        k8s_openapi::jiff::civil::Date::new(year, month, day)
            .ok()?
            .to_datetime(time)
            .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp().as_second())
    };
    match at(year)? {
        t if t <= now + 86_400 => Some(t),
        _ => at(year - 1),
    }
}

/// Parse one log line; `None` for lines of no interest (and for damaged ones).
pub fn parse(line: &str) -> Option<Line<'_>> {
    let (program, message) = program_and_message(line)?;
    let (name, pid) = program.split_once('[')?;
    if !(name.ends_with("/smtp") || name.ends_with("/lmtp")) {
        return None;
    }
    let pid: u32 = pid.strip_suffix(']')?.parse().ok()?;
    if let Some((trust, rest)) = message.split_once(" TLS connection established to ") {
        let trust = match trust {
            "Anonymous" => Trust::Anonymous,
            "Untrusted" => Trust::Untrusted,
            "Trusted" => Trust::Trusted,
            "Verified" => Trust::Verified,
            _ => return None,
        };
        let (peer, rest) = rest.split_once(": ")?;
        let protocol = Protocol::parse(rest.split(' ').next()?);
        return Some(Line::Tls {
            pid,
            peer,
            trust,
            protocol,
        });
    }
    delivery(pid, message)
}

/// `… program[pid]: message`: the program is the last word before the first ": ".
fn program_and_message(line: &str) -> Option<(&str, &str)> {
    let end = line.find("]: ")?;
    let start = line[..end].rfind(' ').map_or(0, |i| i + 1);
    Some((&line[start..=end], &line[end + 3..]))
}

fn delivery(pid: u32, message: &str) -> Option<Line<'_>> {
    let (queue_id, fields) = message.split_once(": to=<")?;
    if queue_id.is_empty() || !queue_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let (recipient, fields) = fields.split_once('>')?;
    let domain = recipient.rsplit_once('@').map_or("", |(_, d)| d);
    let (fields, status_part) = fields.split_once(", status=")?;
    let relay = fields
        .split(", ")
        .find_map(|f| f.strip_prefix("relay="))
        .unwrap_or("none");
    let (status, reason) = status_part.split_once(' ').unwrap_or((status_part, ""));
    let status = match status {
        "sent" => Status::Sent,
        "deferred" => Status::Deferred,
        "bounced" => Status::Bounced,
        _ => return None,
    };
    let reason = reason
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or(reason);
    Some(Line::Delivery {
        pid,
        queue_id,
        domain,
        relay,
        status,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_connection_lines() {
        let line = "Dec  2 16:35:01 relay postfix/smtp[1234]: Verified TLS connection established to mx.good.test[127.0.0.12]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature ECDSA (P-256) server-digest SHA256";
        assert_eq!(
            parse(line),
            Some(Line::Tls {
                pid: 1234,
                peer: "mx.good.test[127.0.0.12]:25",
                trust: Trust::Verified,
                protocol: Protocol::Tls13
            })
        );
        // Debian's relay service logs as postfix/relay/smtp; dedicated services as smtp.
        let line = "2026-12-02T16:35:01.123456+00:00 relay postfix/relay/smtp[7]: Untrusted TLS connection established to gw[10.0.0.1]:587: TLSv1.2 with cipher ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits)";
        assert!(matches!(
            parse(line),
            Some(Line::Tls {
                pid: 7,
                trust: Trust::Untrusted,
                protocol: Protocol::Tls12,
                ..
            })
        ));
        let smtpd = "Dec  2 16:35:01 relay postfix/smtpd[9]: Anonymous TLS connection established from c[10.0.0.2]: TLSv1.3 with cipher X";
        assert_eq!(parse(smtpd), None, "inbound sessions are not deliveries");
    }

    #[test]
    fn delivery_lines() {
        let sent = "Dec  2 16:35:01 relay postfix/smtp[1234]: 3F2A1C0D: to=<bob@Good.Test>, orig_to=<b@x>, relay=mx.good.test[127.0.0.12]:25, delay=0.5, delays=0.1/0/0.2/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as ABC, id=1)";
        assert_eq!(
            parse(sent),
            Some(Line::Delivery {
                pid: 1234,
                queue_id: "3F2A1C0D",
                domain: "Good.Test",
                relay: "mx.good.test[127.0.0.12]:25",
                status: Status::Sent,
                reason: "250 2.0.0 Ok: queued as ABC, id=1",
            })
        );
        let bounced = "Dec  2 16:35:02 relay postfix/smtp[55]: 4BC: to=<u@selfsigned.test>, relay=mx.selfsigned.test[127.0.0.13]:25, delay=0.1, delays=0/0/0.1/0, dsn=5.7.5, status=bounced (Server certificate not verified)";
        let Some(Line::Delivery { status, reason, .. }) = parse(bounced) else {
            panic!("not a delivery");
        };
        assert_eq!(status, Status::Bounced);
        assert!(is_tls_failure(reason));
        let deferred = "Dec  2 16:35:02 relay postfix/smtp[56]: 4BD: to=<u@plain.test>, relay=none, delay=30, delays=0/0/30/0, dsn=4.4.1, status=deferred (connect to mx.plain.test[127.0.0.14]:25: Connection refused)";
        let Some(Line::Delivery {
            relay,
            status,
            reason,
            ..
        }) = parse(deferred)
        else {
            panic!("not a delivery");
        };
        assert_eq!((relay, status), ("none", Status::Deferred));
        assert!(!is_tls_failure(reason));
    }

    #[test]
    fn other_and_damaged_lines_are_ignored() {
        for line in [
            "",
            "garbage",
            "Dec  2 16:35:01 relay postfix/qmgr[1]: 3F2A1C0D: from=<a@b>, size=1, nrcpt=1 (queue active)",
            "Dec  2 16:35:01 relay postfix/smtp[x]: 3F: to=<a@b>, relay=none, status=sent (ok)",
            "Dec  2 16:35:01 relay postfix/smtp[1]: 3F: to=<a@b>, relay=none, status=expired (old)",
            "Dec  2 16:35:01 relay postfix/smtp[1]: : to=<a@b>, relay=none, status=sent (ok)",
            "Dec  2 16:35:01 relay postfix/smtp[1]: 3F: to=<a@b, relay=none",
            "Dec  2 16:35:01 relay postfix/smtp[1]: Bogus TLS connection established to h[1]:25: TLSv1.3",
            "Dec  2 16:35:01 relay postfix/local[1]: 3F: to=<a@b>, relay=local, status=sent (delivered)",
        ] {
            assert_eq!(parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn timestamps_with_and_without_a_year() {
        let at = |s: &str| {
            s.parse::<k8s_openapi::jiff::Timestamp>()
                .expect("timestamp")
                .as_second()
        };
        let now = at("2026-11-30T00:53:20Z");
        assert_eq!(
            timestamp(
                "2026-11-29T10:00:00.123456+00:00 relay postfix/smtp[1]: x",
                now
            ),
            Some(at("2026-11-29T10:00:00Z"))
        );
        assert_eq!(
            timestamp("Nov 29 10:00:00 relay postfix/smtp[1]: x", now),
            Some(at("2026-11-29T10:00:00Z"))
        );
        assert_eq!(
            timestamp("Nov  2 10:00:00 relay postfix/smtp[1]: x", now),
            Some(at("2026-11-02T10:00:00Z"))
        );
        // December seen at the end of November: last year's.
        assert_eq!(
            timestamp("Dec 31 23:59:59 relay postfix/smtp[1]: x", now),
            Some(at("2025-12-31T23:59:59Z"))
        );
        for bad in ["", "Foo 1 10:00:00 x", "Nov 31 10:00:00 x", "Nov 1 25:00 x"] {
            assert_eq!(timestamp(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn every_failure_text_is_one_the_bounce_filter_knows() {
        let filter = crate::render::render(
            &crate::policy::EffectivePolicy::default(),
            &crate::render::RenderOptions::default(),
        );
        let rules = &filter.files[crate::render::BOUNCE_FILTER];
        for text in TLS_FAILURES {
            assert!(
                rules.contains(&format!("[0-9]+ {}", text.trim_end())),
                "{text} is not in the bounce filter"
            );
        }
        assert!(!is_tls_failure(
            "host mx[192.0.2.1] said: 530 TLS is required, but you did not start it"
        ));
    }
}
