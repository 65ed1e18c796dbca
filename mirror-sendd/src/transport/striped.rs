//! N authenticated connections carry one stream (seeds/003 claims 9-18): the stream's
//! messages are striped across them, each numbered across the stream (on top of each
//! connection's own frame MAC sequence), and the router takes them back in that order.
//!
//! The connection array has one element per connection: its socket, a writer thread (the
//! connection's worker: it seals and writes what the stream hands it, and beats every
//! [`KEEPALIVE`]), a reader thread (the router's messages to the link; the time it last heard
//! anything on that connection), and the messages sent on it that the router has not taken
//! yet. The first connection opens the session (its welcome carries a token); the others
//! join it with that token ([`mirrorfs::wire::Role::Join`]), so the N connections count as one
//! session at the router.
//!
//! A connection that fails, or that the router has not been heard on for the silence
//! threshold, is closed and joined again on its own, with a pause that doubles after each
//! failure; what was in flight on it is sent again on the others at once (the router drops
//! what it took already, by number). The session ends when its last connection is lost, or
//! when the router no longer knows the session a connection would join.

use std::collections::VecDeque;
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use mirrorfs::wire::auth::{self, FrameMac};
use mirrorfs::wire::{codec, read_sealed, Msg, Role, WireError, PROTOCOL_VERSION};

use super::{Event, Opened, Transport};
use crate::link::LinkError;
use crate::shared::{lock, Shared};

/// How often each connection beats when it has sent no beat for this long.
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// A connection the router has not been heard on for this long (at least) is closed.
const MIN_SILENCE: Duration = Duration::from_secs(5);
/// The first pause before a lost connection is joined again; it doubles with each failure.
const REJOIN_FIRST: Duration = Duration::from_millis(100);
/// The longest pause before a lost connection is joined again.
const REJOIN_MAX: Duration = Duration::from_secs(5);

/// What the connections tell the transport (through the link's channel).
pub enum ConnEvent {
    /// Connection `index` of generation `gen` failed.
    Down {
        index: usize,
        gen: u64,
        err: WireError,
    },
    /// A connection joined the session at `index`.
    Up { index: usize, parts: Parts },
    /// Joining at `index` failed.
    JoinFailed { index: usize, err: LinkError },
}

/// An authenticated connection before its threads start.
pub struct Parts {
    stream: TcpStream,
    r: BufReader<TcpStream>,
    send: FrameMac,
    recv: FrameMac,
}

/// A live connection: one element of the connection array.
struct Conn {
    gen: u64,
    stream: TcpStream,
    tx: Sender<Arc<Msg>>,
    /// Bytes handed to its writer and not yet written.
    queued: Arc<AtomicUsize>,
    /// When the router was last heard on it.
    last_heard: Arc<Mutex<Instant>>,
}

#[derive(Default)]
struct Slot {
    conn: Option<Conn>,
    /// A join is under way.
    joining: bool,
    /// Failed joins in a row.
    failures: u32,
    /// When to join again.
    retry_at: Option<Instant>,
}

/// A message of the stream sent and not known to be taken by the router.
struct Retained {
    seq: u64,
    /// Its entries frame number (counted from 1, as the router's acks count them).
    frame: Option<u64>,
    /// A configuration message's version.
    config: bool,
    msg: Arc<Msg>,
    /// The connection it went on.
    on: usize,
}

/// The striped transport of one session.
pub struct Striped {
    shared: Arc<Shared>,
    site: String,
    token: u64,
    events: Sender<Event>,
    slots: Vec<Slot>,
    next_gen: u64,
    /// The number of the next message of the stream.
    seq: u64,
    /// Entries frames sent.
    frames: u64,
    retained: VecDeque<Retained>,
    silence: Duration,
    /// Where the next search for a connection starts.
    turn: usize,
}

/// Bytes in a socket's send queue (not yet sent, or not yet acknowledged by the peer).
fn unacked(s: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one int through the pointer, which is live for the call.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(s), libc::TIOCOUTQ, &mut n) };
    if rc == 0 {
        n.max(0) as usize
    } else {
        0
    }
}

