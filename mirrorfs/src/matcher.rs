//! The matcher of seeds/002 \[0038\]–\[0045\]: which rules select a name, and the matched remainder.
//!
//! A [`RuleTable`] is built once per configuration version and never changes; [`Matcher`] holds
//! the current one behind an [`ArcSwap`], so a lookup takes no lock: it loads the table pointer
//! and searches.
//!
//! * **Fixed names**: a table of `(CRC32(path), rule)` sorted by CRC; a lookup computes the CRC
//!   of the name, binary-searches the equal range, and confirms each candidate with a full
//!   compare (so CRC collisions cost time, never correctness).
//! * **Wildcard and subtree rules**: the seed rejects a rule when the name is shorter than its
//!   fixed prefix, compares the prefix, then matches the remainder. Checking every rule that
//!   way is linear in the number of rules, so the prefixes are indexed the same way as fixed
//!   names: for each `/` in the name whose prefix length is the length of some rule's prefix
//!   (a length check, as in the seed), the CRC of that prefix is binary-searched, candidates
//!   are confirmed by comparing the prefix, and the remainder is matched with globset.
//!   Wildcard rules (`/p/*.x`) are looked up at the name's parent only; subtree rules
//!   (`/p/`, `/p/*.x/`) at every ancestor.
//!
//! A lookup costs O(depth × log rules), independent of how many rules share no prefix with it.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::rule::{PatternKind, Rule};

/// The hash used for the CRC tables. Tests substitute a weak one to force collisions.
pub type HashFn = fn(&[u8]) -> u32;

/// CRC32 (IEEE) of `b`: the table hash in production.
pub fn crc32(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

/// One rule selecting a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Match {
    /// Index of the rule in [`RuleTable::rules`].
    pub rule: u32,
    /// Where the matched remainder starts in the name (`name.len()` for a fixed-file rule).
    pub remainder: u32,
}

/// The rules of one configuration version, indexed for lookup.
#[derive(Debug)]
pub struct RuleTable {
    version: u64,
    rules: Vec<Arc<Rule>>,
    fixed: Vec<(u32, u32)>,
    parent: Vec<(u32, u32)>,
    subtree: Vec<(u32, u32)>,
    /// `parent_len[n]`: some wildcard rule has a prefix of length n.
    parent_len: Vec<bool>,
    /// `subtree_len[n]`: some subtree rule has a prefix of length n.
    subtree_len: Vec<bool>,
    hash: HashFn,
}

impl Default for RuleTable {
    fn default() -> Self {
        RuleTable::build(Vec::new(), 0)
    }
}

fn lens_of(table: &[(u32, u32)], rules: &[Arc<Rule>]) -> Vec<bool> {
    let max = table
        .iter()
        .map(|&(_, i)| rules[i as usize].spec.pattern.prefix().len())
        .max();
    let mut v = vec![false; max.map_or(0, |m| m + 1)];
    for &(_, i) in table {
        v[rules[i as usize].spec.pattern.prefix().len()] = true;
    }
    v
}

impl RuleTable {
    /// Indexes `rules` (configuration version `version`).
    pub fn build(rules: Vec<Rule>, version: u64) -> RuleTable {
        Self::build_with_hash(rules, version, crc32)
    }

    /// As [`RuleTable::build`] with another hash: a test hook to force collisions.
    #[doc(hidden)]
    pub fn build_with_hash(rules: Vec<Rule>, version: u64, hash: HashFn) -> RuleTable {
        let rules: Vec<Arc<Rule>> = rules.into_iter().map(Arc::new).collect();
        let (mut fixed, mut parent, mut subtree) = (Vec::new(), Vec::new(), Vec::new());
        for (i, r) in rules.iter().enumerate() {
            let p = &r.spec.pattern;
            let row = (hash(p.prefix()), i as u32);
            match p.kind() {
                PatternKind::File => fixed.push(row),
                PatternKind::Wildcard => parent.push(row),
                PatternKind::Subtree | PatternKind::SubtreeWildcard => subtree.push(row),
            }
        }
        fixed.sort_unstable();
        parent.sort_unstable();
        subtree.sort_unstable();
        let parent_len = lens_of(&parent, &rules);
        let subtree_len = lens_of(&subtree, &rules);
        RuleTable {
            version,
            rules,
            fixed,
            parent,
            subtree,
            parent_len,
            subtree_len,
            hash,
        }
    }

