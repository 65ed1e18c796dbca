//! Router faults (issue 12): sessions that end whatever fails (kill -9 of the sender in the
//! middle of a stream, a full router-log disk), and no session or commit thread left behind
//! (counted in `/proc/PID/task/*/comm` against the live connections).
//!
//! `MIRROR_KILL_ROUNDS` (default 30) sets the rounds of the kill -9 loop.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mirror_tests::{assert_log_only, wait_converged, wait_until, Router};

use crate::mirror_ops::mirrored;
use crate::mirror_workload::Rng;
use crate::outage_faults::{run, SmallFs};

const CONVERGE: Duration = Duration::from_secs(180);
const NOTICE: Duration = Duration::from_secs(30);

/// A thread rewriting a few large files (1 to 4 MiB) and some small ones in a loop, so that
/// the sender always has a stream going.
pub struct BigWriter {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<usize>>,
}

impl BigWriter {
    /// Starts writing under `dir`.
    pub fn start(dir: &Path) -> BigWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let dir = dir.to_path_buf();
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                let len = (1 << 20) + (i % 4) * (1 << 20);
                let byte = (i % 251) as u8;
                let data: Vec<u8> = (0..len)
                    .map(|k| byte.wrapping_add((k >> 12) as u8))
                    .collect();
                fs::write(dir.join(format!("big{}.bin", i % 4)), &data).expect("write big file");
                fs::write(
                    dir.join(format!("small{}.txt", i % 16)),
                    format!("round {i}\n"),
                )
                .expect("write small file");
                i += 1;
            }
            i
        });
        BigWriter {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and returns how many rounds it wrote.
    pub fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("writer thread"))
            .unwrap_or(0)
    }
}

impl Drop for BigWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Bytes in the router logs now (changes whenever a batch is stored or a pair removed).
fn rt_bytes(state: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(state.join("rt")) else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Waits until the router holds no more session and commit threads than `live` connections
/// need (one of each per source session).
pub fn assert_no_leaked_sessions(r: &Router, live: usize) {
    let count = || (r.daemon.threads("session"), r.daemon.threads("commit"));
    let mut last = (0, 0);
    wait_until(NOTICE, "the router's sessions to end", || {
        last = count();
        last.0 <= live && last.1 <= live
    });
    eprintln!(
        "router threads: {} session, {} commit, for {live} live connections",
        last.0, last.1
    );
}

/// What a sender may log when its router cannot take its entries for a while.
const SENDER_OUTAGE: &[&str] = &["; retrying", " is blocked: ", " is unblocked ("];

/// What a router may log when its senders are killed in the middle of a stream.
const ROUTER_KILLED_PEERS: &[&str] = &["session with 127.0.0.1:", "closed its session"];

#[test]
fn kill9_of_the_sender_mid_stream_never_leaks_a_session() {
    let rounds: usize = std::env::var("MIRROR_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let r = Router::start();
    let (l, m, mut s) = mirrored(&r, "w", &[]);
    let writer = BigWriter::start(&l.dir);
    let mut rng = Rng::new(0x6b69_6c6c);
    for _ in 0..rounds {
        // In the middle of a stream: connected, and the router storing its entries.
        s.wait_log("connected; resuming", NOTICE);
        let before = rt_bytes(&r.state);
        wait_until(NOTICE, "entries to reach the router logs", || {
            rt_bytes(&r.state) != before
        });
        // The moment of the kill within the stream varies (a fault's timing, not a wait).
        std::thread::sleep(Duration::from_millis(rng.below(40)));
        s.kill9();
        s = l.sender();
    }
    // The site is still served: no "already has N sessions open".
    s.wait_log("connected; resuming", NOTICE);
    let written = writer.stop();
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    assert_no_leaked_sessions(&r, 1);
    let log = s.log_text();
    assert!(!log.contains("sessions open"), "{log}");
    eprintln!(
        "faults {rounds}, operations {}, files compared {n}, differences 0",
        written * 2
    );
    drop(m);
    assert_log_only("the source", &l.error_log(), SENDER_OUTAGE);
    assert_log_only("the router", &r.error_log(), ROUTER_KILLED_PEERS);
}

/// Fills the file system of `dir` with a file there; returns its path.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = fs::File::create(&p).unwrap();
    let chunk = vec![0x55u8; 64 << 10];
    // Bounded: the file system is a few MiB.
    for _ in 0..10_000 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    for _ in 0..64 {
        if f.write_all(&[0x55u8; 512]).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    p
}

#[test]
fn a_full_router_log_disk_ends_the_session_and_the_site_flows_once_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("router-state");
    let _small = SmallFs::new(&state, "64m");
    let r = Router::start_in(None, Some(&state), &["--rt-size-mib", "1"]);
    let (l, m, s) = mirrored(&r, "w", &[]);
    fs::write(l.path("before.txt"), b"before the disk filled").unwrap();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    let filler = fill(&state);
    let big: Vec<u8> = (0..24 << 20).map(|i| (i % 241) as u8).collect();
    fs::write(l.path("big.bin"), &big).unwrap();
    fs::write(
        l.path("after.txt"),
        b"written while the router's disk is full",
    )
    .unwrap();
    // The commit fails: the session ends, and so do the sender's next attempts; none of them
    // may keep a seat.
    let mut rd = r.daemon.log_text();
    wait_until(NOTICE, "the commits to fail a few times", || {
        rd = r.daemon.log_text();
        rd.matches("No space left on device").count() >= 4
    });
    assert_no_leaked_sessions(&r, 1);
    assert!(!rd.contains("sessions open"), "{rd}");
    // The source says why.
    wait_until(NOTICE, "the source's status to give the reason", || {
        l.status().as_array().is_some_and(|a| {
            a.iter().any(|x| {
                x["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("No space left on device"))
            })
        })
    });
    fs::remove_file(&filler).unwrap();
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    assert_no_leaked_sessions(&r, 1);
    let text = r.daemon.log_text();
    assert!(!text.contains("sessions open"), "{text}");
    assert!(!s.log_text().contains("sessions open"), "{}", s.log_text());
    eprintln!("faults 1, operations 3, files compared {n}, differences 0");
    drop(m);
    assert_log_only("the source", &l.error_log(), SENDER_OUTAGE);
    assert_log_only(
        "the router",
        &r.error_log(),
        &[
            "session with 127.0.0.1:",
            "No space left on device",
            "closed its session",
        ],
    );
}

/// Flips one bit of the byte `skip` bytes into the last occurrence of `needle` in the router
/// log files ending in `ext` (in place); the file changed.
fn flip(r: &Router, ext: &str, needle: &[u8], skip: usize) -> std::path::PathBuf {
    for e in fs::read_dir(r.state.join("rt")).unwrap().flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some(ext) {
            continue;
        }
        let b = fs::read(&p).unwrap();
        let Some(at) = b.windows(needle.len()).rposition(|w| w == needle) else {
            continue;
        };
        // One byte written in place: the router may be appending to the same file.
        let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[b[at + skip] ^ 0x04], (at + skip) as u64)
            .unwrap();
        return p;
    }
    panic!(
        "{} is in no .{ext} file of {}",
        String::from_utf8_lossy(needle),
        r.state.display()
    );
}

