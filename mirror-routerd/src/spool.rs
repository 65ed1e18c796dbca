//! The spool coordinator (seeds/000 claim 2): spool files that a file-transfer tool brought
//! into `--spool-in DIR` are checked and applied, strictly in sequence per source, through the
//! same session logic as a live source ([`crate::receive::serve_source`]: configuration
//! versions, RT1/RT2, acknowledgements) and the same router process; what the router says
//! back goes into `--spool-ack DIR` as files for the tool to carry home.
//!
//! * Watching: inotify on the inbox plus a scan every second (tools write in many ways).
//!   Hidden names and names not ending in `.spool` are left alone; a file that does not start
//!   as a spool file is foreign and ignored; one shorter than its header says is partial and
//!   waits, refused once it has not changed for [`SETTLE`].
//! * Checking ([`mirrorfs::wire::spool::open`]): size, hash, and the MAC under the source's
//!   key (`mirror-ctl router key add SITE`), then the chain: file `next` of the source's stream
//!   whose `prev` is the hash of the last one applied. A later file waits (status says which
//!   file is missing); an earlier one whose hash is the one applied is a duplicate, removed; a
//!   different file with a number already applied, a broken chain, a damaged or forged file
//!   is refused: moved to `<inbox>/.refused/`, logged, shown by `router status` and in the
//!   source's `.ack`. A new stream is taken only from its signed first file, and never a
//!   stream seen before.
//! * Applying: one file at a time per source; once the router logs hold it durably (the
//!   session's acknowledgement), `<router state>/spool/<source>` records it, `<ack dir>/
//!   <source>.ack` says so, and the file leaves the inbox. A crash in between applies it again
//!   later: entries at positions already received are dropped as duplicates.
//! * The way back: `<source>.ack` (the last file durable, the journal positions received and
//!   applied, recent refusals) and `<source>.requests` (the copies the router asks for, as it
//!   asks live sources), each sealed with the source's key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use mirrorfs::journal::Position;
use mirrorfs::wire::auth::Key;
use mirrorfs::wire::msg::MAX_ENTRIES_PER_FRAME;
use mirrorfs::wire::spool::{self, Ack, Header, Request, Requests, SpoolError};
use mirrorfs::wire::{Msg, WireError};
use serde::{Deserialize, Serialize};

use crate::receive::{Inbound, SessionError};
use crate::shared::{lock, Back, PeerOut, Router};

/// A file shorter than its header says is refused once it has not changed for this long
/// (until then it may still be arriving).
pub const SETTLE: Duration = Duration::from_secs(5);
/// The longest pause before a source whose session failed is fed again (it doubles from
/// a second).
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Refusals remembered per source.
const MAX_REFUSALS: usize = 20;
/// Applied files whose hash is remembered, to recognise a redelivery.
const MAX_RECENT: usize = 1024;
/// Bytes of entries per frame handed to the session.
const FRAME_BYTES: usize = 4 << 20;

/// The directory of the coordinator's records in the router state.
pub fn state_dir(router_state: &Path) -> PathBuf {
    router_state.join("spool")
}

/// One refusal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Refusal {
    /// The file's name in the inbox.
    pub file: String,
    /// Why.
    pub reason: String,
    /// When (Unix seconds).
    pub at: u64,
}

/// What the coordinator records of one source (`<router state>/spool/<source>`, JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceRecord {
    /// The source site.
    pub site: String,
    /// Its current journal stream (0: none yet).
    pub stream: u64,
    /// The next file expected of that stream.
    pub next: u64,
    /// The hash of the last file applied (hex).
    pub last_hash: String,
    /// Streams that ended: their files are never taken again.
    pub past_streams: Vec<u64>,
    /// Recently applied files: (sequence, hash hex), to recognise a redelivery.
    pub recent: Vec<(u64, String)>,
    /// Files applied in all.
    pub applied_files: u64,
    /// When the last one was (Unix seconds).
    pub last_applied_at: Option<u64>,
    /// The file the source is held back for, and since when (Unix seconds).
    pub waiting_for: Option<(u64, u64)>,
    /// Recent refusals.
    pub refused: Vec<Refusal>,
}

impl SourceRecord {
    fn path(dir: &Path, site: &str) -> PathBuf {
        dir.join(site)
    }

