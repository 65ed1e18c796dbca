//! An fsx-style exerciser: random writes, reads, truncates, shared-mmap reads and writes,
//! fsyncs and reopens of a selected file through the mount, each checked against an in-memory
//! model. At the end the file underneath and a replay of the journal must both equal the model:
//! every change reached the disk and was recorded, in order.
//!
//! `MIRROR_FSX_OPS` sets the number of operations (default 20,000); `MIRROR_FSX_SEED` the seed.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use mirror_tests::{rel, Local};
use mirrorfs::entry::{Command, Entry};

const MAX_SIZE: u64 = 300 * 1024;

/// xorshift64*: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let v = self.next();
        (0..n)
            .map(|i| (v >> ((i % 8) * 8)) as u8 ^ i as u8)
            .collect()
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Applies the journal's content entries for `name` to an empty file.
fn replay(entries: &[Entry], name: &str, base: &std::path::Path) -> Vec<u8> {
    let mut f: Vec<u8> = Vec::new();
    for e in entries.iter().filter(|e| rel(base, &e.name) == name) {
        match e.command {
            Command::Create => f.clear(),
            Command::Write => {
                let end = e.offset as usize + e.data.len();
                if f.len() < end {
                    f.resize(end, 0);
                }
                f[e.offset as usize..end].copy_from_slice(&e.data);
            }
            Command::Truncate => f.resize(e.size as usize, 0),
            Command::Zero => {
                let end = ((e.offset + e.size) as usize).min(f.len());
                if (e.offset as usize) < end {
                    f[e.offset as usize..end].fill(0);
                }
            }
            other => panic!("unexpected {other} entry in the exerciser's journal"),
        }
    }
    f
}

fn open_rw(path: &std::path::Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

fn mmap_rw(f: &File, len: usize) -> *mut u8 {
    // SAFETY: mapping a file we hold open; the caller keeps within len and unmaps.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p.cast()
}

#[test]
fn random_operations_match_the_model_the_disk_and_the_journal() {
    let ops = env_u64("MIRROR_FSX_OPS", 20_000);
    let seed = env_u64("MIRROR_FSX_SEED", 0x5eed_1234_abcd_0042);
    let l = Local::new();
    fs::create_dir(l.path("src")).unwrap();
    l.add_rule(
        &format!("{}/src/", l.dir.display()),
        "127.0.0.1:9",
        "d",
        &[],
    );
    let m = l.mount(&[]);
    let path = l.path("src/fsx.dat");
    let mut f = File::create(&path).unwrap();
    drop(f);
    f = open_rw(&path);
    let mut model: Vec<u8> = Vec::new();
    let mut rng = Rng(seed);
    let mut counts = [0u64; 8];
    for op in 0..ops {
        let kind = rng.below(100);
        let what = match kind {
            0..=34 => 0,  // write
            35..=59 => 1, // read
            60..=69 => 2, // truncate
            70..=79 => 3, // mmap write
            80..=89 => 4, // mmap read
            90..=95 => 5, // fsync
            _ => 6,       // reopen
        };
        counts[what] += 1;
        match what {
            0 => {
                let off = rng.below((model.len() as u64 + 65536).min(MAX_SIZE));
                let len = 1 + rng.below(65536.min(MAX_SIZE - off)) as usize;
                let data = rng.bytes(len);
                f.write_all_at(&data, off).unwrap();
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
            }
            1 => {
                let off = rng.below(model.len() as u64 + 100);
                let len = rng.below(65536) as usize;
                let mut buf = vec![0u8; len];
                let n = f.read_at(&mut buf, off).unwrap();
                let want = &model
                    [(off as usize).min(model.len())..((off as usize) + len).min(model.len())];
                assert_eq!(
                    &buf[..n],
                    want,
                    "op {op}: read {len} at {off} differs (seed {seed:#x})"
                );
            }
            2 => {
                let size = rng.below(MAX_SIZE);
                f.set_len(size).unwrap();
                model.resize(size as usize, 0);
            }
            3 | 4 if model.is_empty() => {}
            3 => {
                let len = model.len();
                let p = mmap_rw(&f, len);
                let off = rng.below(len as u64) as usize;
                let n = 1 + rng.below((len - off) as u64).min(8191) as usize;
                let data = rng.bytes(n);
                // SAFETY: off + n <= len, inside the mapping.
                unsafe {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), p.add(off), n);
                    assert_eq!(libc::msync(p.cast(), len, libc::MS_SYNC), 0);
                    libc::munmap(p.cast(), len);
                }
                model[off..off + n].copy_from_slice(&data);
            }
            4 => {
                let len = model.len();
                let p = mmap_rw(&f, len);
                // SAFETY: the mapping is len bytes long.
                let seen = unsafe { std::slice::from_raw_parts(p, len) }.to_vec();
                // SAFETY: unmapping what we mapped.
                unsafe { libc::munmap(p.cast(), len) };
                assert!(seen == model, "op {op}: mmap read differs (seed {seed:#x})");
            }
            5 => f.sync_all().unwrap(),
            _ => {
                drop(f);
                f = open_rw(&path);
            }
        }
    }
    let mut whole = Vec::new();
    use std::io::Read;
    let mut g = File::open(&path).unwrap();
    g.read_to_end(&mut whole).unwrap();
    assert!(whole == model, "final content through the mount differs");
    drop((f, g));
    m.unmount();
    assert!(
        fs::read(&path).unwrap() == model,
        "the file underneath differs from the model"
    );
    let replayed = replay(&l.journal(), "src/fsx.dat", &l.dir);
    assert!(
        replayed == model,
        "replaying the journal does not give the file"
    );
    eprintln!(
        "exerciser: {ops} operations (write {}, read {}, truncate {}, mmap write {}, mmap read {}, fsync {}, reopen {}), final size {}",
        counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], counts[6], model.len()
    );
}
