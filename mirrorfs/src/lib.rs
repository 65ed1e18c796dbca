//! mirror's shared library and the `mirrorfs` filesystem.
//!
//! Every mirror binary builds on this crate: the rules and their matcher, the store-and-forward
//! journal, the state-directory layout, and (for `mirrorfs` itself) the FUSE filesystem.
//! `docs/ARCHITECTURE.md` in the repository is the map; DESIGN.md the contract.

#![warn(missing_docs)]

pub mod atime;
pub mod beneath;
pub mod blocked;
pub mod blocksums;
pub mod control;
pub mod copycheck;
pub mod entry;
pub mod firstcopy;
pub mod flusher;
pub mod fs;
pub mod fuse;
pub mod journal;
pub mod keeper;
pub mod logging;
pub mod matcher;
pub mod mount;
pub mod mountopts;
pub mod notify;
pub mod rule;
pub mod rulesdb;
pub mod sfa;
pub mod shipped;
pub mod sitecfg;
pub mod state;
pub mod syncwait;
pub mod units;
pub mod wire;
pub mod xattr;

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
