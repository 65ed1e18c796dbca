//! SQLite on the power-loss layer, as a sanity check that the layer models fsync well enough
//! for real software: every transaction SQLite reports committed survives a power loss (torn
//! or not) in the modes SQLite documents as durable, WAL with `synchronous=FULL` and a
//! rollback journal with `synchronous=EXTRA`; and a rollback journal with `synchronous=FULL`
//! loses the last commit, as SQLite documents (its journal's deletion is not made durable:
//! "EXTRA provides additional durability if the commit is followed closely by a power loss").

use std::fs;
use std::path::{Path, PathBuf};

use mirror_tests::{LossyFs, LossyOpts};
use rusqlite::Connection;

struct Db {
    layer: LossyFs,
    path: PathBuf,
    _tmp: tempfile::TempDir,
}

fn open(path: &Path, mode: &str, sync: &str) -> Connection {
    let c = Connection::open(path).unwrap();
    let got: String = c
        .pragma_update_and_check(None, "journal_mode", mode, |r| r.get(0))
        .unwrap();
    assert_eq!(got.to_lowercase(), mode);
    c.execute_batch(&format!(
        "PRAGMA synchronous={sync}; PRAGMA cache_size=8; PRAGMA wal_autocheckpoint=16;"
    ))
    .unwrap();
    c
}

fn setup(mode: &str, sync: &str) -> Db {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    fs::create_dir(root.join("b")).unwrap();
    fs::create_dir(root.join("m")).unwrap();
    let layer = LossyFs::mount(&root.join("b"), &root.join("m"), LossyOpts::default());
    let path = root.join("m/test.db");
    let c = open(&path, mode, sync);
    c.execute_batch("CREATE TABLE t(round INTEGER, i INTEGER, payload TEXT)")
        .unwrap();
    drop(c);
    Db {
        layer,
        path,
        _tmp: tmp,
    }
}

fn payload(round: i64, i: i64) -> String {
    format!("{round}:{i}:{}", "p".repeat(900))
}

/// The rows found after a power loss (after checking the database's integrity).
fn rows(path: &Path, mode: &str, sync: &str) -> Rows {
    let c = open(path, mode, sync);
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let mut st = c
        .prepare("SELECT round, i, payload FROM t ORDER BY round, i")
        .unwrap();
    let v = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect::<Vec<(i64, i64, String)>>();
    for (round, i, p) in &v {
        assert_eq!(*p, payload(*round, *i), "row ({round}, {i}) is damaged");
    }
    v.into_iter().map(|(r, i, _)| (r, i)).collect()
}

/// Rounds of committed transactions, each ended by a power loss in the middle of a large
/// uncommitted one (torn every other round); returns what was committed and what was found
/// after each loss.
/// Rows as (round, i).
type Rows = Vec<(i64, i64)>;

fn rounds(db: &mut Db, mode: &str, sync: &str) -> Vec<(Rows, Rows)> {
    let mut committed = Vec::new();
    let mut out = Vec::new();
    for round in 0..5i64 {
        let c = open(&db.path, mode, sync);
        for i in 0..12i64 {
            c.execute_batch("BEGIN").unwrap();
            c.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3)",
                rusqlite::params![round, i, payload(round, i)],
            )
            .unwrap();
            c.execute_batch("COMMIT").unwrap();
            committed.push((round, i));
        }
        // In flight when the power goes: big enough to spill out of the 8-page cache.
        c.execute_batch("BEGIN").unwrap();
        for i in 1000..1060i64 {
            c.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3)",
                rusqlite::params![round, i, payload(round, i)],
            )
            .unwrap();
        }
        db.layer.power_loss(round % 2 == 1);
        // The process dies with the power: it closes nothing.
        std::mem::forget(c);
        db.layer.remount();
        out.push((committed.clone(), rows(&db.path, mode, sync)));
    }
    out
}

#[test]
fn sqlite_in_wal_mode_with_synchronous_full_keeps_every_committed_transaction() {
    let mut db = setup("wal", "FULL");
    for (n, (committed, found)) in rounds(&mut db, "wal", "FULL").into_iter().enumerate() {
        assert_eq!(found, committed, "after power loss {n}");
    }
}

#[test]
fn sqlite_with_a_rollback_journal_and_synchronous_extra_keeps_every_committed_transaction() {
    let mut db = setup("delete", "EXTRA");
    for (n, (committed, found)) in rounds(&mut db, "delete", "EXTRA").into_iter().enumerate() {
        assert_eq!(found, committed, "after power loss {n}");
    }
}

#[test]
fn sqlite_with_a_rollback_journal_and_synchronous_full_loses_the_last_commit_as_documented() {
    let mut db = setup("delete", "FULL");
    let c = open(&db.path, "delete", "FULL");
    for i in 0..5i64 {
        c.execute(
            "INSERT INTO t VALUES (0, ?1, ?2)",
            rusqlite::params![i, payload(0, i)],
        )
        .unwrap();
    }
    // Committed, and the power goes right after: the journal's deletion was never made
    // durable, so it comes back hot and SQLite rolls the last transaction back.
    db.layer.power_loss(false);
    std::mem::forget(c);
    db.layer.remount();
    assert_eq!(
        rows(&db.path, "delete", "FULL"),
        (0..4).map(|i| (0, i)).collect::<Vec<_>>()
    );
}
