//! Framing and encoding: every message crosses the wire as `len u32 LE | crc32 u32 LE |
//! payload`, followed, once the session is authenticated, by the payload's 32-byte tag (see
//! [`super::auth`]). The payload is the bincode 2 encoding of a [`Msg`]; no other module calls
//! bincode, so the encoding can change here alone. Every decoded message is checked against
//! the protocol's limits ([`Msg::check_limits`]) before anyone uses it.

use std::io::{self, Read, Write};

use super::auth::{FrameMac, TAG_LEN};
use super::msg::Msg;

/// The largest payload accepted or sent (entries are at most a few MiB per frame).
pub const MAX_FRAME: usize = 64 << 20;

/// The largest payload accepted before the peer is authenticated (hello, challenge, auth).
pub const MAX_HANDSHAKE_FRAME: usize = 4 << 10;

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection between frames.
    #[error("the peer closed the connection")]
    Closed,
    /// A length prefix above [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload's CRC does not match.
    #[error("frame CRC mismatch (expected {expected:#010x}, got {actual:#010x})")]
    BadCrc {
        /// The CRC in the frame.
        expected: u32,
        /// The CRC of the bytes received.
        actual: u32,
    },
    /// The payload does not decode as a message.
    #[error("malformed frame: {0}")]
    Decode(String),
    /// The message decodes but breaks a limit of the protocol.
    #[error("frame over a limit: {0}")]
    Limit(String),
    /// The frame's tag is not the session's (forged, replayed or out of order).
    #[error("frame {seq} of the session fails authentication")]
    BadMac {
        /// The frame's sequence number in its direction.
        seq: u64,
    },
    /// The message could not be encoded (a bug, or a value over the limits).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_limit::<MAX_FRAME>()
}

/// Encodes `msg` as one frame (header and payload), for the handshake.
pub fn encode_frame(msg: &Msg) -> Result<Vec<u8>, WireError> {
    encode(msg, None)
}

/// Encodes `msg` as one frame of an authenticated session: header, payload, tag.
pub fn encode_sealed(msg: &Msg, mac: &mut FrameMac) -> Result<Vec<u8>, WireError> {
    encode(msg, Some(mac))
}

fn encode(msg: &Msg, mac: Option<&mut FrameMac>) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0u8; 8];
    bincode::serde::encode_into_std_write(msg, &mut out, config())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    let len = out.len() - 8;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    let crc = crc32fast::hash(&out[8..]);
    out[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    if let Some(mac) = mac {
        let tag = mac.seal(&out[8..]);
        out.extend_from_slice(&tag);
    }
    Ok(out)
}

/// Decodes a payload (the bytes after the header) whose CRC was checked.
pub fn decode_payload(payload: &[u8]) -> Result<Msg, WireError> {
    let (msg, used): (Msg, usize) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| WireError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(WireError::Decode(format!(
            "{} bytes left over after the message",
            payload.len() - used
        )));
    }
    msg.check_limits().map_err(WireError::Limit)?;
    Ok(msg)
}

/// Writes `msg` as one frame (handshake).
pub fn write_frame(w: &mut (impl Write + ?Sized), msg: &Msg) -> Result<(), WireError> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame)?;
    Ok(())
}

/// Reads one frame (handshake); [`WireError::Closed`] when the stream ends cleanly before a
/// frame.
pub fn read_frame(r: &mut impl Read) -> Result<Msg, WireError> {
    read(r, None, MAX_HANDSHAKE_FRAME)
}

/// Reads one frame of an authenticated session and checks its tag.
pub fn read_sealed(r: &mut impl Read, mac: &mut FrameMac) -> Result<Msg, WireError> {
    read(r, Some(mac), MAX_FRAME)
}

fn read(r: &mut impl Read, mac: Option<&mut FrameMac>, max: usize) -> Result<Msg, WireError> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Err(WireError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let expected = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    let actual = crc32fast::hash(&payload);
    if actual != expected {
        return Err(WireError::BadCrc { expected, actual });
    }
    if let Some(mac) = mac {
        let mut tag = [0u8; TAG_LEN];
        r.read_exact(&mut tag)?;
        mac.open(&payload, &tag)?;
    }
    decode_payload(&payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Command;
    use crate::journal::Position;
    use crate::wire::msg::{Part, WireEntry};

    fn sample() -> Msg {
        Msg::Entries {
            seq: 1,
            config_version: 7,
            entries: vec![WireEntry {
                pos: Position::new(3, 4096),
                part: Part::Whole,
                command: Command::Write,
                rule_crc: 0xdead_beef,
                name: b"/p/a/x".to_vec(),
                aux: Vec::new(),
                offset: 12,
                size: 3,
                time_ns: 1,
                data: b"abc".to_vec(),
            }],
        }
    }

    #[test]
    fn round_trip() {
        let f = encode_frame(&sample()).unwrap();
        let back = read_frame(&mut &f[..]).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let f = encode_frame(&sample()).unwrap();
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x10;
            assert!(read_frame(&mut &g[..]).is_err(), "byte {i}");
        }
    }

    #[test]
    fn huge_length_prefix_is_refused_without_allocating() {
        let mut f = vec![0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0];
        f.extend_from_slice(&[0; 16]);
        assert!(matches!(
            read_frame(&mut &f[..]),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn sealed_frames_are_checked_in_order_and_refused_when_changed() {
        let (mut tx, mut rx) = (FrameMac::new([9; 32]), FrameMac::new([9; 32]));
        let a = encode_sealed(&sample(), &mut tx).unwrap();
        let b = encode_sealed(&Msg::Heartbeat, &mut tx).unwrap();
        // Out of order: the second frame first.
        assert!(matches!(
            read_sealed(&mut &b[..], &mut rx.clone()),
            Err(WireError::BadMac { seq: 0 })
        ));
        for i in 8..a.len() {
            let mut c = a.clone();
            c[i] ^= 1;
            assert!(
                read_sealed(&mut &c[..], &mut rx.clone()).is_err(),
                "byte {i}"
            );
        }
        assert_eq!(read_sealed(&mut &a[..], &mut rx).unwrap(), sample());
        assert_eq!(read_sealed(&mut &b[..], &mut rx).unwrap(), Msg::Heartbeat);
        // Replayed: refused.
        assert!(read_sealed(&mut &a[..], &mut rx).is_err());
        // A handshake reader takes no large frame.
        let big = encode_frame(&Msg::Error {
            reason: "x".repeat(MAX_HANDSHAKE_FRAME),
        })
        .unwrap();
        assert!(matches!(
            read_frame(&mut &big[..]),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn clean_close_and_truncation() {
        assert!(matches!(read_frame(&mut &[][..]), Err(WireError::Closed)));
        let f = encode_frame(&sample()).unwrap();
        assert!(matches!(
            read_frame(&mut &f[..f.len() - 1]),
            Err(WireError::Io(_))
        ));
    }
}
