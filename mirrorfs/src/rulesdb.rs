//! The rules database (`<state>/rules.db`, SQLite): the configuration database of seeds/002
//! Figure 6, plus an id, a mode, and the configuration version.
//!
//! Schema (version 3, kept in `PRAGMA user_version`; [`MIGRATIONS`] brings older files up):
//!
//! ```sql
//! meta(key TEXT PRIMARY KEY, value INTEGER)        -- 'config_version'
//! rules(id INTEGER PRIMARY KEY AUTOINCREMENT, pattern TEXT, dest TEXT, attrs INTEGER,
//!       delete_suffix TEXT NULL, mode TEXT, crc INTEGER UNIQUE, created_ns INTEGER,
//!       sync_point TEXT, sync_timeout_ms INTEGER, on_sync_loss TEXT)  -- version 3
//! rule_sites(rule_id INTEGER REFERENCES rules(id) ON DELETE CASCADE, site TEXT, pos INTEGER)
//! first_copies(rule_id INTEGER PRIMARY KEY REFERENCES rules(id) ON DELETE CASCADE,
//!              segment INTEGER NULL, offset INTEGER NULL)
//! ```
//!
//! `first_copies` holds the first copy of each rule added with one (`mirror-ctl rule add`
//! without `--no-sync`, see [`crate::firstcopy`]): a row without a position is still to be
//! queued (by the mount when it loads the rule, or by `mirror-ctl` itself when nothing is
//! mounted); with one, it is the journal position of the rule's copy entry, done once every
//! site of the rule acknowledged past it.
//!
//! Every change to the rules increments the configuration version in the same transaction;
//! mirror-sendd also increments it at every start (seeds/002 \[0058\]). The database runs in WAL
//! mode so the mount, the sender and `mirror-ctl` can use it at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::rule::{
    Dest, Mode, OnSyncLoss, Pattern, Rule, RuleError, RuleSpec, Site, SyncOpts, SyncPoint,
};

/// Errors of the rules database.
#[derive(Debug, thiserror::Error)]
pub enum RulesDbError {
    /// The database file cannot be made private.
    #[error("rules database {path}: {err}")]
    Io {
        /// The database file.
        path: PathBuf,
        /// What failed.
        err: std::io::Error,
    },
    /// SQLite failed.
    #[error("rules database {path}: {err}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        err: rusqlite::Error,
    },
    /// A stored row no longer parses (edited by hand, or a newer format).
    #[error("rules database {path}: rule {id} is invalid: {err}")]
    BadRow {
        /// The database file.
        path: PathBuf,
        /// The rule id.
        id: i64,
        /// What is wrong.
        err: RuleError,
    },
    /// The file was written by a newer mirror.
    #[error("rules database {path} has schema version {found}; this mirror knows up to {known}: upgrade mirror")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// The same pattern to the same destination and site exists already.
    #[error("rule {existing} already mirrors {pattern} to {dest} on site {site}")]
    Duplicate {
        /// The existing rule's id.
        existing: i64,
        /// Pattern.
        pattern: String,
        /// Destination.
        dest: String,
        /// The shared site.
        site: String,
    },
    /// The new rule's destination shares backup files with another rule's on the same site:
    /// the two would overwrite each other's backups.
    #[error("destination {dest} overlaps destination {other_dest} of rule {existing} ({pattern}) on site {site}: two rules never share a backup file; choose a destination outside it")]
    Overlap {
        /// The existing rule's id.
        existing: i64,
        /// The existing rule's pattern.
        pattern: String,
        /// The existing rule's destination.
        other_dest: String,
        /// The new rule's destination.
        dest: String,
        /// The shared site.
        site: String,
    },
    /// Astronomically rare: another rule has the same CRC.
    #[error(
        "the new rule's CRC {crc:#010x} equals that of rule {existing}; change --dest slightly"
    )]
    CrcCollision {
        /// The CRC.
        crc: u32,
        /// The rule holding it.
        existing: i64,
    },
    /// No rule with that id.
    #[error("no rule with id {0} (see `mirror-ctl rule list`)")]
    NoSuchRule(i64),
}

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = 3;

