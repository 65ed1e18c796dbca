//! Backup names: where under `--root` an entry's file is, and the LRU of open backup files.
//!
//! A source name is the rule's fixed prefix followed by the matched remainder; the backup is
//! `NAMESPACE/dest` for a fixed-file rule and `NAMESPACE/dest/remainder` otherwise (DESIGN.md),
//! where NAMESPACE is the part of the root the source's key grants (`<root>/<site-id>/` by
//! default). A name that names the rule's base directory itself (one byte shorter than the
//! prefix) is `NAMESPACE/dest`. Every remainder is checked before use: relative, no empty, `.`
//! or `..` component, no NUL; destinations and namespaces are normalised relative paths, so
//! nothing maps outside the namespace.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use mirrorfs::rule::PatternKind;

use crate::config::RouterRule;

/// Why a name cannot be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is not selected by the rule it names.
    #[error("{name} is not under the rule's source {pattern}")]
    NotUnderRule {
        /// The name.
        name: String,
        /// The rule's pattern.
        pattern: String,
    },
    /// The rule's source has no key on this router (removed since): it is granted nothing.
    #[error("source site of rule {pattern} has no key on this router any more; nothing of it is written")]
    NoKey {
        /// The rule's pattern.
        pattern: String,
    },
    /// The name would be written where the router builds copies ([`crate::staging::DIR`]).
    #[error("{name} maps to {}/ at the top of the backup root, which the router keeps for copies in progress", crate::staging::DIR)]
    Reserved {
        /// The name.
        name: String,
    },
    /// A component would leave the destination.
    #[error("{name} has an unsafe component {component:?}")]
    Unsafe {
        /// The name.
        name: String,
        /// The component.
        component: String,
    },
}

/// The backup path relative to the root for `name` under `rule`. Nothing is written under
/// [`crate::staging::DIR`] at the top of the root (the router's copies in progress).
pub fn backup_rel(rule: &RouterRule, name: &[u8]) -> Result<PathBuf, NameError> {
    let rel = backup_rel_of(rule, name)?;
    match rel.components().next() {
        Some(std::path::Component::Normal(c)) if c == crate::staging::DIR => {
            Err(NameError::Reserved {
                name: String::from_utf8_lossy(name).into_owned(),
            })
        }
        _ => Ok(rel),
    }
}

fn backup_rel_of(rule: &RouterRule, name: &[u8]) -> Result<PathBuf, NameError> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    let not_under = || NameError::NotUnderRule {
        name: shown(),
        pattern: rule.pattern.as_str().to_string(),
    };
    let prefix = rule.pattern.prefix();
    let dest = rule.dest_rel().ok_or_else(|| NameError::NoKey {
        pattern: rule.pattern.as_str().to_string(),
    })?;
    if rule.pattern.kind() == PatternKind::File {
        return if name == prefix {
            Ok(dest)
        } else {
            Err(not_under())
        };
    }
    let base = &prefix[..prefix.len().saturating_sub(1)];
    if name == base || name == prefix {
        return Ok(dest);
    }
    let rest = name.strip_prefix(prefix).ok_or_else(not_under)?;
    let mut out = dest;
    for c in rest.split(|&b| b == b'/') {
        if c.is_empty() || c == b"." || c == b".." || c.contains(&0) {
            return Err(NameError::Unsafe {
                name: shown(),
                component: String::from_utf8_lossy(c).into_owned(),
            });
        }
        out.push(std::ffi::OsStr::from_bytes(c));
    }
    Ok(out)
}

/// A bounded set of open backup files, least recently used closed first (seeds/002 [0064]).
#[derive(Debug)]
pub struct OpenFiles {
    cap: usize,
    files: VecDeque<(PathBuf, File)>,
}

impl OpenFiles {
    /// Keeps at most `cap` files open.
    pub fn new(cap: usize) -> OpenFiles {
        OpenFiles {
            cap: cap.max(1),
            files: VecDeque::new(),
        }
    }

