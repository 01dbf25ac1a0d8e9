//! Which chunks the agent still wants, and where each stands: asked of the
//! store, queued for the hub, or requested and in flight.
//!
//! A chunk is wanted once however many deployments need it. Chunks that arrive
//! or that the store already holds leave this table; the reconciler's slots
//! remember them from then on.

use std::collections::{BTreeMap, BTreeSet};

use crate::digest::Sha256Digest;
use crate::manifest::ChunkRef;
use crate::time::UtcTime;

/// The wanted chunks.
#[derive(Debug, Default)]
pub(crate) struct ChunkFetch {
    /// Every wanted chunk as the first manifest that wants it lists it
    /// (signed size and BLAKE3; manifests list one address one way).
    // invariant: each key is in exactly one of querying, queued, in_flight.
    wanted: BTreeMap<Sha256Digest, ChunkRef>,
    /// Asked of the store, no answer yet.
    querying: BTreeSet<Sha256Digest>,
    /// Known absent from the store, not yet requested.
    queued: BTreeSet<Sha256Digest>,
    /// Requested from the hub, and when.
    in_flight: BTreeMap<Sha256Digest, UtcTime>,
}

impl ChunkFetch {
    /// Keeps only the wanted chunks `keep` says yes to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Sha256Digest) -> bool) {
        let drop: Vec<Sha256Digest> = self.wanted.keys().filter(|d| !keep(d)).copied().collect();
        for d in &drop {
            self.forget(d);
        }
    }

    /// Wants `chunk`; true if it was not wanted before (ask the store).
    pub(crate) fn want(&mut self, chunk: ChunkRef) -> bool {
        if self.wanted.contains_key(&chunk.digest) {
            return false;
        }
        self.wanted.insert(chunk.digest, chunk);
        self.querying.insert(chunk.digest);
        true
    }

    /// Stops wanting `digest` (it arrived, or nobody needs it any more).
    pub(crate) fn forget(&mut self, digest: &Sha256Digest) {
        self.wanted.remove(digest);
        self.querying.remove(digest);
        self.queued.remove(digest);
        self.in_flight.remove(digest);
    }

    /// The signed size of a wanted chunk.
    pub(crate) fn size(&self, digest: &Sha256Digest) -> Option<u32> {
        self.wanted.get(digest).map(|c| c.size)
    }

    /// A wanted chunk as its manifest lists it.
    pub(crate) fn get(&self, digest: &Sha256Digest) -> Option<&ChunkRef> {
        self.wanted.get(digest)
    }

    /// Whether `digest` is waiting for the store's answer.
    pub(crate) fn is_querying(&self, digest: &Sha256Digest) -> bool {
        self.querying.contains(digest)
    }

    /// The store does not hold `digest`: queue it for the hub.
    pub(crate) fn absent(&mut self, digest: &Sha256Digest) {
        if self.querying.remove(digest) {
            self.queued.insert(*digest);
        }
    }

    /// Wrong bytes arrived for `digest`: request it again.
    pub(crate) fn requeue(&mut self, digest: &Sha256Digest) {
        if self.wanted.contains_key(digest) {
            self.querying.remove(digest);
            self.in_flight.remove(digest);
            self.queued.insert(*digest);
        }
    }

    /// Takes queued chunks into requests of at most `per_request` digests,
    /// keeping at most `max_in_flight` chunks in flight.
    pub(crate) fn next_requests(
        &mut self,
        now: UtcTime,
        max_in_flight: usize,
        per_request: usize,
    ) -> Vec<Vec<Sha256Digest>> {
        let mut out = Vec::new();
        let per_request = per_request.max(1);
        while !self.queued.is_empty() && self.in_flight.len() < max_in_flight {
            let room = (max_in_flight - self.in_flight.len()).min(per_request);
            let batch: Vec<Sha256Digest> = self.queued.iter().take(room).copied().collect();
            for d in &batch {
                self.queued.remove(d);
                self.in_flight.insert(*d, now);
            }
            out.push(batch);
        }
        out
    }

    /// Requeues requests older than `timeout_secs`; returns how many.
    pub(crate) fn expire(&mut self, now: UtcTime, timeout_secs: i64) -> usize {
        let late: Vec<Sha256Digest> = self
            .in_flight
            .iter()
            .filter(|(_, at)| at.plus_secs(timeout_secs) <= now)
            .map(|(d, _)| *d)
            .collect();
        for d in &late {
            self.requeue(d);
        }
        late.len()
    }

    /// When the oldest request times out.
    pub(crate) fn next_deadline(&self, timeout_secs: i64) -> Option<UtcTime> {
        self.in_flight
            .values()
            .min()
            .map(|at| at.plus_secs(timeout_secs))
    }

    /// Chunks requested and not arrived.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: u8) -> Sha256Digest {
        Sha256Digest([i; 32])
    }

    fn chunk(i: u8) -> ChunkRef {
        ChunkRef {
            digest: d(i),
            size: 1,
            blake3: None,
        }
    }

    #[test]
    fn requests_respect_the_in_flight_window_and_batch_size() {
        let mut f = ChunkFetch::default();
        for i in 0..10 {
            assert!(f.want(chunk(i)));
            f.absent(&d(i));
        }
        assert!(!f.want(chunk(0)), "a chunk is wanted once");
        let reqs = f.next_requests(UtcTime(0), 7, 3);
        assert_eq!(reqs.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
        assert_eq!(f.in_flight(), 7);
        assert!(f.next_requests(UtcTime(0), 7, 3).is_empty());
    }

    #[test]
    fn late_requests_are_sent_again() {
        let mut f = ChunkFetch::default();
        f.want(chunk(1));
        f.absent(&d(1));
        f.next_requests(UtcTime(10), 8, 8);
        assert_eq!(f.next_deadline(30), Some(UtcTime(40)));
        assert_eq!(f.expire(UtcTime(39), 30), 0);
        assert_eq!(f.expire(UtcTime(40), 30), 1);
        assert_eq!(f.next_requests(UtcTime(40), 8, 8), vec![vec![d(1)]]);
    }
}
