//! The journal writer: append, group-commit sync, rotation, and recovery on open.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::format::{self, SegmentHeader, SEGMENT_HEADER_LEN};
use super::{list_segments, segment_path, JournalError, Position};
use crate::entry::EntryRef;
use crate::state::{fsync_dir, LockFile};

/// Journal settings.
#[derive(Debug, Clone, Copy)]
pub struct JournalConfig {
    /// A segment is sealed and a new one started once it would grow past this many bytes.
    pub segment_size: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            segment_size: 64 << 20,
        }
    }
}

struct Active {
    header: SegmentHeader,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
    index: Vec<u64>,
    poisoned: bool,
    /// Offset up to which writeback has been started.
    kicked: u64,
    /// The newest mark, kept so that every new segment starts with one (the older segments
    /// may be removed once sent).
    mark: Option<Watermark>,
    /// Whether the segment's blocks were reserved up to the segment size (appends within it
    /// then cannot run out of space).
    preallocated: bool,
}

/// Start writeback of the journal after this many new bytes, so that a later fsync (the
/// application's, through [`Journal::sync`]) finds most of them already on disk.
const WRITEBACK_STEP: u64 = 8 << 20;

/// The newest watermark in the journal (a [`Command::Mark`] record): every change made before
/// `time_ns` has its entries before `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// The mark's time, ns since the Unix epoch.
    pub time_ns: u64,
    /// Written at a clean unmount.
    pub clean: bool,
    /// Where the mark record is.
    pub pos: Position,
}

/// The newest mark among the records of `bytes` (a segment) at `offsets`.
fn last_mark(bytes: &[u8], segment: u64, offsets: &[u64]) -> Option<Watermark> {
    offsets.iter().rev().find_map(|&o| {
        let (time_ns, flags) = format::peek_mark(bytes.get(o as usize..)?)?;
        Some(Watermark {
            time_ns,
            clean: flags & crate::entry::MARK_CLEAN != 0,
            pos: Position::new(segment, o),
        })
    })
}

#[derive(Default)]
struct SyncState {
    durable: Position,
    in_progress: bool,
}

/// The journal writer. `Sync`: append from many threads at once.
pub struct Journal {
    dir: PathBuf,
    sizing: Sizing,
    active: Mutex<Active>,
    sync_state: Mutex<SyncState>,
    sync_done: Condvar,
    _lock: LockFile,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; the poisoned flag in `Active`
    // is what guards the journal's consistency.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes all of `bufs` at `offset`, continuing after short writes.
fn pwritev_all(file: &File, bufs: &[&[u8]], mut offset: u64) -> io::Result<()> {
    let mut iov: Vec<libc::iovec> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut first = 0;
    while first < iov.len() {
        let cnt = (iov.len() - first).min(libc::UIO_MAXIOV as usize);
        // SAFETY: every iovec points into a slice borrowed for this call; the kernel only reads.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov[first..].as_ptr(),
                cnt as libc::c_int,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote 0 bytes",
            ));
        }
        let mut n = n as usize;
        offset += n as u64;
        while first < iov.len() && n >= iov[first].iov_len {
            n -= iov[first].iov_len;
            first += 1;
        }
        if n > 0 {
            let v = &mut iov[first];
            // SAFETY: n < iov_len, so the advanced pointer stays inside the same slice.
            v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
            v.iov_len -= n;
        }
    }
    Ok(())
}

/// How big segments are and what the journal leaves free, for the file system it is on.
#[derive(Debug, Clone, Copy)]
struct Sizing {
    /// Segment size: the configured one, but at most a 16th of a small file system (and at
    /// least 256 KiB), so that sent segments can go and their space come back.
    segment: u64,
    /// Bytes of the file system never used for segments ([`crate::state::reserve_for`]).
    reserve: u64,
}

impl Sizing {
    fn of(dir: &Path, cfg: JournalConfig) -> Sizing {
        match crate::state::space(dir) {
            Ok((total, _)) => Sizing {
                segment: cfg.segment_size.min((total / 16).max(256 << 10)),
                reserve: crate::state::reserve_for(total),
            },
            Err(_) => Sizing {
                segment: cfg.segment_size,
                reserve: 0,
            },
        }
    }

    /// `Ok` if `need` more bytes leave the reserve free on the journal's file system.
    fn check(&self, dir: &Path, need: u64) -> Result<(), JournalError> {
        match crate::state::space(dir) {
            Ok((_, free)) if free < need.saturating_add(self.reserve) => Err(JournalError::Full {
                dir: dir.to_path_buf(),
                need,
                free,
                reserve: self.reserve,
            }),
            _ => Ok(()),
        }
    }
}

