//! Spool sites (seeds/000): a source's entries shipped as sealed spool files by real transfer
//! tools (rsync, rclone) into a router's `--spool-in`, acknowledgements carried back; files
//! delivered out of order, twice, truncated, damaged or forged; kill -9 of either side.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mirror_tests::{wait_converged, wait_until, Local, Router};

use crate::mirror_workload::Workload;

const CONVERGE: Duration = Duration::from_secs(180);

/// A source with a spool site, and a router that applies what arrives in its inbox.
struct SpoolPair {
    local: Local,
    router: Router,
    /// `<tmp>/outbox`: where mirror-sendd writes.
    outbox: PathBuf,
    /// The router's inbox and ack directory.
    inbox: PathBuf,
    acks: PathBuf,
    site: String,
}

fn spool_pair(dest: &str, router_extra: &[&str]) -> SpoolPair {
    let local = Local::new();
    let base = local.tmp.path().canonicalize().unwrap();
    let outbox = base.join("outbox");
    let inbox = base.join("inbox");
    let acks = base.join("acks");
    let inbox_s = inbox.to_string_lossy().into_owned();
    let acks_s = acks.to_string_lossy().into_owned();
    let mut extra = vec!["--spool-in", &inbox_s, "--spool-ack", &acks_s];
    extra.extend_from_slice(router_extra);
    let router = Router::start_args(None, &extra);
    let site = format!("spool:{}", outbox.display());
    // The spool's own key (given with a trailing slash: the rule's form is stored), not the
    // test's key for every site.
    let out = local.ctl(&["key", "rm", "*"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = local.ctl(&["key", "add", &format!("{site}/"), mirror_tests::TEST_KEY]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    local.add_rule_validated(&format!("{}/", local.dir.display()), &site, dest, &[]);
    SpoolPair {
        local,
        router,
        outbox,
        inbox,
        acks,
        site,
    }
}

/// A transfer tool run in a loop in the background until dropped: spool files from the outbox
/// to the inbox, acknowledgements back.
struct Carrier {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Carrier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a transfer; rsync's 24 ("some files vanished": an acknowledged file left the outbox
/// while it ran) is no failure.
fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run the transfer tool");
    assert!(
        out.status.success() || out.status.code() == Some(24),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rsync -a` both ways, every 100 ms (what a cron job or a loop does, faster).
fn rsync_loop(p: &SpoolPair) -> Carrier {
    carrier(p, |outbox, inbox, acks| {
        run(Command::new("rsync")
            .args(["-a", "--exclude", ".tmp/", "--exclude", "acks/"])
            .arg(format!("{}/", outbox.display()))
            .arg(format!("{}/", inbox.display())));
        // The acknowledgement keeps its size and may change twice within a second: rsync's
        // quick check (size and whole seconds) would skip it, so it compares contents.
        run(Command::new("rsync")
            .args(["-a", "--checksum", "--exclude", ".*"])
            .arg(format!("{}/", acks.display()))
            .arg(format!("{}/acks/", outbox.display())));
    })
}

/// `rclone move --immutable` of the spool files (they leave the outbox once carried), `rclone
/// copy` of the acknowledgements.
fn rclone_loop(p: &SpoolPair) -> Carrier {
    carrier(p, |outbox, inbox, acks| {
        run(Command::new("rclone")
            .args([
                "move",
                "--immutable",
                "--exclude",
                ".tmp/**",
                "--exclude",
                "acks/**",
            ])
            .arg(outbox)
            .arg(inbox));
        run(Command::new("rclone")
            .args(["copy", "--exclude", ".*"])
            .arg(acks)
            .arg(outbox.join("acks")));
    })
}

fn carrier(p: &SpoolPair, step: fn(&Path, &Path, &Path)) -> Carrier {
    let stop = Arc::new(AtomicBool::new(false));
    let (outbox, inbox, acks) = (p.outbox.clone(), p.inbox.clone(), p.acks.clone());
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        // Bounded: a test never runs longer than this anyway.
        for _ in 0..20_000 {
            if s.load(Ordering::Relaxed) {
                return;
            }
            fs::create_dir_all(&outbox).ok();
            fs::create_dir_all(&acks).ok();
            step(&outbox, &inbox, &acks);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    Carrier {
        stop,
        thread: Some(thread),
    }
}

/// The spool files in `dir`, sorted by name (their sequence).
fn spool_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "spool"))
        .collect();
    v.sort();
    v
}

fn sender_args() -> Vec<&'static str> {
    vec!["--spool-age", "300ms", "--spool-size", "256K"]
}

#[test]
fn a_random_workload_through_rsync_reaches_the_backup_byte_for_byte() {
    let p = spool_pair("w", &[]);
    let m = p.local.mount(&[]);
    let _s = p.local.sender_with(&sender_args());
    let _c = rsync_loop(&p);
    let mut w = Workload::new(&p.local.dir, 0x5b00_0001, 48);
    for _ in 0..2000 {
        w.step();
    }
    let n = wait_converged(&p.local.dir, &p.router.path("w"), CONVERGE);
    eprintln!("operations {}, files compared {n}", w.ops);
    assert!(n >= 40);
    // Acknowledged files leave the outbox and the inbox.
    wait_until(Duration::from_secs(60), "the outbox emptied", || {
        spool_files(&p.outbox).is_empty() && spool_files(&p.inbox).is_empty()
    });
    let st = p.router.status();
    let src = &st["spool"][0];
    assert!(src["applied_files"].as_u64().unwrap() >= 2, "{st}");
    assert!(src["refused"].as_array().unwrap().is_empty(), "{st}");
    drop(m);
    p.local.assert_no_errors();
    assert!(
        p.router.error_log().trim().is_empty(),
        "{}",
        p.router.error_log()
    );
    let _ = &p.site;
}

#[test]
fn a_random_workload_through_rclone_move_converges() {
    let p = spool_pair("w", &[]);
    let m = p.local.mount(&[]);
    let _s = p.local.sender_with(&sender_args());
    let _c = rclone_loop(&p);
    let mut w = Workload::new(&p.local.dir, 0x5b00_0002, 48);
    for _ in 0..2000 {
        w.step();
    }
    let n = wait_converged(&p.local.dir, &p.router.path("w"), CONVERGE);
    eprintln!("operations {}, files compared {n}", w.ops);
    drop(m);
    p.local.assert_no_errors();
}

/// The spool files sealed in `outbox` hold an entry naming `marker` (everything written
/// before it is sealed then: files are sealed in order).
fn sealed_through(outbox: &Path, marker: &str) -> bool {
    let key = mirror_tests::test_key();
    spool_files(outbox).iter().any(|p| {
        fs::read(p)
            .ok()
            .and_then(|b| mirrorfs::wire::spool::open(&b, &key).ok())
            .is_some_and(|f| {
                f.entries
                    .iter()
                    .any(|e| e.name.ends_with(marker.as_bytes()))
            })
    })
}

/// Moves the sealed spool files out of the outbox (as `rclone move` does): name → bytes.
fn take_spool_files(outbox: &Path) -> Vec<(String, Vec<u8>)> {
    spool_files(outbox)
        .into_iter()
        .map(|p| {
            let b = fs::read(&p).unwrap();
            fs::remove_file(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), b)
        })
        .collect()
}

/// Delivers a file into the inbox the way a transfer tool does (temp name, then rename).
fn deliver(inbox: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(inbox).unwrap();
    let tmp = inbox.join(format!(".{name}.part"));
    fs::write(&tmp, bytes).unwrap();
    fs::rename(&tmp, inbox.join(name)).unwrap();
}

/// Carries the acknowledgements back by hand.
fn carry_acks(p: &SpoolPair) {
    let to = p.outbox.join("acks");
    fs::create_dir_all(&to).unwrap();
    for e in fs::read_dir(&p.acks).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with('.') {
            fs::copy(e.path(), to.join(&n)).unwrap();
        }
    }
}

