//! Reader tests: tailing a writer that rotates (the time-of-check race of issue 12), and
//! skipping damage (issue 12 item 7).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::{Journal, JournalConfig};
use super::*;
use crate::entry::Command;

fn entry(i: u64, data_len: usize) -> Entry {
    Entry {
        command: Command::Write,
        rule_crc: 0x5a5a,
        name: format!("/p/a/file-{i}").into_bytes(),
        aux: Vec::new(),
        offset: i,
        size: data_len as u64,
        time_ns: i,
        data: vec![i as u8; data_len],
    }
}

/// A directory on a memory file system when there is one (fsync costs nothing there, so
/// rotations are fast and the race windows are hit often), else a plain temporary one.
fn fast_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Issue 12: a reader tailing a writer that rotates every few records must never report a
/// healthy segment as corrupt (it read the header before the writer sealed the segment, then
/// saw the next one), and must return every record once, in order.
#[test]
fn a_reader_racing_a_rotating_writer_sees_every_record_in_order_and_no_damage() {
    const N: u64 = 8_000;
    let dir = fast_dir();
    let j = Arc::new(Journal::open(dir.path(), JournalConfig { segment_size: 2048 }).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let w = {
        let (j, done) = (j.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 0..N {
                j.append(&entry(i, (i % 7 * 40) as usize).as_ref()).unwrap();
            }
            done.store(true, Ordering::Relaxed);
        })
    };
    let mut r = JournalReader::open(dir.path(), Position::START).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = 0u64;
    let mut last = Position::START;
    while got < N {
        assert!(Instant::now() < deadline, "reader saw only {got} of {N}");
        match r.next_entry() {
            Ok(Some((p, e))) => {
                assert!(p > last, "{p} after {last}");
                assert_eq!(
                    e,
                    entry(got, (got % 7 * 40) as usize),
                    "record {got} at {p}"
                );
                last = p;
                got += 1;
            }
            // Spin while the writer runs, to race it as often as possible.
            Ok(None) if done.load(Ordering::Relaxed) => r.wait(Duration::from_millis(1)),
            Ok(None) => std::thread::yield_now(),
            Err(e) => panic!("after {got} records: {e}"),
        }
    }
    w.join().unwrap();
    assert!(list_segments(dir.path()).unwrap().len() > 100);
}

/// Runs `f` at the reader's race points (in this thread) until the guard is dropped.
struct Race;

impl Race {
    fn new(f: impl FnMut(RacePoint) + 'static) -> Race {
        RACE.with(|r| *r.borrow_mut() = Some(Box::new(f)));
        Race
    }
}

impl Drop for Race {
    fn drop(&mut self) {
        RACE.with(|r| *r.borrow_mut() = None);
    }
}

/// Issue 12, made deterministic: the writer seals the segment and starts the next one between
/// the reader's two looks (for a later segment, at the header). That is no damage: the reader
/// goes on into the next segment.
#[test]
fn a_rotation_between_the_readers_two_looks_is_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let j = Arc::new(
        Journal::open(
            dir.path(),
            JournalConfig {
                segment_size: 1 << 20,
            },
        )
        .unwrap(),
    );
    for i in 0..3 {
        j.append(&entry(i, 10).as_ref()).unwrap();
    }
    let mut r = JournalReader::open(dir.path(), Position::START).unwrap();
    for i in 0..3 {
        assert_eq!(r.next_entry().unwrap().unwrap().1, entry(i, 10));
    }
    let rotated = Arc::new(AtomicBool::new(false));
    let race = {
        let (j, rotated) = (j.clone(), rotated.clone());
        Race::new(move |p| {
            if p == RacePoint::BetweenLooks && !rotated.swap(true, Ordering::Relaxed) {
                j.rotate_now().unwrap();
            }
        })
    };
    // At the end of segment 1 ("truncated: 52 bytes needed, 0 present"), the segment is
    // sealed mid-look.
    let got = r.next_entry();
    drop(race);
    assert!(
        rotated.load(Ordering::Relaxed),
        "the race point was reached"
    );
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_eq!(r.position(), Position::new(2, SEGMENT_HEADER_LEN));
    let p = j.append(&entry(3, 10).as_ref()).unwrap();
    assert_eq!(r.next_entry().unwrap(), Some((p, entry(3, 10))));
}

fn write_at(path: &Path, offset: u64, b: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.write_all_at(b, offset).unwrap();
}