/// Creates segment `n` of `size` bytes (its blocks reserved when the file system can), if
/// the file system has room for it beyond the reserve; whether the blocks are reserved.
fn create_segment(
    dir: &Path,
    n: u64,
    size: u64,
    sizing: Sizing,
) -> Result<(File, SegmentHeader, PathBuf, bool), JournalError> {
    sizing.check(dir, size)?;
    let path = segment_path(dir, n);
    let io_err = |e| JournalError::io(&path, e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err)?;
    let header = SegmentHeader::new(n);
    file.write_all_at(&header.encode(), 0).map_err(io_err)?;
    // Reserve the segment's blocks up front (the file's size stays as written): appends then
    // cannot run out of space, and skip the file system's per-page allocation work. A file
    // system without fallocate allocates as it goes (the journal then checks the free space
    // before each change instead).
    // SAFETY: plain syscall on a descriptor we own.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            0,
            size as libc::off_t,
        )
    };
    let preallocated = rc == 0;
    if !preallocated && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSPC) {
        drop(file);
        let _ = fs::remove_file(&path);
        let free = crate::state::space(dir).map_or(0, |(_, f)| f);
        return Err(JournalError::Full {
            dir: dir.to_path_buf(),
            need: size,
            free,
            reserve: sizing.reserve,
        });
    }
    file.sync_all().map_err(io_err)?;
    fsync_dir(dir).map_err(|e| JournalError::io(dir, e))?;
    Ok((file, header, path, preallocated))
}

impl Journal {
    /// Opens the journal in `dir` for appending (creating it), recovering the newest segment.
    ///
    /// Fails if another process has it open, or if a segment is corrupt other than at the
    /// tail of the newest one.
    pub fn open(dir: &Path, cfg: JournalConfig) -> Result<Journal, JournalError> {
        crate::state::private_dir(dir).map_err(|e| JournalError::io(dir, e))?;
        let lock_file = LockFile::acquire(&dir.join("LOCK"))?;
        let sizing = Sizing::of(dir, cfg);
        let segs = list_segments(dir)?;
        let active = match segs.split_last() {
            None => Self::fresh(dir, 1, sizing)?,
            Some((&last, older)) => {
                for &s in older {
                    check_header(dir, s)?;
                }
                Self::recover(dir, last, sizing)?
            }
        };
        let durable = Position::new(active.header.segment, active.len);
        let unclean = active.ended_uncleanly();
        let j = Journal {
            dir: dir.to_path_buf(),
            sizing,
            active: Mutex::new(active),
            sync_state: Mutex::new(SyncState {
                durable,
                in_progress: false,
            }),
            sync_done: Condvar::new(),
            _lock: lock_file,
        };
        if unclean {
            // The writer stopped without a clean unmount: what it appended after its last
            // sync may be lost now (a power loss), though a reader (the sender) may have
            // seen it and a router acknowledged it. Its positions must never name other
            // records: the recovered segment is sealed where it ends now and appends go on
            // in the next one.
            let mut a = lock(&j.active);
            log::info!(
                "journal {}: the last writer stopped without a clean unmount; sealing segment {} at offset {} and going on in segment {}",
                dir.display(),
                a.header.segment,
                a.len,
                a.header.segment + 1
            );
            j.rotate(&mut a, 0)?;
        }
        Ok(j)
    }

    fn fresh(dir: &Path, n: u64, sizing: Sizing) -> Result<Active, JournalError> {
        let (file, header, path, preallocated) = create_segment(dir, n, sizing.segment, sizing)?;
        Ok(Active {
            header,
            path,
            file: Arc::new(file),
            len: SEGMENT_HEADER_LEN,
            index: Vec::new(),
            poisoned: false,
            kicked: SEGMENT_HEADER_LEN,
            mark: None,
            preallocated,
        })
    }

