//! Copies that never resend what the backup holds (issue 16 items 1-2): a large file's copy
//! compares block checksums with the router first, sends the blocks that are the same as
//! references to the backup's own data and only the others as data. Bytes on the wire are
//! asserted from the counters mirror-sendd shows (`sent_bytes`, `referenced_bytes`), never
//! from timing.

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use mirror_tests::{assert_log_only, wait_converged, wait_until, Local, Router};

const CONVERGE: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

/// The site's counters: (data bytes sent, bytes sent as references).
fn sent(l: &Local, site: &str) -> (u64, u64) {
    let st = l.status();
    let row = st
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["site"] == site).cloned())
        .unwrap_or_else(|| panic!("no status row for {site}: {st}"));
    (
        row["sent_bytes"].as_u64().expect("sent_bytes"),
        row["referenced_bytes"].as_u64().expect("referenced_bytes"),
    )
}

fn data(len: u64, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// Bytes the router resolved from references since it started.
fn saved(r: &Router) -> u64 {
    let st = r.status();
    st["stats"]["bytes_saved"]
        .as_u64()
        .unwrap_or_else(|| panic!("no stats in the router status: {st}"))
}

/// `mirror-ctl sync` of a file and a wait until `referenced` more bytes went as references
/// than `before` and the router resolved them, the backup equal to the source.
fn sync_and_wait(l: &Local, r: &Router, name: &str, before: (u64, u64), referenced: u64) {
    let saved_before = saved(r);
    // (--checksum: the backup may have changed behind the router's back.)
    let out = l.ctl(&["sync", "--checksum", l.path(name).to_str().unwrap()]);
    mirror_tests::succeeded(&out);
    wait_until(CONVERGE, "the copy sent and applied", || {
        let now = sent(l, &r.site());
        now.1 >= before.1 + referenced
            && saved(r) >= saved_before + referenced
            && fs::read(r.path(&format!("proj/{name}"))).ok() == fs::read(l.path(name)).ok()
    });
}

/// A file written through the mount earlier: `sync` sends it as references only; a backup
/// changed behind the router's back (two blocks) gets those two blocks as data; a backup
/// that is gone gets the whole file; a file shorter than a block difference threshold is
/// sent whole.
#[test]
fn a_sync_sends_only_what_the_backup_lacks() {
    let r = Router::start();
    let l = Local::new();
    // A file that reaches the backup by the rule's first copy.
    let seed = data(4 * MIB, 11);
    fs::write(l.path("seed.bin"), &seed).unwrap();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "proj", &[]);
    let m = l.mount(&[]);
    let _s = l.sender();
    let big = data(8 * MIB + 1234, 7);
    fs::write(l.path("big.bin"), &big).unwrap();
    wait_converged(&l.dir, &r.path("proj"), CONVERGE);
    let site = r.site();

    // Unchanged: nothing but references.
    let before = sent(&l, &site);
    sync_and_wait(&l, &r, "big.bin", before, big.len() as u64);
    let after = sent(&l, &site);
    assert!(
        after.0 - before.0 < 64 << 10,
        "an unchanged file sent {} data bytes",
        after.0 - before.0
    );
    assert_eq!(after.1 - before.1, big.len() as u64);

    // Two blocks of the backup changed on the backup host: the writes that carried them are
    // still in the router logs, so even those go as references.
    let stale = |name: &str| {
        let b = fs::OpenOptions::new()
            .write(true)
            .open(r.path(&format!("proj/{name}")))
            .unwrap();
        b.write_all_at(b"stale", 4096 * 3 + 10).unwrap();
        b.write_all_at(b"stale", 3 * MIB).unwrap();
    };
    stale("big.bin");
    let before = after;
    sync_and_wait(&l, &r, "big.bin", before, big.len() as u64);
    let after = sent(&l, &site);
    assert_eq!(after.0 - before.0, 0, "references only");
    assert_eq!(fs::read(r.path("proj/big.bin")).unwrap(), big);

    // The source grew and changed at its end: the new blocks go as data.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(l.path("big.bin"))
        .unwrap();
    f.write_all_at(&data(MIB, 9), 8 * MIB).unwrap();
    drop(f);
    wait_converged(&l.dir, &r.path("proj"), CONVERGE);

    // The backup file gone: what the router logs hold of it goes as references, the rest
    // as data.
    fs::remove_file(r.path("proj/big.bin")).unwrap();
    let before = sent(&l, &site);
    let out = l.ctl(&["sync", l.path("big.bin").to_str().unwrap()]);
    mirror_tests::succeeded(&out);
    wait_converged(&l.dir, &r.path("proj"), CONVERGE);
    let after = sent(&l, &site);
    let len = fs::metadata(l.path("big.bin")).unwrap().len();
    assert!(
        (after.0 - before.0) + (after.1 - before.1) >= len,
        "every byte went, as data or reference"
    );
    assert!(
        after.1 - before.1 >= 8 * MIB,
        "the writes' blocks went as references"
    );
    // Last (the mount's cache of the file does not see this): two blocks of the file the
    // first copy sent changed where no entry saw it (in the directory beneath the mount):
    // those two go as data, the rest as references.
    let under = {
        use std::os::unix::ffi::OsStrExt;
        mirrorfs::keeper::MountStatus::load(&l.state)
            .and_then(|st| st.beneath_path(l.path("seed.bin").as_os_str().as_bytes()))
            .expect("the directory beneath the mount")
    };
    let mut seed = seed;
    let f = fs::OpenOptions::new().write(true).open(&under).unwrap();
    for at in [4096 * 3, 3 * MIB] {
        f.write_all_at(&[0x77; 4096], at).unwrap();
        seed[at as usize..at as usize + 4096].fill(0x77);
    }
    drop(f);
    let before = sent(&l, &site);
    let saved_before = saved(&r);
    mirror_tests::succeeded(&l.ctl(&["sync", "--checksum", l.path("seed.bin").to_str().unwrap()]));
    wait_until(CONVERGE, "the changed blocks on the backup", || {
        fs::read(r.path("proj/seed.bin")).ok().as_deref() == Some(&seed[..])
            && saved(&r) >= saved_before + seed.len() as u64 - 2 * 4096
    });
    let after = sent(&l, &site);
    assert_eq!(
        after.0 - before.0,
        2 * 4096,
        "only the two changed blocks go as data"
    );

    drop(m);
    assert_log_only("router", &r.error_log(), &[]);
}

