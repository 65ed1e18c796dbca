//! Who mirrors to whom: two sources into one router, one rule to two routers, a rule added
//! while everything runs, and `mirror-ctl sync` of files that existed before their rule.

use std::fs;
use std::time::Duration;

use mirror_tests::{wait_converged, Local, Router};

use crate::mirror_workload::Workload;

const CONVERGE: Duration = Duration::from_secs(60);

#[test]
fn two_sources_into_one_router() {
    let r = Router::start();
    let a = Local::new();
    let b = Local::new();
    a.set_site_id("source-a");
    b.set_site_id("source-b");
    r.trust("source-a");
    r.trust("source-b");
    a.add_rule_validated(&format!("{}/", a.dir.display()), &r.site(), "from-a", &[]);
    b.add_rule_validated(&format!("{}/", b.dir.display()), &r.site(), "from-b", &[]);
    let (_ma, _mb) = (a.mount(&[]), b.mount(&[]));
    let (_sa, _sb) = (a.sender(), b.sender());
    let mut wa = Workload::new(&a.dir, 11, 20);
    let mut wb = Workload::new(&b.dir, 12, 20);
    for _ in 0..300 {
        wa.step();
        wb.step();
    }
    // Each source writes beneath its own namespace, <root>/<site-id>/.
    wait_converged(&a.dir, &r.path("source-a/from-a"), CONVERGE);
    wait_converged(&b.dir, &r.path("source-b/from-b"), CONVERGE);
}

#[test]
fn one_rule_to_two_routers() {
    let r1 = Router::start();
    let r2 = Router::start();
    let l = Local::new();
    let pattern = format!("{}/", l.dir.display());
    let out = l.ctl(&[
        "rule",
        "add",
        &pattern,
        "--site",
        &r1.site(),
        "--site",
        &r2.site(),
        "--dest",
        "twice",
    ]);
    mirror_tests::succeeded(&out);
    let _m = l.mount(&[]);
    let _s = l.sender();
    let mut w = Workload::new(&l.dir, 21, 30);
    for _ in 0..400 {
        w.step();
    }
    wait_converged(&l.dir, &r1.path("twice"), CONVERGE);
    wait_converged(&l.dir, &r2.path("twice"), CONVERGE);
}

#[test]
fn a_rule_added_while_everything_runs_starts_mirroring() {
    let r = Router::start();
    let l = Local::new();
    fs::create_dir_all(l.path("first")).unwrap();
    fs::create_dir_all(l.path("second")).unwrap();
    l.add_rule_validated(
        &format!("{}/first/", l.dir.display()),
        &r.site(),
        "one",
        &[],
    );
    let _m = l.mount(&[]);
    let _s = l.sender();
    fs::write(l.path("first/a"), b"a").unwrap();
    wait_converged(&l.path("first"), &r.path("one"), CONVERGE);
    l.add_rule_validated(
        &format!("{}/second/", l.dir.display()),
        &r.site(),
        "two",
        &[],
    );
    let mut w = Workload::new(&l.path("second"), 31, 10);
    for _ in 0..200 {
        w.step();
    }
    // Files created before the mount saw the rule are brought over by a sync.
    let out = l.ctl(&[
        "sync",
        &l.path("second").to_string_lossy(),
        "--wait",
        "--timeout",
        "60",
    ]);
    mirror_tests::succeeded(&out);
    wait_converged(&l.path("second"), &r.path("two"), CONVERGE);
}

#[test]
fn sync_copies_files_that_existed_before_the_rule() {
    let r = Router::start();
    let l = Local::new();
    let mut w = Workload::new(&l.dir, 41, 45);
    for _ in 0..100 {
        w.step();
    }
    fs::create_dir_all(l.path("empty/inside")).unwrap();
    // `--no-sync`: what copies the files is the `sync` below (a first copy as well would
    // still be on its way while the backup is removed further down).
    l.add_rule_validated(
        &format!("{}/", l.dir.display()),
        &r.site(),
        "old",
        &["--no-sync"],
    );
    // No mount: sync writes the journal itself.
    let out = l.ctl(&["sync"]);
    mirror_tests::succeeded(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("queued copies of"), "{text}");
    let _s = l.sender();
    wait_converged(&l.dir, &r.path("old"), CONVERGE);
    // Everything the router received is applied before its backup goes.
    r.wait_durable();
    // With a mount, through its control socket, while files change.
    let _m = l.mount(&[]);
    fs::remove_dir_all(r.path("old")).unwrap();
    for _ in 0..50 {
        w.step();
    }
    let out = l.ctl(&["sync", "--wait", "--timeout", "60"]);
    mirror_tests::succeeded(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("every site acknowledged"), "{err}");
    wait_converged(&l.dir, &r.path("old"), CONVERGE);
}
