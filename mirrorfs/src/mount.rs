//! Mounting: the checks before a mount, the session, the rules watcher, and clean shutdown.
//!
//! `run` opens the source directory *before* mounting over it (so the filesystem keeps reaching
//! the files underneath), takes the state directory's mount lock, opens the rules database
//! and journal, mounts, and serves until the mount goes away: `fusermount3 -u DIR`, `umount`,
//! or SIGINT/SIGTERM (which unmount). Rule changes made with `mirror-ctl` are picked up by a
//! watcher thread within a fraction of a second.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};

use crate::fs::{FsConfig, MirrorFs};
use crate::fuse::FuseFs;
use crate::journal::{Journal, JournalConfig};
use crate::matcher::{Matcher, RuleTable};
use crate::mountopts::{Flags, HelperOptions};
use crate::rulesdb::RulesDb;
use crate::state::{LockFile, StateDir};

/// The file-system type of mirrorfs mounts made through fusermount3 (`fuse.mirrorfs`).
pub const FS_TYPE: &str = "fuse.mirrorfs";
/// Mount sources of mirrorfs mounts start with this (`mirrorfs#/the/source`); a mount made
/// directly by root shows type `fuse` and this source. It is mount.fuse3's `TYPE#SOURCE`
/// form, so that `mount -o remount,ro DIR` finds its way back to `mirrorfs` (earlier versions
/// showed `mirrorfs:/the/source`, still recognised).
pub const FS_NAME_PREFIX: &str = "mirrorfs#";

/// Why mirrorfs could not mount or serve.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The source or mount point is unusable.
    #[error("{path}: {err}")]
    Path {
        /// The path.
        path: PathBuf,
        /// The error.
        err: std::io::Error,
    },
    /// The mount point is already a mirrorfs mount.
    #[error("{0} is already a mirrorfs mount; unmount it first with: fusermount3 -u {0}")]
    AlreadyMounted(PathBuf),
    /// No FUSE device.
    #[error("cannot open /dev/fuse ({0}); install FUSE (apt-get install fuse3) and load the module (modprobe fuse)")]
    NoFuseDevice(std::io::Error),
    /// Not root, and no fusermount3 to mount with.
    #[error("fusermount3 is not installed (apt-get install fuse3); it is needed to mount as a non-root user")]
    NoFusermount,
    /// The state directory is in use by another mount.
    #[error("state directory {state} is in use by another mirrorfs ({holder}); one state directory serves one mount")]
    StateLocked {
        /// The state directory.
        state: PathBuf,
        /// Who holds it.
        holder: String,
    },
    /// State directory problems.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// Rules database problems.
    #[error(transparent)]
    Rules(#[from] crate::rulesdb::RulesDbError),
    /// Journal problems.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The filesystem could not start.
    #[error("cannot start the filesystem: {0}")]
    Fs(#[from] crate::fs::FsError),
    /// The FUSE session failed.
    #[error("FUSE session on {path}: {err}")]
    Session {
        /// The mount point.
        path: PathBuf,
        /// The error.
        err: std::io::Error,
    },
}

/// What to mount and how.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The directory whose files are served (usually the mount point itself).
    pub source: PathBuf,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// The local system's state directory ([`run`] makes it, if missing, once its checks
    /// passed).
    pub state: StateDir,
    /// Request-serving threads.
    pub threads: usize,
    /// Filesystem settings.
    pub fs: FsConfig,
    /// Journal settings.
    pub journal: JournalConfig,
    /// The source the mount table shows (a device tag) [default: `mirrorfs#SOURCE`].
    pub fsname: Option<String>,
    /// The mount's VFS flags (`ro`, `nosuid`, `noatime`, `strictatime`…).
    pub flags: Flags,
    /// Let other users use the mount (root's mounts always do).
    pub allow_other: bool,
    /// Let root use the mount of a user.
    pub allow_root: bool,
    /// Told once the mount is up and served ([`run`] calls it once, after mounting).
    pub on_mounted: Option<OnMounted>,
}

/// Called once the mount is up (the mount-helper form returns to mount(8) then).
#[derive(Clone)]
pub struct OnMounted(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for OnMounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnMounted")
    }
}

