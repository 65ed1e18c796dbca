//! Confinement: a path is resolved beneath a root without following a symbolic link anywhere
//! on the way (DESIGN.md invariant 5). The router reaches every backup path this way beneath
//! its backup root; the sender reads every source file this way beneath its rule's base, so
//! that a directory swapped for a symlink while a copy runs cannot lead it out of what the
//! rule selects.
//!
//! A [`Root`] holds a descriptor of the root. [`Root::place`] opens the parent directory of a
//! relative path with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or, on kernels
//! without `openat2`, a walk of `openat(O_NOFOLLOW)` one component at a time), creating
//! missing directories on the way when asked. The [`Place`] it returns names the last
//! component inside that open directory; the operations on it (`*at` calls, or paths through
//! `/proc/self/fd/N/NAME`, which resolve the directory by its descriptor) never follow a
//! symbolic link in the last component either. So a symlink planted by an earlier entry, or by
//! anyone else, cannot lead a write, rename or delete out of the root: the call fails with
//! `ELOOP` or `EXDEV` ([`is_confinement`]).
//!
//! Paths longer than one system call takes (`PATH_MAX`, 4,096 bytes with the NUL; ext4 holds
//! longer ones, reached one component at a time) are reached in steps, here and nowhere else:
//! [`open_dir_in`] opens a directory in chunks of whole components, each under the limit,
//! each step `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from the descriptor the step
//! before opened (so the confinement of each step is the confinement of the whole), and
//! [`Reach`] gives a path that one call takes for any path (itself when short enough; else
//! its last component through its parent's descriptor). A path short enough costs exactly
//! the one call it cost before.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Whether `e` is the refusal of a path that leaves the root or passes through a symlink.
pub fn is_confinement(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV))
}

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The longest path, in bytes, that one system call takes (`PATH_MAX` counts the NUL).
pub const ONE_CALL: usize = libc::PATH_MAX as usize - 1;

/// `rel` in chunks of whole components, each at most [`ONE_CALL`] bytes (a component longer
/// than that is a chunk of its own, which the kernel refuses as too long).
fn chunks(rel: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for (i, part) in rel.split(|&b| b == b'/').enumerate() {
        let from = if i == 0 { 0 } else { end + 1 };
        let to = from + part.len();
        if to - start > ONE_CALL && end > start {
            out.push(&rel[start..end]);
            start = from;
        }
        end = to;
    }
    if end > start {
        out.push(&rel[start..end]);
    }
    out
}

/// Opens `rel` (one chunk) beneath `dir` as a directory to walk through, through no symlink:
/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or where the kernel has no `openat2`
/// (or a seccomp filter forbids it), `openat(O_NOFOLLOW)` one component at a time.
fn open_chunk(dir: RawFd, rel: &[u8]) -> io::Result<OwnedFd> {
    let c = cstr(if rel.is_empty() { b"." } else { rel })?;
    // SAFETY: open_how is plain data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: c is NUL-terminated and how is a valid open_how of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if rc >= 0 {
        // SAFETY: rc is a descriptor just opened and owned by nobody else.
        return Ok(unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) });
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) {
        return Err(e);
    }
    walk_chunk(dir, rel)
}

/// [`open_chunk`] without `openat2`: `openat(O_NOFOLLOW)` one component at a time (`..`
/// refused).
fn walk_chunk(dir: RawFd, rel: &[u8]) -> io::Result<OwnedFd> {
    let mut cur = open_dir_at(dir, &cstr(b".")?)?;
    for p in rel.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
        if p == b".." {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        cur = open_step(&cur, &cstr(p)?)?;
    }
    Ok(cur)
}

/// Opens the directory `name` in `cur`, never through a symlink (`ELOOP` for one).
fn open_step(cur: &OwnedFd, name: &CString) -> io::Result<OwnedFd> {
    open_dir_at(cur.as_raw_fd(), name).map_err(|e| {
        // O_NOFOLLOW|O_PATH|O_DIRECTORY on a symlink says ENOTDIR: call it a loop.
        if e.raw_os_error() == Some(libc::ENOTDIR) && is_symlink_at(cur, name) {
            io::Error::from_raw_os_error(libc::ELOOP)
        } else {
            e
        }
    })
}

