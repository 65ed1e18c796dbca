//! `mirror-ctl verify [PATH…] [--json] [--repair] [--checksum] [--attrs] [--timeout D]
//! [--orphans delete|move DIR]`: compares what the rules select with its backup on every site,
//! as of a journal position, over an authenticated session of role `Verify`
//! ([`mirrorfs::wire::verify`]).
//!
//! *As of a journal position*: the verify writes back what the kernel holds of the mounted
//! files (`syncfs`: their buffered pages, and the times the kernel kept for them, which
//! mirrorfs sets underneath and so moves their change times), lets the clock move on
//! ([`SETTLE`]), notes its start (less [`CTIME_SLACK`], the granularity of the kernel's change
//! times), writes back again what came meanwhile, takes the journal's end P, then waits (at
//! most `--timeout`) until mirror-sendd says every site applied everything before P. A name
//! whose source changed at or after the start is *in flight* (`~`), never a difference: the
//! verify compares against a backup that has every change before P, and whatever came later
//! is on its way.
//!
//! Per site, per rule, per PATH, the router's listing ([`Msg::Verify`], pulled a batch at a
//! time) and a walk of the source in the same order ([`walk_order`]) are merged: one
//! directory's names of the source and one batch of the backup's in memory, and one file's
//! checksums at a time. Regular files are compared by size, permission bits and block
//! checksums ([`blocksums`]: the top levels first, then only the children of what differs,
//! which also names the blocks that differ; without `--checksum`, not for a file whose state
//! is what its last acknowledged copy read, [`mirrorfs::shipped`]), symlinks by target, hard links as links to the
//! same first name, fifos and directories by kind (directories are listed only when they
//! differ); `--attrs` adds owners, modification times (files) and xattrs (files) for rules
//! that mirror attributes.
//!
//! `--repair` queues a copy of each differing or missing name the way `sync` does
//! ([`crate::sync_cmd::Queue`]: through the running mirrorfs, or into the journal), and with
//! `--orphans delete` a copy of each orphan's name too, which mirror-sendd, finding the name
//! gone at the source, sends as its deletion (kept as a version under a delete suffix). It
//! returns once every site applied the copies. Exit status: 0 when every name is `=` or `~`
//! (with `--repair`: when every difference was repaired and applied), 1 when something
//! differs, 2 when the verify could not run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use mirrorfs::beneath::Reach;
use mirrorfs::blocksums::{self, Tree};
use mirrorfs::control::{self, SenderRequest, SenderResponse, SiteAck};
use mirrorfs::journal::{format::SEGMENT_HEADER_LEN, JournalError, JournalReader, Position};
use mirrorfs::rule::{PatternKind, Rule};
use mirrorfs::rulesdb::RulesDb;
use mirrorfs::sfa::Sfa;
use mirrorfs::state::StateDir;
use mirrorfs::wire::auth::KeyRing;
use mirrorfs::wire::restore::is_under;
use mirrorfs::wire::verify::{walk_order, RestoreKind, VerifyItem};
use mirrorfs::wire::{Msg, Role};
use serde::Serialize;

use crate::cli::{Orphans, VerifyArgs};
use crate::dial::Session;
use crate::sync_cmd::{human, Queue};

/// Change times are the kernel's coarse clock (one tick, at most 10 ms, behind the real
/// time): a change made just after the start may carry a time just before it. Names changed
/// this long before the start count as in flight too.
const CTIME_SLACK: Duration = Duration::from_millis(15);
/// How long after the first write-back the start is noted: longer than [`CTIME_SLACK`], so
/// that the change times the write-back itself gave (mirrorfs setting the kernel's times of
/// files written earlier) fall before the start.
const SETTLE: Duration = Duration::from_millis(40);
/// Nodes of the level a comparison of checksums starts at, at most.
const START_NODES: u64 = 64;
/// How long mirror-sendd may take to answer.
const SENDER_ANSWER: Duration = Duration::from_secs(5);
/// Copies queued per request, at most (as `sync`).
const CHUNK: usize = 1000;

/// How a verify ended (when it could run): the exit status it gives.
pub enum Outcome {
    /// Every name is the same, or in flight (0).
    Same,
    /// Something differs, is missing, is an orphan or is an error (1).
    Differs,
}

/// A mark of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
enum Mark {
    #[serde(rename = "=")]
    Same,
    #[serde(rename = "*")]
    Differs,
    #[serde(rename = "+")]
    Missing,
    #[serde(rename = "-")]
    Orphan,
    #[serde(rename = "~")]
    InFlight,
    #[serde(rename = "!")]
    Error,
}

