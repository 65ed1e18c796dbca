//! Block checksums of backup files ([`mirrorfs::blocksums`]), the answers to [`Msg::Sums`].
//!
//! A copy that compares checksums first (issue 16) asks, in its source session and in order
//! with its entries, for the sums of the backup of one file; the router answers once it has
//! applied every entry the source sent before the request (the sender asks only with nothing
//! unacknowledged, so everything before the request is stored), so the sums are those of the
//! backup the copy's parts will be applied to. The file's tree is read once and kept for the
//! next requests about it (the deeper levels), while no entry came in between.
//!
//! The backup file is reached beneath the root through no symbolic link, only through a rule
//! of the requesting site, and never while it is blocked: then, or when anything else stands
//! in the way, the answer has no sums and says why, and the copy sends the file whole.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::Duration;

use mirrorfs::blocksums::{Tree, MAX_SUMS, MAX_TREE_FILE};
use mirrorfs::wire::Msg;

use crate::beneath::Root;
use crate::shared::Router;

/// How long a request waits for the router process to apply what came before it.
pub const APPLY_WAIT: Duration = Duration::from_secs(30);

/// The tree of the file last asked about in a session.
#[derive(Default)]
pub struct SumsCache {
    /// Rule, name, the session's entries frames received when it was read, and the tree.
    last: Option<(u32, Vec<u8>, u64, Tree)>,
}

/// The answer to request `id` without sums, and why.
pub fn none(id: u64, why: String) -> Msg {
    Msg::SumsAnswer {
        id,
        size: None,
        sums: Vec::new(),
        why,
    }
}

impl SumsCache {
    /// Answers [`Msg::Sums`] `id` of source `site` (its session has received `frames`
    /// entries frames so far), after the router process applied what was published up to
    /// now when `wait` says so.
    #[allow(clippy::too_many_arguments)]
    pub fn answer(
        &mut self,
        router: &Router,
        site: &str,
        id: u64,
        rule_crc: u32,
        name: &[u8],
        level: u32,
        nodes: &[u64],
        frames: u64,
    ) -> Msg {
        let fresh =
            matches!(&self.last, Some((c, n, f, _)) if *c == rule_crc && n == name && *f == frames);
        if !fresh {
            self.last = None;
            if !router.wait_looked(router.published(), APPLY_WAIT) {
                return none(
                    id,
                    "the router has not applied the entries before the request yet".into(),
                );
            }
            if router.source_blocked(site) {
                return none(
                    id,
                    format!("a backup file of source {site} is blocked on the router"),
                );
            }
            match tree_of_backup(router, site, rule_crc, name) {
                Ok(t) => self.last = Some((rule_crc, name.to_vec(), frames, t)),
                Err(why) => return none(id, why),
            }
        }
        let Some((_, _, _, tree)) = &self.last else {
            return none(id, "no tree".into());
        };
        let sums = if nodes.is_empty() {
            let l = tree.level(level);
            l[..l.len().min(MAX_SUMS)].to_vec()
        } else {
            match tree.children_of(level, nodes) {
                Some(s) => s,
                None => {
                    return none(
                        id,
                        format!("no nodes {nodes:?} at level {level} in the backup's tree"),
                    )
                }
            }
        };
        Msg::SumsAnswer {
            id,
            size: Some(tree.size),
            sums,
            why: String::new(),
        }
    }
}

/// The block checksums of the backup of `name` under rule `rule_crc` of `site`: read
/// beneath the root through no symbolic link, a regular file not blocked, at most
/// [`MAX_TREE_FILE`] bytes.
pub fn tree_of_backup(
    router: &Router,
    site: &str,
    rule_crc: u32,
    name: &[u8],
) -> Result<Tree, String> {
    let shown = String::from_utf8_lossy(name).into_owned();
    let table = router.table();
    let Some(rule) = table.get(site, rule_crc) else {
        return Err(format!(
            "site {site} has no rule {rule_crc:#010x} on this router"
        ));
    };
    // Only a name the rule selects, as every entry's name is checked.
    if !mirrorfs::wire::restore::valid_path(name, mirrorfs::wire::msg::MAX_NAME_LEN)
        || !crate::walk::selects_file(rule, name)
    {
        return Err(format!(
            "{shown}: not a name rule {} of site {site} selects",
            rule.pattern.as_str()
        ));
    }
    let rel: PathBuf =
        crate::backup::backup_rel(rule, name).map_err(|e| format!("{shown}: {e}"))?;
    if let Some(b) = router.blocked_file(&rel.to_string_lossy()) {
        return Err(format!("{shown} is blocked on the router: {}", b.reason));
    }
    let root =
        Root::open(&router.cfg.root).map_err(|e| format!("cannot open the backup root: {e}"))?;
    let file = open_backup(&root, &rel).map_err(|e| format!("{shown}: {e}"))?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size > MAX_TREE_FILE {
        return Err(format!(
            "{shown}: {size} bytes, more than block checksums are kept for"
        ));
    }
    Tree::of_file(&file, size).map_err(|e| format!("{shown}: {e}"))
}

/// Opens the regular file `rel` beneath `root` for reading (never through a symbolic link,
/// never blocking on a fifo).
pub fn open_backup(root: &Root, rel: &std::path::Path) -> std::io::Result<File> {
    let place = root.place(rel, false)?;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(place.path())?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::other(format!(
            "not a regular file (mode {:o})",
            m.mode()
        )));
    }
    Ok(f)
}
