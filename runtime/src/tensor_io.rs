//! Decodes ONNX `TensorProto`s (initializers, `Constant` values, test data) into
//! [`Tensor`]s.
//!
//! Data may sit in `raw_data` (little-endian), in the typed repeated fields
//! (`float_data`, `int32_data`, `int64_data`, `double_data`, `uint64_data`), or in an
//! external file named relative to the model's directory. The bytes are untrusted:
//! the element count is checked against the data actually present before anything is
//! allocated, and external paths may not leave the model's directory.
//!
//! This module does not encode tensors and does not know about graphs.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use candle_core::Device;
use half::{bf16, f16};

use crate::error::ModelError;
use crate::onnx::TensorProto;
use crate::tensor::{ElemType, Tensor};

/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: i32 = 1;

/// Decodes `proto` into a tensor; external data is read relative to `base_dir`.
///
/// # Errors
///
/// [`ModelError::UnsupportedElementType`] for types not in [`ElemType`],
/// [`ModelError::Malformed`] when the data disagrees with the dims, and
/// [`ModelError::ExternalData`] when external data cannot be read.
pub fn decode_tensor(proto: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor, ModelError> {
    let name = proto.name().to_owned();
    let code = proto.data_type.unwrap_or(0);
    let elem = ElemType::from_onnx(code).ok_or_else(|| ModelError::UnsupportedElementType {
        tensor: name.clone(),
        code,
    })?;
    let malformed = |reason: String| ModelError::Malformed {
        reason: format!("tensor {name:?}: {reason}"),
    };
    let mut shape = Vec::with_capacity(proto.dims.len());
    let mut count: usize = 1;
    for &d in &proto.dims {
        let d = usize::try_from(d).map_err(|_| malformed(format!("negative dim {d}")))?;
        count = count
            .checked_mul(d)
            .ok_or_else(|| malformed("element count overflows".to_owned()))?;
        shape.push(d);
    }

    let external;
    let raw: Option<&[u8]> = if proto.data_location == Some(EXTERNAL) {
        external = read_external(proto, base_dir)?;
        Some(&external)
    } else {
        proto.raw_data.as_deref()
    };

    let candle = |r: candle_core::Result<Tensor>| r.map_err(|e| malformed(e.to_string()));
    if let Some(raw) = raw {
        let width = byte_width(elem);
        if count.checked_mul(width) != Some(raw.len()) {
            return Err(malformed(format!(
                "raw data has {} bytes, dims {shape:?} of {elem} need {}",
                raw.len(),
                count.saturating_mul(width)
            )));
        }
        return candle(from_raw(elem, &shape, raw));
    }

    let typed_len = match elem {
        ElemType::F32 => proto.float_data.len(),
        ElemType::F64 => proto.double_data.len(),
        ElemType::I64 => proto.int64_data.len(),
        ElemType::U32 | ElemType::U64 => proto.uint64_data.len(),
        _ => proto.int32_data.len(),
    };
    if typed_len != count {
        return Err(malformed(format!(
            "has {typed_len} values, dims {shape:?} need {count}"
        )));
    }
    let dev = &Device::Cpu;
    let t = match elem {
        ElemType::F32 => candle_core::Tensor::from_vec(proto.float_data.clone(), &*shape, dev)
            .and_then(Tensor::from_storage),
        ElemType::F64 => candle_core::Tensor::from_vec(proto.double_data.clone(), &*shape, dev)
            .and_then(Tensor::from_storage),
        ElemType::I64 => Tensor::from_i64(&shape, proto.int64_data.clone()),
        ElemType::U32 | ElemType::U64 => Tensor::from_i64_as(
            elem,
            &shape,
            proto.uint64_data.iter().map(|&v| v as i64).collect(),
        ),
        ElemType::F16 => {
            let v: Vec<f16> = proto
                .int32_data
                .iter()
                .map(|&b| f16::from_bits(b as u16))
                .collect();
            candle_core::Tensor::from_vec(v, &*shape, dev).and_then(Tensor::from_storage)
        }
        ElemType::BF16 => {
            let v: Vec<bf16> = proto
                .int32_data
                .iter()
                .map(|&b| bf16::from_bits(b as u16))
                .collect();
            candle_core::Tensor::from_vec(v, &*shape, dev).and_then(Tensor::from_storage)
        }
        _ => Tensor::from_i64_as(
            elem,
            &shape,
            proto.int32_data.iter().map(|&v| i64::from(v)).collect(),
        ),
    };
    candle(t)
}

/// Bytes per element in `raw_data`.
fn byte_width(elem: ElemType) -> usize {
    match elem {
        ElemType::F64 | ElemType::I64 | ElemType::U64 => 8,
        ElemType::F32 | ElemType::I32 | ElemType::U32 => 4,
        ElemType::F16 | ElemType::BF16 | ElemType::I16 | ElemType::U16 => 2,
        ElemType::I8 | ElemType::U8 | ElemType::Bool => 1,
    }
}

fn from_raw(elem: ElemType, shape: &[usize], raw: &[u8]) -> candle_core::Result<Tensor> {
    let dev = &Device::Cpu;
    macro_rules! le {
        ($t:ty, $n:expr) => {
            raw.chunks_exact($n)
                .map(|c| {
                    let mut b = [0u8; $n];
                    b.copy_from_slice(c);
                    <$t>::from_le_bytes(b)
                })
                .collect::<Vec<$t>>()
        };
    }
    match elem {
        ElemType::F32 => Tensor::from_f32(shape, le!(f32, 4)),
        ElemType::F64 => {
            Tensor::from_storage(candle_core::Tensor::from_vec(le!(f64, 8), shape, dev)?)
        }
        ElemType::F16 => {
            let v: Vec<f16> = le!(u16, 2).into_iter().map(f16::from_bits).collect();
            Tensor::from_storage(candle_core::Tensor::from_vec(v, shape, dev)?)
        }
        ElemType::BF16 => {
            let v: Vec<bf16> = le!(u16, 2).into_iter().map(bf16::from_bits).collect();
            Tensor::from_storage(candle_core::Tensor::from_vec(v, shape, dev)?)
        }
        ElemType::I64 | ElemType::U64 => Tensor::from_i64_as(elem, shape, le!(i64, 8)),
        ElemType::I32 => {
            Tensor::from_storage(candle_core::Tensor::from_vec(le!(i32, 4), shape, dev)?)
        }
        ElemType::U32 => {
            Tensor::from_storage(candle_core::Tensor::from_vec(le!(u32, 4), shape, dev)?)
        }
        ElemType::I16 => {
            Tensor::from_storage(candle_core::Tensor::from_vec(le!(i16, 2), shape, dev)?)
        }
        ElemType::U16 => Tensor::from_i64_as(
            elem,
            shape,
            le!(u16, 2).into_iter().map(i64::from).collect(),
        ),
        ElemType::I8 => Tensor::from_i64_as(
            elem,
            shape,
            raw.iter().map(|&b| i64::from(b as i8)).collect(),
        ),
        ElemType::U8 => {
            Tensor::from_storage(candle_core::Tensor::from_vec(raw.to_vec(), shape, dev)?)
        }
        ElemType::Bool => Tensor::from_bools(shape, raw.iter().map(|&b| b != 0).collect()),
    }
}

/// Reads the bytes of an external tensor (`location`, optional `offset`, `length`).
fn read_external(proto: &TensorProto, base_dir: Option<&Path>) -> Result<Vec<u8>, ModelError> {
    let mut location = String::new();
    let mut offset: u64 = 0;
    let mut length: Option<u64> = None;
    for entry in &proto.external_data {
        let value = entry.value();
        match entry.key() {
            "location" => location = value.to_owned(),
            "offset" => offset = value.parse().unwrap_or(u64::MAX),
            "length" => length = Some(value.parse().unwrap_or(u64::MAX)),
            _ => {}
        }
    }
    let err = |reason: String| ModelError::ExternalData {
        tensor: proto.name().to_owned(),
        location: location.clone(),
        reason,
    };
    let base = base_dir.ok_or_else(|| err("no model directory was given".to_owned()))?;
    let rel = Path::new(&location);
    if location.is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(err(
            "location must be a relative path inside the model directory".into(),
        ));
    }
    let path = base.join(rel);
    let mut file = std::fs::File::open(&path).map_err(|e| err(e.to_string()))?;
    let size = file.metadata().map_err(|e| err(e.to_string()))?.len();
    let length = length.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(err(format!(
            "range {offset}+{length} is past the end of the file ({size} bytes)"
        )));
    }
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| err(e.to_string()))?;
    let len = usize::try_from(length).map_err(|e| err(e.to_string()))?;
    let mut buf = vec![0u8; len];
    file.read_exact(&mut buf).map_err(|e| err(e.to_string()))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::StringStringEntryProto;

    fn proto(data_type: i32, dims: Vec<i64>) -> TensorProto {
        TensorProto {
            data_type: Some(data_type),
            dims,
            name: Some("t".into()),
            ..Default::default()
        }
    }

    #[test]
    fn raw_float_data_decodes_little_endian() {
        let mut p = proto(1, vec![2]);
        p.raw_data = Some(
            [1.5f32, -2.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        );
        let t = decode_tensor(&p, None).unwrap();
        assert_eq!(t.to_f32_vec().unwrap(), vec![1.5, -2.0]);
    }

    #[test]
    fn typed_int32_field_holds_int8_values() {
        let mut p = proto(3, vec![3]);
        p.int32_data = vec![-1, 5, 127];
        let t = decode_tensor(&p, None).unwrap();
        assert_eq!(t.elem_type(), ElemType::I8);
        assert_eq!(t.to_i64_vec().unwrap(), vec![-1, 5, 127]);
    }

    #[test]
    fn huge_dims_without_data_are_malformed_not_allocated() {
        let p = proto(1, vec![1 << 30, 1 << 30]);
        assert!(matches!(
            decode_tensor(&p, None),
            Err(ModelError::Malformed { .. })
        ));
    }

    #[test]
    fn external_location_may_not_escape_the_model_directory() {
        let mut p = proto(1, vec![1]);
        p.data_location = Some(EXTERNAL);
        p.external_data = vec![StringStringEntryProto {
            key: Some("location".into()),
            value: Some("../secret".into()),
        }];
        let err = decode_tensor(&p, Some(Path::new("/tmp"))).unwrap_err();
        assert!(matches!(err, ModelError::ExternalData { .. }), "{err}");
    }

    #[test]
    fn string_tensors_are_an_unsupported_element_type() {
        let p = proto(8, vec![0]);
        assert!(matches!(
            decode_tensor(&p, None),
            Err(ModelError::UnsupportedElementType { code: 8, .. })
        ));
    }
}
