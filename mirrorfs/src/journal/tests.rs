//! Journal tests: round trips across rotations, recovery of torn tails, detection of damage,
//! group commit and tailing.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::format::{SegmentHeader, SEGMENT_HEADER_LEN};
use super::*;
use crate::entry::{Command, Entry, EntryRef};

/// Every command but the journal's own watermark (which a rotation repeats, see
/// `watermarks_survive_rotation_and_reopening`).
fn command(i: u64) -> Command {
    let all: Vec<Command> = Command::ALL
        .into_iter()
        .filter(|c| *c != Command::Mark)
        .collect();
    all[(i as usize) % all.len()]
}

fn entry(i: u64, data_len: usize) -> Entry {
    Entry {
        command: command(i),
        rule_crc: i as u32 ^ 0x5a5a,
        name: format!("/p/a/file-{i}").into_bytes(),
        aux: if i % 3 == 0 {
            format!("/p/a/other-{i}").into_bytes()
        } else {
            Vec::new()
        },
        offset: i * 4096,
        size: data_len as u64,
        time_ns: 1_000_000 + i,
        data: (0..data_len).map(|b| (b as u64 * 31 + i) as u8).collect(),
    }
}

fn read_all(dir: &Path) -> Result<Vec<(Position, Entry)>, JournalError> {
    let mut r = JournalReader::open(dir, Position::START)?;
    let mut out = Vec::new();
    while let Some(x) = r.next_entry()? {
        out.push(x);
    }
    Ok(out)
}

fn cfg(segment_size: u64) -> JournalConfig {
    JournalConfig { segment_size }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Random entry sequences come back exactly, in order, across rotations and reopenings.
    #[test]
    fn round_trip_across_rotations(
        sizes in proptest::collection::vec(0usize..3000, 1..80),
        segment_size in 200u64..8000,
        reopen_every in 1usize..40,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), cfg(segment_size)).unwrap();
        let mut written = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            if i % reopen_every == reopen_every - 1 {
                drop(j);
                j = Journal::open(dir.path(), cfg(segment_size)).unwrap();
            }
            let e = entry(i as u64, n);
            let pos = j.append(&e.as_ref()).unwrap();
            written.push((pos, e));
        }
        j.sync().unwrap();
        let read = read_all(dir.path()).unwrap();
        prop_assert_eq!(read.len(), written.len());
        for (r, w) in read.iter().zip(&written) {
            prop_assert_eq!(r, w);
        }
        // Positions are strictly increasing.
        for w in read.windows(2) {
            prop_assert!(w[0].0 < w[1].0);
        }
        // Rotation happened whenever entries outgrew a segment (a lone entry always goes into
        // the empty segment, whatever its size: nothing outgrows it).
        let total: usize = sizes.iter().map(|n| n + 100).sum();
        if sizes.len() > 1 && total as u64 > 2 * segment_size {
            prop_assert!(list_segments(dir.path()).unwrap().len() > 1);
        }
    }
}

/// Cutting the newest segment at every byte of its last record loses that record only; the
/// journal seals the segment after the last complete record and takes new appends in the next
/// segment, so the lost record's position never names another one (a reader may have seen it).
#[test]
fn torn_tail_at_every_offset_of_the_last_record() {
    let src = tempfile::tempdir().unwrap();
    let j = Journal::open(src.path(), cfg(1 << 20)).unwrap();
    let entries: Vec<Entry> = (0..5).map(|i| entry(i, 100 + i as usize * 7)).collect();
    let mut positions = Vec::new();
    for e in &entries {
        positions.push(j.append(&e.as_ref()).unwrap());
    }
    let end = j.end();
    drop(j);
    let last = *positions.last().unwrap();
    let seg_file = segment_path(src.path(), last.segment);
    let full = fs::read(&seg_file).unwrap();
    assert_eq!(full.len() as u64, end.offset);
    for cut in last.offset..end.offset {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), last.segment);
        fs::write(&path, &full[..cut as usize]).unwrap();
        let j =
            Journal::open(dir.path(), cfg(1 << 20)).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let next = Position::new(last.segment + 1, SEGMENT_HEADER_LEN);
        assert_eq!(j.end(), next, "cut at {cut}");
        let extra = entry(99, 10);
        assert_eq!(j.append(&extra.as_ref()).unwrap(), next);
        let h = SegmentHeader::decode(&fs::read(&path).unwrap()).unwrap();
        assert!(
            h.sealed && h.index_offset == last.offset,
            "cut at {cut}: {h:?}"
        );
        drop(j);
        let got = read_all(dir.path()).unwrap();
        let want: Vec<&Entry> = entries[..4].iter().chain([&extra]).collect();
        assert_eq!(
            got.iter().map(|(_, e)| e).collect::<Vec<_>>(),
            want,
            "cut at {cut}"
        );
    }
}