    /// The configuration version these rules belong to.
    pub fn version(&self) -> u64 {
        self.version
    }
    /// The rules, by index.
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }
    /// Rule `m.rule`.
    pub fn rule(&self, m: Match) -> &Arc<Rule> {
        &self.rules[m.rule as usize]
    }
    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Candidates in `table` whose key equals `hash(prefix)` and whose prefix really is `prefix`.
    fn candidates<'a>(
        &'a self,
        table: &'a [(u32, u32)],
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (u32, &'a Rule)> + 'a {
        let h = (self.hash)(prefix);
        let start = table.partition_point(|&(k, _)| k < h);
        table[start..]
            .iter()
            .take_while(move |&&(k, _)| k == h)
            .map(|&(_, i)| (i, &*self.rules[i as usize]))
            .filter(move |(_, r)| r.spec.pattern.prefix() == prefix)
    }

    /// Every rule that selects the file (or symlink, fifo…) at absolute path `path`, in rule order.
    pub fn match_file(&self, path: &[u8]) -> Vec<Match> {
        self.lookup(path, false)
    }

    /// Every rule that selects the directory at `path` (subtree rules strictly above it).
    pub fn match_dir(&self, path: &[u8]) -> Vec<Match> {
        self.lookup(path, true)
    }

    fn lookup(&self, path: &[u8], dir: bool) -> Vec<Match> {
        let mut out = Vec::new();
        if self.rules.is_empty() {
            return out;
        }
        if !dir && !self.fixed.is_empty() {
            out.extend(self.candidates(&self.fixed, path).map(|(i, _)| Match {
                rule: i,
                remainder: path.len() as u32,
            }));
        }
        let last_slash = match path.iter().rposition(|&b| b == b'/') {
            Some(p) if p + 1 < path.len() => p,
            _ => return finish(out),
        };
        let base = &path[last_slash + 1..];
        if !dir {
            let plen = last_slash + 1;
            if self.parent_len.get(plen).copied().unwrap_or(false) {
                for (i, r) in self.candidates(&self.parent, &path[..plen]) {
                    if r.spec.pattern.glob_matches(base) {
                        out.push(Match {
                            rule: i,
                            remainder: plen as u32,
                        });
                    }
                }
            }
        }
        if !self.subtree.is_empty() {
            let limit = self.subtree_len.len().min(last_slash + 1);
            for (k, _) in path[..limit].iter().enumerate().filter(|(_, &b)| b == b'/') {
                let plen = k + 1;
                if !self.subtree_len.get(plen).copied().unwrap_or(false) {
                    continue;
                }
                for (i, r) in self.candidates(&self.subtree, &path[..plen]) {
                    let ok = match r.spec.pattern.kind() {
                        PatternKind::Subtree => true,
                        _ => !dir && r.spec.pattern.glob_matches(base),
                    };
                    if ok {
                        out.push(Match {
                            rule: i,
                            remainder: plen as u32,
                        });
                    }
                }
            }
        }
        finish(out)
    }
}

fn finish(mut out: Vec<Match>) -> Vec<Match> {
    if out.len() > 1 {
        out.sort_unstable();
    }
    out
}

/// The current [`RuleTable`], swapped atomically when the rules change.
#[derive(Debug, Default)]
pub struct Matcher {
    table: ArcSwap<RuleTable>,
}

impl Matcher {
    /// A matcher holding `table`.
    pub fn new(table: RuleTable) -> Self {
        Matcher {
            table: ArcSwap::from_pointee(table),
        }
    }
    /// The current table (an `Arc` to keep: an open file remembers the table its matches index).
    pub fn load(&self) -> Arc<RuleTable> {
        self.table.load_full()
    }
    /// Installs a new table; lookups already under way finish on the old one.
    pub fn store(&self, table: RuleTable) {
        self.table.store(Arc::new(table));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rule::{Dest, Mode, Pattern, RuleSpec, Site};

    /// A rule with one site and destination `d{id}` (shared by the crate's unit tests).
    pub(crate) fn rule(id: i64, pattern: &str) -> Rule {
        let spec = RuleSpec {
            pattern: Pattern::parse(pattern).unwrap(),
            sites: vec![Site::parse("h:1").unwrap()],
            dest: Dest::parse(&format!("d{id}")).unwrap(),
            attrs: false,
            delete_suffix: None,
            mode: Mode::Async,
            sync: Default::default(),
        };
        let crc = spec.crc();
        Rule { id, spec, crc }
    }

    #[test]
    fn each_form_and_remainders() {
        let t = RuleTable::build(
            vec![
                rule(1, "/p/a/x.doc"),
                rule(2, "/p/a/*.doc"),
                rule(3, "/p/a/"),
                rule(4, "/p/*.doc/"),
                rule(5, "/p/a/x.doc"),
            ],
            7,
        );
        assert_eq!(t.version(), 7);
        let ids = |path: &[u8]| -> Vec<(i64, usize)> {
            t.match_file(path)
                .into_iter()
                .map(|m| (t.rule(m).id, m.remainder as usize))
                .collect()
        };
        assert_eq!(
            ids(b"/p/a/x.doc"),
            vec![(1, 10), (2, 5), (3, 5), (4, 3), (5, 10)]
        );
        assert_eq!(ids(b"/p/a/s/y.doc"), vec![(3, 5), (4, 3)]);
        assert_eq!(ids(b"/p/b.txt"), vec![]);
        assert_eq!(ids(b"/p/a"), vec![]);
        assert_eq!(ids(b"/q"), vec![]);
        let dirs: Vec<i64> = t
            .match_dir(b"/p/a/s")
            .into_iter()
            .map(|m| t.rule(m).id)
            .collect();
        assert_eq!(dirs, vec![3]);
    }

    #[test]
    fn collisions_are_resolved_by_compare() {
        let t = RuleTable::build_with_hash(
            vec![
                rule(1, "/a/x"),
                rule(2, "/a/y"),
                rule(3, "/b/"),
                rule(4, "/c/"),
            ],
            0,
            |_| 42,
        );
        let m = t.match_file(b"/a/y");
        assert_eq!(m.len(), 1);
        assert_eq!(t.rule(m[0]).id, 2);
        let m = t.match_file(b"/c/q");
        assert_eq!(m.len(), 1);
        assert_eq!(t.rule(m[0]).id, 4);
    }

    #[test]
    fn matcher_swaps_tables() {
        let m = Matcher::new(RuleTable::default());
        let old = m.load();
        m.store(RuleTable::build(vec![rule(1, "/x/")], 3));
        assert!(old.match_file(b"/x/y").is_empty());
        assert_eq!(m.load().match_file(b"/x/y").len(), 1);
        assert_eq!(m.load().version(), 3);
    }
}
