//! One reconcile of one namespace in the cluster: the engine's pipeline over the stores,
//! the ConfigMaps and status patches ([`Context`] is the cluster backend).

use super::Error;
use super::context::Context;
use crate::engine;

/// Reconcile one namespace. Every resource's status is attempted even when another fails;
/// the first error is returned so the namespace is retried.
pub async fn reconcile(ctx: &Context, namespace: &str) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(ctx, namespace).await;
    ctx.metrics
        .observe(namespace, started.elapsed(), result.is_ok());
    result
}

async fn reconcile_inner(ctx: &Context, namespace: &str) -> Result<(), Error> {
    let inputs = ctx.stores.inputs(namespace);
    let outcome = engine::reconcile(ctx, &inputs, &ctx.render).await?;
    let bytes: usize = outcome.config.files.values().map(String::len).sum();
    ctx.metrics.render_size(namespace, bytes);
    match outcome.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
