//! Proves that `flotilla_runtime::model_signature` never panics on any bytes:
//! every malformed model is a `ModelError`.
//!
//! Input: a mode byte, then a raw model (even mode) or one edit of a small
//! genuine MLP from `flotilla_runtime::generate::mlp` (odd mode); see
//! `flotilla_fuzz::input`.
#![no_main]

use flotilla_fuzz::genuine::genuine_model;
use flotilla_fuzz::input::shape;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let input = shape(mode, rest, genuine_model());
    let _ = flotilla_runtime::model_signature(input.bytes());
});
