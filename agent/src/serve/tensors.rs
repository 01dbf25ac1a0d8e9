//! Tensor values between the wire and the runtime: [`TensorData`] decoded from
//! JSON `data` arrays (flat or nested, row-major; see [`super::json_data`]) or from the binary tensor data
//! extension's raw little-endian bytes, turned into runtime [`Tensor`]s, and
//! back from the runtime's outputs into JSON or raw bytes.
//!
//! Design: values are held flat in the widest type of their family (`i64` for
//! signed and narrow unsigned integers, `u64`, `f32`, `f64` for the other floats),
//! so that dynamic batching can concatenate and split requests without touching
//! the runtime's tensor library.
//!
//! It does not check values against a model signature (that is
//! [`super::validate`]).

use flotilla_runtime::{ElemType, Tensor};
use serde::ser::{Serialize, SerializeSeq, Serializer};

use super::datatype::DataType;
use super::json_data;

/// Flat, row-major tensor values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Values {
    Bool(Vec<bool>),
    /// INT8..INT64, UINT8..UINT32, range-checked for the datatype.
    I64(Vec<i64>),
    U64(Vec<u64>),
    F32(Vec<f32>),
    /// FP16, BF16 (exact in f64) and FP64.
    F64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

impl Values {
    /// An empty value list of the storage family of `t`.
    pub(crate) fn with_capacity(t: DataType, capacity: usize) -> Self {
        match t {
            DataType::Bool => Self::Bool(Vec::with_capacity(capacity)),
            DataType::Uint64 => Self::U64(Vec::with_capacity(capacity)),
            DataType::Fp32 => Self::F32(Vec::with_capacity(capacity)),
            DataType::Fp16 | DataType::Bf16 | DataType::Fp64 => {
                Self::F64(Vec::with_capacity(capacity))
            }
            DataType::Bytes => Self::Bytes(Vec::with_capacity(capacity)),
            _ => Self::I64(Vec::with_capacity(capacity)),
        }
    }

    /// The number of elements.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Bool(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
            Self::Bytes(v) => v.len(),
        }
    }

    /// Appends `other`; false (and nothing appended) when the families differ.
    pub(crate) fn extend_from(&mut self, other: &Self) -> bool {
        match (self, other) {
            (Self::Bool(a), Self::Bool(b)) => a.extend_from_slice(b),
            (Self::I64(a), Self::I64(b)) => a.extend_from_slice(b),
            (Self::U64(a), Self::U64(b)) => a.extend_from_slice(b),
            (Self::F32(a), Self::F32(b)) => a.extend_from_slice(b),
            (Self::F64(a), Self::F64(b)) => a.extend_from_slice(b),
            (Self::Bytes(a), Self::Bytes(b)) => a.extend_from_slice(b),
            _ => return false,
        }
        true
    }

    /// Elements `start..end` (in range by the caller's arithmetic).
    pub(crate) fn slice(&self, start: usize, end: usize) -> Self {
        match self {
            Self::Bool(v) => Self::Bool(v[start..end].to_vec()),
            Self::I64(v) => Self::I64(v[start..end].to_vec()),
            Self::U64(v) => Self::U64(v[start..end].to_vec()),
            Self::F32(v) => Self::F32(v[start..end].to_vec()),
            Self::F64(v) => Self::F64(v[start..end].to_vec()),
            Self::Bytes(v) => Self::Bytes(v[start..end].to_vec()),
        }
    }
}

impl Serialize for Values {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Bool(v) => s.collect_seq(v),
            Self::I64(v) => s.collect_seq(v),
            Self::U64(v) => s.collect_seq(v),
            Self::F32(v) => s.collect_seq(v),
            Self::F64(v) => s.collect_seq(v),
            Self::Bytes(v) => {
                // The protocol's JSON form of BYTES is a string per element.
                let mut seq = s.serialize_seq(Some(v.len()))?;
                for b in v {
                    seq.serialize_element(&String::from_utf8_lossy(b))?;
                }
                seq.end()
            }
        }
    }
}

