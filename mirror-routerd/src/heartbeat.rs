//! The router's heartbeats (seeds/003 claims 12-18): a UDP socket on the listening port
//! receives the sources' beats and sends the router's own to every source heard recently, at
//! the same interval. A source whose beats stop for longer than the threshold has its session
//! closed (its sender blocks the router on its side and comes back after the probation).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrorfs::wire::heartbeat::{self, Beat, Monitor, Timing};

use crate::shared::{lock, Router};

/// A source's heartbeats: where they come from and how steady they are.
#[derive(Debug, Clone, Copy)]
struct Source {
    addr: SocketAddr,
    monitor: Monitor,
    last: Instant,
    /// Its session was closed for this silence (a session opened without heartbeats, where
    /// they no longer get through, is left alone).
    closed: bool,
}

/// Sources heard, by site id.
type Sources = Arc<Mutex<HashMap<String, Source>>>;

/// Starts the heartbeat threads on `addr` (the TCP listening address).
pub fn start(router: Arc<Router>, addr: SocketAddr, timing: Timing) -> std::io::Result<()> {
    let sock = UdpSocket::bind(addr)?;
    sock.set_read_timeout(Some(timing.interval.min(Duration::from_millis(200))))?;
    let sources: Sources = Arc::default();
    let (rx_sock, rx_sources) = (sock.try_clone()?, sources.clone());
    std::thread::Builder::new()
        .name("heartbeat-in".into())
        .spawn({
            let router = router.clone();
            move || receive(&rx_sock, &router, &rx_sources, timing)
        })?;
    std::thread::Builder::new()
        .name("heartbeat-out".into())
        .spawn(move || beat(&sock, &router, &sources, timing))?;
    Ok(())
}

fn receive(
    sock: &UdpSocket,
    router: &Router,
    sources: &Mutex<HashMap<String, Source>>,
    timing: Timing,
) {
    let mut buf = [0u8; 512];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                // Only beats tagged with the key of the source they name count.
                let key_of = |who, site: &str| {
                    (who == Beat::Source)
                        .then(|| router.keys.get_exact(site).ok().flatten())
                        .flatten()
                };
                let Some(h) = heartbeat::decode(&buf[..n], key_of) else {
                    log::debug!("ignored a datagram of {n} bytes from {from}");
                    continue;
                };
                let site = h.id.clone();
                let now = Instant::now();
                let mut s = lock(sources);
                let e = s.entry(site.clone()).or_insert(Source {
                    addr: from,
                    monitor: Monitor::default(),
                    last: now,
                    closed: false,
                });
                let was_steady = !e.monitor.steady_for(now, timing.threshold).is_zero();
                if !e.monitor.heard(&h, now, timing.threshold) {
                    log::debug!("ignored a replayed heartbeat of {site} from {from}");
                    continue;
                }
                if !was_steady {
                    log::info!("source {site}: heartbeats arrive from {from}");
                }
                e.addr = from;
                e.last = now;
                e.closed = false;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                log::debug!("heartbeat socket: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn beat(sock: &UdpSocket, router: &Router, sources: &Mutex<HashMap<String, Source>>, t: Timing) {
    // Sources silent this long are forgotten (no more beats sent to them).
    let forget = t.threshold * 20;
    loop {
        let now = Instant::now();
        let mut silent = Vec::new();
        {
            let mut s = lock(sources);
            s.retain(|_, x| now.duration_since(x.last) < forget);
            for (site, x) in s.iter_mut() {
                if let Ok(Some(key)) = router.keys.get_exact(site) {
                    let msg = heartbeat::encode(Beat::Router, "", heartbeat::next_counter(), &key);
                    let _ = sock.send_to(&msg, x.addr);
                }
                if let Some(d) = x.monitor.interrupted(now, t.threshold) {
                    if !x.closed {
                        x.closed = true;
                        silent.push((site.clone(), d));
                    }
                }
            }
        }
        for (site, d) in silent {
            if router.close_session(&site) {
                log::warn!("source {site}: no heartbeat for {d:.1?}; closed its session");
            }
        }
        std::thread::sleep(t.interval);
    }
}
