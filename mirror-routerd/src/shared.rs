//! The state a running router shares between its receive sessions and its router process:
//! the RT writer and what it has published, the configuration table and version table, what
//! each source has sent, the live sessions (to ask a source for a copy, or close those of a
//! source whose heartbeats stopped), the blocked-file log (seeds/002 [0069]-[0070]), the
//! copies asked of the sources ([`crate::resync`]) and the quarantine of damaged router logs
//! ([`crate::quarantine`]).
//!
//! At start, every pair of router logs is checked: a pair damaged where it holds
//! acknowledged entries is quarantined (and what it held asked for again) instead of stopping
//! the router; the router process does the same for damage it finds later.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use mirrorfs::blocked::{self, BlockedFile};
use mirrorfs::journal::Position;
use mirrorfs::wire::{codec, Msg};

use crate::config::{ConfigError, RouterDb, RouterTable, SourceState};
use crate::durable;
use crate::quarantine::{self, QuarantineError};
use crate::resync::{CopyRequest, CopyRequests};
use crate::rtlog::{self, RtError, RtRecord, RtWriter, HEADER_LEN};

/// Settings of a router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Backup root.
    pub root: PathBuf,
    /// Router state directory.
    pub state: PathBuf,
    /// RT pair size limit (bytes).
    pub rt_size: u64,
    /// Open backup files kept (LRU).
    pub max_open: usize,
    /// How often blocked backup files are retried.
    pub unblock_every: Duration,
    /// The source sites' keys.
    pub key_file: PathBuf,
    /// Limits on connections.
    pub limits: Limits,
    /// How much of the applied router logs is kept for references ([`crate::retain`]).
    pub retain: crate::retain::Retain,
}

/// Limits on what peers may hold open.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Authenticated sessions at once per source site (a sender needs one, `mirror-ctl rule
    /// add` one more for a moment).
    pub sessions_per_site: usize,
    /// Connections still in their handshake at once, from anyone.
    pub handshakes: usize,
    /// How long a connection may take to authenticate.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sessions_per_site: 4,
            handshakes: 64,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The sending half of a session: frames tagged with the MAC of the connection they go on.
///
/// A source session may have many connections ([`crate::conns`]); its messages go on the
/// first that works (the oldest), and a connection that fails to take one is dropped and
/// shut down. When the first changes, the last acknowledgement and a configuration request
/// not yet answered are sent again on the new first, since what went on the old one may be
/// lost (both are idempotent at the sender).
#[derive(Debug)]
pub struct PeerOut {
    conns: Vec<PeerConn>,
    /// A session without connections: the router's messages go here ([`crate::spool`]).
    back: Option<Arc<dyn Back>>,
    /// The last [`Msg::Ack`] sent.
    last_ack: Option<Msg>,
    /// The last [`Msg::SendConfig`] sent, until the configuration arrives.
    asked_config: Option<Msg>,
}

/// Where a session without connections sends the router's messages (a spool source's
/// acknowledgements and requests go back as files, [`crate::spool`]).
pub trait Back: Send + Sync + std::fmt::Debug {
    /// Takes one message of the router; an error ends the session.
    fn take(&self, msg: &Msg) -> Result<(), mirrorfs::wire::WireError>;
    /// The session ends.
    fn shutdown(&self);
}

/// One connection of a session, as [`PeerOut`] sends on it.
#[derive(Debug)]
struct PeerConn {
    id: u64,
    stream: TcpStream,
    mac: mirrorfs::wire::auth::FrameMac,
}

impl PeerConn {
    fn send(&mut self, msg: &Msg) -> Result<(), mirrorfs::wire::WireError> {
        let frame = codec::encode_sealed(msg, &mut self.mac)?;
        self.stream.write_all(&frame)?;
        Ok(())
    }
}

impl PeerOut {
    /// The half of `stream` that sends with `mac` (the session's first connection, id 0).
    pub fn new(stream: TcpStream, mac: mirrorfs::wire::auth::FrameMac) -> PeerOut {
        PeerOut {
            conns: vec![PeerConn { id: 0, stream, mac }],
            back: None,
            last_ack: None,
            asked_config: None,
        }
    }

    /// The half of a session without connections that hands the router's messages to
    /// `back`.
    pub fn back(back: Arc<dyn Back>) -> PeerOut {
        PeerOut {
            conns: Vec::new(),
            back: Some(back),
            last_ack: None,
            asked_config: None,
        }
    }

    /// Adds connection `id` of the session (it joined).
    pub fn add(&mut self, id: u64, stream: TcpStream, mac: mirrorfs::wire::auth::FrameMac) {
        self.conns.push(PeerConn { id, stream, mac });
    }

    /// Drops connection `id` (it ended) and shuts it down.
    pub fn remove(&mut self, id: u64) {
        let Some(i) = self.conns.iter().position(|c| c.id == id) else {
            return;
        };
        let c = self.conns.remove(i);
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        if i == 0 {
            self.resend_state();
        }
    }

