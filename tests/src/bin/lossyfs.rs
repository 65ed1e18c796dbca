//! `lossyfs BACKING MOUNTPOINT --control SOCKET`: serves BACKING at MOUNTPOINT, holding back
//! every change not yet made durable, and simulates a power loss on command (see
//! `mirror_tests::lossyfs` for the semantics and the control commands). Test infrastructure.

use std::path::PathBuf;

use clap::Parser;

/// A pass-through FUSE file system that can lose what was not made durable.
#[derive(Debug, Parser)]
#[command(name = "lossyfs", version)]
struct Args {
    /// The directory to serve.
    backing: PathBuf,
    /// Where to mount it (may be BACKING itself).
    mountpoint: PathBuf,
    /// The control socket (commands: ping, status, sync, power-loss [tear SEED]).
    #[arg(long)]
    control: PathBuf,
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let a = Args::parse();
    let opts = mirror_tests::lossyfs::Options {
        backing: a.backing,
        mountpoint: a.mountpoint,
        control: a.control,
    };
    match mirror_tests::lossyfs::run(opts) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("lossyfs: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
