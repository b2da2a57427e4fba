//! How far each namespace's relay configuration has got. Relay pods report the hash they
//! applied on their agent's `/status`; the controller finds them through the EndpointSlices
//! of a Service over the agents' port (found by label, port named `status`), polls them and
//! counts, per namespace, the relay pods and those at each hash. The counts land in every
//! policy's `status.relayConfig` (`appliedPods` of `totalPods`).
//!
//! Pull, not push: the relay faces the internet on port 25 and holds no API credentials.
//! EndpointSlices, not pods: they carry only addresses and ports, where reading pods
//! cluster-wide would also expose every workload's spec (environment values included).

use super::queue::Sender;
use crate::observe::{DomainSummary, PodsObserved, Window};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Name of the agents' port in the Service (and so in its EndpointSlices).
pub const STATUS_PORT_NAME: &str = "status";
/// Default label selector of the EndpointSlices: those of the chart's relay-status Service
/// (EndpointSlices carry their Service's labels).
pub const DEFAULT_SELECTOR: &str =
    "app.kubernetes.io/name=mailtls,app.kubernetes.io/component=relay-status";
/// How long one `/status` request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `/status` body read.
const BODY_LIMIT: usize = 64 * 1024;
/// Pods asked at the same time.
const PARALLEL: usize = 16;
/// The window asked for.
const OBSERVED_HOURS: i64 = 24;
/// Largest `/observed` body read (100,000 domains take about 9 MB) and how long it may take.
const OBSERVED_LIMIT: usize = 32 * 1024 * 1024;
const OBSERVED_TIMEOUT: Duration = Duration::from_secs(10);

/// Where relay pods are and how often they are asked.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// Label selector of the EndpointSlices of relay pods.
    pub selector: String,
    pub interval: Duration,
    /// How often each agent is asked what it observed of real mail (`/observed`): the
    /// counts move with every message, and each change rewrites statuses.
    pub observed_interval: Duration,
}

/// Relay pods of one namespace: how many there are, how many report each hash as applied,
/// and which refused a hash (with the first refusal's reason).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u32,
    pub applied: BTreeMap<String, u32>,
    pub refused: BTreeMap<String, (u32, String)>,
}

impl Counts {
    /// (pods at `hash`, pods in all).
    pub fn of(&self, hash: &str) -> (u32, u32) {
        (self.applied.get(hash).copied().unwrap_or(0), self.total)
    }

    /// (pods that refused `hash`, the first reason), if any did.
    pub fn refused(&self, hash: &str) -> Option<(u32, String)> {
        self.refused.get(hash).cloned()
    }

    fn add(&mut self, report: Option<&Report>) {
        self.total += 1;
        let Some(report) = report else { return };
        if let Some(hash) = &report.applied {
            *self.applied.entry(hash.clone()).or_default() += 1;
        }
        // A pod that refused a hash and then applied it (a reload retried) is not counted.
        if let Some((hash, reason)) = &report.refused
            && report.applied.as_ref() != Some(hash)
        {
            let entry = self
                .refused
                .entry(hash.clone())
                .or_insert_with(|| (0, reason.clone()));
            entry.0 += 1;
        }
    }
}

/// What one agent's `/status` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Report {
    applied: Option<String>,
    /// The last refused hash and why.
    refused: Option<(String, String)>,
}

/// Longest refusal reason carried into a status.
const REASON_LIMIT: usize = 300;

impl Report {
    fn parse(status: &serde_json::Value) -> Report {
        let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
        let refused = status.get("lastRefused").and_then(|r| {
            let reason: String = text(r.get("reason")?)?.chars().take(REASON_LIMIT).collect();
            Some((text(r.get("hash")?)?, reason))
        });
        Report {
            applied: status.get("appliedHash").and_then(text),
            refused,
        }
    }
}

/// The EndpointSlices' store and the latest counts; shared by the poller and every
/// reconcile.
pub struct RelayPods {
    stores: Vec<Store<EndpointSlice>>,
    counts: Mutex<HashMap<String, Counts>>,
    /// Per namespace, what its relay pods observed (only pods that answered `/observed`).
    observed: Mutex<HashMap<String, Arc<PodsObserved>>>,
}

/// A watcher not yet polled.
pub type SliceWatcher = futures::future::BoxFuture<'static, ()>;

