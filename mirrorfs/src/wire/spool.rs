//! Spool files (seeds/000 claims 7-8): a site's stream of entries as sealed files that any
//! file-transfer tool carries, and the files that come back (`.ack`, `.requests`).
//!
//! A spool file is self-describing:
//!
//! ```text
//! header     512 bytes: magic "MIRSPOOL", format, flags (new stream), source site id,
//!            journal stream id, sequence number, total size, offsets of the configuration,
//!            of the control block and of the data, the previous file's hash, the last
//!            journal position it completes
//! config     one wire frame: the rules the entries were written under (`Msg::Config`)
//! control    72 bytes per entry: command, part, rule CRC, journal position, offset, size,
//!            time, and where its name, second name and data are in the data portion (a
//!            name as the bytes it shares with the name before it, and the rest)
//! data       names and data of the entries, one after the other
//! trailer    80 bytes: "MIRSPEND", BLAKE3-256 of everything before it (the file's hash,
//!            which the next file names as its previous), HMAC-SHA256 of that hash under
//!            the site's key, 8 bytes reserved
//! ```
//!
//! A reader checks the size, then the hash, then the MAC, before it decodes anything: a
//! truncated, damaged or forged file is refused whole. Files of one stream are numbered from 1
//! and chained by hash, so a gap, a reordering or a file swapped for another are seen; the
//! first file of a stream says so (a signed flag), and a coordinator refuses a stream it has
//! seen end, so old files cannot be replayed into a new stream.
//!
//! Acknowledgements and requests travel back as small text files, each line `KEY VALUE`,
//! closed by a `mac` line (HMAC-SHA256 under the same key of everything before it, with a
//! domain tag of its own, so that neither can pass for the other).

use crate::entry::Command;
use crate::journal::Position;
use crate::wire::auth::Key;
use crate::wire::codec;
use crate::wire::msg::{Msg, Part, WireEntry, WireRule};

/// The first bytes of every spool file.
pub const MAGIC: &[u8; 8] = b"MIRSPOOL";
/// The first bytes of the trailer.
pub const TRAILER_MAGIC: &[u8; 8] = b"MIRSPEND";
/// The format this code writes and reads.
pub const FORMAT: u32 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 512;
/// Bytes of one control-block record.
pub const CONTROL_LEN: usize = 72;
/// Bytes of the trailer.
pub const TRAILER_LEN: usize = 80;
/// A spool file's name ends so.
pub const SUFFIX: &str = ".spool";
/// Header flag: the first file of a journal stream.
const FLAG_NEW_STREAM: u32 = 1;
/// The largest spool file a reader takes (a file claiming more is refused unread): the
/// largest `--spool-size` and one frame more.
pub const MAX_FILE: u64 = (1 << 30) + (80 << 20);
/// Domain tags of the MACs.
const TAG_FILE: &[u8] = b"mirror-spool-file\0";
const TAG_ACK: &[u8] = b"mirror-spool-ack\0";
const TAG_REQUESTS: &[u8] = b"mirror-spool-requests\0";

/// Why a spool file (or an ack or requests file) is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpoolError {
    /// It does not start as a spool file does (a foreign or partial file).
    #[error("not a spool file")]
    NotSpool,
    /// A format this code does not know.
    #[error("spool format {0} (this program reads format {FORMAT})")]
    Format(u32),
    /// Shorter or longer than its header says.
    #[error("truncated or extended: {have} bytes, the header says {want}")]
    Size {
        /// Its size.
        have: u64,
        /// The size its header says.
        want: u64,
    },
    /// Its bytes are not those it was sealed with.
    #[error("checksum mismatch: the file is damaged")]
    Checksum,
    /// Not sealed with the site's key.
    #[error("MAC mismatch: not written with this site's key (forged, or the keys differ)")]
    Mac,
    /// Its parts do not fit together.
    #[error("malformed: {0}")]
    Malformed(String),
}

