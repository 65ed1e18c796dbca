//! The bounded queue of a blocked site: while a site is blocked its entries wait in the
//! journal; once its backlog exceeds the queue limit, the site falls back to a durable dirty
//! set (which files changed, not their data), its acknowledged position moves to the end of
//! the journal so the segments can go, and on unblock each dirty file is sent whole (or
//! deleted on the backup, when it no longer exists).

use std::path::{Path, PathBuf};

use mirrorfs::blocked::{dirty_path, DirtySet};
use mirrorfs::entry::Command;
use mirrorfs::journal::{self, JournalReader, Position};

use crate::shared::{lock, Shared};

/// The queue limit: a fixed number of bytes, or a share of the size of the state directory's
/// file system; either way never more than the backlog can grow before the file system's
/// free space falls to the journal's reserve ([`mirrorfs::state::reserve_for`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueueLimit {
    /// Bytes.
    Bytes(u64),
    /// Percent of the file system's size.
    Percent(f64),
}

impl QueueLimit {
    /// Parses `25%` or a size such as `2G`.
    pub fn parse(s: &str) -> Result<QueueLimit, String> {
        match s.trim().strip_suffix('%') {
            Some(p) => match p.trim().parse::<f64>() {
                Ok(v) if v > 0.0 && v <= 100.0 => Ok(QueueLimit::Percent(v)),
                _ => Err(format!("{s:?}: a share must be between 0% and 100%")),
            },
            None => mirrorfs::units::parse_size(s).map(QueueLimit::Bytes),
        }
    }

    /// The limit in bytes now, for a journal in `dir` holding `backlog` bytes for the site:
    /// the smaller of the configured limit and the backlog plus what is free beyond the
    /// reserve (so a full disk turns the backlog into a dirty set at once).
    pub fn bytes(self, dir: &Path, backlog: u64) -> u64 {
        let Ok((total, free)) = mirrorfs::state::space(dir) else {
            return match self {
                QueueLimit::Bytes(b) => b,
                QueueLimit::Percent(_) => u64::MAX,
            };
        };
        let configured = match self {
            QueueLimit::Bytes(b) => b,
            QueueLimit::Percent(p) => (total as f64 * p / 100.0) as u64,
        };
        let room = backlog + free.saturating_sub(mirrorfs::state::reserve_for(total));
        configured.min(room)
    }
}

/// Damaged stretches skipped in one pass, at most.
const MAX_SKIPS: usize = 1000;

/// The dirty set file of `site`.
pub fn path(shared: &Shared, site: &str) -> PathBuf {
    dirty_path(&shared.state_dir, site)
}

/// For every blocked site: once its backlog is over the limit, moves its entries into its
/// dirty set and its acknowledged position to the end of the journal.
pub fn track(shared: &Shared, limit: QueueLimit) {
    for b in shared.sites.all_blocked() {
        if let Err(e) = track_site(shared, &b.site, b.dirty, limit) {
            log::error!("site {}: cannot track the changed files: {e}", b.site);
        }
    }
}

fn track_site(shared: &Shared, site: &str, dirty: bool, limit: QueueLimit) -> Result<(), String> {
    let _g = lock(&shared.dirty_lock);
    // A session already up (the site was blocked while it ran, by a heartbeat silence) owns the
    // position and the dirty set until it ends.
    if !shared.sites.is_blocked(site) || shared.sites.is_connected(site) {
        return Ok(());
    }
    let acked = shared.acked(site);
    let backlog = journal::bytes_from(&shared.journal_dir, acked).map_err(|e| e.to_string())?;
    if !dirty {
        let max = limit.bytes(&shared.journal_dir, backlog);
        if backlog <= max {
            return Ok(());
        }
        log::warn!(
            "site {site}: its backlog of {backlog} bytes exceeds the queue limit of {max} bytes; tracking which files change instead (they are sent whole when the site is back)"
        );
    } else if backlog == 0 {
        return Ok(());
    }
    let p = path(shared, site);
    let mut set = DirtySet::load(&p)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let from = set.upto.max(acked);
    let mut reader = match JournalReader::open(&shared.journal_dir, from) {
        Err(journal::JournalError::Gap { oldest, .. }) => JournalReader::open(
            &shared.journal_dir,
            Position::new(oldest, journal::format::SEGMENT_HEADER_LEN),
        ),
        r => r,
    }
    .map_err(|e| e.to_string())?;
    let table = shared.table.load_full();
    let mut added = 0usize;
    let mut skips = 0;
    loop {
        let e = match reader.next_entry() {
            Ok(Some((_, e))) => e,
            Ok(None) => break,
            // The site is blocked and its backlog goes whole anyway: a damaged record is
            // skipped at once, the files it may have changed sent whole too (`resync`).
            Err(err @ journal::JournalError::Corrupt { .. }) if skips < MAX_SKIPS => {
                skips += 1;
                let skipped = reader.skip_damage().map_err(|e| e.to_string())?;
                let names = crate::resync::names_for(&table, site, &skipped);
                crate::resync::add_locked(shared, site, &names)?;
                log::error!(
                    "site {site}: skipped the damaged journal bytes from {} to {} ({err}); the files of its rules are sent whole when it is back",
                    skipped.from,
                    skipped.to
                );
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        if table.sends_to(e.rule_crc, site).is_none() {
            continue;
        }
        if matches!(e.command, Command::Rename | Command::Link) {
            added += usize::from(set.names.insert((e.rule_crc, e.aux.clone())));
        }
        added += usize::from(set.names.insert((e.rule_crc, e.name)));
    }
    set.upto = reader.position();
    set.store(&p).map_err(|e| e.to_string())?;
    shared.set_acked(site, set.upto, true);
    shared.sites.set_dirty(site);
    log::debug!(
        "site {site}: {added} more changed files tracked ({} in all), up to {}",
        set.names.len(),
        set.upto
    );
    Ok(())
}
