//! The connections of one source session (seeds/003 claims 9-18): the session's stream may
//! travel on many connections, and is taken here in the order the sender numbered it.
//!
//! The session's first connection makes it (its welcome carries a token); each further one
//! authenticates with [`mirrorfs::wire::Role::Join`] and names the token in
//! [`Msg::Join`]. Every connection has its element of the connection array (when it was
//! last heard from) and a thread that reads it ([`Conns::feed`]): the stream's messages
//! ([`Msg::Entries`], [`Msg::Config`], numbered by `seq` across the connections) go into a
//! reorder buffer, at most [`MAX_REORDER_BYTES`], from which the session's stream thread takes
//! them strictly in order ([`Conns::next`]); a message whose number was taken already, or is
//! held already, is a duplicate (the sender resends what was in flight on a connection that
//! died) and is dropped. The session counts as one against the site's session limit however
//! many connections it has, and ends when its last connection ends.
//!
//! Keepalive: once the sender beats on a connection ([`Msg::Heartbeat`]), the session beats
//! back on every connection each [`KEEPALIVE`] (the sender's own keepalive per connection),
//! and a connection silent for [`SILENCE`] is closed on its own; the others carry on.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mirrorfs::wire::auth::FrameMac;
use mirrorfs::wire::msg::{MAX_CONNECTIONS, MAX_REORDER_BYTES};
use mirrorfs::wire::{codec, read_sealed, Msg, WireEntry, WireError};

use crate::receive::SessionError;
use crate::shared::{lock, PeerOut};

/// How often a session whose sender beats beats back on each connection.
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// A connection of a beating sender not heard from this long is closed.
pub const SILENCE: Duration = Duration::from_secs(10);

/// One element of the connection array.
#[derive(Debug)]
struct Conn {
    /// The connection's place in the sender's array.
    index: u32,
    /// When a frame last arrived on it.
    last_heard: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// The number of the next message of the stream.
    next: u64,
    /// Messages that arrived before their turn, by number.
    held: BTreeMap<u64, Msg>,
    /// Bytes they hold (roughly).
    held_bytes: usize,
    /// Messages outside the numbered stream, in arrival order.
    other: VecDeque<Msg>,
    /// The connection array, by id.
    conns: BTreeMap<u64, Conn>,
    next_id: u64,
    /// Why the last connection ended, or why the session must end.
    ended: Option<SessionError>,
    /// The sender beats: the session beats back.
    beating: bool,
}

/// The connections of one source session and its reorder buffer.
#[derive(Debug)]
pub struct Conns {
    /// The source site.
    pub site: String,
    /// The token further connections join with.
    pub token: u64,
    /// Where the session's messages to the sender go.
    pub out: Arc<Mutex<PeerOut>>,
    state: Mutex<State>,
    cv: Condvar,
}

/// The bytes a held message counts for.
fn weight(m: &Msg) -> usize {
    match m {
        Msg::Entries { entries, .. } => 64 + entries.iter().map(WireEntry::wire_len).sum::<usize>(),
        Msg::Config { rules, .. } => {
            64 + rules
                .iter()
                .map(|r| 64 + r.pattern.len() + r.dest.len())
                .sum::<usize>()
        }
        _ => 64,
    }
}

/// The number of a message of the stream, or `None` for others.
fn seq_of(m: &Msg) -> Option<u64> {
    match m {
        Msg::Entries { seq, .. } | Msg::Config { seq, .. } => Some(*seq),
        _ => None,
    }
}

impl Conns {
    /// A session of `site` whose first connection sends with `out`: that connection is
    /// element 0 of the array.
    pub fn new(site: &str, token: u64, out: Arc<Mutex<PeerOut>>) -> Arc<Conns> {
        let mut state = State {
            next: 1,
            next_id: 1,
            ..State::default()
        };
        state.conns.insert(
            0,
            Conn {
                index: 0,
                last_heard: Instant::now(),
            },
        );
        Arc::new(Conns {
            site: site.to_string(),
            token,
            out,
            state: Mutex::new(state),
            cv: Condvar::new(),
        })
    }