    /// Connections of the session.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Takes the first connection out (to move it into another session's).
    pub fn take_first(&mut self) -> Option<(TcpStream, mirrorfs::wire::auth::FrameMac)> {
        (!self.conns.is_empty()).then(|| {
            let c = self.conns.remove(0);
            (c.stream, c.mac)
        })
    }

    /// Sends on connection `id` only.
    pub fn send_on(&mut self, id: u64, msg: &Msg) -> Result<(), mirrorfs::wire::WireError> {
        match self.conns.iter_mut().find(|c| c.id == id) {
            Some(c) => c.send(msg),
            None => Err(mirrorfs::wire::WireError::Closed),
        }
    }

    /// Sends the idempotent state of the session again on the first connection.
    fn resend_state(&mut self) {
        for m in [self.asked_config.clone(), self.last_ack.clone()]
            .into_iter()
            .flatten()
        {
            if self.send_first(&m).is_err() {
                return;
            }
        }
    }

    /// Sends on the first connection that takes it; the error of the last when none does.
    fn send_first(&mut self, msg: &Msg) -> Result<(), mirrorfs::wire::WireError> {
        if let Some(b) = &self.back {
            return b.take(msg);
        }
        loop {
            let Some(c) = self.conns.first_mut() else {
                return Err(mirrorfs::wire::WireError::Closed);
            };
            match c.send(msg) {
                Ok(()) => return Ok(()),
                Err(e) if self.conns.len() == 1 => return Err(e),
                Err(e) => {
                    log::info!("a connection of a session failed ({e}); going on with the others");
                    let c = self.conns.remove(0);
                    let _ = c.stream.shutdown(std::net::Shutdown::Both);
                    self.resend_state();
                }
            }
        }
    }

    /// Sends one frame.
    pub fn send(&mut self, msg: &Msg) -> Result<(), mirrorfs::wire::WireError> {
        match msg {
            Msg::Ack { .. } => self.last_ack = Some(msg.clone()),
            Msg::SendConfig { .. } => self.asked_config = Some(msg.clone()),
            Msg::ConfigOk { .. } => self.asked_config = None,
            _ => {}
        }
        self.send_first(msg)
    }

    /// Sends `msg` on every connection (each connection's keepalive); those that fail are
    /// dropped and shut down.
    pub fn send_all(&mut self, msg: &Msg) {
        if let Some(b) = &self.back {
            let _ = b.take(msg);
        }
        let mut failed = Vec::new();
        for c in &mut self.conns {
            if c.send(msg).is_err() {
                failed.push(c.id);
            }
        }
        for id in failed {
            self.remove(id);
        }
    }

    /// Ends the connections both ways.
    pub fn shutdown(&self) {
        if let Some(b) = &self.back {
            b.shutdown();
        }
        for c in &self.conns {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A place taken in a count, given back on drop.
#[derive(Debug)]
pub struct Seat {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        if let Some(n) = c.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.key);
            }
        }
    }
}

