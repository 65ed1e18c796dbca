//! Paths longer than `PATH_MAX` (issue 13 item 5): ext4 holds names whose full path is longer
//! than the 4,096 bytes one system call takes, reached by `openat` from a deep directory
//! descriptor. Through mirrorfs they could not be reached at all (every operation failed with
//! `ENAMETOOLONG`: mirrorfs names each file by its path from the root), nor mirrored, synced or
//! restored. Each test builds such a chain of directories (the same steps on ext4 and through
//! the mount), and checks the result underneath, on the backup, and in a restored copy.
//! `docs/CONFORMANCE.md` lists the result beside ext4's.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mirror_tests::{wait_until, Local, Router};

use crate::mirror_ops::mirrored;

const CONVERGE: Duration = Duration::from_secs(60);

/// Components of the chain: 36 of 250 bytes, a path of 9,035 bytes below the tree (more
/// than `PATH_MAX`, and more than the 8,192 bytes the wire took for a name before).
const DEPTH: usize = 36;

/// The `i`th component (250 bytes).
fn part(i: usize) -> String {
    format!("{i:02}{}", "p".repeat(248))
}

/// The chain, relative.
fn chain_rel() -> PathBuf {
    (0..DEPTH).map(part).collect()
}

fn c(b: &[u8]) -> CString {
    CString::new(b).unwrap()
}

fn rc(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens directory `name` in `dir` (never through a symlink).
fn open_dir(dir: RawFd, name: &[u8]) -> io::Result<OwnedFd> {
    let n = c(name);
    // SAFETY: n is NUL-terminated; the descriptor is owned below.
    let fd = rc(unsafe {
        libc::openat(
            dir,
            n.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Walks (making the directories when `make`) the chain beneath `base`: its deepest directory.
fn chain(base: &Path, make: bool) -> io::Result<OwnedFd> {
    let mut cur = open_dir(libc::AT_FDCWD, base.as_os_str().as_bytes())?;
    for i in 0..DEPTH {
        let n = part(i);
        if make {
            In(&cur).mkdir(&n)?;
        }
        cur = open_dir(cur.as_raw_fd(), n.as_bytes())?;
    }
    Ok(cur)
}

fn write_at(dir: &OwnedFd, name: &str, data: &[u8]) -> io::Result<()> {
    let n = c(name.as_bytes());
    // SAFETY: n is NUL-terminated; the descriptor is owned below.
    let fd = rc(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            n.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    })?;
    // SAFETY: fd was just opened and is owned by nobody else.
    let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    use std::io::Write;
    (&f).write_all(data)?;
    f.sync_all()
}

fn read_at(dir: &OwnedFd, name: &str) -> io::Result<Vec<u8>> {
    let n = c(name.as_bytes());
    // SAFETY: n is NUL-terminated; the descriptor is owned below.
    let fd = rc(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            n.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just opened and is owned by nobody else.
    let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut v = Vec::new();
    use std::io::Read;
    (&f).read_to_end(&mut v)?;
    Ok(v)
}

/// `/proc/self/fd/N/NAME`: `name` in `dir` by a path one call takes.
fn by_fd(dir: &OwnedFd, name: &str) -> CString {
    c(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()).as_bytes())
}

fn exists_at(dir: &OwnedFd, name: &str) -> bool {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let n = c(name.as_bytes());
    // SAFETY: n is NUL-terminated; st is a valid stat buffer.
    unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            n.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        ) == 0
    }
}

fn outcome<T: std::fmt::Debug>(r: io::Result<T>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("error {e}"),
    }
}

/// The content of the file at the bottom.
const CONTENT: &[u8] = b"at the bottom of a path longer than PATH_MAX\n";

/// Calls on names in an open directory (the `*at` calls std has no form of).
struct In<'a>(&'a OwnedFd);

