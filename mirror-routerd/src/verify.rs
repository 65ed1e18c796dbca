//! Verify sessions: the backup of a source listed and checksummed for `mirror-ctl verify`
//! (protocol in [`mirrorfs::wire::verify`]).
//!
//! A session of role [`Role::Verify`](mirrorfs::wire::Role::Verify) asks for the listing of
//! one rule's backup at or beneath a source path ([`Msg::Verify`]), pulled a batch at a time
//! ([`Msg::VerifyMore`]), and for the block checksums of backup files ([`Msg::Sums`]).
//! Every request is checked as a restore's are: the path must be normalised and absolute, the
//! rule one the requesting site sent, every name mapped beneath the namespace its key grants
//! and reached beneath the root through no symbolic link ([`crate::walk`]), and the key the
//! session was opened with is looked at again on every request (and every thousand names).
//! Versions kept under a delete suffix are never listed (they are not orphans); a file
//! blocked at the router is listed with the reason, and its checksums are not given.
//!
//! With `--orphans move DIR`, an orphan is moved ([`Msg::VerifyMove`]) to
//! `<namespace>/DIR/<its path within the namespace>`: DIR must be a plain relative path and
//! lie outside every destination of the site's rules; the move never replaces anything
//! (`RENAME_NOREPLACE`) and goes through no symlink.
//!
//! Memory is bounded: one listing (a walk's stack and a batch of at most
//! [`MAX_BATCH_ITEMS`] names) and one file's checksums ([`Tree`], kept for the questions about
//! its children that follow) at a time; a file larger than
//! [`blocksums::MAX_TREE_FILE`] is not checksummed. Whatever fails (the connection, a write
//! that stalls for a minute, a client idle for a minute), the session ends.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, BufReader};
use std::net::TcpStream;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mirrorfs::blocksums::{self, Sum, Tree, MAX_SUMS};
use mirrorfs::wire::auth::{FrameMac, Key};
use mirrorfs::wire::msg::MAX_NAME_LEN;
use mirrorfs::wire::restore::valid_path;
use mirrorfs::wire::verify::{
    valid_move_dir, RestoreAttrs, RestoreItem, RestoreKind, VerifyItem, BATCH_BYTES,
    MAX_BATCH_ITEMS,
};
use mirrorfs::wire::{read_sealed, Msg, WireError};

use crate::backup::backup_rel;
use crate::beneath::Root;
use crate::config::RouterRule;
use crate::receive::{key_revoked, refuse, send, SessionError};
use crate::shared::{PeerOut, Router};
use crate::walk::{kind_of, part_of, xattrs, Visit, Walk};

/// How long a verify client may stay silent between requests.
const IDLE: Duration = Duration::from_secs(60);
/// How often a long read of a file sends a heartbeat, so that the client's read does not
/// time out.
const BEAT: Duration = Duration::from_secs(2);
/// Names listed between two looks at the key file.
const KEY_CHECK_EVERY: u64 = 1000;
/// Files with several names remembered per listing (beyond, each name is listed as a file).
const MAX_LINKS: usize = 1 << 20;

/// One listing in progress.
struct Listing {
    walk: Walk,
    attrs: bool,
    /// Names found and not sent yet.
    pending: VecDeque<VerifyItem>,
    pending_bytes: usize,
    /// Files with several names listed so far: (device, inode) → the first name.
    links: HashMap<(u64, u64), Vec<u8>>,
}

/// The checksums of the file asked about last.
struct Cached {
    rule_crc: u32,
    name: Vec<u8>,
    tree: Tree,
}

