//! `mirror-ctl status [--json]` and `mirror-ctl unblock [SITE]`: the state of each backup
//! site as the running mirror-sendd sees it (or, when it is not running, as its durable files
//! say), with the queue counted from the journal.
//!
//! Status must work when things are worst: a damaged journal record is passed over (and
//! named) and the count goes on after it; a file that cannot be read is reported on its row,
//! never as a failure of the whole command.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mirrorfs::blocked::{self, DirtySet};
use mirrorfs::control::{self, SenderRequest, SenderResponse, SiteState};
use mirrorfs::journal::{JournalError, JournalReader, Position};
use mirrorfs::rulesdb::RulesDb;
use mirrorfs::sfa::Sfa;
use mirrorfs::state::StateDir;
use serde::Serialize;

use crate::sync_cmd::human;

/// One row of the status.
#[derive(Debug, Serialize)]
struct Row {
    #[serde(flatten)]
    state: SiteState,
    /// Entries waiting for this site.
    queued_entries: u64,
    /// Their data bytes.
    queued_bytes: u64,
    /// Age in seconds of the oldest of them.
    oldest_age_secs: Option<u64>,
    /// Files to send whole (the backlog went over the queue limit while blocked).
    dirty_files: usize,
    /// Files (or rule bases) to send whole because journal damage hid their entries.
    resync_files: usize,
    /// Damaged journal records met while counting (their entries are not counted).
    journal_damage: Vec<String>,
    /// What could not be read for this row.
    problems: Vec<String>,
    /// Whether mirror-sendd answered (else the row comes from its files).
    sender_running: bool,
    /// The rules' first copies this site has not acknowledged yet.
    initial_copies: Vec<crate::first_copy::Left>,
    /// The running mirrorfs of this local system, if one runs (the same in every row).
    mount: Option<mirrorfs::keeper::MountStatus>,
    /// The sync rules naming this site, as the mount sees them (none while not mounted).
    sync: Vec<mirrorfs::syncwait::SyncStatus>,
}

/// How long `status` waits for a daemon's answer before it shows what the files say.
const STATUS_WAIT: Duration = Duration::from_secs(5);

/// Asks mirror-sendd; `Ok(None)` when it does not run, an error when it runs and does not
/// answer in time (stopped, or stuck).
fn ask(state: &StateDir, req: &SenderRequest) -> Result<Option<SenderResponse>, String> {
    match control::request_within(&state.socket_path("mirror-sendd"), req, STATUS_WAIT) {
        Ok(a) => Ok(Some(a)),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(e.to_string()),
        Err(_) => Ok(None),
    }
}

/// The running mirrorfs's status: asked of it (current even when its state disk is full),
/// else read from the file it keeps.
fn mount_status(state: &StateDir) -> Option<mirrorfs::keeper::MountStatus> {
    let sock = state.socket_path("mirrorfs");
    match control::request_within(&sock, &control::Request::Status, STATUS_WAIT) {
        Ok(control::Response::Mount { status }) => Some(status),
        _ => mirrorfs::keeper::MountStatus::load(state.root()),
    }
}

/// The sites' states from the durable files (mirror-sendd is not running).
fn from_files(state: &StateDir) -> Result<Vec<SiteState>> {
    let rules = rules_of(state)?;
    let sfa = Sfa::load(&state.sfa_path())?;
    let mut blocked = blocked::load_sites(&state.blocked_path())?;
    let mut sites: Vec<String> = rules
        .iter()
        .flat_map(|r| r.spec.sites.iter().map(|s| s.to_string()))
        .collect();
    sites.sort();
    sites.dedup();
    Ok(sites
        .into_iter()
        .map(|site| SiteState {
            acked: sfa.get(&site),
            blocked: blocked.remove(&site),
            site,
            ..SiteState::default()
        })
        .collect())
}

/// The rules, read only: a local system without a rules database has none (none is made).
fn rules_of(state: &StateDir) -> Result<Vec<mirrorfs::rule::Rule>> {
    Ok(match RulesDb::open_existing(&state.rules_db())? {
        Some(db) => db.snapshot()?.1,
        None => Vec::new(),
    })
}

