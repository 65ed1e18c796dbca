//! A TCP (and UDP) relay that stands in for a long-distance link on loopback, where there is
//! no netem: every byte is held for a fixed delay each way, and each connection may have at
//! most `cap` bytes in that delay line per direction (as a real link's window caps what one
//! connection has in flight), so one connection carries at most `cap / delay` bytes a second.
//!
//! It listens on a loopback port and forwards each connection to the target port; UDP
//! datagrams on the same port number (mirror's heartbeats) are forwarded both ways, without
//! delay. Everything stops when the relay is dropped (its threads end with their connections).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A running relay.
pub struct Relay {
    /// The port it listens on (TCP and UDP).
    pub port: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    /// TCP bytes relayed to the target and back from it, over every connection.
    counted: Arc<[AtomicU64; 2]>,
}

/// What one direction of a connection holds: chunks due at a time, and their bytes.
struct Line {
    queue: VecDeque<(Instant, Option<Vec<u8>>)>,
    bytes: usize,
    /// The writing end failed: the reader stops too.
    dead: bool,
}

impl Relay {
    /// Relays a free loopback port to `target`, holding bytes `delay` each way, at most `cap`
    /// bytes per connection and direction in flight.
    pub fn start(target: u16, delay: Duration, cap: usize) -> Relay {
        // The same port number for TCP and UDP.
        let (listener, udp) = loop {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
            let port = l.local_addr().expect("relay address").port();
            if let Ok(u) = UdpSocket::bind(("127.0.0.1", port)) {
                break (l, u);
            }
        };
        let port = listener.local_addr().expect("relay address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let counted: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        listener.set_nonblocking(true).expect("nonblocking");
        {
            let (stop, conns, counted) = (stop.clone(), conns.clone(), counted.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((a, _)) => {
                            let _ = a.set_nonblocking(false);
                            let Ok(b) = TcpStream::connect(("127.0.0.1", target)) else {
                                continue;
                            };
                            let _ = a.set_nodelay(true);
                            let _ = b.set_nodelay(true);
                            if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
                                let mut c = conns.lock().unwrap();
                                c.push(a2);
                                c.push(b2);
                            }
                            pump(&a, &b, delay, cap, (counted.clone(), 0));
                            pump(&b, &a, delay, cap, (counted.clone(), 1));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        }
        {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let _ = udp.set_read_timeout(Some(Duration::from_millis(100)));
                let router: SocketAddr = ([127, 0, 0, 1], target).into();
                let mut client: Option<SocketAddr> = None;
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    if from == router {
                        if let Some(c) = client {
                            let _ = udp.send_to(&buf[..n], c);
                        }
                    } else {
                        client = Some(from);
                        let _ = udp.send_to(&buf[..n], router);
                    }
                }
            });
        }
        Relay {
            port,
            stop,
            conns,
            counted,
        }
    }

    /// TCP bytes relayed so far: to the target (from the sender), and back.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.counted[0].load(Ordering::Relaxed),
            self.counted[1].load(Ordering::Relaxed),
        )
    }

    /// `HOST:PORT` of the relay, as a rule names a site.
    pub fn site(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.conns.lock().unwrap().iter() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to` through a delay line of at most `cap` bytes.
fn pump(
    from: &TcpStream,
    to: &TcpStream,
    delay: Duration,
    cap: usize,
    (counted, way): (Arc<[AtomicU64; 2]>, usize),
) {
    let (Ok(mut r), Ok(mut w)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let line = Arc::new((
        Mutex::new(Line {
            queue: VecDeque::new(),
            bytes: 0,
            dead: false,
        }),
        Condvar::new(),
    ));
    let l2 = line.clone();
    std::thread::spawn(move || {
        let (m, cv) = &*l2;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let room = {
                let mut g = m.lock().unwrap();
                while g.bytes >= cap && !g.dead {
                    g = cv.wait(g).unwrap();
                }
                if g.dead {
                    return;
                }
                cap - g.bytes
            };
            let want = room.min(buf.len());
            let n = r.read(&mut buf[..want]).unwrap_or(0);
            counted[way].fetch_add(n as u64, Ordering::Relaxed);
            let mut g = m.lock().unwrap();
            let due = Instant::now() + delay;
            if n == 0 {
                g.queue.push_back((due, None));
                cv.notify_all();
                return;
            }
            g.bytes += n;
            g.queue.push_back((due, Some(buf[..n].to_vec())));
            cv.notify_all();
        }
    });
    std::thread::spawn(move || {
        let (m, cv) = &*line;
        loop {
            let (due, chunk) = {
                let mut g = m.lock().unwrap();
                while g.queue.is_empty() {
                    g = cv.wait(g).unwrap();
                }
                g.queue.pop_front().unwrap()
            };
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let Some(chunk) = chunk else {
                let _ = w.shutdown(Shutdown::Write);
                return;
            };
            let ok = w.write_all(&chunk).is_ok();
            let mut g = m.lock().unwrap();
            g.bytes -= chunk.len();
            g.dead = !ok;
            cv.notify_all();
            drop(g);
            if !ok {
                let _ = w.shutdown(Shutdown::Both);
                // The reader ends at its next read (its socket is the other end of this one).
                return;
            }
        }
    });
}