/// Whether `path` is currently a mirrorfs mount (from /proc/self/mountinfo). A mount made
/// with a device tag (the mount-helper form) shows the tag as its source and is not recognised
/// here when it was made by root (type `fuse`): its state directory's lock still keeps a
/// second mirrorfs from serving the same state.
pub fn is_mirrorfs_mount(path: &Path) -> bool {
    crate::mountopts::mounts().iter().any(|m| {
        (m.fstype == FS_TYPE
            || (m.fstype == "fuse"
                && (m.source.starts_with(FS_NAME_PREFIX) || m.source.starts_with("mirrorfs:"))))
            && m.mountpoint == path.as_os_str().as_bytes()
    })
}

fn canonical(p: &Path) -> Result<PathBuf, MountError> {
    let c = std::fs::canonicalize(p).map_err(|err| MountError::Path {
        path: p.to_path_buf(),
        err,
    })?;
    let meta = std::fs::metadata(&c).map_err(|err| MountError::Path {
        path: p.to_path_buf(),
        err,
    })?;
    if !meta.is_dir() {
        return Err(MountError::Path {
            path: p.to_path_buf(),
            err: std::io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    Ok(c)
}

/// Unmounts `path` once (not lazily: a busy mount stays, served): `umount2` as root,
/// `fusermount3 -u` otherwise. fuser's own unmounter gives up its mount after one failure, so
/// a second signal could not try again.
fn unmount(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is NUL-terminated.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    Err(if text.contains("busy") {
        std::io::Error::from_raw_os_error(libc::EBUSY)
    } else if text.contains("not found") || text.contains("not mounted") {
        std::io::Error::from_raw_os_error(libc::EINVAL)
    } else {
        std::io::Error::other(format!("fusermount3 -u: {}", text.trim()))
    })
}

/// The errno of `statvfs(path)`, if it fails.
fn statfs_error(path: &Path) -> Option<i32> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: c is NUL-terminated and st is a valid out-pointer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0 {
        None
    } else {
        std::io::Error::last_os_error().raw_os_error()
    }
}

/// Detaches a mount whose FUSE server died (ENOTCONN), so that a new mount can take its place.
fn clear_dead_mount(path: &Path) -> Result<(), MountError> {
    log::warn!(
        "{}: found a FUSE mount whose process is gone; detaching it before mounting again",
        path.display()
    );
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| MountError::Path {
        path: path.to_path_buf(),
        err: std::io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    // SAFETY: c is NUL-terminated.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(path)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => Err(MountError::Path {
            path: path.to_path_buf(),
            err: std::io::Error::other(
                "a dead FUSE mount is in the way and could not be detached; run: fusermount3 -u -z PATH",
            ),
        }),
    }
}

/// Checks what the mount needs from the machine.
fn check_fuse() -> Result<(), MountError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(MountError::NoFuseDevice)?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").exists()))
            .unwrap_or(false);
        if !found {
            return Err(MountError::NoFusermount);
        }
    }
    Ok(())
}

/// How long a mount waits for the state directory of a mirrorfs that is finishing (its mount
/// is gone; it syncs the journal and exits): `umount DIR; mount DIR` at once must work.
const FINISHING_WAIT: Duration = Duration::from_secs(30);

/// What taking the state directory's mount lock gave.
enum Locked {
    /// The lock: this process serves the mount.
    Mine(LockFile),
    /// A mirrorfs serving the same source with this state directory is mounted there: the
    /// same file system, which a second mount shows at one more place (as a second mount of
    /// one block device does).
    Serving(PathBuf),
}

