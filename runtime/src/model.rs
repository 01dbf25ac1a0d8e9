//! [`Model`]: an ONNX model loaded and planned for execution.
//!
//! `Model::load` decodes the bytes, checks the opset imports and the boundary types,
//! and plans the main graph once (see [`crate::plan`]). `Model::run` takes `&self`
//! and keeps all per-run state on its own stack, so one `Model` serves many threads
//! at once (`Model` is `Send + Sync`).
//!
//! This module does not read model files from disk except external tensor data
//! named by the model, and does not verify where the bytes came from.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{ModelError, RunError};
use crate::exec;
use crate::onnx::{tensor_shape_proto::dimension, type_proto, ModelProto, ValueInfoProto};
use crate::plan::{self, Plan, PlanContext};
use crate::signature::decode_model;
use crate::tensor::{ElemType, Tensor};
use crate::value::Value;

/// Oldest default-domain opset accepted.
pub const MIN_OPSET: i64 = 1;
/// Newest default-domain opset accepted.
pub const MAX_OPSET: i64 = 28;

/// What kind of value a graph input or output carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueKind {
    /// A dense tensor.
    Tensor,
    /// A sequence of tensors.
    Sequence,
    /// An optional tensor or sequence.
    Optional,
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DimSpec {
    /// A fixed size.
    Fixed(usize),
    /// A named size, bound at run time.
    Symbolic(String),
    /// Unknown (unset or `-1`).
    Unknown,
}

/// A graph input or output as the graph declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueSpec {
    /// The value's name.
    pub name: String,
    /// Tensor, sequence or optional.
    pub kind: ValueKind,
    /// Element type (of the tensor, or of the sequence's tensors), when declared.
    pub elem: Option<ElemType>,
    /// Declared shape of a tensor value; `None` when the rank is unknown.
    pub shape: Option<Vec<DimSpec>>,
}

/// Inputs with at least this many elements in all run on a worker of rayon's
/// pool when it has several threads (see [`Model::run_values`]).
const POOL_RUN_MIN_ELEMENTS: usize = 1024;

/// How long a helper worker of [`run_on_pool`] spins without finding work before
/// it goes back to rayon's ordinary sleep.
const HELPER_SPIN: Duration = Duration::from_millis(1);

