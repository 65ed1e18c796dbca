//! The system calls the layer makes on its backing directory, as thin safe wrappers.
//!
//! Every access goes through a descriptor (an `O_PATH` descriptor and a name, or
//! `/proc/self/fd/N`, which the kernel resolves to the open file itself), never through a
//! path from `/`: the layer may be mounted over its own backing directory, where such a path
//! would lead back into the mount.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt};

/// What kind of object an inode is, as far as the layer cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A FIFO, socket or device node.
    Other,
}

impl Kind {
    /// The kind of a `st_mode`.
    pub fn of_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

/// The empty path, for the `AT_EMPTY_PATH` calls.
const EMPTY: &CStr = c"";

/// `name` as a C string (`EINVAL` if it holds a NUL byte).
pub fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cvt_fd(rc: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(rc)?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `/proc/self/fd/N` for `fd`: opening it reaches the open file itself, wherever it is now.
pub fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("a number has no NUL")
}

/// An `O_PATH` descriptor of `name` in `dir` (not following a final symlink).
pub fn open_path(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    openat(
        dir,
        name,
        libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
    )
}

/// `openat(dir, name, flags, mode)`.
pub fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: valid descriptor and NUL-terminated name.
    cvt_fd(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })
}

/// Opens the file `fd` refers to again, with `flags` (not for symlinks).
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let p = proc_path(fd);
    // SAFETY: NUL-terminated path.
    cvt_fd(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) })
}

/// A second descriptor of the same open file.
pub fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// `fstat` of any descriptor, `O_PATH` ones included.
pub fn stat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data; the kernel fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, empty path, writable buffer.
    cvt(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// `fstatat(dir, name)` without following a final symlink.
pub fn statat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    // SAFETY: stat is plain data; the kernel fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, NUL-terminated name, writable buffer.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// `mkdirat`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid descriptor and name.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// `mknodat`.
pub fn mknodat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid descriptor and name.
    cvt(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            c.as_ptr(),
            mode as libc::mode_t,
            rdev as libc::dev_t,
        )
    })
    .map(drop)
}

/// `symlinkat(target, dir, name)`.
pub fn symlinkat(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    // SAFETY: valid descriptor and names.
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(drop)
}

