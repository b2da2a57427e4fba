//! The long-running agent: watch the directory (kubelet's `..data` symlink swap and plain
//! file edits both show up as events in it), apply after a quiet period, re-check
//! periodically in case an event was missed, and serve `/status`, `/healthz` and `/readyz`.

use super::{Agent, ApplyError, Outcome};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Quiet period after the last event before applying: an editor's or kubelet's several
/// writes become one apply.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Re-check even without events (an event can be lost, e.g. across a remount).
const RESYNC: Duration = Duration::from_secs(60);

/// Apply once from the watched directory and log the outcome.
pub fn apply_and_log(agent: &Agent) -> bool {
    apply_and_log_from(agent, &agent.watch_dir)
}

/// Apply once from `dir` and log the outcome.
fn apply_and_log_from(agent: &Agent, dir: &Path) -> bool {
    let before = agent.status();
    if !super::bundle::present(dir) {
        // Nothing published yet: not a refusal. Say it once, not at every re-check.
        if before.last_check_at.is_none() {
            tracing::info!(dir = %dir.display(), "no relay configuration published yet; waiting");
        }
        agent.checked();
        return before.applied_hash.is_some();
    }
    match agent.apply_from(dir) {
        Ok(Outcome::Applied { hash, reloaded }) => {
            tracing::info!(%hash, reloaded, "configuration applied");
            true
        }
        Ok(Outcome::Unchanged { hash }) => {
            tracing::debug!(%hash, "configuration unchanged");
            true
        }
        Err(ApplyError::NotReloaded { hash, reason }) => {
            let repeated = before
                .last_reload_failure
                .is_some_and(|b| b.hash.as_deref() == Some(hash.as_str()) && b.reason == reason);
            if repeated {
                tracing::debug!(%reason, "Postfix still not reloaded");
            } else {
                tracing::error!(
                    %hash,
                    %reason,
                    "configuration installed but not in force: Postfix was not reloaded; retried at the next check"
                );
            }
            false
        }
        Err(ApplyError::Refused(refusal)) => {
            // The periodic re-check meets the same refusal again: say it once.
            let repeated = before
                .last_refused
                .is_some_and(|b| b.hash == refusal.hash && b.reason == refusal.reason);
            if repeated {
                tracing::debug!(reason = %refusal.reason, "configuration still refused");
                return false;
            }
            tracing::error!(
                hash = refusal.hash.as_deref().unwrap_or("-"),
                reason = %refusal.reason,
                "configuration refused; the last good one stays in effect"
            );
            false
        }
    }
}

/// The STARTTLS certificate's files (a mounted `kubernetes.io/tls` Secret): Postfix reads
/// them when an smtpd process starts, so a renewed certificate is put in force by a reload.
pub struct TlsFiles {
    dir: std::path::PathBuf,
    seen: Option<Vec<u8>>,
}

impl TlsFiles {
    pub fn new(dir: std::path::PathBuf) -> TlsFiles {
        let mut files = TlsFiles { dir, seen: None };
        files.seen = files.digest();
        files
    }

    /// A digest of every file in the directory (kubelet's `..data` layout followed).
    fn digest(&self) -> Option<Vec<u8>> {
        use sha2::Digest;
        let dir = super::bundle::snapshot_dir(&self.dir).ok()?;
        let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        let mut hasher = sha2::Sha256::new();
        for name in names {
            hasher.update(name.as_os_str().as_encoded_bytes());
            hasher.update(std::fs::read(&name).ok()?);
        }
        Some(hasher.finalize().to_vec())
    }

    /// Reload Postfix when the files changed since the last look.
    pub fn reload_if_changed(&mut self, agent: &Agent) {
        let now = self.digest();
        if now.is_none() || now == self.seen {
            return;
        }
        match super::install::reload(&agent.paths) {
            Ok(reloaded) => {
                tracing::info!(dir = %self.dir.display(), reloaded, "STARTTLS certificate changed; Postfix reloaded");
                self.seen = now;
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), "STARTTLS certificate changed but Postfix was not reloaded: {e}; retried at the next check")
            }
        }
    }
}

/// The copies of the configuration: the mounted volume and, optionally, the API's copy.
/// Both follow the same ConfigMap forward in time, so the one that changed last holds the
/// newest configuration: that is the one applied. Going back to the volume's older copy
/// when the API watch breaks would undo a newer configuration.
pub struct Sources {
    dirs: Vec<PathBuf>,
    seen: Vec<Option<String>>,
    current: usize,
}

