//! Observed compliance: what the relay actually did with real mail, read from Postfix's mail
//! log. [`parse`] and [`observed`] are pure; [`follow`] reads the log file (edge) and
//! [`metrics`] renders the Prometheus text.

pub mod follow;
pub mod metrics;
pub mod observed;
pub mod parse;
pub mod send;
pub mod tlsrpt;

pub use observed::{Counts, DomainSummary, Failure, Observed, PodsObserved};

/// Observations shared between the log reader and the HTTP endpoints.
pub type Shared = std::sync::Arc<std::sync::Mutex<Observed>>;

use observed::CountsView;
use serde::Serialize;

/// What `/status` says of the observations: totals since the agent started, how many
/// domains are tracked, and the recent TLS failures.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary<'a> {
    pub log_lines: u64,
    pub domains: usize,
    pub totals: CountsView,
    pub recent_tls_failures: Vec<&'a Failure>,
}

impl Observed {
    pub fn summary(&self) -> Summary<'_> {
        Summary {
            log_lines: self.lines(),
            domains: self.domains(),
            totals: self.totals().into(),
            recent_tls_failures: self.recent_failures().collect(),
        }
    }
}

/// What `/observed` answers: per recipient domain over the last `hours` hours.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    pub hours: i64,
    pub domains: Vec<DomainSummary>,
}