fn take_mount_lock(
    state: &StateDir,
    mountpoint: &Path,
    source: &Path,
) -> Result<Locked, MountError> {
    let deadline = std::time::Instant::now() + FINISHING_WAIT;
    let mut pause = Duration::from_millis(5);
    let lock = loop {
        match state.lock("mirrorfs") {
            Ok(l) => break l,
            Err(crate::state::StateError::Locked { holder, path }) => {
                // The note: the holder's mount point, then its source.
                let note =
                    std::fs::read_to_string(path.with_extension("mount")).unwrap_or_default();
                let mut lines = note.lines();
                let m = lines.next().unwrap_or_default().trim();
                let their_source = lines.next().unwrap_or_default();
                let mounted = !m.is_empty()
                    && crate::mountopts::mount_at(Path::new(m))
                        .is_some_and(|i| i.fstype.starts_with("fuse"));
                if mounted && Path::new(their_source) == source && Path::new(m) != mountpoint {
                    return Ok(Locked::Serving(PathBuf::from(m)));
                }
                // The holder's mount is gone: it is finishing, and lets go of the lock soon.
                if !m.is_empty() && !mounted && std::time::Instant::now() < deadline {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                    continue;
                }
                let holder = match m {
                    "" => holder,
                    m => format!("{holder}, mounted on {m}"),
                };
                return Err(MountError::StateLocked {
                    state: state.root().to_path_buf(),
                    holder,
                });
            }
            Err(e) => return Err(e.into()),
        }
    };
    let note = state.lock_path("mirrorfs").with_extension("mount");
    let private = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&note)
    };
    if let Ok(mut f) = private {
        let _ = writeln!(f, "{}\n{}", mountpoint.display(), source.display());
    }
    Ok(Locked::Mine(lock))
}

/// Opens the journal. With the state directory's lock held, a journal still locked is held by
/// the mirrorfs that had this state before and is exiting (its mount is gone, its last threads
/// drop the journal after the state lock): wait for it, a bounded time.
fn open_journal(state: &StateDir, cfg: JournalConfig) -> Result<Journal, MountError> {
    let deadline = std::time::Instant::now() + FINISHING_WAIT;
    let mut pause = Duration::from_millis(5);
    loop {
        match Journal::open(&state.journal_dir(), cfg) {
            Err(crate::journal::JournalError::Locked(crate::state::StateError::Locked {
                ..
            })) if std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            r => return Ok(r?),
        }
    }
}

/// Shows the mirrorfs mount at `serving` at `mountpoint` too (a bind mount, as root), with
/// `flags` for this place.
fn mount_again(serving: &Path, mountpoint: &Path, flags: Flags) -> std::io::Result<()> {
    let cstr = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    };
    let (from, to) = (cstr(serving)?, cstr(mountpoint)?);
    // SAFETY: NUL-terminated paths; null type and data are allowed for a bind mount.
    if unsafe {
        libc::mount(
            from.as_ptr(),
            to.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // The per-mount flags of a bind mount are set by a remount of it.
    let per_mount = libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC
        | libc::MS_NOATIME
        | libc::MS_NODIRATIME
        | libc::MS_RELATIME
        | libc::MS_STRICTATIME;
    // SAFETY: as above.
    if unsafe {
        libc::mount(
            std::ptr::null(),
            to.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_BIND | (flags.0 & per_mount),
            std::ptr::null(),
        )
    } != 0
    {
        let err = std::io::Error::last_os_error();
        // SAFETY: NUL-terminated path.
        unsafe { libc::umount2(to.as_ptr(), libc::MNT_DETACH) };
        return Err(err);
    }
    Ok(())
}

/// Loads the rules into a running mount: installs a new rule table when the database
/// changed, with the first copies of the rules added with one ([`crate::firstcopy`]). One at a
/// time (the rules watcher and the control socket both load), so a first copy is queued once.
struct RuleLoader {
    fs: Arc<MirrorFs>,
    lock: std::sync::Mutex<()>,
}

impl RuleLoader {
    /// Installs the rules `db` holds now if they changed or a first copy waits; the position
    /// of the last first copy queued.
    fn load(&self, db: &RulesDb) -> Result<Option<crate::journal::Position>, String> {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let (version, rules) = db.snapshot().map_err(|e| e.to_string())?;
        let todo = crate::firstcopy::todo(db, &rules).map_err(|e| e.to_string())?;
        let rec = self.fs.recorder();
        if rec.table().version() == version && todo.is_empty() {
            return Ok(None);
        }
        log::info!(
            "rules changed: configuration version {version}, {} rules{}",
            rules.len(),
            match todo.len() {
                0 => String::new(),
                n => format!(", {n} first copies queued"),
            }
        );
        let at = self
            .fs
            .install_rules(RuleTable::build(rules, version), &todo)
            .map_err(|e| format!("cannot queue the first copy of a new rule: {e}"))?;
        crate::firstcopy::record(db, rec.journal(), &todo, &at).map_err(|e| e.to_string())?;
        Ok(at.last().copied())
    }
}

/// Polls the rules database and installs a new rule table whenever it changed (or a first
/// copy is still to be queued after a failure).
fn spawn_rules_watcher(
    db: RulesDb,
    loader: Arc<RuleLoader>,
    stop: Arc<AtomicBool>,
    mut failed: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("rules-watcher".into())
        .spawn(move || {
            let mut seen = db.data_version().unwrap_or(-1);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                match db.data_version() {
                    Ok(v) if v == seen && !failed => continue,
                    Ok(v) => seen = v,
                    Err(e) => {
                        log::warn!("rules watcher: {e}");
                        continue;
                    }
                }
                failed = match loader.load(&db) {
                    Ok(_) => false,
                    Err(e) => {
                        if !failed {
                            log::error!("rules watcher: {e}; trying again");
                        }
                        true
                    }
                };
            }
        })
        .expect("spawn rules watcher thread")
}

