//! Control sockets of the running daemons: one JSON request per line, one JSON response per
//! line, over a Unix socket in the state directory ([`serve`], [`request`]).
//!
//! * `<state>/mirrorfs.sock` ([`Request`]): other tools ask the journal's single writer to
//!   append entries for them (the copies `mirror-ctl sync` queues, so they are ordered with
//!   the application's writes), and to load the rules at once (with the first copies of new
//!   rules, [`crate::firstcopy`]).
//! * `<state>/mirror-sendd.sock` ([`SenderRequest`]): status of the sites, unblock.
//! * `<router state>/mirror-routerd.sock` ([`RouterRequest`]): unblock backup files.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::journal::Position;

/// A request to mirrorfs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Append one copy entry per `(rule CRC, full source name)`, then make them durable.
    Copy {
        /// The copies.
        copies: Vec<(u32, Vec<u8>)>,
        /// Skip files whose state is what their last acknowledged copy read
        /// ([`crate::entry::COPY_QUICK`]).
        #[serde(default)]
        quick: bool,
    },
    /// The mount's status (what `<state>/mirrorfs.status` holds, current even when that
    /// file cannot be written).
    Status,
    /// Load the rules now (`mirror-ctl rule add`), queuing the first copies of the rules
    /// added with one ([`crate::firstcopy`]); answered with [`Response::Queued`] (`last`: the
    /// last copy queued, if any).
    LoadRules,
    /// Whether full source name `name` exists in the directory beneath the mount (as
    /// mirrorfs itself sees it: every change it journaled is already there), asked by
    /// mirror-sendd when a copy's name looks gone through the mount (the kernel may still
    /// show a file a rename just replaced). Answered with [`Response::Exists`].
    Exists {
        /// The full source name.
        name: Vec<u8>,
    },
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// Appended; `last` is the position of the last entry.
    Queued {
        /// Position of the last appended entry.
        last: Option<Position>,
    },
    /// The mount's status.
    Mount {
        /// As its keeper last saw it.
        status: crate::keeper::MountStatus,
    },
    /// Whether the name asked for exists beneath the mount.
    Exists {
        /// It does.
        exists: bool,
    },
    /// Refused.
    Error {
        /// Why.
        reason: String,
    },
}

/// A request to mirror-sendd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SenderRequest {
    /// The state of every site.
    Status,
    /// Try blocked sites now (all, or the one named).
    Unblock {
        /// `HOST:PORT`, or every blocked site.
        site: Option<String>,
    },
    /// A mount's sync rule lost `site` (degraded or out of sync, [`crate::syncwait`]): the
    /// sender logs it and runs its `--on-block` command. Answered with
    /// [`SenderResponse::Unblocking`] (no site).
    SyncLost {
        /// `HOST:PORT`.
        site: String,
        /// Which rule, what it does now, why.
        reason: String,
    },
    /// Seal the spool files being filled of the spool sites (all, or the one named) once
    /// they hold every entry through `upto` (a sync barrier: `mirror-ctl sync --wait`).
    /// Answered with [`SenderResponse::Unblocking`] naming the spool sites.
    Seal {
        /// `spool:/OUTBOX`, or every spool site.
        site: Option<String>,
        /// The journal position the files must hold.
        upto: Position,
    },
    /// Every site's acknowledged position, once it changed past generation `after` or
    /// `wait_ms` passed (at most a second): the long poll of a mount's sync rules
    /// ([`crate::syncwait`]). Answered with [`SenderResponse::Acks`].
    Acks {
        /// The generation the asker knows.
        after: u64,
        /// How long to wait for a newer one, in milliseconds.
        wait_ms: u64,
    },
}

/// Where one site stands, for the durability points of sync rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteAck {
    /// `HOST:PORT`.
    pub site: String,
    /// Everything before it is durable in the site's router logs (or not for the site).
    pub acked: Position,
    /// Everything before it is applied to the site's backup files, once its router said so.
    pub applied: Option<Position>,
    /// A session with the router is up.
    pub connected: bool,
    /// Why it is blocked, if it is.
    pub blocked: Option<String>,
}

/// One site as mirror-sendd sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteState {
    /// `HOST:PORT`.
    pub site: String,
    /// Whether a session with the router is up now.
    pub connected: bool,
    /// Why and since when it is blocked, if it is.
    pub blocked: Option<crate::blocked::BlockedSite>,
    /// The last error on its link.
    pub last_error: Option<String>,
    /// When it happened (seconds since the epoch).
    #[serde(default)]
    pub last_error_at: Option<u64>,
    /// When the site recovered from it (a session came up after it), if it did: the error is
    /// past, not current.
    #[serde(default)]
    pub recovered_at: Option<u64>,
    /// Where it resumes (everything before is acknowledged).
    pub acked: Position,
    /// Whether the router's heartbeats arrive.
    pub heartbeat: bool,
    /// The copy entry of the journal mirror-sendd sends (or last sent) to this site, and how
    /// much of it went out (a rule's first copy shows what is left with it).
    #[serde(default)]
    pub copy: Option<CopyProgress>,
    /// File data sent to the site since mirror-sendd started (the data of writes, live and of
    /// copies).
    #[serde(default)]
    pub sent_bytes: u64,
    /// Bytes of copies sent as references to what the backup holds already, instead of
    /// their data, since mirror-sendd started.
    #[serde(default)]
    pub referenced_bytes: u64,
    /// What the site's router last said of its retained router logs and the references it
    /// resolved (all its sources together).
    #[serde(default)]
    pub router: Option<RouterStats>,
    /// A spool site: its files waiting for transport and the last acknowledgement.
    #[serde(default)]
    pub spool: Option<String>,
}

