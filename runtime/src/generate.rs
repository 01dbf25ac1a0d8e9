//! Deterministic ONNX models for demos, tests and benchmarks.
//!
//! [`mlp`] builds a multi-layer perceptron from layer widths and a seed; the same
//! arguments always give the same bytes, so a test or bench can rebuild its model
//! instead of shipping one. [`with_replaced_initializer`] makes the "next version" of
//! a model by regenerating one weight tensor, which is how the content-defined
//! chunking tests show that unchanged tensors re-use their chunks.
//!
//! Weights come from a seeded splitmix64 generator, not from `rand`, so that the bytes
//! never change under a dependency upgrade. These models are for plumbing, not for
//! accuracy: nothing here trains or loads real weights.

use prost::Message;

use crate::error::ModelError;
use crate::onnx::{
    attribute_proto::AttributeType,
    tensor_proto::{DataLocation, DataType},
    tensor_shape_proto::{dimension, Dimension},
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::signature::decode_model;

/// ONNX IR version of generated models (ONNX 1.10 and later read it).
const IR_VERSION: i64 = 8;
/// Default-domain opset of generated models.
const OPSET: i64 = 17;
/// Name of the symbolic batch dimension of generated inputs and outputs.
const BATCH_DIM: &str = "batch";

/// A small genuine MLP's bytes with `edits` (position, byte) written over them
/// and the tail from `cut` on dropped: the damaged files the loaders' property
/// tests feed in.
#[cfg(test)]
pub(crate) fn damaged_mlp(
    edits: &[(proptest::sample::Index, u8)],
    cut: proptest::sample::Index,
) -> Vec<u8> {
    let mut bytes = mlp(&[3, 5, 2], 11);
    for (at, byte) in edits {
        let i = at.index(bytes.len());
        bytes[i] = *byte;
    }
    let keep = cut.index(bytes.len() + 1);
    bytes.truncate(keep);
    bytes
}

/// A multi-layer perceptron as an encoded ONNX model.
///
/// Layer `i` maps `layer_sizes[i]` features to `layer_sizes[i + 1]` with a `Gemm`
/// (`transB = 1`, weight `fc{i}.weight` of shape `[out, in]`, bias `fc{i}.bias` of
/// shape `[out]`), followed by a `Relu` on every layer but the last. The input is
/// `"input"`, float32 `[batch, layer_sizes[0]]`; the output is `"output"`, float32
/// `[batch, last]`, where `batch` is a symbolic dimension. Weights are float32
/// initializers in little-endian `raw_data`, drawn uniformly from
/// `±sqrt(6 / in)` (Kaiming-uniform for ReLU) and biases from `±1 / sqrt(out)`, so
/// activations keep roughly unit scale through the layers.
///
/// The model is IR version 8, opset 17, and the same `(layer_sizes, seed)` always
/// gives the same bytes. With fewer than two sizes there are no layers: the model is
/// an `Identity` from `input` to `output` of width `layer_sizes[0]` (or 0).
///
/// # Panics
///
/// Only if a layer's weights do not fit in memory (`in * out` floats); the arguments
/// come from code, not from peers.
pub fn mlp(layer_sizes: &[usize], seed: u64) -> Vec<u8> {
    let width = |i: usize| layer_sizes.get(i).copied().unwrap_or(0);
    let layers = layer_sizes.len().saturating_sub(1);

    let mut nodes = Vec::new();
    let mut initializers = Vec::new();
    if layers == 0 {
        let inputs = vec!["input".to_owned()];
        nodes.push(node("Identity", "identity", inputs, "output", vec![]));
    }
    let mut current = "input".to_owned();
    for (i, pair) in layer_sizes.windows(2).enumerate() {
        let &[fan_in, fan_out] = pair else { continue };
        let last = i + 1 == layers;
        let weight = format!("fc{i}.weight");
        let bias = format!("fc{i}.bias");
        initializers.push(float_initializer(&weight, &[fan_out, fan_in], seed));
        initializers.push(float_initializer(&bias, &[fan_out], seed));

        let gemm_out = if last {
            "output".to_owned()
        } else {
            format!("fc{i}.out")
        };
        let trans_b = AttributeProto {
            name: Some("transB".to_owned()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(1),
            ..Default::default()
        };
        let gemm_name = format!("fc{i}");
        let inputs = vec![current, weight, bias];
        nodes.push(node("Gemm", &gemm_name, inputs, &gemm_out, vec![trans_b]));
        current = gemm_out;
        if !last {
            let relu_out = format!("relu{i}.out");
            let relu_name = format!("relu{i}");
            nodes.push(node("Relu", &relu_name, vec![current], &relu_out, vec![]));
            current = relu_out;
        }
    }

    let output_width = if layers == 0 { width(0) } else { width(layers) };
    ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("flotilla-runtime generate::mlp".to_owned()),
        graph: Some(GraphProto {
            name: Some("mlp".to_owned()),
            node: nodes,
            initializer: initializers,
            input: vec![batched_float("input", width(0))],
            output: vec![batched_float("output", output_width)],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The same model with the float32 initializer `name` refilled from `seed`.
///
/// The new values have the initializer's shape and storage (`raw_data` or
/// `float_data`) and follow the scaling rule of [`mlp`], read from the tensor's own
/// dims: rank 2 and up is a weight with `in` = the product of all but the first dim,
/// lower ranks are biases. Regenerating an initializer of an [`mlp`] model with that
/// model's seed gives back the original bytes.
///
/// The model is decoded and re-encoded: for a canonically encoded model (as [`mlp`]
/// writes) only that tensor's data bytes change; fields unknown to the schema are
/// dropped.
///
/// # Errors
///
/// [`ModelError::Decode`], [`ModelError::NoGraph`],
/// [`ModelError::InitializerNotFound`], or [`ModelError::UnsupportedInitializer`] if
/// the tensor is not float32, keeps its data outside the model, or has dims that
/// disagree with its data length.
pub fn with_replaced_initializer(
    model_bytes: &[u8],
    name: &str,
    seed: u64,
) -> Result<Vec<u8>, ModelError> {
    let mut model = decode_model(model_bytes)?;
    let graph = model.graph.as_mut().ok_or(ModelError::NoGraph)?;
    let tensor = graph
        .initializer
        .iter_mut()
        .find(|t| t.name() == name)
        .ok_or_else(|| ModelError::InitializerNotFound {
            name: name.to_owned(),
        })?;
    let unsupported = |reason| ModelError::UnsupportedInitializer {
        name: name.to_owned(),
        reason,
    };

    if tensor.data_type() != DataType::Float as i32 {
        return Err(unsupported("not float32"));
    }
    if tensor.data_location() == DataLocation::External || !tensor.external_data.is_empty() {
        return Err(unsupported("data is stored outside the model"));
    }
    let dims = tensor
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| unsupported("negative dimension"))?;
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| unsupported("element count overflows"))?;

    // Design: the element count is checked against the data already in the model
    // before anything is allocated, so hostile dims cannot make this allocate more
    // than the model itself holds.
    let tensor_seed = tensor_seed(seed, name);
    match &mut tensor.raw_data {
        Some(raw) => {
            if count.checked_mul(4) != Some(raw.len()) {
                return Err(unsupported("dims disagree with raw_data length"));
            }
            raw.clear();
            raw.extend(
                kaiming_uniform(&dims, count, tensor_seed)
                    .iter()
                    .flat_map(|v| v.to_le_bytes()),
            );
        }
        None => {
            if tensor.float_data.len() != count {
                return Err(unsupported("dims disagree with float_data length"));
            }
            tensor.float_data = kaiming_uniform(&dims, count, tensor_seed);
        }
    }
    Ok(model.encode_to_vec())
}

fn node(
    op_type: &str,
    name: &str,
    inputs: Vec<String>,
    output: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs,
        output: vec![output.to_owned()],
        name: Some(name.to_owned()),
        op_type: Some(op_type.to_owned()),
        attribute,
        ..Default::default()
    }
}

/// A float32 `[batch, width]` graph input or output.
fn batched_float(name: &str, width: usize) -> ValueInfoProto {
    let dim = |value| Dimension {
        denotation: None,
        value: Some(value),
    };
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            denotation: None,
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto {
                    dim: vec![
                        dim(dimension::Value::DimParam(BATCH_DIM.to_owned())),
                        dim(dimension::Value::DimValue(onnx_dim(width))),
                    ],
                }),
            })),
        }),
        ..Default::default()
    }
}