/// The bytes a message counts for in a connection's queue.
fn weight(m: &Msg) -> usize {
    match m {
        Msg::Entries { entries, .. } => {
            64 + entries
                .iter()
                .map(mirrorfs::wire::WireEntry::wire_len)
                .sum::<usize>()
        }
        _ => 64,
    }
}

/// Connects and authenticates one connection of `site` in `role`.
fn connect_one(shared: &Shared, site: &str, role: Role) -> Result<Parts, LinkError> {
    let super::Dialed {
        stream,
        r,
        session: auth::Session { send, recv },
        ..
    } = super::dial(shared, site, role)?;
    Ok(Parts {
        stream,
        r,
        send,
        recv,
    })
}

/// Joins the session `token` at `index`.
fn join(shared: &Shared, site: &str, token: u64, index: usize) -> Result<Parts, LinkError> {
    let mut p = connect_one(shared, site, Role::Join)?;
    let frame = codec::encode_sealed(
        &Msg::Join {
            token,
            index: index as u32,
        },
        &mut p.send,
    )?;
    p.stream.write_all(&frame).map_err(WireError::Io)?;
    match read_sealed(&mut p.r, &mut p.recv)? {
        Msg::Joined { .. } => {}
        Msg::Error { reason } => return Err(LinkError::Refused(reason)),
        other => {
            return Err(LinkError::Protocol(format!(
                "expected joined, got {}",
                other.kind()
            )))
        }
    }
    p.stream.set_read_timeout(None).map_err(WireError::Io)?;
    Ok(p)
}

/// Opens a session of `n` connections with the router of `site`: the first now, the others
/// join it in the background.
pub fn open(
    shared: &Arc<Shared>,
    site: &str,
    n: usize,
    events: Sender<Event>,
) -> Result<Opened, LinkError> {
    let mut p = connect_one(shared, site, Role::Source)?;
    let (received, token) = match read_sealed(&mut p.r, &mut p.recv)? {
        Msg::Welcome {
            protocol,
            received,
            token,
        } => {
            if protocol != PROTOCOL_VERSION {
                return Err(LinkError::Protocol(format!(
                    "router speaks protocol {protocol}, this sender {PROTOCOL_VERSION}"
                )));
            }
            (received, token)
        }
        Msg::Error { reason } => return Err(LinkError::Refused(reason)),
        other => {
            return Err(LinkError::Protocol(format!(
                "expected welcome, got {}",
                other.kind()
            )))
        }
    };
    p.stream.set_read_timeout(None).map_err(WireError::Io)?;
    let threshold = shared.sites.policy.timing.threshold;
    let mut t = Striped {
        shared: shared.clone(),
        site: site.to_string(),
        token,
        events,
        slots: (0..n).map(|_| Slot::default()).collect(),
        next_gen: 0,
        seq: 1,
        frames: 0,
        retained: VecDeque::new(),
        silence: threshold.max(MIN_SILENCE),
        turn: 0,
    };
    t.start(0, p);
    let now = Instant::now();
    for s in t.slots.iter_mut().skip(1) {
        s.retry_at = Some(now);
    }
    t.tick()?;
    log::info!("site {site}: session on {n} connections");
    Ok(Opened {
        transport: Box::new(t),
        received,
        held: None,
    })
}

