//! Which names a copy may read: the one check every source of copies goes through (copies
//! `mirror-ctl sync` asks mirrorfs for, copy entries read from the journal, dirty sets, and the
//! copies a router asks for), so that no request makes a daemon read a file no rule selects.
//!
//! A name may be copied under a rule when it is a normalised absolute name (no empty, `.` or
//! `..` component), the rule selects it (or it is the rule's base directory, for a wildcard
//! or subtree rule), and no directory between the rule's fixed prefix and the name is a symbolic link
//! (one could lead anywhere on this machine).

use std::os::unix::ffi::OsStrExt;

use crate::rule::Pattern;

/// Why a copy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyRefused {
    /// Not a normalised absolute name.
    #[error("{0} is not a normalised absolute path")]
    NotNormal(String),
    /// The rule does not select the name.
    #[error("{name} is not selected by rule {pattern}")]
    NotSelected {
        /// The name.
        name: String,
        /// The rule's pattern.
        pattern: String,
    },
    /// A directory on the way is a symbolic link.
    #[error("{name}: {dir} is a symbolic link (a copy never follows one)")]
    ThroughSymlink {
        /// The name.
        name: String,
        /// The directory that is a symlink.
        dir: String,
    },
    /// A directory on the way cannot be looked at.
    #[error("{name}: cannot look at {dir}: {err}")]
    CannotLook {
        /// The name.
        name: String,
        /// The directory.
        dir: String,
        /// Why.
        err: String,
        /// Whether it may pass: the source is a mount whose server is gone for now
        /// ([`is_transient`]), so the copy is to be tried again rather than refused.
        transient: bool,
    },
}

impl CopyRefused {
    /// Whether the refusal may pass (see [`CopyRefused::CannotLook`]).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CopyRefused::CannotLook {
                transient: true,
                ..
            }
        )
    }
}

/// Whether `e` is what reading through a FUSE mount whose server died gives (`ENOTCONN`, or
/// `ECONNABORTED` for a request the dying server had in hand): the mount comes back, so what
/// failed is to be tried again, not given up.
pub fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
    )
}

fn shown(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether a copy of `name` may be read under a rule with `pattern`; `is_symlink(dir)` tells
/// whether the directory `dir` (a full name above `name`) is a symbolic link (an absent one is
/// not: a copy reads nothing through it, and a deletion may still be sent).
pub fn may_copy_with(
    pattern: &Pattern,
    name: &[u8],
    is_symlink: impl Fn(&[u8]) -> std::io::Result<bool>,
) -> Result<(), CopyRefused> {
    let normal = name.first() == Some(&b'/')
        && name[1..]
            .split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..");
    if !normal {
        return Err(CopyRefused::NotNormal(shown(name)));
    }
    let prefix = pattern.prefix();
    let base = prefix.strip_suffix(b"/").unwrap_or(prefix);
    let selected = pattern.match_file(name).is_some()
        || pattern.match_dir(name).is_some()
        || (pattern.kind() != crate::rule::PatternKind::File && name == base);
    if !selected || name.get(..base.len()) != Some(base) {
        return Err(CopyRefused::NotSelected {
            name: shown(name),
            pattern: pattern.as_str().to_string(),
        });
    }
    // Every directory strictly between the rule's base and the name.
    for (i, _) in name[base.len()..]
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'/')
        .skip(1)
    {
        let dir = &name[..base.len() + i];
        match is_symlink(dir) {
            Ok(false) => {}
            Ok(true) => {
                return Err(CopyRefused::ThroughSymlink {
                    name: shown(name),
                    dir: shown(dir),
                })
            }
            Err(e) => {
                return Err(CopyRefused::CannotLook {
                    name: shown(name),
                    dir: shown(dir),
                    transient: is_transient(&e),
                    err: e.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// [`may_copy_with`], looking at the directories by their full names (reached in steps when
/// longer than one call takes, [`crate::beneath::Reach`]).
pub fn may_copy(pattern: &Pattern, name: &[u8]) -> Result<(), CopyRefused> {
    may_copy_with(pattern, name, |dir| {
        let reach =
            crate::beneath::Reach::new(std::path::Path::new(std::ffi::OsStr::from_bytes(dir)));
        match reach.and_then(|r| std::fs::symlink_metadata(r.path())) {
            Ok(m) => Ok(m.file_type().is_symlink()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_rule_selects_through_no_symlink() {
        let p = Pattern::parse("/p/a/").unwrap();
        assert!(may_copy(&p, b"/p/a/x").is_ok());
        assert!(may_copy(&p, b"/p/a").is_ok());
        for bad in [
            &b"/etc/shadow"[..],
            b"/p/a/../../etc/shadow",
            b"/p/a//x",
            b"/p/ab",
            b"p/a/x",
            b"/p/a/./x",
        ] {
            assert!(may_copy(&p, bad).is_err(), "{}", shown(bad));
        }
        // A symlinked directory inside the source is not walked through.
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        std::fs::create_dir_all(a.join("real")).unwrap();
        std::os::unix::fs::symlink("/etc", a.join("link")).unwrap();
        let p = Pattern::parse(&format!("{}/", a.display())).unwrap();
        let name = |rel: &str| format!("{}/{rel}", a.display()).into_bytes();
        assert!(may_copy(&p, &name("real/x")).is_ok());
        assert!(matches!(
            may_copy(&p, &name("link/passwd")),
            Err(CopyRefused::ThroughSymlink { .. })
        ));
        let f = Pattern::parse("/p/a/*.doc").unwrap();
        assert!(may_copy(&f, b"/p/a/x.doc").is_ok());
        // Its directory (for a reconcile), but nothing else in it.
        assert!(may_copy(&f, b"/p/a").is_ok());
        let one = Pattern::parse("/p/a/x.doc").unwrap();
        assert!(may_copy(&one, b"/p/a").is_err());
        assert!(may_copy(&f, b"/p/a/x.txt").is_err());
    }
}