/// Runs `run` on a worker of rayon's pool while the pool's other workers stay
/// awake and take the parallel parts of its kernels as soon as they are split.
///
/// Design: a kernel splits its work with rayon, and an idle rayon worker sleeps
/// after a few rounds of `sched_yield`; waking it again costs a futex call and a
/// context switch on each side (tens of µs on a VM). A model runs one kernel
/// after another with short serial stretches between them, so without this every
/// parallel kernel paid that wake-up, and at 2 threads the convnet, encoder and
/// MLP benchmarks ran slower than at 1 (30% of the samples were in the
/// scheduler). Here each other worker runs a helper task for the length of the
/// run that keeps taking pending jobs (`rayon::yield_now`) and spins in
/// between, as ONNX Runtime's intra-op threads do; a helper that finds nothing
/// for [`HELPER_SPIN`] stops, so a long serial stretch does not burn a core.
///
/// When no other run is in flight, the run goes to the same worker every time
/// (worker 0, through `rayon::broadcast`, which gives every worker its part):
/// a run handed to whichever worker was awake alternated between the two
/// cores of the benchmark machine, so each run found the model's weights and
/// scratch in the other core's cache (the 2-layer LSTM at 2 threads: 318 µs
/// that way, 257 µs from one home worker; 1 thread: 256 µs). Runs that
/// overlap take the first free worker as before, so concurrent requests still
/// run side by side.
fn run_on_pool<R: Send>(run: impl FnOnce() -> R + Send) -> R {
    /// Runs of [`run_on_pool`] in flight in this process.
    static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
    struct Flight;
    impl Drop for Flight {
        fn drop(&mut self) {
            IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let alone = IN_FLIGHT.fetch_add(1, Ordering::AcqRel) == 0;
    let _flight = Flight;
    if !alone {
        return run_in_scope(run);
    }
    const HOME: usize = 0;
    let done = AtomicBool::new(false);
    let run = Mutex::new(Some(run));
    let outs = rayon::broadcast(|ctx| {
        if ctx.index() != HOME {
            help_until(&done, Some(HOME));
            return None;
        }
        let _done = SetOnDrop(&done);
        let taken = run.lock().unwrap_or_else(PoisonError::into_inner).take();
        taken.map(|run| run())
    });
    if let Some(out) = outs.into_iter().flatten().next() {
        return out;
    }
    // Worker 0 takes part in every broadcast, so the run was taken and its
    // result returned above (a run that panicked made `broadcast` panic);
    // were it not, it runs here.
    match run.into_inner().unwrap_or_else(PoisonError::into_inner) {
        Some(run) => run_in_scope(run),
        None => unreachable!("the pool's worker {HOME} took the run and did not finish it"),
    }
}

/// Sets its flag when dropped: even when the run unwinds, the helpers end and
/// the scope returns.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// [`run_on_pool`] on whichever worker takes it, the others helping.
fn run_in_scope<R: Send>(run: impl FnOnce() -> R + Send) -> R {
    let done = AtomicBool::new(false);
    let done = &done;
    rayon::scope(|s| {
        let runner = rayon::current_thread_index();
        for _ in 1..rayon::current_num_threads() {
            s.spawn(move |_| help_until(done, runner));
        }
        let _done = SetOnDrop(done);
        run()
    })
}

/// A helper of [`run_on_pool`]: takes the pool's pending jobs until `done` or
/// until it has found none for [`HELPER_SPIN`]. On the runner's own thread (it
/// popped the helper while waiting for a job of its own) it returns at once: it
/// would otherwise spin above the run it waits for.
fn help_until(done: &AtomicBool, runner: Option<usize>) {
    if rayon::current_thread_index() == runner {
        return;
    }
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    while !done.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => {
                idle_since = Instant::now();
                spins = 0;
            }
            Some(rayon::Yield::Idle) => {
                spins += 1;
                // Reading the clock every 64 rounds keeps it off the spin's cost.
                if spins.is_multiple_of(64) && idle_since.elapsed() > HELPER_SPIN {
                    return;
                }
                std::hint::spin_loop();
            }
            None => return,
        }
    }
}

/// A loaded, planned ONNX model.
#[derive(Debug)]
pub struct Model {
    plan: Plan,
    inputs: Vec<ValueSpec>,
    outputs: Vec<ValueSpec>,
    opset: i64,
}

impl Model {
    /// Loads a model from its bytes; external tensor data is read relative to
    /// `base_dir` (usually the model file's directory).
    ///
    /// # Errors
    ///
    /// [`ModelError::Decode`] for bytes that are not ONNX, [`ModelError::NoGraph`],
    /// [`ModelError::UnsupportedOpset`], [`ModelError::UnsupportedOperator`],
    /// [`ModelError::UnsupportedElementType`] for a boundary value or initializer of
    /// a type the executor does not hold, and [`ModelError::Malformed`] for graphs
    /// that are not well formed.
    pub fn load(bytes: &[u8], base_dir: Option<&Path>) -> Result<Self, ModelError> {
        let model = decode_model(bytes)?;
        Self::from_proto(&model, base_dir)
    }