    /// The open file for `path`, opening it with `open` when it is not open.
    pub fn get(
        &mut self,
        path: &Path,
        open: impl FnOnce() -> std::io::Result<File>,
    ) -> std::io::Result<&File> {
        let hit = self.files.iter().position(|(p, _)| p == path);
        // A file removed behind the router's back (nlink 0) is opened again by name.
        let hit = hit.filter(|&i| self.files[i].1.metadata().is_ok_and(|m| m.nlink() > 0));
        if let Some(i) = hit {
            let hit = self.files.remove(i).expect("index is in range");
            self.files.push_front(hit);
        } else {
            self.files.retain(|(p, _)| p != path);
            let f = open()?;
            if self.files.len() >= self.cap {
                self.files.pop_back();
            }
            self.files.push_front((path.to_path_buf(), f));
        }
        Ok(&self.files[0].1)
    }

    /// Closes `path` if it is open (its name now leads to another file).
    pub fn forget(&mut self, path: &Path) {
        self.files.retain(|(p, _)| p != path);
    }

    /// Whether `path` is open (and still has a name).
    pub fn has(&self, path: &Path) -> bool {
        self.files
            .iter()
            .any(|(p, f)| p == path && f.metadata().is_ok_and(|m| m.nlink() > 0))
    }

    /// Closes everything (after names changed).
    pub fn clear(&mut self) {
        self.files.clear();
    }

    /// Number of files open.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrorfs::rule::{Dest, Pattern};

    fn rule(p: &str, d: &str) -> RouterRule {
        RouterRule {
            crc: 1,
            pattern: Pattern::parse(p).unwrap(),
            dest: Dest::parse(d).unwrap(),
            attrs: false,
            delete_suffix: None,
            namespace: Some(PathBuf::new()),
        }
    }

    #[test]
    fn names_map_beneath_the_namespace_and_nowhere_without_a_key() {
        let mut s = rule("/p/a/", "proj");
        s.namespace = Some(PathBuf::from("laptop"));
        assert_eq!(
            backup_rel(&s, b"/p/a/s/t.rs").unwrap(),
            Path::new("laptop/proj/s/t.rs")
        );
        assert_eq!(backup_rel(&s, b"/p/a").unwrap(), Path::new("laptop/proj"));
        s.namespace = None;
        assert!(matches!(
            backup_rel(&s, b"/p/a/x"),
            Err(NameError::NoKey { .. })
        ));
    }

    #[test]
    fn overlapping_destinations_of_one_source() {
        let rules = [rule("/p/", "proj"), rule("/p/f1.txt", "proj/f2.txt")];
        let (a, b) = crate::config::overlapping(&rules).expect("overlap");
        assert_eq!((a.dest.as_str(), b.dest.as_str()), ("proj", "proj/f2.txt"));
        assert!(crate::config::overlapping(&[rule("/p/", "proj"), rule("/q/", "proj2")]).is_none());
    }

    #[test]
    fn names_map_under_the_destination() {
        let s = rule("/p/a/", "d");
        assert_eq!(
            backup_rel(&s, b"/p/a/s/t.rs").unwrap(),
            Path::new("d/s/t.rs")
        );
        assert_eq!(backup_rel(&s, b"/p/a").unwrap(), Path::new("d"));
        assert!(backup_rel(&s, b"/p/ab").is_err());
        assert!(backup_rel(&s, b"/p/a/../x").is_err());
        assert!(backup_rel(&s, b"/p/a/x//y").is_err());
        let f = rule("/p/a/x.doc", "one/file");
        assert_eq!(
            backup_rel(&f, b"/p/a/x.doc").unwrap(),
            Path::new("one/file")
        );
        assert!(backup_rel(&f, b"/p/a/y.doc").is_err());
        let w = rule("/p/a/*.doc", "docs");
        assert_eq!(
            backup_rel(&w, b"/p/a/y.doc").unwrap(),
            Path::new("docs/y.doc")
        );
    }

    #[test]
    fn lru_keeps_the_most_recent() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = OpenFiles::new(2);
        let mut opened = 0;
        for n in ["a", "b", "a", "c", "a", "b"] {
            let p = dir.path().join(n);
            o.get(&p, || {
                opened += 1;
                File::create(&p)
            })
            .unwrap();
        }
        // a, b, (a hit), c evicts b, (a hit), b evicts c.
        assert_eq!(opened, 4);
        assert_eq!(o.len(), 2);
    }
}
