//! The router logs (seeds/002 Figure 10): pairs `NNNNNNNNNNNNNNNN.rt1` / `.rt2` in
//! `<router state>/rt/`.
//!
//! RT1 holds one record per received entry; RT2 holds the entries' data. Both start with a
//! 32-byte header: magic (`MIRRT1\0\0` or `MIRRT2\0\0`), format version `u32`, reserved `u32`,
//! pair number `u64`, and in RT1 the committed end `u64`: every record before it was made
//! durable and acknowledged (RT2: zero). An RT1 record of format 3 (little-endian):
//!
//! | offset | field |
//! | --- | --- |
//! | 0 | `len u32`: the whole record |
//! | 4 | `crc u32`: CRC32 of bytes 9..len (everything but length, CRC and flag) |
//! | 8 | `flag u8`: `0x00` pending, `0xFF` complete (rewritten in place by the router process) |
//! | 9 | `command u8`, `part u8`, reserved `u8` |
//! | 12 | `rule_crc u32` |
//! | 16 | journal position: `segment u64`, `offset u64` |
//! | 32 | `offset u64` (backup file offset or mode), `size u64` |
//! | 48 | `rt2_offset u64`, `data_len u64` |
//! | 64 | `time_ns u64` |
//! | 72 | `site_len u16`, reserved `u16`, `name_len u32`, `aux_len u32` |
//! | 84 | `data_crc u32`: CRC32 of the entry's `data_len` bytes in RT2 |
//! | 88 | source site id, full source name, aux |
//!
//! The data checksum is verified before the data is applied: RT2 bytes that changed after
//! they were stored never reach a backup file (the router asks the source for a fresh copy
//! of the file instead, see `apply`). The flag's two values differ in every bit, so a flipped
//! bit in it is damage, never a silent change from pending to complete.
//!
//! **Format 2** (the previous one) is still read: its records are 84 bytes of fixed part
//! (no `data_crc`; the names start at 84) and its flag is `0`/`1`. Its data is applied
//! unverified, as it was written without a checksum. The writer never appends to a format-2
//! pair: after an upgrade the next batch starts a new pair in format 3, and the old pairs are
//! applied and removed as usual. Other versions are refused as damage.
//!
//! The receive process appends a batch to both files and makes them durable with one
//! `fdatasync` each before acknowledging it (group commit); the same `fdatasync` carries the
//! committed end, set to where the batch starts (the previous batch is durable by then), and
//! right after it the committed end moves to the batch's end (written before the ack, made
//! durable by the next batch's `fdatasync`), so that a flipped bit in the newest acknowledged
//! batch is damage too, not a torn tail to cut. On
//! open, a torn tail of the newest pair (a record cut short, or one whose data is missing from
//! RT2) is cut away, but only past the committed end: damage before it is in records that were
//! acknowledged ([`RtError::Acknowledged`]); the router then quarantines the pair (see
//! `quarantine`) instead of silently dropping them. A batch that fails to be stored (a full
//! disk) leaves nothing behind: RT1 is cut back to where the batch started, and a pair is cut
//! to its last whole record before the next one starts.
//!
//! [`survey`] reads a whole RT1 however damaged: the readable records, and the damaged
//! stretches between them (it looks for the next record that decodes with a valid CRC), so
//! that the router and `mirror-ctl router status` can say what a damaged pair held.
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
/// The format the writer writes.
pub const FORMAT_VERSION: u32 = 3;
/// The previous format, still read (no data checksum).
pub const FORMAT_V2: u32 = 2;
/// Length of both file headers.
pub const HEADER_LEN: u64 = 32;
/// Where the committed end is in the RT1 header (the fixed part of the header ends there).
const COMMITTED_OFFSET: u64 = 24;
/// Length of the fixed part of an RT1 record (format 3).
pub const RECORD_FIXED: usize = 88;
/// Length of the fixed part of a format-2 record.
const RECORD_FIXED_V2: usize = 84;
/// The complete flag's values (format 3; format 2 used 0 and 1).
const FLAG_PENDING: u8 = 0x00;
const FLAG_COMPLETE: u8 = 0xFF;

/// The fixed part of a record of `version`.
fn fixed_len(version: u32) -> usize {
    if version == FORMAT_V2 {
        RECORD_FIXED_V2
    } else {
        RECORD_FIXED
    }
}

