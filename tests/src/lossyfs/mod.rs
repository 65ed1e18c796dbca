//! `lossyfs`: a pass-through FUSE file system that keeps apart every change not yet made
//! durable, and on command simulates a power loss: it drops those changes (or tears them), then
//! refuses every request until it is mounted again, when it shows only the durable state. It
//! is test infrastructure: `kill -9` keeps the page cache, so only a layer like this one tests
//! what fsync is for. [LazyFS](https://github.com/dsrhaslab/lazyfs) is the model for data; this
//! layer also holds back namespace changes, as POSIX allows a file system to.
//!
//! Drive it from tests with [`crate::lossy::LossyFs`]; the binary is `lossyfs BACKING
//! MOUNTPOINT --control SOCKET` (`src/bin/lossyfs.rs`).
//!
//! # What is durable
//!
//! At mount, everything in the backing directory is durable. Afterwards, every change is
//! carried out on the backing directory at once (so reads, through the mount, always see the
//! latest state, as a page cache would), and the layer remembers what each change overwrote
//! until the change is made durable:
//!
//! | change | durable after |
//! | --- | --- |
//! | a file's content and size (`write`, `truncate`, `fallocate`, writes through a shared `mmap`) | `fsync` or `fdatasync` of that file (any descriptor of it), `msync(MS_SYNC)`, or the write itself if it is `O_SYNC`/`O_DSYNC` (open flag or `RWF_SYNC`/`RWF_DSYNC`) |
//! | a file's or directory's attributes (mode, owner, times) | `fsync`/`fdatasync` of that object |
//! | a directory's entries (`create`, `mknod`, `mkdir`, `symlink`, `link`, `unlink`, `rmdir`, `rename`) | `fsync` of that directory |
//! | everything | the control command `sync`, or a clean unmount |
//!
//! Precisely:
//!
//! * **fsync of a file never makes its name durable**, and fsync of a directory never makes a
//!   file's content durable. A new file survives a power loss only if its parent directory
//!   was fsync'd after it was created (and every directory above it that is new, likewise),
//!   with the content it had at its last fsync (empty if it never had one). This is POSIX's
//!   rule; ext4 in practice also keeps a new file's name after an fsync of the file alone,
//!   but a program must not count on that. A rename is durable in each directory it touches
//!   once that directory is fsync'd: the old name stays until the old directory is fsync'd,
//!   the new name appears once the new one is (a file may then have both, as hard links; a
//!   directory keeps the first one a breadth-first walk of the tree in name order meets).
//! * `fdatasync` is treated as `fsync` (it also makes the attributes durable), and an
//!   `O_SYNC`/`O_DSYNC` write as a write followed by `fsync` of the file: all of the file's
//!   content, not only the range written.
//! * **`sync(2)` and `syncfs(2)` are not durability points.** The kernel does not pass
//!   `syncfs` to a FUSE server (its `fuse_sync_fs` sends `FUSE_SYNCFS` only on virtiofs
//!   connections) and `sync` sends no fsync to FUSE files either, so the layer cannot see
//!   them. Nor are `close`, `flush` or `sync_file_range`. A program that relies on `syncfs`
//!   for durability (the router did, before removing a pair of logs) loses data here; it must
//!   fsync what it relies on. The test
//!   `lossy_harness::syncfs_is_not_a_durability_point` shows this kernel's behaviour.
//! * Extended attributes are written through and durable at once (not held back).
//!
//! # A power loss
//!
//! The control command `power-loss` (or `power-loss tear SEED`) turns the backing directory
//! into its durable state, in place (`restore`): every directory gets back its durable
//! entries, every file its durable content, size and attributes; what no durable name reaches
//! is removed. Objects keep their inode numbers (renamed or linked back; removed objects that
//! may come back are kept in a hidden attic, `.lossyfs-attic` in the backing root, until a
//! directory fsync makes their removal durable; the name is reserved: the mount hides it and
//! refuses to create it, `EPERM`). With **tearing**, each file whose content
//! changed since its last durability point keeps a random prefix of those changes in order
//! (writes, truncates, fallocates), the last kept write itself cut at a random byte, as a disk
//! may have written some of the data before the power went; the seed is in the report and
//! replays the same tear. Namespace changes are never torn: all unsynced ones are dropped.
//!
//! Afterwards every request fails with `EIO` (even `stat` of the mount point: nothing is
//! answered from a kernel cache, since every reply has a zero TTL and every file is in direct
//! I/O mode) until the layer is mounted again by a new server process, which serves the
//! durable state. Pages a process had mapped with `mmap` stay readable to it (they are in
//! its memory): tests should treat every process using the layer as dead at a power loss.
//!
//! What differs from a real power loss, knowingly:
//!
//! * The change time (`ctime`) of every object the restore touched is the time of the restore,
//!   not its durable value (no system call sets a ctime). A program that compares ctimes to
//!   find changes sees such objects as changed even where a real file system would show the
//!   old ctime; content, size, mode, owner, mtime and inode numbers are the durable ones.
//! * Only files are torn; a real file system may also keep some unsynced namespace changes.
//!
//! # O_DIRECT, fallocate
//!
//! `O_DIRECT` opens (and `fcntl(F_SETFL, O_DIRECT)`) are accepted: the kernel (6.18 here)
//! lets them through on the layer's files, and since every file is in direct-I/O mode there
//! is no alignment rule (`lossy_harness::fallocate_and_o_direct_work_and_are_held_back_like_writes`).
//! The backing file is opened without it, so a product needs no fallback on this layer. `fallocate` supports mode 0, `KEEP_SIZE`,
//! `PUNCH_HOLE` and `ZERO_RANGE` (not `COLLAPSE_RANGE`/`INSERT_RANGE`: `EOPNOTSUPP`); a
//! preallocation is invisible, a size it changes is held back like a truncate.
//!
//! # Control interface
//!
//! A Unix socket (mode 0600) taking one command per line, answering one JSON object per line
//! (`{"ok":true,…}` or `{"ok":false,"error":…}`): `power-loss`, `power-loss tear SEED`,
//! `sync`, `status` (counts of what is pending; `dead` after a power loss), `ping`.
//!
//! # Limits
//!
//! The backing directory must be one file system with nothing mounted inside it, changed by
//! nobody else while it is served, and must not contain the mount point (the mount point may
//! be the backing directory itself: the layer reaches it only through a descriptor opened
//! before mounting). The server runs as root, as the tests do (it links objects back by
//! descriptor and gives new objects to their callers). It runs one request at a time, asks nothing to be cached, holds an
//! `O_PATH` descriptor per inode the kernel knows, and keeps the bytes of unsynced writes in
//! memory (for tearing; up to 512 MiB, beyond which a file's changes are dropped whole rather
//! than torn): correct first, fast enough for tests.

