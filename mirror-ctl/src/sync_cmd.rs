//! `mirror-ctl sync [PATH…] [--wait] [--dry-run]` (seeds/002 [0066]): queues a copy entry for
//! every file the rules select (under PATH…), through the running mirrorfs (its control
//! socket) so the copies are ordered with the changes being made, or straight into the journal
//! when no mirrorfs runs. With `--wait`, waits until every site involved acknowledged them.
//!
//! Nothing here grows with the number of files: the rules' trees are walked twice, once to
//! count (and check every PATH), once to queue the copies in chunks of [`CHUNK`] names as they
//! are found; what `--wait` remembers is one position per chunk. Progress (files and bytes done
//! out of the total, rate, time left) is a bar on a terminal and plain lines otherwise; done
//! means queued, or with `--wait` acknowledged by every site.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, IsTerminal};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mirrorfs::beneath::Reach;
use mirrorfs::control::{self, Request, Response, SenderRequest, SenderResponse};
use mirrorfs::journal::{Journal, JournalConfig, JournalError, Position};
use mirrorfs::rule::{PatternKind, Rule};
use mirrorfs::rulesdb::RulesDb;
use mirrorfs::sfa::Sfa;
use mirrorfs::state::StateDir;

use crate::cli::SyncArgs;

/// Copies queued per request to mirrorfs, at most.
const CHUNK: usize = 1000;
/// File bytes per request, at most (so that `--wait` sees progress within a large tree).
const CHUNK_BYTES: u64 = 256 << 20;
/// Bytes of names per request, at most (well within the control socket's request limit,
/// [`control::MAX_REQUEST_BYTES`], as JSON spells a byte in up to 4).
const CHUNK_NAME_BYTES: usize = 1 << 20;
/// How long a plain progress line waits for the next.
const PLAIN_EVERY: Duration = Duration::from_secs(2);
/// How long mirror-sendd may take to answer whether it runs.
const SENDER_ANSWER: Duration = Duration::from_secs(5);
/// How often the wait asks mirror-sendd how its sites are.
const SENDER_EVERY: Duration = Duration::from_secs(1);

/// `b` bytes for people.
pub fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

/// `p` absolute (against the current directory) and without `.`, `..` or a trailing slash,
/// as the rules name files.
pub(crate) fn absolute(p: &Path) -> Result<PathBuf> {
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("current directory")?
            .join(p)
    };
    let mut out = PathBuf::from("/");
    for c in full.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// Whether `name` is `under` or below it.
fn is_under(name: &[u8], under: &[u8]) -> bool {
    let under = under.strip_suffix(b"/").unwrap_or(under);
    under.is_empty()
        || name == under
        || (name.starts_with(under) && name.get(under.len()) == Some(&b'/'))
}

/// One name a rule selects, as the walk finds it.
struct Selected<'a> {
    rule: &'a Rule,
    name: &'a [u8],
    /// Its size (a file; 0 for anything else).
    bytes: u64,
    /// A file (or symlink, fifo), not an empty directory.
    file: bool,
}

