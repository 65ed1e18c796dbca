//! Rules: what to mirror (a source pattern), where (sites and a destination path), and how.
//!
//! A source pattern is an absolute path as the user sees it, in one of the four forms of
//! seeds/002 \[0030\]:
//!
//! | pattern | kind | selects |
//! | --- | --- | --- |
//! | `/p/a/x.doc` | [`PatternKind::File`] | that file only |
//! | `/p/a/*.doc` | [`PatternKind::Wildcard`] | files matching the wildcard in `/p/a` only |
//! | `/p/a/` | [`PatternKind::Subtree`] | every file in the subtree `/p/a` |
//! | `/p/a/*.doc/` | [`PatternKind::SubtreeWildcard`] | files matching the wildcard anywhere in the subtree |
//!
//! Wildcards (`*`, `?`, `[...]`, `{a,b}`) may appear in the last component only; a backslash
//! makes the next character literal (`/p/x\[1\].doc` is the fixed file `x[1].doc`).
//!
//! Every pattern has a *fixed prefix*: the whole path for a fixed file, else the directory part
//! ending in `/`. The part of a selected name after the prefix is the *matched remainder*; for
//! directory destinations it is appended to `--dest` to name the backup file.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::Path;

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

/// Longest pattern, destination or delete suffix accepted, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// Why a rule or one of its parts was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The pattern does not begin with `/`.
    #[error("pattern {0:?} is not absolute: it must start with '/' and name the path as mounted")]
    NotAbsolute(String),
    /// The pattern has an empty, `.` or `..` component.
    #[error("pattern {pattern:?} is not normalised: component {component:?} is not allowed (no empty, '.' or '..' components)")]
    NotNormalised {
        /// The whole pattern.
        pattern: String,
        /// The offending component.
        component: String,
    },
    /// A directory component of the pattern holds a wildcard.
    #[error("pattern {pattern:?} has a wildcard in directory component {component:?}: wildcards are allowed in the last component only (forms: /p/x.doc, /p/*.doc, /p/, /p/*.doc/)")]
    WildcardNotLast {
        /// The whole pattern.
        pattern: String,
        /// The component holding the wildcard.
        component: String,
    },
    /// The wildcard does not parse.
    #[error("pattern {pattern:?}: bad wildcard {wildcard:?}: {reason}")]
    BadWildcard {
        /// The whole pattern.
        pattern: String,
        /// The last component.
        wildcard: String,
        /// What globset said.
        reason: String,
    },
    /// A trailing lone backslash.
    #[error("pattern {0:?} ends with a lone '\\' (escape what?)")]
    DanglingEscape(String),
    /// The destination is absolute, climbs out, or is malformed.
    #[error("destination {dest:?} {reason}; --dest is a path relative to the router's --root")]
    BadDest {
        /// The destination given.
        dest: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The site is not `HOST:PORT`.
    #[error("site {site:?} {reason}; expected HOST:PORT, e.g. backup.example:7070 or [::1]:7070")]
    BadSite {
        /// The site given.
        site: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The delete suffix is malformed.
    #[error("delete suffix {suffix:?} {reason}")]
    BadDeleteSuffix {
        /// The suffix given.
        suffix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A rule with no site.
    #[error("a rule needs at least one --site HOST:PORT")]
    NoSite,
    /// The mode is neither `async` nor `sync`.
    #[error("mode {0:?} is not one of: async, sync")]
    BadMode(String),
    /// A sync point that is neither `durable` nor `applied`.
    #[error("sync point {0:?} is not one of: durable, applied")]
    BadSyncPoint(String),
    /// A loss policy that is neither `degrade` nor `fail`.
    #[error("sync-loss policy {0:?} is not one of: degrade, fail")]
    BadOnSyncLoss(String),
    /// A sync timeout of zero or past the limit.
    #[error("sync timeout {0} ms is out of range (1 ms to 24 h)")]
    BadSyncTimeout(u64),
    /// A string that is too long.
    #[error("{what} is {len} bytes long; the limit is {MAX_PATH_LEN}")]
    TooLong {
        /// Which part.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// NUL in a name.
    #[error("{what} {value:?} contains a NUL byte")]
    Nul {
        /// Which part.
        what: &'static str,
        /// The value.
        value: String,
    },
}

/// The four forms of source pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatternKind {
    /// `/p/a/x.doc`: one file.
    File,
    /// `/p/a/*.doc`: matching files directly in `/p/a`.
    Wildcard,
    /// `/p/a/`: every file under `/p/a`.
    Subtree,
    /// `/p/a/*.doc/`: matching files anywhere under `/p/a`.
    SubtreeWildcard,
}

impl PatternKind {
    /// Whether the destination of such a rule is a directory (every kind but a fixed file).
    pub fn dest_is_dir(self) -> bool {
        self != PatternKind::File
    }
    /// Whether the pattern covers a subtree (and so directories inside it).
    pub fn is_subtree(self) -> bool {
        matches!(self, PatternKind::Subtree | PatternKind::SubtreeWildcard)
    }
}

impl fmt::Display for PatternKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PatternKind::File => "file",
            PatternKind::Wildcard => "wildcard",
            PatternKind::Subtree => "subtree",
            PatternKind::SubtreeWildcard => "subtree-wildcard",
        })
    }
}