/// A record read while it was still being written (short), then completed and its segment
/// sealed before the reader looked at the header: read again, not reported as damage.
#[test]
fn a_record_completed_and_sealed_after_a_short_read_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let seg1 = segment_path(dir.path(), 1);
    let a = format::encode_record(&entry(0, 10).as_ref()).unwrap();
    let b = format::encode_record(&entry(1, 3000).as_ref()).unwrap();
    let header = SegmentHeader::new(1);
    write_at(&seg1, 0, &header.encode());
    write_at(&seg1, SEGMENT_HEADER_LEN, &a);
    let b_at = SEGMENT_HEADER_LEN + a.len() as u64;
    write_at(&seg1, b_at, &b[..b.len() / 2]);
    let mut r = JournalReader::open(dir.path(), Position::START).unwrap();
    assert_eq!(r.next_entry().unwrap().unwrap().1, entry(0, 10));
    let dirp = dir.path().to_path_buf();
    let (b2, done) = (b.clone(), Arc::new(AtomicBool::new(false)));
    let race = {
        let done = done.clone();
        Race::new(move |p| {
            if p == RacePoint::Stuck && !done.swap(true, Ordering::Relaxed) {
                // The writer finishes the record, seals the segment, starts the next.
                let seg1 = segment_path(&dirp, 1);
                write_at(&seg1, b_at, &b2);
                let idx_at = b_at + b2.len() as u64;
                let idx = format::encode_index(&[SEGMENT_HEADER_LEN, b_at]);
                write_at(&seg1, idx_at, &idx);
                let mut h = header;
                h.sealed = true;
                h.index_offset = idx_at;
                h.total_size = idx_at + idx.len() as u64;
                h.record_count = 2;
                write_at(&seg1, 0, &h.encode());
                write_at(&segment_path(&dirp, 2), 0, &SegmentHeader::new(2).encode());
            }
        })
    };
    let got = r.next_entry();
    drop(race);
    assert!(done.load(Ordering::Relaxed));
    assert_eq!(got.unwrap(), Some((Position::new(1, b_at), entry(1, 3000))));
    assert!(r.next_entry().unwrap().is_none());
    assert_eq!(r.position(), Position::new(2, SEGMENT_HEADER_LEN));
}

