//! Thin safe wrappers over the `*at()` system calls mirrorfs makes against the underlying
//! directory. Every path here is relative to a directory descriptor (never absolute), so
//! nothing goes back through the mount.
//!
//! A path too long for one call (over `PATH_MAX`; ext4 holds such names) is reached in
//! steps at this one place ([`at`]): its parent directory opened one chunk of whole
//! components at a time through no symlink ([`crate::beneath::open_dir_in`]), then the call
//! made on the last component through that descriptor. A path short enough makes exactly the
//! one call it always made.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::beneath;
use crate::entry::Timestamp;

/// Turns `-1` into the last OS error.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn check_size(rc: libc::ssize_t) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// A relative path as a C string; the empty path (the directory itself) becomes ".".
pub fn cpath(rel: &[u8]) -> io::Result<CString> {
    let rel = if rel.is_empty() { b"." as &[u8] } else { rel };
    CString::new(rel).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Runs `call(dirfd, name)` for `rel` under `dir`: with `dir` and `rel` itself when one call
/// takes it (the common case, no extra call), else with `rel`'s parent directory opened in
/// steps beneath `dir` and its last component.
fn at<T>(
    dir: BorrowedFd<'_>,
    rel: &[u8],
    call: impl FnOnce(RawFd, &CString) -> io::Result<T>,
) -> io::Result<T> {
    match beneath::split_long(dir, rel)? {
        None => call(dir.as_raw_fd(), &cpath(rel)?),
        Some((parent, last)) => call(parent.as_raw_fd(), &cpath(last)?),
    }
}

/// The file-status fields mirrorfs uses (from `statx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    /// Device.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Type and permission bits.
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (special files).
    pub rdev: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Preferred I/O size.
    pub blksize: u32,
    /// Access time.
    pub atime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
    /// Status change time.
    pub ctime: Timestamp,
    /// Birth time in ns (0 if the file system does not record it): tells a reused inode number.
    pub btime_ns: u64,
}

impl Stat {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    /// Whether this is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

fn ts(t: libc::statx_timestamp) -> Timestamp {
    Timestamp {
        sec: t.tv_sec,
        nsec: t.tv_nsec,
    }
}

fn statx_raw(dirfd: RawFd, path: &CString, flags: libc::c_int) -> io::Result<Stat> {
    // SAFETY: statx is plain data; all-zero is a valid value.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: path is NUL-terminated, sx is writable for the call.
    check(unsafe {
        libc::statx(
            dirfd,
            path.as_ptr(),
            flags,
            libc::STATX_BASIC_STATS | libc::STATX_BTIME,
            &mut sx,
        )
    })?;
    let btime_ns = if sx.stx_mask & libc::STATX_BTIME != 0 {
        (sx.stx_btime.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(sx.stx_btime.tv_nsec as u64)
    } else {
        0
    };
    Ok(Stat {
        dev: libc::makedev(sx.stx_dev_major, sx.stx_dev_minor),
        ino: sx.stx_ino,
        mode: sx.stx_mode as u32,
        nlink: sx.stx_nlink,
        uid: sx.stx_uid,
        gid: sx.stx_gid,
        rdev: libc::makedev(sx.stx_rdev_major, sx.stx_rdev_minor),
        size: sx.stx_size,
        blocks: sx.stx_blocks,
        blksize: sx.stx_blksize,
        atime: ts(sx.stx_atime),
        mtime: ts(sx.stx_mtime),
        ctime: ts(sx.stx_ctime),
        btime_ns,
    })
}

/// `statx` of `rel` under `dir`, not following a final symlink.
pub fn stat_at(dir: BorrowedFd<'_>, rel: &[u8]) -> io::Result<Stat> {
    at(dir, rel, |d, p| {
        statx_raw(
            d,
            p,
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_SYNC_AS_STAT,
        )
    })
}

/// `statx` of an open descriptor.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    statx_raw(
        fd.as_raw_fd(),
        &CString::default(),
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
    )
}

