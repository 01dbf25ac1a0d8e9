//! The one CBOR encode and schema-first decode every telemetry record uses.
//!
//! A record is a CBOR map whose first field is `schema_version`. Decoding
//! checks the byte length before reading anything, reads the version alone
//! first (so that a newer peer gets [`TelemetryError::UnsupportedSchema`], not a
//! field mismatch), then the whole record with bounded nesting, and refuses
//! trailing bytes. Validation against [`crate::Limits`] is the caller's next step.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{TelemetryError, TELEMETRY_SCHEMA_VERSION};

/// Deepest CBOR nesting accepted; a window nests about seven levels. Bounds the
/// decoder's recursion (and so its stack) on hostile input.
const MAX_NESTING: usize = 32;

/// Encodes a record to CBOR.
pub(crate) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Serialising plain data into a Vec cannot fail.
    if let Err(e) = ciborium::into_writer(record, &mut out) {
        unreachable!("CBOR encoding into memory failed: {e}");
    }
    out
}

/// Decodes a schema-versioned record of at most `max_bytes` bytes.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    max_bytes: u64,
) -> Result<T, TelemetryError> {
    if bytes.len() as u64 > max_bytes {
        return Err(TelemetryError::TooLarge {
            what,
            actual: bytes.len() as u64,
            limit: max_bytes,
        });
    }
    #[derive(Deserialize)]
    struct Probe {
        schema_version: u64,
    }
    let decode_err = |e: ciborium::de::Error<std::io::Error>| TelemetryError::Decode {
        what,
        reason: e.to_string(),
    };
    let probe: Probe =
        ciborium::de::from_reader_with_recursion_limit(bytes, MAX_NESTING).map_err(decode_err)?;
    if probe.schema_version != u64::from(TELEMETRY_SCHEMA_VERSION) {
        return Err(TelemetryError::UnsupportedSchema {
            what,
            version: probe.schema_version,
        });
    }
    let mut rest = bytes;
    let record: T = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_NESTING)
        .map_err(decode_err)?;
    if !rest.is_empty() {
        return Err(TelemetryError::TrailingBytes {
            what,
            extra: rest.len(),
        });
    }
    Ok(record)
}
