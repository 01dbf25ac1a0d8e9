//! Webhooks: operators register URLs that receive the hub's events as signed
//! JSON POSTs.
//!
//! Each webhook has a *cursor*, the id of the last event it is done with,
//! stored beside it in the telemetry database. One worker per webhook reads
//! the event log from its cursor and delivers each wanted event in order,
//! retrying with exponential backoff (`[webhooks]`), logging every attempt,
//! and moving the cursor once the event is delivered or given up. So delivery
//! survives hub restarts (at least once: an event whose 2xx came back just
//! before a crash is sent again; receivers deduplicate by
//! `X-Flotilla-Event-Id`), and one slow receiver holds up only itself.
//!
//! A new webhook starts at the end of the log: it receives events from its
//! creation on.
//!
//! # Layout
//! - [`deliver`]: the worker, the HTTP attempt and the signature.

pub mod deliver;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::api::types::{CreateWebhook, DeliveryView, WebhookView};
use crate::registry::RegistryError;
use crate::telemetry::store::WebhookRecord;
use crate::telemetry::{lock, Telemetry};

/// Most webhooks.
pub const MAX_WEBHOOKS: usize = 100;
/// Longest URL.
pub const MAX_URL_LEN: usize = 2048;

/// The running workers, by webhook id.
#[derive(Debug, Default)]
pub struct Workers(Mutex<HashMap<String, tokio::task::AbortHandle>>);

impl Workers {
    fn start(&self, t: &Arc<Telemetry>, id: &str) {
        let task = tokio::spawn(deliver::run(t.clone(), id.to_string()));
        if let Some(old) = lock(&self.0).insert(id.to_string(), task.abort_handle()) {
            old.abort();
        }
    }

    fn stop(&self, id: &str) {
        if let Some(h) = lock(&self.0).remove(id) {
            h.abort();
        }
    }
}

/// Starts a worker for every stored webhook.
pub fn start_all(t: &Arc<Telemetry>) -> anyhow::Result<()> {
    for (w, _) in t.store.webhooks()? {
        t.webhooks.start(t, &w.id);
    }
    Ok(())
}

fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("url {url:?} must start with http:// or https://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty()
        || url.len() > MAX_URL_LEN
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "url {url:?} needs a host, no spaces, and at most {MAX_URL_LEN} bytes"
        ));
    }
    Ok(())
}

/// A random secret: 32 bytes, hex.
fn generate_secret() -> Result<String, RegistryError> {
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| RegistryError::Internal("random number generator failed".into()))?;
    Ok(hex::encode(b))
}

impl Telemetry {
    /// Registers a webhook; the answer carries its secret (once).
    pub fn create_webhook(
        self: &Arc<Self>,
        actor: &str,
        req: CreateWebhook,
    ) -> Result<WebhookView, RegistryError> {
        check_url(&req.url).map_err(RegistryError::BadRequest)?;
        if req.events.len() > 64 {
            return Err(RegistryError::BadRequest("at most 64 event types".into()));
        }
        for e in &req.events {
            flotilla_protocol::telemetry::topics::check_segment("event type", e)
                .map_err(|e| RegistryError::BadRequest(e.to_string()))?;
        }
        let secret = match req.secret {
            Some(s) if s.is_empty() || s.len() > 256 => {
                return Err(RegistryError::BadRequest(
                    "secret must be 1 to 256 bytes".into(),
                ))
            }
            Some(s) => s,
            None => generate_secret()?,
        };
        if self.store.webhooks()?.len() >= MAX_WEBHOOKS {
            return Err(RegistryError::Busy(format!(
                "at most {MAX_WEBHOOKS} webhooks"
            )));
        }
        let id = format!("wh-{}", &generate_secret()?[..12]);
        let record = WebhookRecord {
            id: id.clone(),
            url: req.url,
            events: req.events,
            secret: secret.clone(),
            created_at: crate::now().to_string(),
            created_by: actor.to_string(),
        };
        let cursor = self.store.last_event_id()?;
        self.store.create_webhook(&record, cursor)?;
        self.audit(actor, "webhook.create", &format!("webhook/{id}"));
        self.webhooks.start(self, &id);
        let mut view = record.view(cursor);
        view.secret = Some(secret);
        Ok(view)
    }

    /// Every webhook (without secrets).
    pub fn list_webhooks(&self) -> Result<Vec<WebhookView>, RegistryError> {
        Ok(self
            .store
            .webhooks()?
            .into_iter()
            .map(|(w, c)| w.view(c))
            .collect())
    }

    /// Removes a webhook and stops its deliveries.
    pub fn delete_webhook(&self, actor: &str, id: &str) -> Result<(), RegistryError> {
        self.store.delete_webhook(id)?;
        self.webhooks.stop(id);
        self.audit(actor, "webhook.delete", &format!("webhook/{id}"));
        Ok(())
    }

    /// A webhook's last `limit` delivery attempts.
    pub fn webhook_deliveries(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<Vec<DeliveryView>, RegistryError> {
        if self.store.webhook(id)?.is_none() {
            return Err(RegistryError::NotFound(format!(
                "webhook {id} does not exist"
            )));
        }
        Ok(self.store.deliveries(id, limit)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_must_be_http_with_a_host() {
        assert!(check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(check_url("https://hooks.example/x?y=1").is_ok());
        for bad in ["ftp://x", "http://", "http:///x", "http://a b", "x"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