/// What a spool file's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The first file of its journal stream.
    pub new_stream: bool,
    /// The source site's id.
    pub site: String,
    /// The source's journal stream id.
    pub stream: u64,
    /// Its place in the stream's files, from 1.
    pub seq: u64,
    /// Its size in bytes, trailer included.
    pub total: u64,
    /// The hash of the file before it (zeros for the first of a stream).
    pub prev: [u8; 32],
    /// When it was sealed (Unix ns).
    pub sealed_ns: u64,
    /// The last journal position its entries complete, if any.
    pub last_complete: Option<Position>,
    config_off: u64,
    config_len: u64,
    control_off: u64,
    count: u64,
    data_off: u64,
    data_len: u64,
}

/// A spool file read and checked.
#[derive(Debug, Clone)]
pub struct SpoolFile {
    /// Its header.
    pub header: Header,
    /// The configuration version its entries were written under.
    pub config_version: u64,
    /// The rules of that version.
    pub rules: Vec<WireRule>,
    /// The entries, in stream order.
    pub entries: Vec<WireEntry>,
    /// Its hash (the next file's `prev`).
    pub hash: [u8; 32],
}

/// The name of file `seq` of `site`'s stream `stream`.
pub fn file_name(site: &str, stream: u64, seq: u64) -> String {
    format!("{site}.{stream:016x}.{seq:016}{SUFFIX}")
}

/// A spool file being filled: entries in memory until it is sealed.
#[derive(Debug)]
pub struct Builder {
    site: String,
    stream: u64,
    seq: u64,
    prev: [u8; 32],
    new_stream: bool,
    config_version: u64,
    rules: Vec<WireRule>,
    entries: Vec<WireEntry>,
    bytes: usize,
    last_complete: Option<Position>,
}

impl Builder {
    /// File `seq` of `site`'s stream `stream`, after the file whose hash is `prev` (the
    /// first of the stream when `new_stream`), under configuration `config_version`.
    pub fn new(
        site: &str,
        stream: u64,
        seq: u64,
        prev: [u8; 32],
        new_stream: bool,
        config_version: u64,
        rules: Vec<WireRule>,
    ) -> Builder {
        Builder {
            site: site.to_string(),
            stream,
            seq,
            prev,
            new_stream,
            config_version,
            rules,
            entries: Vec::new(),
            bytes: HEADER_LEN + TRAILER_LEN,
            last_complete: None,
        }
    }

    /// Adds an entry.
    pub fn push(&mut self, e: WireEntry) {
        self.bytes += CONTROL_LEN + e.name.len() + e.aux.len() + e.data.len();
        if e.part.completes() {
            self.last_complete = self.last_complete.max(Some(e.pos));
        }
        self.entries.push(e);
    }

    /// The last journal position its entries complete.
    pub fn last_complete(&self) -> Option<Position> {
        self.last_complete
    }

    /// The configuration version of its entries.
    pub fn config_version(&self) -> u64 {
        self.config_version
    }