/// Serves a verify session of `site` (authenticated with `key`) until the client closes it or
/// something fails.
pub fn serve(
    router: &Router,
    site: &str,
    key: &Key,
    w: &Mutex<PeerOut>,
    r: &mut BufReader<TcpStream>,
    mac: &mut FrameMac,
) -> Result<(), SessionError> {
    r.get_ref()
        .set_read_timeout(Some(IDLE))
        .map_err(WireError::Io)?;
    let root = Root::open(&router.cfg.root).map_err(|e| {
        log::error!("backup root {}: {e}", router.cfg.root.display());
        refuse(
            w,
            "the router cannot open its backup root for the verify".into(),
        )
    })?;
    let mut s = Session {
        router,
        site,
        key,
        w,
        root,
        listing: None,
        cached: None,
        listed: 0,
    };
    loop {
        let msg = match read_sealed(r, mac) {
            Err(WireError::Closed) => return Ok(()),
            m => m?,
        };
        match msg {
            Msg::Verify {
                rule_crc,
                path,
                attrs,
            } => s.start(rule_crc, &path, attrs)?,
            Msg::VerifyMore => s.more()?,
            Msg::Sums {
                id,
                rule_crc,
                name,
                level,
                nodes,
            } => {
                let answer = s.sums(id, rule_crc, name, level, &nodes)?;
                send(w, &answer)?;
            }
            Msg::VerifyMove { rule_crc, name, to } => {
                let answer = s.move_orphan(rule_crc, &name, &to)?;
                send(w, &answer)?;
            }
            Msg::Heartbeat => {}
            other => {
                return Err(refuse(
                    w,
                    format!("unexpected {} in a verify session", other.kind()),
                ))
            }
        }
    }
}

struct Session<'a> {
    router: &'a Router,
    site: &'a str,
    key: &'a Key,
    w: &'a Mutex<PeerOut>,
    root: Root,
    listing: Option<Listing>,
    cached: Option<Cached>,
    /// Names listed in the session (the key file is looked at every [`KEY_CHECK_EVERY`]).
    listed: u64,
}

