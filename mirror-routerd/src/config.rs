//! The router configuration database (`<router state>/router.db`, SQLite; seeds/002 Figure 9)
//! and the in-memory router configuration table built from it.
//!
//! ```sql
//! rules(source_site TEXT, crc INTEGER, pattern TEXT, dest TEXT, attrs INTEGER,
//!       delete_suffix TEXT NULL, version INTEGER, PRIMARY KEY (source_site, crc))
//! sources(site TEXT PRIMARY KEY, stream INTEGER, done_segment INTEGER, done_offset INTEGER)
//! ```
//!
//! `sources` remembers, per source site, its journal stream and the last journal position
//! received completely, as of the last time a pair of router logs was removed; the records
//! still in RT1 bring it up to date at start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mirrorfs::journal::Position;
use mirrorfs::rule::{Dest, Pattern, RuleError};
use mirrorfs::wire::WireRule;
use rusqlite::{params, Connection};

/// Errors of the router configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// SQLite failed.
    #[error("router configuration {path}: {err}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// What SQLite said.
        err: rusqlite::Error,
    },
    /// The database file cannot be made private.
    #[error("router configuration {path}: {err}")]
    Io {
        /// The database.
        path: PathBuf,
        /// What failed.
        err: std::io::Error,
    },
    /// A rule from a source is invalid.
    #[error("rule {crc:#010x} from site {site}: {err}")]
    BadRule {
        /// Source site.
        site: String,
        /// Rule CRC.
        crc: u32,
        /// What is wrong.
        err: RuleError,
    },
}

/// A rule as the router process uses it.
#[derive(Debug, Clone)]
pub struct RouterRule {
    /// The rule's CRC.
    pub crc: u32,
    /// Source pattern (for the fixed prefix and the form).
    pub pattern: Pattern,
    /// Destination under the root.
    pub dest: Dest,
    /// Mirror attributes.
    pub attrs: bool,
    /// Delete suffix.
    pub delete_suffix: Option<String>,
    /// The part of the root the source's key grants (relative to the root; empty: all of it),
    /// as the key file said when the table was last matched with it ([`RouterTable::granted`]);
    /// `None` when the source has no key, so nothing of it is written.
    pub namespace: Option<PathBuf>,
}

impl RouterRule {
    /// Checks and converts a rule received from `site`.
    pub fn from_wire(site: &str, w: &WireRule) -> Result<RouterRule, ConfigError> {
        let bad = |err| ConfigError::BadRule {
            site: site.to_string(),
            crc: w.crc,
            err,
        };
        let delete_suffix = match &w.delete_suffix {
            Some(s) => Some(mirrorfs::rule::parse_delete_suffix(s).map_err(bad)?),
            None => None,
        };
        Ok(RouterRule {
            crc: w.crc,
            pattern: Pattern::parse(&w.pattern).map_err(bad)?,
            dest: Dest::parse(&w.dest).map_err(bad)?,
            attrs: w.attrs,
            delete_suffix,
            namespace: None,
        })
    }

    /// The destination as a path relative to the root (beneath its namespace), if the source
    /// has a key.
    pub fn dest_rel(&self) -> Option<PathBuf> {
        self.namespace
            .as_ref()
            .map(|ns| ns.join(self.dest.as_str()))
    }
}

/// The first pair of `rules` (of one source) whose destinations share backup files, if any:
/// two rules of one source never write the same backup file.
pub fn overlapping(rules: &[RouterRule]) -> Option<(&RouterRule, &RouterRule)> {
    rules.iter().enumerate().find_map(|(i, a)| {
        rules[i + 1..]
            .iter()
            .find(|b| a.dest.overlaps(&b.dest))
            .map(|b| (a, b))
    })
}

impl RouterRule {
    /// The name whose copy is everything the rule selects: the file of a fixed-file rule,
    /// else the directory the rule starts at.
    pub fn base(&self) -> Vec<u8> {
        let p = self.pattern.prefix();
        if self.pattern.kind().dest_is_dir() {
            p.strip_suffix(b"/").unwrap_or(p).to_vec()
        } else {
            p.to_vec()
        }
    }
}

/// The router configuration table: (source site, rule CRC) → rule.
#[derive(Debug, Default, Clone)]
pub struct RouterTable {
    rules: HashMap<(String, u32), Arc<RouterRule>>,
}

impl RouterTable {
    /// A table of `rules`, each with its source site.
    pub fn with_rules(rules: impl IntoIterator<Item = (String, RouterRule)>) -> RouterTable {
        RouterTable {
            rules: rules
                .into_iter()
                .map(|(site, r)| ((site, r.crc), Arc::new(r)))
                .collect(),
        }
    }

    /// The same rules, each with the namespace its source's key grants in `keys` (none for a
    /// source without a key).
    pub fn granted(&self, keys: &mirrorfs::wire::auth::KeyFile) -> RouterTable {
        RouterTable {
            rules: self
                .rules
                .iter()
                .map(|((site, crc), r)| {
                    let namespace = keys.namespace(site).map(|n| n.path().to_path_buf());
                    let rule = RouterRule {
                        namespace,
                        ..RouterRule::clone(r)
                    };
                    ((site.clone(), *crc), Arc::new(rule))
                })
                .collect(),
        }
    }

    /// The rule `crc` of `site`.
    pub fn get(&self, site: &str, crc: u32) -> Option<&Arc<RouterRule>> {
        self.rules.get(&(site.to_string(), crc))
    }
    /// Every rule with its source site, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<RouterRule>)> {
        self.rules.iter().map(|((site, _), r)| (site.as_str(), r))
    }

    /// Whether `site` has rule `crc`.
    pub fn has(&self, site: &str, crc: u32) -> bool {
        self.get(site, crc).is_some()
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// What the router remembers of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SourceState {
    /// Journal stream id.
    pub stream: u64,
    /// Last journal position received completely.
    pub done: Option<Position>,
}

