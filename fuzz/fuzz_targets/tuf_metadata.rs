//! Proves that the TUF update workflow (`Updater`) never panics whatever one of
//! its documents holds, and never trusts anything but the genuine repository:
//! when an update with one fuzzed document succeeds, the trusted root, timestamp,
//! snapshot and targets are the genuine ones (the fuzzer cannot sign, so it can
//! only re-encode a document whose signatures cover its canonical form).
//!
//! Input: a mode byte, then the document's bytes. Mode bit 0: raw bytes (0) or
//! one edit of the genuine document (1), see `flotilla_fuzz::input`. Mode bits
//! 1 and up, modulo 5, say which fetch gets them: `2.root.json`, timestamp,
//! snapshot, targets, or a `3.root.json` the genuine repository does not have.
#![no_main]

use flotilla_fuzz::genuine::{genuine, update};
use flotilla_fuzz::input::shape;
use flotilla_protocol::tuf::Fetch;
use libfuzzer_sys::fuzz_target;

/// The fetch whose answer the fuzz input replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replaced {
    Root2,
    Timestamp,
    Snapshot,
    Targets,
    Root3,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let g = genuine();
    let p = &g.publication;
    let (replaced, base): (Replaced, &[u8]) = match (mode >> 1) % 5 {
        0 => (Replaced::Root2, &g.root_v2),
        1 => (Replaced::Timestamp, &p.timestamp),
        2 => (Replaced::Snapshot, &p.snapshot),
        3 => (Replaced::Targets, &p.targets),
        _ => (Replaced::Root3, &g.root_v2),
    };
    let input = shape(mode, rest, base);
    let fuzzed = input.bytes();
    let answer = |which: Replaced, genuine: &[u8]| -> Option<Vec<u8>> {
        Some(if which == replaced { fuzzed } else { genuine }.to_vec())
    };
    let result = update(&g.root_v1, |f| match f {
        Fetch::Root { version: 2, .. } => answer(Replaced::Root2, &g.root_v2),
        Fetch::Root { version: 3, .. } if replaced == Replaced::Root3 => Some(fuzzed.to_vec()),
        Fetch::Root { .. } => None,
        Fetch::Timestamp { .. } => answer(Replaced::Timestamp, &p.timestamp),
        Fetch::Snapshot { .. } => answer(Replaced::Snapshot, &p.snapshot),
        Fetch::Targets { .. } => answer(Replaced::Targets, &p.targets),
    });
    let Ok(got) = result else {
        return;
    };
    let want = &g.trusted;
    // Root and timestamp are trusted for their signed body: their bytes may be a
    // re-encoding of the genuine document with the same canonical form.
    assert_eq!(got.root().body, want.root().body, "trusted root is genuine");
    assert_eq!(
        got.timestamp().map(|t| &t.body),
        want.timestamp().map(|t| &t.body),
        "trusted timestamp is genuine"
    );
    // Snapshot and targets are pinned by length and SHA-256: byte for byte.
    assert_eq!(
        got.snapshot(),
        want.snapshot(),
        "trusted snapshot is genuine"
    );
    assert_eq!(got.targets(), want.targets(), "trusted targets are genuine");
});