impl Mark {
    fn sign(self) -> char {
        match self {
            Mark::Same => '=',
            Mark::Differs => '*',
            Mark::Missing => '+',
            Mark::Orphan => '-',
            Mark::InFlight => '~',
            Mark::Error => '!',
        }
    }
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Line {
    mark: Mark,
    /// The path as the user sees it (directories end with `/`).
    path: String,
    /// `HOST:PORT`.
    site: String,
    /// The local rule's id.
    rule: i64,
    /// `file`, `dir`, `symlink`, `fifo`, `link` (what the source has; the backup's for
    /// orphans).
    kind: &'static str,
    /// What differs, or why it is an error or in flight.
    what: Vec<String>,
    /// Ranges of 4 KiB blocks that differ (first, last), inclusive.
    blocks: Vec<(u64, u64)>,
    /// The file's size at the source (the backup's for orphans).
    bytes: u64,
}

/// Counts of the summary.
#[derive(Debug, Default, Serialize)]
struct Summary {
    same: u64,
    differ: u64,
    missing: u64,
    orphans: u64,
    in_flight: u64,
    errors: u64,
    /// Bytes of source files compared.
    bytes_compared: u64,
    /// Bytes of the blocks that differ (and of missing files).
    bytes_differing: u64,
    /// Copies queued by `--repair` (orphans' deletions included).
    repairs_queued: u64,
    /// Orphans moved by `--orphans move`.
    orphans_moved: u64,
    /// Orphans `--orphans move` could not move.
    orphans_unmoved: u64,
}

impl Summary {
    fn count(&mut self, l: &Line) {
        match l.mark {
            Mark::Same => self.same += 1,
            Mark::Differs => self.differ += 1,
            Mark::Missing => self.missing += 1,
            Mark::Orphan => self.orphans += 1,
            Mark::InFlight => self.in_flight += 1,
            Mark::Error => self.errors += 1,
        }
    }
    fn names(&self) -> u64 {
        self.same + self.differ + self.missing + self.orphans + self.in_flight + self.errors
    }
}

/// What a name of the source is, as the verify compares it.
struct Source {
    name: Vec<u8>,
    meta: Metadata,
    kind: RestoreKind,
    /// A file's other name seen first in this walk (a hard link).
    first: Option<Vec<u8>>,
}

/// `verify`: the outcome when it could run.
pub fn verify(state: &StateDir, keys: &KeyRing, mut args: VerifyArgs) -> Result<Outcome> {
    // `--orphans delete PATH` parses as two values of --orphans (`move` takes its DIR).
    let orphans = if args.orphans.len() == 2 && args.orphans[0] == "delete" {
        args.paths.push(PathBuf::from(&args.orphans[1]));
        Some(Orphans::Delete)
    } else {
        args.orphans().map_err(|e| anyhow!(e))?
    };
    if orphans.is_some() && !args.repair {
        bail!("--orphans acts only with --repair (orphans are never removed by a plain verify)");
    }
    if let Some(Orphans::Move(dir)) = &orphans {
        if !mirrorfs::wire::verify::valid_move_dir(
            dir.as_os_str().as_bytes(),
            mirrorfs::wire::msg::MAX_NAME_LEN,
        ) {
            bail!(
                "--orphans move {}: DIR must be a plain relative path (no '.', '..' or empty components): it is taken within this site's namespace on the router",
                dir.display()
            );
        }
    }
    let db = RulesDb::open(&state.rules_db())?;
    let (_, mut rules) = db.snapshot()?;
    if rules.is_empty() {
        bail!("there are no rules; add one with `mirror-ctl rule add`");
    }
    rules.sort_by(|a, b| a.spec.pattern.as_str().cmp(b.spec.pattern.as_str()));
    let mut paths: Vec<Vec<u8>> = Vec::new();
    for p in &args.paths {
        paths.push(crate::sync_cmd::absolute(p)?.into_os_string().into_vec());
    }
    // A PATH beneath another is verified with it.
    paths.sort();
    paths.dedup();
    let all = paths.clone();
    paths.retain(|p| !all.iter().any(|q| q != p && is_under(p, q)));
    if paths.is_empty() {
        paths.push(b"/".to_vec());
    }
    // What to verify: per site, the rules (and the paths of each) that select something.
    let mut plan: BTreeMap<String, Vec<(&Rule, Vec<u8>)>> = BTreeMap::new();
    let mut selected = vec![false; paths.len()];
    // A verify asks the router as it goes; a spool site has no session to ask.
    let mut spools: BTreeSet<String> = BTreeSet::new();
    for rule in &rules {
        let base = base(rule);
        for (i, p) in paths.iter().enumerate() {
            let start = if is_under(p, &base) {
                p.clone()
            } else if is_under(&base, p) {
                base.clone()
            } else {
                continue;
            };
            selected[i] = true;
            for site in &rule.spec.sites {
                if site.spool_dir().is_some() {
                    spools.insert(site.to_string());
                    continue;
                }
                plan.entry(site.to_string())
                    .or_default()
                    .push((rule, start.clone()));
            }
        }
    }
    let unselected: Vec<String> = paths
        .iter()
        .zip(&selected)
        .filter(|(_, s)| !**s)
        .map(|(p, _)| shown(p))
        .collect();
    if !unselected.is_empty() {
        bail!(
            "no rule selects {} (nor anything beneath); `mirror-ctl rule list` shows the rules",
            unselected.join(", ")
        );
    }
    if !spools.is_empty() {
        let names = spools.into_iter().collect::<Vec<_>>().join(", ");
        if plan.is_empty() {
            bail!(
                "verify compares with the router in a live session, and {names} only receives spool files; verify against a HOST:PORT site, or run `mirror-ctl sync` to send the files again"
            );
        }
        eprintln!(
            "verify: not verifying spool site {names} (it receives spool files only, no live session to compare with)"
        );
    }
    let sites: BTreeSet<String> = plan.keys().cloned().collect();

    // The verify's position: what the kernel holds written back, then the journal's end.
    for rule in &rules {
        write_back(&base_dir(rule));
    }
    std::thread::sleep(SETTLE);
    let started = now_ns().saturating_sub(CTIME_SLACK.as_nanos() as u64);
    // What was written while the first write-back ran reaches the journal before P.
    for rule in &rules {
        write_back(&base_dir(rule));
    }
    let upto = journal_end(state, &sites)?;
    wait_applied(state, &sites, upto, args.timeout, "the verify's start")?;

    let id = mirrorfs::state::site_id(state).context("this source's site id")?;
    // What was shipped: files unchanged since then are compared by size and mode only.
    let shipped = if args.checksum {
        None
    } else {
        mirrorfs::shipped::Shipped::open_existing(&state.root().join("shipped.db")).unwrap_or_else(
            |e| {
                eprintln!("mirror-ctl: {e}; every file's content is compared");
                None
            },
        )
    };
    let mount = mirrorfs::keeper::MountStatus::load(state.root())
        .filter(|m| std::path::Path::new(&format!("/proc/{}", m.pid)).exists());
    let mut out = Report::new(args.json);
    let mut repairs = Repairs {
        state,
        queue: None,
        pending: Vec::new(),
        last: None,
        queued: 0,
    };
    for (site, parts) in &plan {
        let mut session = Session::open(keys, &id, site, Role::Verify)?;
        for (rule, start) in parts {
            let mut v = Verifier {
                session: &mut session,
                rule,
                site,
                started,
                attrs: args.attrs && rule.spec.attrs,
                next_id: 1,
                report: &mut out,
                repairs: &mut repairs,
                repair: args.repair,
                orphans: orphans.clone(),
                covered: None,
                ahead: Default::default(),
                ready: HashMap::new(),
                considered: 0,
                shipped: shipped.as_ref(),
                mount: mount.as_ref(),
            };
            v.run(start)?;
        }
    }
    out.finish_progress();
    repairs.flush()?;
    // The journal is not held while the sites apply the copies.
    repairs.queue = None;
    let mut unapplied = false;
    if args.repair && repairs.queued > 0 {
        let n = repairs.queued;
        out.summary.repairs_queued = n;
        if let Some(last) = repairs.last {
            eprintln!(
                "verify: queued {n} cop{} to repair; waiting until every site applied them",
                if n == 1 { "y" } else { "ies" }
            );
            // Everything before the position after the last copy.
            let after = Position::new(last.segment, last.offset + 1);
            wait_applied(state, &sites, after, args.timeout, "the repairs")?;
            if waited_all(state, &sites, after)? {
                eprintln!("verify: every site applied the repairs");
            } else {
                // The differences stand (exit 1): the verify itself ran.
                eprintln!(
                    "verify: the repairs were queued but not applied by every site within {} (a file blocked on the router, say: `mirror-ctl router status` there); they stay queued",
                    mirrorfs::units::show_duration(args.timeout)
                );
                unapplied = true;
            }
        }
    }
    out.summary_line();
    let s = &out.summary;
    let unrepaired = u64::from(unapplied)
        + s.errors
        + if args.repair {
            if orphans.is_some() {
                s.orphans_unmoved
            } else {
                s.orphans
            }
        } else {
            s.differ + s.missing + s.orphans
        };
    Ok(if unrepaired == 0 {
        Outcome::Same
    } else {
        Outcome::Differs
    })
}

fn shown(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The name a rule starts at (a fixed file: the file).
fn base(rule: &Rule) -> Vec<u8> {
    let p = rule.spec.pattern.prefix();
    if rule.spec.pattern.kind() == PatternKind::File {
        p.to_vec()
    } else {
        p.strip_suffix(b"/").unwrap_or(p).to_vec()
    }
}

/// The directory a rule's names are in.
fn base_dir(rule: &Rule) -> PathBuf {
    rule.spec.pattern.source_dir().to_path_buf()
}

/// Writes back what the kernel holds of the files under `dir` (a mount's buffered writes
/// reach mirrorfs, and so the journal): `syncfs`, bounded.
fn write_back(dir: &Path) {
    let r = crate::bounded::look("rule directory", dir, |d| -> io::Result<()> {
        let f = File::open(Reach::new(d)?.path())?;
        // SAFETY: syncfs on an open descriptor.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    });
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("syncfs of {}: {e}", dir.display()),
        Err(e) => eprintln!("verify: {e:#}"),
    }
}

/// The journal's end: read from where the sites of the verify resume (what they have not
/// acknowledged is all that lies before it), up to where the newest segment ended when the
/// read began (so that a writer faster than the read cannot keep it going).
fn journal_end(state: &StateDir, sites: &BTreeSet<String>) -> Result<Position> {
    let dir = state.journal_dir();
    let newest = mirrorfs::journal::list_segments(&dir)
        .ok()
        .and_then(|s| s.last().copied());
    let target = newest.and_then(|n| {
        fs::metadata(mirrorfs::journal::segment_path(&dir, n))
            .ok()
            .map(|m| Position::new(n, m.len()))
    });
    let sfa = Sfa::load(&state.sfa_path())?;
    let from = sites
        .iter()
        .map(|s| sfa.get(s))
        .min()
        .unwrap_or(Position::START);
    let opened = match JournalReader::open(&dir, from) {
        Err(JournalError::Gap { oldest, .. }) => {
            JournalReader::open(&dir, Position::new(oldest, SEGMENT_HEADER_LEN))
        }
        r => r,
    };
    let mut r = match opened {
        Ok(r) => r,
        Err(_) if !dir.exists() => return Ok(Position::START),
        Err(e) => return Err(e).context("the journal's end"),
    };
    loop {
        if target.is_some_and(|t| r.position() >= t) {
            return Ok(r.position());
        }
        match r.next_entry() {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(r.position()),
            Err(JournalError::Corrupt { .. }) => {
                r.skip_damage().context("the journal's end")?;
            }
            Err(e) => return Err(e).context("the journal's end"),
        }
    }
}

/// The sites' positions from mirror-sendd (a long poll past `after`).
fn acks(state: &StateDir, after: u64, wait: Duration) -> Result<(u64, Vec<SiteAck>)> {
    let sock = state.socket_path("mirror-sendd");
    let req = SenderRequest::Acks {
        after,
        wait_ms: wait.as_millis() as u64,
    };
    match control::request_within::<_, SenderResponse>(&sock, &req, SENDER_ANSWER + wait) {
        Ok(SenderResponse::Acks { generation, sites }) => Ok((generation, sites)),
        Ok(other) => bail!("mirror-sendd answered {other:?} to a request for its sites' positions"),
        Err(e) => bail!(
            "mirror-sendd is not running ({}: {e}): the verify cannot know what reached the sites; start it (`mirror-sendd --state {}`)",
            sock.display(),
            state.root().display()
        ),
    }
}

/// Whether every site in `sites` applied everything before `upto`.
fn waited_all(state: &StateDir, sites: &BTreeSet<String>, upto: Position) -> Result<bool> {
    let (_, acks) = acks(state, 0, Duration::ZERO)?;
    Ok(sites.iter().all(|s| {
        acks.iter()
            .any(|a| &a.site == s && a.applied.is_some_and(|p| p >= upto))
    }))
}

/// Waits (at most `limit`) until every site in `sites` applied everything before `upto`. A
/// site still not connected then cannot be verified (an error: exit status 2); one connected
/// but behind is verified as it is, with a warning (what it holds back shows as `!`).
fn wait_applied(
    state: &StateDir,
    sites: &BTreeSet<String>,
    upto: Position,
    limit: Duration,
    what: &str,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut generation = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (g, acks) = acks(state, generation, left.min(Duration::from_millis(500)))?;
        generation = g;
        let of = |s: &str| acks.iter().find(|a| a.site == s);
        let behind: Vec<&String> = sites
            .iter()
            .filter(|s| of(s).is_none_or(|a| a.applied.is_none_or(|p| p < upto)))
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if left.is_zero() {
            let down: Vec<String> = behind
                .iter()
                .filter_map(|s| match of(s) {
                    None => Some(format!("{s} (not one of mirror-sendd's sites)")),
                    Some(a) if !a.connected => Some(match &a.blocked {
                        Some(why) => format!("{s} (blocked: {why})"),
                        None => format!("{s} (not connected)"),
                    }),
                    _ => None,
                })
                .collect();
            if !down.is_empty() {
                bail!(
                    "cannot verify: {} cannot be reached (waited {} for them to apply {what})",
                    down.join(", "),
                    mirrorfs::units::show_duration(limit)
                );
            }
            eprintln!(
                "verify: {} had not applied everything up to {what} within {}; comparing with what they hold (files still held there show as `!`)",
                behind.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                mirrorfs::units::show_duration(limit)
            );
            return Ok(());
        }
    }
}

/// The report: lines on stdout (text or JSON), progress on stderr when it is a terminal.
struct Report {
    json: bool,
    summary: Summary,
    bar: Option<indicatif::ProgressBar>,
}

impl Report {
    fn new(json: bool) -> Report {
        let bar = io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(100));
            b.set_message("verify: waiting for the sites to apply the journal");
            b
        });
        Report {
            json,
            summary: Summary::default(),
            bar,
        }
    }

    fn line(&mut self, l: Line) {
        self.summary.count(&l);
        let text = if self.json {
            serde_json::to_string(&l).unwrap_or_default()
        } else {
            let mut t = format!("{} {}", l.mark.sign(), l.path);
            if !l.what.is_empty() {
                t.push_str(&format!(" ({})", l.what.join("; ")));
            }
            t
        };
        let print = || {
            let mut o = io::stdout().lock();
            let _ = writeln!(o, "{text}");
        };
        match &self.bar {
            Some(b) => b.suspend(print),
            None => print(),
        }
        if let Some(b) = &self.bar {
            let n = self.summary.names();
            if n % 64 == 0 {
                b.set_message(format!(
                    "verify: {n} names, {} compared",
                    human(self.summary.bytes_compared)
                ));
            }
        }
    }

    fn finish_progress(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn summary_line(&mut self) {
        let s = &self.summary;
        if self.json {
            #[derive(Serialize)]
            struct Wrapped<'a> {
                summary: &'a Summary,
            }
            println!(
                "{}",
                serde_json::to_string(&Wrapped { summary: s }).unwrap_or_default()
            );
            return;
        }
        let mut t = format!(
            "verify: {} names: {} same, {} differ, {} missing, {} orphans, {} in flight, {} errors; {} compared, {} differ",
            s.names(),
            s.same,
            s.differ,
            s.missing,
            s.orphans,
            s.in_flight,
            s.errors,
            human(s.bytes_compared),
            human(s.bytes_differing)
        );
        if s.repairs_queued > 0 {
            t.push_str(&format!("; {} repaired", s.repairs_queued));
        }
        if s.orphans_moved + s.orphans_unmoved > 0 {
            t.push_str(&format!(
                "; {} orphans moved, {} not",
                s.orphans_moved, s.orphans_unmoved
            ));
        }
        println!("{t}");
    }
}

