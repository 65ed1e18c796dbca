//! N connections per site (issue 15 item 6, seeds/003 claims 9-18): one stream striped across
//! N authenticated connections and put back in order at the router. One connection reset (an
//! nft rule answering its source port with TCP resets) in the middle of a large random
//! workload; kill -9 of the sender, the router or both with N = 4; `mirror-ctl site set` picked
//! up by a running sender. Each ends with the backup equal to the source, file by file.

use std::fs;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use mirror_tests::{assert_log_only, wait_converged, wait_until, Local, Router};

use crate::mirror_ops::mirrored_with;
use crate::mirror_workload::{Rng, Workload};
use crate::outage_faults::run;

const CONVERGE: Duration = Duration::from_secs(60);
const NOTICE: Duration = Duration::from_secs(20);

/// What a sender may log when one of its connections, or its router, goes.
const SENDER_FAULTS: &[&str] = &[
    "; retrying",
    " is blocked: ",
    // A sender restarted while its site was blocked says so as it starts.
    " is blocked since ",
    " is unblocked (",
];
/// What a router may log when a connection or a source is killed.
const ROUTER_FAULTS: &[&str] = &["torn tail", "session with 127.0.0.1:", "closed its session"];

/// The local ports of the sender's established connections to the router's `port`
/// (`/proc/net/tcp`: the sockets whose remote end is the router).
fn sender_ports(port: u16) -> Vec<u16> {
    let text = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, remote, state) = (f.get(1)?, f.get(2)?, f.get(3)?);
            let rport = u16::from_str_radix(remote.rsplit(':').next()?, 16).ok()?;
            let lport = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (rport == port && *state == "01").then_some(lport)
        })
        .collect()
}

/// A fault on one connection (by the sender's port) while it lives; the others are
/// untouched.
struct Fault {
    table: String,
}

#[derive(Clone, Copy, Debug)]
enum How {
    /// The sender's packets are answered with a TCP reset: the connection dies at once (at
    /// the router when it next sends and the sender's kernel resets it).
    Reset,
    /// Every packet both ways is dropped: the connection goes silent.
    Silence,
}

impl Fault {
    fn new(port: u16, how: How) -> Fault {
        let table = format!("mirror_fault_{port}");
        let rules = match how {
            How::Reset => format!("    iif lo tcp sport {port} reject with tcp reset\n"),
            How::Silence => {
                format!("    iif lo tcp sport {port} drop\n    iif lo tcp dport {port} drop\n")
            }
        };
        let script = format!(
            "table inet {table} {{\n  chain c {{\n    type filter hook input priority 0; policy accept;\n{rules}  }}\n}}\n"
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), script).unwrap();
        run("nft", &["-f", file.path().to_str().unwrap()]);
        Fault { table }
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// Appends record `i` to the ledger: a record applied twice, or out of order, shows.
fn append(l: &Local, i: usize) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(l.path("ledger"))
        .unwrap();
    writeln!(f, "record {i:06} {}", "x".repeat(i % 97)).unwrap();
}

/// Checks the backup's ledger holds each record once, in order, and all `n` of them.
fn assert_ledger(r: &Router, n: usize) {
    let text = fs::read_to_string(r.path("w/ledger")).unwrap();
    let got: Vec<usize> = text
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    let want: Vec<usize> = (0..n).collect();
    assert_eq!(got, want, "the backup's ledger");
}

/// Large files: frames of a few MiB each, striped across the connections.
fn big_files(l: &Local, rng: &mut Rng, n: usize, size: usize) {
    fs::create_dir_all(l.path("big")).unwrap();
    for i in 0..n {
        let b = rng.next() as u8;
        let data: Vec<u8> = (0..size).map(|k| b.wrapping_add((k / 13) as u8)).collect();
        fs::write(l.path(&format!("big/f{i}")), data).unwrap();
    }
}

#[test]
fn four_connections_one_reset_mid_workload_loses_and_repeats_nothing() {
    one_connection_fails_mid_workload(How::Reset, 0x5eed_0601);
}

#[test]
fn four_connections_one_silent_mid_workload_loses_and_repeats_nothing() {
    one_connection_fails_mid_workload(How::Silence, 0x5eed_0604);
}