    /// Adds a connection that joined (at `index` of the sender's array), sending with `mac`,
    /// once it is told so ([`Msg::Joined`], before anything else of the session goes on it);
    /// its id, or why it may not join.
    pub fn join(
        &self,
        index: u32,
        mut stream: TcpStream,
        mut mac: FrameMac,
    ) -> Result<u64, String> {
        let mut st = lock(&self.state);
        if st.ended.is_some() || st.conns.is_empty() {
            return Err("the session it names has ended".into());
        }
        if st.conns.len() >= MAX_CONNECTIONS {
            return Err(format!(
                "the session already has {MAX_CONNECTIONS} connections (limit)"
            ));
        }
        let joined = Msg::Joined {
            connections: st.conns.len() as u32 + 1,
        };
        codec::encode_sealed(&joined, &mut mac)
            .map_err(|e| e.to_string())
            .and_then(|f| stream.write_all(&f).map_err(|e| e.to_string()))?;
        let id = st.next_id;
        st.next_id += 1;
        st.conns.insert(
            id,
            Conn {
                index,
                last_heard: Instant::now(),
            },
        );
        lock(&self.out).add(id, stream, mac);
        Ok(id)
    }

    /// Connections the session has.
    pub fn connections(&self) -> usize {
        lock(&self.state).conns.len()
    }

    /// Reads connection `id` until it ends, putting what arrives where the stream thread
    /// takes it; the connection is then out of the array (and the session ends with its
    /// last connection).
    pub fn feed(self: &Arc<Self>, id: u64, r: &mut BufReader<TcpStream>, mac: &mut FrameMac) {
        let err = loop {
            let msg = match read_sealed(r, mac) {
                Ok(m) => m,
                Err(e) => break SessionError::Wire(e),
            };
            if let Err(e) = self.arrived(id, r, msg) {
                break e;
            }
        };
        let (index, left, err) = {
            let mut st = lock(&self.state);
            let index = st.conns.remove(&id).map_or(0, |c| c.index);
            let left = st.conns.len();
            if left == 0 && st.ended.is_none() {
                st.ended = Some(err);
                (index, left, None)
            } else {
                (index, left, Some(err))
            }
        };
        // (Not under the state's lock: this may send on the next connection.)
        lock(&self.out).remove(id);
        if let Some(err) =
            err.filter(|e| left > 0 && !matches!(e, SessionError::Wire(WireError::Closed)))
        {
            log::info!(
                "source {}: connection {index} ended ({err}); {left} others carry on",
                self.site
            );
        }
        self.cv.notify_all();
    }

    fn arrived(
        self: &Arc<Self>,
        id: u64,
        r: &BufReader<TcpStream>,
        msg: Msg,
    ) -> Result<(), SessionError> {
        let mut st = lock(&self.state);
        if let Some(c) = st.conns.get_mut(&id) {
            c.last_heard = Instant::now();
        }
        if let Some(e) = &st.ended {
            return Err(SessionError::Protocol(format!("session ended: {e}")));
        }
        match seq_of(&msg) {
            Some(seq) if seq < st.next || st.held.contains_key(&seq) => {}
            Some(seq) => {
                let w = weight(&msg);
                if st.held_bytes + w > MAX_REORDER_BYTES && seq != st.next {
                    let why = format!(
                        "more than {MAX_REORDER_BYTES} bytes out of order (message {seq} while waiting for {})",
                        st.next
                    );
                    st.ended = Some(SessionError::Protocol(why.clone()));
                    drop(st);
                    self.end();
                    return Err(SessionError::Protocol(why));
                }
                st.held_bytes += w;
                st.held.insert(seq, msg);
            }
            None if matches!(msg, Msg::Heartbeat) => {
                if !st.beating {
                    st.beating = true;
                    self.spawn_keepalive();
                }
                // A beating sender's connection is expected to speak within the silence.
                let _ = r.get_ref().set_read_timeout(Some(SILENCE));
                return Ok(());
            }
            None => st.other.push_back(msg),
        }
        drop(st);
        self.cv.notify_all();
        Ok(())
    }

