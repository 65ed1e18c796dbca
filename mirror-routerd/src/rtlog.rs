//! The router logs (seeds/002 Figure 10): pairs `NNNNNNNNNNNNNNNN.rt1` / `.rt2` in
//! `<router state>/rt/`.
//!
//! RT1 holds one record per received entry; RT2 holds the entries' data. Both start with a
//! 32-byte header: magic (`MIRRT1\0\0` or `MIRRT2\0\0`), format version `u32`, reserved `u32`,
//! pair number `u64`, and in RT1 the committed end `u64`: every record before it was made
//! durable and acknowledged (RT2: zero). An RT1 record (little-endian):
//!
//! | offset | field |
//! | --- | --- |
//! | 0 | `len u32`: the whole record |
//! | 4 | `crc u32`: CRC32 of bytes 9..len (everything but length, CRC and flag) |
//! | 8 | `flag u8`: 0 pending, 1 complete (rewritten in place by the router process) |
//! | 9 | `command u8`, `part u8`, reserved `u8` |
//! | 12 | `rule_crc u32` |
//! | 16 | journal position: `segment u64`, `offset u64` |
//! | 32 | `offset u64` (backup file offset or mode), `size u64` |
//! | 48 | `rt2_offset u64`, `data_len u64` |
//! | 64 | `time_ns u64` |
//! | 72 | `site_len u16`, reserved `u16`, `name_len u32`, `aux_len u32` |
//! | 84 | source site id, full source name, aux |
//!
//! The receive process appends a batch to both files and makes them durable with one
//! `fdatasync` each before acknowledging it (group commit); the same `fdatasync` carries the
//! committed end, set to where the batch starts (the previous batch is durable by then). On
//! open, a torn tail of the newest pair (a record cut short, or one whose data is missing from
//! RT2) is cut away, but only past the committed end: damage before it is in records that were
//! acknowledged, so the router refuses to start and names the file and offset instead of
//! silently dropping them.
//!
//! RT2 holds each batch's data in order, starting at a multiple of [`RT2_ALIGN`] and padded
//! with zeros to the next one (the header block too; data of [`RT2_ALIGN`] bytes or more
//! starts at such a multiple as well), so that a batch is written with
//! `O_DIRECT` from one aligned buffer: no copy into the page cache and no later writeback.
//! Where the file system refuses `O_DIRECT`, the same layout is written through the page
//! cache. Readers only follow the RT2 offsets in RT1 and never depend on the padding.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use mirrorfs::entry::Command;
use mirrorfs::journal::Position;
use mirrorfs::wire::{Part, WireEntry};

use crate::direct::{self, aligned, round_up};

const RT1_MAGIC: &[u8; 8] = b"MIRRT1\0\0";
const RT2_MAGIC: &[u8; 8] = b"MIRRT2\0\0";
const FORMAT_VERSION: u32 = 2;
/// Length of both file headers.
pub const HEADER_LEN: u64 = 32;
/// Where the committed end is in the RT1 header (the fixed part of the header ends there).
const COMMITTED_OFFSET: u64 = 24;
/// Length of the fixed part of an RT1 record.
pub const RECORD_FIXED: usize = 84;
/// Offset of the complete flag inside a record.
pub const FLAG_OFFSET: u64 = 8;
/// RT2 batches start at multiples of this (the `O_DIRECT` alignment).
pub const RT2_ALIGN: u64 = direct::ALIGN;
/// Longest source site id accepted.
pub const MAX_SITE: usize = mirrorfs::wire::msg::MAX_SITE_LEN;
/// Longest name or aux accepted.
pub const MAX_NAME: usize = 64 << 10;

/// Errors of the router logs.
#[derive(Debug, thiserror::Error)]
pub enum RtError {
    /// I/O on a log file.
    #[error("router log {path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        err: io::Error,
    },
    /// A damaged record or header that is not a torn tail.
    #[error("router log {path} is corrupt at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RtError + '_ {
    move |err| RtError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// One RT1 record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtRecord {
    /// Whether the router process applied it.
    pub complete: bool,
    /// What to do.
    pub command: Command,
    /// Which part of its journal entry.
    pub part: Part,
    /// The rule.
    pub rule_crc: u32,
    /// The journal position at the source.
    pub pos: Position,
    /// Backup offset or mode.
    pub offset: u64,
    /// Size.
    pub size: u64,
    /// Where the data starts in RT2.
    pub rt2_offset: u64,
    /// Data length.
    pub data_len: u64,
    /// When the source recorded it.
    pub time_ns: u64,
    /// The source site.
    pub site: String,
    /// Full source name.
    pub name: Vec<u8>,
    /// Second name or text.
    pub aux: Vec<u8>,
}

