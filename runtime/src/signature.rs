//! Reads a model's input/output signature out of its ONNX bytes.
//!
//! The hub calls [`model_signature`] when a model is registered (the signature goes
//! into the bundle manifest) and the agent can call it to check a bundle before
//! serving it. The bytes are untrusted: every failure is a [`ModelError`], never a
//! panic.
//!
//! This module does not check that the graph is well formed (that node inputs exist,
//! that operators are known, that shapes agree); it only reports what the graph
//! declares at its boundary. Tensor data stored outside the model file is not read.

use std::collections::HashSet;

use flotilla_protocol::manifest::{Dim, ElementType, ModelSignature, TensorSpec};
use prost::Message;

use crate::error::ModelError;
use crate::onnx::{
    tensor_proto::DataType, tensor_shape_proto::dimension, type_proto, ModelProto,
    TensorShapeProto, ValueInfoProto,
};

/// The most inputs, and separately the most outputs, a graph may declare.
///
/// Design: a hostile-input bound like those of
/// [`flotilla_protocol::limits::Limits`], kept here as a const because only this
/// module reads ONNX. Real models have a handful of each; a signature with more would
/// bloat every manifest that carries it. Decoding itself is bounded by the size of
/// the bytes.
pub const MAX_SIGNATURE_VALUES: usize = 100_000;

/// Decodes `model_bytes` as an ONNX `ModelProto` and returns its graph's signature.
///
/// Inputs are the graph inputs that are not also initializers (models before IR
/// version 4 list their weights as inputs too); outputs are all graph outputs. Both
/// keep the graph's order. Dimensions map as: `dim_value >= 0` to [`Dim::Fixed`],
/// a non-empty `dim_param` to [`Dim::Symbolic`], anything else (unset, negative,
/// empty name) to [`Dim::Unknown`]. A value with a tensor type but no shape gets
/// `shape: None` (rank unknown).
///
/// # Errors
///
/// [`ModelError::Decode`] if the bytes are not a `ModelProto`, [`ModelError::NoGraph`],
/// [`ModelError::TooManyValues`] past [`MAX_SIGNATURE_VALUES`], and for any boundary
/// value [`ModelError::MissingType`], [`ModelError::NonTensorValue`] or
/// [`ModelError::UnsupportedElementType`].
pub fn model_signature(model_bytes: &[u8]) -> Result<ModelSignature, ModelError> {
    // Design: decode a slim view of the model that declares only the fields the
    // signature needs. prost skips every other field without allocating, so the
    // weights (often almost all of the bytes) are never copied: peak memory
    // stays at the size of `model_bytes` instead of twice it.
    let model = SlimModel::decode(model_bytes).map_err(|e| ModelError::Decode {
        message: e.to_string(),
    })?;
    let graph = model.graph.as_ref().ok_or(ModelError::NoGraph)?;
    let initializers: HashSet<&str> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .chain(
            graph
                .sparse_initializer
                .iter()
                .filter_map(|s| s.values.as_ref()?.name.as_deref()),
        )
        .collect();
    boundary_signature(&graph.input, &graph.output, &initializers)
}

/// `ModelProto` with only its graph (field numbers from onnx.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct SlimModel {
    #[prost(message, optional, tag = "7")]
    graph: Option<SlimGraph>,
}

/// `GraphProto` with only its boundary and the names of its initializers.
#[derive(Clone, PartialEq, prost::Message)]
struct SlimGraph {
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<SlimTensor>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "15")]
    sparse_initializer: Vec<SlimSparseTensor>,
}

/// `TensorProto` with only its name: its data fields are skipped, not copied.
#[derive(Clone, PartialEq, prost::Message)]
struct SlimTensor {
    #[prost(string, optional, tag = "8")]
    name: Option<String>,
}

/// `SparseTensorProto` with only its values' name.
#[derive(Clone, PartialEq, prost::Message)]
struct SlimSparseTensor {
    #[prost(message, optional, tag = "1")]
    values: Option<SlimTensor>,
}

