//! Restore sessions: the backup of a source sent back to it (`mirror-ctl restore`, protocol in
//! [`mirrorfs::wire::restore`]).
//!
//! A session of role [`Role::Restore`](mirrorfs::wire::Role::Restore) asks, one
//! [`Msg::Restore`] at a time, for what the requesting site's rules select at or beneath a
//! source path. Every request is checked: the path must be a normalised absolute path (no
//! `.`, `..` or empty components), the key the session was opened with must still be the
//! site's, and only the rules that site sent are looked at, each mapped beneath the namespace
//! its key grants ([`crate::backup::backup_rel`]), so a site never reads another site's
//! namespace. Every backup name is reached beneath the root's descriptor through no symbolic
//! link ([`crate::beneath`]); a name that would pass through one is skipped (and logged), never
//! followed. Of the backup, only what the rule selects is sent (a wildcard rule's matching
//! names; never the versions kept under its delete suffix). A file with several names (hard
//! links) is sent once; its other names follow as links to the first.
//!
//! Memory is bounded: the tree is walked depth first, one directory's names at a time, and
//! file data goes in chunks of [`RESTORE_CHUNK`] read with `SEEK_DATA`/`SEEK_HOLE`, so holes
//! stay holes. The answer is counted first (a walk of the metadata, with heartbeats while it
//! lasts) so that the client can show progress. Whatever fails (the connection, a write that
//! stalls for a minute, a client idle for a minute between requests), the session ends.

use std::collections::{HashMap, HashSet};
use std::fs::{File, Metadata};
use std::io::{self, BufReader};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mirrorfs::wire::auth::{FrameMac, Key};
use mirrorfs::wire::msg::MAX_NAME_LEN;
use mirrorfs::wire::restore::{valid_path, RestoreAttrs, RestoreItem, RestoreKind, RESTORE_CHUNK};
use mirrorfs::wire::{read_sealed, Msg, WireError};

use crate::beneath::Root;
use crate::config::RouterRule;
use crate::receive::{key_revoked, refuse, send, SessionError};
use crate::shared::{PeerOut, Router};
use crate::walk::{kind_of, open_file, plan, walk, xattrs, Visit};

/// How long a restore client may stay silent between requests.
const IDLE: Duration = Duration::from_secs(60);
/// How often the count sends a heartbeat, so that the client's read does not time out.
const BEAT: Duration = Duration::from_secs(2);
/// Names (or data chunks) sent between two looks at the key file (a key removed ends the
/// session).
const KEY_CHECK_EVERY: u64 = 1000;

/// Serves a restore session of `site` (authenticated with `key`) until the client closes it
/// or something fails.
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
    loop {
        let msg = match read_sealed(r, mac) {
            Err(WireError::Closed) => return Ok(()),
            m => m?,
        };
        match msg {
            Msg::Restore { path } => request(router, site, key, w, &path)?,
            Msg::Heartbeat => {}
            other => {
                return Err(refuse(
                    w,
                    format!("unexpected {} in a restore session", other.kind()),
                ))
            }
        }
    }
}

/// Answers one request for `path`.
fn request(
    router: &Router,
    site: &str,
    key: &Key,
    w: &Mutex<PeerOut>,
    path: &[u8],
) -> Result<(), SessionError> {
    let shown = String::from_utf8_lossy(path).into_owned();
    if let Some(why) = key_revoked(router, site, key) {
        return Err(refuse(w, why));
    }
    if !valid_path(path, MAX_NAME_LEN) {
        return Err(refuse(
            w,
            format!(
                "restore of {shown:?} for site {site} refused: not a normalised absolute path (no '.', '..' or empty components)"
            ),
        ));
    }
    let parts = plan(router, site, path);
    if parts.is_empty() {
        return Err(refuse(
            w,
            format!("no rule of site {site} on this router selects anything at or under {shown}"),
        ));
    }
    let root = Root::open(&router.cfg.root).map_err(|e| {
        log::error!("backup root {}: {e}", router.cfg.root.display());
        refuse(
            w,
            format!("the router cannot open its backup root for the restore of {shown}"),
        )
    })?;
    // Counted first, so that the client can show how far it is.
    let mut count = Count {
        w,
        files: 0,
        bytes: 0,
        beat: Instant::now(),
        links: HashSet::new(),
    };
    for p in &parts {
        walk(&root, p, &mut count)?;
    }
    send(
        w,
        &Msg::RestoreTotal {
            files: count.files,
            bytes: count.bytes,
        },
    )?;
    let mut out = Stream {
        router,
        site,
        key,
        w,
        files: 0,
        bytes: 0,
        skipped: 0,
        buf: vec![0u8; RESTORE_CHUNK],
        links: HashMap::new(),
        chunks: 0,
    };
    for p in &parts {
        walk(&root, p, &mut out)?;
    }
    send(
        w,
        &Msg::RestoreDone {
            files: out.files,
            bytes: out.bytes,
            skipped: out.skipped,
        },
    )?;
    log::info!(
        "source {site} restored {shown}: {} names, {} bytes, {} skipped",
        out.files,
        out.bytes,
        out.skipped
    );
    Ok(())
}