/// The copies `--repair` queues, a chunk at a time as the verify finds them (as `sync`
/// queues them: through the running mirrorfs, or into the journal).
struct Repairs<'a> {
    state: &'a StateDir,
    queue: Option<Queue>,
    pending: Vec<(u32, Vec<u8>)>,
    /// The journal position of the last copy queued.
    last: Option<Position>,
    queued: u64,
}

impl Repairs<'_> {
    fn push(&mut self, crc: u32, name: Vec<u8>) -> Result<()> {
        self.pending.push((crc, name));
        if self.pending.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.queue.is_none() {
            self.queue = Some(Queue::open(self.state)?);
        }
        if let Some(q) = self.queue.as_mut() {
            if let Some(l) = q.push(&self.pending)? {
                self.last = Some(l);
            }
        }
        self.queued += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }
}

/// One rule's comparison with one site.
struct Verifier<'a, 'b> {
    session: &'a mut Session,
    rule: &'a Rule,
    site: &'a str,
    /// Changes at or after it are in flight (ns since the epoch).
    started: u64,
    /// Compare owners, times and xattrs.
    attrs: bool,
    next_id: u64,
    report: &'a mut Report,
    repairs: &'a mut Repairs<'b>,
    repair: bool,
    orphans: Option<Orphans>,
    /// The last directory queued for repair whole (what lies beneath goes with it).
    covered: Option<Vec<u8>>,
    /// Questions asked ahead ([`PREFETCH`]): id, name and level, in the listing's order.
    ahead: std::collections::VecDeque<(u64, Vec<u8>, u32)>,
    /// Answers read while waiting for another (of questions asked ahead).
    ready: HashMap<u64, SumsResult>,
    /// Items at the front of the listing's batch already looked at for asking ahead.
    considered: usize,
    /// mirror-sendd's record of what was shipped ([`mirrorfs::shipped`]): files whose state is
    /// still what their last acknowledged copy read are not checksummed (none with
    /// `--checksum`).
    shipped: Option<&'a mirrorfs::shipped::Shipped>,
    /// The running mount, through which the directory it serves is reached (the state is
    /// the file's there: the mount shows the kernel's own times of files it caches).
    mount: Option<&'a mirrorfs::keeper::MountStatus>,
}