/// Zeroes after the last record (a file extended but not written before a crash) are a torn tail.
#[test]
fn zero_filled_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), cfg(1 << 20)).unwrap();
    j.append(&entry(1, 10).as_ref()).unwrap();
    let end = j.end();
    drop(j);
    let path = segment_path(dir.path(), end.segment);
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(end.offset + 8192).unwrap();
    drop(f);
    let j = Journal::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(j.end(), Position::new(end.segment + 1, SEGMENT_HEADER_LEN));
    // Sealed where its records end: the zeroes are gone, the index follows the record.
    let h = SegmentHeader::decode(&fs::read(&path).unwrap()).unwrap();
    assert!(h.sealed && h.index_offset == end.offset, "{h:?}");
    assert_eq!(fs::metadata(&path).unwrap().len(), h.total_size);
}

fn flip_bit(path: &Path, offset: u64) {
    let mut b = fs::read(path).unwrap();
    b[offset as usize] ^= 0x10;
    fs::write(path, b).unwrap();
}

/// A flipped bit in a record of the newest segment, with valid records after it: readers
/// return the records before it, then report it with segment and offset; the writer seals the
/// segment as it is and goes on in the next one.
#[test]
fn flipped_bit_in_a_middle_record_is_reported() {
    for field_offset in [0u64, 5, 13, 30, 60] {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), cfg(1 << 20)).unwrap();
        let pos: Vec<Position> = (0..5)
            .map(|i| j.append(&entry(i, 50).as_ref()).unwrap())
            .collect();
        drop(j);
        let bad = pos[2];
        flip_bit(
            &segment_path(dir.path(), bad.segment),
            bad.offset + field_offset,
        );
        // The writer opens anyway (a damaged newest segment once kept mirrorfs from ever
        // mounting again): it seals the segment as it is and goes on in the next one.
        let j = Journal::open(dir.path(), cfg(1 << 20)).unwrap();
        let next = j.append(&entry(9, 50).as_ref()).unwrap();
        assert_eq!(next.segment, bad.segment + 1, "flip at +{field_offset}");
        drop(j);
        let mut r = JournalReader::open(dir.path(), Position::START).unwrap();
        assert_eq!(r.next_entry().unwrap().unwrap().0, pos[0]);
        assert_eq!(r.next_entry().unwrap().unwrap().0, pos[1]);
        match r.next_entry() {
            Err(JournalError::Corrupt {
                segment, offset, ..
            }) => assert_eq!((segment, offset), (bad.segment, bad.offset)),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        let msg = r.next_entry().unwrap_err().to_string();
        assert!(msg.contains(&format!("offset {}", bad.offset)), "{msg}");
    }
}