/// A parsed source pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    kind: PatternKind,
    prefix: Vec<u8>,
    glob: Option<GlobMatcher>,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for Pattern {}

fn is_meta(c: char) -> bool {
    matches!(c, '*' | '?' | '[' | '{')
}

/// Whether `component` holds an unescaped wildcard character.
fn has_unescaped_meta(pattern: &str, component: &str) -> Result<bool, RuleError> {
    let mut chars = component.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if chars.next().is_none() {
                return Err(RuleError::DanglingEscape(pattern.to_string()));
            }
        } else if is_meta(c) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes escapes: `\x` becomes `x`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Pattern {
    /// Parses and validates a source pattern.
    pub fn parse(text: &str) -> Result<Pattern, RuleError> {
        if text.len() > MAX_PATH_LEN {
            return Err(RuleError::TooLong {
                what: "pattern",
                len: text.len(),
            });
        }
        if text.contains('\0') {
            return Err(RuleError::Nul {
                what: "pattern",
                value: text.replace('\0', "\\0"),
            });
        }
        if !text.starts_with('/') {
            return Err(RuleError::NotAbsolute(text.to_string()));
        }
        // A trailing '/' makes a subtree pattern; an escaped one ("\/") is not a separator
        // anywhere, so it is refused as a normalisation error below.
        let subtree = text.ends_with('/') && !text.ends_with("\\/");
        let body = if subtree {
            &text[..text.len() - 1]
        } else {
            text
        };
        let components: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body[1..].split('/').collect()
        };
        for c in &components {
            if c.is_empty() || *c == "." || *c == ".." {
                return Err(RuleError::NotNormalised {
                    pattern: text.to_string(),
                    component: c.to_string(),
                });
            }
        }
        let (dirs, last) = match components.split_last() {
            Some((last, dirs)) => (dirs, Some(*last)),
            None => (&components[..], None),
        };
        for c in dirs {
            if has_unescaped_meta(text, c)? {
                return Err(RuleError::WildcardNotLast {
                    pattern: text.to_string(),
                    component: c.to_string(),
                });
            }
        }
        let wildcard = match last {
            Some(l) => has_unescaped_meta(text, l)?,
            None => false,
        };
        let mut dir_prefix = String::from("/");
        for c in dirs {
            dir_prefix.push_str(&unescape(c));
            dir_prefix.push('/');
        }
        let kind = match (subtree, wildcard) {
            (false, false) => PatternKind::File,
            (false, true) => PatternKind::Wildcard,
            (true, false) => PatternKind::Subtree,
            (true, true) => PatternKind::SubtreeWildcard,
        };
        if kind == PatternKind::File && last.is_none() {
            // Only "/" itself has no last component, and it ends with '/'.
            return Err(RuleError::NotAbsolute(text.to_string()));
        }
        let prefix = match kind {
            PatternKind::File => dir_prefix + &unescape(last.unwrap_or_default()),
            PatternKind::Subtree => match last {
                Some(l) => dir_prefix + &unescape(l) + "/",
                None => dir_prefix,
            },
            PatternKind::Wildcard | PatternKind::SubtreeWildcard => dir_prefix,
        };
        let glob = if wildcard {
            let w = last.unwrap_or_default();
            let g = GlobBuilder::new(w)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| RuleError::BadWildcard {
                    pattern: text.to_string(),
                    wildcard: w.to_string(),
                    reason: e.kind().to_string(),
                })?;
            Some(g.compile_matcher())
        } else {
            None
        };
        Ok(Pattern {
            text: text.to_string(),
            kind,
            prefix: prefix.into_bytes(),
            glob,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
    /// Which of the four forms it is.
    pub fn kind(&self) -> PatternKind {
        self.kind
    }
    /// The fixed prefix (unescaped): the whole path of a fixed file, else the directory part ending in `/`.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
    /// The directory that must exist for the rule to make sense: the parent of a fixed file,
    /// the directory of a wildcard, the root of a subtree.
    pub fn source_dir(&self) -> &Path {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(&self.prefix));
        match self.kind {
            PatternKind::File => p.parent().unwrap_or(Path::new("/")),
            _ => p,
        }
    }

    /// Whether the last-component wildcard accepts `name` (a single component).
    pub fn glob_matches(&self, name: &[u8]) -> bool {
        use std::os::unix::ffi::OsStrExt;
        match &self.glob {
            Some(g) => g.is_match(Path::new(std::ffi::OsStr::from_bytes(name))),
            None => true,
        }
    }

    /// The reference matcher: if this pattern selects the file `path`, the offset in `path`
    /// where the matched remainder starts (`path.len()` for a fixed file).
    /// Straightforward and slow; [`crate::matcher`] is the fast equivalent and is tested against it.
    /// Names are normalised absolute paths: one ending in `/` names no file and matches nothing.
    pub fn match_file(&self, path: &[u8]) -> Option<usize> {
        if path.last() == Some(&b'/') {
            return None;
        }
        let rest = path.strip_prefix(self.prefix.as_slice())?;
        match self.kind {
            PatternKind::File => rest.is_empty().then_some(path.len()),
            PatternKind::Wildcard => {
                (!rest.is_empty() && !rest.contains(&b'/') && self.glob_matches(rest))
                    .then_some(self.prefix.len())
            }
            PatternKind::Subtree => (!rest.is_empty()).then_some(self.prefix.len()),
            PatternKind::SubtreeWildcard => {
                let base = rest.rsplit(|&b| b == b'/').next().unwrap_or(rest);
                (!rest.is_empty() && !base.is_empty() && self.glob_matches(base))
                    .then_some(self.prefix.len())
            }
        }
    }

    /// The reference matcher for directories: subtree patterns select the directories strictly
    /// inside their subtree (to mirror mkdir/rmdir); `*.x/` patterns select none, since their
    /// backup directories are created as files need them.
    pub fn match_dir(&self, path: &[u8]) -> Option<usize> {
        match self.kind {
            PatternKind::Subtree => self.match_file(path),
            _ => None,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A destination path, relative to the router's `--root`, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Dest(String);

impl Dest {
    /// Validates a destination: relative, no `.`/`..`/empty components, no NUL.
    /// One trailing `/` is accepted and dropped.
    pub fn parse(s: &str) -> Result<Dest, RuleError> {
        let bad = |reason| RuleError::BadDest {
            dest: s.to_string(),
            reason,
        };
        if s.len() > MAX_PATH_LEN {
            return Err(RuleError::TooLong {
                what: "destination",
                len: s.len(),
            });
        }
        if s.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        if s.is_empty() {
            return Err(bad("is empty"));
        }
        if s.starts_with('/') {
            return Err(bad("is absolute"));
        }
        let t = s.strip_suffix('/').unwrap_or(s);
        for c in t.split('/') {
            match c {
                ".." => return Err(bad("contains '..'")),
                "." => return Err(bad("contains a '.' component")),
                "" => return Err(bad("contains an empty component ('//')")),
                _ => {}
            }
        }
        Ok(Dest(t.to_string()))
    }
    /// The destination as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the two destinations share backup files: one is the other, or lies beneath it
    /// (compared by whole components: `proj` and `proj2` do not overlap).
    pub fn overlaps(&self, other: &Dest) -> bool {
        let beneath = |a: &str, b: &str| {
            a == b || (a.len() > b.len() && a.starts_with(b) && a.as_bytes()[b.len()] == b'/')
        };
        beneath(&self.0, &other.0) || beneath(&other.0, &self.0)
    }
}

impl TryFrom<String> for Dest {
    type Error = RuleError;
    fn try_from(s: String) -> Result<Self, RuleError> {
        Dest::parse(&s)
    }
}
impl From<Dest> for String {
    fn from(d: Dest) -> String {
        d.0
    }
}
impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A destination site: `HOST:PORT` (a router reached over TCP), or `spool:/OUTBOX` (spool
/// files written into a directory for a file-transfer tool to carry, [`crate::wire::spool`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Site(SiteKind);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum SiteKind {
    Tcp { host: String, port: u16 },
    Spool(String),
}

/// How a spool site is written.
pub const SPOOL_PREFIX: &str = "spool:";

impl Site {
    /// Parses `HOST:PORT` (`[v6]:PORT` for IPv6 literals) or `spool:/ABSOLUTE/PATH`.
    pub fn parse(s: &str) -> Result<Site, RuleError> {
        let bad = |reason| RuleError::BadSite {
            site: s.to_string(),
            reason,
        };
        if let Some(path) = s.strip_prefix(SPOOL_PREFIX) {
            if !path.starts_with('/') {
                return Err(bad("names a spool outbox that is not an absolute path"));
            }
            if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad(
                    "names a spool outbox with white space or control characters",
                ));
            }
            if path.len() > 1024 {
                return Err(bad("names a spool outbox longer than 1024 bytes"));
            }
            if path.split('/').any(|c| c == "." || c == "..") {
                return Err(bad("names a spool outbox with '.' or '..' in it"));
            }
            let trimmed = path.trim_end_matches('/');
            return Ok(Site(SiteKind::Spool(if trimmed.is_empty() {
                "/".into()
            } else {
                trimmed.to_string()
            })));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("has no ':PORT'"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("has a port that is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("has port 0"));
        }
        if host.is_empty() {
            return Err(bad("has an empty host"));
        }
        if let Some(v6) = host.strip_prefix('[') {
            let v6 = v6
                .strip_suffix(']')
                .ok_or_else(|| bad("has an unclosed '['"))?;
            v6.parse::<Ipv6Addr>()
                .map_err(|_| bad("has a bracketed host that is not an IPv6 address"))?;
        } else if host.len() > 253
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(bad(
                "has a host that is not a host name or address (IPv6 goes in brackets)",
            ));
        }
        Ok(Site(SiteKind::Tcp {
            host: host.to_string(),
            port,
        }))
    }
    /// The host part (brackets kept for IPv6); none for a spool site.
    pub fn host(&self) -> Option<&str> {
        match &self.0 {
            SiteKind::Tcp { host, .. } => Some(host),
            SiteKind::Spool(_) => None,
        }
    }
    /// The port; none for a spool site.
    pub fn port(&self) -> Option<u16> {
        match &self.0 {
            SiteKind::Tcp { port, .. } => Some(*port),
            SiteKind::Spool(_) => None,
        }
    }
    /// The outbox of a spool site.
    pub fn spool_dir(&self) -> Option<&std::path::Path> {
        match &self.0 {
            SiteKind::Spool(p) => Some(std::path::Path::new(p)),
            SiteKind::Tcp { .. } => None,
        }
    }
}

/// Whether the site text `s` names a spool site (`spool:/OUTBOX`).
pub fn is_spool_site(s: &str) -> bool {
    s.starts_with(SPOOL_PREFIX)
}

impl TryFrom<String> for Site {
    type Error = RuleError;
    fn try_from(s: String) -> Result<Self, RuleError> {
        Site::parse(&s)
    }
}
impl From<Site> for String {
    fn from(s: Site) -> String {
        s.to_string()
    }
}
impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            SiteKind::Tcp { host, port } => write!(f, "{host}:{port}"),
            SiteKind::Spool(p) => write!(f, "{SPOOL_PREFIX}{p}"),
        }
    }
}

