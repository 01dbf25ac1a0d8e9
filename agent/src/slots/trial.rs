//! Loading a staged bundle's model and running its self-test (the reconciler's
//! `RunTrial`).
//!
//! [`LoadedModel`] is the entrypoint ONNX file loaded and planned once by
//! `flotilla-runtime`; [`trial`] loads it, feeds it one synthetic input per
//! signature input (zeros, or 0.5 for floats, symbolic and unknown dims set to 1)
//! and checks that every declared output comes back with its declared element
//! type and, for floats, only finite values. The loaded model is returned with
//! the report so that serving can reuse the plan instead of loading again.
//!
//! Both are blocking (file reads, planning, a model run): the driver calls them
//! from a blocking thread. Failures are one-line reasons, which go into the
//! reconciler's trial result and the status report as they are.
//!
//! It does not judge accuracy (a model that computes garbage of the right type
//! passes) and does not serve requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_protocol::manifest::{
    BundleManifest, Dim, DriftBaseline, ElementType, Flavor, ModelSignature,
};
use flotilla_runtime::{DimSpec, ElemType, Model, Tensor};

use super::is_safe_relative_path;

/// Most elements in one self-test input; a signature with larger fixed dims is
/// refused rather than allocated.
pub const MAX_SELF_TEST_ELEMENTS: usize = 1 << 24;

/// A bundle's model, loaded and planned; shareable across serving threads
/// (`flotilla_runtime::Model` is `Send + Sync`).
#[derive(Debug)]
pub struct LoadedModel {
    model: Model,
    signature: ModelSignature,
    drift_baseline: Option<DriftBaseline>,
    dir: PathBuf,
    load_time: Duration,
}

/// What a passing trial measured, and the model it loaded.
#[derive(Debug, Clone)]
pub struct TrialReport {
    /// Milliseconds to read and plan the model.
    pub load_ms: u64,
    /// Microseconds of the self-test run.
    pub run_us: u64,
    /// The loaded model, for serving.
    pub model: Arc<LoadedModel>,
}

impl LoadedModel {
    /// Reads `manifest.entrypoint` under the version dir `dir` and plans it;
    /// external tensor data is read relative to the entrypoint's dir.
    ///
    /// # Errors
    ///
    /// A one-line reason: unsupported flavor, unsafe entrypoint path, missing
    /// file, bytes that are not ONNX, unsupported operator or opset.
    pub fn load(dir: &Path, manifest: &BundleManifest) -> Result<Self, String> {
        match manifest.flavor {
            Flavor::Onnx => {}
            other => return Err(format!("bundle flavor {other:?} is not supported")),
        }
        let entry = &manifest.entrypoint;
        if !is_safe_relative_path(entry) {
            return Err(format!("entrypoint {entry:?} is not a safe relative path"));
        }
        let path = dir.join(entry);
        let started = Instant::now();
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("cannot read entrypoint {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(dir);
        // Decode, then free the file's bytes before planning: the file, the
        // decoded initializers and the planned weights are each about the
        // model's size, and only two of them need to coexist.
        let proto = <flotilla_runtime::onnx::ModelProto as prost::Message>::decode(&bytes[..])
            .map_err(|e| {
                let e = flotilla_runtime::ModelError::Decode {
                    message: e.to_string(),
                };
                format!("cannot load {entry}: {e}")
            })?;
        drop(bytes);
        let model = Model::from_proto(&proto, Some(base))
            .map_err(|e| format!("cannot load {entry}: {e}"))?;
        drop(proto);
        Ok(Self {
            model,
            signature: manifest.signature.clone(),
            drift_baseline: manifest.drift_baseline.clone(),
            dir: dir.to_owned(),
            load_time: started.elapsed(),
        })
    }

    /// The planned model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The signature the manifest declares.
    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    /// The reference distribution of its inputs, when the bundle has one.
    pub fn drift_baseline(&self) -> Option<&DriftBaseline> {
        self.drift_baseline.as_ref()
    }

    /// The version dir it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long reading and planning took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Runs the self-test once; returns how long the run took.
    ///
    /// # Errors
    ///
    /// A one-line reason: an input that cannot be synthesised, a run error, a
    /// declared output missing or of another element type, a non-finite float.
    pub fn self_test(&self) -> Result<Duration, String> {
        let mut inputs = HashMap::new();
        for spec in &self.signature.inputs {
            let tensor = self.synthetic_input(spec)?;
            inputs.insert(spec.name.clone(), tensor);
        }
        let started = Instant::now();
        let outputs = self
            .model
            .run(inputs)
            .map_err(|e| format!("self-test run failed: {e}"))?;
        let elapsed = started.elapsed();
        for spec in &self.signature.outputs {
            let t = outputs
                .get(&spec.name)
                .ok_or_else(|| format!("self-test: declared output {:?} is missing", spec.name))?;
            let want = elem_type(spec.elem_type).ok_or_else(|| {
                format!(
                    "self-test: output {:?} is declared {:?}, which the runtime does not produce",
                    spec.name, spec.elem_type
                )
            })?;
            if t.elem_type() != want {
                return Err(format!(
                    "self-test: output {:?} is {}, declared {}",
                    spec.name,
                    t.elem_type(),
                    want
                ));
            }
            if want.is_float() {
                let values = t
                    .to_f64_vec()
                    .map_err(|e| format!("self-test: reading output {:?}: {e}", spec.name))?;
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    return Err(format!(
                        "self-test: output {:?} holds {} at index {i}",
                        spec.name, values[i]
                    ));
                }
            }
        }
        Ok(elapsed)
    }

