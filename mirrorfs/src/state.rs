//! The state directory of one "local system": where it is and what lives inside it.
//!
//! Resolution order (DESIGN.md): `--state DIR`, else `$MIRROR_STATE`, else
//! `$XDG_STATE_HOME/mirror`, else `$HOME/.local/state/mirror`.
//!
//! Layout of a source state directory:
//!
//! | path | what |
//! | --- | --- |
//! | `rules.db` | the rules database (SQLite) |
//! | `journal/` | store-and-forward journal segments |
//! | `sfa` | acknowledged journal position per site |
//! | `blocked` | the blocked-site list |
//! | `site-id` | this system's stable source-site id |
//! | `errors.log` | warnings and errors of every daemon using this directory |
//! | `*.lock` | advisory locks held by running daemons |
//! | `*.sock` | control sockets of running daemons |

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Errors while resolving, creating or locking a state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Neither `--state`, `$MIRROR_STATE`, `$XDG_STATE_HOME` nor `$HOME` is set.
    #[error("no state directory: pass --state DIR or set MIRROR_STATE (neither XDG_STATE_HOME nor HOME is set)")]
    NoDefault,
    /// The directory could not be created or opened.
    #[error("state directory {path}: {err}")]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// The underlying error.
        err: io::Error,
    },
    /// No local system (or router state) at the path: commands that only read never make
    /// one, so that a mistyped `--state` is told, not silently started afresh.
    #[error("no {what} at {path}: {why}")]
    Missing {
        /// The path given.
        path: PathBuf,
        /// What was looked for ("local system", "router state").
        what: &'static str,
        /// Why not, and what makes one.
        why: String,
    },
    /// Another process holds the lock.
    #[error("{path} is locked by another running process ({holder}); stop it first or use another --state")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
}

/// Picks the state directory from the explicit option and the environment values given.
///
/// Kept free of `std::env` so it can be tested; [`resolve`] passes the real environment.
pub fn resolve_from(
    explicit: Option<&Path>,
    mirror_state: Option<&str>,
    xdg_state_home: Option<&str>,
    home: Option<&str>,
) -> Result<PathBuf, StateError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let nonempty = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(p) = nonempty(mirror_state) {
        return Ok(p);
    }
    if let Some(p) = nonempty(xdg_state_home) {
        return Ok(p.join("mirror"));
    }
    if let Some(p) = nonempty(home) {
        return Ok(p.join(".local/state/mirror"));
    }
    Err(StateError::NoDefault)
}

/// Picks the state directory from `explicit` and the process environment.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf, StateError> {
    let var = |k: &str| std::env::var(k).ok();
    resolve_from(
        explicit,
        var("MIRROR_STATE").as_deref(),
        var("XDG_STATE_HOME").as_deref(),
        var("HOME").as_deref(),
    )
}

