//! Issue 12 item 7: a damaged journal record that a site has not acknowledged. The site is
//! blocked with the reason (segment and offset), `mirror-ctl status` keeps working (with and
//! without mirror-sendd) and counts the queue past the damage, mirror-sendd backs off instead
//! of retrying five times a second, and, once the damage is skipped (no manual edit), the
//! later entries arrive and a resync of the rules' files makes the backup equal to the source.

use std::fs;
use std::path::Path;
use std::time::Duration;

use mirror_tests::{assert_log_only, wait_converged, wait_until, Local, Router};
use mirrorfs::entry::Command;
use mirrorfs::journal::{self, JournalReader, Position};

use crate::mirror_workload::Workload;

const CONVERGE: Duration = Duration::from_secs(180);
const NOTICE: Duration = Duration::from_secs(60);
/// Small segments, so the damage sits in the middle of a sealed one.
const SEGMENT: &str = "262144";

fn site_status(l: &Local, site: &str) -> serde_json::Value {
    let all = l.status();
    all.as_array()
        .and_then(|a| a.iter().find(|s| s["site"] == site))
        .cloned()
        .unwrap_or_else(|| panic!("site {site} not in the status: {all}"))
}

/// The position and entry of the first record with `command` whose name ends in `suffix`,
/// from `from` on.
fn find(dir: &Path, from: Position, command: Command, suffix: &str) -> (Position, Vec<u8>, usize) {
    let mut r = JournalReader::open(dir, from).unwrap();
    while let Some((p, e)) = r.next_entry().unwrap() {
        // A write with data enough to damage in its middle.
        let enough = command != Command::Write || e.data.len() > 200;
        if e.command == command && e.name.ends_with(suffix.as_bytes()) && enough {
            return (p, e.name.clone(), e.aux.len());
        }
    }
    panic!("no {command:?} of *{suffix} in the journal from {from}");
}

