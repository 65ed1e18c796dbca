//! What the sender knows of each site (seeds/002 [0067]-[0068], seeds/003): whether it is
//! blocked (the durable blocked-site list), whether its router's heartbeats arrive, its last
//! error, and requests to try it again. Blocking tells the user: a log line (the error log
//! too) and the `--on-block` command.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mirrorfs::blocked::{self, BlockedSite};
use mirrorfs::wire::heartbeat::{Monitor, Timing};

use crate::shared::lock;

/// Settings of blocking and unblocking.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Heartbeat timing.
    pub timing: Timing,
    /// How often a blocked site is tried regardless of heartbeats.
    pub unblock_every: std::time::Duration,
    /// Shell command run (with `MIRROR_SITE` and `MIRROR_REASON` set) when a site is blocked.
    pub on_block: Option<String>,
    /// How long a damaged journal record is retried before it is skipped (and the files of
    /// the site's rules sent whole).
    pub skip_damage_after: std::time::Duration,
    /// Connections per site for sites without a setting (`<state>/sites`).
    pub connections: usize,
    /// How spool sites' files are made.
    pub spool: crate::transport::spool::SpoolPolicy,
}

/// Runtime state of one site.
#[derive(Debug, Default)]
struct Live {
    connected: bool,
    last_error: Option<String>,
    /// When the last error happened (ns since the epoch).
    last_error_ns: Option<u64>,
    /// When a session came up after the last error (ns since the epoch): it is past.
    recovered_ns: Option<u64>,
    unblock_requested: bool,
    heartbeat: Arc<Mutex<Monitor>>,
    copy: Option<mirrorfs::control::CopyProgress>,
    /// Data bytes sent, and bytes sent as references.
    sent: (u64, u64),
    /// What the router last said of its retained logs and references.
    router: Option<mirrorfs::control::RouterStats>,
    /// A spool site's files: waiting for transport, the last acknowledgement.
    spool: Option<String>,
}

/// Every site's state.
#[derive(Debug)]
pub struct Sites {
    /// Blocking settings.
    pub policy: Policy,
    path: PathBuf,
    blocked: Mutex<BTreeMap<String, BlockedSite>>,
    live: Mutex<HashMap<String, Live>>,
}

impl Sites {
    /// Loads the blocked-site list at `path`.
    pub fn load(path: PathBuf, policy: Policy) -> Result<Sites, blocked::BlockedError> {
        let blocked = blocked::load_sites(&path)?;
        for b in blocked.values() {
            log::warn!(
                "site {} is blocked since {} ({}); it is tried again when its heartbeats are steady, every {:?}, or on `mirror-ctl unblock`",
                b.site,
                mirrorfs::logging::format_utc(b.since.saturating_mul(1_000_000_000)),
                b.reason,
                policy.unblock_every
            );
        }
        Ok(Sites {
            policy,
            path,
            blocked: Mutex::new(blocked),
            live: Mutex::new(HashMap::new()),
        })
    }

    fn store(&self, blocked: &BTreeMap<String, BlockedSite>) {
        if let Err(e) = blocked::store_list(&self.path, blocked.values()) {
            log::error!("cannot record the blocked sites: {e}");
        }
    }

    /// The heartbeat monitor of `site`.
    pub fn heartbeat(&self, site: &str) -> Arc<Mutex<Monitor>> {
        lock(&self.live)
            .entry(site.to_string())
            .or_default()
            .heartbeat
            .clone()
    }

    /// Whether a session with `site` is up.
    pub fn is_connected(&self, site: &str) -> bool {
        lock(&self.live).get(site).is_some_and(|l| l.connected)
    }

    /// Whether `site` is blocked.
    pub fn is_blocked(&self, site: &str) -> bool {
        lock(&self.blocked).contains_key(site)
    }

    /// The blocked entry of `site`.
    pub fn blocked(&self, site: &str) -> Option<BlockedSite> {
        lock(&self.blocked).get(site).cloned()
    }

    /// Every blocked site.
    pub fn all_blocked(&self) -> Vec<BlockedSite> {
        lock(&self.blocked).values().cloned().collect()
    }

    /// Blocks `site` for `reason` (durably) and tells the user.
    pub fn block(&self, site: &str, reason: &str) {
        let mut b = lock(&self.blocked);
        if let Some(old) = b.get_mut(site) {
            if old.reason != reason {
                log::info!("site {site} is still blocked: {reason}");
                old.reason = reason.to_string();
                self.store(&b);
            }
            return;
        }
        b.insert(
            site.to_string(),
            BlockedSite {
                site: site.to_string(),
                since: blocked::now_secs(),
                reason: reason.to_string(),
                dirty: false,
            },
        );
        self.store(&b);
        drop(b);
        log::error!(
            "site {site} is blocked: {reason}; changes are kept in the journal until it is back"
        );
        if let Some(cmd) = &self.policy.on_block {
            run_hook(cmd, site, reason);
        }
    }

    /// A sync rule lost `site` (the mount says so): logged, and `--on-block` runs, with
    /// `MIRROR_REASON` naming the rule.
    pub fn sync_lost(&self, site: &str, reason: &str) {
        log::error!("site {site}: {reason}");
        if let Some(cmd) = &self.policy.on_block {
            run_hook(cmd, site, reason);
        }
    }

    /// Marks `site`'s backlog as tracked by a dirty set.
    pub fn set_dirty(&self, site: &str) {
        let mut b = lock(&self.blocked);
        if let Some(x) = b.get_mut(site) {
            if !x.dirty {
                x.dirty = true;
                self.store(&b);
            }
        }
    }