/// The backup's size and the sums asked for, or why there are none.
type SumsResult = std::result::Result<(u64, Vec<blocksums::Sum>), String>;

/// Files whose first checksums are asked for ahead of their comparison, at most: the router
/// reads and sums them while the source files before them are read here.
const PREFETCH: usize = 16;

/// The backup's listing, a batch at a time.
struct Listing {
    batch: std::collections::VecDeque<VerifyItem>,
    done: bool,
}

impl Verifier<'_, '_> {
    fn run(&mut self, start: &[u8]) -> Result<()> {
        let site = self.site.to_string();
        self.session.send(&Msg::Verify {
            rule_crc: self.rule.crc,
            path: start.to_vec(),
            attrs: self.attrs,
        })?;
        let mut listing = Listing {
            batch: Default::default(),
            done: false,
        };
        self.receive_batch(&mut listing)?;
        self.ask_ahead(&listing)?;
        let mut walk = SourceWalk::new(self.rule, start);
        let mut src = walk.next();
        let mut bak = self.next_backup(&mut listing)?;
        loop {
            let order = match (&src, &bak) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(s), Some(b)) => walk_order(&s.name, &b.item.name),
            };
            match order {
                std::cmp::Ordering::Less => {
                    if let Some(s) = src.take() {
                        self.missing(&s)?;
                    }
                    src = walk.next();
                }
                std::cmp::Ordering::Greater => {
                    if let Some(b) = bak.take() {
                        self.orphan(&b)?;
                    }
                    bak = self.next_backup(&mut listing)?;
                }
                std::cmp::Ordering::Equal => {
                    if let (Some(s), Some(b)) = (src.take(), bak.take()) {
                        self.compare(&s, &b)
                            .with_context(|| format!("site {site}: {}", shown(&s.name)))?;
                    }
                    src = walk.next();
                    bak = self.next_backup(&mut listing)?;
                }
            }
        }
        self.drain()?;
        for e in walk.errors.drain(..) {
            self.emit(Mark::Error, &e.0, "file", vec![e.1], Vec::new(), 0);
        }
        Ok(())
    }

    /// The next item of the listing (a second item of the same name, a problem found while
    /// listing it, is merged into the first).
    fn next_backup(&mut self, l: &mut Listing) -> Result<Option<VerifyItem>> {
        let Some(mut item) = self.pop(l)? else {
            return Ok(None);
        };
        while l
            .batch
            .front()
            .is_some_and(|n| n.item.name == item.item.name)
        {
            if let Some(p) = self.pop(l)?.and_then(|n| n.problem) {
                item.problem = Some(p);
            }
        }
        self.ask_ahead(l)?;
        Ok(Some(item))
    }

    fn pop(&mut self, l: &mut Listing) -> Result<Option<VerifyItem>> {
        if l.batch.is_empty() && !l.done {
            self.session.send(&Msg::VerifyMore)?;
            self.receive_batch(l)?;
        }
        self.considered = self.considered.saturating_sub(1);
        Ok(l.batch.pop_front())
    }

    /// Whether source file `name` (`meta`, as the mount shows it) is as its last acknowledged
    /// copy to this site read it: then its content is not compared (but for `--checksum`).
    fn as_shipped(&self, name: &[u8], meta: &Metadata) -> bool {
        let Some(st) = self
            .shipped
            .and_then(|s| s.file_state(self.site, self.rule.crc, name).ok().flatten())
        else {
            return false;
        };
        // The file beneath the mount (what the copies read); unmounted, the name is it.
        let under = self.mount.and_then(|m| m.beneath_path(name));
        let now = match under {
            Some(p) => match fs::symlink_metadata(p) {
                Ok(m) => m,
                Err(_) => return false,
            },
            None if self.mount.is_some() => return false,
            None => meta.clone(),
        };
        mirrorfs::shipped::FileState::of(&now) == st
    }

    /// Asks for the first checksums of the next regular files of the listing, up to
    /// [`PREFETCH`] ahead.
    fn ask_ahead(&mut self, l: &Listing) -> Result<()> {
        while self.ahead.len() < PREFETCH && self.considered < l.batch.len() {
            let it = &l.batch[self.considered];
            self.considered += 1;
            let size = it.item.size;
            if it.item.kind == RestoreKind::File
                && it.problem.is_none()
                && size > 0
                && size <= blocksums::MAX_TREE_FILE
                && !lstat(&it.item.name).is_ok_and(|m| self.as_shipped(&it.item.name, &m))
            {
                let level = blocksums::start_level(size, START_NODES);
                let name = it.item.name.clone();
                let id = self.ask_sums(&name, level, &[])?;
                self.ahead.push_back((id, name, level));
            }
        }
        Ok(())
    }

    /// Reads (and drops) the answers to every question asked ahead: the rule is done.
    fn drain(&mut self) -> Result<()> {
        while let Some((id, _, _)) = self.ahead.pop_front() {
            let _ = self.answer(id)?;
        }
        self.ready.clear();
        Ok(())
    }

    /// The router's next message that is not an answer to a question asked ahead (those are
    /// kept) nor a heartbeat.
    fn recv(&mut self) -> Result<Msg> {
        loop {
            match self.session.recv()? {
                Msg::Heartbeat => {}
                Msg::SumsAnswer {
                    id,
                    size,
                    sums,
                    why,
                } if self.ahead.iter().any(|a| a.0 == id) => {
                    self.ready.insert(id, size.map(|s| (s, sums)).ok_or(why));
                }
                m => return Ok(m),
            }
        }
    }

    fn receive_batch(&mut self, l: &mut Listing) -> Result<()> {
        match self.recv()? {
            Msg::VerifyItems { items, done } => {
                l.batch.extend(items);
                l.done = done;
                Ok(())
            }
            Msg::Error { reason } => bail!(
                "site {} refused the verify of rule {} ({}): {reason}",
                self.site,
                self.rule.id,
                self.rule.spec.pattern.as_str()
            ),
            other => bail!("site {} answered a verify with {}", self.site, other.kind()),
        }
    }

    /// Whether `name` was changed at or after the verify's start (through its own change
    /// time, or for a name gone, its nearest directory's).
    fn changed_since(&self, meta: &Metadata) -> bool {
        let ctime = (meta.ctime().max(0) as u64) * 1_000_000_000 + meta.ctime_nsec() as u64;
        ctime >= self.started
    }

    /// Whether the nearest existing directory above `name` (within the rule) changed since
    /// the verify started: a name removed after it is not an orphan yet.
    fn parent_changed(&self, name: &[u8]) -> bool {
        let mut p = name;
        while let Some(i) = p.iter().rposition(|&c| c == b'/') {
            p = &p[..i.max(1)];
            if let Ok(m) = lstat(p) {
                return self.changed_since(&m);
            }
            if p == b"/" {
                break;
            }
        }
        false
    }

    fn emit(
        &mut self,
        mark: Mark,
        name: &[u8],
        kind: &'static str,
        what: Vec<String>,
        blocks: Vec<(u64, u64)>,
        bytes: u64,
    ) {
        let mut path = shown(name);
        if kind == "dir" {
            path.push('/');
        }
        self.report.line(Line {
            mark,
            path,
            site: self.site.to_string(),
            rule: self.rule.id,
            kind,
            what,
            blocks,
            bytes,
        });
    }

    /// Queues a copy of `name` to repair it (unless a directory above is queued already).
    fn queue_repair(&mut self, name: &[u8], dir: bool) -> Result<()> {
        if !self.repair {
            return Ok(());
        }
        if self.covered.as_ref().is_some_and(|c| is_under(name, c)) {
            return Ok(());
        }
        self.repairs.push(self.rule.crc, name.to_vec())?;
        if dir {
            self.covered = Some(name.to_vec());
        }
        Ok(())
    }

    fn missing(&mut self, s: &Source) -> Result<()> {
        let kind = kind_name(s.kind, s.first.is_some());
        // A directory the rule does not mirror as one (`*.x/` rules: the backup's directories
        // are made as the files need them) is not missing: what it holds is compared name by
        // name.
        if s.kind == RestoreKind::Dir
            && self.rule.spec.pattern.match_dir(&s.name).is_none()
            && s.name.as_slice() != base(self.rule).as_slice()
        {
            return Ok(());
        }
        if self.changed_since(&s.meta) {
            self.emit(
                Mark::InFlight,
                &s.name,
                kind,
                vec!["changed since the verify started".into()],
                Vec::new(),
                s.meta.len(),
            );
            return Ok(());
        }
        let bytes = if s.kind == RestoreKind::File {
            s.meta.len()
        } else {
            0
        };
        self.report.summary.bytes_differing += bytes;
        self.emit(
            Mark::Missing,
            &s.name,
            kind,
            vec!["missing on the backup".into()],
            Vec::new(),
            bytes,
        );
        self.queue_repair(&s.name, s.kind == RestoreKind::Dir)
    }

    fn orphan(&mut self, b: &VerifyItem) -> Result<()> {
        let kind = kind_name(b.item.kind, b.item.kind == RestoreKind::Link);
        if self.parent_changed(&b.item.name) {
            self.emit(
                Mark::InFlight,
                &b.item.name,
                kind,
                vec!["its directory changed since the verify started".into()],
                Vec::new(),
                b.item.size,
            );
            return Ok(());
        }
        if let Some(p) = &b.problem {
            self.emit(
                Mark::Error,
                &b.item.name,
                kind,
                vec![p.clone()],
                Vec::new(),
                0,
            );
            return Ok(());
        }
        self.emit(
            Mark::Orphan,
            &b.item.name,
            kind,
            vec!["on the backup only".into()],
            Vec::new(),
            b.item.size,
        );
        match self.orphans.clone() {
            Some(Orphans::Delete) => {
                self.queue_repair(&b.item.name, b.item.kind == RestoreKind::Dir)?
            }
            Some(Orphans::Move(dir)) if self.repair => {
                if self
                    .covered
                    .as_ref()
                    .is_some_and(|c| is_under(&b.item.name, c))
                {
                    // Moved with the directory above.
                    return Ok(());
                }
                match self.move_orphan(&b.item.name, &dir)? {
                    Ok(to) => {
                        self.report.summary.orphans_moved += 1;
                        eprintln!(
                            "verify: {} moved to {to} on {} (within this site's namespace)",
                            shown(&b.item.name),
                            self.site
                        );
                        if b.item.kind == RestoreKind::Dir {
                            self.covered = Some(b.item.name.clone());
                        }
                    }
                    Err(why) => {
                        self.report.summary.orphans_unmoved += 1;
                        eprintln!(
                            "verify: {} could not be moved on {}: {why}",
                            shown(&b.item.name),
                            self.site
                        );
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Asks the router to move orphan `name` beneath `dir` (see [`Msg::VerifyMove`]): where
    /// it went, or why not.
    fn move_orphan(
        &mut self,
        name: &[u8],
        dir: &Path,
    ) -> Result<std::result::Result<String, String>> {
        self.session.send(&Msg::VerifyMove {
            rule_crc: self.rule.crc,
            name: name.to_vec(),
            to: dir.as_os_str().as_bytes().to_vec(),
        })?;
        match self.recv()? {
            Msg::VerifyMoved { to: Some(to), .. } => Ok(Ok(to)),
            Msg::VerifyMoved { to: None, why } => Ok(Err(why)),
            Msg::Error { reason } => bail!("site {} refused: {reason}", self.site),
            other => bail!("site {} answered a move with {}", self.site, other.kind()),
        }
    }

    fn compare(&mut self, s: &Source, b: &VerifyItem) -> Result<()> {
        let kind = kind_name(s.kind, s.first.is_some());
        let bytes = if s.kind == RestoreKind::File {
            s.meta.len()
        } else {
            0
        };
        // What the router cannot vouch for (blocked there: it holds the file's entries back)
        // is an error however recent the change.
        if let Some(p) = &b.problem {
            self.emit(
                Mark::Error,
                &s.name,
                kind,
                vec![p.clone()],
                Vec::new(),
                bytes,
            );
            return Ok(());
        }
        // A directory is compared by kind (what it holds, name by name): its own change
        // time moves with every name made or removed in it.
        if s.kind != RestoreKind::Dir && self.changed_since(&s.meta) {
            self.emit(
                Mark::InFlight,
                &s.name,
                kind,
                vec!["changed since the verify started".into()],
                Vec::new(),
                bytes,
            );
            return Ok(());
        }
        let item = &b.item;
        let mut what = Vec::new();
        let mut blocks = Vec::new();
        match (&s.first, item.kind) {
            (Some(first), RestoreKind::Link) => {
                if item.target != *first {
                    what.push(format!(
                        "a hard link of {} on the backup, of {} here",
                        shown(&item.target),
                        shown(first)
                    ));
                }
            }
            (Some(first), _) => {
                what.push(format!("not a hard link of {} on the backup", shown(first)))
            }
            (None, RestoreKind::Link) => what.push(format!(
                "a hard link of {} on the backup, not here",
                shown(&item.target)
            )),
            (None, k) if k != s.kind => {
                what.push(format!("a {} on the backup", kind_name(k, false)))
            }
            (None, _) => {
                let mask = if self.rule.spec.attrs { 0o7777 } else { 0o777 };
                if matches!(s.kind, RestoreKind::File | RestoreKind::Fifo)
                    && s.meta.mode() & mask != item.mode & mask
                {
                    what.push(format!(
                        "mode {:o} here, {:o} on the backup",
                        s.meta.mode() & mask,
                        item.mode & mask
                    ));
                }
                if s.kind == RestoreKind::Symlink {
                    match fs::read_link(
                        Reach::new(Path::new(std::ffi::OsStr::from_bytes(&s.name)))?.path(),
                    ) {
                        Ok(t) if t.as_os_str().as_bytes() == item.target.as_slice() => {}
                        Ok(t) => what.push(format!(
                            "target {} here, {} on the backup",
                            t.display(),
                            shown(&item.target)
                        )),
                        Err(e) => {
                            self.emit(
                                Mark::Error,
                                &s.name,
                                kind,
                                vec![format!("cannot be read here: {e}")],
                                Vec::new(),
                                0,
                            );
                            return Ok(());
                        }
                    }
                }
                if self.attrs {
                    if let Some(a) = &item.attrs {
                        if (s.meta.uid(), s.meta.gid()) != (a.uid, a.gid) {
                            what.push(format!(
                                "owner {}:{} here, {}:{} on the backup",
                                s.meta.uid(),
                                s.meta.gid(),
                                a.uid,
                                a.gid
                            ));
                        }
                        if s.kind == RestoreKind::File {
                            let here = (s.meta.mtime(), s.meta.mtime_nsec() as u32);
                            if here != a.mtime {
                                what.push("modification time".into());
                            }
                            let mut mine: Vec<(Vec<u8>, Vec<u8>)> = mirrorfs::xattr::of(
                                Reach::new(Path::new(std::ffi::OsStr::from_bytes(&s.name)))?.path(),
                            );
                            mine.sort();
                            let mut theirs: Vec<(Vec<u8>, Vec<u8>)> = a
                                .xattrs
                                .iter()
                                .map(|x| (x.name.clone(), x.value.clone()))
                                .collect();
                            theirs.sort();
                            if mine != theirs {
                                what.push("xattrs".into());
                            }
                        }
                    }
                }
                if s.kind == RestoreKind::File {
                    if s.meta.len() != item.size {
                        what.push(format!(
                            "size {} here, {} on the backup",
                            s.meta.len(),
                            item.size
                        ));
                    }
                    let known = self.as_shipped(&s.name, &s.meta) && s.meta.len() == item.size;
                    if !known {
                        self.report.summary.bytes_compared += s.meta.len();
                    }
                    match if known {
                        Ok(Vec::new())
                    } else {
                        self.blocks(s, item.size)?
                    } {
                        Ok(d) => {
                            if !d.is_empty() {
                                blocks = ranges(&d);
                                self.report.summary.bytes_differing +=
                                    d.len() as u64 * blocksums::BLOCK;
                                what.push(format!("blocks {}", show_ranges(&blocks)));
                            }
                        }
                        Err((mark, why)) => {
                            self.emit(mark, &s.name, kind, vec![why], Vec::new(), bytes);
                            return Ok(());
                        }
                    }
                }
            }
        }
        if s.kind == RestoreKind::Dir && what.is_empty() {
            self.report.summary.same += 1;
            return Ok(());
        }
        // Changed while it was compared: in flight, whatever the comparison said.
        let again = lstat(&s.name).ok();
        let moved = again.as_ref().is_none_or(|m| {
            self.changed_since(m)
                || (
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                ) != (
                    s.meta.len(),
                    s.meta.mtime(),
                    s.meta.mtime_nsec(),
                    s.meta.ctime(),
                    s.meta.ctime_nsec(),
                )
        });
        if moved {
            self.emit(
                Mark::InFlight,
                &s.name,
                kind,
                vec!["changed while it was compared".into()],
                Vec::new(),
                bytes,
            );
            return Ok(());
        }
        if what.is_empty() {
            self.emit(Mark::Same, &s.name, kind, Vec::new(), Vec::new(), bytes);
        } else {
            self.emit(Mark::Differs, &s.name, kind, what, blocks, bytes);
            // Names of one file go as links only within one copy: a hard link is repaired
            // by copying the directory that holds both names.
            let other = s
                .first
                .as_ref()
                .or((item.kind == RestoreKind::Link).then_some(&item.target));
            match other {
                Some(o) => {
                    let dir = common_dir(&s.name, o);
                    self.queue_repair(&dir, true)?;
                }
                None => self.queue_repair(&s.name, false)?,
            }
        }
        Ok(())
    }

    /// The blocks of source file `s` that differ from its backup (of `remote_size` bytes),
    /// or the mark and reason when they cannot be compared.
    #[allow(clippy::type_complexity)]
    fn blocks(
        &mut self,
        s: &Source,
        remote_size: u64,
    ) -> Result<std::result::Result<Vec<u64>, (Mark, String)>> {
        let size = s.meta.len();
        if size > blocksums::MAX_TREE_FILE || remote_size > blocksums::MAX_TREE_FILE {
            return Ok(Err((
                Mark::Error,
                format!(
                    "larger than {}: not checksummed",
                    human(blocksums::MAX_TREE_FILE)
                ),
            )));
        }
        if size == 0 && remote_size == 0 {
            return Ok(Ok(Vec::new()));
        }
        // The router sums its file while this one is read here.
        let level = blocksums::start_level(size.max(remote_size), START_NODES);
        // Asked ahead already (at the backup's size), or now.
        let mut asked = None;
        while let Some((id, n, l)) = self.ahead.front().cloned() {
            if walk_order(&n, &s.name) == std::cmp::Ordering::Greater {
                break;
            }
            self.ahead.pop_front();
            if n == s.name && l == level {
                asked = Some(id);
                break;
            }
            // A name compared without checksums (in flight, an orphan…): not needed.
            let _ = self.answer(id)?;
        }
        let asked = match asked {
            Some(id) => id,
            None => self.ask_sums(&s.name, level, &[])?,
        };
        let local = open_source(&s.name, &s.meta).and_then(|f| Tree::of_file(&f, size));
        let answer = self.answer(asked)?;
        let local = match local {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Err((Mark::InFlight, "gone while it was compared".into())))
            }
            Err(e) => return Ok(Err((Mark::Error, format!("cannot be read here: {e}")))),
        };
        let start = match answer {
            Ok((rsize, sums)) => {
                if rsize != remote_size {
                    return Ok(Err((
                        Mark::InFlight,
                        "the backup changed while it was compared".into(),
                    )));
                }
                sums
            }
            Err(why) => return Ok(Err((Mark::Error, why))),
        };
        let mut failed: Option<String> = None;
        let d =
            blocksums::differing_blocks(&local, remote_size, level, &start, |l, nodes| match self
                .sums(&s.name, l, nodes)
            {
                Ok(Ok((_, sums))) => Some(sums),
                Ok(Err(why)) => {
                    failed.get_or_insert(why);
                    None
                }
                Err(e) => {
                    failed.get_or_insert(format!("{e:#}"));
                    None
                }
            });
        match d {
            Some(d) => Ok(Ok(d)),
            None => match failed {
                // The comparison could not go down (the sizes differ too much for the
                // trees to line up): every block from the first that differs at the top.
                None => Ok(Ok((0..blocksums::blocks(local.size)).collect())),
                Some(why) => Ok(Err((Mark::Error, why))),
            },
        }
    }

    /// Asks the router for sums of the backup of `name` (see [`Msg::Sums`]); the backup's
    /// size and the sums, or why there are none.
    #[allow(clippy::type_complexity)]
    fn sums(
        &mut self,
        name: &[u8],
        level: u32,
        nodes: &[u64],
    ) -> Result<std::result::Result<(u64, Vec<blocksums::Sum>), String>> {
        let id = self.ask_sums(name, level, nodes)?;
        self.answer(id)
    }

    /// Sends the [`Msg::Sums`] question of [`Verifier::sums`]; its id.
    fn ask_sums(&mut self, name: &[u8], level: u32, nodes: &[u64]) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        self.session.send(&Msg::Sums {
            id,
            rule_crc: self.rule.crc,
            name: name.to_vec(),
            level,
            nodes: nodes.to_vec(),
        })?;
        Ok(id)
    }

    /// The answer to question `id` (see [`Verifier::sums`]).
    fn answer(&mut self, id: u64) -> Result<SumsResult> {
        if let Some(a) = self.ready.remove(&id) {
            return Ok(a);
        }
        match self.recv()? {
            Msg::SumsAnswer {
                id: got,
                size,
                sums,
                why,
            } if got == id => Ok(match size {
                Some(size) => Ok((size, sums)),
                None => Err(why),
            }),
            Msg::Error { reason } => bail!("site {} refused: {reason}", self.site),
            other => bail!(
                "site {} answered checksums with {}",
                self.site,
                other.kind()
            ),
        }
    }
}

/// The deepest directory that holds both `a` and `b` (absolute names).
fn common_dir(a: &[u8], b: &[u8]) -> Vec<u8> {
    let (pa, pb): (Vec<&[u8]>, Vec<&[u8]>) = (
        a.split(|&c| c == b'/').collect(),
        b.split(|&c| c == b'/').collect(),
    );
    // Not the names themselves: their directories.
    let n = pa
        .iter()
        .zip(&pb)
        .take(pa.len().min(pb.len()) - 1)
        .take_while(|(x, y)| x == y)
        .count();
    let dir = pa[..n].join(&b'/');
    if dir.is_empty() {
        b"/".to_vec()
    } else {
        dir
    }
}

fn kind_name(k: RestoreKind, link: bool) -> &'static str {
    if link {
        return "link";
    }
    match k {
        RestoreKind::Dir => "dir",
        RestoreKind::File => "file",
        RestoreKind::Symlink => "symlink",
        RestoreKind::Fifo => "fifo",
        RestoreKind::Link => "link",
    }
}

