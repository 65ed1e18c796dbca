//! Heartbeats (seeds/003 claims 1-18): small UDP datagrams sent at a regular interval in both
//! directions between a source and a router, on the router's port number (UDP and TCP share
//! it), and the monitor that tells an interruption from a steady beat.
//!
//! A datagram: magic `MIRHB2`, `kind u8` (1 from a source, 2 from a router), `len u8`, the
//! sender's id (the source site id, or empty), `counter u64 LE` (grows with every beat), and
//! the first 16 bytes of the HMAC-SHA256 of everything before it under the source site's key
//! ([`super::auth`]). A receiver drops a beat whose tag is wrong or whose counter is not above
//! the last one it took from that peer, so beats can be neither forged nor replayed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::auth::Key;

const MAGIC: &[u8; 6] = b"MIRHB2";
/// Bytes of the tag kept in a datagram.
const TAG: usize = 16;

/// Who sent a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// A source (mirror-sendd).
    Source,
    /// A router.
    Router,
}

/// A beat's counter: the time in nanoseconds, and always above the last one of this process.
pub fn next_counter() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let prev = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
            Some(now.max(l + 1))
        })
        .unwrap_or(0);
    now.max(prev + 1)
}

/// Encodes a heartbeat from `who` with id `id` (at most 255 bytes are kept), tagged with `key`.
pub fn encode(who: Beat, id: &str, counter: u64, key: &Key) -> Vec<u8> {
    let id = &id.as_bytes()[..id.len().min(255)];
    let mut out = Vec::with_capacity(MAGIC.len() + 2 + id.len() + 8 + TAG);
    out.extend_from_slice(MAGIC);
    out.push(match who {
        Beat::Source => 1,
        Beat::Router => 2,
    });
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out.extend_from_slice(&counter.to_le_bytes());
    let tag = key.tag(&[b"mirror-heartbeat\0", &out]);
    out.extend_from_slice(&tag[..TAG]);
    out
}

/// A heartbeat whose tag was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    /// Who sent it.
    pub who: Beat,
    /// Its id.
    pub id: String,
    /// Its counter.
    pub counter: u64,
}

/// Decodes a datagram and checks its tag with the key `key_of` gives for its sender; `None`
/// for anything that is not a whole heartbeat tagged with that key.
pub fn decode(b: &[u8], key_of: impl FnOnce(Beat, &str) -> Option<Key>) -> Option<Heard> {
    let head = MAGIC.len() + 2;
    if b.len() < head + 8 + TAG || &b[..MAGIC.len()] != MAGIC {
        return None;
    }
    let len = b[MAGIC.len() + 1] as usize;
    if b.len() != head + len + 8 + TAG {
        return None;
    }
    let (body, tag) = b.split_at(head + len + 8);
    let who = match b[MAGIC.len()] {
        1 => Beat::Source,
        2 => Beat::Router,
        _ => return None,
    };
    let id = std::str::from_utf8(&body[head..head + len])
        .ok()?
        .to_string();
    let key = key_of(who, &id)?;
    if !key.verify_truncated(&[b"mirror-heartbeat\0", body], tag) {
        return None;
    }
    let mut c = [0u8; 8];
    c.copy_from_slice(&body[head + len..]);
    Some(Heard {
        who,
        id,
        counter: u64::from_le_bytes(c),
    })
}

/// Heartbeat timing: how often to beat, how long a silence is an interruption, and how long
/// beats must arrive without one before a blocked site is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Interval between heartbeats.
    pub interval: Duration,
    /// A silence longer than this is an interruption.
    pub threshold: Duration,
    /// Beats without interruption for this long end an outage.
    pub probation: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            interval: Duration::from_secs(1),
            threshold: Duration::from_secs(3),
            probation: Duration::from_secs(5),
        }
    }
}

/// What is known of the heartbeats from one peer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Monitor {
    /// The last beat.
    last: Option<Instant>,
    /// Since when beats arrived without an interruption.
    steady_since: Option<Instant>,
    /// The counter of the last beat taken.
    counter: u64,
}

impl Monitor {
    /// Takes beat `h` at `now` if its counter is above the last one taken; whether it did
    /// (a replayed or reordered beat is dropped).
    pub fn heard(&mut self, h: &Heard, now: Instant, threshold: Duration) -> bool {
        if h.counter <= self.counter {
            return false;
        }
        self.counter = h.counter;
        self.beat(now, threshold);
        true
    }

    /// A beat arrived at `now`.
    pub fn beat(&mut self, now: Instant, threshold: Duration) {
        let resumed = self.last.is_none_or(|l| now.duration_since(l) > threshold);
        if resumed {
            self.steady_since = Some(now);
        }
        self.last = Some(now);
    }

    /// Whether a beat ever arrived.
    pub fn ever(&self) -> bool {
        self.last.is_some()
    }

    /// How long the peer has been silent, if beats arrived before and stopped for longer than
    /// `threshold` (an interruption).
    pub fn interrupted(&self, now: Instant, threshold: Duration) -> Option<Duration> {
        let silent = now.duration_since(self.last?);
        (silent > threshold).then_some(silent)
    }

    /// How long beats have been arriving without an interruption (zero if they are not).
    pub fn steady_for(&self, now: Instant, threshold: Duration) -> Duration {
        match (self.last, self.steady_since) {
            (Some(l), Some(s)) if now.duration_since(l) <= threshold => now.duration_since(s),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_damage_wrong_key_and_replay() {
        let k = Key::generate().unwrap();
        let key = |_: Beat, _: &str| Some(k.clone());
        let b = encode(Beat::Source, "host-a", 7, &k);
        let heard = decode(&b, key).unwrap();
        assert_eq!(
            (heard.who, heard.id.as_str(), heard.counter),
            (Beat::Source, "host-a", 7)
        );
        assert_eq!(
            decode(&encode(Beat::Router, "", 8, &k), key).map(|h| h.who),
            Some(Beat::Router)
        );
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x20;
            assert_eq!(decode(&c, key), None, "byte {i}");
        }
        assert_eq!(decode(&b[..b.len() - 1], key), None);
        assert_eq!(decode(b"garbage", key), None);
        let other = Key::generate().unwrap();
        assert_eq!(decode(&b, |_, _| Some(other.clone())), None);
        assert_eq!(decode(&b, |_, _| None), None);
        let mut m = Monitor::default();
        let t = Duration::from_secs(3);
        assert!(m.heard(&heard, Instant::now(), t));
        assert!(
            !m.heard(&heard, Instant::now(), t),
            "a replayed beat is dropped"
        );
        assert!(next_counter() < next_counter());
    }

    #[test]
    fn interruption_and_probation() {
        let t = Duration::from_secs(3);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut m = Monitor::default();
        assert_eq!(
            m.interrupted(at(100), t),
            None,
            "never heard: no interruption"
        );
        m.beat(at(0), t);
        m.beat(at(1), t);
        assert_eq!(m.steady_for(at(2), t), Duration::from_secs(2));
        assert_eq!(m.interrupted(at(4), t), None);
        assert_eq!(m.interrupted(at(5), t), Some(Duration::from_secs(4)));
        assert_eq!(m.steady_for(at(5), t), Duration::ZERO);
        // Beats resume: the steady run starts again.
        m.beat(at(10), t);
        m.beat(at(11), t);
        assert_eq!(m.steady_for(at(12), t), Duration::from_secs(2));
    }
}