/// Two rules of one site over `a/` and `b/` of the project.
fn two_rules(l: &Local, r: &Router) {
    for d in ["a", "b"] {
        fs::create_dir_all(l.path(d)).unwrap();
        l.add_rule_validated(&format!("{}/{d}/", l.dir.display()), &r.site(), d, &[]);
    }
}

/// A file renamed from one rule into another (journaled as its deletion under the first and
/// a copy under the second): the copy finds what the writes of the old name carried in the
/// router logs and sends references to them, not the data.
#[test]
fn a_rename_into_another_rule_sends_references_to_what_was_shipped() {
    let r = Router::start();
    let l = Local::new();
    two_rules(&l, &r);
    let m = l.mount(&[]);
    let _s = l.sender();
    let big = data(8 * MIB, 3);
    fs::write(l.path("a/f.bin"), &big).unwrap();
    wait_until(CONVERGE, "a/f.bin on the backup", || {
        fs::read(r.path("a/f.bin")).ok().as_deref() == Some(&big[..])
    });
    let site = r.site();
    let before = sent(&l, &site);
    let saved_before = saved(&r);
    fs::rename(l.path("a/f.bin"), l.path("b/f.bin")).unwrap();
    wait_until(CONVERGE, "b/f.bin on the backup, a/f.bin gone", || {
        fs::read(r.path("b/f.bin")).ok().as_deref() == Some(&big[..]) && !r.path("a/f.bin").exists()
    });
    let after = sent(&l, &site);
    assert!(
        after.0 - before.0 < big.len() as u64 / 100,
        "the rename sent {} data bytes of {}",
        after.0 - before.0,
        big.len()
    );
    assert!(after.1 - before.1 >= big.len() as u64 * 99 / 100);
    assert!(saved(&r) - saved_before >= big.len() as u64 * 99 / 100);
    drop(m);
    assert_log_only("router", &r.error_log(), &[]);
}

