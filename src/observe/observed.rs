//! What the relay did with real mail (pure): per recipient domain, messages delivered over
//! TLS by trust level and protocol, delivered in plaintext, and bounced or deferred because
//! a TLS requirement was not met, in hourly buckets; running totals; and a bounded list of
//! recent TLS failures. Fed one log line at a time with the time it was read.

use super::parse::{Delivery, Sessions, timestamp};
use super::tlsrpt::Day;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Distinct domains kept; the rest are counted together under [`OTHER`], so a flood of
/// random domains cannot exhaust the sidecar's memory (128 MiB in the chart): 100k domains
/// take about 19 MB, and building `/observed` for them about 44 MB more (BENCHMARKS.md).
pub const MAX_DOMAINS: usize = 100_000;
/// Where domains beyond [`MAX_DOMAINS`] are counted.
pub const OTHER: &str = "(other domains)";
/// Hourly buckets kept per domain: a whole previous UTC day (for TLS reports) and today.
pub const HOURS_KEPT: i64 = 48;
/// Recent TLS failures kept.
pub const RECENT_FAILURES: usize = 100;

/// Message counts of one domain (or of all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Delivered over TLS, by [`Trust`] (in `Trust::ALL` order).
    pub by_trust: [u64; 4],
    /// Delivered over TLS, by [`Protocol`] (in `Protocol::ALL` order).
    pub by_protocol: [u64; 5],
    pub plaintext: u64,
    /// Bounced because a TLS requirement was not met.
    pub tls_bounced: u64,
    /// Deferred because a TLS requirement was not met (one per attempt).
    pub tls_deferred: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        for (a, b) in self.by_trust.iter_mut().zip(o.by_trust) {
            *a += b;
        }
        for (a, b) in self.by_protocol.iter_mut().zip(o.by_protocol) {
            *a += b;
        }
        self.plaintext += o.plaintext;
        self.tls_bounced += o.tls_bounced;
        self.tls_deferred += o.tls_deferred;
    }

    pub fn delivered_tls(&self) -> u64 {
        self.by_trust.iter().sum()
    }

    pub fn tls_failed(&self) -> u64 {
        self.tls_bounced + self.tls_deferred
    }
}

/// A TLS failure of a real message. No local part: the recipient's domain only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// Unix seconds when the line was read.
    #[serde(serialize_with = "rfc3339", deserialize_with = "unix")]
    pub at: i64,
    pub queue_id: String,
    pub domain: String,
    /// The next hop tried (`host[address]:port`, or `none`).
    pub hop: String,
    pub reason: String,
    /// Bounced (true) or deferred for another attempt.
    pub bounced: bool,
}

fn rfc3339<S: serde::Serializer>(at: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::probe::rfc3339(*at))
}

fn unix<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let text = String::deserialize(d)?;
    text.parse::<k8s_openapi::jiff::Timestamp>()
        .map(|t| t.as_second())
        .map_err(serde::de::Error::custom)
}

/// One hour of one domain, compact: u32 counts in [`Counts`] field order (4 trust levels,
/// 5 protocols, plaintext, TLS bounced, TLS deferred).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    hour: i32,
    n: [u32; 12],
}

impl Bucket {
    fn new(hour: i64) -> Bucket {
        Bucket {
            hour: i32::try_from(hour).unwrap_or(i32::MAX),
            n: [0; 12],
        }
    }

    fn add(&mut self, c: &Counts) {
        let flat = c.by_trust.iter().chain(&c.by_protocol).chain([
            &c.plaintext,
            &c.tls_bounced,
            &c.tls_deferred,
        ]);
        for (slot, v) in self.n.iter_mut().zip(flat) {
            *slot = slot.saturating_add(u32::try_from(*v).unwrap_or(u32::MAX));
        }
    }

    fn counts(&self) -> Counts {
        let n = self.n.map(u64::from);
        Counts {
            by_trust: [n[0], n[1], n[2], n[3]],
            by_protocol: [n[4], n[5], n[6], n[7], n[8]],
            plaintext: n[9],
            tls_bounced: n[10],
            tls_deferred: n[11],
        }
    }
}

#[derive(Debug, Default)]
struct DomainStats {
    /// Oldest first; grown one at a time (most domains see one hour only).
    hours: Vec<Bucket>,
    last_failure: Option<Box<Failure>>,
}

