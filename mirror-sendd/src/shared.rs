//! What the site links of a running sender share: the send table (swapped when the rules
//! change), the SFA log (acknowledged positions, written at most every few milliseconds and
//! whenever a link goes idle), the sites' states (blocked or not), and the site id and journal.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use mirrorfs::control::SiteAck;
use mirrorfs::journal::Position;
use mirrorfs::rulesdb::{RulesDb, RulesDbError};
use mirrorfs::sfa::Sfa;

use crate::sites::Sites;
use crate::table::SendTable;

/// How long an acknowledged position may wait in memory before it is written.
const SFA_DELAY: Duration = Duration::from_millis(50);

/// Locks `m`, recovering the data if a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct SfaState {
    sfa: Sfa,
    /// What the file on disk says (it lags `sfa` by up to `SFA_DELAY`): journal segments are
    /// removed only below it, so that the file never points into a removed segment, whatever
    /// stops the sender (a kill -9, a power loss) before it writes the next update.
    stored: Sfa,
    dirty: bool,
    written: Instant,
}

/// Shared state of the sender.
pub struct Shared {
    /// This source's site id.
    pub site_id: String,
    /// The journal directory.
    pub journal_dir: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Every site's state: blocked or not, heartbeats, errors.
    pub sites: Sites,
    /// Held while a site's dirty set and acknowledged position change together.
    pub dirty_lock: Mutex<()>,
    /// The current send table.
    pub table: ArcSwap<SendTable>,
    /// The routers' keys.
    pub keys: Arc<mirrorfs::wire::auth::KeyRing>,
    sfa_path: PathBuf,
    sfa: Mutex<SfaState>,
    db: Mutex<(RulesDb, i64)>,
    /// Grows whenever a site's acknowledged or applied position moves (the long poll of
    /// sync rules, [`Shared::acks_after`]).
    acks: Mutex<Acks>,
    acks_moved: Condvar,
    /// Sync barriers of spool sites: seal once the file holds this position (asked then).
    pub spool_barriers: Mutex<HashMap<String, (Position, Instant)>>,
}

#[derive(Default)]
struct Acks {
    generation: u64,
    /// Where each site's router applied up to, as it last said.
    applied: HashMap<String, Position>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("site_id", &self.site_id)
            .finish()
    }
}

impl Shared {
    /// New shared state.
    pub fn new(
        site_id: String,
        state: &mirrorfs::state::StateDir,
        db: RulesDb,
        sfa: Sfa,
        sites: Sites,
        keys: mirrorfs::wire::auth::KeyRing,
    ) -> Result<Arc<Shared>, RulesDbError> {
        let seen = db.data_version()?;
        let (version, rules) = db.snapshot()?;
        let table = SendTable::new(version, rules);
        mirrorfs::shipped::init(&state.root().join("shipped.db"));
        Ok(Arc::new(Shared {
            site_id,
            journal_dir: state.journal_dir(),
            state_dir: state.root().to_path_buf(),
            sites,
            dirty_lock: Mutex::new(()),
            table: ArcSwap::from_pointee(table),
            keys: Arc::new(keys),
            sfa_path: state.sfa_path(),
            sfa: Mutex::new(SfaState {
                stored: sfa.clone(),
                sfa,
                dirty: false,
                written: Instant::now(),
            }),
            db: Mutex::new((db, seen)),
            acks: Mutex::new(Acks::default()),
            acks_moved: Condvar::new(),
            spool_barriers: Mutex::new(HashMap::new()),
        }))
    }

    /// Reloads the send table if the rules database changed since the last look; the
    /// current table. Links call it when an entry names a rule they do not know (a rule added
    /// a moment ago), so no entry is skipped because the table lagged behind the mount's.
    pub fn refresh(&self) -> Arc<SendTable> {
        let mut g = lock(&self.db);
        let (db, seen) = &mut *g;
        match db.data_version() {
            Ok(v) if v == *seen => {}
            Ok(v) => match db.snapshot() {
                Ok((version, rules)) => {
                    *seen = v;
                    let t = SendTable::new(version, rules);
                    log::info!(
                        "rules changed: configuration version {}, {} sites",
                        t.version,
                        t.sites().len()
                    );
                    self.table.store(Arc::new(t));
                }
                Err(e) => log::error!("cannot reload the rules, keeping the old ones: {e}"),
            },
            Err(e) => log::warn!("rules database: {e}"),
        }
        self.table.load_full()
    }