/// A file two rules send to the same site: its data crosses the wire once; the second
/// rule's writes go as references to the first's.
#[test]
fn a_file_two_rules_send_to_one_site_crosses_the_wire_once() {
    let r = Router::start();
    let l = Local::new();
    fs::create_dir_all(l.path("sub")).unwrap();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "all", &[]);
    l.add_rule_validated(&format!("{}/sub/", l.dir.display()), &r.site(), "sub", &[]);
    let m = l.mount(&[]);
    let _s = l.sender();
    wait_converged(&l.dir, &r.path("all"), CONVERGE);
    let site = r.site();
    let before = sent(&l, &site);
    let big = data(4 * MIB, 5);
    fs::write(l.path("sub/f.bin"), &big).unwrap();
    wait_until(CONVERGE, "both backups of sub/f.bin", || {
        fs::read(r.path("all/sub/f.bin")).ok().as_deref() == Some(&big[..])
            && fs::read(r.path("sub/f.bin")).ok().as_deref() == Some(&big[..])
    });
    let after = sent(&l, &site);
    let len = big.len() as u64;
    assert!(
        after.0 - before.0 < len + len / 10,
        "{} data bytes sent for {len} bytes written under two rules",
        after.0 - before.0
    );
    assert!(after.1 - before.1 >= len * 9 / 10, "{after:?} {before:?}");
    drop(m);
    assert_log_only("router", &r.error_log(), &[]);
}

/// References to writes the router no longer holds (`--retain 0`, small router logs that
/// rotate and go as soon as they are applied): the copy falls back to data, whether the
/// sender knew they were gone or the router found out, and the backup converges.
#[test]
fn references_to_what_the_router_gave_up_fall_back_to_data() {
    let r = Router::start_args(None, &["--retain", "0", "--rt-size-mib", "1"]);
    let l = Local::new();
    two_rules(&l, &r);
    let m = l.mount(&[]);
    let _s = l.sender();
    let big = data(6 * MIB, 13);
    fs::write(l.path("a/f.bin"), &big).unwrap();
    // More writes after it, so that the pairs holding it rotate away.
    fs::write(l.path("a/g.bin"), data(3 * MIB, 17)).unwrap();
    wait_until(CONVERGE, "a/ on the backup", || {
        fs::read(r.path("a/f.bin")).ok().as_deref() == Some(&big[..])
            && fs::read(r.path("a/g.bin")).ok().map(|d| d.len()) == Some(3 << 20)
    });
    let before = sent(&l, &r.site());
    fs::rename(l.path("a/f.bin"), l.path("b/f.bin")).unwrap();
    wait_until(CONVERGE, "b/f.bin on the backup", || {
        fs::read(r.path("b/f.bin")).ok().as_deref() == Some(&big[..])
    });
    let after = sent(&l, &r.site());
    assert!(
        after.0 - before.0 >= big.len() as u64 * 9 / 10,
        "the data went again: {before:?} -> {after:?}"
    );
    drop(m);
    // A reference the router could not resolve is a warning, and the file was asked for.
    let log = r.error_log();
    assert_log_only(
        "router",
        &log,
        &[
            "refers to",
            "no longer holds what the source's copy refers to",
        ],
    );
}

