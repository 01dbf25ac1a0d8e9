//! MQTT topic names, defined once for the agent, the hub and broker ACLs.
//!
//! ```text
//! flotilla/v1/{fleet}/{device}/telemetry   agent -> hub   TelemetryWindow, QoS 1
//! flotilla/v1/{fleet}/{device}/ack         hub -> agent   WindowAck, QoS 1
//! flotilla/v1/{fleet}/{device}/status      agent, retained "online"; last will "offline"
//! flotilla/v1/{fleet}/events/{type}        hub -> anyone  Event, QoS 1
//! ```
//!
//! Every name spliced into a topic is one topic level: non-empty, at most
//! [`MAX_SEGMENT_LEN`] bytes, and free of the MQTT wildcards `+` and `#`, the
//! level separator `/`, NUL and other control characters, so that no device
//! can name a topic outside its own subtree (or a filter matching others'). A
//! device cannot be called `events`, which would put its topics among the
//! fleet's event topics.

/// First two levels of every Flotilla topic.
pub const ROOT: &str = "flotilla/v1";

/// The level under a fleet that holds the event topics; no device may use it.
pub const EVENTS_LEVEL: &str = "events";

/// Longest topic level accepted, in bytes (the whole topic stays far below
/// MQTT's 65,535).
pub const MAX_SEGMENT_LEN: usize = 256;

/// Retained payload of the status topic while the agent is connected.
pub const STATUS_ONLINE: &[u8] = b"online";

/// Payload of the status topic's last will, published by the broker when the
/// agent goes away without a goodbye (and by the agent on a clean shutdown).
pub const STATUS_OFFLINE: &[u8] = b"offline";

/// A name that cannot be a topic level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The name is empty.
    #[error("{what} is empty")]
    Empty {
        /// Which name.
        what: &'static str,
    },
    /// The name is longer than [`MAX_SEGMENT_LEN`].
    #[error("{what} is {len} bytes, limit is {MAX_SEGMENT_LEN}")]
    TooLong {
        /// Which name.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The name contains a wildcard, separator or control character.
    #[error("{what} contains {found:?}, which MQTT topic levels cannot")]
    Forbidden {
        /// Which name.
        what: &'static str,
        /// The first offending character.
        found: char,
    },
    /// The name is reserved ([`EVENTS_LEVEL`] as a device id).
    #[error("{what} {name:?} is reserved")]
    Reserved {
        /// Which name.
        what: &'static str,
        /// The name.
        name: String,
    },
}

/// Checks that `name` can be one topic level.
pub fn check_segment(what: &'static str, name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty { what });
    }
    if name.len() > MAX_SEGMENT_LEN {
        return Err(TopicError::TooLong {
            what,
            len: name.len(),
        });
    }
    if let Some(found) = name
        .chars()
        .find(|c| matches!(c, '+' | '#' | '/') || c.is_control())
    {
        return Err(TopicError::Forbidden { what, found });
    }
    Ok(())
}

/// Checks that `device` can name a device's topics.
pub fn check_device(device: &str) -> Result<(), TopicError> {
    check_segment("device id", device)?;
    if device == EVENTS_LEVEL {
        return Err(TopicError::Reserved {
            what: "device id",
            name: device.into(),
        });
    }
    Ok(())
}

fn device_topic(fleet: &str, device: &str, leaf: &str) -> Result<String, TopicError> {
    check_segment("fleet", fleet)?;
    check_device(device)?;
    Ok(format!("{ROOT}/{fleet}/{device}/{leaf}"))
}

/// Where `device` publishes its telemetry windows.
pub fn window(fleet: &str, device: &str) -> Result<String, TopicError> {
    device_topic(fleet, device, "telemetry")
}

/// Where the hub acknowledges `device`'s windows.
pub fn ack(fleet: &str, device: &str) -> Result<String, TopicError> {
    device_topic(fleet, device, "ack")
}

/// `device`'s retained online/offline status (and its last will).
pub fn status(fleet: &str, device: &str) -> Result<String, TopicError> {
    device_topic(fleet, device, "status")
}

/// Where the hub publishes events of `event_type` (`deployment.activated` …).
pub fn event(fleet: &str, event_type: &str) -> Result<String, TopicError> {
    check_segment("fleet", fleet)?;
    check_segment("event type", event_type)?;
    Ok(format!("{ROOT}/{fleet}/{EVENTS_LEVEL}/{event_type}"))
}

