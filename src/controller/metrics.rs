//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

use super::stores::Stores;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabel {
    destination: String,
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
    tests: Family<OutcomeLabel, Counter>,
    cert_days: Family<DestinationLabel, Gauge>,
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
        let cert_days = Family::default();
        registry.register(
            "tls_tests",
            "Destinations tested, by outcome (pass or the RFC 8460 failure)",
            tests.clone(),
        );
        registry.register(
            "certificate_days_left",
            "Days until the leaf certificate of a tested destination expires",
            cert_days.clone(),
        );
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
            cert_days,
        }
    }
}

impl Metrics {
    /// Count a finished test's outcomes and record certificate expiry per destination.
    pub fn tested(&self, reports: &[crate::probe::DestinationReport]) {
        for r in reports {
            self.tests
                .get_or_create(&OutcomeLabel {
                    outcome: r.outcome().to_string(),
                })
                .inc();
            if let Some(days) = r.to_result().cert_days_left {
                self.cert_days
                    .get_or_create(&DestinationLabel {
                        destination: r.destination.clone(),
                    })
                    .set(days);
            }
        }
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
        .with_state(Shared { metrics, stores });
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
