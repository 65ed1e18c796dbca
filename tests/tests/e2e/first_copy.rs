//! A rule's first copy (issue 13 item 1): files that existed before a rule reach its sites as
//! part of `rule add`, shown by `status` until acknowledged, skipped with `--no-sync`, ordered
//! so that no write made meanwhile is lost, one journal entry whatever the number of files;
//! and a change to a file the backup lacks fetches the file whole (never a patchwork). Also
//! what `rule rm` does with the removed rule's unsent entries and its backup (item 10).

use std::fs;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mirror_tests::{assert_log_only, rel, wait_converged, wait_until, Local, Router};
use mirrorfs::entry::Command;

const CONVERGE: Duration = Duration::from_secs(60);

/// The status row of `site`.
fn row(l: &Local, site: &str) -> serde_json::Value {
    let st = l.status();
    st.as_array()
        .and_then(|rows| rows.iter().find(|r| r["site"] == site).cloned())
        .unwrap_or_else(|| panic!("no status row for {site}: {st}"))
}

/// The first copies `status` shows for `site` as (files, bytes) left.
fn initial_copies(l: &Local, site: &str) -> Vec<(u64, u64)> {
    row(l, site)["initial_copies"]
        .as_array()
        .expect("initial_copies in the status")
        .iter()
        .map(|c| (c["files"].as_u64().unwrap(), c["bytes"].as_u64().unwrap()))
        .collect()
}

