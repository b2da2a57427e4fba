//! Which addresses a probe may connect to. The controller tests destinations that tenants
//! name (gateway hosts, MX hosts of their domains), so without a rule any tenant could make
//! the operator connect to the cluster's own services and report what answered. The check
//! runs on the resolved address right before each connection, so a name that resolves to
//! an internal address (DNS rebinding included) is refused like the literal.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range, `10.0.0.0/8` or `fd00::/8` (a bare address is a single host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
        Cidr {
            net: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    const fn v6(segments: [u16; 8], prefix: u8) -> Cidr {
        let [a, b, c, d, e, f, g, h] = segments;
        Cidr {
            net: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    /// Whether `ip` lies in this range (an IPv4 range never holds an IPv6 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address range (e.g. 10.0.0.0/8)"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        let cidr = Cidr { net, prefix };
        // Host bits set (10.1.2.3/8) usually means a typo in the prefix.
        if masked(net, prefix) != net {
            return Err(format!(
                "{s:?} has host bits set; did you mean {}?",
                Cidr {
                    net: masked(net, prefix),
                    prefix
                }
            ));
        }
        Ok(cidr)
    }
}

fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    fn mask(bytes: &mut [u8], prefix: u8) {
        for (i, b) in bytes.iter_mut().enumerate() {
            let bits = usize::from(prefix).saturating_sub(i * 8).min(8);
            *b &= if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
        }
    }
    match ip {
        IpAddr::V4(v4) => {
            let mut o = v4.octets();
            mask(&mut o, prefix);
            IpAddr::V4(o.into())
        }
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            mask(&mut o, prefix);
            IpAddr::V6(o.into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// Ranges refused by default, with the name a refusal reports.
const BLOCKED: &[(Cidr, &str)] = &[
    (Cidr::v4(0, 0, 0, 0, 8), "unspecified"),
    (Cidr::v4(127, 0, 0, 0, 8), "loopback"),
    (Cidr::v4(10, 0, 0, 0, 8), "private"),
    (Cidr::v4(172, 16, 0, 0, 12), "private"),
    (Cidr::v4(192, 168, 0, 0, 16), "private"),
    (Cidr::v4(100, 64, 0, 0, 10), "shared (CGNAT)"),
    (Cidr::v4(169, 254, 0, 0, 16), "link-local"),
    (Cidr::v4(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (Cidr::v4(198, 18, 0, 0, 15), "benchmarking"),
    (Cidr::v4(224, 0, 0, 0, 4), "multicast"),
    (Cidr::v4(240, 0, 0, 0, 4), "reserved or broadcast"),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "private (ULA)"),
    (Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "site-local"),
    (Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// Why an address was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub address: IpAddr,
    /// `loopback`, `private`, `cluster range 10.96.0.0/12`, …
    pub class: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is a {} address, which the controller's tests do not connect to \
             (allow it with --test-allow-cidr)",
            self.address, self.class
        )
    }
}

/// The rule for the destinations of a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Whether the default-refused ranges (and `denied`) are refused at all.
    restricted: bool,
    /// Ranges connected to even though refused otherwise.
    allowed: Vec<Cidr>,
    /// Further ranges refused, e.g. the cluster's service and pod ranges.
    denied: Vec<Cidr>,
}

impl AddressPolicy {
    /// Connect anywhere (`mailtls probe`: its user chooses the destination).
    pub fn any() -> AddressPolicy {
        AddressPolicy {
            restricted: false,
            allowed: Vec::new(),
            denied: Vec::new(),
        }
    }

    /// Refuse loopback, private, link-local, CGNAT, unspecified, multicast and reserved
    /// addresses and `denied`, except what `allowed` holds.
    pub fn public_only(allowed: Vec<Cidr>, denied: Vec<Cidr>) -> AddressPolicy {
        AddressPolicy {
            restricted: true,
            allowed,
            denied,
        }
    }

    /// Ok when a probe may connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        if !self.restricted {
            return Ok(());
        }
        // An IPv4 address in IPv6 clothing is judged as the IPv4 address it reaches.
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .or_else(|| nat64(v6).map(IpAddr::V4))
                .unwrap_or(ip),
            v4 => v4,
        };
        if self.allowed.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        let refuse = |class: String| Err(Refused { address: ip, class });
        if let Some((_, class)) = BLOCKED.iter().find(|(c, _)| c.contains(ip)) {
            return refuse(class.to_string());
        }
        if let Some(c) = self.denied.iter().find(|c| c.contains(ip)) {
            return refuse(format!("cluster range {c}"));
        }
        Ok(())
    }
}

