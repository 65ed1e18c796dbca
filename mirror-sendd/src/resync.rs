//! Files to send whole because the journal entries that changed them could not be read
//! (a damaged journal record that was skipped, issue 12 item 7).
//!
//! Where the damage hides which files changed, every file of the site's rules is sent: each
//! rule's base (its file, or its directory with everything it selects). Names read from the
//! damaged records' fixed parts are added too, although they may be wrong, because what is done
//! with them is right whatever they say: a name that exists is sent as it is now, a name that
//! no longer exists is deleted from the backup (a damaged delete or rename leaves nothing
//! behind when its name survived).
//!
//! The set is durable (`<state>/resync/<site>`, the dirty set's format) before the reader moves
//! past the damage, so a crash loses nothing; a link sends it once it has caught up with the
//! journal (so the copies show the files as they are after every entry it replayed) and removes
//! what it sent once the router stored it.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use mirrorfs::blocked::{dirty_path, DirtySet};
use mirrorfs::journal::Skipped;
use mirrorfs::rule::Rule;

use crate::copy::CopyJob;
use crate::shared::{lock, Shared};
use crate::table::SendTable;

/// `(rule CRC, full source name)` of files to send whole.
pub type Names = BTreeSet<(u32, Vec<u8>)>;

/// The resync set file of `site`.
pub fn path(shared: &Shared, site: &str) -> PathBuf {
    let dirty = dirty_path(&shared.state_dir, site);
    let name = dirty
        .file_name()
        .map(OsStr::to_os_string)
        .unwrap_or_default();
    shared.state_dir.join("resync").join(name)
}

/// The names waiting to be sent for `site` (none when there is no set).
pub fn load(shared: &Shared, site: &str) -> Result<Names, String> {
    let _g = lock(&shared.dirty_lock);
    load_locked(shared, site)
}

fn load_locked(shared: &Shared, site: &str) -> Result<Names, String> {
    match DirtySet::load(&path(shared, site)) {
        Ok(s) => Ok(s.map(|s| s.names).unwrap_or_default()),
        Err(e) => Err(e.to_string()),
    }
}

/// Adds `names` to the set of `site`, durably. The caller holds `shared.dirty_lock`.
pub fn add_locked(shared: &Shared, site: &str, names: &Names) -> Result<(), String> {
    let mut set = DirtySet {
        names: load_locked(shared, site)?,
        ..DirtySet::default()
    };
    set.names.extend(names.iter().cloned());
    set.store(&path(shared, site)).map_err(|e| e.to_string())
}

/// Adds `names` to the set of `site`, durably.
pub fn add(shared: &Shared, site: &str, names: &Names) -> Result<(), String> {
    let _g = lock(&shared.dirty_lock);
    add_locked(shared, site, names)
}

/// Removes `names` (sent and stored by the router) from the set of `site`.
pub fn retire(shared: &Shared, site: &str, names: &Names) {
    let _g = lock(&shared.dirty_lock);
    let p = path(shared, site);
    let res = load_locked(shared, site).and_then(|mut left| {
        left.retain(|n| !names.contains(n));
        if left.is_empty() {
            match std::fs::remove_file(&p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("{}: {e}", p.display())),
            }
        } else {
            DirtySet {
                names: left,
                ..DirtySet::default()
            }
            .store(&p)
            .map_err(|e| e.to_string())
        }
    });
    match res {
        Ok(()) => log::info!(
            "site {site}: the {} files sent whole after journal damage are at the router",
            names.len()
        ),
        Err(e) => log::error!("site {site}: cannot update its resync set: {e}"),
    }
}

/// The directory (or file) a rule starts at: what a copy of the whole rule visits.
pub fn base(rule: &Rule) -> &[u8] {
    let p = rule.spec.pattern.prefix();
    match p.strip_suffix(b"/") {
        Some([]) => b"/",
        Some(b) => b,
        None => p,
    }
}

/// Whether `name` is a normalised absolute name inside what `rule` may select (a file it
/// matches, or anything beneath a subtree rule's base).
fn inside(rule: &Rule, name: &[u8]) -> bool {
    let normal = name.first() == Some(&b'/')
        && name[1..]
            .split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..");
    let pattern = &rule.spec.pattern;
    let b = base(rule);
    let beneath = match b {
        b"/" => name.len() > 1,
        _ => name.len() > b.len() && name.starts_with(b) && name[b.len()] == b'/',
    };
    normal && (pattern.match_file(name).is_some() || (pattern.kind().is_subtree() && beneath))
}

/// What to send for `site` after `skipped`: every rule's base, and the guessed names its rules
/// may select.
pub fn names_for(table: &SendTable, site: &str, skipped: &Skipped) -> Names {
    let rules = table.rules_of(site);
    let mut out = Names::new();
    for r in &rules {
        out.insert((r.crc, base(r).to_vec()));
    }
    for (_, name, aux) in &skipped.guessed {
        for n in [name, aux] {
            for r in rules.iter().filter(|r| inside(r, n)) {
                out.insert((r.crc, n.clone()));
            }
        }
    }
    out
}

/// `lstat` of a full name, reached in steps when longer than one call takes.
fn lstat(name: &[u8]) -> std::io::Result<std::fs::Metadata> {
    let r = mirrorfs::beneath::Reach::new(std::path::Path::new(OsStr::from_bytes(name)))?;
    std::fs::symlink_metadata(r.path())
}

