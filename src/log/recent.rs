//! The identities of the messages this process committed lately.
//!
//! Redeliveries and producers' duplicate publishes come close after the original: within the
//! broker's unacked window after a reconnect, within seconds for a producer's retry. Knowing the
//! last few hundred thousand identities lets the log drop those copies before they reach the
//! database, and insert everything else without a conflict check (see `EventLog::append`).
//!
//! A message's identity is its body's SHA-256, the same as the log's unique key (the body holds
//! the call id); 128 of its bits are kept, 16 bytes a message. A false match between two
//! distinct bodies needs a 128-bit collision among at most a few hundred thousand entries: about
//! 2^-110 per message, far below any storage's own error rate.
//!
//! Only identities of messages in the log are added (committed by this process, or read back
//! from the log), so a match is always a message already there. A miss proves nothing (older
//! than the memory, or logged before this process started): the database's unique index stays
//! the arbiter.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// Remembers at least the last `generation` identities added and at most twice that, in two
/// generations: when the current one is full it becomes the previous one, whose entries are
/// forgotten together. No per-entry bookkeeping, and memory stays bounded.
pub struct RecentMessages {
    generation: usize,
    current: HashSet<u128, BuildHasherDefault<Fingerprint>>,
    previous: HashSet<u128, BuildHasherDefault<Fingerprint>>,
}

impl RecentMessages {
    /// Remembers about `capacity` identities (between half of it and all of it); 0 remembers
    /// none.
    pub fn new(capacity: usize) -> Self {
        RecentMessages {
            generation: capacity / 2,
            current: HashSet::default(),
            previous: HashSet::default(),
        }
    }

    /// False when the memory is off: every message must then be checked by the database.
    pub fn enabled(&self) -> bool {
        self.generation > 0
    }

    pub fn contains(&self, body_hash: &[u8; 32]) -> bool {
        let key = identity(body_hash);
        self.current.contains(&key) || self.previous.contains(&key)
    }

    /// Adds the identity of a message that is in the log.
    pub fn insert(&mut self, body_hash: &[u8; 32]) {
        if !self.enabled() {
            return;
        }
        if self.current.len() >= self.generation {
            // The previous generation's allocation is reused for the next one.
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        self.current.insert(identity(body_hash));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

fn identity(body_hash: &[u8; 32]) -> u128 {
    let mut head = [0u8; 16];
    head.copy_from_slice(&body_hash[..16]);
    u128::from_le_bytes(head)
}

/// The key is already a uniform hash: its low 64 bits are the table's hash, no SipHash over it.
#[derive(Default)]
pub struct Fingerprint(u64);

impl Hasher for Fingerprint {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u128` keys are hashed here; this covers any other use correctly, if slowly.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u32) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(n.to_le_bytes()).into()
    }

    #[test]
    fn remembers_what_was_added_and_nothing_else() {
        let mut r = RecentMessages::new(100);
        for n in 0..40 {
            r.insert(&hash(n));
        }
        assert!((0..40).all(|n| r.contains(&hash(n))));
        assert!((40..1000).all(|n| !r.contains(&hash(n))));
    }

    #[test]
    fn keeps_at_least_the_last_half_of_its_capacity_and_never_more_than_all_of_it() {
        let mut r = RecentMessages::new(100);
        for n in 0..10_000 {
            r.insert(&hash(n));
            assert!(r.len() <= 100);
            let newest_half = n.saturating_sub(49)..=n;
            assert!(
                newest_half.clone().all(|m| r.contains(&hash(m))),
                "after {n}"
            );
        }
        // The oldest are forgotten.
        assert!(!r.contains(&hash(0)));
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let mut r = RecentMessages::new(0);
        r.insert(&hash(1));
        assert!(!r.enabled());
        assert!(!r.contains(&hash(1)));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn identities_differ_in_their_first_128_bits_only() {
        let a = [7u8; 32];
        let mut b = a;
        b[31] ^= 1;
        let mut r = RecentMessages::new(10);
        r.insert(&a);
        // Documented: bits past the first 128 are not kept.
        assert!(r.contains(&b));
        let mut c = a;
        c[15] ^= 1;
        assert!(!r.contains(&c));
    }
}
