//! Operations on open files: open, create, read, write, flush, release, fsync, fallocate,
//! lseek and copy_file_range.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::BackingId;

use super::error::{FsError, FsResult};
use super::handles::{Handle, IoMode, Recording};
use super::inodes::{lock, Inode};
use super::record::Rules;
use super::sys::{self, FsCreds};
use super::{Caller, EntryOut, MirrorFs, Opened};
use crate::entry::{AttrChange, Command, EntryRef};

/// Largest data carried by one journal entry when mirrorfs reads data back (copy_file_range).
const CHUNK: usize = 1 << 20;

/// Bytes one `copy_file_range` copies at most.
const COPY_RANGE: u64 = 64 << 20;

/// Writes at least this large go to the file and the journal in parallel: starting a thread
/// costs far less than copying this much a second time in a row.
const PARALLEL_WRITE: usize = 256 << 10;

/// Writeback of a file written in large writes is started after this many bytes.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Open flags mirrorfs does not pass to its own descriptor: creation flags are handled
/// separately, O_APPEND because the kernel gives each write its offset, O_DIRECT because
/// FUSE buffers are not aligned for it.
const STRIP: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_APPEND | libc::O_DIRECT;

fn writable(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}

/// `flags` opened for reading too, if write-only: with the writeback cache the kernel reads
/// the rest of a page before it writes part of it, through any writable handle.
fn readable(flags: i32) -> i32 {
    if flags & libc::O_ACCMODE == libc::O_WRONLY {
        (flags & !libc::O_ACCMODE) | libc::O_RDWR
    } else {
        flags
    }
}

impl MirrorFs {
    /// The I/O mode of a new handle of `node`, and counts it (see [`super::inodes::NodeIo`]):
    /// the mode of the node's open handles if it has any, else the page cache for a file a
    /// rule selects (its writes reach mirrorfs, to be recorded) and kernel passthrough for
    /// one no rule selects.
    fn io_mode(&self, node: &Inode, selected: bool) -> IoMode {
        let mut io = lock(&node.io);
        let mode = match io.mode {
            Some(m) if io.handles > 0 => m,
            _ if self.passthrough() && !selected => IoMode::Passthrough,
            _ => IoMode::Cached,
        };
        io.mode = Some(mode);
        io.handles += 1;
        mode
    }

    /// The rules selecting `path` now, as a fresh handle recording.
    fn recording_for(&self, path: &[u8]) -> Recording {
        let generation = self.names_gen.load(Ordering::Relaxed);
        let table = self.rec.table();
        let name = self.rec.full_name(path);
        let rules = self.rec.file_rules(&table, &name);
        Recording {
            generation,
            table: Some(table),
            name,
            rules,
            late_rules: Vec::new(),
            wrote: false,
        }
    }

    /// Brings a handle's name and rules up to date after renames or rule changes. Rules that
    /// were not in the rule table at the last resolution are remembered for a copy at release.
    fn refresh(&self, h: &Handle, r: &mut Recording) {
        let generation = self.names_gen.load(Ordering::Relaxed);
        let table = self.rec.table();
        let same_table = r.table.as_ref().is_some_and(|t| Arc::ptr_eq(t, &table));
        if r.generation == generation && same_table {
            return;
        }
        let (name, rules) = match self.inodes.path(h.inode.ino) {
            Ok(p) => {
                let name = self.rec.full_name(&p);
                let rules = self.rec.file_rules(&table, &name);
                (name, rules)
            }
            Err(_) => (Vec::new(), Vec::new()),
        };
        if let Some(old) = &r.table {
            for rule in &rules {
                let known = old.rules().iter().any(|x| x.crc == rule.crc);
                let noted = r.late_rules.iter().any(|x| x.crc == rule.crc);
                if !known && !noted {
                    r.late_rules.push(rule.clone());
                }
            }
        }
        *r = Recording {
            generation,
            table: Some(table),
            name,
            rules,
            late_rules: std::mem::take(&mut r.late_rules),
            wrote: r.wrote,
        };
    }

