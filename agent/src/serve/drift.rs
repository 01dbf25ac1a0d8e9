//! Drift recording in the scoring path: every validated request's input
//! values, and every answer's output values, counted over the bins of the
//! bundle's drift baseline, for the telemetry window.
//!
//! How baseline features (the reference CSV's columns) map to tensors, decided
//! once when the model version is activated:
//! - a feature named like a model input or output counts every element of that
//!   tensor;
//! - the remaining features, in baseline order, are the columns of the one
//!   input of rank 2 whose last dim is fixed to their count, or not fixed (a
//!   tabular model `[batch, features]` fed rows of the reference CSV's columns).
//!
//! A feature that maps to nothing is left out (logged once at activation).
//! Recording takes one short lock per request; values are binned with a
//! binary search over at most a few dozen edges.

use std::sync::{Mutex, PoisonError};

use flotilla_protocol::manifest::{Dim, DriftBaseline, ModelSignature};
use flotilla_protocol::telemetry::{DriftObservation, FeatureRecorder, FeatureValue};

use super::tensors::{NamedTensor, Values};

/// Where a feature's values come from.
#[derive(Debug)]
struct Column {
    /// Tensor name.
    tensor: String,
    /// `Some(i)`: column `i` of a `[rows, width]` tensor; `None`: every element.
    column: Option<usize>,
    recorder: FeatureRecorder,
}

/// The drift counters of one active model version.
#[derive(Debug)]
pub(crate) struct DriftRecorder {
    target: String,
    columns: Mutex<(Vec<Column>, Vec<Column>)>,
}

impl DriftRecorder {
    /// Recorders for every feature of `baseline` that maps to a tensor of
    /// `signature`; `None` when none does.
    pub(crate) fn new(
        target: &str,
        baseline: &DriftBaseline,
        signature: &ModelSignature,
    ) -> Option<Self> {
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        let mut rest = Vec::new();
        for f in &baseline.features {
            let recorder = match FeatureRecorder::new(f) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(%target, feature = %f.name, error = %e, "drift baseline feature ignored");
                    continue;
                }
            };
            let column = |tensor: &str| Column {
                tensor: tensor.to_owned(),
                column: None,
                recorder: recorder.clone(),
            };
            if signature.inputs.iter().any(|s| s.name == f.name) {
                inputs.push(column(&f.name));
            } else if signature.outputs.iter().any(|s| s.name == f.name) {
                outputs.push(column(&f.name));
            } else {
                rest.push(recorder);
            }
        }
        if !rest.is_empty() {
            let wide = signature.inputs.iter().find(|s| {
                s.shape.as_ref().is_some_and(|d| {
                    d.len() == 2
                        && match d[1] {
                            Dim::Fixed(n) => usize::try_from(n).is_ok_and(|n| n == rest.len()),
                            _ => true,
                        }
                })
            });
            match wide {
                Some(spec) => {
                    for (i, recorder) in rest.into_iter().enumerate() {
                        inputs.push(Column {
                            tensor: spec.name.clone(),
                            column: Some(i),
                            recorder,
                        });
                    }
                }
                None => tracing::warn!(
                    %target,
                    features = rest.len(),
                    "drift baseline features match no input or output by name and no [rows, features] input; they are not recorded"
                ),
            }
        }
        // A window over the hub's limit would be refused whole, losing every
        // count in it: record no more features than a window may carry.
        let max = flotilla_protocol::limits::Limits::default().max_drift_features;
        if inputs.len() + outputs.len() > max {
            tracing::warn!(
                %target,
                features = inputs.len() + outputs.len(),
                max,
                "drift baseline has more features than a telemetry window carries; the rest are not recorded"
            );
            inputs.truncate(max);
            outputs.truncate(max - inputs.len());
        }
        (!inputs.is_empty() || !outputs.is_empty()).then(|| Self {
            target: target.to_owned(),
            columns: Mutex::new((inputs, outputs)),
        })
    }

    /// Counts the values of a validated request's inputs.
    pub(crate) fn record_inputs(&self, tensors: &[NamedTensor]) {
        let mut cols = self.columns.lock().unwrap_or_else(PoisonError::into_inner);
        record(&mut cols.0, tensors);
    }

    /// Counts the values of a model's outputs.
    pub(crate) fn record_outputs(&self, tensors: &[NamedTensor]) {
        let mut cols = self.columns.lock().unwrap_or_else(PoisonError::into_inner);
        record(&mut cols.1, tensors);
    }

    /// The counts since the last call, as a window carries them, and starts
    /// again from zero; `None` when nothing was counted.
    pub(crate) fn take(&self, endpoint: &str, deployment: &str) -> Option<DriftObservation> {
        let mut cols = self.columns.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = cols
            .0
            .iter()
            .chain(cols.1.iter())
            .any(|c| c.recorder.counts().total() > 0);
        if !seen {
            return None;
        }
        let (inputs, outputs) = &mut *cols;
        Some(DriftObservation {
            endpoint: endpoint.to_owned(),
            deployment: deployment.to_owned(),
            target: self.target.clone(),
            inputs: inputs.iter_mut().map(|c| c.recorder.take()).collect(),
            outputs: outputs.iter_mut().map(|c| c.recorder.take()).collect(),
        })
    }
}

