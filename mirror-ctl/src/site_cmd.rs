//! `mirror-ctl site set|list`: the per-site settings of a source ([`mirrorfs::sitecfg`]).

use anyhow::{bail, Result};
use mirrorfs::sitecfg;
use mirrorfs::state::StateDir;

use crate::cli::SiteCommand;

/// Runs a `site` command.
pub fn site(state: &StateDir, c: SiteCommand) -> Result<()> {
    let path = sitecfg::path(state.root());
    match c {
        SiteCommand::Set { site, connections } => {
            let Some(v) = connections else {
                bail!("nothing to set: give --connections N");
            };
            let n = if v == "default" {
                None
            } else {
                match v.parse::<u32>() {
                    Ok(n) => Some(n),
                    Err(_) => bail!("--connections takes a number or `default`, not {v:?}"),
                }
            };
            sitecfg::set_connections(&path, &site, n)?;
            match n {
                Some(n) => println!("site {site}: {n} connections"),
                None => println!("site {site}: mirror-sendd's --connections"),
            }
            Ok(())
        }
        SiteCommand::List { json } => {
            let all = sitecfg::load(&path)?;
            if json {
                for s in &all {
                    println!("{}", serde_json::to_string(s)?);
                }
                return Ok(());
            }
            println!("{:<40} CONNECTIONS", "SITE");
            for s in &all {
                let n = s
                    .connections
                    .map_or("default".to_string(), |n| n.to_string());
                println!("{:<40} {n}", s.site);
            }
            Ok(())
        }
    }
}