/// The first pass: counts names and bytes.
struct Count<'a> {
    w: &'a Mutex<PeerOut>,
    files: u64,
    bytes: u64,
    beat: Instant,
    /// Files with several names counted (their data goes once).
    links: HashSet<(u64, u64)>,
}

impl Visit for Count<'_> {
    fn item(
        &mut self,
        _: &RouterRule,
        _: &[u8],
        _: &mirrorfs::beneath::Place,
        meta: &Metadata,
    ) -> Result<(), SessionError> {
        self.files += 1;
        let again = meta.nlink() > 1
            && self.links.len() < MAX_LINKS
            && !self.links.insert((meta.dev(), meta.ino()));
        if meta.is_file() && !again {
            self.bytes += meta.len().min(meta.blocks() * 512);
        }
        if self.beat.elapsed() >= BEAT {
            self.beat = Instant::now();
            send(self.w, &Msg::Heartbeat)?;
        }
        Ok(())
    }
    fn skip(&mut self, _: &[u8], _: String) -> Result<(), SessionError> {
        Ok(())
    }
}

/// The second pass: sends every name, and the data of files.
struct Stream<'a> {
    router: &'a Router,
    site: &'a str,
    key: &'a Key,
    w: &'a Mutex<PeerOut>,
    files: u64,
    bytes: u64,
    skipped: u64,
    buf: Vec<u8>,
    /// Files with several names sent so far in this answer: (device, inode) → the name sent.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// Data chunks sent (the key file is looked at every [`KEY_CHECK_EVERY`]).
    chunks: u64,
}

/// The most files with several names remembered per answer (beyond, each name is sent as a
/// file of its own).
const MAX_LINKS: usize = 1 << 20;

impl Visit for Stream<'_> {
    fn item(
        &mut self,
        rule: &RouterRule,
        name: &[u8],
        place: &mirrorfs::beneath::Place,
        meta: &Metadata,
    ) -> Result<(), SessionError> {
        if self.files % KEY_CHECK_EVERY == KEY_CHECK_EVERY - 1 {
            if let Some(why) = key_revoked(self.router, self.site, self.key) {
                return Err(refuse(self.w, why));
            }
        }
        let Some(kind) = kind_of(meta) else {
            return Ok(());
        };
        if kind == RestoreKind::File {
            // A blocked backup file holds what its entries made of it before they stopped
            // (a copy cut off by a full disk, for one): given back, it would pass for the
            // source's file.
            let blocked = crate::backup::backup_rel(rule, name)
                .ok()
                .and_then(|rel| self.router.blocked_file(&rel.to_string_lossy()));
            if let Some(b) = blocked {
                return self.skip(
                    name,
                    format!(
                        "blocked on the router since {} ({}): its backup may be incomplete; not restored (`mirror-ctl router status` on the backup host)",
                        mirrorfs::logging::utc_secs(b.since),
                        b.reason
                    ),
                );
            }
        }
        if kind == RestoreKind::File && meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                send(
                    self.w,
                    &Msg::RestoreItem {
                        item: RestoreItem {
                            name: name.to_vec(),
                            kind: RestoreKind::Link,
                            mode: 0,
                            size: 0,
                            target: first.clone(),
                            attrs: None,
                        },
                    },
                )?;
                self.files += 1;
                return Ok(());
            }
            if self.links.len() < MAX_LINKS {
                self.links.insert((meta.dev(), meta.ino()), name.to_vec());
            }
        }
        // A file is opened first (it may have changed since its lstat).
        let file = if kind == RestoreKind::File {
            match open_file(place, meta) {
                Ok(f) => Some(f),
                Err(e) => return self.skip(name, format!("cannot be read on the router: {e}")),
            }
        } else {
            None
        };
        let target = if kind == RestoreKind::Symlink {
            match std::fs::read_link(place.path()) {
                Ok(t) => t.into_os_string().into_vec(),
                Err(e) => return self.skip(name, format!("cannot be read on the router: {e}")),
            }
        } else {
            Vec::new()
        };
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        let attrs = rule.attrs.then(|| RestoreAttrs {
            uid: meta.uid(),
            gid: meta.gid(),
            atime: (meta.atime(), meta.atime_nsec() as u32),
            mtime: (meta.mtime(), meta.mtime_nsec() as u32),
            xattrs: xattrs(&place.path()),
        });
        let mode = meta.mode() & if rule.attrs { 0o7777 } else { 0o777 };
        send(
            self.w,
            &Msg::RestoreItem {
                item: RestoreItem {
                    name: name.to_vec(),
                    kind,
                    mode,
                    size,
                    target,
                    attrs,
                },
            },
        )?;
        self.files += 1;
        if let Some(f) = file {
            match self.data(&f, size) {
                Ok(()) => {}
                // The file could not be read: the client drops what it got of it.
                Err(SessionError::Protocol(why)) => return self.skip(name, why),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn skip(&mut self, name: &[u8], reason: String) -> Result<(), SessionError> {
        self.skipped += 1;
        log::warn!(
            "restore for source {}: {} skipped: {reason}",
            self.site,
            String::from_utf8_lossy(name)
        );
        send(
            self.w,
            &Msg::RestoreSkipped {
                name: name.to_vec(),
                reason,
            },
        )
    }
}

impl Stream<'_> {
    /// Sends the data of `f` up to `size`, skipping holes.
    fn data(&mut self, f: &File, size: u64) -> Result<(), SessionError> {
        let read_failed =
            |e: io::Error| SessionError::Protocol(format!("cannot be read on the router: {e}"));
        let mut pos = 0u64;
        while pos < size {
            let Some((start, end)) = next_data(f, pos, size).map_err(read_failed)? else {
                break;
            };
            let mut at = start;
            while at < end {
                let want = ((end - at) as usize).min(self.buf.len());
                let n = f.read_at(&mut self.buf[..want], at).map_err(read_failed)?;
                if n == 0 {
                    // Shorter than it was: the rest is not there any more.
                    return Ok(());
                }
                send(
                    self.w,
                    &Msg::RestoreData {
                        offset: at,
                        data: self.buf[..n].to_vec(),
                    },
                )?;
                self.chunks += 1;
                if self.chunks % KEY_CHECK_EVERY == 0 {
                    if let Some(why) = key_revoked(self.router, self.site, self.key) {
                        return Err(refuse(self.w, why));
                    }
                }
                self.bytes += n as u64;
                at += n as u64;
            }
            pos = end;
        }
        Ok(())
    }
}