    /// One self-test input for `spec`: 0.5 for floats, zero (false) otherwise.
    fn synthetic_input(
        &self,
        spec: &flotilla_protocol::manifest::TensorSpec,
    ) -> Result<Tensor, String> {
        let name = &spec.name;
        let elem = elem_type(spec.elem_type).ok_or_else(|| {
            format!(
                "self-test: input {name:?} is {:?}, which cannot be fed",
                spec.elem_type
            )
        })?;
        let shape: Vec<usize> = match &spec.shape {
            Some(dims) => dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => usize::try_from(*n).unwrap_or(usize::MAX),
                    Dim::Symbolic(_) | Dim::Unknown => 1,
                })
                .collect(),
            // Rank unknown in the manifest: take the graph's own declaration.
            None => self
                .model
                .inputs()
                .iter()
                .find(|v| &v.name == name)
                .and_then(|v| v.shape.as_ref())
                .map_or_else(
                    || vec![1],
                    |dims| {
                        dims.iter()
                            .map(|d| match d {
                                DimSpec::Fixed(n) => *n,
                                DimSpec::Symbolic(_) | DimSpec::Unknown => 1,
                            })
                            .collect()
                    },
                ),
        };
        let count = shape
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(*d))
            .filter(|n| *n <= MAX_SELF_TEST_ELEMENTS)
            .ok_or_else(|| {
                format!(
                    "self-test: input {name:?} of shape {shape:?} is larger than \
                     {MAX_SELF_TEST_ELEMENTS} elements"
                )
            })?;
        let tensor = if elem.is_float() {
            Tensor::from_f64_as(elem, &shape, vec![0.5; count])
        } else if elem == ElemType::Bool {
            Tensor::from_bools(&shape, vec![false; count])
        } else {
            Tensor::from_i64_as(elem, &shape, vec![0; count])
        };
        tensor.map_err(|e| format!("self-test: building input {name:?}: {e}"))
    }
}

/// Loads the model of the bundle staged in `dir`; see [`LoadedModel::load`].
///
/// # Errors
///
/// As [`LoadedModel::load`].
pub fn load(dir: &Path, manifest: &BundleManifest) -> Result<LoadedModel, String> {
    LoadedModel::load(dir, manifest)
}

/// Loads the bundle staged in `dir` and runs its self-test once.
///
/// # Errors
///
/// A one-line reason, from [`LoadedModel::load`] or [`LoadedModel::self_test`].
pub fn trial(dir: &Path, manifest: &BundleManifest) -> Result<TrialReport, String> {
    let model = LoadedModel::load(dir, manifest)?;
    let run = model.self_test()?;
    Ok(TrialReport {
        load_ms: u64::try_from(model.load_time.as_millis()).unwrap_or(u64::MAX),
        run_us: u64::try_from(run.as_micros()).unwrap_or(u64::MAX),
        model: Arc::new(model),
    })
}