/// `MIGRATIONS[n]` upgrades a database from schema version `n` to `n + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the first schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
     INSERT INTO meta (key, value) VALUES ('config_version', 0);
     CREATE TABLE rules (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         pattern TEXT NOT NULL,
         dest TEXT NOT NULL,
         attrs INTEGER NOT NULL,
         delete_suffix TEXT,
         mode TEXT NOT NULL DEFAULT 'async',
         crc INTEGER NOT NULL UNIQUE,
         created_ns INTEGER NOT NULL
     );
     CREATE TABLE rule_sites (
         rule_id INTEGER NOT NULL REFERENCES rules(id) ON DELETE CASCADE,
         site TEXT NOT NULL,
         pos INTEGER NOT NULL,
         PRIMARY KEY (rule_id, site)
     );",
    // 1 -> 2: the rules' first copies.
    "CREATE TABLE first_copies (
         rule_id INTEGER PRIMARY KEY REFERENCES rules(id) ON DELETE CASCADE,
         segment INTEGER,
         offset INTEGER
     );",
    // 2 -> 3: the options of sync rules (issue 15).
    "ALTER TABLE rules ADD COLUMN sync_point TEXT NOT NULL DEFAULT 'durable';
     ALTER TABLE rules ADD COLUMN sync_timeout_ms INTEGER NOT NULL DEFAULT 10000;
     ALTER TABLE rules ADD COLUMN on_sync_loss TEXT NOT NULL DEFAULT 'degrade';",
];

/// A rule's first copy ([`crate::firstcopy`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstCopy {
    /// The rule's id.
    pub rule_id: i64,
    /// Where its copy entry is in the journal; `None` while it is still to be queued.
    pub queued: Option<crate::journal::Position>,
}

/// An open rules database.
pub struct RulesDb {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for RulesDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesDb").field("path", &self.path).finish()
    }
}

impl RulesDb {
    /// Opens (creating and migrating as needed) the database at `path`.
    pub fn open(path: &Path) -> Result<RulesDb, RulesDbError> {
        let sql = |err| RulesDbError::Sqlite {
            path: path.to_path_buf(),
            err,
        };
        crate::state::private_file(path).map_err(|err| RulesDbError::Io {
            path: path.to_path_buf(),
            err,
        })?;
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        let mut db = RulesDb {
            conn,
            path: path.to_path_buf(),
        };
        db.migrate()?;
        Ok(db)
    }

