//! One authenticated connection carries the whole stream: connect, hello and welcome, a
//! reader thread that turns the router's frames into [`Event`]s, frames out sealed with the
//! session's MAC. When the connection fails, the session ends.

use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream};

use crossbeam_channel::Sender;
use mirrorfs::wire::auth::{self, FrameMac};
use mirrorfs::wire::{codec, read_sealed, Msg, Role, WireError, PROTOCOL_VERSION};

use super::{Event, Opened, Transport};
use crate::link::LinkError;
use crate::shared::Shared;

/// The sending half of a session: every frame tagged with the session's MAC.
struct Single {
    w: TcpStream,
    mac: FrameMac,
    /// The number of the next message of the stream.
    seq: u64,
}

impl Transport for Single {
    fn send(&mut self, mut msg: Msg) -> Result<(), LinkError> {
        super::number(&mut msg, &mut self.seq);
        let frame = codec::encode_sealed(&msg, &mut self.mac)?;
        self.w.write_all(&frame).map_err(WireError::Io)?;
        Ok(())
    }

    fn close(&mut self) {
        let _ = self.w.shutdown(Shutdown::Both);
    }
}

impl Drop for Single {
    fn drop(&mut self) {
        self.close();
    }
}

/// Connects to `site`, authenticates and reads the welcome; the router's later messages go
/// to `events`.
pub fn open(shared: &Shared, site: &str, events: Sender<Event>) -> Result<Opened, LinkError> {
    let super::Dialed {
        stream,
        w,
        mut r,
        session: auth::Session { send, mut recv },
    } = super::dial(shared, site, Role::Source)?;
    let out = Single {
        w,
        mac: send,
        seq: 1,
    };
    let received = match read_sealed(&mut r, &mut recv)? {
        Msg::Welcome {
            protocol, received, ..
        } => {
            if protocol != PROTOCOL_VERSION {
                return Err(LinkError::Protocol(format!(
                    "router speaks protocol {protocol}, this sender {PROTOCOL_VERSION}"
                )));
            }
            received
        }
        Msg::Error { reason } => return Err(LinkError::Refused(reason)),
        other => {
            return Err(LinkError::Protocol(format!(
                "expected welcome, got {}",
                other.kind()
            )))
        }
    };
    stream.set_read_timeout(None).map_err(WireError::Io)?;
    spawn_reader(r, recv, events);
    Ok(Opened {
        transport: Box::new(out),
        received,
        held: None,
    })
}

fn spawn_reader(mut r: BufReader<TcpStream>, mut mac: FrameMac, tx: Sender<Event>) {
    let _ = std::thread::Builder::new()
        .name("link-reader".into())
        .spawn(move || loop {
            match read_sealed(&mut r, &mut mac) {
                Ok(m) => {
                    if tx.send(Event::Msg(m)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Event::Closed(e));
                    return;
                }
            }
        });
}
