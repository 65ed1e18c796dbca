//! What each site holds in its router logs, block by block (seeds/001 claims 5 and 14):
//! for every 4 KiB block of a file that an acknowledged write carried wholly, the write's
//! journal position (the transfer's id), the block's number within the write, and the
//! block's sum. A copy of the file later (a rename into another rule, a `sync`, a dirty set)
//! finds here the blocks whose current content went out already and sends references to
//! them instead of their data (mirror-sendd's `delta`).
//!
//! Files are known by their identity (device, inode), not their names, so that a rename
//! (journaled as a deletion and a copy when it crosses rules) still finds what the old name
//! shipped. The index lives in `<state>/shipped.db` (SQLite, 0600); losing it loses nothing
//! but the savings, and a stale row costs nothing either: the copy compares the block's
//! current sum with the row's, and the router checks the sum again before it uses the data.
//! It is kept small: rows older than what a router says it still retains go
//! ([`Shipped::prune`]), and a site keeps at most [`MAX_ROWS`] rows.
//!
//! It also holds, per site and per file a copy sent whole, the file's state when the copy
//! read it (identity, size, modification and change times; [`FileState`]), once the site
//! acknowledged the copy: a later copy of the file whose state is still that skips it
//! without reading it (what makes a `sync` of an unchanged tree fast; `sync --checksum`
//! and `verify --repair` never skip), and `mirror-ctl verify` compares the content only of
//! files whose state moved since.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::blocksums::Sum;
use crate::journal::Position;
use rusqlite::{params, Connection};

/// Rows one site keeps at most (4 KiB blocks: 16 GiB of data; about 1 GiB of disk).
pub const MAX_ROWS: i64 = 4 << 20;

/// Trouble with the index.
#[derive(Debug, thiserror::Error)]
pub enum ShippedError {
    /// SQLite said no.
    #[error("block index {path}: {err}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// The error.
        err: rusqlite::Error,
    },
    /// Its file could not be made private.
    #[error("block index {path}: {err}")]
    Io {
        /// The database.
        path: PathBuf,
        /// The error.
        err: std::io::Error,
    },
}

/// One block a write carried wholly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The file (device, inode).
    pub file: (u64, u64),
    /// The block's number in the file.
    pub block: u64,
    /// The write's journal position.
    pub pos: Position,
    /// For a write part of a copy: its file's name hash and the part's offset in the file
    /// ([`crate::blocksums::Locator::Transfer`]).
    pub part: Option<(u64, u64)>,
    /// The block's number within the write's data.
    pub k: u64,
    /// The block's sum.
    pub sum: Sum,
}

/// A file's state when a copy read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileState {
    /// Device and inode.
    pub file: (u64, u64),
    /// Size.
    pub size: u64,
    /// Modification time (ns since the epoch).
    pub mtime_ns: i64,
    /// Change time (ns since the epoch).
    pub ctime_ns: i64,
}

/// How long after its last change a file's times are known to show every change: file
/// times come from a coarse clock (a tick of up to 10 ms), and a change within the same tick
/// leaves them as they were; a second of margin covers clock steps too.
pub const SETTLE_NS: i64 = 1_000_000_000;

impl FileState {
    /// Whether this state, read at `now_ns`, is old enough to show every change to the file
    /// made since ([`SETTLE_NS`]).
    pub fn settled(&self, now_ns: u64) -> bool {
        let newest = self.mtime_ns.max(self.ctime_ns);
        (now_ns as i64).saturating_sub(newest) >= SETTLE_NS
    }

