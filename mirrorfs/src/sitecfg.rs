//! Per-site settings of a local system, in one place (`<state>/sites`): JSON lines, one per
//! site that has any (`{"site":"HOST:PORT","connections":4}`). `mirror-ctl site set` writes
//! the file (replaced atomically); mirror-sendd reads it at every connection to a site and
//! again whenever it changes (its modification time), so a running sender follows it.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::wire::msg::MAX_CONNECTIONS;

/// The settings of one site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteSettings {
    /// `HOST:PORT`, as the rules name it.
    pub site: String,
    /// Connections its stream is striped across (1 to [`MAX_CONNECTIONS`]); `None`: the
    /// sender's `--connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
}

/// Errors of the settings file.
#[derive(Debug, thiserror::Error)]
pub enum SiteCfgError {
    /// Reading or writing it.
    #[error("{path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        err: io::Error,
    },
    /// A line that is not a site's settings.
    #[error("{path} line {line}: {err}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// The error.
        err: serde_json::Error,
    },
    /// A value out of range.
    #[error("{0}")]
    Invalid(String),
}

/// The settings file of the state directory at `root`.
pub fn path(root: &Path) -> PathBuf {
    root.join("sites")
}

/// Whether `n` is a valid number of connections; why not.
pub fn check_connections(n: u32) -> Result<(), SiteCfgError> {
    if n == 0 || n as usize > MAX_CONNECTIONS {
        return Err(SiteCfgError::Invalid(format!(
            "--connections must be 1 to {MAX_CONNECTIONS}, not {n}"
        )));
    }
    Ok(())
}

/// Every site's settings (none when the file is missing).
pub fn load(path: &Path) -> Result<Vec<SiteSettings>, SiteCfgError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => {
            return Err(SiteCfgError::Io {
                path: path.to_path_buf(),
                err,
            })
        }
    };
    let mut out: Vec<SiteSettings> = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let s: SiteSettings = serde_json::from_str(l).map_err(|err| SiteCfgError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            err,
        })?;
        out.retain(|x| x.site != s.site);
        out.push(s);
    }
    Ok(out)
}

/// Replaces the file with `all`.
pub fn store(path: &Path, all: &[SiteSettings]) -> Result<(), SiteCfgError> {
    let mut text = String::new();
    for s in all {
        // A struct of a string and a number always encodes.
        text.push_str(&serde_json::to_string(s).unwrap_or_default());
        text.push('\n');
    }
    crate::state::write_atomic(path, text.as_bytes()).map_err(|err| SiteCfgError::Io {
        path: path.to_path_buf(),
        err,
    })
}

/// Sets the connections of `site` (`None`: back to the sender's default).
pub fn set_connections(path: &Path, site: &str, n: Option<u32>) -> Result<(), SiteCfgError> {
    if let Some(n) = n {
        check_connections(n)?;
    }
    let mut all = load(path)?;
    match all.iter_mut().find(|s| s.site == site) {
        Some(s) => s.connections = n,
        None => all.push(SiteSettings {
            site: site.to_string(),
            connections: n,
        }),
    }
    all.retain(|s| s.connections.is_some());
    store(path, &all)
}

/// The settings of `site`, if it has any.
pub fn of(path: &Path, site: &str) -> Result<Option<SiteSettings>, SiteCfgError> {
    Ok(load(path)?.into_iter().find(|s| s.site == site))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_list_and_back_to_default() {
        let d = tempfile::tempdir().unwrap();
        let p = path(d.path());
        assert!(load(&p).unwrap().is_empty());
        set_connections(&p, "a:1", Some(4)).unwrap();
        set_connections(&p, "b:2", Some(2)).unwrap();
        set_connections(&p, "a:1", Some(8)).unwrap();
        assert_eq!(of(&p, "a:1").unwrap().unwrap().connections, Some(8));
        assert_eq!(load(&p).unwrap().len(), 2);
        set_connections(&p, "a:1", None).unwrap();
        assert!(of(&p, "a:1").unwrap().is_none());
        assert!(set_connections(&p, "a:1", Some(0)).is_err());
        assert!(set_connections(&p, "a:1", Some(65)).is_err());
    }
}