/// Damage in an older, sealed segment is an error for readers, never a skip.
#[test]
fn damage_in_a_sealed_segment_stops_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), cfg(1 << 20)).unwrap();
    let a = j.append(&entry(0, 10).as_ref()).unwrap();
    let b = j.append(&entry(1, 10).as_ref()).unwrap();
    j.rotate_now().unwrap();
    j.append(&entry(2, 10).as_ref()).unwrap();
    drop(j);
    flip_bit(&segment_path(dir.path(), b.segment), b.offset + 60);
    let mut r = JournalReader::open(dir.path(), Position::START).unwrap();
    assert_eq!(r.next_entry().unwrap().unwrap().0, a);
    assert!(matches!(
        r.next_entry(),
        Err(JournalError::Corrupt { segment, offset, .. }) if segment == b.segment && offset == b.offset
    ));
    // The writer only checks older segments' headers; it opens.
    Journal::open(dir.path(), cfg(1 << 20)).unwrap();
}

#[test]
fn a_sealed_newest_segment_starts_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), cfg(1 << 20)).unwrap();
    j.append(&entry(0, 10).as_ref()).unwrap();
    j.rotate_now().unwrap();
    drop(j);
    // Simulate a crash after sealing segment 2's predecessor but before creating segment 2.
    fs::remove_file(segment_path(dir.path(), 2)).unwrap();
    let j = Journal::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(j.end(), Position::new(2, SEGMENT_HEADER_LEN));
    let p = j.append(&entry(1, 10).as_ref()).unwrap();
    assert_eq!(p.segment, 2);
    assert_eq!(read_all(dir.path()).unwrap().len(), 2);
}

#[test]
fn second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _j = Journal::open(dir.path(), cfg(1 << 20)).unwrap();
    let e = Journal::open(dir.path(), cfg(1 << 20)).unwrap_err();
    assert!(e.to_string().contains("locked"), "{e}");
}

/// Many threads appending and syncing: every entry is read back once, and syncs overlap.
#[test]
fn concurrent_appends_with_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let j = Arc::new(Journal::open(dir.path(), cfg(64 << 10)).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    j.append(&entry(t * 1000 + i, 300).as_ref()).unwrap();
                    if i % 10 == 0 {
                        j.sync().unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    j.sync().unwrap();
    let mut names: Vec<Vec<u8>> = read_all(dir.path())
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.name)
        .collect();
    assert_eq!(names.len(), 1600);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 1600);
}

/// A reader at the end wakes when a writer (here another thread) appends.
#[test]
fn reader_tails_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let j = Arc::new(Journal::open(dir.path(), cfg(2048)).unwrap());
    let mut r = JournalReader::open(dir.path(), Position::START).unwrap();
    assert!(r.next_entry().unwrap().is_none());
    let w = {
        let j = j.clone();
        std::thread::spawn(move || {
            for i in 0..50 {
                j.append(&entry(i, 200).as_ref()).unwrap();
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = 0;
    while got < 50 {
        assert!(
            Instant::now() < deadline,
            "reader saw only {got} of 50 entries"
        );
        match r.next_entry().unwrap() {
            Some((_, e)) => {
                assert_eq!(e, entry(got, 200));
                got += 1;
            }
            None => r.wait(Duration::from_millis(100)),
        }
    }
    w.join().unwrap();
    assert!(list_segments(dir.path()).unwrap().len() > 3);
}

#[test]
fn removed_segments_make_a_gap_for_late_readers() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), cfg(1 << 20)).unwrap();
    let first = j.append(&entry(0, 10).as_ref()).unwrap();
    j.rotate_now().unwrap();
    let second = j.append(&entry(1, 10).as_ref()).unwrap();
    j.rotate_now().unwrap();
    assert_eq!(
        remove_segments_below(dir.path(), second.segment).unwrap(),
        1
    );
    // Never the newest, whatever is asked.
    assert_eq!(remove_segments_below(dir.path(), 1000).unwrap(), 1);
    assert_eq!(list_segments(dir.path()).unwrap(), vec![3]);
    let e = JournalReader::open(dir.path(), first).unwrap_err();
    assert!(matches!(e, JournalError::Gap { oldest: 3, .. }), "{e}");
    assert!(e.to_string().contains("full copy"), "{e}");
}

