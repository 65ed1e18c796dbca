//! The command line of `mirror-ctl`, as clap structures.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use mirrorfs::rule::{
    parse_delete_suffix, Dest, Mode, OnSyncLoss, Pattern, Site, SyncOpts, SyncPoint,
};

const STATE: &str = "State options";
const RULE: &str = "Rule options";

/// Control mirror: rules, synchronisation, blocked sites, status.
#[derive(Debug, Parser)]
#[command(name = "mirror-ctl", version, propagate_version = true)]
pub struct Cli {
    /// State directory of the local system [default: $MIRROR_STATE, else
    /// $XDG_STATE_HOME/mirror, else ~/.local/state/mirror]
    #[arg(long, global = true, value_name = "DIR", help_heading = STATE)]
    pub state: Option<PathBuf>,

    /// Key file [default: <state>/keys]: the routers' keys on a source, the source sites'
    /// keys with `router`.
    #[arg(long, global = true, value_name = "FILE", help_heading = STATE)]
    pub key_file: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add, list or remove mirroring rules.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Copy the files the rules select (all, or those under PATH…) to their sites: for files
    /// that existed before their rule, or to bring backups back in line.
    #[command(
        after_help = "The copies go through the journal, ordered with the changes being made, so the
backups converge even while the files change. mirror-sendd sends them.

Examples:
  mirror-ctl sync                       # everything every rule selects
  mirror-ctl sync ~/proj/src --wait     # one subtree; wait until the sites have it"
    )]
    Sync(SyncArgs),
    /// Fetch the backup of what the rules select (all, or under PATH…) back from a site into
    /// DIR: after a disk failure, or to look at an earlier state.
    #[command(
        after_help = "One PATH: DIR takes its place (a single file lands in DIR under its name). No PATH
