//! Journal entries: one recorded change to a selected file (seeds/002 Figure 7).
//!
//! Every entry has the source name (the full path as the user sees it: the rule's fixed prefix
//! followed by the matched remainder), the CRC of the rule that selected it, a command, an
//! offset, a size, an auxiliary name and data. How each command uses the fields:
//!
//! | command | offset | size | aux | data |
//! | --- | --- | --- | --- | --- |
//! | `Write` | file offset | data length | – | the bytes written |
//! | `Truncate` | – | new length | – | – |
//! | `Create` | `st_mode` | – | – | – |
//! | `Delete` | – | – | – | – |
//! | `Rename` | – | – | new source name | – |
//! | `Mkdir` | `st_mode` | – | – | – |
//! | `Rmdir` | – | – | – | – |
//! | `Symlink` | – | – | link target | – |
//! | `Link` | – | – | new source name | – |
//! | `SetAttr` | – | – | – | [`AttrChange`] encoding |
//! | `SetXattr` | – | – | attribute name | value |
//! | `RemoveXattr` | – | – | attribute name | – |
//! | `Copy` | – | – | – | – (the sender reads the file) |
//! | `Zero` | file offset | length | – | – (a punched hole) |
//! | `Mknod` | `st_mode` | `rdev` | – | – |
//! | `Mark` | watermark time (ns) | flags: bit 0 = clean unmount | – | – (local: never sent) |
//! | `Reconcile` | – | – | – | – (the sender lists the directory; see below) |
//!
//! `Mark` is the journal's own record of how far it is complete: every change with a ctime
//! before the mark's time has its entries before the mark (see `fs::watermark`). `Reconcile`
//! names a directory whose entries may have changed unseen; the sender sends its listing
//! ([`Listing`]) in parts, and the router makes the backup directory hold the same names:
//! extra backup names are deleted, missing or different ones are asked for.

use std::fmt;

/// The longest name an entry carries, in bytes: its source name, and its second name (the new
/// name of a rename or link, a symlink's target, an attribute's name). 65,535: the journal's
/// 16-bit length field. The wire (`wire::msg::MAX_NAME_LEN`) and the router's RT1 take the
/// same, so whatever is journaled reaches the router. A change to a selected file whose name is
/// longer is refused before it is made (`ENAMETOOLONG`, and an error logged): ext4 holds
/// paths of any length, but a full name this long is beyond what the journal records.
pub const MAX_NAME_LEN: usize = u16::MAX as usize;

/// What an entry asks the backup to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum Command {
    /// Write `data` at `offset`.
    Write = 1,
    /// Set the length to `size`.
    Truncate = 2,
    /// Create an empty file with mode `offset`.
    Create = 3,
    /// Delete (or rename with the delete suffix).
    Delete = 4,
    /// Rename to `aux` (both names inside the same rule).
    Rename = 5,
    /// Make a directory with mode `offset`.
    Mkdir = 6,
    /// Remove a directory.
    Rmdir = 7,
    /// Make a symlink pointing at `aux`.
    Symlink = 8,
    /// Hard-link the file to the new name `aux`.
    Link = 9,
    /// Change mode, owner or times (see [`AttrChange`]).
    SetAttr = 10,
    /// Set extended attribute `aux` to `data`.
    SetXattr = 11,
    /// Remove extended attribute `aux`.
    RemoveXattr = 12,
    /// Send the whole file (or subtree) as it is now.
    Copy = 13,
    /// Zero `size` bytes at `offset` (a punched hole).
    Zero = 14,
    /// Make a special file (fifo) with mode `offset`, device `size`.
    Mknod = 15,
    /// The journal's watermark (local to the source, never sent): every change made before
    /// time `offset` (ns) has its entries before this one; `size` bit 0: a clean unmount.
    Mark = 16,
    /// Bring the backup directory `name` to the names the source has (a [`Listing`] part).
    Reconcile = 17,
    /// Never in the journal, only on the wire and in router logs, as a part of a copy: the
    /// `size` bytes at `offset` are what the backup file holds there already (a copy that
    /// compared block checksums, [`crate::blocksums`]); `data` is the run's sum
    /// ([`crate::blocksums::Tree::run`]), which the router checks before it uses them.
    Ref = 18,
}

