//! The durable state the layer remembers, as differences from the backing directory: for each
//! object changed since its last durability point, what it was at that point (captured just
//! before the first change), and the pins and attic that keep replaced objects alive.
//!
//! An object with no entry here is durable exactly as it is in the backing directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::OwnedFd;

use super::sys::Kind;

/// The attributes restored at a power loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attrs {
    /// Permission bits (with set-id and sticky bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Access time (seconds, nanoseconds).
    pub atime: (i64, i64),
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
}

impl Attrs {
    /// The attributes in `st`.
    pub fn of(st: &libc::stat) -> Attrs {
        Attrs {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            atime: (st.st_atime, st.st_atime_nsec),
            mtime: (st.st_mtime, st.st_mtime_nsec),
        }
    }
}

/// A change to a file's content, kept in order for tearing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataOp {
    /// `pwrite(off, data)`.
    Write {
        /// Offset.
        off: u64,
        /// Bytes written.
        data: Vec<u8>,
    },
    /// `ftruncate(size)`.
    SetSize(u64),
    /// `fallocate(mode, off, len)`.
    Fallocate {
        /// `FALLOC_FL_*` flags.
        mode: i32,
        /// Offset.
        off: u64,
        /// Length.
        len: u64,
    },
}

impl DataOp {
    /// Bytes of memory it holds.
    pub fn weight(&self) -> usize {
        match self {
            DataOp::Write { data, .. } => data.len() + 32,
            _ => 32,
        }
    }
}

/// A file whose content changed since its last durability point.
#[derive(Debug, Default)]
pub struct FileData {
    /// Its size at that point.
    pub durable_size: u64,
    /// The durable bytes of every range overwritten, cut or zeroed since (disjoint ranges
    /// within `0..durable_size`, by start offset).
    pub saved: BTreeMap<u64, Vec<u8>>,
    /// The changes since, in order (for tearing).
    pub ops: Vec<DataOp>,
    /// False once an op could not be kept (memory cap): tearing then keeps none of them.
    pub ops_complete: bool,
}

impl FileData {
    /// A file that was `durable_size` bytes long at its last durability point.
    pub fn new(durable_size: u64) -> FileData {
        FileData {
            durable_size,
            saved: BTreeMap::new(),
            ops: Vec::new(),
            ops_complete: true,
        }
    }

    /// The parts of `start..end`, clipped to the durable size, that no saved range covers:
    /// what must be read and saved before that range is changed.
    pub fn uncovered(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let end = end.min(self.durable_size);
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        let mut pos = start;
        // The saved range that starts before `start` may reach into it.
        if let Some((&s, b)) = self.saved.range(..start).next_back() {
            pos = pos.max(s + b.len() as u64);
        }
        for (&s, b) in self.saved.range(start..end) {
            if s > pos {
                out.push((pos, s));
            }
            pos = pos.max(s + b.len() as u64);
        }
        if pos < end {
            out.push((pos, end));
        }
        out
    }

    /// Records the durable bytes `bytes` of `start..start + bytes.len()` (an uncovered part).
    pub fn save(&mut self, start: u64, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.saved.insert(start, bytes);
        }
    }

    /// Bytes of memory it holds.
    pub fn weight(&self) -> usize {
        self.saved.values().map(|b| b.len() + 32).sum::<usize>()
            + self.ops.iter().map(DataOp::weight).sum::<usize>()
    }
}

/// A directory entry as the layer remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DEnt {
    /// The backing inode number.
    pub ino: u64,
    /// Its kind.
    pub kind: Kind,
}

/// A descriptor that keeps an object whose durable name was removed alive and findable, and
/// where it is kept when it has no other name.
#[derive(Debug)]
pub struct Pin {
    /// `O_PATH` descriptor of the object.
    pub fd: OwnedFd,
    /// Its kind.
    pub kind: Kind,
    /// Its name in the attic, when its last name outside was removed.
    pub attic: Option<OsString>,
}

