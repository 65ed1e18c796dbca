//! Buffered writes (issue 14): with the kernel's writeback cache (the default) a write of a
//! selected file lands in the page cache and reaches mirrorfs, and its journal, as the kernel
//! writes it back. These tests hold the guarantees that must survive that: a durability point
//! (fsync) finds its data journaled, a writer that never fsyncs still reaches the journal
//! soon (the flusher, not the kernel's 30 s), what the kernel writes back when the journal is
//! full is kept in the file and sent whole later, and an `O_DIRECT` writer's writes are
//! journaled before they return.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use mirror_tests::{assert_log_only, wait_converged, wait_until, Local, Router};
use mirrorfs::entry::Command;

use crate::journal_full::{local_on_small_state, mount_status, FULL_JOURNAL_LOG};

const CONVERGE: Duration = Duration::from_secs(120);

fn subtree(l: &Local) {
    l.add_rule(&format!("{}/", l.dir.display()), "127.0.0.1:9", "d", &[]);
}

/// Whether the journal holds a write of `name` whose data contains `needle`.
fn journaled(l: &Local, name: &str, needle: &[u8]) -> bool {
    l.journal().iter().any(|e| {
        e.command == Command::Write
            && mirror_tests::rel(&l.dir, &e.name) == name
            && e.data.windows(needle.len()).any(|w| w == needle)
    })
}

/// fsync returns only once what the kernel had buffered is in the journal.
#[test]
fn an_fsync_finds_the_buffered_writes_journaled() {
    let l = Local::new();
    subtree(&l);
    let m = l.mount(&[]);
    let mut f = fs::File::create(l.path("db")).unwrap();
    f.write_all(b"committed record").unwrap();
    f.sync_data().unwrap();
    // No wait: the durability point has passed.
    assert!(
        journaled(&l, "db", b"committed record"),
        "{:?}",
        l.journal()
    );
    drop(f);
    m.unmount();
}

/// A writer that keeps its file open and never fsyncs (a log file): the kernel alone would
/// hold its pages for `vm.dirty_expire_centisecs` (30 s); the flusher has them written back
/// within a second, while the file stays open.
#[test]
fn a_writer_that_never_fsyncs_reaches_the_journal_while_its_file_is_open() {
    let expire: u64 = fs::read_to_string("/proc/sys/vm/dirty_expire_centisecs")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(3000);
    assert!(
        expire >= 2000,
        "this test needs the kernel's own writeback delay (dirty_expire_centisecs {expire}) well above its wait"
    );
    let l = Local::new();
    subtree(&l);
    let m = l.mount(&[]);
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(l.path("app.log"))
        .unwrap();
    f.write_all(b"first line\n").unwrap();
    wait_until(Duration::from_secs(10), "the line in the journal", || {
        journaled(&l, "app.log", b"first line")
    });
    f.write_all(b"second line\n").unwrap();
    wait_until(
        Duration::from_secs(10),
        "the next line in the journal",
        || journaled(&l, "app.log", b"second line"),
    );
    drop(f);
    m.unmount();
}

/// An `O_DIRECT` writer bypasses the page cache: each write reaches mirrorfs, and the
/// journal, before it returns.
#[test]
fn an_o_direct_write_is_journaled_when_it_returns() {
    let l = Local::new();
    subtree(&l);
    let m = l.mount(&[]);
    let f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(l.path("direct"))
        .unwrap();
    let mut buf = vec![0u8; 8192];
    // An aligned buffer for O_DIRECT.
    let off = buf.as_ptr().align_offset(4096);
    let block = &mut buf[off..off + 4096];
    block.fill(b'D');
    block[..6].copy_from_slice(b"direct");
    use std::os::unix::fs::FileExt;
    f.write_all_at(block, 0).unwrap();
    assert!(journaled(&l, "direct", b"directDDDD"), "{:?}", l.journal());
    drop(f);
    m.unmount();
}

