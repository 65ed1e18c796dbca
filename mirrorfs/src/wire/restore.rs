//! The restore session: `mirror-ctl restore` fetches a source's backup back from a router.
//!
//! ```text
//! client → router  Hello { role: Restore, … }, Challenge, Auth   (as every session, [`super::auth`])
//! client → router  Restore { path }                  a normalised absolute source path ("/": all)
//! router → client  RestoreTotal { files, bytes }     what the site's rules hold under it
//! router → client  RestoreItem { item }              a directory, file, symlink or fifo …
//! router → client  RestoreData { offset, data }      … a file's data, in chunks (holes skipped)
//! router → client  RestoreSkipped { name, reason }   a backup name the router could not read
//! router → client  RestoreDone { files, bytes, skipped }
//! client → router  Restore { … } again, or closes the connection
//! ```
//!
//! The router answers only from the rules the requesting site sent it, mapped beneath the
//! namespace the site's key grants, and reads every backup name beneath its root through no
//! symbolic link; a request it refuses is answered with [`super::Msg::Error`] and the session
//! ends. Names are full source names (as the rules see them), beneath the requested path;
//! directories come before what they hold, in name order; a file with several names comes
//! once, its other names as [`RestoreKind::Link`] items naming the first. Items carry the permission bits
//! always, and owner, times and xattrs (and set-id bits) when the rule mirrors attributes.

use serde::{Deserialize, Serialize};

/// The largest data chunk of a [`super::Msg::RestoreData`].
pub const RESTORE_CHUNK: usize = 1 << 20;
/// The most xattrs of one item.
pub const MAX_XATTRS: usize = 1024;
/// The longest xattr name.
pub const MAX_XATTR_NAME: usize = 255;
/// The longest xattr value.
pub const MAX_XATTR_VALUE: usize = 64 << 10;

/// What a restored name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestoreKind {
    /// A directory; what it holds follows.
    Dir,
    /// A regular file; its data follows in [`super::Msg::RestoreData`] frames.
    File,
    /// A symbolic link ([`RestoreItem::target`]).
    Symlink,
    /// A named pipe.
    Fifo,
    /// Another name of a file sent earlier in the same answer (a hard link):
    /// [`RestoreItem::target`] is that file's full source name.
    Link,
}

/// One extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Its name (`user.x`, …).
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Its value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// What a rule with `--attrs` keeps besides the permission bits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreAttrs {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Access time: seconds since the epoch, nanoseconds.
    pub atime: (i64, u32),
    /// Modification time.
    pub mtime: (i64, u32),
    /// Extended attributes.
    pub xattrs: Vec<Xattr>,
}

/// A name of the backup, as the source had it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreItem {
    /// The full source name.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// What it is.
    pub kind: RestoreKind,
    /// Permission bits (and set-id and sticky bits when [`RestoreItem::attrs`] is present).
    pub mode: u32,
    /// A file's size (its data may have holes); 0 for the others.
    pub size: u64,
    /// A symbolic link's target, or the earlier name of a [`RestoreKind::Link`]; empty for
    /// the others.
    #[serde(with = "serde_bytes")]
    pub target: Vec<u8>,
    /// Owner, times, xattrs: only for rules with `--attrs`.
    pub attrs: Option<RestoreAttrs>,
}

/// Whether `path` is a restore request's path: absolute and normalised (`/`, or components
/// that are neither empty, `.` nor `..`, without NUL and without a trailing `/`), at most
/// `max` bytes.
pub fn valid_path(path: &[u8], max: usize) -> bool {
    if path == b"/" {
        return true;
    }
    path.len() <= max
        && path.first() == Some(&b'/')
        && !path.contains(&0)
        && path[1..]
            .split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// Whether `name` is `under` itself or beneath it (both normalised absolute paths; `/` holds
/// everything).
pub fn is_under(name: &[u8], under: &[u8]) -> bool {
    let under = under.strip_suffix(b"/").unwrap_or(under);
    name == under || (name.starts_with(under) && name.get(under.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_and_normalised() {
        for ok in ["/", "/a", "/a/b.c", "/a/..b/c.."] {
            assert!(valid_path(ok.as_bytes(), 100), "{ok}");
        }
        for bad in [
            "", "a", "/a/", "//a", "/a//b", "/a/./b", "/a/../b", "/..", "/a/..", "/.", "a\0",
        ] {
            assert!(!valid_path(bad.as_bytes(), 100), "{bad:?}");
        }
        assert!(!valid_path(b"/aaaa", 4));
    }

    #[test]
    fn under() {
        assert!(is_under(b"/p/a", b"/p/a"));
        assert!(is_under(b"/p/a/b", b"/p/a"));
        assert!(is_under(b"/p/a/b", b"/p/a/"));
        assert!(!is_under(b"/p/ab", b"/p/a"));
        assert!(is_under(b"/p", b"/"));
        assert!(is_under(b"/", b"/"));
        assert!(!is_under(b"/p", b"/p/a"));
    }
}
