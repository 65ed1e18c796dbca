//! Synchronous mirroring (issue 15, seeds/003 claims 19-20): a durability point of a file
//! that a `sync` rule selects returns only once every site of the rule acknowledged the
//! file's entries up to that point.
//!
//! * **What waits.** The FUSE adapter runs every namespace change, `fsync`, `fsyncdir` and
//!   write inside a [`collect`] scope. In a namespace change the recorder notes, for each
//!   entry it appends for a sync rule, the journal position just past it ([`note_entry`]);
//!   `fsync`, `fsyncdir` and writes through an `O_SYNC`/`O_DSYNC` handle note the journal's
//!   end for the sync rules of the file ([`note_point`]). Plain writes note nothing.
//! * **No request thread waits.** When a scope noted anything, the adapter hands its reply
//!   to [`SyncWait::defer`], which sends it once the sites are past the positions: many
//!   durability points wait at once, and share mirror-sendd's round trips and the router's
//!   fsyncs (group commit), while the request threads go on serving other calls.
//! * **Where the acknowledgements come from.** A watcher thread long-polls mirror-sendd's
//!   control socket ([`SenderRequest::Acks`]): each answer carries every site's acknowledged
//!   position (entries durable in its router logs), the position its router applied, and
//!   whether the site is connected or blocked.
//! * **Losing a site.** A site that is blocked, or has not acknowledged within the rule's
//!   `--sync-timeout` (a site still being connected to, and a mirror-sendd that is not
//!   running, count as silent), is *lost* for the rule: `degrade` lets the waiting calls
//!   return and later ones go without waiting; `fail` fails them with `EIO`, and refuses
//!   namespace changes of the rule's names before they are made ([`SyncWait::refusal`])
//!   while the site is out of sync. Either way the rule is back in sync for the site once the
//!   site is connected again and has acknowledged everything the journal held when it was
//!   (its backlog drained).
//!
//! One ordered stream per site: a durability point waits for the site to acknowledge its
//! position, and so for the entries of that site before it too.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::control::{SenderRequest, SenderResponse, SiteAck};
use crate::journal::Position;
use crate::matcher::Matcher;
use crate::rule::{Mode, OnSyncLoss, Rule, SyncPoint};

/// A durability point's wait for one rule: every site of `rule` past `upto`.
#[derive(Debug, Clone)]
pub struct Need {
    /// The sync rule.
    pub rule: Arc<Rule>,
    /// Everything before this journal position must be acknowledged.
    pub upto: Position,
}

/// What a deferred reply is given: `Ok`, or the errno to fail with.
pub type Done = Box<dyn FnOnce(Result<(), i32>) + Send>;

struct Scope {
    namespace: bool,
    needs: Vec<Need>,
}

thread_local! {
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Restores the scope that was current before [`collect`], even if its body panics.
struct ScopeGuard(Option<Option<Scope>>);

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        if let Some(outer) = self.0.take() {
            SCOPE.with(|s| *s.borrow_mut() = outer);
        }
    }
}

/// Runs `f` (one request), collecting what its durability points wait for. `namespace`: the
/// request changes names or attributes (every entry of a sync rule it appends waits).
pub fn collect<T>(namespace: bool, f: impl FnOnce() -> T) -> (T, Vec<Need>) {
    let outer = SCOPE.with(|s| {
        s.borrow_mut().replace(Scope {
            namespace,
            needs: Vec::new(),
        })
    });
    let guard = ScopeGuard(Some(outer));
    let r = f();
    let needs = SCOPE
        .with(|s| s.borrow_mut().take())
        .map(|s| s.needs)
        .unwrap_or_default();
    drop(guard);
    (r, needs)
}

/// Whether the current request is a namespace change (its sync rules' losses refuse it).
pub fn in_namespace_change() -> bool {
    SCOPE.with(|s| s.borrow().as_ref().is_some_and(|s| s.namespace))
}

