//! Proves that director-document verification never panics on any bytes and
//! never accepts a document the genuine director key did not sign (the fuzzer
//! cannot sign, and the genuine repository holds no director document, so every
//! input must be refused).
#![no_main]

use flotilla_fuzz::genuine::{genuine, NOW};
use flotilla_protocol::director::verify_director;
use flotilla_protocol::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let g = genuine();
    let r = verify_director(data, &g.trusted, "device-1", None, NOW, &Limits::default());
    assert!(r.is_err(), "an unsigned director document was accepted");
});
