//! Validation of a new rule's destination by its site (seeds/002 [0032]): the router says
//! whether the destination exists and can be written, or can be created.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use mirrorfs::rule::{Dest, Site};
use mirrorfs::wire::{codec, read_frame, Msg};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Asks `site` whether `dest` (a directory when `dir`) is usable; an error with the router's
/// reason when not, or when the site cannot be asked.
pub fn check(site: &Site, dest: &Dest, dir: bool) -> Result<()> {
    let unreachable = |e: &dyn std::fmt::Display| {
        anyhow!(
            "cannot ask site {site} to validate destination {dest}: {e} (is mirror-routerd running there? add --no-validate to add the rule anyway)"
        )
    };
    let addr = site
        .to_string()
        .to_socket_addrs()
        .map_err(|e| unreachable(&e))?
        .next()
        .ok_or_else(|| unreachable(&"no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| unreachable(&e))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| unreachable(&e))?;
    let frame = codec::encode_frame(&Msg::Validate {
        dest: dest.as_str().to_string(),
        dir,
    })?;
    s.write_all(&frame).map_err(|e| unreachable(&e))?;
    match read_frame(&mut s).map_err(|e| unreachable(&e))? {
        Msg::Validated { ok: true, .. } => Ok(()),
        Msg::Validated { ok: false, reason } => {
            bail!("site {site} refuses destination {dest}: {reason}")
        }
        Msg::Error { reason } => bail!("site {site} refused the validation request: {reason}"),
        other => bail!(
            "site {site} answered the validation request with {}",
            other.kind()
        ),
    }
}