fn spool_source(r: &Router) -> serde_json::Value {
    r.status()["spool"][0].clone()
}

fn refused_files(r: &Router) -> Vec<String> {
    spool_source(r)["refused"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| format!("{}: {}", x["file"], x["reason"]))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn files_out_of_order_twice_truncated_damaged_or_forged_wait_or_are_refused_and_it_converges() {
    let p = spool_pair("w", &[]);
    let m = p.local.mount(&[]);
    let _s = p
        .local
        .sender_with(&["--spool-age", "200ms", "--spool-size", "64K"]);
    let mut w = Workload::new(&p.local.dir, 0x5b00_0003, 30);
    for _ in 0..400 {
        w.step();
    }
    fs::write(p.local.dir.join("zz-marker"), b"the end").unwrap();
    wait_until(Duration::from_secs(60), "the workload sealed", || {
        sealed_through(&p.outbox, "zz-marker")
    });
    let files = take_spool_files(&p.outbox);
    assert!(files.len() >= 5, "{} spool files", files.len());
    let key = mirror_tests::test_key();
    let first = mirrorfs::wire::spool::open(&files[0].1, &key).unwrap();

    // The third arrives first: it waits, and status says for which.
    deliver(&p.inbox, &files[2].0, &files[2].1);
    wait_until(
        Duration::from_secs(30),
        "the source waits for file 1",
        || spool_source(&p.router)["waiting_for"][0].as_u64() == Some(1),
    );
    assert!(p.inbox.join(&files[2].0).exists(), "a later file stays");

    // File 1 with one byte changed, then forged with another key, then truncated: refused.
    let mut damaged = files[0].1.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x40;
    deliver(&p.inbox, &files[0].0, &damaged);
    wait_until(Duration::from_secs(30), "the damaged file refused", || {
        refused_files(&p.router)
            .iter()
            .any(|r| r.contains("checksum"))
    });
    let other = mirrorfs::wire::auth::Key::from_hex(&"ab".repeat(32)).unwrap();
    let mut b = mirrorfs::wire::spool::Builder::new(
        &first.header.site,
        first.header.stream,
        1,
        [0; 32],
        true,
        first.config_version,
        first.rules.clone(),
    );
    for e in first.entries.iter().take(3) {
        b.push(e.clone());
    }
    let (forged, _) = b.seal(&other, 1).unwrap();
    deliver(&p.inbox, &files[0].0, &forged);
    wait_until(Duration::from_secs(30), "the forged file refused", || {
        refused_files(&p.router).iter().any(|r| r.contains("MAC"))
    });
    deliver(&p.inbox, &files[0].0, &files[0].1[..files[0].1.len() - 100]);
    wait_until(
        Duration::from_secs(60),
        "the truncated file refused",
        || {
            refused_files(&p.router)
                .iter()
                .any(|r| r.contains("truncated"))
        },
    );
    assert!(
        !p.router.path("w").join("zz-marker").exists(),
        "nothing after the gap is applied"
    );

    // The good files, the second one twice, the rest shuffled: everything is applied.
    deliver(&p.inbox, &files[0].0, &files[0].1);
    deliver(&p.inbox, &files[1].0, &files[1].1);
    wait_until(Duration::from_secs(30), "files 1 to 3 applied", || {
        spool_source(&p.router)["next"].as_u64() >= Some(4)
    });
    deliver(&p.inbox, &files[1].0, &files[1].1);
    let mut rest: Vec<&(String, Vec<u8>)> = files[3..].iter().collect();
    rest.reverse();
    let half = rest.len() / 2;
    rest.rotate_left(half);
    for (n, b) in rest {
        deliver(&p.inbox, n, b);
    }
    // A good file under another file's name is refused: its name must match its header.
    let last = files.len() - 1;
    deliver(&p.inbox, &files[last].0, &files[last - 1].1);
    wait_until(Duration::from_secs(30), "the misnamed file refused", || {
        refused_files(&p.router)
            .iter()
            .any(|r| r.contains("does not match its header"))
    });
    deliver(&p.inbox, &files[last].0, &files[last].1);
    // A different file with a number already applied (sealed with the right key) is refused.
    let mut b = mirrorfs::wire::spool::Builder::new(
        &first.header.site,
        first.header.stream,
        2,
        first.hash,
        false,
        first.config_version,
        first.rules.clone(),
    );
    b.push(first.entries[0].clone());
    let (impostor, _) = b.seal(&key, 2).unwrap();
    deliver(&p.inbox, &files[1].0, &impostor);
    wait_until(Duration::from_secs(30), "the impostor refused", || {
        refused_files(&p.router)
            .iter()
            .any(|r| r.contains("different file with sequence number 2"))
    });
    let n = files.len() as u64;
    wait_until(Duration::from_secs(60), "every file applied", || {
        spool_source(&p.router)["next"].as_u64() == Some(n + 1)
    });
    let src = spool_source(&p.router);
    assert_eq!(src["applied_files"].as_u64(), Some(n), "{src}");
    assert!(src["waiting_for"].is_null(), "{src}");
    carry_acks(&p);
    let compared = wait_converged(&p.local.dir, &p.router.path("w"), CONVERGE);
    assert!(compared >= 20);
    // The refusals are reported in the source's acknowledgement too, and in its log.
    let out = p.local.ctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("spool"), "{text}");
    wait_until(
        Duration::from_secs(30),
        "the refusals reported to the source",
        || p.local.error_log().contains("refused a spool file"),
    );
    wait_until(Duration::from_secs(30), "the inbox empty", || {
        spool_files(&p.inbox).is_empty()
    });
    assert_eq!(
        spool_files(&p.inbox.join(".refused")).len(),
        0,
        "refused ones carry a suffix"
    );
    // The damaged, forged, truncated, misnamed and impostor files, kept aside.
    assert_eq!(fs::read_dir(p.inbox.join(".refused")).unwrap().count(), 5);
    drop(m);
}