impl Default for AddressPolicy {
    /// Fail closed: a prober built without a word about addresses stays off internal ones.
    fn default() -> Self {
        AddressPolicy::public_only(Vec::new(), Vec::new())
    }
}

/// The IPv4 address behind the well-known NAT64 prefix 64:ff9b::/96.
fn nat64(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]).then(|| {
        let o = v6.octets();
        Ipv4Addr::new(o[12], o[13], o[14], o[15])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    fn class(p: &AddressPolicy, s: &str) -> Option<String> {
        p.check(ip(s)).err().map(|r| r.class)
    }

    #[test]
    fn internal_addresses_are_refused_by_default() {
        let p = AddressPolicy::default();
        for (addr, expected) in [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("::1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("fd12:3456::1", "private (ULA)"),
            ("fc00::1", "private (ULA)"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("100.127.255.255", "shared (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "reserved or broadcast"),
            // IPv4-mapped and NAT64 forms reach the IPv4 address inside.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
        ] {
            assert_eq!(class(&p, addr).as_deref(), Some(expected), "{addr}");
        }
    }

    #[test]
    fn public_addresses_pass_and_range_edges_hold() {
        let p = AddressPolicy::default();
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "11.0.0.0",
            "2001:4860:4860::8888",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(class(&p, addr), None, "{addr}");
        }
    }

    #[test]
    fn the_allow_list_wins_and_cluster_ranges_are_refused() {
        let p = AddressPolicy::public_only(
            vec![cidr("127.0.0.0/8"), cidr("10.20.0.5")],
            vec![cidr("34.118.224.0/20"), cidr("2600:1900::/28")],
        );
        assert_eq!(class(&p, "127.0.0.1"), None);
        assert_eq!(class(&p, "::ffff:127.0.0.2"), None);
        assert_eq!(class(&p, "10.20.0.5"), None);
        assert_eq!(class(&p, "10.20.0.6").as_deref(), Some("private"));
        assert_eq!(class(&p, "::1").as_deref(), Some("loopback"));
        assert_eq!(
            class(&p, "34.118.230.1").as_deref(),
            Some("cluster range 34.118.224.0/20")
        );
        assert_eq!(
            class(&p, "2600:1900:1::1").as_deref(),
            Some("cluster range 2600:1900::/28")
        );
        assert_eq!(class(&p, "34.118.240.1"), None);
    }

    #[test]
    fn any_connects_anywhere() {
        let p = AddressPolicy::any();
        for addr in ["127.0.0.1", "::1", "10.0.0.1", "169.254.169.254"] {
            assert_eq!(class(&p, addr), None, "{addr}");
        }
    }

    #[test]
    fn ranges_parse_and_bad_ones_are_refused() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("10.0.0.7").to_string(), "10.0.0.7/32");
        assert_eq!(cidr("fd00::/8").to_string(), "fd00::/8");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert!(cidr("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!cidr("0.0.0.0/0").contains(ip("::1")));
        assert!(cidr("10.96.0.0/12").contains(ip("10.111.255.255")));
        assert!(!cidr("10.96.0.0/12").contains(ip("10.112.0.0")));
        for (bad, why) in [
            ("10.0.0.0/33", "prefix"),
            ("fd00::/129", "prefix"),
            ("10.1.2.3/8", "did you mean 10.0.0.0/8"),
            ("example.com/8", "not an address range"),
            ("10.0.0.0/", "prefix"),
            ("", "not an address range"),
        ] {
            let err = bad.parse::<Cidr>().expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