pub mod fs;
pub mod fuse;
pub mod model;
pub mod restore;
pub mod sys;

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};

use self::fs::{Layer, ATTIC};

/// The file-system type of the layer's mounts in `/proc/self/mountinfo` (or `fuse`, with a
/// source starting with [`FS_NAME`]).
pub const FS_TYPE: &str = "fuse.lossyfs";

/// The prefix of the source of the layer's mounts (`lossyfs:BACKING`).
pub const FS_NAME: &str = "lossyfs:";

/// How to serve.
#[derive(Clone, Debug)]
pub struct Options {
    /// The directory served.
    pub backing: PathBuf,
    /// Where (may be `backing` itself).
    pub mountpoint: PathBuf,
    /// The control socket.
    pub control: PathBuf,
}

fn context(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Blocks SIGINT/SIGTERM/SIGHUP in this thread (and the threads it starts); returns the set.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; the calls only fill and install the mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Mounts and serves until unmounted (or a signal asks to unmount).
pub fn run(opts: Options) -> io::Result<()> {
    let sigset = block_signals();
    let backing = opts.backing.canonicalize().map_err(context(format!(
        "backing directory {}",
        opts.backing.display()
    )))?;
    let mountpoint = opts.mountpoint.canonicalize().map_err(context(format!(
        "mount point {}",
        opts.mountpoint.display()
    )))?;
    if mountpoint != backing && mountpoint.starts_with(&backing) {
        return Err(io::Error::other(format!(
            "mount point {} is inside the backing directory {}",
            mountpoint.display(),
            backing.display()
        )));
    }
    let root =
        std::fs::File::open(&backing).map_err(context(format!("opening {}", backing.display())))?;
    let root: std::os::fd::OwnedFd = root.into();
    // An attic left by a server that was killed: its objects had been removed.
    let attic = backing.join(ATTIC);
    if attic.exists() {
        log::warn!(
            "removing {} left by a server that did not finish",
            attic.display()
        );
        std::fs::remove_dir_all(&attic)
            .map_err(context(format!("removing {}", attic.display())))?;
    }
    // Modes from the kernel already have the caller's umask applied.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0) };
    sys::raise_fd_limit();
    let layer = Arc::new(Layer::new(root)?);

    let _ = std::fs::remove_file(&opts.control);
    let listener = UnixListener::bind(&opts.control).map_err(context(format!(
        "control socket {}",
        opts.control.display()
    )))?;
    std::fs::set_permissions(&opts.control, std::fs::Permissions::from_mode(0o600))?;
    {
        let layer = layer.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve_control(listener, layer))?;
    }

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("{FS_NAME}{}", backing.display())),
        MountOption::Subtype("lossyfs".into()),
        MountOption::DefaultPermissions,
    ];
    // SAFETY: geteuid has no preconditions.
    config.acl = if unsafe { libc::geteuid() } == 0 {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(1);
    let mut session = Session::new(fuse::LossyFuse::new(layer.clone()), &mountpoint, &config)
        .map_err(context(format!("mounting on {}", mountpoint.display())))?;
    let mut unmounter = session.unmount_callable();
    let shown = mountpoint.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: sigset is initialised; sig is writable.
            if unsafe { libc::sigwait(&sigset, &mut sig) } == 0 {
                log::info!("signal {sig}: unmounting {}", shown.display());
                if let Err(e) = unmounter.unmount() {
                    log::warn!("unmount of {} failed: {e}", shown.display());
                }
            }
        })?;
    log::info!(
        "mounted {} on {} (control {})",
        backing.display(),
        mountpoint.display(),
        opts.control.display()
    );
    let result = session.run();
    let _ = std::fs::remove_file(&opts.control);
    log::info!("session on {} ended", mountpoint.display());
    result
}

