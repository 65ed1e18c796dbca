//! Executable bits without `--attrs` (issue 13 item 7): every rule mirrors the permission bits
//! rwx, so a program built in a mirrored tree runs from the backup, a script stays executable,
//! and git in the backup sees no mode change (before issue 12 the bits were dropped: git
//! reported mode changes and a built binary could not run from the backup).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use mirror_tests::{wait_converged, Router};

use crate::mirror_ops::mirrored;

const CONVERGE: Duration = Duration::from_secs(60);

fn run(dir: &Path, cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} (scripts/test-deps.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} in {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn git(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec![
        "--no-optional-locks",
        "-c",
        "user.name=mirror test",
        "-c",
        "user.email=test@example.invalid",
    ];
    all.extend_from_slice(args);
    run(dir, "git", &all)
}

/// Every regular file and directory under `dir` (relative) with its permission bits.
fn modes(dir: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            if m.is_dir() || m.is_file() {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, m.mode() & 0o7777));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn without_attrs_a_built_program_runs_from_the_backup_and_git_sees_no_mode_change() {
    let r = Router::start();
    let (l, _m, _s) = mirrored(&r, "code", &[]);
    git(&l.dir, &["init", "-q"]);
    fs::write(
        l.path("hello.c"),
        "#include <stdio.h>\nint main(void) { puts(\"hello from the backup\"); return 0; }\n",
    )
    .unwrap();
    run(&l.dir, "cc", &["-o", "hello", "hello.c"]);
    fs::write(l.path("tool.sh"), "#!/bin/sh\necho tool ok\n").unwrap();
    fs::set_permissions(l.path("tool.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(l.path("secret.txt"), "s").unwrap();
    fs::set_permissions(l.path("secret.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    git(&l.dir, &["add", "-A"]);
    git(
        &l.dir,
        &["commit", "-q", "-m", "a program, a script, a private file"],
    );
    assert_eq!(fs::metadata(l.path("hello")).unwrap().mode() & 0o111, 0o111);
    let backup = r.path("code");
    wait_converged(&l.dir, &backup, CONVERGE);
    // A chmod may still be on its way when the contents are there.
    mirror_tests::wait_until(CONVERGE, "the same permission bits on the backup", || {
        modes(&l.dir) == modes(&backup)
    });

    // The program and the script run from the backup.
    let out = run(&backup, &backup.join("hello").to_string_lossy(), &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the backup\n"
    );
    let out = run(&backup, &backup.join("tool.sh").to_string_lossy(), &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tool ok\n");
    // git in the backup: no mode change, nothing modified, and the repository is whole.
    let out = git(&backup, &["status", "--porcelain"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "git status in the backup"
    );
    let out = git(&backup, &["diff", "--summary"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "git diff in the backup"
    );
    git(&backup, &["fsck", "--no-progress"]);

    // A chmod reaches the backup, and git sees it as the source's git does.
    fs::set_permissions(l.path("tool.sh"), fs::Permissions::from_mode(0o640)).unwrap();
    let want = String::from_utf8_lossy(&git(&l.dir, &["diff", "--summary"]).stdout).into_owned();
    assert!(want.contains("mode change 100755 => 100644"), "{want}");
    mirror_tests::wait_until(CONVERGE, "the chmod on the backup", || {
        fs::metadata(backup.join("tool.sh")).is_ok_and(|m| m.mode() & 0o7777 == 0o640)
    });
    let got = String::from_utf8_lossy(&git(&backup, &["diff", "--summary"]).stdout).into_owned();
    assert_eq!(got, want);
    l.assert_no_errors();
    assert!(r.error_log().trim().is_empty(), "{}", r.error_log());
}

/// The finding (adversarial pass): permission bits set through the access ACL (`setfacl`,
/// `cp -a`) were not mirrored by a rule without `--attrs` (a chmod's are): the backup kept the
/// old mode. They are recorded as a mode change for every rule now.
#[test]
fn permission_bits_set_through_an_acl_reach_the_backup_without_attrs() {
    use std::os::unix::fs::PermissionsExt;
    let r = mirror_tests::Router::start();
    let (l, m, _s) = crate::mirror_ops::mirrored(&r, "acl", &[]);
    std::fs::write(l.path("f"), b"x").unwrap();
    std::fs::set_permissions(l.path("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = std::process::Command::new("setfacl")
        // A named user: an extended ACL (set as the xattr), whose mask is the group bits.
        .args(["-m", "u:nobody:r,g::r-x,o::r--"])
        .arg(l.path("f"))
        .output()
        .expect("setfacl (apt-get install acl)");
    mirror_tests::succeeded(&out);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let source = mode(&l.path("f"));
    assert_eq!(source, 0o654, "the ACL set the mode");
    mirror_tests::wait_until(
        std::time::Duration::from_secs(60),
        "the mode in the backup",
        || {
            std::fs::metadata(r.path("acl/f"))
                .is_ok_and(|m| m.permissions().mode() & 0o7777 == source)
        },
    );
    drop(m);
}