/// N = 4 and one connection failing `how` in the middle of a large random workload: it is
/// replaced on its own while the others carry on, and the backup ends equal to the source,
/// the ledger holding each record once, in order.
fn one_connection_fails_mid_workload(how: How, seed: u64) {
    let r = Router::start();
    let (l, m, s) = mirrored_with(&r, "w", &[], &["--connections", "4"]);
    wait_until(NOTICE, "4 connections to the router", || {
        sender_ports(r.port).len() == 4
    });
    let mut w = Workload::new(&l.dir, seed, 60);
    let mut rng = Rng::new(0x0c0_0601);
    let mut records = 0;
    for _ in 0..300 {
        w.step();
        append(&l, records);
        records += 1;
    }
    big_files(&l, &mut rng, 12, 3 << 20);
    // One connection dies mid-stream (the sender's writes to it and the router's are reset).
    let victim = sender_ports(r.port)[1];
    let fault = Fault::new(victim, how);
    for _ in 0..600 {
        w.step();
        append(&l, records);
        records += 1;
    }
    big_files(&l, &mut rng, 12, 2 << 20);
    wait_until(NOTICE, "the connection to be replaced", || {
        let p = sender_ports(r.port);
        p.len() == 4 && !p.contains(&victim)
    });
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    drop(fault);
    assert_ledger(&r, records);
    let log = s.log_text();
    assert!(log.contains("joining it again while"), "{how:?}: {log}");
    if matches!(how, How::Silence) {
        assert!(log.contains("nothing heard on connection"), "{log}");
    }
    // The session carried on: it never had to start again.
    assert_eq!(log.matches("session on 4 connections").count(), 1, "{log}");
    let again = log
        .lines()
        .find(|l| l.contains("sent again on the others"))
        .unwrap_or("nothing was in flight on it");
    eprintln!(
        "{how:?}: operations {}, ledger records {records}, files compared {n}, differences 0; {again}",
        w.ops
    );
    crate::router_faults::assert_no_leaked_sessions(&r, 4);
    drop(m);
    assert_log_only("the source", &l.error_log(), SENDER_FAULTS);
    assert_log_only("the router", &r.error_log(), ROUTER_FAULTS);
}

#[test]
fn kill9_of_either_daemon_with_four_connections_converges() {
    let mut r = Router::start();
    let args = ["--connections", "4"];
    let (l, m, mut s) = mirrored_with(&r, "w", &[], &args);
    let mut w = Workload::new(&l.dir, 0x5eed_0602, 40);
    let mut rng = Rng::new(0x0c0_0602);
    let mut records = 0;
    let steps = |w: &mut Workload, rng: &mut Rng, records: &mut usize| {
        for _ in 0..(20 + rng.below(150)) {
            w.step();
            append(&l, *records);
            *records += 1;
        }
    };
    let mut kinds = [0usize; 3];
    for round in 0..10 {
        steps(&mut w, &mut rng, &mut records);
        if round % 3 == 0 {
            big_files(&l, &mut rng, 4, 1 << 20);
        }
        let kind = rng.below(3) as usize;
        kinds[kind] += 1;
        match kind {
            0 => {
                s.kill9();
                steps(&mut w, &mut rng, &mut records);
                s = l.sender_with(&args);
            }
            1 => {
                r.kill9();
                steps(&mut w, &mut rng, &mut records);
                r.restart();
            }
            _ => {
                s.kill9();
                r.kill9();
                steps(&mut w, &mut rng, &mut records);
                r.restart();
                s = l.sender_with(&args);
            }
        }
    }
    let n = wait_converged(&l.dir, &r.path("w"), CONVERGE);
    assert_ledger(&r, records);
    eprintln!(
        "kill -9 of the sender {}, of the router {}, of both {}; operations {}, files compared {n}, differences 0",
        kinds[0], kinds[1], kinds[2], w.ops
    );
    crate::router_faults::assert_no_leaked_sessions(&r, 4);
    drop(s);
    drop(m);
    assert_log_only("the source", &l.error_log(), SENDER_FAULTS);
    assert_log_only("the router", &r.error_log(), ROUTER_FAULTS);
}

#[test]
fn site_set_connections_is_followed_by_a_running_sender() {
    let r = Router::start();
    let site = r.site();
    let (l, m, s) = mirrored_with(&r, "w", &[], &[]);
    assert_eq!(sender_ports(r.port).len(), 1);
    let out = l.ctl(&["site", "set", &site, "--connections", "3"]);
    assert!(out.status.success(), "{out:?}");
    wait_until(NOTICE, "3 connections to the router", || {
        sender_ports(r.port).len() == 3
    });
    let listed = String::from_utf8_lossy(&l.ctl(&["site", "list", "--json"]).stdout).into_owned();
    assert!(
        listed.contains(&format!("\"site\":\"{site}\"")) && listed.contains("\"connections\":3"),
        "{listed}"
    );
    let mut w = Workload::new(&l.dir, 0x5eed_0603, 30);
    for i in 0..200 {
        w.step();
        append(&l, i);
    }
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    assert_ledger(&r, 200);
    // Back to the sender's default (one connection).
    let out = l.ctl(&["site", "set", &site, "--connections", "default"]);
    assert!(out.status.success(), "{out:?}");
    wait_until(NOTICE, "1 connection to the router", || {
        sender_ports(r.port).len() == 1
    });
    for i in 200..300 {
        w.step();
        append(&l, i);
    }
    wait_converged(&l.dir, &r.path("w"), CONVERGE);
    assert_ledger(&r, 300);
    let bad = l.ctl(&["site", "set", &site, "--connections", "0"]);
    assert!(!bad.status.success());
    let log = s.log_text();
    assert!(log.contains("connections set to 3 (were 1)"), "{log}");
    crate::router_faults::assert_no_leaked_sessions(&r, 1);
    drop(m);
    assert_log_only("the source", &l.error_log(), SENDER_FAULTS);
    assert_log_only("the router", &r.error_log(), ROUTER_FAULTS);
}