fn note(rule: &Arc<Rule>, upto: Position, s: &mut Scope) {
    match s.needs.iter_mut().find(|n| n.rule.id == rule.id) {
        Some(n) => n.upto = n.upto.max(upto),
        None => s.needs.push(Need {
            rule: rule.clone(),
            upto,
        }),
    }
}

/// An entry of `rule` was appended, ending at `upto`: a namespace change waits for it.
pub fn note_entry(rule: &Arc<Rule>, upto: Position) {
    if rule.spec.mode != Mode::Sync {
        return;
    }
    SCOPE.with(|s| {
        if let Some(s) = s.borrow_mut().as_mut().filter(|s| s.namespace) {
            note(rule, upto, s);
        }
    });
}

/// A durability point (fsync, fsyncdir, an O_SYNC write) of a name that `rules` select:
/// it waits for their sites up to `upto` (the journal's end).
pub fn note_point(rules: &[Arc<Rule>], upto: Position) {
    SCOPE.with(|s| {
        if let Some(s) = s.borrow_mut().as_mut() {
            for r in rules.iter().filter(|r| r.spec.mode == Mode::Sync) {
                note(r, upto, s);
            }
        }
    });
}

/// Whether any of `rules` is a sync rule.
pub fn any_sync(rules: &[Arc<Rule>]) -> bool {
    rules.iter().any(|r| r.spec.mode == Mode::Sync)
}

/// How a sync rule stands with one of its sites (`mirror-ctl status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The rule's id.
    pub rule: i64,
    /// Its pattern.
    pub pattern: String,
    /// The site.
    pub site: String,
    /// `in sync`, `degraded` (policy degrade) or `out of sync` (policy fail).
    pub state: String,
    /// Since when it is not in sync (seconds since the epoch).
    pub since: Option<u64>,
    /// Why.
    pub why: Option<String>,
    /// The site is connected again and acknowledging what the journal held then: how many
    /// journal bytes are still to be acknowledged.
    pub catching_up: Option<u64>,
    /// What it waits for (`durable`, `applied`).
    pub sync_point: String,
    /// `degrade` or `fail`.
    pub on_sync_loss: String,
}

/// A site lost for a rule.
#[derive(Debug, Clone)]
struct Loss {
    since: SystemTime,
    why: String,
    /// Once the site is healthy again: the journal's end then, which it must acknowledge.
    catch_up_to: Option<Position>,
}

struct Waiter {
    needs: Vec<Need>,
    since: Instant,
    done: Done,
}

#[derive(Default)]
struct State {
    /// When mirror-sendd last answered.
    heard: Option<Instant>,
    sites: HashMap<String, SiteAck>,
    waiters: Vec<Waiter>,
    /// (rule id, site) → loss.
    lost: HashMap<(i64, String), Loss>,
}

/// mirror-sendd counts as not running once it has not answered for this long.
const SENDER_SILENT: Duration = Duration::from_secs(3);
/// How long one long poll may wait at mirror-sendd.
const POLL_WAIT: Duration = Duration::from_millis(250);
/// How often deadlines are looked at while calls wait.
const TICK: Duration = Duration::from_millis(20);
/// How often the ticker looks while nothing waits (a new wait wakes it at once).
const IDLE_TICK: Duration = Duration::from_secs(1);

/// The waits of a mount's durability points on its sites.
pub struct SyncWait {
    state: Mutex<State>,
    changed: Condvar,
    matcher: Arc<Matcher>,
    /// The journal's end now.
    end: OnceLock<Box<dyn Fn() -> Position + Send + Sync>>,
    journal_dir: PathBuf,
    stop: AtomicBool,
    /// mirror-sendd's control socket.
    sender: OnceLock<PathBuf>,
}

