//! mirror on the power-loss layer: a smoke test that a mirror state directory works on the
//! layer and that what an application fsync'd through mirrorfs is still in the journal after a
//! power loss of the state directory's disk. (The full power-loss suite of issue 12 builds on
//! the same driver.)

use std::fs::File;
use std::io::Write;

use mirror_tests::{journal_entries, rel, Local, LossyFs};
use mirrorfs::entry::Command;

#[test]
fn an_fsynced_write_is_in_the_journal_after_a_power_loss_of_the_state_directory() {
    fsynced_write_survives(false);
}

/// The same, with the journal directory's name made durable by the test (what mirrorfs should
/// do): then the rest holds, the segment and the fsync'd record survive.
#[test]
fn an_fsynced_write_is_in_the_journal_after_a_power_loss_once_the_journal_directory_is_durable() {
    fsynced_write_survives(true);
}

fn fsynced_write_survives(fsync_state_dir: bool) {
    let local = Local::new();
    // The state directory on the layer, before anything uses it (what is in it is durable).
    let mut state = LossyFs::over(&local.state);
    let pattern = format!("{}/", local.dir.display());
    local.add_rule(&pattern, "127.0.0.1:9", "proj", &[]);
    let mut m = local.mount(&[]);
    if fsync_state_dir {
        File::open(&local.state).unwrap().sync_all().unwrap();
    }
    let mut f = File::create(local.path("ledger.txt")).unwrap();
    f.write_all(b"record 1\n").unwrap();
    f.sync_all().unwrap();
    let before = journal_entries(&local.state.join("journal"));
    assert!(
        before
            .iter()
            .any(|e| e.command == Command::Write && e.data == b"record 1\n"),
        "the write is in the journal before the loss"
    );
    let listed_before = listing(&local.state);
    // The machine loses power: the state disk drops what was not durable, and mirrorfs dies
    // with it.
    let report = state.power_loss(false);
    m.kill9();
    drop(m);
    drop(f);
    state.remount();
    let dir = local.state.join("journal");
    assert!(
        dir.is_dir(),
        "the journal directory is gone after the power loss ({report}); the state directory \
         held {listed_before:?}, now {:?}",
        listing(&local.state)
    );
    let after = journal_entries(&dir);
    let writes: Vec<(String, Vec<u8>)> = after
        .iter()
        .filter(|e| e.command == Command::Write)
        .map(|e| (rel(&local.dir, &e.name), e.data.clone()))
        .collect();
    assert!(
        writes.contains(&("ledger.txt".to_string(), b"record 1\n".to_vec())),
        "the fsync'd write is not in the journal after the power loss ({report}); writes \
         found: {writes:?}"
    );
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The project itself on the layer, mirrorfs stacked on it (as the power-loss suite will put
/// it): mirrorfs passes the application's fsyncs down, so what was fsync'd through it is in
/// the file after a power loss, and what was not is gone. Shows the driver's order: kill
/// and detach mirrorfs, then remount the layer.
#[test]
fn a_project_on_the_layer_under_mirrorfs_keeps_what_was_fsynced_through_mirrorfs() {
    let local = Local::new();
    std::fs::write(local.path("old.txt"), b"old").unwrap();
    let mut proj = LossyFs::over(&local.dir);
    let pattern = format!("{}/", local.dir.display());
    local.add_rule(&pattern, "127.0.0.1:9", "proj", &[]);
    let mut m = local.mount(&[]);
    let mut f = File::create(local.path("synced.txt")).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_all().unwrap();
    File::open(&local.dir).unwrap().sync_all().unwrap();
    std::fs::write(local.path("unsynced.txt"), b"unsynced").unwrap();
    let mut g = std::fs::OpenOptions::new()
        .append(true)
        .open(local.path("old.txt"))
        .unwrap();
    g.write_all(b" and appended").unwrap();
    proj.power_loss(false);
    m.kill9();
    drop(m);
    drop((f, g));
    proj.remount();
    assert_eq!(listing(&local.dir), vec!["old.txt", "synced.txt"]);
    assert_eq!(std::fs::read(local.path("synced.txt")).unwrap(), b"synced");
    assert_eq!(std::fs::read(local.path("old.txt")).unwrap(), b"old");
}
