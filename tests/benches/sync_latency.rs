//! Synchronous mirroring benchmark (issue 15): the cost of a durability point on the plain
//! directory, on a mirrorfs mount with an async rule, and with a sync rule (mirror-sendd and
//! mirror-routerd on loopback), in one interleaved run:
//!
//! * latency of a 4 KiB write + fsync loop (appending, `MIRROR_BENCH_ITERS` iterations,
//!   default 1,000): p50 and p99;
//! * throughput of 16 concurrent writers, each appending 4 KiB + fsync to a file of its own
//!   for `MIRROR_BENCH_SECS` seconds (default 5): fsyncs per second.
//!
//! Each of `MIRROR_BENCH_RUNS` rounds (default 3) measures every column once, in turn; the
//! medians are printed with their ratios to the plain directory. The plain directory, the
//! mounts' directories and the router's state all live on the same file system (the tests'
//! temporary directory). Run with `scripts/bench-sync-mode.sh`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirror_tests::{wait_until, Local, Router};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A place to write, and what keeps it alive.
struct Column {
    name: &'static str,
    dir: PathBuf,
    _keep: Vec<Box<dyn std::any::Any>>,
}

fn plain() -> Column {
    let t = tempfile::Builder::new()
        .prefix("mirror-bench-plain-")
        .tempdir()
        .unwrap();
    Column {
        name: "plain",
        dir: t.path().to_path_buf(),
        _keep: vec![Box::new(t)],
    }
}

fn mirrored(name: &'static str, rule: &[&str]) -> Column {
    let r = Router::start();
    let l = Local::new();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "b", rule);
    let m = l.mount(&[]);
    let s = l.sender();
    wait_until(
        Duration::from_secs(60),
        "the first copy acknowledged",
        || {
            l.status().as_array().is_some_and(|rows| {
                !rows.is_empty()
                    && rows.iter().all(|row| {
                        row["initial_copies"]
                            .as_array()
                            .is_some_and(|v| v.is_empty())
                    })
            })
        },
    );
    Column {
        name,
        dir: l.dir.clone(),
        _keep: vec![Box::new(s), Box::new(m), Box::new(l), Box::new(r)],
    }
}

/// Durations of `n` appends of 4 KiB, each followed by fsync, to a new file in `dir`.
fn latencies(dir: &Path, n: u64) -> Vec<Duration> {
    let p = dir.join(format!("lat-{}", rand_suffix()));
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .unwrap();
    let block = vec![0x5au8; 4096];
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&block).unwrap();
        f.sync_all().unwrap();
        out.push(t.elapsed());
    }
    drop(f);
    let _ = fs::remove_file(&p);
    out.sort();
    out
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Fsyncs per second of `writers` concurrent appending writers in `dir` over `secs`.
fn throughput(dir: &Path, writers: usize, secs: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let tag = rand_suffix();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (stop, count) = (stop.clone(), count.clone());
            let p = dir.join(format!("tp-{tag}-{w}"));
            std::thread::spawn(move || {
                let mut f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .unwrap();
                let block = vec![0xa5u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    f.write_all(&block).unwrap();
                    f.sync_all().unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
                drop(f);
                let _ = fs::remove_file(&p);
            })
        })
        .collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let n = count.load(Ordering::Relaxed);
    let elapsed = t.elapsed();
    for h in handles {
        h.join().unwrap();
    }
    n as f64 / elapsed.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let runs = env_or("MIRROR_BENCH_RUNS", 3);
    let iters = env_or("MIRROR_BENCH_ITERS", 1000);
    let secs = env_or("MIRROR_BENCH_SECS", 5);
    let columns = [
        plain(),
        mirrored("async", &[]),
        mirrored("sync", &["--mode", "sync"]),
    ];
    let mut p50 = vec![Vec::new(); columns.len()];
    let mut p99 = vec![Vec::new(); columns.len()];
    let mut tput = vec![Vec::new(); columns.len()];
    for run in 0..runs {
        for (i, c) in columns.iter().enumerate() {
            let l = latencies(&c.dir, iters);
            p50[i].push(ms(l[l.len() / 2]));
            p99[i].push(ms(l[l.len() * 99 / 100]));
            tput[i].push(throughput(&c.dir, 16, secs));
            eprintln!(
                "run {run} {}: p50 {:.3} ms, p99 {:.3} ms, 16 writers {:.0} fsyncs/s",
                c.name,
                p50[i].last().unwrap(),
                p99[i].last().unwrap(),
                tput[i].last().unwrap()
            );
        }
    }
    let (p50, p99, tput): (Vec<f64>, Vec<f64>, Vec<f64>) = (
        p50.into_iter().map(median).collect(),
        p99.into_iter().map(median).collect(),
        tput.into_iter().map(median).collect(),
    );
    println!(
        "\n4 KiB append + fsync, {iters} iterations; 16 writers for {secs} s; medians of {runs} runs\n"
    );
    println!("| column | fsync p50 | p50 / plain | fsync p99 | 16 writers, fsyncs/s | / async |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (i, c) in columns.iter().enumerate() {
        println!(
            "| {} | {:.3} ms | {:.2}x | {:.3} ms | {:.0} | {:.2}x |",
            c.name,
            p50[i],
            p50[i] / p50[0],
            p99[i],
            tput[i],
            tput[i] / tput[1]
        );
    }
    println!(
        "\ntargets: sync p50 <= 2x plain p50 ({:.2}x), 16 sync writers >= 0.5x async ({:.2}x)",
        p50[2] / p50[0],
        tput[2] / tput[1]
    );
}
