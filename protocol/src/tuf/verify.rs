//! Signature thresholds, hashes and lengths: the checks every TUF step reuses.

use std::collections::BTreeSet;

use super::keys::KeyId;
use super::metadata::{Envelope, Role, Root};
use super::TufError;
use crate::digest::Sha256Digest;
use crate::limits::Limits;

/// Checks that `env` carries valid signatures from at least `threshold` distinct
/// keys that `root` authorises for `role`.
///
/// A key is counted once however many times it signs; signatures by unknown or
/// unauthorised keys and invalid signatures are ignored, not fatal (TUF 5.3.4).
pub fn check_threshold(
    env: &Envelope,
    root: &Root,
    role: Role,
    limits: &Limits,
) -> Result<(), TufError> {
    let keys = root.role(role)?;
    if keys.threshold == 0 {
        return Err(TufError::ZeroThreshold(role));
    }
    let msg = env.signed_bytes(role)?;
    let authorised: BTreeSet<&KeyId> = keys.keyids.iter().collect();
    let mut counted: BTreeSet<&KeyId> = BTreeSet::new();
    for sig in env.signatures.iter().take(limits.max_signatures) {
        if counted.contains(&sig.keyid) || !authorised.contains(&sig.keyid) {
            continue;
        }
        let Some(key) = root.keys.get(&sig.keyid) else {
            continue;
        };
        let Ok(raw) = hex::decode(&sig.sig) else {
            continue;
        };
        if key.verify(&msg, &raw) {
            counted.insert(&sig.keyid);
        }
    }
    if (counted.len() as u64) < keys.threshold {
        return Err(TufError::Threshold {
            role,
            valid: counted.len() as u64,
            threshold: keys.threshold,
        });
    }
    Ok(())
}

/// Checks a root body for internal consistency: every key id is the hash of its
/// key (so one key cannot be counted twice under two ids), every role present
/// with a reachable, non-zero threshold.
pub fn check_root_shape(root: &Root) -> Result<(), TufError> {
    for (id, key) in &root.keys {
        if key.key_id() != *id {
            return Err(TufError::KeyIdMismatch { keyid: id.clone() });
        }
    }
    for role in Role::ALL {
        let keys = root.role(role)?;
        let distinct: BTreeSet<&KeyId> = keys
            .keyids
            .iter()
            .filter(|k| root.keys.contains_key(*k))
            .collect();
        if keys.threshold == 0 {
            return Err(TufError::ZeroThreshold(role));
        }
        if (distinct.len() as u64) < keys.threshold {
            return Err(TufError::UnreachableThreshold {
                role,
                keys: distinct.len() as u64,
                threshold: keys.threshold,
            });
        }
    }
    Ok(())
}

/// Checks `bytes` against an expected length and set of hashes. Flotilla demands
/// `sha256` whenever hashes are given; unknown algorithms are ignored.
pub fn check_length_and_hashes(
    what: &str,
    bytes: &[u8],
    length: Option<u64>,
    hashes: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<(), TufError> {
    if let Some(expected) = length {
        if bytes.len() as u64 != expected {
            return Err(TufError::LengthMismatch {
                what: what.into(),
                expected,
                actual: bytes.len() as u64,
            });
        }
    }
    if let Some(hashes) = hashes {
        let Some(expected) = hashes.get("sha256") else {
            return Err(TufError::MissingSha256 { what: what.into() });
        };
        let actual = Sha256Digest::of(bytes).to_hex();
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(TufError::HashMismatch {
                what: what.into(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(())
}
