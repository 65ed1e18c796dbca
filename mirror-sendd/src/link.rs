//! One backup site: what is sent next. Streams the journal entries whose rule names the site
//! (many in flight), follows acknowledgements, answers configuration and copy requests
//! ([`Stream`]); how the stream travels (connect, hello, connections) is the
//! [`crate::transport`]'s.
//!
//! A failed session is retried at once a few times; when the site still cannot be reached, or
//! its heartbeats stop for longer than the threshold (noticed by the heartbeat thread whatever
//! the link is doing), the site is blocked (seeds/002 [0067]) and the link waits for a reason
//! to try again: heartbeats steady for the probationary interval, the periodic unblock, or
//! `mirror-ctl unblock` ([0068]). It then resumes from the oldest unacknowledged entry, after
//! sending the site's dirty set whole if it has one.
//!
//! Trouble on this machine (a journal record that cannot be read) blocks the site too, with
//! the reason, but heartbeats say nothing about it: it is retried after a delay that doubles
//! each time. A damaged record still there after `--skip-damage-after` (or at once on
//! `mirror-ctl unblock`) is skipped ([`JournalReader::skip_damage`]): the files it may have
//! changed are recorded durably for a resync ([`crate::resync`]) and sent whole once the link
//! has caught up with the journal.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use mirrorfs::blocked::DirtySet;
use mirrorfs::entry::Command;
use mirrorfs::journal::{JournalError, JournalReader, Position};
use mirrorfs::notify::DirWatch;
use mirrorfs::wire::heartbeat::Monitor;
use mirrorfs::wire::msg::MAX_ENTRIES_PER_FRAME;
use mirrorfs::wire::{Msg, Part, WireEntry, WireError};

use std::os::unix::ffi::OsStrExt;

use crate::copy::{Answer, CopyJob};
use crate::resync;
use crate::shared::{lock, Shared};
use crate::transport::{Event, Opened, Transport};

/// Bytes sent and not yet acknowledged, at most (on a session; a transport may say another,
/// [`Transport::window`]).
pub(crate) const WINDOW: usize = 64 << 20;
/// Bytes per entries frame, at most (one entry may exceed it).
const BATCH_BYTES: usize = 4 << 20;
/// How long a copy whose source cannot be read now (its mount is down) waits to be tried
/// again.
const COPY_RETRY: Duration = Duration::from_millis(200);
/// Copies remembered for `Stream::recopy_if_late`.
const RECENT_COPIES: usize = 4096;
/// Entries per frame, at most.
const BATCH_ENTRIES: usize = MAX_ENTRIES_PER_FRAME;
/// Failed attempts in a row after which the site is blocked.
const RETRIES: u32 = 3;
/// The first pause after trouble on this machine; it doubles with every failed attempt.
const LOCAL_BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest pause after trouble on this machine (at most the periodic unblock).
const LOCAL_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Skipped stretches remembered, at most.
const MAX_SKIPS: usize = 1000;
/// A session that lasted this long made progress, even without an acknowledgement.
const PROGRESS_TIME: Duration = Duration::from_secs(10);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Connection or framing.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Connecting.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The router refused.
    #[error("refused by the router: {0}")]
    Refused(String),
    /// No key for the site, or the router failed to prove it holds it.
    #[error("authentication: {0}")]
    Auth(String),
    /// The router broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Reading the journal.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The router's heartbeats stopped.
    #[error("no heartbeat from the router for {0:.1?}")]
    Heartbeat(Duration),
    /// The journal record at `at` is damaged.
    #[error("{err}")]
    Damaged {
        /// Where the reader stopped.
        at: Position,
        /// What the reader said.
        err: JournalError,
    },
    /// Something else on this machine (the resync set cannot be written).
    #[error("{0}")]
    Local(String),
    /// The site's settings changed: the session is opened again with them.
    #[error("{0}")]
    Reconfigured(String),
}

impl LinkError {
    /// Whether the trouble is on this machine (the journal), not with the site.
    fn is_local(&self) -> bool {
        matches!(
            self,
            LinkError::Journal(_) | LinkError::Damaged { .. } | LinkError::Local(_)
        )
    }
}

/// Trouble on this machine that keeps a site blocked whatever its router does: retried after
/// a growing pause, not when heartbeats are steady.
#[derive(Debug, Default)]
struct LocalTrouble {
    /// Failed attempts in a row.
    attempts: u32,
    /// When to try again.
    next_try: Option<Instant>,
    /// The damaged journal record the link is stuck at.
    damage: Option<Damage>,
}

#[derive(Debug)]
struct Damage {
    at: Position,
    since: Instant,
    /// `mirror-ctl unblock` asked to go on.
    skip_now: bool,
}

impl LocalTrouble {
    fn active(&self) -> bool {
        self.next_try.is_some() || self.damage.is_some()
    }

    /// The damaged position to skip in this attempt: seen for `grace` already, or asked for.
    fn skip_at(&self, grace: Duration) -> Option<Position> {
        self.damage
            .as_ref()
            .filter(|d| d.skip_now || d.since.elapsed() >= grace)
            .map(|d| d.at)
    }

    /// Counts a failed attempt; the pause before the next one.
    fn failed(&mut self, cap: Duration) -> Duration {
        self.attempts += 1;
        let pause = LOCAL_BACKOFF_FIRST
            .saturating_mul(1 << (self.attempts - 1).min(16))
            .min(cap.max(LOCAL_BACKOFF_FIRST));
        self.next_try = Some(Instant::now() + pause);
        pause
    }
}

/// Damaged stretches of the journal this link skipped (from → to), whose files are in the
/// resync set already: met again (after a reconnect, or a configuration request that sends
/// from the last acknowledgement again), they are passed over at once.
type Skips = std::collections::BTreeMap<Position, Position>;

/// What a session learns of the journal's trouble and passes on to the next.
struct Trouble<'a> {
    local: &'a mut LocalTrouble,
    skips: &'a mut Skips,
}

/// The reason a damaged journal record blocks `site`, and what happens next.
fn damage_reason(err: &JournalError, site: &str, grace: Duration) -> String {
    let what = match err {
        JournalError::Corrupt {
            path,
            offset,
            reason,
            ..
        } => format!(
            "journal segment {} is corrupt at offset {offset}: {reason}",
            path.display()
        ),
        other => other.to_string(),
    };
    format!(
        "{what}; tried again with a growing pause and skipped after {grace:?}, the files of this site's rules then being sent whole (`mirror-ctl unblock {site}` skips it now)"
    )
}

