//! Writes the starting corpus of every fuzz target to `fuzz/seeds/TARGET/`: valid encodings
//! of each kind of input, so that libFuzzer starts from the formats instead of from nothing.
//! Run once after a format change: `cargo run -p mirror-fuzz-targets --example make_seeds`.

use std::path::Path;

use mirror_routerd::rtlog::RtRecord;
use mirrorfs::entry::{Command, EntryRef};
use mirrorfs::journal::{format, Position};
use mirrorfs::wire::{codec, heartbeat, Msg, Part, Role, WireEntry, WireRule};

fn entry(command: Command, name: &[u8], aux: &[u8], data: &[u8]) -> WireEntry {
    WireEntry {
        pos: Position::new(1, 4096),
        part: Part::Whole,
        command,
        rule_crc: 0x1234_5678,
        name: name.to_vec(),
        aux: aux.to_vec(),
        offset: 7,
        size: data.len() as u64,
        time_ns: 1_700_000_000_000_000_000,
        data: data.to_vec(),
    }
}

fn main() -> std::io::Result<()> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let write = |target: &str, n: usize, bytes: &[u8]| -> std::io::Result<()> {
        let dir = base.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{n:02}")), bytes)
    };
    let entries = vec![
        entry(Command::Write, b"/p/a/x.txt", b"", b"hello"),
        entry(Command::Rename, b"/p/a/x.txt", b"/p/a/y.txt", b""),
        entry(Command::Symlink, b"/p/a/l", b"../../etc/passwd", b""),
        entry(Command::Delete, b"/p/a/../../x", b"", b""),
    ];
    let msgs = vec![
        Msg::Hello {
            protocol: 4,
            site: "source-a".into(),
            stream: 9,
            role: Role::Source,
            nonce: vec![1; 32],
        },
        Msg::Challenge {
            nonce: vec![2; 32],
            proof: vec![3; 32],
        },
        Msg::Auth { proof: vec![4; 32] },
        Msg::Entries {
            seq: 1,
            config_version: 3,
            entries: entries.clone(),
        },
        Msg::Config {
            seq: 2,
            version: 3,
            rules: vec![WireRule {
                crc: 1,
                pattern: "/p/a/*.doc/".into(),
                dest: "docs".into(),
                attrs: true,
                delete_suffix: Some(".deleted".into()),
            }],
        },
        Msg::Ack {
            frames: 2,
            upto: Position::new(1, 4096),
        },
        Msg::Validate {
            dest: "d/e".into(),
            dir: true,
        },
        Msg::Error {
            reason: "no".into(),
        },
    ];
    let mut n = 0;
    for m in &msgs {
        let f = codec::encode_frame(m).expect("encode");
        write("frame", n, &f)?;
        write("frame", n + 1, &f[8..])?;
        n += 2;
    }
    let key = mirrorfs::wire::auth::Key::from_hex(&"ab".repeat(32)).expect("key");
    write(
        "frame",
        n,
        &heartbeat::encode(heartbeat::Beat::Source, "source-a", 5, &key),
    )?;
    for (i, e) in entries.iter().enumerate() {
        let r = EntryRef {
            command: e.command,
            rule_crc: e.rule_crc,
            name: &e.name,
            aux: &e.aux,
            offset: e.offset,
            size: e.size,
            time_ns: e.time_ns,
            data: &e.data,
        };
        write(
            "journal_record",
            i,
            &format::encode_record(&r).expect("record"),
        )?;
        let mut rt = Vec::new();
        RtRecord::from_wire("source-a", e, 4096).encode_into(&mut rt);
        write("rt1_record", i, &rt)?;
    }
    write(
        "journal_record",
        10,
        &format::SegmentHeader::new(3).encode(),
    )?;
    write(
        "journal_record",
        11,
        &format::encode_index(&[4096, 5000, 9000]),
    )?;
    for (i, r) in [
        "/p/a/x.doc\n/p/a/x.doc",
        "/p/a/*.doc\n/p/a/y.doc",
        "/p/a/\n/p/a/b/c",
        "/p/a/*.doc/\n/p/a/b/z.doc",
        "/p/x\\[1\\].doc\n/p/x[1].doc",
        "/home/*/x\n",
        "d/e/f\n",
        "backup.lan:7070\n",
        "[::1]:7070\n",
    ]
    .iter()
    .enumerate()
    {
        write("rule", i, r.as_bytes())?;
    }
    println!("seeds written under {}", base.display());
    Ok(())
}
