//! The journal reader: tails records from a position, across segments, in any process.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::format::{self, FormatError, SegmentHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::{list_segments, segment_path, JournalError, Position};
use crate::entry::Entry;
use crate::notify::DirWatch;

const READ_AHEAD: usize = 1 << 20;

struct Segment {
    n: u64,
    path: PathBuf,
    file: File,
    /// The index offset once the segment is known to be sealed.
    sealed_end: Option<u64>,
}

/// Reads journal records in order from a position, waiting for new ones at the end.
///
/// Only complete, CRC-valid records are returned. At the end of the newest segment an
/// incomplete record means "not written yet" and `next` returns `None`; a damaged record
/// anywhere else, or one followed by valid records, is [`JournalError::Corrupt`].
pub struct JournalReader {
    dir: PathBuf,
    pos: Position,
    seg: Option<Segment>,
    buf: Vec<u8>,
    buf_off: u64,
    watch: Option<DirWatch>,
}

impl std::fmt::Debug for JournalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalReader")
            .field("dir", &self.dir)
            .field("pos", &self.pos)
            .finish()
    }
}

enum Step {
    Record(Entry, u64),
    /// The bytes at the position are not (yet) a complete valid record.
    Stuck(FormatError),
}

impl JournalReader {
    /// A reader whose first record is the one at `from` ([`Position::START`]: the oldest).
    pub fn open(dir: &Path, from: Position) -> Result<JournalReader, JournalError> {
        crate::state::private_dir(dir).map_err(|e| JournalError::io(dir, e))?;
        let watch = match DirWatch::new(dir) {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!(
                    "journal {}: cannot watch for new entries ({e}); polling instead",
                    dir.display()
                );
                None
            }
        };
        let mut r = JournalReader {
            dir: dir.to_path_buf(),
            pos: from,
            seg: None,
            buf: Vec::new(),
            buf_off: 0,
            watch,
        };
        r.seek(from)?;
        Ok(r)
    }

    /// Moves to `pos` (the start of a record, or [`Position::START`]).
    pub fn seek(&mut self, pos: Position) -> Result<(), JournalError> {
        let segs = list_segments(&self.dir)?;
        let mut pos = pos;
        if pos.segment == 0 {
            pos = Position::new(segs.first().copied().unwrap_or(1), SEGMENT_HEADER_LEN);
        } else if let Some(&oldest) = segs.first() {
            if pos.segment < oldest {
                return Err(JournalError::Gap {
                    dir: self.dir.clone(),
                    wanted: pos,
                    oldest,
                });
            }
        }
        pos.offset = pos.offset.max(SEGMENT_HEADER_LEN);
        if let Some(end) = sealed_before(&self.dir, pos)? {
            // The writer sealed this segment at its durable end after a power loss: the
            // records a reader (or a router) saw past it are gone, and no record will ever
            // be there. What follows is in the next segment.
            log::warn!(
                "journal {}: position {pos} is past the end of segment {} (sealed at {end} after an unclean stop): the entries after {end} were lost before they were durable; going on at the next segment",
                self.dir.display(),
                pos.segment
            );
            pos = Position::new(pos.segment + 1, SEGMENT_HEADER_LEN);
        }
        self.pos = pos;
        self.seg = None;
        self.buf.clear();
        Ok(())
    }

    /// The position of the next record to be read.
    pub fn position(&self) -> Position {
        self.pos
    }

    /// Waits until the journal directory changes or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        match &self.watch {
            Some(w) => {
                if let Err(e) = w.wait(timeout) {
                    log::warn!("journal {}: inotify wait failed: {e}", self.dir.display());
                    std::thread::sleep(timeout);
                }
            }
            None => std::thread::sleep(timeout),
        }
    }

    /// The next record and its position, or `None` if there is none yet.
    pub fn next_entry(&mut self) -> Result<Option<(Position, Entry)>, JournalError> {
        loop {
            if self.seg.as_ref().map(|s| s.n) != Some(self.pos.segment) && !self.open_segment()? {
                return Ok(None);
            }
            let sealed_end = self.seg.as_ref().and_then(|s| s.sealed_end);
            if sealed_end == Some(self.pos.offset) {
                self.pos = Position::new(self.pos.segment + 1, SEGMENT_HEADER_LEN);
                continue;
            }
            match self.step()? {
                Step::Record(e, len) => {
                    let at = self.pos;
                    self.pos.offset += len;
                    return Ok(Some((at, e)));
                }
                Step::Stuck(reason) => {
                    self.buf.clear();
                    if self.resolve_stuck(reason)? {
                        continue;
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// Opens segment `pos.segment`; `false` if it does not exist yet.
    fn open_segment(&mut self) -> Result<bool, JournalError> {
        let n = self.pos.segment;
        let path = segment_path(&self.dir, n);
        self.buf.clear();
        self.seg = None;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                race_point(RacePoint::Missing);
                let segs = list_segments(&self.dir)?;
                // Created since the open failed (the writer moved on meanwhile): not a gap;
                // it is read on the next call.
                if segs.contains(&n) {
                    return Ok(false);
                }
                if let Some(&oldest) = segs.first() {
                    if segs.iter().any(|&s| s > n) {
                        return Err(JournalError::Gap {
                            dir: self.dir.clone(),
                            wanted: self.pos,
                            oldest,
                        });
                    }
                }
                return Ok(false);
            }
            Err(e) => return Err(JournalError::io(&path, e)),
        };
        let mut seg = Segment {
            n,
            path,
            file,
            sealed_end: None,
        };
        match read_header(&seg)? {
            Some(h) => {
                if h.sealed {
                    seg.sealed_end = Some(h.index_offset);
                    if self.pos.offset > h.index_offset {
                        return Err(JournalError::Corrupt {
                            path: seg.path,
                            segment: n,
                            offset: self.pos.offset,
                            reason: FormatError::BadLength("position is past the segment's end"),
                        });
                    }
                }
            }
            // The writer is creating it right now.
            None => return Ok(false),
        }
        self.seg = Some(seg);
        Ok(true)
    }

    /// At least `need` bytes from the position, if the file has them (else what it has).
    fn window(&mut self, need: usize) -> Result<&[u8], JournalError> {
        let pos = self.pos.offset;
        let covered = pos >= self.buf_off
            && pos + need as u64 <= self.buf_off + self.buf.len() as u64
            && !self.buf.is_empty();
        if !covered {
            let seg = self.seg.as_ref().expect("window needs an open segment");
            let want = need.max(READ_AHEAD);
            self.buf.resize(want, 0);
            let mut got = 0;
            while got < want {
                match seg.file.read_at(&mut self.buf[got..], pos + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(JournalError::io(&seg.path, e)),
                }
            }
            self.buf.truncate(got);
            self.buf_off = pos;
        }
        let start = (pos - self.buf_off) as usize;
        let end = (start + need).min(self.buf.len());
        Ok(&self.buf[start..end])
    }

    fn step(&mut self) -> Result<Step, JournalError> {
        let head = self.window(RECORD_HEADER_LEN)?;
        let len = match format::peek_record_len(head) {
            Ok(len) => len,
            Err(e) => return Ok(Step::Stuck(e)),
        };
        let bytes = self.window(len)?;
        match format::decode_record(bytes) {
            Ok((e, len)) => Ok(Step::Record(e, len as u64)),
            Err(e) => Ok(Step::Stuck(e)),
        }
    }

    /// Decides what bytes that are not a valid record mean. `Ok(true)`: look again (the
    /// segment turned out to be sealed, so its bytes no longer change); `Ok(false)`: the
    /// writer has not finished, wait.
    ///
    /// The writer appends the index, rewrites the header as sealed, and only then creates the
    /// next segment. So the next segment is looked for *before* the header is read: once a
    /// later segment has been seen, a header read afterwards shows the seal unless the segment
    /// really is damaged (reading the header first raced the rotation: a healthy segment
    /// whose header was read just before it was sealed looked damaged, issue 12). Bytes read
    /// before the seal was seen are read again once: a record that was still being written
    /// then is complete now.
    fn resolve_stuck(&mut self, reason: FormatError) -> Result<bool, JournalError> {
        let n = self.seg.as_ref().expect("stuck needs an open segment").n;
        race_point(RacePoint::Stuck);
        let later = list_segments(&self.dir)?.iter().any(|&s| s > n);
        race_point(RacePoint::BetweenLooks);
        let seg = self.seg.as_mut().expect("stuck needs an open segment");
        let corrupt = |seg: &Segment, offset| JournalError::Corrupt {
            path: seg.path.clone(),
            segment: seg.n,
            offset,
            reason,
        };
        let knew_sealed = seg.sealed_end.is_some();
        if let Some(h) = read_header(seg)? {
            if h.sealed {
                seg.sealed_end = Some(h.index_offset);
                return if self.pos.offset == h.index_offset || !knew_sealed {
                    Ok(true)
                } else {
                    Err(corrupt(seg, self.pos.offset))
                };
            }
        }
        if later {
            return Err(corrupt(seg, self.pos.offset));
        }
        if matches!(reason, FormatError::Truncated { .. }) {
            return Ok(false);
        }
        // Bad bytes in the newest segment: a record being written now has nothing valid after
        // it; damage in the middle does.
        let rest = read_to_end(seg, self.pos.offset + 1)?;
        if format::find_valid_record(&rest).is_some() {
            return Err(corrupt(seg, self.pos.offset));
        }
        Ok(false)
    }

    /// After [`JournalError::Corrupt`] from [`JournalReader::next_entry`]: moves past the
    /// damage to the next record that can be read, and says what was passed over.
    ///
    /// In a sealed segment whose index is intact, the next record is the first one the index
    /// lists after the damage that verifies; otherwise the damaged record's own length is
    /// used when the record after it verifies, else the first valid record found in the bytes
    /// that follow (every record carries its CRC), else the start of the next segment. A
    /// damaged segment header hides where the segment ends: the rest of that segment is
    /// passed over (once a later segment exists). Fails, leaving the position as it was, when
    /// the damage is at the end of the segment being written (nothing to skip to yet).
    pub fn skip_damage(&mut self) -> Result<Skipped, JournalError> {
        let from = self.pos;
        let n = from.segment;
        let path = segment_path(&self.dir, n);
        self.seg = None;
        self.buf.clear();
        let file = File::open(&path).map_err(|e| JournalError::io(&path, e))?;
        let seg = Segment {
            n,
            path,
            file,
            sealed_end: None,
        };
        let later = list_segments(&self.dir)?.iter().any(|&s| s > n);
        let next_segment = Position::new(n + 1, SEGMENT_HEADER_LEN);
        let header = read_header(&seg).ok().flatten().filter(|h| h.segment == n);
        let stuck = |reason| JournalError::Corrupt {
            path: seg.path.clone(),
            segment: n,
            offset: from.offset,
            reason: FormatError::BadLength(reason),
        };
        let (to, starts) = match header {
            None => {
                // Where the segment ends is unknown: pass over the rest of it.
                if !later {
                    return Err(stuck("the segment being written has a damaged header; it can be passed over once the writer moves to the next segment"));
                }
                (next_segment, Vec::new())
            }
            Some(h) if h.sealed && from.offset >= h.index_offset => (next_segment, Vec::new()),
            Some(h) => {
                let end = if h.sealed { h.index_offset } else { u64::MAX };
                let by_index = if h.sealed { read_index(&seg, &h) } else { None };
                match by_index {
                    Some(offsets) => {
                        let mut starts = vec![from.offset];
                        let mut to = next_segment;
                        for o in offsets.into_iter().filter(|&o| o >= from.offset) {
                            if o > from.offset && record_verifies(&seg, o, end)? {
                                to = Position::new(n, o);
                                break;
                            }
                            if o > from.offset {
                                starts.push(o);
                            }
                        }
                        (to, starts)
                    }
                    None => {
                        let mut rest = read_to_end(&seg, from.offset)?;
                        rest.truncate(usize::try_from(end - from.offset).unwrap_or(usize::MAX));
                        let own = format::peek_record_len(&rest).ok().filter(|&l| {
                            l < rest.len() && format::verify_record(&rest[l..]).is_ok()
                        });
                        let found = own.or_else(|| {
                            rest.get(1..)
                                .and_then(format::find_valid_record)
                                .map(|r| r + 1)
                        });
                        match found {
                            Some(r) => {
                                (Position::new(n, from.offset + r as u64), vec![from.offset])
                            }
                            None if h.sealed || later => (next_segment, vec![from.offset]),
                            None => return Err(stuck(
                                "nothing valid follows the damage in the segment being written yet",
                            )),
                        }
                    }
                }
            }
        };
        // Names, as far as the damaged records show them (unverified).
        let mut guessed = Vec::new();
        let limit = if to.segment == n { to.offset } else { u64::MAX };
        if header.is_none() {
            let rest = read_to_end(&seg, from.offset)?;
            guess_all(&rest, &mut guessed);
        } else {
            for &o in &starts {
                let len = usize::try_from(limit.saturating_sub(o)).unwrap_or(usize::MAX);
                let mut b = read_to_end(&seg, o)?;
                b.truncate(len);
                if let Some(g) = guess_record(&b) {
                    guessed.push(g);
                }
            }
        }
        self.pos = to;
        Ok(Skipped { from, to, guessed })
    }
}

/// What [`JournalReader::skip_damage`] passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Where the damage starts (the position `next_entry` failed at).
    pub from: Position,
    /// The next record that can be read: where the reader is now.
    pub to: Position,
    /// `(rule CRC, name, aux)` of the damaged records, as far as their fixed parts could be
    /// made out. Their CRC failed, so any of it may be wrong: use it only for what is right
    /// whatever the bytes say (resending a file as it is now, deleting a name that no longer
    /// exists), never as an entry.
    pub guessed: Vec<(u32, Vec<u8>, Vec<u8>)>,
}

/// Points where a test may act between two of the reader's looks at the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RacePoint {
    /// Bytes at the position were found not to be a valid record.
    Stuck,
    /// Between looking for a later segment and reading the header.
    BetweenLooks,
    /// The segment to read was not found; the directory is listed next.
    Missing,
}

