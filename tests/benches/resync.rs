//! Copies that do not resend what the backup holds (issue 16), side by side with rsync, in
//! bytes on the wire (every TCP byte between mirror-sendd and mirror-routerd both ways, counted
//! by the in-tree relay, [`mirror_tests::relay`], without delay; rsync's own `--stats`):
//!
//! * (a) a file (`MIRROR_BENCH_MIB`, default 1024 MiB) on both sides with 1 % of its 4 KiB
//!   blocks changed at random on the backup: `mirror-ctl sync --checksum` against
//!   `rsync --inplace --no-whole-file` and the same with `-B 4096`;
//! * (b) that file, written through the mount under one rule, renamed into another rule of
//!   the same site;
//! * (c) `sync` of an unchanged tree (`MIRROR_BENCH_FILES` files, default 30,000, of
//!   `MIRROR_BENCH_TREE_MIB` MiB, default 2048) against `rsync -a` of the same unchanged tree:
//!   time and bytes.
//!
//! Run with `scripts/bench-resync.sh` (release binaries). Not part of the test suite.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mirror_tests::bench::env_num;
use mirror_tests::relay::Relay;
use mirror_tests::{Local, Router};

const LIMIT: Duration = Duration::from_secs(3600);
const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;

fn wait(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pseudo-random generator (xorshift), for data and block choices.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Writes `size` bytes of random data to `path`.
fn random_file(path: &Path, size: u64, seed: u64) {
    let mut rng = Rng(seed | 1);
    let f = fs::File::create(path).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all_at(&buf[..n], at).unwrap();
        at += n as u64;
    }
    f.sync_all().unwrap();
}

/// Changes `share` (in 1/10,000) of the 4 KiB blocks of `path` at random; the bytes changed.
fn change_blocks(path: &Path, per_10k: u64, seed: u64) -> u64 {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    let blocks = f.metadata().unwrap().len() / BLOCK;
    let mut rng = Rng(seed | 1);
    let mut chosen = std::collections::BTreeSet::new();
    let want = blocks * per_10k / 10_000;
    while (chosen.len() as u64) < want {
        chosen.insert(rng.next() % blocks);
    }
    let mut buf = vec![0u8; BLOCK as usize];
    for b in &chosen {
        rng.fill(&mut buf);
        f.write_all_at(&buf, b * BLOCK).unwrap();
    }
    f.sync_all().unwrap();
    chosen.len() as u64 * BLOCK
}

fn same(a: &Path, b: &Path) -> bool {
    let out = Command::new("cmp")
        .arg("-s")
        .arg(a)
        .arg(b)
        .status()
        .unwrap();
    out.success()
}

/// rsync's bytes sent plus received (`--stats`) and its time, for `args`.
fn rsync(args: &[&str]) -> (u64, f64) {
    let t = Instant::now();
    let out = Command::new("rsync")
        .arg("--stats")
        .args(args)
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "rsync {args:?}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let num = |label: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .map(|r| {
                r.split_whitespace()
                    .next()
                    .unwrap_or("0")
                    .replace(',', "")
                    .parse()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    (
        num("Total bytes sent:") + num("Total bytes received:"),
        secs,
    )
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / MIB as f64)
}

