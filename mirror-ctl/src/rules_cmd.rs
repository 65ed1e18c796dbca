//! `mirror-ctl rule add | list | rm`.

use std::fs;

use anyhow::{bail, Context, Result};
use mirrorfs::rule::{Mode, Rule, RuleSpec, SyncOpts};
use mirrorfs::rulesdb::RulesDb;
use mirrorfs::state::StateDir;
use serde::Serialize;

use crate::cli::{AddArgs, SetArgs};

fn open_db(state: &StateDir) -> Result<RulesDb> {
    Ok(RulesDb::open(&state.rules_db())?)
}

/// `rule add`: validates, then stores the rule.
pub fn add(state: &StateDir, keys: &mirrorfs::wire::auth::KeyRing, args: AddArgs) -> Result<()> {
    let dir = args.pattern.source_dir().to_path_buf();
    // Bounded: a file system that does not answer must not hold `rule add` for good.
    let what = format!("source directory of pattern {}:", args.pattern);
    let looked = crate::bounded::look(&what, &dir, |d| {
        fs::metadata(d).map(|m| (m.is_dir(), fs::read_dir(d).map(drop)))
    })?;
    let (is_dir, readable) = looked.with_context(|| {
        format!(
            "source directory {} of pattern {} cannot be used",
            dir.display(),
            args.pattern
        )
    })?;
    if !is_dir {
        bail!(
            "source directory {} of pattern {} is not a directory",
            dir.display(),
            args.pattern
        );
    }
    readable.with_context(|| {
        format!(
            "source directory {} of pattern {} is not readable",
            dir.display(),
            args.pattern
        )
    })?;
    if !args.no_validate {
        // A spool site has no router to ask: its files are checked where they arrive.
        for site in args.sites.iter().filter(|s| s.spool_dir().is_none()) {
            crate::validate::check(
                state,
                keys,
                site,
                &args.dest,
                args.pattern.kind().dest_is_dir(),
            )?;
        }
    }
    let (mode, sync) = args.sync.apply(Mode::Async, SyncOpts::default());
    refuse_sync_spool(mode, &args.sites)?;
    let spec = RuleSpec {
        pattern: args.pattern,
        sites: args.sites,
        dest: args.dest,
        attrs: args.attrs,
        delete_suffix: args.delete_suffix,
        mode,
        sync,
    };
    let mut db = open_db(state)?;
    refuse_outbox_in_sources(&db.list()?, &spec)?;
    let rule = db.add_with(spec, !args.no_sync)?;
    println!("added rule {}: {}", rule.id, describe(&rule));
    if args.no_sync {
        println!("no first copy (--no-sync): the sites' backups are trusted as they are");
        return Ok(());
    }
    match crate::first_copy::queue(state, &db)? {
        crate::first_copy::Queued::ByMount => println!(
            "first copy queued by the mount; mirror-sendd sends it (`mirror-ctl status` shows what is left)"
        ),
        crate::first_copy::Queued::Direct => println!(
            "first copy queued in the journal; mirror-sendd sends it (`mirror-ctl status` shows what is left)"
        ),
        crate::first_copy::Queued::Later(why) => {
            println!("first copy not queued yet: {why}; the mount queues it when it loads the rule")
        }
    }
    Ok(())
}

fn describe(r: &Rule) -> String {
    let s = &r.spec;
    let sites: Vec<String> = s.sites.iter().map(|x| x.to_string()).collect();
    let mut out = format!("{} -> {} on {}", s.pattern, s.dest, sites.join(", "));
    if s.attrs {
        out.push_str(", with attributes");
    }
    if let Some(suf) = &s.delete_suffix {
        out.push_str(&format!(
            ", deleted and replaced files kept as NAME{suf}, NAME{suf}.1, …"
        ));
    }
    out.push_str(", ");
    out.push_str(&mode_text(s));
    out
}

/// `async`, or `sync (durable, 10s, degrade)`.
fn mode_text(s: &RuleSpec) -> String {
    match s.mode {
        Mode::Async => "async".into(),
        Mode::Sync => format!(
            "sync ({}, timeout {}, on loss {})",
            s.sync.point.as_str(),
            mirrorfs::units::show_duration(s.sync.timeout),
            s.sync.on_loss.as_str()
        ),
    }
}

/// `rule set ID …`: the mode and sync options, on a running system.
pub fn set(state: &StateDir, args: SetArgs) -> Result<()> {
    if !args.sync.any() {
        bail!(
            "rule set {}: nothing to change; give --mode, --sync-point, --sync-timeout or --on-sync-loss",
            args.id
        );
    }
    let mut db = match RulesDb::open_existing(&state.rules_db())? {
        Some(db) => db,
        None => bail!("no rule with id {} (there are no rules)", args.id),
    };
    let old = db
        .list()?
        .into_iter()
        .find(|r| r.id == args.id)
        .ok_or(mirrorfs::rulesdb::RulesDbError::NoSuchRule(args.id))?;
    let (mode, sync) = args.sync.apply(old.spec.mode, old.spec.sync);
    refuse_sync_spool(mode, &old.spec.sites).with_context(|| format!("rule set {}", args.id))?;
    if (mode, sync) == (old.spec.mode, old.spec.sync) {
        println!("rule {} unchanged: {}", old.id, describe(&old));
        return Ok(());
    }
    let rule = db.set_sync(args.id, mode, sync)?;
    println!("rule {}: {}", rule.id, describe(&rule));
    if old.spec.mode != mode {
        println!(
            "{}",
            match mode {
                Mode::Sync => "durability points of its files wait for its sites from now on (the mount picks the change up within a fraction of a second)",
                Mode::Async => "durability points of its files no longer wait for its sites",
            }
        );
    }
    Ok(())
}