#[test]
fn kill9_of_the_sender_or_the_coordinator_ten_rounds_converges_applying_each_file_once() {
    let p = spool_pair("w", &[]);
    let m = p.local.mount(&[]);
    let args = ["--spool-age", "200ms", "--spool-size", "64K"];
    let mut s = p.local.sender_with(&args);
    let _c = rsync_loop(&p);
    let mut r = p.router;
    let mut w = Workload::new(&p.local.dir, 0x5b00_0004, 30);
    for round in 0..10 {
        for _ in 0..150 {
            w.step();
        }
        if round % 2 == 0 {
            s.kill9();
            for _ in 0..30 {
                w.step();
            }
            s = p.local.sender_with(&args);
        } else {
            r.kill9();
            for _ in 0..30 {
                w.step();
            }
            r.restart();
        }
        eprintln!("round {round}: restarted");
    }
    let n = wait_converged(&p.local.dir, &r.path("w"), CONVERGE);
    eprintln!("operations {}, files compared {n}", w.ops);
    wait_until(Duration::from_secs(60), "the outbox emptied", || {
        spool_files(&p.outbox).is_empty()
    });
    let src = r.status()["spool"][0].clone();
    let next = src["next"].as_u64().unwrap();
    assert_eq!(src["applied_files"].as_u64(), Some(next - 1), "{src}");
    assert!(src["refused"].as_array().unwrap().is_empty(), "{src}");
    drop(m);
}