/// How far mirror-sendd got with the copy entry at `pos` for one site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyProgress {
    /// The copy entry's journal position.
    pub pos: Position,
    /// Files sent whole.
    pub files: u64,
    /// Data bytes sent.
    pub bytes: u64,
}

/// mirror-sendd's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SenderResponse {
    /// Every site of the rules.
    Status {
        /// The sites.
        sites: Vec<SiteState>,
    },
    /// The sites it is trying now.
    Unblocking {
        /// Sites.
        sites: Vec<String>,
    },
    /// Every site's positions ([`SenderRequest::Acks`]).
    Acks {
        /// Grows whenever a position moves.
        generation: u64,
        /// The sites.
        sites: Vec<SiteAck>,
    },
    /// Refused.
    Error {
        /// Why.
        reason: String,
    },
}

/// A request to mirror-routerd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RouterRequest {
    /// Retry blocked backup files now (all, or those whose backup path starts with `path`).
    Unblock {
        /// A backup path relative to the root, or every blocked file.
        path: Option<String>,
    },
    /// What the running router did since it started (`mirror-ctl router status`).
    Stats,
}

/// What a running router did since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStats {
    /// References of copies resolved from data the backup held (issue 16).
    pub refs_resolved: u64,
    /// Their bytes: data the sources did not send again.
    pub bytes_saved: u64,
    /// Bytes of applied router logs kept for references (`--retain`).
    #[serde(default)]
    pub retained_bytes: u64,
}

/// mirror-routerd's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RouterResponse {
    /// The backup files (relative to the root) being retried.
    Unblocking {
        /// Backup paths.
        paths: Vec<String>,
    },
    /// The answer to [`RouterRequest::Stats`].
    Stats {
        /// The numbers.
        stats: RouterStats,
    },
    /// Refused.
    Error {
        /// Why.
        reason: String,
    },
}

/// Answers refusing a malformed request.
pub trait Refusal {
    /// The answer to a request that does not parse.
    fn refusal(reason: String) -> Self;
}

impl Refusal for Response {
    fn refusal(reason: String) -> Self {
        Response::Error { reason }
    }
}
impl Refusal for SenderResponse {
    fn refusal(reason: String) -> Self {
        SenderResponse::Error { reason }
    }
}
impl Refusal for RouterResponse {
    fn refusal(reason: String) -> Self {
        RouterResponse::Error { reason }
    }
}

/// What serves requests of type `Q` with answers of type `A`.
pub type Handler<Q = Request, A = Response> = Arc<dyn Fn(Q) -> A + Send + Sync>;

/// The user id of the peer of a Unix socket connection.
fn peer_uid(c: &UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Whether a peer with user id `uid` may use the control sockets of this process: its owner,
/// or root.
fn trusted(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// Listens on `path` (replacing a stale socket file) and serves each connection on a thread.
/// The socket is private to its owner (mode 0600, in a state directory that is 0700), and a
/// connection from any other user (but root) is refused.
pub fn serve<Q, A>(path: &Path, handler: Handler<Q, A>) -> io::Result<PathBuf>
where
    Q: DeserializeOwned + 'static,
    A: Serialize + Refusal + 'static,
{
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let shown = path.to_path_buf();
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        match peer_uid(&c) {
                            Ok(uid) if trusted(uid) => {}
                            Ok(uid) => {
                                log::warn!(
                                    "control socket {}: refused a connection from user {uid} (only its owner and root may use it)",
                                    shown.display()
                                );
                                continue;
                            }
                            Err(e) => {
                                log::warn!("control socket {}: {e}", shown.display());
                                continue;
                            }
                        }
                        let Some(seat) = Seat::take(&open) else {
                            log::warn!(
                                "control socket {}: {MAX_CONNECTIONS} connections open already; one more refused",
                                shown.display()
                            );
                            continue;
                        };
                        let h = handler.clone();
                        let _ = std::thread::Builder::new()
                            .name("control-conn".into())
                            .spawn(move || {
                                let _seat = seat;
                                match serve_one(c, h) {
                                    Ok(()) => {}
                                    // The client went away (killed, or it gave up waiting):
                                    // its own business, nothing wrong here.
                                    Err(e) if client_gone(&e) => {
                                        log::debug!("control connection: {e}")
                                    }
                                    Err(e) => log::warn!("control connection: {e}"),
                                }
                            });
                    }
                    Err(e) => {
                        log::warn!("control socket {}: {e}", shown.display());
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(path.to_path_buf())
}

/// Whether `e` says the client of a control connection went away before its answer.
fn client_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
    )
}

