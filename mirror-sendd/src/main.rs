//! `mirror-sendd`: the send process (seeds/002 [0052]-[0058]). Tails the journal of a local
//! system and forwards each entry to every site its rule names, one link per site; records
//! what each site acknowledged (the SFA log) and removes journal segments every site passed.
//!
//! Modules: `table` (the send table, by rule CRC), `link` (one site's stream, blocking and
//! unblocking), `transport` (how a stream travels: one authenticated connection), `copy`
//! (expansion of copy entries), `shared` (what the links share: table, SFA log), `sites` (blocked sites, heartbeat monitors, errors), `heartbeat` (UDP beats with
//! a site), `dirty` (the bounded queue of a blocked site), `resync` (files to send whole after
//! a damaged journal record was skipped), `delta` (a file's copy by differences: block
//! checksums compared with the backup, references instead of data), and the index of what each site
//! holds, `mirrorfs::shipped`.

mod copy;
mod delta;
mod dirty;
mod heartbeat;
mod link;
mod resync;
mod shared;
mod sites;
mod table;
mod transport;

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

use crate::dirty::QueueLimit;
use crate::shared::Shared;
use crate::sites::{Policy, Sites};

const OUTAGES: &str = "Outage options";

/// Forward the journal of a mirror local system to its backup sites.
#[derive(Debug, Parser)]
#[command(
    name = "mirror-sendd",
    version,
    after_help = "Runs in the foreground; stop it with Ctrl-C or SIGTERM.
It resumes where each site stopped acknowledging, so it may be killed and restarted at any time.

A site that cannot be reached (or whose heartbeats stop) is blocked: changes wait in the journal
and `mirror-ctl status` says so. It is tried again when its heartbeats have been steady for the
probation, every --unblock-every, and on `mirror-ctl unblock`. Heartbeats are UDP datagrams to
and from the router's port number (the same number as its TCP port).

A journal record that cannot be read blocks its sites too (status names segment and offset);
it is read again after a growing pause, and skipped after --skip-damage-after (or at once on
`mirror-ctl unblock SITE`), the files of the site's rules then being sent whole.

Example:
  mirror-sendd --state ~/.local/state/mirror --on-block 'notify-send \"mirror: $MIRROR_SITE is down\"'"
)]
struct Cli {
    /// State directory of the local system [default: $MIRROR_STATE, else
    /// $XDG_STATE_HOME/mirror, else ~/.local/state/mirror]
    #[arg(long, value_name = "DIR", help_heading = "State options")]
    state: Option<PathBuf>,
    /// Keys of the routers, lines `HOST:PORT KEY` (or `* KEY` for every site); read again
    /// when it changes [default: <state>/keys]. `mirror-ctl key add` writes it.
    #[arg(long, value_name = "FILE", help_heading = "State options")]
    key_file: Option<PathBuf>,
    /// Interval between heartbeats (e.g. 1s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "1s", help_heading = OUTAGES,
          value_parser = mirrorfs::units::parse_duration)]
    heartbeat_interval: Duration,
    /// Heartbeats silent for longer than this block the site.
    #[arg(long, value_name = "DURATION", default_value = "3s", help_heading = OUTAGES,
          value_parser = mirrorfs::units::parse_duration)]
    heartbeat_timeout: Duration,
    /// A blocked site is tried again once its heartbeats were steady this long.
    #[arg(long, value_name = "DURATION", default_value = "5s", help_heading = OUTAGES,
          value_parser = mirrorfs::units::parse_duration)]
    probation: Duration,
    /// A blocked site is tried again this often whatever its heartbeats say.
    #[arg(long, value_name = "DURATION", default_value = "5m", help_heading = OUTAGES,
          value_parser = mirrorfs::units::parse_duration)]
    unblock_every: Duration,
    /// Backlog a blocked site may hold in the journal (a size such as 2G, or a share of the
    /// state file system's size such as 25%), and never more than fits before the disk's free
    /// space falls to the journal's reserve; past it, only which files changed is kept, and
    /// those files are sent whole when the site is back.
    #[arg(long, value_name = "SIZE|PCT%", default_value = "25%", help_heading = OUTAGES,
          value_parser = QueueLimit::parse)]
    queue_limit: QueueLimit,
    /// Shell command run when a site is blocked (MIRROR_SITE and MIRROR_REASON are set).
    #[arg(long, value_name = "CMD", help_heading = OUTAGES)]
    on_block: Option<String>,
    /// A damaged journal record blocks its sites and is read again with a growing pause; once
    /// it has been damaged this long (or at once on `mirror-ctl unblock SITE`), it is skipped
    /// and the files of the site's rules are sent whole.
    #[arg(long, value_name = "DURATION", default_value = "30s", help_heading = OUTAGES,
          value_parser = mirrorfs::units::parse_duration)]
    skip_damage_after: Duration,
    /// Connections to each site, its stream striped across them, for sites without a
    /// setting of their own (`mirror-ctl site set SITE --connections N`, followed while
    /// running). More than one helps on a link with a long round trip.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=mirrorfs::wire::msg::MAX_CONNECTIONS as i64))]
    connections: u32,
    /// A spool site's file (`--site spool:/OUTBOX`) is sealed once it holds this much.
    #[arg(long, value_name = "SIZE", default_value = "64M", help_heading = SPOOL,
          value_parser = parse_spool_size)]
    spool_size: u64,
    /// A spool site's file is sealed once its oldest entry is this old, so that a quiet
    /// system still ships its last change.
    #[arg(long, value_name = "DURATION", default_value = "60s", help_heading = SPOOL,
          value_parser = |s: &str| at_least(s, Duration::from_millis(10)))]
    spool_age: Duration,
    /// A spool file still unacknowledged this long after it was put into the outbox, and
    /// gone from there (moved by a transfer tool and lost on the way), is written again, byte
    /// for byte the same (also on `mirror-ctl unblock`).
    #[arg(long, value_name = "DURATION", default_value = "1h", help_heading = SPOOL,
          value_parser = |s: &str| at_least(s, Duration::from_secs(1)))]
    spool_resend_after: Duration,
}