/// What is there at `name` now: `Some(true)` something, `Some(false)` nothing, `None` the
/// source cannot be looked at (a dead mount, say).
fn exists(name: &[u8]) -> Option<bool> {
    match lstat(name) {
        Ok(_) => Some(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(false),
        Err(_) => None,
    }
}

/// The first component of `name` beneath the rule's base that does not exist now (the name to
/// delete on the backup), `None` when something on the way is not a directory or cannot be
/// looked at.
fn first_missing(rule: &Rule, name: &[u8]) -> Option<Vec<u8>> {
    let b = base(rule);
    if name == b {
        return (!exists(name)?).then(|| name.to_vec());
    }
    for (i, _) in name
        .iter()
        .enumerate()
        .skip(b.len() + 1)
        .filter(|(_, &c)| c == b'/')
        .chain(std::iter::once((name.len(), &b'/')))
    {
        let prefix = &name[..i];
        match lstat(prefix) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => return None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let subtree = rule.spec.pattern.kind().is_subtree();
                return (subtree || i == name.len()).then(|| prefix.to_vec());
            }
            Err(_) => return None,
        }
    }
    None
}

/// The jobs that send `names` for `site` as the files are now, or `None` when a rule's base
/// cannot be looked at now (try again later).
pub fn jobs(table: &SendTable, site: &str, names: &Names) -> Option<Vec<CopyJob>> {
    let mut out = Vec::new();
    for (crc, name) in names {
        let Some(rule) = table.sends_to(*crc, site) else {
            continue;
        };
        let is_base = name.as_slice() == base(rule);
        match exists(name) {
            None if is_base => return None,
            None => {}
            Some(true)
                if is_base || mirrorfs::copycheck::may_copy(&rule.spec.pattern, name).is_ok() =>
            {
                out.push(CopyJob::extra(rule.clone(), name.clone()))
            }
            Some(true) => {}
            Some(false) => {
                if let Some(gone) = first_missing(rule, name) {
                    out.push(CopyJob::deletion(rule.clone(), gone));
                }
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrorfs::journal::Position;

    fn rule(pattern: &str) -> Rule {
        use mirrorfs::rule::{Dest, Mode, Pattern, RuleSpec, Site};
        let spec = RuleSpec {
            pattern: Pattern::parse(pattern).unwrap(),
            sites: vec![Site::parse("127.0.0.1:1").unwrap()],
            dest: Dest::parse(&format!("d{}", pattern.len())).unwrap(),
            attrs: false,
            delete_suffix: None,
            mode: Mode::Async,
            sync: Default::default(),
        };
        Rule {
            id: 1,
            crc: spec.crc(),
            spec,
        }
    }

    #[test]
    fn names_are_the_bases_and_the_guesses_a_rule_selects() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        let sub = format!("{}/a/", root.display());
        let table = SendTable::new(
            1,
            vec![rule(&sub), rule(&format!("{}/b/*.doc", root.display()))],
        );
        let skipped = Skipped {
            from: Position::new(1, 64),
            to: Position::new(1, 200),
            guessed: vec![
                (
                    0,
                    format!("{}/a/x/y", root.display()).into_bytes(),
                    Vec::new(),
                ),
                (
                    0,
                    format!("{}/b/z.doc", root.display()).into_bytes(),
                    b"/etc/shadow".to_vec(),
                ),
                (
                    0,
                    format!("{}/a/../../etc", root.display()).into_bytes(),
                    Vec::new(),
                ),
                (
                    0,
                    format!("{}/b/q.txt", root.display()).into_bytes(),
                    Vec::new(),
                ),
            ],
        };
        let names = names_for(&table, "127.0.0.1:1", &skipped);
        let mut want: Vec<String> = vec![
            format!("{}/a", root.display()),
            format!("{}/b", root.display()),
            format!("{}/a/x/y", root.display()),
            format!("{}/b/z.doc", root.display()),
        ];
        want.sort();
        let mut got: Vec<String> = names
            .iter()
            .map(|(_, n)| String::from_utf8_lossy(n).into_owned())
            .collect();
        got.sort();
        got.dedup();
        assert_eq!(got, want);
    }

    #[test]
    fn a_vanished_name_is_deleted_from_its_first_missing_component() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/x")).unwrap();
        std::fs::write(root.join("a/f"), b"f").unwrap();
        let sub = rule(&format!("{}/a/", root.display()));
        let n = |s: &str| format!("{}/{s}", root.display()).into_bytes();
        assert_eq!(
            first_missing(&sub, &n("a/x/gone/deeper")),
            Some(n("a/x/gone"))
        );
        assert_eq!(first_missing(&sub, &n("a/gone")), Some(n("a/gone")));
        assert_eq!(first_missing(&sub, &n("a/x")), None, "it exists");
        assert_eq!(first_missing(&sub, &n("a/f/under-a-file")), None);
        let wild = rule(&format!("{}/a/*.doc", root.display()));
        assert_eq!(
            first_missing(&wild, &n("a/gone.doc")),
            Some(n("a/gone.doc"))
        );
        assert_eq!(first_missing(&wild, &n("a/nodir/gone.doc")), None);
        let gone = rule(&format!("{}/nothing/", root.display()));
        assert_eq!(first_missing(&gone, &n("nothing")), Some(n("nothing")));
    }
}
