//! The inode table: FUSE node ids, their names, and lookup counts.
//!
//! A node id is the underlying inode number (so `stat` shows the same `st_ino` as the plain
//! directory and tools that remember inode numbers, such as git's index, keep working); the
//! root is 1. Files on another device below the root get synthetic ids from the top half of
//! the range. An inode number the file system reuses for a new file (told by its birth time)
//! keeps the node id with a new generation, as the kernel expects.
//!
//! Each node remembers the names it is known by, as `(parent id, name)` pairs, so its path
//! relative to the underlying root can be rebuilt and kept right across renames (a directory
//! rename moves its whole subtree by changing one pair). Every entry reply adds one lookup;
//! `forget` takes them back, and a node leaves the table when its count reaches zero.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use fuser::{BackingId, FileType};

use super::error::FsError;
use super::sys::Stat;

/// The root's node id.
pub const ROOT: u64 = 1;
const SYNTHETIC_BASE: u64 = 1 << 63;

/// Locks a mutex, ignoring poisoning (the data stays consistent under our own rules).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shared kernel passthrough backing file of a node, and how many handles use it.
#[derive(Default, Debug)]
pub struct Passthrough {
    /// The backing id, shared by all passthrough handles of the node.
    pub backing: Option<BackingId>,
    /// Open passthrough handles.
    pub users: usize,
}

#[derive(Debug)]
struct Names {
    links: Vec<(u64, OsString)>,
    generation: u64,
    btime_ns: u64,
}

/// One node.
#[derive(Debug)]
pub struct Inode {
    /// Node id.
    pub ino: u64,
    /// File type.
    pub kind: FileType,
    /// Underlying device and inode number.
    pub key: (u64, u64),
    names: Mutex<Names>,
    lookups: AtomicU64,
    /// Serialises recorded changes to this node: the change on disk and its journal entries
    /// happen in the same order for every writer.
    pub op_lock: Mutex<()>,
    /// Kernel passthrough state.
    pub passthrough: Mutex<Passthrough>,
    /// The I/O mode every open handle of the node shares (see `handles`).
    pub io: Mutex<NodeIo>,
    /// Whether the file had a set-user-id or set-group-id bit when last looked at (so that
    /// writes by other users look again, to clear it as the file system would).
    pub setid: std::sync::atomic::AtomicBool,
    /// A directory's modification time (ns since the epoch) when mirrorfs last gave the
    /// kernel its whole listing, which the kernel may then serve from its cache until the
    /// directory changes (0: never).
    pub listed: AtomicU64,
    /// A directory's attributes as last given to the kernel: what `fstat` of a descriptor of
    /// it shows once it has no name left, when no directory stream of mirrorfs has it open
    /// (the kernel opens directories without asking, `MirrorFs::opendir_unneeded`).
    pub last_stat: Mutex<Option<Stat>>,
}

/// The I/O mode of a node's handles: the kernel will not mix passthrough opens of one inode
/// with others (an open that tries fails with EIO), so the first open chooses and every open
/// while any handle is open follows.
#[derive(Debug, Default)]
pub struct NodeIo {
    /// The mode of the open handles (meaningless when none is open).
    pub mode: Option<crate::fs::IoMode>,
    /// Open handles.
    pub handles: usize,
}

impl Inode {
    /// The node's generation (bumped when its inode number was reused).
    pub fn generation(&self) -> u64 {
        lock(&self.names).generation
    }
    /// Whether the node still has a name.
    pub fn is_linked(&self) -> bool {
        !lock(&self.names).links.is_empty()
    }
    /// How many names the node has.
    pub fn link_count(&self) -> usize {
        lock(&self.names).links.len()
    }
    /// All names, as (parent, name).
    pub fn links(&self) -> Vec<(u64, OsString)> {
        lock(&self.names).links.clone()
    }
}

/// Maps an entry's file type bits to a FUSE file type.
pub fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// All nodes the kernel knows.
#[derive(Debug)]
pub struct InodeTable {
    map: RwLock<HashMap<u64, Arc<Inode>>>,
    synthetic: Mutex<HashMap<(u64, u64), u64>>,
    next_synthetic: AtomicU64,
    root_key: (u64, u64),
}

