//! The messages of the wire protocol (see the [module docs](super) for a session).

use serde::{Deserialize, Serialize};

use crate::entry::{Command, Entry};
use crate::journal::Position;

pub use super::restore::RestoreItem;

/// Bumped on any incompatible change to [`Msg`]. New variants at the end of [`Msg`] and
/// [`Role`] are compatible (every earlier message encodes as before): a peer that predates
/// them fails to decode only the new ones, so a new kind of session needs no bump (restore,
/// [`Role::Restore`], came so, and verify, [`Role::Verify`]).
///
/// Version 4: a source's stream may travel on many connections ([`Role::Join`],
/// [`Msg::Join`]): [`Msg::Entries`] and [`Msg::Config`] carry a stream-wide sequence number
/// (`seq`), and [`Msg::Welcome`] the token later connections join the session with; the
/// router tells how far a source's entries are applied ([`Msg::Applied`], sync rules).
///
/// Version 5: copies compare block checksums with the router first ([`Msg::Sums`]) and send
/// references to data the router holds ([`Command::Ref`]); the router says what it retains
/// ([`Msg::Retained`]). An older router would end every session at the first request.
pub const PROTOCOL_VERSION: u32 = 5;

/// Bytes of entries a source may have sent and not had acknowledged (its window); the
/// router's reorder buffer of a session on many connections is bounded by it
/// ([`MAX_REORDER_BYTES`]).
pub const STREAM_WINDOW: usize = 64 << 20;
/// Bytes a router holds out of order in one session, at most: the frames of the window sent
/// before the sender's last configuration request and those after it, and one frame over
/// each (one entry may exceed a frame's usual size). A sender that needs more breaks the
/// protocol.
pub const MAX_REORDER_BYTES: usize = 2 * STREAM_WINDOW + 2 * super::MAX_FRAME;
/// Connections of one session, at most.
pub const MAX_CONNECTIONS: usize = 64;

/// The most entries in one [`Msg::Entries`] frame.
pub const MAX_ENTRIES_PER_FRAME: usize = 4096;
/// The longest name (and second name or text) of an entry, in bytes: what the journal takes
/// ([`crate::entry::MAX_NAME_LEN`]; it was 8,192 before paths longer than `PATH_MAX` were
/// mirrored). Also the longest restore path and restored name.
pub const MAX_NAME_LEN: usize = crate::entry::MAX_NAME_LEN;
/// The longest site id.
pub const MAX_SITE_LEN: usize = 255;

/// Whether `s` can be a source site id: 1 to [`MAX_SITE_LEN`] ASCII letters, digits, `.`, `-`
/// and `_` (what host names use), not starting with `-`, and neither `.` nor `..`. A site id
/// is the default name of the site's directory on a router (its namespace), so it must be fit
/// for one; key files and logs separate words with spaces, so it has none.
pub fn valid_site_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SITE_LEN
        && s != "."
        && s != ".."
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Why `s` cannot be a source site id, for messages (see [`valid_site_id`]).
pub const SITE_ID_RULE: &str = "1 to 255 ASCII letters, digits, '.', '-' and '_', not starting with '-', and neither '.' nor '..'";
/// The most rules in one [`Msg::Config`].
pub const MAX_RULES: usize = 100_000;
/// The longest reason or other text in a message.
pub const MAX_TEXT_LEN: usize = 64 << 10;

/// What a session is for, as its hello says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Role {
    /// mirror-sendd: entries, configuration, acknowledgements.
    Source = 1,
    /// `mirror-ctl rule add`: one [`Msg::Validate`], then the session ends.
    Validate = 2,
    /// `mirror-ctl restore`: [`Msg::Restore`] requests, each answered with the backup
    /// ([`super::restore`]).
    Restore = 3,
    /// mirror-sendd, a further connection of a source session: one [`Msg::Join`] with the
    /// session's token, then frames of that session's stream.
    Join = 4,
    /// `mirror-ctl verify`: [`Msg::Verify`] listings and [`Msg::Sums`] questions, each
    /// answered from the backup ([`super::verify`]).
    Verify = 5,
}

