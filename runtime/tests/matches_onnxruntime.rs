//! The benchmark models (MLP, CNN, 2-layer LSTM, transformer encoder block), at
//! small sizes, give the outputs ONNX Runtime recorded for them.
//!
//! The fixtures under `tests/fixtures/onnxruntime/` are written by
//! `runtime/bench/gen_models.py fixtures runtime/tests/fixtures/onnxruntime`
//! (onnx helper API, fixed seeds; outputs from onnxruntime's CPU provider at one
//! thread). This test reads them with the runtime's own decoder and needs no
//! Python.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use flotilla_runtime::onnx::TensorProto;
use flotilla_runtime::{decode_tensor, Model, Tensor};
use prost::Message;

/// |got - want| <= ATOL + RTOL * |want| for every element.
const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnxruntime")
        .join(name)
}

fn read_tensor(path: &Path) -> Tensor {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let proto = TensorProto::decode(bytes.as_slice()).expect("a TensorProto");
    decode_tensor(&proto, None).expect("a decodable tensor")
}

fn check(name: &str) {
    let (model, inputs) = load_with_inputs(name);
    let outputs = model.run(inputs).expect("the model runs");
    compare(name, &model, &outputs);
}

/// The fixture's model and its recorded inputs.
fn load_with_inputs(name: &str) -> (Model, HashMap<String, Tensor>) {
    let dir = fixture(name);
    let bytes = std::fs::read(dir.join("model.onnx")).expect("model.onnx");
    let model = Model::load(&bytes, Some(&dir)).expect("the model loads");
    let data = dir.join("test_data_set_0");
    let inputs: HashMap<String, Tensor> = model
        .inputs()
        .iter()
        .enumerate()
        .map(|(j, spec)| {
            (
                spec.name.clone(),
                read_tensor(&data.join(format!("input_{j}.pb"))),
            )
        })
        .collect();
    (model, inputs)
}

/// `outputs` against the outputs ONNX Runtime recorded for fixture `name`.
fn compare(name: &str, model: &Model, outputs: &HashMap<String, Tensor>) {
    let data = fixture(name).join("test_data_set_0");
    for (j, spec) in model.outputs().iter().enumerate() {
        let want = read_tensor(&data.join(format!("output_{j}.pb")));
        let got = &outputs[&spec.name];
        assert_eq!(got.shape(), want.shape(), "{name}: shape of {}", spec.name);
        assert_eq!(
            got.elem_type(),
            want.elem_type(),
            "{name}: type of {}",
            spec.name
        );
        let (g, w) = (
            got.to_f32_vec().expect("f32 values"),
            want.to_f32_vec().expect("f32 values"),
        );
        for (k, (a, b)) in g.iter().zip(&w).enumerate() {
            assert!(
                (a - b).abs() <= ATOL + RTOL * b.abs(),
                "{name}: {}[{k}] is {a}, ONNX Runtime gave {b}",
                spec.name
            );
        }
    }
}

/// Runs from several threads at once overlap on the runtime's pool (the first
/// goes to its home worker, the others to whichever worker is free): every
/// one of them gives the recorded outputs, and none waits forever.
#[test]
fn concurrent_runs_from_several_threads_match_onnxruntime() {
    for name in ["cnn", "lstm", "encoder"] {
        let (model, inputs) = load_with_inputs(name);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..25 {
                        let outputs = model.run(inputs.clone()).expect("the model runs");
                        compare(name, &model, &outputs);
                    }
                });
            }
        });
    }
}

#[test]
fn mlp_matches_onnxruntime() {
    check("mlp");
}

#[test]
fn cnn_matches_onnxruntime() {
    check("cnn");
}

#[test]
fn two_layer_lstm_matches_onnxruntime() {
    check("lstm");
}

#[test]
fn transformer_encoder_block_matches_onnxruntime() {
    check("encoder");
}

#[test]
fn planning_fuses_each_relu_and_pool_into_the_gemm_or_conv_before_it() {
    let load = |name: &str| {
        let dir = fixture(name);
        let bytes = std::fs::read(dir.join("model.onnx")).expect("model.onnx");
        Model::load(&bytes, Some(&dir)).expect("the model loads")
    };
    let mlp = load("mlp");
    assert_eq!(
        mlp.planned_op_types().collect::<Vec<_>>(),
        ["Gemm+Relu", "Gemm+Relu", "Gemm"]
    );
    // Each conv block's Relu and 2x2 MaxPool join its Conv.
    let cnn = load("cnn");
    assert_eq!(
        cnn.planned_op_types().collect::<Vec<_>>(),
        [
            "Conv+Relu+MaxPool",
            "Conv+Relu+MaxPool",
            "Conv+Relu+MaxPool",
            "Flatten",
            "Gemm"
        ]
    );
}
