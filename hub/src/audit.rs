//! The audit log's hash chain: how an entry's hash is computed and how a chain
//! is checked. Storage of entries is the store's; this module is pure.
//!
//! Each entry's hash covers its sequence number, time, actor, action, object,
//! reason and the previous entry's hash, each length-prefixed so that no field
//! can bleed into another. Editing, removing or reordering any entry breaks the
//! chain at that entry's sequence number.

use flotilla_protocol::digest::Sha256Hasher;

use crate::api::types::{AuditEntry, AuditVerification};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An audit entry before it is chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDraft {
    /// Token name of who did it.
    pub actor: String,
    /// What (`model.register`).
    pub action: String,
    /// On what (`model/fraud/3`).
    pub object: String,
    /// Why.
    pub reason: String,
}

impl AuditDraft {
    /// A draft.
    pub fn new(actor: &str, action: &str, object: impl Into<String>, reason: &str) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            object: object.into(),
            reason: reason.into(),
        }
    }

    /// Chains this draft after `prev` (None for the first entry) at `time`.
    pub fn chain(self, prev: Option<&AuditEntry>, time: String) -> AuditEntry {
        let (seq, prev_hash) = match prev {
            Some(p) => (p.seq + 1, p.hash.clone()),
            None => (1, GENESIS.to_string()),
        };
        let mut e = AuditEntry {
            seq,
            time,
            actor: self.actor,
            action: self.action,
            object: self.object,
            reason: self.reason,
            prev_hash,
            hash: String::new(),
        };
        e.hash = entry_hash(&e);
        e
    }
}

/// The hash of an entry's fields other than `hash`.
pub fn entry_hash(e: &AuditEntry) -> String {
    let mut h = Sha256Hasher::default();
    h.update(&e.seq.to_le_bytes());
    for field in [
        &e.time,
        &e.actor,
        &e.action,
        &e.object,
        &e.reason,
        &e.prev_hash,
    ] {
        h.update(&(field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    h.finish().to_hex()
}

/// Checks a chain given in storage order, naming the first bad entry.
pub fn verify_chain<'a>(entries: impl IntoIterator<Item = &'a AuditEntry>) -> AuditVerification {
    let mut prev: Option<&AuditEntry> = None;
    let mut count = 0u64;
    for e in entries {
        count += 1;
        let expected_seq = prev.map_or(1, |p| p.seq + 1);
        let expected_prev = prev.map_or(GENESIS, |p| p.hash.as_str());
        let problem = if e.seq != expected_seq {
            Some(format!(
                "sequence {} follows {} (an entry was removed or reordered)",
                e.seq,
                expected_seq - 1
            ))
        } else if e.prev_hash != expected_prev {
            Some("prev_hash does not match the previous entry (an entry was removed, reordered or edited)".into())
        } else if entry_hash(e) != e.hash {
            Some("hash does not match the entry's contents (the entry was edited)".into())
        } else {
            None
        };
        if let Some(reason) = problem {
            return AuditVerification {
                ok: false,
                entries: count,
                first_bad_seq: Some(expected_seq),
                reason: Some(reason),
            };
        }
        prev = Some(e);
    }
    AuditVerification {
        ok: true,
        entries: count,
        first_bad_seq: None,
        reason: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let d = AuditDraft::new("alice", "model.register", format!("model/m/{i}"), "because");
            let e = d.chain(out.last(), format!("2026-01-01T00:00:0{i}Z"));
            out.push(e);
        }
        out
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let v = verify_chain(&chain(5));
        assert!(v.ok);
        assert_eq!(v.entries, 5);
    }

    #[test]
    fn an_edited_entry_is_named() {
        let mut c = chain(5);
        c[2].reason = "nothing to see".into();
        let v = verify_chain(&c);
        assert_eq!(v.first_bad_seq, Some(3));
        assert!(!v.ok);
    }

    #[test]
    fn a_removed_entry_is_named() {
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(verify_chain(&c).first_bad_seq, Some(2));
    }

    #[test]
    fn reordered_entries_are_named() {
        let mut c = chain(5);
        c.swap(3, 4);
        assert_eq!(verify_chain(&c).first_bad_seq, Some(4));
    }

    #[test]
    fn a_rehashed_edit_still_breaks_the_next_link() {
        let mut c = chain(5);
        c[1].actor = "mallory".into();
        c[1].hash = entry_hash(&c[1]);
        assert_eq!(verify_chain(&c).first_bad_seq, Some(3));
    }

    #[test]
    fn fields_cannot_bleed_into_each_other() {
        let a = AuditDraft::new("ab", "c", "o", "r").chain(None, "t".into());
        let b = AuditDraft::new("a", "bc", "o", "r").chain(None, "t".into());
        assert_ne!(a.hash, b.hash);
    }
}