or several: DIR stands for /, each name at its full path beneath it. The site is the one the
rules selecting PATH name; --site chooses among several, and names the backup host when the
rules database was lost with the disk (this source's key and site id are needed: `mirror-ctl
key add SITE KEY`, and <state>/site-id if the host name changed).

Permission bits are always restored; owners (as root), times and xattrs only where the rule
had --attrs. Kept versions (--delete-suffix) are not restored. Hard links come back as
hard links.

Examples:
  mirror-ctl restore ~/proj --to /tmp/proj                 # ~/proj/src/a.rs -> /tmp/proj/src/a.rs
  mirror-ctl restore --to /mnt/new --site backup.lan:7070  # everything, at full paths"
    )]
    Restore(RestoreArgs),
    /// Compare what the rules select (all, or under PATH…) with its backup on every site, as
    /// of now: one line per file, then a summary. Exit status 0: all the same (or in
    /// flight); 1: something differs; 2: the verify could not run.
    #[command(
        after_help = "Marks (one line per name, as `rclone check --combined` does):
  = same      * differs (what, and which 4 KiB blocks)      + missing on the backup
  - orphan: on the backup, no source file (under a rule's destination; kept versions are not)
  ~ in flight: changed after the verify started (never counted as a difference)
  ! error: unreadable here or on the router, or blocked at the router

The verify first waits (at most --timeout) until every site has applied everything the journal
held when it started; a site that cannot be reached is exit status 2. Compared: kinds, sizes
and permission bits, symlink targets, hard links, empty directories, and the block checksums
(BLAKE3, compared top down: checksums cross the wire in proportion to what differs) of every
file that changed since its last acknowledged copy read it (--checksum: of every file); with
--attrs also owners, modification times and xattrs where the rule mirrors them.

--repair queues a copy of every name that differs or is missing (as `sync` does) and returns
once the sites applied them; orphans are only reported unless --orphans says what to do.

Examples:
  mirror-ctl verify                          # everything, every site
  mirror-ctl verify ~/proj/src --json        # one JSON object per name, then a summary
  mirror-ctl verify --repair --orphans delete"
    )]
    Verify(VerifyArgs),
    /// Show each site: blocked or not (and why), queued entries and bytes, the oldest
    /// unacknowledged entry's age, the last error.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Try blocked sites again now (all, or SITE), instead of waiting for their heartbeats or
    /// the periodic unblock. Needs a running mirror-sendd.
    Unblock {
        /// `HOST:PORT` of the site.
        site: Option<String>,
    },
    /// The keys this source proves itself with to its sites (mirror-sendd and `rule add`
    /// read them).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Per-site settings of this source (in `<state>/sites`; a running mirror-sendd follows
    /// them).
    #[command(subcommand)]
    Site(SiteCommand),
    /// On a backup host: the router's keys, blocked files and backlog (--state is the
    /// router's).
    #[command(subcommand)]
    Router(RouterCommand),
}

/// `mirror-ctl site …` (on a source).
#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Change the settings of SITE; a running mirror-sendd picks them up within a second
    /// (it connects to the site again).
    #[command(
        after_help = "Example (a site far away: its stream striped across 4 connections):
  mirror-ctl site set backup.far:7070 --connections 4
  mirror-ctl site set backup.far:7070 --connections default"
    )]
    Set {
        /// `HOST:PORT` of the site, as the rules name it.
        site: String,
        /// Connections mirror-sendd opens to the site and stripes its stream across (1 to 64),
        /// or `default` for mirror-sendd's --connections.
        #[arg(long, value_name = "N|default")]
        connections: Option<String>,
    },
    /// List the sites that have settings.
    List {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `mirror-ctl key …` (on a source).
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Store the key a router gave this source (`mirror-ctl router key add` there prints it).
    #[command(
        after_help = "Example (KEY as printed by the router; `-` reads it from stdin):
  mirror-ctl key add backup.lan:7070 3f1c…e9
  mirror-ctl key add '*' -            # one key for every site"
    )]
    Add {
        /// The router's `HOST:PORT` or the spool's `spool:/OUTBOX`, as in the rules, or `*` for
        /// every site without its own.
        site: String,
        /// The key: 64 hexadecimal digits, or `-` to read it from stdin.
        key: String,
    },
    /// List the sites that have a key (not the keys).
    List,
    /// Remove the key of SITE.
    Rm {
        /// `HOST:PORT` or `*`.
        site: String,
    },
}

/// `mirror-ctl router key …` (on a backup host).
#[derive(Debug, Subcommand)]
pub enum RouterKeyCommand {
    /// Make (or replace) the key of source site SITE and print it; the router accepts SITE
    /// with it at once (no restart).
    #[command(
        after_help = "SITE is the source's site id (`cat <state>/site-id` there; the host name by
default). Give the printed key to the source: `mirror-ctl key add ROUTER:PORT KEY`.

The key grants SITE its namespace: the source writes only beneath <root>/NAMESPACE, and its
rules' --dest are relative to it. The default namespace is SITE itself (<root>/SITE/); `.`
grants the whole root (a two-way peer needs it). Two sites share a namespace only when they
are given the same one. The directory is made when the source first writes to it."
    )]
    Add {
        /// The source's site id.
        site: String,
        /// Use this key (64 hexadecimal digits) instead of a new random one.
        #[arg(long, value_name = "HEX")]
        key: Option<String>,
        /// The part of the root the key grants, relative to the root (`.`: all of it)
        /// [default: SITE].
        #[arg(long, value_name = "PATH")]
        namespace: Option<String>,
    },
    /// List the source sites that have a key, with their namespaces (not the keys).
    List,
    /// Remove the key of source site SITE: its next connection is refused.
    Rm {
        /// The source's site id.
        site: String,
    },
}

/// `mirror-ctl router …`
#[derive(Debug, Subcommand)]
pub enum RouterCommand {
    /// Show, per source site, the entries not yet applied, damaged router logs, the copies
    /// asked of the sources, and the blocked backup files with their reasons. Works whether
    /// the router runs or not, and however damaged its logs are.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the quarantined pairs of router logs: where they are now, when and why they were
    /// moved aside, and what each source was asked to send again.
    #[command(
        after_help = "A pair of router logs damaged where it holds acknowledged entries is moved to
<router state>/quarantine/ (kept for inspection; the router never reads it again) while the
router keeps serving every source. The sources are asked for fresh copies of the files its
readable entries name and, where damage hides entries, of everything their rules select;
`mirror-ctl router status` shows the copies still to arrive. Once they have, the quarantined
files can be removed."
    )]
    Quarantine {
        /// Print JSON instead of a list.
        #[arg(long)]
        json: bool,
    },
    /// Retry blocked backup files now (all, or those at or under PATH, relative to the root).
    /// Needs a running mirror-routerd.
    Unblock {
        /// Backup path relative to the router's root.
        path: Option<String>,
    },
    /// The keys of the source sites this router accepts.
    #[command(subcommand)]
    Key(RouterKeyCommand),
    /// Change the part of the root that source site SITE may write (its key stays as it is);
    /// the router uses it from the next entry on, without a restart.
    #[command(
        after_help = "PATH is relative to the router's root; `.` grants all of it. What the site
wrote under its old namespace stays where it is (move it by hand if needed)."
    )]
    Namespace {
        /// The source's site id.
        site: String,
        /// The namespace, relative to the root, or `.` for the whole root.
        path: String,
    },
}

/// Arguments of `sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Only files under these paths (absolute, or relative to the current directory).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Wait until every site involved has acknowledged the copies.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub timeout: u64,
    /// List what would be sent (each file and its size, and empty directories), queue nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Compare the content of every file with its backup (block checksums), even of files
    /// unchanged since they were last sent (by default those are skipped without being
    /// read, as rsync's quick check does).
    #[arg(long, short = 'c')]
    pub checksum: bool,
}

