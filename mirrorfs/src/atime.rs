//! Access times that follow the mirrorfs mount's options (`noatime`, `relatime`,
//! `strictatime`, `nodiratime`, `ro`), as they would on the file system underneath mounted
//! with those options.
//!
//! Reads through mirrorfs happen on the files underneath (kernel passthrough reads the backing
//! file; other reads and `readdir` are done by mirrorfs), so the *underlying* mount's atime
//! policy applies to them, whatever the FUSE mount says: a `noatime` or read-only mirrorfs
//! mount still changed access times, and a `strictatime` one updated them only as `relatime`
//! does. And an access time cannot be set afterwards without changing the change time.
//!
//! So mirrorfs reaches the files through a private, detached clone of the mount tree under
//! its source (`open_tree(OPEN_TREE_CLONE)`, in no namespace, invisible in the mount table)
//! whose atime attributes ([`Underneath::follow`], `mount_setattr`) are those of the mirrorfs
//! mount: the file system underneath then updates access times exactly as the options say, at
//! no cost per operation. The kernel does not tell a FUSE server about a remount, so a thread
//! watches `/proc/self/mountinfo` (it polls as readable on every mount change) and follows the
//! flags of the mirrorfs mount when they change. A read-only mirrorfs mount never changes an
//! access time (the clone gets `noatime`; writes are refused by the kernel at the FUSE mount).
//!
//! Both system calls need `CAP_SYS_ADMIN`: a mount by an ordinary user (through fusermount3)
//! keeps the underlying mount's policy, as before.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::mountopts::{parse_mountinfo, Flags};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const MOUNT_ATTR_RELATIME: u64 = 0;
const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// The `mount_setattr` atime attributes the files underneath get for a mirrorfs mount with
/// `flags`.
pub fn atime_attr(flags: Flags) -> u64 {
    let mode = if flags.has(libc::MS_RDONLY) || flags.has(libc::MS_NOATIME) {
        MOUNT_ATTR_NOATIME
    } else if flags.has(libc::MS_STRICTATIME) {
        MOUNT_ATTR_STRICTATIME
    } else {
        MOUNT_ATTR_RELATIME
    };
    if flags.has(libc::MS_NODIRATIME) {
        mode | MOUNT_ATTR_NODIRATIME
    } else {
        mode
    }
}

/// The detached clone of the mount tree under the source, through which mirrorfs reaches the
/// files.
#[derive(Debug)]
pub struct Underneath {
    tree: OwnedFd,
    applied: Mutex<Option<u64>>,
}

/// A detached clone of the mount at `path` (relative to `at`; `flags` beside
/// `OPEN_TREE_CLONE`, such as `AT_RECURSIVE`): the clone, which no mount table shows and which
/// keeps no unmount of the original busy, and a directory descriptor of its root.
pub(crate) fn detached_clone(
    at: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_uint,
) -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: plain system call with a NUL-terminated path; the result is a new descriptor.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            at,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | flags,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    // SAFETY: openat on a valid descriptor with a NUL-terminated path.
    let root = unsafe {
        libc::openat(
            tree.as_raw_fd(),
            c".".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if root < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: root is a fresh descriptor we own.
    Ok((tree, unsafe { OwnedFd::from_raw_fd(root) }))
}

impl Underneath {
    /// Clones the mount tree at directory `dir` (with the mounts inside it); the clone and a
    /// directory descriptor of its root, to reach the files through.
    pub fn clone_of(dir: BorrowedFd<'_>) -> io::Result<(Underneath, OwnedFd)> {
        let (tree, root) = detached_clone(
            dir.as_raw_fd(),
            c"",
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
        )?;
        Ok((
            Underneath {
                tree,
                applied: Mutex::new(None),
            },
            root,
        ))
    }

    /// Gives the files underneath the atime policy of a mirrorfs mount with `flags` (nothing
    /// to do when they have it already).
    pub fn follow(&self, flags: Flags) -> io::Result<()> {
        let want = atime_attr(flags);
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if *applied == Some(want) {
            return Ok(());
        }
        let attr = MountAttr {
            attr_set: want,
            attr_clr: MOUNT_ATTR_ATIME_MASK | MOUNT_ATTR_NODIRATIME,
            propagation: 0,
            userns_fd: 0,
        };
        let empty = c"";
        // SAFETY: attr is a valid struct of the size passed; the path is NUL-terminated.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                self.tree.as_raw_fd(),
                empty.as_ptr(),
                (libc::AT_EMPTY_PATH as libc::c_uint) | AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        log::debug!("files underneath: atime attributes {want:#x}");
        *applied = Some(want);
        Ok(())
    }
}

/// Keeps the files underneath (and the file system's own idea of the flags) following the
/// flags of the mirrorfs mount, mount `mount_id`.
///
/// A remount is seen at the next open or `opendir` at the latest ([`Follower::check`]: one
/// `poll` of a descriptor of `/proc/self/mountinfo` that says whether the mount table changed,
/// so a program that remounts and then opens a file gets the new behaviour), and by a thread
/// ([`spawn_watcher`]) for files already open.
pub struct Follower {
    under: Option<Arc<Underneath>>,
    mount_id: u64,
    table: Mutex<std::fs::File>,
    /// Where the flags seen last are kept (`MS_*`), for the file system.
    seen: Arc<AtomicU64>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Follower(mount {})", self.mount_id)
    }
}

