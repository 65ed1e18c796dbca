//! Conformance gaps against ext4 found by xfstests (issue 13 item 5): each test runs the same
//! steps on a plain directory (ext4 here) and through a mirrorfs mount, and the two must
//! agree. `docs/CONFORMANCE.md` lists the results beside ext4's.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use mirror_tests::Local;

/// A rule selecting everything, with attributes, so every change is journaled.
fn subtree(l: &Local) {
    l.add_rule(
        &format!("{}/", l.dir.display()),
        "127.0.0.1:9",
        "d",
        &["--attrs"],
    );
}

/// An outcome that compares across file systems: the value or the error's kind.
fn outcome<T: std::fmt::Debug>(r: std::io::Result<T>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("error {:?}", e.kind()),
    }
}

/// generic/035: a file and a directory, each open, replaced by a rename; `fstat` of the open
/// descriptor (and its link count, 0 now).
fn rename_over_open(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for kind in ["file", "dir"] {
        let (a, b) = (dir.join(format!("{kind}1")), dir.join(format!("{kind}2")));
        if kind == "file" {
            fs::write(&a, b"new").unwrap();
            fs::write(&b, b"old").unwrap();
        } else {
            fs::create_dir(&a).unwrap();
            fs::create_dir(&b).unwrap();
        }
        let open = fs::File::open(&b).unwrap();
        fs::rename(&a, &b).unwrap();
        out.push(format!(
            "{kind}: fstat {}",
            outcome(open.metadata().map(|m| m.nlink()))
        ));
        out.push(format!(
            "{kind}: the new one has {}",
            outcome(fs::metadata(&b).map(|m| m.nlink()))
        ));
    }
    out
}

/// The finding (xfstests generic/035): after `rename(dir1, dir2)` replaced a directory that
/// was open, `fstat` of its descriptor failed with ENOENT through mirrorfs (it has no name
/// left, and mirrorfs looked for it only among open files, not open directories).
#[test]
fn fstat_of_an_open_file_or_directory_replaced_by_a_rename_works_as_on_ext4() {
    let l = Local::new();
    subtree(&l);
    let plain = l.tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let on_ext4 = rename_over_open(&plain);
    assert_eq!(
        on_ext4,
        [
            "file: fstat ok 0",
            "file: the new one has ok 1",
            "dir: fstat ok 0",
            "dir: the new one has ok 2"
        ],
        "ext4 itself"
    );
    let m = l.mount(&[]);
    assert_eq!(rename_over_open(&l.dir), on_ext4, "mirrorfs beside ext4");
    m.unmount();
    l.assert_no_errors();
}