/// `sync --wait` of `path`.
fn sync_wait(l: &Local, path: &std::path::Path, extra: &[&str]) {
    let mut args = vec!["sync", "--wait", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    mirror_tests::succeeded(&l.ctl(&args));
}

/// A `sync` of a tree unchanged since it was shipped sends nothing: each file whose size,
/// modification and change times are what its last acknowledged copy read is skipped
/// without being read. A changed file is sent (its entries changed its change time); a
/// backup file changed behind the router's back is not seen by that quick check, and
/// `--checksum` compares every file again.
#[test]
fn a_sync_of_an_unchanged_tree_sends_nothing() {
    let r = Router::start();
    let l = Local::new();
    let mut total = 0u64;
    for i in 0..40u32 {
        let d = data(1000 + u64::from(i) * 97, i);
        total += d.len() as u64;
        fs::create_dir_all(l.path(&format!("d{}", i % 4))).unwrap();
        fs::write(l.path(&format!("d{}/f{i}", i % 4)), d).unwrap();
    }
    fs::write(l.path("big.bin"), data(2 * MIB, 1)).unwrap();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "proj", &[]);
    let m = l.mount(&[]);
    let _s = l.sender();
    wait_converged(&l.dir, &r.path("proj"), CONVERGE);
    let site = r.site();
    // Files changed within the second before a copy read them are not recorded (their times
    // are coarse): the first syncs may send them again, until a copy finds them settled.
    wait_until(CONVERGE, "a sync that finds the tree recorded", || {
        let before = sent(&l, &site);
        sync_wait(&l, &l.dir, &[]);
        sent(&l, &site) == before
    });
    let before = sent(&l, &site);
    sync_wait(&l, &l.dir, &[]);
    let after = sent(&l, &site);
    assert_eq!(after, before, "nothing sent for an unchanged tree");
    // One file changed: only it goes.
    fs::write(l.path("d1/f1"), b"changed").unwrap();
    wait_converged(&l.dir, &r.path("proj"), CONVERGE);
    let before = sent(&l, &site);
    sync_wait(&l, &l.dir, &[]);
    let after = sent(&l, &site);
    assert_eq!(after.0 - before.0, 7, "only the changed file goes");
    // A backup file changed on the backup host is not seen by the quick check; --checksum
    // compares the content and brings it back.
    fs::write(r.path("proj/d2/f2"), b"edited on the backup host").unwrap();
    sync_wait(&l, &l.dir, &[]);
    assert_eq!(
        fs::read(r.path("proj/d2/f2")).unwrap(),
        b"edited on the backup host"
    );
    let before = sent(&l, &site);
    sync_wait(&l, &l.dir, &["--checksum"]);
    wait_converged(&l.dir, &r.path("proj"), CONVERGE);
    let after = sent(&l, &site);
    assert!(
        after.0 - before.0 >= total - 1097,
        "small files are sent whole when compared: {before:?} -> {after:?}"
    );
    assert!(after.1 - before.1 >= 2 * MIB, "the large one by reference");
    drop(m);
    assert_log_only("router", &r.error_log(), &[]);
}