/// Validates a delete suffix: non-empty, no `/`, no NUL.
pub fn parse_delete_suffix(s: &str) -> Result<String, RuleError> {
    let bad = |reason| RuleError::BadDeleteSuffix {
        suffix: s.to_string(),
        reason,
    };
    if s.is_empty() {
        return Err(bad("is empty"));
    }
    if s.contains('/') {
        return Err(bad("contains '/'"));
    }
    if s.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if s.len() > 255 {
        return Err(bad("is longer than 255 bytes"));
    }
    Ok(s.to_string())
}

/// The longest name a directory entry may have (Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// The name of kept version `n` of backup name `name` under delete suffix `suffix`: `NAME SUF`
/// for the first one kept (`n` = 0), then `NAME SUF.1`, `NAME SUF.2`, … in the order they are
/// kept. A name too long to take the suffix within [`NAME_MAX`] bytes is cut short first (at
/// a character boundary when it is UTF-8). The router never renames or removes a kept
/// version once made.
pub fn kept_name(name: &[u8], suffix: &str, n: u64) -> Vec<u8> {
    let mut tail = suffix.as_bytes().to_vec();
    if n > 0 {
        tail.extend_from_slice(format!(".{n}").as_bytes());
    }
    let mut keep = name.len().min(NAME_MAX.saturating_sub(tail.len()).max(1));
    if let Ok(text) = std::str::from_utf8(name) {
        while keep > 1 && !text.is_char_boundary(keep) {
            keep -= 1;
        }
    }
    let mut out = name[..keep].to_vec();
    out.extend_from_slice(&tail);
    out
}