impl Sources {
    /// `volume` first, so a changed API copy (listed later) wins at start.
    pub fn new(volume: PathBuf, api: Option<PathBuf>) -> Sources {
        let dirs: Vec<PathBuf> = std::iter::once(volume).chain(api).collect();
        Sources {
            seen: vec![None; dirs.len()],
            dirs,
            current: 0,
        }
    }

    /// The copy to apply from now.
    pub fn pick(&mut self) -> &Path {
        for (i, dir) in self.dirs.iter().enumerate() {
            let hash = super::bundle::manifest_hash(dir);
            if hash.is_some() && hash != self.seen[i] {
                self.seen[i] = hash;
                self.current = i;
            }
        }
        &self.dirs[self.current]
    }
}

/// Watch and apply until the watcher fails. Blocking: run it on its own thread.
pub fn watch(agent: &Agent, mut sources: Sources, mut tls: Option<TlsFiles>) -> Result<(), String> {
    use notify::{RecursiveMode, Watcher};
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })
    .map_err(|e| format!("cannot watch {}: {e}", agent.watch_dir.display()))?;
    for dir in sources.dirs.iter().chain(tls.as_ref().map(|t| &t.dir)) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    }
    tracing::info!(dir = %agent.watch_dir.display(), "watching for configuration changes");
    apply_and_log_from(agent, sources.pick());
    loop {
        match rx.recv_timeout(RESYNC) {
            Ok(Err(e)) => tracing::warn!("watch error: {e}"),
            Ok(Ok(_)) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the file watcher stopped".into());
            }
        }
        while rx.recv_timeout(DEBOUNCE).is_ok() {}
        apply_and_log_from(agent, sources.pick());
        if let Some(tls) = &mut tls {
            tls.reload_if_changed(agent);
        }
    }
}

/// Serve `GET /status` (JSON), `/observed`, `/metrics`, `/healthz` and `/readyz` on `addr`
/// until the process ends.
pub async fn serve_status(
    agent: Agent,
    observed: crate::observe::Shared,
    addr: SocketAddr,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "serving /status, /observed, /metrics, /healthz and /readyz");
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let (agent, observed) = (agent.clone(), observed.clone());
        tokio::spawn(async move {
            // Requests are one small line; anything longer is cut off and answered anyway.
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let target = request.split_whitespace().nth(1).unwrap_or("");
            let (code, content_type, body) = respond(&agent, &observed, target);
            let response = format!(
                "HTTP/1.1 {code}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

const JSON: &str = "application/json";

/// The answer to `GET target`: status line, content type, body.
fn respond(
    agent: &Agent,
    observed: &crate::observe::Shared,
    target: &str,
) -> (&'static str, &'static str, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Ok(observed) = observed.lock() else {
        return ("500 Internal Server Error", JSON, "{}".into());
    };
    match path {
        "/status" => {
            let mut body = serde_json::to_value(agent.status()).unwrap_or_default();
            body["observed"] = serde_json::to_value(observed.summary()).unwrap_or_default();
            ("200 OK", JSON, pretty(&body))
        }
        "/observed" => {
            let hours = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("hours="))
                .and_then(|h| h.parse::<i64>().ok())
                .filter(|h| (1..=crate::observe::observed::HOURS_KEPT).contains(h));
            match (hours, query.is_empty()) {
                (None, false) => (
                    "400 Bad Request",
                    JSON,
                    format!(
                        "{{\"error\":\"hours must be 1 to {}\"}}",
                        crate::observe::observed::HOURS_KEPT
                    ),
                ),
                (hours, _) => {
                    let hours = hours.unwrap_or(24);
                    let now = crate::observe::follow::now();
                    let window = crate::observe::Window {
                        hours,
                        domains: observed.window(now, hours),
                    };
                    // Compact: it may list a hundred thousand domains.
                    (
                        "200 OK",
                        JSON,
                        serde_json::to_string(&window).unwrap_or_default(),
                    )
                }
            }
        }
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            crate::observe::metrics::render(
                &agent.status(),
                &observed,
                super::queue_sizes(&agent.paths),
            ),
        ),
        "/healthz" => ("200 OK", JSON, "{\"ok\":true}".to_string()),
        // Ready once a configuration is in force: until then the pod runs on the base
        // configuration and must not be sent mail.
        "/readyz" => match agent.status().applied_hash {
            Some(hash) => (
                "200 OK",
                JSON,
                serde_json::json!({"applied": hash}).to_string(),
            ),
            None => (
                "503 Service Unavailable",
                JSON,
                serde_json::json!({"applied": null, "reason": "no relay configuration applied yet"})
                    .to_string(),
            ),
        },
        _ => ("404 Not Found", JSON, "{\"error\":\"not found\"}".to_string()),
    }
}

fn pretty(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}
