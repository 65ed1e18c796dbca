//! Crash-safe recording (issue 12, items 3 and 10): a kill -9 of mirrorfs at any moment, or
//! changes made in the directory while it is not mounted, still reach the backup after the
//! next mount, stale names included; `status` shows the reconciliation.
//!
//! `MIRROR_FAULT_ROUNDS` (default 10) sets the kill -9 rounds.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mirror_tests::{assert_log_only, wait_converged, wait_until, Local, Router};

use crate::mirror_ops::mirrored;
use crate::mirror_workload::Rng;

const CONVERGE: Duration = Duration::from_secs(120);

/// The finding: a file appended to, a file deleted and a directory renamed in the plain
/// directory between an unmount and the next mount never reached the backup.
#[test]
fn changes_made_while_unmounted_reach_the_backup_after_the_next_mount() {
    let r = Router::start();
    let (l, m, _s) = mirrored(&r, "w", &[]);
    fs::write(l.path("append.txt"), b"first line\n").unwrap();
    fs::write(l.path("delete.txt"), b"to be deleted").unwrap();
    fs::create_dir_all(l.path("dir/sub")).unwrap();
    fs::write(l.path("dir/a"), b"a").unwrap();
    fs::write(l.path("dir/sub/b"), b"b").unwrap();
    fs::write(l.path("same-size"), b"AAAA").unwrap();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    m.unmount();

    // Unwatched: the plain directory.
    fs::OpenOptions::new()
        .append(true)
        .open(l.path("append.txt"))
        .unwrap()
        .write_all(b"second line\n")
        .unwrap();
    fs::remove_file(l.path("delete.txt")).unwrap();
    fs::rename(l.path("dir"), l.path("renamed")).unwrap();
    fs::write(l.path("renamed/sub/new"), b"new").unwrap();
    fs::write(l.path("fresh.txt"), b"fresh").unwrap();
    // Same size, other content: found by its ctime, not by comparing sizes.
    fs::write(l.path("same-size"), b"BBBB").unwrap();

    let _m = l.mount(&[]);
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    wait_until(CONVERGE, "the scan reported done in status", || {
        l.status().as_array().unwrap().iter().any(|s| {
            s["mount"]["scan"]["done"] == true
                && s["mount"]["scan"]["reason"] == "changes made while not mounted"
        })
    });
    let text = String::from_utf8_lossy(&l.ctl(&["status"]).stdout).into_owned();
    assert!(
        text.contains("reconciling changes made while not mounted"),
        "{text}"
    );
    l.assert_no_errors();
}

/// The finding: a directory replaced by a file of its name (and a file by a directory, a
/// symlink by a file) while not mounted blocked the backup file at the router (EISDIR,
/// ENOTDIR, a symlink refused) and the two sides stayed apart.
#[test]
fn a_name_that_changed_kind_while_unmounted_is_replaced_in_the_backup() {
    let r = Router::start();
    let (l, m, _s) = mirrored(&r, "w", &[]);
    fs::create_dir_all(l.path("was-dir/sub")).unwrap();
    fs::write(l.path("was-dir/sub/x"), b"x").unwrap();
    fs::write(l.path("was-file"), b"a file").unwrap();
    std::os::unix::fs::symlink("was-file", l.path("was-link")).unwrap();
    fs::create_dir(l.path("deep")).unwrap();
    fs::write(l.path("deep/was-file-too"), b"f").unwrap();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    m.unmount();

    fs::remove_dir_all(l.path("was-dir")).unwrap();
    fs::write(l.path("was-dir"), b"now a file").unwrap();
    fs::remove_file(l.path("was-file")).unwrap();
    fs::create_dir(l.path("was-file")).unwrap();
    fs::write(l.path("was-file/inside"), b"inside").unwrap();
    fs::remove_file(l.path("was-link")).unwrap();
    fs::write(l.path("was-link"), b"no longer a link").unwrap();
    fs::remove_file(l.path("deep/was-file-too")).unwrap();
    fs::create_dir(l.path("deep/was-file-too")).unwrap();

    let _m = l.mount(&[]);
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    wait_until(CONVERGE, "the scan reported done in status", || {
        l.status()
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["mount"]["scan"]["done"] == true)
    });
    let blocked = r.status()["blocked"].clone();
    assert!(blocked.as_array().is_none_or(|a| a.is_empty()), "{blocked}");
    l.assert_no_errors();
}