/// Serves the control socket (copies queued by `mirror-ctl sync`, rules loaded for
/// `mirror-ctl rule add`); `None` if it cannot.
fn start_control(
    state: &StateDir,
    fs: Arc<MirrorFs>,
    loader: Arc<RuleLoader>,
    status: crate::keeper::SharedStatus,
) -> Option<std::path::PathBuf> {
    let rules_db = state.rules_db();
    let load = move || {
        RulesDb::open(&rules_db)
            .map_err(|e| e.to_string())
            .and_then(|db| loader.load(&db))
    };
    let handler: crate::control::Handler = Arc::new(move |req| match req {
        crate::control::Request::Status => crate::control::Response::Mount {
            status: status.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        },
        crate::control::Request::LoadRules => match load() {
            Ok(last) => crate::control::Response::Queued { last },
            Err(reason) => {
                log::error!("{reason}");
                crate::control::Response::Error { reason }
            }
        },
        crate::control::Request::Exists { name } => match fs.exists_underneath(&name) {
            Ok(exists) => crate::control::Response::Exists { exists },
            Err(e) => crate::control::Response::Error {
                reason: format!("{}: {e}", String::from_utf8_lossy(&name)),
            },
        },
        crate::control::Request::Copy { copies, quick } => {
            let table = fs.recorder().table();
            let known = |crc: u32| table.rules().iter().any(|r| r.crc == crc);
            if copies.iter().any(|(crc, _)| !known(*crc)) {
                // `mirror-ctl sync` may ask for a rule added a moment ago, before the rules
                // watcher saw it: read the rules now.
                if let Err(e) = load() {
                    log::warn!("cannot read the rules: {e}");
                }
            }
            if let Some(why) = copies
                .iter()
                .find_map(|(crc, name)| fs.check_copy(*crc, name).err())
            {
                log::warn!("refused a copy request on the control socket: {why}");
                return crate::control::Response::Error {
                    reason: format!("copy refused: {why}"),
                };
            }
            match crate::control::append_copies(fs.recorder().journal(), &copies, quick) {
                Ok(last) => crate::control::Response::Queued { last },
                Err(e) => crate::control::Response::Error {
                    reason: e.to_string(),
                },
            }
        }
    });
    let path = state.socket_path("mirrorfs");
    match crate::control::serve(&path, handler) {
        Ok(p) => Some(p),
        Err(e) => {
            log::error!(
                "control socket {}: {e}; `mirror-ctl sync` cannot reach this mount",
                path.display()
            );
            None
        }
    }
}

fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Mounts a FUSE file system at `mountpoint` with `mount(2)` (as root): the `/dev/fuse`
/// descriptor to serve it on. Type `fuse`, source `fsname`, VFS `flags`.
fn mount_fuse(mountpoint: &Path, fsname: &str, flags: Flags) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let dev = OwnedFd::from(dev);
    let mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let data = format!(
        "fd={},rootmode={mode:o},user_id={uid},group_id={gid},default_permissions,allow_other",
        dev.as_raw_fd()
    );
    let cstr = |s: &[u8]| {
        std::ffi::CString::new(s).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    };
    let (src, target, data) = (
        cstr(fsname.as_bytes())?,
        cstr(mountpoint.as_os_str().as_bytes())?,
        cstr(data.as_bytes())?,
    );
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            c"fuse".as_ptr(),
            flags.0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            err.kind(),
            format!("mount(2) of type fuse with flags {:#x}: {err}", flags.0),
        ));
    }
    Ok(dev)
}

