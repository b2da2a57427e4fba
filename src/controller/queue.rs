//! The queue of dirty namespaces (deduplicated by the [`super::worker`]) and the retry
//! backoff.

use std::time::Duration;
use tokio::sync::mpsc;

/// First retry delay and the cap.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Marks namespaces dirty.
#[derive(Clone)]
pub struct Sender(mpsc::UnboundedSender<String>);

impl Sender {
    pub fn send(&self, namespace: String) {
        // Only fails when the worker is gone, i.e. during shutdown.
        let _ = self.0.send(namespace);
    }
}

pub struct Queue {
    pub(super) tx: mpsc::UnboundedSender<String>,
    pub(super) rx: mpsc::UnboundedReceiver<String>,
}

impl Queue {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Queue { tx, rx }
    }

    pub fn sender(&self) -> Sender {
        Sender(self.tx.clone())
    }
}

/// Delay before retry number `failures` (1-based): exponential, capped, and jittered to
/// between half and all of it, so namespaces failing together do not retry together.
pub fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_MIN.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let full = exp.min(BACKOFF_MAX);
    full.mul_f64(rand::random_range(0.5..=1.0))
}
