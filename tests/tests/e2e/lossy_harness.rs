//! The power-loss layer itself (`lossyfs`), on real mounts: what a power loss keeps (what was
//! fsync'd, file by file and directory by directory), what it drops or tears, that reads see
//! the latest state before it, that everything fails after it until a remount, and that the
//! mount goes away in Drop.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mirror_tests::lossyfs;
use mirror_tests::{LossyFs, LossyOpts};

/// A layer on a fresh backing directory; `setup` fills the backing directory first (durable).
struct Fixture {
    layer: LossyFs,
    mnt: PathBuf,
    backing: PathBuf,
    _tmp: tempfile::TempDir,
}

fn fixture(setup: impl FnOnce(&Path)) -> Fixture {
    let tmp = tempfile::Builder::new()
        .prefix("lossy-test-")
        .tempdir()
        .unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let (backing, mnt) = (root.join("backing"), root.join("mnt"));
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    setup(&backing);
    let layer = LossyFs::mount(&backing, &mnt, LossyOpts::default());
    Fixture {
        layer,
        mnt,
        backing,
        _tmp: tmp,
    }
}

impl Fixture {
    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

fn fsync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

/// Creates `path` with `data`, fsync'd (its name is not durable until its directory is).
fn write_synced(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn append(path: &Path, data: &[u8]) -> File {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(data).unwrap();
    f
}

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_file_written_and_fsynced_into_its_directory_survives_a_power_loss() {
    let mut fx = fixture(|_| {});
    fs::create_dir(fx.p("dir")).unwrap();
    fsync_dir(&fx.mnt);
    write_synced(&fx.p("dir/f.txt"), b"durable bytes\n");
    fsync_dir(&fx.p("dir"));
    let report = fx.layer.power_loss(false);
    assert_eq!(report["errors"], serde_json::json!([]));
    // The backing directory holds the durable state as soon as the power is lost.
    assert_eq!(
        fs::read(fx.backing.join("dir/f.txt")).unwrap(),
        b"durable bytes\n"
    );
    fx.layer.remount();
    assert_eq!(fs::read(fx.p("dir/f.txt")).unwrap(), b"durable bytes\n");
    assert_eq!(fx.layer.status()["dead"], false);
}

#[test]
fn what_was_not_fsynced_is_lost() {
    let mut fx = fixture(|b| {
        fs::write(b.join("old.txt"), b"old content\n").unwrap();
        fs::write(b.join("rewritten.txt"), b"first version").unwrap();
    });
    let mode_before = fs::metadata(fx.p("old.txt")).unwrap().mode();
    // Rewritten in place (O_TRUNC), not fsync'd.
    fs::write(fx.p("rewritten.txt"), b"second").unwrap();
    // Unsynced changes of a durable file: an append, an overwrite, a chmod.
    let f = append(&fx.p("old.txt"), b"appended\n");
    f.write_at(b"OLD", 0).unwrap();
    fs::set_permissions(fx.p("old.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    drop(f);
    // A new file fsync'd, whose directory is not: its name is not durable.
    write_synced(&fx.p("synced-file-only.txt"), b"x");
    // A new file whose directory is fsync'd but which is not: its name is, its data not.
    let mut g = File::create(fx.p("name-only.txt")).unwrap();
    g.write_all(b"never fsync'd").unwrap();
    drop(g);
    fsync_dir(&fx.mnt);
    // Changed again after the directory fsync: not durable either.
    write_synced(&fx.p("late.txt"), b"late");
    fx.layer.power_loss(false);
    fx.layer.remount();
    assert_eq!(fs::read(fx.p("old.txt")).unwrap(), b"old content\n");
    assert_ne!(mode_before & 0o7777, 0o600);
    assert_eq!(
        fs::metadata(fx.p("old.txt")).unwrap().mode() & 0o7777,
        mode_before & 0o7777,
        "the chmod was not fsync'd"
    );
    assert_eq!(fs::read(fx.p("rewritten.txt")).unwrap(), b"first version");
    assert_eq!(
        names(&fx.mnt),
        vec![
            "name-only.txt",
            "old.txt",
            "rewritten.txt",
            "synced-file-only.txt"
        ]
    );
    assert_eq!(fs::read(fx.p("name-only.txt")).unwrap(), b"");
    assert_eq!(fs::read(fx.p("synced-file-only.txt")).unwrap(), b"x");
}

#[test]
fn what_was_fsynced_after_each_change_is_kept_changes_and_attributes_included() {
    let mut fx = fixture(|b| fs::write(b.join("f"), b"0123456789").unwrap());
    let f = OpenOptions::new().write(true).open(fx.p("f")).unwrap();
    f.write_at(b"ab", 2).unwrap();
    f.set_len(8).unwrap();
    fs::set_permissions(fx.p("f"), fs::Permissions::from_mode(0o640)).unwrap();
    f.sync_data().unwrap();
    // After the durability point: lost.
    f.write_at(b"ZZ", 0).unwrap();
    drop(f);
    fx.layer.power_loss(false);
    fx.layer.remount();
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"01ab4567");
    assert_eq!(fs::metadata(fx.p("f")).unwrap().mode() & 0o7777, 0o640);
}

/// The records appended after the durable header, as one byte string.
fn records(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("record {i:04} {}\n", "x".repeat(80)).into_bytes())
        .collect()
}

#[test]
fn tearing_keeps_a_random_prefix_of_the_unsynced_writes() {
    let mut fx = fixture(|_| {});
    let header = b"HEADER\n";
    let all = records(20);
    let mut kept = Vec::new();
    for seed in 1..=8u64 {
        let name = format!("ledger-{seed}");
        write_synced(&fx.p(&name), header);
        fsync_dir(&fx.mnt);
        let mut f = OpenOptions::new().append(true).open(fx.p(&name)).unwrap();
        for rec in all.chunks(all.len() / 20) {
            f.write_all(rec).unwrap();
        }
        drop(f);
        // Reads see all of it before the loss.
        assert_eq!(
            fs::read(fx.p(&name)).unwrap().len(),
            header.len() + all.len()
        );
        let report = fx.layer.power_loss_seeded(Some(seed));
        assert_eq!(report["seed"], seed);
        fx.layer.remount();
        let got = fs::read(fx.p(&name)).unwrap();
        let mut expect = header.to_vec();
        expect.extend_from_slice(&all);
        assert!(
            got.len() >= header.len() && expect.starts_with(&got),
            "seed {seed}: the file is not the durable header plus a prefix of the writes: {:?}",
            String::from_utf8_lossy(&got)
        );
        kept.push(got.len() - header.len());
    }
    // Over the seeds, some tear inside the writes (neither nothing nor everything), some cut
    // a write in the middle.
    assert!(
        kept.iter().any(|&k| k > 0 && k < all.len()),
        "no seed tore: {kept:?}"
    );
    let rec = all.len() / 20;
    assert!(
        kept.iter().any(|&k| k % rec != 0),
        "no seed cut inside a write: {kept:?}"
    );
    // The same seed tears the same way.
    let name = "replay";
    let mut lens = Vec::new();
    for _ in 0..2 {
        write_synced(&fx.p(name), header);
        fsync_dir(&fx.mnt);
        let mut f = OpenOptions::new().append(true).open(fx.p(name)).unwrap();
        for rec in all.chunks(rec) {
            f.write_all(rec).unwrap();
        }
        drop(f);
        fx.layer.power_loss_seeded(Some(3));
        fx.layer.remount();
        lens.push(fs::read(fx.p(name)).unwrap().len());
        fs::remove_file(fx.p(name)).unwrap();
        fsync_dir(&fx.mnt);
    }
    assert_eq!(lens[0], lens[1]);
    assert_eq!(lens[0] - header.len(), kept[2], "seed 3 replays");
}

#[test]
fn a_rename_not_followed_by_a_directory_fsync_is_undone() {
    let mut fx = fixture(|b| {
        fs::write(b.join("target"), b"old version").unwrap();
        fs::write(b.join("x"), b"x").unwrap();
        fs::create_dir(b.join("sub")).unwrap();
        fs::write(b.join("sub/inner"), b"inner").unwrap();
    });
    let ino_x = fs::metadata(fx.backing.join("x")).unwrap().ino();
    // The atomic-replace pattern without its last step.
    write_synced(&fx.p("target.tmp"), b"new version");
    fs::rename(fx.p("target.tmp"), fx.p("target")).unwrap();
    fs::rename(fx.p("x"), fx.p("y")).unwrap();
    fs::rename(fx.p("sub"), fx.p("sub2")).unwrap();
    File::open(fx.p("y")).unwrap().sync_all().unwrap();
    fx.layer.power_loss(false);
    fx.layer.remount();
    assert_eq!(names(&fx.mnt), vec!["sub", "target", "x"]);
    assert_eq!(fs::read(fx.p("target")).unwrap(), b"old version");
    assert_eq!(fs::read(fx.p("sub/inner")).unwrap(), b"inner");
    assert_eq!(fs::metadata(fx.p("x")).unwrap().ino(), ino_x, "same inode");
    // With the directory fsync, the replacement is durable.
    write_synced(&fx.p("target.tmp"), b"new version");
    fs::rename(fx.p("target.tmp"), fx.p("target")).unwrap();
    fsync_dir(&fx.mnt);
    fx.layer.power_loss(false);
    fx.layer.remount();
    assert_eq!(fs::read(fx.p("target")).unwrap(), b"new version");
    assert_eq!(names(&fx.mnt), vec!["sub", "target", "x"]);
}

#[test]
fn a_directory_fsync_makes_its_creations_and_removals_durable_and_no_other_directory_s() {
    let mut fx = fixture(|b| {
        fs::write(b.join("removed"), b"r").unwrap();
        fs::write(b.join("moved"), b"m").unwrap();
        fs::create_dir(b.join("gone")).unwrap();
        fs::create_dir(b.join("other")).unwrap();
        fs::write(b.join("other/kept"), b"k").unwrap();
    });
    write_synced(&fx.p("created"), b"c");
    fs::remove_file(fx.p("removed")).unwrap();
    fs::rename(fx.p("moved"), fx.p("moved-to")).unwrap();
    fs::create_dir(fx.p("newdir")).unwrap();
    fs::remove_dir(fx.p("gone")).unwrap();
    std::os::unix::fs::symlink("created", fx.p("link")).unwrap();
    // In another directory, not fsync'd: undone.
    write_synced(&fx.p("other/new"), b"n");
    fs::remove_file(fx.p("other/kept")).unwrap();
    fsync_dir(&fx.mnt);
    fx.layer.power_loss(false);
    fx.layer.remount();
    assert_eq!(
        names(&fx.mnt),
        vec!["created", "link", "moved-to", "newdir", "other"]
    );
    assert_eq!(fs::read(fx.p("created")).unwrap(), b"c");
    assert_eq!(fs::read(fx.p("moved-to")).unwrap(), b"m");
    assert_eq!(fs::read_link(fx.p("link")).unwrap(), Path::new("created"));
    assert!(names(&fx.p("newdir")).is_empty());
    assert_eq!(names(&fx.p("other")), vec!["kept"]);
    assert_eq!(fs::read(fx.p("other/kept")).unwrap(), b"k");
}

#[test]
fn a_cross_directory_rename_made_durable_at_one_end_only_keeps_both_names_of_a_file() {
    let mut fx = fixture(|b| {
        fs::create_dir_all(b.join("a/sub")).unwrap();
        fs::create_dir(b.join("b")).unwrap();
        fs::write(b.join("a/file"), b"f").unwrap();
        fs::write(b.join("a/sub/x"), b"x").unwrap();
    });
    fs::rename(fx.p("a/file"), fx.p("b/file")).unwrap();
    fs::rename(fx.p("a/sub"), fx.p("b/sub")).unwrap();
    fsync_dir(&fx.p("b"));
    fx.layer.power_loss(false);
    fx.layer.remount();
    // The old directory still has its durable entries, the new one has its own: the file has
    // both names (hard links); the directory keeps the one met first (a before b).
    assert_eq!(names(&fx.p("a")), vec!["file", "sub"]);
    assert_eq!(names(&fx.p("b")), vec!["file"]);
    let (m1, m2) = (
        fs::metadata(fx.p("a/file")).unwrap(),
        fs::metadata(fx.p("b/file")).unwrap(),
    );
    assert_eq!((m1.ino(), m1.nlink()), (m2.ino(), 2));
    assert_eq!(fs::read(fx.p("a/sub/x")).unwrap(), b"x");
}

#[test]
fn removed_objects_come_back_with_their_inodes_links_and_content() {
    let mut fx = fixture(|b| {
        fs::write(b.join("f"), b"file content").unwrap();
        fs::hard_link(b.join("f"), b.join("h")).unwrap();
        std::os::unix::fs::symlink("f", b.join("l")).unwrap();
        fs::create_dir_all(b.join("d/e")).unwrap();
        fs::write(b.join("d/e/x"), b"deep").unwrap();
    });
    let ino = |rel: &str| fs::symlink_metadata(fx.backing.join(rel)).unwrap().ino();
    let before = [ino("f"), ino("l"), ino("d"), ino("d/e"), ino("d/e/x")];
    assert_eq!(ino("h"), before[0]);
    // Removed one by one (the last link of f goes with h), written to while open, and
    // replaced by new objects of the same names.
    let open = OpenOptions::new().write(true).open(fx.p("f")).unwrap();
    fs::remove_file(fx.p("f")).unwrap();
    fs::remove_file(fx.p("h")).unwrap();
    assert_eq!(
        open.metadata().unwrap().nlink(),
        0,
        "removed, as far as anyone can see"
    );
    open.write_at(b"FILE", 0).unwrap();
    drop(open);
    fs::remove_file(fx.p("l")).unwrap();
    fs::remove_dir_all(fx.p("d")).unwrap();
    fs::write(fx.p("f"), b"a new f").unwrap();
    fs::create_dir(fx.p("d")).unwrap();
    fsync_dir(&fx.p("d"));
    fx.layer.power_loss(false);
    fx.layer.remount();
    assert_eq!(names(&fx.mnt), vec!["d", "f", "h", "l"]);
    let after = [ino("f"), ino("l"), ino("d"), ino("d/e"), ino("d/e/x")];
    assert_eq!(after, before, "the same inodes came back");
    assert_eq!(ino("h"), before[0]);
    assert_eq!(fs::metadata(fx.p("f")).unwrap().nlink(), 2);
    assert_eq!(fs::read(fx.p("h")).unwrap(), b"file content");
    assert_eq!(fs::read_link(fx.p("l")).unwrap(), Path::new("f"));
    assert_eq!(fs::read(fx.p("d/e/x")).unwrap(), b"deep");
    assert!(
        !fx.backing.join(".lossyfs-attic").exists(),
        "the attic is gone after a power loss"
    );
}

#[test]
fn a_layer_mounted_over_its_own_backing_directory_never_goes_through_itself() {
    // Every access to the backing directory goes through descriptors opened before the mount:
    // a lookup of `..` or a path from `/` would lead back into the layer and wedge it.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap().join("over");
    fs::create_dir_all(dir.join("top/mid")).unwrap();
    fs::write(dir.join("top/mid/f"), b"f").unwrap();
    fs::create_dir(dir.join("other")).unwrap();
    let mut layer = LossyFs::over(&dir);
    assert_eq!(names(&dir), vec!["other", "top"]);
    assert_eq!(names(&dir.join("top")), vec!["mid"]);
    // SAFETY: statfs of a NUL-terminated path into a local buffer.
    let rc = unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        let p = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        libc::statfs(p.as_ptr(), &mut s)
    };
    assert_eq!(rc, 0);
    // Directories moved out of the root and into it, then removed: all put back.
    fs::rename(dir.join("top/mid"), dir.join("mid")).unwrap();
    fs::rename(dir.join("top"), dir.join("other/top")).unwrap();
    fs::remove_file(dir.join("mid/f")).unwrap();
    fs::remove_dir(dir.join("mid")).unwrap();
    fsync_dir(&dir.join("other"));
    layer.power_loss(false);
    layer.remount();
    // `top` is durably both in the root (not fsync'd) and in `other` (fsync'd): it keeps the
    // name met first, breadth-first (the root's).
    assert_eq!(names(&dir), vec!["other", "top"]);
    assert!(names(&dir.join("other")).is_empty());
    assert_eq!(names(&dir.join("top")), vec!["mid"]);
    assert_eq!(fs::read(dir.join("top/mid/f")).unwrap(), b"f");
    drop(layer);
    assert!(lossyfs::mounts_at(&dir).is_empty());
}

#[test]
fn reads_see_unsynced_data_before_the_loss() {
    let fx = fixture(|b| fs::write(b.join("f"), b"old").unwrap());
    let w = append(&fx.p("f"), b" and new");
    fs::write(fx.p("g"), b"not synced").unwrap();
    // Through other descriptors, and by name.
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"old and new");
    assert_eq!(fs::metadata(fx.p("f")).unwrap().len(), 11);
    assert_eq!(fs::read(fx.p("g")).unwrap(), b"not synced");
    assert_eq!(names(&fx.mnt), vec!["f", "g"]);
    let mut buf = [0u8; 3];
    File::open(fx.p("f"))
        .unwrap()
        .read_exact_at(&mut buf, 8)
        .unwrap();
    assert_eq!(&buf, b"new");
    // The layer is holding them back.
    let st = fx.layer.status();
    assert!(st["files"].as_u64().unwrap() >= 2, "{st}");
    assert!(st["dirs"].as_u64().unwrap() >= 1, "{st}");
    drop(w);
}