/// Answers control connections, one at a time, until the process ends.
fn serve_control(listener: UnixListener, layer: Arc<Layer>) {
    for conn in listener.incoming() {
        match conn {
            Ok(c) => {
                if let Err(e) = serve_conn(c, &layer) {
                    log::warn!("control connection: {e}");
                }
            }
            Err(e) => {
                log::warn!("control socket accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn serve_conn(conn: UnixStream, layer: &Layer) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = conn.try_clone()?;
    let reader = BufReader::new(conn);
    // A connection ends when the peer closes it (or stays silent past the timeout).
    for line in reader.lines() {
        let line = line?;
        let reply = command(layer, line.trim());
        out.write_all(format!("{reply}\n").as_bytes())?;
    }
    Ok(())
}

fn command(layer: &Layer, line: &str) -> serde_json::Value {
    let words: Vec<&str> = line.split_whitespace().collect();
    let fail = |e: String| serde_json::json!({"ok": false, "error": e});
    match words.as_slice() {
        ["ping"] => serde_json::json!({"ok": true}),
        ["status"] => {
            let mut v = layer.status();
            v["ok"] = true.into();
            v
        }
        ["sync"] => match layer.sync_all() {
            Ok(()) => serde_json::json!({"ok": true}),
            Err(e) => fail(format!("sync: {e}")),
        },
        ["power-loss"] | ["power-loss", "tear", _] => {
            let tear = match words.get(2).map(|s| s.parse::<u64>()) {
                None => None,
                Some(Ok(seed)) => Some(seed),
                Some(Err(_)) => return fail(format!("bad seed in {line:?}")),
            };
            match layer.power_loss(tear) {
                Ok(mut report) => {
                    log::info!("power loss: {report}");
                    let clean = report["errors"].as_array().is_none_or(|a| a.is_empty());
                    report["ok"] = clean.into();
                    if !clean {
                        report["error"] = "the durable state could not be restored exactly".into();
                    }
                    report
                }
                Err(e) => fail(format!("power loss: {e} (already lost?)")),
            }
        }
        _ => fail(format!(
            "unknown command {line:?} (ping, status, sync, power-loss [tear SEED])"
        )),
    }
}

/// Whether the topmost mount at `path` is a lossyfs mount.
pub fn is_mounted(path: &Path) -> bool {
    mounts_at(path).last().is_some_and(|t| t == FS_TYPE)
}

/// The file-system types of the mounts stacked at `path`, bottom first.
pub fn mounts_at(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let want = path.to_string_lossy();
    // (id, parent id, fstype) of the mounts at `path`.
    let at: Vec<(u64, u64, String)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            if unescape(f.get(4)?) != want {
                return None;
            }
            let (fstype, source) = (*f.get(sep + 1)?, *f.get(sep + 2)?);
            // With fusermount3 the subtype may not show: the source names the layer then.
            let t = if fstype == FS_TYPE || (fstype == "fuse" && source.starts_with(FS_NAME)) {
                FS_TYPE.to_string()
            } else {
                fstype.to_string()
            };
            Some((f[0].parse().ok()?, f[1].parse().ok()?, t))
        })
        .collect();
    // Bottom first: the one whose parent is not at `path`, then each child in turn (bounded
    // by the number of mounts there).
    let mut out = Vec::new();
    let mut cur = at
        .iter()
        .find(|(_, parent, _)| !at.iter().any(|(id, _, _)| id == parent));
    while let Some((id, _, t)) = cur {
        out.push(t.clone());
        if out.len() > at.len() {
            break;
        }
        cur = at.iter().find(|(_, parent, _)| parent == id);
    }
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space…).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
