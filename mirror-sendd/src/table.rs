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
    by_crc: Vec<(u32, Arc<Rule>)>,
}

impl SendTable {
    /// Indexes `rules` of configuration `version`.
    pub fn new(version: u64, rules: Vec<Rule>) -> SendTable {
        let mut by_crc: Vec<(u32, Arc<Rule>)> =
            rules.into_iter().map(|r| (r.crc, Arc::new(r))).collect();
        by_crc.sort_by_key(|(c, _)| *c);
        SendTable { version, by_crc }
    }

    /// The rule with CRC `crc`.
    pub fn get(&self, crc: u32) -> Option<&Arc<Rule>> {
        self.by_crc
            .binary_search_by_key(&crc, |(c, _)| *c)
            .ok()
            .map(|i| &self.by_crc[i].1)
    }

    /// Whether rule `crc` sends to `site`.
    pub fn sends_to(&self, crc: u32, site: &str) -> Option<&Arc<Rule>> {
        self.get(crc)
            .filter(|r| r.spec.sites.iter().any(|s| s.to_string() == site))
    }

    /// Every site some rule names, sorted, without repeats.
    pub fn sites(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_crc
            .iter()
            .flat_map(|(_, r)| r.spec.sites.iter().map(|s| s.to_string()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The rules naming `site`, as the router stores them.
    pub fn wire_rules(&self, site: &str) -> Vec<WireRule> {
        self.by_crc
            .iter()
            .filter(|(_, r)| r.spec.sites.iter().any(|s| s.to_string() == site))
            .map(|(crc, r)| WireRule {
                crc: *crc,
                pattern: r.spec.pattern.as_str().to_string(),
                dest: r.spec.dest.as_str().to_string(),
                attrs: r.spec.attrs,
                delete_suffix: r.spec.delete_suffix.clone(),
            })
            .collect()
    }
}
