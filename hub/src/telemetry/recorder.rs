//! The event recorder: every event on the bus is stored with the next id,
//! then handed on: to server-sent-event subscribers, to webhook workers (who
//! read the store from their own cursor), and to the fleet's MQTT event topic
//! `flotilla/v1/{fleet}/events/{type}` (QoS 1, best effort: the store,
//! the SSE stream and webhooks are the durable paths). The wire `Event` has no
//! actor field; the actor travels in its `data` as `actor` (unless the data
//! already has one).
//!
//! A recorder that falls more than the bus's buffer behind loses events; it
//! says how many (log and `flotilla_events_lost_total`), never silently.

use std::sync::Arc;

use flotilla_protocol::telemetry::{topics, Event as WireEvent};
use flotilla_protocol::time::UtcTime;
use rumqttc::QoS;
use tokio::sync::broadcast::{self, error::RecvError};

use super::stats::bump;
use super::Telemetry;
use crate::api::types::EventRecord;
use crate::events::Event;

/// Runs until the bus closes.
pub(crate) async fn run(t: Arc<Telemetry>, mut bus: broadcast::Receiver<Event>) {
    loop {
        match bus.recv().await {
            Ok(event) => {
                let s = t.clone();
                match tokio::task::spawn_blocking(move || s.store.append_event(event)).await {
                    Ok(Ok(r)) => t.hand_on(r),
                    Ok(Err(e)) => {
                        bump(&t.counters.events_lost);
                        tracing::error!(error = %e, "cannot store an event; it is lost");
                    }
                    Err(e) => tracing::error!(error = %e, "event recorder worker failed"),
                }
            }
            Err(RecvError::Lagged(n)) => {
                t.counters
                    .events_lost
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(missed = n, "the event recorder fell behind; events lost");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

impl Telemetry {
    /// Hands a stored event to SSE subscribers, webhook workers and MQTT.
    fn hand_on(&self, r: EventRecord) {
        bump(&self.counters.events_stored);
        self.last_event.send_replace(r.id);
        let Some(link) = self.link() else {
            let _ = self.events.send(r);
            return;
        };
        if let Ok(topic) = topics::event(&self.fleet, &r.kind) {
            let time = UtcTime::parse(&r.time).unwrap_or(UtcTime(0));
            let mut data = r.data.clone();
            if let Some(m) = data.as_object_mut() {
                m.entry("actor").or_insert_with(|| r.actor.clone().into());
            }
            let wire = WireEvent::new(r.id, r.kind.clone(), time, r.object.clone(), &data);
            if let Err(e) = link
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, wire.encode())
            {
                tracing::debug!(error = %e, id = r.id, "event not published on MQTT");
            }
        }
        let _ = self.events.send(r);
    }
}
