//! `mirror-ctl`: the user's command for a mirror local system (rules, sync, restore, unblock,
//! status) and, with `router`, for a backup host.

mod cli;
mod keys_cmd;
mod restore_cmd;
mod router_cmd;
mod rules_cmd;
mod status_cmd;
mod sync_cmd;
mod validate;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, RouterCommand, RuleCommand};
use mirrorfs::state::StateDir;
use mirrorfs::wire::auth::KeyRing;

fn run(cli: Cli) -> anyhow::Result<()> {
    let state = StateDir::resolve_and_open(cli.state.as_deref())?;
    let keys = KeyRing::new(cli.key_file.unwrap_or_else(|| state.keys_path()));
    match cli.command {
        Command::Rule(RuleCommand::Add(args)) => rules_cmd::add(&state, &keys, *args),
        Command::Rule(RuleCommand::List { json }) => rules_cmd::list(&state, json),
        Command::Rule(RuleCommand::Rm { id }) => rules_cmd::rm(&state, id),
        Command::Sync(args) => sync_cmd::sync(&state, args),
        Command::Restore(args) => restore_cmd::restore(&state, &keys, args),
        Command::Status { json } => status_cmd::status(&state, json),
        Command::Unblock { site } => status_cmd::unblock(&state, site),
        Command::Router(RouterCommand::Status { json }) => router_cmd::status(&state, &keys, json),
        Command::Router(RouterCommand::Unblock { path }) => router_cmd::unblock(&state, path),
        Command::Router(RouterCommand::Quarantine { json }) => router_cmd::quarantine(&state, json),
        Command::Key(c) => keys_cmd::source(&keys, c),
        Command::Router(RouterCommand::Key(c)) => keys_cmd::router(&keys, c),
        Command::Router(RouterCommand::Namespace { site, path }) => {
            keys_cmd::namespace(&keys, &site, &path)
        }
    }
}

/// A closed standard output (`mirror-ctl status | head -2`) ends mirror-ctl the way it ends
/// `ls` or `cat`: quietly, by SIGPIPE. Rust starts programs with SIGPIPE ignored, which turns
/// the closed pipe into an error that `println!` panics on.
fn default_sigpipe() {
    // SAFETY: sets a signal's disposition to the default, at start-up, before any other thread
    // exists; no handler is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    mirrorfs::state::private_umask();
    default_sigpipe();
    let cli = Cli::parse();
    mirrorfs::logging::init("mirror-ctl", "warn", None);
    mirrorfs::logging::exit_code("mirror-ctl", run(cli))
}
