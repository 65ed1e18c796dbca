//! Forwarding end to end: a real mount, mirror-sendd and mirror-routerd on loopback; every
//! kind of operation reaches the backup; delete suffix; `--attrs`; validation.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::time::Duration;

use mirror_tests::{wait_converged, wait_until, Local, Router};

const CONVERGE: Duration = Duration::from_secs(60);

/// A local system with one subtree rule over the whole project to `dest` on `r`, mounted,
/// with its sender running.
pub fn mirrored(
    r: &Router,
    dest: &str,
    extra: &[&str],
) -> (Local, mirror_tests::Mount, mirror_tests::Daemon) {
    mirrored_with(r, dest, extra, &[])
}

/// [`mirrored`], with `sender` arguments for mirror-sendd.
pub fn mirrored_with(
    r: &Router,
    dest: &str,
    extra: &[&str],
    sender: &[&str],
) -> (Local, mirror_tests::Mount, mirror_tests::Daemon) {
    let l = Local::new();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), dest, extra);
    let m = l.mount(&[]);
    let s = l.sender_with(sender);
    // The rule's first copy (of the empty tree) acknowledged: what the test writes next then
    // reaches the backup only as its own changes, never also through that copy.
    wait_until(
        Duration::from_secs(60),
        "the rule's first copy acknowledged",
        || {
            let st = l.status();
            st.as_array().is_some_and(|rows| {
                !rows.is_empty()
                    && rows.iter().all(|row| {
                        row["initial_copies"]
                            .as_array()
                            .is_some_and(|v| v.is_empty())
                    })
            })
        },
    );
    (l, m, s)
}