impl RtRecord {
    /// The record for `e` from `site`, its data at `rt2_offset`.
    pub fn from_wire(site: &str, e: &WireEntry, rt2_offset: u64) -> RtRecord {
        RtRecord {
            complete: false,
            command: e.command,
            part: e.part,
            rule_crc: e.rule_crc,
            pos: e.pos,
            offset: e.offset,
            size: e.size,
            rt2_offset,
            data_len: e.data.len() as u64,
            time_ns: e.time_ns,
            site: site.to_string(),
            name: e.name.clone(),
            aux: e.aux.clone(),
        }
    }

    /// Encoded length.
    pub fn len(&self) -> usize {
        RECORD_FIXED + self.site.len() + self.name.len() + self.aux.len()
    }

    /// Never empty (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let len = self.len() as u32;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(u8::from(self.complete));
        out.push(self.command as u8);
        out.push(self.part.code());
        out.push(0);
        out.extend_from_slice(&self.rule_crc.to_le_bytes());
        for v in [
            self.pos.segment,
            self.pos.offset,
            self.offset,
            self.size,
            self.rt2_offset,
            self.data_len,
            self.time_ns,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.site.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 2]);
        out.extend_from_slice(&(self.name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.aux.len() as u32).to_le_bytes());
        out.extend_from_slice(self.site.as_bytes());
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&self.aux);
        let crc = crc32fast::hash(&out[start + 9..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes the record at the start of `b`; `Ok(None)` when `b` holds only part of one.
    pub fn decode(b: &[u8]) -> Result<Option<(RtRecord, usize)>, String> {
        if b.len() < 4 {
            return Ok(None);
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let len = u32_at(0) as usize;
        if !(RECORD_FIXED..=RECORD_FIXED + MAX_SITE + 2 * MAX_NAME).contains(&len) {
            return Err(format!("record length {len} out of range"));
        }
        if b.len() < len {
            return Ok(None);
        }
        let b = &b[..len];
        let crc = u32_at(4);
        let actual = crc32fast::hash(&b[9..]);
        if crc != actual {
            return Err(format!(
                "record CRC mismatch ({crc:#010x} stored, {actual:#010x} computed)"
            ));
        }
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let complete = match b[8] {
            0 => false,
            1 => true,
            f => return Err(format!("bad flag {f}")),
        };
        let command = Command::from_u8(b[9]).ok_or_else(|| format!("bad command {}", b[9]))?;
        let part = Part::from_code(b[10]).ok_or_else(|| format!("bad part {}", b[10]))?;
        let site_len = u16::from_le_bytes([b[72], b[73]]) as usize;
        let name_len = u32_at(76) as usize;
        let aux_len = u32_at(80) as usize;
        if RECORD_FIXED + site_len + name_len + aux_len != len {
            return Err("field lengths do not add up to the record length".into());
        }
        let s = RECORD_FIXED;
        let site = std::str::from_utf8(&b[s..s + site_len])
            .map_err(|_| "site id is not UTF-8".to_string())?
            .to_string();
        let n = s + site_len;
        Ok(Some((
            RtRecord {
                complete,
                command,
                part,
                rule_crc: u32_at(12),
                pos: Position::new(u64_at(16), u64_at(24)),
                offset: u64_at(32),
                size: u64_at(40),
                rt2_offset: u64_at(48),
                data_len: u64_at(56),
                time_ns: u64_at(64),
                site,
                name: b[n..n + name_len].to_vec(),
                aux: b[n + name_len..n + name_len + aux_len].to_vec(),
            },
            len,
        )))
    }
}

/// The RT1 file of pair `n`.
pub fn rt1_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.rt1"))
}

/// The RT2 file of pair `n`.
pub fn rt2_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.rt2"))
}

/// Pair numbers present in `dir`, ascending.
pub fn list_pairs(dir: &Path) -> Result<Vec<u64>, RtError> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".rt1").and_then(|s| s.parse().ok()) {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

fn header(magic: &[u8; 8], n: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&n.to_le_bytes());
    if magic == RT1_MAGIC {
        h[24..32].copy_from_slice(&HEADER_LEN.to_le_bytes());
    }
    h
}