impl std::fmt::Debug for SyncWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncWait").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SyncWait {
    /// Waits of the rules `matcher` holds, on the journal in `journal_dir`.
    pub fn new(matcher: Arc<Matcher>, journal_dir: PathBuf) -> SyncWait {
        SyncWait {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            matcher,
            end: OnceLock::new(),
            journal_dir,
            stop: AtomicBool::new(false),
            sender: OnceLock::new(),
        }
    }

    /// Starts following mirror-sendd (its control socket `sender`) and the deadlines; `end`
    /// tells the journal's end.
    pub fn start(
        self: &Arc<Self>,
        sender: PathBuf,
        end: Box<dyn Fn() -> Position + Send + Sync>,
    ) -> std::io::Result<()> {
        let _ = self.end.set(end);
        let _ = self.sender.set(sender.clone());
        let me = self.clone();
        std::thread::Builder::new()
            .name("sync-acks".into())
            .spawn(move || me.follow(&sender))?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("sync-wait".into())
            .spawn(move || me.tick())?;
        Ok(())
    }

    /// Stops the threads (at unmount: the session has ended, no reply can go any more).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.changed.notify_all();
    }

    fn journal_end(&self) -> Option<Position> {
        self.end.get().map(|f| f())
    }

    /// Sends `done` its answer once every need is met (or its rule's policy decided).
    pub fn defer(&self, needs: Vec<Need>, done: Done) {
        let mut st = lock(&self.state);
        st.waiters.push(Waiter {
            needs,
            since: Instant::now(),
            done,
        });
        let ready = self.settle(&mut st);
        drop(st);
        // Its deadline is the ticker's from now on.
        self.changed.notify_all();
        finish(ready);
    }

    /// Whether any rule of the current table is a sync rule (nothing to follow otherwise).
    fn any_sync_rule(&self) -> bool {
        any_sync(self.matcher.load().rules())
    }

    /// Why a namespace change of names that `rules` select must be refused before it is
    /// made: a sync rule with `--on-sync-loss fail` whose site is out of sync (a blocked
    /// site is lost as soon as the poll says so: [`SyncWait::settle`] runs with each answer).
    pub fn refusal(&self, rules: &[Arc<Rule>]) -> Option<String> {
        let fail =
            |r: &&Arc<Rule>| r.spec.mode == Mode::Sync && r.spec.sync.on_loss == OnSyncLoss::Fail;
        if !rules.iter().any(|r| fail(&r)) {
            return None;
        }
        let st = lock(&self.state);
        for r in rules.iter().filter(fail) {
            for site in &r.spec.sites {
                let site = site.to_string();
                let Some(l) = st.lost.get(&(r.id, site.clone())) else {
                    continue;
                };
                return Some(format!(
                    "rule {} ({}): site {site} is out of sync since {} ({}); with --on-sync-loss fail, changes of its names are refused until the site caught up",
                    r.id,
                    r.spec.pattern,
                    crate::logging::utc_secs(epoch_secs(l.since)),
                    l.why
                ));
            }
        }
        None
    }

    /// Every sync rule with each of its sites, as it stands.
    pub fn status(&self) -> Vec<SyncStatus> {
        let table = self.matcher.load();
        let st = lock(&self.state);
        let mut out = Vec::new();
        for r in table.rules().iter().filter(|r| r.spec.mode == Mode::Sync) {
            for site in &r.spec.sites {
                let site = site.to_string();
                let loss = st.lost.get(&(r.id, site.clone()));
                let state = match (loss, r.spec.sync.on_loss) {
                    (None, _) => "in sync",
                    (Some(_), OnSyncLoss::Degrade) => "degraded",
                    (Some(_), OnSyncLoss::Fail) => "out of sync",
                };
                let catching_up = loss.and_then(|l| l.catch_up_to).map(|to| {
                    let at = st
                        .sites
                        .get(&site)
                        .and_then(|a| reached(a, r.spec.sync.point))
                        .unwrap_or(Position::START);
                    bytes_between(&self.journal_dir, at, to)
                });
                out.push(SyncStatus {
                    rule: r.id,
                    pattern: r.spec.pattern.to_string(),
                    site,
                    state: state.into(),
                    since: loss.map(|l| epoch_secs(l.since)),
                    why: loss.map(|l| l.why.clone()),
                    catching_up,
                    sync_point: r.spec.sync.point.as_str().into(),
                    on_sync_loss: r.spec.sync.on_loss.as_str().into(),
                });
            }
        }
        out
    }

    /// Records that `site` is lost for rule `r`.
    fn lose(&self, st: &mut State, r: &Rule, site: &str, why: String) {
        let key = (r.id, site.to_string());
        if st.lost.contains_key(&key) {
            return;
        }
        let what = match r.spec.sync.on_loss {
            OnSyncLoss::Degrade => "degraded: durability points of its files no longer wait for the site until it caught up",
            OnSyncLoss::Fail => "out of sync (--on-sync-loss fail): fsync and namespace changes of its files fail with EIO until the site caught up; nothing written is lost",
        };
        let reason = format!(
            "sync rule {} ({}) lost site {site} ({why}); the rule is {what}",
            r.id, r.spec.pattern
        );
        match r.spec.sync.on_loss {
            OnSyncLoss::Degrade => log::warn!("{reason}"),
            OnSyncLoss::Fail => log::error!("{reason}"),
        }
        // mirror-sendd logs it and runs its --on-block command (in the background: a stopped
        // sender never holds this).
        if let Some(sock) = self.sender.get().cloned() {
            let req = SenderRequest::SyncLost {
                site: site.to_string(),
                reason,
            };
            let _ = std::thread::Builder::new()
                .name("sync-lost".into())
                .spawn(move || {
                    let r: std::io::Result<SenderResponse> =
                        crate::control::request_within(&sock, &req, Duration::from_secs(5));
                    if let Err(e) = r {
                        log::debug!("cannot tell mirror-sendd: {e}");
                    }
                });
        }
        st.lost.insert(
            key,
            Loss {
                since: SystemTime::now(),
                why,
                catch_up_to: None,
            },
        );
    }

    /// Looks at every loss (back in sync?) and every waiter (done?); the answers to send.
    fn settle(&self, st: &mut State) -> Vec<(Done, Result<(), i32>)> {
        let table = self.matcher.load();
        let up = sender_up(st);
        if !up {
            st.sites.clear();
        }
        // Losses of rules gone or no longer sync end; healthy sites catch up.
        let end = self.journal_end();
        let sites = &st.sites;
        st.lost.retain(|(id, site), loss| {
            let Some(r) = table
                .rules()
                .iter()
                .find(|r| r.id == *id && r.spec.mode == Mode::Sync)
            else {
                return false;
            };
            let healthy = sites
                .get(site)
                .filter(|a| a.connected && a.blocked.is_none());
            let Some(a) = healthy else {
                loss.catch_up_to = None;
                return true;
            };
            let to = *loss
                .catch_up_to
                .get_or_insert(end.unwrap_or(Position::START));
            if reached(a, r.spec.sync.point).is_some_and(|p| p >= to) {
                log::info!(
                    "sync rule {} ({}): site {site} caught up; in sync again",
                    r.id,
                    r.spec.pattern
                );
                return false;
            }
            true
        });
        // A blocked site is lost for every sync rule naming it at once, not at the rule's
        // next durability point: status says so, and a fail rule refuses changes from now.
        if up {
            for r in table.rules().iter().filter(|r| r.spec.mode == Mode::Sync) {
                for site in &r.spec.sites {
                    let site = site.to_string();
                    let blocked = st.sites.get(&site).and_then(|a| a.blocked.clone());
                    if let Some(b) = blocked {
                        self.lose(st, r, &site, format!("site blocked: {b}"));
                    }
                }
            }
        }
        let now = Instant::now();
        let mut ready = Vec::new();
        let mut i = 0;
        while i < st.waiters.len() {
            match self.verdict(st, i, now, up) {
                Some(result) => {
                    let w = st.waiters.swap_remove(i);
                    ready.push((w.done, result));
                }
                None => i += 1,
            }
        }
        ready
    }

    /// Whether waiter `i` is done, and how.
    fn verdict(&self, st: &mut State, i: usize, now: Instant, up: bool) -> Option<Result<(), i32>> {
        let mut pending = false;
        let mut failed = false;
        let needs = st.waiters[i].needs.clone();
        let since = st.waiters[i].since;
        for need in &needs {
            let r = &need.rule;
            for site in &r.spec.sites {
                let site = site.to_string();
                if let Some(_loss) = st.lost.get(&(r.id, site.clone())) {
                    failed |= r.spec.sync.on_loss == OnSyncLoss::Fail;
                    continue;
                }
                let ack = st.sites.get(&site);
                if ack
                    .and_then(|a| reached(a, r.spec.sync.point))
                    .is_some_and(|p| p >= need.upto)
                {
                    continue;
                }
                let why = if let Some(b) = ack.and_then(|a| a.blocked.clone()) {
                    Some(format!("site blocked: {b}"))
                } else if now.duration_since(since) >= r.spec.sync.timeout {
                    Some(format!(
                        "no acknowledgement within the sync timeout of {}{}",
                        crate::units::show_duration(r.spec.sync.timeout),
                        if up {
                            ""
                        } else {
                            " (mirror-sendd is not running)"
                        }
                    ))
                } else {
                    None
                };
                match why {
                    Some(why) => {
                        self.lose(st, r, &site, why);
                        failed |= r.spec.sync.on_loss == OnSyncLoss::Fail;
                    }
                    None => pending = true,
                }
            }
        }
        if failed {
            Some(Err(libc::EIO))
        } else if pending {
            None
        } else {
            Some(Ok(()))
        }
    }

    /// Follows mirror-sendd's acknowledgements until stopped (connecting again with a
    /// growing pause while it is not running).
    fn follow(&self, sender: &Path) {
        let mut pause = Duration::from_millis(100);
        let mut generation = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            if !self.any_sync_rule() {
                // No sync rule: no poll (a mount of async rules costs mirror-sendd nothing).
                self.sleep(POLL_WAIT);
                continue;
            }
            let mut client = match crate::control::Client::connect(sender, Duration::from_secs(5)) {
                Ok(c) => c,
                Err(e) => {
                    log::debug!("mirror-sendd's socket {}: {e}", sender.display());
                    self.sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            pause = Duration::from_millis(100);
            while !self.stop.load(Ordering::Relaxed) && self.any_sync_rule() {
                let req = SenderRequest::Acks {
                    after: generation,
                    wait_ms: POLL_WAIT.as_millis() as u64,
                };
                match client.ask::<_, SenderResponse>(&req) {
                    Ok(SenderResponse::Acks {
                        generation: g,
                        sites,
                    }) => {
                        generation = g;
                        let mut st = lock(&self.state);
                        st.heard = Some(Instant::now());
                        st.sites = sites.into_iter().map(|a| (a.site.clone(), a)).collect();
                        let ready = self.settle(&mut st);
                        drop(st);
                        finish(ready);
                    }
                    Ok(other) => {
                        log::warn!("mirror-sendd answered the acknowledgement poll with {other:?}; asking again in a second");
                        self.sleep(Duration::from_secs(1));
                        break;
                    }
                    Err(e) => {
                        log::debug!("mirror-sendd's socket {}: {e}", sender.display());
                        self.sleep(pause);
                        break;
                    }
                }
            }
        }
    }

    /// Looks at the deadlines until stopped.
    fn tick(&self) {
        let mut st = lock(&self.state);
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let ready = self.settle(&mut st);
            if !ready.is_empty() {
                drop(st);
                finish(ready);
                st = lock(&self.state);
                continue;
            }
            // Deadlines are those of waiting calls; losses move with the poll's answers.
            let wait = if st.waiters.is_empty() {
                IDLE_TICK
            } else {
                TICK
            };
            st = self
                .changed
                .wait_timeout(st, wait)
                .map_or_else(|p| p.into_inner().0, |(g, _)| g);
        }
    }

    fn sleep(&self, d: Duration) {
        let deadline = Instant::now() + d;
        while !self.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::thread::sleep(TICK.min(deadline.saturating_duration_since(Instant::now())));
        }
    }
}

