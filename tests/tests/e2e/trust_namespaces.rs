//! Trust between sites (issue 12, items 1 and 11): a key grants its source a namespace under
//! the router's root, so one site can never write or delete another's backup; site ids fit
//! for a directory name; keys made before namespaces are reported; two rules of one source
//! never share a backup file.

use std::fs;
use std::process::Command;
use std::time::Duration;

use mirror_tests::{bin, succeeded, wait_converged, wait_until, Local, Router, TEST_KEY};

use crate::outage_faults::run;

const CONVERGE: Duration = Duration::from_secs(60);

/// The finding: site A, with its own valid key, adds a rule whose `--dest` is the one site B
/// mirrors to; before namespaces A's writes and deletes landed in B's backup.
#[test]
fn a_site_writes_only_beneath_its_namespace() {
    let r = Router::start();
    let a = Local::new();
    let b = Local::new();
    a.set_site_id("laptop");
    b.set_site_id("desk");
    r.trust("laptop");
    r.trust("desk");
    // A key makes no directory: an empty root stays empty.
    assert_eq!(fs::read_dir(&r.root).unwrap().count(), 0);
    b.add_rule_validated(&format!("{}/", b.dir.display()), &r.site(), "proj", &[]);
    a.add_rule_validated(&format!("{}/", a.dir.display()), &r.site(), "proj", &[]);
    let (_ma, _mb) = (a.mount(&[]), b.mount(&[]));
    let (_sa, _sb) = (a.sender(), b.sender());
    fs::write(b.path("f1.txt"), "desk's own").unwrap();
    fs::write(b.path("keep.txt"), "desk keeps this").unwrap();
    wait_converged(&b.dir, &r.path("desk/proj"), CONVERGE);
    // A writes the same names, then deletes one.
    fs::write(a.path("f1.txt"), "laptop's").unwrap();
    fs::write(a.path("keep.txt"), "laptop's too").unwrap();
    fs::remove_file(a.path("keep.txt")).unwrap();
    wait_converged(&a.dir, &r.path("laptop/proj"), CONVERGE);
    wait_converged(&b.dir, &r.path("desk/proj"), CONVERGE);
    assert_eq!(
        fs::read_to_string(r.path("desk/proj/keep.txt")).unwrap(),
        "desk keeps this"
    );
    assert!(
        !r.path("proj").exists(),
        "nothing lands outside a namespace"
    );

    // The operator moves A's namespace; its next changes land there, with no restart.
    succeeded(&r.ctl(&["namespace", "laptop", "shared/laptop"]));
    fs::write(a.path("after.txt"), "moved").unwrap();
    wait_until(CONVERGE, "after.txt under the new namespace", || {
        fs::read_to_string(r.path("shared/laptop/proj/after.txt")).is_ok_and(|s| s == "moved")
    });
    assert!(!r.path("laptop/proj/after.txt").exists());
    a.assert_no_errors();
    b.assert_no_errors();
}

