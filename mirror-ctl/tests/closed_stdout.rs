//! Issue 12 item 17: every mirror-ctl command that prints ends quietly when its standard
//! output is closed early (`mirror-ctl status | head -2`): exit status 0 or death by SIGPIPE,
//! as `ls` or `cat` end, and never a panic.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs mirror-ctl with `args` and a standard output whose reading end is already closed, so
/// its first write fails; returns its exit status and standard error.
fn run_with_closed_stdout(state: &Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two descriptors, which are then owned here.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fds[0] and fds[1] are open descriptors that nothing else owns.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_mirror-ctl"))
        .arg("--state")
        .arg(state)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_command_ends_quietly_when_its_stdout_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let router = tmp.path().join("router");
    let src = tmp.path().join("proj");
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::create_dir_all(router.join("rt")).unwrap();
    let other_pattern = format!("{}/", other.display());
    let pattern = format!("{}/", src.display());
    let add = Command::new(env!("CARGO_BIN_EXE_mirror-ctl"))
        .arg("--state")
        .arg(&state)
        .args([
            "rule",
            "add",
            &pattern,
            "--site",
            "127.0.0.1:9",
            "--dest",
            "d",
        ])
        .arg("--no-validate")
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let key = "6d6972726f722d746573742d6b65792d6d6972726f722d746573742d6b657921";
    let commands: Vec<(&Path, Vec<&str>)> = vec![
        (&state, vec!["status"]),
        (&state, vec!["status", "--json"]),
        (&state, vec!["rule", "list"]),
        (&state, vec!["rule", "list", "--json"]),
        (
            &state,
            vec![
                "rule",
                "add",
                &other_pattern,
                "--site",
                "127.0.0.1:9",
                "--dest",
                "e",
                "--no-validate",
            ],
        ),
        (&state, vec!["key", "add", "127.0.0.1:9", key]),
        (&state, vec!["key", "list"]),
        (&router, vec!["router", "status"]),
        (&router, vec!["router", "status", "--json"]),
        (&router, vec!["router", "key", "add", "laptop"]),
        (&state, vec!["--help"]),
        (&state, vec!["--version"]),
    ];
    for (dir, args) in commands {
        let (status, stderr) = run_with_closed_stdout(dir, &args);
        let quiet = status.success() || status.signal() == Some(libc::SIGPIPE);
        assert!(
            quiet && !stderr.contains("panicked"),
            "mirror-ctl {}: {status}, stderr: {stderr}",
            args.join(" ")
        );
    }
}
