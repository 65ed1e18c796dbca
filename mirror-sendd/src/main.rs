//! `mirror-sendd`: forwards the journal of a local system to its backup sites.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Forward the journal of a mirror local system to its backup sites.
#[derive(Debug, Parser)]
#[command(name = "mirror-sendd", version)]
struct Cli {
    /// State directory of the local system [default: $MIRROR_STATE, else
    /// $XDG_STATE_HOME/mirror, else ~/.local/state/mirror]
    #[arg(long, value_name = "DIR", help_heading = "State options")]
    state: Option<PathBuf>,
}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("mirror-sendd: forwarding is not part of this build yet");
    ExitCode::FAILURE
}
