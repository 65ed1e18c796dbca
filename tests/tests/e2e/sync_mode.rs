//! Synchronous mirroring per rule (issue 15): durability points of a sync rule's files wait
//! for its sites; `degrade` and `fail` when a site is lost; `rule set` on a running system;
//! an async rule never waits for a sync rule's site.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mirror_tests::{wait_converged, wait_until, Local, Router};

const CONVERGE: Duration = Duration::from_secs(60);

/// Sender options under which a stopped router is never noticed by its heartbeats (the sync
/// rule's own timeout decides).
const PATIENT_SENDER: &[&str] = &["--heartbeat-timeout", "120s"];

/// Stops (SIGSTOP) a process until dropped (SIGCONT), even when the test fails.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        // SAFETY: kill has no memory preconditions.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// A local system with one subtree rule over the project to `proj` on `r` (with `rule`
/// options), mounted, its sender running with `sender` options, the first copy done.
fn mirrored(
    r: &Router,
    rule: &[&str],
    sender: &[&str],
) -> (Local, mirror_tests::Mount, mirror_tests::Daemon) {
    crate::mirror_ops::mirrored_with(r, "proj", rule, sender)
}

/// Every byte of the router's RT2 files (its logs' data).
fn router_log_data(r: &Router) -> Vec<u8> {
    let mut all = Vec::new();
    for e in fs::read_dir(r.state.join("rt")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "rt2") {
            all.extend(fs::read(e.path()).unwrap_or_default());
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A marker no other test writes.
fn marker(tag: &str) -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut m = format!("<{tag}:{}:{nanos:x}>", std::process::id()).into_bytes();
    m.resize(64, b'.');
    m
}

/// The sync status of the first sync rule at the first site, as `mirror-ctl status --json`
/// shows it.
fn sync_state(l: &Local) -> Option<serde_json::Value> {
    let st = l.status();
    st.as_array()?
        .iter()
        .find_map(|row| row["sync"].as_array().and_then(|v| v.first().cloned()))
}

fn write_and_fsync(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Runs `f` in a thread; its result arrives on the receiver.
fn in_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

#[test]
fn an_fsync_of_a_sync_file_returns_only_once_the_router_logs_hold_its_data() {
    let r = Router::start();
    let (l, _m, _s) = mirrored(
        &r,
        &["--mode", "sync", "--sync-timeout", "120s"],
        PATIENT_SENDER,
    );
    let file = l.path("db.bin");
    // In sync: the fsync returns, and the router's logs held the data by then.
    let first = marker("first");
    write_and_fsync(&file, &first).unwrap();
    assert!(
        contains(&router_log_data(&r), &first),
        "fsync returned before the router's logs held its data"
    );
    // The router stopped: the fsync waits for it.
    let stopped = Stopped::new(r.daemon.pid().unwrap());
    let second = marker("second");
    let (f2, d2) = (file.clone(), second.clone());
    let done = in_thread(move || write_and_fsync(&f2, &d2).map(|()| Instant::now()));
    assert!(
        done.recv_timeout(Duration::from_secs(3)).is_err(),
        "fsync returned while the router was stopped"
    );
    // An async-rule-free local read still works meanwhile (no request thread is held).
    assert_eq!(fs::read(&file).unwrap()[..64], first[..]);
    drop(stopped);
    done.recv_timeout(CONVERGE)
        .expect("the fsync returns once the router goes on")
        .expect("and succeeds");
    assert!(
        contains(&router_log_data(&r), &second),
        "fsync returned before the router's logs held its data"
    );
    wait_converged(&l.dir, &r.root.join("proj"), CONVERGE);
    let st = sync_state(&l).expect("the sync rule in status");
    assert_eq!(st["state"], "in sync", "{st}");
}

#[test]
fn a_rename_with_sync_point_applied_is_in_the_backup_when_it_returns() {
    let r = Router::start();
    let (l, _m, _s) = mirrored(
        &r,
        &[
            "--mode",
            "sync",
            "--sync-point",
            "applied",
            "--sync-timeout",
            "120s",
        ],
        PATIENT_SENDER,
    );
    let backup = r.root.join("proj");
    for i in 0..20 {
        // An editor's save: write a temporary file, rename it over the document.
        let tmp = l.path(&format!(".doc.txt.{i}.tmp"));
        fs::write(&tmp, format!("version {i}\n")).unwrap();
        fs::rename(&tmp, l.path("doc.txt")).unwrap();
        assert_eq!(
            fs::read_to_string(backup.join("doc.txt")).unwrap_or_default(),
            format!("version {i}\n"),
            "rename {i} returned before the backup had it"
        );
        assert!(!backup.join(format!(".doc.txt.{i}.tmp")).exists());
    }
    let st = sync_state(&l).expect("the sync rule in status");
    assert_eq!(st["state"], "in sync", "{st}");
    assert_eq!(st["sync_point"], "applied", "{st}");
}

#[test]
fn degrade_after_the_sync_timeout_shows_in_status_and_ends_once_the_backlog_drained() {
    let r = Router::start();
    let hook_out = r.tmp.path().join("on-block.out");
    let hook = format!(
        "echo \"$MIRROR_SITE $MIRROR_REASON\" >> {}",
        hook_out.display()
    );
    let mut sender = PATIENT_SENDER.to_vec();
    sender.extend(["--on-block", hook.as_str()]);
    let (l, _m, _s) = mirrored(&r, &["--mode", "sync", "--sync-timeout", "1500ms"], &sender);
    let file = l.path("log.txt");
    write_and_fsync(&file, b"before\n").unwrap();
    let stopped = Stopped::new(r.daemon.pid().unwrap());
    let t = Instant::now();
    write_and_fsync(&file, b"during 1\n").expect("degrade: the fsync returns");
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "the fsync returned after {:?}, before the sync timeout",
        t.elapsed()
    );
    // (The mount's status is refreshed every 100 ms.)
    wait_until(CONVERGE, "status shows the rule degraded", || {
        sync_state(&l).is_some_and(|s| s["state"] == "degraded")
    });
    let st = sync_state(&l).expect("the sync rule in status");
    assert!(st["since"].as_u64().is_some(), "{st}");
    assert!(
        st["why"].as_str().unwrap_or("").contains("sync timeout"),
        "{st}"
    );
    let text = String::from_utf8_lossy(&l.ctl(&["status"]).stdout).into_owned();
    assert!(text.contains("DEGRADED since"), "{text}");
    // mirror-sendd ran its --on-block command, naming the site and the rule.
    wait_until(CONVERGE, "the --on-block command ran", || {
        fs::read_to_string(&hook_out)
            .is_ok_and(|t| t.contains(&r.site()) && t.contains("sync rule 1"))
    });
    // Degraded: later durability points do not wait.
    let t = Instant::now();
    write_and_fsync(&file, b"during 2\n").unwrap();
    fs::rename(&file, l.path("log2.txt")).unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(1400),
        "a degraded rule still waited {:?}",
        t.elapsed()
    );
    drop(stopped);
    wait_until(CONVERGE, "the rule in sync again", || {
        sync_state(&l).is_some_and(|s| s["state"] == "in sync")
    });
    wait_converged(&l.dir, &r.root.join("proj"), CONVERGE);
    assert_eq!(
        fs::read_to_string(r.root.join("proj/log2.txt")).unwrap(),
        "before\nduring 1\nduring 2\n"
    );
    assert!(l.error_log().contains("degraded"), "{}", l.error_log());
}

