//! `mirrorfs DIR`: mounts the mirroring filesystem over DIR itself (or `SOURCE MOUNTPOINT`),
//! in the foreground. The mount-helper form (`mirrorfs TAG MOUNTPOINT -o source=DIR,…`, as
//! `mount -t fuse.mirrorfs` runs it through mount.fuse3) returns once mounted and serves in
//! the background; `-o remount,…` changes the flags of a mount and exits.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mirrorfs::fs::FsConfig;
use mirrorfs::journal::JournalConfig;
use mirrorfs::mount::{self, MountOptions, OnMounted};
use mirrorfs::mountopts::HelperOptions;
use mirrorfs::state::StateDir;

/// Mount mirrorfs over DIR, so that every change to files selected by the rules is journaled
/// before the application sees success. Runs in the foreground; stop with Ctrl-C,
/// `kill PID` or `fusermount3 -u DIR`.
///
/// Mount-helper form (mount.fuse3, fstab, xfstests): `mirrorfs TAG MOUNTPOINT -o
/// source=DIR[,state=DIR][,ro,noatime,…]`; TAG is what the mount table shows as the source.
/// It returns once the mount is up and serves in the background (unless -f). With
/// `-o remount,OPTS` it changes the flags of the mount at MOUNTPOINT and exits.
#[derive(Debug, Parser)]
#[command(name = "mirrorfs", version)]
struct Cli {
    /// The directory to mount over (you keep working in the same path). With two arguments:
    /// the directory whose files are served; with `-o source=DIR` and two arguments: a device
    /// tag, shown as the mount's source.
    dir: PathBuf,
    /// Mount somewhere else than over DIR.
    mountpoint: Option<PathBuf>,
    /// Mount options, comma-separated: source=DIR, state=DIR, fsname=NAME, remount, the VFS
    /// flags (ro, rw, [no]suid, [no]dev, [no]exec, noatime, relatime, strictatime,
    /// nodiratime, lazytime, sync, dirsync…), allow_other, allow_root, default_permissions.
    /// Unknown ones are refused.
    #[arg(
        short = 'o',
        value_name = "OPT[,OPT...]",
        help_heading = "Mount-helper form"
    )]
    options: Vec<String>,
    /// With -o: stay in the foreground.
    #[arg(short = 'f', long, help_heading = "Mount-helper form")]
    foreground: bool,
    /// State directory of the local system [default: $MIRROR_STATE, else
    /// $XDG_STATE_HOME/mirror, else ~/.local/state/mirror]
    #[arg(long, value_name = "DIR", help_heading = "State options")]
    state: Option<PathBuf>,
    /// Threads serving requests.
    #[arg(long, default_value_t = 4, value_name = "N", help_heading = "Tuning")]
    threads: usize,
    /// Seconds the kernel may cache names and attributes.
    #[arg(
        long,
        default_value_t = 3600,
        value_name = "SECS",
        help_heading = "Tuning"
    )]
    ttl: u64,
    /// Never use kernel passthrough (serve all file I/O through mirrorfs).
    #[arg(long, help_heading = "Tuning")]
    no_passthrough: bool,
    /// Never let the kernel buffer writes (its writeback cache): every write of a selected
    /// file then reaches mirrorfs, and its journal, before it returns. Slower for small and
    /// buffered writes; fsync, close and the one-second flush still bound what a crash of
    /// mirrorfs can take with the default.
    #[arg(long, help_heading = "Tuning")]
    no_writeback_cache: bool,
    /// Journal segment size in bytes.
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES", help_heading = "Tuning")]
    segment_size: u64,
}

/// Where and how to mount, from the two forms of the command line.
struct Target {
    source: PathBuf,
    mountpoint: PathBuf,
    state: Option<PathBuf>,
    fsname: Option<String>,
}

fn target(cli: &Cli, helper: &HelperOptions) -> std::io::Result<Target> {
    let (source, mountpoint, tag) = match (&helper.source, &cli.mountpoint) {
        (Some(src), Some(mp)) => (src.clone(), mp.clone(), Some(cli.dir.clone())),
        (Some(src), None) => (src.clone(), cli.dir.clone(), None),
        (None, Some(mp)) => (cli.dir.clone(), mp.clone(), None),
        (None, None) => (cli.dir.clone(), cli.dir.clone(), None),
    };
    let state = cli.state.clone().or_else(|| helper.state.clone());
    Ok(Target {
        // Absolute: the background form changes directory to /.
        source: std::path::absolute(source)?,
        mountpoint: std::path::absolute(mountpoint)?,
        state: state.map(std::path::absolute).transpose()?,
        fsname: helper
            .fsname
            .clone()
            .or_else(|| tag.map(|t| t.to_string_lossy().into_owned())),
    })
}