    /// The records of every source (for `mirror-ctl router status`).
    pub fn load_all(router_state: &Path) -> Vec<SourceRecord> {
        let mut v: Vec<SourceRecord> = std::fs::read_dir(state_dir(router_state))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        v.sort_by(|a: &SourceRecord, b| a.site.cmp(&b.site));
        v
    }

    fn store(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        mirrorfs::state::write_atomic(&Self::path(dir, &self.site), &text)
    }

    fn refuse(&mut self, file: &str, reason: &str) {
        self.refused.push(Refusal {
            file: file.to_string(),
            reason: reason.to_string(),
            at: mirrorfs::blocked::now_secs(),
        });
        let n = self.refused.len();
        if n > MAX_REFUSALS {
            self.refused.drain(..n - MAX_REFUSALS);
        }
    }

    fn applied_hash(&self, seq: u64) -> Option<&str> {
        self.recent
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, h)| h.as_str())
    }
}

/// A file handed to a source's session, not yet acknowledged.
#[derive(Debug)]
struct Fed {
    path: PathBuf,
    name: String,
    stream: u64,
    new_stream: bool,
    seq: u64,
    hash: [u8; 32],
    /// The session's entries frame that ends it.
    last_frame: u64,
}

/// A source's session, fed from its files.
struct Session {
    tx: Sender<Msg>,
    closed: Arc<AtomicBool>,
    /// Entries frames handed to it.
    frames: u64,
}

/// Everything the coordinator holds of one source.
struct Source {
    record: SourceRecord,
    key: Key,
    fed: Option<Fed>,
    session: Option<Session>,
    upto: Option<Position>,
    applied: Option<Position>,
    /// The `.ack` / `.requests` files must be written again.
    ack_dirty: bool,
    requests_dirty: bool,
    /// After a session failed: not fed before then; the next pause.
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// What a file in the inbox was found to be, while it stays as it is.
#[derive(Debug, Clone)]
enum Seen {
    /// Not a spool file, or not ours to judge: left alone.
    Foreign,
    /// Shorter than its header says: still arriving, since then (whose, if the header says).
    Partial(Instant, Option<String>),
    /// Checked: whose, and where in its stream.
    Good { header: Header, hash: [u8; 32] },
}

/// A checked file in the inbox: its name, header and hash.
type Checked = (String, Header, [u8; 32]);

/// The coordinator.
pub struct Coordinator {
    router: Arc<Router>,
    inbox: PathBuf,
    acks: PathBuf,
    dir: PathBuf,
    sources: Mutex<HashMap<String, Source>>,
    /// Files refused (name, time, size): the same file delivered again is not reported again.
    refused: Mutex<HashSet<(String, SystemTime, u64)>>,
    /// Wakes the scan (an acknowledgement came, a session ended).
    wake: (Sender<()>, Receiver<()>),
}

/// Starts the coordinator of `inbox`, its acknowledgements written into `acks`.
pub fn start(router: Arc<Router>, inbox: PathBuf, acks: PathBuf) -> std::io::Result<()> {
    for d in [&inbox, &acks] {
        if d.exists() && !d.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                d.display()
            )));
        }
        std::fs::create_dir_all(d)?;
    }
    let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    if real(&inbox).starts_with(real(&router.cfg.root)) {
        return Err(std::io::Error::other(format!(
            "the spool inbox {} is inside the backup root {}: choose a directory outside it",
            inbox.display(),
            router.cfg.root.display()
        )));
    }
    // One coordinator per inbox: another would take (and refuse) this one's files.
    let lock = inbox_lock(&inbox)?;
    let dir = state_dir(&router.cfg.state);
    mirrorfs::state::private_dir(&dir)?;
    let c = Arc::new(Coordinator {
        router,
        inbox,
        acks,
        dir,
        sources: Mutex::new(HashMap::new()),
        refused: Mutex::new(HashSet::new()),
        wake: crossbeam_channel::bounded(1),
    });
    std::thread::Builder::new()
        .name("spool".into())
        .spawn(move || {
            let _lock = lock;
            c.run()
        })?;
    Ok(())
}

