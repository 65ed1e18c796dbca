//! The sender's heartbeats with one site (seeds/003): a UDP socket to the router's port sends
//! a beat every interval; the router's beats that come back update the site's monitor. The
//! thread itself reports an interruption as soon as the silence passes the threshold (the
//! link may be stuck in a write or a connect meanwhile, issue 12 item 9); the link reads the
//! monitor to end its session and, after the probationary interval, the outage.

use std::net::{ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrorfs::wire::auth::KeyRing;
use mirrorfs::wire::heartbeat::{self, Beat, Monitor, Timing};

use crate::shared::lock;

/// What to do when the router's beats have been silent for longer than the threshold (called
/// once per interruption, with the silence so far).
pub type OnSilence = Box<dyn Fn(Duration) + Send>;

/// Beats with `site` as source `id` until `done` is set.
pub fn spawn(
    site: String,
    id: String,
    keys: Arc<KeyRing>,
    timing: Timing,
    monitor: Arc<Mutex<Monitor>>,
    done: Arc<AtomicBool>,
    on_silence: OnSilence,
) {
    let name = format!("heartbeat {site}");
    let spawned = std::thread::Builder::new()
        .name(name)
        .spawn(move || run(&site, &id, &keys, timing, &monitor, &done, &on_silence));
    if let Err(e) = spawned {
        log::error!("cannot start a heartbeat thread: {e}");
    }
}

fn socket(site: &str, timing: Timing) -> std::io::Result<UdpSocket> {
    let addr = site
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let local = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = UdpSocket::bind(local)?;
    s.connect(addr)?;
    s.set_read_timeout(Some(timing.interval.min(Duration::from_millis(200))))?;
    Ok(s)
}

fn run(
    site: &str,
    id: &str,
    keys: &KeyRing,
    timing: Timing,
    monitor: &Mutex<Monitor>,
    done: &AtomicBool,
    on_silence: &OnSilence,
) {
    let mut sock: Option<UdpSocket> = None;
    let mut next = Instant::now();
    let mut buf = [0u8; 512];
    let mut warned = false;
    let mut reported = false;
    while !done.load(Ordering::Relaxed) {
        // At most one read timeout (200 ms) after the silence passes the threshold.
        let silent = lock(monitor).interrupted(Instant::now(), timing.threshold);
        match silent {
            Some(d) if !reported => {
                reported = true;
                on_silence(d);
            }
            Some(_) => {}
            None => reported = false,
        }
        if sock.is_none() {
            match socket(site, timing) {
                Ok(s) => sock = Some(s),
                Err(e) => {
                    if !warned {
                        log::warn!("site {site}: no heartbeat socket ({e}); retrying");
                        warned = true;
                    }
                    std::thread::sleep(timing.interval.min(Duration::from_millis(200)));
                    continue;
                }
            }
        }
        let Some(s) = sock.as_ref() else { continue };
        // Without a key there are no beats (the link reports the missing key).
        let key = keys.get(site).ok().flatten();
        if Instant::now() >= next {
            if let Some(k) = &key {
                // Refused (no one listens yet) or unreachable: the silence tells the monitor.
                let beat = heartbeat::encode(Beat::Source, id, heartbeat::next_counter(), k);
                let _ = s.send(&beat);
            }
            next = Instant::now() + timing.interval;
        }
        match s.recv(&mut buf) {
            Ok(n) => {
                let heard = heartbeat::decode(&buf[..n], |_, _| key.clone());
                if let Some(h) = heard.filter(|h| h.who == Beat::Router) {
                    let now = Instant::now();
                    let mut m = lock(monitor);
                    let was_steady = !m.steady_for(now, timing.threshold).is_zero();
                    if m.heard(&h, now, timing.threshold) && !was_steady {
                        log::info!("site {site}: heartbeats arrive");
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // An ICMP error from an earlier beat; the next recv waits normally.
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
