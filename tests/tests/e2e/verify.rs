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
        summary.contains("3 differ, 2 missing, 1 orphans, 1 in flight, 0 errors"),
        "{summary}"
    );

    // --json: one object per name, then the summary.
    assert_eq!(json.status.code(), Some(1), "{}", stderr(&json));
    let lines: Vec<serde_json::Value> = stdout(&json)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    let (summary, names) = lines.split_last().unwrap();
    assert_eq!(summary["summary"]["differ"], 3, "{summary}");
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
    for f in ["big.bin", "gone.txt", "same.txt", "sym", "sub/y"] {
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
