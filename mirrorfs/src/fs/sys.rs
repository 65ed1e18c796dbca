//! Thin safe wrappers over the `*at()` system calls mirrorfs makes against the underlying
//! directory. Every path here is relative to a directory descriptor (never absolute), so
//! nothing goes back through the mount.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

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
    statx_raw(
        dir.as_raw_fd(),
        &cpath(rel)?,
        libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_SYNC_AS_STAT,
    )
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
    let p = cpath(rel)?;
    // SAFETY: p is NUL-terminated; the returned descriptor is owned by the File.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            p.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `mkdirat`.
pub fn mkdir_at(dir: BorrowedFd<'_>, rel: &[u8], mode: u32) -> io::Result<()> {
    let p = cpath(rel)?;
    // SAFETY: p is NUL-terminated.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), p.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// `mknodat`.
pub fn mknod_at(dir: BorrowedFd<'_>, rel: &[u8], mode: u32, rdev: u64) -> io::Result<()> {
    let p = cpath(rel)?;
    // SAFETY: p is NUL-terminated.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), p.as_ptr(), mode as libc::mode_t, rdev) })
        .map(drop)
}

/// `unlinkat` (`dir_flag`: remove a directory).
pub fn unlink_at(dir: BorrowedFd<'_>, rel: &[u8], remove_dir: bool) -> io::Result<()> {
    let p = cpath(rel)?;
    let flags = if remove_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: p is NUL-terminated.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), p.as_ptr(), flags) }).map(drop)
}

/// `renameat2` within one directory tree.
pub fn rename_at(dir: BorrowedFd<'_>, old: &[u8], new: &[u8], flags: u32) -> io::Result<()> {
    let (o, n) = (cpath(old)?, cpath(new)?);
    // SAFETY: both paths are NUL-terminated.
    check(unsafe {
        libc::renameat2(
            dir.as_raw_fd(),
            o.as_ptr(),
            dir.as_raw_fd(),
            n.as_ptr(),
            flags as libc::c_uint,
        )
    })
    .map(drop)
}

/// `symlinkat(target, dir, rel)`.
pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, rel: &[u8]) -> io::Result<()> {
    let t = CString::new(target).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let p = cpath(rel)?;
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), p.as_ptr()) }).map(drop)
}

/// `readlinkat`.
pub fn readlink_at(dir: BorrowedFd<'_>, rel: &[u8]) -> io::Result<Vec<u8>> {
    let p = cpath(rel)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buf is writable for its length.
    let n = check_size(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            p.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// `linkat` without following symlinks.
pub fn link_at(dir: BorrowedFd<'_>, old: &[u8], new: &[u8]) -> io::Result<()> {
    let (o, n) = (cpath(old)?, cpath(new)?);
    // SAFETY: both paths are NUL-terminated.
    check(unsafe { libc::linkat(dir.as_raw_fd(), o.as_ptr(), dir.as_raw_fd(), n.as_ptr(), 0) })
        .map(drop)
}

/// `fchmodat` (symlinks have no mode of their own on Linux).
pub fn chmod_at(dir: BorrowedFd<'_>, rel: &[u8], mode: u32) -> io::Result<()> {
    let p = cpath(rel)?;
    // SAFETY: p is NUL-terminated.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), p.as_ptr(), mode as libc::mode_t, 0) }).map(drop)
}

/// `fchownat` without following a final symlink; `u32::MAX` leaves a field as it is.
pub fn chown_at(dir: BorrowedFd<'_>, rel: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    let p = cpath(rel)?;
    // SAFETY: p is NUL-terminated.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            p.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
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
    let p = cpath(rel)?;
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: p is NUL-terminated; times has two elements as required.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
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
    let p = cpath(rel)?;
    // SAFETY: p is NUL-terminated.
    check(unsafe { libc::faccessat(dir.as_raw_fd(), p.as_ptr(), mask, 0) }).map(drop)
}

/// A path that reaches `rel` under `dir` through procfs (for calls that have no `*at` form).
fn proc_path(dir: BorrowedFd<'_>, rel: &[u8]) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if !rel.is_empty() {
        p.push(b'/');
        p.extend_from_slice(rel);
    }
    CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
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
    let p = proc_path(dir, rel)?;
    let n = xattr_name(name)?;
    let mut buf = vec![0u8; size];
    // SAFETY: buf is writable for `size` bytes (NULL-equivalent when size is 0).
    let len = check_size(unsafe {
        libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size)
    })?;
    buf.truncate(len.min(size));
    Ok((len, buf))
}

/// `llistxattr`, as for [`getxattr_at`].
pub fn listxattr_at(dir: BorrowedFd<'_>, rel: &[u8], size: usize) -> io::Result<(usize, Vec<u8>)> {
    let p = proc_path(dir, rel)?;
    let mut buf = vec![0u8; size];
    // SAFETY: buf is writable for `size` bytes.
    let len = check_size(unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), size) })?;
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
    let p = proc_path(dir, rel)?;
    let n = xattr_name(name)?;
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
}

/// `lremovexattr`.
pub fn removexattr_at(dir: BorrowedFd<'_>, rel: &[u8], name: &OsStr) -> io::Result<()> {
    let p = proc_path(dir, rel)?;
    let n = xattr_name(name)?;
    // SAFETY: strings are NUL-terminated.
    check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) }).map(drop)
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

/// All entries of the open directory `fd` (from its start), `.` and `..` included.
pub fn read_dir_all(fd: BorrowedFd<'_>) -> io::Result<Vec<DirEntry>> {
    lseek(fd, 0, libc::SEEK_SET)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
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
        if n == 0 {
            return Ok(out);
        }
        let mut off = 0usize;
        while off + 19 <= n as usize {
            let rec = &buf[off..n as usize];
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