/// `openat(dir, rel, flags, mode)`, always close-on-exec.
pub fn open_at(dir: BorrowedFd<'_>, rel: &[u8], flags: i32, mode: u32) -> io::Result<File> {
    let fd = at(dir, rel, |d, p| {
        // SAFETY: p is NUL-terminated; the returned descriptor is owned by the File.
        check(unsafe { libc::openat(d, p.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })
    })?;
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `mkdirat`.
pub fn mkdir_at(dir: BorrowedFd<'_>, rel: &[u8], mode: u32) -> io::Result<()> {
    at(dir, rel, |d, p| {
        // SAFETY: p is NUL-terminated.
        check(unsafe { libc::mkdirat(d, p.as_ptr(), mode as libc::mode_t) }).map(drop)
    })
}

/// `mknodat`.
pub fn mknod_at(dir: BorrowedFd<'_>, rel: &[u8], mode: u32, rdev: u64) -> io::Result<()> {
    at(dir, rel, |d, p| {
        // SAFETY: p is NUL-terminated.
        check(unsafe { libc::mknodat(d, p.as_ptr(), mode as libc::mode_t, rdev) }).map(drop)
    })
}

/// `unlinkat` (`dir_flag`: remove a directory).
pub fn unlink_at(dir: BorrowedFd<'_>, rel: &[u8], remove_dir: bool) -> io::Result<()> {
    let flags = if remove_dir { libc::AT_REMOVEDIR } else { 0 };
    at(dir, rel, |d, p| {
        // SAFETY: p is NUL-terminated.
        check(unsafe { libc::unlinkat(d, p.as_ptr(), flags) }).map(drop)
    })
}

/// `renameat2` within one directory tree.
pub fn rename_at(dir: BorrowedFd<'_>, old: &[u8], new: &[u8], flags: u32) -> io::Result<()> {
    at(dir, old, |od, o| {
        at(dir, new, |nd, n| {
            // SAFETY: both paths are NUL-terminated.
            check(unsafe { libc::renameat2(od, o.as_ptr(), nd, n.as_ptr(), flags as libc::c_uint) })
                .map(drop)
        })
    })
}

/// `symlinkat(target, dir, rel)`.
pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, rel: &[u8]) -> io::Result<()> {
    let t = CString::new(target).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    at(dir, rel, |d, p| {
        // SAFETY: both strings are NUL-terminated.
        check(unsafe { libc::symlinkat(t.as_ptr(), d, p.as_ptr()) }).map(drop)
    })
}

/// `readlinkat`.
pub fn readlink_at(dir: BorrowedFd<'_>, rel: &[u8]) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    let n = at(dir, rel, |d, p| {
        // SAFETY: buf is writable for its length.
        check_size(unsafe { libc::readlinkat(d, p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// `linkat` without following symlinks.
pub fn link_at(dir: BorrowedFd<'_>, old: &[u8], new: &[u8]) -> io::Result<()> {
    at(dir, old, |od, o| {
        at(dir, new, |nd, n| {
            // SAFETY: both paths are NUL-terminated.
            check(unsafe { libc::linkat(od, o.as_ptr(), nd, n.as_ptr(), 0) }).map(drop)
        })
    })
}

/// `fchmodat` (symlinks have no mode of their own on Linux).
pub fn chmod_at(dir: BorrowedFd<'_>, rel: &[u8], mode: u32) -> io::Result<()> {
    at(dir, rel, |d, p| {
        // SAFETY: p is NUL-terminated.
        check(unsafe { libc::fchmodat(d, p.as_ptr(), mode as libc::mode_t, 0) }).map(drop)
    })
}

/// `fchownat` without following a final symlink; `u32::MAX` leaves a field as it is.
pub fn chown_at(dir: BorrowedFd<'_>, rel: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    at(dir, rel, |d, p| {
        // SAFETY: p is NUL-terminated.
        check(unsafe { libc::fchownat(d, p.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
            .map(drop)
    })
}

/// A time to set: a value, now, or unchanged.
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    /// Leave as is.
    Omit,
    /// The current time.
    Now,
    /// This time.
    At(Timestamp),
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
        SetTime::At(t) => libc::timespec {
            tv_sec: t.sec as libc::time_t,
            tv_nsec: t.nsec as libc::c_long,
        },
    }
}

/// `utimensat` without following a final symlink.
pub fn utimens_at(
    dir: BorrowedFd<'_>,
    rel: &[u8],
    atime: SetTime,
    mtime: SetTime,
) -> io::Result<()> {
    let times = [timespec(atime), timespec(mtime)];
    at(dir, rel, |d, p| {
        // SAFETY: p is NUL-terminated; times has two elements as required.
        check(unsafe { libc::utimensat(d, p.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
            .map(drop)
    })
}

/// `futimens`.
pub fn futimens(fd: BorrowedFd<'_>, atime: SetTime, mtime: SetTime) -> io::Result<()> {
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: times has two elements as required.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(drop)
}

/// `fchmod`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we hold.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

/// `fchown`; `u32::MAX` leaves a field as it is.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we hold.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

/// `ftruncate`.
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we hold.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) }).map(drop)
}

/// `fallocate`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we hold.
    check(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
    .map(drop)
}

/// Starts (without waiting for) writeback of `len` bytes at `from` (`len` 0: to the end).
/// Only a hint: errors are left for the next fsync to report.
pub fn start_writeback(fd: BorrowedFd<'_>, from: u64, len: u64) {
    // SAFETY: plain syscall on a descriptor we hold.
    unsafe {
        libc::sync_file_range(
            fd.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// `lseek`.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain syscall on a descriptor we hold.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i64)
    }
}

/// `copy_file_range` between two descriptors at explicit offsets.
pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
    flags: u32,
) -> io::Result<usize> {
    let mut oi = off_in as libc::loff_t;
    let mut oo = off_out as libc::loff_t;
    // SAFETY: the offsets are valid for writing; the descriptors are held.
    check_size(unsafe {
        libc::copy_file_range(
            fd_in.as_raw_fd(),
            &mut oi,
            fd_out.as_raw_fd(),
            &mut oo,
            len,
            flags,
        )
    })
}

/// An open-file-description lock of the first byte of `fd`: `cmd` `F_OFD_SETLK` takes a lock
/// of type `kind`; `F_OFD_GETLK` asks whether one would conflict with a lock another open
/// file holds. Returns the type found (`F_UNLCK`: none).
pub fn ofd_lock(
    fd: BorrowedFd<'_>,
    cmd: libc::c_int,
    kind: libc::c_int,
) -> io::Result<libc::c_int> {
    // SAFETY: a zeroed flock is valid; fields set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 1;
    // SAFETY: plain fcntl on a descriptor we hold, with a valid flock.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl) })?;
    Ok(fl.l_type as libc::c_int)
}

/// The file open at `fd` opened again, for reading (through `/proc/self/fd`, so it works
/// for a file with no name left).
pub fn reopen_readable(fd: BorrowedFd<'_>) -> io::Result<File> {
    File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `fsync` or `fdatasync`.
pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we hold.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

/// `fstatvfs`.
pub fn statvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    // SAFETY: statvfs is plain data; zero is valid.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: s is writable for the call.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut s) })?;
    Ok(s)
}

/// `faccessat` (real ids).
pub fn access_at(dir: BorrowedFd<'_>, rel: &[u8], mask: i32) -> io::Result<()> {
    at(dir, rel, |d, p| {
        // SAFETY: p is NUL-terminated.
        check(unsafe { libc::faccessat(d, p.as_ptr(), mask, 0) }).map(drop)
    })
}

/// Runs `call(path)` with a path that reaches `rel` under `dir` through procfs (for calls
/// that have no `*at` form): `/proc/self/fd/DIR/REL`, or for a `rel` too long for that, its
/// parent opened in steps ([`at`]) and `/proc/self/fd/PARENT/LAST`.
fn proc_path<T>(
    dir: BorrowedFd<'_>,
    rel: &[u8],
    call: impl FnOnce(&CString) -> io::Result<T>,
) -> io::Result<T> {
    let path = |d: RawFd, name: &[u8]| {
        let mut p = format!("/proc/self/fd/{d}").into_bytes();
        if !name.is_empty() {
            p.push(b'/');
            p.extend_from_slice(name);
        }
        CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    };
    let whole = path(dir.as_raw_fd(), rel)?;
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) if whole.as_bytes().len() > beneath::ONE_CALL => {
            let parent = beneath::open_dir_in(dir, &rel[..i])?;
            call(&path(parent.as_raw_fd(), &rel[i + 1..])?)
        }
        _ => call(&whole),
    }
}

fn xattr_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `lgetxattr`; with `size == 0`, returns the value's length in an empty vector's capacity.
pub fn getxattr_at(
    dir: BorrowedFd<'_>,
    rel: &[u8],
    name: &OsStr,
    size: usize,
) -> io::Result<(usize, Vec<u8>)> {
    let n = xattr_name(name)?;
    let mut buf = vec![0u8; size];
    let len = proc_path(dir, rel, |p| {
        // SAFETY: buf is writable for `size` bytes (NULL-equivalent when size is 0).
        check_size(unsafe {
            libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size)
        })
    })?;
    buf.truncate(len.min(size));
    Ok((len, buf))
}

