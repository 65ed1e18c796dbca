//! The send process configuration table (seeds/002 [0039], [0055]): every rule with its CRC,
//! sorted by CRC for a binary search, and the sites they name.

use std::sync::Arc;

use mirrorfs::rule::Rule;
use mirrorfs::wire::WireRule;

/// The rules of one configuration version, by CRC.
#[derive(Debug, Default)]
pub struct SendTable {
    /// Configuration version.
    pub version: u64,
    /// (CRC, rule, its sites as `HOST:PORT` strings), by CRC.
    by_crc: Vec<(u32, Arc<Rule>, Vec<String>)>,
}

impl SendTable {
    /// Indexes `rules` of configuration `version`.
    pub fn new(version: u64, rules: Vec<Rule>) -> SendTable {
        let mut by_crc: Vec<(u32, Arc<Rule>, Vec<String>)> = rules
            .into_iter()
            .map(|r| {
                let sites = r.spec.sites.iter().map(|s| s.to_string()).collect();
                (r.crc, Arc::new(r), sites)
            })
            .collect();
        by_crc.sort_by_key(|(c, _, _)| *c);
        SendTable { version, by_crc }
    }

    /// The rule with CRC `crc`.
    pub fn get(&self, crc: u32) -> Option<&Arc<Rule>> {
        self.row(crc).map(|(_, r, _)| r)
    }

    fn row(&self, crc: u32) -> Option<&(u32, Arc<Rule>, Vec<String>)> {
        self.by_crc
            .binary_search_by_key(&crc, |(c, _, _)| *c)
            .ok()
            .map(|i| &self.by_crc[i])
    }

    /// The rule `crc` if it sends to `site`.
    pub fn sends_to(&self, crc: u32, site: &str) -> Option<&Arc<Rule>> {
        self.row(crc)
            .filter(|(_, _, sites)| sites.iter().any(|s| s == site))
            .map(|(_, r, _)| r)
    }

    /// Every rule that sends to `site`.
    pub fn rules_of(&self, site: &str) -> Vec<Arc<Rule>> {
        self.by_crc
            .iter()
            .filter(|(_, _, sites)| sites.iter().any(|s| s == site))
            .map(|(_, r, _)| r.clone())
            .collect()
    }

    /// Whether some rule sends to `site`.
    pub fn has_site(&self, site: &str) -> bool {
        self.by_crc
            .iter()
            .any(|(_, _, sites)| sites.iter().any(|s| s == site))
    }

    /// Every site some rule names, sorted, without repeats.
    pub fn sites(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_crc
            .iter()
            .flat_map(|(_, _, sites)| sites.iter().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The rules naming `site`, as the router stores them.
    pub fn wire_rules(&self, site: &str) -> Vec<WireRule> {
        self.by_crc
            .iter()
            .filter(|(_, _, sites)| sites.iter().any(|s| s == site))
            .map(|(crc, r, _)| WireRule {
                crc: *crc,
                pattern: r.spec.pattern.as_str().to_string(),
                dest: r.spec.dest.as_str().to_string(),
                attrs: r.spec.attrs,
                delete_suffix: r.spec.delete_suffix.clone(),
            })
            .collect()
    }
}