#[cfg(not(test))]
#[inline(always)]
fn race_point(_: RacePoint) {}

/// What a test runs at the race points.
#[cfg(test)]
pub(crate) type RaceHook = Box<dyn FnMut(RacePoint)>;

#[cfg(test)]
thread_local! {
    /// What a test runs at each race point (in the reading thread).
    pub(crate) static RACE: std::cell::RefCell<Option<RaceHook>> = const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
fn race_point(p: RacePoint) {
    RACE.with(|r| {
        if let Some(f) = r.borrow_mut().as_mut() {
            f(p)
        }
    })
}

/// Reads from `offset` into `buf` until it is full or the file ends; the bytes read.
fn read_full(seg: &Segment, buf: &mut [u8], offset: u64) -> Result<usize, JournalError> {
    let mut got = 0;
    while got < buf.len() {
        match seg.file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(JournalError::io(&seg.path, e)),
        }
    }
    Ok(got)
}

/// Everything in the segment from `offset` on.
fn read_to_end(seg: &Segment, offset: u64) -> Result<Vec<u8>, JournalError> {
    let mut rest = Vec::new();
    let mut buf = vec![0u8; READ_AHEAD];
    loop {
        let n = read_full(seg, &mut buf, offset + rest.len() as u64)?;
        rest.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            return Ok(rest);
        }
    }
}

