//! Canonical JSON, the byte form TUF signs (securesystemslib / OLPC dialect).
//!
//! Objects have their keys sorted, there is no insignificant whitespace, strings
//! escape only `"` and `\`, and numbers must be integers. Signatures cover these
//! bytes of the `signed` value exactly as received, so fields this code does not
//! know are still covered.

use serde_json::Value;

/// A value that has no canonical form (a non-integer number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("canonical JSON allows only integer numbers, found {0}")]
pub struct CanonicalError(pub String);

/// Writes the canonical form of `v`.
pub fn to_canonical(v: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write(v, &mut out)?;
    Ok(out)
}

fn write(v: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                out.extend_from_slice(n.to_string().as_bytes());
            } else {
                return Err(CanonicalError(n.to_string()));
            }
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                write(&map[k], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_and_whitespace_dropped() {
        let v = json!({"b": [1, true, null], "a": {"z": "q\"\\", "c": -3}});
        assert_eq!(
            String::from_utf8(to_canonical(&v).unwrap()).unwrap(),
            r#"{"a":{"c":-3,"z":"q\"\\"},"b":[1,true,null]}"#
        );
    }

    #[test]
    fn floats_have_no_canonical_form() {
        assert!(to_canonical(&json!({"x": 1.5})).is_err());
    }

    #[test]
    fn non_ascii_is_written_raw() {
        assert_eq!(to_canonical(&json!("é\n")).unwrap(), "\"é\n\"".as_bytes());
    }
}