/// An existing state directory and the paths inside it.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens the state directory at `root`, creating it if needed; it is made private to its
    /// owner (mode 0700) whoever created it.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StateError> {
        let root = root.into();
        private_dir(&root).map_err(|err| StateError::Io {
            path: root.clone(),
            err,
        })?;
        Ok(Self { root })
    }

    /// Resolves (see [`resolve`]) and opens the state directory.
    pub fn resolve_and_open(explicit: Option<&Path>) -> Result<Self, StateError> {
        Self::open(resolve(explicit)?)
    }

    /// The state directory at `root` as it is: nothing is created or changed (a daemon makes
    /// it with [`StateDir::create`] once its own checks passed, so a failed start leaves no
    /// new local system behind).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Whether no local system is here yet: the directory does not exist (what a daemon
    /// given a mistyped `--state` finds; `mirror-ctl rule add` makes it otherwise).
    pub fn is_fresh(&self) -> bool {
        !self.root.exists()
    }

    /// What a daemon `who` says when it starts a new local system here ([`StateDir::is_fresh`]):
    /// what a mistyped `--state` does too.
    pub fn fresh_warning(&self, who: &str) -> String {
        format!(
            "there was no local system at {} (no such directory): starting a new one, with no rules; if --state is mistyped, stop {who} and start it with the right one",
            self.root.display()
        )
    }

    /// Creates the directory if needed and makes it private (what [`StateDir::open`] does).
    pub fn create(&self) -> Result<(), StateError> {
        private_dir(&self.root).map_err(|err| StateError::Io {
            path: self.root.clone(),
            err,
        })
    }

    /// An existing state directory at `root`, for commands that only read it: nothing is
    /// created or changed. Fails, naming `root`, when no directory is there or when it holds
    /// none of `marks` (the files one of which every `what` has); `hint` says what makes one.
    pub fn existing(
        root: impl Into<PathBuf>,
        what: &'static str,
        marks: &[&str],
        hint: &str,
    ) -> Result<Self, StateError> {
        let root = root.into();
        let missing = |why: String| StateError::Missing {
            path: root.clone(),
            what,
            why,
        };
        match fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(missing(format!("it is not a directory; {hint}"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(missing(format!(
                    "the directory does not exist (is --state or $MIRROR_STATE right?); {hint}"
                )))
            }
            Err(err) => {
                return Err(StateError::Io {
                    path: root.clone(),
                    err,
                })
            }
        }
        if !marks
            .iter()
            .any(|m| root.join(m).symlink_metadata().is_ok())
        {
            return Err(missing(format!(
                "the directory holds none of its files ({}); {hint}",
                marks.join(", ")
            )));
        }
        Ok(Self { root })
    }

    /// Files one of which every source state directory holds ([`StateDir::existing`]).
    pub const SOURCE_MARKS: &'static [&'static str] =
        &["rules.db", "keys", "site-id", "journal", "sfa"];
    /// Files one of which every router state directory holds.
    pub const ROUTER_MARKS: &'static [&'static str] = &["rt", "router.db", "keys"];

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The rules database.
    pub fn rules_db(&self) -> PathBuf {
        self.root.join("rules.db")
    }
    /// The journal directory.
    pub fn journal_dir(&self) -> PathBuf {
        self.root.join("journal")
    }
    /// The acknowledged-position (SFA) log.
    pub fn sfa_path(&self) -> PathBuf {
        self.root.join("sfa")
    }
    /// The blocked-site list.
    pub fn blocked_path(&self) -> PathBuf {
        self.root.join("blocked")
    }
    /// The default key file: on a source, the keys of its routers by site (`HOST:PORT` or
    /// `*`); on a router, the keys of its source sites.
    pub fn keys_path(&self) -> PathBuf {
        self.root.join("keys")
    }
    /// The file holding this source's site id (a host name by default).
    pub fn site_id_path(&self) -> PathBuf {
        self.root.join("site-id")
    }
    /// The error log shared by the daemons using this directory.
    pub fn error_log(&self) -> PathBuf {
        self.root.join("errors.log")
    }
    /// The lock file of a daemon, e.g. `lock_path("mirrorfs")`.
    pub fn lock_path(&self, who: &str) -> PathBuf {
        self.root.join(format!("{who}.lock"))
    }
    /// The control socket of a daemon, e.g. `socket_path("mirrorfs")`.
    pub fn socket_path(&self, who: &str) -> PathBuf {
        self.root.join(format!("{who}.sock"))
    }

    /// Takes the exclusive lock of daemon `who`, held until the returned guard is dropped.
    pub fn lock(&self, who: &str) -> Result<LockFile, StateError> {
        LockFile::acquire(&self.lock_path(who))
    }
}

/// An exclusive `flock` on a file, released on drop (or when the process dies).
#[derive(Debug)]
pub struct LockFile {
    _file: fs::File,
    path: PathBuf,
}

impl LockFile {
    /// Locks `path` (creating it), writing our pid into it; fails at once if another process holds it.
    pub fn acquire(path: &Path) -> Result<Self, StateError> {
        let io_err = |err| StateError::Io {
            path: path.to_path_buf(),
            err,
        };
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = fs::read_to_string(path).unwrap_or_default();
                let holder = match holder.trim() {
                    "" => "unknown pid".to_string(),
                    h => format!("pid {h}"),
                };
                return Err(StateError::Locked {
                    path: path.to_path_buf(),
                    holder,
                });
            }
            return Err(io_err(err));
        }
        file.set_len(0).map_err(io_err)?;
        use std::io::Write;
        (&file)
            .write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(io_err)?;
        Ok(Self {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The locked file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates directory `dir` and its missing parents with `mode`, durably: each new directory's
/// entry is fsynced in its parent, so a power loss cannot take a directory (and what was made
/// durable inside it) away.
pub fn durable_dir(dir: &Path, mode: u32) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d);
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(mode).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        let parent = d.parent().filter(|p| !p.as_os_str().is_empty());
        fsync_dir(parent.unwrap_or(Path::new(".")))?;
    }
    if !dir.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    Ok(())
}

