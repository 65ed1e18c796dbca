//! File-system workloads on the plain directory, on bindfs and on mirrorfs, in one run, as
//! ratios to the plain directory. Run with `scripts/bench-fs.sh` (installs bindfs, fio and a
//! Linux source tarball, builds release binaries, then runs this).
//!
//! mirrorfs is mounted over its directory with one subtree rule selecting everything, so every
//! write is journaled (no mirror-sendd runs: this measures the local cost).
//!
//! Each target and workload runs on a freshly made ext4 file system (loop device, direct I/O).
//!
//! Environment: `MIRROR_BENCH_DIR` (default /var/tmp/mirror-bench), `MIRROR_BENCH_TARBALL`
//! (an uncompressed .tar; default <dir>/cache/linux.tar), `MIRROR_BENCH_ONLY` (comma list of
//! workloads: seqwrite, randwrite, randread, smallfiles, untar), `MIRROR_BENCH_SECS` (fio run
//! time, default 15), `MIRROR_BENCH_RUNS` (runs per target and workload, default 3; the median
//! is reported).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use mirror_tests::bench::{
    base_dir, bindfs, drop_caches, env_num, median, mirrorfs_everything, run, Ext4, FuseDaemon,
};
use mirror_tests::Mount;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Plain,
    Bindfs,
    Mirrorfs,
}

const TARGETS: [Target; 3] = [Target::Plain, Target::Bindfs, Target::Mirrorfs];

/// A prepared target: the directory workloads run in, and what keeps it mounted (fields drop
/// in order: the FUSE mounts before the file system under them). Every target gets a freshly
/// made ext4 file system ([`Ext4`]).
struct Setup {
    dir: PathBuf,
    mount: Option<Mount>,
    bindfs: Option<FuseDaemon>,
    _fs: Ext4,
}

fn setup(target: Target, base: &Path) -> Setup {
    let name = format!("{target:?}").to_lowercase();
    let fs_mount = base.join(&name);
    let fs = Ext4::fresh(&base.join(format!("{name}.img")), &fs_mount, "16G");
    let data = fs_mount.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut s = Setup {
        dir: data.clone(),
        mount: None,
        bindfs: None,
        _fs: fs,
    };
    match target {
        Target::Plain => {}
        Target::Bindfs => {
            let mnt = fs_mount.join("mnt");
            s.bindfs = Some(bindfs(&data, &mnt, &fs_mount.join("bindfs.log")));
            s.dir = mnt;
        }
        Target::Mirrorfs => {
            s.mount = Some(mirrorfs_everything(None, &data, &fs_mount.join("state")));
        }
    }
    s
}

/// Seconds to write 1 GiB sequentially in 1 MiB blocks and fsync (dd conv=fsync).
fn seq_write(dir: &Path) -> f64 {
    let start = Instant::now();
    run(Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", dir.join("big").display()))
        .args(["bs=1M", "count=1024", "conv=fsync", "status=none"]));
    start.elapsed().as_secs_f64()
}

fn secs() -> u64 {
    env_num("MIRROR_BENCH_SECS", 15)
}

/// fio 4 KiB random I/O on a 256 MiB file for a fixed time; returns IOPS.
fn fio(dir: &Path, rw: &str) -> f64 {
    let out = run(Command::new("fio")
        .arg("--name=bench")
        .arg(format!("--filename={}", dir.join("fio.dat").display()))
        .args([
            "--size=256M",
            "--bs=4k",
            "--ioengine=psync",
            "--time_based",
            "--end_fsync=1",
        ])
        // Keep the page cache: fio's fadvise(DONTNEED) does not reach a passthrough backing
        // file, so invalidating would compare cold reads with warm ones.
        .arg("--invalidate=0")
        .arg(format!("--runtime={}", secs()))
        .arg(format!("--rw={rw}"))
        .arg("--output-format=json"));
    mirror_tests::bench::fio_iops(&out, rw)
}

/// Seconds to create (100 bytes each), stat, and delete 20,000 files in 200 directories.
fn small_files(dir: &Path) -> f64 {
    let start = Instant::now();
    let body = [b'x'; 100];
    for d in 0..200 {
        let dd = dir.join(format!("d{d:03}"));
        std::fs::create_dir(&dd).unwrap();
        for f in 0..100 {
            std::fs::write(dd.join(format!("f{f:03}")), body).unwrap();
        }
    }
    for d in 0..200 {
        for f in 0..100 {
            std::fs::metadata(dir.join(format!("d{d:03}/f{f:03}"))).unwrap();
        }
    }
    for d in 0..200 {
        let dd = dir.join(format!("d{d:03}"));
        for f in 0..100 {
            std::fs::remove_file(dd.join(format!("f{f:03}"))).unwrap();
        }
        std::fs::remove_dir(&dd).unwrap();
    }
    start.elapsed().as_secs_f64()
}