#[test]
fn after_a_power_loss_every_operation_fails_until_the_remount() {
    let mut fx = fixture(|b| {
        fs::write(b.join("f"), b"durable").unwrap();
        fs::create_dir(b.join("d")).unwrap();
    });
    let open = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.p("f"))
        .unwrap();
    open.write_at(b"lost", 0).unwrap();
    fx.layer.power_loss(false);
    const EIO: i32 = libc::EIO;
    let mut buf = [0u8; 4];
    assert_eq!(errno(open.read_at(&mut buf, 0)), EIO);
    assert_eq!(errno(open.write_at(b"x", 0)), EIO);
    assert_eq!(errno(open.sync_all()), EIO);
    assert_eq!(errno(open.set_len(0)), EIO);
    assert_eq!(errno(open.metadata()), EIO);
    assert_eq!(errno(fs::metadata(&fx.mnt)), EIO);
    assert_eq!(errno(fs::metadata(fx.p("f"))), EIO);
    assert_eq!(errno(fs::read(fx.p("f"))), EIO);
    assert_eq!(errno(fs::read_dir(&fx.mnt)), EIO);
    assert_eq!(errno(fs::write(fx.p("new"), b"n")), EIO);
    assert_eq!(errno(fs::create_dir(fx.p("d2"))), EIO);
    assert_eq!(errno(fs::remove_file(fx.p("f"))), EIO);
    assert_eq!(errno(fs::remove_dir(fx.p("d"))), EIO);
    assert_eq!(errno(fs::rename(fx.p("f"), fx.p("g"))), EIO);
    assert_eq!(errno(std::os::unix::fs::symlink("f", fx.p("s"))), EIO);
    assert_eq!(errno(fs::hard_link(fx.p("f"), fx.p("h"))), EIO);
    assert_eq!(
        errno(fs::set_permissions(
            fx.p("f"),
            fs::Permissions::from_mode(0o600)
        )),
        EIO
    );
    // SAFETY: statfs of a NUL-terminated path into a local buffer.
    let rc = unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        let p = std::ffi::CString::new(fx.mnt.as_os_str().as_encoded_bytes()).unwrap();
        libc::statfs(p.as_ptr(), &mut s)
    };
    assert_eq!(rc, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(EIO));
    // A second power loss is refused: it is already lost.
    assert_eq!(fx.layer.command("power-loss")["ok"], false);
    assert_eq!(fx.layer.status()["dead"], true);
    drop(open);
    fx.layer.remount();
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"durable");
    fs::write(fx.p("new"), b"n").unwrap();
    assert_eq!(names(&fx.mnt), vec!["d", "f", "new"]);
}

