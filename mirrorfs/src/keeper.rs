//! What keeps a mount's journal complete while it runs (see [`crate::fs::reconcile`]): the
//! watermark thread, the reconciliation scan started at mount, the clean mark at unmount, and
//! the mount's status file (`<state>/mirrorfs.status`, read by `mirror-ctl status`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fs::error::FsResult;
use crate::fs::reconcile::{ScanProgress, MARGIN_NS};
use crate::fs::MirrorFs;
use crate::journal::Watermark;

/// How often a watermark is written while entries are being recorded.
pub const MARK_EVERY: Duration = Duration::from_secs(1);

/// The reconciliation scan as `mirror-ctl status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanStatus {
    /// Changes from this time on (ns since the epoch) are looked for.
    pub since_ns: u64,
    /// Why the scan runs.
    pub reason: String,
    /// Directories looked at so far.
    pub dirs: u64,
    /// Files looked at so far.
    pub files: u64,
    /// Copies and reconciliations queued so far.
    pub queued: u64,
    /// Whether it has finished.
    pub done: bool,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// What a running mirrorfs reports about itself (`<state>/mirrorfs.status`, JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountStatus {
    /// The mount point.
    pub mountpoint: String,
    /// mirrorfs's process id.
    pub pid: u32,
    /// The reconciliation scan of this mount, if one ran.
    pub scan: Option<ScanStatus>,
    /// Why the journal cannot take entries now (a full disk), if it cannot.
    pub journal_trouble: Option<crate::fs::unjournaled::Trouble>,
    /// Files changed while the journal could not take them, to send whole.
    pub unjournaled: usize,
    /// Every sync rule with each of its sites: in sync, degraded or out of sync.
    #[serde(default)]
    pub sync: Vec<crate::syncwait::SyncStatus>,
    /// The directory underneath the mount, as this process holds it open.
    #[serde(default)]
    pub beneath: Option<Beneath>,
}

/// The directory underneath a mount, held open by its mirrorfs: mirror-sendd reads the
/// sources of copies through `/proc/PID/fd/FD` ([`Beneath::path`]) rather than through the
/// mount, so that no copy ever waits on the kernel's lock of a directory whose change waits
/// for that very copy (a namespace change of a sync rule waits for the sites with the
/// directory locked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beneath {
    /// mirrorfs's descriptor of the directory.
    pub fd: i32,
    /// The directory's device and inode (to check that the descriptor is still it).
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

impl MountStatus {
    /// The path beneath the mount of the full name `name` (at or under the mount point),
    /// checked to lead to the directory this mount serves; `None` when it cannot be used
    /// (another user's mirrorfs, a mirrorfs gone).
    pub fn beneath_path(&self, name: &[u8]) -> Option<PathBuf> {
        use std::os::unix::ffi::OsStringExt;
        use std::os::unix::fs::MetadataExt;
        let b = self.beneath?;
        let mp = self.mountpoint.as_bytes();
        let mp = mp.strip_suffix(b"/").unwrap_or(mp);
        let rest = name.strip_prefix(mp)?;
        if !(rest.is_empty() || rest.starts_with(b"/")) {
            return None;
        }
        let fd_path = PathBuf::from(format!("/proc/{}/fd/{}", self.pid, b.fd));
        let m = std::fs::metadata(&fd_path).ok()?;
        if (m.dev(), m.ino()) != (b.dev, b.ino) {
            return None;
        }
        let mut p = fd_path.into_os_string().into_vec();
        p.extend_from_slice(rest);
        Some(PathBuf::from(std::ffi::OsString::from_vec(p)))
    }
}

impl MountStatus {
    /// The status file of the state directory `state`.
    pub fn path(state: &Path) -> PathBuf {
        state.join("mirrorfs.status")
    }

    /// The status a running mirrorfs wrote, if one runs (a file left by a mirrorfs that died
    /// names a process that is gone: `None`).
    pub fn load(state: &Path) -> Option<MountStatus> {
        let text = std::fs::read_to_string(Self::path(state)).ok()?;
        let st: MountStatus = serde_json::from_str(&text).ok()?;
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = st.pid != 0 && unsafe { libc::kill(st.pid as libc::pid_t, 0) } == 0;
        alive.then_some(st)
    }

    /// Writes the status file; whether it was written (a full disk may refuse it: the
    /// control socket's answer stays current, and the next change tries again).
    fn store(&self, state: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::state::write_atomic(&Self::path(state), &text)
    }
}

/// The mount's status as its keeper last saw it, shared with the control socket (which
/// answers `mirror-ctl status` even when the status file cannot be written).
pub type SharedStatus = Arc<std::sync::Mutex<MountStatus>>;

/// The threads of a mount that keep its journal complete.
pub struct Keeper {
    fs: Arc<MirrorFs>,
    state: PathBuf,
    stop: Arc<AtomicBool>,
    /// While a scan runs: its threshold (marks may not pass it); else `u64::MAX`.
    floor: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
    shared: SharedStatus,
}

