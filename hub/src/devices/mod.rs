//! Devices: the device CA, enrolment tokens, device records, and each
//! device's desired state (its signed director document).
//!
//! # Layout
//! - [`ca`]: the device certificate authority.

pub mod ca;