/// What waits for a site in the journal, as far as it can be read.
#[derive(Debug, Default)]
struct Queue {
    entries: u64,
    bytes: u64,
    oldest_age_secs: Option<u64>,
    damage: Vec<String>,
    error: Option<String>,
}

/// Damaged stretches passed over while counting one site's queue, at most.
const MAX_DAMAGE: usize = 100;

/// Entries, bytes and the oldest time of what waits for `site` after `from`; damaged records
/// are passed over and named.
fn queue(
    state: &StateDir,
    site: &str,
    from: Position,
    rules: &BTreeMap<u32, Vec<String>>,
) -> Queue {
    let dir = state.journal_dir();
    let mut q = Queue::default();
    let opened = match JournalReader::open(&dir, from) {
        Err(JournalError::Gap { oldest, .. }) => JournalReader::open(
            &dir,
            Position::new(oldest, mirrorfs::journal::format::SEGMENT_HEADER_LEN),
        ),
        r => r,
    };
    let mut r = match opened {
        Ok(r) => r,
        Err(e) if !dir.exists() => {
            log::debug!("{e}");
            return q;
        }
        Err(e) => {
            q.error = Some(e.to_string());
            return q;
        }
    };
    let mut oldest = None;
    loop {
        match r.next_entry() {
            Ok(Some((_, e))) => {
                if rules
                    .get(&e.rule_crc)
                    .is_some_and(|s| s.iter().any(|x| x == site))
                {
                    q.entries += 1;
                    q.bytes += e.data.len() as u64;
                    oldest.get_or_insert(e.time_ns);
                }
            }
            Ok(None) => break,
            Err(JournalError::Corrupt {
                path,
                offset,
                reason,
                ..
            }) if q.damage.len() < MAX_DAMAGE => {
                let file = path
                    .file_name()
                    .map_or(path.clone().into(), |n| n.to_owned());
                let what = format!("{} at offset {offset}: {reason}", file.to_string_lossy());
                match r.skip_damage() {
                    Ok(s) => q.damage.push(format!("{what}; not counted up to {}", s.to)),
                    Err(e) => {
                        q.damage
                            .push(format!("{what}; nothing counted after it ({e})"));
                        break;
                    }
                }
            }
            Err(e) => {
                q.error = Some(e.to_string());
                break;
            }
        }
    }
    q.oldest_age_secs = oldest.map(|t| mirrorfs::now_ns().saturating_sub(t) / 1_000_000_000);
    q
}

/// The number of names in a dirty-set-format file, or the problem reading it.
fn count_names(path: &std::path::Path, problems: &mut Vec<String>) -> usize {
    match DirtySet::load(path) {
        Ok(d) => d.map_or(0, |d| d.names.len()),
        Err(e) => {
            problems.push(e.to_string());
            0
        }
    }
}

