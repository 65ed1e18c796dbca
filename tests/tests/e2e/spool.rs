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