    /// Its sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Entries in it.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// About the size it will have, without the configuration.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The sealed bytes, and their hash.
    pub fn seal(&self, key: &Key, sealed_ns: u64) -> Result<(Vec<u8>, [u8; 32]), SpoolError> {
        let config = codec::encode_frame(&Msg::Config {
            seq: 0,
            version: self.config_version,
            rules: self.rules.clone(),
        })
        .map_err(|e| SpoolError::Malformed(format!("configuration: {e}")))?;
        let config_off = HEADER_LEN as u64;
        let control_off = config_off + config.len() as u64;
        let data_off = control_off + (self.entries.len() * CONTROL_LEN) as u64;
        let mut control = Vec::with_capacity(self.entries.len() * CONTROL_LEN);
        let mut data = Vec::new();
        let mut prev: &[u8] = &[];
        for e in &self.entries {
            // A name is stored as what it shares with the one before, and the rest.
            let shared = shared_prefix(prev, &e.name);
            prev = &e.name;
            let at = data.len() as u64;
            data.extend_from_slice(&e.name[shared..]);
            data.extend_from_slice(&e.aux);
            data.extend_from_slice(&e.data);
            control.push(e.command as u8);
            control.push(e.part.code());
            control.extend_from_slice(&(shared as u16).to_le_bytes());
            control.extend_from_slice(&e.rule_crc.to_le_bytes());
            for v in [e.pos.segment, e.pos.offset, e.offset, e.size, e.time_ns, at] {
                control.extend_from_slice(&v.to_le_bytes());
            }
            control.extend_from_slice(&((e.name.len() - shared) as u32).to_le_bytes());
            control.extend_from_slice(&(e.aux.len() as u32).to_le_bytes());
            control.extend_from_slice(&(e.data.len() as u64).to_le_bytes());
        }
        let total = data_off + data.len() as u64 + TRAILER_LEN as u64;
        let last_complete = self.last_complete;
        let header = Header {
            new_stream: self.new_stream,
            site: self.site.clone(),
            stream: self.stream,
            seq: self.seq,
            total,
            prev: self.prev,
            sealed_ns,
            last_complete,
            config_off,
            config_len: config.len() as u64,
            control_off,
            count: self.entries.len() as u64,
            data_off,
            data_len: data.len() as u64,
        };
        let mut out = Vec::with_capacity(total as usize);
        out.extend_from_slice(&header.encode()?);
        out.extend_from_slice(&config);
        out.extend_from_slice(&control);
        out.extend_from_slice(&data);
        let hash: [u8; 32] = blake3::hash(&out).into();
        out.extend_from_slice(TRAILER_MAGIC);
        out.extend_from_slice(&hash);
        out.extend_from_slice(&key.tag(&[TAG_FILE, &hash]));
        out.extend_from_slice(&[0u8; TRAILER_LEN - 72]);
        Ok((out, hash))
    }
}

/// How many leading bytes `a` and `b` share (at most `u16::MAX`).
fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .take(u16::MAX as usize)
        .take_while(|(x, y)| x == y)
        .count()
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