/// Errors starting a router.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Router logs.
    #[error(transparent)]
    Rt(#[from] RtError),
    /// Configuration database.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The blocked-file log, the copy requests or the quarantine index.
    #[error(transparent)]
    Blocked(#[from] blocked::BlockedError),
    /// Moving a damaged pair aside.
    #[error(transparent)]
    Quarantine(#[from] QuarantineError),
    /// The root.
    #[error("backup root {path}: {err}")]
    Root {
        /// The root.
        path: PathBuf,
        /// The error.
        err: std::io::Error,
    },
}

/// The configuration table as the database holds it, and with each rule's namespace from the
/// key file (rebuilt when the key file changes, so `router namespace` needs no restart).
#[derive(Debug, Default)]
struct Tables {
    stored: Arc<RouterTable>,
    granted: Arc<RouterTable>,
    keys: Option<Arc<mirrorfs::wire::auth::KeyFile>>,
}

/// Locks `m`, recovering the data if a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Shared state of a running router.
pub struct Router {
    /// Settings.
    pub cfg: RouterConfig,
    /// The RT writer (one batch at a time).
    pub rt: Mutex<RtWriter>,
    /// `(pair, rt1 end)` durable and visible to the router process.
    published: Mutex<(u64, u64)>,
    wake: Condvar,
    /// `(pair, rt1 end)` the router process has looked at (applied, or held for a blocked
    /// file), with its condition ([`Router::wait_looked`]).
    looked: Mutex<(u64, u64)>,
    looked_wake: Condvar,
    /// References of copies resolved from data the backup held, and their bytes (what was
    /// not sent again).
    refs: Mutex<(u64, u64)>,
    /// The retained pairs ([`crate::retain`]) and their bytes, as the router process last
    /// said: given up first when the router-log disk runs short.
    retained: Mutex<(Vec<u64>, u64)>,
    /// The configuration database.
    pub db: Mutex<RouterDb>,
    /// The configuration table, as stored and as granted by the keys it was last matched with.
    table: RwLock<Tables>,
    /// Configuration version per source site (memory only, seeds/002 [0059]).
    pub versions: Mutex<HashMap<String, u64>>,
    /// Per source site: stream and last journal position received completely.
    pub sources: Mutex<HashMap<String, SourceState>>,
    /// Live sessions by source site (the newest last), for requests to the sender.
    peers: Mutex<HashMap<String, Vec<Arc<Mutex<PeerOut>>>>>,
    /// Source sessions that further connections may join, by token.
    pub joinable: Mutex<HashMap<u64, Arc<crate::conns::Conns>>>,
    /// Copies asked of the sources and not arrived yet (durable).
    copies: Mutex<CopyRequests>,
    /// The source sites' keys.
    pub keys: mirrorfs::wire::auth::KeyRing,
    /// Connections by source site (and "" for those still in their handshake).
    seats: Arc<Mutex<HashMap<String, usize>>>,
    /// Blocked backup files by path (relative to the root), and whether the router process
    /// should look again at the entries it held back.
    blocked: Mutex<(BTreeMap<String, BlockedFile>, bool)>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("cfg", &self.cfg).finish()
    }
}

impl Router {
    /// Opens the router's state: recovers the RT logs (quarantining damaged pairs), loads
    /// the configuration, what each source already sent and the copies still to be asked.
    pub fn open(cfg: RouterConfig) -> Result<Arc<Router>, StartError> {
        // A root the router makes is private (a backup is never more readable than its
        // source); one the operator made keeps its mode.
        mirrorfs::state::durable_dir(&cfg.root, 0o700).map_err(|err| StartError::Root {
            path: cfg.root.clone(),
            err,
        })?;
        let root = cfg.root.canonicalize().map_err(|err| StartError::Root {
            path: cfg.root.clone(),
            err,
        })?;
        let cfg = RouterConfig { root, ..cfg };
        let rt_dir = cfg.state.join("rt");
        mirrorfs::state::private_dir(&rt_dir).map_err(|err| RtError::Io {
            path: rt_dir.clone(),
            err,
        })?;
        let db = RouterDb::open(&cfg.state.join("router.db"))?;
        let table = db.table()?;
        let mut sources = db.sources()?;
        let mut copies = CopyRequests::load(&cfg.state.join("resync"))?;
        let mut first = quarantine::highest(&cfg.state)? + 1;
        let mut asked = Vec::new();
        let mut gone_pairs = Vec::new();
        // Entries past the backup's durable point may be lost from the backup (a power
        // loss) even where RT1 says they were applied: their files are copied again.
        let durable_point = durable::load(&cfg.state);
        let mut suspect: Vec<(u64, u64, RtRecord)> = Vec::new();
        // Records still in the logs are newer than what the database says; those past the
        // durable point are suspects.
        let mut note = |n: u64, off: u64, r: &RtRecord| {
            if r.part.completes() {
                let s = sources.entry(r.site.clone()).or_default();
                if s.done.is_none_or(|d| d < r.pos) {
                    s.done = Some(r.pos);
                }
            }
            if (n, off) >= durable_point {
                suspect.push((n, off, r.clone()));
            }
        };
        let mut quarantined =
            |n: u64, reason: String, note: &mut dyn FnMut(u64, u64, &RtRecord)| {
                let (q, reqs, readable) =
                    quarantine::quarantine_pair(&cfg.state, &rt_dir, n, &reason, &table)?;
                log::error!("{}", quarantine::describe(&q));
                // Where in the pair each was is not kept: all of them count as past the
                // point when the pair does.
                let at = if n > durable_point.0 { 0 } else { u64::MAX };
                readable.iter().for_each(|r| note(n, at, r));
                asked.extend(reqs);
                gone_pairs.push(n);
                Ok::<(), StartError>(())
            };
        let pairs = rtlog::list_pairs(&rt_dir)?;
        let older = &pairs[..pairs.len().saturating_sub(1)];
        // The older pairs were complete when the next one started: any damage is in
        // acknowledged records.
        for &n in older {
            match inspect(&rt_dir, n)? {
                Ok(sv) => sv.records.iter().for_each(|(off, r)| note(n, *off, r)),
                Err(reason) => quarantined(n, reason, &mut note)?,
            }
        }
        // The newest through the writer's recovery (a torn tail past the committed end is
        // cut; damage before it is not). Bounded: each round quarantines one pair.
        let mut rt = None;
        for _ in 0..=pairs.len() + 1 {
            match RtWriter::open(&rt_dir, cfg.rt_size, first) {
                Ok(w) => {
                    rt = Some(w);
                    break;
                }
                Err(e) if e.is_damage() => {
                    let n = match &e {
                        RtError::Acknowledged { pair, .. } => *pair,
                        _ => rtlog::list_pairs(&rt_dir)?.last().copied().unwrap_or(0),
                    };
                    quarantined(n, e.to_string(), &mut note)?;
                    first = first.max(n + 1);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let Some(rt) = rt else {
            return Err(RtError::Corrupt {
                path: rt_dir,
                offset: 0,
                reason: "no pair of router logs could be opened".into(),
            }
            .into());
        };
        // The pair recovered by the writer (and the one it starts after a pair of another
        // format, or after a quarantined one).
        for n in rtlog::list_pairs(&rt_dir)? {
            if older.contains(&n) {
                continue;
            }
            let pair = rtlog::RtPair::open(&rt_dir, n)?;
            let end = if n == rt.end().0 {
                rt.end().1
            } else {
                pair.rt1_len()?
            };
            for (off, r) in pair.records(HEADER_LEN, end)? {
                note(n, off, &r);
            }
        }
        let mut held: BTreeMap<String, BlockedFile> =
            blocked::load_list::<BlockedFile>(&cfg.state.join("blocked"))?
                .into_iter()
                .map(|b| (b.path.clone(), b))
                .collect();
        // Entries held back for a blocked file were not applied (every entry that touches it
        // from its first held one on waits): nothing of them can be lost from the backup.
        let was_held = |n: u64, off: u64, r: &RtRecord| {
            crate::apply::targets(&table, r)
                .iter()
                .any(|t| held.get(t).is_some_and(|b| (b.pair, b.offset) <= (n, off)))
        };
        suspect.retain(|(n, off, r)| !was_held(*n, *off, r));
        let lost = durable::requests(suspect.iter().map(|(n, o, r)| (*n, *o, r)), &table);
        if !lost.is_empty() {
            log::info!(
                "{} entries are past the point up to which the backup was known to be durable (pair {} offset {}): asking the sources for fresh copies of the {} names they touch, in case a power loss took them",
                suspect.len(),
                durable_point.0,
                durable_point.1,
                lost.len()
            );
            asked.extend(lost);
        }
        if !asked.is_empty() {
            copies.add(asked, |site, crc| table.get(site, crc).map(|r| r.base()));
            copies.store()?;
        }
        log::info!(
            "router state {}: {} rules, {} sources, RT pair {}, {} copies to ask of the sources",
            cfg.state.display(),
            table.len(),
            sources.len(),
            rt.end().0,
            copies.len()
        );
        let published = rt.end();
        let before = held.len();
        held.retain(|_, b| !gone_pairs.contains(&b.pair));
        if held.len() != before {
            // Their held entries were in a quarantined pair: the copies asked replace them.
            log::info!(
                "{} blocked backup files held entries of a quarantined pair: they are retried",
                before - held.len()
            );
            blocked::store_list(&cfg.state.join("blocked"), held.values())?;
        }
        for b in held.values() {
            log::warn!(
                "backup file {} is blocked since {}: {}",
                b.path,
                mirrorfs::logging::utc_secs(b.since),
                b.reason
            );
        }
        Ok(Arc::new(Router {
            rt: Mutex::new(rt),
            published: Mutex::new(published),
            wake: Condvar::new(),
            looked: Mutex::new((0, 0)),
            looked_wake: Condvar::new(),
            refs: Mutex::new((0, 0)),
            retained: Mutex::new((Vec::new(), 0)),
            db: Mutex::new(db),
            table: RwLock::new(Tables {
                stored: Arc::new(table),
                ..Tables::default()
            }),
            versions: Mutex::new(HashMap::new()),
            sources: Mutex::new(sources),
            peers: Mutex::new(HashMap::new()),
            joinable: Mutex::new(HashMap::new()),
            copies: Mutex::new(copies),
            keys: mirrorfs::wire::auth::KeyRing::new(cfg.key_file.clone()),
            seats: Arc::default(),
            cfg,
            blocked: Mutex::new((held, false)),
        }))
    }

    /// A place for one more connection of `site` ("" for a connection still authenticating),
    /// unless it already has `max`.
    pub fn take_seat(&self, site: &str, max: usize) -> Option<Seat> {
        let mut c = lock(&self.seats);
        let n = c.entry(site.to_string()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Seat {
            counts: self.seats.clone(),
            key: site.to_string(),
        })
    }

    /// The blocked-file log.
    pub fn blocked_path(&self) -> PathBuf {
        self.cfg.state.join("blocked")
    }

    /// The blocked entry of backup file `rel`, if it is blocked.
    pub fn blocked_file(&self, rel: &str) -> Option<BlockedFile> {
        lock(&self.blocked).0.get(rel).cloned()
    }

    /// Whether any backup file is blocked.
    pub fn any_blocked(&self) -> bool {
        !lock(&self.blocked).0.is_empty()
    }

    /// Whether some backup file of source `site` is blocked (its entries held back).
    pub fn source_blocked(&self, site: &str) -> bool {
        lock(&self.blocked).0.values().any(|b| b.site == site)
    }

    /// Blocks backup file `b.path` (durably); whether it was not blocked before.
    pub fn block_file(&self, b: BlockedFile) -> bool {
        let mut g = lock(&self.blocked);
        if g.0.contains_key(&b.path) {
            return false;
        }
        g.0.insert(b.path.clone(), b);
        if let Err(e) = blocked::store_list(&self.blocked_path(), g.0.values()) {
            log::error!("cannot record the blocked files: {e}");
        }
        true
    }

    /// Unblocks the blocked files (all, or those at or under `path`) and asks the router
    /// process to retry their entries; the paths unblocked.
    pub fn unblock_files(&self, path: Option<&str>) -> Vec<String> {
        let under = |p: &str| {
            path.is_none_or(|x| {
                let x = x.trim_end_matches('/');
                p == x || p.strip_prefix(x).is_some_and(|r| r.starts_with('/'))
            })
        };
        let mut g = lock(&self.blocked);
        let paths: Vec<String> = g.0.keys().filter(|p| under(p)).cloned().collect();
        if paths.is_empty() {
            return paths;
        }
        for p in &paths {
            g.0.remove(p);
        }
        g.1 = true;
        if let Err(e) = blocked::store_list(&self.blocked_path(), g.0.values()) {
            log::error!("cannot record the blocked files: {e}");
        }
        drop(g);
        log::info!("retrying blocked backup files: {}", paths.join(", "));
        self.wake.notify_all();
        paths
    }

    /// Takes the request to look again at held entries.
    pub fn take_retry(&self) -> bool {
        std::mem::take(&mut lock(&self.blocked).1)
    }

    /// Records a live session of source `site`.
    pub fn add_peer(&self, site: &str, w: Arc<Mutex<PeerOut>>) {
        lock(&self.peers)
            .entry(site.to_string())
            .or_default()
            .push(w);
    }

    /// The connected sources and the last position received from each (read before a pass
    /// of the router process: once the pass is done, what they said was received is applied,
    /// but for blocked files).
    pub fn peer_dones(&self) -> Vec<(String, Position)> {
        let sites: Vec<String> = lock(&self.peers)
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        let sources = lock(&self.sources);
        sites
            .into_iter()
            .filter_map(|s| {
                let done = sources.get(&s).and_then(|x| x.done)?;
                Some((s, done))
            })
            .collect()
    }

    /// Forgets the session `w` of source `site` (it ended).
    pub fn remove_peer(&self, site: &str, w: &Arc<Mutex<PeerOut>>) {
        let mut peers = lock(&self.peers);
        if let Some(v) = peers.get_mut(site) {
            v.retain(|p| !Arc::ptr_eq(p, w));
            if v.is_empty() {
                peers.remove(site);
            }
        }
    }

    /// The newest live session of `site`.
    fn peer(&self, site: &str) -> Option<Arc<Mutex<PeerOut>>> {
        lock(&self.peers).get(site).and_then(|v| v.last().cloned())
    }

    /// Closes every session of source `site` (its heartbeats stopped); whether it had any.
    pub fn close_session(&self, site: &str) -> bool {
        let all = lock(&self.peers).remove(site).unwrap_or_default();
        for p in &all {
            lock(p).shutdown();
        }
        !all.is_empty()
    }

    /// The directory of the RT logs.
    pub fn rt_dir(&self) -> PathBuf {
        self.cfg.state.join("rt")
    }

    /// Makes `(pair, end)` visible to the router process and wakes it.
    pub fn publish(&self, end: (u64, u64)) {
        *lock(&self.published) = end;
        self.wake.notify_all();
    }

    /// What the router process may read.
    pub fn published(&self) -> (u64, u64) {
        *lock(&self.published)
    }

    /// The router process looked at every entry up to `end` (what was published when it
    /// started its pass).
    pub fn set_looked(&self, end: (u64, u64)) {
        let mut g = lock(&self.looked);
        if end > *g {
            *g = end;
            self.looked_wake.notify_all();
        }
    }

    /// Notes the references resolved since the router started, and their bytes.
    pub fn set_refs(&self, refs: (u64, u64)) {
        *lock(&self.refs) = refs;
    }

    /// Notes the retained pairs and their bytes.
    pub fn set_retained(&self, pairs: Vec<u64>, bytes: u64) {
        *lock(&self.retained) = (pairs, bytes);
    }

    /// The retained pairs and their bytes.
    pub fn retained(&self) -> (Vec<u64>, u64) {
        lock(&self.retained).clone()
    }

    /// Gives up every retained pair (the router-log disk is short of room): their files are
    /// removed (the router process forgets them at its next pass); how many.
    pub fn give_up_retained(&self) -> usize {
        let (pairs, _) = std::mem::take(&mut *lock(&self.retained));
        let dir = self.rt_dir();
        let mut n = 0;
        for p in pairs {
            for path in [
                crate::rtlog::rt1_path(&dir, p),
                crate::rtlog::rt2_path(&dir, p),
            ] {
                match std::fs::remove_file(&path) {
                    Ok(()) => n += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => log::error!("cannot remove retained {}: {e}", path.display()),
                }
            }
        }
        if n > 0 {
            log::warn!("the router-log disk is short of room: retained router logs given up");
            let _ = mirrorfs::state::fsync_dir(&dir);
        }
        n
    }

    /// References resolved since the router started, and their bytes.
    pub fn refs(&self) -> (u64, u64) {
        *lock(&self.refs)
    }

    /// Waits until the router process has looked at every entry up to `end`; whether it did
    /// within `timeout`.
    pub fn wait_looked(&self, end: (u64, u64), timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut g = lock(&self.looked);
        while *g < end {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            g = match self.looked_wake.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// Waits until something is published after `seen`, or `timeout`.
    pub fn wait_published(&self, seen: (u64, u64), timeout: Duration) {
        let g = lock(&self.published);
        if *g != seen {
            return;
        }
        let _ = self.wake.wait_timeout(g, timeout);
    }

    /// The current configuration table, each rule with the namespace its source's key grants
    /// now.
    pub fn table(&self) -> Arc<RouterTable> {
        let keys = match self.keys.load() {
            Ok(k) => Some(k),
            Err(e) => {
                log::error!("{e}; keeping the namespaces read before");
                None
            }
        };
        {
            let t = self.table.read().unwrap_or_else(|p| p.into_inner());
            let fresh = match (&keys, &t.keys) {
                (Some(k), Some(seen)) => Arc::ptr_eq(k, seen),
                (None, Some(_)) => true,
                _ => false,
            };
            if fresh {
                return t.granted.clone();
            }
        }
        let granted = {
            let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
            let keys = keys.clone().unwrap_or_default();
            t.granted = Arc::new(t.stored.granted(&keys));
            t.keys = Some(keys);
            t.granted.clone()
        };
        // The entries held for a source without a key go on once it has one again.
        if let Some(keys) = keys {
            for site in keys.names() {
                self.unblock_files(Some(&crate::apply::keyless(site)));
            }
        }
        granted
    }

    /// Installs the table built from the database after a source sent its configuration.
    pub fn set_table(&self, stored: RouterTable) {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        *t = Tables {
            stored: Arc::new(stored),
            ..Tables::default()
        };
    }

    /// What the key of source `site` grants now, if it has a key.
    pub fn namespace(&self, site: &str) -> Option<mirrorfs::wire::auth::Namespace> {
        match self.keys.namespace(site) {
            Ok(ns) => ns,
            Err(e) => {
                log::error!("{e}");
                None
            }
        }
    }

    /// Stores every source's state (before a pair of logs that holds it is removed).
    pub fn persist_sources(&self) -> Result<(), ConfigError> {
        let sources = lock(&self.sources).clone();
        let mut db = lock(&self.db);
        for (site, s) in &sources {
            db.set_source(site, *s)?;
        }
        Ok(())
    }

    /// Tells source `site`, if it is connected, something its user should know (it shows in
    /// the source's status); the session goes on.
    pub fn notify(&self, site: &str, text: String) {
        if let Some(p) = self.peer(site) {
            if let Err(e) = lock(&p).send(&Msg::Notice { text }) {
                log::debug!("cannot tell {site}: {e}");
            }
        }
    }

    /// Sends `msg` to the newest session of source `site`; whether it has one and it went.
    pub fn tell(&self, site: &str, msg: &Msg) -> bool {
        let Some(p) = self.peer(site) else {
            return false;
        };
        let sent = lock(&p).send(msg);
        match sent {
            Ok(()) => true,
            Err(e) => {
                log::debug!("cannot tell {site}: {e}");
                false
            }
        }
    }

    /// Asks source `site` for a fresh copy of `name` (rule `rule_crc`), because of `reason`:
    /// at once when it is connected, else when it connects; the request is kept (durably)
    /// until the copy has arrived.
    pub fn request_copy(&self, site: &str, rule_crc: u32, name: Vec<u8>, reason: &str) {
        self.ask_copies(vec![CopyRequest::new(
            site,
            rule_crc,
            &name,
            reason.to_string(),
        )]);
    }

    /// Records `reqs` (deduplicated, bounded, durably) and sends the new ones to their
    /// sources that are connected.
    pub fn ask_copies(&self, reqs: Vec<CopyRequest>) {
        if reqs.is_empty() {
            return;
        }
        let table = self.table();
        let fresh: Vec<CopyRequest> = {
            let mut c = lock(&self.copies);
            let keys = c.add(reqs, |site, crc| table.get(site, crc).map(|r| r.base()));
            if keys.is_empty() {
                // Already asked (and kept): nothing new to send; a newer reason is recorded.
                if c.updated() {
                    if let Err(e) = c.store() {
                        log::error!("cannot record the copies asked of the sources: {e}");
                    }
                }
                return;
            }
            if let Err(e) = c.store() {
                log::error!("cannot record the copies asked of the sources: {e}");
            }
            keys.iter().filter_map(|k| c.get(k).cloned()).collect()
        };
        let mut by_site: BTreeMap<String, Vec<CopyRequest>> = BTreeMap::new();
        for r in fresh {
            by_site.entry(r.site.clone()).or_default().push(r);
        }
        for (site, reqs) in by_site {
            let what = match reqs.as_slice() {
                [one] => format!("a copy of {} ({})", one.name, one.reason),
                many => format!("copies of {} files", many.len()),
            };
            if self.send_copies(&site, &reqs) {
                log::info!("asked {site} for {what}");
            } else {
                log::info!(
                    "{site} is not connected: its request for {what} is kept and sent when it connects"
                );
            }
        }
    }

    /// Sends `reqs` to the newest session of `site` and counts it; whether it had one and
    /// every request went.
    fn send_copies(&self, site: &str, reqs: &[CopyRequest]) -> bool {
        let Some(peer) = self.peer(site) else {
            return false;
        };
        let mut sent = Vec::new();
        {
            let mut out = lock(&peer);
            for r in reqs {
                let msg = Msg::Resync {
                    rule_crc: r.rule_crc,
                    name: r.name_bytes(),
                };
                if let Err(e) = out.send(&msg) {
                    // The session is ending (its own end is logged): the requests are
                    // durable and go again when the source connects. Nothing to warn of.
                    log::info!(
                        "cannot ask {site} for copies now ({e}); asked again when it connects"
                    );
                    break;
                }
                sent.push((r.site.clone(), r.rule_crc, r.name_bytes()));
            }
        }
        let mut c = lock(&self.copies);
        c.note_sent(&sent);
        if let Err(e) = c.store() {
            log::error!("cannot record the copies asked of the sources: {e}");
        }
        sent.len() == reqs.len()
    }

    /// A session of `site` started: asks it again for every copy still pending.
    pub fn on_connect(&self, site: &str) {
        let reqs = self.pending_copies(site);
        if reqs.is_empty() {
            return;
        }
        if self.send_copies(site, &reqs) {
            log::info!(
                "asked {site} for the {} copies still pending (the oldest since {}: {})",
                reqs.len(),
                mirrorfs::logging::utc_secs(reqs.iter().map(|r| r.since).min().unwrap_or(0)),
                reqs[0].reason
            );
        }
    }

    /// The copies still asked of source `site`.
    pub fn pending_copies(&self, site: &str) -> Vec<CopyRequest> {
        let c = lock(&self.copies);
        c.of_site(site)
            .iter()
            .filter_map(|k| c.get(k).cloned())
            .collect()
    }

    /// Source `site` sent a configuration: copies asked under rules it no longer has are
    /// dropped, and the others asked again (the source dropped what it was sending when the
    /// router asked for its configuration).
    pub fn on_config(&self, site: &str) {
        let table = self.table();
        {
            let mut c = lock(&self.copies);
            let n = c.retain_rules(site, |crc| table.has(site, crc));
            if n > 0 {
                log::info!(
                    "source {site}: {n} copies asked under rules it no longer has are dropped"
                );
                if let Err(e) = c.store() {
                    log::error!("cannot record the copies asked of the sources: {e}");
                }
            }
        }
        self.on_connect(site);
    }

    /// Entries from `site` are durable in the router logs: closes the requests whose copy
    /// they complete.
    pub fn copies_stored(&self, site: &str, entries: &[mirrorfs::wire::WireEntry]) {
        let mut c = lock(&self.copies);
        let done = c.stored(site, entries);
        if done.is_empty() {
            return;
        }
        for r in c.remove(&done) {
            log::info!("the copy of {} from {site} arrived ({})", r.name, r.reason);
        }
        if let Err(e) = c.store() {
            log::error!("cannot record the copies asked of the sources: {e}");
        }
    }

    /// Quarantines pair `n` (damaged: `reason`) while the router runs: the writer moves on to
    /// a new pair first if it is writing this one; what the pair held is asked for again.
    pub fn quarantine_pair(&self, n: u64, reason: &str) -> Result<(), String> {
        {
            let mut rt = lock(&self.rt);
            if rt.end().0 == n {
                rt.rotate().map_err(|e| e.to_string())?;
                let end = rt.end();
                drop(rt);
                self.publish(end);
            }
        }
        let table = self.table();
        let (q, reqs, _) =
            quarantine::quarantine_pair(&self.cfg.state, &self.rt_dir(), n, reason, &table)
                .map_err(|e| e.to_string())?;
        log::error!("{}", quarantine::describe(&q));
        self.ask_copies(reqs);
        // Files blocked at an entry of the pair: the copies asked replace what was held.
        let paths: Vec<String> = lock(&self.blocked)
            .0
            .values()
            .filter(|b| b.pair == n)
            .map(|b| b.path.clone())
            .collect();
        for p in paths {
            self.unblock_files(Some(&p));
        }
        Ok(())
    }

    /// The last position received completely from `site`'s `stream`.
    pub fn received(&self, site: &str, stream: u64) -> Option<Position> {
        let mut sources = lock(&self.sources);
        let s = sources.entry(site.to_string()).or_default();
        if s.stream != stream {
            if s.stream != 0 || s.done.is_some() {
                log::warn!(
                    "site {site} sends a new journal stream ({stream:#x}, was {:#x}); starting over",
                    s.stream
                );
            }
            *s = SourceState { stream, done: None };
            let s = *s;
            drop(sources);
            if let Err(e) = lock(&self.db).set_source(site, s) {
                log::error!("{e}");
            }
            return None;
        }
        s.done
    }
}

/// Checks an older pair: its survey, or why it must be quarantined. Failing I/O is an error.
fn inspect(rt_dir: &std::path::Path, n: u64) -> Result<Result<rtlog::Survey, String>, RtError> {
    match rtlog::RtPair::open(rt_dir, n) {
        Ok(_) => {}
        Err(e) if e.is_damage() => return Ok(Err(e.to_string())),
        Err(e) => return Err(e),
    }
    let sv = match rtlog::survey(rt_dir, n) {
        Ok(sv) => sv,
        Err(e) if e.is_damage() => return Ok(Err(e.to_string())),
        Err(e) => return Err(e),
    };
    match sv.first_damage(u64::MAX) {
        Some((off, why)) => Ok(Err(format!(
            "router log {} is corrupt at offset {off}: {why}",
            rtlog::rt1_path(rt_dir, n).display()
        ))),
        None => Ok(Ok(sv)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrorfs::entry::Command;
    use mirrorfs::wire::{Part, WireEntry, WireRule};

    fn entry(i: u64, name: &str) -> WireEntry {
        WireEntry {
            pos: Position::new(1, 100 + i),
            part: Part::Whole,
            command: Command::Write,
            rule_crc: 7,
            name: name.as_bytes().to_vec(),
            aux: Vec::new(),
            offset: 0,
            size: 1,
            time_ns: 1,
            data: vec![i as u8],
        }
    }

    fn cfg(dir: &std::path::Path) -> RouterConfig {
        RouterConfig {
            root: dir.join("root"),
            state: dir.join("state"),
            rt_size: 1 << 20,
            max_open: 4,
            unblock_every: Duration::from_secs(300),
            key_file: dir.join("state/keys"),
            limits: Limits::default(),
            retain: crate::retain::Retain::default(),
        }
    }

    #[test]
    fn an_older_damaged_pair_is_quarantined_at_start_and_its_names_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let rt = state.join("rt");
        std::fs::create_dir_all(&rt).unwrap();
        RouterDb::open(&state.join("router.db"))
            .unwrap()
            .replace_rules(
                "s",
                1,
                &[WireRule {
                    crc: 7,
                    pattern: "/p/".into(),
                    dest: "d".into(),
                    attrs: false,
                    delete_suffix: None,
                }],
            )
            .unwrap();
        let mut w = RtWriter::open(&rt, 1 << 20, 1).unwrap();
        w.append("s", &[entry(0, "/p/a"), entry(1, "/p/b")])
            .unwrap();
        w.rotate().unwrap();
        w.append("s", &[entry(2, "/p/c")]).unwrap();
        drop(w);
        // The second record of pair 1 fails its CRC.
        let p1 = rtlog::rt1_path(&rt, 1);
        let mut b = std::fs::read(&p1).unwrap();
        let last = b.len() - 2;
        b[last] ^= 0x10;
        std::fs::write(&p1, &b).unwrap();
        let router = Router::open(cfg(dir.path())).unwrap();
        assert!(!p1.exists());
        let q = quarantine::load(&state).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].pair, 1);
        assert!(q[0].hidden);
        let asked: Vec<(String, bool)> = lock(&router.copies)
            .list()
            .into_iter()
            .map(|r| (r.name, r.whole_rule))
            .collect();
        // The readable pending entry's name, and (the damage hides the other) the whole rule;
        // the whole rule covers the name.
        assert_eq!(asked, vec![("/p".to_string(), true)]);
        // What pair 2 holds is counted as received; new entries go to pair 2.
        assert_eq!(lock(&router.sources)["s"].done, Some(Position::new(1, 102)));
        assert_eq!(lock(&router.rt).end().0, 2);
        drop(router);
        // The requests survive a restart; pair 1's number is never used again.
        std::fs::remove_dir_all(&rt).unwrap();
        let router = Router::open(cfg(dir.path())).unwrap();
        assert_eq!(lock(&router.copies).len(), 1);
        assert_eq!(lock(&router.rt).end().0, 2);
    }
}
