//! `mirror-ctl key …` on a source and `mirror-ctl router key …` on a backup host: the
//! pre-shared keys that sessions authenticate with (`mirrorfs::wire::auth`).

use std::io::Read;

use anyhow::{bail, Context, Result};
use mirrorfs::wire::auth::{Key, KeyFile, KeyRing, Namespace};

use crate::cli::{KeyCommand, RouterKeyCommand};

fn parse_key(text: &str) -> Result<Key> {
    let text = if text == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the key from stdin")?;
        s
    } else {
        text.to_string()
    };
    Key::from_hex(&text).context("invalid key")
}

fn list(keys: &KeyRing, what: &str) -> Result<()> {
    let f = keys.load()?;
    let names: Vec<&str> = f.names().collect();
    if names.is_empty() {
        println!("no {what} has a key in {}", keys.path().display());
    }
    for n in names {
        println!("{n}");
    }
    Ok(())
}

fn rm(keys: &KeyRing, name: &str, what: &str) -> Result<()> {
    if !KeyFile::remove(keys.path(), name)? {
        bail!("{what} {name} has no key in {}", keys.path().display());
    }
    println!(
        "removed the key of {what} {name} from {}",
        keys.path().display()
    );
    Ok(())
}

/// `mirror-ctl key …`: the routers' keys on this source.
pub fn source(keys: &KeyRing, cmd: KeyCommand) -> Result<()> {
    match cmd {
        KeyCommand::Add { site, key } => {
            // As rules name it (`spool:/out/` is `spool:/out`).
            let site = if site == "*" {
                site
            } else {
                mirrorfs::rule::Site::parse(&site)?.to_string()
            };
            let key = parse_key(&key)?;
            KeyFile::store(keys.path(), &site, &key)?;
            println!(
                "stored the key for site {site} in {} (mirror-sendd uses it from its next connection; `mirror-ctl unblock` tries a blocked site at once)",
                keys.path().display()
            );
            Ok(())
        }
        KeyCommand::List => list(keys, "site"),
        KeyCommand::Rm { site } => {
            let site = mirrorfs::rule::Site::parse(&site).map_or(site, |s| s.to_string());
            rm(keys, &site, "site")
        }
    }
}

/// `mirror-ctl router key …`: the source sites' keys on this router.
pub fn router(keys: &KeyRing, cmd: RouterKeyCommand) -> Result<()> {
    match cmd {
        RouterKeyCommand::Add {
            site,
            key,
            namespace,
        } => {
            check_site_id(&site)?;
            let ns = Namespace::parse(namespace.as_deref().unwrap_or(&site))
                .map_err(anyhow::Error::msg)?;
            refuse_nesting(keys, &site, &ns)?;
            let key = match key {
                Some(k) => parse_key(&k)?,
                None => Key::generate()?,
            };
            KeyFile::store_granting(keys.path(), &site, &key, Some(ns.clone()))?;
            eprintln!(
                "stored the key of source site {site} in {}, granting <root>/{} (namespace {ns}); on that source run:\n  mirror-ctl key add ROUTER_HOST:PORT {}\n(or, for a source that sends spool files, `mirror-ctl key add spool:/OUTBOX` with the same key)",
                keys.path().display(),
                ns.path().display(),
                key.to_hex()
            );
            println!("{}", key.to_hex());
            Ok(())
        }
        RouterKeyCommand::List => {
            let f = keys.load()?;
            let names: Vec<&str> = f.names().collect();
            if names.is_empty() {
                println!("no source site has a key in {}", keys.path().display());
            }
            for n in names {
                match f.namespace(n) {
                    Some(Namespace::Unconfined) => println!(
                        "{n}  UNCONFINED (the whole root; a key made before namespaces: run `mirror-ctl router namespace {n} PATH`)"
                    ),
                    Some(ns) => println!("{n}  namespace {ns}"),
                    None => println!("{n}"),
                }
            }
            Ok(())
        }
        RouterKeyCommand::Rm { site } => rm(keys, &site, "source site"),
    }
}

/// Refuses a namespace inside (or around) another site's: one site could then write the
/// other's backups. Sites share a namespace only when both are given the same one.
fn refuse_nesting(keys: &KeyRing, site: &str, ns: &Namespace) -> Result<()> {
    let f = KeyFile::load(keys.path())?;
    if let Some((other, theirs)) = f.nesting(site, ns) {
        bail!(
            "namespace {ns} of site {site} would nest with namespace {theirs} of site {other}: either could write the other's backups; give both the same namespace to share one, or choose one outside the other"
        );
    }
    let whole = |n: &Namespace| n.text().as_deref() == Some(".");
    let others: Vec<&str> = f.names().filter(|n| *n != site).collect();
    if whole(ns) && !others.is_empty() {
        eprintln!(
            "note: site {site} may write anywhere under the root, the backups of {} included",
            others.join(", ")
        );
    } else if let Some(all) = others
        .iter()
        .find(|n| f.namespace(n).as_ref().is_some_and(whole))
    {
        eprintln!(
            "note: site {all} may write anywhere under the root, this site's backups included"
        );
    }
    Ok(())
}

fn check_site_id(site: &str) -> Result<()> {
    if !mirrorfs::wire::msg::valid_site_id(site) {
        bail!(
            "invalid source site id {site:?}: {}",
            mirrorfs::wire::msg::SITE_ID_RULE
        );
    }
    Ok(())
}

/// `mirror-ctl router namespace SITE PATH`.
pub fn namespace(keys: &KeyRing, site: &str, path: &str) -> Result<()> {
    check_site_id(site)?;
    let ns = Namespace::parse(path).map_err(anyhow::Error::msg)?;
    refuse_nesting(keys, site, &ns)?;
    if !KeyFile::set_namespace(keys.path(), site, ns.clone())? {
        bail!(
            "source site {site} has no key in {} (add one with `mirror-ctl router key add {site}`)",
            keys.path().display()
        );
    }
    println!(
        "source site {site} now writes beneath <root>/{} (namespace {ns})",
        ns.path().display()
    );
    Ok(())
}
