//! Sync benchmark (issue 13): `mirror-ctl sync --wait` of 30,000 small files and a 1 GiB
//! file (mirrorfs + mirror-sendd + mirror-routerd over loopback), beside `rsync -a` of the
//! same tree to the same disk, in one run. For each: the time until the backup holds it all,
//! the bytes sent (mirror: TCP payload mirror-sendd sent to the router, `bytes_sent` of
//! `ss -ti`; rsync: its `--stats` "Total bytes sent", over the pipe between its processes), and the peak resident memory of
//! each process (`VmHWM` of the daemons, `wait4` of the commands). Page caches are dropped
//! before each.
//!
//! Run with `scripts/bench-sync.sh` (root; installs rsync). `MIRROR_BENCH_SMALL` sets the
//! number of small files (default 30,000), `MIRROR_BENCH_BIG_MIB` the big file's size
//! (default 1024).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mirror_tests::{bin, wait_converged, wait_until, Local, Router};

const LIMIT: Duration = Duration::from_secs(1800);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bytes sent so far on the established TCP connections to loopback port `port` (`ss -ti`:
/// `bytes_sent`, TCP payload, retransmissions included).
fn tcp_sent_to(port: u16) -> u64 {
    let out = Command::new("ss")
        .args(["-tinH", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .expect("run ss");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("bytes_sent:"))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// Peak resident memory of `pid`, KiB.
fn peak_kib(pid: u32) -> u64 {
    proc_field(pid, "status", "VmHWM:")
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Runs `cmd` to its end: success, stdout, peak resident memory in KiB (`VmHWM` of the child,
/// read every few milliseconds while it runs; and `wait4`'s `ru_maxrss`, which counts its
/// descendants too, but also what the child shared with this process until its exec, so an
/// upper bound), wall time.
fn run_measured(cmd: &mut Command) -> (bool, String, u64, u64, Duration) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: rusage is plain data.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut polled = 0;
    loop {
        polled = polled.max(peak_kib(child.id()));
        // SAFETY: valid pointers to locals; the pid is our child's (reaped here).
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if rc == pid {
            break;
        }
        assert_eq!(rc, 0, "wait4");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::mem::forget(child);
    let took = started.elapsed();
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (
        ok,
        fs::read_to_string(out.path()).unwrap_or_default(),
        polled,
        usage.ru_maxrss as u64,
        took,
    )
}

fn make_tree(dir: &Path, small: u64, big_mib: u64) -> u64 {
    let mut bytes = 0;
    for i in 0..small {
        let d = dir.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&d).unwrap();
        }
        let body = format!("file {i} {}\n", "x".repeat((i % 700) as usize));
        bytes += body.len() as u64;
        fs::write(d.join(format!("f{i:05}")), body).unwrap();
    }
    let f = fs::File::create(dir.join("big")).unwrap();
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for m in 0..big_mib {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all_at(&block, m << 20).unwrap();
    }
    f.sync_all().unwrap();
    bytes + (big_mib << 20)
}

fn main() {
    let small = env_num("MIRROR_BENCH_SMALL", 30_000);
    let big_mib = env_num("MIRROR_BENCH_BIG_MIB", 1024);
    let r = Router::start();
    let l = Local::new();
    let bytes = make_tree(&l.dir, small, big_mib);
    let last = format!("d{:03}/f{:05}", (small - 1) / 100, small - 1);
    println!(
        "tree: {small} small files and a {big_mib} MiB file, {:.1} MiB in all",
        bytes as f64 / 1048576.0
    );

    // rsync -a of the plain tree to the same disk.
    let dst = l.tmp.path().join("rsync-dst");
    drop_caches();
    let (ok, out, _, rsync_kib, rsync_time) = run_measured(
        Command::new("rsync")
            .arg("-a")
            .arg("--stats")
            .arg(format!("{}/", l.dir.display()))
            .arg(&dst),
    );
    assert!(ok, "rsync failed: {out}");
    let rsync_sent: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("Total bytes sent: "))
        .map(|v| v.replace(',', ""))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // Made durable like the router's backup (which fsyncs what it applies).
    let t = Instant::now();
    let _ = Command::new("sync").status();
    let rsync_time = rsync_time + t.elapsed();

    // mirror: the rule, the mount, the sender, then `sync --wait`.
    // `--no-sync`: what is measured is the `sync` alone, not the rule's first copy too.
    l.add_rule_validated(
        &format!("{}/", l.dir.display()),
        &r.site(),
        "b",
        &["--no-sync"],
    );
    let m = l.mount(&[]);
    let s = l.sender();
    let spid = s.pid().expect("sender runs");
    drop_caches();
    wait_until(LIMIT, "mirror-sendd's session", || tcp_sent_to(r.port) > 0);
    let sent_before = tcp_sent_to(r.port);
    let started = Instant::now();
    let (ok, out, ctl_kib, _, acked) = run_measured(
        Command::new(bin("mirror-ctl"))
            .arg("--state")
            .arg(&l.state)
            .args(["sync", "--wait", "--timeout", "1800"]),
    );
    assert!(ok, "sync failed: {out}");
    let backup = r.root.join("b");
    let big = backup.join("big");
    let last_file = backup.join(&last);
    wait_until(LIMIT, "the backup to hold the tree", || {
        last_file.exists() && fs::metadata(&big).is_ok_and(|m| m.len() == big_mib << 20)
    });
    let applied = started.elapsed();
    let sent = tcp_sent_to(r.port) - sent_before;
    let (fs_kib, sendd_kib, routerd_kib) = (
        peak_kib(m.pid()),
        peak_kib(spid),
        peak_kib(r.daemon.pid().expect("router runs")),
    );
    let files = wait_converged(&l.dir, &backup, LIMIT);
    println!("backup verified: {files} files equal their sources");
    let mib = |b: u64| b as f64 / 1048576.0;
    println!();
    println!("| tool | acknowledged | in the backup | sent | peak RSS |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| mirror-ctl sync --wait | {:.1} s | {:.1} s | {:.1} MiB | mirror-ctl {} MiB, mirrorfs {} MiB, mirror-sendd {} MiB, mirror-routerd {} MiB |",
        acked.as_secs_f64(),
        applied.as_secs_f64(),
        mib(sent),
        ctl_kib >> 10,
        fs_kib >> 10,
        sendd_kib >> 10,
        routerd_kib >> 10
    );
    println!(
        "| rsync -a (then sync) | - | {:.1} s | {:.1} MiB | rsync {} MiB (wait4: the largest of its processes, an upper bound) |",
        rsync_time.as_secs_f64(),
        mib(rsync_sent),
        rsync_kib >> 10
    );
    drop(s);
    drop(m);
}
