//! The relay agent's Prometheus metrics: what it applied and what the relay delivered.
//! Labels come from fixed sets only (trust level, protocol, result), never a domain.

use super::observed::{Counts, Observed};
use super::parse::{Protocol, Trust};
use crate::relay::AgentStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabel {
    /// A trust level, or `none` for plaintext.
    tls: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HashLabel {
    hash: String,
}

/// The Prometheus text for the agent's state, the Postfix queues (messages per queue, when
/// known) and the observations so far.
pub fn render(status: &AgentStatus, observed: &Observed, queues: Option<[u64; 5]>) -> String {
    let mut r = Registry::with_prefix("mailtls_relay");
    let t: &Counts = observed.totals();

    let delivered = Family::<TlsLabel, Counter>::default();
    for (trust, n) in Trust::ALL.iter().zip(t.by_trust) {
        delivered
            .get_or_create(&TlsLabel {
                tls: trust.as_str(),
            })
            .inc_by(n);
    }
    delivered
        .get_or_create(&TlsLabel { tls: "none" })
        .inc_by(t.plaintext);
    r.register(
        "delivered",
        "Messages delivered, by TLS trust level (none: plaintext)",
        delivered,
    );
    let protocols = Family::<ProtocolLabel, Counter>::default();
    for (p, n) in Protocol::ALL.iter().zip(t.by_protocol) {
        protocols
            .get_or_create(&ProtocolLabel {
                protocol: p.as_str(),
            })
            .inc_by(n);
    }
    r.register(
        "delivered_tls_protocol",
        "Messages delivered over TLS, by protocol",
        protocols,
    );
    let failures = Family::<ResultLabel, Counter>::default();
    failures
        .get_or_create(&ResultLabel { result: "bounced" })
        .inc_by(t.tls_bounced);
    failures
        .get_or_create(&ResultLabel { result: "deferred" })
        .inc_by(t.tls_deferred);
    r.register(
        "tls_failures",
        "Delivery attempts that failed a TLS requirement, by result",
        failures,
    );
    gauge(
        &mut r,
        "observed_domains",
        "Recipient domains with observations in the last 48 hours",
        observed.domains() as i64,
    );
    counter(&mut r, "log_lines", "Mail log lines read", observed.lines());
    counter(
        &mut r,
        "applied",
        "Configurations applied",
        status.applied_total,
    );
    counter(
        &mut r,
        "refused",
        "Configurations refused",
        status.refused_total,
    );
    counter(
        &mut r,
        "reload_failures",
        "Configurations installed but not put in force by a reload",
        status.reload_failures_total,
    );
    gauge(
        &mut r,
        "configuration_applied",
        "1 once a configuration is in force",
        i64::from(status.applied_hash.is_some()),
    );
    if let Some(hash) = &status.applied_hash {
        let info = Family::<HashLabel, Gauge>::default();
        info.get_or_create(&HashLabel { hash: hash.clone() }).set(1);
        r.register(
            "configuration_info",
            "The configuration in force, by content hash (compare with the ConfigMap's)",
            info,
        );
    }
    if let Some(sizes) = queues {
        let family = Family::<QueueLabel, Gauge>::default();
        for (queue, n) in crate::relay::QUEUES.iter().zip(sizes) {
            family
                .get_or_create(&QueueLabel { queue })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        r.register(
            "queue_messages",
            "Messages in Postfix's queues, by queue (deferred: waiting for a retry)",
            family,
        );
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_by_fixed_labels_only() {
        let mut o = Observed::default();
        let mx = "mx.a.test[192.0.2.1]:25";
        o.feed(
            &format!("x postfix/smtp[1]: Verified TLS connection established to {mx}: TLSv1.3 with cipher X"),
            0,
        );
        o.feed(
            &format!(
                "x postfix/smtp[1]: Q1: to=<u@a.test>, relay={mx}, dsn=2.0.0, status=sent (ok)"
            ),
            0,
        );
        o.feed(
            "x postfix/smtp[2]: Q2: to=<u@b.test>, relay=h[192.0.2.2]:25, dsn=5.7.5, status=bounced (Server certificate not verified)",
            0,
        );
        let status = AgentStatus {
            applied_total: 2,
            applied_hash: Some("h".into()),
            ..Default::default()
        };
        let text = render(&status, &o, Some([0, 0, 1, 2, 0]));
        for line in [
            "mailtls_relay_delivered_total{tls=\"Verified\"} 1",
            "mailtls_relay_delivered_total{tls=\"none\"} 0",
            "mailtls_relay_delivered_tls_protocol_total{protocol=\"TLSv1.3\"} 1",
            "mailtls_relay_tls_failures_total{result=\"bounced\"} 1",
            "mailtls_relay_tls_failures_total{result=\"deferred\"} 0",
            "mailtls_relay_observed_domains 2",
            "mailtls_relay_log_lines_total 3",
            "mailtls_relay_applied_total 2",
            "mailtls_relay_configuration_applied 1",
            "mailtls_relay_configuration_info{hash=\"h\"} 1",
            "mailtls_relay_queue_messages{queue=\"deferred\"} 2",
            "mailtls_relay_queue_messages{queue=\"active\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("a.test"), "no domain in a label:\n{text}");
    }
}
