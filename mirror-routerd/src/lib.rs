//! mirror-routerd: the backup host's side of mirror (seeds/002 [0059]-[0064]).
//!
//! * [`rtlog`]: the router logs: RT1 (one fixed-layout record per entry, with its complete
//!   flag) and RT2 (the data), in numbered pairs that rotate at a size limit.
//! * [`config`]: the router configuration database (SQLite, rules per source site, Figure 9)
//!   and the in-memory table the router process looks rules up in.
//! * [`backup`]: where an entry's backup file is under `--root` (names checked before use),
//!   and the bounded LRU of open backup files.
//! * [`beneath`]: confinement: backup paths opened beneath the root through no symlink
//!   (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`).
//! * [`apply`]: the router process: applies pending RT1 entries in order, marks them
//!   complete, removes finished pairs; holds back the entries of blocked backup files.
//! * [`durable`]: the backup's durable point (`applied`): entries past it at start may be
//!   lost from the backup by a power loss, and their files are copied again.
//! * [`direct`]: large aligned transfers around the page cache (`O_DIRECT`), for RT2 and
//!   backup writes.
//! * [`heartbeat`]: UDP heartbeats with the sources; closes the session of a silent one.
//! * [`conns`]: the connections of one source session (many, when the sender stripes its
//!   stream): the connection array, the reorder buffer, per-connection keepalive.
//! * [`receive`]: the receive process: sessions with senders, configuration versions,
//!   RT1/RT2 group commit, acknowledgements, validation requests.
//! * [`restore`]: restore sessions: a site's backup sent back to it (`mirror-ctl restore`).
//! * [`retain`]: applied router logs kept for references to their data (`--retain`).
//! * [`resync`]: the copies asked of the sources (durable until they arrive).
//! * [`sums`]: block checksums of backup files, the answers to a copy's `Msg::Sums`.
//! * [`staging`]: copies built aside and put in place whole, so that a copy cut off midway
//!   leaves the backup file as it was.
//! * [`spool`]: the spool coordinator: spool files brought by a file-transfer tool, checked
//!   and applied in sequence per source through the same sessions; acknowledgements and
//!   requests written back as files.
//! * [`quarantine`]: damaged pairs of router logs moved aside, and what they held asked for
//!   again.

#![warn(missing_docs)]

pub mod apply;
pub mod backup;
/// Confinement beneath a root (shared with the sender, which reads sources the same way).
pub use mirrorfs::beneath;
pub mod config;
pub mod conns;
pub mod direct;
pub mod durable;
pub mod heartbeat;
pub mod quarantine;
pub mod receive;
pub mod restore;
pub mod resync;
pub mod retain;
pub mod rtlog;
pub mod shared;
pub mod spool;
pub mod staging;
pub mod sums;
pub mod verify;
pub mod walk;
