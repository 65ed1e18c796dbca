//! `mirror-routerd`: receives entries on a backup host, logs them (RT1/RT2) and applies them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Receive mirrored changes on a backup host and apply them under --root.
#[derive(Debug, Parser)]
#[command(name = "mirror-routerd", version)]
struct Cli {
    /// Address to listen on, ADDR:PORT.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: String,
    /// Directory under which every backup file is written.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Router state directory (RT1/RT2 logs, router configuration).
    #[arg(long, value_name = "DIR", help_heading = "State options")]
    state: Option<PathBuf>,
}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("mirror-routerd: the router is not part of this build yet");
    ExitCode::FAILURE
}