    fn new_handle(
        &self,
        node: Arc<Inode>,
        file: std::fs::File,
        flags: i32,
        mut recording: Recording,
    ) -> Opened {
        let w = writable(flags);
        let mode = match self.io_mode(&node, !recording.rules.is_empty()) {
            // Buffered writes that fail when the kernel writes them back leave the mount
            // showing what the file does not hold: where that may happen, this opening writes
            // through mirrorfs instead (direct I/O), and its errors reach `write` itself.
            IoMode::Cached if w && self.writeback() && !self.may_buffer() => IoMode::Direct,
            m => m,
        };
        if w && mode == IoMode::Passthrough && !recording.rules.is_empty() {
            // A rule began to select the file while it was open in passthrough: its writes
            // never reach mirrorfs, so the file is copied when this handle closes.
            log::info!(
                "{}: open in passthrough when a rule began to select it; copying it at close",
                String::from_utf8_lossy(&recording.name)
            );
            recording.late_rules = std::mem::take(&mut recording.rules);
        }
        let recorded = w && !recording.rules.is_empty();
        let buffered = recorded && mode == IoMode::Cached && self.writeback();
        if buffered {
            self.buffered_writers.fetch_add(1, Ordering::Relaxed);
        }
        let h = Handle {
            inode: node,
            file,
            mode,
            recorded,
            writable: w,
            sync_writes: flags & (libc::O_SYNC | libc::O_DSYNC) != 0,
            recording: std::sync::Mutex::new(recording),
            passthrough_attached: std::sync::atomic::AtomicBool::new(false),
            unflushed: std::sync::atomic::AtomicU64::new(0),
            buffered,
        };
        Opened {
            fh: self.files.insert(h),
            mode,
        }
    }

    /// Opens node `ino` with `flags` for `caller`.
    pub fn open(&self, caller: Caller, ino: u64, flags: i32) -> FsResult<Opened> {
        self.check_remount();
        let _ns = self.ns_read();
        let node = self.inodes.get(ino)?;
        let path = self.inodes.path(ino)?;
        let trunc = flags & libc::O_TRUNC != 0;
        // Read-only opens need the rules too: they choose the node's I/O mode.
        let recording = self.recording_for(&path);
        let mut own_flags = (flags & !STRIP) | libc::O_NOFOLLOW;
        if self.writeback() {
            // mirrorfs opens as root here: the kernel checked the caller's access already.
            own_flags = readable(own_flags);
        }
        let file = if trunc {
            let _op = lock(&node.op_lock);
            self.rec.room(&recording.rules, &recording.name, 0)?;
            let f = sys::open_at(self.dir(), &path, own_flags, 0)?;
            if !recording.rules.is_empty() {
                let e = EntryRef::new(Command::Truncate, 0, &recording.name);
                self.rec.append(&recording.rules, e)?;
            }
            self.truncated_by(caller, &f, &path)?;
            f
        } else {
            sys::open_at(self.dir(), &path, own_flags, 0)?
        };
        let st = sys::fstat(file.as_fd())?;
        node.setid.store(
            st.mode & (libc::S_ISUID | libc::S_ISGID) != 0,
            Ordering::Relaxed,
        );
        let opened = self.new_handle(node, file, flags, recording);
        let reads = flags & libc::O_ACCMODE != libc::O_WRONLY;
        if reads && opened.mode == IoMode::Cached && self.read_updates_atime(&st) {
            if let Ok(h) = self.files.get(opened.fh) {
                self.touch_atime(ino, &h.file);
            }
        }
        Ok(opened)
    }

    /// After `caller` truncated `path` (open with O_TRUNC): set-id bits go as the file system
    /// would clear them for that user, and the change is recorded.
    fn truncated_by(&self, caller: Caller, f: &std::fs::File, path: &[u8]) -> FsResult<()> {
        let st = sys::fstat(f.as_fd())?;
        if let Some(after) = self.drop_setid(caller, f.as_fd(), &st)? {
            let ch = super::SetAttrs {
                mode: Some(after.mode & 0o7777),
                ..super::SetAttrs::default()
            };
            self.record_setattr(path, &after, &ch)?;
        }
        Ok(())
    }

