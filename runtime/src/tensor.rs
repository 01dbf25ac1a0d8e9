//! [`Tensor`]: the values a [`Model`](crate::Model) takes and returns, an ONNX element
//! type over a candle-core tensor.
//!
//! candle has no `int8`, `uint16`, `uint64` or `bool` dtype, so a tensor keeps the ONNX
//! element type ([`ElemType`]) beside candle's storage dtype: `int8` is stored widened
//! to `i16`, `uint16` to `u32`, `uint64` as `i64` (bit pattern kept) and `bool` as `u8`
//! holding 0 or 1. Kernels see the storage; users see the ONNX type.
//!
//! This module does not decode `TensorProto`s (that is [`crate::tensor_io`]) and holds
//! no operator logic.

use std::fmt;

use candle_core::{DType, Device};

use crate::onnx::tensor_proto::DataType;

/// An ONNX element type this executor can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ElemType {
    /// `float` (IEEE 754 binary32).
    F32,
    /// `float16` (IEEE 754 binary16).
    F16,
    /// `bfloat16`.
    BF16,
    /// `double`.
    F64,
    /// `int8`, stored as `i16`.
    I8,
    /// `int16`.
    I16,
    /// `int32`.
    I32,
    /// `int64`.
    I64,
    /// `uint8`.
    U8,
    /// `uint16`, stored as `u32`.
    U16,
    /// `uint32`.
    U32,
    /// `uint64`, stored as `i64` with the same bits.
    U64,
    /// `bool`, stored as `u8` 0 or 1.
    Bool,
}