fn sender_up(st: &State) -> bool {
    st.heard.is_some_and(|t| t.elapsed() < SENDER_SILENT)
}

/// Where a site stands for `point`.
fn reached(a: &SiteAck, point: SyncPoint) -> Option<Position> {
    match point {
        SyncPoint::Durable => Some(a.acked),
        SyncPoint::Applied => a.applied,
    }
}

fn finish(ready: Vec<(Done, Result<(), i32>)>) {
    for (done, r) in ready {
        done(r);
    }
}

/// Journal bytes from `a` to `b` (segment sizes as the files are now).
fn bytes_between(dir: &Path, a: Position, b: Position) -> u64 {
    if b <= a {
        return 0;
    }
    if a.segment == b.segment {
        return b.offset - a.offset;
    }
    let size =
        |seg: u64| std::fs::metadata(crate::journal::segment_path(dir, seg)).map_or(0, |m| m.len());
    let mut n = size(a.segment).saturating_sub(a.offset);
    for seg in a.segment.max(1) + 1..b.segment {
        n += size(seg);
    }
    n + b.offset
}

/// Whether `rule` may select names directly in the directory `dir` (a full name).
pub fn holds_names(rule: &Rule, dir: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let base = rule.spec.pattern.source_dir().as_os_str().as_bytes();
    let base = base.strip_suffix(b"/").unwrap_or(base);
    if dir == base {
        return true;
    }
    rule.spec.pattern.kind().is_subtree()
        && dir.starts_with(base)
        && dir.get(base.len()) == Some(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::RuleTable;
    use crate::rule::SyncOpts;

    fn sync_rule(id: i64, on_loss: OnSyncLoss, timeout: Duration) -> Rule {
        let mut r = crate::matcher::tests::rule(id, &format!("/p/r{id}/"));
        r.spec.mode = Mode::Sync;
        r.spec.sync = SyncOpts {
            timeout,
            on_loss,
            ..SyncOpts::default()
        };
        r
    }

    fn waits(rules: Vec<Rule>) -> (Arc<SyncWait>, Vec<Arc<Rule>>) {
        let m = Arc::new(Matcher::new(RuleTable::build(rules, 1)));
        let rules = m.load().rules().to_vec();
        let w = Arc::new(SyncWait::new(m, PathBuf::from("/nonexistent")));
        let _ = w.end.set(Box::new(|| Position::new(1, 500)));
        (w, rules)
    }

    fn hear(w: &SyncWait, acked: Position, blocked: Option<&str>) {
        let mut st = lock(&w.state);
        st.heard = Some(Instant::now());
        st.sites.insert(
            "h:1".into(),
            SiteAck {
                site: "h:1".into(),
                acked,
                applied: None,
                connected: true,
                blocked: blocked.map(String::from),
            },
        );
        let ready = w.settle(&mut st);
        drop(st);
        finish(ready);
    }

    fn deferred(w: &SyncWait, rule: &Arc<Rule>, upto: Position) -> mpsc::Receiver<Result<(), i32>> {
        let (tx, rx) = mpsc::channel();
        let need = Need {
            rule: rule.clone(),
            upto,
        };
        w.defer(
            vec![need],
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx
    }

    use std::sync::mpsc;

    #[test]
    fn scopes_collect_entries_of_sync_rules_in_namespace_changes_only() {
        let (_, rules) = waits(vec![
            sync_rule(1, OnSyncLoss::Degrade, Duration::from_secs(1)),
            crate::matcher::tests::rule(2, "/p/a/"),
        ]);
        let ((), needs) = collect(true, || {
            note_entry(&rules[0], Position::new(1, 10));
            note_entry(&rules[0], Position::new(1, 30));
            note_entry(&rules[1], Position::new(1, 40));
            assert!(in_namespace_change());
            // A nested scope keeps its own.
            let ((), inner) = collect(false, || note_entry(&rules[0], Position::new(1, 50)));
            assert!(inner.is_empty());
            assert!(in_namespace_change());
        });
        assert_eq!(needs.len(), 1);
        assert_eq!(needs[0].upto, Position::new(1, 30));
        assert!(!in_namespace_change());
        let ((), needs) = collect(false, || {
            note_entry(&rules[0], Position::new(1, 10));
            note_point(&rules, Position::new(2, 7));
        });
        assert_eq!(needs.len(), 1);
        assert_eq!((needs[0].rule.id, needs[0].upto), (1, Position::new(2, 7)));
        // Outside any scope nothing is noted (and nothing breaks).
        note_point(&rules, Position::new(3, 0));
    }

    #[test]
    fn a_blocked_site_is_lost_for_every_sync_rule_at_once() {
        let (w, rules) = waits(vec![
            sync_rule(1, OnSyncLoss::Degrade, Duration::from_secs(60)),
            sync_rule(2, OnSyncLoss::Fail, Duration::from_secs(60)),
        ]);
        hear(&w, Position::new(1, 10), None);
        assert!(w.status().iter().all(|s| s.state == "in sync"));
        hear(&w, Position::new(1, 10), Some("no heartbeat"));
        let st = w.status();
        assert_eq!(
            (st[0].state.as_str(), st[1].state.as_str()),
            ("degraded", "out of sync")
        );
        assert!(w.refusal(&rules[1..]).is_some());
    }

    #[test]
    fn a_wait_ends_when_the_site_acknowledged_its_position() {
        let (w, rules) = waits(vec![sync_rule(
            1,
            OnSyncLoss::Fail,
            Duration::from_secs(60),
        )]);
        hear(&w, Position::new(1, 100), None);
        let rx = deferred(&w, &rules[0], Position::new(1, 100));
        assert_eq!(rx.try_recv(), Ok(Ok(())), "acknowledged already: at once");
        let rx = deferred(&w, &rules[0], Position::new(1, 200));
        assert!(rx.try_recv().is_err());
        hear(&w, Position::new(1, 199), None);
        assert!(rx.try_recv().is_err());
        hear(&w, Position::new(2, 24), None);
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        assert_eq!(w.status()[0].state, "in sync");
    }

    #[test]
    fn a_lost_site_degrades_or_fails_and_is_in_sync_again_once_caught_up() {
        let (w, rules) = waits(vec![
            sync_rule(1, OnSyncLoss::Degrade, Duration::from_millis(1)),
            sync_rule(2, OnSyncLoss::Fail, Duration::from_secs(60)),
        ]);
        hear(&w, Position::new(1, 10), None);
        // Past its timeout: degraded, the call returns.
        let rx = deferred(&w, &rules[0], Position::new(1, 20));
        std::thread::sleep(Duration::from_millis(5));
        hear(&w, Position::new(1, 10), None);
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        let st = w.status();
        assert_eq!(st[0].state, "degraded");
        // A blocked site: the fail rule's call fails, and its changes are refused.
        let rx = deferred(&w, &rules[1], Position::new(1, 20));
        hear(&w, Position::new(1, 10), Some("network down"));
        assert_eq!(rx.try_recv(), Ok(Err(libc::EIO)));
        assert!(w
            .refusal(&rules[1..])
            .is_some_and(|r| r.contains("network down")));
        assert!(w.refusal(&rules[..1]).is_none(), "degrade never refuses");
        assert_eq!(w.status()[1].state, "out of sync");
        // Back, but behind the journal's end (1:500): still out of sync, catching up.
        hear(&w, Position::new(1, 400), None);
        assert_eq!(w.status()[1].catching_up, Some(100));
        assert!(w.refusal(&rules[1..]).is_some());
        hear(&w, Position::new(1, 500), None);
        assert!(w.refusal(&rules[1..]).is_none());
        assert!(w.status().iter().all(|s| s.state == "in sync"));
    }
}