/// Which part of a journal entry a [`WireEntry`] is.
///
/// A journal entry travels as one [`Part::Whole`], except a copy, which the sender expands into
/// many entries (writes, a final size, attributes) of which only the last says
/// [`Part::Last`]. The router counts a journal position as received only with its whole or
/// last part; [`Part::Extra`] entries answer a resynchronisation request and belong to no
/// journal position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Part {
    /// The whole journal entry.
    Whole,
    /// One part of an expanded copy; more follow with the same position.
    More,
    /// The last part of an expanded copy.
    Last,
    /// Not from the journal: the answer to [`Msg::Resync`].
    Extra,
}

impl Part {
    /// Whether this part completes its journal position.
    pub fn completes(self) -> bool {
        matches!(self, Part::Whole | Part::Last)
    }
    /// A one-byte code for on-disk records.
    pub fn code(self) -> u8 {
        match self {
            Part::Whole => 0,
            Part::More => 1,
            Part::Last => 2,
            Part::Extra => 3,
        }
    }
    /// The inverse of [`Part::code`].
    pub fn from_code(c: u8) -> Option<Part> {
        [Part::Whole, Part::More, Part::Last, Part::Extra]
            .get(c as usize)
            .copied()
    }
}

/// One entry on the wire: a journal entry (or part of an expanded copy) and its position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    /// Position of the journal entry it comes from.
    pub pos: Position,
    /// Which part of it.
    pub part: Part,
    /// See [`Entry`].
    pub command: Command,
    /// CRC of the rule.
    pub rule_crc: u32,
    /// Full source name.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Second name or text.
    #[serde(with = "serde_bytes")]
    pub aux: Vec<u8>,
    /// Offset or mode.
    pub offset: u64,
    /// Size, length or device.
    pub size: u64,
    /// When the change was recorded.
    pub time_ns: u64,
    /// Data.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl WireEntry {
    /// A whole journal entry.
    pub fn whole(pos: Position, e: Entry) -> WireEntry {
        WireEntry::from_entry(pos, Part::Whole, e)
    }

    /// `e` as part `part` of the entry at `pos`.
    pub fn from_entry(pos: Position, part: Part, e: Entry) -> WireEntry {
        WireEntry {
            pos,
            part,
            command: e.command,
            rule_crc: e.rule_crc,
            name: e.name,
            aux: e.aux,
            offset: e.offset,
            size: e.size,
            time_ns: e.time_ns,
            data: e.data,
        }
    }

    /// Approximate bytes on the wire (for windows and batch limits).
    pub fn wire_len(&self) -> usize {
        64 + self.name.len() + self.aux.len() + self.data.len()
    }
}

/// A rule as the router stores it (seeds/002 Figure 9, without the source site, which the
/// session names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRule {
    /// The rule's CRC (entries name their rule by it).
    pub crc: u32,
    /// Source pattern, as the user wrote it.
    pub pattern: String,
    /// Destination under the router's root.
    pub dest: String,
    /// Mirror attributes.
    pub attrs: bool,
    /// Delete suffix.
    pub delete_suffix: Option<String>,
}

