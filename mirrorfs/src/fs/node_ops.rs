//! Operations on names and attributes: lookup, getattr, setattr, mknod, mkdir, unlink, rmdir,
//! symlink, rename, link, readlink, statfs, access and extended attributes.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use fuser::FileAttr;

use super::error::{FsError, FsResult};
use super::inodes::{lock, ROOT};
use super::sys::{self, FsCreds, SetTime, Stat};
use super::{Caller, EntryOut, MirrorFs, SetAttrs};
use crate::entry::{AttrChange, Command, EntryRef};

/// Runs `op` with the caller's file-system ids (so new files belong to the caller, and set-gid
/// directories behave as on the plain directory). If the underlying file system refuses the
/// caller where the kernel's own check allowed it (access through a supplementary group,
/// which these ids lack), the operation is redone as root and the new file handed to the caller.
fn as_caller<T>(
    caller: Caller,
    op: impl Fn() -> io::Result<T>,
    chown: impl FnOnce() -> io::Result<()>,
) -> io::Result<T> {
    if caller.uid == 0 && caller.gid == 0 {
        return op();
    }
    let first = {
        let _c = FsCreds::switch(caller.uid, caller.gid);
        op()
    };
    match first {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
            let t = op()?;
            chown()?;
            Ok(t)
        }
        r => r,
    }
}

fn set_time(t: Option<SetTime>) -> SetTime {
    t.unwrap_or(SetTime::Omit)
}