/// Connections a control socket serves at once; more are refused (a local program cannot
/// take every thread of a daemon).
const MAX_CONNECTIONS: usize = 32;

/// The longest request line a control socket reads (a `sync` sends far less: at most
/// 1,000 names or 1 MiB of them per request), so that no request makes a daemon hold more.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// How long a control connection may stay idle (or a client may stall reading) before it is
/// closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One of the [`MAX_CONNECTIONS`] connections, given back when dropped.
struct Seat(Arc<AtomicUsize>);

impl Seat {
    fn take(open: &Arc<AtomicUsize>) -> Option<Seat> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_CONNECTIONS).then_some(n + 1)
        })
        .ok()
        .map(|_| Seat(open.clone()))
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn serve_one<Q: DeserializeOwned, A: Serialize + Refusal>(
    c: UnixStream,
    handler: Handler<Q, A>,
) -> io::Result<()> {
    c.set_read_timeout(Some(IDLE_TIMEOUT))?;
    c.set_write_timeout(Some(IDLE_TIMEOUT))?;
    let mut w = c.try_clone()?;
    let mut r = BufReader::new(c);
    loop {
        let mut line = Vec::new();
        match (&mut r)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // Idle too long: the connection ends, nothing failed.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e),
        }
        if line.len() > MAX_REQUEST_BYTES {
            // Never held whole: refused, and the connection ends (the rest is not a request).
            let resp = A::refusal(format!(
                "request longer than {MAX_REQUEST_BYTES} bytes (send copies in smaller parts)"
            ));
            let mut out = serde_json::to_vec(&resp).map_err(io::Error::other)?;
            out.push(b'\n');
            w.write_all(&out)?;
            return Ok(());
        }
        let resp = match serde_json::from_slice::<Q>(&line) {
            Ok(req) => handler(req),
            Err(e) => A::refusal(format!("malformed request: {e}")),
        };
        let mut out = serde_json::to_vec(&resp).map_err(io::Error::other)?;
        out.push(b'\n');
        w.write_all(&out)?;
    }
}

/// How long a request waits for its answer by default.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `req` to the socket at `path` and returns the answer (within [`ANSWER_TIMEOUT`]).
pub fn request<Q: Serialize, A: DeserializeOwned>(path: &Path, req: &Q) -> io::Result<A> {
    request_within(path, req, ANSWER_TIMEOUT)
}

/// Sends `req` to the socket at `path` and returns the answer, or an error that says so
/// when none came within `timeout` (a daemon stopped with SIGSTOP, or wedged, never hangs
/// its caller).
pub fn request_within<Q: Serialize, A: DeserializeOwned>(
    path: &Path,
    req: &Q,
    timeout: Duration,
) -> io::Result<A> {
    Client::connect(path, timeout)?.ask(req)
}

/// A connection to a control socket kept open for many requests, each answered within the
/// timeout it was made with.
#[derive(Debug)]
pub struct Client {
    w: UnixStream,
    r: BufReader<UnixStream>,
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<Client> {
        let c = UnixStream::connect(path)?;
        c.set_read_timeout(Some(timeout))?;
        c.set_write_timeout(Some(timeout))?;
        Ok(Client {
            r: BufReader::new(c.try_clone()?),
            w: c,
            path: path.to_path_buf(),
            timeout,
        })
    }

    /// Sends `req` and returns the answer.
    pub fn ask<Q: Serialize, A: DeserializeOwned>(&mut self, req: &Q) -> io::Result<A> {
        let (path, timeout) = (&self.path, self.timeout);
        let silent = |e: io::Error| {
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no answer from {} within {}s (is the daemon stopped or stuck?)",
                        path.display(),
                        timeout.as_secs()
                    ),
                )
            } else {
                e
            }
        };
        let mut out = serde_json::to_vec(req).map_err(io::Error::other)?;
        out.push(b'\n');
        self.w.write_all(&out).map_err(silent)?;
        let mut line = String::new();
        (&mut self.r)
            .take(MAX_REQUEST_BYTES as u64)
            .read_line(&mut line)
            .map_err(silent)?;
        if line.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} closed the connection without an answer", path.display()),
            ));
        }
        serde_json::from_str(&line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("malformed answer from {}: {e}", path.display()),
            )
        })
    }
}

/// Appends one copy entry per `(rule CRC, name)` to `journal` and makes them durable; the
/// position of the last one. What a running mirrorfs does for [`Request::Copy`], and what
/// `mirror-ctl sync` does itself when no mirrorfs holds the journal.
pub fn append_copies(
    journal: &crate::journal::Journal,
    copies: &[(u32, Vec<u8>)],
    quick: bool,
) -> Result<Option<Position>, crate::journal::JournalError> {
    let mut last = None;
    for (crc, name) in copies {
        let mut e = crate::entry::EntryRef::new(crate::entry::Command::Copy, *crc, name);
        if quick {
            e.offset = crate::entry::COPY_QUICK;
        }
        last = Some(journal.append(&e)?);
    }
    journal.sync()?;
    Ok(last)
}