/// Sorted block numbers as ranges (first, last).
fn ranges(blocks: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &b in blocks {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == b => *last = b,
            _ => out.push((b, b)),
        }
    }
    out
}

/// `3,17-20`, at most a few dozen ranges (then `…`).
fn show_ranges(r: &[(u64, u64)]) -> String {
    const SHOWN: usize = 32;
    let mut parts: Vec<String> = r
        .iter()
        .take(SHOWN)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if r.len() > SHOWN {
        parts.push(format!("… {} more ranges", r.len() - SHOWN));
    }
    parts.join(",")
}

/// `lstat` of source name `name`, reached in steps when long.
fn lstat(name: &[u8]) -> io::Result<Metadata> {
    fs::symlink_metadata(Reach::new(Path::new(std::ffi::OsStr::from_bytes(name)))?.path())
}

/// Opens source file `name` for reading, through no final symlink and never blocking, only
/// if it is still the file `meta` described.
fn open_source(name: &[u8], meta: &Metadata) -> io::Result<File> {
    let reach = Reach::new(Path::new(std::ffi::OsStr::from_bytes(name)))?;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(reach.path())?;
    let m = f.metadata()?;
    if !m.is_file() || m.ino() != meta.ino() || m.dev() != meta.dev() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "replaced while it was compared",
        ));
    }
    Ok(f)
}