impl Header {
    fn encode(&self) -> Result<[u8; HEADER_LEN], SpoolError> {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
        let flags = if self.new_stream { FLAG_NEW_STREAM } else { 0 };
        h[12..16].copy_from_slice(&flags.to_le_bytes());
        let (ls, lo) = self.last_complete.map_or((0, 0), |p| (p.segment, p.offset));
        let fields = [
            self.stream,
            self.seq,
            self.total,
            self.config_off,
            self.config_len,
            self.control_off,
            self.count,
            self.data_off,
            self.data_len,
            self.sealed_ns,
            ls,
            lo,
        ];
        for (i, v) in fields.iter().enumerate() {
            h[16 + i * 8..24 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        // 16 + 12 * 8 = 112
        h[112..144].copy_from_slice(&self.prev);
        let site = self.site.as_bytes();
        if site.len() > 255 {
            return Err(SpoolError::Malformed(
                "site id longer than 255 bytes".into(),
            ));
        }
        h[144] = site.len() as u8;
        h[145..145 + site.len()].copy_from_slice(site);
        Ok(h)
    }

    /// Reads a header (its fields only: nothing is checked against the rest of the file).
    pub fn decode(b: &[u8]) -> Result<Header, SpoolError> {
        if b.len() < 8 || &b[..8] != MAGIC {
            return Err(SpoolError::NotSpool);
        }
        if b.len() < HEADER_LEN {
            return Err(SpoolError::Size {
                have: b.len() as u64,
                want: HEADER_LEN as u64,
            });
        }
        let format = u32_at(b, 8);
        if format != FORMAT {
            return Err(SpoolError::Format(format));
        }
        let flags = u32_at(b, 12);
        let f = |i: usize| u64_at(b, 16 + i * 8);
        let mut prev = [0u8; 32];
        prev.copy_from_slice(&b[112..144]);
        let n = b[144] as usize;
        let site = std::str::from_utf8(&b[145..145 + n])
            .ok()
            .filter(|s| crate::wire::msg::valid_site_id(s))
            .ok_or_else(|| SpoolError::Malformed("the source site id is not valid".into()))?
            .to_string();
        let last = (f(10) != 0 || f(11) != 0).then(|| Position::new(f(10), f(11)));
        Ok(Header {
            new_stream: flags & FLAG_NEW_STREAM != 0,
            site,
            stream: f(0),
            seq: f(1),
            total: f(2),
            prev,
            sealed_ns: f(9),
            last_complete: last,
            config_off: f(3),
            config_len: f(4),
            control_off: f(5),
            count: f(6),
            data_off: f(7),
            data_len: f(8),
        })
    }
}

/// `body` (a header and what follows it) closed with a trailer under `key`, its header's total
/// size set to match: a file [`open`] checks as sealed whatever its body holds (the fuzz
/// target feeds the body's decoder so; a source holding the key can send any body too).
pub fn seal_body(body: &[u8], key: &Key) -> Vec<u8> {
    let mut out = body.to_vec();
    if out.len() >= 40 {
        let total = (out.len() + TRAILER_LEN) as u64;
        out[32..40].copy_from_slice(&total.to_le_bytes());
    }
    let hash: [u8; 32] = blake3::hash(&out).into();
    out.extend_from_slice(TRAILER_MAGIC);
    out.extend_from_slice(&hash);
    out.extend_from_slice(&key.tag(&[TAG_FILE, &hash]));
    out.extend_from_slice(&[0u8; TRAILER_LEN - 72]);
    out
}

/// The same file sealed under `key` instead, if it is not already (after a key was
/// corrected): its hash, and so its place in the chain, stay the same. None when it is sealed
/// under `key` already; an error when it is not a whole, undamaged spool file.
pub fn reseal(bytes: &[u8], key: &Key) -> Result<Option<Vec<u8>>, SpoolError> {
    let header = Header::decode(bytes)?;
    if bytes.len() as u64 != header.total || bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(SpoolError::Size {
            have: bytes.len() as u64,
            want: header.total,
        });
    }
    let body = bytes.len() - TRAILER_LEN;
    let hash: [u8; 32] = blake3::hash(&bytes[..body]).into();
    if bytes[body + 8..body + 40] != hash {
        return Err(SpoolError::Checksum);
    }
    if key.verify_truncated(&[TAG_FILE, &hash], &bytes[body + 40..body + 72]) {
        return Ok(None);
    }
    let mut out = bytes.to_vec();
    out[body + 40..body + 72].copy_from_slice(&key.tag(&[TAG_FILE, &hash]));
    Ok(Some(out))
}

/// The hash a file's trailer records (the next file's `prev`), without checking it.
pub fn recorded_hash(bytes: &[u8]) -> Option<[u8; 32]> {
    let body = bytes.len().checked_sub(TRAILER_LEN)?;
    bytes.get(body + 8..body + 40)?.try_into().ok()
}

/// Checks `bytes` as a spool file sealed with `key` (size, hash, MAC) and decodes it.
pub fn open(bytes: &[u8], key: &Key) -> Result<SpoolFile, SpoolError> {
    let header = Header::decode(bytes)?;
    let have = bytes.len() as u64;
    if have != header.total {
        return Err(SpoolError::Size {
            have,
            want: header.total,
        });
    }
    let body = (header.total as usize)
        .checked_sub(TRAILER_LEN)
        .filter(|&n| n >= HEADER_LEN)
        .ok_or_else(|| SpoolError::Malformed("shorter than a header and trailer".into()))?;
    let trailer = &bytes[body..];
    if &trailer[..8] != TRAILER_MAGIC {
        return Err(SpoolError::Checksum);
    }
    let hash: [u8; 32] = blake3::hash(&bytes[..body]).into();
    if trailer[8..40] != hash {
        return Err(SpoolError::Checksum);
    }
    if !key.verify_truncated(&[TAG_FILE, &hash], &trailer[40..72]) {
        return Err(SpoolError::Mac);
    }
    decode_body(bytes, body, header, hash)
}

fn decode_body(
    bytes: &[u8],
    body: usize,
    header: Header,
    hash: [u8; 32],
) -> Result<SpoolFile, SpoolError> {
    let bad = |what: &str| SpoolError::Malformed(what.to_string());
    let span = |off: u64, len: u64| -> Result<std::ops::Range<usize>, SpoolError> {
        let end = off
            .checked_add(len)
            .ok_or_else(|| bad("offsets overflow"))?;
        if off < HEADER_LEN as u64 || end > body as u64 {
            return Err(bad("a part lies outside the file"));
        }
        Ok(off as usize..end as usize)
    };
    let config = &bytes[span(header.config_off, header.config_len)?];
    let (config_version, rules) = match codec::read_frame(&mut &config[..]) {
        Ok(Msg::Config { version, rules, .. }) => (version, rules),
        Ok(other) => return Err(bad(&format!("configuration is a {}", other.kind()))),
        Err(e) => return Err(bad(&format!("configuration: {e}"))),
    };
    let control_len = header
        .count
        .checked_mul(CONTROL_LEN as u64)
        .ok_or_else(|| bad("entry count overflows"))?;
    let control = &bytes[span(header.control_off, control_len)?];
    let data = &bytes[span(header.data_off, header.data_len)?];
    let mut entries: Vec<WireEntry> = Vec::with_capacity(header.count.min(1 << 20) as usize);
    for r in control.chunks_exact(CONTROL_LEN) {
        let shared = u16::from_le_bytes([r[2], r[3]]) as usize;
        let command =
            Command::from_u8(r[0]).ok_or_else(|| bad(&format!("unknown command {}", r[0])))?;
        let part = Part::from_code(r[1]).ok_or_else(|| bad(&format!("unknown part {}", r[1])))?;
        let rule_crc = u32_at(r, 4);
        let v = |i: usize| u64_at(r, 8 + i * 8);
        let at = v(5);
        let name_len = u32_at(r, 56) as u64;
        let aux_len = u32_at(r, 60) as u64;
        let data_len = u64_at(r, 64);
        let take = |from: u64, len: u64| -> Result<Vec<u8>, SpoolError> {
            let end = from
                .checked_add(len)
                .filter(|&e| e <= data.len() as u64)
                .ok_or_else(|| bad("an entry's data lies outside the data portion"))?;
            Ok(data[from as usize..end as usize].to_vec())
        };
        let overflow = || bad("an entry's offsets overflow");
        let aux_at = at.checked_add(name_len).ok_or_else(overflow)?;
        let data_at = aux_at.checked_add(aux_len).ok_or_else(overflow)?;
        let mut name = match entries.last() {
            Some(p) if shared <= p.name.len() => p.name[..shared].to_vec(),
            None if shared == 0 => Vec::new(),
            _ => {
                return Err(bad(
                    "an entry shares more of its name than the one before has",
                ))
            }
        };
        name.extend_from_slice(&take(at, name_len)?);
        if name.len() > crate::entry::MAX_NAME_LEN {
            return Err(bad("a name longer than an entry may have"));
        }
        let aux = take(aux_at, aux_len)?;
        let payload = take(data_at, data_len)?;
        entries.push(WireEntry {
            pos: Position::new(v(0), v(1)),
            part,
            command,
            rule_crc,
            name,
            aux,
            offset: v(2),
            size: v(3),
            time_ns: v(4),
            data: payload,
        });
    }
    Ok(SpoolFile {
        header,
        config_version,
        rules,
        entries,
        hash,
    })
}

/// What a coordinator tells a source through `<source>.ack`: how far its spool files are
/// applied and durable in the router logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The source site.
    pub site: String,
    /// Its journal stream.
    pub stream: u64,
    /// The last spool file whose entries are durable in the router logs (0: none yet).
    pub seq: u64,
    /// The last journal position received completely.
    pub upto: Option<Position>,
    /// The position before which the router applied everything to the backup.
    pub applied: Option<Position>,
    /// Files refused since the coordinator started, with why (the newest few).
    pub refused: Vec<String>,
    /// When it was written (Unix seconds).
    pub time: u64,
}