#[test]
fn the_mount_goes_away_in_drop_even_when_a_test_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    fs::create_dir(root.join("b")).unwrap();
    fs::create_dir(root.join("m")).unwrap();
    let seen = std::sync::Mutex::new(None);
    // A file held open (past the panic) keeps the mount busy: the Drop must unmount anyway.
    let busy = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let l = LossyFs::mount(&root.join("b"), &root.join("m"), LossyOpts::default());
        fs::write(root.join("m/f"), b"x").unwrap();
        *seen.lock().unwrap() = Some(l.pid());
        assert!(lossyfs::is_mounted(&root.join("m")));
        *busy.lock().unwrap() = Some(File::open(root.join("m/f")).unwrap());
        panic!("a test failing while the layer is mounted");
    }));
    assert!(r.is_err());
    assert!(busy.lock().unwrap().is_some());
    let pid = seen.lock().unwrap().expect("mounted");
    assert!(
        lossyfs::mounts_at(&root.join("m")).is_empty(),
        "still mounted: {:?}",
        lossyfs::mounts_at(&root.join("m"))
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the server {pid} is still running"
    );
    // The Drop made everything durable first, as a clean unmount does.
    assert_eq!(fs::read(root.join("b/f")).unwrap(), b"x");
    assert_eq!(names(&root.join("b")), vec!["f"]);
    drop(busy);
}

