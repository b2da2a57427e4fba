//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

use super::stores::Stores;
use crate::api::{AddressList, OutboundGateway, TlsCompliance};
use crate::engine::Managed;
use crate::policy::ResourceId;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kube::ResourceExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

/// A resource, as every per-resource metric names it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ResourceLabels {
    namespace: String,
    kind: String,
    name: String,
}

impl ResourceLabels {
    fn of(namespace: &str, id: &ResourceId) -> ResourceLabels {
        ResourceLabels {
            namespace: namespace.to_string(),
            kind: id.kind.to_string(),
            name: id.name.clone(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TestLabels {
    #[prometheus(flatten)]
    resource: ResourceLabels,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    #[prometheus(flatten)]
    resource: ResourceLabels,
    destination: String,
}

/// Most certificate expiry series per resource: its soonest-expiring destinations, so a
/// list of 100k domains still makes a handful of series (what an alert needs).
pub const CERTIFICATES_PER_RESOURCE: usize = 10;

/// Per-resource series made at each scrape from what the controller knows then: the
/// resources' conditions as its caches hold them, and the certificates seen by each
/// resource's last test. A resource or destination that goes takes its series with it,
/// and nothing is reported stale.
#[derive(Default)]
struct ResourceCollector {
    stores: std::sync::OnceLock<Stores>,
    /// The soonest-expiring leaf certificates of each resource's last test.
    certificates: std::sync::Mutex<BTreeMap<ResourceLabels, Vec<(String, i64)>>>,
}

impl ResourceCollector {
    /// Conditions of every resource of kind `K` as (labels, Ready, Compliant).
    fn conditions<K: Managed>(
        stores: &Stores,
    ) -> Vec<(ResourceLabels, Option<bool>, Option<bool>)> {
        let status = |r: &K, t: &str| {
            r.conditions()
                .iter()
                .find(|c| c.type_ == t)
                .and_then(|c| match c.status.as_str() {
                    "True" => Some(true),
                    "False" => Some(false),
                    _ => None,
                })
        };
        stores
            .of::<K>()
            .iter()
            .flat_map(|s| s.state())
            .map(|r| {
                let labels = ResourceLabels {
                    namespace: r.namespace().unwrap_or_default(),
                    kind: K::KIND.to_string(),
                    name: r.name_any(),
                };
                (labels, status(&r, "Ready"), status(&r, "Compliant"))
            })
            .collect()
    }
}

impl std::fmt::Debug for ResourceCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceCollector").finish_non_exhaustive()
    }
}

impl Collector for ResourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Described even before the caches are there: the names are always on /metrics.
        let mut all = Vec::new();
        if let Some(stores) = self.stores.get() {
            all.extend(Self::conditions::<AddressList>(stores));
            all.extend(Self::conditions::<TlsCompliance>(stores));
            all.extend(Self::conditions::<OutboundGateway>(stores));
        }
        all.sort();
        let mut ready = encoder.encode_descriptor(
            "resource_ready",
            "1 when the resource's Ready condition is True, 0 otherwise",
            None,
            MetricType::Gauge,
        )?;
        for (labels, r, _) in &all {
            ConstGauge::new(i64::from(*r == Some(true))).encode(ready.encode_family(labels)?)?;
        }
        let mut compliant = encoder.encode_descriptor(
            "resource_compliant",
            "1 when the last TLS test found every destination compliant, 0 when not (absent before a test)",
            None,
            MetricType::Gauge,
        )?;
        for (labels, _, c) in &all {
            if let Some(c) = c {
                ConstGauge::new(i64::from(*c)).encode(compliant.encode_family(labels)?)?;
            }
        }
        let existing: std::collections::BTreeSet<&ResourceLabels> =
            all.iter().map(|(l, _, _)| l).collect();
        let Ok(mut certificates) = self.certificates.lock() else {
            return Ok(());
        };
        // Resources deleted since their test: forgotten here.
        certificates.retain(|labels, _| existing.contains(labels));
        let mut expiry = encoder.encode_descriptor(
            "certificate_expiration_timestamp_seconds",
            "When the leaf certificate of a tested destination expires (Unix seconds); the soonest per resource only",
            None,
            MetricType::Gauge,
        )?;
        for (resource, certs) in certificates.iter() {
            for (destination, not_after) in certs {
                let labels = CertificateLabels {
                    resource: resource.clone(),
                    destination: destination.clone(),
                };
                ConstGauge::new(*not_after).encode(expiry.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabel {
    object: Written,
}

/// What a write to the API server wrote.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Written {
    /// The relay ConfigMap.
    ConfigMap,
    /// The ConfigMap of last valid generations.
    State,
    /// A resource's status.
    Status,
}

impl EncodeLabelValue for Written {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let value = match self {
            Written::ConfigMap => "configmap",
            Written::State => "state",
            Written::Status => "status",
        };
        EncodeLabelValue::encode(&value, encoder)
    }
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<NamespaceLabel, Counter>,
    errors: Family<NamespaceLabel, Counter>,
    duration: Histogram,
    render_bytes: Family<NamespaceLabel, Gauge>,
    writes: Family<ObjectLabel, Counter>,
    tests: Family<TestLabels, Counter>,
    resources: Arc<ResourceCollector>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mailtls");
        let reconciles = Family::default();
        let errors = Family::default();
        // 1 ms .. ~33 s
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let render_bytes = Family::default();
        let writes = Family::default();
        let tests = Family::default();
        let resources = Arc::new(ResourceCollector::default());
        registry.register(
            "tls_tests",
            "Destinations tested, by resource and outcome (pass or the RFC 8460 failure)",
            tests.clone(),
        );
        registry.register_collector(Box::new(resources.clone()));
        registry.register(
            "reconciles",
            "Namespace reconciles, by namespace",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed namespace reconciles (retried with backoff), by namespace",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one namespace reconcile",
            duration.clone(),
        );
        registry.register(
            "render_size_bytes",
            "Size of the rendered relay configuration, by namespace",
            render_bytes.clone(),
        );
        registry.register(
            "api_writes",
            "Writes to the API server, by object (configmap, status)",
            writes.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            render_bytes,
            writes,
            tests,
            resources,
        }
    }
}

impl Metrics {
    /// Count a resource's finished test by outcome, and keep its soonest-expiring
    /// certificates (replacing what its previous test found).
    pub fn tested(
        &self,
        namespace: &str,
        id: &ResourceId,
        reports: &[crate::probe::DestinationReport],
    ) {
        let resource = ResourceLabels::of(namespace, id);
        for r in reports {
            self.tests
                .get_or_create(&TestLabels {
                    resource: resource.clone(),
                    outcome: r.outcome().to_string(),
                })
                .inc();
        }
        let mut soonest: Vec<(String, i64)> = reports
            .iter()
            .filter_map(|r| Some((r.destination.clone(), r.leaf_not_after()?)))
            .collect();
        soonest.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        soonest.truncate(CERTIFICATES_PER_RESOURCE);
        if let Ok(mut certificates) = self.resources.certificates.lock() {
            certificates.insert(resource, soonest);
        }
    }

    /// After a reconcile: certificates of destinations a resource no longer has are
    /// dropped: for a TlsCompliance those its lists no longer hold (named as its tests name
    /// them: a domain, or `.domain` for every subdomain), for a gateway any other than its
    /// current host (none when it is not usable).
    pub fn evaluated(&self, namespace: &str, policy: &crate::policy::EffectivePolicy) {
        let Ok(mut certificates) = self.resources.certificates.lock() else {
            return;
        };
        let gateway = crate::policy::Kind::OutboundGateway.to_string();
        for (resource, certs) in certificates.iter_mut() {
            if resource.namespace == namespace && resource.kind == gateway {
                let target = policy.gateways.get(&resource.name).map(|hop| {
                    crate::engine::plan::gateway_target(&hop.host, hop.port, hop.mx_lookup)
                        .display()
                });
                certs.retain(|(d, _)| target.as_deref() == Some(d.as_str()));
            }
        }
        let kind = crate::policy::Kind::TlsCompliance.to_string();
        let held: Vec<String> = certificates
            .keys()
            .filter(|r| r.namespace == namespace && r.kind == kind)
            .map(|r| r.name.clone())
            .collect();
        if held.is_empty() {
            return;
        }
        let mut current: BTreeMap<&str, std::collections::BTreeSet<String>> = BTreeMap::new();
        for (key, rule) in &policy.outbound {
            for name in rule
                .policies
                .iter()
                .filter(|n| held.iter().any(|h| h == &***n))
            {
                let destination = if key.is_subdomains() {
                    key.as_str().to_string()
                } else {
                    key.domain().to_string()
                };
                current.entry(name).or_default().insert(destination);
            }
        }
        for (resource, certs) in certificates.iter_mut() {
            if resource.namespace == namespace && resource.kind == kind {
                let now = current.get(resource.name.as_str());
                certs.retain(|(d, _)| now.is_some_and(|set| set.contains(d)));
            }
        }
    }

    /// Make the per-resource series from these caches (once; the controller has one set).
    pub fn watch(&self, stores: Stores) {
        let _ = self.resources.stores.set(stores);
    }

    pub fn observe(&self, namespace: &str, took: Duration, ok: bool) {
        let labels = NamespaceLabel {
            namespace: namespace.to_string(),
        };
        self.reconciles.get_or_create(&labels).inc();
        if !ok {
            self.errors.get_or_create(&labels).inc();
        }
        self.duration.observe(took.as_secs_f64());
    }

    pub fn render_size(&self, namespace: &str, bytes: usize) {
        let labels = NamespaceLabel {
            namespace: namespace.to_string(),
        };
        self.render_bytes
            .get_or_create(&labels)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn write(&self, object: Written) {
        self.writes.get_or_create(&ObjectLabel { object }).inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    stores: Stores,
}

/// Bind `addr` and serve until `shutdown` turns true. Binding errors are returned at once.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    stores: Stores,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(Shared {
            metrics: metrics.clone(),
            stores: stores.clone(),
        });
    metrics.watch(stores);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: {e}"))?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    Ok(tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!("metrics server: {e}");
        }
    }))
}

