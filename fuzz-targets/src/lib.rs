//! The bodies of the fuzz targets: each takes arbitrary bytes, feeds them to one decoder of
//! untrusted input and checks what must hold whatever the input (no panic, and a decoded
//! value that encodes back the same way). `fuzz/` runs them under libFuzzer (`cargo fuzz`,
//! see `scripts/fuzz.sh`); `tests/regressions.rs` runs them over every input saved in
//! `fuzz/regressions/` and `fuzz/seeds/`, so a crash once found stays fixed.
//!
//! * [`frame`]: the wire frame decoder (length prefix, CRC, bincode payload, limits) and the
//!   heartbeat datagram decoder.
//! * [`journal_record`]: the journal's record, segment header and index decoders.
//! * [`rt1_record`]: the router's RT1 record decoder.
//! * [`rule`]: the rule pattern, destination, site and delete-suffix parsers, and matching.
//! * [`spool`]: spool files (header, and the whole body as if sealed with the key), and the
//!   `.ack` and `.requests` files that come back.

use mirrorfs::journal::format;
use mirrorfs::rule::{Dest, Pattern, Site};
use mirrorfs::wire::{codec, heartbeat};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/` and `fuzz/regressions/` name them.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("journal_record", journal_record),
    ("rt1_record", rt1_record),
    ("rule", rule),
    ("spool", spool),
];

/// Spool files and the files that come back from a coordinator.
pub fn spool(data: &[u8]) {
    use mirrorfs::wire::spool::{self, Ack, Requests};
    let key = mirrorfs::wire::auth::Key::from_hex(&"ab".repeat(32)).expect("a key");
    let _ = spool::Header::decode(data);
    let _ = spool::open(data, &key);
    // As the body of a sealed file: past the MAC, its decoder sees any structure.
    let sealed = spool::seal_body(data, &key);
    if let Ok(f) = spool::open(&sealed, &key) {
        assert_eq!(f.header.total, sealed.len() as u64);
        assert!(f.entries.len() as u64 * spool::CONTROL_LEN as u64 <= sealed.len() as u64);
    }
    let text = String::from_utf8_lossy(data);
    let _ = Ack::decode(&text, &key);
    let _ = Requests::decode(&text, &key);
}

/// Wire frames and heartbeat datagrams.
pub fn frame(data: &[u8]) {
    // As a stream of handshake frames (the only ones read before authentication).
    let mut r = data;
    for _ in 0..16 {
        if codec::read_frame(&mut r).is_err() {
            break;
        }
    }
    // As a payload whose CRC was checked: what decodes encodes and decodes back to the same
    // message (the bytes may differ: bincode accepts longer forms of the same integer).
    if let Ok(msg) = codec::decode_payload(data) {
        let f = codec::encode_frame(&msg).expect("a decoded message encodes");
        let again = codec::decode_payload(&f[8..]).expect("an encoded message decodes");
        assert_eq!(
            again,
            msg,
            "a decoded {} does not survive a round trip",
            msg.kind()
        );
    }
    let key = mirrorfs::wire::auth::Key::from_hex(&"ab".repeat(32)).expect("a key");
    let _ = heartbeat::decode(data, |_, _| Some(key.clone()));
}

/// Journal records, segment headers and indexes.
pub fn journal_record(data: &[u8]) {
    let _ = format::peek_record_len(data);
    let _ = format::verify_record(data);
    if let Ok((e, used)) = format::decode_record(data) {
        assert!(used <= data.len());
        let again = format::encode_record(&e.as_ref()).expect("a decoded record encodes");
        assert_eq!(
            &again[..],
            &data[..used],
            "re-encoding a decoded record differs"
        );
    }
    let _ = format::SegmentHeader::decode(data);
    let _ = format::decode_index(data);
    let _ = format::find_valid_record(data);
}

/// RT1 records (the current format, re-encoded; the previous one, decoded only).
pub fn rt1_record(data: &[u8]) {
    let _ = mirror_routerd::rtlog::RtRecord::decode_format(data, mirror_routerd::rtlog::FORMAT_V2);
    if let Ok(Some((r, used))) = mirror_routerd::rtlog::RtRecord::decode(data) {
        assert!(used <= data.len());
        let mut again = Vec::new();
        r.encode_into(&mut again);
        assert_eq!(
            again.len(),
            used,
            "re-encoding a decoded RT1 record changes its length"
        );
    }
}

/// Rule patterns and the other parts of a rule, then matching names against a pattern.
pub fn rule(data: &[u8]) {
    let (text, name) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let _ = Dest::parse(text);
    let _ = Site::parse(text);
    let _ = mirrorfs::rule::parse_delete_suffix(text);
    if let Ok(p) = Pattern::parse(text) {
        // What parses is stable: its text parses to the same pattern.
        let again = Pattern::parse(p.as_str()).expect("a parsed pattern parses again");
        assert_eq!(again.as_str(), p.as_str());
        let _ = p.match_file(name);
        let _ = p.match_dir(name);
        let _ = p.glob_matches(name);
    }
}