/// A tensor as the wire carries it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorData {
    pub(crate) datatype: DataType,
    pub(crate) shape: Vec<usize>,
    // invariant: values.len() == product of shape; the family matches datatype.
    pub(crate) values: Values,
}

/// A named input or output.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NamedTensor {
    pub(crate) name: String,
    pub(crate) data: TensorData,
}

/// The element count of `shape`, or `None` on overflow.
pub(crate) fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d))
}

impl TensorData {
    /// Decodes the raw JSON text of a `data` field (flat or nested arrays,
    /// row-major) of input `name`; the element count must match `shape`.
    ///
    /// # Errors
    ///
    /// A message naming the input: wrong element count, an element of the wrong
    /// JSON type or out of the datatype's range, nesting too deep.
    pub(crate) fn from_json(
        name: &str,
        datatype: DataType,
        shape: Vec<usize>,
        raw: &str,
    ) -> Result<Self, String> {
        let count = element_count(&shape)
            .ok_or_else(|| format!("input {name:?}: shape {shape:?} is too large"))?;
        let (values, seen) =
            json_data::decode(raw, datatype, count).map_err(|e| format!("input {name:?}: {e}"))?;
        if seen != count {
            return Err(format!(
                "input {name:?}: shape {shape:?} needs {count} elements, data holds {seen}"
            ));
        }
        Ok(Self {
            datatype,
            shape,
            values,
        })
    }

    /// Decodes raw little-endian bytes of input `name` (the binary tensor data
    /// extension); the byte count must match `shape` and the datatype.
    ///
    /// # Errors
    ///
    /// A message naming the input: wrong byte count, a bad BYTES length prefix.
    pub(crate) fn from_binary(
        name: &str,
        datatype: DataType,
        shape: Vec<usize>,
        bytes: &[u8],
    ) -> Result<Self, String> {
        let count = element_count(&shape)
            .ok_or_else(|| format!("input {name:?}: shape {shape:?} is too large"))?;
        let Some(size) = datatype.size() else {
            let values =
                decode_bytes_elements(bytes, count).map_err(|e| format!("input {name:?}: {e}"))?;
            return Ok(Self {
                datatype,
                shape,
                values,
            });
        };
        if Some(bytes.len()) != count.checked_mul(size) {
            return Err(format!(
                "input {name:?}: shape {shape:?} of {} needs {} bytes, binary data holds {}",
                datatype.name(),
                count.saturating_mul(size),
                bytes.len()
            ));
        }
        let mut values = Values::with_capacity(datatype, count);
        for chunk in bytes.chunks_exact(size) {
            push_le(&mut values, datatype, chunk);
        }
        Ok(Self {
            datatype,
            shape,
            values,
        })
    }

    /// The runtime tensor for these values.
    ///
    /// # Errors
    ///
    /// A message for `BYTES` (the runtime holds no strings) or a tensor the
    /// runtime could not build.
    pub(crate) fn into_tensor(self) -> Result<Tensor, String> {
        let elem = self
            .datatype
            .elem()
            .ok_or_else(|| "BYTES tensors cannot be fed to an ONNX model here".to_owned())?;
        let shape = &self.shape;
        let t = match self.values {
            Values::Bool(v) => Tensor::from_bools(shape, v),
            Values::I64(v) => Tensor::from_i64_as(elem, shape, v),
            // Stored with the same bits, as the runtime keeps uint64.
            Values::U64(v) => {
                Tensor::from_i64_as(elem, shape, v.into_iter().map(|x| x as i64).collect())
            }
            Values::F32(v) => Tensor::from_f32(shape, v),
            Values::F64(v) => Tensor::from_f64_as(elem, shape, v),
            Values::Bytes(_) => {
                return Err("BYTES tensors cannot be fed to an ONNX model here".to_owned())
            }
        };
        t.map_err(|e| format!("building a {} tensor: {e}", elem.name()))
    }