/// `Mark` flag: written at a clean unmount.
pub const MARK_CLEAN: u64 = 1;
/// `Copy` flag (in `offset`): a file whose state is what its last acknowledged copy read is
/// skipped without being read (`mirror-ctl sync`, not with `--checksum`). Never set by the
/// copies mirrorfs queues itself (a reconciliation after a crash, names the journal missed,
/// renames into a rule): they are made because entries may be missing, and an entry sent
/// after an earlier copy may have carried older data on top of it.
pub const COPY_QUICK: u64 = 1;

impl Command {
    /// All commands, in code order.
    pub const ALL: [Command; 18] = [
        Command::Write,
        Command::Truncate,
        Command::Create,
        Command::Delete,
        Command::Rename,
        Command::Mkdir,
        Command::Rmdir,
        Command::Symlink,
        Command::Link,
        Command::SetAttr,
        Command::SetXattr,
        Command::RemoveXattr,
        Command::Copy,
        Command::Zero,
        Command::Mknod,
        Command::Mark,
        Command::Reconcile,
        Command::Ref,
    ];

    /// The command with on-disk code `c`.
    pub fn from_u8(c: u8) -> Option<Command> {
        Command::ALL.get((c as usize).wrapping_sub(1)).copied()
    }

    /// Lower-case name, for logs and tools.
    pub fn name(self) -> &'static str {
        match self {
            Command::Write => "write",
            Command::Truncate => "truncate",
            Command::Create => "create",
            Command::Delete => "delete",
            Command::Rename => "rename",
            Command::Mkdir => "mkdir",
            Command::Rmdir => "rmdir",
            Command::Symlink => "symlink",
            Command::Link => "link",
            Command::SetAttr => "setattr",
            Command::SetXattr => "setxattr",
            Command::RemoveXattr => "removexattr",
            Command::Copy => "copy",
            Command::Zero => "zero",
            Command::Mknod => "mknod",
            Command::Mark => "mark",
            Command::Reconcile => "reconcile",
            Command::Ref => "ref",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An entry that owns its bytes (what readers return).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What to do.
    pub command: Command,
    /// CRC of the rule that selected the name.
    pub rule_crc: u32,
    /// Full source name as the user sees it.
    pub name: Vec<u8>,
    /// Second name or text (see the table in the module docs).
    pub aux: Vec<u8>,
    /// Offset or mode.
    pub offset: u64,
    /// Size, length or device.
    pub size: u64,
    /// When the change was recorded (ns since the Unix epoch).
    pub time_ns: u64,
    /// Data bytes.
    pub data: Vec<u8>,
}

/// An entry that borrows its bytes (what writers append, without copying the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// See [`Entry::command`].
    pub command: Command,
    /// See [`Entry::rule_crc`].
    pub rule_crc: u32,
    /// See [`Entry::name`].
    pub name: &'a [u8],
    /// See [`Entry::aux`].
    pub aux: &'a [u8],
    /// See [`Entry::offset`].
    pub offset: u64,
    /// See [`Entry::size`].
    pub size: u64,
    /// See [`Entry::time_ns`].
    pub time_ns: u64,
    /// See [`Entry::data`].
    pub data: &'a [u8],
}

impl<'a> EntryRef<'a> {
    /// An entry with only a command, rule and name; the other fields empty and the time now.
    pub fn new(command: Command, rule_crc: u32, name: &'a [u8]) -> Self {
        EntryRef {
            command,
            rule_crc,
            name,
            aux: &[],
            offset: 0,
            size: 0,
            time_ns: crate::now_ns(),
            data: &[],
        }
    }
    /// Copies into an owned [`Entry`].
    pub fn to_owned(&self) -> Entry {
        Entry {
            command: self.command,
            rule_crc: self.rule_crc,
            name: self.name.to_vec(),
            aux: self.aux.to_vec(),
            offset: self.offset,
            size: self.size,
            time_ns: self.time_ns,
            data: self.data.to_vec(),
        }
    }
}

impl Entry {
    /// Borrows as an [`EntryRef`].
    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            command: self.command,
            rule_crc: self.rule_crc,
            name: &self.name,
            aux: &self.aux,
            offset: self.offset,
            size: self.size,
            time_ns: self.time_ns,
            data: &self.data,
        }
    }
}

/// A point in time as stored in entries: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timestamp {
    /// Seconds (may be negative).
    pub sec: i64,
    /// Nanoseconds, below 1e9.
    pub nsec: u32,
}

