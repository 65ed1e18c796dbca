//! The delete suffix (issue 13 item 4): a backup file that its source deletes or replaces (a
//! rename over it, an editor's atomic save, inside one rule or from outside it) is kept under
//! the suffix, every earlier kept version stays as it was (`NAME.del`, `NAME.del.1`, …), a
//! source file named like a kept version is mirrored under its own name without losing the
//! version there, and the reconciliation at mount leaves kept versions alone.

use std::fs;
use std::process::Command;
use std::time::Duration;

use mirror_tests::{wait_until, Router};

use crate::mirror_ops::mirrored;

const CONVERGE: Duration = Duration::from_secs(60);

/// Whether the backup file `name` under `dir` holds exactly `want`.
fn holds(r: &Router, dir: &str, name: &str, want: &str) -> bool {
    fs::read(r.path(&format!("{dir}/{name}"))).is_ok_and(|d| d == want.as_bytes())
}

/// Every name in the backup directory `dir` with its content, for failure messages.
fn listing(r: &Router, dir: &str) -> String {
    let mut names: Vec<String> = fs::read_dir(r.path(dir))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let content = fs::read_to_string(e.path()).unwrap_or_default();
                    format!("{}={content:?}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(" ")
}

/// Before: `sed -i` (write a temporary file, rename it over) and `mv b c` lost `c`'s old
/// content with no `c.del`, and a second delete of a name overwrote the first `c.del`.
#[test]
fn replaced_and_deleted_files_are_kept_and_earlier_versions_stay() {
    let r = Router::start();
    let (l, m, _s) = mirrored(&r, "keep", &["--delete-suffix", ".del"]);
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        wait_until(CONVERGE, what, cond);
    };
    fs::write(l.path("c"), "v1").unwrap();
    wait("c", &|| holds(&r, "keep", "c", "v1"));

    // An editor's atomic save: sed -i writes a temporary file beside c and renames it over c.
    let st = Command::new("sed")
        .args(["-i", "s/v1/v2/"])
        .arg(l.path("c"))
        .status()
        .unwrap();
    assert!(st.success());
    wait("the saved c, and the version it replaced", &|| {
        holds(&r, "keep", "c", "v2") && holds(&r, "keep", "c.del", "v1")
    });

    // mv b c
    fs::write(l.path("b"), "v3").unwrap();
    fs::rename(l.path("b"), l.path("c")).unwrap();
    wait("c replaced by b, its old content kept", &|| {
        holds(&r, "keep", "c", "v3")
            && holds(&r, "keep", "c.del.1", "v2")
            && !r.path("keep/b").exists()
    });

    // Deleted; then a new file of the same name, deleted too.
    fs::remove_file(l.path("c")).unwrap();
    wait("the deleted c kept", &|| {
        holds(&r, "keep", "c.del.2", "v3") && !r.path("keep/c").exists()
    });
    fs::write(l.path("c"), "v4").unwrap();
    fs::remove_file(l.path("c")).unwrap();
    wait("the second deleted c kept beside the first", &|| {
        holds(&r, "keep", "c.del.3", "v4")
    });
    for (name, want) in [("c.del", "v1"), ("c.del.1", "v2"), ("c.del.2", "v3")] {
        assert!(
            holds(&r, "keep", name, want),
            "{name} changed: {}",
            listing(&r, "keep")
        );
    }

    // A source file named like a kept version is mirrored under its name; the version that
    // was there is kept aside as a version of that name.
    fs::write(l.path("c.del"), "mine").unwrap();
    wait("the source's own c.del", &|| {
        holds(&r, "keep", "c.del", "mine") && holds(&r, "keep", "c.del.del", "v1")
    });
    // A later delete never takes a name the backup holds.
    fs::write(l.path("n.del"), "n's namesake").unwrap();
    fs::write(l.path("n"), "n1").unwrap();
    fs::remove_file(l.path("n")).unwrap();
    wait("n kept past the live n.del", &|| {
        holds(&r, "keep", "n.del.1", "n1") && holds(&r, "keep", "n.del", "n's namesake")
    });

    // Deleted while not mounted: the mount's reconciliation keeps it under the suffix and
    // leaves every kept version alone (they are history, not orphans).
    fs::write(l.path("z"), "zz").unwrap();
    wait("z", &|| holds(&r, "keep", "z", "zz"));
    drop(m);
    fs::remove_file(l.path("z")).unwrap();
    let _m = l.mount(&[]);
    wait("z kept by the reconciliation", &|| {
        holds(&r, "keep", "z.del", "zz") && !r.path("keep/z").exists()
    });
    let kept = [
        ("c.del", "mine"),
        ("c.del.del", "v1"),
        ("c.del.1", "v2"),
        ("c.del.2", "v3"),
        ("c.del.3", "v4"),
        ("n.del", "n's namesake"),
        ("n.del.1", "n1"),
    ];
    for (name, want) in kept {
        assert!(
            holds(&r, "keep", name, want),
            "{name} is not {want:?} after the reconciliation: {}",
            listing(&r, "keep")
        );
    }
    l.assert_no_errors();
    assert!(r.error_log().trim().is_empty(), "{}", r.error_log());
}

/// A temporary file the rule does not select, renamed over one it does (an editor saving
/// `c.txt` through `c.txt.tmp` under a `*.txt` rule), reaches the backup as a copy: the copy
/// used to overwrite the backup's `c.txt` with no version kept.
#[test]
fn a_file_saved_through_a_temporary_file_outside_the_rule_is_kept_too() {
    let r = Router::start();
    let l = mirror_tests::Local::new();
    l.add_rule_validated(
        &format!("{}/*.txt/", l.dir.display()),
        &r.site(),
        "txt",
        &["--delete-suffix", ".del"],
    );
    let _m = l.mount(&[]);
    let _s = l.sender();
    fs::write(l.path("c.txt"), "first").unwrap();
    wait_until(CONVERGE, "c.txt", || holds(&r, "txt", "c.txt", "first"));
    fs::write(l.path("c.txt.tmp"), "second").unwrap();
    fs::rename(l.path("c.txt.tmp"), l.path("c.txt")).unwrap();
    wait_until(
        CONVERGE,
        "the saved c.txt and the version it replaced",
        || holds(&r, "txt", "c.txt", "second") && holds(&r, "txt", "c.txt.del", "first"),
    );
    assert!(!r.path("txt/c.txt.tmp").exists());
    l.assert_no_errors();
    assert!(r.error_log().trim().is_empty(), "{}", r.error_log());
}