/// One copy a coordinator asks of a source (`<source>.requests`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    /// Tells one request from another of the same name (when the router asked).
    pub id: u64,
    /// The rule's CRC.
    pub rule_crc: u32,
    /// The file (or rule base) to send whole.
    pub name: Vec<u8>,
}

/// The copies a coordinator asks of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requests {
    /// The source site.
    pub site: String,
    /// Its journal stream.
    pub stream: u64,
    /// The copies still pending.
    pub items: Vec<Request>,
}

fn pos_text(p: Option<Position>) -> String {
    p.map_or("-".into(), |p| p.to_string())
}

fn parse_pos(s: &str) -> Result<Option<Position>, SpoolError> {
    if s == "-" {
        return Ok(None);
    }
    s.parse().map(Some).map_err(SpoolError::Malformed)
}

/// Seals `body` (lines) with a `mac` line.
fn seal_text(key: &Key, tag: &[u8], body: String) -> String {
    let mac = key.tag(&[tag, body.as_bytes()]);
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("{body}mac {hex}\n")
}

/// The lines of a sealed text before its `mac` line, once the MAC is checked.
fn open_text<'a>(
    key: &Key,
    tag: &[u8],
    text: &'a str,
) -> Result<Vec<(&'a str, &'a str)>, SpoolError> {
    let Some(at) = text.rfind("mac ") else {
        return Err(SpoolError::Malformed(
            "no mac line (not written by a coordinator, or cut short)".into(),
        ));
    };
    let (body, mac) = text.split_at(at);
    let hex = mac["mac ".len()..].trim_end();
    let tag_bytes: Option<Vec<u8>> = (hex.len() == 64 && hex.is_ascii())
        .then(|| {
            (0..32)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .collect()
        })
        .flatten();
    let Some(tag_bytes) = tag_bytes else {
        return Err(SpoolError::Malformed(
            "the mac line is not 64 hex digits".into(),
        ));
    };
    if !key.verify_truncated(&[tag, body.as_bytes()], &tag_bytes) {
        return Err(SpoolError::Mac);
    }
    Ok(body
        .lines()
        .map(|l| l.split_once(' ').unwrap_or((l, "")))
        .collect())
}

