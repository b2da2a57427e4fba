//! How the TLS tests of `standalone --tests` and `run` connect.

use super::probe::{parse_duration, read_pem_certs};
use crate::probe::{AddressPolicy, ProbeConfig, Prober, Timeouts};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the TLS tests connect (`standalone --tests`, `run`).
#[derive(Args, Debug, Clone)]
pub struct ProbeFlags {
    /// DNS server for the tests instead of the system resolver.
    #[arg(long, value_name = "IP:PORT")]
    pub resolver: Option<SocketAddr>,
    /// Extra trusted CA certificates (PEM) for the tests, e.g. a private CA.
    #[arg(long, value_name = "PEM")]
    pub test_ca_file: Option<PathBuf>,
    /// Time limit of each step of a test (connect, each reply, handshake).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub test_timeout: Duration,
    /// Most SMTP sessions in flight at once, over all resources.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub test_concurrency: u16,
    /// SMTP port of MX hosts (always 25 in real use; tests override it).
    #[arg(long, default_value_t = 25, hide = true)]
    pub test_smtp_port: u16,
    /// HTTPS port of MTA-STS policy hosts (always 443 in real use; tests override it).
    #[arg(long, default_value_t = 443, hide = true)]
    pub test_sts_port: u16,
}

impl ProbeFlags {
    /// The prober for these settings, connecting to any address (`standalone`: its user
    /// runs it on files of their choosing, like `probe`).
    pub fn prober(&self) -> Result<Prober, String> {
        self.prober_with(AddressPolicy::any())
    }

    /// The prober for these settings, connecting only where `addresses` allows.
    pub fn prober_with(&self, addresses: AddressPolicy) -> Result<Prober, String> {
        let mut config = ProbeConfig {
            resolver: self.resolver,
            smtp_port: self.test_smtp_port,
            sts_port: self.test_sts_port,
            timeouts: Timeouts::from_step(self.test_timeout),
            concurrency: usize::from(self.test_concurrency),
            addresses,
            ..ProbeConfig::default()
        };
        if let Some(path) = &self.test_ca_file {
            config.extra_roots = read_pem_certs(path).map_err(|e| e.0)?;
        }
        Prober::new(config).map_err(|e| format!("cannot set up the TLS tests: {e}"))
    }
}