    /// The journal stream id.
    pub fn stream(&self) -> u64 {
        lock(&self.sfa).sfa.stream
    }

    /// The journal was made anew (positions start again at segment 1): a new stream id, so
    /// that routers do not take its entries for ones they have, and every site from its start.
    pub fn restart_stream(&self) {
        let mut s = lock(&self.sfa);
        s.sfa.stream = mirrorfs::sfa::random_u64();
        s.sfa.acked.clear();
        s.dirty = true;
        self.write(&mut s);
    }

    /// Where `site` resumes: the position after its last acknowledged entry.
    pub fn acked(&self, site: &str) -> Position {
        lock(&self.sfa).sfa.get(site)
    }

    /// Records that `site` acknowledged everything before `next`; writes the log when
    /// `now` or when the last write is older than a few milliseconds.
    pub fn set_acked(&self, site: &str, next: Position, now: bool) {
        let mut s = lock(&self.sfa);
        let cur = s.sfa.get(site);
        if next > cur {
            s.sfa.acked.insert(site.to_string(), next);
            s.dirty = true;
            self.acks_moved();
        }
        if s.dirty && (now || s.written.elapsed() >= SFA_DELAY) {
            self.write(&mut s);
        }
    }

    /// `site`'s router applied everything before `next` to the backup files.
    pub fn set_applied(&self, site: &str, next: Position) {
        let mut a = lock(&self.acks);
        let cur = a.applied.entry(site.to_string()).or_insert(Position::START);
        if next > *cur {
            *cur = next;
            a.generation += 1;
            self.acks_moved.notify_all();
        }
    }

    fn acks_moved(&self) {
        lock(&self.acks).generation += 1;
        self.acks_moved.notify_all();
    }

    /// Every site's positions once they moved past generation `after`, or after `wait`
    /// (the long poll of a mount's sync rules, `SenderRequest::Acks`).
    pub fn acks_after(&self, after: u64, wait: Duration) -> (u64, Vec<SiteAck>) {
        let deadline = Instant::now() + wait.min(Duration::from_secs(1));
        let mut a = lock(&self.acks);
        while a.generation <= after {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            a = self
                .acks_moved
                .wait_timeout(a, left)
                .map_or_else(|p| p.into_inner().0, |(g, _)| g);
        }
        let (generation, applied) = (a.generation, a.applied.clone());
        drop(a);
        let mut names = self.table.load().sites();
        for b in self.sites.all_blocked() {
            if !names.contains(&b.site) {
                names.push(b.site);
            }
        }
        let sites = names
            .into_iter()
            .map(|site| {
                let st = self.sites.state(&site, self.acked(&site));
                SiteAck {
                    applied: applied.get(&site).copied(),
                    site,
                    acked: st.acked,
                    connected: st.connected,
                    blocked: st.blocked.map(|b| b.reason),
                }
            })
            .collect();
        (generation, sites)
    }

    /// Writes pending changes of the log.
    pub fn flush(&self) {
        let mut s = lock(&self.sfa);
        if s.dirty {
            self.write(&mut s);
        }
    }

    fn write(&self, s: &mut SfaState) {
        match s.sfa.store(&self.sfa_path) {
            Ok(()) => {
                s.dirty = false;
                s.written = Instant::now();
                s.stored = s.sfa.clone();
            }
            Err(e) => log::error!("{e}"),
        }
    }

    /// The oldest position some site of the current rules still needs, as the acknowledged
    /// positions on disk say (a segment removed past them would be a gap at the next start).
    pub fn oldest_needed(&self) -> Option<Position> {
        let sites = self.table.load().sites();
        let s = lock(&self.sfa);
        sites.iter().map(|site| s.stored.get(site)).min()
    }
}
