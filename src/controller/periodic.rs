//! Periodic TLS tests in the cluster: the engine's [`Scheduler`] every [`TICK`], over the
//! stores, while this instance leads. Tests run beside reconciliation, never inside it, on one
//! shared [`Tester`] (the prober, whose concurrency bound covers all of them).

use super::context::Context;
use crate::engine::schedule::{RESOURCES_AT_ONCE, start_due};
use crate::engine::{Scheduler, Tester};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often due tests are looked for.
pub const TICK: Duration = Duration::from_secs(15);

/// The test loop; returns when `shutdown` says stop. Only the leader tests.
pub async fn run<T: Tester>(ctx: Arc<Context>, tester: T, mut shutdown: watch::Receiver<bool>) {
    let scheduler = Arc::new(Scheduler::new(RESOURCES_AT_ONCE));
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if !ctx.stores.is_ready() || !*ctx.leader.borrow() {
            continue;
        }
        let namespaces = ctx.stores.namespaces();
        let inputs = namespaces.iter().map(|ns| ctx.stores.inputs(ns));
        start_due(&ctx, &tester, &scheduler, inputs, &BTreeSet::new());
    }
}