/// Checks the fixed part of a header; the committed end it holds (RT1).
fn check_header(path: &Path, f: &File, magic: &[u8; 8], n: u64) -> Result<u64, RtError> {
    let mut h = [0u8; HEADER_LEN as usize];
    f.read_exact_at(&mut h, 0).map_err(io_err(path))?;
    let fixed = COMMITTED_OFFSET as usize;
    if h[..fixed] != header(magic, n)[..fixed] {
        return Err(RtError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: format!("bad header (expected pair {n}, format {FORMAT_VERSION})"),
        });
    }
    let mut c = [0u8; 8];
    c.copy_from_slice(&h[fixed..]);
    Ok(u64::from_le_bytes(c))
}

/// Reads the records of an RT1 file from `from` up to `end`, calling `f(offset, record)`.
/// Stops at the first incomplete or damaged record and returns its offset and the reason
/// (`None` when all bytes up to `end` were whole records).
pub fn scan(
    file: &File,
    from: u64,
    end: u64,
    mut f: impl FnMut(u64, RtRecord),
) -> io::Result<(u64, Option<String>)> {
    let mut buf = Vec::new();
    let mut buf_off = from;
    let mut off = from;
    loop {
        let rel = (off - buf_off) as usize;
        match RtRecord::decode(&buf[rel..]) {
            Ok(Some((r, len))) => {
                f(off, r);
                off += len as u64;
                continue;
            }
            Ok(None) => {}
            Err(reason) => return Ok((off, Some(reason))),
        }
        if off >= end {
            return Ok((off, None));
        }
        // Refill from `off`: at least one more chunk.
        let want = ((end - off) as usize).min(4 << 20);
        let have = buf.len() - rel;
        if have >= want {
            return Ok((off, Some("record extends past the end".into())));
        }
        buf.drain(..rel);
        buf_off = off;
        let start = buf.len();
        buf.resize(want, 0);
        let n = file.read_at(&mut buf[start..], off + start as u64)?;
        buf.truncate(start + n);
        if n == 0 {
            return Ok((off, Some("record cut short".into())));
        }
    }
}

/// The writing side: appends batches to the newest pair and rotates.
#[derive(Debug)]
pub struct RtWriter {
    dir: PathBuf,
    pair: u64,
    rt1: File,
    rt2: File,
    rt1_len: u64,
    rt2_len: u64,
    max_size: u64,
    /// The staging buffer of a batch's data (reused; aligned slices of it are written).
    stage: Vec<u8>,
}

fn open_rw(path: &Path, create: bool) -> Result<File, RtError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))
}

impl RtWriter {
    /// Opens the logs in `dir` (creating it), recovering the newest pair's tail. A pair
    /// reaches `max_size` bytes of RT2 (or RT1) before the next one starts.
    pub fn open(dir: &Path, max_size: u64) -> Result<RtWriter, RtError> {
        mirrorfs::state::private_dir(dir).map_err(io_err(dir))?;
        let pairs = list_pairs(dir)?;
        let Some(&last) = pairs.last() else {
            return RtWriter::create(dir, 1, max_size, Vec::new());
        };
        let p1 = rt1_path(dir, last);
        let p2 = rt2_path(dir, last);
        let rt1 = open_rw(&p1, false)?;
        let rt2 = open_rw(&p2, true)?;
        let committed = check_header(&p1, &rt1, RT1_MAGIC, last)?;
        let rt2_size = rt2.metadata().map_err(io_err(&p2))?.len();
        if rt2_size < HEADER_LEN {
            rt2.write_all_at(&header(RT2_MAGIC, last), 0)
                .map_err(io_err(&p2))?;
        } else {
            check_header(&p2, &rt2, RT2_MAGIC, last)?;
        }
        let rt1_size = rt1.metadata().map_err(io_err(&p1))?.len();
        let mut data_end = HEADER_LEN;
        let mut valid_end = HEADER_LEN;
        let rt2_size = rt2_size.max(HEADER_LEN);
        let (stop, reason) = scan(&rt1, HEADER_LEN, rt1_size, |off, r| {
            let end = r.rt2_offset + r.data_len;
            if end <= rt2_size && valid_end == off {
                valid_end = off + r.len() as u64;
                data_end = data_end.max(end);
            }
        })
        .map_err(io_err(&p1))?;
        if valid_end < committed {
            // Acknowledged records are damaged (or their data is gone): not a torn tail.
            return Err(RtError::Corrupt {
                path: p1,
                offset: valid_end,
                reason: format!(
                    "{}, before the committed end {committed}: the records after it were acknowledged, so they are not cut as a torn tail (move the pair aside and run `mirror-ctl sync` on the sources to copy everything again)",
                    reason.unwrap_or_else(|| format!("data missing from RT2 after offset {stop}"))
                ),
            });
        }
        if valid_end < rt1_size {
            log::warn!(
                "router log {}: cutting a torn tail at offset {valid_end} ({} bytes; {})",
                p1.display(),
                rt1_size - valid_end,
                reason.unwrap_or_else(|| format!("data missing from RT2 after offset {stop}"))
            );
            rt1.set_len(valid_end).map_err(io_err(&p1))?;
        }
        if data_end < rt2_size {
            rt2.set_len(data_end).map_err(io_err(&p2))?;
        }
        Ok(RtWriter {
            dir: dir.to_path_buf(),
            pair: last,
            rt1,
            rt2,
            rt1_len: valid_end,
            rt2_len: round_up(data_end),
            max_size,
            stage: Vec::new(),
        })
    }

