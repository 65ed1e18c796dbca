//! The receive process (seeds/002 [0059]-[0061]): one session per connected source.
//!
//! A session starts with the authenticated hello ([`mirrorfs::wire::auth`]): a peer without
//! the key of the site it names is refused before anything else is read. A session of role
//! [`Role::Validate`] answers one [`Msg::Validate`] from `mirror-ctl` and ends; one of role
//! [`Role::Restore`] sends backups back ([`crate::restore`]), one of role [`Role::Verify`]
//! lists and checksums them ([`crate::verify`]). Every frame
//! after the hello carries the session's MAC. Connections still authenticating, and sessions
//! per site, are limited ([`crate::shared::Limits`]); a peer over a limit of the protocol
//! ([`Msg::check_limits`], the frame size) is disconnected with the reason in the log.
//!
//! Entries are accepted only under the configuration version the router last stored for that
//! source; otherwise the router answers [`Msg::SendConfig`] and drops entries until the
//! configuration arrives. Accepted entries are appended to RT1/RT2 and made durable
//! (one fsync per batch) before [`Msg::Ack`]. Entries at or below the last position received
//! completely are dropped as duplicates (a sender resending after a restart); copies the
//! router asked for ([`mirrorfs::wire::Part::Extra`]) never are. When a source connects, it
//! is asked again for every copy still pending ([`crate::resync`]), once the router has its
//! configuration (asked for at once when the router has none).
//!
//! A source session may travel on many connections ([`crate::conns`]): its first
//! connection makes it and takes the seat; each further one ([`Role::Join`]) names the
//! session's token and takes none. Each connection is read by a thread of its own into the
//! session's reorder buffer, and the session's thread takes the stream from there in the
//! sender's order, so everything below works on one ordered stream however many connections
//! carry it.
//!
//! Every session ends, and gives its seat back, whatever fails: the commit thread owns its
//! end of the channel, so when storing or acknowledging fails (a full router-log disk, a
//! sender that died) the reading thread's next hand-over fails at once instead of waiting
//! for ever; its connections are shut down both ways. A peer that vanishes without a word is
//! noticed by TCP keepalive and a user timeout ([`mirrorfs::wire::keepalive`]), and a source whose heartbeats
//! stop has all its sessions closed (`heartbeat`).

use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirrorfs::journal::Position;
use mirrorfs::rule::Dest;
use mirrorfs::wire::auth::{self, FrameMac, HandshakeError, Key};
use mirrorfs::wire::{read_sealed, Msg, Role, WireEntry, WireError, PROTOCOL_VERSION};

use crate::beneath::{is_confinement, Root};
use crate::config::RouterRule;
use crate::conns::Conns;
use crate::shared::{lock, PeerOut, Router, Seat};

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The connection.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The peer was refused (no key, wrong key, a limit); it was told why.
    #[error("refused: {0}")]
    Refused(String),
    /// Storing failed (the entries were not acknowledged).
    #[error("{0}")]
    Store(String),
}

/// Accepts connections forever, one thread per session.
pub fn serve(router: Arc<Router>, listener: TcpListener) {
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                let r = router.clone();
                let peer = s
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "?".into());
                let max = router.cfg.limits.handshakes;
                let Some(seat) = router.take_seat("", max) else {
                    log::warn!(
                        "refused {peer}: {max} connections are already authenticating (limit)"
                    );
                    continue;
                };
                let spawned = std::thread::Builder::new()
                    .name(format!("session {peer}"))
                    .spawn(move || match session(&r, s, seat) {
                        Ok(()) => log::info!("session with {peer} ended"),
                        Err(SessionError::Wire(WireError::Closed)) => {
                            log::info!("{peer} closed the connection")
                        }
                        Err(SessionError::Refused(why)) => log::warn!("refused {peer}: {why}"),
                        Err(e) => log::warn!("session with {peer}: {e}"),
                    });
                if let Err(e) = spawned {
                    log::error!("cannot start a session thread: {e}");
                }
            }
            Err(e) => {
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Sends `msg` on the session.
pub(crate) fn send(w: &Mutex<PeerOut>, msg: &Msg) -> Result<(), SessionError> {
    lock(w).send(msg)?;
    Ok(())
}

/// Refuses with a reason: tells the peer, then ends the session.
pub(crate) fn refuse(w: &Mutex<PeerOut>, reason: String) -> SessionError {
    let _ = send(
        w,
        &Msg::Error {
            reason: reason.clone(),
        },
    );
    SessionError::Refused(reason)
}

/// The key of source `site`, or why it has none.
fn key_of(router: &Router, site: &str) -> Result<Key, String> {
    if !mirrorfs::wire::msg::valid_site_id(site) {
        return Err(format!("invalid site id {site:?}"));
    }
    match router.keys.get_exact(site) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(format!(
            "site {site} has no key on this router (add one there with `mirror-ctl router key add {site}`)"
        )),
        Err(e) => {
            log::error!("{e}");
            Err("the router cannot read its key file".into())
        }
    }
}