    /// `site` answers again.
    pub fn unblock(&self, site: &str) {
        let mut b = lock(&self.blocked);
        if let Some(x) = b.remove(site) {
            self.store(&b);
            log::warn!(
                "site {site} is unblocked (blocked {} s: {})",
                blocked::now_secs().saturating_sub(x.since),
                x.reason
            );
        }
    }

    /// `site` is no longer named by any rule: it is no longer blocked (nothing is sent to it
    /// any more, so nothing waits for it). `true` when it was.
    pub fn retire(&self, site: &str) -> bool {
        let mut b = lock(&self.blocked);
        let was = b.remove(site).is_some();
        if was {
            self.store(&b);
        }
        drop(b);
        lock(&self.live).remove(site);
        was
    }

    /// Records whether a session with `site` is up, and its last error.
    pub fn set_connected(&self, site: &str, connected: bool, error: Option<String>) {
        let mut l = lock(&self.live);
        let e = l.entry(site.to_string()).or_default();
        let now = mirrorfs::now_ns();
        if connected && !e.connected && e.last_error.is_some() && e.recovered_ns.is_none() {
            e.recovered_ns = Some(now);
        }
        e.connected = connected;
        if error.is_some() {
            // An error said while connected (a refusal the router noticed) is current too.
            e.last_error = error;
            e.last_error_ns = Some(now);
            e.recovered_ns = None;
        }
    }

    /// Records how far the copy entry being sent to `site` got (for `mirror-ctl status`).
    pub fn set_copy(&self, site: &str, progress: mirrorfs::control::CopyProgress) {
        lock(&self.live).entry(site.to_string()).or_default().copy = Some(progress);
    }

    /// Counts what a frame to `site` carried: data bytes, bytes as references.
    pub fn count_sent(&self, site: &str, data: u64, referenced: u64) {
        let mut l = lock(&self.live);
        let x = &mut l.entry(site.to_string()).or_default().sent;
        x.0 += data;
        x.1 += referenced;
    }

    /// Notes what `site`'s router said of its retained logs and references.
    pub fn set_router_stats(&self, site: &str, stats: mirrorfs::control::RouterStats) {
        lock(&self.live).entry(site.to_string()).or_default().router = Some(stats);
    }

    /// Asks the links of the blocked sites (all, or `site`) to try now; the sites asked.
    pub fn request_unblock(&self, site: Option<&str>) -> Vec<String> {
        let sites: Vec<String> = lock(&self.blocked)
            .keys()
            .filter(|s| site.is_none_or(|x| x == s.as_str()))
            .cloned()
            .collect();
        let mut l = lock(&self.live);
        for s in &sites {
            l.entry(s.clone()).or_default().unblock_requested = true;
        }
        sites
    }

    /// What a spool site's transport says of its files (`mirror-ctl status`).
    pub fn set_spool_note(&self, site: &str, text: String) {
        lock(&self.live).entry(site.to_string()).or_default().spool = Some(text);
    }

    /// Asks the transport of spool site `site` to put back its unacknowledged files.
    pub fn request_resend(&self, site: &str) {
        lock(&self.live)
            .entry(site.to_string())
            .or_default()
            .unblock_requested = true;
    }

    /// Takes a pending unblock request of `site`.
    pub fn take_unblock_request(&self, site: &str) -> bool {
        lock(&self.live)
            .get_mut(site)
            .is_some_and(|l| std::mem::take(&mut l.unblock_requested))
    }

    /// The state of `site` for `mirror-ctl status`.
    pub fn state(
        &self,
        site: &str,
        acked: mirrorfs::journal::Position,
    ) -> mirrorfs::control::SiteState {
        let blocked = self.blocked(site);
        let l = lock(&self.live);
        let live = l.get(site);
        let threshold = self.policy.timing.threshold;
        mirrorfs::control::SiteState {
            site: site.to_string(),
            connected: live.is_some_and(|x| x.connected),
            blocked,
            last_error: live.and_then(|x| x.last_error.clone()),
            last_error_at: live
                .and_then(|x| x.last_error_ns)
                .map(|t| t / 1_000_000_000),
            recovered_at: live.and_then(|x| x.recovered_ns).map(|t| t / 1_000_000_000),
            acked,
            copy: live.and_then(|x| x.copy),
            sent_bytes: live.map_or(0, |x| x.sent.0),
            referenced_bytes: live.map_or(0, |x| x.sent.1),
            router: live.and_then(|x| x.router.clone()),
            spool: live.and_then(|x| x.spool.clone()),
            heartbeat: live.is_some_and(|x| {
                let m = lock(&x.heartbeat);
                m.ever() && m.interrupted(Instant::now(), threshold).is_none()
            }),
        }
    }
}

/// Runs the user's `--on-block` command without waiting for it.
fn run_hook(cmd: &str, site: &str, reason: &str) {
    let child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("MIRROR_SITE", site)
        .env("MIRROR_REASON", reason)
        .stdin(std::process::Stdio::null())
        .spawn();
    match child {
        Ok(mut c) => {
            let _ = std::thread::Builder::new()
                .name("on-block".into())
                .spawn(move || match c.wait() {
                    Ok(s) if !s.success() => log::warn!("--on-block command exited with {s}"),
                    Ok(_) => {}
                    Err(e) => log::warn!("--on-block command: {e}"),
                });
        }
        Err(e) => log::error!("cannot run the --on-block command {cmd:?}: {e}"),
    }
}
