//! A site's stream as sealed spool files (seeds/000; [`mirrorfs::wire::spool`]): the
//! transport of a `spool:/OUTBOX` site. No connection: what the link sends is gathered into a
//! file, sealed when it reaches `--spool-size`, when its oldest entry is `--spool-age` old, or
//! at a sync barrier (`mirror-ctl sync --wait`), and put into the outbox for a file-transfer
//! tool to carry. The router's side comes back as files the tool brings to `<outbox>/acks/`:
//! `<source>.ack` (the last spool file durable in the router logs) becomes the link's
//! acknowledgements, `<source>.requests` its copy requests.
//!
//! Each sealed file is kept in `<state>/spool/<site>/` (0600) until acknowledged, and linked
//! into the outbox through `<outbox>/.tmp/` (written, fsynced, renamed): a file lost on the
//! way is put back, byte for byte the same, when it stays unacknowledged past
//! `--spool-resend-after` or on `mirror-ctl unblock`. `head` there names the last file sealed
//! (sequence, hash, journal stream, the last journal position it completes), written before
//! the file appears in the outbox, so that a restart never makes a second, different file of
//! the same number; the link resumes reading after that position, and the site's
//! acknowledged position moves there only once the router acknowledged every such file.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mirrorfs::journal::Position;
use mirrorfs::wire::auth::Key;
use mirrorfs::wire::spool::{self, Ack, Builder, Requests};
use mirrorfs::wire::Msg;

use super::{Event, Opened, Transport};
use crate::link::LinkError;
use crate::shared::{lock, Shared};

/// How a spool site's files are made ([`crate::sites::Policy`]).
#[derive(Debug, Clone, Copy)]
pub struct SpoolPolicy {
    /// A file is sealed once it holds this many bytes.
    pub size: u64,
    /// A file is sealed once its oldest entry is this old.
    pub age: Duration,
    /// An unacknowledged file missing from the outbox is put back after this long.
    pub resend_after: Duration,
    /// `--queue-limit`: past it, the site waiting for transport is blocked (and, as any
    /// blocked site, its changes are tracked as names only).
    pub queue_limit: crate::dirty::QueueLimit,
}

/// Bytes sent and not yet acknowledged, at most, for a spool site: a spool waits for hours,
/// so its window is the files it may hold, not a round trip's worth.
pub const WINDOW: usize = 1 << 30;
/// How often the files coming back are looked at.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// How often the backlog is held against `--queue-limit`.
const LOAD_EVERY: Duration = Duration::from_secs(1);
/// How long the link may be idle, with a barrier pending, before the file is sealed.
const BARRIER_IDLE: Duration = Duration::from_millis(300);

/// The last sealed file, as `head` records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: [u8; 32],
    stream: u64,
    last: Option<Position>,
}

impl Head {
    fn encode(&self) -> String {
        format!(
            "seq {}\nhash {}\nstream {:016x}\nlast {}\n",
            self.seq,
            mirrorfs::blocked::hex(&self.hash),
            self.stream,
            self.last.map_or("-".into(), |p| p.to_string())
        )
    }

    fn decode(text: &str) -> Option<Head> {
        let mut h = Head::default();
        for line in text.lines() {
            let (k, v) = line.split_once(' ')?;
            match k {
                "seq" => h.seq = v.parse().ok()?,
                "hash" => h.hash = mirrorfs::blocked::unhex(v)?.try_into().ok()?,
                "stream" => h.stream = u64::from_str_radix(v, 16).ok()?,
                "last" => {
                    h.last = if v == "-" {
                        None
                    } else {
                        Some(v.parse().ok()?)
                    }
                }
                _ => {}
            }
        }
        Some(h)
    }
}

/// The state directory of spool site `site` (its retained files and `head`).
pub fn state_dir(state: &Path, site: &str) -> PathBuf {
    let safe = mirrorfs::blocked::dirty_path(state, site);
    let name = safe
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    state.join("spool").join(name)
}

/// A file sealed and not yet acknowledged.
#[derive(Debug)]
struct Sealed {
    name: String,
    /// The last entries frame of this session in it (none: sealed by an earlier session).
    frame: Option<u64>,
    /// When it was last put into the outbox.
    published: Instant,
}

