//! [`Event`]: a lifecycle event as the hub publishes it on the fleet's MQTT
//! events topic (`flotilla/v1/{fleet}/events/{type}`).
//!
//! The record is CBOR like every telemetry record; its `data` is JSON text, so
//! that the same payload can be handed unchanged to webhooks, the event
//! stream and the REST API. This module defines the record and the event
//! type names; storing, signing and delivering events is the hub's.

use serde::{Deserialize, Serialize};

use super::{check_count, codec, invalid, topics, TelemetryError, TELEMETRY_SCHEMA_VERSION};
use crate::limits::Limits;
use crate::time::UtcTime;

/// A model version was registered.
pub const MODEL_REGISTERED: &str = "model.registered";
/// A model version was deleted.
pub const MODEL_VERSION_DELETED: &str = "model.version.deleted";
/// An endpoint's definition changed.
pub const ENDPOINT_UPDATED: &str = "endpoint.updated";
/// A deployment went live on a device.
pub const DEPLOYMENT_ACTIVATED: &str = "deployment.activated";
/// A deployment failed to go live on a device.
pub const DEPLOYMENT_FAILED: &str = "deployment.failed";
/// A device rolled a deployment back after a failed trial.
pub const DEPLOYMENT_ROLLED_BACK: &str = "deployment.rolled_back";
/// A device enrolled.
pub const DEVICE_ENROLLED: &str = "device.enrolled";
/// A device came online.
pub const DEVICE_ONLINE: &str = "device.online";
/// A device went offline.
pub const DEVICE_OFFLINE: &str = "device.offline";
/// A device's certificate was revoked.
pub const DEVICE_REVOKED: &str = "device.revoked";
/// Inputs of a deployment drifted from its baseline.
pub const DRIFT_DETECTED: &str = "drift.detected";
/// An alert rule fired.
pub const ALERT_FIRED: &str = "alert.fired";
/// A fired alert resolved.
pub const ALERT_RESOLVED: &str = "alert.resolved";

/// Every event type the hub emits.
pub const EVENT_TYPES: [&str; 13] = [
    MODEL_REGISTERED,
    MODEL_VERSION_DELETED,
    ENDPOINT_UPDATED,
    DEPLOYMENT_ACTIVATED,
    DEPLOYMENT_FAILED,
    DEPLOYMENT_ROLLED_BACK,
    DEVICE_ENROLLED,
    DEVICE_ONLINE,
    DEVICE_OFFLINE,
    DEVICE_REVOKED,
    DRIFT_DETECTED,
    ALERT_FIRED,
    ALERT_RESOLVED,
];

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Always [`TELEMETRY_SCHEMA_VERSION`] for events this code accepts.
    pub schema_version: u32,
    /// The hub's id for the event, increasing in the order events were
    /// recorded; receivers deduplicate redeliveries by it.
    pub id: u64,
    /// Event type, one of [`EVENT_TYPES`] (others are accepted, for newer hubs).
    #[serde(rename = "type")]
    pub event_type: String,
    /// When it happened (the hub's clock).
    pub time: UtcTime,
    /// What it is about: `device/dev-1`, `model/fraud/3`, `endpoint/fraud` ….
    pub object: String,
    /// Details, as JSON text.
    // invariant: valid JSON.
    pub data: String,
}

impl Event {
    /// An event with `data` serialised to JSON text.
    pub fn new(
        id: u64,
        event_type: impl Into<String>,
        time: UtcTime,
        object: impl Into<String>,
        data: &serde_json::Value,
    ) -> Self {
        Self {
            schema_version: TELEMETRY_SCHEMA_VERSION,
            id,
            event_type: event_type.into(),
            time,
            object: object.into(),
            data: data.to_string(),
        }
    }

    /// The data, parsed.
    pub fn data_json(&self) -> Result<serde_json::Value, TelemetryError> {
        serde_json::from_str(&self.data).map_err(|e| invalid("event data", e.to_string()))
    }

    /// Encodes to CBOR.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes CBOR and validates it against `limits`.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, TelemetryError> {
        let e: Self = codec::decode("event", bytes, limits.max_telemetry_bytes)?;
        e.validate(limits)?;
        Ok(e)
    }

    /// Checks the type (a topic level), the object's length and the data
    /// (bounded, valid JSON).
    pub fn validate(&self, limits: &Limits) -> Result<(), TelemetryError> {
        topics::check_segment("event type", &self.event_type)
            .map_err(|e| invalid("event type", e.to_string()))?;
        check_count("event object", self.object.len(), limits.max_name_len)?;
        check_count(
            "event data bytes",
            self.data.len(),
            limits.max_event_data_bytes,
        )?;
        serde_json::from_str::<serde::de::IgnoredAny>(&self.data)
            .map_err(|e| invalid("event data", e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event::new(
            7,
            DRIFT_DETECTED,
            UtcTime(1_700_000_000),
            "endpoint/fraud",
            &serde_json::json!({"feature": "amount", "psi": 0.31}),
        )
    }

    #[test]
    fn an_event_round_trips_with_its_json_data() {
        let e = sample();
        let back = Event::decode(&e.encode(), &Limits::default()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.data_json().unwrap()["feature"], "amount");
    }

    #[test]
    fn bad_data_and_types_are_refused() {
        let limits = Limits::default();
        let mut e = sample();
        e.data = "{not json".into();
        assert!(Event::decode(&e.encode(), &limits).is_err());
        let mut e = sample();
        e.event_type = "alert/fired".into();
        assert!(Event::decode(&e.encode(), &limits).is_err());
        let e = sample();
        let tight = Limits {
            max_event_data_bytes: 4,
            ..limits
        };
        assert!(Event::decode(&e.encode(), &tight).is_err());
    }

    #[test]
    fn every_event_type_is_a_valid_topic_level() {
        for t in EVENT_TYPES {
            assert!(topics::event("acme", t).is_ok(), "{t}");
        }
    }
}