/// `rule rm ID`.
pub fn rm(state: &StateDir, id: i64) -> Result<()> {
    let mut db = open_db(state)?;
    let rule = db.remove(id)?;
    println!("removed rule {}: {}", rule.id, describe(&rule));
    Ok(())
}

/// One rule in `rule list --json` (field names are a stable interface).
#[derive(Serialize)]
struct JsonRule<'a> {
    id: i64,
    pattern: &'a str,
    kind: String,
    sites: Vec<String>,
    dest: &'a str,
    attrs: bool,
    delete_suffix: Option<&'a str>,
    mode: &'static str,
    sync_point: &'static str,
    sync_timeout_ms: u64,
    sync_timeout: String,
    on_sync_loss: &'static str,
    crc: u32,
}

/// `rule list [--json]`.
pub fn list(state: &StateDir, json: bool) -> Result<()> {
    // Read only: a local system without a rules database has no rules (none is made).
    let (version, rules) = match RulesDb::open_existing(&state.rules_db())? {
        Some(db) => db.snapshot()?,
        None => (0, Vec::new()),
    };
    if json {
        let v: Vec<JsonRule<'_>> = rules
            .iter()
            .map(|r| JsonRule {
                id: r.id,
                pattern: r.spec.pattern.as_str(),
                kind: r.spec.pattern.kind().to_string(),
                sites: r.spec.sites.iter().map(|s| s.to_string()).collect(),
                dest: r.spec.dest.as_str(),
                attrs: r.spec.attrs,
                delete_suffix: r.spec.delete_suffix.as_deref(),
                mode: r.spec.mode.as_str(),
                sync_point: r.spec.sync.point.as_str(),
                sync_timeout_ms: r.spec.sync.timeout.as_millis() as u64,
                sync_timeout: mirrorfs::units::show_duration(r.spec.sync.timeout),
                on_sync_loss: r.spec.sync.on_loss.as_str(),
                crc: r.crc,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if rules.is_empty() {
        println!("no rules (configuration version {version}); add one with `mirror-ctl rule add`");
        return Ok(());
    }
    let rows: Vec<[String; 8]> = rules
        .iter()
        .map(|r| {
            let s = &r.spec;
            [
                r.id.to_string(),
                s.pattern.to_string(),
                s.pattern.kind().to_string(),
                s.sites
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                s.dest.to_string(),
                if s.attrs { "yes" } else { "no" }.to_string(),
                s.delete_suffix.clone().unwrap_or_else(|| "-".into()),
                mode_text(s),
            ]
        })
        .collect();
    let header = [
        "ID",
        "PATTERN",
        "KIND",
        "SITES",
        "DEST",
        "ATTRS",
        "DELETE-SUFFIX",
        "MODE",
    ];
    print!("{}", table(&header, &rows));
    println!("configuration version {version}");
    Ok(())
}

/// Left-aligned columns separated by two spaces.
pub fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut width = header.map(|h| h.chars().count());
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == N {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// A sync rule waits for a live acknowledgement; a spool site gives one hours later at best.
fn refuse_sync_spool(mode: Mode, sites: &[mirrorfs::rule::Site]) -> Result<()> {
    if mode == Mode::Sync {
        if let Some(s) = sites.iter().find(|s| s.spool_dir().is_some()) {
            bail!(
                "--mode sync cannot name spool site {s}: a spool is carried by a file-transfer tool, so a durability point would wait for hours; keep the rule async (or name a HOST:PORT site)"
            );
        }
    }
    Ok(())
}

/// A spool outbox inside what a rule selects would mirror its own spool files, and send
/// them again, for ever: refused, whichever of the two rules comes second.
fn refuse_outbox_in_sources(rules: &[Rule], new: &RuleSpec) -> Result<()> {
    let specs: Vec<(Option<i64>, &RuleSpec)> = rules
        .iter()
        .map(|r| (Some(r.id), &r.spec))
        .chain(std::iter::once((None, new)))
        .collect();
    for (_, with_outbox) in &specs {
        for outbox in with_outbox.sites.iter().filter_map(|s| s.spool_dir()) {
            for (id, spec) in &specs {
                let dir = spec.pattern.source_dir();
                let inside = if spec.pattern.kind().is_subtree() {
                    outbox.starts_with(dir)
                } else {
                    outbox == dir
                };
                if inside {
                    bail!(
                        "spool outbox {} is inside {}, which {} selects: its own spool files would be mirrored and sent again for ever; put the outbox outside every rule's source",
                        outbox.display(),
                        dir.display(),
                        id.map_or("this rule".to_string(), |i| format!("rule {i}"))
                    );
                }
            }
        }
    }
    Ok(())
}
