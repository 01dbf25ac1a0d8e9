//! Tensor datatypes as the Open Inference Protocol spells them (`FP32`, `INT64`,
//! `BYTES`, ...), and their mapping to the manifest's [`ElementType`] and the
//! runtime's [`ElemType`].
//!
//! It does not hold tensor values (that is [`super::tensors`]).

use flotilla_protocol::manifest::{Dim, ElementType, TensorSpec};
use flotilla_runtime::ElemType;

/// A tensor datatype of the protocol; `BF16` is Triton's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    /// Every datatype, for error messages.
    pub(crate) const NAMES: &'static str =
        "BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, BF16, FP32, FP64, BYTES";

    /// The datatype the wire name `s` names (case-sensitive, as the protocol says).
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => Self::Bool,
            "UINT8" => Self::Uint8,
            "UINT16" => Self::Uint16,
            "UINT32" => Self::Uint32,
            "UINT64" => Self::Uint64,
            "INT8" => Self::Int8,
            "INT16" => Self::Int16,
            "INT32" => Self::Int32,
            "INT64" => Self::Int64,
            "FP16" => Self::Fp16,
            "BF16" => Self::Bf16,
            "FP32" => Self::Fp32,
            "FP64" => Self::Fp64,
            "BYTES" => Self::Bytes,
            _ => return None,
        })
    }

    /// The wire name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::Uint8 => "UINT8",
            Self::Uint16 => "UINT16",
            Self::Uint32 => "UINT32",
            Self::Uint64 => "UINT64",
            Self::Int8 => "INT8",
            Self::Int16 => "INT16",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::Fp16 => "FP16",
            Self::Bf16 => "BF16",
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
            Self::Bytes => "BYTES",
        }
    }

    /// Bytes per element in the binary tensor data extension; `None` for `BYTES`,
    /// whose elements are each a 4-byte little-endian length and the bytes.
    pub(crate) fn size(self) -> Option<usize> {
        Some(match self {
            Self::Bool | Self::Uint8 | Self::Int8 => 1,
            Self::Uint16 | Self::Int16 | Self::Fp16 | Self::Bf16 => 2,
            Self::Uint32 | Self::Int32 | Self::Fp32 => 4,
            Self::Uint64 | Self::Int64 | Self::Fp64 => 8,
            Self::Bytes => return None,
        })
    }

    /// The datatype a manifest element type is served as; strings, and element
    /// types added to the manifest after this build, are `BYTES`.
    pub(crate) fn of_element(t: ElementType) -> Self {
        match t {
            ElementType::Float32 => Self::Fp32,
            ElementType::Float16 => Self::Fp16,
            ElementType::Bfloat16 => Self::Bf16,
            ElementType::Float64 => Self::Fp64,
            ElementType::Int8 => Self::Int8,
            ElementType::Int16 => Self::Int16,
            ElementType::Int32 => Self::Int32,
            ElementType::Int64 => Self::Int64,
            ElementType::Uint8 => Self::Uint8,
            ElementType::Uint16 => Self::Uint16,
            ElementType::Uint32 => Self::Uint32,
            ElementType::Uint64 => Self::Uint64,
            ElementType::Bool => Self::Bool,
            _ => Self::Bytes,
        }
    }

    /// The datatype of a runtime tensor's element type, where the protocol has one.
    pub(crate) fn of_elem(t: ElemType) -> Option<Self> {
        Some(match t {
            ElemType::F32 => Self::Fp32,
            ElemType::F16 => Self::Fp16,
            ElemType::BF16 => Self::Bf16,
            ElemType::F64 => Self::Fp64,
            ElemType::I8 => Self::Int8,
            ElemType::I16 => Self::Int16,
            ElemType::I32 => Self::Int32,
            ElemType::I64 => Self::Int64,
            ElemType::U8 => Self::Uint8,
            ElemType::U16 => Self::Uint16,
            ElemType::U32 => Self::Uint32,
            ElemType::U64 => Self::Uint64,
            ElemType::Bool => Self::Bool,
            _ => return None,
        })
    }

    /// The runtime element type tensors of this datatype are built as; `None` for
    /// `BYTES`, which the runtime does not hold.
    pub(crate) fn elem(self) -> Option<ElemType> {
        Some(match self {
            Self::Bool => ElemType::Bool,
            Self::Uint8 => ElemType::U8,
            Self::Uint16 => ElemType::U16,
            Self::Uint32 => ElemType::U32,
            Self::Uint64 => ElemType::U64,
            Self::Int8 => ElemType::I8,
            Self::Int16 => ElemType::I16,
            Self::Int32 => ElemType::I32,
            Self::Int64 => ElemType::I64,
            Self::Fp16 => ElemType::F16,
            Self::Bf16 => ElemType::BF16,
            Self::Fp32 => ElemType::F32,
            Self::Fp64 => ElemType::F64,
            Self::Bytes => return None,
        })
    }
}

/// A declared shape as the protocol's metadata writes it: fixed sizes as they are,
/// symbolic and unknown dims as -1. An unknown rank is written `[]`, since the
/// protocol has no spelling for it.
pub(crate) fn metadata_shape(spec: &TensorSpec) -> Vec<i64> {
    spec.shape.as_ref().map_or_else(Vec::new, |dims| {
        dims.iter()
            .map(|d| match d {
                Dim::Fixed(n) => i64::try_from(*n).unwrap_or(-1),
                Dim::Symbolic(_) | Dim::Unknown => -1,
            })
            .collect()
    })
}

/// A declared shape for error messages: `[-1, 64]`, or `any shape`.
pub(crate) fn shape_text(spec: &TensorSpec) -> String {
    match &spec.shape {
        None => "any shape".to_owned(),
        Some(_) => format!("{:?}", metadata_shape(spec)),
    }
}

/// `FP32 [-1, 64]`: a spec's datatype and shape, for error messages.
pub(crate) fn spec_text(spec: &TensorSpec) -> String {
    format!(
        "{} {}",
        DataType::of_element(spec.elem_type).name(),
        shape_text(spec)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_name_parses_back_to_itself() {
        for name in DataType::NAMES.split(", ") {
            let t = DataType::parse(name).unwrap();
            assert_eq!(t.name(), name);
        }
        assert_eq!(DataType::parse("fp32"), None);
    }

    #[test]
    fn every_runtime_datatype_round_trips_through_elem() {
        for name in DataType::NAMES.split(", ") {
            let t = DataType::parse(name).unwrap();
            if let Some(e) = t.elem() {
                assert_eq!(DataType::of_elem(e), Some(t));
            }
        }
    }
}
