//! Device presence as MQTT tells it: each agent's retained `online` status
//! and its `offline` last will, and when a window last arrived.
//!
//! QUIC presence lives in the registry (`DeviceView::connected`,
//! `last_seen`); a device is online when either says so. Only changes of
//! that combined presence raise `device.online` / `device.offline`, and
//! retained statuses the broker replays when the hub (re)subscribes raise
//! nothing: they are the state, not a change.

use std::collections::HashMap;

use flotilla_protocol::time::UtcTime;

/// What MQTT says about one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MqttPresence {
    /// Its status topic says `online`.
    pub(crate) online: bool,
    /// When the hub last heard from it over MQTT (status or window).
    pub(crate) last_heard: UtcTime,
}

/// Most devices tracked; past it, statuses of new devices are ignored.
const MAX_DEVICES: usize = 1_000_000;

/// MQTT presence per device.
#[derive(Debug, Default)]
pub(crate) struct PresenceMap {
    devices: HashMap<String, MqttPresence>,
}

impl PresenceMap {
    /// A status message; returns the previous state.
    pub(crate) fn status(
        &mut self,
        device: &str,
        online: bool,
        now: UtcTime,
    ) -> Option<MqttPresence> {
        if !self.devices.contains_key(device) && self.devices.len() >= MAX_DEVICES {
            return None;
        }
        self.devices.insert(
            device.to_string(),
            MqttPresence {
                online,
                last_heard: now,
            },
        )
    }

    /// A window arrived: the device is there.
    pub(crate) fn heard(&mut self, device: &str, now: UtcTime) {
        if let Some(p) = self.devices.get_mut(device) {
            p.last_heard = now;
        } else if self.devices.len() < MAX_DEVICES {
            self.devices.insert(
                device.to_string(),
                MqttPresence {
                    online: false,
                    last_heard: now,
                },
            );
        }
    }

    /// What MQTT says about `device`.
    pub(crate) fn get(&self, device: &str) -> Option<MqttPresence> {
        self.devices.get(device).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_windows_update_presence() {
        let mut m = PresenceMap::default();
        assert_eq!(m.status("d1", true, UtcTime(1)), None);
        m.heard("d1", UtcTime(5));
        assert_eq!(
            m.get("d1"),
            Some(MqttPresence {
                online: true,
                last_heard: UtcTime(5)
            })
        );
        let before = m.status("d1", false, UtcTime(9)).unwrap();
        assert!(before.online);
        assert!(!m.get("d1").unwrap().online);
    }
}