impl In<'_> {
    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<libc::c_int> {
        let (a, b) = (c(from.as_bytes()), c(to.as_bytes()));
        // SAFETY: NUL-terminated names in an open directory.
        rc(unsafe { libc::renameat(self.fd(), a.as_ptr(), self.fd(), b.as_ptr()) })
    }

    fn link(&self, from: &str, to: &str) -> io::Result<libc::c_int> {
        let (a, b) = (c(from.as_bytes()), c(to.as_bytes()));
        // SAFETY: NUL-terminated names in an open directory.
        rc(unsafe { libc::linkat(self.fd(), a.as_ptr(), self.fd(), b.as_ptr(), 0) })
    }

    fn symlink(&self, target: &str, name: &str) -> io::Result<libc::c_int> {
        let (t, n) = (c(target.as_bytes()), c(name.as_bytes()));
        // SAFETY: NUL-terminated strings; an open directory.
        rc(unsafe { libc::symlinkat(t.as_ptr(), self.fd(), n.as_ptr()) })
    }

    fn unlink(&self, name: &str, dir: bool) -> io::Result<libc::c_int> {
        let n = c(name.as_bytes());
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: a NUL-terminated name in an open directory.
        rc(unsafe { libc::unlinkat(self.fd(), n.as_ptr(), flags) })
    }

    fn mkdir(&self, name: &str) -> io::Result<libc::c_int> {
        let n = c(name.as_bytes());
        // SAFETY: a NUL-terminated name in an open directory.
        rc(unsafe { libc::mkdirat(self.fd(), n.as_ptr(), 0o755) })
    }

    fn chmod(&self, name: &str, mode: libc::mode_t) -> io::Result<libc::c_int> {
        let n = c(name.as_bytes());
        // SAFETY: a NUL-terminated name in an open directory.
        rc(unsafe { libc::fchmodat(self.fd(), n.as_ptr(), mode, 0) })
    }

    fn setxattr(&self, name: &str, key: &str, value: &[u8]) -> io::Result<libc::c_int> {
        let (p, k) = (by_fd(self.0, name), c(key.as_bytes()));
        // SAFETY: NUL-terminated strings; value is readable for its length.
        rc(unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                k.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        })
    }

    fn getxattr(&self, name: &str, key: &str) -> io::Result<Vec<u8>> {
        let (p, k) = (by_fd(self.0, name), c(key.as_bytes()));
        let mut v = [0u8; 64];
        // SAFETY: NUL-terminated strings; v is writable for its length.
        let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(v[..n as usize].to_vec())
    }
}

/// The steps at the bottom of a chain made beneath `base`: what each gave.
fn steps(base: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let deep = match chain(base, true) {
        Ok(d) => d,
        Err(e) => return vec![format!("mkdir chain: error {e}")],
    };
    let d = In(&deep);
    let mut step = |what: &str, r: String| out.push(format!("{what}: {r}"));
    step("create and write f", outcome(write_at(&deep, "f", CONTENT)));
    step("rename f g", outcome(d.rename("f", "g")));
    step(
        "setxattr g user.long",
        outcome(d.setxattr("g", "user.long", b"v")),
    );
    step(
        "getxattr g user.long",
        outcome(d.getxattr("g", "user.long")),
    );
    step("chmod g 640", outcome(d.chmod("g", 0o640)));
    step("link g g2", outcome(d.link("g", "g2")));
    step("symlink l -> g", outcome(d.symlink("g", "l")));
    step("create h", outcome(write_at(&deep, "h", b"h")));
    step("unlink h", outcome(d.unlink("h", false)));
    step(
        "mkdir s, rmdir s",
        outcome(d.mkdir("s").and_then(|_| d.unlink("s", true))),
    );
    step(
        "read g",
        outcome(read_at(&deep, "g").map(|b| String::from_utf8_lossy(&b).into_owned())),
    );
    out
}