/// `llistxattr`, as for [`getxattr_at`].
pub fn listxattr_at(dir: BorrowedFd<'_>, rel: &[u8], size: usize) -> io::Result<(usize, Vec<u8>)> {
    let mut buf = vec![0u8; size];
    let len = proc_path(dir, rel, |p| {
        // SAFETY: buf is writable for `size` bytes.
        check_size(unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), size) })
    })?;
    buf.truncate(len.min(size));
    Ok((len, buf))
}

/// `lsetxattr`.
pub fn setxattr_at(
    dir: BorrowedFd<'_>,
    rel: &[u8],
    name: &OsStr,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    let n = xattr_name(name)?;
    proc_path(dir, rel, |p| {
        // SAFETY: value is readable for its length; strings are NUL-terminated.
        check(unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })
        .map(drop)
    })
}

/// `lremovexattr`.
pub fn removexattr_at(dir: BorrowedFd<'_>, rel: &[u8], name: &OsStr) -> io::Result<()> {
    let n = xattr_name(name)?;
    proc_path(dir, rel, |p| {
        // SAFETY: strings are NUL-terminated.
        check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) }).map(drop)
    })
}

/// One directory entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Inode number as the directory reports it.
    pub ino: u64,
    /// `DT_*` type.
    pub kind: u8,
    /// Name.
    pub name: OsString,
}