#[test]
fn backlog_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), cfg(1 << 20)).unwrap();
    let a = j.append(&entry(0, 100).as_ref()).unwrap();
    let b = j.append(&entry(1, 100).as_ref()).unwrap();
    let end = j.end();
    assert_eq!(bytes_from(dir.path(), a).unwrap(), end.offset - a.offset);
    assert_eq!(bytes_from(dir.path(), b).unwrap(), end.offset - b.offset);
    assert_eq!(bytes_from(dir.path(), end).unwrap(), 0);
}

/// Every segment starts with the newest watermark, so it survives the removal of older
/// segments, a rotation and a reopening; the clean flag with it.
#[test]
fn watermarks_survive_rotation_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), cfg(4096)).unwrap();
    assert_eq!(j.watermark(), None);
    let mark = |t: u64, flags: u64| crate::entry::EntryRef {
        offset: t,
        size: flags,
        ..crate::entry::EntryRef::new(Command::Mark, 0, b"")
    };
    j.append(&mark(1234, 0)).unwrap();
    assert_eq!(
        j.watermark().map(|w| (w.time_ns, w.clean)),
        Some((1234, false))
    );
    for i in 0..40 {
        j.append(&entry(i, 300).as_ref()).unwrap();
    }
    let segs = list_segments(dir.path()).unwrap();
    assert!(segs.len() > 2);
    // The newest segment alone still knows it.
    remove_segments_below(dir.path(), *segs.last().unwrap()).unwrap();
    assert_eq!(j.watermark().map(|w| w.time_ns), Some(1234));
    j.append(&mark(5678, crate::entry::MARK_CLEAN)).unwrap();
    drop(j);
    let j = Journal::open(dir.path(), cfg(4096)).unwrap();
    assert_eq!(
        j.watermark().map(|w| (w.time_ns, w.clean)),
        Some((5678, true))
    );
    j.rotate_now().unwrap();
    drop(j);
    let j = Journal::open(dir.path(), cfg(4096)).unwrap();
    assert_eq!(
        j.watermark().map(|w| (w.time_ns, w.clean)),
        Some((5678, true))
    );
}

/// A power loss takes the tail a reader had already seen (and a router acknowledged): the
/// journal seals the segment where its durable part ends and appends in the next segment, so
/// no lost position ever names a new record; a reader positioned in the lost part moves on to
/// the next segment and reads what came after. (Appending where the durable part ended put
/// new entries at positions the router already held, and it dropped them.)
#[test]
fn positions_lost_at_a_power_loss_never_name_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), cfg(1 << 20)).unwrap();
    let kept = j.append(&entry(1, 40).as_ref()).unwrap();
    let durable_end = j.end();
    let lost = j.append(&entry(2, 40).as_ref()).unwrap();
    let lost_end = j.end();
    drop(j);
    // The power goes: the second record never became durable.
    let path = segment_path(dir.path(), kept.segment);
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(durable_end.offset).unwrap();
    drop(f);
    let j = Journal::open(dir.path(), cfg(1 << 20)).unwrap();
    let next = j.append(&entry(3, 40).as_ref()).unwrap();
    assert_eq!(next, Position::new(kept.segment + 1, SEGMENT_HEADER_LEN));
    assert!(next > lost_end);
    drop(j);
    for from in [lost, lost_end] {
        let mut r = JournalReader::open(dir.path(), from).unwrap();
        let (p, e) = r.next_entry().unwrap().expect("the entry after the loss");
        assert_eq!((p, e), (next, entry(3, 40)), "reading from {from}");
    }
}

/// After a clean unmount (its watermark last) nothing can be lost: the journal goes on in the
/// same segment.
#[test]
fn a_clean_stop_goes_on_in_the_same_segment() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), cfg(1 << 20)).unwrap();
    j.append(&entry(1, 40).as_ref()).unwrap();
    let clean = EntryRef {
        offset: 5,
        size: crate::entry::MARK_CLEAN,
        ..EntryRef::new(Command::Mark, 0, b"")
    };
    j.append(&clean).unwrap();
    j.sync().unwrap();
    let end = j.end();
    drop(j);
    let j = Journal::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(j.end(), end);
}
