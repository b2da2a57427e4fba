//! The relay's own settings: who may relay through it, the name it greets with, the
//! certificate it offers for STARTTLS, and the organisation's domains it accepts and passes
//! on to their mail server. They come from the chart's values (flags of `relay-init`), not
//! from the policy ConfigMap, and go into main.cf before the agent saves its base, so every
//! policy apply starts from them. Pure: validation and the Postfix parameters.

use crate::policy::host::Host;
use crate::probe::address::Cidr;
use std::path::PathBuf;

/// The certificate and key offered to SMTP clients (a `kubernetes.io/tls` Secret's files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where inbound mail for the organisation's domains goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// Lowercase ASCII domains, without a trailing dot.
    pub domains: Vec<String>,
    pub next_hop: Host,
    pub port: u16,
}

/// Validated relay settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaseSettings {
    /// Clients that may relay to any destination, besides the pod itself.
    pub client_cidrs: Vec<Cidr>,
    /// `myhostname`: the HELO name and the name in the greeting.
    pub hostname: Option<String>,
    pub tls: Option<TlsFiles>,
    pub inbound: Option<Inbound>,
    /// `maillog_file`: where Postfix writes its log, for the agent to read.
    pub mail_log: Option<PathBuf>,
}

/// Settings as given on the command line, before validation.
#[derive(Clone, Debug, Default)]
pub struct RawSettings {
    pub client_cidrs: Vec<String>,
    pub hostname: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub inbound_domains: Vec<String>,
    pub inbound_next_hop: Option<String>,
    pub mail_log: Option<PathBuf>,
}

/// The pod itself: always allowed, so the agent and local tools can submit mail.
const LOOPBACK: &str = "127.0.0.0/8 [::1]/128";

impl BaseSettings {
    /// Check every setting; all problems are reported at once, one per line.
    pub fn parse(raw: &RawSettings) -> Result<BaseSettings, String> {
        let mut problems = Vec::new();
        let mut client_cidrs = Vec::new();
        for c in &raw.client_cidrs {
            match c.parse::<Cidr>() {
                Ok(cidr) => client_cidrs.push(cidr),
                Err(e) => problems.push(format!("--client-cidr {e}")),
            }
        }
        let hostname = raw.hostname.as_deref().and_then(|h| match Host::parse(h) {
            Ok(Host::Name(name)) if name.contains('.') => Some(name),
            Ok(Host::Name(_)) => {
                problems.push(format!(
                    "--hostname {h:?} must be a fully qualified name (e.g. relay.example.com)"
                ));
                None
            }
            Ok(_) => {
                problems.push(format!("--hostname {h:?} must be a name, not an address"));
                None
            }
            Err(e) => {
                problems.push(format!("--hostname {h:?}: {e}"));
                None
            }
        });
        let tls = match (&raw.tls_cert, &raw.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => {
                problems.push("--tls-cert and --tls-key go together".to_string());
                None
            }
        };
        for path in [&raw.tls_cert, &raw.tls_key, &raw.mail_log]
            .into_iter()
            .flatten()
        {
            if !path.is_absolute() || path.to_str().is_none_or(unsafe_value) {
                problems.push(format!(
                    "{} must be an absolute path without spaces, commas or '$'",
                    path.display()
                ));
            }
        }
        let mut domains = Vec::new();
        for d in &raw.inbound_domains {
            match crate::policy::entry::normalize_domain(d, 2) {
                Ok(domain) => domains.push(domain),
                Err(e) => problems.push(format!("--inbound-domain {d:?}: {e}")),
            }
        }
        domains.sort();
        domains.dedup();
        let next_hop = raw
            .inbound_next_hop
            .as_deref()
            .and_then(|h| match parse_next_hop(h) {
                Ok(hop) => Some(hop),
                Err(e) => {
                    problems.push(format!("--inbound-next-hop {h:?}: {e}"));
                    None
                }
            });
        let inbound = match (domains.is_empty(), next_hop, &raw.inbound_next_hop) {
            (true, None, None) => None,
            (false, Some((next_hop, port)), _) => Some(Inbound {
                domains,
                next_hop,
                port,
            }),
            (false, None, None) => {
                problems.push(
                    "--inbound-domain needs --inbound-next-hop (the organisation's mail server)"
                        .to_string(),
                );
                None
            }
            (true, Some(_), _) => {
                problems.push("--inbound-next-hop needs at least one --inbound-domain".to_string());
                None
            }
            // The next hop's own problem is reported already.
            (_, None, Some(_)) => None,
        };
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        Ok(BaseSettings {
            client_cidrs,
            hostname,
            tls,
            inbound,
            mail_log: raw.mail_log.clone(),
        })
    }