impl Session<'_> {
    fn check_key(&self) -> Result<(), SessionError> {
        match key_revoked(self.router, self.site, self.key) {
            Some(why) => Err(refuse(self.w, why)),
            None => Ok(()),
        }
    }

    /// The rule `crc` of this site, or the refusal that names it.
    fn rule(&self, crc: u32) -> Result<std::sync::Arc<RouterRule>, String> {
        self.router
            .table()
            .get(self.site, crc)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "site {} has no rule {crc:#010x} on this router (its configuration has not arrived yet, or the rule was removed)",
                    self.site
                )
            })
    }

    /// [`Msg::Verify`]: a new listing, and its first batch.
    fn start(&mut self, crc: u32, path: &[u8], attrs: bool) -> Result<(), SessionError> {
        self.check_key()?;
        let shown = String::from_utf8_lossy(path).into_owned();
        if !valid_path(path, MAX_NAME_LEN) {
            return Err(refuse(
                self.w,
                format!(
                    "verify of {shown:?} for site {} refused: not a normalised absolute path (no '.', '..' or empty components)",
                    self.site
                ),
            ));
        }
        let rule = self.rule(crc).map_err(|why| refuse(self.w, why))?;
        log::info!(
            "source {} verifies {shown} of rule {} ({crc:#010x})",
            self.site,
            rule.pattern.as_str()
        );
        // A rule that selects nothing there (or a site without a key): an empty listing.
        let walk = part_of(rule, path).map(Walk::new);
        self.listing = walk.map(|walk| Listing {
            walk,
            attrs,
            pending: VecDeque::new(),
            pending_bytes: 0,
            links: HashMap::new(),
        });
        self.more()
    }

    /// [`Msg::VerifyMore`]: the next batch of the listing.
    fn more(&mut self) -> Result<(), SessionError> {
        let Some(l) = self.listing.as_mut() else {
            return send(
                self.w,
                &Msg::VerifyItems {
                    items: Vec::new(),
                    done: true,
                },
            );
        };
        let before = self.listed;
        while l.pending.len() < MAX_BATCH_ITEMS && l.pending_bytes < BATCH_BYTES {
            let mut c = Collect {
                router: self.router,
                listing: LinksAndItems {
                    attrs: l.attrs,
                    pending: &mut l.pending,
                    pending_bytes: &mut l.pending_bytes,
                    links: &mut l.links,
                },
                listed: &mut self.listed,
            };
            if !l.walk.step(&self.root, &mut c)? {
                break;
            }
        }
        let n = l.pending.len().min(MAX_BATCH_ITEMS);
        let items: Vec<VerifyItem> = l.pending.drain(..n).collect();
        l.pending_bytes = l.pending.iter().map(VerifyItem::wire_len).sum();
        let done = l.walk.done() && l.pending.is_empty();
        if done {
            self.listing = None;
        }
        if before / KEY_CHECK_EVERY != self.listed / KEY_CHECK_EVERY {
            self.check_key()?;
        }
        send(self.w, &Msg::VerifyItems { items, done })
    }

    /// The answer to [`Msg::Sums`].
    fn sums(
        &mut self,
        id: u64,
        crc: u32,
        name: Vec<u8>,
        level: u32,
        nodes: &[u64],
    ) -> Result<Msg, SessionError> {
        self.check_key()?;
        let none = |why: String| crate::sums::none(id, why);
        let shown = String::from_utf8_lossy(&name).into_owned();
        if !valid_path(&name, MAX_NAME_LEN) {
            return Err(refuse(
                self.w,
                format!(
                    "checksums of {shown:?} for site {} refused: not a normalised absolute path",
                    self.site
                ),
            ));
        }
        let rule = match self.rule(crc) {
            Ok(r) => r,
            Err(why) => return Ok(none(why)),
        };
        if !crate::walk::selects_file(&rule, &name) {
            return Err(refuse(
                self.w,
                format!(
                    "checksums of {shown} refused: rule {} of site {} does not select it",
                    rule.pattern.as_str(),
                    self.site
                ),
            ));
        }
        let rel = match backup_rel(&rule, &name) {
            Ok(r) => r,
            Err(e) => return Ok(none(e.to_string())),
        };
        if let Some(b) = self.router.blocked_file(&rel.to_string_lossy()) {
            return Ok(none(format!(
                "blocked on the router since {} ({})",
                mirrorfs::logging::utc_secs(b.since),
                b.reason
            )));
        }
        let fresh = nodes.is_empty()
            || !self
                .cached
                .as_ref()
                .is_some_and(|c| c.rule_crc == crc && c.name == name);
        if fresh {
            self.cached = None;
            let tree = match self.tree_of(&rel) {
                Ok(t) => t,
                Err(why) => return Ok(none(why)),
            };
            self.cached = Some(Cached {
                rule_crc: crc,
                name,
                tree,
            });
        }
        let Some(c) = self.cached.as_ref() else {
            return Ok(none("no checksums".into()));
        };
        let size = c.tree.size;
        let sums: Option<Vec<Sum>> = if nodes.is_empty() {
            let l = c.tree.level(level);
            (l.len() <= MAX_SUMS).then(|| l.to_vec())
        } else {
            c.tree.children_of(level, nodes)
        };
        Ok(match sums {
            Some(sums) => Msg::SumsAnswer {
                id,
                size: Some(size),
                sums,
                why: String::new(),
            },
            None => none(format!(
                "the backup's checksums have no such nodes at level {level} (a file of {size} bytes)"
            )),
        })
    }

    /// The answer to [`Msg::VerifyMove`]: orphan `name` of rule `crc` moved beneath `to`
    /// (within the site's namespace, outside every destination of its rules), never over
    /// anything and never through a symlink.
    fn move_orphan(&mut self, crc: u32, name: &[u8], to: &[u8]) -> Result<Msg, SessionError> {
        self.check_key()?;
        let shown = String::from_utf8_lossy(name).into_owned();
        let dir = String::from_utf8_lossy(to).into_owned();
        if !valid_path(name, MAX_NAME_LEN) || !valid_move_dir(to, MAX_NAME_LEN) {
            return Err(refuse(
                self.w,
                format!(
                    "move of {shown:?} beneath {dir:?} for site {} refused: the name must be a normalised absolute path, the directory a plain relative one",
                    self.site
                ),
            ));
        }
        let no = |why: String| Msg::VerifyMoved { to: None, why };
        let rule = match self.rule(crc) {
            Ok(r) => r,
            Err(why) => return Ok(no(why)),
        };
        let Some(ns) = rule.namespace.clone() else {
            return Ok(no(format!("site {} has no namespace here", self.site)));
        };
        let rel = match backup_rel(&rule, name) {
            Ok(r) => r,
            Err(e) => return Ok(no(e.to_string())),
        };
        let target_dir = ns.join(std::ffi::OsStr::from_bytes(to));
        // Never into a rule's destination (the orphan would be one again, or overwrite a
        // backup), nor where the router stages its copies.
        let table = self.router.table();
        let into_rule = table
            .iter()
            .filter(|(s, _)| *s == self.site)
            .filter_map(|(_, r)| r.dest_rel())
            .find(|d| target_dir.starts_with(d) || d.starts_with(&target_dir));
        if let Some(d) = into_rule {
            return Ok(no(format!(
                "{dir} overlaps the destination {} of a rule of site {}: orphans go elsewhere",
                d.display(),
                self.site
            )));
        }
        if target_dir.starts_with(crate::staging::DIR) {
            return Ok(no(format!("{dir} is the router's own")));
        }
        let within = rel.strip_prefix(&ns).unwrap_or(&rel);
        let target = target_dir.join(within);
        let from = match self.root.place(&rel, false) {
            Ok(p) => p,
            Err(e) => return Ok(no(crate::walk::unreadable(&self.root, &rel, &e))),
        };
        let Ok(meta) = std::fs::symlink_metadata(from.path()) else {
            return Ok(no("not on the backup".into()));
        };
        if crate::apply::is_kept(&rule, name, &from.path(), &meta) {
            return Ok(no(
                "a version kept under the delete suffix, not an orphan".into()
            ));
        }
        let dest = match self.root.place(&target, true) {
            Ok(p) => p,
            Err(e) => return Ok(no(crate::walk::unreadable(&self.root, &target, &e))),
        };
        match from.rename_to(&dest, libc::RENAME_NOREPLACE) {
            Ok(()) => {
                log::info!(
                    "verify for source {}: orphan {} moved to {}",
                    self.site,
                    rel.display(),
                    target.display()
                );
                let shown_to = target
                    .strip_prefix(&ns)
                    .unwrap_or(&target)
                    .to_string_lossy()
                    .into_owned();
                Ok(Msg::VerifyMoved {
                    to: Some(shown_to),
                    why: String::new(),
                })
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(no(format!(
                "{} exists already on the router",
                target.display()
            ))),
            Err(e) => Ok(no(format!("cannot be moved on the router: {e}"))),
        }
    }

    /// The checksums of the backup file at `rel` (beneath the root, through no symlink),
    /// with heartbeats while it is read; why there are none.
    fn tree_of(&self, rel: &std::path::Path) -> Result<Tree, String> {
        let unreadable = |e: io::Error| crate::walk::unreadable(&self.root, rel, &e);
        let place = self.root.place(rel, false).map_err(unreadable)?;
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(place.path())
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => "not on the backup".to_string(),
                _ => unreadable(e),
            })?;
        let m = f.metadata().map_err(unreadable)?;
        if !m.is_file() {
            return Err("not a regular file on the backup".into());
        }
        if m.len() > blocksums::MAX_TREE_FILE {
            return Err(format!(
                "larger than {} bytes: not checksummed",
                blocksums::MAX_TREE_FILE
            ));
        }
        leaves(&f, m.len(), || send(self.w, &Msg::Heartbeat).is_ok())
            .map_err(|e| format!("cannot be read on the router: {e}"))
    }
}

