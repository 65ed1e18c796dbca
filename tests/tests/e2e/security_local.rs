//! The local threat model (issue 12, item 2): control sockets are private to their owner,
//! every copy request is checked before a daemon reads anything, and every file of the state
//! directories (source and router) is private after a run.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use mirror_tests::{open_to_others, wait_converged, wait_until, Local, Router};
use mirrorfs::control::{Request, Response};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn state_files_and_sockets_are_private_to_their_owner() {
    let r = Router::start();
    let l = Local::new();
    // A state directory a user made open to everyone is made private at first use.
    fs::set_permissions(&l.state, fs::Permissions::from_mode(0o755)).unwrap();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "p", &[]);
    let m = l.mount(&[]);
    let s = l.sender();
    fs::write(l.path("a"), b"some data").unwrap();
    fs::create_dir(l.path("d")).unwrap();
    fs::write(l.path("d/b"), vec![7u8; 100_000]).unwrap();
    wait_converged(&l.dir, &r.path("p"), LIMIT);
    let out = l.ctl(&["sync", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "mirrorfs.sock",
        "mirror-sendd.sock",
        "rules.db",
        "sfa",
        "keys",
    ] {
        assert!(l.state.join(name).exists(), "{name} was not made");
    }
    assert!(r.state.join("mirror-routerd.sock").exists());
    let mut leaks = open_to_others(&l.state);
    leaks.extend(open_to_others(&r.state));
    assert!(
        leaks.is_empty(),
        "state open to other users:\n{}",
        leaks.join("\n")
    );
    drop(s);
    m.unmount();
}

/// A peer that is neither the owner nor root is refused even where the socket file itself
/// was made reachable (a state directory opened up by hand).
#[test]
fn another_user_cannot_use_a_control_socket() {
    let l = Local::new();
    // No first copy: the journal must stay empty.
    l.add_rule(
        &format!("{}/", l.dir.display()),
        "127.0.0.1:9",
        "p",
        &["--no-sync"],
    );
    let _m = l.mount(&[]);
    let sock = l.state.join("mirrorfs.sock");
    // (mirror-ctl makes the state directory private again, so ask it first.)
    let crc = l.journal_crc_of_rule();
    for p in [l.tmp.path(), l.state.as_path()] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o666)).unwrap();
    let script = format!(
        r#"use IO::Socket::UNIX; $SIG{{PIPE}} = "IGNORE"; my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!";
           print $s '{{"Copy":{{"copies":[[{crc},[47,101,116,99,47,115,104,97,100,111,119]]]}}}}' . "\n";
           my $a = <$s>; print defined $a ? "ANSWER $a" : "CLOSED\n";"#
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "perl",
            "-e",
        ])
        .arg(&script)
        .arg(&sock)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("CLOSED"),
        "a stranger got an answer: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(LIMIT, "the refusal in the error log", || {
        l.error_log()
            .contains("refused a connection from user 65534")
    });
    assert!(l.journal().is_empty(), "nothing was queued");
}