#[test]
fn syncfs_is_not_a_durability_point() {
    // FUSE does not pass syncfs to the server (only virtiofs gets FUSE_SYNCFS), so the layer
    // cannot make anything durable for it: a program must fsync what it relies on. If this
    // fails, the kernel now passes syncfs: update the module documentation of lossyfs.
    let mut fx = fixture(|b| fs::write(b.join("f"), b"durable").unwrap());
    let f = append(&fx.p("f"), b" then syncfs'd");
    // SAFETY: syncfs on an open descriptor.
    assert_eq!(unsafe { libc::syncfs(f.as_raw_fd()) }, 0);
    drop(f);
    fx.layer.power_loss(false);
    fx.layer.remount();
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"durable");
}

#[test]
fn o_sync_o_dsync_and_rwf_dsync_writes_are_durable() {
    let mut fx = fixture(|b| {
        for n in ["sync", "dsync", "rwf"] {
            fs::write(b.join(n), b"").unwrap();
        }
    });
    for (name, flag) in [("sync", libc::O_SYNC), ("dsync", libc::O_DSYNC)] {
        let mut f = OpenOptions::new()
            .write(true)
            .custom_flags(flag)
            .open(fx.p(name))
            .unwrap();
        f.write_all(name.as_bytes()).unwrap();
    }
    let f = OpenOptions::new().write(true).open(fx.p("rwf")).unwrap();
    let data = b"rwf_dsync";
    let iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    // SAFETY: one iovec over a live buffer, on an open descriptor.
    let n = unsafe { libc::pwritev2(f.as_raw_fd(), &iov, 1, 0, libc::RWF_DSYNC) };
    assert_eq!(n, data.len() as isize);
    // A plain write after them is not durable.
    f.write_at(b"RWF", 0).unwrap();
    drop(f);
    fx.layer.power_loss(false);
    fx.layer.remount();
    assert_eq!(fs::read(fx.p("sync")).unwrap(), b"sync");
    assert_eq!(fs::read(fx.p("dsync")).unwrap(), b"dsync");
    assert_eq!(fs::read(fx.p("rwf")).unwrap(), b"rwf_dsync");
}