impl InodeTable {
    /// A table holding the root, whose underlying status is `root`.
    pub fn new(root: &Stat) -> InodeTable {
        let node = Arc::new(Inode {
            ino: ROOT,
            kind: FileType::Directory,
            key: (root.dev, root.ino),
            names: Mutex::new(Names {
                links: Vec::new(),
                generation: 0,
                btime_ns: root.btime_ns,
            }),
            lookups: AtomicU64::new(1),
            op_lock: Mutex::new(()),
            passthrough: Mutex::new(Passthrough::default()),
            io: Mutex::new(NodeIo::default()),
            setid: std::sync::atomic::AtomicBool::new(false),
            listed: AtomicU64::new(0),
            last_stat: Mutex::new(None),
        });
        let mut map = HashMap::new();
        map.insert(ROOT, node);
        InodeTable {
            map: RwLock::new(map),
            synthetic: Mutex::new(HashMap::new()),
            next_synthetic: AtomicU64::new(SYNTHETIC_BASE),
            root_key: (root.dev, root.ino),
        }
    }

    /// The node id for an underlying (device, inode).
    pub fn node_id(&self, st: &Stat) -> u64 {
        let key = (st.dev, st.ino);
        if key == self.root_key {
            return ROOT;
        }
        if st.dev == self.root_key.0 && st.ino != ROOT && st.ino < SYNTHETIC_BASE {
            return st.ino;
        }
        let mut s = lock(&self.synthetic);
        *s.entry(key)
            .or_insert_with(|| self.next_synthetic.fetch_add(1, Ordering::Relaxed))
    }

    /// Node `ino`, or ENOENT if the kernel has forgotten it (a stale handle).
    pub fn get(&self, ino: u64) -> Result<Arc<Inode>, FsError> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
            .cloned()
            .ok_or(FsError::Stale(ino))
    }

    /// Records that the kernel learned `name` in `parent` names the file `st`: one lookup more.
    /// Returns the node and its generation.
    pub fn remember(&self, parent: u64, name: &OsStr, st: &Stat) -> (Arc<Inode>, u64) {
        let ino = self.node_id(st);
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(node) = map.get(&ino).cloned() {
            if node.kind == file_type(st.mode) {
                let mut n = lock(&node.names);
                if n.btime_ns == st.btime_ns || st.btime_ns == 0 || n.btime_ns == 0 {
                    add_link(&mut n.links, parent, name);
                    node.lookups.fetch_add(1, Ordering::Relaxed);
                    let g = n.generation;
                    drop(n);
                    return (node, g);
                }
            }
            // The inode number was reused by another file while the kernel still holds the
            // old one: same id, new generation; the old lookups carry over so that the
            // kernel's forget of the old node balances.
            let old = node.lookups.load(Ordering::Relaxed);
            let generation = node.generation() + 1;
            let fresh = new_node(ino, st, parent, name, generation, old + 1);
            map.insert(ino, fresh.clone());
            return (fresh, generation);
        }
        let fresh = new_node(ino, st, parent, name, 0, 1);
        map.insert(ino, fresh.clone());
        (fresh, 0)
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let Some(node) = map.get(&ino) else {
            log::error!("forget of unknown node {ino} ({n} lookups)");
            return;
        };
        let before = node.lookups.load(Ordering::Relaxed);
        if n > before {
            log::error!("forget of {n} lookups of node {ino}, which has only {before}");
        }
        let after = before.saturating_sub(n);
        node.lookups.store(after, Ordering::Relaxed);
        if after == 0 {
            let key = node.key;
            map.remove(&ino);
            drop(map);
            lock(&self.synthetic).remove(&key);
        }
    }

    /// Number of nodes (tests).
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether only the root is known.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }

    /// The path of `ino` relative to the underlying root ("" for the root itself).
    pub fn path(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut parts: Vec<OsString> = Vec::new();
        let mut cur = ino;
        // Bounded walk: a cycle would mean a broken table, not an infinite loop. A path has
        // at most as many components as the table has nodes (ext4 sets no depth limit, and a
        // name longer than PATH_MAX is reached through `sys` in steps).
        for _ in 0..=map.len() {
            if cur == ROOT {
                let mut out = Vec::new();
                for (i, p) in parts.iter().rev().enumerate() {
                    if i > 0 {
                        out.push(b'/');
                    }
                    out.extend_from_slice(p.as_bytes());
                }
                return Ok(out);
            }
            let node = map.get(&cur).ok_or(FsError::Stale(cur))?;
            let n = lock(&node.names);
            let (parent, name) = n.links.first().ok_or(FsError::Unlinked(ino))?;
            parts.push(name.clone());
            cur = *parent;
        }
        Err(FsError::Stale(ino))
    }

    /// The path of `name` in directory `parent`.
    pub fn child_path(&self, parent: u64, name: &OsStr) -> Result<Vec<u8>, FsError> {
        let mut p = self.path(parent)?;
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name.as_bytes());
        Ok(p)
    }

    /// `name` in `parent` no longer names node `ino` (unlink, or replaced by a rename).
    pub fn unlink(&self, ino: u64, parent: u64, name: &OsStr) {
        if let Ok(node) = self.get(ino) {
            lock(&node.names)
                .links
                .retain(|(p, n)| !(*p == parent && n == name));
        }
    }

    /// Node `ino`, known as `old`, is now known as `new` instead.
    pub fn relink(&self, ino: u64, old: (u64, &OsStr), new: (u64, &OsStr)) {
        if let Ok(node) = self.get(ino) {
            let mut n = lock(&node.names);
            n.links.retain(|(p, x)| !(*p == old.0 && x == old.1));
            add_link(&mut n.links, new.0, new.1);
        }
    }

    /// Node `ino` is also known as `name` in `parent` (a hard link).
    pub fn add_link(&self, ino: u64, parent: u64, name: &OsStr) {
        if let Ok(node) = self.get(ino) {
            add_link(&mut lock(&node.names).links, parent, name);
        }
    }
}

