//! The performance comparison of issue 14: the plain ext4 directory, mirrorfs (one subtree rule
//! selecting everything, so every change is journaled; no mirror-sendd runs), libfuse's
//! `passthrough_hp` (kernel passthrough, writeback cache, long caches) and `bindfs
//! --multithreaded`, side by side in one interleaved run, as speed ratios to the plain
//! directory. Run with `scripts/bench-perf.sh`, which installs the tools, prepares the source
//! tree and its git repository, builds passthrough_hp from a libfuse checkout when given one,
//! and builds release binaries.
//!
//! Repetition r runs every workload group on every target (in an order rotated by r, so that
//! drift and order hit all columns alike) before repetition r+1 starts. Every group of rows runs
//! on a freshly made ext4 file system (16 GiB loop device, direct I/O), after `sync` and
//! `drop_caches` (cold); rows marked "warm" run right after a first, unmeasured pass over the
//! same data, after a `sync` (the two warm metadata rows then time 5 passes and take their
//! median). Each cell is the median of the repetitions and their spread (min–max).
//!
//! Environment: `MIRROR_BENCH_DIR` (default /var/tmp/mirror-bench-perf; images, mounts, cache),
//! `MIRROR_BENCH_RUNS` (repetitions, default 5), `MIRROR_BENCH_ONLY` (comma list of row keys,
//! see [`ROWS`]), `MIRROR_BENCH_TARGETS` (comma list of plain, mirrorfs, passthrough_hp,
//! bindfs, and mirrorfs-before with `MIRROR_BENCH_BIN_BEFORE`: a directory holding another
//! build's `mirrorfs` and `mirror-ctl`, as a column of its own), `MIRROR_BENCH_BIN` (a directory
//! holding the `mirrorfs` and `mirror-ctl` to measure;
//! default the workspace's release build), `MIRROR_BENCH_PASSTHROUGH_HP` (the passthrough_hp
//! binary; the column is skipped without it), `MIRROR_BENCH_TAR` (the source tree as an
//! uncompressed tar; default <dir>/cache/tree.tar) and `MIRROR_BENCH_REPO` (a git repository
//! of that tree; default <dir>/cache/tree), `MIRROR_BENCH_SECS` (run time of each fio random
//! I/O row, default 10), `MIRROR_BENCH_SEQ_MIB` (size of the buffered sequential write, default
//! 2048), `MIRROR_BENCH_SQLITE_TXNS` (transactions per SQLite process, default 1000).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mirror_tests::bench::{
    base_dir, bindfs, drop_caches, env_num, median, mirrorfs_everything, passthrough_hp, run, Ext4,
    FuseDaemon,
};
use mirror_tests::{wait_until, Mount};

/// The longest any one measured command may take before it is killed (and the bench fails).
const LIMIT: Duration = Duration::from_secs(900);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Plain,
    Mirrorfs,
    /// Another build of mirrorfs (`MIRROR_BENCH_BIN_BEFORE`), to compare a change in one run.
    MirrorfsBefore,
    PassthroughHp,
    Bindfs,
}

const TARGETS: [Target; 5] = [
    Target::Plain,
    Target::Mirrorfs,
    Target::MirrorfsBefore,
    Target::PassthroughHp,
    Target::Bindfs,
];

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Plain => "plain",
            Target::Mirrorfs => "mirrorfs",
            Target::MirrorfsBefore => "mirrorfs-before",
            Target::PassthroughHp => "passthrough_hp",
            Target::Bindfs => "bindfs",
        }
    }
}

/// What a run is given.
struct Config {
    base: PathBuf,
    runs: usize,
    bin_dir: Option<PathBuf>,
    bin_before: Option<PathBuf>,
    passthrough_hp: Option<PathBuf>,
    tar: PathBuf,
    repo: PathBuf,
    fio_secs: u64,
    seq_mib: u64,
    sqlite_txns: u64,
    /// Files in the source tree (for the label).
    tree_files: usize,
}

