//! The journal's on-disk format, byte for byte, with paired `encode_*`/`decode_*` helpers.
//!
//! A journal is a directory of segment files named `{segment:016}.journal`, numbered from 1.
//! All integers are little-endian.
//!
//! ## Segment header (64 bytes, at offset 0)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `MIRRJNL\0` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | flags: bit 0 = sealed |
//! | 16 | 8 | segment number |
//! | 24 | 8 | total size in bytes (sealed only, else 0) |
//! | 32 | 8 | offset of the record index (sealed only, else 0) |
//! | 40 | 8 | number of records (sealed only, else 0) |
//! | 48 | 8 | creation time, ns since the Unix epoch |
//! | 56 | 4 | reserved, 0 |
//! | 60 | 4 | CRC32 of bytes 0..60 |
//!
//! Records follow from offset 64. A segment is *sealed* when the writer rotates away from it:
//! the index is appended after the last record, then the header is rewritten with the sealed
//! flag, total size, index offset and record count (seeds/000 claims 7-8: a header giving the
//! total size and a pointer to the control block that lists each transaction).
//!
//! ## Record (52-byte fixed part, then the variable part)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `MJR1` |
//! | 4 | 4 | record length `len` (fixed part + name + aux + data) |
//! | 8 | 4 | CRC32 of bytes 0..8 and 12..len (the whole record but this field) |
//! | 12 | 1 | command code ([`Command`]) |
//! | 13 | 1 | flags, 0 |
//! | 14 | 2 | name length |
//! | 16 | 4 | rule CRC |
//! | 20 | 4 | aux length |
//! | 24 | 8 | offset |
//! | 32 | 8 | size |
//! | 40 | 8 | time, ns since the Unix epoch |
//! | 48 | 4 | data length |
//! | 52 | … | name, then aux, then data |
//!
//! ## Index (sealed segments, at the header's index offset)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `MJIX` |
//! | 4 | 4 | reserved, 0 |
//! | 8 | 8 | record count `n` |
//! | 16 | 8·n | offset of each record |
//! | 16+8n | 4 | CRC32 of the index bytes before it |

use crate::entry::{Command, Entry, EntryRef};

/// Segment header magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"MIRRJNL\0";
/// Format version written by this code.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the segment header; the first record starts here.
pub const SEGMENT_HEADER_LEN: u64 = 64;
/// Record magic.
pub const RECORD_MAGIC: [u8; 4] = *b"MJR1";
/// Length of a record's fixed part.
pub const RECORD_HEADER_LEN: usize = 52;
/// Index magic.
pub const INDEX_MAGIC: [u8; 4] = *b"MJIX";
/// Longest name or aux field (the 16-bit length fields; [`crate::entry::MAX_NAME_LEN`]).
pub const MAX_NAME_LEN: usize = crate::entry::MAX_NAME_LEN;
/// Largest data field accepted (writes are at most a few MiB; xattr values 64 KiB).
pub const MAX_DATA_LEN: usize = 64 << 20;
/// Largest whole record accepted.
pub const MAX_RECORD_LEN: usize = RECORD_HEADER_LEN + 2 * MAX_NAME_LEN + MAX_DATA_LEN;

