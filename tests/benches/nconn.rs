//! N connections per site over a long-distance link (issue 15 item 6): 1 GiB replicated
//! (`MIRROR_BENCH_MIB` for less) through the in-tree relay ([`mirror_tests::relay`]: 50 ms each way, at most
//! `MIRROR_BENCH_CAP` bytes in flight per connection and direction, default 1 MiB) with
//! `--connections` N = 1, 2, 4, 8 (`MIRROR_BENCH_CONNS`), and once without the relay (the
//! bound of this machine's disk and CPU). Each run: a fresh router, mount and sender; 1 GiB
//! written (1 MiB writes, then fsync); the time until the backup file holds all of it.
//!
//! Run with `scripts/bench-nconn.sh` (release binaries). Not part of the test suite.

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use mirror_tests::relay::Relay;
use mirror_tests::{Local, Router};

const LIMIT: Duration = Duration::from_secs(1800);

fn wait(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The machine's CPU time so far (`/proc/stat`): busy, iowait, total (in ticks).
fn cpu() -> (u64, u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    let (idle, iowait) = (get(3), get(4));
    (total - idle - iowait, iowait, total)
}

/// What a run measured: seconds to write, seconds until replicated, and the share of the
/// machine's CPU time that was busy and that waited for the disk meanwhile.
struct Run {
    written: f64,
    replicated: f64,
    busy: f64,
    iowait: f64,
}

/// Seconds to write 1 GiB and to have it at the backup, with `n` connections, through a
/// relay of `delay` and `cap` (or directly).
fn run(n: usize, relay: Option<(Duration, usize)>, size: u64) -> Run {
    let r = Router::start();
    let relay = relay.map(|(d, cap)| Relay::start(r.port, d, cap));
    let site = relay.as_ref().map_or_else(|| r.site(), Relay::site);
    let l = Local::new();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &site, "b", &[]);
    let m = l.mount(&[]);
    let s = l.sender_with(&["--connections", &n.to_string()]);
    let probe = l.dir.join("probe");
    fs::write(&probe, b"up").unwrap();
    wait(|| r.root.join("b/probe").exists(), "the link to come up");
    let f = l.dir.join("big.bin");
    let chunk = mirror_tests::bench::sequential_chunk();
    let t = Instant::now();
    let c0 = cpu();
    let written = mirror_tests::bench::write_sequential(&f, size);
    let b = r.root.join("b/big.bin");
    wait(
        || fs::metadata(&b).is_ok_and(|m| m.len() == size),
        "1 GiB on the backup",
    );
    wait(
        || {
            let Ok(bf) = fs::File::open(&b) else {
                return false;
            };
            let mut buf = vec![0u8; 1 << 20];
            (0..(size >> 20)).all(|i| bf.read_exact_at(&mut buf, i << 20).is_ok() && buf == chunk)
        },
        "the backup's content",
    );
    let replicated = t.elapsed().as_secs_f64();
    let c1 = cpu();
    let total = (c1.2 - c0.2).max(1) as f64;
    drop(s);
    drop(m);
    drop(relay);
    Run {
        written,
        replicated,
        busy: (c1.0 - c0.0) as f64 / total,
        iowait: (c1.1 - c0.1) as f64 / total,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let conns: Vec<usize> = std::env::var("MIRROR_BENCH_CONNS")
        .unwrap_or_else(|_| "1,2,4,8".into())
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    let cap: usize = std::env::var("MIRROR_BENCH_CAP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20);
    let delay = Duration::from_millis(50);
    // MIRROR_BENCH_MIB (default 1024) for a shorter run.
    let size: u64 = std::env::var("MIRROR_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1024)
        << 20;
    let mib = (size >> 20) as f64;
    let mut rows: Vec<(String, Run)> = Vec::new();
    let show = |what: &str, r: &Run| {
        eprintln!(
            "{what}: written in {:.2} s, replicated in {:.2} s, CPU busy {:.0} %, iowait {:.0} %",
            r.written,
            r.replicated,
            r.busy * 100.0,
            r.iowait * 100.0
        )
    };
    let direct = run(1, None, size);
    show("direct, 1 connection", &direct);
    rows.push(("direct (no relay), 1".to_string(), direct));
    for &n in &conns {
        let r = run(n, Some((delay, cap)), size);
        show(&format!("relay, {n} connections"), &r);
        rows.push((
            format!("relay 50 ms each way, cap {} KiB, {n}", cap >> 10),
            r,
        ));
    }
    let base = rows.get(1).map_or(1.0, |r| r.1.replicated);
    println!("\n| link, connections | write {mib} MiB | replicated after | MiB/s | vs relay N=1 | CPU busy | iowait |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, r) in rows {
        println!(
            "| {name} | {:.2} s | {:.2} s | {:.1} | {:.2}× | {:.0} % | {:.0} % |",
            r.written,
            r.replicated,
            mib / r.replicated,
            base / r.replicated,
            r.busy * 100.0,
            r.iowait * 100.0
        );
    }
}
