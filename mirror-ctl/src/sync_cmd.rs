//! `mirror-ctl sync [PATH…] [--wait]` (seeds/002 [0066]): queues a copy entry for every
//! file the rules select (under PATH…), through the running mirrorfs (its control socket) so
//! the copies are ordered with the changes being made, or straight into the journal when no
//! mirrorfs runs. With `--wait`, waits until every site involved acknowledged them.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mirrorfs::control::{self, Request, Response};
use mirrorfs::journal::{Journal, JournalConfig, JournalError, Position};
use mirrorfs::rule::Rule;
use mirrorfs::rulesdb::RulesDb;
use mirrorfs::sfa::Sfa;
use mirrorfs::state::StateDir;

use crate::cli::SyncArgs;

/// Copies queued per request to mirrorfs.
const CHUNK: usize = 1000;

#[derive(Default)]
struct Found {
    copies: Vec<(u32, Vec<u8>)>,
    files: u64,
    bytes: u64,
    sites: BTreeSet<String>,
}

impl Found {
    fn progress(&self, done: bool) {
        eprint!(
            "\rsync: {} files, {} selected{}",
            self.files,
            human(self.bytes),
            if done { "\n" } else { "" }
        );
        let _ = io::stderr().flush();
    }
}

/// `b` bytes for people.
pub fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("current directory")?
        .join(p))
}

/// Whether `name` is `under` or below it.
fn is_under(name: &[u8], under: &[u8]) -> bool {
    let under = under.strip_suffix(b"/").unwrap_or(under);
    name == under || (name.starts_with(under) && name.get(under.len()) == Some(&b'/'))
}

/// Walks what `rule` selects, adding copies of files (and of empty selected directories).
fn walk(rule: &Rule, dir: &Path, filter: &[Vec<u8>], found: &mut Found) {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            eprintln!("\nsync: cannot list {}: {e}", dir.display());
            return;
        }
    };
    let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    names.sort();
    let pattern = &rule.spec.pattern;
    for p in names {
        let name = p.as_os_str().as_bytes();
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            let on_the_way = filter.is_empty()
                || filter
                    .iter()
                    .any(|f| is_under(name, f) || is_under(f, name));
            if pattern.kind().is_subtree() && on_the_way {
                let before = found.copies.len();
                walk(rule, &p, filter, found);
                let selected_dir = pattern.match_dir(name).is_some();
                let in_filter = filter.is_empty() || filter.iter().any(|f| is_under(name, f));
                if found.copies.len() == before && selected_dir && in_filter {
                    found.copies.push((rule.crc, name.to_vec()));
                }
            }
            continue;
        }
        if pattern.match_file(name).is_none() {
            continue;
        }
        if !(filter.is_empty() || filter.iter().any(|f| is_under(name, f))) {
            continue;
        }
        found.copies.push((rule.crc, name.to_vec()));
        found.files += 1;
        found.bytes += meta.len();
        if found.files % 1000 == 0 {
            found.progress(false);
        }
    }
}

/// `sync`.
pub fn sync(state: &StateDir, args: SyncArgs) -> Result<()> {
    let db = RulesDb::open(&state.rules_db())?;
    let (_, rules) = db.snapshot()?;
    if rules.is_empty() {
        bail!("there are no rules; add one with `mirror-ctl rule add`");
    }
    let filter: Vec<Vec<u8>> = args
        .paths
        .iter()
        .map(|p| absolute(p).map(|a| a.as_os_str().as_bytes().to_vec()))
        .collect::<Result<_>>()?;
    let mut found = Found::default();
    for rule in &rules {
        let before = found.copies.len();
        let pattern = &rule.spec.pattern;
        if pattern.kind() == mirrorfs::rule::PatternKind::File {
            let name = pattern.prefix();
            let path = Path::new(std::ffi::OsStr::from_bytes(name));
            let in_filter = filter.is_empty() || filter.iter().any(|f| is_under(name, f));
            if in_filter {
                if let Ok(m) = fs::symlink_metadata(path) {
                    found.copies.push((rule.crc, name.to_vec()));
                    found.files += 1;
                    found.bytes += m.len();
                }
            }
        } else {
            walk(rule, pattern.source_dir(), &filter, &mut found);
        }
        if found.copies.len() > before {
            found
                .sites
                .extend(rule.spec.sites.iter().map(|s| s.to_string()));
        }
    }
    found.progress(true);
    if found.copies.is_empty() {
        println!("nothing to copy");
        return Ok(());
    }
    let last = queue(state, &found.copies)?;
    println!(
        "queued copies of {} files ({}) for {}",
        found.files,
        human(found.bytes),
        found.sites.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    if args.wait {
        if let Some(last) = last {
            wait_acked(state, &found.sites, last, Duration::from_secs(args.timeout))?;
        }
    }
    Ok(())
}

/// Appends the copies through mirrorfs, or directly when no mirrorfs runs.
fn queue(state: &StateDir, copies: &[(u32, Vec<u8>)]) -> Result<Option<Position>> {
    let sock = state.socket_path("mirrorfs");
    let mut last = None;
    if sock.exists() {
        for chunk in copies.chunks(CHUNK) {
            let req = Request::Copy {
                copies: chunk.to_vec(),
            };
            match control::request(&sock, &req) {
                Ok(Response::Queued { last: l }) => last = l.or(last),
                Ok(Response::Error { reason }) => {
                    bail!("mirrorfs refused the copies: {reason}")
                }
                Ok(other) => bail!("mirrorfs answered {other:?} to a copy request"),
                Err(e) if last.is_none() && e.kind() == io::ErrorKind::ConnectionRefused => {
                    // A socket left by a mirrorfs that is gone: write the journal ourselves.
                    return queue_direct(state, copies);
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot reach mirrorfs through {}", sock.display())
                    })
                }
            }
        }
        return Ok(last);
    }
    queue_direct(state, copies)
}

fn queue_direct(state: &StateDir, copies: &[(u32, Vec<u8>)]) -> Result<Option<Position>> {
    let journal = match Journal::open(&state.journal_dir(), JournalConfig::default()) {
        Ok(j) => j,
        Err(JournalError::Locked(e)) => bail!(
            "the journal is held by a running mirrorfs ({e}) whose control socket {} does not answer",
            state.socket_path("mirrorfs").display()
        ),
        Err(e) => return Err(e.into()),
    };
    Ok(control::append_copies(&journal, copies)?)
}

/// Waits until every site in `sites` acknowledged past `last`.
fn wait_acked(
    state: &StateDir,
    sites: &BTreeSet<String>,
    last: Position,
    limit: Duration,
) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let sfa = Sfa::load(&state.sfa_path())?;
        let pending: Vec<&String> = sites.iter().filter(|s| sfa.get(s) <= last).collect();
        if pending.is_empty() {
            eprintln!("\rsync: every site acknowledged the copies          ");
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!(
                "timed out after {limit:?} waiting for {} to acknowledge the copies (is mirror-sendd running?)",
                pending
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        eprint!(
            "\rsync: waiting for {}/{} sites to acknowledge",
            pending.len(),
            sites.len()
        );
        let _ = io::stderr().flush();
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