impl MirrorFs {
    /// Looks `name` up in `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<EntryOut> {
        let _ns = self.ns_read();
        let path = self.inodes.child_path(parent, name)?;
        let st = sys::stat_at(self.dir(), &path)?;
        Ok(self.entry(parent, name, &st))
    }

    /// Attributes of `ino` (through handle `fh` if given).
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> FsResult<FileAttr> {
        if let Some(h) = fh.and_then(|fh| self.files.get(fh).ok()) {
            if h.inode.ino == ino {
                return Ok(self.attr(ino, &sys::fstat(h.file.as_fd())?));
            }
        }
        let _ns = self.ns_read();
        let st = if ino == ROOT {
            sys::fstat(self.dir())?
        } else {
            self.stat_node(ino)?
        };
        Ok(self.attr(ino, &st))
    }

    /// Changes attributes of `ino` (through handle `fh` if given) and records them.
    pub fn setattr(
        &self,
        caller: Caller,
        ino: u64,
        ch: SetAttrs,
        fh: Option<u64>,
    ) -> FsResult<FileAttr> {
        let _ns = self.ns_read();
        let node = self.inodes.get(ino)?;
        let _op = lock(&node.op_lock);
        let handle = fh.and_then(|fh| self.files.get(fh).ok());
        let path = self.inodes.path(ino).ok();
        // Changes go through the handle when there is one (the file may have no name left).
        let by_fd = handle.as_ref().map(|h| h.file.as_fd());
        let rel = path.as_deref().unwrap_or_default();
        if path.is_none() && by_fd.is_none() && ino != ROOT {
            return Err(FsError::Unlinked(ino));
        }
        if let Some(p) = &path {
            let full = self.rec.full_name(p);
            let is_dir = node.kind == fuser::FileType::Directory;
            let rules = self.rec.rules(&self.rec.table(), &full, is_dir);
            self.rec
                .room(&rules, &full, 2 * crate::entry::ATTR_CHANGE_LEN)?;
        }
        if let Some(mode) = ch.mode {
            match by_fd {
                Some(fd) => sys::fchmod(fd, mode & 0o7777)?,
                None => sys::chmod_at(self.dir(), rel, mode & 0o7777)?,
            }
        }
        if ch.uid.is_some() || ch.gid.is_some() {
            let (u, g) = (ch.uid.unwrap_or(u32::MAX), ch.gid.unwrap_or(u32::MAX));
            match by_fd {
                Some(fd) => sys::fchown(fd, u, g)?,
                None => sys::chown_at(self.dir(), rel, u, g)?,
            }
        }
        if let Some(size) = ch.size {
            match handle.as_ref().filter(|h| h.writable) {
                Some(h) => sys::ftruncate(h.file.as_fd(), size)?,
                None => {
                    let f = sys::open_at(self.dir(), rel, libc::O_WRONLY | libc::O_NOFOLLOW, 0)?;
                    sys::ftruncate(f.as_fd(), size)?;
                }
            }
        }
        if ch.atime.is_some() || ch.mtime.is_some() {
            let (a, m) = (set_time(ch.atime), set_time(ch.mtime));
            match by_fd {
                Some(fd) => sys::futimens(fd, a, m)?,
                None => sys::utimens_at(self.dir(), rel, a, m)?,
            }
        }
        let mut st = match by_fd {
            Some(fd) => sys::fstat(fd)?,
            None => sys::stat_at(self.dir(), rel)?,
        };
        let mut ch = ch;
        if ch.size.is_some() {
            // A truncate by another user clears set-id bits as the file system would.
            let killed = match by_fd {
                Some(fd) => self.drop_setid(caller, fd, &st)?,
                None => {
                    let f = sys::open_at(self.dir(), rel, libc::O_RDONLY | libc::O_NOFOLLOW, 0)?;
                    self.drop_setid(caller, f.as_fd(), &st)?
                }
            };
            if let Some(after) = killed {
                st = after;
                ch.mode = Some(st.mode & 0o7777);
            }
        }
        node.setid.store(
            st.mode & (libc::S_ISUID | libc::S_ISGID) != 0,
            std::sync::atomic::Ordering::Relaxed,
        );
        if node.kind == fuser::FileType::Directory {
            self.dir_attrs_changed(ino);
        }
        if let Some(path) = path {
            self.record_setattr(&path, &st, &ch)?;
        }
        Ok(self.attr(ino, &st))
    }

    /// What the file system does when a user without `CAP_FSETID` changes a file (but mirrorfs
    /// changes it as root): clears its set-user-id bit, and its set-group-id bit when the file
    /// is group-executable or the user is not in its group. The new status when bits went.
    pub(super) fn drop_setid(
        &self,
        caller: Caller,
        fd: BorrowedFd<'_>,
        st: &Stat,
    ) -> FsResult<Option<Stat>> {
        let bits = st.mode & (libc::S_ISUID | libc::S_ISGID);
        if caller.uid == 0 || bits == 0 || !st.is_file() {
            return Ok(None);
        }
        let mut mode = st.mode & !libc::S_ISUID;
        if st.mode & libc::S_ISGID != 0
            && (st.mode & libc::S_IXGRP != 0 || !sys::in_group(caller.pid, caller.gid, st.gid))
        {
            mode &= !libc::S_ISGID;
        }
        if mode == st.mode {
            return Ok(None);
        }
        sys::fchmod(fd, mode & 0o7777)?;
        Ok(Some(sys::fstat(fd)?))
    }

    pub(super) fn record_setattr(&self, path: &[u8], st: &Stat, ch: &SetAttrs) -> FsResult<()> {
        let table = self.rec.table();
        let full = self.rec.full_name(path);
        let rules = self.rec.rules(&table, &full, st.is_dir());
        if rules.is_empty() {
            return Ok(());
        }
        if let Some(size) = ch.size {
            if !st.is_dir() {
                let e = EntryRef {
                    size,
                    ..EntryRef::new(Command::Truncate, 0, &full)
                };
                self.rec.append(&rules, e)?;
            }
        }
        let change = AttrChange {
            mode: ch.mode.map(|_| st.mode & 0o7777),
            uid: ch.uid.map(|_| st.uid),
            gid: ch.gid.map(|_| st.gid),
            atime: ch.atime.map(|_| st.atime),
            mtime: ch.mtime.map(|_| st.mtime),
        };
        if change != AttrChange::default() {
            self.record_attrs(&rules, &full, change)?;
        }
        if ch.mode.is_some() && !st.is_symlink() {
            // Permission bits are mirrored by every rule (a backup is never more readable
            // than its source); set-id bits only with --attrs.
            self.record_permissions(&rules, &full, st.mode)?;
        }
        Ok(())
    }

    /// Appends a `SetAttr` entry with the permission bits of `mode` (no set-id bits) for the
    /// rules that do not mirror attributes (those that do got the whole change).
    pub(super) fn record_permissions(
        &self,
        rules: &[std::sync::Arc<crate::rule::Rule>],
        full: &[u8],
        mode: u32,
    ) -> FsResult<()> {
        let plain: Vec<_> = rules.iter().filter(|r| !r.spec.attrs).cloned().collect();
        if plain.is_empty() {
            return Ok(());
        }
        let data = AttrChange {
            mode: Some(mode & 0o777),
            ..AttrChange::default()
        }
        .encode();
        let e = EntryRef {
            data: &data,
            ..EntryRef::new(Command::SetAttr, 0, full)
        };
        self.rec.append(&plain, e)
    }

    /// Appends a `SetAttr` entry for the rules that mirror attributes.
    pub(super) fn record_attrs(
        &self,
        rules: &[std::sync::Arc<crate::rule::Rule>],
        full: &[u8],
        change: AttrChange,
    ) -> FsResult<()> {
        let with_attrs: Vec<_> = rules.iter().filter(|r| r.spec.attrs).cloned().collect();
        if with_attrs.is_empty() {
            return Ok(());
        }
        let data = change.encode();
        let e = EntryRef {
            data: &data,
            ..EntryRef::new(Command::SetAttr, 0, full)
        };
        self.rec.append(&with_attrs, e)
    }

    /// Attributes every recorded new node gets with `--attrs`: mode, owner and times.
    pub(super) fn full_attrs(st: &Stat) -> AttrChange {
        AttrChange {
            mode: Some(st.mode & 0o7777),
            uid: Some(st.uid),
            gid: Some(st.gid),
            atime: Some(st.atime),
            mtime: Some(st.mtime),
        }
    }

    /// Room in the journal for recording a change of name `path` (below the mount), a
    /// directory or not, before it is made.
    fn room_for(&self, path: &[u8], is_dir: bool, extra: usize) -> FsResult<()> {
        let full = self.rec.full_name(path);
        let rules = self.rec.rules(&self.rec.table(), &full, is_dir);
        self.rec
            .room(&rules, &full, extra + 2 * crate::entry::ATTR_CHANGE_LEN)
    }

    /// Target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let _ns = self.ns_read();
        let path = self.inodes.path(ino)?;
        Ok(sys::readlink_at(self.dir(), &path)?)
    }

    /// Creates a special file (or a regular one) `name` in `parent`.
    pub fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
    ) -> FsResult<EntryOut> {
        let _ns = self.ns_read();
        let path = self.inodes.child_path(parent, name)?;
        self.room_for(&path, false, 0)?;
        as_caller(
            caller,
            || sys::mknod_at(self.dir(), &path, mode, rdev),
            || sys::chown_at(self.dir(), &path, caller.uid, caller.gid),
        )?;
        let st = sys::stat_at(self.dir(), &path)?;
        let out = self.entry(parent, name, &st);
        let table = self.rec.table();
        let full = self.rec.full_name(&path);
        let rules = self.rec.file_rules(&table, &full);
        if !rules.is_empty() {
            let e = if st.is_file() {
                EntryRef {
                    offset: st.mode as u64,
                    ..EntryRef::new(Command::Create, 0, &full)
                }
            } else {
                EntryRef {
                    offset: st.mode as u64,
                    size: st.rdev,
                    ..EntryRef::new(Command::Mknod, 0, &full)
                }
            };
            self.rec.append(&rules, e)?;
            self.record_attrs(&rules, &full, Self::full_attrs(&st))?;
        }
        Ok(out)
    }

    /// Makes directory `name` in `parent`.
    pub fn mkdir(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> FsResult<EntryOut> {
        let _ns = self.ns_read();
        let path = self.inodes.child_path(parent, name)?;
        self.room_for(&path, true, 0)?;
        as_caller(
            caller,
            || sys::mkdir_at(self.dir(), &path, mode),
            || sys::chown_at(self.dir(), &path, caller.uid, caller.gid),
        )?;
        let st = sys::stat_at(self.dir(), &path)?;
        let out = self.entry(parent, name, &st);
        let table = self.rec.table();
        let full = self.rec.full_name(&path);
        let rules = self.rec.dir_rules(&table, &full);
        if !rules.is_empty() {
            let e = EntryRef {
                offset: st.mode as u64,
                ..EntryRef::new(Command::Mkdir, 0, &full)
            };
            self.rec.append(&rules, e)?;
            self.record_attrs(&rules, &full, Self::full_attrs(&st))?;
        }
        Ok(out)
    }

    /// Removes file `name` from `parent`.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, false)
    }

    /// Removes directory `name` from `parent`.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> FsResult<()> {
        let _ns = self.ns_read();
        let path = self.inodes.child_path(parent, name)?;
        let full = self.rec.full_name(&path);
        let mut rules = self.rec.rules(&self.rec.table(), &full, dir);
        if full.len() > crate::entry::MAX_NAME_LEN {
            // Never mirrored (no entry carries such a name): its removal has nothing to tell
            // the backup, and must not be refused.
            rules.clear();
        }
        self.rec.room_to_remove(&rules, &full)?;
        let st = sys::stat_at(self.dir(), &path)?;
        let ino = self.inodes.node_id(&st);
        let node = self.inodes.get(ino).ok();
        let _op = node.as_ref().map(|n| lock(&n.op_lock));
        sys::unlink_at(self.dir(), &path, dir)?;
        self.inodes.unlink(ino, parent, name);
        self.names_changed();
        let table = self.rec.table();
        let full = self.rec.full_name(&path);
        let (rules, command) = if full.len() > crate::entry::MAX_NAME_LEN {
            (Vec::new(), Command::Delete)
        } else if dir {
            (self.rec.dir_rules(&table, &full), Command::Rmdir)
        } else {
            (self.rec.file_rules(&table, &full), Command::Delete)
        };
        self.rec.append(&rules, EntryRef::new(command, 0, &full))
    }

    /// Makes symlink `name` in `parent` pointing at `target`.
    pub fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> FsResult<EntryOut> {
        let _ns = self.ns_read();
        let path = self.inodes.child_path(parent, name)?;
        let t = target.as_bytes();
        self.room_for(&path, false, t.len())?;
        as_caller(
            caller,
            || sys::symlink_at(t, self.dir(), &path),
            || sys::chown_at(self.dir(), &path, caller.uid, caller.gid),
        )?;
        let st = sys::stat_at(self.dir(), &path)?;
        let out = self.entry(parent, name, &st);
        let table = self.rec.table();
        let full = self.rec.full_name(&path);
        let rules = self.rec.file_rules(&table, &full);
        let e = EntryRef {
            aux: t,
            ..EntryRef::new(Command::Symlink, 0, &full)
        };
        self.rec.append(&rules, e)?;
        Ok(out)
    }

    /// Renames `name` in `parent` to `newname` in `newparent` (`flags`: `renameat2` flags).
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        if flags & libc::RENAME_WHITEOUT != 0 {
            return Err(FsError::Errno(libc::EINVAL));
        }
        let _ns = self.ns_write();
        let old = self.inodes.child_path(parent, name)?;
        let new = self.inodes.child_path(newparent, newname)?;
        let st_old = sys::stat_at(self.dir(), &old)?;
        let st_new = sys::stat_at(self.dir(), &new).ok();
        let ino_old = self.inodes.node_id(&st_old);
        let ino_new = st_new.as_ref().map(|s| self.inodes.node_id(s));
        // Hold the op locks of both nodes, so their writers see the rename in order.
        let n_old = self.inodes.get(ino_old).ok();
        let n_new = ino_new
            .filter(|&i| i != ino_old)
            .and_then(|i| self.inodes.get(i).ok());
        let _l1 = n_old.as_ref().map(|n| lock(&n.op_lock));
        let _l2 = n_new.as_ref().map(|n| lock(&n.op_lock));
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let table = self.rec.table();
        let plan = self.rec.rename_plan(
            &table,
            &self.rec.full_name(&old),
            &self.rec.full_name(&new),
            st_old.is_dir(),
            exchange,
            st_new
                .as_ref()
                .filter(|_| ino_new != Some(ino_old))
                .map(|s| s.is_dir()),
        );
        self.rec.room_for_plan(&plan)?;
        sys::rename_at(self.dir(), &old, &new, flags)?;
        if exchange {
            if let Some(i) = ino_new {
                self.inodes.relink(i, (newparent, newname), (parent, name));
            }
        } else if let Some(i) = ino_new.filter(|&i| i != ino_old) {
            self.inodes.unlink(i, newparent, newname);
        }
        self.inodes
            .relink(ino_old, (parent, name), (newparent, newname));
        self.names_changed();
        self.rec.append_planned(&plan)
    }

    /// Hard-links node `ino` as `newname` in `newparent`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> FsResult<EntryOut> {
        let _ns = self.ns_read();
        let old = self.inodes.path(ino)?;
        let new = self.inodes.child_path(newparent, newname)?;
        let node = self.inodes.get(ino)?;
        let _op = lock(&node.op_lock);
        let table = self.rec.table();
        let plan = self
            .rec
            .link_plan(&table, &self.rec.full_name(&old), &self.rec.full_name(&new));
        self.rec.room_for_plan(&plan)?;
        sys::link_at(self.dir(), &old, &new)?;
        let st = sys::stat_at(self.dir(), &new)?;
        let out = self.entry(newparent, newname, &st);
        self.rec.append_planned(&plan)?;
        Ok(out)
    }

    /// File-system statistics.
    pub fn statfs(&self) -> FsResult<libc::statvfs> {
        Ok(sys::statvfs(self.dir())?)
    }

    /// `access(2)` on `ino`.
    pub fn access(&self, ino: u64, mask: i32) -> FsResult<()> {
        let _ns = self.ns_read();
        let path = self.inodes.path(ino)?;
        Ok(sys::access_at(self.dir(), &path, mask)?)
    }

    /// Reads extended attribute `name` (size 0: only its length).
    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> FsResult<(usize, Vec<u8>)> {
        let _ns = self.ns_read();
        let path = self.inodes.path(ino)?;
        Ok(sys::getxattr_at(self.dir(), &path, name, size as usize)?)
    }

    /// Lists extended attribute names (size 0: only the length).
    pub fn listxattr(&self, ino: u64, size: u32) -> FsResult<(usize, Vec<u8>)> {
        let _ns = self.ns_read();
        let path = self.inodes.path(ino)?;
        Ok(sys::listxattr_at(self.dir(), &path, size as usize)?)
    }

    /// Sets extended attribute `name` and records it.
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        self.change_xattr(ino, name, Some((value, flags)))
    }

    /// Removes extended attribute `name` and records it.
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        self.change_xattr(ino, name, None)
    }

    fn change_xattr(&self, ino: u64, name: &OsStr, set: Option<(&[u8], i32)>) -> FsResult<()> {
        let _ns = self.ns_read();
        let node = self.inodes.get(ino)?;
        let _op = lock(&node.op_lock);
        let path = self.inodes.path(ino)?;
        self.room_for(
            &path,
            node.kind == fuser::FileType::Directory,
            name.len() + set.map_or(0, |(v, _)| v.len()),
        )?;
        match set {
            Some((value, flags)) => sys::setxattr_at(self.dir(), &path, name, value, flags)?,
            None => sys::removexattr_at(self.dir(), &path, name)?,
        }
        if node.kind == fuser::FileType::Directory {
            self.dir_attrs_changed(ino);
        }
        if name.as_bytes() == b"system.posix_acl_access" {
            // The access ACL's mask is the mode's group bits: the kernel, which keeps a
            // regular file's ctime itself with the writeback cache, would not ask again.
            self.attrs_changed(ino);
            // And the permission bits it set are kept for every rule, as a chmod's are (`cp
            // -a` and setfacl set modes this way).
            let st = sys::stat_at(self.dir(), &path)?;
            let ch = super::SetAttrs {
                mode: Some(st.mode & 0o7777),
                ..super::SetAttrs::default()
            };
            self.record_setattr(&path, &st, &ch)?;
        }
        let table = self.rec.table();
        let full = self.rec.full_name(&path);
        let is_dir = node.kind == fuser::FileType::Directory;
        let rules: Vec<_> = self
            .rec
            .rules(&table, &full, is_dir)
            .into_iter()
            .filter(|r| r.spec.attrs)
            .collect();
        let (command, data) = match set {
            Some((v, _)) => (Command::SetXattr, v),
            None => (Command::RemoveXattr, &[][..]),
        };
        let e = EntryRef {
            aux: name.as_bytes(),
            data,
            ..EntryRef::new(command, 0, &full)
        };
        self.rec.append(&rules, e)
    }
}
