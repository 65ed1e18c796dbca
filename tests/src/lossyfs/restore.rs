//! A power loss: turns the backing directory into its durable state, as the [`Model`]
//! describes it, in place.
//!
//! The durable tree is walked breadth-first from the root, in name order. For each directory
//! reached (at its durable place already), its durable entries are its remembered entries if
//! they changed since its last fsync, else its entries as they are. Every entry present that is
//! not durable is moved into the attic; every durable entry missing is put back: a file (or
//! symlink, FIFO…) is linked again from its pin, a directory is renamed back from wherever it
//! is now (with everything in it, whose own entries are put right when the walk gets there).
//! Moving directories only into a directory at its final place, top-down, never makes a
//! cycle. A directory with two durable names (a cross-directory rename made durable at one end
//! only) keeps the first the walk meets; a file keeps all its durable names (hard links).
//! Each file reached whose content changed gets its durable bytes back and its durable size
//! (then, when tearing, a prefix of its unsynced changes), and each object its durable
//! attributes, directories last. Finally the attic, and everything no durable name reaches, is
//! removed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use super::fs::ATTIC;
use super::model::{Attrs, DEnt, DataOp, Model};
use super::sys::{self, Kind, SetTime};

/// A small deterministic generator (SplitMix64): the seed in the report replays a tear.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What a power loss did.
#[derive(Debug, Default)]
struct Stats {
    dirs_reverted: u64,
    names_dropped: u64,
    names_restored: u64,
    dirs_deduplicated: u64,
    files_reverted: u64,
    files_torn: u64,
    torn: Vec<serde_json::Value>,
    errors: Vec<String>,
}

/// Carries out a power loss on the backing directory `root` (inode `root_ino`): afterwards it
/// holds exactly its durable state, the model is empty and the attic is gone. `tear`: the seed
/// with which to keep a random prefix of each file's unsynced changes. The report says what
/// changed; its `errors` (a bug of the layer, or the backing directory changed behind it) are
/// also logged.
pub fn restore(
    root: BorrowedFd<'_>,
    root_ino: u64,
    model: &mut Model,
    attic: &mut Option<OwnedFd>,
    tear: Option<u64>,
) -> serde_json::Value {
    let mut st = Stats::default();
    let mut rng = tear.map(Rng::new);
    if let Err(e) = walk(root, root_ino, model, attic, rng.as_mut(), &mut st) {
        st.errors.push(format!("power loss: {e}"));
    }
    *model = Model::default();
    for e in &st.errors {
        log::error!("{e}");
    }
    serde_json::json!({
        "tear": tear.is_some(),
        "seed": tear,
        "dirs_reverted": st.dirs_reverted,
        "names_dropped": st.names_dropped,
        "names_restored": st.names_restored,
        "dirs_deduplicated": st.dirs_deduplicated,
        "files_reverted": st.files_reverted,
        "files_torn": st.files_torn,
        "torn": st.torn,
        "errors": st.errors,
    })
}

fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    sys::openat(
        dir,
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

fn entries(dir: BorrowedFd<'_>, skip_attic: bool) -> io::Result<BTreeMap<OsString, DEnt>> {
    Ok(sys::list_dir(dir)?
        .into_iter()
        .filter(|(n, _, _)| !(skip_attic && n == ATTIC))
        .map(|(n, ino, kind)| (n, DEnt { ino, kind }))
        .collect())
}

fn walk(
    root: BorrowedFd<'_>,
    root_ino: u64,
    model: &mut Model,
    attic: &mut Option<OwnedFd>,
    mut rng: Option<&mut Rng>,
    st: &mut Stats,
) -> io::Result<()> {
    // The root's attributes as they are durably (making the attic below changes them).
    if let std::collections::hash_map::Entry::Vacant(v) = model.attrs.entry(root_ino) {
        v.insert(Attrs::of(&sys::stat(root)?));
    }
    if attic.is_none() {
        match sys::mkdirat(root, OsStr::new(ATTIC), 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        *attic = Some(open_dir(root, OsStr::new(ATTIC))?);
    }
    let limbo = Rc::new(sys::dup(
        attic.as_ref().map(|f| f.as_fd()).expect("just made"),
    )?);
    let mut seq = 0u64;
    let mut placed_dirs: HashSet<u64> = HashSet::from([root_ino]);
    let mut done_objects: HashSet<u64> = HashSet::new();
    let mut dir_attrs: Vec<(u64, Rc<OwnedFd>)> = Vec::new();
    let mut places: Option<Places> = None;
    let mut queue: VecDeque<(u64, Rc<OwnedFd>)> =
        VecDeque::from([(root_ino, Rc::new(sys::dup(root)?))]);
    // Each directory is queued once (placed_dirs): the loop ends.
    while let Some((ino, dfd)) = queue.pop_front() {
        let d = dfd.as_fd();
        let current = entries(d, ino == root_ino)?;
        let desired = model
            .dirs
            .get(&ino)
            .cloned()
            .unwrap_or_else(|| current.clone());
        if desired != current {
            st.dirs_reverted += 1;
        }
        let mut to_limbo = |name: &OsStr, ent: &DEnt, places: &mut Option<Places>| {
            seq += 1;
            let to = OsString::from(format!("r{seq}"));
            sys::renameat2(d, name, limbo.as_fd(), &to, libc::RENAME_NOREPLACE)?;
            if let (Some(p), Kind::Dir) = (places.as_mut(), ent.kind) {
                p.0.insert(ent.ino, (limbo.clone(), to));
            }
            io::Result::Ok(())
        };
        for (name, ent) in &current {
            if desired.get(name).map(|e| e.ino) != Some(ent.ino) {
                to_limbo(name, ent, &mut places)?;
                st.names_dropped += 1;
            }
        }
        for (name, ent) in &desired {
            let here = current.get(name).map(|e| e.ino) == Some(ent.ino);
            if ent.kind == Kind::Dir {
                if placed_dirs.contains(&ent.ino) {
                    st.dirs_deduplicated += 1;
                    if here {
                        to_limbo(name, ent, &mut places)?;
                    }
                    continue;
                }
                if !here {
                    if places.is_none() {
                        places = Some(Places::scan(root)?);
                    }
                    let p = places.as_mut().expect("just made");
                    if let Err(e) = p.put_back(model, ent.ino, &dfd, name) {
                        st.errors.push(format!(
                            "directory {} (inode {}) cannot be put back: {e}",
                            name.to_string_lossy(),
                            ent.ino
                        ));
                        continue;
                    }
                    st.names_restored += 1;
                }
                placed_dirs.insert(ent.ino);
                let sub = open_dir(d, name)?;
                let got = sys::stat(sub.as_fd())?.st_ino;
                if got != ent.ino {
                    st.errors.push(format!(
                        "{} is inode {got}, not the durable {}",
                        name.to_string_lossy(),
                        ent.ino
                    ));
                    continue;
                }
                queue.push_back((ent.ino, Rc::new(sub)));
            } else {
                if !here {
                    match model.pins.get(&ent.ino) {
                        Some(p) => {
                            if let Err(e) = sys::link_fd(p.fd.as_fd(), d, name) {
                                st.errors.push(format!(
                                    "{} (inode {}) cannot be linked back: {e}",
                                    name.to_string_lossy(),
                                    ent.ino
                                ));
                                continue;
                            }
                            st.names_restored += 1;
                        }
                        None => {
                            st.errors.push(format!(
                                "{} (inode {}) was removed with no pin: it is lost",
                                name.to_string_lossy(),
                                ent.ino
                            ));
                            continue;
                        }
                    }
                }
                if done_objects.insert(ent.ino) {
                    if let Err(e) = restore_object(model, d, name, *ent, rng.as_deref_mut(), st) {
                        st.errors.push(format!(
                            "{} (inode {}): restoring its durable state: {e}",
                            name.to_string_lossy(),
                            ent.ino
                        ));
                    }
                }
            }
        }
        if model.attrs.contains_key(&ino) {
            dir_attrs.push((ino, dfd));
        }
    }
    // Everything no durable name reaches.
    *attic = None;
    sys::remove_tree(root, OsStr::new(ATTIC))?;
    // Directories' attributes last: their entries no longer change.
    for (ino, fd) in dir_attrs {
        if let Some(a) = model.attrs.get(&ino) {
            if let Err(e) = set_attrs(fd.as_fd(), a, Kind::Dir) {
                st.errors
                    .push(format!("directory inode {ino}: attributes: {e}"));
            }
        }
    }
    Ok(())
}

/// Where every directory is now: inode → (descriptor of its parent, its name there). Found
/// by one walk of the whole backing directory (the attic included) through descriptors, never
/// by looking up `..` (which leads into the mount when the layer is mounted over its backing
/// directory), then kept up to date as the restore moves directories.
struct Places(HashMap<u64, (Rc<OwnedFd>, OsString)>);

impl Places {
    fn scan(root: BorrowedFd<'_>) -> io::Result<Places> {
        let mut map = HashMap::new();
        let mut stack = vec![Rc::new(sys::dup(root)?)];
        // Each directory is listed once (a tree has no cycles): the loop ends.
        while let Some(dir) = stack.pop() {
            for (name, ino, kind) in sys::list_dir(dir.as_fd())? {
                if kind == Kind::Dir {
                    let sub = Rc::new(open_dir(dir.as_fd(), &name)?);
                    map.insert(ino, (dir.clone(), name));
                    stack.push(sub);
                }
            }
        }
        Ok(Places(map))
    }

    /// Renames directory `ino` (pinned when its durable name went) from where it is now to
    /// `dir/name`.
    fn put_back(
        &mut self,
        model: &Model,
        ino: u64,
        dir: &Rc<OwnedFd>,
        name: &OsStr,
    ) -> io::Result<()> {
        if !model.pins.contains_key(&ino) {
            return Err(io::Error::other("it was moved with no pin"));
        }
        let (parent, pname) = self
            .0
            .get(&ino)
            .cloned()
            .ok_or_else(|| io::Error::other("it is nowhere in the backing directory"))?;
        sys::renameat2(
            parent.as_fd(),
            &pname,
            dir.as_fd(),
            name,
            libc::RENAME_NOREPLACE,
        )?;
        self.0.insert(ino, (dir.clone(), name.to_os_string()));
        Ok(())
    }
}

fn set_attrs(fd: BorrowedFd<'_>, a: &Attrs, kind: Kind) -> io::Result<()> {
    sys::chown(fd, a.uid, a.gid)?;
    if kind != Kind::Symlink {
        // After chown, which may clear set-id bits.
        sys::chmod(fd, a.mode)?;
    }
    sys::set_times(
        fd,
        SetTime::At(a.atime.0, a.atime.1),
        SetTime::At(a.mtime.0, a.mtime.1),
    )
}

/// Gives the object `dir/name` (not a directory) its durable content and attributes.
fn restore_object(
    model: &Model,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    ent: DEnt,
    rng: Option<&mut Rng>,
    st: &mut Stats,
) -> io::Result<()> {
    let data = model.data.get(&ent.ino);
    let attrs = model.attrs.get(&ent.ino);
    if data.is_none() && attrs.is_none() {
        return Ok(());
    }
    let fd = match (data, ent.kind) {
        (Some(_), Kind::File) => sys::openat(dir, name, libc::O_RDWR | libc::O_NOFOLLOW, 0)?,
        _ => sys::open_path(dir, name)?,
    };
    if let (Some(d), Kind::File) = (data, ent.kind) {
        let f = fd.as_fd();
        for (off, bytes) in &d.saved {
            sys::pwrite_all(f, *off, bytes)?;
        }
        sys::ftruncate(f, d.durable_size)?;
        st.files_reverted += 1;
        if let Some(rng) = rng {
            let n = d.ops.len();
            if d.ops_complete && n > 0 {
                let k = rng.below(n as u64 + 1) as usize;
                for op in &d.ops[..k] {
                    apply(f, op)?;
                }
                let mut part = 0;
                if let Some(DataOp::Write { off, data }) = d.ops.get(k) {
                    part = rng.below(data.len() as u64 + 1) as usize;
                    if part > 0 {
                        sys::pwrite_all(f, *off, &data[..part])?;
                    }
                }
                if k > 0 || part > 0 {
                    st.files_torn += 1;
                }
                st.torn.push(serde_json::json!({
                    "name": name.to_string_lossy(),
                    "ino": ent.ino,
                    "ops": n,
                    "kept": k,
                    "partial_bytes": part,
                }));
            }
        }
    }
    if let Some(a) = attrs {
        set_attrs(fd.as_fd(), a, ent.kind)?;
    }
    Ok(())
}

/// Applies one unsynced change again (tearing keeps it).
fn apply(fd: BorrowedFd<'_>, op: &DataOp) -> io::Result<()> {
    match op {
        DataOp::Write { off, data } => sys::pwrite_all(fd, *off, data),
        DataOp::SetSize(s) => sys::ftruncate(fd, *s),
        DataOp::Fallocate { mode, off, len } => sys::fallocate(fd, *mode, *off, *len),
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn rng_is_deterministic_and_spreads() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<u64> = (0..100).map(|_| a.below(10)).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.below(10)).collect();
        assert_eq!(xs, ys);
        for v in 0..10 {
            assert!(xs.contains(&v), "{v} never drawn in 100");
        }
    }
}
