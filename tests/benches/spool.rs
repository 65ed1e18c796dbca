//! Spool transport (issue 17): the same workloads through a live site (mirror-sendd →
//! mirror-routerd over loopback TCP) and through a spool site (`--site spool:OUTBOX`, sealed
//! spool files carried by `rsync -a` in a loop into the router's `--spool-in`, the
//! acknowledgements carried back with `rsync -a --checksum`, a pause of 100 ms between
//! rounds, as in tests/tests/e2e/spool.rs):
//!
//! * 20,000 files of 4 KiB in 200 directories (`MIRROR_BENCH_FILES`) written through the
//!   mount;
//! * 1 GiB written sequentially (`MIRROR_BENCH_MIB`; 1 MiB writes, then fsync).
//!
//! Each run has a fresh router, mount and sender (the rule names the whole project directory;
//! a probe file has reached the backup before the clock starts) and measures the time from the
//! first write until the backup tree equals the source (polled; contents compared at the end).
//! The spool runs also count the bytes of every spool file sealed (the carrier records each
//! new file's size in the outbox before its acknowledgement can come back, and keeps a hard
//! link to it, decoded after the run for where the bytes go; cross-checked with mirror-sendd's
//! "sealed spool file" log lines) against the payload: the bytes of file data written plus
//! the names (paths relative to the mount of every file and directory made). The sender runs
//! with `--spool-size 64M --spool-age 1s`. `MIRROR_BENCH_RUNS` (default 3) repetitions,
//! live and spool interleaved; medians. `MIRROR_BENCH_ONLY=many` or `big` runs one workload.
//!
//! Run with `scripts/bench-spool.sh` (root: FUSE; installs rsync). Not part of the test suite.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mirror_tests::bench::{env_num, median};
use mirror_tests::{tree, tree_diff, wait_converged, Daemon, Local, Mount, Router};
use mirrorfs::wire::spool;

const LIMIT: Duration = Duration::from_secs(1800);
const FILE_SIZE: usize = 4096;

fn wait(pause: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(pause);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Live,
    Spool,
}

/// Spool file name → size, as first seen in the outbox.
type Seen = Arc<Mutex<BTreeMap<String, u64>>>;

/// `rsync -a` outbox → inbox and acks → outbox/acks in a loop until dropped.
struct Carrier {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    seen: Seen,
}

impl Drop for Carrier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a transfer; rsync's 24 (an acknowledged file left the outbox while it ran) is fine.
fn transfer(cmd: &mut Command) {
    match cmd.output() {
        Ok(o) if o.status.success() || o.status.code() == Some(24) => {}
        Ok(o) => eprintln!(
            "{cmd:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("{cmd:?}: {e}"),
    }
}

/// Records the spool files in `outbox` not seen before (size, and a hard link in `keep`).
fn record(outbox: &Path, keep: &Path, seen: &Seen) {
    for e in fs::read_dir(outbox).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "spool") {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let mut s = seen.lock().unwrap();
        if s.contains_key(&name) {
            continue;
        }
        if let Ok(m) = fs::metadata(&p) {
            let _ = fs::hard_link(&p, keep.join(&name));
            s.insert(name, m.len());
        }
    }
}