#[test]
fn a_live_site_and_a_spool_site_for_the_same_files_both_converge() {
    let live = Router::start();
    let p = spool_pair("w", &[]);
    let out = p
        .local
        .ctl(&["key", "add", &live.site(), mirror_tests::TEST_KEY]);
    assert!(out.status.success());
    // A second rule for the same files, to the live router.
    p.local.add_rule_validated(
        &format!("{}/", p.local.dir.display()),
        &live.site(),
        "w",
        &[],
    );
    let m = p.local.mount(&[]);
    let _s = p.local.sender_with(&sender_args());
    let _c = rclone_loop(&p);
    let mut w = Workload::new(&p.local.dir, 0x5b00_0005, 40);
    for _ in 0..600 {
        w.step();
    }
    let a = wait_converged(&p.local.dir, &live.path("w"), CONVERGE);
    let b = wait_converged(&p.local.dir, &p.router.path("w"), CONVERGE);
    assert_eq!(a, b);
    drop(m);
    p.local.assert_no_errors();
}

#[test]
fn spool_sites_refuse_what_needs_a_live_router_with_a_clear_message() {
    let p = spool_pair("w", &[]);
    let out = p.local.ctl(&["rule", "list", "--json"]);
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0]["id"]
        .as_u64()
        .unwrap()
        .to_string();
    let out = p.local.ctl(&["rule", "set", &id, "--mode", "sync"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spool site"), "{err}");
    let out = p.local.ctl(&[
        "rule",
        "add",
        &format!("{}/x/", p.local.dir.display()),
        "--site",
        &p.site,
        "--dest",
        "x",
        "--mode",
        "sync",
    ]);
    assert!(!out.status.success());
    let m = p.local.mount(&[]);
    let _s = p.local.sender_with(&sender_args());
    let out = p.local.ctl(&["verify"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spool"), "{err}");
    // An outbox inside what a rule selects would send its own files for ever.
    let inside = format!("spool:{}/out", p.local.dir.display());
    let out = p
        .local
        .ctl(&["rule", "add", "/var/tmp/", "--site", &inside, "--dest", "z"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("inside"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One coordinator per inbox.
    let inbox = p.inbox.to_string_lossy().into_owned();
    let second = Command::new(mirror_tests::bin("mirror-routerd"))
        .args(["--spool-in", &inbox, "--root"])
        .arg(p.local.tmp.path().join("root2"))
        .arg("--state")
        .arg(p.local.tmp.path().join("rstate2"))
        .output()
        .expect("run a second mirror-routerd");
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another mirror-routerd applies the spool inbox"),
        "{err}"
    );
    for bad in ["spool:relative/dir", "spool:/a b"] {
        let out = p
            .local
            .ctl(&["rule", "add", "/tmp/", "--site", bad, "--dest", "y"]);
        assert!(!out.status.success(), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(bad));
    }
    drop(m);
}

/// A FUSE mount of another directory by `rclone mount` (a network file system stands in),
/// unmounted on drop.
struct RcloneMount {
    at: PathBuf,
    child: std::process::Child,
}

impl RcloneMount {
    fn start(remote: &Path, at: &Path) -> RcloneMount {
        fs::create_dir_all(at).unwrap();
        let child = Command::new("rclone")
            .arg("mount")
            .arg(remote)
            .arg(at)
            .args(["--vfs-cache-mode", "off"])
            .args(["--dir-cache-time", "0s", "--poll-interval", "0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run rclone mount");
        let m = RcloneMount {
            at: at.to_path_buf(),
            child,
        };
        wait_until(Duration::from_secs(30), "rclone mount up", || {
            fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .contains(&format!(" {} ", at.display()))
        });
        m
    }
}

impl Drop for RcloneMount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.at).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.at)
            .status();
    }
}

#[test]
fn an_outbox_on_a_network_file_system_reaches_the_inbox_with_no_transfer_tool() {
    let local = Local::new();
    let base = local.tmp.path().canonicalize().unwrap();
    let inbox = base.join("inbox");
    fs::create_dir_all(&inbox).unwrap();
    let inbox_s = inbox.to_string_lossy().into_owned();
    // The backup host's inbox, and its acknowledgements beneath it (the default).
    let router = Router::start_args(None, &["--spool-in", &inbox_s]);
    // The source sees that directory through a network file system (rclone mount here).
    let outbox = base.join("net");
    let _net = RcloneMount::start(&inbox, &outbox);
    local.add_rule_validated(
        &format!("{}/", local.dir.display()),
        &format!("spool:{}", outbox.display()),
        "w",
        &[],
    );
    let m = local.mount(&[]);
    let _s = local.sender_with(&sender_args());
    let mut w = Workload::new(&local.dir, 0x5b00_0006, 30);
    for _ in 0..500 {
        w.step();
    }
    let n = wait_converged(&local.dir, &router.path("w"), CONVERGE);
    assert!(n >= 20);
    wait_until(Duration::from_secs(60), "every file acknowledged", || {
        spool_files(&inbox).is_empty()
            && local.status()[0]["spool"]
                .as_str()
                .is_some_and(|t| t.contains("every sealed file acknowledged"))
    });
    drop(m);
    local.assert_no_errors();
}

#[test]
fn sync_wait_seals_at_once_and_a_backlog_past_the_queue_limit_blocks_the_site_until_acks_come() {
    let p = spool_pair("w", &[]);
    let m = p.local.mount(&[]);
    // Files would wait an hour for their age: only the barrier seals them.
    let _s = p.local.sender_with(&[
        "--spool-age",
        "1h",
        "--spool-size",
        "64K",
        "--queue-limit",
        "512K",
    ]);
    wait_until(
        Duration::from_secs(30),
        "mirror-sendd serving the spool",
        || p.local.status()[0]["spool"].is_string(),
    );
    fs::write(p.local.dir.join("a"), vec![7u8; 20_000]).unwrap();
    let carrier = rsync_loop(&p);
    let dir = p.local.dir.to_string_lossy().into_owned();
    let out = p.local.ctl(&["sync", &dir, "--wait", "--timeout", "120"]);
    assert!(
        out.status.success(),
        "sync --wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(p.router.path("w/a")).unwrap(), vec![7u8; 20_000]);

    // No transport: the backlog grows past the queue limit and the site is blocked.
    drop(carrier);
    for i in 0..20 {
        fs::write(p.local.dir.join(format!("b{i}")), vec![i as u8; 100_000]).unwrap();
    }
    wait_until(Duration::from_secs(60), "the spool site blocked", || {
        p.local.status()[0]["blocked"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("waiting for transport") && r.contains("queue limit"))
    });
    let text = String::from_utf8_lossy(&p.local.ctl(&["status"]).stdout).into_owned();
    assert!(
        text.contains("BLOCKED") || text.contains("blocked"),
        "{text}"
    );
    // The transfer tool is back: acknowledgements arrive, the site goes on.
    let _c = rsync_loop(&p);
    let out = p.local.ctl(&["unblock"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = wait_converged(&p.local.dir, &p.router.path("w"), CONVERGE);
    assert_eq!(n, 21);
    // The files sent whole are done with once acknowledged, although they were more than the
    // limit: the site is not blocked again by them. (The file holding their last part waits
    // for its age, an hour here: a barrier seals it.)
    let a = format!("{dir}/a");
    let out = p.local.ctl(&["sync", &a, "--wait", "--timeout", "120"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(60), "the dirty set retired", || {
        let st = p.local.status();
        st[0]["dirty_files"].as_u64() == Some(0) && st[0]["blocked"].is_null()
    });
    drop(m);
}

#[test]
fn a_file_lost_on_the_way_is_written_again_byte_for_byte_on_unblock_and_after_resend_after() {
    let p = spool_pair("w", &[]);
    let m = p.local.mount(&[]);
    let args = ["--spool-age", "200ms", "--spool-size", "64K"];
    let mut s = p
        .local
        .sender_with(&[&args[..], &["--spool-resend-after", "1h"]].concat());
    let mut w = Workload::new(&p.local.dir, 0x5b00_0007, 20);
    for _ in 0..300 {
        w.step();
    }
    fs::write(p.local.dir.join("zz-marker"), b"the end").unwrap();
    wait_until(Duration::from_secs(60), "the workload sealed", || {
        sealed_through(&p.outbox, "zz-marker")
    });
    // `rclone move` took every file; the second never arrived.
    let files = take_spool_files(&p.outbox);
    assert!(files.len() >= 3, "{} files", files.len());
    for (i, (n, b)) in files.iter().enumerate() {
        if i != 1 {
            deliver(&p.inbox, n, b);
        }
    }
    wait_until(
        Duration::from_secs(30),
        "the router waits for file 2",
        || spool_source(&p.router)["waiting_for"][0].as_u64() == Some(2),
    );
    let text = String::from_utf8_lossy(&p.router.ctl(&["status"]).stdout).into_owned();
    assert!(text.contains("WAITING for spool file 2"), "{text}");
    carry_acks(&p);
    // `mirror-ctl unblock` puts the lost file back into the outbox, byte for byte.
    let out = p.local.ctl(&["unblock", &p.site]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lost = p.outbox.join(&files[1].0);
    wait_until(
        Duration::from_secs(30),
        "the lost file written again",
        || lost.exists(),
    );
    assert_eq!(fs::read(&lost).unwrap(), files[1].1);
    // Lost once more: `--spool-resend-after` brings it back on its own.
    fs::remove_file(&lost).unwrap();
    s.kill9();
    let _s = p
        .local
        .sender_with(&[&args[..], &["--spool-resend-after", "2s"]].concat());
    wait_until(
        Duration::from_secs(30),
        "the lost file written again",
        || lost.exists(),
    );
    assert_eq!(fs::read(&lost).unwrap(), files[1].1);
    deliver(&p.inbox, &files[1].0, &files[1].1);
    let n = files.len() as u64;
    wait_until(Duration::from_secs(30), "every file applied", || {
        spool_source(&p.router)["next"].as_u64() == Some(n + 1)
    });
    // From here a transfer tool again (copies the router asked for may follow).
    let _c = rsync_loop(&p);
    wait_converged(&p.local.dir, &p.router.path("w"), CONVERGE);
    wait_until(Duration::from_secs(30), "the outbox emptied", || {
        spool_files(&p.outbox).is_empty()
    });
    drop(m);
}

/// A free loopback port (bound and let go: the server started next takes it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A server a backup host runs for the transfer tool (SFTP, an rsync daemon) on a loopback
/// port, stopped on drop.
struct Server {
    port: u16,
    child: std::process::Child,
}

impl Server {
    /// Runs `cmd` (listening on `port`) and waits until it accepts connections.
    fn start(mut cmd: Command, port: u16, what: &str) -> Server {
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("run {what}: {e}"));
        let s = Server { port, child };
        wait_until(Duration::from_secs(30), what, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        s
    }

    /// `rclone serve sftp` of `dir`.
    fn sftp(dir: &Path, cache: &Path) -> Server {
        let port = free_port();
        let mut cmd = Command::new("rclone");
        cmd.args(["serve", "sftp"])
            .arg(dir)
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(["--user", "mirror", "--pass", "secret"])
            .arg("--cache-dir")
            .arg(cache);
        Server::start(cmd, port, "the SFTP server up")
    }

    /// An rsync daemon serving the router's inbox (module `inbox`, writable) and ack
    /// directory (module `acks`, read-only).
    fn rsync_daemon(p: &SpoolPair) -> Server {
        let port = free_port();
        let conf = p.local.tmp.path().join("rsyncd.conf");
        fs::create_dir_all(&p.acks).unwrap();
        fs::write(
            &conf,
            format!(
                "use chroot = false\nuid = root\ngid = root\npid file = {}\n[inbox]\npath = {}\nread only = false\n[acks]\npath = {}\nread only = true\n",
                p.local.tmp.path().join("rsyncd.pid").display(),
                p.inbox.display(),
                p.acks.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("rsync");
        cmd.args(["--daemon", "--no-detach", "--address", "127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--config={}", conf.display()));
        Server::start(cmd, port, "the rsync daemon up")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `step` (one round of a transfer tool, as cron would) until the backup equals the
/// source and the outbox is empty (at most 600 rounds).
fn carry_until_done(p: &SpoolPair, mut step: impl FnMut()) {
    for _ in 0..600 {
        if tree_equal(&p.local.dir, &p.router.path("w")) && spool_files(&p.outbox).is_empty() {
            return;
        }
        step();
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn rclone_move_over_sftp_carries_the_spool_and_the_acknowledgements() {
    let p = spool_pair("w", &[]);
    let base = p.local.tmp.path().canonicalize().unwrap();
    // The backup host serves its inbox and ack directory's parent over SFTP.
    let server = Server::sftp(&base, &base.join("rclone-cache"));
    let pass = Command::new("rclone")
        .args(["obscure", "secret"])
        .output()
        .expect("rclone obscure");
    let pass = String::from_utf8_lossy(&pass.stdout).trim().to_string();
    let env = [
        ("RCLONE_CONFIG_BACKUP_TYPE", "sftp".to_string()),
        ("RCLONE_CONFIG_BACKUP_HOST", "127.0.0.1".to_string()),
        ("RCLONE_CONFIG_BACKUP_PORT", server.port.to_string()),
        ("RCLONE_CONFIG_BACKUP_USER", "mirror".to_string()),
        ("RCLONE_CONFIG_BACKUP_PASS", pass),
    ];
    let m = p.local.mount(&[]);
    let _s = p.local.sender_with(&sender_args());
    let mut w = Workload::new(&p.local.dir, 0x5b00_0008, 30);
    for _ in 0..500 {
        w.step();
    }
    fs::write(p.local.dir.join("zz-marker"), b"the end").unwrap();
    // The transfer, as a cron job would run it: spool files over, acknowledgements back.
    carry_until_done(&p, || {
        run(Command::new("rclone")
            .envs(env.iter().map(|(k, v)| (k, v.as_str())))
            .args([
                "move",
                "--immutable",
                "--exclude",
                ".tmp/**",
                "--exclude",
                "acks/**",
            ])
            .arg(&p.outbox)
            .arg("backup:inbox"));
        run(Command::new("rclone")
            .envs(env.iter().map(|(k, v)| (k, v.as_str())))
            .args(["copy", "--exclude", ".*", "backup:acks"])
            .arg(p.outbox.join("acks")));
    });
    let n = wait_converged(&p.local.dir, &p.router.path("w"), Duration::from_secs(5));
    assert!(n >= 20);
    assert!(spool_files(&p.outbox).is_empty());
    drop(m);
    p.local.assert_no_errors();
}

/// Whether `a` and `b` hold the same tree (no panic while they differ).
fn tree_equal(a: &Path, b: &Path) -> bool {
    b.exists() && mirror_tests::tree(a) == mirror_tests::tree(b)
}

#[test]
fn an_rsync_daemon_carries_the_spool_and_the_acknowledgements() {
    let p = spool_pair("w", &[]);
    fs::create_dir_all(&p.inbox).unwrap();
    let d = Server::rsync_daemon(&p);
    let m = p.local.mount(&[]);
    let _s = p.local.sender_with(&sender_args());
    let mut w = Workload::new(&p.local.dir, 0x5b00_0009, 30);
    for _ in 0..500 {
        w.step();
    }
    let url = format!("rsync://127.0.0.1:{}", d.port);
    carry_until_done(&p, || {
        run(Command::new("rsync")
            .args(["-a", "--exclude", ".tmp/", "--exclude", "acks/"])
            .arg(format!("{}/", p.outbox.display()))
            .arg(format!("{url}/inbox/")));
        run(Command::new("rsync")
            .args(["-a", "--checksum", "--exclude", ".*"])
            .arg(format!("{url}/acks/"))
            .arg(format!("{}/acks/", p.outbox.display())));
    });
    let n = wait_converged(&p.local.dir, &p.router.path("w"), Duration::from_secs(5));
    assert!(n >= 20);
    assert!(spool_files(&p.outbox).is_empty());
    drop(m);
    p.local.assert_no_errors();
}

#[test]
fn files_sealed_under_a_wrong_key_are_refused_reported_and_sealed_again_once_it_is_corrected() {
    let p = spool_pair("w", &[]);
    // A typo in the key: the router refuses what is sealed with it.
    let wrong = "cd".repeat(32);
    let out = p.local.ctl(&["key", "add", &p.site, &wrong]);
    assert!(out.status.success());
    let m = p.local.mount(&[]);
    let _s = p.local.sender_with(&sender_args());
    let _c = rsync_loop(&p);
    fs::write(p.local.dir.join("a"), b"first").unwrap();
    wait_until(
        Duration::from_secs(60),
        "the refusal reported to the source",
        || {
            p.local.status()[0]["spool"].as_str().is_some_and(|t| {
                t.contains("REFUSED") && t.contains("keys here and at the router differ")
            })
        },
    );
    assert!(!p.router.path("w/a").exists());
    // Corrected: the files not acknowledged are sealed again under the right key.
    let out = p
        .local
        .ctl(&["key", "add", &p.site, mirror_tests::TEST_KEY]);
    assert!(out.status.success());
    let out = p.local.ctl(&["unblock", &p.site]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(p.local.dir.join("b"), b"second").unwrap();
    wait_converged(&p.local.dir, &p.router.path("w"), CONVERGE);
    wait_until(Duration::from_secs(60), "every file acknowledged", || {
        spool_files(&p.outbox).is_empty()
    });
    drop(m);
}

#[test]
fn a_sealed_file_lost_from_the_sources_state_is_sealed_again_from_the_journal() {
    let p = spool_pair("w", &[]);
    let m = p.local.mount(&[]);
    let args = ["--spool-age", "200ms", "--spool-size", "64K"];
    let mut s = p.local.sender_with(&args);
    let c = rsync_loop(&p);
    fs::write(p.local.dir.join("a"), b"one").unwrap();
    wait_converged(&p.local.dir, &p.router.path("w"), CONVERGE);
    wait_until(
        Duration::from_secs(60),
        "the first files acknowledged",
        || spool_files(&p.outbox).is_empty(),
    );
    // No transport; a file is sealed, then lost from the outbox and from the state directory.
    drop(c);
    fs::write(p.local.dir.join("gone.txt"), b"must arrive").unwrap();
    fs::write(p.local.dir.join("zz-marker"), b"the end").unwrap();
    wait_until(Duration::from_secs(60), "the change sealed", || {
        sealed_through(&p.outbox, "zz-marker")
    });
    s.kill9();
    let kept = fs::read_dir(p.local.state.join("spool"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    for f in spool_files(&kept).into_iter().chain(spool_files(&p.outbox)) {
        fs::remove_file(f).unwrap();
    }
    let _s = p.local.sender_with(&args);
    let _c = rsync_loop(&p);
    let n = wait_converged(&p.local.dir, &p.router.path("w"), CONVERGE);
    assert_eq!(n, 3);
    assert!(
        p.local.error_log().contains("removed from"),
        "{}",
        p.local.error_log()
    );
    assert!(spool_source(&p.router)["waiting_for"].is_null());
    drop(m);
}

#[test]
fn a_key_replaced_on_both_sides_while_running_keeps_the_spool_flowing() {
    let p = spool_pair("w", &[]);
    let m = p.local.mount(&[]);
    let _s = p.local.sender_with(&sender_args());
    let _c = rsync_loop(&p);
    fs::write(p.local.dir.join("a"), b"under the first key").unwrap();
    wait_converged(&p.local.dir, &p.router.path("w"), CONVERGE);
    // The operator replaces the key: on the router, then on the source.
    let new = "5e".repeat(32);
    let id = mirrorfs::state::hostname().unwrap_or_else(|| "localhost".into());
    let out = p.router.ctl(&["key", "add", &id, "--key", &new, "--namespace", "."]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = p.local.ctl(&["key", "add", &p.site, &new]);
    assert!(out.status.success());
    fs::write(p.local.dir.join("b"), b"under the second key").unwrap();
    wait_converged(&p.local.dir, &p.router.path("w"), CONVERGE);
    wait_until(Duration::from_secs(60), "every file acknowledged", || {
        spool_files(&p.outbox).is_empty()
    });
    drop(m);
}
