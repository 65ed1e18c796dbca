//! Every recorded operation, checked twice: the file system underneath (after unmount, the
//! directory itself) and the decoded journal entries (command, name, offset, size, aux, data).

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

use mirror_tests::{rel, Local};
use mirrorfs::entry::{AttrChange, Command, Entry};

const SITE: &str = "127.0.0.1:9";

/// (command, name relative to the project, aux relative to the project).
fn names(l: &Local, es: &[Entry]) -> Vec<(Command, String, String)> {
    es.iter()
        .map(|e| (e.command, rel(&l.dir, &e.name), rel(&l.dir, &e.aux)))
        .collect()
}

fn subtree(l: &Local, sub: &str, extra: &[&str]) -> String {
    let pattern = format!("{}/{sub}/", l.dir.display());
    fs::create_dir_all(l.path(sub)).unwrap();
    // These tests check the entries of each operation: no first copy before them.
    let mut extra = extra.to_vec();
    extra.push("--no-sync");
    l.add_rule(&pattern, SITE, sub, &extra);
    pattern
}

#[test]
fn create_and_writes_record_offsets_sizes_and_data() {
    let l = Local::new();
    subtree(&l, "src", &[]);
    // Each write recorded as it is made, which the writeback cache (the default)
    // merges into the pages it writes back (tests/e2e/buffered_writes.rs).
    let m = l.mount(&["--no-writeback-cache"]);
    let mut f = fs::File::create(l.path("src/a.txt")).unwrap();
    f.write_all(b"hello").unwrap();
    f.write_at(b"xy", 10).unwrap();
    drop(f);
    let e = l.journal();
    assert_eq!(
        names(&l, &e),
        vec![
            (Command::Create, "src/a.txt".into(), "".into()),
            (Command::Write, "src/a.txt".into(), "".into()),
            (Command::Write, "src/a.txt".into(), "".into()),
        ]
    );
    assert_eq!(e[0].offset as u32 & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(
        (e[1].offset, e[1].size, e[1].data.as_slice()),
        (0, 5, &b"hello"[..])
    );
    assert_eq!(
        (e[2].offset, e[2].size, e[2].data.as_slice()),
        (10, 2, &b"xy"[..])
    );
    // Every entry carries the rule's CRC.
    let crc = e[0].rule_crc;
    assert!(e.iter().all(|x| x.rule_crc == crc) && crc != 0);
    m.unmount();
    assert_eq!(fs::read(l.path("src/a.txt")).unwrap(), b"hello\0\0\0\0\0xy");
}

#[test]
fn files_no_rule_selects_record_nothing() {
    let l = Local::new();
    subtree(&l, "src", &[]);
    fs::create_dir(l.path("other")).unwrap();
    let m = l.mount(&[]);
    fs::write(l.path("other/x"), b"data").unwrap();
    fs::write(l.path("top.txt"), b"data").unwrap();
    fs::rename(l.path("other/x"), l.path("other/y")).unwrap();
    fs::remove_file(l.path("top.txt")).unwrap();
    fs::create_dir(l.path("other/d")).unwrap();
    assert_eq!(l.journal(), vec![]);
    m.unmount();
    assert_eq!(fs::read(l.path("other/y")).unwrap(), b"data");
    assert!(!l.path("top.txt").exists());
}

#[test]
fn a_file_selected_by_two_rules_records_two_entries_each() {
    let l = Local::new();
    subtree(&l, "src", &[]);
    l.add_rule(
        &format!("{}/src/*.rs", l.dir.display()),
        "127.0.0.1:10",
        "rs",
        &[],
    );
    let m = l.mount(&[]);
    fs::write(l.path("src/lib.rs"), b"fn x() {}").unwrap();
    fs::write(l.path("src/notes.md"), b"n").unwrap();
    let e = l.journal();
    let lib: Vec<&Entry> = e.iter().filter(|x| x.name.ends_with(b"lib.rs")).collect();
    let md: Vec<&Entry> = e.iter().filter(|x| x.name.ends_with(b"notes.md")).collect();
    assert_eq!(lib.len(), 4, "create + write for each of two rules");
    assert_eq!(md.len(), 2, "create + write for one rule");
    let crcs: std::collections::BTreeSet<u32> = lib.iter().map(|x| x.rule_crc).collect();
    assert_eq!(crcs.len(), 2);
    drop(m);
}

#[test]
fn renames_within_out_of_and_into_a_subtree_rule() {
    let l = Local::new();
    subtree(&l, "src", &[]);
    fs::create_dir_all(l.path("src/d")).unwrap();
    fs::create_dir(l.path("out")).unwrap();
    fs::write(l.path("src/a"), b"1").unwrap();
    fs::write(l.path("src/b"), b"2").unwrap();
    fs::write(l.path("out/c"), b"3").unwrap();
    let m = l.mount(&[]);
    fs::rename(l.path("src/a"), l.path("src/d/a2")).unwrap();
    fs::rename(l.path("src/b"), l.path("out/b")).unwrap();
    fs::rename(l.path("out/c"), l.path("src/c")).unwrap();
    fs::rename(l.path("src/d"), l.path("src/e")).unwrap();
    assert_eq!(
        names(&l, &l.journal()),
        vec![
            (Command::Rename, "src/a".into(), "src/d/a2".into()),
            (Command::Delete, "src/b".into(), "".into()),
            (Command::Copy, "src/c".into(), "".into()),
            (Command::Rename, "src/d".into(), "src/e".into()),
        ]
    );
    m.unmount();
    assert_eq!(fs::read(l.path("src/e/a2")).unwrap(), b"1");
    assert_eq!(fs::read(l.path("out/b")).unwrap(), b"2");
    assert_eq!(fs::read(l.path("src/c")).unwrap(), b"3");
}

#[test]
fn an_open_with_o_trunc_records_a_truncate() {
    let l = Local::new();
    subtree(&l, "src", &[]);
    fs::write(l.path("src/f"), b"old content").unwrap();
    let m = l.mount(&[]);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(l.path("src/f"))
        .unwrap();
    f.write_all(b"new").unwrap();
    drop(f);
    let e = l.journal();
    assert_eq!(
        names(&l, &e),
        vec![
            (Command::Truncate, "src/f".into(), "".into()),
            (Command::Write, "src/f".into(), "".into()),
        ]
    );
    assert_eq!(e[0].size, 0);
    m.unmount();
    assert_eq!(fs::read(l.path("src/f")).unwrap(), b"new");
}

#[test]
fn truncate_and_ftruncate_record_the_new_size() {
    let l = Local::new();
    subtree(&l, "src", &[]);
    fs::write(l.path("src/f"), vec![7u8; 100]).unwrap();
    let m = l.mount(&[]);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(l.path("src/f"))
        .unwrap();
    f.set_len(10).unwrap();
    drop(f);
    // truncate(2) by path.
    let c = std::ffi::CString::new(l.path("src/f").to_str().unwrap()).unwrap();
    // SAFETY: c is NUL-terminated.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 5000) }, 0);
    let e = l.journal();
    assert_eq!(
        e.iter().map(|x| (x.command, x.size)).collect::<Vec<_>>(),
        vec![(Command::Truncate, 10), (Command::Truncate, 5000)]
    );
    m.unmount();
    assert_eq!(fs::metadata(l.path("src/f")).unwrap().len(), 5000);
}

#[test]
fn mkdir_rmdir_unlink_symlink_link_inside_a_subtree() {
    let l = Local::new();
    subtree(&l, "src", &[]);
    let m = l.mount(&[]);
    fs::create_dir(l.path("src/d")).unwrap();
    fs::write(l.path("src/d/f"), b"x").unwrap();
    std::os::unix::fs::symlink("f", l.path("src/d/s")).unwrap();
    fs::hard_link(l.path("src/d/f"), l.path("src/d/h")).unwrap();
    fs::remove_file(l.path("src/d/f")).unwrap();
    fs::remove_file(l.path("src/d/s")).unwrap();
    fs::remove_file(l.path("src/d/h")).unwrap();
    fs::remove_dir(l.path("src/d")).unwrap();
    let e = l.journal();
    assert_eq!(
        names(&l, &e),
        vec![
            (Command::Mkdir, "src/d".into(), "".into()),
            (Command::Create, "src/d/f".into(), "".into()),
            (Command::Write, "src/d/f".into(), "".into()),
            (Command::Symlink, "src/d/s".into(), "f".into()),
            (Command::Link, "src/d/f".into(), "src/d/h".into()),
            (Command::Delete, "src/d/f".into(), "".into()),
            (Command::Delete, "src/d/s".into(), "".into()),
            (Command::Delete, "src/d/h".into(), "".into()),
            (Command::Rmdir, "src/d".into(), "".into()),
        ]
    );
    assert_eq!(e[0].offset as u32 & libc::S_IFMT, libc::S_IFDIR);
    m.unmount();
    assert!(!l.path("src/d").exists());
}

/// Owner, times, xattrs and set-id bits are recorded only for rules with `--attrs`; the
/// permission bits of a chmod are recorded for every rule (issue 12 item 2: a backup file is
/// never more readable than its source), without set-id bits.
#[test]
fn attributes_are_recorded_only_for_rules_with_attrs() {
    let l = Local::new();
    subtree(&l, "plain", &[]);
    subtree(&l, "full", &["--attrs"]);
    fs::write(l.path("plain/f"), b"x").unwrap();
    fs::write(l.path("full/f"), b"x").unwrap();
    // Each write recorded as it is made, which the writeback cache (the default)
    // merges into the pages it writes back (tests/e2e/buffered_writes.rs).
    let m = l.mount(&["--no-writeback-cache"]);
    for d in ["plain", "full"] {
        fs::set_permissions(l.path(&format!("{d}/f")), fs::Permissions::from_mode(0o640)).unwrap();
        xattr_set(&l.path(&format!("{d}/f")), "user.k", b"v");
        xattr_remove(&l.path(&format!("{d}/f")), "user.k");
    }
    fs::set_permissions(l.path("plain/f"), fs::Permissions::from_mode(0o4750)).unwrap();
    let all = l.journal();
    let (plain, e): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|x| rel(&l.dir, &x.name) == "plain/f");
    // The plain rule: the permission bits of each chmod, nothing else.
    assert_eq!(
        plain
            .iter()
            .map(|x| (x.command, AttrChange::decode(&x.data).unwrap()))
            .collect::<Vec<_>>(),
        [0o640, 0o750].map(|m| (
            Command::SetAttr,
            AttrChange {
                mode: Some(m),
                ..AttrChange::default()
            }
        ))
    );
    assert!(
        e.iter().all(|x| rel(&l.dir, &x.name) == "full/f"),
        "{:?}",
        names(&l, &e)
    );
    assert_eq!(
        e.iter().map(|x| x.command).collect::<Vec<_>>(),
        vec![Command::SetAttr, Command::SetXattr, Command::RemoveXattr]
    );
    let a = AttrChange::decode(&e[0].data).unwrap();
    assert_eq!(a.mode, Some(0o640));
    assert_eq!(a.uid, None);
    assert_eq!(
        (e[1].aux.as_slice(), e[1].data.as_slice()),
        (&b"user.k"[..], &b"v"[..])
    );
    assert_eq!(e[2].aux, b"user.k");
    m.unmount();
    assert_eq!(
        fs::metadata(l.path("full/f")).unwrap().mode() & 0o777,
        0o640
    );
}