fn field<'a>(lines: &[(&str, &'a str)], key: &str) -> Result<&'a str, SpoolError> {
    lines
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
        .ok_or_else(|| SpoolError::Malformed(format!("no {key} line")))
}

fn num(s: &str, what: &str) -> Result<u64, SpoolError> {
    s.parse()
        .map_err(|_| SpoolError::Malformed(format!("{what} {s:?} is not a number")))
}

fn hex_num(s: &str, what: &str) -> Result<u64, SpoolError> {
    u64::from_str_radix(s, 16)
        .map_err(|_| SpoolError::Malformed(format!("{what} {s:?} is not hexadecimal")))
}

impl Ack {
    /// Its text, sealed with `key`.
    pub fn encode(&self, key: &Key) -> String {
        let mut body = format!(
            "mirror-spool-ack 1\nsite {}\nstream {:016x}\nseq {}\nupto {}\napplied {}\ntime {}\n",
            self.site,
            self.stream,
            self.seq,
            pos_text(self.upto),
            pos_text(self.applied),
            self.time
        );
        for r in &self.refused {
            let line: String = r
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            body.push_str(&format!("refused {line}\n"));
        }
        seal_text(key, TAG_ACK, body)
    }

    /// Reads an ack sealed with `key`.
    pub fn decode(text: &str, key: &Key) -> Result<Ack, SpoolError> {
        let lines = open_text(key, TAG_ACK, text)?;
        if lines.first() != Some(&("mirror-spool-ack", "1")) {
            return Err(SpoolError::Malformed("not an ack of format 1".into()));
        }
        Ok(Ack {
            site: field(&lines, "site")?.to_string(),
            stream: hex_num(field(&lines, "stream")?, "stream")?,
            seq: num(field(&lines, "seq")?, "seq")?,
            upto: parse_pos(field(&lines, "upto")?)?,
            applied: parse_pos(field(&lines, "applied")?)?,
            refused: lines
                .iter()
                .filter(|(k, _)| *k == "refused")
                .map(|(_, v)| v.to_string())
                .collect(),
            time: num(field(&lines, "time")?, "time")?,
        })
    }
}