    /// Loads a model already decoded.
    ///
    /// # Errors
    ///
    /// As [`Model::load`], less decoding.
    pub fn from_proto(model: &ModelProto, base_dir: Option<&Path>) -> Result<Self, ModelError> {
        crate::pool::init();
        let graph = model.graph.as_ref().ok_or(ModelError::NoGraph)?;
        let mut opsets = HashMap::new();
        for imp in &model.opset_import {
            let domain = match imp.domain() {
                "ai.onnx" => "",
                d => d,
            };
            opsets.insert(domain.to_owned(), imp.version());
        }
        // IR version 1-2 models may omit the import; they mean opset 1.
        let opset = *opsets.entry(String::new()).or_insert(MIN_OPSET);
        if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
            return Err(ModelError::UnsupportedOpset {
                opset,
                min: MIN_OPSET,
                max: MAX_OPSET,
            });
        }
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name()).collect();
        let inputs = graph
            .input
            .iter()
            .filter(|v| !initializers.contains(v.name()))
            .map(value_spec)
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = graph
            .output
            .iter()
            .map(value_spec)
            .collect::<Result<Vec<_>, _>>()?;
        let plan = plan::build(
            graph,
            &PlanContext {
                opsets: &opsets,
                base_dir,
            },
        )?;
        Ok(Self {
            plan,
            inputs,
            outputs,
            opset,
        })
    }

    /// The graph inputs the caller supplies (initializers excluded), in order.
    pub fn inputs(&self) -> &[ValueSpec] {
        &self.inputs
    }

    /// The graph outputs, in order.
    pub fn outputs(&self) -> &[ValueSpec] {
        &self.outputs
    }

    /// The default-domain opset the model imports.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// How many nodes run per call after planning (folded and dead nodes removed).
    pub fn planned_nodes(&self) -> usize {
        self.plan.steps.len()
    }

    /// The operator types that run per call, in execution order.
    pub fn planned_op_types(&self) -> impl Iterator<Item = &str> {
        self.plan.steps.iter().map(|s| s.op_type.as_str())
    }

    /// Runs the model on tensor inputs, keyed by input name.
    ///
    /// # Errors
    ///
    /// [`RunError::MissingInput`], [`RunError::UnknownInput`], [`RunError::InputType`],
    /// [`RunError::InputShape`] for inputs that do not match the graph, and
    /// [`RunError::Node`] when a node fails. Sequence outputs are an
    /// [`RunError::InputKind`]-like error: use [`Model::run_values`] for those.
    pub fn run(
        &self,
        inputs: HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>, RunError> {
        let values = inputs
            .into_iter()
            .map(|(k, v)| (k, Value::Tensor(v)))
            .collect();
        let outs = self.run_values(values)?;
        outs.into_iter()
            .map(|(name, v)| match v {
                Value::Tensor(t) => Ok((name, t)),
                _ => Err(RunError::InputKind {
                    name,
                    expected: "tensor",
                }),
            })
            .collect()
    }

    /// Runs the model on values of any kind; returns the outputs in graph order.
    ///
    /// # Errors
    ///
    /// As [`Model::run`].
    pub fn run_values(
        &self,
        mut inputs: HashMap<String, Value>,
    ) -> Result<Vec<(String, Value)>, RunError> {
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            let v = inputs
                .remove(&spec.name)
                .ok_or_else(|| RunError::MissingInput {
                    name: spec.name.clone(),
                })?;
            check_input(spec, &v)?;
            ordered.push(v);
        }
        if let Some(name) = inputs.into_keys().next() {
            return Err(RunError::UnknownInput { name });
        }
        let elements: usize = ordered
            .iter()
            .filter_map(Value::as_tensor)
            .map(|t| t.shape().iter().product::<usize>())
            .sum();
        let outs = if elements >= POOL_RUN_MIN_ELEMENTS
            && rayon::current_num_threads() > 1
            && rayon::current_thread_index().is_none()
        {
            // Design: with several threads, a run of any size happens on a
            // worker of rayon's pool (the caller sleeps until it is done), so
            // a kernel's parallel parts use the caller's core instead of the
            // pool's workers and the caller competing for the cores (at 2
            // threads every benchmark model ran slower than at 1). Small
            // inputs stay on the caller: the hop costs ~10 µs, as much as a
            // whole small MLP.
            run_on_pool(|| exec::run(&self.plan, ordered))?
        } else {
            exec::run(&self.plan, ordered)?
        };
        Ok(self
            .plan
            .outputs
            .iter()
            .map(|(n, _)| n.clone())
            .zip(outs)
            .collect())
    }
}