/// What the steps leave at the bottom of the chain beneath `base`.
fn assert_left(base: &Path, what: &str) {
    let deep = chain(base, false).unwrap_or_else(|e| panic!("{what}: the chain: {e}"));
    assert_eq!(read_at(&deep, "g").unwrap(), CONTENT, "{what}: g");
    assert_eq!(read_at(&deep, "g2").unwrap(), CONTENT, "{what}: g2");
    assert!(!exists_at(&deep, "f"), "{what}: f renamed");
    assert!(!exists_at(&deep, "h"), "{what}: h unlinked");
    assert_eq!(
        In(&deep).getxattr("g", "user.long").unwrap(),
        b"v",
        "{what}: the xattr of g"
    );
}

/// Through a mount, every step at the bottom of a chain longer than `PATH_MAX` gives what it
/// gives on ext4, and leaves the same in the directory underneath.
#[test]
fn a_path_longer_than_path_max_is_reached_through_the_mount_as_on_ext4() {
    assert!(chain_rel().as_os_str().len() > libc::PATH_MAX as usize);
    let l = Local::new();
    l.add_rule(&format!("{}/", l.dir.display()), "127.0.0.1:9", "d", &[]);
    let plain = l.tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let on_ext4 = steps(&plain);
    assert!(
        on_ext4.iter().all(|s| s.contains(": ok")),
        "ext4 itself: {on_ext4:#?}"
    );
    assert_left(&plain, "ext4");
    let m = l.mount(&[]);
    assert_eq!(steps(&l.dir), on_ext4, "mirrorfs beside ext4");
    m.unmount();
    assert_left(&l.dir, "underneath, after unmount");
    l.assert_no_errors();
}

/// The file at the bottom of `base`'s chain, once it holds `want`.
fn wait_bottom(base: &Path, name: &str, want: &[u8], what: &str) {
    wait_until(CONVERGE, what, || {
        chain(base, false).is_ok_and(|d| read_at(&d, name).is_ok_and(|b| b == want))
    });
}

/// Live: a file written, renamed and linked at the bottom of a chain longer than `PATH_MAX`
/// reaches the backup (the router walks there in steps), and its deletion too.
#[test]
fn a_file_at_a_path_longer_than_path_max_is_mirrored_live() {
    let r = Router::start();
    let (l, m, _s) = mirrored(&r, "long", &["--attrs"]);
    let deep = chain(&l.dir, true).unwrap();
    write_at(&deep, "f", CONTENT).unwrap();
    let backup = r.path("long");
    wait_bottom(&backup, "f", CONTENT, "f on the backup");
    let d = In(&deep);
    d.rename("f", "g").unwrap();
    d.link("g", "g2").unwrap();
    d.setxattr("g", "user.long", b"v").unwrap();
    write_at(&deep, "h", b"h").unwrap();
    wait_bottom(&backup, "h", b"h", "h on the backup");
    d.unlink("h", false).unwrap();
    wait_until(CONVERGE, "h deleted on the backup", || {
        chain(&backup, false).is_ok_and(|b| !exists_at(&b, "h"))
    });
    assert_left(&backup, "the backup");
    drop(m);
    l.assert_no_errors();
    assert!(r.error_log().trim().is_empty(), "{}", r.error_log());
}

/// Changes made at the bottom of a chain longer than `PATH_MAX` while the tree is not mounted
/// are found by the next mount's reconciliation (which walks there in steps) and reach the
/// backup.
#[test]
fn a_change_at_a_long_path_while_unmounted_reaches_the_backup_after_the_next_mount() {
    let r = Router::start();
    let (l, m, _s) = mirrored(&r, "long", &[]);
    let deep = chain(&l.dir, true).unwrap();
    write_at(&deep, "f", b"before").unwrap();
    drop(deep);
    let backup = r.path("long");
    wait_bottom(&backup, "f", b"before", "f on the backup");
    m.unmount();

    // Unwatched: the plain directory.
    let deep = chain(&l.dir, false).unwrap();
    write_at(&deep, "f", CONTENT).unwrap();
    write_at(&deep, "n", b"new while unmounted").unwrap();
    drop(deep);

    let _m = l.mount(&[]);
    wait_bottom(
        &backup,
        "f",
        CONTENT,
        "f changed while unmounted, on the backup",
    );
    wait_bottom(&backup, "n", b"new while unmounted", "n on the backup");
    l.assert_no_errors();
    assert!(r.error_log().trim().is_empty(), "{}", r.error_log());
}

