//! Open file handles: the open file list of seeds/002 \[0045\].
//!
//! The kernel will not mix kernel-passthrough opens of one inode with other opens (the open
//! that tries fails with EIO), so the I/O mode is chosen per node, not per open: the first
//! open of a node chooses, and every open while any handle of it is open takes the same mode
//! ([`super::inodes::NodeIo`]).
//!
//! * **Cached**: files a rule selects. Reads come from the kernel's page cache. With the
//!   kernel's writeback cache (the default) writes land in that cache and reach mirrorfs,
//!   to be recorded, when the kernel writes them back: at fsync/msync/close, under memory
//!   pressure, and at least every [`crate::flusher::EVERY`]; without it (`--no-writeback-cache`)
//!   every write reaches mirrorfs before it succeeds. Nothing reaches the file underneath
//!   but through mirrorfs, so the file and its journal never differ. All handles of the file
//!   share one page cache, so readers, writers and mappings see the same bytes.
//! * **Passthrough**: files no rule selects (Linux 6.9+): the kernel reads and writes the
//!   underlying file itself. A rule that begins to select a file while it is open in
//!   passthrough cannot see its writes: the file is copied when such a writer closes.
//! * **Direct**: direct I/O through mirrorfs (no page cache): openings for writing while the
//!   kernel buffers writes but may not safely (little room underneath, another mirrorfs of
//!   the directory: `MirrorFs::may_buffer`), so that their errors reach `write` itself; and
//!   later files whose every write must reach mirrorfs before it is done (two-way files).
//!
//! Without kernel passthrough (an older kernel, or one that refused a backing file), every
//! new node uses the page cache.
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
    /// Counted in [`super::MirrorFs::buffered_writers`] (writable, selected, page cache, with
    /// the kernel's writeback cache on) until released.
    pub buffered: bool,
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