impl Striped {
    /// Starts the threads of a connection at `index`.
    fn start(&mut self, index: usize, p: Parts) {
        self.next_gen += 1;
        let gen = self.next_gen;
        let (tx, rx) = crossbeam_channel::unbounded::<Arc<Msg>>();
        let queued = Arc::new(AtomicUsize::new(0));
        let last_heard = Arc::new(Mutex::new(Instant::now()));
        let Parts {
            stream,
            mut r,
            mut send,
            mut recv,
        } = p;
        let (Ok(mut w), Ok(shut)) = (stream.try_clone(), stream.try_clone()) else {
            let _ = stream.shutdown(Shutdown::Both);
            self.lost(index);
            return;
        };
        let site = self.site.clone();
        {
            let (events, queued) = (self.events.clone(), queued.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("link-w{index}"))
                .spawn(move || {
                    let mut beat = Instant::now();
                    let err = loop {
                        let msg = match rx.recv_timeout(KEEPALIVE) {
                            Ok(m) => Some(m),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => return,
                        };
                        let res = (|| -> Result<(), WireError> {
                            if let Some(m) = &msg {
                                let frame = codec::encode_sealed(m, &mut send)?;
                                w.write_all(&frame)?;
                                queued.fetch_sub(weight(m), Ordering::Relaxed);
                            }
                            if beat.elapsed() >= KEEPALIVE {
                                let frame = codec::encode_sealed(&Msg::Heartbeat, &mut send)?;
                                w.write_all(&frame)?;
                                beat = Instant::now();
                            }
                            Ok(())
                        })();
                        if let Err(e) = res {
                            break e;
                        }
                    };
                    let _ = w.shutdown(Shutdown::Both);
                    let _ = events.send(Event::Conn(ConnEvent::Down { index, gen, err }));
                });
            if let Err(e) = spawned {
                log::warn!("site {site}: cannot start a connection thread: {e}");
                // The connection's other thread notices and reports it down.
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        {
            let (events, heard) = (self.events.clone(), last_heard.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("link-r{index}"))
                .spawn(move || loop {
                    match read_sealed(&mut r, &mut recv) {
                        Ok(m) => {
                            *lock(&heard) = Instant::now();
                            if matches!(m, Msg::Heartbeat | Msg::Joined { .. }) {
                                continue;
                            }
                            if events.send(Event::Msg(m)).is_err() {
                                return;
                            }
                        }
                        Err(err) => {
                            let _ = r.get_ref().shutdown(Shutdown::Both);
                            let _ = events.send(Event::Conn(ConnEvent::Down { index, gen, err }));
                            return;
                        }
                    }
                });
            if let Err(e) = spawned {
                log::warn!("site {site}: cannot start a connection thread: {e}");
                // The connection's other thread notices and reports it down.
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        let slot = &mut self.slots[index];
        slot.conn = Some(Conn {
            gen,
            stream: shut,
            tx,
            queued,
            last_heard,
        });
        slot.joining = false;
        slot.failures = 0;
        slot.retry_at = None;
    }

    /// Connection `index` is gone: it is joined again later, and what it carried is sent
    /// again on the others.
    fn lost(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if let Some(c) = slot.conn.take() {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        slot.failures += 1;
        let pause = REJOIN_FIRST
            .saturating_mul(1 << (slot.failures - 1).min(8))
            .min(REJOIN_MAX);
        slot.retry_at = Some(Instant::now() + pause);
        let again: Vec<usize> = self
            .retained
            .iter()
            .enumerate()
            .filter(|(_, r)| r.on == index)
            .map(|(i, _)| i)
            .collect();
        if !again.is_empty() {
            log::info!(
                "site {}: {} messages in flight on connection {index} sent again on the others",
                self.site,
                again.len()
            );
        }
        for i in again {
            if let Some(to) = self.pick() {
                let r = &mut self.retained[i];
                r.on = to;
                if let Some(c) = &self.slots[to].conn {
                    c.queued.fetch_add(weight(&r.msg), Ordering::Relaxed);
                    let _ = c.tx.send(r.msg.clone());
                }
            }
        }
    }

    /// The live connection with the fewest bytes waiting (handed to its writer, or in its
    /// socket not yet acknowledged by the peer), the next in turn among equals.
    fn pick(&mut self) -> Option<usize> {
        let n = self.slots.len();
        let start = self.turn;
        let best = (0..n)
            .map(|k| (start + k) % n)
            .filter_map(|i| {
                let c = self.slots[i].conn.as_ref()?;
                Some((c.queued.load(Ordering::Relaxed) + unacked(&c.stream), i))
            })
            .min_by_key(|&(load, _)| load)
            .map(|(_, i)| i)?;
        self.turn = (best + 1) % n;
        Some(best)
    }

    fn alive(&self) -> usize {
        self.slots.iter().filter(|s| s.conn.is_some()).count()
    }
}

impl Transport for Striped {
    fn send(&mut self, mut msg: Msg) -> Result<(), LinkError> {
        super::number(&mut msg, &mut self.seq);
        let Some(to) = self.pick() else {
            return Err(LinkError::Wire(WireError::Closed));
        };
        let (seq, frame, config) = match &msg {
            Msg::Entries { seq, .. } => {
                self.frames += 1;
                (Some(*seq), Some(self.frames), false)
            }
            Msg::Config { seq, .. } => (Some(*seq), None, true),
            _ => (None, None, false),
        };
        let msg = Arc::new(msg);
        if let Some(seq) = seq {
            self.retained.push_back(Retained {
                seq,
                frame,
                config,
                msg: msg.clone(),
                on: to,
            });
        }
        if let Some(c) = &self.slots[to].conn {
            c.queued.fetch_add(weight(&msg), Ordering::Relaxed);
            // A writer that stopped reports its connection down; what it held is retained.
            let _ = c.tx.send(msg);
        }
        Ok(())
    }

    fn observe(&mut self, msg: &Msg) {
        match msg {
            Msg::Ack { frames, .. } => {
                // Everything numbered up to the last frame acknowledged was taken.
                let upto = self
                    .retained
                    .iter()
                    .filter(|r| r.frame.is_some_and(|f| f <= *frames))
                    .map(|r| r.seq)
                    .max();
                if let Some(upto) = upto {
                    self.retained.retain(|r| r.seq > upto);
                }
            }
            Msg::ConfigOk { .. } => {
                if let Some(i) = self.retained.iter().position(|r| r.config) {
                    self.retained.remove(i);
                }
            }
            _ => {}
        }
    }

    fn on_event(&mut self, ev: ConnEvent) -> Result<(), LinkError> {
        match ev {
            ConnEvent::Down { index, gen, err } => {
                if self.slots[index].conn.as_ref().is_none_or(|c| c.gen != gen) {
                    return Ok(());
                }
                self.slots[index].conn.take();
                if self.alive() == 0 {
                    return Err(LinkError::Wire(err));
                }
                log::info!(
                    "site {}: connection {index} lost ({err}); joining it again while {} others carry on",
                    self.site,
                    self.alive()
                );
                self.lost(index);
                Ok(())
            }
            ConnEvent::Up { index, parts } => {
                self.start(index, parts);
                log::debug!("site {}: connection {index} joined", self.site);
                Ok(())
            }
            ConnEvent::JoinFailed { index, err } => {
                self.slots[index].joining = false;
                if let LinkError::Refused(why) = &err {
                    // The router no longer has the session: it ends here too.
                    return Err(LinkError::Refused(why.clone()));
                }
                log::debug!("site {}: connection {index} cannot join: {err}", self.site);
                self.lost(index);
                Ok(())
            }
        }
    }

    fn tick(&mut self) -> Result<(), LinkError> {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if let Some(c) = &slot.conn {
                let silent = now.saturating_duration_since(*lock(&c.last_heard));
                if silent > self.silence {
                    log::info!(
                        "site {}: nothing heard on connection {index} for {silent:.1?}; closing it",
                        self.site
                    );
                    // Its threads stop and report it down.
                    let _ = c.stream.shutdown(Shutdown::Both);
                }
                continue;
            }
            if slot.joining || slot.retry_at.is_none_or(|t| now < t) {
                continue;
            }
            self.slots[index].joining = true;
            let (shared, site, token, events) = (
                self.shared.clone(),
                self.site.clone(),
                self.token,
                self.events.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("link-join{index}"))
                .spawn(move || {
                    let ev = match join(&shared, &site, token, index) {
                        Ok(parts) => ConnEvent::Up { index, parts },
                        Err(err) => ConnEvent::JoinFailed { index, err },
                    };
                    let _ = events.send(Event::Conn(ev));
                });
            if spawned.is_err() {
                self.slots[index].joining = false;
                self.lost(index);
            }
        }
        Ok(())
    }

    fn close(&mut self) {
        for s in &mut self.slots {
            if let Some(c) = s.conn.take() {
                let _ = c.stream.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Striped {
    fn drop(&mut self) {
        self.close();
    }
}