fn rsync_loop(outbox: &Path, inbox: &Path, acks: &Path, keep: &Path) -> Carrier {
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let (outbox, inbox, acks, keep) = (
        outbox.to_path_buf(),
        inbox.to_path_buf(),
        acks.to_path_buf(),
        keep.to_path_buf(),
    );
    let (s, seen2) = (stop.clone(), seen.clone());
    let thread = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            fs::create_dir_all(&outbox).ok();
            fs::create_dir_all(&acks).ok();
            transfer(
                Command::new("rsync")
                    .args(["-a", "--exclude", ".tmp/", "--exclude", "acks/"])
                    .arg(format!("{}/", outbox.display()))
                    .arg(format!("{}/", inbox.display())),
            );
            // Every file carried is still in the outbox now: its acknowledgement comes back
            // with the next command at the earliest.
            record(&outbox, &keep, &seen2);
            transfer(
                Command::new("rsync")
                    .args(["-a", "--checksum", "--exclude", ".*"])
                    .arg(format!("{}/", acks.display()))
                    .arg(format!("{}/acks/", outbox.display())),
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    Carrier {
        stop,
        thread: Some(thread),
        seen,
    }
}

/// A running source and backup. Fields drop in order: carrier, sender, mount, router, local.
struct Setup {
    carrier: Option<Carrier>,
    sender: Daemon,
    _mount: Mount,
    _router: Router,
    local: Local,
    keep: Option<PathBuf>,
    source: PathBuf,
    backup: PathBuf,
}

impl Setup {
    fn new(mode: Mode) -> Setup {
        let local = Local::new();
        let pattern = format!("{}/", local.dir.display());
        let (router, carrier, keep, sender_args) = match mode {
            Mode::Live => {
                let r = Router::start();
                local.add_rule_validated(&pattern, &r.site(), "b", &[]);
                (r, None, None, vec![])
            }
            Mode::Spool => {
                let base = local.tmp.path().canonicalize().unwrap();
                let (outbox, inbox, acks, keep) = (
                    base.join("outbox"),
                    base.join("inbox"),
                    base.join("acks"),
                    base.join("keep"),
                );
                fs::create_dir_all(&keep).unwrap();
                let (i, a) = (inbox.display().to_string(), acks.display().to_string());
                let r = Router::start_args(None, &["--spool-in", &i, "--spool-ack", &a]);
                let site = format!("spool:{}", outbox.display());
                local.add_rule_validated(&pattern, &site, "b", &[]);
                let c = rsync_loop(&outbox, &inbox, &acks, &keep);
                (
                    r,
                    Some(c),
                    Some(keep),
                    vec!["--spool-size", "64M", "--spool-age", "1s"],
                )
            }
        };
        let mount = local.mount(&[]);
        let sender = local.sender_with(&sender_args);
        let source = local.dir.clone();
        let backup = router.root.join("b");
        let s = Setup {
            carrier,
            sender,
            _mount: mount,
            _router: router,
            local,
            keep,
            source,
            backup,
        };
        // The link (or the carrier's round trip) is up before the clock starts.
        fs::write(s.source.join("probe"), b"up").unwrap();
        wait(Duration::from_millis(20), "the probe on the backup", || {
            s.backup.join("probe").exists()
        });
        // The probe's spool file is counted (and logged) before the run's bytes are.
        if mode == Mode::Spool {
            wait(Duration::from_millis(5), "the probe's spool file", || {
                let n = s.spooled().0;
                n > 0 && n == s.logged().0
            });
        }
        s
    }

    /// Spool files seen so far: (count, bytes).
    fn spooled(&self) -> (usize, u64) {
        self.carrier.as_ref().map_or((0, 0), |c| {
            let s = c.seen.lock().unwrap();
            (s.len(), s.values().sum())
        })
    }

    /// Bytes of the "sealed spool file" lines of the sender's log: (count, bytes).
    fn logged(&self) -> (usize, u64) {
        let text = self.sender.log_text();
        let v: Vec<u64> = text
            .lines()
            .filter(|l| l.contains("sealed spool file"))
            .filter_map(|l| {
                let tail = l.rsplit(", ").next()?;
                tail.strip_suffix(" bytes)")?.parse().ok()
            })
            .collect();
        (v.len(), v.iter().sum())
    }
}

/// Where the bytes of spool files go.
#[derive(Default, Debug, Clone)]
struct Breakdown {
    files: u64,
    entries: u64,
    total: u64,
    config: u64,
    names: u64,
    aux: u64,
    data: u64,
    commands: BTreeMap<String, u64>,
    sample: String,
}

impl Breakdown {
    fn fixed(&self) -> u64 {
        self.files * (spool::HEADER_LEN + spool::TRAILER_LEN) as u64
    }
    fn control(&self) -> u64 {
        self.entries * spool::CONTROL_LEN as u64
    }
}

/// Decodes the kept spool files named in `names` (and removes the links).
fn analyse(keep: &Path, names: &[String]) -> Breakdown {
    let key = mirror_tests::test_key();
    let mut b = Breakdown::default();
    for n in names {
        let p = keep.join(n);
        let bytes = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        let f = spool::open(&bytes, &key).unwrap_or_else(|e| panic!("open {n}: {e}"));
        b.files += 1;
        b.total += bytes.len() as u64;
        let mut body = 0;
        let mut prev: &[u8] = &[];
        for e in &f.entries {
            // A name is stored as the part it does not share with the name before.
            let shared = prev.iter().zip(&e.name).take_while(|(x, y)| x == y).count();
            prev = &e.name;
            let stored = e.name.len() - shared.min(u16::MAX as usize);
            b.entries += 1;
            b.names += stored as u64;
            b.aux += e.aux.len() as u64;
            b.data += e.data.len() as u64;
            body += stored + e.aux.len() + e.data.len();
            *b.commands.entry(format!("{:?}", e.command)).or_default() += 1;
            if b.sample.is_empty() && e.command == mirrorfs::entry::Command::Write {
                b.sample = String::from_utf8_lossy(&e.name).into_owned();
            }
        }
        b.config += (bytes.len()
            - spool::HEADER_LEN
            - spool::TRAILER_LEN
            - f.entries.len() * spool::CONTROL_LEN
            - body) as u64;
        let _ = fs::remove_file(&p);
    }
    b
}

/// What one run measured.
struct Run {
    written: f64,
    done: f64,
    payload: u64,
    spool: Option<SpoolBytes>,
}

struct SpoolBytes {
    files: usize,
    bytes: u64,
    logged: u64,
    breakdown: Breakdown,
}

fn content(d: usize, f: usize) -> Vec<u8> {
    let line = format!("file {d}/{f}\n");
    line.bytes().cycle().take(FILE_SIZE).collect()
}

/// 20,000 files (`n`) in 200 directories: (written, done, payload).
fn many_files(s: &Setup, n: usize) -> (f64, f64, u64) {
    let dirs = 200;
    let per = n.div_ceil(dirs);
    let root = s.source.join("many");
    let mut payload = "many".len() as u64;
    let t = Instant::now();
    fs::create_dir(&root).unwrap();
    let mut made = 0;
    let mut last = (0, 0);
    for d in 0..dirs {
        if made == n {
            break;
        }
        let dir = root.join(format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        payload += format!("many/d{d}").len() as u64;
        for f in 0..per.min(n - made) {
            let data = content(d, f);
            fs::write(dir.join(format!("f{f}")), &data).unwrap();
            payload += (format!("many/d{d}/f{f}").len() + data.len()) as u64;
            made += 1;
            last = (d, f);
        }
    }
    let written = t.elapsed().as_secs_f64();
    let b = s.backup.join("many");
    let last_path = b.join(format!("d{}/f{}", last.0, last.1));
    let last_data = content(last.0, last.1);
    wait(Duration::from_millis(20), "all files on the backup", || {
        fs::read(&last_path).is_ok_and(|d| d == last_data)
            && mirror_tests::bench::count_files(&b) == n
    });
    let mut done = t.elapsed().as_secs_f64();
    // Every file's size and content: compared once (and waited for, should one lag).
    if !tree_diff(&tree(&root), &tree(&b)).is_empty() {
        wait_converged(&root, &b, LIMIT);
        done = t.elapsed().as_secs_f64();
    }
    (written, done, payload)
}

/// 1 GiB (`size`) written sequentially, then fsync: (written, done, payload).
fn big_file(s: &Setup, size: u64) -> (f64, f64, u64) {
    let f = s.source.join("big.bin");
    let chunk = mirror_tests::bench::sequential_chunk();
    let t = Instant::now();
    let written = mirror_tests::bench::write_sequential(&f, size);
    let b = s.backup.join("big.bin");
    wait(
        Duration::from_millis(20),
        "the whole file on the backup",
        || fs::metadata(&b).is_ok_and(|m| m.len() == size),
    );
    wait(Duration::from_millis(20), "the backup's content", || {
        let Ok(bf) = fs::File::open(&b) else {
            return false;
        };
        let mut buf = vec![0u8; 1 << 20];
        (0..(size >> 20)).all(|i| bf.read_exact_at(&mut buf, i << 20).is_ok() && buf == chunk)
    });
    (
        written,
        t.elapsed().as_secs_f64(),
        size + "big.bin".len() as u64,
    )
}

fn run(mode: Mode, work: &str, files: usize, size: u64) -> Run {
    let s = Setup::new(mode);
    let before: Vec<String> = s
        .carrier
        .as_ref()
        .map(|c| c.seen.lock().unwrap().keys().cloned().collect())
        .unwrap_or_default();
    let (b0, l0) = (s.spooled(), s.logged());
    let (written, done, payload) = match work {
        "many" => many_files(&s, files),
        _ => big_file(&s, size),
    };
    let spool = s.keep.as_ref().map(|keep| {
        // The backup is complete: every file that carried it has been carried, and is
        // recorded once the carrier's round that carried it is through.
        wait(Duration::from_millis(5), "the spool files recorded", || {
            s.spooled().0 >= s.logged().0
        });
        let (b1, l1) = (s.spooled(), s.logged());
        let names: Vec<String> = s
            .carrier
            .as_ref()
            .unwrap()
            .seen
            .lock()
            .unwrap()
            .keys()
            .filter(|k| !before.contains(k))
            .cloned()
            .collect();
        SpoolBytes {
            files: b1.0 - b0.0,
            bytes: b1.1 - b0.1,
            logged: l1.1 - l0.1,
            breakdown: analyse(keep, &names),
        }
    });
    let log = s.sender.log_text();
    if log.contains("waiting for transport") {
        eprintln!("note: the sender waited for transport (queue limit) in this run");
    }
    s.local.assert_no_errors();
    drop(s);
    Run {
        written,
        done,
        payload,
        spool,
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = env_num("MIRROR_BENCH_RUNS", 3).max(1) as usize;
    let files = env_num("MIRROR_BENCH_FILES", 20_000) as usize;
    let size = env_num("MIRROR_BENCH_MIB", 1024) << 20;
    let only = std::env::var("MIRROR_BENCH_ONLY").unwrap_or_default();
    let works: Vec<&str> = ["many", "big"]
        .into_iter()
        .filter(|w| only.is_empty() || only.split(',').any(|x| w.starts_with(x)))
        .collect();
    let mut all: BTreeMap<(&str, &str), Vec<Run>> = BTreeMap::new();
    for i in 0..runs {
        for &work in &works {
            for mode in [Mode::Live, Mode::Spool] {
                let r = run(mode, work, files, size);
                let m = if mode == Mode::Live { "live" } else { "spool" };
                let mut line = format!(
                    "run {i}: {work} {m}: written in {:.2} s, backup complete after {:.2} s",
                    r.written, r.done
                );
                if let Some(sp) = &r.spool {
                    let b = &sp.breakdown;
                    line += &format!(
                        "; {} spool files, {} bytes (sender's log: {}), payload {} bytes, overhead {:.2} %",
                        sp.files,
                        sp.bytes,
                        sp.logged,
                        r.payload,
                        (sp.bytes as f64 / r.payload as f64 - 1.0) * 100.0
                    );
                    line += &format!(
                        "\n  decoded: {} files, {} entries {:?}; header+trailer {}, config {}, control {}, names {}, aux {}, data {} (sum {}); a name: {}",
                        b.files,
                        b.entries,
                        b.commands,
                        b.fixed(),
                        b.config,
                        b.control(),
                        b.names,
                        b.aux,
                        b.data,
                        b.fixed() + b.config + b.control() + b.names + b.aux + b.data,
                        b.sample
                    );
                }
                eprintln!("{line}");
                all.entry((work, m)).or_default().push(r);
            }
        }
    }
    println!(
        "\n| workload | live: write / backup complete | spool + rsync: write / backup complete | spool / live (complete) | payload | spool files (bytes) | spool overhead |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut details = Vec::new();
    for &work in &works {
        let live = &all[&(work, "live")];
        let sp = &all[&(work, "spool")];
        let t = |v: &[Run]| median(&v.iter().map(|r| r.done).collect::<Vec<_>>());
        let w = |v: &[Run]| median(&v.iter().map(|r| r.written).collect::<Vec<_>>());
        let (tl, ts) = (t(live), t(sp));
        let (wl, ws) = (w(live), w(sp));
        let over: Vec<f64> = sp
            .iter()
            .map(|r| {
                let b = r.spool.as_ref().unwrap().bytes;
                (b as f64 / r.payload as f64 - 1.0) * 100.0
            })
            .collect();
        let nspool = median(
            &sp.iter()
                .map(|r| r.spool.as_ref().unwrap().files as f64)
                .collect::<Vec<_>>(),
        );
        let bytes = median(
            &sp.iter()
                .map(|r| r.spool.as_ref().unwrap().bytes as f64)
                .collect::<Vec<_>>(),
        );
        let name = match work {
            "many" => format!("{files} files of 4 KiB"),
            _ => format!("{} MiB file", size >> 20),
        };
        println!(
            "| {name} | {wl:.2} s / {tl:.2} s | {ws:.2} s / {ts:.2} s | {:.2}× | {:.2} MiB | {nspool:.0} ({:.2} MiB) | {:.2} % |",
            ts / tl,
            mib(sp[0].payload),
            mib(bytes as u64),
            median(&over)
        );
        let fmt = |v: &[Run]| {
            v.iter()
                .map(|r| format!("{:.2}/{:.2}", r.written, r.done))
                .collect::<Vec<_>>()
                .join(", ")
        };
        details.push(format!(
            "{name}: write/complete (s) live: {}; spool: {}; overheads: {}",
            fmt(live),
            fmt(sp),
            over.iter()
                .map(|o| format!("{o:.2} %"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    println!();
    for d in details {
        println!("{d}");
    }
}
