//! DNS answers a validating resolver vouches for: each query asks for the AD bit (RFC 6840
//! §5.7) and each answer says whether it came back set (RFC 4035 §3.2.3). Like Postfix with
//! `options trust-ad`, this trusts the resolver it asks, so that must be a validating resolver
//! on the same host. As glibc does for Postfix, the system's resolver is trusted only when
//! /etc/resolv.conf says `options trust-ad`, so the relay agent and Postfix never disagree
//! about what is authenticated; a resolver given explicitly is trusted.
//!
//! DANE for SMTP (RFC 7672): TLSA records count only when the MX RRset and the TLSA RRset
//! are both authenticated, and only usages DANE-TA(2) and DANE-EE(3).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::TlsaRecord;
use super::dns::DnsError;

/// One answer: its records of the asked type, and whether the resolver authenticated them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub records: Vec<RData>,
    pub authenticated: bool,
    /// NXDOMAIN: the name does not exist (possibly proven so).
    pub nx_domain: bool,
    /// The least TTL of `records` (seconds); `None` without records.
    pub ttl: Option<u32>,
}

/// TLSA records and whether DNSSEC authenticated them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tlsa {
    pub records: Vec<TlsaRecord>,
    pub authenticated: bool,
}

/// Whether DANE applies to a domain's mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dane {
    /// These MX hosts have authenticated, usable TLSA records: delivery must match them.
    Usable(Vec<String>),
    /// DANE does not apply, and why (unsigned MX records, no TLSA records, ...).
    NotUsable(String),
}

/// A client of one resolver that reports the AD bit.
#[derive(Clone, Debug)]
pub struct Validated {
    server: SocketAddr,
    timeout: Duration,
    /// Whether the AD bit of this resolver's answers counts.
    trust_ad: bool,
}

/// Room for TLSA and MX answers over UDP (the usual EDNS size, DNS flag day 2020).
const UDP_PAYLOAD: u16 = 1232;

impl Validated {
    /// Ask `server`, or the first nameserver of the system's resolver configuration. Without
    /// a usable one nothing counts as authenticated (and lookups fail, as the system's do).
    pub fn new(server: Option<SocketAddr>, timeout: Duration) -> Result<Validated, DnsError> {
        let (server, trust_ad) = match server {
            Some(s) => (s, true),
            None => system_nameserver().unwrap_or_else(|e| {
                tracing::warn!("DNSSEC lookups: {e}; no answer counts as authenticated");
                (SocketAddr::from(([127, 0, 0, 1], 53)), false)
            }),
        };
        Ok(Validated {
            server,
            timeout,
            trust_ad,
        })
    }

    /// Records of `rtype` at `name`. SERVFAIL is an error: from a validating resolver it
    /// usually means the answer was bogus, and nothing may be concluded from it.
    pub async fn query(&self, name: &str, rtype: RecordType) -> Result<Answer, DnsError> {
        let failed = |message: String| DnsError::Lookup {
            name: name.to_string(),
            rtype: super::dns::rtype_name(rtype),
            message,
        };
        let qname = Name::from_str_relaxed(fqdn(name)).map_err(|e| failed(e.to_string()))?;
        let mut request = Message::new(rand_id(), MessageType::Query, OpCode::Query);
        request.metadata.recursion_desired = true;
        request.metadata.authentic_data = true;
        request.add_query(Query::query(qname.clone(), rtype));
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_PAYLOAD);
        request.set_edns(edns);
        let bytes = request.to_vec().map_err(|e| failed(e.to_string()))?;