/// Takes `<inbox>/.lock` (an exclusive `flock`, held while the coordinator runs).
fn inbox_lock(inbox: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let path = inbox.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::other(format!(
            "another mirror-routerd applies the spool inbox {} (it holds {})",
            inbox.display(),
            path.display()
        )));
    }
    Ok(f)
}

fn hex(b: &[u8]) -> String {
    mirrorfs::blocked::hex(b)
}

impl Coordinator {
    fn run(self: Arc<Self>) {
        let watch = match mirrorfs::notify::DirWatch::new(&self.inbox) {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!(
                    "spool inbox {}: cannot watch ({e}); scanning every second",
                    self.inbox.display()
                );
                None
            }
        };
        log::info!(
            "spool coordinator: inbox {}, acknowledgements into {}",
            self.inbox.display(),
            self.acks.display()
        );
        let mut seen: HashMap<String, ((SystemTime, u64), Seen)> = HashMap::new();
        loop {
            self.scan(&mut seen);
            self.write_back();
            // Wakes at once when a file arrives (inotify) or a file was acknowledged; scans
            // a few times a second anyway.
            match &watch {
                Some(w) if self.wake.1.is_empty() => {
                    let _ = w.wait(Duration::from_millis(100));
                }
                Some(_) => {}
                None => {
                    let _ = self.wake.1.recv_timeout(Duration::from_millis(250));
                }
            }
            while self.wake.1.try_recv().is_ok() {}
        }
    }

    /// Looks at every spool file in the inbox; feeds each source its next file.
    fn scan(self: &Arc<Self>, seen: &mut HashMap<String, ((SystemTime, u64), Seen)>) {
        let rd = match std::fs::read_dir(&self.inbox) {
            Ok(rd) => rd,
            Err(e) => {
                log::error!("spool inbox {}: {e}", self.inbox.display());
                return;
            }
        };
        let mut present = HashSet::new();
        // Per source, its good files by (stream, seq).
        let mut good: BTreeMap<(String, u64, u64), Checked> = BTreeMap::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(spool::SUFFIX) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if !meta.file_type().is_file() {
                continue;
            }
            present.insert(name.clone());
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            if lock(&self.refused).contains(&(name.clone(), stamp.0, stamp.1)) {
                log::debug!("spool file {name}: refused already (delivered again); removed");
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let verdict = match seen.get(&name) {
                Some((s, v)) if *s == stamp => v.clone(),
                _ => self.judge(&e.path(), &name, meta.len()),
            };
            let verdict = match verdict {
                Seen::Partial(since, site) if since.elapsed() >= SETTLE => {
                    self.refuse(
                        &name,
                        site.as_deref(),
                        "truncated: shorter than its header says, and unchanged since",
                    );
                    continue;
                }
                v => v,
            };
            if let Seen::Good { header, hash } = &verdict {
                good.insert(
                    (header.site.clone(), header.stream, header.seq),
                    (name.clone(), header.clone(), *hash),
                );
            }
            seen.insert(name, (stamp, verdict));
        }
        seen.retain(|k, _| present.contains(k));
        let mut by_source: BTreeMap<String, Vec<Checked>> = BTreeMap::new();
        for ((site, _, _), v) in good {
            by_source.entry(site).or_default().push(v);
        }
        for (site, files) in by_source {
            self.order(&site, files, seen);
        }
    }

    /// What the file at `path` is (read whole and checked when it claims to be a spool
    /// file of a source with a key).
    fn judge(&self, path: &Path, name: &str, len: u64) -> Seen {
        if len < spool::HEADER_LEN as u64 {
            // Too short to tell yet (a copy just begun): judged again when it changes.
            return Seen::Partial(Instant::now(), None);
        }
        let mut head = vec![0u8; spool::HEADER_LEN.min(len as usize)];
        let read = std::fs::File::open(path).and_then(|mut f| {
            use std::io::Read;
            f.read_exact(&mut head)
        });
        if read.is_err() {
            return Seen::Partial(Instant::now(), None);
        }
        let header = match Header::decode(&head) {
            Ok(h) => h,
            Err(SpoolError::NotSpool) => {
                log::info!("spool inbox: {name} is not a spool file; left alone");
                return Seen::Foreign;
            }
            Err(SpoolError::Size { .. }) => return Seen::Partial(Instant::now(), None),
            Err(e) => {
                self.refuse(name, None, &e.to_string());
                return Seen::Foreign;
            }
        };
        if len < header.total {
            return Seen::Partial(Instant::now(), Some(header.site));
        }
        if len > header.total || header.total > spool::MAX_FILE {
            self.refuse(
                name,
                Some(&header.site),
                &SpoolError::Size {
                    have: len,
                    want: header.total,
                }
                .to_string(),
            );
            return Seen::Foreign;
        }
        let expected = spool::file_name(&header.site, header.stream, header.seq);
        if name != expected {
            self.refuse(
                name,
                Some(&header.site),
                &format!("its name does not match its header, which makes it {expected}"),
            );
            return Seen::Foreign;
        }
        let Some(key) = self.key_of(&header.site) else {
            self.refuse(
                name,
                None,
                &format!(
                    "source {} has no key on this router (`mirror-ctl router key add {}`)",
                    header.site, header.site
                ),
            );
            return Seen::Foreign;
        };
        match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| spool::open(&b, &key).map_err(|e| e.to_string()))
        {
            Ok(f) => Seen::Good {
                header: f.header,
                hash: f.hash,
            },
            Err(e) => {
                self.refuse(name, Some(&header.site), &e);
                Seen::Foreign
            }
        }
    }

    fn key_of(&self, site: &str) -> Option<Key> {
        match self.router.keys.get_exact(site) {
            Ok(k) => k,
            Err(e) => {
                log::error!("{e}");
                None
            }
        }
    }

    /// Moves `name` aside into `.refused/` and reports why.
    fn refuse(&self, name: &str, site: Option<&str>, why: &str) {
        // The same file delivered again (a transfer tool that copies what the outbox still
        // holds) is removed without a second report.
        if let Ok(m) = std::fs::symlink_metadata(self.inbox.join(name)) {
            let stamp = (
                name.to_string(),
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.len(),
            );
            let mut r = lock(&self.refused);
            if r.len() >= 10_000 {
                r.clear();
            }
            r.insert(stamp);
        }
        let aside = self.inbox.join(".refused");
        let _ = std::fs::create_dir_all(&aside);
        let to = aside.join(format!("{name}.{}", mirrorfs::now_ns()));
        let moved = std::fs::rename(self.inbox.join(name), &to);
        log::error!(
            "spool file {name} refused: {why}{}",
            match moved {
                Ok(()) => format!(" (moved to {})", to.display()),
                Err(e) => format!(" (cannot move it aside: {e})"),
            }
        );
        if let Some(site) = site {
            let mut sources = lock(&self.sources);
            if let Some(s) = self.source(&mut sources, site) {
                s.record.refuse(name, why);
                let _ = s.record.store(&self.dir);
                s.ack_dirty = true;
            }
        }
    }

    /// The source `site`, loaded on first use (none without a key).
    fn source<'a>(
        &self,
        sources: &'a mut HashMap<String, Source>,
        site: &str,
    ) -> Option<&'a mut Source> {
        if !sources.contains_key(site) {
            let key = self.key_of(site)?;
            let record = std::fs::read(SourceRecord::path(&self.dir, site))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_else(|| SourceRecord {
                    site: site.to_string(),
                    ..Default::default()
                });
            sources.insert(
                site.to_string(),
                Source {
                    record,
                    key,
                    fed: None,
                    session: None,
                    upto: None,
                    applied: None,
                    ack_dirty: false,
                    requests_dirty: true,
                    retry_at: None,
                    backoff: Duration::from_secs(1),
                },
            );
        }
        let src = sources.get_mut(site)?;
        // The key as the key file says now (a key replaced while running checks, and seals,
        // from then on; its running session ends on its own, see `receive::key_revoked`).
        src.key = self.key_of(site)?;
        Some(src)
    }

    /// Decides, for the checked files of one source, which is next; duplicates go, wrong
    /// ones are refused, the next is fed.
    fn order(
        self: &Arc<Self>,
        site: &str,
        files: Vec<Checked>,
        seen: &mut HashMap<String, ((SystemTime, u64), Seen)>,
    ) {
        let mut refusals = Vec::new();
        let mut feed = None;
        {
            let mut sources = lock(&self.sources);
            let Some(src) = self.source(&mut sources, site) else {
                return;
            };
            let busy = src.fed.is_some() || src.retry_at.is_some_and(|t| t > Instant::now());
            let mut held_for = None;
            for (name, h, hash) in files {
                let r = &src.record;
                if h.stream != r.stream {
                    if r.past_streams.contains(&h.stream) {
                        log::info!("spool file {name}: of a stream of {site} that ended; removed");
                        let _ = std::fs::remove_file(self.inbox.join(&name));
                        seen.remove(&name);
                    } else if h.new_stream && h.seq == 1 && !busy && feed.is_none() {
                        feed = Some((name, h, hash));
                    } else {
                        held_for = held_for.or(Some(1));
                    }
                    continue;
                }
                if h.seq < r.next {
                    match r.applied_hash(h.seq) {
                        Some(x) if x != hex(&hash) => refusals.push((
                            name,
                            format!(
                                "a different file with sequence number {} of {site}'s stream, which was applied already",
                                h.seq
                            ),
                        )),
                        _ => {
                            log::debug!("spool file {name}: applied already (delivered again); removed");
                            let _ = std::fs::remove_file(self.inbox.join(&name));
                            seen.remove(&name);
                        }
                    }
                    continue;
                }
                if h.seq > r.next {
                    held_for = held_for.or(Some(r.next));
                    continue;
                }
                if hex(&h.prev) != r.last_hash {
                    refusals.push((
                        name,
                        format!(
                            "it does not follow file {} of {site}'s stream (its previous hash differs: a forged or foreign file)",
                            h.seq - 1
                        ),
                    ));
                    continue;
                }
                if busy || feed.is_some() {
                    continue;
                }
                feed = Some((name, h, hash));
            }
            let now = mirrorfs::blocked::now_secs();
            let waiting = if feed.is_some() || busy {
                None
            } else {
                held_for
            };
            let was = src.record.waiting_for.map(|(n, _)| n);
            if waiting != was {
                src.record.waiting_for = waiting.map(|n| (n, now));
                if let Some(n) = waiting {
                    log::warn!(
                        "spool: source {site} waits for its file {n} (later ones arrived first)"
                    );
                }
                let _ = src.record.store(&self.dir);
            }
        }
        for (name, why) in refusals {
            seen.remove(&name);
            self.refuse(&name, Some(site), &why);
        }
        if let Some((name, h, hash)) = feed {
            if let Err(why) = self.feed(site, &name, &h, hash) {
                seen.remove(&name);
                self.refuse(&name, Some(site), &why);
            }
        }
    }

    /// Hands file `name` to the session of `site` (started if need be).
    fn feed(
        self: &Arc<Self>,
        site: &str,
        name: &str,
        h: &Header,
        hash: [u8; 32],
    ) -> Result<(), String> {
        let path = self.inbox.join(name);
        let mut sources = lock(&self.sources);
        let Some(src) = self.source(&mut sources, site) else {
            return Err(format!("source {site} has no key on this router"));
        };
        // Read and checked again: it may have changed since it was judged.
        let file = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| spool::open(&b, &src.key).map_err(|e| e.to_string()))?;
        if file.hash != hash {
            return Ok(()); // Changed since: judged again at the next scan.
        }
        if src.session.is_none() {
            src.session = Some(self.open_session(site, src.key.clone()));
        }
        let Some(sess) = src.session.as_mut() else {
            return Ok(());
        };
        let known = lock(&self.router.versions).get(site).copied();
        let mut msgs = Vec::new();
        if known != Some(file.config_version) {
            msgs.push(Msg::Config {
                seq: 0,
                version: file.config_version,
                rules: file.rules,
            });
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut frames = sess.frames;
        for e in file.entries {
            bytes += e.wire_len();
            batch.push(e);
            if batch.len() >= MAX_ENTRIES_PER_FRAME || bytes >= FRAME_BYTES {
                frames += 1;
                msgs.push(Msg::Entries {
                    seq: 0,
                    config_version: file.config_version,
                    entries: std::mem::take(&mut batch),
                });
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            frames += 1;
            msgs.push(Msg::Entries {
                seq: 0,
                config_version: file.config_version,
                entries: batch,
            });
        }
        for m in msgs {
            if sess.tx.send(m).is_err() {
                src.session = None;
                return Ok(());
            }
        }
        sess.frames = frames;
        log::info!("spool: applying {name} (file {} of {site})", h.seq);
        src.fed = Some(Fed {
            path,
            name: name.to_string(),
            stream: h.stream,
            new_stream: h.new_stream,
            seq: h.seq,
            hash,
            last_frame: frames,
        });
        Ok(())
    }

    /// A session of source `site` on its spool files.
    fn open_session(self: &Arc<Self>, site: &str, key: Key) -> Session {
        let (tx, rx) = crossbeam_channel::unbounded();
        let closed = Arc::new(AtomicBool::new(false));
        let back: Arc<dyn Back> = Arc::new(SpoolBack {
            site: site.to_string(),
            coordinator: Arc::downgrade(self),
            closed: closed.clone(),
        });
        let w = Arc::new(Mutex::new(PeerOut::back(back)));
        let feed = Feed {
            rx,
            closed: closed.clone(),
        };
        let me = self.clone();
        let site2 = site.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("spool {site}"))
            .spawn(move || {
                me.router.add_peer(&site2, w.clone());
                let r = crate::receive::serve_source(&me.router, &site2, &key, &w, &feed);
                me.router.remove_peer(&site2, &w);
                match r {
                    Ok(()) => log::info!("spool session of {site2} ended"),
                    Err(e) => log::warn!("spool session of {site2}: {e}"),
                }
                me.session_ended(&site2);
            });
        if let Err(e) = spawned {
            log::error!("cannot start the spool session of {site}: {e}");
            closed.store(true, Ordering::Relaxed);
        }
        Session {
            tx,
            closed,
            frames: 0,
        }
    }

    /// The session of `site` ended: what it was given is given again to the next.
    fn session_ended(&self, site: &str) {
        let mut sources = lock(&self.sources);
        if let Some(s) = sources.get_mut(site) {
            if let Some(sess) = s.session.take() {
                sess.closed.store(true, Ordering::Relaxed);
            }
            if let Some(f) = s.fed.take() {
                log::warn!(
                    "spool: {} of {site} was not stored; it is applied again in {:?}",
                    f.name,
                    s.backoff
                );
                s.retry_at = Some(Instant::now() + s.backoff);
                s.backoff = (s.backoff * 2).min(RETRY_MAX);
            }
        }
        drop(sources);
        let _ = self.wake.0.try_send(());
    }

    /// The session of `site` stored its entries frames through `frames` durably.
    fn acked(&self, site: &str, frames: u64, upto: Position) {
        let mut sources = lock(&self.sources);
        let Some(src) = sources.get_mut(site) else {
            return;
        };
        if upto != Position::START {
            src.upto = src.upto.max(Some(upto));
        }
        let Some(fed) = src.fed.take_if(|f| f.last_frame <= frames) else {
            return;
        };
        let r = &mut src.record;
        if fed.stream != r.stream {
            if r.stream != 0 {
                r.past_streams.push(r.stream);
            }
            r.stream = fed.stream;
            r.recent.clear();
            log::info!(
                "spool: source {site} starts journal stream {:016x}{}",
                fed.stream,
                if fed.new_stream {
                    ""
                } else {
                    " (not marked new)"
                }
            );
        }
        r.next = fed.seq + 1;
        r.last_hash = hex(&fed.hash);
        r.recent.push((fed.seq, r.last_hash.clone()));
        if r.recent.len() > MAX_RECENT {
            r.recent.remove(0);
        }
        r.applied_files += 1;
        r.last_applied_at = Some(mirrorfs::blocked::now_secs());
        r.waiting_for = None;
        src.retry_at = None;
        src.backoff = Duration::from_secs(1);
        if let Err(e) = r.store(&self.dir) {
            log::error!(
                "spool: cannot record that {} of {site} is applied: {e}; it is applied again later",
                fed.name
            );
            return;
        }
        src.ack_dirty = true;
        src.requests_dirty = true;
        let written = self.write_ack(src);
        if written {
            if let Err(e) = std::fs::remove_file(&fed.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("spool: cannot remove {}: {e}", fed.path.display());
                }
            }
        }
        log::info!(
            "spool: {} of {site} is durable in the router logs",
            fed.name
        );
        drop(sources);
        let _ = self.wake.0.try_send(());
    }

    /// Writes `<source>.ack`; whether it is written.
    fn write_ack(&self, src: &mut Source) -> bool {
        let r = &src.record;
        let ack = Ack {
            site: r.site.clone(),
            stream: r.stream,
            seq: r.next.saturating_sub(1),
            upto: src.upto,
            applied: src.applied,
            refused: r
                .refused
                .iter()
                .rev()
                .take(5)
                .map(|x| format!("{}: {}", x.file, x.reason))
                .collect(),
            time: mirrorfs::blocked::now_secs(),
        };
        let path = self.acks.join(format!("{}.ack", r.site));
        match mirrorfs::state::write_atomic(&path, ack.encode(&src.key).as_bytes()) {
            Ok(()) => {
                src.ack_dirty = false;
                true
            }
            Err(e) => {
                log::error!("spool: cannot write {}: {e}", path.display());
                false
            }
        }
    }

    /// Writes the `.ack` and `.requests` files that changed.
    fn write_back(&self) {
        let mut sources = lock(&self.sources);
        for src in sources.values_mut() {
            // Before any file applied (stream 0), an ack carries the refusals alone.
            if src.ack_dirty && (src.record.stream != 0 || !src.record.refused.is_empty()) {
                self.write_ack(src);
            }
            if src.requests_dirty && src.record.stream != 0 {
                src.requests_dirty = false;
                let items = self
                    .router
                    .pending_copies(&src.record.site)
                    .into_iter()
                    .map(|c| Request {
                        id: c.since,
                        rule_crc: c.rule_crc,
                        name: c.name_bytes(),
                    })
                    .collect();
                let req = Requests {
                    site: src.record.site.clone(),
                    stream: src.record.stream,
                    items,
                };
                let path = self.acks.join(format!("{}.requests", src.record.site));
                if let Err(e) =
                    mirrorfs::state::write_atomic(&path, req.encode(&src.key).as_bytes())
                {
                    log::error!("spool: cannot write {}: {e}", path.display());
                    src.requests_dirty = true;
                }
            }
        }
    }
}

