use super::output::write_files;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct CrdsArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
}

pub fn run(args: CrdsArgs) -> ExitCode {
    let files = match crate::api::crds_yaml() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: cannot serialise the CRDs: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.output {
        Some(dir) => match write_files(&dir, files.into_iter().collect(), None) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        None => {
            for (_, text) in files {
                print!("{text}");
            }
            ExitCode::SUCCESS
        }
    }
}
