//! `mirrorfs DIR`: mounts the mirroring filesystem over DIR itself.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Mount mirrorfs over DIR so that changes to files selected by the rules are journaled.
#[derive(Debug, Parser)]
#[command(name = "mirrorfs", version)]
struct Cli {
    /// The directory to mount over (the user keeps working in the same path).
    dir: PathBuf,
    /// State directory of the local system.
    #[arg(long, value_name = "DIR", help_heading = "State options")]
    state: Option<PathBuf>,
}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("mirrorfs: mounting is not part of this build yet");
    ExitCode::FAILURE
}
