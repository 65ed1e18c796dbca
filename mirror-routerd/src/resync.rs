//! Copies the router asks its sources for ([`mirrorfs::wire::Msg::Resync`]): a backup file
//! that entries cannot bring up to date (the data of an entry failed its checksum, a rename's
//! source never arrived, a damaged pair of router logs held its entries) needs a fresh copy
//! from its source.
//!
//! Requests are kept in `<router state>/resync` (JSON lines, replaced atomically) from the
//! moment they are made until the copy has arrived, so that none is lost when the source is
//! not connected, when its session ends before the copy is sent, or when the router restarts:
//! every pending request of a source is sent again each time it connects. They are
//! deduplicated by (site, rule, name), and bounded: past [`MAX_PER_RULE`] names of one rule,
//! or [`MAX_REQUESTS`] in all, the names of a rule become one request for the whole rule (a
//! copy of its base).
//!
//! When a copy has arrived: a source answers a request with [`Part::Extra`] entries (a
//! file: its writes, then its size; a directory: itself, then what is beneath it; a name gone
//! at the source: its deletion; nothing when it refuses), then one more `Extra` entry of
//! command [`Command::Copy`] with the rule and name asked for, which the router process
//! skips. A request is complete once that entry is stored durably: everything before it in
//! the stream is too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mirrorfs::blocked::{self, hex, unhex, BlockedError};
use mirrorfs::entry::Command;
use mirrorfs::wire::{Part, WireEntry};
use serde::{Deserialize, Serialize};

/// Names of one rule kept before they become one request for the whole rule.
pub const MAX_PER_RULE: usize = 1000;
/// Requests kept at most.
pub const MAX_REQUESTS: usize = 10_000;

/// One copy asked of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRequest {
    /// The source site.
    pub site: String,
    /// The rule.
    pub rule_crc: u32,
    /// The full source name, for people (lossy where it is not UTF-8).
    pub name: String,
    /// The full source name, exactly (hex).
    pub name_hex: String,
    /// Whether this is the copy of a whole rule (its base).
    pub whole_rule: bool,
    /// Why it is needed.
    pub reason: String,
    /// When it was first asked (seconds since the epoch).
    pub since: u64,
    /// In how many sessions of the source it was sent so far.
    pub sent: u32,
}

impl CopyRequest {
    /// A request for a copy of `name` (rule `rule_crc` of `site`).
    pub fn new(site: &str, rule_crc: u32, name: &[u8], reason: String) -> CopyRequest {
        CopyRequest {
            site: site.to_string(),
            rule_crc,
            name: String::from_utf8_lossy(name).into_owned(),
            name_hex: hex(name),
            whole_rule: false,
            reason,
            since: blocked::now_secs(),
            sent: 0,
        }
    }

    /// A request for a copy of everything rule `rule_crc` of `site` selects (its `base`).
    pub fn whole(site: &str, rule_crc: u32, base: &[u8], reason: String) -> CopyRequest {
        CopyRequest {
            whole_rule: true,
            ..CopyRequest::new(site, rule_crc, base, reason)
        }
    }

    /// The exact name.
    pub fn name_bytes(&self) -> Vec<u8> {
        unhex(&self.name_hex).unwrap_or_else(|| self.name.as_bytes().to_vec())
    }

    fn key(&self) -> Key {
        (self.site.clone(), self.rule_crc, self.name_bytes())
    }
}

/// (site, rule, name) of a request.
pub type Key = (String, u32, Vec<u8>);

/// Whether `name` is `base` or beneath it.
fn under(name: &[u8], base: &[u8]) -> bool {
    name == base || (name.len() > base.len() && name.starts_with(base) && name[base.len()] == b'/')
}

/// The pending requests.
#[derive(Debug)]
pub struct CopyRequests {
    path: PathBuf,
    map: BTreeMap<Key, CopyRequest>,
    /// A pending request took a newer reason since the last store.
    updated: bool,
}

impl CopyRequests {
    /// The requests kept in `path` (none when it does not exist).
    pub fn load(path: &Path) -> Result<CopyRequests, BlockedError> {
        let map = blocked::load_list::<CopyRequest>(path)?
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        Ok(CopyRequests {
            path: path.to_path_buf(),
            map,
            updated: false,
        })
    }

    /// Writes them back (atomically, durably).
    pub fn store(&mut self) -> Result<(), BlockedError> {
        blocked::store_list(&self.path, self.map.values())?;
        self.updated = false;
        Ok(())
    }