/// The kernel writes back buffered pages when the journal has no room left: the writer was
/// told of its writes already, so the file gets them, the file is marked to be sent whole,
/// status says the journal is full, and once the site is back the backup equals the file.
#[test]
fn buffered_writes_on_a_full_journal_reach_the_file_and_are_sent_whole_later() {
    let mut r = Router::start();
    let site = r.site();
    r.kill9();
    let (l, _small) = local_on_small_state("24M");
    l.add_rule(&format!("{}/", l.dir.display()), &site, "w", &[]);
    let m = l.mount(&[]);
    // More than the journal's disk holds; no sender yet, so nothing is acknowledged.
    let chunk = vec![0x5au8; 256 << 10];
    let total = 40u64 << 20;
    let mut f = fs::File::create(l.path("big")).unwrap();
    for _ in 0..total / chunk.len() as u64 {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().expect("fsync: the file holds every byte");
    drop(f);
    assert_eq!(fs::metadata(l.path("big")).unwrap().len(), total);
    // Marked durably to be sent whole (the state's `unjournaled` list: rule CRC, hex name),
    // or already queued as a copy once the journal took entries again.
    let hex: String = l
        .path("big")
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let marked = fs::read_to_string(l.state.join("unjournaled")).unwrap_or_default();
    let queued = l
        .journal()
        .iter()
        .any(|e| e.command == Command::Copy && mirror_tests::rel(&l.dir, &e.name) == "big");
    assert!(
        marked.contains(&hex) || queued,
        "neither marked nor queued: {marked}"
    );
    // Status says so (the trouble stays shown a while after the last refusal, although
    // small entries still fit).
    assert!(
        !mount_status(&l)["journal_trouble"].is_null(),
        "status does not show the journal's trouble"
    );
    assert!(l
        .error_log()
        .contains("the file is sent whole once the journal takes entries"));
    let _s = l.sender();
    r.restart();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    wait_until(CONVERGE, "status to clear the trouble", || {
        mount_status(&l)["journal_trouble"].is_null()
    });
    drop(m);
    assert_log_only("the source", &l.error_log(), FULL_JOURNAL_LOG);
}

/// The finding (adversarial pass): on a full source disk, writes the kernel had buffered
/// failed when written back, after `write` had succeeded: the file lacked data the mount still
/// showed, and the backup (copied through the mount) held a third version. With little room
/// underneath, an opening for writing now writes through mirrorfs, so `write` itself gets
/// ENOSPC and the file, the mount and the backup agree.
#[test]
fn on_a_nearly_full_source_disk_write_itself_is_refused_and_the_backup_equals_the_file() {
    let r = Router::start();
    let mut l = Local::new();
    let small = crate::outage_faults::SmallFs::new(&l.tmp.path().join("srcfs"), "8M");
    l.dir = small.path().join("proj");
    fs::create_dir_all(&l.dir).unwrap();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "w", &[]);
    let m = l.mount(&[]);
    let _s = l.sender();
    let chunk = vec![0x5au8; 1 << 20];
    let mut f = fs::File::create(l.path("big")).unwrap();
    let mut written = 0u64;
    let err = loop {
        match f.write_all(&chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(written < 64 << 20, "the disk never filled");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    drop(m);
    // What the mount showed is what the file holds underneath.
    let shown = fs::metadata(l.path("big")).unwrap().len();
    assert!(
        shown >= written,
        "the file holds less than was written: {shown} < {written}"
    );
    assert_eq!(
        fs::metadata(r.path("w/big")).unwrap().len(),
        shown,
        "the backup equals the file"
    );
}

/// The finding (adversarial pass): mounted at another mount point than its source, the
/// kernel's buffered pages of a file changed directly in the source were written back over the
/// newer data. Mounted elsewhere, mirrorfs does not let the kernel buffer writes.
#[test]
fn mounted_elsewhere_an_append_after_a_change_underneath_lands_after_it() {
    let l = Local::new();
    subtree(&l);
    let mnt = l.tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = mirror_tests::Mount::start(&l.dir, Some(&mnt), &l.state, &[]);
    fs::write(mnt.join("f"), b"v1\n").unwrap();
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"v1\n");
    fs::write(l.dir.join("f"), b"version2-longer\n").unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("f"))
        .unwrap()
        .write_all(b"APPENDED\n")
        .unwrap();
    m.unmount();
    assert_eq!(
        fs::read(l.dir.join("f")).unwrap(),
        b"version2-longer\nAPPENDED\n"
    );
}
