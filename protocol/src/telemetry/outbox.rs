//! The agent's telemetry outbox as a sans-IO model: numbering, the byte
//! budget, compaction, acks.
//!
//! The agent pushes every finished window into an [`Outbox`]; the outbox
//! numbers it, keeps it (encoded) until the hub's [`WindowAck`] covers it, and
//! keeps the total under [`Limits::max_outbox_bytes`]. Every mutation returns
//! the [`OutboxChange`]s the driver must apply to its redb table, in one
//! transaction, before it publishes anything the mutation produced; after a
//! crash, [`Outbox::restore`] rebuilds the model from that table.
//!
//! # Compaction
//! When a push puts the outbox over budget, it merges adjacent windows into
//! coarser ones ([`TelemetryWindow::merged`]: counters add, histograms merge)
//! until it fits, and drops a window only when no merge can free space:
//! - Pairs of windows with equal `span_count` merge first, the finest first,
//!   the oldest first among equals, as a binary counter does: a first overflow
//!   merges windows 1 and 2, and over a long outage the spans grow with age
//!   (… 8, 4, 2, 1) instead of one window absorbing everything. When no two
//!   adjacent windows have equal spans, the oldest pair merges. A merge that
//!   would make a window coarser than an older one is avoided, so spans never
//!   grow from old to new (within the published and the unpublished runs).
//! - Windows not yet published are merged first, then pairs of published
//!   windows, and a published window with an unpublished one last (see
//!   [`Outbox::mark_published`]): a published window may already sit in the
//!   hub's store with its ack still on the way, and merging it with one the
//!   hub lacks makes the hub see a window that partially overlaps what it
//!   stored, which it counts twice (see [`super::dedupe`]). During a broker
//!   outage the few windows in flight when it went down are the oldest; this
//!   rule leaves them intact.
//! - A merge is taken only if the merged window is smaller than the two it
//!   replaces, fits the budget and respects the limits the hub will check.
//! - A window that alone exceeds the budget is dropped when pushed (it gets no
//!   sequence number, so the hub sees no gap); when nothing can merge, the
//!   oldest window is dropped. Every dropped window is counted, by the
//!   number of original windows it held, in [`Outbox::dropped`], which the
//!   agent reports in the next window's [`super::AgentStats::outbox_dropped`].
//!
//! Design: the outbox holds the encoded windows in memory (the budget bounds
//! that) and decodes only the two windows of a candidate merge, so the agent
//! never reads its table except at start-up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ack::WindowAck;
use super::window::TelemetryWindow;
use super::TelemetryError;
use crate::limits::Limits;

/// What the outbox persists besides the windows, in one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxMeta {
    /// The outbox's epoch (see [`TelemetryWindow::epoch`]).
    pub epoch: u64,
    /// The sequence number the next pushed window gets.
    pub next_seq: u64,
    /// Original windows dropped since the outbox was created.
    pub dropped: u64,
}

/// One write the driver must apply to its outbox table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxChange {
    /// Store `bytes` (an encoded window) under key `seq`, its first sequence
    /// number, replacing what is there.
    Put {
        /// The key: the window's `first_seq`.
        seq: u64,
        /// The encoded window.
        bytes: Vec<u8>,
    },
    /// Remove the window stored under key `seq`.
    Delete {
        /// The key.
        seq: u64,
    },
    /// Store the outbox's meta record.
    Meta(OutboxMeta),
}

/// A window waiting for its ack, as [`Outbox::pending`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingWindow<'a> {
    /// First sequence number covered (the table key).
    pub first_seq: u64,
    /// Last sequence number covered.
    pub last_seq: u64,
    /// Original windows merged into it.
    pub span_count: u64,
    /// The encoded window: the MQTT payload.
    pub bytes: &'a [u8],
}

/// A window the outbox refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The window breaks a limit the hub would enforce; nothing was stored
    /// and no sequence number was used.
    #[error("window refused: {0}")]
    Invalid(#[from] TelemetryError),
}

#[derive(Debug, Clone)]
struct Entry {
    last_seq: u64,
    span: u64,
    bytes: Vec<u8>,
}

