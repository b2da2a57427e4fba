use crate::probe::Cidr;
use crate::relay::{Agent, Paths, mirror, serve};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// Send SMTP TLS reports (RFC 8460) as this organisation: each day, yesterday's
    /// sessions (from --mail-log) to every recipient domain whose _smtp._tls TXT record
    /// asks for them, POSTed over HTTPS or mailed through this relay. Off by default.
    #[arg(long, value_name = "NAME", requires_all = ["mail_log", "tls_rpt_contact", "tls_rpt_state"])]
    tls_rpt_organization: Option<String>,
    /// The reports' contact: an email address, which mailed reports come from.
    #[arg(long, value_name = "EMAIL", requires = "tls_rpt_organization")]
    tls_rpt_contact: Option<String>,
    /// File keeping the last day whose reports were sent; put it on the queue volume, so
    /// a restarted pod does not send them again.
    #[arg(long, value_name = "FILE", requires = "tls_rpt_organization")]
    tls_rpt_state: Option<PathBuf>,
    /// When (UTC, HH:MM) the previous day's reports go; one that is missed (the pod was
    /// down) goes as soon as the agent is back that day.
    #[arg(long, value_name = "HH:MM", default_value = "01:00", value_parser = parse_time_of_day)]
    tls_rpt_at: i64,
    /// Names this pod in report ids and file names, as each relay pod reports its own
    /// sessions (default: $HOSTNAME, the pod's name).
    #[arg(long, value_name = "NAME")]
    tls_rpt_instance: Option<String>,
    /// SMTP server that takes mailed reports: this relay.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:25")]
    tls_rpt_smtp: SocketAddr,
    /// DNS server for the report lookups instead of the system resolver.
    #[arg(long, value_name = "IP:PORT")]
    tls_rpt_resolver: Option<SocketAddr>,
    /// Extra trusted CA certificates (PEM) for HTTPS report endpoints.
    #[arg(long, value_name = "PEM")]
    tls_rpt_ca_file: Option<PathBuf>,
    /// Also POST reports to HTTPS endpoints in this range, though loopback, private or
    /// reserved (by default only public addresses: the records are anyone's).
    #[arg(long, value_name = "CIDR")]
    tls_rpt_allow_address: Vec<Cidr>,
    #[command(flatten)]
    mta_sts: super::mta_sts::MtaStsArgs,
    /// Apply once and exit: 0 when applied or unchanged, 1 when refused or none published.
    #[arg(long)]
    once: bool,
}

pub fn run(args: RelayAgentArgs) -> ExitCode {
    // Postfix needs absolute paths (`postfix -c relative/dir` fails with no message).
    let absolute = |flag: &str, path: PathBuf| {
        std::path::absolute(&path).map_err(|e| format!("{flag} {}: {e}", path.display()))
    };
    let paths = absolute("--watch-dir", args.watch_dir.clone()).and_then(|watch| {
        Ok((
            watch,
            Paths {
                postfix_dir: absolute("--postfix-dir", args.postfix_dir.clone())?,
                maps_dir: absolute("--maps-dir", args.maps_dir.clone())?,
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
        let agent = match args.mta_sts.socket() {
            Some(socket) => agent.with_mta_sts(socket.to_string_lossy().into_owned(), None),
            None => agent,
        };
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
    // The resolver is made inside the runtime it uses.
    let daily = match runtime.block_on(async { tls_reports(&args) }) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let agent = match runtime.block_on(args.mta_sts.start(None)) {
        Ok(server) => match args.mta_sts.socket() {
            Some(socket) => agent.with_mta_sts(socket.to_string_lossy().into_owned(), server),
            None => agent,
        },
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    if args.configmap.is_some() || daily.is_some() {
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
    if let Some(daily) = daily {
        if let Ok(mut o) = observed.lock() {
            o.keep_days();
        }
        runtime.spawn(daily.run(observed.clone()));
    }
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

/// The daily TLS reports, when asked for.
fn tls_reports(args: &RelayAgentArgs) -> Result<Option<crate::observe::send::Daily>, String> {
    let (Some(organization), Some(contact), Some(state)) = (
        &args.tls_rpt_organization,
        &args.tls_rpt_contact,
        &args.tls_rpt_state,
    ) else {
        return Ok(None);
    };
    if crate::observe::send::from_address(contact).is_none() {
        return Err(format!(
            "--tls-rpt-contact {contact:?}: reports are mailed from it, so it must be an email address"
        ));
    }
    let config = super::report::send_config(
        args.tls_rpt_resolver,
        args.tls_rpt_ca_file.as_deref(),
        &args.tls_rpt_allow_address,
        args.tls_rpt_smtp,
        Duration::from_secs(30),
    )?;
    let instance = args
        .tls_rpt_instance
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|i| !i.is_empty());
    Ok(Some(crate::observe::send::Daily {
        sender: crate::observe::send::Sender::new(config)?,
        reporter: crate::observe::tlsrpt::Reporter {
            organization: organization.clone(),
            contact: contact.clone(),
            instance,
        },
        after: args.tls_rpt_at,
        state: state.clone(),
    }))
}

/// `HH:MM` → seconds after midnight.
fn parse_time_of_day(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not a time of day like 01:00");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(0..24).contains(&h) || !(0..60).contains(&m) || s.trim().len() != 5 {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60)
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
    fn times_of_day() {
        assert_eq!(super::parse_time_of_day("01:00"), Ok(3600));
        assert_eq!(super::parse_time_of_day("23:59"), Ok(86_340));
        assert_eq!(super::parse_time_of_day("00:00"), Ok(0));
        for bad in ["24:00", "1:00", "01:60", "01", "-1:00", "01:00:00", ""] {
            assert!(super::parse_time_of_day(bad).is_err(), "{bad}");
        }
    }

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
