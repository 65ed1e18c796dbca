//! Connecting to a router (`rule add`'s validation, `restore`): the site's address, a bounded
//! connect, and the time each read may wait.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A connection to `site` (`HOST:PORT`), made within `connect`, whose reads wait at most
/// `read` (and writes as long).
pub fn dial(site: &str, connect: Duration, read: Duration) -> io::Result<TcpStream> {
    let addr = site
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
    let s = TcpStream::connect_timeout(&addr, connect)?;
    s.set_read_timeout(Some(read))?;
    s.set_write_timeout(Some(read))?;
    Ok(s)
}