/// The observations of one relay.
#[derive(Debug, Default)]
pub struct Observed {
    domains: HashMap<Box<str>, DomainStats>,
    /// Since the agent started.
    totals: Counts,
    recent: VecDeque<Failure>,
    sessions: Sessions,
    lines: u64,
    /// TLS sessions of the current and the previous UTC day (by the lines' own times), for
    /// TLS reports; kept only when asked for ([`Observed::keep_days`]).
    days: Option<VecDeque<Day>>,
    /// The log as it was when the agent started has been read (or there was none).
    caught_up: bool,
}

/// One domain's counts over a window, with its last TLS failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainSummary {
    pub domain: String,
    #[serde(flatten)]
    pub counts: CountsView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
}

/// [`Counts`] as JSON: named keys, zeros left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CountsView {
    #[serde(skip_serializing_if = "ByTrust::is_empty")]
    pub tls: ByTrust,
    #[serde(skip_serializing_if = "ByProtocol::is_empty")]
    pub protocols: ByProtocol,
    #[serde(skip_serializing_if = "is_zero")]
    pub plaintext: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub tls_bounced: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub tls_deferred: u64,
}

/// Delivered over TLS by trust level (named as Postfix logs them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ByTrust {
    #[serde(rename = "Verified", skip_serializing_if = "is_zero")]
    pub verified: u64,
    #[serde(rename = "Trusted", skip_serializing_if = "is_zero")]
    pub trusted: u64,
    #[serde(rename = "Untrusted", skip_serializing_if = "is_zero")]
    pub untrusted: u64,
    #[serde(rename = "Anonymous", skip_serializing_if = "is_zero")]
    pub anonymous: u64,
}

impl ByTrust {
    fn is_empty(&self) -> bool {
        *self == ByTrust::default()
    }
}

/// Delivered over TLS by protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ByProtocol {
    #[serde(rename = "TLSv1", skip_serializing_if = "is_zero")]
    pub tls10: u64,
    #[serde(rename = "TLSv1.1", skip_serializing_if = "is_zero")]
    pub tls11: u64,
    #[serde(rename = "TLSv1.2", skip_serializing_if = "is_zero")]
    pub tls12: u64,
    #[serde(rename = "TLSv1.3", skip_serializing_if = "is_zero")]
    pub tls13: u64,
    #[serde(rename = "other", skip_serializing_if = "is_zero")]
    pub other: u64,
}

impl ByProtocol {
    fn is_empty(&self) -> bool {
        *self == ByProtocol::default()
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl From<&Counts> for CountsView {
    fn from(c: &Counts) -> CountsView {
        let [anonymous, untrusted, trusted, verified] = c.by_trust;
        let [tls10, tls11, tls12, tls13, other] = c.by_protocol;
        CountsView {
            tls: ByTrust {
                verified,
                trusted,
                untrusted,
                anonymous,
            },
            protocols: ByProtocol {
                tls10,
                tls11,
                tls12,
                tls13,
                other,
            },
            plaintext: c.plaintext,
            tls_bounced: c.tls_bounced,
            tls_deferred: c.tls_deferred,
        }
    }
}

impl From<&CountsView> for Counts {
    fn from(v: &CountsView) -> Counts {
        let (t, p) = (v.tls, v.protocols);
        Counts {
            by_trust: [t.anonymous, t.untrusted, t.trusted, t.verified],
            by_protocol: [p.tls10, p.tls11, p.tls12, p.tls13, p.other],
            plaintext: v.plaintext,
            tls_bounced: v.tls_bounced,
            tls_deferred: v.tls_deferred,
        }
    }
}

/// What the relay pods of one namespace observed over a window, summed over the pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodsObserved {
    /// The window, in hours.
    pub hours: i64,
    /// Pods whose counts are included.
    pub pods: u32,
    /// Per recipient domain: counts and the most recent TLS failure.
    pub domains: BTreeMap<String, (Counts, Option<Failure>)>,
}

impl PodsObserved {
    /// Add one pod's `/observed` answer.
    pub fn add_pod(&mut self, domains: Vec<DomainSummary>) {
        self.pods += 1;
        for d in domains {
            let (counts, last) = self.domains.entry(d.domain).or_default();
            counts.add(&Counts::from(&d.counts));
            if let Some(f) = d.last_failure
                && last.as_ref().is_none_or(|l| l.at < f.at)
            {
                *last = Some(f);
            }
        }
    }
}

impl Observed {
    /// Take one log line read at `now` (Unix seconds).
    pub fn feed(&mut self, line: &str, now: i64) {
        self.lines += 1;
        let mut counts = Counts::default();
        let mut failure = None;
        let Some(delivery) = self.sessions.classify(line) else {
            return;
        };
        // The line's own time is read only when days are kept (TLS reports are on).
        if self.days.is_some()
            && !matches!(delivery, Delivery::Plaintext { .. })
            && let Some(day) = timestamp(line, now).and_then(|at| self.day_of(at))
        {
            day.add(&delivery);
        }
        let domain = match delivery {
            Delivery::Tls {
                domain,
                trust,
                protocol,
            } => {
                counts.by_trust[trust as usize] = 1;
                counts.by_protocol[protocol as usize] = 1;
                domain
            }
            Delivery::Plaintext { domain } => {
                counts.plaintext = 1;
                domain
            }
            Delivery::TlsFailure {
                domain,
                queue_id,
                hop,
                reason,
                bounced,
            } => {
                if bounced {
                    counts.tls_bounced = 1;
                } else {
                    counts.tls_deferred = 1;
                }
                failure = Some(Failure {
                    at: now,
                    queue_id: queue_id.to_string(),
                    domain: domain.clone(),
                    hop: hop.to_string(),
                    reason: reason.to_string(),
                    bounced,
                });
                domain
            }
        };
        self.count(domain, counts, failure, now);
    }