/// The record offsets of a sealed segment's index, if the index is intact and plausible
/// (ascending, between the header and the index).
fn read_index(seg: &Segment, h: &SegmentHeader) -> Option<Vec<u64>> {
    let len = usize::try_from(h.total_size.checked_sub(h.index_offset)?).ok()?;
    // A record takes at least its fixed part: no more offsets than that allows.
    let most = (h.index_offset - SEGMENT_HEADER_LEN) / RECORD_HEADER_LEN as u64 + 1;
    if len as u64 > 20 + 8 * most {
        return None;
    }
    let mut b = vec![0u8; len];
    let got = read_full(seg, &mut b, h.index_offset).ok()?;
    let offsets = format::decode_index(&b[..got]).ok()?;
    let plausible = offsets.windows(2).all(|w| w[0] < w[1])
        && offsets
            .iter()
            .all(|&o| o >= SEGMENT_HEADER_LEN && o < h.index_offset);
    plausible.then_some(offsets)
}

/// Whether a valid record starts at `offset` and ends by `end`.
fn record_verifies(seg: &Segment, offset: u64, end: u64) -> Result<bool, JournalError> {
    let mut head = [0u8; RECORD_HEADER_LEN];
    if read_full(seg, &mut head, offset)? < RECORD_HEADER_LEN {
        return Ok(false);
    }
    let Ok(len) = format::peek_record_len(&head) else {
        return Ok(false);
    };
    if offset + len as u64 > end {
        return Ok(false);
    }
    let mut b = vec![0u8; len];
    Ok(read_full(seg, &mut b, offset)? == len && format::verify_record(&b).is_ok())
}