impl Requests {
    /// Its text, sealed with `key`.
    pub fn encode(&self, key: &Key) -> String {
        let mut body = format!(
            "mirror-spool-requests 1\nsite {}\nstream {:016x}\n",
            self.site, self.stream
        );
        for r in &self.items {
            body.push_str(&format!(
                "request {} {:08x} {}\n",
                r.id,
                r.rule_crc,
                crate::blocked::hex(&r.name)
            ));
        }
        seal_text(key, TAG_REQUESTS, body)
    }

    /// Reads requests sealed with `key`.
    pub fn decode(text: &str, key: &Key) -> Result<Requests, SpoolError> {
        let lines = open_text(key, TAG_REQUESTS, text)?;
        if lines.first() != Some(&("mirror-spool-requests", "1")) {
            return Err(SpoolError::Malformed("not requests of format 1".into()));
        }
        let mut items = Vec::new();
        for (_, v) in lines.iter().filter(|(k, _)| *k == "request") {
            let mut it = v.split(' ');
            let (Some(id), Some(crc), Some(name)) = (it.next(), it.next(), it.next()) else {
                return Err(SpoolError::Malformed(format!("request line {v:?}")));
            };
            let name = crate::blocked::unhex(name)
                .ok_or_else(|| SpoolError::Malformed(format!("request name {name:?}")))?;
            items.push(Request {
                id: num(id, "request id")?,
                rule_crc: hex_num(crc, "rule crc")? as u32,
                name,
            });
        }
        Ok(Requests {
            site: field(&lines, "site")?.to_string(),
            stream: hex_num(field(&lines, "stream")?, "stream")?,
            items,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key::from_hex(&format!("{b:02x}").repeat(32)).unwrap()
    }

    fn entry(i: u64) -> WireEntry {
        WireEntry {
            pos: Position::new(1, 100 + i),
            part: if i % 3 == 0 { Part::More } else { Part::Whole },
            command: Command::Write,
            rule_crc: 0xdead_beef,
            name: format!("/src/f{i}").into_bytes(),
            aux: if i % 2 == 0 {
                b"aux".to_vec()
            } else {
                Vec::new()
            },
            offset: i * 4096,
            size: i,
            time_ns: 1_000 + i,
            data: vec![i as u8; (i * 37 % 1000) as usize],
        }
    }

    fn sealed(k: &Key) -> (Vec<u8>, [u8; 32], Vec<WireEntry>) {
        let rules = vec![WireRule {
            crc: 0xdead_beef,
            pattern: "/src/**".into(),
            dest: "d".into(),
            attrs: false,
            delete_suffix: None,
        }];
        let mut b = Builder::new("src-a", 0x1234, 7, [9; 32], false, 3, rules);
        let entries: Vec<_> = (0..50).map(entry).collect();
        for e in &entries {
            b.push(e.clone());
        }
        let (bytes, hash) = b.seal(k, 42).unwrap();
        (bytes, hash, entries)
    }

    #[test]
    fn a_sealed_file_reads_back_as_written() {
        let k = key(1);
        let (bytes, hash, entries) = sealed(&k);
        let f = open(&bytes, &k).unwrap();
        assert_eq!(f.entries, entries);
        assert_eq!(f.hash, hash);
        assert_eq!(f.config_version, 3);
        assert_eq!(f.rules.len(), 1);
        assert_eq!(f.header.site, "src-a");
        assert_eq!((f.header.stream, f.header.seq), (0x1234, 7));
        assert_eq!(f.header.prev, [9; 32]);
        assert_eq!(f.header.total, bytes.len() as u64);
        assert_eq!(f.header.last_complete, Some(Position::new(1, 149)));
        assert!(!f.header.new_stream);
    }

    #[test]
    fn truncated_damaged_foreign_and_forged_files_are_refused() {
        let k = key(1);
        let (bytes, _, _) = sealed(&k);
        assert!(matches!(
            open(&bytes[..bytes.len() - 1], &k),
            Err(SpoolError::Size { .. })
        ));
        assert!(matches!(
            open(&bytes[..100], &k),
            Err(SpoolError::Size { .. })
        ));
        for at in [600, bytes.len() / 2, bytes.len() - 50] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert_eq!(
                open(&bad, &k).unwrap_err(),
                SpoolError::Checksum,
                "byte {at}"
            );
        }
        assert_eq!(open(&bytes, &key(2)).unwrap_err(), SpoolError::Mac);
        // Sealed again under the other key, it reads there, with the same hash.
        let again = reseal(&bytes, &key(2)).unwrap().unwrap();
        assert_eq!(
            open(&again, &key(2)).unwrap().hash,
            open(&bytes, &k).unwrap().hash
        );
        assert_eq!(reseal(&again, &key(2)).unwrap(), None);
        assert_eq!(recorded_hash(&again), Some(open(&bytes, &k).unwrap().hash));
        assert_eq!(open(b"hello world", &k).unwrap_err(), SpoolError::NotSpool);
        // A header changed and the hash made again still fails the MAC.
        let mut forged = bytes.clone();
        forged[16 + 8] ^= 1; // the sequence number
        let body = forged.len() - TRAILER_LEN;
        let hash: [u8; 32] = blake3::hash(&forged[..body]).into();
        forged[body + 8..body + 40].copy_from_slice(&hash);
        assert_eq!(open(&forged, &k).unwrap_err(), SpoolError::Mac);
    }

    #[test]
    fn acks_and_requests_round_trip_and_refuse_forgery() {
        let k = key(5);
        let a = Ack {
            site: "src-a".into(),
            stream: 77,
            seq: 12,
            upto: Some(Position::new(3, 4096)),
            applied: None,
            refused: vec!["x.spool: MAC mismatch\nsecond line".into()],
            time: 99,
        };
        let text = a.encode(&k);
        let back = Ack::decode(&text, &k).unwrap();
        assert_eq!(back.seq, 12);
        assert_eq!(back.upto, a.upto);
        assert_eq!(
            back.refused,
            vec!["x.spool: MAC mismatch second line".to_string()]
        );
        assert_eq!(Ack::decode(&text, &key(6)).unwrap_err(), SpoolError::Mac);
        let changed = text.replace("seq 12", "seq 13");
        assert_eq!(Ack::decode(&changed, &k).unwrap_err(), SpoolError::Mac);
        let r = Requests {
            site: "src-a".into(),
            stream: 77,
            items: vec![Request {
                id: 3,
                rule_crc: 0xabc,
                name: b"/src/a b\n".to_vec(),
            }],
        };
        let text = r.encode(&k);
        assert_eq!(Requests::decode(&text, &k).unwrap(), r);
        // An ack is not taken for requests (domain tags differ).
        assert!(Requests::decode(&a.encode(&k), &k).is_err());
        // A mac line of 64 bytes that are not hex digits (nor ASCII) is refused, not a panic.
        let odd = format!("mirror-spool-ack 1\nmac {}\n", "é".repeat(32));
        assert!(Ack::decode(&odd, &k).is_err());
    }

    #[test]
    fn a_sealed_body_with_offsets_that_overflow_is_refused() {
        let k = key(1);
        let (bytes, _, _) = sealed(&k);
        let mut body = bytes[..bytes.len() - TRAILER_LEN].to_vec();
        let h = Header::decode(&body).unwrap();
        // The first control record's data offset (at byte 48 of the record) near u64::MAX.
        let at = h.control_off as usize + 48;
        body[at..at + 8].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        let f = seal_body(&body, &k);
        assert!(matches!(open(&f, &k), Err(SpoolError::Malformed(_))));
    }
}
