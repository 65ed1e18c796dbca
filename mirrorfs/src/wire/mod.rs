//! The wire protocol between mirror-sendd and mirror-routerd (and `mirror-ctl` validation).
//!
//! * [`codec`]: frames on a byte stream: `len u32 LE | crc32 u32 LE | payload`, the payload a
//!   [`Msg`] encoded by bincode 2 (the only place that calls bincode), with a maximum size.
//! * [`msg`]: the messages: hello/welcome, entries with their journal positions and the
//!   configuration version, acknowledgements, configuration requests and answers, validation,
//!   resynchronisation requests and heartbeats.
//! * [`heartbeat`]: the UDP heartbeats both ways and the monitor of their interruptions.
//! * [`auth`]: pre-shared keys, the mutual challenge-response of the hello, frame MACs.
//! * [`restore`]: the restore session's items and limits (`mirror-ctl restore`).
//! * [`verify`]: the verify session (`mirror-ctl verify`): listings of the backup, pulled a
//!   batch at a time, and block checksums of backup files ([`Msg::Sums`]).
//!
//! A session: the sender connects and sends [`Msg::Hello`]; the router answers
//! [`Msg::Challenge`], the sender [`Msg::Auth`] ([`auth`]); from then on every frame carries a
//! MAC. The router answers [`Msg::Welcome`] with what it already holds from that source. Then
//! the sender streams [`Msg::Entries`] (many in flight) and the router answers [`Msg::Ack`]
//! once they are durable in RT1/RT2, or [`Msg::SendConfig`] when the configuration version is
//! not the one it knows; the sender then sends [`Msg::Config`] and resends everything not
//! acknowledged. A session of role [`Role::Restore`] asks for backups instead
//! ([`restore`]), one of role [`Role::Verify`] for listings and checksums of them
//! ([`verify`]).
//!
//! A source's session may travel on many connections: the first is the session (its welcome
//! carries a token); each further one authenticates with [`Role::Join`] and sends
//! [`Msg::Join`] with that token first. The stream's messages ([`Msg::Entries`],
//! [`Msg::Config`]) carry a sequence number across the connections (each connection's frames
//! keep their own MAC sequence); the router takes them in that order (a reorder buffer of at
//! most [`msg::MAX_REORDER_BYTES`]) and drops those it took already, so a sender resends what
//! was in flight on a connection that died on the others. [`Msg::Heartbeat`] on a joined
//! session's connection is answered on that connection: each connection's keepalive.

pub mod auth;
pub mod codec;
pub mod heartbeat;
pub mod msg;
pub mod restore;
pub mod spool;
pub mod verify;

pub use codec::{read_frame, read_sealed, write_frame, WireError, MAX_FRAME};

/// How long data sent on a session may stay unacknowledged by the peer's TCP before the
/// connection fails ([`keepalive`]).
pub const USER_TIMEOUT_MS: i32 = 30_000;

/// Keepalive and a user timeout on a session's connection (both ends use it): a peer that
/// vanished without a word (host down, network cut) is noticed by TCP, after a few missed
/// probes when idle (10 s, then every 3 s, 3 probes) or [`USER_TIMEOUT_MS`] with data
/// unacknowledged, even where its heartbeats never arrive (UDP filtered).
pub fn keepalive(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = s.as_raw_fd();
    let set = |level: i32, opt: i32, v: i32| {
        // SAFETY: setsockopt with a pointer to a live i32 and its size.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                (&v as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        }
    };
    let rc = set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)
        | set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 10)
        | set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 3)
        | set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)
        | set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, USER_TIMEOUT_MS);
    if rc != 0 {
        log::debug!("keepalive options: {}", std::io::Error::last_os_error());
    }
}
pub use msg::{Msg, Part, Role, WireEntry, WireRule, PROTOCOL_VERSION};