    /// Opens the database at `path` if there is one ([`RulesDb::open`]); `None`, with nothing
    /// created, when there is none (commands that only read: a local system without rules).
    pub fn open_existing(path: &Path) -> Result<Option<RulesDb>, RulesDbError> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => RulesDb::open(path).map(Some),
        }
    }

    fn err(&self, err: rusqlite::Error) -> RulesDbError {
        RulesDbError::Sqlite {
            path: self.path.clone(),
            err,
        }
    }

    fn migrate(&mut self) -> Result<(), RulesDbError> {
        let path = self.path.clone();
        let sql = |err| RulesDbError::Sqlite {
            path: path.clone(),
            err,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let found: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        if found > SCHEMA_VERSION {
            return Err(RulesDbError::TooNew {
                path: path.clone(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        for step in &MIGRATIONS[found as usize..] {
            tx.execute_batch(step).map_err(sql)?;
        }
        if found < SCHEMA_VERSION {
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current configuration version.
    pub fn config_version(&self) -> Result<u64, RulesDbError> {
        self.conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'config_version'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u64)
            .map_err(|e| self.err(e))
    }

    /// Increments the configuration version (mirror-sendd does this at start) and returns the new one.
    pub fn bump_version(&mut self) -> Result<u64, RulesDbError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|err| RulesDbError::Sqlite {
                path: path.clone(),
                err,
            })?;
        let v = bump(&tx).map_err(|err| RulesDbError::Sqlite {
            path: path.clone(),
            err,
        })?;
        tx.commit()
            .map_err(|err| RulesDbError::Sqlite { path, err })?;
        Ok(v)
    }

    /// A number that changes whenever another connection commits a change (SQLite `data_version`).
    /// Cheap to poll: watchers read it, and reload the rules only when it moved.
    pub fn data_version(&self) -> Result<i64, RulesDbError> {
        self.conn
            .pragma_query_value(None, "data_version", |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Adds a rule, refusing duplicates (same pattern, destination and a shared site).
    /// Returns the stored rule; the configuration version is incremented.
    pub fn add(&mut self, spec: RuleSpec) -> Result<Rule, RulesDbError> {
        self.add_with(spec, false)
    }

    /// [`RulesDb::add`]; with `first_copy`, the rule's first copy is recorded as still to be
    /// queued, in the same transaction ([`crate::firstcopy`]).
    pub fn add_with(&mut self, spec: RuleSpec, first_copy: bool) -> Result<Rule, RulesDbError> {
        let path = self.path.clone();
        let sql = |err| RulesDbError::Sqlite {
            path: path.clone(),
            err,
        };
        let crc = spec.crc();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        {
            let mut same_site = tx
                .prepare(
                    "SELECT r.id, r.pattern, r.dest, s.site FROM rules r
                     JOIN rule_sites s ON s.rule_id = r.id",
                )
                .map_err(sql)?;
            let rows = same_site
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })
                .map_err(sql)?;
            for row in rows {
                let (existing, pattern, dest, site) = row.map_err(sql)?;
                if !spec.sites.iter().any(|s| s.to_string() == site) {
                    continue;
                }
                if pattern == spec.pattern.as_str() && dest == spec.dest.as_str() {
                    return Err(RulesDbError::Duplicate {
                        existing,
                        pattern,
                        dest,
                        site,
                    });
                }
                // A destination that no longer parses overlaps nothing it could be compared to.
                if Dest::parse(&dest).is_ok_and(|d| d.overlaps(&spec.dest)) {
                    return Err(RulesDbError::Overlap {
                        existing,
                        pattern,
                        other_dest: dest,
                        dest: spec.dest.to_string(),
                        site,
                    });
                }
            }
            let clash: Option<i64> = tx
                .query_row(
                    "SELECT id FROM rules WHERE crc = ?1",
                    params![crc as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            if let Some(existing) = clash {
                return Err(RulesDbError::CrcCollision { crc, existing });
            }
        }
        tx.execute(
            "INSERT INTO rules (pattern, dest, attrs, delete_suffix, mode, crc, created_ns,
                                sync_point, sync_timeout_ms, on_sync_loss)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                spec.pattern.as_str(),
                spec.dest.as_str(),
                spec.attrs,
                spec.delete_suffix,
                spec.mode.as_str(),
                crc as i64,
                crate::now_ns() as i64,
                spec.sync.point.as_str(),
                spec.sync.timeout.as_millis() as i64,
                spec.sync.on_loss.as_str(),
            ],
        )
        .map_err(sql)?;
        let id = tx.last_insert_rowid();
        for (pos, site) in spec.sites.iter().enumerate() {
            tx.execute(
                "INSERT INTO rule_sites (rule_id, site, pos) VALUES (?1, ?2, ?3)",
                params![id, site.to_string(), pos as i64],
            )
            .map_err(sql)?;
        }
        if first_copy {
            tx.execute(
                "INSERT INTO first_copies (rule_id) VALUES (?1)",
                params![id],
            )
            .map_err(sql)?;
        }
        bump(&tx).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(Rule { id, spec, crc })
    }

    /// Sets the mode and sync options of rule `id` (none of them is part of its CRC) and
    /// bumps the configuration version; the rule as it is now.
    pub fn set_sync(&mut self, id: i64, mode: Mode, sync: SyncOpts) -> Result<Rule, RulesDbError> {
        let path = self.path.clone();
        let sql = |err| RulesDbError::Sqlite {
            path: path.clone(),
            err,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let n = tx
            .execute(
                "UPDATE rules SET mode = ?2, sync_point = ?3, sync_timeout_ms = ?4, on_sync_loss = ?5
                 WHERE id = ?1",
                params![
                    id,
                    mode.as_str(),
                    sync.point.as_str(),
                    sync.timeout.as_millis() as i64,
                    sync.on_loss.as_str(),
                ],
            )
            .map_err(sql)?;
        if n == 0 {
            return Err(RulesDbError::NoSuchRule(id));
        }
        bump(&tx).map_err(sql)?;
        tx.commit().map_err(sql)?;
        self.list()?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or(RulesDbError::NoSuchRule(id))
    }

    /// The first copies of the rules that have one, by rule id.
    pub fn first_copies(&self) -> Result<Vec<FirstCopy>, RulesDbError> {
        let sql = |e| self.err(e);
        let mut stmt = self
            .conn
            .prepare("SELECT rule_id, segment, offset FROM first_copies ORDER BY rule_id")
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| {
                let seg: Option<i64> = r.get(1)?;
                let off: Option<i64> = r.get(2)?;
                Ok(FirstCopy {
                    rule_id: r.get(0)?,
                    queued: seg
                        .zip(off)
                        .map(|(s, o)| crate::journal::Position::new(s as u64, o as u64)),
                })
            })
            .map_err(sql)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r.map_err(sql)?);
        }
        Ok(out)
    }

    /// Records that the first copy of rule `rule_id` is queued at `pos` in the journal (a
    /// rule removed meanwhile has nothing to record).
    pub fn first_copy_queued(
        &self,
        rule_id: i64,
        pos: crate::journal::Position,
    ) -> Result<(), RulesDbError> {
        self.conn
            .execute(
                "UPDATE first_copies SET segment = ?2, offset = ?3 WHERE rule_id = ?1",
                params![rule_id, pos.segment as i64, pos.offset as i64],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Removes rule `id` and returns it; the configuration version is incremented.
    pub fn remove(&mut self, id: i64) -> Result<Rule, RulesDbError> {
        let path = self.path.clone();
        let sql = |err| RulesDbError::Sqlite {
            path: path.clone(),
            err,
        };
        let rule = self
            .list()?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or(RulesDbError::NoSuchRule(id))?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let n = tx
            .execute("DELETE FROM rules WHERE id = ?1", params![id])
            .map_err(sql)?;
        if n == 0 {
            return Err(RulesDbError::NoSuchRule(id));
        }
        bump(&tx).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(rule)
    }

    /// All rules, by id.
    pub fn list(&self) -> Result<Vec<Rule>, RulesDbError> {
        Ok(self.snapshot()?.1)
    }

    /// The configuration version and all rules, read in one transaction so they agree.
    pub fn snapshot(&self) -> Result<(u64, Vec<Rule>), RulesDbError> {
        let sql = |e| self.err(e);
        let tx = self.conn.unchecked_transaction().map_err(sql)?;
        let version: i64 = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'config_version'",
                [],
                |r| r.get(0),
            )
            .map_err(sql)?;
        type Row = (
            i64,
            String,
            String,
            bool,
            Option<String>,
            String,
            i64,
            (String, i64, String),
        );
        let rows: Vec<Row> = {
            let mut stmt = tx
                .prepare(
                    "SELECT id, pattern, dest, attrs, delete_suffix, mode, crc,
                            sync_point, sync_timeout_ms, on_sync_loss
                     FROM rules ORDER BY id",
                )
                .map_err(sql)?;
            let it = stmt
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        (
                            r.get::<_, String>(7)?,
                            r.get::<_, i64>(8)?,
                            r.get::<_, String>(9)?,
                        ),
                    ))
                })
                .map_err(sql)?;
            it.collect::<Result<_, _>>().map_err(sql)?
        };
        let mut sites_stmt = tx
            .prepare("SELECT site FROM rule_sites WHERE rule_id = ?1 ORDER BY pos")
            .map_err(sql)?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, pattern, dest, attrs, delete_suffix, mode, crc, sync) in rows {
            let bad = |err| RulesDbError::BadRow {
                path: self.path.clone(),
                id,
                err,
            };
            let sites: Vec<String> = sites_stmt
                .query_map(params![id], |r| r.get(0))
                .map_err(sql)?
                .collect::<Result<_, _>>()
                .map_err(sql)?;
            let spec = RuleSpec {
                pattern: Pattern::parse(&pattern).map_err(bad)?,
                sites: sites
                    .iter()
                    .map(|s| Site::parse(s))
                    .collect::<Result<_, _>>()
                    .map_err(bad)?,
                dest: Dest::parse(&dest).map_err(bad)?,
                attrs,
                delete_suffix,
                mode: Mode::parse(&mode).map_err(bad)?,
                sync: SyncOpts {
                    point: SyncPoint::parse(&sync.0).map_err(bad)?,
                    timeout: SyncOpts::timeout_from_ms(sync.1.max(0) as u64).map_err(bad)?,
                    on_loss: OnSyncLoss::parse(&sync.2).map_err(bad)?,
                },
            };
            out.push(Rule {
                id,
                spec,
                crc: crc as u32,
            });
        }
        drop(sites_stmt);
        tx.commit().map_err(sql)?;
        Ok((version as u64, out))
    }
}