fn record(columns: &mut [Column], tensors: &[NamedTensor]) {
    for c in columns {
        let Some(t) = tensors.iter().find(|t| t.name == c.tensor) else {
            continue;
        };
        let values = &t.data.values;
        match c.column {
            None => {
                for i in 0..len(values) {
                    c.recorder.record(value(values, i));
                }
            }
            Some(col) => {
                let width = t.data.shape.last().copied().unwrap_or(0);
                if col >= width || t.data.shape.len() != 2 {
                    continue;
                }
                let rows = t.data.shape[0];
                for r in 0..rows {
                    c.recorder.record(value(values, r * width + col));
                }
            }
        }
    }
}

fn len(v: &Values) -> usize {
    match v {
        Values::Bool(x) => x.len(),
        Values::I64(x) => x.len(),
        Values::U64(x) => x.len(),
        Values::F32(x) => x.len(),
        Values::F64(x) => x.len(),
        Values::Bytes(x) => x.len(),
    }
}

fn value(v: &Values, i: usize) -> FeatureValue<'_> {
    let n = |x: Option<f64>| x.map_or(FeatureValue::Missing, FeatureValue::Number);
    match v {
        Values::Bool(x) => n(x.get(i).map(|b| f64::from(u8::from(*b)))),
        Values::I64(x) => n(x.get(i).map(|v| *v as f64)),
        Values::U64(x) => n(x.get(i).map(|v| *v as f64)),
        Values::F32(x) => n(x.get(i).map(|v| f64::from(*v))),
        Values::F64(x) => n(x.get(i).copied()),
        Values::Bytes(x) => match x.get(i).map(|b| std::str::from_utf8(b)) {
            Some(Ok(s)) => FeatureValue::Text(s),
            _ => FeatureValue::Missing,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::datatype::DataType;
    use crate::serve::tensors::TensorData;
    use flotilla_protocol::manifest::{
        ElementType, FeatureBaseline, FeatureDistribution, TensorSpec,
    };
    use flotilla_protocol::telemetry::FeatureCounts;

    fn numeric(name: &str) -> FeatureBaseline {
        FeatureBaseline {
            name: name.into(),
            missing_rate: 0.0,
            distribution: FeatureDistribution::Numeric {
                edges: vec![0.0, 1.0, 2.0],
                counts: vec![5, 5],
            },
        }
    }

    fn signature(width: u64) -> ModelSignature {
        ModelSignature {
            inputs: vec![TensorSpec {
                name: "input".into(),
                elem_type: ElementType::Float32,
                shape: Some(vec![Dim::Symbolic("batch".into()), Dim::Fixed(width)]),
            }],
            outputs: vec![TensorSpec {
                name: "score".into(),
                elem_type: ElementType::Float32,
                shape: None,
            }],
        }
    }

    fn tensor(name: &str, shape: Vec<usize>, v: Vec<f32>) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            data: TensorData {
                datatype: DataType::Fp32,
                shape,
                values: Values::F32(v),
            },
        }
    }

    fn bins(o: &flotilla_protocol::telemetry::ObservedFeature) -> Vec<u64> {
        match &o.counts {
            FeatureCounts::Numeric {
                bins, below, above, ..
            } => {
                let mut v = vec![*below];
                v.extend(bins);
                v.push(*above);
                v
            }
            FeatureCounts::Categorical { .. } => panic!("numeric expected"),
        }
    }

    #[test]
    fn columns_map_by_position_and_outputs_by_name() {
        let baseline = DriftBaseline {
            rows: 10,
            features: vec![numeric("a"), numeric("score"), numeric("b")],
        };
        let d = DriftRecorder::new("models/m/1/manifest.cbor", &baseline, &signature(2)).unwrap();
        // Two rows: a = 0.5, 1.5; b = -1, 3.
        d.record_inputs(&[tensor("input", vec![2, 2], vec![0.5, -1.0, 1.5, 3.0])]);
        d.record_outputs(&[tensor("score", vec![2, 1], vec![0.1, 0.2])]);
        let o = d.take("fraud", "blue").unwrap();
        assert_eq!(o.target, "models/m/1/manifest.cbor");
        assert_eq!(o.inputs[0].name, "a");
        assert_eq!(bins(&o.inputs[0]), vec![0, 1, 1, 0]);
        assert_eq!(bins(&o.inputs[1]), vec![1, 0, 0, 1]);
        assert_eq!(bins(&o.outputs[0]), vec![0, 2, 0, 0]);
        // Taken: nothing until new values arrive.
        assert!(d.take("fraud", "blue").is_none());
    }

    #[test]
    fn features_that_match_nothing_record_nothing() {
        let baseline = DriftBaseline {
            rows: 10,
            features: vec![numeric("a"), numeric("b"), numeric("c")],
        };
        // The input is 2 wide, the baseline has 3 unnamed features.
        assert!(DriftRecorder::new("t", &baseline, &signature(2)).is_none());
    }
}
