//! The verify session: `mirror-ctl verify` compares what the rules select with its backup
//! on a router, name by name and block by block ([`crate::blocksums`]).
//!
//! ```text
//! client → router  Hello { role: Verify, … }, Challenge, Auth    (as every session, [`super::auth`])
//! client → router  Verify { rule_crc, path, attrs }     list the backup of one rule at or beneath path
//! router → client  VerifyItems { items, done }           the first names, in walk order
//! client → router  Sums { id, rule_crc, name, level, nodes }   block checksums of one backup file …
//! router → client  SumsAnswer { id, size, sums, why }          … answered from the file itself
//! client → router  VerifyMove { rule_crc, name, to }    an orphan moved aside (--orphans move) …
//! router → client  VerifyMoved { to, why }              … or why not
//! client → router  VerifyMore                            the next names
//! router → client  VerifyItems { items, done }           … until `done`
//! client → router  Verify { … } again (the next rule), or closes the connection
//! ```
//!
//! The client pulls the listing a batch at a time, so that it can ask for the checksums of
//! the files of a batch between two batches: one connection, one question at a time, and
//! neither side holds more than a batch of names and one file's checksums. Names come depth
//! first, a directory before what it holds, the names of a directory in byte order: the
//! order of [`walk_order`], in which the client walks the source too and merges the two.
//!
//! The router answers only from the rules the requesting site sent it (the rule named by
//! `rule_crc` must be one of them), mapped beneath the namespace the site's key grants, and
//! reads the backup beneath its root through no symbolic link; versions kept under a delete
//! suffix are never listed. A file with several names comes once; its other names follow
//! as [`RestoreKind::Link`] items naming the first. An item the router cannot vouch for (a
//! file blocked at the router, a name it cannot read) carries a `problem`. A request it
//! refuses is answered with [`super::Msg::Error`] and the session ends.
//!
//! A `Sums` request names a regular file of the backup by its full source name; the router
//! reads it (one file's checksums held at a time, kept for the questions about its children
//! that follow) and answers with its size and the sums asked for, or with no size and why
//! (no such file, blocked, too large for a tree: [`crate::blocksums::MAX_TREE_FILE`]).

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

pub use super::restore::{RestoreAttrs, RestoreItem, RestoreKind};

/// Items in one [`super::Msg::VerifyItems`], at most.
pub const MAX_BATCH_ITEMS: usize = 1024;
/// Bytes of names, targets and xattrs in one batch, about (the router closes a batch past it).
pub const BATCH_BYTES: usize = 4 << 20;

/// One name of the backup, as the verify lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyItem {
    /// The name and what the backup holds there (attributes only when asked for and the
    /// rule mirrors them).
    pub item: RestoreItem,
    /// Why the router cannot vouch for it (blocked at the router, unreadable), if so.
    pub problem: Option<String>,
}

impl VerifyItem {
    /// Approximate bytes on the wire.
    pub fn wire_len(&self) -> usize {
        let x = self.item.attrs.as_ref().map_or(0, |a| {
            a.xattrs.iter().map(|x| x.name.len() + x.value.len()).sum()
        });
        64 + self.item.name.len()
            + self.item.target.len()
            + x
            + self.problem.as_ref().map_or(0, String::len)
    }
}

/// Whether `to` can name where orphans go: a relative path of normal components (not
/// empty, no `.`, `..`, empty component or NUL), at most `max` bytes.
pub fn valid_move_dir(to: &[u8], max: usize) -> bool {
    !to.is_empty()
        && to.len() <= max
        && to.first() != Some(&b'/')
        && !to.contains(&0)
        && to
            .split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// The order of a walk: component by component, each in byte order (so `a`, `a/b`, `a.c`:
/// a directory's names come right after it, before its next sibling).
pub fn walk_order(a: &[u8], b: &[u8]) -> Ordering {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_move_to_plain_relative_paths() {
        for ok in ["aside", "a/b", "..x/y.."] {
            assert!(valid_move_dir(ok.as_bytes(), 100), "{ok}");
        }
        for bad in ["", "/abs", "a/../b", "..", ".", "a//b", "a/", "a\0b"] {
            assert!(!valid_move_dir(bad.as_bytes(), 100), "{bad:?}");
        }
        assert!(!valid_move_dir(b"aaaa", 3));
    }

    #[test]
    fn walk_order_is_depth_first() {
        let mut names: Vec<&[u8]> =
            vec![b"/p/a.c", b"/p/a/b", b"/p/a", b"/p", b"/p/a/b/c", b"/p/b"];
        names.sort_by(|a, b| walk_order(a, b));
        assert_eq!(
            names,
            vec![
                &b"/p"[..],
                b"/p/a",
                b"/p/a/b",
                b"/p/a/b/c",
                b"/p/a.c",
                b"/p/b"
            ]
        );
        assert_eq!(walk_order(b"/x", b"/x"), Ordering::Equal);
    }
}
