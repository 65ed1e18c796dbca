//! A full or failing journal disk (issue 12, item 4): a change the journal cannot take is
//! refused before it is made (ENOSPC) and status says so; one made before the journal failed is
//! marked durably and sent whole later; a state file system smaller than a journal segment
//! works; mirror-sendd starts on a full one.

use std::fs;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use mirror_tests::{assert_log_only, wait_converged, wait_until, Local, Router};

use crate::outage_faults::SmallFs;

const CONVERGE: Duration = Duration::from_secs(120);

/// The error-log lines a full journal with its site away is expected to cause.
pub(crate) const FULL_JOURNAL_LOG: &[&str] = &[
    "the journal cannot take entries",
    "is full: no room for",
    "cannot connect",
    "is blocked",
    "no heartbeat",
];

/// A local system whose state directory is on a tmpfs of `size`.
pub(crate) fn local_on_small_state(size: &str) -> (Local, SmallFs) {
    let mut l = Local::new();
    let fs_dir = l.tmp.path().join("statefs");
    let small = SmallFs::new(&fs_dir, size);
    let state = fs_dir.join("state");
    fs::create_dir_all(&state).unwrap();
    fs::copy(l.state.join("keys"), state.join("keys")).unwrap();
    l.state = state;
    (l, small)
}

pub(crate) fn mount_status(l: &Local) -> serde_json::Value {
    l.status()
        .as_array()
        .and_then(|a| a.first().cloned())
        .map(|s| s["mount"].clone())
        .unwrap_or_default()
}