    /// Beats on every connection each [`KEEPALIVE`] until the session ends.
    fn spawn_keepalive(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name(format!("keepalive {}", self.site))
            .spawn(move || loop {
                std::thread::sleep(KEEPALIVE);
                let Some(c) = me.upgrade() else { return };
                if lock(&c.state).ended.is_some() {
                    return;
                }
                lock(&c.out).send_all(&Msg::Heartbeat);
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a keepalive thread: {e}");
        }
    }

    /// Whether the next message of the stream (or another) is there already.
    pub fn ready(&self) -> bool {
        let st = lock(&self.state);
        !st.other.is_empty() || st.held.contains_key(&st.next)
    }

    /// The next message, in the stream's order (others as they came); waits for it. Fails
    /// once the last connection ended (with its error) or the session must end.
    pub fn next(&self) -> Result<Msg, SessionError> {
        let mut st = lock(&self.state);
        loop {
            if let Some(m) = st.other.pop_front() {
                return Ok(m);
            }
            let next = st.next;
            if let Some(m) = st.held.remove(&next) {
                st.held_bytes = st.held_bytes.saturating_sub(weight(&m));
                st.next += 1;
                return Ok(m);
            }
            if let Some(e) = st.ended.take() {
                st.ended = Some(SessionError::Protocol("the session ended".into()));
                return Err(e);
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(500))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Ends the session: no more connections join, every one is shut down.
    pub fn end(&self) {
        {
            let mut st = lock(&self.state);
            if st.ended.is_none() {
                st.ended = Some(SessionError::Protocol("the session ended".into()));
            }
        }
        lock(&self.out).shutdown();
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    //! The reorder buffer on a real loopback connection (its sending half is the session's).
    use super::*;
    use mirrorfs::wire::auth::Key;
    use std::net::TcpListener;

    fn entries(seq: u64, n: usize) -> Msg {
        Msg::Entries {
            seq,
            config_version: 1,
            entries: vec![
                WireEntry {
                    pos: mirrorfs::journal::Position::new(1, seq),
                    part: mirrorfs::wire::Part::Whole,
                    command: mirrorfs::entry::Command::Write,
                    rule_crc: 1,
                    name: b"/p/x".to_vec(),
                    aux: Vec::new(),
                    offset: 0,
                    size: n as u64,
                    time_ns: 1,
                    data: vec![7; n],
                };
                1
            ],
        }
    }

    fn session() -> (Arc<Conns>, BufReader<TcpStream>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let key = Key::from_hex(&"5a".repeat(32)).unwrap();
        let k2 = key.clone();
        let client = {
            let peer = peer.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut r = BufReader::new(peer.try_clone().unwrap());
                let mut w = peer;
                mirrorfs::wire::auth::client(
                    &mut r,
                    &mut w,
                    "src",
                    1,
                    mirrorfs::wire::Role::Source,
                    &k2,
                )
                .unwrap()
            })
        };
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s.try_clone().unwrap();
        let accepted = mirrorfs::wire::auth::server(&mut r, &mut w, |_| Ok(key)).unwrap();
        client.join().unwrap();
        let mac = accepted.session.send;
        let out = Arc::new(Mutex::new(PeerOut::new(s.try_clone().unwrap(), mac)));
        (Conns::new("src", 1, out), BufReader::new(s), peer)
    }

    fn seq(m: &Msg) -> u64 {
        seq_of(m).unwrap()
    }

    #[test]
    fn messages_are_taken_in_order_and_duplicates_dropped() {
        let (c, r, _peer) = session();
        for s in [3, 1, 3, 2, 1, 5] {
            c.arrived(0, &r, entries(s, 10)).unwrap();
        }
        assert_eq!(seq(&c.next().unwrap()), 1);
        assert_eq!(seq(&c.next().unwrap()), 2);
        assert_eq!(seq(&c.next().unwrap()), 3);
        // 4 is missing: 5 waits for it; 2 again is a duplicate.
        assert!(!c.ready());
        c.arrived(0, &r, entries(2, 10)).unwrap();
        assert!(!c.ready());
        c.arrived(0, &r, entries(4, 10)).unwrap();
        assert!(c.ready());
        assert_eq!(seq(&c.next().unwrap()), 4);
        assert_eq!(seq(&c.next().unwrap()), 5);
        // Messages outside the stream go as they come.
        c.arrived(
            0,
            &r,
            Msg::Validate {
                dest: "d".into(),
                dir: true,
            },
        )
        .unwrap();
        assert!(matches!(c.next().unwrap(), Msg::Validate { .. }));
    }

    #[test]
    fn more_than_the_bound_out_of_order_ends_the_session() {
        let (c, r, _peer) = session();
        let big = 8 << 20;
        let mut s = 2;
        let res = loop {
            match c.arrived(0, &r, entries(s, big)) {
                Ok(()) => s += 1,
                Err(e) => break e,
            }
            assert!(s < 100, "never refused");
        };
        assert!(res.to_string().contains("out of order"), "{res}");
        assert!((s - 2) as usize * big <= MAX_REORDER_BYTES);
        assert!(c.next().is_err(), "the session ended");
    }
}