/// Walks what `rule` selects under `filter` (everything when empty), calling `found` for each
/// file and each selected directory with nothing in it to copy (so that it exists on the
/// backup). The names of one directory at a time are held, never the tree's.
fn walk_rule(
    rule: &Rule,
    filter: &[Vec<u8>],
    found: &mut dyn FnMut(Selected<'_>) -> Result<()>,
) -> Result<()> {
    let pattern = &rule.spec.pattern;
    if pattern.kind() == PatternKind::File {
        let name = pattern.prefix();
        let in_filter = filter.is_empty() || filter.iter().any(|f| is_under(name, f));
        if in_filter {
            if let Ok(m) = lstat(Path::new(std::ffi::OsStr::from_bytes(name))) {
                if !m.is_dir() {
                    found(Selected {
                        rule,
                        name,
                        bytes: m.len(),
                        file: true,
                    })?;
                }
            }
        }
        return Ok(());
    }
    walk(rule, pattern.source_dir(), filter, found).map(|_| ())
}

/// [`walk_rule`] in directory `dir`; how many names it found there.
fn walk(
    rule: &Rule,
    dir: &Path,
    filter: &[Vec<u8>],
    found: &mut dyn FnMut(Selected<'_>) -> Result<()>,
) -> Result<u64> {
    let rd = match Reach::new(dir).and_then(|r| fs::read_dir(r.path())) {
        Ok(rd) => rd,
        Err(e) => {
            eprintln!("sync: cannot list {}: {e}", dir.display());
            return Ok(0);
        }
    };
    let mut names: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| dir.join(e.file_name()))
        .collect();
    names.sort();
    let pattern = &rule.spec.pattern;
    let mut count = 0;
    for p in names {
        let name = p.as_os_str().as_bytes();
        let Ok(meta) = lstat(&p) else {
            continue;
        };
        if meta.is_dir() {
            let on_the_way = filter.is_empty()
                || filter
                    .iter()
                    .any(|f| is_under(name, f) || is_under(f, name));
            if pattern.kind().is_subtree() && on_the_way {
                let inside = walk(rule, &p, filter, found)?;
                count += inside;
                let selected_dir = pattern.match_dir(name).is_some();
                let in_filter = filter.is_empty() || filter.iter().any(|f| is_under(name, f));
                if inside == 0 && selected_dir && in_filter {
                    found(Selected {
                        rule,
                        name,
                        bytes: 0,
                        file: false,
                    })?;
                    count += 1;
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
        found(Selected {
            rule,
            name,
            bytes: meta.len(),
            file: true,
        })?;
        count += 1;
    }
    Ok(count)
}

/// `lstat` of `p`, reached in steps when it is longer than one call takes.
fn lstat(p: &Path) -> io::Result<fs::Metadata> {
    fs::symlink_metadata(Reach::new(p)?.path())
}

/// What the first walk counted.
#[derive(Default)]
struct Totals {
    files: u64,
    bytes: u64,
    /// Names selected (files, and directories with nothing in them to copy).
    names: u64,
    /// Names selected under each PATH.
    per_path: Vec<u64>,
    sites: BTreeSet<String>,
}

/// `sync`.
pub fn sync(state: &StateDir, args: SyncArgs) -> Result<()> {
    let db = RulesDb::open(&state.rules_db())?;
    let (_, rules) = db.snapshot()?;
    if rules.is_empty() {
        bail!("there are no rules; add one with `mirror-ctl rule add`");
    }
    let mut filter = Vec::new();
    let mut missing = Vec::new();
    for p in &args.paths {
        let a = absolute(p)?;
        // Bounded: a file system that does not answer must not hold `sync` for good (a
        // directory is opened too: its attributes may come from the kernel's cache, an open
        // always asks the file system).
        let probe = |a: &Path| -> io::Result<()> {
            if lstat(a)?.is_dir() {
                fs::read_dir(Reach::new(a)?.path())?;
            }
            Ok(())
        };
        if let Err(e) = crate::bounded::look("PATH", &a, probe)? {
            missing.push(format!("{}: {e}", p.display()));
        }
        filter.push(a.as_os_str().as_bytes().to_vec());
    }
    if !missing.is_empty() {
        bail!("nothing queued: {}", missing.join("; "));
    }
    if args.wait && !args.dry_run {
        sender_running(state)?;
    }
    let totals = count(&rules, &filter, &args)?;
    let unselected: Vec<String> = args
        .paths
        .iter()
        .zip(&totals.per_path)
        .filter(|(_, n)| **n == 0)
        .map(|(p, _)| p.display().to_string())
        .collect();
    if !unselected.is_empty() {
        bail!(
            "no rule selects {} (nor anything beneath); nothing queued (`mirror-ctl rule list` shows the rules)",
            unselected.join(", ")
        );
    }
    let sites = totals.sites.iter().cloned().collect::<Vec<_>>().join(", ");
    if args.dry_run {
        // Listed once every PATH is known to be selected: a list followed by an error would
        // mislead.
        for rule in &rules {
            walk_rule(rule, &filter, &mut |s: Selected<'_>| {
                let name = String::from_utf8_lossy(s.name);
                if s.file {
                    println!("{name} ({})", human(s.bytes));
                } else {
                    println!("{name}/");
                }
                Ok(())
            })?;
        }
        println!(
            "would queue copies of {} files ({}) for {}",
            totals.files,
            human(totals.bytes),
            if sites.is_empty() { "no site" } else { &sites }
        );
        return Ok(());
    }
    if totals.names == 0 {
        println!("nothing to copy");
        return Ok(());
    }
    let mut queue = Queue::open(state)?.quick(!args.checksum);
    let mut progress = Progress::new(&totals, if args.wait { "acknowledged" } else { "queued" });
    let mut chunks: Vec<(Position, u64, u64)> = Vec::new();
    let mut pending: Vec<(u32, Vec<u8>)> = Vec::new();
    let (mut files, mut bytes, mut pending_bytes) = (0u64, 0u64, 0u64);
    let mut pending_names = 0usize;
    let mut last: Option<Position> = None;
    let mut flush = |pending: &mut Vec<(u32, Vec<u8>)>,
                     files: u64,
                     bytes: u64,
                     progress: &mut Progress|
     -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        if let Some(l) = queue.push(pending)? {
            last = Some(l);
            chunks.push((l, files, bytes));
        }
        pending.clear();
        if !args.wait {
            progress.show(files, bytes, None);
        }
        Ok(())
    };
    for rule in &rules {
        walk_rule(rule, &filter, &mut |s: Selected<'_>| {
            pending.push((s.rule.crc, s.name.to_vec()));
            pending_names += s.name.len();
            if s.file {
                files += 1;
                bytes += s.bytes;
                pending_bytes += s.bytes;
            }
            if pending.len() >= CHUNK
                || pending_bytes >= CHUNK_BYTES
                || pending_names >= CHUNK_NAME_BYTES
            {
                pending_bytes = 0;
                pending_names = 0;
                flush(&mut pending, files, bytes, &mut progress)?;
            }
            Ok(())
        })?;
    }
    flush(&mut pending, files, bytes, &mut progress)?;
    drop(queue);
    if !args.wait {
        progress.done(files, bytes);
        println!(
            "queued copies of {files} files ({}) for {sites}",
            human(bytes)
        );
        return Ok(());
    }
    println!(
        "queued copies of {files} files ({}) for {sites}; waiting for every site to acknowledge them",
        human(bytes)
    );
    if let Some(last) = last {
        seal_spools(state, &totals.sites, last);
        wait_acked(
            state,
            &totals.sites,
            last,
            &chunks,
            &mut progress,
            Duration::from_secs(args.timeout),
        )?;
    }
    progress.done(files, bytes);
    eprintln!("sync: every site acknowledged the copies");
    Ok(())
}

/// The first walk: what would be queued, per PATH too.
fn count(rules: &[Rule], filter: &[Vec<u8>], args: &SyncArgs) -> Result<Totals> {
    let mut totals = Totals {
        per_path: vec![0; filter.len()],
        ..Totals::default()
    };
    let terminal = io::stderr().is_terminal() && !args.dry_run;
    let spinner = terminal.then(indicatif::ProgressBar::new_spinner);
    for rule in rules {
        let mut any = false;
        walk_rule(rule, filter, &mut |s: Selected<'_>| {
            any = true;
            totals.names += 1;
            if s.file {
                totals.files += 1;
                totals.bytes += s.bytes;
            }
            for (i, f) in filter.iter().enumerate() {
                if is_under(s.name, f) {
                    totals.per_path[i] += 1;
                }
            }
            if let Some(sp) = &spinner {
                if totals.files % 256 == 0 {
                    sp.set_message(format!(
                        "sync: counting what the rules select: {} files, {}",
                        totals.files,
                        human(totals.bytes)
                    ));
                }
            }
            Ok(())
        })?;
        if any {
            totals
                .sites
                .extend(rule.spec.sites.iter().map(|s| s.to_string()));
        }
    }
    if let Some(sp) = spinner {
        sp.finish_and_clear();
    }
    Ok(totals)
}

