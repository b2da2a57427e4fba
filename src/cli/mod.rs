//! Command line: the binary's subcommands. Each subcommand's logic lives in its own module.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod probe;

/// Secure mail transport (TLS) policy for a Postfix relay.
#[derive(Parser, Debug)]
#[command(name = "mailtls", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    // about/long_about come from ProbeArgs' own #[command] attributes.
    Probe(probe::ProbeArgs),
    /// Print the CustomResourceDefinitions.
    Crds,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe(args) => probe::main(args),
        Command::Crds => print_crds(),
    }
}

fn print_crds() -> ExitCode {
    match crate::api::crds_yaml() {
        Ok(files) => {
            for (file, text) in files {
                println!("{file}\n{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailtls: cannot render the CRDs: {e}");
            ExitCode::FAILURE
        }
    }
}