fn xattr_set(p: &std::path::Path, name: &str, value: &[u8]) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid strings and buffer.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

fn xattr_remove(p: &std::path::Path, name: &str) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid strings.
    let rc = unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) };
    assert_eq!(rc, 0, "removexattr: {}", std::io::Error::last_os_error());
}

#[test]
fn fallocate_and_copy_file_range_are_recorded_by_their_effect() {
    let l = Local::new();
    subtree(&l, "src", &[]);
    fs::write(l.path("src/a"), vec![1u8; 8192]).unwrap();
    let m = l.mount(&[]);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(l.path("src/a"))
        .unwrap();
    // SAFETY: valid descriptor.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            4096,
            4096,
        )
    };
    assert_eq!(rc, 0, "punch hole: {}", std::io::Error::last_os_error());
    // SAFETY: valid descriptor.
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 20000) }, 0);
    let mut g = fs::File::create(l.path("src/b")).unwrap();
    let (mut oi, mut oo): (i64, i64) = (0, 100);
    // SAFETY: valid descriptors and offsets.
    let n =
        unsafe { libc::copy_file_range(f.as_raw_fd(), &mut oi, g.as_raw_fd(), &mut oo, 6000, 0) };
    assert_eq!(
        n,
        6000,
        "copy_file_range: {}",
        std::io::Error::last_os_error()
    );
    g.seek(SeekFrom::Start(0)).unwrap();
    drop((f, g));
    let e = l.journal();
    assert_eq!(
        e.iter()
            .map(|x| (x.command, rel(&l.dir, &x.name), x.offset, x.size))
            .collect::<Vec<_>>(),
        vec![
            (Command::Zero, "src/a".into(), 4096, 4096),
            (Command::Truncate, "src/a".into(), 0, 20000),
            (Command::Create, "src/b".into(), e[2].offset, 0),
            (Command::Write, "src/b".into(), 100, 6000),
        ]
    );
    let mut expect = vec![1u8; 4096];
    expect.extend(vec![0u8; 1904]);
    assert_eq!(e[3].data, expect);
    m.unmount();
    assert_eq!(fs::read(l.path("src/b")).unwrap()[100..], expect[..]);
    assert_eq!(fs::metadata(l.path("src/a")).unwrap().len(), 20000);
}

