//! Verify (issue 16, item 3): `mirror-ctl verify` compares what the rules select with its
//! backup, as of a journal position. On a prepared backup (a block changed on the router, a
//! file deleted there, an orphan planted under the rule's destination, a file being written
//! while the verify runs) each category gets its mark and the exit status is 1; `--repair
//! --orphans delete` makes it all the same and a second verify exits 0; a kept version is no
//! orphan; a router that is down is exit status 2; `--json` is one object per line.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mirror_tests::{assert_log_only, wait_converged, wait_until, Local, Router};

use crate::mirror_ops::mirrored;

const CONVERGE: Duration = Duration::from_secs(60);

fn verify(l: &Local, args: &[&str]) -> Output {
    let mut a = vec!["verify"];
    a.extend_from_slice(args);
    l.ctl(&a)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The mark of the line for `path` in a text report (panics if there is none).
fn mark_of(report: &str, path: &std::path::Path) -> (char, String) {
    let p = path.display().to_string();
    report
        .lines()
        .find_map(|l| {
            let (mark, rest) = l.split_once(' ')?;
            let rest_path = rest.split(" (").next()?;
            (rest_path == p).then(|| (mark.chars().next().unwrap_or('?'), l.to_string()))
        })
        .unwrap_or_else(|| panic!("no line for {p} in:\n{report}"))
}

/// Waits until nothing under `dir` changed for a moment: a verify counts names changed just
/// before it started as in flight (change times are coarse).
fn settled(dir: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    wait_until(CONVERGE, "the source unchanged for 300 ms", || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        let m = fs::metadata(dir).unwrap();
        let mut newest = m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let m = fs::symlink_metadata(e.path()).unwrap();
                newest = newest.max(m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128);
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
        now - newest > 300_000_000
    });
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn verify_reports_each_category_and_repair_makes_it_all_the_same() {
    let r = Router::start();
    let (l, _m, _s) = mirrored(&r, "proj", &[]);
    fs::write(l.path("same.txt"), b"the same on both sides\n").unwrap();
    fs::write(l.path("big.bin"), data(1 << 20, 7)).unwrap();
    fs::write(l.path("short.bin"), data(300 * 4096, 3)).unwrap();
    fs::write(l.path("gone.txt"), b"deleted on the backup\n").unwrap();
    fs::create_dir_all(l.path("sub/empty")).unwrap();
    fs::write(l.path("sub/x"), b"x").unwrap();
    fs::hard_link(l.path("sub/x"), l.path("sub/y")).unwrap();
    std::os::unix::fs::symlink("sub/x", l.path("sym")).unwrap();
    fs::create_dir(l.path("busy")).unwrap();
    fs::write(l.path("busy/log"), b"start\n").unwrap();
    wait_converged(&l.dir, &r.path("proj"), CONVERGE);
    settled(&l.dir);

    // All the same first.
    let out = verify(&l, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let report = stdout(&out);
    for f in ["same.txt", "big.bin", "sub/x", "sub/y", "sym", "busy/log"] {
        assert_eq!(mark_of(&report, &l.path(f)).0, '=', "{f}: {report}");
    }

    // The backup prepared behind the source's back.
    let backup = fs::OpenOptions::new()
        .write(true)
        .open(r.path("proj/big.bin"))
        .unwrap();
    backup.write_all_at(b"changed", 3 * 4096 + 5).unwrap();
    backup.write_all_at(b"changed", 200 * 4096).unwrap();
    drop(backup);
    fs::remove_file(r.path("proj/gone.txt")).unwrap();
    fs::write(r.path("proj/orphan.txt"), b"no source file\n").unwrap();
    // Cut short there: its checksums start at another level of the tree than the source's.
    fs::File::options()
        .write(true)
        .open(r.path("proj/short.bin"))
        .unwrap()
        .set_len(30 * 4096)
        .unwrap();
    fs::remove_dir(r.path("proj/sub/empty")).unwrap();
    fs::remove_file(r.path("proj/sym")).unwrap();
    std::os::unix::fs::symlink("elsewhere", r.path("proj/sym")).unwrap();
    // sub/y is no longer a hard link of sub/x there (same bytes).
    fs::remove_file(r.path("proj/sub/y")).unwrap();
    fs::write(r.path("proj/sub/y"), b"x").unwrap();

    // A file written all through the verify.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let p = l.path("busy/log");
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
            let mut n = 0u64;
            // Bounded: the verify ends long before.
            while !stop.load(Ordering::Relaxed) && n < 200_000 {
                writeln!(f, "line {n}").unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    wait_until(CONVERGE, "the writer writing", || {
        fs::metadata(l.path("busy/log")).is_ok_and(|m| m.len() > 64)
    });
    let out = verify(&l, &[]);
    let json = verify(&l, &["--json"]);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report}{}", stderr(&out));
    assert_eq!(mark_of(&report, &l.path("same.txt")).0, '=', "{report}");
    let (m, line) = mark_of(&report, &l.path("big.bin"));
    assert_eq!(m, '*', "{report}");
    assert!(line.contains("blocks 3,200"), "which blocks: {line}");
    assert_eq!(mark_of(&report, &l.path("gone.txt")).0, '+', "{report}");
    let (m, line) = mark_of(&report, &l.path("short.bin"));
    assert_eq!(m, '*', "{report}");
    assert!(
        line.contains("size 1228800 here, 122880 on the backup") && line.contains("blocks 30-299"),
        "{line}"
    );
    assert_eq!(mark_of(&report, &l.path("orphan.txt")).0, '-', "{report}");
    assert_eq!(mark_of(&report, &l.path("busy/log")).0, '~', "{report}");
    let (m, line) = mark_of(&report, &l.path("sym"));
    assert_eq!(m, '*', "{report}");
    assert!(
        line.contains("target sub/x here, elsewhere on the backup"),
        "{line}"
    );
    let (m, line) = mark_of(&report, &l.path("sub/y"));
    assert_eq!(m, '*', "{report}");
    assert!(line.contains("not a hard link of"), "{line}");
    assert!(
        report.lines().any(|x| x
            == format!(
                "+ {}/ (missing on the backup)",
                l.path("sub/empty").display()
            )),
        "the empty directory: {report}"
    );
    let summary = report.lines().last().unwrap_or_default();
    assert!(
        summary.contains("4 differ, 2 missing, 1 orphans, 1 in flight, 0 errors"),
        "{summary}"
    );

    // --json: one object per name, then the summary.
    assert_eq!(json.status.code(), Some(1), "{}", stderr(&json));
    let lines: Vec<serde_json::Value> = stdout(&json)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    let (summary, names) = lines.split_last().unwrap();
    assert_eq!(summary["summary"]["differ"], 4, "{summary}");
    assert_eq!(summary["summary"]["orphans"], 1, "{summary}");
    let big = names
        .iter()
        .find(|o| o["path"] == l.path("big.bin").display().to_string())
        .unwrap();
    assert_eq!(big["mark"], "*");
    assert_eq!(big["kind"], "file");
    assert_eq!(big["blocks"], serde_json::json!([[3, 3], [200, 200]]));
    assert_eq!(big["site"], r.site());

    // Repaired: the differing and missing files copied, the orphan deleted.
    let out = verify(&l, &["--repair", "--orphans", "delete"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(!r.path("proj/orphan.txt").exists(), "the orphan is deleted");
    assert_eq!(
        fs::read(r.path("proj/big.bin")).unwrap(),
        fs::read(l.path("big.bin")).unwrap()
    );
    let out = verify(&l, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a second verify: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let report = stdout(&out);
    for f in [
        "big.bin",
        "short.bin",
        "gone.txt",
        "same.txt",
        "sym",
        "sub/y",
    ] {
        assert_eq!(mark_of(&report, &l.path(f)).0, '=', "{f}: {report}");
    }
    assert!(r.path("proj/sub/empty").is_dir());
    assert!(!report.contains("orphan.txt"), "{report}");
    wait_converged(&l.dir, &r.path("proj"), CONVERGE);
    assert_log_only("the router", &r.error_log(), &[]);
    assert_log_only("the source", &l.error_log(), &[]);
}

#[test]
fn a_kept_version_is_not_an_orphan_and_orphans_move_only_when_asked() {
    let r = Router::start();
    let (l, _m, _s) = mirrored(&r, "keep", &["--delete-suffix", ".del"]);
    fs::write(l.path("f"), b"first\n").unwrap();
    fs::write(l.path("g"), b"stays\n").unwrap();
    wait_converged(&l.dir, &r.path("keep"), CONVERGE);
    fs::remove_file(l.path("f")).unwrap();
    wait_until(CONVERGE, "f kept as f.del on the backup", || {
        r.path("keep/f.del").exists() && !r.path("keep/f").exists()
    });
    settled(&l.dir);
    let out = verify(&l, &[]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report}{}", stderr(&out));
    assert!(
        !report.contains("f.del"),
        "a kept version is listed: {report}"
    );
    assert_eq!(mark_of(&report, &l.path("g")).0, '=', "{report}");

    // An orphan is reported, and a repair without --orphans leaves it be.
    fs::write(r.path("keep/stray"), b"planted\n").unwrap();
    let out = verify(&l, &["--repair"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert_eq!(mark_of(&stdout(&out), &l.path("stray")).0, '-');
    assert!(
        r.path("keep/stray").exists(),
        "orphans are never deleted by default"
    );
    // Never into a rule's destination; elsewhere in the namespace, beneath DIR.
    let out = verify(&l, &["--repair", "--orphans", "move", "keep/aside"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("overlaps the destination"),
        "{}",
        stderr(&out)
    );
    assert!(r.path("keep/stray").exists());
    let out = verify(&l, &["--repair", "--orphans", "move", "aside"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(!r.path("keep/stray").exists());
    assert_eq!(fs::read(r.path("aside/keep/stray")).unwrap(), b"planted\n");
    let out = verify(&l, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // --orphans without --repair is refused (exit 2: nothing ran).
    let out = verify(&l, &["--orphans", "delete"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--repair"), "{}", stderr(&out));
}

#[test]
fn verify_exits_2_when_the_router_is_down() {
    let mut r = Router::start();
    let (l, _m, _s) = mirrored(&r, "down", &[]);
    fs::write(l.path("a"), b"a\n").unwrap();
    wait_converged(&l.dir, &r.path("down"), CONVERGE);
    r.kill9();
    let out = verify(&l, &["--timeout", "3s"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(&r.site()),
        "the site is named: {}",
        stderr(&out)
    );
    // A path no rule selects is refused, naming it (exit 2 as well).
    let out = verify(&l, &["/nowhere/at/all"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nowhere/at/all"), "{}", stderr(&out));
}

/// A raw verify session as `site` (the protocol, without mirror-ctl's checks).
struct RawVerify {
    rd: std::io::BufReader<std::net::TcpStream>,
    w: std::net::TcpStream,
    sess: mirrorfs::wire::auth::Session,
}

impl RawVerify {
    fn open(r: &Router, site: &str) -> RawVerify {
        use mirrorfs::wire::{auth, Role};
        let s = std::net::TcpStream::connect(r.site()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut rd = std::io::BufReader::new(s.try_clone().unwrap());
        let mut w = s.try_clone().unwrap();
        let sess = auth::client(
            &mut rd,
            &mut w,
            site,
            0,
            Role::Verify,
            &mirror_tests::test_key(),
        )
        .unwrap();
        RawVerify { rd, w, sess }
    }

    /// Sends `m`; the router's next message (heartbeats skipped), or `None` if it closed.
    fn ask(&mut self, m: mirrorfs::wire::Msg) -> Option<mirrorfs::wire::Msg> {
        use mirrorfs::wire::{codec, read_sealed, Msg};
        let f = codec::encode_sealed(&m, &mut self.sess.send).unwrap();
        self.w.write_all(&f).ok()?;
        loop {
            match read_sealed(&mut self.rd, &mut self.sess.recv) {
                Ok(Msg::Heartbeat) => {}
                Ok(m) => return Some(m),
                Err(_) => return None,
            }
        }
    }

    /// Every item of the listing of rule `crc` at `path` (panics on a refusal).
    fn list(&mut self, crc: u32, path: &str) -> Vec<mirrorfs::wire::verify::VerifyItem> {
        use mirrorfs::wire::Msg;
        let mut out = Vec::new();
        let mut m = Msg::Verify {
            rule_crc: crc,
            path: path.as_bytes().to_vec(),
            attrs: false,
        };
        loop {
            match self.ask(m) {
                Some(Msg::VerifyItems { items, done }) => {
                    out.extend(items);
                    if done {
                        return out;
                    }
                }
                other => panic!("listing of {path}: {other:?}"),
            }
            m = Msg::VerifyMore;
        }
    }
}

fn refusal(m: Option<mirrorfs::wire::Msg>) -> String {
    match m {
        Some(mirrorfs::wire::Msg::Error { reason }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_verify_session_reads_only_its_sites_rules_beneath_the_root_through_no_symlink() {
    use mirrorfs::wire::verify::RestoreKind;
    use mirrorfs::wire::Msg;
    let r = Router::start();
    let a = Local::new();
    a.set_site_id("laptop");
    r.trust("laptop");
    r.trust("desk");
    a.add_rule_validated(&format!("{}/", a.dir.display()), &r.site(), "proj", &[]);
    let _ma = a.mount(&[]);
    let sa = a.sender();
    fs::write(a.path("secret.txt"), "laptop's secret").unwrap();
    wait_converged(&a.dir, &r.path("laptop/proj"), CONVERGE);
    let adir = a.dir.to_str().unwrap().to_string();
    let crc = a.journal_crc_of_rule();
    let secret = format!("{adir}/secret.txt");

    // Another site names laptop's rule: refused, and its checksums are not given.
    let mut desk = RawVerify::open(&r, "desk");
    let why = refusal(desk.ask(Msg::Verify {
        rule_crc: crc,
        path: b"/".to_vec(),
        attrs: false,
    }));
    assert!(why.contains("site desk has no rule"), "{why}");
    let mut desk = RawVerify::open(&r, "desk");
    match desk.ask(Msg::Sums {
        id: 1,
        rule_crc: crc,
        name: secret.as_bytes().to_vec(),
        level: 0,
        nodes: Vec::new(),
    }) {
        Some(Msg::SumsAnswer { size, sums, .. }) => {
            assert!(size.is_none() && sums.is_empty(), "{size:?} {sums:?}")
        }
        other => panic!("{other:?}"),
    }

    // Laptop: paths must be normalised, names selected by the rule, moves plain.
    for bad in [
        format!("{adir}/../x"),
        "relative".into(),
        format!("{adir}//x"),
    ] {
        let why = refusal(RawVerify::open(&r, "laptop").ask(Msg::Verify {
            rule_crc: crc,
            path: bad.into_bytes(),
            attrs: false,
        }));
        assert!(why.contains("not a normalised absolute path"), "{why}");
    }
    let why = refusal(RawVerify::open(&r, "laptop").ask(Msg::Sums {
        id: 1,
        rule_crc: crc,
        name: b"/etc/passwd".to_vec(),
        level: 0,
        nodes: Vec::new(),
    }));
    assert!(why.contains("does not select it"), "{why}");
    let why = refusal(RawVerify::open(&r, "laptop").ask(Msg::VerifyMove {
        rule_crc: crc,
        name: secret.as_bytes().to_vec(),
        to: b"../outside".to_vec(),
    }));
    assert!(why.contains("plain relative"), "{why}");
    assert!(r.path("laptop/proj/secret.txt").exists());

    // A symlinked directory planted in the backup is listed as a symlink, never followed.
    let outside = r.tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("host-file"), "not a backup").unwrap();
    std::os::unix::fs::symlink(&outside, r.path("laptop/proj/planted")).unwrap();
    let mut v = RawVerify::open(&r, "laptop");
    let items = v.list(crc, "/");
    let names: Vec<String> = items
        .iter()
        .map(|i| String::from_utf8_lossy(&i.item.name).into_owned())
        .collect();
    assert!(names.contains(&secret), "{names:?}");
    let planted = items
        .iter()
        .find(|i| i.item.name.ends_with(b"/planted"))
        .unwrap();
    assert_eq!(planted.item.kind, RestoreKind::Symlink);
    assert!(!names.iter().any(|n| n.contains("host-file")), "{names:?}");
    // Its checksums are not the outside file's either.
    match v.ask(Msg::Sums {
        id: 2,
        rule_crc: crc,
        name: format!("{adir}/planted/host-file").into_bytes(),
        level: 0,
        nodes: Vec::new(),
    }) {
        Some(Msg::SumsAnswer { size, why, .. }) => {
            assert!(size.is_none(), "{why}");
            assert!(why.contains("symbolic link"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // The key removed while the session is open: its next request is refused.
    drop(sa);
    mirror_tests::succeeded(&r.ctl(&["key", "rm", "laptop"]));
    let why = refusal(v.ask(Msg::Verify {
        rule_crc: crc,
        path: b"/".to_vec(),
        attrs: false,
    }));
    assert!(why.contains("no key on this router"), "{why}");
    assert_log_only(
        "router",
        &r.error_log(),
        &[
            "passes through a symbolic link",
            "not a normalised absolute path",
            "has no rule",
            "does not select it",
            "plain relative",
            "has no key on this router any more",
            "session with 127.0.0.1:",
            "closed its session",
        ],
    );
}

#[test]
fn attrs_are_compared_only_when_asked() {
    let r = Router::start();
    let (l, _m, _s) = mirrored(&r, "attrs", &["--attrs"]);
    fs::write(l.path("f"), b"with attributes\n").unwrap();
    wait_converged(&l.dir, &r.path("attrs"), CONVERGE);
    wait_until(CONVERGE, "the backup's mtime to be the source's", || {
        let (a, b) = (
            fs::metadata(l.path("f")).unwrap(),
            fs::metadata(r.path("attrs/f")).unwrap(),
        );
        a.modified().unwrap() == b.modified().unwrap()
    });
    settled(&l.dir);
    fs::File::options()
        .write(true)
        .open(r.path("attrs/f"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    let out = verify(&l, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let out = verify(&l, &["--attrs"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let (m, line) = mark_of(&stdout(&out), &l.path("f"));
    assert_eq!(m, '*');
    assert!(line.contains("modification time"), "{line}");
    let out = verify(&l, &["--attrs", "--repair"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = verify(&l, &["--attrs"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn a_file_blocked_on_the_router_is_an_error_not_a_difference() {
    use crate::outage_faults::run;
    let r = Router::start();
    let (l, _m, _s) = mirrored(&r, "held", &[]);
    fs::write(l.path("ok.txt"), "fine").unwrap();
    fs::write(l.path("held.txt"), "one").unwrap();
    wait_converged(&l.dir, &r.path("held"), CONVERGE);
    let backup = r.path("held/held.txt");
    run("chattr", &["+i", backup.to_str().unwrap()]);
    fs::write(l.path("held.txt"), "two, held at the router").unwrap();
    wait_until(CONVERGE, "held.txt to be blocked", || {
        r.blocked_paths()
            .iter()
            .any(|p| p.ends_with("held/held.txt"))
    });
    // The router holds the source's entries back: the wait for them ends at --timeout, and
    // what it holds is `!`.
    let out = verify(&l, &["--timeout", "2s"]);
    run("chattr", &["-i", backup.to_str().unwrap()]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report}{}", stderr(&out));
    let (m, line) = mark_of(&report, &l.path("held.txt"));
    assert_eq!(m, '!', "{report}");
    assert!(line.contains("blocked on the router"), "{line}");
    assert_eq!(mark_of(&report, &l.path("ok.txt")).0, '=', "{report}");
    assert!(stderr(&out).contains("had not applied"), "{}", stderr(&out));
    mirror_tests::succeeded(&r.ctl(&["unblock"]));
    wait_converged(&l.dir, &r.path("held"), CONVERGE);
    let out = verify(&l, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// The default compares the content only of files that changed since their last acknowledged
/// copy read them (mirror-sendd's record): a file synced and unchanged since is compared by
/// size and mode, so a backup block edited behind the router's back is found by `--checksum`
/// only, which then names the block; `--repair --checksum` sends it again.
#[test]
fn the_default_checksums_only_what_changed_since_it_was_shipped() {
    let r = Router::start();
    let (l, m, _s) = mirrored(&r, "v", &[]);
    let big = data(200_000, 9);
    fs::write(l.path("shipped.bin"), &big).unwrap();
    wait_converged(&l.dir, &r.path("v"), CONVERGE);
    // A sync records the file as shipped once it has settled (its times are coarse).
    wait_until(CONVERGE, "the file recorded as shipped", || {
        mirror_tests::succeeded(&l.ctl(&[
            "sync",
            "--wait",
            l.path("shipped.bin").to_str().unwrap(),
        ]));
        let out = verify(&l, &["--json", l.dir.to_str().unwrap()]);
        stdout(&out).lines().any(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            v["summary"]["bytes_compared"] == 0
        })
    });
    let f = fs::OpenOptions::new()
        .write(true)
        .open(r.path("v/shipped.bin"))
        .unwrap();
    f.write_all_at(b"edited behind the router's back", 8192)
        .unwrap();
    drop(f);
    settled(&l.dir);
    let plain = verify(&l, &[l.dir.to_str().unwrap()]);
    assert_eq!(plain.status.code(), Some(0), "{}", stdout(&plain));
    let full = verify(&l, &["--checksum", l.dir.to_str().unwrap()]);
    assert_eq!(full.status.code(), Some(1), "{}", stdout(&full));
    let (mark, line) = mark_of(&stdout(&full), &l.path("shipped.bin"));
    assert_eq!(mark, '*', "{line}");
    assert!(line.contains("blocks 2"), "{line}");
    let fixed = verify(&l, &["--checksum", "--repair", l.dir.to_str().unwrap()]);
    assert_eq!(
        fixed.status.code(),
        Some(0),
        "{}{}",
        stdout(&fixed),
        stderr(&fixed)
    );
    assert_eq!(fs::read(r.path("v/shipped.bin")).unwrap(), big);
    drop(m);
    assert_log_only("router", &r.error_log(), &[]);
}

/// After both daemons start again with nothing new to send, the router tells the sender that
/// everything it holds is applied (it applied none of it in this run): a verify does not wait
/// its whole timeout for that, nor warns that the site is behind. (Before, it waited the
/// whole `--timeout` and compared "with what they hold".)
#[test]
fn a_verify_after_both_daemons_restarted_does_not_wait_for_the_timeout() {
    // No router logs kept once applied: the restarted router has none of the source's
    // entries to look at again.
    let mut r = Router::start_args(None, &["--retain", "0"]);
    let (l, m, mut s) = mirrored(&r, "v", &[]);
    fs::write(l.path("a.txt"), b"settled").unwrap();
    wait_converged(&l.dir, &r.path("v"), CONVERGE);
    settled(&l.dir);
    s.kill9();
    r.restart();
    let _s = l.sender();
    let out = verify(&l, &["--timeout", "40s", l.dir.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("had not applied everything"),
        "{}",
        stderr(&out)
    );
    drop(m);
}

/// An adversarial finding: under a `*.x/` rule (whose backup directories are made as files
/// need them), verify reported every source directory without such files as missing on the
/// backup, and `--repair` then failed on it (mirrorfs refuses a copy of a name the rule does
/// not select) and repaired nothing else. Such a directory is not missing; what it holds is.
#[test]
fn directories_a_wildcard_rule_does_not_mirror_are_not_missing() {
    let r = Router::start();
    let l = Local::new();
    fs::create_dir_all(l.path("sub")).unwrap();
    fs::create_dir_all(l.path("other/deep")).unwrap();
    fs::write(l.path("sub/a.dat"), b"selected").unwrap();
    fs::write(l.path("other/deep/x.txt"), b"not selected").unwrap();
    l.add_rule_validated(&format!("{}/*.dat/", l.dir.display()), &r.site(), "v", &[]);
    let m = l.mount(&[]);
    let _s = l.sender();
    wait_until(CONVERGE, "the .dat file on the backup", || {
        fs::read(r.path("v/sub/a.dat")).ok().as_deref() == Some(&b"selected"[..])
    });
    settled(&l.dir);
    let out = verify(&l, &[l.dir.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    fs::remove_file(r.path("v/sub/a.dat")).unwrap();
    let out = verify(&l, &[l.dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert_eq!(mark_of(&stdout(&out), &l.path("sub/a.dat")).0, '+');
    assert!(!stdout(&out).contains("other"), "{}", stdout(&out));
    let out = verify(&l, &["--repair", l.dir.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(fs::read(r.path("v/sub/a.dat")).unwrap(), b"selected");
    drop(m);
}