/// The finding: when the journal append failed (ENOSPC) the data was already in the source
/// file and the application got EIO; nothing marked the file, and status said `ok, 0 queued`.
/// Without the writeback cache, so that `write` itself is refused (with it, the kernel
/// reports errors at fsync and close: tests/e2e/buffered_writes.rs).
#[test]
fn a_full_journal_refuses_changes_with_enospc_and_loses_nothing() {
    let mut r = Router::start();
    let site = r.site();
    r.kill9();
    let (l, _small) = local_on_small_state("24M");
    l.add_rule(&format!("{}/", l.dir.display()), &site, "w", &[]);
    let m = l.mount(&["--no-writeback-cache"]);
    // No sender yet: nothing is acknowledged, so the journal only grows.
    let chunk = vec![0x5au8; 256 << 10];
    let mut written = 0u64;
    let mut f = fs::File::create(l.path("big")).unwrap();
    let err = loop {
        match f.write_all(&chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(written < 64 << 20, "the journal never filled");
    };
    drop(f);
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // The refused write changed nothing: the file holds what the application was told.
    let len = fs::metadata(l.path("big")).unwrap().len();
    assert_eq!(len, written, "the file holds a refused write");
    // Files no rule selects are not refused: there are none here, but a second mount's
    // scratch would be; status and the error log say why the rest is refused.
    wait_until(CONVERGE, "status to say the journal is full", || {
        !mount_status(&l)["journal_trouble"].is_null()
    });
    let text = String::from_utf8_lossy(&l.ctl(&["status"]).stdout).into_owned();
    assert!(text.contains("JOURNAL FULL"), "{text}");
    assert!(l.error_log().contains("the journal cannot take entries"));
    // mirror-sendd starts on the full disk (the journal left its reserve), the router comes
    // back, acknowledged segments go, and changes are taken again.
    let _s = l.sender();
    r.restart();
    wait_until(CONVERGE, "the journal to take changes again", || {
        fs::write(l.path("after"), b"after the disk was full").is_ok()
    });
    fs::OpenOptions::new()
        .append(true)
        .open(l.path("big"))
        .unwrap()
        .write_all(b"tail")
        .unwrap();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    wait_until(CONVERGE, "status to clear the trouble", || {
        mount_status(&l)["journal_trouble"].is_null()
    });
    drop(m);
    assert_log_only("the source", &l.error_log(), FULL_JOURNAL_LOG);
}

/// A change that reached the file before the journal failed is marked durably and sent whole
/// once the journal takes entries again (here: after the remount that ends the journal's
/// refusal of further appends).
#[test]
fn a_change_made_before_the_journal_failed_is_marked_and_sent_whole() {
    let r = Router::start();
    let (l, m, _s) = crate::mirror_ops::mirrored(&r, "w", &[]);
    fs::write(l.path("a.txt"), b"one").unwrap();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    let jdir = l.state.join("journal");
    let newest = *mirrorfs::journal::list_segments(&jdir)
        .unwrap()
        .last()
        .unwrap();
    let seg = mirrorfs::journal::segment_path(&jdir, newest);
    let chattr = |flag: &str| {
        let st = Command::new("chattr").arg(flag).arg(&seg).status().unwrap();
        assert!(st.success());
    };
    let f = fs::OpenOptions::new()
        .write(true)
        .open(l.path("a.txt"))
        .unwrap();
    chattr("+i");
    // The write reaches the file, its entry does not: the write stands, the file is marked.
    std::os::unix::fs::FileExt::write_all_at(&f, b"two", 0).unwrap();
    drop(f);
    assert_eq!(fs::read(l.path("a.txt")).unwrap(), b"two");
    assert!(
        fs::read_to_string(l.state.join("unjournaled")).is_ok_and(|t| !t.is_empty()),
        "the file was not marked"
    );
    wait_until(CONVERGE, "status to show the marked file", || {
        mount_status(&l)["unjournaled"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    });
    // Later changes are refused before they are made.
    assert!(fs::write(l.path("b.txt"), b"refused").is_err());
    assert!(!l.path("b.txt").exists());
    chattr("-i");
    drop(m);
    let _m = l.mount(&[]);
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    assert_eq!(fs::read(r.path("w/a.txt")).unwrap(), b"two");
    wait_until(CONVERGE, "the mark to be cleared once journaled", || {
        !l.state.join("unjournaled").exists() && mount_status(&l)["unjournaled"] == 0
    });
}

/// The finding: a state file system smaller than one journal segment (64 MiB) stalled for
/// good (the active segment never rotated, so acknowledged space never came back).
#[test]
fn a_state_file_system_smaller_than_a_segment_works() {
    let r = Router::start();
    let (l, _small) = local_on_small_state("16M");
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "w", &[]);
    let m = l.mount(&[]);
    let _s = l.sender();
    let chunk = vec![7u8; 1 << 20];
    for i in 0..48 {
        let p = l.path(&format!("f{}", i % 6));
        // Every write goes through, at worst after waiting for acknowledged space to come
        // back (ENOSPC meanwhile, never EIO).
        wait_until(
            CONVERGE,
            &format!("write {i} to be taken"),
            || match fs::write(&p, &chunk) {
                Ok(()) => true,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => false,
                Err(e) => panic!("write {i}: {e}"),
            },
        );
    }
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    let used: u64 = fs::read_dir(l.state.join("journal"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(used < 16 << 20, "the journal holds {used} bytes");
    drop(m);
}

/// The queue limit is a share of the state file system's size, and never more than fits
/// before the free space falls to the journal's reserve (today it was a share of what is
/// free): a blocked site's backlog on a small disk turns into a dirty set, and writes go on.
#[test]
fn a_blocked_sites_backlog_on_a_small_disk_becomes_a_dirty_set_and_writes_go_on() {
    let mut r = Router::start();
    let (l, _small) = local_on_small_state("24M");
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "w", &[]);
    let m = l.mount(&[]);
    let s = l.sender();
    r.kill9();
    let site = r.site();
    wait_until(CONVERGE, "the site to be blocked", || {
        l.status()
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["site"] == site.as_str() && !x["blocked"].is_null())
    });
    let chunk = vec![3u8; 1 << 20];
    for i in 0..40 {
        // Faster than mirror-sendd looks (once a second) the journal may fill: ENOSPC for a
        // moment, never EIO, until the backlog turns into a dirty set and the space is back.
        let p = l.path(&format!("f{}", i % 8));
        wait_until(
            CONVERGE,
            &format!("write {i} while the site is blocked"),
            || match fs::write(&p, &chunk) {
                Ok(()) => true,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => false,
                Err(e) => panic!("write {i}: {e}"),
            },
        );
    }
    wait_until(CONVERGE, "the dirty set", || {
        l.status()
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["dirty_files"].as_u64().is_some_and(|n| n > 0))
    });
    r.restart();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    drop((m, s));
}

/// The finding: with the state disk filled to the last byte by another program, mirrorfs
/// refused writes (ENOSPC, right) but could not write its status file, and `mirror-ctl
/// status` showed the mount as fine. Status now asks the mount itself.
/// Without the writeback cache, so that `write` itself is refused (with it, the kernel
/// reports errors at fsync and close: tests/e2e/buffered_writes.rs).
#[test]
fn status_tells_a_full_journal_when_the_state_disk_is_filled_by_another_program() {
    let (l, small) = local_on_small_state("24M");
    l.add_rule(&format!("{}/", l.dir.display()), "127.0.0.1:9", "w", &[]);
    let m = l.mount(&["--no-writeback-cache"]);
    fs::write(l.path("before"), b"taken").unwrap();
    let filler = small.path().join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 << 10];
    let mut n = 0;
    while f.write_all(&block).is_ok() && n < 10_000 {
        n += 1;
    }
    drop(f);
    // What the journal's current segment still holds is taken; then changes are refused.
    let mut g = fs::File::create(l.path("refused")).unwrap();
    let mut written = 0u64;
    let err = loop {
        match g.write_all(&block) {
            Ok(()) => written += block.len() as u64,
            Err(e) => break e,
        }
        assert!(written < 64 << 20, "the journal never filled");
    };
    drop(g);
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    wait_until(CONVERGE, "status to say the journal is full", || {
        !mount_status(&l)["journal_trouble"].is_null()
    });
    let text = String::from_utf8_lossy(&l.ctl(&["status"]).stdout).into_owned();
    assert!(text.contains("JOURNAL FULL"), "{text}");
    fs::remove_file(&filler).unwrap();
    wait_until(CONVERGE, "the journal to take changes again", || {
        fs::write(l.path("after"), b"taken again").is_ok()
    });
    wait_until(CONVERGE, "status to clear the trouble", || {
        mount_status(&l)["journal_trouble"].is_null()
    });
    let log = m.unmount();
    let warned = log.matches("cannot write").count();
    assert!(
        warned <= 2,
        "the failing status file was reported {warned} times:\n{log}"
    );
}