    /// Creates and opens `name` in `parent`.
    pub fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> FsResult<(EntryOut, Opened)> {
        let _ns = self.ns_read();
        let path = self.inodes.child_path(parent, name)?;
        let own_flags = (flags & !STRIP) | libc::O_NOFOLLOW;
        let recording = self.recording_for(&path);
        self.rec.room(&recording.rules, &recording.name, 64)?;
        let (file, created) = self.create_file(caller, &path, own_flags, flags, mode)?;
        let st = sys::fstat(file.as_fd())?;
        let out = self.entry(parent, name, &st);
        let node = self.inodes.get(out.attr.ino.0)?;
        if !recording.rules.is_empty() {
            let _op = lock(&node.op_lock);
            if created {
                let e = EntryRef {
                    offset: st.mode as u64,
                    ..EntryRef::new(Command::Create, 0, &recording.name)
                };
                self.rec.append(&recording.rules, e)?;
                self.record_attrs(&recording.rules, &recording.name, Self::full_attrs(&st))?;
            } else if flags & libc::O_TRUNC != 0 {
                let e = EntryRef::new(Command::Truncate, 0, &recording.name);
                self.rec.append(&recording.rules, e)?;
            }
        }
        if !created && flags & libc::O_TRUNC != 0 {
            let _op = lock(&node.op_lock);
            self.truncated_by(caller, &file, &path)?;
        }
        node.setid.store(
            st.mode & (libc::S_ISUID | libc::S_ISGID) != 0,
            Ordering::Relaxed,
        );
        let opened = self.new_handle(node, file, flags, recording);
        Ok((out, opened))
    }