/// The complete flag's value in `version`.
fn complete_flag(version: u32) -> u8 {
    if version == FORMAT_V2 {
        1
    } else {
        FLAG_COMPLETE
    }
}
/// Offset of the complete flag inside a record.
pub const FLAG_OFFSET: u64 = 8;
/// RT2 batches start at multiples of this (the `O_DIRECT` alignment).
pub const RT2_ALIGN: u64 = direct::ALIGN;
/// Longest source site id accepted.
pub const MAX_SITE: usize = mirrorfs::wire::msg::MAX_SITE_LEN;
/// Longest name or aux accepted (what the journal and the wire take).
pub const MAX_NAME: usize = mirrorfs::entry::MAX_NAME_LEN;

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
    /// The newest pair is damaged before its committed end (or an intact record's flag is
    /// damaged anywhere): acknowledged records are lost, so the damage is not cut as a torn
    /// tail.
    #[error("router log {path} is corrupt at offset {offset} (committed end {committed}): {reason}; the damaged records were acknowledged, so they are not cut as a torn tail")]
    Acknowledged {
        /// The pair.
        pair: u64,
        /// Its RT1.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// The committed end.
        committed: u64,
        /// What is wrong.
        reason: String,
    },
}

impl RtError {
    /// Whether the error is damage in the logs (rather than failing I/O).
    pub fn is_damage(&self) -> bool {
        !matches!(self, RtError::Io { .. })
    }
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
    /// CRC32 of the data (none in format 2, whose data is applied unverified).
    pub data_crc: Option<u32>,
    /// The format it is encoded in ([`FORMAT_VERSION`] for new records).
    pub version: u32,
}

