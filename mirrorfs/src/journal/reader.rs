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
        std::fs::create_dir_all(dir).map_err(|e| JournalError::io(dir, e))?;
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
                let segs = list_segments(&self.dir)?;
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

    /// Decides what bytes that are not a valid record mean. `Ok(true)`: the segment turned
    /// out to be sealed there, go on; `Ok(false)`: the writer has not finished, wait.
    fn resolve_stuck(&mut self, reason: FormatError) -> Result<bool, JournalError> {
        let seg = self.seg.as_mut().expect("stuck needs an open segment");
        let corrupt = |seg: &Segment, offset| JournalError::Corrupt {
            path: seg.path.clone(),
            segment: seg.n,
            offset,
            reason,
        };
        if let Some(h) = read_header(seg)? {
            if h.sealed {
                seg.sealed_end = Some(h.index_offset);
                return if self.pos.offset == h.index_offset {
                    Ok(true)
                } else {
                    Err(corrupt(seg, self.pos.offset))
                };
            }
        }
        if list_segments(&self.dir)?.iter().any(|&s| s > seg.n) {
            return Err(corrupt(seg, self.pos.offset));
        }
        if matches!(reason, FormatError::Truncated { .. }) {
            return Ok(false);
        }
        // Bad bytes in the newest segment: a record being written now has nothing valid after
        // it; damage in the middle does.
        let mut rest = Vec::new();
        let start = self.pos.offset + 1;
        let mut buf = vec![0u8; READ_AHEAD];
        loop {
            let n = seg
                .file
                .read_at(&mut buf, start + rest.len() as u64)
                .map_err(|e| JournalError::io(&seg.path, e))?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
        }
        if format::find_valid_record(&rest).is_some() {
            return Err(corrupt(seg, self.pos.offset));
        }
        Ok(false)
    }
}

/// The header of `seg`, or `None` if it is not complete yet.
///
/// The writer rewrites the header in place when it seals a segment; a read racing that
/// rewrite may see a mix, so a bad CRC is retried a few times before it counts as damage.
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
