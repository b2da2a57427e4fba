use crate::relay::{Agent, Paths, serve};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(
    after_help = "Every change is verified against manifest.json, validated line by line, built and \
checked with `postfix check` in a staging copy of the config directory, and only then swapped in \
and reloaded. A failing configuration is never applied; the last good one stays. No symlink \
is followed but kubelet's ..data layout.\n\n\
Local changes to main.cf/master.cf go into main.cf.mailtls-base / master.cf.mailtls-base \
(made from the live files on first use): every apply starts from them.\n\nExample:\n  \
mailtls relay-agent --watch-dir /etc/mailtls --status-addr 0.0.0.0:8080"
)]
pub struct RelayAgentArgs {
    /// Directory where the rendered configuration (the ConfigMap) is mounted.
    #[arg(long, value_name = "DIR")]
    watch_dir: PathBuf,
    /// The live Postfix config_directory.
    #[arg(long, value_name = "DIR", default_value = "/etc/postfix")]
    postfix_dir: PathBuf,
    /// Where the maps are installed; must equal the render's --config-dir.
    #[arg(long, value_name = "DIR", default_value = "/etc/postfix/mailtls")]
    maps_dir: PathBuf,
    /// Address for HTTP `/status` (applied hash, last refusal, counters) and `/healthz`.
    #[arg(long, value_name = "ADDR")]
    status_addr: Option<SocketAddr>,
    /// Apply once and exit: 0 when applied or unchanged, 1 when refused.
    #[arg(long)]
    once: bool,
}

pub fn run(args: RelayAgentArgs) -> ExitCode {
    // Postfix needs absolute paths (`postfix -c relative/dir` fails with no message).
    let absolute = |flag: &str, path: PathBuf| {
        std::path::absolute(&path).map_err(|e| format!("{flag} {}: {e}", path.display()))
    };
    let paths = absolute("--watch-dir", args.watch_dir).and_then(|watch| {
        Ok((
            watch,
            Paths {
                postfix_dir: absolute("--postfix-dir", args.postfix_dir)?,
                maps_dir: absolute("--maps-dir", args.maps_dir)?,
            },
        ))
    });
    let (watch_dir, paths) = match paths {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let agent = Agent::new(watch_dir, paths);
    if args.once {
        return if serve::apply_and_log(&agent) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(super::EXIT_INVALID)
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = args.status_addr {
        let agent = agent.clone();
        runtime.spawn(async move {
            if let Err(e) = serve::serve_status(agent, addr).await {
                tracing::error!("{e}");
                std::process::exit(1);
            }
        });
    }
    match serve::watch(&agent) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