    /// Whether a pending request took a newer reason since the last store.
    pub fn updated(&self) -> bool {
        self.updated
    }

    /// Every pending request, by site, rule and name.
    pub fn list(&self) -> Vec<CopyRequest> {
        self.map.values().cloned().collect()
    }

    /// How many are pending.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Adds `reqs` (not stored yet: call [`CopyRequests::store`]); returns the keys of those
    /// that were not pending, to be sent now. One already pending keeps its place and takes
    /// the newer reason (the copy asked serves both). `base(site, rule)` is the base name of a rule
    /// (for collapsing many names into the whole rule), `None` for a rule the router does not
    /// know (whose requests are dropped when the bound is reached).
    pub fn add(
        &mut self,
        reqs: impl IntoIterator<Item = CopyRequest>,
        base: impl Fn(&str, u32) -> Option<Vec<u8>>,
    ) -> Vec<Key> {
        let mut fresh = Vec::new();
        for r in reqs {
            let k = r.key();
            if let Some(pending) = self.map.get_mut(&k) {
                if pending.reason != r.reason {
                    pending.reason = r.reason;
                    self.updated = true;
                }
                continue;
            }
            if self.covered(&k) {
                continue;
            }
            if r.whole_rule {
                // The whole rule covers every name of it.
                self.map
                    .retain(|(s, c, n), _| !(s == &k.0 && *c == k.1 && under(n, &k.2)));
                fresh.retain(|(s, c, n): &Key| !(s == &k.0 && *c == k.1 && under(n, &k.2)));
            }
            self.map.insert(k.clone(), r);
            fresh.push(k);
        }
        let collapsed = self.bound(&base);
        fresh.retain(|k| self.map.contains_key(k));
        fresh.extend(collapsed);
        fresh
    }

    /// Whether a whole-rule request already covers `k`.
    fn covered(&self, k: &Key) -> bool {
        self.map
            .iter()
            .any(|((s, c, n), r)| r.whole_rule && s == &k.0 && *c == k.1 && under(&k.2, n))
    }

    /// Keeps the bounds; the whole-rule requests that replaced names.
    fn bound(&mut self, base: &impl Fn(&str, u32) -> Option<Vec<u8>>) -> Vec<Key> {
        let mut made = Vec::new();
        // Bounded: each pass removes one rule's names (or requests of an unknown rule).
        for _ in 0..=MAX_REQUESTS {
            let mut per_rule: BTreeMap<(String, u32), usize> = BTreeMap::new();
            for ((s, c, _), r) in &self.map {
                if !r.whole_rule {
                    *per_rule.entry((s.clone(), *c)).or_default() += 1;
                }
            }
            let worst = per_rule.iter().max_by_key(|(_, n)| **n);
            let Some(((site, crc), &count)) = worst else {
                break;
            };
            if count <= MAX_PER_RULE && self.map.len() <= MAX_REQUESTS {
                break;
            }
            let (site, crc) = (site.clone(), *crc);
            self.map
                .retain(|(s, c, _), r| r.whole_rule || !(s == &site && *c == crc));
            match base(&site, crc) {
                Some(b) => {
                    let r = CopyRequest::whole(
                        &site,
                        crc,
                        &b,
                        format!(
                            "{count} files of this rule needed a copy: the whole rule is copied instead"
                        ),
                    );
                    log::warn!(
                        "source {site}: {count} files of rule {crc:#010x} need a copy; asking for the whole rule ({}) instead",
                        r.name
                    );
                    let k = r.key();
                    self.map.insert(k.clone(), r);
                    made.push(k);
                }
                None => log::warn!(
                    "source {site}: dropped {count} copy requests of rule {crc:#010x}, which this router no longer has"
                ),
            }
        }
        made
    }

    /// The request of key `k`.
    pub fn get(&self, k: &Key) -> Option<&CopyRequest> {
        self.map.get(k)
    }

    /// The keys of `site`'s pending requests.
    pub fn of_site(&self, site: &str) -> Vec<Key> {
        self.map
            .keys()
            .filter(|(s, _, _)| s == site)
            .cloned()
            .collect()
    }

    /// Counts a sending of each of `keys` (not stored yet).
    pub fn note_sent(&mut self, keys: &[Key]) {
        for k in keys {
            if let Some(r) = self.map.get_mut(k) {
                r.sent = r.sent.saturating_add(1);
            }
        }
    }

