//! One device's sync session: the control stream (hello, pushed metadata,
//! status reports, ping/pong, goodbye) and the acceptor of its chunk streams.
//!
//! The session registers the device as connected (closing an older connection
//! of the same device), pushes what the [`Planner`] says whenever the feed or
//! the device's own bell rings, stores every status report, and on the way out
//! marks the device offline unless a newer connection took over.

use std::sync::Arc;
use std::time::Duration;

use flotilla_net::{close, framed, FramedSend, NetError};
use flotilla_protocol::director::DirectorDocument;
use flotilla_protocol::tuf::{Envelope, Role};
use flotilla_protocol::wire::{ByteBuf, ControlFrame, MetadataUpdate};

use super::metadata::{Director, Planner};
use super::{chunks, protocol_close, Shared};
use crate::registry::RegistryError;

/// How often a session checks whether its director copy needs a refresh.
const SESSION_TICK: Duration = Duration::from_secs(30);
/// `last_seen` is written at most this often from pings alone.
const SEEN_EVERY_SECS: i64 = 300;

/// Runs `f` on a blocking thread; a failed task is an internal error.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(RegistryError::Internal(format!("worker failed: {e}"))))
}

/// Why a session ends early.
enum Stop {
    /// The connection is gone or was closed already.
    Gone,
}

/// Serves `device`'s sync connection until it ends.
pub(super) async fn run(shared: Arc<Shared>, conn: quinn::Connection, device: String) {
    let limits = shared.limits;
    let timeout = shared.timing.hello_timeout;
    let bi = match tokio::time::timeout(timeout, conn.accept_bi()).await {
        Ok(Ok(bi)) => bi,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection ended before the control stream");
            return;
        }
        Err(_) => return protocol_close(&conn, "no control stream in time"),
    };
    let (mut tx, mut rx) = framed::split::<ControlFrame, ControlFrame>(
        bi,
        limits.max_control_frame_bytes,
        limits.max_agent_frame_bytes,
        limits,
    );
    let hello = match rx.next_within(timeout).await {
        Ok(Some(ControlFrame::AgentHello(h))) => h,
        Ok(Some(_)) => return protocol_close(&conn, "the first control frame must be a hello"),
        Ok(None) => return protocol_close(&conn, "the control stream ended before a hello"),
        Err(NetError::Timeout(_)) => return protocol_close(&conn, "no hello in time"),
        Err(NetError::Wire(e)) => return protocol_close(&conn, &format!("bad hello: {e}")),
        Err(e) => {
            tracing::debug!(error = %e, "control stream failed before the hello");
            return;
        }
    };
    if hello.device_id != device {
        let _ = tx
            .send(&ControlFrame::Goodbye {
                reason: "the hello names another device than the certificate".into(),
            })
            .await;
        return protocol_close(
            &conn,
            "the hello's device id does not match the device certificate",
        );
    }
    let ticket = shared.sessions.open(&device, conn.clone());
    if shared.registry.device_certs().is_revoked(&device) {
        shared.sessions.revoke(&device);
    }
    tracing::info!(
        agent_version = %hello.agent_version,
        devices_connected = shared.sessions.len(),
        "device connected"
    );
    {
        let (shared, device, hello, id) =
            (shared.clone(), device.clone(), hello.clone(), ticket.id);
        if let Err(e) = blocking(move || {
            let _presence = shared.sessions.presence();
            if shared.sessions.is_current(&device, id) {
                shared.registry.record_connect(&device, &hello)?;
            }
            Ok(())
        })
        .await
        {
            tracing::warn!(error = %e, "could not record the connection");
        }
    }
    let chunk_streams = tokio::spawn(chunks::accept(shared.clone(), conn.clone(), device.clone()));

    let mut session = Session {
        shared: shared.clone(),
        conn: conn.clone(),
        device: device.clone(),
        planner: Planner::new(hello.trusted, limits.max_roots_per_update, crate::now()),
        last_seen_write: crate::now().0,
    };
    let mut feed = shared.feed.clone();
    feed.mark_unchanged();
    let mut tick = tokio::time::interval(SESSION_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut running = session.push(&mut tx).await.is_ok();
    while running {
        running = tokio::select! {
            frame = rx.next() => session.handle(frame, &mut tx).await.is_ok(),
            changed = feed.changed() => match changed {
                Ok(()) => session.push(&mut tx).await.is_ok(),
                // The hub is shutting down: the endpoint closes everything.
                Err(_) => false,
            },
            () = ticket.wake.notified() => session.push(&mut tx).await.is_ok(),
            _ = tick.tick() => {
                if session.planner.director_refresh_due(crate::now()) {
                    session.push(&mut tx).await.is_ok()
                } else {
                    true
                }
            }
            _ = conn.closed() => false,
        };
    }
    chunk_streams.abort();
    // No-op when the connection is closed already (its first reason stays).
    conn.close(quinn::VarInt::from_u32(close::NORMAL), b"session ended");
    let reason = conn.close_reason();
    tracing::info!(reason = ?reason, "device disconnected");
    let id = ticket.id;
    let recorded = blocking(move || {
        let _presence = shared.sessions.presence();
        shared.sessions.close(&device, id);
        if !shared.sessions.is_connected(&device) {
            shared.registry.record_disconnect(&device)?;
        }
        Ok(())
    })
    .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "could not record the disconnection");
    }
}