/// A message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Sender → router, first: who is speaking. `stream` identifies the source's journal, so
    /// that positions from a recreated journal are not mistaken for old ones.
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender.
        protocol: u32,
        /// The source site id.
        site: String,
        /// The source journal's identity.
        stream: u64,
        /// What the session is for.
        role: Role,
        /// The source's fresh random nonce ([`super::auth`]).
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
    },
    /// Router → sender: the router's nonce and its proof that it holds the site's key.
    Challenge {
        /// The router's fresh random nonce.
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
        /// HMAC of the transcript with the site's key.
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
    },
    /// Sender → router: the source's proof that it holds the key.
    Auth {
        /// HMAC of the transcript with the site's key.
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
    },
    /// Router → sender: accepted; what the router already holds from this source.
    Welcome {
        /// [`PROTOCOL_VERSION`] of the router.
        protocol: u32,
        /// The last journal position received completely from this stream, if any.
        received: Option<Position>,
        /// What further connections of this session join it with ([`Msg::Join`]).
        token: u64,
    },
    /// Sender → router: entries, with the sender's configuration version.
    Entries {
        /// The message's place in the session's stream, counted from 1 across all its
        /// connections (with [`Msg::Config`]); the router takes them in this order.
        seq: u64,
        /// Configuration version at the sender.
        config_version: u64,
        /// The entries, in journal order.
        entries: Vec<WireEntry>,
    },
    /// Router → sender: the first `frames` entries frames of this session are durable in
    /// RT1/RT2 (entries dropped as duplicates included); `upto` is the last journal position
    /// received completely from this source.
    Ack {
        /// Entries frames of this session, counted from 1, stored so far.
        frames: u64,
        /// The position.
        upto: Position,
    },
    /// Router → sender: the configuration version differs; send the rules, then resend.
    SendConfig {
        /// The version the router has, if any.
        have: Option<u64>,
    },
    /// Sender → router: the rules naming this router, at `version`.
    Config {
        /// The message's place in the session's stream (see [`Msg::Entries`]).
        seq: u64,
        /// Configuration version.
        version: u64,
        /// The rules.
        rules: Vec<WireRule>,
    },
    /// Router → sender: configuration stored.
    ConfigOk {
        /// The version stored.
        version: u64,
    },
    /// Client → router: can `dest` be created and written (a directory when `dir`)?
    Validate {
        /// Destination under the root.
        dest: String,
        /// Whether the destination is a directory.
        dir: bool,
    },
    /// Router → client: the answer to [`Msg::Validate`].
    Validated {
        /// Whether the destination is usable.
        ok: bool,
        /// Why not (or what was checked).
        reason: String,
    },
    /// Router → sender: a backup file could not be brought up to date from the entries (its
    /// earlier content never arrived); send a copy of `name` now.
    Resync {
        /// The rule.
        rule_crc: u32,
        /// The full source name.
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// Either way: still alive.
    Heartbeat,
    /// Either way: refused, with the reason; the connection closes.
    Error {
        /// Why.
        reason: String,
    },
    /// Router → sender: something the source's user should know, the session goes on (an
    /// entry refused because its path leaves the site's namespace, say). The sender logs it
    /// and shows it as the site's last error in `mirror-ctl status`.
    Notice {
        /// What happened.
        text: String,
    },
    /// Restore client → router: send the backup of what this site's rules select at or
    /// beneath `path` (a normalised absolute source path, `/` for everything).
    Restore {
        /// The source path.
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    /// Router → restore client: what the answer to [`Msg::Restore`] holds, before it comes.
    RestoreTotal {
        /// Names (files, directories, symlinks, fifos).
        files: u64,
        /// Bytes of file data (holes not counted).
        bytes: u64,
    },
    /// Router → restore client: one name of the backup (a file's data follows).
    RestoreItem {
        /// The name and its attributes.
        item: RestoreItem,
    },
    /// Router → restore client: data of the last [`Msg::RestoreItem`] file, at `offset`.
    RestoreData {
        /// Where in the file.
        offset: u64,
        /// At most [`super::restore::RESTORE_CHUNK`] bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Router → restore client: a backup name that could not be read (not sent).
    RestoreSkipped {
        /// The source name.
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        /// Why.
        reason: String,
    },
    /// Router → restore client: the answer to [`Msg::Restore`] is complete.
    RestoreDone {
        /// Names sent.
        files: u64,
        /// Bytes of data sent.
        bytes: u64,
        /// Names skipped.
        skipped: u64,
    },
    /// Sender → router, first on a connection of role [`Role::Join`]: the session it joins.
    Join {
        /// The token of the session's [`Msg::Welcome`].
        token: u64,
        /// The connection's place in the sender's connection array (for logs).
        index: u32,
    },
    /// Router → sender: the connection joined the session.
    Joined {
        /// Connections the session has now.
        connections: u32,
    },
    /// Router → sender: every entry of this source at or before journal position `upto`
    /// (whole entries and last parts of copies) is applied to the backup files (the
    /// durability point of sync rules with `--sync-point applied`).
    Applied {
        /// The position.
        upto: Position,
    },
    /// Sender (in a source session, in order with its entries) or verify client → router:
    /// the block checksums ([`crate::blocksums`]) of the backup of `name` under rule
    /// `rule_crc`. With `nodes` empty: every sum of `level`; else the sums of the children (at
    /// `level - 1`) of each of `nodes` of `level`, node after node. In a source session the
    /// router answers once it applied every entry the source sent before the request.
    Sums {
        /// The request's number (the answer carries it).
        id: u64,
        /// The rule.
        rule_crc: u32,
        /// The full source name.
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        /// The level asked about.
        level: u32,
        /// Nodes of `level` whose children are asked for (at most
        /// [`crate::blocksums::MAX_SUMS`] / [`crate::blocksums::FANOUT`]).
        nodes: Vec<u64>,
    },
    /// Router → sender or verify client: the answer to [`Msg::Sums`] `id`.
    SumsAnswer {
        /// The request's number.
        id: u64,
        /// The backup file's size; `None` when there are no sums to give (no backup file, not
        /// a regular file, blocked, a request the tree cannot answer), `why` says.
        size: Option<u64>,
        /// The sums asked for (at most [`crate::blocksums::MAX_SUMS`]).
        sums: Vec<crate::blocksums::Sum>,
        /// Why there are none.
        why: String,
    },
    /// Router → sender: the router logs no longer hold this source's writes before `from`
    /// (references to them would not resolve; [`crate::blocksums::Locator::Transfer`]).
    Retained {
        /// The oldest position still held (none: nothing of this source's).
        from: Option<Position>,
        /// Bytes of router logs the router retains (all sources).
        retained_bytes: u64,
        /// References the router resolved since it started (all sources).
        refs_resolved: u64,
        /// Their bytes: data not sent again.
        bytes_saved: u64,
    },
    /// Verify client → router: list the backup of rule `rule_crc` (one of this site's) at or
    /// beneath `path` (a normalised absolute source path, `/` for all the rule selects);
    /// answered with the first [`Msg::VerifyItems`] ([`super::verify`]).
    Verify {
        /// The rule.
        rule_crc: u32,
        /// The source path.
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        /// Whether items carry owner, times and xattrs (for rules that mirror them).
        attrs: bool,
    },
    /// Verify client → router: the next [`Msg::VerifyItems`] of the listing.
    VerifyMore,
    /// Router → verify client: names of the backup, in walk order
    /// ([`super::verify::walk_order`]).
    VerifyItems {
        /// At most [`super::verify::MAX_BATCH_ITEMS`].
        items: Vec<super::verify::VerifyItem>,
        /// The listing is complete.
        done: bool,
    },
    /// Verify client → router: move `name` of rule `rule_crc`, an orphan (on the backup, not
    /// at the source), beneath `to`: a relative path within the site's namespace, outside
    /// every destination of its rules (`mirror-ctl verify --repair --orphans move DIR`). It
    /// lands at `<namespace>/<to>/<its path within the namespace>`.
    VerifyMove {
        /// The rule.
        rule_crc: u32,
        /// The full source name.
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        /// Where to, relative to the site's namespace.
        #[serde(with = "serde_bytes")]
        to: Vec<u8>,
    },
    /// Router → verify client: the answer to [`Msg::VerifyMove`]: where the orphan went
    /// (relative to the site's namespace), or why it did not.
    VerifyMoved {
        /// Its new path, when it moved.
        to: Option<String>,
        /// Why it did not.
        why: String,
    },
}

/// The limits of one [`RestoreItem`] (a restore's or a verify's).
fn item_limits(item: &RestoreItem) -> Result<(), String> {
    use super::restore::{MAX_XATTRS, MAX_XATTR_NAME, MAX_XATTR_VALUE};
    let over = |what: &str, len: usize, max: usize| {
        if len > max {
            Err(format!("{what} of {len} exceeds the limit of {max}"))
        } else {
            Ok(())
        }
    };
    over("item name length", item.name.len(), MAX_NAME_LEN)?;
    over("symlink target length", item.target.len(), MAX_NAME_LEN)?;
    if let Some(a) = &item.attrs {
        over("xattrs of a name", a.xattrs.len(), MAX_XATTRS)?;
        for x in &a.xattrs {
            over("xattr name length", x.name.len(), MAX_XATTR_NAME)?;
            over("xattr value length", x.value.len(), MAX_XATTR_VALUE)?;
        }
    }
    Ok(())
}

impl Msg {
    /// The message's kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "hello",
            Msg::Challenge { .. } => "challenge",
            Msg::Auth { .. } => "authentication",
            Msg::Welcome { .. } => "welcome",
            Msg::Entries { .. } => "entries",
            Msg::Ack { .. } => "ack",
            Msg::SendConfig { .. } => "send-configuration",
            Msg::Config { .. } => "configuration",
            Msg::ConfigOk { .. } => "configuration-ok",
            Msg::Validate { .. } => "validate",
            Msg::Validated { .. } => "validated",
            Msg::Resync { .. } => "resync",
            Msg::Heartbeat => "heartbeat",
            Msg::Error { .. } => "error",
            Msg::Notice { .. } => "notice",
            Msg::Restore { .. } => "restore",
            Msg::RestoreTotal { .. } => "restore-total",
            Msg::RestoreItem { .. } => "restore-item",
            Msg::RestoreData { .. } => "restore-data",
            Msg::RestoreSkipped { .. } => "restore-skipped",
            Msg::RestoreDone { .. } => "restore-done",
            Msg::Join { .. } => "join",
            Msg::Joined { .. } => "joined",
            Msg::Applied { .. } => "applied",
            Msg::Sums { .. } => "sums",
            Msg::SumsAnswer { .. } => "sums-answer",
            Msg::Retained { .. } => "retained",
            Msg::Verify { .. } => "verify",
            Msg::VerifyMore => "verify-more",
            Msg::VerifyItems { .. } => "verify-items",
            Msg::VerifyMove { .. } => "verify-move",
            Msg::VerifyMoved { .. } => "verify-moved",
        }
    }

    /// Checks the protocol's limits on counts and lengths (the frame size is checked before
    /// decoding); the reason when one is broken.
    pub fn check_limits(&self) -> Result<(), String> {
        let over = |what: &str, len: usize, max: usize| {
            if len > max {
                Err(format!("{what} of {len} exceeds the limit of {max}"))
            } else {
                Ok(())
            }
        };
        match self {
            Msg::Hello { site, .. } => over("site id length", site.len(), MAX_SITE_LEN),
            Msg::Entries { entries, .. } => {
                over("entries in a frame", entries.len(), MAX_ENTRIES_PER_FRAME)?;
                for e in entries {
                    over("entry name length", e.name.len(), MAX_NAME_LEN)?;
                    over("entry second name length", e.aux.len(), MAX_NAME_LEN)?;
                }
                Ok(())
            }
            Msg::Config { rules, .. } => {
                over("rules in a configuration", rules.len(), MAX_RULES)?;
                for r in rules {
                    over("rule pattern length", r.pattern.len(), MAX_NAME_LEN)?;
                    over("rule destination length", r.dest.len(), MAX_NAME_LEN)?;
                }
                Ok(())
            }
            Msg::Validate { dest, .. } => over("destination length", dest.len(), MAX_NAME_LEN),
            Msg::Resync { name, .. } => over("name length", name.len(), MAX_NAME_LEN),
            Msg::Restore { path } => over("restore path length", path.len(), MAX_NAME_LEN),
            Msg::RestoreItem { item } => item_limits(item),
            Msg::RestoreData { data, .. } => over(
                "restore data chunk",
                data.len(),
                super::restore::RESTORE_CHUNK,
            ),
            Msg::RestoreSkipped { name, reason } => {
                over("skipped name length", name.len(), MAX_NAME_LEN)?;
                over("reason length", reason.len(), MAX_TEXT_LEN)
            }
            Msg::Sums { name, nodes, .. } => {
                over("name length", name.len(), MAX_NAME_LEN)?;
                over(
                    "nodes asked about",
                    nodes.len(),
                    crate::blocksums::MAX_SUMS / crate::blocksums::FANOUT,
                )
            }
            Msg::SumsAnswer { sums, why, .. } => {
                over("sums in an answer", sums.len(), crate::blocksums::MAX_SUMS)?;
                over("reason length", why.len(), MAX_TEXT_LEN)
            }
            Msg::Verify { path, .. } => over("verify path length", path.len(), MAX_NAME_LEN),
            Msg::VerifyMove { name, to, .. } => {
                over("name length", name.len(), MAX_NAME_LEN)?;
                over("destination length", to.len(), MAX_NAME_LEN)
            }
            Msg::VerifyMoved { to, why } => {
                over(
                    "path length",
                    to.as_ref().map_or(0, String::len),
                    MAX_NAME_LEN,
                )?;
                over("reason length", why.len(), MAX_TEXT_LEN)
            }
            Msg::VerifyItems { items, .. } => {
                over(
                    "items in a verify batch",
                    items.len(),
                    super::verify::MAX_BATCH_ITEMS,
                )?;
                for i in items {
                    item_limits(&i.item)?;
                    if let Some(p) = &i.problem {
                        over("reason length", p.len(), MAX_TEXT_LEN)?;
                    }
                }
                Ok(())
            }
            Msg::Validated { reason, .. }
            | Msg::Error { reason }
            | Msg::Notice { text: reason } => over("reason length", reason.len(), MAX_TEXT_LEN),
            _ => Ok(()),
        }
    }
}