    /// Removes `keys` (not stored yet); the requests removed.
    pub fn remove(&mut self, keys: &[Key]) -> Vec<CopyRequest> {
        keys.iter().filter_map(|k| self.map.remove(k)).collect()
    }

    /// Removes the requests of `site` whose rule `keep` says is gone (not stored yet); how
    /// many.
    pub fn retain_rules(&mut self, site: &str, keep: impl Fn(u32) -> bool) -> usize {
        let before = self.map.len();
        self.map.retain(|(s, c, _), _| s != site || keep(*c));
        before - self.map.len()
    }

    /// The entries from `site` just stored durably: the keys of the requests whose copy
    /// they complete.
    pub fn stored(&self, site: &str, entries: &[WireEntry]) -> Vec<Key> {
        if self.map.is_empty() {
            return Vec::new();
        }
        let mut done: Vec<Key> = entries
            .iter()
            .filter(|e| e.part == Part::Extra && e.command == Command::Copy)
            .map(|e| (site.to_string(), e.rule_crc, e.name.clone()))
            .filter(|k| self.map.contains_key(k))
            .collect();
        done.dedup();
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrorfs::journal::Position;

    fn extra(command: Command, name: &str) -> WireEntry {
        WireEntry {
            pos: Position::START,
            part: Part::Extra,
            command,
            rule_crc: 7,
            name: name.as_bytes().to_vec(),
            aux: Vec::new(),
            offset: 0,
            size: 0,
            time_ns: 0,
            data: Vec::new(),
        }
    }

    fn req(name: &str) -> CopyRequest {
        CopyRequest::new("s", 7, name.as_bytes(), "test".into())
    }

    #[test]
    fn requests_survive_a_reload_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resync");
        let mut q = CopyRequests::load(&path).unwrap();
        let name = "/p/caf\u{e9}/\u{1F600}";
        let fresh = q.add([req(name), req(name), req("/p/b")], |_, _| None);
        assert_eq!(fresh.len(), 2);
        q.store().unwrap();
        let mut q = CopyRequests::load(&path).unwrap();
        assert_eq!(q.len(), 2);
        assert!(q.add([req("/p/b")], |_, _| None).is_empty());
        let keys = q.of_site("s");
        assert!(keys.iter().any(|k| k.2 == name.as_bytes()));
        assert!(q.of_site("other").is_empty());
        // A whole-rule request covers the names beneath its base, now and later.
        let fresh = q.add(
            [CopyRequest::whole("s", 7, b"/p", "hole".into())],
            |_, _| None,
        );
        assert_eq!(fresh.len(), 1);
        assert_eq!(q.len(), 1);
        assert!(q.add([req("/p/c")], |_, _| None).is_empty());
        assert_eq!(q.add([req("/q/c")], |_, _| None).len(), 1);
    }

    #[test]
    fn many_names_of_one_rule_become_the_whole_rule() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = CopyRequests::load(&dir.path().join("resync")).unwrap();
        let names: Vec<CopyRequest> = (0..=MAX_PER_RULE)
            .map(|i| req(&format!("/p/f{i}")))
            .collect();
        let fresh = q.add(names, |_, _| Some(b"/p".to_vec()));
        assert_eq!(q.len(), 1);
        let only = q.list().remove(0);
        assert!(only.whole_rule && only.name == "/p", "{only:?}");
        assert_eq!(fresh.len(), 1);
    }

    #[test]
    fn a_request_is_complete_once_the_source_says_its_copy_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = CopyRequests::load(&dir.path().join("resync")).unwrap();
        q.add([req("/p/f"), req("/p/d")], |_, _| None);
        // The copy itself completes nothing; the source's end of it does.
        let copy = [
            extra(Command::Write, "/p/f"),
            extra(Command::Truncate, "/p/f"),
            extra(Command::Mkdir, "/p/d"),
        ];
        assert!(q.stored("s", &copy).is_empty());
        let done = q.stored("s", &[extra(Command::Copy, "/p/f")]);
        assert_eq!(done, vec![("s".to_string(), 7, b"/p/f".to_vec())]);
        // Not from the journal only, and not from another site.
        let mut journal = extra(Command::Copy, "/p/d");
        journal.part = Part::Last;
        assert!(q.stored("s", &[journal]).is_empty());
        assert!(q.stored("t", &[extra(Command::Copy, "/p/d")]).is_empty());
        assert_eq!(q.stored("s", &[extra(Command::Copy, "/p/d")]).len(), 1);
    }
}