/// The open database.
pub struct RouterDb {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for RouterDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterDb")
            .field("path", &self.path)
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rules (
    source_site TEXT NOT NULL,
    crc INTEGER NOT NULL,
    pattern TEXT NOT NULL,
    dest TEXT NOT NULL,
    attrs INTEGER NOT NULL,
    delete_suffix TEXT,
    version INTEGER NOT NULL,
    PRIMARY KEY (source_site, crc)
);
CREATE TABLE IF NOT EXISTS sources (
    site TEXT PRIMARY KEY,
    stream INTEGER NOT NULL,
    done_segment INTEGER,
    done_offset INTEGER
);
PRAGMA user_version = 1;
";

impl RouterDb {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<RouterDb, ConfigError> {
        let sql = |err| ConfigError::Sqlite {
            path: path.to_path_buf(),
            err,
        };
        mirrorfs::state::private_file(path).map_err(|err| ConfigError::Io {
            path: path.to_path_buf(),
            err,
        })?;
        let conn = Connection::open(path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        Ok(RouterDb {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, err: rusqlite::Error) -> ConfigError {
        ConfigError::Sqlite {
            path: self.path.clone(),
            err,
        }
    }

    /// Replaces the rules of `site` with `rules` (configuration `version`).
    pub fn replace_rules(
        &mut self,
        site: &str,
        version: u64,
        rules: &[WireRule],
    ) -> Result<(), ConfigError> {
        let path = self.path.clone();
        let sql = move |err| ConfigError::Sqlite { path, err };
        let tx = self.conn.transaction().map_err(sql.clone())?;
        tx.execute("DELETE FROM rules WHERE source_site = ?1", params![site])
            .map_err(sql.clone())?;
        for r in rules {
            tx.execute(
                "INSERT OR REPLACE INTO rules (source_site, crc, pattern, dest, attrs, delete_suffix, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![site, r.crc, r.pattern, r.dest, r.attrs, r.delete_suffix, version as i64],
            )
            .map_err(sql.clone())?;
        }
        tx.commit().map_err(sql)
    }

    /// Builds the router configuration table from every stored rule. Rules that no longer
    /// parse are logged and left out.
    pub fn table(&self) -> Result<RouterTable, ConfigError> {
        let mut stmt = self
            .conn
            .prepare("SELECT source_site, crc, pattern, dest, attrs, delete_suffix FROM rules")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    WireRule {
                        crc: r.get::<_, u32>(1)?,
                        pattern: r.get(2)?,
                        dest: r.get(3)?,
                        attrs: r.get(4)?,
                        delete_suffix: r.get(5)?,
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut t = RouterTable::default();
        for row in rows {
            let (site, w) = row.map_err(|e| self.err(e))?;
            match RouterRule::from_wire(&site, &w) {
                Ok(r) => {
                    t.rules.insert((site, w.crc), Arc::new(r));
                }
                Err(e) => log::error!("{}: {e}; rule ignored", self.path.display()),
            }
        }
        Ok(t)
    }

    /// Every source's stored state.
    pub fn sources(&self) -> Result<HashMap<String, SourceState>, ConfigError> {
        let mut stmt = self
            .conn
            .prepare("SELECT site, stream, done_segment, done_offset FROM sources")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let seg: Option<i64> = r.get(2)?;
                let off: Option<i64> = r.get(3)?;
                Ok((
                    r.get::<_, String>(0)?,
                    SourceState {
                        stream: r.get::<_, i64>(1)? as u64,
                        done: seg.zip(off).map(|(s, o)| Position::new(s as u64, o as u64)),
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Stores the state of `site`.
    pub fn set_source(&mut self, site: &str, s: SourceState) -> Result<(), ConfigError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO sources (site, stream, done_segment, done_offset)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    site,
                    s.stream as i64,
                    s.done.map(|p| p.segment as i64),
                    s.done.map(|p| p.offset as i64)
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(crc: u32, pattern: &str) -> WireRule {
        WireRule {
            crc,
            pattern: pattern.into(),
            dest: "d".into(),
            attrs: false,
            delete_suffix: Some(".del".into()),
        }
    }

    #[test]
    fn rules_are_replaced_per_site() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = RouterDb::open(&dir.path().join("router.db")).unwrap();
        db.replace_rules("a", 1, &[rule(1, "/x/"), rule(2, "/y/")])
            .unwrap();
        db.replace_rules("b", 1, &[rule(1, "/z/")]).unwrap();
        db.replace_rules("a", 2, &[rule(2, "/y/")]).unwrap();
        let t = db.table().unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.get("a", 1).is_none());
        assert_eq!(t.get("b", 1).unwrap().pattern.as_str(), "/z/");
        assert_eq!(
            t.get("a", 2).unwrap().delete_suffix.as_deref(),
            Some(".del")
        );
    }

    #[test]
    fn bad_rules_are_refused_by_name() {
        let e = RouterRule::from_wire(
            "a",
            &WireRule {
                dest: "../etc".into(),
                ..rule(7, "/x/")
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("site a") && e.contains(".."), "{e}");
    }

    #[test]
    fn sources_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = RouterDb::open(&dir.path().join("router.db")).unwrap();
        let s = SourceState {
            stream: u64::MAX,
            done: Some(Position::new(2, 99)),
        };
        db.set_source("a", s).unwrap();
        assert_eq!(db.sources().unwrap()["a"], s);
    }
}