/// The options fusermount3 gets for a mount by an ordinary user (it knows every VFS flag by
/// name).
fn fusermount_options(fsname: &str, flags: Flags) -> Vec<MountOption> {
    let mut o = vec![
        MountOption::FSName(fsname.to_string()),
        MountOption::Subtype("mirrorfs".into()),
        MountOption::DefaultPermissions,
    ];
    let named = [
        (libc::MS_RDONLY, MountOption::RO),
        (libc::MS_NOSUID, MountOption::NoSuid),
        (libc::MS_NODEV, MountOption::NoDev),
        (libc::MS_NOEXEC, MountOption::NoExec),
        (libc::MS_NOATIME, MountOption::NoAtime),
        (libc::MS_SYNCHRONOUS, MountOption::Sync),
        (libc::MS_DIRSYNC, MountOption::DirSync),
        (
            libc::MS_STRICTATIME,
            MountOption::CUSTOM("strictatime".into()),
        ),
        (
            libc::MS_NODIRATIME,
            MountOption::CUSTOM("nodiratime".into()),
        ),
        (libc::MS_LAZYTIME, MountOption::CUSTOM("lazytime".into())),
    ];
    o.extend(
        named
            .into_iter()
            .filter(|(f, _)| flags.has(*f))
            .map(|(_, opt)| opt),
    );
    o
}

/// `mirrorfs TAG DIR -o remount,…` (what `mount -o remount,ro DIR` runs through the
/// mount helper): changes the flags of the FUSE mount at `mountpoint` as the options say,
/// over its current ones, and returns. The mirrorfs serving it sees the change in the mount
/// table and follows it (crate::atime).
pub fn remount(mountpoint: &Path, opts: &HelperOptions) -> Result<(), MountError> {
    let path_err = |err| MountError::Path {
        path: mountpoint.to_path_buf(),
        err,
    };
    let mountpoint = std::fs::canonicalize(mountpoint).map_err(path_err)?;
    let current = crate::mountopts::mount_at(&mountpoint)
        .filter(|m| m.fstype.starts_with("fuse"))
        .ok_or_else(|| {
            path_err(std::io::Error::other(
                "not a FUSE mount: nothing to remount",
            ))
        })?;
    let mut flags = current.flags;
    for o in &opts.vfs {
        flags.apply(o);
    }
    let target = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| path_err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: target is NUL-terminated; the other pointers may be null for a remount.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | flags.0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        let why = if err.raw_os_error() == Some(libc::EPERM) {
            "a remount needs root".to_string()
        } else {
            format!("remount with flags {:#x}: {err}", flags.0)
        };
        return Err(path_err(std::io::Error::new(err.kind(), why)));
    }
    Ok(())
}

/// Blocks SIGINT/SIGTERM/SIGHUP in this thread (and the threads it starts), and returns the set.
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