/// Reads the start of directory `fd` (which updates its access time as the file system's
/// mount says) and rewinds it.
pub fn touch_dir(fd: BorrowedFd<'_>) -> io::Result<()> {
    getdents(fd, &mut [0u8; 1024])?;
    lseek(fd, 0, libc::SEEK_SET).map(drop)
}

/// One `getdents64` into `buf`: the bytes of whole records it filled (0 at the end).
fn getdents(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is writable for its length; getdents64 fills whole records.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// All entries of the open directory `fd` (from its start), `.` and `..` included.
pub fn read_dir_all(fd: BorrowedFd<'_>) -> io::Result<Vec<DirEntry>> {
    lseek(fd, 0, libc::SEEK_SET)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = getdents(fd, &mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        let mut off = 0usize;
        while off + 19 <= n {
            let rec = &buf[off..n];
            let ino = u64::from_ne_bytes(rec[0..8].try_into().unwrap_or_default());
            let reclen = u16::from_ne_bytes([rec[16], rec[17]]) as usize;
            if reclen == 0 || reclen > rec.len() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let kind = rec[18];
            let name_bytes = &rec[19..reclen];
            let end = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            out.push(DirEntry {
                ino,
                kind,
                name: OsString::from_vec(name_bytes[..end].to_vec()),
            });
            off += reclen;
        }
    }
}

/// Sets this thread's file-system uid and gid (Linux: per thread), restoring both on drop.
pub struct FsCreds {
    uid: u32,
    gid: u32,
}

impl FsCreds {
    /// Switches to `uid`/`gid` for file-system checks and ownership of new files.
    pub fn switch(uid: u32, gid: u32) -> FsCreds {
        // SAFETY: setfsuid/setfsgid change only this thread's fs credentials.
        let old_gid = unsafe { libc::setfsgid(gid) } as u32;
        // SAFETY: as above.
        let old_uid = unsafe { libc::setfsuid(uid) } as u32;
        FsCreds {
            uid: old_uid,
            gid: old_gid,
        }
    }
}

impl Drop for FsCreds {
    fn drop(&mut self) {
        // SAFETY: restores this thread's previous fs credentials.
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
        }
    }
}