        let exchange = async {
            // A lost datagram gets one more try within the time limit, as glibc's attempts.
            let first = tokio::time::timeout(self.timeout / 2, udp_exchange(self.server, &bytes));
            let mut response = match first.await {
                Ok(answer) => answer?,
                Err(_) => udp_exchange(self.server, &bytes).await?,
            };
            if response.metadata.truncation {
                response = tcp_exchange(self.server, &bytes).await?;
            }
            Ok::<Message, String>(response)
        };
        let response = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| failed(format!("no answer from {} in time", self.server)))?
            .map_err(failed)?;
        if response.metadata.id != request.metadata.id
            || response.queries.first().map(|q| (q.name(), q.query_type())) != Some((&qname, rtype))
        {
            return Err(failed("the answer is for another question".into()));
        }
        let code = response.metadata.response_code;
        if code != ResponseCode::NoError && code != ResponseCode::NXDomain {
            return Err(failed(format!(
                "{code} from {} (a validating resolver says SERVFAIL for bogus DNSSEC)",
                self.server
            )));
        }
        let answers = || response.answers.iter().filter(|r| r.record_type() == rtype);
        Ok(Answer {
            records: answers().map(|r| r.data.clone()).collect(),
            authenticated: self.trust_ad && response.metadata.authentic_data,
            nx_domain: code == ResponseCode::NXDomain,
            ttl: answers().map(|r| r.ttl).min(),
        })
    }

    /// TLSA records at `_<port>._tcp.<host>`, with their authentication.
    pub async fn tlsa(&self, host: &str, port: u16) -> Result<Tlsa, DnsError> {
        self.tlsa_answer(host, port).await.map(|(tlsa, _)| tlsa)
    }

    /// [`Self::tlsa`] and the least TTL of its records.
    async fn tlsa_answer(&self, host: &str, port: u16) -> Result<(Tlsa, Option<u32>), DnsError> {
        let answer = self
            .query(&format!("_{port}._tcp.{host}"), RecordType::TLSA)
            .await?;
        let tlsa = Tlsa {
            records: answer
                .records
                .into_iter()
                .filter_map(|d| match d {
                    RData::TLSA(t) => Some(TlsaRecord {
                        usage: u8::from(t.cert_usage),
                        selector: u8::from(t.selector),
                        matching: u8::from(t.matching),
                        data: super::tls::hex_encode(&t.cert_data),
                    }),
                    _ => None,
                })
                .collect(),
            authenticated: answer.authenticated,
        };
        Ok((tlsa, answer.ttl))
    }

    /// Whether DANE applies to mail for `domain` (RFC 7672 §2.2): an error when a lookup
    /// fails, so the caller can wait instead of sending with less. With it, the least TTL
    /// of the records the answer rests on (`None` when it rests on no record: a name or
    /// record that does not exist).
    pub async fn dane(&self, domain: &str) -> Result<(Dane, Option<u32>), DnsError> {
        let mx = self.query(domain, RecordType::MX).await?;
        if mx.nx_domain {
            return Ok((Dane::NotUsable(format!("{domain} does not exist")), None));
        }
        if !mx.authenticated {
            return Ok((
                Dane::NotUsable(format!(
                    "the MX records of {domain} are not DNSSEC-authenticated"
                )),
                mx.ttl,
            ));
        }
        let mut hosts: Vec<String> = mx
            .records
            .iter()
            .filter_map(|d| match d {
                RData::MX(m) => Some(
                    m.exchange
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase(),
                ),
                _ => None,
            })
            .collect();
        if hosts.is_empty() {
            // No MX records: the domain is its own mail host.
            hosts.push(domain.trim_end_matches('.').to_ascii_lowercase());
        }
        if hosts.iter().all(String::is_empty) {
            return Ok((
                Dane::NotUsable(format!("{domain} accepts no mail (null MX)")),
                mx.ttl,
            ));
        }
        let mut usable = Vec::new();
        let mut ttl = mx.ttl;
        for host in hosts.iter().filter(|h| !h.is_empty()) {
            let (tlsa, tlsa_ttl) = self.tlsa_answer(host, 25).await?;
            ttl = ttl.into_iter().chain(tlsa_ttl).min();
            if tlsa.authenticated && tlsa.records.iter().any(usable_for_smtp) {
                usable.push(host.clone());
            }
        }
        let dane = if usable.is_empty() {
            Dane::NotUsable(format!(
                "no MX host of {domain} has authenticated DANE-TA or DANE-EE TLSA records"
            ))
        } else {
            Dane::Usable(usable)
        };
        Ok((dane, ttl))
    }
}

/// RFC 7672 §3.1.3: PKIX-TA(0) and PKIX-EE(1) are not used for SMTP.
pub fn usable_for_smtp(r: &TlsaRecord) -> bool {
    matches!(r.usage, 2 | 3)
}

async fn udp_exchange(server: SocketAddr, bytes: &[u8]) -> Result<Message, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    socket.connect(server).await.map_err(|e| e.to_string())?;
    socket.send(bytes).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65_535];
    let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
    Message::from_vec(&buf[..n]).map_err(|e| format!("malformed answer: {e}"))
}