impl RelayPods {
    /// Stores of relay EndpointSlices (per watched namespace, or cluster-wide) and their
    /// watchers.
    pub fn start(
        client: &Client,
        namespaces: &[String],
        selector: &str,
    ) -> (Arc<RelayPods>, Vec<SliceWatcher>) {
        let apis: Vec<Api<EndpointSlice>> = super::stores::scoped_apis(client, namespaces);
        let config = watcher::Config::default().labels(selector);
        let mut stores = Vec::new();
        let mut watchers: Vec<SliceWatcher> = Vec::new();
        for api in apis {
            let writer = Writer::default();
            stores.push(writer.as_reader());
            let stream = reflector::reflector(writer, watcher(api, config.clone()))
                .default_backoff()
                .touched_objects();
            watchers.push(Box::pin(async move {
                futures::pin_mut!(stream);
                while let Some(event) = stream.next().await {
                    if let Err(e) = event {
                        tracing::warn!("watching relay EndpointSlices: {e}");
                    }
                }
            }));
        }
        let pods = RelayPods {
            stores,
            counts: Mutex::new(HashMap::new()),
            observed: Mutex::new(HashMap::new()),
        };
        (Arc::new(pods), watchers)
    }

    /// The latest counts of a namespace; `None` when it has no relay pods (or before the
    /// first poll).
    pub fn counts(&self, namespace: &str) -> Option<Counts> {
        self.counts.lock().ok()?.get(namespace).cloned()
    }

    /// What a namespace's relay pods observed of real mail; `None` when none reports it.
    pub fn observed(&self, namespace: &str) -> Option<Arc<PodsObserved>> {
        self.observed.lock().ok()?.get(namespace).cloned()
    }

    /// Relay pods that are not terminating: (namespace, the agent's address), each pod once
    /// (a dual-stack pod is in an IPv4 and an IPv6 slice).
    fn pods(&self) -> Vec<(String, Option<SocketAddr>)> {
        let mut seen: BTreeMap<(String, String), Option<SocketAddr>> = BTreeMap::new();
        for slice in self.stores.iter().flat_map(|s| s.state()) {
            let ns = slice.namespace().unwrap_or_default();
            for (pod, addr) in endpoints(&slice) {
                let entry = seen.entry((ns.clone(), pod)).or_insert(None);
                // Prefer an address that parses over none.
                if entry.is_none() {
                    *entry = addr;
                }
            }
        }
        seen.into_iter().map(|((ns, _), addr)| (ns, addr)).collect()
    }
}

/// The endpoints of one slice that are not terminating: (pod name, or the address when the
/// endpoint names no pod; the agent's address when there is a `status` port).
pub fn endpoints(slice: &EndpointSlice) -> Vec<(String, Option<SocketAddr>)> {
    let port = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(STATUS_PORT_NAME))
        .and_then(|p| u16::try_from(p.port?).ok());
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.terminating) != Some(true))
        .filter_map(|e| {
            let first = e.addresses.first()?;
            let pod = e
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_else(|| first.clone());
            let addr =
                port.and_then(|port| Some(SocketAddr::new(first.parse::<IpAddr>().ok()?, port)));
            Some((pod, addr))
        })
        .collect()
}