/// A session: the connection holds one of the handshake seats until it is authenticated,
/// then one of its site's.
fn session(router: &Router, stream: TcpStream, authenticating: Seat) -> Result<(), SessionError> {
    stream.set_nodelay(true).map_err(WireError::Io)?;
    mirrorfs::wire::keepalive(&stream);
    // A peer that stops reading cannot hold a session (and its commit thread) forever.
    stream
        .set_write_timeout(Some(WRITE_TIMEOUT))
        .map_err(WireError::Io)?;
    let limits = router.cfg.limits;
    stream
        .set_read_timeout(Some(limits.handshake_timeout))
        .map_err(WireError::Io)?;
    let mut out = stream.try_clone().map_err(WireError::Io)?;
    let mut r = BufReader::with_capacity(1 << 20, stream);
    let mut key = None;
    let accepted = auth::server(&mut r, &mut out, |site| {
        key_of(router, site).inspect(|k| key = Some(k.clone()))
    });
    drop(authenticating);
    let accepted = accepted.map_err(|e| match e {
        HandshakeError::Wire(w) => SessionError::Wire(w),
        HandshakeError::Rejected(reason) => SessionError::Refused(reason),
        other => SessionError::Protocol(other.to_string()),
    })?;
    let Some(key) = key else {
        return Err(SessionError::Protocol("accepted without a key".into()));
    };
    let site = accepted.site;
    let stream_id = accepted.stream;
    let mut recv = accepted.session.recv;
    let w = Arc::new(Mutex::new(PeerOut::new(out, accepted.session.send)));
    if accepted.role == Role::Join {
        // A further connection of a session: it has the session's seat. (Its join is read
        // within the handshake's timeout.)
        return join(router, &site, &key, r, recv, &w);
    }
    let Some(_seat) = router.take_seat(&site, limits.sessions_per_site) else {
        return Err(refuse(
            &w,
            format!(
                "site {site} already has {} sessions open (limit)",
                limits.sessions_per_site
            ),
        ));
    };
    if accepted.role == Role::Validate {
        // One question, asked at once (the handshake's timeout still holds).
        return match read_sealed(&mut r, &mut recv)? {
            Msg::Validate { dest, dir } => {
                let (ok, reason) = validate_for(router, &site, &dest, dir);
                send(&w, &Msg::Validated { ok, reason })
            }
            other => Err(refuse(
                &w,
                format!("expected validate, got {}", other.kind()),
            )),
        };
    }
    if accepted.role == Role::Restore {
        log::info!("source {site} opened a restore session");
        let result = crate::restore::serve(router, &site, &key, &w, &mut r, &mut recv);
        lock(&w).shutdown();
        return result;
    }
    if accepted.role == Role::Verify {
        log::info!("source {site} opened a verify session");
        let result = crate::verify::serve(router, &site, &key, &w, &mut r, &mut recv);
        lock(&w).shutdown();
        return result;
    }
    // A source may be idle for hours: its session waits for frames without a timeout (TCP
    // keepalive and the heartbeats notice a peer that is gone).
    r.get_ref().set_read_timeout(None).map_err(WireError::Io)?;
    let received = router.received(&site, stream_id);
    let token = loop {
        // Only an authenticated peer of the same site can use it.
        let t = mirrorfs::sfa::random_u64();
        if t != 0 && !lock(&router.joinable).contains_key(&t) {
            break t;
        }
    };
    // Joinable before the sender hears of it.
    let conns = Conns::new(&site, token, w.clone());
    lock(&router.joinable).insert(token, conns.clone());
    if let Err(e) = send(
        &w,
        &Msg::Welcome {
            protocol: PROTOCOL_VERSION,
            received,
            token,
        },
    ) {
        lock(&router.joinable).remove(&token);
        return Err(e);
    }
    log::info!(
        "source {site} connected (received up to {})",
        received.map_or("nothing".into(), |p| p.to_string())
    );
    router.add_peer(&site, w.clone());
    let result = std::thread::scope(|s| {
        // The first connection is read by a thread of its own, like those that join; this one
        // takes the stream in order.
        let reader = std::thread::Builder::new()
            .name(format!("conn {site}/0"))
            .spawn_scoped(s, || conns.feed(0, &mut r, &mut recv));
        if let Err(e) = reader {
            return Err(SessionError::Store(format!(
                "cannot start a connection thread: {e}"
            )));
        }
        let result = serve_source(router, &site, &key, &w, &*conns);
        lock(&router.joinable).remove(&token);
        // Whatever ended the session, its connections end with it.
        conns.end();
        result
    });
    router.remove_peer(&site, &w);
    lock(&w).shutdown();
    result
}

