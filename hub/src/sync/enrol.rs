//! Enrolment over QUIC (ALPN `flotilla-enrol/1`): one bidirectional stream,
//! one `EnrolFrame::Request`, one `Accepted` or `Refused`, and nothing else.
//!
//! The agent pinned the hub's CA before sending its token (the CA certificate
//! is in the chain the hub presents), so the token never reaches an impostor.
//! Tokens, CSR checks and the new device record are the registry's business;
//! this module only moves the frames and bounds the time they take.

use flotilla_net::{close, framed, NetError};
use flotilla_protocol::wire::{ByteBuf, EnrolFrame};

use super::{protocol_close, Shared};
use crate::registry::RegistryError;

/// A refusal reason for the agent: one line, bounded, and nothing internal.
fn refusal(e: &RegistryError, max_len: usize) -> String {
    let text = match e {
        RegistryError::Internal(_) => "the hub failed to enrol the device; try again later".into(),
        other => other.to_string(),
    };
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut end = line.len().min(max_len);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

/// Serves one enrolment connection.
pub(super) async fn run(shared: &Shared, conn: &quinn::Connection) {
    let limits = shared.limits;
    let timeout = shared.timing.hello_timeout;
    let bi = match tokio::time::timeout(timeout, conn.accept_bi()).await {
        Ok(Ok(bi)) => bi,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "enrolment connection ended before a stream");
            return;
        }
        Err(_) => {
            protocol_close(conn, "no enrolment request in time");
            return;
        }
    };
    let (mut tx, mut rx) = framed::split::<EnrolFrame, EnrolFrame>(
        bi,
        limits.max_control_frame_bytes,
        limits.max_agent_frame_bytes,
        limits,
    );
    let (token, csr, agent_version) = match rx.next_within(timeout).await {
        Ok(Some(EnrolFrame::Request {
            token,
            csr_der,
            agent_version,
        })) => (token, csr_der, agent_version),
        Ok(Some(_)) => return protocol_close(conn, "expected an enrolment request"),
        Ok(None) => return protocol_close(conn, "the enrolment stream ended without a request"),
        Err(NetError::Timeout(_)) => return protocol_close(conn, "no enrolment request in time"),
        Err(NetError::Wire(e)) => {
            return protocol_close(conn, &format!("bad enrolment frame: {e}"))
        }
        Err(e) => {
            tracing::debug!(error = %e, "enrolment stream failed");
            return;
        }
    };
    let source = conn.remote_address().ip();
    let enrolled = match shared
        .enrol_failures
        .check(source, std::time::Instant::now())
    {
        Err(wait) => Err(RegistryError::Unauthorized(format!(
            "too many refused enrolments from {source}; try again in {} s",
            wait.as_secs().max(1)
        ))),
        Ok(()) => {
            let registry = shared.registry.clone();
            let r =
                tokio::task::spawn_blocking(move || registry.enroll_der(&token, csr.as_slice()))
                    .await
                    .unwrap_or_else(|e| {
                        Err(RegistryError::Internal(format!("enrolment task: {e}")))
                    });
            if matches!(&r, Err(e) if !matches!(e, RegistryError::Internal(_))) {
                shared
                    .enrol_failures
                    .refused(source, std::time::Instant::now());
            }
            r
        }
    };
    let answer = match enrolled {
        Ok(e) => {
            tracing::info!(device = %e.device.id, %agent_version, "device enrolled over QUIC");
            EnrolFrame::Accepted {
                device_id: e.device.id,
                certificate_der: ByteBuf(e.cert_der),
                ca_der: ByteBuf(shared.registry.ca().cert_der().to_vec()),
                root_json: ByteBuf(
                    shared
                        .roots
                        .last()
                        .map(|(_, r)| r.clone())
                        .unwrap_or_default(),
                ),
                labels: e.device.labels,
                telemetry: shared.telemetry.clone(),
            }
        }
        Err(e) => {
            if let RegistryError::Internal(m) = &e {
                tracing::error!(error = %m, "enrolment failed inside the hub");
            }
            let reason = refusal(&e, limits.max_reason_len);
            tracing::info!(%reason, "enrolment refused");
            EnrolFrame::Refused { reason }
        }
    };
    if let Err(e) = tx.send(&answer).await {
        tracing::info!(error = %e, "could not send the enrolment answer");
        return;
    }
    tx.finish();
    // The agent closes once it has read the answer; anything else it opens
    // breaks the protocol. Closing first would throw away unsent answer bytes.
    tokio::select! {
        _ = conn.closed() => {}
        extra = conn.accept_bi() => {
            if extra.is_ok() {
                protocol_close(conn, "only one enrolment per connection");
            }
        }
        _ = tokio::time::sleep(timeout) => {
            conn.close(quinn::VarInt::from_u32(close::NORMAL), b"enrolment done");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_one_bounded_line_without_internals() {
        let e = RegistryError::Unauthorized("unknown or already\nused token".into());
        assert_eq!(refusal(&e, 100), "unknown or already used token");
        assert_eq!(refusal(&e, 7), "unknown");
        let e = RegistryError::Internal("disk /var/lib exploded".into());
        assert!(!refusal(&e, 100).contains("/var/lib"));
    }
}