#[test]
fn fallocate_and_o_direct_work_and_are_held_back_like_writes() {
    let mut fx = fixture(|b| fs::write(b.join("f"), vec![7u8; 8192]).unwrap());
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.p("f"))
        .unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: fallocate on an open descriptor.
    let fl = |mode, off, len| unsafe { libc::fallocate(fd, mode, off, len) };
    // Preallocation beyond the end, keeping the size (as the journal does).
    assert_eq!(fl(libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20), 0);
    assert_eq!(f.metadata().unwrap().len(), 8192);
    assert!(f.metadata().unwrap().blocks() * 512 >= 1 << 20);
    // A hole punched in durable data reads as zeros until the power goes.
    assert_eq!(
        fl(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096
        ),
        0
    );
    let mut buf = vec![1u8; 4096];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    // Mode 0 grows the file.
    assert_eq!(fl(0, 8192, 4096), 0);
    assert_eq!(f.metadata().unwrap().len(), 12288);
    // Not supported: said so.
    assert_eq!(fl(libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096), -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EOPNOTSUPP)
    );
    drop(f);
    // O_DIRECT: opened, written aligned and unaligned, switched on with fcntl.
    let mut d = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(fx.p("direct"))
        .unwrap();
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let page = Page([b'D'; 4096]);
    d.write_all(&page.0).unwrap();
    d.write_all(b"unaligned tail").unwrap();
    d.sync_all().unwrap();
    let g = OpenOptions::new().read(true).open(fx.p("f")).unwrap();
    // SAFETY: fcntl on an open descriptor.
    let rc = unsafe {
        let fl = libc::fcntl(g.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(g.as_raw_fd(), libc::F_SETFL, fl | libc::O_DIRECT)
    };
    assert_eq!(
        rc,
        0,
        "F_SETFL O_DIRECT: {}",
        std::io::Error::last_os_error()
    );
    drop(g);
    drop(d);
    fsync_dir(&fx.mnt);
    fx.layer.power_loss(false);
    fx.layer.remount();
    assert_eq!(fs::read(fx.p("f")).unwrap(), vec![7u8; 8192]);
    let direct = fs::read(fx.p("direct")).unwrap();
    assert_eq!(direct.len(), 4096 + 14);
    assert!(direct[..4096].iter().all(|&b| b == b'D'));
    assert_eq!(&direct[4096..], b"unaligned tail");
}