fn add_link(links: &mut Vec<(u64, OsString)>, parent: u64, name: &OsStr) {
    if !links.iter().any(|(p, n)| *p == parent && n == name) {
        links.push((parent, name.to_os_string()));
    }
}

fn new_node(
    ino: u64,
    st: &Stat,
    parent: u64,
    name: &OsStr,
    generation: u64,
    lookups: u64,
) -> Arc<Inode> {
    Arc::new(Inode {
        ino,
        kind: file_type(st.mode),
        key: (st.dev, st.ino),
        names: Mutex::new(Names {
            links: vec![(parent, name.to_os_string())],
            generation,
            btime_ns: st.btime_ns,
        }),
        lookups: AtomicU64::new(lookups),
        op_lock: Mutex::new(()),
        passthrough: Mutex::new(Passthrough::default()),
        io: Mutex::new(NodeIo::default()),
        setid: std::sync::atomic::AtomicBool::new(st.mode & (libc::S_ISUID | libc::S_ISGID) != 0),
        listed: AtomicU64::new(0),
        last_stat: Mutex::new(None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(ino: u64, mode: u32, btime: u64) -> Stat {
        Stat {
            dev: 7,
            ino,
            mode,
            btime_ns: btime,
            ..Stat::default()
        }
    }

    #[test]
    fn paths_follow_renames_and_counts_balance() {
        let t = InodeTable::new(&st(2, libc::S_IFDIR, 1));
        let (d, _) = t.remember(ROOT, OsStr::new("d"), &st(10, libc::S_IFDIR, 1));
        let (f, _) = t.remember(d.ino, OsStr::new("f"), &st(11, libc::S_IFREG, 1));
        assert_eq!(t.path(f.ino).unwrap(), b"d/f");
        t.relink(d.ino, (ROOT, OsStr::new("d")), (ROOT, OsStr::new("e")));
        assert_eq!(t.path(f.ino).unwrap(), b"e/f");
        t.remember(d.ino, OsStr::new("f"), &st(11, libc::S_IFREG, 1));
        t.forget(f.ino, 1);
        assert!(t.get(f.ino).is_ok());
        t.forget(f.ino, 1);
        assert!(t.get(f.ino).is_err());
        t.unlink(d.ino, ROOT, OsStr::new("e"));
        assert!(matches!(t.path(d.ino), Err(FsError::Unlinked(_))));
    }

    #[test]
    fn reused_inode_number_gets_a_new_generation() {
        let t = InodeTable::new(&st(2, libc::S_IFDIR, 1));
        let (a, g0) = t.remember(ROOT, OsStr::new("a"), &st(20, libc::S_IFREG, 100));
        let (b, g1) = t.remember(ROOT, OsStr::new("b"), &st(20, libc::S_IFREG, 200));
        assert_eq!(a.ino, b.ino);
        assert_eq!((g0, g1), (0, 1));
        // Both lookups are owed; two forgets remove the node.
        t.forget(20, 1);
        assert!(t.get(20).is_ok());
        t.forget(20, 1);
        assert!(t.get(20).is_err());
    }

    #[test]
    fn other_devices_get_synthetic_ids() {
        let t = InodeTable::new(&st(2, libc::S_IFDIR, 1));
        let other = Stat {
            dev: 99,
            ..st(20, libc::S_IFREG, 1)
        };
        let id = t.node_id(&other);
        assert!(id >= SYNTHETIC_BASE);
        assert_eq!(t.node_id(&other), id);
        assert_eq!(t.node_id(&st(20, libc::S_IFREG, 1)), 20);
        assert_eq!(t.node_id(&st(2, libc::S_IFDIR, 1)), ROOT);
    }
}
