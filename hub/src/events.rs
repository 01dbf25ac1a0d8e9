//! The in-process event bus: lifecycle events (`model.registered`,
//! `model.version.deleted`, …) for later publishers (webhooks, MQTT, the
//! dashboard stream) to subscribe to.
//!
//! Design: a tokio broadcast channel. Publishing never blocks and never fails
//! when nobody listens; a subscriber that falls behind by more than the channel's
//! capacity is told how many events it missed (`RecvError::Lagged`), so loss is
//! visible, never silent. Durable storage of events is not this module's job.

use serde::Serialize;
use tokio::sync::broadcast;

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Event type, e.g. `model.registered`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// The object it concerns, e.g. `model/fraud/3`.
    pub object: String,
    /// Who caused it.
    pub actor: String,
    /// Event-specific details.
    pub data: serde_json::Value,
}

/// Events buffered per subscriber before it lags.
pub const EVENT_BUFFER: usize = 1024;

/// The bus. Cloning shares it.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(EVENT_BUFFER).0,
        }
    }
}

impl EventBus {
    /// Publishes an event to every current subscriber.
    pub fn publish(&self, event: Event) {
        tracing::debug!(kind = %event.kind, object = %event.object, "event");
        // An error only means nobody is subscribed.
        let _ = self.tx.send(event);
    }

    /// A new subscription, receiving events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_receive_events_in_order() {
        let bus = EventBus::default();
        let mut rx = bus.subscribe();
        for i in 0..3 {
            bus.publish(Event {
                kind: "model.registered".into(),
                time: String::new(),
                object: format!("model/m/{i}"),
                actor: "a".into(),
                data: serde_json::Value::Null,
            });
        }
        for i in 0..3 {
            assert_eq!(rx.recv().await.unwrap().object, format!("model/m/{i}"));
        }
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_what_it_missed() {
        let bus = EventBus::default();
        let mut rx = bus.subscribe();
        for _ in 0..EVENT_BUFFER + 5 {
            bus.publish(Event {
                kind: "x".into(),
                time: String::new(),
                object: String::new(),
                actor: String::new(),
                data: serde_json::Value::Null,
            });
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(5))
        ));
    }
}
