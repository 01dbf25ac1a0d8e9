//! Devices: the device CA, enrolment tokens, device records, and each
//! device's desired state (its signed director document).
//!
//! # Layout
//! - [`ca`]: the device certificate authority.
//! - [`service`]: enrolment, labels, revocation, director documents.

pub mod ca;
pub mod service;