/// Mounts and serves until unmounted. Returns once the mount is gone and the journal synced.
pub fn run(opts: MountOptions) -> Result<(), MountError> {
    // Before any thread starts, so that only the signal thread ever takes these signals.
    let sigset = block_signals();
    let mountpoint = match canonical(&opts.mountpoint) {
        Err(MountError::Path { err, .. }) if err.raw_os_error() == Some(libc::ENOTCONN) => {
            clear_dead_mount(&opts.mountpoint)?;
            canonical(&opts.mountpoint)?
        }
        r => r?,
    };
    // A mount whose server was killed may still answer lookups from the kernel's caches;
    // statfs always asks the server.
    if is_mirrorfs_mount(&mountpoint) && statfs_error(&mountpoint) == Some(libc::ENOTCONN) {
        clear_dead_mount(&mountpoint)?;
    }
    let source = canonical(&opts.source)?;
    if is_mirrorfs_mount(&mountpoint) {
        return Err(MountError::AlreadyMounted(mountpoint));
    }
    check_fuse()?;
    // Only now, with the paths and FUSE checked: a mount that fails on those leaves no new
    // state directory behind (a mistyped path must not start a new local system).
    let fresh = opts.state.is_fresh();
    opts.state.create()?;
    crate::logging::attach_error_log(&opts.state.error_log());
    if fresh {
        log::warn!("{}", opts.state.fresh_warning("mirrorfs"));
    }
    let _lock = match take_mount_lock(&opts.state, &mountpoint, &source)? {
        Locked::Mine(l) => l,
        Locked::Serving(at) if as_root() => {
            mount_again(&at, &mountpoint, opts.flags).map_err(|err| MountError::Path {
                path: mountpoint.clone(),
                err,
            })?;
            log::info!(
                "{} is served by the mirrorfs mounted on {} (same source and state directory): mounted it here too",
                mountpoint.display(),
                at.display()
            );
            if let Some(f) = &opts.on_mounted {
                (f.0)();
            }
            return Ok(());
        }
        Locked::Serving(at) => {
            return Err(MountError::StateLocked {
                state: opts.state.root().to_path_buf(),
                holder: format!("the mirrorfs mounted on {}", at.display()),
            })
        }
    };

    let db = RulesDb::open(&opts.state.rules_db())?;
    let (version, rules) = db.snapshot()?;
    log::info!("configuration version {version}, {} rules", rules.len());
    let matcher = Arc::new(Matcher::new(RuleTable::build(rules, version)));
    let journal = open_journal(&opts.state, opts.journal)?;
    // How far the journal is known complete, read before this mount appends anything.
    let watermark = journal.watermark();
    let mut root = crate::fs::sys::open_dir(&source).map_err(|err| MountError::Path {
        path: source.clone(),
        err,
    })?;
    let as_root = as_root();
    // The files are reached through a private clone of the mount underneath whose access-time
    // policy follows this mount's options (crate::atime).
    let underneath = if as_root {
        match crate::atime::Underneath::clone_of(root.as_fd()) {
            Ok((u, r)) => match u.follow(opts.flags) {
                Ok(()) => {
                    root = r;
                    Some(Arc::new(u))
                }
                Err(e) => {
                    log::warn!("access times follow the mount underneath, not this mount's options: cannot set them on a private clone of it ({e})");
                    None
                }
            },
            Err(e) => {
                log::warn!("access times follow the mount underneath, not this mount's options: cannot clone it ({e})");
                None
            }
        }
    } else {
        None
    };
    // Modes from the kernel already have the caller's umask applied.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0) };
    let rec = crate::fs::record::Recorder::new(journal, matcher, mountpoint.as_os_str().as_bytes())
        .with_marks(opts.state.root().join("unjournaled"));
    let fs = Arc::new(MirrorFs::new(root, rec, opts.fs.clone())?);
    fs.set_mount_flags(opts.flags);
    fs.set_covers_source(source == mountpoint);

    warn_busy_processes(&source);
    // The first copies of rules added while nothing was mounted and not queued yet (their
    // `rule add` found the journal held by this mount starting): before any entry of theirs.
    let loader = Arc::new(RuleLoader {
        fs: fs.clone(),
        lock: std::sync::Mutex::new(()),
    });
    let failed = loader
        .load(&db)
        .map_err(|e| log::error!("{e}; trying again once mounted"))
        .is_err();
    // Durability points of sync rules wait for mirror-sendd's acknowledgements.
    let fs_end = fs.clone();
    if let Err(e) = fs.recorder().sync_wait().start(
        opts.state.socket_path("mirror-sendd"),
        Box::new(move || fs_end.recorder().journal().end()),
    ) {
        log::error!("cannot start following mirror-sendd for sync rules: {e}; their durability points fail over to their --on-sync-loss policy after --sync-timeout");
    }
    let keeper =
        crate::keeper::Keeper::start(fs.clone(), opts.state.root(), &mountpoint, watermark);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = spawn_rules_watcher(db, loader.clone(), stop.clone(), failed);
    let control = start_control(&opts.state, fs.clone(), loader, keeper.status());

    let acl = if as_root || opts.allow_other {
        SessionACL::All
    } else if opts.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    let fsname = opts
        .fsname
        .clone()
        .unwrap_or_else(|| format!("{FS_NAME_PREFIX}{}", source.display()));
    let mut config = Config::default();
    config.acl = acl;
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let session_error = |err| MountError::Session {
        path: mountpoint.clone(),
        err,
    };
    let session = if as_root {
        // Mounted here rather than by fuser, which knows only some of the flags (not
        // strictatime, nodiratime, lazytime).
        let dev = mount_fuse(&mountpoint, &fsname, opts.flags).map_err(session_error)?;
        Session::from_fd(FuseFs::new(fs.clone()), dev, acl, config).map_err(|err| {
            let _ = unmount(&mountpoint);
            session_error(err)
        })?
    } else {
        config.mount_options = fusermount_options(&fsname, opts.flags);
        Session::new(FuseFs::new(fs.clone()), &mountpoint, &config).map_err(session_error)?
    };
    fs.set_notifier(session.notifier());
    // Remounts change the flags later: the files underneath follow them.
    let follower = crate::mountopts::mount_at(&mountpoint).and_then(|m| {
        crate::atime::Follower::new(underneath.clone(), m.id, fs.mount_flags_cell())
            .map_err(|e| log::warn!("cannot follow remounts: {e}"))
            .ok()
    });
    let flags_watcher = follower.map(Arc::new).and_then(|f| {
        fs.follow_remounts(f.clone());
        crate::atime::spawn_watcher(f, stop.clone())
            .map_err(|e| log::warn!("cannot watch the mount table for remounts: {e}"))
            .ok()
    });
    let shown = mountpoint.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // Every signal asks again: one that comes while the mount is busy fails, and the
            // next one (once the programs in it are done) still unmounts.
            // SAFETY: sigset is initialised; sig is writable.
            while unsafe { libc::sigwait(&sigset, &mut sig) } == 0 {
                log::info!("signal {sig}: unmounting {}", shown.display());
                match unmount(&shown) {
                    Ok(()) => break,
                    // Unmounted already (`fusermount3 -u` got there first): nothing failed.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        log::info!("{} was unmounted already", shown.display());
                        break;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => log::error!(
                        "unmount of {} failed: it is busy (a program has files or its working directory in it); mirrorfs goes on serving it. Signal again once they are done, or detach it now with: fusermount3 -u -z {}",
                        shown.display(),
                        shown.display()
                    ),
                    Err(e) => log::error!(
                        "unmount of {} failed: {e}; mirrorfs goes on serving it (signal again to retry)",
                        shown.display()
                    ),
                }
            }
        })
        .expect("spawn signal thread");
    log::info!(
        "mounted {} on {} (state {})",
        source.display(),
        mountpoint.display(),
        opts.state.root().display()
    );
    if let Some(f) = &opts.on_mounted {
        (f.0)();
    }
    let flusher = crate::flusher::spawn(fs.clone(), mountpoint.clone(), stop.clone())
        .map_err(|e| log::warn!("cannot start the flusher of buffered writes: {e}"))
        .ok();
    let result = session.run().map_err(|err| MountError::Session {
        path: mountpoint.clone(),
        err,
    });
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    if let Some(f) = flusher {
        let _ = f.join();
    }
    if let Some(w) = flags_watcher {
        let _ = w.join();
    }

    if let Some(p) = control {
        let _ = std::fs::remove_file(p);
    }
    fs.recorder().sync_wait().stop();
    keeper.finish()?;
    log::info!("unmounted {}", mountpoint.display());
    result
}

/// Warns about processes whose working directory or open files are in `dir` before the mount
/// covers it: they keep using the directory underneath, and what they write there is not
/// recorded (until the next mount's reconciliation finds it, if it does).
fn warn_busy_processes(dir: &Path) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let inside = |p: &Path| p.starts_with(dir);
    let me = std::process::id().to_string();
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let base = p.path();
        let cwd = std::fs::read_link(base.join("cwd")).is_ok_and(|c| inside(&c));
        let files = std::fs::read_dir(base.join("fd"))
            .map(|fds| {
                fds.flatten()
                    .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| inside(&t)))
                    .count()
            })
            .unwrap_or(0);
        if cwd || files > 0 {
            let comm = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
            log::warn!(
                "process {pid} ({}) has {} in {} before the mount: what it writes there through them is not recorded; restart it after mounting",
                comm.trim(),
                match (cwd, files) {
                    (true, 0) => "its working directory".to_string(),
                    (true, n) => format!("its working directory and {n} open files"),
                    (false, n) => format!("{n} open files"),
                },
                dir.display()
            );
        }
    }
}