#[test]
fn failed_operations_record_nothing() {
    let l = Local::new();
    subtree(&l, "src", &[]);
    fs::create_dir(l.path("src/d")).unwrap();
    fs::write(l.path("src/d/f"), b"x").unwrap();
    let m = l.mount(&[]);
    assert!(fs::create_dir(l.path("src/d")).is_err());
    assert!(fs::remove_file(l.path("src/nope")).is_err());
    assert!(fs::remove_dir(l.path("src/d")).is_err(), "not empty");
    assert!(fs::rename(l.path("src/nope"), l.path("src/x")).is_err());
    assert!(fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(l.path("src/d/f"))
        .is_err());
    assert_eq!(l.journal(), vec![]);
    drop(m);
}

#[test]
fn fsync_of_a_mirrored_file_leaves_its_entries_in_the_journal() {
    let l = Local::new();
    subtree(&l, "src", &[]);
    let mut m = l.mount(&[]);
    let mut f = fs::File::create(l.path("src/f")).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    // Killing mirrorfs right after fsync returns loses nothing.
    m.kill9();
    drop(f);
    let e = l.journal();
    assert_eq!(e.last().map(|x| x.data.as_slice()), Some(&b"durable"[..]));
    drop(m);
}

#[test]
fn appends_record_the_offsets_they_landed_at() {
    let l = Local::new();
    subtree(&l, "src", &[]);
    fs::write(l.path("src/log"), b"12345").unwrap();
    // Each write recorded as it is made, which the writeback cache (the default)
    // merges into the pages it writes back (tests/e2e/buffered_writes.rs).
    let m = l.mount(&["--no-writeback-cache"]);
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(l.path("src/log"))
        .unwrap();
    f.write_all(b"ab").unwrap();
    f.write_all(b"cd").unwrap();
    drop(f);
    let e = l.journal();
    assert_eq!(
        e.iter()
            .map(|x| (x.command, x.offset, x.data.clone()))
            .collect::<Vec<_>>(),
        vec![
            (Command::Write, 5, b"ab".to_vec()),
            (Command::Write, 7, b"cd".to_vec())
        ]
    );
    m.unmount();
    assert_eq!(fs::read(l.path("src/log")).unwrap(), b"12345abcd");
}