impl ElemType {
    /// The element type for an ONNX `TensorProto.DataType` code, if held.
    pub fn from_onnx(code: i32) -> Option<Self> {
        let t = match DataType::try_from(code).ok()? {
            DataType::Float => Self::F32,
            DataType::Float16 => Self::F16,
            DataType::Bfloat16 => Self::BF16,
            DataType::Double => Self::F64,
            DataType::Int8 => Self::I8,
            DataType::Int16 => Self::I16,
            DataType::Int32 => Self::I32,
            DataType::Int64 => Self::I64,
            DataType::Uint8 => Self::U8,
            DataType::Uint16 => Self::U16,
            DataType::Uint32 => Self::U32,
            DataType::Uint64 => Self::U64,
            DataType::Bool => Self::Bool,
            _ => return None,
        };
        Some(t)
    }

    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        let t = match self {
            Self::F32 => DataType::Float,
            Self::F16 => DataType::Float16,
            Self::BF16 => DataType::Bfloat16,
            Self::F64 => DataType::Double,
            Self::I8 => DataType::Int8,
            Self::I16 => DataType::Int16,
            Self::I32 => DataType::Int32,
            Self::I64 => DataType::Int64,
            Self::U8 => DataType::Uint8,
            Self::U16 => DataType::Uint16,
            Self::U32 => DataType::Uint32,
            Self::U64 => DataType::Uint64,
            Self::Bool => DataType::Bool,
        };
        t as i32
    }

    /// The candle dtype the values are stored in.
    pub fn storage(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::F64 => DType::F64,
            Self::I8 | Self::I16 => DType::I16,
            Self::I32 => DType::I32,
            Self::I64 | Self::U64 => DType::I64,
            Self::U8 | Self::Bool => DType::U8,
            Self::U16 | Self::U32 => DType::U32,
        }
    }

    /// True for the floating-point types.
    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16 | Self::F64)
    }

    /// True for signed integer types.
    pub fn is_signed_int(self) -> bool {
        matches!(self, Self::I8 | Self::I16 | Self::I32 | Self::I64)
    }

    /// True for unsigned integer types (not bool).
    pub fn is_unsigned_int(self) -> bool {
        matches!(self, Self::U8 | Self::U16 | Self::U32 | Self::U64)
    }

    /// The ONNX spelling, as in error messages (`float`, `int64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
            Self::F64 => "double",
            Self::I8 => "int8",
            Self::I16 => "int16",
            Self::I32 => "int32",
            Self::I64 => "int64",
            Self::U8 => "uint8",
            Self::U16 => "uint16",
            Self::U32 => "uint32",
            Self::U64 => "uint64",
            Self::Bool => "bool",
        }
    }

    /// The element type whose storage dtype is `dtype` and that is the natural ONNX
    /// reading of it (`u8` reads as `uint8`, `i16` as `int16`).
    pub fn from_storage(dtype: DType) -> Option<Self> {
        let t = match dtype {
            DType::F32 => Self::F32,
            DType::F16 => Self::F16,
            DType::BF16 => Self::BF16,
            DType::F64 => Self::F64,
            DType::I16 => Self::I16,
            DType::I32 => Self::I32,
            DType::I64 => Self::I64,
            DType::U8 => Self::U8,
            DType::U32 => Self::U32,
            _ => return None,
        };
        Some(t)
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A dense tensor: an ONNX element type over a candle tensor in that type's storage
/// dtype.
///
/// Cloning is cheap (candle tensors share their storage).
#[derive(Clone, Debug)]
pub struct Tensor {
    // invariant: data.dtype() == elem.storage(); bool data holds only 0 and 1.
    elem: ElemType,
    data: candle_core::Tensor,
}

impl Tensor {
    /// Wraps a candle tensor, converting it to `elem`'s storage dtype (values cast as
    /// candle casts; for `bool`, any non-zero becomes 1).
    pub fn from_candle(elem: ElemType, data: candle_core::Tensor) -> candle_core::Result<Self> {
        let data = if elem == ElemType::Bool {
            data.ne(0f64)?.to_dtype(DType::U8)?
        } else if data.dtype() == elem.storage() {
            data
        } else {
            data.to_dtype(elem.storage())?
        };
        Ok(Self { elem, data })
    }

    /// A tensor of the natural element type of the candle tensor's dtype.
    pub fn from_storage(data: candle_core::Tensor) -> candle_core::Result<Self> {
        let elem = ElemType::from_storage(data.dtype()).ok_or_else(|| {
            candle_core::Error::Msg(format!("no ONNX element type for {:?}", data.dtype()))
        })?;
        Ok(Self { elem, data })
    }

    /// A float32 tensor of `shape` holding `values` (row-major).
    pub fn from_f32(shape: &[usize], values: Vec<f32>) -> candle_core::Result<Self> {
        Self::from_storage(candle_core::Tensor::from_vec(values, shape, &Device::Cpu)?)
    }

    /// An int64 tensor of `shape` holding `values` (row-major).
    pub fn from_i64(shape: &[usize], values: Vec<i64>) -> candle_core::Result<Self> {
        Self::from_storage(candle_core::Tensor::from_vec(values, shape, &Device::Cpu)?)
    }

    /// A tensor of `elem` built from f64 values (cast as `as` casts).
    pub fn from_f64_as(
        elem: ElemType,
        shape: &[usize],
        values: Vec<f64>,
    ) -> candle_core::Result<Self> {
        if elem.is_float() {
            let t = candle_core::Tensor::from_vec(values, shape, &Device::Cpu)?;
            return Self::from_candle(elem, t);
        }
        let ints: Vec<i64> = values.into_iter().map(|v| v as i64).collect();
        Self::from_i64_as(elem, shape, ints)
    }

    /// A tensor of `elem` built from i64 values (wrapping into narrower types).
    pub fn from_i64_as(
        elem: ElemType,
        shape: &[usize],
        values: Vec<i64>,
    ) -> candle_core::Result<Self> {
        let dev = &Device::Cpu;
        let data = match elem {
            ElemType::I64 | ElemType::U64 => candle_core::Tensor::from_vec(values, shape, dev)?,
            ElemType::I32 => {
                let v: Vec<i32> = values.into_iter().map(|x| x as i32).collect();
                candle_core::Tensor::from_vec(v, shape, dev)?
            }
            ElemType::I16 => {
                let v: Vec<i16> = values.into_iter().map(|x| x as i16).collect();
                candle_core::Tensor::from_vec(v, shape, dev)?
            }
            ElemType::I8 => {
                let v: Vec<i16> = values.into_iter().map(|x| i16::from(x as i8)).collect();
                candle_core::Tensor::from_vec(v, shape, dev)?
            }
            ElemType::U8 => {
                let v: Vec<u8> = values.into_iter().map(|x| x as u8).collect();
                candle_core::Tensor::from_vec(v, shape, dev)?
            }
            ElemType::Bool => {
                let v: Vec<u8> = values.into_iter().map(|x| u8::from(x != 0)).collect();
                candle_core::Tensor::from_vec(v, shape, dev)?
            }
            ElemType::U16 => {
                let v: Vec<u32> = values.into_iter().map(|x| u32::from(x as u16)).collect();
                candle_core::Tensor::from_vec(v, shape, dev)?
            }
            ElemType::U32 => {
                let v: Vec<u32> = values.into_iter().map(|x| x as u32).collect();
                candle_core::Tensor::from_vec(v, shape, dev)?
            }
            ElemType::F32 | ElemType::F16 | ElemType::BF16 | ElemType::F64 => {
                let v: Vec<f64> = values.into_iter().map(|x| x as f64).collect();
                let t = candle_core::Tensor::from_vec(v, shape, dev)?;
                return Self::from_candle(elem, t);
            }
        };
        Ok(Self { elem, data })
    }

    /// A boolean tensor.
    pub fn from_bools(shape: &[usize], values: Vec<bool>) -> candle_core::Result<Self> {
        let v: Vec<u8> = values.into_iter().map(u8::from).collect();
        let data = candle_core::Tensor::from_vec(v, shape, &Device::Cpu)?;
        Ok(Self {
            elem: ElemType::Bool,
            data,
        })
    }

    /// The ONNX element type.
    pub fn elem_type(&self) -> ElemType {
        self.elem
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        self.data.dims()
    }

    /// The rank (number of dimensions).
    pub fn rank(&self) -> usize {
        self.data.rank()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.elem_count()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The candle tensor, in [`ElemType::storage`] dtype.
    pub fn candle(&self) -> &candle_core::Tensor {
        &self.data
    }

    /// Consumes the tensor, returning the candle tensor.
    pub fn into_candle(self) -> candle_core::Tensor {
        self.data
    }

    /// Same element type, new data (converted to the storage dtype when it differs).
    pub fn with_data(&self, data: candle_core::Tensor) -> candle_core::Result<Self> {
        Self::from_candle(self.elem, data)
    }

    /// The values as f64, row-major (integers converted as `as` converts; `uint64`
    /// above `i64::MAX` reads as negative).
    pub fn to_f64_vec(&self) -> candle_core::Result<Vec<f64>> {
        self.data
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()
    }

    /// The values as f32, row-major.
    pub fn to_f32_vec(&self) -> candle_core::Result<Vec<f32>> {
        let flat = self.data.flatten_all()?;
        if flat.dtype() == DType::F32 {
            return flat.to_vec1::<f32>();
        }
        flat.to_dtype(DType::F32)?.to_vec1::<f32>()
    }

    /// The values as i64, row-major (floats truncated toward zero).
    pub fn to_i64_vec(&self) -> candle_core::Result<Vec<i64>> {
        let flat = self.data.flatten_all()?;
        if flat.dtype() == DType::I64 {
            return flat.to_vec1::<i64>();
        }
        if self.elem.is_float() {
            let v = flat.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            return Ok(v.into_iter().map(|x| x as i64).collect());
        }
        flat.to_dtype(DType::I64)?.to_vec1::<i64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_values_round_trip_through_i16_storage() {
        let t = Tensor::from_i64_as(ElemType::I8, &[3], vec![-128, 127, 300]).unwrap();
        assert_eq!(t.candle().dtype(), DType::I16);
        assert_eq!(t.to_i64_vec().unwrap(), vec![-128, 127, 44]);
    }

    #[test]
    fn bool_from_candle_normalises_non_zero_to_one() {
        let c = candle_core::Tensor::new(&[0f32, 2.5, -1.0], &Device::Cpu).unwrap();
        let t = Tensor::from_candle(ElemType::Bool, c).unwrap();
        assert_eq!(t.to_i64_vec().unwrap(), vec![0, 1, 1]);
    }

    #[test]
    fn every_onnx_code_maps_back_to_itself() {
        for code in 1..=16 {
            if let Some(t) = ElemType::from_onnx(code) {
                assert_eq!(t.onnx_code(), code);
            }
        }
    }
}