/// Whether backup name `name` (one component) has the form of a version kept under delete
/// suffix `suffix` ([`kept_name`]: `NAME SUF` or `NAME SUF.N`, with `N` decimal and `NAME` not
/// empty). Such names are history: a reconciliation (and any later check of the backup
/// against its source) leaves them alone.
pub fn is_kept_version(name: &[u8], suffix: &str) -> bool {
    let suf = suffix.as_bytes();
    if suf.is_empty() {
        return false;
    }
    let head_is_kept = |head: &[u8]| head.len() > suf.len() && head.ends_with(suf);
    if head_is_kept(name) {
        return true;
    }
    // NAME SUF.N
    let Some(dot) = name.iter().rposition(|&b| b == b'.') else {
        return false;
    };
    let (head, n) = (&name[..dot], &name[dot + 1..]);
    !n.is_empty() && n.iter().all(u8::is_ascii_digit) && head_is_kept(head)
}

/// Whether entries are acknowledged before (`Sync`) or after (`Async`) the application sees success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Journal locally, forward in the background.
    #[default]
    Async,
    /// Durability points wait for the sites (seeds/003 claims 19-20, [`SyncOpts`]).
    Sync,
}

impl Mode {
    /// Parses `async` or `sync`.
    pub fn parse(s: &str) -> Result<Mode, RuleError> {
        match s {
            "async" => Ok(Mode::Async),
            "sync" => Ok(Mode::Sync),
            _ => Err(RuleError::BadMode(s.to_string())),
        }
    }
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Async => "async",
            Mode::Sync => "sync",
        }
    }
}

