//! Journal append throughput against `dd` to the same disk, in one run, as ratios.
//!
//! `cargo bench -p mirrorfs --bench journal` (set `MIRROR_BENCH_DIR` to choose the disk;
//! default: the target directory). For 4 KiB and 1 MiB entries: appends without sync
//! (page cache, plus one final sync, like `dd conv=fsync`), and with `sync()` after every
//! entry (like `dd oflag=dsync`). Each case runs 3 times; the best run of each side is kept.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mirrorfs::entry::{Command as Cmd, EntryRef};
use mirrorfs::journal::{Journal, JournalConfig};

struct Case {
    name: &'static str,
    entry: usize,
    count: usize,
    sync_each: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "4 KiB, no sync",
        entry: 4096,
        count: 65_536,
        sync_each: false,
    },
    Case {
        name: "1 MiB, no sync",
        entry: 1 << 20,
        count: 1024,
        sync_each: false,
    },
    Case {
        name: "4 KiB, sync each",
        entry: 4096,
        count: 2_000,
        sync_each: true,
    },
    Case {
        name: "1 MiB, sync each",
        entry: 1 << 20,
        count: 200,
        sync_each: true,
    },
];

fn journal_run(dir: &Path, case: &Case) -> Duration {
    let _ = std::fs::remove_dir_all(dir);
    let j = Journal::open(dir, JournalConfig::default()).expect("open journal");
    let data = vec![0xa5u8; case.entry];
    let name = b"/home/u/proj/src/file.rs";
    let start = Instant::now();
    for i in 0..case.count {
        let e = EntryRef {
            offset: (i * case.entry) as u64,
            size: case.entry as u64,
            data: &data,
            ..EntryRef::new(Cmd::Write, 1, name)
        };
        j.append(&e).expect("append");
        if case.sync_each {
            j.sync().expect("sync");
        }
    }
    j.sync().expect("final sync");
    let t = start.elapsed();
    drop(j);
    let _ = std::fs::remove_dir_all(dir);
    t
}

fn dd_run(dir: &Path, case: &Case) -> Duration {
    std::fs::create_dir_all(dir).expect("mkdir");
    let out = dir.join("dd.out");
    let mut cmd = Command::new("dd");
    cmd.arg("if=/dev/zero")
        .arg(format!("of={}", out.display()))
        .arg(format!("bs={}", case.entry))
        .arg(format!("count={}", case.count))
        .arg("status=none");
    cmd.arg(if case.sync_each {
        "oflag=dsync"
    } else {
        "conv=fsync"
    });
    let start = Instant::now();
    let st = cmd.status().expect("run dd");
    let t = start.elapsed();
    assert!(st.success(), "dd failed");
    let _ = std::fs::remove_file(&out);
    t
}

fn best(mut f: impl FnMut() -> Duration) -> Duration {
    (0..3).map(|_| f()).min().unwrap_or_default()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base: PathBuf = std::env::var_os("MIRROR_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-journal")
        });
    std::fs::create_dir_all(&base).expect("bench dir");
    println!("journal append vs dd, directory {}", base.display());
    println!(
        "{:<18} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "case", "journal MB/s", "entries/s", "dd MB/s", "dd blocks/s", "ratio"
    );
    for case in CASES {
        let bytes = (case.entry * case.count) as f64;
        let j = best(|| journal_run(&base.join("journal"), case));
        let d = best(|| dd_run(&base.join("dd"), case));
        let mbps = |t: Duration| bytes / t.as_secs_f64() / 1e6;
        let per = |t: Duration| case.count as f64 / t.as_secs_f64();
        println!(
            "{:<18} {:>12.1} {:>12.0} {:>12.1} {:>12.0} {:>8.2}",
            case.name,
            mbps(j),
            per(j),
            mbps(d),
            per(d),
            d.as_secs_f64() / j.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&base);
}