/// `mirror-ctl sync` of a tree holding a path longer than `PATH_MAX` copies it (the walk of
/// `sync`, the sender's copy and the router's apply all reach it in steps).
#[test]
fn sync_copies_a_path_longer_than_path_max() {
    sync_case(false);
}

/// [`sync_copies_a_path_longer_than_path_max`] with the tree mounted (the copies are queued
/// by mirrorfs).
#[test]
fn sync_copies_a_path_longer_than_path_max_through_the_mount() {
    sync_case(true);
}

fn sync_case(mounted: bool) {
    let r = Router::start();
    let l = Local::new();
    let deep = chain(&l.dir, true).unwrap();
    write_at(&deep, "g", CONTENT).unwrap();
    drop(deep);
    l.add_rule_validated(
        &format!("{}/", l.dir.display()),
        &r.site(),
        "long",
        &["--no-sync"],
    );
    let m = mounted.then(|| l.mount(&[]));
    let _s = l.sender();
    // Queued into the journal (by mirrorfs when mounted); the sender sends it.
    let out = l.ctl(&["sync"]);
    assert!(
        out.status.success(),
        "sync: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("cannot"), "sync: {said}");
    wait_bottom(
        &r.path("long"),
        "g",
        CONTENT,
        "the synced file on the backup",
    );
    drop(m);
    l.assert_no_errors();
    assert!(r.error_log().trim().is_empty(), "{}", r.error_log());
}

/// `mirror-ctl restore` brings back a backup file at a path longer than `PATH_MAX` (the
/// router walks to it in steps, the restore writes it beneath DIR in steps). The backup is
/// made on the backup host directly, so only the restore's own walks are under test.
#[test]
fn restore_brings_back_a_path_longer_than_path_max() {
    let r = Router::start();
    let l = Local::new();
    std::fs::write(l.path("ready"), b"r").unwrap();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "long", &[]);
    let _s = l.sender();
    // The first copy is on the backup: the router has the site's rules.
    wait_until(CONVERGE, "the first copy on the backup", || {
        std::fs::read(r.path("long/ready")).is_ok_and(|b| b == b"r")
    });
    let deep = chain(&r.path("long"), true).unwrap();
    write_at(&deep, "g", CONTENT).unwrap();
    drop(deep);

    let to = l.tmp.path().join("restored");
    let src = l.dir.to_str().unwrap().to_string();
    let out = l.ctl(&["restore", &src, "--to", to.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("skipped"), "restore: {said}");
    let deep = chain(&to, false).expect("the chain in the restored copy");
    assert_eq!(read_at(&deep, "g").unwrap(), CONTENT, "the restored file");
    assert_eq!(std::fs::read(to.join("ready")).unwrap(), b"r");
    l.assert_no_errors();
    assert!(r.error_log().trim().is_empty(), "{}", r.error_log());
}

/// A change to a selected name longer than a journal entry takes (65,535 bytes) is refused
/// before it is made, with `ENAMETOOLONG` and an error line naming the limit, never made and
/// left unrecorded; the same name outside every rule is made as on ext4.
#[test]
fn a_selected_name_longer_than_the_journal_takes_is_refused_with_a_clear_error() {
    let l = Local::new();
    std::fs::create_dir(l.path("sel")).unwrap();
    std::fs::create_dir(l.path("free")).unwrap();
    l.add_rule(
        &format!("{}/sel/", l.dir.display()),
        "127.0.0.1:9",
        "d",
        &[],
    );
    let m = l.mount(&[]);
    // Directories of 250 bytes until the full name passes the limit.
    let limit = mirrorfs::journal::format::MAX_NAME_LEN;
    let walk = |top: &str| -> (usize, io::Result<()>) {
        let mut cur = open_dir(libc::AT_FDCWD, l.path(top).as_os_str().as_bytes()).unwrap();
        let mut len = l.path(top).as_os_str().len();
        for i in 0.. {
            let n = part(i);
            len += 1 + n.len();
            if let Err(e) = In(&cur).mkdir(&n) {
                return (len, Err(e));
            }
            cur = open_dir(cur.as_raw_fd(), n.as_bytes()).unwrap();
            if len > limit + 1000 {
                return (len, Ok(()));
            }
        }
        unreachable!()
    };
    let (len, res) = walk("sel");
    let e = res.expect_err("a selected name past the limit");
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "{e}");
    assert!(len > limit && len - 251 <= limit, "refused at {len} bytes");
    let (len, res) = walk("free");
    res.unwrap_or_else(|e| panic!("outside every rule, at {len} bytes: {e}"));
    m.unmount();
    mirror_tests::assert_log_only("mirrorfs", &l.error_log(), &["cannot be journaled"]);
    assert!(
        l.error_log().contains("cannot be journaled"),
        "{}",
        l.error_log()
    );
}