    /// The main.cf parameters, in a fixed order. Every parameter this module owns is set,
    /// even to its "off" value, so the image's own main.cf never decides silently.
    pub fn params(&self) -> Vec<(&'static str, String)> {
        let mut mynetworks = LOOPBACK.to_string();
        for c in &self.client_cidrs {
            mynetworks.push(' ');
            mynetworks.push_str(&postfix_cidr(c));
        }
        let mut out = vec![
            ("mynetworks", mynetworks),
            // A client outside mynetworks may only send to the inbound domains; 5xx, not
            // Debian's default 4xx "defer", so a misdirected client stops retrying.
            (
                "smtpd_relay_restrictions",
                "permit_mynetworks, reject_unauth_destination".to_string(),
            ),
        ];
        if let Some(h) = &self.hostname {
            out.push(("myhostname", h.clone()));
        }
        match &self.tls {
            Some(tls) => {
                out.push(("smtpd_tls_security_level", "may".to_string()));
                out.push(("smtpd_tls_cert_file", tls.cert.display().to_string()));
                out.push(("smtpd_tls_key_file", tls.key.display().to_string()));
                out.push(("smtpd_tls_loglevel", "1".to_string()));
            }
            None => out.push(("smtpd_tls_security_level", "none".to_string())),
        }
        match &self.inbound {
            Some(inbound) => {
                out.push(("relay_domains", inbound.domains.join(" ")));
                out.push((
                    "relay_transport",
                    format!("relay:{}", inbound.next_hop.nexthop(inbound.port, false)),
                ));
            }
            None => out.push(("relay_domains", String::new())),
        }
        // Otherwise the image's own (standard output in the published image).
        if let Some(log) = &self.mail_log {
            out.push(("maillog_file", log.display().to_string()));
        }
        out
    }
}

/// `host`, `host:port`, `[host]:port` or `[v6]:port`; the port defaults to 25.
fn parse_next_hop(raw: &str) -> Result<(Host, u16), String> {
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| "a '[' without ']'".to_string())?;
        match after.strip_prefix(':') {
            Some(p) => (inner, Some(p)),
            None if after.is_empty() => (inner, None),
            None => return Err(format!("unexpected {after:?} after ']'")),
        }
    } else if raw.matches(':').count() == 1 {
        let (h, p) = raw.split_once(':').unwrap_or((raw, ""));
        (h, Some(p))
    } else {
        (raw, None)
    };
    let port = match port {
        None => 25,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{p:?} is not a port number"))?,
    };
    Ok((Host::parse(host)?, port))
}

/// IPv6 networks are written `[addr]/prefix` in mynetworks.
fn postfix_cidr(c: &Cidr) -> String {
    let text = c.to_string();
    match text.split_once('/') {
        Some((net, prefix)) if net.contains(':') => format!("[{net}]/{prefix}"),
        _ => text,
    }
}

