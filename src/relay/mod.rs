//! The relay agent (edge): takes the rendered configuration from a watched directory (the
//! mounted ConfigMap), verifies it against its manifest, validates every line, builds and
//! checks it in a staging copy of the Postfix config directory, swaps it in atomically and
//! reloads Postfix. A configuration that fails anywhere is never applied: the last good one
//! stays, and the refusal (hash and reason) is reported.

pub mod base;
pub mod bundle;
pub mod drain;
pub mod hold;
mod install;
pub mod mirror;
pub mod seed;
pub mod serve;
pub mod validate;

pub use install::{BASE_SUFFIX, Paths, QUEUES, queue_sizes, reload as reload_postfix};

use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// A configuration the agent would not apply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("refused{}: {reason}", hash.as_deref().map(|h| format!(" {h}")).unwrap_or_default())]
pub struct Refusal {
    /// The manifest's hash, when the manifest could be read.
    pub hash: Option<String>,
    pub reason: String,
}

impl Refusal {
    pub fn new(hash: Option<String>, reason: String) -> Refusal {
        Refusal { hash, reason }
    }
}

/// Why an apply did not put a configuration in force.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// Not applied: the last good configuration stays installed and in force.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Installed and valid, but the running Postfix could not be reloaded: it keeps running
    /// the previous configuration until a reload succeeds (retried at the next check).
    #[error(
        "installed {hash}, but {reason}; Postfix keeps running the previous configuration \
         until a reload succeeds (retried at the next check)"
    )]
    NotReloaded { hash: String, reason: String },
}

/// What one apply did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Installed; `reloaded` says whether a running Postfix was reloaded.
    Applied { hash: String, reloaded: bool },
    /// The configuration is the one already installed.
    Unchanged { hash: String },
}

/// What `/status` reports.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Hash of the configuration in effect.
    pub applied_hash: Option<String>,
    pub applied_at: Option<String>,
    pub last_refused: Option<RefusedInfo>,
    /// The last configuration installed whose reload failed.
    pub last_reload_failure: Option<RefusedInfo>,
    /// Counters since the agent started.
    pub applied_total: u64,
    pub refused_total: u64,
    pub reload_failures_total: u64,
    pub last_check_at: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedInfo {
    pub hash: Option<String>,
    pub reason: String,
    pub at: String,
}

/// The agent: paths plus the shared status.
#[derive(Clone, Debug)]
pub struct Agent {
    pub watch_dir: std::path::PathBuf,
    pub paths: Paths,
    pub status: Arc<Mutex<AgentStatus>>,
    /// Installed but the reload failed: retried on the next apply even when unchanged.
    reload_pending: Arc<std::sync::atomic::AtomicBool>,
    /// The Unix socket of this pod's MTA-STS policy server: the only one a configuration
    /// may name. Without it, a configuration that honours MTA-STS is refused.
    mta_sts_socket: Option<String>,
    /// The policy server to tell which destinations the installed configuration covers.
    policy_server: Option<Arc<crate::sts::server::PolicyServer>>,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

impl Agent {
    pub fn new(watch_dir: std::path::PathBuf, paths: Paths) -> Agent {
        let status = AgentStatus {
            applied_hash: install::installed_hash(&paths),
            ..Default::default()
        };
        Agent {
            watch_dir,
            paths,
            status: Arc::new(Mutex::new(status)),
            reload_pending: Arc::default(),
            mta_sts_socket: None,
            policy_server: None,
        }
    }

    /// Accept configurations that name the MTA-STS policy server on `socket`, and keep
    /// `server` (when this process runs it) answering for what the installed one covers.
    pub fn with_mta_sts(
        mut self,
        socket: String,
        server: Option<Arc<crate::sts::server::PolicyServer>>,
    ) -> Agent {
        self.mta_sts_socket = Some(socket);
        if let Some(server) = &server {
            match install::installed_mta_sts(&self.paths) {
                Ok(scope) => server.set_scope(scope),
                // Postfix then gets TEMP from the server: mail waits, none goes out weaker.
                Err(e) => tracing::error!("MTA-STS policy server not answering: {e}"),
            }
        }
        self.policy_server = server;
        self
    }

    /// DANE needs the AD bit, which glibc hands Postfix only with `options trust-ad`: without
    /// it nothing is weaker than before, but nothing is DANE-checked either, so say so.
    fn warn_if_dane_cannot_apply(&self) {
        let main_cf =
            std::fs::read_to_string(self.paths.postfix_dir.join("main.cf")).unwrap_or_default();
        let dane = main_cf
            .lines()
            .any(|l| l.replace(' ', "") == "smtp_dns_support_level=dnssec");
        if dane && !crate::probe::dnssec::system_trusts_ad() {
            tracing::warn!(
                "the configuration honours DANE, but /etc/resolv.conf has no `options \
                 trust-ad`: Postfix never sees DNSSEC-authenticated answers, so DANE never \
                 applies (run a validating resolver beside Postfix: chart value relay.dnssec)"
            );
        }
    }

