//! `mirror-ctl router status [--json]` and `mirror-ctl router unblock [PATH]`, on a backup
//! host: the router logs' backlog per source site and the blocked backup files (read from the
//! router state directory), and the request to retry blocked files (to the running router).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use mirror_routerd::rtlog::{list_pairs, RtPair, HEADER_LEN};
use mirrorfs::blocked::{self, BlockedFile};
use mirrorfs::control::{RouterRequest, RouterResponse};
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

#[derive(Debug, Serialize)]
struct RouterStatus {
    /// The source sites with a key, and their namespaces.
    keys: Vec<Grant>,
    /// Pairs of router logs present.
    log_pairs: usize,
    /// Per source site.
    sources: BTreeMap<String, Backlog>,
    /// Blocked backup files.
    blocked: Vec<BlockedFile>,
}

/// `mirror-ctl router status`.
pub fn status(state: &StateDir, keys: &mirrorfs::wire::auth::KeyRing, json: bool) -> Result<()> {
    let rt = state.root().join("rt");
    if !rt.is_dir() {
        bail!(
            "{} holds no router logs: pass the router's state directory with --state",
            state.root().display()
        );
    }
    let pairs = list_pairs(&rt)?;
    let mut sources: BTreeMap<String, Backlog> = BTreeMap::new();
    for &n in &pairs {
        let p = RtPair::open(&rt, n)?;
        let len = p.rt1_len()?;
        let records = p
            .records(HEADER_LEN, len)
            .with_context(|| format!("reading router log pair {n}"))?;
        for (_, r) in records.into_iter().filter(|(_, r)| !r.complete) {
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
    let st = RouterStatus {
        keys,
        log_pairs: pairs.len(),
        sources,
        blocked: blocked::load_list(&state.root().join("blocked"))?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    for k in st.keys.iter().filter(|k| k.unconfined) {
        println!(
            "UNCONFINED key of source {}: it may write anywhere under the root (made before namespaces); confine it with `mirror-ctl router namespace {} PATH`",
            k.site, k.site
        );
    }
    println!("router logs: {} pairs", st.log_pairs);
    if st.sources.is_empty() {
        println!("nothing waits to be applied");
    }
    for (site, b) in &st.sources {
        println!(
            "source {site}: {} entries ({}) not applied yet",
            b.entries,
            human(b.bytes)
        );
    }
    if st.blocked.is_empty() {
        println!("no blocked backup files");
    }
    for b in &st.blocked {
        println!(
            "BLOCKED {} (from {}, rule {}; held since pair {} offset {}): {}",
            b.path, b.site, b.pattern, b.pair, b.offset, b.reason
        );
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
    }
}
