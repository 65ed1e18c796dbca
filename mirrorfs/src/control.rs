//! The control socket of a running mirrorfs (`<state>/mirrorfs.sock`): other tools ask the
//! journal's single writer to append entries for them (today: the copies `mirror-ctl sync`
//! queues, so they are ordered with the application's writes).
//!
//! One JSON request per line, one JSON response per line.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::journal::Position;

/// A request to mirrorfs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Append one copy entry per `(rule CRC, full source name)`, then make them durable.
    Copy {
        /// The copies.
        copies: Vec<(u32, Vec<u8>)>,
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
    /// Refused.
    Error {
        /// Why.
        reason: String,
    },
}

/// What serves requests.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// Listens on `path` (replacing a stale socket file) and serves each connection on a thread.
pub fn serve(path: &Path, handler: Handler) -> io::Result<PathBuf> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    let shown = path.to_path_buf();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        let h = handler.clone();
                        let _ = std::thread::Builder::new()
                            .name("control-conn".into())
                            .spawn(move || {
                                if let Err(e) = serve_one(c, h) {
                                    log::warn!("control connection: {e}");
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

fn serve_one(c: UnixStream, handler: Handler) -> io::Result<()> {
    let mut w = c.try_clone()?;
    let r = BufReader::new(c);
    for line in r.lines() {
        let line = line?;
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handler(req),
            Err(e) => Response::Error {
                reason: format!("malformed request: {e}"),
            },
        };
        let mut out = serde_json::to_vec(&resp).map_err(io::Error::other)?;
        out.push(b'\n');
        w.write_all(&out)?;
    }
    Ok(())
}

/// Sends `req` to the socket at `path` and returns the answer.
pub fn request(path: &Path, req: &Request) -> io::Result<Response> {
    let mut c = UnixStream::connect(path)?;
    let mut out = serde_json::to_vec(req).map_err(io::Error::other)?;
    out.push(b'\n');
    c.write_all(&out)?;
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed answer from {}: {e}", path.display()),
        )
    })
}

/// Appends one copy entry per `(rule CRC, name)` to `journal` and makes them durable; the
/// position of the last one. What a running mirrorfs does for [`Request::Copy`], and what
/// `mirror-ctl sync` does itself when no mirrorfs holds the journal.
pub fn append_copies(
    journal: &crate::journal::Journal,
    copies: &[(u32, Vec<u8>)],
) -> Result<Option<Position>, crate::journal::JournalError> {
    let mut last = None;
    for (crc, name) in copies {
        let e = crate::entry::EntryRef::new(crate::entry::Command::Copy, *crc, name);
        last = Some(journal.append(&e)?);
    }
    journal.sync()?;
    Ok(last)
}
