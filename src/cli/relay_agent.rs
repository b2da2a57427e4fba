use crate::relay::{Agent, Paths, mirror, serve};
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
    /// Address for HTTP `/status` (applied hash, last refusal, counters, what the relay
    /// delivered), `/observed` (per recipient domain, `?hours=N`, default 24), `/metrics`
    /// (Prometheus), `/healthz` and `/readyz` (200 once a configuration is applied).
    #[arg(long, value_name = "ADDR")]
    status_addr: Option<SocketAddr>,
    /// Directory of the STARTTLS certificate (the mounted Secret): Postfix is reloaded when
    /// it changes, so a renewed certificate is offered without a restart.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Also watch this ConfigMap through the API (in-cluster credentials or the
    /// kubeconfig) and apply it at once, instead of waiting for kubelet to refresh the
    /// mounted copy (a minute or more). The mounted --watch-dir stays the fallback.
    #[arg(long, value_name = "NAME")]
    configmap: Option<String>,
    /// Namespace of --configmap (default: the pod's own, or the kubeconfig's).
    #[arg(long, value_name = "NS", requires = "configmap")]
    namespace: Option<String>,
    /// Where the API's copy of --configmap is kept (kubelet's layout).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/run/mailtls/config",
        requires = "configmap"
    )]
    api_dir: PathBuf,
    /// Postfix's log file (its maillog_file; see `relay-init --mail-log`): followed from its
    /// start, its delivery and TLS lines counted per recipient domain for `/metrics`,
    /// `/status` and `/observed`. Counts are kept in memory: no mail content, no local part.
    #[arg(long, value_name = "FILE")]
    mail_log: Option<PathBuf>,
    /// Also write every --mail-log line to standard output (the container's log).
    #[arg(long, requires = "mail_log")]
    echo_mail_log: bool,
    /// Rotate --mail-log past this size (`KiB`, `MiB`, `GiB`; at least 4KiB): renamed,
    /// Postfix reloaded so it opens a new file, the old one read to its end and deleted.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", requires = "mail_log",
          value_parser = parse_size)]
    mail_log_max_size: u64,
    /// Apply once and exit: 0 when applied or unchanged, 1 when refused or none published.
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
    if args.configmap.is_some() {
        crate::probe::tls::install_crypto_provider();
    }
    let api_dir = match &args.configmap {
        Some(name) => match runtime.block_on(kube::Client::try_default()) {
            Ok(client) => {
                let namespace = args
                    .namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_string());
                let dir = args.api_dir.clone();
                runtime.spawn(mirror::mirror(client, namespace, name.clone(), dir));
                Some(args.api_dir.clone())
            }
            Err(e) => {
                // Not fatal: the mounted copy still arrives, only later.
                tracing::error!(
                    "cannot reach the API for ConfigMap {name}: {e}; using the mounted copy only"
                );
                None
            }
        },
        None => None,
    };
    let observed = crate::observe::Shared::default();
    if let Some(path) = args.mail_log {
        let follow = crate::observe::follow::Follow {
            path,
            echo: args.echo_mail_log,
            rotate_at: args.mail_log_max_size,
            postfix: agent.paths.clone(),
        };
        let observed = observed.clone();
        std::thread::spawn(move || crate::observe::follow::follow(&follow, &observed));
    }
    if let Some(addr) = args.status_addr {
        let agent = agent.clone();
        runtime.spawn(async move {
            if let Err(e) = serve::serve_status(agent, observed, addr).await {
                tracing::error!("{e}");
                std::process::exit(1);
            }
        });
    }
    let tls = args.tls_dir.map(serve::TlsFiles::new);
    match serve::watch(
        &agent,
        serve::Sources::new(agent.watch_dir.clone(), api_dir),
        tls,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `4096`, `64KiB`, `16MiB`, `1GiB` → bytes (at least 4 KiB).
fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.trim().len()),
    );
    let factor: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("unknown unit {unit:?} (use KiB, MiB or GiB)")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .filter(|n| *n >= 4096)
        .ok_or_else(|| format!("{s:?} is not a size of at least 4KiB"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(super::parse_size("4KiB"), Ok(4096));
        assert_eq!(super::parse_size("8192"), Ok(8192));
        for bad in ["1KiB", "", "MiB", "3MB", "-1", "99999999999GiB"] {
            assert!(super::parse_size(bad).is_err(), "{bad}");
        }
    }
}
