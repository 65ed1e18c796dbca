//! A hostile peer that speaks the protocol itself: no hello, garbage, a huge length prefix, an
//! unknown site, a wrong key, a replayed hello, a replayed frame, rules and names that try to
//! leave the root, a symlink planted by one entry and written through by the next, a rename
//! out of the root, frames over the limits, too many connections. Afterwards nothing outside
//! the backup root exists or changed, each refusal is in the router's log, and a legitimate
//! sender is still served.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use mirror_tests::{test_key, tree, wait_converged, wait_until, Local, Router};
use mirrorfs::entry::{AttrChange, Command};
use mirrorfs::journal::Position;
use mirrorfs::wire::auth::{self, Key, Session};
use mirrorfs::wire::{codec, read_sealed, Msg, Part, Role, WireEntry, WireRule, PROTOCOL_VERSION};

const SITE: &str = "hostile";
const RULE: u32 = 77;
const LIMIT: Duration = Duration::from_secs(20);

fn connect(r: &Router) -> TcpStream {
    let s = TcpStream::connect(r.site()).expect("connect to the router");
    s.set_read_timeout(Some(LIMIT)).expect("read timeout");
    s
}

/// Reads until the router answers with an error (returned) or closes the connection (a
/// request for the configuration, which a router may send at any time, is passed over).
fn refusal(s: &mut impl Read, mut mac: Option<&mut auth::FrameMac>) -> Option<String> {
    loop {
        let got = match mac.as_deref_mut() {
            Some(m) => read_sealed(s, m),
            None => codec::read_frame(s),
        };
        return match got {
            Ok(Msg::SendConfig { .. }) => continue,
            Ok(Msg::Error { reason }) => Some(reason),
            Ok(other) => panic!("expected a refusal, got {}", other.kind()),
            Err(_) => None,
        };
    }
}

/// A handshake as [`SITE`] on a new connection: the connection and what the client made of it.
fn handshake(
    r: &Router,
    role: Role,
    key: &Key,
) -> (TcpStream, Result<Session, auth::HandshakeError>) {
    let s = connect(r);
    let res = auth::client(
        &mut BufReader::new(s.try_clone().unwrap()),
        &mut s.try_clone().unwrap(),
        SITE,
        1,
        role,
        key,
    );
    (s, res)
}

/// An authenticated session as `site` with `key` (a hostile peer that holds a key).
struct Peer {
    r: BufReader<TcpStream>,
    w: TcpStream,
    s: Session,
}

impl Peer {
    /// Opens the session; while the router still counts sessions it has ended (their seats
    /// go when their threads end, just after their peers are told), tries again.
    fn open(r: &Router, site: &str, role: Role, key: &Key) -> Peer {
        let deadline = Instant::now() + LIMIT;
        loop {
            let w = connect(r);
            let mut rd = BufReader::new(w.try_clone().expect("clone"));
            let mut w2 = w.try_clone().expect("clone");
            let s = auth::client(&mut rd, &mut w2, site, 1, role, key).expect("handshake");
            let mut p = Peer { r: rd, w, s };
            if role != Role::Source {
                return p;
            }
            match p.recv() {
                Ok(Msg::Welcome { .. }) => return p,
                Ok(Msg::Error { reason })
                    if reason.contains("sessions open (limit)") && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => panic!("expected welcome, got {other:?}"),
            }
        }
    }

    fn frame(&mut self, m: &Msg) -> Vec<u8> {
        codec::encode_sealed(m, &mut self.s.send).expect("encode")
    }

    fn send(&mut self, m: &Msg) {
        let f = self.frame(m);
        self.w.write_all(&f).expect("send");
    }

    /// The next message, passing over requests for the configuration (a router sends one
    /// when it has none of the source).
    fn recv(&mut self) -> Result<Msg, mirrorfs::wire::WireError> {
        loop {
            match read_sealed(&mut self.r, &mut self.s.recv)? {
                // Notices come when the router process refuses an entry of an earlier batch,
                // whatever this peer is waiting for.
                Msg::SendConfig { .. } | Msg::Notice { .. } => continue,
                m => return Ok(m),
            }
        }
    }

    /// Sends the configuration, then entries; waits for the router to store them.
    fn entries(&mut self, entries: Vec<WireEntry>) {
        self.send(&Msg::Config {
            seq: 1,
            version: 1,
            rules: vec![rule("d")],
        });
        match self.recv() {
            Ok(Msg::ConfigOk { version: 1 }) => {}
            other => panic!("expected configuration-ok, got {other:?}"),
        }
        self.send(&Msg::Entries {
            seq: 2,
            config_version: 1,
            entries,
        });
        match self.recv() {
            Ok(Msg::Ack { frames: 1, .. }) => {}
            other => panic!("expected an ack, got {other:?}"),
        }
    }
}

