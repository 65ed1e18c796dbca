//! Driver of the power-loss layer ([`crate::lossyfs`]) for end-to-end tests: mount a
//! directory on it, simulate power losses, mount it again, and unmount in `Drop` (also when a
//! test panics).
//!
//! ```no_run
//! use mirror_tests::lossy::{LossyFs, LossyOpts};
//! # let (backing, mnt) = (std::path::Path::new("/tmp/b"), std::path::Path::new("/tmp/m"));
//! let mut layer = LossyFs::mount(backing, mnt, LossyOpts::default());
//! // … write through `mnt`; only what was fsync'd (files) and fsync'd into its directory
//! // (names) is durable …
//! let report = layer.power_loss(false); // every operation on `mnt` now fails with EIO
//! layer.remount(); // `mnt` shows the durable state
//! # drop(report);
//! ```
//!
//! To put a directory that already exists (a [`crate::Local`]'s state directory, a project, a
//! backup root) on the layer, mount it over itself before anything opens files in it:
//! `LossyFs::over(&local.state)`. What is in it then is durable.
//!
//! A power loss of a layer something else is stacked on (mirrorfs mounted over a project on
//! the layer) works, but [`LossyFs::remount`] needs the stacked mount gone first: kill and
//! unmount it (`Mount::kill9`, then drop it), as the power loss would have killed it anyway.
//! Processes that use the layer should be killed at a power loss too (kill -9): after it they
//! get EIO for everything, and what they hold in memory is not on any disk.
//!
//! Practicalities: [`crate::Mount`] writes mirrorfs's log into the state directory, so with
//! the state directory on the layer that log is on the layer too (and, never fsync'd, lost at
//! a power loss: read it before). The layer's own log is in its temporary directory
//! ([`LossyFs::log_text`]); `LOSSYFS_LOG=debug` shows every refused request,
//! `LOSSYFS_SEED=N` replays the tears of a failed run (each report has its seed).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::lossyfs;

/// How to run a layer.
#[derive(Clone, Debug)]
pub struct LossyOpts {
    /// The first seed for torn power losses (each one uses the next); `LOSSYFS_SEED` in the
    /// environment overrides it, to replay a failure.
    pub seed: u64,
}

impl Default for LossyOpts {
    fn default() -> Self {
        LossyOpts { seed: 0x5eed }
    }
}

/// A lossyfs mount. Dropping it unmounts and stops the server.
pub struct LossyFs {
    tmp: tempfile::TempDir,
    /// The backing directory.
    pub backing: PathBuf,
    /// The mount point.
    pub mountpoint: PathBuf,
    child: Option<Child>,
    control: PathBuf,
    starts: usize,
    seed: u64,
}

impl LossyFs {
    /// Serves `backing` at `mountpoint` (which may be `backing` itself) and waits until it
    /// is mounted.
    pub fn mount(backing: &Path, mountpoint: &Path, opts: LossyOpts) -> LossyFs {
        let tmp = tempfile::Builder::new()
            .prefix("lossyfs-")
            .disable_cleanup(std::env::var_os("MIRROR_TEST_KEEP").is_some())
            .tempdir()
            .expect("tempdir for the layer's socket and logs");
        let seed = std::env::var("LOSSYFS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(opts.seed);
        let mut l = LossyFs {
            control: tmp.path().join("control.sock"),
            tmp,
            backing: backing.canonicalize().expect("canonical backing directory"),
            mountpoint: mountpoint.canonicalize().expect("canonical mount point"),
            child: None,
            starts: 0,
            seed,
        };
        l.start();
        l
    }

    /// Mounts the layer over `dir` itself: its contents stay visible, and are durable.
    pub fn over(dir: &Path) -> LossyFs {
        LossyFs::mount(dir, dir, LossyOpts::default())
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.tmp.path().join(format!("lossyfs-{n}.log"))
    }

    /// What the current server logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path(self.starts.saturating_sub(1))).unwrap_or_default()
    }