impl Follower {
    /// Follows mount `mount_id`: the clone underneath (if any) gets its atime options, and
    /// `seen` holds its flags.
    pub fn new(
        under: Option<Arc<Underneath>>,
        mount_id: u64,
        seen: Arc<AtomicU64>,
    ) -> io::Result<Follower> {
        Ok(Follower {
            under,
            mount_id,
            table: Mutex::new(std::fs::File::open("/proc/self/mountinfo")?),
            seen,
        })
    }

    /// Reads the mount's flags now and follows them; false if the mount is gone.
    pub fn refresh(&self) -> bool {
        let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return true;
        };
        let Some(m) = parse_mountinfo(&text)
            .into_iter()
            .find(|m| m.id == self.mount_id)
        else {
            return false;
        };
        self.seen.store(m.flags.0 as _, Ordering::Relaxed);
        if let Some(u) = &self.under {
            if let Err(e) = u.follow(m.flags) {
                log::warn!("cannot give the files underneath the mount's atime options: {e}");
            }
        }
        true
    }

    /// Follows the flags again if the mount table changed since the last check.
    pub fn check(&self) {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if changed(&table, 0) {
            self.refresh();
        }
    }
}

/// Whether the mount table changed since `file` (of `/proc/self/mountinfo`) last said so,
/// waiting up to `ms` milliseconds.
fn changed(file: &std::fs::File, ms: libc::c_int) -> bool {
    let mut pfd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: one valid pollfd, bounded wait.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && pfd.revents & (libc::POLLPRI | libc::POLLERR) != 0
}

/// Follows remounts while files stay open: a thread waiting on the mount table, until `stop`
/// or the mount is gone.
pub fn spawn_watcher(
    follower: Arc<Follower>,
    stop: Arc<AtomicBool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let file = std::fs::File::open("/proc/self/mountinfo")?;
    std::thread::Builder::new()
        .name("mount-flags".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if changed(&file, 500) && !follower.refresh() {
                    break;
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        assert_eq!(atime_attr(Flags(0)), MOUNT_ATTR_RELATIME);
        assert_eq!(atime_attr(Flags(libc::MS_RELATIME)), MOUNT_ATTR_RELATIME);
        assert_eq!(atime_attr(Flags(libc::MS_NOATIME)), MOUNT_ATTR_NOATIME);
        assert_eq!(
            atime_attr(Flags(libc::MS_STRICTATIME | libc::MS_NODIRATIME)),
            MOUNT_ATTR_STRICTATIME | MOUNT_ATTR_NODIRATIME
        );
        assert_eq!(
            atime_attr(Flags(libc::MS_RDONLY | libc::MS_STRICTATIME)),
            MOUNT_ATTR_NOATIME
        );
    }
}
