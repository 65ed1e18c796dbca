//! `mirror-ctl`: the user's command for a mirror local system (rules, sync, restore, unblock,
//! status) and, with `router`, for a backup host.

mod bounded;
mod cli;
mod dial;
mod first_copy;
mod keys_cmd;
mod restore_cmd;
mod router_cmd;
mod rules_cmd;
mod site_cmd;
mod status_cmd;
mod sync_cmd;
mod validate;
mod verify_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, KeyCommand, RouterCommand, RouterKeyCommand, RuleCommand};
use mirrorfs::state::StateDir;
use mirrorfs::wire::auth::KeyRing;

/// What a command needs of the state directory.
enum Need {
    /// It configures: it makes the state directory when there is none (as `rule add` does).
    Create,
    /// It reads (or acts on) a local system: one must be there, and nothing is created.
    Source,
    /// The same on a backup host: the router's state must be there.
    Router,
    /// Only the key file named with `--key-file`.
    Nothing,
}

fn need(cli: &Cli) -> Need {
    let key_file = cli.key_file.is_some();
    match &cli.command {
        Command::Rule(RuleCommand::Add(_)) => Need::Create,
        Command::Key(_) | Command::Router(RouterCommand::Key(_)) if key_file => Need::Nothing,
        Command::Key(KeyCommand::Add { .. }) => Need::Create,
        Command::Router(RouterCommand::Key(RouterKeyCommand::Add { .. })) => Need::Create,
        Command::Router(_) => Need::Router,
        // Every other command reads or acts on an existing local system (`status`, `rule
        // list`, `rule rm`, `sync`, `unblock`, `key list`, `key rm`, and those to come):
        // only the commands above may make one.
        _ => Need::Source,
    }
}

/// The state directory `path` the command works on, created only by commands that configure.
fn state_dir(cli: &Cli, path: PathBuf) -> anyhow::Result<StateDir> {
    Ok(match need(cli) {
        Need::Create => StateDir::open(path)?,
        Need::Source => StateDir::existing(
            path,
            "local system",
            StateDir::SOURCE_MARKS,
            "`mirror-ctl rule add` or `mirror-ctl key add` makes one",
        )?,
        Need::Router => {
            let hint =
                "pass the router's --state (mirror-routerd and `mirror-ctl router key add` make one)";
            let st = StateDir::existing(path, "router state", StateDir::ROUTER_MARKS, hint)?;
            let has = |name: &str| st.root().join(name).exists();
            if !has("rt") && !has("router.db") && (has("rules.db") || has("journal")) {
                return Err(mirrorfs::state::StateError::Missing {
                    path: st.root().to_path_buf(),
                    what: "router state",
                    why: format!("it is a source's local system (it has rules); {hint}"),
                }
                .into());
            }
            st
        }
        Need::Nothing => StateDir::at(path),
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // A configuring command that fails leaves no new local system behind (a typo'd --state,
    // a key that is refused): the directory it made for itself goes again.
    let path = mirrorfs::state::resolve(cli.state.as_deref())?;
    let made = matches!(need(&cli), Need::Create) && !path.exists();
    let res = configure_or_read(cli, path.clone());
    if res.is_err() && made {
        if let Err(e) = std::fs::remove_dir_all(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!(
                    "cannot remove {} made by the failed command: {e}",
                    path.display()
                );
            }
        }
    }
    res
}

fn configure_or_read(cli: Cli, path: PathBuf) -> anyhow::Result<()> {
    let state = state_dir(&cli, path)?;
    let keys = KeyRing::new(cli.key_file.unwrap_or_else(|| state.keys_path()));
    match cli.command {
        Command::Rule(RuleCommand::Add(args)) => rules_cmd::add(&state, &keys, *args),
        Command::Rule(RuleCommand::List { json }) => rules_cmd::list(&state, json),
        Command::Rule(RuleCommand::Rm { id }) => rules_cmd::rm(&state, id),
        Command::Rule(RuleCommand::Set(args)) => rules_cmd::set(&state, args),
        Command::Sync(args) => sync_cmd::sync(&state, args),
        Command::Restore(args) => restore_cmd::restore(&state, &keys, args),
        // `main` runs it itself, for its own exit statuses ([`verify`]).
        Command::Verify(args) => match verify_cmd::verify(&state, &keys, args)? {
            verify_cmd::Outcome::Same => Ok(()),
            verify_cmd::Outcome::Differs => Err(anyhow::anyhow!("the backup differs")),
        },
        Command::Status { json } => status_cmd::status(&state, json),
        Command::Unblock { site } => status_cmd::unblock(&state, site),
        Command::Router(RouterCommand::Status { json }) => router_cmd::status(&state, &keys, json),
        Command::Router(RouterCommand::Unblock { path }) => router_cmd::unblock(&state, path),
        Command::Router(RouterCommand::Quarantine { json }) => router_cmd::quarantine(&state, json),
        Command::Key(c) => keys_cmd::source(&keys, c),
        Command::Site(c) => site_cmd::site(&state, c),
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

/// `verify`, with its exit statuses: 0 all the same (or in flight), 1 something differs, 2
/// the verify could not run.
fn verify(mut cli: Cli) -> ExitCode {
    let Command::Verify(args) =
        std::mem::replace(&mut cli.command, Command::Status { json: false })
    else {
        return ExitCode::from(2);
    };
    let res = (|| {
        let path = mirrorfs::state::resolve(cli.state.as_deref())?;
        let state = state_dir(&cli, path)?;
        let keys = KeyRing::new(cli.key_file.clone().unwrap_or_else(|| state.keys_path()));
        verify_cmd::verify(&state, &keys, args)
    })();
    match res {
        Ok(verify_cmd::Outcome::Same) => ExitCode::SUCCESS,
        Ok(verify_cmd::Outcome::Differs) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mirror-ctl: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    mirrorfs::state::private_umask();
    default_sigpipe();
    let cli = Cli::parse();
    mirrorfs::logging::init("mirror-ctl", "warn", None);
    if matches!(cli.command, Command::Verify(_)) {
        return verify(cli);
    }
    mirrorfs::logging::exit_code("mirror-ctl", run(cli))
}
