//! Helpers shared by the end-to-end tests: temporary local systems, real `mirrorfs` mounts that
//! unmount on drop (also when a test panics), `mirror-ctl` runs, journal decoding, and polling
//! with a deadline instead of sleeping.
//!
//! The binaries under test are the workspace's own, found next to the test executable
//! (`target/<profile>/`); `scripts/test-all.sh` builds them first.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mirrorfs::entry::Entry;
use mirrorfs::journal::{JournalReader, Position};

/// The path of workspace binary `name`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins, or scripts/test-all.sh)",
        p.display()
    );
    p
}

/// Polls `cond` every few milliseconds until it holds; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Whether `path` is a mirrorfs mount now.
pub fn is_mounted(path: &Path) -> bool {
    mirrorfs::mount::is_mirrorfs_mount(path)
}

/// A temporary local system: a project directory and a state directory.
pub struct Local {
    /// Holds the directories.
    pub tmp: tempfile::TempDir,
    /// The project directory (mounted over by [`Local::mount`]).
    pub dir: PathBuf,
    /// The state directory.
    pub state: PathBuf,
}

impl Local {
    /// A fresh local system in a new temporary directory.
    pub fn new() -> Local {
        let tmp = tempfile::Builder::new()
            .prefix("mirror-test-")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().canonicalize().expect("canonicalize tempdir");
        let dir = root.join("proj");
        let state = root.join("state");
        std::fs::create_dir_all(&dir).expect("mkdir proj");
        std::fs::create_dir_all(&state).expect("mkdir state");
        Local { tmp, dir, state }
    }

    /// A path inside the project.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Runs `mirror-ctl --state STATE args…`.
    pub fn ctl<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        Command::new(bin("mirror-ctl"))
            .arg("--state")
            .arg(&self.state)
            .args(args)
            .output()
            .expect("run mirror-ctl")
    }

    /// Adds a rule with `mirror-ctl rule add PATTERN --site SITE --dest DEST EXTRA…`; panics on failure.
    pub fn add_rule(&self, pattern: &str, site: &str, dest: &str, extra: &[&str]) {
        let mut args = vec!["rule", "add", pattern, "--site", site, "--dest", dest];
        args.extend_from_slice(extra);
        let out = self.ctl(&args);
        assert!(
            out.status.success(),
            "rule add {pattern} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The local system's error log (warnings and errors of its daemons).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.state.join("errors.log")).unwrap_or_default()
    }

    /// Fails the test if a daemon logged a warning or error it did not expect.
    pub fn assert_no_errors(&self) {
        let log = self.error_log();
        assert!(log.trim().is_empty(), "unexpected error-log lines:\n{log}");
    }

    /// Mounts mirrorfs over the project directory.
    pub fn mount(&self, extra: &[&str]) -> Mount {
        Mount::start(&self.dir, None, &self.state, extra)
    }

    /// Every entry in the journal, in order.
    pub fn journal(&self) -> Vec<Entry> {
        journal_entries(&self.state.join("journal"))
    }
}

impl Default for Local {
    fn default() -> Self {
        Self::new()
    }
}

/// All entries of the journal in `dir`.
pub fn journal_entries(dir: &Path) -> Vec<Entry> {
    let mut r = match JournalReader::open(dir, Position::START) {
        Ok(r) => r,
        Err(e) => panic!("open journal {}: {e}", dir.display()),
    };
    let mut out = Vec::new();
    while let Some((_, e)) = r.next_entry().expect("read journal") {
        out.push(e);
    }
    out
}

/// A running `mirrorfs` mount. Dropping it unmounts and stops the process.
pub struct Mount {
    child: Option<Child>,
    /// The mount point.
    pub mountpoint: PathBuf,
    log: PathBuf,
}

impl Mount {
    /// Starts `mirrorfs SOURCE [MOUNTPOINT] --state STATE extra…` and waits until it is mounted.
    pub fn start(source: &Path, mountpoint: Option<&Path>, state: &Path, extra: &[&str]) -> Mount {
        static MOUNTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MOUNTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = state.join(format!("mirrorfs-{}-{n}.log", std::process::id()));
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open mirrorfs log");
        let mut cmd = Command::new(bin("mirrorfs"));
        cmd.arg(source);
        if let Some(m) = mountpoint {
            cmd.arg(m);
        }
        cmd.arg("--state")
            .arg(state)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("MIRROR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf);
        let child = cmd.spawn().expect("spawn mirrorfs");
        let mp = mountpoint.unwrap_or(source).to_path_buf();
        let mut m = Mount {
            child: Some(child),
            mountpoint: mp.clone(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // This process's own report that its mount is made (a dead mount left by a killed
        // mirrorfs is listed in mountinfo too, until the new process replaces it).
        while !m.log_text().contains(" INFO  mirrorfs::mount] mounted ") {
            if let Some(c) = m.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "mirrorfs exited with {status} before mounting:\n{}",
                        m.log_text()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "mirrorfs did not mount:\n{}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        m
    }

    /// What mirrorfs logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Kills mirrorfs with SIGKILL (the mount stays behind, dead, until detached).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Unmounts with `fusermount3 -u` and waits for mirrorfs to exit; returns its log.
    pub fn unmount(mut self) -> String {
        self.stop();
        self.log_text()
    }

    fn stop(&mut self) {
        if is_mounted(&self.mountpoint) || self.child.is_none() {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mountpoint)
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        // A dead mount (after kill -9) still needs detaching.
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Names in entries as strings relative to `base` (for readable assertions).
pub fn rel(base: &Path, name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name).into_owned();
    let b = base.to_string_lossy();
    s.strip_prefix(&*b)
        .map(|r| r.trim_start_matches('/').to_string())
        .unwrap_or(s)
}