/// The state of one session's control stream.
struct Session {
    shared: Arc<Shared>,
    conn: quinn::Connection,
    device: String,
    planner: Planner,
    // When `last_seen` was last written (seconds since the epoch).
    last_seen_write: i64,
}

impl Session {
    /// The device's current director document, or `None` when it cannot be
    /// made (logged). A revoked device's connection is closed.
    async fn director(&self) -> Result<Option<Director>, Stop> {
        let (registry, id) = (self.shared.registry.clone(), self.device.clone());
        match blocking(move || registry.director_for(&id)).await {
            Ok(bytes) => {
                let version = Envelope::parse(Role::Director, &bytes, u64::MAX)
                    .and_then(|e| e.body::<DirectorDocument>(Role::Director))
                    .map(|d| d.version);
                match version {
                    Ok(version) => Ok(Some(Director { version, bytes })),
                    Err(e) => {
                        tracing::error!(error = %e, "the hub's own director document does not parse");
                        Ok(None)
                    }
                }
            }
            Err(RegistryError::Conflict(_))
                if self.shared.registry.device_certs().is_revoked(&self.device) =>
            {
                self.shared.sessions.revoke(&self.device);
                self.conn
                    .close(quinn::VarInt::from_u32(close::REVOKED), b"device revoked");
                Err(Stop::Gone)
            }
            Err(RegistryError::NotFound(_)) => {
                self.conn.close(
                    quinn::VarInt::from_u32(close::REVOKED),
                    b"device no longer exists",
                );
                Err(Stop::Gone)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no director document for the device");
                Ok(None)
            }
        }
    }

    /// Sends whatever the planner says the agent lacks.
    async fn push(&mut self, tx: &mut FramedSend<ControlFrame>) -> Result<(), Stop> {
        let trust = self.shared.feed.borrow().trust.clone();
        let Some(trust) = trust else {
            return Ok(());
        };
        let director = self.director().await?;
        let Some(update) = self.planner.next(
            &self.shared.roots,
            Some(&trust),
            director.as_ref(),
            crate::now(),
        ) else {
            return Ok(());
        };
        // The fault switch notes every director sent; it answers with the
        // first one when this one is newer and replaying is on.
        let replay = match (&update.director, director.as_ref()) {
            (Some(_), Some(d)) => {
                tracing::debug!(version = d.version, "pushing a director document");
                self.shared
                    .faults
                    .director_sent(&self.device, d.version, &d.bytes)
                    .map(|old| MetadataUpdate {
                        roots: Vec::new(),
                        timestamp: update.timestamp.clone(),
                        snapshot: update.snapshot.clone(),
                        targets: None,
                        director: Some(ByteBuf(old)),
                    })
            }
            _ => None,
        };
        self.send_update(tx, update).await?;
        if let Some(replay) = replay {
            tracing::warn!("TEST FAULT replay-director: pushing the first director document again");
            self.send_update(tx, replay).await?;
        }
        Ok(())
    }