/// `(rule CRC, name, aux)` from the fixed part of a record at the start of `b`, when its
/// lengths fit in `b` and the name is an absolute path (nothing is verified).
fn guess_record(b: &[u8]) -> Option<(u32, Vec<u8>, Vec<u8>)> {
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if b.len() < RECORD_HEADER_LEN {
        return None;
    }
    let name_len = u16::from_le_bytes([b[14], b[15]]) as usize;
    let aux_len = u32_at(20) as usize;
    let n0 = RECORD_HEADER_LEN;
    let name = b.get(n0..n0 + name_len)?;
    if name.first() != Some(&b'/') {
        return None;
    }
    let aux = b
        .get(n0 + name_len..(n0 + name_len).saturating_add(aux_len))
        .filter(|a| a.first() == Some(&b'/'))
        .unwrap_or_default();
    Some((u32_at(16), name.to_vec(), aux.to_vec()))
}

/// Guesses at every record of `b`: record by record while lengths hold, jumping to the next
/// valid record where they do not.
fn guess_all(b: &[u8], out: &mut Vec<(u32, Vec<u8>, Vec<u8>)>) {
    let mut at = 0usize;
    while at < b.len() && out.len() < MAX_GUESSES {
        let here = &b[at..];
        if let Some(g) = guess_record(here) {
            out.push(g);
        }
        match format::peek_record_len(here) {
            Ok(len) if len <= here.len() => at += len,
            _ => match here.get(1..).and_then(format::find_valid_record) {
                Some(r) => at += r + 1,
                None => break,
            },
        }
    }
}