    /// The state `m` describes.
    pub fn of(m: &std::fs::Metadata) -> FileState {
        use std::os::unix::fs::MetadataExt;
        FileState {
            file: (m.dev(), m.ino()),
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}

/// Where a block's current content went: the write's position (and for a copy's part, its
/// file's name hash and offset), the block's place in it, and the sum it had.
pub type Known = HashMap<u64, (Position, Option<(u64, u64)>, u64, Sum)>;

/// The process's index (none when its database cannot be opened: copies then send data).
static INDEX: std::sync::OnceLock<std::sync::Mutex<Option<Shipped>>> = std::sync::OnceLock::new();

/// Opens the process's index at `path` (once).
pub fn init(path: &Path) {
    INDEX.get_or_init(|| std::sync::Mutex::new(open_or_remake(path)));
}

/// Opens the index at `path`; one that cannot be read (damaged) is moved aside to
/// `shipped.db.damaged` and made anew: it only ever saves data, and nothing is lost with it
/// but the savings of what it knew.
fn open_or_remake(path: &Path) -> Option<Shipped> {
    match Shipped::open(path) {
        Ok(s) => Some(s),
        Err(e @ ShippedError::Sqlite { .. }) => {
            let aside = path.with_extension("db.damaged");
            log::error!(
                "{e}; moved aside to {} and made anew (copies refer only to what is sent from now on)",
                aside.display()
            );
            let _ = std::fs::rename(path, &aside);
            for ext in ["db-wal", "db-shm"] {
                let _ = std::fs::remove_file(path.with_extension(ext));
            }
            Shipped::open(path)
                .inspect_err(|e| log::error!("{e}; copies send every block as data"))
                .ok()
        }
        Err(e) => {
            log::error!("{e}; copies send every block as data");
            None
        }
    }
}

/// Runs `f` on the process's index, if it has one.
pub fn with<T>(f: impl FnOnce(&mut Shipped) -> Result<T, ShippedError>) -> Option<T> {
    let m = INDEX.get()?;
    let mut g = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let s = g.as_mut()?;
    f(s).inspect_err(|e| log::warn!("{e}")).ok()
}

/// What `site` holds of file `file` ([`Shipped::lookup`]); nothing when unknown.
pub fn known(site: &str, file: (u64, u64)) -> Known {
    with(|s| s.lookup(site, file)).unwrap_or_default()
}

/// The index.
pub struct Shipped {
    conn: Connection,
    path: PathBuf,
}

impl Shipped {
    /// Opens (or makes) the index at `path`.
    pub fn open(path: &Path) -> Result<Shipped, ShippedError> {
        let sql = |err| ShippedError::Sqlite {
            path: path.to_path_buf(),
            err,
        };
        crate::state::private_file(path).map_err(|err| ShippedError::Io {
            path: path.to_path_buf(),
            err,
        })?;
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        // Losing the last rows at a power loss loses only savings.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS blocks2 (
                site TEXT NOT NULL, dev INTEGER NOT NULL, ino INTEGER NOT NULL,
                block INTEGER NOT NULL, seg INTEGER NOT NULL, off INTEGER NOT NULL,
                k INTEGER NOT NULL, sum BLOB NOT NULL, pname INTEGER, poff INTEGER,
                PRIMARY KEY (site, dev, ino, block));
             CREATE INDEX IF NOT EXISTS blocks2_pos ON blocks2 (site, seg, off);
             CREATE TABLE IF NOT EXISTS files (
                site TEXT NOT NULL, rule INTEGER NOT NULL, name BLOB NOT NULL,
                dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
                mtime INTEGER NOT NULL, ctime INTEGER NOT NULL,
                PRIMARY KEY (site, rule, name));",
        )
        .map_err(sql)?;
        Ok(Shipped {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens the index at `path` if there is one (read by `mirror-ctl verify`; nothing is
    /// made).
    pub fn open_existing(path: &Path) -> Result<Option<Shipped>, ShippedError> {
        if !path.exists() {
            return Ok(None);
        }
        Shipped::open(path).map(Some)
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> ShippedError + '_ {
        move |err| ShippedError::Sqlite {
            path: self.path.clone(),
            err,
        }
    }

    /// Runs `insert` once per item of `items` (its parameters), in one transaction.
    fn insert_all<T>(
        &mut self,
        insert: &str,
        items: &[T],
        params_of: impl Fn(&T) -> Vec<rusqlite::types::Value>,
    ) -> Result<(), ShippedError> {
        if items.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let sql = move |err| ShippedError::Sqlite {
            path: path.clone(),
            err,
        };
        let tx = self.conn.transaction().map_err(&sql)?;
        {
            let mut st = tx.prepare_cached(insert).map_err(&sql)?;
            for it in items {
                st.execute(rusqlite::params_from_iter(params_of(it)))
                    .map_err(&sql)?;
            }
        }
        tx.commit().map_err(&sql)
    }

    /// Records blocks `site` acknowledged (a later write of a block replaces its row).
    pub fn record(&mut self, site: &str, rows: &[Row]) -> Result<(), ShippedError> {
        use rusqlite::types::Value;
        self.insert_all(
            "INSERT OR REPLACE INTO blocks2 (site, dev, ino, block, seg, off, k, sum, pname, poff)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            rows,
            |r| {
                let opt = |v: Option<u64>| v.map_or(Value::Null, |x| Value::Integer(x as i64));
                vec![
                    Value::Text(site.to_string()),
                    Value::Integer(r.file.0 as i64),
                    Value::Integer(r.file.1 as i64),
                    Value::Integer(r.block as i64),
                    Value::Integer(r.pos.segment as i64),
                    Value::Integer(r.pos.offset as i64),
                    Value::Integer(r.k as i64),
                    Value::Blob(r.sum.to_vec()),
                    opt(r.part.map(|p| p.0)),
                    opt(r.part.map(|p| p.1)),
                ]
            },
        )
    }

    /// Records the state of files whose copies `site` acknowledged (rule CRC, full name).
    pub fn record_files(
        &mut self,
        site: &str,
        files: &[(u32, Vec<u8>, FileState)],
    ) -> Result<(), ShippedError> {
        use rusqlite::types::Value;
        self.insert_all(
            "INSERT OR REPLACE INTO files (site, rule, name, dev, ino, size, mtime, ctime)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            files,
            |(rule, name, f)| {
                vec![
                    Value::Text(site.to_string()),
                    Value::Integer(i64::from(*rule)),
                    Value::Blob(name.clone()),
                    Value::Integer(f.file.0 as i64),
                    Value::Integer(f.file.1 as i64),
                    Value::Integer(f.size as i64),
                    Value::Integer(f.mtime_ns),
                    Value::Integer(f.ctime_ns),
                ]
            },
        )
    }

    /// The state of file `name` (rule `rule`) when its last acknowledged copy to `site`
    /// read it.
    pub fn file_state(
        &self,
        site: &str,
        rule: u32,
        name: &[u8],
    ) -> Result<Option<FileState>, ShippedError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT dev, ino, size, mtime, ctime FROM files WHERE site = ?1 AND rule = ?2 AND name = ?3",
            )
            .map_err(self.sql())?;
        let mut rows = st
            .query_map(params![site, rule as i64, name], |r| {
                Ok(FileState {
                    file: (r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64),
                    size: r.get::<_, i64>(2)? as u64,
                    mtime_ns: r.get(3)?,
                    ctime_ns: r.get(4)?,
                })
            })
            .map_err(self.sql())?;
        rows.next().transpose().map_err(self.sql())
    }

    /// What `site` holds of file `file`, by block.
    pub fn lookup(&self, site: &str, file: (u64, u64)) -> Result<Known, ShippedError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT block, seg, off, k, sum, pname, poff FROM blocks2 WHERE site = ?1 AND dev = ?2 AND ino = ?3",
            )
            .map_err(self.sql())?;
        let rows = st
            .query_map(params![site, file.0 as i64, file.1 as i64], |r| {
                let sum: Vec<u8> = r.get(4)?;
                let pname: Option<i64> = r.get(5)?;
                let poff: Option<i64> = r.get(6)?;
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    Position::new(r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64),
                    pname.zip(poff).map(|(n, o)| (n as u64, o as u64)),
                    r.get::<_, i64>(3)? as u64,
                    sum,
                ))
            })
            .map_err(self.sql())?;
        let mut out = Known::new();
        for row in rows {
            let (block, pos, part, k, sum) = row.map_err(self.sql())?;
            if let Ok(sum) = <Sum>::try_from(sum.as_slice()) {
                out.insert(block, (pos, part, k, sum));
            }
        }
        Ok(out)
    }

    /// Forgets what `site` no longer holds (its writes before `from`).
    pub fn prune(&mut self, site: &str, from: Position) -> Result<(), ShippedError> {
        self.conn
            .execute(
                "DELETE FROM blocks2 WHERE site = ?1 AND (seg < ?2 OR (seg = ?2 AND off < ?3))",
                params![site, from.segment as i64, from.offset as i64],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Forgets the oldest rows of `site` beyond [`MAX_ROWS`] (a count of its rows: not for
    /// every prune).
    pub fn cap(&mut self, site: &str) -> Result<(), ShippedError> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM blocks2 WHERE site = ?1",
                params![site],
                |r| r.get(0),
            )
            .map_err(self.sql())?;
        if n > MAX_ROWS {
            self.conn
                .execute(
                    "DELETE FROM blocks2 WHERE rowid IN (SELECT rowid FROM blocks2 WHERE site = ?1
                     ORDER BY seg, off LIMIT ?2)",
                    params![site, n - MAX_ROWS],
                )
                .map_err(self.sql())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(block: u64, seg: u64, k: u64) -> Row {
        Row {
            file: (1, 2),
            block,
            pos: Position::new(seg, 100),
            part: None,
            k,
            sum: [block as u8; 16],
        }
    }

    #[test]
    fn rows_are_found_by_file_replaced_and_pruned() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Shipped::open(&d.path().join("shipped.db")).unwrap();
        s.record("a", &[row(0, 1, 0), row(1, 1, 1), row(2, 2, 0)])
            .unwrap();
        s.record("a", &[row(1, 3, 5)]).unwrap();
        let k = s.lookup("a", (1, 2)).unwrap();
        assert_eq!(k.len(), 3);
        assert_eq!(k[&1], (Position::new(3, 100), None, 5, [1u8; 16]));
        assert!(s.lookup("b", (1, 2)).unwrap().is_empty());
        assert!(s.lookup("a", (1, 3)).unwrap().is_empty());
        s.prune("a", Position::new(2, 0)).unwrap();
        s.cap("a").unwrap();
        let k = s.lookup("a", (1, 2)).unwrap();
        assert_eq!(
            k.keys().copied().collect::<std::collections::BTreeSet<_>>(),
            [1, 2].into()
        );
        let f = FileState {
            file: (1, 2),
            size: 3,
            mtime_ns: 4,
            ctime_ns: 5,
        };
        s.record_files("a", &[(7, b"/p/x".to_vec(), f)]).unwrap();
        assert_eq!(s.file_state("a", 7, b"/p/x").unwrap(), Some(f));
        assert_eq!(s.file_state("a", 8, b"/p/x").unwrap(), None);
        assert_eq!(s.file_state("b", 7, b"/p/x").unwrap(), None);
        let m = std::fs::metadata(d.path().join("shipped.db")).unwrap();
        // A damaged index is moved aside and made anew.
        let bad = d.path().join("bad.db");
        std::fs::write(&bad, vec![0x5au8; 100_000]).unwrap();
        let remade = open_or_remake(&bad).expect("made anew");
        assert!(remade.lookup("a", (1, 2)).unwrap().is_empty());
        assert!(d.path().join("bad.db.damaged").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
}