    async fn send_update(
        &self,
        tx: &mut FramedSend<ControlFrame>,
        update: MetadataUpdate,
    ) -> Result<(), Stop> {
        let (roots, targets, director) = (
            update.roots.len(),
            update.targets.is_some(),
            update.director.is_some(),
        );
        match tx.send(&ControlFrame::MetadataUpdate(update)).await {
            Ok(()) => {
                tracing::debug!(roots, targets, director, "metadata pushed");
                Ok(())
            }
            Err(NetError::Wire(e)) => {
                // Too large for the agent's limit: a hub-side problem, logged;
                // the connection stays.
                tracing::error!(error = %e, "metadata update not sent");
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, "control stream write failed");
                Err(Stop::Gone)
            }
        }
    }

    /// Handles one control frame from the agent.
    async fn handle(
        &mut self,
        frame: Result<Option<ControlFrame>, NetError>,
        tx: &mut FramedSend<ControlFrame>,
    ) -> Result<(), Stop> {
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => {
                self.conn.close(
                    quinn::VarInt::from_u32(close::NORMAL),
                    b"control stream finished",
                );
                return Err(Stop::Gone);
            }
            Err(NetError::Wire(e)) => {
                protocol_close(&self.conn, &format!("bad control frame: {e}"));
                return Err(Stop::Gone);
            }
            Err(e) => {
                tracing::debug!(error = %e, "control stream read failed");
                return Err(Stop::Gone);
            }
        };
        match frame {
            ControlFrame::Ping { nonce } => {
                if tx.send(&ControlFrame::Pong { nonce }).await.is_err() {
                    return Err(Stop::Gone);
                }
                self.seen().await;
            }
            ControlFrame::Pong { .. } => {}
            ControlFrame::DeploymentStatus(status) => {
                let (registry, id, max) = (
                    self.shared.registry.clone(),
                    self.device.clone(),
                    self.shared.limits.max_deployments,
                );
                let (endpoint, deployment) = (status.endpoint.clone(), status.deployment.clone());
                match blocking(move || registry.record_status(&id, &status, max)).await {
                    Ok(_) => {
                        self.last_seen_write = crate::now().0;
                        tracing::debug!(%endpoint, %deployment, "deployment status stored");
                    }
                    Err(RegistryError::BadRequest(m)) => {
                        protocol_close(&self.conn, &m);
                        return Err(Stop::Gone);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not store a deployment status"),
                }
            }
            ControlFrame::Goodbye { reason } => {
                tracing::info!(%reason, "the agent said goodbye");
                self.conn
                    .close(quinn::VarInt::from_u32(close::NORMAL), b"goodbye");
                return Err(Stop::Gone);
            }
            ControlFrame::AgentHello(_) => {
                protocol_close(&self.conn, "a second hello");
                return Err(Stop::Gone);
            }
            _ => {
                protocol_close(&self.conn, "a frame only the hub sends");
                return Err(Stop::Gone);
            }
        }
        Ok(())
    }

    /// Refreshes `last_seen` when it is older than [`SEEN_EVERY_SECS`].
    async fn seen(&mut self) {
        let now = crate::now().0;
        if now - self.last_seen_write < SEEN_EVERY_SECS {
            return;
        }
        self.last_seen_write = now;
        let (registry, id) = (self.shared.registry.clone(), self.device.clone());
        if let Err(e) = blocking(move || registry.record_seen(&id)).await {
            tracing::warn!(error = %e, "could not record last_seen");
        }
    }
}