#[test]
fn copy_file_range_is_held_back_like_a_write() {
    let mut fx = fixture(|b| {
        fs::write(b.join("src"), b"the source bytes").unwrap();
        fs::write(b.join("unsynced"), b"").unwrap();
    });
    // std's copy uses copy_file_range on Linux.
    fs::copy(fx.p("src"), fx.p("synced")).unwrap();
    File::open(fx.p("synced")).unwrap().sync_all().unwrap();
    fsync_dir(&fx.mnt);
    let mut out = OpenOptions::new()
        .write(true)
        .open(fx.p("unsynced"))
        .unwrap();
    let mut src = File::open(fx.p("src")).unwrap();
    assert_eq!(std::io::copy(&mut src, &mut out).unwrap(), 16);
    drop(out);
    assert_eq!(fs::read(fx.p("unsynced")).unwrap(), b"the source bytes");
    fx.layer.power_loss(false);
    fx.layer.remount();
    assert_eq!(fs::read(fx.p("synced")).unwrap(), b"the source bytes");
    assert_eq!(fs::read(fx.p("unsynced")).unwrap(), b"");
}

#[test]
fn writes_through_a_shared_mapping_are_durable_after_msync_only() {
    let mut fx = fixture(|b| {
        fs::write(b.join("unsynced"), vec![b'a'; 4096]).unwrap();
        fs::write(b.join("synced"), vec![b'a'; 4096]).unwrap();
    });
    for (name, msync) in [("unsynced", false), ("synced", true)] {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(fx.p(name))
            .unwrap();
        // SAFETY: a shared mapping of 4096 bytes of an open file, written within bounds and
        // unmapped before the file is dropped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(
                p,
                libc::MAP_FAILED,
                "mmap: {}",
                std::io::Error::last_os_error()
            );
            std::ptr::write_bytes(p.cast::<u8>(), b'M', 16);
            if msync {
                assert_eq!(libc::msync(p, 4096, libc::MS_SYNC), 0);
            }
            libc::munmap(p, 4096);
        }
        drop(f);
    }
    // Through the mount, the new bytes are seen either way.
    assert_eq!(&fs::read(fx.p("unsynced")).unwrap()[..16], &[b'M'; 16]);
    fx.layer.power_loss(false);
    fx.layer.remount();
    assert_eq!(fs::read(fx.p("unsynced")).unwrap(), vec![b'a'; 4096]);
    let s = fs::read(fx.p("synced")).unwrap();
    assert_eq!(&s[..16], &[b'M'; 16]);
    assert!(s[16..].iter().all(|&b| b == b'a'));
}

#[test]
fn the_attic_name_is_reserved_and_hidden() {
    let fx = fixture(|_| {});
    // Removing a durable file keeps it in the attic, out of sight.
    fs::write(fx.p("f"), b"x").unwrap();
    fx.layer.sync();
    fs::remove_file(fx.p("f")).unwrap();
    assert!(fx.backing.join(".lossyfs-attic").exists());
    assert!(names(&fx.mnt).is_empty());
    assert_eq!(
        fs::metadata(fx.p(".lossyfs-attic")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(errno(fs::create_dir(fx.p(".lossyfs-attic"))), libc::EPERM);
    // Once the removal is durable, the attic goes.
    fsync_dir(&fx.mnt);
    assert!(!fx.backing.join(".lossyfs-attic").exists());
    assert_eq!(fx.layer.status()["pins"], 0);
}
