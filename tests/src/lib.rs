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

pub mod bench;
pub mod lossy;
pub mod lossyfs;
pub mod relay;
pub use lossy::{LossyFs, LossyOpts};

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

/// Waits up to `limit` for `child` to exit, then kills it; whether it exited by itself.
pub fn reap(child: &mut std::process::Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
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

/// `MIRROR_TEST_KEEP=1` keeps the temporary directories (logs, trees) for a post-mortem.
fn keep_temp() -> bool {
    std::env::var_os("MIRROR_TEST_KEEP").is_some()
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
            .disable_cleanup(keep_temp())
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().canonicalize().expect("canonicalize tempdir");
        let dir = root.join("proj");
        let state = root.join("state");
        std::fs::create_dir_all(&dir).expect("mkdir proj");
        std::fs::create_dir_all(&state).expect("mkdir state");
        // Every router a test starts knows this key ([`Router::trust`]).
        mirrorfs::wire::auth::KeyFile::store(&state.join("keys"), "*", &test_key())
            .expect("write the source's key file");
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

    /// Adds a rule with `mirror-ctl rule add PATTERN --site SITE --dest DEST --no-validate
    /// EXTRA…` (no router needs to run); panics on failure.
    pub fn add_rule(&self, pattern: &str, site: &str, dest: &str, extra: &[&str]) {
        let mut e = vec!["--no-validate"];
        e.extend_from_slice(extra);
        self.add_rule_validated(pattern, site, dest, &e);
    }

    /// Adds a rule, asking the site to validate the destination; panics on failure.
    pub fn add_rule_validated(&self, pattern: &str, site: &str, dest: &str, extra: &[&str]) {
        let mut args = vec!["rule", "add", pattern, "--site", site, "--dest", dest];
        args.extend_from_slice(extra);
        let out = self.ctl(&args);
        assert!(
            out.status.success(),
            "rule add {pattern} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The CRC of the first rule (`mirror-ctl rule list --json`).
    pub fn journal_crc_of_rule(&self) -> u32 {
        let rules = json_of(
            &self.ctl(&["rule", "list", "--json"]),
            "mirror-ctl rule list",
        );
        rules[0]["crc"].as_u64().expect("a rule with a crc") as u32
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

    /// [`Local::mount`], with environment variables `env` for mirrorfs (its fault injection).
    pub fn mount_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Mount {
        Mount::start_with(&self.dir, None, &self.state, &self.state, extra, env)
    }

    /// [`Local::mount`], with mirrorfs's own log in `logs` rather than in the state directory
    /// (e.g. when the state directory is on a power-loss layer, which drops that log).
    pub fn mount_logging(&self, logs: &Path, extra: &[&str]) -> Mount {
        Mount::start_logging(&self.dir, None, &self.state, logs, extra)
    }

    /// Every entry in the journal, in order, but the journal's own watermarks (`Mark`).
    pub fn journal(&self) -> Vec<Entry> {
        journal_entries(&self.state.join("journal"))
            .into_iter()
            .filter(|e| e.command != mirrorfs::entry::Command::Mark)
            .collect()
    }
}

impl Default for Local {
    fn default() -> Self {
        Self::new()
    }
}

/// All entries of the journal in `dir`, watermarks included.
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
        Mount::start_logging(source, mountpoint, state, state, extra)
    }

    /// [`Mount::start`], with mirrorfs's log (stdout and stderr) in directory `logs`.
    pub fn start_logging(
        source: &Path,
        mountpoint: Option<&Path>,
        state: &Path,
        logs: &Path,
        extra: &[&str],
    ) -> Mount {
        Mount::start_with(source, mountpoint, state, logs, extra, &[])
    }

    /// [`Mount::start_logging`], with environment variables `env` for mirrorfs.
    pub fn start_with(
        source: &Path,
        mountpoint: Option<&Path>,
        state: &Path,
        logs: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Mount {
        Mount::start_exe(
            &bin("mirrorfs"),
            source,
            mountpoint,
            state,
            logs,
            extra,
            env,
        )
    }

    /// [`Mount::start_with`], running the mirrorfs binary `exe` (e.g. another build's, for a
    /// benchmark) rather than the workspace's own.
    pub fn start_exe(
        exe: &Path,
        source: &Path,
        mountpoint: Option<&Path>,
        state: &Path,
        logs: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Mount {
        static MOUNTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MOUNTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = logs.join(format!("mirrorfs-{}-{n}.log", std::process::id()));
        let logf = private_log(&log);
        let mut cmd = Command::new(exe);
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
            .envs(env.iter().copied())
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
            reap(&mut c, Duration::from_secs(10));
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

/// Opens a daemon's stdout log in a state directory for appending, private like the state.
fn private_log(path: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("open log {}: {e}", path.display()))
}

/// A daemon started by a test; killed (SIGKILL) when dropped.
pub struct Daemon {
    child: Option<Child>,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    name: String,
}

impl Daemon {
    /// Starts workspace binary `name` with `args`, logging to `log` (appended).
    pub fn spawn<S: AsRef<OsStr>>(name: &str, args: &[S], log: PathBuf) -> Daemon {
        let logf = private_log(&log);
        let child = Command::new(bin(name))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("MIRROR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Daemon {
            child: Some(child),
            log,
            name: name.to_string(),
        }
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log contains `needle` (failing early if it exits).
    pub fn wait_log(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.log_text();
            if text.contains(needle) {
                return text;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "{} exited with {st} before logging {needle:?}:\n{text}",
                        self.name
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} within {limit:?}:\n{text}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How many of its threads have a name (`/proc/PID/task/*/comm`, at most 15 bytes)
    /// starting with `prefix`.
    pub fn threads(&self, prefix: &str) -> usize {
        self.pid().map_or(0, |pid| threads_named(pid, prefix))
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

/// How many threads of process `pid` have a name starting with `prefix` (a thread that never
/// ends shows up here: a count above what the live connections need is a leak).
pub fn threads_named(pid: u32, prefix: &str) -> usize {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    rd.flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .count()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Local {
    /// Starts `mirror-sendd` for this local system, with the test heartbeat timing
    /// ([`SENDER_TIMING`]).
    pub fn sender(&self) -> Daemon {
        self.sender_with(&[])
    }

    /// Starts `mirror-sendd` with `extra` arguments and the test heartbeat timing (where
    /// `extra` does not set the same option).
    pub fn sender_with(&self, extra: &[&str]) -> Daemon {
        self.sender_logging(&self.state, extra)
    }

    /// [`Local::sender_with`], with the sender's log (stdout and stderr) in directory `logs`
    /// rather than in the state directory.
    pub fn sender_logging(&self, logs: &Path, extra: &[&str]) -> Daemon {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = logs.join(format!("sendd-{n}.log"));
        let state = self.state.to_string_lossy().into_owned();
        let mut args = vec!["--state", &state];
        for pair in SENDER_TIMING.chunks(2) {
            if !extra.contains(&pair[0]) {
                args.extend_from_slice(pair);
            }
        }
        args.extend_from_slice(extra);
        Daemon::spawn("mirror-sendd", &args, log)
    }

    /// `mirror-ctl status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        json_of(&self.ctl(&["status", "--json"]), "mirror-ctl status")
    }

    /// Gives this local system its own source-site id (several in one test).
    pub fn set_site_id(&self, id: &str) {
        std::fs::write(self.state.join("site-id"), format!("{id}\n")).expect("write site-id");
    }
}

/// The key the test sources and routers share.
pub const TEST_KEY: &str = "6d6972726f722d746573742d6b65792d6d6972726f722d746573742d6b657921";

/// [`TEST_KEY`] as a key.
pub fn test_key() -> mirrorfs::wire::auth::Key {
    mirrorfs::wire::auth::Key::from_hex(TEST_KEY).expect("TEST_KEY is a key")
}

/// Heartbeat timing of the senders tests start: fast, so that outages are noticed and ended
/// in about a second (the defaults are 1 s, 3 s and 5 s).
pub const SENDER_TIMING: &[&str] = &[
    "--heartbeat-interval",
    "200ms",
    "--heartbeat-timeout",
    "1s",
    "--probation",
    "1s",
];

/// Heartbeat timing of the routers tests start.
pub const ROUTER_TIMING: &[&str] = &["--heartbeat-interval", "200ms", "--heartbeat-timeout", "1s"];

/// A backup host: `mirror-routerd` on a loopback port with its own root and state.
pub struct Router {
    /// Holds the directories.
    pub tmp: tempfile::TempDir,
    /// The backup root.
    pub root: PathBuf,
    /// The router state directory.
    pub state: PathBuf,
    /// Where its logs (stdout and stderr) go.
    pub logs: PathBuf,
    /// The port it listens on.
    pub port: u16,
    /// The process.
    pub daemon: Daemon,
    starts: usize,
    extra: Vec<String>,
}

impl Router {
    /// Starts a router on a free loopback port.
    pub fn start() -> Router {
        Router::start_with(None)
    }

    /// Starts a router on a free loopback port, with its backup root at `root` (e.g. a small
    /// file system the test mounted) instead of in its own temporary directory.
    pub fn start_with(root: Option<&Path>) -> Router {
        Router::start_args(root, &[])
    }

    /// Starts a router like [`Router::start_with`], with `extra` arguments.
    pub fn start_args(root: Option<&Path>, extra: &[&str]) -> Router {
        Router::start_in(root, None, extra)
    }

    /// Starts a router like [`Router::start_args`], with its state directory at `state` (e.g.
    /// a small file system the test mounted; its logs then go elsewhere, so that they can be
    /// read while that file system is full).
    pub fn start_in(root: Option<&Path>, state: Option<&Path>, extra: &[&str]) -> Router {
        let tmp = tempfile::Builder::new()
            .prefix("mirror-router-")
            .disable_cleanup(keep_temp())
            .tempdir()
            .expect("tempdir");
        let base = tmp.path().canonicalize().expect("canonicalize");
        let root = root.map_or_else(|| base.join("root"), Path::to_path_buf);
        let logs = if state.is_some() {
            base.clone()
        } else {
            base.join("state")
        };
        let state = state.map_or_else(|| base.join("state"), Path::to_path_buf);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (daemon, port) = Router::launch(&root, &state, &logs, 0, 0, &extra);
        Router {
            tmp,
            root,
            state,
            logs,
            port,
            daemon,
            starts: 1,
            extra,
        }
    }

    fn launch(
        root: &Path,
        state: &Path,
        logs: &Path,
        port: u16,
        n: usize,
        extra: &[String],
    ) -> (Daemon, u16) {
        std::fs::create_dir_all(state).expect("mkdir router state");
        std::fs::create_dir_all(logs).expect("mkdir router logs");
        // Sources keep the default site id (the host name) unless a test sets one and trusts it.
        let id = mirrorfs::state::hostname().unwrap_or_else(|| "localhost".into());
        // The default source may write anywhere under the root (`--namespace .`), so tests
        // compare `<root>/DEST` with the source; [`Router::trust`] gives a site the default.
        let whole_root = mirrorfs::wire::auth::Namespace::parse(".").expect("namespace .");
        mirrorfs::wire::auth::KeyFile::store_granting(
            &state.join("keys"),
            &id,
            &test_key(),
            Some(whole_root),
        )
        .expect("write the router's key file");
        let log = logs.join(format!("routerd-{n}.log"));
        let listen = format!("127.0.0.1:{port}");
        let mut args: Vec<&OsStr> = vec![
            "--listen".as_ref(),
            listen.as_ref(),
            "--root".as_ref(),
            root.as_os_str(),
            "--state".as_ref(),
            state.as_os_str(),
        ];
        args.extend(ROUTER_TIMING.iter().map(OsStr::new));
        args.extend(extra.iter().map(OsStr::new));
        let mut d = Daemon::spawn("mirror-routerd", &args, log);
        let text = d.wait_log("listening on 127.0.0.1:", Duration::from_secs(20));
        let port = text
            .split("listening on 127.0.0.1:")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .expect("port in the router's log");
        (d, port)
    }

    /// `127.0.0.1:PORT`, for `--site`.
    pub fn site(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the router with SIGKILL.
    pub fn kill9(&mut self) {
        self.daemon.kill9();
    }

    /// Waits until the router process has made everything in its logs durable in the backup
    /// and recorded it (its durable point, `<state>/applied`, at the end of the newest pair's
    /// RT1): a kill after this leaves nothing for its next start to ask the sources again.
    pub fn wait_durable(&self) {
        let rt = self.state.join("rt");
        wait_until(
            Duration::from_secs(60),
            "the router's durable point at the end of its logs",
            || {
                let newest = std::fs::read_dir(&rt).ok().and_then(|d| {
                    d.flatten()
                        .filter_map(|e| {
                            let name = e.file_name().to_string_lossy().into_owned();
                            let n = name.strip_suffix(".rt1")?.parse::<u64>().ok()?;
                            Some((n, e.metadata().ok()?.len()))
                        })
                        .max()
                });
                let point = std::fs::read_to_string(self.state.join("applied")).ok();
                match (newest, point) {
                    (Some((n, len)), Some(p)) => p.trim() == format!("{n} {len}"),
                    _ => false,
                }
            },
        );
    }

    /// Starts it again (same port, root and state) after [`Router::kill9`].
    pub fn restart(&mut self) {
        self.daemon.kill9();
        let (d, _) = Router::launch(
            &self.root,
            &self.state,
            &self.logs,
            self.port,
            self.starts,
            &self.extra,
        );
        self.starts += 1;
        self.daemon = d;
    }

    /// Accepts source site `id` with [`TEST_KEY`] (`mirror-ctl router key add ID --key …`),
    /// with the default namespace: it writes beneath `<root>/ID/`.
    pub fn trust(&self, id: &str) {
        let out = self.ctl(&["key", "add", id, "--key", TEST_KEY]);
        assert!(
            out.status.success(),
            "router key add {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `mirror-ctl --state ROUTER_STATE router args…`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("mirror-ctl"))
            .arg("--state")
            .arg(&self.state)
            .arg("router")
            .args(args)
            .output()
            .expect("run mirror-ctl")
    }

    /// `mirror-ctl router status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        json_of(&self.ctl(&["status", "--json"]), "mirror-ctl router status")
    }

    /// The paths of the blocked backup files in `router status`.
    pub fn blocked_paths(&self) -> Vec<String> {
        self.status()["blocked"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| b["path"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The router's error log.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.state.join("errors.log")).unwrap_or_default()
    }

    /// A path under the backup root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

/// The JSON that command `what` printed; panics with its stderr if it failed.
fn json_of(out: &Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what} printed no JSON: {e}"))
}

/// A summary of a tree: relative path → kind, size and content CRC (or link target).
pub fn tree(dir: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(dir)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let v = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!(
                    "link -> {}",
                    std::fs::read_link(&p).unwrap_or_default().display()
                )
            } else if m.is_file() {
                let data = std::fs::read(&p).unwrap_or_default();
                format!("file {} bytes crc {:08x}", m.size(), crc32fast::hash(&data))
            } else {
                format!("special {:o}", m.mode() & libc::S_IFMT)
            };
            out.insert(rel, v);
        }
    }
    out
}

/// The differences between two tree summaries, one line each.
pub fn tree_diff(
    a: &std::collections::BTreeMap<String, String>,
    b: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("missing in backup: {k} ({v})")),
            Some(w) if w != v => out.push(format!("differs: {k}: source {v}, backup {w}")),
            _ => {}
        }
    }
    for (k, w) in b {
        if !a.contains_key(k) {
            out.push(format!("extra in backup: {k} ({w})"));
        }
    }
    out
}

/// The standard output of a command that must have succeeded; fails the test with its
/// standard error otherwise.
pub fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails the test if a line of the error log `log` (of `who`) contains none of `expected`:
/// a fault test names what its faults may log, and anything else is a finding.
pub fn assert_log_only(who: &str, log: &str, expected: &[&str]) {
    let unexpected: Vec<&str> = log
        .lines()
        .filter(|l| !expected.iter().any(|e| l.contains(e)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected lines in the error log of {who}:\n{}",
        unexpected.join("\n")
    );
}

/// Waits until `backup` has the same tree as `source`; panics with the differences after
/// `limit`. Returns the number of entries compared.
pub fn wait_converged(source: &Path, backup: &Path, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(2);
    loop {
        let a = tree(source);
        let b = tree(backup);
        let diff = tree_diff(&a, &b);
        if diff.is_empty() {
            return a.len();
        }
        if Instant::now() > deadline {
            let shown: Vec<&String> = diff.iter().take(40).collect();
            panic!(
                "backup {} did not converge to {} within {limit:?}; {} differences:\n{}",
                backup.display(),
                source.display(),
                diff.len(),
                shown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Every entry under `dir` (and `dir` itself) that another user could read or write, besides
/// what the test harness writes there itself (its daemons' stdout logs are private too).
pub fn open_to_others(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let top = std::fs::metadata(dir).map(|m| m.mode()).unwrap_or(0);
    if top & 0o077 != 0 {
        out.push(format!(
            "{} (directory) mode {:o}",
            dir.display(),
            top & 0o7777
        ));
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            if !m.file_type().is_symlink() && m.mode() & 0o077 != 0 {
                out.push(format!("{} mode {:o}", p.display(), m.mode() & 0o7777));
            }
        }
    }
    out
}
