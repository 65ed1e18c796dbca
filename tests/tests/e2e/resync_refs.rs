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
    let out = l.ctl(&["sync", l.path(name).to_str().unwrap()]);
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

    // Two blocks of the backup changed on the backup host: those two go as data.
    let b = fs::OpenOptions::new()
        .write(true)
        .open(r.path("proj/big.bin"))
        .unwrap();
    b.write_all_at(b"stale", 4096 * 3 + 10).unwrap();
    b.write_all_at(b"stale", 5 * MIB).unwrap();
    drop(b);
    let before = after;
    sync_and_wait(&l, &r, "big.bin", before, big.len() as u64 - 2 * 4096);
    let after = sent(&l, &site);
    assert_eq!(
        after.0 - before.0,
        2 * 4096,
        "only the two stale blocks go as data"
    );
    assert_eq!(fs::read(r.path("proj/big.bin")).unwrap(), big);

    // The source grew and changed at its end: the new blocks go as data.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(l.path("big.bin"))
        .unwrap();
    f.write_all_at(&data(MIB, 9), 8 * MIB).unwrap();
    drop(f);
    wait_converged(&l.dir, &r.path("proj"), CONVERGE);

    // The backup file gone: the copy sends it whole.
    fs::remove_file(r.path("proj/big.bin")).unwrap();
    let before = sent(&l, &site);
    let out = l.ctl(&["sync", l.path("big.bin").to_str().unwrap()]);
    mirror_tests::succeeded(&out);
    wait_converged(&l.dir, &r.path("proj"), CONVERGE);
    let after = sent(&l, &site);
    let len = fs::metadata(l.path("big.bin")).unwrap().len();
    assert!(after.0 - before.0 >= len, "sent whole");
    assert_eq!(after.1, before.1, "nothing to refer to");
    drop(m);
    assert_log_only("router", &r.error_log(), &[]);
}