/// The next range of data at or after `pos` (below `size`), holes skipped; `None` past the
/// last data. File systems without `SEEK_DATA` make the whole rest one range.
fn next_data(f: &File, pos: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
    let fd = f.as_raw_fd();
    // SAFETY: lseek on an open descriptor.
    let start = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
    if start < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some((pos, size))),
            _ => Err(e),
        };
    }
    let start = start as u64;
    if start >= size {
        return Ok(None);
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start as i64, libc::SEEK_HOLE) };
    let end = if end < 0 {
        size
    } else {
        (end as u64).min(size)
    };
    Ok(Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::walk::selects;
    use mirrorfs::rule::{Dest, Pattern};
    use std::path::PathBuf;

    fn rule(p: &str, suffix: Option<&str>) -> RouterRule {
        RouterRule {
            crc: 1,
            pattern: Pattern::parse(p).unwrap(),
            dest: Dest::parse("d").unwrap(),
            attrs: false,
            delete_suffix: suffix.map(String::from),
            namespace: Some(PathBuf::from("site")),
        }
    }

    /// `selects`, with every name of the kept form marked as kept.
    fn sel(rule: &RouterRule, name: &[u8], kind: RestoreKind, start: &[u8]) -> bool {
        selects(rule, name, kind, start, || {
            crate::apply::kept_version(rule, name)
        })
    }

    #[test]
    fn only_what_the_rule_selects_is_sent() {
        let w = rule("/p/a/*.doc", None);
        assert!(sel(&w, b"/p/a/x.doc", RestoreKind::File, b"/p/a"));
        assert!(!sel(&w, b"/p/a/x.txt", RestoreKind::File, b"/p/a"));
        assert!(sel(&w, b"/p/a", RestoreKind::Dir, b"/p/a"));
        assert!(!sel(&w, b"/p/a/sub", RestoreKind::Dir, b"/p/a"));
        let s = rule("/p/a/", Some(".del"));
        assert!(sel(&s, b"/p/a/x", RestoreKind::File, b"/p/a"));
        assert!(!sel(&s, b"/p/a/x.del", RestoreKind::File, b"/p/a"));
        assert!(!sel(&s, b"/p/a/x.del.2", RestoreKind::File, b"/p/a"));
        assert!(sel(&s, b"/p/a/sub", RestoreKind::Dir, b"/p/a"));
        assert!(!sel(&s, b"/p/a/sub.del", RestoreKind::Dir, b"/p/a"));
        // A source file named like a kept version (not marked as one) is restored.
        assert!(selects(
            &s,
            b"/p/a/x.del",
            RestoreKind::File,
            b"/p/a",
            || false
        ));
        let f = rule("/p/a/x.doc", None);
        assert!(sel(&f, b"/p/a/x.doc", RestoreKind::File, b"/p/a/x.doc"));
    }

    #[test]
    fn holes_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sparse");
        let f = File::create(&p).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", 64 << 20).unwrap();
        let f = File::open(&p).unwrap();
        let size = f.metadata().unwrap().len();
        let (s, e) = next_data(&f, 0, size).unwrap().unwrap();
        assert_eq!(s, 0);
        assert!(e < 64 << 20, "the hole is not data: {e}");
        let (s2, e2) = next_data(&f, e, size).unwrap().unwrap();
        assert!(s2 <= 64 << 20 && e2 == size, "{s2} {e2}");
        assert!(next_data(&f, size, size).unwrap().is_none());
    }
}
