use crate::relay::base::{BaseSettings, RawSettings};
use crate::relay::{Agent, Paths, bundle, hold, seed, serve};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(
    after_help = "Runs as the relay pod's init container. The live config directory is \
replaced by a copy of the image's configuration, the relay's own settings are set in main.cf, \
and the current policy is applied when one is published. Without one (a fresh install) or when \
it is refused, Postfix starts on the base configuration with delivery held (defer_transports): \
mail may be accepted and queued, including the previous pod's queue, but none is sent. The \
relay-agent sidecar keeps trying; its first apply releases the hold, and the pod becomes Ready \
only then. So a missing or refused ConfigMap never keeps a pod from starting, and never makes \
it send mail under a weaker policy than the one it could not apply.\n\nExample:\n  mailtls relay-init \
--watch-dir /etc/mailtls/config --client-cidr 10.0.0.0/8 --hostname relay.example.com \\\n    \
--tls-cert /etc/mailtls/tls/tls.crt --tls-key /etc/mailtls/tls/tls.key \\\n    \
--inbound-domain example.com --inbound-next-hop mail.example.internal:25"
)]
pub struct RelayInitArgs {
    /// The image's own Postfix configuration, copied into --postfix-dir.
    #[arg(long, value_name = "DIR", default_value = "/usr/share/mailtls/postfix")]
    image_config: PathBuf,
    /// The live Postfix config_directory (emptied first unless it is --image-config).
    #[arg(long, value_name = "DIR", default_value = "/etc/postfix")]
    postfix_dir: PathBuf,
    /// Where the maps are installed; must equal the render's --config-dir.
    #[arg(long, value_name = "DIR", default_value = "/etc/postfix/mailtls")]
    maps_dir: PathBuf,
    /// Where the rendered configuration (the ConfigMap) is mounted; applied when present.
    #[arg(long, value_name = "DIR")]
    watch_dir: Option<PathBuf>,
    /// A client range that may relay to any destination (repeat or comma-separate). None:
    /// only the pod itself.
    #[arg(long = "client-cidr", value_name = "CIDR", value_delimiter = ',')]
    client_cidrs: Vec<String>,
    /// The relay's name in its greeting and HELO (myhostname); a fully qualified name.
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// Certificate (PEM, chain included) offered to clients for STARTTLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A domain of the organisation: mail for it is accepted from anyone and passed to
    /// --inbound-next-hop (repeat or comma-separate).
    #[arg(long = "inbound-domain", value_name = "DOMAIN", value_delimiter = ',')]
    inbound_domains: Vec<String>,
    /// The organisation's mail server: host, host:port or [v6]:port (no MX lookup).
    #[arg(long, value_name = "HOST")]
    inbound_next_hop: Option<String>,
    /// Make Postfix write its log to this file (maillog_file), where `relay-agent
    /// --mail-log` reads what the relay delivered. Default: the image's setting.
    #[arg(long, value_name = "FILE")]
    mail_log: Option<PathBuf>,
    /// The Unix socket the relay agent will serve MTA-STS policies on (its
    /// `--mta-sts-listen unix:PATH`): a configuration that names it is applied now instead
    /// of being refused until the agent runs.
    #[arg(long, value_name = "PATH")]
    mta_sts_socket: Option<String>,
}

pub fn run(args: RelayInitArgs) -> ExitCode {
    let settings = BaseSettings::parse(&RawSettings {
        client_cidrs: args.client_cidrs,
        hostname: args.hostname,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        inbound_domains: args.inbound_domains,
        inbound_next_hop: args.inbound_next_hop,
        mail_log: args.mail_log,
    });
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            for line in e.lines() {
                eprintln!("error: {line}");
            }
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let paths = match (
        std::path::absolute(&args.postfix_dir),
        std::path::absolute(&args.maps_dir),
    ) {
        (Ok(postfix_dir), Ok(maps_dir)) => Paths {
            postfix_dir,
            maps_dir,
        },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    if let Err(e) = seed::seed(&args.image_config, &paths, &settings) {
        eprintln!("error: cannot prepare {}: {e}", paths.postfix_dir.display());
        return ExitCode::FAILURE;
    }
    tracing::info!(dir = %paths.postfix_dir.display(), "relay settings set");
    match hold::hold(&paths) {
        Ok(services) => tracing::info!(
            services = %services.join(" "),
            "delivery held until a policy is applied"
        ),
        Err(e) => {
            eprintln!("error: cannot hold delivery until a policy is applied: {e}");
            return ExitCode::FAILURE;
        }
    }
    let Some(watch_dir) = args.watch_dir else {
        return ExitCode::SUCCESS;
    };
    if !bundle::present(&watch_dir) {
        tracing::warn!(
            dir = %watch_dir.display(),
            "no relay configuration published yet: Postfix starts on the base configuration \
             with delivery held; the agent's first apply releases it and makes the pod Ready"
        );
        return ExitCode::SUCCESS;
    }
    match std::path::absolute(&watch_dir) {
        Ok(dir) => {
            // A refusal is logged (and reported on the agent's /status once it runs); the
            // pod still starts, not Ready, on the base configuration with delivery held.
            let agent = Agent::new(dir, paths);
            let agent = match &args.mta_sts_socket {
                Some(socket) => agent.with_mta_sts(socket.clone(), None),
                None => agent,
            };
            serve::apply_and_log(&agent);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: --watch-dir {}: {e}", watch_dir.display());
            ExitCode::from(super::EXIT_USAGE)
        }
    }
}