/// `unlinkat` (`dir_flag` true: `AT_REMOVEDIR`).
pub fn unlinkat(dir: BorrowedFd<'_>, name: &OsStr, dir_flag: bool) -> io::Result<()> {
    let c = cstr(name)?;
    let flags = if dir_flag { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid descriptor and name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
}

/// `renameat2`.
pub fn renameat2(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
    flags: u32,
) -> io::Result<()> {
    let a = cstr(from)?;
    let b = cstr(to)?;
    // SAFETY: valid descriptors and names.
    cvt(unsafe {
        libc::renameat2(
            from_dir.as_raw_fd(),
            a.as_ptr(),
            to_dir.as_raw_fd(),
            b.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// A new link `to_dir/to` to the inode `fd` refers to (which must still have a link).
pub fn link_fd(fd: BorrowedFd<'_>, to_dir: BorrowedFd<'_>, to: &OsStr) -> io::Result<()> {
    let b = cstr(to)?;
    // SAFETY: valid descriptors, empty path with AT_EMPTY_PATH (needs CAP_DAC_READ_SEARCH).
    let rc = unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            to_dir.as_raw_fd(),
            b.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) && err.raw_os_error() != Some(libc::ENOENT) {
        return Err(err);
    }
    // Without the capability: through /proc, following the magic link to the inode.
    let p = proc_path(fd);
    // SAFETY: valid descriptor and names.
    cvt(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            p.as_ptr(),
            to_dir.as_raw_fd(),
            b.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

/// `link(from_dir/from, to_dir/to)`.
pub fn linkat(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
) -> io::Result<()> {
    let a = cstr(from)?;
    let b = cstr(to)?;
    // SAFETY: valid descriptors and names.
    cvt(unsafe {
        libc::linkat(
            from_dir.as_raw_fd(),
            a.as_ptr(),
            to_dir.as_raw_fd(),
            b.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// The target of the symlink `fd` refers to.
pub fn readlink(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid descriptor, empty path, buffer of the given length.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// The entries of directory `fd` (without `.` and `..`): name, inode number, kind.
pub fn list_dir(fd: BorrowedFd<'_>) -> io::Result<Vec<(OsString, u64, Kind)>> {
    let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let mut out = Vec::new();
    for e in std::fs::read_dir(&p)? {
        let e = e?;
        let ft = e.file_type()?;
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_file() {
            Kind::File
        } else {
            debug_assert!(
                ft.is_fifo() || ft.is_socket() || ft.is_block_device() || ft.is_char_device()
            );
            Kind::Other
        };
        out.push((e.file_name(), e.ino(), kind));
    }
    Ok(out)
}

/// Reads up to `len` bytes at `off` (fewer only at the end of the file).
pub fn pread(fd: BorrowedFd<'_>, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        // SAFETY: valid descriptor; the buffer has room for len - done more bytes.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                len - done,
                (off + done as u64) as libc::off_t,
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
            break;
        }
        done += n as usize;
    }
    buf.truncate(done);
    Ok(buf)
}

/// Writes all of `data` at `off`.
pub fn pwrite_all(fd: BorrowedFd<'_>, off: u64, data: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: valid descriptor; the slice is valid for its length.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                data[done..].as_ptr().cast(),
                data.len() - done,
                (off + done as u64) as libc::off_t,
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
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        done += n as usize;
    }
    Ok(())
}

/// `ftruncate`.
pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    // SAFETY: valid descriptor.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) }).map(drop)
}

/// `fallocate`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: valid descriptor.
    cvt(unsafe { libc::fallocate(fd.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t) })
        .map(drop)
}

/// `lseek`.
pub fn lseek(fd: BorrowedFd<'_>, off: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: valid descriptor.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A time to set: a value, now, or unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// Leave it.
    Omit,
    /// The current time.
    Now,
    /// Seconds and nanoseconds since the epoch.
    At(i64, i64),
}

fn timespec(t: SetTime) -> libc::timespec {
    match t {
        SetTime::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        SetTime::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        SetTime::At(s, ns) => libc::timespec {
            tv_sec: s as libc::time_t,
            tv_nsec: ns as _,
        },
    }
}

/// Sets the access and modification times of the inode `fd` refers to (symlinks included).
pub fn set_times(fd: BorrowedFd<'_>, atime: SetTime, mtime: SetTime) -> io::Result<()> {
    let ts = [timespec(atime), timespec(mtime)];
    // SAFETY: valid descriptor, empty path, two timespecs.
    cvt(unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            ts.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Changes the owner of the inode `fd` refers to (`u32::MAX`: unchanged).
pub fn chown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid descriptor, empty path.
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Changes the mode of the inode `fd` refers to (not a symlink).
pub fn chmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: NUL-terminated path.
    cvt(unsafe { libc::chmod(p.as_ptr(), (mode & 0o7777) as libc::mode_t) }).map(drop)
}

/// `fstatvfs` of the file system `fd` is on.
pub fn statvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    // SAFETY: statvfs is plain data.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let p = proc_path(fd);
    // SAFETY: NUL-terminated path, writable buffer.
    cvt(unsafe { libc::statvfs(p.as_ptr(), &mut s) })?;
    Ok(s)
}

/// Removes `name` in `dir` and, for a directory, everything beneath it (bounded by the depth
/// of the tree: one level of recursion per directory level).
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let st = statat(dir, name)?;
    if Kind::of_mode(st.st_mode) != Kind::Dir {
        return unlinkat(dir, name, false);
    }
    let sub = openat(
        dir,
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    use std::os::fd::AsFd;
    for (n, _, _) in list_dir(sub.as_fd())? {
        remove_tree(sub.as_fd(), &n)?;
    }
    drop(sub);
    unlinkat(dir, name, true)
}

/// Raises this process's open-file limit as far as it goes (the layer holds an `O_PATH`
/// descriptor for every inode the kernel knows, as libfuse's passthrough_hp does).
pub fn raise_fd_limit() {
    // SAFETY: rlimit is plain data; the calls only read and set this process's limit.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return;
        }
        let want = libc::rlimit {
            rlim_cur: 1 << 20,
            rlim_max: r.rlim_max.max(1 << 20),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
