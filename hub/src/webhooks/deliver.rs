//! One webhook's worker: read the event log from the cursor, POST each
//! wanted event, retry with backoff, log each attempt, move the cursor.
//!
//! The request: `POST URL`, `Content-Type: application/json`, the body the
//! event's JSON ([`EventRecord`]), and
//! - `X-Flotilla-Signature: sha256=HEX`: HMAC-SHA256 of the exact body bytes
//!   with the webhook's secret (verify before parsing, in constant time);
//! - `X-Flotilla-Event-Id`: the event id (deduplicate redeliveries by it);
//! - `X-Flotilla-Event`: the event type.
//!
//! A 2xx answer is a delivery; anything else (another status, a transport
//! error, a timeout) is a failed attempt, retried after 1, 2, 4 … times
//! `backoff_initial` (capped at `backoff_max`) until `max_attempts`; then the
//! event is given up (logged, counted) and the worker moves on. Redirects are
//! not followed.

use std::sync::Arc;
use std::time::Duration;

use ring::hmac;

use crate::api::types::{DeliveryView, EventRecord};
use crate::telemetry::stats::bump;
use crate::telemetry::store::WebhookRecord;
use crate::telemetry::Telemetry;

/// Events read from the log per pass.
const PAGE: usize = 100;
/// Longest idle wait before the worker looks at the log again anyway.
const IDLE: Duration = Duration::from_secs(30);

/// `sha256=HEX` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// Whether `header` is the signature of `body` under `secret` (constant time).
pub fn verify(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(tag) = header
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&key, body, &tag).is_ok()
}

/// The wait before attempt `attempt + 1` (after `attempt` failures).
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(max)
}

/// One POST; the status, or the transport error.
fn attempt(
    agent: &ureq::Agent,
    hook: &WebhookRecord,
    event: &EventRecord,
    body: &[u8],
) -> (Option<u16>, Option<String>) {
    let sent = agent
        .post(&hook.url)
        .set("Content-Type", "application/json")
        .set("X-Flotilla-Signature", &signature(&hook.secret, body))
        .set("X-Flotilla-Event-Id", &event.id.to_string())
        .set("X-Flotilla-Event", &event.kind)
        .send_bytes(body);
    match sent {
        Ok(r) => (Some(r.status()), None),
        Err(ureq::Error::Status(code, _)) => (Some(code), None),
        Err(ureq::Error::Transport(t)) => (None, Some(t.to_string())),
    }
}

/// Runs the worker of webhook `id` until the webhook is deleted.
pub(crate) async fn run(t: Arc<Telemetry>, id: String) {
    let cfg = t.webhook_config;
    let agent = ureq::AgentBuilder::new()
        .timeout(cfg.timeout)
        .redirects(0)
        .user_agent(concat!("flotilla-hub/", env!("CARGO_PKG_VERSION")))
        .build();
    let mut changed = t.watch_events();
    loop {
        // Marked seen before reading, so an event stored meanwhile wakes the wait below.
        changed.borrow_and_update();
        let s = t.clone();
        let wid = id.clone();
        let read = tokio::task::spawn_blocking(move || {
            let Some((hook, cursor)) = s.store.webhook(&wid)? else {
                return Ok(None);
            };
            let events = s.store.events(cursor, &[], PAGE)?;
            Ok::<_, crate::store::StoreError>(Some((hook, events)))
        })
        .await;
        let (hook, events) = match read {
            Ok(Ok(Some(x))) => x,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::error!(webhook = %id, error = %e, "cannot read the event log");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            Err(_) => return,
        };
        if events.is_empty() {
            let _ = tokio::time::timeout(IDLE, changed.changed()).await;
            continue;
        }
        let mut skipped_to = None;
        for event in events {
            if !hook.wants(&event.kind) {
                skipped_to = Some(event.id);
                continue;
            }
            if !deliver(&t, &agent, &hook, &event).await {
                return;
            }
            skipped_to = None;
        }
        if let Some(to) = skipped_to {
            let s = t.clone();
            let wid = id.clone();
            let _ = tokio::task::spawn_blocking(move || s.store.advance_cursor(&wid, to)).await;
        }
    }
}

/// Delivers one event with retries; `false` when the webhook is gone.
async fn deliver(
    t: &Arc<Telemetry>,
    agent: &ureq::Agent,
    hook: &WebhookRecord,
    event: &EventRecord,
) -> bool {
    let cfg = t.webhook_config;
    let body = match serde_json::to_vec(event) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an event");
            return true;
        }
    };
    for n in 1..=cfg.max_attempts {
        let (a, h, e, b) = (agent.clone(), hook.clone(), event.clone(), body.clone());
        let (status, error) =
            match tokio::task::spawn_blocking(move || attempt(&a, &h, &e, &b)).await {
                Ok(r) => r,
                Err(_) => return false,
            };
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        let outcome = if ok {
            bump(&t.counters.webhook_delivered);
            "delivered"
        } else if n == cfg.max_attempts {
            bump(&t.counters.webhook_failed);
            bump(&t.counters.webhook_gave_up);
            tracing::warn!(webhook = %hook.id, event = event.id, attempts = n, ?status, ?error, "webhook delivery given up");
            "gave_up"
        } else {
            bump(&t.counters.webhook_failed);
            "retrying"
        };
        let entry = DeliveryView {
            event_id: event.id,
            event_type: event.kind.clone(),
            attempt: n,
            status,
            error,
            outcome: outcome.into(),
            time: crate::now().to_string(),
        };
        let settled = outcome != "retrying";
        let s = t.clone();
        let id = hook.id.clone();
        match tokio::task::spawn_blocking(move || s.store.record_delivery(&id, &entry, settled))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(webhook = %hook.id, error = %e, "cannot log a webhook delivery")
            }
            Err(_) => return false,
        }
        if settled {
            return true;
        }
        tokio::time::sleep(backoff(cfg.backoff_initial, cfg.backoff_max, n)).await;
        let s = t.clone();
        let id = hook.id.clone();
        if !matches!(
            tokio::task::spawn_blocking(move || s.store.webhook(&id)).await,
            Ok(Ok(Some(_)))
        ) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_the_right_secret_only() {
        let body = br#"{"id":1}"#;
        let sig = signature("s3cret", body);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert!(verify("s3cret", body, &sig));
        assert!(!verify("other", body, &sig));
        assert!(!verify("s3cret", b"{\"id\":2}", &sig));
        assert!(!verify("s3cret", body, "sha256=zz"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (i, m) = (Duration::from_secs(1), Duration::from_secs(5));
        let waits: Vec<u64> = (1..=5).map(|n| backoff(i, m, n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
        assert_eq!(
            backoff(i, Duration::MAX, 200),
            Duration::from_secs(u32::MAX as u64)
        );
    }
}
