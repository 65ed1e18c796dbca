//! The state a running router shares between its receive sessions and its router process:
//! the RT writer and what it has published, the configuration table and version table, what
//! each source has sent, the live sessions (to ask a source for a copy, or close one whose
//! heartbeats stopped), and the blocked-file log (seeds/002 [0069]-[0070]).

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
use crate::rtlog::{self, RtError, RtWriter, HEADER_LEN};

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

/// The sending half of a session: frames tagged with the session's MAC.
#[derive(Debug)]
pub struct PeerOut {
    stream: TcpStream,
    mac: mirrorfs::wire::auth::FrameMac,
}

impl PeerOut {
    /// The half of `stream` that sends with `mac`.
    pub fn new(stream: TcpStream, mac: mirrorfs::wire::auth::FrameMac) -> PeerOut {
        PeerOut { stream, mac }
    }

    /// Sends one frame.
    pub fn send(&mut self, msg: &Msg) -> Result<(), mirrorfs::wire::WireError> {
        let frame = codec::encode_sealed(msg, &mut self.mac)?;
        self.stream.write_all(&frame)?;
        Ok(())
    }

    /// Ends the connection both ways.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
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
    /// The blocked-file log.
    #[error(transparent)]
    Blocked(#[from] blocked::BlockedError),
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
    /// The configuration database.
    pub db: Mutex<RouterDb>,
    /// The configuration table, as stored and as granted by the keys it was last matched with.
    table: RwLock<Tables>,
    /// Configuration version per source site (memory only, seeds/002 [0059]).
    pub versions: Mutex<HashMap<String, u64>>,
    /// Per source site: stream and last journal position received completely.
    pub sources: Mutex<HashMap<String, SourceState>>,
    /// Live sessions, by source site, for requests to the sender.
    pub peers: Mutex<HashMap<String, Arc<Mutex<PeerOut>>>>,
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
    /// Opens the router's state: recovers the RT logs, loads the configuration and what each
    /// source already sent.
    pub fn open(cfg: RouterConfig) -> Result<Arc<Router>, StartError> {
        std::fs::create_dir_all(&cfg.root).map_err(|err| StartError::Root {
            path: cfg.root.clone(),
            err,
        })?;
        let root = cfg.root.canonicalize().map_err(|err| StartError::Root {
            path: cfg.root.clone(),
            err,
        })?;
        let cfg = RouterConfig { root, ..cfg };
        let rt_dir = cfg.state.join("rt");
        let rt = RtWriter::open(&rt_dir, cfg.rt_size)?;
        let db = RouterDb::open(&cfg.state.join("router.db"))?;
        let table = db.table()?;
        let mut sources = db.sources()?;
        // Records still in the logs are newer than what the database says.
        for n in rtlog::list_pairs(&rt_dir)? {
            let pair = rtlog::RtPair::open(&rt_dir, n)?;
            for (_, r) in pair.records(HEADER_LEN, pair.rt1_len()?)? {
                if r.part.completes() {
                    let s = sources.entry(r.site.clone()).or_default();
                    if s.done.is_none_or(|d| d < r.pos) {
                        s.done = Some(r.pos);
                    }
                }
            }
        }
        log::info!(
            "router state {}: {} rules, {} sources, RT pair {}",
            cfg.state.display(),
            table.len(),
            sources.len(),
            rt.end().0
        );
        let published = rt.end();
        let held: BTreeMap<String, BlockedFile> =
            blocked::load_list::<BlockedFile>(&cfg.state.join("blocked"))?
                .into_iter()
                .map(|b| (b.path.clone(), b))
                .collect();
        for b in held.values() {
            log::warn!(
                "backup file {} is blocked since {}: {}",
                b.path,
                b.since,
                b.reason
            );
        }
        Ok(Arc::new(Router {
            rt: Mutex::new(rt),
            published: Mutex::new(published),
            wake: Condvar::new(),
            db: Mutex::new(db),
            table: RwLock::new(Tables {
                stored: Arc::new(table),
                ..Tables::default()
            }),
            versions: Mutex::new(HashMap::new()),
            sources: Mutex::new(sources),
            peers: Mutex::new(HashMap::new()),
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

    /// Closes the session of source `site` (its heartbeats stopped); whether it had one.
    pub fn close_session(&self, site: &str) -> bool {
        let peer = lock(&self.peers).remove(site);
        match peer {
            Some(p) => {
                lock(&p).shutdown();
                true
            }
            None => false,
        }
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
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        let keys = keys.unwrap_or_default();
        t.granted = Arc::new(t.stored.granted(&keys));
        t.keys = Some(keys);
        t.granted.clone()
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
        let peer = lock(&self.peers).get(site).cloned();
        if let Some(p) = peer {
            if let Err(e) = lock(&p).send(&Msg::Notice { text }) {
                log::debug!("cannot tell {site}: {e}");
            }
        }
    }

    /// Asks source `site` to send `name` whole (if it is connected).
    pub fn request_copy(&self, site: &str, rule_crc: u32, name: Vec<u8>) {
        let peer = lock(&self.peers).get(site).cloned();
        let shown = String::from_utf8_lossy(&name).into_owned();
        match peer {
            Some(p) => {
                match lock(&p).send(&Msg::Resync { rule_crc, name }) {
                    Ok(()) => log::info!("asked {site} for a copy of {shown}"),
                    Err(e) => log::warn!("cannot ask {site} for a copy of {shown}: {e}"),
                }
            }
            None => log::warn!(
                "{shown} from {site} needs a copy but the site is not connected; run `mirror-ctl sync` there"
            ),
        }
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