/// Characters that would end or extend a main.cf value.
fn unsafe_value(s: &str) -> bool {
    s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || ",$={}".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawSettings {
        RawSettings::default()
    }

    fn param(s: &BaseSettings, name: &str) -> Option<String> {
        s.params()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    #[test]
    fn defaults_relay_for_the_pod_only_and_offer_no_tls() {
        let s = BaseSettings::parse(&raw()).expect("defaults");
        assert_eq!(param(&s, "mynetworks").as_deref(), Some(LOOPBACK));
        assert_eq!(
            param(&s, "smtpd_relay_restrictions").as_deref(),
            Some("permit_mynetworks, reject_unauth_destination")
        );
        assert_eq!(
            param(&s, "smtpd_tls_security_level").as_deref(),
            Some("none")
        );
        assert_eq!(param(&s, "relay_domains").as_deref(), Some(""));
        assert_eq!(param(&s, "myhostname"), None);
        assert_eq!(param(&s, "relay_transport"), None);
    }

    #[test]
    fn every_setting_becomes_its_parameter() {
        let s = BaseSettings::parse(&RawSettings {
            client_cidrs: vec!["10.0.0.0/8".into(), "fd00::/8".into(), "192.0.2.7".into()],
            hostname: Some("Relay.Example.COM".into()),
            tls_cert: Some("/etc/mailtls/tls/tls.crt".into()),
            tls_key: Some("/etc/mailtls/tls/tls.key".into()),
            inbound_domains: vec![
                "example.com.".into(),
                "Example.org".into(),
                "example.com".into(),
            ],
            inbound_next_hop: Some("mail.internal:2525".into()),
            mail_log: Some("/var/log/mailtls/maillog".into()),
        })
        .expect("valid");
        assert_eq!(
            param(&s, "maillog_file").as_deref(),
            Some("/var/log/mailtls/maillog")
        );
        assert_eq!(param(&BaseSettings::default(), "maillog_file"), None);
        assert_eq!(
            param(&s, "mynetworks").as_deref(),
            Some("127.0.0.0/8 [::1]/128 10.0.0.0/8 [fd00::]/8 192.0.2.7/32")
        );
        assert_eq!(
            param(&s, "myhostname").as_deref(),
            Some("relay.example.com")
        );
        assert_eq!(
            param(&s, "smtpd_tls_security_level").as_deref(),
            Some("may")
        );
        assert_eq!(
            param(&s, "smtpd_tls_cert_file").as_deref(),
            Some("/etc/mailtls/tls/tls.crt")
        );
        assert_eq!(
            param(&s, "smtpd_tls_key_file").as_deref(),
            Some("/etc/mailtls/tls/tls.key")
        );
        assert_eq!(
            param(&s, "relay_domains").as_deref(),
            Some("example.com example.org")
        );
        assert_eq!(
            param(&s, "relay_transport").as_deref(),
            Some("relay:[mail.internal]:2525")
        );
    }

    #[test]
    fn next_hop_forms() {
        let hop = |s: &str| parse_next_hop(s).map(|(h, p)| h.nexthop(p, false));
        assert_eq!(hop("mail.internal").as_deref(), Ok("[mail.internal]"));
        assert_eq!(
            hop("[mail.internal]:587").as_deref(),
            Ok("[mail.internal]:587")
        );
        assert_eq!(hop("10.1.2.3:26").as_deref(), Ok("[10.1.2.3]:26"));
        assert_eq!(hop("[fd00::1]:26").as_deref(), Ok("[ipv6:fd00::1]:26"));
        assert_eq!(hop("fd00::1").as_deref(), Ok("[ipv6:fd00::1]"));
        for bad in [
            "mail.internal:0",
            "mail.internal:x",
            "[mail",
            "[a]b",
            "",
            "a b",
        ] {
            assert!(hop(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = BaseSettings::parse(&RawSettings {
            client_cidrs: vec!["10.1.2.3/8".into(), "nonsense".into()],
            hostname: Some("relay".into()),
            tls_cert: Some("relative.crt".into()),
            tls_key: None,
            inbound_domains: vec!["bad domain".into()],
            inbound_next_hop: Some("mail.internal:99999".into()),
            mail_log: Some("maillog".into()),
        })
        .expect_err("invalid");
        for wanted in [
            "host bits set",
            "\"nonsense\" is not an address range",
            "fully qualified",
            "--tls-cert and --tls-key go together",
            "relative.crt must be an absolute path",
            "maillog must be an absolute path",
            "--inbound-domain \"bad domain\"",
            "\"99999\" is not a port number",
        ] {
            assert!(e.contains(wanted), "{wanted:?} missing from:\n{e}");
        }
        assert_eq!(e.lines().count(), 8, "{e}");
    }

    #[test]
    fn inbound_needs_both_halves() {
        let only_domains = RawSettings {
            inbound_domains: vec!["example.com".into()],
            ..raw()
        };
        assert!(
            BaseSettings::parse(&only_domains)
                .expect_err("no next hop")
                .contains("needs --inbound-next-hop")
        );
        let only_hop = RawSettings {
            inbound_next_hop: Some("mail.internal".into()),
            ..raw()
        };
        assert!(
            BaseSettings::parse(&only_hop)
                .expect_err("no domains")
                .contains("needs at least one --inbound-domain")
        );
    }

    #[test]
    fn hostname_must_be_a_name() {
        for (h, wanted) in [
            ("192.0.2.1", "not an address"),
            ("relay", "fully qualified"),
            ("-relay.example", "starts with '-'"),
        ] {
            let e = BaseSettings::parse(&RawSettings {
                hostname: Some(h.into()),
                ..raw()
            })
            .expect_err(h);
            assert!(e.contains(wanted), "{h}: {e}");
        }
    }

    #[test]
    fn paths_cannot_extend_the_value() {
        for bad in [
            "/etc/a b.crt",
            "/etc/a,b.crt",
            "/etc/$x.crt",
            "/etc/a\n.crt",
        ] {
            let e = BaseSettings::parse(&RawSettings {
                tls_cert: Some(bad.into()),
                tls_key: Some("/etc/k".into()),
                ..raw()
            })
            .expect_err(bad);
            assert!(e.contains("absolute path without spaces"), "{bad:?}: {e}");
            let e = BaseSettings::parse(&RawSettings {
                mail_log: Some(bad.into()),
                ..raw()
            })
            .expect_err(bad);
            assert!(e.contains("absolute path without spaces"), "{bad:?}: {e}");
        }
    }
}
