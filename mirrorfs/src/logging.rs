//! Logging for every mirror binary: `env_logger` on stderr (filter from `RUST_LOG`), and for
//! daemons a copy of every warning and error appended to the error log in the state directory
//! (seeds/002 \[0071\]), one timestamped line each. The same line again within a minute is
//! counted, not written: a fault a loop meets over and over cannot fill the disk with it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Whether [`init`] opened an error log (daemons) or not (`mirror-ctl`).
static HAS_ERROR_LOG: AtomicBool = AtomicBool::new(false);

/// The error log of a daemon that started without one because its state directory did not
/// exist yet ([`attach_error_log`]).
static LATE_ERROR_LOG: std::sync::OnceLock<Mutex<File>> = std::sync::OnceLock::new();

struct Tee {
    inner: env_logger::Logger,
    program: &'static str,
    error_log: Option<Mutex<File>>,
    repeats: Mutex<Repeats>,
}

/// How long the error log keeps quiet about a line it just wrote: a fault that a loop meets
/// again and again (a full disk, a stopped peer) fills it with one line a minute, plus a
/// count of those held back.
const REPEAT_QUIET: std::time::Duration = std::time::Duration::from_secs(60);

/// Lines at most remembered for [`REPEAT_QUIET`].
const REPEATS_KEPT: usize = 1024;

/// The lines written lately: when, and how many of each were held back since.
#[derive(Default)]
struct Repeats(std::collections::HashMap<String, (std::time::Instant, u64)>);

impl Repeats {
    /// Whether `line` goes to the error log now, and how many were held back before it.
    fn admit(&mut self, line: &str) -> Option<u64> {
        let now = std::time::Instant::now();
        if let Some((at, held)) = self.0.get_mut(line) {
            if now.duration_since(*at) < REPEAT_QUIET {
                *held += 1;
                return None;
            }
            let before = *held;
            *at = now;
            *held = 0;
            return Some(before);
        }
        if self.0.len() >= REPEATS_KEPT {
            self.0
                .retain(|_, (at, _)| now.duration_since(*at) < REPEAT_QUIET);
            if self.0.len() >= REPEATS_KEPT {
                self.0.clear();
            }
        }
        self.0.insert(line.to_string(), (now, 0));
        Some(0)
    }
}

impl log::Log for Tee {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata) || metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if is_known_noise(record) {
            return;
        }
        if self.inner.matches(record) {
            self.inner.log(record);
        }
        if record.level() <= log::Level::Warn {
            if let Some(f) = self.error_log.as_ref().or_else(|| LATE_ERROR_LOG.get()) {
                let what = format!("{} {}: {}", record.level(), record.target(), record.args());
                let held = match self.repeats.lock() {
                    Ok(mut r) => r.admit(&what),
                    Err(_) => Some(0),
                };
                let Some(held) = held else {
                    return;
                };
                let again = if held > 0 {
                    format!(" (and {held} times more since it was last written)")
                } else {
                    String::new()
                };
                let line = format!(
                    "{} {} {what}{again}\n",
                    format_utc(crate::now_ns()),
                    self.program,
                );
                if let Ok(mut f) = f.lock() {
                    // The error log is best effort: a full disk must not stop the daemon.
                    let _ = f.write_all(line.as_bytes());
                }
            }
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Records from fuser that report no fault (see each case below); they stay out of the error
/// log so that it lists only real problems.
fn is_known_noise(record: &log::Record<'_>) -> bool {
    let text = || record.args().to_string();
    // fuser's own unmount after an external `fusermount3 -u`: the mount is already gone.
    (record.target() == "fuser::session"
        && record.level() == log::Level::Warn
        && text().starts_with("Failed to umount filesystem: Invalid argument"))
        // A reply (e.g. to an asynchronous RELEASE) racing with the unmount: the kernel no
        // longer knows the request (ENOENT); nothing is lost, the operation itself was done.
        || (record.target() == "fuser::reply"
            && text().starts_with("Failed to send FUSE reply: No such file or directory"))
}

/// Installs the logger for `program`, with `default_filter` when `RUST_LOG` is unset, and a
/// copy of warnings and errors appended to `error_log` if given. Call once, early in `main`.
pub fn init(program: &'static str, default_filter: &str, error_log: Option<&Path>) {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter))
            .format_timestamp_millis()
            .build();
    let error_log = error_log.and_then(|p| match open_error_log(p) {
        Ok(f) => Some(Mutex::new(f)),
        Err(e) => {
            eprintln!("{program}: cannot open error log {}: {e}", p.display());
            None
        }
    });
    HAS_ERROR_LOG.store(error_log.is_some(), Ordering::Relaxed);
    let max = inner.filter().max(log::LevelFilter::Warn);
    let tee = Tee {
        inner,
        program,
        error_log,
        repeats: Mutex::default(),
    };
    if log::set_boxed_logger(Box::new(tee)).is_ok() {
        log::set_max_level(max);
    }
}

/// Starts copying warnings and errors to `path` when [`init`] was given no error log (the
/// state directory it lives in was made after logging started); does nothing otherwise.
pub fn attach_error_log(path: &Path) {
    if HAS_ERROR_LOG.load(Ordering::Relaxed) {
        return;
    }
    match open_error_log(path) {
        Ok(f) => {
            if LATE_ERROR_LOG.set(Mutex::new(f)).is_ok() {
                HAS_ERROR_LOG.store(true, Ordering::Relaxed);
            }
        }
        Err(e) => log::warn!("cannot open error log {}: {e}", path.display()),
    }
}

fn open_error_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The end of a binary's `main`: on error, logs it (for a daemon with an error log) and
/// prints `PROGRAM: error: …` with its causes on stderr; the exit code.
pub fn exit_code(program: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if HAS_ERROR_LOG.load(Ordering::Relaxed) {
                log::error!("{e:#}");
            }
            eprintln!("{program}: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for `ns` nanoseconds since the Unix epoch (UTC).
pub fn format_utc(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let millis = (ns / 1_000_000) % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian), after H. Hinnant's public-domain algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// `secs` since the epoch as a readable UTC time, `2026-11-21 22:26:40 UTC` (for times that
/// people read in logs and status).
pub fn utc_secs(secs: u64) -> String {
    let t = format_utc(secs.saturating_mul(1_000_000_000));
    // `YYYY-MM-DDTHH:MM:SS.mmmZ` → `YYYY-MM-DD HH:MM:SS UTC`.
    match (t.get(..10), t.get(11..19)) {
        (Some(day), Some(time)) => format!("{day} {time} UTC"),
        _ => t,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_line_repeated_within_a_minute_is_counted_not_written() {
        let mut r = super::Repeats::default();
        assert_eq!(r.admit("ERROR x: disk full"), Some(0));
        assert_eq!(r.admit("ERROR x: disk full"), None);
        assert_eq!(r.admit("ERROR x: disk full"), None);
        assert_eq!(r.admit("ERROR x: other"), Some(0));
        // A minute later it is written again, with the count held back.
        let at = &mut r.0.get_mut("ERROR x: disk full").unwrap().0;
        *at -= super::REPEAT_QUIET;
        assert_eq!(r.admit("ERROR x: disk full"), Some(2));
        assert_eq!(r.admit("ERROR x: disk full"), None);
    }

    use super::*;

    #[test]
    fn utc_seconds_for_people() {
        assert_eq!(utc_secs(1_796_109_003), "2026-12-01 07:10:03 UTC");
        assert_eq!(utc_secs(0), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_utc(1_795_300_000_123_000_000),
            "2026-11-21T22:26:40.123Z"
        );
        assert_eq!(
            format_utc(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
