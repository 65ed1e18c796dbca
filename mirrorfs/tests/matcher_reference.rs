//! The CRC-indexed matcher returns exactly what the naive reference matcher
//! ([`Pattern::match_file`], one rule at a time) returns, for random rule sets and paths:
//! names shorter than prefixes, unicode, names with glob metacharacters, and CRC collisions
//! forced through the test hook.

use mirrorfs::matcher::{HashFn, RuleTable};
use mirrorfs::rule::{Dest, Mode, Pattern, Rule, RuleSpec, Site};
use proptest::prelude::*;

/// Name components: short and overlapping so rules and paths meet; unicode; metacharacters.
const COMPONENTS: &[&str] = &[
    "a",
    "b",
    "ab",
    "x.doc",
    "y.doc",
    ".doc",
    "c.txt",
    "ü",
    "日本.doc",
    "*",
    "[1]",
    "?",
    "{a,b}",
    "a*b",
    "sp ace",
    "x[1].doc",
];
const GLOBS: &[&str] = &[
    "*.doc",
    "*",
    "?",
    "a*",
    "[ab]*",
    "*.{doc,txt}",
    "x\\[1\\].doc",
    "\\*",
    "日*",
    "[!a]*",
    "*b",
];

fn escape(c: &str) -> String {
    let mut s = String::new();
    for ch in c.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            s.push('\\');
        }
        s.push(ch);
    }
    s
}

fn component() -> impl Strategy<Value = String> {
    proptest::sample::select(COMPONENTS).prop_map(str::to_string)
}

fn path() -> impl Strategy<Value = String> {
    proptest::collection::vec(component(), 1..5).prop_map(|cs| format!("/{}", cs.join("/")))
}

fn pattern() -> impl Strategy<Value = String> {
    let dirs = proptest::collection::vec(component(), 0..3).prop_map(|cs| {
        cs.iter()
            .map(|c| format!("/{}", escape(c)))
            .collect::<String>()
    });
    let glob = proptest::sample::select(GLOBS).prop_map(str::to_string);
    (dirs, component(), glob, 0..4u8).prop_map(|(dirs, last, glob, kind)| match kind {
        0 => format!("{dirs}/{}", escape(&last)),
        1 => format!("{dirs}/{glob}"),
        2 => format!("{dirs}/{}/", escape(&last)),
        _ => format!("{dirs}/{glob}/"),
    })
}

fn rules(patterns: &[String]) -> Vec<Rule> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let spec = RuleSpec {
                pattern: Pattern::parse(p).unwrap_or_else(|e| panic!("{p}: {e}")),
                sites: vec![Site::parse("h:1").unwrap()],
                dest: Dest::parse(&format!("d{i}")).unwrap(),
                attrs: false,
                delete_suffix: None,
                mode: Mode::Async,
                sync: Default::default(),
            };
            let crc = spec.crc();
            Rule {
                id: i as i64 + 1,
                spec,
                crc,
            }
        })
        .collect()
}

fn reference(rules: &[Rule], path: &[u8], dir: bool) -> Vec<(i64, usize)> {
    let mut v: Vec<(i64, usize)> = rules
        .iter()
        .filter_map(|r| {
            let m = if dir {
                r.spec.pattern.match_dir(path)
            } else {
                r.spec.pattern.match_file(path)
            };
            m.map(|rem| (r.id, rem))
        })
        .collect();
    v.sort();
    v
}

fn fast(table: &RuleTable, path: &[u8], dir: bool) -> Vec<(i64, usize)> {
    let ms = if dir {
        table.match_dir(path)
    } else {
        table.match_file(path)
    };
    let mut v: Vec<(i64, usize)> = ms
        .into_iter()
        .map(|m| (table.rule(m).id, m.remainder as usize))
        .collect();
    v.sort();
    v
}

const HASHES: &[(&str, HashFn)] = &[
    ("crc32", mirrorfs::matcher::crc32),
    ("constant", |_| 7),
    ("length mod 3", |b| (b.len() % 3) as u32),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn indexed_matcher_equals_reference(
        patterns in proptest::collection::vec(pattern(), 0..25),
        paths in proptest::collection::vec(path(), 1..30),
    ) {
        let rs = rules(&patterns);
        for &(hname, hash) in HASHES {
            let table = RuleTable::build_with_hash(rs.clone(), 1, hash);
            for p in &paths {
                for dir in [false, true] {
                    prop_assert_eq!(
                        fast(&table, p.as_bytes(), dir),
                        reference(&rs, p.as_bytes(), dir),
                        "hash {}, path {:?}, dir {}, patterns {:?}", hname, p, dir, patterns
                    );
                }
            }
        }
    }

    /// Paths built from the rules' own prefixes, so that most lookups hit something.
    #[test]
    fn indexed_matcher_equals_reference_near_prefixes(
        patterns in proptest::collection::vec(pattern(), 1..25),
        picks in proptest::collection::vec((any::<proptest::sample::Index>(), proptest::collection::vec(component(), 0..3)), 1..30),
    ) {
        let rs = rules(&patterns);
        let table = RuleTable::build(rs.clone(), 1);
        for (idx, tail) in picks {
            let r = &rs[idx.index(rs.len())];
            let mut p = r.spec.pattern.prefix().to_vec();
            // Sometimes shorter than the prefix.
            if tail.is_empty() && p.len() > 2 {
                p.truncate(p.len() - 2);
            }
            for (i, c) in tail.iter().enumerate() {
                if i > 0 || !p.ends_with(b"/") {
                    p.push(b'/');
                }
                p.extend_from_slice(c.as_bytes());
            }
            for dir in [false, true] {
                prop_assert_eq!(fast(&table, &p, dir), reference(&rs, &p, dir), "path {:?}", String::from_utf8_lossy(&p));
            }
        }
    }
}

#[test]
fn non_utf8_names_match_by_bytes() {
    let rs = rules(&["/p/".to_string(), "/p/*.doc".to_string()]);
    let table = RuleTable::build(rs.clone(), 1);
    let path = b"/p/\xff\xfe.doc";
    assert_eq!(fast(&table, path, false), reference(&rs, path, false));
    assert_eq!(fast(&table, path, false).len(), 2);
}