/// A connection of role [`Role::Join`]: it names the session it joins with the token of that
/// session's welcome, then carries frames of its stream until it ends.
fn join(
    router: &Router,
    site: &str,
    key: &Key,
    mut r: BufReader<TcpStream>,
    mut recv: FrameMac,
    w: &Mutex<PeerOut>,
) -> Result<(), SessionError> {
    let (token, index) = match read_sealed(&mut r, &mut recv)? {
        Msg::Join { token, index } => (token, index),
        other => return Err(refuse(w, format!("expected join, got {}", other.kind()))),
    };
    let conns = lock(&router.joinable).get(&token).cloned();
    let Some(conns) = conns.filter(|c| c.site == site) else {
        return Err(refuse(
            w,
            format!("site {site} has no session {token:#x} to join (it ended)"),
        ));
    };
    if let Some(why) = key_revoked(router, site, key) {
        return Err(refuse(w, why));
    }
    r.get_ref().set_read_timeout(None).map_err(WireError::Io)?;
    // The connection's own sending half moves into the session's.
    let Some((stream, mac)) = lock(w).take_first() else {
        return Err(SessionError::Protocol("no connection to join with".into()));
    };
    let id = conns
        .join(index, stream, mac)
        .map_err(SessionError::Refused)?;
    let n = conns.connections();
    log::info!("source {site}: connection {index} joined its session ({n} connections)");
    conns.feed(id, &mut r, &mut recv);
    Ok(())
}

/// Where a source session takes its stream from, in order: its connections ([`Conns`]), or
/// the spool files a coordinator reads ([`crate::spool`]).
pub(crate) trait Inbound {
    /// The next message of the stream (waits for it); an error ends the session.
    fn next(&self) -> Result<Msg, SessionError>;
    /// Whether a message is waiting already.
    fn ready(&self) -> bool;
}

impl Inbound for Conns {
    fn next(&self) -> Result<Msg, SessionError> {
        Conns::next(self)
    }
    fn ready(&self) -> bool {
        Conns::ready(self)
    }
}

