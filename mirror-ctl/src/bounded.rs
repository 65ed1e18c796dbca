//! File-system looks that cannot hold a command for good: a file system that does not answer
//! (a mirrorfs stopped with SIGSTOP) keeps its caller waiting in the kernel, so the look runs
//! in a thread of its own and the command gives up after [`LOOK_TIMEOUT`] (the process can
//! still end then: the kernel's wait for a FUSE answer gives way to its exit).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};

/// How long a command waits for a path to answer.
pub const LOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// `f` run on `path` in a thread of its own, or an error naming `path` (shown as `what`) if it
/// does not return within [`LOOK_TIMEOUT`].
pub fn look<T: Send + 'static>(
    what: &str,
    path: &Path,
    f: impl FnOnce(&Path) -> T + Send + 'static,
) -> Result<T> {
    let at = path.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f(&at));
    });
    rx.recv_timeout(LOOK_TIMEOUT).map_err(|_| {
        anyhow!(
            "{what} {} does not answer within {} s (a file system that is stopped or stuck, e.g. a mirrorfs stopped with SIGSTOP?)",
            path.display(),
            LOOK_TIMEOUT.as_secs()
        )
    })
}