/// The attributes a `SetAttr` entry changes; absent fields stay as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttrChange {
    /// Permission bits (the low 12 bits of `st_mode`).
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Access time.
    pub atime: Option<Timestamp>,
    /// Modification time.
    pub mtime: Option<Timestamp>,
}

/// Length of an [`AttrChange`] encoding.
pub const ATTR_CHANGE_LEN: usize = 40;

impl AttrChange {
    /// Little-endian: `mask u32, mode u32, uid u32, gid u32, atime_sec i64, atime_nsec u32,
    /// mtime_sec i64, mtime_nsec u32`; mask bits 0..4 say which fields are present.
    pub fn encode(&self) -> [u8; ATTR_CHANGE_LEN] {
        let mut b = [0u8; ATTR_CHANGE_LEN];
        let mut mask = 0u32;
        let bit = |present: bool, n: u32, mask: &mut u32| {
            if present {
                *mask |= 1 << n
            }
        };
        bit(self.mode.is_some(), 0, &mut mask);
        bit(self.uid.is_some(), 1, &mut mask);
        bit(self.gid.is_some(), 2, &mut mask);
        bit(self.atime.is_some(), 3, &mut mask);
        bit(self.mtime.is_some(), 4, &mut mask);
        b[0..4].copy_from_slice(&mask.to_le_bytes());
        b[4..8].copy_from_slice(&self.mode.unwrap_or(0).to_le_bytes());
        b[8..12].copy_from_slice(&self.uid.unwrap_or(0).to_le_bytes());
        b[12..16].copy_from_slice(&self.gid.unwrap_or(0).to_le_bytes());
        let a = self.atime.unwrap_or_default();
        let m = self.mtime.unwrap_or_default();
        b[16..24].copy_from_slice(&a.sec.to_le_bytes());
        b[24..28].copy_from_slice(&a.nsec.to_le_bytes());
        b[28..36].copy_from_slice(&m.sec.to_le_bytes());
        b[36..40].copy_from_slice(&m.nsec.to_le_bytes());
        b
    }

    /// Decodes [`AttrChange::encode`]'s output; `None` if the length or a field is invalid.
    pub fn decode(b: &[u8]) -> Option<AttrChange> {
        if b.len() != ATTR_CHANGE_LEN {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let i64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            i64::from_le_bytes(a)
        };
        let mask = u32_at(0);
        if mask & !0x1f != 0 {
            return None;
        }
        let has = |n: u32| mask & (1 << n) != 0;
        let ts = |s: usize, n: usize| {
            let nsec = u32_at(n);
            (nsec < 1_000_000_000).then_some(Timestamp {
                sec: i64_at(s),
                nsec,
            })
        };
        Some(AttrChange {
            mode: has(0).then(|| u32_at(4)),
            uid: has(1).then(|| u32_at(8)),
            gid: has(2).then(|| u32_at(12)),
            atime: if has(3) { Some(ts(16, 24)?) } else { None },
            mtime: if has(4) { Some(ts(28, 36)?) } else { None },
        })
    }
}

/// What a directory holds, as a `Reconcile` entry carries it: for each name (in byte order),
/// its kind, size and modification time.
///
/// Encoding (little-endian): `count u32`, then per name `kind u8` (b'f' file, b'd' directory,
/// b'l' symlink, b'p' fifo), `size u64`, `mtime_sec i64`, `mtime_nsec u32`, `len u16`, `name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The names, in byte order.
    pub names: Vec<Listed>,
}

/// One name of a [`Listing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// One component: no `/`, not `.` or `..`, no NUL.
    pub name: Vec<u8>,
    /// b'f', b'd', b'l' or b'p'.
    pub kind: u8,
    /// Size in bytes (files).
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
}

impl Listed {
    /// The kind code of a directory entry of type `ft` (b'f', b'd', b'l', b'p'); `None` for
    /// what is not mirrored (sockets, devices).
    pub fn kind_of(ft: std::fs::FileType) -> Option<u8> {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_dir() {
            Some(b'd')
        } else if ft.is_file() {
            Some(b'f')
        } else if ft.is_symlink() {
            Some(b'l')
        } else if ft.is_fifo() {
            Some(b'p')
        } else {
            None
        }
    }
}

/// Bytes of a [`Listing`] part, at most (a larger directory is sent in several parts).
pub const LISTING_PART_BYTES: usize = 1 << 20;