fn run(
    cli: &Cli,
    helper: &HelperOptions,
    t: &Target,
    state: StateDir,
    on_mounted: Option<OnMounted>,
) -> anyhow::Result<()> {
    mount::run(MountOptions {
        source: t.source.clone(),
        mountpoint: t.mountpoint.clone(),
        state,
        threads: cli.threads,
        fs: FsConfig {
            ttl: Duration::from_secs(cli.ttl),
            passthrough: !cli.no_passthrough,
            writeback_cache: !cli.no_writeback_cache,
        },
        journal: JournalConfig {
            segment_size: cli.segment_size,
        },
        fsname: t.fsname.clone(),
        flags: helper.flags,
        allow_other: helper.allow_other,
        allow_root: helper.allow_root,
        on_mounted,
    })
    .with_context(|| format!("mirrorfs on {}", t.mountpoint.display()))
}

/// The background form: the parent waits until the child has mounted (or failed) and exits
/// with its outcome; the child goes on, detached, with the pipe to report through.
enum Forked {
    Parent(ExitCode),
    Child(OwnedFd),
}

fn daemonize() -> std::io::Result<Forked> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors we own.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no thread has been started yet, so the child is a full copy.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(rd);
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?;
            // SAFETY: plain calls on descriptors we own; "/" is NUL-terminated.
            unsafe {
                libc::setsid();
                for fd in 0..3 {
                    libc::dup2(null.as_raw_fd(), fd);
                }
                libc::chdir(c"/".as_ptr());
            }
            Ok(Forked::Child(wr))
        }
        _ => {
            drop(wr);
            let mut buf = Vec::new();
            let _ = std::fs::File::from(rd).read_to_end(&mut buf);
            if buf == [0] {
                return Ok(Forked::Parent(ExitCode::SUCCESS));
            }
            let text = String::from_utf8_lossy(&buf);
            let text = if text.trim().is_empty() {
                "mirrorfs ended before the mount was up"
            } else {
                text.trim()
            };
            eprintln!("mirrorfs: error: {text}");
            Ok(Forked::Parent(ExitCode::FAILURE))
        }
    }
}

fn main() -> ExitCode {
    // State files are private; mount::run sets the umask to 0 for the files it makes for
    // applications, and makes its own later state files with explicit modes.
    mirrorfs::state::private_umask();
    let cli = Cli::parse();
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("mirrorfs: error: {e}");
        ExitCode::FAILURE
    };
    let helper = match HelperOptions::parse(&cli.options) {
        Ok(h) => h,
        Err(e) => return fail(&e),
    };
    if helper.remount {
        let at = cli.mountpoint.as_ref().unwrap_or(&cli.dir);
        return match mount::remount(at, &helper) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    let t = match target(&cli, &helper) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let report = if !cli.options.is_empty() && !cli.foreground {
        match daemonize() {
            Ok(Forked::Parent(code)) => return code,
            Ok(Forked::Child(fd)) => Some(Arc::new(Mutex::new(Some(fd)))),
            Err(e) => return fail(&format!("cannot start in the background: {e}")),
        }
    } else {
        None
    };
    // Tells the parent of the background form how it went (once).
    let tell = |what: &[u8]| {
        if let Some(r) = &report {
            if let Some(fd) = r.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = std::fs::File::from(fd).write_all(what);
            }
        }
    };
    let state = match mirrorfs::state::resolve(t.state.as_deref()) {
        Ok(p) => StateDir::at(p),
        Err(e) => {
            tell(e.to_string().as_bytes());
            return fail(&e);
        }
    };
    // A state directory that does not exist yet is made once the mount's checks passed
    // (mount::run), so that a mount that fails leaves no new local system behind.
    let log = state.root().is_dir().then(|| state.error_log());
    mirrorfs::logging::init("mirrorfs", "info", log.as_deref());
    let on_mounted = report.clone().map(|r| {
        OnMounted(Arc::new(move || {
            if let Some(fd) = r.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = std::fs::File::from(fd).write_all(&[0]);
            }
        }))
    });
    match run(&cli, &helper, &t, state, on_mounted) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            tell(format!("{e:#}").as_bytes());
            ExitCode::FAILURE
        }
    }
}