/// Decodes `model_bytes` as an ONNX `ModelProto`.
pub(crate) fn decode_model(model_bytes: &[u8]) -> Result<ModelProto, ModelError> {
    ModelProto::decode(model_bytes).map_err(|e| ModelError::Decode {
        message: e.to_string(),
    })
}

/// The signature of a graph boundary; see [`model_signature`].
fn boundary_signature(
    input: &[ValueInfoProto],
    output: &[ValueInfoProto],
    initializers: &HashSet<&str>,
) -> Result<ModelSignature, ModelError> {
    check_count("inputs", input.len())?;
    check_count("outputs", output.len())?;
    let inputs = input
        .iter()
        .filter(|v| !initializers.contains(v.name()))
        .map(tensor_spec)
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = output
        .iter()
        .map(tensor_spec)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ModelSignature { inputs, outputs })
}

fn check_count(role: &'static str, count: usize) -> Result<(), ModelError> {
    if count > MAX_SIGNATURE_VALUES {
        return Err(ModelError::TooManyValues {
            role,
            count,
            limit: MAX_SIGNATURE_VALUES,
        });
    }
    Ok(())
}

/// One boundary value as a [`TensorSpec`]. A missing name reads as the empty string.
fn tensor_spec(value: &ValueInfoProto) -> Result<TensorSpec, ModelError> {
    let name = value.name().to_owned();
    let value_type = value.r#type.as_ref().and_then(|t| t.value.as_ref());
    let kind = match value_type {
        None => return Err(ModelError::MissingType { name }),
        Some(type_proto::Value::TensorType(tensor)) => {
            let code = tensor.elem_type();
            let Some(elem_type) = element_type(code) else {
                return Err(ModelError::UnsupportedElementType { tensor: name, code });
            };
            return Ok(TensorSpec {
                name,
                elem_type,
                shape: tensor.shape.as_ref().map(shape),
            });
        }
        Some(type_proto::Value::SequenceType(_)) => "sequence",
        Some(type_proto::Value::MapType(_)) => "map",
        Some(type_proto::Value::OptionalType(_)) => "optional",
        Some(type_proto::Value::SparseTensorType(_)) => "sparse tensor",
        Some(type_proto::Value::OpaqueType(_)) => "opaque",
    };
    Err(ModelError::NonTensorValue { name, kind })
}

/// The Flotilla element type for an ONNX `TensorProto.DataType` code, if served.
fn element_type(code: i32) -> Option<ElementType> {
    let element = match DataType::try_from(code).ok()? {
        DataType::Float => ElementType::Float32,
        DataType::Float16 => ElementType::Float16,
        DataType::Bfloat16 => ElementType::Bfloat16,
        DataType::Double => ElementType::Float64,
        DataType::Int8 => ElementType::Int8,
        DataType::Int16 => ElementType::Int16,
        DataType::Int32 => ElementType::Int32,
        DataType::Int64 => ElementType::Int64,
        DataType::Uint8 => ElementType::Uint8,
        DataType::Uint16 => ElementType::Uint16,
        DataType::Uint32 => ElementType::Uint32,
        DataType::Uint64 => ElementType::Uint64,
        DataType::Bool => ElementType::Bool,
        DataType::String => ElementType::String,
        // Off-spec: valid ONNX types that Flotilla's manifest cannot name yet.
        DataType::Undefined
        | DataType::Complex64
        | DataType::Complex128
        | DataType::Float8e4m3fn
        | DataType::Float8e4m3fnuz
        | DataType::Float8e5m2
        | DataType::Float8e5m2fnuz
        | DataType::Uint4
        | DataType::Int4
        | DataType::Float4e2m1
        | DataType::Float8e8m0
        | DataType::Uint2
        | DataType::Int2
        | DataType::Float6e2m3
        | DataType::Float6e3m2 => return None,
    };
    Some(element)
}