/// A source session on an ordered stream: entries stored and acknowledged, configuration,
/// checksum questions; the router's messages go to `w`.
pub(crate) fn serve_source(
    router: &Router,
    site: &str,
    key: &Key,
    w: &Mutex<PeerOut>,
    conns: &dyn Inbound,
) -> Result<(), SessionError> {
    // The committer stores batches (one fsync each) and acknowledges them while this thread
    // goes on reading the next frames: the network and the disk work at the same time.
    let (tx, rx) = crossbeam_channel::bounded::<Batch>(0);
    let failed: Mutex<Option<SessionError>> = Mutex::new(None);
    let failed = &failed;
    std::thread::scope(|s| {
        // The committer owns the receiving end: when it stops (whatever the reason), the
        // channel is disconnected and every hand-over to it fails at once.
        let committer = std::thread::Builder::new()
            .name(format!("commit {site}"))
            .spawn_scoped(s, move || {
                let rx = rx;
                for (batch, frames) in rx.iter().filter(|(b, _)| !b.is_empty()) {
                    let res = store(router, site, batch).and_then(|upto| {
                        send(
                            w,
                            &Msg::Ack {
                                frames,
                                upto: upto.unwrap_or(Position::START),
                            },
                        )
                    });
                    if let Err(e) = res {
                        if let SessionError::Store(why) = &e {
                            // The source says why in its status (nothing was acknowledged).
                            let _ = send(
                                w,
                                &Msg::Error {
                                    reason: format!("the router cannot store entries: {why}"),
                                },
                            );
                        }
                        *lock(failed) = Some(e);
                        // Ends the read of the next frame: nothing more is acknowledged.
                        lock(w).shutdown();
                        return;
                    }
                }
            })
            .map_err(|e| SessionError::Store(format!("cannot start a commit thread: {e}")))?;
        let result = receive_frames(router, site, key, w, conns, &tx);
        drop(tx);
        let _ = committer.join();
        match lock(failed).take() {
            Some(e) => Err(e),
            None => result,
        }
    })
}

/// Entries for the committer, and the number of the session's last entries frame among them.
type Batch = (Vec<WireEntry>, u64);

