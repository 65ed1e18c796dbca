//! Rules change on a running mount: picked up without a remount, and files open for writing
//! while a rule starts selecting them are copied when released.

use std::fs;
use std::io::Write;
use std::time::Duration;

use mirror_tests::{rel, wait_until, Local};
use mirrorfs::entry::Command;

const SITE: &str = "127.0.0.1:9";

/// Writes probe files into `dir` until one is journaled: proof the mount uses the new rules.
fn wait_for_rules(l: &Local, dir: &str) {
    let mut n = 0;
    wait_until(
        Duration::from_secs(10),
        "the mount to pick up the new rule",
        || {
            n += 1;
            let probe = format!("{dir}/probe-{n}");
            fs::write(l.path(&probe), b"p").unwrap();
            l.journal().iter().any(|e| rel(&l.dir, &e.name) == probe)
        },
    );
}

#[test]
fn rules_added_and_removed_take_effect_without_a_remount() {
    let l = Local::new();
    fs::create_dir(l.path("src")).unwrap();
    let m = l.mount(&[]);
    fs::write(l.path("src/before"), b"x").unwrap();
    assert!(l.journal().is_empty());
    l.add_rule(&format!("{}/src/", l.dir.display()), SITE, "d", &[]);
    wait_for_rules(&l, "src");
    let out = l.ctl(&["rule", "rm", "1"]);
    assert!(out.status.success());
    // After removal, new files stop being journaled (probe until one is not).
    let mut n = 0;
    wait_until(
        Duration::from_secs(10),
        "the mount to drop the rule",
        || {
            n += 1;
            let name = format!("src/after-{n}");
            fs::write(l.path(&name), b"x").unwrap();
            !l.journal().iter().any(|e| rel(&l.dir, &e.name) == name)
        },
    );
    drop(m);
}

#[test]
fn a_file_open_for_writing_when_a_rule_is_added_is_copied_on_release() {
    let l = Local::new();
    fs::create_dir(l.path("src")).unwrap();
    let m = l.mount(&[]);
    let mut f = fs::File::create(l.path("src/held")).unwrap();
    f.write_all(b"written before the rule").unwrap();
    l.add_rule(&format!("{}/src/", l.dir.display()), SITE, "d", &[]);
    wait_for_rules(&l, "src");
    f.write_all(b", and after").unwrap();
    // Probes opened just before the switch are copied on release too, so look at "held" only.
    let held_copies = |l: &Local| {
        l.journal()
            .iter()
            .filter(|e| e.command == Command::Copy && rel(&l.dir, &e.name) == "src/held")
            .count()
    };
    assert_eq!(held_copies(&l), 0, "no copy before release");
    drop(f);
    assert_eq!(held_copies(&l), 1, "one copy at release");
    m.unmount();
    assert_eq!(
        fs::read(l.path("src/held")).unwrap(),
        b"written before the rule, and after"
    );
}