impl Listing {
    /// The encoding above.
    pub fn encode(&self) -> Vec<u8> {
        let mut b =
            Vec::with_capacity(4 + self.names.iter().map(|n| 23 + n.name.len()).sum::<usize>());
        b.extend_from_slice(&(self.names.len() as u32).to_le_bytes());
        for n in &self.names {
            b.push(n.kind);
            b.extend_from_slice(&n.size.to_le_bytes());
            b.extend_from_slice(&n.mtime.sec.to_le_bytes());
            b.extend_from_slice(&n.mtime.nsec.to_le_bytes());
            b.extend_from_slice(&(n.name.len() as u16).to_le_bytes());
            b.extend_from_slice(&n.name);
        }
        b
    }

    /// Decodes [`Listing::encode`]'s output, checking every name is one safe component and
    /// the names are in strictly increasing order; `None` if anything is wrong.
    pub fn decode(b: &[u8]) -> Option<Listing> {
        let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
            let s = b.get(*at..at.checked_add(n)?)?;
            *at += n;
            Some(s)
        };
        let mut at = 0;
        let count = u32::from_le_bytes(take(&mut at, 4)?.try_into().ok()?) as usize;
        // Each name takes at least 24 bytes: a count beyond that is a lie.
        if count > b.len() / 24 {
            return None;
        }
        let mut names: Vec<Listed> = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = take(&mut at, 1)?[0];
            let size = u64::from_le_bytes(take(&mut at, 8)?.try_into().ok()?);
            let sec = i64::from_le_bytes(take(&mut at, 8)?.try_into().ok()?);
            let nsec = u32::from_le_bytes(take(&mut at, 4)?.try_into().ok()?);
            let len = u16::from_le_bytes(take(&mut at, 2)?.try_into().ok()?) as usize;
            let name = take(&mut at, len)?.to_vec();
            let safe = !name.is_empty()
                && name != b"."
                && name != b".."
                && !name.contains(&b'/')
                && !name.contains(&0);
            let ordered = names.last().is_none_or(|p| p.name < name);
            if !safe || !ordered || nsec >= 1_000_000_000 || !b"fdlp".contains(&kind) {
                return None;
            }
            names.push(Listed {
                name,
                kind,
                size,
                mtime: Timestamp { sec, nsec },
            });
        }
        (at == b.len()).then_some(Listing { names })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_codes_round_trip() {
        for c in Command::ALL {
            assert_eq!(Command::from_u8(c as u8), Some(c));
        }
        assert_eq!(Command::from_u8(0), None);
        assert_eq!(Command::from_u8(19), None);
    }

    #[test]
    fn listings_round_trip_and_refuse_unsafe_names() {
        let n = |name: &[u8], kind| Listed {
            name: name.to_vec(),
            kind,
            size: 7,
            mtime: Timestamp { sec: -1, nsec: 5 },
        };
        let l = Listing {
            names: vec![n(b"a", b'f'), n(b"b c", b'd'), n(b"z", b'l')],
        };
        assert_eq!(Listing::decode(&l.encode()), Some(l.clone()));
        assert_eq!(
            Listing::decode(&Listing::default().encode()),
            Some(Listing::default())
        );
        for bad in [&b".."[..], b".", b"a/b", b"", b"x\0"] {
            let l = Listing {
                names: vec![n(bad, b'f')],
            };
            assert_eq!(Listing::decode(&l.encode()), None, "{bad:?}");
        }
        let unordered = Listing {
            names: vec![n(b"b", b'f'), n(b"a", b'f')],
        };
        assert_eq!(Listing::decode(&unordered.encode()), None);
        let mut long = l.encode();
        long.push(0);
        assert_eq!(Listing::decode(&long), None);
        assert_eq!(Listing::decode(&[0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn attr_change_round_trip() {
        let a = AttrChange {
            mode: Some(0o4755),
            uid: None,
            gid: Some(7),
            atime: None,
            mtime: Some(Timestamp {
                sec: -3,
                nsec: 999_999_999,
            }),
        };
        assert_eq!(AttrChange::decode(&a.encode()), Some(a));
        assert_eq!(
            AttrChange::decode(&AttrChange::default().encode()),
            Some(AttrChange::default())
        );
        let mut bad = a.encode();
        bad[0] = 0xff;
        assert_eq!(AttrChange::decode(&bad), None);
        assert_eq!(AttrChange::decode(&bad[..10]), None);
    }
}