#[test]
fn fail_returns_eio_and_refuses_namespace_changes_while_out_of_sync_losing_nothing() {
    let r = Router::start();
    let (l, _m, _s) = mirrored(
        &r,
        &[
            "--mode",
            "sync",
            "--on-sync-loss",
            "fail",
            "--sync-timeout",
            "1s",
        ],
        PATIENT_SENDER,
    );
    let file = l.path("ledger.txt");
    write_and_fsync(&file, b"one\n").unwrap();
    fs::write(l.path("keep.txt"), b"keep").unwrap();
    let stopped = Stopped::new(r.daemon.pid().unwrap());
    let e = write_and_fsync(&file, b"two\n").expect_err("fsync fails while the site is lost");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    wait_until(CONVERGE, "status shows the rule out of sync", || {
        sync_state(&l).is_some_and(|s| s["state"] == "out of sync")
    });
    // Namespace changes are refused before they happen: nothing changes here.
    let e = fs::write(l.path("new.txt"), b"x").expect_err("create refused");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        !l.path("new.txt").exists(),
        "a refused create made the file"
    );
    let e = fs::rename(l.path("keep.txt"), l.path("moved.txt")).expect_err("rename refused");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(fs::read(l.path("keep.txt")).unwrap(), b"keep");
    assert!(!l.path("moved.txt").exists());
    let e = fs::remove_file(l.path("keep.txt")).expect_err("unlink refused");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let e = fs::create_dir(l.path("d")).expect_err("mkdir refused");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // Writes still reach the file and the journal; a later fsync fails too.
    let mut f = fs::OpenOptions::new().append(true).open(&file).unwrap();
    f.write_all(b"three\n").unwrap();
    let e = f
        .sync_all()
        .expect_err("a later fsync fails too while out of sync");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    drop(f);
    assert_eq!(fs::read(&file).unwrap(), b"one\ntwo\nthree\n");
    drop(stopped);
    wait_until(CONVERGE, "the rule in sync again", || {
        sync_state(&l).is_some_and(|s| s["state"] == "in sync")
    });
    write_and_fsync(&file, b"four\n").expect("in sync again: fsync succeeds");
    fs::write(l.path("new.txt"), b"x").expect("and creates go ahead");
    wait_converged(&l.dir, &r.root.join("proj"), CONVERGE);
    assert_eq!(
        fs::read(r.root.join("proj/ledger.txt")).unwrap(),
        b"one\ntwo\nthree\nfour\n"
    );
}