/// Why bytes are not a valid record, header or index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than the structure needs (a torn tail, or data not yet written).
    #[error("truncated: {need} bytes needed, {have} present")]
    Truncated {
        /// Bytes the structure needs.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The magic number is wrong.
    #[error("bad magic")]
    BadMagic,
    /// The CRC does not match.
    #[error("CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc {
        /// The CRC in the bytes.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// A length field is impossible.
    #[error("bad length: {0}")]
    BadLength(&'static str),
    /// Unknown command code.
    #[error("unknown command code {0}")]
    BadCommand(u8),
    /// Unknown format version.
    #[error("format version {0} is not supported (this mirror reads version 1)")]
    BadVersion(u32),
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// The segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Segment number.
    pub segment: u64,
    /// Whether the segment is sealed (complete, with an index).
    pub sealed: bool,
    /// Total size (sealed only).
    pub total_size: u64,
    /// Offset of the index (sealed only).
    pub index_offset: u64,
    /// Number of records (sealed only).
    pub record_count: u64,
    /// Creation time.
    pub created_ns: u64,
}

impl SegmentHeader {
    /// A fresh, unsealed header.
    pub fn new(segment: u64) -> Self {
        SegmentHeader {
            segment,
            sealed: false,
            total_size: 0,
            index_offset: 0,
            record_count: 0,
            created_ns: crate::now_ns(),
        }
    }

    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(self.sealed as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.segment.to_le_bytes());
        b[24..32].copy_from_slice(&self.total_size.to_le_bytes());
        b[32..40].copy_from_slice(&self.index_offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.record_count.to_le_bytes());
        b[48..56].copy_from_slice(&self.created_ns.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks header bytes.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, FormatError> {
        let need = SEGMENT_HEADER_LEN as usize;
        if b.len() < need {
            return Err(FormatError::Truncated {
                need,
                have: b.len(),
            });
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let stored = u32_at(b, 60);
        let computed = crc32fast::hash(&b[0..60]);
        if stored != computed {
            return Err(FormatError::BadCrc { stored, computed });
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::BadVersion(version));
        }
        let h = SegmentHeader {
            sealed: u32_at(b, 12) & 1 != 0,
            segment: u64_at(b, 16),
            total_size: u64_at(b, 24),
            index_offset: u64_at(b, 32),
            record_count: u64_at(b, 40),
            created_ns: u64_at(b, 48),
        };
        if h.sealed && (h.index_offset < SEGMENT_HEADER_LEN || h.total_size < h.index_offset) {
            return Err(FormatError::BadLength(
                "sealed header with impossible index",
            ));
        }
        Ok(h)
    }
}

/// The total length of the record that would hold `e`.
pub fn record_len(e: &EntryRef<'_>) -> usize {
    RECORD_HEADER_LEN + e.name.len() + e.aux.len() + e.data.len()
}

/// Checks that `e` fits the format's limits.
pub fn check_limits(e: &EntryRef<'_>) -> Result<(), FormatError> {
    if e.name.len() > MAX_NAME_LEN {
        return Err(FormatError::BadLength("name longer than 65535 bytes"));
    }
    if e.aux.len() > MAX_NAME_LEN {
        return Err(FormatError::BadLength("aux longer than 65535 bytes"));
    }
    if e.data.len() > MAX_DATA_LEN {
        return Err(FormatError::BadLength("data longer than 64 MiB"));
    }
    Ok(())
}

/// The fixed part of the record for `e`, CRC included. The variable part is `e.name`,
/// `e.aux`, `e.data` in that order, so a writer can send all four with one `writev`.
/// Call [`check_limits`] first.
pub fn encode_record_header(e: &EntryRef<'_>) -> [u8; RECORD_HEADER_LEN] {
    let mut b = [0u8; RECORD_HEADER_LEN];
    b[0..4].copy_from_slice(&RECORD_MAGIC);
    b[4..8].copy_from_slice(&(record_len(e) as u32).to_le_bytes());
    b[12] = e.command as u8;
    b[13] = 0;
    b[14..16].copy_from_slice(&(e.name.len() as u16).to_le_bytes());
    b[16..20].copy_from_slice(&e.rule_crc.to_le_bytes());
    b[20..24].copy_from_slice(&(e.aux.len() as u32).to_le_bytes());
    b[24..32].copy_from_slice(&e.offset.to_le_bytes());
    b[32..40].copy_from_slice(&e.size.to_le_bytes());
    b[40..48].copy_from_slice(&e.time_ns.to_le_bytes());
    b[48..52].copy_from_slice(&(e.data.len() as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&b[0..8]);
    h.update(&b[12..]);
    h.update(e.name);
    h.update(e.aux);
    h.update(e.data);
    b[8..12].copy_from_slice(&h.finalize().to_le_bytes());
    b
}

/// The whole record for `e` in one buffer (tests, tools; writers use the header + `writev`).
pub fn encode_record(e: &EntryRef<'_>) -> Result<Vec<u8>, FormatError> {
    check_limits(e)?;
    let mut v = Vec::with_capacity(record_len(e));
    v.extend_from_slice(&encode_record_header(e));
    v.extend_from_slice(e.name);
    v.extend_from_slice(e.aux);
    v.extend_from_slice(e.data);
    Ok(v)
}

/// From the first bytes of a record: its total length, after checking magic and length fields.
/// Needs at least [`RECORD_HEADER_LEN`] bytes.
pub fn peek_record_len(b: &[u8]) -> Result<usize, FormatError> {
    if b.len() < RECORD_HEADER_LEN {
        return Err(FormatError::Truncated {
            need: RECORD_HEADER_LEN,
            have: b.len(),
        });
    }
    if b[0..4] != RECORD_MAGIC {
        return Err(FormatError::BadMagic);
    }
    let len = u32_at(b, 4) as usize;
    let name_len = u16_at(b, 14) as usize;
    let aux_len = u32_at(b, 20) as usize;
    let data_len = u32_at(b, 48) as usize;
    if aux_len > MAX_NAME_LEN {
        return Err(FormatError::BadLength("aux length over the limit"));
    }
    if data_len > MAX_DATA_LEN {
        return Err(FormatError::BadLength("data length over the limit"));
    }
    if len != RECORD_HEADER_LEN + name_len + aux_len + data_len {
        return Err(FormatError::BadLength(
            "record length disagrees with field lengths",
        ));
    }
    Ok(len)
}

/// Checks the record at the start of `b` (magic, lengths, CRC, command) and returns its length,
/// without copying anything.
pub fn verify_record(b: &[u8]) -> Result<usize, FormatError> {
    let len = peek_record_len(b)?;
    if b.len() < len {
        return Err(FormatError::Truncated {
            need: len,
            have: b.len(),
        });
    }
    let stored = u32_at(b, 8);
    let mut h = crc32fast::Hasher::new();
    h.update(&b[0..8]);
    h.update(&b[12..len]);
    let computed = h.finalize();
    if stored != computed {
        return Err(FormatError::BadCrc { stored, computed });
    }
    Command::from_u8(b[12]).ok_or(FormatError::BadCommand(b[12]))?;
    Ok(len)
}

/// The time and flags of a verified `Mark` record at the start of `b` (see
/// [`Command::Mark`]), or `None` for any other record. Call [`verify_record`] first.
pub fn peek_mark(b: &[u8]) -> Option<(u64, u64)> {
    (b.len() >= RECORD_HEADER_LEN && b[12] == Command::Mark as u8)
        .then(|| (u64_at(b, 24), u64_at(b, 32)))
}

/// Decodes one record from the start of `b`; returns it and its length.
///
/// Never panics and never allocates more than the bytes present.
pub fn decode_record(b: &[u8]) -> Result<(Entry, usize), FormatError> {
    let len = verify_record(b)?;
    let command = Command::from_u8(b[12]).ok_or(FormatError::BadCommand(b[12]))?;
    let name_len = u16_at(b, 14) as usize;
    let aux_len = u32_at(b, 20) as usize;
    let n0 = RECORD_HEADER_LEN;
    let a0 = n0 + name_len;
    let d0 = a0 + aux_len;
    Ok((
        Entry {
            command,
            rule_crc: u32_at(b, 16),
            name: b[n0..a0].to_vec(),
            aux: b[a0..d0].to_vec(),
            offset: u64_at(b, 24),
            size: u64_at(b, 32),
            time_ns: u64_at(b, 40),
            data: b[d0..len].to_vec(),
        },
        len,
    ))
}

/// The index bytes for records at `offsets`.
pub fn encode_index(offsets: &[u64]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + 8 * offsets.len());
    v.extend_from_slice(&INDEX_MAGIC);
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&(offsets.len() as u64).to_le_bytes());
    for o in offsets {
        v.extend_from_slice(&o.to_le_bytes());
    }
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

/// Parses index bytes (exactly the index, nothing after it) into record offsets.
pub fn decode_index(b: &[u8]) -> Result<Vec<u64>, FormatError> {
    if b.len() < 20 {
        return Err(FormatError::Truncated {
            need: 20,
            have: b.len(),
        });
    }
    if b[0..4] != INDEX_MAGIC {
        return Err(FormatError::BadMagic);
    }
    let n = u64_at(b, 8);
    let expect = n
        .checked_mul(8)
        .and_then(|x| x.checked_add(20))
        .ok_or(FormatError::BadLength("index count overflows"))?;
    if expect != b.len() as u64 {
        return Err(FormatError::BadLength(
            "index length disagrees with its count",
        ));
    }
    let body = b.len() - 4;
    let stored = u32_at(b, body);
    let computed = crc32fast::hash(&b[..body]);
    if stored != computed {
        return Err(FormatError::BadCrc { stored, computed });
    }
    Ok((0..n as usize).map(|i| u64_at(b, 16 + 8 * i)).collect())
}

/// The offset (relative to `b`) of the first valid record that starts in `b`, if any:
/// used to tell a torn tail (nothing valid after the damage) from damage in the middle.
pub fn find_valid_record(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    while from + RECORD_MAGIC.len() <= b.len() {
        let at = from + b[from..].windows(4).position(|w| w == RECORD_MAGIC)?;
        if verify_record(&b[at..]).is_ok() {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            command: Command::Rename,
            rule_crc: 0xdead_beef,
            name: b"/p/a/x".to_vec(),
            aux: b"/p/a/y".to_vec(),
            offset: 1 << 40,
            size: 77,
            time_ns: 123,
            data: vec![1, 2, 3],
        }
    }

    #[test]
    fn record_round_trip_and_every_bit_flip_is_caught() {
        let e = sample();
        let bytes = encode_record(&e.as_ref()).unwrap();
        assert_eq!(decode_record(&bytes).unwrap(), (e, bytes.len()));
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode_record(&b).is_err(), "flip of bit {i} went unnoticed");
        }
        for cut in 0..bytes.len() {
            assert!(matches!(
                decode_record(&bytes[..cut]),
                Err(FormatError::Truncated { .. } | FormatError::BadMagic)
            ));
        }
    }

    #[test]
    fn header_and_index_round_trip() {
        let mut h = SegmentHeader::new(9);
        assert_eq!(SegmentHeader::decode(&h.encode()).unwrap(), h);
        h.sealed = true;
        h.index_offset = 100;
        h.total_size = 140;
        h.record_count = 2;
        assert_eq!(SegmentHeader::decode(&h.encode()).unwrap(), h);
        let mut b = h.encode();
        b[20] ^= 4;
        assert!(matches!(
            SegmentHeader::decode(&b),
            Err(FormatError::BadCrc { .. })
        ));
        let idx = encode_index(&[64, 99, 1000]);
        assert_eq!(decode_index(&idx).unwrap(), vec![64, 99, 1000]);
        assert!(decode_index(&idx[..idx.len() - 1]).is_err());
    }
}
