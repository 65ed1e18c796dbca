//! How a site's stream travels: the transports of [`crate::link`].
//!
//! The link decides *what is sent next* (the ordered stream of one site: positions, window,
//! acknowledgements, dirty sets, copies, resyncs); a transport carries it, and brings the
//! router's messages back as [`Event`]s on the link's channel. Two transports: one
//! authenticated connection ([`single`]: connect, hello, welcome, a reader thread, sealed
//! frames out), N of them with the stream striped across ([`striped`]), and none: sealed
//! spool files a file-transfer tool carries ([`spool`]). The first two number the stream's
//! messages ([`number`]); the router takes them in that order.

pub mod single;
pub mod spool;
pub mod striped;

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use mirrorfs::journal::Position;
use mirrorfs::wire::auth::{self, HandshakeError};
use mirrorfs::wire::{Msg, Role, WireError};

use crate::link::LinkError;
use crate::shared::Shared;

/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the router's challenge and welcome.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest time a write to the router may stall before the session is given up.
pub(crate) const MIN_WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// What reaches a link while it serves a site.
pub enum Event {
    /// A message from the router.
    Msg(Msg),
    /// The transport lost the router: the session ends.
    Closed(WireError),
    /// The journal grew.
    Grew,
    /// One of the transport's connections changed ([`striped`]).
    Conn(striped::ConnEvent),
    /// Everything the transport held from earlier sessions ([`Opened::held`]) is
    /// acknowledged ([`spool`]).
    HeldAcked,
}

/// One way of carrying a site's stream to its router.
pub trait Transport {
    /// Sends one message of the stream (in the order the link sends them).
    fn send(&mut self, msg: Msg) -> Result<(), LinkError>;
    /// Sees each message of the router before the link handles it (acknowledgements tell
    /// what the transport may forget).
    fn observe(&mut self, _msg: &Msg) {}
    /// An event of the transport's own connections; an error ends the session.
    fn on_event(&mut self, _ev: striped::ConnEvent) -> Result<(), LinkError> {
        Ok(())
    }
    /// Called every 100 ms or so: keepalives, silent connections, connections to join again.
    fn tick(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
    /// Bytes the link may have sent and not yet acknowledged.
    fn window(&self) -> usize {
        crate::link::WINDOW
    }
    /// Whether the router answers at once (a session): copies may then compare checksums
    /// with the backup ([`crate::delta`]).
    fn live(&self) -> bool {
        true
    }
    /// Ends the session's connections (their reader threads then stop).
    fn close(&mut self);
}

/// Numbers `msg` if it is a message of the stream (entries, configuration): its place in the
/// session's stream, from `next` on.
pub(crate) fn number(msg: &mut Msg, next: &mut u64) {
    if let Msg::Entries { seq, .. } | Msg::Config { seq, .. } = msg {
        *seq = *next;
        *next += 1;
    }
}

/// An open session with a router: its transport, and what the router's welcome said it
/// already holds from this source.
pub struct Opened {
    /// The transport.
    pub transport: Box<dyn Transport>,
    /// The last journal position the router received completely.
    pub received: Option<Position>,
    /// The last journal position the transport itself holds durably from earlier sessions,
    /// not yet acknowledged ([`spool`]): reading resumes after it, the site's acknowledged
    /// position moves past it on [`Event::HeldAcked`].
    pub held: Option<Position>,
}

/// Opens a session with the router of `site` on `connections` connections; its messages
/// arrive on `events`. One connection is today's transport, exactly.
pub fn open(
    shared: &Arc<Shared>,
    site: &str,
    connections: usize,
    events: Sender<Event>,
) -> Result<Opened, LinkError> {
    if let Some(outbox) = mirrorfs::rule::Site::parse(site)
        .ok()
        .and_then(|s| s.spool_dir().map(|p| p.to_path_buf()))
    {
        spool::open(shared, site, &outbox, events)
    } else if connections <= 1 {
        single::open(shared, site, events)
    } else {
        striped::open(shared, site, connections, events)
    }
}

/// A TCP connection to `site` (the first of its addresses that answers).
pub(crate) fn connect(site: &str) -> Result<TcpStream, LinkError> {
    let addrs: Vec<_> = site
        .to_socket_addrs()
        .map_err(LinkError::Connect)?
        .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(LinkError::Connect(last))
}

/// The key of `site` (a router's, or a spool's), or how to add one.
pub(crate) fn key_of(shared: &Shared, site: &str) -> Result<mirrorfs::wire::auth::Key, LinkError> {
    shared
        .keys
        .get(site)
        .map_err(|e| LinkError::Auth(e.to_string()))?
        .ok_or_else(|| {
            LinkError::Auth(format!(
                "no key for site {site} in {}; on the router run `mirror-ctl router key add {}`, then here `mirror-ctl key add {site} KEY`",
                shared.keys.path().display(),
                shared.site_id
            ))
        })
}

/// Authenticates to the router of `site` with its key ([`auth::client`]).
pub(crate) fn handshake(
    shared: &Shared,
    site: &str,
    role: Role,
    r: &mut std::io::BufReader<TcpStream>,
    w: &mut TcpStream,
) -> Result<auth::Session, LinkError> {
    let key = key_of(shared, site)?;
    auth::client(r, w, &shared.site_id, shared.stream(), role, &key).map_err(|e| match e {
        HandshakeError::Wire(w) => LinkError::Wire(w),
        HandshakeError::Refused(reason) => LinkError::Refused(reason),
        other => LinkError::Auth(other.to_string()),
    })
}

/// One connection to a site, authenticated, before the router's welcome.
pub(crate) struct Dialed {
    /// The socket (its read timeout still the hello's).
    pub stream: TcpStream,
    /// A clone to write with.
    pub w: TcpStream,
    /// A buffered reader.
    pub r: std::io::BufReader<TcpStream>,
    /// The session's frame MACs.
    pub session: auth::Session,
}

/// Connects to `site` (no delay, keepalive, a write timeout so that a router that stops
/// reading never holds the link for good) and authenticates in `role`.
pub(crate) fn dial(shared: &Shared, site: &str, role: Role) -> Result<Dialed, LinkError> {
    let stream = connect(site)?;
    stream.set_nodelay(true).map_err(WireError::Io)?;
    mirrorfs::wire::keepalive(&stream);
    stream
        .set_write_timeout(Some(
            shared.sites.policy.timing.threshold.max(MIN_WRITE_TIMEOUT),
        ))
        .map_err(WireError::Io)?;
    let mut w = stream.try_clone().map_err(WireError::Io)?;
    let mut r =
        std::io::BufReader::with_capacity(64 << 10, stream.try_clone().map_err(WireError::Io)?);
    stream
        .set_read_timeout(Some(HELLO_TIMEOUT))
        .map_err(WireError::Io)?;
    let session = handshake(shared, site, role, &mut r, &mut w)?;
    Ok(Dialed {
        stream,
        w,
        r,
        session,
    })
}
