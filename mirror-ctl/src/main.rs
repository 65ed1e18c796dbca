//! `mirror-ctl`: the user's command for a mirror local system (rules, sync, unblock, status)
//! and, with `router`, for a backup host.

mod cli;
mod keys_cmd;
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
        Command::Status { json } => status_cmd::status(&state, json),
        Command::Unblock { site } => status_cmd::unblock(&state, site),
        Command::Router(RouterCommand::Status { json }) => router_cmd::status(&state, json),
        Command::Router(RouterCommand::Unblock { path }) => router_cmd::unblock(&state, path),
        Command::Router(RouterCommand::Quarantine { json }) => router_cmd::quarantine(&state, json),
        Command::Key(c) => keys_cmd::source(&keys, c),
        Command::Router(RouterCommand::Key(c)) => keys_cmd::router(&keys, c),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    mirrorfs::logging::init("mirror-ctl", "warn", None);
    mirrorfs::logging::exit_code("mirror-ctl", run(cli))
}