/// A float32 initializer with seeded values in little-endian `raw_data`.
fn float_initializer(name: &str, dims: &[usize], seed: u64) -> TensorProto {
    let count = dims.iter().product();
    let raw: Vec<u8> = kaiming_uniform(dims, count, tensor_seed(seed, name))
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    TensorProto {
        dims: dims.iter().map(|&d| onnx_dim(d)).collect(),
        data_type: Some(DataType::Float as i32),
        name: Some(name.to_owned()),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// A width as an ONNX dimension; saturates where no allocation could exist anyway.
fn onnx_dim(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `count` values uniform in `±sqrt(6 / in)` for rank >= 2 (`in` = product of all but
/// the first dim) and in `±1 / sqrt(count)` otherwise.
fn kaiming_uniform(dims: &[usize], count: usize, seed: u64) -> Vec<f32> {
    let (bound, fan_in) = match dims {
        [_, rest @ ..] if !rest.is_empty() => {
            let fan_in = rest
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .unwrap_or(usize::MAX);
            (6.0_f64, fan_in)
        }
        _ => (1.0_f64, count),
    };
    let bound = (bound / fan_in.max(1) as f64).sqrt() as f32;
    let mut rng = SplitMix64(seed);
    (0..count)
        .map(|_| (2.0 * rng.next_unit() - 1.0) * bound)
        .collect()
}

/// The generator seed of one tensor: the model seed mixed with the tensor's name, so
/// every tensor gets its own stream and a tensor's values do not depend on its place.
fn tensor_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, then one splitmix64 step to spread it.
    let name_hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    SplitMix64(seed ^ name_hash).next_u64()
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast and good enough for test weights.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 24 bits of precision (all an f32 mantissa holds).
    fn next_unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1_u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::model_signature;
    use proptest::prelude::*;

    fn decode(bytes: &[u8]) -> ModelProto {
        ModelProto::decode(bytes).unwrap()
    }

    fn floats(raw: &[u8]) -> Vec<f32> {
        raw.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn initializer<'a>(model: &'a ModelProto, name: &str) -> &'a TensorProto {
        let graph = model.graph.as_ref().unwrap();
        graph.initializer.iter().find(|t| t.name() == name).unwrap()
    }

    /// Runs the model on one input row the way ONNX defines Gemm and Relu.
    fn forward(model: &ModelProto, input: &[f32]) -> Vec<f32> {
        let graph = model.graph.as_ref().unwrap();
        let mut x = input.to_vec();
        for node in &graph.node {
            match node.op_type() {
                "Gemm" => {
                    let w = initializer(model, &node.input[1]);
                    let b = floats(initializer(model, &node.input[2]).raw_data());
                    let w_values = floats(w.raw_data());
                    let fan_in = usize::try_from(w.dims[1]).unwrap();
                    x = b
                        .iter()
                        .enumerate()
                        .map(|(o, bias)| {
                            let row = &w_values[o * fan_in..(o + 1) * fan_in];
                            bias + row.iter().zip(&x).map(|(w, x)| w * x).sum::<f32>()
                        })
                        .collect();
                }
                "Relu" => x.iter_mut().for_each(|v| *v = v.max(0.0)),
                other => panic!("unexpected op {other}"),
            }
        }
        x
    }

    #[test]
    fn mlp_is_a_gemm_relu_chain_at_opset_17() {
        let model = decode(&mlp(&[4, 8, 6, 3], 1));
        assert_eq!(model.ir_version, Some(8));
        assert_eq!(model.opset_import.len(), 1);
        assert_eq!(model.opset_import[0].domain(), "");
        assert_eq!(model.opset_import[0].version(), 17);

        let graph = model.graph.as_ref().unwrap();
        let ops: Vec<_> = graph.node.iter().map(NodeProto::op_type).collect();
        assert_eq!(ops, ["Gemm", "Relu", "Gemm", "Relu", "Gemm"]);
        for gemm in graph.node.iter().filter(|n| n.op_type() == "Gemm") {
            assert_eq!(gemm.attribute.len(), 1);
            assert_eq!(gemm.attribute[0].name(), "transB");
            assert_eq!(gemm.attribute[0].i(), 1);
        }
        assert_eq!(graph.node[0].input[0], "input");
        assert_eq!(graph.node[4].output, ["output"]);

        let shapes: Vec<_> = graph
            .initializer
            .iter()
            .map(|t| (t.name(), t.dims.clone(), t.raw_data().len()))
            .collect();
        assert_eq!(
            shapes,
            [
                ("fc0.weight", vec![8, 4], 8 * 4 * 4),
                ("fc0.bias", vec![8], 8 * 4),
                ("fc1.weight", vec![6, 8], 6 * 8 * 4),
                ("fc1.bias", vec![6], 6 * 4),
                ("fc2.weight", vec![3, 6], 3 * 6 * 4),
                ("fc2.bias", vec![3], 3 * 4),
            ]
        );
    }

    #[test]
    fn mlp_is_deterministic_per_seed() {
        assert_eq!(mlp(&[4, 8, 3], 42), mlp(&[4, 8, 3], 42));
        assert_ne!(mlp(&[4, 8, 3], 42), mlp(&[4, 8, 3], 43));
    }

    #[test]
    fn mlp_weights_stay_within_their_kaiming_bounds() {
        let model = decode(&mlp(&[16, 32, 4], 9));
        let weight = floats(initializer(&model, "fc0.weight").raw_data());
        let bias = floats(initializer(&model, "fc0.bias").raw_data());
        let weight_bound = (6.0_f32 / 16.0).sqrt();
        let bias_bound = 1.0 / 32.0_f32.sqrt();
        assert!(weight.iter().all(|w| w.abs() <= weight_bound));
        assert!(bias.iter().all(|b| b.abs() <= bias_bound));
        // Not degenerate: values spread over the range.
        assert!(weight.iter().any(|w| *w > weight_bound / 2.0));
        assert!(weight.iter().any(|w| *w < -weight_bound / 2.0));
    }

    #[test]
    fn mlp_outputs_stay_finite_and_moderate_through_deep_stacks() {
        let sizes = [32, 64, 64, 64, 64, 64, 64, 10];
        let model = decode(&mlp(&sizes, 3));
        let input: Vec<f32> = (0..32).map(|i| (i as f32 / 16.0) - 1.0).collect();
        let output = forward(&model, &input);
        assert_eq!(output.len(), 10);
        assert!(
            output.iter().all(|v| v.is_finite() && v.abs() < 100.0),
            "{output:?}"
        );
        assert!(output.iter().any(|v| v.abs() > 1e-3), "{output:?}");
    }

    #[test]
    fn mlp_with_one_size_is_an_identity_model() {
        let bytes = mlp(&[5], 0);
        let model = decode(&bytes);
        let graph = model.graph.as_ref().unwrap();
        assert_eq!(graph.node.len(), 1);
        assert_eq!(graph.node[0].op_type(), "Identity");
        assert!(graph.initializer.is_empty());
        let sig = model_signature(&bytes).unwrap();
        assert_eq!(sig.inputs[0].shape, sig.outputs[0].shape);
        assert!(model_signature(&mlp(&[], 0)).is_ok());
    }

    #[test]
    fn replaced_initializer_changes_only_that_tensors_bytes() {
        let before = mlp(&[4, 8, 6, 3], 1);
        let after = with_replaced_initializer(&before, "fc1.weight", 99).unwrap();
        assert_eq!(before.len(), after.len());

        let (old, new) = (decode(&before), decode(&after));
        let (old_graph, new_graph) = (old.graph.as_ref().unwrap(), new.graph.as_ref().unwrap());
        assert_eq!(old_graph.node, new_graph.node);
        for (o, n) in old_graph.initializer.iter().zip(&new_graph.initializer) {
            assert_eq!(o.dims, n.dims);
            if o.name() == "fc1.weight" {
                assert_ne!(o.raw_data(), n.raw_data());
            } else {
                assert_eq!(o, n);
            }
        }

        // At the byte level every difference lies inside the old tensor's raw_data.
        let old_raw = initializer(&old, "fc1.weight").raw_data();
        let start = before
            .windows(old_raw.len())
            .position(|w| w == old_raw)
            .unwrap();
        let end = start + old_raw.len();
        let differing: Vec<_> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert!(!differing.is_empty());
        assert!(differing.iter().all(|i| (start..end).contains(i)));
    }

    #[test]
    fn regenerating_with_the_models_seed_gives_back_the_model() {
        let model = mlp(&[4, 8, 3], 5);
        for name in ["fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias"] {
            assert_eq!(with_replaced_initializer(&model, name, 5).unwrap(), model);
        }
    }

    #[test]
    fn replacement_keeps_float_data_storage() {
        let mut model = decode(&mlp(&[2, 3], 1));
        let tensor = &mut model.graph.as_mut().unwrap().initializer[0];
        tensor.float_data = floats(tensor.raw_data());
        tensor.raw_data = None;
        let after =
            decode(&with_replaced_initializer(&model.encode_to_vec(), "fc0.weight", 2).unwrap());
        let replaced = initializer(&after, "fc0.weight");
        assert_eq!(replaced.raw_data, None);
        assert_eq!(replaced.float_data.len(), 6);
    }

    #[test]
    fn replacing_a_missing_initializer_is_an_error() {
        let model = mlp(&[4, 3], 1);
        assert_eq!(
            with_replaced_initializer(&model, "fc9.weight", 1),
            Err(ModelError::InitializerNotFound {
                name: "fc9.weight".to_owned()
            })
        );
    }

    #[test]
    fn initializers_that_cannot_be_refilled_are_rejected() {
        let base = decode(&mlp(&[4, 3], 1));
        type Edit = fn(&mut TensorProto);
        let cases: [(Edit, &str); 4] = [
            (
                |t| t.data_type = Some(DataType::Int64 as i32),
                "not float32",
            ),
            (
                |t| t.data_location = Some(DataLocation::External as i32),
                "data is stored outside the model",
            ),
            (|t| t.dims = vec![-3, 4], "negative dimension"),
            (
                |t| t.dims = vec![1_000_000, 1_000_000],
                "dims disagree with raw_data length",
            ),
        ];
        for (edit, reason) in cases {
            let mut model = base.clone();
            edit(&mut model.graph.as_mut().unwrap().initializer[0]);
            assert_eq!(
                with_replaced_initializer(&model.encode_to_vec(), "fc0.weight", 1),
                Err(ModelError::UnsupportedInitializer {
                    name: "fc0.weight".to_owned(),
                    reason
                })
            );
        }
    }

    #[test]
    fn replacing_in_garbage_bytes_is_an_error() {
        let err = with_replaced_initializer(b"\x0a\xff\xff\xff\xff\x0f", "x", 0).unwrap_err();
        assert!(matches!(err, ModelError::Decode { .. }), "{err:?}");
    }

    proptest! {
        #[test]
        fn replacing_in_arbitrary_bytes_never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..2048),
        ) {
            let _ = with_replaced_initializer(&bytes, "fc0.weight", 0);
        }
    }
}