/// The hub's subscription filter for every device's windows.
pub fn all_windows(fleet: &str) -> Result<String, TopicError> {
    check_segment("fleet", fleet)?;
    Ok(format!("{ROOT}/{fleet}/+/telemetry"))
}

/// The hub's subscription filter for every device's status.
pub fn all_status(fleet: &str) -> Result<String, TopicError> {
    check_segment("fleet", fleet)?;
    Ok(format!("{ROOT}/{fleet}/+/status"))
}

/// A subscription filter for every event of the fleet.
pub fn all_events(fleet: &str) -> Result<String, TopicError> {
    check_segment("fleet", fleet)?;
    Ok(format!("{ROOT}/{fleet}/{EVENTS_LEVEL}/#"))
}

/// A Flotilla topic, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic<'a> {
    /// A device's telemetry windows.
    Window {
        /// Fleet.
        fleet: &'a str,
        /// Device id: the only one the broker lets publish here, so the hub
        /// trusts it over the id inside the payload.
        device: &'a str,
    },
    /// Acks for a device.
    Ack {
        /// Fleet.
        fleet: &'a str,
        /// Device id.
        device: &'a str,
    },
    /// A device's status.
    Status {
        /// Fleet.
        fleet: &'a str,
        /// Device id.
        device: &'a str,
    },
    /// An event.
    Event {
        /// Fleet.
        fleet: &'a str,
        /// Event type.
        event_type: &'a str,
    },
}

/// Parses a topic a message arrived on; `None` if it is not one of ours.
pub fn parse(topic: &str) -> Option<Topic<'_>> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let mut levels = rest.split('/');
    let (fleet, second, leaf) = (levels.next()?, levels.next()?, levels.next()?);
    if levels.next().is_some() || check_segment("fleet", fleet).is_err() {
        return None;
    }
    if second == EVENTS_LEVEL {
        check_segment("event type", leaf).ok()?;
        return Some(Topic::Event {
            fleet,
            event_type: leaf,
        });
    }
    check_device(second).ok()?;
    let device = second;
    match leaf {
        "telemetry" => Some(Topic::Window { fleet, device }),
        "ack" => Some(Topic::Ack { fleet, device }),
        "status" => Some(Topic::Status { fleet, device }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_built_under_the_fleet_and_device() {
        assert_eq!(
            window("acme", "dev-1").unwrap(),
            "flotilla/v1/acme/dev-1/telemetry"
        );
        assert_eq!(ack("acme", "dev-1").unwrap(), "flotilla/v1/acme/dev-1/ack");
        assert_eq!(
            status("acme", "dev-1").unwrap(),
            "flotilla/v1/acme/dev-1/status"
        );
        assert_eq!(
            event("acme", "drift.detected").unwrap(),
            "flotilla/v1/acme/events/drift.detected"
        );
        assert_eq!(all_windows("acme").unwrap(), "flotilla/v1/acme/+/telemetry");
        assert_eq!(all_events("acme").unwrap(), "flotilla/v1/acme/events/#");
    }

    #[test]
    fn wildcards_separators_and_nul_are_refused_in_every_name() {
        for bad in ["a+b", "#", "a/b", "a\0b", "", "tab\there"] {
            assert!(window("acme", bad).is_err(), "device {bad:?}");
            assert!(window(bad, "dev").is_err(), "fleet {bad:?}");
            assert!(event("acme", bad).is_err(), "type {bad:?}");
        }
        assert!(window("acme", &"d".repeat(MAX_SEGMENT_LEN + 1)).is_err());
        assert_eq!(
            status("acme", "events"),
            Err(TopicError::Reserved {
                what: "device id",
                name: "events".into()
            })
        );
    }

    #[test]
    fn built_topics_parse_back() {
        let w = window("acme", "dev-1").unwrap();
        assert_eq!(
            parse(&w),
            Some(Topic::Window {
                fleet: "acme",
                device: "dev-1"
            })
        );
        let a = ack("acme", "dev-1").unwrap();
        assert!(matches!(parse(&a), Some(Topic::Ack { .. })));
        let e = event("acme", "alert.fired").unwrap();
        assert_eq!(
            parse(&e),
            Some(Topic::Event {
                fleet: "acme",
                event_type: "alert.fired"
            })
        );
        for other in [
            "flotilla/v1/acme/dev-1/other",
            "flotilla/v1/acme/dev-1/telemetry/x",
            "flotilla/v2/acme/dev-1/telemetry",
            "flotilla/v1/acme",
            "flotilla/v1//dev-1/ack",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }
}