/// A process with its working directory in the tree before the mount keeps writing beneath
/// it, unrecorded: mirrorfs warns at mount.
#[test]
fn a_process_working_in_the_directory_underneath_is_warned_about() {
    let l = Local::new();
    l.add_rule(&format!("{}/", l.dir.display()), "127.0.0.1:9", "w", &[]);
    let mut sleeper = std::process::Command::new("sleep")
        .arg("600")
        .current_dir(&l.dir)
        .spawn()
        .unwrap();
    let m = l.mount(&[]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let log = m.unmount();
    assert!(
        log.contains(&format!(
            "process {} (sleep) has its working directory in",
            sleeper.id()
        )),
        "{log}"
    );
}

/// Writers that go on whatever happens to the mount: their errors while mirrorfs is dead
/// (ENOTCONN) are expected; what they manage to write is the truth the backup must reach.
/// Each operation holds the gate shared, so the test can mount with no file held open below
/// the mount point (a process holding one keeps writing underneath, unrecorded: mirrorfs
/// warns about it at mount, and nothing can record it).
struct Writers {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    gate: Arc<std::sync::RwLock<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    fn start(dir: &Path, seed: u64) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(std::sync::RwLock::new(()));
        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn Fn(&mut Rng) + Send>| {
            let (stop, ops, gate) = (stop.clone(), ops.clone(), gate.clone());
            let mut rng = Rng::new(seed ^ crc32fast::hash(name.as_bytes()) as u64);
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _op = gate.read().unwrap_or_else(|p| p.into_inner());
                        f(&mut rng);
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .unwrap()
        };
        for w in 0..3 {
            let d = dir.join(format!("w{w}"));
            let _ = fs::create_dir_all(&d);
            threads.push(spawn(
                &format!("writer{w}"),
                Box::new(move |rng: &mut Rng| small_op(&d, rng)),
            ));
        }
        let big = dir.join("big");
        let _ = fs::create_dir_all(&big);
        threads.push(spawn(
            "sequential",
            Box::new(move |rng: &mut Rng| {
                let p = big.join(format!("f{}", rng.below(3)));
                let chunk = vec![rng.below(256) as u8; 256 << 10];
                if let Ok(mut f) = fs::File::create(&p) {
                    for _ in 0..(1 + rng.below(16)) {
                        if f.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                }
            }),
        ));
        let inplace = dir.join("inplace.db");
        let _ = fs::write(&inplace, vec![0u8; 1 << 20]);
        threads.push(spawn(
            "rewriter",
            Box::new(move |rng: &mut Rng| {
                if let Ok(mut f) = fs::OpenOptions::new().write(true).open(&inplace) {
                    let off = rng.below(256) * 4096;
                    let byte = rng.below(256) as u8;
                    let _ = f
                        .seek(SeekFrom::Start(off))
                        .and_then(|_| f.write_all(&[byte; 4096]));
                }
            }),
        ));
        Writers {
            stop,
            ops,
            gate,
            threads,
        }
    }

    /// Mounts while no operation is in progress.
    fn mount_between_operations(&self, l: &Local) -> mirror_tests::Mount {
        let _paused = self.gate.write().unwrap_or_else(|p| p.into_inner());
        l.mount(&[])
    }

    fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// One small-file operation in `d`: create, overwrite, append, rename over, delete, mkdir.
fn small_op(d: &Path, rng: &mut Rng) {
    let name = |rng: &mut Rng| d.join(format!("f{}", rng.below(12)));
    let _ = match rng.below(7) {
        0 | 1 => fs::write(
            name(rng),
            format!("{}\n", rng.next()).repeat(1 + rng.below(50) as usize),
        ),
        2 => fs::OpenOptions::new()
            .append(true)
            .open(name(rng))
            .and_then(|mut f| f.write_all(b"appended\n")),
        3 => {
            // An editor's save: write a temporary file, rename it over.
            let tmp = d.join(format!(".tmp{}", rng.below(3)));
            let to = name(rng);
            fs::write(&tmp, format!("saved {}\n", rng.next())).and_then(|_| fs::rename(&tmp, &to))
        }
        4 => fs::rename(name(rng), name(rng)),
        5 => fs::remove_file(name(rng)),
        _ => {
            let sub: PathBuf = d.join(format!("s{}", rng.below(3)));
            fs::create_dir_all(&sub).and_then(|_| fs::write(sub.join("x"), rng.next().to_string()))
        }
    };
}

/// The finding: mirrorfs changed the directory first and journaled afterwards, so a kill -9
/// between the two lost the change (renames over, in-place writes), with status ok. Now every
/// such change is found at the next mount, and the backup converges, stale names removed.
#[test]
fn kill9_of_mirrorfs_under_writers_loses_nothing() {
    let rounds: usize = std::env::var("MIRROR_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let r = Router::start();
    let (l, mut m, _s) = mirrored(&r, "w", &[]);
    let mut rng = Rng::new(0xc4a5_4e11);
    let writers = Writers::start(&l.dir, 0x5eed_0003);
    for round in 0..rounds {
        // Let the writers do a random amount of work, then kill at that moment.
        let until = writers.ops() + 20 + rng.below(200);
        wait_until(CONVERGE, "the writers to make progress", || {
            writers.ops() >= until
        });
        m.kill9();
        drop(m);
        // A moment unmounted now and then: the writers go on in the plain directory.
        if round % 3 == 1 {
            let until = writers.ops() + 10;
            wait_until(CONVERGE, "writes while unmounted", || {
                writers.ops() >= until
            });
        }
        m = writers.mount_between_operations(&l);
    }
    let until = writers.ops() + 50;
    wait_until(CONVERGE, "the writers after the last mount", || {
        writers.ops() >= until
    });
    writers.stop();
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    eprintln!("faults {rounds}, files compared {n}, differences 0");
    drop(m);
    assert_log_only(
        "the source",
        &l.error_log(),
        &[
            "torn tail at offset ",
            "found a FUSE mount whose process is gone",
            // Open descriptors of the dead mount, which the kernel still lists.
            "before the mount: what it writes there",
        ],
    );
}
