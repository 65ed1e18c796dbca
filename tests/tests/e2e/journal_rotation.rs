//! Issue 12 item 12: journal segments rotating every few hundred KiB under a delete-heavy
//! workload (files created and deleted, SQLite-like `-wal`/`-shm` companions that come and go,
//! renames over existing files), with kill -9 of mirror-sendd mixed in. The reader must never
//! report a healthy segment as damaged or gone, and no reconnect may drop or reorder an
//! entry: the backup ends equal to the source (`differences 0`).
//!
//! `MIRROR_FAULT_ROUNDS` (default 10) sets the kill -9 rounds.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mirror_tests::{assert_log_only, wait_converged, Local, Router};

use crate::mirror_workload::Rng;

const CONVERGE: Duration = Duration::from_secs(240);
/// A few hundred KiB per segment.
const SEGMENT: &str = "307200";

/// Creates and deletes files more than anything else.
struct Churn {
    root: PathBuf,
    rng: Rng,
    live: Vec<PathBuf>,
    ops: usize,
}

impl Churn {
    fn new(root: &Path, seed: u64) -> Churn {
        for d in ["a", "b", "a/c", "db"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        Churn {
            root: root.to_path_buf(),
            rng: Rng::new(seed),
            live: Vec::new(),
            ops: 0,
        }
    }

    fn data(&mut self, n: usize) -> Vec<u8> {
        let b = self.rng.next() as u8;
        (0..n).map(|i| b.wrapping_add((i / 13) as u8)).collect()
    }

    fn pick(&mut self) -> Option<usize> {
        (!self.live.is_empty()).then(|| self.rng.below(self.live.len() as u64) as usize)
    }

    fn step(&mut self) {
        self.ops += 1;
        let dirs = ["a", "b", "a/c"];
        match self.rng.below(100) {
            0..=29 => {
                let dir = dirs[self.rng.below(3) as usize];
                let rel = PathBuf::from(dir).join(format!("f{}", self.ops));
                let n = 100 + self.rng.below(12_000) as usize;
                let d = self.data(n);
                fs::write(self.root.join(&rel), d).unwrap();
                self.live.push(rel);
            }
            30..=59 => {
                if let Some(i) = self.pick() {
                    let rel = self.live.swap_remove(i);
                    fs::remove_file(self.root.join(rel)).unwrap();
                }
            }
            60..=74 => {
                // An SQLite-like transaction: the WAL and the shared-memory file appear, the
                // database grows, both companions go.
                let db = self.root.join("db/w.db");
                let shm = self.root.join("db/w.db-shm");
                let wal = self.root.join("db/w.db-wal");
                let page = self.data(4096);
                fs::write(&shm, vec![0u8; 32 << 10]).unwrap();
                let mut f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&wal)
                    .unwrap();
                f.write_all(&page).unwrap();
                drop(f);
                let mut f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&db)
                    .unwrap();
                f.write_all(&page).unwrap();
                drop(f);
                fs::remove_file(&wal).unwrap();
                if self.rng.below(3) > 0 {
                    fs::remove_file(&shm).unwrap();
                }
            }
            75..=84 => {
                // Write a temporary file and rename it over a live one.
                if let Some(i) = self.pick() {
                    let target = self.live[i].clone();
                    let tmp = target.with_extension("tmp");
                    let n = 1 + self.rng.below(6000) as usize;
                    let d = self.data(n);
                    fs::write(self.root.join(&tmp), d).unwrap();
                    fs::rename(self.root.join(&tmp), self.root.join(&target)).unwrap();
                }
            }
            85..=92 => {
                // A directory with a file, gone again.
                let d = self.root.join(format!("b/t{}", self.ops));
                fs::create_dir(&d).unwrap();
                fs::write(d.join("x"), b"short-lived").unwrap();
                fs::remove_file(d.join("x")).unwrap();
                fs::remove_dir(&d).unwrap();
            }
            _ => {
                if let Some(i) = self.pick() {
                    let p = self.root.join(&self.live[i]);
                    let n = self.rng.below(3000) as usize;
                    let d = self.data(n);
                    fs::write(p, d).unwrap();
                }
            }
        }
    }
}

#[test]
fn rotating_segments_under_deletes_and_sender_kills_lose_and_reorder_nothing() {
    let rounds: usize = std::env::var("MIRROR_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let r = Router::start();
    let l = Local::new();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "w", &[]);
    let m = l.mount(&["--segment-size", SEGMENT]);
    let mut s = l.sender();
    let mut w = Churn::new(&l.dir, 0x5eed_1201);
    let mut rng = Rng::new(0x0fa0_1202);
    let mut senders = vec![];
    for _ in 0..rounds {
        for _ in 0..(100 + rng.below(300)) {
            w.step();
        }
        s.kill9();
        senders.push(s.log_text());
        for _ in 0..(20 + rng.below(100)) {
            w.step();
        }
        s = l.sender();
    }
    for _ in 0..200 {
        w.step();
    }
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    senders.push(s.log_text());
    let segments = mirrorfs::journal::list_segments(&l.state.join("journal")).unwrap();
    let newest = segments.last().copied().unwrap_or(0);
    eprintln!(
        "faults {rounds}, operations {}, segments written {newest}, files compared {n}, differences 0",
        w.ops
    );
    assert!(newest > 20, "segments rotated: {newest}");
    for log in &senders {
        for bad in [
            "is corrupt",
            "no longer in the journal",
            "skipped the damaged",
        ] {
            assert!(!log.contains(bad), "a sender logged {bad:?}:\n{log}");
        }
    }
    drop(m);
    assert_log_only(
        "the source",
        &l.error_log(),
        &[
            "; retrying",
            " is blocked: ",
            " is blocked since ",
            " is unblocked (",
        ],
    );
    assert_log_only(
        "the router",
        &r.error_log(),
        &["session with 127.0.0.1:", "closed its session"],
    );
}