/// Takes the stream's frames in order until the session ends, handing entries to the
/// committer in batches.
/// Entries are taken only while the key the session was opened with is still the site's:
/// removing (or replacing) it ends the session before anything more is acknowledged.
fn receive_frames(
    router: &Router,
    site: &str,
    key: &Key,
    w: &Mutex<PeerOut>,
    conns: &dyn Inbound,
    committer: &crossbeam_channel::Sender<Batch>,
) -> Result<(), SessionError> {
    let mut awaiting_config = false;
    // The copies still asked of this source go once the router has its configuration (a
    // source drops the copy it is sending when asked for its configuration); the router asks
    // for it at once when it has none, so that an idle source gets them too.
    if lock(&router.versions).get(site).is_some() {
        router.on_connect(site);
    } else {
        send(w, &Msg::SendConfig { have: None })?;
        awaiting_config = true;
    }
    // Entries accepted and not yet handed over: a batch goes to the committer when it is
    // idle, or (waiting for it) when no more frames are waiting or the batch grew large, so
    // a busy committer makes the next batch larger (group commit across frames).
    let mut pending: Vec<WireEntry> = Vec::new();
    let mut pending_bytes = 0usize;
    // Entries frames received in this session (the sender numbers them the same way).
    let mut frames = 0u64;
    // The backup file a copy compares checksums with (`Msg::Sums`).
    let mut sums = crate::sums::SumsCache::default();
    let stopped = || SessionError::Store("the commit thread stopped".into());
    // Waits until everything handed over is stored: the committer takes the next batch (an
    // empty one) only once it finished the last.
    let barrier = || committer.send((Vec::new(), 0)).map_err(|_| stopped());
    loop {
        if !pending.is_empty() {
            let full = pending_bytes >= GROUP_BYTES || !conns.ready();
            let batch = (std::mem::take(&mut pending), frames);
            pending = if full {
                committer.send(batch).map_err(|_| stopped())?;
                Vec::new()
            } else {
                match committer.try_send(batch) {
                    Ok(()) => Vec::new(),
                    Err(crossbeam_channel::TrySendError::Full((b, _))) => b,
                    Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err(stopped()),
                }
            };
            if pending.is_empty() {
                pending_bytes = 0;
            }
        }
        let msg = conns.next()?;
        if !matches!(msg, Msg::Entries { .. }) {
            if !pending.is_empty() {
                committer
                    .send((std::mem::take(&mut pending), frames))
                    .map_err(|_| stopped())?;
                pending_bytes = 0;
            }
            barrier()?;
        }
        match msg {
            Msg::Entries {
                config_version,
                entries,
                ..
            } => {
                frames += 1;
                if let Some(why) = key_revoked(router, site, key) {
                    return Err(refuse(w, why));
                }
                let known = lock(&router.versions).get(site).copied();
                if known != Some(config_version) {
                    if !awaiting_config {
                        log::info!(
                            "source {site} sends configuration version {config_version}, router has {}: asking for it",
                            known.map_or("none".into(), |v| v.to_string())
                        );
                        send(w, &Msg::SendConfig { have: known })?;
                        awaiting_config = true;
                    }
                    continue;
                }
                pending_bytes += entries.iter().map(WireEntry::wire_len).sum::<usize>();
                pending.extend(entries);
            }
            Msg::Config { version, rules, .. } => {
                let mut checked = Vec::with_capacity(rules.len());
                for rule in &rules {
                    match RouterRule::from_wire(site, rule) {
                        Ok(x) => checked.push(x),
                        Err(e) => return Err(refuse(w, e.to_string())),
                    }
                }
                if let Some((a, b)) = crate::config::overlapping(&checked) {
                    return Err(refuse(
                        w,
                        format!(
                            "configuration of site {site} refused: rules {} (destination {}) and {} (destination {}) would write the same backup files",
                            a.pattern, a.dest, b.pattern, b.dest
                        ),
                    ));
                }
                let res = lock(&router.db).replace_rules(site, version, &rules);
                if let Err(e) = res {
                    return Err(refuse(w, format!("cannot store the configuration: {e}")));
                }
                let table = lock(&router.db)
                    .table()
                    .map_err(|e| SessionError::Store(e.to_string()))?;
                router.set_table(table);
                lock(&router.versions).insert(site.to_string(), version);
                log::info!(
                    "source {site}: configuration version {version} stored ({} rules)",
                    checked.len()
                );
                router.on_config(site);
                awaiting_config = false;
                send(w, &Msg::ConfigOk { version })?;
            }
            Msg::Heartbeat => {}
            Msg::Validate { dest, dir } => {
                let (ok, reason) = validate_for(router, site, &dest, dir);
                send(w, &Msg::Validated { ok, reason })?;
            }
            Msg::Sums {
                id,
                rule_crc,
                name,
                level,
                nodes,
            } => {
                // Everything before it is stored (the barrier above): its sums are those of
                // the backup once that is applied.
                let answer = if awaiting_config {
                    crate::sums::none(id, "the router waits for the source's configuration".into())
                } else {
                    sums.answer(router, site, id, rule_crc, &name, level, &nodes, frames)
                };
                send(w, &answer)?;
            }
            other => {
                return Err(refuse(
                    w,
                    format!("unexpected {} from a source", other.kind()),
                ))
            }
        }
    }
}

/// Why a session opened with `key` may not take entries any more: the key file no longer
/// holds it for `site`. A key file that cannot be read changes nothing (the error is logged).
pub(crate) fn key_revoked(router: &Router, site: &str, key: &Key) -> Option<String> {
    match router.keys.get_exact(site) {
        Ok(Some(k)) if k == *key => None,
        Ok(Some(_)) => Some(format!(
            "the key of site {site} on this router was replaced; the session ends (the source reconnects with its current key)"
        )),
        Ok(None) => Some(format!(
            "site {site} has no key on this router any more (`mirror-ctl router key add {site}` lets it in again); the session ends"
        )),
        Err(e) => {
            log::error!("{e}; the session of {site} goes on with the key it was opened with");
            None
        }
    }
}

/// How long a write to a peer may stall before its session ends.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes of entries stored with one fsync at most.
const GROUP_BYTES: usize = 16 << 20;