/// What `verify --orphans` does with a name the backup holds and the source does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Orphans {
    /// Remove it from the backup (a deletion sent as for a file deleted at the source: a
    /// rule with a delete suffix keeps it as a version).
    Delete,
    /// Move it beneath DIR (relative to the site's namespace on the router).
    Move(PathBuf),
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Source paths to verify (absolute, or relative to the current directory) [default:
    /// everything the rules select].
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// One JSON object per name (`mark`, `path`, `site`, `rule`, `kind`, `what`, `blocks`,
    /// `bytes`), then one with `summary`.
    #[arg(long)]
    pub json: bool,
    /// Queue copies of what differs or is missing, and wait until the sites applied them.
    #[arg(long)]
    pub repair: bool,
    /// Compare the block checksums of every file; by default a file whose size and times are
    /// what its last acknowledged copy read (mirror-sendd's record) is compared by size and
    /// permission bits only.
    #[arg(long, short = 'c')]
    pub checksum: bool,
    /// Also compare owners, modification times and xattrs (for rules with --attrs).
    #[arg(long)]
    pub attrs: bool,
    /// How long to wait for the sites to apply what the journal holds, and for --repair.
    #[arg(long, value_name = "D", default_value = "60s",
          value_parser = |s: &str| mirrorfs::units::parse_duration(s))]
    pub timeout: std::time::Duration,
    /// With --repair: `delete` removes orphans from the backup, `move DIR` moves them beneath
    /// DIR (relative to the site's namespace) on the router. Never done by default.
    #[arg(long, value_name = "delete|move DIR", num_args = 1..=2,
          value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub orphans: Vec<String>,
}

impl VerifyArgs {
    /// What `--orphans` says, checked.
    pub fn orphans(&self) -> Result<Option<Orphans>, String> {
        match self.orphans.as_slice() {
            [] => Ok(None),
            [d] if d == "delete" => Ok(Some(Orphans::Delete)),
            [m, dir] if m == "move" => Ok(Some(Orphans::Move(PathBuf::from(dir)))),
            [m] if m == "move" => Err(
                "--orphans move needs a DIR (relative to the site's namespace on the router)"
                    .into(),
            ),
            other => Err(format!(
                "--orphans takes `delete` or `move DIR`, not {:?}",
                other.join(" ")
            )),
        }
    }
}

/// Arguments of `restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Source paths to restore (absolute, or relative to the current directory) [default:
    /// everything the rules select].
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Where to restore to: a directory that is empty or does not exist yet.
    #[arg(long, value_name = "DIR", required = true)]
    pub to: PathBuf,
    /// The backup host to restore from [default: the site of the rules selecting PATH].
    #[arg(long, value_name = "HOST:PORT",
          value_parser = |s: &str| Site::parse(s).map_err(|e| e.to_string()))]
    pub site: Option<Site>,
    /// Restore into a DIR that is not empty, replacing what has the same names there.
    #[arg(long)]
    pub overwrite: bool,
}