fn bump(tx: &rusqlite::Transaction<'_>) -> Result<u64, rusqlite::Error> {
    tx.query_row(
        "UPDATE meta SET value = value + 1 WHERE key = 'config_version' RETURNING value",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pattern: &str, site: &str, dest: &str) -> RuleSpec {
        RuleSpec {
            pattern: Pattern::parse(pattern).unwrap(),
            sites: vec![Site::parse(site).unwrap()],
            dest: Dest::parse(dest).unwrap(),
            attrs: false,
            delete_suffix: None,
            mode: Mode::Async,
            sync: Default::default(),
        }
    }

    #[test]
    fn add_list_remove_bump_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.db");
        let mut db = RulesDb::open(&path).unwrap();
        assert_eq!(db.config_version().unwrap(), 0);
        let a = db.add(spec("/p/a/", "h:1", "d")).unwrap();
        let mut s = spec("/p/*.doc", "h:1", "docs");
        s.attrs = true;
        s.delete_suffix = Some(".deleted".into());
        s.sites.push(Site::parse("[::1]:2").unwrap());
        let b = db.add(s).unwrap();
        assert_eq!(db.config_version().unwrap(), 2);
        // Reopen: everything is durable and parses back.
        drop(db);
        let mut db = RulesDb::open(&path).unwrap();
        let rules = db.list().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].id, a.id);
        assert_eq!(rules[1].spec.sites.len(), 2);
        assert_eq!(rules[1].spec.delete_suffix.as_deref(), Some(".deleted"));
        assert!(rules[1].spec.attrs);
        assert_eq!(rules[1].crc, b.crc);
        db.remove(a.id).unwrap();
        assert_eq!(db.config_version().unwrap(), 3);
        assert!(matches!(db.remove(a.id), Err(RulesDbError::NoSuchRule(_))));
        assert_eq!(db.bump_version().unwrap(), 4);
        // Ids are never reused.
        let c = db.add(spec("/p/a/", "h:1", "d")).unwrap();
        assert!(c.id > b.id);
    }

    #[test]
    fn duplicates_refused_without_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = RulesDb::open(&dir.path().join("r.db")).unwrap();
        db.add(spec("/p/a/", "h:1", "d")).unwrap();
        let e = db.add(spec("/p/a/", "h:1", "d")).unwrap_err();
        assert!(matches!(e, RulesDbError::Duplicate { .. }), "{e}");
        assert_eq!(db.config_version().unwrap(), 1);
        assert_eq!(db.list().unwrap().len(), 1);
        // Another site or another destination is a different rule.
        db.add(spec("/p/a/", "h:2", "d")).unwrap();
        db.add(spec("/p/a/", "h:1", "e")).unwrap();
        // A destination inside (or around) another's on the same site is refused.
        for dest in ["d/x", "d", "d/x/y"] {
            let e = db.add(spec("/p/b/", "h:1", dest)).unwrap_err();
            assert!(
                matches!(e, RulesDbError::Overlap { existing: 1, .. }),
                "{e}"
            );
        }
        let e = db.add(spec("/p/b/", "h:2", "d/sub")).unwrap_err();
        assert!(e.to_string().contains("on site h:2"), "{e}");
        db.add(spec("/p/b/", "h:1", "dd")).unwrap();
        db.add(spec("/p/b/", "h:3", "d/sub")).unwrap();
    }

    #[test]
    fn site_ids_fit_for_a_directory_name() {
        use crate::wire::msg::valid_site_id;
        for ok in ["laptop", "web-1.example.org", "a_b", "A9"] {
            assert!(valid_site_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            "a/b",
            "a b",
            "*",
            "a:b",
            "x\u{e9}",
            &"x".repeat(256),
        ] {
            assert!(!valid_site_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_schema_1_database_gains_first_copies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        drop(c);
        let mut db = RulesDb::open(&path).unwrap();
        let r = db.add_with(spec("/p/a/", "h:1", "d"), true).unwrap();
        assert_eq!(
            db.first_copies().unwrap(),
            vec![FirstCopy {
                rule_id: r.id,
                queued: None
            }]
        );
    }

    #[test]
    fn a_schema_2_rule_becomes_async_with_default_sync_options_and_set_sync_changes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.execute_batch(MIGRATIONS[1]).unwrap();
        c.execute(
            "INSERT INTO rules (pattern, dest, attrs, mode, crc, created_ns)
             VALUES ('/p/a/', 'd', 0, 'async', 7, 0)",
            [],
        )
        .unwrap();
        c.execute(
            "INSERT INTO rule_sites (rule_id, site, pos) VALUES (1, 'h:1', 0)",
            [],
        )
        .unwrap();
        c.pragma_update(None, "user_version", 2).unwrap();
        drop(c);
        let mut db = RulesDb::open(&path).unwrap();
        let r = &db.list().unwrap()[0];
        assert_eq!(
            (r.spec.mode, r.spec.sync),
            (Mode::Async, SyncOpts::default())
        );
        let v = db.config_version().unwrap();
        let opts = SyncOpts {
            point: SyncPoint::Applied,
            timeout: Duration::from_millis(1500),
            on_loss: OnSyncLoss::Fail,
        };
        let r = db.set_sync(1, Mode::Sync, opts).unwrap();
        assert_eq!((r.spec.mode, r.spec.sync, r.crc), (Mode::Sync, opts, 7));
        assert_eq!(db.config_version().unwrap(), v + 1);
        assert!(matches!(
            db.set_sync(9, Mode::Sync, opts),
            Err(RulesDbError::NoSuchRule(9))
        ));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        drop(RulesDb::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(
            RulesDb::open(&path),
            Err(RulesDbError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn data_version_moves_on_foreign_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let watcher = RulesDb::open(&path).unwrap();
        let before = watcher.data_version().unwrap();
        let mut writer = RulesDb::open(&path).unwrap();
        writer.add(spec("/p/a/", "h:1", "d")).unwrap();
        assert_ne!(watcher.data_version().unwrap(), before);
    }
}