/// The finding: `mirror-ctl status` hung for good when mirror-sendd was stopped (SIGSTOP):
/// it waited for an answer that never came. It now says so and shows what the files hold.
#[test]
fn status_does_not_hang_on_a_stopped_sender() {
    let l = Local::new();
    l.add_rule(&format!("{}/", l.dir.display()), "127.0.0.1:9", "w", &[]);
    let s = l.sender();
    wait_until(CONVERGE, "the sender to answer", || {
        l.status().as_array().is_some_and(|a| !a.is_empty())
            && l.state.join("mirror-sendd.sock").exists()
    });
    let pid = s.pid().unwrap() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let mut child = Command::new(mirror_tests::bin("mirror-ctl"))
        .arg("--state")
        .arg(&l.state)
        .arg("status")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let st = done.expect("mirror-ctl status hung on a stopped mirror-sendd");
    let out = child.wait_with_output().unwrap();
    assert!(st.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("does not answer"), "{text}");
    // An adversarial finding of issue 13: it also said "mirror-sendd is not running".
    assert!(!text.contains("not running"), "{text}");
}

/// Found by xfstests (generic/103, issue 13): with the tree and the state directory on one
/// file system, a file could not be removed through the mount once something had filled
/// that file system (there a file made with fallocate, here one no rule selects): the unlink
/// had to be journaled first and the journal had no room beyond its reserve, so the full
/// disk could not be freed through the mount at all. A removal frees space: it now goes
/// ahead, and its deletion is journaled once there is room (or the name is marked and sent
/// as its deletion).
/// Without the writeback cache, so that `write` itself is refused (with it, the kernel
/// reports errors at fsync and close: tests/e2e/buffered_writes.rs).
#[test]
fn a_full_disk_shared_with_the_journal_can_be_freed_through_the_mount() {
    let mut l = Local::new();
    let fs_dir = l.tmp.path().join("onefs");
    let _small = SmallFs::new(&fs_dir, "24M");
    let (dir, state) = (fs_dir.join("proj"), fs_dir.join("state"));
    fs::create_dir_all(dir.join("sel")).unwrap();
    fs::create_dir_all(&state).unwrap();
    fs::copy(l.state.join("keys"), state.join("keys")).unwrap();
    (l.dir, l.state) = (dir, state);
    l.add_rule(
        &format!("{}/sel/", l.dir.display()),
        "127.0.0.1:9",
        "w",
        &[],
    );
    let m = l.mount(&["--no-writeback-cache"]);
    fs::write(l.path("sel/old"), vec![1u8; 1 << 20]).unwrap();
    // Mounted again (as xfstests does between tests): the journal goes on in a segment whose
    // room is not known to be reserved, so each entry needs room on the disk itself.
    m.unmount();
    let m = l.mount(&["--no-writeback-cache"]);
    // Filled by a file no rule selects (nothing journaled, nothing held back).
    let chunk = vec![0x5au8; 256 << 10];
    let mut f = fs::File::create(l.path("filler")).unwrap();
    let mut written = 0u64;
    let err = loop {
        match f.write_all(&chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(written < 64 << 20, "the disk never filled");
    };
    drop(f);
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    fs::remove_file(l.path("sel/old")).expect("removing a selected file on the full disk");
    assert!(!l.path("sel/old").exists());
    // Its deletion is on record: in the journal, or marked to be sent (as its deletion).
    let journaled = l
        .journal()
        .iter()
        .any(|e| e.command == mirrorfs::entry::Command::Delete && e.name.ends_with(b"/sel/old"));
    let marked = fs::read_to_string(l.state.join("unjournaled")).is_ok_and(|t| {
        t.contains(&mirrorfs::blocked::hex(
            l.path("sel/old").as_os_str().as_encoded_bytes(),
        ))
    });
    assert!(journaled || marked, "the removal is on record");
    drop(m);
}
