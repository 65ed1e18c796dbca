//! Outages (issue 5), each on a real mount with real daemons and a random workload, ending
//! with the backup equal to the source file by file and a report line
//! `faults N, operations N, files compared N, differences 0`:
//! kill -9 of the sender, the router and both at random moments; the network path cut (nft)
//! longer than the heartbeat threshold; a full backup disk and an immutable backup file
//! (blocked files, `mirror-ctl router unblock`); the queue limit exceeded during an outage
//! (dirty set, resync); a torn journal tail after kill -9 of mirrorfs.
//!
//! `MIRROR_FAULT_ROUNDS` (default 12) sets the rounds of the kill -9 case.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mirror_tests::{assert_log_only, wait_converged, wait_until, Local, Router};

use crate::mirror_ops::{mirrored, mirrored_with};
use crate::mirror_workload::{Rng, Workload};

const CONVERGE: Duration = Duration::from_secs(180);
const NOTICE: Duration = Duration::from_secs(30);

fn report(faults: usize, w: &Workload, n: usize) {
    eprintln!(
        "faults {faults}, operations {}, files compared {n}, differences 0",
        w.ops
    );
}

/// The site's entry in `mirror-ctl status --json`.
fn site_status(l: &Local, site: &str) -> serde_json::Value {
    let all = l.status();
    all.as_array()
        .and_then(|a| a.iter().find(|s| s["site"] == site))
        .cloned()
        .unwrap_or_else(|| panic!("site {site} not in the status: {all}"))
}

fn blocked(l: &Local, site: &str) -> bool {
    !site_status(l, site)["blocked"].is_null()
}

pub(crate) fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} (install it: scripts/test-deps.sh does): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kill9_of_sender_router_and_both_at_random_moments() {
    let rounds: usize = std::env::var("MIRROR_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let mut r = Router::start();
    let (l, m, mut s) = mirrored(&r, "w", &[]);
    let mut w = Workload::new(&l.dir, 0x5eed_0101, 40);
    let mut rng = Rng::new(0x0fa0_1701);
    let steps = |w: &mut Workload, rng: &mut Rng| {
        for _ in 0..(20 + rng.below(200)) {
            w.step();
        }
    };
    let mut kinds = [0usize; 3];
    for _ in 0..rounds {
        steps(&mut w, &mut rng);
        let kind = rng.below(3) as usize;
        kinds[kind] += 1;
        match kind {
            0 => {
                s.kill9();
                steps(&mut w, &mut rng);
                s = l.sender();
            }
            1 => {
                r.kill9();
                steps(&mut w, &mut rng);
                r.restart();
            }
            _ => {
                s.kill9();
                r.kill9();
                steps(&mut w, &mut rng);
                r.restart();
                s = l.sender();
            }
        }
    }
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    eprintln!(
        "kill -9 of the sender {}, of the router {}, of both {}",
        kinds[0], kinds[1], kinds[2]
    );
    report(rounds, &w, n);
    assert!(n >= 40);
    // No session of a killed sender is left behind, and the site is not refused.
    crate::router_faults::assert_no_leaked_sessions(&r, 1);
    assert!(!s.log_text().contains("sessions open"), "{}", s.log_text());
    drop(m);
    assert_log_only("the source", &l.error_log(), SENDER_OUTAGE);
    assert_log_only("the router", &r.error_log(), ROUTER_RESTART);
}

/// What a sender logs when its site goes away and comes back.
const SENDER_OUTAGE: &[&str] = &[
    "; retrying",
    " is blocked: ",
    " is unblocked (",
    " exceeds the queue limit ",
    " that changed while it was blocked whole",
];

/// What a router logs when its sources or it are killed.
const ROUTER_RESTART: &[&str] = &["torn tail", "session with 127.0.0.1:", "closed its session"];

/// Drops every packet to and from a port on the loopback interface while it lives.
pub(crate) struct Cut {
    table: String,
}

impl Cut {
    pub(crate) fn new(port: u16) -> Cut {
        let table = format!("mirror_cut_{port}");
        let rules: String = ["tcp dport", "tcp sport", "udp dport", "udp sport"]
            .iter()
            .map(|r| format!("    iif lo {r} {port} drop\n"))
            .collect();
        let script = format!(
            "table inet {table} {{\n  chain c {{\n    type filter hook input priority 0; policy accept;\n{rules}  }}\n}}\n"
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), script).unwrap();
        run("nft", &["-f", file.path().to_str().unwrap()]);
        Cut { table }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

#[test]
fn a_cut_network_blocks_the_site_and_steady_heartbeats_unblock_it() {
    let r = Router::start();
    let site = r.site();
    let (l, m, s) = mirrored(&r, "w", &[]);
    let mut w = Workload::new(&l.dir, 0x5eed_0102, 40);
    for _ in 0..200 {
        w.step();
    }
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    wait_until(NOTICE, "the router's heartbeats", || {
        site_status(&l, &site)["heartbeat"] == true
    });
    let cut = Cut::new(r.port);
    // Writes go on while the path is cut; the site blocks once the heartbeats are silent
    // for longer than the threshold.
    let mut during = 0;
    wait_until(NOTICE, "the site to be blocked", || {
        w.step();
        during += 1;
        blocked(&l, &site)
    });
    let st = site_status(&l, &site);
    assert_eq!(st["connected"], false, "{st}");
    for _ in 0..300 {
        w.step();
    }
    let queued = site_status(&l, &site)["queued_entries"].as_u64().unwrap();
    assert!(queued > 0, "changes wait in the journal: {st}");
    drop(cut);
    // Heartbeats resume; after the probation the site is unblocked by itself.
    wait_until(NOTICE, "the site to be unblocked", || !blocked(&l, &site));
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    crate::router_faults::assert_no_leaked_sessions(&r, 1);
    let log = s.log_text();
    assert!(log.contains("heartbeats steady"), "{log}");
    assert!(l.error_log().contains(&format!("site {site} is blocked")));
    eprintln!("{during} operations before the block was noticed, {queued} entries queued");
    report(1, &w, n);
    drop(m);
    assert_log_only("the source", &l.error_log(), SENDER_OUTAGE);
    assert_log_only("the router", &r.error_log(), ROUTER_RESTART);
}

/// A small tmpfs mounted while it lives.
pub(crate) struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    pub(crate) fn new(dir: &Path, size: &str) -> SmallFs {
        fs::create_dir_all(dir).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.to_str().unwrap(),
            ],
        );
        SmallFs {
            dir: dir.to_path_buf(),
        }
    }

    /// Where it is mounted.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// The blocked files in `mirror-ctl router status --json`.