/// Appends the new entries of a batch durably; the last position received completely.
fn store(
    router: &Router,
    site: &str,
    entries: Vec<WireEntry>,
) -> Result<Option<Position>, SessionError> {
    let done = lock(&router.sources).get(site).and_then(|s| s.done);
    let fresh: Vec<WireEntry> = entries
        .into_iter()
        .filter(|e| e.part == mirrorfs::wire::Part::Extra || done.is_none_or(|d| e.pos > d))
        .collect();
    if fresh.is_empty() {
        return Ok(done);
    }
    let last = fresh
        .iter()
        .filter(|e| e.part.completes())
        .map(|e| e.pos)
        .max();
    let end = {
        let mut rt = lock(&router.rt);
        match rt.append(site, &fresh) {
            // Retained router logs never cost room for new entries: they go first.
            Err(e) if is_no_room(&e) && router.give_up_retained() > 0 => rt.append(site, &fresh),
            r => r,
        }
        .map_err(|e| SessionError::Store(e.to_string()))?
    };
    router.publish(end);
    router.copies_stored(site, &fresh);
    let mut sources = lock(&router.sources);
    let s = sources.entry(site.to_string()).or_default();
    if let Some(l) = last {
        if s.done.is_none_or(|d| d < l) {
            s.done = Some(l);
        }
    }
    Ok(s.done)
}

/// Whether `e` says the router-log disk is full.
fn is_no_room(e: &crate::rtlog::RtError) -> bool {
    matches!(e, crate::rtlog::RtError::Io { err, .. } if matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
}

/// Whether source `site` may write destination `dest` (a directory when `dir`): beneath the
/// namespace its key grants, and creatable or writable there ([`validate`]).
fn validate_for(router: &Router, site: &str, dest: &str, dir: bool) -> (bool, String) {
    let d = match Dest::parse(dest) {
        Ok(d) => d,
        Err(e) => return (false, e.to_string()),
    };
    let Some(ns) = router.namespace(site) else {
        return (false, format!("site {site} has no key on this router"));
    };
    let rel = ns.path().join(d.as_str());
    if let Some(std::path::Component::Normal(c)) = rel.components().next() {
        if c == crate::staging::DIR {
            return (
                false,
                format!(
                    "{} is where the router builds copies ({}/ at the top of its root): choose another --dest",
                    router.cfg.root.join(&rel).display(),
                    crate::staging::DIR
                ),
            );
        }
    }
    validate(&router.cfg.root, &rel, dir)
}

/// Whether `rel` (a directory when `dir`), a normalised path relative to `root`, can be
/// created or written under `root`, looked at beneath the root through no symlink.
pub fn validate(root: &Path, rel: &Path, dir: bool) -> (bool, String) {
    let shown = root.join(rel);
    let root = match Root::open(root) {
        Ok(r) => r,
        Err(e) => return (false, format!("the backup root {}: {e}", root.display())),
    };
    let writable = |p: &Path, what: i32| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            // SAFETY: c is a valid NUL-terminated path.
            .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), what) } == 0)
    };
    let dir_ok = libc::W_OK | libc::X_OK;
    // The destination itself, else its nearest existing ancestor beneath the root.
    for (i, anc) in rel.ancestors().enumerate() {
        // Held while its path (through the directory's descriptor) is in use.
        let place;
        let at = if anc.as_os_str().is_empty() {
            root.path().to_path_buf()
        } else {
            match root.place(anc, false) {
                Ok(p) => {
                    place = p;
                    place.path()
                }
                Err(e) if is_confinement(&e) => {
                    return (
                        false,
                        format!(
                            "{} passes through a symbolic link; refusing to follow it",
                            shown.display()
                        ),
                    )
                }
                // Missing, or under a file: an ancestor says which.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    continue
                }
                Err(e) => return (false, format!("{}: {e}", shown.display())),
            }
        };
        let m = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(_) => continue,
        };
        let here = root.path().join(anc);
        return match (i, m.file_type()) {
            (_, t) if t.is_symlink() => (
                false,
                format!(
                    "{} is a symbolic link; refusing to follow it",
                    here.display()
                ),
            ),
            (0, _) if dir && !m.is_dir() => (
                false,
                format!("{} exists and is not a directory", shown.display()),
            ),
            (0, _) if !dir && m.is_dir() => (
                false,
                format!("{} is a directory, not a file", shown.display()),
            ),
            (0, _) => {
                let ok = writable(&at, if m.is_dir() { dir_ok } else { libc::W_OK });
                if ok {
                    (true, format!("{} exists and is writable", shown.display()))
                } else {
                    (
                        false,
                        format!("{} is not writable by the router", shown.display()),
                    )
                }
            }
            _ if !m.is_dir() => (
                false,
                format!(
                    "{} cannot be created: {} is not a directory",
                    shown.display(),
                    here.display()
                ),
            ),
            _ if writable(&at, dir_ok) => (true, format!("{} can be created", shown.display())),
            _ => (
                false,
                format!(
                    "{} cannot be created: {} is not writable by the router",
                    shown.display(),
                    here.display()
                ),
            ),
        };
    }
    (false, format!("{} cannot be created", shown.display()))
}