fn mkfifo(p: &std::path::Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn every_operation_kind_reaches_the_backup() {
    let r = Router::start();
    let (l, m, _s) = mirrored(&r, "proj", &[]);
    let p = |x: &str| l.path(x);
    fs::create_dir_all(p("a/b/c")).unwrap();
    fs::write(p("a/one.txt"), b"hello world").unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(p("a/one.txt"))
        .unwrap();
    f.write_all(b", appended").unwrap();
    drop(f);
    fs::write(p("a/b/big.bin"), vec![7u8; 3 << 20]).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(p("a/b/big.bin"))
        .unwrap();
    f.write_all_at(b"patch", 1 << 20).unwrap();
    f.set_len(2 << 20).unwrap();
    f.set_len(2 << 21).unwrap();
    drop(f);
    fs::write(p("a/trunc.txt"), b"to be truncated").unwrap();
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(p("a/trunc.txt"))
        .unwrap();
    std::os::unix::fs::symlink("one.txt", p("a/link")).unwrap();
    fs::hard_link(p("a/one.txt"), p("a/b/hard.txt")).unwrap();
    fs::write(p("a/b/c/moved.txt"), b"moving").unwrap();
    fs::rename(p("a/b/c/moved.txt"), p("a/moved.txt")).unwrap();
    fs::create_dir(p("dir1")).unwrap();
    fs::write(p("dir1/inner"), b"inner").unwrap();
    fs::rename(p("dir1"), p("a/b/dir2")).unwrap();
    fs::write(p("gone.txt"), b"x").unwrap();
    fs::remove_file(p("gone.txt")).unwrap();
    fs::create_dir(p("emptydir")).unwrap();
    fs::create_dir(p("rmdir")).unwrap();
    fs::remove_dir(p("rmdir")).unwrap();
    mkfifo(&p("a/fifo"));
    fs::set_permissions(p("a/one.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    // A punched hole.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(p("a/b/big.bin"))
        .unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open file.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            4096,
            65536,
        )
    };
    assert_eq!(rc, 0);
    drop(f);
    // Exchange two files.
    fs::write(p("x1"), b"first").unwrap();
    fs::write(p("x2"), b"second!").unwrap();
    let (a, b) = (
        std::ffi::CString::new(p("x1").as_os_str().as_encoded_bytes()).unwrap(),
        std::ffi::CString::new(p("x2").as_os_str().as_encoded_bytes()).unwrap(),
    );
    // SAFETY: valid paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(rc, 0);
    let n = wait_converged(&l.dir, &r.path("proj"), CONVERGE);
    assert!(n >= 15, "{n} entries compared");
    assert!(r.path("proj/a/fifo").exists());
    assert_eq!(fs::read(r.path("proj/x1")).unwrap(), b"second!");
    drop(m);
    l.assert_no_errors();
    assert!(r.error_log().trim().is_empty(), "{}", r.error_log());
}

#[test]
fn delete_suffix_keeps_deleted_files() {
    let r = Router::start();
    let (l, _m, _s) = mirrored(&r, "keep", &["--delete-suffix", ".deleted"]);
    fs::write(l.path("doomed.txt"), b"last words").unwrap();
    fs::write(l.path("kept.txt"), b"kept").unwrap();
    fs::remove_file(l.path("doomed.txt")).unwrap();
    wait_until(CONVERGE, "the deleted file to be renamed", || {
        r.path("keep/doomed.txt.deleted").exists()
            && !r.path("keep/doomed.txt").exists()
            && r.path("keep/kept.txt").exists()
    });
    assert_eq!(
        fs::read(r.path("keep/doomed.txt.deleted")).unwrap(),
        b"last words"
    );
}

#[test]
fn attrs_mirror_mode_and_times() {
    let r = Router::start();
    let (l, _m, _s) = mirrored(&r, "attrs", &["--attrs"]);
    fs::write(l.path("f"), b"data").unwrap();
    fs::set_permissions(l.path("f"), fs::Permissions::from_mode(0o640)).unwrap();
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(l.path("f"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    let want = fs::metadata(l.path("f")).unwrap();
    wait_until(CONVERGE, "mode and mtime on the backup", || {
        fs::metadata(r.path("attrs/f"))
            .is_ok_and(|m| m.mode() & 0o7777 == 0o640 && m.mtime() == want.mtime() && m.len() == 4)
    });
}

/// Without `--attrs` the permission bits are still mirrored, at creation, on every chmod and in
/// copies (a backup is never more readable than its source), but set-id bits, owners and times
/// are not (issue 12 item 2).
#[test]
fn without_attrs_permission_bits_are_mirrored_and_nothing_else() {
    let r = Router::start();
    let (l, _m, _s) = mirrored(&r, "plain", &[]);
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().mode() & 0o7777;
    fs::write(l.path("f"), b"data").unwrap();
    fs::set_permissions(l.path("f"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(l.path("private")).unwrap();
    fs::set_permissions(l.path("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(l.path("private/secret"), b"s").unwrap();
    fs::write(l.path("tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(l.path("tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(l.path("born-private"))
            .unwrap();
    }
    fs::write(l.path("marker"), b"m").unwrap();
    wait_until(CONVERGE, "the marker", || r.path("plain/marker").exists());
    assert_eq!(mode(&r.path("plain/f")), 0o600);
    assert_eq!(mode(&r.path("plain/private")), 0o700);
    assert_eq!(
        mode(&r.path("plain/tool")),
        0o755,
        "no set-id bit without --attrs"
    );
    assert_eq!(mode(&r.path("plain/born-private")), 0o640);
    // A copy of a file made before the rule carries its bits too.
    fs::write(l.path("late"), b"late").unwrap();
    fs::set_permissions(l.path("late"), fs::Permissions::from_mode(0o604)).unwrap();
    let out = l.ctl(&["sync", &l.path("late").to_string_lossy(), "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(CONVERGE, "late's mode", || {
        fs::metadata(r.path("plain/late")).is_ok_and(|m| m.mode() & 0o7777 == 0o604)
    });
}

#[test]
fn validation_refuses_an_unwritable_destination_with_the_routers_reason() {
    let r = Router::start();
    let l = Local::new();
    fs::create_dir_all(&r.root).unwrap();
    fs::write(r.path("taken"), b"a file").unwrap();
    let pattern = format!("{}/", l.dir.display());
    let out = l.ctl(&[
        "rule",
        "add",
        &pattern,
        "--site",
        &r.site(),
        "--dest",
        "taken/sub",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refuses destination taken/sub") && err.contains("not a directory"),
        "{err}"
    );
    // A site that is down: a clear error, and --no-validate adds it anyway.
    let down = "127.0.0.1:9";
    let out = l.ctl(&["rule", "add", &pattern, "--site", down, "--dest", "d"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--no-validate"),
        "{err}"
    );
    l.add_rule(&pattern, down, "d", &[]);
    l.add_rule_validated(&pattern, &r.site(), "fine/here", &[]);
}
