//! Open file handles: the open file list of seeds/002 \[0045\].
//!
//! Each handle is opened in one of three I/O modes:
//!
//! * **Passthrough**: the kernel does reads and writes on the underlying file itself (Linux
//!   6.9+). Used when nothing needs recording: read-only opens, and opens of files no rule
//!   selects.
//! * **Direct**: writable opens of selected files, whose writes must be journaled. Direct I/O
//!   sends every write to mirrorfs, and takes no inode I/O mode, so such handles coexist with
//!   passthrough handles of the same file. Read-only opens made while such a writer is open use
//!   it too (a shared mmap of the writer puts the inode in cached mode, which passthrough
//!   opens would clash with).
//! * **Cached**: without kernel passthrough, every handle uses the kernel page cache
//!   (write-through, so writes still reach mirrorfs).
//!
//! A recorded handle remembers the rules its name matched at open, so a write does no matching.
//! It re-resolves its name and rules only when a rename happened anywhere or the rules changed
//! (a generation counter and the rule table version tell). Rules that start selecting the file
//! while it is open are remembered, and the file is copied for them when the handle is released.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::error::{FsError, FsResult};
use super::inodes::Inode;
use super::record::Rules;
use crate::matcher::RuleTable;

/// How the kernel does I/O on a handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// Kernel passthrough to the underlying file.
    Passthrough,
    /// Direct I/O through mirrorfs.
    Direct,
    /// Kernel page cache, writes through mirrorfs.
    Cached,
}

/// What a handle knows about the rules selecting its file.
#[derive(Debug, Default)]
pub struct Recording {
    /// The names generation these rules were resolved at.
    pub generation: u64,
    /// The rule table they were resolved with.
    pub table: Option<Arc<RuleTable>>,
    /// The file's full name when resolved (empty: the file has no name left).
    pub name: Vec<u8>,
    /// Rules selecting it.
    pub rules: Rules,
    /// Rules that began to select the file after it was opened: copy on release.
    pub late_rules: Rules,
    /// Whether anything was written through this handle.
    pub wrote: bool,
}

/// One open file.
#[derive(Debug)]
pub struct Handle {
    /// The node.
    pub inode: Arc<Inode>,
    /// The underlying file.
    pub file: File,
    /// I/O mode.
    pub mode: IoMode,
    /// Writes through this handle are journaled (writable, and selected at open).
    pub recorded: bool,
    /// Opened for writing.
    pub writable: bool,
    /// Opened with O_SYNC or O_DSYNC: journal entries are made durable at each write.
    pub sync_writes: bool,
    /// Rules and name (writable handles).
    pub recording: Mutex<Recording>,
    /// The handle holds a share of its node's passthrough backing file.
    pub passthrough_attached: AtomicBool,
    /// Bytes written in large writes since writeback of the file was last started.
    pub unflushed: AtomicU64,
}

/// All open files (and directories, which have their own table).
#[derive(Debug, Default)]
pub struct HandleTable<T> {
    map: RwLock<HashMap<u64, Arc<T>>>,
    next: AtomicU64,
}

impl<T> HandleTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        HandleTable {
            map: RwLock::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// Stores `h`, returning its handle number.
    pub fn insert(&self, h: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(h));
        fh
    }

    /// Handle `fh`.
    pub fn get(&self, fh: u64) -> FsResult<Arc<T>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle(fh))
    }

    /// Removes handle `fh` and returns it.
    pub fn remove(&self, fh: u64) -> FsResult<Arc<T>> {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh)
            .ok_or(FsError::BadHandle(fh))
    }

    /// Number of open handles.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no handle is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All open handles.
    pub fn all(&self) -> Vec<Arc<T>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
