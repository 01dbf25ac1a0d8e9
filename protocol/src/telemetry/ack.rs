//! [`WindowAck`]: the hub's end-to-end acknowledgement of a device's windows.
//!
//! The hub publishes one on the device's ack topic after it has stored a
//! window durably (or recognised it as a duplicate). It is cumulative: every
//! window of that outbox epoch whose range ends at or below `up_to_seq` is in
//! the hub's store, and the agent's outbox may forget it. An ack for another
//! epoch is about a previous life of the agent's outbox and is ignored.

use serde::{Deserialize, Serialize};

use super::{codec, topics, TelemetryError, TELEMETRY_SCHEMA_VERSION};
use crate::limits::Limits;

/// The hub has stored every window of `device`'s outbox `epoch` up to
/// `up_to_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowAck {
    /// Always [`TELEMETRY_SCHEMA_VERSION`] for acks this code accepts.
    pub schema_version: u32,
    /// Device id.
    pub device: String,
    /// Outbox epoch the sequence numbers belong to.
    pub epoch: u64,
    /// Highest sequence number stored; windows ending at or below it are done.
    pub up_to_seq: u64,
}

impl WindowAck {
    /// An ack for `device`'s epoch `epoch` up to `up_to_seq`.
    pub fn new(device: impl Into<String>, epoch: u64, up_to_seq: u64) -> Self {
        Self {
            schema_version: TELEMETRY_SCHEMA_VERSION,
            device: device.into(),
            epoch,
            up_to_seq,
        }
    }

    /// Encodes to CBOR.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes CBOR and validates it against `limits`.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, TelemetryError> {
        let a: Self = codec::decode("window ack", bytes, limits.max_telemetry_bytes)?;
        topics::check_device(&a.device).map_err(|e| super::invalid("device id", e.to_string()))?;
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_round_trips_and_checks_its_device_id() {
        let a = WindowAck::new("dev-1", 9, 41);
        assert_eq!(WindowAck::decode(&a.encode(), &Limits::default()), Ok(a));
        let bad = WindowAck::new("dev/1", 9, 41);
        assert!(WindowAck::decode(&bad.encode(), &Limits::default()).is_err());
        assert!(WindowAck::decode(&[0xff, 0x00], &Limits::default()).is_err());
    }
}