    fn count(&mut self, domain: String, counts: Counts, failure: Option<Failure>, now: i64) {
        self.totals.add(&counts);
        let key: Box<str> =
            if self.domains.len() >= MAX_DOMAINS && !self.domains.contains_key(domain.as_str()) {
                OTHER.into()
            } else {
                domain.into_boxed_str()
            };
        let stats = self.domains.entry(key).or_default();
        let hour = now.div_euclid(3600);
        match stats.hours.last_mut() {
            Some(b) if i64::from(b.hour) == hour => b.add(&counts),
            _ => {
                stats
                    .hours
                    .retain(|b| i64::from(b.hour) > hour - HOURS_KEPT);
                // Exactly one more: a Vec's first growth would make room for four.
                stats.hours.reserve_exact(1);
                let mut b = Bucket::new(hour);
                b.add(&counts);
                stats.hours.push(b);
            }
        }
        if let Some(f) = failure {
            stats.last_failure = Some(Box::new(f.clone()));
            if self.recent.len() >= RECENT_FAILURES {
                self.recent.pop_front();
            }
            self.recent.push_back(f);
        }
    }

    /// Say that the log present at start has been read.
    pub fn set_caught_up(&mut self) {
        self.caught_up = true;
    }

    /// Whether the log present at start has been read: until then a day's counts are not
    /// complete.
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// Keep each UTC day's TLS sessions per domain (today's and yesterday's) for TLS reports.
    pub fn keep_days(&mut self) {
        self.days.get_or_insert_with(VecDeque::new);
    }

    /// The kept day that starts at `start` (a UTC midnight).
    pub fn day(&self, start: i64) -> Option<&Day> {
        self.days.as_ref()?.iter().find(|d| d.start() == start)
    }

    /// The kept day holding `at`, started when it is the newest; none when days are not
    /// kept or `at` is older than yesterday of the newest.
    fn day_of(&mut self, at: i64) -> Option<&mut Day> {
        let days = self.days.as_mut()?;
        let start = Day::start_of(at);
        if days.back().is_none_or(|d| d.start() < start) {
            days.push_back(Day::new(start));
            while days
                .front()
                .is_some_and(|d| d.start() < start - super::tlsrpt::DAY)
            {
                days.pop_front();
            }
        }
        days.iter_mut().find(|d| d.start() == start)
    }

    /// Forget domains with nothing in the last [`HOURS_KEPT`] hours.
    pub fn prune(&mut self, now: i64) {
        let oldest = now.div_euclid(3600) - HOURS_KEPT;
        self.domains
            .retain(|_, s| s.hours.last().is_some_and(|b| i64::from(b.hour) > oldest));
    }

    /// Counts per domain over the `hours` hours up to `now` (the current hour included),
    /// domains with nothing in that window left out, sorted by domain.
    pub fn window(&self, now: i64, hours: i64) -> Vec<DomainSummary> {
        self.between(now.div_euclid(3600) - hours + 1, now.div_euclid(3600))
    }