fn kind_of(m: &Metadata) -> Option<RestoreKind> {
    let t = m.file_type();
    if t.is_dir() {
        Some(RestoreKind::Dir)
    } else if t.is_file() {
        Some(RestoreKind::File)
    } else if t.is_symlink() {
        Some(RestoreKind::Symlink)
    } else if t.is_fifo() {
        Some(RestoreKind::Fifo)
    } else {
        None
    }
}

/// What a rule selects of the source at or beneath a start, in walk order
/// ([`walk_order`]): depth first, a directory before what it holds, names in byte order (the
/// order of the router's listing). One directory's names at a time per level.
struct SourceWalk<'a> {
    rule: &'a Rule,
    start: Vec<u8>,
    /// Names still to look at, the next one last.
    stack: Vec<Vec<u8>>,
    /// Files with several names seen: (device, inode) → the first name.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// Names that could not be read, and why.
    errors: Vec<(Vec<u8>, String)>,
}

impl<'a> SourceWalk<'a> {
    fn new(rule: &'a Rule, start: &[u8]) -> SourceWalk<'a> {
        SourceWalk {
            rule,
            start: start.to_vec(),
            stack: vec![start.to_vec()],
            links: HashMap::new(),
            errors: Vec::new(),
        }
    }

    /// Whether the rule selects `name` (a `kind`).
    fn selects(&self, name: &[u8], kind: RestoreKind) -> bool {
        let p = &self.rule.spec.pattern;
        if kind == RestoreKind::Dir {
            return name == self.start.as_slice() || p.kind().is_subtree();
        }
        if p.kind() == PatternKind::File {
            return name == p.prefix();
        }
        p.match_file(name).is_some()
    }

    fn descends(&self, name: &[u8]) -> bool {
        let p = &self.rule.spec.pattern;
        p.kind().is_subtree()
            || name == self.start.as_slice()
            || (p.kind() == PatternKind::Wildcard && name == base(self.rule).as_slice())
    }
}

impl Iterator for SourceWalk<'_> {
    type Item = Source;