#[test]
fn router_key_add_grants_a_namespace_and_prints_only_the_key() {
    let r = Router::start();
    let out = r.ctl(&["key", "add", "laptop"]);
    let stdout = succeeded(&out);
    assert_eq!(
        stdout.trim().len(),
        64,
        "only the key on stdout: {stdout:?}"
    );
    assert!(stdout.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    succeeded(&r.ctl(&["key", "add", "peer", "--namespace", "."]));
    let listed = succeeded(&r.ctl(&["key", "list"]));
    assert!(listed.contains("laptop  namespace laptop"), "{listed}");
    assert!(listed.contains("peer  namespace ."), "{listed}");
    // Site ids unfit for a directory name are refused, and so are namespaces that leave the root.
    for bad in [".", "..", "a/b", "-x", "a b", "*"] {
        let out = r.ctl(&["key", "add", "--", bad]);
        assert!(!out.status.success(), "router key add {bad:?} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("invalid source site id"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for bad in ["../x", "/etc", "a//b", ""] {
        let out = r.ctl(&["key", "add", "laptop", "--namespace", bad]);
        assert!(!out.status.success(), "namespace {bad:?} was accepted");
    }
    let out = r.ctl(&["namespace", "nobody", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no key"));
}

#[test]
fn an_invalid_site_id_is_refused_by_the_sender_and_the_router() {
    let l = Local::new();
    l.set_site_id("..");
    let mut child = Command::new(bin("mirror-sendd"))
        .arg("--state")
        .arg(&l.state)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    wait_until(
        Duration::from_secs(20),
        "mirror-sendd to refuse the site id",
        || {
            status = child.try_wait().unwrap();
            if status.is_none() && l.state.join("mirror-sendd.sock").exists() {
                // It started with the invalid id: stop it and fail below.
                let _ = child.kill();
            }
            status.is_some()
        },
    );
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.unwrap().success());
    assert!(err.contains("site id \"..\" is not valid"), "{err}");
}

#[test]
fn keys_made_before_namespaces_are_reported_as_unconfined() {
    let mut r = Router::start();
    // A key line as written before namespaces: `SITE KEY`.
    let keys = r.state.join("keys");
    let mut text = fs::read_to_string(&keys).unwrap();
    text.push_str(&format!("old-site {TEST_KEY}\n"));
    fs::write(&keys, text).unwrap();
    r.restart();
    wait_until(Duration::from_secs(10), "the warning at start", || {
        r.error_log()
            .contains("the key of source site old-site is unconfined")
    });
    let st = r.status();
    let old = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["site"] == "old-site")
        .cloned()
        .unwrap();
    assert_eq!(old["unconfined"], true, "{st}");
    let text = succeeded(&r.ctl(&["status"]));
    assert!(text.contains("UNCONFINED key of source old-site"), "{text}");
    // Confining it takes it off the list.
    succeeded(&r.ctl(&["namespace", "old-site", "old-site"]));
    let st = r.status();
    assert!(st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["unconfined"] == false));
}

/// Finding 11: with `/p/` → `proj`, a second rule `/p/f1.txt --dest proj/f2.txt` was accepted
/// and overwrote the backup of f2.txt with f1.txt's content.
#[test]
fn two_rules_of_one_site_never_share_a_backup_file() {
    let r = Router::start();
    let l = Local::new();
    let site = r.site();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &site, "proj", &[]);
    let f1 = format!("{}/f1.txt", l.dir.display());
    for dest in ["proj/f2.txt", "proj", "."] {
        let out = l.ctl(&[
            "rule",
            "add",
            &f1,
            "--site",
            &site,
            "--dest",
            dest,
            "--no-validate",
        ]);
        if dest == "." {
            // Not a destination at all.
            assert!(!out.status.success());
            continue;
        }
        assert!(!out.status.success(), "--dest {dest} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("overlaps destination proj of rule 1"), "{err}");
    }
    // Another site, or a destination beside it, is fine.
    l.add_rule(&f1, &site, "proj2/f1.txt", &[]);

    // The router checks too, whatever a source's database holds: a rule stored as a version
    // without this check could (straight into rules.db), overlapping rule 1.
    {
        let conn = rusqlite::Connection::open(l.state.join("rules.db")).unwrap();
        let pattern = mirrorfs::rule::Pattern::parse(&f1).unwrap();
        let dest = mirrorfs::rule::Dest::parse("proj/f2.txt").unwrap();
        let sites = [mirrorfs::rule::Site::parse(&site).unwrap()];
        let crc = mirrorfs::rule::rule_crc(&pattern, &dest, &sites);
        conn.execute(
            "INSERT INTO rules (pattern, dest, attrs, delete_suffix, mode, crc, created_ns)
             VALUES (?1, 'proj/f2.txt', 0, NULL, 'async', ?2, 0)",
            rusqlite::params![f1, crc as i64],
        )
        .unwrap();
        let id = conn.last_insert_rowid();
        conn.execute(
            "INSERT INTO rule_sites (rule_id, site, pos) VALUES (?1, ?2, 0)",
            rusqlite::params![id, site],
        )
        .unwrap();
    }
    let _m = l.mount(&[]);
    let _s = l.sender();
    fs::write(l.path("f1.txt"), "one").unwrap();
    wait_until(
        CONVERGE,
        "the router's refusal in the site's status",
        || {
            l.status().as_array().unwrap().iter().any(|s| {
                s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("would write the same backup files"))
            })
        },
    );
    assert!(r.error_log().contains("would write the same backup files"));
    assert!(
        !r.path("proj/f2.txt").exists(),
        "the refused configuration wrote nothing"
    );
}

/// A namespace the operator (or anyone on the backup host) turned into a symlink is never
/// followed: validation says so, entries are refused, logged with the site and the path, and
/// the source's status shows why.
#[test]
fn a_namespace_through_a_symlink_is_refused_and_the_source_is_told() {
    let r = Router::start();
    let l = Local::new();
    l.set_site_id("laptop");
    r.trust("laptop");
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), r.root.join("laptop")).unwrap();
    let pattern = format!("{}/", l.dir.display());
    let out = l.ctl(&[
        "rule",
        "add",
        &pattern,
        "--site",
        &r.site(),
        "--dest",
        "proj",
    ]);
    assert!(
        !out.status.success(),
        "validation accepted a symlinked namespace"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("symbolic link"), "{err}");
    l.add_rule(&pattern, &r.site(), "proj", &[]);
    let _m = l.mount(&[]);
    let _s = l.sender();
    fs::write(l.path("x"), "secret").unwrap();
    wait_until(CONVERGE, "the refusal in the source's status", || {
        l.status().as_array().unwrap().iter().any(|s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("refused") && e.contains("from laptop"))
        })
    });
    assert!(r.error_log().contains("from laptop"), "{}", r.error_log());
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