/// The finding: a copy request with any name was accepted and mirror-sendd (root) read
/// `/etc/shadow`. Now every request is checked: normalised, beneath the mount, selected by the
/// rule, through no symlink.
#[test]
fn copy_requests_are_checked_before_anything_is_read() {
    let r = Router::start();
    let l = Local::new();
    // No first copy: only the copies asked for here may reach the journal.
    l.add_rule(
        &format!("{}/", l.dir.display()),
        &r.site(),
        "p",
        &["--no-sync"],
    );
    fs::create_dir(l.path("real")).unwrap();
    fs::write(l.path("real/ok"), b"fine").unwrap();
    std::os::unix::fs::symlink("/etc", l.path("link")).unwrap();
    let _m = l.mount(&[]);
    let crc = l.journal_crc_of_rule();
    let sock = l.state.join("mirrorfs.sock");
    let mount = l.dir.display().to_string();
    for bad in [
        format!("{mount}/../../../etc/shadow"),
        "/etc/shadow".to_string(),
        format!("{mount}/link/shadow"),
        format!("{mount}//real/ok"),
    ] {
        let req = Request::Copy {
            copies: vec![(crc, bad.clone().into_bytes())],
            quick: false,
        };
        match mirrorfs::control::request::<_, Response>(&sock, &req).unwrap() {
            Response::Error { reason } => assert!(reason.contains("copy refused"), "{reason}"),
            other => panic!("copy of {bad} was accepted: {other:?}"),
        }
    }
    let req = Request::Copy {
        copies: vec![(crc ^ 1, format!("{mount}/real/ok").into_bytes())],
        quick: false,
    };
    assert!(matches!(
        mirrorfs::control::request::<_, Response>(&sock, &req).unwrap(),
        Response::Error { .. }
    ));
    assert!(l.journal().is_empty(), "a refused copy reached the journal");
    let req = Request::Copy {
        copies: vec![(crc, format!("{mount}/real/ok").into_bytes())],
        quick: false,
    };
    assert!(matches!(
        mirrorfs::control::request::<_, Response>(&sock, &req).unwrap(),
        Response::Queued { .. }
    ));
    let _s = l.sender();
    wait_until(LIMIT, "the good copy", || r.path("p/real/ok").exists());
    // Nothing of /etc reached the router, not even its logs.
    let shadow = fs::read("/etc/shadow").unwrap_or_default();
    if shadow.len() > 16 {
        for e in fs::read_dir(r.state.join("rt")).unwrap().flatten() {
            let data = fs::read(e.path()).unwrap();
            assert!(
                !data.windows(16).any(|w| w == &shadow[..16]),
                "{} holds bytes of /etc/shadow",
                e.path().display()
            );
        }
    }
}

/// The finding (a local user, no root): a directory renamed into a rule and swapped for a
/// symlink to a root-only directory while its copy runs made mirror-sendd read the root-only
/// file through the symlink and ship it. Every read of a copy is now beneath the rule's base
/// through no symlink.
#[test]
fn a_directory_swapped_for_a_symlink_during_its_copy_leaks_nothing() {
    let r = Router::start();
    let l = Local::new();
    let inside = l.path("r1");
    let outside = l.path("un");
    fs::create_dir_all(&inside).unwrap();
    fs::create_dir_all(&outside).unwrap();
    l.add_rule(&format!("{}/", inside.display()), &r.site(), "d1", &[]);
    let secret_dir = l.tmp.path().join("rootonly");
    fs::create_dir(&secret_dir).unwrap();
    fs::write(secret_dir.join("secret"), b"ROOT-ONLY-SECRET").unwrap();
    let _m = l.mount(&[]);
    let _s = l.sender();
    for n in 0..60 {
        let x = outside.join(format!("x{n}"));
        fs::create_dir(&x).unwrap();
        fs::write(x.join("secret"), b"decoy").unwrap();
        let inner = inside.join(format!("x{n}"));
        fs::rename(&x, &inner).unwrap();
        fs::rename(&inner, inside.join(format!("x{n}.old"))).unwrap();
        std::os::unix::fs::symlink(&secret_dir, &inner).unwrap();
    }
    fs::write(inside.join("marker"), b"m").unwrap();
    wait_converged(&inside, &r.path("d1"), LIMIT);
    let leaked: Vec<String> = mirror_tests::tree(&r.root)
        .into_iter()
        .filter(|(rel, _)| {
            fs::read(r.root.join(rel)).is_ok_and(|d| d.windows(6).any(|w| w == b"SECRET"))
        })
        .map(|(rel, _)| rel)
        .collect();
    assert!(
        leaked.is_empty(),
        "root-only bytes in the backup: {leaked:?}"
    );
}

/// A key file others can read (made by hand, or copied with a loose umask) is reported: whoever
/// reads it can pose as the sites it names.
#[test]
fn a_key_file_open_to_others_is_reported() {
    let l = Local::new();
    l.add_rule(&format!("{}/", l.dir.display()), "127.0.0.1:9", "w", &[]);
    let keys = l.state.join("keys");
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o644)).unwrap();
    let _s = l.sender();
    wait_until(
        Duration::from_secs(30),
        "the warning in the error log",
        || l.error_log().contains("is open to other users (mode 644)"),
    );
    let out = l.ctl(&["key", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