/// An adversarial finding of issue 13: a tree holding a name longer than the 65,535 bytes an
/// entry may carry, moved into a rule from a directory no rule selects, was copied by
/// mirror-sendd with that name anyway; the router refused the frame and ended the session,
/// again and again, so nothing of the site reached the backup any more (and the mount then
/// refused to remove the file). Now the copy leaves that name out, with an error naming it,
/// the rest flows, and the file can be removed through the mount.
#[test]
fn a_name_too_long_for_an_entry_moved_into_a_rule_is_left_out_and_the_rest_flows() {
    let r = Router::start();
    let l = Local::new();
    std::fs::create_dir(l.path("sel")).unwrap();
    std::fs::create_dir(l.path("free")).unwrap();
    l.add_rule_validated(&format!("{}/sel/", l.dir.display()), &r.site(), "d", &[]);
    let m = l.mount(&[]);
    let _s = l.sender();
    // Outside every rule: a chain of 250-byte directories past the limit, a file at its end.
    let limit = mirrorfs::entry::MAX_NAME_LEN;
    let top = l.path("free/deep");
    std::fs::create_dir(&top).unwrap();
    let mut cur = open_dir(libc::AT_FDCWD, top.as_os_str().as_bytes()).unwrap();
    let mut len = l.path("sel/deep").as_os_str().len();
    let mut i = 0;
    while len <= limit + 300 {
        let n = part(i);
        In(&cur).mkdir(&n).unwrap();
        cur = open_dir(cur.as_raw_fd(), n.as_bytes()).unwrap();
        len += 1 + n.len();
        i += 1;
    }
    write_at(&cur, "leaf", b"too deep to mirror").unwrap();
    std::fs::write(l.path("free/deep/near"), b"near the top").unwrap();
    std::fs::rename(&top, l.path("sel/deep")).unwrap();
    std::fs::write(l.path("sel/probe"), b"after the move").unwrap();
    wait_until(
        Duration::from_secs(60),
        "the files after the move on the backup",
        || {
            std::fs::read(r.path("d/probe")).is_ok_and(|d| d == b"after the move")
                && std::fs::read(r.path("d/deep/near")).is_ok_and(|d| d == b"near the top")
        },
    );
    assert!(
        l.error_log().contains("cannot be mirrored; left out"),
        "{}",
        l.error_log()
    );
    // The file that could not be mirrored can be removed through the mount.
    In(&cur)
        .unlink("leaf", false)
        .expect("removing the file too deep to mirror");
    drop(m);
    mirror_tests::assert_log_only("mirror-sendd", &l.error_log(), &["cannot be mirrored"]);
}
