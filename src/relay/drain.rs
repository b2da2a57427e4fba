//! Graceful stop of a relay pod (edge): stop accepting mail, try every queued message once
//! more (unless delivery is held, see [`super::hold`]), and wait (up to a deadline inside
//! the pod's grace period) until nothing is being delivered. Whatever is still deferred
//! stays in the queue, which lives on the pod's persistent volume, and is tried again by
//! the next pod.

use super::Paths;
use super::install::{reload, run_checked};
use super::{hold, seed};
use std::process::Command;
use std::time::{Duration, Instant};

/// Messages left in each queue when the drain ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Left {
    /// Being delivered or about to be (active, incoming, maildrop).
    pub in_flight: u32,
    /// Waiting for a retry (deferred, hold): kept for the next pod.
    pub deferred: u32,
    /// Delivery was held (no policy applied yet), so nothing was flushed.
    pub held: bool,
}

/// Stop accepting, flush, wait until no message is in flight or `within` has passed.
pub fn drain(paths: &Paths, within: Duration) -> Result<Left, String> {
    let started = Instant::now();
    // Every inet service (smtpd on port 25): new connections are refused while the queue
    // manager and the delivery agents keep running.
    seed::set_params(paths, &["master_service_disable=inet".to_string()])?;
    reload(paths)?;
    let postqueue = |arg: &str| {
        let mut cmd = Command::new("postqueue");
        cmd.arg("-c").arg(&paths.postfix_dir).arg(arg);
        cmd
    };
    // A flush overrides defer_transports: never flush mail held for want of a policy
    // (see hold); it stays queued for the next pod.
    let held = hold::is_held(paths);
    if !held {
        run_checked(&mut postqueue("-f"), true)?;
    }
    loop {
        let left = queued(&run_checked(&mut postqueue("-j"), false)?);
        if left.in_flight == 0 || started.elapsed() >= within {
            return Ok(Left { held, ..left });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Count `postqueue -j` lines (one JSON object per message) by queue.
fn queued(json_lines: &str) -> Left {
    let mut left = Left::default();
    for line in json_lines.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match v.get("queue_name").and_then(|q| q.as_str()) {
            Some("deferred" | "hold") => left.deferred += 1,
            Some(_) => left.in_flight += 1,
            None => {}
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_queue() {
        let lines = concat!(
            r#"{"queue_name": "active", "queue_id": "A1"}"#,
            "\n",
            r#"{"queue_name": "deferred", "queue_id": "D1"}"#,
            "\n",
            r#"{"queue_name": "incoming", "queue_id": "I1"}"#,
            "\n",
            r#"{"queue_name": "hold", "queue_id": "H1"}"#,
            "\n",
            "postqueue: warning: something\n",
        );
        assert_eq!(
            queued(lines),
            Left {
                in_flight: 2,
                deferred: 2,
                held: false
            }
        );
        assert_eq!(queued(""), Left::default());
    }
}
