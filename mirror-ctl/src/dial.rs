//! Connecting to a router (`rule add`'s validation, `restore`, `verify`): the site's address,
//! a bounded connect, the time each read may wait, and an authenticated session of a given
//! role ([`Session`]).

use std::io::{self, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use mirrorfs::wire::auth::{self, HandshakeError, KeyRing};
use mirrorfs::wire::{codec, read_sealed, Msg, Role};

/// How long to wait for the router to connect, and for each of its frames.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the router may take to answer the hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// An authenticated session with one router (a restore's or a verify's).
pub struct Session {
    /// `HOST:PORT`.
    pub site: String,
    r: BufReader<TcpStream>,
    w: TcpStream,
    mac: auth::Session,
}

impl Session {
    /// Opens a session of `role` with `site` as source `id`, with the key `keys` hold for it.
    pub fn open(keys: &KeyRing, id: &str, site: &str, role: Role) -> Result<Session> {
        let what = match role {
            Role::Verify => "verify against",
            _ => "restore from",
        };
        let unreachable = |e: &dyn std::fmt::Display| {
            anyhow!("cannot {what} site {site}: {e} (is mirror-routerd running there?)")
        };
        let key = keys.get(site)?.ok_or_else(|| {
            anyhow!(
                "no key for site {site} in {}: `mirror-ctl key add {site} KEY` with the key the router has for this source ({id})",
                keys.path().display()
            )
        })?;
        // A router that accepts but does not answer (stopped, overloaded) is told at once.
        let s = dial(site, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT).map_err(|e| unreachable(&e))?;
        s.set_write_timeout(Some(READ_TIMEOUT))
            .map_err(|e| unreachable(&e))?;
        mirrorfs::wire::keepalive(&s);
        let mut w = s.try_clone().map_err(|e| unreachable(&e))?;
        let mut r = BufReader::with_capacity(1 << 20, s);
        let mac = match auth::client(&mut r, &mut w, id, 0, role, &key) {
            Ok(x) => x,
            Err(HandshakeError::Refused(reason)) => {
                bail!("site {site} refused this source ({id}): {reason}")
            }
            Err(HandshakeError::Wire(mirrorfs::wire::WireError::Closed)) => {
                let cmd = if role == Role::Verify {
                    "verify"
                } else {
                    "restore"
                };
                bail!(
                    "site {site} closed the connection at the hello: its mirror-routerd may be older than {cmd} (upgrade it)"
                )
            }
            Err(HandshakeError::Wire(mirrorfs::wire::WireError::Io(e)))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                bail!(
                    "cannot {what} site {site}: it took the connection but did not answer within {} s (is its mirror-routerd stopped or stuck?)",
                    HANDSHAKE_TIMEOUT.as_secs()
                )
            }
            Err(e) => return Err(unreachable(&e)),
        };
        r.get_ref()
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(|e| unreachable(&e))?;
        Ok(Session {
            site: site.to_string(),
            r,
            w,
            mac,
        })
    }

    /// Sends `msg`.
    pub fn send(&mut self, msg: &Msg) -> Result<()> {
        let f = codec::encode_sealed(msg, &mut self.mac.send)?;
        self.w
            .write_all(&f)
            .with_context(|| format!("site {}", self.site))
    }

    /// The next message from the router.
    pub fn recv(&mut self) -> Result<Msg> {
        read_sealed(&mut self.r, &mut self.mac.recv).map_err(|e| anyhow!("site {}: {e}", self.site))
    }
}