async fn tcp_exchange(server: SocketAddr, bytes: &[u8]) -> Result<Message, String> {
    let mut conn = TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let len = u16::try_from(bytes.len()).map_err(|_| "query too long".to_string())?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    conn.write_all(&framed).await.map_err(|e| e.to_string())?;
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    Message::from_vec(&buf).map_err(|e| format!("malformed answer: {e}"))
}

/// Whether the system's resolver configuration passes the AD bit on (`options trust-ad`), so
/// Postfix can see DNSSEC-authenticated answers at all.
pub fn system_trusts_ad() -> bool {
    system_nameserver().is_ok_and(|(_, trust)| trust)
}

/// The first `nameserver` of /etc/resolv.conf, as glibc uses it, and whether it has
/// `options trust-ad`.
fn system_nameserver() -> Result<(SocketAddr, bool), DnsError> {
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| DnsError::Setup(format!("/etc/resolv.conf: {e}")))?;
    resolv_conf(&text).ok_or_else(|| DnsError::Setup("/etc/resolv.conf names no nameserver".into()))
}

fn resolv_conf(text: &str) -> Option<(SocketAddr, bool)> {
    let words = |key: &'static str| {
        text.lines()
            .filter_map(move |l| l.trim().strip_prefix(key))
            .filter(|rest| rest.starts_with(char::is_whitespace))
    };
    // A scoped IPv6 address (fe80::1%eth0) is used without its zone.
    let server = words("nameserver")
        .find_map(|rest| {
            let addr = rest.trim();
            addr.split('%').next()?.parse::<std::net::IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))?;
    let trust_ad = words("options").any(|rest| rest.split_whitespace().any(|o| o == "trust-ad"));
    Some((server, trust_ad))
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// A query id nobody on the path can guess (the answer is matched on it).
fn rand_id() -> u16 {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_resolver_is_trusted_only_with_trust_ad() {
        let (server, trust) =
            resolv_conf("# c\nsearch x\nnameserver 127.0.0.1\nnameserver 10.0.0.1\n")
                .expect("server");
        assert_eq!(server, "127.0.0.1:53".parse().expect("addr"));
        assert!(!trust);
        let (_, trust) =
            resolv_conf("nameserver 127.0.0.1\noptions ndots:1 trust-ad\n").expect("server");
        assert!(trust);
        assert_eq!(resolv_conf("options trust-ad\n"), None);
        assert_eq!(resolv_conf("nameservers 1.2.3.4\n"), None);
    }

    /// A resolver on loopback that ignores the first `drop` queries and answers the others
    /// (with the AD bit, and the query's id plus `id_offset`).
    async fn resolver(drop: usize, id_offset: u16) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut seen = 0;
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                seen += 1;
                if seen <= drop {
                    continue;
                }
                let query = Message::from_vec(&buf[..n]).expect("query");
                let mut reply =
                    Message::response(query.metadata.id.wrapping_add(id_offset), OpCode::Query);
                reply.metadata.authentic_data = true;
                reply.metadata.recursion_available = true;
                reply.add_queries(query.queries.clone());
                let bytes = reply.to_vec().expect("reply");
                let _ = socket.send_to(&bytes, from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_lost_datagram_is_asked_again_and_a_foreign_answer_refused() {
        let timeout = Duration::from_secs(2);
        let lossy = Validated::new(Some(resolver(1, 0).await), timeout).expect("client");
        let answer = lossy
            .query("_25._tcp.mx.example", RecordType::TLSA)
            .await
            .expect("answered on the second try");
        assert!(answer.authenticated && answer.records.is_empty() && !answer.nx_domain);
        let foreign = Validated::new(Some(resolver(0, 1).await), timeout).expect("client");
        let err = foreign
            .query("_25._tcp.mx.example", RecordType::TLSA)
            .await
            .expect_err("another id");
        assert!(err.to_string().contains("another question"), "{err}");
    }

    #[test]
    fn only_dane_usages_count_for_smtp() {
        let rec = |usage| TlsaRecord {
            usage,
            selector: 1,
            matching: 1,
            data: "00".into(),
        };
        assert!(usable_for_smtp(&rec(2)) && usable_for_smtp(&rec(3)));
        assert!(!usable_for_smtp(&rec(0)) && !usable_for_smtp(&rec(1)));
    }
}
