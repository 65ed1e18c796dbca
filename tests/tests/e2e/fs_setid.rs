//! Set-id bits after a change by a user who is not root (issue 12, item 16; xfstests
//! generic/193 and generic/355): ext4 clears the set-user-id bit, and the set-group-id bit of
//! a group-executable file, when such a user writes or truncates the file; through mirrorfs
//! (which works as root underneath) the bits must go the same way, and so must the backup's.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use mirror_tests::Local;

/// Runs perl `code` as user nobody with `$f` = `file` (or, for `dd`, dd writing one aligned
/// block into `file` with O_DIRECT; for `fallocate`, fallocate(1) growing it by a block); panics
/// if it fails.
fn as_nobody(code: &str, file: &Path) {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    if code == "dd" {
        cmd.args([
            "dd",
            "if=/dev/zero",
            "bs=4096",
            "count=1",
            "oflag=direct",
            "conv=notrunc",
        ])
        .arg(format!("of={}", file.display()));
    } else if code == "fallocate" {
        cmd.args(["fallocate", "-o", "8192", "-l", "4096"])
            .arg(file);
    } else {
        cmd.args(["perl", "-e"])
            .arg(format!("my $f = $ARGV[0]; {code}"))
            .arg(file);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{code}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const CHANGES: &[(&str, &str)] = &[
    (
        "write",
        r#"open(my $h, ">>", $f) or die "$!"; print $h "x"; close($h) or die "$!";"#,
    ),
    (
        "open-truncate",
        r#"open(my $h, ">", $f) or die "$!"; close($h) or die "$!";"#,
    ),
    ("truncate", r#"truncate($f, 1) or die "$!";"#),
    ("direct-write", "dd"),
    ("fallocate", "fallocate"),
];

/// The modes each change leaves, on the directory `dir`.
fn modes_after_changes(dir: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for (what, code) in CHANGES {
        for start in [0o6777, 0o6767, 0o4777, 0o2767, 0o2777] {
            let f = dir.join(format!("{what}-{start:o}"));
            fs::write(&f, vec![1u8; 8192]).unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(start)).unwrap();
            as_nobody(code, &f);
            let mode = fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
            out.push((format!("{what} of a file {start:o}"), mode));
        }
    }
    out
}

#[test]
fn a_change_by_another_user_clears_set_id_bits_as_on_ext4() {
    let l = Local::new();
    l.add_rule(
        &format!("{}/", l.dir.display()),
        "127.0.0.1:9",
        "d",
        &["--attrs"],
    );
    // Others must reach the files.
    fs::set_permissions(l.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&l.dir, fs::Permissions::from_mode(0o777)).unwrap();
    let plain = l.path("plain");
    fs::create_dir(&plain).unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o777)).unwrap();
    let want = modes_after_changes(&plain);
    // What ext4 does (the premise of the test).
    assert!(
        want.iter().all(|(_, m)| m & 0o4000 == 0),
        "ext4 kept a set-user-id bit: {want:?}"
    );
    let m = l.mount(&[]);
    let mounted = l.path("mounted");
    fs::create_dir(&mounted).unwrap();
    fs::set_permissions(&mounted, fs::Permissions::from_mode(0o777)).unwrap();
    let got = modes_after_changes(&mounted);
    let shown = |v: &[(String, u32)]| {
        v.iter()
            .map(|(w, m)| format!("{w}: {m:o}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(shown(&got), shown(&want));
    // The journal says so too: the last mode each file was given has no set-id bit left
    // where ext4 cleared it.
    let mut last = std::collections::BTreeMap::new();
    for e in l.journal() {
        if e.command == mirrorfs::entry::Command::SetAttr {
            if let Some(mode) = mirrorfs::entry::AttrChange::decode(&e.data).and_then(|a| a.mode) {
                last.insert(mirror_tests::rel(&l.dir, &e.name), mode);
            }
        }
    }
    for (what, mode) in &want {
        let (op, start) = what.rsplit_once(" of a file ").unwrap();
        let name = format!("mounted/{op}-{start}");
        assert_eq!(
            last.get(&name).copied(),
            Some(*mode),
            "the journal's last mode of {name}"
        );
    }
    m.unmount();
}