const SPOOL: &str = "Spool sites";

/// A duration of at least `min`.
fn at_least(s: &str, min: Duration) -> Result<Duration, String> {
    let d = mirrorfs::units::parse_duration(s)?;
    if d < min {
        return Err(format!("{s}: at least {min:?}"));
    }
    Ok(d)
}

/// A spool file size: 64K to 1G.
fn parse_spool_size(s: &str) -> Result<u64, String> {
    let n = mirrorfs::units::parse_size(s)?;
    if !(64 << 10..=1 << 30).contains(&n) {
        return Err(format!("{s}: a spool file size is from 64K to 1G"));
    }
    Ok(n)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let fresh = StateDir::at(mirrorfs::state::resolve(cli.state.as_deref())?).is_fresh();
    let state = StateDir::resolve_and_open(cli.state.as_deref())?;
    mirrorfs::logging::init("mirror-sendd", "info", Some(&state.error_log()));
    if fresh {
        log::warn!("{}", state.fresh_warning("mirror-sendd"));
    }
    let _lock = state.lock("mirror-sendd")?;
    let mut db = RulesDb::open(&state.rules_db())?;
    // Every start is a new configuration version (seeds/002 [0058]).
    let version = db.bump_version()?;
    let sfa = Sfa::load(&state.sfa_path())?;
    sfa.store(&state.sfa_path())?;
    let site_id = mirrorfs::state::site_id(&state)
        .with_context(|| format!("site id in {}", state.site_id_path().display()))?;
    let sites = Sites::load(
        state.blocked_path(),
        Policy {
            timing: mirrorfs::wire::heartbeat::Timing {
                interval: cli.heartbeat_interval,
                threshold: cli.heartbeat_timeout,
                probation: cli.probation,
            },
            unblock_every: cli.unblock_every,
            on_block: cli.on_block.clone(),
            skip_damage_after: cli.skip_damage_after,
            connections: cli.connections as usize,
            spool: transport::spool::SpoolPolicy {
                size: cli.spool_size,
                age: cli.spool_age,
                resend_after: cli.spool_resend_after,
                queue_limit: cli.queue_limit,
            },
        },
    )?;
    let keys =
        mirrorfs::wire::auth::KeyRing::new(cli.key_file.unwrap_or_else(|| state.keys_path()));
    keys.load()
        .with_context(|| format!("cannot read the key file {}", keys.path().display()))?;
    copy::ask_mount_at(&state);
    let shared = Shared::new(site_id.clone(), &state, db, sfa, sites, keys)?;
    serve_control(&state, &shared)?;
    log::info!(
        "source site {site_id}: configuration version {version}, {} sites, journal {}",
        shared.table.load().sites().len(),
        state.journal_dir().display()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut links: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut last_clean = Instant::now();
    // The segment below which acknowledged ones were last removed (looked at again every
    // second in any case).
    let mut removed_below = 0;
    // Blocked sites no rule names, and since when (see `retire_sites`).
    let mut absent: HashMap<String, Instant> = HashMap::new();
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
        retire_sites(&shared, &links, &mut absent);
        if last_clean.elapsed() >= Duration::from_secs(1) {
            last_clean = Instant::now();
            dirty::track(&shared, cli.queue_limit);
            removed_below = 0;
        }
        // Segments every site acknowledged go at once: on a small disk mirrorfs waits for
        // their room.
        if let Some(p) = shared.oldest_needed() {
            if p.segment > 1 && p.segment != removed_below {
                match mirrorfs::journal::remove_segments_below(&state.journal_dir(), p.segment) {
                    Ok(0) => {}
                    Ok(n) => log::info!("removed {n} journal segments every site acknowledged"),
                    Err(e) => log::warn!("{e}"),
                }
                removed_below = p.segment;
            }
        }
    }
}

