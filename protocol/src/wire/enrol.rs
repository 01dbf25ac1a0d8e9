//! Enrolment frames: a new node trades a one-time token and a certificate
//! signing request for its device certificate.
//!
//! Enrolment runs on its own QUIC connection (ALPN `flotilla-enrol/1`), before
//! the node has a certificate: the agent pins the hub's device CA by the SHA-256
//! fingerprint a technician typed, sends one [`EnrolFrame::Request`] on one
//! bidirectional stream, and reads one [`EnrolFrame::Accepted`] or
//! [`EnrolFrame::Refused`]. The device key never leaves the node; only its CSR
//! travels. Nothing here is trusted before the agent checks it: the certificate
//! must chain to the pinned CA and `root_json` becomes the pinned TUF root only
//! because it arrived over the pinned channel.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::bytes::ByteBuf;
use super::status::{check_count, check_len};
use super::{Frame, WireError};
use crate::limits::Limits;

/// Largest certificate signing request, certificate or CA certificate (DER) on
/// the enrolment stream.
pub const MAX_ENROL_DER_BYTES: usize = 16 * 1024;
/// Most labels an enrolment answer may carry.
pub const MAX_ENROL_LABELS: usize = 64;

/// A frame on the enrolment stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EnrolFrame {
    /// Agent to hub: the token and the CSR.
    Request {
        /// The one-time enrolment token.
        token: String,
        /// PKCS#10 certificate signing request (DER) for the device key.
        csr_der: ByteBuf,
        /// Agent version (semver).
        agent_version: String,
    },
    /// Hub to agent: the device is enrolled.
    Accepted {
        /// The device id the hub assigned (the certificate's common name).
        device_id: String,
        /// The device certificate (DER), issued by the hub's device CA.
        certificate_der: ByteBuf,
        /// The device CA certificate (DER): its SHA-256 is the pinned fingerprint.
        ca_der: ByteBuf,
        /// The fleet's newest TUF `root.json`, to pin.
        root_json: ByteBuf,
        /// Labels the token gave the device.
        labels: BTreeMap<String, String>,
        /// Where the device publishes telemetry; `None` from a hub without
        /// telemetry (or an older hub: the field may be absent).
        #[serde(default)]
        telemetry: Option<TelemetryHint>,
    },
    /// Hub to agent: enrolment refused (bad, used or expired token, bad CSR).
    Refused {
        /// Why, in one line.
        reason: String,
    },
}

/// The MQTT broker and fleet a newly enrolled device publishes telemetry to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryHint {
    /// The broker, `HOST:PORT`.
    pub mqtt_addr: String,
    /// The fleet: one topic level, `flotilla/v1/{fleet}/{device}/...`.
    pub fleet: String,
    /// The broker speaks TLS and wants the device certificate; its server
    /// certificate is issued by the device CA the agent pins.
    #[serde(default)]
    pub tls: bool,
}

impl Frame for EnrolFrame {
    fn validate(&self, limits: &Limits) -> Result<(), WireError> {
        let der = |what, b: &ByteBuf| check_count(what, b.len(), MAX_ENROL_DER_BYTES);
        match self {
            Self::Request {
                token,
                csr_der,
                agent_version,
            } => {
                check_len("enrolment token", token, limits.max_name_len)?;
                check_len("agent version", agent_version, limits.max_name_len)?;
                der("certificate signing request bytes", csr_der)
            }
            Self::Accepted {
                device_id,
                certificate_der,
                ca_der,
                root_json,
                labels,
                telemetry,
            } => {
                check_len("device id", device_id, limits.max_name_len)?;
                if let Some(t) = telemetry {
                    check_len(
                        "telemetry broker address",
                        &t.mqtt_addr,
                        limits.max_name_len,
                    )?;
                    check_len("telemetry fleet", &t.fleet, limits.max_name_len)?;
                }
                der("certificate bytes", certificate_der)?;
                der("CA certificate bytes", ca_der)?;
                check_count(
                    "root metadata bytes",
                    root_json.len(),
                    usize::try_from(limits.max_root_bytes).unwrap_or(usize::MAX),
                )?;
                check_count("labels", labels.len(), MAX_ENROL_LABELS)?;
                for (k, v) in labels {
                    check_len("label", k, limits.max_name_len)?;
                    check_len("label value", v, limits.max_name_len)?;
                }
                Ok(())
            }
            Self::Refused { reason } => check_len("refusal reason", reason, limits.max_reason_len),
        }
    }
}

impl super::sealed::Sealed for EnrolFrame {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_frame, FrameDecoder};

    #[test]
    fn a_request_round_trips_and_an_oversized_csr_is_rejected() {
        let limits = Limits::default();
        let f = EnrolFrame::Request {
            token: "fe_abc".into(),
            csr_der: ByteBuf(vec![7; 100]),
            agent_version: "0.1.0".into(),
        };
        let bytes = encode_frame(&f, 1 << 20).unwrap();
        let mut d = FrameDecoder::<EnrolFrame>::new(1 << 20, limits);
        assert_eq!(d.decode(&mut &bytes[..]).unwrap(), Some(f));
        let big = EnrolFrame::Request {
            token: "t".into(),
            csr_der: ByteBuf(vec![0; MAX_ENROL_DER_BYTES + 1]),
            agent_version: "0.1.0".into(),
        };
        assert!(matches!(
            big.validate(&limits),
            Err(WireError::LimitExceeded {
                what: "certificate signing request bytes",
                ..
            })
        ));
    }
}
