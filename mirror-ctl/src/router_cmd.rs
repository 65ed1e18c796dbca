//! `mirror-ctl router status [--json]`, `mirror-ctl router quarantine [--json]` and
//! `mirror-ctl router unblock [PATH]`, on a backup host: the router logs' backlog per source
//! site, damaged pairs, the copies asked of the sources, the blocked backup files (all read
//! from the router state directory, so they work whether the router runs or not, and
//! whatever the damage), the quarantined pairs, and the request to retry blocked files (to
//! the running router).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use mirror_routerd::quarantine::{self, Quarantined};
use mirror_routerd::resync::{CopyRequest, CopyRequests};
use mirror_routerd::rtlog::{list_pairs, survey, RtPair};
use mirrorfs::blocked::{self, BlockedFile};
use mirrorfs::control::{RouterRequest, RouterResponse};
use mirrorfs::logging::utc_secs;
use mirrorfs::state::StateDir;
use serde::Serialize;

use crate::sync_cmd::human;

/// What waits in the router logs for one source.
#[derive(Debug, Default, Serialize)]
struct Backlog {
    /// Entries not applied yet.
    entries: u64,
    /// Their data bytes.
    bytes: u64,
}

/// A source site with a key, and what the key grants.
#[derive(Debug, Serialize)]
struct Grant {
    /// Source site id.
    site: String,
    /// The namespace relative to the root (`.`: all of it); `null` when unconfined.
    namespace: Option<String>,
    /// A key made before namespaces: it may write anywhere under the root.
    unconfined: bool,
}

/// Damage found in a pair of router logs (the router quarantines such a pair).
#[derive(Debug, Serialize)]
struct Damaged {
    pair: u64,
    /// RT1 offset of the first damage.
    offset: u64,
    reason: String,
}

/// A time shown both ways.
#[derive(Debug, Serialize)]
struct With<T: Serialize> {
    #[serde(flatten)]
    item: T,
    /// `since`, readable.
    since_utc: String,
}

#[derive(Debug, Serialize)]
struct RouterStatus {
    /// Whether a mirror-routerd serves this state directory now (its control socket answers).
    running: bool,
    /// The source sites with a key, and their namespaces.
    keys: Vec<Grant>,
    /// Pairs of router logs present.
    log_pairs: usize,
    /// Per source site.
    sources: BTreeMap<String, Backlog>,
    /// Pairs with damage where they hold acknowledged entries.
    damaged: Vec<Damaged>,
    /// Copies asked of the sources that have not arrived yet.
    copies: Vec<With<CopyRequest>>,
    /// Pairs quarantined so far.
    quarantined: usize,
    /// Sources that send spool files (`--spool-in`): how far they are applied, what they
    /// wait for, what was refused.
    spool: Vec<mirror_routerd::spool::SourceRecord>,
    /// Blocked backup files.
    blocked: Vec<With<BlockedFile>>,
    /// What the running router did since it started (references resolved, bytes saved);
    /// none when it does not run.
    stats: Option<mirrorfs::control::RouterStats>,
}

/// Copies asked of one source listed by `router status` (the rest are counted).
const SHOWN_COPIES: usize = 20;