/// Flips bits of one byte in place (the segment may be the one mirrorfs appends to).
fn flip(seg: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(seg)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, offset).unwrap();
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn a_damaged_journal_record_blocks_the_site_then_is_skipped_and_the_backup_converges() {
    let mut r = Router::start();
    let site = r.site();
    let l = Local::new();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &site, "w", &[]);
    let m = l.mount(&["--segment-size", SEGMENT]);
    let mut s = l.sender_with(&["--skip-damage-after", "1h"]);
    let mut w = Workload::new(&l.dir, 0x5eed_0701, 40);
    fs::write(l.path("victim-gone.txt"), b"deleted while the site is away").unwrap();
    for _ in 0..100 {
        w.step();
    }
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    // Nothing past the router's durable point: its next start asks for no copies, which would
    // bring files of after the damage as they are now.
    r.wait_durable();

    // Entries the site has not acknowledged, over several segments.
    r.kill9();
    wait_until(NOTICE, "the site to be blocked", || {
        !site_status(&l, &site)["blocked"].is_null()
    });
    let acked = Position::new(
        site_status(&l, &site)["acked"]["segment"].as_u64().unwrap(),
        site_status(&l, &site)["acked"]["offset"].as_u64().unwrap(),
    );
    fs::create_dir_all(l.path("late")).unwrap();
    for i in 0..40 {
        fs::write(
            l.path(&format!("late/a{i}.txt")),
            vec![b'a' + (i % 26) as u8; 3000],
        )
        .unwrap();
    }
    fs::write(l.path("victim.bin"), vec![0x77u8; 20_000]).unwrap();
    // Records in between: two damaged stretches, not one.
    for i in 0..20 {
        fs::write(l.path(&format!("late/c{i}.txt")), b"between").unwrap();
    }
    fs::remove_file(l.path("victim-gone.txt")).unwrap();
    for _ in 0..300 {
        w.step();
    }
    fs::create_dir_all(l.path("after")).unwrap();
    for i in 0..200 {
        fs::write(l.path(&format!("after/b{i}.txt")), vec![b'b'; 4000]).unwrap();
    }
    fs::write(l.path("after/last.txt"), b"the last change").unwrap();

    // A flipped byte in the data of victim.bin's write, and in the CRC of victim-gone.txt's
    // delete (its name survives), both in the middle of sealed segments.
    let jdir = l.state.join("journal");
    let newest = *journal::list_segments(&jdir).unwrap().last().unwrap();
    let (wpos, wname, waux) = find(&jdir, acked, Command::Write, "/victim.bin");
    let (dpos, _, _) = find(&jdir, acked, Command::Delete, "/victim-gone.txt");
    for p in [wpos, dpos] {
        assert!(
            p.segment < newest,
            "{p} is in a sealed segment (newest {newest})"
        );
        assert!(
            p.offset > journal::format::SEGMENT_HEADER_LEN,
            "{p} has records before it"
        );
    }
    let wseg = journal::segment_path(&jdir, wpos.segment);
    flip(&wseg, wpos.offset + 52 + (wname.len() + waux) as u64 + 100);
    flip(&journal::segment_path(&jdir, dpos.segment), dpos.offset + 9);
    let first = wpos.min(dpos);
    let first_seg = journal::segment_path(&jdir, first.segment);
    let first_file = first_seg
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();

    // Status works while the site is away and counts past the damage.
    let st = site_status(&l, &site);
    let damage = st["journal_damage"].as_array().cloned().unwrap_or_default();
    assert_eq!(damage.len(), 2, "{st}");
    assert!(
        damage[0]
            .as_str()
            .unwrap()
            .contains(&format!("{first_file} at offset {}", first.offset)),
        "{st}"
    );
    assert!(st["queued_entries"].as_u64().unwrap() > 400, "{st}");
    let text = l.ctl(&["status"]);
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    assert!(String::from_utf8_lossy(&text.stdout).contains("journal damaged: "));

    // The router is back: the link reaches the damage and blocks the site with the reason.
    r.restart();
    let reason_part = format!("{first_file} is corrupt at offset {}", first.offset);
    wait_until(NOTICE, "the site to be blocked for the damage", || {
        site_status(&l, &site)["blocked"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&reason_part))
    });
    assert!(
        l.error_log()
            .contains(&format!("site {site} is blocked: journal segment ")),
        "{}",
        l.error_log()
    );
    // What came before the damage arrived; nothing after it.
    wait_until(NOTICE, "the entries before the damage", || {
        r.path("w/late/a0.txt").exists()
    });
    assert!(!r.path("w/after/last.txt").exists());
    // It backs off: attempts over a period (a measurement window, not a synchronisation).
    let before = count(&s.log_text(), "connected; resuming at");
    std::thread::sleep(Duration::from_secs(8));
    let attempts = count(&s.log_text(), "connected; resuming at") - before;
    eprintln!("{attempts} attempts in 8 s while blocked by the damage");
    assert!(attempts <= 5, "{attempts} attempts in 8 s: no backoff");
    let st = site_status(&l, &site);
    assert_eq!(
        st["journal_damage"].as_array().map(Vec::len),
        Some(2),
        "{st}"
    );

    // Status from the files, without mirror-sendd.
    s.kill9();
    let st = site_status(&l, &site);
    assert_eq!(st["sender_running"], false);
    assert!(st["blocked"]["reason"]
        .as_str()
        .unwrap()
        .contains(&reason_part));
    assert_eq!(
        st["journal_damage"].as_array().map(Vec::len),
        Some(2),
        "{st}"
    );

    // No manual edit: a sender that skips damage after a few seconds goes on by itself.
    let s = l.sender_with(&["--skip-damage-after", "2s"]);
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    assert!(r.path("w/after/last.txt").exists());
    assert!(
        !r.path("w/victim-gone.txt").exists(),
        "the damaged delete's name was read"
    );
    wait_until(NOTICE, "the site to be unblocked", || {
        site_status(&l, &site)["blocked"].is_null()
    });
    wait_until(NOTICE, "the resync to be retired", || {
        site_status(&l, &site)["resync_files"] == 0
    });
    assert!(
        l.state.join("damaged").join(&first_file).exists(),
        "kept for inspection"
    );
    let sync = l.ctl(&["sync", "--wait", "--timeout", "120"]);
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    let n = n.max(wait_converged(&l.dir, &r.path("w"), CONVERGE));
    let log = s.log_text();
    assert_eq!(
        count(&log, "skipped the damaged journal bytes from "),
        2,
        "{log}"
    );
    eprintln!(
        "faults 2, operations {}, files compared {n}, differences 0",
        w.ops
    );
    drop(m);
    assert_log_only(
        "the source",
        &l.error_log(),
        &[
            " is blocked: ",
            " is blocked since ",
            " is unblocked (",
            "; retrying",
            "skipped the damaged journal bytes from ",
            "sending whole what journal damage hid",
        ],
    );
    assert_log_only(
        "the router",
        &r.error_log(),
        &["torn tail", "session with 127.0.0.1:", "closed its session"],
    );
}

