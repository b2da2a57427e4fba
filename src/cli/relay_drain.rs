use crate::relay::{Paths, drain};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
#[command(
    after_help = "The relay pod's preStop hook: new connections on port 25 are refused \
(master_service_disable = inet, then postfix reload), every queued message is tried once more, \
and the command waits until nothing is being delivered or --within has passed. When delivery \
is held because no policy was ever applied in this pod, nothing is flushed. Deferred mail \
stays in the queue on the pod's volume for the next pod; nothing is dropped.\n\nExample:\n  \
mailtls relay-drain --postfix-dir /etc/postfix --within 50s"
)]
pub struct RelayDrainArgs {
    /// The live Postfix config_directory.
    #[arg(long, value_name = "DIR", default_value = "/etc/postfix")]
    postfix_dir: PathBuf,
    /// Longest wait for deliveries in flight; keep it below the pod's grace period.
    #[arg(long, value_name = "DURATION", default_value = "50s", value_parser = super::probe::parse_duration)]
    within: Duration,
}

pub fn run(args: RelayDrainArgs) -> ExitCode {
    let postfix_dir = match std::path::absolute(&args.postfix_dir) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("error: --postfix-dir {}: {e}", args.postfix_dir.display());
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let paths = Paths {
        maps_dir: postfix_dir.join("mailtls"),
        postfix_dir,
    };
    match drain::drain(&paths, args.within) {
        Ok(left) => {
            tracing::info!(
                in_flight = left.in_flight,
                deferred = left.deferred,
                held = left.held,
                "{}",
                if left.held {
                    "stopped accepting mail; delivery is held (no policy applied), so the queue \
                     stays for the next pod"
                } else {
                    "stopped accepting mail and flushed the queue; what is left stays queued"
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