    fn create(dir: &Path, n: u64, max_size: u64, stage: Vec<u8>) -> Result<RtWriter, RtError> {
        let p1 = rt1_path(dir, n);
        let p2 = rt2_path(dir, n);
        let rt2 = open_rw(&p2, true)?;
        rt2.set_len(0).map_err(io_err(&p2))?;
        let mut block = [0u8; RT2_ALIGN as usize];
        block[..HEADER_LEN as usize].copy_from_slice(&header(RT2_MAGIC, n));
        rt2.write_all_at(&block, 0).map_err(io_err(&p2))?;
        rt2.sync_all().map_err(io_err(&p2))?;

        let rt1 = open_rw(&p1, true)?;
        rt1.set_len(0).map_err(io_err(&p1))?;
        rt1.write_all_at(&header(RT1_MAGIC, n), 0)
            .map_err(io_err(&p1))?;
        rt1.sync_all().map_err(io_err(&p1))?;
        mirrorfs::state::fsync_dir(dir).map_err(io_err(dir))?;
        Ok(RtWriter {
            dir: dir.to_path_buf(),
            pair: n,
            rt1,
            rt2,
            rt1_len: HEADER_LEN,
            rt2_len: RT2_ALIGN,
            max_size,
            stage,
        })
    }

    /// The pair being written and the length of its RT1 so far.
    pub fn end(&self) -> (u64, u64) {
        (self.pair, self.rt1_len)
    }

    /// Appends `entries` from `site` (to a new pair first if this one is full), then makes
    /// both files durable. Returns the pair and the RT1 end after the batch.
    pub fn append(&mut self, site: &str, entries: &[WireEntry]) -> Result<(u64, u64), RtError> {
        if entries.is_empty() {
            return Ok(self.end());
        }
        if self.rt1_len > HEADER_LEN
            && (self.rt2_len >= self.max_size || self.rt1_len >= self.max_size)
        {
            let stage = std::mem::take(&mut self.stage);
            *self = RtWriter::create(&self.dir, self.pair + 1, self.max_size, stage)?;
        }
        // Where each entry's data goes in the batch: large data starts at an aligned offset,
        // so that the router process can write it to the backup file directly.
        let mut at = 0u64;
        let places: Vec<u64> = entries
            .iter()
            .map(|e| {
                let n = e.data.len() as u64;
                if n >= RT2_ALIGN {
                    at = round_up(at);
                }
                at += n;
                at - n
            })
            .collect();
        let padded = round_up(at) as usize;
        let mut meta = Vec::new();
        let block = aligned(&mut self.stage, padded);
        let mut filled = 0;
        for (e, &place) in entries.iter().zip(&places) {
            let place = place as usize;
            let r = RtRecord::from_wire(site, e, self.rt2_len + place as u64);
            r.encode_into(&mut meta);
            block[filled..place].fill(0);
            block[place..place + e.data.len()].copy_from_slice(&e.data);
            filled = place + e.data.len();
        }
        block[filled..].fill(0);
        let p1 = rt1_path(&self.dir, self.pair);
        let p2 = rt2_path(&self.dir, self.pair);
        if padded > 0 {
            direct::write_at(&self.rt2, block, self.rt2_len).map_err(io_err(&p2))?;
            self.rt2.sync_data().map_err(io_err(&p2))?;
            self.rt2_len += padded as u64;
        }
        self.rt1
            .write_all_at(&meta, self.rt1_len)
            .map_err(io_err(&p1))?;
        // Everything before this batch is durable (and acknowledged): say so, in the same
        // fdatasync.
        self.rt1
            .write_all_at(&self.rt1_len.to_le_bytes(), COMMITTED_OFFSET)
            .map_err(io_err(&p1))?;
        self.rt1.sync_data().map_err(io_err(&p1))?;
        self.rt1_len += meta.len() as u64;
        Ok(self.end())
    }
}