/// Where the copies go: the running mirrorfs, or the journal itself when none runs
/// ([`Queue::open`], then [`Queue::push`] a chunk at a time).
pub(crate) struct Queue {
    to: QueueTo,
    /// Copies skip files unchanged since their last acknowledged copy
    /// ([`mirrorfs::entry::COPY_QUICK`]).
    quick: bool,
}

enum QueueTo {
    Mount(PathBuf),
    Direct(Box<Journal>),
}

impl Queue {
    pub(crate) fn open(state: &StateDir) -> Result<Queue> {
        let sock = state.socket_path("mirrorfs");
        if sock.exists() {
            match control::request::<_, Response>(&sock, &Request::Status) {
                Ok(_) => {
                    return Ok(Queue {
                        to: QueueTo::Mount(sock),
                        quick: false,
                    })
                }
                // A socket left by a mirrorfs that is gone: write the journal ourselves.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot reach mirrorfs through {}", sock.display())
                    })
                }
            }
        }
        let journal = match Journal::open(&state.journal_dir(), JournalConfig::default()) {
            Ok(j) => j,
            Err(JournalError::Locked(e)) => bail!(
                "the journal is held by a running mirrorfs ({e}) whose control socket {} does not answer",
                sock.display()
            ),
            Err(e) => return Err(e.into()),
        };
        Ok(Queue {
            to: QueueTo::Direct(Box::new(journal)),
            quick: false,
        })
    }

    /// The copies queued from now on skip files unchanged since their last acknowledged
    /// copy (the quick check of `sync`; by default every file's content is compared).
    pub(crate) fn quick(mut self, on: bool) -> Queue {
        self.quick = on;
        self
    }

    /// Appends `copies` (durably); the position of the last.
    pub(crate) fn push(&mut self, copies: &[(u32, Vec<u8>)]) -> Result<Option<Position>> {
        match &self.to {
            QueueTo::Direct(j) => Ok(control::append_copies(j, copies, self.quick)?),
            QueueTo::Mount(sock) => {
                let req = Request::Copy {
                    copies: copies.to_vec(),
                    quick: self.quick,
                };
                match control::request(sock, &req)
                    .with_context(|| format!("cannot reach mirrorfs through {}", sock.display()))?
                {
                    Response::Queued { last } => Ok(last),
                    Response::Error { reason } => bail!("mirrorfs refused the copies: {reason}"),
                    other => bail!("mirrorfs answered {other:?} to a copy request"),
                }
            }
        }
    }
}

