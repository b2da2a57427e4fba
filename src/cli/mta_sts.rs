//! `mailtls mta-sts-server` and the relay agent's `--mta-sts-listen`: the MTA-STS policy
//! server Postfix asks through `socketmap:inet:HOST:PORT:postfix`.

use super::probe::parse_duration;
use crate::probe::{AddressPolicy, Cidr};
use crate::sts::scope::Scope;
use crate::sts::server::{Config, Listener, PolicyServer};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct MtaStsArgs {
    /// Serve MTA-STS policies (RFC 8461) to Postfix on this address (`IP:PORT`, for
    /// `socketmap:inet:IP:PORT:postfix`) or Unix socket (`unix:PATH`, for
    /// `socketmap:unix:PATH:postfix`; cheaper): a domain whose policy is `enforce` gets
    /// `secure match=<its mx patterns> servername=hostname`; `testing`, `none` or no
    /// policy get nothing (NOTFOUND).
    #[arg(long, value_name = "IP:PORT|unix:PATH", value_parser = parse_listen)]
    pub mta_sts_listen: Option<Listen>,
    /// DNS server for the `_mta-sts` and policy host lookups instead of the system resolver.
    #[arg(long, value_name = "IP:PORT")]
    pub mta_sts_resolver: Option<SocketAddr>,
    /// Extra trusted CA certificates (PEM) for policy hosts.
    #[arg(long, value_name = "PEM")]
    pub mta_sts_ca_file: Option<PathBuf>,
    /// Also fetch policies from hosts in this range, though loopback, private or reserved
    /// (by default only public addresses: a TXT record is anyone's).
    #[arg(long, value_name = "CIDR")]
    pub mta_sts_allow_address: Vec<Cidr>,
    /// Time limit of a TXT lookup and of a policy fetch; meanwhile Postfix waits.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub mta_sts_timeout: Duration,
    /// A domain asked about again within this time is answered from the cache alone: its
    /// MTA-STS policy, and its DANE verdict (never longer than its DNS records' TTL).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub mta_sts_recheck: Duration,
    /// HTTPS port of policy hosts (always 443 in real use; tests override it).
    #[arg(long, default_value_t = 443, hide = true)]
    pub mta_sts_port: u16,
}

impl MtaStsArgs {
    /// Start the server these flags describe on the current runtime, when
    /// `--mta-sts-listen` is given, answering for `scope` (`None`: nobody until it is set);
    /// the server once it listens.
    pub async fn start(&self, scope: Option<Scope>) -> Result<Option<Arc<PolicyServer>>, String> {
        let Some(listen) = &self.mta_sts_listen else {
            return Ok(None);
        };
        let extra_roots = match &self.mta_sts_ca_file {
            Some(path) => super::probe::read_pem_certs(path).map_err(|e| e.0)?,
            None => Vec::new(),
        };
        crate::probe::tls::install_crypto_provider();
        let server = PolicyServer::new(
            Config {
                resolver: self.mta_sts_resolver,
                extra_roots,
                addresses: AddressPolicy::public_only(
                    self.mta_sts_allow_address.clone(),
                    Vec::new(),
                ),
                https_port: self.mta_sts_port,
                timeout: self.mta_sts_timeout,
                grace: self.mta_sts_recheck,
                ..Config::default()
            },
            scope,
        )?;
        let bound = match &listen {
            Listen::Tcp(addr) => tokio::net::TcpListener::bind(*addr)
                .await
                .map(Listener::Tcp),
            Listen::Unix(path) => {
                // A socket left by an earlier run would make the bind fail.
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    let _ = std::fs::remove_file(path);
                }
                // Postfix's smtp processes run as another user; the directory is what
                // restricts who may ask.
                tokio::net::UnixListener::bind(path)
                    .and_then(|l| {
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
                        Ok(l)
                    })
                    .map(Listener::Unix)
            }
        };
        let listener = bound.map_err(|e| format!("--mta-sts-listen {listen}: {e}"))?;
        tracing::info!(%listen, "serving MTA-STS policies");
        tokio::spawn(server.clone().serve(listener));
        Ok(Some(server))
    }

    /// The Unix socket the server listens on, which a rendered configuration must name.
    pub fn socket(&self) -> Option<&std::path::Path> {
        match &self.mta_sts_listen {
            Some(Listen::Unix(path)) => Some(path),
            _ => None,
        }
    }
}

/// Where the server listens.
#[derive(Clone, Debug)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    match s.strip_prefix("unix:") {
        Some(path) if path.starts_with('/') => Ok(Listen::Unix(PathBuf::from(path))),
        Some(_) => Err(format!("{s:?}: the socket path must be absolute")),
        None => s
            .parse()
            .map(Listen::Tcp)
            .map_err(|_| format!("{s:?} is neither IP:PORT nor unix:/PATH")),
    }
}

#[derive(Args, Debug)]
#[command(
    after_help = "For a Postfix kept by hand (the relay agent runs the same server with \
--mta-sts-listen). Postfix asks it per next-hop domain; add it after your own policy table:\n  \
smtp_tls_policy_maps = lmdb:/etc/postfix/tls_policy, socketmap:inet:127.0.0.1:8461:postfix\n\n\
A Unix socket (--mta-sts-listen unix:/run/mailtls/mta-sts.sock, then \
socketmap:unix:/run/mailtls/mta-sts.sock:postfix) costs less per lookup than TCP; Postfix's \
smtp processes must be able to open it.\n\n\
Policies are cached for their max_age; a failed lookup or fetch keeps a cached policy while it \
holds (RFC 8461 section 5.1), and policies in use are looked up again hourly in the \
background.\n\nExample:\n  mailtls mta-sts-server --mta-sts-listen 127.0.0.1:8461"
)]
pub struct MtaStsServerArgs {
    #[command(flatten)]
    sts: MtaStsArgs,
    /// Honour DANE first (RFC 7672; it takes precedence over MTA-STS, RFC 8461 section 2):
    /// a domain whose MX hosts have DNSSEC-authenticated DANE-TA or DANE-EE TLSA records
    /// gets `dane-only`, the others their MTA-STS answer. Needs a validating resolver
    /// (--mta-sts-resolver, or the system's with `options trust-ad`; otherwise no record
    /// counts as authenticated) and `smtp_dns_support_level = dnssec` in Postfix.
    #[arg(long)]
    dane: bool,
}

pub fn run(args: MtaStsServerArgs) -> ExitCode {
    if args.sts.mta_sts_listen.is_none() {
        eprintln!("error: --mta-sts-listen is required");
        return ExitCode::from(super::EXIT_USAGE);
    }
    // Connections are served on threads of their own (PolicyServer::serve); this one thread
    // drives only the lookups that must wait (DNS, HTTPS) and the refreshes.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let scope = if args.dane {
            Scope::everything_with_dane()
        } else {
            Scope::everything()
        };
        match args.sts.start(Some(scope)).await {
            Ok(_) => {
                let _ = tokio::signal::ctrl_c().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(super::EXIT_USAGE)
            }
        }
    })
}