/// The tree of `f` (of `size` bytes), read in 1 MiB steps; `beat` is called every [`BEAT`]
/// while it lasts (false: give up).
fn leaves(f: &File, size: u64, mut beat: impl FnMut() -> bool) -> io::Result<Tree> {
    let mut leaves = Vec::with_capacity(blocksums::blocks(size) as usize);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    let mut last = Instant::now();
    while at < size {
        let want = ((size - at) as usize).min(buf.len());
        let n = blocksums::read_full(f, &mut buf[..want], at)?;
        for b in buf[..n].chunks(blocksums::BLOCK as usize) {
            leaves.push(blocksums::leaf(b));
        }
        at += n as u64;
        if n < want {
            break;
        }
        if last.elapsed() >= BEAT {
            last = Instant::now();
            if !beat() {
                return Err(io::Error::other("the client is gone"));
            }
        }
    }
    Ok(Tree::from_leaves(at, leaves))
}

/// Where a batch's items go.
struct LinksAndItems<'a> {
    attrs: bool,
    pending: &'a mut VecDeque<VerifyItem>,
    pending_bytes: &'a mut usize,
    links: &'a mut HashMap<(u64, u64), Vec<u8>>,
}

impl LinksAndItems<'_> {
    fn push(&mut self, item: VerifyItem) {
        *self.pending_bytes += item.wire_len();
        self.pending.push_back(item);
    }
}