    /// Opens `path` creating it, as the caller; says whether it was created (it may have
    /// existed, unless the caller asked for O_EXCL).
    fn create_file(
        &self,
        caller: Caller,
        path: &[u8],
        own_flags: i32,
        flags: i32,
        mode: u32,
    ) -> FsResult<(std::fs::File, bool)> {
        let as_caller = |f: i32| {
            if caller.uid == 0 && caller.gid == 0 {
                return sys::open_at(self.dir(), path, f, mode);
            }
            let first = {
                let _c = FsCreds::switch(caller.uid, caller.gid);
                sys::open_at(self.dir(), path, f, mode)
            };
            match first {
                Err(e) if e.raw_os_error() == Some(libc::EACCES) && f & libc::O_CREAT != 0 => {
                    let file = sys::open_at(self.dir(), path, f, mode)?;
                    sys::fchown(file.as_fd(), caller.uid, caller.gid)?;
                    Ok(file)
                }
                r => r,
            }
        };
        // Readable too when the kernel buffers writes (see `readable`), unless the caller may
        // only write an existing file: then the kernel's reads of it come through `read`.
        let open = |f: i32| {
            let rw = if self.writeback() { readable(f) } else { f };
            match as_caller(rw) {
                Err(e) if rw != f && e.raw_os_error() == Some(libc::EACCES) => as_caller(f),
                r => r,
            }
        };
        // Bounded: the file would have to appear and vanish again between each attempt.
        for _ in 0..8 {
            match open(own_flags | libc::O_CREAT | libc::O_EXCL) {
                Ok(f) => return Ok((f, true)),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                    match open(own_flags) {
                        Ok(f) => return Ok((f, false)),
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(FsError::Errno(libc::EAGAIN))
    }

    /// Replies to an open in passthrough mode: `attach` makes the node's backing id from the
    /// handle's descriptor (once per node; later handles share it) and `send` replies with it.
    /// If the kernel refuses the backing file, passthrough is turned off for good and the reply
    /// comes back as `Err` to be sent without passthrough.
    pub fn reply_passthrough<Rp>(
        &self,
        fh: u64,
        reply: Rp,
        attach: impl FnOnce(&Rp, &std::fs::File) -> io::Result<BackingId>,
        send: impl FnOnce(Rp, &BackingId),
    ) -> Result<(), Rp> {
        let Ok(h) = self.files.get(fh) else {
            return Err(reply);
        };
        let mut pt = lock(&h.inode.passthrough);
        if pt.backing.is_none() {
            match attach(&reply, &h.file) {
                Ok(id) => pt.backing = Some(id),
                Err(e) => {
                    log::warn!(
                        "kernel passthrough refused ({e}); serving all file I/O through mirrorfs from now on"
                    );
                    self.passthrough_failed();
                    return Err(reply);
                }
            }
        }
        pt.users += 1;
        let Some(id) = pt.backing.as_ref() else {
            return Err(reply);
        };
        h.passthrough_attached.store(true, Ordering::Relaxed);
        send(reply, id);
        Ok(())
    }

    /// Reads from handle `fh` (handles the kernel does not pass through).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let h = self.files.get(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        // A write-only handle the kernel reads through (writeback cache: the rest of a page
        // it writes part of) reads from the same file opened again for reading.
        let mut reopened: Option<std::fs::File> = None;
        while got < buf.len() {
            let file = reopened.as_ref().unwrap_or(&h.file);
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Err(e) if e.raw_os_error() == Some(libc::EBADF) && reopened.is_none() => {
                    reopened = Some(sys::reopen_readable(h.file.as_fd())?);
                }
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// After `caller` changed the content of the file of handle `h` (a write, fallocate or
    /// copy into it), named `name`: set-id bits go as the file system would clear them for
    /// that user, and the change is recorded. The kernel leaves this to mirrorfs
    /// (`FUSE_HANDLE_KILLPRIV_V2`), and mirrorfs changes the file as root, whom the file
    /// system below never clears them for.
    fn changed_by(&self, caller: Caller, h: &Handle, name: &[u8]) -> FsResult<()> {
        if caller.uid == 0 || !h.inode.setid.load(Ordering::Relaxed) {
            return Ok(());
        }
        let st = sys::fstat(h.file.as_fd())?;
        let Some(after) = self.drop_setid(caller, h.file.as_fd(), &st)? else {
            return Ok(());
        };
        h.inode.setid.store(
            after.mode & (libc::S_ISUID | libc::S_ISGID) != 0,
            Ordering::Relaxed,
        );
        let Some(rel) = self.rec.relative(name).map(<[u8]>::to_vec) else {
            return Ok(());
        };
        let ch = super::SetAttrs {
            mode: Some(after.mode & 0o7777),
            ..super::SetAttrs::default()
        };
        self.record_setattr(&rel, &after, &ch)
    }

    /// Writes `data` at `offset` through handle `fh`, recording it for every selecting rule.
    /// `written_back`: the kernel writes back pages it buffered (the writer was told of its
    /// write already), so a journal without room does not refuse it: the file gets it, and is
    /// marked to be sent whole ([`super::record::Recorder::room_or_mark`]).
    ///
    /// Large writes copy into the file and into the journal at the same time (two threads,
    /// both done before the reply, under the node's op lock). Should the file write then fail
    /// or come up short, a copy entry follows, so the backup still converges on the file.
    pub fn write(
        &self,
        caller: Caller,
        fh: u64,
        offset: u64,
        data: &[u8],
        written_back: bool,
    ) -> FsResult<u32> {
        let h = self.files.get(fh)?;
        if !h.writable {
            return Err(FsError::Errno(libc::EBADF));
        }
        let _ns = self.ns_read();
        let _op = lock(&h.inode.op_lock);
        // Pages the kernel writes back keep the modification time it gave the file (it sends
        // it with SETATTR, before or after these pages): writing them must not move it.
        let keep_mtime = if written_back {
            Some(sys::fstat(h.file.as_fd())?.mtime)
        } else {
            None
        };
        let n = match self.write_locked(caller, &h, offset, data, written_back) {
            Err(e) if written_back => {
                // The writer was told of this write already; it learns at fsync or close.
                log::error!(
                    "{}: writing back what the kernel had buffered failed ({e}); the program is told at fsync or close, and the mount may show data the file does not hold until the file is opened again",
                    String::from_utf8_lossy(&lock(&h.recording).name)
                );
                return Err(e);
            }
            r => r?,
        };
        if let Some(t) = keep_mtime {
            sys::futimens(h.file.as_fd(), sys::SetTime::Omit, sys::SetTime::At(t))?;
        }
        Ok(n)
    }

    /// [`MirrorFs::write`] under the node's op lock.
    fn write_locked<'a>(
        &self,
        caller: Caller,
        h: &Handle,
        offset: u64,
        data: &'a [u8],
        written_back: bool,
    ) -> FsResult<u32> {
        let mut r = lock(&h.recording);
        self.refresh(h, &mut r);
        r.wrote = true;
        self.changed_by(caller, h, &r.name)?;
        // Room for the entry first; pages written back without room are marked instead.
        let journaled = !r.rules.is_empty()
            && if written_back {
                self.rec.room_or_mark(&r.rules, &r.name, data.len())?
            } else {
                self.rec.room(&r.rules, &r.name, data.len())?;
                true
            };
        if !journaled {
            return Ok(h.file.write_at(data, offset)? as u32);
        }
        let name = r.name.as_slice();
        let entry = |d: &'a [u8]| EntryRef {
            offset,
            size: d.len() as u64,
            data: d,
            ..EntryRef::new(Command::Write, 0, name)
        };
        let n = if data.len() >= PARALLEL_WRITE {
            let (written, journaled) = std::thread::scope(|s| {
                let j = s.spawn(|| self.rec.append(&r.rules, entry(data)));
                let w = h.file.write_at(data, offset);
                (w, j.join())
            });
            let journaled = journaled.unwrap_or(Err(FsError::Errno(libc::EIO)));
            match written {
                Ok(n) if n == data.len() => {
                    journaled?;
                    n
                }
                other => {
                    // The journal holds more than the file got: send the file as it is.
                    self.rec
                        .append(&r.rules, EntryRef::new(Command::Copy, 0, &r.name))?;
                    journaled?;
                    other?
                }
            }
        } else {
            let n = h.file.write_at(data, offset)?;
            self.rec.append(&r.rules, entry(&data[..n]))?;
            n
        };
        if h.sync_writes {
            self.rec.sync()?;
            if !written_back {
                // A write through an O_SYNC/O_DSYNC handle is a durability point.
                self.rec.durability_point(&r.rules);
            }
        } else if n >= PARALLEL_WRITE {
            // A large sequential writer: start writing its data to disk now, as the journal
            // does, so that its fsync finds little left to do.
            let pending = h.unflushed.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            if pending >= WRITEBACK_STEP {
                h.unflushed.store(0, Ordering::Relaxed);
                sys::start_writeback(h.file.as_fd(), 0, 0);
            }
        }
        Ok(n as u32)
    }

    /// The last descriptor of handle `fh` is closed.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let h = self.files.remove(fh)?;
        if h.buffered {
            self.buffered_writers.fetch_sub(1, Ordering::Relaxed);
        }
        if h.passthrough_attached.load(Ordering::Relaxed) {
            let mut pt = lock(&h.inode.passthrough);
            pt.users = pt.users.saturating_sub(1);
            if pt.users == 0 {
                pt.backing = None;
            }
        }
        {
            let mut io = lock(&h.inode.io);
            io.handles = io.handles.saturating_sub(1);
            if io.handles == 0 {
                io.mode = None;
            }
        }
        if !h.writable {
            return Ok(());
        }
        let _ns = self.ns_read();
        let _op = lock(&h.inode.op_lock);
        let mut r = lock(&h.recording);
        self.refresh(&h, &mut r);
        if r.name.is_empty() {
            return Ok(());
        }
        if !r.late_rules.is_empty() {
            log::info!(
                "{}: rules added while it was open for writing; copying it",
                String::from_utf8_lossy(&r.name)
            );
            self.rec
                .append(&r.late_rules, EntryRef::new(Command::Copy, 0, &r.name))?;
        }
        if r.wrote && r.rules.iter().any(|x| x.spec.attrs) {
            // Writes moved the file's times; send them once, at close.
            let st = sys::fstat(h.file.as_fd())?;
            let change = AttrChange {
                atime: Some(st.atime),
                mtime: Some(st.mtime),
                ..AttrChange::default()
            };
            self.record_attrs(&r.rules, &r.name, change)?;
        }
        Ok(())
    }

    /// `fsync` of handle `fh` (the kernel wrote its buffered pages back first, through
    /// `write`): the file and the journal at once, so the call costs one flush of the disk, not
    /// two in a row. The journal is synced whichever handle asks: the written pages may have
    /// come through another handle of the file, and a sync with nothing new returns at once.
    ///
    /// For a file a sync rule selects, the call is a durability point: it waits for the
    /// rule's sites up to the journal's end ([`crate::syncwait`]; the entries left for them
    /// as soon as they were appended, so the wait overlaps the local flush).
    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let h = self.files.get(fh)?;
        let (_, rules) = self.handle_rules(&h);
        self.rec.durability_point(&rules);
        if self.rec.durable() {
            return Ok(sys::fsync(h.file.as_fd(), datasync)?);
        }
        let (file, journal) = std::thread::scope(|s| {
            let j = s.spawn(|| self.rec.sync());
            let f = sys::fsync(h.file.as_fd(), datasync);
            (f, j.join())
        });
        file?;
        journal.unwrap_or(Err(FsError::Errno(libc::EIO)))
    }

