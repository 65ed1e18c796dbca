//! `mirror-routerd`: receives entries on a backup host, logs them (RT1/RT2), acknowledges
//! them and applies them under `--root`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use mirror_routerd::shared::{Limits, Router, RouterConfig};

/// Receive mirrored changes on a backup host and apply them under --root.
#[derive(Debug, Parser)]
#[command(
    name = "mirror-routerd",
    version,
    after_help = "Sources connect over TCP to ADDR:PORT and must prove they hold their site's key
(--key-file; `mirror-ctl router key add SITE` makes one) before anything is accepted; frames
are authenticated, not encrypted (see docs/SECURITY.md for a tunnel). Backup files are written
only beneath --root, and no symbolic link is ever followed. Heartbeats are UDP datagrams on
the same port number, both ways. A backup file that cannot be written is blocked: its entries
wait in the router logs while other files keep flowing; `mirror-ctl router unblock` (or
--unblock-every) retries it.

Example:
  mirror-routerd --listen 0.0.0.0:7070 --root /srv/backup --state /var/lib/mirror-router"
)]
struct Cli {
    /// Address to listen on, ADDR:PORT (port 0 picks a free one; the log says which).
    /// Optional with --spool-in.
    #[arg(long, value_name = "ADDR:PORT", required_unless_present = "spool_in")]
    listen: Option<String>,
    /// Spool inbox: spool files that a file-transfer tool brings from sources with
    /// `--site spool:/OUTBOX` rules are applied from here, in sequence per source (alone or
    /// beside --listen).
    #[arg(long, value_name = "DIR", help_heading = "Spool")]
    spool_in: Option<PathBuf>,
    /// Where the acknowledgements (`SOURCE.ack`) and copy requests (`SOURCE.requests`) of
    /// spool sources are written, for the transfer tool to carry back to `<outbox>/acks/`
    /// [default: <spool-in>/acks].
    #[arg(
        long,
        value_name = "DIR",
        help_heading = "Spool",
        requires = "spool_in"
    )]
    spool_ack: Option<PathBuf>,
    /// Directory under which every backup file is written.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Router state directory (RT1/RT2 logs, router configuration, error log) [default:
    /// $MIRROR_STATE, else $XDG_STATE_HOME/mirror, else ~/.local/state/mirror]
    #[arg(long, value_name = "DIR", help_heading = "State options")]
    state: Option<PathBuf>,
    /// Keys of the source sites, lines `SITE KEY`; read again when it changes, so keys can be
    /// added while the router runs [default: <state>/keys]. `mirror-ctl router key add SITE`
    /// writes it.
    #[arg(long, value_name = "FILE", help_heading = "State options")]
    key_file: Option<PathBuf>,
    /// Size at which a new pair of router logs is started.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 64,
        help_heading = "Tuning"
    )]
    rt_size_mib: u64,
    /// Applied router logs kept for copies to refer to (their data is not sent again): a
    /// size (512M, 2G; 0 keeps none) or an age (30m, 1h, 2d). Given up first when the
    /// router-log disk runs short.
    #[arg(long, value_name = "SIZE|DURATION", default_value = "1G", help_heading = "Tuning",
          value_parser = mirror_routerd::retain::parse_retain)]
    retain: mirror_routerd::retain::Retain,
    /// Backup files kept open at once (least recently used closed first).
    #[arg(long, value_name = "N", default_value_t = 10, help_heading = "Tuning")]
    max_open: usize,
    /// Interval between heartbeats to each source (e.g. 1s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "1s", help_heading = "Outage options",
          value_parser = mirrorfs::units::parse_duration)]
    heartbeat_interval: std::time::Duration,
    /// A source whose heartbeats are silent for longer than this has its session closed.
    #[arg(long, value_name = "DURATION", default_value = "3s", help_heading = "Outage options",
          value_parser = mirrorfs::units::parse_duration)]
    heartbeat_timeout: std::time::Duration,
    /// Blocked backup files are retried this often.
    #[arg(long, value_name = "DURATION", default_value = "5m", help_heading = "Outage options",
          value_parser = mirrorfs::units::parse_duration)]
    unblock_every: std::time::Duration,
    /// Sessions at once per source site; more are refused.
    #[arg(long, value_name = "N", default_value_t = Limits::default().sessions_per_site,
          help_heading = "Limits")]
    max_sessions_per_site: usize,
    /// Connections authenticating at once, from anyone; more are refused.
    #[arg(long, value_name = "N", default_value_t = Limits::default().handshakes,
          help_heading = "Limits")]
    max_handshakes: usize,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let state = mirrorfs::state::StateDir::resolve_and_open(cli.state.as_deref())?;
    mirrorfs::logging::init("mirror-routerd", "info", Some(&state.error_log()));
    let _lock = state.lock("mirror-routerd")?;
    let router = Router::open(RouterConfig {
        root: cli.root.clone(),
        state: state.root().to_path_buf(),
        rt_size: cli.rt_size_mib.max(1) << 20,
        max_open: cli.max_open,
        unblock_every: cli.unblock_every,
        key_file: cli.key_file.unwrap_or_else(|| state.keys_path()),
        retain: cli.retain,
        limits: Limits {
            sessions_per_site: cli.max_sessions_per_site.max(1),
            handshakes: cli.max_handshakes.max(1),
            ..Limits::default()
        },
    })
    .with_context(|| format!("cannot start the router for root {}", cli.root.display()))?;
    match router.keys.load() {
        Ok(k) if k.names().next().is_none() => log::warn!(
            "no source site has a key in {} yet: every source is refused until one is added with `mirror-ctl router key add SITE`",
            router.keys.path().display()
        ),
        Ok(k) => {
            for site in k.names() {
                let mine = k.namespace(site);
                if let Some((other, theirs)) = mine.as_ref().and_then(|ns| k.nesting(site, ns)) {
                    log::warn!(
                        "the namespace {} of source site {site} nests with namespace {theirs} of site {other}: each may write the other's backups; fix it with `mirror-ctl router namespace`",
                        mine.as_ref().map(|n| n.to_string()).unwrap_or_default()
                    );
                }
                if k.namespace(site) == Some(mirrorfs::wire::auth::Namespace::Unconfined) {
                    log::warn!(
                        "the key of source site {site} is unconfined (made before namespaces): it may write anywhere under the root; confine it with `mirror-ctl router namespace {site} {site}` (or `.` to grant the whole root on purpose)"
                    );
                }
            }
        }
        Err(e) => return Err(e).context("cannot read the key file"),
    }
    let listener = match &cli.listen {
        Some(l) => {
            let listener = TcpListener::bind(l).with_context(|| format!("cannot listen on {l}"))?;
            let addr = listener.local_addr().context("listening address")?;
            log::info!(
                "listening on {addr}, root {}, state {}",
                router.cfg.root.display(),
                state.root().display()
            );
            let timing = mirrorfs::wire::heartbeat::Timing {
                interval: cli.heartbeat_interval,
                threshold: cli.heartbeat_timeout,
                ..Default::default()
            };
            if let Err(e) = mirror_routerd::heartbeat::start(router.clone(), addr, timing) {
                log::error!(
                    "no heartbeats on UDP {addr}: {e}; sources notice outages by TCP errors only"
                );
            }
            Some(listener)
        }
        None => None,
    };
    if let Some(inbox) = &cli.spool_in {
        let acks = cli.spool_ack.clone().unwrap_or_else(|| inbox.join("acks"));
        mirror_routerd::spool::start(router.clone(), inbox.clone(), acks.clone()).with_context(
            || {
                format!(
                    "cannot start the spool coordinator on {} (acknowledgements into {})",
                    inbox.display(),
                    acks.display()
                )
            },
        )?;
    }
    serve_control(state.socket_path("mirror-routerd"), router.clone())?;
    let r = router.clone();
    std::thread::Builder::new()
        .name("router".into())
        .spawn(move || mirror_routerd::apply::run(r))
        .context("cannot start the router process")?;
    match listener {
        Some(l) => mirror_routerd::receive::serve(router, l),
        None => loop {
            std::thread::park();
        },
    }
    Ok(())
}