/// How long a blocked site must be named by no rule before it is retired: a rule removed and
/// added again at once (a `rule rm` then a `rule add`) keeps the site's dirty set.
const RETIRE_AFTER: Duration = Duration::from_secs(5);

/// Retires the blocked sites that no rule has named for [`RETIRE_AFTER`] and whose link has
/// ended: they are no longer blocked (status stops showing them, nothing waits for an unblock
/// that could not happen), and their dirty and resync sets go (the files they list belong to
/// rules that no longer exist; a rule added later for the site starts with its first copy).
fn retire_sites(
    shared: &Shared,
    links: &HashMap<String, JoinHandle<()>>,
    absent: &mut HashMap<String, Instant>,
) {
    let table = shared.table.load();
    let blocked: Vec<String> = shared
        .sites
        .all_blocked()
        .into_iter()
        .map(|b| b.site)
        .filter(|s| !table.has_site(s))
        .collect();
    absent.retain(|s, _| blocked.contains(s));
    'sites: for site in blocked {
        let since = *absent.entry(site.clone()).or_insert_with(Instant::now);
        let link_ended = links.get(&site).is_none_or(|h| h.is_finished());
        if since.elapsed() < RETIRE_AFTER || !link_ended {
            continue;
        }
        for p in [dirty::path(shared, &site), resync::path(shared, &site)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // Kept blocked: tried again at the next pass.
                Err(e) => {
                    log::warn!("site {site}: cannot remove {}: {e}", p.display());
                    continue 'sites;
                }
            }
        }
        if shared.sites.retire(&site) {
            log::info!("site {site}: no rule names it any more; it is no longer blocked");
        }
        absent.remove(&site);
    }
}

/// Answers `mirror-ctl status` and `mirror-ctl unblock` on `<state>/mirror-sendd.sock`.
fn serve_control(state: &StateDir, shared: &Arc<Shared>) -> anyhow::Result<()> {
    use mirrorfs::control::{self, SenderRequest, SenderResponse};
    let sh = shared.clone();
    let handler: control::Handler<SenderRequest, SenderResponse> = Arc::new(move |req| match req {
        SenderRequest::Status => {
            let mut names = sh.table.load().sites();
            for b in sh.sites.all_blocked() {
                if !names.contains(&b.site) {
                    names.push(b.site);
                }
            }
            SenderResponse::Status {
                sites: names
                    .iter()
                    .map(|s| sh.sites.state(s, sh.acked(s)))
                    .collect(),
            }
        }
        SenderRequest::SyncLost { site, reason } => {
            if reason.len() > 4096 || site.len() > 1024 {
                return SenderResponse::Error {
                    reason: "sync-lost report too long".into(),
                };
            }
            sh.sites.sync_lost(&site, &reason);
            SenderResponse::Unblocking { sites: Vec::new() }
        }
        SenderRequest::Acks { after, wait_ms } => {
            let (generation, sites) = sh.acks_after(after, Duration::from_millis(wait_ms));
            SenderResponse::Acks { generation, sites }
        }
        SenderRequest::Seal { site, upto } => {
            let sites = spool_sites(&sh, site.as_deref());
            let mut b = shared::lock(&sh.spool_barriers);
            for s in &sites {
                b.insert(s.clone(), (upto, Instant::now()));
            }
            SenderResponse::Unblocking { sites }
        }
        SenderRequest::Unblock { site } => {
            // A spool site puts back the files lost on the way.
            let spools = spool_sites(&sh, site.as_deref());
            for s in &spools {
                sh.sites.request_resend(s);
            }
            let mut sites = sh.sites.request_unblock(site.as_deref());
            sites.extend(
                spools
                    .into_iter()
                    .filter(|s| !sites.contains(s))
                    .collect::<Vec<_>>(),
            );
            if sites.is_empty() {
                SenderResponse::Error {
                    reason: match site {
                        Some(s) => format!("site {s} is not blocked"),
                        None => "no site is blocked".into(),
                    },
                }
            } else {
                log::info!("unblock asked for {}", sites.join(", "));
                SenderResponse::Unblocking { sites }
            }
        }
    });
    let path = state.socket_path("mirror-sendd");
    control::serve(&path, handler)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    Ok(())
}

/// The spool sites of the rules (all, or `site` if it is one).
fn spool_sites(sh: &Shared, site: Option<&str>) -> Vec<String> {
    sh.table
        .load()
        .sites()
        .into_iter()
        .filter(|s| mirrorfs::rule::is_spool_site(s) && site.is_none_or(|x| x == s))
        .collect()
}

fn main() -> ExitCode {
    mirrorfs::state::private_umask();
    let cli = Cli::parse();
    mirrorfs::logging::exit_code("mirror-sendd", run(cli))
}