/// What a durability point of a `sync` rule waits for at each site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPoint {
    /// The entries are durable in the site's router logs (acknowledged).
    #[default]
    Durable,
    /// The router applied the entries to the backup files.
    Applied,
}

impl SyncPoint {
    /// Parses `durable` or `applied`.
    pub fn parse(s: &str) -> Result<SyncPoint, RuleError> {
        match s {
            "durable" => Ok(SyncPoint::Durable),
            "applied" => Ok(SyncPoint::Applied),
            _ => Err(RuleError::BadSyncPoint(s.to_string())),
        }
    }
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncPoint::Durable => "durable",
            SyncPoint::Applied => "applied",
        }
    }
}

/// What a `sync` rule does when a site does not acknowledge in time (or is blocked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSyncLoss {
    /// The waiting calls return; the rule is degraded for the site until its backlog drained.
    #[default]
    Degrade,
    /// The waiting calls fail with `EIO`, and so do namespace changes and fsyncs while the
    /// site is out of sync.
    Fail,
}

impl OnSyncLoss {
    /// Parses `degrade` or `fail`.
    pub fn parse(s: &str) -> Result<OnSyncLoss, RuleError> {
        match s {
            "degrade" => Ok(OnSyncLoss::Degrade),
            "fail" => Ok(OnSyncLoss::Fail),
            _ => Err(RuleError::BadOnSyncLoss(s.to_string())),
        }
    }
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnSyncLoss::Degrade => "degrade",
            OnSyncLoss::Fail => "fail",
        }
    }
}

