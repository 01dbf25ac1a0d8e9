//! Proves that `BundleManifest::decode` never panics on any bytes, and that every
//! manifest it accepts round-trips: its encoding decodes again, to an equal
//! manifest that encodes to the same bytes.
//!
//! Input: a mode byte, then raw CBOR (even mode) or one edit of the genuine
//! manifest (odd mode); see `flotilla_fuzz::input`.
#![no_main]

use flotilla_fuzz::genuine::genuine;
use flotilla_fuzz::input::shape;
use flotilla_protocol::manifest::BundleManifest;
use flotilla_protocol::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let input = shape(mode, rest, &genuine().manifest_bytes);
    let limits = Limits::default();
    let Ok(first) = BundleManifest::decode(input.bytes(), &limits) else {
        return;
    };
    let encoded = first.encode();
    let second = match BundleManifest::decode(&encoded, &limits) {
        Ok(m) => m,
        Err(e) => panic!("an accepted manifest re-encodes to bytes it rejects: {e}"),
    };
    assert_eq!(
        second.encode(),
        encoded,
        "encoding is stable over a round trip"
    );
    // A NaN in the drift baseline (allowed where no comparison rejects it) makes
    // a manifest unequal to itself; the encodings compared above still agree.
    #[allow(clippy::eq_op)]
    let comparable = first == first;
    if comparable {
        assert_eq!(first, second, "a decoded manifest survives a round trip");
    }
});