/// The agent's bounded telemetry outbox (in memory; see the module docs).
#[derive(Debug, Clone)]
pub struct Outbox {
    device: String,
    epoch: u64,
    limits: Limits,
    /// Windows by first sequence number.
    // invariant: ranges disjoint and ascending; every entry decodes under
    // `limits`; total_bytes is the sum of their lengths.
    entries: BTreeMap<u64, Entry>,
    total_bytes: u64,
    // invariant: above every stored last_seq.
    next_seq: u64,
    dropped: u64,
    /// Highest sequence number handed to the publisher (or restored: a
    /// restored window may have been published before the restart).
    published_up_to: u64,
}

/// How much a merge of two adjacent windows is preferred: the smaller the
/// better, field by field in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct MergeRank {
    /// How likely the hub already stored part of the pair: 0 when neither
    /// window was published, 1 when both were (merging them overlaps the
    /// hub's store only if exactly one of them reached it), 2 when only the
    /// older one was (it may well have reached the hub, the newer cannot).
    risk: u8,
    /// The merge would outgrow the window before it in the same (published
    /// or not) run. Avoiding that keeps spans non-increasing from old to new
    /// within each run; such merges are still tried before anything is dropped.
    breaks_order: bool,
    /// The two spans differ.
    unequal: bool,
    /// The span of each window of an equal pair (0 otherwise): finest first.
    level: u64,
    /// Position of the older window: oldest first.
    age: usize,
}

/// Keys touched by one mutation, and whether each existed before it.
#[derive(Debug, Default)]
struct Touched(BTreeMap<u64, bool>);

impl Touched {
    fn touch(&mut self, outbox: &Outbox, seq: u64) {
        self.0
            .entry(seq)
            .or_insert_with(|| outbox.entries.contains_key(&seq));
    }
}

impl Outbox {
    /// An empty outbox for `device`, numbering from 1 in `epoch` (pick it at
    /// random when the agent's database is created, and persist it via
    /// [`OutboxChange::Meta`]). The budget is `limits.max_outbox_bytes`.
    pub fn new(device: impl Into<String>, epoch: u64, limits: Limits) -> Self {
        Self {
            device: device.into(),
            epoch,
            limits,
            entries: BTreeMap::new(),
            total_bytes: 0,
            next_seq: 1,
            dropped: 0,
            published_up_to: 0,
        }
    }

    /// Rebuilds the outbox from its table after a restart: the meta record
    /// and every `(key, bytes)` stored. A record that does not decode, or
    /// does not belong (another device or epoch, a key that is not its first
    /// sequence number, a range overlapping the one before), is deleted and
    /// counted as one dropped window. Restored windows count as published.
    /// The changes returned (deletions, and compaction if the budget shrank)
    /// must be applied like any other.
    pub fn restore(
        device: impl Into<String>,
        limits: Limits,
        meta: OutboxMeta,
        stored: impl IntoIterator<Item = (u64, Vec<u8>)>,
    ) -> (Self, Vec<OutboxChange>) {
        let mut outbox = Self::new(device, meta.epoch, limits);
        outbox.dropped = meta.dropped;
        let mut touched = Touched::default();
        let mut stored: Vec<(u64, Vec<u8>)> = stored.into_iter().collect();
        stored.sort_by_key(|(k, _)| *k);
        for (key, bytes) in stored {
            let belongs = TelemetryWindow::decode(&bytes, &limits).ok().filter(|w| {
                w.device == outbox.device
                    && w.epoch == outbox.epoch
                    && w.first_seq == key
                    && outbox
                        .entries
                        .last_key_value()
                        .is_none_or(|(_, prev)| prev.last_seq < key)
            });
            match belongs {
                Some(w) => {
                    outbox.total_bytes += bytes.len() as u64;
                    outbox.entries.insert(
                        key,
                        Entry {
                            last_seq: w.last_seq,
                            span: w.span_count,
                            bytes,
                        },
                    );
                }
                None => {
                    // It was in the table, so deleting it is a change.
                    touched.0.insert(key, true);
                    outbox.dropped = outbox.dropped.saturating_add(1);
                }
            }
        }
        let last = outbox
            .entries
            .values()
            .map(|e| e.last_seq)
            .max()
            .unwrap_or(0);
        outbox.next_seq = meta.next_seq.max(last.saturating_add(1)).max(1);
        outbox.published_up_to = last;
        outbox.compact(&mut touched);
        let meta_changed = outbox.meta() != meta;
        let changes = outbox.changes(touched, meta_changed);
        (outbox, changes)
    }

