//! Decoding a JSON `data` array (flat or nested, row-major) straight into flat
//! [`Values`] of a datatype.
//!
//! Design: the request keeps `data` as raw JSON text until the input's datatype
//! and shape are known, then one serde visitor walks the text and pushes each
//! element into the typed vector. No `serde_json::Value` tree is built (about
//! 32 bytes per element, fifteen times the two bytes `0,` takes on the wire),
//! and elements past the shape's count are counted, not stored, so a body of
//! `max_body_bytes` costs at most one typed vector of the declared size.
//!
//! It does not check shapes against a signature.

use std::fmt;

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};

use super::datatype::DataType;
use super::tensors::Values;

/// Deepest nesting of `data` arrays accepted (serde_json stops at 128 anyway).
const MAX_NESTING: usize = 64;

/// One JSON scalar.
#[derive(Debug, Clone, Copy)]
enum Leaf<'a> {
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(&'a str),
}

impl fmt::Display for Leaf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::I64(v) => write!(f, "{v}"),
            Self::U64(v) => write!(f, "{v}"),
            Self::F64(v) => write!(f, "{v}"),
            Self::Str(s) => write!(f, "{:?}", s.chars().take(32).collect::<String>()),
        }
    }
}

/// What the walk has collected so far.
struct Walk {
    values: Values,
    datatype: DataType,
    /// Elements the shape declares; more are counted, not stored.
    count: usize,
    seen: usize,
    /// The first element that did not fit, as a message.
    failure: Option<String>,
}

impl Walk {
    fn push(&mut self, leaf: Leaf<'_>) -> Result<(), String> {
        let index = self.seen;
        self.seen += 1;
        if index >= self.count {
            return Ok(());
        }
        push_leaf(&mut self.values, self.datatype, leaf).map_err(|expected| {
            format!(
                "element {index} is {leaf}, expected {expected} for {}",
                self.datatype.name()
            )
        })
    }
}

/// Decodes the raw JSON text `raw` of a `data` field into `count` elements of
/// `datatype`; returns the values and the number of elements the text holds.
///
/// # Errors
///
/// A message (without the input's name): an element of the wrong JSON type or
/// out of range, `null` or an object, nesting too deep, text that is not JSON.
pub(crate) fn decode(
    raw: &str,
    datatype: DataType,
    count: usize,
) -> Result<(Values, usize), String> {
    // Never reserve more than the text could hold (two bytes per element).
    let mut walk = Walk {
        values: Values::with_capacity(datatype, count.min(raw.len() / 2 + 1)),
        datatype,
        count,
        seen: 0,
        failure: None,
    };
    let mut de = serde_json::Deserializer::from_str(raw);
    let result = Element {
        walk: &mut walk,
        depth: 0,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match (result, walk.failure) {
        (_, Some(message)) => Err(message),
        (Err(e), None) => Err(format!("data is not valid JSON: {e}")),
        (Ok(()), None) => Ok((walk.values, walk.seen)),
    }
}

/// A seed that decodes one element or (nested) array of elements.
struct Element<'w> {
    walk: &'w mut Walk,
    depth: usize,
}

impl Element<'_> {
    fn leaf<E: de::Error>(self, leaf: Leaf<'_>) -> Result<(), E> {
        self.walk.push(leaf).map_err(|m| self.fail(m))
    }

    fn fail<E: de::Error>(self, message: String) -> E {
        let e = E::custom(&message);
        self.walk.failure.get_or_insert(message);
        e
    }
}

impl<'de> DeserializeSeed<'de> for Element<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Element<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of tensor elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_NESTING {
            return Err(self.fail(format!("data is nested deeper than {MAX_NESTING} levels")));
        }
        let depth = self.depth + 1;
        while seq
            .next_element_seed(Element {
                walk: &mut *self.walk,
                depth,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.leaf(Leaf::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(Leaf::I64(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.leaf(Leaf::U64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.leaf(Leaf::F64(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.leaf(Leaf::Str(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        let index = self.walk.seen;
        Err(self.fail(format!("element {index} is null")))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        let index = self.walk.seen;
        Err(self.fail(format!("element {index} is an object")))
    }
}

/// Appends one element; on a mismatch returns what was expected.
fn push_leaf(values: &mut Values, t: DataType, leaf: Leaf<'_>) -> Result<(), &'static str> {
    let as_f64 = || match leaf {
        Leaf::I64(v) => Some(v as f64),
        Leaf::U64(v) => Some(v as f64),
        Leaf::F64(v) => Some(v),
        Leaf::Bool(_) | Leaf::Str(_) => None,
    };
    match values {
        Values::Bool(out) => match leaf {
            Leaf::Bool(b) => out.push(b),
            _ => return Err("true or false"),
        },
        Values::U64(out) => match leaf {
            Leaf::U64(v) => out.push(v),
            Leaf::I64(v) if v >= 0 => out.push(v as u64),
            _ => return Err("an unsigned integer"),
        },
        Values::F32(out) => out.push(as_f64().ok_or("a number")? as f32),
        Values::F64(out) => out.push(as_f64().ok_or("a number")?),
        Values::Bytes(out) => match leaf {
            Leaf::Str(s) => out.push(s.as_bytes().to_vec()),
            _ => return Err("a string"),
        },
        Values::I64(out) => {
            let (lo, hi): (i64, i64) = match t {
                DataType::Int8 => (i8::MIN.into(), i8::MAX.into()),
                DataType::Int16 => (i16::MIN.into(), i16::MAX.into()),
                DataType::Int32 => (i32::MIN.into(), i32::MAX.into()),
                DataType::Uint8 => (0, u8::MAX.into()),
                DataType::Uint16 => (0, u16::MAX.into()),
                DataType::Uint32 => (0, u32::MAX.into()),
                _ => (i64::MIN, i64::MAX),
            };
            let x = match leaf {
                Leaf::I64(v) => Some(v),
                Leaf::U64(v) => i64::try_from(v).ok(),
                _ => None,
            };
            out.push(
                x.filter(|x| (lo..=hi).contains(x))
                    .ok_or("an integer in range")?,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_arrays_flatten_row_major() {
        let (v, n) = decode("[[1, 2], [3, 4.5]]", DataType::Fp32, 4).unwrap();
        assert_eq!(v, Values::F32(vec![1.0, 2.0, 3.0, 4.5]));
        assert_eq!(n, 4);
    }

    #[test]
    fn extra_elements_are_counted_not_stored() {
        let (v, n) = decode("[1, 2, 3, 4, 5]", DataType::Int64, 2).unwrap();
        assert_eq!(v, Values::I64(vec![1, 2]));
        assert_eq!(n, 5);
    }

    #[test]
    fn the_first_bad_element_is_named_without_json_positions() {
        let err = decode("[1, true]", DataType::Fp32, 2).unwrap_err();
        assert_eq!(err, "element 1 is true, expected a number for FP32");
        let err = decode("[1, null]", DataType::Fp32, 2).unwrap_err();
        assert_eq!(err, "element 1 is null");
        let err = decode("[-1]", DataType::Uint64, 1).unwrap_err();
        assert!(err.contains("expected an unsigned integer"), "{err}");
        let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
        let err = decode(&deep, DataType::Fp32, 1).unwrap_err();
        assert!(err.contains("nested deeper"), "{err}");
    }

    #[test]
    fn a_scalar_is_one_element() {
        let (v, n) = decode("7", DataType::Int32, 1).unwrap();
        assert_eq!((v, n), (Values::I64(vec![7]), 1));
    }
}