/// The stream of a spool source's session: the messages the coordinator reads from its files.
struct Feed {
    rx: Receiver<Msg>,
    closed: Arc<AtomicBool>,
}

impl Inbound for Feed {
    fn next(&self) -> Result<Msg, SessionError> {
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return Err(SessionError::Wire(WireError::Closed));
            }
            match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => return Ok(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(SessionError::Wire(WireError::Closed))
                }
            }
        }
    }

    fn ready(&self) -> bool {
        !self.rx.is_empty()
    }
}

/// Where a spool source's session sends the router's messages: into its `.ack` and
/// `.requests` files.
struct SpoolBack {
    site: String,
    coordinator: Weak<Coordinator>,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for SpoolBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolBack")
            .field("site", &self.site)
            .finish()
    }
}

impl Back for SpoolBack {
    fn take(&self, msg: &Msg) -> Result<(), WireError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(WireError::Closed);
        }
        let Some(c) = self.coordinator.upgrade() else {
            return Err(WireError::Closed);
        };
        match msg {
            Msg::Ack { frames, upto } => c.acked(&self.site, *frames, *upto),
            Msg::Applied { upto } => {
                let mut sources = lock(&c.sources);
                if let Some(s) = sources.get_mut(&self.site) {
                    if s.applied < Some(*upto) {
                        s.applied = Some(*upto);
                        s.ack_dirty = true;
                    }
                }
            }
            Msg::Resync { .. } => {
                if let Some(s) = lock(&c.sources).get_mut(&self.site) {
                    s.requests_dirty = true;
                }
            }
            Msg::Error { reason } => {
                log::warn!("spool source {}: {reason}", self.site);
                if let Some(s) = lock(&c.sources).get_mut(&self.site) {
                    s.record.refuse("(session)", reason);
                    s.ack_dirty = true;
                }
            }
            Msg::Notice { text } => log::warn!("spool source {}: {text}", self.site),
            _ => {}
        }
        Ok(())
    }

    fn shutdown(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}
