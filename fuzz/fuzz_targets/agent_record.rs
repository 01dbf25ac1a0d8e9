//! Proves that decoding the agent's persisted record (read back from its own
//! disk after a crash, so possibly torn) never panics, and that whatever decodes
//! encodes back to a record that decodes to the same value.
#![no_main]

use flotilla_protocol::reconcile::AgentRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = AgentRecord::decode(data) {
        let again = AgentRecord::decode(&r.encode()).expect("a re-encoded record decodes");
        assert_eq!(again.encode(), r.encode());
    }
});