/// Ask every relay pod for its applied hash every `interval`, and what it observed of real
/// mail every `observed_interval`; namespaces whose counts or observations
/// changed are queued, so their statuses are rewritten. Only the leader polls.
pub async fn poll(
    pods: Arc<RelayPods>,
    settings: RelaySettings,
    queue: Sender,
    leader: watch::Receiver<bool>,
) {
    let http: HttpClient<HttpConnector, Empty<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let observed_interval = settings.observed_interval;
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut observed_at: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        if !*leader.borrow() {
            continue;
        }
        if observed_at.is_none_or(|at| at.elapsed() >= observed_interval) {
            observed_at = Some(tokio::time::Instant::now());
            for ns in poll_observed(&pods, &http).await {
                tracing::debug!(namespace = %ns, "observed mail changed");
                queue.send(ns);
            }
        }
        let asked: Vec<(String, Option<Report>)> = futures::stream::iter(pods.pods())
            .map(|(ns, addr)| {
                let http = http.clone();
                async move {
                    let report = match addr {
                        Some(addr) => ask(&http, addr).await,
                        None => None,
                    };
                    (ns, report)
                }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut fresh: HashMap<String, Counts> = HashMap::new();
        for (ns, report) in asked {
            fresh.entry(ns).or_default().add(report.as_ref());
        }
        // Namespaces whose counts moved, including those whose last relay pod went away.
        let changed: BTreeSet<String> = match pods.counts.lock() {
            Ok(mut counts) => {
                let changed: BTreeSet<String> = fresh
                    .keys()
                    .chain(counts.keys())
                    .filter(|ns| fresh.get(*ns) != counts.get(*ns))
                    .cloned()
                    .collect();
                *counts = fresh;
                changed
            }
            Err(_) => BTreeSet::new(),
        };
        for ns in changed {
            tracing::debug!(namespace = %ns, "relay pod counts changed");
            queue.send(ns);
        }
    }
}

type Http = HttpClient<HttpConnector, Empty<Bytes>>;

/// What an agent reports on `/status`; `None` when it cannot be asked.
async fn ask(http: &Http, addr: SocketAddr) -> Option<Report> {
    let body = get(http, addr, "/status", BODY_LIMIT, REQUEST_TIMEOUT).await?;
    let status: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some(Report::parse(&status))
}

/// GET `path` from an agent: the body of a 2xx answer within `limit` bytes and `timeout`.
async fn get(
    http: &Http,
    addr: SocketAddr,
    path: &str,
    limit: usize,
    timeout: Duration,
) -> Option<Bytes> {
    let uri: http::Uri = format!("http://{addr}{path}").parse().ok()?;
    let get = async {
        let response = http.get(uri).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        Some(
            Limited::new(response.into_body(), limit)
                .collect()
                .await
                .ok()?
                .to_bytes(),
        )
    };
    match tokio::time::timeout(timeout, get).await {
        Ok(body) => body,
        Err(_) => {
            tracing::debug!(%addr, path, "relay agent did not answer in time");
            None
        }
    }
}

/// Ask every agent what it observed; returns the namespaces whose sums changed.
async fn poll_observed(pods: &RelayPods, http: &Http) -> BTreeSet<String> {
    let path = format!("/observed?hours={OBSERVED_HOURS}");
    let asked: Vec<(String, Option<Vec<DomainSummary>>)> = futures::stream::iter(pods.pods())
        .map(|(ns, addr)| {
            let path = path.clone();
            async move {
                let Some(addr) = addr else {
                    return (ns, None);
                };
                let body = get(http, addr, &path, OBSERVED_LIMIT, OBSERVED_TIMEOUT).await;
                let window = body
                    .and_then(|b| serde_json::from_slice::<Window>(&b).ok())
                    .map(|w| w.domains);
                (ns, window)
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut fresh: HashMap<String, PodsObserved> = HashMap::new();
    for (ns, window) in asked {
        // An agent without a mail log (or an older one) has nothing to add.
        if let Some(domains) = window {
            fresh
                .entry(ns)
                .or_insert_with(|| PodsObserved {
                    hours: OBSERVED_HOURS,
                    ..Default::default()
                })
                .add_pod(domains);
        }
    }
    let Ok(mut observed) = pods.observed.lock() else {
        return BTreeSet::new();
    };
    let changed = fresh
        .keys()
        .chain(observed.keys())
        .filter(|ns| fresh.get(*ns) != observed.get(*ns).map(|o| &**o))
        .cloned()
        .collect();
    *observed = fresh.into_iter().map(|(ns, o)| (ns, Arc::new(o))).collect();
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_pods_with_the_status_port_and_not_terminating() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "relay-status-v6", "namespace": "mail"},
            "addressType": "IPv6",
            "ports": [{"name": "smtp", "port": 25}, {"name": "status", "port": 8089}],
            "endpoints": [
                {"addresses": ["fd00::7"], "targetRef": {"kind": "Pod", "name": "relay-0"}},
                {"addresses": ["fd00::8"], "conditions": {"ready": false},
                 "targetRef": {"kind": "Pod", "name": "relay-1"}},
                {"addresses": ["fd00::9"], "conditions": {"terminating": true},
                 "targetRef": {"kind": "Pod", "name": "relay-2"}},
                {"addresses": ["fd00::a"]},
            ],
        }))
        .expect("slice");
        let addr = |a: &str| Some(a.parse::<SocketAddr>().expect("addr"));
        assert_eq!(
            endpoints(&slice),
            vec![
                ("relay-0".to_string(), addr("[fd00::7]:8089")),
                ("relay-1".to_string(), addr("[fd00::8]:8089")),
                ("fd00::a".to_string(), addr("[fd00::a]:8089")),
            ]
        );
        let mut no_port = slice.clone();
        no_port.ports = None;
        assert!(endpoints(&no_port).iter().all(|(_, a)| a.is_none()));
    }

    #[test]
    fn counts_of_a_hash() {
        let status = |v: serde_json::Value| Some(Report::parse(&v));
        let mut c = Counts::default();
        c.add(status(serde_json::json!({"appliedHash": "sha256:a"})).as_ref());
        c.add(
            status(serde_json::json!({
                "appliedHash": "sha256:a",
                "lastRefused": {"hash": "sha256:b", "reason": "x".repeat(1000), "at": "t"},
            }))
            .as_ref(),
        );
        // Refused once, applied later (e.g. a failed reload retried): not a refusal.
        c.add(
            status(serde_json::json!({
                "appliedHash": "sha256:b",
                "lastRefused": {"hash": "sha256:b", "reason": "no", "at": "t"},
            }))
            .as_ref(),
        );
        c.add(None);
        assert_eq!(c.of("sha256:a"), (2, 4));
        assert_eq!(c.of("sha256:b"), (1, 4));
        assert_eq!(c.of("sha256:c"), (0, 4));
        assert_eq!(c.refused("sha256:b"), Some((1, "x".repeat(REASON_LIMIT))));
        assert_eq!(c.refused("sha256:a"), None);
        assert_eq!(
            Report::parse(&serde_json::json!({"lastRefused": {"hash": null}})),
            Report::default()
        );
    }
}