/// Answers `mirror-ctl router unblock` and `router status`.
fn serve_control(path: PathBuf, router: std::sync::Arc<Router>) -> anyhow::Result<()> {
    use mirrorfs::control::{self, RouterRequest, RouterResponse};
    let handler: control::Handler<RouterRequest, RouterResponse> =
        std::sync::Arc::new(move |req| match req {
            RouterRequest::Unblock { path } => {
                let paths = router.unblock_files(path.as_deref());
                if paths.is_empty() {
                    RouterResponse::Error {
                        reason: match path {
                            Some(p) => format!("no blocked backup file at or under {p}"),
                            None => "no backup file is blocked".into(),
                        },
                    }
                } else {
                    RouterResponse::Unblocking { paths }
                }
            }
            RouterRequest::Stats => {
                let (refs_resolved, bytes_saved) = router.refs();
                RouterResponse::Stats {
                    stats: control::RouterStats {
                        refs_resolved,
                        bytes_saved,
                        retained_bytes: router.retained().1,
                    },
                }
            }
        });
    control::serve(&path, handler)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    Ok(())
}

fn main() -> ExitCode {
    mirrorfs::state::private_umask();
    let cli = Cli::parse();
    mirrorfs::logging::exit_code("mirror-routerd", run(cli))
}