/// Damage that goes away before `--skip-damage-after` (a passing read error) is read again
/// and nothing is resynced; damage that stays is skipped at once on `mirror-ctl unblock`.
#[test]
fn passing_damage_is_read_again_and_mirror_ctl_unblock_skips_lasting_damage() {
    let mut r = Router::start();
    let site = r.site();
    let l = Local::new();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &site, "w", &[]);
    let m = l.mount(&["--segment-size", SEGMENT]);
    let s = l.sender_with(&["--skip-damage-after", "1h"]);
    fs::write(l.path("first.txt"), b"before").unwrap();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    r.kill9();
    wait_until(NOTICE, "the site to be blocked", || {
        !site_status(&l, &site)["blocked"].is_null()
    });
    let acked = Position::new(
        site_status(&l, &site)["acked"]["segment"].as_u64().unwrap(),
        site_status(&l, &site)["acked"]["offset"].as_u64().unwrap(),
    );
    fs::write(l.path("passing.bin"), vec![0x11u8; 8000]).unwrap();
    for i in 0..20 {
        fs::write(l.path(&format!("mid{i}.txt")), b"between").unwrap();
    }
    fs::write(l.path("lasting.bin"), vec![0x22u8; 8000]).unwrap();
    for i in 0..100 {
        fs::write(l.path(&format!("after{i}.txt")), vec![b'x'; 4000]).unwrap();
    }
    let jdir = l.state.join("journal");
    let (ppos, pname, paux) = find(&jdir, acked, Command::Write, "/passing.bin");
    let pat = ppos.offset + 52 + (pname.len() + paux) as u64 + 100;
    flip(&journal::segment_path(&jdir, ppos.segment), pat);
    r.restart();
    wait_until(
        NOTICE,
        "the site to be blocked for the first damage",
        || {
            site_status(&l, &site)["blocked"]["reason"]
                .as_str()
                .is_some_and(|x| x.contains(&format!("corrupt at offset {}", ppos.offset)))
        },
    );
    // The read error passes; the next attempt reads the record and goes on to the end.
    flip(&journal::segment_path(&jdir, ppos.segment), pat);
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    wait_until(NOTICE, "the site to be unblocked", || {
        site_status(&l, &site)["blocked"].is_null()
    });
    assert!(
        !s.log_text().contains("skipped the damaged"),
        "{}",
        s.log_text()
    );
    assert!(!l.state.join("resync").exists() || site_status(&l, &site)["resync_files"] == 0);

    // Lasting damage, skipped at once when asked.
    r.kill9();
    wait_until(NOTICE, "the site to be blocked", || {
        !site_status(&l, &site)["blocked"].is_null()
    });
    // Damage a record the site still needs.
    let acked = Position::new(
        site_status(&l, &site)["acked"]["segment"].as_u64().unwrap(),
        site_status(&l, &site)["acked"]["offset"].as_u64().unwrap(),
    );
    fs::write(l.path("lasting.bin"), vec![0x33u8; 8000]).unwrap();
    for i in 0..50 {
        fs::write(l.path(&format!("later{i}.txt")), vec![b'y'; 4000]).unwrap();
    }
    let (lpos, lname, laux) = find(&jdir, acked, Command::Write, "/lasting.bin");
    let lat = lpos.offset + 52 + (lname.len() + laux) as u64 + 100;
    flip(&journal::segment_path(&jdir, lpos.segment), lat);
    r.restart();
    wait_until(
        NOTICE,
        "the site to be blocked for the lasting damage",
        || {
            site_status(&l, &site)["blocked"]["reason"]
                .as_str()
                .is_some_and(|x| x.contains(&format!("corrupt at offset {}", lpos.offset)))
        },
    );
    let out = l.ctl(&["unblock", &site]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    assert_eq!(
        count(&s.log_text(), "skipped the damaged journal bytes from "),
        1
    );
    wait_until(NOTICE, "the resync to be retired", || {
        site_status(&l, &site)["resync_files"] == 0
    });
    eprintln!("faults 2, files compared {n}, differences 0");
    drop(m);
    assert_log_only(
        "the source",
        &l.error_log(),
        &[
            " is blocked: ",
            " is unblocked (",
            "; retrying",
            "skipped the damaged journal bytes from ",
            "sending whole what journal damage hid",
        ],
    );
    assert_log_only(
        "the router",
        &r.error_log(),
        &["torn tail", "session with 127.0.0.1:", "closed its session"],
    );
}