fn status_text(l: &Local) -> String {
    let out = l.ctl(&["status"]);
    mirror_tests::succeeded(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Files in `l`'s project before any rule: (relative name, content).
fn old_files(l: &Local) -> Vec<(&'static str, Vec<u8>)> {
    let files = vec![
        ("notes.txt", b"version 1 of the notes\n".to_vec()),
        ("src/main.rs", b"fn main() { println!(\"hi\"); }\n".to_vec()),
        (
            "src/deep/data.bin",
            (0..70_000u32).map(|i| (i % 251) as u8).collect(),
        ),
    ];
    for (name, data) in &files {
        let p = l.path(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    files
}

fn append(p: &std::path::Path, data: &[u8]) {
    let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(data).unwrap();
}

/// The bug as reported: files exist, a rule is added, the first change to one of them made a
/// backup holding zeros where the older content was. Now the first copy brings every file
/// over, and the change lands on top of it.
#[test]
fn files_that_existed_before_the_rule_reach_the_backup_before_their_first_change() {
    let r = Router::start();
    let l = Local::new();
    old_files(&l);
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "proj", &[]);
    let m = l.mount(&[]);
    let _s = l.sender();
    append(&l.path("notes.txt"), b"v2\n");
    wait_converged(&l.dir, &r.path("proj"), CONVERGE);
    assert_eq!(
        fs::read(r.path("proj/notes.txt")).unwrap(),
        b"version 1 of the notes\nv2\n"
    );
    drop(m);
    l.assert_no_errors();
}

/// Found by a new user: hard links that existed before the rule became separate files in the
/// backup (the first copy, and `sync`, copied each name whole); now the other names of a file
/// are sent as links to the first.
#[test]
fn hard_links_that_existed_before_the_rule_stay_links_in_the_backup() {
    use std::os::unix::fs::MetadataExt;
    let r = Router::start();
    let l = Local::new();
    fs::create_dir_all(l.path("d")).unwrap();
    fs::write(l.path("a"), b"one file, three names").unwrap();
    fs::hard_link(l.path("a"), l.path("b")).unwrap();
    fs::hard_link(l.path("a"), l.path("d/c")).unwrap();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "proj", &[]);
    let _s = l.sender();
    wait_until(CONVERGE, "three names of one file in the backup", || {
        let ino = |n: &str| fs::metadata(r.path(n)).ok().map(|m| (m.ino(), m.nlink()));
        let a = ino("proj/a");
        a.is_some_and(|(_, links)| links == 3) && a == ino("proj/b") && a == ino("proj/d/c")
    });
    assert_eq!(
        fs::read(r.path("proj/d/c")).unwrap(),
        b"one file, three names"
    );
    l.assert_no_errors();
}

/// Added while mounted: the mount queues the copy as it loads the rule.
#[test]
fn a_rule_added_while_mounted_copies_what_it_selects() {
    let r = Router::start();
    let l = Local::new();
    let files = old_files(&l);
    let m = l.mount(&[]);
    let _s = l.sender();
    let out = l.ctl(&[
        "rule",
        "add",
        &format!("{}/src/", l.dir.display()),
        "--site",
        &r.site(),
        "--dest",
        "src",
    ]);
    mirror_tests::succeeded(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("first copy queued by the mount"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // One copy entry, of the rule's base.
    let copies: Vec<String> = l
        .journal()
        .iter()
        .filter(|e| e.command == Command::Copy)
        .map(|e| rel(&l.dir, &e.name))
        .collect();
    assert_eq!(copies, vec!["src".to_string()]);
    wait_converged(&l.path("src"), &r.path("src"), CONVERGE);
    assert_eq!(fs::read(r.path("src/deep/data.bin")).unwrap(), files[2].1);
    drop(m);
    l.assert_no_errors();
}

/// `status` shows the first copy (files and bytes left) until the site acknowledged it.
#[test]
fn status_shows_the_initial_copy_until_the_site_has_it() {
    let r = Router::start();
    let l = Local::new();
    let files = old_files(&l);
    let bytes: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "proj", &[]);
    // Nothing sends yet: all of it is left.
    assert_eq!(initial_copies(&l, &r.site()), vec![(3, bytes)]);
    let text = status_text(&l);
    // 70,054 bytes.
    assert!(
        text.contains("initial copy: 3 files, 68.4 KiB left"),
        "{text}"
    );
    let _s = l.sender();
    wait_until(CONVERGE, "the first copy to be acknowledged", || {
        initial_copies(&l, &r.site()).is_empty()
    });
    assert!(!status_text(&l).contains("initial copy"));
    wait_converged(&l.dir, &r.path("proj"), CONVERGE);
    l.assert_no_errors();
}

/// `--no-sync`: a backup seeded beforehand is trusted as it is: nothing is copied, and only
/// later changes are sent.
#[test]
fn no_sync_leaves_a_seeded_backup_as_it_is() {
    let r = Router::start();
    let l = Local::new();
    old_files(&l);
    // The seed differs from the source on purpose: a copy would overwrite it.
    let seeded = r.path("proj/notes.txt");
    fs::create_dir_all(seeded.parent().unwrap()).unwrap();
    fs::write(&seeded, b"seeded by rsync\n").unwrap();
    let before = fs::metadata(&seeded).unwrap();
    l.add_rule_validated(
        &format!("{}/", l.dir.display()),
        &r.site(),
        "proj",
        &["--no-sync"],
    );
    assert!(initial_copies(&l, &r.site()).is_empty());
    let m = l.mount(&[]);
    let _s = l.sender();
    fs::write(l.path("later.txt"), b"written after the rule").unwrap();
    wait_until(CONVERGE, "the later change to reach the backup", || {
        fs::read(r.path("proj/later.txt")).is_ok_and(|d| d == b"written after the rule")
    });
    assert!(!l.journal().iter().any(|e| e.command == Command::Copy));
    assert_eq!(fs::read(&seeded).unwrap(), b"seeded by rsync\n");
    use std::os::unix::fs::MetadataExt;
    let after = fs::metadata(&seeded).unwrap();
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (before.ino(), before.mtime(), before.mtime_nsec())
    );
    assert!(!r.path("proj/src/main.rs").exists(), "nothing was copied");
    drop(m);
    l.assert_no_errors();
}

/// The router side, independently of the first copy (`--no-sync` over a backup that does not
/// have the files): a write to a file the backup lacks is not applied alone (it made
/// `\0\0…v2`); the router asks the source for the whole file. Fails on the router before
/// f235398 (issue 12), which made the fix without an end-to-end test.
#[test]
fn a_change_to_a_file_the_backup_lacks_fetches_it_whole() {
    let r = Router::start();
    let l = Local::new();
    old_files(&l);
    l.add_rule_validated(
        &format!("{}/", l.dir.display()),
        &r.site(),
        "proj",
        &["--no-sync"],
    );
    let m = l.mount(&[]);
    let _s = l.sender();
    append(&l.path("notes.txt"), b"v2\n");
    // A write in the middle and a truncate too.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(l.path("src/deep/data.bin"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"PATCH", 40_000).unwrap();
    f.set_len(50_000).unwrap();
    drop(f);
    wait_until(CONVERGE, "both files on the backup", || {
        fs::read(r.path("proj/notes.txt"))
            .is_ok_and(|d| d == fs::read(l.path("notes.txt")).unwrap())
            && fs::read(r.path("proj/src/deep/data.bin"))
                .is_ok_and(|d| d == fs::read(l.path("src/deep/data.bin")).unwrap())
    });
    assert_eq!(
        fs::read(r.path("proj/notes.txt")).unwrap(),
        b"version 1 of the notes\nv2\n",
        "no zeros where the older content is"
    );
    // The file never changed is not there: nothing asked for it.
    assert!(!r.path("proj/src/main.rs").exists());
    drop(m);
    assert_log_only("the router", &r.error_log(), &[]);
}

/// A rule added while a writer appends and creates files in what it selects: nothing written
/// before, during or after `rule add` is missing from the backup.
#[test]
fn a_rule_added_under_a_concurrent_writer_loses_no_write() {
    let r = Router::start();
    let l = Local::new();
    fs::create_dir_all(l.path("w/files")).unwrap();
    let m = l.mount(&[]);
    let _s = l.sender();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        let dir = l.path("w");
        std::thread::spawn(move || {
            let mut log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("log.txt"))
                .unwrap();
            // Bounded: the test stops it long before.
            for n in 0..1_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                writeln!(log, "line {n}").unwrap();
                if n % 10 == 0 {
                    fs::write(dir.join(format!("files/{n}")), format!("file {n}")).unwrap();
                }
                written.store(n + 1, Ordering::Relaxed);
            }
        })
    };
    wait_until(CONVERGE, "the writer to start", || {
        written.load(Ordering::Relaxed) > 200
    });
    l.add_rule_validated(&format!("{}/w/", l.dir.display()), &r.site(), "w", &[]);
    // Writes go on well after the mount took the rule.
    let at_add = written.load(Ordering::Relaxed);
    wait_until(CONVERGE, "writes after the rule", || {
        written.load(Ordering::Relaxed) > at_add + 500
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    wait_converged(&l.path("w"), &r.path("w"), CONVERGE);
    let lines = fs::read_to_string(r.path("w/log.txt")).unwrap();
    assert_eq!(
        lines.lines().count() as u64,
        written.load(Ordering::Relaxed)
    );
    drop(m);
    l.assert_no_errors();
}

/// 5,000 files: `rule add` (on a mounted tree) queues one entry, the rule's base, and returns
/// before anything is sent; mirror-sendd expands it.
#[test]
fn a_rule_over_a_big_tree_queues_one_entry_and_the_sender_expands_it() {
    let r = Router::start();
    let l = Local::new();
    for d in 0..50 {
        let dir = l.path(&format!("big/d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            fs::write(dir.join(format!("f{f:03}")), format!("{d} {f}")).unwrap();
        }
    }
    let m = l.mount(&[]);
    l.add_rule_validated(&format!("{}/big/", l.dir.display()), &r.site(), "big", &[]);
    let entries = l.journal();
    assert_eq!(entries.len(), 1, "one entry for 5,000 files");
    assert_eq!(entries[0].command, Command::Copy);
    assert_eq!(rel(&l.dir, &entries[0].name), "big");
    // `rule add` is done; the copy is not acknowledged (nothing sends yet).
    let left = initial_copies(&l, &r.site());
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, 5_000);
    let _s = l.sender();
    wait_converged(&l.path("big"), &r.path("big"), CONVERGE);
    wait_until(CONVERGE, "the first copy to be acknowledged", || {
        initial_copies(&l, &r.site()).is_empty()
    });
    drop(m);
    l.assert_no_errors();
}

/// `rule rm` (item 10): the removed rule's entries still in the journal, not yet sent, are
/// never sent; its backup stays as it was.
#[test]
fn rule_rm_drops_the_unsent_entries_and_leaves_the_backup() {
    let r = Router::start();
    let l = Local::new();
    fs::create_dir_all(l.path("a")).unwrap();
    fs::create_dir_all(l.path("probe")).unwrap();
    l.add_rule_validated(&format!("{}/a/", l.dir.display()), &r.site(), "a", &[]);
    let m = l.mount(&[]);
    let mut s = l.sender();
    fs::write(l.path("a/kept.txt"), b"sent before the removal").unwrap();
    wait_converged(&l.path("a"), &r.path("a"), CONVERGE);
    // The site falls behind: these stay in the journal, unsent.
    s.kill9();
    fs::write(l.path("a/kept.txt"), b"changed, never sent").unwrap();
    fs::write(l.path("a/new.txt"), b"never sent").unwrap();
    let unsent = l
        .journal()
        .iter()
        .filter(|e| rel(&l.dir, &e.name).starts_with("a/"))
        .count();
    assert!(unsent >= 2, "the changes are in the journal");
    let out = l.ctl(&["rule", "rm", "1"]);
    mirror_tests::succeeded(&out);
    // Another rule, whose file is journaled after everything above: once it arrives, the
    // sender has gone past the removed rule's entries.
    l.add_rule_validated(
        &format!("{}/probe/", l.dir.display()),
        &r.site(),
        "probe",
        &[],
    );
    wait_until(CONVERGE, "the mount to take the new rule", || {
        fs::write(l.path("probe/p"), b"probe").unwrap();
        l.journal()
            .iter()
            .any(|e| e.command == Command::Write && rel(&l.dir, &e.name) == "probe/p")
    });
    let _s = l.sender();
    wait_until(CONVERGE, "the probe on the backup", || {
        fs::read(r.path("probe/p")).is_ok_and(|d| d == b"probe")
    });
    // The backup of the removed rule: in place, as it was.
    assert_eq!(
        fs::read(r.path("a/kept.txt")).unwrap(),
        b"sent before the removal"
    );
    assert!(!r.path("a/new.txt").exists());
    drop(m);
    assert_log_only("mirror-sendd", &l.error_log(), &[]);
    assert_log_only("the router", &r.error_log(), &[]);
}

/// Bytes the router has taken into its logs (RT2, the data).
fn rt2_bytes(r: &Router) -> u64 {
    fs::read_dir(r.state.join("rt"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".rt2"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// An adversarial finding of issue 13: a copy cut off midway (here the sender killed while it
/// streams a `sync` of a changed 128 MiB file) left the backup file with the new content's
/// first part and the old content's rest until the copy was sent again, and a restore in
/// between gave that mix back. Now the backup file stays the old version whole until the
/// copy is complete, then becomes the new one.
#[test]
fn a_copy_cut_off_midway_leaves_the_backup_file_whole() {
    const SIZE: usize = 128 << 20;
    let r = Router::start();
    let l = Local::new();
    let big = l.path("big.bin");
    fs::write(&big, vec![b'A'; SIZE]).unwrap();
    // Nothing mounted: the rule's first copy, then the sync, go into the journal directly.
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "proj", &[]);
    let mut s = l.sender();
    let backup = r.path("proj/big.bin");
    wait_until(CONVERGE, "the first copy on the backup", || {
        fs::metadata(&backup).is_ok_and(|m| m.len() == SIZE as u64)
            && fs::read(&backup).is_ok_and(|d| d.iter().all(|&b| b == b'A'))
    });
    s.kill9();
    r.wait_durable();
    // Changed beneath (no mount records it), then sent again by a sync.
    fs::write(&big, vec![b'B'; SIZE]).unwrap();
    let out = l.ctl(&["sync", big.to_str().unwrap()]);
    mirror_tests::succeeded(&out);
    let before = rt2_bytes(&r);
    let mut s = l.sender();
    wait_until(CONVERGE, "a part of the copy at the router", || {
        rt2_bytes(&r) >= before + (4 << 20)
    });
    s.kill9();
    r.wait_durable();
    let got = fs::read(&backup).unwrap();
    let news = got.iter().filter(|&&b| b == b'B').count();
    assert!(
        got.len() == SIZE && (news == 0 || news == SIZE),
        "the backup file is a patchwork: {news} new bytes of {} after the copy was cut off",
        got.len()
    );
    // Sent again, the copy completes.
    let _s = l.sender();
    wait_until(CONVERGE, "the new version on the backup", || {
        fs::read(&backup).is_ok_and(|d| d.len() == SIZE && d.iter().all(|&b| b == b'B'))
    });
    assert_log_only("mirror-sendd", &l.error_log(), &[]);
    // The killed sender's sessions.
    assert_log_only("the router", &r.error_log(), &["connection: "]);
}

/// An adversarial finding of issue 13: after `rule rm` of the last rule naming a blocked
/// site, `status` showed the site BLOCKED for ever and `mirror-ctl unblock` did nothing (no
/// link ran for it any more). Now, once no rule has named it for a few seconds, the site is
/// retired: no longer blocked, gone from `status`, its dirty set removed.
#[test]
fn rule_rm_of_a_blocked_sites_last_rule_retires_the_site() {
    let (_r, l, m, _s, site) = blocked_with_a_small_queue("f");
    let shown = |l: &Local| {
        l.status()
            .as_array()
            .and_then(|rows| rows.iter().find(|x| x["site"] == site.as_str()).cloned())
    };
    let dirty = l.state.join("dirty");
    wait_until(CONVERGE, "the backlog to become a dirty set", || {
        fs::write(l.path("a/g"), b"more").unwrap();
        fs::read_dir(&dirty).is_ok_and(|d| d.count() > 0)
    });
    let out = l.ctl(&["rule", "rm", "1"]);
    mirror_tests::succeeded(&out);
    wait_until(CONVERGE, "the site gone from the status", || {
        shown(&l).is_none()
    });
    assert!(
        fs::read_dir(&dirty).is_ok_and(|d| d.count() == 0),
        "the retired site's dirty set is removed"
    );
    let out = l.ctl(&["unblock"]);
    assert!(!out.status.success(), "nothing is blocked any more");
    drop(m);
}

/// An adversarial finding of issue 13: two names of one file, both changed while their site
/// was blocked past its queue limit (so both in its dirty set), became two separate files on
/// the backup: each name was sent by a copy job of its own, and only a job knew the names it
/// had sent. Now the jobs that send a dirty set share what they sent, and the second name
/// goes as a link.
#[test]
fn hard_links_in_a_dirty_set_stay_links_in_the_backup() {
    use std::os::unix::fs::MetadataExt;
    let (mut r, l, m, _s, _site) = blocked_with_a_small_queue("before");
    fs::write(l.path("a/one"), b"one file, two names").unwrap();
    fs::hard_link(l.path("a/one"), l.path("a/two")).unwrap();
    let dirty = l.state.join("dirty");
    wait_until(CONVERGE, "the backlog to become a dirty set", || {
        fs::read_dir(&dirty).is_ok_and(|d| d.count() > 0)
    });
    r.restart();
    wait_converged(&l.path("a"), &r.path("a"), CONVERGE);
    let (one, two) = (
        fs::metadata(r.path("a/one")).unwrap(),
        fs::metadata(r.path("a/two")).unwrap(),
    );
    assert_eq!(one.ino(), two.ino(), "two names of one file on the backup");
    drop(m);
}

/// An adversarial finding of issue 13 (silent loss): a file moved into a rule from a name no
/// rule selects, over a file the backup has (`mv proj/tmp proj/src/t`, the rule on `src/`),
/// sometimes vanished from the backup for good while every status said all was well. The
/// rename is journaled as a copy before the kernel shows its result (it updates its names
/// once mirrorfs answered), so mirror-sendd, quick to read the copy, found through the mount
/// the file the rename replaced, could not open it, and sent the name's deletion. Now a name
/// that looks gone is deleted only if mirrorfs says it is gone too; otherwise the copy is
/// made again a moment later. mirrorfs's fault injection holds each rename's answer back for
/// 300 ms, which makes the moment long enough to hit every time (before the fix the backup
/// file was gone after each move).
#[test]
fn a_file_moved_into_a_rule_over_a_backed_up_file_replaces_it() {
    let r = Router::start();
    let l = Local::new();
    fs::create_dir_all(l.path("src")).unwrap();
    l.add_rule_validated(
        &format!("{}/src/", l.dir.display()),
        &r.site(),
        "srconly",
        &[],
    );
    let m = l.mount_env(&[], &[("MIRRORFS_TEST_RENAME_REPLY_DELAY_MS", "300")]);
    let _s = l.sender();
    let backup = r.path("srconly/t");
    fs::write(l.path("src/t"), b"version 0").unwrap();
    wait_until(CONVERGE, "the first version on the backup", || {
        fs::read(&backup).is_ok_and(|d| d == b"version 0")
    });
    for i in 1..=3 {
        let data = format!("version {i}: {}", "x".repeat(100_000 * i));
        fs::write(l.path("tmp"), &data).unwrap();
        // The backup is read through the mount's stale view once, as the sender will.
        let _ = fs::metadata(l.path("src/t"));
        fs::rename(l.path("tmp"), l.path("src/t")).unwrap();
        wait_until(CONVERGE, "the moved file on the backup", || {
            fs::read(&backup).is_ok_and(|d| d == data.as_bytes())
        });
    }
    drop(m);
    assert_log_only("mirror-sendd", &l.error_log(), &[]);
    assert_log_only("the router", &r.error_log(), &[]);
}

/// An adversarial finding of issue 13: with `--attrs`, every copy (a rule's first copy, a
/// `sync`) dropped set-id bits (the router set the owner after the mode, and a change of
/// owner clears them) and extended attributes (mirror-sendd read them through a directory
/// descriptor it had already closed), and a `sync` stripped them from a backup file that had
/// them from live changes.
#[test]
fn with_attrs_copies_keep_set_id_bits_and_extended_attributes() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let r = Router::start();
    let l = Local::new();
    let (x, f) = (l.path("x.sh"), l.path("f"));
    fs::write(&x, b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(&x, fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(&f, b"data").unwrap();
    if !set_xattr(&f, "user.k", b"v") {
        return; // no user xattrs on this file system
    }
    l.add_rule_validated(
        &format!("{}/", l.dir.display()),
        &r.site(),
        "proj",
        &["--attrs"],
    );
    let s = l.sender();
    let (bx, bf) = (r.path("proj/x.sh"), r.path("proj/f"));
    let kept = || {
        fs::metadata(&bx).is_ok_and(|m| m.mode() & 0o7777 == 0o4755)
            && crate::restore::xattr(&bf, "user.k").as_deref() == Some(&b"v"[..])
    };
    wait_until(
        CONVERGE,
        "the set-id bit and the attribute on the backup",
        kept,
    );
    // A sync copies both files again: they keep both.
    let out = l.ctl(&["sync", "--wait", l.dir.to_str().unwrap()]);
    mirror_tests::succeeded(&out);
    assert!(kept(), "a sync stripped them");
    drop(s);
}

fn set_xattr(p: &std::path::Path, name: &str, value: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: NUL-terminated strings and a value of its length.
    unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        ) == 0
    }
}

/// An adversarial finding of issue 13 (after copies were built aside): a copy of a file that
/// the backup disk had no room for twice blocked the file for good (ENOSPC on its staging
/// file; `router unblock` failed again). Now, out of room, the copy goes on in place, and
/// the router's error log says so.
#[test]
fn a_copy_with_no_room_beside_the_backup_file_is_written_in_place() {
    const SIZE: usize = 5 << 20;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let _small = crate::outage_faults::SmallFs::new(&root, "8m");
    let r = Router::start_with(Some(&root));
    let l = Local::new();
    let big = l.path("big.bin");
    fs::write(&big, vec![b'A'; SIZE]).unwrap();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "proj", &[]);
    let _s = l.sender();
    let backup = r.path("proj/big.bin");
    let holds =
        |b: u8| fs::read(&backup).is_ok_and(|d| d.len() == SIZE && d.iter().all(|&x| x == b));
    wait_until(CONVERGE, "the first copy on the backup", || holds(b'A'));
    fs::write(&big, vec![b'B'; SIZE]).unwrap();
    let out = l.ctl(&["sync", big.to_str().unwrap()]);
    mirror_tests::succeeded(&out);
    wait_until(CONVERGE, "the new version on the backup", || holds(b'B'));
    assert!(
        fs::read_dir(root.join(".mirror-staging")).is_ok_and(|d| d.count() == 0),
        "the staging file is gone"
    );
    assert_log_only(
        "the router",
        &r.error_log(),
        &["no room on the backup disk"],
    );
}

/// Waits, writing to `probe` meanwhile, until `status` shows `site` (whose router is down)
/// blocked.
/// A rule on `a/` sending to a router with a queue limit of one byte: file `a/NAME` sent and
/// acknowledged, then the router killed and the site blocked (NAME changed meanwhile).
fn blocked_with_a_small_queue(
    name: &str,
) -> (
    Router,
    Local,
    mirror_tests::Mount,
    mirror_tests::Daemon,
    String,
) {
    let mut r = Router::start();
    let l = Local::new();
    fs::create_dir_all(l.path("a")).unwrap();
    l.add_rule_validated(&format!("{}/a/", l.dir.display()), &r.site(), "a", &[]);
    let m = l.mount(&[]);
    let s = l.sender_with(&["--queue-limit", "1"]);
    let probe = l.path("a").join(name);
    fs::write(&probe, b"sent").unwrap();
    wait_converged(&l.path("a"), &r.path("a"), CONVERGE);
    let site = r.site();
    r.kill9();
    block_site(&l, &site, &probe);
    (r, l, m, s, site)
}

fn block_site(l: &Local, site: &str, probe: &std::path::Path) {
    wait_until(CONVERGE, "the site to be blocked", || {
        fs::write(probe, b"changed while the site is down").unwrap();
        !row(l, site)["blocked"].is_null()
    });
}