fn flip(path: &Path, offset: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[offset as usize] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

/// Reads everything from the start, skipping damage; the entries and what was skipped.
fn read_skipping(dir: &Path) -> (Vec<(Position, Entry)>, Vec<Skipped>) {
    let mut r = JournalReader::open(dir, Position::START).unwrap();
    let (mut got, mut skipped) = (Vec::new(), Vec::new());
    for _ in 0..10_000 {
        match r.next_entry() {
            Ok(Some(x)) => got.push(x),
            Ok(None) => return (got, skipped),
            Err(JournalError::Corrupt {
                segment, offset, ..
            }) => {
                assert_eq!(Position::new(segment, offset).segment, r.position().segment);
                skipped.push(r.skip_damage().unwrap());
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no end");
}

/// Three segments (the last one open), five records each.
fn three_segments(dir: &Path) -> Vec<Position> {
    let j = Journal::open(
        dir,
        JournalConfig {
            segment_size: 1 << 20,
        },
    )
    .unwrap();
    let mut pos = Vec::new();
    for i in 0..15 {
        if i > 0 && i % 5 == 0 {
            j.rotate_now().unwrap();
        }
        pos.push(j.append(&entry(i, 100).as_ref()).unwrap());
    }
    pos
}

/// Damage to a record of a sealed segment (in its data, its length field, or two records in
/// a row): the index leads to the next record that verifies; the names are guessed; every
/// other record is read, in order.
#[test]
fn damage_in_a_sealed_segment_is_skipped_by_its_index() {
    // (records damaged, byte offset within the record)
    // (records damaged, byte offset within the record: 80 is in the data, after the name)
    for (bad, field) in [
        (vec![7usize], 80u64),
        (vec![7], 5),
        (vec![6, 7], 30),
        (vec![9], 80),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let pos = three_segments(dir.path());
        for &b in &bad {
            flip(
                &segment_path(dir.path(), pos[b].segment),
                pos[b].offset + field,
            );
        }
        let (got, skipped) = read_skipping(dir.path());
        let want: Vec<Position> = (0..15)
            .filter(|i| !bad.contains(i))
            .map(|i| pos[i])
            .collect();
        assert_eq!(
            got.iter().map(|x| x.0).collect::<Vec<_>>(),
            want,
            "{bad:?} +{field}"
        );
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        let s = &skipped[0];
        assert_eq!(s.from, pos[bad[0]]);
        let after = bad.last().unwrap() + 1;
        let to = if after % 5 == 0 {
            Position::new(pos[after].segment, SEGMENT_HEADER_LEN)
        } else {
            pos[after]
        };
        assert_eq!(s.to, to);
        for &b in &bad {
            let name = format!("/p/a/file-{b}").into_bytes();
            // The fixed part and the name are intact: the name is guessed right.
            if field != 5 {
                assert!(
                    s.guessed.iter().any(|g| g.1 == name),
                    "{bad:?} +{field}: {s:?}"
                );
            }
        }
    }
}

/// Damage in the newest, open segment with valid records after it (its length field broken,
/// so only a scan finds the next record).
#[test]
fn damage_in_the_open_segment_is_skipped_to_the_next_valid_record() {
    let dir = tempfile::tempdir().unwrap();
    let pos = three_segments(dir.path());
    flip(
        &segment_path(dir.path(), pos[12].segment),
        pos[12].offset + 5,
    );
    let (got, skipped) = read_skipping(dir.path());
    assert_eq!(got.len(), 14);
    assert_eq!((skipped[0].from, skipped[0].to), (pos[12], pos[13]));
    // Damage at the very end of the open segment is a record being written: wait, no error.
    let dir = tempfile::tempdir().unwrap();
    let pos = three_segments(dir.path());
    flip(
        &segment_path(dir.path(), pos[14].segment),
        pos[14].offset + 5,
    );
    let mut r = JournalReader::open(dir.path(), pos[13]).unwrap();
    assert_eq!(r.next_entry().unwrap().unwrap().0, pos[13]);
    assert!(r.next_entry().unwrap().is_none());
    assert!(r.skip_damage().is_err(), "nothing to skip to yet");
    assert_eq!(r.position(), pos[14]);
}

/// A damaged header of an older segment hides where it ends: the rest of it is passed over,
/// with the names of its records guessed (they are intact here), and reading goes on in the
/// next segment.
#[test]
fn a_damaged_header_passes_over_the_rest_of_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let pos = three_segments(dir.path());
    flip(&segment_path(dir.path(), 2), 20);
    let (got, skipped) = read_skipping(dir.path());
    let want: Vec<Position> = pos.iter().copied().filter(|p| p.segment != 2).collect();
    assert_eq!(got.iter().map(|x| x.0).collect::<Vec<_>>(), want);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].to, Position::new(3, SEGMENT_HEADER_LEN));
    let names: Vec<&[u8]> = skipped[0].guessed.iter().map(|g| g.1.as_slice()).collect();
    for i in 5..10 {
        assert!(
            names.contains(&format!("/p/a/file-{i}").as_bytes()),
            "{names:?}"
        );
    }
}

/// The next segment is created (and even sealed, and another started) between the reader's
/// failed open and its listing of the directory: that is no gap.
#[test]
fn a_segment_created_between_open_and_listing_is_not_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = JournalConfig {
        segment_size: 1 << 20,
    };
    let j = Journal::open(dir.path(), cfg).unwrap();
    let a = j.append(&entry(0, 10).as_ref()).unwrap();
    j.rotate_now().unwrap();
    drop(j);
    std::fs::remove_file(segment_path(dir.path(), 2)).unwrap();
    let mut r = JournalReader::open(dir.path(), Position::START).unwrap();
    assert_eq!(r.next_entry().unwrap().unwrap().0, a);
    assert!(r.next_entry().unwrap().is_none());
    assert_eq!(r.position(), Position::new(2, SEGMENT_HEADER_LEN));
    let dirp = dir.path().to_path_buf();
    let written = Arc::new(std::sync::Mutex::new(Vec::new()));
    let race = {
        let written = written.clone();
        let mut j = None;
        Race::new(move |p| {
            if p == RacePoint::Missing && j.is_none() {
                let jj = Journal::open(&dirp, cfg).unwrap();
                written
                    .lock()
                    .unwrap()
                    .push(jj.append(&entry(1, 10).as_ref()).unwrap());
                jj.rotate_now().unwrap();
                written
                    .lock()
                    .unwrap()
                    .push(jj.append(&entry(2, 10).as_ref()).unwrap());
                j = Some(jj);
            }
        })
    };
    let mut got = Vec::new();
    for _ in 0..10 {
        match r.next_entry() {
            Ok(Some((p, _))) => got.push(p),
            Ok(None) => {}
            Err(e) => panic!("{e}"),
        }
    }
    drop(race);
    assert_eq!(got, *written.lock().unwrap());
    assert_eq!(got.len(), 2);
}