    /// Numbers `window` (device, epoch, `first_seq = last_seq =` the next
    /// sequence number, `span_count` 1), stores it, and compacts if the
    /// outbox is over budget. A window larger than the whole budget is
    /// dropped and counted instead. Fails, changing nothing, when the window
    /// breaks a limit the hub would refuse it for.
    pub fn push(&mut self, mut window: TelemetryWindow) -> Result<Vec<OutboxChange>, OutboxError> {
        let seq = self.next_seq;
        window.device.clone_from(&self.device);
        window.epoch = self.epoch;
        window.first_seq = seq;
        window.last_seq = seq;
        window.span_count = 1;
        window.validate(&self.limits)?;
        let bytes = window.encode();
        let len = bytes.len() as u64;
        if len > self.limits.max_telemetry_bytes {
            return Err(TelemetryError::TooLarge {
                what: "telemetry window",
                actual: len,
                limit: self.limits.max_telemetry_bytes,
            }
            .into());
        }
        let mut touched = Touched::default();
        if len > self.budget() {
            self.dropped = self.dropped.saturating_add(1);
        } else {
            touched.touch(self, seq);
            self.next_seq = seq.saturating_add(1);
            self.total_bytes += len;
            self.entries.insert(
                seq,
                Entry {
                    last_seq: seq,
                    span: 1,
                    bytes,
                },
            );
            self.compact(&mut touched);
        }
        Ok(self.changes(touched, true))
    }

    /// Forgets every window `ack` covers entirely (`last_seq <= up_to_seq`).
    /// An ack for another device or epoch changes nothing. A merged window
    /// the ack covers only in part stays, to be published again.
    ///
    /// An ack at or above the next sequence number means the hub has stored
    /// numbers this outbox has not handed out: its table went back in time
    /// (restored from a backup). Numbering then jumps past the ack, so that
    /// the hub does not take new windows for duplicates.
    pub fn ack(&mut self, ack: &WindowAck) -> Vec<OutboxChange> {
        if ack.device != self.device || ack.epoch != self.epoch {
            return Vec::new();
        }
        let rewound = ack.up_to_seq >= self.next_seq;
        if rewound {
            self.next_seq = ack.up_to_seq.saturating_add(1);
        }
        let mut touched = Touched::default();
        // Ranges ascend, so the covered windows are a prefix.
        while let Some((&seq, e)) = self.entries.first_key_value() {
            if e.last_seq > ack.up_to_seq {
                break;
            }
            touched.touch(self, seq);
            self.remove(seq);
        }
        self.changes(touched, rewound)
    }

    /// Records that the publisher has handed every window up to `seq` to the
    /// MQTT client, so that compaction merges them last.
    pub fn mark_published(&mut self, seq: u64) {
        self.published_up_to = self.published_up_to.max(seq);
    }

    /// The windows waiting for an ack, oldest first: publish them in this
    /// order, calling [`Outbox::mark_published`] as each is handed over.
    ///
    /// Republish them on every new MQTT session, and otherwise only when the
    /// hub is known to be up and an ack is long overdue: republishing on a
    /// short timer during a hub outage queues merged windows at the broker
    /// behind the originals they contain, which the hub then sees as partial
    /// overlaps.
    pub fn pending(&self) -> impl Iterator<Item = PendingWindow<'_>> + '_ {
        self.entries.iter().map(|(first, e)| PendingWindow {
            first_seq: *first,
            last_seq: e.last_seq,
            span_count: e.span,
            bytes: &e.bytes,
        })
    }

