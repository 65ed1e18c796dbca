//! Errors of filesystem operations and their one mapping to errno values.

use std::io;

use crate::journal::JournalError;

/// Why a filesystem operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The underlying system call failed; its errno goes back to the application.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The journal refused the entry: with `JournalError::Full` before the change was made
    /// (`ENOSPC`); otherwise the application is told EIO. The error names the file.
    #[error("journal append for {name} failed: {err}")]
    Journal {
        /// The file the entry was for.
        name: String,
        /// The journal error.
        err: JournalError,
    },
    /// The kernel asked about a node id it has already forgotten.
    #[error("node {0} is not known (stale)")]
    Stale(u64),
    /// The node has no name left (deleted while open).
    #[error("node {0} has no name left")]
    Unlinked(u64),
    /// A file handle the kernel never got from us.
    #[error("file handle {0} is not open")]
    BadHandle(u64),
    /// An operation this filesystem refuses.
    #[error("{0}")]
    Errno(i32),
    /// A change to a selected file whose full name is longer than a journal entry takes
    /// ([`crate::entry::MAX_NAME_LEN`]): refused before it is made.
    #[error("{name}… ({len} bytes): refused, a name longer than {max} bytes cannot be journaled", max = crate::entry::MAX_NAME_LEN)]
    NameTooLong {
        /// The name's start.
        name: String,
        /// Its length.
        len: usize,
    },
    /// A namespace change of a name a sync rule with `--on-sync-loss fail` selects, while a
    /// site of the rule is out of sync: refused (`EIO`) before it is made.
    #[error("{name}: refused: {why}")]
    OutOfSync {
        /// The full name.
        name: String,
        /// Which rule and site, since when, why.
        why: String,
    },
}

impl FsError {
    /// The errno for the application.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            // The journal had no room: the change was refused before it was made.
            FsError::Journal {
                err: JournalError::Full { .. },
                ..
            } => libc::ENOSPC,
            FsError::Journal { .. } => libc::EIO,
            FsError::Stale(_) => libc::ESTALE,
            FsError::Unlinked(_) => libc::ENOENT,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::Errno(e) => *e,
            FsError::NameTooLong { .. } => libc::ENAMETOOLONG,
            FsError::OutOfSync { .. } => libc::EIO,
        }
    }

    /// Whether this is worth a log line above debug level (errors the application caused
    /// itself, such as ENOENT from a lookup, are routine).
    pub fn is_routine(&self) -> bool {
        match self {
            FsError::Io(_) | FsError::Errno(_) | FsError::Unlinked(_) => true,
            FsError::Stale(_) | FsError::BadHandle(_) => false,
            FsError::Journal { .. } | FsError::NameTooLong { .. } => false,
            FsError::OutOfSync { .. } => false,
        }
    }
}

/// Results of filesystem operations.
pub type FsResult<T> = Result<T, FsError>;