#[cfg(test)]
mod tests {
    //! A real router state, a real connection on loopback and the real handshake; the
    //! session's commit thread made to fail while its reading thread waits to hand over the
    //! next batch (the case that leaked the session, its thread and its seat).
    use super::*;
    use crate::shared::{Limits, RouterConfig};
    use mirrorfs::entry::Command;
    use mirrorfs::wire::auth::KeyFile;
    use mirrorfs::wire::{codec, Part};
    use std::io::Write;
    use std::time::Instant;

    const SITE: &str = "src";

    fn key() -> Key {
        Key::from_hex(&"5a".repeat(32)).unwrap()
    }

    fn router(dir: &Path, rt_size: u64) -> Arc<Router> {
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        KeyFile::store(&state.join("keys"), SITE, &key()).unwrap();
        Router::open(RouterConfig {
            root: dir.join("root"),
            key_file: state.join("keys"),
            state,
            rt_size,
            max_open: 4,
            unblock_every: Duration::from_secs(300),
            limits: Limits::default(),
            retain: crate::retain::Retain::default(),
        })
        .unwrap()
    }

    /// Entries frame number `seq` of the stream (the configuration was 1).
    fn entries(seq: u64, first: u64, n: u64) -> Msg {
        Msg::Entries {
            seq,
            config_version: 1,
            entries: (first..first + n)
                .map(|i| WireEntry {
                    pos: Position::new(1, 100 + i),
                    part: Part::Whole,
                    command: Command::Write,
                    rule_crc: 9,
                    name: format!("/p/f{i}").into_bytes(),
                    aux: Vec::new(),
                    offset: 0,
                    size: 64 << 10,
                    time_ns: 1,
                    data: vec![i as u8; 64 << 10],
                })
                .collect(),
        }
    }

    /// The source's side of a session.
    struct Source {
        stream: TcpStream,
        r: BufReader<TcpStream>,
        send: FrameMac,
        recv: FrameMac,
    }

    impl Source {
        fn send(&mut self, msg: &Msg) {
            let f = codec::encode_sealed(msg, &mut self.send).unwrap();
            self.stream.write_all(&f).unwrap();
        }
        fn read(&mut self) -> Msg {
            read_sealed(&mut self.r, &mut self.recv).unwrap()
        }
        /// Dies with unread data: the router's next write to it fails.
        fn reset(self) {
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt with a pointer to a live linger and its size.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&self.stream),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&l as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
    }