    fn start(&mut self) {
        let n = self.starts;
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(n)).expect("create the layer's log");
        let child = Command::new(crate::bin("lossyfs"))
            .arg(&self.backing)
            .arg(&self.mountpoint)
            .arg("--control")
            .arg(&self.control)
            .env(
                "RUST_LOG",
                std::env::var("LOSSYFS_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn lossyfs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.log_text().contains("] mounted ") && lossyfs::is_mounted(&self.mountpoint) {
                break;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "lossyfs exited with {st} before mounting:\n{}",
                        self.log_text()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "lossyfs did not mount {}:\n{}",
                self.mountpoint.display(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends a control command; the server's JSON answer (panics if there is none).
    pub fn command(&self, cmd: &str) -> serde_json::Value {
        self.request(cmd)
            .unwrap_or_else(|e| panic!("lossyfs {cmd}: {e}\nlog:\n{}", self.log_text()))
    }

    fn request(&self, cmd: &str) -> Result<serde_json::Value, String> {
        self.request_within(cmd, Duration::from_secs(120))
    }

    fn request_within(&self, cmd: &str, limit: Duration) -> Result<serde_json::Value, String> {
        let mut s = UnixStream::connect(&self.control)
            .map_err(|e| format!("connect to the control socket: {e}"))?;
        s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
        s.write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .map_err(|e| format!("read the answer: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("answer {line:?}: {e}"))
    }

    fn checked(&self, cmd: &str) -> serde_json::Value {
        let v = self.command(cmd);
        assert!(
            v["ok"] == true,
            "lossyfs {cmd}: {v}\nlog:\n{}",
            self.log_text()
        );
        v
    }

    /// Simulates a power loss: everything not durable is dropped (with `tear`, each file
    /// keeps a random prefix of its unsynced writes; the seed used is in the report), and
    /// every operation on the mount fails with EIO until [`LossyFs::remount`]. The backing
    /// directory holds the durable state as soon as this returns. Panics if the layer could
    /// not restore the durable state exactly.
    pub fn power_loss(&mut self, tear: bool) -> serde_json::Value {
        let seed = if tear {
            let s = self.seed;
            self.seed = self.seed.wrapping_add(1);
            Some(s)
        } else {
            None
        };
        self.power_loss_seeded(seed)
    }

    /// [`LossyFs::power_loss`] with an explicit tearing seed (`None`: no tearing).
    pub fn power_loss_seeded(&mut self, seed: Option<u64>) -> serde_json::Value {
        match seed {
            Some(s) => self.checked(&format!("power-loss tear {s}")),
            None => self.checked("power-loss"),
        }
    }

    /// Makes everything durable now (like `sync` on a disk; the layer does not see the real
    /// `sync`/`syncfs`).
    pub fn sync(&self) {
        self.checked("sync");
    }

    /// Counts of what is not durable yet (`files`, `dirs`, `attrs`, `pins`, `dead` …).
    pub fn status(&self) -> serde_json::Value {
        self.checked("status")
    }

    /// Mounts the layer again after a power loss (a new server on the same backing
    /// directory): the mount shows the durable state. Panics if another mount is stacked on
    /// the layer's (unmount that first).
    pub fn remount(&mut self) {
        let stack = lossyfs::mounts_at(&self.mountpoint);
        assert!(
            stack.last().map(String::as_str) == Some(lossyfs::FS_TYPE),
            "remount of {}: the mounts there are {stack:?}; unmount what is stacked on the layer first",
            self.mountpoint.display()
        );
        // After a power loss the server holds nothing that matters: no need to wait for the
        // processes that still hold files open on it (they get ENOTCONN). Otherwise a remount
        // is a clean unmount: everything durable first.
        let dead = self.request("status").map_or(true, |v| v["dead"] == true);
        if dead {
            self.stop(Duration::ZERO);
        } else {
            let _ = self.request("sync");
            self.stop(Duration::from_secs(5));
        }
        self.start();
    }

    /// Unmounts (a clean unmount makes everything durable) and returns the server's log.
    pub fn unmount(mut self) -> String {
        self.stop(Duration::from_secs(10));
        self.log_text()
    }

    /// Unmounts the layer (lazily if it is busy) and ends the server, killing it if it has not
    /// ended within `grace` (after a power loss nothing it holds matters).
    fn stop(&mut self, grace: Duration) {
        // Whatever is stacked on the layer goes too: a Drop must leave no mount behind.
        for _ in 0..4 {
            let stack = lossyfs::mounts_at(&self.mountpoint);
            if !stack.iter().any(|t| t == lossyfs::FS_TYPE) {
                break;
            }
            let top_is_ours = stack.last().map(String::as_str) == Some(lossyfs::FS_TYPE);
            let clean = top_is_ours
                && Command::new("fusermount3")
                    .arg("-u")
                    .arg(&self.mountpoint)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            if !clean {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&self.mountpoint)
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + grace;
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
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

impl Drop for LossyFs {
    fn drop(&mut self) {
        // Everything durable first (as a clean unmount would), so that a server that must be
        // killed because the mount is busy leaves nothing half-done in the backing directory.
        if self.child.is_some() {
            let _ = self.request_within("sync", Duration::from_secs(10));
        }
        self.stop(Duration::from_secs(2));
    }
}