/// The longest `--sync-timeout`.
pub const MAX_SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The options of a `sync` rule (kept for an `async` one too, for when it is switched). None
/// of them is part of the rule's CRC: `rule set` changes them on a running system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SyncOpts {
    /// What is waited for.
    pub point: SyncPoint,
    /// How long a durability point waits for a site before the site counts as lost.
    pub timeout: std::time::Duration,
    /// What a lost site does to the rule.
    pub on_loss: OnSyncLoss,
}

impl Default for SyncOpts {
    fn default() -> Self {
        SyncOpts {
            point: SyncPoint::Durable,
            timeout: std::time::Duration::from_secs(10),
            on_loss: OnSyncLoss::Degrade,
        }
    }
}

impl SyncOpts {
    /// Checks a timeout given in milliseconds (the database's unit).
    pub fn timeout_from_ms(ms: u64) -> Result<std::time::Duration, RuleError> {
        let d = std::time::Duration::from_millis(ms);
        if ms == 0 || d > MAX_SYNC_TIMEOUT {
            return Err(RuleError::BadSyncTimeout(ms));
        }
        Ok(d)
    }
}

/// A rule as the user gives it, before the database assigns an id.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    /// What to mirror.
    pub pattern: Pattern,
    /// Where to (one entry is forwarded to each).
    pub sites: Vec<Site>,
    /// The backup file (fixed-file pattern) or directory, relative to the router's root.
    pub dest: Dest,
    /// Mirror mode, ownership, times and xattrs too.
    pub attrs: bool,
    /// Rename the backup to `name + suffix` instead of deleting it.
    pub delete_suffix: Option<String>,
    /// Whether durability points wait for the sites.
    pub mode: Mode,
    /// What they wait for, how long, and what a lost site does.
    pub sync: SyncOpts,
}

impl RuleSpec {
    /// The rule's CRC: CRC32 over pattern, destination and sites, NUL-separated.
    ///
    /// Journal entries carry it to name the rule they belong to (seeds/002 Figure 7, field 72);
    /// the rules database refuses a second rule with the same CRC.
    pub fn crc(&self) -> u32 {
        rule_crc(&self.pattern, &self.dest, &self.sites)
    }
}

