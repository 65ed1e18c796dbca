//! Validation of a new rule's destination by its site (seeds/002 [0032]): the router says
//! whether the destination exists and can be written, or can be created. The request goes in
//! an authenticated session of role `Validate`, with this source's key for the site.

use std::io::{BufReader, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use mirrorfs::rule::{Dest, Site};
use mirrorfs::state::StateDir;
use mirrorfs::wire::auth::{self, HandshakeError, KeyRing};
use mirrorfs::wire::{codec, read_sealed, Msg, Role};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Asks `site` whether `dest` (a directory when `dir`) is usable; an error with the router's
/// reason when not, or when the site cannot be asked.
pub fn check(state: &StateDir, keys: &KeyRing, site: &Site, dest: &Dest, dir: bool) -> Result<()> {
    let unreachable = |e: &dyn std::fmt::Display| {
        anyhow!(
            "cannot ask site {site} to validate destination {dest}: {e} (is mirror-routerd running there? add --no-validate to add the rule anyway)"
        )
    };
    let id = mirrorfs::state::site_id(state).map_err(|e| unreachable(&e))?;
    let key = keys.get(&site.to_string())?.ok_or_else(|| {
        anyhow!(
            "no key for site {site} in {}: on the router run `mirror-ctl router key add {id}`, then here `mirror-ctl key add {site} KEY` (or add the rule with --no-validate)",
            keys.path().display()
        )
    })?;
    let s = crate::dial::dial(&site.to_string(), TIMEOUT, TIMEOUT).map_err(|e| unreachable(&e))?;
    let mut w = s.try_clone().map_err(|e| unreachable(&e))?;
    let mut r = BufReader::new(s);
    let mut session = match auth::client(&mut r, &mut w, &id, 0, Role::Validate, &key) {
        Ok(x) => x,
        Err(HandshakeError::Refused(reason)) => {
            bail!("site {site} refused this source ({id}): {reason}")
        }
        Err(e) => return Err(unreachable(&e)),
    };
    let frame = codec::encode_sealed(
        &Msg::Validate {
            dest: dest.as_str().to_string(),
            dir,
        },
        &mut session.send,
    )?;
    w.write_all(&frame).map_err(|e| unreachable(&e))?;
    match read_sealed(&mut r, &mut session.recv).map_err(|e| unreachable(&e))? {
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