/// `mirror-ctl rule …`
#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Add a rule: mirror the files PATTERN selects to DEST on each --site.
    #[command(after_help = "PATTERN forms (absolute, as mounted):
  /p/a/x.doc     that file only; --dest names the backup file
  /p/a/*.doc     matching files in /p/a only; --dest names a directory
  /p/a/          every file in the subtree /p/a
  /p/a/*.doc/    matching files anywhere in the subtree
A backslash makes the next character literal: /p/x\\[1\\].doc

The rule's first copy: what the rule selects now (files that existed before it) is copied to
its sites as part of adding it, without --no-sync. `rule add` only queues it (one entry, at
once, whatever the number of files; mirror-sendd sends the files), ordered before every
change made under the rule, so nothing written meanwhile is lost; `mirror-ctl status` shows
`initial copy: N files, X bytes left` until the sites have it.

Example:
  mirror-ctl rule add /home/me/proj/ --site backup.lan:7070 --dest me/proj")]
    Add(Box<AddArgs>),
    /// List the rules.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change the mode or sync options of rule ID on a running system (the mount and
    /// mirror-sendd pick it up at once, like any rule change).
    #[command(
        after_help = "Only what the rule's CRC does not cover can change: --mode, --sync-point,
--sync-timeout and --on-sync-loss. To change the pattern, destination or sites, remove the
rule and add it again.

Switching to sync makes every later durability point (fsync, fdatasync, O_SYNC writes,
fsyncdir, and every namespace change of a selected name) wait for the rule's sites.

Example:
  mirror-ctl rule set 3 --mode sync --on-sync-loss fail --sync-timeout 5s"
    )]
    Set(SetArgs),
    /// Remove rule ID (see `rule list`).
    #[command(
        after_help = "The rule stops at once: mirrorfs records nothing more for it (within a fraction of
a second), and its entries still in the journal, not yet sent to a site (a site that is down
or behind), are never sent: mirror-sendd passes over them (entries a site acknowledged
before the removal are that site's, and may still be applied). The rule's backup is left in
place on every site, as it stands (it may lack the last changes); nothing deletes it. Adding
the rule again copies what it selects again (its first copy), which brings that backup in
line."
    )]
    Rm {
        /// The rule's id.
        id: i64,
    },
}

/// Arguments of `rule add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Source pattern: an absolute path in one of the four forms below.
    #[arg(value_parser = |s: &str| Pattern::parse(s).map_err(|e| e.to_string()))]
    pub pattern: Pattern,

    /// Backup host as HOST:PORT; repeat to mirror to several sites.
    #[arg(long = "site", value_name = "HOST:PORT", required = true, help_heading = RULE,
          value_parser = |s: &str| Site::parse(s).map_err(|e| e.to_string()))]
    pub sites: Vec<Site>,

    /// Backup file or directory, relative to this site's namespace on the router
    /// (<root>/<site-id>/ unless the router's operator granted another). Two rules of one
    /// site never share a backup file.
    #[arg(long, value_name = "PATH", help_heading = RULE,
          value_parser = |s: &str| Dest::parse(s).map_err(|e| e.to_string()))]
    pub dest: Dest,

    /// Mirror owner and group (where the router may set them), access and modification
    /// times, extended attributes and the set-id and sticky bits too.
    /// Every rule, without it, mirrors contents, names, symlinks, hard links and the
    /// permission bits rwx: executables stay executable and git sees no mode change, but
    /// the backup files belong to the router's user and carry the times they were written,
    /// so a restore from them must set owners (chown) and, where they matter, times again.
    #[arg(long, help_heading = RULE)]
    pub attrs: bool,

    /// Keep a backup file that its source deletes or replaces (a rename over it, an editor's
    /// save) instead of losing it: the first version kept is NAME+SUF, the next ones
    /// NAME+SUF.1, NAME+SUF.2, … in order. All are kept (none is ever overwritten or removed
    /// by mirror; prune them by hand). A source file that is itself named NAME+SUF or
    /// NAME+SUF.N is mirrored under its name like any other (a kept version never takes a
    /// taken name).
    #[arg(long, value_name = "SUF", help_heading = RULE,
          value_parser = |s: &str| parse_delete_suffix(s).map_err(|e| e.to_string()))]
    pub delete_suffix: Option<String>,

    /// Add the rule without asking the sites whether the destination can be written (for a
    /// site that is down now).
    #[arg(long, help_heading = RULE)]
    pub no_validate: bool,

    #[command(flatten)]
    pub sync: RuleSyncArgs,

    /// Do not copy what the rule selects now (its first copy): for a backup seeded
    /// beforehand (rsync, a restored disk…), whose files are then trusted as they are. Only
    /// later changes are sent; `mirror-ctl sync` copies files again at any time.
    #[arg(long, help_heading = RULE)]
    pub no_sync: bool,
}

const SYNC: &str = "Sync options";

/// The mode and sync options of a rule (`rule add`, `rule set`); each one left out keeps its
/// default (`rule add`) or its current value (`rule set`).
#[derive(Debug, Args, Default)]
pub struct RuleSyncArgs {
    /// async: the journal is the durability point, sites follow within milliseconds.
    /// sync: every durability point of a selected file (fsync, fdatasync, O_SYNC writes,
    /// fsyncdir, namespace changes: create, rename, unlink, link, symlink, mkdir, rmdir,
    /// setattr) returns only once every site of the rule acknowledged it [default: async]
    #[arg(long, value_name = "async|sync", help_heading = SYNC,
          value_parser = |s: &str| Mode::parse(s).map_err(|e| e.to_string()))]
    pub mode: Option<Mode>,

    /// What a sync rule waits for: durable (in the site's router logs) or applied (written to
    /// the backup file) [default: durable]
    #[arg(long, value_name = "durable|applied", help_heading = SYNC,
          value_parser = |s: &str| SyncPoint::parse(s).map_err(|e| e.to_string()))]
    pub sync_point: Option<SyncPoint>,

    /// How long a durability point waits for a site before the site counts as lost (500ms,
    /// 10s, 2m) [default: 10s]
    #[arg(long, value_name = "DURATION", help_heading = SYNC,
          value_parser = parse_sync_timeout)]
    pub sync_timeout: Option<std::time::Duration>,

    /// When a site is lost (blocked, or silent past --sync-timeout): degrade (the calls
    /// return; the rule is degraded for that site until its backlog drained) or fail (the
    /// calls fail with EIO, and namespace changes and fsyncs fail with EIO while the site is
    /// out of sync; nothing written is lost) [default: degrade]
    #[arg(long, value_name = "degrade|fail", help_heading = SYNC,
          value_parser = |s: &str| OnSyncLoss::parse(s).map_err(|e| e.to_string()))]
    pub on_sync_loss: Option<OnSyncLoss>,
}

impl RuleSyncArgs {
    /// Whether any option was given.
    pub fn any(&self) -> bool {
        self.mode.is_some()
            || self.sync_point.is_some()
            || self.sync_timeout.is_some()
            || self.on_sync_loss.is_some()
    }

    /// `mode` and `sync` with the options given applied.
    pub fn apply(&self, mode: Mode, sync: SyncOpts) -> (Mode, SyncOpts) {
        (
            self.mode.unwrap_or(mode),
            SyncOpts {
                point: self.sync_point.unwrap_or(sync.point),
                timeout: self.sync_timeout.unwrap_or(sync.timeout),
                on_loss: self.on_sync_loss.unwrap_or(sync.on_loss),
            },
        )
    }
}

fn parse_sync_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = mirrorfs::units::parse_duration(s)?;
    SyncOpts::timeout_from_ms(d.as_millis() as u64)
        .map_err(|e| e.to_string())
        .map(|_| d)
}

/// Arguments of `rule set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The rule's id (see `rule list`).
    pub id: i64,
    #[command(flatten)]
    pub sync: RuleSyncArgs,
}