/// See [`RuleSpec::crc`].
pub fn rule_crc(pattern: &Pattern, dest: &Dest, sites: &[Site]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(pattern.as_str().as_bytes());
    h.update(b"\0");
    h.update(dest.as_str().as_bytes());
    for s in sites {
        h.update(b"\0");
        h.update(s.to_string().as_bytes());
    }
    h.finalize()
}

/// A rule stored in the rules database.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Database id (never reused).
    pub id: i64,
    /// The rule itself.
    pub spec: RuleSpec,
    /// [`RuleSpec::crc`], stored.
    pub crc: u32,
}

impl Rule {
    /// The backup name (relative to the router root) for a selected name with `remainder`.
    pub fn backup_name(&self, remainder: &[u8]) -> Vec<u8> {
        backup_name(&self.spec.dest, self.spec.pattern.kind(), remainder)
    }
}

/// `dest` for a fixed-file rule; `dest/remainder` for directory destinations.
pub fn backup_name(dest: &Dest, kind: PatternKind, remainder: &[u8]) -> Vec<u8> {
    let mut out = dest.as_str().as_bytes().to_vec();
    if kind.dest_is_dir() && !remainder.is_empty() {
        out.push(b'/');
        out.extend_from_slice(remainder);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn kept_versions_are_named_and_recognised() {
        assert_eq!(kept_name(b"a.txt", ".del", 0), b"a.txt.del");
        assert_eq!(kept_name(b"a.txt", ".del", 12), b"a.txt.del.12");
        for n in [0, 1, 9, 10, 12345] {
            assert!(is_kept_version(&kept_name(b"a.txt", ".del", n), ".del"));
        }
        assert!(is_kept_version(b"a.del.del", ".del"));
        assert!(!is_kept_version(b"a.txt", ".del"));
        assert!(
            !is_kept_version(b".del", ".del"),
            "no name before the suffix"
        );
        assert!(!is_kept_version(b".del.3", ".del"));
        assert!(!is_kept_version(b"a.del.", ".del"));
        assert!(!is_kept_version(b"a.del.3x", ".del"));
        assert!(!is_kept_version(b"a.delx", ".del"));
        assert!(is_kept_version(b"a~", "~"));
        assert!(is_kept_version(b"a~.2", "~"));
        // A long name is cut to leave room for the suffix (never inside a character).
        let long = "é".repeat(127) + "x"; // 255 bytes
        for n in [0, 7, 123456] {
            let k = kept_name(long.as_bytes(), ".del", n);
            assert!(k.len() <= NAME_MAX, "{}", k.len());
            assert!(std::str::from_utf8(&k).is_ok());
            assert!(is_kept_version(&k, ".del"));
        }
    }

    #[test]
    fn four_forms() {
        let cases = [
            ("/p/a/x.doc", PatternKind::File, "/p/a/x.doc"),
            ("/p/a/*.doc", PatternKind::Wildcard, "/p/a/"),
            ("/p/a/", PatternKind::Subtree, "/p/a/"),
            ("/p/a/*.doc/", PatternKind::SubtreeWildcard, "/p/a/"),
            ("/", PatternKind::Subtree, "/"),
            ("/x\\[1\\].doc", PatternKind::File, "/x[1].doc"),
            ("/a\\*b/c?", PatternKind::Wildcard, "/a*b/"),
        ];
        for (s, kind, prefix) in cases {
            let pat = p(s);
            assert_eq!(pat.kind(), kind, "{s}");
            assert_eq!(pat.prefix(), prefix.as_bytes(), "{s}");
        }
    }

    #[test]
    fn refusals_name_the_part() {
        let err = |s| Pattern::parse(s).unwrap_err();
        assert_eq!(err("p/a"), RuleError::NotAbsolute("p/a".into()));
        assert!(
            matches!(err("/p/*/x"), RuleError::WildcardNotLast { component, .. } if component == "*")
        );
        assert!(
            matches!(err("/p//x"), RuleError::NotNormalised { component, .. } if component.is_empty())
        );
        assert!(
            matches!(err("/p/../x"), RuleError::NotNormalised { component, .. } if component == "..")
        );
        assert!(
            matches!(err("/p/[a"), RuleError::BadWildcard { wildcard, .. } if wildcard == "[a")
        );
        assert!(matches!(err("/p/a\\"), RuleError::DanglingEscape(_)));
        assert!(matches!(err("/p\\/a"), RuleError::DanglingEscape(_)));
        let msg = err("/p/[a").to_string();
        assert!(msg.contains("/p/[a"), "{msg}");
    }

    #[test]
    fn reference_matching() {
        let f = p("/p/a/x.doc");
        assert_eq!(f.match_file(b"/p/a/x.doc"), Some(10));
        assert_eq!(f.match_file(b"/p/a/x.docx"), None);
        let w = p("/p/a/*.doc");
        assert_eq!(w.match_file(b"/p/a/y.doc"), Some(5));
        assert_eq!(w.match_file(b"/p/a/s/y.doc"), None);
        assert_eq!(w.match_file(b"/p/a/"), None);
        let s = p("/p/a/");
        assert_eq!(s.match_file(b"/p/a/s/t.rs"), Some(5));
        assert_eq!(s.match_file(b"/p/a"), None);
        assert_eq!(s.match_file(b"/p/ab/c"), None);
        let sw = p("/p/a/*.doc/");
        assert_eq!(sw.match_file(b"/p/a/s/t/y.doc"), Some(5));
        assert_eq!(sw.match_file(b"/p/a/s.doc/t"), None);
        assert_eq!(s.match_dir(b"/p/a/s"), Some(5));
        assert_eq!(sw.match_dir(b"/p/a/s"), None);
        let lit = p("/p/x\\[1\\].doc");
        assert!(lit.match_file(b"/p/x[1].doc").is_some());
        assert!(lit.match_file(b"/p/x1.doc").is_none());
    }

    #[test]
    fn dests() {
        assert_eq!(Dest::parse("a/b/").unwrap().as_str(), "a/b");
        for (d, why) in [
            ("/etc", "absolute"),
            ("a/../b", ".."),
            ("..", ".."),
            ("", "empty"),
            ("a//b", "empty component"),
            ("./a", "'.'"),
        ] {
            let e = Dest::parse(d).unwrap_err().to_string();
            assert!(e.contains(why), "{d}: {e}");
        }
    }

    #[test]
    fn sites() {
        assert_eq!(Site::parse("h:1").unwrap().to_string(), "h:1");
        assert_eq!(Site::parse("[::1]:7070").unwrap().port(), Some(7070));
        assert_eq!(
            Site::parse("127.0.0.1:9").unwrap().host(),
            Some("127.0.0.1")
        );
        let spool = Site::parse("spool:/var/out/").unwrap();
        assert_eq!(spool.to_string(), "spool:/var/out");
        assert_eq!(spool.spool_dir(), Some(std::path::Path::new("/var/out")));
        assert_eq!(spool.port(), None);
        for s in ["spool:rel/x", "spool:/a b", "spool:/a/../b", "spool:"] {
            assert!(Site::parse(s).is_err(), "{s}");
        }
        for s in [
            "h", "h:0", "h:x", ":80", "h:70000", "[::1:80", "a b:1", "[zz]:1",
        ] {
            assert!(Site::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn backup_names() {
        let d = Dest::parse("d").unwrap();
        assert_eq!(
            backup_name(&d, PatternKind::Subtree, b"s/t.rs"),
            b"d/s/t.rs"
        );
        assert_eq!(backup_name(&d, PatternKind::File, b""), b"d");
    }
}
