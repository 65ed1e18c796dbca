//! The wire protocol between mirror-sendd and mirror-routerd (and `mirror-ctl` validation).
//!
//! * [`codec`]: frames on a byte stream: `len u32 LE | crc32 u32 LE | payload`, the payload a
//!   [`Msg`] encoded by bincode 2 (the only place that calls bincode), with a maximum size.
//! * [`msg`]: the messages: hello/welcome, entries with their journal positions and the
//!   configuration version, acknowledgements, configuration requests and answers, validation,
//!   resynchronisation requests and heartbeats.
//! * [`heartbeat`]: the UDP heartbeats both ways and the monitor of their interruptions.
//! * [`auth`]: pre-shared keys, the mutual challenge-response of the hello, frame MACs.
//!
//! A session: the sender connects and sends [`Msg::Hello`]; the router answers
//! [`Msg::Challenge`], the sender [`Msg::Auth`] ([`auth`]); from then on every frame carries a
//! MAC. The router answers [`Msg::Welcome`] with what it already holds from that source. Then
//! the sender streams [`Msg::Entries`] (many in flight) and the router answers [`Msg::Ack`]
//! once they are durable in RT1/RT2, or [`Msg::SendConfig`] when the configuration version is
//! not the one it knows; the sender then sends [`Msg::Config`] and resends everything not
//! acknowledged.

pub mod auth;
pub mod codec;
pub mod heartbeat;
pub mod msg;

pub use codec::{read_frame, read_sealed, write_frame, WireError, MAX_FRAME};
pub use msg::{Msg, Part, Role, WireEntry, WireRule, PROTOCOL_VERSION};
