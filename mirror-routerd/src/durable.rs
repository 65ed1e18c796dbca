//! The backup's durable point: how far what the router process applied is durable in the
//! backup files, kept in `<router state>/applied`.
//!
//! The router process marks an entry complete in RT1 right after applying it, so that a crash
//! re-applies at most that one entry. But a mark written in place can reach the disk before
//! the backup file the entry changed does (the next batch's `fdatasync` of RT1 carries it, and
//! so may writeback), and the backup files are made durable only from time to time: after a
//! power loss of the backup host, RT1 could say "applied" of changes the backup no longer
//! holds, and nothing would ever apply them again.
//!
//! So the router process, after making the backup durable (an fsync of every file and
//! directory it touched: when it has caught up, at least [`MIN_GAP`] apart, and at least every
//! [`MAX_GAP`] while it is busy), records here the position before which every entry marked
//! complete is durable in the backup: `PAIR OFFSET` (an RT1 offset), replaced atomically. At
//! start, every entry at or after that position may be lost from the backup, or half there
//! (on a real disk, in any combination): the router asks its source for a fresh copy of each
//! name those entries touch ([`crate::resync`]). The copies land after everything already in
//! the router logs, so the backup ends up equal to the source whatever survived. After a
//! clean stop, or a crash at a quiet moment, nothing lies past the point and nothing is asked.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mirrorfs::entry::Command;
use mirrorfs::wire::Part;

use crate::config::RouterTable;
use crate::resync::CopyRequest;
use crate::rtlog::RtRecord;

/// Checkpoints are at least this far apart (entries arriving one by one are made durable
/// together).
pub const MIN_GAP: Duration = Duration::from_millis(100);
/// While entries keep coming, a checkpoint at least this often.
pub const MAX_GAP: Duration = Duration::from_secs(1);

/// A position in the router logs: pair number and RT1 offset.
pub type Point = (u64, u64);

/// The file in router state directory `state`.
pub fn path(state: &Path) -> PathBuf {
    state.join("applied")
}

/// The durable point recorded in `state` (the start of everything when there is none, or when
/// it cannot be read: then every entry still in the logs is treated as possibly lost).
pub fn load(state: &Path) -> Point {
    let p = path(state);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (0, 0),
        Err(e) => {
            log::warn!(
                "{}: {e}; every entry in the router logs is checked against its source",
                p.display()
            );
            return (0, 0);
        }
    };
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(pair)), Some(Ok(offset))) => (pair, offset),
        _ => {
            log::warn!(
                "{}: not a position ({:?}); every entry in the router logs is checked against its source",
                p.display(),
                text.trim()
            );
            (0, 0)
        }
    }
}

/// Records `at` as the durable point (atomically and durably).
pub fn store(state: &Path, at: Point) -> io::Result<()> {
    mirrorfs::state::write_atomic(&path(state), format!("{} {}\n", at.0, at.1).as_bytes())
}

/// The copies to ask for the entries `suspect` (pair, RT1 offset, record) past the durable
/// point: each name they touch (both names of a rename or link), once, for the rules the
/// router still has.
pub fn requests<'a>(
    suspect: impl IntoIterator<Item = (u64, u64, &'a RtRecord)>,
    table: &RouterTable,
) -> Vec<CopyRequest> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (n, off, r) in suspect {
        // The end of an answered copy request: it changed nothing.
        if r.part == Part::Extra && r.command == Command::Copy {
            continue;
        }
        if table.get(&r.site, r.rule_crc).is_none() {
            continue;
        }
        let mut names = vec![&r.name];
        if matches!(r.command, Command::Rename | Command::Link) {
            names.push(&r.aux);
        }
        for name in names {
            if !seen.insert((r.site.clone(), r.rule_crc, name.clone())) {
                continue;
            }
            out.push(CopyRequest::new(
                &r.site,
                r.rule_crc,
                name,
                format!(
                    "the router stopped before it had made {} {} (router log pair {n} offset {off}) durable in the backup",
                    r.command,
                    String::from_utf8_lossy(&r.name)
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_point_round_trips_and_a_bad_file_means_the_start() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), (0, 0));
        store(dir.path(), (3, 4096)).unwrap();
        assert_eq!(load(dir.path()), (3, 4096));
        std::fs::write(path(dir.path()), "garbage").unwrap();
        assert_eq!(load(dir.path()), (0, 0));
    }
}