async fn metrics_handler(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Ready once every watcher has listed: before that the controller would see empty
/// namespaces.
async fn ready_handler(State(s): State<Shared>) -> impl IntoResponse {
    if s.stores.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{EffectivePolicy, Hop, Host, Kind};

    fn certs(m: &Metrics) -> Vec<(String, String)> {
        let held = m.resources.certificates.lock().expect("lock");
        held.iter()
            .flat_map(|(r, c)| c.iter().map(move |(d, _)| (r.name.clone(), d.clone())))
            .collect()
    }

    /// A gateway keeps the certificate of its current host only; one no longer usable, none.
    #[test]
    fn a_gateway_keeps_only_its_current_hosts_certificate() {
        let m = Metrics::default();
        let at =
            |name: &str| ResourceLabels::of("mail", &ResourceId::new(Kind::OutboundGateway, name));
        {
            let mut held = m.resources.certificates.lock().expect("lock");
            held.insert(at("gw"), vec![("[old.example]:587".into(), 1)]);
            held.insert(at("same"), vec![("[same.example]:25".into(), 2)]);
            held.insert(at("gone"), vec![("[gone.example]:25".into(), 3)]);
        }
        let hop = |name: &str, host: &str, port: u16| Hop {
            gateway: name.into(),
            host: Host::parse(host).expect("host"),
            port,
            mx_lookup: false,
            tls: None,
        };
        let mut policy = EffectivePolicy {
            namespace: "mail".into(),
            ..Default::default()
        };
        policy
            .gateways
            .insert("gw".into(), hop("gw", "new.example", 587));
        policy
            .gateways
            .insert("same".into(), hop("same", "same.example", 25));
        m.evaluated("other", &policy);
        assert_eq!(
            certs(&m).len(),
            3,
            "another namespace's policy changes nothing"
        );
        m.evaluated("mail", &policy);
        assert_eq!(
            certs(&m),
            [("same".to_string(), "[same.example]:25".to_string())]
        );
    }
}