/// The finding: `router key add web1 --namespace hosts/web1` then `router key add hosts`
/// (namespace `hosts`) let site hosts overwrite and delete web1's backups with `--dest
/// web1/...`. A namespace inside (or around) another site's is refused; the same one given
/// to both is sharing on purpose, and so is the whole root (`.`, a two-way peer's).
#[test]
fn nested_namespaces_of_two_sites_are_refused() {
    let r = Router::start();
    succeeded(&r.ctl(&["key", "add", "web1", "--namespace", "hosts/web1"]));
    for args in [
        &["key", "add", "hosts"][..],
        &["key", "add", "other", "--namespace", "hosts/web1/etc"],
    ] {
        let out = r.ctl(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("would nest with namespace"), "{err}");
    }
    succeeded(&r.ctl(&["key", "add", "web2", "--namespace", "hosts/web2"]));
    succeeded(&r.ctl(&["key", "add", "twin", "--namespace", "hosts/web1"]));
    let out = r.ctl(&["namespace", "web2", "hosts"]);
    assert!(!out.status.success());
    let out = r.ctl(&["key", "add", "peer", "--namespace", "."]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("may write anywhere under the root"));
    let listed = succeeded(&r.ctl(&["key", "list"]));
    assert!(!listed.contains("hosts/web1/etc"), "{listed}");
}

/// The finding: `router key rm SITE` while SITE's session was open left the session taking
/// (and acknowledging) entries, and the router dropped every entry it then applied as
/// "refused": the source believed them mirrored. Now the session ends at once, entries it
/// acknowledged before are held (not dropped), and adding the key back brings everything.
#[test]
fn a_key_removed_during_a_session_loses_nothing() {
    let r = Router::start();
    let l = Local::new();
    l.set_site_id("laptop");
    r.trust("laptop");
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "w", &[]);
    let _m = l.mount(&[]);
    let _s = l.sender();
    fs::write(l.path("held.txt"), "one").unwrap();
    fs::write(l.path("f1.txt"), "one").unwrap();
    wait_converged(&l.dir, &r.path("laptop/w"), CONVERGE);

    // An entry acknowledged and not applied yet when the key goes: its backup file cannot
    // be written for now.
    let backup = r.path("laptop/w/held.txt");
    run("chattr", &["+i", backup.to_str().unwrap()]);
    fs::write(l.path("held.txt"), "two, acknowledged before the key went").unwrap();
    wait_until(CONVERGE, "held.txt to be blocked", || {
        r.blocked_paths().iter().any(|p| p == "laptop/w/held.txt")
    });
    succeeded(&r.ctl(&["key", "rm", "laptop"]));
    run("chattr", &["-i", backup.to_str().unwrap()]);
    succeeded(&r.ctl(&["unblock"]));
    wait_until(CONVERGE, "the held entry to wait for a key", || {
        r.blocked_paths()
            .iter()
            .any(|p| p.contains("no key") && p.contains("laptop"))
    });

    // Changes after the key went are not acknowledged: the source keeps them and says why.
    fs::write(l.path("f2.txt"), "written after the key went").unwrap();
    wait_until(CONVERGE, "the source to be told it has no key", || {
        l.status().as_array().unwrap().iter().any(|s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("no key"))
        })
    });
    assert!(!r.path("laptop/w/f2.txt").exists());
    assert_eq!(fs::read_to_string(&backup).unwrap(), "one");

    // The key comes back: what was held and what waited at the source arrive.
    r.trust("laptop");
    wait_converged(&l.dir, &r.path("laptop/w"), CONVERGE);
    wait_until(CONVERGE, "nothing blocked", || r.blocked_paths().is_empty());
}

/// An adversarial finding of issue 13: with a namespace of the whole root (`.`), a rule
/// whose `--dest` lies under `.mirror-staging/` (where the router builds copies) was accepted
/// by `rule add`'s check with the router, and every entry for it was then refused when
/// applied. Now the check refuses it, naming the reason.
#[test]
fn rule_add_refuses_a_dest_where_the_router_builds_copies() {
    let r = Router::start();
    let l = Local::new();
    l.set_site_id("laptop");
    r.trust("laptop");
    succeeded(&r.ctl(&["namespace", "laptop", "."]));
    let out = l.ctl(&[
        "rule",
        "add",
        &format!("{}/", l.dir.display()),
        "--site",
        &r.site(),
        "--dest",
        ".mirror-staging/x",
    ]);
    assert!(!out.status.success(), "accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("where the router builds copies"), "{err}");
}
