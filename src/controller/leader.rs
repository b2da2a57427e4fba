//! Leader election with a `coordination.k8s.io/v1` Lease, through `kube-lease-manager`
//! (server-side apply on the Lease, so two candidates cannot both win one renewal). The
//! result is a watch channel: the work queue only starts reconciles while it says true, and
//! every write checks it again, so an instance that loses the lease stops writing.

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// Unique per instance (the pod name in a cluster).
    pub identity: String,
    /// Seconds a lease stays valid without renewal.
    pub duration: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace: u64,
}

/// The running lease loop.
pub struct LeaseTask {
    handle: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

impl LeaseTask {
    /// Waits (bounded) for the loop to release the lease; it does so once every receiver
    /// of the leader channel is dropped.
    pub async fn stop(self) {
        match tokio::time::timeout(Duration::from_secs(5), self.handle).await {
            Ok(Ok(Ok(_))) => tracing::info!("lease released"),
            Ok(Ok(Err(e))) => tracing::warn!("releasing the lease: {e}"),
            Ok(Err(e)) => tracing::warn!("lease task: {e}"),
            Err(_) => tracing::warn!("lease not released within 5s; it will expire"),
        }
    }
}

pub async fn start(
    client: Client,
    s: &LeaseSettings,
) -> anyhow::Result<(watch::Receiver<bool>, LeaseTask)> {
    let manager = LeaseManagerBuilder::new(client, &s.name)
        .with_namespace(&s.namespace)
        .with_identity(&s.identity)
        .with_duration(s.duration)
        .with_grace(s.grace)
        .with_field_manager(format!("mailtls-lease-{}", s.identity))
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("lease {}/{}: {e}", s.namespace, s.name))?;
    let (rx, handle) = manager.watch().await;
    tracing::info!(lease = %s.name, namespace = %s.namespace, identity = %s.identity, "leader election started");
    Ok((rx, LeaseTask { handle }))
}
