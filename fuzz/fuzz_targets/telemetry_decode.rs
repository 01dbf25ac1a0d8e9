//! Proves that the telemetry decoders the hub runs on bytes from the MQTT
//! broker (windows, acks, events) never panic, and that a window that decodes
//! re-encodes to bytes that decode to the same window and merges with itself
//! renumbered without panicking. The first input byte picks the record.
#![no_main]

use flotilla_protocol::telemetry::{Event, TelemetryWindow, WindowAck};
use flotilla_protocol::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits::default();
    match kind % 3 {
        0 => {
            if let Ok(w) = TelemetryWindow::decode(rest, &limits) {
                let again = TelemetryWindow::decode(&w.encode(), &limits);
                assert_eq!(again.as_ref(), Ok(&w), "a decoded window round-trips");
                let mut next = w.clone();
                let width = w.last_seq - w.first_seq;
                next.first_seq = w.last_seq.saturating_add(1);
                next.last_seq = next.first_seq.saturating_add(width);
                let _ = w.merged(&next);
            }
        }
        1 => {
            let _ = WindowAck::decode(rest, &limits);
        }
        _ => {
            let _ = Event::decode(rest, &limits);
        }
    }
});