/// Everything not yet durable, as differences from the backing directory.
#[derive(Debug, Default)]
pub struct Model {
    /// Files whose content changed since their last durability point, by backing inode.
    pub data: HashMap<u64, FileData>,
    /// Durable attributes of objects whose attributes (or content) changed since.
    pub attrs: HashMap<u64, Attrs>,
    /// Durable entries of directories whose entries changed since their last fsync.
    pub dirs: HashMap<u64, BTreeMap<OsString, DEnt>>,
    /// Objects a durable name of which was removed.
    pub pins: HashMap<u64, Pin>,
    /// Bytes held in the ops of all files.
    pub op_bytes: usize,
}

impl Model {
    /// Whether nothing is pending.
    pub fn is_clean(&self) -> bool {
        self.data.is_empty()
            && self.attrs.is_empty()
            && self.dirs.is_empty()
            && self.pins.is_empty()
    }

    /// Whether `dir/name` → `ino` is a durable link (the directory's entries changed since
    /// its last fsync and the link was there then, or they did not change).
    pub fn is_durable_link(&self, dir: u64, name: &std::ffi::OsStr, ino: u64) -> bool {
        match self.dirs.get(&dir) {
            Some(entries) => entries.get(name).map(|e| e.ino) == Some(ino),
            None => true,
        }
    }

    /// Takes the content changes of file `ino` out of the model.
    pub fn take_data(&mut self, ino: u64) -> Option<FileData> {
        let d = self.data.remove(&ino)?;
        self.op_bytes -= d.ops.iter().map(DataOp::weight).sum::<usize>();
        Some(d)
    }

    /// Forgets every state of `ino` (an object that no longer exists and is not needed).
    pub fn drop_object(&mut self, ino: u64) {
        self.take_data(ino);
        self.attrs.remove(&ino);
        self.dirs.remove(&ino);
        self.pins.remove(&ino);
    }

    /// The pinned objects some durable state still refers to: those named by the remembered
    /// entries of a directory that is alive (not in the attic), and, transitively, by those of
    /// a directory in the attic that is itself needed.
    pub fn needed(&self) -> HashSet<u64> {
        let in_attic = |ino: &u64| self.pins.get(ino).is_some_and(|p| p.attic.is_some());
        let mut needed = HashSet::new();
        let mut stack: Vec<u64> = Vec::new();
        for (dir, entries) in &self.dirs {
            if !in_attic(dir) {
                stack.extend(entries.values().map(|e| e.ino));
            }
        }
        // Each inode is expanded once: bounded by the number of remembered entries.
        while let Some(ino) = stack.pop() {
            if needed.insert(ino) && in_attic(&ino) {
                if let Some(entries) = self.dirs.get(&ino) {
                    stack.extend(entries.values().map(|e| e.ino));
                }
            }
        }
        needed
    }

    /// Counts for the control interface.
    pub fn counts(&self) -> serde_json::Value {
        serde_json::json!({
            "files": self.data.len(),
            "attrs": self.attrs.len(),
            "dirs": self.dirs.len(),
            "pins": self.pins.len(),
            "attic": self.pins.values().filter(|p| p.attic.is_some()).count(),
            "held_bytes": self.data.values().map(FileData::weight).sum::<usize>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncovered_clips_to_the_durable_size_and_skips_saved_ranges() {
        let mut f = FileData::new(100);
        assert_eq!(f.uncovered(10, 20), vec![(10, 20)]);
        assert_eq!(f.uncovered(90, 200), vec![(90, 100)]);
        assert_eq!(f.uncovered(100, 200), vec![]);
        f.save(10, vec![0; 10]);
        f.save(40, vec![0; 10]);
        assert_eq!(f.uncovered(0, 100), vec![(0, 10), (20, 40), (50, 100)]);
        assert_eq!(f.uncovered(15, 45), vec![(20, 40)]);
        assert_eq!(f.uncovered(12, 18), vec![]);
        assert_eq!(f.uncovered(45, 55), vec![(50, 55)]);
        // Saving the gaps covers everything.
        for (s, e) in f.uncovered(0, 100) {
            f.save(s, vec![0; (e - s) as usize]);
        }
        assert_eq!(f.uncovered(0, 1000), vec![]);
    }
}