fn blocked_files(r: &Router) -> Vec<serde_json::Value> {
    r.status()["blocked"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_full_backup_disk_blocks_the_file_until_unblocked() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let _small = SmallFs::new(&root, "1m");
    let r = Router::start_with(Some(&root));
    let (l, m, _s) = mirrored(&r, "w", &[]);
    fs::write(l.path("small.txt"), b"small").unwrap();
    fs::write(l.path("keep.txt"), b"keep").unwrap();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    let big: Vec<u8> = (0..3 << 20).map(|i| (i % 253) as u8).collect();
    fs::write(l.path("big.bin"), &big).unwrap();
    wait_until(NOTICE, "big.bin to be blocked", || {
        blocked_files(&r).iter().any(|b| b["path"] == "w/big.bin")
    });
    let b = blocked_files(&r);
    assert!(
        b[0]["reason"].as_str().unwrap().contains("No space left"),
        "{b:?}"
    );
    // Entries that need no space keep flowing.
    fs::remove_file(l.path("small.txt")).unwrap();
    wait_until(NOTICE, "small.txt to be deleted on the backup", || {
        !r.path("w/small.txt").exists()
    });
    fs::write(l.path("big.bin"), b"now small").unwrap();
    run("mount", &["-o", "remount,size=64m", root.to_str().unwrap()]);
    let out = r.ctl(&["unblock"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("w/big.bin"));
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    assert!(blocked_files(&r).is_empty());
    assert!(r.error_log().contains("backup file w/big.bin is blocked"));
    eprintln!("faults 1, operations 5, files compared {n}, differences 0");
    drop(m);
    l.assert_no_errors();
    assert_log_only(
        "the router",
        &r.error_log(),
        &["backup file w/big.bin is blocked: write of "],
    );
}

#[test]
fn an_unwritable_backup_file_blocks_while_others_flow() {
    let r = Router::start();
    let (l, m, _s) = mirrored(&r, "w", &[]);
    let mut w = Workload::new(&l.dir, 0x5eed_0103, 40);
    fs::write(l.path("locked.txt"), b"one").unwrap();
    fs::write(l.path("free.txt"), b"one").unwrap();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    let backup = r.path("w/locked.txt");
    run("chattr", &["+i", backup.to_str().unwrap()]);
    fs::write(l.path("locked.txt"), b"two, longer").unwrap();
    wait_until(NOTICE, "locked.txt to be blocked", || {
        blocked_files(&r)
            .iter()
            .any(|b| b["path"] == "w/locked.txt")
    });
    // Other files keep flowing while it is blocked; its own later entries wait in order.
    for _ in 0..300 {
        w.step();
    }
    fs::write(l.path("free.txt"), b"two").unwrap();
    fs::write(l.path("locked.txt"), b"three").unwrap();
    wait_until(NOTICE, "free.txt to reach the backup", || {
        fs::read(r.path("w/free.txt")).is_ok_and(|d| d == b"two")
    });
    assert_eq!(fs::read(&backup).unwrap(), b"one");
    let st = r.status();
    assert!(
        st["blocked"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("Operation not permitted"),
        "{st}"
    );
    run("chattr", &["-i", backup.to_str().unwrap()]);
    let out = r.ctl(&["unblock", "w/locked.txt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    assert!(blocked_files(&r).is_empty());
    let again = r.ctl(&["unblock"]);
    assert!(!again.status.success(), "nothing left to unblock");
    report(1, &w, n);
    drop(m);
    l.assert_no_errors();
    assert_log_only(
        "the router",
        &r.error_log(),
        &["backup file w/locked.txt is blocked: "],
    );
}

#[test]
fn over_the_queue_limit_a_blocked_site_keeps_a_dirty_set_and_resyncs() {
    let mut r = Router::start();
    let site = r.site();
    let (l, m, s) = mirrored_with(&r, "w", &[], &["--queue-limit", "64K"]);
    let mut w = Workload::new(&l.dir, 0x5eed_0104, 40);
    for _ in 0..100 {
        w.step();
    }
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    r.kill9();
    wait_until(NOTICE, "the site to be blocked", || {
        w.step();
        blocked(&l, &site)
    });
    for _ in 0..400 {
        w.step();
    }
    fs::write(l.path("d0/bulk.bin"), vec![7u8; 256 << 10]).unwrap();
    wait_until(NOTICE, "the backlog to become a dirty set", || {
        let st = site_status(&l, &site);
        st["blocked"]["dirty"] == true && st["dirty_files"].as_u64().unwrap_or(0) > 0
    });
    // Changes made after the switch are tracked too.
    for _ in 0..200 {
        w.step();
    }
    let dirty = mirrorfs::blocked::dirty_path(&l.state, &site);
    assert!(dirty.exists());
    // The dirty set and the blocked list are private like the rest (issue 12 item 2).
    let leaks = mirror_tests::open_to_others(&l.state);
    assert!(
        leaks.is_empty(),
        "state open to other users:\n{}",
        leaks.join("\n")
    );
    r.restart();
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    wait_until(NOTICE, "the dirty set to be retired", || !dirty.exists());
    assert!(!blocked(&l, &site));
    assert!(s.log_text().contains("whole"), "{}", s.log_text());
    report(1, &w, n);
    drop(m);
    assert_log_only("the source", &l.error_log(), SENDER_OUTAGE);
    assert_log_only("the router", &r.error_log(), ROUTER_RESTART);
}

#[test]
fn a_torn_journal_tail_after_kill9_of_mirrorfs_is_cut_on_remount() {
    let r = Router::start();
    // The tree is empty: no first copy, whose expansion makes the sender copy renamed files
    // again during the first second (`recopy_if_late`), so that a copy may be reading the
    // tree underneath at the remount, which mirrorfs warns of.
    let (l, mut m, _s) = mirrored(&r, "w", &["--no-sync"]);
    let mut w = Workload::new(&l.dir, 0x5eed_0105, 40);
    for _ in 0..300 {
        w.step();
    }
    m.kill9();
    // A record cut short by the crash: a header's worth of bytes after the last record.
    let jdir = l.state.join("journal");
    let newest = mirrorfs::journal::list_segments(&jdir).unwrap();
    let seg = mirrorfs::journal::segment_path(&jdir, *newest.last().unwrap());
    let mut f = fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &[0x5a; 37]).unwrap();
    drop(f);
    drop(m);
    let m = l.mount(&[]);
    assert!(m.log_text().contains("torn tail"), "{}", m.log_text());
    for _ in 0..300 {
        w.step();
    }
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    report(1, &w, n);
    drop(m);
    assert_log_only("the source", &l.error_log(), &["torn tail at offset "]);
    assert_log_only("the router", &r.error_log(), ROUTER_RESTART);
}

#[test]
fn mirror_ctl_unblock_tries_a_blocked_site_at_once_and_on_block_tells_the_user() {
    let mut r = Router::start();
    let site = r.site();
    let hook_dir = tempfile::tempdir().unwrap();
    let told = hook_dir.path().join("told");
    let hook = format!("echo \"$MIRROR_SITE: $MIRROR_REASON\" > {}", told.display());
    // A probation so long that only the request can end this outage.
    let (l, m, _s) = mirrored_with(&r, "w", &[], &["--probation", "1h", "--on-block", &hook]);
    fs::write(l.path("a.txt"), b"one").unwrap();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    r.kill9();
    fs::write(l.path("a.txt"), b"two").unwrap();
    wait_until(NOTICE, "the site to be blocked", || blocked(&l, &site));
    wait_until(NOTICE, "the --on-block command", || {
        fs::read_to_string(&told).is_ok_and(|t| t.starts_with(&format!("{site}: ")))
    });
    r.restart();
    fs::write(l.path("b.txt"), b"three").unwrap();
    wait_until(NOTICE, "the router's heartbeats", || {
        site_status(&l, &site)["heartbeat"] == true
    });
    assert!(
        blocked(&l, &site),
        "still blocked: the probation is an hour"
    );
    let out = l.ctl(&["unblock", &site]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&site));
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    assert!(!blocked(&l, &site));
    let again = l.ctl(&["unblock"]);
    assert!(!again.status.success(), "no site is blocked any more");
    drop(m);
    eprintln!("faults 1, operations 3, files compared {n}, differences 0");
    assert_log_only("the source", &l.error_log(), SENDER_OUTAGE);
    assert_log_only("the router", &r.error_log(), ROUTER_RESTART);
}
