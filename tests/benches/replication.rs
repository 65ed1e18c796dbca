//! Replication benchmark (issue 4): mirror (mirrorfs + mirror-sendd + mirror-routerd over
//! loopback TCP) side by side with lsyncd + rsync (an rsync daemon on loopback), on the same
//! workloads, in one run:
//!
//! * lag of single small writes (open, write, close: a save): the close returns → the backup
//!   file shows it (p50, p99 over
//!   `MIRROR_BENCH_LAG_WRITES`, default 200);
//! * 20,000 small files in 200 directories: time until the backup has them all, as a ratio to
//!   the time the writes took;
//! * 1 GiB written sequentially (1 MiB writes, then fsync): time until the backup file equals
//!   it, as a ratio to the time the writes took; the median of `MIRROR_BENCH_RUNS` (default 3)
//!   runs, as this VM's disk speed varies from run to run.
//!
//! Run with `scripts/bench-replication.sh` (root; installs lsyncd and rsync).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mirror_tests::{Daemon, Local, Mount, Router};

const LIMIT: Duration = Duration::from_secs(600);

/// A running replication setup: where to write, where the copy appears.
struct Setup {
    name: &'static str,
    source: PathBuf,
    backup: PathBuf,
    _keep: Vec<Box<dyn std::any::Any>>,
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mirror() -> Setup {
    let r = Router::start();
    let l = Local::new();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "b", &[]);
    let m: Mount = l.mount(&[]);
    let s: Daemon = l.sender();
    Setup {
        name: "mirror",
        source: l.dir.clone(),
        backup: r.root.join("b"),
        _keep: vec![Box::new(s), Box::new(m), Box::new(l), Box::new(r)],
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn lsyncd() -> Setup {
    let tmp = tempfile::Builder::new()
        .prefix("mirror-lsyncd-")
        .tempdir()
        .expect("tempdir");
    let base = tmp.path().to_path_buf();
    let (src, dst) = (base.join("src"), base.join("dst"));
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&dst).unwrap();
    let port = free_port();
    let conf = base.join("rsyncd.conf");
    fs::write(
        &conf,
        format!(
            "use chroot = no\nuid = root\ngid = root\n[b]\npath = {}\nread only = no\n",
            dst.display()
        ),
    )
    .unwrap();
    let rsyncd = Command::new("rsync")
        .args([
            "--daemon",
            "--no-detach",
            "--address",
            "127.0.0.1",
            "--port",
        ])
        .arg(port.to_string())
        .arg("--config")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rsync --daemon");
    let lua = base.join("lsyncd.lua");
    fs::write(
        &lua,
        format!(
            "settings {{ nodaemon = true, logfile = \"{log}\", statusInterval = 1, maxDelays = 1 }}\n\
             sync {{ default.rsync, source = \"{src}\", target = \"rsync://127.0.0.1:{port}/b/\", delay = 0,\n\
                     rsync = {{ archive = true, whole_file = true }} }}\n",
            log = base.join("lsyncd.log").display(),
            src = src.display(),
        ),
    )
    .unwrap();
    let lsyncd = Command::new("lsyncd")
        .arg(&lua)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("lsyncd");
    // Ready once its startup sync of the (empty) tree is through.
    let probe = src.join(".ready");
    fs::write(&probe, b"1").unwrap();
    wait(|| dst.join(".ready").exists(), "lsyncd to start");
    fs::remove_file(&probe).unwrap();
    wait(|| !dst.join(".ready").exists(), "lsyncd to settle");
    Setup {
        name: "lsyncd+rsync",
        source: src,
        backup: dst,
        _keep: vec![
            Box::new(Killed(lsyncd)),
            Box::new(Killed(rsyncd)),
            Box::new(tmp),
        ],
    }
}

fn wait(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// p50 and p99 (ms) of single small writes reaching the backup.
fn lag(s: &Setup, n: usize) -> (f64, f64) {
    let f = s.source.join("lag.txt");
    fs::write(&f, b"start").unwrap();
    let b = s.backup.join("lag.txt");
    wait(|| fs::read(&b).is_ok_and(|d| d == b"start"), "the lag file");
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        // A save: open with O_TRUNC, write, close (lsyncd acts on the close). Consecutive
        // saves differ in size: rsync's quick check skips a same-size rewrite within the same
        // second of mtime, and would never deliver it.
        let data = format!("write {i:06}{}", if i % 2 == 1 { "!" } else { "" });
        let t = Instant::now();
        fs::write(&f, data.as_bytes()).unwrap();
        wait(
            || fs::read(&b).is_ok_and(|d| d == data.as_bytes()),
            "a small write",
        );
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (percentile(&mut ms, 0.5), percentile(&mut ms, 0.99))
}

/// (write seconds, replicated seconds) for 20,000 small files.
fn many_files(s: &Setup) -> (f64, f64) {
    let root = s.source.join("many");
    let t = Instant::now();
    fs::create_dir(&root).unwrap();
    for d in 0..200 {
        let dir = root.join(format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..100 {
            fs::write(
                dir.join(format!("f{f}")),
                format!("file {d}/{f}\n").repeat(4),
            )
            .unwrap();
        }
    }
    let written = t.elapsed().as_secs_f64();
    let b = s.backup.join("many");
    wait(
        || mirror_tests::bench::count_files(&b) == 20_000,
        "20,000 files on the backup",
    );
    let last = b.join("d199/f99");
    wait(
        || fs::read(&last).is_ok_and(|d| d == "file 199/99\n".repeat(4).as_bytes()),
        "the last file's content",
    );
    (written, t.elapsed().as_secs_f64())
}

/// (write seconds, replicated seconds) for 1 GiB written sequentially, the run with the
/// median ratio of `runs` (the file is deleted, and gone from the backup, between runs).
fn big_file(s: &Setup, runs: usize) -> (f64, f64) {
    let mut all: Vec<(f64, f64)> = (0..runs.max(1))
        .map(|i| {
            let (w, r) = big_file_once(s);
            eprintln!(
                "{}: 1 GiB run {i}: written in {w:.2} s, replicated in {r:.2} s",
                s.name
            );
            fs::remove_file(s.source.join("big.bin")).unwrap();
            wait(
                || !s.backup.join("big.bin").exists(),
                "the backup to delete big.bin",
            );
            (w, r)
        })
        .collect();
    all.sort_by(|a, b| (a.1 / a.0).total_cmp(&(b.1 / b.0)));
    all[all.len() / 2]
}

fn big_file_once(s: &Setup) -> (f64, f64) {
    let f = s.source.join("big.bin");
    let chunk = mirror_tests::bench::sequential_chunk();
    let t = Instant::now();
    let written = mirror_tests::bench::write_sequential(&f, 1 << 30);
    let b = s.backup.join("big.bin");
    wait(
        || fs::metadata(&b).is_ok_and(|m| m.len() == 1 << 30),
        "1 GiB on the backup",
    );
    // The size can arrive before the last bytes (rsync writes a temp file and renames it, so
    // for it the size is final); check the content once.
    wait(
        || {
            let Ok(bf) = fs::File::open(&b) else {
                return false;
            };
            let mut buf = vec![0u8; 1 << 20];
            (0..1024u64).all(|i| bf.read_exact_at(&mut buf, i << 20).is_ok() && buf == chunk)
        },
        "the backup's content",
    );
    (written, t.elapsed().as_secs_f64())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("MIRROR_BENCH_LAG_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let runs: usize = std::env::var("MIRROR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // MIRROR_BENCH_SYSTEMS=mirror (or lsyncd) runs one system only; MIRROR_BENCH_ONLY=big (a
    // comma list of lag, many, big) runs some workloads only; skipped ones show as 0.
    let pick = |var: &str, what: &str| {
        std::env::var(var).map_or(true, |v| v.split(',').any(|x| what.starts_with(x)))
    };
    let mut rows = Vec::new();
    for (sys, make) in [("mirror", mirror as fn() -> Setup), ("lsyncd", lsyncd)] {
        if !pick("MIRROR_BENCH_SYSTEMS", sys) {
            continue;
        }
        let s = make();
        let (p50, p99) = if pick("MIRROR_BENCH_ONLY", "lag") {
            lag(&s, n)
        } else {
            (0.0, 0.0)
        };
        eprintln!("{}: lag p50 {p50:.2} ms, p99 {p99:.2} ms", s.name);
        let (w1, r1) = if pick("MIRROR_BENCH_ONLY", "many") {
            many_files(&s)
        } else {
            (1.0, 0.0)
        };
        eprintln!(
            "{}: 20k files written in {w1:.2} s, replicated in {r1:.2} s",
            s.name
        );
        let (w2, r2) = if pick("MIRROR_BENCH_ONLY", "big") {
            big_file(&s, runs)
        } else {
            (1.0, 0.0)
        };
        eprintln!(
            "{}: 1 GiB written in {w2:.2} s, replicated in {r2:.2} s",
            s.name
        );
        rows.push((s.name, p50, p99, w1, r1, w2, r2));
    }
    println!("\n| system | lag p50 | lag p99 | 20k files: write / replicated (ratio) | 1 GiB: write / replicated (ratio) |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, p50, p99, w1, r1, w2, r2) in rows {
        println!(
            "| {name} | {p50:.2} ms | {p99:.2} ms | {w1:.2} s / {r1:.2} s ({:.2}×) | {w2:.2} s / {r2:.2} s ({:.2}×) |",
            r1 / w1,
            r2 / w2
        );
    }
}