/// Serves `site` until `stop` is set or no rule names the site any more.
pub fn run(shared: Arc<Shared>, site: String, stop: Arc<AtomicBool>) {
    let sites = &shared.sites;
    let monitor = sites.heartbeat(&site);
    let beating = Arc::new(AtomicBool::new(false));
    // A silence is reported when it passes the threshold, whatever the link is doing (stuck in
    // a write to a router the network no longer reaches, or in a connect).
    let on_silence = {
        let (shared, site) = (shared.clone(), site.clone());
        move |silent: Duration| {
            if !shared.sites.is_blocked(&site) {
                shared
                    .sites
                    .block(&site, &LinkError::Heartbeat(silent).to_string());
            }
        }
    };
    let spool = mirrorfs::rule::is_spool_site(&site);
    // A spool site has no router to beat with.
    if !spool {
        crate::heartbeat::spawn(
            site.clone(),
            shared.site_id.clone(),
            shared.keys.clone(),
            sites.policy.timing,
            monitor.clone(),
            beating.clone(),
            Box::new(on_silence),
        );
    }
    let mut failures = 0u32;
    let mut last_try = Instant::now();
    let mut local = LocalTrouble::default();
    let mut skips = Skips::new();
    while !stop.load(Ordering::Relaxed) && shared.table.load().has_site(&site) {
        if sites.is_blocked(&site) {
            match wait_for_unblock(&shared, &site, &stop, &monitor, last_try, local.next_try) {
                Some((why, asked)) => {
                    if let Some(d) = local.damage.as_mut().filter(|_| asked) {
                        d.skip_now = true;
                    }
                    log::info!("site {site}: trying again ({why})")
                }
                None => break,
            }
            // Old silence must not end the new session at once (where heartbeats no longer
            // get through at all): the monitor arms again with the next beat.
            *lock(&monitor) = Monitor::default();
        }
        last_try = Instant::now();
        let mut acked = false;
        skips.retain(|_, to| *to > shared.acked(&site));
        let mut trouble = Trouble {
            local: &mut local,
            skips: &mut skips,
        };
        match session(&shared, &site, &stop, &mut acked, &monitor, &mut trouble) {
            Ok(()) => break,
            Err(LinkError::Reconfigured(why)) => {
                log::info!("site {site}: {why}; connecting again");
                failures = 0;
            }
            Err(e) if e.is_local() => {
                sites.set_connected(&site, false, Some(e.to_string()));
                let policy = &sites.policy;
                let pause = local.failed(policy.unblock_every.min(LOCAL_BACKOFF_MAX));
                let reason = match &e {
                    LinkError::Damaged { at, err } => {
                        if local.damage.as_ref().is_none_or(|d| d.at != *at) {
                            local.damage = Some(Damage {
                                at: *at,
                                since: Instant::now(),
                                skip_now: false,
                            });
                        }
                        damage_reason(err, &site, policy.skip_damage_after)
                    }
                    other => other.to_string(),
                };
                if sites.is_blocked(&site) {
                    log::info!("site {site}: {e}; trying again in {pause:?}");
                }
                sites.block(&site, &reason);
                failures = 0;
            }
            Err(e) => {
                let msg = e.to_string();
                sites.set_connected(&site, false, Some(msg.clone()));
                // The site's own trouble: its heartbeats tell when to try again.
                local.next_try = None;
                let progress = acked || last_try.elapsed() >= PROGRESS_TIME;
                failures = if progress { 1 } else { failures + 1 };
                let heartbeat = matches!(e, LinkError::Heartbeat(_));
                if heartbeat || failures >= RETRIES || sites.is_blocked(&site) {
                    // A silence the heartbeat thread reported already keeps its first reason.
                    if !(heartbeat && sites.is_blocked(&site)) {
                        sites.block(&site, &msg);
                    }
                    failures = 0;
                    continue;
                }
                log::warn!("site {site}: {e}; retrying");
                pause(&stop, Duration::from_millis(100 << failures));
            }
        }
    }
    beating.store(true, Ordering::Relaxed);
    shared.flush();
    log::info!("site {site}: link stopped");
}

/// How often a session looks whether the site's settings changed.
const SETTINGS_CHECK: Duration = Duration::from_secs(1);

/// The settings of a site a session follows: its connections (`<state>/sites`, else
/// `--connections`), and when the file was last looked at.
struct Settings {
    connections: usize,
    /// The file's modification time when read.
    mtime: Option<std::time::SystemTime>,
    checked: Instant,
}

impl Settings {
    fn read(shared: &Shared, site: &str) -> Settings {
        let path = mirrorfs::sitecfg::path(&shared.state_dir);
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let set = match mirrorfs::sitecfg::of(&path, site) {
            Ok(s) => s.and_then(|s| s.connections),
            Err(e) => {
                log::warn!("site {site}: {e}; using --connections");
                None
            }
        };
        Settings {
            connections: set.map_or(shared.sites.policy.connections, |n| n as usize),
            mtime,
            checked: Instant::now(),
        }
    }

    /// The new number of connections, once the settings file says another.
    fn changed(&mut self, shared: &Shared, site: &str) -> Option<usize> {
        if self.checked.elapsed() < SETTINGS_CHECK {
            return None;
        }
        self.checked = Instant::now();
        let path = mirrorfs::sitecfg::path(&shared.state_dir);
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if mtime == self.mtime {
            return None;
        }
        let now = Settings::read(shared, site);
        self.mtime = now.mtime;
        (now.connections != self.connections).then_some(now.connections)
    }
}

