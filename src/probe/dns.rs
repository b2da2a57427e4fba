//! DNS for probes (hickory-resolver): MX in preference order with the RFC 5321 §5.1
//! implicit-MX fallback, null MX (RFC 7505), addresses and the MTA-STS TXT record (TLSA, whose
//! authentication matters, is in [`super::dnssec`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use tokio::sync::Semaphore;

use super::MxHost;

/// A DNS failure, with the name and type that failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DnsError {
    #[error("{name} does not exist (NXDOMAIN)")]
    NxDomain { name: String },
    #[error("{name} has no {rtype} or address records")]
    NoRecords { name: String, rtype: &'static str },
    #[error("{rtype} lookup for {name} failed: {message}")]
    Lookup {
        name: String,
        rtype: &'static str,
        message: String,
    },
    #[error("cannot set up the resolver: {0}")]
    Setup(String),
}

/// Where mail for a domain goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MxSet {
    /// MX records, lowest preference first (ties keep DNS order).
    Records(Vec<MxHost>),
    /// No MX records but the domain has addresses: the domain is its own MX.
    Implicit(MxHost),
    /// `MX 0 .`: the domain accepts no mail.
    NullMx,
}

/// A resolver, either the system one or a given server.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    /// Bounds queries in flight: thousands of destinations must not flood the server.
    in_flight: Arc<Semaphore>,
}

/// Most DNS queries in flight at once per resolver.
const MAX_QUERIES_IN_FLIGHT: usize = 64;

/// Outcome of a lookup that may legitimately find nothing.
enum Found<T> {
    Some(T),
    NoRecords,
    NxDomain,
}

impl Dns {
    /// Build the resolver: `server` (IP:PORT, UDP then TCP) or the system configuration.
    pub fn new(server: Option<SocketAddr>, timeout: Duration) -> Result<Dns, DnsError> {
        let builder = match server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                let mut opts = ResolverOpts::default();
                // A given server is the whole truth: no /etc/hosts.
                opts.use_hosts_file = ResolveHosts::Never;
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                )
                .with_options(opts)
            }
            None => TokioResolver::builder_tokio().map_err(|e| DnsError::Setup(e.to_string()))?,
        };
        let mut builder = builder;
        let opts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = 2;
        opts.ndots = 0;
        opts.cache_size = 1024;
        let resolver = builder
            .build()
            .map_err(|e| DnsError::Setup(e.to_string()))?;
        Ok(Dns {
            resolver,
            in_flight: Arc::new(Semaphore::new(MAX_QUERIES_IN_FLIGHT)),
        })
    }

    async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Found<Vec<RData>>, DnsError> {
        let fqdn = fqdn(name);
        // The semaphore is never closed, so acquire only fails if it were; then go ahead.
        let _permit = self.in_flight.acquire().await.ok();
        match self.resolver.lookup(fqdn.as_str(), rtype).await {
            Ok(lookup) => {
                let data: Vec<RData> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data.clone())
                    .collect();
                Ok(if data.is_empty() {
                    Found::NoRecords
                } else {
                    Found::Some(data)
                })
            }
            Err(e) if e.is_nx_domain() => Ok(Found::NxDomain),
            Err(e) if e.is_no_records_found() => Ok(Found::NoRecords),
            Err(e) => Err(lookup_error(name, rtype, &e)),
        }
    }

    /// MX hosts of `domain` (RFC 5321 §5.1, RFC 7505).
    pub async fn mx(&self, domain: &str) -> Result<MxSet, DnsError> {
        match self.lookup(domain, RecordType::MX).await? {
            Found::NxDomain => Err(DnsError::NxDomain {
                name: domain.to_string(),
            }),
            Found::NoRecords => {
                // Implicit MX only when the domain itself has an address.
                let addrs = self.addresses(domain).await?;
                if addrs.is_empty() {
                    return Err(DnsError::NoRecords {
                        name: domain.to_string(),
                        rtype: "MX",
                    });
                }
                Ok(MxSet::Implicit(MxHost {
                    preference: 0,
                    host: domain.trim_end_matches('.').to_ascii_lowercase(),
                }))
            }
            Found::Some(data) => {
                let mut hosts: Vec<MxHost> = data
                    .into_iter()
                    .filter_map(|d| match d {
                        RData::MX(mx) => Some(MxHost {
                            preference: mx.preference,
                            host: mx
                                .exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                        }),
                        _ => None,
                    })
                    .collect();
                if hosts.len() == 1 && hosts[0].host.is_empty() {
                    return Ok(MxSet::NullMx);
                }
                // A null MX among others is invalid (RFC 7505 §3); skip it.
                hosts.retain(|h| !h.host.is_empty());
                hosts.sort_by_key(|h| h.preference);
                hosts.dedup_by(|a, b| a.host == b.host);
                Ok(MxSet::Records(hosts))
            }
        }
    }

    /// A then AAAA addresses of `host` (empty when it has none). An IP literal is itself.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let mut out = Vec::new();
        let mut nx = false;
        for rtype in [RecordType::A, RecordType::AAAA] {
            match self.lookup(host, rtype).await? {
                Found::Some(data) => out.extend(data.iter().filter_map(RData::ip_addr)),
                Found::NxDomain => nx = true,
                Found::NoRecords => {}
            }
        }
        if out.is_empty() && nx {
            return Err(DnsError::NxDomain {
                name: host.to_string(),
            });
        }
        Ok(out)
    }

    /// TXT strings at `name`, each record's strings joined (RFC 8461 §3.1).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        Ok(match self.lookup(name, RecordType::TXT).await? {
            Found::Some(data) => data
                .into_iter()
                .filter_map(|d| match d {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn lookup_error(name: &str, rtype: RecordType, e: &NetError) -> DnsError {
    DnsError::Lookup {
        name: name.to_string(),
        rtype: rtype_name(rtype),
        message: e.to_string(),
    }
}

pub(crate) fn rtype_name(rtype: RecordType) -> &'static str {
    match rtype {
        RecordType::MX => "MX",
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::TLSA => "TLSA",
        RecordType::TXT => "TXT",
        _ => "DNS",
    }
}
