//! The README's test command on a fresh machine (issue 13 item 8): `scripts/test-all.sh` first
//! runs `scripts/test-deps.sh`, which installs what the tests need (system packages,
//! pjdfstest, the fsgqa user) and nothing when everything is there. Checked here with the
//! real script and stand-ins for `apt-get`, `cargo install` and `useradd` that only record
//! what they were asked, on a PATH that lacks some tools (a fresh machine) or has them all.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-deps.sh")
}

/// Where `name` is on this process's PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")))
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

/// The tools the script looks for (scripts/test-deps.sh), besides those it installs with.
const TOOLS: &[&str] = &[
    "fusermount3",
    "getfattr",
    "ip",
    "nft",
    "mkfs.ext4",
    "chattr",
    "losetup",
    "setpriv",
    "pkg-config",
    "git",
    "cc",
    "setfacl",
    "rsync",
    "rclone",
    "pjdfstest",
    "cargo",
    "id",
];

/// A directory to use as the whole PATH: links to this machine's `TOOLS` but `without`, and
/// recording stand-ins for the commands that install (`apt-get`, `useradd`, and `cargo`
/// itself when `cargo` is left out of the links).
fn fake_path(dir: &Path, without: &[&str], record: &Path) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    for t in TOOLS.iter().filter(|t| !without.contains(t)) {
        let real = which(t).unwrap_or_else(|| panic!("{t} is not installed here"));
        std::os::unix::fs::symlink(real, bin.join(t)).unwrap();
    }
    let mut stand_ins = vec!["apt-get", "useradd", "modprobe"];
    if without.contains(&"cargo") {
        stand_ins.push("cargo");
    }
    for s in stand_ins {
        let p = bin.join(s);
        fs::write(
            &p,
            format!("#!/bin/sh\necho \"{s} $*\" >> '{}'\n", record.display()),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

fn run_script(path: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new("/bin/bash")
        .arg(script())
        .args(args)
        .env_clear()
        .env("PATH", path)
        .env("HOME", home)
        .output()
        .expect("run scripts/test-deps.sh")
}

fn fsgqa_exists() -> bool {
    Command::new("id")
        .arg("fsgqa")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_test_setup_installs_what_a_fresh_machine_lacks_and_nothing_on_a_second_run() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    fs::create_dir(&home).unwrap();

    // Everything there (this machine, as the tests need it): nothing is installed.
    let record = tmp.path().join("all.log");
    let all = fake_path(&tmp.path().join("all"), &[], &record);
    let out = run_script(&all, &home, &[]);
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("everything the tests need is installed"),
        "{said}"
    );
    let calls = fs::read_to_string(&record).unwrap_or_default();
    if fsgqa_exists() {
        assert_eq!(calls, "", "a run with everything there installed something");
    }

    // A machine without fuse3, iproute2 and pjdfstest: `--check` names them and installs
    // nothing; a run installs exactly them (`cargo` is a stand-in here, so that pjdfstest is
    // not really built).
    let record = tmp.path().join("fresh.log");
    let fresh = fake_path(
        &tmp.path().join("fresh"),
        &["fusermount3", "ip", "pjdfstest", "cargo"],
        &record,
    );
    let out = run_script(&fresh, &home, &["--check"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("fuse3") && said.contains("iproute2") && said.contains("pjdfstest"),
        "{said}"
    );
    assert!(!record.exists(), "--check installed something");
    let out = run_script(&fresh, &home, &[]);
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let calls = fs::read_to_string(&record).unwrap();
    let lines: Vec<&str> = calls
        .lines()
        .filter(|l| !l.starts_with("useradd"))
        .collect();
    assert_eq!(
        lines,
        [
            "apt-get update -qq",
            "apt-get install -y -qq fuse3 iproute2",
            "cargo install --locked --quiet pjdfstest",
        ],
        "{calls}"
    );
    let _ = fs::remove_file(&record);

    // Without cargo the script says how to get Rust (it cannot install the toolchain).
    let bare = fake_path(
        &tmp.path().join("bare"),
        &["cargo"],
        &tmp.path().join("bare.log"),
    );
    fs::remove_file(bare.join("cargo")).unwrap();
    let out = run_script(&bare, &home, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rustup"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
