//! `/api/v1/events`: the stored event log, and its live server-sent-event
//! stream (`/api/v1/events/stream`).
//!
//! The stream first replays stored events after `Last-Event-ID` (or the
//! `since` query), then follows live ones; each SSE message carries the
//! event id as its `id`, its type as `event` and the JSON as `data`. A client
//! that reconnects with `Last-Event-ID` misses nothing the log still holds,
//! and a subscriber that falls behind the live feed catches up from the
//! store instead of losing events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures_util::stream::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::error::ApiError;
use super::extract::Caller;
use super::types::{EventRecord, Page, Problem};
use super::{blocking, AppState};
use crate::telemetry::Telemetry;

/// Most events one page or one catch-up read returns.
pub(crate) const MAX_EVENTS_PAGE: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    #[serde(default)]
    since: u64,
    #[serde(default, rename = "type")]
    kinds: Option<String>,
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    tail: Option<usize>,
}

fn default_limit() -> usize {
    100
}

fn kinds(q: &Option<String>) -> Vec<String> {
    q.as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Events with `id > since`, optionally of some types (`type=a,b`); with
/// `tail=N`, the last N events instead.
#[utoipa::path(get, path = "/api/v1/events",
    params(("since" = Option<u64>, Query), ("type" = Option<String>, Query, description = "comma-separated event types"), ("limit" = Option<usize>, Query),
        ("tail" = Option<usize>, Query, description = "the last N events (overrides since)")),
    responses((status = 200, body = Page<EventRecord>), (status = 400, body = Problem)))]
pub(super) async fn list(
    State(s): State<AppState>,
    _c: Caller,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<EventRecord>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.clamp(1, MAX_EVENTS_PAGE);
    let kinds = kinds(&q.kinds);
    let t = s.telemetry.clone();
    if let Some(n) = q.tail {
        let n = n.clamp(1, MAX_EVENTS_PAGE);
        let items = blocking(move || Ok(t.store.events_tail(&kinds, n)?)).await?;
        return Ok(Json(Page {
            items,
            next_cursor: None,
        }));
    }
    let items = blocking(move || Ok(t.store.events(q.since, &kinds, limit)?)).await?;
    let next_cursor = (items.len() == limit)
        .then(|| items.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

struct Follow {
    t: Arc<Telemetry>,
    rx: tokio::sync::broadcast::Receiver<EventRecord>,
    kinds: Vec<String>,
    // invariant: every event with id <= last was sent or filtered out.
    last: u64,
    pending: VecDeque<EventRecord>,
    // The store holds events after `last` not yet read back.
    catch_up: bool,
}

impl Follow {
    async fn next(&mut self) -> Option<EventRecord> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                self.last = e.id;
                if self.kinds.is_empty() || self.kinds.contains(&e.kind) {
                    return Some(e);
                }
                continue;
            }
            if self.catch_up {
                let (t, since) = (self.t.clone(), self.last);
                let read = tokio::task::spawn_blocking(move || {
                    t.store.events(since, &[], MAX_EVENTS_PAGE)
                })
                .await;
                match read {
                    Ok(Ok(items)) => {
                        self.catch_up = items.len() == MAX_EVENTS_PAGE;
                        self.pending.extend(items);
                        continue;
                    }
                    _ => return None,
                }
            }
            match self.rx.recv().await {
                Ok(e) if e.id <= self.last => {}
                Ok(e) if e.id == self.last + 1 => self.pending.push_back(e),
                // A gap (events stored before we subscribed, or missed): read the store.
                Ok(_) | Err(RecvError::Lagged(_)) => self.catch_up = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamQuery {
    #[serde(default)]
    since: Option<u64>,
    #[serde(default, rename = "type")]
    kinds: Option<String>,
}

/// Live events as server-sent events; resumes after `Last-Event-ID` (or
/// `since`). Without either it starts with events stored from now on.
#[utoipa::path(get, path = "/api/v1/events/stream",
    params(("since" = Option<u64>, Query), ("type" = Option<String>, Query, description = "comma-separated event types"),
        ("Last-Event-ID" = Option<u64>, Header)),
    responses((status = 200, content_type = "text/event-stream", body = String)))]
pub(super) async fn stream(
    State(s): State<AppState>,
    _c: Caller,
    headers: HeaderMap,
    q: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let header = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event id"))
        })
        .transpose()?;
    let t = s.telemetry.clone();
    // Subscribe first, then read where to start: nothing falls in between.
    let rx = t.subscribe_events();
    let (since, catch_up) = match header.or(q.since) {
        Some(id) => (id, true),
        None => {
            let t2 = t.clone();
            (
                blocking(move || Ok(t2.store.last_event_id()?)).await?,
                false,
            )
        }
    };
    let follow = Follow {
        t,
        rx,
        kinds: kinds(&q.kinds),
        last: since,
        pending: VecDeque::new(),
        catch_up,
    };
    let events = futures_util::stream::unfold(follow, |mut f| async move {
        let e = f.next().await?;
        let sse = SseEvent::default()
            .id(e.id.to_string())
            .event(e.kind.clone())
            .data(serde_json::to_string(&e).unwrap_or_default());
        Some((Ok(sse), f))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