#[test]
fn rename_exchange_inside_and_across_a_rule() {
    let l = Local::new();
    subtree(&l, "src", &[]);
    fs::create_dir(l.path("out")).unwrap();
    for (p, c) in [("src/a", "A"), ("src/b", "B"), ("out/c", "C")] {
        fs::write(l.path(p), c).unwrap();
    }
    let m = l.mount(&[]);
    exchange(&l.path("src/a"), &l.path("src/b"));
    exchange(&l.path("src/a"), &l.path("out/c"));
    let e = l.journal();
    assert_eq!(
        names(&l, &e),
        vec![
            (Command::Rename, "src/a".into(), "src/b".into()),
            (Command::Delete, "src/a".into(), "".into()),
            (Command::Copy, "src/a".into(), "".into()),
        ]
    );
    assert_eq!(e[0].offset, libc::RENAME_EXCHANGE as u64);
    m.unmount();
    assert_eq!(fs::read(l.path("src/a")).unwrap(), b"C");
    assert_eq!(fs::read(l.path("src/b")).unwrap(), b"A");
    assert_eq!(fs::read(l.path("out/c")).unwrap(), b"B");
}

fn exchange(a: &std::path::Path, b: &std::path::Path) {
    let ca = std::ffi::CString::new(a.to_str().unwrap()).unwrap();
    let cb = std::ffi::CString::new(b.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(rc, 0, "renameat2: {}", std::io::Error::last_os_error());
}

#[test]
fn o_sync_writes_and_their_entries_survive_a_kill() {
    use std::os::unix::fs::OpenOptionsExt;
    let l = Local::new();
    subtree(&l, "src", &[]);
    let mut m = l.mount(&[]);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(libc::O_SYNC)
        .open(l.path("src/s"))
        .unwrap();
    f.write_all(b"synced").unwrap();
    m.kill9();
    drop(f);
    assert!(l
        .journal()
        .iter()
        .any(|x| x.command == Command::Write && x.data == b"synced"));
    drop(m);
}