/// The reading side of one pair, for the router process.
#[derive(Debug)]
pub struct RtPair {
    /// Pair number.
    pub n: u64,
    rt1_path: PathBuf,
    rt1: File,
    rt2_path: PathBuf,
    rt2: File,
}

impl RtPair {
    /// Opens pair `n` in `dir`.
    pub fn open(dir: &Path, n: u64) -> Result<RtPair, RtError> {
        let rt1_path = rt1_path(dir, n);
        let rt2_path = rt2_path(dir, n);
        let rt1 = open_rw(&rt1_path, false)?;
        let rt2 = File::open(&rt2_path).map_err(io_err(&rt2_path))?;
        check_header(&rt1_path, &rt1, RT1_MAGIC, n)?;
        check_header(&rt2_path, &rt2, RT2_MAGIC, n)?;
        Ok(RtPair {
            n,
            rt1_path,
            rt1,
            rt2_path,
            rt2,
        })
    }

    /// Records from `from` up to `end` (the writer's published end for the newest pair, the
    /// file length for older ones), with their offsets. Damage is an error.
    pub fn records(&self, from: u64, end: u64) -> Result<Vec<(u64, RtRecord)>, RtError> {
        let mut out = Vec::new();
        let (stop, reason) = scan(&self.rt1, from, end, |off, r| out.push((off, r)))
            .map_err(io_err(&self.rt1_path))?;
        if let Some(reason) = reason {
            if stop < end {
                return Err(RtError::Corrupt {
                    path: self.rt1_path.clone(),
                    offset: stop,
                    reason,
                });
            }
        }
        Ok(out)
    }

    /// The length of RT1.
    pub fn rt1_len(&self) -> Result<u64, RtError> {
        Ok(self.rt1.metadata().map_err(io_err(&self.rt1_path))?.len())
    }

