//! Helpers of the file-system benchmarks (`tests/benches/fs_workloads.rs`,
//! `tests/benches/perf_compare.rs`): fresh ext4 file systems on loop devices, other FUSE file
//! systems to compare with (bindfs, libfuse's passthrough_hp) run in the foreground, cache
//! control, environment knobs and medians. Whatever these mount is unmounted when dropped, also
//! when a benchmark panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Writes `size` bytes (a repeating pattern, in 1 MiB writes) to a new file at `path`, then
/// fsyncs it: the seconds that took (the replication benchmarks' large file).
pub fn write_sequential(path: &Path, size: u64) -> f64 {
    use std::io::Write;
    let chunk = sequential_chunk();
    let t = Instant::now();
    let mut h = std::fs::File::create(path).expect("create the large file");
    for _ in 0..(size >> 20) {
        h.write_all(&chunk).expect("write the large file");
    }
    h.sync_all().expect("fsync the large file");
    t.elapsed().as_secs_f64()
}

/// Each MiB [`write_sequential`] writes (to check a copy against).
pub fn sequential_chunk() -> Vec<u8> {
    (0..1 << 20).map(|i| (i % 251) as u8).collect()
}

/// The files under `dir` (everything but directories), however deep.
pub fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

/// Runs `cmd` (stderr shown), panics unless it succeeds; returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.stderr(Stdio::inherit()).output().expect("run command");
    assert!(out.status.success(), "{cmd:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes back everything (a fresh file system's image included) and empties the page cache,
/// dentries and inodes, so that a measurement starts with an idle disk and cold caches.
pub fn drop_caches() {
    run(&mut Command::new("sync"));
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Environment variable `name` as a number, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The benchmarks' working directory: `MIRROR_BENCH_DIR`, or `default`.
pub fn base_dir(default: &str) -> PathBuf {
    std::env::var_os("MIRROR_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// The median of `v` (the mean of the two middle values for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Whether something is mounted on `path` now, and its file-system type.
pub fn mounted_type(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    mirrorfs::mountopts::mounts()
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == path.as_os_str().as_bytes())
        .map(|m| m.fstype)
}

/// A freshly made ext4 file system on a loop device (direct I/O, so its pages are cached once),
/// mounted; unmounted, detached and its image removed when dropped. A fresh file system per
/// measurement means no run inherits another's allocator state (ext4 searches longer for free
/// inodes right after many deletions, which would penalise whichever target runs later).
pub struct Ext4 {
    /// Where it is mounted.
    pub root: PathBuf,
    img: PathBuf,
    loopdev: String,
}

impl Ext4 {
    /// Makes image `img` (sparse, `size` as truncate takes it, e.g. "16G"), formats it and
    /// mounts it on `at`.
    pub fn fresh(img: &Path, at: &Path, size: &str) -> Ext4 {
        let _ = std::fs::remove_file(img);
        run(Command::new("truncate").arg("-s").arg(size).arg(img));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(img));
        let loopdev = run(Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(img))
        .trim()
        .to_string();
        let fs = Ext4 {
            root: at.to_path_buf(),
            img: img.to_path_buf(),
            loopdev,
        };
        std::fs::create_dir_all(at).expect("mkdir mount point");
        run(Command::new("mount").arg(&fs.loopdev).arg(at));
        fs
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        if mounted_type(&self.root).is_some() {
            let ok = Command::new("umount")
                .arg(&self.root)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.root).status();
            }
        }
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&self.loopdev)
            .status();
        let _ = std::fs::remove_file(&self.img);
    }
}

/// A FUSE file system run in the foreground by a child process (bindfs -f, passthrough_hp
/// --foreground): started by [`FuseDaemon::start`], which waits until it is mounted; unmounted
/// and stopped when dropped.
pub struct FuseDaemon {
    child: Option<Child>,
    /// The mount point.
    pub mountpoint: PathBuf,
    name: String,
}

