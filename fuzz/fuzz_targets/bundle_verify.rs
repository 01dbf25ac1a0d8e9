//! Proves that `verify_bundle` and `inspect_bundle` never panic on any byte
//! stream, and that `verify_bundle` accepts nothing but the genuine bundle's
//! content: when it succeeds, the manifest, the trusted targets and every chunk
//! it handed out are the genuine ones. Bytes the fuzzer makes up cannot carry
//! ed25519 signatures by the genuine keys, so for them verification must fail.
//!
//! Input: a mode byte, then a raw bundle (even mode) or one edit of the genuine
//! bundle (odd mode), see `flotilla_fuzz::input`. Odd mode reaches the chunk
//! checks behind the TUF workflow, which made-up bytes never pass.
#![no_main]

use flotilla_fuzz::genuine::{genuine, NOW};
use flotilla_fuzz::input::shape;
use flotilla_protocol::bundle::{inspect_bundle, verify_bundle};
use flotilla_protocol::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let g = genuine();
    let input = shape(mode, rest, &g.bundle);
    let bundle = input.bytes();
    let limits = Limits::default();

    let _ = inspect_bundle(bundle, &limits);

    let mut handed_out = Vec::new();
    let result = verify_bundle(bundle, &g.root_v1, NOW, &limits, |_, chunk| {
        handed_out.extend_from_slice(chunk);
        Ok(())
    });
    if let Ok(v) = result {
        assert_eq!(v.manifest, g.manifest, "verified manifest is genuine");
        assert_eq!(
            v.manifest_bytes, g.manifest_bytes,
            "manifest bytes are genuine"
        );
        assert_eq!(
            v.trusted.targets(),
            g.trusted.targets(),
            "targets are genuine"
        );
        assert_eq!(handed_out, g.payload, "every chunk handed out is genuine");
        assert_eq!(v.bytes, g.payload.len() as u64, "byte count is genuine");
    }
    // Off the accept path, chunks handed out before the failure were each
    // checked against the signed manifest; the bundle as a whole is not trusted.
});