/// At most this many names are guessed from one damaged stretch.
const MAX_GUESSES: usize = 100_000;

/// The header of `seg`, or `None` if it is not complete yet.
///
/// The writer rewrites the header in place when it seals a segment; a read racing that
/// rewrite may see a mix, so a bad CRC is retried a few times before it counts as damage.
/// The end of segment `pos.segment` if it is sealed and `pos` lies past it.
fn sealed_before(dir: &Path, pos: Position) -> Result<Option<u64>, JournalError> {
    let path = segment_path(dir, pos.segment);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(JournalError::io(&path, e)),
    };
    let seg = Segment {
        n: pos.segment,
        path,
        file,
        sealed_end: None,
    };
    Ok(match read_header(&seg) {
        Ok(Some(h)) if h.sealed && pos.offset > h.index_offset => Some(h.index_offset),
        // Damage is reported where the segment is read.
        _ => None,
    })
}

fn read_header(seg: &Segment) -> Result<Option<SegmentHeader>, JournalError> {
    let mut attempt = 0;
    loop {
        let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
        let got = seg
            .file
            .read_at(&mut b, 0)
            .map_err(|e| JournalError::io(&seg.path, e))?;
        match SegmentHeader::decode(&b[..got]) {
            Ok(h) => return Ok(Some(h)),
            Err(FormatError::Truncated { .. }) => return Ok(None),
            Err(FormatError::BadCrc { .. }) if attempt < 3 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(reason) => {
                return Err(JournalError::Corrupt {
                    path: seg.path.clone(),
                    segment: seg.n,
                    offset: 0,
                    reason,
                })
            }
        }
    }
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;