impl FuseDaemon {
    /// Spawns `cmd` (which mounts a FUSE file system on `mountpoint` and stays in the
    /// foreground; its output goes to `log`) and polls the mount table until the mount is there,
    /// for at most 20 s.
    pub fn start(name: &str, mut cmd: Command, mountpoint: &Path, log: &Path) -> FuseDaemon {
        let name = name.to_string();
        let logf = std::fs::File::create(log).expect("create daemon log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let mut d = FuseDaemon {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
            name,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut pause = Duration::from_millis(1);
        while !mounted_type(mountpoint).is_some_and(|t| t.starts_with("fuse")) {
            if let Some(Ok(Some(status))) = d.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "{} exited with {status} before mounting:\n{}",
                    d.name,
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not mount {} within 20 s",
                d.name,
                mountpoint.display()
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        d
    }
}

impl Drop for FuseDaemon {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mountpoint)
            .stderr(Stdio::null())
            .status();
        if let Some(mut c) = self.child.take() {
            if !crate::reap(&mut c, Duration::from_secs(10)) {
                eprintln!("{} did not exit after unmounting: killed", self.name);
            }
        }
        if mounted_type(&self.mountpoint).is_some_and(|t| t.starts_with("fuse")) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

/// Mounts `bindfs --multithreaded SRC MNT` (the usual FUSE passthrough), in the foreground.
pub fn bindfs(src: &Path, mnt: &Path, log: &Path) -> FuseDaemon {
    std::fs::create_dir_all(mnt).expect("mkdir bindfs mount point");
    let mut cmd = Command::new("bindfs");
    cmd.args(["-f", "--multithreaded"]).arg(src).arg(mnt);
    FuseDaemon::start("bindfs", cmd, mnt, log)
}

/// Mounts libfuse's `passthrough_hp` (binary `exe`) from `src` on `mnt`, in the foreground,
/// with its defaults (kernel passthrough, writeback cache, 1-day caches) and the high fd
/// limit it needs (it keeps one fd per inode): 1,048,576, or the hard limit where the process
/// may not raise it (a container without CAP_SYS_RESOURCE).
pub fn passthrough_hp(exe: &Path, src: &Path, mnt: &Path, log: &Path) -> FuseDaemon {
    std::fs::create_dir_all(mnt).expect("mkdir passthrough_hp mount point");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(concat!(
            r#"ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"; "#,
            r#"exec "$0" --foreground "$1" "$2""#
        ))
        .arg(exe)
        .arg(src)
        .arg(mnt);
    FuseDaemon::start("passthrough_hp", cmd, mnt, log)
}

/// Mounts mirrorfs over `data` with one subtree rule selecting everything in it (so every
/// change is journaled; no mirror-sendd runs, and the rule's site is never dialled), its state
/// in `state`. The binaries (`mirrorfs`, `mirror-ctl`) are those in `bin_dir`, or the
/// workspace's own when it is `None`.
pub fn mirrorfs_everything(bin_dir: Option<&Path>, data: &Path, state: &Path) -> crate::Mount {
    let exe = |name: &str| match bin_dir {
        Some(d) => d.join(name),
        None => crate::bin(name),
    };
    std::fs::create_dir_all(state).expect("mkdir state");
    let pattern = format!("{}/", data.display());
    run(Command::new(exe("mirror-ctl"))
        .arg("--state")
        .arg(state)
        .args([
            "rule",
            "add",
            &pattern,
            "--site",
            "127.0.0.1:9",
            "--dest",
            "bench",
            "--no-validate",
        ]));
    crate::Mount::start_exe(&exe("mirrorfs"), data, None, state, state, &[], &[])
}

/// The IOPS of the reads or writes (as `rw` says) in fio's JSON output `out`.
pub fn fio_iops(out: &str, rw: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(out).expect("fio json");
    let side = if rw.contains("write") {
        "write"
    } else {
        "read"
    };
    v["jobs"][0][side]["iops"].as_f64().expect("iops")
}