/// Fails at once, saying so, when mirror-sendd does not answer on its control socket; its
/// sites otherwise.
fn sender_running(state: &StateDir) -> Result<Vec<control::SiteState>> {
    let sock = state.socket_path("mirror-sendd");
    match control::request_within::<_, SenderResponse>(&sock, &SenderRequest::Status, SENDER_ANSWER)
    {
        Ok(SenderResponse::Status { sites }) => Ok(sites),
        Ok(other) => bail!("mirror-sendd answered {other:?} to a status request"),
        Err(e) => bail!(
            "mirror-sendd is not running ({}: {e}), so nothing would be acknowledged; start it (`mirror-sendd --state {}`), or run `sync` without --wait to queue the copies for when it runs",
            sock.display(),
            state.root().display()
        ),
    }
}

/// Waits until every site in `sites` acknowledged past `last`, showing how much of `chunks`
/// (the last position of each chunk queued, with the files and bytes queued up to it) is
/// acknowledged.
/// A sync barrier: the spool sites among `sites` seal their files once they hold `last`,
/// rather than after `--spool-age` (their acknowledgement still comes when the transfer tool
/// brings it).
fn seal_spools(state: &StateDir, sites: &BTreeSet<String>, last: Position) {
    for site in sites.iter().filter(|s| mirrorfs::rule::is_spool_site(s)) {
        let req = mirrorfs::control::SenderRequest::Seal {
            site: Some(site.clone()),
            upto: last,
        };
        if let Err(e) = mirrorfs::control::request_within::<_, mirrorfs::control::SenderResponse>(
            &state.socket_path("mirror-sendd"),
            &req,
            Duration::from_secs(5),
        ) {
            eprintln!("cannot ask mirror-sendd to seal the spool file of {site} now: {e}; it is sealed after --spool-age");
        } else {
            eprintln!(
                "{site} is a spool site: its acknowledgement comes once the transfer tool carried the spool file and brought the answer back"
            );
        }
    }
}