/// kill -9 of the router, then of mirror-sendd, in the middle of reference-heavy copies
/// (files renamed from one rule into another, each sent as references to what the router
/// logs hold, and stale backups compared block by block): everything converges byte for byte.
#[test]
fn kill9_of_either_daemon_during_reference_heavy_copies_converges() {
    let mut r = Router::start();
    let l = Local::new();
    two_rules(&l, &r);
    let m = l.mount(&[]);
    let mut s = l.sender();
    let files: Vec<Vec<u8>> = (0..12u32)
        .map(|i| data(MIB + u64::from(i) * 4096, 20 + i))
        .collect();
    for (i, d) in files.iter().enumerate() {
        fs::write(l.path(&format!("a/f{i}")), d).unwrap();
    }
    wait_converged(&l.path("a"), &r.path("a"), CONVERGE);
    // Round one: the router dies while the renames' copies flow.
    for i in 0..6 {
        fs::rename(l.path(&format!("a/f{i}")), l.path(&format!("b/f{i}"))).unwrap();
    }
    wait_until(CONVERGE, "references on the way", || {
        sent(&l, &r.site()).1 > 0
    });
    r.kill9();
    r.restart();
    // Round two: mirror-sendd dies while the next ones flow.
    for i in 6..12 {
        fs::rename(l.path(&format!("a/f{i}")), l.path(&format!("b/f{i}"))).unwrap();
    }
    let refs = sent(&l, &r.site()).1;
    wait_until(CONVERGE, "more references on the way", || {
        sent(&l, &r.site()).1 > refs
    });
    s.kill9();
    let _s = l.sender();
    wait_converged(&l.path("a"), &r.path("a"), CONVERGE);
    wait_converged(&l.path("b"), &r.path("b"), CONVERGE);
    for (i, d) in files.iter().enumerate() {
        assert_eq!(&fs::read(r.path(&format!("b/f{i}"))).unwrap(), d, "b/f{i}");
    }
    drop(m);
    assert_log_only(
        "router",
        &r.error_log(),
        &[
            "refers to",
            "no longer holds what the source's copy refers to",
            // The killed sender's sessions, the killed router's torn tail.
            "session with 127.0.0.1:",
            "closed its session",
            "torn tail",
        ],
    );
}

/// A site blocked past its queue limit keeps a dirty set; when it is back, the dirty files'
/// copies compare checksums first: of a large file changed in two blocks while the router was
/// down, those two go as data and the rest as references to what the backup holds.
#[test]
fn a_dirty_set_resync_sends_only_what_changed() {
    let mut r = Router::start();
    let site = r.site();
    let l = Local::new();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &site, "proj", &[]);
    let m = l.mount(&[]);
    let _s = l.sender_with(&["--queue-limit", "64K"]);
    let mut big = data(4 * MIB, 31);
    fs::write(l.path("big.bin"), &big).unwrap();
    wait_converged(&l.dir, &r.path("proj"), CONVERGE);
    r.kill9();
    let row = |l: &Local| {
        l.status()
            .as_array()
            .and_then(|rows| rows.iter().find(|x| x["site"] == site.as_str()).cloned())
            .unwrap_or_default()
    };
    wait_until(CONVERGE, "the site blocked", || {
        !row(&l)["blocked"].is_null()
    });
    // Two blocks of the large file change, and more than the queue limit of other changes.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(l.path("big.bin"))
        .unwrap();
    for at in [5 * 4096u64, 700 * 4096] {
        f.write_all_at(&[0xee; 4096], at).unwrap();
        big[at as usize..at as usize + 4096].fill(0xee);
    }
    f.sync_all().unwrap();
    drop(f);
    fs::write(l.path("other.bin"), data(200 << 10, 32)).unwrap();
    wait_until(CONVERGE, "the backlog to become a dirty set", || {
        let st = row(&l);
        st["blocked"]["dirty"] == true && st["dirty_files"].as_u64().unwrap_or(0) >= 2
    });
    let before = sent(&l, &site);
    r.restart();
    wait_converged(&l.dir, &r.path("proj"), CONVERGE);
    assert_eq!(fs::read(r.path("proj/big.bin")).unwrap(), big);
    let after = sent(&l, &site);
    // The two blocks, and the small file (sent whole by the dirty set, its writes made after
    // the switch to a dirty set, and again if the router asks for what it had not made
    // durable when it was killed): never the large file's 4 MiB.
    assert!(
        after.0 - before.0 <= 2 * 4096 + 3 * (200 << 10),
        "the dirty set sent {} data bytes",
        after.0 - before.0
    );
    assert!(
        after.1 - before.1 >= 4 * MIB - 2 * 4096,
        "{before:?} -> {after:?}"
    );
    drop(m);
}