fn check_input(spec: &ValueSpec, v: &Value) -> Result<(), RunError> {
    let t = match (spec.kind, v) {
        (ValueKind::Tensor, Value::Tensor(t)) => t,
        (ValueKind::Tensor, _) => {
            return Err(RunError::InputKind {
                name: spec.name.clone(),
                expected: "tensor",
            })
        }
        _ => return Ok(()),
    };
    if let Some(elem) = spec.elem {
        if elem != t.elem_type() {
            return Err(RunError::InputType {
                name: spec.name.clone(),
                expected: elem.to_string(),
                actual: t.elem_type().to_string(),
            });
        }
    }
    if let Some(shape) = &spec.shape {
        let ok = shape.len() == t.rank()
            && shape.iter().zip(t.shape()).all(|(d, &n)| match d {
                DimSpec::Fixed(f) => *f == n,
                _ => true,
            });
        if !ok {
            let expected = shape
                .iter()
                .map(|d| match d {
                    DimSpec::Fixed(f) => f.to_string(),
                    DimSpec::Symbolic(s) => s.clone(),
                    DimSpec::Unknown => "?".to_owned(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(RunError::InputShape {
                name: spec.name.clone(),
                expected: format!("[{expected}]"),
                actual: t.shape().to_vec(),
            });
        }
    }
    Ok(())
}

fn value_spec(v: &ValueInfoProto) -> Result<ValueSpec, ModelError> {
    let name = v.name().to_owned();
    let ty = v.r#type.as_ref().and_then(|t| t.value.as_ref());
    let elem_of = |code: i32, name: &str| {
        ElemType::from_onnx(code).ok_or_else(|| ModelError::UnsupportedElementType {
            tensor: name.to_owned(),
            code,
        })
    };
    let spec = match ty {
        // Off-spec: a value without a type is accepted as a tensor of any type.
        None => ValueSpec {
            name,
            kind: ValueKind::Tensor,
            elem: None,
            shape: None,
        },
        Some(type_proto::Value::TensorType(t)) => ValueSpec {
            elem: Some(elem_of(t.elem_type(), &name)?),
            shape: t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(dimension::Value::DimValue(n)) if *n >= 0 => {
                            usize::try_from(*n).map_or(DimSpec::Unknown, DimSpec::Fixed)
                        }
                        Some(dimension::Value::DimParam(p)) if !p.is_empty() => {
                            DimSpec::Symbolic(p.clone())
                        }
                        _ => DimSpec::Unknown,
                    })
                    .collect()
            }),
            name,
            kind: ValueKind::Tensor,
        },
        Some(type_proto::Value::SequenceType(s)) => {
            let elem = match s.elem_type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(type_proto::Value::TensorType(t)) => Some(elem_of(t.elem_type(), &name)?),
                _ => None,
            };
            ValueSpec {
                name,
                kind: ValueKind::Sequence,
                elem,
                shape: None,
            }
        }
        Some(type_proto::Value::OptionalType(_)) => ValueSpec {
            name,
            kind: ValueKind::Optional,
            elem: None,
            shape: None,
        },
        Some(type_proto::Value::MapType(_)) => {
            return Err(ModelError::NonTensorValue { name, kind: "map" })
        }
        Some(type_proto::Value::SparseTensorType(_)) => {
            return Err(ModelError::NonTensorValue {
                name,
                kind: "sparse tensor",
            })
        }
        Some(type_proto::Value::OpaqueType(_)) => {
            return Err(ModelError::NonTensorValue {
                name,
                kind: "opaque",
            })
        }
    };
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    mod never_panics {
        use proptest::prelude::*;

        use crate::generate::damaged_mlp;
        use crate::Model;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// Any bytes given as a model file load or fail with a
            /// `ModelError`; a panic fails the test.
            #[test]
            fn arbitrary_bytes_load_or_fail(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
                let _ = Model::load(&bytes, None);
            }

            /// A genuine model with bytes overwritten and a tail cut off: the
            /// loader and planner return errors, and a model that still loads
            /// runs or fails without panicking.
            #[test]
            fn corrupted_models_load_or_fail(
                edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<prop::sample::Index>(),
            ) {
                let bytes = damaged_mlp(&edits, cut);
                if let Ok(model) = Model::load(&bytes, None) {
                    let inputs = model
                        .inputs()
                        .iter()
                        .filter_map(|spec| {
                            let t = crate::Tensor::from_f32(&[1, 3], vec![0.5; 3]).ok()?;
                            Some((spec.name.clone(), t))
                        })
                        .collect();
                    let _ = model.run(inputs);
                }
            }
        }
    }

    #[test]
    fn model_can_be_shared_between_threads() {
        assert_send_sync::<Model>();
    }

    #[test]
    fn garbage_bytes_are_a_decode_error() {
        let err = Model::load(&[0xff, 0x01, 0x02], None).unwrap_err();
        assert!(matches!(err, ModelError::Decode { .. }), "{err}");
    }
}
