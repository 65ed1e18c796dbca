//! Heartbeats (seeds/003 claims 1-18): small UDP datagrams sent at a regular interval in both
//! directions between a source and a router, on the router's port number (UDP and TCP share
//! it), and the monitor that tells an interruption from a steady beat.
//!
//! A datagram: magic `MIRHB1`, `kind u8` (1 from a source, 2 from a router), `len u8`, the
//! sender's id (the source site id, or empty), `crc32 u32 LE` of everything before it.

use std::time::{Duration, Instant};

const MAGIC: &[u8; 6] = b"MIRHB1";

/// Who sent a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// A source (mirror-sendd).
    Source,
    /// A router.
    Router,
}

/// Encodes a heartbeat from `who` with id `id` (at most 255 bytes are kept).
pub fn encode(who: Beat, id: &str) -> Vec<u8> {
    let id = &id.as_bytes()[..id.len().min(255)];
    let mut out = Vec::with_capacity(MAGIC.len() + 6 + id.len());
    out.extend_from_slice(MAGIC);
    out.push(match who {
        Beat::Source => 1,
        Beat::Router => 2,
    });
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a datagram; `None` for anything that is not a whole, intact heartbeat.
pub fn decode(b: &[u8]) -> Option<(Beat, String)> {
    let head = MAGIC.len() + 2;
    if b.len() < head + 4 || &b[..MAGIC.len()] != MAGIC {
        return None;
    }
    let len = b[MAGIC.len() + 1] as usize;
    if b.len() != head + len + 4 {
        return None;
    }
    let (body, crc) = b.split_at(head + len);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return None;
    }
    let who = match b[MAGIC.len()] {
        1 => Beat::Source,
        2 => Beat::Router,
        _ => return None,
    };
    let id = std::str::from_utf8(&body[head..]).ok()?.to_string();
    Some((who, id))
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
}

impl Monitor {
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
    fn round_trip_and_damage() {
        let b = encode(Beat::Source, "host-a");
        assert_eq!(decode(&b), Some((Beat::Source, "host-a".to_string())));
        assert_eq!(
            decode(&encode(Beat::Router, "")),
            Some((Beat::Router, String::new()))
        );
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x20;
            assert_eq!(decode(&c), None, "byte {i}");
        }
        assert_eq!(decode(&b[..b.len() - 1]), None);
        assert_eq!(decode(b"garbage"), None);
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