/// An adversarial finding: a copy by differences of a sparse file (`sync --checksum`) wrote
/// its holes out as data on the backup (the references to the backup's own zeros were copied
/// as zeros). Holes stay holes.
#[test]
fn a_sparse_file_compared_by_checksums_stays_sparse_on_the_backup() {
    use std::os::unix::fs::MetadataExt;
    let r = Router::start();
    let l = Local::new();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "proj", &[]);
    let m = l.mount(&[]);
    let _s = l.sender();
    let f = fs::File::create(l.path("sparse")).unwrap();
    f.set_len(64 * MIB).unwrap();
    f.write_all_at(&data(8192, 3), 20 * MIB).unwrap();
    f.sync_all().unwrap();
    drop(f);
    wait_converged(&l.dir, &r.path("proj"), CONVERGE);
    let used = |p: &std::path::Path| fs::metadata(p).unwrap().blocks() * 512;
    assert!(
        used(&r.path("proj/sparse")) < MIB,
        "sparse after its writes"
    );
    // A stale block, so that the comparison has something to send.
    let b = fs::OpenOptions::new()
        .write(true)
        .open(r.path("proj/sparse"))
        .unwrap();
    b.write_all_at(b"stale", 20 * MIB).unwrap();
    drop(b);
    let before = sent(&l, &r.site());
    mirror_tests::succeeded(&l.ctl(&[
        "sync",
        "--checksum",
        "--wait",
        l.path("sparse").to_str().unwrap(),
    ]));
    wait_until(CONVERGE, "the stale block repaired", || {
        fs::read(r.path("proj/sparse")).ok() == fs::read(l.path("sparse")).ok()
    });
    assert!(sent(&l, &r.site()).1 > before.1, "compared by checksums");
    assert!(
        used(&r.path("proj/sparse")) < MIB,
        "the backup's holes were written out: {} bytes used",
        used(&r.path("proj/sparse"))
    );
    drop(m);
}

/// A file that reached the backup by a copy (the rule's first copy: no write of it went
/// through the mount), renamed into another rule: the copy's own write parts are transfers
/// the router logs hold, so the rename sends references, not the data again. (The adversarial
/// pass found 32 MiB sent again per rename before.)
#[test]
fn a_file_that_arrived_by_a_copy_renamed_into_another_rule_sends_references() {
    let r = Router::start();
    let l = Local::new();
    fs::create_dir_all(l.path("a")).unwrap();
    fs::create_dir_all(l.path("b")).unwrap();
    let big = data(6 * MIB, 41);
    fs::write(l.path("a/f.bin"), &big).unwrap();
    for d in ["a", "b"] {
        l.add_rule_validated(&format!("{}/{d}/", l.dir.display()), &r.site(), d, &[]);
    }
    let m = l.mount(&[]);
    let _s = l.sender();
    wait_until(CONVERGE, "the first copy of a/f.bin", || {
        fs::read(r.path("a/f.bin")).ok().as_deref() == Some(&big[..])
    });
    // Its acknowledgement recorded (the index is written once the router stored it).
    wait_until(CONVERGE, "the first copy acknowledged", || {
        l.status().as_array().is_some_and(|rows| {
            rows.iter()
                .all(|x| x["initial_copies"] == serde_json::json!([]))
        })
    });
    let before = sent(&l, &r.site());
    fs::rename(l.path("a/f.bin"), l.path("b/f.bin")).unwrap();
    wait_until(CONVERGE, "b/f.bin on the backup", || {
        fs::read(r.path("b/f.bin")).ok().as_deref() == Some(&big[..])
    });
    let after = sent(&l, &r.site());
    assert!(
        after.0 - before.0 < big.len() as u64 / 100,
        "the rename sent {} data bytes of {}",
        after.0 - before.0,
        big.len()
    );
    assert!(after.1 - before.1 >= big.len() as u64 * 99 / 100);
    drop(m);
    assert_log_only("router", &r.error_log(), &[]);
}