/// Opens the directory `rel` (relative; empty: `dir` itself) beneath `dir` for walking
/// through (`O_PATH`), following no symlink and leaving `dir` nowhere: one `openat2` when
/// `rel` is short enough for one call, else one per chunk of whole components, each from the
/// descriptor the one before opened.
pub fn open_dir_in(dir: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
    open_dir_from(dir.as_raw_fd(), rel)
}

fn open_dir_from(dir: RawFd, rel: &[u8]) -> io::Result<OwnedFd> {
    if rel.len() <= ONE_CALL {
        return open_chunk(dir, rel);
    }
    let mut cur: Option<OwnedFd> = None;
    for chunk in chunks(rel) {
        let from = cur.as_ref().map_or(dir, |f| f.as_raw_fd());
        cur = Some(open_chunk(from, chunk)?);
    }
    match cur {
        Some(c) => Ok(c),
        None => open_chunk(dir, b"."),
    }
}

/// `rel` split for a call on its last component: `None` when one call takes it whole, else
/// its parent directory opened beneath `dir` ([`open_dir_in`]) and the last component.
pub fn split_long<'a>(
    dir: BorrowedFd<'_>,
    rel: &'a [u8],
) -> io::Result<Option<(OwnedFd, &'a [u8])>> {
    if rel.len() <= ONE_CALL {
        return Ok(None);
    }
    let rel = rel.strip_suffix(b"/").unwrap_or(rel);
    let Some(i) = rel.iter().rposition(|&b| b == b'/') else {
        // One component that long: the call itself says it is too long.
        return Ok(None);
    };
    Ok(Some((open_dir_in(dir, &rel[..i])?, &rel[i + 1..])))
}

/// A path that one system call takes for a given path: the path itself when it is short
/// enough (no call made), else `/proc/self/fd/N/LAST`, its last component through its parent
/// directory, which the `Reach` holds open as long as it lives. The parent is opened in
/// chunks of whole components ([`open_dir_in`]'s steps): the first chunk (the longest
/// prefix one call takes, which holds a rule's base or a mount point) resolved as one call of
/// the whole path would resolve it, every later chunk through no symlink and never above
/// where it starts. Calls on the path follow a symlink in the last component exactly as they
/// would on the path itself.
#[derive(Debug)]
pub struct Reach {
    _dir: Option<OwnedFd>,
    path: PathBuf,
}

impl Reach {
    /// Reaches `path` (absolute, or relative to the current directory).
    pub fn new(path: &Path) -> io::Result<Reach> {
        let b = path.as_os_str().as_bytes();
        let b = match b.strip_suffix(b"/") {
            Some(s) if b.len() > ONE_CALL => s,
            _ => b,
        };
        let split = b.iter().rposition(|&c| c == b'/');
        let (Some(i), true) = (split, b.len() > ONE_CALL) else {
            return Ok(Reach {
                _dir: None,
                path: path.to_path_buf(),
            });
        };
        let (parent, last) = (&b[..i.max(1)], &b[i + 1..]);
        let parts = chunks(parent);
        let (first, rest) = match parts.split_first() {
            Some((f, r)) if !f.is_empty() => (*f, r),
            _ => (&b"/"[..], &parts[..]),
        };
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        let c = cstr(first)?;
        // SAFETY: c is NUL-terminated; the descriptor is owned below.
        let fd = check(unsafe { libc::openat(libc::AT_FDCWD, c.as_ptr(), flags) })?;
        // SAFETY: fd was just opened and is owned by nobody else.
        let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
        for chunk in rest {
            dir = open_chunk(dir.as_raw_fd(), chunk)?;
        }
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        p.push(OsStr::from_bytes(last));
        Ok(Reach {
            _dir: Some(dir),
            path: p,
        })
    }