/// A prepared target: the directory workloads run in, and what keeps it mounted. Fields drop
/// in order: the FUSE mount before the ext4 under it, also when a workload panics.
struct Setup {
    dir: PathBuf,
    _mirrorfs: Option<Mount>,
    _fuse: Option<FuseDaemon>,
    _fs: Ext4,
}

fn setup(t: Target, cfg: &Config) -> Setup {
    let name = t.name();
    let root = cfg.base.join(name);
    let fs = Ext4::fresh(&cfg.base.join(format!("{name}.img")), &root, "16G");
    let data = root.join("data");
    fs::create_dir_all(&data).expect("mkdir data");
    let mnt = root.join("mnt");
    let log = root.join(format!("{name}.log"));
    let (dir, mirrorfs, fuse) = match t {
        Target::Plain => (data, None, None),
        Target::Mirrorfs => {
            let m = mirrorfs_everything(cfg.bin_dir.as_deref(), &data, &root.join("state"));
            (data, Some(m), None)
        }
        Target::MirrorfsBefore => {
            let m = mirrorfs_everything(cfg.bin_before.as_deref(), &data, &root.join("state"));
            (data, Some(m), None)
        }
        Target::PassthroughHp => {
            let exe = cfg.passthrough_hp.as_ref().expect("passthrough_hp binary");
            (
                mnt.clone(),
                None,
                Some(passthrough_hp(exe, &data, &mnt, &log)),
            )
        }
        Target::Bindfs => (mnt.clone(), None, Some(bindfs(&data, &mnt, &log))),
    };
    Setup {
        dir,
        _mirrorfs: mirrorfs,
        _fuse: fuse,
        _fs: fs,
    }
}

