//! Commands that never mislead (issue 13 item 6): read-only commands on a state directory that
//! is not there say so and create nothing; configuring commands make one; a failed mount
//! leaves no state directory behind; `router status` says whether the router runs; `status`
//! gives the last error's time and says when it is past.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use mirror_tests::{bin, wait_until, Mount, Router};

use crate::mirror_ops::mirrored;

const CONVERGE: Duration = Duration::from_secs(60);

fn ctl(state: &Path, args: &[&str]) -> Output {
    Command::new(bin("mirror-ctl"))
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .expect("run mirror-ctl")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Before: `mirror-ctl --state TYPO status` made TYPO and an empty rules.db, and said
/// nothing was wrong.
#[test]
fn read_only_commands_on_a_missing_state_directory_say_so_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("typo");
    let source: &[&[&str]] = &[
        &["status"],
        &["status", "--json"],
        &["rule", "list"],
        &["rule", "list", "--json"],
        &["rule", "rm", "1"],
        &["sync"],
        &["unblock"],
        &["key", "list"],
        &["key", "rm", "backup.lan:7070"],
    ];
    let router: &[&[&str]] = &[
        &["router", "status"],
        &["router", "status", "--json"],
        &["router", "quarantine"],
        &["router", "unblock"],
        &["router", "key", "list"],
        &["router", "key", "rm", "laptop"],
        &["router", "namespace", "laptop", "x"],
    ];
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    for (args, what) in source
        .iter()
        .map(|a| (a, "local system"))
        .chain(router.iter().map(|a| (a, "router state")))
    {
        let out = ctl(&missing, args);
        assert!(!out.status.success(), "{args:?} succeeded: {}", text(&out));
        let want = format!("no {what} at {}", missing.display());
        assert!(
            text(&out).contains(&want) && text(&out).contains("does not exist"),
            "{args:?} did not say {want:?}: {}",
            text(&out)
        );
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
        // A directory that holds nothing of one is not one either, and stays empty.
        let out = ctl(&empty, args);
        assert!(!out.status.success(), "{args:?} succeeded: {}", text(&out));
        assert!(
            text(&out).contains(&format!("no {what} at {}", empty.display())),
            "{args:?} on an empty directory: {}",
            text(&out)
        );
        assert_eq!(fs::read_dir(&empty).unwrap().count(), 0, "{args:?}");
    }
    // A local system without rules yet (a key stored, say): the read-only commands work and
    // make no rules database.
    let keys_only = tmp.path().join("keys-only");
    let out = ctl(
        &keys_only,
        &["key", "add", "backup.lan:7070", mirror_tests::TEST_KEY],
    );
    assert!(out.status.success(), "{}", text(&out));
    for args in [&["status"][..], &["rule", "list"], &["key", "list"]] {
        let out = ctl(&keys_only, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    assert!(!keys_only.join("rules.db").exists());
    assert!(text(&ctl(&keys_only, &["rule", "list"])).contains("no rules"));
    // A source's local system (rules, keys) is not a router's state.
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let rule = format!("{}/", src.display());
    let out = ctl(
        &keys_only,
        &[
            "rule",
            "add",
            &rule,
            "--site",
            "127.0.0.1:9",
            "--dest",
            "d",
            "--no-validate",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = ctl(&keys_only, &["router", "status"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("it is a source's local system"),
        "{}",
        text(&out)
    );
}

#[test]
fn configuring_commands_make_the_local_system() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let a = tmp.path().join("a");
    let out = ctl(
        &a,
        &[
            "rule",
            "add",
            &format!("{}/", src.display()),
            "--site",
            "127.0.0.1:9",
            "--dest",
            "d",
            "--no-validate",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(a.join("rules.db").exists());
    let out = ctl(&a, &["rule", "list"]);
    assert!(text(&out).contains("127.0.0.1:9"), "{}", text(&out));
    let b = tmp.path().join("b");
    let out = ctl(
        &b,
        &["key", "add", "backup.lan:7070", mirror_tests::TEST_KEY],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(b.join("keys").exists());
    let c = tmp.path().join("c");
    let out = ctl(&c, &["router", "key", "add", "laptop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(c.join("keys").exists());
    // The router's state, with keys and no logs yet, is router state.
    let out = ctl(&c, &["router", "status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("NOT running"), "{}", text(&out));
}

/// Found by a new user: a configuring command that failed still made its state directory
/// (`rule add` with no key for the site wrote a site-id there), so a typo'd --state became a
/// local system; a failed one now leaves nothing, and an existing directory keeps what it had.
#[test]
fn a_configuring_command_that_fails_leaves_no_state_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let pattern = format!("{}/", src.display());
    let missing_src = format!("{}/", tmp.path().join("no-such-src").display());
    let failing: &[&[&str]] = &[
        // No key for the site (validation needs one).
        &[
            "rule",
            "add",
            &pattern,
            "--site",
            "127.0.0.1:9",
            "--dest",
            "d",
        ],
        &[
            "rule",
            "add",
            &missing_src,
            "--site",
            "127.0.0.1:9",
            "--dest",
            "d",
            "--no-validate",
        ],
        &["key", "add", "backup.lan:7070", "not-a-key"],
        &["router", "key", "add", "bad/site"],
    ];
    for (i, args) in failing.iter().enumerate() {
        let state = tmp.path().join(format!("new-{i}"));
        let out = ctl(&state, args);
        assert!(!out.status.success(), "{args:?} succeeded: {}", text(&out));
        assert!(!state.exists(), "{args:?} left {}", state.display());
    }
    // An existing local system is not removed by a command that fails.
    let kept = tmp.path().join("kept");
    let out = ctl(
        &kept,
        &["key", "add", "backup.lan:7070", mirror_tests::TEST_KEY],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = ctl(&kept, &["key", "add", "backup.lan:7070", "not-a-key"]);
    assert!(!out.status.success());
    assert!(kept.join("keys").exists());
}

/// Before: `mirrorfs /no/such/dir --state NEW` failed and left NEW behind, a new local
/// system made by a typo.
#[test]
fn a_failed_mount_leaves_no_state_directory_and_a_good_one_makes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    for args in [
        vec![tmp.path().join("no-such-dir")],
        vec![
            tmp.path().to_path_buf(),
            tmp.path().join("no-such-mountpoint"),
        ],
    ] {
        let out = Command::new(bin("mirrorfs"))
            .args(&args)
            .arg("--state")
            .arg(&state)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("no-such"),
            "the error names the path: {}",
            text(&out)
        );
        assert!(!state.exists(), "{args:?} left {} behind", state.display());
    }
    // A mount that works makes its state directory, with its error log.
    let dir = tmp.path().join("proj");
    fs::create_dir(&dir).unwrap();
    let logs = tmp.path().join("logs");
    fs::create_dir(&logs).unwrap();
    let m = Mount::start_logging(&dir, None, &state, &logs, &[]);
    assert!(state.join("errors.log").exists());
    fs::write(dir.join("f"), "x").unwrap();
    drop(m);
    assert_eq!(fs::read(dir.join("f")).unwrap(), b"x");
}

/// Before: with the router stopped, `router status` said "nothing waits to be applied" and
/// nothing about the router not running.
#[test]
fn router_status_says_whether_the_router_runs() {
    let mut r = Router::start();
    let out = r.ctl(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("mirror-routerd is running"),
        "{}",
        text(&out)
    );
    assert_eq!(r.status()["running"], true);
    r.kill9();
    let out = r.ctl(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("mirror-routerd is NOT running"),
        "{}",
        text(&out)
    );
    assert_eq!(r.status()["running"], false);
}

fn site(l: &mirror_tests::Local) -> serde_json::Value {
    l.status()[0].clone()
}

/// Before: `status` showed the last error without its time, as current, long after the site
/// had come back.
#[test]
fn status_gives_the_last_errors_time_and_says_when_it_is_past() {
    let mut r = Router::start();
    let (l, _m, _s) = mirrored(&r, "p", &[]);
    fs::write(l.path("a"), "1").unwrap();
    wait_until(CONVERGE, "a on the backup", || r.path("p/a").exists());
    assert!(site(&l)["last_error"].is_null(), "{}", site(&l));
    r.kill9();
    wait_until(CONVERGE, "a current last error", || {
        let s = site(&l);
        s["last_error"].is_string() && s["last_error_at"].is_u64() && s["recovered_at"].is_null()
    });
    let out = l.ctl(&["status"]);
    let shown = text(&out);
    assert!(shown.contains("  last error at 20"), "{shown}");
    assert!(!shown.contains("last error, past"), "{shown}");
    r.restart();
    wait_until(CONVERGE, "the error to be past", || {
        let s = site(&l);
        s["connected"] == true && s["recovered_at"].is_u64()
    });
    let s = site(&l);
    assert!(
        s["recovered_at"].as_u64() >= s["last_error_at"].as_u64(),
        "{s}"
    );
    let shown = text(&l.ctl(&["status"]));
    assert!(
        shown.contains("  last error, past at 20") && shown.contains("recovered at 20"),
        "{shown}"
    );
    fs::write(l.path("b"), "2").unwrap();
    wait_until(CONVERGE, "b on the backup", || r.path("p/b").exists());
}

/// An adversarial finding of issue 13: `mirrorfs DIR --state TYPO` and `mirror-sendd --state
/// TYPO` each started a new, empty local system and ran on, saying at most "0 rules" at info
/// level. They still start (a first mount may come before the first rule), but warn, naming
/// the directory, in their log and in the new error log.
#[test]
fn daemons_warn_when_their_state_directory_is_new() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("proj");
    fs::create_dir(&dir).unwrap();
    let typo = t.path().join("sttae");
    let m = Mount::start_logging(&dir, None, &typo, t.path(), &[]);
    assert!(
        m.log_text().contains("there was no local system at"),
        "{}",
        m.log_text()
    );
    drop(m);
    let typo2 = t.path().join("sttae2");
    let mut s = mirror_tests::Daemon::spawn(
        "mirror-sendd",
        &[std::ffi::OsStr::new("--state"), typo2.as_os_str()],
        t.path().join("sendd.log"),
    );
    s.wait_log("there was no local system at", CONVERGE);
    let errors = fs::read_to_string(typo2.join("errors.log")).unwrap_or_default();
    assert!(errors.contains("there was no local system at"), "{errors}");
}

/// An adversarial finding of issue 13: `rule add` over a directory of a mirrorfs stopped with
/// SIGSTOP waited for good (in the kernel, for the mount's answer). Now it gives up after 30 s
/// with an error naming the directory.
#[test]
fn rule_add_over_a_stopped_mount_gives_up_naming_the_directory() {
    let l = mirror_tests::Local::new();
    fs::create_dir(l.path("sub")).unwrap();
    let m = l.mount(&[]);
    let sub = format!("{}/", l.path("sub").display());
    let err = ctl_on_stopped_mount(
        &l,
        &m,
        &[
            "rule",
            "add",
            &sub,
            "--site",
            "127.0.0.1:9",
            "--dest",
            "d",
            "--no-validate",
        ],
    );
    assert!(err.contains("does not answer"), "{err}");
    drop(m);
}

/// An adversarial finding of issue 13 (second pass): `mirror-ctl sync PATH` on a mirrorfs
/// stopped with SIGSTOP waited for good, like `rule add` did. Now it gives up after 30 s,
/// naming the path.
#[test]
fn sync_over_a_stopped_mount_gives_up_naming_the_path() {
    let l = mirror_tests::Local::new();
    fs::create_dir(l.path("sub")).unwrap();
    l.add_rule(
        &format!("{}/", l.dir.display()),
        "127.0.0.1:9",
        "d",
        &["--no-sync"],
    );
    let m = l.mount(&[]);
    let err = ctl_on_stopped_mount(&l, &m, &["sync", l.path("sub").to_str().unwrap()]);
    assert!(err.contains("does not answer"), "{err}");
    drop(m);
}

/// Runs `mirror-ctl ARGS` on `l` while its mount `m` is stopped (SIGSTOP): it must end, with
/// an error, within two minutes; what it said on stderr.
fn ctl_on_stopped_mount(l: &mirror_tests::Local, m: &Mount, args: &[&str]) -> String {
    let pid = m.pid() as i32;
    // SAFETY: signals to the mirrorfs this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let mut child = Command::new(bin("mirror-ctl"))
        .arg("--state")
        .arg(&l.state)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = exit_within(&mut child, Duration::from_secs(120));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let status =
        status.unwrap_or_else(|| panic!("mirror-ctl {args:?} waited for good on a stopped mount"));
    let out = child.wait_with_output().unwrap();
    assert!(!status.success(), "mirror-ctl {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The child's exit status once it ends, or `None` (and it is killed) after `limit`.
fn exit_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
