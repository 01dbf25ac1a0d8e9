//! Devices: the device CA, enrolment tokens, device records, each device's
//! desired state (its signed director document) and what the hub last heard
//! from it over QUIC.
//!
//! # Layout
//! - [`ca`]: the device certificate authority (and the hub's QUIC certificate).
//! - [`certs`]: certificate → device map checked at every QUIC handshake.
//! - [`service`]: enrolment, labels, revocation, director documents.
//! - [`presence`]: connection state, hello inventory and deployment statuses.

pub mod ca;
pub mod certs;
pub mod presence;
pub mod service;