/// Opens `path` as a directory (the underlying root, before mounting over it).
pub fn open_dir(path: &std::path::Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is NUL-terminated; the descriptor is owned below.
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether process `pid` (a FUSE caller whose own gid is `gid`) belongs to group `group`: its
/// gid, or one of its supplementary groups (`/proc/PID/status`).
pub fn in_group(pid: u32, gid: u32, group: u32) -> bool {
    if gid == group {
        return true;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(group)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn every_call_reaches_a_path_longer_than_path_max() {
        let t = tempfile::tempdir().unwrap();
        let root = open_dir(t.path()).unwrap();
        let dir = root.as_fd();
        let mut rel = Vec::new();
        for i in 0..20 {
            if i > 0 {
                rel.push(b'/');
            }
            rel.extend_from_slice(format!("{i:02}{}", "d".repeat(248)).as_bytes());
            mkdir_at(dir, &rel, 0o755).unwrap();
        }
        assert!(rel.len() > libc::PATH_MAX as usize);
        let at = |name: &str| [rel.as_slice(), b"/", name.as_bytes()].concat();
        let f = open_at(dir, &at("f"), libc::O_CREAT | libc::O_WRONLY, 0o644).unwrap();
        drop(f);
        rename_at(dir, &at("f"), &at("g"), 0).unwrap();
        link_at(dir, &at("g"), &at("g2")).unwrap();
        assert_eq!(stat_at(dir, &at("g")).unwrap().nlink, 2);
        chmod_at(dir, &at("g"), 0o600).unwrap();
        assert_eq!(stat_at(dir, &at("g")).unwrap().mode & 0o777, 0o600);
        utimens_at(dir, &at("g"), SetTime::Omit, SetTime::Now).unwrap();
        access_at(dir, &at("g"), libc::R_OK).unwrap();
        symlink_at(b"g", dir, &at("l")).unwrap();
        assert_eq!(readlink_at(dir, &at("l")).unwrap(), b"g");
        let name = OsStr::new("user.k");
        if setxattr_at(dir, &at("g"), name, b"v", 0).is_ok() {
            assert_eq!(getxattr_at(dir, &at("g"), name, 8).unwrap().1, b"v");
            assert!(listxattr_at(dir, &at("g"), 64)
                .unwrap()
                .1
                .starts_with(b"user.k"));
            removexattr_at(dir, &at("g"), name).unwrap();
        }
        unlink_at(dir, &at("g2"), false).unwrap();
        mkdir_at(dir, &at("s"), 0o755).unwrap();
        unlink_at(dir, &at("s"), true).unwrap();
        assert!(stat_at(dir, &at("s")).is_err());
        // What a call of the whole path says, for comparison: too long.
        let whole = t.path().join(OsStr::from_bytes(&at("g")));
        assert_eq!(
            std::fs::metadata(whole).unwrap_err().raw_os_error(),
            Some(libc::ENAMETOOLONG)
        );
    }
}