/// Seconds to extract the tarball and sync.
fn untar(dir: &Path, tarball: &Path) -> f64 {
    let start = Instant::now();
    run(Command::new("tar")
        .arg("xf")
        .arg(tarball)
        .arg("-C")
        .arg(dir));
    run(Command::new("sync").arg("-f").arg(dir));
    start.elapsed().as_secs_f64()
}

struct Row {
    name: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    values: Vec<f64>,
}

/// Runs per target and workload (`MIRROR_BENCH_RUNS`, default 3); the median is reported.
fn repeats() -> usize {
    env_num("MIRROR_BENCH_RUNS", 3) as usize
}

/// Runs `f` on each target, [`repeats`] times (fresh file system, cold caches each time).
fn measure(
    base: &Path,
    name: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    f: &dyn Fn(&Path) -> f64,
) -> Row {
    let mut values = Vec::new();
    for t in TARGETS {
        let runs: Vec<f64> = (0..repeats())
            .map(|_| {
                let s = setup(t, base);
                drop_caches();
                f(&s.dir)
            })
            .collect();
        let v = median(&runs);
        eprintln!("{name:<12} {t:<9?} {v:>12.2} {unit} (runs: {runs:.2?})");
        values.push(v);
    }
    Row {
        name,
        unit,
        higher_is_better,
        values,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = base_dir("/var/tmp/mirror-bench");
    let tarball = std::env::var_os("MIRROR_BENCH_TARBALL")
        .map(PathBuf::from)
        .unwrap_or_else(|| base.join("cache/linux.tar"));
    let only = std::env::var("MIRROR_BENCH_ONLY").unwrap_or_default();
    let wanted = |w: &str| only.is_empty() || only.split(',').any(|x| x == w);
    std::fs::create_dir_all(&base).unwrap();
    let mut rows: Vec<Row> = Vec::new();
    if wanted("seqwrite") {
        rows.push(measure(
            &base,
            "seqwrite 1 GiB + fsync",
            "s",
            false,
            &seq_write,
        ));
    }
    if wanted("randwrite") || wanted("randread") {
        // One setup for both, so the reads find the file the writes made.
        let mut w = Vec::new();
        let mut r = Vec::new();
        for t in TARGETS {
            let (mut ws, mut rs) = (Vec::new(), Vec::new());
            for _ in 0..repeats() {
                let s = setup(t, &base);
                drop_caches();
                ws.push(fio(&s.dir, "randwrite"));
                rs.push(fio(&s.dir, "randread"));
            }
            let (iw, ir) = (median(&ws), median(&rs));
            eprintln!("fio          {t:<9?} write {iw:>10.0} IOPS, read {ir:>10.0} IOPS (runs: {ws:.0?} {rs:.0?})");
            w.push(iw);
            r.push(ir);
        }
        rows.push(Row {
            name: "fio 4 KiB randwrite",
            unit: "IOPS",
            higher_is_better: true,
            values: w,
        });
        rows.push(Row {
            name: "fio 4 KiB randread",
            unit: "IOPS",
            higher_is_better: true,
            values: r,
        });
    }
    if wanted("smallfiles") {
        rows.push(measure(
            &base,
            "20k files create+stat+delete",
            "s",
            false,
            &small_files,
        ));
    }
    if wanted("untar") {
        if tarball.exists() {
            let tb = tarball.clone();
            rows.push(measure(
                &base,
                "extract source tarball",
                "s",
                false,
                &move |d: &Path| untar(d, &tb),
            ));
        } else {
            eprintln!(
                "untar: {} is missing; scripts/bench-fs.sh prepares it",
                tarball.display()
            );
        }
    }
    println!("\n| workload | plain | bindfs | mirrorfs | bindfs / plain | mirrorfs / plain | mirrorfs / bindfs |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        // Ratios are of speed: above 1 is faster than the reference.
        let speed = |v: f64| if r.higher_is_better { v } else { 1.0 / v };
        let (p, b, m) = (r.values[0], r.values[1], r.values[2]);
        println!(
            "| {} | {:.2} {u} | {:.2} {u} | {:.2} {u} | {:.2} | {:.2} | {:.2} |",
            r.name,
            p,
            b,
            m,
            speed(b) / speed(p),
            speed(m) / speed(p),
            speed(m) / speed(b),
            u = r.unit
        );
    }
}