fn wait_acked(
    state: &StateDir,
    sites: &BTreeSet<String>,
    last: Position,
    chunks: &[(Position, u64, u64)],
    progress: &mut Progress,
    limit: Duration,
) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    let mut asked = Instant::now();
    let mut note: Option<String> = None;
    loop {
        let sfa = Sfa::load(&state.sfa_path())?;
        let acked = sites.iter().map(|s| sfa.get(s)).min().unwrap_or(last);
        if acked > last {
            return Ok(());
        }
        let (files, bytes) = chunks
            .iter()
            .take_while(|(p, _, _)| *p < acked)
            .last()
            .map_or((0, 0), |(_, f, b)| (*f, *b));
        if asked.elapsed() >= SENDER_EVERY {
            asked = Instant::now();
            let states = sender_running(state).context("while waiting for the copies")?;
            let blocked: Vec<String> = states
                .iter()
                .filter(|s| sites.contains(&s.site))
                .filter_map(|s| {
                    s.blocked
                        .as_ref()
                        .map(|b| format!("{} is blocked: {}", s.site, b.reason))
                })
                .collect();
            note = (!blocked.is_empty()).then(|| blocked.join("; "));
        }
        progress.show(files, bytes, note.as_deref());
        if start.elapsed() > limit {
            let pending: Vec<&str> = sites
                .iter()
                .filter(|s| sfa.get(s) <= last)
                .map(|s| s.as_str())
                .collect();
            bail!(
                "timed out after {limit:?} waiting for {} to acknowledge the copies ({files} of {} files acknowledged)",
                pending.join(", "),
                progress.files,
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Progress of the copies: a bar on a terminal, a plain line every [`PLAIN_EVERY`] otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    files: u64,
    bytes: u64,
    what: &'static str,
    start: Instant,
    last_line: Option<Instant>,
}

impl Progress {
    fn new(totals: &Totals, what: &'static str) -> Progress {
        let bar = io::stderr().is_terminal().then(|| {
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}, {eta} left",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            indicatif::ProgressBar::new(totals.bytes).with_style(style)
        });
        Progress {
            bar,
            files: totals.files,
            bytes: totals.bytes,
            what,
            start: Instant::now(),
            last_line: None,
        }
    }

    /// `files` and `bytes` done (of the totals), with what else to say.
    fn show(&mut self, files: u64, bytes: u64, note: Option<&str>) {
        let (files, bytes) = (files.min(self.files), bytes.min(self.bytes));
        let note = note.map(|n| format!(" ({n})")).unwrap_or_default();
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "sync: {files}/{} files {}{note}",
                self.files, self.what
            ));
            bar.set_position(bytes);
            return;
        }
        if self.last_line.is_some_and(|t| t.elapsed() < PLAIN_EVERY) {
            return;
        }
        self.last_line = Some(Instant::now());
        let secs = self.start.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { bytes as f64 / secs } else { 0.0 };
        let left = if rate > 0.0 && bytes > 0 {
            let s = (self.bytes - bytes) as f64 / rate;
            format!(", about {}s left", s.ceil() as u64)
        } else {
            String::new()
        };
        eprintln!(
            "sync: {files}/{} files, {}/{} {}, {}/s{left}{note}",
            self.files,
            human(bytes),
            human(self.bytes),
            self.what,
            human(rate as u64),
        );
    }

    /// Everything done.
    fn done(&mut self, files: u64, bytes: u64) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let secs = self.start.elapsed().as_secs_f64();
        eprintln!(
            "sync: {files} files, {} {} in {secs:.1}s",
            human(bytes),
            self.what
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_made_absolute_and_plain() {
        assert_eq!(
            absolute(Path::new("/a/./b/../c/")).unwrap(),
            PathBuf::from("/a/c")
        );
        assert!(is_under(b"/a/c/d", b"/a/c"));
        assert!(is_under(b"/a/c", b"/a/c/"));
        assert!(!is_under(b"/a/cd", b"/a/c"));
        assert!(is_under(b"/a", b"/"));
    }
}
