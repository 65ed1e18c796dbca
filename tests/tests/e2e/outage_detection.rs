//! Issue 12 item 9: an outage is reported while it lasts. With TCP and UDP to the router's
//! port dropped (nft) while the link is busy writing (its socket buffers full), the site is
//! blocked within the heartbeat timeout plus an interval: status, the error log and the
//! `--on-block` hook say so while the cut is still in place; it unblocks and converges after.

use std::fs;
use std::time::{Duration, Instant};

use mirror_tests::{assert_log_only, wait_converged, wait_until, Local};

use crate::mirror_ops::mirrored_with;
use crate::outage_faults::Cut;

const CONVERGE: Duration = Duration::from_secs(180);
const NOTICE: Duration = Duration::from_secs(30);
/// The heartbeat timing of this test (mirror-sendd's defaults).
const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(3);
/// Room for a loaded machine on top of the timeout and an interval.
const SLACK: Duration = Duration::from_secs(3);

fn site_status(l: &Local, site: &str) -> serde_json::Value {
    let all = l.status();
    all.as_array()
        .and_then(|a| a.iter().find(|s| s["site"] == site))
        .cloned()
        .unwrap_or_else(|| panic!("site {site} not in the status: {all}"))
}

#[test]
fn a_network_cut_blocks_the_site_while_it_lasts() {
    let r = mirror_tests::Router::start();
    let site = r.site();
    let hook_dir = tempfile::tempdir().unwrap();
    let told = hook_dir.path().join("told");
    let hook = format!("echo \"$MIRROR_SITE: $MIRROR_REASON\" > {}", told.display());
    let (l, m, s) = mirrored_with(
        &r,
        "w",
        &[],
        &[
            "--heartbeat-interval",
            "1s",
            "--heartbeat-timeout",
            "3s",
            "--probation",
            "2s",
            "--on-block",
            &hook,
        ],
    );
    fs::write(l.path("a.txt"), b"before").unwrap();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    wait_until(NOTICE, "the router's heartbeats", || {
        site_status(&l, &site)["heartbeat"] == true
    });
    let cut = Cut::new(r.port);
    let cut_at = Instant::now();
    // More than the socket buffers hold: the link's writes stall in the cut.
    let big: Vec<u8> = (0..48u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(l.path("big.bin"), &big).unwrap();
    let deadline = cut_at + TIMEOUT + INTERVAL + SLACK;
    let blocked_in = |what: &str, cond: &mut dyn FnMut() -> bool| {
        let left = deadline.saturating_duration_since(Instant::now());
        wait_until(left.max(Duration::from_millis(1)), what, &mut *cond);
    };
    blocked_in("the status to say blocked while the cut lasts", &mut || {
        !site_status(&l, &site)["blocked"].is_null()
    });
    blocked_in(
        "the error log to say blocked while the cut lasts",
        &mut || {
            l.error_log()
                .contains(&format!("site {site} is blocked: no heartbeat"))
        },
    );
    blocked_in(
        "the --on-block hook to run while the cut lasts",
        &mut || {
            fs::read_to_string(&told)
                .is_ok_and(|t| t.starts_with(&format!("{site}: no heartbeat from the router for ")))
        },
    );
    let noticed = cut_at.elapsed();
    let st = site_status(&l, &site);
    let reason = st["blocked"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!reason.is_empty(), "{st}");
    fs::write(l.path("during.txt"), b"written during the cut").unwrap();
    drop(cut);
    let lifted = cut_at.elapsed();
    wait_until(NOTICE, "the site to be unblocked", || {
        site_status(&l, &site)["blocked"].is_null()
    });
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    eprintln!(
        "blocked {noticed:.1?} after the cut (timeout {TIMEOUT:?}, interval {INTERVAL:?}), cut lifted after {lifted:.1?}; files compared {n}, differences 0"
    );
    drop(m);
    drop(s);
    assert_log_only(
        "the source",
        &l.error_log(),
        &[" is blocked: no heartbeat", " is unblocked (", "; retrying"],
    );
    assert_log_only(
        "the router",
        &r.error_log(),
        &["session with 127.0.0.1:", "closed its session", "heartbeat"],
    );
}