fn rule(dest: &str) -> WireRule {
    WireRule {
        crc: RULE,
        pattern: "/p/".into(),
        dest: dest.into(),
        attrs: true,
        delete_suffix: None,
    }
}

fn entry(n: u64, command: Command, name: &str, aux: &str, data: &[u8]) -> WireEntry {
    WireEntry {
        pos: Position::new(1, 4096 + n * 64),
        part: Part::Whole,
        command,
        rule_crc: RULE,
        name: name.as_bytes().to_vec(),
        aux: aux.as_bytes().to_vec(),
        offset: 0,
        size: data.len() as u64,
        time_ns: 0,
        data: data.to_vec(),
    }
}

/// A create of `name` just before entry `n`.
fn created(n: u64, name: &str) -> WireEntry {
    WireEntry {
        pos: Position::new(1, 4096 + n * 64 - 32),
        offset: u64::from(libc::S_IFREG | 0o644),
        ..entry(n, Command::Create, name, "", b"")
    }
}

/// Waits until the router's error log holds every one of `needles`.
fn wait_logged(r: &Router, needles: &[&str]) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let log = r.error_log();
        let missing: Vec<_> = needles.iter().filter(|n| !log.contains(**n)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the router did not log {missing:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn outside_state(r: &Router) -> std::collections::BTreeMap<String, String> {
    let mut t = tree(r.tmp.path());
    t.retain(|k, _| !k.starts_with("root") && !k.starts_with("state"));
    let victim = r.tmp.path().join("outside/victim");
    let mode = std::fs::metadata(&victim).map_or(0, |m| m.permissions().mode());
    t.insert("victim mode".into(), format!("{mode:o}"));
    t
}

#[test]
fn hostile_peers_write_nothing_outside_the_root_and_are_refused_in_the_log() {
    let r = Router::start_args(
        None,
        &["--max-sessions-per-site", "2", "--max-handshakes", "3"],
    );
    r.trust(SITE);
    let key = test_key();
    let outside = r.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"keep me").unwrap();
    std::fs::set_permissions(
        outside.join("victim"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let before = outside_state(&r);
    let pwned = format!("pwned-{}", std::process::id());

    // No hello: entries first.
    let mut s = connect(&r);
    s.write_all(
        &codec::encode_frame(&Msg::Entries {
            seq: 1,
            config_version: 1,
            entries: vec![entry(0, Command::Write, "/p/x", "", b"x")],
        })
        .unwrap(),
    )
    .unwrap();
    let why = refusal(&mut s, None);
    assert!(
        why.as_deref().is_some_and(|w| w.contains("expected hello")),
        "{why:?}"
    );

    // Garbage, and a huge length prefix: the connection is closed, nothing is allocated.
    let mut s = connect(&r);
    s.write_all(&[0x5a; 64]).unwrap();
    assert_eq!(refusal(&mut s, None), None);
    let mut s = connect(&r);
    s.write_all(&[0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0]).unwrap();
    assert_eq!(refusal(&mut s, None), None);

    // An unknown site, and a known site with the wrong key.
    let hello = |site: &str| Msg::Hello {
        protocol: PROTOCOL_VERSION,
        site: site.into(),
        stream: 1,
        role: Role::Source,
        nonce: vec![7; 32],
    };
    let mut s = connect(&r);
    s.write_all(&codec::encode_frame(&hello("nobody")).unwrap())
        .unwrap();
    let why = refusal(&mut s, None).unwrap_or_default();
    assert!(why.contains("site nobody has no key"), "{why}");
    let mut s = connect(&r);
    s.write_all(&codec::encode_frame(&hello(SITE)).unwrap())
        .unwrap();
    assert!(matches!(
        codec::read_frame(&mut s),
        Ok(Msg::Challenge { .. })
    ));
    s.write_all(&codec::encode_frame(&Msg::Auth { proof: vec![1; 32] }).unwrap())
        .unwrap();
    let why = refusal(&mut s, None).unwrap_or_default();
    assert!(why.contains("wrong key"), "{why}");
    // Our own client refuses a router that does not hold the key.
    let (_, res) = handshake(&r, Role::Source, &Key::generate().unwrap());
    assert!(res.is_err());

    // A replayed hello: the bytes of a legitimate handshake, sent again.
    let recorded = {
        struct Tee(TcpStream, Vec<u8>);
        impl Write for Tee {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.1.extend_from_slice(b);
                self.0.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.0.flush()
            }
        }
        let s = connect(&r);
        let mut tee = Tee(s.try_clone().unwrap(), Vec::new());
        auth::client(
            &mut BufReader::new(s),
            &mut tee,
            SITE,
            1,
            Role::Source,
            &key,
        )
        .expect("a legitimate handshake");
        tee.1
    };
    let mut s = connect(&r);
    s.write_all(&recorded).unwrap();
    assert!(matches!(
        codec::read_frame(&mut s),
        Ok(Msg::Challenge { .. })
    ));
    let why = refusal(&mut s, None).unwrap_or_default();
    assert!(why.contains("wrong key"), "replayed hello: {why}");

    // Rules that name a destination outside the root.
    for dest in ["../escape", "/etc"] {
        let mut p = Peer::open(&r, SITE, Role::Source, &key);
        p.send(&Msg::Config {
            seq: 1,
            version: 1,
            rules: vec![rule(dest)],
        });
        let why = refusal(&mut p.r, Some(&mut p.s.recv)).unwrap_or_default();
        assert!(why.contains(dest), "{dest}: {why}");
    }

    // Names that try to leave the root, and a symlink planted and then written through.
    let mut p = Peer::open(&r, SITE, Role::Source, &key);
    let outside_s = outside.to_str().unwrap();
    let victim_s = format!("{outside_s}/victim");
    let chmod = AttrChange {
        mode: Some(0o777),
        ..Default::default()
    }
    .encode();
    let up = format!("/p/../../{pwned}");
    let abs = format!("/etc/{pwned}");
    let up2 = format!("/p/a/../../{pwned}");
    let through = format!("/p/out/{pwned}");
    let hostile = vec![
        entry(1, Command::Write, &up, "", b"evil"),
        entry(2, Command::Write, &abs, "", b"evil"),
        entry(3, Command::Write, &up2, "", b"evil"),
        entry(4, Command::Symlink, "/p/out", outside_s, b""),
        entry(5, Command::Write, &through, "", b"evil"),
        entry(6, Command::Symlink, "/p/victim", &victim_s, b""),
        entry(7, Command::Write, "/p/victim", "", b"evil"),
        entry(8, Command::Truncate, "/p/victim", "", b""),
        entry(9, Command::SetAttr, "/p/victim", "", &chmod),
        entry(10, Command::Rename, "/p/victim", &abs, b""),
        // (A file the backup lacks is created first: a change alone would ask for a copy.)
        created(11, "/p/ok.txt"),
        entry(11, Command::Write, "/p/ok.txt", "", b"fine"),
        entry(12, Command::Rename, "/p/ok.txt", "/p/out/moved", b""),
        entry(13, Command::Delete, "/p/out/victim", "", b""),
        entry(14, Command::Mkdir, "/p/out/newdir", "", b""),
        entry(15, Command::Link, "/p/ok.txt", "/p/out/hard", b""),
        entry(16, Command::Delete, "/p/out", "", b""),
        created(17, "/p/z.txt"),
        entry(17, Command::Write, "/p/z.txt", "", b"zzzz"),
        // A zero range of 2^64 bytes stays within the file.
        WireEntry {
            offset: 2,
            size: u64::MAX,
            ..entry(18, Command::Zero, "/p/z.txt", "", b"")
        },
        WireEntry {
            offset: u64::MAX - 1,
            ..entry(19, Command::Write, "/p/far.txt", "", b"far")
        },
        WireEntry {
            size: u64::MAX,
            ..entry(20, Command::Truncate, "/p/z.txt", "", b"")
        },
    ];
    p.entries(hostile);
    wait_logged(
        &r,
        &[
            &format!("refused write of {up} from {SITE}"),
            &format!("refused write of {abs} from {SITE}"),
            &format!("refused write of {up2} from {SITE}"),
            &format!("refused write of {through} from {SITE}"),
            &format!("refused write of /p/victim from {SITE}"),
            &format!("refused truncate of /p/victim from {SITE}"),
            &format!("refused rename of /p/victim from {SITE}"),
            &format!("refused rename of /p/ok.txt from {SITE}"),
            &format!("refused delete of /p/out/victim from {SITE}"),
            &format!("refused mkdir of /p/out/newdir from {SITE}"),
            &format!("refused link of /p/ok.txt from {SITE}"),
            &format!("refused write of /p/far.txt from {SITE}: offset 18446744073709551614"),
            &format!(
                "refused truncate of /p/z.txt from {SITE}: offset 0 or size 18446744073709551615"
            ),
        ],
    );
    // What is legitimate went through: the file, and the removal of the planted link.
    wait_until(LIMIT, "ok.txt applied and the link removed", || {
        std::fs::read(r.path("hostile/d/ok.txt")).is_ok_and(|d| d == b"fine")
            && std::fs::symlink_metadata(r.path("hostile/d/out")).is_err()
            && std::fs::read(r.path("hostile/d/z.txt")).is_ok_and(|d| d == b"zz\0\0")
    });
    // A replayed frame inside the session: refused, the session ends.
    let f = p.frame(&Msg::Heartbeat);
    p.w.write_all(&f).unwrap();
    p.w.write_all(&f).unwrap();
    wait_logged(&r, &["fails authentication"]);

    // Frames over the limits.
    let mut p = Peer::open(&r, SITE, Role::Source, &key);
    let many: Vec<WireEntry> = (0..5000)
        .map(|i| entry(100 + i, Command::Truncate, "/p/t", "", b""))
        .collect();
    p.send(&Msg::Entries {
        seq: 1,
        config_version: 1,
        entries: many,
    });
    let mut p = Peer::open(&r, SITE, Role::Source, &key);
    // A name 3 bytes past the limit (65,535 bytes, what a journal entry takes).
    let max = mirrorfs::wire::msg::MAX_NAME_LEN;
    let long = format!("/p/{}", "n".repeat(max));
    p.send(&Msg::Entries {
        seq: 1,
        config_version: 1,
        entries: vec![entry(200, Command::Write, &long, "", b"x")],
    });
    let too_long = format!(
        "entry name length of {} exceeds the limit of {max}",
        max + 3
    );
    wait_logged(
        &r,
        &[
            "entries in a frame of 5000 exceeds the limit of 4096",
            &too_long,
        ],
    );

    // Sessions per site (2 here) and connections still authenticating (3 here).
    // (Source sessions: their welcome says the router has counted them.)
    let held: Vec<Peer> = (0..2)
        .map(|_| Peer::open(&r, SITE, Role::Source, &key))
        .collect();
    let (s, res) = handshake(&r, Role::Validate, &key);
    let mut third = res.expect("the handshake itself succeeds");
    let why = refusal(&mut BufReader::new(s), Some(&mut third.recv)).unwrap_or_default();
    assert!(why.contains("already has 2 sessions open"), "{why}");
    drop(held);
    let idle: Vec<TcpStream> = (0..3).map(|_| connect(&r)).collect();
    wait_until(
        LIMIT,
        "a connection over the handshake limit closed",
        || {
            let mut s = connect(&r);
            let mut b = [0u8; 1];
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            matches!(s.read(&mut b), Ok(0))
        },
    );
    drop(idle);
    wait_logged(
        &r,
        &[
            "refused 127.0.0.1:",
            "3 connections are already authenticating",
            "site nobody has no key",
            "authentication failed for site hostile: wrong key",
            "expected hello, got entries",
            "exceeds the maximum of 4096 bytes",
            "contains '..'",
            "is absolute",
        ],
    );

    // Nothing outside the root changed; nothing named pwned appeared anywhere we can look.
    assert_eq!(outside_state(&r), before);
    for dir in [Path::new("/etc"), Path::new("/tmp"), Path::new("/")] {
        assert!(!dir.join(&pwned).exists(), "{}", dir.join(&pwned).display());
    }
    assert!(!r.tmp.path().join(&pwned).exists());

    // And a legitimate source is still served.
    let l = Local::new();
    l.add_rule_validated(&format!("{}/", l.dir.display()), &r.site(), "legit", &[]);
    let _m = l.mount(&[]);
    let _s = l.sender();
    std::fs::write(l.path("hello.txt"), b"still served").unwrap();
    wait_converged(&l.dir, &r.path("legit"), LIMIT);
    l.assert_no_errors();
    // Every line of the router's error log is one of the refusals above.
    let log = r.error_log();
    let unexpected: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains(": refused ") && !l.contains(": session with 127.0.0.1:"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected error-log lines: {unexpected:#?}"
    );
}

#[test]
fn a_source_the_router_has_no_key_for_is_blocked_with_the_reason_until_the_key_is_added() {
    let r = Router::start();
    let l = Local::new();
    l.set_site_id("stranger");
    l.add_rule(&format!("{}/", l.dir.display()), &r.site(), "s", &[]);
    let _m = l.mount(&[]);
    let _s = l.sender();
    std::fs::write(l.path("a.txt"), b"waits for the key").unwrap();
    let site = r.site();
    let state = |l: &Local| {
        l.status()
            .as_array()
            .and_then(|a| a.iter().find(|s| s["site"] == site.as_str()).cloned())
            .unwrap_or_default()
    };
    wait_until(LIMIT, "the site to be blocked for the missing key", || {
        let st = state(&l);
        !st["blocked"].is_null()
            && st["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("site stranger has no key on this router"))
    });
    assert!(!r.path("stranger/s/a.txt").exists());
    assert!(r.error_log().contains("site stranger has no key"));
    // The router takes a new key without a restart; the source is tried again on request.
    r.trust("stranger");
    let out = l.ctl(&["unblock"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_converged(&l.dir, &r.path("stranger/s"), LIMIT);
}