/// `mirror-ctl status`.
pub fn status(state: &StateDir, json: bool) -> Result<()> {
    let mut silent = None;
    let (states, running) = match ask(state, &SenderRequest::Status) {
        Ok(Some(SenderResponse::Status { sites })) => (sites, true),
        Ok(Some(SenderResponse::Error { reason })) => bail!("mirror-sendd: {reason}"),
        Ok(Some(other)) => bail!("mirror-sendd answered {other:?}"),
        Ok(None) => (from_files(state)?, false),
        Err(why) => {
            silent = Some(format!(
                "mirror-sendd runs but does not answer: {why}; shown from its files"
            ));
            (from_files(state)?, false)
        }
    };
    let db = RulesDb::open_existing(&state.rules_db())?;
    let rules = match &db {
        Some(db) => db.snapshot()?.1,
        None => Vec::new(),
    };
    let mut counted = BTreeMap::new();
    let by_crc: BTreeMap<u32, Vec<String>> = rules
        .iter()
        .map(|r| (r.crc, r.spec.sites.iter().map(|s| s.to_string()).collect()))
        .collect();
    let mount = mount_status(state);
    let mut rows = Vec::new();
    for s in states {
        let q = queue(state, &s.site, s.acked, &by_crc);
        let mut problems: Vec<String> = q
            .error
            .map(|e| format!("counting the queue: {e}"))
            .into_iter()
            .chain(silent.clone())
            .collect();
        let dirty = blocked::dirty_path(state.root(), &s.site);
        let dirty_files = count_names(&dirty, &mut problems);
        let resync = state
            .root()
            .join("resync")
            .join(dirty.file_name().unwrap_or_default());
        let resync_files = count_names(&resync, &mut problems);
        let sent = s.copy.map(|c| (c.pos, c.files, c.bytes));
        let left = db
            .as_ref()
            .map(|db| crate::first_copy::left(db, &rules, &s.site, s.acked, sent, &mut counted));
        let initial_copies = match left {
            None => Vec::new(),
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                problems.push(format!("the rules' first copies: {e}"));
                Vec::new()
            }
        };
        let sync = mount
            .iter()
            .flat_map(|m| m.sync.iter())
            .filter(|x| x.site == s.site)
            .cloned()
            .collect();
        rows.push(Row {
            sync,
            state: s,
            queued_entries: q.entries,
            queued_bytes: q.bytes,
            oldest_age_secs: q.oldest_age_secs,
            dirty_files,
            resync_files,
            journal_damage: q.damage,
            problems,
            sender_running: running,
            initial_copies,
            mount: mount.clone(),
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    match &mount {
        None => println!("mirrorfs is not mounted"),
        Some(m) => {
            println!("mirrorfs: mounted on {} (pid {})", m.mountpoint, m.pid);
            if let Some(t) = &m.journal_trouble {
                println!(
                    "  JOURNAL FULL since {}: {}; changes to files the rules select are refused (ENOSPC)",
                    mirrorfs::logging::utc_secs(t.since),
                    t.reason
                );
            }
            if m.unjournaled > 0 {
                println!(
                    "  {} files changed while the journal could not take them: sent whole once it can",
                    m.unjournaled
                );
            }
            if let Some(s) = &m.scan {
                let what = match (&s.error, s.done) {
                    (Some(e), _) => format!("stopped: {e}"),
                    (None, true) => "done".to_string(),
                    (None, false) => "in progress".to_string(),
                };
                println!(
                    "  reconciling {} (changed since {}): {what}; {} directories, {} files looked at, {} entries queued",
                    s.reason,
                    mirrorfs::logging::utc_secs(s.since_ns / 1_000_000_000),
                    s.dirs,
                    s.files,
                    s.queued
                );
            }
        }
    }
    if !running {
        match &silent {
            None => println!("mirror-sendd is not running (from its files)"),
            // Otherwise each site's row says it.
            Some(why) if rows.is_empty() => println!("{why}"),
            Some(_) => {}
        }
    }
    if rows.is_empty() {
        println!("no sites: add a rule with `mirror-ctl rule add`");
    }
    for r in &rows {
        let s = &r.state;
        let state_text = match &s.blocked {
            Some(b) => format!(
                "BLOCKED for {} ({}){}",
                age(blocked::now_secs().saturating_sub(b.since)),
                b.reason,
                if b.dirty {
                    ", tracking changed files"
                } else {
                    ""
                }
            ),
            None if s.connected && s.spool.is_some() => {
                "ok, spool site (written into its outbox)".into()
            }
            None if s.connected => "ok, connected".into(),
            None if running => "not connected".into(),
            None => "-".into(),
        };
        println!("{}: {state_text}", s.site);
        println!(
            "  queued: {} entries, {}{}{}",
            r.queued_entries,
            human(r.queued_bytes),
            r.oldest_age_secs
                .map_or(String::new(), |a| format!(", oldest {} old", age(a))),
            if r.journal_damage.is_empty() && r.problems.is_empty() {
                ""
            } else {
                " (as far as the journal can be read)"
            }
        );
        for c in &r.initial_copies {
            println!(
                "  initial copy: {}{} files, {} left (rule {}, {}){}",
                if c.at_least { "at least " } else { "" },
                c.files,
                human(c.bytes),
                c.rule_id,
                c.pattern,
                match (c.queued, c.files) {
                    (None, _) => "; not queued yet (the mount queues it when it loads the rule)",
                    (Some(_), 0) if c.sent_files > 0 => "; sent, waiting for the acknowledgement",
                    _ => "",
                }
            );
        }
        if s.sent_bytes > 0 || s.referenced_bytes > 0 {
            println!(
                "  sent since mirror-sendd started: {} of data, {} as references to what the backup holds",
                human(s.sent_bytes),
                human(s.referenced_bytes)
            );
        }
        if let Some(x) = &s.router {
            println!(
                "  router: {} of router logs retained for references; {} references resolved, {} not sent again (since it started)",
                human(x.retained_bytes),
                x.refs_resolved,
                human(x.bytes_saved)
            );
        }
        for x in &r.sync {
            println!("  sync rule {} ({}): {}", x.rule, x.pattern, sync_text(x));
        }
        if mount.is_none() {
            for rule in rules.iter().filter(|x| {
                x.spec.mode == mirrorfs::rule::Mode::Sync
                    && x.spec.sites.iter().any(|y| y.to_string() == s.site)
            }) {
                println!(
                    "  sync rule {} ({}): not mounted, nothing waits",
                    rule.id, rule.spec.pattern
                );
            }
        }
        for d in &r.journal_damage {
            println!("  journal damaged: {d}");
        }
        if r.dirty_files > 0 {
            println!("  files to send whole: {}", r.dirty_files);
        }
        if r.resync_files > 0 {
            println!(
                "  files or rules to send whole after journal damage: {}",
                r.resync_files
            );
        }
        for p in &r.problems {
            println!("  cannot tell: {p}");
        }
        if let Some(n) = &s.spool {
            println!("  {n}");
        }
        if running && s.spool.is_none() {
            println!(
                "  heartbeats: {}",
                if s.heartbeat {
                    "arriving"
                } else {
                    "not arriving"
                }
            );
        }
        if let Some(e) = &s.last_error {
            let now = blocked::now_secs();
            let when = s.last_error_at.map_or(String::new(), |t| {
                format!(
                    " at {} ({} ago)",
                    mirrorfs::logging::utc_secs(t),
                    age(now.saturating_sub(t))
                )
            });
            match s.recovered_at {
                Some(r) => println!(
                    "  last error, past{when}: {e}; recovered at {} (connected again)",
                    mirrorfs::logging::utc_secs(r)
                ),
                None => println!("  last error{when}: {e}"),
            }
        }
    }
    Ok(())
}

/// `in sync`, `DEGRADED since … (why)`, `OUT OF SYNC since … (why); catching up: 3 MiB left`.
fn sync_text(x: &mirrorfs::syncwait::SyncStatus) -> String {
    let mut out = match (&x.since, &x.why) {
        (Some(since), why) => format!(
            "{} since {} ({} ago){}",
            x.state.to_uppercase(),
            mirrorfs::logging::utc_secs(*since),
            age(blocked::now_secs().saturating_sub(*since)),
            why.as_ref().map_or(String::new(), |w| format!(": {w}"))
        ),
        (None, _) => x.state.clone(),
    };
    if x.state == "out of sync" {
        out.push_str("; fsync and namespace changes of its files fail with EIO");
    }
    if let Some(left) = x.catching_up {
        out.push_str(&format!("; catching up: {} to acknowledge", human(left)));
    }
    out.push_str(&format!(" [{}, on loss {}]", x.sync_point, x.on_sync_loss));
    out
}

fn age(secs: u64) -> String {
    let d = Duration::from_secs(secs);
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}s", d.as_secs()),
    }
}

/// Sends `req` to the running daemon `who` of `state`, naming its socket if it does not answer.
pub fn ask_daemon<Q: Serialize, A: serde::de::DeserializeOwned>(
    state: &StateDir,
    who: &str,
    req: &Q,
) -> Result<A> {
    let sock = state.socket_path(who);
    control::request(&sock, req).with_context(|| {
        format!(
            "{who} does not answer on {} (is it running with this --state?)",
            sock.display()
        )
    })
}

/// `mirror-ctl unblock [SITE]`.
pub fn unblock(state: &StateDir, site: Option<String>) -> Result<()> {
    let req = SenderRequest::Unblock { site };
    match ask_daemon(state, "mirror-sendd", &req)? {
        SenderResponse::Unblocking { sites } => {
            for s in sites {
                println!("trying {s} again");
            }
            Ok(())
        }
        SenderResponse::Error { reason } => bail!("{reason}"),
        other => bail!("mirror-sendd answered {other:?}"),
    }
}