    /// The path to hand to one call.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The backup root, held open.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// A name inside a directory opened beneath the root.
#[derive(Debug)]
pub struct Place {
    dir: OwnedFd,
    name: CString,
    shown: PathBuf,
}

/// Opens `name` in `dir` as a directory to walk through, never through a symlink.
fn open_dir_at(dir: libc::c_int, name: &CString) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: name is NUL-terminated; the descriptor returned is owned by the OwnedFd.
    let fd = check(unsafe { libc::openat(dir, name.as_ptr(), flags) })?;
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Root {
    /// Opens the root directory `path`.
    pub fn open(path: &Path) -> io::Result<Root> {
        Root::open_as(path, path)
    }

    /// [`Root::open`] of `path`, named `shown` in messages (a path through `/proc/PID/fd`
    /// that stands for another).
    pub fn open_as(path: &Path, shown: &Path) -> io::Result<Root> {
        let c = cstr(path.as_os_str().as_bytes())?;
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        // SAFETY: c is NUL-terminated; the descriptor is owned by the OwnedFd.
        let fd = check(unsafe { libc::open(c.as_ptr(), flags) })?;
        Ok(Root {
            // SAFETY: fd was just opened and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: shown.to_path_buf(),
        })
    }

    /// The root's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path to the root directory itself through its descriptor (`/proc/self/fd/N`), for
    /// calls that follow it (`stat`, listing), whatever its name leads to now.
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The last component of `rel` (relative, normal components only) in its parent directory
    /// opened beneath the root; missing parent directories are created when `create`.
    pub fn place(&self, rel: &Path, create: bool) -> io::Result<Place> {
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(p) => parts.push(p),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{} is not a plain relative path", rel.display()),
                    ))
                }
            }
        }
        let Some((last, parents)) = parts.split_last() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an empty path names the root itself",
            ));
        };
        let parent: PathBuf = parents.iter().collect();
        let dir = match self.open_beneath(&parent) {
            Err(e) if create && e.kind() == io::ErrorKind::NotFound => self.walk(parents, true)?,
            r => r?,
        };
        Ok(Place {
            dir,
            name: cstr(last.as_bytes())?,
            shown: self.path.join(rel),
        })
    }

    /// Opens directory `rel` beneath the root ([`open_dir_in`]: one `openat2` when it is
    /// short enough, in steps when it is not; a walk where there is no `openat2`).
    fn open_beneath(&self, rel: &Path) -> io::Result<OwnedFd> {
        open_dir_from(self.fd.as_raw_fd(), rel.as_os_str().as_bytes())
    }

    /// Opens the directories `parts` one below the other from the root, never through a
    /// symlink, creating the missing ones when `create`.
    fn walk(&self, parts: &[&OsStr], create: bool) -> io::Result<OwnedFd> {
        let mut cur = open_dir_at(self.fd.as_raw_fd(), &cstr(b".")?)?;
        for p in parts {
            let name = cstr(p.as_bytes())?;
            if create {
                // SAFETY: name is NUL-terminated; cur is an open directory.
                let rc = unsafe { libc::mkdirat(cur.as_raw_fd(), name.as_ptr(), 0o755) };
                if rc != 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(e);
                    }
                }
            }
            cur = open_step(&cur, &name)?;
        }
        Ok(cur)
    }
}

