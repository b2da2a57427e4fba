//! The long-running agent: watch the directory (kubelet's `..data` symlink swap and plain
//! file edits both show up as events in it), apply after a quiet period, re-check
//! periodically in case an event was missed, and serve `/status` and `/healthz`.

use super::{Agent, ApplyError, Outcome};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Quiet period after the last event before applying: an editor's or kubelet's several
/// writes become one apply.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Re-check even without events (an event can be lost, e.g. across a remount).
const RESYNC: Duration = Duration::from_secs(60);

/// Apply once and log the outcome.
pub fn apply_and_log(agent: &Agent) -> bool {
    let before = agent.status();
    match agent.apply() {
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

/// Watch and apply until the watcher fails. Blocking: run it on its own thread.
pub fn watch(agent: &Agent) -> Result<(), String> {
    use notify::{RecursiveMode, Watcher};
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })
    .map_err(|e| format!("cannot watch {}: {e}", agent.watch_dir.display()))?;
    watcher
        .watch(&agent.watch_dir, RecursiveMode::Recursive)
        .map_err(|e| format!("cannot watch {}: {e}", agent.watch_dir.display()))?;
    tracing::info!(dir = %agent.watch_dir.display(), "watching for configuration changes");
    apply_and_log(agent);
    loop {
        match rx.recv_timeout(RESYNC) {
            Ok(Err(e)) => tracing::warn!("watch error: {e}"),
            Ok(Ok(_)) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the file watcher stopped".into());
            }
        }
        while rx.recv_timeout(DEBOUNCE).is_ok() {}
        apply_and_log(agent);
    }
}

/// Serve `GET /status` (JSON) and `GET /healthz` on `addr` until the process ends.
pub async fn serve_status(agent: Agent, addr: SocketAddr) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "serving /status and /healthz");
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            // Requests are one small line; anything longer is cut off and answered anyway.
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (code, body) = match path {
                "/status" => (
                    "200 OK",
                    serde_json::to_string_pretty(&agent.status()).unwrap_or_default(),
                ),
                "/healthz" => ("200 OK", "{\"ok\":true}".to_string()),
                _ => ("404 Not Found", "{\"error\":\"not found\"}".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {code}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