/// The walk's visitor: each name becomes an item.
struct Collect<'a> {
    router: &'a Router,
    listing: LinksAndItems<'a>,
    listed: &'a mut u64,
}

impl Visit for Collect<'_> {
    fn item(
        &mut self,
        rule: &RouterRule,
        name: &[u8],
        place: &mirrorfs::beneath::Place,
        meta: &Metadata,
    ) -> Result<(), SessionError> {
        *self.listed += 1;
        let Some(kind) = kind_of(meta) else {
            return Ok(());
        };
        let l = &mut self.listing;
        if kind == RestoreKind::File && meta.nlink() > 1 {
            if let Some(first) = l.links.get(&(meta.dev(), meta.ino())) {
                let target = first.clone();
                l.push(VerifyItem {
                    item: RestoreItem {
                        name: name.to_vec(),
                        kind: RestoreKind::Link,
                        mode: 0,
                        size: 0,
                        target,
                        attrs: None,
                    },
                    problem: None,
                });
                return Ok(());
            }
            if l.links.len() < MAX_LINKS {
                l.links.insert((meta.dev(), meta.ino()), name.to_vec());
            }
        }
        let mut problem = None;
        if kind == RestoreKind::File {
            // A blocked backup file holds what its entries made of it before they stopped:
            // the router cannot say it is the source's.
            if let Some(b) = backup_rel(rule, name)
                .ok()
                .and_then(|rel| self.router.blocked_file(&rel.to_string_lossy()))
            {
                problem = Some(format!(
                    "blocked on the router since {} ({}); `mirror-ctl router status` on the backup host",
                    mirrorfs::logging::utc_secs(b.since),
                    b.reason
                ));
            }
        }
        let target = if kind == RestoreKind::Symlink {
            match std::fs::read_link(place.path()) {
                Ok(t) => t.into_os_string().into_vec(),
                Err(e) => {
                    problem = Some(format!("cannot be read on the router: {e}"));
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let attrs = (l.attrs && rule.attrs).then(|| RestoreAttrs {
            uid: meta.uid(),
            gid: meta.gid(),
            atime: (meta.atime(), meta.atime_nsec() as u32),
            mtime: (meta.mtime(), meta.mtime_nsec() as u32),
            xattrs: xattrs(&place.path()),
        });
        let mode = meta.mode() & if rule.attrs { 0o7777 } else { 0o777 };
        l.push(VerifyItem {
            item: RestoreItem {
                name: name.to_vec(),
                kind,
                mode,
                size: if kind == RestoreKind::File {
                    meta.len()
                } else {
                    0
                },
                target,
                attrs,
            },
            problem,
        });
        Ok(())
    }

    fn skip(&mut self, name: &[u8], reason: String) -> Result<(), SessionError> {
        log::warn!(
            "verify: {} cannot be listed: {reason}",
            String::from_utf8_lossy(name)
        );
        self.listing.push(VerifyItem {
            item: RestoreItem {
                name: name.to_vec(),
                kind: RestoreKind::File,
                mode: 0,
                size: 0,
                target: Vec::new(),
                attrs: None,
            },
            problem: Some(reason),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_sum_the_file_as_the_tree_does() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let data: Vec<u8> = (0..(2 << 20) + 4097).map(|i| (i % 13) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        let t = leaves(&f, data.len() as u64, || true).unwrap();
        assert_eq!(t, Tree::of_file(&f, data.len() as u64).unwrap());
        // Shorter than its metadata said: summed as far as it goes.
        let t = leaves(&f, data.len() as u64 + 10, || true).unwrap();
        assert_eq!(t.size, data.len() as u64);
    }
}
