//! Copy expansion (seeds/002 [0065]): a copy entry becomes the entries that recreate the file
//! as it is now: its data as writes, then its final size (and, with `--attrs`, its mode,
//! owner, times and xattrs). A directory becomes its subtree: a mkdir per selected directory
//! and the above per selected file, symlink and fifo.
//!
//! Parts are produced one at a time (a subtree may be large). All carry the copy entry's
//! journal position; the last says [`Part::Last`], so the router counts the position as
//! received only when the whole copy is durable. Copies the router asks for
//! ([`mirrorfs::wire::Msg::Resync`]) are [`Part::Extra`], and end with a [`Command::Copy`]
//! entry of the name asked for (the router skips it): it tells the router that the copy it
//! asked for is complete (or that there is nothing to send), so that it stops asking.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use mirrorfs::entry::{AttrChange, Command, Timestamp};
use mirrorfs::journal::Position;
use mirrorfs::rule::{PatternKind, Rule};
use mirrorfs::wire::{Part, WireEntry};

/// Bytes per write part.
pub const CHUNK: usize = 1 << 20;

enum Task {
    Visit(Vec<u8>),
    File {
        name: Vec<u8>,
        file: File,
        offset: u64,
    },
    Emit(WireEntry),
}

/// What the answer to a router's request for a copy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The copy.
    Copy,
    /// The deletion (the name is gone here).
    Deletion,
    /// Nothing (refused).
    Nothing,
}

/// One copy being expanded.
pub struct CopyJob {
    pos: Position,
    extra: bool,
    rule: Arc<Rule>,
    tasks: Vec<Task>,
    buffered: Option<WireEntry>,
}

impl std::fmt::Debug for CopyJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyJob")
            .field("pos", &self.pos)
            .field("extra", &self.extra)
            .finish()
    }
}

fn entry(command: Command, rule: &Rule, name: &[u8]) -> WireEntry {
    WireEntry {
        pos: Position::START,
        part: Part::More,
        command,
        rule_crc: rule.crc,
        name: name.to_vec(),
        aux: Vec::new(),
        offset: 0,
        size: 0,
        time_ns: mirrorfs::now_ns(),
        data: Vec::new(),
    }
}

fn path_of(name: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(name))
}

impl CopyJob {
    /// The copy of `name` for `rule`, from the journal entry at `pos`.
    pub fn new(pos: Position, rule: Arc<Rule>, name: Vec<u8>) -> CopyJob {
        CopyJob {
            pos,
            extra: false,
            rule,
            tasks: vec![Task::Visit(name)],
            buffered: None,
        }
    }

    /// A copy the router asked for (not from the journal).
    pub fn extra(rule: Arc<Rule>, name: Vec<u8>) -> CopyJob {
        CopyJob {
            extra: true,
            ..CopyJob::new(Position::START, rule, name)
        }
    }

    /// The answer to the router's request for `name` ([`mirrorfs::wire::Msg::Resync`]): its
    /// copy, its deletion (`Answer::Deletion`: it is gone here) or nothing, then the entry
    /// that says the answer is complete.
    pub fn requested(rule: Arc<Rule>, name: Vec<u8>, answer: Answer) -> CopyJob {
        let done = Task::Emit(entry(Command::Copy, &rule, &name));
        let mut job = match answer {
            Answer::Copy => CopyJob::extra(rule, name),
            Answer::Deletion => CopyJob::deletion(rule, name),
            Answer::Nothing => CopyJob {
                tasks: Vec::new(),
                ..CopyJob::extra(rule, name)
            },
        };
        // Tasks are taken from the end: this one comes out last.
        job.tasks.insert(0, done);
        job
    }

    /// Not a copy: the deletion of `name` on the backup (a dirty file that no longer exists
    /// at the source), not from the journal.
    pub fn deletion(rule: Arc<Rule>, name: Vec<u8>) -> CopyJob {
        let e = entry(Command::Delete, &rule, &name);
        CopyJob {
            tasks: vec![Task::Emit(e)],
            ..CopyJob::extra(rule, name)
        }
    }

    /// The next part, `None` when the copy is complete. A source that vanished sends nothing
    /// (its deletion follows in the journal).
    pub fn next_part(&mut self) -> Option<WireEntry> {
        loop {
            let raw = self.next_raw();
            let (out, last) = match (self.buffered.take(), raw) {
                (None, None) => return None,
                (None, Some(e)) => {
                    self.buffered = Some(e);
                    continue;
                }
                (Some(b), Some(e)) => {
                    self.buffered = Some(e);
                    (b, false)
                }
                (Some(b), None) => (b, true),
            };
            let part = match (self.extra, last) {
                (true, _) => Part::Extra,
                (false, true) => Part::Last,
                (false, false) => Part::More,
            };
            return Some(WireEntry {
                pos: self.pos,
                part,
                ..out
            });
        }
    }

    fn is_base(&self, name: &[u8]) -> bool {
        let p = self.rule.spec.pattern.prefix();
        name.len() + 1 == p.len() && p.starts_with(name)
    }