/// Creates directory `dir` (and its missing parents) private to its owner and durably
/// ([`durable_dir`]), or makes an existing one private: mode 0700. Every directory of state
/// goes through here.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    durable_dir(dir, 0o700)?;
    let mode = fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        log::info!(
            "{}: was mode {:o}; making it private to its owner (0700)",
            dir.display(),
            mode & 0o7777
        );
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Makes file `path` private to its owner (mode 0600), creating it empty if it is missing: for
/// files other code creates (SQLite databases, whose `-wal` and `-shm` files take the
/// database's mode).
pub fn private_file(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let mode = f.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        f.set_permissions(fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// Makes every file the calling process creates from now on private to its owner (umask 077).
/// The daemons and `mirror-ctl` call it first thing; mirrorfs, which creates files for
/// applications with the modes the kernel hands it, creates its state files with explicit
/// modes instead.
pub fn private_umask() {
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
}

/// The size of the file system holding `dir`, and the bytes free for its users.
pub fn space(dir: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs fills `st`; `c` is a valid NUL-terminated path.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        st
    };
    let unit = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * unit, st.f_bavail as u64 * unit))
}

/// Bytes of the state file system the journal leaves free for what must always fit: the
/// marks of files to resync, the SFA log, status and lock files, the error log. A 32nd of the
/// file system, between 1 MiB and 64 MiB.
pub fn reserve_for(total: u64) -> u64 {
    (total / 32).clamp(1 << 20, 64 << 20)
}

/// Writes `data` to `path` atomically: temp file, fsync, rename, fsync of the directory.
///
/// The temp file is removed if any step fails.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes the directory entries of `dir` durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Reads this system's source-site id, creating it (from the hostname) on first use.
pub fn site_id(state: &StateDir) -> io::Result<String> {
    let path = state.site_id_path();
    let valid = crate::wire::msg::valid_site_id;
    match fs::read_to_string(&path) {
        Ok(s) if valid(s.trim()) => return Ok(s.trim().to_string()),
        Ok(s) if !s.trim().is_empty() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: site id {:?} is not valid ({}); write another there",
                    path.display(),
                    s.trim(),
                    crate::wire::msg::SITE_ID_RULE
                ),
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // A host name that is not a valid id (rare) gets its invalid characters replaced.
    let id = hostname()
        .map(|h| {
            h.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .filter(|h| valid(h))
        .unwrap_or_else(|| "localhost".to_string());
    write_atomic(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

/// The machine's host name, if it can be read.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_order() {
        let p = Path::new("/x/explicit");
        assert_eq!(
            resolve_from(Some(p), Some("/m"), Some("/x"), Some("/h")).unwrap(),
            PathBuf::from("/x/explicit")
        );
        assert_eq!(
            resolve_from(None, Some("/m"), Some("/x"), Some("/h")).unwrap(),
            PathBuf::from("/m")
        );
        assert_eq!(
            resolve_from(None, Some(""), Some("/x"), Some("/h")).unwrap(),
            PathBuf::from("/x/mirror")
        );
        assert_eq!(
            resolve_from(None, None, None, Some("/h")).unwrap(),
            PathBuf::from("/h/.local/state/mirror")
        );
        assert!(matches!(
            resolve_from(None, None, None, None),
            Err(StateError::NoDefault)
        ));
    }

    #[test]
    fn lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().join("s")).unwrap();
        let first = state.lock("mirrorfs").unwrap();
        match state.lock("mirrorfs") {
            Err(StateError::Locked { holder, .. }) => {
                assert_eq!(holder, format!("pid {}", std::process::id()))
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        state.lock("mirrorfs").unwrap();
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sfa");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn site_id_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let a = site_id(&state).unwrap();
        fs::write(state.site_id_path(), "chosen-id\n").unwrap();
        assert_ne!(a, "");
        assert_eq!(site_id(&state).unwrap(), "chosen-id");
    }
}