/// A record decoded whatever its flag says, and whether the flag was valid.
type Lenient = (RtRecord, usize, bool);

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
            data_crc: Some(crc32fast::hash(&e.data)),
            version: FORMAT_VERSION,
        }
    }

    /// Encoded length (in its format).
    pub fn len(&self) -> usize {
        fixed_len(self.version) + self.site.len() + self.name.len() + self.aux.len()
    }

    /// Whether `data` is the data this record was stored with: `Err` with the reason when
    /// its checksum differs (format-2 records carry none and always pass).
    pub fn check_data(&self, data: &[u8]) -> Result<(), String> {
        if data.len() as u64 != self.data_len {
            return Err(format!(
                "{} bytes of data read, {} stored",
                data.len(),
                self.data_len
            ));
        }
        match self.data_crc {
            Some(want) => {
                let got = crc32fast::hash(data);
                if got == want {
                    Ok(())
                } else {
                    Err(format!(
                        "data checksum mismatch ({want:#010x} stored, {got:#010x} computed over the {} bytes in RT2)",
                        data.len()
                    ))
                }
            }
            None => Ok(()),
        }
    }

    /// Never empty (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the encoding to `out`, in format 3 (a record without a data checksum gets
    /// that of no data).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let len = (RECORD_FIXED + self.site.len() + self.name.len() + self.aux.len()) as u32;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(if self.complete {
            FLAG_COMPLETE
        } else {
            FLAG_PENDING
        });
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
        let data_crc = self.data_crc.unwrap_or_else(|| crc32fast::hash(&[]));
        out.extend_from_slice(&data_crc.to_le_bytes());
        out.extend_from_slice(self.site.as_bytes());
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&self.aux);
        let crc = crc32fast::hash(&out[start + 9..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes the format-3 record at the start of `b`; `Ok(None)` when `b` holds only part
    /// of one.
    pub fn decode(b: &[u8]) -> Result<Option<(RtRecord, usize)>, String> {
        RtRecord::decode_format(b, FORMAT_VERSION)
    }

    /// Decodes the record of format `version` at the start of `b`.
    pub fn decode_format(b: &[u8], version: u32) -> Result<Option<(RtRecord, usize)>, String> {
        match RtRecord::decode_lenient(b, version)? {
            None => Ok(None),
            Some((r, len, true)) => Ok(Some((r, len))),
            Some((_, _, false)) => Err(format!("bad complete flag {:#04x}", b[8])),
        }
    }

    /// Decodes a record whatever its flag holds (read as pending when it is damaged), and
    /// says whether the flag was valid.
    fn decode_lenient(b: &[u8], version: u32) -> Result<Option<Lenient>, String> {
        if b.len() < 4 {
            return Ok(None);
        }
        let fixed = fixed_len(version);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let len = u32_at(0) as usize;
        if !(fixed..=fixed + MAX_SITE + 2 * MAX_NAME).contains(&len) {
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
        let (complete, flag_ok) = match b[8] {
            FLAG_PENDING => (false, true),
            f if f == complete_flag(version) => (true, true),
            _ => (false, false),
        };
        let command = Command::from_u8(b[9]).ok_or_else(|| format!("bad command {}", b[9]))?;
        let part = Part::from_code(b[10]).ok_or_else(|| format!("bad part {}", b[10]))?;
        let site_len = u16::from_le_bytes([b[72], b[73]]) as usize;
        let name_len = u32_at(76) as usize;
        let aux_len = u32_at(80) as usize;
        if fixed + site_len + name_len + aux_len != len {
            return Err("field lengths do not add up to the record length".into());
        }
        let data_crc = (version != FORMAT_V2).then(|| u32_at(84));
        let s = fixed;
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
                data_crc,
                version,
            },
            len,
            flag_ok,
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

/// Checks the fixed part of a header; its format version and the committed end it holds
/// (RT1).
fn check_header(path: &Path, f: &File, magic: &[u8; 8], n: u64) -> Result<(u32, u64), RtError> {
    let mut h = [0u8; HEADER_LEN as usize];
    let bad = |reason: String| RtError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason,
    };
    match f.read_exact_at(&mut h, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(bad("header cut short".into()))
        }
        Err(e) => return Err(io_err(path)(e)),
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let mut expect = header(magic, n);
    expect[8..12].copy_from_slice(&version.to_le_bytes());
    let fixed = COMMITTED_OFFSET as usize;
    if h[..fixed] != expect[..fixed] || !(version == FORMAT_VERSION || version == FORMAT_V2) {
        return Err(bad(format!(
            "bad header (expected pair {n}, format {FORMAT_VERSION} or {FORMAT_V2}; found format {version})"
        )));
    }
    let mut c = [0u8; 8];
    c.copy_from_slice(&h[fixed..]);
    Ok((version, u64::from_le_bytes(c)))
}

/// Reads the records of an RT1 file of format `version` from `from` up to `end`, calling
/// `f(offset, record)`. Stops at the first incomplete or damaged record and returns its
/// offset and the reason (`None` when all bytes up to `end` were whole records).
pub fn scan(
    file: &File,
    version: u32,
    from: u64,
    end: u64,
    mut f: impl FnMut(u64, RtRecord),
) -> io::Result<(u64, Option<String>)> {
    let mut buf = Vec::new();
    let mut buf_off = from;
    let mut off = from;
    loop {
        let rel = (off - buf_off) as usize;
        match RtRecord::decode_format(&buf[rel..], version) {
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

/// A damaged stretch of an RT1 file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hole {
    /// Where it starts.
    pub from: u64,
    /// Where the next readable record starts (or the end of the file).
    pub to: u64,
    /// What is wrong at `from`.
    pub reason: String,
}

/// What an RT1 file holds, however damaged ([`survey`]).
#[derive(Debug, Clone, Default)]
pub struct Survey {
    /// The format of the pair.
    pub version: u32,
    /// The committed end in the header.
    pub committed: u64,
    /// The length of RT1.
    pub len: u64,
    /// Readable records with their offsets (a record whose flag is damaged is in
    /// `unsure`, not here).
    pub records: Vec<(u64, RtRecord)>,
    /// Records whose content is intact but whose complete flag is damaged: whether they were
    /// applied is unknown.
    pub unsure: Vec<(u64, RtRecord)>,
    /// Damaged stretches, in order.
    pub holes: Vec<Hole>,
}

impl Survey {
    /// The first damage (a hole or a record with a damaged flag) before `upto`: its offset and
    /// what is wrong.
    pub fn first_damage(&self, upto: u64) -> Option<(u64, String)> {
        let hole = self
            .holes
            .iter()
            .find(|h| h.from < upto)
            .map(|h| (h.from, h.reason.clone()));
        let flag = self
            .unsure
            .iter()
            .find(|(o, _)| *o < upto)
            .map(|(o, _)| (*o, "the complete flag of a record is damaged".to_string()));
        match (hole, flag) {
            (Some(h), Some(f)) => Some(if h.0 <= f.0 { h } else { f }),
            (h, f) => h.or(f),
        }
    }
}

/// Reads all of RT1 of pair `n` in `dir`, however damaged: the readable records, the records
/// whose flag is damaged, and the stretches that do not decode (after a damaged record, the
/// next offset where a record decodes with a valid CRC starts the next readable stretch).
/// A damaged header is an error ([`RtError::Corrupt`] at offset 0).
pub fn survey(dir: &Path, n: u64) -> Result<Survey, RtError> {
    let path = rt1_path(dir, n);
    let f = File::open(&path).map_err(io_err(&path))?;
    let (version, committed) = check_header(&path, &f, RT1_MAGIC, n)?;
    let mut buf = Vec::new();
    {
        use std::io::Read;
        (&f).read_to_end(&mut buf).map_err(io_err(&path))?;
    }
    let len = buf.len() as u64;
    let mut sv = Survey {
        version,
        committed,
        len,
        ..Survey::default()
    };
    let mut off = HEADER_LEN as usize;
    let decode = |o: usize| RtRecord::decode_lenient(&buf[o..], version);
    while off < buf.len() {
        match decode(off) {
            Ok(Some((r, used, flag_ok))) => {
                if flag_ok {
                    sv.records.push((off as u64, r));
                } else {
                    sv.unsure.push((off as u64, r));
                }
                off += used;
            }
            Ok(None) => {
                sv.holes.push(Hole {
                    from: off as u64,
                    to: len,
                    reason: "record cut short".into(),
                });
                break;
            }
            Err(reason) => {
                // Bounded by the file's length: one decode attempt per offset, most of which
                // stop at the length check.
                let next = (off + 1..buf.len())
                    .find(|&o| matches!(decode(o), Ok(Some(_))))
                    .unwrap_or(buf.len());
                sv.holes.push(Hole {
                    from: off as u64,
                    to: next as u64,
                    reason,
                });
                off = next;
            }
        }
    }
    Ok(sv)
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
    /// reaches `max_size` bytes of RT2 (or RT1) before the next one starts. A new pair gets
    /// a number of at least `first` (numbers of quarantined pairs are never used again), and
    /// the writer appends only to a pair of the current format.
    ///
    /// Damage before the newest pair's committed end is [`RtError::Acknowledged`]; nothing
    /// is changed then.
    pub fn open(dir: &Path, max_size: u64, first: u64) -> Result<RtWriter, RtError> {
        mirrorfs::state::private_dir(dir).map_err(io_err(dir))?;
        let first = first.max(1);
        let pairs = list_pairs(dir)?;
        let Some(&last) = pairs.last() else {
            return RtWriter::create(dir, first, max_size, Vec::new());
        };
        let p1 = rt1_path(dir, last);
        let p2 = rt2_path(dir, last);
        let rt1 = open_rw(&p1, false)?;
        let rt1_size = rt1.metadata().map_err(io_err(&p1))?.len();
        if rt1_size <= HEADER_LEN && check_header(&p1, &rt1, RT1_MAGIC, last).is_err() {
            // A pair whose creation was cut short: nothing was ever stored in it.
            log::warn!(
                "router log {}: a pair whose creation did not finish ({rt1_size} bytes); starting it again",
                p1.display()
            );
            let _ = std::fs::remove_file(&p2);
            std::fs::remove_file(&p1).map_err(io_err(&p1))?;
            return RtWriter::create(dir, last.max(first), max_size, Vec::new());
        }
        let rt2 = open_rw(&p2, true)?;
        let (version, committed) = check_header(&p1, &rt1, RT1_MAGIC, last)?;
        let rt2_size = rt2.metadata().map_err(io_err(&p2))?.len();
        if rt2_size < HEADER_LEN {
            rt2.write_all_at(&header(RT2_MAGIC, last), 0)
                .map_err(io_err(&p2))?;
        } else {
            check_header(&p2, &rt2, RT2_MAGIC, last)?;
        }
        let mut data_end = HEADER_LEN;
        let mut valid_end = HEADER_LEN;
        let rt2_size = rt2_size.max(HEADER_LEN);
        let (stop, reason) = scan(&rt1, version, HEADER_LEN, rt1_size, |off, r| {
            let end = r.rt2_offset + r.data_len;
            if end <= rt2_size && valid_end == off {
                valid_end = off + r.len() as u64;
                data_end = data_end.max(end);
            }
        })
        .map_err(io_err(&p1))?;
        // An intact record whose flag is damaged is no torn write (the flag is one byte,
        // written in place), wherever it is.
        let flag_damaged = valid_end < rt1_size && {
            let mut b = vec![
                0u8;
                (rt1_size - valid_end).min((fixed_len(version) + MAX_SITE + 2 * MAX_NAME) as u64)
                    as usize
            ];
            rt1.read_exact_at(&mut b, valid_end).map_err(io_err(&p1))?;
            matches!(
                RtRecord::decode_lenient(&b, version),
                Ok(Some((_, _, false)))
            )
        };
        if valid_end < committed || flag_damaged {
            // Acknowledged records are damaged (or their data is gone): not a torn tail.
            return Err(RtError::Acknowledged {
                pair: last,
                path: p1,
                offset: valid_end,
                committed,
                reason: reason
                    .unwrap_or_else(|| format!("data missing from RT2 after offset {stop}")),
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
            rt1.sync_all().map_err(io_err(&p1))?;
        }
        if data_end < rt2_size {
            rt2.set_len(data_end).map_err(io_err(&p2))?;
        }
        if version != FORMAT_VERSION || last < first {
            // Never append records of this format to a pair of another one, nor reuse the
            // number of a quarantined pair.
            let next = (last + 1).max(first);
            if version != FORMAT_VERSION {
                log::info!(
                    "router log pair {last} is in format {version}: new entries go to pair {next} in format {FORMAT_VERSION}"
                );
            }
            return RtWriter::create(dir, next, max_size, Vec::new());
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

    /// Creates pair `n` (removing what was made of it when that fails).
    fn create(dir: &Path, n: u64, max_size: u64, stage: Vec<u8>) -> Result<RtWriter, RtError> {
        let p1 = rt1_path(dir, n);
        let p2 = rt2_path(dir, n);
        let made = (|| {
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
            Ok((rt1, rt2))
        })();
        let (rt1, rt2) = match made {
            Ok(f) => f,
            Err(e) => {
                // A full disk must not leave a pair without a header behind.
                let _ = std::fs::remove_file(&p1);
                let _ = std::fs::remove_file(&p2);
                return Err(e);
            }
        };
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

    /// Starts the next pair now (the current one is cut to its last whole record first, so
    /// that what a failed batch left in it is never read as a record).
    pub fn rotate(&mut self) -> Result<(), RtError> {
        let p1 = rt1_path(&self.dir, self.pair);
        self.rt1.set_len(self.rt1_len).map_err(io_err(&p1))?;
        self.rt1.sync_all().map_err(io_err(&p1))?;
        let stage = std::mem::take(&mut self.stage);
        match RtWriter::create(&self.dir, self.pair + 1, self.max_size, stage) {
            Ok(w) => {
                *self = w;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Appends `entries` from `site` (to a new pair first if this one is full), then makes
    /// both files durable. Returns the pair and the RT1 end after the batch. When it fails,
    /// nothing of the batch counts: the next batch is written where this one started.
    pub fn append(&mut self, site: &str, entries: &[WireEntry]) -> Result<(u64, u64), RtError> {
        if entries.is_empty() {
            return Ok(self.end());
        }
        if self.rt1_len > HEADER_LEN
            && (self.rt2_len >= self.max_size || self.rt1_len >= self.max_size)
        {
            self.rotate()?;
        }
        let res = self.append_here(site, entries);
        if res.is_err() {
            // Best effort (a shrinking truncate needs no space): what the failed batch wrote
            // past the last whole record goes.
            let _ = self.rt1.set_len(self.rt1_len);
        }
        res
    }

    fn append_here(&mut self, site: &str, entries: &[WireEntry]) -> Result<(u64, u64), RtError> {
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
        // And now this batch is (it is acknowledged next): damage in it is not a torn tail
        // either. Durable with the next batch; a power loss before that leaves the header at
        // the batch's start, and the batch itself whole, as it was synced.
        self.rt1
            .write_all_at(&self.rt1_len.to_le_bytes(), COMMITTED_OFFSET)
            .map_err(io_err(&p1))?;
        Ok(self.end())
    }
}

/// The reading side of one pair, for the router process.
#[derive(Debug)]
pub struct RtPair {
    /// Pair number.
    pub n: u64,
    /// Its format.
    pub version: u32,
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
        let (version, _) = check_header(&rt1_path, &rt1, RT1_MAGIC, n)?;
        let rt2 = match File::open(&rt2_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RtError::Corrupt {
                    path: rt2_path,
                    offset: 0,
                    reason: "the file is missing".into(),
                })
            }
            Err(e) => return Err(io_err(&rt2_path)(e)),
        };
        check_header(&rt2_path, &rt2, RT2_MAGIC, n)?;
        Ok(RtPair {
            n,
            version,
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
        let (stop, reason) = scan(&self.rt1, self.version, from, end, |off, r| {
            out.push((off, r))
        })
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
    /// `limit`: the end of the data of the records published so far). Not checked: see
    /// [`RtRecord::check_data`].
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
            .write_all_at(&[complete_flag(self.version)], offset + FLAG_OFFSET)
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
        let mut w = RtWriter::open(dir.path(), 3 * RT2_ALIGN, 1).unwrap();
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
        let mut w = RtWriter::open(dir.path(), 1 << 20, 1).unwrap();
        w.append("s", &[entry(0, b"aaaa")]).unwrap();
        let (_, good) = w.append("s", &[entry(1, b"bbbb")]).unwrap();
        w.append("s", &[entry(2, b"cccc")]).unwrap();
        drop(w);
        let p1 = rt1_path(dir.path(), 1);
        // A power loss during the third batch: its bytes torn, the header still at its start.
        let mut full = std::fs::read(&p1).unwrap();
        set_committed(&mut full, good);
        for cut in good as usize..full.len() {
            std::fs::write(&p1, &full[..cut]).unwrap();
            let w = RtWriter::open(dir.path(), 1 << 20, 1).unwrap();
            assert_eq!(w.end(), (1, good), "cut at {cut}");
        }
    }

    #[test]
    fn damage_before_the_committed_end_is_not_cut_as_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RtWriter::open(dir.path(), 1 << 20, 1).unwrap();
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
        let e = RtWriter::open(dir.path(), 1 << 20, 1).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("corrupt at offset {HEADER_LEN}")),
            "{msg}"
        );
        assert!(msg.contains("acknowledged"), "{msg}");
        assert_eq!(std::fs::read(&p1).unwrap(), b);
        // The same damage in the last batch, acknowledged too (the finding: it was cut as a
        // torn tail, and acknowledged entries lost), is refused the same way.
        let mut b = full.clone();
        let last = b.len() - 10;
        b[last] ^= 4;
        std::fs::write(&p1, &b).unwrap();
        let e = RtWriter::open(dir.path(), 1 << 20, 1).unwrap_err();
        assert!(e.to_string().contains("acknowledged"), "{e}");
        // Damage past the committed end (a batch the power loss cut: never acknowledged) is a
        // torn tail.
        let mut b = full.clone();
        set_committed(&mut b, first);
        b[last] ^= 4;
        std::fs::write(&p1, &b).unwrap();
        let w = RtWriter::open(dir.path(), 1 << 20, 1).unwrap();
        assert!(w.end().1 >= first && w.end().1 < full.len() as u64);
    }

    /// Sets the committed end in the RT1 header bytes `b`.
    fn set_committed(b: &mut [u8], end: u64) {
        b[COMMITTED_OFFSET as usize..COMMITTED_OFFSET as usize + 8]
            .copy_from_slice(&end.to_le_bytes());
    }

    #[test]
    fn a_flipped_bit_in_the_middle_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RtWriter::open(dir.path(), 1 << 20, 1).unwrap();
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

    /// A format-2 encoding of `r` (84-byte fixed part, no data checksum, flag 0/1).
    fn encode_v2(r: &RtRecord) -> Vec<u8> {
        let mut v3 = Vec::new();
        r.encode_into(&mut v3);
        let mut b: Vec<u8> = v3[..84].iter().chain(&v3[88..]).copied().collect();
        let len = b.len() as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        b[8] = u8::from(r.complete);
        let crc = crc32fast::hash(&b[9..]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn a_changed_byte_of_data_fails_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RtWriter::open(dir.path(), 1 << 20, 1).unwrap();
        w.append("s", &[entry(0, b"the data as it arrived")])
            .unwrap();
        let p = RtPair::open(dir.path(), 1).unwrap();
        let recs = p.records(HEADER_LEN, p.rt1_len().unwrap()).unwrap();
        let r = &recs[0].1;
        assert_eq!(r.data_crc, Some(crc32fast::hash(b"the data as it arrived")));
        let limit = r.rt2_offset + r.data_len;
        let mut ahead = direct::ReadAhead::default();
        r.check_data(p.data(r, &mut ahead, limit).unwrap()).unwrap();
        // One flipped byte in RT2.
        let p2 = rt2_path(dir.path(), 1);
        let mut b = std::fs::read(&p2).unwrap();
        b[r.rt2_offset as usize + 4] ^= 0x20;
        std::fs::write(&p2, &b).unwrap();
        let p = RtPair::open(dir.path(), 1).unwrap();
        let mut ahead = direct::ReadAhead::default();
        let e = r
            .check_data(p.data(r, &mut ahead, limit).unwrap())
            .unwrap_err();
        assert!(e.contains("checksum mismatch"), "{e}");
        assert!(r.check_data(b"short").is_err());
    }

    #[test]
    fn a_flipped_bit_in_the_flag_is_damage_and_the_survey_keeps_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RtWriter::open(dir.path(), 1 << 20, 1).unwrap();
        w.append("s", &[entry(0, b"a"), entry(1, b"b")]).unwrap();
        let p = RtPair::open(dir.path(), 1).unwrap();
        let recs = p.records(HEADER_LEN, p.rt1_len().unwrap()).unwrap();
        p.mark_complete(recs[0].0).unwrap();
        let p1 = rt1_path(dir.path(), 1);
        let mut b = std::fs::read(&p1).unwrap();
        assert_eq!(b[(recs[0].0 + FLAG_OFFSET) as usize], 0xFF);
        // Pending → "complete" by one bit is not possible: 0x00 ^ 0x01 is no valid flag.
        b[(recs[1].0 + FLAG_OFFSET) as usize] ^= 0x01;
        std::fs::write(&p1, &b).unwrap();
        let e = p.records(HEADER_LEN, b.len() as u64).unwrap_err();
        assert!(e.to_string().contains("bad complete flag"), "{e}");
        let sv = survey(dir.path(), 1).unwrap();
        assert!(sv.holes.is_empty(), "{:?}", sv.holes);
        assert_eq!(sv.records.len(), 1);
        assert_eq!(sv.unsure.len(), 1);
        assert_eq!(sv.unsure[0].1.name, b"/p/f1");
        assert_eq!(sv.first_damage(u64::MAX).unwrap().0, recs[1].0);
    }

    #[test]
    fn a_damaged_flag_in_the_last_batch_is_not_cut_as_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RtWriter::open(dir.path(), 1 << 20, 1).unwrap();
        w.append("s", &[entry(0, b"a")]).unwrap();
        let (_, end) = w.append("s", &[entry(1, b"b")]).unwrap();
        drop(w);
        let p1 = rt1_path(dir.path(), 1);
        let mut b = std::fs::read(&p1).unwrap();
        let last = b.len() - (RECORD_FIXED + 1 + 5);
        b[last + FLAG_OFFSET as usize] = 0x7f;
        std::fs::write(&p1, &b).unwrap();
        let e = RtWriter::open(dir.path(), 1 << 20, 1).unwrap_err();
        assert!(matches!(e, RtError::Acknowledged { .. }), "{e}");
        assert_eq!(std::fs::read(&p1).unwrap().len() as u64, end);
    }

    #[test]
    fn the_survey_reads_past_a_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RtWriter::open(dir.path(), 1 << 20, 1).unwrap();
        w.append("s", &[entry(0, b"a"), entry(1, b"b"), entry(2, b"c")])
            .unwrap();
        let p1 = rt1_path(dir.path(), 1);
        let mut b = std::fs::read(&p1).unwrap();
        let second = HEADER_LEN as usize + RECORD_FIXED + 1 + 5;
        b[second + 20] ^= 0xff;
        std::fs::write(&p1, &b).unwrap();
        let sv = survey(dir.path(), 1).unwrap();
        let names: Vec<&[u8]> = sv.records.iter().map(|(_, r)| &r.name[..]).collect();
        assert_eq!(names, vec![&b"/p/f0"[..], b"/p/f2"]);
        assert_eq!(sv.holes.len(), 1);
        assert_eq!(sv.holes[0].from, second as u64);
        assert_eq!(sv.holes[0].to, sv.records[1].0);
        assert!(sv.holes[0].reason.contains("CRC"), "{:?}", sv.holes);
        // A damaged header is an error of its own.
        b[3] ^= 1;
        std::fs::write(&p1, &b).unwrap();
        assert!(matches!(
            survey(dir.path(), 1),
            Err(RtError::Corrupt { offset: 0, .. })
        ));
    }

    #[test]
    fn format_2_pairs_are_read_and_never_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        // A pair written by the previous version: header of format 2, records of 84 bytes.
        let mut h1 = header(RT1_MAGIC, 1);
        h1[8..12].copy_from_slice(&FORMAT_V2.to_le_bytes());
        let mut h2 = [0u8; RT2_ALIGN as usize];
        h2[..HEADER_LEN as usize].copy_from_slice(&header(RT2_MAGIC, 1));
        h2[8..12].copy_from_slice(&FORMAT_V2.to_le_bytes());
        let mut rt2 = h2.to_vec();
        let mut rt1 = h1.to_vec();
        for (i, data) in [&b"old one"[..], b"old two"].iter().enumerate() {
            let mut r = RtRecord::from_wire("s", &entry(i as u64, data), rt2.len() as u64);
            r.complete = i == 0;
            rt2.extend_from_slice(data);
            rt1.extend_from_slice(&encode_v2(&r));
        }
        let committed = (rt1.len() as u64).to_le_bytes();
        std::fs::write(rt1_path(dir.path(), 1), &rt1).unwrap();
        std::fs::write(rt2_path(dir.path(), 1), &rt2).unwrap();
        let mut f = OpenOptions::new()
            .write(true)
            .open(rt1_path(dir.path(), 1))
            .unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(COMMITTED_OFFSET)).unwrap();
        std::io::Write::write_all(&mut f, &committed[..]).unwrap();
        drop(f);
        let p = RtPair::open(dir.path(), 1).unwrap();
        assert_eq!(p.version, FORMAT_V2);
        let recs = p.records(HEADER_LEN, p.rt1_len().unwrap()).unwrap();
        assert_eq!(recs.len(), 2);
        assert!(recs[0].1.complete && !recs[1].1.complete);
        assert_eq!(recs[1].1.data_crc, None);
        let mut ahead = direct::ReadAhead::default();
        let limit = rt2.len() as u64;
        let data = p.data(&recs[1].1, &mut ahead, limit).unwrap();
        assert_eq!(data, b"old two");
        recs[1].1.check_data(data).unwrap();
        p.mark_complete(recs[1].0).unwrap();
        assert!(
            p.records(HEADER_LEN, p.rt1_len().unwrap()).unwrap()[1]
                .1
                .complete
        );
        // The writer starts pair 2, in format 3.
        let mut w = RtWriter::open(dir.path(), 1 << 20, 1).unwrap();
        assert_eq!(w.end().0, 2);
        w.append("s", &[entry(5, b"new")]).unwrap();
        assert_eq!(RtPair::open(dir.path(), 2).unwrap().version, FORMAT_VERSION);
    }

    #[test]
    fn new_pairs_skip_used_numbers_and_a_cut_creation_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let w = RtWriter::open(dir.path(), 1 << 20, 7).unwrap();
        assert_eq!(w.end(), (7, HEADER_LEN));
        drop(w);
        let mut w = RtWriter::open(dir.path(), 1 << 20, 9).unwrap();
        assert_eq!(w.end().0, 9);
        w.append("s", &[entry(0, b"x")]).unwrap();
        drop(w);
        assert_eq!(list_pairs(dir.path()).unwrap(), vec![7, 9]);
        // A pair whose header never reached the disk.
        std::fs::write(rt1_path(dir.path(), 10), [0u8; 5]).unwrap();
        let w = RtWriter::open(dir.path(), 1 << 20, 1).unwrap();
        assert_eq!(w.end(), (10, HEADER_LEN));
        assert!(RtPair::open(dir.path(), 10).is_ok());
    }
}