/// The runtime's element type for a manifest's, where the runtime holds it.
fn elem_type(t: ElementType) -> Option<ElemType> {
    Some(match t {
        ElementType::Float32 => ElemType::F32,
        ElementType::Float16 => ElemType::F16,
        ElementType::Bfloat16 => ElemType::BF16,
        ElementType::Float64 => ElemType::F64,
        ElementType::Int8 => ElemType::I8,
        ElementType::Int16 => ElemType::I16,
        ElementType::Int32 => ElemType::I32,
        ElementType::Int64 => ElemType::I64,
        ElementType::Uint8 => ElemType::U8,
        ElementType::Uint16 => ElemType::U16,
        ElementType::Uint32 => ElemType::U32,
        ElementType::Uint64 => ElemType::U64,
        ElementType::Bool => ElemType::Bool,
        // Strings, and element types added to the manifest after this build.
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::stage_manifest;
    use crate::slots::tests::manifest_in_store;
    use crate::store::AgentStore;
    use flotilla_protocol::manifest::TensorSpec;
    use flotilla_protocol::reconcile::DeploymentKey;
    use flotilla_runtime::generate::mlp;
    use flotilla_runtime::model_signature;
    use flotilla_runtime::onnx::ModelProto;
    use prost::Message;

    const TARGET: &str = "models/fraud/1/manifest.cbor";

    /// Stages a bundle whose entrypoint holds `model`, declaring `signature`
    /// (the model's own when `None`), and returns the dir, the manifest and the
    /// temp dir that owns them.
    fn staged(
        model: &[u8],
        signature: Option<ModelSignature>,
    ) -> (PathBuf, BundleManifest, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let store = AgentStore::open(tmp.path()).unwrap();
        let signature = signature.unwrap_or_else(|| model_signature(model).unwrap());
        let m = manifest_in_store(&[("model/model.onnx", model)], signature, &store);
        let key = DeploymentKey::new("fraud", "blue");
        let root = tmp.path().join("deployments");
        let dir = stage_manifest(&root, &key, TARGET, &m, &m.encode(), &store).unwrap();
        (dir, m, tmp)
    }

    /// An MLP whose first bias is NaN, so that every output is NaN.
    fn nan_mlp() -> Vec<u8> {
        let mut proto = ModelProto::decode(mlp(&[4, 3], 1).as_slice()).unwrap();
        let graph = proto.graph.as_mut().unwrap();
        let bias = graph
            .initializer
            .iter_mut()
            .find(|t| t.name() == "fc0.bias")
            .unwrap();
        bias.raw_data = Some(f32::NAN.to_le_bytes().repeat(3));
        proto.encode_to_vec()
    }

    #[test]
    fn a_generated_mlp_passes_its_trial() {
        let (dir, m, _tmp) = staged(&mlp(&[8, 16, 4], 42), None);
        let report = trial(&dir, &m).unwrap();
        assert_eq!(report.model.dir(), dir);
        assert_eq!(report.model.signature(), &m.signature);
        // The loaded plan can be run again, as serving will.
        report.model.self_test().unwrap();
    }

    #[test]
    fn the_loaded_model_can_be_shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<LoadedModel>();
        send_sync::<TrialReport>();
    }

    #[test]
    fn a_non_onnx_entrypoint_fails_with_a_reason() {
        let (dir, m, _tmp) = staged(b"this is not a model", Some(ModelSignature::default()));
        let err = trial(&dir, &m).unwrap_err();
        assert!(err.contains("model/model.onnx"), "{err}");
        assert!(err.contains("not a valid ONNX"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn a_truncated_entrypoint_fails_with_a_reason() {
        let model = mlp(&[8, 16, 4], 42);
        let (dir, m, _tmp) = staged(&model[..model.len() / 2], Some(ModelSignature::default()));
        let err = trial(&dir, &m).unwrap_err();
        assert!(err.starts_with("cannot load model/model.onnx"), "{err}");
    }

    #[test]
    fn a_missing_entrypoint_file_fails_with_its_path() {
        let (dir, m, _tmp) = staged(&mlp(&[2, 2], 1), None);
        std::fs::remove_file(dir.join("model/model.onnx")).unwrap();
        let err = trial(&dir, &m).unwrap_err();
        assert!(err.starts_with("cannot read entrypoint"), "{err}");
    }

    #[test]
    fn a_nan_output_fails_the_trial() {
        let model = nan_mlp();
        let (dir, m, _tmp) = staged(&model, None);
        let err = trial(&dir, &m).unwrap_err();
        assert!(err.contains("\"output\" holds NaN"), "{err}");
    }

    #[test]
    fn a_declared_output_the_model_lacks_fails_the_trial() {
        let model = mlp(&[4, 2], 3);
        let mut sig = model_signature(&model).unwrap();
        sig.outputs.push(TensorSpec {
            name: "scores".into(),
            elem_type: ElementType::Float32,
            shape: None,
        });
        let (dir, m, _tmp) = staged(&model, Some(sig));
        let err = trial(&dir, &m).unwrap_err();
        assert!(err.contains("\"scores\" is missing"), "{err}");
    }

    #[test]
    fn an_output_of_another_type_than_declared_fails_the_trial() {
        let model = mlp(&[4, 2], 3);
        let mut sig = model_signature(&model).unwrap();
        sig.outputs[0].elem_type = ElementType::Int64;
        let (dir, m, _tmp) = staged(&model, Some(sig));
        let err = trial(&dir, &m).unwrap_err();
        assert!(err.contains("is float, declared int64"), "{err}");
    }

    #[test]
    fn a_signature_input_the_graph_does_not_take_fails_the_trial() {
        let model = mlp(&[4, 2], 3);
        let mut sig = model_signature(&model).unwrap();
        sig.inputs[0].elem_type = ElementType::Int64;
        let (dir, m, _tmp) = staged(&model, Some(sig));
        let err = trial(&dir, &m).unwrap_err();
        assert!(err.starts_with("self-test run failed"), "{err}");
    }

    #[test]
    fn an_input_with_huge_fixed_dims_is_refused_not_allocated() {
        let model = mlp(&[4, 2], 3);
        let mut sig = model_signature(&model).unwrap();
        sig.inputs[0].shape = Some(vec![Dim::Fixed(1 << 20), Dim::Fixed(1 << 20)]);
        let (dir, m, _tmp) = staged(&model, Some(sig));
        let err = trial(&dir, &m).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }
}
