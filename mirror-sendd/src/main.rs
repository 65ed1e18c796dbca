//! `mirror-sendd`: the send process (seeds/002 [0052]-[0058]). Tails the journal of a local
//! system and forwards each entry to every site its rule names, one link per site; records
//! what each site acknowledged (the SFA log) and removes journal segments every site passed.
//!
//! Modules: `table` (the send table, by rule CRC), `link` (one site's session), `copy`
//! (expansion of copy entries), `shared` (what the links share: table, SFA log).

mod copy;
mod link;
mod shared;
mod table;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use mirrorfs::rulesdb::RulesDb;
use mirrorfs::sfa::Sfa;
use mirrorfs::state::StateDir;

use crate::shared::Shared;

/// Forward the journal of a mirror local system to its backup sites.
#[derive(Debug, Parser)]
#[command(
    name = "mirror-sendd",
    version,
    after_help = "Runs in the foreground; stop it with Ctrl-C or SIGTERM.
It resumes where each site stopped acknowledging, so it may be killed and restarted at any time.

Example:
  mirror-sendd --state ~/.local/state/mirror"
)]
struct Cli {
    /// State directory of the local system [default: $MIRROR_STATE, else
    /// $XDG_STATE_HOME/mirror, else ~/.local/state/mirror]
    #[arg(long, value_name = "DIR", help_heading = "State options")]
    state: Option<PathBuf>,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let state = StateDir::resolve_and_open(cli.state.as_deref())?;
    mirrorfs::logging::init("mirror-sendd", "info", Some(&state.error_log()));
    let _lock = state.lock("mirror-sendd")?;
    let mut db = RulesDb::open(&state.rules_db())?;
    // Every start is a new configuration version (seeds/002 [0058]).
    let version = db.bump_version()?;
    let sfa = Sfa::load(&state.sfa_path())?;
    sfa.store(&state.sfa_path())?;
    let site_id = mirrorfs::state::site_id(&state)
        .with_context(|| format!("site id in {}", state.site_id_path().display()))?;
    let shared = Shared::new(
        site_id.clone(),
        state.journal_dir(),
        db,
        state.sfa_path(),
        sfa,
    )?;
    log::info!(
        "source site {site_id}: configuration version {version}, {} sites, journal {}",
        shared.table.load().sites().len(),
        state.journal_dir().display()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut links: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut last_clean = Instant::now();
    loop {
        // Start a link for every site the rules name (and restart one that stopped while
        // its site was briefly absent).
        for site in shared.table.load().sites() {
            if links.get(&site).is_some_and(|h| !h.is_finished()) {
                continue;
            }
            let (sh, st, s) = (shared.clone(), stop.clone(), site.clone());
            let h = std::thread::Builder::new()
                .name(format!("site {site}"))
                .spawn(move || link::run(sh, s, st))
                .context("cannot start a site link")?;
            links.insert(site, h);
        }
        std::thread::sleep(Duration::from_millis(100));
        shared.refresh();
        if last_clean.elapsed() >= Duration::from_secs(1) {
            last_clean = Instant::now();
            if let Some(p) = shared.oldest_needed() {
                if p.segment > 1 {
                    match mirrorfs::journal::remove_segments_below(&state.journal_dir(), p.segment)
                    {
                        Ok(0) => {}
                        Ok(n) => log::info!("removed {n} journal segments every site acknowledged"),
                        Err(e) => log::warn!("{e}"),
                    }
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("mirror-sendd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