fn shape(shape: &TensorShapeProto) -> Vec<Dim> {
    shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(dimension::Value::DimValue(v)) => {
                u64::try_from(*v).map_or(Dim::Unknown, Dim::Fixed)
            }
            Some(dimension::Value::DimParam(p)) if !p.is_empty() => Dim::Symbolic(p.clone()),
            Some(dimension::Value::DimParam(_)) | None => Dim::Unknown,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::mlp;
    use crate::onnx::{
        tensor_shape_proto::Dimension, type_proto::Tensor, GraphProto, OperatorSetIdProto,
        TypeProto,
    };
    use proptest::prelude::*;

    fn tensor_value(name: &str, elem_type: i32, dims: Option<Vec<Dimension>>) -> ValueInfoProto {
        ValueInfoProto {
            name: Some(name.to_owned()),
            r#type: Some(TypeProto {
                denotation: None,
                value: Some(type_proto::Value::TensorType(Tensor {
                    elem_type: Some(elem_type),
                    shape: dims.map(|dim| TensorShapeProto { dim }),
                })),
            }),
            ..Default::default()
        }
    }

    fn dim(value: dimension::Value) -> Dimension {
        Dimension {
            denotation: None,
            value: Some(value),
        }
    }

    fn model_with(inputs: Vec<ValueInfoProto>, outputs: Vec<ValueInfoProto>) -> Vec<u8> {
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(GraphProto {
                input: inputs,
                output: outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn mlp_signature_has_symbolic_batch_and_layer_widths() {
        let sig = model_signature(&mlp(&[4, 8, 3], 7)).unwrap();
        let spec = |name: &str, width| TensorSpec {
            name: name.to_owned(),
            elem_type: ElementType::Float32,
            shape: Some(vec![Dim::Symbolic("batch".to_owned()), Dim::Fixed(width)]),
        };
        assert_eq!(
            sig,
            ModelSignature {
                inputs: vec![spec("input", 4)],
                outputs: vec![spec("output", 3)],
            }
        );
    }

    #[test]
    fn inputs_that_are_initializers_are_left_out() {
        let mut model = ModelProto::decode(mlp(&[4, 8, 3], 7).as_slice()).unwrap();
        let graph = model.graph.as_mut().unwrap();
        // IR < 4 style: weights are listed as graph inputs as well.
        let weights: Vec<_> = graph
            .initializer
            .iter()
            .map(|t| tensor_value(t.name(), t.data_type(), None))
            .collect();
        assert_eq!(weights.len(), 4);
        graph.input.extend(weights);

        let sig = model_signature(&model.encode_to_vec()).unwrap();
        let names: Vec<_> = sig.inputs.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["input"]);
    }

    #[test]
    fn dimensions_map_to_fixed_symbolic_or_unknown() {
        let dims = vec![
            dim(dimension::Value::DimValue(0)),
            dim(dimension::Value::DimValue(12)),
            dim(dimension::Value::DimValue(-1)),
            dim(dimension::Value::DimParam("seq".to_owned())),
            dim(dimension::Value::DimParam(String::new())),
            Dimension::default(),
        ];
        let bytes = model_with(
            vec![tensor_value("x", DataType::Int64 as i32, Some(dims))],
            vec![],
        );
        let sig = model_signature(&bytes).unwrap();
        assert_eq!(sig.inputs[0].elem_type, ElementType::Int64);
        assert_eq!(
            sig.inputs[0].shape,
            Some(vec![
                Dim::Fixed(0),
                Dim::Fixed(12),
                Dim::Unknown,
                Dim::Symbolic("seq".to_owned()),
                Dim::Unknown,
                Dim::Unknown,
            ])
        );
    }

    #[test]
    fn missing_shape_is_unknown_rank_and_empty_shape_is_a_scalar() {
        let bytes = model_with(
            vec![tensor_value("no_shape", DataType::Bool as i32, None)],
            vec![tensor_value(
                "scalar",
                DataType::Double as i32,
                Some(vec![]),
            )],
        );
        let sig = model_signature(&bytes).unwrap();
        assert_eq!(sig.inputs[0].shape, None);
        assert_eq!(sig.outputs[0].elem_type, ElementType::Float64);
        assert_eq!(sig.outputs[0].shape, Some(vec![]));
    }

    #[test]
    fn every_served_element_type_maps_and_others_are_rejected() {
        let served = [
            (DataType::Float, ElementType::Float32),
            (DataType::Float16, ElementType::Float16),
            (DataType::Bfloat16, ElementType::Bfloat16),
            (DataType::Double, ElementType::Float64),
            (DataType::Int8, ElementType::Int8),
            (DataType::Int16, ElementType::Int16),
            (DataType::Int32, ElementType::Int32),
            (DataType::Int64, ElementType::Int64),
            (DataType::Uint8, ElementType::Uint8),
            (DataType::Uint16, ElementType::Uint16),
            (DataType::Uint32, ElementType::Uint32),
            (DataType::Uint64, ElementType::Uint64),
            (DataType::Bool, ElementType::Bool),
            (DataType::String, ElementType::String),
        ];
        for (onnx, ours) in served {
            assert_eq!(element_type(onnx as i32), Some(ours), "{onnx:?}");
        }
        for code in [0, 14, 15, 17, 21, 28, 29, -1, i32::MAX] {
            assert_eq!(element_type(code), None, "code {code}");
        }
    }

    #[test]
    fn unsupported_element_type_names_the_tensor_and_code() {
        let bytes = model_with(
            vec![],
            vec![tensor_value("z", DataType::Complex64 as i32, None)],
        );
        assert_eq!(
            model_signature(&bytes),
            Err(ModelError::UnsupportedElementType {
                tensor: "z".to_owned(),
                code: 14
            })
        );
    }

    #[test]
    fn sequence_input_is_a_non_tensor_value() {
        let seq = ValueInfoProto {
            name: Some("s".to_owned()),
            r#type: Some(TypeProto {
                denotation: None,
                value: Some(type_proto::Value::SequenceType(Box::default())),
            }),
            ..Default::default()
        };
        assert_eq!(
            model_signature(&model_with(vec![seq], vec![])),
            Err(ModelError::NonTensorValue {
                name: "s".to_owned(),
                kind: "sequence"
            })
        );
    }

    #[test]
    fn value_without_type_is_missing_type() {
        let untyped = ValueInfoProto {
            name: Some("u".to_owned()),
            ..Default::default()
        };
        assert_eq!(
            model_signature(&model_with(vec![untyped], vec![])),
            Err(ModelError::MissingType {
                name: "u".to_owned()
            })
        );
    }

    #[test]
    fn model_without_graph_is_rejected() {
        let bytes = ModelProto {
            ir_version: Some(8),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(model_signature(&bytes), Err(ModelError::NoGraph));
        assert_eq!(model_signature(&[]), Err(ModelError::NoGraph));
    }

    #[test]
    fn garbage_bytes_are_a_decode_error() {
        let err = model_signature(b"\xff\xff\xff\xff not a model").unwrap_err();
        assert!(matches!(err, ModelError::Decode { .. }), "{err:?}");
    }

    #[test]
    fn truncated_model_is_a_decode_error() {
        let bytes = mlp(&[4, 8, 3], 1);
        let err = model_signature(&bytes[..bytes.len() - 5]).unwrap_err();
        assert!(matches!(err, ModelError::Decode { .. }), "{err:?}");
    }

    #[test]
    fn more_outputs_than_the_limit_are_rejected() {
        let outputs = vec![ValueInfoProto::default(); MAX_SIGNATURE_VALUES + 1];
        assert_eq!(
            model_signature(&model_with(vec![], outputs)),
            Err(ModelError::TooManyValues {
                role: "outputs",
                count: MAX_SIGNATURE_VALUES + 1,
                limit: MAX_SIGNATURE_VALUES
            })
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = model_signature(&bytes);
        }

        #[test]
        fn corrupted_models_never_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let _ = model_signature(&crate::generate::damaged_mlp(&edits, cut));
        }
    }
}
