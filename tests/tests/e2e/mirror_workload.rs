//! Random workloads forwarded end to end, also across kill -9 of mirror-sendd and of
//! mirror-routerd: the backup ends equal to the source, file by file.

use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mirror_tests::{wait_converged, Router};

use crate::mirror_ops::mirrored;

const CONVERGE: Duration = Duration::from_secs(120);

/// A small deterministic generator (xorshift64*), seeded per test.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `MIRROR_SEED` when set, else `seed`.
    pub fn new(seed: u64) -> Rng {
        let s = std::env::var("MIRROR_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(seed);
        eprintln!("workload seed {s} (set MIRROR_SEED to repeat)");
        Rng(s.max(1))
    }
    /// Next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// In `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Random operations on a tree of files in nested directories.
pub struct Workload {
    root: PathBuf,
    rng: Rng,
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    /// Operations done.
    pub ops: usize,
}

impl Workload {
    /// A workload under `root` with `files` files in nested directories to start with.
    pub fn new(root: &Path, seed: u64, files: usize) -> Workload {
        let mut w = Workload {
            root: root.to_path_buf(),
            rng: Rng::new(seed),
            files: Vec::new(),
            dirs: vec![PathBuf::new()],
            ops: 0,
        };
        for d in ["d0", "d1", "d0/e0", "d0/e1", "d1/e2", "d1/e2/f0"] {
            fs::create_dir_all(root.join(d)).unwrap();
            w.dirs.push(PathBuf::from(d));
        }
        for i in 0..files {
            let dir = w.pick_dir();
            let rel = dir.join(format!("file{i}"));
            let len = w.rng.below(20_000) as usize;
            fs::write(root.join(&rel), w.bytes(len)).unwrap();
            w.files.push(rel);
        }
        w
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let b = self.rng.next() as u8;
        (0..n).map(|i| b.wrapping_add((i / 7) as u8)).collect()
    }

    fn pick_dir(&mut self) -> PathBuf {
        let i = self.rng.below(self.dirs.len() as u64) as usize;
        self.dirs[i].clone()
    }

    fn pick_file(&mut self) -> Option<PathBuf> {
        if self.files.is_empty() {
            return None;
        }
        let i = self.rng.below(self.files.len() as u64) as usize;
        Some(self.files[i].clone())
    }

    /// One random operation.
    pub fn step(&mut self) {
        self.ops += 1;
        let root = self.root.clone();
        let Some(f) = self.pick_file() else {
            let rel = self.pick_dir().join(format!("new{}", self.ops));
            fs::write(root.join(&rel), b"fresh").unwrap();
            self.files.push(rel);
            return;
        };
        let path = root.join(&f);
        match self.rng.below(100) {
            0..=29 => {
                let off = self.rng.below(40_000);
                let len = 1 + self.rng.below(8_000) as usize;
                let data = self.bytes(len);
                let h = fs::OpenOptions::new().write(true).open(&path).unwrap();
                h.write_all_at(&data, off).unwrap();
            }
            30..=44 => {
                let len = 1 + self.rng.below(3_000) as usize;
                let data = self.bytes(len);
                let mut h = fs::OpenOptions::new().append(true).open(&path).unwrap();
                std::io::Write::write_all(&mut h, &data).unwrap();
            }
            45..=54 => {
                let len = self.rng.below(30_000);
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(len)
                    .unwrap();
            }
            55..=64 => {
                let to = self.pick_dir().join(format!("r{}", self.ops));
                fs::rename(&path, root.join(&to)).unwrap();
                self.files.retain(|x| x != &f);
                self.files.push(to);
            }
            65..=71 => {
                fs::remove_file(&path).unwrap();
                self.files.retain(|x| x != &f);
            }
            72..=79 => {
                let mode = [0o600, 0o644, 0o640, 0o755][self.rng.below(4) as usize];
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            }
            80..=87 => {
                let rel = self.pick_dir().join(format!("c{}", self.ops));
                let len = self.rng.below(10_000) as usize;
                fs::write(root.join(&rel), self.bytes(len)).unwrap();
                self.files.push(rel);
            }
            88..=91 => {
                // mkdir, and sometimes rmdir of an empty one.
                let rel = self.pick_dir().join(format!("m{}", self.ops));
                fs::create_dir(root.join(&rel)).unwrap();
                if self.rng.below(2) == 0 {
                    fs::remove_dir(root.join(&rel)).unwrap();
                } else {
                    self.dirs.push(rel);
                }
            }
            92..=95 => {
                let rel = self.pick_dir().join(format!("s{}", self.ops));
                std::os::unix::fs::symlink(format!("target{}", self.ops), root.join(rel)).unwrap();
            }
            _ => {
                // Overwrite whole (O_TRUNC).
                let len = self.rng.below(5_000) as usize;
                fs::write(&path, self.bytes(len)).unwrap();
            }
        }
    }
}

#[test]
fn a_random_workload_of_2000_operations_converges() {
    let r = Router::start();
    let (l, m, _s) = mirrored(&r, "w", &[]);
    let mut w = Workload::new(&l.dir, 0x5eed_0001, 48);
    for _ in 0..2000 {
        w.step();
    }
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    eprintln!("operations {}, files compared {n}, differences 0", w.ops);
    assert!(n >= 40);
    drop(m);
    l.assert_no_errors();
    assert!(r.error_log().trim().is_empty(), "{}", r.error_log());
}

#[test]
fn kill9_of_the_sender_mid_workload_loses_nothing() {
    let r = Router::start();
    let (l, m, mut s) = mirrored(&r, "w", &[]);
    let mut w = Workload::new(&l.dir, 0x5eed_0002, 40);
    for round in 0..4 {
        for _ in 0..300 {
            w.step();
        }
        s.kill9();
        for _ in 0..100 {
            w.step();
        }
        s = l.sender();
        eprintln!("round {round}: sender restarted");
    }
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    eprintln!(
        "faults 4, operations {}, files compared {n}, differences 0",
        w.ops
    );
    drop(m);
}

#[test]
fn kill9_of_the_router_mid_workload_loses_nothing() {
    let mut r = Router::start();
    let (l, m, _s) = mirrored(&r, "w", &[]);
    let mut w = Workload::new(&l.dir, 0x5eed_0003, 40);
    for round in 0..4 {
        for _ in 0..300 {
            w.step();
        }
        r.kill9();
        for _ in 0..100 {
            w.step();
        }
        r.restart();
        eprintln!("round {round}: router restarted");
    }
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    eprintln!(
        "faults 4, operations {}, files compared {n}, differences 0",
        w.ops
    );
    drop(m);
}