    /// After an apply, the policy server answers for what the installed configuration
    /// covers; while Postfix may still run the previous one (not reloaded), for both.
    fn update_policy_server(&self, result: &Result<Outcome, ApplyError>) {
        let Some(server) = &self.policy_server else {
            return;
        };
        let installed = match result {
            Ok(Outcome::Applied { .. }) | Err(ApplyError::NotReloaded { .. }) => {
                install::installed_mta_sts(&self.paths)
            }
            _ => return,
        };
        match (installed, result) {
            (Ok(scope), Err(_)) => server.widen_scope(&scope),
            (Ok(scope), Ok(_)) => server.set_scope(scope),
            (Err(e), _) => tracing::error!("MTA-STS policy server keeps its destinations: {e}"),
        }
    }

    pub fn status(&self) -> AgentStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Record a check that found nothing to apply.
    pub fn checked(&self) {
        if let Ok(mut status) = self.status.lock() {
            status.last_check_at = Some(now());
        }
    }

    /// Read, verify, validate, stage, check, swap, reload; the status records the result.
    pub fn apply(&self) -> Result<Outcome, ApplyError> {
        self.apply_from(&self.watch_dir)
    }

    /// [`Agent::apply`] from another copy of the configuration (the API's, see
    /// [`mirror`]).
    pub fn apply_from(&self, dir: &std::path::Path) -> Result<Outcome, ApplyError> {
        let result = self.try_apply(dir);
        self.update_policy_server(&result);
        if matches!(result, Ok(Outcome::Applied { .. })) {
            self.warn_if_dane_cannot_apply();
        }
        if let Ok(mut status) = self.status.lock() {
            status.last_check_at = Some(now());
            match &result {
                Ok(Outcome::Applied { hash, .. }) => {
                    status.applied_hash = Some(hash.clone());
                    status.applied_at = Some(now());
                    status.applied_total += 1;
                }
                Ok(Outcome::Unchanged { .. }) => {}
                Err(ApplyError::Refused(refusal)) => {
                    status.refused_total += 1;
                    status.last_refused = Some(RefusedInfo {
                        hash: refusal.hash.clone(),
                        reason: refusal.reason.clone(),
                        at: now(),
                    });
                }
                Err(ApplyError::NotReloaded { hash, reason }) => {
                    status.reload_failures_total += 1;
                    status.last_reload_failure = Some(RefusedInfo {
                        hash: Some(hash.clone()),
                        reason: reason.clone(),
                        at: now(),
                    });
                }
            }
        }
        result
    }

    fn try_apply(&self, dir: &std::path::Path) -> Result<Outcome, ApplyError> {
        let bundle = bundle::read(dir)?;
        let refuse = |reason: String| Refusal::new(Some(bundle.hash.clone()), reason);
        if install::installed_hash(&self.paths).as_deref() == Some(bundle.hash.as_str()) {
            if self.reload_pending.load(Ordering::SeqCst) {
                let reloaded = self.reload(&bundle.hash, false)?;
                return Ok(Outcome::Applied {
                    hash: bundle.hash,
                    reloaded,
                });
            }
            return Ok(Outcome::Unchanged { hash: bundle.hash });
        }
        let maps_dir = self.paths.maps_dir.to_str().ok_or_else(|| {
            refuse(format!(
                "--maps-dir {} is not UTF-8",
                self.paths.maps_dir.display()
            ))
        })?;
        let checked =
            validate::check(&bundle, maps_dir, self.mta_sts_socket.as_deref()).map_err(refuse)?;
        let held = hold::is_held(&self.paths);
        // Two swaps while Postfix runs, so no row of the TLS policy table disappears before
        // the reload (see install::widened_policy).
        if install::running(&self.paths).map_err(refuse)?
            && let Some(widened) = install::widened_policy(&self.paths, &bundle)
        {
            install::install(&bundle, &checked, &self.paths, Some(&widened)).map_err(refuse)?;
            install::reload_and_wait(&self.paths).map_err(|e| ApplyError::NotReloaded {
                hash: bundle.hash.clone(),
                reason: format!(
                    "{e} (with the previous TLS policy rows kept; they stay until a later \
                     check completes the swap)"
                ),
            })?;
            tracing::info!(hash = %bundle.hash, "reloaded with the previous TLS policy rows kept; removing them now");
        }
        install::install(&bundle, &checked, &self.paths, None).map_err(refuse)?;
        // Released mail must be routed by the new configuration only: wait for the
        // previous queue manager and resolver to go before flushing.
        let reloaded = self.reload(&bundle.hash, held)?;
        if held && reloaded {
            match hold::flush(&self.paths) {
                Ok(()) => tracing::info!("delivery released: queued mail is tried now"),
                // Not an apply failure: the mail goes at its next retry.
                Err(e) => tracing::warn!("delivery released, but the queue was not flushed: {e}"),
            }
        }
        Ok(Outcome::Applied {
            hash: bundle.hash,
            reloaded,
        })
    }

    fn reload(&self, hash: &str, wait: bool) -> Result<bool, ApplyError> {
        let result = if wait {
            install::reload_and_wait(&self.paths)
        } else {
            install::reload(&self.paths)
        };
        self.reload_pending.store(result.is_err(), Ordering::SeqCst);
        result.map_err(|reason| ApplyError::NotReloaded {
            hash: hash.to_string(),
            reason,
        })
    }
}