/// The finding: damage in the newest (active) journal segment, with valid records after it,
/// kept mirrorfs from ever mounting again ("… is corrupt at offset …"), and `mirror-ctl sync`
/// failed the same way. Now the segment is sealed as it is and appends go on in the next one;
/// the sender skips the damage as in any sealed segment.
#[test]
fn damage_in_the_newest_segment_does_not_keep_mirrorfs_from_mounting() {
    let mut r = Router::start();
    let l = Local::new();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "w", &[]);
    let m = l.mount(&[]);
    let _s = l.sender_with(&["--skip-damage-after", "1s"]);
    r.kill9();
    for i in 0..10 {
        fs::write(l.path(&format!("f{i}")), format!("file {i} ").repeat(500)).unwrap();
    }
    m.unmount();
    let jdir = l.state.join("journal");
    let newest = *mirrorfs::journal::list_segments(&jdir)
        .unwrap()
        .last()
        .unwrap();
    let seg = mirrorfs::journal::segment_path(&jdir, newest);
    let len = fs::metadata(&seg).unwrap().len();
    flip(&seg, len / 2);
    let m = l.mount(&[]);
    assert!(
        m.log_text().contains("sealing the segment as it is"),
        "{}",
        m.log_text()
    );
    fs::write(l.path("after"), b"after the damage").unwrap();
    let out = l.ctl(&["sync", &l.path("f0").to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    r.restart();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
}

/// A journal made anew under a sender that had acknowledged positions in the old one (its
/// segments moved aside by hand): the sender waited for a segment that never came, and new
/// entries were ignored with status ok. It now starts over with a new stream.
#[test]
fn a_journal_made_anew_is_sent_from_its_start() {
    let r = Router::start();
    let l = Local::new();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "w", &[]);
    let m = l.mount(&["--segment-size", "65536"]);
    let s = l.sender();
    for i in 0..20 {
        fs::write(l.path(&format!("f{i}")), vec![b'x'; 20_000]).unwrap();
    }
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    m.unmount();
    drop(s);
    fs::rename(l.state.join("journal"), l.tmp.path().join("journal.aside")).unwrap();
    let _m = l.mount(&[]);
    let _s = l.sender();
    fs::write(l.path("new"), b"in the new journal").unwrap();
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
}