    /// Counts per domain in the hours `first..=last` (since the epoch).
    pub fn between(&self, first: i64, last: i64) -> Vec<DomainSummary> {
        let mut out: Vec<DomainSummary> = self
            .domains
            .iter()
            .filter_map(|(domain, s)| {
                let mut sum = Counts::default();
                for b in s
                    .hours
                    .iter()
                    .filter(|b| (first..=last).contains(&i64::from(b.hour)))
                {
                    sum.add(&b.counts());
                }
                (sum != Counts::default()).then(|| DomainSummary {
                    domain: domain.to_string(),
                    counts: (&sum).into(),
                    last_failure: s.last_failure.as_deref().cloned(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.domain.cmp(&b.domain));
        out
    }

    /// Since the agent started.
    pub fn totals(&self) -> &Counts {
        &self.totals
    }

    /// The most recent TLS failures, oldest first.
    pub fn recent_failures(&self) -> impl Iterator<Item = &Failure> {
        self.recent.iter()
    }

    pub fn domains(&self) -> usize {
        self.domains.len()
    }

    /// Lines read, of any kind.
    pub fn lines(&self) -> u64 {
        self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_796_000_000;

    fn tls(pid: u32, peer: &str, trust: &str, proto: &str) -> String {
        format!(
            "Dec  2 16:35:01 relay postfix/smtp[{pid}]: {trust} TLS connection established to {peer}: {proto} with cipher X (256/256 bits)"
        )
    }

    fn status(pid: u32, qid: &str, to: &str, relay: &str, status: &str, why: &str) -> String {
        format!(
            "Dec  2 16:35:01 relay postfix/smtp[{pid}]: {qid}: to=<{to}>, relay={relay}, delay=0.2, delays=0/0/0.1/0.1, dsn=2.0.0, status={status} ({why})"
        )
    }

    #[test]
    fn days_are_kept_by_the_lines_own_time_when_asked() {
        use crate::observe::tlsrpt::Reporter;
        const DAY0: i64 = 1_795_996_800; // 2026-11-30T00:00:00Z
        let sent = |when: &str, pid: u32, domain: &str| {
            [
                format!(
                    "2026-{when}+00:00 relay postfix/smtp[{pid}]: Verified TLS connection established to mx.{domain}[192.0.2.1]:25: TLSv1.3 with cipher X"
                ),
                format!(
                    "2026-{when}+00:00 relay postfix/smtp[{pid}]: Q{pid}: to=<u@{domain}>, relay=mx.{domain}[192.0.2.1]:25, dsn=2.0.0, status=sent (ok)"
                ),
                format!(
                    "2026-{when}+00:00 relay postfix/smtp[9{pid}]: P{pid}: to=<u@plain.{domain}>, relay=mx.{domain}[192.0.2.1]:25, dsn=2.0.0, status=sent (ok)"
                ),
            ]
        };
        let now = DAY0 + 3 * 86_400;
        let mut plain = Observed::default();
        let mut o = Observed::default();
        o.keep_days();
        for l in sent("11-29T23:59:59", 1, "a.test")
            .iter()
            .chain(&sent("11-30T00:00:00", 2, "a.test"))
            .chain(&sent("11-30T23:59:59", 3, "b.test"))
            .chain(&sent("12-01T00:00:00", 4, "a.test"))
        {
            o.feed(l, now);
            plain.feed(l, now);
        }
        assert!(plain.day(DAY0).is_none());
        // 11-29 was the newest day's day before yesterday once 12-01 began.
        assert!(o.day(DAY0 - 86_400).is_none());
        let day = o.day(DAY0).expect("11-30");
        assert_eq!(day.domains(), ["a.test", "b.test"]);
        let reporter = Reporter {
            organization: "o".into(),
            contact: "c@d.test".into(),
            instance: None,
        };
        let ok = |d: &Day, domain: &str| {
            d.report(domain, &reporter).policies[0]
                .summary
                .total_successful_session_count
        };
        assert_eq!((ok(day, "a.test"), ok(day, "b.test")), (1, 1));
        assert_eq!(ok(o.day(DAY0 + 86_400).expect("12-01"), "a.test"), 1);
        // A line older than the kept days changes nothing.
        o.feed(&sent("11-28T12:00:00", 5, "a.test")[1], now);
        assert_eq!(ok(o.day(DAY0).expect("11-30"), "a.test"), 1);
    }

    fn summary(o: &Observed, domain: &str) -> CountsView {
        o.window(T0, 24)
            .into_iter()
            .find(|d| d.domain == domain)
            .map(|d| d.counts)
            .unwrap_or_default()
    }

    #[test]
    fn a_delivery_counts_by_the_session_its_process_opened() {
        let mut o = Observed::default();
        let mx = "mx.good.test[127.0.0.12]:25";
        o.feed(&tls(10, mx, "Verified", "TLSv1.3"), T0);
        o.feed(
            &status(10, "A1", "bob@Good.Test.", mx, "sent", "250 ok"),
            T0,
        );
        o.feed(
            &status(10, "A2", "carol@good.test", mx, "sent", "250 ok"),
            T0,
        );
        // Another process, no TLS line: plaintext; same pid but another peer: plaintext.
        o.feed(&status(11, "B1", "x@good.test", mx, "sent", "250 ok"), T0);
        o.feed(
            &status(
                10,
                "B2",
                "x@plain.test",
                "mx.plain.test[127.0.0.14]:25",
                "sent",
                "ok",
            ),
            T0,
        );
        let good = summary(&o, "good.test");
        assert_eq!(
            good.tls,
            ByTrust {
                verified: 2,
                ..Default::default()
            }
        );
        assert_eq!(
            good.protocols,
            ByProtocol {
                tls13: 2,
                ..Default::default()
            }
        );
        let json = serde_json::to_value(&good).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"tls": {"Verified": 2}, "protocols": {"TLSv1.3": 2}, "plaintext": 1})
        );
        assert_eq!(good.plaintext, 1);
        assert_eq!(summary(&o, "plain.test").plaintext, 1);
        assert_eq!(o.totals().delivered_tls(), 2);
        assert_eq!(o.totals().plaintext, 2);
    }

    #[test]
    fn tls_failures_are_counted_and_listed_without_local_parts() {
        let mut o = Observed::default();
        let hop = "mx.selfsigned.test[127.0.0.13]:25";
        o.feed(
            &status(
                1,
                "C1",
                "secret.person@selfsigned.test",
                hop,
                "bounced",
                "Server certificate not verified",
            ),
            T0,
        );
        o.feed(
            &status(
                2,
                "C2",
                "u@nostarttls.test",
                "mx[127.0.0.14]:25",
                "deferred",
                "TLS is required, but was not offered by host mx[127.0.0.14]",
            ),
            T0 + 1,
        );
        // Not a TLS failure: not counted at all.
        o.feed(
            &status(
                3,
                "C3",
                "u@down.test",
                "none",
                "deferred",
                "connect to mx.down.test[127.0.0.15]:25: Connection refused",
            ),
            T0,
        );
        assert_eq!(summary(&o, "selfsigned.test").tls_bounced, 1);
        assert_eq!(summary(&o, "nostarttls.test").tls_deferred, 1);
        assert_eq!(summary(&o, "down.test"), CountsView::default());
        let recent: Vec<&Failure> = o.recent_failures().collect();
        assert_eq!(recent.len(), 2);
        assert_eq!(
            (
                recent[0].queue_id.as_str(),
                recent[0].hop.as_str(),
                recent[0].bounced
            ),
            ("C1", hop, true)
        );
        let json = serde_json::to_string(&o.window(T0, 24)).expect("json");
        assert!(!json.contains("secret.person"), "{json}");
        assert!(json.contains("\"lastFailure\""), "{json}");
    }

    #[test]
    fn windows_buckets_and_bounds() {
        let mut o = Observed::default();
        let mx = "mx[1]:25";
        for (i, at) in [T0 - 30 * 3600, T0 - 3600, T0].into_iter().enumerate() {
            o.feed(
                &status(1, &format!("Q{i}"), "u@a.test", mx, "sent", "ok"),
                at,
            );
        }
        assert_eq!(summary(&o, "a.test").plaintext, 2, "the last 24 hours");
        assert_eq!(o.window(T0, 48)[0].counts.plaintext, 3);
        assert!(o.window(T0 + 100 * 3600, 24).is_empty());
        o.prune(T0 + 100 * 3600);
        assert_eq!(o.domains(), 0);

        for i in 0..RECENT_FAILURES + 5 {
            o.feed(
                &status(
                    1,
                    &format!("F{i}"),
                    "u@b.test",
                    mx,
                    "bounced",
                    "Cannot start TLS: handshake failure",
                ),
                T0,
            );
        }
        assert_eq!(o.recent_failures().count(), RECENT_FAILURES);
        assert_eq!(
            o.recent_failures().next().map(|f| f.queue_id.as_str()),
            Some("F5")
        );
        assert_eq!(o.lines(), 3 + RECENT_FAILURES as u64 + 5);
    }

    #[test]
    fn domains_beyond_the_cap_are_counted_together() {
        let mut o = Observed::default();
        for i in 0..MAX_DOMAINS + 3 {
            o.feed(
                &status(1, "Q", &format!("u@d{i}.test"), "none", "sent", "ok"),
                T0,
            );
        }
        assert_eq!(o.domains(), MAX_DOMAINS + 1);
        assert_eq!(summary(&o, OTHER).plaintext, 3);
        assert_eq!(o.totals().plaintext, MAX_DOMAINS as u64 + 3);
    }
}