fn is_symlink_at(dir: &OwnedFd, name: &CString) -> bool {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: name is NUL-terminated; st is a valid stat buffer.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

impl Place {
    /// A path to this place through the directory's descriptor, for calls that do not follow
    /// a symlink in the last component (`lstat`, `unlink`, `rmdir`, `open(O_NOFOLLOW)`, …).
    pub fn path(&self) -> PathBuf {
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd()));
        p.push(OsStr::from_bytes(self.name.as_bytes()));
        p
    }

    /// The place of `name` inside this place, which must be a directory (opened through no
    /// symlink). `name` is one component.
    pub fn child(&self, name: &[u8]) -> io::Result<Place> {
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(Place {
            dir: open_dir_at(self.dir.as_raw_fd(), &self.name)?,
            name: cstr(name)?,
            shown: self.shown.join(OsStr::from_bytes(name)),
        })
    }

    /// The same place with `suffix` appended to its name.
    pub fn with_suffix(&self, suffix: &str) -> io::Result<Place> {
        let mut n = self.name.as_bytes().to_vec();
        n.extend_from_slice(suffix.as_bytes());
        let mut shown = self.shown.clone().into_os_string();
        shown.push(suffix);
        Ok(Place {
            dir: self.dir.try_clone()?,
            name: cstr(&n)?,
            shown: PathBuf::from(shown),
        })
    }

    /// The place of `name` (one component) in the same directory.
    pub fn sibling(&self, name: &[u8]) -> io::Result<Place> {
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(Place {
            dir: self.dir.try_clone()?,
            name: cstr(name)?,
            shown: self.shown.with_file_name(OsStr::from_bytes(name)),
        })
    }

    /// The name of this place (its last component).
    pub fn name(&self) -> &[u8] {
        self.name.as_bytes()
    }

    /// The path under the root, for messages.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// `renameat2(self → to, flags)`.
    pub fn rename_to(&self, to: &Place, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: both names are NUL-terminated; both directories are open.
        check(unsafe {
            libc::renameat2(
                self.dir.as_raw_fd(),
                self.name.as_ptr(),
                to.dir.as_raw_fd(),
                to.name.as_ptr(),
                flags,
            )
        })
        .map(drop)
    }

    /// A hard link `to` of this place (a symlink is linked itself, never followed).
    pub fn link_to(&self, to: &Place) -> io::Result<()> {
        // SAFETY: both names are NUL-terminated; both directories are open.
        check(unsafe {
            libc::linkat(
                self.dir.as_raw_fd(),
                self.name.as_ptr(),
                to.dir.as_raw_fd(),
                to.name.as_ptr(),
                0,
            )
        })
        .map(drop)
    }

    /// Creates a directory here.
    pub fn mkdir(&self, mode: u32) -> io::Result<()> {
        // SAFETY: name is NUL-terminated; dir is open.
        check(unsafe { libc::mkdirat(self.dir.as_raw_fd(), self.name.as_ptr(), mode) }).map(drop)
    }

    /// Sets the permission bits of what is here, unless it is a symlink (which has none).
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: name is NUL-terminated; the descriptor is owned by the OwnedFd.
        let fd = check(unsafe { libc::openat(self.dir.as_raw_fd(), self.name.as_ptr(), flags) })?;
        // SAFETY: fd was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; st is a valid stat buffer.
        check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Ok(());
        }
        // The descriptor names this very inode: chmod through it follows nothing else.
        let c = cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())?;
        // SAFETY: c is NUL-terminated.
        check(unsafe { libc::chmod(c.as_ptr(), mode) }).map(drop)
    }

    /// `fchownat(AT_SYMLINK_NOFOLLOW)`; `u32::MAX` leaves an id as it is.
    pub fn lchown(&self, uid: u32, gid: u32) -> io::Result<()> {
        // SAFETY: name is NUL-terminated; dir is open.
        check(unsafe {
            libc::fchownat(
                self.dir.as_raw_fd(),
                self.name.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    /// `utimensat(AT_SYMLINK_NOFOLLOW)` with access and modification times.
    pub fn set_times(&self, times: &[libc::timespec; 2]) -> io::Result<()> {
        // SAFETY: name is NUL-terminated; times points at two timespecs.
        check(unsafe {
            libc::utimensat(
                self.dir.as_raw_fd(),
                self.name.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn setup() -> (tempfile::TempDir, Root, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        let r = Root::open(&root).unwrap();
        (t, r, outside)
    }

    #[test]
    fn creates_parents_and_names_the_last_component() {
        let (_t, r, _) = setup();
        let p = r.place(Path::new("a/b/c.txt"), true).unwrap();
        fs::write(p.path(), b"x").unwrap();
        assert_eq!(fs::read(r.path().join("a/b/c.txt")).unwrap(), b"x");
        assert_eq!(p.shown(), r.path().join("a/b/c.txt"));
        assert!(r.place(Path::new("../x"), true).is_err());
        assert!(r.place(Path::new("/etc/x"), true).is_err());
        assert!(r.place(Path::new(""), true).is_err());
    }

    #[test]
    fn symlinked_directories_are_never_followed() {
        let (_t, r, outside) = setup();
        std::os::unix::fs::symlink(&outside, r.path().join("out")).unwrap();
        std::os::unix::fs::symlink("..", r.path().join("up")).unwrap();
        for rel in ["out/x", "up/x", "out/deep/x"] {
            for create in [false, true] {
                let e = r.place(Path::new(rel), create).unwrap_err();
                assert!(is_confinement(&e), "{rel} create={create}: {e}");
            }
        }
        // The walk (kernels without openat2) refuses the same.
        let parts = [OsStr::new("out")];
        assert!(is_confinement(&r.walk(&parts, true).unwrap_err()));
        let fd = r.fd.as_raw_fd();
        for rel in ["out/deep", "up", "../x"] {
            let e = walk_chunk(fd, rel.as_bytes()).unwrap_err();
            assert!(is_confinement(&e), "{rel}: {e}");
        }
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn a_symlink_as_last_component_is_not_followed() {
        let (_t, r, outside) = setup();
        let victim = outside.join("victim");
        fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, r.path().join("link")).unwrap();
        let p = r.place(Path::new("link"), false).unwrap();
        let open = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p.path());
        assert!(is_confinement(&open.unwrap_err()));
        p.chmod(0o600).unwrap();
        fs::remove_file(p.path()).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        use std::os::unix::fs::PermissionsExt;
        assert_ne!(
            fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    use std::os::unix::fs::OpenOptionsExt;

    /// Components of 250 bytes, `n` of them: a path of `251 * n - 1` bytes.
    fn long_rel(n: usize) -> PathBuf {
        (0..n)
            .map(|i| format!("{i:02}{}", "x".repeat(248)))
            .collect()
    }

    #[test]
    fn chunks_are_whole_components_under_one_call() {
        let rel = long_rel(40);
        let b = rel.as_os_str().as_bytes();
        let parts = chunks(b);
        assert!(parts.len() >= 3, "{}", parts.len());
        assert!(parts
            .iter()
            .all(|c| c.len() <= ONE_CALL && !c.starts_with(b"/")));
        assert_eq!(parts.join(&b'/'), b);
        assert_eq!(chunks(b"a/b"), vec![&b"a/b"[..]]);
        assert!(chunks(b"").is_empty());
    }

    #[test]
    fn a_path_longer_than_path_max_is_placed_in_steps() {
        let (_t, r, _) = setup();
        let rel = long_rel(40).join("f");
        assert!(rel.as_os_str().len() > libc::PATH_MAX as usize);
        let p = r.place(&rel, true).unwrap();
        fs::write(p.path(), b"deep").unwrap();
        let again = r.place(&rel, false).unwrap();
        assert_eq!(fs::read(again.path()).unwrap(), b"deep");
        // A path that long is no use to one call, but reached through Reach.
        let full = r.path().join(&rel);
        assert!(fs::read(&full).is_err());
        assert_eq!(
            fs::read(Reach::new(&full).unwrap().path()).unwrap(),
            b"deep"
        );
        let short = Reach::new(Path::new("/etc/hostname")).unwrap();
        assert_eq!(short.path(), Path::new("/etc/hostname"));
        // A symlink within the first chunk is resolved as one call of the path would.
        let alias = r.path().parent().unwrap().join("alias");
        std::os::unix::fs::symlink(r.path(), &alias).unwrap();
        let via = alias.join(&rel);
        assert_eq!(fs::read(Reach::new(&via).unwrap().path()).unwrap(), b"deep");
    }

    #[test]
    fn a_symlink_deep_in_a_long_path_is_never_followed() {
        let (_t, r, outside) = setup();
        // A symlink in the third chunk, leading out of the root.
        let dir = long_rel(40);
        let parts: Vec<_> = dir.iter().collect();
        let above: PathBuf = parts[..35].iter().collect();
        r.place(&above.join("x"), true).unwrap();
        let link = r.place(&above.join(parts[35]), false).unwrap();
        std::os::unix::fs::symlink(&outside, link.path()).unwrap();
        for create in [false, true] {
            let e = r.place(&dir.join("f"), create).unwrap_err();
            assert!(is_confinement(&e), "create={create}: {e}");
        }
        let full = r.path().join(&dir).join("f");
        assert!(is_confinement(&Reach::new(&full).unwrap_err()));
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        // Nor does a step leave the directory it starts from: `..` past the root is refused
        // whichever chunk holds it.
        let real = long_rel(20);
        let mut up = real.as_os_str().as_bytes().to_vec();
        for _ in 0..21 {
            up.extend_from_slice(b"/..");
        }
        assert!(up.len() > ONE_CALL);
        let e = open_dir_in(std::os::fd::AsFd::as_fd(&r.fd), &up).unwrap_err();
        assert!(is_confinement(&e), "{e}");
        assert!(open_dir_in(std::os::fd::AsFd::as_fd(&r.fd), real.as_os_str().as_bytes()).is_ok());
    }
}