/// Sleeps `d` in small steps, returning early when `stop` is set.
fn pause(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits while `site` is blocked for a reason to try it again (heartbeats steady for the
/// probationary interval, the periodic unblock, or a request; after trouble on this machine,
/// `local_next` instead of heartbeats); `None` when the link stops, else why and whether
/// `mirror-ctl unblock` asked.
fn wait_for_unblock(
    shared: &Shared,
    site: &str,
    stop: &AtomicBool,
    monitor: &Mutex<Monitor>,
    last_try: Instant,
    local_next: Option<Instant>,
) -> Option<(String, bool)> {
    let policy = &shared.sites.policy;
    loop {
        if stop.load(Ordering::Relaxed) || !shared.table.load().has_site(site) {
            return None;
        }
        if shared.sites.take_unblock_request(site) {
            return Some(("asked by mirror-ctl unblock".into(), true));
        }
        let now = Instant::now();
        if now.duration_since(last_try) >= policy.unblock_every {
            return Some((
                format!("periodic unblock, every {:?}", policy.unblock_every),
                false,
            ));
        }
        match local_next {
            Some(t) if now >= t => {
                return Some((
                    format!("after a pause of {:.1?}", now.duration_since(last_try)),
                    false,
                ))
            }
            Some(_) => {}
            // A spool site has no heartbeats: tried every probation (the try reads what
            // acknowledgements came).
            None if mirrorfs::rule::is_spool_site(site) => {
                if now.duration_since(last_try) >= policy.timing.probation {
                    return Some(("trying the spool again".into(), false));
                }
            }
            None => {
                let steady = lock(monitor).steady_for(now, policy.timing.threshold);
                if steady >= policy.timing.probation
                    && now.duration_since(last_try) >= policy.timing.probation
                {
                    return Some((format!("heartbeats steady for {steady:.1?}"), false));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a router may ask for a copy of `name` under a rule with `pattern`
/// ([`mirrorfs::copycheck`]), so that a router can never read other files of this machine.
/// A check that cannot look now (the mount is down) lets the copy be tried: it is checked
/// again when it runs.
fn may_copy(pattern: &mirrorfs::rule::Pattern, name: &[u8]) -> bool {
    match mirrorfs::copycheck::may_copy(pattern, name) {
        Ok(()) => true,
        Err(e) => e.is_transient(),
    }
}

/// Whether `name` is a normalised absolute name that `pattern` selects, or the rule's base
/// (the directory a wildcard or subtree rule starts at: its copy holds what the rule selects).
fn selects(pattern: &mirrorfs::rule::Pattern, name: &[u8]) -> bool {
    mirrorfs::copycheck::may_copy_with(pattern, name, |_| Ok(false)).is_ok()
}

/// Whether `name` is the base directory of a wildcard or subtree rule.
fn is_base(pattern: &mirrorfs::rule::Pattern, name: &[u8]) -> bool {
    let prefix = pattern.prefix();
    pattern.kind().dest_is_dir() && name == prefix.strip_suffix(b"/").unwrap_or(prefix)
}

/// Whether `name` is gone here (so the copy a router asks for is its deletion, which reads
/// nothing).
fn gone(name: &[u8]) -> bool {
    match mirrorfs::beneath::Reach::new(std::path::Path::new(std::ffi::OsStr::from_bytes(name)))
        .and_then(|r| std::fs::symlink_metadata(r.path()))
    {
        Ok(_) => false,
        Err(e) => {
            e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
        }
    }
}
/// Sent and not yet acknowledged.
struct InFlight {
    /// The entries frame it went in (numbered from 1 in each session).
    frame: u64,
    /// Where reading resumes once this is acknowledged (whole entries and last parts).
    next: Option<Position>,
    bytes: usize,
    /// Blocks it carried wholly, for the index of what the site holds once it is stored.
    rows: Vec<mirrorfs::shipped::Row>,
    /// Files whose copy it completed, with their state when read (the same).
    files: Vec<(u32, Vec<u8>, mirrorfs::shipped::FileState)>,
}

/// What is sent next to one site: the ordered stream (positions, window, acknowledgements,
/// dirty set, copies, resync), whatever carries it ([`Transport`]).
struct Stream<'a> {
    shared: &'a Shared,
    site: &'a str,
    /// How it travels.
    t: Box<dyn Transport>,
    /// The site's settings the session was opened with.
    settings: Settings,
    reader: JournalReader,
    inflight: VecDeque<InFlight>,
    inflight_bytes: usize,
    /// Everything before it is acknowledged or not for this site.
    acked_next: Position,
    /// Copies expanded lately: rule, name, when (see `recopy_if_late`).
    copies_made: VecDeque<(u32, Vec<u8>, u64)>,
    copy: Option<(CopyJob, Position)>,
    /// When the current copy, stopped because its source could not be read, is tried again.
    copy_retry_at: Option<Instant>,
    extras: VecDeque<CopyJob>,
    /// Entries frames sent in this session, and how many of them the router stored.
    frames: u64,
    acked_frames: u64,
    /// The site's dirty set being sent: its file, and the frame that carried its last part
    /// once that is sent.
    dirty: Option<(std::path::PathBuf, Option<u64>)>,
    monitor: &'a Mutex<Monitor>,
    /// Trouble with the journal in earlier attempts; cleared once the reader is past it.
    local: &'a mut LocalTrouble,
    /// Damage skipped already.
    skips: &'a mut Skips,
    /// Files to send whole after journal damage, once caught up with the journal.
    resync_pending: resync::Names,
    /// Those being sent, and the frame that carried the last part once that is sent.
    resync_sending: Option<(resync::Names, Option<u64>)>,
    /// Acknowledgements not yet known applied at the router: the journal position the
    /// router had received up to, and where this site's acknowledged position was then.
    applied_pending: VecDeque<(Position, Position)>,
    /// The router's last word on what it applied ([`Msg::Applied`]).
    applied_upto: Option<Position>,
    /// The newest position the router said it received, in this session's acks.
    last_received: Option<Position>,
    /// The last write sent in this session: name, offset, its data's sum and length, its
    /// position (the same write for another rule goes as a reference to it).
    last_write: Option<(Vec<u8>, u64, mirrorfs::blocksums::Sum, u64, Position)>,
    /// The oldest write the router still holds, as it last said.
    retained_from: Option<Position>,
    /// Prunes of the shipped-block index in this session.
    prunes: u64,
    /// Where reading resumed after what the transport held from earlier sessions: the
    /// acknowledged position moves there once that is acknowledged ([`Event::HeldAcked`]).
    held_next: Option<Position>,
}

/// One prune in this many also caps the shipped-block index's rows (a count of them).
const CAP_EVERY: u64 = 100;

/// Acknowledgements waiting for the router's applied position, at most (beyond, the newest
/// two merge: a wait for "applied" only grows coarser).
const MAX_APPLIED_PENDING: usize = 4096;

fn session(
    shared: &Arc<Shared>,
    site: &str,
    stop: &AtomicBool,
    acked: &mut bool,
    monitor: &Mutex<Monitor>,
    trouble: &mut Trouble<'_>,
) -> Result<(), LinkError> {
    let Trouble { local, skips } = trouble;
    let settings = Settings::read(shared, site);
    let connections = settings.connections;
    let (tx, rx) = crossbeam_channel::unbounded();
    let Opened {
        transport,
        received,
        held,
    } = crate::transport::open(shared, site, connections, tx.clone())?;
    shared.sites.set_connected(site, true, None);
    // Trouble with the journal is over only once the reader is past it.
    if !local.active() {
        shared.sites.unblock(site);
    }
    // The dirty set and the position it ends at are read together (see `dirty`).
    let dirty_guard = lock(&shared.dirty_lock);
    let start = shared.acked(site);
    let dirty_file = crate::dirty::path(shared, site);
    let dirty = DirtySet::load(&dirty_file).map_err(|e| LinkError::Protocol(e.to_string()))?;
    drop(dirty_guard);
    let resync_pending = resync::load(shared, site).map_err(LinkError::Local)?;
    // A journal made anew (its segments removed by hand, say) starts again at segment 1: a
    // position past its newest segment would wait for ever while new entries pass by.
    let newest = mirrorfs::journal::list_segments(&shared.journal_dir)?
        .last()
        .copied()
        .unwrap_or(0);
    if start.segment > newest && newest > 0 {
        log::error!(
            "site {site}: it acknowledged up to {start}, past the newest journal segment {newest}: the journal was made anew; sending it from its start as a new stream (run `mirror-ctl sync` for the files changed in between)"
        );
        shared.restart_stream();
        return Err(LinkError::Local(
            "the journal was made anew; connecting again with a new stream".into(),
        ));
    }
    let reader = match JournalReader::open(&shared.journal_dir, start) {
        Err(JournalError::Gap { oldest, .. }) => {
            log::error!(
                "site {site}: journal entries from {start} were removed before it acknowledged them; run `mirror-ctl sync` to copy everything again"
            );
            JournalReader::open(
                &shared.journal_dir,
                Position::new(oldest, mirrorfs::journal::format::SEGMENT_HEADER_LEN),
            )?
        }
        r => r?,
    };
    log::info!(
        "site {site}: connected; resuming at {} (router has up to {})",
        start,
        received.map_or("nothing".into(), |p| p.to_string())
    );
    let done = Arc::new(AtomicBool::new(false));
    spawn_watcher(shared, tx, done.clone());
    let mut s = Stream {
        shared,
        site,
        t: transport,
        settings,
        reader,
        inflight: VecDeque::new(),
        inflight_bytes: 0,
        acked_next: start,
        copy: None,
        copies_made: VecDeque::new(),
        copy_retry_at: None,
        extras: VecDeque::new(),
        frames: 0,
        acked_frames: 0,
        dirty: None,
        monitor,
        local,
        skips,
        resync_pending,
        resync_sending: None,
        applied_pending: VecDeque::new(),
        applied_upto: None,
        last_received: None,
        last_write: None,
        retained_from: None,
        prunes: 0,
        held_next: None,
    };
    if let Some(set) = dirty {
        s.queue_dirty(set, dirty_file);
    }
    let result = match received.filter(|&p| p >= start) {
        Some(rcv) => s.skip_through(rcv),
        None => Ok(()),
    }
    .and_then(|()| match held.filter(|&p| p >= s.acked_next) {
        Some(h) => s.skip_held(h),
        None => Ok(()),
    })
    .and_then(|()| s.serve(&rx, stop))
    .map_err(|e| refusal_behind(e, &rx));
    done.store(true, Ordering::Relaxed);
    s.t.close();
    shared.set_acked(site, s.acked_next, true);
    *acked = s.acked_frames > 0;
    result
}

/// A connection that failed under a write may have carried the router's reason first (it
/// says why, then closes): that reason, read within a moment, is the session's error rather
/// than the broken pipe.
fn refusal_behind(e: LinkError, rx: &Receiver<Event>) -> LinkError {
    if !matches!(e, LinkError::Wire(_)) {
        return e;
    }
    let deadline = Instant::now() + Duration::from_millis(200);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Msg(Msg::Error { reason })) => return LinkError::Refused(reason),
            Ok(_) => {}
            Err(_) => return e,
        }
    }
}

fn spawn_watcher(shared: &Shared, tx: Sender<Event>, done: Arc<AtomicBool>) {
    let dir = shared.journal_dir.clone();
    let _ = std::thread::Builder::new()
        .name("link-watch".into())
        .spawn(move || {
            let watch = match DirWatch::new(&dir) {
                Ok(w) => w,
                Err(e) => {
                    log::warn!("journal {}: cannot watch ({e}); polling", dir.display());
                    return;
                }
            };
            while !done.load(Ordering::Relaxed) {
                match watch.wait(Duration::from_millis(100)) {
                    Ok(true) => {
                        if tx.send(Event::Grew).is_err() {
                            return;
                        }
                    }
                    Ok(false) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
}

impl Stream<'_> {
    /// Sends every file of the site's dirty set whole (or its deletion, when it is gone)
    /// before the journal; the set is removed once the router has stored all of it.
    fn queue_dirty(&mut self, set: DirtySet, file: std::path::PathBuf) {
        let table = self.shared.table.load();
        let mut n = 0;
        // Names of one file (hard links) in the set stay one file on the backup.
        let mut linked: std::collections::HashMap<u32, crate::copy::Linked> = Default::default();
        for (crc, name) in set.names {
            let Some(rule) = table.sends_to(crc, self.site) else {
                continue;
            };
            let gone = mirrorfs::beneath::Reach::new(std::path::Path::new(
                std::ffi::OsStr::from_bytes(&name),
            ))
            .and_then(|r| std::fs::symlink_metadata(r.path()))
            .is_err();
            self.extras.push_back(if gone {
                CopyJob::deletion(rule.clone(), name)
            } else {
                CopyJob::extra(rule.clone(), name).sharing_links(linked.entry(crc).or_default())
            });
            n += 1;
        }
        log::warn!(
            "site {}: sending the {n} files that changed while it was blocked whole",
            self.site
        );
        self.dirty = Some((file, None));
    }

    /// The dirty set is stored at the router once the frame with its last part is.
    fn finish_dirty(&mut self, stored_frames: u64) {
        if let Some((file, Some(last))) = &self.dirty {
            if stored_frames >= *last {
                match std::fs::remove_file(file) {
                    Ok(()) => log::info!(
                        "site {}: the files changed while it was blocked are at the router",
                        self.site
                    ),
                    Err(e) => log::error!("cannot remove {}: {e}", file.display()),
                }
                self.dirty = None;
            }
        }
    }

    /// The router already holds everything through `pos`: start after it (if the entry
    /// there cannot be read, from the last acknowledgement, where the reader meets it).
    fn skip_through(&mut self, pos: Position) -> Result<(), LinkError> {
        self.reader.seek(pos)?;
        match self.reader.next_entry() {
            Ok(Some((p, _))) if p == pos => self.acked_next = self.reader.position(),
            _ => self.reader.seek(self.acked_next)?,
        }
        Ok(())
    }

    /// The transport holds everything through `pos` already, unacknowledged: reading starts
    /// after it, the acknowledged position stays (if the entry there cannot be read, from the
    /// last acknowledgement: the transport then gets those entries again).
    fn skip_held(&mut self, pos: Position) -> Result<(), LinkError> {
        self.reader.seek(pos)?;
        match self.reader.next_entry() {
            Ok(Some((p, _))) if p == pos => self.held_next = Some(self.reader.position()),
            _ => self.reader.seek(self.acked_next)?,
        }
        Ok(())
    }

    /// After a read of the journal that did not fail: trouble from earlier attempts is over
    /// once the reader is past the damaged record (or found nothing more to read).
    fn journal_read(&mut self, caught_up: bool) {
        if !self.local.active() {
            return;
        }
        let past = self
            .local
            .damage
            .as_ref()
            .is_none_or(|d| caught_up || self.reader.position() > d.at);
        if past {
            *self.local = LocalTrouble::default();
            self.shared.sites.unblock(self.site);
        }
    }

    /// Skips the damaged record the reader is at: records what its entries may have changed
    /// for a resync (durably, before reading on), keeps the segment for inspection, goes on.
    fn skip_damage(&mut self, err: &JournalError) -> Result<(), LinkError> {
        let skipped = self.reader.skip_damage()?;
        let table = self.shared.table.load();
        let names = resync::names_for(&table, self.site, &skipped);
        if let Err(e) = resync::add(self.shared, self.site, &names) {
            self.reader.seek(skipped.from)?;
            return Err(LinkError::Local(format!(
                "cannot record the files to send whole after journal damage: {e}"
            )));
        }
        let kept = keep_damaged(self.shared, skipped.from.segment);
        let rules = table.rules_of(self.site).len();
        log::error!(
            "site {}: skipped the damaged journal bytes from {} to {} ({err}); the files of its {rules} rules are sent whole once it has caught up with the journal ({} names read from the damaged records){kept}",
            self.site,
            skipped.from,
            skipped.to,
            skipped.guessed.len(),
        );
        self.resync_pending.extend(names);
        if self.skips.len() < MAX_SKIPS {
            self.skips.insert(skipped.from, skipped.to);
        }
        *self.local = LocalTrouble::default();
        self.shared.sites.unblock(self.site);
        Ok(())
    }

    /// Once caught up with the journal: starts sending the files to send whole after journal
    /// damage; whether it queued anything.
    fn start_resync(&mut self) -> bool {
        if self.resync_sending.is_some() || self.resync_pending.is_empty() {
            return false;
        }
        let table = self.shared.table.load();
        let Some(jobs) = resync::jobs(&table, self.site, &self.resync_pending) else {
            log::debug!(
                "site {}: a rule's source cannot be looked at now; the resync waits",
                self.site
            );
            return false;
        };
        log::warn!(
            "site {}: sending whole what journal damage hid ({} names)",
            self.site,
            self.resync_pending.len()
        );
        self.extras.extend(jobs);
        self.resync_sending = Some((std::mem::take(&mut self.resync_pending), None));
        true
    }

    /// The resync is stored at the router once the frame with its last part is.
    fn finish_resync(&mut self, stored_frames: u64) {
        if let Some((names, Some(last))) = &self.resync_sending {
            if stored_frames >= *last {
                resync::retire(self.shared, self.site, names);
                self.resync_sending = None;
            }
        }
    }

    fn serve(&mut self, rx: &Receiver<Event>, stop: &AtomicBool) -> Result<(), LinkError> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let threshold = self.shared.sites.policy.timing.threshold;
            if let Some(silent) = lock(self.monitor).interrupted(Instant::now(), threshold) {
                return Err(LinkError::Heartbeat(silent));
            }
            while let Ok(ev) = rx.try_recv() {
                self.handle(ev)?;
            }
            if !self.shared.table.load().has_site(self.site) {
                return Ok(());
            }
            self.t.tick()?;
            if let Some(n) = self.settings.changed(self.shared, self.site) {
                return Err(LinkError::Reconfigured(format!(
                    "connections set to {n} (were {})",
                    self.settings.connections
                )));
            }
            if self.send_batch()? {
                continue;
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(ev) => self.handle(ev)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(LinkError::Protocol("connection reader stopped".into()))
                }
            }
        }
    }

    fn handle(&mut self, ev: Event) -> Result<(), LinkError> {
        if let Event::Msg(m) = &ev {
            self.t.observe(m);
        }
        match ev {
            Event::Grew => Ok(()),
            Event::HeldAcked => {
                if let Some(n) = self.held_next.take() {
                    self.acked_next = self.acked_next.max(n);
                    self.note_progress();
                }
                Ok(())
            }
            Event::Conn(c) => self.t.on_event(c),
            Event::Closed(e) => Err(e.into()),
            Event::Msg(Msg::Ack { frames, upto }) => {
                self.acked_frames = self.acked_frames.max(frames);
                let mut rows = Vec::new();
                let mut files = Vec::new();
                while let Some(f) = self.inflight.front() {
                    if f.frame > frames {
                        break;
                    }
                    if let Some(n) = f.next {
                        self.acked_next = self.acked_next.max(n);
                    }
                    self.inflight_bytes -= f.bytes;
                    if let Some(f) = self.inflight.pop_front() {
                        rows.extend(f.rows);
                        files.extend(f.files);
                    }
                }
                if !rows.is_empty() && !room_for_index(&self.shared.state_dir) {
                    // The journal's disk comes first: the index only saves bytes.
                    rows.clear();
                }
                if !rows.is_empty() || !files.is_empty() {
                    // Stored at the router: copies may refer to these blocks from now on, and
                    // skip these files while they stay as they are.
                    mirrorfs::shipped::with(|s| {
                        s.record(self.site, &rows)?;
                        s.record_files(self.site, &files)
                    });
                }
                if upto != Position::START {
                    if self.applied_pending.len() >= MAX_APPLIED_PENDING {
                        self.applied_pending.pop_back();
                    }
                    self.applied_pending.push_back((upto, self.acked_next));
                    self.last_received = self.last_received.max(Some(upto));
                }
                self.finish_dirty(frames);
                self.finish_resync(frames);
                self.note_progress();
                self.note_applied();
                Ok(())
            }
            Event::Msg(Msg::Applied { upto }) => {
                self.applied_upto = self.applied_upto.max(Some(upto));
                self.note_applied();
                Ok(())
            }
            Event::Msg(Msg::SendConfig { have }) => {
                let table = self.shared.table.load();
                let rules = table.wire_rules(self.site);
                log::info!(
                    "site {}: sending configuration version {} ({} rules; router had {})",
                    self.site,
                    table.version,
                    rules.len(),
                    have.map_or("none".into(), |v| v.to_string())
                );
                self.t.send(Msg::Config {
                    // Numbered by the transport.
                    seq: 0,
                    version: table.version,
                    rules,
                })?;
                // The router dropped what followed its request: resend from the last ack.
                self.reader.seek(self.acked_next)?;
                self.inflight.clear();
                self.inflight_bytes = 0;
                self.copy = None;
                self.last_write = None;
                if let Some((names, _)) = self.resync_sending.take() {
                    // So was what was sent of the resync: send it again.
                    self.resync_pending.extend(names);
                }
                if let Some((file, _)) = self.dirty.take() {
                    // What was sent of the dirty set was dropped too: send it again.
                    match DirtySet::load(&file) {
                        Ok(Some(set)) => self.queue_dirty(set, file),
                        Ok(None) => {}
                        Err(e) => return Err(LinkError::Protocol(e.to_string())),
                    }
                }
                Ok(())
            }
            Event::Msg(Msg::ConfigOk { .. } | Msg::Heartbeat) => Ok(()),
            Event::Msg(Msg::Resync { rule_crc, name }) => {
                let table = self.shared.table.load();
                let shown = String::from_utf8_lossy(&name).into_owned();
                let Some(rule) = table.sends_to(rule_crc, self.site) else {
                    log::warn!(
                        "site {}: copy of {shown} asked for rule {rule_crc:#010x}, which no longer sends there",
                        self.site,
                    );
                    return Ok(());
                };
                let pattern = &rule.spec.pattern;
                let answer = if gone(&name) && selects(pattern, &name) && !is_base(pattern, &name) {
                    // The backup must lose it too (a deletion the router never got). Never for
                    // a rule's base: a source directory missing for a while must not empty its
                    // backup.
                    log::info!(
                        "site {}: {shown} is gone here; sending its deletion, as the router asked for a copy",
                        self.site
                    );
                    Answer::Deletion
                } else if may_copy(pattern, &name) {
                    log::info!(
                        "site {}: sending {shown} whole, as the router asked",
                        self.site
                    );
                    Answer::Copy
                } else {
                    log::warn!(
                        "site {}: refused to send {shown}: rule {pattern} does not select it",
                        self.site
                    );
                    Answer::Nothing
                };
                self.extras
                    .push_back(CopyJob::requested(rule.clone(), name, answer));
                Ok(())
            }
            Event::Msg(Msg::Retained {
                from,
                retained_bytes,
                refs_resolved,
                bytes_saved,
            }) => {
                self.shared.sites.set_router_stats(
                    self.site,
                    mirrorfs::control::RouterStats {
                        refs_resolved,
                        bytes_saved,
                        retained_bytes,
                    },
                );
                if let Some(from) = from.filter(|f| self.retained_from != Some(*f)) {
                    self.retained_from = Some(from);
                    self.prunes += 1;
                    let cap = self.prunes % CAP_EVERY == 1;
                    mirrorfs::shipped::with(|s| {
                        s.prune(self.site, from)?;
                        if cap {
                            s.cap(self.site)?;
                        }
                        Ok(())
                    });
                }
                Ok(())
            }
            Event::Msg(Msg::SumsAnswer {
                id,
                size,
                sums,
                why,
            }) => {
                if let Some((job, _)) = self.copy.as_mut() {
                    job.sums_answered(id, size, &sums, &why);
                }
                Ok(())
            }
            Event::Msg(Msg::Error { reason }) => Err(LinkError::Refused(reason)),
            Event::Msg(Msg::Notice { text }) => {
                log::warn!("site {}: the router says: {text}", self.site);
                self.shared.sites.set_connected(self.site, true, Some(text));
                Ok(())
            }
            Event::Msg(other) => Err(LinkError::Protocol(format!(
                "unexpected {} from the router",
                other.kind()
            ))),
        }
    }

    /// Acknowledged positions the router has applied since become this site's applied
    /// position (the wait of sync rules with `--sync-point applied`); with nothing in flight
    /// and everything acknowledged applied, all that was read is.
    fn note_applied(&mut self) {
        let Some(applied) = self.applied_upto else {
            return;
        };
        let mut next = None;
        while let Some(&(received, acked)) = self.applied_pending.front() {
            if received > applied {
                break;
            }
            next = Some(acked);
            self.applied_pending.pop_front();
        }
        let all_applied = self.last_received.is_none_or(|r| applied >= r);
        if self.applied_pending.is_empty() && self.inflight.is_empty() && all_applied {
            next = Some(self.acked_next);
        }
        if let Some(n) = next {
            self.shared.set_applied(self.site, n);
        }
    }

    /// With nothing in flight, everything read so far is done for this site.
    fn note_progress(&mut self) {
        if self.inflight.is_empty()
            && self.copy.is_none()
            && self.extras.is_empty()
            && self.held_next.is_none()
        {
            self.acked_next = self.acked_next.max(self.reader.position());
        }
        self.shared
            .set_acked(self.site, self.acked_next, self.inflight.is_empty());
        if self.inflight.is_empty() {
            self.note_applied();
        }
    }

    /// Sends one frame of entries if there is room and anything to send; whether it did.
    fn send_batch(&mut self) -> Result<bool, LinkError> {
        let mut table = self.shared.table.load_full();
        let mut version = table.version;
        let mut batch: Vec<WireEntry> = Vec::new();
        // Directories (of rules with --attrs) whose contents the batch changes: their times
        // follow the batch (`copy::dir_times`). An entry adds at most two.
        let mut dirs: Vec<(Arc<mirrorfs::rule::Rule>, Vec<u8>)> = Vec::new();
        let mut bytes = 0usize;
        let window = self.t.window();
        while self.inflight_bytes + bytes < window
            && bytes < BATCH_BYTES
            && batch.len() + dirs.len() + 3 <= BATCH_ENTRIES
        {
            if self.copy.is_none() {
                if let Some(mut x) = self.extras.pop_front() {
                    x.for_site(self.site, self.t.live());
                    self.copy = Some((x, Position::START));
                }
            }
            if let Some((job, next)) = self.copy.as_mut() {
                if self.copy_retry_at.is_some_and(|t| Instant::now() < t) {
                    break;
                }
                match job.next_part() {
                    Some(e) => {
                        if let Some(p) = job.progress() {
                            self.shared.sites.set_copy(self.site, p);
                        }
                        let files = job.take_shipped();
                        // A copy's write part (from the journal) is a transfer too.
                        let rows = if e.command == Command::Write && e.part != Part::Extra {
                            let part = (mirrorfs::blocksums::name_hash(&e.name), e.offset);
                            carried_blocks(&e, Some(part))
                        } else {
                            Vec::new()
                        };
                        let next = (e.part == Part::Last).then_some(*next);
                        bytes += self.track(&e, next);
                        if let Some(f) = self.inflight.back_mut() {
                            f.files = files;
                            f.rows = rows;
                        }
                        note_dirs(&mut dirs, table.sends_to(e.rule_crc, self.site), &e);
                        batch.push(e);
                    }
                    None if job.waiting() => {
                        // A file compared with the backup first (`delta`): its checksums are
                        // asked for once everything sent before is stored at the router, so
                        // that they are those of the backup the copy applies to.
                        if self.inflight.is_empty() {
                            if let Some(m) = job.sums_request() {
                                self.t.send(m)?;
                            }
                        }
                        break;
                    }
                    None if job.unreachable() => {
                        // The source is a mount whose server is gone for now: the copy is made
                        // again from its start a little later, and nothing after it goes
                        // before it.
                        *job = job.restart();
                        self.copy_retry_at = Some(Instant::now() + COPY_RETRY);
                        break;
                    }
                    None => {
                        self.copy = None;
                        self.copy_retry_at = None;
                    }
                }
                continue;
            }
            let next = match self.reader.next_entry() {
                Ok(next) => next,
                // Send what was read before the damage first, and wait for its
                // acknowledgement (the site's position then stops right at the damage).
                Err(JournalError::Corrupt { .. })
                    if !batch.is_empty() || !self.inflight.is_empty() =>
                {
                    break
                }
                Err(err @ JournalError::Corrupt { .. }) => {
                    let at = self.reader.position();
                    if let Some(&to) = self.skips.get(&at) {
                        self.reader.seek(to)?;
                        continue;
                    }
                    let grace = self.shared.sites.policy.skip_damage_after;
                    if self.local.skip_at(grace) == Some(at) {
                        self.skip_damage(&err)?;
                        continue;
                    }
                    return Err(LinkError::Damaged { at, err });
                }
                Err(e) => return Err(e.into()),
            };
            self.journal_read(next.is_none());
            let Some((pos, e)) = next else {
                if self.start_resync() {
                    continue;
                }
                break;
            };
            let next = self.reader.position();
            if e.command == Command::Mark {
                // The journal's own watermark: nothing to send.
                continue;
            }
            if table.get(e.rule_crc).is_none() {
                // A rule newer than this table, or one removed since: look again.
                let fresh = self.shared.refresh();
                if fresh.version != version {
                    if !batch.is_empty() {
                        // This frame carries the old version: send it, then this entry.
                        self.reader.seek(pos)?;
                        break;
                    }
                    table = fresh;
                    version = table.version;
                }
            }
            let Some(rule) = table.sends_to(e.rule_crc, self.site) else {
                continue;
            };
            if e.command == Command::Copy || e.command == Command::Reconcile {
                self.note_copy(rule.crc, &e.name);
                let mut job = if e.command == Command::Copy {
                    let quick = e.offset & mirrorfs::entry::COPY_QUICK != 0;
                    CopyJob::new(pos, rule.clone(), e.name).quick(quick)
                } else {
                    CopyJob::reconcile(pos, rule.clone(), e.name)
                };
                job.for_site(self.site, self.t.live());
                self.copy = Some((job, next));
                continue;
            }
            if matches!(e.command, Command::Rename | Command::Link) {
                self.recopy_if_late(rule, &e);
            }
            let mut we = WireEntry::whole(pos, e);
            let rows = if we.command == Command::Write {
                self.shipping_write(&mut we)
            } else {
                Vec::new()
            };
            bytes += self.track(&we, Some(next));
            if let Some(f) = self.inflight.back_mut() {
                f.rows = rows;
            }
            note_dirs(&mut dirs, Some(rule), &we);
            batch.push(we);
        }
        for (rule, dir) in dirs {
            if let Some(e) = crate::copy::dir_times(&rule, &dir) {
                self.track(&e, None);
                batch.push(e);
            }
        }
        let frame = self.frames + u64::from(!batch.is_empty());
        if let Some((_, last @ None)) = &mut self.dirty {
            if self.extras.is_empty() && self.copy.is_none() {
                // The dirty set's last part is in this frame (or was in an earlier one).
                *last = Some(frame);
                self.finish_dirty(self.acked_frames);
            }
        }
        if let Some((_, last @ None)) = &mut self.resync_sending {
            if self.extras.is_empty() && self.copy.is_none() {
                *last = Some(frame);
                self.finish_resync(self.acked_frames);
            }
        }
        if batch.is_empty() {
            self.note_progress();
            return Ok(false);
        }
        self.frames = frame;
        let (data, referenced) = batch.iter().fold((0, 0), |(d, r), e| match e.command {
            Command::Ref => (d, r + e.size),
            Command::Write => (d + e.data.len() as u64, r),
            _ => (d, r),
        });
        self.shared.sites.count_sent(self.site, data, referenced);
        for f in self.inflight.iter_mut().rev().take(batch.len()) {
            f.frame = frame;
        }
        self.t.send(Msg::Entries {
            // Numbered by the transport.
            seq: 0,
            config_version: version,
            entries: batch,
        })?;
        Ok(true)
    }

    /// Notes that a copy (or reconciliation) of `name` is being expanded now, from the source
    /// as it is now.
    fn note_copy(&mut self, crc: u32, name: &[u8]) {
        if self.copies_made.len() >= RECENT_COPIES {
            self.copies_made.pop_front();
        }
        self.copies_made
            .push_back((crc, name.to_vec(), mirrorfs::now_ns()));
    }

    /// A copy is made from the source as it is when it is sent, and later entries apply on
    /// top. A rename (or link) made *before* a copy of its old name (or of a directory above
    /// it) was sent found that copy holding what the old name held *after* the rename, and
    /// moves it to the new name: the new name is sent whole again after it.
    fn recopy_if_late(&mut self, rule: &Arc<mirrorfs::rule::Rule>, e: &mirrorfs::entry::Entry) {
        let under = |copied: &[u8], name: &[u8]| {
            name == copied || (name.starts_with(copied) && name.get(copied.len()) == Some(&b'/'))
        };
        // (A second of margin: the entry's time is taken just after the rename itself.)
        let late = self.copies_made.iter().any(|(crc, copied, at)| {
            *crc == rule.crc && at + 1_000_000_000 >= e.time_ns && under(copied, &e.name)
        });
        if !late {
            return;
        }
        log::debug!(
            "site {}: {} was copied after it was renamed: sending {} whole again",
            self.site,
            String::from_utf8_lossy(&e.name),
            String::from_utf8_lossy(&e.aux)
        );
        self.extras
            .push_back(CopyJob::extra(rule.clone(), e.aux.clone()));
        if e.command == Command::Rename && e.offset as u32 & libc::RENAME_EXCHANGE != 0 {
            self.extras
                .push_back(CopyJob::extra(rule.clone(), e.name.clone()));
        }
    }

    /// A write about to go: the same write as the last one sent, for another rule (a file
    /// two rules send to this site), goes as a reference to it ([`Command::Ref`]); else the
    /// blocks it carries wholly, for the index of what the site holds.
    fn shipping_write(&mut self, we: &mut WireEntry) -> Vec<mirrorfs::shipped::Row> {
        use mirrorfs::blocksums::{leaf, node, Locator, BLOCK};
        if we.data.is_empty() {
            return Vec::new();
        }
        let sum = node(&we.data.chunks(BLOCK as usize).map(leaf).collect::<Vec<_>>());
        let len = we.data.len() as u64;
        let same = self.last_write.as_ref().is_some_and(|(n, o, s, l, _)| {
            *n == we.name && *o == we.offset && *s == sum && *l == len
        });
        if same {
            if let Some((.., pos)) = &self.last_write {
                we.command = Command::Ref;
                we.aux = Locator::Transfer {
                    pos: *pos,
                    part: None,
                    at: 0,
                }
                .encode();
                we.size = len;
                we.data = sum.to_vec();
                return Vec::new();
            }
        }
        self.last_write = Some((we.name.clone(), we.offset, sum, len, we.pos));
        carried_blocks(we, None)
    }

    fn track(&mut self, e: &WireEntry, next: Option<Position>) -> usize {
        let bytes = e.wire_len();
        self.inflight.push_back(InFlight {
            frame: 0,
            next,
            bytes,
            rows: Vec::new(),
            files: Vec::new(),
        });
        self.inflight_bytes += bytes;
        bytes
    }
}

/// Whether the state directory's disk has room for the index of shipped blocks to grow: a
/// 16th of it and 256 MiB free at least (the journal, on the same disk, comes first).
fn room_for_index(state: &std::path::Path) -> bool {
    mirrorfs::state::space(state).is_ok_and(|(size, free)| free >= (size / 16).max(256 << 20))
}

/// The blocks write `we` carries wholly, for the index of what the site holds
/// ([`mirrorfs::shipped`]); `part`: for a write part of a copy, its file's name hash and
/// offset.
fn carried_blocks(we: &WireEntry, part: Option<(u64, u64)>) -> Vec<mirrorfs::shipped::Row> {
    use mirrorfs::blocksums::{leaf, BLOCK};
    let len = we.data.len() as u64;
    let first = we.offset.div_ceil(BLOCK);
    let end = (we.offset + len) / BLOCK;
    if first >= end {
        return Vec::new();
    }
    let Some(file) = crate::copy::identity(&we.name) else {
        return Vec::new();
    };
    (first..end)
        .map(|b| {
            let at = b * BLOCK - we.offset;
            mirrorfs::shipped::Row {
                file,
                block: b,
                pos: we.pos,
                part,
                k: at,
                sum: leaf(&we.data[at as usize..(at + BLOCK) as usize]),
            }
        })
        .collect()
}

/// Notes the directories whose contents `e` changes on the backup, once each, when its rule
/// mirrors attributes.
fn note_dirs(
    dirs: &mut Vec<(Arc<mirrorfs::rule::Rule>, Vec<u8>)>,
    rule: Option<&Arc<mirrorfs::rule::Rule>>,
    e: &WireEntry,
) {
    let Some(rule) = rule.filter(|r| r.spec.attrs) else {
        return;
    };
    for d in crate::copy::changed_dirs(e) {
        if !dirs.iter().any(|(r, x)| r.crc == rule.crc && x == d) {
            dirs.push((rule.clone(), d.to_vec()));
        }
    }
}

/// Keeps a hard link to damaged segment `n` in `<state>/damaged/` (the journal removes the
/// segment once every site passed it); a note for the log line.
fn keep_damaged(shared: &Shared, n: u64) -> String {
    let from = mirrorfs::journal::segment_path(&shared.journal_dir, n);
    let dir = shared.state_dir.join("damaged");
    let Some(name) = from.file_name() else {
        return String::new();
    };
    let to = dir.join(name);
    if to.exists() {
        return format!("; the segment is kept as {}", to.display());
    }
    match mirrorfs::state::private_dir(&dir).and_then(|()| std::fs::hard_link(&from, &to)) {
        Ok(()) => format!("; the segment is kept as {} for inspection", to.display()),
        Err(e) => {
            log::warn!("cannot keep {} for inspection: {e}", from.display());
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    /// A deletion is answered only for a name the rule selects (the symlink walk of a copy is
    /// `mirrorfs::copycheck`'s, tested there).
    #[test]
    fn deletions_only_for_what_the_rule_selects() {
        let p = mirrorfs::rule::Pattern::parse("/p/a/").unwrap();
        let f = mirrorfs::rule::Pattern::parse("/p/a/*.doc").unwrap();
        assert!(super::selects(&f, b"/p/a/gone.doc"));
        assert!(super::selects(&f, b"/p/a"));
        assert!(!super::selects(&f, b"/p/a/../b/gone.doc"));
        assert!(!super::selects(&f, b"/p/a/x.txt"));
        assert!(!super::selects(&p, b"/elsewhere/gone"));
        assert!(super::may_copy(&f, b"/p/a/x.doc"));
        assert!(!super::may_copy(&f, b"/p"));
    }
}