    /// The data of `r`, through `ahead` (which reads RT2 in large blocks, never at or past
    /// `limit`: the end of the data of the records published so far).
    pub fn data<'a>(
        &self,
        r: &RtRecord,
        ahead: &'a mut direct::ReadAhead,
        limit: u64,
    ) -> Result<&'a [u8], RtError> {
        if r.data_len == 0 {
            return Ok(&[]);
        }
        ahead
            .read(&self.rt2, self.n, r.rt2_offset, r.data_len as usize, limit)
            .map_err(io_err(&self.rt2_path))
    }

    /// Marks the record at `offset` complete (in place; no fsync: a re-applied last entry
    /// after a crash is harmless, see `apply`).
    pub fn mark_complete(&self, offset: u64) -> Result<(), RtError> {
        self.rt1
            .write_all_at(&[1], offset + FLAG_OFFSET)
            .map_err(io_err(&self.rt1_path))
    }

    /// Deletes both files of the pair.
    pub fn remove(self, dir: &Path) -> Result<(), RtError> {
        let RtPair {
            rt1_path, rt2_path, ..
        } = self;
        std::fs::remove_file(&rt1_path).map_err(io_err(&rt1_path))?;
        match std::fs::remove_file(&rt2_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&rt2_path)(e)),
        }
        mirrorfs::state::fsync_dir(dir).map_err(io_err(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64, data: &[u8]) -> WireEntry {
        WireEntry {
            pos: Position::new(1, 100 + i),
            part: Part::Whole,
            command: Command::Write,
            rule_crc: 9,
            name: format!("/p/f{i}").into_bytes(),
            aux: Vec::new(),
            offset: i,
            size: data.len() as u64,
            time_ns: 5,
            data: data.to_vec(),
        }
    }

    #[test]
    fn append_scan_mark_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        // RT2 holds the header block and one block per batch with data.
        let mut w = RtWriter::open(dir.path(), 3 * RT2_ALIGN).unwrap();
        w.append("src", &[entry(0, b"hello"), entry(1, b"")])
            .unwrap();
        w.append("src", &[entry(2, &[7u8; 300])]).unwrap();
        // The first pair reached three blocks: the next batch starts pair 2.
        w.append("src", &[entry(3, b"x")]).unwrap();
        assert_eq!(list_pairs(dir.path()).unwrap(), vec![1, 2]);
        let p = RtPair::open(dir.path(), 1).unwrap();
        let recs = p.records(HEADER_LEN, p.rt1_len().unwrap()).unwrap();
        assert_eq!(recs.len(), 3);
        let mut ahead = direct::ReadAhead::default();
        let limit = recs[2].1.rt2_offset + 300;
        assert_eq!(p.data(&recs[0].1, &mut ahead, limit).unwrap(), b"hello");
        assert_eq!(
            p.data(&recs[2].1, &mut ahead, limit).unwrap(),
            vec![7u8; 300]
        );
        assert_eq!(recs[1].1.name, b"/p/f1");
        p.mark_complete(recs[1].0).unwrap();
        let again = p.records(HEADER_LEN, p.rt1_len().unwrap()).unwrap();
        assert!(!again[0].1.complete && again[1].1.complete);
    }

    #[test]
    fn torn_tail_is_cut_at_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RtWriter::open(dir.path(), 1 << 20).unwrap();
        w.append("s", &[entry(0, b"aaaa")]).unwrap();
        let (_, good) = w.append("s", &[entry(1, b"bbbb")]).unwrap();
        w.append("s", &[entry(2, b"cccc")]).unwrap();
        drop(w);
        let p1 = rt1_path(dir.path(), 1);
        let full = std::fs::read(&p1).unwrap();
        for cut in good as usize..full.len() {
            std::fs::write(&p1, &full[..cut]).unwrap();
            let w = RtWriter::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(w.end(), (1, good), "cut at {cut}");
        }
    }

    #[test]
    fn damage_before_the_committed_end_is_not_cut_as_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RtWriter::open(dir.path(), 1 << 20).unwrap();
        let (_, first) = w.append("s", &[entry(0, b"aaaa")]).unwrap();
        w.append("s", &[entry(1, b"bbbb")]).unwrap();
        w.append("s", &[entry(2, b"cccc")]).unwrap();
        drop(w);
        let p1 = rt1_path(dir.path(), 1);
        let full = std::fs::read(&p1).unwrap();
        // A flipped bit in the first (acknowledged) record: refused, nothing cut.
        let mut b = full.clone();
        b[HEADER_LEN as usize + 40] ^= 4;
        std::fs::write(&p1, &b).unwrap();
        let e = RtWriter::open(dir.path(), 1 << 20).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("corrupt at offset {HEADER_LEN}")),
            "{msg}"
        );
        assert!(msg.contains("acknowledged"), "{msg}");
        assert_eq!(std::fs::read(&p1).unwrap(), b);
        // The same damage in the last batch (not yet committed) is a torn tail.
        let mut b = full.clone();
        let last = b.len() - 10;
        b[last] ^= 4;
        std::fs::write(&p1, &b).unwrap();
        let w = RtWriter::open(dir.path(), 1 << 20).unwrap();
        assert!(w.end().1 > first && w.end().1 < full.len() as u64);
    }

    #[test]
    fn a_flipped_bit_in_the_middle_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RtWriter::open(dir.path(), 1 << 20).unwrap();
        w.append("s", &[entry(0, b"a"), entry(1, b"b"), entry(2, b"c")])
            .unwrap();
        let p1 = rt1_path(dir.path(), 1);
        let mut b = std::fs::read(&p1).unwrap();
        b[HEADER_LEN as usize + 100] ^= 1;
        std::fs::write(&p1, &b).unwrap();
        let p = RtPair::open(dir.path(), 1).unwrap();
        let e = p.records(HEADER_LEN, b.len() as u64).unwrap_err();
        assert!(e.to_string().contains("corrupt at offset"), "{e}");
    }
}