    fn next(&mut self) -> Option<Source> {
        while let Some(name) = self.stack.pop() {
            let meta = match lstat(&name) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.errors
                        .push((name, format!("cannot be read here: {e}")));
                    continue;
                }
            };
            let Some(kind) = kind_of(&meta) else {
                continue;
            };
            if !self.selects(&name, kind) {
                continue;
            }
            if kind == RestoreKind::Dir && self.descends(&name) {
                match Reach::new(Path::new(std::ffi::OsStr::from_bytes(&name)))
                    .and_then(|r| fs::read_dir(r.path()))
                {
                    Ok(rd) => {
                        let mut names: Vec<Vec<u8>> = rd
                            .filter_map(|e| e.ok())
                            .map(|e| e.file_name().into_vec())
                            .collect();
                        names.sort();
                        for child in names.into_iter().rev() {
                            let mut n = name.clone();
                            if n != b"/" {
                                n.push(b'/');
                            }
                            n.extend_from_slice(&child);
                            self.stack.push(n);
                        }
                    }
                    Err(e) => self
                        .errors
                        .push((name.clone(), format!("cannot be listed here: {e}"))),
                }
            }
            let mut first = None;
            if kind == RestoreKind::File && meta.nlink() > 1 {
                let k = (meta.dev(), meta.ino());
                match self.links.get(&k) {
                    Some(f) => first = Some(f.clone()),
                    None => {
                        self.links.insert(k, name.clone());
                    }
                }
            }
            return Some(Source {
                name,
                meta,
                kind,
                first,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_options_parse() {
        use clap::Parser;
        let parse = |a: &[&str]| {
            let cli =
                crate::cli::Cli::try_parse_from([&["mirror-ctl", "verify"], a].concat()).unwrap();
            match cli.command {
                crate::cli::Command::Verify(v) => v.orphans(),
                _ => unreachable!(),
            }
        };
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&["--orphans", "delete"]), Ok(Some(Orphans::Delete)));
        assert_eq!(
            parse(&["--orphans", "move", "aside"]),
            Ok(Some(Orphans::Move(PathBuf::from("aside"))))
        );
        assert!(parse(&["--orphans", "move"]).is_err());
        assert!(parse(&["--orphans", "keep"]).is_err());
    }