    /// The values of a runtime output tensor.
    ///
    /// # Errors
    ///
    /// A message for an element type the protocol has no datatype for.
    pub(crate) fn from_tensor(t: &Tensor) -> Result<Self, String> {
        let elem = t.elem_type();
        let datatype = DataType::of_elem(elem)
            .ok_or_else(|| format!("output of type {elem} has no protocol datatype"))?;
        let values = match elem {
            ElemType::F32 => Values::F32(t.to_f32_vec().map_err(read_err(elem))?),
            ElemType::U64 => Values::U64(
                t.to_i64_vec()
                    .map_err(read_err(elem))?
                    .into_iter()
                    .map(|x| x as u64)
                    .collect(),
            ),
            ElemType::Bool => Values::Bool(
                t.to_i64_vec()
                    .map_err(read_err(elem))?
                    .into_iter()
                    .map(|x| x != 0)
                    .collect(),
            ),
            e if e.is_float() => Values::F64(t.to_f64_vec().map_err(read_err(elem))?),
            _ => Values::I64(t.to_i64_vec().map_err(read_err(elem))?),
        };
        Ok(Self {
            datatype,
            shape: t.shape().to_vec(),
            values,
        })
    }

    /// The values as raw little-endian bytes (BYTES elements each with a 4-byte
    /// length prefix), for a binary output.
    pub(crate) fn to_binary(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.values.len() * self.datatype.size().unwrap_or(8));
        match &self.values {
            Values::Bool(v) => out.extend(v.iter().map(|b| u8::from(*b))),
            Values::I64(v) => {
                for x in v {
                    match self.datatype {
                        DataType::Int8 => out.extend_from_slice(&(*x as i8).to_le_bytes()),
                        DataType::Uint8 => out.push(*x as u8),
                        DataType::Int16 => out.extend_from_slice(&(*x as i16).to_le_bytes()),
                        DataType::Uint16 => out.extend_from_slice(&(*x as u16).to_le_bytes()),
                        DataType::Int32 => out.extend_from_slice(&(*x as i32).to_le_bytes()),
                        DataType::Uint32 => out.extend_from_slice(&(*x as u32).to_le_bytes()),
                        _ => out.extend_from_slice(&x.to_le_bytes()),
                    }
                }
            }
            Values::U64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Values::F32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Values::F64(v) => {
                for x in v {
                    match self.datatype {
                        DataType::Fp16 => {
                            out.extend_from_slice(&half::f16::from_f64(*x).to_le_bytes());
                        }
                        DataType::Bf16 => {
                            out.extend_from_slice(&half::bf16::from_f64(*x).to_le_bytes());
                        }
                        _ => out.extend_from_slice(&x.to_le_bytes()),
                    }
                }
            }
            Values::Bytes(v) => {
                for b in v {
                    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
        out
    }
}

/// Maps a runtime read error to a message.
fn read_err<E: std::fmt::Display>(elem: ElemType) -> impl Fn(E) -> String {
    move |e| format!("reading a {elem} output: {e}")
}

/// Appends one little-endian element of `t` (`chunk` has `t.size()` bytes).
fn push_le(values: &mut Values, t: DataType, chunk: &[u8]) {
    let b2 = || [chunk[0], chunk[1]];
    let b4 = || [chunk[0], chunk[1], chunk[2], chunk[3]];
    let b8 = || {
        let mut a = [0u8; 8];
        a.copy_from_slice(&chunk[..8]);
        a
    };
    match values {
        Values::Bool(out) => out.push(chunk[0] != 0),
        Values::U64(out) => out.push(u64::from_le_bytes(b8())),
        Values::F32(out) => out.push(f32::from_le_bytes(b4())),
        Values::F64(out) => out.push(match t {
            DataType::Fp16 => half::f16::from_le_bytes(b2()).to_f64(),
            DataType::Bf16 => half::bf16::from_le_bytes(b2()).to_f64(),
            _ => f64::from_le_bytes(b8()),
        }),
        Values::Bytes(_) => {}
        Values::I64(out) => out.push(match t {
            DataType::Int8 => i64::from(chunk[0] as i8),
            DataType::Uint8 => i64::from(chunk[0]),
            DataType::Int16 => i64::from(i16::from_le_bytes(b2())),
            DataType::Uint16 => i64::from(u16::from_le_bytes(b2())),
            DataType::Int32 => i64::from(i32::from_le_bytes(b4())),
            DataType::Uint32 => i64::from(u32::from_le_bytes(b4())),
            _ => i64::from_le_bytes(b8()),
        }),
    }
}

/// BYTES elements in binary form: each a u32 little-endian length, then the bytes.
fn decode_bytes_elements(mut bytes: &[u8], count: usize) -> Result<Values, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 4 {
            return Err("BYTES element length prefix is truncated".to_owned());
        }
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let rest = &bytes[4..];
        if rest.len() < len {
            return Err(format!(
                "BYTES element {} claims {len} bytes, {} remain",
                out.len(),
                rest.len()
            ));
        }
        out.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    if out.len() != count {
        return Err(format!(
            "shape needs {count} BYTES elements, binary data holds {}",
            out.len()
        ));
    }
    Ok(Values::Bytes(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_flat_json_data_decode_alike() {
        let nested = TensorData::from_json(
            "x",
            DataType::Fp32,
            vec![2, 2],
            &json!([[1.0, 2.0], [3.0, 4.5]]).to_string(),
        )
        .unwrap();
        let flat = TensorData::from_json(
            "x",
            DataType::Fp32,
            vec![2, 2],
            &json!([1, 2, 3, 4.5]).to_string(),
        )
        .unwrap();
        assert_eq!(nested, flat);
    }

    #[test]
    fn a_wrong_element_count_names_the_input() {
        let err = TensorData::from_json(
            "x",
            DataType::Fp32,
            vec![1, 3],
            &json!([1.0, 2.0]).to_string(),
        )
        .unwrap_err();
        assert!(err.contains("input \"x\""), "{err}");
        assert!(err.contains("needs 3 elements, data holds 2"), "{err}");
    }

    #[test]
    fn integers_out_of_range_are_refused() {
        let err =
            TensorData::from_json("i", DataType::Uint8, vec![2], &json!([1, 256]).to_string())
                .unwrap_err();
        assert!(err.contains("element 1 is 256"), "{err}");
        let err = TensorData::from_json("i", DataType::Int32, vec![1], &json!([1.5]).to_string())
            .unwrap_err();
        assert!(
            err.contains("expected an integer in range for INT32"),
            "{err}"
        );
    }

    #[test]
    fn binary_values_round_trip_for_every_fixed_size_datatype() {
        for name in DataType::NAMES.split(", ") {
            let t = DataType::parse(name).unwrap();
            let Some(size) = t.size() else { continue };
            let json = match t {
                DataType::Bool => json!([true, false, true]),
                DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                    json!([-3, 0, 7])
                }
                DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64 => {
                    json!([-1.5, 0.25, 8.0])
                }
                _ => json!([3, 0, 7]),
            };
            let a = TensorData::from_json("x", t, vec![3], &json.to_string()).unwrap();
            let bytes = a.to_binary();
            assert_eq!(bytes.len(), 3 * size, "{name}");
            let b = TensorData::from_binary("x", t, vec![3], &bytes).unwrap();
            assert_eq!(a, b, "{name}");
            let tensor = a.clone().into_tensor().unwrap();
            assert_eq!(TensorData::from_tensor(&tensor).unwrap(), a, "{name}");
        }
    }

    #[test]
    fn bytes_elements_decode_from_length_prefixed_binary() {
        let a = TensorData::from_json(
            "s",
            DataType::Bytes,
            vec![2],
            &json!(["ab", ""]).to_string(),
        )
        .unwrap();
        let b = TensorData::from_binary("s", DataType::Bytes, vec![2], &a.to_binary()).unwrap();
        assert_eq!(a, b);
        let err =
            TensorData::from_binary("s", DataType::Bytes, vec![1], &[9, 0, 0, 0, 1]).unwrap_err();
        assert!(err.contains("claims 9 bytes"), "{err}");
    }

    #[test]
    fn a_short_binary_buffer_names_the_input_and_the_byte_counts() {
        let err = TensorData::from_binary("x", DataType::Fp32, vec![1, 4], &[0; 15]).unwrap_err();
        assert!(err.contains("input \"x\""), "{err}");
        assert!(
            err.contains("needs 16 bytes, binary data holds 15"),
            "{err}"
        );
    }
}