/// Runs `cmd` (stdout captured, stderr shown), killing it after [`LIMIT`]; panics unless it
/// succeeds. Returns the seconds from spawn to exit, and its stdout.
fn timed(cmd: &mut Command) -> (f64, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let start = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(LIMIT) {
            // SAFETY: kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().expect("wait for command");
    let secs = start.elapsed().as_secs_f64();
    let _ = done.send(());
    let _ = watchdog.join();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}; killed after {LIMIT:?} if it ran that long)",
        out.status
    );
    (secs, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// fio 4 KiB random I/O (`rw`: randwrite or randread), psync at queue depth 1, on a 256 MiB
/// file for `secs` seconds, with `extra` options; returns IOPS.
fn fio_random(dir: &Path, rw: &str, secs: u64, extra: &[&str]) -> f64 {
    let (_, out) = timed(
        Command::new("fio")
            .arg("--name=bench")
            .arg(format!("--filename={}", dir.join("fio.dat").display()))
            .args([
                "--size=256M",
                "--bs=4k",
                "--ioengine=psync",
                "--iodepth=1",
                "--time_based",
                "--end_fsync=1",
            ])
            // Keep the page cache: fio's fadvise(DONTNEED) does not reach a passthrough
            // backing file, so invalidating would compare cold reads with warm ones.
            .arg("--invalidate=0")
            .arg(format!("--runtime={secs}"))
            .arg(format!("--rw={rw}"))
            .args(extra)
            .arg("--output-format=json"),
    );
    mirror_tests::bench::fio_iops(&out, rw)
}

/// Row 1: seconds of `dd` writing 1 GiB in 1 MiB blocks, with `conv=fsync`.
fn dd(dir: &Path) -> f64 {
    timed(
        Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", dir.join("dd.dat").display()))
            .args(["bs=1M", "count=1024", "conv=fsync", "status=none"]),
    )
    .0
}

/// Row 2: seconds of one fio process writing `mib` MiB sequentially in 1 MiB buffered writes
/// (psync, QD1) to a new file, its close included (the process's wall time, so also fio's
/// start, some ms); no fsync.
fn seq_write(dir: &Path, mib: u64) -> f64 {
    timed(
        Command::new("fio")
            .arg("--name=seq")
            .arg(format!("--filename={}", dir.join("seq.dat").display()))
            .args([
                "--rw=write",
                "--bs=1M",
                "--ioengine=psync",
                "--iodepth=1",
                "--fallocate=none",
                "--end_fsync=0",
                "--invalidate=0",
                "--output-format=json",
            ])
            .arg(format!("--size={mib}M")),
    )
    .0
}

/// Reads `path` once to the end (warms the page cache).
fn read_all(path: &Path) {
    let mut f = fs::File::open(path).expect("open for warming");
    std::io::copy(&mut f, &mut std::io::sink()).expect("read for warming");
}

const DIRS: usize = 100;
const FILES_PER_DIR: usize = 100;

/// Row 5: seconds to create 10,000 files of 4 KiB (open, write, close) in 100 new directories.
fn create_files(dir: &Path) -> f64 {
    let body = [b'x'; 4096];
    let start = Instant::now();
    for d in 0..DIRS {
        let dd = dir.join(format!("d{d:03}"));
        fs::create_dir(&dd).expect("mkdir");
        for f in 0..FILES_PER_DIR {
            fs::write(dd.join(format!("f{f:03}")), body).expect("write small file");
        }
    }
    start.elapsed().as_secs_f64()
}

/// How many times a warm row's command is timed (after one unmeasured pass) in each repetition;
/// the row's value is their median. These commands take tens of milliseconds, where one
/// scheduling hiccup of a loaded machine would otherwise decide the cell.
const WARM_PASSES: usize = 5;

/// The median seconds of [`WARM_PASSES`] runs of `f`, which returns (seconds, output); `check`
/// judges each output.
fn warm_median(mut f: impl FnMut() -> (f64, String), check: impl Fn(&str)) -> f64 {
    let times: Vec<f64> = (0..WARM_PASSES)
        .map(|_| {
            let (secs, out) = f();
            check(&out);
            secs
        })
        .collect();
    median(&times)
}

/// Row 6: seconds of `find DIR -type f -printf '%s\n'` over the 10,000 files, warm: one
/// unmeasured pass, then the median of [`WARM_PASSES`].
fn stat_files(dir: &Path) -> f64 {
    let find = || {
        timed(
            Command::new("find")
                .arg(dir)
                .args(["-type", "f", "-printf", "%s\\n"]),
        )
    };
    let (_, warm) = find();
    assert_eq!(
        warm.lines().count(),
        DIRS * FILES_PER_DIR,
        "find saw every file"
    );
    warm_median(find, |out| {
        assert!(out.lines().all(|l| l == "4096"), "every file has 4 KiB")
    })
}

/// Row 7: seconds to extract the source tree's tar (`tar xf`) and `sync -f` the file system.
fn untar(dir: &Path, tar: &Path) -> f64 {
    let start = Instant::now();
    timed(Command::new("tar").arg("xf").arg(tar).arg("-C").arg(dir));
    timed(Command::new("sync").arg("-f").arg(dir));
    start.elapsed().as_secs_f64()
}

/// Row 8: seconds of `git clone --no-local -q REPO DIR/clone` (objects through git's pack
/// transport, then the checkout), no sync.
fn git_clone(dir: &Path, repo: &Path) -> f64 {
    timed(
        Command::new("git")
            .args(["clone", "--no-local", "-q"])
            .arg(repo)
            .arg(dir.join("clone")),
    )
    .0
}

/// Row 9: seconds of `git status --porcelain` in the clone, warm: one unmeasured run, then the
/// median of [`WARM_PASSES`]. First the index is written again once the clock has passed the
/// second of the clone's index: files checked out in the same second as the index are "racily
/// clean", and git then re-reads and hashes them on every status, until the index is written
/// later. Whether a clone ends within one second would otherwise decide the row (40–60 ms
/// instead of ~20 ms on plain ext4 here); the steady state of a working tree is measured.
fn git_status(dir: &Path) -> f64 {
    let clone = dir.join("clone");
    let index = clone.join(".git/index");
    let secs_of = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let written = secs_of(
        fs::metadata(&index)
            .and_then(|m| m.modified())
            .expect("mtime of the clone's index"),
    );
    wait_until(
        Duration::from_secs(10),
        "the clock to pass the index's second",
        || secs_of(std::time::SystemTime::now()) > written,
    );
    timed(Command::new("git").arg("-C").arg(&clone).args([
        "update-index",
        "--refresh",
        "--force-write-index",
    ]));
    let status = || {
        timed(
            Command::new("git")
                .arg("-C")
                .arg(&clone)
                .args(["status", "--porcelain"]),
        )
    };
    let (_, first) = status();
    assert!(first.is_empty(), "a fresh clone is clean:\n{first}");
    warm_median(status, |out| {
        assert!(out.is_empty(), "the clone stays clean:\n{out}")
    })
}

/// Rows 10 and 11: seconds until two `sqlite3` processes, started at once on one database in
/// journal mode `mode` (DELETE or WAL; `synchronous` left at its default, FULL), have each
/// committed `txns` transactions (`BEGIN IMMEDIATE; INSERT` of a 200-byte row; `COMMIT`),
/// waiting for each other's locks (busy timeout 10 min). The scripts live outside the target.
fn sqlite_pair(dir: &Path, mode: &str, txns: u64, scratch: &Path) -> f64 {
    let db = dir.join("bench.db");
    run(Command::new("sqlite3").arg(&db).arg(format!(
        "PRAGMA journal_mode={mode}; CREATE TABLE t(id INTEGER PRIMARY KEY, who INTEGER, v BLOB);"
    )));
    let scripts: Vec<PathBuf> = (0..2)
        .map(|w| {
            let mut s = String::from(".timeout 600000\n");
            for _ in 0..txns {
                s.push_str(&format!(
                    "BEGIN IMMEDIATE; INSERT INTO t(who, v) VALUES({w}, randomblob(200)); COMMIT;\n"
                ));
            }
            let p = scratch.join(format!("sqlite-{w}.sql"));
            fs::write(&p, s).expect("write sqlite script");
            p
        })
        .collect();
    let start = Instant::now();
    let children: Vec<_> = scripts
        .iter()
        .map(|p| {
            Command::new("sqlite3")
                .arg("-bail")
                .arg(&db)
                .stdin(fs::File::open(p).expect("open sqlite script"))
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn sqlite3")
        })
        .collect();
    let deadline = start + LIMIT;
    let mut pending = children;
    let mut pause = Duration::from_millis(1);
    while !pending.is_empty() {
        let mut still = Vec::new();
        for mut c in pending {
            match c.try_wait().expect("wait for sqlite3") {
                Some(status) => assert!(status.success(), "sqlite3 failed: {status}"),
                None if Instant::now() > deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("sqlite3 did not finish within {LIMIT:?}");
                }
                None => still.push(c),
            }
        }
        pending = still;
        if !pending.is_empty() {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let check = run(Command::new("sqlite3")
        .arg(&db)
        .arg("PRAGMA journal_mode; SELECT count(*) FROM t; PRAGMA integrity_check;"));
    let expected = format!("{}\n{}\nok\n", mode.to_lowercase(), 2 * txns);
    assert_eq!(check, expected, "SQLite in {mode} mode holds every row");
    secs
}

/// One row of the table.
struct RowDef {
    /// Its name in `MIRROR_BENCH_ONLY`.
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_is_better: bool,
}

const ROWS: [RowDef; 12] = [
    RowDef {
        key: "dd",
        label: "`dd` 1 GiB, 1 MiB blocks, `conv=fsync`",
        unit: "s",
        higher_is_better: false,
    },
    RowDef {
        key: "seqwrite",
        label: "fio sequential write {SEQ}, 1 MiB, buffered (psync, QD1), incl. close",
        unit: "s",
        higher_is_better: false,
    },
    RowDef {
        key: "randwrite",
        label: "fio 4 KiB random write (psync, QD1)",
        unit: "IOPS",
        higher_is_better: true,
    },
    RowDef {
        key: "randread",
        label: "fio 4 KiB random read, warm",
        unit: "IOPS",
        higher_is_better: true,
    },
    RowDef {
        key: "create",
        label: "create 10,000 × 4 KiB files in 100 directories",
        unit: "s",
        higher_is_better: false,
    },
    RowDef {
        key: "stat",
        label: "stat the 10,000 files, warm (`find -printf %s`)",
        unit: "s",
        higher_is_better: false,
    },
    RowDef {
        key: "untar",
        label: "untar a {FILES}-file source tree (+ `sync -f`)",
        unit: "s",
        higher_is_better: false,
    },
    RowDef {
        key: "clone",
        label: "`git clone --no-local` of that tree",
        unit: "s",
        higher_is_better: false,
    },
    RowDef {
        key: "status",
        label: "`git status` in the clone, warm",
        unit: "s",
        higher_is_better: false,
    },
    RowDef {
        key: "sqlite-delete",
        label: "SQLite 2 processes × {TXNS} transactions, rollback journal (DELETE)",
        unit: "s",
        higher_is_better: false,
    },
    RowDef {
        key: "sqlite-wal",
        label: "SQLite 2 processes × {TXNS} transactions, WAL",
        unit: "s",
        higher_is_better: false,
    },
    RowDef {
        key: "fsync",
        label: "fio 4 KiB random write, `fsync=1` (psync, QD1)",
        unit: "IOPS",
        higher_is_better: true,
    },
];

/// Rows measured together on one fresh file system (by index in [`ROWS`]), in order.
const GROUPS: [&[usize]; 9] = [
    &[0],
    &[1],
    &[2, 3],
    &[4, 5],
    &[6],
    &[7, 8],
    &[9],
    &[10],
    &[11],
];

/// Writes back what the previous row left dirty (`sync`), keeping the caches, so that a warm
/// row does not compete with that writeback.
fn settle() {
    run(&mut Command::new("sync"));
}

/// Runs group `g` in `dir`; returns the value of each of its rows, in order.
fn run_group(g: usize, dir: &Path, cfg: &Config) -> Vec<f64> {
    let scratch = cfg.base.join("cache");
    match g {
        0 => vec![dd(dir)],
        1 => vec![seq_write(dir, cfg.seq_mib)],
        2 => {
            let w = fio_random(dir, "randwrite", cfg.fio_secs, &[]);
            settle();
            read_all(&dir.join("fio.dat"));
            let r = fio_random(dir, "randread", cfg.fio_secs, &[]);
            vec![w, r]
        }
        3 => {
            let c = create_files(dir);
            settle();
            vec![c, stat_files(dir)]
        }
        4 => vec![untar(dir, &cfg.tar)],
        5 => {
            let c = git_clone(dir, &cfg.repo);
            settle();
            vec![c, git_status(dir)]
        }
        6 => vec![sqlite_pair(dir, "DELETE", cfg.sqlite_txns, &scratch)],
        7 => vec![sqlite_pair(dir, "WAL", cfg.sqlite_txns, &scratch)],
        8 => vec![fio_random(dir, "randwrite", cfg.fio_secs, &["--fsync=1"])],
        _ => unreachable!("no group {g}"),
    }
}

/// `n` with thousands separated by commas.
fn fmt_int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `v` with three significant digits (thousands separated, no decimals, from 1,000).
fn fmt_val(v: f64) -> String {
    if v >= 1000.0 {
        fmt_int(v.round() as u64)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The label of row `r`, with this run's sizes.
fn label(r: usize, cfg: &Config) -> String {
    let seq = if cfg.seq_mib % 1024 == 0 {
        format!("{} GiB", cfg.seq_mib / 1024)
    } else {
        format!("{} MiB", cfg.seq_mib)
    };
    ROWS[r]
        .label
        .replace("{SEQ}", &seq)
        .replace("{FILES}", &fmt_int(cfg.tree_files as u64))
        .replace("{TXNS}", &fmt_int(cfg.sqlite_txns))
}

/// The number of files (not directories) in tar `tar`; 0 if it cannot be listed.
fn files_in_tar(tar: &Path) -> usize {
    Command::new("tar")
        .arg("tf")
        .arg(tar)
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.ends_with('/'))
                .count()
        })
        .unwrap_or(0)
}

fn list(var: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn main() {
    // `cargo bench` passes --bench; anything else (cargo test --benches, --list) runs nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let base = base_dir("/var/tmp/mirror-bench-perf");
    let tar = std::env::var_os("MIRROR_BENCH_TAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| base.join("cache/tree.tar"));
    let cfg = Config {
        runs: env_num("MIRROR_BENCH_RUNS", 5) as usize,
        bin_dir: std::env::var_os("MIRROR_BENCH_BIN").map(PathBuf::from),
        bin_before: std::env::var_os("MIRROR_BENCH_BIN_BEFORE")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        passthrough_hp: std::env::var_os("MIRROR_BENCH_PASSTHROUGH_HP")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        tree_files: files_in_tar(&tar),
        tar,
        repo: std::env::var_os("MIRROR_BENCH_REPO")
            .map(PathBuf::from)
            .unwrap_or_else(|| base.join("cache/tree")),
        fio_secs: env_num("MIRROR_BENCH_SECS", 10),
        seq_mib: env_num("MIRROR_BENCH_SEQ_MIB", 2048),
        sqlite_txns: env_num("MIRROR_BENCH_SQLITE_TXNS", 1000),
        base,
    };
    fs::create_dir_all(cfg.base.join("cache")).expect("mkdir bench dir");
    let only = list("MIRROR_BENCH_ONLY");
    let wanted_targets = list("MIRROR_BENCH_TARGETS");
    for k in &only {
        assert!(
            ROWS.iter().any(|r| r.key == k),
            "MIRROR_BENCH_ONLY: no row {k} (rows: {})",
            ROWS.iter().map(|r| r.key).collect::<Vec<_>>().join(",")
        );
    }
    let targets: Vec<Target> = TARGETS
        .into_iter()
        .filter(|t| wanted_targets.is_empty() || wanted_targets.iter().any(|w| w == t.name()))
        .filter(|t| *t != Target::MirrorfsBefore || cfg.bin_before.is_some())
        .filter(|t| {
            let ok = *t != Target::PassthroughHp || cfg.passthrough_hp.is_some();
            if !ok {
                eprintln!(
                    "passthrough_hp: MIRROR_BENCH_PASSTHROUGH_HP is not set; its column is skipped"
                );
            }
            ok
        })
        .collect();
    assert!(
        !targets.is_empty(),
        "MIRROR_BENCH_TARGETS selects no target"
    );
    let wanted_row = |i: usize| only.is_empty() || only.iter().any(|k| k == ROWS[i].key);
    let needs = |rows: &[usize]| rows.iter().any(|&i| wanted_row(i));
    if needs(&[6, 7, 8]) {
        for p in [&cfg.tar, &cfg.repo] {
            assert!(
                p.exists(),
                "{} is missing: scripts/bench-perf.sh prepares it",
                p.display()
            );
        }
    }
    // values[row][target] = one value per repetition.
    let mut values = vec![vec![Vec::<f64>::new(); targets.len()]; ROWS.len()];
    eprintln!(
        "perf_compare: {} repetitions of {} on {}; mirrorfs from {}; passthrough_hp {}; source \
         tree {} ({} files), repository {}",
        cfg.runs,
        (0..ROWS.len())
            .filter(|&r| wanted_row(r))
            .map(|r| ROWS[r].key)
            .collect::<Vec<_>>()
            .join(","),
        targets
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(","),
        cfg.bin_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "this workspace's build".into()),
        cfg.passthrough_hp
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "skipped".into()),
        cfg.tar.display(),
        cfg.tree_files,
        cfg.repo.display()
    );
    let started = Instant::now();
    for rep in 0..cfg.runs {
        for (g, rows) in GROUPS.iter().enumerate() {
            if !needs(rows) {
                continue;
            }
            for k in 0..targets.len() {
                let ti = (k + rep) % targets.len();
                let t = targets[ti];
                let s = setup(t, &cfg);
                drop_caches();
                let got = run_group(g, &s.dir, &cfg);
                drop(s);
                for (&row, v) in rows.iter().zip(got) {
                    if wanted_row(row) {
                        eprintln!(
                            "[{:>6.0} s] rep {}/{} {:<14} {:<14} {} {}",
                            started.elapsed().as_secs_f64(),
                            rep + 1,
                            cfg.runs,
                            ROWS[row].key,
                            t.name(),
                            fmt_val(v),
                            ROWS[row].unit
                        );
                        values[row][ti].push(v);
                    }
                }
            }
        }
    }
    print_tables(&cfg, &targets, &values);
}

fn print_tables(cfg: &Config, targets: &[Target], values: &[Vec<Vec<f64>>]) {
    let plain = targets.iter().position(|&t| t == Target::Plain);
    let others: Vec<usize> = (0..targets.len()).filter(|&i| Some(i) != plain).collect();
    // Speed ratio of target `ti` to the plain directory on row `r`: above 1 is faster.
    let ratio = |r: usize, ti: usize| -> Option<f64> {
        let p = median(&values[r][plain?]);
        let v = median(&values[r][ti]);
        if ROWS[r].higher_is_better {
            Some(v / p)
        } else {
            Some(p / v)
        }
    };
    let measured: Vec<usize> = (0..ROWS.len())
        .filter(|&r| values[r].iter().any(|v| !v.is_empty()))
        .collect();
    println!(
        "\nMedians of {} interleaved repetitions, spread (min–max), and the speed ratio to the \
         plain directory (>1: faster). fio random rows: {} s each on a 256 MiB file; buffered \
         sequential write: {} MiB; SQLite: {} transactions per process.\n",
        cfg.runs, cfg.fio_secs, cfg.seq_mib, cfg.sqlite_txns
    );
    let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
    println!("| workload | unit | {} |", names.join(" | "));
    println!("| --- | --- |{}", " --- |".repeat(targets.len()));
    for &r in &measured {
        let cells: Vec<String> = (0..targets.len())
            .map(|ti| {
                let v = &values[r][ti];
                if v.is_empty() {
                    return "–".into();
                }
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut c = format!("{} ({}–{})", fmt_val(median(v)), fmt_val(lo), fmt_val(hi));
                if Some(ti) != plain {
                    if let Some(x) = ratio(r, ti) {
                        c.push_str(&format!(" **{x:.2}×**"));
                    }
                }
                c
            })
            .collect();
        println!(
            "| {} | {} | {} |",
            label(r, cfg),
            ROWS[r].unit,
            cells.join(" | ")
        );
    }
    if plain.is_none() || others.is_empty() {
        return;
    }
    println!("\nSpeed as a ratio to the plain directory (medians):\n");
    let other_names: Vec<&str> = others.iter().map(|&i| targets[i].name()).collect();
    println!("| workload | {} |", other_names.join(" | "));
    println!("| --- |{}", " --- |".repeat(others.len()));
    for &r in &measured {
        let cells: Vec<String> = others
            .iter()
            .map(|&ti| match ratio(r, ti) {
                Some(x) if x.is_finite() => format!("{x:.2}×"),
                _ => "–".into(),
            })
            .collect();
        println!("| {} | {} |", label(r, cfg), cells.join(" | "));
    }
}
