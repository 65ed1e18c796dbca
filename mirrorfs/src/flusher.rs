//! The flusher: bounds how long the kernel holds written pages of selected files back from
//! mirrorfs, and so from the journal and the backups, when it buffers writes (the writeback
//! cache). Left alone, the kernel writes a page back some 30 s after it was dirtied
//! (`vm.dirty_expire_centisecs`); a log file kept open and never fsynced would reach its
//! backups that late. While any handle may have such pages ([`MirrorFs::buffered_writers`]),
//! this thread has the kernel write back the mount's dirty pages every [`EVERY`] (`syncfs`,
//! which on a FUSE mount writes back pages and times and waits for that, and asks the server
//! nothing else).
//!
//! The `syncfs` goes through a detached clone of the mount (`open_tree`), opened for that one
//! call: a descriptor on the mount itself would make an unmount at that moment fail as busy.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fs::MirrorFs;

/// How often buffered writes are pushed to mirrorfs at the latest.
pub const EVERY: Duration = Duration::from_millis(500);

/// How often the thread looks at the stop flag while it waits.
const POLL: Duration = Duration::from_millis(100);

/// `statfs` type of a FUSE file system.
const FUSE_SUPER_MAGIC: libc::c_long = 0x6573_5546;

/// Whether `e` says the mount is no longer where it was.
fn gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::EINVAL | libc::ENOTCONN)
    )
}

/// Failed flushes in a row before a warning.
const WARN_AFTER: u32 = 6;

/// Starts the flusher of the mount of `fs` at `mountpoint`; it ends once `stop` is set.
pub fn spawn(
    fs: Arc<MirrorFs>,
    mountpoint: PathBuf,
    stop: Arc<AtomicBool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("flusher".into())
        .spawn(move || {
            // Failures in a row: one alone is the mount going away (the unmount came first,
            // or its directory is already gone); a run of them is trouble worth a warning.
            let mut failures = 0u32;
            let mut next = Instant::now() + EVERY;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep(POLL.min(next - now));
                    continue;
                }
                next = now + EVERY;
                if !fs.writeback() || fs.buffered_writers() == 0 {
                    continue;
                }
                match flush(&mountpoint) {
                    Ok(()) => failures = 0,
                    // The mount is no longer at its path (unmounted, its directory gone):
                    // the session ends soon.
                    Err(e) if gone(&e) => log::debug!("flush of {}: {e}", mountpoint.display()),
                    Err(e) => {
                        failures += 1;
                        if failures == WARN_AFTER {
                            log::warn!(
                                "cannot have the kernel write back buffered writes on {} ({e}); they reach the journal at fsync, close or the kernel's own writeback",
                                mountpoint.display()
                            );
                        } else {
                            log::debug!("flush of {}: {e}", mountpoint.display());
                        }
                    }
                }
            }
        })
}

/// One `syncfs` of the mount at `mountpoint`.
pub fn flush(mountpoint: &Path) -> io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let dir: OwnedFd = match crate::atime::detached_clone(libc::AT_FDCWD, &path, 0) {
        // The clone goes with `_tree` at the end of this call.
        Ok((_tree, root)) => root,
        // Without the right to clone mounts (mirrorfs not run as root): the mount itself.
        Err(_) => std::fs::File::open(mountpoint)?.into(),
    };
    // SAFETY: a zeroed statfs is valid output space; plain system call.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above, on a descriptor we hold.
    if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut sfs) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if sfs.f_type != FUSE_SUPER_MAGIC {
        // The directory underneath: the mount is gone from its path.
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    // SAFETY: plain system call on a descriptor we hold.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
