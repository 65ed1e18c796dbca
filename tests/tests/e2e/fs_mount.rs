//! The mount's life: clean exits on SIGTERM and `fusermount3 -u`, remount after kill -9, and
//! clear refusals (already mounted, state in use, missing directory).

use std::fs;
use std::process::Command;
use std::time::Duration;

use mirror_tests::{bin, is_mounted, wait_until, Local, Mount};

fn output_of(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("mirrorfs")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sigterm_unmounts_cleanly() {
    let l = Local::new();
    let m = l.mount(&[]);
    fs::write(l.path("f"), b"x").unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(m.pid() as i32, libc::SIGTERM) };
    wait_until(Duration::from_secs(10), "the mount to go away", || {
        !is_mounted(&l.dir)
    });
    let log = m.unmount();
    assert!(log.contains("unmounted"), "{log}");
    assert_eq!(fs::read(l.path("f")).unwrap(), b"x");
    l.assert_no_errors();
}

#[test]
fn fusermount_u_ends_the_process() {
    let l = Local::new();
    let m = l.mount(&[]);
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&l.dir)
        .status()
        .unwrap();
    assert!(st.success());
    let log = m.unmount();
    assert!(log.contains("unmounted"), "{log}");
    l.assert_no_errors();
}

/// Issue 12 item 17: a SIGTERM after the mount was taken away (`fusermount3 -u`, `umount
/// -l`) logged an ERROR "unmount ... failed: Invalid argument".
#[test]
fn a_signal_after_the_mount_is_gone_logs_no_error() {
    let l = Local::new();
    let m = l.mount(&[]);
    let st = Command::new("umount")
        .arg("-l")
        .arg(&l.dir)
        .status()
        .unwrap();
    assert!(st.success());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(m.pid() as i32, libc::SIGTERM) };
    let log = m.unmount();
    assert!(log.contains("unmounted"), "{log}");
    l.assert_no_errors();
}

/// The finding: a SIGTERM while a program had a file open in the mount failed (busy), and
/// every later signal was ignored: mirrorfs could then only be unmounted by hand.
#[test]
fn a_signal_while_the_mount_is_busy_is_reported_and_the_next_one_unmounts() {
    let l = Local::new();
    let m = l.mount(&[]);
    let open = fs::File::create(l.path("held-open")).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(m.pid() as i32, libc::SIGTERM) };
    wait_until(
        Duration::from_secs(20),
        "the busy unmount to be reported",
        || m.log_text().contains("it is busy"),
    );
    fs::write(l.path("still-served"), b"yes").unwrap();
    drop(open);
    wait_until(Duration::from_secs(20), "a later signal to unmount", || {
        // SAFETY: as above.
        unsafe { libc::kill(m.pid() as i32, libc::SIGTERM) };
        !mirror_tests::is_mounted(&l.dir)
    });
    let log = m.unmount();
    assert!(log.contains("unmounted"), "{log}");
}

#[test]
fn refusals_are_clear() {
    let l = Local::new();
    let m = l.mount(&[]);
    let dir = l.dir.to_str().unwrap();
    let state = l.state.to_str().unwrap();
    let (ok, err) = output_of(&[dir, "--state", state]);
    assert!(!ok);
    assert!(err.contains("already a mirrorfs mount"), "{err}");
    let other = l.tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    let (ok, err) = output_of(&[other.to_str().unwrap(), "--state", state]);
    assert!(!ok);
    assert!(
        err.contains("is in use by another mirrorfs") && err.contains(dir),
        "{err}"
    );
    let missing = l.tmp.path().join("missing");
    let (ok, err) = output_of(&[missing.to_str().unwrap(), "--state", state]);
    assert!(!ok);
    assert!(
        err.contains("missing") && err.contains("No such file"),
        "{err}"
    );
    drop(m);
}

/// The finding: after a kill -9 of mirrorfs while a program wrote through it, the next
/// mount refused with "already mounted": the kernel still answered lookups of the dead mount
/// from its caches, so it looked alive. statfs asks the server: a dead one is detached.
#[test]
fn a_dead_mount_whose_attributes_are_cached_is_detached_at_the_next_mount() {
    let l = Local::new();
    l.add_rule(&format!("{}/", l.dir.display()), "127.0.0.1:9", "d", &[]);
    let mut m = l.mount(&[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (p, stop) = (l.path("busy.txt"), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 1_000_000 {
                if fs::write(&p, n.to_string()).is_err() {
                    break;
                }
                n += 1;
            }
        })
    };
    wait_until(Duration::from_secs(20), "the writer to write", || {
        fs::metadata(l.path("busy.txt")).is_ok()
    });
    // The root's attributes in the kernel's cache (the writer's writes to an existing file
    // leave them there).
    fs::metadata(&l.dir).unwrap();
    m.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        fs::metadata(&l.dir).is_ok(),
        "the dead mount's root still answers from the caches"
    );
    let m2 = l.mount(&[]);
    fs::write(l.path("after.txt"), b"alive").unwrap();
    assert!(
        m2.log_text().contains("process is gone"),
        "{}",
        m2.log_text()
    );
}

#[test]
fn remount_after_kill9_continues_the_journal() {
    let l = Local::new();
    fs::create_dir(l.path("src")).unwrap();
    l.add_rule(
        &format!("{}/src/", l.dir.display()),
        "127.0.0.1:9",
        "d",
        &[],
    );
    let mut m = l.mount(&[]);
    fs::write(l.path("src/one"), b"1").unwrap();
    m.kill9();
    assert!(
        fs::metadata(l.path("src")).is_err(),
        "a dead mount answers ENOTCONN"
    );
    let m2 = l.mount(&[]);
    // After the crash, the remount sends again what may have changed since the last
    // watermark: the directory and the file written before the kill (issue 12 item 3).
    wait_until(Duration::from_secs(20), "the reconciliation", || {
        l.status()[0]["mount"]["scan"]["done"] == true
    });
    fs::write(l.path("src/two"), b"2").unwrap();
    use mirrorfs::entry::Command as C;
    let names: Vec<(C, String)> = l
        .journal()
        .iter()
        .map(|e| (e.command, mirror_tests::rel(&l.dir, &e.name)))
        .collect();
    let s = |c, n: &str| (c, n.to_string());
    assert_eq!(
        names,
        vec![
            // The rule's first copy, queued by `rule add` (nothing was mounted).
            s(C::Copy, "src"),
            s(C::Create, "src/one"),
            s(C::Write, "src/one"),
            s(C::Reconcile, "src"),
            s(C::Copy, "src/one"),
            s(C::Create, "src/two"),
            s(C::Write, "src/two")
        ]
    );
    assert!(
        m2.log_text().contains("process is gone"),
        "{}",
        m2.log_text()
    );
    drop(m2);
    drop(m);
}

#[test]
fn source_and_mountpoint_form() {
    let l = Local::new();
    let mp = l.tmp.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    fs::write(l.path("inside"), b"seen").unwrap();
    let m = Mount::start(&l.dir, Some(&mp), &l.state, &[]);
    assert_eq!(fs::read(mp.join("inside")).unwrap(), b"seen");
    fs::write(mp.join("new"), b"n").unwrap();
    assert_eq!(fs::read(l.path("new")).unwrap(), b"n");
    drop(m);
}

#[test]
fn help_names_the_forms() {
    let (ok, _) = output_of(&["--help"]);
    assert!(ok);
    let out = Command::new(bin("mirrorfs"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fusermount3 -u DIR") && text.contains("--state"),
        "{text}"
    );
}