/// The copies the router asked of its sources and still waits for.
fn copies(r: &Router) -> Vec<serde_json::Value> {
    r.status()["copies"].as_array().cloned().unwrap_or_default()
}

fn ctl_ok(r: &Router, args: &[&str]) -> String {
    let out = r.ctl(args);
    assert!(
        out.status.success(),
        "mirror-ctl router {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_flipped_byte_in_rt2_never_reaches_the_backup_and_the_file_is_copied_again() {
    let mut r = Router::start();
    let (l, m, mut s) = mirrored(&r, "w", &[]);
    fs::write(l.path("file.txt"), b"one").unwrap();
    fs::write(l.path("other.txt"), b"other").unwrap();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    // The entry waits in the router logs: its backup file cannot be written for now.
    let backup = r.path("w/file.txt");
    run("chattr", &["+i", backup.to_str().unwrap()]);
    let fresh: Vec<u8> = b"the new content of file.txt, "
        .iter()
        .cycle()
        .take(3000)
        .copied()
        .collect();
    fs::write(l.path("file.txt"), &fresh).unwrap();
    wait_until(NOTICE, "file.txt to be blocked", || {
        r.blocked_paths().iter().any(|p| p == "w/file.txt")
    });
    // Nobody is connected when the router starts again, with one byte of the entry's data
    // changed in RT2.
    s.kill9();
    r.kill9();
    flip(&r, "rt2", b"the new content", 7);
    let mut damaged = fresh.clone();
    damaged[7] ^= 0x04;
    run("chattr", &["-i", backup.to_str().unwrap()]);
    r.restart();
    // Times are shown for people (UTC), not as seconds since the epoch.
    let utc = |l: &str| {
        l.split(" since ")
            .nth(1)
            .is_some_and(|t| t.len() > 23 && t.as_bytes()[4] == b'-' && &t[19..23] == " UTC")
    };
    let text = ctl_ok(&r, &["status"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("BLOCKED w/file.txt"))
        .unwrap();
    assert!(utc(line), "{line}");
    let log = r.error_log();
    let line = log
        .lines()
        .rfind(|l| l.contains("is blocked since"))
        .unwrap();
    assert!(utc(line), "{line}");
    ctl_ok(&r, &["unblock"]);
    wait_until(NOTICE, "the damaged entry to be reported", || {
        copies(&r).iter().any(|c| {
            c["name"].as_str().is_some_and(|n| n.ends_with("/file.txt"))
                && c["reason"]
                    .as_str()
                    .is_some_and(|x| x.contains("checksum mismatch"))
        })
    });
    let on_backup = fs::read(&backup).unwrap();
    assert_ne!(on_backup, damaged, "the damaged bytes reached the backup");
    assert!(on_backup.is_empty() || on_backup == b"one", "{on_backup:?}");
    // The copy asked for the damaged entry (the router, killed before its next checkpoint,
    // may also have asked for what lay past its durable point: that one is not looked at).
    let c = copies(&r);
    let mismatch = c
        .iter()
        .find(|x| {
            x["reason"]
                .as_str()
                .is_some_and(|r| r.contains("checksum mismatch"))
        })
        .expect("the copy asked for the damaged entry");
    let reason = mismatch["reason"].as_str().unwrap();
    let site = mirrorfs::state::hostname().unwrap();
    for part in [
        "router log pair 1 offset ",
        &format!("from site {site}"),
        "file.txt",
    ] {
        assert!(reason.contains(part), "{part:?} not in {reason}");
    }
    assert_eq!(mismatch["site"], site.as_str());
    let text = ctl_ok(&r, &["status"]);
    assert!(text.contains("COPY ASKED of"), "{text}");
    let log = r.error_log();
    assert!(
        log.lines().any(|l| l.contains("file.txt")
            && l.contains("is damaged: data checksum mismatch")
            && l.contains(&format!("from site {site}"))),
        "{log}"
    );
    // The request outlives a restart of the router while the source is away.
    r.restart();
    assert_kept_once(&r, "/file.txt");
    assert_ne!(fs::read(&backup).unwrap(), damaged);
    // The source connects: it is asked for a fresh copy, and the backup converges.
    s = l.sender();
    s.wait_log("sending", NOTICE);
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    wait_until(NOTICE, "the request to be closed", || copies(&r).is_empty());
    assert_eq!(fs::read(&backup).unwrap(), fresh);
    eprintln!("faults 1, operations 3, files compared {n}, differences 0");
    drop(m);
    assert_log_only("the source", &l.error_log(), SENDER_OUTAGE);
    assert_log_only(
        "the router",
        &r.error_log(),
        &[
            "backup file w/file.txt is blocked: ",
            "backup file w/file.txt is blocked since ",
            "is damaged: data checksum mismatch",
            "session with 127.0.0.1:",
            "closed its session",
        ],
    );
}

/// The copy of the file whose name ends with `name` is asked exactly once after a restart
/// (a router killed may also ask again for files whose entries it applied after it last made
/// the backup durable, `mirror_routerd::durable`: those say so).
fn assert_kept_once(r: &Router, name: &str) {
    let kept = copies(r);
    let named = |c: &&serde_json::Value| c["name"].as_str().is_some_and(|n| n.ends_with(name));
    assert_eq!(
        kept.iter().filter(named).count(),
        1,
        "kept across a restart: {kept:?}"
    );
    assert!(
        kept.iter().all(|c| named(&c)
            || c["reason"]
                .as_str()
                .is_some_and(|x| x.contains("the router stopped before it had made"))),
        "{kept:?}"
    );
}

#[test]
fn a_copy_asked_for_while_the_source_is_away_is_kept_and_sent_when_it_connects() {
    let mut r = Router::start();
    let (l, m, mut s) = mirrored(&r, "w", &[]);
    fs::write(l.path("a.txt"), b"renamed soon").unwrap();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    // The rename waits in the router logs (its backup file cannot be changed for now)...
    let backup = r.path("w/a.txt");
    run("chattr", &["+i", backup.to_str().unwrap()]);
    fs::rename(l.path("a.txt"), l.path("c.txt")).unwrap();
    wait_until(NOTICE, "a.txt to be blocked", || {
        r.blocked_paths().iter().any(|p| p == "w/a.txt")
    });
    s.kill9();
    r.kill9();
    // ...and the backup loses the rename's source meanwhile.
    run("chattr", &["-i", backup.to_str().unwrap()]);
    fs::remove_file(&backup).unwrap();
    r.restart();
    ctl_ok(&r, &["unblock"]);
    wait_until(NOTICE, "the copy of c.txt to be asked", || {
        copies(&r)
            .iter()
            .any(|c| c["name"].as_str().is_some_and(|n| n.ends_with("/c.txt")))
    });
    assert!(!r.daemon.log_text().contains("run `mirror-ctl sync` there"));
    r.restart();
    assert_kept_once(&r, "/c.txt");
    s = l.sender();
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    wait_until(NOTICE, "the request to be closed", || copies(&r).is_empty());
    assert!(r.daemon.log_text().contains("copies still pending"));
    eprintln!("faults 2, operations 2, files compared {n}, differences 0");
    drop(s);
    drop(m);
    assert_log_only("the source", &l.error_log(), SENDER_OUTAGE);
    assert_log_only(
        "the router",
        &r.error_log(),
        &[
            "backup file w/a.txt is blocked",
            "backup file w/c.txt is blocked",
            "session with 127.0.0.1:",
            "closed its session",
        ],
    );
}

#[test]
fn a_damaged_router_log_is_quarantined_while_every_source_is_served() {
    let mut r = Router::start();
    let (a, b) = (mirror_tests::Local::new(), mirror_tests::Local::new());
    a.set_site_id("source-a");
    b.set_site_id("source-b");
    r.trust("source-a");
    r.trust("source-b");
    a.add_rule_validated(&format!("{}/", a.dir.display()), &r.site(), "a", &[]);
    b.add_rule_validated(&format!("{}/", b.dir.display()), &r.site(), "b", &[]);
    let (ma, mb) = (a.mount(&[]), b.mount(&[]));
    let (mut sa, _sb) = (a.sender(), b.sender());
    for (l, n) in [(&a, 8), (&b, 4)] {
        fs::create_dir_all(l.path("sub")).unwrap();
        for i in 0..n {
            fs::write(l.path(&format!("sub/f{i}.txt")), format!("first {i}")).unwrap();
        }
    }
    fs::write(a.path("held1.txt"), b"one").unwrap();
    fs::write(a.path("held2.txt"), b"one").unwrap();
    wait_converged(&a.dir, &r.path("source-a/a"), CONVERGE);
    wait_converged(&b.dir, &r.path("source-b/b"), CONVERGE);
    // Entries of source a wait in the router logs (their backup files cannot be changed for
    // now), then source a goes away.
    let held = [
        r.path("source-a/a/held1.txt"),
        r.path("source-a/a/held2.txt"),
    ];
    for h in &held {
        run("chattr", &["+i", h.to_str().unwrap()]);
    }
    fs::write(a.path("held1.txt"), b"two: held1, changed while held").unwrap();
    fs::write(a.path("held2.txt"), b"two: held2, changed while held").unwrap();
    wait_until(NOTICE, "both files to be blocked", || {
        r.blocked_paths().len() == 2
    });
    sa.kill9();
    // Source b's later entries: those of source a are acknowledged and before the committed
    // end of the logs.
    fs::write(b.path("sub/later.txt"), b"later").unwrap();
    wait_converged(&b.dir, &r.path("source-b/b"), CONVERGE);
    r.kill9();
    for h in &held {
        run("chattr", &["-i", h.to_str().unwrap()]);
    }
    // One flipped bit in the record of held2.txt's last change.
    let rt1 = flip(&r, "rt1", b"held2.txt", 2);
    // `router status` works on the damaged logs and says where the damage is.
    let st = r.status();
    let d = &st["damaged"][0];
    assert_eq!(d["pair"], 1, "{st}");
    assert!(d["reason"].as_str().unwrap().contains("CRC"), "{st}");
    let text = ctl_ok(&r, &["status"]);
    assert!(
        text.contains("DAMAGED router log pair 1 at offset "),
        "{text}"
    );
    // The router starts, quarantines the pair and asks for what it held.
    r.restart();
    r.daemon.wait_log("router log pair 1 is damaged", NOTICE);
    assert!(!rt1.exists());
    let q: serde_json::Value =
        serde_json::from_str(&ctl_ok(&r, &["quarantine", "--json"])).unwrap();
    let q = &q[0];
    assert_eq!(q["pair"], 1, "{q}");
    assert!(q["since_utc"].as_str().unwrap().ends_with(" UTC"), "{q}");
    assert!(
        q["hidden"] == true && q["pending"].as_u64().unwrap() >= 1,
        "{q}"
    );
    let files: Vec<&str> = q["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        files
            .iter()
            .all(|f| f.contains("/quarantine/") && Path::new(f).exists()),
        "{q}"
    );
    let asked = |site: &str| {
        q["asked"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["site"] == site)
            .cloned()
            .unwrap_or_else(|| panic!("{site} not asked: {q}"))
    };
    assert!(asked("source-a")["files"].as_u64().unwrap() >= 1, "{q}");
    assert_eq!(
        asked("source-a")["whole_rules"].as_array().unwrap().len(),
        1,
        "{q}"
    );
    assert_eq!(
        asked("source-b")["whole_rules"].as_array().unwrap().len(),
        1,
        "{q}"
    );
    let text = ctl_ok(&r, &["quarantine"]);
    assert!(
        text.contains("pair 1 quarantined ") && text.contains("asked source-a"),
        "{text}"
    );
    let st = r.status();
    assert_eq!(st["quarantined"], 1);
    assert!(st["damaged"].as_array().unwrap().is_empty(), "{st}");
    // Source b (connected) is served, and resends its rule whole.
    fs::write(b.path("sub/after.txt"), b"after the quarantine").unwrap();
    wait_converged(&b.dir, &r.path("source-b/b"), CONVERGE);
    wait_until(NOTICE, "source b's copy to arrive", || {
        copies(&r).iter().all(|c| c["site"] != "source-b")
    });
    // What source a is asked for waits for it, across a restart.
    assert!(copies(&r).iter().any(|c| c["site"] == "source-a"));
    r.restart();
    assert!(copies(&r)
        .iter()
        .any(|c| c["site"] == "source-a" && c["whole_rule"] == true));
    sa = a.sender();
    fs::write(a.path("sub/new.txt"), b"new at a").unwrap();
    let n = wait_converged(&a.dir, &r.path("source-a/a"), CONVERGE);
    wait_until(NOTICE, "every copy to arrive", || copies(&r).is_empty());
    let nb = wait_converged(&b.dir, &r.path("source-b/b"), CONVERGE);
    eprintln!(
        "faults 1, operations 20, files compared {}, differences 0",
        n + nb
    );
    drop(sa);
    drop((ma, mb));
    // The quarantine, the copies asked and the logs are private like the rest (item 2).
    let leaks = mirror_tests::open_to_others(&r.state);
    assert!(
        leaks.is_empty(),
        "router state open to other users:\n{}",
        leaks.join("\n")
    );
    assert_log_only("source a", &a.error_log(), SENDER_OUTAGE);
    assert_log_only("source b", &b.error_log(), SENDER_OUTAGE);
    assert_log_only(
        "the router",
        &r.error_log(),
        &[
            "backup file source-a/a/held1.txt is blocked",
            "backup file source-a/a/held2.txt is blocked",
            "router log pair 1 is damaged",
            "session with 127.0.0.1:",
            "closed its session",
        ],
    );
}

#[test]
fn a_router_log_damaged_while_the_router_runs_is_quarantined_and_the_logs_move_on() {
    let mut r = Router::start();
    let (l, m, _s) = mirrored(&r, "w", &[]);
    fs::write(l.path("held.txt"), b"one").unwrap();
    fs::write(l.path("free.txt"), b"one").unwrap();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    let backup = r.path("w/held.txt");
    run("chattr", &["+i", backup.to_str().unwrap()]);
    fs::write(l.path("held.txt"), b"two, held back").unwrap();
    wait_until(NOTICE, "held.txt to be blocked", || {
        r.blocked_paths().iter().any(|p| p == "w/held.txt")
    });
    // The pair being written is damaged where an entry waits; the router finds it when it
    // reads the entry again.
    flip(&r, "rt1", b"held.txt", 3);
    run("chattr", &["-i", backup.to_str().unwrap()]);
    ctl_ok(&r, &["unblock"]);
    r.daemon.wait_log("router log pair 1 is damaged", NOTICE);
    // The writer moved on to pair 2; the source, asked for the rule whole, is still served.
    fs::write(l.path("free.txt"), b"two").unwrap();
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    wait_until(NOTICE, "the copies to arrive", || copies(&r).is_empty());
    let st = r.status();
    assert_eq!(st["quarantined"], 1, "{st}");
    assert!(r.state.join("rt/0000000000000002.rt1").exists());
    assert!(!r.state.join("rt/0000000000000001.rt1").exists());
    assert!(r.blocked_paths().is_empty());
    eprintln!("faults 1, operations 4, files compared {n}, differences 0");
    drop(m);
    l.assert_no_errors();
    assert_log_only(
        "the router",
        &r.error_log(),
        &[
            "backup file w/held.txt is blocked",
            "router log pair 1 is damaged",
        ],
    );
}