    /// Starts a session on `router`; the source's side, and what the session returns (once it
    /// ends).
    fn start(router: &Arc<Router>) -> (Source, std::sync::mpsc::Receiver<Result<(), String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let seat = router.take_seat("", 64).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let r = router.clone();
        std::thread::Builder::new()
            .name("session-under-test".into())
            .spawn(move || {
                let _ = tx.send(session(&r, server, seat).map_err(|e| e.to_string()));
            })
            .unwrap();
        let mut r = BufReader::new(client.try_clone().unwrap());
        let mut w = client.try_clone().unwrap();
        let s = auth::client(&mut r, &mut w, SITE, 1, Role::Source, &key()).unwrap();
        let mut src = Source {
            stream: client,
            r,
            send: s.send,
            recv: s.recv,
        };
        assert!(matches!(src.read(), Msg::Welcome { .. }));
        // The router has no configuration of this source yet: it asks at once.
        assert!(matches!(src.read(), Msg::SendConfig { have: None }));
        src.send(&Msg::Config {
            seq: 1,
            version: 1,
            rules: Vec::new(),
        });
        assert!(matches!(src.read(), Msg::ConfigOk { version: 1 }));
        (src, rx)
    }

    /// Waits until the session's thread sleeps on the hand-over of a batch to the (stalled)
    /// commit thread (a futex wait, twice in a row: not a passing lock).
    fn wait_handing_over() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let sleeping = || {
            std::fs::read_dir("/proc/thread-self/..").is_ok_and(|rd| {
                rd.flatten().any(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("session-under-t"))
                        && std::fs::read_to_string(t.path().join("wchan"))
                            .is_ok_and(|w| w.contains("futex"))
                })
            })
        };
        let mut seen = 0;
        while Instant::now() < deadline && seen < 2 {
            seen = if sleeping() { seen + 1 } else { 0 };
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn assert_ends_and_frees_its_seat(
        router: &Router,
        ended: &std::sync::mpsc::Receiver<Result<(), String>>,
    ) -> String {
        let res = ended
            .recv_timeout(Duration::from_secs(20))
            .expect("the session must end when its commit thread fails");
        let why = res.expect_err("the session fails");
        let seats: Vec<Seat> = (0..Limits::default().sessions_per_site)
            .filter_map(|_| router.take_seat(SITE, Limits::default().sessions_per_site))
            .collect();
        assert_eq!(
            seats.len(),
            Limits::default().sessions_per_site,
            "seat given back"
        );
        why
    }

    #[test]
    fn a_session_whose_ack_cannot_be_sent_ends_and_frees_its_seat() {
        let dir = tempfile::tempdir().unwrap();
        let router = router(dir.path(), 64 << 20);
        let (mut src, ended) = start(&router);
        // The commit thread cannot store for now; the frames pile up behind it.
        let writer = lock(&router.rt);
        for i in 0..3 {
            src.send(&entries(2 + i, i * 2, 2));
        }
        wait_handing_over();
        // The sender dies: the acknowledgement of the first batch cannot be sent.
        src.reset();
        drop(writer);
        assert_ends_and_frees_its_seat(&router, &ended);
    }

    /// Makes a directory immutable (even for root) while it lives.
    struct Immutable(std::path::PathBuf);
    impl Immutable {
        fn new(p: &Path) -> Immutable {
            let ok = std::process::Command::new("chattr")
                .arg("+i")
                .arg(p)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chattr +i {} (needs root and ext4)", p.display());
            Immutable(p.to_path_buf())
        }
    }
    impl Drop for Immutable {
        fn drop(&mut self) {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.0)
                .status();
        }
    }

    #[test]
    fn a_session_whose_commit_fails_ends_and_frees_its_seat() {
        let dir = tempfile::tempdir().unwrap();
        // Every batch after the first needs a new pair of logs.
        let router = router(dir.path(), 1);
        let (mut src, ended) = start(&router);
        src.send(&entries(2, 0, 1));
        assert!(matches!(src.read(), Msg::Ack { frames: 1, .. }));
        let writer = lock(&router.rt);
        // The next pair cannot be created: the store fails.
        let _frozen = Immutable::new(&dir.path().join("state/rt"));
        for i in 0..3 {
            src.send(&entries(3 + i, 10 + i * 2, 2));
        }
        wait_handing_over();
        drop(writer);
        let why = assert_ends_and_frees_its_seat(&router, &ended);
        assert!(why.contains("Operation not permitted"), "{why}");
    }
}