    /// Current rules of a writable handle (refreshed).
    fn handle_rules(&self, h: &Handle) -> (Vec<u8>, Rules) {
        let mut r = lock(&h.recording);
        self.refresh(h, &mut r);
        (r.name.clone(), r.rules.clone())
    }

    /// `fallocate` on handle `fh`, recorded by its effect on the content.
    pub fn fallocate(
        &self,
        caller: Caller,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> FsResult<()> {
        let h = self.files.get(fh)?;
        let _ns = self.ns_read();
        let _op = lock(&h.inode.op_lock);
        let (name, rules) = self.handle_rules(&h);
        self.rec.room(&rules, &name, 0)?;
        let before = sys::fstat(h.file.as_fd())?;
        sys::fallocate(h.file.as_fd(), mode, offset, len)?;
        self.changed_by(caller, &h, &name)?;
        let after = sys::fstat(h.file.as_fd())?;
        if rules.is_empty() {
            return Ok(());
        }
        let base = EntryRef::new(Command::Zero, 0, &name);
        if mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0 {
            return self
                .rec
                .append(&rules, EntryRef::new(Command::Copy, 0, &name));
        }
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            let zero_len = len.min(after.size.saturating_sub(offset));
            if zero_len > 0 {
                let e = EntryRef {
                    offset,
                    size: zero_len,
                    ..base
                };
                self.rec.append(&rules, e)?;
            }
        }
        if after.size != before.size {
            let e = EntryRef {
                size: after.size,
                ..EntryRef::new(Command::Truncate, 0, &name)
            };
            self.rec.append(&rules, e)?;
        }
        Ok(())
    }