#[test]
fn rule_set_switches_a_running_rule_to_sync_and_back() {
    let r = Router::start();
    let (l, _m, _s) = mirrored(&r, &[], PATIENT_SENDER);
    let list = || String::from_utf8_lossy(&l.ctl(&["rule", "list", "--json"]).stdout).into_owned();
    assert!(list().contains("\"mode\": \"async\""), "{}", list());
    let file = l.path("f.txt");
    // Async: the fsync does not wait for a stopped router.
    {
        let _stopped = Stopped::new(r.daemon.pid().unwrap());
        write_and_fsync(&file, b"async\n").unwrap();
    }
    let out = l.ctl(&[
        "rule",
        "set",
        "1",
        "--mode",
        "sync",
        "--sync-timeout",
        "120s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules: serde_json::Value = serde_json::from_str(&list()).unwrap();
    assert_eq!(rules[0]["mode"], "sync");
    assert_eq!(rules[0]["sync_timeout_ms"], 120_000);
    assert_eq!(rules[0]["on_sync_loss"], "degrade");
    assert_eq!(rules[0]["sync_point"], "durable");
    // The mount picks it up: an fsync now waits for the stopped router.
    wait_until(CONVERGE, "the mount shows the rule as sync", || {
        sync_state(&l).is_some()
    });
    let stopped = Stopped::new(r.daemon.pid().unwrap());
    let f2 = file.clone();
    let done = in_thread(move || write_and_fsync(&f2, b"sync\n"));
    assert!(
        done.recv_timeout(Duration::from_secs(3)).is_err(),
        "fsync of a rule switched to sync did not wait"
    );
    drop(stopped);
    done.recv_timeout(CONVERGE).unwrap().unwrap();
    let out = l.ctl(&["rule", "set", "1", "--mode", "async"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(CONVERGE, "the mount shows the rule as async", || {
        sync_state(&l).is_none()
    });
    // Nothing to change, and no such rule: clear errors.
    let out = l.ctl(&["rule", "set", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to change"));
    let out = l.ctl(&["rule", "set", "9", "--mode", "sync"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no rule with id 9"));
    let out = l.ctl(&["rule", "set", "1", "--mode", "fast"]);
    assert!(!out.status.success());
    wait_converged(&l.dir, &r.root.join("proj"), CONVERGE);
}

#[test]
fn an_async_rule_keeps_flowing_while_a_sync_rules_site_is_stopped() {
    let fast = Router::start();
    let slow = Router::start();
    let l = Local::new();
    fs::create_dir_all(l.path("a")).unwrap();
    fs::create_dir_all(l.path("b")).unwrap();
    let base = l.dir.display().to_string();
    l.add_rule_validated(&format!("{base}/a/"), &fast.site(), "a", &[]);
    l.add_rule_validated(
        &format!("{base}/b/"),
        &slow.site(),
        "b",
        &["--mode", "sync", "--sync-timeout", "120s"],
    );
    let _m = l.mount(&[]);
    let _s = l.sender_with(PATIENT_SENDER);
    write_and_fsync(&l.path("b/first"), b"1").unwrap();
    let stopped = Stopped::new(slow.daemon.pid().unwrap());
    let p = l.path("b/waits");
    let waiting = in_thread(move || write_and_fsync(&p, b"2"));
    // Meanwhile the async rule's files flow, fsyncs included.
    for i in 0..200 {
        write_and_fsync(&l.path(&format!("a/f{i}")), format!("{i}").as_bytes()).unwrap();
    }
    wait_converged(&l.path("a"), &fast.root.join("a"), CONVERGE);
    if let Ok(r) = waiting.try_recv() {
        panic!(
            "the sync rule's fsync returned ({r:?}) while its site was stopped; errors: {}",
            l.error_log()
        );
    }
    drop(stopped);
    waiting.recv_timeout(CONVERGE).unwrap().unwrap();
    wait_converged(&l.path("b"), &slow.root.join("b"), CONVERGE);
}

/// Appends 64-byte records `"<w>:<n>"` to one file per writer, fsyncing each; returns the
/// last record whose fsync succeeded.
fn ledger_writer(
    path: PathBuf,
    w: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Option<Vec<u8>> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .ok()?;
    let mut last = None;
    for n in 0..100_000u64 {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let mut rec = format!("<ledger {w:02} record {n:08}>").into_bytes();
        rec.resize(63, b'.');
        rec.push(b'\n');
        if f.write_all(&rec).is_err() {
            break;
        }
        match f.sync_data() {
            Ok(()) => last = Some(rec),
            Err(_) => break,
        }
    }
    last
}

#[test]
fn kill9_of_the_router_under_fsyncing_writers_loses_no_fsynced_record() {
    let mut r = Router::start();
    let (l, _m, _s) = mirrored(
        &r,
        &[
            "--mode",
            "sync",
            "--on-sync-loss",
            "fail",
            "--sync-timeout",
            "2s",
        ],
        &[],
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (p, s) = (l.path(&format!("ledger{w}")), stop.clone());
            std::thread::spawn(move || ledger_writer(p, w, s))
        })
        .collect();
    // Let them get going, then kill the router under them.
    wait_until(CONVERGE, "every writer has fsynced records", || {
        (0..8)
            .all(|w| fs::metadata(l.path(&format!("ledger{w}"))).is_ok_and(|m| m.len() >= 64 * 20))
    });
    r.kill9();
    // Every writer's fsync now fails (the site is lost): they stop on their own.
    let last: Vec<Option<Vec<u8>>> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Before the router starts again, its logs hold every record whose fsync returned.
    let data = router_log_data(&r);
    for (w, rec) in last.iter().enumerate() {
        let rec = rec.as_ref().expect("each writer fsynced some records");
        assert!(
            contains(&data, rec),
            "writer {w}: {} had been fsynced but is not in the router's logs",
            String::from_utf8_lossy(rec)
        );
    }
    r.restart();
    wait_converged(&l.dir, &r.root.join("proj"), CONVERGE);
    for (w, rec) in last.iter().enumerate() {
        let backup = fs::read(r.root.join(format!("proj/ledger{w}"))).unwrap();
        assert!(contains(&backup, rec.as_ref().unwrap()), "writer {w}");
    }
}

#[test]
fn with_no_sender_running_a_sync_fsync_returns_after_the_timeout_degraded() {
    let l = Local::new();
    l.add_rule(
        &format!("{}/", l.dir.display()),
        "127.0.0.1:9",
        "proj",
        &["--mode", "sync", "--sync-timeout", "1s", "--no-sync"],
    );
    let _m = l.mount(&[]);
    let t = Instant::now();
    write_and_fsync(&l.path("f"), b"x").expect("degrade: the calls return");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    wait_until(CONVERGE, "status shows the rule degraded", || {
        sync_state(&l).is_some_and(|s| {
            s["state"] == "degraded"
                && s["why"]
                    .as_str()
                    .is_some_and(|w| w.contains("mirror-sendd is not running"))
        })
    });
    let text = String::from_utf8_lossy(&l.ctl(&["status"]).stdout).into_owned();
    assert!(text.contains("sync rule 1"), "{text}");
}

#[test]
fn sync_waits_hold_over_four_connections() {
    let r = Router::start();
    let mut sender = PATIENT_SENDER.to_vec();
    sender.extend(["--connections", "4"]);
    let (l, _m, _s) = mirrored(
        &r,
        &[
            "--mode",
            "sync",
            "--sync-point",
            "applied",
            "--sync-timeout",
            "120s",
        ],
        &sender,
    );
    let backup = r.root.join("proj");
    for i in 0..50 {
        let tmp = l.path(&format!("doc.{i}.tmp"));
        fs::write(&tmp, format!("v{i}\n").repeat(1000)).unwrap();
        fs::rename(&tmp, l.path("doc.txt")).unwrap();
        assert_eq!(
            fs::read_to_string(backup.join("doc.txt")).unwrap_or_default(),
            format!("v{i}\n").repeat(1000),
            "rename {i} returned before the backup had it"
        );
    }
    let stopped = Stopped::new(r.daemon.pid().unwrap());
    let p = l.path("last");
    let done = in_thread(move || write_and_fsync(&p, b"last"));
    assert!(
        done.recv_timeout(Duration::from_secs(3)).is_err(),
        "fsync returned while the router was stopped"
    );
    drop(stopped);
    done.recv_timeout(CONVERGE).unwrap().unwrap();
    assert_eq!(fs::read(backup.join("last")).unwrap(), b"last");
}