/// (a): a stale copy of a file on the backup, 1 % of its blocks changed.
fn changed_blocks(size: u64) {
    let r = Router::start();
    let relay = Relay::start(r.port, Duration::ZERO, 64 << 20);
    let l = Local::new();
    random_file(&l.path("big.bin"), size, 7);
    l.add_rule_validated(&format!("{}/", l.dir.display()), &relay.site(), "proj", &[]);
    let m = l.mount(&[]);
    let _s = l.sender();
    let backup = r.path("proj/big.bin");
    wait(|| same(&l.path("big.bin"), &backup), "the first copy");
    // A stale copy of it for rsync, from the same changed blocks.
    let scratch = tempfile::tempdir_in(l.dir.parent().unwrap()).unwrap();
    let stale = scratch.path().join("big.bin");
    fs::copy(&backup, &stale).unwrap();
    let changed = change_blocks(&backup, 100, 99);
    change_blocks(&stale, 100, 99);
    let before = relay.bytes();
    let t = Instant::now();
    let out = l.ctl(&["sync", "--checksum", l.path("big.bin").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    wait(|| same(&l.path("big.bin"), &backup), "the sync");
    let secs = t.elapsed().as_secs_f64();
    let after = relay.bytes();
    let ours = (after.0 - before.0) + (after.1 - before.1);
    let src = l.path("big.bin");
    let stale2 = scratch.path().join("big2.bin");
    fs::copy(&stale, &stale2).unwrap();
    let (rs, rs_t) = rsync(&[
        "--inplace",
        "--no-whole-file",
        src.to_str().unwrap(),
        stale.to_str().unwrap(),
    ]);
    let (rb, rb_t) = rsync(&[
        "--inplace",
        "--no-whole-file",
        "-B",
        "4096",
        src.to_str().unwrap(),
        stale2.to_str().unwrap(),
    ]);
    assert!(same(&src, &stale) && same(&src, &stale2));
    println!(
        "(a) {} file, 1 % of 4 KiB blocks changed ({} changed):",
        mib(size),
        mib(changed)
    );
    println!(
        "    mirror sync --checksum: {} on the wire ({:.3}x the changed bytes; sender->router {}, back {}), {secs:.1} s",
        mib(ours),
        ours as f64 / changed as f64,
        mib(after.0 - before.0),
        mib(after.1 - before.1)
    );
    println!(
        "    rsync --inplace:        {} ({:.3}x), {rs_t:.1} s; mirror/rsync bytes {:.3}",
        mib(rs),
        rs as f64 / changed as f64,
        ours as f64 / rs as f64
    );
    println!(
        "    rsync --inplace -B 4096: {} ({:.3}x), {rb_t:.1} s; mirror/rsync bytes {:.3}",
        mib(rb),
        rb as f64 / changed as f64,
        ours as f64 / rb as f64
    );
    drop(m);
}

/// (b): a file written through the mount under one rule, renamed into another.
fn rename_across_rules(size: u64) {
    let r = Router::start();
    let relay = Relay::start(r.port, Duration::ZERO, 64 << 20);
    let l = Local::new();
    for d in ["a", "b"] {
        fs::create_dir_all(l.path(d)).unwrap();
        l.add_rule_validated(&format!("{}/{d}/", l.dir.display()), &relay.site(), d, &[]);
    }
    let m = l.mount(&[]);
    let _s = l.sender();
    random_file(&l.path("a/big.bin"), size, 5);
    wait(
        || same(&l.path("a/big.bin"), &r.path("a/big.bin")),
        "the writes",
    );
    let before = relay.bytes();
    let t = Instant::now();
    fs::rename(l.path("a/big.bin"), l.path("b/big.bin")).unwrap();
    wait(
        || same(&l.path("b/big.bin"), &r.path("b/big.bin")) && !r.path("a/big.bin").exists(),
        "the rename",
    );
    let secs = t.elapsed().as_secs_f64();
    let after = relay.bytes();
    let ours = (after.0 - before.0) + (after.1 - before.1);
    println!(
        "(b) rename of a {} file into another rule: {} on the wire ({:.3} % of its bytes), {secs:.1} s",
        mib(size),
        mib(ours),
        100.0 * ours as f64 / size as f64
    );
    drop(m);
}

/// (c): sync of an unchanged tree against rsync -a of it.
fn unchanged_tree(files: u64, total: u64) {
    let r = Router::start();
    let relay = Relay::start(r.port, Duration::ZERO, 64 << 20);
    let l = Local::new();
    let each = total / files;
    let mut rng = Rng(3);
    let mut buf = vec![0u8; each as usize];
    for i in 0..files {
        let d = l.path(&format!("t/d{}", i % 300));
        if i < 300 {
            fs::create_dir_all(&d).unwrap();
        }
        rng.fill(&mut buf);
        fs::write(d.join(format!("f{i}")), &buf).unwrap();
    }
    l.add_rule_validated(&format!("{}/t/", l.dir.display()), &relay.site(), "t", &[]);
    let m = l.mount(&[]);
    let _s = l.sender();
    wait(
        || l.state.join("mirror-sendd.sock").exists(),
        "mirror-sendd's socket",
    );
    let out = l.ctl(&["sync", "--wait", l.path("t").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    mirror_tests::wait_converged(&l.path("t"), &r.path("t"), LIMIT);
    // Files changed in the second before a copy read them are not recorded as shipped (their
    // times are coarse): syncs until one finds the whole tree recorded, as an older tree is.
    for _ in 0..10 {
        let before = relay.bytes();
        let out = l.ctl(&["sync", "--wait", l.path("t").to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        if relay.bytes().0 - before.0 < 1 << 20 {
            break;
        }
    }
    // Where the time goes: the walk alone (a dry run), then queuing, then the whole.
    let t = Instant::now();
    let out = l.ctl(&["sync", "--dry-run", l.path("t").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let walk = t.elapsed().as_secs_f64();
    let before = relay.bytes();
    let t = Instant::now();
    let out = l.ctl(&["sync", "--wait", l.path("t").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let secs = t.elapsed().as_secs_f64();
    println!("    (mirror-ctl's walk alone, sync --dry-run: {walk:.2} s)");
    let after = relay.bytes();
    let ours = (after.0 - before.0) + (after.1 - before.1);
    let scratch = tempfile::tempdir_in(l.dir.parent().unwrap()).unwrap();
    let dst = scratch.path().join("t");
    let src = format!("{}/", l.path("t").display());
    rsync(&["-a", &src, dst.to_str().unwrap()]);
    let (rs, rs_t) = rsync(&["-a", &src, dst.to_str().unwrap()]);
    println!(
        "(c) sync of an unchanged tree of {files} files, {}: mirror {} on the wire ({:.4} % of the tree), {secs:.2} s; rsync -a {} , {rs_t:.2} s; time mirror/rsync {:.2}",
        mib(total),
        mib(ours),
        100.0 * ours as f64 / total as f64,
        mib(rs),
        secs / rs_t
    );
    drop(m);
}

fn main() {
    let size = env_num("MIRROR_BENCH_MIB", 1024) * MIB;
    let files = env_num("MIRROR_BENCH_FILES", 30_000);
    let tree = env_num("MIRROR_BENCH_TREE_MIB", 2048) * MIB;
    let only = std::env::var("MIRROR_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only.contains('a') {
        changed_blocks(size);
    }
    if only.is_empty() || only.contains('b') {
        rename_across_rules(size);
    }
    if only.is_empty() || only.contains('c') {
        unchanged_tree(files, tree);
    }
}