/// `mirror-ctl router status`.
pub fn status(state: &StateDir, keys: &mirrorfs::wire::auth::KeyRing, json: bool) -> Result<()> {
    let rt = state.root().join("rt");
    // Router state without logs yet (keys made, the router never started): nothing waits.
    let pairs = if rt.is_dir() {
        list_pairs(&rt)?
    } else {
        Vec::new()
    };
    let mut sources: BTreeMap<String, Backlog> = BTreeMap::new();
    let mut damaged = Vec::new();
    for (i, &n) in pairs.iter().enumerate() {
        let newest = i + 1 == pairs.len();
        if let Err(e) = RtPair::open(&rt, n) {
            if !e.is_damage() {
                return Err(e).with_context(|| format!("reading router log pair {n}"));
            }
            damaged.push(Damaged {
                pair: n,
                offset: 0,
                reason: e.to_string(),
            });
        }
        let sv = match survey(&rt, n) {
            Ok(sv) => sv,
            Err(e) if e.is_damage() => {
                if !damaged.iter().any(|d| d.pair == n) {
                    damaged.push(Damaged {
                        pair: n,
                        offset: 0,
                        reason: e.to_string(),
                    });
                }
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("reading router log pair {n}")),
        };
        // The newest pair may end in a batch being written (or torn by a crash): only damage
        // before its committed end counts.
        let upto = if newest { sv.committed } else { u64::MAX };
        if let Some((offset, reason)) = sv.first_damage(upto) {
            if !damaged.iter().any(|d| d.pair == n) {
                damaged.push(Damaged {
                    pair: n,
                    offset,
                    reason,
                });
            }
        }
        for (_, r) in sv
            .records
            .iter()
            .chain(&sv.unsure)
            .filter(|(_, r)| !r.complete)
        {
            let b = sources.entry(r.site.clone()).or_default();
            b.entries += 1;
            b.bytes += r.data_len;
        }
    }
    let key_file = keys.load()?;
    let keys: Vec<Grant> = key_file
        .names()
        .map(|site| {
            let ns = key_file.namespace(site);
            Grant {
                site: site.to_string(),
                namespace: ns.as_ref().and_then(|n| n.text()),
                unconfined: ns == Some(mirrorfs::wire::auth::Namespace::Unconfined),
            }
        })
        .collect();
    let with = |since: u64| utc_secs(since);
    let copies = CopyRequests::load(&state.root().join("resync"))?
        .list()
        .into_iter()
        .map(|r| With {
            since_utc: with(r.since),
            item: r,
        })
        .collect();
    let stats = match mirrorfs::control::request_within(
        &state.socket_path("mirror-routerd"),
        &mirrorfs::control::RouterRequest::Stats,
        std::time::Duration::from_secs(5),
    ) {
        Ok(mirrorfs::control::RouterResponse::Stats { stats }) => Some(stats),
        _ => None,
    };
    let st = RouterStatus {
        stats,
        running: router_running(state),
        keys,
        log_pairs: pairs.len(),
        sources,
        damaged,
        copies,
        quarantined: quarantine::load(state.root())?.len(),
        spool: mirror_routerd::spool::SourceRecord::load_all(state.root()),
        blocked: blocked::load_list::<BlockedFile>(&state.root().join("blocked"))?
            .into_iter()
            .map(|b| With {
                since_utc: with(b.since),
                item: b,
            })
            .collect(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    if st.running {
        println!("mirror-routerd is running");
    } else {
        println!(
            "mirror-routerd is NOT running (nothing answers on {}): nothing is received or applied until it starts",
            state.socket_path("mirror-routerd").display()
        );
    }
    for k in st.keys.iter().filter(|k| k.unconfined) {
        println!(
            "UNCONFINED key of source {}: it may write anywhere under the root (made before namespaces); confine it with `mirror-ctl router namespace {} PATH`",
            k.site, k.site
        );
    }
    if let Some(x) = &st.stats {
        println!(
            "retained router logs: {} (kept for references, `--retain`); since it started: {} references resolved, {} not sent again",
            crate::sync_cmd::human(x.retained_bytes),
            x.refs_resolved,
            crate::sync_cmd::human(x.bytes_saved)
        );
    }
    println!("router logs: {} pairs", st.log_pairs);
    if st.sources.is_empty() {
        println!("nothing waits to be applied");
    } else if !st.running {
        println!("what waits below is applied once mirror-routerd runs again");
    }
    for (site, b) in &st.sources {
        println!(
            "source {site}: {} entries ({}) not applied yet",
            b.entries,
            human(b.bytes)
        );
    }
    for d in &st.damaged {
        println!(
            "DAMAGED router log pair {} at offset {}: {} (the router quarantines it and asks the sources for copies of what it held)",
            d.pair, d.offset, d.reason
        );
    }
    // A long list is cut per source (`--json` has all of it).
    let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &st.copies {
        let r = &c.item;
        let n = shown.entry(&r.site).or_default();
        *n += 1;
        if *n > SHOWN_COPIES {
            continue;
        }
        let what = if r.whole_rule {
            format!("everything under {}", r.name)
        } else {
            r.name.clone()
        };
        println!(
            "COPY ASKED of {} since {} (sent {} times): {what}: {}",
            r.site, c.since_utc, r.sent, r.reason
        );
    }
    for (site, n) in shown.iter().filter(|(_, n)| **n > SHOWN_COPIES) {
        println!(
            "COPY ASKED of {site}: {} more (`mirror-ctl router status --json` lists them)",
            n - SHOWN_COPIES
        );
    }
    for x in &st.spool {
        println!(
            "spool source {}: {} files applied (stream {:016x}, next file {}){}",
            x.site,
            x.applied_files,
            x.stream,
            x.next.max(1),
            x.last_applied_at
                .map_or(String::new(), |t| format!(", the last at {}", utc_secs(t)))
        );
        if let Some((n, since)) = x.waiting_for {
            println!(
                "  WAITING for spool file {n} of {} since {} (later files arrived first; nothing after it is applied until it comes)",
                x.site,
                utc_secs(since)
            );
        }
        for r in x.refused.iter().rev().take(5) {
            println!("  REFUSED {} at {}: {}", r.file, utc_secs(r.at), r.reason);
        }
    }
    if st.quarantined > 0 {
        println!(
            "{} quarantined pairs of router logs (`mirror-ctl router quarantine` lists them)",
            st.quarantined
        );
    }
    if st.blocked.is_empty() {
        println!("no blocked backup files");
    }
    for b in &st.blocked {
        let f = &b.item;
        println!(
            "BLOCKED {} since {} (from {}, rule {}; held since pair {} offset {}): {}",
            f.path, b.since_utc, f.site, f.pattern, f.pair, f.offset, f.reason
        );
    }
    Ok(())
}

/// Whether a mirror-routerd serves `state` now: its control socket takes a connection (a
/// socket file left by a router that was killed refuses it).
fn router_running(state: &StateDir) -> bool {
    std::os::unix::net::UnixStream::connect(state.socket_path("mirror-routerd")).is_ok()
}

/// `mirror-ctl router quarantine`.
pub fn quarantine(state: &StateDir, json: bool) -> Result<()> {
    let all: Vec<With<Quarantined>> = quarantine::load(state.root())?
        .into_iter()
        .map(|q| With {
            since_utc: utc_secs(q.since),
            item: q,
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no quarantined router logs");
    }
    for q in &all {
        let x = &q.item;
        println!("pair {} quarantined {}: {}", x.pair, q.since_utc, x.reason);
        println!("  files: {}", x.files.join(", "));
        println!(
            "  {} entries readable, {} of them not applied{}",
            x.entries,
            x.pending,
            if x.hidden {
                "; damage hides others"
            } else {
                ""
            }
        );
        if x.asked.is_empty() {
            println!("  no copy asked");
        }
        for a in &x.asked {
            let mut what = Vec::new();
            if a.files > 0 {
                what.push(format!("{} files", a.files));
            }
            if !a.whole_rules.is_empty() {
                what.push(format!("the whole of rules {}", a.whole_rules.join(", ")));
            }
            println!("  asked {} to resend {}", a.site, what.join(" and "));
        }
    }
    Ok(())
}

/// `mirror-ctl router unblock`.
pub fn unblock(state: &StateDir, path: Option<String>) -> Result<()> {
    let req = RouterRequest::Unblock { path };
    match crate::status_cmd::ask_daemon(state, "mirror-routerd", &req)? {
        RouterResponse::Unblocking { paths } => {
            for p in paths {
                println!("retrying {p}");
            }
            Ok(())
        }
        RouterResponse::Error { reason } => bail!("{reason}"),
        other => bail!("mirror-routerd answered {other:?} to an unblock"),
    }
}
