//! Matcher lookups per second with 10, 1,000 and 10,000 rules, fixed-only and mixed.
//!
//! `cargo bench -p mirrorfs --bench matcher`. Each iteration is one lookup of a path drawn
//! from a realistic tree (half of them selected by some rule, half not).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mirrorfs::matcher::RuleTable;
use mirrorfs::rule::{Dest, Mode, Pattern, Rule, RuleSpec, Site};
use std::hint::black_box;

fn rule(id: usize, pattern: String) -> Rule {
    let spec = RuleSpec {
        pattern: Pattern::parse(&pattern).unwrap(),
        sites: vec![Site::parse("backup:7070").unwrap()],
        dest: Dest::parse(&format!("d{id}")).unwrap(),
        attrs: false,
        delete_suffix: None,
        mode: Mode::Async,
        sync: Default::default(),
    };
    let crc = spec.crc();
    Rule {
        id: id as i64,
        spec,
        crc,
    }
}

/// `n` rules over projects `/home/u/pI`; mixed = 50% fixed, 20% wildcard, 20% subtree,
/// 10% subtree-wildcard.
fn rules(n: usize, mixed: bool) -> Vec<Rule> {
    (0..n)
        .map(|i| {
            let p = i / 10;
            let pattern = match (mixed, i % 10) {
                (false, _) | (true, 0..=4) => format!("/home/u/p{p}/src/m{}/f{i}.rs", i % 7),
                (true, 5 | 6) => format!("/home/u/p{p}/src/m{i}/*.rs"),
                (true, 7 | 8) => format!("/home/u/p{p}/docs{i}/"),
                _ => format!("/home/u/p{p}/*.md{i}/"),
            };
            rule(i, pattern)
        })
        .collect()
}

fn paths(n: usize) -> Vec<Vec<u8>> {
    (0..1024)
        .map(|k| {
            let i = (k * 7919) % n.max(1);
            let p = i / 10;
            let s = match k % 6 {
                0 => format!("/home/u/p{p}/src/m{}/f{i}.rs", i % 7),
                1 => format!("/home/u/p{p}/src/m{i}/lib.rs"),
                2 => format!("/home/u/p{p}/docs{i}/a/b/c.txt"),
                3 => format!("/home/u/p{p}/x/y/readme.md{i}"),
                4 => format!("/home/u/p{p}/target/debug/deps/x{k}.o"),
                _ => format!("/home/other/q{k}/file.txt"),
            };
            s.into_bytes()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("matcher_lookup");
    g.throughput(Throughput::Elements(1));
    for &n in &[10usize, 1_000, 10_000] {
        for mixed in [false, true] {
            let table = RuleTable::build(rules(n, mixed), 1);
            let ps = paths(n);
            let name = if mixed { "mixed" } else { "fixed" };
            let mut k = 0usize;
            g.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    black_box(table.match_file(black_box(&ps[k])))
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
