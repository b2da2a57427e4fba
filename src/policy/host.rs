//! Gateway host names and IP literals, and the Postfix next-hop they become.

use super::entry::normalize_domain;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A validated gateway host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    /// A DNS name in lowercase ASCII (punycode), without a trailing dot.
    Name(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Host {
    /// Parse a host as written in `spec.host`.
    pub fn parse(raw: &str) -> Result<Host, String> {
        if raw.is_empty() {
            return Err("host is empty".into());
        }
        if raw.starts_with('-') {
            return Err("host starts with '-'".into());
        }
        let inner = raw
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(raw);
        if let Ok(ip) = inner.parse::<Ipv4Addr>() {
            return Ok(Host::V4(ip));
        }
        if let Ok(ip) = inner
            .strip_prefix("ipv6:")
            .unwrap_or(inner)
            .parse::<Ipv6Addr>()
        {
            return Ok(Host::V6(ip));
        }
        if inner.contains(':') {
            return Err(
                "not a valid IPv6 address; write a port in spec.port, not in the host".into(),
            );
        }
        if inner.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err("not a valid IPv4 address".into());
        }
        normalize_domain(inner, 1)
            .map(Host::Name)
            .map_err(|e| format!("not a valid host name: {e}"))
    }

    pub fn is_ip(&self) -> bool {
        !matches!(self, Host::Name(_))
    }

    /// The host as Postfix writes it inside brackets (`ipv6:` prefix for IPv6).
    fn postfix_form(&self) -> String {
        match self {
            Host::Name(n) => n.clone(),
            Host::V4(ip) => ip.to_string(),
            Host::V6(ip) => format!("ipv6:{ip}"),
        }
    }

    /// The Postfix next-hop: `[host]` or `[host]:port` without MX lookup, `host` or
    /// `host:port` with it. Port 25 is left out so the key matches what Postfix looks up.
    /// IP literals always use brackets (an IP has no MX records).
    pub fn nexthop(&self, port: u16, mx_lookup: bool) -> String {
        let host = if mx_lookup && !self.is_ip() {
            self.postfix_form()
        } else {
            format!("[{}]", self.postfix_form())
        };
        if port == 25 {
            host
        } else {
            format!("{host}:{port}")
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::V4(ip) => write!(f, "{ip}"),
            Host::V6(ip) => write!(f, "{ip}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_normalised() {
        let shown = |raw: &str| Host::parse(raw).expect(raw).to_string();
        assert_eq!(shown("Relay.Example.NET."), "relay.example.net");
        assert_eq!(shown("[192.0.2.1]"), "192.0.2.1");
        assert_eq!(shown("ipv6:2001:DB8::1"), "2001:db8::1");
    }

    #[test]
    fn nexthop_forms() {
        let h = Host::parse("Relay.Example.NET.").expect("name");
        assert_eq!(h.nexthop(25, false), "[relay.example.net]");
        assert_eq!(h.nexthop(587, false), "[relay.example.net]:587");
        assert_eq!(h.nexthop(25, true), "relay.example.net");
        assert_eq!(h.nexthop(2525, true), "relay.example.net:2525");
        assert_eq!(
            Host::parse("192.0.2.1").expect("v4").nexthop(25, true),
            "[192.0.2.1]"
        );
        assert_eq!(
            Host::parse("[2001:db8::1]")
                .expect("v6")
                .nexthop(465, false),
            "[ipv6:2001:db8::1]:465"
        );
    }

    #[test]
    fn bad_hosts_say_why() {
        for (raw, why) in [
            ("", "empty"),
            ("-gw", "'-'"),
            ("gw.example:25", "port"),
            ("999.1.1.1", "IPv4"),
            ("gw example", "host name"),
            ("cafe.babe:25", "port"),
        ] {
            let err = Host::parse(raw).expect_err(raw);
            assert!(err.contains(why), "{raw}: {err}");
        }
    }
}