    /// Windows waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no window is waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of the windows waiting.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.limits.max_outbox_bytes
    }

    /// Original windows dropped since the outbox was created.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The meta record as it stands.
    pub fn meta(&self) -> OutboxMeta {
        OutboxMeta {
            epoch: self.epoch,
            next_seq: self.next_seq,
            dropped: self.dropped,
        }
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let e = self.entries.remove(&seq)?;
        self.total_bytes -= e.bytes.len() as u64;
        Some(e)
    }

    /// Merges, or as a last resort drops, until the outbox fits its budget.
    fn compact(&mut self, touched: &mut Touched) {
        while self.total_bytes > self.budget() {
            if !self.merge_one(touched) {
                let Some((&oldest, _)) = self.entries.first_key_value() else {
                    return;
                };
                touched.touch(self, oldest);
                if let Some(e) = self.remove(oldest) {
                    self.dropped = self.dropped.saturating_add(e.span);
                }
            }
        }
    }

    /// Performs the most preferred merge that frees space; `false` if none does.
    fn merge_one(&mut self, touched: &mut Touched) -> bool {
        let windows: Vec<(u64, u64, bool)> = self
            .entries
            .iter()
            .map(|(k, e)| (*k, e.span, *k <= self.published_up_to))
            .collect();
        let mut candidates: Vec<(MergeRank, u64, u64)> = windows
            .windows(2)
            .enumerate()
            .map(|(i, pair)| {
                let ((a, sa, published), (b, sb, b_published)) = (pair[0], pair[1]);
                let breaks_order = i
                    .checked_sub(1)
                    .and_then(|p| windows.get(p))
                    .is_some_and(|&(_, sp, pp)| pp == published && sp < sa.saturating_add(sb));
                let equal = sa == sb;
                let rank = MergeRank {
                    risk: u8::from(published) + u8::from(published && !b_published),
                    breaks_order,
                    unequal: !equal,
                    level: if equal { sa } else { 0 },
                    age: i,
                };
                (rank, a, b)
            })
            .collect();
        candidates.sort_unstable_by_key(|c| c.0);
        for (_, a, b) in candidates {
            if let Some(merged) = self.try_merge(a, b) {
                touched.touch(self, a);
                touched.touch(self, b);
                self.remove(a);
                self.remove(b);
                self.total_bytes += merged.bytes.len() as u64;
                self.entries.insert(a, merged);
                return true;
            }
        }
        false
    }

    /// The merge of the windows at keys `a` and `b`, if it frees space, fits
    /// the budget and respects the limits.
    fn try_merge(&self, a: u64, b: u64) -> Option<Entry> {
        let (ea, eb) = (self.entries.get(&a)?, self.entries.get(&b)?);
        let wa = TelemetryWindow::decode(&ea.bytes, &self.limits).ok()?;
        let wb = TelemetryWindow::decode(&eb.bytes, &self.limits).ok()?;
        let merged = wa.merged(&wb).ok()?;
        merged.validate(&self.limits).ok()?;
        let bytes = merged.encode();
        let len = bytes.len();
        let fits = len < ea.bytes.len() + eb.bytes.len()
            && len as u64 <= self.budget()
            && len as u64 <= self.limits.max_telemetry_bytes;
        fits.then_some(Entry {
            last_seq: merged.last_seq,
            span: merged.span_count,
            bytes,
        })
    }

    /// The table writes that bring the table from before the mutation to now.
    fn changes(&self, touched: Touched, meta_changed: bool) -> Vec<OutboxChange> {
        let mut out: Vec<OutboxChange> = touched
            .0
            .into_iter()
            .filter_map(|(seq, existed)| match self.entries.get(&seq) {
                Some(e) => Some(OutboxChange::Put {
                    seq,
                    bytes: e.bytes.clone(),
                }),
                None => existed.then_some(OutboxChange::Delete { seq }),
            })
            .collect();
        if meta_changed {
            out.push(OutboxChange::Meta(self.meta()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::dedupe::{Dedupe, Verdict};
    use crate::telemetry::window::tests::sample;
    use proptest::prelude::*;

    const DEVICE: &str = "dev-1";
    const EPOCH: u64 = 42;

    fn window(requests: u64) -> TelemetryWindow {
        sample(1, requests, 1_500)
    }

    /// A budget holding about `n` sample windows.
    fn limits_for(n: u64) -> Limits {
        let one = {
            let mut w = window(10);
            w.first_seq = 1_000;
            w.last_seq = 1_000;
            w.encode().len() as u64
        };
        Limits {
            max_outbox_bytes: n * one,
            ..Limits::default()
        }
    }

    /// The driver's table: applies changes as redb would.
    #[derive(Default)]
    struct Table {
        rows: BTreeMap<u64, Vec<u8>>,
        meta: Option<OutboxMeta>,
    }

    impl Table {
        fn apply(&mut self, changes: Vec<OutboxChange>) {
            for c in changes {
                match c {
                    OutboxChange::Put { seq, bytes } => {
                        self.rows.insert(seq, bytes);
                    }
                    OutboxChange::Delete { seq } => {
                        assert!(self.rows.remove(&seq).is_some(), "delete of absent {seq}");
                    }
                    OutboxChange::Meta(m) => self.meta = Some(m),
                }
            }
        }
    }

    fn decoded(o: &Outbox) -> Vec<TelemetryWindow> {
        o.pending()
            .map(|p| TelemetryWindow::decode(p.bytes, &o.limits).unwrap())
            .collect()
    }

    fn ranges(o: &Outbox) -> Vec<(u64, u64)> {
        o.pending().map(|p| (p.first_seq, p.last_seq)).collect()
    }

    fn assert_table_matches(t: &Table, o: &Outbox) {
        let pending: BTreeMap<u64, Vec<u8>> = o
            .pending()
            .map(|p| (p.first_seq, p.bytes.to_vec()))
            .collect();
        assert_eq!(t.rows, pending);
        assert_eq!(t.meta, Some(o.meta()));
    }

    #[test]
    fn pushes_under_budget_keep_every_window_in_order() {
        let mut o = Outbox::new(DEVICE, EPOCH, limits_for(10));
        let mut t = Table::default();
        for r in 1..=5 {
            let changes = o.push(window(r)).unwrap();
            assert_eq!(changes.len(), 2, "one put and the meta record");
            t.apply(changes);
        }
        assert_eq!(ranges(&o), vec![(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]);
        let ws = decoded(&o);
        assert!(ws
            .iter()
            .all(|w| w.device == DEVICE && w.epoch == EPOCH && w.span_count == 1));
        assert_eq!(
            ws.iter().map(|w| w.requests_total()).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(o.dropped(), 0);
        assert_table_matches(&t, &o);
    }

    #[test]
    fn overflow_merges_the_oldest_first_and_stays_within_budget() {
        let mut o = Outbox::new(DEVICE, EPOCH, limits_for(4));
        let mut t = Table::default();
        for _ in 0..4 {
            t.apply(o.push(window(10)).unwrap());
        }
        let before = ranges(&o);
        assert_eq!(before.len(), 4);
        t.apply(o.push(window(10)).unwrap());
        assert_eq!(ranges(&o)[0], (1, 2), "the two oldest merged first");
        assert!(o.total_bytes() <= o.budget());
        for _ in 0..60 {
            t.apply(o.push(window(10)).unwrap());
            assert!(o.total_bytes() <= o.budget());
            assert_table_matches(&t, &o);
        }
        // Older windows are coarser: spans never grow from old to new.
        let spans: Vec<u64> = o.pending().map(|p| p.span_count).collect();
        assert!(spans.windows(2).all(|w| w[0] >= w[1]), "{spans:?}");
        assert_eq!(o.dropped(), 0);
    }

    #[test]
    fn merged_windows_lose_no_count() {
        let mut o = Outbox::new(DEVICE, EPOCH, limits_for(5));
        let mut sent = 0;
        for r in 1..=100u64 {
            o.push(window(r)).unwrap();
            sent += r;
        }
        let ws = decoded(&o);
        assert!(ws.len() <= 6, "{} windows", ws.len());
        assert_eq!(ws.iter().map(|w| w.requests_total()).sum::<u64>(), sent);
        assert_eq!(ws.iter().map(|w| w.span_count).sum::<u64>(), 100);
        let latency: u64 = ws.iter().map(|w| w.endpoints[0].latency_us.count()).sum();
        assert_eq!(latency, sent);
        // Each stored window's dedupe key is its pending range.
        for (w, p) in ws.iter().zip(o.pending()) {
            let k = w.key();
            assert_eq!((k.device, k.epoch), (DEVICE, EPOCH));
            assert_eq!((k.first_seq, k.last_seq), (p.first_seq, p.last_seq));
        }
        // Ranges tile 1..=100 without gaps or overlaps.
        let r = ranges(&o);
        assert_eq!(r.first().map(|r| r.0), Some(1));
        assert_eq!(r.last().map(|r| r.1), Some(100));
        assert!(r.windows(2).all(|w| w[1].0 == w[0].1 + 1));
    }

    #[test]
    fn unpublished_windows_are_merged_before_published_ones() {
        let mut o = Outbox::new(DEVICE, EPOCH, limits_for(4));
        for _ in 0..3 {
            o.push(window(10)).unwrap();
        }
        o.mark_published(2);
        for _ in 0..2 {
            o.push(window(10)).unwrap();
        }
        let r = ranges(&o);
        assert_eq!(
            &r[..2],
            &[(1, 1), (2, 2)],
            "published windows intact: {r:?}"
        );
    }

    #[test]
    fn acks_remove_exactly_the_covered_windows() {
        let mut o = Outbox::new(DEVICE, EPOCH, limits_for(4));
        let mut t = Table::default();
        for _ in 0..5 {
            t.apply(o.push(window(10)).unwrap());
        }
        assert_eq!(ranges(&o), vec![(1, 2), (3, 3), (4, 4), (5, 5)]);
        // Covers only part of the merged window: nothing goes.
        assert!(o.ack(&WindowAck::new(DEVICE, EPOCH, 1)).is_empty());
        // Another epoch or device: ignored.
        assert!(o.ack(&WindowAck::new(DEVICE, 7, 100)).is_empty());
        assert!(o.ack(&WindowAck::new("dev-2", EPOCH, 100)).is_empty());
        let changes = o.ack(&WindowAck::new(DEVICE, EPOCH, 3));
        assert_eq!(
            changes,
            vec![
                OutboxChange::Delete { seq: 1 },
                OutboxChange::Delete { seq: 3 }
            ]
        );
        t.apply(changes);
        assert_eq!(ranges(&o), vec![(4, 4), (5, 5)]);
        assert_table_matches(&t, &o);
        // Numbering carries on after acks.
        o.push(window(1)).unwrap();
        assert_eq!(ranges(&o).last(), Some(&(6, 6)));
    }

    #[test]
    fn an_ack_beyond_anything_numbered_moves_numbering_past_it() {
        let mut o = Outbox::new(DEVICE, EPOCH, limits_for(4));
        o.push(window(1)).unwrap();
        // The hub has stored up to 40 of this epoch: the table was restored
        // from an old backup.
        let changes = o.ack(&WindowAck::new(DEVICE, EPOCH, 40));
        assert_eq!(
            changes,
            vec![
                OutboxChange::Delete { seq: 1 },
                OutboxChange::Meta(o.meta())
            ]
        );
        o.push(window(1)).unwrap();
        assert_eq!(ranges(&o), vec![(41, 41)]);
    }

    #[test]
    fn a_window_larger_than_the_budget_is_dropped_and_counted() {
        let mut o = Outbox::new(DEVICE, EPOCH, limits_for(1));
        o.push(window(10)).unwrap();
        let mut big = window(10);
        for i in 0..20 {
            big.endpoints[0].errors.insert(format!("kind-{i}"), 1);
        }
        let changes = o.push(big).unwrap();
        assert_eq!(o.dropped(), 1);
        assert_eq!(changes, vec![OutboxChange::Meta(o.meta())]);
        assert_eq!(ranges(&o), vec![(1, 1)]);
        // The dropped window used no number.
        o.push(window(10)).unwrap();
        assert_eq!(o.meta().next_seq, 3);
    }

    #[test]
    fn when_nothing_can_merge_the_oldest_window_is_dropped() {
        // Room for one window only: two cannot merge into one that fits
        // alongside nothing else, so the older goes.
        let mut o = Outbox::new(DEVICE, EPOCH, limits_for(1));
        o.push(window(10)).unwrap();
        let mut different = window(10);
        different.endpoints[0].endpoint = "other".into();
        different.drift[0].endpoint = "other".into();
        o.push(different).unwrap();
        assert_eq!(o.dropped(), 1);
        assert_eq!(ranges(&o), vec![(2, 2)]);
        assert!(o.total_bytes() <= o.budget());
    }

    #[test]
    fn an_invalid_window_is_refused_without_using_a_number() {
        let mut o = Outbox::new(DEVICE, EPOCH, limits_for(4));
        let mut bad = window(1);
        bad.endpoints.push(bad.endpoints[0].clone());
        assert!(matches!(o.push(bad), Err(OutboxError::Invalid(_))));
        assert_eq!(o.meta().next_seq, 1);
        assert!(o.is_empty());
    }

    #[test]
    fn restore_rebuilds_the_outbox_from_its_table() {
        let limits = limits_for(4);
        let mut o = Outbox::new(DEVICE, EPOCH, limits);
        let mut t = Table::default();
        for _ in 0..7 {
            t.apply(o.push(window(3)).unwrap());
        }
        t.apply(o.ack(&WindowAck::new(DEVICE, EPOCH, 2)));
        let meta = t.meta.unwrap();
        let (mut back, changes) = Outbox::restore(DEVICE, limits, meta, t.rows.clone());
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(ranges(&back), ranges(&o));
        assert_eq!(back.meta(), o.meta());
        // Numbering resumes after the restored windows.
        back.push(window(1)).unwrap();
        assert_eq!(back.pending().last().map(|p| p.first_seq), Some(8));
    }

    #[test]
    fn restore_deletes_and_counts_records_that_do_not_belong() {
        let limits = limits_for(10);
        let mut o = Outbox::new(DEVICE, EPOCH, limits);
        let mut t = Table::default();
        for _ in 0..3 {
            t.apply(o.push(window(3)).unwrap());
        }
        t.rows.insert(10, b"garbage".to_vec());
        let moved = t.rows[&2].clone();
        t.rows.insert(20, moved);
        let (back, changes) = Outbox::restore(DEVICE, limits, t.meta.unwrap(), t.rows.clone());
        assert_eq!(ranges(&back), vec![(1, 1), (2, 2), (3, 3)]);
        assert_eq!(back.dropped(), 2);
        assert!(changes.contains(&OutboxChange::Delete { seq: 10 }));
        assert!(changes.contains(&OutboxChange::Delete { seq: 20 }));
        t.apply(changes);
        assert_table_matches(&t, &back);
        assert_eq!(back.meta().next_seq, 4);
    }

    /// One step of the simulated agent/hub pair.
    #[derive(Debug, Clone)]
    enum Step {
        /// The agent finishes a window with this many requests.
        Push(u64),
        /// The agent publishes every pending window; the hub gets them or not
        /// (broker down), and its acks reach the agent or not.
        Publish { delivered: bool, acked: bool },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (1u64..50).prop_map(Step::Push),
            1 => (any::<bool>(), any::<bool>())
                .prop_map(|(delivered, acked)| Step::Publish { delivered, acked }),
        ]
    }

    /// The hub's ingest: dedupe, store (here: add up requests), ack.
    #[derive(Default)]
    struct Hub {
        dedupe: Dedupe,
        requests: u64,
        overlaps: u64,
    }

    impl Hub {
        fn ingest(&mut self, bytes: &[u8], limits: &Limits) -> WindowAck {
            let w = TelemetryWindow::decode(bytes, limits).unwrap();
            let verdict = self.dedupe.check(&w.key());
            if verdict.accept() {
                self.requests += w.requests_total();
                self.dedupe.record(&w.key());
            }
            if matches!(verdict, Verdict::Overlap { .. }) {
                self.overlaps += 1;
            }
            self.dedupe.ack(&w.device, w.epoch)
        }
    }

    fn publish(o: &mut Outbox, hub: &mut Hub, delivered: bool, acked: bool) {
        let pending: Vec<(u64, Vec<u8>)> = o
            .pending()
            .map(|p| (p.last_seq, p.bytes.to_vec()))
            .collect();
        for (last_seq, bytes) in pending {
            o.mark_published(last_seq);
            if delivered {
                let ack = hub.ingest(&bytes, &o.limits);
                if acked {
                    o.ack(&ack);
                }
            }
        }
    }

    proptest! {
        /// Whatever the outages, every request pushed reaches the hub; exactly
        /// once unless a merged window partially overlapped stored ones.
        #[test]
        fn every_window_reaches_the_hub_through_outages_and_compaction(
            steps in proptest::collection::vec(step(), 1..120),
        ) {
            let mut o = Outbox::new(DEVICE, EPOCH, limits_for(6));
            let mut hub = Hub::default();
            let mut pushed = 0;
            for s in steps {
                match s {
                    Step::Push(r) => {
                        o.push(window(r)).unwrap();
                        pushed += r;
                        prop_assert!(o.total_bytes() <= o.budget());
                    }
                    Step::Publish { delivered, acked } => publish(&mut o, &mut hub, delivered, acked),
                }
            }
            publish(&mut o, &mut hub, true, true);
            prop_assert!(o.is_empty());
            prop_assert_eq!(o.dropped(), 0);
            if hub.overlaps == 0 {
                prop_assert_eq!(hub.requests, pushed);
            } else {
                prop_assert!(hub.requests > pushed);
            }
        }
    }
}
