//! TLS tests inside `mailtls standalone`: plans from the pure [`crate::probe::plan`], probes
//! on one shared [`Prober`] (so concurrency is bounded across all resources), and each
//! resource's status written the moment its own destinations are done: one slow host never
//! holds back another resource's results.

use super::probe::{parse_duration, read_pem_certs};
use crate::api::{OutboundGateway, TlsCompliance};
use crate::policy::{Inputs, Kind, ResourceId};
use crate::probe::plan::{self, TestPlan, Tested};
use crate::probe::{AddressPolicy, DestinationReport, ProbeConfig, Prober, Timeouts};
use clap::Args;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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

/// Tests under way, so a slow one is not started twice.
pub type Running = Arc<Mutex<BTreeSet<(String, ResourceId)>>>;

/// The plans due now for the namespaces just reconciled, skipping those already running.
pub fn due_plans(namespaces: &[Inputs], running: &Running) -> Vec<(String, TestPlan)> {
    let now = Timestamp::now();
    let mut plans = Vec::new();
    let Ok(mut running) = running.lock() else {
        return plans;
    };
    for inputs in namespaces {
        for p in plan::namespace_plans(inputs, now) {
            if running.insert((inputs.namespace.clone(), p.id.clone())) {
                plans.push((inputs.namespace.clone(), p));
            }
        }
    }
    plans
}

/// Run the plans; write each resource's results into its file under `out` as soon as its
/// destinations are done. `lock` serialises writers of the out directory.
pub async fn run_plans(
    prober: Prober,
    plans: Vec<(String, TestPlan)>,
    out: PathBuf,
    lock: Arc<Mutex<()>>,
    running: Running,
) {
    let mut owner = Vec::new();
    let mut items = Vec::new();
    for (p, (_, plan)) in plans.iter().enumerate() {
        for item in &plan.items {
            owner.push(p);
            items.push(item.clone());
        }
    }
    let mut left: Vec<usize> = plans.iter().map(|(_, p)| p.items.len()).collect();
    let mut reports: HashMap<usize, Vec<DestinationReport>> = HashMap::new();
    // Plans with nothing to test are done at once.
    for (p, _) in plans.iter().enumerate().filter(|(p, _)| left[*p] == 0) {
        finish(&plans[p], &[], &out, &lock, &running);
    }
    let mut rx = prober.probe_stream(items);
    while let Some((i, report)) = rx.recv().await {
        let p = owner[i];
        reports.entry(p).or_default().push(report);
        left[p] -= 1;
        if left[p] == 0 {
            finish(
                &plans[p],
                &reports.remove(&p).unwrap_or_default(),
                &out,
                &lock,
                &running,
            );
        }
    }
}

fn finish(
    (ns, plan): &(String, TestPlan),
    reports: &[DestinationReport],
    out: &Path,
    lock: &Mutex<()>,
    running: &Running,
) {
    let failed = reports.iter().filter(|r| !r.passed()).count();
    tracing::info!(namespace = %ns, resource = %plan.id, destinations = reports.len(), failed, "TLS test finished");
    let dir = out.join(ns).join("resources");
    let result = {
        let _guard = lock.lock();
        match plan.id.kind {
            Kind::TlsCompliance => update::<TlsCompliance>(&dir, plan, reports),
            Kind::OutboundGateway => update::<OutboundGateway>(&dir, plan, reports),
            Kind::AddressList => Ok(()),
        }
    };
    if let Err(e) = result {
        tracing::warn!(namespace = %ns, resource = %plan.id, "cannot record the test: {e}");
    }
    if let Ok(mut r) = running.lock() {
        r.remove(&(ns.clone(), plan.id.clone()));
    }
}

/// Read the resource as last written, add the results, write it back. A resource deleted
/// meanwhile is left deleted.
fn update<K: Tested + serde::Serialize + serde::de::DeserializeOwned>(
    dir: &Path,
    plan: &TestPlan,
    reports: &[DestinationReport],
) -> Result<(), String> {
    let path = super::standalone::resource_file(dir, plan.id.kind, &plan.id.name);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let mut resource: K =
        serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    resource.apply(plan, reports, &Time(Timestamp::now()));
    super::standalone::write_resource(dir, &plan.id, &resource, &mut BTreeSet::new())
}