    /// `lseek` on handle `fh` (SEEK_DATA and SEEK_HOLE reach the underlying file).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        let h = self.files.get(fh)?;
        Ok(sys::lseek(h.file.as_fd(), offset, whence)?)
    }

    /// `copy_file_range` between two handles; the copied range is recorded as writes of the
    /// bytes copied.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_file_range(
        &self,
        caller: Caller,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        flags: u32,
    ) -> FsResult<u32> {
        let hin = self.files.get(fh_in)?;
        let hout = self.files.get(fh_out)?;
        if !hout.writable {
            return Err(FsError::Errno(libc::EBADF));
        }
        let _ns = self.ns_read();
        let _op = lock(&hout.inode.op_lock);
        // At most COPY_RANGE per call (a shorter count is legal; the caller goes on): the
        // node's lock and the namespace lock are held while the range is copied and recorded.
        let len = len.min(COPY_RANGE) as usize;
        {
            let (name, rules) = self.handle_rules(&hout);
            self.rec.room(&rules, &name, len)?;
        }
        let n = sys::copy_file_range(
            hin.file.as_fd(),
            off_in,
            hout.file.as_fd(),
            off_out,
            len,
            flags,
        )?;
        let (name, rules) = {
            let mut r = lock(&hout.recording);
            self.refresh(&hout, &mut r);
            r.wrote = true;
            (r.name.clone(), r.rules.clone())
        };
        if n > 0 {
            self.changed_by(caller, &hout, &name)?;
        }
        if rules.is_empty() || n == 0 {
            return Ok(n as u32);
        }
        let mut buf = vec![0u8; CHUNK.min(n)];
        let mut done = 0usize;
        while done < n {
            let want = (n - done).min(CHUNK);
            // The output may be write-only; the input holds the same bytes (the kernel refuses
            // overlapping ranges of one file).
            hin.file
                .read_exact_at(&mut buf[..want], off_in + done as u64)?;
            let e = EntryRef {
                offset: off_out + done as u64,
                size: want as u64,
                data: &buf[..want],
                ..EntryRef::new(Command::Write, 0, &name)
            };
            self.rec.append(&rules, e)?;
            done += want;
        }
        Ok(n as u32)
    }
}
