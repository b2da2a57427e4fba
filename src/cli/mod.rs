//! Command line: the binary's subcommands. Everything here is edge: files, terminal, exit
//! codes. The work is done by the pure core.

mod crds;
mod directory;
mod explain;
pub mod load;
mod mta_sts;
mod observe;
mod output;
pub mod probe;
mod probe_flags;
mod relay_agent;
mod relay_drain;
mod relay_init;
mod render;
mod report;
mod run;
mod standalone;
pub mod yaml_limits;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Secure mail transport (TLS) policy as Kubernetes resources, rendered into Postfix
/// configuration and tested with real TLS connections.
#[derive(Parser, Debug)]
#[command(name = "mailtls", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Render policy YAML into Postfix relay files (no cluster needed).
    Render(render::RenderArgs),
    /// The reconcile loop against a directory: render every namespace and write each
    /// resource back with its status.
    Standalone(standalone::StandaloneArgs),
    /// Say which policies apply to an address, the effective settings, the next hop and why.
    Explain(explain::ExplainArgs),
    /// What the relay did with real mail, from Postfix's log: per recipient domain,
    /// delivered over TLS (by trust level and protocol), in plaintext, or failed for TLS.
    Observe(observe::ObserveArgs),
    /// Reports from Postfix's log: `tls-rpt`, an RFC 8460 aggregate report.
    Report(report::ReportArgs),
    // about/long_about come from ProbeArgs' own #[command] attributes.
    Probe(probe::ProbeArgs),
    /// MTA-STS policy server for Postfix (socketmap), as the relay agent runs it with
    /// --mta-sts-listen.
    MtaStsServer(mta_sts::MtaStsServerArgs),
    /// Print the CustomResourceDefinitions (or write them to a directory).
    Crds(crds::CrdsArgs),
    /// Sidecar beside Postfix: apply the rendered configuration from a watched directory
    /// (verify, stage, `postfix check`, swap, reload), keeping the last good one on failure.
    RelayAgent(relay_agent::RelayAgentArgs),
    /// Init container of a relay pod: seed the live Postfix configuration from the image,
    /// set the relay's own settings (who may relay, hostname, STARTTLS, inbound domains)
    /// and apply the current policy when there is one.
    RelayInit(relay_init::RelayInitArgs),
    /// preStop hook of a relay pod: stop accepting mail, try the queue once more, wait for
    /// deliveries in flight; deferred mail stays queued on the pod's volume.
    RelayDrain(relay_drain::RelayDrainArgs),
    /// Run the controller in a cluster: watch the resources, write the relay ConfigMap and
    /// the statuses.
    Run(run::RunArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    let json = matches!(&cli.command, Command::Run(a) if a.log_format == run::LogFormat::Json);
    init_logging(json);
    match cli.command {
        Command::Render(args) => render::run(args),
        Command::Standalone(args) => standalone::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Observe(args) => observe::run(args),
        Command::Report(args) => report::run(args),
        Command::Probe(args) => probe::main(args),
        Command::Crds(args) => crds::run(args),
        Command::MtaStsServer(args) => mta_sts::run(args),
        Command::RelayAgent(args) => relay_agent::run(args),
        Command::RelayInit(args) => relay_init::run(args),
        Command::RelayDrain(args) => relay_drain::run(args),
        Command::Run(args) => run::run(args),
    }
}

/// A reader that went away (`mailtls crds | head -1`) ends the process quietly with status
/// 141, as SIGPIPE ends a C program, instead of with a panic and a backtrace: Rust ignores
/// SIGPIPE, so `print!` to a closed pipe panics.
fn quiet_on_closed_stdout() {
    let broken_pipe = std::io::Error::from_raw_os_error(32).to_string(); // EPIPE on Linux
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        let closed = message.is_some_and(|message| {
            message.starts_with("failed printing to stdout") && message.ends_with(&broken_pipe)
        });
        if closed {
            std::process::exit(141);
        }
        default(info)
    }));
}

/// Logs on stderr, human or JSON lines; level from `RUST_LOG` (default `info`).
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder
            .with_ansi(colour(
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .try_init()
    };
}

/// Whether log lines get colours: on a terminal, unless `NO_COLOR` is set and not empty
/// (no-color.org).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The async runtime for the subcommands that need one, or the exit code after saying why.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Exit code for "the input (or the command line) is wrong".
pub(crate) const EXIT_INVALID: u8 = 1;
/// Exit code for usage errors (clap uses the same).
pub(crate) const EXIT_USAGE: u8 = 2;

#[cfg(test)]
mod tests {
    #[test]
    fn no_color_turns_colours_off() {
        use std::ffi::OsStr;
        assert!(super::colour(true, None));
        assert!(super::colour(true, Some(OsStr::new(""))));
        assert!(!super::colour(true, Some(OsStr::new("1"))));
        assert!(!super::colour(false, None));
    }
}