    /// Recovers the newest segment `n`: truncates a torn tail, or starts segment `n + 1` if
    /// `n` was sealed.
    fn recover(dir: &Path, n: u64, sizing: Sizing) -> Result<Active, JournalError> {
        let path = segment_path(dir, n);
        let io_err = |e| JournalError::io(&path, e);
        let bytes = fs::read(&path).map_err(io_err)?;
        let corrupt = |offset, reason| JournalError::Corrupt {
            path: path.clone(),
            segment: n,
            offset,
            reason,
        };
        let header = match SegmentHeader::decode(&bytes) {
            Ok(h) => h,
            // A header that never became durable: the segment was being created when the
            // writer died, before any record could be appended. Start it again.
            Err(e) if bytes.len() <= SEGMENT_HEADER_LEN as usize => {
                log::warn!(
                    "journal {}: header of the newest segment is incomplete ({e}); recreating it",
                    path.display()
                );
                fs::remove_file(&path).map_err(io_err)?;
                return Self::fresh(dir, n, sizing);
            }
            Err(e) => return Err(corrupt(0, e)),
        };
        if header.segment != n {
            return Err(corrupt(
                0,
                format::FormatError::BadLength("header names another segment"),
            ));
        }
        if header.sealed {
            let offsets = bytes
                .get(header.index_offset as usize..)
                .and_then(|b| format::decode_index(b).ok())
                .unwrap_or_default();
            let mut next = Self::fresh(dir, n + 1, sizing)?;
            next.carry(last_mark(&bytes, n, &offsets))?;
            return Ok(next);
        }
        let mut index = Vec::new();
        let mut pos = SEGMENT_HEADER_LEN as usize;
        let mut damage = None;
        while pos < bytes.len() {
            match format::verify_record(&bytes[pos..]) {
                Ok(len) => {
                    index.push(pos as u64);
                    pos += len;
                }
                Err(e) => {
                    damage = Some(e);
                    break;
                }
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err)?;
        if let Some(reason) = damage {
            if let Some(rel) = format::find_valid_record(&bytes[pos + 1..]) {
                // Damage with valid records after it is not a torn tail: the records are kept
                // as they are, the segment is sealed around them (its index lists every record
                // that reads), and appends go on in a new segment. The sender meets the damage
                // as in any sealed segment: it blocks the site with the reason, skips it, and
                // sends the files concerned whole.
                log::error!(
                    "journal {}: record at offset {pos} is damaged ({reason}) and valid records follow (at offset {}); sealing the segment as it is and going on in the next one",
                    path.display(),
                    pos + 1 + rel
                );
                let mut at = pos + 1 + rel;
                while at < bytes.len() {
                    match format::verify_record(&bytes[at..]) {
                        Ok(len) => {
                            index.push(at as u64);
                            at += len;
                        }
                        Err(_) => match format::find_valid_record(&bytes[at + 1..]) {
                            Some(r) => at += 1 + r,
                            None => break,
                        },
                    }
                }
                let end = index
                    .last()
                    .and_then(|&o| {
                        format::verify_record(&bytes[o as usize..])
                            .ok()
                            .map(|l| o as usize + l)
                    })
                    .unwrap_or(pos);
                file.set_len(end as u64).map_err(io_err)?;
                let mark = last_mark(&bytes, n, &index);
                let mut damaged = Active {
                    header,
                    path: path.clone(),
                    file: Arc::new(file),
                    len: end as u64,
                    index,
                    poisoned: false,
                    kicked: end as u64,
                    mark,
                    preallocated: false,
                };
                seal(&mut damaged)?;
                let mut next = Self::fresh(dir, n + 1, sizing)?;
                next.carry(mark)?;
                return Ok(next);
            }
            log::warn!(
                "journal {}: torn tail at offset {pos} ({} bytes: {reason}); truncated to the last complete record",
                path.display(),
                bytes.len() - pos
            );
            file.set_len(pos as u64).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
        }
        let mark = last_mark(&bytes, n, &index);
        Ok(Active {
            header,
            path,
            file: Arc::new(file),
            len: pos as u64,
            index,
            poisoned: false,
            kicked: pos as u64,
            mark,
            // Recovered: whether its blocks are reserved is not known; count on nothing.
            preallocated: false,
        })
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the next record will go.
    pub fn end(&self) -> Position {
        let a = lock(&self.active);
        Position::new(a.header.segment, a.len)
    }

    /// Appends one entry and returns its position. When this returns, the record is in the
    /// kernel (it survives a crash of this process); call [`Journal::sync`] for durability.
    pub fn append(&self, e: &EntryRef<'_>) -> Result<Position, JournalError> {
        format::check_limits(e).map_err(|reason| JournalError::TooLarge {
            name: String::from_utf8_lossy(e.name).into_owned(),
            reason,
        })?;
        let header = format::encode_record_header(e);
        let len = format::record_len(e) as u64;
        let mut a = lock(&self.active);
        if a.poisoned {
            return Err(JournalError::Poisoned(self.dir.clone()));
        }
        if a.len > SEGMENT_HEADER_LEN && a.len + len > self.sizing.segment {
            self.rotate(&mut a, len)?;
        }
        let pos = a.write(&header, e)?;
        let kick = (a.len - a.kicked >= WRITEBACK_STEP).then(|| {
            let range = (a.file.clone(), a.kicked, a.len - a.kicked);
            a.kicked = a.len;
            range
        });
        drop(a);
        if let Some((file, from, n)) = kick {
            crate::fs::sys::start_writeback(file.as_fd(), from, n);
        }
        Ok(pos)
    }

    /// The newest watermark, if the journal has one.
    pub fn watermark(&self) -> Option<Watermark> {
        lock(&self.active).mark
    }

    /// Whether `bytes` more can be appended (in the active segment's reserved blocks, or in a
    /// new segment that leaves the file system's reserve free): asked before a change is
    /// made, so that a change the journal cannot take is refused (`ENOSPC`) rather than made
    /// and lost.
    pub fn room(&self, bytes: u64) -> Result<(), JournalError> {
        let a = lock(&self.active);
        if a.poisoned {
            return Err(JournalError::Poisoned(self.dir.clone()));
        }
        let in_segment = a.len + bytes <= self.sizing.segment;
        if in_segment && a.preallocated {
            return Ok(());
        }
        let need = if in_segment || a.len <= SEGMENT_HEADER_LEN {
            bytes
        } else {
            self.sizing.segment.max(bytes + SEGMENT_HEADER_LEN)
        };
        drop(a);
        self.sizing.check(&self.dir, need)
    }

    /// Seals the active segment (index, header, fsync) and starts the next one (big enough
    /// for a record of `next` bytes). Without room for the next segment, nothing changes.
    fn rotate(&self, a: &mut Active, next: u64) -> Result<(), JournalError> {
        let size = self.sizing.segment.max(next + SEGMENT_HEADER_LEN);
        self.sizing.check(&self.dir, size)?;
        if let Err(e) = seal(a) {
            a.poisoned = true;
            return Err(e);
        }
        let sealed_end = Position::new(a.header.segment, a.len);
        let (file, header, path, preallocated) =
            match create_segment(&self.dir, a.header.segment + 1, size, self.sizing) {
                Ok(x) => x,
                Err(e) => {
                    a.poisoned = true;
                    return Err(e);
                }
            };
        log::debug!(
            "journal: sealed segment {}, started {}",
            a.header.segment,
            header.segment
        );
        let mark = a.mark;
        *a = Active {
            header,
            path,
            file: Arc::new(file),
            len: SEGMENT_HEADER_LEN,
            index: Vec::new(),
            poisoned: false,
            kicked: SEGMENT_HEADER_LEN,
            mark: None,
            preallocated,
        };
        {
            let mut s = lock(&self.sync_state);
            s.durable = s.durable.max(sealed_end);
        }
        a.carry(mark)
    }

    /// Whether every entry appended so far is durable already ([`Journal::sync`] would return
    /// at once).
    pub fn is_durable(&self) -> bool {
        let target = self.end();
        lock(&self.sync_state).durable >= target
    }

    /// Makes every entry appended before this call durable (group commit: while one caller
    /// runs `fdatasync`, later callers wait and the next one syncs for all of them).
    pub fn sync(&self) -> Result<(), JournalError> {
        let target = self.end();
        let mut s = lock(&self.sync_state);
        loop {
            if s.durable >= target {
                return Ok(());
            }
            if !s.in_progress {
                break;
            }
            s = self.sync_done.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.in_progress = true;
        drop(s);
        // Sync as far as has been appended now, to serve callers that arrived meanwhile.
        let (end, file, path) = {
            let a = lock(&self.active);
            if a.poisoned {
                let mut s = lock(&self.sync_state);
                s.in_progress = false;
                self.sync_done.notify_all();
                return Err(JournalError::Poisoned(self.dir.clone()));
            }
            (
                Position::new(a.header.segment, a.len),
                a.file.clone(),
                a.path.clone(),
            )
        };
        let res = file.sync_data();
        let mut s = lock(&self.sync_state);
        s.in_progress = false;
        if res.is_ok() {
            s.durable = s.durable.max(end);
        }
        self.sync_done.notify_all();
        drop(s);
        if let Err(e) = res {
            // After a failed fsync the page cache state is unknown: stop accepting appends.
            let mut a = lock(&self.active);
            a.poisoned = true;
            log::error!(
                "journal {}: fsync failed ({e}); refusing further appends",
                path.display()
            );
            return Err(JournalError::io(&path, e));
        }
        Ok(())
    }

    /// Seals the active segment and starts a new one now (used by tests and tools).
    pub fn rotate_now(&self) -> Result<(), JournalError> {
        let mut a = lock(&self.active);
        if a.poisoned {
            return Err(JournalError::Poisoned(self.dir.clone()));
        }
        self.rotate(&mut a, 0)
    }
}

/// Seals segment `a` (index after its last record, header, fsync) and gives back the blocks
/// reserved beyond it.
fn seal(a: &mut Active) -> Result<(), JournalError> {
    let io = |e| JournalError::io(&a.path, e);
    let idx = format::encode_index(&a.index);
    a.file.write_all_at(&idx, a.len).map_err(io)?;
    let mut h = a.header;
    h.sealed = true;
    h.index_offset = a.len;
    h.total_size = a.len + idx.len() as u64;
    h.record_count = a.index.len() as u64;
    a.file.write_all_at(&h.encode(), 0).map_err(io)?;
    a.file.sync_all().map_err(io)?;
    // Give back the reserved blocks the segment did not use (truncating to its own size
    // releases them on ext4).
    a.file.set_len(h.total_size).map_err(io)?;
    a.header = h;
    Ok(())
}

impl Active {
    /// Whether this (recovered, unsealed) segment does not end with a clean unmount's
    /// watermark: its writer stopped uncleanly, and may have appended records that are gone
    /// now.
    fn ended_uncleanly(&self) -> bool {
        let Some(&last) = self.index.last() else {
            // Nothing durable in it, not even a watermark (the first one of every segment is
            // made durable at once): nothing was appended to it before the writer stopped.
            return false;
        };
        !self
            .mark
            .is_some_and(|m| m.clean && m.pos == Position::new(self.header.segment, last))
    }

    /// Writes the record `header` + `e` at the end of the segment; its position.
    fn write(&mut self, header: &[u8], e: &EntryRef<'_>) -> Result<Position, JournalError> {
        let pos = Position::new(self.header.segment, self.len);
        if let Err(err) = pwritev_all(&self.file, &[header, e.name, e.aux, e.data], self.len) {
            // Take back whatever part reached the file, so no torn record sits mid-segment.
            if let Err(e2) = self.file.set_len(self.len) {
                log::error!(
                    "journal {}: could not cut back a failed append ({e2}); refusing further appends",
                    self.path.display()
                );
                self.poisoned = true;
            }
            return Err(JournalError::io(&self.path, err));
        }
        self.len += format::record_len(e) as u64;
        self.index.push(pos.offset);
        if e.command == crate::entry::Command::Mark {
            if self.mark.is_none() {
                // The first watermark of a segment (carried into it, or a new journal's
                // first) is durable before anything follows it: after a power loss the
                // newest segment still tells how far the journal is complete (else the next
                // mount would look for no changes, as after a first mount), and a segment
                // with nothing durable in it was never appended to.
                if let Err(err) = self.file.sync_data() {
                    self.poisoned = true;
                    return Err(JournalError::io(&self.path, err));
                }
            }
            self.mark = Some(Watermark {
                time_ns: e.offset,
                clean: e.size & crate::entry::MARK_CLEAN != 0,
                pos,
            });
        }
        Ok(pos)
    }

    /// Starts this (new, empty) segment with the newest mark of the one before, if any, so
    /// that the newest segment always tells how far the journal is complete.
    fn carry(&mut self, mark: Option<Watermark>) -> Result<(), JournalError> {
        let Some(m) = mark else {
            return Ok(());
        };
        let e = EntryRef {
            offset: m.time_ns,
            size: if m.clean { crate::entry::MARK_CLEAN } else { 0 },
            ..EntryRef::new(crate::entry::Command::Mark, 0, b"")
        };
        self.write(&format::encode_record_header(&e), &e).map(drop)
    }
}

/// Checks the header of an older (non-newest) segment.
fn check_header(dir: &Path, n: u64) -> Result<(), JournalError> {
    let path = segment_path(dir, n);
    let mut buf = [0u8; SEGMENT_HEADER_LEN as usize];
    let file = File::open(&path).map_err(|e| JournalError::io(&path, e))?;
    let got = file
        .read_at(&mut buf, 0)
        .map_err(|e| JournalError::io(&path, e))?;
    let corrupt = |reason| JournalError::Corrupt {
        path: path.clone(),
        segment: n,
        offset: 0,
        reason,
    };
    let h = SegmentHeader::decode(&buf[..got]).map_err(corrupt)?;
    if h.segment != n {
        return Err(corrupt(format::FormatError::BadLength(
            "header names another segment",
        )));
    }
    if !h.sealed {
        return Err(corrupt(format::FormatError::BadLength(
            "segment older than the newest is not sealed",
        )));
    }
    Ok(())
}