    #[test]
    fn links_are_repaired_through_their_common_directory() {
        assert_eq!(common_dir(b"/p/sub/x", b"/p/sub/y"), b"/p/sub".to_vec());
        assert_eq!(common_dir(b"/p/a/x", b"/p/b/c/y"), b"/p".to_vec());
        assert_eq!(common_dir(b"/x", b"/y"), b"/".to_vec());
    }

    #[test]
    fn blocks_show_as_ranges() {
        let r = ranges(&[3, 17, 18, 19, 20, 40]);
        assert_eq!(r, vec![(3, 3), (17, 20), (40, 40)]);
        assert_eq!(show_ranges(&r), "3,17-20,40");
        assert!(ranges(&[]).is_empty());
        let many: Vec<u64> = (0..100).map(|i| i * 2).collect();
        assert!(show_ranges(&ranges(&many)).ends_with("… 68 more ranges"));
    }

    #[test]
    fn the_source_is_walked_in_the_routers_order() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("p");
        for dir in ["a", "a/b", "a.c"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::write(root.join("a/b/f"), b"x").unwrap();
        fs::write(root.join("a.c/g"), b"y").unwrap();
        fs::write(root.join("z"), b"z").unwrap();
        fs::hard_link(root.join("z"), root.join("a/y")).unwrap();
        let spec = mirrorfs::rule::RuleSpec {
            pattern: mirrorfs::rule::Pattern::parse(&format!("{}/", root.display())).unwrap(),
            sites: vec![mirrorfs::rule::Site::parse("127.0.0.1:1").unwrap()],
            dest: mirrorfs::rule::Dest::parse("d").unwrap(),
            attrs: false,
            delete_suffix: None,
            mode: Default::default(),
            sync: Default::default(),
        };
        let rule = Rule {
            id: 1,
            crc: spec.crc(),
            spec,
        };
        let start = root.as_os_str().as_bytes().to_vec();
        let names: Vec<(String, bool)> = SourceWalk::new(&rule, &start)
            .map(|s| {
                (
                    String::from_utf8(s.name[start.len()..].to_vec()).unwrap(),
                    s.first.is_some(),
                )
            })
            .collect();
        let want: Vec<(String, bool)> = [
            ("", false),
            ("/a", false),
            ("/a/b", false),
            ("/a/b/f", false),
            ("/a/y", false),
            ("/a.c", false),
            ("/a.c/g", false),
            ("/z", true),
        ]
        .iter()
        .map(|(n, l)| (n.to_string(), *l))
        .collect();
        assert_eq!(names, want);
        let mut sorted: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
        sorted.sort_by(|a, b| walk_order(a.as_bytes(), b.as_bytes()));
        assert_eq!(
            sorted,
            names.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
        );
    }
}
