//! `mirrorfs DIR`: mounts the mirroring filesystem over DIR itself (or `SOURCE MOUNTPOINT`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mirrorfs::fs::FsConfig;
use mirrorfs::journal::JournalConfig;
use mirrorfs::mount::{self, MountOptions};
use mirrorfs::state::StateDir;

/// Mount mirrorfs over DIR, so that every change to files selected by the rules is journaled
/// before the application sees success. Runs in the foreground; stop with Ctrl-C,
/// `kill PID` or `fusermount3 -u DIR`.
#[derive(Debug, Parser)]
#[command(name = "mirrorfs", version)]
struct Cli {
    /// The directory to mount over (you keep working in the same path). With two arguments:
    /// the directory whose files are served.
    dir: PathBuf,
    /// Mount somewhere else than over DIR.
    mountpoint: Option<PathBuf>,
    /// State directory of the local system [default: $MIRROR_STATE, else
    /// $XDG_STATE_HOME/mirror, else ~/.local/state/mirror]
    #[arg(long, value_name = "DIR", help_heading = "State options")]
    state: Option<PathBuf>,
    /// Threads serving requests.
    #[arg(long, default_value_t = 4, value_name = "N", help_heading = "Tuning")]
    threads: usize,
    /// Seconds the kernel may cache names and attributes.
    #[arg(
        long,
        default_value_t = 3600,
        value_name = "SECS",
        help_heading = "Tuning"
    )]
    ttl: u64,
    /// Never use kernel passthrough (serve all file I/O through mirrorfs).
    #[arg(long, help_heading = "Tuning")]
    no_passthrough: bool,
    /// Journal segment size in bytes.
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES", help_heading = "Tuning")]
    segment_size: u64,
}

fn run(cli: Cli, state: StateDir) -> anyhow::Result<()> {
    let mountpoint = cli.mountpoint.clone().unwrap_or_else(|| cli.dir.clone());
    mount::run(MountOptions {
        source: cli.dir.clone(),
        mountpoint: mountpoint.clone(),
        state,
        threads: cli.threads,
        fs: FsConfig {
            ttl: Duration::from_secs(cli.ttl),
            passthrough: !cli.no_passthrough,
        },
        journal: JournalConfig {
            segment_size: cli.segment_size,
        },
    })
    .with_context(|| format!("mirrorfs on {}", mountpoint.display()))
}

fn main() -> ExitCode {
    // State files are private; mount::run sets the umask to 0 for the files it makes for
    // applications, and makes its own later state files with explicit modes.
    mirrorfs::state::private_umask();
    let cli = Cli::parse();
    let state = match mirrorfs::state::resolve(cli.state.as_deref()) {
        Ok(p) => StateDir::at(p),
        Err(e) => {
            eprintln!("mirrorfs: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A state directory that does not exist yet is made once the mount's checks passed
    // (mount::run), so that a mount that fails leaves no new local system behind.
    let log = state.root().is_dir().then(|| state.error_log());
    mirrorfs::logging::init("mirrorfs", "info", log.as_deref());
    match run(cli, state) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
