//! Command line: the binary's subcommands.
use std::process::ExitCode;

pub fn main() -> ExitCode {
    for (file, text) in crate::api::crds_yaml().unwrap() {
        println!("{file}\n{text}");
    }
    ExitCode::SUCCESS
}