    fn next_raw(&mut self) -> Option<WireEntry> {
        while let Some(task) = self.tasks.pop() {
            match task {
                Task::Emit(e) => return Some(e),
                Task::Visit(name) => {
                    if let Some(e) = self.visit(name) {
                        return Some(e);
                    }
                }
                Task::File { name, file, offset } => {
                    let mut buf = vec![0u8; CHUNK];
                    match file.read_at(&mut buf, offset) {
                        Ok(n) if n > 0 => {
                            buf.truncate(n);
                            let e = WireEntry {
                                offset,
                                size: n as u64,
                                data: buf,
                                ..entry(Command::Write, &self.rule, &name)
                            };
                            self.tasks.push(Task::File {
                                name,
                                file,
                                offset: offset + n as u64,
                            });
                            return Some(e);
                        }
                        Ok(_) => {
                            if self.rule.spec.attrs {
                                if let Ok(m) = file.metadata() {
                                    self.push_attrs(&name, &m);
                                }
                            }
                            return Some(WireEntry {
                                size: offset,
                                ..entry(Command::Truncate, &self.rule, &name)
                            });
                        }
                        Err(e) => {
                            log::warn!(
                                "copy of {}: read failed at offset {offset}: {e}; the rest is skipped",
                                String::from_utf8_lossy(&name)
                            );
                        }
                    }
                }
            }
        }
        None
    }

    /// Starts on `name`; may return its first entry.
    fn visit(&mut self, name: Vec<u8>) -> Option<WireEntry> {
        let path = path_of(&name);
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("copy of {}: {e}", path.display());
                }
                return None;
            }
        };
        let ft = meta.file_type();
        let rule = self.rule.clone();
        let pattern = &rule.spec.pattern;
        if ft.is_dir() {
            let selected = self.is_base(&name) || pattern.match_dir(&name).is_some();
            if selected && self.rule.spec.attrs {
                self.push_attrs(&name, &meta);
            }
            let mut children: Vec<Vec<u8>> = match fs::read_dir(path) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().as_bytes().to_vec())
                    .collect(),
                Err(e) => {
                    log::warn!("copy of {}: cannot list: {e}", path.display());
                    Vec::new()
                }
            };
            children.sort();
            let subtree = pattern.kind().is_subtree();
            for c in children.into_iter().rev() {
                let mut full = name.clone();
                full.push(b'/');
                full.extend_from_slice(&c);
                let is_dir = fs::symlink_metadata(path_of(&full)).is_ok_and(|m| m.is_dir());
                let wanted = if is_dir {
                    subtree
                } else {
                    pattern.match_file(&full).is_some()
                };
                if wanted {
                    self.tasks.push(Task::Visit(full));
                }
            }
            if !selected || pattern.kind() == PatternKind::File {
                return None;
            }
            return Some(WireEntry {
                offset: u64::from(meta.mode()),
                ..entry(Command::Mkdir, &self.rule, &name)
            });
        }
        pattern.match_file(&name)?;
        if ft.is_file() {
            match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
            {
                Ok(file) => self.tasks.push(Task::File {
                    name,
                    file,
                    offset: 0,
                }),
                Err(e) => log::warn!("copy of {}: cannot open: {e}", path.display()),
            }
            return None;
        }
        if ft.is_symlink() {
            let target = match fs::read_link(path) {
                Ok(t) => t,
                Err(e) => {
                    log::warn!("copy of {}: {e}", path.display());
                    return None;
                }
            };
            if self.rule.spec.attrs {
                self.push_attrs(&name, &meta);
            }
            return Some(WireEntry {
                aux: target.as_os_str().as_bytes().to_vec(),
                ..entry(Command::Symlink, &self.rule, &name)
            });
        }
        if meta.mode() & libc::S_IFMT == libc::S_IFIFO {
            return Some(WireEntry {
                offset: u64::from(meta.mode()),
                ..entry(Command::Mknod, &self.rule, &name)
            });
        }
        None
    }

    /// Queues the attribute entries of `name` (they come out after what is queued later).
    fn push_attrs(&mut self, name: &[u8], m: &fs::Metadata) {
        let ts = |sec: i64, nsec: i64| Timestamp {
            sec,
            nsec: nsec as u32,
        };
        let change = AttrChange {
            mode: (!m.file_type().is_symlink()).then_some(m.mode() & 0o7777),
            uid: Some(m.uid()),
            gid: Some(m.gid()),
            atime: Some(ts(m.atime(), m.atime_nsec())),
            mtime: Some(ts(m.mtime(), m.mtime_nsec())),
        };
        self.tasks.push(Task::Emit(WireEntry {
            data: change.encode().to_vec(),
            ..entry(Command::SetAttr, &self.rule, name)
        }));
        for (k, v) in xattrs(path_of(name)) {
            self.tasks.push(Task::Emit(WireEntry {
                aux: k,
                data: v,
                ..entry(Command::SetXattr, &self.rule, name)
            }));
        }
    }
}

/// The extended attributes of `path` (not following a symlink); empty on any error.
fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return Vec::new();
    };
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: c is valid; names has the given capacity.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for key in names.split(|&b| b == 0).filter(|k| !k.is_empty()) {
        let Ok(k) = std::ffi::CString::new(key) else {
            continue;
        };
        let mut val = vec![0u8; 64 << 10];
        // SAFETY: c and k are valid; val has the given capacity.
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), k.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if m >= 0 {
            val.truncate(m as usize);
            out.push((key.to_vec(), val));
        }
    }
    out
}