struct SpoolTransport {
    shared: Arc<Shared>,
    site: String,
    outbox: PathBuf,
    dir: PathBuf,
    key: Key,
    events: Sender<Event>,
    policy: SpoolPolicy,
    head: Head,
    building: Option<Builder>,
    /// The builder's oldest entry arrived then, and the last one then.
    started: Instant,
    last_push: Instant,
    /// The last entries frame pushed into the builder.
    frames: u64,
    building_frame: u64,
    sealed: BTreeMap<u64, Sealed>,
    acked: u64,
    looked: Instant,
    /// `.ack` and `.requests` as last read.
    ack_file: BackFile,
    requests_file: BackFile,
    handled: HashSet<(u64, u32, Vec<u8>)>,
    last_ack: Option<Ack>,
    loaded: Instant,
    /// The last file sealed by earlier sessions: once it is acknowledged, so is everything
    /// the spool held at the start ([`Event::HeldAcked`]).
    held_seq: u64,
    /// Refusals the router reported, as read (each logged once), and the newest.
    refusals: HashSet<String>,
    last_refusal: Option<String>,
    /// The key changed since the last look.
    rekeyed: bool,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> LinkError {
    move |e| LinkError::Local(format!("spool: {what}: {e}"))
}

/// A file the transfer tool brings back (`.ack`, `.requests`): its text as last read (a tool
/// may keep a file's size and its time to the second, so only the bytes tell a new one), and
/// a text that did not read, once (one still being written is read again before it is
/// reported).
#[derive(Debug, Default)]
struct BackFile {
    seen: Option<String>,
    bad: Option<String>,
}

impl BackFile {
    /// What `decode` makes of `p` (at most 1 MiB read) when it changed since it was last
    /// read; none when it did not, or when it did not read for the first time.
    fn fresh<T, E>(
        &mut self,
        p: &Path,
        decode: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<Result<T, E>> {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(p)
            .ok()?
            .take(1 << 20)
            .read_to_string(&mut text)
            .ok()?;
        if self.seen.as_ref() == Some(&text) {
            return None;
        }
        let read = decode(&text);
        if read.is_err() && self.bad.as_ref() != Some(&text) {
            self.bad = Some(text);
            return None;
        }
        self.seen = Some(text);
        Some(read)
    }

    /// Reads it again at the next look, whatever it holds (the key changed).
    fn forget(&mut self) {
        self.seen = None;
    }
}

/// Opens the spool of `site`: its outbox made if missing, leftovers of a stopped sealing
/// removed, its files and the acknowledgement read.
pub fn open(
    shared: &Arc<Shared>,
    site: &str,
    outbox: &Path,
    events: Sender<Event>,
) -> Result<Opened, LinkError> {
    let key = super::key_of(shared, site)?;
    for d in [
        outbox.to_path_buf(),
        outbox.join(".tmp"),
        outbox.join("acks"),
    ] {
        std::fs::create_dir_all(&d).map_err(io_err(format!("cannot make {}", d.display())))?;
    }
    let dir = state_dir(&shared.state_dir, site);
    mirrorfs::state::private_dir(&dir).map_err(io_err(format!("cannot make {}", dir.display())))?;
    let head_path = dir.join("head");
    let stream = shared.stream();
    let mut head = match std::fs::read_to_string(&head_path) {
        Ok(t) => Head::decode(&t).ok_or_else(|| {
            LinkError::Local(format!(
                "spool: {} is damaged; move it aside to start the spool of {site} again as a new stream",
                head_path.display()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Head::default(),
        Err(e) => return Err(io_err(format!("cannot read {}", head_path.display()))(e)),
    };
    if head.seq > 0 && head.stream != stream {
        log::warn!(
            "site {site}: the journal is a new stream; the spool starts a new stream too (its unacknowledged files of stream {:016x} are dropped: the new stream sends what they held)",
            head.stream
        );
        head = Head::default();
    }
    let mut t = SpoolTransport {
        shared: shared.clone(),
        site: site.to_string(),
        outbox: outbox.to_path_buf(),
        dir,
        key,
        events,
        policy: shared.sites.policy.spool,
        head,
        building: None,
        started: Instant::now(),
        last_push: Instant::now(),
        frames: 0,
        building_frame: 0,
        sealed: BTreeMap::new(),
        acked: 0,
        looked: Instant::now() - LOOK_EVERY,
        ack_file: BackFile::default(),
        requests_file: BackFile::default(),
        handled: HashSet::new(),
        last_ack: None,
        loaded: Instant::now(),
        held_seq: 0,
        refusals: HashSet::new(),
        last_refusal: None,
        rekeyed: false,
    };
    t.clean_tmp();
    t.load_sealed()?;
    t.look(true);
    t.repair_chain()?;
    t.held_seq = t.head.seq;
    let held = t.head.last.filter(|_| t.head.seq > 0);
    if !t.sealed.is_empty() {
        log::info!(
            "site {site}: {} spool files wait for their acknowledgement (from {})",
            t.sealed.len(),
            t.sealed.values().next().map_or("", |s| s.name.as_str())
        );
    }
    t.note();
    t.check_load()?;
    Ok(Opened {
        transport: Box::new(t),
        received: None,
        held,
    })
}

impl SpoolTransport {
    /// Removes what a sealing cut short left in `.tmp/`.
    fn clean_tmp(&self) {
        let tmp = self.outbox.join(".tmp");
        let prefix = format!("{}.", self.shared.site_id);
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// The retained files of the current stream; others (and files past `head`, whose
    /// sealing did not finish) are removed.
    fn load_sealed(&mut self) -> Result<(), LinkError> {
        let rd = std::fs::read_dir(&self.dir)
            .map_err(io_err(format!("cannot list {}", self.dir.display())))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(seq) = self.seq_of(&name) else {
                // Files of another stream, and what a write cut short left.
                if name.ends_with(spool::SUFFIX)
                    || (name.starts_with('.') && name.contains(".tmp."))
                {
                    let _ = std::fs::remove_file(e.path());
                }
                continue;
            };
            if seq > self.head.seq {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            self.sealed.insert(
                seq,
                Sealed {
                    name,
                    frame: None,
                    published: Instant::now(),
                },
            );
        }
        // The newest file may have been sealed without reaching the outbox.
        if let Some((_, s)) = self.sealed.iter().next_back() {
            if !self.outbox.join(&s.name).exists() {
                let name = s.name.clone();
                self.publish(&name)?;
            }
        }
        Ok(())
    }

    /// Sealed files removed from `<state>/spool/` before they were acknowledged cannot be put
    /// back byte for byte: the chain goes back to the last file still there (or the last one
    /// acknowledged), and what followed is sealed again from the journal, which still holds
    /// it (it was never acknowledged). Should the old files reach the router after all, it
    /// refuses them (they no longer follow the chain it applies).
    fn repair_chain(&mut self) -> Result<(), LinkError> {
        let Some(k) = (self.acked + 1..=self.head.seq).find(|s| !self.sealed.contains_key(s))
        else {
            return Ok(());
        };
        let anchor = if k - 1 > self.acked {
            let name = self.sealed.get(&(k - 1)).map(|s| s.name.clone());
            name.and_then(|n| std::fs::read(self.dir.join(n)).ok())
                .and_then(|b| Some((spool::Header::decode(&b).ok()?, spool::recorded_hash(&b)?)))
                .map(|(h, hash)| Head {
                    seq: h.seq,
                    hash,
                    stream: h.stream,
                    last: h.last_complete.or(self.head.last),
                })
        } else if k == 1 {
            Some(Head {
                stream: self.shared.stream(),
                ..Head::default()
            })
        } else {
            std::fs::read_to_string(self.dir.join("acked"))
                .ok()
                .and_then(|t| Head::decode(&t))
                .filter(|a| a.seq == k - 1 && a.stream == self.shared.stream())
        };
        let Some(anchor) = anchor else {
            return Err(LinkError::Local(format!(
                "spool: sealed file {k} of {} is gone from {} before the router acknowledged it, and the file before it is not known either; the files it held cannot be sent again in sequence",
                self.site,
                self.dir.display(),
            )));
        };
        let gone: Vec<u64> = self.sealed.range(k..).map(|(s, _)| *s).collect();
        for s in &gone {
            if let Some(f) = self.sealed.remove(s) {
                let _ = std::fs::remove_file(self.dir.join(&f.name));
                let _ = std::fs::remove_file(self.outbox.join(&f.name));
            }
        }
        log::error!(
            "site {}: spool files {k} to {} were removed from {} before the router acknowledged them; sealing what they held again from the journal (the router refuses the old ones if they still arrive)",
            self.site,
            self.head.seq,
            self.dir.display()
        );
        let head_path = self.dir.join("head");
        mirrorfs::state::write_atomic(&head_path, anchor.encode().as_bytes())
            .map_err(io_err(format!("cannot write {}", head_path.display())))?;
        self.head = anchor;
        Ok(())
    }

    /// The sequence number of `name` if it is a file of this source's current stream.
    fn seq_of(&self, name: &str) -> Option<u64> {
        let rest = name.strip_suffix(spool::SUFFIX)?;
        let prefix = format!("{}.{:016x}.", self.shared.site_id, self.shared.stream());
        rest.strip_prefix(&prefix)?.parse().ok()
    }

    /// Seals kept file `name` again under the site's current key if it was sealed under
    /// another (a key corrected after the router refused files); whether it did.
    fn reseal_kept(&self, name: &str) -> Result<bool, LinkError> {
        let kept = self.dir.join(name);
        let bytes =
            std::fs::read(&kept).map_err(io_err(format!("cannot read {}", kept.display())))?;
        match spool::reseal(&bytes, &self.key) {
            Ok(None) => Ok(false),
            Ok(Some(again)) => {
                mirrorfs::state::write_atomic(&kept, &again)
                    .map_err(io_err(format!("cannot write {}", kept.display())))?;
                log::warn!(
                    "site {}: spool file {name} was sealed under another key; sealed again under the current one",
                    self.site
                );
                Ok(true)
            }
            Err(e) => Err(LinkError::Local(format!(
                "spool: the kept file {} is damaged ({e}); move it aside",
                kept.display()
            ))),
        }
    }

    /// Links retained file `name` into the outbox: through `.tmp/`, then renamed (what a
    /// failure leaves in `.tmp/` is removed).
    fn publish(&self, name: &str) -> Result<(), LinkError> {
        let kept = self.dir.join(name);
        let tmp = self.outbox.join(".tmp").join(name);
        let _ = std::fs::remove_file(&tmp);
        let to = self.outbox.join(name);
        let put = (|| {
            if std::fs::hard_link(&kept, &tmp).is_err() {
                // Another file system: a copy, made durable.
                std::fs::copy(&kept, &tmp)?;
                std::fs::File::open(&tmp)?.sync_all()?;
            }
            std::fs::rename(&tmp, &to)?;
            mirrorfs::state::fsync_dir(&self.outbox)
        })();
        if put.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        put.map_err(io_err(format!(
            "cannot put {} into the outbox",
            to.display()
        )))
    }

    /// Seals the file being filled: kept, `head` moved on, then put into the outbox.
    fn seal(&mut self) -> Result<(), LinkError> {
        let Some(b) = self.building.take() else {
            return Ok(());
        };
        if b.is_empty() {
            return Ok(());
        }
        let (bytes, hash) = b
            .seal(&self.key, mirrorfs::now_ns())
            .map_err(|e| LinkError::Local(format!("spool: cannot seal a file: {e}")))?;
        let stream = self.shared.stream();
        let name = spool::file_name(&self.shared.site_id, stream, b.seq());
        let kept = self.dir.join(&name);
        mirrorfs::state::write_atomic(&kept, &bytes)
            .map_err(io_err(format!("cannot write {}", kept.display())))?;
        let last = spool::Header::decode(&bytes)
            .ok()
            .and_then(|h| h.last_complete)
            .or(self.head.last);
        let head = Head {
            seq: b.seq(),
            hash,
            stream,
            last,
        };
        let head_path = self.dir.join("head");
        mirrorfs::state::write_atomic(&head_path, head.encode().as_bytes())
            .map_err(io_err(format!("cannot write {}", head_path.display())))?;
        self.head = head;
        self.publish(&name)?;
        log::info!(
            "site {}: sealed spool file {name} ({} entries, {} bytes)",
            self.site,
            b.len(),
            bytes.len()
        );
        self.sealed.insert(
            b.seq(),
            Sealed {
                name,
                frame: Some(self.building_frame),
                published: Instant::now(),
            },
        );
        self.note();
        Ok(())
    }

    /// A new file after the last sealed one, under the site's current rules.
    fn begin(&mut self) -> &mut Builder {
        let table = self.shared.table.load();
        let stream = self.shared.stream();
        let new_stream = self.head.seq == 0;
        let b = Builder::new(
            &self.shared.site_id,
            stream,
            self.head.seq + 1,
            if new_stream { [0; 32] } else { self.head.hash },
            new_stream,
            table.version,
            table.wire_rules(&self.site),
        );
        self.started = Instant::now();
        self.building.insert(b)
    }

    /// Looks at the files that came back: the acknowledgement, then the requests.
    fn look(&mut self, force: bool) {
        if !force && self.looked.elapsed() < LOOK_EVERY {
            return;
        }
        self.looked = Instant::now();
        // A key corrected while running is taken at once (files not yet acknowledged are
        // sealed again under it when they are written again).
        match super::key_of(&self.shared, &self.site) {
            Ok(k) if k != self.key => {
                log::info!("site {}: its key changed; using the new one", self.site);
                self.key = k;
                self.ack_file.forget();
                self.requests_file.forget();
                self.rekeyed = true;
                self.last_refusal = None;
            }
            Ok(_) => {}
            Err(e) => log::warn!("site {}: {e}", self.site),
        }
        let acks = self.outbox.join("acks");
        let ack_path = acks.join(format!("{}.ack", self.shared.site_id));
        let key = self.key.clone();
        if let Some(read) = self.ack_file.fresh(&ack_path, |t| Ack::decode(t, &key)) {
            match read {
                Ok(a) if a.site != self.shared.site_id => log::warn!(
                    "site {}: {} is an acknowledgement for source {}, not this one; ignored",
                    self.site,
                    ack_path.display(),
                    a.site
                ),
                Ok(a) if a.stream != self.shared.stream() => {
                    // Nothing of this stream applied yet (stream 0): the refusals still count.
                    let _ = self.note_refusals(&a);
                    if a.stream != 0 {
                        log::info!(
                            "site {}: {} acknowledges journal stream {:016x}, not the current one; ignored",
                            self.site,
                            ack_path.display(),
                            a.stream
                        );
                    }
                    self.note();
                }
                Ok(a) => self.acknowledged(a),
                Err(spool::SpoolError::Mac) => {
                    // Sealed by the router under another key than this site's: the two keys
                    // differ (what is sealed here is refused there for the same reason).
                    let why = format!(
                        "{} is not sealed with this site's key: the keys here and at the router differ (`mirror-ctl key add {} KEY` with the router's key, then `mirror-ctl unblock`)",
                        ack_path.display(),
                        self.site
                    );
                    log::warn!("site {}: {why}", self.site);
                    self.last_refusal = Some(why);
                    self.note();
                }
                Err(e) => log::warn!("site {}: {} refused: {e}", self.site, ack_path.display()),
            }
        }
        let req_path = acks.join(format!("{}.requests", self.shared.site_id));
        if let Some(read) = self
            .requests_file
            .fresh(&req_path, |t| Requests::decode(t, &key))
        {
            match read {
                Ok(r) if r.site == self.shared.site_id && r.stream == self.shared.stream() => {
                    for item in r.items {
                        let k = (item.id, item.rule_crc, item.name.clone());
                        if self.handled.insert(k) {
                            let _ = self.events.send(Event::Msg(Msg::Resync {
                                rule_crc: item.rule_crc,
                                name: item.name,
                            }));
                        }
                    }
                }
                Ok(_) => log::info!(
                    "site {}: {} is for another source or stream; ignored",
                    self.site,
                    req_path.display()
                ),
                Err(e) => log::warn!("site {}: {} refused: {e}", self.site, req_path.display()),
            }
        }
    }

    /// Logs the refusals of `a` not seen before; the newest shows in status.
    fn note_refusals(&mut self, a: &Ack) -> bool {
        let mut new = false;
        for r in &a.refused {
            if self.refusals.insert(r.clone()) {
                log::warn!("site {}: the router refused a spool file: {r}", self.site);
                self.last_refusal = Some(r.clone());
                new = true;
            }
        }
        new
    }

    /// The router acknowledged files up to `a.seq`: they become the link's acknowledgements
    /// and leave the outbox.
    fn acknowledged(&mut self, a: Ack) {
        let refused_now = self.note_refusals(&a);
        if a.seq > self.head.seq {
            log::warn!(
                "site {}: the acknowledgement names spool file {} but only {} were sealed; ignored",
                self.site,
                a.seq,
                self.head.seq
            );
            return;
        }
        self.last_ack = Some(a.clone());
        if a.seq <= self.acked && self.acked != 0 {
            self.note();
            return;
        }
        self.acked = a.seq;
        // Files go through again: an older refusal is past (new ones were noted above).
        if !refused_now {
            self.last_refusal = None;
        }
        let done: Vec<u64> = self.sealed.range(..=a.seq).map(|(k, _)| *k).collect();
        let mut frames = None;
        if let Some(s) = done.last().and_then(|k| self.sealed.get(k)) {
            // The last file acknowledged anchors the chain should later files be lost.
            let anchor = std::fs::read(self.dir.join(&s.name)).ok().and_then(|b| {
                let h = spool::Header::decode(&b).ok()?;
                Some(Head {
                    seq: h.seq,
                    hash: spool::recorded_hash(&b)?,
                    stream: h.stream,
                    last: h.last_complete,
                })
            });
            if let Some(anchor) = anchor {
                if let Err(e) = mirrorfs::state::write_atomic(
                    &self.dir.join("acked"),
                    anchor.encode().as_bytes(),
                ) {
                    log::warn!(
                        "site {}: cannot record the last acknowledged spool file: {e}",
                        self.site
                    );
                }
            }
        }
        for k in done {
            if let Some(s) = self.sealed.remove(&k) {
                frames = frames.max(s.frame);
                let _ = std::fs::remove_file(self.outbox.join(&s.name));
                let _ = std::fs::remove_file(self.dir.join(&s.name));
            }
        }
        if a.seq >= self.held_seq {
            // Every file of earlier sessions is acknowledged.
            let _ = self.events.send(Event::HeldAcked);
        }
        let upto = a.upto.unwrap_or(Position::START);
        let _ = self.events.send(Event::Msg(Msg::Ack {
            frames: frames.unwrap_or(0),
            upto,
        }));
        if let Some(applied) = a.applied {
            let _ = self.events.send(Event::Msg(Msg::Applied { upto: applied }));
        }
        self.note();
    }

    /// Puts back the unacknowledged files missing from the outbox (all of them when `now`,
    /// else those published longer ago than `--spool-resend-after`).
    fn resend(&mut self, now: bool) -> Result<(), LinkError> {
        let due: Vec<(u64, String)> = self
            .sealed
            .iter()
            .filter(|(_, s)| now || s.published.elapsed() >= self.policy.resend_after)
            .map(|(k, s)| (*k, s.name.clone()))
            .collect();
        for (k, name) in due {
            let resealed = self.reseal_kept(&name)?;
            if resealed || !self.outbox.join(&name).exists() {
                log::warn!(
                    "site {}: spool file {name} is still not acknowledged{}; writing it again",
                    self.site,
                    if resealed {
                        ""
                    } else {
                        " and gone from the outbox"
                    }
                );
                self.publish(&name)?;
            }
            if let Some(s) = self.sealed.get_mut(&k) {
                s.published = Instant::now();
            }
        }
        Ok(())
    }

    /// A spool site waits for transport until what is not acknowledged (the journal's
    /// backlog for the site) passes `--queue-limit`; then it is blocked, and tried again
    /// every probation (each try reads the acknowledgements that came meanwhile).
    fn check_load(&mut self) -> Result<(), LinkError> {
        self.loaded = Instant::now();
        // The journal's backlog, as for any site: the files sealed from it are that backlog
        // (files a dirty set sends whole are bounded by those files; counting them would block
        // the site again before they could be acknowledged).
        let journal = &self.shared.journal_dir;
        let load =
            mirrorfs::journal::bytes_from(journal, self.shared.acked(&self.site)).unwrap_or(0);
        let limit = self.policy.queue_limit.bytes(journal, load);
        if load > limit {
            return Err(LinkError::Local(format!(
                "waiting for transport: {load} bytes not acknowledged exceed the queue limit of {limit} bytes ({} spool files in the outbox, the last ack: {}); changed files are tracked and sent whole once the transfer tool brought acknowledgements back",
                self.sealed.len(),
                self.last_ack
                    .as_ref()
                    .map_or("none yet".into(), |a| format!("file {}", a.seq))
            )));
        }
        Ok(())
    }

    /// What `mirror-ctl status` shows of the spool.
    fn note(&self) {
        let oldest = self.sealed.values().next().map(|s| s.name.clone());
        let ack = self.last_ack.as_ref().map_or("none yet".to_string(), |a| {
            format!("file {} at {}", a.seq, mirrorfs::logging::utc_secs(a.time))
        });
        let mut text = match oldest {
            Some(o) => format!(
                "waiting for transport: {} spool files not acknowledged (oldest {o}); last ack: {ack}",
                self.sealed.len()
            ),
            None => format!("spool: every sealed file acknowledged; last ack: {ack}"),
        };
        if let Some(r) = &self.last_refusal {
            text.push_str(&format!("; the router REFUSED {r}"));
        }
        self.shared.sites.set_spool_note(&self.site, text);
    }
}

impl Transport for SpoolTransport {
    fn send(&mut self, msg: Msg) -> Result<(), LinkError> {
        match msg {
            Msg::Entries {
                config_version,
                entries,
                ..
            } => {
                self.frames += 1;
                let frame = self.frames;
                if self
                    .building
                    .as_ref()
                    .is_some_and(|b| b.config_version() != config_version)
                {
                    // A file holds the entries of one configuration.
                    self.seal()?;
                }
                for e in entries {
                    let b = match self.building.as_mut() {
                        Some(b) => b,
                        None => self.begin(),
                    };
                    b.push(e);
                    if b.bytes() as u64 >= self.policy.size {
                        // Sealed within the frame: the file completes the frame before it
                        // (the frame is acknowledged with the file that ends it).
                        self.building_frame = frame - 1;
                        self.seal()?;
                    }
                }
                if self.building.is_some() {
                    self.building_frame = frame;
                }
                self.last_push = Instant::now();
                Ok(())
            }
            Msg::Sums { id, .. } => {
                // No round trip: the copy sends its data.
                let _ = self.events.send(Event::Msg(Msg::SumsAnswer {
                    id,
                    size: None,
                    sums: Vec::new(),
                    why: "a spool site has no checksum exchange".into(),
                }));
                Ok(())
            }
            // A spool file carries its configuration; nothing else goes to the router.
            _ => Ok(()),
        }
    }

    fn window(&self) -> usize {
        WINDOW
    }

    fn live(&self) -> bool {
        false
    }

    fn tick(&mut self) -> Result<(), LinkError> {
        if let Some(b) = self.building.as_ref().filter(|b| !b.is_empty()) {
            let barrier = lock(&self.shared.spool_barriers).get(&self.site).copied();
            let aged = self.started.elapsed() >= self.policy.age;
            // A barrier is met once the file holds its position, or once the link, having
            // sent since the barrier was asked for, is idle (the barrier's entries may be
            // for other sites).
            let at_barrier = barrier.is_some_and(|(upto, asked)| {
                b.last_complete().is_some_and(|p| p >= upto)
                    || (self.last_push > asked && self.last_push.elapsed() >= BARRIER_IDLE)
            });
            if aged || at_barrier {
                self.seal()?;
                if at_barrier {
                    lock(&self.shared.spool_barriers).remove(&self.site);
                }
            }
        }
        self.look(false);
        if self.loaded.elapsed() >= LOAD_EVERY {
            self.check_load()?;
        }
        // On unblock, and after a key change, every file not acknowledged goes again (sealed
        // again under the current key where it was not).
        let now =
            self.shared.sites.take_unblock_request(&self.site) || std::mem::take(&mut self.rekeyed);
        self.resend(now)?;
        Ok(())
    }

    fn close(&mut self) {
        // What was gathered and not sealed is read from the journal again next time.
        self.building = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_round_trips_and_damage_is_seen() {
        let h = Head {
            seq: 42,
            hash: [7; 32],
            stream: 0xfeed,
            last: Some(Position::new(3, 4096)),
        };
        assert_eq!(Head::decode(&h.encode()), Some(h.clone()));
        let none = Head { last: None, ..h };
        assert_eq!(Head::decode(&none.encode()), Some(none));
        assert_eq!(Head::decode("seq x\n"), None);
        assert_eq!(Head::decode("hash 00\n"), None);
    }
}