impl Keeper {
    /// Starts the watermark thread and, when the journal has a watermark, the reconciliation
    /// of what changed since it (`last`, read before this mount appended anything).
    pub fn start(
        fs: Arc<MirrorFs>,
        state: &Path,
        mountpoint: &Path,
        last: Option<Watermark>,
    ) -> Keeper {
        let stop = Arc::new(AtomicBool::new(false));
        let floor = Arc::new(AtomicU64::new(u64::MAX));
        let progress = Arc::new(ScanProgress::default());
        let mut status = MountStatus {
            mountpoint: mountpoint.display().to_string(),
            pid: std::process::id(),
            scan: None,
            journal_trouble: None,
            unjournaled: 0,
            sync: Vec::new(),
            beneath: fs.beneath(),
        };
        let mut threads = Vec::new();
        let scan_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        match last {
            None => log::info!(
                "this journal has no watermark yet (a first mount): changes made before it are not looked for; `mirror-ctl sync` copies existing files"
            ),
            Some(w) => {
                let since = w.time_ns.saturating_sub(MARGIN_NS);
                let reason = if w.clean {
                    "changes made while not mounted".to_string()
                } else {
                    "the last mount ended without a clean unmount".to_string()
                };
                log::info!(
                    "looking for {reason}: files and directories changed since {} (in the background)",
                    crate::logging::utc_secs(since / 1_000_000_000)
                );
                floor.store(since, Ordering::SeqCst);
                status.scan = Some(ScanStatus {
                    since_ns: since,
                    reason,
                    ..ScanStatus::default()
                });
                let (fs2, stop2, floor2, progress2, err2) = (
                    fs.clone(),
                    stop.clone(),
                    floor.clone(),
                    progress.clone(),
                    scan_error.clone(),
                );
                let spawned = std::thread::Builder::new()
                    .name("reconcile".into())
                    .spawn(move || {
                        match fs2.reconcile_since(since, &progress2, &stop2) {
                            Ok(()) if stop2.load(Ordering::Relaxed) => {}
                            Ok(()) => {
                                progress2.done.store(true, Ordering::SeqCst);
                                floor2.store(u64::MAX, Ordering::SeqCst);
                                log::info!(
                                    "reconciliation done: {} directories and {} files looked at, {} entries queued",
                                    progress2.dirs.load(Ordering::Relaxed),
                                    progress2.files.load(Ordering::Relaxed),
                                    progress2.queued.load(Ordering::Relaxed)
                                );
                            }
                            Err(e) => {
                                // The floor stays: the next mount looks again from the same time.
                                log::error!("reconciliation stopped: {e}; the next mount tries again");
                                *err2.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                            }
                        }
                    });
                match spawned {
                    Ok(t) => threads.push(t),
                    Err(e) => log::error!("cannot start the reconciliation: {e}"),
                }
            }
        }
        // From now on every change is journaled or found by the next mount's scan: say so at
        // once (a crash before the first periodic mark must not lose this mount's changes).
        if let Err(e) = fs.mark(false, floor.load(Ordering::SeqCst)) {
            log::warn!("{e}");
        }
        let shared: SharedStatus = Arc::new(std::sync::Mutex::new(status.clone()));
        let mut stored = status.store(state).map_err(|e| {
            log::warn!("cannot write {}: {e}", MountStatus::path(state).display());
        });
        let (fs2, stop2, floor2, state2, shared2) = (
            fs.clone(),
            stop.clone(),
            floor.clone(),
            state.to_path_buf(),
            shared.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("watermark".into())
            .spawn(move || {
                let journal_end = || fs2.recorder().journal().end();
                let mut marked = journal_end();
                let mut marked_at = std::time::Instant::now();
                let mut shown = status.clone();
                while !stop2.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if marked_at.elapsed() >= MARK_EVERY && journal_end() != marked {
                        match fs2.mark(false, floor2.load(Ordering::SeqCst)) {
                            Ok(()) => marked = journal_end(),
                            Err(e) => log::warn!("{e}"),
                        }
                        marked_at = std::time::Instant::now();
                    }
                    status.sync = fs2.recorder().sync_wait().status();
                    let left = fs2.retry_unjournaled();
                    status.unjournaled = left;
                    status.journal_trouble = fs2
                        .recorder()
                        .unjournaled()
                        .and_then(|u| u.current_trouble());
                    if let Some(s) = status.scan.as_mut() {
                        s.dirs = progress.dirs.load(Ordering::Relaxed);
                        s.files = progress.files.load(Ordering::Relaxed);
                        s.queued = progress.queued.load(Ordering::Relaxed);
                        s.done = progress.done.load(Ordering::Relaxed);
                        s.error = scan_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    }
                    if status != shown || stored.is_err() {
                        *shared2.lock().unwrap_or_else(|p| p.into_inner()) = status.clone();
                        let now = status.store(&state2);
                        // Said once while it fails, not every 100 ms.
                        if let (Err(e), Ok(())) = (&now, &stored) {
                            log::warn!(
                                "cannot write {}: {e}; `mirror-ctl status` asks this mount instead",
                                MountStatus::path(&state2).display()
                            );
                        }
                        stored = now.map_err(|_| ());
                        shown = status.clone();
                    }
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => log::error!("cannot start the watermark thread: {e}"),
        }
        Keeper {
            fs,
            state: state.to_path_buf(),
            stop,
            floor,
            threads,
            shared,
        }
    }

    /// The status this keeper keeps current.
    pub fn status(&self) -> SharedStatus {
        self.shared.clone()
    }

    /// At unmount: stops the threads and appends the clean mark (with the time of an
    /// unfinished scan, so the next mount scans again), then makes the journal durable.
    pub fn finish(self) -> FsResult<()> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(MountStatus::path(&self.state));
        self.fs.mark(true, self.floor.load(Ordering::SeqCst))?;
        self.fs.sync_journal()
    }
}
