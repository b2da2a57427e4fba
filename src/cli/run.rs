//! `mailtls run`: the controller in a cluster.

use super::output::RenderFlags;
use super::{EXIT_INVALID, EXIT_USAGE};
use crate::controller::{DEFAULT_RELAY_SELECTOR, LeaseSettings, RelaySettings, Settings};
use crate::probe::{AddressPolicy, Cidr};
use clap::Args;
use std::net::SocketAddr;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  mailtls run\n  mailtls run --namespace mail --namespace partners --leader-election --log-format json"
)]
pub struct RunArgs {
    /// Namespace to watch (repeatable); default: all namespaces.
    #[arg(long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,
    /// Name of the ConfigMap written in each namespace.
    #[arg(long, value_name = "NAME", default_value = "mailtls-relay")]
    pub config_map: String,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Log format on stderr (the level comes from RUST_LOG, default info).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub flags: RenderFlags,
    /// Only write while holding a coordination.k8s.io Lease (for more than one replica).
    #[arg(long)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, value_name = "NAME", default_value = "mailtls-controller")]
    pub lease_name: String,
    /// Namespace of the Lease (in a pod: set POD_NAMESPACE from the downward API).
    #[arg(long, value_name = "NS", env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, value_name = "SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=600))]
    pub lease_duration: u64,
    /// This instance's name in the Lease and in Events (default: POD_NAME, else the host
    /// name and process id).
    #[arg(long, value_name = "ID", env = "POD_NAME")]
    pub identity: Option<String>,
    /// Do not run the periodic TLS tests (they run by default, on each resource's
    /// spec.test.interval and whenever its mailtls.io/test-now annotation changes).
    #[arg(long)]
    pub no_tests: bool,
    #[command(flatten)]
    pub probe: super::probe_flags::ProbeFlags,
    /// Address range the TLS tests may connect to although it is internal (repeatable),
    /// e.g. 10.20.0.0/16 for a gateway inside the network. By default the tests refuse
    /// loopback, private (RFC 1918, ULA), link-local, CGNAT, unspecified, multicast and
    /// reserved addresses and the --test-deny-cidr ranges, checked on the resolved address.
    #[arg(long = "test-allow-cidr", value_name = "CIDR")]
    pub test_allow: Vec<Cidr>,
    /// Further address range the TLS tests refuse (repeatable): the cluster's service and
    /// pod ranges when they are not private addresses.
    #[arg(long = "test-deny-cidr", value_name = "CIDR")]
    pub test_deny: Vec<Cidr>,
    /// Label selector of the EndpointSlices of the relay pods' agent port (the port named
    /// "status"; the chart's headless <release>-relay-status Service). Each relay agent is
    /// asked for the hash it applied (GET /status), and every policy's status.relayConfig
    /// counts the pods at its hash (appliedPods of totalPods).
    #[arg(long, value_name = "LABELS", default_value = DEFAULT_RELAY_SELECTOR)]
    pub relay_selector: String,
    /// How often the relay agents are asked.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::probe::parse_duration)]
    pub relay_poll_interval: std::time::Duration,
    /// How often the relay agents are asked what they observed of real mail (GET
    /// /observed, the last 24 hours), summed into every policy's and gateway's
    /// status.observed. Every change rewrites those statuses, so not too often.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = super::probe::parse_duration)]
    pub relay_observed_interval: std::time::Duration,
    /// Do not ask the relay agents what they applied (appliedPods and totalPods stay unset).
    #[arg(long)]
    pub no_relay_status: bool,
}

impl RunArgs {
    fn settings(&self) -> Result<Settings, String> {
        let render = self.flags.options()?;
        if self.relay_poll_interval < std::time::Duration::from_millis(100) {
            return Err("--relay-poll-interval must be at least 100ms".into());
        }
        let identity = self.identity.clone().unwrap_or_else(default_identity);
        let leader_election = if self.leader_election {
            let namespace = self.lease_namespace.clone().ok_or(
                "--leader-election needs --lease-namespace (or POD_NAMESPACE) for the Lease",
            )?;
            Some(LeaseSettings {
                name: self.lease_name.clone(),
                namespace,
                identity: identity.clone(),
                duration: self.lease_duration,
                // Renew when a third of the lease is left.
                grace: (self.lease_duration / 3).max(1),
            })
        } else {
            None
        };
        Ok(Settings {
            namespaces: self.namespaces.clone(),
            config_map: self.config_map.clone(),
            render,
            metrics_addr: Some(self.metrics_addr),
            leader_election,
            instance: Some(identity),
            tests: if self.no_tests {
                None
            } else {
                Some(self.probe.prober_with(AddressPolicy::public_only(
                    self.test_allow.clone(),
                    self.test_deny.clone(),
                ))?)
            },
            relays: (!self.no_relay_status).then(|| RelaySettings {
                selector: self.relay_selector.clone(),
                interval: self.relay_poll_interval,
                observed_interval: self.relay_observed_interval,
            }),
        })
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "mailtls".into());
    format!("{host}-{}", std::process::id())
}

pub fn run(args: RunArgs) -> ExitCode {
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    // rustls needs exactly one process-wide crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the cluster: {e}"))?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop.send(true);
    });
    crate::controller::run(client, settings, shutdown).await
}

/// SIGTERM (what Kubernetes sends) or ctrl-c.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("signal received");
}
